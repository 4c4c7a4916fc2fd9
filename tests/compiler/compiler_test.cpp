// SPDX-License-Identifier: MIT
// The ONNX importer and its passes: fusion, folding, planning, and clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "test_util.h"

namespace {

using vnpu::compile_onnx;
using vnpu::CompileError;
using vnpu::CompileOptions;
using vnpu::CompileStats;
using vnpu::test::OnnxBuilder;
namespace conf = vnpu::conformance;

std::string compile_error(const std::vector<uint8_t>& onnx, const CompileOptions& opt = {}) {
  try {
    (void)compile_onnx(onnx, opt);
  } catch (const CompileError& e) {
    return e.what();
  }
  return {};
}

std::vector<float> run(const vnpu::ModelFile& m, const std::vector<std::vector<float>>& inputs) {
  std::vector<conf::HostTensor> in;
  for (size_t k = 0; k < inputs.size(); k++)
    in.push_back({m.inputs()[k].shape, inputs[k]});
  return conf::flat_executor(true)(m, in).at(0).data;
}

void expect_near(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++)
    ASSERT_NEAR(a[i], b[i], 1e-5 + 1e-5 * std::fabs(b[i])) << i;
}

TEST(CompileOnnx, FoldsBatchNormAndReluIntoTheConvolution) {
  auto onnx = vnpu::test::conv_bn_relu_model();
  CompileStats st;
  auto fused = compile_onnx(onnx, {}, &st);
  EXPECT_EQ(fused.op_count(), 1u);
  EXPECT_EQ(st.fused_nodes, 2u);
  CompileOptions plain;
  plain.fold_batchnorm = plain.fuse_activations = false;
  auto unfused = compile_onnx(onnx, plain);
  EXPECT_EQ(unfused.op_count(), 3u);
  auto x = vnpu::test::iota_data(50);
  auto a = run(fused, {x}), b = run(unfused, {x});
  expect_near(a, b);
  bool any_zero = false, any_pos = false;
  for (float v : a)
    any_zero |= v == 0.0f, any_pos |= v > 0.0f;
  EXPECT_TRUE(any_zero && any_pos) << "relu should clip some outputs and keep others";
}

// ResNet's residual connection: Relu(Add(Conv(x), r)) becomes one convolution that adds r (F_RESIDUAL) and
// applies the Relu, whichever side of the Add the convolution is on; results equal the unfused program's.
TEST(CompileOnnx, FusesAResidualAddAndItsActivationIntoTheConvolution) {
  for (int side = 0; side < 2; side++) {
    OnnxBuilder b;
    std::vector<float> w(16 * 16 * 3 * 3), w2(16 * 16);
    for (size_t i = 0; i < w.size(); i++)
      w[i] = static_cast<float>((i * 7) % 11) / 40.0f - 0.12f;
    for (size_t i = 0; i < w2.size(); i++)
      w2[i] = static_cast<float>((i * 5) % 13) / 30.0f - 0.2f;
    b.input("x", {1, 16, 6, 6}).output("y");
    b.init("W", {16, 16, 3, 3}, w).init("W2", {16, 16, 1, 1}, w2).init("B", {16}, std::vector<float>(16, 0.05f));
    b.node("Conv", {"x", "W2"}, {"r"}, "shortcut");
    auto& c = b.node("Conv", {"x", "W", "B"}, {"c"}, "conv");
    OnnxBuilder::attr(c, "pads", std::vector<int64_t>{1, 1, 1, 1});
    b.node("Add", side ? std::vector<std::string>{"r", "c"} : std::vector<std::string>{"c", "r"}, {"s"}, "add");
    b.node("Relu", {"s"}, {"y"}, "relu");
    auto onnx = b.bytes();
    auto fused = compile_onnx(onnx);
    EXPECT_EQ(fused.op_count(), 2u) << "side " << side;
    CompileOptions plain;
    plain.fuse_activations = false;
    auto unfused = compile_onnx(onnx, plain);
    EXPECT_EQ(unfused.op_count(), 4u);
    auto x = vnpu::test::iota_data(16 * 36, 0.01f);
    for (bool reference : {true, false}) {
      std::vector<conf::HostTensor> in{{{1, 16, 6, 6}, x}};
      auto a = conf::flat_executor(reference)(fused, in).at(0).data;
      auto u = conf::flat_executor(true)(unfused, in).at(0).data;
      expect_near(a, u);
    }
  }
}

TEST(CompileOnnx, RecognisesSiluAndFusesItIntoTheConvolution) {
  OnnxBuilder b;
  b.input("x", {1, 2, 4, 4}).output("y");
  b.init("W", {2, 2, 1, 1}, {0.5f, -1.0f, 2.0f, 0.25f});
  b.node("Conv", {"x", "W"}, {"c"});
  b.node("Sigmoid", {"c"}, {"s"});
  b.node("Mul", {"c", "s"}, {"y"});
  auto m = compile_onnx(b.bytes());
  EXPECT_EQ(m.op_count(), 1u);
  auto x = vnpu::test::iota_data(32);
  auto y = run(m, {x});
  for (size_t p = 0; p < 16; p++) {
    float c0 = 0.5f * x[p] - 1.0f * x[16 + p];
    EXPECT_NEAR(y[p], c0 / (1.0f + std::exp(-c0)), 1e-5);
  }
}

