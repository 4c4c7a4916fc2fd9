// SPDX-License-Identifier: MIT
// Interpreter and kernels: oneDNN fast paths agree with the reference kernels; malformed programs, cancel,
// translation faults and timing-only runs behave as vnpu_program.h promises.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>

#include "../engine/program_builder.h"
#include "test_util.h"

extern "C" {
#include "vnpu_ops.h"
#include "vnpu_program.h"
}

namespace {

struct OwnedTensor {
  std::vector<float> data;
  VnpuTensor t{};
};

class OpCase {
 public:
  explicit OpCase(uint32_t opcode) : a_(std::make_unique<VnpuOpArgs>()) {
    std::memset(a_.get(), 0, sizeof(VnpuOpArgs));
    a_->opcode = opcode;
  }
  VnpuOpAttr& attr() { return a_->attr; }
  void in(std::vector<uint64_t> dims) { add(std::move(dims), true); }
  void out(std::vector<uint64_t> dims) { add(std::move(dims), false); }

  /// Runs the op with `mode` and returns the outputs (the inputs are deterministic pseudo-random data).
  std::vector<float> run(VnpuKernelMode mode, int* rc) {
    for (size_t k = 0; k < ins_.size(); k++)
      a_->t[k] = ins_[k].t, a_->t[k].data = ins_[k].data.data();
    out_.data.assign(out_.t.count, std::nanf(""));
    a_->t[ins_.size()] = out_.t;
    a_->t[ins_.size()].data = out_.data.data();
    a_->num_inputs = static_cast<uint32_t>(ins_.size());
    a_->num_outputs = 1;
    *rc = vnpu_ops_run(a_.get(), mode);
    return out_.data;
  }
  int check() {
    a_->num_inputs = static_cast<uint32_t>(ins_.size());
    a_->num_outputs = 1;
    for (size_t k = 0; k < ins_.size(); k++)
      a_->t[k] = ins_[k].t;
    a_->t[ins_.size()] = out_.t;
    return vnpu_ops_check(a_.get());
  }

