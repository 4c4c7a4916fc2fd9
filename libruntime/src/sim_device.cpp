// SPDX-License-Identifier: MIT
// The "sim" backend: the device's engine library (qemu-device/engine) in-process, driven the way vnpu.ko
// drives the PCI device. This file is a small userspace driver: it owns the command and completion rings, the
// context table and this device's page tables (process memory; DMA address = process virtual address), builds
// scatter-gather tables for host buffers, allocates device memory (physical 64 KiB pages + a device virtual
// range mapped by 3-level page tables, MMU_INVALIDATE after every change), rings doorbells with
// vnpu_engine_mmio_write, turns "interrupts" into wake-ups of a completion thread, and serves the engine's
// schedule() requests with a timer thread (CLOCK_MONOTONIC).
//
// Locks, in the order they may nest: Sim::mu (the transport lock the engine requires around mmio/tick; also
// guards rings, pending jobs and page tables) → timer_mu_ / irq_mu_ → DmaRegions::mu_. Engine worker threads
// call schedule() and dma_* without Sim::mu. Buffers (and jobs, which hold buffers) are never destroyed with
// Sim::mu held: a buffer's destructor takes it to unmap its pages.
#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
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
constexpr uint32_t kRingEntries = 1024;
// Commands the ring holds at once: one entry stays free, since SQ_TAIL == SQ_HEAD means empty (docs/device.md).
constexpr uint32_t kRingCapacity = kRingEntries - 1;
constexpr uint16_t kContext = 1;  // not 0, so a command that forgot its context id fails loudly
constexpr uint64_t kPage = VNPU_MMU_PAGE_SIZE;
constexpr uint64_t kVaBase = 1ull << 32;  // device VAs start at 4 GiB: small numbers are never valid addresses
constexpr uint64_t kVaLimit = 1ull << VNPU_MMU_VA_BITS;
constexpr uint64_t kSgeMaxLen = 1u << 30;  // an SGE covers at most 1 GiB (len is 32-bit)
constexpr auto kDrainTimeout = std::chrono::seconds(10);

// The host memory the device may reach by DMA (rings, context table, page tables, SGL tables, host buffers):
// the sim's IOMMU. An access outside every registered region is a bus error for the engine, never a stray
// write into the process.
//
// The region's kind is the bus's access discipline for memory that the driver (this file) and the device
// (the engine's threads) touch concurrently, as the PCI bus gives it to vnpu.ko and the QEMU device:
// * kData: buffers handed over by a doorbell or a completion (plain copies; ordering comes from the locks
//   around the doorbell and the interrupt);
// * kTable: page tables and the context table, which the driver edits while the device walks them (a
//   mapping made for one buffer while a job of another buffer runs): aligned 8-byte words are single-copy
//   atomic, device reads are acquire loads that pair with the driver's release stores of entries (so a table
//   published by a parent entry is seen initialised);
// * kCompletions: the completion ring, which the driver polls while the device posts records: a record's
//   word holding the phase bit is written last, with release, so a record whose phase the driver sees is
//   complete (a 64-byte posted write lands whole on a real bus).
enum class RegionKind { kData, kTable, kCompletions };

class DmaRegions {
 public:
  // `tag` tells apart regions that may share a start address (imports of caller memory: one range may be
  // imported several times, read-only or not); remove() drops the one region added with the same tag.
  void add(const void* p, size_t len, RegionKind kind = RegionKind::kData, const void* tag = nullptr,
           bool read_only = false) {
    std::lock_guard lock(mu_);
    regions_.emplace(reinterpret_cast<uintptr_t>(p), Region{len, kind, tag, read_only});
  }
  void remove(const void* p, const void* tag = nullptr) {
    std::lock_guard lock(mu_);
    auto [lo, hi] = regions_.equal_range(reinterpret_cast<uintptr_t>(p));
    for (auto it = lo; it != hi; ++it)
      if (it->second.tag == tag) {
        regions_.erase(it);
        return;
      }
  }
  // The kind of a region holding all of [addr, addr + len) that allows the access (a write needs a region
  // that is not read-only), or nullopt if none does: a bus error for the engine.
  std::optional<RegionKind> find(uint64_t addr, size_t len, bool write = false) const {
    std::lock_guard lock(mu_);
    // Regions starting at or below addr, nearest first: the first one holds it unless ranges overlap
    // (imports), and only a failing access walks further.
    for (auto it = regions_.upper_bound(addr); it != regions_.begin();) {
      --it;
      if (range_fits(addr - it->first, len, it->second.len) && !(write && it->second.read_only))
        return it->second.kind;
    }
    return std::nullopt;
  }

 private:
  struct Region {
    size_t len;
    RegionKind kind;
    const void* tag;
    bool read_only;
  };
  mutable std::mutex mu_;
  std::multimap<uint64_t, Region> regions_;
};

