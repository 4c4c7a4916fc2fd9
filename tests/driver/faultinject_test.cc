// SPDX-License-Identifier: MIT
// Every allocation-failure unwind path of vnpu.ko's ioctls, driven by the kernel's fault injection
// (/proc/thread-self/fail-nth with failslab and fail_page_alloc restricted to call chains through vnpu.ko): for
// each entry point, fail its 1st, 2nd, ... allocation until it runs through without reaching the failure; every
// injected failure must give a clean errno (or success, where the allocation has a fallback), the file must go
// on working, and nothing may leak (the debug kernel's kmemleak scan after the run, ./vnpu vm --kernel debug).
// Prints the vnpu.ko function and the callee that failed for every injection ("points exercised").
// Needs CONFIG_FAULT_INJECTION (debug kernel); skips elsewhere.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xf86drm.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "vnpu_accel.h"

namespace {

constexpr const char* kNode = "/dev/accel/accel0";
constexpr const char* kDebugfs = "/sys/kernel/debug/";

bool write_file(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  f << value;
  f.flush();
  return bool(f);
}

/// Base address and size of vnpu.ko from /proc/modules (0 if not found).
std::pair<unsigned long, unsigned long> module_range() {
  std::ifstream f("/proc/modules");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream l(line);
    std::string name, refs, deps, state, addr;
    unsigned long size = 0;
    if (l >> name >> size >> refs >> deps >> state >> addr && name == "vnpu")
      return {std::stoul(addr, nullptr, 16), size};
  }
  return {0, 0};
}

int xioctl(int fd, unsigned long req, void* arg) {
  return ioctl(fd, req, arg) == 0 ? 0 : -errno;
}

/// What one entry point's loop saw.
struct Points {
  int injected = 0;
  std::map<int, int> errnos;    ///< -errno (0 = success despite the failure) -> count
  std::set<std::string> sites;  ///< "vnpu_function <- callee" of every injection
};

