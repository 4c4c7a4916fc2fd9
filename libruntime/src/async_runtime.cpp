// SPDX-License-Identifier: MIT
// AsyncRuntime: prep threads → H2D job → (completion thread) compute+D2H job → callback thread → Task.
// docs/runtime.md describes the pipeline and its guarantees; the comments here say why it is built this way.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
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
  Task<Outputs> run(Inputs inputs, std::vector<Tensor>* outputs);

  CompiledModel model_;
  const detail::ModelData& md_;
  RuntimeOptions options_;

  // One device and everything the runtime keeps on it.
  struct Slot {
    std::vector<DeviceBuffer> bufs;  // per binding (empty for the weights binding)
    DeviceBuffer table;              // the EXEC binding table (u64 device VAs)
    HostBuffer out;                  // D2H target: every output binding, at out_off_
  };
  struct DeviceCtx {
    std::unique_ptr<Device> dev;
    DeviceBuffer weights, program;
    std::vector<Slot> slots;
    std::vector<int> free_slots;
    std::vector<HostBuffer> staging;  // H2D source: every input binding, at in_off_
    std::vector<int> free_staging;
    int64_t clock_offset_ns = 0;
  };
  std::vector<DeviceCtx> devs_;
  uint64_t host_dma_bytes_ = 0;

 private:
  enum class Phase { kQueued, kPrep, kDevice, kDone };
  struct Request {
    Inputs inputs;
    std::vector<Tensor> outs;  // caller-provided outputs (run with outputs)
    std::shared_ptr<detail::TaskState<Outputs>> state;
    RequestTimings t;
    int dev = -1, slot = -1, staging = -1;
    Phase phase = Phase::kQueued;  // guarded by mu_
    std::atomic<bool> cancelled{false};
  };
  using RequestPtr = std::shared_ptr<Request>;

  void setup_device(int index);
  Status upload(Device& dev, const DeviceBuffer& dst, const void* data, size_t bytes);
  int pick_device_locked();
  void prep_loop(int index);
  void prepare(const RequestPtr& req);
  Job h2d_job(const RequestPtr& req);
  Job exec_job(const RequestPtr& req);
  void on_h2d_done(const RequestPtr& req, JobResult r);
  void on_exec_done(const RequestPtr& req, JobResult r);
  void finish(const RequestPtr& req, JobResult r);
  void fail(const RequestPtr& req, Error e);
  void release_staging(const RequestPtr& req);
  void retire(const RequestPtr& req);
  bool cancel(const std::weak_ptr<Request>& weak);
  void post(std::function<void()> fn);
  void callback_loop();

  std::vector<uint64_t> in_off_, out_off_;  // per binding: offset in the staging / output buffer
  uint64_t staging_bytes_ = 0, out_bytes_ = 0;

  std::mutex mu_;                     // queue_, free lists, phases, active_, stopping_, rr_
  std::condition_variable work_cv_;   // prep threads: a request and a device with room, or stopping
  std::condition_variable drain_cv_;  // destructor: active_ reached 0
  std::deque<RequestPtr> queue_;
  size_t active_ = 0;  // accepted by run() and still holding (or waiting for) device resources
  bool stopping_ = false;
  std::atomic<bool> closing_devices_{false};
  size_t rr_ = 0;
  std::vector<std::thread> prep_threads_;

  // The callback thread: runs posted work (output copies, resolutions, callbacks, resumed coroutines) in
  // order, and expires requests whose timeout passed.
  std::mutex cb_mu_;
  std::condition_variable cb_cv_;
  std::deque<std::function<void()>> cb_queue_;
  std::multimap<Clock::time_point, std::weak_ptr<Request>> deadlines_;
  bool cb_stop_ = false;
  std::thread cb_thread_;
};

RuntimeImpl::RuntimeImpl(CompiledModel model, RuntimeOptions options)
    : model_(std::move(model)), md_(model_.data()), options_(std::move(options)) {
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
  if (options_.max_in_flight == 0)
    options_.max_in_flight = std::max(4, 2 * options_.parallel);
  if (options_.staging_buffers == 0)
    options_.staging_buffers = options_.parallel + 2;
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
  for (int i = 0; i < options_.parallel; ++i)
    prep_threads_.emplace_back([this, i] { prep_loop(i); });
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
    slot.out = take(dev.alloc_host(out_bytes_));
    host_dma_bytes_ += out_bytes_;
    dc.slots.push_back(std::move(slot));
    dc.free_slots.push_back(i);
  }
  for (int i = 0; i < options_.staging_buffers; ++i) {
    dc.staging.push_back(take(dev.alloc_host(staging_bytes_)));
    host_dma_bytes_ += staging_bytes_;
    dc.free_staging.push_back(i);
  }
  // Hand out low indices first (easier to read in traces).
  std::reverse(dc.free_slots.begin(), dc.free_slots.end());
  std::reverse(dc.free_staging.begin(), dc.free_staging.end());
}

