// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Device: the low-level device interface shared by every backend ("kernel": the vnpu.ko driver via
/// /dev/accel; "sim": the device's engine library in-process). AsyncRuntime is built on it; tools and the
/// conformance tests may use it directly. Errors are values here (Result/Status); call .value() to turn a
/// failure into a thrown vnpu::Error.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <vnpu/export.h>
#include <vnpu/result.h>

namespace vnpu {

namespace detail {
struct HostBufferObject;
struct DeviceBufferObject;
}  // namespace detail

/// How the kernel backend hands jobs to the driver. The sim backend ignores it.
enum class SubmitMode {
  kUring,  ///< one IORING_OP_URING_CMD SQE per job, one CQE per job (default)
  kIoctl,  ///< DRM_IOCTL_VNPU_SUBMIT, then DRM_IOCTL_VNPU_WAIT on a completion thread (for comparison)
};

/// Which device to open and how.
struct DeviceOptions {
  /// "kernel", "sim", or empty for default_backend(index).
  std::string backend;
  /// Device index: /dev/accel/accel<index> for "kernel"; for "sim" only a label (each sim device is a
  /// private in-process engine).
  int index = 0;
  /// Kernel backend submission path.
  SubmitMode submit_mode = SubmitMode::kUring;
  /// Queue priority 0 (lowest)..3; -1 = the device default (1). Higher-priority queues are served first.
  int priority = -1;
  /// Expect the device in timing-only mode: compute commands are validated and their time modelled, but
  /// the arithmetic is skipped (outputs undefined). "sim": the engine is created in that mode. "kernel": the
  /// mode is the QEMU device's power-on property (`./vnpu vm --device-props timing-only=on`) and cannot be
  /// changed from userspace, so open() only checks it (DRM_VNPU_PARAM_TIMING_ONLY) and fails with
  /// kUnsupported when the device's mode differs from this option, in either direction.
  bool timing_only = false;
};

/// What an opened device is and can do.
struct DeviceInfo {
  std::string backend;                                      ///< "kernel" or "sim"
  std::string name;                                         ///< e.g. "/dev/accel/accel0" or "sim0 (in-process engine)"
  uint32_t device_version = 0;                              ///< interface version, major << 16 | minor
  uint32_t caps = 0;                                        ///< VNPU_CAP_* bits
  uint64_t devmem_size = 0;                                 ///< device memory, bytes
  uint32_t max_cmds_per_job = 0;                            ///< longest job submit() accepts
  bool timestamps = false;                                  ///< JobResult carries device t_start/t_end
  std::string submit_path;                                  ///< "uring", "ioctl" or "mmio" (sim)
  uint32_t h2d_mbps = 0, d2h_mbps = 0, compute_gflops = 0;  ///< timing model, if known (0 otherwise)
  uint32_t compute_cores = 1;    ///< compute commands of different jobs run concurrently on this many cores
  uint32_t cmd_overhead_ns = 0;  ///< timing model: fixed cost per command, if known
  uint32_t h2d_latency_ns = 0, d2h_latency_ns = 0;  ///< timing model: fixed cost per transfer, if known
  uint64_t mmu_page_size = 0;                       ///< device MMU page size; device allocations round up to it
  uint32_t context_id = 0;                          ///< this open device's address-space context on the device
  bool timing_only = false;                         ///< compute is modelled but not executed: outputs are undefined
  /// Command::signal() is supported (device SIGNAL command; the kernel backend also needs driver support).
  bool signals = false;
  /// Most Command::signal() per job (0 when !signals).
  uint32_t max_signals_per_job = 0;
  /// Device::import_host() is supported: the device DMAs straight from/to memory the caller owns.
  bool host_import = false;
};

/// Host memory the device reaches by DMA, mapped into this process. Move-only handle; the memory stays alive
/// until the handle is destroyed AND every job that references it has completed, so dropping a handle with
/// work in flight is safe. data() may be read and written from any thread, but not while a job that writes
/// (resp. reads) the same bytes is in flight.
class VNPU_API HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(std::shared_ptr<detail::HostBufferObject> obj) noexcept;
  HostBuffer(HostBuffer&&) noexcept = default;
  HostBuffer& operator=(HostBuffer&&) noexcept = default;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  /// Mapped address (page aligned); null for an empty handle.
  [[nodiscard]] void* data() const noexcept;
  /// Usable size in bytes (as requested).
  [[nodiscard]] size_t size() const noexcept;
  [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {static_cast<std::byte*>(data()), size()}; }
  explicit operator bool() const noexcept { return obj_ != nullptr; }
  /// The shared object jobs hold on to (library use).
  [[nodiscard]] const std::shared_ptr<detail::HostBufferObject>& object() const noexcept { return obj_; }

 private:
  std::shared_ptr<detail::HostBufferObject> obj_;
};