bool words_aligned(uint64_t addr, size_t len) {
  return addr % 8 == 0 && len % 8 == 0;
}

// First-fit allocator over [base, base + size), `granule`-sized units, coalescing on free.
class RangeAllocator {
 public:
  RangeAllocator(uint64_t base, uint64_t size, uint64_t granule) : granule_(granule) {
    if (size)
      free_[base] = size;
  }
  std::optional<uint64_t> alloc(uint64_t bytes) {
    bytes = round_up(bytes, granule_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < bytes)
        continue;
      const uint64_t addr = it->first, len = it->second;
      free_.erase(it);
      if (len > bytes)
        free_[addr + bytes] = len - bytes;
      return addr;
    }
    return std::nullopt;
  }
  void free(uint64_t addr, uint64_t bytes) {
    bytes = round_up(bytes, granule_);
    auto [it, inserted] = free_.emplace(addr, bytes);
    if (!inserted)
      return;  // double free: ignore rather than corrupt the map
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
  uint64_t granule_;
  std::map<uint64_t, uint64_t> free_;
};

// A 4 KiB page-table page in process memory, registered for DMA.
struct TablePage {
  uint64_t* entries = nullptr;
};

// What the device and the buffers share, so a buffer may outlive the SimDevice that made it: the transport
// lock, the engine (null once destroyed), DMA regions, device memory and this context's page tables.
struct SimShared {
  std::mutex mu;  // transport lock (see the file comment)
  VnpuEngine* engine = nullptr;
  DmaRegions regions;
  RangeAllocator phys{0, 0, kPage};
  RangeAllocator va{kVaBase, kVaLimit - kVaBase, kPage};
  vnpu_hw_ctx* ctx_table = nullptr;
  uint32_t num_contexts = 0;
  uint64_t* l1 = nullptr;
  std::map<uint64_t, uint64_t*> tables;  // (level << 40 | index path) -> table; owns every table but l1
  uint64_t devmem_used = 0;

  ~SimShared() {
    for (auto& [k, t] : tables) {
      regions.remove(t);
      std::free(t);
    }
    if (l1)
      regions.remove(l1), std::free(l1);
    if (ctx_table)
      regions.remove(ctx_table), std::free(ctx_table);
  }

  uint64_t* new_table() {
    auto* t = static_cast<uint64_t*>(std::aligned_alloc(4096, 4096));
    if (!t)
      return nullptr;
    std::memset(t, 0, 4096);  // before the release store of the parent entry publishes it
    regions.add(t, 4096, RegionKind::kTable);
    return t;
  }

  // The level-3 table covering `va`, created on demand (mu held).
  uint64_t* l3_for(uint64_t va) {
    const uint64_t i1 = VNPU_MMU_INDEX(va, 1), i2 = VNPU_MMU_INDEX(va, 2);
    uint64_t* l2 = nullptr;
    if (auto it = tables.find(2ull << 40 | i1); it != tables.end()) {
      l2 = it->second;
    } else {
      l2 = new_table();
      if (!l2)
        return nullptr;
      tables[2ull << 40 | i1] = l2;
      __atomic_store_n(&l1[i1], reinterpret_cast<uint64_t>(l2) | VNPU_PTE_VALID, __ATOMIC_RELEASE);
    }
    const uint64_t key3 = 3ull << 40 | i1 << 9 | i2;
    if (auto it = tables.find(key3); it != tables.end())
      return it->second;
    uint64_t* l3 = new_table();
    if (!l3)
      return nullptr;
    tables[key3] = l3;
    __atomic_store_n(&l2[i2], reinterpret_cast<uint64_t>(l3) | VNPU_PTE_VALID, __ATOMIC_RELEASE);
    return l3;
  }

  // Map [va, va+len) to [pa, pa+len), page by page (mu held). False if a table could not be allocated.
  bool map(uint64_t va, uint64_t pa, uint64_t len) {
    for (uint64_t off = 0; off < len; off += kPage) {
      uint64_t* l3 = l3_for(va + off);
      if (!l3)
        return false;
      __atomic_store_n(&l3[VNPU_MMU_INDEX(va + off, 3)], (pa + off) | VNPU_PTE_VALID | VNPU_PTE_WRITE,
                       __ATOMIC_RELEASE);
    }
    return true;
  }
  void unmap(uint64_t va, uint64_t len) {
    for (uint64_t off = 0; off < len; off += kPage) {
      const uint64_t v = va + off;
      auto it = tables.find(3ull << 40 | VNPU_MMU_INDEX(v, 1) << 9 | VNPU_MMU_INDEX(v, 2));
      if (it != tables.end())
        __atomic_store_n(&it->second[VNPU_MMU_INDEX(v, 3)], uint64_t{0}, __ATOMIC_RELEASE);
    }
  }
  // Drop the device's cached translations of our context (mu held).
  void invalidate() {
    if (engine)
      vnpu_engine_mmio_write(engine, VNPU_REG_MMU_INVALIDATE, kContext, 4);
  }
};

