// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Tensor: a dense, row-major f32 array with a shape, either owning its elements or borrowing the
/// caller's memory (zero-copy). The unit of model input and output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <vnpu/export.h>

namespace vnpu {

/// Element types. The device and ISA 1.0 have f32 only.
enum class DType { kF32 };

/// Short name of a dtype ("f32").
VNPU_API const char* dtype_name(DType dtype) noexcept;

/// "[1,3,224,224]".
VNPU_API std::string shape_string(const std::vector<int64_t>& shape);

/// An f32 tensor.
///
/// Owned tensors (the constructors) hold their elements: copying copies them, moving is cheap.
/// Borrowed tensors (Tensor::borrow) point at memory the caller owns; copying a borrowed tensor copies the
/// view, not the elements. The caller keeps borrowed memory alive and unmodified (inputs) or untouched
/// (outputs) until the request using it has resolved. A borrowed input avoids the copy run() would otherwise
/// make; a borrowed output receives the result directly (AsyncRuntime::run with outputs).
/// Not synchronised: one writer or several readers at a time.
class VNPU_API Tensor {
 public:
  /// An empty tensor (shape {}, no elements); valid only as a placeholder.
  Tensor() = default;
  /// A zero-filled owned tensor. Throws Error(kInvalidArgument) if a dimension is < 1 or the element count
  /// overflows. Shape {} is a scalar (one element).
  explicit Tensor(std::vector<int64_t> shape);
  /// An owned tensor that takes `data` (row-major). Throws Error(kInvalidArgument) if data.size() is not the
  /// product of `shape`, or a dimension is < 1.
  Tensor(std::vector<int64_t> shape, std::vector<float> data);

  /// A writable view of `data` (not copied). Same shape rules as the constructors.
  [[nodiscard]] static Tensor borrow(std::vector<int64_t> shape, std::span<float> data);
  /// A read-only view of `data` (for inputs). Calling the non-const data() on it throws
  /// Error(kInvalidArgument).
  [[nodiscard]] static Tensor borrow(std::vector<int64_t> shape, std::span<const float> data);
  /// A read-only view of `data` that also holds `owner` (typically the object owning `data`, e.g. a
  /// language binding's array) until the view and every copy of it are destroyed. The runtime destroys its
  /// copies of an input as soon as it no longer reads it (staging copy done, or request dropped) — which can
  /// be later than the Task's resolution when a request is cancelled or times out during its staging copy.
  /// `owner`'s deleter may run on any runtime thread.
  [[nodiscard]] static Tensor borrow(std::vector<int64_t> shape, std::span<const float> data,
                                     std::shared_ptr<const void> owner);

  /// A writable view of `data` that holds `owner` until the view and every copy of it are destroyed (what
  /// AsyncRuntime's outputs are: views of the buffer the device wrote, whose lease is `owner`). Same shape
  /// rules as the constructors.
  [[nodiscard]] static Tensor view(std::vector<int64_t> shape, std::span<float> data,
                                   std::shared_ptr<const void> owner);

  Tensor(const Tensor& o);
  Tensor& operator=(const Tensor& o);
  Tensor(Tensor&& o) noexcept;
  Tensor& operator=(Tensor&& o) noexcept;
  ~Tensor() = default;

  [[nodiscard]] const std::vector<int64_t>& shape() const noexcept { return shape_; }
  [[nodiscard]] DType dtype() const noexcept { return DType::kF32; }
  /// Number of elements.
  [[nodiscard]] size_t size() const noexcept { return size_; }
  /// Number of bytes of element data.
  [[nodiscard]] size_t size_bytes() const noexcept { return size_ * sizeof(float); }
  /// True for a view made by borrow().
  [[nodiscard]] bool borrowed() const noexcept { return borrowed_; }
  /// True for a read-only view.
  [[nodiscard]] bool read_only() const noexcept { return read_only_; }
  /// The elements. Throws Error(kInvalidArgument) for a read-only view.
  [[nodiscard]] std::span<float> data();
  [[nodiscard]] std::span<const float> data() const noexcept { return {ptr_, size_}; }

  /// Same shape and bit-identical elements (owned or borrowed alike).
  friend VNPU_API bool operator==(const Tensor& a, const Tensor& b);

 private:
  std::vector<int64_t> shape_;
  std::vector<float> owned_;
  float* ptr_ = nullptr;
  size_t size_ = 0;
  bool borrowed_ = false;
  bool read_only_ = false;
  std::shared_ptr<const void> owner_;  // borrow(..., owner): keeps the viewed memory alive
};

}  // namespace vnpu
