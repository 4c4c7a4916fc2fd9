// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Task<T>: the handle on one asynchronous result — a request of AsyncRuntime, or a coroutine.
/// Consume it once: wait(), co_await, or on_complete(callback). Poll it with ready() / wait_for().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include <vnpu/error.h>
#include <vnpu/export.h>
#include <vnpu/result.h>

namespace vnpu {

template <class T>
class Task;

namespace detail {
template <class T>
class TaskState;
template <class U>
const TaskState<U>* state_of(const Task<U>& task) noexcept;

/// The executor (an AsyncRuntime's callback thread) running on this thread, or null. Set by the runtime for
/// its callback thread; Task::wait() and sync_wait() use it to refuse a wait that could never end.
VNPU_API const void* this_thread_executor() noexcept;

/// The Error of a blocking wait on the thread that would have to resolve the task.
[[noreturn]] VNPU_API void throw_wait_would_deadlock(const char* what);

template <class T>
using Stored = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

/// Completion state shared by a Task and whoever resolves it (the runtime, or a coroutine). Resolved exactly
/// once; the first resolution wins (a timeout or cancellation may race with the real completion).
template <class T>
class TaskState {
 public:
  using Callback = std::function<void(Result<Stored<T>>)>;

  /// Resolve with a value. Resumes an awaiting coroutine or runs the callback on the calling thread.
  /// Returns false if the state was already resolved (the value is dropped).
  bool set_value(Stored<T> value) {
    return resolve([&] { value_.emplace(std::move(value)); });
  }
  /// Resolve with an error.
  bool set_error(std::exception_ptr error) {
    return resolve([&] { error_ = std::move(error); });
  }

  /// Producer side: what Task::cancel() does. Must be set before the Task is handed out.
  void set_cancel_hook(std::function<bool()> hook) { cancel_hook_ = std::move(hook); }
  /// Where the continuations of this state run: each one (the awaiting coroutine's resumption, or the
  /// on_complete callback) is handed to `dispatch` by the resolving thread instead of being run there.
  /// Empty (the default): they run on the resolving thread. Must be set before the Task is handed out.
  using Dispatch = std::function<void(std::function<void()>)>;
  void set_dispatch(Dispatch dispatch) { dispatch_ = std::move(dispatch); }
  bool cancel() { return cancel_hook_ ? cancel_hook_() : false; }

  bool ready() const {
    std::lock_guard lock(mu_);
    return done_;
  }
  /// Producer side: the executor whose thread resolves this state (an AsyncRuntime's callback thread), or,
  /// for a coroutine, the one that resumes it from its current suspension. Null when unknown.
  void set_executor(const void* executor) noexcept { executor_.store(executor, std::memory_order_relaxed); }
  [[nodiscard]] const void* executor() const noexcept { return executor_.load(std::memory_order_relaxed); }
  /// Where a coroutine awaiting this state resumes: the resolving executor, or nothing known when the
  /// continuations are dispatched elsewhere (set_dispatch).
  [[nodiscard]] const void* resumer() const noexcept { return dispatch_ ? nullptr : executor(); }
  /// Throws Error(kInvalidArgument) if a blocking wait on this thread could never end: the state is not
  /// resolved and only this thread (its executor) can resolve it. `what` names the call in the message.
  void check_blocking_wait(const char* what) const {
    const void* ex = executor();
    if (ex && ex == this_thread_executor() && !ready())
      throw_wait_would_deadlock(what);
  }
  void wait() const {
    check_blocking_wait("Task::wait()");
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_; });
  }
  /// Register `h` to be resumed at resolution. False (do not suspend) if already resolved.
  bool suspend(std::coroutine_handle<> h) {
    std::lock_guard lock(mu_);
    if (done_)
      return false;
    waiter_ = h;
    return true;
  }
  /// Register a callback; runs now, on this thread, if already resolved.
  void on_complete(Callback cb) {
    {
      std::lock_guard lock(mu_);
      if (!done_) {
        callback_ = std::move(cb);
        return;
      }
    }
    cb(take_result());
  }
  /// Move the result out, or rethrow the error. Precondition: resolved; called at most once.
  T take() {
    std::lock_guard lock(mu_);
    if (error_)
      std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>)
      return std::move(*value_);
  }

 private:
  Result<Stored<T>> take_result() {
    try {
      if constexpr (std::is_void_v<T>) {
        take();
        return Stored<T>{};
      } else {
        return take();
      }
    } catch (const Error& e) {
      return e;
    } catch (const std::bad_alloc&) {
      return Error(ErrorCode::kOutOfMemory, "out of host memory");
    } catch (const std::exception& e) {
      return Error(ErrorCode::kInternal, e.what());
    } catch (...) {
      return Error(ErrorCode::kInternal, "unknown exception");
    }
  }

  template <class F>
  bool resolve(F&& store) {
    std::coroutine_handle<> waiter;
    Callback cb;
    {
      std::lock_guard lock(mu_);
      if (done_)
        return false;
      store();
      done_ = true;
      waiter = std::exchange(waiter_, {});
      cb = std::move(callback_);
      cv_.notify_all();  // under the lock: a waiter may destroy the Task (not this state) as soon as it wakes
    }
    if (dispatch_) {
      if (waiter)
        dispatch_([waiter] { waiter.resume(); });
      if (cb) {
        // std::function needs a copyable callable: the result travels in a shared_ptr.
        auto result = std::make_shared<Result<Stored<T>>>(take_result());
        dispatch_([cb = std::move(cb), result]() mutable { cb(std::move(*result)); });
      }
      return true;
    }
    if (waiter)
      waiter.resume();
    if (cb)
      cb(take_result());
    return true;
  }

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::optional<Stored<T>> value_;
  std::exception_ptr error_;
  std::coroutine_handle<> waiter_;
  Callback callback_;
  std::function<bool()> cancel_hook_;
  Dispatch dispatch_;
  std::atomic<const void*> executor_{nullptr};
};

