// SPDX-License-Identifier: MIT
// Bounded, deterministic mutation fuzzer for .vnpu files: seeds covering every ISA opcode are built in-process,
// mutated (bit flips, interesting values, copies inside the program), given a recomputed CRC so that they get
// past the checksum, parsed with the runtime's container reader, and every program that parses and validates is
// run by the device's interpreter (reference and fast kernels) on flat memory. Meant to run under AddressSanitizer
// and UBSan (scripts/test-engine-asan.sh): any report aborts the run. Exit status 0 = no crash.
//
//   program_fuzz [--iterations N] [--seed S] [extra seed files (.vnpu)...]
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include <vnpu/model_file.h>

#include "program_builder.h"

extern "C" {
#include "vnpu_ops.h"
}

namespace {

using vnpu::test::FlatMemory;
using vnpu::test::ProgramBuilder;

enum : uint32_t { kW = 0, kIn = 1, kOut = 2, kScratch = 3 };

struct Seed {
  std::vector<uint8_t> file;
  size_t program_offset = 0, program_size = 0;
  size_t tensors_offset = 0, ops_offset = 0;  // inside the program
};

// Wraps a program in a .vnpu container with deterministic weights, one input and one output.
Seed container(const ProgramBuilder& b, std::vector<uint32_t> in_dims, std::vector<uint32_t> out_dims) {
  vnpu::ModelFile m;
  auto prog = b.bytes();
  m.set_program(prog);
  std::vector<uint8_t> w(b.bindings()[kW].size);
  for (size_t i = 0; i + 4 <= w.size(); i += 4) {
    float v = float(int(i * 7 % 23) - 11) / 8.0f;
    std::memcpy(&w[i], &v, 4);
  }
  m.set_weights(w);
  auto spec = [](const char* name, uint32_t binding, const std::vector<uint32_t>& dims) {
    vnpu::TensorSpec t;
    t.name = name;
    t.binding = binding;
    uint64_t n = 1;
    for (uint32_t d : dims) {
      t.shape.push_back(d);
      n *= d;
    }
    t.size_bytes = n * 4;
    return t;
  };
  m.add_input(spec("x", kIn, in_dims));
  m.add_output(spec("y", kOut, out_dims));
  Seed s;
  s.file = m.serialize();
  // Locate the program section so that most mutations land where the validator and the kernels look.
  vnpu_file_header h;
  std::memcpy(&h, s.file.data(), sizeof(h));
  for (uint32_t i = 0; i < h.num_sections; i++) {
    vnpu_file_section sec;
    std::memcpy(&sec, s.file.data() + h.sections_offset + i * sizeof(sec), sizeof(sec));
    if (sec.kind == VNPU_FILE_SEC_PROGRAM) {
      vnpu_isa_program p;
      std::memcpy(&p, s.file.data() + sec.offset, sizeof(p));
      s.program_offset = sec.offset;
      s.program_size = sec.size;
      s.tensors_offset = p.tensors_offset;
      s.ops_offset = p.ops_offset;
    }
  }
  return s;
}

ProgramBuilder bindings(uint64_t weights, uint64_t in, uint64_t out, uint64_t scratch) {
  ProgramBuilder b;
  b.binding(VNPU_ISA_BIND_WEIGHTS, weights);
  b.binding(VNPU_ISA_BIND_INPUT, in);
  b.binding(VNPU_ISA_BIND_OUTPUT, out);
  b.binding(VNPU_ISA_BIND_SCRATCH, scratch);
  return b;
}

// conv -> max pool -> BatchNorm -> relu (in place) -> broadcast add -> resize -> concat -> slice -> transpose
Seed cnn_seed() {
  ProgramBuilder b = bindings(1024, 288, 288, 8192);
  uint32_t x = b.tensor(kIn, 0, {1, 2, 6, 6});
  uint32_t w = b.tensor(kW, 0, {4, 2, 3, 3}), bias = b.tensor(kW, 288, {4});
  uint32_t s = b.tensor(kW, 304, {4}), t = b.tensor(kW, 320, {4}), c = b.tensor(kW, 336, {1, 4, 1, 1});
  uint32_t s0 = b.tensor(kScratch, 0, {1, 4, 6, 6}), s1 = b.tensor(kScratch, 576, {1, 4, 3, 3});
  uint32_t s2 = b.tensor(kScratch, 720, {1, 4, 3, 3}), s3 = b.tensor(kScratch, 864, {1, 4, 3, 3});
  uint32_t s4 = b.tensor(kScratch, 1008, {1, 4, 6, 6}), s5 = b.tensor(kScratch, 1584, {1, 8, 6, 6});
  uint32_t s6 = b.tensor(kScratch, 2736, {1, 4, 6, 3}), y = b.tensor(kOut, 0, {1, 6, 4, 3});
  vnpu_isa_conv cv{};
  cv.group = 1;
  cv.flags = VNPU_ISA_CONV_F_BIAS;
  cv.stride[0] = cv.stride[1] = cv.dilation[0] = cv.dilation[1] = 1;
  cv.pad_begin[0] = cv.pad_begin[1] = cv.pad_end[0] = cv.pad_end[1] = 1;
  b.op(VNPU_ISA_OP_CONV, {x, w, bias}, {s0}, &cv);
  vnpu_isa_pool pl{};
  pl.kind = VNPU_ISA_POOL_MAX;
  pl.kernel[0] = pl.kernel[1] = pl.stride[0] = pl.stride[1] = 2;
  pl.dilation[0] = pl.dilation[1] = 1;
  b.op(VNPU_ISA_OP_POOL, {s0}, {s1}, &pl);
  vnpu_isa_affine af{};
  b.op(VNPU_ISA_OP_CHANNEL_AFFINE, {s1, s, t}, {s2}, &af);
  vnpu_isa_unary relu{};
  relu.act = VNPU_ISA_ACT_RELU;
  b.op(VNPU_ISA_OP_UNARY, {s2}, {s2}, &relu);
  vnpu_isa_binary add{};
  add.kind = VNPU_ISA_BIN_ADD;
  b.op(VNPU_ISA_OP_BINARY, {s2, c}, {s3}, &add);
  vnpu_isa_resize rz{};
  rz.mode = VNPU_ISA_RESIZE_NEAREST;
  rz.scale[0] = rz.scale[1] = 1.0f;
  rz.scale[2] = rz.scale[3] = 2.0f;
  b.op(VNPU_ISA_OP_RESIZE, {s3}, {s4}, &rz);
  vnpu_isa_axis ax{};
  ax.axis = 1;
  b.op(VNPU_ISA_OP_CONCAT, {s4, s0}, {s5}, &ax);
  vnpu_isa_slice sl{};
  sl.start[1] = 1;
  sl.step[0] = sl.step[2] = 1;
  sl.step[1] = sl.step[3] = 2;
  b.op(VNPU_ISA_OP_SLICE, {s5}, {s6}, &sl);
  vnpu_isa_transpose tp{};
  tp.perm[0] = 0;
  tp.perm[1] = 2;
  tp.perm[2] = 1;
  tp.perm[3] = 3;
  b.op(VNPU_ISA_OP_TRANSPOSE, {s6}, {y}, &tp);
  return container(b, {1, 2, 6, 6}, {1, 6, 4, 3});
}

// matmul (+bias) -> softmax -> conv-transpose over a reshaped copy -> average pool -> linear resize -> copy
Seed mlp_seed() {
  ProgramBuilder b = bindings(1024, 64, 64, 8192);
  uint32_t x = b.tensor(kIn, 0, {2, 8});
  uint32_t w = b.tensor(kW, 0, {8, 9}), bias = b.tensor(kW, 288, {9}), wt = b.tensor(kW, 336, {2, 2, 2, 2});
  uint32_t s0 = b.tensor(kScratch, 0, {2, 9}), s1 = b.tensor(kScratch, 128, {2, 9});
  uint32_t s1v = b.tensor(kScratch, 128, {1, 2, 3, 3}), s2 = b.tensor(kScratch, 256, {1, 2, 6, 6});
  uint32_t s3 = b.tensor(kScratch, 576, {1, 2, 3, 3}), s4 = b.tensor(kScratch, 704, {1, 2, 2, 2});
  uint32_t y = b.tensor(kOut, 0, {8});
  vnpu_isa_matmul mm{};
  mm.flags = VNPU_ISA_MATMUL_F_BIAS;
  mm.alpha = mm.beta = 1.0f;
  b.op(VNPU_ISA_OP_MATMUL, {x, w, bias}, {s0}, &mm);
  vnpu_isa_softmax sm{};
  sm.axis = 1;
  b.op(VNPU_ISA_OP_SOFTMAX, {s0}, {s1}, &sm);
  vnpu_isa_conv ct{};
  ct.group = 1;
  ct.stride[0] = ct.stride[1] = 2;
  ct.dilation[0] = ct.dilation[1] = 1;
  b.op(VNPU_ISA_OP_CONV_TRANSPOSE, {s1v, wt}, {s2}, &ct);
  vnpu_isa_pool ap{};
  ap.kind = VNPU_ISA_POOL_AVG;
  ap.kernel[0] = ap.kernel[1] = ap.stride[0] = ap.stride[1] = 2;
  ap.dilation[0] = ap.dilation[1] = 1;
  b.op(VNPU_ISA_OP_POOL, {s2}, {s3}, &ap);
  vnpu_isa_resize rz{};
  rz.mode = VNPU_ISA_RESIZE_LINEAR;
  rz.flags = VNPU_ISA_RESIZE_F_SIZES;
  b.op(VNPU_ISA_OP_RESIZE, {s3}, {s4}, &rz);
  b.op(VNPU_ISA_OP_COPY, {s4}, {y});
  return container(b, {2, 8}, {8});
}

void fix_crc(std::vector<uint8_t>& f) {
  constexpr size_t off = offsetof(vnpu_file_header, crc32);
  const uint8_t zero[4] = {0, 0, 0, 0};
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, f.data(), off);
  c = crc32(c, zero, 4);
  c = crc32(c, f.data() + off + 4, static_cast<uInt>(f.size() - off - 4));
  uint32_t v = static_cast<uint32_t>(c);
  std::memcpy(f.data() + off, &v, 4);
}

