// SPDX-License-Identifier: MIT
// AsyncRuntime: prep threads → H2D job → (completion thread) compute+D2H job → callback thread → Task.
// docs/runtime.md describes the pipeline and its guarantees; the comments here say why it is built this way.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <vnpu/async_runtime.h>

#include "internal.h"
#include "model_data.h"
#include "vnpu_hw.h"

namespace vnpu {

namespace {
constexpr uint64_t kRegionAlign = 256;  // regions of a staging/output buffer start on their own cache lines
constexpr auto kDrainLimit = std::chrono::seconds(60);
using Clock = RequestTimings::Clock;

Error annotate(const Error& e, const std::string& what) {
  return Error(e.code(), what + ": " + e.what());
}
}  // namespace

class RuntimeImpl {
 public:
  RuntimeImpl(CompiledModel model, RuntimeOptions options);
  ~RuntimeImpl();
  // block = false: nullopt instead of waiting for room in the queue.
  std::optional<Task<Outputs>> run(Inputs inputs, PrepareFn prepare, std::vector<Tensor>* outputs, bool block = true);
  void wait_all();

  CompiledModel model_;
  const detail::ModelData& md_;
  RuntimeOptions options_;

  // The D2H buffers of a device (every output binding, at out_off_). A request takes one when it starts and
  // hands it to its output tensors as a lease: the buffer comes back when the user drops the last of them,
  // so the runtime never copies outputs. Shared with the leases, which may outlive the runtime.
  struct OutPool {
    std::mutex mu;
    std::vector<HostBuffer> idle;
    size_t keep = 0;                 // idle buffers kept; more are freed (the user held many outputs)
    std::atomic<uint64_t> bytes{0};  // allocated and not yet freed
    uint64_t buffer_bytes = 0;
  };
  struct OutLease {
    HostBuffer buf;
    std::shared_ptr<OutPool> pool;
    OutLease(HostBuffer b, std::shared_ptr<OutPool> p) : buf(std::move(b)), pool(std::move(p)) {}
    OutLease(const OutLease&) = delete;
    OutLease& operator=(const OutLease&) = delete;
    ~OutLease() {
      {
        std::lock_guard lock(pool->mu);
        if (pool->idle.size() < pool->keep) {
          pool->idle.push_back(std::move(buf));
          return;
        }
      }
      pool->bytes -= pool->buffer_bytes;  // buf is freed on return, outside the lock
    }
  };
  // One device and everything the runtime keeps on it.
  struct Slot {
    std::vector<DeviceBuffer> bufs;  // per binding (empty for the weights binding)
    DeviceBuffer table;              // the EXEC binding table (u64 device VAs)
  };
  struct DeviceCtx {
    std::unique_ptr<Device> dev;
    DeviceBuffer weights, program;
    std::vector<Slot> slots;
    std::vector<int> free_slots;
    std::vector<HostBuffer> staging;  // H2D source: every input binding, at in_off_
    std::vector<int> free_staging;
    std::shared_ptr<OutPool> outs = std::make_shared<OutPool>();
    int64_t clock_offset_ns = 0;
  };
  std::vector<DeviceCtx> devs_;
  DepthEstimate depth_;
  uint64_t staging_dma_bytes_ = 0;
  uint64_t host_dma_bytes() const {
    uint64_t b = staging_dma_bytes_;
    for (const auto& dc : devs_)
      b += dc.outs->bytes.load();
    return b;
  }

 private:
  enum class Phase { kQueued, kPrep, kDevice, kDone };
  struct Request;
  using DeadlineMap = std::multimap<Clock::time_point, std::weak_ptr<Request>>;
  struct Request {
    Inputs inputs;
    PrepareFn prepare;                    // run(PrepareFn): writes the inputs into the staging buffer
    std::vector<Tensor> outs;             // caller-provided outputs (run with outputs)
    std::vector<HostBuffer> in_imports;   // per input: the tensor's own memory, imported (else copied)
    std::vector<HostBuffer> out_imports;  // per caller-provided output: its memory, imported (else copied)
    std::vector<bool> out_imported;       // which caller-provided outputs the device writes directly
    std::shared_ptr<OutLease> lease;      // the D2H buffer, when an output is not imported
    // The device or a prep thread uses the caller's memory: reads the inputs (prep, or the H2D of imported
    // inputs), writes imported outputs (the compute job). An early resolution waits for both to end, so the
    // caller may free that memory once the task resolves. Guarded by mu_.
    bool reading_inputs = false, writing_outputs = false;
    std::shared_ptr<detail::TaskState<Outputs>> state;
    RequestTimings t;
    int dev = -1, slot = -1, staging = -1;
    Phase phase = Phase::kQueued;  // guarded by mu_
    // Resolved early (cancel, timeout) or about to be: start no more device work, drop the outputs. Set
    // under mu_ (read without it where a stale false only costs device work whose result is dropped).
    std::atomic<bool> cancelled{false};
    std::optional<Error> deferred;               // guarded by mu_: the early resolution prepare() owes
    std::optional<DeadlineMap::iterator> armed;  // guarded by cb_mu_: its entry in deadlines_
  };
  using RequestPtr = std::shared_ptr<Request>;
  // What the cancel hook of a Task reaches the runtime through: Tasks outlive the runtime, so the
  // destructor cuts the link (under mu) before anything is torn down.
  struct CancelGate {
    std::mutex mu;
    RuntimeImpl* rt = nullptr;
  };
  enum class Early { kNo, kNow, kDeferred };

  void setup_device(int index);
  DepthEstimate estimate_depth(const DeviceInfo& inf) const;
  Status upload(Device& dev, const DeviceBuffer& dst, const void* data, size_t bytes);
  int pick_device_locked(bool need_staging);
  // Requests taken from the queue and not yet retired: those holding a slot, and those done on the device
  // whose slot is free again but which the callback thread has not resolved yet. Twice the slots: the
  // device runs ahead of a slow callback thread by at most max_in_flight requests per device, then slow
  // callbacks exert back-pressure again (each such request holds a D2H buffer).
  size_t held_limit() const { return 2 * static_cast<size_t>(options_.max_in_flight) * devs_.size(); }
  bool needs_staging(const Request& req) const;
  std::optional<Error> caller_memory_released(const RequestPtr& req, bool inputs, bool outputs);
  void prep_loop(int index);
  void prepare(const RequestPtr& req);
  Job h2d_job(const RequestPtr& req);
  Job exec_job(const RequestPtr& req);
  void on_h2d_done(const RequestPtr& req, JobResult r);
  bool one_job(const DeviceInfo& inf) const;
  void on_input_consumed(const RequestPtr& req, std::optional<uint64_t> t_ns);
  void on_exec_done(const RequestPtr& req, JobResult r);
  void finish(const RequestPtr& req, JobResult r, std::optional<Error> deferred);
  void fail(const RequestPtr& req, Error e);
  void release_staging(const RequestPtr& req);
  void free_slot(const RequestPtr& req);
  bool give_back_locked(Request& req, int Request::*index, std::vector<int> DeviceCtx::*free_list);
  void retire(const RequestPtr& req);
  bool cancel(const std::weak_ptr<Request>& weak);
  Early abandon(const RequestPtr& req, const Error& e);
  void disarm(const RequestPtr& req);
  void post(std::function<void()> fn);
  void callback_loop();
  bool expire_due(std::unique_lock<std::mutex>& lock);
  void pump_until(const std::function<bool()>& done, Clock::duration limit);
  [[nodiscard]] bool on_callback_thread() const noexcept { return detail::this_thread_executor() == this; }

