// SPDX-License-Identifier: MIT
// Runtime semantics, on every backend (VNPU_BACKEND): the callback thread, where coroutines resume,
// when_all, errors from the device (bad program, MMU fault), timeouts, cancellation, owned and borrowed
// tensors, the staging-buffer recycling of the pipeline, several devices, the synchronous Runtime.
#include <gtest/gtest.h>

#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <vnpu/vnpu.h>

#include "vnpu_isa.h"

#include <vnpu/model_file.h>

namespace {

using namespace std::chrono_literals;

std::string backend() {
  const char* b = std::getenv("VNPU_BACKEND");
  return b && *b ? b : "sim";
}

bool have_device(int i) {
  if (backend() != "kernel")
    return true;
  struct stat st {};
  return ::stat(("/dev/accel/accel" + std::to_string(i)).c_str(), &st) == 0;
}

std::string thread_name() {
  char buf[32] = {};
  pthread_getname_np(pthread_self(), buf, sizeof buf);
  return buf;
}

class Semantics : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_device(0))
      GTEST_SKIP() << "no /dev/accel/accel0: the kernel backend needs the VM";
  }
  static vnpu::RuntimeOptions opts(int parallel = 1, int depth = 0) {
    vnpu::RuntimeOptions o;
    o.backend = backend();
    o.parallel = parallel;
    o.max_in_flight = depth;
    o.two_jobs = std::getenv("VNPU_TWO_JOBS") != nullptr;  // the meson test runtime_test-two-jobs
    const char* s = std::getenv("VNPU_SUBMIT");
    if (s && std::string(s) == "ioctl")
      o.submit_mode = vnpu::SubmitMode::kIoctl;
    return o;
  }
  static vnpu::CompiledModel synth(std::chrono::nanoseconds compute, uint64_t bytes = 4096) {
    vnpu::SyntheticSpec s;
    s.input_bytes = bytes;
    s.output_bytes = bytes;
    s.compute = compute;
    return vnpu::CompiledModel::synthetic(s);
  }
  static vnpu::Tensor input_for(const vnpu::CompiledModel& m, float base = 0.0f) {
    vnpu::Tensor t(m.inputs()[0].shape);
    auto d = t.data();
    for (size_t i = 0; i < d.size(); ++i)
      d[i] = base + static_cast<float>(i);
    return t;
  }
};

vnpu::MatmulModel identity_model(int64_t n) {
  vnpu::Tensor w({n, n});
  for (int64_t i = 0; i < n; ++i)
    w.data()[static_cast<size_t>(i * n + i)] = 1.0f;
  return vnpu::MatmulModel(n, std::move(w));
}

// ---- threads -------------------------------------------------------------------------------------------
// A request that cannot finish before `gate` opens (its prepare callback waits for it): a callback attached
// before that never runs inline on the attaching thread.
vnpu::Task<vnpu::Outputs> held_until(vnpu::AsyncRuntime& rt, std::shared_future<void> gate) {
  return rt.run([gate](std::span<vnpu::Tensor> in) {
    gate.wait();
    std::fill(in[0].data().begin(), in[0].data().end(), 0.0f);
  });
}

TEST_F(Semantics, CallbacksRunOnTheCallbackThread) {
  vnpu::AsyncRuntime rt(identity_model(8), opts());
  std::promise<std::string> where;
  std::promise<bool> ok;
  std::promise<void> attached;
  held_until(rt, attached.get_future().share()).on_complete([&](vnpu::Result<vnpu::Outputs> r) {
    where.set_value(thread_name());
    ok.set_value(r.ok());
  });
  attached.set_value();
  EXPECT_EQ(where.get_future().get(), "vnpu-callback");
  EXPECT_TRUE(ok.get_future().get());
}

