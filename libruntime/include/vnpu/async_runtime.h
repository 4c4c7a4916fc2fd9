// SPDX-License-Identifier: MIT
/// \file
/// vnpu::AsyncRuntime: runs a model on one device with several requests in flight, overlapping host input
/// preparation, H2D DMA, compute and D2H DMA across requests.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <vnpu/device.h>
#include <vnpu/export.h>
#include <vnpu/model.h>
#include <vnpu/task.h>
#include <vnpu/tensor.h>

namespace vnpu {

/// How an AsyncRuntime is set up. Zero/empty fields take the documented defaults.
struct RuntimeOptions {
  /// "kernel", "sim", or empty: "kernel" if /dev/accel/accel<device> exists, else "sim".
  std::string backend;
  /// Device index (/dev/accel/accel<device> for the kernel backend).
  int device = 0;
  /// Input-preparation threads (copying inputs into DMA staging buffers), 1..16. 2 double-buffers the host
  /// side: one request is prepared while another is being submitted.
  int parallel = 1;
  /// Requests that hold device resources at once (staging + device buffers each), 1..256; 0 means
  /// max(4, 2 * parallel). Further requests queue in FIFO order until one finishes.
  int max_in_flight = 0;
  /// Kernel backend submission path (io_uring or ioctl SUBMIT+WAIT).
  SubmitMode submit_mode = SubmitMode::kUring;
};

/// Where one request spent its time. Host times on std::chrono::steady_clock.
struct RequestTimings {
  using Clock = std::chrono::steady_clock;
  Clock::time_point enqueued;    ///< run() accepted the request
  Clock::time_point prep_start;  ///< a prep thread picked it up (after waiting for a free slot)
  Clock::time_point prep_end;    ///< input copied into the staging buffer
  Clock::time_point submitted;   ///< the device accepted the job
  Clock::time_point completed;   ///< the completion thread saw the job finish
  Clock::time_point resolved;    ///< outputs copied out; task resolved
  /// Device clock (ns) at job start / end, when the backend reports them (DeviceInfo::timestamps).
  std::optional<uint64_t> device_start_ns, device_end_ns;

  [[nodiscard]] Clock::duration prep() const { return prep_end - prep_start; }
  [[nodiscard]] Clock::duration submit_to_complete() const { return completed - submitted; }
  [[nodiscard]] Clock::duration total() const { return resolved - enqueued; }
  /// Device busy time of this job, if timestamps are available.
  [[nodiscard]] std::optional<std::chrono::nanoseconds> device() const {
    if (!device_start_ns || !device_end_ns) return std::nullopt;
    return std::chrono::nanoseconds(*device_end_ns - *device_start_ns);
  }
};

/// Model inputs, in the model's input order (MatmulModel: exactly one, x[m,k]).
using Inputs = std::vector<Tensor>;

/// The result of one request: output tensors in the model's output order, plus its timings.
struct Outputs {
  std::vector<Tensor> tensors;
  RequestTimings timings;
  Tensor& operator[](size_t i) { return tensors.at(i); }
  const Tensor& operator[](size_t i) const { return tensors.at(i); }
};

class RuntimeImpl;

/// Runs one model on one device asynchronously.
///
/// Pipeline of a request: run() validates and queues it → a prep thread (one of `parallel`) takes a free
/// request slot (a staging host buffer and device buffers, `max_in_flight` of them) and copies the input into
/// the staging buffer → one job [H2D staging→device, MATMUL, D2H device→staging] is submitted → the device's
/// completion thread copies the output into an owned Tensor, frees the slot and resolves the Task.
///
/// Threads: run()/async_run() may be called from any thread, including from a coroutine resumed by this
/// runtime; they never block on the device. Tasks resolve, and coroutines awaiting them resume, on the
/// device's completion thread ("vnpu-complete"): a resumed coroutine should hand heavy work elsewhere and
/// must not destroy the runtime there.
/// Ordering: requests are picked up for preparation in run() order (with parallel > 1 two may be submitted
/// in either order); completion order is not guaranteed.
/// Errors: invalid inputs throw vnpu::Error from run() at once; device failures resolve the Task with a
/// vnpu::Error (kDeviceFault, kAborted, ...). A failed request does not affect others.
/// Destruction: waits for every request already accepted by run() to finish (drain, no cancellation); their
/// Tasks resolve normally and stay valid afterwards.
class VNPU_API AsyncRuntime {
 public:
  /// Opens the device, uploads the weights once and starts the prep threads.
  /// Throws vnpu::Error: kInvalidArgument (options out of range), kNotFound (backend or device missing),
  /// kOutOfMemory (device memory too small for the weights and max_in_flight request slots), kDeviceFault
  /// (weight upload failed), or whatever opening the device reports.
  explicit AsyncRuntime(MatmulModel model, RuntimeOptions options = {});
  ~AsyncRuntime();
  AsyncRuntime(const AsyncRuntime&) = delete;
  AsyncRuntime& operator=(const AsyncRuntime&) = delete;

  /// Start one inference. Takes the inputs (move them in to avoid a copy). Throws Error(kInvalidArgument) if
  /// the number or shapes of inputs do not match the model; never blocks on the device.
  [[nodiscard]] Task<Outputs> run(Inputs inputs);
  /// run({x}).
  [[nodiscard]] Task<Outputs> run(Tensor x);
  /// The same as run(), named for `Outputs y = co_await runtime.async_run(x);` (a Task is awaitable; the
  /// coroutine resumes on the completion thread, or inline if the result is already there).
  [[nodiscard]] Task<Outputs> async_run(Inputs inputs) { return run(std::move(inputs)); }
  [[nodiscard]] Task<Outputs> async_run(Tensor x) { return run(std::move(x)); }

  [[nodiscard]] const MatmulModel& model() const noexcept;
  /// The device this runtime uses.
  [[nodiscard]] const DeviceInfo& device_info() const noexcept;
  /// The options with defaults resolved (backend name, max_in_flight).
  [[nodiscard]] const RuntimeOptions& options() const noexcept;

 private:
  std::unique_ptr<RuntimeImpl> impl_;
};

}  // namespace vnpu
