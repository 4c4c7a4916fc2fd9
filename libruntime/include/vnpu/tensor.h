// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Tensor: an owned, dense, row-major f32 array with a shape. The unit of model input and output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <vnpu/export.h>

namespace vnpu {

/// Element types. v0 has f32 only (the device's only dtype).
enum class DType { kF32 };

/// An owned f32 tensor. Value type: copying copies the data; moving is cheap.
/// Not synchronised: one writer or several readers at a time.
class VNPU_API Tensor {
 public:
  /// An empty tensor (shape {}, no elements); valid only as a placeholder.
  Tensor() = default;
  /// A zero-filled tensor. Throws Error(kInvalidArgument) if a dimension is < 1 or the element count
  /// overflows.
  explicit Tensor(std::vector<int64_t> shape);
  /// A tensor that takes `data` (row-major). Throws Error(kInvalidArgument) if data.size() does not equal the
  /// product of `shape`, or a dimension is < 1.
  Tensor(std::vector<int64_t> shape, std::vector<float> data);

  [[nodiscard]] const std::vector<int64_t>& shape() const noexcept { return shape_; }
  [[nodiscard]] DType dtype() const noexcept { return DType::kF32; }
  /// Number of elements.
  [[nodiscard]] size_t size() const noexcept { return data_.size(); }
  /// Number of bytes of element data.
  [[nodiscard]] size_t size_bytes() const noexcept { return data_.size() * sizeof(float); }
  [[nodiscard]] std::span<float> data() noexcept { return data_; }
  [[nodiscard]] std::span<const float> data() const noexcept { return data_; }

  /// Same shape and bit-identical elements.
  friend bool operator==(const Tensor&, const Tensor&) = default;

 private:
  std::vector<int64_t> shape_;
  std::vector<float> data_;
};

}  // namespace vnpu
