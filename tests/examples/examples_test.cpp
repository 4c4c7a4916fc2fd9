// SPDX-License-Identifier: MIT
// Unit tests of the examples' data loaders and post-processing, on hand-computed cases and on the fixtures
// (NYU .h5, COCO JPEG + JSON) that examples/data/make_fixtures.py writes (VNPU_EXAMPLE_FIXTURES).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <vnpu/error.h>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "coco.h"
#include "image.h"
#include "npy.h"
#include "nyu.h"
#include "postprocess.h"

namespace ex = vnpu::examples;
namespace fs = std::filesystem;

namespace {

std::string fixtures() {
  const char* d = std::getenv("VNPU_EXAMPLE_FIXTURES");
  return d ? d : "";
}

ex::Detection det(float x1, float y1, float x2, float y2, float score, int cls) {
  return {{x1, y1, x2, y2}, score, cls};
}

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("vnpu-examples-test-" + name);
}

}  // namespace

TEST(PipelineBound, CountsParallelWorkersAsOneWiderStage) {
  ex::BenchResult r;
  r.engine_times = true;
  r.config.mode = ex::Mode::kAsync;
  r.config.parallel = 2;
  r.compute_cores = 2;
  r.prep.mean = 4, r.h2d.mean = 1, r.compute.mean = 6, r.d2h.mean = 1, r.post.mean = 0.5;
  EXPECT_DOUBLE_EQ(r.stage_sum_ms(), 12.5);
  EXPECT_DOUBLE_EQ(r.stage_max_ms(), 3.0);  // compute 6 ms on 2 cores; prep 4 ms on 2 threads
  EXPECT_DOUBLE_EQ(r.pipeline_bound(), 12.5 / 3.0);
  EXPECT_DOUBLE_EQ(r.bound_ips(), 1000.0 / 3.0);
  r.config.parallel = 1;  // one prep thread: prep becomes the slowest stage
  EXPECT_DOUBLE_EQ(r.stage_max_ms(), 4.0);
  r.config.mode = ex::Mode::kSync;  // nothing overlaps
  EXPECT_DOUBLE_EQ(r.bound_ips(), 1000.0 / 12.5);
}

TEST(Iou, MatchesHandComputedOverlap) {
  // [0,0,10,10] and [5,5,15,15]: intersection 25, union 175.
  EXPECT_FLOAT_EQ(ex::iou({0, 0, 10, 10}, {5, 5, 15, 15}), 25.0f / 175.0f);
  EXPECT_FLOAT_EQ(ex::iou({0, 0, 10, 10}, {0, 0, 10, 10}), 1.0f);
  EXPECT_FLOAT_EQ(ex::iou({0, 0, 10, 10}, {10, 0, 20, 10}), 0.0f);  // touching edges
  EXPECT_FLOAT_EQ(ex::iou({0, 0, 0, 0}, {0, 0, 0, 0}), 0.0f);       // empty boxes, no division by zero
}

TEST(Nms, SuppressesOverlapsWithinAClassOnly) {
  std::vector<ex::Detection> in = {
      det(0, 0, 10, 10, 0.9f, 1),    // kept
      det(1, 1, 11, 11, 0.8f, 1),    // IoU 81/119 = 0.68 with the first: suppressed
      det(1, 1, 11, 11, 0.7f, 2),    // same box, other class: kept
      det(20, 20, 30, 30, 0.6f, 1),  // no overlap: kept
      det(0, 0, 10, 14, 0.5f, 1),    // IoU 100/140 = 0.71 with the first: suppressed
  };
  auto out = ex::nms_per_class(in, 0.45f, 300);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_FLOAT_EQ(out[0].score, 0.9f);
  EXPECT_EQ(out[1].class_index, 2);
  EXPECT_FLOAT_EQ(out[2].score, 0.6f);
}

TEST(Nms, KeepsAtMostMaxDetectionsByScore) {
  std::vector<ex::Detection> in;
  for (int i = 0; i < 10; ++i)
    in.push_back(det(20.0f * i, 0, 20.0f * i + 10, 10, 0.1f * i, 0));
  auto out = ex::nms_per_class(in, 0.45f, 3);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_FLOAT_EQ(out[0].score, 0.9f);
  EXPECT_FLOAT_EQ(out[2].score, 0.7f);
}

