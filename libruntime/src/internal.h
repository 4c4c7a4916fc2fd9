// SPDX-License-Identifier: MIT
// Internals shared by the backends and the runtime: buffer objects, errno mapping, backend factories.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <vnpu/device.h>
#include <vnpu/error.h>
#include <vnpu/result.h>

namespace vnpu::detail {

// What a HostBuffer handle points at. Backends derive from it; the destructor releases the memory, so it
// runs only when the handle and every job naming the buffer are gone.
struct HostBufferObject {
  virtual ~HostBufferObject() = default;
  const void* owner = nullptr;  // Device::owner_token() of the allocating device
  void* ptr = nullptr;
  size_t size = 0;
  bool read_only = false;  // import_host(..., read_only): the device may only read it
};

struct DeviceBufferObject {
  virtual ~DeviceBufferObject() = default;
  const void* owner = nullptr;
  size_t size = 0;
  uint64_t dev_addr = 0;
};

// An Error for a failed system call: the code follows errno, the message says what failed.
[[nodiscard]] Error errno_error(int err, const std::string& what);

// Error for a device completion status (enum vnpu_cpl_status); `what` names the job.
[[nodiscard]] Error hw_status_error(uint32_t hw_status, const std::string& what);

// Error for a finished job: the device status when known, else the job's errno (negative or positive).
[[nodiscard]] Error job_error(int job_status, uint32_t hw_status, uint64_t fault_addr, const std::string& what);

[[nodiscard]] Result<std::unique_ptr<Device>> open_kernel_device(const DeviceOptions& options);
[[nodiscard]] Result<std::unique_ptr<Device>> open_sim_device(const DeviceOptions& options);

// Marks this thread as `executor`'s (an AsyncRuntime's callback thread), or clears it (null): see
// this_thread_executor() in task.h.
void set_this_thread_executor(const void* executor) noexcept;

// CLOCK_MONOTONIC in nanoseconds: the host clock of both backends (and the simulated engine's clock).
[[nodiscard]] uint64_t monotonic_ns();

[[nodiscard]] constexpr uint64_t round_up(uint64_t v, uint64_t align) {
  return (v + align - 1) / align * align;
}

// a + b <= limit without overflow.
[[nodiscard]] constexpr bool range_fits(uint64_t offset, uint64_t len, uint64_t limit) {
  return offset <= limit && len <= limit - offset;
}

}  // namespace vnpu::detail