/// Device-local memory, reachable only through job commands. Move-only; same lifetime rule as HostBuffer.
class VNPU_API DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::shared_ptr<detail::DeviceBufferObject> obj) noexcept;
  DeviceBuffer(DeviceBuffer&&) noexcept = default;
  DeviceBuffer& operator=(DeviceBuffer&&) noexcept = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  /// Usable size in bytes (as requested).
  [[nodiscard]] size_t size() const noexcept;
  /// Device virtual address in this device's context: what EXEC binding tables hold.
  [[nodiscard]] uint64_t device_address() const noexcept;
  explicit operator bool() const noexcept { return obj_ != nullptr; }
  [[nodiscard]] const std::shared_ptr<detail::DeviceBufferObject>& object() const noexcept { return obj_; }

 private:
  std::shared_ptr<detail::DeviceBufferObject> obj_;
};

/// One command of a job. Build with the factory functions; a Command keeps the buffers it names alive.
struct VNPU_API Command {
  enum class Kind { kCopyToDevice, kCopyFromDevice, kMatmul, kExec, kSynth, kNop, kSignal };

  /// H2D: `bytes` from src[src_offset..] to dst[dst_offset..].
  static Command copy_to_device(const HostBuffer& src, uint64_t src_offset, const DeviceBuffer& dst,
                                uint64_t dst_offset, uint64_t bytes);
  /// D2H: `bytes` from src[src_offset..] to dst[dst_offset..].
  static Command copy_from_device(const DeviceBuffer& src, uint64_t src_offset, const HostBuffer& dst,
                                  uint64_t dst_offset, uint64_t bytes);
  /// C[m,n] = A[m,k] · B[k,n], f32 row-major, all in device memory; offsets in bytes, 4-byte aligned.
  static Command matmul(const DeviceBuffer& a, uint64_t a_offset, const DeviceBuffer& b, uint64_t b_offset,
                        const DeviceBuffer& c, uint64_t c_offset, uint32_t m, uint32_t n, uint32_t k);

  /// Run the program prog[prog_offset, +prog_size) (vnpu_isa.h) with the binding table
  /// bindings[bindings_offset, +8*num_bindings) (little-endian u64 device addresses). Offsets 8-byte aligned.
  static Command exec(const DeviceBuffer& prog, uint64_t prog_offset, uint64_t prog_size, const DeviceBuffer& bindings,
                      uint64_t bindings_offset, uint32_t num_bindings);
  /// Occupy a compute core for `ns` (1..10^10) of modelled time, without functional work.
  static Command synth(uint64_t ns);
  /// Do nothing (for measuring submission overhead).
  static Command nop();
  /// An intermediate completion inside a job (the device's SIGNAL command, DeviceInfo::signals): when every
  /// earlier command of the job has finished (so its copies to the device have read all their host memory),
  /// the job's Job::on_signal runs on the completion thread, before the job's completion callback. It uses no
  /// engine. Not allowed as a job's last command; at most DeviceInfo::max_signals_per_job per job.
  static Command signal();

  Kind kind = Kind::kCopyToDevice;
  std::shared_ptr<detail::HostBufferObject> host;      ///< copies: the host side
  std::shared_ptr<detail::DeviceBufferObject> dev[3];  ///< copies: dev[0]; matmul: A, B, C
  uint64_t host_offset = 0;
  uint64_t dev_offset[3] = {0, 0, 0};
  uint64_t bytes = 0;            ///< copies only
  uint32_t m = 0, n = 0, k = 0;  ///< matmul only
  uint64_t size2 = 0;            ///< exec: program bytes
  uint32_t count = 0;            ///< exec: bindings
  uint64_t ns = 0;               ///< synth only
};

/// A Command::signal() of a job was reached.
struct SignalEvent {
  uint32_t command_index = 0;      ///< index of the signal command in Job::commands
  std::optional<uint64_t> t_ns;    ///< device clock when the device posted it, when the backend reports it
};

/// Called once per signal command the job reaches, in command order, on the completion thread, always before
/// the job's JobCallback. A job that fails before reaching a signal command gets no call for it (its
/// JobCallback says why). Same rules as JobCallback: must not block for long; may call submit().
using SignalCallback = std::function<void(const SignalEvent&)>;

/// Commands executed strictly in order; the job fails at its first failing command.
struct Job {
  Job() = default;
  // Not explicit, so that `Job{{cmd, ...}}` and `submit({{cmd}}, done)` keep working.
  Job(std::vector<Command> cmds, SignalCallback signal = {})  // NOLINT(google-explicit-constructor)
      : commands(std::move(cmds)), on_signal(std::move(signal)) {}

  std::vector<Command> commands;
  /// Required when the job has a Command::signal(); ignored otherwise.
  SignalCallback on_signal;
};