RuntimeImpl::~RuntimeImpl() {
  std::deque<RequestPtr> cancelled;
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    cancelled.swap(queue_);
    active_ -= cancelled.size();
    for (auto& r : cancelled)
      r->phase = Phase::kDone;
    work_cv_.notify_all();
  }
  for (auto& r : cancelled)
    post([r] {
      r->state->set_error(std::make_exception_ptr(
          Error(ErrorCode::kCancelled, "the runtime was destroyed before the request started")));
    });
  for (auto& t : prep_threads_)
    t.join();
  {
    // Drain what is on the devices. Devices bound how long a job takes; a hung one is aborted below.
    std::unique_lock lock(mu_);
    drain_cv_.wait_for(lock, kDrainLimit, [&] { return active_ == 0; });
  }
  // Device destructors abort whatever is left; their callbacks post to the callback thread, still running.
  closing_devices_ = true;
  for (auto& dc : devs_)
    dc.dev.reset();
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
  std::unique_lock lock(cb_mu_);
  for (;;) {
    if (!cb_queue_.empty()) {
      auto fn = std::move(cb_queue_.front());
      cb_queue_.pop_front();
      lock.unlock();
      fn();
      fn = nullptr;
      lock.lock();
      continue;
    }
    // Expire overdue requests (the first resolution wins; the device work finishes in the background).
    const auto now = Clock::now();
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto weak = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      if (auto req = weak.lock()) {
        lock.unlock();
        req->state->set_error(std::make_exception_ptr(
            Error(ErrorCode::kTimeout, "request did not finish within " + std::to_string(options_.timeout.count()) +
                                           " ms (RuntimeOptions::timeout); the device may be overloaded or hung")));
        lock.lock();
      }
    }
    if (!cb_queue_.empty())
      continue;
    if (cb_stop_)
      return;
    if (deadlines_.empty())
      cb_cv_.wait(lock);
    else
      cb_cv_.wait_until(lock, deadlines_.begin()->first);
  }
}

Task<Outputs> RuntimeImpl::run(Inputs inputs, std::vector<Tensor>* outputs) {
  if (inputs.size() != md_.inputs.size())
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
  req->state = std::make_shared<detail::TaskState<Outputs>>();
  req->t.enqueued = Clock::now();
  std::weak_ptr<Request> weak = req;
  req->state->set_cancel_hook([this, weak] { return cancel(weak); });
  Task<Outputs> task(req->state);
  {
    std::lock_guard lock(mu_);
    if (stopping_)
      throw Error(ErrorCode::kAborted, "the runtime is shutting down; request not accepted");
    queue_.push_back(req);
    ++active_;
  }
  if (options_.timeout.count() > 0) {
    std::lock_guard lock(cb_mu_);
    deadlines_.emplace(req->t.enqueued + options_.timeout, weak);
    cb_cv_.notify_one();
  }
  work_cv_.notify_one();
  return task;
}

// The cancel hook keeps only a weak reference: once a request is gone, cancel() is a harmless false.
// NOTE: the hook captures `this`; Tasks outlive the runtime, so it must not run after ~RuntimeImpl. A
// request that is gone (weak expired) never touches `this`; a live request keeps the runtime's destructor
// waiting (drain), so `this` is valid whenever the lock succeeds.
bool RuntimeImpl::cancel(const std::weak_ptr<Request>& weak) {
  auto req = weak.lock();
  if (!req || req->state->ready())
    return false;
  bool dequeued = false;
  {
    std::lock_guard lock(mu_);
    if (req->phase == Phase::kDone)
      return false;
    req->cancelled = true;
    if (req->phase == Phase::kQueued) {
      auto it = std::find(queue_.begin(), queue_.end(), req);
      if (it != queue_.end()) {
        queue_.erase(it);
        req->phase = Phase::kDone;
        --active_;
        dequeued = true;
        if (active_ == 0)
          drain_cv_.notify_all();
      }
    }
  }
  (void)dequeued;
  // Resolve now (on the callback thread); device work already started finishes in the background and its
  // result is dropped.
  post([req] { req->state->set_error(std::make_exception_ptr(Error(ErrorCode::kCancelled, "request cancelled"))); });
  return true;
}

