// SPDX-License-Identifier: MIT
// vnpu.ko's faults, resets and recovery as a user of libruntime sees them: every kind of injected device fault
// ends the job with its own vnpu::ErrorCode (and the driver's hw_status), on both submission paths (io_uring and
// SUBMIT+WAIT); a queue reset that does not finish escalates to a device reset, a device reset that does not
// finish wedges the device; a PCI reset and an unbind with work in flight end every job with the right code.
// Runs in the guest (./vnpu vm --devices 2 -- recovery_test). Tests that reset, wedge or unbind a device use
// /dev/accel/accel1 and skip without it; the others use the last device. Without a device every test skips.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vnpu/device.h"
#include "vnpu/error.h"
#include "vnpu_accel.h"
#include "vnpu_hw.h"

namespace {

using namespace std::chrono_literals;
using vnpu::Command;
using vnpu::Device;
using vnpu::ErrorCode;
using vnpu::JobResult;
using vnpu::SubmitMode;

bool write_file(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  return bool(f);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  std::string v = s.str();
  while (!v.empty() && (v.back() == '\n' || v.back() == ' '))
    v.pop_back();
  return v;
}

bool node_exists(int index) {
  return access(("/dev/accel/accel" + std::to_string(index)).c_str(), R_OK | W_OK) == 0;
}

/// PCI address of /dev/accel/accel<index>, e.g. "0000:00:03.0"; empty if there is none.
std::string pci_address(int index) {
  char buf[512];
  const std::string link = "/sys/class/accel/accel" + std::to_string(index) + "/device";
  const ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  if (n <= 0)
    return {};
  buf[n] = 0;
  const std::string s(buf);
  return s.substr(s.rfind('/') + 1);
}

/// The accel index of the device at PCI address `pci` once its driver is bound again (or -1 after 10 s).
int accel_index_of(const std::string& pci) {
  for (int tries = 0; tries < 1000; tries++) {
    DIR* d = opendir(("/sys/bus/pci/devices/" + pci + "/accel").c_str());
    if (d) {
      int index = -1;
      while (dirent* e = readdir(d))
        if (std::strncmp(e->d_name, "accel", 5) == 0 && e->d_name[5] >= '0' && e->d_name[5] <= '9')
          index = std::atoi(e->d_name + 5);
      closedir(d);
      if (index >= 0 && node_exists(index))
        return index;
    }
    usleep(10000);
  }
  return -1;
}

constexpr const char* kParams = "/sys/module/vnpu/parameters/";

/// Sets a vnpu.ko module parameter for the lifetime of the object.
class ParamOverride {
 public:
  ParamOverride(const std::string& name, const std::string& value)
      : path_(std::string(kParams) + name), old_(read_file(path_)) {
    ok_ = !old_.empty() && write_file(path_, value);
  }
  ~ParamOverride() {
    if (!old_.empty())
      write_file(path_, old_);
  }
  ParamOverride(const ParamOverride&) = delete;
  ParamOverride& operator=(const ParamOverride&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }

 private:
  std::string path_, old_;
  bool ok_ = false;
};

const char* mode_name(SubmitMode m) {
  return m == SubmitMode::kUring ? "uring" : "ioctl";
}

/// A device of the guest, opened through libruntime's kernel backend with the submission path under test.
class Recovery : public ::testing::TestWithParam<SubmitMode> {
 protected:
  void SetUp() override {
    index_ = node_exists(1) ? 1 : 0;
    if (!node_exists(index_))
      GTEST_SKIP() << "no /dev/accel/accel" << index_ << " (run in the VM)";
    open_device();
    if (HasFatalFailure())
      return;
    if (!(dev_->info().caps & VNPU_CAP_FAULT_INJECT))
      GTEST_SKIP() << "device has no fault injection";
    pci_ = pci_address(index_);
    ASSERT_FALSE(pci_.empty());
    if (access(fault_inject().c_str(), W_OK) != 0)
      GTEST_SKIP() << fault_inject() << " not available (debugfs)";
  }
  void TearDown() override {
    if (!pci_.empty())
      write_file(fault_inject(), "0 -1 0");
  }