 private:
  void add(std::vector<uint64_t> dims, bool input) {
    OwnedTensor o;
    o.t.rank = static_cast<uint32_t>(dims.size());
    o.t.count = 1;
    for (size_t d = 0; d < dims.size(); d++)
      o.t.dims[d] = dims[d], o.t.count *= dims[d];
    if (input) {
      std::mt19937 rng(static_cast<unsigned>(ins_.size() * 7919 + o.t.count));
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      o.data.resize(o.t.count);
      for (auto& v : o.data)
        v = u(rng);
      ins_.push_back(std::move(o));
    } else {
      out_ = std::move(o);
    }
  }
  std::unique_ptr<VnpuOpArgs> a_;
  std::vector<OwnedTensor> ins_;
  OwnedTensor out_;
};

void expect_fast_matches_reference(OpCase& c, const std::string& what) {
  ASSERT_EQ(c.check(), 0) << what << ": case is invalid";
  int rc_ref, rc_fast;
  auto ref = c.run(VNPU_KERNELS_REFERENCE, &rc_ref);
  auto fast = c.run(VNPU_KERNELS_FAST_ONLY, &rc_fast);
  ASSERT_EQ(rc_ref, VNPU_CPL_OK) << what;
  ASSERT_EQ(rc_fast, VNPU_CPL_OK) << what << ": no fast kernel took the case";
  for (size_t i = 0; i < ref.size(); i++)
    ASSERT_NEAR(fast[i], ref[i], 1e-4 + 1e-4 * std::fabs(ref[i])) << what << " element " << i;
}

TEST(FastKernels, ConvolutionMatchesReference) {
  struct P {
    uint64_t c, m, g, k, s, d, pb, pe;
    uint32_t act;
    bool bias;
  };
  const P cases[] = {
      {3, 8, 1, 3, 1, 1, 1, 1, VNPU_ISA_ACT_NONE, true}, {4, 6, 2, 3, 2, 1, 1, 0, VNPU_ISA_ACT_RELU, true},
      {8, 8, 8, 3, 1, 2, 2, 2, VNPU_ISA_ACT_SILU, true}, {5, 4, 1, 1, 1, 1, 0, 0, VNPU_ISA_ACT_SIGMOID, false},
      {6, 6, 3, 5, 2, 1, 2, 1, VNPU_ISA_ACT_CLIP, true}, {2, 3, 1, 2, 3, 2, 0, 2, VNPU_ISA_ACT_LEAKY_RELU, false},
  };
  for (const P& p : cases) {
    OpCase c(VNPU_ISA_OP_CONV);
    auto& cv = c.attr().conv;
    cv.group = static_cast<uint32_t>(p.g);
    cv.act = p.act;
    cv.act_alpha = p.act == VNPU_ISA_ACT_CLIP ? -0.2f : 0.1f;
    cv.act_beta = 0.3f;
    cv.flags = p.bias ? VNPU_ISA_CONV_F_BIAS : 0;
    uint64_t h = 11, w = 9;
    for (int i = 0; i < 2; i++) {
      cv.stride[i] = static_cast<uint32_t>(p.s);
      cv.dilation[i] = static_cast<uint32_t>(p.d);
      cv.pad_begin[i] = static_cast<uint32_t>(p.pb);
      cv.pad_end[i] = static_cast<uint32_t>(p.pe);
    }
    uint64_t span = p.d * (p.k - 1) + 1;
    c.in({2, p.c, h, w});
    c.in({p.m, p.c / p.g, p.k, p.k});
    if (p.bias)
      c.in({p.m});
    c.out({2, p.m, (h + p.pb + p.pe - span) / p.s + 1, (w + p.pb + p.pe - span) / p.s + 1});
    expect_fast_matches_reference(c, "conv g=" + std::to_string(p.g) + " k=" + std::to_string(p.k));
  }
}

TEST(FastKernels, TransposedConvolutionMatchesReference) {
  struct P {
    uint64_t c, m, g, k, s, pb, pe, op;
  };
  const P cases[] = {{4, 3, 1, 3, 2, 1, 1, 1}, {4, 4, 2, 2, 2, 0, 0, 0}, {3, 2, 1, 4, 1, 1, 2, 0}};
  for (const P& p : cases) {
    OpCase c(VNPU_ISA_OP_CONV_TRANSPOSE);
    auto& cv = c.attr().conv;
    cv.group = static_cast<uint32_t>(p.g);
    cv.flags = VNPU_ISA_CONV_F_BIAS;
    for (int i = 0; i < 2; i++) {
      cv.stride[i] = static_cast<uint32_t>(p.s);
      cv.dilation[i] = 1;
      cv.pad_begin[i] = static_cast<uint32_t>(p.pb);
      cv.pad_end[i] = static_cast<uint32_t>(p.pe);
      cv.output_padding[i] = static_cast<uint32_t>(p.op);
    }
    uint64_t h = 5;
    c.in({1, p.c, h, h});
    c.in({p.c, p.m / p.g, p.k, p.k});
    c.in({p.m});
    uint64_t o = p.s * (h - 1) + p.op + p.k - p.pb - p.pe;
    c.out({1, p.m, o, o});
    expect_fast_matches_reference(c, "conv_transpose k=" + std::to_string(p.k));
  }
}

TEST(FastKernels, PoolingMatchesReference) {
  struct P {
    uint32_t kind, k, s, pb, pe, flags;
    bool ceil;
  };
  const P cases[] = {
      {VNPU_ISA_POOL_MAX, 3, 2, 1, 1, 0, false}, {VNPU_ISA_POOL_MAX, 2, 2, 0, 0, 0, true},
      {VNPU_ISA_POOL_AVG, 3, 1, 1, 1, 0, false}, {VNPU_ISA_POOL_AVG, 3, 2, 1, 1, VNPU_ISA_POOL_F_COUNT_PAD, false},
      {VNPU_ISA_POOL_AVG, 2, 2, 0, 0, 0, true},  {VNPU_ISA_POOL_MAX, 5, 1, 2, 2, 0, false}};
  for (const P& p : cases) {
    OpCase c(VNPU_ISA_OP_POOL);
    auto& pl = c.attr().pool;
    pl.kind = p.kind;
    pl.flags = p.flags;
    for (int i = 0; i < 2; i++) {
      pl.kernel[i] = p.k;
      pl.stride[i] = p.s;
      pl.dilation[i] = 1;
      pl.pad_begin[i] = p.pb;
      pl.pad_end[i] = p.pe;
    }
    uint64_t h = 9;
    uint64_t padded = h + p.pb + p.pe;
    uint64_t o = p.ceil ? (padded - p.k + p.s - 1) / p.s + 1 : (padded - p.k) / p.s + 1;
    c.in({2, 3, h, h});
    c.out({2, 3, o, o});
    expect_fast_matches_reference(c, "pool kind=" + std::to_string(p.kind) + " k=" + std::to_string(p.k));
  }
}

TEST(FastKernels, MatmulMatchesReference) {
  struct P {
    std::vector<uint64_t> a, b, y;
    uint32_t flags;
    std::vector<uint64_t> c;
  };
  const P cases[] = {
      {{7, 5}, {5, 3}, {7, 3}, 0, {}},
      {{2, 7, 5}, {5, 3}, {2, 7, 3}, 0, {}},
      {{2, 1, 4, 5}, {3, 5, 6}, {2, 3, 4, 6}, 0, {}},
      {{5, 7}, {3, 5}, {7, 3}, VNPU_ISA_MATMUL_F_TRANS_A | VNPU_ISA_MATMUL_F_TRANS_B, {}},
      {{4, 8}, {8, 6}, {4, 6}, VNPU_ISA_MATMUL_F_BIAS, {6}},
      {{4, 8}, {6, 8}, {4, 6}, VNPU_ISA_MATMUL_F_BIAS | VNPU_ISA_MATMUL_F_TRANS_B, {4, 6}},
  };
  for (const P& p : cases) {
    OpCase c(VNPU_ISA_OP_MATMUL);
    c.attr().matmul.flags = p.flags;
    c.attr().matmul.alpha = 1.0f;
    c.attr().matmul.beta = 1.0f;
    c.in(p.a);
    c.in(p.b);
    if (!p.c.empty())
      c.in(p.c);
    c.out(p.y);
    expect_fast_matches_reference(c, "matmul flags=" + std::to_string(p.flags));
  }
}

TEST(FastKernels, LargeBroadcastArithmeticMatchesReference) {
  struct P {
    uint32_t kind, act;
    std::vector<uint64_t> a, b;
  };
  const P cases[] = {
      {VNPU_ISA_BIN_ADD, VNPU_ISA_ACT_RELU, {1, 16, 64, 80}, {1, 16, 64, 80}},  // residual add + relu
      {VNPU_ISA_BIN_MUL, VNPU_ISA_ACT_NONE, {1, 16, 64, 80}, {1, 16, 1, 1}},    // per-channel scale
      {VNPU_ISA_BIN_ADD, VNPU_ISA_ACT_SIGMOID, {16, 1, 1}, {2, 16, 64, 80}},    // broadcast operand first
      {VNPU_ISA_BIN_SUB, VNPU_ISA_ACT_NONE, {2, 16, 64, 80}, {80}},
      {VNPU_ISA_BIN_DIV, VNPU_ISA_ACT_NONE, {2, 16, 64, 80}, {2, 1, 64, 1}},
  };
  for (const P& p : cases) {
    OpCase c(VNPU_ISA_OP_BINARY);
    c.attr().binary.kind = p.kind;
    c.attr().binary.act = p.act;
    c.in(p.a);
    c.in(p.b);
    c.out(p.a.size() >= p.b.size() && p.a[0] != 16 ? p.a : p.b);
    expect_fast_matches_reference(c, "binary kind=" + std::to_string(p.kind));
  }
}

// A fused activation oneDNN has no post-op for (ELU, HardSigmoid, Softplus, ...) sent the whole op to the
// reference kernel (FAST_ONLY failed): the oneDNN kernel runs and the activation is applied over its output.
TEST(FastKernels, ActivationsWithoutOneDnnPostOpStayOnTheFastPath) {
  for (uint32_t act : {VNPU_ISA_ACT_ELU, VNPU_ISA_ACT_HARD_SIGMOID, VNPU_ISA_ACT_SOFTPLUS, VNPU_ISA_ACT_SELU}) {
    const float alpha = act == VNPU_ISA_ACT_HARD_SIGMOID ? 0.2f : 1.67f, beta = act == VNPU_ISA_ACT_SELU ? 1.05f : 0.5f;
    {
      OpCase c(VNPU_ISA_OP_CONV);
      auto& cv = c.attr().conv;
      cv.group = 1;
      cv.act = act;
      cv.act_alpha = alpha;
      cv.act_beta = beta;
      cv.flags = VNPU_ISA_CONV_F_BIAS;
      for (int i = 0; i < 2; i++)
        cv.stride[i] = cv.dilation[i] = 1, cv.pad_begin[i] = cv.pad_end[i] = 1;
      c.in({1, 16, 10, 12});
      c.in({16, 16, 3, 3});
      c.in({16});
      c.out({1, 16, 10, 12});
      expect_fast_matches_reference(c, "conv act=" + std::to_string(act));
    }
    {
      OpCase c(VNPU_ISA_OP_MATMUL);
      c.attr().matmul.alpha = c.attr().matmul.beta = 1.0f;
      c.attr().matmul.act = act;
      c.attr().matmul.act_alpha = alpha;
      c.attr().matmul.act_beta = beta;
      c.in({7, 5});
      c.in({5, 3});
      c.out({7, 3});
      expect_fast_matches_reference(c, "matmul act=" + std::to_string(act));
    }
    {
      OpCase c(VNPU_ISA_OP_BINARY);
      c.attr().binary.kind = VNPU_ISA_BIN_ADD;
      c.attr().binary.act = act;
      c.attr().binary.act_alpha = alpha;
      c.attr().binary.act_beta = beta;
      c.in({1, 16, 64, 80});
      c.in({1, 16, 64, 80});
      c.out({1, 16, 64, 80});
      expect_fast_matches_reference(c, "binary act=" + std::to_string(act));
    }
  }
}

TEST(FastKernels, ConvolutionWithResidualMatchesReference) {
  for (uint32_t act : {VNPU_ISA_ACT_NONE, VNPU_ISA_ACT_RELU, VNPU_ISA_ACT_ELU}) {
    for (uint64_t ch : {16u, 6u}) {  // blocked and plain destination layouts
      OpCase c(VNPU_ISA_OP_CONV);
      auto& cv = c.attr().conv;
      cv.group = 1;
      cv.act = act;
      cv.act_alpha = 0.7f;
      cv.flags = VNPU_ISA_CONV_F_BIAS | VNPU_ISA_CONV_F_RESIDUAL;
      for (int i = 0; i < 2; i++)
        cv.stride[i] = cv.dilation[i] = 1, cv.pad_begin[i] = cv.pad_end[i] = 1;
      c.in({2, ch, 7, 9});
      c.in({ch, ch, 3, 3});
      c.in({ch});
      c.in({2, ch, 7, 9});
      c.out({2, ch, 7, 9});
      expect_fast_matches_reference(c, "conv+residual act=" + std::to_string(act) + " C=" + std::to_string(ch));
    }
  }
  OpCase bad(VNPU_ISA_OP_CONV);  // the residual must have Y's shape
  bad.attr().conv.group = 1;
  bad.attr().conv.flags = VNPU_ISA_CONV_F_RESIDUAL;
  for (int i = 0; i < 2; i++)
    bad.attr().conv.stride[i] = bad.attr().conv.dilation[i] = 1;
  bad.in({1, 4, 5, 5});
  bad.in({4, 4, 1, 1});
  bad.in({1, 4, 5, 1});
  bad.out({1, 4, 5, 5});
  EXPECT_NE(bad.check(), 0);
}

// Two 16-channel convolutions in a row, the second reading the first's output at device address `mid`.
struct ConvChain {
  std::vector<float> x, w, y1, y2;
  std::unique_ptr<VnpuOpArgs> a = std::make_unique<VnpuOpArgs>();

