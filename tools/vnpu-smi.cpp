// SPDX-License-Identifier: MIT
// vnpu-smi: what the vnpu devices are doing. Devices come from /sys/class/accel/accel*/device (driven by
// vnpu.ko), counters from the driver's sysfs attributes (/sys/bus/pci/devices/<bdf>/vnpu/), per-process usage
// from DRM fdinfo (/proc/<pid>/fdinfo/<fd> with "drm-driver: vnpu"). Utilisation = busy-time delta / device
// clock delta over the sampling interval.
//   vnpu-smi [--json] [--interval-ms N]
// Exit status: 0 ok (also with no device: it says so), 2 bad usage.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

std::optional<std::string> read_line(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!f || !std::getline(f, s))
    return std::nullopt;
  return s;
}

std::optional<uint64_t> read_u64(const std::string& path) {
  auto s = read_line(path);
  if (!s)
    return std::nullopt;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s->c_str(), &end, 0);
  if (end == s->c_str())
    return std::nullopt;
  return v;
}

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.')
        out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

struct Counters {
  std::map<std::string, uint64_t> v;  // sysfs attribute -> value
};

// One line of the driver's sysfs `queues` table: "index priority head tail inflight".
struct HwQueue {
  uint64_t index = 0, priority = 0, head = 0, tail = 0, inflight = 0;
};

std::vector<HwQueue> read_queues(const std::string& path) {
  std::vector<HwQueue> out;
  std::ifstream f(path);
  HwQueue q;
  while (f >> q.index >> q.priority >> q.head >> q.tail >> q.inflight)
    out.push_back(q);
  return out;
}

struct Device {
  std::string accel;  // "accel0"
  std::string bdf;    // "0000:00:04.0"
  std::string driver;
  std::string attr_dir;
  Counters a, b;                // two samples
  std::vector<HwQueue> queues;  // at the second sample
};

const char* const kAttrs[] = {"device_clock_ns", "busy_ns_h2d", "busy_ns_compute", "busy_ns_d2h", "jobs_completed",
                              "jobs_failed",     "devmem_size", "devmem_used",     "contexts"};

size_t busy_queues(const Device& d) {
  return static_cast<size_t>(
      std::count_if(d.queues.begin(), d.queues.end(), [](const HwQueue& q) { return q.inflight > 0; }));
}

Counters sample(const Device& d) {
  Counters c;
  for (const char* k : kAttrs)
    if (auto v = read_u64(d.attr_dir + "/" + k))
      c.v[k] = *v;
  return c;
}

struct Client {
  int pid = 0;
  std::string comm, pdev, client_id;
  std::map<std::string, uint64_t> a, b;  // drm-engine-* (ns) and memory keys, two samples
};

// DRM fdinfo "drm-total-device: 1234 KiB" -> bytes; "drm-engine-h2d: 123 ns" -> ns.
uint64_t fdinfo_value(const std::string& rest) {
  std::istringstream is(rest);
  uint64_t v = 0;
  std::string unit;
  is >> v >> unit;
  if (unit == "KiB")
    v <<= 10;
  else if (unit == "MiB")
    v <<= 20;
  else if (unit == "GiB")
    v <<= 30;
  return v;
}

