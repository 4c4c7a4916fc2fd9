// SPDX-License-Identifier: MIT
#include "app.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <vnpu/error.h>
#include <nlohmann/json.hpp>

namespace vnpu::examples {
namespace {

int parse_int(const std::string& flag, const std::string& v, int lo, int hi) {
  try {
    size_t pos = 0;
    long x = std::stol(v, &pos);
    if (pos == v.size() && x >= lo && x <= hi)
      return int(x);
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::kInvalidArgument,
              flag + " takes an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", not '" + v + "'");
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty())
      out.push_back(item);
  return out;
}

}  // namespace

AppOptions parse_app_options(int argc, char** argv, const std::string& usage) {
  AppOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    if (a == "-h" || a == "--help") {
      std::cout << usage;
      std::exit(0);
    }
    if (a == "--timing-only") {
      o.timing_only = true;
      continue;
    }
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      throw Error(ErrorCode::kInvalidArgument, a + " needs a value (see --help)");
    }
    if (a == "--model")
      o.model = v;
    else if (a == "--data")
      o.data = v;
    else if (a == "--backend") {
      if (v != "sim" && v != "kernel")
        throw Error(ErrorCode::kInvalidArgument, "--backend is 'sim' or 'kernel'");
      o.backend = v;
    } else if (a == "--count")
      o.count = parse_int(a, v, 1, 1000000);
    else if (a == "--samples")
      o.samples = parse_int(a, v, 1, 10000);
    else if (a == "--window")
      o.window = parse_int(a, v, 1, 256);
    else if (a == "--modes") {
      o.modes.clear();
      for (const auto& m : split(v)) {
        if (m == "sync")
          o.modes.push_back(Mode::kSync);
        else if (m == "async")
          o.modes.push_back(Mode::kAsync);
        else if (m == "coro")
          o.modes.push_back(Mode::kCoro);
        else
          throw Error(ErrorCode::kInvalidArgument, "--modes takes sync,async,coro; unknown '" + m + "'");
      }
    } else if (a == "--parallel") {
      o.parallel.clear();
      for (const auto& p : split(v))
        o.parallel.push_back(parse_int(a, p, 1, 16));
    } else if (a == "--json")
      o.json = v;
    else if (a == "--trace")
      o.trace = v;
    else if (a == "--svg")
      o.svg = v;
    else if (a == "--out-dir")
      o.out_dir = v;
    else
      throw Error(ErrorCode::kInvalidArgument, "unknown option '" + a + "' (see --help)");
  }
  if (o.model.empty())
    throw Error(ErrorCode::kInvalidArgument, "--model FILE.vnpu is required (see --help)");
  if (o.data.empty())
    throw Error(ErrorCode::kInvalidArgument, "--data DIR is required (see --help)");
  if (o.modes.empty() || o.parallel.empty())
    throw Error(ErrorCode::kInvalidArgument, "--modes and --parallel need at least one value");
  return o;
}

std::vector<BenchResult> run_app(const AppOptions& opt, const std::string& title, const InputSource& input,
                                 const AppHooks& hooks) {
  std::vector<BenchResult> results;
  std::string backend, device;
  for (size_t pi = 0; pi < opt.parallel.size(); ++pi) {
    const int p = opt.parallel[pi];
    Session session(opt.model, {opt.backend, p, 0, opt.timing_only});
    backend = session.backend();
    device = session.device_name();
    for (Mode m : opt.modes) {
      if (m == Mode::kSync && pi != 0)
        continue;  // the synchronous path has no prep parallelism to vary
      BenchConfig c{m, p, opt.count, opt.window};
      if (hooks.begin)
        hooks.begin(c);
      std::cerr << "  running " << mode_name(m) << " parallel=" << p << " (" << opt.count << " requests)...\n";
      results.push_back(run_bench(session, c, input, hooks.sink ? hooks.sink : OutputSink([](int, Outputs&) {})));
      if (hooks.end)
        hooks.end(results.back());
    }
  }
  std::cout << "\n"
            << title << " on " << device << " (backend " << backend << ")"
            << (opt.timing_only ? ", device in timing-only mode (compute time modelled, arithmetic skipped)" : "")
            << "\n";
  print_table(std::cout, title, results);
  if (!opt.json.empty()) {
    nlohmann::json doc{{"model", title},
                       {"backend", backend},
                       {"device", device},
                       {"timing_only", opt.timing_only},
                       {"results", results_json(title, results)}};
    std::ofstream(opt.json, std::ios::trunc) << doc.dump(1) << "\n";
  }
  if (!opt.trace.empty())
    write_trace(opt.trace, title, results);
  if (!opt.svg.empty())
    write_svg(opt.svg, title, results);
  return results;
}

}  // namespace vnpu::examples
