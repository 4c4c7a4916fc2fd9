// SPDX-License-Identifier: MIT
// Backend-independent parts of the public API: Error, Tensor, MatmulModel, buffer handles, commands, and the
// Device front end (backend selection, validation, synchronous run).
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <future>
#include <limits>
#include <sstream>

#include <vnpu/async_runtime.h>
#include <vnpu/device.h>
#include <vnpu/error.h>
#include <vnpu/model.h>
#include <vnpu/tensor.h>

#include "internal.h"
#include "vnpu_hw.h"

namespace vnpu {

// ---- Error ---------------------------------------------------------------------------------------------
const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kNotFound: return "not-found";
    case ErrorCode::kPermissionDenied: return "permission-denied";
    case ErrorCode::kOutOfMemory: return "out-of-memory";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kDeviceFault: return "device-fault";
    case ErrorCode::kAborted: return "aborted";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kDeviceHang: return "device-hang";
    case ErrorCode::kCorruptCompletion: return "corrupt-completion";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kDeviceLost: return "device-lost";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error(std::string("vnpu: ") + message + " [" + error_code_name(code) + "]"), code_(code) {}

namespace detail {

Error errno_error(int err, const std::string& what) {
  ErrorCode code = ErrorCode::kIo;
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO: code = ErrorCode::kNotFound; break;
    case EACCES:
    case EPERM: code = ErrorCode::kPermissionDenied; break;
    case ENOMEM:
    case ENOSPC: code = ErrorCode::kOutOfMemory; break;
    case EINVAL:
    case E2BIG:
    case ERANGE:
    case EFAULT: code = ErrorCode::kInvalidArgument; break;
    case ECANCELED: code = ErrorCode::kAborted; break;
    case EIO:
    case ETIME:
    case ETIMEDOUT: code = ErrorCode::kDeviceFault; break;
    case ENOTTY:
    case EOPNOTSUPP:
    case ENOSYS: code = ErrorCode::kUnsupported; break;
    default: break;
  }
  return Error(code, what + ": " + std::strerror(err));
}

Error hw_status_error(uint32_t hw_status, const std::string& what) {
  switch (hw_status) {
    case VNPU_CPL_BAD_OPCODE:
      return Error(ErrorCode::kDeviceFault,
                   what + ": device rejected an unknown opcode (runtime/device version mismatch?)");
    case VNPU_CPL_BAD_FIELD:
      return Error(ErrorCode::kDeviceFault,
                   what + ": device rejected a command field (reserved bit, dimension or dtype)");
    case VNPU_CPL_DEVMEM_RANGE:
      return Error(ErrorCode::kDeviceFault, what + ": device memory access outside device memory");
    case VNPU_CPL_SGL_INVALID: return Error(ErrorCode::kDeviceFault, what + ": malformed scatter-gather list");
    case VNPU_CPL_DMA_FAULT: return Error(ErrorCode::kDeviceFault, what + ": host memory DMA fault");
    case VNPU_CPL_ABORTED:
      return Error(ErrorCode::kAborted, what + ": aborted by queue shutdown or device reset; resubmit if needed");
    case VNPU_CPL_JOB_TOO_LONG: return Error(ErrorCode::kDeviceFault, what + ": job too long for the device");
    case VNPU_CPL_MMU_FAULT:
      return Error(ErrorCode::kDeviceFault,
                   what + ": device MMU fault (an address outside this context's allocations)");
    case VNPU_CPL_PROGRAM_INVALID:
      return Error(
          ErrorCode::kDeviceFault,
          what + ": the device rejected the program (malformed header, op, operand or binding); recompile the model");
    case VNPU_CPL_BAD_CONTEXT: return Error(ErrorCode::kDeviceFault, what + ": bad device context id");
    default: return Error(ErrorCode::kDeviceFault, what + ": device reported status " + std::to_string(hw_status));
  }
}

Error job_error(int job_status, uint32_t hw_status, uint64_t fault_addr, const std::string& what) {
  if (hw_status != 0 && hw_status != VNPU_CPL_OK) {
    Error e = hw_status_error(hw_status, what);
    if (hw_status == VNPU_CPL_MMU_FAULT) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(fault_addr));
      return Error(e.code(),
                   what + ": device MMU fault at device address " + buf + " (outside this context's allocations)");
    }
    return e;
  }
  const int err = job_status < 0 ? -job_status : job_status;
  switch (err) {
    case ECANCELED:
      return Error(ErrorCode::kAborted,
                   what + ": cancelled by the driver (a dependency failed or the queue was torn down)");
    case EIO:
    case EFAULT:
    case ETIMEDOUT:
    case ETIME: return Error(ErrorCode::kDeviceFault, what + ": " + std::strerror(err));
    default: return errno_error(err, what);
  }
}