TEST_F(Semantics, CallbackOnAResolvedTaskRunsInline) {
  vnpu::AsyncRuntime rt(identity_model(4), opts());
  auto task = rt.run(vnpu::Tensor({4, 4}));
  ASSERT_TRUE(task.wait_for(30s));
  std::thread::id ran_on;
  std::move(task).on_complete([&](vnpu::Result<vnpu::Outputs>) { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_FALSE(task.valid());
}

// Suspends on a request held until `gate` opens, so that it resumes where the runtime resumes it (not inline).
vnpu::Task<std::string> resume_thread(vnpu::AsyncRuntime& rt, std::shared_future<void> gate) {
  auto out = co_await held_until(rt, std::move(gate));
  (void)out;
  co_return thread_name();
}

TEST_F(Semantics, CoroutinesResumeOnTheCallbackThread) {
  vnpu::AsyncRuntime rt(identity_model(16), opts());
  std::promise<void> suspended;
  auto t = resume_thread(rt, suspended.get_future().share());
  suspended.set_value();
  EXPECT_EQ(t.wait(), "vnpu-callback");
}

// The application's own executor for RuntimeOptions::executor: `n` threads named "app-exec" running posted
// closures in order. Declared before the runtime that uses it, so that it outlives the runtime.
class AppExecutor {
 public:
  explicit AppExecutor(int n) {
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "app-exec");
        std::unique_lock lock(mu_);
        for (;;) {
          cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
          if (queue_.empty())
            return;
          auto fn = std::move(queue_.front());
          queue_.erase(queue_.begin());
          lock.unlock();
          fn();
          lock.lock();
        }
      });
  }
  ~AppExecutor() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      t.join();
  }
  std::function<void(std::function<void()>)> as_option() {
    return [this](std::function<void()> fn) {
      {
        std::lock_guard lock(mu_);
        queue_.push_back(std::move(fn));
      }
      cv_.notify_one();
    };
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

TEST_F(Semantics, ContinuationsRunOnTheApplicationsExecutor) {
  AppExecutor pool(2);
  auto o = opts();
  o.executor = pool.as_option();
  vnpu::AsyncRuntime rt(identity_model(16), o);
  std::promise<std::string> where;
  std::promise<void> attached;
  held_until(rt, attached.get_future().share()).on_complete([&](vnpu::Result<vnpu::Outputs> r) {
    EXPECT_TRUE(r.ok());
    where.set_value(thread_name());
  });
  attached.set_value();
  EXPECT_EQ(where.get_future().get(), "app-exec");
  std::promise<void> suspended;
  auto t = resume_thread(rt, suspended.get_future().share());
  suspended.set_value();
  EXPECT_EQ(t.wait(), "app-exec");
}

// Runs one request whose continuation (on the callback thread, or on the executor) blocks until `gate`
// opens; returns once it is blocked.
void block_a_continuation(vnpu::AsyncRuntime& rt, std::shared_future<void> gate) {
  auto entered = std::make_shared<std::promise<void>>();  // outlives this call: set_value may still run
  auto blocked = entered->get_future();
  rt.run(vnpu::Tensor({8, 8})).on_complete([entered, gate](vnpu::Result<vnpu::Outputs>) {
    entered->set_value();
    gate.wait();
  });
  blocked.wait();
}

// A callback that blocks occupies one executor thread: the other requests still resolve and continue.
TEST_F(Semantics, ABlockedContinuationOnTheExecutorStallsNoOtherRequest) {
  AppExecutor pool(2);
  auto o = opts(1, 2);
  o.executor = pool.as_option();
  vnpu::AsyncRuntime rt(identity_model(8), o);
  std::promise<void> open;
  block_a_continuation(rt, open.get_future().share());
  std::atomic<int> done{0};
  for (int i = 0; i < 6; ++i)
    rt.run(vnpu::Tensor({8, 8})).on_complete([&](vnpu::Result<vnpu::Outputs> r) { done += r.ok() ? 1 : 0; });
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (done < 6 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(done.load(), 6) << "continuations queued behind a blocked one";
  open.set_value();
  rt.wait_all();
}

// Regression: a request's slot was freed on the callback thread, so one slow callback there held every
// later request off the device (they waited for slots only that thread could free).
TEST_F(Semantics, ASlowCallbackDoesNotHoldTheDeviceBack) {
  vnpu::AsyncRuntime rt(identity_model(8), opts(1, 2));
  std::promise<void> open;
  block_a_continuation(rt, open.get_future().share());
  // A request is prepared only once it has a slot. While the callback thread is blocked, the completion
  // threads free the slots of finished requests, so twice the slots get prepared and run; no more, since
  // the device runs ahead of the callback thread by at most max_in_flight requests (back-pressure).
  std::atomic<int> prepared{0};
  std::vector<vnpu::Task<vnpu::Outputs>> more;
  for (int i = 0; i < 6; ++i)
    more.push_back(rt.run([&](std::span<vnpu::Tensor> in) {
      std::fill(in[0].data().begin(), in[0].data().end(), 1.0f);
      ++prepared;
    }));
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (prepared < 4 && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(prepared.load(), 4) << "requests waited for slots held by finished requests, or ran beyond the bound";
  EXPECT_FALSE(more.back().ready());  // ...and they resolve on that thread once it is free
  open.set_value();
  for (auto& t : more)
    EXPECT_EQ(t.wait()[0].data()[0], 1.0f);
}

vnpu::Task<float> chained(vnpu::AsyncRuntime& rt, float v) {
  const std::vector<int64_t> shape{4, 4};
  vnpu::Tensor x(shape);
  for (float& e : x.data())
    e = v;
  auto a = co_await rt.async_run(std::move(x));
  auto b = co_await rt.async_run(a[0]);  // identity twice, from the callback thread
  co_return b[0].data()[0];
}

TEST_F(Semantics, WhenAllGathersResultsInOrder) {
  vnpu::AsyncRuntime rt(identity_model(4), opts(2));
  std::vector<vnpu::Task<float>> tasks;
  for (int i = 0; i < 12; ++i)
    tasks.push_back(chained(rt, static_cast<float>(i)));
  auto all = vnpu::sync_wait(vnpu::when_all(std::move(tasks)));
  ASSERT_EQ(all.size(), 12u);
  for (int i = 0; i < 12; ++i)
    EXPECT_EQ(all[static_cast<size_t>(i)], static_cast<float>(i));
}

TEST_F(Semantics, WhenAllOfDifferentTypesMakesATuple) {
  vnpu::AsyncRuntime rt(identity_model(4), opts());
  auto [a, b] = vnpu::when_all(chained(rt, 1.0f), rt.run(vnpu::Tensor({4, 4}))).wait();
  EXPECT_EQ(a, 1.0f);
  EXPECT_EQ(b[0].shape(), (std::vector<int64_t>{4, 4}));
}

TEST_F(Semantics, WhenAllRethrowsTheFirstFailure) {
  vnpu::AsyncRuntime rt(identity_model(4), opts());
  auto fails = []() -> vnpu::Task<float> {
    throw vnpu::Error(vnpu::ErrorCode::kInternal, "boom");
    co_return 0.0f;
  };
  std::vector<vnpu::Task<float>> tasks;
  tasks.push_back(chained(rt, 1.0f));
  tasks.push_back(fails());
  EXPECT_THROW(vnpu::when_all(std::move(tasks)).wait(), vnpu::Error);
}

// ---- the callback thread: waits and destruction there ------------------------------------------------------
// wait() / sync_wait() on a Task of the same runtime from its callback thread waited forever (the task
// resolves on that very thread); now it throws kInvalidArgument at once.
TEST_F(Semantics, BlockingWaitOnTheCallbackThreadThrowsInsteadOfDeadlocking) {
  auto rt = std::make_unique<vnpu::AsyncRuntime>(identity_model(4), opts());
  auto codes = std::make_shared<std::promise<std::vector<int>>>();
  auto* raw = rt.get();
  rt->run(vnpu::Tensor({4, 4})).on_complete([raw, codes](vnpu::Result<vnpu::Outputs>) {
    std::vector<int> got;
    auto try_wait = [&](auto&& fn) {
      try {
        fn();
        got.push_back(-1);
      } catch (const vnpu::Error& e) {
        got.push_back(static_cast<int>(e.code()));
      }
    };
    try_wait([&] { (void)raw->run(vnpu::Tensor({4, 4})).wait(); });
    try_wait([&] { (void)vnpu::sync_wait(raw->run(vnpu::Tensor({4, 4}))); });
    // A coroutine suspended on a task of this runtime resumes here too.
    try_wait([&] { (void)chained(*raw, 1.0f).wait(); });
    codes->set_value(got);
  });
  auto f = codes->get_future();
  if (f.wait_for(30s) != std::future_status::ready) {
    (void)rt.release();  // its callback thread is stuck: leak it rather than hang in its destructor
    FAIL() << "wait() on the callback thread deadlocked";
  }
  const int invalid = static_cast<int>(vnpu::ErrorCode::kInvalidArgument);
  EXPECT_EQ(f.get(), (std::vector<int>{invalid, invalid, invalid}));
  // The requests it could not wait for still complete.
  EXPECT_NO_THROW((void)rt->run(vnpu::Tensor({4, 4})).wait());
}

// Destroying the runtime from one of its callbacks deadlocked (the destructor waited for the callback thread
// it was running on), then aborted on joining itself.
TEST_F(Semantics, DestroyingTheRuntimeFromItsCallbackDrainsAndReturns) {
  auto rt = std::make_shared<std::unique_ptr<vnpu::AsyncRuntime>>(
      std::make_unique<vnpu::AsyncRuntime>(synth(std::chrono::milliseconds(5)), opts(1, 2)));
  const auto model = (*rt)->model();
  std::vector<vnpu::Task<vnpu::Outputs>> others;
  for (int i = 0; i < 6; ++i)
    others.push_back((*rt)->run(input_for(model)));
  auto destroyed = std::make_shared<std::promise<void>>();
  (*rt)->run(input_for(model)).on_complete([rt, destroyed](vnpu::Result<vnpu::Outputs>) {
    rt->reset();
    destroyed->set_value();
  });
  ASSERT_EQ(destroyed->get_future().wait_for(30s), std::future_status::ready)
      << "destroying the runtime from its callback thread hung";
  for (auto& t : others) {
    ASSERT_TRUE(t.wait_for(30s)) << "a request of the destroyed runtime never resolved";
    try {
      (void)t.wait();
    } catch (const vnpu::Error& e) {
      EXPECT_EQ(e.code(), vnpu::ErrorCode::kCancelled) << e.what();
    }
  }
}

// ---- completion order ------------------------------------------------------------------------------------
TEST_F(Semantics, EveryRequestResolvesOnceWithItsOwnResult) {
  vnpu::AsyncRuntime rt(identity_model(8), opts(2, 3));
  std::atomic<int> calls{0};
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 40; ++i) {
    vnpu::Tensor x({8, 8});
    for (float& e : x.data())
      e = static_cast<float>(i);
    tasks.push_back(rt.run(std::move(x)));
  }
  for (int i = 0; i < 40; ++i) {
    auto out = tasks[static_cast<size_t>(i)].wait();
    EXPECT_EQ(out[0].data()[63], static_cast<float>(i)) << "request " << i << " got another request's result";
    calls++;
  }
  EXPECT_EQ(calls.load(), 40);
}

// ---- errors ----------------------------------------------------------------------------------------------
TEST_F(Semantics, BadShapeOrCountIsRejectedAtRunWithTheName) {
  vnpu::AsyncRuntime rt(identity_model(4), opts());
  try {
    (void)rt.run(vnpu::Tensor({4, 5}));
    FAIL() << "accepted a [4,5] input";
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4,4]"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)rt.run(vnpu::Inputs{}), vnpu::Error);
  std::vector<vnpu::Tensor> outs{vnpu::Tensor({4, 3})};
  EXPECT_THROW((void)rt.run(vnpu::Inputs{vnpu::Tensor({4, 4})}, std::move(outs)), vnpu::Error);
}

TEST_F(Semantics, TimeoutSurfacesAtWaitAndTheRuntimeStaysUsable) {
  auto o = opts();
  o.timeout = 20ms;
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(400)), o);
  auto slow = rt.run(input_for(rt.model()));
  try {
    (void)slow.wait();
    FAIL() << "a 400 ms request finished within a 20 ms timeout";
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kTimeout) << e.what();
  }
}

