// SPDX-License-Identifier: MIT
// The "sim" backend: the device's engine library (qemu-device/engine) in-process, driven the way vnpu.ko
// drives the PCI device. This file is a tiny userspace driver: it owns the command and completion rings
// (process memory; DMA address = process virtual address), builds scatter-gather tables for host buffers,
// allocates device memory, rings doorbells with vnpu_engine_mmio_write, turns "interrupts" into wake-ups of
// a completion thread, and serves the engine's schedule() requests with a timer thread (CLOCK_MONOTONIC).
//
// Locks, in the order they may nest: mu_ (the transport lock the engine requires around mmio/tick) →
// timer_mu_ / irq_mu_ → regions_->mu. The engine's worker thread calls schedule() and dma_* without mu_.
#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "internal.h"
#include "vnpu_engine.h"
#include "vnpu_hw.h"

namespace vnpu::detail {
namespace {

constexpr uint32_t kQueue = 0;
constexpr uint32_t kVector = 0;
constexpr uint32_t kRingEntries = 1024;
constexpr uint64_t kDevmemAlign = 4096;
constexpr uint64_t kSgeMaxLen = 1u << 30;  // an SGE covers at most 1 GiB (len is 32-bit)
constexpr auto kDrainTimeout = std::chrono::seconds(10);

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// The host memory the device may reach by DMA (rings, SGL tables, host buffers): the sim's IOMMU. An access
// outside every registered region is a bus error for the engine, never a stray write into the process.
class DmaRegions {
 public:
  void add(const void* p, size_t len) {
    std::lock_guard lock(mu_);
    regions_[reinterpret_cast<uintptr_t>(p)] = len;
  }
  void remove(const void* p) {
    std::lock_guard lock(mu_);
    regions_.erase(reinterpret_cast<uintptr_t>(p));
  }
  bool contains(uint64_t addr, size_t len) const {
    std::lock_guard lock(mu_);
    auto it = regions_.upper_bound(addr);
    if (it == regions_.begin()) return false;
    --it;
    return addr >= it->first && range_fits(addr - it->first, len, it->second);
  }