namespace {
thread_local const void* tls_executor = nullptr;
}  // namespace

const void* this_thread_executor() noexcept {
  return tls_executor;
}

void set_this_thread_executor(const void* executor) noexcept {
  tls_executor = executor;
}

void throw_wait_would_deadlock(const char* what) {
  throw Error(ErrorCode::kInvalidArgument,
              std::string(what) +
                  " on the callback thread of the AsyncRuntime that resolves this task would wait forever (the "
                  "task resolves on this very thread); co_await it or use on_complete() there, or wait from "
                  "another thread");
}

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace detail

// ---- Tensor ---------------------------------------------------------------------------------------------
namespace {
size_t element_count(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 1)
      throw Error(ErrorCode::kInvalidArgument, "tensor dimension " + std::to_string(i) + " is " +
                                                   std::to_string(shape[i]) + "; every dimension must be >= 1");
    if (static_cast<uint64_t>(shape[i]) > std::numeric_limits<size_t>::max() / sizeof(float) / n)
      throw Error(ErrorCode::kInvalidArgument, "tensor shape too large: element count overflows");
    n *= static_cast<size_t>(shape[i]);
  }
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i)
    os << (i ? "," : "") << shape[i];
  os << ']';
  return os.str();
}
}  // namespace

Tensor::Tensor(std::vector<int64_t> shape) : shape_(std::move(shape)), owned_(element_count(shape_), 0.0f) {
  ptr_ = owned_.data();
  size_ = owned_.size();
}

Tensor::Tensor(std::vector<int64_t> shape, std::vector<float> data)
    : shape_(std::move(shape)), owned_(std::move(data)) {
  const size_t n = element_count(shape_);
  if (n != owned_.size())
    throw Error(ErrorCode::kInvalidArgument, "tensor of shape " + shape_str(shape_) + " needs " + std::to_string(n) +
                                                 " elements, got " + std::to_string(owned_.size()));
  ptr_ = owned_.data();
  size_ = owned_.size();
}

Tensor Tensor::borrow(std::vector<int64_t> shape, std::span<float> data) {
  const size_t n = element_count(shape);
  if (n != data.size())
    throw Error(ErrorCode::kInvalidArgument, "borrowed tensor of shape " + shape_str(shape) + " needs " +
                                                 std::to_string(n) + " elements, the span has " +
                                                 std::to_string(data.size()));
  Tensor t;
  t.shape_ = std::move(shape);
  t.ptr_ = data.data();
  t.size_ = n;
  t.borrowed_ = true;
  return t;
}

Tensor Tensor::borrow(std::vector<int64_t> shape, std::span<const float> data) {
  Tensor t = borrow(std::move(shape), std::span<float>(const_cast<float*>(data.data()), data.size()));
  t.read_only_ = true;
  return t;
}

Tensor Tensor::borrow(std::vector<int64_t> shape, std::span<const float> data, std::shared_ptr<const void> owner) {
  Tensor t = borrow(std::move(shape), data);
  t.owner_ = std::move(owner);
  return t;
}

Tensor Tensor::view(std::vector<int64_t> shape, std::span<float> data, std::shared_ptr<const void> owner) {
  Tensor t = borrow(std::move(shape), data);
  t.owner_ = std::move(owner);
  return t;
}

Tensor::Tensor(const Tensor& o)
    : shape_(o.shape_),
      owned_(o.owned_),
      ptr_(o.borrowed_ ? o.ptr_ : owned_.data()),
      size_(o.size_),
      borrowed_(o.borrowed_),
      read_only_(o.read_only_),
      owner_(o.owner_) {}

Tensor& Tensor::operator=(const Tensor& o) {
  if (this != &o) {
    Tensor t(o);
    *this = std::move(t);
  }
  return *this;
}

Tensor::Tensor(Tensor&& o) noexcept
    : shape_(std::move(o.shape_)),
      owned_(std::move(o.owned_)),
      ptr_(o.borrowed_ ? o.ptr_ : owned_.data()),
      size_(o.size_),
      borrowed_(o.borrowed_),
      read_only_(o.read_only_),
      owner_(std::move(o.owner_)) {
  o.ptr_ = nullptr;
  o.size_ = 0;
  o.borrowed_ = o.read_only_ = false;
}