class FaultInject : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (access("/proc/thread-self/fail-nth", W_OK) != 0 || access(kNode, R_OK | W_OK) != 0)
      return;
    auto [base, size] = module_range();
    if (!base)
      return;
    for (const char* a : {"failslab/", "fail_page_alloc/"}) {
      const std::string d = std::string(kDebugfs) + a;
      if (!write_file(d + "ignore-gfp-wait", "N") || !write_file(d + "require-start", std::to_string(base)) ||
          !write_file(d + "require-end", std::to_string(base + size)) || !write_file(d + "stacktrace-depth", "32") ||
          !write_file(d + "verbose", "2") || !write_file(d + "times", "-1"))
        return;
    }
    write_file(std::string(kDebugfs) + "fail_page_alloc/min-order", "0");
    write_file(std::string(kDebugfs) + "fail_page_alloc/ignore-gfp-highmem", "N");
    ready_ = true;
  }
  void SetUp() override {
    if (!ready_)
      GTEST_SKIP() << "no fault injection (needs the debug kernel: ./vnpu vm --kernel debug) or no " << kNode;
    fd_ = open(kNode, O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd_, 0);
    nth_ = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC);
    ASSERT_GE(nth_, 0);
    kmsg_ = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (kmsg_ >= 0)
      lseek(kmsg_, 0, SEEK_END);
  }
  void TearDown() override {
    if (kmsg_ >= 0)
      close(kmsg_);
    if (nth_ >= 0)
      close(nth_);
    if (fd_ >= 0)
      close(fd_);
  }

  /// The injection sites logged since the last call (FAULT_INJECTION dumps a stack per injection).
  std::vector<std::string> drain_sites() {
    std::vector<std::string> sites;
    if (kmsg_ < 0)
      return sites;
    char buf[8192];
    bool in_trace = false;
    std::string callee;
    for (;;) {
      const ssize_t n = read(kmsg_, buf, sizeof buf - 1);
      if (n < 0 && errno == EPIPE)
        continue;  // overwritten records: go on with the next
      if (n <= 0)
        break;
      buf[n] = 0;
      const char* msg = std::strchr(buf, ';');
      if (!msg)
        continue;
      std::string m(msg + 1);
      if (m.find("FAULT_INJECTION: forcing a failure") != std::string::npos) {
        in_trace = true;
        callee.clear();
        continue;
      }
      if (!in_trace)
        continue;
      // A frame: " name+0x1/0x2 [module]"; skip the fault-injection and allocator internals.
      std::istringstream l(m);
      std::string frame;
      if (!(l >> frame) || frame.find("+0x") == std::string::npos)
        continue;
      const std::string fn = frame.substr(0, frame.find('+'));
      if (fn.rfind("vnpu_", 0) == 0) {
        sites.push_back(fn + " <- " + (callee.empty() ? "?" : callee));
        in_trace = false;
      } else if (fn.find("fail") == std::string::npos && fn.find("dump_stack") == std::string::npos &&
                 fn.find("should_") == std::string::npos && fn != "show_stack") {
        callee = fn;
      }
    }
    return sites;
  }

  /// Runs `op` with its 1st, 2nd, ... fault-injectable allocation failing until one run reaches no injection;
  /// `undo(ret)` cleans up after each run. Returns what was seen.
  Points loop(const std::function<int()>& op, const std::function<void(int)>& undo) {
    Points p;
    drain_sites();
    for (int n = 1; n < 5000; n++) {
      char arm[16];
      const int len = std::snprintf(arm, sizeof arm, "%d", n);
      if (pwrite(nth_, arm, len, 0) != len) {
        ADD_FAILURE() << "cannot arm fail-nth";
        return p;
      }
      const int ret = op();
      char left[16] = {};
      const ssize_t r = pread(nth_, left, sizeof left - 1, 0);
      (void)!pwrite(nth_, "0", 1, 0);
      EXPECT_GT(r, 0);
      const bool injected = std::atoi(left) == 0;
      undo(ret);
      if (!injected) {
        EXPECT_EQ(ret, 0) << "without an injected failure";
        return p;
      }
      p.injected++;
      p.errnos[ret]++;
      EXPECT_TRUE(ret == 0 || ret == -ENOMEM || ret == -ENOSPC || ret == -EAGAIN || ret == -EIO || ret == -EINTR)
          << "failure " << n << " gave " << ret << " (" << std::strerror(-ret) << ")";
      for (auto& s : drain_sites())
        p.sites.insert(s);
    }
    ADD_FAILURE() << "more than 5000 injection points";
    return p;
  }

  void report(const char* what, const Points& p, bool allocates = true) {
    std::ostringstream os;
    os << what << ": " << p.injected << " injected failures; results";
    for (auto [e, c] : p.errnos)
      os << " " << (e ? std::string(std::strerror(-e)) : std::string("ok")) << " x" << c;
    os << "; sites:";
    for (auto& s : p.sites)
      os << "\n    " << s;
    std::printf("fault-inject %s\n", os.str().c_str());
    RecordProperty("injected", p.injected);
    if (allocates) {
      EXPECT_GT(p.injected, 0) << what << " reached no fault-injectable allocation";
    }
    // The file still works after all that.
    drm_vnpu_get_param gp{};
    gp.param = DRM_VNPU_PARAM_DEVICE_ID;
    EXPECT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_GET_PARAM, &gp), 0);
  }

  uint32_t bo_create(uint64_t size) {
    drm_vnpu_bo_create c{};
    c.size = size;
    EXPECT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_BO_CREATE, &c), 0);
    return c.handle;
  }
  uint32_t mem_alloc(uint64_t size) {
    drm_vnpu_mem_alloc a{};
    a.size = size;
    EXPECT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_MEM_ALLOC, &a), 0);
    return a.handle;
  }
  void gem_close(uint32_t h) {
    drm_gem_close c{};
    c.handle = h;
    EXPECT_EQ(xioctl(fd_, DRM_IOCTL_GEM_CLOSE, &c), 0);
  }
  int wait(uint64_t seqno, uint32_t queue = 0) {
    drm_vnpu_wait w{};
    w.seqno = seqno;
    w.queue_id = queue;
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    w.timeout_ns = (ts.tv_sec + 30) * 1000000000ll + ts.tv_nsec;
    const int r = xioctl(fd_, DRM_IOCTL_VNPU_WAIT, &w);
    return r ? r : w.job_status;
  }

  static inline bool ready_ = false;
  int fd_ = -1, nth_ = -1, kmsg_ = -1;
};

TEST_F(FaultInject, Open) {
  report("open", loop(
                     [] {
                       const int fd = open(kNode, O_RDWR | O_CLOEXEC);
                       if (fd < 0)
                         return -errno;
                       close(fd);
                       return 0;
                     },
                     [](int) {}));
}

