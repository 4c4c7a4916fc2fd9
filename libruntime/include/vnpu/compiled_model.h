// SPDX-License-Identifier: MIT
/// \file
/// vnpu::CompiledModel: a model ready to run — loaded from a `.vnpu` file or memory (the compiler's output),
/// or built in memory (the one-op matmul, or a synthetic model whose stage times are known, for benchmarks).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <vnpu/export.h>
#include <vnpu/tensor.h>

namespace vnpu {

class MatmulModel;

namespace detail {
struct ModelData;
}

/// A model input or output as the caller sees it.
struct TensorInfo {
  std::string name;            ///< the source model's name for it
  DType dtype = DType::kF32;   ///< element type
  std::vector<int64_t> shape;  ///< static shape; {} is a scalar
  uint64_t size_bytes = 0;     ///< product(shape) * element size
};

/// A synthetic model (vnpu-bench --synthetic): no real computation, but known time in every stage.
struct SyntheticSpec {
  std::chrono::nanoseconds host_prep{0};   ///< CPU time spent per request on the prep thread (busy loop + copy)
  uint64_t input_bytes = 4;                ///< bytes moved host→device per request
  std::chrono::nanoseconds compute{1000};  ///< modelled compute time (a SYNTH command), > 0
  uint64_t output_bytes = 4;               ///< bytes moved device→host per request
};

/// Immutable after construction; copies share the data. Safe to use from any thread.
class VNPU_API CompiledModel {
 public:
  /// Load a `.vnpu` file. Throws Error: kNotFound (no such file), kInvalidArgument (not a valid `.vnpu`
  /// file: the message says what is wrong and where), kIo.
  [[nodiscard]] static CompiledModel load(const std::string& path);
  /// Parse `.vnpu` bytes (copied). `what` names the source in error messages. Throws as load().
  [[nodiscard]] static CompiledModel from_memory(std::span<const uint8_t> bytes, std::string_view what = "memory");
  /// The one-op matmul model y[m,n] = x[m,k] · W[k,n] (input "x", output "y"), run with the device's MATMUL
  /// command.
  [[nodiscard]] static CompiledModel from_matmul(const MatmulModel& model);
  /// A synthetic model with input "x" and output "y", each f32[1]; its H2D moves input_bytes and its D2H
  /// output_bytes (rounded up to whole f32) of a device binding, so the host pays only host_prep. Throws
  /// Error(kInvalidArgument) for zero sizes or compute outside 1 ns..10 s.
  [[nodiscard]] static CompiledModel synthetic(const SyntheticSpec& spec);

  /// Inputs, in the order run() takes them.
  [[nodiscard]] const std::vector<TensorInfo>& inputs() const noexcept;
  /// Outputs, in the order Outputs holds them.
  [[nodiscard]] const std::vector<TensorInfo>& outputs() const noexcept;
  /// Index of the input / output named `name`, if any.
  [[nodiscard]] std::optional<size_t> input_index(std::string_view name) const noexcept;
  [[nodiscard]] std::optional<size_t> output_index(std::string_view name) const noexcept;
  /// Bytes of device memory one in-flight request needs (input, output and scratch bindings), and bytes
  /// shared by all requests on a device (weights and program).
  [[nodiscard]] uint64_t device_bytes_per_request() const noexcept;
  [[nodiscard]] uint64_t device_bytes_shared() const noexcept;
  /// "exec" (a compiled program), "matmul" or "synthetic".
  [[nodiscard]] std::string_view kind() const noexcept;
  /// A few lines for humans: inputs, outputs, bindings, sizes.
  [[nodiscard]] std::string describe() const;

  /// Library internals.
  [[nodiscard]] const detail::ModelData& data() const noexcept { return *d_; }

 private:
  explicit CompiledModel(std::shared_ptr<const detail::ModelData> d) : d_(std::move(d)) {}
  std::shared_ptr<const detail::ModelData> d_;
};

}  // namespace vnpu
