// SPDX-License-Identifier: MIT
// ISA 1.1 ops (REDUCE, NORM, PAD, the new activations, PRelu): reference semantics on hand-checked values,
// the validation that keeps them memory-safe, and the compiler passes that produce them from exported models.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>

#include <sys/mman.h>

#include "test_util.h"

extern "C" {
#include "vnpu_ops.h"
}

namespace {

using vnpu::compile_onnx;
using vnpu::test::OnnxBuilder;
namespace conf = vnpu::conformance;

// One op over explicit data.
struct Op {
  explicit Op(uint32_t opcode) : a(std::make_unique<VnpuOpArgs>()) {
    std::memset(a.get(), 0, sizeof(VnpuOpArgs));
    a->opcode = opcode;
  }
  void in(std::vector<uint64_t> dims, std::vector<float> v) {
    ins.push_back(std::move(v));
    shapes.push_back(std::move(dims));
  }
  void out(std::vector<uint64_t> dims) { out_dims = std::move(dims); }
  void fill(VnpuTensor& t, const std::vector<uint64_t>& d) {
    t.rank = static_cast<uint32_t>(d.size());
    t.count = 1;
    for (size_t k = 0; k < d.size(); k++)
      t.dims[k] = d[k], t.count *= d[k];
  }
  int check() {
    a->num_inputs = static_cast<uint32_t>(ins.size());
    a->num_outputs = 1;
    for (size_t k = 0; k < ins.size(); k++)
      fill(a->t[k], shapes[k]);
    fill(a->t[ins.size()], out_dims);
    return vnpu_ops_check(a.get());
  }
  std::vector<float> run(VnpuKernelMode mode = VNPU_KERNELS_REFERENCE) {
    EXPECT_EQ(check(), 0);
    for (size_t k = 0; k < ins.size(); k++)
      a->t[k].data = ins[k].data();
    result.assign(a->t[ins.size()].count, -12345.0f);
    a->t[ins.size()].data = result.data();
    EXPECT_EQ(vnpu_ops_run(a.get(), mode), VNPU_CPL_OK);
    return result;
  }
  std::unique_ptr<VnpuOpArgs> a;
  std::vector<std::vector<float>> ins;
  std::vector<std::vector<uint64_t>> shapes;
  std::vector<uint64_t> out_dims;
  std::vector<float> result;
};

TEST(Pad, ReflectEdgeAndConstantFollowOnnx) {
  // numpy.pad([[1,2,3],[4,5,6]], ((1,0),(2,1)), mode) for each mode.
  std::vector<float> x = {1, 2, 3, 4, 5, 6};
  struct Case {
    uint32_t mode;
    std::vector<float> want;
  } cases[] = {
      {VNPU_ISA_PAD_CONSTANT, {9, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 9, 9, 9, 4, 5, 6, 9}},
      {VNPU_ISA_PAD_REFLECT, {6, 5, 4, 5, 6, 5, 3, 2, 1, 2, 3, 2, 6, 5, 4, 5, 6, 5}},
      {VNPU_ISA_PAD_EDGE, {1, 1, 1, 2, 3, 3, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5, 6, 6}},
  };
  for (const auto& c : cases) {
    Op op(VNPU_ISA_OP_PAD);
    op.a->attr.pad.mode = c.mode;
    op.a->attr.pad.value = c.mode == VNPU_ISA_PAD_CONSTANT ? 9.0f : 0.0f;
    op.a->attr.pad.begin[0] = 1;
    op.a->attr.pad.begin[1] = 2;
    op.a->attr.pad.end[1] = 1;
    op.in({2, 3}, x);
    op.out({3, 6});
    EXPECT_EQ(op.run(), c.want) << "mode " << c.mode;
  }
}

TEST(Pad, RejectsReflectionWiderThanTheInputAndWrongShapes) {
  Op op(VNPU_ISA_OP_PAD);
  op.a->attr.pad.mode = VNPU_ISA_PAD_REFLECT;
  op.a->attr.pad.begin[0] = 3;  // reflect needs pad < dim
  op.in({3}, {1, 2, 3});
  op.out({6});
  EXPECT_NE(op.check(), 0);
  op.a->attr.pad.begin[0] = 2;
  op.out({6});  // 2 + 3 + 0 = 5
  EXPECT_NE(op.check(), 0);
  op.out({5});
  EXPECT_EQ(op.check(), 0);
  op.a->attr.pad.end[3] = 1;  // beyond the rank
  EXPECT_NE(op.check(), 0);
}

TEST(Reduce, LogSumExpIsStableAndEmptyReductionsGiveTheIdentity) {
  Op lse(VNPU_ISA_OP_REDUCE);
  lse.a->attr.reduce.kind = VNPU_ISA_REDUCE_LOG_SUM_EXP;
  lse.a->attr.reduce.axes = 2;  // dim 1
  lse.in({2, 2}, {1000.0f, 1000.0f, -1.0f, 2.0f});
  lse.out({2, 1});
  auto y = lse.run();
  EXPECT_NEAR(y[0], 1000.0f + std::log(2.0f), 1e-3);
  EXPECT_NEAR(y[1], std::log(std::exp(-1.0f) + std::exp(2.0f)), 1e-5);
  struct Case {
    uint32_t kind;
    float want;
  } cases[] = {{VNPU_ISA_REDUCE_SUM, 0.0f},
               {VNPU_ISA_REDUCE_PROD, 1.0f},
               {VNPU_ISA_REDUCE_MAX, -std::numeric_limits<float>::infinity()},
               {VNPU_ISA_REDUCE_MIN, std::numeric_limits<float>::infinity()},
               {VNPU_ISA_REDUCE_LOG_SUM_EXP, -std::numeric_limits<float>::infinity()}};
  for (const auto& c : cases) {
    Op e(VNPU_ISA_OP_REDUCE);
    e.a->attr.reduce.kind = c.kind;
    e.a->attr.reduce.axes = 2;
    e.in({3, 0}, {});
    e.out({3, 1});
    auto r = e.run();
    for (float v : r)
      EXPECT_EQ(v, c.want) << "kind " << c.kind;
  }
  Op mean(VNPU_ISA_OP_REDUCE);
  mean.a->attr.reduce.kind = VNPU_ISA_REDUCE_MEAN;
  mean.a->attr.reduce.axes = 1;
  mean.in({0, 2}, {});
  mean.out({1, 2});
  for (float v : mean.run())
    EXPECT_TRUE(std::isnan(v));
}

TEST(Reduce, MaxPropagatesNaNAndReducesAnyAxes) {
  Op op(VNPU_ISA_OP_REDUCE);
  op.a->attr.reduce.kind = VNPU_ISA_REDUCE_MAX;
  op.a->attr.reduce.axes = 5;  // dims 0 and 2 of [2,2,2]
  op.in({2, 2, 2}, {1, 2, 3, 4, 5, std::nanf(""), 0, -1});
  op.out({1, 2, 1});
  auto y = op.run();
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 4.0f);
}