 private:
  mutable std::mutex mu_;
  std::map<uint64_t, size_t> regions_;
};

// First-fit allocator over the device's address space [0, size), 4 KiB granules, coalescing on free.
class DevmemAllocator {
 public:
  explicit DevmemAllocator(uint64_t size) {
    if (size) free_[0] = size;
  }
  std::optional<uint64_t> alloc(uint64_t bytes) {
    bytes = round_up(bytes, kDevmemAlign);
    std::lock_guard lock(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < bytes) continue;
      const uint64_t addr = it->first, len = it->second;
      free_.erase(it);
      if (len > bytes) free_[addr + bytes] = len - bytes;
      return addr;
    }
    return std::nullopt;
  }
  void free(uint64_t addr, uint64_t bytes) {
    bytes = round_up(bytes, kDevmemAlign);
    std::lock_guard lock(mu_);
    auto [it, inserted] = free_.emplace(addr, bytes);
    if (!inserted) return;  // double free: ignore rather than corrupt the map
    auto next = std::next(it);
    if (next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, uint64_t> free_;
};

// What buffers share with the device, so a buffer may outlive the SimDevice that made it.
struct SimShared {
  explicit SimShared(uint64_t devmem) : devmem(devmem) {}
  DmaRegions regions;
  DevmemAllocator devmem;
};

struct SimHostBuffer final : HostBufferObject {
  ~SimHostBuffer() override {
    shared->regions.remove(sgl);
    shared->regions.remove(ptr);
    std::free(sgl);
    std::free(ptr);
  }
  std::shared_ptr<SimShared> shared;
  vnpu_hw_sge* sgl = nullptr;  // built once, like the driver's per-BO table
  uint32_t sgl_count = 0;
};

struct SimDeviceBuffer final : DeviceBufferObject {
  ~SimDeviceBuffer() override { shared->devmem.free(dev_addr, size); }
  std::shared_ptr<SimShared> shared;
};

class SimDevice final : public Device {
 public:
  static Result<std::unique_ptr<Device>> open(const DeviceOptions& options);
  ~SimDevice() override;

  const DeviceInfo& info() const noexcept override { return info_; }
  Result<HostBuffer> alloc_host(size_t bytes) override;
  Result<DeviceBuffer> alloc_device(size_t bytes) override;

 protected:
  Status do_submit(Job job, JobCallback done) override;
  const void* owner_token() const noexcept override { return shared_.get(); }

 private:
  struct Pending {
    Job job;
    JobCallback done;
    uint32_t ncmds = 0;
  };

  SimDevice() = default;
  Status start(const DeviceOptions& options);
  uint32_t rd(uint64_t off) { return static_cast<uint32_t>(vnpu_engine_mmio_read(engine_, off, 4)); }
  void wr(uint64_t off, uint32_t v) { vnpu_engine_mmio_write(engine_, off, v, 4); }
  void timer_loop();
  void completion_loop();
  // Reap completion records (mu_ held); returns the finished jobs with their results.
  std::vector<std::pair<std::unique_ptr<Pending>, JobResult>> reap_locked();

  // Engine host callbacks.
  static int host_dma_read(void* opaque, uint64_t addr, void* buf, size_t len);
  static int host_dma_write(void* opaque, uint64_t addr, const void* buf, size_t len);
  static uint64_t host_clock_ns(void*) { return monotonic_ns(); }
  static void host_schedule(void* opaque, uint64_t deadline_ns);
  static void host_interrupt(void* opaque, unsigned vector);

  DeviceInfo info_;
  std::shared_ptr<SimShared> shared_;
  VnpuEngine* engine_ = nullptr;

  std::mutex mu_;                 // transport lock: engine mmio/tick, rings, pending_, broken_/stopping_
  std::condition_variable space_; // ring space freed / pending_ drained
  vnpu_hw_cmd* sq_ = nullptr;
  vnpu_hw_cpl* cq_ = nullptr;
  uint32_t sq_tail_ = 0, cq_head_ = 0;
  uint16_t cq_phase_ = 1;
  uint32_t ring_used_ = 0;        // commands of jobs not yet completed
  uint64_t next_tag_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;
  bool stopping_ = false;
  std::optional<Error> broken_;

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  uint64_t deadline_ = UINT64_MAX;
  bool timer_stop_ = false;
  std::thread timer_;

  std::mutex irq_mu_;
  std::condition_variable irq_cv_;
  bool irq_ = false;
  bool irq_stop_ = false;
  std::thread completer_;
};

int SimDevice::host_dma_read(void* opaque, uint64_t addr, void* buf, size_t len) {
  auto* d = static_cast<SimDevice*>(opaque);
  if (!d->shared_->regions.contains(addr, len)) return -1;
  std::memcpy(buf, reinterpret_cast<const void*>(addr), len);
  return 0;
}

int SimDevice::host_dma_write(void* opaque, uint64_t addr, const void* buf, size_t len) {
  auto* d = static_cast<SimDevice*>(opaque);
  if (!d->shared_->regions.contains(addr, len)) return -1;
  std::memcpy(reinterpret_cast<void*>(addr), buf, len);
  return 0;
}

void SimDevice::host_schedule(void* opaque, uint64_t deadline_ns) {
  auto* d = static_cast<SimDevice*>(opaque);
  {
    std::lock_guard lock(d->timer_mu_);
    d->deadline_ = deadline_ns;
  }
  d->timer_cv_.notify_one();
}

void SimDevice::host_interrupt(void* opaque, unsigned /*vector*/) {
  auto* d = static_cast<SimDevice*>(opaque);
  {
    std::lock_guard lock(d->irq_mu_);
    d->irq_ = true;
  }
  d->irq_cv_.notify_one();
}

void SimDevice::timer_loop() {
  pthread_setname_np(pthread_self(), "vnpu-sim-timer");
  std::unique_lock lock(timer_mu_);
  for (;;) {
    if (timer_stop_) return;
    if (deadline_ == UINT64_MAX) {
      timer_cv_.wait(lock);
      continue;
    }
    const uint64_t now = monotonic_ns();
    if (now < deadline_) {
      // steady_clock is CLOCK_MONOTONIC on Linux, the engine's clock here.
      timer_cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline_)));
      continue;
    }
    // Due. Clearing under timer_mu_ cannot lose a deadline: a schedule() after this point sets a new one.
    deadline_ = UINT64_MAX;
    lock.unlock();
    {
      std::lock_guard dev(mu_);
      if (engine_) vnpu_engine_tick(engine_);
    }
    lock.lock();
  }
}

