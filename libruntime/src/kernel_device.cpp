// SPDX-License-Identifier: MIT
// The "kernel" backend: vnpu.ko through /dev/accel/accelN. Buffers are GEM objects (host BOs are mmap'd
// shmem, imported host memory is USERPTR: the caller's pages pinned by the driver); jobs go to the driver as one io_uring IORING_OP_URING_CMD each (one CQE back per job), or through
// the SUBMIT/WAIT ioctls when SubmitMode::kIoctl is chosen.
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xf86drm.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "internal.h"
#include "vnpu_accel.h"
#include "vnpu_hw.h"

namespace vnpu::detail {
namespace {

constexpr unsigned kRingEntries = 256;
constexpr uint32_t kReportSlots = 1024;  // job reports in flight at once; jobs beyond that go without one
constexpr uint64_t kStopTag = ~0ull;
constexpr uint64_t kEventTag = ~0ull - 1;  // the IORING_OP_READ of DRM events kept in flight on the ring
constexpr auto kDrainTimeout = std::chrono::seconds(10);

// The accel fd, shared by the device and every buffer so a GEM_CLOSE never hits a closed (or reused) fd.
struct AccelFd {
  explicit AccelFd(int f) : fd(f) {}
  ~AccelFd() { ::close(fd); }
  AccelFd(const AccelFd&) = delete;
  AccelFd& operator=(const AccelFd&) = delete;
  const int fd;
};

void gem_close(int fd, uint32_t handle) {
  drm_gem_close req{};
  req.handle = handle;
  // Nothing useful to do on failure in a destructor: the handle goes away with the fd at the latest.
  (void)drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &req);
}

struct KernelHostBuffer final : HostBufferObject {
  ~KernelHostBuffer() override {
    if (ptr && map_len)
      ::munmap(ptr, map_len);
    gem_close(fd->fd, handle);
  }
  std::shared_ptr<AccelFd> fd;
  uint32_t handle = 0;
  size_t map_len = 0;     // BO_CREATE: the mmap of the BO; import_host (USERPTR): 0, the caller's memory
  uint64_t bo_offset = 0;  // USERPTR: where ptr lies in the pinned pages (the object starts page-aligned)
};

struct KernelDeviceBuffer final : DeviceBufferObject {
  ~KernelDeviceBuffer() override { gem_close(fd->fd, handle); }
  std::shared_ptr<AccelFd> fd;
  uint32_t handle = 0;
};

class KernelDevice final : public Device {
 public:
  static Result<std::unique_ptr<Device>> open(const DeviceOptions& options);
  ~KernelDevice() override;

  const DeviceInfo& info() const noexcept override { return info_; }
  Result<HostBuffer> alloc_host(size_t bytes) override;
  Result<DeviceBuffer> alloc_device(size_t bytes) override;
  Result<HostBuffer> import_host(void* ptr, size_t bytes, bool read_only) override;

 protected:
  Status do_submit(Job job, JobCallback done) override;
  const void* owner_token() const noexcept override { return fd_.get(); }

 private:
  struct Pending {
    Job job;                         // keeps the buffers alive until the job completes
    std::vector<drm_vnpu_cmd> cmds;  // the driver may read them after submission when it goes async
    JobCallback done;
    uint64_t seqno = 0;   // ioctl mode
    int64_t report = -1;  // index of the job-report slot, -1 if none
    // SIGNAL commands: the driver sends exactly one DRM event per SIGNAL, all before the job's completion.
    uint32_t signals = 0;       // SIGNAL commands in the job
    uint32_t signals_seen = 0;  // their events read so far
    bool event_mode = false;    // ioctl mode: submitted with DRM_VNPU_SUBMIT_F_EVENT (completion as an event)
    bool completed = false;     // the CQE (io_uring) or the job event (ioctl mode) arrived
    int status = 0;             // its status
  };