int RuntimeImpl::pick_device_locked() {
  const size_t n = devs_.size();
  int best = -1;
  size_t best_free = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = options_.placement == Placement::kRoundRobin ? (rr_ + k) % n : k;
    const DeviceCtx& dc = devs_[i];
    if (dc.free_slots.empty() || dc.free_staging.empty())
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
        return !queue_.empty() && (d = pick_device_locked()) >= 0;
      });
      if (queue_.empty())
        return;  // stopping, and everything accepted has been handed on
      req = std::move(queue_.front());
      queue_.pop_front();
      DeviceCtx& dc = devs_[static_cast<size_t>(d)];
      req->dev = d;
      req->slot = dc.free_slots.back();
      dc.free_slots.pop_back();
      req->staging = dc.free_staging.back();
      dc.free_staging.pop_back();
      req->phase = Phase::kPrep;
    }
    req->t.prep_thread = index;
    prepare(req);
  }
}

void RuntimeImpl::prepare(const RequestPtr& req) {
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  if (req->state->ready()) {  // timed out while queued
    release_staging(req);
    retire(req);
    return;
  }
  req->t.device_index = req->dev;
  req->t.prep_start = Clock::now();
  auto* staging = static_cast<std::byte*>(dc.staging[static_cast<size_t>(req->staging)].data());
  for (size_t i = 0; i < req->inputs.size(); ++i) {
    const detail::IoPlace& pl = md_.input_places[i];
    const auto src = std::as_const(req->inputs[i]).data();
    std::memcpy(staging + in_off_[pl.binding] + pl.offset, src.data(), src.size_bytes());
  }
  if (md_.host_prep.count() > 0) {
    // Synthetic models: the rest of the modelled host preprocessing time as CPU work on this thread.
    volatile uint64_t sink = 0;
    while (Clock::now() - req->t.prep_start < md_.host_prep)
      for (int i = 0; i < 256; ++i)
        sink = sink + static_cast<uint64_t>(i);
  }
  req->inputs.clear();  // inputs are in the staging buffer now: free (or stop borrowing) the caller's tensors
  req->t.prep_end = Clock::now();
  {
    std::lock_guard lock(mu_);
    req->phase = Phase::kDevice;
  }
  if (req->cancelled) {
    release_staging(req);
    retire(req);
    return;
  }
  req->t.submitted = Clock::now();
  Status s = dc.dev->submit(h2d_job(req), [this, req](JobResult r) { on_h2d_done(req, std::move(r)); });
  if (!s) {
    release_staging(req);
    fail(req, annotate(s.error(), "submitting the H2D job"));
  }
}

Job RuntimeImpl::h2d_job(const RequestPtr& req) {
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  const Slot& slot = dc.slots[static_cast<size_t>(req->slot)];
  const HostBuffer& staging = dc.staging[static_cast<size_t>(req->staging)];
  Job job;
  for (size_t b = 0; b < md_.bindings.size(); ++b)
    if (md_.bindings[b].kind == detail::SlotKind::kInput)
      job.commands.push_back(Command::copy_to_device(staging, in_off_[b], slot.bufs[b], 0, md_.bindings[b].size));
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
  for (size_t b = 0; b < md_.bindings.size(); ++b)
    if (md_.bindings[b].kind == detail::SlotKind::kOutput)
      job.commands.push_back(Command::copy_from_device(slot.bufs[b], 0, slot.out, out_off_[b], md_.bindings[b].size));
  return job;
}

void RuntimeImpl::release_staging(const RequestPtr& req) {
  {
    std::lock_guard lock(mu_);
    if (req->staging < 0)
      return;
    devs_[static_cast<size_t>(req->dev)].free_staging.push_back(req->staging);
    req->staging = -1;
  }
  work_cv_.notify_one();
}

