// vnpu-driver-bench: submission overhead of vnpu.ko, measured in the guest (not a test; no assertions).
//
// For NOP jobs (one DRM_VNPU_OP_NOP command) it measures, in one run:
//   - round-trip latency at queue depth 1 and throughput at queue depth --depth through io_uring
//     (IORING_OP_URING_CMD, one SQE and one CQE per job);
//   - the same through ioctl SUBMIT + WAIT (latency: submit then wait; throughput: batches of --depth jobs,
//     one SUBMIT, then WAIT for the last);
//   - the io_uring floor: IORING_OP_NOP round trips and throughput on the same ring setup.
// Each figure is also given as a ratio to the IORING_OP_NOP figure of the same run.
//
// With --mem-alloc it measures instead the median latency of MEM_ALLOC (which clears the memory it hands out)
// followed by GEM_CLOSE, for 1 MiB and 64 MiB.
//
// Usage: vnpu-driver-bench [--device /dev/accel/accel0] [--jobs N] [--depth D] [--json] [--mem-alloc]

#include <fcntl.h>
#include <liburing.h>
#include <time.h>
#include <unistd.h>
#include <xf86drm.h>

#include <vnpu_accel.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void die(const char* what, int err) {
  fprintf(stderr, "vnpu-driver-bench: %s: %s\n", what, strerror(err));
  exit(1);
}

struct Result {
  double lat_us = 0;      // median round trip at depth 1
  double jobs_per_s = 0;  // at depth D
};

/// One IORING_OP_URING_CMD NOP job prepared on `ring`.
void prep_nop_job(io_uring* ring, int fd, const drm_vnpu_uring_submit& s, uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe)
    die("io_uring_get_sqe", EBUSY);
  io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, nullptr, 0, 0);
  sqe->cmd_op = DRM_VNPU_URING_CMD_SUBMIT;
  memset(sqe->cmd, 0, 128 - offsetof(io_uring_sqe, cmd));
  memcpy(sqe->cmd, &s, sizeof(s));
  io_uring_sqe_set_data64(sqe, tag);
}

void prep_ring_nop(io_uring* ring, int, const drm_vnpu_uring_submit&, uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe)
    die("io_uring_get_sqe", EBUSY);
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, tag);
}

using Prep = void (*)(io_uring*, int, const drm_vnpu_uring_submit&, uint64_t);

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

Result run_uring(io_uring* ring, int fd, Prep prep, const drm_vnpu_uring_submit& s, int jobs, int depth) {
  Result r;
  std::vector<double> lat;
  for (int i = 0; i < jobs; i++) {
    int64_t t0 = now_ns();
    prep(ring, fd, s, i);
    io_uring_submit_and_wait(ring, 1);
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(ring, &cqe))
      die("io_uring_wait_cqe", EIO);
    if (cqe->res < 0)
      die("job", -cqe->res);
    io_uring_cqe_seen(ring, cqe);
    lat.push_back((now_ns() - t0) / 1e3);
  }
  r.lat_us = median(lat);

  int64_t t0 = now_ns();
  int submitted = 0, done = 0;
  while (done < jobs) {
    while (submitted < jobs && submitted - done < depth)
      prep(ring, fd, s, submitted++);
    io_uring_submit_and_wait(ring, 1);
    io_uring_cqe* cqe = nullptr;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      if (cqe->res < 0)
        die("job", -cqe->res);
      n++;
    }
    io_uring_cq_advance(ring, n);
    done += n;
  }
  r.jobs_per_s = jobs / ((now_ns() - t0) / 1e9);
  return r;
}

int ioctl_submit(int fd, std::vector<drm_vnpu_job>& jobs, uint64_t* first) {
  drm_vnpu_submit s{};
  s.jobs = reinterpret_cast<uintptr_t>(jobs.data());
  s.job_count = uint32_t(jobs.size());
  if (drmIoctl(fd, DRM_IOCTL_VNPU_SUBMIT, &s))
    return -errno;
  *first = s.first_seqno;
  return 0;
}

int ioctl_wait(int fd, uint64_t seqno) {
  drm_vnpu_wait w{};
  w.seqno = seqno;
  w.timeout_ns = now_ns() + 60000000000LL;
  if (drmIoctl(fd, DRM_IOCTL_VNPU_WAIT, &w))
    return -errno;
  return w.job_status;
}

Result run_ioctl(int fd, const drm_vnpu_job& job, int jobs, int depth) {
  Result r;
  std::vector<double> lat;
  std::vector<drm_vnpu_job> one(1, job);
  for (int i = 0; i < jobs; i++) {
    int64_t t0 = now_ns();
    uint64_t s = 0;
    int ret = ioctl_submit(fd, one, &s);
    if (!ret)
      ret = ioctl_wait(fd, s);
    if (ret)
      die("ioctl job", -ret);
    lat.push_back((now_ns() - t0) / 1e3);
  }
  r.lat_us = median(lat);

  // Throughput: batches of `depth` jobs; every job's result is collected with WAIT.
  std::vector<drm_vnpu_job> batch(std::min(depth, int(DRM_VNPU_MAX_JOBS)), job);
  int64_t t0 = now_ns();
  for (int done = 0; done < jobs; done += int(batch.size())) {
    uint64_t first = 0;
    int ret = ioctl_submit(fd, batch, &first);
    for (uint64_t s = first; !ret && s < first + batch.size(); s++)
      ret = ioctl_wait(fd, s);
    if (ret)
      die("ioctl batch", -ret);
  }
  r.jobs_per_s = jobs / ((now_ns() - t0) / 1e9);
  return r;
}

