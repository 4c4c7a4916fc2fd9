// SPDX-License-Identifier: MIT
/// \file
/// Symbol visibility for libvnpu-runtime. The library is built with hidden visibility; only declarations
/// marked VNPU_API form its ABI.
#pragma once

#if defined(VNPU_RUNTIME_BUILDING)
#define VNPU_API __attribute__((visibility("default")))
#else
#define VNPU_API
#endif