struct SimHostBuffer final : HostBufferObject {
  ~SimHostBuffer() override {
    shared->regions.remove(sgl);
    shared->regions.remove(ptr, imported ? this : nullptr);
    std::free(sgl);
    if (!imported)
      std::free(ptr);
  }
  std::shared_ptr<SimShared> shared;
  vnpu_hw_sge* sgl = nullptr;  // built once, like the driver's per-BO table
  uint32_t sgl_count = 0;
  bool imported = false;  // import_host(): ptr is the caller's memory, not ours to free
};

struct SimDeviceBuffer final : DeviceBufferObject {
  ~SimDeviceBuffer() override {
    std::lock_guard lock(shared->mu);
    shared->unmap(dev_addr, mapped);
    shared->invalidate();
    shared->va.free(dev_addr, mapped);
    shared->phys.free(phys_addr, mapped);
    shared->devmem_used -= mapped;
  }
  std::shared_ptr<SimShared> shared;
  uint64_t phys_addr = 0;
  uint64_t mapped = 0;
};

class SimDevice final : public Device {
 public:
  static Result<std::unique_ptr<Device>> open(const DeviceOptions& options);
  ~SimDevice() override;

  const DeviceInfo& info() const noexcept override { return info_; }
  Result<uint64_t> clock_ns() override { return monotonic_ns(); }
  Result<HostBuffer> alloc_host(size_t bytes) override;
  Result<DeviceBuffer> alloc_device(size_t bytes) override;
  Result<HostBuffer> import_host(void* ptr, size_t bytes, bool read_only) override;

 protected:
  Status do_submit(Job job, JobCallback done) override;
  const void* owner_token() const noexcept override { return shared_.get(); }

 private:
  struct Pending {
    Job job;
    JobCallback done;
    uint32_t ncmds = 0;
    uint32_t sq_first = 0;  // ring index of its first command (SIGNAL records name theirs)
  };
  using PendingPtr = std::unique_ptr<Pending>;
  // What the completion thread delivers, in record order: a job's end (`job` set), or one of its SIGNAL records
  // (`signaled`: the job, still owned by pending_ until its own record, which comes later in the same order).
  struct Reaped {
    PendingPtr job;
    JobResult result;
    Pending* signaled = nullptr;
    SignalEvent signal;
    Reaped(PendingPtr p, JobResult r) : job(std::move(p)), result(std::move(r)) {}
    Reaped(Pending* p, SignalEvent ev) : signaled(p), signal(ev) {}
  };
  using Finished = std::vector<Reaped>;
  static void deliver(Reaped& x);

  SimDevice() = default;
  Status start(const DeviceOptions& options);
  uint32_t rd(uint64_t off) { return static_cast<uint32_t>(vnpu_engine_mmio_read(engine_, off, 4)); }
  void wr(uint64_t off, uint32_t v) { vnpu_engine_mmio_write(engine_, off, v, 4); }
  void timer_loop();
  void completion_loop();
  Finished reap_locked();  // shared_->mu held
  bool ring_has_room_locked(uint32_t n) const { return ring_used_ + n <= kRingCapacity; }
  void write_job_locked(PendingPtr p);  // encode into the command ring and ring the doorbell
  void fail_all_locked(const Error& e, Finished& out);

  static int host_dma_read(void* opaque, uint64_t addr, void* buf, size_t len);
  static int host_dma_write(void* opaque, uint64_t addr, const void* buf, size_t len);
  static uint64_t host_clock_ns(void*) { return monotonic_ns(); }
  static void host_schedule(void* opaque, uint64_t deadline_ns);
  static void host_interrupt(void* opaque, unsigned vector);

  DeviceInfo info_;
  std::shared_ptr<SimShared> shared_;
  VnpuEngine* engine_ = nullptr;  // == shared_->engine while it lives