TEST(DecodeYolov8, FiltersByConfidenceAndUndoesTheLetterbox) {
  // 2 classes, 3 anchors: rows cx, cy, w, h, p(class0), p(class1).
  // Anchor 0: box centred (100, 120), 40x20, class 1 at 0.8. Anchor 1: below threshold. Anchor 2: NaN score.
  std::vector<float> v = {100,  50,   10,   //
                          120,  50,   10,   //
                          40,   10,   10,   //
                          20,   10,   10,   //
                          0.1f, 0.2f, NAN,  //
                          0.8f, 0.1f, 0.3f};
  vnpu::Tensor out({1, 6, 3}, v);
  // Source 200x100 letterboxed into 64x64 would be scale 0.32, pad_y 16; use scale 0.5, pads (10, 20).
  ex::Letterbox lb{0.5f, 10, 20, 400, 300};
  auto dets = ex::decode_yolov8(out, lb);
  ASSERT_EQ(dets.size(), 1u);
  EXPECT_EQ(dets[0].class_index, 1);
  EXPECT_FLOAT_EQ(dets[0].score, 0.8f);
  // x1 = (100 - 20 - 10) / 0.5 = 140; y1 = (120 - 10 - 20) / 0.5 = 180; x2 = 220; y2 = 220.
  EXPECT_FLOAT_EQ(dets[0].box[0], 140);
  EXPECT_FLOAT_EQ(dets[0].box[1], 180);
  EXPECT_FLOAT_EQ(dets[0].box[2], 220);
  EXPECT_FLOAT_EQ(dets[0].box[3], 220);
}

TEST(DecodeYolov8, ClipsBoxesToTheSourceImage) {
  vnpu::Tensor out({1, 5, 1}, {5, 5, 40, 40, 0.9f});
  auto dets = ex::decode_yolov8(out, ex::Letterbox{1, 0, 0, 30, 20});
  ASSERT_EQ(dets.size(), 1u);
  EXPECT_EQ(dets[0].box, (std::array<float, 4>{0, 0, 25, 20}));
}

TEST(DecodeYolov8, RejectsAWrongShape) {
  EXPECT_THROW((void)ex::decode_yolov8(vnpu::Tensor({1, 4, 10}), ex::Letterbox{}), vnpu::Error);
  EXPECT_THROW((void)ex::decode_yolov8(vnpu::Tensor({84, 10}), ex::Letterbox{}), vnpu::Error);
}

TEST(CocoResults, UseCocoCategoryIdsAndXywh) {
  nlohmann::json r = nlohmann::json::array();
  std::vector<ex::Detection> d = {det(10, 20, 40, 60, 0.5f, 0), det(0, 0, 1, 1, 0.25f, 79)};
  ex::append_coco_results(r, 139, d);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["image_id"], 139);
  EXPECT_EQ(r[0]["category_id"], 1);  // person
  EXPECT_EQ(r[0]["bbox"], nlohmann::json({10.0, 20.0, 30.0, 40.0}));
  EXPECT_EQ(r[1]["category_id"], 90);  // toothbrush
  EXPECT_THROW((void)ex::coco_category_id(80), vnpu::Error);
}

TEST(DepthMetrics, MatchHandComputedValuesAndSkipInvalidPixels) {
  std::vector<float> gt = {1, 2, 4, 0 /* no reading */, 20 /* beyond max */};
  std::vector<float> pred = {1, 3, 4, 5, 5};
  auto m = ex::depth_metrics(pred, gt);
  EXPECT_EQ(m.valid_pixels, 3u);
  EXPECT_NEAR(m.abs_rel, (0 + 0.5 + 0) / 3.0, 1e-12);
  EXPECT_NEAR(m.rmse, std::sqrt(1.0 / 3.0), 1e-12);
  EXPECT_NEAR(m.delta1, 2.0 / 3.0, 1e-12);  // 3/2 = 1.5 is not < 1.25
  EXPECT_THROW((void)ex::depth_metrics(pred, std::vector<float>{1}), vnpu::Error);
}

TEST(Letterbox, CentresTheImageOnGrey) {
  ex::Image img{4, 2, std::vector<uint8_t>(4 * 2 * 3, 255)};
  ex::Letterbox lb;
  vnpu::Tensor t = ex::letterbox(img, 8, &lb);
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{1, 3, 8, 8}));
  EXPECT_FLOAT_EQ(lb.scale, 2.0f);
  EXPECT_FLOAT_EQ(lb.pad_x, 0);
  EXPECT_FLOAT_EQ(lb.pad_y, 2);
  EXPECT_FLOAT_EQ(t.data()[0], 114.0f / 255.0f);          // top padding row
  EXPECT_FLOAT_EQ(t.data()[2 * 8 + 3], 1.0f);             // image row 2
  EXPECT_FLOAT_EQ(t.data()[6 * 8 + 3], 114.0f / 255.0f);  // bottom padding
}