  ConvChain() : x(16 * 8 * 8), w(16 * 16 * 3 * 3), y1(16 * 8 * 8), y2(16 * 8 * 8) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : x)
      v = u(rng);
    for (auto& v : w)
      v = u(rng) / 12.0f;
  }
  static VnpuTensor t4(float* d, uint64_t n, uint64_t c, uint64_t h, uint64_t w) {
    VnpuTensor t{};
    t.data = d, t.rank = 4, t.dims[0] = n, t.dims[1] = c, t.dims[2] = h, t.dims[3] = w, t.count = n * c * h * w;
    return t;
  }
  // Runs conv(in at in_addr) -> out (at out_addr) with `shadows`.
  int conv(VnpuShadows* sh, float* in, uint64_t in_addr, float* out, uint64_t out_addr) {
    std::memset(a.get(), 0, sizeof(VnpuOpArgs));
    a->opcode = VNPU_ISA_OP_CONV;
    a->num_inputs = 2;
    a->num_outputs = 1;
    auto& cv = a->attr.conv;
    cv.group = 1;
    for (int i = 0; i < 2; i++)
      cv.stride[i] = cv.dilation[i] = 1, cv.pad_begin[i] = cv.pad_end[i] = 1;
    a->t[0] = t4(in, 1, 16, 8, 8);
    a->t[1] = t4(w.data(), 16, 16, 3, 3);
    a->t[2] = t4(out, 1, 16, 8, 8);
    a->shadows = sh;
    a->addr[0] = in_addr, a->addr[1] = 0x100000, a->addr[2] = out_addr;
    EXPECT_EQ(vnpu_ops_check(a.get()), 0);
    return vnpu_ops_run(a.get(), VNPU_KERNELS_AUTO);
  }
};

