// SPDX-License-Identifier: MIT
#include "bench.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <sstream>

#include <vnpu/coro.h>
#include <vnpu/error.h>
#include <nlohmann/json.hpp>

#include "timings.h"

namespace vnpu::examples {
namespace {

using Clock = RequestTimings::Clock;

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

Stat summarise(std::vector<double> v) {
  Stat s;
  if (v.empty())
    return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) { return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))]; };
  double sum = 0;
  for (double x : v)
    sum += x;
  s.mean = sum / double(v.size());
  s.p50 = pct(0.5);
  s.p90 = pct(0.9);
  s.p99 = pct(0.99);
  s.max = v.back();
  return s;
}

// Device busy intervals of each request in ns since r.start: the device's job intervals when reported
// (H2D start to compute/D2H end), else the host's submitted→completed window.
std::vector<std::pair<double, double>> device_intervals(const BenchResult& r) {
  std::vector<std::pair<double, double>> iv;
  const int64_t t0 = std::chrono::duration_cast<std::chrono::nanoseconds>(r.start.time_since_epoch()).count();
  for (const auto& t : r.timings) {
    JobTimes j = job_times(t, r.clock_offset_ns);
    if (j.exec) {
      const int64_t s0 = j.h2d ? j.h2d->first : j.exec->first;
      iv.emplace_back(double(s0 - t0), double(j.exec->second - t0));
    } else {
      iv.emplace_back(ms(t.submitted - r.start) * 1e6, ms(t.completed - r.start) * 1e6);
    }
  }
  return iv;
}

void finish(BenchResult& r, Clock::time_point end) {
  r.wall_s = std::chrono::duration<double>(end - r.start).count();
  r.throughput = r.wall_s > 0 ? double(r.timings.size()) / r.wall_s : 0;
  std::vector<double> lat, queue, prep, h2d, compute, d2h, dev, post;
  r.engine_times = !r.timings.empty();
  double h2d_busy = 0, compute_busy = 0;
  auto iv = device_intervals(r);
  for (size_t i = 0; i < r.timings.size(); ++i) {
    const auto& t = r.timings[i];
    lat.push_back(ms(t.total()));
    queue.push_back(ms(t.prep_start - t.enqueued));
    prep.push_back(ms(t.prep()));
    post.push_back(ms(t.resolved - t.completed));
    r.bytes_copied += double(t.host_bytes_copied) / double(r.timings.size());
    dev.push_back((iv[i].second - iv[i].first) / 1e6);
    JobTimes j = job_times(t, r.clock_offset_ns);
    if (!j.engine_times)
      r.engine_times = false;
    h2d.push_back(j.h2d_ms), compute.push_back(j.compute_ms), d2h.push_back(j.d2h_ms);
    h2d_busy += j.h2d_ms, compute_busy += j.compute_ms;
  }
  r.latency = summarise(lat);
  r.queue = summarise(queue);
  r.prep = summarise(prep);
  r.post = summarise(post);
  r.device = summarise(dev);
  if (r.engine_times) {
    r.h2d = summarise(h2d), r.compute = summarise(compute), r.d2h = summarise(d2h);
    // Each engine runs its commands in order, one at a time: busy time is the sum of modelled times.
    r.device_util = r.wall_s > 0 ? std::min(1.0, compute_busy / (r.wall_s * 1e3 * r.compute_cores)) : 0;
    r.h2d_util = r.wall_s > 0 ? std::min(1.0, h2d_busy / (r.wall_s * 1e3)) : 0;
    return;
  }
  // No engine times: the union of device intervals over the wall time.
  std::sort(iv.begin(), iv.end());
  double busy = 0, cur_s = -1, cur_e = -1;
  for (auto [s0, e0] : iv) {
    if (s0 > cur_e) {
      busy += std::max(0.0, cur_e - cur_s);
      cur_s = s0, cur_e = e0;
    } else {
      cur_e = std::max(cur_e, e0);
    }
  }
  busy += std::max(0.0, cur_e - cur_s);
  r.device_util = r.wall_s > 0 ? std::min(1.0, busy / (r.wall_s * 1e9)) : 0;
}