  std::vector<uint64_t> in_off_, out_off_;  // per binding: offset in the staging / output buffer
  // Every input (output) binding is exactly one input (output) tensor, so the DMA of a binding is the DMA of
  // a tensor: the tensor's memory can be imported. Not so for synthetic models (their bindings are bigger
  // than their f32[1] tensors, to move a chosen number of bytes).
  bool inputs_importable_ = true, outputs_importable_ = true;
  uint64_t staging_bytes_ = 0, out_bytes_ = 0;

  std::mutex mu_;                     // queue_, free lists, phases, active_, stopping_, rr_
  std::condition_variable work_cv_;   // prep threads: a request and a device with room, or stopping
  std::condition_variable drain_cv_;  // destructor, wait_all(): active_ reached 0
  std::condition_variable room_cv_;   // run(): the queue has room (below max_queued), or stopping
  std::deque<RequestPtr> queue_;
  size_t active_ = 0;  // accepted by run() and not retired: queued, or taken by a prep thread (held)
  bool stopping_ = false;
  std::atomic<bool> closing_devices_{false};
  size_t rr_ = 0;
  std::vector<std::thread> prep_threads_;

  // The callback thread: runs posted work (output copies, resolutions, callbacks, resumed coroutines) in
  // order, and expires requests whose timeout passed.
  std::mutex cb_mu_;
  std::condition_variable cb_cv_;
  std::deque<std::function<void()>> cb_queue_;
  DeadlineMap deadlines_;  // one entry per request whose timeout is armed (disarmed when it retires)
  bool cb_stop_ = false;
  std::thread cb_thread_;
  std::shared_ptr<CancelGate> gate_ = std::make_shared<CancelGate>();