Tensor& Tensor::operator=(Tensor&& o) noexcept {
  if (this != &o) {
    shape_ = std::move(o.shape_);
    owned_ = std::move(o.owned_);
    borrowed_ = o.borrowed_;
    read_only_ = o.read_only_;
    owner_ = std::move(o.owner_);
    ptr_ = borrowed_ ? o.ptr_ : owned_.data();
    size_ = o.size_;
    o.ptr_ = nullptr;
    o.size_ = 0;
    o.borrowed_ = o.read_only_ = false;
  }
  return *this;
}

std::span<float> Tensor::data() {
  if (read_only_)
    throw Error(ErrorCode::kInvalidArgument, "tensor is a read-only borrowed view; it cannot be written");
  return {ptr_, size_};
}

bool operator==(const Tensor& a, const Tensor& b) {
  return a.shape_ == b.shape_ && a.size_ == b.size_ &&
         (a.size_ == 0 || std::memcmp(a.ptr_, b.ptr_, a.size_bytes()) == 0);
}

const char* dtype_name(DType) noexcept {
  return "f32";
}
std::string shape_string(const std::vector<int64_t>& shape) {
  return shape_str(shape);
}

// ---- MatmulModel ----------------------------------------------------------------------------------------
namespace {
void check_dim(const char* name, int64_t v) {
  if (v < 1 || v > MatmulModel::kMaxDim)
    throw Error(ErrorCode::kInvalidArgument, std::string("matmul dimension ") + name + " = " + std::to_string(v) +
                                                 " is out of range; use 1.." + std::to_string(MatmulModel::kMaxDim));
}
}  // namespace

MatmulModel::MatmulModel(int64_t m, Tensor weights) {
  if (weights.shape().size() != 2)
    throw Error(ErrorCode::kInvalidArgument, "matmul weights must have shape [k,n], got " + shape_str(weights.shape()));
  check_dim("m", m);
  check_dim("k", weights.shape()[0]);
  check_dim("n", weights.shape()[1]);
  m_ = m;
  k_ = weights.shape()[0];
  n_ = weights.shape()[1];
  weights_ = std::make_shared<const Tensor>(std::move(weights));
}

Tensor MatmulModel::reference(const Tensor& x) const {
  if (x.shape() != input_shape())
    throw Error(ErrorCode::kInvalidArgument,
                "reference input has shape " + shape_str(x.shape()) + ", model expects " + shape_str(input_shape()));
  Tensor y(output_shape());
  const float* a = x.data().data();
  const float* b = weights_->data().data();
  float* c = y.data().data();
  for (int64_t i = 0; i < m_; ++i)
    for (int64_t j = 0; j < n_; ++j) {
      float acc = 0.0f;
      for (int64_t p = 0; p < k_; ++p)
        acc += a[i * k_ + p] * b[p * n_ + j];
      c[i * n_ + j] = acc;
    }
  return y;
}

// ---- Buffers and commands ------------------------------------------------------------------------------
HostBuffer::HostBuffer(std::shared_ptr<detail::HostBufferObject> obj) noexcept : obj_(std::move(obj)) {}
HostBuffer::~HostBuffer() = default;
void* HostBuffer::data() const noexcept {
  return obj_ ? obj_->ptr : nullptr;
}
size_t HostBuffer::size() const noexcept {
  return obj_ ? obj_->size : 0;
}

DeviceBuffer::DeviceBuffer(std::shared_ptr<detail::DeviceBufferObject> obj) noexcept : obj_(std::move(obj)) {}
DeviceBuffer::~DeviceBuffer() = default;
size_t DeviceBuffer::size() const noexcept {
  return obj_ ? obj_->size : 0;
}
uint64_t DeviceBuffer::device_address() const noexcept {
  return obj_ ? obj_->dev_addr : 0;
}

Command Command::copy_to_device(const HostBuffer& src, uint64_t src_offset, const DeviceBuffer& dst,
                                uint64_t dst_offset, uint64_t bytes) {
  Command c;
  c.kind = Kind::kCopyToDevice;
  c.host = src.object();
  c.host_offset = src_offset;
  c.dev[0] = dst.object();
  c.dev_offset[0] = dst_offset;
  c.bytes = bytes;
  return c;
}

Command Command::copy_from_device(const DeviceBuffer& src, uint64_t src_offset, const HostBuffer& dst,
                                  uint64_t dst_offset, uint64_t bytes) {
  Command c;
  c.kind = Kind::kCopyFromDevice;
  c.host = dst.object();
  c.host_offset = dst_offset;
  c.dev[0] = src.object();
  c.dev_offset[0] = src_offset;
  c.bytes = bytes;
  return c;
}