/// Median of `reps` MEM_ALLOC + GEM_CLOSE round trips of `bytes`, in µs.
double mem_alloc_us(int fd, uint64_t bytes, int reps) {
  std::vector<int64_t> t;
  for (int i = 0; i < reps; i++) {
    drm_vnpu_mem_alloc a{};
    a.size = bytes;
    int64_t t0 = now_ns();
    if (drmIoctl(fd, DRM_IOCTL_VNPU_MEM_ALLOC, &a))
      die("MEM_ALLOC", errno);
    drm_gem_close c{};
    c.handle = a.handle;
    if (drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &c))
      die("GEM_CLOSE", errno);
    t.push_back(now_ns() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2] / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  const char* dev = "/dev/accel/accel0";
  int jobs = 2000, depth = 64;
  bool json = false, mem_alloc = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--device" && i + 1 < argc)
      dev = argv[++i];
    else if (a == "--jobs" && i + 1 < argc)
      jobs = std::max(1, atoi(argv[++i]));
    else if (a == "--depth" && i + 1 < argc)
      depth = std::clamp(atoi(argv[++i]), 1, 4096);
    else if (a == "--json")
      json = true;
    else if (a == "--mem-alloc")
      mem_alloc = true;
    else {
      fprintf(stderr, "usage: %s [--device PATH] [--jobs N] [--depth D] [--json] [--mem-alloc]\n", argv[0]);
      return 2;
    }
  }
  int fd = open(dev, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    die(dev, errno);
  if (mem_alloc) {
    mem_alloc_us(fd, 1 << 20, 3);  // warm-up (creates the context)
    for (uint64_t mib : {1, 64})
      printf("MEM_ALLOC + GEM_CLOSE %3llu MiB: median %.1f us\n", (unsigned long long)mib,
             mem_alloc_us(fd, mib << 20, 21));
    close(fd);
    return 0;
  }

  io_uring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQE32;
  int ret = io_uring_queue_init_params(std::max(depth, 8) * 2, &ring, &p);
  if (ret)
    die("io_uring_queue_init_params", -ret);

  drm_vnpu_cmd nop{};
  nop.op = DRM_VNPU_OP_NOP;
  drm_vnpu_job job{};
  job.cmds = reinterpret_cast<uintptr_t>(&nop);
  job.cmd_count = 1;
  drm_vnpu_uring_submit us{};
  us.job = job;

  // Warm-up, then the three measurements in the same run.
  run_uring(&ring, fd, prep_nop_job, us, 100, depth);
  Result floor = run_uring(&ring, fd, prep_ring_nop, us, jobs * 10, depth);
  Result uring = run_uring(&ring, fd, prep_nop_job, us, jobs, depth);
  Result ioc = run_ioctl(fd, job, jobs, depth);

  if (json) {
    printf("{\"jobs\": %d, \"depth\": %d,\n", jobs, depth);
    printf(" \"iouring_nop\": {\"lat_us\": %.2f, \"ops_per_s\": %.0f},\n", floor.lat_us, floor.jobs_per_s);
    printf(
        " \"uring_cmd\": {\"lat_us\": %.2f, \"jobs_per_s\": %.0f, \"lat_ratio\": %.1f, "
        "\"rate_ratio\": %.4f},\n",
        uring.lat_us, uring.jobs_per_s, uring.lat_us / floor.lat_us, uring.jobs_per_s / floor.jobs_per_s);
    printf(" \"ioctl\": {\"lat_us\": %.2f, \"jobs_per_s\": %.0f, \"lat_ratio\": %.1f, \"rate_ratio\": %.4f}}\n",
           ioc.lat_us, ioc.jobs_per_s, ioc.lat_us / floor.lat_us, ioc.jobs_per_s / floor.jobs_per_s);
  } else {
    printf("vnpu-driver-bench: %d NOP jobs, depth %d (latency: median round trip at depth 1)\n", jobs, depth);
    printf("%-28s %12s %14s %12s %12s\n", "path", "latency_us", "jobs_per_s", "lat/nop", "rate/nop");
    printf("%-28s %12.2f %14.0f %12.1f %12.4f\n", "io_uring IORING_OP_NOP", floor.lat_us, floor.jobs_per_s, 1.0, 1.0);
    printf("%-28s %12.2f %14.0f %12.1f %12.4f\n", "io_uring URING_CMD_SUBMIT", uring.lat_us, uring.jobs_per_s,
           uring.lat_us / floor.lat_us, uring.jobs_per_s / floor.jobs_per_s);
    printf("%-28s %12.2f %14.0f %12.1f %12.4f\n", "ioctl SUBMIT + WAIT", ioc.lat_us, ioc.jobs_per_s,
           ioc.lat_us / floor.lat_us, ioc.jobs_per_s / floor.jobs_per_s);
  }
  io_uring_queue_exit(&ring);
  close(fd);
  return 0;
}