  // Guarded by shared_->mu:
  std::condition_variable space_;  // ring space freed / pending_ drained
  vnpu_hw_cmd* sq_ = nullptr;
  vnpu_hw_cpl* cq_ = nullptr;
  uint32_t sq_tail_ = 0, cq_head_ = 0;
  uint16_t cq_phase_ = 1;
  uint32_t ring_used_ = 0;  // commands of jobs not yet completed
  uint64_t next_tag_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;
  // Jobs accepted while the ring had no room for them, in submission order: what drm_sched's entity queue is
  // to vnpu.ko. Only a JobCallback (the completion thread, the one thread that frees ring space) adds to it
  // without waiting; it is written to the ring as completions make room.
  std::deque<PendingPtr> backlog_;
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
  const auto kind = d->shared_->regions.find(addr, len);
  if (!kind)
    return -1;
  if (*kind == RegionKind::kTable && words_aligned(addr, len)) {
    const auto* src = reinterpret_cast<const uint64_t*>(addr);
    auto* dst = static_cast<std::byte*>(buf);  // the engine's buffer need not be 8-byte aligned
    for (size_t i = 0; i < len / 8; ++i) {
      const uint64_t w = __atomic_load_n(&src[i], __ATOMIC_ACQUIRE);
      std::memcpy(dst + i * 8, &w, 8);
    }
    return 0;
  }
  std::memcpy(buf, reinterpret_cast<const void*>(addr), len);
  return 0;
}

int SimDevice::host_dma_write(void* opaque, uint64_t addr, const void* buf, size_t len) {
  auto* d = static_cast<SimDevice*>(opaque);
  const auto kind = d->shared_->regions.find(addr, len, /*write=*/true);
  if (!kind)
    return -1;
  constexpr size_t kRec = sizeof(vnpu_hw_cpl), kPhaseWord = offsetof(vnpu_hw_cpl, flags) / 8;
  if (*kind == RegionKind::kCompletions && addr % kRec == 0 && len % kRec == 0) {
    auto* dst = reinterpret_cast<uint64_t*>(addr);
    const auto* src = static_cast<const std::byte*>(buf);
    for (size_t r = 0; r < len / kRec; ++r) {
      uint64_t w[kRec / 8];
      std::memcpy(w, src + r * kRec, kRec);
      uint64_t* rec = dst + r * (kRec / 8);
      for (size_t i = 0; i < kRec / 8; ++i)
        if (i != kPhaseWord)
          __atomic_store_n(&rec[i], w[i], __ATOMIC_RELAXED);
      __atomic_store_n(&rec[kPhaseWord], w[kPhaseWord], __ATOMIC_RELEASE);
    }
    return 0;
  }
  if (*kind == RegionKind::kTable && words_aligned(addr, len)) {
    auto* dst = reinterpret_cast<uint64_t*>(addr);
    const auto* src = static_cast<const std::byte*>(buf);
    for (size_t i = 0; i < len / 8; ++i) {
      uint64_t w;
      std::memcpy(&w, src + i * 8, 8);
      __atomic_store_n(&dst[i], w, __ATOMIC_RELEASE);
    }
    return 0;
  }
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
    if (timer_stop_)
      return;
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
      std::lock_guard dev(shared_->mu);
      if (shared_->engine)
        vnpu_engine_tick(shared_->engine);
    }
    lock.lock();
  }
}

SimDevice::Finished SimDevice::reap_locked() {
  Finished done;
  bool consumed = false;
  for (;;) {
    const vnpu_hw_cpl& c = cq_[cq_head_];
    // Acquire: pairs with the release store of the record's phase word (host_dma_write, kCompletions).
    if ((__atomic_load_n(&c.flags, __ATOMIC_ACQUIRE) & VNPU_CPL_F_PHASE) != cq_phase_)
      break;
    const uint64_t tag = c.tag;
    if (++cq_head_ == kRingEntries) {  // c stays readable: the device reuses the slot only after CQ_HEAD is written
      cq_head_ = 0;
      cq_phase_ ^= 1;
    }
    consumed = true;
    if (c.flags & VNPU_CPL_F_SIGNAL) {
      // Intermediate record of a SIGNAL: the job goes on.
      auto it = pending_.find(tag);
      if (it == pending_.end())
        continue;  // not ours (cannot happen unless the device misbehaves)
      SignalEvent ev;
      ev.command_index = (c.sq_index + kRingEntries - it->second->sq_first) % kRingEntries;
      ev.t_ns = c.t_end;
      done.emplace_back(it->second.get(), ev);
      continue;
    }
    JobResult r;
    r.hw_status = c.status;
    r.t_start_ns = c.t_start;
    r.t_end_ns = c.t_end;
    r.h2d_ns = c.h2d_ns;
    r.compute_ns = c.compute_ns;
    r.d2h_ns = c.d2h_ns;
    r.fault_addr = c.fault_addr;
    if (c.status != VNPU_CPL_OK)
      r.status = job_error(0, c.status, c.fault_addr, "job (ring index " + std::to_string(c.sq_index) + ")");
    auto it = pending_.find(tag);
    if (it == pending_.end())
      continue;  // not ours (cannot happen unless the device misbehaves)
    ring_used_ -= it->second->ncmds;
    done.emplace_back(std::move(it->second), std::move(r));
    pending_.erase(it);
  }
  if (consumed)
    wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_HEAD), cq_head_);
  const uint32_t qstatus = rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_STATUS));
  if ((qstatus & VNPU_QSTATUS_ERROR) && !broken_) {
    const uint32_t qerr = rd(VNPU_REG_QUEUE(kQueue, VNPU_QREG_ERROR));
    broken_ = Error(ErrorCode::kDeviceFault,
                    "sim device queue stopped with error " + std::to_string(qerr) + "; open a new device");
    fail_all_locked(*broken_, done);
  }
  // Space freed: move waiting jobs onto the ring, oldest first (also while closing: they were accepted).
  while (!broken_ && !backlog_.empty() && ring_has_room_locked(backlog_.front()->ncmds)) {
    write_job_locked(std::move(backlog_.front()));
    backlog_.pop_front();
  }
  if (!done.empty())
    space_.notify_all();
  return done;
}

