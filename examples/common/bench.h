// SPDX-License-Identifier: MIT
/// \file
/// The seed's measurement: push N requests through a Session synchronously (one at a time) or
/// asynchronously (a window of requests in flight, with run()/wait() or with co_await async_run), and report
/// throughput, per-stage times and device utilisation as a table, JSON, a Perfetto trace and an SVG plot.
#pragma once

#include <chrono>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include <vnpu/async_runtime.h>
#include <nlohmann/json_fwd.hpp>

#include "session.h"

namespace vnpu::examples {

/// How requests are issued.
enum class Mode {
  kSync,   ///< run(x).wait() one request at a time (the seed's synchronous Runtime)
  kAsync,  ///< run(x) up to `window` requests ahead, wait() for the oldest
  kCoro,   ///< one coroutine: co_await async_run(x) with up to `window` requests ahead
};
[[nodiscard]] const char* mode_name(Mode m);

/// One measured configuration.
struct BenchConfig {
  Mode mode = Mode::kSync;
  int parallel = 1;
  int count = 100;
  int window = 8;  ///< requests in flight for kAsync / kCoro
};

/// Summary of one duration series, milliseconds.
struct Stat {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

/// What one configuration measured.
struct BenchResult {
  BenchConfig config;
  std::string backend;
  double wall_s = 0;       ///< first run() to last result consumed
  double throughput = 0;   ///< requests per second
  Stat latency;            ///< run() to resolved
  Stat queue;              ///< run() to a prep thread picking the request up (slot wait)
  Stat prep;               ///< host input preparation (copy into the staging buffer)
  Stat h2d, compute, d2h;  ///< modelled busy time of each device engine (when the device reports them)
  Stat post;               ///< host output copy on the runtime's callback thread (completed to resolved)
  Stat device;             ///< device time of a request: its jobs' device intervals, else submitted→completed
  int compute_cores = 1;   ///< the device's compute cores (compute of that many requests overlaps)
  double device_util =
      0;                ///< compute engines busy / (wall time × cores) (union of device intervals if no engine times)
  double h2d_util = 0;  ///< H2D engine busy / wall time (0 if not reported)
  bool engine_times = false;  ///< h2d/compute/d2h come from the device
  double bytes_copied = 0;    ///< host bytes copied per request (RequestTimings::host_bytes_copied), mean
  std::vector<RequestTimings> timings;
  int64_t clock_offset_ns = 0;  ///< device clock minus steady_clock
  RequestTimings::Clock::time_point start;
  /// Sum of the pipeline's stage means (prep, h2d, compute, d2h, post; or prep, device, post), ms: one request's time
  /// through the pipeline when nothing overlaps.
  [[nodiscard]] double stage_sum_ms() const;
  /// The slowest stage when requests overlap, ms: stages served by several workers count as one wider stage
  /// (prep ÷ parallel prep threads, compute ÷ compute cores), as in vnpu-bench.
  [[nodiscard]] double stage_max_ms() const;
  /// Requests/s if the slowest stage were the only limit: 1000 / stage_max_ms() (async); for sync, where
  /// nothing overlaps, 1000 / stage_sum_ms().
  [[nodiscard]] double bound_ips() const;
  /// The best async/sync throughput ratio this pipeline allows: stage_sum_ms() / stage_max_ms().
  [[nodiscard]] double pipeline_bound() const;
};

/// Input of request i (a fresh tensor: the session takes it).
using InputSource = std::function<Tensor(int)>;

/// Request i gets a read-only view of samples[i % samples.size()]: the runtime's prep threads copy it straight
/// into the DMA staging buffer, with no copy on the calling thread. `samples` must outlive every request.
[[nodiscard]] inline InputSource borrow_cycling(const std::vector<Tensor>& samples) {
  return [&samples](int i) {
    const Tensor& x = samples[static_cast<size_t>(i) % samples.size()];
    return Tensor::borrow(x.shape(), x.data());
  };
}
/// Called with request i's outputs, in request order, on the thread that consumes results (the caller's
/// thread for kSync/kAsync, the runtime's completion thread for kCoro).
using OutputSink = std::function<void(int, Outputs&)>;

/// Runs one configuration. Throws whatever a request fails with (vnpu::Error).
[[nodiscard]] BenchResult run_bench(Session& session, const BenchConfig& config, const InputSource& input,
                                    const OutputSink& sink);

/// Prints the table of results for one model.
void print_table(std::ostream& out, const std::string& model, const std::vector<BenchResult>& results);
/// The table's numbers as JSON (one object per configuration).
[[nodiscard]] nlohmann::json results_json(const std::string& model, const std::vector<BenchResult>& results);
/// Chrome/Perfetto trace (JSON): one process per configuration; per request, events on separate tracks for
/// host queueing and prep, input consumed, each device engine (H2D, every compute core, D2H) and output
/// availability.
void write_trace(const std::string& path, const std::string& model, const std::vector<BenchResult>& results);
/// SVG: per configuration, the timeline of its first requests (prep and device lanes) and its throughput
/// next to the pipeline bound.
void write_svg(const std::string& path, const std::string& model, const std::vector<BenchResult>& results);

}  // namespace vnpu::examples