 public:
  size_t in_flight() {
    std::lock_guard lock(mu_);
    return active_;
  }
  size_t timeouts_armed() {
    std::lock_guard lock(cb_mu_);
    return deadlines_.size();
  }
};

RuntimeImpl::RuntimeImpl(CompiledModel model, RuntimeOptions options)
    : model_(std::move(model)), md_(model_.data()), options_(std::move(options)) {
  gate_->rt = this;
  if (options_.parallel < 1 || options_.parallel > 16)
    throw Error(ErrorCode::kInvalidArgument,
                "parallel = " + std::to_string(options_.parallel) + " is out of range; use 1..16");
  if (options_.max_in_flight < 0 || options_.max_in_flight > 256)
    throw Error(ErrorCode::kInvalidArgument, "max_in_flight = " + std::to_string(options_.max_in_flight) +
                                                 " is out of range; use 1..256 (or 0 for the default)");
  if (options_.staging_buffers < 0 || options_.staging_buffers > 256)
    throw Error(ErrorCode::kInvalidArgument, "staging_buffers = " + std::to_string(options_.staging_buffers) +
                                                 " is out of range; use 1..256 (or 0 for the default)");
  if (options_.timeout.count() < 0)
    throw Error(ErrorCode::kInvalidArgument, "timeout must not be negative");
  if (options_.staging_buffers == 0)
    options_.staging_buffers = options_.parallel + 2;
  if (options_.max_queued < 0 || options_.max_queued > 65536)
    throw Error(ErrorCode::kInvalidArgument, "max_queued = " + std::to_string(options_.max_queued) +
                                                 " is out of range; use 1..65536 (or 0 for the default)");
  if (options_.devices.empty())
    options_.devices = {options_.device};
  if (options_.devices.size() > 64)
    throw Error(ErrorCode::kInvalidArgument, "at most 64 devices");
  for (size_t i = 0; i < options_.devices.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (options_.devices[i] == options_.devices[j])
        throw Error(ErrorCode::kInvalidArgument, "device " + std::to_string(options_.devices[i]) + " is listed twice");
  options_.device = options_.devices.front();
  if (options_.backend.empty())
    options_.backend = Device::default_backend(options_.device);

  // Layout of the staging (inputs) and output host buffers: one region per binding.
  in_off_.assign(md_.bindings.size(), 0);
  out_off_.assign(md_.bindings.size(), 0);
  for (size_t b = 0; b < md_.bindings.size(); ++b) {
    if (md_.bindings[b].kind == detail::SlotKind::kInput) {
      in_off_[b] = staging_bytes_;
      staging_bytes_ = detail::round_up(staging_bytes_ + md_.bindings[b].size, kRegionAlign);
    } else if (md_.bindings[b].kind == detail::SlotKind::kOutput) {
      out_off_[b] = out_bytes_;
      out_bytes_ = detail::round_up(out_bytes_ + md_.bindings[b].size, kRegionAlign);
    }
  }
  staging_bytes_ = std::max<uint64_t>(staging_bytes_, 64);
  auto one_tensor_each = [&](const std::vector<detail::IoPlace>& places, const std::vector<TensorInfo>& infos,
                             detail::SlotKind kind) {
    std::vector<int> count(md_.bindings.size(), 0);
    for (size_t i = 0; i < places.size(); ++i) {
      const auto b = places[i].binding;
      if (places[i].offset != 0 || infos[i].size_bytes != md_.bindings[b].size || ++count[b] > 1)
        return false;
    }
    for (size_t b = 0; b < md_.bindings.size(); ++b)
      if (md_.bindings[b].kind == kind && count[b] != 1)
        return false;
    return true;
  };
  inputs_importable_ = one_tensor_each(md_.input_places, md_.inputs, detail::SlotKind::kInput);
  outputs_importable_ = one_tensor_each(md_.output_places, md_.outputs, detail::SlotKind::kOutput);
  out_bytes_ = std::max<uint64_t>(out_bytes_, 64);

  cb_thread_ = std::thread([this] { callback_loop(); });
  try {
    devs_.resize(options_.devices.size());
    for (size_t i = 0; i < devs_.size(); ++i)
      setup_device(static_cast<int>(i));
  } catch (...) {
    closing_devices_ = true;
    devs_.clear();
    {
      std::lock_guard lock(cb_mu_);
      cb_stop_ = true;
    }
    cb_cv_.notify_all();
    cb_thread_.join();
    throw;
  }
  if (options_.max_queued == 0)
    options_.max_queued = 4 * options_.max_in_flight * static_cast<int>(options_.devices.size());
  for (int i = 0; i < options_.parallel; ++i)
    prep_threads_.emplace_back([this, i] { prep_loop(i); });
}

DepthEstimate RuntimeImpl::estimate_depth(const DeviceInfo& inf) const {
  DepthEstimate e;
  auto dma_ms = [&](uint64_t bytes, uint32_t mbps, uint32_t latency_ns) {
    if (bytes == 0)
      return 0.0;
    const double xfer = mbps ? static_cast<double>(bytes) / (static_cast<double>(mbps) * 1e3) : 0.0;
    return xfer + (latency_ns + inf.cmd_overhead_ns) / 1e6;
  };
  uint64_t in = 0, out = 0;
  for (const auto& t : md_.inputs)
    in += t.size_bytes;
  for (const auto& t : md_.outputs)
    out += t.size_bytes;
  if (md_.compute == detail::ComputeKind::kSynth) {  // synthetic models move whole bindings
    in = out = 0;
    for (const auto& b : md_.bindings) {
      if (b.kind == detail::SlotKind::kInput)
        in += b.size;
      else if (b.kind == detail::SlotKind::kOutput)
        out += b.size;
    }
  }
  e.h2d_ms = dma_ms(in, inf.h2d_mbps, inf.h2d_latency_ns);
  e.d2h_ms = dma_ms(out, inf.d2h_mbps, inf.d2h_latency_ns);
  e.compute_cores = std::max(1u, inf.compute_cores);
  const double cores = e.compute_cores;
  switch (md_.compute) {
    case detail::ComputeKind::kSynth:
      e.compute_ms = static_cast<double>(md_.synth_ns) / 1e6 + inf.cmd_overhead_ns / 1e6;
      e.compute_known = true;
      break;
    case detail::ComputeKind::kMatmul:
      if (inf.compute_gflops) {
        e.compute_ms = 2.0 * md_.m * md_.n * md_.k / (inf.compute_gflops * 1e6) + inf.cmd_overhead_ns / 1e6;
        e.compute_known = true;
      }
      break;
    case detail::ComputeKind::kExec: break;
  }
  if (!e.compute_known)
    e.compute_ms = cores * std::max({e.h2d_ms, e.d2h_ms, 1e-3});
  e.bottleneck_ms = std::max({e.h2d_ms, e.compute_ms / cores, e.d2h_ms, 1e-6});
  const double path = e.h2d_ms + e.compute_ms + e.d2h_ms;
  e.pipeline_depth = static_cast<int>(std::min(256.0, std::ceil(path / e.bottleneck_ms - 1e-9))) + options_.parallel;
  // Device memory: every slot's bindings and binding table, page-rounded as the device allocates them.
  const uint64_t page = std::max<uint64_t>(inf.mmu_page_size, 1);
  uint64_t per = 0, shared = detail::round_up(std::max<uint64_t>(md_.program.size(), 1), page);
  for (const auto& b : md_.bindings)
    (b.kind == detail::SlotKind::kWeights ? shared : per) += detail::round_up(std::max<uint64_t>(b.size, 1), page);
  if (md_.compute == detail::ComputeKind::kExec)
    per += detail::round_up(8 * md_.bindings.size(), page);
  e.memory_limit =
      inf.devmem_size > shared
          ? static_cast<int>(std::min<uint64_t>(256, (inf.devmem_size - shared) / std::max<uint64_t>(per, 1)))
          : 0;
  e.memory_limit = std::max(1, e.memory_limit);
  e.chosen = std::clamp(std::max(2, e.pipeline_depth), 1, std::min(256, e.memory_limit));
  return e;
}

Status RuntimeImpl::upload(Device& dev, const DeviceBuffer& dst, const void* data, size_t bytes) {
  auto staging = dev.alloc_host(bytes);
  if (!staging)
    return std::move(staging).error();
  std::memcpy(staging->data(), data, bytes);
  Job job{{Command::copy_to_device(*staging, 0, dst, 0, bytes)}};
  auto r = dev.run(std::move(job));
  if (!r)
    return std::move(r).error();
  return std::move(r->status);
}

void RuntimeImpl::setup_device(int index) {
  DeviceCtx& dc = devs_[static_cast<size_t>(index)];
  const int id = options_.devices[static_cast<size_t>(index)];
  dc.dev =
      Device::open(DeviceOptions{options_.backend, id, options_.submit_mode, options_.priority, options_.timing_only})
          .value();
  Device& dev = *dc.dev;
  const DeviceInfo& inf = dev.info();
  if (index == 0) {
    depth_ = estimate_depth(inf);
    depth_.used = options_.max_in_flight == 0;
    if (depth_.used)
      options_.max_in_flight = depth_.chosen;
  }
  if (md_.compute == detail::ComputeKind::kExec && !(inf.caps & VNPU_CAP_EXEC))
    throw Error(ErrorCode::kUnsupported, inf.name + " cannot run programs (no EXEC capability); update the device");
  if (md_.compute == detail::ComputeKind::kSynth && !(inf.caps & VNPU_CAP_SYNTH))
    throw Error(ErrorCode::kUnsupported, inf.name + " has no SYNTH command; update the device");

  auto oom_hint = [&](Error e) {
    if (e.code() != ErrorCode::kOutOfMemory)
      return e;
    return Error(ErrorCode::kOutOfMemory,
                 std::string(e.what()) + ". The model needs " + std::to_string(model_.device_bytes_shared()) +
                     " bytes shared plus " + std::to_string(model_.device_bytes_per_request()) +
                     " bytes per in-flight request (max_in_flight = " + std::to_string(options_.max_in_flight) +
                     "): lower max_in_flight");
  };
  auto take = [&](auto r) {
    if (!r)
      throw oom_hint(std::move(r).error());
    return std::move(*r);
  };

  if (auto ts = dev.clock_ns(); ts && inf.backend != "sim") {
    const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    dc.clock_offset_ns = static_cast<int64_t>(*ts) - now;
  }

  // Weights and program once per device, through temporary staging buffers.
  std::optional<uint32_t> weights_binding;
  for (size_t b = 0; b < md_.bindings.size(); ++b)
    if (md_.bindings[b].kind == detail::SlotKind::kWeights)
      weights_binding = static_cast<uint32_t>(b);
  if (weights_binding) {
    dc.weights = take(dev.alloc_device(std::max<uint64_t>(md_.bindings[*weights_binding].size, 1)));
    if (!md_.weights.empty())
      if (auto s = upload(dev, dc.weights, md_.weights.data(), md_.weights.size()); !s)
        throw annotate(s.error(), "uploading the weights to " + inf.name);
  }
  if (md_.compute == detail::ComputeKind::kExec) {
    dc.program = take(dev.alloc_device(md_.program.size()));
    if (auto s = upload(dev, dc.program, md_.program.data(), md_.program.size()); !s)
      throw annotate(s.error(), "uploading the program to " + inf.name);
  }
  dc.outs->keep = static_cast<size_t>(options_.max_in_flight);
  dc.outs->buffer_bytes = out_bytes_;
  for (int i = 0; i < options_.max_in_flight; ++i) {
    Slot slot;
    std::vector<uint64_t> table(md_.bindings.size(), 0);
    for (size_t b = 0; b < md_.bindings.size(); ++b) {
      if (md_.bindings[b].kind == detail::SlotKind::kWeights) {
        slot.bufs.emplace_back();
        table[b] = dc.weights.device_address();
      } else {
        slot.bufs.push_back(take(dev.alloc_device(std::max<uint64_t>(md_.bindings[b].size, 1))));
        table[b] = slot.bufs.back().device_address();
      }
    }
    if (md_.compute == detail::ComputeKind::kExec) {
      slot.table = take(dev.alloc_device(table.size() * 8));
      if (auto s = upload(dev, slot.table, table.data(), table.size() * 8); !s)
        throw annotate(s.error(), "uploading a binding table to " + inf.name);
    }
    dc.outs->idle.push_back(take(dev.alloc_host(out_bytes_)));
    dc.outs->bytes += out_bytes_;
    dc.slots.push_back(std::move(slot));
    dc.free_slots.push_back(i);
  }
  for (int i = 0; i < options_.staging_buffers; ++i) {
    dc.staging.push_back(take(dev.alloc_host(staging_bytes_)));
    staging_dma_bytes_ += staging_bytes_;
    dc.free_staging.push_back(i);
  }
  // Hand out low indices first (easier to read in traces).
  std::reverse(dc.free_slots.begin(), dc.free_slots.end());
  std::reverse(dc.free_staging.begin(), dc.free_staging.end());
}

RuntimeImpl::~RuntimeImpl() {
  {
    std::lock_guard lock(gate_->mu);  // waits for a cancel() in progress; later ones return false
    gate_->rt = nullptr;
  }
  // Destroyed from a callback or a coroutine this runtime resumed: this thread is the callback thread, so it
  // cannot wait for it. It does the callback thread's work itself while it drains, then lets the thread go.
  const bool on_cb = on_callback_thread();
  std::deque<RequestPtr> cancelled;
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    room_cv_.notify_all();
    cancelled.swap(queue_);
    active_ -= cancelled.size();
    for (auto& r : cancelled) {
      r->phase = Phase::kDone;
      r->cancelled = true;
    }
    work_cv_.notify_all();
  }
  for (auto& r : cancelled) {
    disarm(r);
    post([r] {
      r->state->set_error(std::make_exception_ptr(
          Error(ErrorCode::kCancelled, "the runtime was destroyed before the request started")));
    });
  }
  cancelled.clear();
  for (auto& t : prep_threads_)
    t.join();
  // Drain what is on the devices. Devices bound how long a job takes; a hung one is aborted below.
  if (on_cb) {
    pump_until(
        [&] {
          std::lock_guard lock(mu_);
          return active_ == 0;
        },
        kDrainLimit);
  } else {
    std::unique_lock lock(mu_);
    drain_cv_.wait_for(lock, kDrainLimit, [&] { return active_ == 0; });
  }
  // Device destructors abort whatever is left; their callbacks post to the callback thread, still running.
  closing_devices_ = true;
  for (auto& dc : devs_)
    dc.dev.reset();
  if (on_cb) {
    pump_until([] { return true; }, kDrainLimit);  // what the device destructors posted
    detail::set_this_thread_executor(nullptr);     // callback_loop returns without touching *this
    cb_thread_.detach();
    return;
  }
  {
    std::lock_guard lock(cb_mu_);
    cb_stop_ = true;
  }
  cb_cv_.notify_all();
  cb_thread_.join();
}

void RuntimeImpl::post(std::function<void()> fn) {
  {
    std::lock_guard lock(cb_mu_);
    cb_queue_.push_back(std::move(fn));
  }
  cb_cv_.notify_one();
}

void RuntimeImpl::callback_loop() {
  pthread_setname_np(pthread_self(), "vnpu-callback");
  detail::set_this_thread_executor(this);
  std::unique_lock lock(cb_mu_);
  for (;;) {
    // Deadlines first, before every item: a busy queue must not hold back a timeout.
    if (!expire_due(lock))
      return;  // a callback destroyed the runtime
    if (!cb_queue_.empty()) {
      auto fn = std::move(cb_queue_.front());
      cb_queue_.pop_front();
      lock.unlock();
      fn();
      fn = nullptr;
      if (!on_callback_thread())
        return;  // fn destroyed the runtime (the destructor did the rest of our work): *this is gone
      lock.lock();
      continue;
    }
    if (cb_stop_)
      return;
    if (deadlines_.empty()) {
      cb_cv_.wait(lock);
    } else {
      // A copy: wait_until() reads its deadline again after waking, and a cancel() meanwhile erases the
      // entry (heap-use-after-free under ASan when the reference into the map was passed).
      const Clock::time_point next = deadlines_.begin()->first;
      cb_cv_.wait_until(lock, next);
    }
  }
}

// Callback thread, cb_mu_ held (released while a request is resolved): expire overdue requests. False if
// resolving one ran user code that destroyed the runtime (then *this is gone and the lock is not held).
bool RuntimeImpl::expire_due(std::unique_lock<std::mutex>& lock) {
  const auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    auto weak = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto req = weak.lock();
    if (!req)
      continue;
    req->armed.reset();
    lock.unlock();
    const Error e(ErrorCode::kTimeout, "request did not finish within " + std::to_string(options_.timeout.count()) +
                                           " ms (RuntimeOptions::timeout); the device may be overloaded or hung");
    if (abandon(req, e) == Early::kNow) {
      req->state->set_error(std::make_exception_ptr(e));  // may run a callback or resume a coroutine
      if (!on_callback_thread())
        return false;
    }
    lock.lock();
  }
  return true;
}