// Every open vnpu file of every process we may look at, keyed by (pdev, client id) so that one client seen
// through several fds (dup) counts once.
std::map<std::string, Client> scan_clients() {
  std::map<std::string, Client> out;
  for (const auto& pid : list_dir("/proc")) {
    if (pid.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const std::string base = "/proc/" + pid + "/fdinfo";
    for (const auto& fd : list_dir(base)) {
      std::ifstream f(base + "/" + fd);
      std::string line;
      Client c;
      bool vnpu = false;
      while (std::getline(f, line)) {
        const auto colon = line.find(':');
        if (colon == std::string::npos)
          continue;
        const std::string key = line.substr(0, colon), rest = line.substr(colon + 1);
        std::string val = rest.substr(
            rest.find_first_not_of(" \t") == std::string::npos ? rest.size() : rest.find_first_not_of(" \t"));
        if (key == "drm-driver")
          vnpu = val == "vnpu";
        else if (key == "drm-pdev")
          c.pdev = val;
        else if (key == "drm-client-id")
          c.client_id = val;
        else if (key.rfind("drm-", 0) == 0)
          c.a[key] = fdinfo_value(val);
      }
      if (!vnpu)
        continue;
      c.pid = std::atoi(pid.c_str());
      c.comm = read_line("/proc/" + pid + "/comm").value_or("?");
      out.try_emplace(c.pdev + "/" + c.client_id, std::move(c));
    }
  }
  return out;
}

std::string human(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / 1073741824.0);
  else if (bytes >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024.0);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  long interval_ms = 500;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--json")
      json = true;
    else if (f == "--interval-ms" && i + 1 < argc)
      interval_ms = std::strtol(argv[++i], nullptr, 10);
    else if (f == "-h" || f == "--help") {
      std::printf(
          "usage: vnpu-smi [--json] [--interval-ms N]\nShows vnpu devices, memory, per-engine utilisation "
          "over N ms (default 500) and per-process usage.\n");
      return 0;
    } else {
      std::fprintf(stderr, "vnpu-smi: unknown option %s\n", f.c_str());
      return 2;
    }
  }
  if (interval_ms < 1 || interval_ms > 60000)
    interval_ms = 500;

  std::vector<Device> devs;
  for (const auto& a : list_dir("/sys/class/accel")) {
    Device d;
    d.accel = a;
    char buf[512] = {};
    const std::string link = "/sys/class/accel/" + a + "/device";
    if (::readlink(link.c_str(), buf, sizeof buf - 1) <= 0)
      continue;
    std::string target(buf);
    d.bdf = target.substr(target.find_last_of('/') + 1);
    char drv[512] = {};
    if (::readlink((link + "/driver").c_str(), drv, sizeof drv - 1) > 0) {
      std::string t(drv);
      d.driver = t.substr(t.find_last_of('/') + 1);
    }
    if (d.driver != "vnpu")
      continue;
    d.attr_dir = "/sys/bus/pci/devices/" + d.bdf + "/vnpu";
    devs.push_back(std::move(d));
  }
  std::sort(devs.begin(), devs.end(), [](const Device& x, const Device& y) { return x.accel < y.accel; });

  if (devs.empty()) {
    if (json)
      std::printf(
          "{\"devices\": [], \"processes\": [], \"note\": \"no vnpu device: vnpu.ko is not loaded or no device is "
          "present\"}\n");
    else
      std::printf(
          "vnpu-smi: no vnpu device found (no /sys/class/accel/accel* driven by vnpu.ko).\n"
          "          Run inside the VM (./vnpu vm -- vnpu-smi) or load vnpu.ko on a machine with the device.\n");
    return 0;
  }

  for (auto& d : devs)
    d.a = sample(d);
  auto clients = scan_clients();
  std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  for (auto& d : devs) {
    d.b = sample(d);
    d.queues = read_queues(d.attr_dir + "/queues");
  }
  for (auto& [k, c] : scan_clients())
    if (auto it = clients.find(k); it != clients.end())
      it->second.b = c.a;

  auto delta = [](const Counters& a, const Counters& b, const char* k) -> std::optional<double> {
    auto ia = a.v.find(k), ib = b.v.find(k);
    if (ia == a.v.end() || ib == b.v.end())
      return std::nullopt;
    return static_cast<double>(ib->second - ia->second);
  };
  auto get = [](const Counters& c, const char* k) -> std::optional<uint64_t> {
    auto it = c.v.find(k);
    if (it == c.v.end())
      return std::nullopt;
    return it->second;
  };
  auto util = [&](const Device& d, const char* k) -> std::optional<double> {
    auto busy = delta(d.a, d.b, k);
    auto clk = delta(d.a, d.b, "device_clock_ns");
    if (!busy || !clk || *clk <= 0)
      return std::nullopt;
    return *busy / *clk;
  };
  auto pct = [](std::optional<double> u) {
    char buf[16];
    if (!u)
      return std::string("n/a");
    std::snprintf(buf, sizeof buf, "%.1f%%", *u * 100);
    return std::string(buf);
  };

  if (json) {
    std::printf("{\"interval_ms\": %ld, \"devices\": [", interval_ms);
    for (size_t i = 0; i < devs.size(); ++i) {
      const auto& d = devs[i];
      std::printf("%s\n  {\"accel\": \"%s\", \"pdev\": \"%s\"", i ? "," : "", d.accel.c_str(), d.bdf.c_str());
      for (const char* k : kAttrs)
        if (auto v = get(d.b, k))
          std::printf(", \"%s\": %llu", k, static_cast<unsigned long long>(*v));
      std::printf(", \"util\": {");
      const char* names[] = {"h2d", "compute", "d2h"};
      const char* keys[] = {"busy_ns_h2d", "busy_ns_compute", "busy_ns_d2h"};
      for (int e = 0; e < 3; ++e) {
        auto u = util(d, keys[e]);
        std::printf("%s\"%s\": ", e ? ", " : "", names[e]);
        if (u)
          std::printf("%.4f", *u);
        else
          std::printf("null");
      }
      std::printf("}, \"queues\": [");
      for (size_t q = 0; q < d.queues.size(); ++q)
        std::printf("%s{\"index\": %llu, \"priority\": %llu, \"inflight\": %llu}", q ? ", " : "",
                    static_cast<unsigned long long>(d.queues[q].index),
                    static_cast<unsigned long long>(d.queues[q].priority),
                    static_cast<unsigned long long>(d.queues[q].inflight));
      std::printf("]}");
    }
    std::printf("\n], \"processes\": [");
    bool first = true;
    for (const auto& [k, c] : clients) {
      std::printf("%s\n  {\"pid\": %d, \"comm\": \"%s\", \"pdev\": \"%s\", \"client_id\": \"%s\"", first ? "" : ",",
                  c.pid, c.comm.c_str(), c.pdev.c_str(), c.client_id.c_str());
      for (const auto& [key, v] : c.a)
        std::printf(", \"%s\": %llu", key.c_str(), static_cast<unsigned long long>(v));
      std::printf("}");
      first = false;
    }
    std::printf("\n]}\n");
    return 0;
  }

  std::printf("%-8s %-14s %-22s %-8s %-8s %-8s %-10s %-10s %-5s %s\n", "DEVICE", "PCI", "MEMORY used/total", "H2D",
              "COMPUTE", "D2H", "JOBS ok", "failed", "CTX", "HWQ busy/all");
  for (const auto& d : devs) {
    const std::string mem =
        human(get(d.b, "devmem_used").value_or(0)) + " / " + human(get(d.b, "devmem_size").value_or(0));
    std::printf("%-8s %-14s %-22s %-8s %-8s %-8s %-10llu %-10llu %-5llu %zu/%zu\n", d.accel.c_str(), d.bdf.c_str(),
                mem.c_str(), pct(util(d, "busy_ns_h2d")).c_str(), pct(util(d, "busy_ns_compute")).c_str(),
                pct(util(d, "busy_ns_d2h")).c_str(),
                static_cast<unsigned long long>(get(d.b, "jobs_completed").value_or(0)),
                static_cast<unsigned long long>(get(d.b, "jobs_failed").value_or(0)),
                static_cast<unsigned long long>(get(d.b, "contexts").value_or(0)), busy_queues(d), d.queues.size());
  }
  std::printf("\n%-8s %-16s %-14s %-12s %-12s %-12s %-12s %s\n", "PID", "COMMAND", "PCI", "H2D", "COMPUTE", "D2H",
              "DEV MEM", "HOST MEM");
  if (clients.empty())
    std::printf("(no process has a vnpu device open)\n");
  for (const auto& [k, c] : clients) {
    auto eng = [&](const char* key) {
      auto a = c.a.find(key), b = c.b.find(key);
      if (a == c.a.end())
        return std::string("-");
      if (b == c.b.end())
        return std::to_string(a->second / 1000000) + " ms";
      char buf[24];
      std::snprintf(buf, sizeof buf, "%.1f%%", static_cast<double>(b->second - a->second) / (interval_ms * 1e6) * 100);
      return std::string(buf);
    };
    auto mem = [&](const char* key) {
      auto it = c.a.find(key);
      return it == c.a.end() ? std::string("-") : human(it->second);
    };
    std::printf("%-8d %-16s %-14s %-12s %-12s %-12s %-12s %s\n", c.pid, c.comm.c_str(), c.pdev.c_str(),
                eng("drm-engine-h2d").c_str(), eng("drm-engine-compute").c_str(), eng("drm-engine-d2h").c_str(),
                mem("drm-total-device").c_str(), mem("drm-total-host").c_str());
  }
  return 0;
}
