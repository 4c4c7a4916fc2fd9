// SPDX-License-Identifier: MIT
// A transport for the engine library that the test controls completely: guest memory is a byte vector with
// bus-error ranges, the clock only moves when the test moves it, and schedule()/interrupt() are recorded.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern "C" {
#include "vnpu_engine.h"
}

namespace vnpu::test {

class FakeHost {
 public:
  static constexpr uint64_t kBase = 0x4000'0000;  ///< DMA address of mem[0]
  static constexpr uint64_t kNoDeadline = UINT64_MAX;

  explicit FakeHost(size_t mem_size = 16 << 20) : mem_(mem_size) {}

  /// The callback table to hand to vnpu_engine_create; `this` must outlive the engine.
  VnpuEngineHost host() {
    VnpuEngineHost h{};
    h.opaque = this;
    h.dma_read = [](void* o, uint64_t addr, void* buf, size_t len) {
      return static_cast<FakeHost*>(o)->access(addr, buf, len, false);
    };
    h.dma_write = [](void* o, uint64_t addr, const void* buf, size_t len) {
      return static_cast<FakeHost*>(o)->access(addr, const_cast<void*>(buf), len, true);
    };
    h.clock_ns = [](void* o) { return static_cast<FakeHost*>(o)->clock_.load(); };
    h.schedule = [](void* o, uint64_t deadline) {
      auto* self = static_cast<FakeHost*>(o);
      std::lock_guard lock(self->mu_);
      self->deadline_ = deadline;
      self->schedule_calls_++;
    };
    h.interrupt = [](void* o, unsigned vector) {
      auto* self = static_cast<FakeHost*>(o);
      std::lock_guard lock(self->mu_);
      self->irqs_.push_back(vector);
    };
    h.guest_error = [](void* o, const char* msg) {
      auto* self = static_cast<FakeHost*>(o);
      std::lock_guard lock(self->mu_);
      self->guest_errors_.emplace_back(msg);
    };
    return h;
  }

  /// Make [addr, addr + len) fail every DMA (like an unmapped address or bus mastering off).
  void add_fault(uint64_t addr, uint64_t len) {
    std::lock_guard lock(mu_);
    faults_.emplace_back(addr, addr + len);
  }

  uint8_t* ptr(uint64_t addr) { return mem_.data() + (addr - kBase); }
  template <typename T>
  void put(uint64_t addr, const T& v) {
    std::memcpy(ptr(addr), &v, sizeof(T));
  }
  template <typename T>
  T get(uint64_t addr) {
    T v;
    std::memcpy(&v, ptr(addr), sizeof(T));
    return v;
  }

  uint64_t now() const { return clock_.load(); }
  void set_clock(uint64_t t) { clock_.store(t); }

  /// Consume the armed deadline, as a one-shot timer would when it fires.
  uint64_t take_deadline() {
    std::lock_guard lock(mu_);
    return std::exchange(deadline_, kNoDeadline);
  }
  uint64_t deadline() {
    std::lock_guard lock(mu_);
    return deadline_;
  }
  std::vector<unsigned> irqs() {
    std::lock_guard lock(mu_);
    return irqs_;
  }
  std::vector<std::string> guest_errors() {
    std::lock_guard lock(mu_);
    return guest_errors_;
  }
  uint64_t dma_writes() const { return dma_writes_.load(); }

  /// One DMA write as the device issued it (recorded while log_writes(true)).
  struct Write {
    uint64_t addr;
    std::vector<uint8_t> data;
  };
  void log_writes(bool on) {
    std::lock_guard lock(mu_);
    log_writes_ = on;
  }
  std::vector<Write> writes() {
    std::lock_guard lock(mu_);
    return write_log_;
  }
  /// Called (no lock held, on the engine's thread) before every DMA read is served; set it before the device
  /// runs. It may call back into the engine's MMIO API, as a guest CPU could at that moment.
  /// Setting a hook waits for calls of the old one in progress, so that what it captured may go away afterwards.
  void on_read(std::function<void(uint64_t addr, size_t len)> hook) {
    std::unique_lock lock(hook_mu_);
    read_hook_ = std::move(hook);
  }
  /// The same for DMA writes: called before the bytes land.
  void on_write(std::function<void(uint64_t addr, size_t len)> hook) {
    std::unique_lock lock(hook_mu_);
    write_hook_ = std::move(hook);
  }
  uint64_t dma_reads() const { return dma_reads_.load(); }
  /// DMA callbacks currently executing (including their hooks).
  int accesses_in_progress() const { return in_access_.load(); }
  /// Make every DMA take a random 0..max_us of host time (to show modelled times ignore host speed).
  void set_jitter(unsigned max_us) { jitter_us_.store(max_us); }

 private:
  int access(uint64_t addr, void* buf, size_t len, bool write) {
    struct InAccess {
      std::atomic<int>& n;
      explicit InAccess(std::atomic<int>& c) : n(c) { n++; }
      ~InAccess() { n--; }
    } in_access(in_access_);
    {
      // Regression: a test resetting its hook raced an engine thread calling it (a call through a half-assigned
      // std::function, SEGV at address 0 under ASan).
      std::shared_lock lock(hook_mu_);
      if (!write && read_hook_)
        read_hook_(addr, len);
      if (write && write_hook_)
        write_hook_(addr, len);
    }
    if (unsigned j = jitter_us_.load()) {
      thread_local std::mt19937 rng(std::random_device{}());
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (j + 1)));
    }
    {
      std::lock_guard lock(mu_);
      for (auto [lo, hi] : faults_) {
        if (addr < hi && lo < addr + len)
          return -1;
      }
    }
    if (addr < kBase || len > mem_.size() || addr - kBase > mem_.size() - len)
      return -1;
    if (write) {
      std::memcpy(mem_.data() + (addr - kBase), buf, len);
      dma_writes_++;
      std::lock_guard lock(mu_);
      if (log_writes_) {
        auto* p = static_cast<const uint8_t*>(buf);
        write_log_.push_back({addr, std::vector<uint8_t>(p, p + len)});
      }
    } else {
      std::memcpy(buf, mem_.data() + (addr - kBase), len);
      dma_reads_++;
    }
    return 0;
  }

  std::vector<uint8_t> mem_;
  std::atomic<uint64_t> clock_{1'000'000};
  std::atomic<uint64_t> dma_writes_{0};
  std::atomic<uint64_t> dma_reads_{0};
  std::atomic<int> in_access_{0};
  std::atomic<unsigned> jitter_us_{0};
  std::mutex mu_;
  std::vector<std::pair<uint64_t, uint64_t>> faults_;
  uint64_t deadline_ = kNoDeadline;
  uint64_t schedule_calls_ = 0;
  std::vector<unsigned> irqs_;
  std::vector<std::string> guest_errors_;
  bool log_writes_ = false;
  std::vector<Write> write_log_;
  std::shared_mutex hook_mu_;  // held shared while a hook runs, exclusively while one is replaced
  std::function<void(uint64_t, size_t)> read_hook_, write_hook_;
};

}  // namespace vnpu::test
