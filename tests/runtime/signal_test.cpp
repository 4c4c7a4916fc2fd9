// SPDX-License-Identifier: MIT
// Command::signal() through the Device API: Job::on_signal runs once per reached SIGNAL, in command order, on
// the completion thread, before the job's callback; a job failing before a SIGNAL gets no call for it. Runs on
// the sim backend (the device's SIGNAL command) and, once the driver delivers signals, on the kernel backend.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <vnpu/vnpu.h>

namespace {

std::string backend() {
  const char* b = std::getenv("VNPU_BACKEND");
  return b && *b ? b : "sim";
}

class Signals : public ::testing::Test {
 protected:
  void SetUp() override {
    if (backend() == "kernel") {
      struct stat st {};
      if (::stat("/dev/accel/accel0", &st) != 0)
        GTEST_SKIP() << "/dev/accel/accel0 absent: kernel backend needs the VM";
    }
    dev_ = open();
    if (backend() != "sim" && !dev_->info().signals)
      GTEST_SKIP() << "this backend does not deliver signals yet";
  }
  static std::unique_ptr<vnpu::Device> open() {
    vnpu::DeviceOptions o;
    o.backend = backend();
    return vnpu::Device::open(o).value();
  }
  struct Seen {
    std::mutex mu;
    std::vector<std::string> events;
    std::vector<std::thread::id> threads;
    void add(std::string e) {
      std::lock_guard lock(mu);
      events.push_back(std::move(e));
      threads.push_back(std::this_thread::get_id());
    }
  };
  // Submit and wait for the job's callback; the events seen, in order.
  vnpu::JobResult run(vnpu::Device& dev, vnpu::Job job, Seen& seen) {
    std::promise<vnpu::JobResult> done;
    auto fut = done.get_future();
    job.on_signal = [&seen](const vnpu::SignalEvent& ev) {
      seen.add("signal " + std::to_string(ev.command_index) + (ev.t_ns ? " t" : ""));
    };
    auto s = dev.submit(std::move(job), [&](vnpu::JobResult r) {
      seen.add("done");
      done.set_value(std::move(r));
    });
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().what());
    if (!s.ok())
      return {};
    return fut.get();
  }
  std::unique_ptr<vnpu::Device> dev_;
};

TEST_F(Signals, TheSimDeviceReportsThem) {
  if (backend() != "sim")
    GTEST_SKIP() << "sim only";
  EXPECT_TRUE(dev_->info().signals);
  EXPECT_EQ(dev_->info().max_signals_per_job, 4u);
}

TEST_F(Signals, RunInCommandOrderOnTheCompletionThreadBeforeTheJobsCallback) {
  const size_t bytes = 64 << 10;
  auto in = dev_->alloc_host(bytes).value();
  auto out = dev_->alloc_host(bytes).value();
  auto mem = dev_->alloc_device(bytes).value();
  std::memset(in.data(), 0x5a, bytes);
  std::memset(out.data(), 0, bytes);
  Seen seen;
  vnpu::Job job{
      {vnpu::Command::copy_to_device(in, 0, mem, 0, bytes), vnpu::Command::signal(), vnpu::Command::synth(200'000),
       vnpu::Command::signal(), vnpu::Command::copy_from_device(mem, 0, out, 0, bytes)},
      {}};
  auto r = run(*dev_, std::move(job), seen);
  ASSERT_TRUE(r.status.ok()) << r.status.error().what();
  EXPECT_EQ(seen.events, (std::vector<std::string>{"signal 1 t", "signal 3 t", "done"}));
  ASSERT_EQ(seen.threads.size(), 3u);
  EXPECT_EQ(seen.threads[0], seen.threads[2]);
  EXPECT_EQ(seen.threads[1], seen.threads[2]);
  EXPECT_NE(seen.threads[0], std::this_thread::get_id());
  EXPECT_EQ(std::memcmp(in.data(), out.data(), bytes), 0);
}

TEST_F(Signals, ManyJobsEachGetTheirOwnSignalsFirst) {
  std::vector<std::unique_ptr<Seen>> seen;
  std::vector<std::future<vnpu::JobResult>> futs;
  std::vector<std::unique_ptr<std::promise<vnpu::JobResult>>> proms;
  for (int i = 0; i < 50; i++) {
    seen.push_back(std::make_unique<Seen>());
    proms.push_back(std::make_unique<std::promise<vnpu::JobResult>>());
    futs.push_back(proms.back()->get_future());
    Seen* s = seen.back().get();
    auto* p = proms.back().get();
    vnpu::Job job{{vnpu::Command::signal(), vnpu::Command::synth(1000 + 100 * (i % 7)), vnpu::Command::signal(),
                   vnpu::Command::nop()},
                  {}};
    job.on_signal = [s](const vnpu::SignalEvent& ev) { s->add("signal " + std::to_string(ev.command_index)); };
    ASSERT_TRUE(dev_->submit(std::move(job),
                             [s, p](vnpu::JobResult r) {
                               s->add("done");
                               p->set_value(std::move(r));
                             })
                    .ok());
  }
  for (size_t i = 0; i < futs.size(); i++) {
    auto r = futs[i].get();
    EXPECT_TRUE(r.status.ok());
    EXPECT_EQ(seen[i]->events, (std::vector<std::string>{"signal 0", "signal 2", "done"})) << "job " << i;
  }
}

TEST_F(Signals, AJobFailingBeforeASignalGetsNoCallForIt) {
  if (backend() != "sim")
    GTEST_SKIP() << "needs the sim's power-on fault injection";
  // The device fails the job's first DMA command (fault injection DMA_ERROR on the first job).
  ::setenv("VNPU_SIM_FI_KIND", "1", 1);
  ::setenv("VNPU_SIM_FI_AFTER", "1", 1);
  auto dev = open();
  ::unsetenv("VNPU_SIM_FI_KIND");
  ::unsetenv("VNPU_SIM_FI_AFTER");
  auto in = dev->alloc_host(4096).value();
  auto mem = dev->alloc_device(4096).value();
  Seen seen;
  auto r = run(
      *dev, {{vnpu::Command::copy_to_device(in, 0, mem, 0, 4096), vnpu::Command::signal(), vnpu::Command::nop()}, {}},
      seen);
  EXPECT_FALSE(r.status.ok());
  EXPECT_EQ(seen.events, (std::vector<std::string>{"done"}));
  // The next job (no fault) gets its signal.
  Seen again;
  r = run(*dev,
          {{vnpu::Command::copy_to_device(in, 0, mem, 0, 4096), vnpu::Command::signal(), vnpu::Command::nop()}, {}},
          again);
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(again.events, (std::vector<std::string>{"signal 1 t", "done"}));
}

TEST_F(Signals, ValidationRejectsWhatTheDeviceWouldFail) {
  auto cb = [](vnpu::JobResult) {};
  vnpu::Job last{{vnpu::Command::nop(), vnpu::Command::signal()}, {}};
  last.on_signal = [](const vnpu::SignalEvent&) {};
  EXPECT_FALSE(dev_->submit(std::move(last), cb).ok());
  vnpu::Job many;
  for (uint32_t i = 0; i <= dev_->info().max_signals_per_job; i++)
    many.commands.push_back(vnpu::Command::signal());
  many.commands.push_back(vnpu::Command::nop());
  many.on_signal = [](const vnpu::SignalEvent&) {};
  EXPECT_FALSE(dev_->submit(std::move(many), cb).ok());
}

}  // namespace