// The destructor, on the callback thread: do that thread's work (posted items, timeouts) until done()
// (called without cb_mu_) or `limit`.
void RuntimeImpl::pump_until(const std::function<bool()>& done, Clock::duration limit) {
  const auto end = Clock::now() + limit;
  std::unique_lock lock(cb_mu_);
  for (;;) {
    (void)expire_due(lock);  // the destructor is on the stack: *this lives on
    if (!cb_queue_.empty()) {
      auto fn = std::move(cb_queue_.front());
      cb_queue_.pop_front();
      lock.unlock();
      fn();
      fn = nullptr;
      lock.lock();
      continue;
    }
    lock.unlock();
    const bool finished = done();
    lock.lock();
    if (finished || Clock::now() >= end)
      return;
    if (cb_queue_.empty())  // retire() does not signal cb_cv_: poll
      cb_cv_.wait_until(lock, std::min(end, Clock::now() + std::chrono::milliseconds(20)));
  }
}

std::optional<Task<Outputs>> RuntimeImpl::run(Inputs inputs, PrepareFn prepare, std::vector<Tensor>* outputs,
                                              bool block) {
  if (prepare && !inputs.empty())
    throw Error(ErrorCode::kInternal, "run: both inputs and a prepare callback");
  if (!prepare && inputs.size() != md_.inputs.size())
    throw Error(ErrorCode::kInvalidArgument, "the model takes " + std::to_string(md_.inputs.size()) +
                                                 " input(s), got " + std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorInfo& ti = md_.inputs[i];
    if (inputs[i].dtype() != ti.dtype)
      throw Error(ErrorCode::kInvalidArgument, "input " + std::to_string(i) + " ('" + ti.name + "') has dtype " +
                                                   dtype_name(inputs[i].dtype()) + ", the model expects " +
                                                   dtype_name(ti.dtype));
    if (inputs[i].shape() != ti.shape)
      throw Error(ErrorCode::kInvalidArgument, "input " + std::to_string(i) + " ('" + ti.name + "') has shape " +
                                                   shape_string(inputs[i].shape()) + ", the model expects " +
                                                   shape_string(ti.shape));
  }
  auto req = std::make_shared<Request>();
  if (outputs) {
    if (outputs->size() != md_.outputs.size())
      throw Error(ErrorCode::kInvalidArgument, "the model has " + std::to_string(md_.outputs.size()) +
                                                   " output(s), got " + std::to_string(outputs->size()) +
                                                   " output tensors");
    for (size_t i = 0; i < outputs->size(); ++i) {
      const TensorInfo& ti = md_.outputs[i];
      const Tensor& o = (*outputs)[i];
      if (o.shape() != ti.shape || o.read_only())
        throw Error(ErrorCode::kInvalidArgument,
                    "output " + std::to_string(i) + " ('" + ti.name + "') is " +
                        (o.read_only() ? std::string("read-only") : "of shape " + shape_string(o.shape())) +
                        ", the model produces " + dtype_name(ti.dtype) + shape_string(ti.shape));
    }
    req->outs = std::move(*outputs);
  }
  req->inputs = std::move(inputs);
  req->prepare = std::move(prepare);
  req->state = std::make_shared<detail::TaskState<Outputs>>();
  req->state->set_executor(this);  // it resolves on our callback thread: wait() there would never return
  if (options_.executor)
    req->state->set_dispatch(options_.executor);  // its continuations run there
  req->t.enqueued = Clock::now();
  std::weak_ptr<Request> weak = req;
  req->state->set_cancel_hook([gate = gate_, weak] {
    std::lock_guard lock(gate->mu);
    return gate->rt && gate->rt->cancel(weak);
  });
  Task<Outputs> task(req->state);
  if (options_.timeout.count() > 0) {  // armed before it is queued, so a retire() always finds it
    std::lock_guard lock(cb_mu_);
    req->armed = deadlines_.emplace(req->t.enqueued + options_.timeout, weak);
    cb_cv_.notify_one();
  }
  bool accepted = false, full = false;
  {
    std::unique_lock lock(mu_);
    // (Expired while waiting: it will not be queued, so it stops waiting.)
    const auto room = [&] {
      return stopping_ || req->cancelled || queue_.size() < static_cast<size_t>(options_.max_queued);
    };
    if (!room()) {
      if (!block)
        full = true;
      else if (!on_callback_thread())  // the callback thread frees room: it must never wait for it
        room_cv_.wait(lock, room);
    }
    // Its timeout is armed before it is queued and may have expired meanwhile (run() waited for room, or
    // this thread was preempted): it is resolved already and must never reach a prep thread.
    if (!stopping_ && !full && !req->cancelled) {
      queue_.push_back(req);
      ++active_;
      accepted = true;
    } else {
      req->phase = Phase::kDone;
      // The wakeup that freed room may have come to this thread: pass it on to another waiting run().
      room_cv_.notify_one();
    }
  }
  if (!accepted) {
    disarm(req);
    if (req->cancelled)
      return task;  // resolved with kTimeout by the callback thread
    if (full)
      return std::nullopt;
    throw Error(ErrorCode::kAborted, "the runtime is shutting down; request not accepted");
  }
  work_cv_.notify_one();
  return task;
}