TEST(FastKernels, ConvolutionReadsTheBlockedCopyOfTheLastConvolutionUntilItsBytesChange) {
  ConvChain c;
  std::vector<float> want(c.y2.size());
  ASSERT_EQ(c.conv(nullptr, c.x.data(), 0x1000, c.y1.data(), 0x8000), VNPU_CPL_OK);
  ASSERT_EQ(c.conv(nullptr, c.y1.data(), 0x8000, want.data(), 0x10000), VNPU_CPL_OK);
  VnpuShadows* sh = vnpu_shadows_new();
  ASSERT_NE(sh, nullptr);
  ASSERT_EQ(c.conv(sh, c.x.data(), 0x1000, c.y1.data(), 0x8000), VNPU_CPL_OK);
  // The plain bytes are altered behind the table's back: the second conv still reads the first's blocked
  // output (this is what saves its reorder), so its result is the unaltered one.
  for (auto& v : c.y1)
    v = 0.0f;
  ASSERT_EQ(c.conv(sh, c.y1.data(), 0x8000, c.y2.data(), 0x10000), VNPU_CPL_OK);
  for (size_t i = 0; i < want.size(); i++)
    ASSERT_FLOAT_EQ(c.y2[i], want[i]) << i;
  // Another address range does not match.
  ASSERT_EQ(c.conv(sh, c.y1.data(), 0x8004, c.y2.data(), 0x10000), VNPU_CPL_OK);
  for (size_t i = 0; i < want.size(); i++)
    ASSERT_EQ(c.y2[i], 0.0f) << i;
  // Once an op's output overlaps the range (what vnpu_program_execute reports), the plain bytes count again.
  vnpu_shadows_invalidate(sh, 0x8000 + 4 * 100, 4);
  ASSERT_EQ(c.conv(sh, c.y1.data(), 0x8000, c.y2.data(), 0x10000), VNPU_CPL_OK);
  for (size_t i = 0; i < want.size(); i++)
    ASSERT_EQ(c.y2[i], 0.0f) << i;
  vnpu_shadows_free(sh);
}