// A timeout resolved a request while its prep thread still held (and read) the caller's borrowed input, so a
// caller freeing that memory on the timeout error left the prep thread reading freed memory. The task now
// resolves only once the prep thread has finished with the inputs (the synthetic model's host prep, 600 ms,
// works on the inputs it borrowed).
TEST_F(Semantics, TimeoutWaitsUntilThePrepThreadIsDoneWithTheInputs) {
  vnpu::SyntheticSpec spec;
  spec.host_prep = std::chrono::milliseconds(600);
  auto o = opts();
  o.timeout = 100ms;
  vnpu::AsyncRuntime rt(vnpu::CompiledModel::synthetic(spec), o);
  std::vector<float> mem(rt.model().inputs()[0].size_bytes / sizeof(float), 1.0f);
  const auto t0 = std::chrono::steady_clock::now();
  auto t = rt.run(vnpu::Tensor::borrow(rt.model().inputs()[0].shape, std::span<const float>(mem)));
  try {
    (void)t.wait();
    FAIL() << "a request with 600 ms of host prep finished within a 100 ms timeout";
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kTimeout) << e.what();
  }
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(600))
      << "the task resolved while the prep thread still borrowed its input";
}

// Timeouts were checked only when the callback queue was empty: behind slow callbacks, overdue requests
// resolved with their (late) results instead of kTimeout.
TEST_F(Semantics, TimeoutsFireWhileTheCallbackThreadIsBusy) {
  constexpr int kRequests = 10;
  std::mutex mu;  // before the runtime: its callbacks use them until it is destroyed
  std::condition_variable cv;
  int resolved = 0, timed_out = 0;
  auto o = opts(1, 16);
  o.timeout = 300ms;
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(20)), o);
  for (int i = 0; i < kRequests; ++i)
    rt.run(input_for(rt.model())).on_complete([&](vnpu::Result<vnpu::Outputs> r) {
      {
        std::lock_guard lock(mu);
        timed_out += !r.ok() && r.error().code() == vnpu::ErrorCode::kTimeout;
        ++resolved;
        cv.notify_all();
      }
      std::this_thread::sleep_for(100ms);  // a slow callback: the queue behind it grows
    });
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return resolved == kRequests; }));
  // 10 callbacks of 100 ms each cannot all start within 300 ms of run(): the later requests are overdue.
  EXPECT_GE(timed_out, 1) << "no request timed out although most resolved long after their deadline";
}