/// How a job ended.
struct JobResult {
  /// ok, or Error(kDeviceFault | kAborted | kInvalidArgument, ...) saying which command failed and why.
  Status status;
  /// Device clock (ns) when the job started / finished, when the backend reports them (DeviceInfo::timestamps).
  std::optional<uint64_t> t_start_ns, t_end_ns;
  /// Device completion status (enum vnpu_cpl_status), when known.
  std::optional<uint32_t> hw_status;
  /// Modelled busy time of the job on each engine (ns), when the backend reports them (DeviceInfo::timestamps).
  uint32_t h2d_ns = 0, compute_ns = 0, d2h_ns = 0;
  /// MMU fault: the faulting device virtual address.
  uint64_t fault_addr = 0;
};

/// Called exactly once per accepted job, on the backend's completion thread. It must not block for long and
/// must not destroy the Device. It may call submit().
using JobCallback = std::function<void(JobResult)>;

/// An open device. All member functions are thread-safe.
class VNPU_API Device {
 public:
  /// Open a device. Errors: kNotFound (unknown backend, no such device), kPermissionDenied, kUnsupported
  /// (device interface version or capabilities), kIo, kOutOfMemory.
  [[nodiscard]] static Result<std::unique_ptr<Device>> open(const DeviceOptions& options);
  /// "kernel" when /dev/accel/accel<index> exists, else "sim".
  [[nodiscard]] static std::string default_backend(int index = 0);

  /// Waits (up to ~10 s) for jobs in flight to complete, then aborts the rest: their callbacks run with
  /// kAborted before the destructor returns. Must not run on the completion thread (i.e. from a JobCallback).
  virtual ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  [[nodiscard]] virtual const DeviceInfo& info() const noexcept = 0;
  /// The device clock (ns), the clock of JobResult timestamps. For aligning device and host timelines.
  [[nodiscard]] virtual Result<uint64_t> clock_ns() = 0;
  /// Allocate `bytes` (> 0) of DMA-able host memory, zero-filled. kInvalidArgument, kOutOfMemory.
  [[nodiscard]] virtual Result<HostBuffer> alloc_host(size_t bytes) = 0;
  /// Allocate `bytes` (> 0) of device memory (contents unspecified). kInvalidArgument, kOutOfMemory.
  [[nodiscard]] virtual Result<DeviceBuffer> alloc_device(size_t bytes) = 0;
  /// Make `bytes` (> 0) of the caller's memory at `ptr` (any alignment) a HostBuffer the device DMAs from
  /// (and, unless `read_only`, to) directly: data() == ptr, size() == bytes. The caller keeps the memory
  /// mapped and valid until the handle is destroyed and every job that references it has completed (the
  /// usual HostBuffer rule). "kernel": the pages are pinned by the driver (counted against RLIMIT_MEMLOCK);
  /// "sim": the range itself. A read-only buffer used as a copy_from_device destination fails submit() with
  /// kInvalidArgument. Errors: kUnsupported (!DeviceInfo::host_import), kInvalidArgument (null, 0 bytes,
  /// wrapping range, memory that cannot be pinned), kOutOfMemory, kPermissionDenied (pin limit).
  [[nodiscard]] virtual Result<HostBuffer> import_host(void* ptr, size_t bytes, bool read_only = false);

  /// Queue a job. On success `done` runs exactly once, later, on the completion thread; failures the driver
  /// or device detect after queueing arrive there too. On failure of submit() itself (a command names a
  /// buffer of another device, a range is outside its buffer, a dimension is out of range, too many
  /// commands, the device is shutting down or broken) nothing was queued and `done` is not called.
  /// May block while the device's command ring is full (until a job completes), except when called from a
  /// JobCallback (the completion thread, which is what frees ring space): there it never waits for the ring;
  /// the job is queued in the backend behind the ring, in order, and written to it as jobs complete.
  /// AsyncRuntime submits H2D jobs from its prep threads and chains compute+D2H from the callback of the H2D.
  [[nodiscard]] Status submit(Job job, JobCallback done);

  /// submit() and wait for the result; `timeout` bounds the wait (kDeviceFault "timed out" after it; the job
  /// is not cancelled). Must not be called on the completion thread.
  [[nodiscard]] Result<JobResult> run(Job job, std::chrono::milliseconds timeout = std::chrono::seconds(30));

 protected:
  Device() = default;
  /// Backend part of submit(): the job has passed validate().
  [[nodiscard]] virtual Status do_submit(Job job, JobCallback done) = 0;
  /// Identifies the buffers this device allocated (their objects carry the same token).
  [[nodiscard]] virtual const void* owner_token() const noexcept = 0;

 private:
  [[nodiscard]] Status validate(const Job& job) const;
};

}  // namespace vnpu
