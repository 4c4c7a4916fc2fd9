// SPDX-License-Identifier: MIT
/// \file
/// What the examples read out of a request's vnpu::RequestTimings: the device intervals of its two jobs
/// (H2D, then compute + D2H) on the host clock and the modelled busy time of each engine.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

#include <vnpu/async_runtime.h>

namespace vnpu::examples {

/// One request's device-side times. Intervals are steady_clock nanoseconds (time_since_epoch).
struct JobTimes {
  std::optional<std::pair<int64_t, int64_t>> h2d;   ///< H2D job on the device
  std::optional<std::pair<int64_t, int64_t>> exec;  ///< compute + D2H job
  double h2d_ms = 0, compute_ms = 0, d2h_ms = 0;    ///< modelled engine busy time
  bool engine_times = false;                        ///< the three above were reported by the device
};

/// `clock_offset_ns`: device clock minus steady_clock (AsyncRuntime::device_clock_offset_ns).
[[nodiscard]] inline JobTimes job_times(const RequestTimings& t, int64_t clock_offset_ns) {
  JobTimes j;
  auto host = [&](uint64_t dev) { return int64_t(dev) - clock_offset_ns; };
  if (t.h2d_start_ns && t.h2d_end_ns)
    j.h2d.emplace(host(*t.h2d_start_ns), host(*t.h2d_end_ns));
  if (t.exec_start_ns && t.exec_end_ns)
    j.exec.emplace(host(*t.exec_start_ns), host(*t.exec_end_ns));
  j.h2d_ms = double(t.h2d_ns) / 1e6;
  j.compute_ms = double(t.compute_ns) / 1e6;
  j.d2h_ms = double(t.d2h_ns) / 1e6;
  j.engine_times = t.h2d_ns || t.compute_ns || t.d2h_ns;
  return j;
}

}  // namespace vnpu::examples
