// SPDX-License-Identifier: MIT
/// \file
/// Post-processing of the two example models: YOLOv8 detections (confidence filter, class-wise NMS, undoing
/// the letterbox, COCO results JSON) and DeepLabV3+ depth (metrics against NYU ground truth, 16-bit PGM).
#pragma once

#include <array>
#include <span>
#include <string>
#include <vector>

#include <vnpu/tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "image.h"

namespace vnpu::examples {

/// One detected object, in source-image pixels.
struct Detection {
  std::array<float, 4> box{};  ///< x1, y1, x2, y2
  float score = 0;
  int class_index = 0;  ///< 0..79 (YOLO order)
};

/// Knobs of YOLOv8 post-processing (Ultralytics' predict defaults).
struct YoloPostOptions {
  float conf_threshold = 0.25f;  ///< keep anchors whose best class probability is >= this
  float iou_threshold = 0.45f;   ///< suppress a box overlapping a kept box of the same class by more than this
  int max_detections = 300;      ///< per image, after NMS, highest scores first
  int max_candidates = 30000;    ///< before NMS, highest scores first
};

/// Intersection over union of two x1,y1,x2,y2 boxes (0 for empty boxes).
[[nodiscard]] float iou(const std::array<float, 4>& a, const std::array<float, 4>& b);

/// Greedy NMS within each class: boxes sorted by score (ties by index), a box is dropped if it overlaps an
/// already kept box of the same class with IoU > iou_threshold. Returns the kept detections by score.
[[nodiscard]] std::vector<Detection> nms_per_class(std::vector<Detection> dets, float iou_threshold, int max_keep);

/// Decodes YOLOv8's output [1, 4 + nc, anchors] whose rows are (cx, cy, w, h) in model-input pixels (the
/// DFL and anchor decoding are inside the graph) followed by per-class probabilities. Each anchor gets its
/// best class (single label); then the confidence filter, class-wise NMS, and the letterbox undone (boxes
/// clipped to the source image). Throws vnpu::Error(kInvalidArgument) if the shape is not [1, 4+nc, A].
[[nodiscard]] std::vector<Detection> decode_yolov8(const Tensor& output, const Letterbox& lb,
                                                   const YoloPostOptions& opt = {});

/// Appends COCO results entries {"image_id", "category_id", "bbox": [x, y, w, h], "score"} to `results`
/// (a JSON array), using the 80 → 91 category-id mapping.
void append_coco_results(nlohmann::json& results, int image_id, std::span<const Detection> dets);

/// Depth-estimation metrics over the pixels with a valid ground truth (min_depth < gt <= max_depth).
struct DepthMetrics {
  size_t valid_pixels = 0;
  double abs_rel = 0;  ///< mean |pred - gt| / gt
  double rmse = 0;     ///< metres
  double delta1 = 0;   ///< fraction with max(pred/gt, gt/pred) < 1.25
};

/// Compares a predicted depth map (metres, any layout with pred.size() == gt.size()) with ground truth.
/// Throws vnpu::Error(kInvalidArgument) if the sizes differ.
[[nodiscard]] DepthMetrics depth_metrics(std::span<const float> pred, std::span<const float> gt,
                                         float min_depth = 1e-3f, float max_depth = 10.0f);

/// Writes a depth map as a 16-bit binary PGM in millimetres (clamped to 0..65535). Throws vnpu::Error(kIo).
void write_depth_pgm(const std::string& path, std::span<const float> depth, int width, int height);

}  // namespace vnpu::examples
