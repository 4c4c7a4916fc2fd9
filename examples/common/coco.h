// SPDX-License-Identifier: MIT
/// \file
/// COCO val2017 as the seed reads it: a directory of JPEG images plus annotations/instances_val2017.json.
/// Also the 80 ↔ 91 category-id mapping YOLO models use and the COCO results ("detections") JSON format.
#pragma once

#include <array>
#include <string>
#include <vector>

namespace vnpu::examples {

/// One ground-truth object.
struct CocoObject {
  int category_id = 0;          ///< COCO id (1..90, non-contiguous)
  std::array<float, 4> bbox{};  ///< x, y, w, h in source pixels
  bool iscrowd = false;
};

/// One image entry with its annotations.
struct CocoImage {
  int id = 0;
  std::string file_name;  ///< relative to the image directory
  int width = 0, height = 0;
  std::vector<CocoObject> objects;
};

/// The COCO dataset at `root` (root/val2017/*.jpg, root/annotations/instances_val2017.json).
class CocoDataset {
 public:
  /// Parses the annotation file. Throws vnpu::Error(kNotFound) if it is missing, kInvalidArgument naming the
  /// file and the bad field if it is not COCO instances JSON.
  explicit CocoDataset(const std::string& root, const std::string& split = "val2017");

  [[nodiscard]] const std::vector<CocoImage>& images() const noexcept { return images_; }
  /// Full path of an image file.
  [[nodiscard]] std::string image_path(const CocoImage& img) const { return image_dir_ + "/" + img.file_name; }
  /// Category names by COCO id ("" for unused ids).
  [[nodiscard]] const std::string& category_name(int id) const;

 private:
  std::string image_dir_;
  std::vector<CocoImage> images_;
  std::vector<std::string> names_;  // indexed by COCO id
};

/// COCO category id (1..90) of YOLO class index 0..79; throws vnpu::Error(kInvalidArgument) outside.
[[nodiscard]] int coco_category_id(int class_index);

}  // namespace vnpu::examples
