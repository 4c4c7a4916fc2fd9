// SPDX-License-Identifier: MIT
// What vnpu-bench and vnpu-demo share (internal to tools/): option values and the statistics and JSON of their
// reports.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace vnpu::tools {

/// The integer value `v` of option `flag`, in lo..hi; otherwise prints "<tool>: <flag> wants an integer in
/// lo..hi, got '<v>'" to stderr and calls usage(2), which does not return.
inline long parse_long(const char* tool, const std::string& flag, const std::string& v, long lo, long hi,
                       void (*usage)(int)) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (errno || !end || *end || x < lo || x > hi) {
    std::fprintf(stderr, "%s: %s wants an integer in %ld..%ld, got '%s'\n", tool, flag.c_str(), lo, hi, v.c_str());
    usage(2);
  }
  return x;
}

/// The p-th percentile (p in 0..100) of `v`, interpolated linearly between the closest ranks; 0 if `v` is empty.
inline double percentile(std::vector<double> v, double p) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

/// `s` as the inside of a JSON string: quotes and backslashes escaped, control characters dropped.
inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\')
      o += '\\';
    if (static_cast<unsigned char>(c) < 0x20)
      continue;
    o += c;
  }
  return o;
}

}  // namespace vnpu::tools