Command Command::exec(const DeviceBuffer& prog, uint64_t prog_offset, uint64_t prog_size, const DeviceBuffer& bindings,
                      uint64_t bindings_offset, uint32_t num_bindings) {
  Command c;
  c.kind = Kind::kExec;
  c.dev[0] = prog.object();
  c.dev_offset[0] = prog_offset;
  c.size2 = prog_size;
  c.dev[1] = bindings.object();
  c.dev_offset[1] = bindings_offset;
  c.count = num_bindings;
  return c;
}

Command Command::synth(uint64_t ns) {
  Command c;
  c.kind = Kind::kSynth;
  c.ns = ns;
  return c;
}

Command Command::nop() {
  Command c;
  c.kind = Kind::kNop;
  return c;
}

Command Command::signal() {
  Command c;
  c.kind = Kind::kSignal;
  return c;
}

Command Command::matmul(const DeviceBuffer& a, uint64_t a_offset, const DeviceBuffer& b, uint64_t b_offset,
                        const DeviceBuffer& c, uint64_t c_offset, uint32_t m, uint32_t n, uint32_t k) {
  Command cmd;
  cmd.kind = Kind::kMatmul;
  cmd.dev[0] = a.object();
  cmd.dev[1] = b.object();
  cmd.dev[2] = c.object();
  cmd.dev_offset[0] = a_offset;
  cmd.dev_offset[1] = b_offset;
  cmd.dev_offset[2] = c_offset;
  cmd.m = m;
  cmd.n = n;
  cmd.k = k;
  return cmd;
}

// ---- Device front end -------------------------------------------------------------------------------------
std::string Device::default_backend(int index) {
  struct stat st {};
  const std::string path = "/dev/accel/accel" + std::to_string(index);
  return ::stat(path.c_str(), &st) == 0 ? "kernel" : "sim";
}

Result<std::unique_ptr<Device>> Device::open(const DeviceOptions& options) {
  if (options.index < 0)
    return Error(ErrorCode::kInvalidArgument, "device index " + std::to_string(options.index) + " is negative");
  const std::string backend = options.backend.empty() ? default_backend(options.index) : options.backend;
  if (backend == "kernel")
    return detail::open_kernel_device(options);
  if (backend == "sim")
    return detail::open_sim_device(options);
  return Error(ErrorCode::kNotFound, "unknown backend '" + backend + "': use 'kernel' or 'sim'");
}

Device::~Device() = default;

Result<HostBuffer> Device::import_host(void* /*ptr*/, size_t /*bytes*/, bool /*read_only*/) {
  return Error(ErrorCode::kUnsupported, "the " + info().backend + " backend cannot import host memory");
}

