// SPDX-License-Identifier: MIT
// Built only when the engine library is not part of the build: the "sim" backend then reports that it is
// missing instead of pretending to exist.
#include "internal.h"

namespace vnpu::detail {

Result<std::unique_ptr<Device>> open_sim_device(const DeviceOptions&) {
  return Error(ErrorCode::kNotFound,
               "this libvnpu-runtime was built without the sim backend (the engine library was missing); "
               "rebuild with qemu-device/engine, or use backend 'kernel'");
}

}  // namespace vnpu::detail