  KernelDevice(std::shared_ptr<AccelFd> fd, SubmitMode mode) : fd_(std::move(fd)), mode_(mode) {}
  Result<uint64_t> get_param(uint32_t param) const;
  Result<uint64_t> clock_ns() override { return get_param(DRM_VNPU_PARAM_DEVICE_CLOCK_NS); }
  // Fill the timing/status fields of `r` from report slot `idx` and free the slot.
  void read_report(int64_t idx, JobResult& r);
  static std::vector<drm_vnpu_cmd> encode(const Job& job);
  void uring_loop();
  void ioctl_loop();
  void finish(std::unique_ptr<Pending> p, JobResult r);
  // Completion thread: dispatch the DRM events in buf (SIGNAL: on_signal; JOB: marks the job completed).
  void handle_events(const uint8_t* buf, size_t len);
  // io_uring mode: queue the READ of DRM events (mu_ held).
  bool arm_event_read();
  // io_uring mode: finish completed jobs, in CQE order, once their SIGNAL events are in.
  void flush_completed();

  std::shared_ptr<AccelFd> fd_;
  SubmitMode mode_;
  DeviceInfo info_;

  std::mutex mu_;  // pending_, wait_order_, next_id_, stopping_, and the io_uring submission side
  std::condition_variable cv_;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;
  std::deque<uint64_t> wait_order_;  // ioctl mode: ids in submission order
  uint64_t next_id_ = 1;
  bool stopping_ = false;        // no new submissions
  bool stop_completer_ = false;  // ioctl mode: the completion thread should exit
  io_uring ring_{};
  bool ring_ready_ = false;
  uint32_t queue_id_ = 0;
  // Job reports: one host BO of kReportSlots reports, a free list of slot indices (guarded by mu_).
  HostBuffer reports_;
  uint32_t report_handle_ = 0;
  std::vector<uint32_t> free_reports_;
  std::thread completer_;
  // SIGNAL delivery: DRM events read from the fd (by the ring's READ or read(2) in ioctl mode).
  alignas(8) uint8_t events_[4096];
  uint32_t signal_jobs_ = 0;         // pending jobs with SIGNAL commands (mu_)
  std::deque<uint64_t> completed_;   // io_uring mode: ids whose CQE arrived, in order (completion thread)
};

Result<uint64_t> KernelDevice::get_param(uint32_t param) const {
  drm_vnpu_get_param p{};
  p.param = param;
  if (drmIoctl(fd_->fd, DRM_IOCTL_VNPU_GET_PARAM, &p) != 0)
    return errno_error(errno, info_.name + ": GET_PARAM " + std::to_string(param));
  return p.value;
}

Result<std::unique_ptr<Device>> KernelDevice::open(const DeviceOptions& options) {
  const std::string path = "/dev/accel/accel" + std::to_string(options.index);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return Error(ErrorCode::kNotFound, "no device at " + path +
                                             ": is vnpu.ko loaded and the index right? Use backend 'sim' to run "
                                             "without the driver");
    return errno_error(err, "cannot open " + path);
  }
  std::unique_ptr<KernelDevice> dev(new KernelDevice(std::make_shared<AccelFd>(fd), options.submit_mode));
  DeviceInfo& inf = dev->info_;
  inf.backend = "kernel";
  inf.name = path;

  drmVersionPtr ver = drmGetVersion(fd);
  const bool is_vnpu = ver && ver->name && std::strcmp(ver->name, "vnpu") == 0;
  if (ver)
    drmFreeVersion(ver);
  if (!is_vnpu)
    return Error(ErrorCode::kUnsupported, path + " is not driven by vnpu.ko");