// Every request left an entry in the deadline map until its deadline passed, done or not: the map grew with
// request rate × timeout.
TEST_F(Semantics, FinishedRequestsDisarmTheirTimeouts) {
  auto o = opts(2, 4);
  o.timeout = std::chrono::hours(1);
  vnpu::AsyncRuntime rt(identity_model(4), o);
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 200; ++i)
    tasks.push_back(rt.run(vnpu::Tensor({4, 4})));
  // (No mid-run comparison of the two counters: requests finish between the two reads, so it is racy.)
  for (auto& t : tasks)
    (void)t.wait();
  EXPECT_EQ(rt.in_flight(), 0u);
  EXPECT_EQ(rt.timeouts_armed(), 0u) << "finished requests still hold deadline entries";
}

// cancel() read the Task's state pointer while wait() on another thread moved it out (a data race on the
// Task object; ThreadSanitizer reports it).
TEST_F(Semantics, CancelMayRaceWaitOnTheSameTask) {
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(2)), opts(1, 2));
  for (int i = 0; i < 20; ++i) {
    auto t = rt.run(input_for(rt.model()));
    std::atomic<bool> go{false};
    std::thread canceller([&] {
      while (!go) {
      }
      for (int k = 0; k < 50; ++k)
        (void)t.cancel();
    });
    go = true;
    try {
      (void)t.wait();
    } catch (const vnpu::Error& e) {
      EXPECT_EQ(e.code(), vnpu::ErrorCode::kCancelled) << e.what();
    }
    canceller.join();
    EXPECT_FALSE(t.valid());
    EXPECT_FALSE(t.cancel());
  }
}