Async<int> coro_pipeline(Session& session, const BenchConfig& c, const InputSource& input, const OutputSink& sink,
                         std::vector<RequestTimings>& timings) {
  std::deque<Task<Outputs>> pending;
  int next_out = 0;
  for (int i = 0; i < c.count; ++i) {
    pending.push_back(session.run(input(i)));
    if (int(pending.size()) >= c.window) {
      Task<Outputs> t = std::move(pending.front());
      pending.pop_front();
      Outputs out = co_await std::move(t);  // resumes on the runtime's completion thread
      timings.push_back(out.timings);
      sink(next_out++, out);
    }
  }
  while (!pending.empty()) {
    Task<Outputs> t = std::move(pending.front());
    pending.pop_front();
    Outputs out = co_await std::move(t);
    timings.push_back(out.timings);
    sink(next_out++, out);
  }
  co_return next_out;
}

std::string fmt(double v, int prec = 2) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(prec) << v;
  return s.str();
}

}  // namespace

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kSync: return "sync";
    case Mode::kAsync: return "async";
    case Mode::kCoro: return "coro";
  }
  return "?";
}

double BenchResult::stage_sum_ms() const {
  return engine_times ? prep.mean + h2d.mean + compute.mean + d2h.mean + post.mean
                      : prep.mean + device.mean + post.mean;
}
double BenchResult::stage_max_ms() const {
  const double p = prep.mean / std::max(1, config.parallel);
  // One callback thread copies every request's outputs: post is a stage of width 1.
  return engine_times ? std::max({p, h2d.mean, compute.mean / std::max(1, compute_cores), d2h.mean, post.mean})
                      : std::max({p, device.mean, post.mean});
}
double BenchResult::bound_ips() const {
  const double t = config.mode == Mode::kSync ? stage_sum_ms() : stage_max_ms();
  return t > 0 ? 1000.0 / t : 0;
}
double BenchResult::pipeline_bound() const {
  const double slowest = stage_max_ms();
  return slowest > 0 ? stage_sum_ms() / slowest : 0;
}

BenchResult run_bench(Session& session, const BenchConfig& c, const InputSource& input, const OutputSink& sink) {
  if (c.count < 1 || c.window < 1)
    throw Error(ErrorCode::kInvalidArgument, "bench: count and window must be >= 1");
  BenchResult r;
  r.config = c;
  r.backend = session.backend();
  r.clock_offset_ns = session.device_clock_offset_ns();
  r.compute_cores = session.compute_cores();
  r.timings.reserve(size_t(c.count));
  r.start = Clock::now();
  switch (c.mode) {
    case Mode::kSync:
      for (int i = 0; i < c.count; ++i) {
        Outputs out = session.run(input(i)).wait();
        r.timings.push_back(out.timings);
        sink(i, out);
      }
      break;
    case Mode::kAsync: {
      std::deque<Task<Outputs>> pending;
      int next_out = 0;
      auto consume = [&] {
        Outputs out = pending.front().wait();
        pending.pop_front();
        r.timings.push_back(out.timings);
        sink(next_out++, out);
      };
      for (int i = 0; i < c.count; ++i) {
        pending.push_back(session.run(input(i)));
        if (int(pending.size()) >= c.window)
          consume();
      }
      while (!pending.empty())
        consume();
      break;
    }
    case Mode::kCoro: (void)sync_wait(coro_pipeline(session, c, input, sink, r.timings)); break;
  }
  finish(r, Clock::now());
  return r;
}