std::vector<std::pair<std::unique_ptr<SimDevice::Pending>, JobResult>> SimDevice::reap_locked() {
  std::vector<std::pair<std::unique_ptr<Pending>, JobResult>> done;
  bool consumed = false;
  for (;;) {
    const vnpu_hw_cpl& c = cq_[cq_head_];
    if ((c.flags & VNPU_CPL_F_PHASE) != cq_phase_) break;
    const uint64_t tag = c.tag;
    JobResult r;
    r.hw_status = c.status;
    r.t_start_ns = c.t_start;
    r.t_end_ns = c.t_end;
    if (c.status != VNPU_CPL_OK)
      r.status = hw_status_error(c.status, "job failed at ring index " + std::to_string(c.sq_index));
    if (++cq_head_ == kRingEntries) {
      cq_head_ = 0;
      cq_phase_ ^= 1;
    }
    consumed = true;
    auto it = pending_.find(tag);
    if (it == pending_.end()) continue;  // not ours (cannot happen unless the device misbehaves)
    ring_used_ -= it->second->ncmds;
    done.emplace_back(std::move(it->second), std::move(r));
    pending_.erase(it);
  }
  if (consumed) wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_HEAD), cq_head_);
  const uint32_t qstatus = rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_STATUS));
  if ((qstatus & VNPU_QSTATUS_ERROR) && !broken_) {
    const uint32_t qerr = rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_ERROR));
    broken_ = Error(ErrorCode::kDeviceFault, "sim device queue stopped with error " + std::to_string(qerr) +
                                                 "; open a new device");
    for (auto& [tag, p] : pending_)
      done.emplace_back(std::move(p), JobResult{*broken_, {}, {}, {}});
    pending_.clear();
    ring_used_ = 0;
  }
  if (!done.empty()) space_.notify_all();
  return done;
}

void SimDevice::completion_loop() {
  pthread_setname_np(pthread_self(), "vnpu-complete");
  for (;;) {
    {
      std::unique_lock lock(irq_mu_);
      irq_cv_.wait(lock, [&] { return irq_ || irq_stop_; });
      if (irq_stop_) return;
      irq_ = false;
    }
    std::vector<std::pair<std::unique_ptr<Pending>, JobResult>> done;
    {
      std::lock_guard lock(mu_);
      done = reap_locked();
    }
    for (auto& [p, r] : done) p->done(std::move(r));
  }
}

Result<std::unique_ptr<Device>> SimDevice::open(const DeviceOptions& options) {
  std::unique_ptr<SimDevice> dev(new SimDevice());
  if (auto s = dev->start(options); !s) return std::move(s).error();
  return std::unique_ptr<Device>(std::move(dev));
}

