// SPDX-License-Identifier: MIT
// AsyncRuntime: prep threads → device job → completion thread → Task.
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <vnpu/async_runtime.h>

#include "internal.h"

namespace vnpu {

namespace {
constexpr uint64_t kRegionAlign = 256;  // the output region of a slot starts on its own cache lines
using Clock = RequestTimings::Clock;
}  // namespace

class RuntimeImpl {
 public:
  RuntimeImpl(MatmulModel model, RuntimeOptions options);
  ~RuntimeImpl();
  Task<Outputs> run(Inputs inputs);

  MatmulModel model_;
  RuntimeOptions options_;
  std::unique_ptr<Device> device_;

 private:
  // Everything one request needs on the device side, reused across requests: staging = [x | y] in host
  // memory the device DMAs from and to, dev = [x | y] in device memory.
  struct Slot {
    HostBuffer staging;
    DeviceBuffer dev;
  };
  struct Request {
    Inputs inputs;
    std::shared_ptr<detail::TaskState<Outputs>> state;
    RequestTimings timings;
    size_t slot = 0;
  };

  void prep_loop(int index);
  void process(std::shared_ptr<Request> req);
  void complete(const std::shared_ptr<Request>& req, JobResult result);
  void release(size_t slot);

  uint64_t x_bytes_ = 0, y_bytes_ = 0, y_offset_ = 0;
  DeviceBuffer weights_;
  std::vector<Slot> slots_;

  std::mutex mu_;  // queue_, free_slots_, active_, stopping_
  std::condition_variable work_cv_;   // prep threads: a request and a slot are available, or stopping
  std::condition_variable drain_cv_;  // destructor: active_ reached 0
  std::deque<std::shared_ptr<Request>> queue_;
  std::vector<size_t> free_slots_;
  size_t active_ = 0;  // accepted by run() and not yet resolved
  bool stopping_ = false;
  std::vector<std::thread> prep_threads_;
};

RuntimeImpl::RuntimeImpl(MatmulModel model, RuntimeOptions options) : model_(std::move(model)), options_(std::move(options)) {
  if (options_.parallel < 1 || options_.parallel > 16)
    throw Error(ErrorCode::kInvalidArgument, "parallel = " + std::to_string(options_.parallel) + " is out of range; use 1..16");
  if (options_.max_in_flight < 0 || options_.max_in_flight > 256)
    throw Error(ErrorCode::kInvalidArgument, "max_in_flight = " + std::to_string(options_.max_in_flight) +
                                                 " is out of range; use 1..256 (or 0 for the default)");
  if (options_.max_in_flight == 0) options_.max_in_flight = std::max(4, 2 * options_.parallel);
  if (options_.backend.empty()) options_.backend = Device::default_backend(options_.device);

  device_ = Device::open(DeviceOptions{options_.backend, options_.device, options_.submit_mode}).value();

  const auto m = static_cast<uint64_t>(model_.m()), k = static_cast<uint64_t>(model_.k()),
             n = static_cast<uint64_t>(model_.n());
  x_bytes_ = m * k * sizeof(float);
  y_bytes_ = m * n * sizeof(float);
  y_offset_ = detail::round_up(x_bytes_, kRegionAlign);
  const uint64_t w_bytes = k * n * sizeof(float);
  const uint64_t slot_bytes = y_offset_ + y_bytes_;

  auto oom_hint = [&](Error e) {
    if (e.code() != ErrorCode::kOutOfMemory) return e;
    return Error(ErrorCode::kOutOfMemory, std::string(e.what()) + ". The model needs " + std::to_string(w_bytes) +
                                              " bytes of weights plus " + std::to_string(slot_bytes) +
                                              " bytes per in-flight request (max_in_flight = " +
                                              std::to_string(options_.max_in_flight) + "): lower max_in_flight");
  };

  // Upload W once through a temporary staging buffer.
  {
    auto w = device_->alloc_device(w_bytes);  // device memory first: the likelier one to run out
    if (!w) throw oom_hint(std::move(w).error());
    auto staging = device_->alloc_host(w_bytes);
    if (!staging) throw oom_hint(std::move(staging).error());
    std::memcpy(staging->data(), model_.weights().data().data(), w_bytes);
    Job job{{Command::copy_to_device(*staging, 0, *w, 0, w_bytes)}};
    JobResult r = device_->run(std::move(job)).value();
    if (!r.status) throw Error(r.status.error().code(), std::string("uploading the weights failed: ") + r.status.error().what());
    weights_ = std::move(*w);
  }
  for (int i = 0; i < options_.max_in_flight; ++i) {
    auto d = device_->alloc_device(slot_bytes);
    if (!d) throw oom_hint(std::move(d).error());
    auto h = device_->alloc_host(slot_bytes);
    if (!h) throw oom_hint(std::move(h).error());
    slots_.push_back(Slot{std::move(*h), std::move(*d)});
    free_slots_.push_back(static_cast<size_t>(i));
  }
  std::reverse(free_slots_.begin(), free_slots_.end());  // hand out slot 0 first
  for (int i = 0; i < options_.parallel; ++i) prep_threads_.emplace_back([this, i] { prep_loop(i); });
}

RuntimeImpl::~RuntimeImpl() {
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    work_cv_.notify_all();
    // Drain: every accepted request finishes (the device bounds how long a job can take).
    drain_cv_.wait(lock, [&] { return active_ == 0; });
  }
  for (auto& t : prep_threads_) t.join();
  // Joins the completion thread; the members it used are still alive here.
  device_.reset();
}