  struct Want {
    uint32_t param;
    uint64_t* out;
  };
  uint64_t version = 0, caps = 0, devmem = 0, max_cmds = 0, uring = 0, h2d = 0, d2h = 0, gflops = 0;
  for (const Want& w : {Want{DRM_VNPU_PARAM_DEVICE_VERSION, &version}, Want{DRM_VNPU_PARAM_CAPS, &caps},
                        Want{DRM_VNPU_PARAM_DEVMEM_SIZE, &devmem}, Want{DRM_VNPU_PARAM_MAX_CMDS, &max_cmds},
                        Want{DRM_VNPU_PARAM_URING_CMD, &uring}, Want{DRM_VNPU_PARAM_H2D_MBPS, &h2d},
                        Want{DRM_VNPU_PARAM_D2H_MBPS, &d2h}, Want{DRM_VNPU_PARAM_COMPUTE_GFLOPS, &gflops}}) {
    auto v = dev->get_param(w.param);
    if (!v)
      return std::move(v).error();
    *w.out = *v;
  }
  if ((version >> 16) != VNPU_VERSION_MAJOR)
    return Error(ErrorCode::kUnsupported, path + ": device interface version " + std::to_string(version >> 16) + "." +
                                              std::to_string(version & 0xffff) + " is not supported (need " +
                                              std::to_string(VNPU_VERSION_MAJOR) +
                                              ".x); update vnpu.ko and the device");
  if ((caps & (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL)) != (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL))
    return Error(ErrorCode::kUnsupported, path + ": device lacks DMA or MATMUL capability");
  inf.device_version = static_cast<uint32_t>(version);
  inf.caps = static_cast<uint32_t>(caps);
  inf.devmem_size = devmem;
  inf.max_cmds_per_job = static_cast<uint32_t>(std::min<uint64_t>(max_cmds, DRM_VNPU_MAX_CMDS));
  inf.h2d_mbps = static_cast<uint32_t>(h2d);
  inf.d2h_mbps = static_cast<uint32_t>(d2h);
  inf.compute_gflops = static_cast<uint32_t>(gflops);
  // Informational parameters: an older driver may lack them.
  if (auto v = dev->get_param(DRM_VNPU_PARAM_COMPUTE_CORES); v && *v > 0)
    inf.compute_cores = static_cast<uint32_t>(*v);
  if (auto v = dev->get_param(DRM_VNPU_PARAM_MMU_PAGE_SIZE); v)
    inf.mmu_page_size = *v;
  if (auto v = dev->get_param(DRM_VNPU_PARAM_CONTEXT_ID); v)
    inf.context_id = static_cast<uint32_t>(*v);
  // SIGNAL commands: an older driver gives EINVAL for the parameter.
  if (auto v = dev->get_param(DRM_VNPU_PARAM_MAX_SIGNALS); v && *v > 0) {
    inf.signals = true;
    inf.max_signals_per_job = static_cast<uint32_t>(*v);
  }
  // USERPTR: an older driver gives EINVAL for the parameter.
  if (auto v = dev->get_param(DRM_VNPU_PARAM_USERPTR); v && *v == 1)
    inf.host_import = true;
  // Timing-only is the device's power-on mode (QEMU property), not something a client may switch: a client
  // that wants real outputs must not get a device that skips the arithmetic, and vice versa.
  {
    auto v = dev->get_param(DRM_VNPU_PARAM_TIMING_ONLY);
    if (!v && options.timing_only)
      return Error(ErrorCode::kUnsupported, path + ": the driver cannot report timing-only mode; update vnpu.ko");
    inf.timing_only = v && *v != 0;
  }
  if (inf.timing_only != options.timing_only)
    return Error(ErrorCode::kUnsupported,
                 inf.timing_only
                     ? path +
                           " is in timing-only mode (outputs undefined) but timing_only was not requested; boot "
                           "the VM without --device-props timing-only=on, or set RuntimeOptions::timing_only"
                     : path +
                           " computes functionally, but timing_only was requested; boot the VM with "
                           "`./vnpu vm --device-props timing-only=on` (the mode is the device's power-on setting)");

  if (options.priority != -1) {
    drm_vnpu_queue_create qc{};
    if (options.priority < 0 || options.priority > VNPU_PRIORITY_MAX)
      return Error(ErrorCode::kInvalidArgument,
                   "queue priority " + std::to_string(options.priority) + " out of range 0..3");
    qc.priority = static_cast<uint32_t>(options.priority);
    if (drmIoctl(fd, DRM_IOCTL_VNPU_QUEUE_CREATE, &qc) != 0)
      return errno_error(errno, path + ": QUEUE_CREATE");
    dev->queue_id_ = qc.queue_id;
  }

  // Job reports carry device timestamps and per-engine busy times (a CQE has only the seqno).
  {
    auto r = dev->alloc_host(sizeof(drm_vnpu_job_report) * kReportSlots);
    if (!r)
      return std::move(r).error();
    dev->reports_ = std::move(*r);
    dev->report_handle_ = static_cast<const KernelHostBuffer&>(*dev->reports_.object()).handle;
    for (uint32_t i = kReportSlots; i-- > 0;)
      dev->free_reports_.push_back(i);
  }