void SimDevice::fail_all_locked(const Error& e, Finished& out) {
  for (auto& [tag, p] : pending_) {
    JobResult r;
    r.status = e;
    out.emplace_back(std::move(p), std::move(r));
  }
  pending_.clear();
  for (auto& p : backlog_) {
    JobResult r;
    r.status = e;
    out.emplace_back(std::move(p), std::move(r));
  }
  backlog_.clear();
  ring_used_ = 0;
}

void SimDevice::deliver(Reaped& x) {
  if (x.signaled) {
    if (x.signaled->job.on_signal)
      x.signaled->job.on_signal(x.signal);
    return;
  }
  x.job->done(std::move(x.result));
}

void SimDevice::completion_loop() {
  pthread_setname_np(pthread_self(), "vnpu-complete");
  for (;;) {
    {
      std::unique_lock lock(irq_mu_);
      irq_cv_.wait(lock, [&] { return irq_ || irq_stop_; });
      if (irq_stop_)
        return;
      irq_ = false;
    }
    Finished done;
    {
      std::lock_guard lock(shared_->mu);
      done = reap_locked();
    }
    for (auto& x : done)
      deliver(x);
    done.clear();  // jobs (and the buffers they hold) die here, outside the transport lock
  }
}

Result<std::unique_ptr<Device>> SimDevice::open(const DeviceOptions& options) {
  std::unique_ptr<SimDevice> dev(new SimDevice());
  if (auto s = dev->start(options); !s)
    return std::move(s).error();
  return std::unique_ptr<Device>(std::move(dev));
}