TEST_F(FaultInject, FirstContextUse) {
  int fd = open(kNode, O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  report("GET_PARAM(CONTEXT_ID) creating the context", loop(
                                                           [&] {
                                                             drm_vnpu_get_param gp{};
                                                             gp.param = DRM_VNPU_PARAM_CONTEXT_ID;
                                                             return xioctl(fd, DRM_IOCTL_VNPU_GET_PARAM, &gp);
                                                           },
                                                           [&](int) {
                                                             close(fd);
                                                             fd = open(kNode, O_RDWR | O_CLOEXEC);
                                                           }));
  close(fd);
}

TEST_F(FaultInject, BoCreate) {
  drm_vnpu_bo_create c{};
  report("BO_CREATE", loop(
                          [&] {
                            c = {};
                            c.size = 64 << 10;  // 16 pages: each page allocation is a point
                            return xioctl(fd_, DRM_IOCTL_VNPU_BO_CREATE, &c);
                          },
                          [&](int ret) {
                            if (ret == 0)
                              gem_close(c.handle);
                          }));
}

TEST_F(FaultInject, BoInfoAndPrimeExport) {
  const uint32_t h = bo_create(65536);
  report("BO_INFO",
         loop(
             [&] {
               drm_vnpu_bo_info i{};
               i.handle = h;
               return xioctl(fd_, DRM_IOCTL_VNPU_BO_INFO, &i);
             },
             [](int) {}),
         false);  // allocates nothing
  int dmabuf = -1;
  report("PRIME_HANDLE_TO_FD",
         loop(
             [&] {
               drm_prime_handle p{};
               p.handle = h;
               p.flags = DRM_CLOEXEC | DRM_RDWR;
               const int r = xioctl(fd_, DRM_IOCTL_PRIME_HANDLE_TO_FD, &p);
               dmabuf = r ? -1 : p.fd;
               return r;
             },
             [&](int) {
               if (dmabuf >= 0)
                 close(dmabuf);
               dmabuf = -1;
             }),
         false);  // DRM core and dma-buf allocate; vnpu's ioctl entry is a tail call, off the stack
  gem_close(h);
}

TEST_F(FaultInject, MemAlloc) {
  drm_vnpu_mem_alloc a{};
  report("MEM_ALLOC (with its clearing job)", loop(
                                                  [&] {
                                                    a = {};
                                                    a.size = 1 << 20;
                                                    return xioctl(fd_, DRM_IOCTL_VNPU_MEM_ALLOC, &a);
                                                  },
                                                  [&](int ret) {
                                                    if (ret == 0)
                                                      gem_close(a.handle);
                                                  }));
}

TEST_F(FaultInject, QueueCreateAndDestroy) {
  drm_vnpu_queue_create c{};
  report("QUEUE_CREATE", loop(
                             [&] {
                               c = {};
                               c.priority = 1;
                               return xioctl(fd_, DRM_IOCTL_VNPU_QUEUE_CREATE, &c);
                             },
                             [&](int ret) {
                               if (ret == 0) {
                                 drm_vnpu_queue_destroy d{};
                                 d.queue_id = c.queue_id;
                                 EXPECT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_QUEUE_DESTROY, &d), 0);
                               }
                             }));
}

/// A job of two copies (host BO -> device memory -> host BO) with a job report.
struct CopyJob {
  CopyJob(FaultInject* t, uint32_t bo, uint32_t mem) {
    for (int i = 0; i < 2; i++) {
      cmds[i].op = i == 0 ? DRM_VNPU_OP_COPY_TO_DEVICE : DRM_VNPU_OP_COPY_FROM_DEVICE;
      cmds[i].copy.bo_handle = bo;
      cmds[i].copy.mem_handle = mem;
      cmds[i].copy.bo_offset = i * 4096;
      cmds[i].copy.size = 4096;
    }
    job.cmds = reinterpret_cast<uintptr_t>(cmds);
    job.cmd_count = 2;
    job.report_handle = bo;
    job.report_offset = 8192;
    (void)t;
  }
  drm_vnpu_cmd cmds[2] = {};
  drm_vnpu_job job{};
};

