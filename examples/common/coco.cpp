// SPDX-License-Identifier: MIT
#include "coco.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include <vnpu/error.h>

namespace vnpu::examples {
namespace {

constexpr std::array<int, 80> kCocoIds = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90};

}  // namespace

int coco_category_id(int class_index) {
  if (class_index < 0 || class_index >= int(kCocoIds.size()))
    throw Error(ErrorCode::kInvalidArgument, "YOLO class index " + std::to_string(class_index) + " is not in 0..79");
  return kCocoIds[size_t(class_index)];
}

CocoDataset::CocoDataset(const std::string& root, const std::string& split) : image_dir_(root + "/" + split) {
  const std::string ann = root + "/annotations/instances_" + split + ".json";
  std::ifstream in(ann);
  if (!in)
    throw Error(ErrorCode::kNotFound,
                ann + ": no COCO annotation file (expected <root>/annotations/instances_" + split + ".json)");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
    std::map<int, size_t> by_id;
    for (const auto& j : doc.at("images")) {
      CocoImage img;
      img.id = j.at("id").get<int>();
      img.file_name = j.at("file_name").get<std::string>();
      img.width = j.at("width").get<int>();
      img.height = j.at("height").get<int>();
      if (img.file_name.empty() || img.file_name.find("..") != std::string::npos || img.file_name[0] == '/')
        throw Error(ErrorCode::kInvalidArgument, ann + ": image " + std::to_string(img.id) + " has a bad file_name");
      if (!by_id.emplace(img.id, images_.size()).second)
        throw Error(ErrorCode::kInvalidArgument, ann + ": duplicate image id " + std::to_string(img.id));
      images_.push_back(std::move(img));
    }
    if (doc.contains("annotations")) {
      for (const auto& j : doc.at("annotations")) {
        auto it = by_id.find(j.at("image_id").get<int>());
        if (it == by_id.end())
          continue;  // annotation of an image not in this split
        CocoObject o;
        o.category_id = j.at("category_id").get<int>();
        auto b = j.at("bbox");
        if (b.size() != 4)
          throw Error(ErrorCode::kInvalidArgument, ann + ": a bbox does not have 4 numbers");
        for (size_t k = 0; k < 4; ++k)
          o.bbox[k] = b[k].get<float>();
        o.iscrowd = j.value("iscrowd", 0) != 0;
        images_[it->second].objects.push_back(o);
      }
    }
    names_.assign(91, "");
    for (const auto& j : doc.at("categories")) {
      int id = j.at("id").get<int>();
      if (id >= 0 && id < 91)
        names_[size_t(id)] = j.at("name").get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, ann + ": not COCO instances JSON: " + e.what());
  }
  if (images_.empty())
    throw Error(ErrorCode::kNotFound, ann + ": lists no images");
  std::sort(images_.begin(), images_.end(), [](const CocoImage& a, const CocoImage& b) { return a.id < b.id; });
}

const std::string& CocoDataset::category_name(int id) const {
  static const std::string kNone;
  return id >= 0 && size_t(id) < names_.size() ? names_[size_t(id)] : kNone;
}

}  // namespace vnpu::examples
