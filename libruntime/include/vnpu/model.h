// SPDX-License-Identifier: MIT
/// \file
/// vnpu::MatmulModel: the v0 one-operation model, y[m,n] = x[m,k] · W[k,n] (f32, row-major).
#pragma once

#include <cstdint>
#include <memory>

#include <vnpu/export.h>
#include <vnpu/tensor.h>

namespace vnpu {

/// A model with one input x of shape [m,k], one constant weight W of shape [k,n] and one output y of shape
/// [m,n]. Immutable after construction; copies share the weights. Safe to use from any thread.
class VNPU_API MatmulModel {
 public:
  /// Largest accepted dimension (the device's matmul limit).
  static constexpr int64_t kMaxDim = 16384;

  /// \param m       rows of x and y, 1..kMaxDim
  /// \param weights W, shape [k,n] with k and n in 1..kMaxDim
  /// Throws Error(kInvalidArgument) with the offending dimension otherwise.
  MatmulModel(int64_t m, Tensor weights);

  [[nodiscard]] int64_t m() const noexcept { return m_; }
  [[nodiscard]] int64_t k() const noexcept { return k_; }
  [[nodiscard]] int64_t n() const noexcept { return n_; }
  /// W, shape [k,n].
  [[nodiscard]] const Tensor& weights() const noexcept { return *weights_; }
  /// Shape the single input must have: {m, k}.
  [[nodiscard]] std::vector<int64_t> input_shape() const { return {m_, k_}; }
  /// Shape of the single output: {m, n}.
  [[nodiscard]] std::vector<int64_t> output_shape() const { return {m_, n_}; }

  /// The CPU reference: y = x · W with the device's summation order (for each output element, products are
  /// accumulated in f32 in increasing k from 0.0f), so a correct device result is bit-identical.
  /// Throws Error(kInvalidArgument) if x does not have input_shape().
  [[nodiscard]] Tensor reference(const Tensor& x) const;

 private:
  int64_t m_, k_, n_;
  std::shared_ptr<const Tensor> weights_;
};

}  // namespace vnpu
