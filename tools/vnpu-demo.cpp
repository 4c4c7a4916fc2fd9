// SPDX-License-Identifier: MIT
// vnpu-demo: run the one-op matmul model N times through AsyncRuntime, check every result against the CPU
// reference, and report timings. Exit status: 0 all results bit-exact, 1 a result was wrong or a request
// failed, 2 bad usage, 3 the runtime could not start.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <vnpu/vnpu.h>

#include "cli.h"

namespace {

using vnpu::tools::json_escape;
using vnpu::tools::percentile;

struct Args {
  std::string backend;
  long count = 64;
  int parallel = 1;
  int max_in_flight = 0;
  long m = 64, k = 256, n = 128;
  std::string json;
  bool ioctl = false;
};

[[noreturn]] void usage(int status) {
  std::fprintf(status ? stderr : stdout,
               "usage: vnpu-demo [--backend sim|kernel] [--count N] [--parallel P] [--max-in-flight Q]\n"
               "                 [--m M --k K --n N] [--submit uring|ioctl] [--json FILE]\n"
               "Runs y[M,N] = x[M,K] . W[K,N] N times through vnpu::AsyncRuntime and checks each result\n"
               "bit-for-bit against the CPU reference. Defaults: kernel if /dev/accel/accel0 exists else sim,\n"
               "N=64, P=1, M=64 K=256 N=128.\n");
  std::exit(status);
}

long parse_long(const char* flag, const char* v, long lo, long hi) {
  return vnpu::tools::parse_long("vnpu-demo", flag, v, lo, hi, usage);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "-h" || f == "--help")
      usage(0);
    if (i + 1 >= argc) {
      std::fprintf(stderr, "vnpu-demo: %s needs a value\n", f.c_str());
      usage(2);
    }
    const char* v = argv[++i];
    if (f == "--backend")
      a.backend = v;
    else if (f == "--count")
      a.count = parse_long("--count", v, 1, 10'000'000);
    else if (f == "--parallel")
      a.parallel = static_cast<int>(parse_long("--parallel", v, 1, 16));
    else if (f == "--max-in-flight")
      a.max_in_flight = static_cast<int>(parse_long("--max-in-flight", v, 1, 256));
    else if (f == "--m")
      a.m = parse_long("--m", v, 1, vnpu::MatmulModel::kMaxDim);
    else if (f == "--k")
      a.k = parse_long("--k", v, 1, vnpu::MatmulModel::kMaxDim);
    else if (f == "--n")
      a.n = parse_long("--n", v, 1, vnpu::MatmulModel::kMaxDim);
    else if (f == "--json")
      a.json = v;
    else if (f == "--submit") {
      if (std::string(v) != "uring" && std::string(v) != "ioctl")
        usage(2);
      a.ioctl = std::string(v) == "ioctl";
    } else {
      std::fprintf(stderr, "vnpu-demo: unknown option %s\n", f.c_str());
      usage(2);
    }
  }
  return a;
}

vnpu::Tensor random_tensor(std::vector<int64_t> shape, uint32_t seed) {
  vnpu::Tensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : t.data())
    v = dist(rng);
  return t;
}