TEST_F(FaultInject, SubmitAndWait) {
  const uint32_t bo = bo_create(65536), mem = mem_alloc(65536);
  CopyJob cj(this, bo, mem);
  // A dependency on an earlier job, so the dependency path allocates too.
  drm_vnpu_submit first{};
  first.jobs = reinterpret_cast<uintptr_t>(&cj.job);
  first.job_count = 1;
  ASSERT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_SUBMIT, &first), 0);
  drm_vnpu_dep dep{0, 0, first.first_seqno};
  drm_vnpu_job with_dep = cj.job;
  with_dep.deps = reinterpret_cast<uintptr_t>(&dep);
  with_dep.dep_count = 1;
  drm_vnpu_job batch[2] = {cj.job, with_dep};
  drm_vnpu_submit s{};
  report("SUBMIT (2 jobs, copies, report, dependency)", loop(
                                                            [&] {
                                                              s = {};
                                                              s.jobs = reinterpret_cast<uintptr_t>(batch);
                                                              s.job_count = 2;
                                                              return xioctl(fd_, DRM_IOCTL_VNPU_SUBMIT, &s);
                                                            },
                                                            [&](int ret) {
                                                              if (ret == 0) {
                                                                EXPECT_EQ(wait(s.first_seqno), 0);
                                                                EXPECT_EQ(wait(s.first_seqno + 1), 0);
                                                              }
                                                            }));
  drm_vnpu_submit ev{};
  report("SUBMIT with DRM_VNPU_SUBMIT_F_EVENT", loop(
                                                    [&] {
                                                      ev = {};
                                                      ev.jobs = reinterpret_cast<uintptr_t>(&cj.job);
                                                      ev.job_count = 1;
                                                      ev.flags = DRM_VNPU_SUBMIT_F_EVENT;
                                                      return xioctl(fd_, DRM_IOCTL_VNPU_SUBMIT, &ev);
                                                    },
                                                    [&](int ret) {
                                                      if (ret == 0) {
                                                        drm_vnpu_event_job e{};
                                                        EXPECT_EQ(read(fd_, &e, sizeof e), ssize_t(sizeof e));
                                                        EXPECT_EQ(e.status, 0);
                                                      }
                                                    }));
  // WAIT of a completed job: a failure may not lose the result (a later WAIT still collects it).
  uint64_t seqno = 0;
  auto submit_one = [&] {
    drm_vnpu_submit one{};
    one.jobs = reinterpret_cast<uintptr_t>(&cj.job);
    one.job_count = 1;
    EXPECT_EQ(xioctl(fd_, DRM_IOCTL_VNPU_SUBMIT, &one), 0);
    seqno = one.first_seqno;
  };
  submit_one();
  report("WAIT",
         loop([&] { return wait(seqno); },
              [&](int ret) {
                if (ret != 0) {
                  EXPECT_EQ(wait(seqno), 0) << "the result was lost";
                }
                submit_one();
              }),
         false);
  EXPECT_EQ(wait(seqno), 0);
  EXPECT_EQ(wait(first.first_seqno), 0);
  gem_close(mem);
  gem_close(bo);
}

TEST_F(FaultInject, UringSubmit) {
  const uint32_t bo = bo_create(65536), mem = mem_alloc(65536);
  CopyJob cj(this, bo, mem);
  io_uring ring{};
  ASSERT_EQ(io_uring_queue_init(8, &ring, IORING_SETUP_SQE128 | IORING_SETUP_CQE32), 0);
  report("io_uring SUBMIT", loop(
                                [&] {
                                  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
                                  if (!sqe)
                                    return -EBUSY;
                                  io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd_, nullptr, 0, 0);
                                  sqe->cmd_op = DRM_VNPU_URING_CMD_SUBMIT;
                                  drm_vnpu_uring_submit u{};
                                  u.job = cj.job;
                                  std::memset(sqe->cmd, 0, 80);
                                  std::memcpy(sqe->cmd, &u, sizeof u);
                                  const int r = io_uring_submit(&ring);
                                  if (r < 0)
                                    return r;
                                  io_uring_cqe* cqe = nullptr;
                                  const int w = io_uring_wait_cqe(&ring, &cqe);
                                  if (w < 0)
                                    return w;
                                  const int res = cqe->res;
                                  io_uring_cqe_seen(&ring, cqe);
                                  return res;
                                },
                                [](int) {}));
  io_uring_queue_exit(&ring);
  gem_close(mem);
  gem_close(bo);
}

}  // namespace