// conv -> in-place NEG of its output -> conv: the second conv must see the negated bytes, not the blocked copy
// the first one left (the interpreter drops the copies an op's output overlaps before the op runs).
TEST(FastKernels, BlockedCopiesDoNotOutliveAWriteToTheirBytes) {
  const uint64_t act = 16 * 8 * 8 * 4, wts = 16 * 16 * 3 * 3 * 4;
  vnpu::test::ProgramBuilder b;
  uint32_t bw = b.binding(VNPU_ISA_BIND_WEIGHTS, wts), bx = b.binding(VNPU_ISA_BIND_INPUT, act);
  uint32_t bs = b.binding(VNPU_ISA_BIND_SCRATCH, act), by = b.binding(VNPU_ISA_BIND_OUTPUT, act);
  uint32_t w = b.tensor(bw, 0, {16, 16, 3, 3}), x = b.tensor(bx, 0, {1, 16, 8, 8});
  uint32_t s = b.tensor(bs, 0, {1, 16, 8, 8}), y = b.tensor(by, 0, {1, 16, 8, 8});
  vnpu_isa_conv cv{};
  cv.group = 1;
  for (int i = 0; i < 2; i++)
    cv.stride[i] = cv.dilation[i] = 1, cv.pad_begin[i] = cv.pad_end[i] = 1;
  vnpu_isa_unary neg{};
  neg.act = VNPU_ISA_ACT_NEG;
  b.op(VNPU_ISA_OP_CONV, {x, w}, {s}, &cv);
  b.op(VNPU_ISA_OP_UNARY, {s}, {s}, &neg);
  b.op(VNPU_ISA_OP_CONV, {s, w}, {y}, &cv);
  std::vector<std::vector<float>> out;
  for (VnpuKernelMode mode : {VNPU_KERNELS_REFERENCE, VNPU_KERNELS_AUTO}) {
    vnpu::test::FlatMemory m({wts, act, act, act});
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (size_t k : {0u, 1u})
      for (size_t i = 0; i < m.slot(k).size(); i += 4) {
        float v = u(rng);
        std::memcpy(m.slot(k).data() + i, &v, 4);
      }
    vnpu_ops_set_default_mode(mode);
    int rc = m.run(b.bytes());
    vnpu_ops_set_default_mode(VNPU_KERNELS_AUTO);
    ASSERT_EQ(rc, VNPU_CPL_OK);
    out.emplace_back(act / 4);
    std::memcpy(out.back().data(), m.slot(3).data(), act);
  }
  for (size_t i = 0; i < out[0].size(); i++)
    ASSERT_NEAR(out[1][i], out[0][i], 1e-4 + 1e-4 * std::fabs(out[0][i])) << i;
}

