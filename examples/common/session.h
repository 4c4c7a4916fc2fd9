// SPDX-License-Identifier: MIT
/// \file
/// The examples' one point of contact with model loading and runtime construction: a compiled `.vnpu` model
/// on an AsyncRuntime. Everything else in the examples uses only Tensor, Task<Outputs> and RequestTimings.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <vnpu/async_runtime.h>

namespace vnpu::examples {

/// How to run a model.
struct SessionOptions {
  std::string backend;       ///< "sim", "kernel", or empty for the runtime's default
  int parallel = 1;          ///< AsyncRuntime prep threads
  int max_in_flight = 0;     ///< 0: the runtime's default
  bool timing_only = false;  ///< the device skips the functional compute and only models its time
};

/// A compiled model loaded on one AsyncRuntime.
class Session {
 public:
  /// Loads `model_path` (a .vnpu file from vnpuc) and opens the runtime. Throws vnpu::Error with the
  /// runtime's message (kNotFound for a missing file or device, kInvalidArgument for a damaged model,
  /// kUnsupported if the device's timing-only mode differs from `options.timing_only`).
  Session(const std::string& model_path, const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Shape of the single input / output.
  [[nodiscard]] const std::vector<int64_t>& input_shape() const noexcept { return input_shape_; }
  [[nodiscard]] const std::vector<int64_t>& output_shape() const noexcept { return output_shape_; }
  /// The backend actually in use ("sim" or "kernel") and the device's name.
  [[nodiscard]] std::string backend() const;
  [[nodiscard]] std::string device_name() const;
  /// Compute cores of the device: compute commands of that many requests run at once.
  [[nodiscard]] int compute_cores() const;
  /// Device clock minus steady_clock in ns, for placing device timestamps on the host timeline (0 on sim,
  /// whose device clock is steady_clock).
  [[nodiscard]] int64_t device_clock_offset_ns() const;

  /// Starts one request (AsyncRuntime::run). Never blocks on the device.
  [[nodiscard]] Task<Outputs> run(Tensor x);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<int64_t> input_shape_, output_shape_;
};

}  // namespace vnpu::examples