Status SimDevice::start(const DeviceOptions& options) {
  VnpuEngineConfig cfg{};
  if (int r = vnpu_engine_config_finalize(&cfg); r < 0) return errno_error(-r, "sim engine configuration");
  shared_ = std::make_shared<SimShared>(cfg.devmem_size);

  sq_ = static_cast<vnpu_hw_cmd*>(std::aligned_alloc(4096, sizeof(vnpu_hw_cmd) * kRingEntries));
  cq_ = static_cast<vnpu_hw_cpl*>(std::aligned_alloc(4096, sizeof(vnpu_hw_cpl) * kRingEntries));
  if (!sq_ || !cq_) return Error(ErrorCode::kOutOfMemory, "cannot allocate the sim device's rings");
  std::memset(sq_, 0, sizeof(vnpu_hw_cmd) * kRingEntries);
  std::memset(cq_, 0, sizeof(vnpu_hw_cpl) * kRingEntries);
  shared_->regions.add(sq_, sizeof(vnpu_hw_cmd) * kRingEntries);
  shared_->regions.add(cq_, sizeof(vnpu_hw_cpl) * kRingEntries);

  // The threads exist before the engine so that no schedule() or interrupt is ever missed.
  timer_ = std::thread([this] { timer_loop(); });
  completer_ = std::thread([this] { completion_loop(); });

  VnpuEngineHost host{};
  host.opaque = this;
  host.dma_read = host_dma_read;
  host.dma_write = host_dma_write;
  host.clock_ns = host_clock_ns;
  host.schedule = host_schedule;
  host.interrupt = host_interrupt;
  VnpuEngine* engine = nullptr;
  if (int r = vnpu_engine_create(&cfg, &host, &engine); r < 0) return errno_error(-r, "creating the sim engine");

  std::lock_guard lock(mu_);
  engine_ = engine;
  if (rd(VNPU_REG_ID) != VNPU_ID_MAGIC) return Error(ErrorCode::kInternal, "sim engine has a wrong ID register");
  const uint32_t version = rd(VNPU_REG_VERSION);
  if ((version >> 16) != VNPU_VERSION_MAJOR)
    return Error(ErrorCode::kUnsupported, "sim engine interface version " + std::to_string(version >> 16) + " unsupported");
  const uint32_t caps = rd(VNPU_REG_CAPS);
  if ((caps & (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL)) != (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL))
    return Error(ErrorCode::kUnsupported, "sim engine lacks DMA or MATMUL");
  if (!(rd(VNPU_REG_STATUS) & VNPU_STATUS_READY)) return Error(ErrorCode::kDeviceFault, "sim engine not ready");
  if (rd(VNPU_REG_RING_MAX) < kRingEntries)
    return Error(ErrorCode::kUnsupported, "sim engine rings are smaller than " + std::to_string(kRingEntries));

  const auto sq = reinterpret_cast<uint64_t>(sq_), cq = reinterpret_cast<uint64_t>(cq_);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_BASE_LO), static_cast<uint32_t>(sq));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_BASE_HI), static_cast<uint32_t>(sq >> 32));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_SIZE), kRingEntries);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_BASE_LO), static_cast<uint32_t>(cq));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_BASE_HI), static_cast<uint32_t>(cq >> 32));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_SIZE), kRingEntries);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_MSIX_VECTOR), kVector);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CTRL), VNPU_QCTRL_ENABLE);
  const uint32_t qs = rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_STATUS));
  if (!(qs & VNPU_QSTATUS_ENABLED) || (qs & VNPU_QSTATUS_ERROR))
    return Error(ErrorCode::kDeviceFault, "sim engine refused the queue configuration (error " +
                                              std::to_string(rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_ERROR))) + ")");

  info_.backend = "sim";
  info_.name = "sim" + std::to_string(options.index) + " (in-process engine)";
  info_.device_version = version;
  info_.caps = caps;
  info_.devmem_size = static_cast<uint64_t>(rd(VNPU_REG_DEVMEM_SIZE_HI)) << 32 | rd(VNPU_REG_DEVMEM_SIZE_LO);
  info_.max_cmds_per_job = 64;  // as the driver (DRM_VNPU_MAX_CMDS), so jobs behave the same on both backends
  info_.timestamps = true;
  info_.submit_path = "mmio";
  info_.h2d_mbps = rd(VNPU_REG_H2D_MBPS);
  info_.d2h_mbps = rd(VNPU_REG_D2H_MBPS);
  info_.compute_gflops = rd(VNPU_REG_COMPUTE_GFLOPS);
  return {};
}

SimDevice::~SimDevice() {
  std::vector<std::unique_ptr<Pending>> left;
  {
    std::unique_lock lock(mu_);
    stopping_ = true;
    space_.wait_for(lock, kDrainTimeout, [&] { return pending_.empty(); });
    if (!pending_.empty() && engine_) {
      // Disabling the queue completes fetched jobs with ABORTED; give those a moment to be reaped.
      wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CTRL), 0);
      space_.wait_for(lock, std::chrono::seconds(1), [&] { return pending_.empty(); });
    }
  }
  {
    std::lock_guard lock(timer_mu_);
    timer_stop_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  {
    std::lock_guard lock(irq_mu_);
    irq_stop_ = true;
  }
  irq_cv_.notify_all();
  if (completer_.joinable()) completer_.join();
  {
    std::lock_guard lock(mu_);
    // After destroy nothing more is written to host memory, so the rings and buffers may go.
    if (engine_) vnpu_engine_destroy(engine_);
    engine_ = nullptr;
    for (auto& [tag, p] : pending_) left.push_back(std::move(p));
    pending_.clear();
  }
  for (auto& p : left)
    p->done(JobResult{Error(ErrorCode::kAborted, "job aborted: sim device closed before it completed"), {}, {}, {}});
  if (shared_) {
    shared_->regions.remove(sq_);
    shared_->regions.remove(cq_);
  }
  std::free(sq_);
  std::free(cq_);
}