// ---- whole programs through vnpu_program_* ----

struct Flat {
  vnpu::ModelFile m;
  std::vector<std::vector<uint8_t>> slots;
  std::vector<uint64_t> addrs;
  bool fail_maps = false;
  int maps = 0;
};

void* map_fn(void* o, uint64_t addr, uint64_t len, int) {
  auto* f = static_cast<Flat*>(o);
  if (f->fail_maps)
    return nullptr;
  for (size_t i = 0; i < f->addrs.size(); i++)
    if (addr >= f->addrs[i] && addr - f->addrs[i] + len <= f->slots[i].size()) {
      f->maps++;
      return f->slots[i].data() + (addr - f->addrs[i]);
    }
  return nullptr;
}
void unmap_fn(void*, void*, uint64_t, uint64_t, int) {}

std::unique_ptr<Flat> flat_model() {
  auto f = std::make_unique<Flat>();
  auto onnx = vnpu::test::conv_bn_relu_model();
  vnpu::CompileOptions opt;
  opt.fold_batchnorm = opt.fuse_activations = false;  // three ops, so that cancel has somewhere to stop
  f->m = vnpu::compile_onnx(onnx, opt);
  for (size_t i = 0; i < f->m.bindings().size(); i++) {
    f->slots.emplace_back(f->m.bindings()[i].size + 1);
    f->addrs.push_back((i + 1) << 32);
  }
  std::copy(f->m.weights().begin(), f->m.weights().end(), f->slots[0].begin());
  return f;
}

VnpuProgramRun make_run(const Flat& f, const volatile int* cancel, const VnpuComputeModel* model) {
  VnpuProgramRun r{};
  r.code = f.m.program().data();
  r.code_len = f.m.program().size();
  r.bindings = f.addrs.data();
  r.num_bindings = static_cast<uint32_t>(f.addrs.size());
  r.cancel = cancel;
  r.model = model;
  return r;
}