void RuntimeImpl::wait_all() {
  if (on_callback_thread())
    throw Error(ErrorCode::kInvalidArgument,
                "AsyncRuntime::wait_all() on the runtime's callback thread would wait forever (its requests "
                "resolve on this very thread); call it from another thread");
  {
    std::unique_lock lock(mu_);
    drain_cv_.wait(lock, [&] { return active_ == 0; });
  }
  // A request retires just before it resolves, in the same callback-thread item (finish, fail): one more
  // item behind them, and every resolution has run.
  std::promise<void> barrier;
  post([&barrier] { barrier.set_value(); });
  barrier.get_future().wait();
}

void RuntimeImpl::disarm(const RequestPtr& req) {
  std::lock_guard lock(cb_mu_);
  if (req->armed) {
    deadlines_.erase(*req->armed);
    req->armed.reset();
  }
}

// The cancel hook keeps only a weak reference (once a request is gone, cancel() is a harmless false) and
// reaches the runtime through gate_, which the destructor closes first.
bool RuntimeImpl::cancel(const std::weak_ptr<Request>& weak) {
  auto req = weak.lock();
  if (!req)
    return false;
  const Error e(ErrorCode::kCancelled, "request cancelled");
  switch (abandon(req, e)) {
    case Early::kNo: return false;
    case Early::kDeferred: return true;
    case Early::kNow: break;
  }
  // Resolve on the callback thread; device work already started finishes in the background, result dropped.
  post([req, e] { req->state->set_error(std::make_exception_ptr(e)); });
  return true;
}

// Resolve `req` early (cancel, timeout) with `e`, first resolution wins. kNow: the caller resolves it (on the
// callback thread). kDeferred: a prep thread is reading its inputs, which may be the caller's borrowed
// memory; prepare() resolves it as soon as it has stopped, so the caller may free that memory once the task
// resolves. kNo: already done or already resolving early.
RuntimeImpl::Early RuntimeImpl::abandon(const RequestPtr& req, const Error& e) {
  bool dequeued = false;
  {
    std::lock_guard lock(mu_);
    if (req->phase == Phase::kDone || req->cancelled || req->state->ready())
      return Early::kNo;
    req->cancelled = true;
    switch (req->phase) {
      case Phase::kQueued:
        if (auto it = std::find(queue_.begin(), queue_.end(), req); it != queue_.end()) {
          queue_.erase(it);
          room_cv_.notify_one();
          req->phase = Phase::kDone;
          req->inputs.clear();
          dequeued = true;
          if (--active_ == 0)
            drain_cv_.notify_all();
        } else {
          room_cv_.notify_all();  // not queued yet: run() may be waiting for room, and need not any more
        }
        break;
      case Phase::kPrep:
      case Phase::kDevice:
        if (req->reading_inputs || req->writing_outputs) {
          req->deferred = e;
          return Early::kDeferred;
        }
        break;
      case Phase::kDone: break;
    }
  }
  if (dequeued)
    disarm(req);
  return Early::kNow;
}

int RuntimeImpl::pick_device_locked(bool need_staging) {
  const size_t n = devs_.size();
  int best = -1;
  size_t best_free = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = options_.placement == Placement::kRoundRobin ? (rr_ + k) % n : k;
    const DeviceCtx& dc = devs_[i];
    if (dc.free_slots.empty() || (need_staging && dc.free_staging.empty()))
      continue;
    if (options_.placement == Placement::kRoundRobin) {
      rr_ = (i + 1) % n;
      return static_cast<int>(i);
    }
    if (dc.free_slots.size() > best_free) {
      best = static_cast<int>(i);
      best_free = dc.free_slots.size();
    }
  }
  return best;
}

void RuntimeImpl::prep_loop(int index) {
  const std::string name = "vnpu-prep" + std::to_string(index);
  pthread_setname_np(pthread_self(), name.c_str());
  for (;;) {
    RequestPtr req;
    {
      std::unique_lock lock(mu_);
      int d = -1;
      work_cv_.wait(lock, [&] {
        if (stopping_ && queue_.empty())
          return true;
        return !queue_.empty() && active_ - queue_.size() < held_limit() &&
               (d = pick_device_locked(needs_staging(*queue_.front()))) >= 0;
      });
      if (queue_.empty())
        return;  // stopping, and everything accepted has been handed on
      req = std::move(queue_.front());
      queue_.pop_front();
      room_cv_.notify_one();
      DeviceCtx& dc = devs_[static_cast<size_t>(d)];
      req->dev = d;
      req->slot = dc.free_slots.back();
      dc.free_slots.pop_back();
      if (needs_staging(*req)) {
        req->staging = dc.free_staging.back();
        dc.free_staging.pop_back();
      }
      req->phase = Phase::kPrep;
      req->reading_inputs = true;
    }
    req->t.prep_thread = index;
    prepare(req);
  }
}

bool RuntimeImpl::needs_staging(const Request& req) const {
  // Inputs of a prepare callback are written into staging; others go from their own memory when the
  // device can import it (an import that fails falls back to staging, taken then).
  return req.prepare != nullptr || !inputs_importable_ || !devs_.front().dev->info().host_import;
}