/// What co_await on a Task<T> returns.
template <class T>
struct TaskAwaiter {
  std::shared_ptr<TaskState<T>> state;
  bool await_ready() const { return state->ready(); }
  template <class P>
  bool await_suspend(std::coroutine_handle<P> h) {
    // A Task coroutine records where it will be resumed (see TaskState::check_blocking_wait).
    if constexpr (requires { h.promise().note_resumer(state->resumer()); })
      h.promise().note_resumer(state->resumer());
    return state->suspend(h);
  }
  T await_resume() { return state->take(); }
};

/// Coroutine promise of Task<T>: starts eagerly, resolves the shared state after the body has finished and
/// the frame is gone (so whoever resumes never runs on a frame that is being torn down).
template <class T>
struct TaskPromiseBase {
  std::shared_ptr<TaskState<T>> state = std::make_shared<TaskState<T>>();
  std::optional<Stored<T>> result;
  std::exception_ptr error;

  std::suspend_never initial_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { error = std::current_exception(); }
  /// This coroutine is suspended on a task that `executor` resolves: that is where it resumes (and so where
  /// a blocking wait on it could never end).
  void note_resumer(const void* executor) noexcept {
    if (state)
      state->set_executor(executor);
  }
  template <class P>
  static auto final_awaiter() noexcept {
    struct Final {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<P> h) noexcept {
        auto& p = h.promise();
        auto st = std::move(p.state);
        auto err = std::move(p.error);
        std::optional<Stored<T>> res = std::move(p.result);
        h.destroy();
        if (err)
          st->set_error(std::move(err));
        else
          st->set_value(std::move(*res));
      }
      void await_resume() noexcept {}
    };
    return Final{};
  }
};

template <class T>
struct TaskPromise : TaskPromiseBase<T> {
  Task<T> get_return_object() noexcept;
  auto final_suspend() noexcept { return TaskPromiseBase<T>::template final_awaiter<TaskPromise>(); }
  void return_value(T v) { this->result.emplace(std::move(v)); }
};

template <>
struct TaskPromise<void> : TaskPromiseBase<void> {
  Task<void> get_return_object() noexcept;
  auto final_suspend() noexcept { return TaskPromiseBase<void>::final_awaiter<TaskPromise>(); }
  void return_void() { this->result.emplace(); }
};

}  // namespace detail