Status SimDevice::start(const DeviceOptions& options) {
  if (options.priority < -1 || options.priority > VNPU_PRIORITY_MAX)
    return Error(ErrorCode::kInvalidArgument,
                 "queue priority " + std::to_string(options.priority) + " out of range 0..3");
  // The timing model's defaults are the QEMU device's. VNPU_SIM_<FIELD> environment variables override a
  // few of them (documented in docs/runtime.md), e.g. lower DMA bandwidths so that the functional copies of
  // big synthetic transfers keep up with their modelled time on a slow host.
  VnpuEngineConfig cfg{};
  auto env_u32 = [](const char* name, uint32_t& field) {
    if (const char* v = std::getenv(name); v && *v)
      field = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
  };
  env_u32("VNPU_SIM_H2D_MBPS", cfg.h2d_mbps);
  env_u32("VNPU_SIM_D2H_MBPS", cfg.d2h_mbps);
  env_u32("VNPU_SIM_COMPUTE_CORES", cfg.compute_cores);
  env_u32("VNPU_SIM_COMPUTE_GFLOPS", cfg.compute_gflops);
  // Power-on fault injection, like the QEMU device's fi-* properties (docs/device.md): for tests of how
  // device faults surface through the runtime and its language bindings.
  cfg.fi_queue = 0xffffffffu;
  env_u32("VNPU_SIM_FI_KIND", cfg.fi_kind);
  env_u32("VNPU_SIM_FI_QUEUE", cfg.fi_queue);
  env_u32("VNPU_SIM_FI_AFTER", cfg.fi_after);
  env_u32("VNPU_SIM_FI_RATE_PPM", cfg.fi_rate_ppm);
  env_u32("VNPU_SIM_FI_SEED", cfg.fi_seed);
  if (const char* v = std::getenv("VNPU_SIM_DEVMEM_MB"); v && *v)
    cfg.devmem_size = std::strtoull(v, nullptr, 10) << 20;
  cfg.timing_only = options.timing_only ? 1 : 0;
  if (int r = vnpu_engine_config_finalize(&cfg); r < 0)
    return errno_error(-r, "sim engine configuration (VNPU_SIM_* variables?)");
  shared_ = std::make_shared<SimShared>();
  shared_->phys = RangeAllocator(0, cfg.devmem_size, kPage);
  shared_->num_contexts = cfg.num_contexts;
  if (cfg.num_contexts <= kContext)
    return Error(ErrorCode::kUnsupported, "sim engine has too few contexts");

  sq_ = static_cast<vnpu_hw_cmd*>(std::aligned_alloc(4096, sizeof(vnpu_hw_cmd) * kRingEntries));
  cq_ = static_cast<vnpu_hw_cpl*>(std::aligned_alloc(4096, sizeof(vnpu_hw_cpl) * kRingEntries));
  const size_t ctx_bytes = round_up(sizeof(vnpu_hw_ctx) * cfg.num_contexts, 4096);
  shared_->ctx_table = static_cast<vnpu_hw_ctx*>(std::aligned_alloc(4096, ctx_bytes));
  shared_->l1 = shared_->new_table();
  if (!sq_ || !cq_ || !shared_->ctx_table || !shared_->l1)
    return Error(ErrorCode::kOutOfMemory, "cannot allocate the sim device's rings and tables");
  std::memset(sq_, 0, sizeof(vnpu_hw_cmd) * kRingEntries);
  std::memset(cq_, 0, sizeof(vnpu_hw_cpl) * kRingEntries);
  std::memset(shared_->ctx_table, 0, ctx_bytes);
  shared_->ctx_table[kContext].pt_root = reinterpret_cast<uint64_t>(shared_->l1);
  shared_->ctx_table[kContext].flags = VNPU_CTX_F_VALID;
  shared_->regions.add(sq_, sizeof(vnpu_hw_cmd) * kRingEntries);
  shared_->regions.add(cq_, sizeof(vnpu_hw_cpl) * kRingEntries, RegionKind::kCompletions);
  shared_->regions.add(shared_->ctx_table, ctx_bytes, RegionKind::kTable);

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
  if (int r = vnpu_engine_create(&cfg, &host, &engine); r < 0)
    return errno_error(-r, "creating the sim engine");

  std::lock_guard lock(shared_->mu);
  engine_ = shared_->engine = engine;
  if (rd(VNPU_REG_ID) != VNPU_ID_MAGIC)
    return Error(ErrorCode::kInternal, "sim engine has a wrong ID register");
  const uint32_t version = rd(VNPU_REG_VERSION);
  if ((version >> 16) != VNPU_VERSION_MAJOR)
    return Error(ErrorCode::kUnsupported,
                 "sim engine interface version " + std::to_string(version >> 16) + " unsupported");
  const uint32_t caps = rd(VNPU_REG_CAPS);
  const uint32_t need = VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL | VNPU_CAP_MMU;
  if ((caps & need) != need)
    return Error(ErrorCode::kUnsupported, "sim engine lacks DMA, MATMUL or the MMU");
  if (!(rd(VNPU_REG_STATUS) & VNPU_STATUS_READY))
    return Error(ErrorCode::kDeviceFault, "sim engine not ready");
  if (rd(VNPU_REG_RING_MAX) < kRingEntries)
    return Error(ErrorCode::kUnsupported, "sim engine rings are smaller than " + std::to_string(kRingEntries));

  const auto ct = reinterpret_cast<uint64_t>(shared_->ctx_table);
  wr(VNPU_REG_CTX_TABLE_LO, static_cast<uint32_t>(ct));
  wr(VNPU_REG_CTX_TABLE_HI, static_cast<uint32_t>(ct >> 32));
  wr(VNPU_REG_MMU_INVALIDATE, 0xffffffffu);

  const auto sq = reinterpret_cast<uint64_t>(sq_), cq = reinterpret_cast<uint64_t>(cq_);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_BASE_LO), static_cast<uint32_t>(sq));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_BASE_HI), static_cast<uint32_t>(sq >> 32));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_SIZE), kRingEntries);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_BASE_LO), static_cast<uint32_t>(cq));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_BASE_HI), static_cast<uint32_t>(cq >> 32));
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CQ_SIZE), kRingEntries);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_MSIX_VECTOR), kQueue);
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_PRIORITY), options.priority < 0 ? 1u : static_cast<uint32_t>(options.priority));
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
  info_.signals = (caps & VNPU_CAP_SIGNAL) != 0;
  info_.max_signals_per_job = info_.signals ? VNPU_MAX_SIGNALS_PER_JOB : 0;
  info_.h2d_mbps = rd(VNPU_REG_H2D_MBPS);
  info_.d2h_mbps = rd(VNPU_REG_D2H_MBPS);
  info_.compute_gflops = rd(VNPU_REG_COMPUTE_GFLOPS);
  info_.compute_cores = std::max(1u, rd(VNPU_REG_COMPUTE_CORES));
  info_.cmd_overhead_ns = rd(VNPU_REG_CMD_OVERHEAD_NS);
  info_.h2d_latency_ns = rd(VNPU_REG_H2D_LATENCY_NS);
  info_.d2h_latency_ns = rd(VNPU_REG_D2H_LATENCY_NS);
  info_.mmu_page_size = kPage;
  info_.context_id = kContext;
  info_.host_import = true;
  info_.timing_only = (rd(VNPU_REG_CONTROL) & VNPU_CONTROL_TIMING_ONLY) != 0;
  if (info_.timing_only != options.timing_only)
    return Error(ErrorCode::kUnsupported, std::string("sim engine did not come up ") +
                                              (options.timing_only ? "in" : "out of") + " timing-only mode");
  return {};
}

