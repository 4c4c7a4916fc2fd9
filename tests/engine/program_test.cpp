// SPDX-License-Identifier: MIT
// The program interpreter against hostile programs: every program that passes validation runs without
// undefined behaviour (these tests also run under AddressSanitizer and UBSan: scripts/test-engine-asan.sh).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "program_builder.h"

extern "C" {
#include "vnpu_ops.h"
}

namespace vnpu::test {
namespace {

enum : uint32_t { kW = 0, kIn = 1, kOut = 2, kScratch = 3 };

ProgramBuilder four_bindings(uint64_t in, uint64_t out, uint64_t scratch) {
  ProgramBuilder b;
  b.binding(VNPU_ISA_BIND_WEIGHTS, 256);
  b.binding(VNPU_ISA_BIND_INPUT, in);
  b.binding(VNPU_ISA_BIND_OUTPUT, out);
  b.binding(VNPU_ISA_BIND_SCRATCH, scratch);
  return b;
}

int validate(const std::vector<uint8_t>& p) {
  return vnpu_program_validate(p.data(), p.size(), 4, nullptr);
}

float* f32(std::vector<uint8_t>& slot, uint64_t offset = 0) { return reinterpret_cast<float*>(slot.data() + offset); }

// Regression: CHANNEL_AFFINE (BatchNorm) divided by the batch size, so an empty batch killed the device (SIGFPE).
TEST(Program, AffineOverAnEmptyBatchDoesNothing) {
  ProgramBuilder b = four_bindings(64, 64, 64);
  uint32_t x = b.tensor(kIn, 0, {0, 3, 2, 2}), s = b.tensor(kW, 0, {3}), t = b.tensor(kW, 16, {3});
  uint32_t y = b.tensor(kOut, 0, {0, 3, 2, 2});
  vnpu_isa_affine a{};
  b.op(VNPU_ISA_OP_CHANNEL_AFFINE, {x, s, t}, {y}, &a);
  auto p = b.bytes();
  ASSERT_EQ(validate(p), VNPU_CPL_OK);
  FlatMemory m({256, 64, 64, 64});
  EXPECT_EQ(m.run(p), VNPU_CPL_OK);
}

// Regression: the SLICE check computed start + (dims - 1) * step in int64, which overflows (undefined) for steps
// near +-2^32 over long outputs; UBSan reported it.
TEST(Program, SliceStepsNearTheLimitAreCheckedWithoutOverflow) {
  for (int64_t step : {int64_t(1) << 32, -(int64_t(1) << 32), (int64_t(1) << 32) - 1}) {
    ProgramBuilder b = four_bindings(16, 4ull * 0xffff'ffffu, 64);
    uint32_t x = b.tensor(kIn, 0, {4}), y = b.tensor(kOut, 0, {0xffff'ffffu});
    vnpu_isa_slice s{};
    s.start[0] = 3;
    s.step[0] = step;
    b.op(VNPU_ISA_OP_SLICE, {x}, {y}, &s);
    EXPECT_EQ(validate(b.bytes()), VNPU_CPL_PROGRAM_INVALID) << step;
  }
  // The same steps are fine where only one index is taken.
  ProgramBuilder b = four_bindings(16, 16, 64);
  uint32_t x = b.tensor(kIn, 0, {4}), y = b.tensor(kOut, 0, {1});
  vnpu_isa_slice s{};
  s.start[0] = 2;
  s.step[0] = -(int64_t(1) << 32);
  b.op(VNPU_ISA_OP_SLICE, {x}, {y}, &s);
  auto p = b.bytes();
  ASSERT_EQ(validate(p), VNPU_CPL_OK);
  FlatMemory m({256, 16, 16, 64});
  for (int i = 0; i < 4; i++)
    f32(m.slot(kIn))[i] = float(i + 1);
  ASSERT_EQ(m.run(p), VNPU_CPL_OK);
  EXPECT_EQ(f32(m.slot(kOut))[0], 3.0f);
}

// Regression: RESIZE converted sampling coordinates to int64 before clamping them; a tiny scale puts them beyond
// int64 (undefined; on x86 they became INT64_MIN and clamped to the first element instead of the last).
TEST(Program, ResizeWithATinyScaleClampsCoordinatesToTheLastElement) {
  for (uint32_t mode : {uint32_t(VNPU_ISA_RESIZE_NEAREST), uint32_t(VNPU_ISA_RESIZE_LINEAR)}) {
    ProgramBuilder b = four_bindings(16, 16, 64);
    uint32_t x = b.tensor(kIn, 0, {2, 2}), y = b.tensor(kOut, 0, {2, 2});
    vnpu_isa_resize r{};
    r.mode = mode;
    r.coord = VNPU_ISA_COORD_ASYMMETRIC;
    r.nearest = VNPU_ISA_NEAREST_FLOOR;
    r.scale[0] = 1.0f;
    r.scale[1] = 1e-30f;  // x_in = x_out / 1e-30: 1e30 for the second column
    b.op(VNPU_ISA_OP_RESIZE, {x}, {y}, &r);
    auto p = b.bytes();
    ASSERT_EQ(validate(p), VNPU_CPL_OK);
    FlatMemory m({256, 16, 16, 64});
    for (int i = 0; i < 4; i++)
      f32(m.slot(kIn))[i] = float(i + 1);
    ASSERT_EQ(m.run(p), VNPU_CPL_OK);
    const float* out = f32(m.slot(kOut));
    EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{1, 2, 3, 4})) << "mode " << mode;
  }
}

// Regression: a CONCAT whose output overlapped one of its inputs in the same binding passed validation, and the
// kernel then memcpy'd overlapping ranges (found by AddressSanitizer under file fuzzing).
TEST(Program, ConcatOutputOverlappingAnInputIsInvalid) {
  ProgramBuilder b = four_bindings(16, 16, 64);
  uint32_t a = b.tensor(kScratch, 0, {4}), c = b.tensor(kScratch, 16, {4}), y = b.tensor(kScratch, 8, {8});
  vnpu_isa_axis ax{};
  b.op(VNPU_ISA_OP_CONCAT, {a, c}, {y}, &ax);
  EXPECT_EQ(validate(b.bytes()), VNPU_CPL_PROGRAM_INVALID);
}

// Regression: operands kept apart by the program but aliased by the EXEC binding table (or by page tables
// mapping two pages to one) reached the CONCAT kernel as overlapping ranges.
TEST(Program, OperandsAliasedAtRunTimeAreInvalid) {
  ProgramBuilder b = four_bindings(32, 32, 64);
  uint32_t a = b.tensor(kIn, 0, {4}), c = b.tensor(kIn, 16, {4}), y = b.tensor(kOut, 0, {8});
  vnpu_isa_axis ax{};
  b.op(VNPU_ISA_OP_CONCAT, {a, c}, {y}, &ax);
  auto p = b.bytes();
  ASSERT_EQ(validate(p), VNPU_CPL_OK);
  FlatMemory ok({256, 32, 32, 64});
  EXPECT_EQ(ok.run(p), VNPU_CPL_OK);
  FlatMemory aliased({256, 32, 32, 64});
  aliased.alias(kOut, kIn);
  EXPECT_EQ(aliased.run(p), VNPU_CPL_PROGRAM_INVALID);
}

TEST(Program, ElementwiseOpsMayRunInPlaceOnTheirFirstInputOnly) {
  {
    ProgramBuilder b = four_bindings(16, 16, 64);
    uint32_t x = b.tensor(kScratch, 0, {4}), in = b.tensor(kIn, 0, {4}), out = b.tensor(kOut, 0, {4});
    vnpu_isa_unary relu{};
    relu.act = VNPU_ISA_ACT_RELU;
    b.op(VNPU_ISA_OP_COPY, {in}, {x});
    b.op(VNPU_ISA_OP_UNARY, {x}, {x}, &relu);
    b.op(VNPU_ISA_OP_COPY, {x}, {out});
    auto p = b.bytes();
    ASSERT_EQ(validate(p), VNPU_CPL_OK);
    FlatMemory m({256, 16, 16, 64});
    float v[4] = {-1, 2, -3, 4};
    std::memcpy(m.slot(kIn).data(), v, sizeof(v));
    ASSERT_EQ(m.run(p), VNPU_CPL_OK);
    const float* o = f32(m.slot(kOut));
    EXPECT_EQ(std::vector<float>(o, o + 4), (std::vector<float>{0, 2, 0, 4}));
  }
  {
    ProgramBuilder b = four_bindings(16, 16, 64);
    uint32_t x = b.tensor(kScratch, 0, {4}), z = b.tensor(kScratch, 16, {4});
    vnpu_isa_binary add{};
    b.op(VNPU_ISA_OP_BINARY, {z, x}, {x}, &add);  // in place on the second input: not offered
    EXPECT_EQ(validate(b.bytes()), VNPU_CPL_PROGRAM_INVALID);
  }
  {
    ProgramBuilder b = four_bindings(16, 16, 64);
    uint32_t x = b.tensor(kScratch, 0, {4}), y = b.tensor(kScratch, 4, {4});
    vnpu_isa_unary neg{};
    neg.act = VNPU_ISA_ACT_NEG;
    b.op(VNPU_ISA_OP_UNARY, {x}, {y}, &neg);  // shifted by one element: the result would depend on loop order
    EXPECT_EQ(validate(b.bytes()), VNPU_CPL_PROGRAM_INVALID);
  }
}

// Regression: UNARY, CHANNEL_AFFINE, CONCAT, SLICE, TRANSPOSE and SOFTMAX never looked at the cancel flag, so a
// queue reset or unplug waited for the whole op however large the program made it.
TEST(Program, ReferenceKernelsNoticeCancellation) {
  constexpr uint32_t kRows = 2048, kCols = 64;
  std::vector<float> x(size_t(kRows) * kCols, 1.0f), y(x.size()), s(kRows, 1.0f);
  volatile int cancel = 1;
  auto args = [&](uint32_t opcode, unsigned nin) {
    VnpuOpArgs a{};
    a.opcode = opcode;
    a.num_inputs = nin;
    a.num_outputs = 1;
    for (unsigned k = 0; k <= nin; k++) {
      VnpuTensor& t = a.t[k];
      t.data = k == nin ? y.data() : x.data();
      t.rank = 2;
      t.dims[0] = kRows;
      t.dims[1] = kCols;
      t.count = uint64_t(kRows) * kCols;
    }
    a.cancel = &cancel;
    return a;
  };
  VnpuOpArgs u = args(VNPU_ISA_OP_UNARY, 1);
  u.attr.unary.act = VNPU_ISA_ACT_RELU;
  VnpuOpArgs af = args(VNPU_ISA_OP_CHANNEL_AFFINE, 3);
  af.t[0].dims[0] = 1, af.t[0].dims[1] = kRows, af.t[0].dims[2] = kCols, af.t[0].rank = 3;
  af.t[3] = af.t[0];
  af.t[3].data = y.data();
  for (int k : {1, 2}) {
    af.t[k].data = s.data();
    af.t[k].rank = 1;
    af.t[k].dims[0] = kRows;
    af.t[k].dims[1] = 0;
    af.t[k].count = kRows;
  }
  VnpuOpArgs sl = args(VNPU_ISA_OP_SLICE, 1);
  sl.attr.slice.step[0] = sl.attr.slice.step[1] = 1;
  VnpuOpArgs tp = args(VNPU_ISA_OP_TRANSPOSE, 1);
  tp.attr.transpose.perm[1] = 1;
  VnpuOpArgs sm = args(VNPU_ISA_OP_SOFTMAX, 1);
  sm.attr.softmax.axis = 1;
  VnpuOpArgs cc = args(VNPU_ISA_OP_CONCAT, 2);
  cc.t[0].dims[0] = cc.t[1].dims[0] = kRows / 2;
  cc.t[0].count = cc.t[1].count = uint64_t(kRows / 2) * kCols;
  cc.attr.axis.axis = 1;
  cc.t[0].dims[0] = cc.t[1].dims[0] = kRows;
  cc.t[0].dims[1] = cc.t[1].dims[1] = kCols / 2;
  cc.t[0].count = cc.t[1].count = uint64_t(kRows) * kCols / 2;
  for (VnpuOpArgs* a : {&u, &af, &sl, &tp, &sm, &cc}) {
    ASSERT_EQ(vnpu_ops_check(a), 0) << "opcode " << a->opcode;
    EXPECT_EQ(vnpu_ops_run(a, VNPU_KERNELS_REFERENCE), VNPU_CPL_ABORTED) << "opcode " << a->opcode;
  }
}

}  // namespace
}  // namespace vnpu::test