// mu_ not held. The caller's memory is no longer used by the request for inputs / outputs; if both are
// free and an early resolution (cancel, timeout) waited for that, it is returned: the caller resolves it.
std::optional<Error> RuntimeImpl::caller_memory_released(const RequestPtr& req, bool inputs, bool outputs) {
  std::lock_guard lock(mu_);
  if (inputs)
    req->reading_inputs = false;
  if (outputs)
    req->writing_outputs = false;
  if (req->reading_inputs || req->writing_outputs)
    return std::nullopt;
  return std::exchange(req->deferred, std::nullopt);
}

void RuntimeImpl::prepare(const RequestPtr& req) {
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  Device& dev = *dc.dev;
  req->t.device_index = req->dev;
  req->t.prep_start = Clock::now();
  std::exception_ptr error;
  bool imported_inputs = false;
  if (!req->cancelled) {
    try {
      // Caller-provided outputs: the D2H writes straight into them when the device can import them.
      if (!req->outs.empty() && outputs_importable_ && dev.info().host_import) {
        req->out_imports.resize(req->outs.size());
        req->out_imported.assign(req->outs.size(), false);
        for (size_t i = 0; i < req->outs.size(); ++i) {
          auto d = req->outs[i].data();
          if (auto h = dev.import_host(d.data(), d.size_bytes(), false)) {
            req->out_imports[i] = std::move(*h);
            req->out_imported[i] = true;
          }
        }
      }
      const bool lease = req->outs.empty() || std::count(req->out_imported.begin(), req->out_imported.end(), true) <
                                                  static_cast<std::ptrdiff_t>(req->outs.size());
      if (lease) {
        std::optional<HostBuffer> buf;
        {
          std::lock_guard lock(dc.outs->mu);
          if (!dc.outs->idle.empty()) {
            buf = std::move(dc.outs->idle.back());
            dc.outs->idle.pop_back();
          }
        }
        if (!buf) {  // the user holds on to earlier outputs: one more buffer
          buf = dev.alloc_host(out_bytes_).value();
          dc.outs->bytes += out_bytes_;
        }
        req->lease = std::make_shared<OutLease>(std::move(*buf), dc.outs);
      }
      if (req->prepare) {
        auto* staging = static_cast<float*>(dc.staging[static_cast<size_t>(req->staging)].data());
        std::vector<Tensor> views;
        for (size_t i = 0; i < md_.inputs.size(); ++i) {
          const detail::IoPlace& pl = md_.input_places[i];
          const size_t off = (in_off_[pl.binding] + pl.offset) / sizeof(float);
          views.push_back(Tensor::borrow(md_.inputs[i].shape,
                                         std::span<float>(staging + off, md_.inputs[i].size_bytes / sizeof(float))));
        }
        req->prepare(views);
      } else {
        // Every input the device can import is DMA'd from the tensor's own memory (borrowed: the caller's;
        // owned: the tensor the runtime holds). Only the others are copied, once, here.
        req->in_imports.resize(req->inputs.size());
        if (inputs_importable_ && dev.info().host_import)
          for (size_t i = 0; i < req->inputs.size(); ++i) {
            const auto src = std::as_const(req->inputs[i]).data();
            if (auto h = dev.import_host(const_cast<float*>(src.data()), src.size_bytes(), true)) {
              req->in_imports[i] = std::move(*h);
              imported_inputs = true;
            }
          }
        for (size_t i = 0; i < req->inputs.size(); ++i) {
          if (req->in_imports[i])
            continue;
          if (req->staging < 0) {  // an import failed: wait for a staging buffer of this device
            std::unique_lock lock(mu_);
            work_cv_.wait(lock, [&] { return !dc.free_staging.empty(); });
            req->staging = dc.free_staging.back();
            dc.free_staging.pop_back();
          }
          auto* staging = static_cast<std::byte*>(dc.staging[static_cast<size_t>(req->staging)].data());
          const detail::IoPlace& pl = md_.input_places[i];
          const auto src = std::as_const(req->inputs[i]).data();
          std::memcpy(staging + in_off_[pl.binding] + pl.offset, src.data(), src.size_bytes());
          req->t.host_bytes_copied += src.size_bytes();
        }
      }
      if (md_.host_prep.count() > 0) {
        // Synthetic models: the rest of the modelled host preprocessing (of the inputs, which stay borrowed
        // until it ends) as CPU work on this thread.
        volatile uint64_t sink = 0;
        while (Clock::now() - req->t.prep_start < md_.host_prep)
          for (int i = 0; i < 256; ++i)
            sink = sink + static_cast<uint64_t>(i);
      }
    } catch (...) {  // the prepare callback threw, or an output buffer could not be allocated
      error = std::current_exception();
      imported_inputs = false;
    }
  }
  req->prepare = nullptr;  // its captures are released here, on the prep thread
  if (!imported_inputs)
    req->inputs.clear();  // in the staging buffer now: free (or stop borrowing) the caller's tensors
  req->t.prep_end = Clock::now();
  std::optional<Error> deferred;
  bool abandoned = false;
  {
    std::lock_guard lock(mu_);
    req->phase = Phase::kDevice;
    deferred = std::exchange(req->deferred, std::nullopt);
    // Resolved early by someone else (who resolves it): nothing was prepared if it was so at the start.
    abandoned = req->cancelled && !deferred;
    if (deferred || error || abandoned || !imported_inputs)
      req->reading_inputs = false;  // nothing of the caller's will be read after this
    req->writing_outputs = !deferred && !error && !abandoned &&
                           std::count(req->out_imported.begin(), req->out_imported.end(), true) > 0;
  }
  if (deferred || error || abandoned) {  // cancelled or timed out while we read the inputs, or preparing failed
    release_staging(req);
    req->inputs.clear();
    req->in_imports.clear();
    req->out_imports.clear();
    req->lease.reset();
    if (!error && deferred)
      error = std::make_exception_ptr(*deferred);
    post([this, req, error] {
      retire(req);
      if (error)
        req->state->set_error(error);
    });
    return;
  }
  req->t.submitted = Clock::now();
  if (one_job(dev.info())) {
    // One device job per request: [H2D...] [SIGNAL] [compute] [D2H...]. The SIGNAL says "input consumed"
    // from the device itself, so the compute starts without a host round trip.
    Job job = h2d_job(req);
    job.commands.push_back(Command::signal());
    for (auto& c : exec_job(req).commands)
      job.commands.push_back(std::move(c));
    job.on_signal = [this, req](const SignalEvent& ev) { on_input_consumed(req, ev.t_ns); };
    req->t.device_jobs = 1;
    Status s = dc.dev->submit(std::move(job), [this, req](JobResult r) { on_exec_done(req, std::move(r)); });
    if (!s) {
      release_staging(req);
      fail(req, annotate(s.error(), "submitting the request's job"));
    }
    return;
  }
  req->t.device_jobs = 2;
  Status s = dc.dev->submit(h2d_job(req), [this, req](JobResult r) { on_h2d_done(req, std::move(r)); });
  if (!s) {
    release_staging(req);
    fail(req, annotate(s.error(), "submitting the H2D job"));
  }
}

bool RuntimeImpl::one_job(const DeviceInfo& inf) const {
  if (options_.two_jobs || !inf.signals || inf.max_signals_per_job < 1)
    return false;
  size_t in = 0, out = 0;
  for (const auto& b : md_.bindings)
    in += b.kind == detail::SlotKind::kInput, out += b.kind == detail::SlotKind::kOutput;
  return std::max<size_t>(in, 1) + 2 + out <= inf.max_cmds_per_job;
}