Task<Outputs> RuntimeImpl::run(Inputs inputs) {
  if (inputs.size() != 1)
    throw Error(ErrorCode::kInvalidArgument, "the matmul model takes 1 input, got " + std::to_string(inputs.size()));
  if (inputs[0].shape() != model_.input_shape()) {
    std::string got = "[";
    for (size_t i = 0; i < inputs[0].shape().size(); ++i) got += (i ? "," : "") + std::to_string(inputs[0].shape()[i]);
    throw Error(ErrorCode::kInvalidArgument, "input 0 has shape " + got + "], the model expects [" +
                                                 std::to_string(model_.m()) + "," + std::to_string(model_.k()) + "]");
  }
  auto req = std::make_shared<Request>();
  req->inputs = std::move(inputs);
  req->state = std::make_shared<detail::TaskState<Outputs>>();
  req->timings.enqueued = Clock::now();
  Task<Outputs> task(req->state);
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw Error(ErrorCode::kAborted, "the runtime is shutting down; request not accepted");
    queue_.push_back(std::move(req));
    ++active_;
  }
  work_cv_.notify_one();
  return task;
}

void RuntimeImpl::prep_loop(int index) {
  const std::string name = "vnpu-prep" + std::to_string(index);
  pthread_setname_np(pthread_self(), name.c_str());
  for (;;) {
    std::shared_ptr<Request> req;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return (!queue_.empty() && !free_slots_.empty()) || (stopping_ && queue_.empty()); });
      if (queue_.empty()) return;  // stopping, and everything accepted has been handed on
      req = std::move(queue_.front());
      queue_.pop_front();
      req->slot = free_slots_.back();
      free_slots_.pop_back();
    }
    process(std::move(req));
  }
}

void RuntimeImpl::process(std::shared_ptr<Request> req) {
  Slot& slot = slots_[req->slot];
  req->timings.prep_start = Clock::now();
  std::memcpy(slot.staging.data(), req->inputs[0].data().data(), x_bytes_);
  req->inputs.clear();  // the input is in the staging buffer now; free the caller's copy early
  req->timings.prep_end = Clock::now();

  const auto m = static_cast<uint32_t>(model_.m()), k = static_cast<uint32_t>(model_.k()),
             n = static_cast<uint32_t>(model_.n());
  Job job;
  job.commands.push_back(Command::copy_to_device(slot.staging, 0, slot.dev, 0, x_bytes_));
  job.commands.push_back(Command::matmul(slot.dev, 0, weights_, 0, slot.dev, y_offset_, m, n, k));
  job.commands.push_back(Command::copy_from_device(slot.dev, y_offset_, slot.staging, y_offset_, y_bytes_));

  req->timings.submitted = Clock::now();
  Status s = device_->submit(std::move(job), [this, req](JobResult r) { complete(req, std::move(r)); });
  if (!s) {
    req->timings.completed = req->timings.resolved = Clock::now();
    release(req->slot);
    auto state = req->state;
    state->set_error(std::make_exception_ptr(std::move(s).error()));
    std::lock_guard lock(mu_);
    if (--active_ == 0) drain_cv_.notify_all();
  }
}

void RuntimeImpl::release(size_t slot) {
  {
    std::lock_guard lock(mu_);
    free_slots_.push_back(slot);
  }
  work_cv_.notify_one();
}

// Runs on the device's completion thread.
void RuntimeImpl::complete(const std::shared_ptr<Request>& req, JobResult result) {
  req->timings.completed = Clock::now();
  req->timings.device_start_ns = result.t_start_ns;
  req->timings.device_end_ns = result.t_end_ns;
  std::exception_ptr error;
  Outputs out;
  if (result.status) {
    try {
      Tensor y(model_.output_shape());
      std::memcpy(y.data().data(), static_cast<const std::byte*>(slots_[req->slot].staging.data()) + y_offset_, y_bytes_);
      out.tensors.push_back(std::move(y));
    } catch (...) {  // allocation of the output failed: report it on the task, keep the runtime going
      error = std::current_exception();
    }
  } else {
    error = std::make_exception_ptr(std::move(result.status).error());
  }
  release(req->slot);
  req->timings.resolved = Clock::now();
  out.timings = req->timings;
  // Resolving may resume a coroutine right here; it may call run() (accepted unless we are stopping).
  if (error)
    req->state->set_error(error);
  else
    req->state->set_value(std::move(out));
  std::lock_guard lock(mu_);
  if (--active_ == 0) drain_cv_.notify_all();
}

// ---- public facade ----------------------------------------------------------------------------------------
AsyncRuntime::AsyncRuntime(MatmulModel model, RuntimeOptions options)
    : impl_(std::make_unique<RuntimeImpl>(std::move(model), std::move(options))) {}
AsyncRuntime::~AsyncRuntime() = default;
Task<Outputs> AsyncRuntime::run(Inputs inputs) { return impl_->run(std::move(inputs)); }
Task<Outputs> AsyncRuntime::run(Tensor x) {
  Inputs in;
  in.push_back(std::move(x));
  return impl_->run(std::move(in));
}
const MatmulModel& AsyncRuntime::model() const noexcept { return impl_->model_; }
const DeviceInfo& AsyncRuntime::device_info() const noexcept { return impl_->device_->info(); }
const RuntimeOptions& AsyncRuntime::options() const noexcept { return impl_->options_; }

}  // namespace vnpu