void print_table(std::ostream& out, const std::string& model, const std::vector<BenchResult>& results) {
  out << "\n" << model << "\n";
  out << std::left << std::setw(7) << "mode" << std::right << std::setw(4) << "par" << std::setw(5) << "win"
      << std::setw(7) << "n" << std::setw(10) << "img/s" << std::setw(9) << "vs sync" << std::setw(10) << "bound"
      << std::setw(10) << "lat p50" << std::setw(8) << "prep" << std::setw(8) << "h2d" << std::setw(9) << "compute"
      << std::setw(8) << "d2h" << std::setw(7) << "post" << std::setw(9) << "device" << std::setw(7) << "util"
      << std::setw(10) << "copied"
      << "\n";
  double sync_ips = 0;
  for (const auto& r : results)
    if (r.config.mode == Mode::kSync)
      sync_ips = r.throughput;
  for (const auto& r : results) {
    const bool sync = r.config.mode == Mode::kSync;
    out << std::left << std::setw(7) << mode_name(r.config.mode) << std::right << std::setw(4) << r.config.parallel
        << std::setw(5) << (sync ? 1 : r.config.window) << std::setw(7) << r.timings.size() << std::setw(10)
        << fmt(r.throughput) << std::setw(9) << (sync_ips > 0 ? fmt(r.throughput / sync_ips) + "x" : "-")
        << std::setw(10) << fmt(r.bound_ips()) << std::setw(10) << fmt(r.latency.p50, 1) << std::setw(8)
        << fmt(r.prep.mean) << std::setw(8) << (r.engine_times ? fmt(r.h2d.mean) : "-") << std::setw(9)
        << (r.engine_times ? fmt(r.compute.mean, 1) : "-") << std::setw(8) << (r.engine_times ? fmt(r.d2h.mean) : "-")
        << std::setw(7) << fmt(r.post.mean) << std::setw(9) << fmt(r.device.mean, 1) << std::setw(6)
        << fmt(100 * r.device_util, 0) << "%" << std::setw(10) << fmt(r.bytes_copied, 0) << "\n";
  }
  const int cores = results.empty() ? 1 : results.front().compute_cores;
  out << "  img/s: throughput; vs sync: throughput / sync throughput; bound: img/s if the slowest stage were the\n"
         "  only limit (sync: 1 / sum of stages); times in ms (latency p50, stage means): prep = host input "
         "preparation,\n"
         "  h2d/compute/d2h = modelled engine busy time, post = completion to resolution (callback thread), device =\n"
         "  a request's device time (H2D start to D2H end); util: compute engines busy / (wall x "
      << cores << " cores); copied: host bytes copied per request\n";
  for (const auto& r : results)
    if (r.config.mode == Mode::kSync && r.stage_max_ms() > 0) {
      out << "  pipeline bound on async/sync: sum of stages / slowest stage = " << fmt(r.stage_sum_ms()) << " / "
          << fmt(r.stage_max_ms()) << " = " << fmt(r.pipeline_bound()) << "x (compute counts / " << cores
          << " cores)\n";
      break;
    }
}