TEST(Program, RunsAndCostsEveryOp) {
  auto f = flat_model();
  VnpuComputeModel cm{1000000000ull, 1000000000ull, 1000};
  volatile int cancel = 0;
  VnpuProgramRun run = make_run(*f, &cancel, &cm);
  VnpuProgramMem mem{f.get(), map_fn, unmap_fn, nullptr, nullptr};
  VnpuProgramCost cost, predicted;
  uint32_t fail_op = 99;
  ASSERT_EQ(vnpu_program_execute(&run, &mem, &cost, &fail_op), VNPU_CPL_OK);
  ASSERT_EQ(vnpu_program_cost(run.code, run.code_len, &cm, &predicted), VNPU_CPL_OK);
  EXPECT_EQ(cost.ops, f->m.op_count());
  EXPECT_EQ(cost.modelled_ns, predicted.modelled_ns);
  EXPECT_EQ(cost.flops, predicted.flops);
  // conv 1x3x5x5 outputs, 2*3*3 MACs each, plus bias: the cost model counts 2 flops per MAC.
  EXPECT_GE(cost.flops, uint64_t{75} * 18 * 2);
  EXPECT_GE(cost.modelled_ns, cost.ops * 1000);
}

TEST(Program, TimingOnlyCostsWithoutTouchingMemory) {
  auto f = flat_model();
  VnpuComputeModel cm{1000000000ull, 1000000000ull, 10};
  VnpuProgramRun run = make_run(*f, nullptr, &cm);
  run.timing_only = 1;
  VnpuProgramMem mem{f.get(), map_fn, unmap_fn, nullptr, nullptr};
  VnpuProgramCost cost;
  ASSERT_EQ(vnpu_program_execute(&run, &mem, &cost, nullptr), VNPU_CPL_OK);
  EXPECT_EQ(f->maps, 0);
  EXPECT_EQ(cost.ops, f->m.op_count());
}

TEST(Program, CancelStopsBeforeTheNextOp) {
  auto f = flat_model();
  volatile int cancel = 1;
  VnpuProgramRun run = make_run(*f, &cancel, nullptr);
  VnpuProgramMem mem{f.get(), map_fn, unmap_fn, nullptr, nullptr};
  VnpuProgramCost cost;
  uint32_t fail_op = 99;
  EXPECT_EQ(vnpu_program_execute(&run, &mem, &cost, &fail_op), VNPU_CPL_ABORTED);
  EXPECT_EQ(fail_op, 0u);
  EXPECT_EQ(cost.ops, 0u);
}

TEST(Program, UnmappableOperandIsAnMmuFault) {
  auto f = flat_model();
  f->fail_maps = true;
  VnpuProgramRun run = make_run(*f, nullptr, nullptr);
  VnpuProgramMem mem{f.get(), map_fn, unmap_fn, nullptr, nullptr};
  VnpuProgramCost cost;
  uint32_t fail_op = 99;
  EXPECT_EQ(vnpu_program_execute(&run, &mem, &cost, &fail_op), VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(fail_op, 0u);
}

// Weights converted to oneDNN's layout are kept across runs (VnpuProgramRun::weights_cache_max); the host may
// rewrite the weights between runs without the device noticing, so a kept copy must never outlive a change.
TEST(Program, KeptConvolutionWeightsFollowEveryRewriteOfTheWeights) {
  vnpu::test::OnnxBuilder b;
  const int C = 16, M = 32;
  std::vector<float> w(M * C * 3 * 3);
  for (size_t i = 0; i < w.size(); i++)
    w[i] = static_cast<float>((i * 7) % 13) / 13.0f - 0.5f;
  b.input("x", {1, C, 12, 12}).output("y");
  b.init("W", {M, C, 3, 3}, w);
  auto& c = b.node("Conv", {"x", "W"}, {"y"}, "conv0");
  vnpu::test::OnnxBuilder::attr(c, "pads", std::vector<int64_t>{1, 1, 1, 1});
  Flat f;
  f.m = vnpu::compile_onnx(b.bytes(), {});
  for (size_t i = 0; i < f.m.bindings().size(); i++) {
    f.slots.emplace_back(f.m.bindings()[i].size);
    f.addrs.push_back((i + 1) << 32);
  }
  std::copy(f.m.weights().begin(), f.m.weights().end(), f.slots[0].begin());
  const vnpu::TensorSpec& in = f.m.inputs().at(0);
  const vnpu::TensorSpec& out = f.m.outputs().at(0);
  for (size_t i = 0; i < in.size_bytes / 4; i++) {
    float v = static_cast<float>((i * 5) % 17) / 17.0f - 0.3f;
    std::memcpy(f.slots[in.binding].data() + in.offset + 4 * i, &v, 4);
  }
  VnpuProgramRun run = make_run(f, nullptr, nullptr);
  run.weights_cache_max = 64 << 20;
  VnpuProgramMem mem{&f, map_fn, unmap_fn, nullptr, nullptr};
  auto output = [&](VnpuKernelMode mode) {
    vnpu_ops_set_default_mode(mode);
    VnpuProgramCost cost;
    int rc = vnpu_program_execute(&run, &mem, &cost, nullptr);
    vnpu_ops_set_default_mode(VNPU_KERNELS_AUTO);
    EXPECT_EQ(rc, VNPU_CPL_OK);
    std::vector<float> y(out.size_bytes / 4);
    std::memcpy(y.data(), f.slots[out.binding].data() + out.offset, out.size_bytes);
    return y;
  };
  auto expect_near = [](const std::vector<float>& got, const std::vector<float>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); i++)
      ASSERT_NEAR(got[i], want[i], 1e-4 + 1e-4 * std::fabs(want[i])) << i;
  };
  std::vector<float> want = output(VNPU_KERNELS_REFERENCE);
  expect_near(output(VNPU_KERNELS_FAST_ONLY), want);  // converts and keeps the weights
  expect_near(output(VNPU_KERNELS_FAST_ONLY), want);  // the kept copy
  // Rewrite one weight (as a host could between two EXECs): the next run must see it.
  float* wp = reinterpret_cast<float*>(f.slots[0].data());
  size_t changed = 0;
  for (size_t i = 0; i < f.m.weights().size() / 4; i++)
    if (wp[i] == w[5]) {
      wp[i] += 3.0f;
      changed++;
      break;
    }
  ASSERT_EQ(changed, 1u);
  std::vector<float> want2 = output(VNPU_KERNELS_REFERENCE);
  ASSERT_NE(want2, want);
  expect_near(output(VNPU_KERNELS_FAST_ONLY), want2);
}

