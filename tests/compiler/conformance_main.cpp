// SPDX-License-Identifier: MIT
// vnpu-conformance [--backend sim|flat|flat-ref] [FILTER]: print the per-op ONNX node conformance table.
#include <cstdio>
#include <cstring>
#include <string>

#include "conformance.h"

namespace vnpu::conformance {
Executor sim_executor();
}

int main(int argc, char** argv) {
  using namespace vnpu::conformance;
  std::string backend = "sim", filter;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--backend") && i + 1 < argc)
      backend = argv[++i];
    else if (argv[i][0] == '-') {
      std::fprintf(stderr, "usage: vnpu-conformance [--backend sim|flat|flat-ref] [FILTER]\n");
      return 2;
    } else
      filter = argv[i];
  }
  Executor e = backend == "sim" ? sim_executor() : flat_executor(backend == "flat-ref");
  auto results = run_all(e, filter);
  std::fputs(report(results).c_str(), stdout);
  for (const auto& r : results)
    if (r.outcome == Outcome::kFail)
      return 1;
  return 0;
}