  if (options.submit_mode == SubmitMode::kUring) {
    if (uring != 2)  // the ABI of struct drm_vnpu_uring_submit (uAPI v2)
      return Error(ErrorCode::kUnsupported, path + ": driver has no io_uring command interface (version " +
                                                std::to_string(uring) + "); use SubmitMode::kIoctl");
    const int r = io_uring_queue_init(kRingEntries, &dev->ring_, IORING_SETUP_SQE128 | IORING_SETUP_CQE32);
    if (r < 0)
      return errno_error(-r, "io_uring_queue_init(SQE128|CQE32)");
    dev->ring_ready_ = true;
    if (inf.signals) {
      std::lock_guard lock(dev->mu_);
      if (!dev->arm_event_read())
        return Error(ErrorCode::kIo, path + ": cannot queue the READ of DRM events on the io_uring");
    }
    inf.submit_path = "uring";
    inf.timestamps = true;  // from the job report
    dev->completer_ = std::thread([d = dev.get()] { d->uring_loop(); });
  } else {
    inf.submit_path = "ioctl";
    inf.timestamps = true;  // WAIT reports t_start/t_end
    dev->completer_ = std::thread([d = dev.get()] { d->ioctl_loop(); });
  }
  return std::unique_ptr<Device>(std::move(dev));
}

KernelDevice::~KernelDevice() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  cv_.wait_for(lock, kDrainTimeout, [&] { return pending_.empty(); });
  if (completer_.joinable()) {
    if (ring_ready_) {
      // Wake the completion thread with a NOP that carries the stop tag; CQEs are reaped in order.
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) {
        (void)io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
      }
      if (sqe) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, kStopTag);
        (void)io_uring_submit(&ring_);
      }
    }
    stop_completer_ = true;
    cv_.notify_all();
    lock.unlock();
    completer_.join();
    lock.lock();
  }
  // Whatever is left did not complete in time: the driver keeps referenced objects alive until the device is
  // done with them, so dropping our references is safe.
  auto left = std::move(pending_);
  lock.unlock();
  if (ring_ready_)
    io_uring_queue_exit(&ring_);
  for (auto& [id, p] : left) {
    JobResult r;
    r.status = Error(ErrorCode::kAborted, "job aborted: device closed before it completed");
    p->done(std::move(r));
  }
}