// The cancel hook captured the runtime's `this`: a cancel() racing the destructor could lock a destroyed
// mutex (the request it reached was still held by the destructor).
TEST_F(Semantics, CancelMayRaceTheDestructor) {
  for (int round = 0; round < 10; ++round) {
    auto rt = std::make_unique<vnpu::AsyncRuntime>(synth(std::chrono::milliseconds(1)), opts(1, 1));
    std::vector<vnpu::Task<vnpu::Outputs>> tasks;
    for (int i = 0; i < 8; ++i)
      tasks.push_back(rt->run(input_for(rt->model())));
    std::atomic<bool> stop{false};
    std::thread canceller([&] {
      while (!stop)
        for (auto& t : tasks)
          (void)t.cancel();
    });
    rt.reset();
    stop = true;
    canceller.join();
    for (auto& t : tasks)
      EXPECT_TRUE(t.ready()) << "a request of the destroyed runtime is unresolved";
  }
}

TEST_F(Semantics, CancelDropsAQueuedRequest) {
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(30)), opts(1, 1));
  auto first = rt.run(input_for(rt.model()));
  auto second = rt.run(input_for(rt.model()));
  auto third = rt.run(input_for(rt.model()));
  EXPECT_TRUE(third.cancel());
  try {
    (void)third.wait();
    FAIL() << "a cancelled request produced a result";
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kCancelled) << e.what();
  }
  EXPECT_NO_THROW((void)first.wait());
  EXPECT_NO_THROW((void)second.wait());
  EXPECT_FALSE(first.cancel()) << "cancelling a consumed task";
}

TEST_F(Semantics, CancelOfARunningRequestResolvesItCancelled) {
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(100)), opts(1, 1));
  auto t = rt.run(input_for(rt.model()));
  std::this_thread::sleep_for(10ms);  // let it reach the device (either way it must resolve cancelled)
  EXPECT_TRUE(t.cancel());
  EXPECT_THROW((void)t.wait(), vnpu::Error);
  // The slot comes back once the device is done with it.
  EXPECT_NO_THROW((void)rt.run(input_for(rt.model())).wait());
}

TEST_F(Semantics, DeviceFaultOfABadProgramSurfacesAsDeviceFault) {
  auto dev = vnpu::Device::open({backend(), 0}).value();
  ASSERT_TRUE(dev->info().caps & (1u << 3)) << "the device does not offer EXEC (VNPU_CAP_EXEC)";
  // A program whose header is garbage: the device must reject it, not crash or hang.
  auto prog = dev->alloc_device(4096).value();
  auto table = dev->alloc_device(8).value();
  auto host = dev->alloc_host(4096).value();
  std::memset(host.data(), 0xab, 4096);
  ASSERT_TRUE(dev->run({{vnpu::Command::copy_to_device(host, 0, prog, 0, 4096)}}).value().status.ok());
  auto r = dev->run({{vnpu::Command::exec(prog, 0, 256, table, 0, 1)}}).value();
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.error().code(), vnpu::ErrorCode::kDeviceFault) << r.status.error().what();
}

// A one-op program: y[n] = COPY(x[n]); bindings 0 weights (unused), 1 input, 2 output.
std::vector<uint8_t> copy_program(uint32_t n_in, uint32_t n_out) {
  std::vector<uint8_t> p(80 + 3 * 16 + 2 * 48 + 24, 0);
  vnpu_isa_program h{};
  h.magic = VNPU_ISA_PROGRAM_MAGIC;
  h.version_major = VNPU_ISA_VERSION_MAJOR;
  h.header_size = sizeof h;
  h.num_bindings = 3;
  h.num_tensors = 2;
  h.num_ops = 1;
  h.bindings_offset = 80;
  h.tensors_offset = 128;
  h.ops_offset = 224;
  h.ops_size = 24;
  h.total_size = p.size();
  std::memcpy(p.data(), &h, sizeof h);
  vnpu_isa_binding b[3] = {
      {VNPU_ISA_BIND_WEIGHTS, 0, 64}, {VNPU_ISA_BIND_INPUT, 0, n_in * 4ull}, {VNPU_ISA_BIND_OUTPUT, 0, n_out * 4ull}};
  std::memcpy(p.data() + 80, b, sizeof b);
  vnpu_isa_tensor t[2]{};
  t[0].binding = 1;
  t[0].rank = 1;
  t[0].dims[0] = n_in;
  t[1].binding = 2;
  t[1].rank = 1;
  t[1].dims[0] = n_out;
  std::memcpy(p.data() + 128, t, sizeof t);
  vnpu_isa_op op{};
  op.opcode = VNPU_ISA_OP_COPY;
  op.num_inputs = 1;
  op.num_outputs = 1;
  op.size = 24;
  std::memcpy(p.data() + 224, &op, sizeof op);
  const uint32_t idx[2] = {0, 1};
  std::memcpy(p.data() + 240, idx, sizeof idx);
  return p;
}

