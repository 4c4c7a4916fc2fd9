// SPDX-License-Identifier: MIT
#include "postprocess.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include <vnpu/error.h>

#include "coco.h"

namespace vnpu::examples {

float iou(const std::array<float, 4>& a, const std::array<float, 4>& b) {
  const float iw = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float ih = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = iw * ih;
  const float area_a = std::max(0.0f, a[2] - a[0]) * std::max(0.0f, a[3] - a[1]);
  const float area_b = std::max(0.0f, b[2] - b[0]) * std::max(0.0f, b[3] - b[1]);
  const float uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0f;
}

std::vector<Detection> nms_per_class(std::vector<Detection> dets, float iou_threshold, int max_keep) {
  std::vector<size_t> order(dets.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Stable: equal scores keep their input order, so the result does not depend on the sort implementation.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return dets[a].score > dets[b].score; });
  std::vector<Detection> kept;
  for (size_t i : order) {
    if (max_keep >= 0 && kept.size() >= size_t(max_keep))
      break;
    const Detection& d = dets[i];
    bool suppressed = std::any_of(kept.begin(), kept.end(), [&](const Detection& k) {
      return k.class_index == d.class_index && iou(k.box, d.box) > iou_threshold;
    });
    if (!suppressed)
      kept.push_back(d);
  }
  return kept;
}

std::vector<Detection> decode_yolov8(const Tensor& output, const Letterbox& lb, const YoloPostOptions& opt) {
  const auto& s = output.shape();
  if (s.size() != 3 || s[0] != 1 || s[1] < 5)
    throw Error(ErrorCode::kInvalidArgument, "YOLOv8 output must be [1, 4 + classes, anchors]");
  const size_t rows = size_t(s[1]), anchors = size_t(s[2]);
  const int classes = int(rows - 4);
  auto at = [&](size_t r, size_t a) { return output.data()[r * anchors + a]; };
  std::vector<Detection> cand;
  for (size_t a = 0; a < anchors; ++a) {
    int best = 0;
    float score = at(4, a);
    for (int c = 1; c < classes; ++c)
      if (at(4 + size_t(c), a) > score)
        score = at(4 + size_t(c), a), best = c;
    if (!(score >= opt.conf_threshold))
      continue;  // also drops NaN
    const float cx = at(0, a), cy = at(1, a), w = at(2, a), h = at(3, a);
    cand.push_back({{cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2}, score, best});
  }
  if (cand.size() > size_t(opt.max_candidates)) {
    std::partial_sort(cand.begin(), cand.begin() + opt.max_candidates, cand.end(),
                      [](const Detection& a, const Detection& b) { return a.score > b.score; });
    cand.resize(size_t(opt.max_candidates));
  }
  std::vector<Detection> kept = nms_per_class(std::move(cand), opt.iou_threshold, opt.max_detections);
  for (Detection& d : kept) {
    for (int k = 0; k < 4; ++k) {
      const float pad = k % 2 == 0 ? lb.pad_x : lb.pad_y;
      const float limit = float(k % 2 == 0 ? lb.src_width : lb.src_height);
      d.box[size_t(k)] = std::clamp((d.box[size_t(k)] - pad) / lb.scale, 0.0f, limit);
    }
  }
  return kept;
}

void append_coco_results(nlohmann::json& results, int image_id, std::span<const Detection> dets) {
  for (const Detection& d : dets) {
    // COCO results round to a few decimals in practice; keep floats as they are.
    results.push_back({{"image_id", image_id},
                       {"category_id", coco_category_id(d.class_index)},
                       {"bbox", {d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]}},
                       {"score", d.score}});
  }
}

DepthMetrics depth_metrics(std::span<const float> pred, std::span<const float> gt, float min_depth, float max_depth) {
  if (pred.size() != gt.size())
    throw Error(ErrorCode::kInvalidArgument, "depth_metrics: prediction has " + std::to_string(pred.size()) +
                                                 " pixels, ground truth " + std::to_string(gt.size()));
  DepthMetrics m;
  double sq = 0;
  for (size_t i = 0; i < gt.size(); ++i) {
    const double g = gt[i], p = pred[i];
    if (!(g > min_depth && g <= max_depth) || !std::isfinite(p))
      continue;
    ++m.valid_pixels;
    m.abs_rel += std::abs(p - g) / g;
    sq += (p - g) * (p - g);
    if (p > 0 && std::max(p / g, g / p) < 1.25)
      m.delta1 += 1;
  }
  if (m.valid_pixels) {
    m.abs_rel /= double(m.valid_pixels);
    m.rmse = std::sqrt(sq / double(m.valid_pixels));
    m.delta1 /= double(m.valid_pixels);
  }
  return m;
}

void write_depth_pgm(const std::string& path, std::span<const float> depth, int width, int height) {
  if (depth.size() != size_t(width) * size_t(height))
    throw Error(ErrorCode::kInvalidArgument, "write_depth_pgm: size does not match width x height");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << "P5\n" << width << ' ' << height << "\n65535\n";
  for (float d : depth) {
    const double mm = std::isfinite(d) ? std::clamp(double(d) * 1000.0, 0.0, 65535.0) : 0.0;
    const auto v = uint16_t(std::lround(mm));
    out.put(char(v >> 8)).put(char(v & 0xff));  // PGM samples are big-endian
  }
  if (!out.flush())
    throw Error(ErrorCode::kIo, path + ": write failed: " + std::strerror(errno));
}

}  // namespace vnpu::examples