Result<HostBuffer> KernelDevice::alloc_host(size_t bytes) {
  if (bytes == 0 || bytes > (2ull << 30))
    return Error(ErrorCode::kInvalidArgument, "host buffer of " + std::to_string(bytes) + " bytes: use 1 B..2 GiB");
  drm_vnpu_bo_create req{};
  req.size = bytes;
  if (drmIoctl(fd_->fd, DRM_IOCTL_VNPU_BO_CREATE, &req) != 0)
    return errno_error(errno, "BO_CREATE of " + std::to_string(bytes) + " bytes");
  auto obj = std::make_shared<KernelHostBuffer>();
  obj->fd = fd_;
  obj->handle = req.handle;  // from here the destructor closes the handle
  obj->owner = fd_.get();
  obj->size = bytes;
  obj->map_len = round_up(bytes, static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  void* p =
      ::mmap(nullptr, obj->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd_->fd, static_cast<off_t>(req.mmap_offset));
  if (p == MAP_FAILED)
    return errno_error(errno, "mmap of a " + std::to_string(bytes) + "-byte BO");
  obj->ptr = p;
  return HostBuffer(std::move(obj));
}

Result<HostBuffer> KernelDevice::import_host(void* ptr, size_t bytes, bool read_only) {
  if (!info_.host_import)
    return Device::import_host(ptr, bytes, read_only);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  if (!ptr || bytes == 0 || addr + bytes < addr)
    return Error(ErrorCode::kInvalidArgument,
                 "import_host of " + std::to_string(bytes) + " bytes at " + std::to_string(addr) +
                     ": need a non-null pointer, > 0 bytes and a range that does not wrap");
  // The driver pins whole pages: pin the pages around the range and address it with an offset.
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t first = addr / page * page;
  if (round_up(static_cast<uint64_t>(addr) + bytes, page) < addr + bytes)
    return Error(ErrorCode::kInvalidArgument, "import_host: range wraps at the end of the address space");
  const uint64_t len = round_up(static_cast<uint64_t>(addr) + bytes, page) - first;
  if (len > (2ull << 30))
    return Error(ErrorCode::kInvalidArgument, "import_host of " + std::to_string(bytes) +
                                                  " bytes: at most 2 GiB (page-rounded) per buffer");
  drm_vnpu_userptr req{};
  req.addr = first;
  req.size = len;
  req.flags = read_only ? DRM_VNPU_USERPTR_READ_ONLY : 0u;
  if (drmIoctl(fd_->fd, DRM_IOCTL_VNPU_USERPTR, &req) != 0) {
    const int err = errno;
    const std::string what = "USERPTR (pinning " + std::to_string(len) + " bytes" +
                             (read_only ? ", read-only" : "") + ")";
    if (err == ENOMEM)  // the driver's RLIMIT_MEMLOCK refusal (a real allocation failure looks the same)
      return Error(ErrorCode::kPermissionDenied,
                   what + ": the pinned-memory limit RLIMIT_MEMLOCK (ulimit -l) is reached, or out of memory");
    if (err == EFAULT)
      return Error(ErrorCode::kInvalidArgument,
                   what + ": the memory cannot be pinned (not mapped, or not writable and read_only not set)");
    return errno_error(err, what);
  }
  auto obj = std::make_shared<KernelHostBuffer>();
  obj->fd = fd_;
  obj->handle = req.handle;  // from here the destructor closes the handle (the driver unpins after the jobs)
  obj->owner = fd_.get();
  obj->ptr = ptr;
  obj->size = bytes;
  obj->read_only = read_only;
  obj->bo_offset = addr - first;
  return HostBuffer(std::move(obj));
}

Result<DeviceBuffer> KernelDevice::alloc_device(size_t bytes) {
  if (bytes == 0)
    return Error(ErrorCode::kInvalidArgument, "device buffer of 0 bytes");
  drm_vnpu_mem_alloc req{};
  req.size = bytes;
  if (drmIoctl(fd_->fd, DRM_IOCTL_VNPU_MEM_ALLOC, &req) != 0)
    return errno_error(errno, "MEM_ALLOC of " + std::to_string(bytes) + " bytes of device memory");
  auto obj = std::make_shared<KernelDeviceBuffer>();
  obj->fd = fd_;
  obj->handle = req.handle;
  obj->owner = fd_.get();
  obj->size = bytes;
  obj->dev_addr = req.dev_addr;
  return DeviceBuffer(std::move(obj));
}

std::vector<drm_vnpu_cmd> KernelDevice::encode(const Job& job) {
  std::vector<drm_vnpu_cmd> out(job.commands.size());
  for (size_t i = 0; i < job.commands.size(); ++i) {
    const Command& c = job.commands[i];
    drm_vnpu_cmd& d = out[i];
    std::memset(&d, 0, sizeof(d));
    switch (c.kind) {
      case Command::Kind::kCopyToDevice:
      case Command::Kind::kCopyFromDevice:
        d.op = c.kind == Command::Kind::kCopyToDevice ? DRM_VNPU_OP_COPY_TO_DEVICE : DRM_VNPU_OP_COPY_FROM_DEVICE;
        d.copy.bo_handle = static_cast<const KernelHostBuffer&>(*c.host).handle;
        d.copy.mem_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[0]).handle;
        d.copy.bo_offset = static_cast<const KernelHostBuffer&>(*c.host).bo_offset + c.host_offset;
        d.copy.mem_offset = c.dev_offset[0];
        d.copy.size = c.bytes;
        break;
      case Command::Kind::kMatmul:
        d.op = DRM_VNPU_OP_MATMUL;
        d.matmul.a_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[0]).handle;
        d.matmul.b_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[1]).handle;
        d.matmul.c_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[2]).handle;
        d.matmul.dtype = VNPU_DTYPE_F32;
        d.matmul.a_offset = c.dev_offset[0];
        d.matmul.b_offset = c.dev_offset[1];
        d.matmul.c_offset = c.dev_offset[2];
        d.matmul.m = c.m;
        d.matmul.n = c.n;
        d.matmul.k = c.k;
        break;
      case Command::Kind::kExec:
        d.op = DRM_VNPU_OP_EXEC;
        d.exec.prog_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[0]).handle;
        d.exec.prog_offset = c.dev_offset[0];
        d.exec.prog_size = c.size2;
        d.exec.bindings_handle = static_cast<const KernelDeviceBuffer&>(*c.dev[1]).handle;
        d.exec.bindings_offset = c.dev_offset[1];
        d.exec.num_bindings = c.count;
        break;
      case Command::Kind::kSynth:
        d.op = DRM_VNPU_OP_SYNTH;
        d.synth.ns = c.ns;
        break;
      case Command::Kind::kNop: d.op = DRM_VNPU_OP_NOP; break;
      case Command::Kind::kSignal: d.op = DRM_VNPU_OP_SIGNAL; break;
    }
  }
  return out;
}

