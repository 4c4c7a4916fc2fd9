// SPDX-License-Identifier: MIT
/// \file
/// The coroutine kit: vnpu::Task<T> (task.h) is the eager coroutine type and the request handle;
/// vnpu::when_all() joins several tasks (like asyncio.gather); vnpu::sync_wait() drives an awaitable from
/// ordinary code; vnpu::Async<T> is a lazy coroutine type (starts when awaited) kept from v0.
#pragma once

#include <condition_variable>
#include <coroutine>
#include <exception>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <vnpu/task.h>

namespace vnpu {

template <class T>
class Async;

namespace detail {

template <class T>
struct AsyncResult {
  std::optional<T> value;
  void return_value(T v) { value.emplace(std::move(v)); }
  T get() { return std::move(*value); }
};
template <>
struct AsyncResult<void> {
  void return_void() {}
  void get() {}
};

template <class T>
struct AsyncPromise : AsyncResult<T> {
  std::coroutine_handle<> continuation;
  std::exception_ptr error;

  Async<T> get_return_object() noexcept;
  std::suspend_always initial_suspend() noexcept { return {}; }
  auto final_suspend() noexcept {
    struct Final {
      bool await_ready() noexcept { return false; }
      // Symmetric transfer: hand the thread straight to whoever awaited us.
      std::coroutine_handle<> await_suspend(std::coroutine_handle<AsyncPromise> h) noexcept {
        auto c = h.promise().continuation;
        return c ? c : std::noop_coroutine();
      }
      void await_resume() noexcept {}
    };
    return Final{};
  }
  void unhandled_exception() noexcept { error = std::current_exception(); }
};

}  // namespace detail

/// A lazy coroutine returning T: its body starts when it is co_awaited (or passed to sync_wait) and runs on
/// whichever threads its own co_awaits resume it on. Move-only; destroying it destroys the coroutine frame
/// (do not destroy one that is suspended inside a pending co_await). Exceptions propagate to the awaiter.
template <class T>
class [[nodiscard]] Async {
 public:
  using promise_type = detail::AsyncPromise<T>;

  explicit Async(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  Async(Async&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Async& operator=(Async&& o) noexcept {
    if (this != &o) {
      if (h_)
        h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Async(const Async&) = delete;
  Async& operator=(const Async&) = delete;
  ~Async() {
    if (h_)
      h_.destroy();
  }

  auto operator co_await() && noexcept {
    struct Awaiter {
      std::coroutine_handle<promise_type> h;
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> c) noexcept {
        h.promise().continuation = c;
        return h;
      }
      T await_resume() {
        if (h.promise().error)
          std::rethrow_exception(h.promise().error);
        return h.promise().get();
      }
    };
    return Awaiter{h_};
  }

 private:
  std::coroutine_handle<promise_type> h_;
};

template <class T>
Async<T> detail::AsyncPromise<T>::get_return_object() noexcept {
  return Async<T>(std::coroutine_handle<AsyncPromise>::from_promise(*this));
}

namespace detail {

/// One-shot event for sync_wait.
class SyncEvent {
 public:
  void set() {
    // Notify under the lock: the waiter owns this object and destroys it as soon as it sees set_.
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

/// The driver coroutine of sync_wait: runs eagerly, signals the event after its body finished.
struct SyncDriver {
  struct promise_type {
    SyncEvent* event = nullptr;
    SyncDriver get_return_object() noexcept {
      return SyncDriver{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    auto final_suspend() noexcept {
      struct Final {
        bool await_ready() noexcept { return false; }
        // Signal only once suspended, so sync_wait may destroy the frame as soon as it wakes.
        void await_suspend(std::coroutine_handle<promise_type> h) noexcept { h.promise().event->set(); }
        void await_resume() noexcept {}
      };
      return Final{};
    }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }  // the body catches everything
  };
  std::coroutine_handle<promise_type> h;
};

template <class A>
using AwaitResult = decltype(std::declval<A>().operator co_await().await_resume());

template <class A>
struct IsTask : std::false_type {};
template <class T>
struct IsTask<Task<T>> : std::true_type {};

}  // namespace detail

/// Block the calling thread until `awaitable` (an Async<T> or a Task<T>, passed as an rvalue) completes, and
/// return its result or rethrow its exception. Must not be called on a thread the awaitable needs in order to
/// complete: for an unresolved Task of an AsyncRuntime (or a Task coroutine suspended on one) on that
/// runtime's callback thread it throws Error(kInvalidArgument) at once instead of waiting forever.
template <class A>
detail::AwaitResult<A&&> sync_wait(A&& awaitable) {
  using R = detail::AwaitResult<A&&>;
  if constexpr (detail::IsTask<std::remove_cvref_t<A>>::value) {
    if (const auto* st = detail::state_of(awaitable))
      st->check_blocking_wait("sync_wait()");
  }
  detail::SyncEvent event;
  std::exception_ptr error;
  std::conditional_t<std::is_void_v<R>, bool, std::optional<std::remove_reference_t<R>>> result{};
  auto body = [&]() -> detail::SyncDriver {
    try {
      if constexpr (std::is_void_v<R>) {
        co_await std::forward<A>(awaitable);
      } else {
        result.emplace(co_await std::forward<A>(awaitable));
      }
    } catch (...) {
      error = std::current_exception();
    }
  };
  detail::SyncDriver driver = body();
  driver.h.promise().event = &event;
  driver.h.resume();
  event.wait();
  driver.h.destroy();
  if (error)
    std::rethrow_exception(error);
  if constexpr (!std::is_void_v<R>)
    return std::move(*result);
}

/// Await every task in order and return their results in the same order (like asyncio.gather). The tasks
/// already run concurrently (AsyncRuntime requests and Task coroutines start eagerly); when_all only joins.
/// If one fails, its error is rethrown by the joined task as soon as it is reached; the remaining tasks keep
/// running detached and their results are dropped. Resumes where the last awaited task resolved.
template <class T>
Task<std::vector<T>> when_all(std::vector<Task<T>> tasks) {
  std::vector<T> out;
  out.reserve(tasks.size());
  for (auto& t : tasks)
    out.push_back(co_await std::move(t));
  co_return out;
}

/// when_all for tasks without a result.
inline Task<void> when_all(std::vector<Task<void>> tasks) {
  for (auto& t : tasks)
    co_await std::move(t);
}

/// when_all over tasks of different types: a tuple of their results.
template <class... Ts>
requires(sizeof...(Ts) >= 2 && (!std::is_void_v<Ts> && ...)) Task<std::tuple<Ts...>> when_all(Task<Ts>... tasks) {
  co_return std::tuple<Ts...>{co_await std::move(tasks)...};
}

}  // namespace vnpu