vnpu::CompiledModel copy_model(uint32_t n_in, uint32_t n_out) {
  vnpu::ModelFile f;
  f.set_program(copy_program(n_in, n_out));
  f.set_weights(std::vector<uint8_t>(64, 0));
  vnpu::TensorSpec in{"x", 0, {static_cast<int64_t>(n_in)}, 1, 0, n_in * 4ull};
  vnpu::TensorSpec out{"y", 0, {static_cast<int64_t>(n_out)}, 2, 0, n_out * 4ull};
  f.add_input(in);
  f.add_output(out);
  const auto bytes = f.serialize();
  return vnpu::CompiledModel::from_memory(bytes, "copy_model");
}

TEST_F(Semantics, ExecRunsACompiledProgram) {
  auto model = copy_model(256, 256);
  EXPECT_EQ(model.kind(), "exec");
  vnpu::AsyncRuntime rt(model, opts(2));
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 8; ++i)
    tasks.push_back(rt.run(input_for(model, static_cast<float>(i * 1000))));
  for (int i = 0; i < 8; ++i) {
    auto out = tasks[static_cast<size_t>(i)].wait();
    EXPECT_TRUE(out.at("y") == input_for(model, static_cast<float>(i * 1000)));
  }
}

TEST_F(Semantics, InvalidProgramFailsAtWaitNotAtRun) {
  // Element counts differ: the container is well-formed, the device rejects the op.
  vnpu::CompiledModel model = copy_model(64, 65);
  vnpu::AsyncRuntime rt(model, opts());
  auto t = rt.run(input_for(model));
  try {
    (void)t.wait();
    FAIL() << "the device accepted a COPY with mismatched element counts";
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kDeviceFault) << e.what();
  }
  // One failed request does not break the runtime.
  auto again = rt.run(input_for(model));
  EXPECT_THROW((void)again.wait(), vnpu::Error);
}

TEST_F(Semantics, MmuFaultReportsTheFaultingAddress) {
  auto dev = vnpu::Device::open({backend(), 0}).value();
  auto prog_bytes = copy_program(16, 16);
  auto prog = dev->alloc_device(prog_bytes.size()).value();
  auto table = dev->alloc_device(24).value();
  auto host = dev->alloc_host(4096).value();
  std::memcpy(host.data(), prog_bytes.data(), prog_bytes.size());
  const uint64_t bogus[3] = {prog.device_address(), 0x7000'0000'0000ull, prog.device_address()};
  std::memcpy(static_cast<char*>(host.data()) + 2048, bogus, sizeof bogus);
  ASSERT_TRUE(dev->run({{vnpu::Command::copy_to_device(host, 0, prog, 0, prog_bytes.size()),
                         vnpu::Command::copy_to_device(host, 2048, table, 0, 24)}})
                  .value()
                  .status.ok());
  auto r = dev->run({{vnpu::Command::exec(prog, 0, prog_bytes.size(), table, 0, 3)}}).value();
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.error().code(), vnpu::ErrorCode::kDeviceFault) << r.status.error().what();
  EXPECT_NE(std::string(r.status.error().what()).find("MMU"), std::string::npos) << r.status.error().what();
}

TEST_F(Semantics, LoadRejectsDamagedFiles) {
  std::vector<uint8_t> junk(200, 7);
  try {
    (void)vnpu::CompiledModel::from_memory(junk, "junk.vnpu");
    FAIL();
  } catch (const vnpu::Error& e) {
    EXPECT_EQ(e.code(), vnpu::ErrorCode::kInvalidArgument);
  }
  EXPECT_THROW((void)vnpu::CompiledModel::load("/nonexistent/m.vnpu"), vnpu::Error);
}

// ---- tensors ---------------------------------------------------------------------------------------------
TEST_F(Semantics, BorrowedInputsAndOutputsUseCallerMemory) {
  vnpu::AsyncRuntime rt(identity_model(8), opts());
  std::vector<float> in(64), out(64, -1.0f);
  for (size_t i = 0; i < in.size(); ++i)
    in[i] = static_cast<float>(i) * 0.5f;
  auto x = vnpu::Tensor::borrow({8, 8}, std::span<const float>(in));
  auto y = vnpu::Tensor::borrow({8, 8}, std::span<float>(out));
  std::vector<vnpu::Tensor> outs;
  outs.push_back(std::move(y));
  auto result = rt.run(vnpu::Inputs{x}, std::move(outs)).wait();
  EXPECT_EQ(out, in) << "the result must land in the caller's buffer";
  EXPECT_TRUE(result[0].borrowed());
  EXPECT_EQ(result[0].data().data(), out.data());
}

TEST_F(Semantics, ReadOnlyBorrowedTensorsCannotBeWritten) {
  const std::vector<float> in(4, 1.0f);
  auto x = vnpu::Tensor::borrow({4}, std::span<const float>(in));
  EXPECT_THROW((void)x.data(), vnpu::Error);
  EXPECT_EQ(std::as_const(x).data()[0], 1.0f);
  EXPECT_THROW((void)vnpu::Tensor::borrow({5}, std::span<const float>(in)), vnpu::Error);
  vnpu::AsyncRuntime rt(identity_model(2), opts());
  std::vector<float> buf(4);
  std::vector<vnpu::Tensor> outs{vnpu::Tensor::borrow({2, 2}, std::span<const float>(buf))};
  EXPECT_THROW((void)rt.run(vnpu::Inputs{vnpu::Tensor({2, 2})}, std::move(outs)), vnpu::Error);
}