TEST(Reduce, RejectsAxesBeyondTheRankAndWrongOutputs) {
  Op op(VNPU_ISA_OP_REDUCE);
  op.a->attr.reduce.axes = 4;  // dim 2 of a rank-2 tensor
  op.in({2, 3}, std::vector<float>(6));
  op.out({2, 3});
  EXPECT_NE(op.check(), 0);
  op.a->attr.reduce.axes = 1;
  op.out({2, 3});  // dim 0 must become 1
  EXPECT_NE(op.check(), 0);
  op.out({1, 3});
  EXPECT_EQ(op.check(), 0);
  op.a->attr.reduce.kind = VNPU_ISA_REDUCE_COUNT_;
  EXPECT_NE(op.check(), 0);
}

TEST(Norm, NormalisesTheTrailingDimsWithScaleAndShift) {
  Op op(VNPU_ISA_OP_NORM);
  op.a->attr.norm.axis = 1;
  op.a->attr.norm.epsilon = 0.0f;
  op.in({2, 2}, {1, 3, 10, 10});
  op.in({2}, {2, 1});
  op.in({2}, {0.5f, 0});
  op.out({2, 2});
  auto y = op.run();
  EXPECT_NEAR(y[0], -1.5f, 1e-6);  // (1 - 2) / 1 * 2 + 0.5
  EXPECT_NEAR(y[1], 1.0f, 1e-6);
  EXPECT_TRUE(std::isnan(y[2]));  // zero variance, epsilon 0: 0 / 0
  op.shapes[1] = {4};             // scale must have the normalised element count
  EXPECT_NE(op.check(), 0);
}

TEST(Activations, NewOnesMatchTheirDefinitions) {
  const float xs[] = {-3.5f, -1.0f, -0.25f, 0.0f, 0.5f, 2.0f, 30.0f};
  for (float x : xs) {
    EXPECT_NEAR(vnpu_ops_act(x, VNPU_ISA_ACT_ERF, 0, 0), std::erf(x), 1e-6);
    EXPECT_NEAR(vnpu_ops_act(x, VNPU_ISA_ACT_GELU, 0, 0), 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))), 1e-5);
    EXPECT_NEAR(vnpu_ops_act(x, VNPU_ISA_ACT_SOFTPLUS, 0, 0), std::log1p(std::exp(static_cast<double>(x))), 1e-5);
    EXPECT_NEAR(vnpu_ops_act(x, VNPU_ISA_ACT_HARD_SWISH, 0, 0), x * std::fmin(1.0, std::fmax(0.0, x / 6.0 + 0.5)),
                1e-6);
    EXPECT_NEAR(vnpu_ops_act(x, VNPU_ISA_ACT_SOFTSIGN, 0, 0), x / (1 + std::fabs(x)), 1e-6);
  }
}

