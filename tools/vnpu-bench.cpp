// SPDX-License-Identifier: MIT
// vnpu-bench: throughput, latency and per-stage times of a model on vnpu (in the spirit of trtexec and
// benchmark_app). Exit status: 0 ok, 1 a request failed, 2 bad usage, 3 the runtime could not start.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <vnpu/vnpu.h>

#include "cli.h"

namespace {

using vnpu::tools::json_escape;
using vnpu::tools::percentile;

using Clock = std::chrono::steady_clock;

struct Args {
  std::string model, synthetic, backend, json, trace, mode = "async";
  std::vector<int> devices;
  int parallel = 1, depth = 8;
  long count = 200, warmup = 20;
  long timeout_ms = 0;
  bool quiet = false;
};

[[noreturn]] void usage(int status) {
  std::fprintf(status ? stderr : stdout,
               "usage: vnpu-bench (--model FILE.vnpu | --synthetic prep_ms=A,h2d_ms=B,compute_ms=C,d2h_ms=D)\n"
               "                  [--backend sim|kernel] [--mode sync|async] [--parallel N] [--depth N]\n"
               "                  [--count N] [--warmup N] [--devices 0,1,..] [--timeout-ms N]\n"
               "                  [--json FILE] [--trace FILE] [--quiet]\n"
               "Runs COUNT timed requests after WARMUP untimed ones and reports throughput, latency percentiles,\n"
               "per-stage times (host prep; H2D, compute, D2H from the device's job reports), engine\n"
               "utilisation, the pipeline bound 1/max(stage) and efficiency = throughput / bound.\n"
               "--synthetic: host prep is CPU work of A ms on a prep thread; H2D/D2H move as many bytes as the\n"
               "device's bandwidth moves in B/D ms; compute is a SYNTH command of C ms. 0 means minimal (4 bytes,\n"
               "1 ns): all zeros measure the round-trip overhead of a no-op request.\n"
               "Defaults: backend kernel if /dev/accel/accel0 exists else sim, async, parallel 1, depth 8 (0: the\n"
               "runtime's default from the model and the device, AsyncRuntime::depth_estimate()),\n"
               "count 200, warmup 20.\n");
  std::exit(status);
}

long parse_long(const std::string& flag, const std::string& v, long lo, long hi) {
  return vnpu::tools::parse_long("vnpu-bench", flag, v, lo, hi, usage);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "-h" || f == "--help")
      usage(0);
    if (f == "--quiet") {
      a.quiet = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "vnpu-bench: %s needs a value\n", f.c_str());
      usage(2);
    }
    const std::string v = argv[++i];
    if (f == "--model")
      a.model = v;
    else if (f == "--synthetic")
      a.synthetic = v;
    else if (f == "--backend")
      a.backend = v;
    else if (f == "--mode") {
      if (v != "sync" && v != "async")
        usage(2);
      a.mode = v;
    } else if (f == "--parallel")
      a.parallel = static_cast<int>(parse_long(f, v, 1, 16));
    else if (f == "--depth")
      a.depth = static_cast<int>(parse_long(f, v, 0, 256));
    else if (f == "--count")
      a.count = parse_long(f, v, 1, 100'000'000);
    else if (f == "--warmup")
      a.warmup = parse_long(f, v, 0, 100'000'000);
    else if (f == "--timeout-ms")
      a.timeout_ms = parse_long(f, v, 0, 3'600'000);
    else if (f == "--json")
      a.json = v;
    else if (f == "--trace")
      a.trace = v;
    else if (f == "--devices") {
      std::stringstream ss(v);
      std::string tok;
      while (std::getline(ss, tok, ','))
        a.devices.push_back(static_cast<int>(parse_long(f, tok, 0, 63)));
    } else {
      std::fprintf(stderr, "vnpu-bench: unknown option %s\n", f.c_str());
      usage(2);
    }
  }
  if (a.model.empty() == a.synthetic.empty()) {
    std::fprintf(stderr, "vnpu-bench: give exactly one of --model and --synthetic\n");
    usage(2);
  }
  return a;
}

struct Stages {
  double prep = 0, h2d = 0, compute = 0, d2h = 0;
};

