// SPDX-License-Identifier: MIT
/// \file
/// Reading and writing NumPy .npy files of float32 (little-endian, C order): reference inputs and outputs
/// produced by the model generators, and outputs written by the examples.
#pragma once

#include <string>

#include <vnpu/tensor.h>

namespace vnpu::examples {

/// Loads a version 1.0/2.0/3.0 .npy of dtype '<f4', C order. Throws vnpu::Error(kInvalidArgument) naming the
/// file and what is wrong (other dtype, Fortran order, truncated data), or kIo if it cannot be read.
[[nodiscard]] Tensor load_npy(const std::string& path);

/// Writes `t` as a version 1.0 '<f4' .npy. Throws vnpu::Error(kIo) on failure.
void save_npy(const std::string& path, const Tensor& t);

}  // namespace vnpu::examples
