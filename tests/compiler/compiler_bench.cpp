// SPDX-License-Identifier: MIT
// vnpu-kernel-bench MODEL.vnpu [--iters N] [--reference] [--serve]: host time of the program's kernels (the
// work the device's compute engine does for one EXEC). Inputs are pseudo-random. --serve: after warm-up, print
// "ready", then run once per line read from stdin and print its time in ms (so that a driver can interleave
// runs with another framework's on a shared machine).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "conformance.h"

extern "C" {
#include "vnpu_ops.h"
#include "vnpu_program.h"
}

int main(int argc, char** argv) {
  std::string path;
  int iters = 5;
  bool reference = false, serve = false;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc)
      iters = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--reference"))
      reference = true;
    else if (!std::strcmp(argv[i], "--serve"))
      serve = true;
    else if (argv[i][0] != '-')
      path = argv[i];
    else {
      std::fprintf(stderr, "usage: vnpu-kernel-bench MODEL.vnpu [--iters N] [--reference]\n");
      return 2;
    }
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: vnpu-kernel-bench MODEL.vnpu [--iters N] [--reference]\n");
    return 2;
  }
  try {
    vnpu::ModelFile m = vnpu::ModelFile::load(path);
    std::vector<vnpu::conformance::HostTensor> in;
    for (const auto& s : m.inputs()) {
      vnpu::conformance::HostTensor h;
      h.shape = s.shape;
      h.data.resize(s.size_bytes / 4);
      for (size_t i = 0; i < h.data.size(); i++)
        h.data[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
      in.push_back(std::move(h));
    }
    // Device memory set up once (as the runtime does); only vnpu_program_execute is timed.
    vnpu::conformance::FlatDevice dev(m);
    dev.write_inputs(in);
    // As the engine runs it: converted weights kept up to a compute core's default share of host-mem-max.
    dev.weights_cache_max = 512ull << 20;
    vnpu_ops_set_default_mode(reference ? VNPU_KERNELS_REFERENCE : VNPU_KERNELS_AUTO);
    dev.execute();  // warm-up: page in weights, fill oneDNN's primitive cache
    if (serve) {
      std::printf("ready\n");
      std::fflush(stdout);
      char line[64];
      while (std::fgets(line, sizeof line, stdin)) {
        auto t0 = std::chrono::steady_clock::now();
        dev.execute();
        std::printf("%.3f\n", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        std::fflush(stdout);
      }
      return 0;
    }
    std::vector<double> ms;
    for (int i = 0; i < iters; i++) {
      auto t0 = std::chrono::steady_clock::now();
      dev.execute();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    VnpuComputeModel cm{4000000000000ull, 200000000000ull, 2000};  // informational: 4 TFLOP/s, 200 GB/s
    VnpuProgramCost cost;
    (void)vnpu_program_cost(m.program().data(), m.program().size(), &cm, &cost);
    std::printf(
        "{\"model\": \"%s\", \"kernels\": \"%s\", \"iters\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
        "\"ops\": %llu, \"gflop\": %.3f}\n",
        path.c_str(), reference ? "reference" : "onednn", iters, ms[ms.size() / 2], ms[0],
        static_cast<unsigned long long>(cost.ops), static_cast<double>(cost.flops) / 1e9);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vnpu-kernel-bench: %s\n", e.what());
    return 1;
  }
}