Status Device::validate(const Job& job) const {
  const auto& inf = info();
  if (job.commands.empty())
    return Error(ErrorCode::kInvalidArgument, "job has no commands");
  if (job.commands.size() > inf.max_cmds_per_job)
    return Error(ErrorCode::kInvalidArgument, "job has " + std::to_string(job.commands.size()) +
                                                  " commands; this device accepts at most " +
                                                  std::to_string(inf.max_cmds_per_job) + ": split it");
  uint32_t signals = 0;
  for (size_t i = 0; i < job.commands.size(); ++i) {
    const Command& c = job.commands[i];
    const std::string where = "command " + std::to_string(i);
    auto check_dev = [&](int j, uint64_t bytes) -> Status {
      const auto& d = c.dev[j];
      if (!d)
        return Error(ErrorCode::kInvalidArgument, where + " names an empty device buffer");
      if (d->owner != owner_token())
        return Error(ErrorCode::kInvalidArgument, where + " names a device buffer of another device");
      if (!detail::range_fits(c.dev_offset[j], bytes, d->size))
        return Error(ErrorCode::kInvalidArgument, where + ": device range [" + std::to_string(c.dev_offset[j]) + ", +" +
                                                      std::to_string(bytes) + ") exceeds the buffer's " +
                                                      std::to_string(d->size) + " bytes");
      return {};
    };
    switch (c.kind) {
      case Command::Kind::kCopyToDevice:
      case Command::Kind::kCopyFromDevice: {
        if (c.bytes == 0)
          return Error(ErrorCode::kInvalidArgument, where + " copies 0 bytes");
        if (!c.host)
          return Error(ErrorCode::kInvalidArgument, where + " names an empty host buffer");
        if (c.host->owner != owner_token())
          return Error(ErrorCode::kInvalidArgument, where + " names a host buffer of another device");
        if (!detail::range_fits(c.host_offset, c.bytes, c.host->size))
          return Error(ErrorCode::kInvalidArgument, where + ": host range [" + std::to_string(c.host_offset) + ", +" +
                                                        std::to_string(c.bytes) + ") exceeds the buffer's " +
                                                        std::to_string(c.host->size) + " bytes");
        if (c.kind == Command::Kind::kCopyFromDevice && c.host->read_only)
          return Error(ErrorCode::kInvalidArgument, where + " copies into a read-only imported host buffer");
        if (auto s = check_dev(0, c.bytes); !s)
          return s;
        break;
      }
      case Command::Kind::kMatmul: {
        for (uint32_t d : {c.m, c.n, c.k})
          if (d < 1 || d > VNPU_MATMUL_DIM_MAX)
            return Error(ErrorCode::kInvalidArgument, where + ": matmul dimension " + std::to_string(d) +
                                                          " out of range 1.." + std::to_string(VNPU_MATMUL_DIM_MAX));
        const uint64_t m = c.m, n = c.n, k = c.k;
        const uint64_t sizes[3] = {m * k * 4, k * n * 4, m * n * 4};
        for (int j = 0; j < 3; ++j) {
          if (c.dev_offset[j] % 4)
            return Error(ErrorCode::kInvalidArgument, where + ": matmul offsets must be 4-byte aligned");
          if (auto s = check_dev(j, sizes[j]); !s)
            return s;
        }
        break;
      }
      case Command::Kind::kExec: {
        if (c.size2 < 1 || c.size2 > VNPU_PROG_MAX_LEN)
          return Error(ErrorCode::kInvalidArgument, where + ": program size " + std::to_string(c.size2) +
                                                        " out of range 1.." + std::to_string(VNPU_PROG_MAX_LEN));
        if (c.count < 1 || c.count > VNPU_EXEC_MAX_BINDINGS)
          return Error(ErrorCode::kInvalidArgument, where + ": " + std::to_string(c.count) + " bindings; use 1.." +
                                                        std::to_string(VNPU_EXEC_MAX_BINDINGS));
        if (c.dev_offset[0] % 8 || c.dev_offset[1] % 8)
          return Error(ErrorCode::kInvalidArgument,
                       where + ": program and binding table offsets must be 8-byte aligned");
        if (auto s = check_dev(0, c.size2); !s)
          return s;
        if (auto s = check_dev(1, uint64_t{c.count} * 8); !s)
          return s;
        break;
      }
      case Command::Kind::kSynth:
        if (c.ns < 1 || c.ns > VNPU_SYNTH_MAX_NS)
          return Error(ErrorCode::kInvalidArgument,
                       where + ": synth time " + std::to_string(c.ns) + " ns out of range 1..10^10");
        break;
      case Command::Kind::kNop: break;
      case Command::Kind::kSignal:
        if (!inf.signals)
          return Error(ErrorCode::kUnsupported, where + ": this device has no signal command");
        if (i + 1 == job.commands.size())
          return Error(ErrorCode::kInvalidArgument, where + ": a signal cannot be the last command of a job");
        if (!job.on_signal)
          return Error(ErrorCode::kInvalidArgument, where + ": a job with a signal needs Job::on_signal");
        if (++signals > inf.max_signals_per_job)
          return Error(ErrorCode::kInvalidArgument, "job has more than " + std::to_string(inf.max_signals_per_job) +
                                                        " signal commands");
        break;
      default: return Error(ErrorCode::kInvalidArgument, where + " has an unknown kind");
    }
  }
  return {};
}

Status Device::submit(Job job, JobCallback done) {
  if (!done)
    return Error(ErrorCode::kInvalidArgument, "submit() needs a completion callback");
  if (auto s = validate(job); !s)
    return s;
  return do_submit(std::move(job), std::move(done));
}

Result<JobResult> Device::run(Job job, std::chrono::milliseconds timeout) {
  auto promise = std::make_shared<std::promise<JobResult>>();
  auto future = promise->get_future();
  if (auto s = submit(std::move(job), [promise](JobResult r) { promise->set_value(std::move(r)); }); !s)
    return std::move(s).error();
  if (future.wait_for(timeout) != std::future_status::ready)
    return Error(ErrorCode::kDeviceFault,
                 "job did not complete within " + std::to_string(timeout.count()) + " ms: the device may be hung");
  return future.get();
}

}  // namespace vnpu

namespace vnpu {
const Tensor& Outputs::at(std::string_view name) const {
  for (size_t i = 0; i < names.size() && i < tensors.size(); ++i)
    if (names[i] == name)
      return tensors[i];
  throw Error(ErrorCode::kNotFound, "the model has no output named '" + std::string(name) + "'");
}
}  // namespace vnpu
