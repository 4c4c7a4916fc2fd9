// SPDX-License-Identifier: MIT
// Helpers shared by the compiler unit tests.
#pragma once

#include <cstring>
#include <vector>

#include <zlib.h>

#include <vnpu/compiler.h>

#include "conformance.h"
#include "onnx_builder.h"

extern "C" {
#include "vnpu_isa.h"
}

namespace vnpu::test {

/// A small conv -> BatchNorm -> Relu model: x[1,2,5,5] -> y[1,3,5,5].
inline std::vector<uint8_t> conv_bn_relu_model() {
  OnnxBuilder b;
  std::vector<float> w(3 * 2 * 3 * 3);
  for (size_t i = 0; i < w.size(); i++)
    w[i] = static_cast<float>((i * 7) % 11) / 11.0f - 0.5f;
  b.input("x", {1, 2, 5, 5}).output("y");
  b.init("W", {3, 2, 3, 3}, w).init("B", {3}, {0.1f, -0.2f, 0.3f});
  b.init("s", {3}, {1.5f, 0.5f, 2.0f}).init("bb", {3}, {0.0f, 0.1f, -0.1f});
  b.init("m", {3}, {0.2f, -0.1f, 0.0f}).init("v", {3}, {1.0f, 0.5f, 2.0f});
  auto& c = b.node("Conv", {"x", "W", "B"}, {"c"}, "conv0");
  OnnxBuilder::attr(c, "pads", std::vector<int64_t>{1, 1, 1, 1});
  b.node("BatchNormalization", {"c", "s", "bb", "m", "v"}, {"n"}, "bn0");
  b.node("Relu", {"n"}, {"y"}, "relu0");
  return b.bytes();
}

/// Recomputes a container's CRC after a test edited it (to reach validation behind the checksum).
inline void fix_crc(std::vector<uint8_t>& f) {
  constexpr size_t off = offsetof(vnpu_file_header, crc32);
  uint8_t zero[4] = {0, 0, 0, 0};
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, f.data(), off);
  c = crc32(c, zero, 4);
  c = crc32(c, f.data() + off + 4, static_cast<uInt>(f.size() - off - 4));
  uint32_t v = static_cast<uint32_t>(c);
  std::memcpy(f.data() + off, &v, 4);
}

inline std::vector<float> iota_data(size_t n, float scale = 0.1f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++)
    v[i] = static_cast<float>(static_cast<int>((i * 37) % 19) - 9) * scale;
  return v;
}

}  // namespace vnpu::test