  void open_device() {
    dev_.reset();
    vnpu::DeviceOptions o;
    o.backend = "kernel";
    o.index = index_;
    o.submit_mode = GetParam();
    auto d = Device::open(o);
    ASSERT_TRUE(d.ok()) << d.error().what();
    dev_ = std::move(d).value();
  }

  [[nodiscard]] bool destructive_ok() const { return index_ == 1; }
  [[nodiscard]] std::string fault_inject() const { return "/sys/kernel/debug/accel/" + pci_ + "/fault_inject"; }
  [[nodiscard]] std::string sysfs(const std::string& name) const {
    return "/sys/bus/pci/devices/" + pci_ + "/vnpu/" + name;
  }
  /// One-shot fault on the next job fetched on any queue.
  void arm(vnpu_fi_kind kind) { ASSERT_TRUE(write_file(fault_inject(), std::to_string(kind) + " -1 1")); }

  /// Submits a job of `cmds`; the future resolves with its result.
  std::future<JobResult> submit(std::vector<Command> cmds) {
    auto p = std::make_shared<std::promise<JobResult>>();
    auto f = p->get_future();
    vnpu::Job job;
    job.commands = std::move(cmds);
    auto st = dev_->submit(std::move(job), [p](JobResult r) { p->set_value(std::move(r)); });
    EXPECT_TRUE(st.ok()) << st.error().what();
    if (!st.ok()) {
      JobResult r;
      r.status = st.error();
      p->set_value(std::move(r));
    }
    return f;
  }
  static JobResult get(std::future<JobResult>& f, std::chrono::seconds limit = 60s) {
    if (f.wait_for(limit) != std::future_status::ready) {
      ADD_FAILURE() << "job did not complete within " << limit.count() << " s";
      return {};
    }
    return f.get();
  }
  /// The job's error code, or nullopt if it succeeded.
  static std::optional<ErrorCode> code(const JobResult& r) {
    if (r.status.ok())
      return std::nullopt;
    return r.status.error().code();
  }
  static std::string what(const JobResult& r) { return r.status.ok() ? "ok" : r.status.error().what(); }

  /// A small H2D + D2H round trip, checked.
  void expect_round_trip_works() {
    auto host = dev_->alloc_host(4096).value();
    auto back = dev_->alloc_host(4096).value();
    auto mem = dev_->alloc_device(65536).value();
    for (size_t i = 0; i < 4096; i++)
      static_cast<uint8_t*>(host.data())[i] = uint8_t(i * 7 + 1);
    auto f = submit({Command::copy_to_device(host, 0, mem, 0, 4096), Command::copy_from_device(mem, 0, back, 0, 4096)});
    auto r = get(f);
    ASSERT_TRUE(r.status.ok()) << what(r);
    EXPECT_EQ(std::memcmp(host.data(), back.data(), 4096), 0);
  }

