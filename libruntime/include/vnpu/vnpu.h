// SPDX-License-Identifier: MIT
/// \file
/// Umbrella header for libvnpu-runtime.
#pragma once

#include <vnpu/async_runtime.h>
#include <vnpu/compiled_model.h>
#include <vnpu/coro.h>
#include <vnpu/device.h>
#include <vnpu/error.h>
#include <vnpu/model.h>
#include <vnpu/result.h>
#include <vnpu/task.h>
#include <vnpu/tensor.h>