Status KernelDevice::do_submit(Job job, JobCallback done) {
  auto p = std::make_unique<Pending>();
  p->cmds = encode(job);
  for (const Command& c : job.commands)
    p->signals += c.kind == Command::Kind::kSignal ? 1 : 0;
  p->job = std::move(job);
  p->done = std::move(done);

  std::lock_guard lock(mu_);
  if (stopping_)
    return Error(ErrorCode::kAborted, "device is closing; job not submitted");
  const uint64_t id = next_id_++;
  drm_vnpu_job dj{};
  dj.cmds = reinterpret_cast<uintptr_t>(p->cmds.data());
  dj.cmd_count = static_cast<uint32_t>(p->cmds.size());
  dj.user_data = id;
  if (!free_reports_.empty()) {
    p->report = free_reports_.back();
    free_reports_.pop_back();
    auto* rep = static_cast<drm_vnpu_job_report*>(reports_.data()) + p->report;
    __atomic_store_n(&rep->flags, 0u, __ATOMIC_RELEASE);
    dj.report_handle = report_handle_;
    dj.report_offset = static_cast<uint64_t>(p->report) * sizeof(drm_vnpu_job_report);
  }
  auto give_back_report = [&] {
    if (p->report >= 0)
      free_reports_.push_back(static_cast<uint32_t>(p->report));
  };

  if (mode_ == SubmitMode::kIoctl) {
    drm_vnpu_submit req{};
    req.jobs = reinterpret_cast<uintptr_t>(&dj);
    req.job_count = 1;
    req.queue_id = queue_id_;
    // A job with SIGNALs completes by event too, so that its SIGNAL events and its completion come in one
    // stream, in order, and the completion thread can wait for both at once.
    p->event_mode = p->signals > 0;
    if (p->event_mode)
      req.flags = DRM_VNPU_SUBMIT_F_EVENT;
    if (drmIoctl(fd_->fd, DRM_IOCTL_VNPU_SUBMIT, &req) != 0) {
      const int err = errno;
      give_back_report();
      return errno_error(err, "SUBMIT ioctl");
    }
    p->seqno = req.first_seqno;
    if (p->signals)
      ++signal_jobs_;
    pending_.emplace(id, std::move(p));
    wait_order_.push_back(id);
    cv_.notify_all();
    return {};
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {  // SQ full: flush what is there and take a fresh slot
    (void)io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      give_back_report();
      return Error(ErrorCode::kIo, "io_uring submission queue stays full; job not submitted");
    }
  }
  // liburing 2.3 has no io_uring_prep_uring_cmd: prep a plain rw SQE, then fill cmd_op and the 80-byte
  // command area (which overlaps addr3/__pad2 that prep_rw zeroes, so it must come after).
  drm_vnpu_uring_submit us{};
  us.queue_id = queue_id_;
  us.job = dj;
  io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd_->fd, nullptr, 0, 0);
  sqe->cmd_op = DRM_VNPU_URING_CMD_SUBMIT;
  static_assert(sizeof(drm_vnpu_uring_submit) <= 80, "submit must fit the SQE128 command area");
  std::memset(sqe->cmd, 0, 80);
  std::memcpy(sqe->cmd, &us, sizeof(us));
  io_uring_sqe_set_data64(sqe, id);
  const int64_t report = p->report;
  const bool has_signals = p->signals > 0;
  pending_.emplace(id, std::move(p));
  const int r = io_uring_submit(&ring_);
  if (r < 0) {
    pending_.erase(id);
    if (report >= 0)
      free_reports_.push_back(static_cast<uint32_t>(report));
    return errno_error(-r, "io_uring_submit of a URING_CMD job");
  }
  if (has_signals)
    ++signal_jobs_;
  return {};
}