  int index_ = 0;
  std::string pci_;
  std::unique_ptr<Device> dev_;
};

std::string param_name(const ::testing::TestParamInfo<SubmitMode>& info) {
  return mode_name(info.param);
}

// ---- one test per fault kind: the code the user sees -----------------------------------------------------

TEST_P(Recovery, DmaErrorIsADeviceFault) {
  auto host = dev_->alloc_host(4096).value();
  auto mem = dev_->alloc_device(65536).value();  // before arming: MEM_ALLOC clears memory with a job
  arm(VNPU_FI_DMA_ERROR);
  auto f = submit({Command::copy_to_device(host, 0, mem, 0, 4096)});
  auto r = get(f);
  EXPECT_EQ(code(r), ErrorCode::kDeviceFault) << what(r);
  EXPECT_EQ(r.hw_status.value_or(0), uint32_t(DRM_VNPU_HW_DMA_FAULT));
  expect_round_trip_works();
}

TEST_P(Recovery, HungJobIsADeviceHangNotAnAbort) {
  // Used to go wrong: a hung job reached users as kDeviceFault ("Connection timed out"), and with hw_status
  // ABORTED ("aborted by queue shutdown or device reset; resubmit if needed"): a client retrying aborts retried
  // the hang.
  ParamOverride timeout("job_timeout_ms", "300");
  ASSERT_TRUE(timeout.ok());
  arm(VNPU_FI_COMPUTE_HANG);
  auto f = submit({Command::synth(1000)});
  auto r = get(f);
  EXPECT_EQ(code(r), ErrorCode::kDeviceHang) << what(r);
  if (r.hw_status) {
    EXPECT_EQ(*r.hw_status, uint32_t(DRM_VNPU_JOB_TIMEOUT));
  }
  expect_round_trip_works();
}

TEST_P(Recovery, CorruptedCompletionIsACorruptCompletion) {
  // Used to go wrong: a job whose completion record was corrupted failed with -EIO and hw_status ABORTED, the
  // same as a device error (or an abort): the user could not tell that its outcome is unknown.
  arm(VNPU_FI_CORRUPT_CPL);
  auto f = submit({Command::nop()});
  auto r = get(f);
  EXPECT_EQ(code(r), ErrorCode::kCorruptCompletion) << what(r);
  if (r.hw_status) {
    EXPECT_EQ(*r.hw_status, uint32_t(DRM_VNPU_JOB_CORRUPT));
  }
  expect_round_trip_works();
}

TEST_P(Recovery, LostInterruptStillSucceeds) {
  arm(VNPU_FI_LOST_IRQ);
  auto f = submit({Command::nop()});
  auto r = get(f);
  EXPECT_TRUE(r.status.ok()) << what(r);
}

TEST_P(Recovery, JobRunningWhenAnotherHungIsInterruptedNeverRerun) {
  // Used to go wrong: a job that had started on the other compute core when the hung job's queue was reset was
  // put back and silently run again from the start (and its first run's partial effects were never reported).
  ParamOverride timeout("job_timeout_ms", "300");
  ASSERT_TRUE(timeout.ok());
  arm(VNPU_FI_COMPUTE_HANG);
  auto hung = submit({Command::synth(1000)});
  // Starts on the second core while the first one hangs; 20 s of device time if it were re-run.
  auto running = submit({Command::synth(20'000'000'000ull / 2)});
  const auto t0 = std::chrono::steady_clock::now();
  auto rh = get(hung);
  EXPECT_EQ(code(rh), ErrorCode::kDeviceHang) << what(rh);
  auto rr = get(running);
  EXPECT_EQ(code(rr), ErrorCode::kInterrupted) << what(rr);
  if (rr.hw_status) {
    EXPECT_EQ(*rr.hw_status, uint32_t(DRM_VNPU_JOB_INTERRUPTED));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 9s) << "the interrupted job ran again";
  expect_round_trip_works();
}

// ---- resets that do not finish -----------------------------------------------------------------------------

/// A MATMUL whose every row takes the device tens of milliseconds of host time (k = n = 8192): a queue reset
/// waits for the row in progress, far longer than a 1 ms reset timeout.
struct SlowMatmul {
  explicit SlowMatmul(Device& dev, uint32_t rows)
      : m(rows),
        a(dev.alloc_device(uint64_t(m) * kK * 4).value()),
        b(dev.alloc_device(uint64_t(kK) * kN * 4).value()),
        c(dev.alloc_device(uint64_t(m) * kN * 4).value()) {}
  [[nodiscard]] Command cmd() const { return Command::matmul(a, 0, b, 0, c, 0, m, kN, kK); }
  static constexpr uint32_t kK = 8192, kN = 8192;
  uint32_t m;
  vnpu::DeviceBuffer a, b, c;
};

long read_long(const std::string& path) {
  const std::string s = read_file(path);
  return s.empty() ? -1 : std::stol(s);
}

TEST_P(Recovery, QueueResetThatDoesNotFinishEscalatesToDeviceReset) {
  // Used to go wrong: a queue reset that did not finish was only logged; the driver then completed (and
  // freed) the jobs and re-enabled the queue while the device was still running one of them.
  if (!destructive_ok())
    GTEST_SKIP() << "resets the whole device: needs a second device (./vnpu vm --devices 2)";
  if (dev_->info().timing_only)
    GTEST_SKIP() << "timing-only device: a MATMUL does no work";
  SlowMatmul mm(*dev_, 256);  // before the short timeouts: clearing its memory takes a while
  ParamOverride timeout("job_timeout_ms", "300"), reset("reset_timeout_ms", "1"),
      device_reset("device_reset_timeout_ms", "30000");
  ASSERT_TRUE(timeout.ok() && reset.ok() && device_reset.ok());
  const long resets = read_long(sysfs("device_resets"));
  ASSERT_GE(resets, 0) << "sysfs device_resets missing";
  // The reset finishes after all if the MATMUL reaches a row boundary (a cancellation point) within the 1 ms:
  // rare; try again then.
  for (int attempt = 0; attempt < 5 && read_long(sysfs("device_resets")) == resets; attempt++) {
    auto slow = submit({mm.cmd()});
    auto r = get(slow, 120s);
    EXPECT_EQ(code(r), ErrorCode::kDeviceHang) << what(r);
  }
  EXPECT_EQ(read_long(sysfs("device_resets")), resets + 1);
  EXPECT_EQ(read_file(sysfs("wedged")), "0");
  expect_round_trip_works();
}

TEST_P(Recovery, DeviceResetThatDoesNotFinishWedgesTheDeviceUntilRebind) {
  if (!destructive_ok())
    GTEST_SKIP() << "wedges the device: needs a second device (./vnpu vm --devices 2)";
  if (dev_->info().timing_only)
    GTEST_SKIP() << "timing-only device: a MATMUL does no work";
  {
    SlowMatmul mm(*dev_, 256);
    ParamOverride timeout("job_timeout_ms", "300"), reset("reset_timeout_ms", "1"),
        device_reset("device_reset_timeout_ms", "1");
    ASSERT_TRUE(timeout.ok() && reset.ok() && device_reset.ok());
    // The device reset finishes after all if the MATMUL reached a row boundary (a cancellation point) between
    // the queue reset and the device reset: the device recovered; try again then.
    for (int attempt = 0; attempt < 5 && read_file(sysfs("wedged")) != "1"; attempt++) {
      auto slow = submit({mm.cmd()});
      auto r = get(slow, 120s);
      EXPECT_EQ(code(r), ErrorCode::kDeviceHang) << what(r);
    }
    ASSERT_EQ(read_file(sysfs("wedged")), "1");
    // No new work: a job fails at once with kDeviceLost.
    auto later = submit({Command::nop()});
    auto rl = get(later);
    EXPECT_EQ(code(rl), ErrorCode::kDeviceLost) << what(rl);
    if (rl.hw_status) {
      EXPECT_EQ(*rl.hw_status, uint32_t(DRM_VNPU_JOB_WEDGED));
    }
  }
  // Rebinding the driver resets the device and it works again.
  dev_.reset();
  ASSERT_TRUE(write_file("/sys/bus/pci/devices/" + pci_ + "/driver/unbind", pci_));
  ASSERT_TRUE(write_file("/sys/bus/pci/drivers/vnpu/bind", pci_));
  index_ = accel_index_of(pci_);
  ASSERT_GE(index_, 0) << pci_ << " did not come back";
  open_device();
  ASSERT_EQ(read_file(sysfs("wedged")), "0");
  expect_round_trip_works();
}

// ---- PCI reset and unbind with work in flight --------------------------------------------------------------

TEST_P(Recovery, PciResetWithWorkInFlightInterruptsRunningJobsAndRerunsTheRest) {
  // Used to go wrong: vnpu.ko had no reset_prepare/reset_done: after a PCI reset the device had forgotten the
  // rings while the driver still fed them, and jobs in flight hung until the job timeout blamed one of them.
  if (!destructive_ok())
    GTEST_SKIP() << "resets the device: needs a second device (./vnpu vm --devices 2)";
  const std::string reset = "/sys/bus/pci/devices/" + pci_ + "/reset";
  if (access(reset.c_str(), W_OK) != 0)
    GTEST_SKIP() << "the device offers no PCI reset method (put it behind a PCIe root port: ./vnpu vm --qemu-arg "
                    "-device --qemu-arg pcie-root-port,id=rp1,chassis=1 --qemu-arg -device --qemu-arg vnpu,bus=rp1)";
  ParamOverride timeout("job_timeout_ms", "60000");
  ASSERT_TRUE(timeout.ok());
  // Two long jobs occupy both compute cores, more wait behind them.
  std::vector<std::future<JobResult>> running, waiting;
  for (int i = 0; i < 2; i++)
    running.push_back(submit({Command::synth(30'000'000'000ull / 3)}));
  std::this_thread::sleep_for(200ms);
  for (int i = 0; i < 8; i++)
    waiting.push_back(submit({Command::nop()}));
  std::this_thread::sleep_for(200ms);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(write_file(reset, "1"));
  for (auto& f : running) {
    auto r = get(f);
    EXPECT_EQ(code(r), ErrorCode::kInterrupted) << what(r);
  }
  // The NOPs were fetched (they need no engine, but complete after the long jobs of their queue in order) or
  // not: fetched ones may have run and are interrupted, the others run after the reset. None hangs.
  for (auto& f : waiting) {
    auto r = get(f);
    EXPECT_TRUE(r.status.ok() || code(r) == ErrorCode::kInterrupted) << what(r);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s) << "jobs waited for the job timeout";
  expect_round_trip_works();
}

TEST_P(Recovery, UnbindWithWorkInFlightEndsEveryJobWithDeviceLostThenRebindWorks) {
  // Used to go wrong: jobs ended by an unbind reached users as kNotFound ("No such device"), like a device
  // that was never there; and remove freed their memory before it had reset the device.
  if (!destructive_ok())
    GTEST_SKIP() << "unbinds the device: needs a second device (./vnpu vm --devices 2)";
  std::vector<std::future<JobResult>> jobs;
  {
    SlowMatmul mm(*dev_, 4);
    auto host = dev_->alloc_host(1 << 20).value();
    auto mem = dev_->alloc_device(1 << 20).value();
    for (int i = 0; i < 2; i++)
      jobs.push_back(submit({Command::synth(30'000'000'000ull / 3)}));
    for (int i = 0; i < 16; i++)
      jobs.push_back(submit({Command::copy_to_device(host, 0, mem, 0, 1 << 20), Command::nop()}));
    jobs.push_back(submit({mm.cmd()}));
  }
  std::this_thread::sleep_for(200ms);
  ASSERT_TRUE(write_file("/sys/bus/pci/devices/" + pci_ + "/driver/unbind", pci_));
  int lost = 0;
  for (auto& f : jobs) {
    auto r = get(f);
    if (!r.status.ok()) {
      EXPECT_EQ(code(r), ErrorCode::kDeviceLost) << what(r);
      lost++;
    }
  }
  EXPECT_GE(lost, 2) << "the long jobs were running";
  auto after = dev_->alloc_host(4096);
  EXPECT_FALSE(after.ok());
  dev_.reset();
  ASSERT_TRUE(write_file("/sys/bus/pci/drivers/vnpu/bind", pci_));
  index_ = accel_index_of(pci_);
  ASSERT_GE(index_, 0) << pci_ << " did not come back";
  open_device();
  expect_round_trip_works();
}

INSTANTIATE_TEST_SUITE_P(Paths, Recovery, ::testing::Values(SubmitMode::kUring, SubmitMode::kIoctl), param_name);

}  // namespace