// Clip with min > max returned min in the reference kernel, where ONNX's min(max(x, min), max) and oneDNN's
// clip_v2 give max: a model's output depended on which kernel ran (oneDNN 2.6 refuses the post-op, so the
// reference kernel is what runs in every mode).
TEST(Activations, ClipWithMinAboveMaxGivesMaxInEveryKernel) {
  EXPECT_EQ(vnpu_ops_act(0.0f, VNPU_ISA_ACT_CLIP, 2.0f, 1.0f), 1.0f);
  EXPECT_EQ(vnpu_ops_act(5.0f, VNPU_ISA_ACT_CLIP, 2.0f, 1.0f), 1.0f);
  EXPECT_TRUE(std::isnan(vnpu_ops_act(std::nanf(""), VNPU_ISA_ACT_CLIP, 2.0f, 1.0f)));
  // A convolution with the fused clip, in both kernel modes.
  std::vector<float> x(1 * 16 * 8 * 8), w(16 * 16 * 3 * 3);
  for (size_t i = 0; i < x.size(); i++)
    x[i] = static_cast<float>(static_cast<int>(i % 13) - 6);
  for (size_t i = 0; i < w.size(); i++)
    w[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.1f;
  std::vector<float> ref, fast;
  for (auto mode : {VNPU_KERNELS_REFERENCE, VNPU_KERNELS_AUTO}) {
    Op c(VNPU_ISA_OP_CONV);
    auto& cv = c.a->attr.conv;
    cv.group = 1;
    cv.act = VNPU_ISA_ACT_CLIP;
    cv.act_alpha = 2.0f;
    cv.act_beta = 1.0f;
    for (int d = 0; d < 2; d++)
      cv.stride[d] = cv.dilation[d] = 1, cv.pad_begin[d] = cv.pad_end[d] = 1;
    c.in({1, 16, 8, 8}, x);
    c.in({16, 16, 3, 3}, w);
    c.out({1, 16, 8, 8});
    (mode == VNPU_KERNELS_REFERENCE ? ref : fast) = c.run(mode);
  }
  EXPECT_EQ(ref, fast);
  for (float v : ref)
    EXPECT_EQ(v, 1.0f);
}

TEST(PRelu, ScalesNegativeInputsByTheBroadcastSlope) {
  Op op(VNPU_ISA_OP_BINARY);
  op.a->attr.binary.kind = VNPU_ISA_BIN_PRELU;
  op.in({2, 2}, {-1, 2, -3, 4});
  op.in({2, 1}, {0.5f, 0.25f});
  op.out({2, 2});
  EXPECT_EQ(op.run(), (std::vector<float>{-0.5f, 2, -0.75f, 4}));
}

std::vector<float> run_model(const vnpu::ModelFile& m, const std::vector<float>& x) {
  return conf::flat_executor(false)(m, {{m.inputs()[0].shape, x}}).at(0).data;
}

// nn.LayerNorm as PyTorch exports it below opset 17.
std::vector<uint8_t> layernorm_decomposed(const std::vector<float>& w, const std::vector<float>& b) {
  OnnxBuilder m(14);
  m.input("x", {2, 3, 4}).output("y");
  m.init("two", {}, {2.0f}).init("eps", {}, {1e-5f}).init("w", {4}, w).init("b", {4}, b);
  OnnxBuilder::attr(m.node("ReduceMean", {"x"}, {"m"}), "axes", std::vector<int64_t>{-1});
  m.node("Sub", {"x", "m"}, {"d"});
  m.node("Pow", {"d", "two"}, {"p"});
  OnnxBuilder::attr(m.node("ReduceMean", {"p"}, {"v"}), "axes", std::vector<int64_t>{-1});
  m.node("Add", {"v", "eps"}, {"ve"});
  m.node("Sqrt", {"ve"}, {"s"});
  m.node("Div", {"d", "s"}, {"n"});
  m.node("Mul", {"n", "w"}, {"nw"});
  m.node("Add", {"nw", "b"}, {"y"});
  return m.bytes();
}

TEST(CompileOnnx, FusesTheLayerNormDecompositionIntoOneNormOp) {
  std::vector<float> w = {1.0f, 2.0f, 0.5f, -1.0f}, b = {0.0f, 0.1f, -0.2f, 0.3f};
  auto fused = compile_onnx(layernorm_decomposed(w, b));
  EXPECT_EQ(fused.op_count(), 1u);
  vnpu::CompileOptions plain;
  plain.fuse_activations = plain.fold_batchnorm = false;
  OnnxBuilder ln(17);
  ln.input("x", {2, 3, 4}).output("y").init("w", {4}, w).init("b", {4}, b);
  ln.node("LayerNormalization", {"x", "w", "b"}, {"y"});
  auto native = compile_onnx(ln.bytes());
  EXPECT_EQ(native.op_count(), 1u);
  auto x = vnpu::test::iota_data(24, 0.3f);
  auto got = run_model(fused, x), want = run_model(native, x);
  ASSERT_EQ(got.size(), 24u);
  for (size_t r = 0; r < 6; r++) {
    double mean = 0, var = 0;
    for (int j = 0; j < 4; j++)
      mean += x[r * 4 + j] / 4.0;
    for (int j = 0; j < 4; j++)
      var += (x[r * 4 + j] - mean) * (x[r * 4 + j] - mean) / 4.0;
    for (int j = 0; j < 4; j++) {
      double e = (x[r * 4 + j] - mean) / std::sqrt(var + 1e-5) * w[j] + b[j];
      EXPECT_NEAR(got[r * 4 + j], e, 1e-5);
      EXPECT_NEAR(want[r * 4 + j], e, 1e-5);
    }
  }
}

TEST(CompileOnnx, FusesTheErfFormOfGeluIntoOneActivation) {
  OnnxBuilder m(14);
  m.input("x", {2, 8}).output("y");
  m.init("r2", {}, {1.4142135381698608f}).init("one", {}, {1.0f}).init("half", {}, {0.5f});
  m.node("Div", {"x", "r2"}, {"a"});
  m.node("Erf", {"a"}, {"e"});
  m.node("Add", {"e", "one"}, {"p"});
  m.node("Mul", {"x", "p"}, {"q"});
  m.node("Mul", {"q", "half"}, {"y"});
  auto c = compile_onnx(m.bytes());
  EXPECT_EQ(c.op_count(), 1u);
  auto x = vnpu::test::iota_data(16, 0.4f);
  auto y = run_model(c, x);
  for (size_t i = 0; i < x.size(); i++)
    EXPECT_NEAR(y[i], 0.5 * x[i] * (1 + std::erf(x[i] / std::sqrt(2.0))), 1e-5);
}

TEST(CompileOnnx, FoldsZeroPaddingIntoTheFollowingConvAndAveragePool) {
  for (const char* consumer : {"Conv", "AveragePool"}) {
    OnnxBuilder m(13);
    m.input("x", {1, 2, 5, 5}).output("y");
    m.init_i64("pads", {8}, {0, 0, 1, 1, 0, 0, 1, 1});
    m.init("W", {2, 2, 3, 3}, vnpu::test::iota_data(36));
    m.node("Pad", {"x", "pads"}, {"p"});
    if (std::string(consumer) == "Conv") {
      m.node("Conv", {"p", "W"}, {"y"});
    } else {
      auto& n = m.node("AveragePool", {"p"}, {"y"});
      OnnxBuilder::attr(n, "kernel_shape", std::vector<int64_t>{3, 3});
    }
    auto folded = compile_onnx(m.bytes());
    EXPECT_EQ(folded.op_count(), 1u) << consumer;
    vnpu::CompileOptions keep;
    keep.fuse_activations = keep.fold_batchnorm = false;
    auto x = vnpu::test::iota_data(50);
    auto y = run_model(folded, x);
    ASSERT_EQ(y.size(), 50u);
    if (std::string(consumer) == "AveragePool") {
      // corner: the padded zeros count (explicit zeros, not padding): sum of the 2x2 corner / 9
      float s = x[0] + x[1] + x[5] + x[6];
      EXPECT_NEAR(y[0], s / 9.0f, 1e-6);
    }
  }
}

}  // namespace