TEST(CompileOnnx, UnsupportedOpNamesTheOpAndTheNode) {
  OnnxBuilder b;
  b.input("x", {4}).output("y");
  b.node("NonZero", {"x"}, {"y"}, "find_things_7");
  std::string e = compile_error(b.bytes());
  EXPECT_NE(e.find("NonZero"), std::string::npos) << e;
  EXPECT_NE(e.find("find_things_7"), std::string::npos) << e;
}

TEST(CompileOnnx, DynamicInputNeedsAShapeAndTakesAnOverride) {
  OnnxBuilder b;
  b.input("images", {-1, 3, 4, 4}).output("y");
  b.node("Relu", {"images"}, {"y"});
  std::string e = compile_error(b.bytes());
  EXPECT_NE(e.find("--input images:"), std::string::npos) << e;
  CompileOptions opt;
  opt.inputs.push_back(vnpu::parse_input_override("images:2x3x4x4:f32"));
  auto m = compile_onnx(b.bytes(), opt);
  EXPECT_EQ(m.outputs()[0].shape, (std::vector<int64_t>{2, 3, 4, 4}));
  opt.inputs[0].name = "nope";
  e = compile_error(b.bytes(), opt);
  EXPECT_NE(e.find("nope"), std::string::npos);
  EXPECT_NE(e.find("images"), std::string::npos) << "the message lists the real inputs: " << e;
}

TEST(InputOverride, ParsesNamesShapesAndTypes) {
  auto o = vnpu::parse_input_override("x:0:1x3x640x640:f32");  // tf2onnx-style name with a colon
  EXPECT_EQ(o.name, "x:0");
  EXPECT_EQ(o.shape, (std::vector<int64_t>{1, 3, 640, 640}));
  EXPECT_EQ(vnpu::parse_input_override("in:7").shape, (std::vector<int64_t>{7}));
  for (const char* bad : {"x", "x:1x", "x:0x3", "x:1x3:i8", ":1x2", "x:axb", "x:99999999999999"})
    EXPECT_THROW((void)vnpu::parse_input_override(bad), CompileError) << bad;
}

TEST(CompileOnnx, ShapeArithmeticIsFoldedAtCompileTime) {
  // y = Reshape(x, Concat(Gather(Shape(x), 0), [-1])): the flatten pattern PyTorch exports.
  OnnxBuilder b;
  b.input("x", {2, 3, 4}).output("y", 2);
  b.init_i64("zero", {}, {0}).init_i64("minus1", {1}, {-1}).init_i64("ax0", {1}, {0});
  b.node("Shape", {"x"}, {"s"});
  b.node("Gather", {"s", "zero"}, {"n"});
  b.node("Unsqueeze", {"n", "ax0"}, {"n1"});
  auto& c = b.node("Concat", {"n1", "minus1"}, {"shape"});
  OnnxBuilder::attr(c, "axis", int64_t{0});
  b.node("Reshape", {"x", "shape"}, {"r"});
  b.node("Relu", {"r"}, {"y"});
  CompileStats st;
  auto m = compile_onnx(b.bytes(), {}, &st);
  EXPECT_EQ(m.op_count(), 1u);
  EXPECT_EQ(m.outputs()[0].shape, (std::vector<int64_t>{2, 12}));
}

TEST(CompileOnnx, LivenessPlanningReusesScratch) {
  OnnxBuilder b;
  b.input("x", {1, 64}).output("y");
  std::string prev = "x";
  for (int i = 0; i < 8; i++) {
    std::string out = i == 7 ? "y" : "t" + std::to_string(i);
    b.node(i % 2 ? "Exp" : "Neg", {prev}, {out});  // unary chain: nothing to fuse
    prev = out;
  }
  CompileStats st;
  auto planned = compile_onnx(b.bytes(), {}, &st);
  EXPECT_EQ(st.scratch_bytes, 2u * 256);      // two buffers ping-pong
  EXPECT_EQ(st.scratch_unplanned, 7u * 256);  // t0..t6
  CompileOptions opt;
  opt.plan_memory = false;
  auto unplanned = compile_onnx(b.bytes(), opt);
  auto x = vnpu::test::iota_data(64);
  expect_near(run(planned, {x}), run(unplanned, {x}));
}