nlohmann::json results_json(const std::string& model, const std::vector<BenchResult>& results) {
  auto stat = [](const Stat& s) {
    return nlohmann::json{{"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"max", s.max}};
  };
  nlohmann::json rows = nlohmann::json::array();
  double sync_ips = 0;
  for (const auto& r : results)
    if (r.config.mode == Mode::kSync)
      sync_ips = r.throughput;
  for (const auto& r : results) {
    rows.push_back({{"model", model},
                    {"backend", r.backend},
                    {"mode", mode_name(r.config.mode)},
                    {"parallel", r.config.parallel},
                    {"window", r.config.mode == Mode::kSync ? 1 : r.config.window},
                    {"count", r.timings.size()},
                    {"wall_s", r.wall_s},
                    {"throughput_ips", r.throughput},
                    {"speedup_vs_sync", sync_ips > 0 ? r.throughput / sync_ips : 0.0},
                    {"bound_ips", r.bound_ips()},
                    {"pipeline_bound_speedup", r.pipeline_bound()},
                    {"compute_cores", r.compute_cores},
                    {"latency_ms", stat(r.latency)},
                    {"stage_ms",
                     {{"queue", stat(r.queue)},
                      {"prep", stat(r.prep)},
                      {"h2d", stat(r.h2d)},
                      {"compute", stat(r.compute)},
                      {"d2h", stat(r.d2h)},
                      {"post", stat(r.post)},
                      {"device", stat(r.device)}}},
                    {"engine_util", {{"compute", r.device_util}, {"h2d", r.h2d_util}}},
                    {"engine_times", r.engine_times},
                    {"host_bytes_copied_per_request", r.bytes_copied}});
  }
  return rows;
}

void write_trace(const std::string& path, const std::string& model, const std::vector<BenchResult>& results) {
  // Per configuration one process; per request, events on separate tracks: host (queued, prep, input
  // consumed, output available) and each device engine (H2D, each compute core, D2H). Device times are
  // the job reports' (device clock, moved onto the host clock); a compute+D2H span is split at its end
  // minus the D2H engine's busy time, since a job's D2H commands run after its compute.
  nlohmann::json events = nlohmann::json::array();
  int pid = 1;
  for (const auto& r : results) {
    const std::string name = model + " " + mode_name(r.config.mode) + " parallel=" + std::to_string(r.config.parallel);
    events.push_back({{"ph", "M"}, {"pid", pid}, {"name", "process_name"}, {"args", {{"name", name}}}});
    const int cores = std::max(1, r.compute_cores);
    enum { kQueued = 1, kPrep, kConsumed, kH2d, kD2h, kOutput, kInFlight, kCompute0 };
    std::vector<std::pair<int, std::string>> tracks = {{kQueued, "host: queued"},
                                                       {kPrep, "host: prep"},
                                                       {kConsumed, "input consumed"},
                                                       {kH2d, "device: H2D engine"},
                                                       {kD2h, "device: D2H engine"},
                                                       {kOutput, "output available"},
                                                       {kInFlight, "host: device job(s) in flight"}};
    for (int c = 0; c < cores; ++c)
      tracks.emplace_back(kCompute0 + c, "device: compute core " + std::to_string(c));
    for (const auto& [tid, tname] : tracks) {
      events.push_back({{"ph", "M"}, {"pid", pid}, {"tid", tid}, {"name", "thread_name"}, {"args", {{"name", tname}}}});
      events.push_back(
          {{"ph", "M"}, {"pid", pid}, {"tid", tid}, {"name", "thread_sort_index"}, {"args", {{"sort_index", tid}}}});
    }
    auto us = [&](Clock::time_point tp) { return std::chrono::duration<double, std::micro>(tp - r.start).count(); };
    const int64_t t0 = std::chrono::duration_cast<std::chrono::nanoseconds>(r.start.time_since_epoch()).count();
    auto dev_us = [&](int64_t host_ns) { return double(host_ns - t0) / 1e3; };
    // Compute spans onto core tracks in start order: each on a core that is free by then (never two
    // overlapping on one track).
    struct Span {
      size_t req;
      double start, end;
    };
    std::vector<Span> compute;
    for (size_t i = 0; i < r.timings.size(); ++i) {
      const auto& t = r.timings[i];
      const std::string req = "req " + std::to_string(i);
      auto ev = [&](int tid, double ts, double dur) {
        events.push_back(
            {{"ph", "X"}, {"pid", pid}, {"tid", tid}, {"name", req}, {"ts", ts}, {"dur", std::max(0.0, dur)}});
      };
      auto instant = [&](int tid, double ts) {
        events.push_back({{"ph", "i"}, {"s", "t"}, {"pid", pid}, {"tid", tid}, {"name", req}, {"ts", ts}});
      };
      ev(kQueued, us(t.enqueued), us(t.prep_start) - us(t.enqueued));
      ev(kPrep, us(t.prep_start), us(t.prep_end) - us(t.prep_start));
      ev(kInFlight, us(t.submitted), us(t.completed) - us(t.submitted));
      if (t.input_consumed != Clock::time_point{})
        instant(kConsumed, us(t.input_consumed));
      instant(kOutput, us(t.completed));
      const JobTimes j = job_times(t, r.clock_offset_ns);
      if (j.h2d)
        ev(kH2d, dev_us(j.h2d->first), dev_us(j.h2d->second) - dev_us(j.h2d->first));
      if (j.exec) {
        const double e0 = dev_us(j.exec->first), e1 = dev_us(j.exec->second);
        const double d2h_start = std::max(e0, e1 - j.d2h_ms * 1e3);
        compute.push_back({i, e0, d2h_start});
        ev(kD2h, d2h_start, e1 - d2h_start);
      }
    }
    std::sort(compute.begin(), compute.end(), [](const Span& a, const Span& b) { return a.start < b.start; });
    std::vector<double> core_free(static_cast<size_t>(cores), -1e300);
    for (const Span& c : compute) {
      const size_t core = static_cast<size_t>(std::min_element(core_free.begin(), core_free.end()) - core_free.begin());
      core_free[core] = c.end;
      events.push_back({{"ph", "X"},
                        {"pid", pid},
                        {"tid", kCompute0 + static_cast<int>(core)},
                        {"name", "req " + std::to_string(c.req)},
                        {"ts", c.start},
                        {"dur", std::max(0.0, c.end - c.start)}});
    }
    ++pid;
  }
  std::ofstream out(path, std::ios::trunc);
  out << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump();
  if (!out.flush())
    throw Error(ErrorCode::kIo, path + ": write failed: " + std::strerror(errno));
}

void write_svg(const std::string& path, const std::string& model, const std::vector<BenchResult>& results) {
  // Layout: per configuration a row with two lanes (host prep, device) over the first `shown` requests'
  // time span, and on the right a bar of its throughput with the bound marked.
  constexpr int kLeft = 170, kTimeline = 620, kBarX = kLeft + kTimeline + 30, kBarW = 200, kRowH = 56;
  const int width = kBarX + kBarW + 60, height = 70 + kRowH * int(results.size()) + 30;
  double max_ips = 1;
  for (const auto& r : results)
    max_ips = std::max({max_ips, r.throughput, r.bound_ips()});
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  s << "<text x='10' y='20' font-size='15' font-weight='bold'>" << model
    << ": timeline of the first requests and throughput</text>\n";
  s << "<text x='" << kLeft << "' y='44'>lanes: host prep (blue), device busy (orange); time axis per row</text>\n";
  s << "<text x='" << kBarX << "' y='44'>img/s (| = pipeline bound)</text>\n";
  int row = 0;
  for (const auto& r : results) {
    const int y = 60 + row * kRowH;
    s << "<text x='10' y='" << y + 22 << "'>" << mode_name(r.config.mode) << " parallel=" << r.config.parallel
      << "</text>\n";
    const size_t shown = std::min<size_t>(r.timings.size(), 12);
    auto iv = device_intervals(r);
    double span = 1;
    for (size_t i = 0; i < shown; ++i)
      span = std::max({span, iv[i].second / 1e6, ms(r.timings[i].prep_end - r.start)});
    auto x = [&](double t_ms) { return kLeft + kTimeline * std::clamp(t_ms / span, 0.0, 1.0); };
    for (size_t i = 0; i < shown; ++i) {
      const auto& t = r.timings[i];
      const double p0 = ms(t.prep_start - r.start), p1 = ms(t.prep_end - r.start);
      s << "<rect x='" << x(p0) << "' y='" << y << "' width='" << std::max(1.0, x(p1) - x(p0))
        << "' height='16' fill='#4477cc' stroke='white'/>\n";
      const double d0 = iv[i].first / 1e6, d1 = iv[i].second / 1e6;
      s << "<rect x='" << x(d0) << "' y='" << y + 20 << "' width='" << std::max(1.0, x(d1) - x(d0))
        << "' height='16' fill='#ee8833' stroke='white'/>\n";
    }
    s << "<text x='" << kLeft << "' y='" << y + 50 << "' fill='#666'>0 … " << fmt(span, 1) << " ms (" << shown
      << " requests)</text>\n";
    const double bw = kBarW * r.throughput / max_ips, bx = kBarW * r.bound_ips() / max_ips;
    s << "<rect x='" << kBarX << "' y='" << y + 4 << "' width='" << bw << "' height='24' fill='#55aa55'/>\n";
    s << "<line x1='" << kBarX + bx << "' x2='" << kBarX + bx << "' y1='" << y << "' y2='" << y + 32
      << "' stroke='black' stroke-width='2'/>\n";
    s << "<text x='" << kBarX + std::max(bw, bx) + 6 << "' y='" << y + 21 << "'>" << fmt(r.throughput) << "</text>\n";
    ++row;
  }
  s << "</svg>\n";
  std::ofstream out(path, std::ios::trunc);
  out << s.str();
  if (!out.flush())
    throw Error(ErrorCode::kIo, path + ": write failed: " + std::strerror(errno));
}

}  // namespace vnpu::examples