// Device completion thread. The input has been consumed: recycle the staging buffer at once (this is what
// lets `parallel` prep threads run ahead of the device), then chain the compute+D2H job. Splitting the
// request into two jobs is what tells us H2D is done: a job's completion is the only signal a device gives.
void RuntimeImpl::on_h2d_done(const RequestPtr& req, JobResult r) {
  req->t.h2d_start_ns = r.t_start_ns;
  req->t.h2d_end_ns = r.t_end_ns;
  req->t.h2d_ns = r.h2d_ns;
  release_staging(req);
  if (!r.status)
    return fail(req, annotate(r.status.error(), "H2D of the inputs failed"));
  if (req->cancelled || req->state->ready()) {  // cancelled or timed out: do not start the compute
    post([this, req] { retire(req); });
    return;
  }
  if (closing_devices_)
    return fail(req, Error(ErrorCode::kAborted, "the runtime is closing its devices"));
  DeviceCtx& dc = devs_[static_cast<size_t>(req->dev)];
  Status s = dc.dev->submit(exec_job(req), [this, req](JobResult r2) { on_exec_done(req, std::move(r2)); });
  if (!s)
    fail(req, annotate(s.error(), "submitting the compute job"));
}

void RuntimeImpl::on_exec_done(const RequestPtr& req, JobResult r) {
  req->t.completed = Clock::now();
  req->t.exec_start_ns = r.t_start_ns;
  req->t.exec_end_ns = r.t_end_ns;
  req->t.device_start_ns = req->t.h2d_start_ns;
  req->t.device_end_ns = r.t_end_ns;
  req->t.compute_ns = r.compute_ns;
  req->t.d2h_ns = r.d2h_ns;
  post([this, req, r = std::move(r)]() mutable { finish(req, std::move(r)); });
}

void RuntimeImpl::fail(const RequestPtr& req, Error e) {
  post([this, req, e = std::move(e)] {
    retire(req);
    req->state->set_error(std::make_exception_ptr(e));
  });
}

// Callback thread: copy the outputs out of the slot's output buffer, free the slot, resolve.
void RuntimeImpl::finish(const RequestPtr& req, JobResult r) {
  if (!r.status) {
    retire(req);
    req->state->set_error(std::make_exception_ptr(annotate(r.status.error(), "running the model failed")));
    return;
  }
  if (req->state->ready()) {  // timed out or cancelled meanwhile: nobody wants the outputs
    retire(req);
    return;
  }
  Outputs out;
  std::exception_ptr error;
  try {
    const auto* base = static_cast<const std::byte*>(
        devs_[static_cast<size_t>(req->dev)].slots[static_cast<size_t>(req->slot)].out.data());
    const bool borrowed = !req->outs.empty();
    for (size_t i = 0; i < md_.outputs.size(); ++i) {
      const detail::IoPlace& pl = md_.output_places[i];
      Tensor t = borrowed ? std::move(req->outs[i]) : Tensor(md_.outputs[i].shape);
      auto dst = t.data();
      std::memcpy(dst.data(), base + out_off_[pl.binding] + pl.offset, dst.size_bytes());
      out.tensors.push_back(std::move(t));
      out.names.push_back(md_.outputs[i].name);
    }
  } catch (...) {  // allocating an output failed: report it on the task, keep the runtime going
    error = std::current_exception();
  }
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
    if (req->slot >= 0)
      devs_[static_cast<size_t>(req->dev)].free_slots.push_back(req->slot);
    req->slot = -1;
    if (req->staging >= 0)
      devs_[static_cast<size_t>(req->dev)].free_staging.push_back(req->staging);
    req->staging = -1;
    if (--active_ == 0)
      drain_cv_.notify_all();
  }
  work_cv_.notify_all();
}

// ---- public facade ----------------------------------------------------------------------------------------
AsyncRuntime::AsyncRuntime(CompiledModel model, RuntimeOptions options)
    : impl_(std::make_unique<RuntimeImpl>(std::move(model), std::move(options))) {}
AsyncRuntime::AsyncRuntime(const MatmulModel& model, RuntimeOptions options)
    : AsyncRuntime(CompiledModel::from_matmul(model), std::move(options)) {}
AsyncRuntime::~AsyncRuntime() = default;
Task<Outputs> AsyncRuntime::run(Inputs inputs) {
  return impl_->run(std::move(inputs), nullptr);
}
Task<Outputs> AsyncRuntime::run(Inputs inputs, std::vector<Tensor> outputs) {
  return impl_->run(std::move(inputs), &outputs);
}
Task<Outputs> AsyncRuntime::run(Tensor x) {
  Inputs in;
  in.push_back(std::move(x));
  return impl_->run(std::move(in), nullptr);
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
  return impl_->host_dma_bytes_;
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