// Completion thread, one-job path: the job's SIGNAL was reached, so its H2D commands have read all their
// host memory. The same as the end of job 1 in the two-job path, except that the compute is already queued.
void RuntimeImpl::on_input_consumed(const RequestPtr& req, std::optional<uint64_t> t_ns) {
  req->t.h2d_end_ns = t_ns;
  req->t.input_consumed = Clock::now();
  release_staging(req);
  req->in_imports.clear();
  req->inputs.clear();
  // A cancel or timeout that waited for the inputs resolves now (unless the device still writes the
  // caller's outputs); the job's completion then only retires the request.
  if (auto deferred = caller_memory_released(req, true, false))
    post([req, e = std::move(*deferred)] { req->state->set_error(std::make_exception_ptr(e)); });
}

Job RuntimeImpl::h2d_job(const RequestPtr& req) {
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  const Slot& slot = dc.slots[static_cast<size_t>(req->slot)];
  Job job;
  if (inputs_importable_) {  // binding = tensor: each from its import, or from its staging region
    for (size_t i = 0; i < md_.inputs.size(); ++i) {
      const auto b = md_.input_places[i].binding;
      if (i < req->in_imports.size() && req->in_imports[i])
        job.commands.push_back(Command::copy_to_device(req->in_imports[i], 0, slot.bufs[b], 0, md_.bindings[b].size));
      else
        job.commands.push_back(Command::copy_to_device(dc.staging[static_cast<size_t>(req->staging)], in_off_[b],
                                                       slot.bufs[b], 0, md_.bindings[b].size));
    }
  } else {
    for (size_t b = 0; b < md_.bindings.size(); ++b)
      if (md_.bindings[b].kind == detail::SlotKind::kInput)
        job.commands.push_back(Command::copy_to_device(dc.staging[static_cast<size_t>(req->staging)], in_off_[b],
                                                       slot.bufs[b], 0, md_.bindings[b].size));
  }
  if (job.commands.empty())
    job.commands.push_back(Command::nop());  // a model without inputs
  return job;
}

Job RuntimeImpl::exec_job(const RequestPtr& req) {
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  const Slot& slot = dc.slots[static_cast<size_t>(req->slot)];
  Job job;
  switch (md_.compute) {
    case detail::ComputeKind::kExec:
      job.commands.push_back(
          Command::exec(dc.program, 0, md_.program.size(), slot.table, 0, static_cast<uint32_t>(md_.bindings.size())));
      break;
    case detail::ComputeKind::kMatmul:
      // bindings: 0 weights W[k,n], 1 input x[m,k], 2 output y[m,n]
      job.commands.push_back(Command::matmul(slot.bufs[1], 0, dc.weights, 0, slot.bufs[2], 0, md_.m, md_.n, md_.k));
      break;
    case detail::ComputeKind::kSynth: job.commands.push_back(Command::synth(md_.synth_ns)); break;
  }
  // D2H per output binding into the leased buffer, except the bindings (= tensors) whose caller-provided
  // tensor is imported: those straight into it.
  std::vector<const HostBuffer*> direct(md_.bindings.size(), nullptr);
  for (size_t i = 0; i < req->out_imports.size(); ++i)
    if (req->out_imports[i])
      direct[md_.output_places[i].binding] = &req->out_imports[i];
  for (size_t b = 0; b < md_.bindings.size(); ++b) {
    if (md_.bindings[b].kind != detail::SlotKind::kOutput)
      continue;
    if (direct[b])
      job.commands.push_back(Command::copy_from_device(slot.bufs[b], 0, *direct[b], 0, md_.bindings[b].size));
    else
      job.commands.push_back(
          Command::copy_from_device(slot.bufs[b], 0, req->lease->buf, out_off_[b], md_.bindings[b].size));
  }
  return job;
}

// mu_ held: put the request's slot or staging buffer (req.*index) back on its device's free list. False if
// it holds none (any more).
bool RuntimeImpl::give_back_locked(Request& req, int Request::*index, std::vector<int> DeviceCtx::*free_list) {
  if (req.*index < 0)
    return false;
  (devs_[static_cast<size_t>(req.dev)].*free_list).push_back(req.*index);
  req.*index = -1;
  return true;
}

void RuntimeImpl::release_staging(const RequestPtr& req) {
  {
    std::lock_guard lock(mu_);
    if (!give_back_locked(*req, &Request::staging, &DeviceCtx::free_staging))
      return;
  }
  work_cv_.notify_all();  // a prep thread whose import failed may wait for it too
}

// Device completion thread. The input has been consumed: recycle the staging buffer at once (this is what
// lets `parallel` prep threads run ahead of the device) and let go of the caller's inputs, then chain the
// compute+D2H job. Splitting the request into two jobs is what tells us H2D is done where the device has no
// SIGNAL command.
void RuntimeImpl::on_h2d_done(const RequestPtr& req, JobResult r) {
  req->t.h2d_start_ns = r.t_start_ns;
  req->t.h2d_end_ns = r.t_end_ns;
  req->t.h2d_ns = r.h2d_ns;
  req->t.input_consumed = Clock::now();
  release_staging(req);
  req->in_imports.clear();
  req->inputs.clear();
  const bool go_on = r.status && !req->cancelled && !req->state->ready() && !closing_devices_;
  // Without the compute job nothing writes the caller's outputs either.
  auto deferred = caller_memory_released(req, true, !go_on);
  if (!r.status)
    return fail(req, annotate(r.status.error(), "H2D of the inputs failed"));
  if (!go_on) {  // cancelled or timed out: do not start the compute
    if (closing_devices_ && !req->cancelled && !req->state->ready())
      return fail(req, Error(ErrorCode::kAborted, "the runtime is closing its devices"));
    post([this, req, deferred] {
      retire(req);
      if (deferred)
        req->state->set_error(std::make_exception_ptr(*deferred));
    });
    return;
  }
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  Status s = dc.dev->submit(exec_job(req), [this, req](JobResult r2) { on_exec_done(req, std::move(r2)); });
  if (!s) {
    (void)caller_memory_released(req, true, true);
    fail(req, annotate(s.error(), "submitting the compute job"));
  }
}

void RuntimeImpl::on_exec_done(const RequestPtr& req, JobResult r) {
  req->t.completed = Clock::now();
  if (req->t.device_jobs == 1) {  // one job: H2D from its start to its SIGNAL, the rest after it
    req->t.h2d_start_ns = r.t_start_ns;
    req->t.h2d_ns = r.h2d_ns;
    if (req->t.input_consumed == Clock::time_point{})
      req->t.input_consumed = req->t.completed;  // failed before its SIGNAL
    req->t.exec_start_ns = req->t.h2d_end_ns ? req->t.h2d_end_ns : r.t_start_ns;
  } else {
    req->t.exec_start_ns = r.t_start_ns;
  }
  req->t.exec_end_ns = r.t_end_ns;
  req->t.device_start_ns = req->t.h2d_start_ns;
  req->t.device_end_ns = r.t_end_ns;
  req->t.compute_ns = r.compute_ns;
  req->t.d2h_ns = r.d2h_ns;
  req->out_imports.clear();
  auto deferred = caller_memory_released(req, true, true);
  post([this, req, r = std::move(r), deferred = std::move(deferred)]() mutable {
    finish(req, std::move(r), std::move(deferred));
  });
  // The device is done with the slot: free it here, not on the callback thread, so that a slow callback or
  // coroutine there never holds the device back. The request still counts as in flight, with its timeout
  // armed, until it resolves there (retire).
  free_slot(req);
}