TEST(CompileOnnx, OutputThatIsAnInputOrAViewIsCopied) {
  OnnxBuilder b;
  b.input("x", {2, 3}).output("y").output("z");
  b.node("Identity", {"x"}, {"y"});
  b.node("Flatten", {"x"}, {"z"});
  auto m = compile_onnx(b.bytes());
  ASSERT_EQ(m.outputs().size(), 2u);
  EXPECT_EQ(m.outputs()[1].shape, (std::vector<int64_t>{2, 3}));
  std::vector<conf::HostTensor> in = {{{2, 3}, {1, 2, 3, 4, 5, 6}}};
  auto out = conf::flat_executor(false)(m, in);
  EXPECT_EQ(out[0].data, in[0].data);
  EXPECT_EQ(out[1].data, in[0].data);
}

TEST(CompileOnnx, GarbageIsNotAModel) {
  std::vector<uint8_t> junk = {0xff, 0xff, 0xff, 0x12, 0x00, 0x9a};
  EXPECT_NE(compile_error(junk).find("not a valid ONNX model"), std::string::npos);
  EXPECT_NE(compile_error({}).find("no graph"), std::string::npos);
}

TEST(CompileOnnx, MutatedModelsAreCompiledOrRejectedNeverACrash) {
  auto good = vnpu::test::conv_bn_relu_model();
  std::mt19937 rng(4321);
  int rejected = 0;
  for (int iter = 0; iter < 3000; iter++) {
    auto d = good;
    int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; e++)
      d[rng() % d.size()] = static_cast<uint8_t>(rng());
    try {
      auto m = compile_onnx(d);
      (void)m.serialize();
    } catch (const CompileError&) {
      rejected++;
    } catch (const vnpu::FormatError& e) {
      ADD_FAILURE() << "internal format error: " << e.what();
    }
  }
  EXPECT_GT(rejected, 100);
}

TEST(CompileOnnx, HostileAttributesAndShapesAreRejectedNeverACrash) {
  auto good = vnpu::test::conv_bn_relu_model();
  onnx::ModelProto base;
  ASSERT_TRUE(base.ParseFromArray(good.data(), static_cast<int>(good.size())));
  std::mt19937 rng(777);
  const int64_t values[] = {0, -1, 1, 2, 3, 7, 1 << 20, int64_t{1} << 40, INT64_MAX, INT64_MIN};
  int rejected = 0;
  for (int iter = 0; iter < 2000; iter++) {
    onnx::ModelProto m = base;
    auto* g = m.mutable_graph();
    auto pick = [&] { return values[rng() % (sizeof values / sizeof values[0])]; };
    switch (rng() % 4) {
      case 0: {  // an attribute value (pads, strides, epsilon, ...) or a new one
        auto* n = g->mutable_node(static_cast<int>(rng() % static_cast<unsigned>(g->node_size())));
        const char* names[] = {"pads", "strides", "dilations", "group", "kernel_shape", "auto_pad"};
        const char* name = names[rng() % 6];
        auto* a = n->add_attribute();
        a->set_name(name);
        if (std::string(name) == "group") {
          a->set_type(onnx::AttributeProto::INT);
          a->set_i(pick());
        } else if (std::string(name) == "auto_pad") {
          a->set_type(onnx::AttributeProto::STRING);
          a->set_s(rng() % 2 ? "SAME_UPPER" : "BOGUS");
        } else {
          a->set_type(onnx::AttributeProto::INTS);
          for (unsigned k = 0; k < rng() % 5; k++)
            a->add_ints(pick());
        }
        break;
      }
      case 1: {  // an initializer's dims
        auto* t = g->mutable_initializer(static_cast<int>(rng() % static_cast<unsigned>(g->initializer_size())));
        if (t->dims_size())
          t->set_dims(static_cast<int>(rng() % static_cast<unsigned>(t->dims_size())), pick());
        break;
      }
      case 2: {  // the input shape
        auto* dims = g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
        dims->mutable_dim(static_cast<int>(rng() % 4))->set_dim_value(pick());
        break;
      }
      default: {  // rewire a node input to another tensor name
        auto* n = g->mutable_node(static_cast<int>(rng() % static_cast<unsigned>(g->node_size())));
        const char* names[] = {"x", "W", "c", "n", "s", "missing", ""};
        n->set_input(static_cast<int>(rng() % static_cast<unsigned>(n->input_size())), names[rng() % 7]);
        break;
      }
    }
    std::string bytes;
    m.SerializeToString(&bytes);
    try {
      auto out = compile_onnx({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
      (void)out.serialize();
    } catch (const CompileError&) {
      rejected++;
    } catch (const vnpu::FormatError& e) {
      ADD_FAILURE() << "internal format error: " << e.what();
    }
  }
  EXPECT_GT(rejected, 500);
}

TEST(CompileOnnx, NonFloatInputIsAClearError) {
  OnnxBuilder b;
  b.input("x", {2}).output("y");
  auto bytes = b.bytes();
  onnx::ModelProto m;
  m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::INT64);
  std::string s;
  m.SerializeToString(&s);
  std::string e = compile_error({s.begin(), s.end()});
  EXPECT_NE(e.find("f32 inputs only"), std::string::npos) << e;
}

}  // namespace