/// A move-only handle on an asynchronous result of type T (T may be void).
///
/// Two producers make Tasks: AsyncRuntime::run() (a request), and any coroutine returning Task<T> (it starts
/// running at once, on the calling thread, up to its first suspension; it is never lazily deferred).
/// Ownership: the result lives in state shared with the producer; a Task stays valid after the runtime that
/// made it is destroyed. Destroying an unconsumed Task detaches it: the work still runs to completion and
/// its result is dropped.
/// Consumption: exactly one of wait(), co_await or on_complete(); each makes valid() false.
/// Errors: wait() and co_await rethrow the failure (a vnpu::Error) stored by the producer; on_complete passes
/// it as a failed Result.
/// Threads: ready(), wait_for() and cancel() may be called from any thread, concurrently.
template <class T>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::TaskPromise<T>;
  using value_type = T;
  /// Callback for on_complete(): receives the value or the error.
  using Callback = typename detail::TaskState<T>::Callback;

  Task() = default;
  explicit Task(std::shared_ptr<detail::TaskState<T>> state) noexcept : state_(std::move(state)), cancel_(state_) {}
  Task(Task&&) noexcept = default;
  Task& operator=(Task&&) noexcept = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  /// False for a default-constructed or moved-from Task, and after it was consumed.
  [[nodiscard]] bool valid() const noexcept { return state_ != nullptr; }

  /// True once the result (or error) is available. Never blocks. Throws Error(kInvalidArgument) if !valid().
  [[nodiscard]] bool ready() const { return checked().ready(); }

  /// Block until the result is available, then return it; rethrows the stored vnpu::Error on failure.
  /// Consumes the task. Throws Error(kInvalidArgument) if !valid(), and, without waiting or consuming the
  /// task, if it is unresolved and this thread is the one that must resolve it (an AsyncRuntime's callback
  /// thread, for a task of that runtime or a coroutine suspended on one): that wait could never end. There,
  /// use co_await or on_complete() instead.
  T wait() {
    checked().wait();
    auto state = std::move(state_);
    return state->take();
  }

  /// Block for at most `timeout`; true if the result is available (then wait() returns at once).
  template <class Rep, class Period>
  [[nodiscard]] bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    return checked().wait_for(timeout);
  }

  /// Call `cb` once with the result. It runs on the thread that resolves the task (AsyncRuntime: its
  /// callback thread "vnpu-callback", never a device completion thread), or right here if the task is
  /// already resolved. Consumes the task. An exception escaping `cb` terminates the program.
  void on_complete(Callback cb) && {
    checked();
    auto state = std::move(state_);
    state->on_complete([cb = std::move(cb)](Result<detail::Stored<T>> r) noexcept { cb(std::move(r)); });
  }

  /// Ask the producer to cancel. Best-effort: returns true if the task will resolve with
  /// Error(kCancelled) (AsyncRuntime: the request had not reached the device, or it had and its result will
  /// be dropped); false if it already resolved or cannot be cancelled (a coroutine). Does not consume; may run
  /// concurrently with wait(), co_await or on_complete() on the same Task from another thread.
  bool cancel() { return cancel_ ? cancel_->cancel() : false; }

  /// A function that does what cancel() does, still usable after this Task was consumed (on_complete,
  /// co_await) or destroyed — for a binding that hands the result to a callback but keeps a cancel button.
  /// Returns a function that always returns false for an empty Task. Any thread.
  [[nodiscard]] std::function<bool()> canceller() const {
    if (!state_)
      return [] { return false; };
    return [s = state_] { return s->cancel(); };
  }

  /// co_await task: suspends until the result is available and yields it (or rethrows the error).
  /// Where the coroutine resumes: inline if the result is already there, otherwise on the thread that
  /// resolves the task (AsyncRuntime: its callback thread "vnpu-callback"). Consumes the task.
  auto operator co_await() && {
    checked();
    return detail::TaskAwaiter<T>{std::move(state_)};
  }

 private:
  detail::TaskState<T>& checked() const {
    if (!state_)
      throw Error(
          ErrorCode::kInvalidArgument,
          "vnpu::Task has no result: it is empty, moved-from or already consumed by wait()/co_await/on_complete");
    return *state_;
  }
  template <class U>
  friend const detail::TaskState<U>* detail::state_of(const Task<U>& task) noexcept;

  std::shared_ptr<detail::TaskState<T>> state_;  // null once consumed
  // The same state, for cancel(): never reset by consumption, so cancel() can race wait() and co_await.
  std::shared_ptr<detail::TaskState<T>> cancel_;
};

/// The state behind `task` (null if !valid()); for sync_wait's check.
template <class U>
const detail::TaskState<U>* detail::state_of(const Task<U>& task) noexcept {
  return task.state_.get();
}

template <class T>
Task<T> detail::TaskPromise<T>::get_return_object() noexcept {
  return Task<T>(this->state);
}
inline Task<void> detail::TaskPromise<void>::get_return_object() noexcept {
  return Task<void>(this->state);
}

}  // namespace vnpu