TEST(ResizeBilinear, InterpolatesBetweenPixelCentres) {
  // 2x1 image black | white upsampled to 4x1: half-pixel centres give 0, 0.25, 0.75, 1 of 255.
  ex::Image img{2, 1, {0, 0, 0, 255, 255, 255}};
  auto px = ex::resize_bilinear(img, 4, 1);
  EXPECT_FLOAT_EQ(px[0], 0);
  EXPECT_FLOAT_EQ(px[3], 63.75f);
  EXPECT_FLOAT_EQ(px[6], 191.25f);
  EXPECT_FLOAT_EQ(px[9], 255);
}

TEST(Npy, RoundTripsAndRejectsOtherDtypes) {
  vnpu::Tensor t({2, 3}, {1, 2, 3, 4, 5, 6});
  auto path = temp_file("rt.npy");
  ex::save_npy(path, t);
  EXPECT_EQ(ex::load_npy(path), t);
  std::ofstream(path, std::ios::trunc) << "\x93NUMPY\x01\x00" << char(40) << char(0)
                                       << "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }";
  EXPECT_THROW((void)ex::load_npy(path), vnpu::Error);
  std::ofstream(path, std::ios::trunc) << "not numpy";
  EXPECT_THROW((void)ex::load_npy(path), vnpu::Error);
  fs::remove(path);
}

TEST(NyuLoader, ReadsTheFixtureFiles) {
  if (fixtures().empty())
    GTEST_SKIP() << "VNPU_EXAMPLE_FIXTURES not set";
  auto files = ex::list_nyu_files(fixtures() + "/nyu_depth_v2");
  ASSERT_GE(files.size(), 1u);
  ex::NyuSample s = ex::load_nyu_h5(files[0]);
  EXPECT_EQ(s.rgb.width, 640);
  EXPECT_EQ(s.rgb.height, 480);
  EXPECT_EQ(s.depth.size(), size_t(640 * 480));
  float lo = 1e9f, hi = -1e9f;
  for (float d : s.depth)
    lo = std::min(lo, d), hi = std::max(hi, d);
  EXPECT_EQ(lo, 0.0f);  // the fixture has missing readings
  EXPECT_GT(hi, 1.0f);
  EXPECT_LE(hi, 10.0f);
  vnpu::Tensor x = ex::to_deeplab_input(s.rgb, 512);
  EXPECT_EQ(x.shape(), (std::vector<int64_t>{1, 512, 512, 3}));
  EXPECT_EQ(ex::resize_depth_nearest(s, 512).size(), size_t(512 * 512));
}

TEST(NyuLoader, RejectsFilesThatAreNotNyuSamples) {
  auto path = temp_file("bad.h5");
  std::ofstream(path, std::ios::trunc) << "definitely not HDF5";
  EXPECT_THROW((void)ex::load_nyu_h5(path), vnpu::Error);
  fs::remove(path);
  EXPECT_THROW((void)ex::load_nyu_h5(temp_file("missing.h5")), vnpu::Error);
  EXPECT_THROW((void)ex::list_nyu_files(fs::temp_directory_path() / "vnpu-no-such-dir"), vnpu::Error);
}

TEST(CocoLoader, ReadsAnnotationsAndImages) {
  if (fixtures().empty())
    GTEST_SKIP() << "VNPU_EXAMPLE_FIXTURES not set";
  ex::CocoDataset coco(fixtures() + "/coco");
  ASSERT_GE(coco.images().size(), 1u);
  EXPECT_EQ(coco.category_name(1), "person");
  EXPECT_EQ(coco.category_name(90), "toothbrush");
  for (const auto& img : coco.images()) {
    EXPECT_FALSE(img.objects.empty());
    ex::Image px = ex::load_jpeg(coco.image_path(img));
    EXPECT_EQ(px.width, img.width);
    EXPECT_EQ(px.height, img.height);
    ex::Letterbox lb;
    vnpu::Tensor t = ex::letterbox(px, 640, &lb);
    EXPECT_EQ(t.shape(), (std::vector<int64_t>{1, 3, 640, 640}));
    EXPECT_NEAR(lb.scale, 640.0f / std::max(img.width, img.height), 1e-6);
  }
}

TEST(CocoLoader, RejectsCorruptJpegAndJson) {
  auto dir = temp_file("coco");
  fs::create_directories(dir / "annotations");
  fs::create_directories(dir / "val2017");
  std::ofstream(dir / "annotations" / "instances_val2017.json") << "{\"images\": [{\"id\": 1}]}";
  EXPECT_THROW(ex::CocoDataset{dir.string()}, vnpu::Error);  // image without file_name
  std::ofstream(dir / "val2017" / "x.jpg") << "\xff\xd8\xff garbage";
  EXPECT_THROW((void)ex::load_jpeg((dir / "val2017" / "x.jpg").string()), vnpu::Error);
  fs::remove_all(dir);
  EXPECT_THROW(ex::CocoDataset{dir.string()}, vnpu::Error);
}