Stages parse_synthetic(const std::string& spec) {
  Stages s;
  std::map<std::string, double*> keys{
      {"prep_ms", &s.prep}, {"h2d_ms", &s.h2d}, {"compute_ms", &s.compute}, {"d2h_ms", &s.d2h}};
  std::stringstream ss(spec);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    const auto eq = tok.find('=');
    auto it = eq == std::string::npos ? keys.end() : keys.find(tok.substr(0, eq));
    char* end = nullptr;
    const double v = it == keys.end() ? 0 : std::strtod(tok.c_str() + eq + 1, &end);
    if (it == keys.end() || !end || *end || !(v >= 0) || v > 10000) {
      std::fprintf(stderr, "vnpu-bench: bad --synthetic item '%s' (want prep_ms|h2d_ms|compute_ms|d2h_ms=0..10000)\n",
                   tok.c_str());
      usage(2);
    }
    *it->second = v;
  }
  return s;
}

// Bytes a transfer must have to keep a DMA engine busy for `ms` under the device's timing model.
uint64_t bytes_for(double ms, uint32_t mbps, uint32_t fixed_ns) {
  const double ns = ms * 1e6 - fixed_ns;
  if (ms <= 0 || ns <= 0 || mbps == 0)
    return 4;
  return std::max<uint64_t>(4, static_cast<uint64_t>(ns * mbps / 1000.0) / 4 * 4);
}