void RuntimeImpl::free_slot(const RequestPtr& req) {
  {
    std::lock_guard lock(mu_);
    if (!give_back_locked(*req, &Request::slot, &DeviceCtx::free_slots))
      return;
  }
  work_cv_.notify_all();
}

void RuntimeImpl::fail(const RequestPtr& req, Error e) {
  post([this, req, e = std::move(e)] {
    retire(req);
    req->state->set_error(std::make_exception_ptr(e));
  });
}

// Callback thread: hand the outputs over (views of the D2H buffer, or the caller's tensors the device wrote
// into), free the slot, resolve. Copies only caller-provided outputs the device could not import.
void RuntimeImpl::finish(const RequestPtr& req, JobResult r, std::optional<Error> deferred) {
  if (deferred) {  // cancelled or timed out while the device wrote into the caller's outputs
    retire(req);
    req->state->set_error(std::make_exception_ptr(*deferred));
    return;
  }
  if (!r.status) {
    retire(req);
    req->state->set_error(std::make_exception_ptr(annotate(r.status.error(), "running the model failed")));
    return;
  }
  if (req->cancelled || req->state->ready()) {  // timed out or cancelled meanwhile: nobody wants the outputs
    retire(req);
    return;
  }
  Outputs out;
  std::exception_ptr error;
  try {
    auto* base = req->lease ? static_cast<std::byte*>(req->lease->buf.data()) : nullptr;
    const bool provided = !req->outs.empty();
    for (size_t i = 0; i < md_.outputs.size(); ++i) {
      const detail::IoPlace& pl = md_.output_places[i];
      auto* src = base ? base + out_off_[pl.binding] + pl.offset : nullptr;
      if (provided) {
        Tensor t = std::move(req->outs[i]);
        if (i >= req->out_imported.size() || !req->out_imported[i]) {
          auto dst = t.data();
          std::memcpy(dst.data(), src, dst.size_bytes());
          req->t.host_bytes_copied += dst.size_bytes();
        }
        out.tensors.push_back(std::move(t));
      } else {
        out.tensors.push_back(Tensor::view(
            md_.outputs[i].shape,
            std::span<float>(reinterpret_cast<float*>(src), md_.outputs[i].size_bytes / sizeof(float)), req->lease));
      }
      out.names.push_back(md_.outputs[i].name);
    }
  } catch (...) {
    error = std::current_exception();
  }
  req->lease.reset();  // the output tensors hold it now (or nothing does: the buffer goes back to the pool)
  retire(req);
  req->t.resolved = Clock::now();
  out.timings = req->t;
  // Resolving may resume a coroutine or run a callback right here; either may call run().
  if (error)
    req->state->set_error(error);
  else
    req->state->set_value(std::move(out));
}

void RuntimeImpl::retire(const RequestPtr& req) {
  {
    std::lock_guard lock(mu_);
    if (req->phase == Phase::kDone)
      return;
    req->phase = Phase::kDone;
    give_back_locked(*req, &Request::slot, &DeviceCtx::free_slots);
    give_back_locked(*req, &Request::staging, &DeviceCtx::free_staging);
    if (--active_ == 0)
      drain_cv_.notify_all();
  }
  work_cv_.notify_all();
  disarm(req);
}

// ---- public facade ----------------------------------------------------------------------------------------
AsyncRuntime::AsyncRuntime(CompiledModel model, RuntimeOptions options)
    : impl_(std::make_unique<RuntimeImpl>(std::move(model), std::move(options))) {}
AsyncRuntime::AsyncRuntime(const MatmulModel& model, RuntimeOptions options)
    : AsyncRuntime(CompiledModel::from_matmul(model), std::move(options)) {}
AsyncRuntime::~AsyncRuntime() = default;
Task<Outputs> AsyncRuntime::run(Inputs inputs) {
  return *impl_->run(std::move(inputs), nullptr, nullptr);
}
Task<Outputs> AsyncRuntime::run(Inputs inputs, std::vector<Tensor> outputs) {
  return *impl_->run(std::move(inputs), nullptr, &outputs);
}
Task<Outputs> AsyncRuntime::run(Tensor x) {
  Inputs in;
  in.push_back(std::move(x));
  return *impl_->run(std::move(in), nullptr, nullptr);
}
Task<Outputs> AsyncRuntime::run(PrepareFn prepare) {
  if (!prepare)
    throw Error(ErrorCode::kInvalidArgument, "run: empty prepare callback");
  return *impl_->run({}, std::move(prepare), nullptr);
}
Task<Outputs> AsyncRuntime::run(PrepareFn prepare, std::vector<Tensor> outputs) {
  if (!prepare)
    throw Error(ErrorCode::kInvalidArgument, "run: empty prepare callback");
  return *impl_->run({}, std::move(prepare), &outputs);
}
std::optional<Task<Outputs>> AsyncRuntime::try_run(PrepareFn prepare) {
  if (!prepare)
    throw Error(ErrorCode::kInvalidArgument, "try_run: empty prepare callback");
  return impl_->run({}, std::move(prepare), nullptr, false);
}
std::optional<Task<Outputs>> AsyncRuntime::try_run(Inputs inputs) {
  return impl_->run(std::move(inputs), nullptr, nullptr, false);
}
std::optional<Task<Outputs>> AsyncRuntime::try_run(Tensor x) {
  Inputs in;
  in.push_back(std::move(x));
  return impl_->run(std::move(in), nullptr, nullptr, false);
}
void AsyncRuntime::wait_all() {
  impl_->wait_all();
}
const CompiledModel& AsyncRuntime::model() const noexcept {
  return impl_->model_;
}
const DeviceInfo& AsyncRuntime::device_info() const noexcept {
  return impl_->devs_.front().dev->info();
}
std::vector<DeviceInfo> AsyncRuntime::devices_info() const {
  std::vector<DeviceInfo> v;
  for (const auto& dc : impl_->devs_)
    v.push_back(dc.dev->info());
  return v;
}
const RuntimeOptions& AsyncRuntime::options() const noexcept {
  return impl_->options_;
}
int64_t AsyncRuntime::device_clock_offset_ns(size_t i) const {
  return impl_->devs_.at(i).clock_offset_ns;
}
uint64_t AsyncRuntime::host_dma_bytes() const noexcept {
  return impl_->host_dma_bytes();
}
const DepthEstimate& AsyncRuntime::depth_estimate() const noexcept {
  return impl_->depth_;
}
size_t AsyncRuntime::in_flight() const {
  return impl_->in_flight();
}
size_t AsyncRuntime::timeouts_armed() const {
  return impl_->timeouts_armed();
}

namespace {
RuntimeOptions sync_options(RuntimeOptions o) {
  o.parallel = 1;
  o.max_in_flight = 1;
  o.staging_buffers = 1;
  return o;
}
}  // namespace

Runtime::Runtime(CompiledModel model, RuntimeOptions options)
    : rt_(std::make_unique<AsyncRuntime>(std::move(model), sync_options(std::move(options)))) {}
Runtime::~Runtime() = default;
Outputs Runtime::run(Inputs inputs) {
  return rt_->run(std::move(inputs)).wait();
}
Outputs Runtime::run(Tensor x) {
  return rt_->run(std::move(x)).wait();
}
const CompiledModel& Runtime::model() const noexcept {
  return rt_->model();
}
const DeviceInfo& Runtime::device_info() const noexcept {
  return rt_->device_info();
}

}  // namespace vnpu