void mutate(std::mt19937_64& rng, const Seed& s, std::vector<uint8_t>& f) {
  static const uint64_t kInteresting[] = {0, 1, 2, 3, 4, 7, 8, 16, 63, 64, 255, 256, 0x7fff, 0x8000, 0xffff,
                                          0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull,
                                          0x7fffffffffffffffull, 0x8000000000000000ull, ~0ull};
  unsigned r = unsigned(rng() % 16);
  int n = r < 9 ? 1 : r < 13 ? 2 : 3 + int(r % 2);
  for (int k = 0; k < n; k++) {
    // Mostly the tensor table (shapes, offsets: aliasing) and the op stream (operands, attributes); sometimes the
    // program header and binding table, sometimes anywhere in the file.
    size_t lo = 0, len = f.size();
    switch (rng() % 16) {
      case 0:
        break;
      case 1:
      case 2:
        lo = s.program_offset;
        len = s.tensors_offset;
        break;
      case 3:
      case 4:
      case 5:
      case 6:
      case 7:
      case 8:
        lo = s.program_offset + s.tensors_offset;
        len = s.ops_offset - s.tensors_offset;
        break;
      default:
        lo = s.program_offset + s.ops_offset;
        len = s.program_size - s.ops_offset;
        break;
    }
    size_t at = lo + rng() % len;
    switch (rng() % 7) {
      case 0:
        f[at] ^= uint8_t(1u << (rng() % 8));
        break;
      case 1:
        f[at] = uint8_t(rng());
        break;
      case 2:
      case 3: {  // an interesting 32- or 64-bit value, aligned like the fields are
        size_t w = rng() % 2 ? 4 : 8;
        at = lo + (at - lo) / w * w;
        if (at + w > lo + len)
          break;
        uint64_t v = kInteresting[rng() % (sizeof(kInteresting) / sizeof(kInteresting[0]))];
        if (rng() % 4 == 0)
          v = ~v + 1;  // and negatives
        std::memcpy(&f[at], &v, w);
        break;
      }
      case 4:
      case 5: {  // a small delta on a 32-bit field (dims, offsets, indices)
        at = lo + (at - lo) / 4 * 4;
        if (at + 4 > lo + len)
          break;
        uint32_t v;
        std::memcpy(&v, &f[at], 4);
        v += uint32_t((int(rng() % 33) - 16) * (rng() % 2 ? 4 : 1));  // offsets move in whole elements
        std::memcpy(&f[at], &v, 4);
        break;
      }
      default: {  // copy 4..32 bytes from elsewhere in the same region (duplicates tensor indices, entries)
        size_t w = 4u << (rng() % 4), from = lo + rng() % len;
        if (rng() % 2) {  // field-aligned: one tensor's offset or dims onto another's
          at = lo + (at - lo) / 8 * 8;
          from = lo + (from - lo) / 8 * 8;
        }
        if (at + w <= lo + len && from + w <= lo + len)
          std::memmove(&f[at], &f[from], w);
        break;
      }
    }
  }
}