TEST(Program, TooFewBindingsIsInvalid) {
  auto f = flat_model();
  uint32_t bad = 0;
  EXPECT_EQ(vnpu_program_validate(f->m.program().data(), f->m.program().size(), 1, &bad), VNPU_CPL_PROGRAM_INVALID);
}

TEST(Program, MalformedProgramsAreInvalidNeverACrash) {
  auto f = flat_model();
  std::vector<uint8_t> good(f->m.program().begin(), f->m.program().end());
  uint32_t nb = static_cast<uint32_t>(f->addrs.size());
  ASSERT_EQ(vnpu_program_validate(good.data(), good.size(), nb, nullptr), VNPU_CPL_OK);
  EXPECT_EQ(vnpu_program_validate(nullptr, 0, nb, nullptr), VNPU_CPL_PROGRAM_INVALID);
  for (size_t len = 0; len < good.size(); len += 7)
    EXPECT_EQ(vnpu_program_validate(good.data(), len, nb, nullptr), VNPU_CPL_PROGRAM_INVALID) << len;
  // Random corruption: validate and execute must either accept or reject cleanly; execution stays inside
  // the bindings (map_fn refuses anything else, which would show up as an MMU fault, never a crash).
  std::mt19937 rng(99);
  int invalid = 0;
  for (int iter = 0; iter < 4000; iter++) {
    auto p = good;
    for (int e = 0; e < 3; e++)
      p[rng() % p.size()] = static_cast<uint8_t>(rng());
    uint32_t bad = 0;
    int rc = vnpu_program_validate(p.data(), p.size(), nb, &bad);
    if (rc != VNPU_CPL_OK) {
      invalid++;
      continue;
    }
    VnpuProgramRun run = make_run(*f, nullptr, nullptr);
    run.code = p.data();
    run.code_len = p.size();
    VnpuProgramMem mem{f.get(), map_fn, unmap_fn, nullptr, nullptr};
    VnpuProgramCost cost;
    rc = vnpu_program_execute(&run, &mem, &cost, nullptr);
    EXPECT_TRUE(rc == VNPU_CPL_OK || rc == VNPU_CPL_MMU_FAULT) << rc;
  }
  EXPECT_GT(invalid, 1000);
}

}  // namespace