bool KernelDevice::arm_event_read() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    (void)io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (!sqe)
      return false;
  }
  io_uring_prep_read(sqe, fd_->fd, events_, sizeof(events_), 0);
  io_uring_sqe_set_data64(sqe, kEventTag);
  return io_uring_submit(&ring_) >= 0;
}

void KernelDevice::handle_events(const uint8_t* buf, size_t len) {
  struct Call {
    Pending* p;
    SignalEvent ev;
  };
  std::vector<Call> calls;
  {
    std::lock_guard lock(mu_);
    size_t off = 0;
    while (off + sizeof(drm_event) <= len) {
      drm_event base;
      std::memcpy(&base, buf + off, sizeof(base));
      if (base.length < sizeof(base) || off + base.length > len)
        break;  // drm_read returns whole events only
      if (base.type == DRM_VNPU_EVENT_SIGNAL && base.length >= sizeof(drm_vnpu_event_signal)) {
        drm_vnpu_event_signal ev;
        std::memcpy(&ev, buf + off, sizeof(ev));
        auto it = pending_.find(ev.user_data);
        if (it != pending_.end()) {
          Pending* p = it->second.get();
          ++p->signals_seen;
          // A SIGNAL the job never reached (it failed first) gets no call: its JobCallback says why.
          if (ev.status == 0 && p->job.on_signal)
            calls.push_back({p, SignalEvent{ev.cmd_index, ev.t_signal ? std::optional<uint64_t>(ev.t_signal)
                                                                      : std::nullopt}});
        }
      } else if (base.type == DRM_VNPU_EVENT_JOB && base.length >= sizeof(drm_vnpu_event_job)) {
        drm_vnpu_event_job ev;
        std::memcpy(&ev, buf + off, sizeof(ev));
        auto it = pending_.find(ev.user_data);
        if (it != pending_.end()) {
          it->second->completed = true;
          it->second->status = ev.status;
        }
      }
      off += base.length;
    }
  }
  // Pending entries are erased only by this thread: the pointers stay valid without the lock, which
  // on_signal must not hold (it may submit()).
  for (Call& c : calls)
    c.p->job.on_signal(c.ev);
}

void KernelDevice::flush_completed() {
  while (!completed_.empty()) {
    std::unique_ptr<Pending> p;
    {
      std::lock_guard lock(mu_);
      auto it = pending_.find(completed_.front());
      if (it != pending_.end()) {
        if (it->second->signals_seen < it->second->signals)
          return;  // its SIGNAL events are still on the way (the READ in flight has them)
        p = std::move(it->second);
        pending_.erase(it);
        if (p->signals)
          --signal_jobs_;
      }
    }
    completed_.pop_front();
    if (!p)
      continue;
    JobResult jr;
    read_report(p->report, jr);
    p->report = -1;
    if (p->status != 0)
      jr.status = job_error(p->status, jr.hw_status.value_or(0), jr.fault_addr, "job");
    finish(std::move(p), std::move(jr));
  }
}

void KernelDevice::read_report(int64_t idx, JobResult& r) {
  if (idx < 0)
    return;
  auto* rep = static_cast<const drm_vnpu_job_report*>(reports_.data()) + idx;
  // The driver writes the report before completing the CQE/WAIT and sets VALID last.
  if (__atomic_load_n(&rep->flags, __ATOMIC_ACQUIRE) & DRM_VNPU_REPORT_F_VALID) {
    if (rep->t_start)
      r.t_start_ns = rep->t_start;
    if (rep->t_end)
      r.t_end_ns = rep->t_end;
    r.hw_status = rep->hw_status;
    r.h2d_ns = rep->h2d_ns;
    r.compute_ns = rep->compute_ns;
    r.d2h_ns = rep->d2h_ns;
    r.fault_addr = rep->fault_addr;
  }
  std::lock_guard lock(mu_);
  free_reports_.push_back(static_cast<uint32_t>(idx));
}

void KernelDevice::finish(std::unique_ptr<Pending> p, JobResult r) {
  {
    std::lock_guard lock(mu_);
    if (pending_.empty())
      cv_.notify_all();
  }
  p->done(std::move(r));
}