namespace {

// Einsum as MaxViT exports attention: both the "q k^T" and the "attn v" products, against a plain loop.
TEST(CompileOnnx, LowersBatchedMatrixProductEinsumsToMatmul) {
  const int64_t B = 2, I = 3, J = 4, D = 5;
  struct Case {
    const char* eq;
    std::vector<int64_t> a, b, y;
  } cases[] = {
      {"b i d, b j d -> b i j", {B, I, D}, {B, J, D}, {B, I, J}},
      {"bij,bjd->bid", {B, I, J}, {B, J, D}, {B, I, D}},
      {"bid,bjd->bji", {B, I, D}, {B, J, D}, {B, J, I}},
  };
  for (const auto& c : cases) {
    OnnxBuilder m(14);
    m.input("a", c.a).input("b", c.b).output("y");
    OnnxBuilder::attr(m.node("Einsum", {"a", "b"}, {"y"}), "equation", std::string(c.eq));
    auto model = compile_onnx(m.bytes());
    EXPECT_EQ(model.op_count(), 1u) << c.eq;
    auto av = vnpu::test::iota_data(static_cast<size_t>(c.a[0] * c.a[1] * c.a[2]));
    auto bv = vnpu::test::iota_data(static_cast<size_t>(c.b[0] * c.b[1] * c.b[2]), 0.2f);
    auto y = conf::flat_executor(true)(model, {{c.a, av}, {c.b, bv}}).at(0).data;
    ASSERT_EQ(y.size(), static_cast<size_t>(c.y[0] * c.y[1] * c.y[2]));
    // Generic einsum over labels b, p, q (output dims 1, 2) and the contracted one.
    std::string eq;
    for (char ch : std::string(c.eq))
      if (ch != ' ')
        eq += ch;
    std::string la = eq.substr(0, 3), lb = eq.substr(4, 3), lc = eq.substr(9, 3);
    char k = 0;
    for (char ch : la)
      if (lb.find(ch) != std::string::npos && lc.find(ch) == std::string::npos)
        k = ch;
    int64_t kd = c.a[la.find(k)];
    for (int64_t i0 = 0; i0 < c.y[0]; i0++)
      for (int64_t i1 = 0; i1 < c.y[1]; i1++)
        for (int64_t i2 = 0; i2 < c.y[2]; i2++) {
          double acc = 0;
          for (int64_t kk = 0; kk < kd; kk++) {
            auto idx = [&](const std::string& l, const std::vector<int64_t>& s) {
              int64_t v[3];
              for (int d = 0; d < 3; d++)
                v[d] = l[d] == k ? kk : l[d] == lc[0] ? i0 : l[d] == lc[1] ? i1 : i2;
              return static_cast<size_t>((v[0] * s[1] + v[1]) * s[2] + v[2]);
            };
            acc += static_cast<double>(av[idx(la, c.a)]) * bv[idx(lb, c.b)];
          }
          EXPECT_NEAR(y[static_cast<size_t>((i0 * c.y[1] + i1) * c.y[2] + i2)], acc, 1e-5) << c.eq;
        }
  }
  OnnxBuilder bad(14);
  bad.input("a", {2, 3}).input("b", {3, 2}).output("y");
  OnnxBuilder::attr(bad.node("Einsum", {"a", "b"}, {"y"}), "equation", std::string("ij,jk->ikj"));
  EXPECT_THROW((void)compile_onnx(bad.bytes()), vnpu::CompileError);
}

}  // namespace

