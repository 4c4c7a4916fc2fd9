// SPDX-License-Identifier: MIT
/// \file
/// vnpu::AsyncRuntime: runs a model on one or several devices with several requests in flight, overlapping
/// host input preparation, H2D DMA, compute and D2H DMA across requests. vnpu::Runtime: the synchronous
/// one-request-at-a-time form. docs/runtime.md describes the semantics in full.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <vnpu/compiled_model.h>
#include <vnpu/device.h>
#include <vnpu/export.h>
#include <vnpu/model.h>
#include <vnpu/task.h>
#include <vnpu/tensor.h>

namespace vnpu {

/// How requests are spread over several devices.
enum class Placement {
  kLeastLoaded,  ///< the device with the most free request slots (ties: lowest index)
  kRoundRobin,   ///< devices in turn (skipping a device with no free slot)
};

/// How an AsyncRuntime is set up. Zero/empty fields take the documented defaults.
struct RuntimeOptions {
  /// "kernel", "sim", or empty: "kernel" if /dev/accel/accel<device> exists, else "sim".
  std::string backend;
  /// Device index (/dev/accel/accel<device> for the kernel backend; a label for sim).
  int device = 0;
  /// Several devices: requests are spread over them (see placement). Empty = {device}.
  std::vector<int> devices;
  /// How requests are spread over `devices`.
  Placement placement = Placement::kLeastLoaded;
  /// Input-preparation threads ("vnpu-prep<i>"), 1..16: copy/convert inputs into DMA staging buffers.
  int parallel = 1;
  /// Request slots per device, 1..256 (0 = derived from the model and the device: see DepthEstimate and
  /// AsyncRuntime::depth_estimate()): each holds the device memory of one request from its preparation to
  /// the end of its D2H. Requests beyond this wait in FIFO order (back-pressure: memory stays bounded
  /// however many run() calls are made).
  int max_in_flight = 0;
  /// Input staging buffers per device, 1..256 (0 = parallel + 2: one being filled per prep thread, one
  /// whose H2D is running, one spare to absorb jitter). A staging buffer is returned as soon as
  /// its request's H2D has finished (input consumed), not when the request finishes.
  int staging_buffers = 0;
  /// Longest time a request may take from run() to resolution (0 = no limit). An expired request resolves
  /// with Error(kTimeout); the device work it started still completes in the background.
  std::chrono::milliseconds timeout{0};
  /// Kernel backend submission path (io_uring or ioctl SUBMIT+WAIT).
  SubmitMode submit_mode = SubmitMode::kUring;
  /// Device queue priority 0..3, -1 = default.
  int priority = -1;
  /// Run on devices in timing-only mode: every stage is timed exactly as usual, but the device skips the
  /// arithmetic, so output values are undefined (for throughput studies of models too big to compute on
  /// the simulator's host). Backend "sim" creates its engine in that mode; backend "kernel" requires a
  /// device booted with the QEMU property timing-only=on. The constructor throws kUnsupported when a
  /// device's mode differs from this option (a timing-only device is never used by accident).
  bool timing_only = false;
  /// Requests that may wait for a slot, 1..65536 (0 = 4 × max_in_flight × number of devices). When that many
  /// are waiting, run() blocks until one starts (try_run() returns nullopt instead), so the memory held by
  /// waiting requests (their inputs) is bounded too. Exception: run() on the callback thread never blocks
  /// (that thread is what frees room); there it queues beyond the bound.
  int max_queued = 0;
  /// Run each request as two device jobs, [H2D] then [compute, D2H] chained by the completion thread, even
  /// where the device has the SIGNAL command (DeviceInfo::signals), which otherwise makes it one job
  /// [H2D, SIGNAL, compute, D2H]. For comparison and tests; devices without SIGNAL always use two.
  bool two_jobs = false;
  /// Where continuations run: every callback (Task::on_complete) and every coroutine resumption (co_await
  /// on a request's Task) is handed to this function as a closure to run, e.g. by posting it to the
  /// application's thread pool or event loop. It is called on the runtime's callback thread, must not
  /// block and must run each closure exactly once. Empty (the default): they run on the callback thread
  /// ("vnpu-callback"), where a slow one delays the resolution (not the device work) of later requests.
  std::function<void(std::function<void()>)> executor;
};

/// How the default request depth (RuntimeOptions::max_in_flight = 0) was chosen, after OpenVINO's
/// "optimal number of infer requests": enough requests in flight to cover one request's whole path through
/// the device (H2D + compute + D2H) at the pace of the slowest engine, plus one per prep thread being
/// prepared, bounded by what the device's memory holds. Stage times come from the device's timing model
/// (DeviceInfo bandwidths, latencies, per-command overhead, GFLOPS) and the model (bytes moved; SYNTH time,
/// MATMUL size). A compiled program's compute time is not known before it runs: it is then assumed to keep
/// every compute core exactly as busy as the busier DMA engine (the balanced case, which needs the most
/// requests in flight).
struct DepthEstimate {
  double h2d_ms = 0, compute_ms = 0, d2h_ms = 0;  ///< per request (compute: on one core)
  bool compute_known = false;                     ///< compute_ms from the model, not assumed
  uint32_t compute_cores = 1;
  double bottleneck_ms = 0;  ///< max(h2d, compute / cores, d2h)
  int pipeline_depth = 0;    ///< ceil((h2d + compute + d2h) / bottleneck) + parallel
  int memory_limit = 0;      ///< slots the device memory holds next to the model's shared bytes (>= 1)
  int chosen = 0;            ///< the default: max(2, pipeline_depth), at most memory_limit and 256
  bool used = false;         ///< max_in_flight was 0, so `chosen` is in effect
};

/// Where one request spent its time. Host times on std::chrono::steady_clock (CLOCK_MONOTONIC).
struct RequestTimings {
  using Clock = std::chrono::steady_clock;
  Clock::time_point enqueued;    ///< run() accepted the request
  Clock::time_point prep_start;  ///< a prep thread picked it up (after waiting for a slot and a staging buffer)
  Clock::time_point prep_end;    ///< inputs copied into the staging buffer
  Clock::time_point submitted;   ///< the H2D job was handed to the device
  Clock::time_point completed;   ///< the completion thread saw the compute+D2H job finish
  Clock::time_point resolved;    ///< outputs copied out; task about to resolve
  int device_index = 0;          ///< index into RuntimeOptions::devices of the device that ran it
  int prep_thread = 0;           ///< which prep thread ("vnpu-prep<i>") prepared it
  /// Device clock (ns): start and end of the H2D job and of the compute+D2H job, when the backend reports
  /// them (DeviceInfo::timestamps).
  std::optional<uint64_t> h2d_start_ns, h2d_end_ns, exec_start_ns, exec_end_ns;
  /// Device clock (ns) at the request's first device activity / its end (= h2d_start_ns / exec_end_ns).
  std::optional<uint64_t> device_start_ns, device_end_ns;
  /// Modelled busy time on each engine (ns), 0 when not reported.
  uint64_t h2d_ns = 0, compute_ns = 0, d2h_ns = 0;
  /// Bytes the host copied for this request: inputs copied into the staging buffer (those the device could
  /// not DMA from in place) plus outputs copied into caller-provided tensors it could not DMA into. 0 when
  /// every input and output went straight between the caller's memory (or a prepare callback's writes) and
  /// the device.
  uint64_t host_bytes_copied = 0;
  /// The device had read the inputs (the H2D finished, or the job's SIGNAL was reached): the completion
  /// thread saw it, and staging and borrowed inputs were free from then on.
  Clock::time_point input_consumed;
  /// Device jobs the request ran as: 1 ([H2D, SIGNAL, compute, D2H]) or 2 ([H2D], then [compute, D2H]).
  /// In the one-job form h2d_end_ns is the SIGNAL's time and exec_start_ns = h2d_end_ns.
  int device_jobs = 0;

