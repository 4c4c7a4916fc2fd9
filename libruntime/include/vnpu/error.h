// SPDX-License-Identifier: MIT
/// \file
/// vnpu::Error: the one exception type of the public API, and the codes it carries.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include <vnpu/export.h>

namespace vnpu {

/// What kind of failure an Error reports. Stable: tools map these to exit codes and JSON.
enum class ErrorCode {
  kInvalidArgument,   ///< the caller passed something the runtime or device cannot accept (shape, size, range)
  kNotFound,          ///< a named backend, device, file or tensor does not exist
  kPermissionDenied,  ///< the device node exists but cannot be opened (permissions)
  kOutOfMemory,       ///< host or device memory exhausted
  kUnsupported,       ///< the device lacks a capability or interface version the runtime needs
  kDeviceFault,       ///< the device or driver reported a failure while running a job (bad program, MMU fault)
  kAborted,           ///< the job was aborted (device reset, device closed, runtime shutdown)
  kIo,                ///< a system call failed unexpectedly
  kInternal,          ///< a broken invariant inside the runtime (a bug: please report it)
  kTimeout,           ///< the request did not finish within the runtime's timeout
  kCancelled,         ///< the request was cancelled (Task::cancel, or the runtime was destroyed first)
  // Kernel backend: how the driver ended a job that got no normal completion (docs/uapi.md, "Job status
  // values"). kAborted above then means only that the job never ran, so resubmitting it is safe.
  kDeviceHang,         ///< the job hung the device (no progress within the driver's job timeout) and was reset;
                       ///< resubmitting it hangs again
  kCorruptCompletion,  ///< the device's completion of the job was corrupted or missing: its outcome is unknown
  kInterrupted,        ///< the job had started when a reset caused by another job stopped it; outputs undefined
  kDeviceLost,         ///< the device was removed, unbound or is wedged (a reset failed); use another device
};

/// Short stable name of a code, e.g. "invalid-argument". Never null.
VNPU_API const char* error_code_name(ErrorCode code) noexcept;

/// The exception thrown at the public API boundary: a code plus a message that says what failed and what to
/// do about it. Copyable and cheap to move; safe to throw across threads (tasks store and rethrow it).
class VNPU_API Error : public std::runtime_error {
 public:
  /// \param code    the kind of failure
  /// \param message what failed and, where possible, what the caller can do (one or two sentences)
  Error(ErrorCode code, const std::string& message);

  /// The kind of failure.
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace vnpu