SimDevice::~SimDevice() {
  std::vector<std::unique_ptr<Pending>> left;
  if (shared_) {
    std::unique_lock lock(shared_->mu);
    stopping_ = true;
    space_.notify_all();  // submitters waiting for ring space give up (kAborted)
    space_.wait_for(lock, kDrainTimeout, [&] { return pending_.empty() && backlog_.empty(); });
    if (!pending_.empty() && engine_) {
      // Resetting the queue completes fetched jobs (hung ones too) with ABORTED; give those a moment. Jobs
      // still waiting for ring space are aborted below, never written to a ring being torn down.
      for (auto& p : backlog_)
        left.push_back(std::move(p));
      backlog_.clear();
      wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_CTRL), VNPU_QCTRL_RESET);
      space_.wait_for(lock, std::chrono::seconds(1), [&] { return pending_.empty(); });
    }
  }
  {
    std::lock_guard lock(timer_mu_);
    timer_stop_ = true;
  }
  timer_cv_.notify_all();
  if (timer_.joinable())
    timer_.join();
  {
    std::lock_guard lock(irq_mu_);
    irq_stop_ = true;
  }
  irq_cv_.notify_all();
  if (completer_.joinable())
    completer_.join();
  if (shared_) {
    VnpuEngine* engine = nullptr;
    {
      std::lock_guard lock(shared_->mu);
      engine = std::exchange(shared_->engine, nullptr);
      engine_ = nullptr;
      for (auto& [tag, p] : pending_)
        left.push_back(std::move(p));
      pending_.clear();
      for (auto& p : backlog_)
        left.push_back(std::move(p));
      backlog_.clear();
    }
    // After destroy nothing more is written to host memory, so the rings and buffers may go.
    if (engine)
      vnpu_engine_destroy(engine);
  }
  for (auto& p : left) {
    JobResult r;
    r.status = Error(ErrorCode::kAborted, "job aborted: sim device closed before it completed");
    p->done(std::move(r));
  }
  left.clear();
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
  if (!obj->ptr || !obj->sgl)
    return Error(ErrorCode::kOutOfMemory, "cannot allocate a " + std::to_string(bytes) + "-byte host buffer");
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

// The sim's DMA address space is this process's memory, so importing is registering the range with the
// IOMMU (DmaRegions) and building its scatter-gather table: no pinning, no copy. The range stays reachable
// by the engine until the buffer object dies (the handle and every job naming it are gone).
Result<HostBuffer> SimDevice::import_host(void* ptr, size_t bytes, bool read_only) {
  if (!ptr || bytes == 0)
    return Error(ErrorCode::kInvalidArgument, "import_host: null pointer or 0 bytes");
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  if (bytes > (1ull << 40) || addr > UINTPTR_MAX - bytes)
    return Error(ErrorCode::kInvalidArgument,
                 "import_host: the range of " + std::to_string(bytes) + " bytes wraps or exceeds 1 TiB");
  auto obj = std::make_shared<SimHostBuffer>();
  obj->shared = shared_;
  obj->owner = shared_.get();
  obj->ptr = ptr;
  obj->size = bytes;
  obj->read_only = read_only;
  obj->imported = true;
  obj->sgl_count = static_cast<uint32_t>((bytes + kSgeMaxLen - 1) / kSgeMaxLen);
  obj->sgl = static_cast<vnpu_hw_sge*>(std::aligned_alloc(64, round_up(sizeof(vnpu_hw_sge) * obj->sgl_count, 64)));
  if (!obj->sgl) {
    obj->ptr = nullptr;  // nothing registered yet
    return Error(ErrorCode::kOutOfMemory, "import_host: cannot allocate a scatter-gather table");
  }
  for (uint32_t i = 0; i < obj->sgl_count; ++i) {
    const uint64_t off = i * kSgeMaxLen;
    obj->sgl[i] = vnpu_hw_sge{addr + off, static_cast<uint32_t>(std::min<uint64_t>(kSgeMaxLen, bytes - off)), 0};
  }
  shared_->regions.add(ptr, bytes, RegionKind::kData, obj.get(), read_only);
  shared_->regions.add(obj->sgl, sizeof(vnpu_hw_sge) * obj->sgl_count);
  return HostBuffer(std::move(obj));
}

