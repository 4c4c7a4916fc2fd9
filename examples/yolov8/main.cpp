// SPDX-License-Identifier: MIT
// yolov8: the seed's detection example. YOLOv8n on COCO val2017 images (letterboxed to 640), 100 requests
// through AsyncRuntime, synchronous vs asynchronous, parallel = 1 and 2; detections as COCO results JSON.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

#include <vnpu/error.h>
#include <nlohmann/json.hpp>

#include "../common/app.h"
#include "../common/coco.h"
#include "../common/postprocess.h"

namespace ex = vnpu::examples;

static const char kUsage[] =
    "usage: yolov8 --model yolov8n.vnpu --data COCO_ROOT [options]\n"
    "  Runs YOLOv8n (input 1x3x640x640) on COCO val2017 images (COCO_ROOT/val2017/*.jpg and\n"
    "  COCO_ROOT/annotations/instances_val2017.json), synchronously and asynchronously, and reports throughput,\n"
    "  stage times and device utilisation. Post-processing: confidence 0.25, class-wise NMS at IoU 0.45.\n"
    "  --backend sim|kernel   runtime backend (default: kernel if /dev/accel/accel0 exists, else sim)\n"
    "  --count N              requests per configuration (default 100, as in the seed)\n"
    "  --samples N            distinct images decoded and letterboxed once, then cycled (default 8)\n"
    "  --modes LIST           of sync,async,coro (default all)   --parallel LIST  (default 1,2)\n"
    "  --window N             requests in flight in async/coro modes (default 8)\n"
    "  --timing-only          the device models compute time but skips the arithmetic (outputs meaningless)\n"
    "  --json F --trace F --svg F   write the numbers / a Perfetto trace / a timeline plot\n"
    "  --out-dir DIR          write DIR/detections.json (COCO results format) for the first configuration\n";

int main(int argc, char** argv) try {
  ex::AppOptions opt = ex::parse_app_options(argc, argv, kUsage);
  ex::CocoDataset coco(opt.data);
  const size_t n = std::min(coco.images().size(), size_t(opt.samples));
  constexpr int kSize = 640;
  std::vector<vnpu::Tensor> inputs;
  std::vector<ex::Letterbox> boxes;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    ex::Letterbox lb;
    inputs.push_back(ex::letterbox(ex::load_jpeg(coco.image_path(coco.images()[i])), kSize, &lb));
    boxes.push_back(lb);
  }
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "yolov8: " << n << " COCO images from " << opt.data << " decoded and letterboxed to " << kSize << " ("
            << load_ms / double(n) << " ms per image on the host)\n";

  std::mutex mu;
  nlohmann::json detections = nlohmann::json::array();
  size_t boxes_found = 0, images_done = 0;
  bool first_config = true;
  ex::AppHooks hooks;
  hooks.begin = [&](const ex::BenchConfig&) { boxes_found = 0, images_done = 0; };
  hooks.sink = [&](int i, vnpu::Outputs& out) {
    if (opt.timing_only)
      return;
    auto dets = ex::decode_yolov8(out[0], boxes[size_t(i) % n]);
    std::lock_guard lock(mu);
    boxes_found += dets.size(), ++images_done;
    if (first_config && size_t(i) < n)
      ex::append_coco_results(detections, coco.images()[size_t(i)].id, dets);
  };
  hooks.end = [&](const ex::BenchResult& r) {
    if (images_done)
      std::cerr << "    " << ex::mode_name(r.config.mode) << ": " << double(boxes_found) / double(images_done)
                << " detections per image after NMS (untrained deterministic weights)\n";
    if (first_config && !opt.out_dir.empty() && !opt.timing_only) {
      std::filesystem::create_directories(opt.out_dir);
      std::ofstream(opt.out_dir + "/detections.json", std::ios::trunc) << detections.dump() << "\n";
      std::cerr << "    wrote " << opt.out_dir << "/detections.json (" << detections.size() << " detections)\n";
    }
    first_config = false;
  };
  ex::run_app(
      opt, "YOLOv8n 1x3x640x640 (yolov8)",
      ex::borrow_cycling(inputs),
      hooks);
  return 0;
} catch (const std::exception& e) {  // vnpu::Error included
  std::cerr << "yolov8: " << e.what() << "\n";
  return 1;
}