TEST_F(Semantics, OwnedTensorsCopyAndBorrowedViewsAlias) {
  vnpu::Tensor a({2}, {1.0f, 2.0f});
  vnpu::Tensor b = a;
  b.data()[0] = 9.0f;
  EXPECT_EQ(a.data()[0], 1.0f);
  std::vector<float> mem{1.0f, 2.0f};
  auto v = vnpu::Tensor::borrow({2}, std::span<float>(mem));
  auto w = v;
  w.data()[0] = 7.0f;
  EXPECT_EQ(mem[0], 7.0f);
}

// ---- pipeline --------------------------------------------------------------------------------------------
// The staging buffer goes back to the pool when H2D finishes, not when the request finishes: with ONE
// staging buffer, a second request is submitted while the first is still computing.
TEST_F(Semantics, StagingIsRecycledAfterH2dNotAfterCompletion) {
  auto o = opts(1, 4);
  o.staging_buffers = 1;
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(200)), o);
  auto a = rt.run(input_for(rt.model()));
  auto b = rt.run(input_for(rt.model()));
  auto ta = a.wait().timings;
  auto tb = b.wait().timings;
  EXPECT_LT(tb.submitted, ta.completed) << "request 2 waited for request 1 to finish although its staging was free";
}

// ---- default depth ---------------------------------------------------------------------------------------
TEST_F(Semantics, DefaultDepthCoversThePipelineAtTheSlowestStage) {
  // The device must outlive `inf` (a reference into a temporary's info() was read after free under ASan).
  auto dev = vnpu::Device::open({backend(), 0}).value();
  const auto& inf = dev->info();
  // Compute-bound: a long SYNTH per request; its cores each need a request, plus the DMA stages around them.
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(20)), opts(1));
  const vnpu::DepthEstimate& e = rt.depth_estimate();
  EXPECT_TRUE(e.used);
  EXPECT_TRUE(e.compute_known);
  EXPECT_EQ(e.compute_cores, inf.compute_cores);
  EXPECT_NEAR(e.bottleneck_ms, e.compute_ms / inf.compute_cores, 1e-9);
  const int want = static_cast<int>(std::ceil((e.h2d_ms + e.compute_ms + e.d2h_ms) / e.bottleneck_ms - 1e-9)) + 1;
  EXPECT_EQ(e.pipeline_depth, want);
  EXPECT_EQ(rt.options().max_in_flight, std::max(2, want));
  EXPECT_EQ(e.chosen, rt.options().max_in_flight);
  // More prep threads: one more slot each.
  vnpu::AsyncRuntime rt3(synth(std::chrono::milliseconds(20)), opts(3));
  EXPECT_EQ(rt3.depth_estimate().pipeline_depth, want + 2);
  // An explicit depth is kept; the estimate is still reported.
  vnpu::AsyncRuntime fixed(synth(std::chrono::milliseconds(20)), opts(1, 7));
  EXPECT_EQ(fixed.options().max_in_flight, 7);
  EXPECT_FALSE(fixed.depth_estimate().used);
  EXPECT_EQ(fixed.depth_estimate().chosen, e.chosen);
}

TEST_F(Semantics, DefaultDepthIsBoundedByDeviceMemory) {
  if (backend() == "sim")
    ::setenv("VNPU_SIM_DEVMEM_MB", "40", 1);  // read when a sim device opens
  struct Restore {
    ~Restore() { ::unsetenv("VNPU_SIM_DEVMEM_MB"); }
  } restore;
  const auto inf = vnpu::Device::open({backend(), 0}).value()->info();
  if (inf.devmem_size > (256u << 20))
    GTEST_SKIP() << "device memory too large for a test that fills it";
  // Requests so big that only a few fit in device memory: the default takes what fits instead of failing.
  const uint64_t bytes = inf.devmem_size / 5;
  vnpu::AsyncRuntime rt(synth(std::chrono::microseconds(100), bytes), opts(1));
  const vnpu::DepthEstimate& e = rt.depth_estimate();
  EXPECT_GT(e.pipeline_depth, e.memory_limit);
  EXPECT_EQ(e.memory_limit, 2);  // input + output binding per slot: 2 slots of 2/5 each
  EXPECT_EQ(rt.options().max_in_flight, 2);
  EXPECT_NO_THROW((void)rt.run(input_for(rt.model())).wait());
}