Result<DeviceBuffer> SimDevice::alloc_device(size_t bytes) {
  if (bytes == 0)
    return Error(ErrorCode::kInvalidArgument, "device buffer of 0 bytes");
  const uint64_t len = round_up(bytes, kPage);
  auto obj = std::make_shared<SimDeviceBuffer>();
  obj->shared = shared_;
  obj->owner = shared_.get();
  obj->size = bytes;
  std::lock_guard lock(shared_->mu);
  auto pa = shared_->phys.alloc(len);
  if (!pa)
    return Error(ErrorCode::kOutOfMemory, "sim device memory exhausted allocating " + std::to_string(bytes) +
                                              " bytes (device has " + std::to_string(info_.devmem_size) + ", " +
                                              std::to_string(shared_->devmem_used) + " in use)");
  auto va = shared_->va.alloc(len);
  if (!va) {
    shared_->phys.free(*pa, len);
    return Error(ErrorCode::kOutOfMemory, "sim device virtual address space exhausted");
  }
  if (!shared_->map(*va, *pa, len)) {
    shared_->unmap(*va, len);
    shared_->va.free(*va, len);
    shared_->phys.free(*pa, len);
    return Error(ErrorCode::kOutOfMemory, "cannot allocate sim page tables");
  }
  shared_->invalidate();
  shared_->devmem_used += len;
  obj->phys_addr = *pa;
  obj->mapped = len;
  obj->dev_addr = *va;
  return DeviceBuffer(std::move(obj));
}

Status SimDevice::do_submit(Job job, JobCallback done) {
  const auto n = static_cast<uint32_t>(job.commands.size());
  if (n > kRingCapacity)
    return Error(ErrorCode::kInvalidArgument, "job longer than the command ring");
  auto p = std::make_unique<Pending>();
  p->job = std::move(job);
  p->done = std::move(done);
  p->ncmds = n;
  std::unique_lock lock(shared_->mu);
  if (std::this_thread::get_id() == completer_.get_id()) {
    // A JobCallback submitting (AsyncRuntime chains compute after H2D this way). Only this thread frees ring
    // space, so waiting here would wait forever once the ring is full: queue the job behind the ring instead.
    if (stopping_)
      return Error(ErrorCode::kAborted, "device is closing; job not submitted");
    if (broken_)
      return *broken_;
    if (backlog_.empty() && ring_has_room_locked(n))
      write_job_locked(std::move(p));
    else
      backlog_.push_back(std::move(p));
    return {};
  }
  // Any other thread: back-pressure. Wait for room, behind the jobs already waiting (FIFO).
  space_.wait(lock, [&] { return stopping_ || broken_ || (backlog_.empty() && ring_has_room_locked(n)); });
  if (stopping_)
    return Error(ErrorCode::kAborted, "device is closing; job not submitted");
  if (broken_)
    return *broken_;
  write_job_locked(std::move(p));
  return {};
}

void SimDevice::write_job_locked(PendingPtr p) {
  const Job& job = p->job;
  const uint32_t n = p->ncmds;
  const uint64_t tag = next_tag_++;
  p->sq_first = sq_tail_;
  for (uint32_t i = 0; i < n; ++i) {
    const Command& c = job.commands[i];
    vnpu_hw_cmd e{};
    e.flags = i + 1 == n ? VNPU_CMD_F_LAST : 0;
    e.ctx_id = kContext;
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
      case Command::Kind::kExec:
        e.opcode = VNPU_OPC_EXEC;
        e.exec.prog_addr = c.dev[0]->dev_addr + c.dev_offset[0];
        e.exec.prog_len = static_cast<uint32_t>(c.size2);
        e.exec.num_bindings = c.count;
        e.exec.bindings_addr = c.dev[1]->dev_addr + c.dev_offset[1];
        break;
      case Command::Kind::kSynth:
        e.opcode = VNPU_OPC_SYNTH;
        e.synth.ns = c.ns;
        break;
      case Command::Kind::kNop: e.opcode = VNPU_OPC_NOP; break;
      case Command::Kind::kSignal: e.opcode = VNPU_OPC_SIGNAL; break;
    }
    sq_[sq_tail_] = e;
    sq_tail_ = (sq_tail_ + 1) % kRingEntries;
  }
  pending_.emplace(tag, std::move(p));
  ring_used_ += n;
  wr(VNPU_REG_QUEUE(kQueue, VNPU_QREG_SQ_TAIL), sq_tail_);
}

}  // namespace

Result<std::unique_ptr<Device>> open_sim_device(const DeviceOptions& options) {
  return SimDevice::open(options);
}

}  // namespace vnpu::detail
