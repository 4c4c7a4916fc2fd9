// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Task<T>: the handle on one asynchronous request. Wait on it (wait, wait_for, ready) or co_await it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include <vnpu/error.h>

namespace vnpu {

namespace detail {

/// Completion state shared by a Task and the runtime that resolves it. Resolved exactly once.
template <class T>
class TaskState {
 public:
  /// Resolve with a value (producer side). Resumes an awaiting coroutine on the calling thread.
  void set_value(T value) { resolve([&] { value_.emplace(std::move(value)); }); }
  /// Resolve with an error (producer side).
  void set_error(std::exception_ptr error) { resolve([&] { error_ = std::move(error); }); }

  bool ready() const {
    std::lock_guard lock(mu_);
    return done_;
  }
  void wait() const {
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
    if (done_) return false;
    waiter_ = h;
    return true;
  }
  /// Move the result out, or rethrow the error. Precondition: resolved; called at most once.
  T take() {
    std::lock_guard lock(mu_);
    if (error_) std::rethrow_exception(error_);
    return std::move(*value_);
  }

 private:
  template <class F>
  void resolve(F&& store) {
    std::coroutine_handle<> waiter;
    {
      std::lock_guard lock(mu_);
      if (done_) return;  // resolved once; a late duplicate is a runtime bug, never a double resume
      store();
      done_ = true;
      waiter = std::exchange(waiter_, {});
    }
    cv_.notify_all();
    if (waiter) waiter.resume();
  }

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::optional<T> value_;
  std::exception_ptr error_;
  std::coroutine_handle<> waiter_;
};

}  // namespace detail

/// A move-only handle on an asynchronous result of type T.
///
/// Ownership: the result lives in state shared with the producer (the runtime); a Task stays valid after the
/// runtime that made it is destroyed. Destroying a Task before the result arrives detaches it: the work still
/// runs to completion and its result is dropped.
/// Errors: wait() and co_await rethrow the failure (a vnpu::Error) stored by the producer.
/// Threads: ready() and wait_for() may be called from any thread; wait() / co_await consume the result and
/// must be used once, by one thread.
template <class T>
class [[nodiscard]] Task {
 public:
  Task() = default;
  explicit Task(std::shared_ptr<detail::TaskState<T>> state) noexcept : state_(std::move(state)) {}
  Task(Task&&) noexcept = default;
  Task& operator=(Task&&) noexcept = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  /// False for a default-constructed or moved-from Task, and after wait() / co_await consumed it.
  [[nodiscard]] bool valid() const noexcept { return state_ != nullptr; }

  /// True once the result (or error) is available. Never blocks. Throws Error(kInvalidArgument) if !valid().
  [[nodiscard]] bool ready() const { return checked().ready(); }

  /// Block until the result is available, then return it; rethrows the stored vnpu::Error on failure.
  /// Consumes the task (valid() becomes false). Throws Error(kInvalidArgument) if !valid().
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

  /// co_await task: suspends until the result is available and yields it (or rethrows the error).
  /// Where the coroutine resumes: inline on the awaiting thread if the result is already there, otherwise on
  /// the thread that resolves the task (for AsyncRuntime: its completion thread; see async_runtime.h).
  auto operator co_await() && {
    struct Awaiter {
      std::shared_ptr<detail::TaskState<T>> state;
      bool await_ready() const { return state->ready(); }
      bool await_suspend(std::coroutine_handle<> h) { return state->suspend(h); }
      T await_resume() { return state->take(); }
    };
    checked();
    return Awaiter{std::move(state_)};
  }

 private:
  detail::TaskState<T>& checked() const {
    if (!state_) throw Error(ErrorCode::kInvalidArgument, "vnpu::Task has no result: it is empty, moved-from or already consumed by wait()/co_await");
    return *state_;
  }
  std::shared_ptr<detail::TaskState<T>> state_;
};

}  // namespace vnpu