void KernelDevice::uring_loop() {
  pthread_setname_np(pthread_self(), "vnpu-complete");
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    const int r = io_uring_wait_cqe(&ring_, &cqe);
    if (r == -EINTR)
      continue;
    if (r < 0)
      return;  // the ring is unusable; the destructor aborts what is left
    const uint64_t id = io_uring_cqe_get_data64(cqe);
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (id == kStopTag)
      return;
    if (id == kEventTag) {
      if (res > 0)
        handle_events(events_, static_cast<size_t>(res));
      {
        std::lock_guard lock(mu_);
        // -ECANCELED: the ring is going away. Anything else (-EINTR, ...): read on.
        if (res != -ECANCELED && !stop_completer_ && !arm_event_read())
          return;
      }
      flush_completed();
      continue;
    }
    {
      std::lock_guard lock(mu_);
      auto it = pending_.find(id);
      if (it == pending_.end())
        continue;
      it->second->completed = true;
      it->second->status = res;
    }
    completed_.push_back(id);
    flush_completed();
  }
}

void KernelDevice::ioctl_loop() {
  pthread_setname_np(pthread_self(), "vnpu-complete");
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_completer_ || !wait_order_.empty(); });
    if (stop_completer_)
      return;
    const uint64_t id = wait_order_.front();
    Pending& head = *pending_.at(id);
    const uint64_t seqno = head.seqno;
    if (signal_jobs_ > 0) {
      // Jobs with SIGNALs are pending: their events come through the fd. Read them while waiting for the
      // head (which is one of them: its completion is an event too; else poll WAIT between reads).
      const bool head_by_event = head.event_mode;
      lock.unlock();
      pollfd pfd{fd_->fd, POLLIN, 0};
      if (::poll(&pfd, 1, head_by_event ? 100 : 1) > 0 && (pfd.revents & POLLIN)) {
        const ssize_t n = ::read(fd_->fd, events_, sizeof(events_));
        if (n > 0)
          handle_events(events_, static_cast<size_t>(n));
      }
      lock.lock();
      if (head_by_event) {
        if (stop_completer_)
          return;
        if (!head.completed || head.signals_seen < head.signals)
          continue;
        wait_order_.pop_front();
        auto p = std::move(pending_.at(id));
        pending_.erase(id);
        --signal_jobs_;
        lock.unlock();
        JobResult jr;
        read_report(p->report, jr);
        p->report = -1;
        if (p->status != 0)
          jr.status = job_error(p->status, jr.hw_status.value_or(0), jr.fault_addr, "job " + std::to_string(seqno));
        finish(std::move(p), std::move(jr));
        lock.lock();
        continue;
      }
    }
    const bool poll_only = signal_jobs_ > 0;
    lock.unlock();
    drm_vnpu_wait w{};
    w.seqno = seqno;
    w.queue_id = queue_id_;
    // Bounded waits so a closing device is noticed; the job itself keeps running in the driver.
    w.timeout_ns = poll_only ? 0 : static_cast<int64_t>(monotonic_ns() + 100'000'000ull);
    const int r = drmIoctl(fd_->fd, DRM_IOCTL_VNPU_WAIT, &w);
    const int err = r != 0 ? errno : 0;
    lock.lock();
    if (err == ETIME)
      continue;
    wait_order_.pop_front();
    auto p = std::move(pending_.at(id));
    pending_.erase(id);
    lock.unlock();
    JobResult jr;
    read_report(p->report, jr);
    p->report = -1;
    if (err != 0) {
      jr.status = errno_error(err, "WAIT for job " + std::to_string(seqno));
    } else {
      jr.hw_status = w.hw_status;
      jr.t_start_ns = w.t_start;
      jr.t_end_ns = w.t_end;
      if (w.job_status != 0)
        jr.status = job_error(w.job_status, w.hw_status, jr.fault_addr, "job " + std::to_string(seqno));
    }
    finish(std::move(p), std::move(jr));
    lock.lock();
  }
}

}  // namespace

Result<std::unique_ptr<Device>> open_kernel_device(const DeviceOptions& options) {
  return KernelDevice::open(options);
}

}  // namespace vnpu::detail
