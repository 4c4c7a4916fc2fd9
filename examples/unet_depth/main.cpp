// SPDX-License-Identifier: MIT
// unet_depth: the seed's depth-estimation example. DeepLabV3+ (ResNet-50) on NYU Depth V2 samples, 100
// requests through AsyncRuntime, synchronous vs asynchronous, parallel = 1 and 2.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <mutex>

#include <vnpu/error.h>

#include "../common/app.h"
#include "../common/nyu.h"
#include "../common/postprocess.h"

namespace ex = vnpu::examples;

static const char kUsage[] =
    "usage: unet_depth --model deeplabv3plus.vnpu --data NYU_ROOT [options]\n"
    "  Runs DeepLabV3+ (ResNet-50, input 1x512x512x3) on NYU Depth V2 .h5 samples (datasets rgb, depth)\n"
    "  found under NYU_ROOT, synchronously and asynchronously, and reports throughput, stage times and\n"
    "  device utilisation, plus depth metrics against the ground truth.\n"
    "  --backend sim|kernel   runtime backend (default: kernel if /dev/accel/accel0 exists, else sim)\n"
    "  --count N              requests per configuration (default 100, as in the seed)\n"
    "  --samples N            distinct samples loaded and preprocessed once, then cycled (default 8)\n"
    "  --modes LIST           of sync,async,coro (default all)   --parallel LIST  (default 1,2)\n"
    "  --window N             requests in flight in async/coro modes (default 8)\n"
    "  --timing-only          the device models compute time but skips the arithmetic (outputs meaningless)\n"
    "  --json F --trace F --svg F   write the numbers / a Perfetto trace / a timeline plot\n"
    "  --out-dir DIR          write the first prediction as DIR/depth_0.pgm (16-bit, millimetres)\n";

int main(int argc, char** argv) try {
  ex::AppOptions opt = ex::parse_app_options(argc, argv, kUsage);
  const auto files = ex::list_nyu_files(opt.data);
  const size_t n = std::min(files.size(), size_t(opt.samples));
  constexpr int kSize = 512;
  std::vector<vnpu::Tensor> inputs;
  std::vector<std::vector<float>> truth;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    ex::NyuSample s = ex::load_nyu_h5(files[i]);
    inputs.push_back(ex::to_deeplab_input(s.rgb, kSize));
    truth.push_back(ex::resize_depth_nearest(s, kSize));
  }
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "unet_depth: " << n << " NYU samples from " << opt.data << " loaded, resized to " << kSize << "x"
            << kSize << " (" << load_ms / double(n) << " ms per sample on the host)\n";

  std::mutex mu;
  ex::DepthMetrics sum;
  size_t scored = 0;
  ex::AppHooks hooks;
  hooks.begin = [&](const ex::BenchConfig&) { sum = {}, scored = 0; };
  hooks.sink = [&](int i, vnpu::Outputs& out) {
    const auto& y = out[0];
    if (y.size() != size_t(kSize) * kSize)
      throw vnpu::Error(vnpu::ErrorCode::kInvalidArgument, "unet_depth: model output is not 1x512x512x1");
    if (opt.timing_only)
      return;
    std::lock_guard lock(mu);
    ex::DepthMetrics m = ex::depth_metrics(y.data(), truth[size_t(i) % n]);
    sum.abs_rel += m.abs_rel, sum.rmse += m.rmse, sum.delta1 += m.delta1, ++scored;
    if (i == 0 && !opt.out_dir.empty()) {
      std::filesystem::create_directories(opt.out_dir);
      ex::write_depth_pgm(opt.out_dir + "/depth_0.pgm", y.data(), kSize, kSize);
    }
  };
  hooks.end = [&](const ex::BenchResult& r) {
    if (scored)
      std::cerr << "    " << ex::mode_name(r.config.mode) << ": depth vs ground truth over " << scored
                << " predictions: AbsRel " << sum.abs_rel / double(scored) << ", RMSE " << sum.rmse / double(scored)
                << " m, delta<1.25 " << sum.delta1 / double(scored)
                << " (untrained deterministic weights: these only show the pipeline end to end)\n";
  };
  ex::run_app(
      opt, "DeepLabV3+ ResNet-50 1x512x512x3 (unet_depth)",
      ex::borrow_cycling(inputs),
      hooks);
  return 0;
} catch (const std::exception& e) {  // vnpu::Error included
  std::cerr << "unet_depth: " << e.what() << "\n";
  return 1;
}