double ms_of(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v)
    s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  vnpu::RuntimeOptions opt;
  opt.backend = args.backend;
  opt.devices = args.devices;
  opt.parallel = args.mode == "sync" ? 1 : args.parallel;
  opt.max_in_flight = args.depth;
  opt.timeout = std::chrono::milliseconds(args.timeout_ms);

  std::optional<vnpu::CompiledModel> model;
  Stages want;
  vnpu::DeviceInfo info;
  try {
    const int dev0 = args.devices.empty() ? 0 : args.devices.front();
    const std::string backend = args.backend.empty() ? vnpu::Device::default_backend(dev0) : args.backend;
    opt.backend = backend;
    {
      auto dev = vnpu::Device::open({backend, dev0}).value();
      info = dev->info();
    }
    if (!args.model.empty()) {
      model = vnpu::CompiledModel::load(args.model);
    } else {
      want = parse_synthetic(args.synthetic);
      vnpu::SyntheticSpec spec;
      spec.host_prep = std::chrono::nanoseconds(static_cast<int64_t>(want.prep * 1e6));
      spec.input_bytes = bytes_for(want.h2d, info.h2d_mbps, info.cmd_overhead_ns + info.h2d_latency_ns);
      spec.output_bytes = bytes_for(want.d2h, info.d2h_mbps, info.cmd_overhead_ns + info.d2h_latency_ns);
      spec.compute = std::chrono::nanoseconds(
          std::max<int64_t>(1, static_cast<int64_t>(want.compute * 1e6) - info.cmd_overhead_ns));
      model = vnpu::CompiledModel::synthetic(spec);
    }
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-bench: %s\n", e.what());
    return 3;
  }

  std::unique_ptr<vnpu::AsyncRuntime> rt;
  try {
    if (args.mode == "sync") {
      opt.parallel = 1;
      opt.max_in_flight = 1;
      opt.staging_buffers = 1;
    }
    rt = std::make_unique<vnpu::AsyncRuntime>(*model, opt);
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-bench: cannot start the runtime: %s\n", e.what());
    return 3;
  }
  const auto& m = rt->model();

  // Inputs: one random set, lent to every request (the prep thread copies it into DMA staging memory).
  std::vector<std::vector<float>> in_data;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (const auto& ti : m.inputs()) {
    in_data.emplace_back(ti.size_bytes / 4);
    for (float& v : in_data.back())
      v = dist(rng);
  }
  // Outputs: a ring of caller buffers, one per request that can be outstanding at once.
  const size_t window = args.mode == "sync"
                            ? 1
                            : static_cast<size_t>(rt->options().max_in_flight *
                                                      static_cast<int>(std::max<size_t>(1, rt->devices_info().size())) +
                                                  args.parallel + 2);
  std::vector<std::vector<std::vector<float>>> out_data(window);
  for (auto& o : out_data)
    for (const auto& ti : m.outputs())
      o.emplace_back(ti.size_bytes / 4);

  auto make_inputs = [&] {
    vnpu::Inputs in;
    for (size_t i = 0; i < m.inputs().size(); ++i)
      in.push_back(vnpu::Tensor::borrow(m.inputs()[i].shape, std::span<const float>(in_data[i])));
    return in;
  };
  auto make_outputs = [&](size_t k) {
    std::vector<vnpu::Tensor> out;
    for (size_t i = 0; i < m.outputs().size(); ++i)
      out.push_back(vnpu::Tensor::borrow(m.outputs()[i].shape, std::span<float>(out_data[k][i])));
    return out;
  };

  const long total = args.warmup + args.count;
  std::vector<vnpu::RequestTimings> timings(static_cast<size_t>(total));
  std::vector<vnpu::Task<vnpu::Outputs>> ring(window);
  long failed = 0;
  std::string first_error;
  Clock::time_point t_begin{};  // start of the measured window
  auto collect = [&](long i) {
    auto& task = ring[static_cast<size_t>(i) % window];
    try {
      timings[static_cast<size_t>(i)] = task.wait().timings;
    } catch (const vnpu::Error& e) {
      if (failed++ == 0)
        first_error = e.what();
      timings[static_cast<size_t>(i)].resolved = Clock::now();
    }
    if (i + 1 == args.warmup)
      t_begin = timings[static_cast<size_t>(i)].resolved;
  };
  const auto t0 = Clock::now();
  if (args.warmup == 0)
    t_begin = t0;
  for (long i = 0; i < total; ++i) {
    if (i >= static_cast<long>(window))
      collect(i - static_cast<long>(window));
    ring[static_cast<size_t>(i) % window] = rt->run(make_inputs(), make_outputs(static_cast<size_t>(i) % window));
  }
  for (long i = std::max(0L, total - static_cast<long>(window)); i < total; ++i)
    collect(i);
  Clock::time_point t_end = t_begin;
  for (long i = args.warmup; i < total; ++i)
    t_end = std::max(t_end, timings[static_cast<size_t>(i)].resolved);

  // ---- statistics over the measured requests ----
  std::vector<double> lat, prep, h2d, comp, d2h;
  uint64_t busy_h2d = 0, busy_comp = 0, busy_d2h = 0;
  std::map<int, std::pair<uint64_t, uint64_t>> dev_window;  // device -> (first start, last end), device ns
  for (long i = args.warmup; i < total; ++i) {
    const auto& t = timings[static_cast<size_t>(i)];
    if (t.prep_start == Clock::time_point{})
      continue;  // failed before prep
    lat.push_back(ms_of(t.total()));
    prep.push_back(ms_of(t.prep()));
    if (t.h2d_end_ns && t.exec_end_ns) {
      h2d.push_back(t.h2d_ns / 1e6);
      comp.push_back(t.compute_ns / 1e6);
      d2h.push_back(t.d2h_ns / 1e6);
      busy_h2d += t.h2d_ns;
      busy_comp += t.compute_ns;
      busy_d2h += t.d2h_ns;
      auto [it, fresh] = dev_window.try_emplace(t.device_index, *t.h2d_end_ns - t.h2d_ns, *t.exec_end_ns);
      if (!fresh) {
        it->second.first = std::min(it->second.first, *t.h2d_end_ns - t.h2d_ns);
        it->second.second = std::max(it->second.second, *t.exec_end_ns);
      }
    }
  }
  const double wall_ms = ms_of(t_end - t_begin);
  const double throughput = wall_ms > 0 ? static_cast<double>(args.count) / (wall_ms / 1e3) : 0;
  const auto devs = rt->devices_info();
  const double cores = devs.front().compute_cores;
  const double ndev = static_cast<double>(devs.size());
  Stages got{mean(prep), mean(h2d), mean(comp), mean(d2h)};
  // The pipeline bound: the slowest stage, counting the stages that run in parallel (prep threads, compute
  // cores, devices) as the wider stage they are. In sync mode the stages do not overlap: the bound is the sum.
  double bound_ms;
  if (args.mode == "sync")
    bound_ms = got.prep + got.h2d + got.compute + got.d2h;
  else
    bound_ms = std::max({got.prep / opt.parallel, got.h2d / ndev, got.compute / (cores * ndev), got.d2h / ndev});
  const double bound_ips = bound_ms > 0 ? 1e3 / bound_ms : 0;
  const double efficiency = bound_ips > 0 ? throughput / bound_ips : 0;
  double dev_ns = 0;
  for (auto& [d, w] : dev_window)
    dev_ns += static_cast<double>(w.second - w.first);
  auto util = [&](uint64_t busy, double width) {
    return dev_ns > 0 ? static_cast<double>(busy) / (dev_ns * width) : 0.0;
  };
  const double u_h2d = util(busy_h2d, 1), u_comp = util(busy_comp, cores), u_d2h = util(busy_d2h, 1);
  const double sum_stages = got.prep + got.h2d + got.compute + got.d2h;
  const double max_stage = std::max({got.prep, got.h2d, got.compute, got.d2h});
  const uint64_t dma = rt->host_dma_bytes();
  const double per_req =
      static_cast<double>(dma) / static_cast<double>(rt->options().max_in_flight * static_cast<int>(devs.size()));

  if (!args.quiet) {
    std::printf("vnpu-bench: %s model (%s), backend %s on %zu device(s) [%s], mode %s, parallel %d, depth %d\n",
                std::string(m.kind()).c_str(), args.model.empty() ? args.synthetic.c_str() : args.model.c_str(),
                opt.backend.c_str(), devs.size(), devs.front().name.c_str(), args.mode.c_str(), opt.parallel,
                rt->options().max_in_flight);
    const vnpu::DepthEstimate& de = rt->depth_estimate();
    std::printf("depth:       %s %d (estimate: h2d %.3f compute %.3f%s d2h %.3f ms -> pipeline %d, memory %d)\n",
                de.used ? "default" : "given", rt->options().max_in_flight, de.h2d_ms, de.compute_ms,
                de.compute_known ? "" : " (assumed)", de.d2h_ms, de.pipeline_depth, de.memory_limit);
    std::printf("requests:    %ld timed + %ld warmup, %ld failed\n", args.count, args.warmup, failed);
    std::printf("throughput:  %.2f inferences/s over %.1f ms\n", throughput, wall_ms);
    std::printf("latency ms:  min %.3f  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", percentile(lat, 0),
                percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), percentile(lat, 100));
    std::printf("stage ms:    prep %.3f  h2d %.3f  compute %.3f  d2h %.3f   (sum %.3f, max %.3f)\n", got.prep, got.h2d,
                got.compute, got.d2h, sum_stages, max_stage);
    std::printf("engine util: h2d %.1f%%  compute %.1f%% (of %g cores)  d2h %.1f%%\n", u_h2d * 100, u_comp * 100, cores,
                u_d2h * 100);
    std::printf("bound:       %.2f inferences/s  ->  efficiency %.3f\n", bound_ips, efficiency);
    std::printf("host memory: %llu B of DMA buffers (%.0f B per in-flight request)\n",
                static_cast<unsigned long long>(dma), per_req);
    if (failed)
      std::printf("first error: %s\n", first_error.c_str());
  }

  if (!args.json.empty()) {
    std::ofstream f(args.json);
    f.setf(std::ios::fixed);
    f.precision(6);
    f << "{\n  \"model\": \"" << json_escape(args.model.empty() ? "synthetic:" + args.synthetic : args.model) << "\",\n"
      << "  \"backend\": \"" << opt.backend << "\", \"mode\": \"" << args.mode << "\", \"parallel\": " << opt.parallel
      << ", \"depth\": " << rt->options().max_in_flight << ", \"default_depth\": " << rt->depth_estimate().chosen
      << ", \"devices\": " << devs.size() << ", \"count\": " << args.count << ", \"warmup\": " << args.warmup
      << ", \"failed\": " << failed << ",\n"
      << "  \"throughput_ips\": " << throughput << ",\n"
      << "  \"latency_ms\": {\"min\": " << percentile(lat, 0) << ", \"p50\": " << percentile(lat, 50)
      << ", \"p90\": " << percentile(lat, 90) << ", \"p99\": " << percentile(lat, 99)
      << ", \"max\": " << percentile(lat, 100) << "},\n"
      << "  \"stage_ms\": {\"prep\": " << got.prep << ", \"h2d\": " << got.h2d << ", \"compute\": " << got.compute
      << ", \"d2h\": " << got.d2h << "},\n"
      << "  \"engine_util\": {\"h2d\": " << u_h2d << ", \"compute\": " << u_comp << ", \"d2h\": " << u_d2h << "},\n"
      << "  \"bound_ips\": " << bound_ips << ",\n"
      << "  \"efficiency\": " << efficiency << ",\n"
      << "  \"stage_sum_over_max\": " << (max_stage > 0 ? sum_stages / max_stage : 0) << ",\n"
      << "  \"host_dma_bytes\": " << dma << ", \"host_dma_bytes_per_request\": " << per_req << "\n}\n";
    if (!f) {
      std::fprintf(stderr, "vnpu-bench: cannot write %s\n", args.json.c_str());
      return 1;
    }
  }

  if (!args.trace.empty()) {
    // Chrome/Perfetto trace: pid 0 = host (one track per prep thread), pid 1+d = device d with one track per
    // engine. Device times are placed on the host timeline with the runtime's clock offset.
    std::ofstream f(args.trace);
    f.setf(std::ios::fixed);
    f.precision(3);
    const auto base = std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count();
    auto us_host = [&](Clock::time_point t) {
      return (std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count() - base) / 1e3;
    };
    auto us_dev = [&](int d, uint64_t ns) {
      return (static_cast<double>(static_cast<int64_t>(ns) - rt->device_clock_offset_ns(static_cast<size_t>(d))) -
              static_cast<double>(base)) /
             1e3;
    };
    f << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
    bool first = true;
    auto ev = [&](const std::string& name, int pid, int tid, double ts, double dur, long req) {
      if (dur < 0)
        return;
      f << (first ? "" : ",\n") << "{\"name\":\"" << name << "\",\"ph\":\"X\",\"pid\":" << pid << ",\"tid\":" << tid
        << ",\"ts\":" << ts << ",\"dur\":" << dur << ",\"args\":{\"request\":" << req << "}}";
      first = false;
    };
    auto meta = [&](int pid, int tid, const std::string& what, const std::string& name) {
      f << (first ? "" : ",\n") << "{\"name\":\"" << what << "\",\"ph\":\"M\",\"pid\":" << pid << ",\"tid\":" << tid
        << ",\"args\":{\"name\":\"" << json_escape(name) << "\"}}";
      first = false;
    };
    meta(0, 0, "process_name", "host");
    for (int p = 0; p < opt.parallel; ++p)
      meta(0, p + 1, "thread_name", "prep" + std::to_string(p));
    for (size_t d = 0; d < devs.size(); ++d) {
      const int pid = static_cast<int>(d) + 1;
      meta(pid, 0, "process_name", "device " + std::to_string(d) + " " + devs[d].name);
      meta(pid, 1, "thread_name", "H2D DMA");
      meta(pid, 2, "thread_name", "compute");
      meta(pid, 3, "thread_name", "D2H DMA");
    }
    for (long i = 0; i < total; ++i) {
      const auto& t = timings[static_cast<size_t>(i)];
      if (t.prep_start == Clock::time_point{})
        continue;
      const std::string tag = "req " + std::to_string(i);
      ev(tag + " prep", 0, t.prep_thread + 1, us_host(t.prep_start), ms_of(t.prep()) * 1e3, i);
      if (t.h2d_end_ns && t.exec_start_ns && t.exec_end_ns) {
        const int d = t.device_index, pid = d + 1;
        ev(tag + " h2d", pid, 1, us_dev(d, *t.h2d_end_ns - t.h2d_ns), t.h2d_ns / 1e3, i);
        ev(tag + " compute", pid, 2, us_dev(d, *t.exec_start_ns), t.compute_ns / 1e3, i);
        ev(tag + " d2h", pid, 3, us_dev(d, *t.exec_end_ns - t.d2h_ns), t.d2h_ns / 1e3, i);
      }
    }
    f << "\n]}\n";
    if (!f) {
      std::fprintf(stderr, "vnpu-bench: cannot write %s\n", args.trace.c_str());
      return 1;
    }
  }
  rt.reset();
  return failed ? 1 : 0;
}
