// SPDX-License-Identifier: MIT
// The small APIs the Python binding needs (python/src/module.cpp): borrowed tensors that hold their owner,
// and Task::canceller() after the task was consumed by on_complete.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <vnpu/vnpu.h>

namespace {

using namespace std::chrono_literals;

TEST(TensorBorrow, HoldsItsOwnerUntilTheLastCopyOfTheViewIsGone) {
  auto data = std::make_shared<std::vector<float>>(6, 1.5f);
  std::weak_ptr<std::vector<float>> weak = data;
  std::optional<vnpu::Tensor> t = vnpu::Tensor::borrow({2, 3}, std::span<const float>(*data), data);
  data.reset();
  ASSERT_FALSE(weak.expired());
  EXPECT_TRUE(t->borrowed() && t->read_only());
  EXPECT_EQ(std::as_const(*t).data()[5], 1.5f);
  vnpu::Tensor copy = *t;
  vnpu::Tensor moved = std::move(*t);
  t.reset();
  EXPECT_FALSE(weak.expired());
  copy = vnpu::Tensor({1});
  EXPECT_FALSE(weak.expired());  // `moved` still views it
  moved = vnpu::Tensor({1});
  EXPECT_TRUE(weak.expired());
}

vnpu::RuntimeOptions sim_options() {
  vnpu::RuntimeOptions o;
  o.backend = "sim";
  o.max_in_flight = 1;
  return o;
}

TEST(TensorBorrow, TheRuntimeReleasesTheOwnerOnceItHasReadTheInput) {
  vnpu::AsyncRuntime rt(vnpu::CompiledModel::synthetic({.compute = 1ms}), sim_options());
  auto data = std::make_shared<std::vector<float>>(1, 2.0f);
  std::weak_ptr<std::vector<float>> weak = data;
  auto task = rt.run(vnpu::Tensor::borrow({1}, std::span<const float>(*data), data));
  data.reset();
  (void)task.wait();
  EXPECT_TRUE(weak.expired());
}

TEST(TaskCanceller, CancelsATaskAlreadyHandedToOnComplete) {
  vnpu::AsyncRuntime rt(vnpu::CompiledModel::synthetic({.compute = 300ms}), sim_options());
  auto first = rt.run(vnpu::Tensor({1}));
  auto second = rt.run(vnpu::Tensor({1}));  // queued behind `first` (one slot)
  auto cancel = second.canceller();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<vnpu::ErrorCode> code;
  std::move(second).on_complete([&](vnpu::Result<vnpu::Outputs> r) {
    std::lock_guard lock(mu);
    code = r.ok() ? std::optional<vnpu::ErrorCode>() : r.error().code();
    cv.notify_all();
  });
  EXPECT_FALSE(second.valid());
  EXPECT_TRUE(cancel());
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return code.has_value(); }));
    EXPECT_EQ(*code, vnpu::ErrorCode::kCancelled);
  }
  (void)first.wait();
  EXPECT_FALSE(cancel());  // resolved: nothing to cancel
  EXPECT_FALSE(vnpu::Task<int>().canceller()());
}

}  // namespace