Result<HostBuffer> SimDevice::alloc_host(size_t bytes) {
  if (bytes == 0 || bytes > (2ull << 30))
    return Error(ErrorCode::kInvalidArgument, "host buffer of " + std::to_string(bytes) + " bytes: use 1 B..2 GiB");
  const size_t len = round_up(bytes, 4096);
  auto obj = std::make_shared<SimHostBuffer>();
  obj->shared = shared_;
  obj->owner = shared_.get();
  obj->size = bytes;
  obj->sgl_count = static_cast<uint32_t>((len + kSgeMaxLen - 1) / kSgeMaxLen);
  obj->ptr = std::aligned_alloc(4096, len);
  obj->sgl = static_cast<vnpu_hw_sge*>(std::aligned_alloc(64, round_up(sizeof(vnpu_hw_sge) * obj->sgl_count, 64)));
  if (!obj->ptr || !obj->sgl) return Error(ErrorCode::kOutOfMemory, "cannot allocate a " + std::to_string(bytes) + "-byte host buffer");
  std::memset(obj->ptr, 0, len);
  for (uint32_t i = 0; i < obj->sgl_count; ++i) {
    const uint64_t off = i * kSgeMaxLen;
    obj->sgl[i] = vnpu_hw_sge{reinterpret_cast<uint64_t>(obj->ptr) + off,
                              static_cast<uint32_t>(std::min<uint64_t>(kSgeMaxLen, len - off)), 0};
  }
  shared_->regions.add(obj->ptr, len);
  shared_->regions.add(obj->sgl, sizeof(vnpu_hw_sge) * obj->sgl_count);
  return HostBuffer(std::move(obj));
}

Result<DeviceBuffer> SimDevice::alloc_device(size_t bytes) {
  if (bytes == 0) return Error(ErrorCode::kInvalidArgument, "device buffer of 0 bytes");
  auto addr = shared_->devmem.alloc(bytes);
  if (!addr)
    return Error(ErrorCode::kOutOfMemory, "sim device memory exhausted allocating " + std::to_string(bytes) +
                                              " bytes (device has " + std::to_string(info_.devmem_size) + ")");
  auto obj = std::make_shared<SimDeviceBuffer>();
  obj->shared = shared_;
  obj->owner = shared_.get();
  obj->size = bytes;
  obj->dev_addr = *addr;
  return DeviceBuffer(std::move(obj));
}

Status SimDevice::do_submit(Job job, JobCallback done) {
  const auto n = static_cast<uint32_t>(job.commands.size());
  if (n > kRingEntries) return Error(ErrorCode::kInvalidArgument, "job longer than the command ring");
  std::unique_lock lock(mu_);
  space_.wait(lock, [&] { return stopping_ || broken_ || ring_used_ + n <= kRingEntries; });
  if (stopping_) return Error(ErrorCode::kAborted, "device is closing; job not submitted");
  if (broken_) return *broken_;

  const uint64_t tag = next_tag_++;
  for (uint32_t i = 0; i < n; ++i) {
    const Command& c = job.commands[i];
    vnpu_hw_cmd e{};
    e.flags = i + 1 == n ? VNPU_CMD_F_LAST : 0;
    e.tag = tag;
    switch (c.kind) {
      case Command::Kind::kCopyToDevice:
      case Command::Kind::kCopyFromDevice: {
        const auto& h = static_cast<const SimHostBuffer&>(*c.host);
        e.opcode = c.kind == Command::Kind::kCopyToDevice ? VNPU_OPC_DMA_H2D : VNPU_OPC_DMA_D2H;
        e.dma.sgl_addr = reinterpret_cast<uint64_t>(h.sgl);
        e.dma.sgl_count = h.sgl_count;
        e.dma.sgl_offset = c.host_offset;
        e.dma.dev_addr = c.dev[0]->dev_addr + c.dev_offset[0];
        e.dma.length = c.bytes;
        break;
      }
      case Command::Kind::kMatmul:
        e.opcode = VNPU_OPC_MATMUL;
        e.matmul.a_addr = c.dev[0]->dev_addr + c.dev_offset[0];
        e.matmul.b_addr = c.dev[1]->dev_addr + c.dev_offset[1];
        e.matmul.c_addr = c.dev[2]->dev_addr + c.dev_offset[2];
        e.matmul.m = c.m;
        e.matmul.n = c.n;
        e.matmul.k = c.k;
        e.matmul.dtype = VNPU_DTYPE_F32;
        break;
    }
    sq_[sq_tail_] = e;
    sq_tail_ = (sq_tail_ + 1) % kRingEntries;
  }
  auto p = std::make_unique<Pending>();
  p->job = std::move(job);
  p->done = std::move(done);
  p->ncmds = n;
  pending_.emplace(tag, std::move(p));
  ring_used_ += n;
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_TAIL), sq_tail_);
  return {};
}

}  // namespace

Result<std::unique_ptr<Device>> open_sim_device(const DeviceOptions& options) { return SimDevice::open(options); }

}  // namespace vnpu::detail