struct Stats {
  unsigned format_rejected = 0, program_invalid = 0, too_big = 0, ran = 0, ran_ok = 0;
};

// Parse, validate and run one file. Returns false only if a seed (which must be valid) misbehaves.
bool run_file(const std::vector<uint8_t>& f, VnpuKernelMode mode, Stats& st) {
  vnpu::ModelFile m;
  try {
    m = vnpu::ModelFile::parse(f, "fuzz");
  } catch (const vnpu::FormatError&) {
    st.format_rejected++;
    return true;
  }
  auto prog = m.program();
  std::vector<uint8_t> code(prog.begin(), prog.end());
  uint32_t nb = static_cast<uint32_t>(m.bindings().size());
  if (vnpu_program_validate(code.data(), code.size(), nb, nullptr) != VNPU_CPL_OK) {
    st.program_invalid++;
    return true;
  }
  // Bounded work: at most 64 MiB of slots and ~2e7 modelled flops+bytes per run (seconds under ASan).
  VnpuComputeModel unit{1'000'000'000, 1'000'000'000, 0};
  VnpuProgramCost cost{};
  uint64_t total = 0;
  std::vector<uint64_t> sizes;
  for (const auto& bs : m.bindings()) {
    sizes.push_back(bs.size);
    total += std::min<uint64_t>(bs.size, 1ull << 40);  // no wrap-around of the sum
  }
  if (vnpu_program_cost(code.data(), code.size(), &unit, &cost) != VNPU_CPL_OK || total > (64u << 20) ||
      cost.flops + cost.bytes > 20'000'000) {
    st.too_big++;
    return true;
  }
  FlatMemory mem(sizes);
  auto w = m.weights();
  uint32_t wb = m.weights_binding();
  std::memcpy(mem.slot(wb).data(), w.data(), std::min<size_t>(w.size(), mem.slot(wb).size()));
  for (size_t i = 0; i < sizes.size(); i++) {
    if (i == wb)
      continue;
    auto& sl = mem.slot(i);
    for (size_t k = 0; k + 4 <= sl.size(); k += 4) {
      float v = float(int(k * 13 % 29) - 14) / 4.0f;
      std::memcpy(&sl[k], &v, 4);
    }
  }
  vnpu_ops_set_default_mode(mode);
  int rc = mem.run(code);
  st.ran++;
  st.ran_ok += rc == VNPU_CPL_OK;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  unsigned iterations = 2000;
  uint64_t seed = 1;
  std::vector<Seed> seeds = {cnn_seed(), mlp_seed()};
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) {
      iterations = unsigned(std::strtoul(argv[++i], nullptr, 0));
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 0);
    } else {
      try {
        Seed s;
        s.file = std::vector<uint8_t>();
        auto m = vnpu::ModelFile::load(a);
        s.file = m.serialize();
        seeds.push_back(std::move(s));
      } catch (const vnpu::FormatError& e) {
        std::fprintf(stderr, "program_fuzz: %s\n", e.what());
        return 2;
      }
    }
  }
  // The seeds themselves must parse, validate and run cleanly, or the fuzzer would test nothing.
  for (size_t i = 0; i < seeds.size(); i++) {
    Stats st;
    run_file(seeds[i].file, VNPU_KERNELS_REFERENCE, st);
    if (st.ran_ok != 1) {
      std::fprintf(stderr, "program_fuzz: seed %zu does not run (format %u, invalid %u, big %u, ran %u)\n", i,
                   st.format_rejected, st.program_invalid, st.too_big, st.ran);
      return 1;
    }
  }
  std::mt19937_64 rng(seed);
  Stats st;
  for (unsigned it = 0; it < iterations; it++) {
    const Seed& s = seeds[rng() % seeds.size()];
    std::vector<uint8_t> f = s.file;
    mutate(rng, s, f);
    fix_crc(f);
    run_file(f, it % 2 ? VNPU_KERNELS_AUTO : VNPU_KERNELS_REFERENCE, st);
  }
  std::printf(
      "program_fuzz: %u iterations (seed %llu): %u rejected by the container reader, %u by the program "
      "validator, %u too big to run, %u run (%u completed OK, %u stopped with an error status); no crash\n",
      iterations, static_cast<unsigned long long>(seed), st.format_rejected, st.program_invalid, st.too_big,
      st.ran, st.ran_ok, st.ran - st.ran_ok);
  return 0;
}