  [[nodiscard]] Clock::duration prep() const { return prep_end - prep_start; }
  [[nodiscard]] Clock::duration total() const { return resolved - enqueued; }
  /// Device time from the start of its H2D to the end of its D2H, if timestamps are available.
  [[nodiscard]] std::optional<std::chrono::nanoseconds> device() const {
    if (!device_start_ns || !device_end_ns)
      return std::nullopt;
    return std::chrono::nanoseconds(*device_end_ns - *device_start_ns);
  }
};

/// Model inputs, in the model's input order.
using Inputs = std::vector<Tensor>;

/// A request's input preparation, run by AsyncRuntime::run(PrepareFn) on a prep thread ("vnpu-prep<i>"):
/// `inputs` are writable views (the model's input shapes, in its input order) of the request's DMA staging
/// buffer, which the device reads from directly. The function must write every element: the buffer is not
/// cleared and holds an earlier request's data. The views are valid only during the call. An exception it
/// throws fails the request with that exception (rethrown by wait()/co_await); the runtime goes on.
using PrepareFn = std::function<void(std::span<Tensor> inputs)>;

/// The result of one request: output tensors in the model's output order, plus its timings.
struct Outputs {
  std::vector<Tensor> tensors;
  std::vector<std::string> names;  ///< the model's output names, same order
  RequestTimings timings;
  Tensor& operator[](size_t i) { return tensors.at(i); }
  const Tensor& operator[](size_t i) const { return tensors.at(i); }
  /// The output called `name`; throws Error(kNotFound).
  [[nodiscard]] VNPU_API const Tensor& at(std::string_view name) const;
};

class RuntimeImpl;

/// Runs one model asynchronously.
///
/// Pipeline of a request: run() checks the inputs and queues the request → a prep thread (one of
/// `parallel`) takes a device with a free request slot (and a staging buffer if it needs one), imports the
/// inputs' own memory for DMA where the device can (DeviceInfo::host_import) and copies the others into the
/// staging buffer — or runs the request's PrepareFn, which writes into the staging buffer — and takes an
/// output buffer → job 1 [H2D inputs→device] is submitted → when job 1 completes (input consumed), the
/// device's completion thread returns the staging buffer, lets go of the inputs and submits job 2 [compute,
/// D2H device→output buffer or the caller's output tensors] → when job 2 completes, the callback thread
/// ("vnpu-callback") frees the slot and resolves the Task with views of the output buffer (nothing copied). Request
/// N+1's H2D overlaps request N's compute (each slot has its own device buffers); weights and program are uploaded once
/// per device.
///
/// Threads: run() may be called from any thread, including from callbacks and coroutines this runtime
/// resumes; it never blocks on the device. Callbacks (Task::on_complete) run, and coroutines awaiting a
/// Task resume, on the runtime's callback thread — never on a device completion thread — or inline when the
/// task had already resolved. Code there should be short. A blocking wait there on an unresolved Task of
/// this runtime (Task::wait(), sync_wait(), also of a coroutine suspended on one) could never end: it throws
/// Error(kInvalidArgument) at once instead. Destroying the runtime there works as anywhere else (the
/// destructor does the callback thread's remaining work itself, running the callbacks it drains inline).
/// Ordering: requests start preparation in run() order (FIFO queue, FIFO wake-ups). Completion order is
/// not guaranteed (parallel > 1, several devices, several compute cores or a failure reorder them); pair
/// results with requests through their Tasks, never by arrival order.
/// Errors: invalid inputs throw vnpu::Error(kInvalidArgument) from run() at once; device faults (bad program,
/// MMU fault: kDeviceFault), timeouts (kTimeout) and cancellation (kCancelled) resolve the Task with a
/// vnpu::Error, rethrown by wait()/co_await. A failed request does not affect others.
/// Destruction: requests not yet prepared resolve with kCancelled; requests already on a device run to
/// completion and resolve normally (bounded by the device); then the threads stop. Tasks stay valid;
/// Task::cancel() racing the destructor is safe (it returns false once destruction has begun).
/// Timeouts and cancellation resolve a request at once, except while a prep thread reads its inputs: then
/// as soon as it has finished with them, so borrowed inputs may be freed as soon as the task resolves.
class VNPU_API AsyncRuntime {
 public:
  /// Opens the device(s), uploads weights and program once per device, allocates the request slots and
  /// starts the threads. Throws vnpu::Error: kInvalidArgument (options out of range), kNotFound (backend or
  /// device missing), kUnsupported (the device lacks EXEC/SYNTH for this model), kOutOfMemory (device memory
  /// too small for the model and max_in_flight slots), kDeviceFault (upload failed).
  explicit AsyncRuntime(CompiledModel model, RuntimeOptions options = {});
  /// The v0 matmul model (CompiledModel::from_matmul).
  explicit AsyncRuntime(const MatmulModel& model, RuntimeOptions options = {});
  ~AsyncRuntime();
  AsyncRuntime(const AsyncRuntime&) = delete;
  AsyncRuntime& operator=(const AsyncRuntime&) = delete;

