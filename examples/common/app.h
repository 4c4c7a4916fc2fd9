// SPDX-License-Identifier: MIT
/// \file
/// Command line and driver shared by the two example programs: parse options, run every configuration
/// (sync; async and coroutine with parallel = 1 and 2), print the table and write JSON / trace / SVG.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "bench.h"

namespace vnpu::examples {

/// Options common to both examples.
struct AppOptions {
  std::string model;    ///< --model FILE.vnpu
  std::string data;     ///< --data DIR (dataset root)
  std::string backend;  ///< --backend sim|kernel (empty: runtime default)
  int count = 100;      ///< --count N requests per configuration (the seed uses 100)
  int samples = 8;      ///< --samples N distinct dataset samples, preprocessed once, cycled over
  int window = 8;       ///< --window N requests in flight for async / coro
  std::vector<Mode> modes{Mode::kSync, Mode::kAsync, Mode::kCoro};  ///< --modes sync,async,coro
  std::vector<int> parallel{1, 2};                                  ///< --parallel 1,2
  bool timing_only = false;               ///< --timing-only: device models compute time but skips the arithmetic
  std::string json, trace, svg, out_dir;  ///< --json F --trace F --svg F --out-dir DIR
};

/// Parses argv; prints `usage` and exits 0 for --help; throws vnpu::Error(kInvalidArgument) for bad options.
[[nodiscard]] AppOptions parse_app_options(int argc, char** argv, const std::string& usage);

/// Called once per configuration before it runs, and with each result (see OutputSink).
struct AppHooks {
  std::function<void(const BenchConfig&)> begin;
  OutputSink sink;
  std::function<void(const BenchResult&)> end;
};

/// Runs every configuration of `opt` against the model (a new Session per parallel value; sync runs with
/// parallel = 1 only) and reports. Returns the results. Throws vnpu::Error.
std::vector<BenchResult> run_app(const AppOptions& opt, const std::string& title, const InputSource& input,
                                 const AppHooks& hooks);

}  // namespace vnpu::examples