TEST_F(Semantics, BackPressureBoundsWhatIsHeld) {
  vnpu::AsyncRuntime rt(synth(std::chrono::microseconds(200), 64 << 10), opts(2, 2));
  const uint64_t held = rt.host_dma_bytes();
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 200; ++i)
    tasks.push_back(rt.run(input_for(rt.model())));
  // Outputs are leased views of the DMA buffer the device wrote: a resolved task whose outputs nobody has
  // taken yet holds one. Queued requests hold none.
  const uint64_t dma = rt.host_dma_bytes();
  size_t resolved = 0;
  for (auto& t : tasks)
    resolved += t.ready() ? 1 : 0;
  const uint64_t out_bytes = 64 << 10;  // the synthetic model's output binding
  // (+1: the request the callback thread is resolving has freed its slot but its task is not ready yet.)
  EXPECT_LE(dma, held + (resolved + 1) * out_bytes) << "DMA memory must not grow with the number of queued requests";
  for (auto& t : tasks)
    EXPECT_NO_THROW((void)t.wait());
  // Every output dropped: the leased buffers went back (the pool keeps max_in_flight of them).
  EXPECT_EQ(rt.host_dma_bytes(), held);
}

// run() queued every request however many were waiting (the queue, and the inputs it holds, grew without
// bound despite the promise of bounded memory): now at most max_queued wait, run() blocks beyond that and
// try_run() declines.
TEST_F(Semantics, TheRequestQueueIsBounded) {
  auto o = opts(1, 1);
  o.max_queued = 3;
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(5)), o);
  EXPECT_EQ(rt.options().max_queued, 3);
  // Waiting + the one slot + one request done on the device whose resolution the callback thread has
  // not reached yet (its slot is free again).
  const size_t bound = 3 + 1 + 1;
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 40; ++i) {
    tasks.push_back(rt.run(input_for(rt.model())));
    EXPECT_LE(rt.in_flight(), bound) << "after run() #" << i;
  }
  int declined = 0;
  for (int i = 0; i < 40; ++i) {
    auto t = rt.try_run(input_for(rt.model()));
    if (t)
      tasks.push_back(std::move(*t));
    else
      ++declined;
    EXPECT_LE(rt.in_flight(), bound) << "after try_run() #" << i;
  }
  EXPECT_GT(declined, 0) << "try_run() never found the queue full";
  rt.wait_all();
  EXPECT_EQ(rt.in_flight(), 0u);
  for (auto& t : tasks) {
    ASSERT_TRUE(t.ready()) << "wait_all() returned before a request resolved";
    EXPECT_NO_THROW((void)t.wait());
  }
}

TEST_F(Semantics, SyntheticModelReportsItsModelledStages) {
  vnpu::AsyncRuntime rt(synth(std::chrono::milliseconds(3), 1 << 20), opts());
  auto t = rt.run(input_for(rt.model())).wait().timings;
  if (!rt.device_info().timestamps)
    GTEST_SKIP() << "backend without device timestamps";
  EXPECT_GE(t.compute_ns, 3'000'000u);
  EXPECT_GT(t.h2d_ns, 0u);
  EXPECT_GT(t.d2h_ns, 0u);
  ASSERT_TRUE(t.exec_start_ns && t.h2d_end_ns);
  EXPECT_GE(*t.exec_start_ns, *t.h2d_end_ns) << "compute started before its input was on the device";
}

// ---- devices ---------------------------------------------------------------------------------------------
TEST_F(Semantics, RequestsSpreadOverSeveralDevices) {
  if (!have_device(1))
    GTEST_SKIP() << "needs two devices (./vnpu test runs this in its two-device boot: ./vnpu vm --devices 2)";
  auto o = opts(2, 2);
  o.devices = {0, 1};
  o.placement = vnpu::Placement::kRoundRobin;
  auto model = identity_model(8);
  vnpu::AsyncRuntime rt(model, o);
  ASSERT_EQ(rt.devices_info().size(), 2u);
  std::vector<vnpu::Task<vnpu::Outputs>> tasks;
  for (int i = 0; i < 16; ++i) {
    vnpu::Tensor x({8, 8});
    for (float& e : x.data())
      e = static_cast<float>(i);
    tasks.push_back(rt.run(std::move(x)));
  }
  int used[2] = {0, 0};
  for (int i = 0; i < 16; ++i) {
    auto out = tasks[static_cast<size_t>(i)].wait();
    EXPECT_EQ(out[0].data()[0], static_cast<float>(i));
    used[out.timings.device_index]++;
  }
  EXPECT_GT(used[0], 0);
  EXPECT_GT(used[1], 0);
}

TEST_F(Semantics, ListingADeviceTwiceIsRejected) {
  auto o = opts();
  o.devices = {0, 0};
  EXPECT_THROW(vnpu::AsyncRuntime(identity_model(2), o), vnpu::Error);
}

TEST_F(Semantics, SyncRuntimeReturnsOutputs) {
  vnpu::Runtime rt(vnpu::CompiledModel::from_matmul(identity_model(4)), opts());
  vnpu::Tensor x({4, 4});
  x.data()[5] = 3.0f;
  EXPECT_TRUE(rt.run(x)[0] == x);
}

TEST_F(Semantics, NopJobsComplete) {
  auto dev = vnpu::Device::open({backend(), 0}).value();
  auto r = dev->run({{vnpu::Command::nop()}}).value();
  EXPECT_TRUE(r.status.ok()) << r.status.error().what();
  EXPECT_FALSE(dev->submit({{vnpu::Command::synth(0)}}, [](vnpu::JobResult) {}).ok()) << "synth of 0 ns accepted";
}

}  // namespace