  /// Start one inference. Owned input tensors are moved in; borrowed ones are read in place (keep them alive
  /// and unmodified until the task resolves). Either is DMA'd straight from its memory when the device can
  /// import it (sim: always; see docs/runtime.md), else copied once into a staging buffer on a prep thread
  /// (RequestTimings::host_bytes_copied counts it). The outputs are leased views of the buffer the device
  /// wrote (Tensor::view): writable, valid as long as any copy of them lives — even after the runtime is
  /// gone — and the buffer returns to the runtime's pool when the last is dropped (hold many results, and
  /// the runtime allocates more). Throws Error(kInvalidArgument) if the number, shapes or
  /// dtypes of the inputs do not match the model, kAborted if the runtime is shutting down. Never blocks on
  /// the device; blocks while RuntimeOptions::max_queued requests wait for a slot (not on the callback
  /// thread).
  [[nodiscard]] Task<Outputs> run(Inputs inputs);
  /// run() that never blocks: nullopt (the inputs are dropped) if max_queued requests are already waiting.
  [[nodiscard]] std::optional<Task<Outputs>> try_run(Inputs inputs);
  /// try_run({x}).
  [[nodiscard]] std::optional<Task<Outputs>> try_run(Tensor x);
  /// run() that writes the results into `outputs` (one per model output, matching shape and dtype,
  /// typically borrowed views of caller memory) instead of allocating new tensors; Outputs::tensors holds
  /// the same views. The device DMAs into them directly where it can import them (else they are copied on
  /// the callback thread); so a cancel or timeout resolves such a request only once the device has stopped
  /// writing them.
  [[nodiscard]] Task<Outputs> run(Inputs inputs, std::vector<Tensor> outputs);
  /// run({x}).
  [[nodiscard]] Task<Outputs> run(Tensor x);
  /// Start one inference whose inputs `prepare` writes straight into the DMA staging buffer, on a prep
  /// thread (see PrepareFn): the user's own preprocessing (decode, resize, normalise) runs on the `parallel`
  /// prep threads while the device computes earlier requests, and nothing is copied after it. `prepare` is
  /// destroyed on a runtime thread once it has run (or the request is dropped unstarted). Otherwise as run().
  [[nodiscard]] Task<Outputs> run(PrepareFn prepare);
  /// run(prepare) that writes the results into `outputs` as run(inputs, outputs) does.
  [[nodiscard]] Task<Outputs> run(PrepareFn prepare, std::vector<Tensor> outputs);
  /// run(prepare) that never blocks (see try_run(Inputs)).
  [[nodiscard]] std::optional<Task<Outputs>> try_run(PrepareFn prepare);
  /// The same as run(), named for `Outputs y = co_await runtime.async_run(x);`.
  [[nodiscard]] Task<Outputs> async_run(Inputs inputs) { return run(std::move(inputs)); }
  [[nodiscard]] Task<Outputs> async_run(Tensor x) { return run(std::move(x)); }