namespace {

std::vector<uint8_t> model_with_unsupported_tail() {
  OnnxBuilder m(14);
  m.input("x", {1, 4}).output("idx");
  m.node("Relu", {"x"}, {"a"}, "relu0");
  m.node("Sigmoid", {"a"}, {"s"}, "sig0");
  m.node("Relu", {"s"}, {"b"}, "relu1");
  m.node("NonZero", {"b"}, {"idx"}, "nms_like");
  return m.bytes();
}

TEST(Report, ListsEachOpTypeWithItsCountAndSupport) {
  auto uses = vnpu::onnx_op_uses(model_with_unsupported_tail());
  ASSERT_EQ(uses.size(), 3u);
  EXPECT_EQ(uses[0].op, "Relu");
  EXPECT_EQ(uses[0].count, 2u);
  EXPECT_TRUE(uses[0].supported);
  EXPECT_EQ(uses[0].first_node, "relu0");
  EXPECT_EQ(uses[2].op, "NonZero");
  EXPECT_FALSE(uses[2].supported);
  std::vector<uint8_t> junk = {1, 2, 3};
  EXPECT_THROW((void)vnpu::onnx_op_uses(junk), vnpu::CompileError);
}

TEST(CompileOnnx, OutputCutCompilesOnlyWhatTheNamedTensorsNeed) {
  auto onnx = model_with_unsupported_tail();
  EXPECT_THROW((void)compile_onnx(onnx), vnpu::CompileError);  // NonZero
  vnpu::CompileOptions cut;
  cut.outputs = {"b", "a"};
  auto m = compile_onnx(onnx, cut);
  ASSERT_EQ(m.outputs().size(), 2u);
  EXPECT_EQ(m.outputs()[0].name, "b");
  EXPECT_EQ(m.outputs()[1].name, "a");
  std::vector<float> x = {-1.0f, 0.0f, 0.5f, 2.0f};
  auto outs = conf::flat_executor(true)(m, {{{1, 4}, x}});
  for (size_t i = 0; i < 4; i++) {
    float a = std::max(x[i], 0.0f);
    EXPECT_EQ(outs[1].data[i], a);
    EXPECT_NEAR(outs[0].data[i], 1.0f / (1.0f + std::exp(-a)), 1e-6);
  }
  cut.outputs = {"no_such_tensor"};
  try {
    (void)compile_onnx(onnx, cut);
    ADD_FAILURE() << "an unknown --output name compiled";
  } catch (const vnpu::CompileError& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_tensor"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

// Nearest Resize with a `sizes` input divided by the rounded scale out/in: for 14 -> 18 output 9 mapped to
// 9 / (18/14) = 6.99999 and took pixel 6 where PyTorch and ONNX (9 * 14 / 18 = 7) take pixel 7.
TEST(Resize, NearestWithSizesMapsLikePyTorchForNonIntegerRatios) {
  struct Ratio {
    int64_t in, out;
  } ratios[] = {{14, 18}, {18, 14}, {7, 10}, {5, 13}, {30, 42}, {100, 127}};
  for (const auto& r : ratios) {
    for (const char* coord : {"asymmetric", "half_pixel"}) {
      OnnxBuilder m(13);
      m.input("x", {1, 1, 1, r.in}).output("y");
      m.init("roi", {0}, {}).init("scales", {0}, {});
      m.init_i64("sizes", {4}, {1, 1, 1, r.out});
      auto& n = m.node("Resize", {"x", "roi", "scales", "sizes"}, {"y"});
      OnnxBuilder::attr(n, "mode", std::string("nearest"));
      OnnxBuilder::attr(n, "coordinate_transformation_mode", std::string(coord));
      OnnxBuilder::attr(n, "nearest_mode",
                        std::string(std::string(coord) == "asymmetric" ? "floor" : "round_prefer_floor"));
      auto model = compile_onnx(m.bytes());
      std::vector<float> x(static_cast<size_t>(r.in));
      for (size_t i = 0; i < x.size(); i++)
        x[i] = static_cast<float>(i);
      auto y = conf::flat_executor(true)(model, {{{1, 1, 1, r.in}, x}}).at(0).data;
      ASSERT_EQ(y.size(), static_cast<size_t>(r.out));
      for (int64_t o = 0; o < r.out; o++) {
        // exact rational source coordinate: floor(o * in / out), or round-half-down of (2o+1)*in/(2 out) - 1/2
        int64_t want;
        if (std::string(coord) == "asymmetric") {
          want = o * r.in / r.out;
        } else {
          int64_t num = (2 * o + 1) * r.in - r.out, den = 2 * r.out;  // coordinate = num / den
          int64_t fl = num >= 0 ? num / den : -((-num + den - 1) / den);
          int64_t rem = num - fl * den;  // in [0, den)
          want = 2 * rem > den ? fl + 1 : fl;
          want = std::clamp<int64_t>(want, 0, r.in - 1);
        }
        EXPECT_EQ(y[static_cast<size_t>(o)], static_cast<float>(want))
            << r.in << "->" << r.out << " " << coord << " output " << o;
      }
    }
  }
}

}  // namespace

namespace {

// Mod of two float constants (fmod=1) failed to compile ("constant Mod is not supported"), and integer
// constants ignored fmod=1 (C's truncated remainder) and used the divisor's sign.
TEST(CompileOnnx, FoldsModOfConstantsWithTheFmodAttribute) {
  OnnxBuilder m(13);
  m.input("x", {4}).output("y");
  m.init("a", {4}, {5.5f, -5.5f, 7.0f, -0.75f}).init("b", {4}, {2.0f, 2.0f, -3.0f, 0.5f});
  OnnxBuilder::attr(m.node("Mod", {"a", "b"}, {"r"}), "fmod", int64_t{1});
  m.node("Add", {"x", "r"}, {"y"});
  auto model = compile_onnx(m.bytes());
  EXPECT_EQ(model.op_count(), 1u);  // the Mod folded
  auto y = conf::flat_executor(true)(model, {{{4}, {0, 0, 0, 0}}}).at(0).data;
  EXPECT_EQ(y, (std::vector<float>{std::fmod(5.5f, 2.0f), std::fmod(-5.5f, 2.0f), std::fmod(7.0f, -3.0f),
                                   std::fmod(-0.75f, 0.5f)}));
  for (int64_t fm : {0, 1}) {
    OnnxBuilder mi(13);
    mi.input("x", {2}).output("y");
    mi.init_i64("a", {2}, {-7, 7}).init_i64("b", {2}, {3, -3}).init_i64("shape", {1}, {2});
    OnnxBuilder::attr(mi.node("Mod", {"a", "b"}, {"r"}), "fmod", fm);
    OnnxBuilder::attr(mi.node("Cast", {"r"}, {"rf"}), "to", int64_t{1});
    mi.node("Add", {"x", "rf"}, {"y"});
    auto mm = compile_onnx(mi.bytes());
    auto yi = conf::flat_executor(true)(mm, {{{2}, {0, 0}}}).at(0).data;
    EXPECT_EQ(yi, fm ? (std::vector<float>{-1, 1}) : (std::vector<float>{2, -2})) << "fmod " << fm;
  }
}

}  // namespace

namespace {

// align_corners Resize with model scales divided by scale * in - 1 (ONNX's Python reference) instead of the
// output length - 1: F.interpolate(scale_factor=1.5, align_corners=True) of 5 pixels sampled up to half a
// pixel away from PyTorch's.
TEST(Resize, AlignCornersWithScalesUsesTheIntegerOutputLength) {
  for (float scale : {1.5f, 1.3f, 0.75f}) {
    const int64_t in = scale < 1.0f ? 10 : 5;
    OnnxBuilder m(13);
    m.input("x", {1, 1, 1, in}).output("y");
    m.init("roi", {0}, {}).init("scales", {4}, {1.0f, 1.0f, 1.0f, scale});
    auto& n = m.node("Resize", {"x", "roi", "scales"}, {"y"});
    OnnxBuilder::attr(n, "mode", std::string("linear"));
    OnnxBuilder::attr(n, "coordinate_transformation_mode", std::string("align_corners"));
    auto model = compile_onnx(m.bytes());
    std::vector<float> x(static_cast<size_t>(in));
    for (size_t i = 0; i < x.size(); i++)
      x[i] = static_cast<float>(i * i);
    auto y = conf::flat_executor(true)(model, {{{1, 1, 1, in}, x}}).at(0).data;
    const int64_t out = static_cast<int64_t>(std::floor(in * static_cast<double>(scale)));
    ASSERT_EQ(y.size(), static_cast<size_t>(out));
    for (int64_t o = 0; o < out; o++) {
      double c = static_cast<double>(o) * static_cast<double>(in - 1) / static_cast<double>(out - 1);
      int64_t lo = static_cast<int64_t>(std::floor(c)), hi = std::min<int64_t>(lo + 1, in - 1);
      double want = x[static_cast<size_t>(lo)] +
                    (c - static_cast<double>(lo)) * (x[static_cast<size_t>(hi)] - x[static_cast<size_t>(lo)]);
      EXPECT_NEAR(y[static_cast<size_t>(o)], want, 1e-4) << "scale " << scale << " output " << o;
    }
  }
}

// Keys' cubic convolution kernel as a function of the distance (ONNX Resize "cubic", coefficient A).
double keys(double A, double d) {
  d = std::fabs(d);
  if (d <= 1.0)
    return ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0;
  if (d < 2.0)
    return ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A;
  return 0.0;
}

TEST(Resize, CubicMatchesKeysKernelWithEdgeTapsOrExcludedOutside) {
  const int64_t in = 6;
  for (bool exclude : {false, true}) {
    for (float scale : {2.5f, 0.5f}) {
      const double A = exclude ? -0.5 : -0.75;
      OnnxBuilder m(13);
      m.input("x", {1, 1, 1, in}).output("y");
      m.init("roi", {0}, {}).init("scales", {4}, {1.0f, 1.0f, 1.0f, scale});
      auto& n = m.node("Resize", {"x", "roi", "scales"}, {"y"});
      OnnxBuilder::attr(n, "mode", std::string("cubic"));
      OnnxBuilder::attr(n, "cubic_coeff_a", static_cast<float>(A));
      OnnxBuilder::attr(n, "exclude_outside", static_cast<int64_t>(exclude));
      auto model = compile_onnx(m.bytes());
      std::vector<float> x(static_cast<size_t>(in));
      for (size_t i = 0; i < x.size(); i++)
        x[i] = static_cast<float>((i * 7) % 5) - 1.5f;
      const int64_t out = static_cast<int64_t>(std::floor(in * static_cast<double>(scale)));
      for (bool fast : {false, true}) {
        auto y = conf::flat_executor(!fast)(model, {{{1, 1, 1, in}, x}}).at(0).data;
        ASSERT_EQ(y.size(), static_cast<size_t>(out));
        for (int64_t o = 0; o < out; o++) {
          double c = (static_cast<double>(o) + 0.5) / scale - 0.5, f = std::floor(c), sum = 0.0, acc = 0.0;
          for (int64_t t = static_cast<int64_t>(f) - 1; t <= static_cast<int64_t>(f) + 2; t++) {
            double w = keys(A, c - static_cast<double>(t));
            if (exclude && (t < 0 || t >= in))
              w = 0.0;
            sum += w;
            acc += w * x[static_cast<size_t>(std::clamp<int64_t>(t, 0, in - 1))];
          }
          EXPECT_NEAR(y[static_cast<size_t>(o)], exclude ? acc / sum : acc, 1e-5)
              << "scale " << scale << " exclude " << exclude << " output " << o;
        }
      }
    }
  }
}

TEST(Resize, CubicMatchesPyTorchBicubic) {
  // F.interpolate(arange(1, 17).reshape(1, 1, 4, 4), size=(8, 8), mode="bicubic", align_corners=False)[0, 0, 0, :4]
  // and scale_factor=0.8 with align_corners=True (PyTorch 1.13): 2-D, and align_corners on the integer length.
  for (bool corners : {false, true}) {
    OnnxBuilder m(13);
    m.input("x", {1, 1, 4, 4}).output("y");
    m.init("roi", {0}, {}).init("scales", {4}, {1.0f, 1.0f, corners ? 0.8f : 2.0f, corners ? 0.8f : 2.0f});
    auto& n = m.node("Resize", {"x", "roi", "scales"}, {"y"});
    OnnxBuilder::attr(n, "mode", std::string("cubic"));
    OnnxBuilder::attr(n, "coordinate_transformation_mode",
                      std::string(corners ? "align_corners" : "pytorch_half_pixel"));
    auto model = compile_onnx(m.bytes());
    std::vector<float> x(16);
    for (size_t i = 0; i < x.size(); i++)
      x[i] = static_cast<float>(i + 1);
    auto y = conf::flat_executor(true)(model, {{{1, 1, 4, 4}, x}}).at(0).data;
    if (corners) {
      const float want[9] = {1.0f, 2.5f, 4.0f, 7.0f, 8.5f, 10.0f, 13.0f, 14.5f, 16.0f};
      ASSERT_EQ(y.size(), 9u);
      for (size_t i = 0; i < 9; i++)
        EXPECT_NEAR(y[i], want[i], 1e-4) << i;
    } else {
      const float want[4] = {0.4727f, 0.7695f, 1.2461f, 1.8750f};
      ASSERT_EQ(y.size(), 64u);
      for (size_t i = 0; i < 4; i++)
        EXPECT_NEAR(y[i], want[i], 1e-4) << i;
    }
  }
}

}  // namespace

namespace {

std::string error_of(const std::vector<uint8_t>& onnx) {
  try {
    (void)compile_onnx(onnx);
  } catch (const vnpu::CompileError& e) {
    return e.what();
  }
  return {};
}

TEST(CompileOnnx, RunsTheOnnxCheckerOnEveryModel) {
  OnnxBuilder m(13);
  m.input("x", {1, 4}).output("y");
  OnnxBuilder::attr(m.node("Relu", {"x"}, {"y"}, "relu0"), "no_such_attribute", int64_t{1});
  std::string e = error_of(m.bytes());
  EXPECT_NE(e.find("ONNX checker"), std::string::npos) << e;
  EXPECT_NE(e.find("no_such_attribute"), std::string::npos) << e;
}

TEST(CompileOnnx, ADeclaredShapeThatShapeInferenceContradictsIsAnErrorNamingTheNode) {
  OnnxBuilder m(13);
  m.input("x", {1, 4}).output("y", 2);
  m.node("Relu", {"x"}, {"y"}, "relu0");
  auto bytes = m.bytes();
  onnx::ModelProto p;
  ASSERT_TRUE(p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
  auto* dims = p.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  dims->mutable_dim(0)->set_dim_value(1);
  dims->mutable_dim(1)->set_dim_value(5);  // Relu of [1,4] is [1,4]
  std::string s;
  p.SerializeToString(&s);
  std::string e = error_of({s.begin(), s.end()});
  EXPECT_NE(e.find("relu0"), std::string::npos) << e;
  vnpu::CompileOptions off;
  off.onnx_checks = false;
  EXPECT_NO_THROW((void)compile_onnx(std::vector<uint8_t>(s.begin(), s.end()), off));
}

}  // namespace

namespace {

TEST(CompileOnnx, GroupNormalizationNormalisesEachGroupThenScalesIt) {
  const int64_t N = 2, C = 4, H = 3, G = 2;
  OnnxBuilder m(18);
  m.input("x", {N, C, H}).output("y", 3);
  m.init("s", {G}, {2.0f, 0.5f}).init("b", {G}, {0.1f, -0.3f});
  auto& n = m.node("GroupNormalization", {"x", "s", "b"}, {"y"});
  OnnxBuilder::attr(n, "num_groups", G);
  OnnxBuilder::attr(n, "epsilon", 1e-3f);
  auto model = compile_onnx(m.bytes());
  auto x = vnpu::test::iota_data(static_cast<size_t>(N * C * H), 0.7f);
  auto y = conf::flat_executor(false)(model, {{{N, C, H}, x}}).at(0).data;
  const int64_t per = C / G * H;
  const float s[] = {2.0f, 0.5f}, b[] = {0.1f, -0.3f};
  for (int64_t k = 0; k < N * G; k++) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < per; j++)
      mean += x[static_cast<size_t>(k * per + j)] / static_cast<double>(per);
    for (int64_t j = 0; j < per; j++)
      var += std::pow(x[static_cast<size_t>(k * per + j)] - mean, 2) / static_cast<double>(per);
    for (int64_t j = 0; j < per; j++) {
      size_t i = static_cast<size_t>(k * per + j);
      EXPECT_NEAR(y[i], (x[i] - mean) / std::sqrt(var + 1e-3) * s[k % G] + b[k % G], 1e-5) << i;
    }
  }
}

}  // namespace

namespace {

TEST(CompileOnnx, AModelOverTwoGibibytesGetsAClearError) {
  // Virtual memory only (never touched): the size check comes before protobuf sees a byte.
  const size_t len = (size_t{1} << 31) + 64;
  void* p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::string e;
  try {
    (void)compile_onnx(std::span<const uint8_t>(static_cast<const uint8_t*>(p), len));
  } catch (const vnpu::CompileError& err) {
    e = err.what();
  }
  munmap(p, len);
  EXPECT_NE(e.find("2 GiB"), std::string::npos) << e;
  EXPECT_NE(e.find("external data"), std::string::npos) << e;
}

}  // namespace