double ms(std::chrono::nanoseconds d) {
  return static_cast<double>(d.count()) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  using Clock = std::chrono::steady_clock;

  std::unique_ptr<vnpu::AsyncRuntime> rt;
  std::unique_ptr<vnpu::MatmulModel> model;
  try {
    model = std::make_unique<vnpu::MatmulModel>(args.m, random_tensor({args.k, args.n}, 1));
    vnpu::RuntimeOptions o;
    o.backend = args.backend;
    o.parallel = args.parallel;
    o.max_in_flight = args.max_in_flight;
    o.submit_mode = args.ioctl ? vnpu::SubmitMode::kIoctl : vnpu::SubmitMode::kUring;
    rt = std::make_unique<vnpu::AsyncRuntime>(*model, o);
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-demo: %s\n", e.what());
    return 3;
  }
  const vnpu::DeviceInfo info = rt->device_info();  // a copy: the runtime is gone before the JSON is written
  std::printf("device:   %s [backend %s, submit %s, interface %u.%u, %llu MiB device memory]\n", info.name.c_str(),
              info.backend.c_str(), info.submit_path.c_str(), info.device_version >> 16, info.device_version & 0xffff,
              static_cast<unsigned long long>(info.devmem_size >> 20));
  std::printf("model:    y[%ld,%ld] = x[%ld,%ld] . W[%ld,%ld] f32; %ld requests, parallel %d, max in flight %d\n",
              args.m, args.n, args.m, args.k, args.k, args.n, args.count, rt->options().parallel,
              rt->options().max_in_flight);

  // Inputs are made (and their references computed) before the clock starts.
  const long distinct = std::min<long>(args.count, 16);
  std::vector<vnpu::Tensor> inputs, refs;
  for (long i = 0; i < distinct; ++i) {
    inputs.push_back(random_tensor({args.m, args.k}, static_cast<uint32_t>(100 + i)));
    refs.push_back(model->reference(inputs.back()));
  }

  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  tasks.reserve(static_cast<size_t>(args.count));
  const auto t0 = Clock::now();
  for (long i = 0; i < args.count; ++i)
    tasks.push_back(rt->run(inputs[static_cast<size_t>(i % distinct)]));

  long failed = 0, mismatched = 0;
  double max_abs = 0;
  std::string first_error;
  std::vector<double> lat, prep, dev_lat;
  uint64_t dev_first = UINT64_MAX, dev_last = 0, dev_sum = 0;
  bool have_dev = false;
  Clock::time_point t_last = t0;
  for (long i = 0; i < args.count; ++i) {
    try {
      vnpu::Outputs out = tasks[static_cast<size_t>(i)].wait();
      const vnpu::Tensor& want = refs[static_cast<size_t>(i % distinct)];
      bool exact = true;
      for (size_t j = 0; j < want.size(); ++j) {
        const float g = out[0].data()[j], w = want.data()[j];
        max_abs = std::max(max_abs, static_cast<double>(std::fabs(g - w)));
        if (std::memcmp(&g, &w, sizeof g) != 0)
          exact = false;
      }
      if (!exact)
        ++mismatched;
      const auto& t = out.timings;
      lat.push_back(ms(t.total()));
      prep.push_back(ms(t.prep()));
      t_last = std::max(t_last, t.resolved);
      if (auto d = t.device()) {
        have_dev = true;
        dev_lat.push_back(ms(*d));
        dev_sum += static_cast<uint64_t>(d->count());
        dev_first = std::min(dev_first, *t.device_start_ns);
        dev_last = std::max(dev_last, *t.device_end_ns);
      }
    } catch (const vnpu::Error& e) {
      if (failed++ == 0)
        first_error = e.what();
    }
  }
  const auto wall = std::chrono::duration_cast<std::chrono::nanoseconds>(std::max(t_last, Clock::now()) - t0);
  rt.reset();

  const bool ok = failed == 0 && mismatched == 0;
  std::printf("check:    max abs error %.3g vs CPU reference; bit-exact: %s (%ld/%ld exact, %ld failed)\n", max_abs,
              mismatched == 0 && failed == 0 ? "yes" : "no", args.count - mismatched - failed, args.count, failed);
  if (failed)
    std::printf("error:    %s\n", first_error.c_str());
  const double thr = static_cast<double>(args.count - failed) / (static_cast<double>(wall.count()) / 1e9);
  std::printf("timing:   wall %.3f ms, throughput %.1f req/s\n", ms(wall), thr);
  std::printf("latency:  p50 %.3f ms, p99 %.3f ms (run() to resolved); prep p50 %.3f ms\n", percentile(lat, 50),
              percentile(lat, 99), percentile(prep, 50));
  double busy_pct = 0;
  if (have_dev) {
    // Jobs on one queue overlap across engines, so the span from first start to last end is the busy window.
    const double span_ms = static_cast<double>(dev_last - dev_first) / 1e6;
    busy_pct = 100.0 * span_ms / ms(wall);
    std::printf("device:   busy %.3f ms of %.3f ms wall (%.0f%%); per-job device time p50 %.3f ms, sum %.3f ms\n",
                span_ms, ms(wall), busy_pct, percentile(dev_lat, 50), static_cast<double>(dev_sum) / 1e6);
  } else {
    std::printf("device:   no device timestamps on this submit path\n");
  }

  if (!args.json.empty()) {
    std::ofstream f(args.json);
    f << "{\n"
      << "  \"device\": \"" << json_escape(info.name) << "\",\n"
      << "  \"backend\": \"" << info.backend << "\",\n"
      << "  \"submit_path\": \"" << info.submit_path << "\",\n"
      << "  \"m\": " << args.m << ", \"k\": " << args.k << ", \"n\": " << args.n << ",\n"
      << "  \"count\": " << args.count << ", \"parallel\": " << args.parallel << ", \"failed\": " << failed << ",\n"
      << "  \"bit_exact\": " << (mismatched == 0 && failed == 0 ? "true" : "false") << ",\n"
      << "  \"max_abs_error\": " << max_abs << ",\n"
      << "  \"wall_ms\": " << ms(wall) << ",\n"
      << "  \"throughput_rps\": " << thr << ",\n"
      << "  \"latency_p50_ms\": " << percentile(lat, 50) << ", \"latency_p99_ms\": " << percentile(lat, 99) << ",\n"
      << "  \"prep_p50_ms\": " << percentile(prep, 50) << ",\n";
    if (have_dev)
      f << "  \"device_busy_ms\": " << static_cast<double>(dev_last - dev_first) / 1e6
        << ", \"device_busy_pct\": " << busy_pct << "\n";
    else
      f << "  \"device_busy_ms\": null, \"device_busy_pct\": null\n";
    f << "}\n";
    if (!f) {
      std::fprintf(stderr, "vnpu-demo: cannot write %s\n", args.json.c_str());
      return 1;
    }
  }
  return ok ? 0 : 1;
}