  [[nodiscard]] const CompiledModel& model() const noexcept;
  /// The first device.
  [[nodiscard]] const DeviceInfo& device_info() const noexcept;
  /// Every device, in RuntimeOptions::devices order.
  [[nodiscard]] std::vector<DeviceInfo> devices_info() const;
  /// The options with defaults resolved (backend name, devices, max_in_flight, staging_buffers).
  [[nodiscard]] const RuntimeOptions& options() const noexcept;
  /// Device clock of device `i` minus steady_clock, in ns, sampled at start-up (for placing device
  /// timestamps on the host timeline; 0 for the sim backend, whose device clock is CLOCK_MONOTONIC).
  [[nodiscard]] int64_t device_clock_offset_ns(size_t i) const;
  /// Host memory this runtime holds for DMA, bytes: staging buffers plus output buffers (pooled, max_in_flight per
  /// device, plus those whose leased outputs the user still holds).
  [[nodiscard]] uint64_t host_dma_bytes() const noexcept;
  /// How the default max_in_flight was (or would have been) chosen, for the first device.
  [[nodiscard]] const DepthEstimate& depth_estimate() const noexcept;
  /// Requests accepted by run() that still hold, or wait for, device resources (queued, in preparation, on a
  /// device, or resolved early while the device finishes their work). Thread-safe; a snapshot.
  [[nodiscard]] size_t in_flight() const;
  /// Block until in_flight() is 0 and the resolutions of the requests that retired have run (requests
  /// run() meanwhile are waited for too). Continuations handed to RuntimeOptions::executor may still be
  /// pending. Throws Error(kInvalidArgument) on the callback thread, where it could never return.
  void wait_all();
  /// Requests whose RuntimeOptions::timeout is armed. A request disarms it when it retires, so this stays
  /// at most in_flight(), however high the request rate or long the timeout. Thread-safe; a snapshot.
  [[nodiscard]] size_t timeouts_armed() const;

 private:
  std::unique_ptr<RuntimeImpl> impl_;
};

/// The synchronous runtime: one request at a time (max_in_flight = 1, parallel = 1), run() returns the
/// outputs. Same devices, errors and timeout as AsyncRuntime. Thread-safe (calls are serialised).
class VNPU_API Runtime {
 public:
  /// As AsyncRuntime's constructor; parallel and max_in_flight of `options` are ignored.
  explicit Runtime(CompiledModel model, RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  /// Run one inference and return its outputs; throws vnpu::Error as AsyncRuntime's Task would.
  Outputs run(Inputs inputs);
  Outputs run(Tensor x);
  [[nodiscard]] const CompiledModel& model() const noexcept;
  [[nodiscard]] const DeviceInfo& device_info() const noexcept;

 private:
  std::unique_ptr<AsyncRuntime> rt_;
};

}  // namespace vnpu
