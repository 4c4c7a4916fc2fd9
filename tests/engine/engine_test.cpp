// SPDX-License-Identifier: MIT
// Engine library tests: the device's behaviour driven only through its MMIO API and a fake transport.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <cstddef>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "fake_host.h"
#include "program_builder.h"

extern "C" {
#include "vnpu_hw.h"
}

namespace vnpu::test {
namespace {

constexpr uint64_t kSq = FakeHost::kBase;               // command ring
constexpr uint64_t kCq = FakeHost::kBase + 0x10000;     // completion ring
constexpr uint64_t kSgl = FakeHost::kBase + 0x20000;    // scatter-gather lists
constexpr uint64_t kData = FakeHost::kBase + 0x100000;  // data buffers

constexpr uint32_t kOverhead = 100;
constexpr uint32_t kH2dMbps = 1000;  // 1 byte per ns
constexpr uint32_t kD2hMbps = 2000;  // 2 bytes per ns
constexpr uint32_t kGflops = 1;      // 1 flop per ns

struct EngineDeleter {
  void operator()(VnpuEngine* e) const { vnpu_engine_destroy(e); }
};
using EnginePtr = std::unique_ptr<VnpuEngine, EngineDeleter>;

vnpu_hw_cmd nop(uint64_t tag, bool last = true) {
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_NOP;
  c.flags = last ? VNPU_CMD_F_LAST : 0;
  c.tag = tag;
  return c;
}

vnpu_hw_cmd dma(uint8_t opc, uint64_t sgl, uint32_t count, uint64_t off, uint64_t dev, uint64_t len, bool last,
                uint64_t tag = 0) {
  vnpu_hw_cmd c{};
  c.opcode = opc;
  c.flags = last ? VNPU_CMD_F_LAST : 0;
  c.tag = tag;
  c.dma.sgl_addr = sgl;
  c.dma.sgl_count = count;
  c.dma.sgl_offset = off;
  c.dma.dev_addr = dev;
  c.dma.length = len;
  return c;
}

vnpu_hw_cmd matmul(uint64_t a, uint64_t b, uint64_t c_addr, uint32_t m, uint32_t n, uint32_t k, bool last,
                   uint64_t tag = 0) {
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_MATMUL;
  c.flags = last ? VNPU_CMD_F_LAST : 0;
  c.tag = tag;
  c.matmul.a_addr = a;
  c.matmul.b_addr = b;
  c.matmul.c_addr = c_addr;
  c.matmul.m = m;
  c.matmul.n = n;
  c.matmul.k = k;
  c.matmul.dtype = VNPU_DTYPE_F32;
  return c;
}

// The device's numeric contract: f32 accumulation from +0 in k order, no FMA.
std::vector<float> reference_matmul(const std::vector<float>& a, const std::vector<float>& b, uint32_t m, uint32_t n,
                                    uint32_t k) {
  std::vector<float> c(size_t(m) * n);
  for (uint32_t i = 0; i < m; i++) {
    for (uint32_t j = 0; j < n; j++) {
      volatile float acc = 0.0f;  // volatile: keep the compiler from contracting into an FMA
      for (uint32_t p = 0; p < k; p++) {
        float prod = a[size_t(i) * k + p] * b[size_t(p) * n + j];
        acc = acc + prod;
      }
      c[size_t(i) * n + j] = acc;
    }
  }
  return c;
}

class Engine : public ::testing::Test {
 protected:
  void SetUp() override { create({}); }

  void create(VnpuEngineConfig cfg) {
    engine_.reset();
    if (!cfg.devmem_size)
      cfg.devmem_size = 16 << 20;
    if (!cfg.ring_max)
      cfg.ring_max = 64;
    if (!cfg.h2d_mbps)
      cfg.h2d_mbps = kH2dMbps;
    if (!cfg.d2h_mbps)
      cfg.d2h_mbps = kD2hMbps;
    if (!cfg.compute_gflops)
      cfg.compute_gflops = kGflops;
    if (!cfg.cmd_overhead_ns)
      cfg.cmd_overhead_ns = kOverhead;
    if (!cfg.num_queues)
      cfg.num_queues = 1;
    if (!cfg.compute_cores)
      cfg.compute_cores = 1;
    if (!cfg.h2d_latency_ns)
      cfg.h2d_latency_ns = VNPU_CFG_ZERO;
    if (!cfg.d2h_latency_ns)
      cfg.d2h_latency_ns = VNPU_CFG_ZERO;
    if (!cfg.op_overhead_ns)
      cfg.op_overhead_ns = VNPU_CFG_ZERO;
    if (!cfg.devmem_gbps)
      cfg.devmem_gbps = 1'000'000;  // matmul stays compute-bound in these tests
    cfg_ = cfg;
    VnpuEngineHost h = host_.host();
    VnpuEngine* e = nullptr;
    ASSERT_EQ(vnpu_engine_create(&cfg, &h, &e), 0);
    engine_.reset(e);
    setup_mmu();
  }

  // ---- device MMU: tables live in the top 2 MiB of the fake host memory ----
  static constexpr uint64_t kCtxTable = FakeHost::kBase + 0xE00000;
  static constexpr uint64_t kPtPool = FakeHost::kBase + 0xE10000;

  uint64_t pt_alloc() {
    uint64_t at = pt_next_;
    pt_next_ += 4096;
    std::memset(host_.ptr(at), 0, 4096);
    return at;
  }
  void set_ctx(unsigned ctx, uint64_t root, bool valid = true) {
    host_.put(kCtxTable + ctx * 16, vnpu_hw_ctx{root, valid ? VNPU_CTX_F_VALID : 0u, 0});
  }
  // Map one 64 KiB page of context `ctx` (whose level-1 table is `root`).
  void map(uint64_t root, uint64_t va, uint64_t pa, bool writable = true) {
    uint64_t table = root;
    for (int level = 1; level < 3; level++) {
      uint64_t at = table + VNPU_MMU_INDEX(va, level) * 8;
      uint64_t pte = host_.get<uint64_t>(at);
      if (!(pte & VNPU_PTE_VALID)) {
        pte = pt_alloc() | VNPU_PTE_VALID;
        host_.put(at, pte);
      }
      table = pte & VNPU_PTE_ADDR_MASK;
    }
    host_.put(table + VNPU_MMU_INDEX(va, 3) * 8, pa | VNPU_PTE_VALID | (writable ? VNPU_PTE_WRITE : 0));
  }
  void unmap(uint64_t root, uint64_t va) {
    uint64_t table = root;
    for (int level = 1; level < 3; level++) {
      table = host_.get<uint64_t>(table + VNPU_MMU_INDEX(va, level) * 8) & VNPU_PTE_ADDR_MASK;
    }
    host_.put(table + VNPU_MMU_INDEX(va, 3) * 8, uint64_t(0));
  }
  // Context 0 maps all of device memory 1:1, so the v0-style tests use device addresses as before.
  void setup_mmu() {
    std::memset(host_.ptr(kCtxTable), 0, 0x10000);
    pt_next_ = kPtPool;
    root0_ = pt_alloc();
    for (uint64_t a = 0; a < cfg_.devmem_size; a += VNPU_MMU_PAGE_SIZE)
      map(root0_, a, a);
    set_ctx(0, root0_);
    wr(VNPU_REG_CTX_TABLE_LO, uint32_t(kCtxTable));
    wr(VNPU_REG_CTX_TABLE_HI, uint32_t(kCtxTable >> 32));
  }

  uint32_t rd(uint64_t off) { return uint32_t(vnpu_engine_mmio_read(engine_.get(), off, 4)); }
  void wr(uint64_t off, uint32_t v) { vnpu_engine_mmio_write(engine_.get(), off, v, 4); }
  uint32_t qrd(uint32_t reg, unsigned q = 0) { return rd(VNPU_REG_QUEUE(q, reg)); }
  void qwr(uint32_t reg, uint32_t v, unsigned q = 0) { wr(VNPU_REG_QUEUE(q, reg), v); }

  void program_queue(uint64_t sq, uint32_t sq_size, uint64_t cq, uint32_t cq_size, uint32_t vector = 0,
                     unsigned q = 0) {
    qwr(VNPU_QREG_SQ_BASE_LO, uint32_t(sq), q);
    qwr(VNPU_QREG_SQ_BASE_HI, uint32_t(sq >> 32), q);
    qwr(VNPU_QREG_SQ_SIZE, sq_size, q);
    qwr(VNPU_QREG_CQ_BASE_LO, uint32_t(cq), q);
    qwr(VNPU_QREG_CQ_BASE_HI, uint32_t(cq >> 32), q);
    qwr(VNPU_QREG_CQ_SIZE, cq_size, q);
    qwr(VNPU_QREG_MSIX_VECTOR, vector, q);
  }

  void enable(uint32_t sq_size = 16, uint32_t cq_size = 16) {
    if (!rd(VNPU_REG_CTX_TABLE_LO))
      setup_mmu();  // a device reset forgot the context table
    program_queue(kSq, sq_size, kCq, cq_size);
    qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
    ASSERT_EQ(qrd(VNPU_QREG_STATUS) & (VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_ERROR), VNPU_QSTATUS_ENABLED);
    sq_size_ = sq_size;
    cq_size_ = cq_size;
    sq_tail_ = cq_head_ = 0;
    phase_ = 1;
  }

  // Write commands at the SQ tail and ring the doorbell once.
  void submit(const std::vector<vnpu_hw_cmd>& cmds) {
    for (const auto& c : cmds) {
      host_.put(kSq + uint64_t(sq_tail_) * sizeof(c), c);
      sq_tail_ = (sq_tail_ + 1) % sq_size_;
    }
    qwr(VNPU_QREG_SQ_TAIL, sq_tail_);
  }

  // Let the worker finish and fire the "timer" until nothing is scheduled: exact modelled times.
  void run() {
    for (;;) {
      vnpu_engine_wait_idle(engine_.get());
      uint64_t d = host_.take_deadline();
      if (d == FakeHost::kNoDeadline)
        break;
      if (d > host_.now())
        host_.set_clock(d);
      vnpu_engine_tick(engine_.get());
    }
  }

  // Next completion if the device has posted one (phase matches), consuming it.
  bool pop(vnpu_hw_cpl* out) {
    auto c = host_.get<vnpu_hw_cpl>(kCq + uint64_t(cq_head_) * sizeof(vnpu_hw_cpl));
    if ((c.flags & VNPU_CPL_F_PHASE) != phase_)
      return false;
    *out = c;
    cq_head_ = (cq_head_ + 1) % cq_size_;
    if (cq_head_ == 0)
      phase_ ^= 1;
    qwr(VNPU_QREG_CQ_HEAD, cq_head_);
    return true;
  }

  vnpu_hw_cpl run_one(const std::vector<vnpu_hw_cmd>& cmds) {
    submit(cmds);
    run();
    vnpu_hw_cpl c{};
    EXPECT_TRUE(pop(&c)) << "no completion posted";
    return c;
  }

  uint16_t status_of(const vnpu_hw_cmd& cmd) { return run_one({cmd}).status; }

  // Single-element SGL for a host buffer.
  uint64_t sgl1(uint64_t slot, uint64_t addr, uint32_t len) {
    uint64_t at = kSgl + slot * 0x1000;
    host_.put(at, vnpu_hw_sge{addr, len, 0});
    return at;
  }

  void copy_in(uint64_t dev, const void* src, uint32_t len, uint64_t slot = 0) {
    std::memcpy(host_.ptr(kData + slot * 0x100000), src, len);
    uint64_t s = sgl1(slot, kData + slot * 0x100000, len);
    ASSERT_EQ(run_one({dma(VNPU_OPC_DMA_H2D, s, 1, 0, dev, len, true)}).status, VNPU_CPL_OK);
  }

  std::vector<uint8_t> copy_out(uint64_t dev, uint32_t len, uint64_t slot = 7) {
    uint64_t s = sgl1(slot, kData + slot * 0x100000, len);
    EXPECT_EQ(run_one({dma(VNPU_OPC_DMA_D2H, s, 1, 0, dev, len, true)}).status, VNPU_CPL_OK);
    uint8_t* p = host_.ptr(kData + slot * 0x100000);
    return {p, p + len};
  }

  FakeHost host_;
  VnpuEngineConfig cfg_{};
  EnginePtr engine_;
  uint32_t sq_size_ = 0, cq_size_ = 0, sq_tail_ = 0, cq_head_ = 0;
  uint16_t phase_ = 1;
  uint64_t pt_next_ = kPtPool, root0_ = 0;
};

// ---- register file ---------------------------------------------------------------------------------------

TEST_F(Engine, IdentityRegistersReadTheirFixedValues) {
  EXPECT_EQ(rd(VNPU_REG_ID), VNPU_ID_MAGIC);
  EXPECT_EQ(rd(VNPU_REG_VERSION), uint32_t(VNPU_VERSION));
  EXPECT_EQ(rd(VNPU_REG_CAPS),
            uint32_t(VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL | VNPU_CAP_MMU | VNPU_CAP_EXEC | VNPU_CAP_SYNTH |
                     VNPU_CAP_FAULT_INJECT | VNPU_CAP_TIMING_ONLY | VNPU_CAP_TELEMETRY | VNPU_CAP_SIGNAL));
  EXPECT_EQ(rd(VNPU_REG_VERSION), 0x00010001u);  // interface 1.1: SIGNAL
  EXPECT_EQ(rd(VNPU_REG_NUM_QUEUES), 1u);
  EXPECT_EQ(rd(VNPU_REG_DEVMEM_SIZE_LO), 16u << 20);
  EXPECT_EQ(rd(VNPU_REG_DEVMEM_SIZE_HI), 0u);
  EXPECT_EQ(rd(VNPU_REG_RING_MAX), 64u);
  EXPECT_EQ(rd(VNPU_REG_STATUS), VNPU_STATUS_READY);
  EXPECT_EQ(rd(VNPU_REG_H2D_MBPS), kH2dMbps);
  EXPECT_EQ(rd(VNPU_REG_D2H_MBPS), kD2hMbps);
  EXPECT_EQ(rd(VNPU_REG_COMPUTE_GFLOPS), kGflops);
  EXPECT_EQ(rd(VNPU_REG_CMD_OVERHEAD_NS), kOverhead);
  EXPECT_EQ(rd(VNPU_REG_H2D_LATENCY_NS), 0u);  // VNPU_CFG_ZERO
  EXPECT_EQ(rd(VNPU_REG_D2H_LATENCY_NS), 0u);
  EXPECT_EQ(rd(VNPU_REG_OP_OVERHEAD_NS), 0u);
  EXPECT_EQ(rd(VNPU_REG_DEVMEM_GBPS), 1'000'000u);
  EXPECT_EQ(rd(VNPU_REG_COMPUTE_CORES), 1u);
  EXPECT_EQ(rd(VNPU_REG_NUM_CONTEXTS), VNPU_ENGINE_DEFAULT_NUM_CONTEXTS);
  EXPECT_EQ(rd(VNPU_REG_CONTROL), 0u);
}

TEST_F(Engine, ReadOnlyRegistersIgnoreWrites) {
  wr(VNPU_REG_ID, 0);
  wr(VNPU_REG_H2D_MBPS, 7);
  wr(VNPU_REG_QUEUE(0, VNPU_QREG_SQ_HEAD), 3);
  EXPECT_EQ(rd(VNPU_REG_ID), VNPU_ID_MAGIC);
  EXPECT_EQ(rd(VNPU_REG_H2D_MBPS), kH2dMbps);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 0u);
  EXPECT_FALSE(host_.guest_errors().empty());
}

TEST_F(Engine, ScratchIsReadWriteAndResetReadsZero) {
  wr(VNPU_REG_SCRATCH, 0xdeadbeef);
  EXPECT_EQ(rd(VNPU_REG_SCRATCH), 0xdeadbeefu);
  EXPECT_EQ(rd(VNPU_REG_RESET), 0u);
  wr(VNPU_REG_RESET, 1);  // not the magic: no reset
  EXPECT_EQ(rd(VNPU_REG_SCRATCH), 0xdeadbeefu);
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  EXPECT_EQ(rd(VNPU_REG_SCRATCH), 0u);
}

TEST_F(Engine, OnlyAlignedWordAccessesHaveEffect) {
  EXPECT_EQ(vnpu_engine_mmio_read(engine_.get(), VNPU_REG_ID, 2), 0u);
  EXPECT_EQ(vnpu_engine_mmio_read(engine_.get(), VNPU_REG_ID + 1, 4), 0u);
  EXPECT_EQ(vnpu_engine_mmio_read(engine_.get(), VNPU_BAR_REGS_SIZE, 4), 0u);
  vnpu_engine_mmio_write(engine_.get(), VNPU_REG_SCRATCH, 5, 8);
  EXPECT_EQ(rd(VNPU_REG_SCRATCH), 0u);
}

TEST_F(Engine, ClockLoLatchesHi) {
  host_.set_clock(0x0000'0012'3456'789aull);
  EXPECT_EQ(rd(VNPU_REG_CLOCK_LO), 0x3456'789au);
  host_.set_clock(0x0000'0099'0000'0000ull);
  EXPECT_EQ(rd(VNPU_REG_CLOCK_HI), 0x12u);
}

// Regression: all readers shared one CLOCK latch, so a second CPU's CLOCK_LO between our LO and HI tore our value.
TEST_F(Engine, ClockLatchIsPerReader) {
  VnpuEngine* e = engine_.get();
  host_.set_clock(0x0000'0001'0000'0010ull);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_LO, 4, 1), 0x10u);
  host_.set_clock(0x0000'0002'0000'0020ull);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_LO, 4, 2), 0x20u);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_HI, 4, 1), 1u);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_HI, 4, 2), 2u);
  // A latch is consumed by its HI read; a HI without a pending LO reads the live high half.
  host_.set_clock(0x0000'0003'0000'0030ull);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_HI, 4, 1), 3u);
  // Reader ids far beyond the vCPUs seen so far get their own latch too.
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_LO, 4, 4000), 0x30u);
  host_.set_clock(0x0000'0004'0000'0000ull);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_LO, 4, 7), 0u);
  EXPECT_EQ(vnpu_engine_mmio_read_as(e, VNPU_REG_CLOCK_HI, 4, 4000), 3u);
}

// Regression: all telemetry counters shared one HI latch, so reading another counter's LO between a counter's
// LO and HI returned the other counter's high half.
TEST_F(Engine, TelemetryLatchIsPerCounter) {
  enable();
  vnpu_hw_cmd s{};
  s.opcode = VNPU_OPC_SYNTH;
  s.flags = VNPU_CMD_F_LAST;
  s.synth.ns = VNPU_SYNTH_MAX_NS;  // 10 s: the busy counter's high half becomes 2
  ASSERT_EQ(run_one({s}).status, VNPU_CPL_OK);
  uint64_t busy = VNPU_SYNTH_MAX_NS + kOverhead;
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_COMPUTE_BUSY_NS)), uint32_t(busy));
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_JOBS_COMPLETED)), 1u);
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_COMPUTE_BUSY_NS) + 4), uint32_t(busy >> 32));
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_JOBS_COMPLETED) + 4), 0u);
}

// Regression: the device used 1b36:10f5, outside every range QEMU documents (docs/specs/pci-ids.rst), i.e. an ID
// that may be someone else's; QEMU leaves 1af4:10f0..10ff to experimental devices.
TEST(PciIdentity, IsInQemusRangeForExperimentalDevices) {
  EXPECT_EQ(VNPU_PCI_VENDOR_ID, 0x1af4);
  EXPECT_GE(VNPU_PCI_DEVICE_ID, 0x10f0);
  EXPECT_LE(VNPU_PCI_DEVICE_ID, 0x10ff);
}

TEST(EngineConfig, FinalizeFillsDefaultsAndRejectsBadValues) {
  VnpuEngineConfig cfg{};
  ASSERT_EQ(vnpu_engine_config_finalize(&cfg), 0);
  EXPECT_EQ(cfg.devmem_size, VNPU_ENGINE_DEFAULT_DEVMEM_SIZE);
  EXPECT_EQ(cfg.num_queues, 8u);
  EXPECT_EQ(cfg.ring_max, VNPU_ENGINE_DEFAULT_RING_MAX);
  EXPECT_EQ(cfg.compute_gflops, VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS);
  EXPECT_EQ(cfg.compute_cores, VNPU_ENGINE_DEFAULT_COMPUTE_CORES);
  EXPECT_EQ(cfg.h2d_latency_ns, VNPU_ENGINE_DEFAULT_H2D_LATENCY_NS);
  EXPECT_EQ(cfg.num_contexts, VNPU_ENGINE_DEFAULT_NUM_CONTEXTS);
  // Idempotent, and VNPU_CFG_ZERO survives a second pass.
  cfg.cmd_overhead_ns = VNPU_CFG_ZERO;
  ASSERT_EQ(vnpu_engine_config_finalize(&cfg), 0);
  EXPECT_EQ(cfg.cmd_overhead_ns, VNPU_CFG_ZERO);
  VnpuEngineConfig bad{};
  bad.compute_cores = VNPU_ENGINE_MAX_CORES + 1;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.num_contexts = VNPU_ENGINE_MAX_CONTEXTS + 1;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.fi_kind = 9;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.devmem_size = 4096;  // not a whole 64 KiB page
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.ring_max = 100;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.devmem_size = 4097;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
  bad = {};
  bad.num_queues = 17;
  EXPECT_EQ(vnpu_engine_config_finalize(&bad), -EINVAL);
}

// ---- queue setup -----------------------------------------------------------------------------------------

struct BadQueueConfig {
  const char* what;
  uint64_t sq;
  uint32_t sq_size;
  uint64_t cq;
  uint32_t cq_size;
  uint32_t vector;
};

// Named printing: gtest would otherwise dump the struct's bytes, padding included.
void PrintTo(const BadQueueConfig& c, std::ostream* os) {
  *os << c.what;
}

class QueueEnable : public Engine, public ::testing::WithParamInterface<BadQueueConfig> {};

TEST_P(QueueEnable, RejectsInvalidRingRegisters) {
  const auto& p = GetParam();
  program_queue(p.sq, p.sq_size, p.cq, p.cq_size, p.vector);
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
  EXPECT_EQ(qrd(VNPU_QREG_STATUS) & (VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_ERROR), VNPU_QSTATUS_ERROR) << p.what;
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_CONFIG)) << p.what;
  // Disable clears the error; a valid configuration then enables.
  qwr(VNPU_QREG_CTRL, 0);
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_NONE));
  enable();
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_NONE));
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_IDLE);
}

INSTANTIATE_TEST_SUITE_P(Engine, QueueEnable,
                         ::testing::Values(BadQueueConfig{"sq size not pow2", kSq, 12, kCq, 16, 0},
                                           BadQueueConfig{"sq size 1", kSq, 1, kCq, 16, 0},
                                           BadQueueConfig{"sq size 0", kSq, 0, kCq, 16, 0},
                                           BadQueueConfig{"sq size > ring max", kSq, 128, kCq, 16, 0},
                                           BadQueueConfig{"cq size not pow2", kSq, 16, kCq, 3, 0},
                                           BadQueueConfig{"cq size > ring max", kSq, 16, kCq, 1024, 0},
                                           BadQueueConfig{"sq misaligned", kSq + 32, 16, kCq, 16, 0},
                                           BadQueueConfig{"cq misaligned", kSq, 16, kCq + 16, 16, 0},
                                           BadQueueConfig{"sq wraps", ~0ull - 63, 16, kCq, 16, 0},
                                           BadQueueConfig{"cq wraps", kSq, 16, ~0ull - 31, 16, 0},
                                           BadQueueConfig{"vector out of range", kSq, 16, kCq, 16, 1}));

TEST_F(Engine, EnableZeroesIndicesAndRingRegistersReadBack) {
  enable(8, 4);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_BASE_LO), uint32_t(kSq));
  EXPECT_EQ(qrd(VNPU_QREG_SQ_SIZE), 8u);
  EXPECT_EQ(qrd(VNPU_QREG_CQ_SIZE), 4u);
  EXPECT_EQ(qrd(VNPU_QREG_CTRL), VNPU_QCTRL_ENABLE);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 0u);
  EXPECT_EQ(qrd(VNPU_QREG_CQ_TAIL), 0u);
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 0u);
}

TEST_F(Engine, SqDoorbellOutOfRangeStopsTheQueue) {
  enable(8, 8);
  qwr(VNPU_QREG_SQ_TAIL, 8);
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_ERROR);
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_DOORBELL));
  // Recover by disable + enable.
  qwr(VNPU_QREG_CTRL, 0);
  enable(8, 8);
  EXPECT_EQ(run_one({nop(1)}).status, VNPU_CPL_OK);
}

TEST_F(Engine, CqDoorbellBeyondPostedCompletionsStopsTheQueue) {
  enable(8, 8);
  qwr(VNPU_QREG_CQ_HEAD, 3);  // nothing posted yet
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_DOORBELL));
}

TEST_F(Engine, DoorbellOnDisabledQueueIsIgnored) {
  qwr(VNPU_QREG_SQ_TAIL, 1);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_TAIL), 0u);
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), 0u);
}

// ---- data path -------------------------------------------------------------------------------------------

TEST_F(Engine, H2dMatmulD2hIsBitExactAgainstReference) {
  enable();
  constexpr uint32_t m = 37, n = 29, k = 53;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> a(m * k), b(k * n);
  for (auto& v : a)
    v = dist(rng);
  for (auto& v : b)
    v = dist(rng);
  const uint64_t dev_a = 0x1000, dev_b = 0x10000, dev_c = 0x20000;

  // A and B in one host buffer, two SGLs over it; one job of four commands.
  std::memcpy(host_.ptr(kData), a.data(), a.size() * 4);
  std::memcpy(host_.ptr(kData + 0x10000), b.data(), b.size() * 4);
  uint64_t sa = sgl1(0, kData, m * k * 4), sb = sgl1(1, kData + 0x10000, k * n * 4);
  uint64_t sc = sgl1(2, kData + 0x40000, m * n * 4);
  auto c = run_one({dma(VNPU_OPC_DMA_H2D, sa, 1, 0, dev_a, m * k * 4, false, 11),
                    dma(VNPU_OPC_DMA_H2D, sb, 1, 0, dev_b, k * n * 4, false, 12),
                    matmul(dev_a, dev_b, dev_c, m, n, k, false, 13),
                    dma(VNPU_OPC_DMA_D2H, sc, 1, 0, dev_c, m * n * 4, true, 14)});
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.tag, 14u);
  EXPECT_EQ(c.sq_index, 3u);
  auto ref = reference_matmul(a, b, m, n, k);
  EXPECT_EQ(std::memcmp(host_.ptr(kData + 0x40000), ref.data(), ref.size() * 4), 0);

  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.jobs_completed, 1u);
  EXPECT_EQ(st.jobs_failed, 0u);
  EXPECT_EQ(st.cmds_executed, 4u);
  EXPECT_EQ(st.h2d_bytes, uint64_t(m * k * 4 + k * n * 4));
  EXPECT_EQ(st.d2h_bytes, uint64_t(m * n * 4));
  EXPECT_EQ(st.flops, 2ull * m * n * k);
  EXPECT_EQ(host_.irqs(), std::vector<unsigned>{0});
}

TEST_F(Engine, MatmulAcceptsLargeOperandsAcrossColumnBlocks) {
  enable();
  constexpr uint32_t m = 3, n = 1100, k = 5;  // n spans several of the engine's column blocks
  std::vector<float> a(m * k), b(k * n);
  for (size_t i = 0; i < a.size(); i++)
    a[i] = float(i % 7) - 3.0f;
  for (size_t i = 0; i < b.size(); i++)
    b[i] = float(i % 11) * 0.25f;
  copy_in(0, a.data(), uint32_t(a.size() * 4), 0);
  copy_in(0x100000, b.data(), uint32_t(b.size() * 4), 1);
  ASSERT_EQ(status_of(matmul(0, 0x100000, 0x200000, m, n, k, true)), VNPU_CPL_OK);
  auto out = copy_out(0x200000, m * n * 4);
  auto ref = reference_matmul(a, b, m, n, k);
  EXPECT_EQ(std::memcmp(out.data(), ref.data(), out.size()), 0);
}

TEST_F(Engine, SglWithUnevenElementsAndOffsetMovesTheRightBytes) {
  enable();
  std::vector<uint8_t> src(8192);
  for (size_t i = 0; i < src.size(); i++)
    src[i] = uint8_t(i * 7 + 3);
  // Four uneven host fragments, deliberately out of address order: 7, 100, 13, 3000 bytes.
  const uint32_t lens[] = {7, 100, 13, 3000};
  const uint64_t addrs[] = {kData + 0x5000, kData + 0x100, kData + 0x9003, kData + 0x2001};
  std::vector<uint8_t> logical;
  for (int i = 0; i < 4; i++) {
    std::memcpy(host_.ptr(addrs[i]), src.data() + logical.size(), lens[i]);
    host_.put(kSgl + i * 16, vnpu_hw_sge{addrs[i], lens[i], 0});
    logical.insert(logical.end(), src.begin() + logical.size(), src.begin() + logical.size() + lens[i]);
  }
  const uint64_t off = 50, len = 2000;  // starts inside the second fragment, ends inside the fourth
  ASSERT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kSgl, 4, off, 0x3000, len, true)), VNPU_CPL_OK);
  auto dev = copy_out(0x3000, len);
  EXPECT_TRUE(std::equal(dev.begin(), dev.end(), logical.begin() + off));

  // Back out through a different uneven list with its own offset.
  const uint32_t olens[] = {1, 999, 5, 1500};
  const uint64_t oaddrs[] = {kData + 0x80000, kData + 0x81000, kData + 0x82000, kData + 0x83000};
  for (int i = 0; i < 4; i++)
    host_.put(kSgl + 0x1000 + i * 16, vnpu_hw_sge{oaddrs[i], olens[i], 0});
  std::memset(host_.ptr(kData + 0x80000), 0xee, 0x4000);
  ASSERT_EQ(status_of(dma(VNPU_OPC_DMA_D2H, kSgl + 0x1000, 4, 3, 0x3000, len, true)), VNPU_CPL_OK);
  std::vector<uint8_t> back;
  for (int i = 0; i < 4; i++)
    back.insert(back.end(), host_.ptr(oaddrs[i]), host_.ptr(oaddrs[i]) + olens[i]);
  EXPECT_TRUE(std::equal(dev.begin(), dev.end(), back.begin() + 3));
  EXPECT_EQ(back[0], 0xee);  // the skipped 3 bytes were not written
  EXPECT_EQ(back[1], 0xee);
  EXPECT_EQ(back[2], 0xee);
  EXPECT_EQ(back[3 + len], 0xee);  // nor anything after the length
}

TEST_F(Engine, SglLongerThanOneReadChunkIsWalkedCompletely) {
  enable();
  // 600 one-byte... well, 8-byte elements: more than the engine reads in one chunk.
  std::vector<uint8_t> expect;
  for (uint32_t i = 0; i < 600; i++) {
    uint64_t a = kData + i * 64;
    for (int j = 0; j < 8; j++)
      host_.ptr(a)[j] = uint8_t(i + j);
    expect.insert(expect.end(), host_.ptr(a), host_.ptr(a) + 8);
    host_.put(kSgl + i * 16, vnpu_hw_sge{a, 8, 0});
  }
  ASSERT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kSgl, 600, 4, 0, 600 * 8 - 4, true)), VNPU_CPL_OK);
  auto dev = copy_out(0, 600 * 8 - 4);
  EXPECT_TRUE(std::equal(dev.begin(), dev.end(), expect.begin() + 4));
}

// ---- status codes ----------------------------------------------------------------------------------------

TEST_F(Engine, UnknownOpcodeIsBadOpcode) {
  enable();
  auto c = nop(5);
  c.opcode = 0x7f;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_OPCODE);
}

TEST_F(Engine, ReservedBitsAndFieldsAreBadField) {
  enable();
  auto c = nop(1);
  c.flags |= 0x4;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  // F_BARRIER is only meaningful on a job's first command.
  EXPECT_EQ(run_one({nop(1, false),
                     [] {
                       auto n = nop(2);
                       n.flags |= VNPU_CMD_F_BARRIER;
                       return n;
                     }()})
                .status,
            VNPU_CPL_BAD_FIELD);
  c = nop(1);
  c.rsvd1 = 1;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  c = nop(1);
  c.raw[40] = 1;  // NOP payload must be zero
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  uint64_t s = sgl1(0, kData, 64);
  c = dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, true);
  c.dma.rsvd0 = 1;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  c = dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0, 64, true);
  c.dma.rsvd1[0] = 1;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 0, true)), VNPU_CPL_BAD_FIELD);  // zero length
  c = matmul(0, 0x1000, 0x2000, 4, 4, 4, true);
  c.matmul.rsvd0 = 1;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
}

TEST_F(Engine, MatmulDimsDtypeAlignmentAndAliasingAreBadField) {
  enable();
  EXPECT_EQ(status_of(matmul(0, 0x1000, 0x2000, 0, 4, 4, true)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(matmul(0, 0x1000, 0x2000, 4, 0, 4, true)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(matmul(0, 0x1000, 0x2000, 4, 4, 0, true)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(matmul(0, 0x1000, 0x2000, VNPU_MATMUL_DIM_MAX + 1, 1, 1, true)), VNPU_CPL_BAD_FIELD);
  auto c = matmul(0, 0x1000, 0x2000, 4, 4, 4, true);
  c.matmul.dtype = 1;
  EXPECT_EQ(status_of(c), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(matmul(2, 0x1000, 0x2000, 4, 4, 4, true)), VNPU_CPL_BAD_FIELD);           // misaligned A
  EXPECT_EQ(status_of(matmul(0, 0x1000, 0x1000 + 60, 4, 4, 4, true)), VNPU_CPL_BAD_FIELD);      // C overlaps B
  EXPECT_EQ(status_of(matmul(0x2000, 0x1000, 0x2000 - 4, 4, 4, 4, true)), VNPU_CPL_BAD_FIELD);  // C overlaps A
  EXPECT_EQ(status_of(matmul(0, 0, 0x1000, 4, 4, 4, true)), VNPU_CPL_OK);                       // A and B may alias
}

TEST_F(Engine, DeviceAddressesOutsideTheMappingAreMmuFaults) {
  enable();
  const uint64_t size = cfg_.devmem_size;
  uint64_t s = sgl1(0, kData, 4096);
  auto fault = [&](const vnpu_hw_cmd& c) {
    auto cpl = run_one({c});
    EXPECT_EQ(cpl.status, VNPU_CPL_MMU_FAULT);
    return cpl.fault_addr;
  };
  EXPECT_EQ(fault(dma(VNPU_OPC_DMA_H2D, s, 1, 0, size - 64, 128, true)), size);  // first unmapped byte
  EXPECT_EQ(fault(dma(VNPU_OPC_DMA_D2H, s, 1, 0, size, 1, true)), size);
  // dev_addr + length wraps 2^64: must not pass as "small".
  EXPECT_EQ(fault(dma(VNPU_OPC_DMA_H2D, s, 1, 0, ~0ull - 10, 100, true)), ~0ull - 10);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, ~0ull, true)), VNPU_CPL_SGL_INVALID);  // list too short
  EXPECT_EQ(fault(matmul(0, 0x1000, size - 16, 4, 4, 4, true)), size);
  EXPECT_EQ(fault(matmul(~0ull - 3, 0x1000, 0x2000, 4, 4, 4, true)), ~0ull - 3);  // beyond the 43-bit space
  EXPECT_EQ(fault(matmul(0x2000000, 0x1000, 0x3000000, 4, 4, 4, true)), 0x2000000u);
  EXPECT_EQ(fault(matmul(0, 0x1000, 0x100000, 16384, 16384, 1, true)), size);
  EXPECT_EQ(rd(VNPU_REG_MMU_FAULTS), 7u);
  EXPECT_EQ(rd(VNPU_REG_MMU_LAST_FAULT_LO), uint32_t(size));
  EXPECT_EQ(rd(VNPU_REG_MMU_LAST_FAULT_CTX), 0u);
}

TEST_F(Engine, MalformedScatterGatherListsAreSglInvalid) {
  enable();
  uint64_t s = sgl1(0, kData, 64);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 0, 0, 0, 64, true)), VNPU_CPL_SGL_INVALID);  // no elements
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, VNPU_SGL_MAX + 1, 0, 0, 64, true)), VNPU_CPL_SGL_INVALID);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s + 8, 1, 0, 0, 64, true)), VNPU_CPL_SGL_INVALID);  // misaligned
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 1, 0, 64, true)), VNPU_CPL_SGL_INVALID);      // offset+len > total
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, ~0ull, 0, 64, true)), VNPU_CPL_SGL_INVALID);  // wraps
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, ~0ull - 15, 2, 0, 0, 64, true)), VNPU_CPL_SGL_INVALID);  // list wraps
  host_.put(kSgl + 0x1000, vnpu_hw_sge{kData, 32, 0});
  host_.put(kSgl + 0x1010, vnpu_hw_sge{kData, 0, 0});  // zero-length element
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kSgl + 0x1000, 2, 0, 0, 32, true)), VNPU_CPL_SGL_INVALID);
  host_.put(kSgl + 0x1010, vnpu_hw_sge{kData, 32, 1});  // reserved set
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kSgl + 0x1000, 2, 0, 0, 32, true)), VNPU_CPL_SGL_INVALID);
  host_.put(kSgl + 0x1010, vnpu_hw_sge{~0ull - 7, 32, 0});  // element wraps the address space
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kSgl + 0x1000, 2, 0, 0, 32, true)), VNPU_CPL_SGL_INVALID);
}

TEST_F(Engine, HostBusErrorsAreDmaFault) {
  enable();
  host_.add_fault(kData + 0x80000, 0x1000);
  // The data buffer faults (H2D reads it, D2H writes it).
  uint64_t s = sgl1(0, kData + 0x80000, 64);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, true)), VNPU_CPL_DMA_FAULT);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0, 64, true)), VNPU_CPL_DMA_FAULT);
  // The list itself faults.
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, kData + 0x80000, 1, 0, 0, 64, true)), VNPU_CPL_DMA_FAULT);
  // Outside guest memory entirely.
  uint64_t s2 = sgl1(1, 0x10, 64);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s2, 1, 0, 0, 64, true)), VNPU_CPL_DMA_FAULT);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.jobs_failed, 4u);
}

// ---- jobs ------------------------------------------------------------------------------------------------

TEST_F(Engine, FailureSkipsTheRestOfTheJobAndTheNextJobRuns) {
  enable();
  std::vector<uint8_t> src(256, 0xab);
  std::memcpy(host_.ptr(kData), src.data(), src.size());
  uint64_t s = sgl1(0, kData, 256);
  uint64_t out = sgl1(1, kData + 0x1000, 256);
  std::memset(host_.ptr(kData + 0x1000), 0x11, 256);
  submit({dma(VNPU_OPC_DMA_H2D, s, 1, 0, cfg_.devmem_size, 256, false, 1),  // fails: MMU_FAULT
          dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x5000, 256, false, 2),            // skipped
          dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0x5000, 256, true, 3),           // skipped
          nop(4)});                                                         // next job
  run();
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(c.fault_addr, cfg_.devmem_size);
  EXPECT_EQ(c.sq_index, 0u);                      // the failing command
  EXPECT_EQ(c.tag, 3u);                           // the job's last command
  EXPECT_EQ(host_.ptr(kData + 0x1000)[0], 0x11);  // the D2H never ran
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.tag, 4u);
  EXPECT_EQ(c.sq_index, 3u);
  EXPECT_FALSE(pop(&c));
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 2u);
  // The skipped H2D really did not write device memory.
  auto dev = copy_out(0x5000, 256);
  EXPECT_EQ(dev[0], 0);
}

TEST_F(Engine, JobWithoutLastWithinTheLimitIsJobTooLong) {
  enable(64, 64);
  // VNPU_JOB_MAX_CMDS NOPs without F_LAST, fed through a 64-entry ring in chunks.
  uint32_t sent = 0;
  while (sent < VNPU_JOB_MAX_CMDS) {
    std::vector<vnpu_hw_cmd> chunk(32, nop(sent, false));
    for (uint32_t i = 0; i < 32; i++)
      chunk[i].tag = sent + i;
    submit(chunk);
    sent += 32;
    vnpu_engine_wait_idle(engine_.get());
  }
  submit({nop(1000)});
  run();
  // The short job behind it ends first in modelled time, so its completion comes first.
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.tag, 1000u);
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_JOB_TOO_LONG);
  EXPECT_EQ(c.tag, uint64_t(VNPU_JOB_MAX_CMDS - 1));
  EXPECT_EQ(c.sq_index, (VNPU_JOB_MAX_CMDS - 1) % 64);
}

TEST_F(Engine, JobOfExactlyTheLimitSucceeds) {
  enable(64, 64);
  uint32_t sent = 0;
  while (sent < VNPU_JOB_MAX_CMDS) {
    std::vector<vnpu_hw_cmd> chunk(32, nop(0, false));
    if (sent + 32 == VNPU_JOB_MAX_CMDS)
      chunk.back().flags = VNPU_CMD_F_LAST;
    submit(chunk);
    sent += 32;
    vnpu_engine_wait_idle(engine_.get());
  }
  run();
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_OK);
}

TEST_F(Engine, DisableAbortsFetchedJobs) {
  enable();
  // Job 1 finished functionally but its modelled time has not come; job 2 is open (no F_LAST yet).
  submit({nop(1), nop(2, false)});
  vnpu_engine_wait_idle(engine_.get());
  EXPECT_FALSE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_IDLE);
  qwr(VNPU_QREG_CTRL, 0);
  EXPECT_FALSE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_ENABLED);
  run();
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  EXPECT_EQ(c.tag, 1u);
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  EXPECT_EQ(c.tag, 2u);
  EXPECT_FALSE(pop(&c));
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_IDLE);
  // The queue works again after enable.
  enable();
  EXPECT_EQ(run_one({nop(3)}).status, VNPU_CPL_OK);
}

TEST_F(Engine, CommandRingFetchFaultStopsTheQueue) {
  enable();
  host_.add_fault(kSq, 64);
  submit({nop(1)});
  run();
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_SQ_FETCH));
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_ERROR);
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_IDLE);
}

TEST_F(Engine, OpenJobIsAbortedWhenTheRingFaultsMidJob) {
  enable();
  host_.add_fault(kSq + 64, 64);
  submit({nop(1, false), nop(2)});
  run();
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_SQ_FETCH));
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  EXPECT_EQ(c.tag, 1u);
}

TEST_F(Engine, CompletionWriteFaultStopsTheQueue) {
  enable();
  host_.add_fault(kCq, 32);
  submit({nop(1)});
  run();
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), uint32_t(VNPU_QERR_CQ_WRITE));
  EXPECT_TRUE(host_.irqs().empty());
}

// ---- completion ring -------------------------------------------------------------------------------------

TEST_F(Engine, CompletionPhaseTogglesOnEveryWrap) {
  enable(4, 4);
  std::vector<int> phases;
  for (int i = 0; i < 10; i++) {
    submit({nop(uint64_t(i))});
    run();
    uint32_t slot = cq_head_;
    auto raw = host_.get<vnpu_hw_cpl>(kCq + slot * sizeof(vnpu_hw_cpl));
    phases.push_back(raw.flags & VNPU_CPL_F_PHASE);
    vnpu_hw_cpl c{};
    ASSERT_TRUE(pop(&c)) << i;
    EXPECT_EQ(c.tag, uint64_t(i));
    EXPECT_EQ(c.sq_index, uint32_t(i % 4));
  }
  EXPECT_EQ(phases, (std::vector<int>{1, 1, 1, 1, 0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 10u);
  EXPECT_EQ(host_.irqs().size(), 10u);
}

// Regression: the record went out in one 64-byte copy, so an SMP guest polling the phase could see the new
// phase before the rest of the record (tag, status) had landed.
TEST_F(Engine, CompletionPhaseIsWrittenLastAfterThePayload) {
  enable(4, 2);
  host_.log_writes(true);
  for (uint64_t tag = 1; tag <= 3; tag++) {  // the third record wraps: its new phase is 0
    submit({nop(tag)});
    run();
    vnpu_hw_cpl c{};
    ASSERT_TRUE(pop(&c));
    EXPECT_EQ(c.tag, tag);
  }
  auto w = host_.writes();
  ASSERT_EQ(w.size(), 6u);
  for (size_t i = 0; i < w.size(); i += 2) {
    const uint64_t slot = kCq + (i / 2 % 2) * sizeof(vnpu_hw_cpl);
    const uint16_t phase = i / 2 < 2 ? 1 : 0;
    vnpu_hw_cpl body{};
    ASSERT_EQ(w[i].addr, slot);
    ASSERT_EQ(w[i].data.size(), sizeof(body));
    std::memcpy(&body, w[i].data.data(), sizeof(body));
    EXPECT_EQ(body.tag, i / 2 + 1);
    EXPECT_NE(body.flags & VNPU_CPL_F_PHASE, phase) << "payload write already carries the new phase";
    // Then the same record with the new phase: no other byte changes.
    ASSERT_EQ(w[i + 1].addr, slot);
    ASSERT_EQ(w[i + 1].data.size(), sizeof(body));
    vnpu_hw_cpl rec{};
    std::memcpy(&rec, w[i + 1].data.data(), sizeof(rec));
    EXPECT_EQ(rec.flags, phase);
    rec.flags = body.flags;
    EXPECT_EQ(std::memcmp(&rec, &body, sizeof(rec)), 0);
  }
}

// Regression: SQ_HEAD passed a slot before its command was read, so a driver could refill the slot while the
// device was still copying it.
TEST_F(Engine, SqHeadPassesASlotOnlyAfterItsCommandWasCopied) {
  enable();
  std::vector<uint32_t> head_during_fetch;
  host_.on_read([&](uint64_t addr, size_t) {
    if (addr >= kSq && addr < kSq + 16 * sizeof(vnpu_hw_cmd))
      head_during_fetch.push_back(qrd(VNPU_QREG_SQ_HEAD));
  });
  submit({nop(1, false), nop(2)});
  run();
  host_.on_read(nullptr);
  EXPECT_EQ(head_during_fetch, (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 2u);
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.tag, 2u);
}

TEST_F(Engine, FullCompletionRingHoldsBackCompletionsUntilCqHeadFreesSpace) {
  enable(16, 4);  // at most 3 completions in the ring
  std::vector<vnpu_hw_cmd> jobs;
  for (int i = 0; i < 10; i++)
    jobs.push_back(nop(uint64_t(i)));
  submit(jobs);
  run();
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 3u);
  EXPECT_EQ(qrd(VNPU_QREG_CQ_TAIL), 3u);
  EXPECT_LT(qrd(VNPU_QREG_SQ_HEAD), 10u);  // the device stopped fetching: its backlog is bounded
  std::vector<uint64_t> tags;
  vnpu_hw_cpl c{};
  for (int round = 0; round < 10 && tags.size() < 10; round++) {
    while (pop(&c))
      tags.push_back(c.tag);  // each pop writes CQ_HEAD
    run();
  }
  EXPECT_EQ(tags, (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 10u);
}

// ---- timing model ----------------------------------------------------------------------------------------

constexpr uint64_t kH2dBytes = 4096, kD2hBytes = 1024;
constexpr uint32_t kDim = 16;
constexpr uint64_t kH2dNs = kOverhead + kH2dBytes * 1000 / kH2dMbps;         // 4196
constexpr uint64_t kMmNs = kOverhead + 2ull * kDim * kDim * kDim / kGflops;  // 8292
constexpr uint64_t kD2hNs = kOverhead + kD2hBytes * 1000 / kD2hMbps;         // 612

class Timing : public Engine {
 protected:
  std::vector<vnpu_hw_cmd> job(uint64_t tag, uint64_t dev) {
    uint64_t in = sgl1(0, kData, kH2dBytes), out = sgl1(1, kData + 0x10000, kD2hBytes);
    return {dma(VNPU_OPC_DMA_H2D, in, 1, 0, dev, kH2dBytes, false, tag),
            matmul(dev, dev + 0x400, dev + 0x1000, kDim, kDim, kDim, false, tag),
            dma(VNPU_OPC_DMA_D2H, out, 1, 0, dev + 0x1000, kD2hBytes, true, tag)};
  }
};

TEST_F(Timing, SingleJobTakesExactlyTheModelledTime) {
  enable();
  const uint64_t t0 = host_.now();
  auto c = run_one(job(1, 0));
  ASSERT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.t_start, t0);
  EXPECT_EQ(c.t_end - c.t_start, kH2dNs + kMmNs + kD2hNs);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.h2d_busy_ns, kH2dNs);
  EXPECT_EQ(st.compute_busy_ns, kMmNs);
  EXPECT_EQ(st.d2h_busy_ns, kD2hNs);
}

TEST_F(Timing, PipelinedJobsOverlapAcrossEngines) {
  enable();
  const uint64_t t0 = host_.now();
  auto j1 = job(1, 0), j2 = job(2, 0x10000);
  j1.insert(j1.end(), j2.begin(), j2.end());
  submit(j1);
  run();
  vnpu_hw_cpl c1{}, c2{};
  ASSERT_TRUE(pop(&c1));
  ASSERT_TRUE(pop(&c2));
  // Job 2's H2D runs while job 1 computes; its matmul waits for the compute unit.
  EXPECT_EQ(c1.t_start, t0);
  EXPECT_EQ(c1.t_end, t0 + kH2dNs + kMmNs + kD2hNs);
  EXPECT_EQ(c2.t_start, t0 + kH2dNs);
  EXPECT_LT(c2.t_start, c1.t_end);
  EXPECT_EQ(c2.t_end, t0 + kH2dNs + 2 * kMmNs + kD2hNs);
  EXPECT_LT(c2.t_end - c1.t_start, 2 * (kH2dNs + kMmNs + kD2hNs));
}

TEST_F(Timing, AJobStartsWhenItsLastCommandIsVisible) {
  enable();
  const uint64_t t0 = host_.now();
  submit({nop(1, false)});
  vnpu_engine_wait_idle(engine_.get());
  host_.set_clock(t0 + 50'000);
  submit({nop(2)});
  run();
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.t_start, t0 + 50'000);
  EXPECT_EQ(c.t_end, t0 + 50'000 + 2 * kOverhead);
}

TEST_F(Timing, CompletionIsNotVisibleBeforeItsModelledTime) {
  enable();
  const uint64_t t0 = host_.now();
  submit(job(1, 0));
  vnpu_engine_wait_idle(engine_.get());
  EXPECT_EQ(host_.deadline(), t0 + kH2dNs + kMmNs + kD2hNs);
  host_.set_clock(t0 + kH2dNs);  // an early tick posts nothing
  vnpu_engine_tick(engine_.get());
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 0u);
  EXPECT_TRUE(host_.irqs().empty());
  run();
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 1u);
}

TEST_F(Timing, LockstepArmsAtTheDoorbellAndTickWaitsForTheWorker) {
  vnpu_engine_set_lockstep(engine_.get(), 1);
  enable();
  const uint64_t t0 = host_.now();
  submit(job(1, 0));
  // Armed before the worker has even looked at the job: the earliest any record could be due (a SIGNAL as the
  // first command posts when its job becomes visible).
  EXPECT_EQ(host_.take_deadline(), t0);
  vnpu_engine_tick(engine_.get());  // waits for the worker, then knows the job's modelled end
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 0u);
  uint64_t d = host_.take_deadline();
  for (int i = 0; i < 1000 && d == t0; i++) {  // workers still busy after one step: again at the same time
    vnpu_engine_tick(engine_.get());
    d = host_.take_deadline();
  }
  EXPECT_EQ(d, t0 + kH2dNs + kMmNs + kD2hNs);
  host_.set_clock(d);
  vnpu_engine_tick(engine_.get());
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.t_end - c.t_start, kH2dNs + kMmNs + kD2hNs);
}

// Regression: under icount a lockstep tick waited up to 5 s for busy workers while holding QEMU's BQL, then let
// virtual time move on 1 us (the record then appeared later than modelled, depending on host speed). Now one
// tick waits one bounded step, posts nothing and comes back at the same virtual time.
TEST_F(Timing, LockstepTickWaitsOneStepThenRetriesAtTheSameVirtualTime) {
  vnpu_engine_set_lockstep(engine_.get(), 1);
  enable();
  std::atomic<bool> stuck{false}, release{false};
  host_.on_read([&](uint64_t addr, size_t) {
    if (addr >= kData && addr < kData + 0x10000 && !stuck.exchange(true)) {
      while (!release.load())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const uint64_t t0 = host_.now();
  submit({dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, kH2dBytes), 1, 0, 0, kH2dBytes, true, 1)});
  EXPECT_EQ(host_.take_deadline(), t0);
  vnpu_engine_tick(engine_.get());  // opens fetching: the job is fetched and its H2D gets stuck
  while (!stuck.load())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  host_.take_deadline();
  host_.set_clock(t0 + kH2dNs);  // virtual time reached the modelled end while the host is still copying
  const auto w0 = std::chrono::steady_clock::now();
  vnpu_engine_tick(engine_.get());
  const auto waited = std::chrono::steady_clock::now() - w0;
  EXPECT_LT(waited, std::chrono::seconds(3));            // one step (10 ms), not 5 s
  EXPECT_EQ(host_.take_deadline(), t0 + kH2dNs);          // the same virtual time again, not later
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 0u);
  vnpu_engine_tick(engine_.get());                        // still stuck: the same again
  EXPECT_EQ(host_.take_deadline(), t0 + kH2dNs);
  release = true;
  uint64_t d = t0 + kH2dNs;
  for (int i = 0; i < 1000 && d == t0 + kH2dNs && qrd(VNPU_QREG_JOBS_DONE) == 0; i++) {
    vnpu_engine_tick(engine_.get());
    d = host_.take_deadline();
  }
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.t_end - c.t_start, kH2dNs);  // exactly the model, however long the host took
  host_.on_read(nullptr);
}

// ---- reset and teardown ----------------------------------------------------------------------------------

TEST_F(Engine, ResetDropsWorkAndWritesNothingMore) {
  enable();
  wr(VNPU_REG_SCRATCH, 9);
  submit({nop(1), nop(2)});
  vnpu_engine_wait_idle(engine_.get());
  const uint64_t writes = host_.dma_writes();
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  run();
  vnpu_engine_tick(engine_.get());
  EXPECT_EQ(host_.dma_writes(), writes);
  EXPECT_TRUE(host_.irqs().empty());
  EXPECT_EQ(qrd(VNPU_QREG_STATUS), VNPU_QSTATUS_IDLE);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_SIZE), 0u);
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 0u);
  EXPECT_EQ(rd(VNPU_REG_SCRATCH), 0u);
  enable();
  EXPECT_EQ(run_one({nop(3)}).status, VNPU_CPL_OK);
}

TEST_F(Engine, TransportResetBehavesLikeTheResetRegister) {
  enable();
  submit({nop(1)});
  vnpu_engine_wait_idle(engine_.get());
  vnpu_engine_reset(engine_.get());
  run();
  EXPECT_EQ(host_.dma_writes(), 0u);
  EXPECT_FALSE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_ENABLED);
}

TEST_F(Engine, DestroyWithWorkInFlightIsClean) {
  enable();
  // A long matmul (cancelled row by row) plus queued jobs behind it; destroy without waiting.
  submit({matmul(0, 0x400000, 0x800000, 1024, 1024, 1024, true, 1), nop(2), nop(3)});
  engine_.reset();
  SUCCEED();
}

// Regression: device reset waited at most 5 s for the workers and then reset anyway, so a DMA still in progress
// (here a D2H chunk whose write takes 6 s) landed in guest memory after the reset had completed.
TEST_F(Engine, ResetReturnsOnlyAfterTheLastHostAccessOfDroppedWork) {
  enable();
  std::atomic<bool> in_dma{false};
  host_.on_write([&](uint64_t addr, size_t) {
    if (addr >= kData && !in_dma.exchange(true))
      std::this_thread::sleep_for(std::chrono::seconds(6));
  });
  uint64_t s = sgl1(0, kData, 2 << 20);
  submit({dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0, 2 << 20, true)});  // two 1 MiB chunks
  while (!in_dma.load())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  uint64_t writes_at_reset = host_.dma_writes();
  vnpu_engine_wait_idle(engine_.get());
  host_.on_write(nullptr);
  EXPECT_EQ(host_.dma_writes(), writes_at_reset) << "a DMA write landed after the reset completed";
  EXPECT_EQ(writes_at_reset, 1u) << "the second chunk must not be written at all";
  EXPECT_EQ(rd(VNPU_REG_STATUS), VNPU_STATUS_READY);
}

// Regression: nothing held the workers while the VM was stopped; they kept fetching and moving guest memory.
TEST_F(Engine, PausedEngineTouchesNoHostMemoryUntilResumed) {
  enable();
  vnpu_engine_set_paused(engine_.get(), 1);
  uint64_t reads = host_.dma_reads(), writes = host_.dma_writes();
  submit({nop(1)});
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(host_.dma_reads(), reads);
  EXPECT_EQ(host_.dma_writes(), writes);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 0u);
  vnpu_engine_set_paused(engine_.get(), 0);
  vnpu_hw_cpl c{};
  run();
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.tag, 1u);
  // A device reset releases accesses held by a pause (they fail: their work is dropped).
  vnpu_engine_set_paused(engine_.get(), 1);
  submit({nop(2)});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  vnpu_engine_set_paused(engine_.get(), 0);
  enable();
  EXPECT_EQ(run_one({nop(3)}).tag, 3u);
}

// Regression: destroy (QEMU: unrealize, hot-unplug, with the BQL held) joined the workers without a bound, so a
// worker stuck in a host access (e.g. a DMA that needs the lock its caller holds) hung it forever.
TEST_F(Engine, DestroyIsBoundedWhenAWorkerIsStuckInAHostAccess) {
  enable();
  std::atomic<bool> stuck{false}, release{false};
  host_.on_read([&](uint64_t addr, size_t) {
    if (addr >= kData && !stuck.exchange(true)) {
      while (!release.load())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  submit({dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, 4096), 1, 0, 0, 4096, true)});
  while (!stuck.load())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine_.reset();  // returns although the H2D worker cannot get out of its read
  uint64_t writes = host_.dma_writes();
  release = true;
  while (host_.accesses_in_progress())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the straggler frees the engine
  host_.on_read(nullptr);
  EXPECT_EQ(host_.dma_writes(), writes) << "an abandoned engine reached the transport";
}

// Regression: the engine always created raw pthreads, so QEMU could not give its workers QemuThreads (named,
// signals blocked) like every other QEMU thread.
TEST(EngineThreads, WorkersAreTheTransportsThreadsWhenItProvidesThem) {
  struct Threads {
    std::atomic<int> created{0}, joined{0};
    std::vector<std::string> names;
  } th;
  FakeHost fake;
  VnpuEngineHost h = fake.host();
  h.opaque = &th;  // only the thread callbacks run before the first doorbell
  h.thread_create = [](void* o, void** t, const char* name, void* (*fn)(void*), void* arg) {
    auto* self = static_cast<Threads*>(o);
    self->names.emplace_back(name);
    self->created++;
    *t = new std::thread(fn, arg);
    return 0;
  };
  h.thread_join = [](void* o, void* t) {
    static_cast<Threads*>(o)->joined++;
    static_cast<std::thread*>(t)->join();
    delete static_cast<std::thread*>(t);
  };
  h.thread_detach = [](void*, void* t) {
    static_cast<std::thread*>(t)->detach();
    delete static_cast<std::thread*>(t);
  };
  VnpuEngineConfig cfg{};
  cfg.devmem_size = 1 << 20;
  cfg.compute_cores = 2;
  VnpuEngine* e = nullptr;
  ASSERT_EQ(vnpu_engine_create(&cfg, &h, &e), 0);
  EXPECT_EQ(th.created.load(), 5);
  EXPECT_EQ(th.names, (std::vector<std::string>{"vnpu-cp", "vnpu-h2d", "vnpu-d2h", "vnpu-core", "vnpu-core"}));
  vnpu_engine_destroy(e);
  EXPECT_EQ(th.joined.load(), 5);
}

TEST_F(Engine, ResetDuringALongCommandAbandonsIt) {
  enable();
  submit({matmul(0, 0x400000, 0x800000, 1024, 1024, 1024, true, 1)});
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  run();
  EXPECT_EQ(host_.dma_writes(), 0u);
}

// ---- several queues --------------------------------------------------------------------------------------

TEST_F(Engine, QueuesCompleteIndependentlyOnTheirOwnVectors) {
  VnpuEngineConfig cfg{};
  cfg.num_queues = 2;
  create(cfg);
  EXPECT_EQ(rd(VNPU_REG_NUM_QUEUES), 2u);
  EXPECT_EQ(vnpu_engine_num_vectors(engine_.get()), 2u);
  const uint64_t sq1 = kSq + 0x4000, cq1 = kCq + 0x4000;
  program_queue(kSq, 8, kCq, 8, 0, 0);
  program_queue(sq1, 8, cq1, 8, 1, 1);
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE, 0);
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE, 1);
  host_.put(kSq, nop(10));
  host_.put(sq1, nop(20));
  qwr(VNPU_QREG_SQ_TAIL, 1, 1);
  qwr(VNPU_QREG_SQ_TAIL, 1, 0);
  run();
  EXPECT_EQ(host_.get<vnpu_hw_cpl>(kCq).tag, 10u);
  EXPECT_EQ(host_.get<vnpu_hw_cpl>(cq1).tag, 20u);
  auto irqs = host_.irqs();
  std::sort(irqs.begin(), irqs.end());
  EXPECT_EQ(irqs, (std::vector<unsigned>{0, 1}));
}

// ---- v1: helpers -----------------------------------------------------------------------------------------

vnpu_hw_cmd synth(uint64_t ns, uint64_t tag, bool last = true, uint16_t ctx = 0) {
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_SYNTH;
  c.flags = last ? VNPU_CMD_F_LAST : 0;
  c.ctx_id = ctx;
  c.tag = tag;
  c.synth.ns = ns;
  return c;
}

vnpu_hw_cmd in_ctx(vnpu_hw_cmd c, uint16_t ctx) {
  c.ctx_id = ctx;
  return c;
}

// Queue q of the fixture's engine, with its own rings (64 KiB apart).
struct Ring {
  uint64_t sq, cq;
  uint32_t size, tail = 0, head = 0;
  uint16_t phase = 1;
  uint32_t cq_size = 0;  // 0: `size`
};

class MultiQueue : public Engine {
 protected:
  void open_queue(unsigned q, uint32_t priority, uint32_t size = 16) {
    Ring r{kSq + q * 0x800, kCq + q * 0x1000, size};
    program_queue(r.sq, size, r.cq, size, q, q);
    qwr(VNPU_QREG_PRIORITY, priority, q);
    qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE, q);
    ASSERT_EQ(qrd(VNPU_QREG_STATUS, q) & VNPU_QSTATUS_ENABLED, VNPU_QSTATUS_ENABLED);
    rings_[q] = r;
  }
  void put(unsigned q, const std::vector<vnpu_hw_cmd>& cmds, bool ring = true) {
    Ring& r = rings_[q];
    for (const auto& c : cmds) {
      host_.put(r.sq + uint64_t(r.tail) * sizeof(c), c);
      r.tail = (r.tail + 1) % r.size;
    }
    if (ring)
      qwr(VNPU_QREG_SQ_TAIL, r.tail, q);
  }
  bool take(unsigned q, vnpu_hw_cpl* out) {
    Ring& r = rings_[q];
    auto c = host_.get<vnpu_hw_cpl>(r.cq + uint64_t(r.head) * sizeof(vnpu_hw_cpl));
    if ((c.flags & VNPU_CPL_F_PHASE) != r.phase)
      return false;
    *out = c;
    r.head = (r.head + 1) % (r.cq_size ? r.cq_size : r.size);
    if (!r.head)
      r.phase ^= 1;
    qwr(VNPU_QREG_CQ_HEAD, r.head, q);
    return true;
  }
  std::vector<vnpu_hw_cpl> drain(unsigned q) {
    std::vector<vnpu_hw_cpl> v;
    vnpu_hw_cpl c{};
    while (take(q, &c))
      v.push_back(c);
    return v;
  }
  void make(unsigned queues, unsigned cores = 1) {
    VnpuEngineConfig cfg{};
    cfg.num_queues = queues;
    cfg.compute_cores = cores;
    create(cfg);
  }
  Ring rings_[VNPU_ENGINE_MAX_QUEUES];
};

// ---- v1: queues, arbitration, barriers ---------------------------------------------------------------------

TEST_F(MultiQueue, DefaultsGiveEightQueuesEachWithItsOwnVector) {
  VnpuEngineConfig cfg{};
  cfg.num_queues = VNPU_ENGINE_DEFAULT_NUM_QUEUES;
  create(cfg);
  EXPECT_EQ(rd(VNPU_REG_NUM_QUEUES), 8u);
  EXPECT_EQ(vnpu_engine_num_vectors(engine_.get()), 8u);
  for (unsigned q = 0; q < 8; q++)
    open_queue(q, 0);
  for (unsigned q = 0; q < 8; q++)
    put(q, {nop(100 + q)});
  run();
  for (unsigned q = 0; q < 8; q++) {
    auto v = drain(q);
    ASSERT_EQ(v.size(), 1u) << q;
    EXPECT_EQ(v[0].tag, 100u + q);
    EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE, q), 1u);
  }
  auto irqs = host_.irqs();
  std::sort(irqs.begin(), irqs.end());
  EXPECT_EQ(irqs, (std::vector<unsigned>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST_F(MultiQueue, HigherPriorityQueueIsFetchedFirst) {
  make(2);
  open_queue(0, 0);
  open_queue(1, 3);
  EXPECT_EQ(qrd(VNPU_QREG_PRIORITY, 1), 3u);
  wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);  // both doorbells visible before arbitration
  put(0, {synth(1000, 1), synth(1000, 2)});
  put(1, {synth(1000, 11), synth(1000, 12)});
  vnpu_engine_wait_idle(engine_.get());
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD, 0), 0u);  // paused: nothing fetched
  wr(VNPU_REG_CONTROL, 0);
  run();
  auto lo = drain(0), hi = drain(1);
  ASSERT_EQ(lo.size(), 2u);
  ASSERT_EQ(hi.size(), 2u);
  // One compute core, taken in fetch order: both high-priority jobs ran before either low-priority one.
  EXPECT_LT(hi[1].t_end, lo[0].t_end);
  EXPECT_EQ(lo[0].t_start, hi[1].t_end);
}

TEST_F(MultiQueue, EqualPrioritiesAreServedRoundRobinOneJobAtATime) {
  make(2);
  open_queue(0, 1);
  open_queue(1, 1);
  wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
  put(0, {synth(500, 1, false), synth(500, 2), synth(500, 3)});  // jobs: [1,2] [3]
  put(1, {synth(500, 11), synth(500, 12)});
  wr(VNPU_REG_CONTROL, 0);
  run();
  auto a = drain(0), b = drain(1);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  // Fetch order: q0 job[1,2], q1 job[11], q0 job[3], q1 job[12]; the compute core runs them in that order.
  EXPECT_LT(a[0].t_end, b[0].t_end);
  EXPECT_LT(b[0].t_end, a[1].t_end);
  EXPECT_LT(a[1].t_end, b[1].t_end);
  EXPECT_EQ(a[0].t_end - a[0].t_start, 2 * (kOverhead + 500));
}

TEST_F(MultiQueue, BarrierWaitsForEarlierJobsWhileOthersOvertake) {
  make(1, 2);
  open_queue(0, 0);
  const uint64_t t0 = host_.now();
  auto barrier = nop(3);
  barrier.flags |= VNPU_CMD_F_BARRIER;
  put(0, {synth(100'000, 1), nop(2), barrier});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 3u);
  // Without a barrier the NOP completes long before the SYNTH (completions are posted in modelled order).
  EXPECT_EQ(v[0].tag, 2u);
  EXPECT_EQ(v[0].t_end, t0 + kOverhead);
  EXPECT_EQ(v[1].tag, 1u);
  EXPECT_EQ(v[1].t_end, t0 + kOverhead + 100'000);
  EXPECT_EQ(v[2].tag, 3u);
  EXPECT_EQ(v[2].t_start, v[1].t_end);
  EXPECT_EQ(v[2].t_end, v[1].t_end + kOverhead);
}

TEST_F(MultiQueue, ComputeCoresRunJobsConcurrently) {
  make(1, 2);
  EXPECT_EQ(rd(VNPU_REG_COMPUTE_CORES), 2u);
  open_queue(0, 0);
  const uint64_t t0 = host_.now();
  put(0, {synth(10'000, 1), synth(10'000, 2), synth(10'000, 3)});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0].t_start, t0);
  EXPECT_EQ(v[1].t_start, t0);  // second core
  EXPECT_EQ(v[2].t_start, t0 + kOverhead + 10'000);
  EXPECT_EQ(v[2].compute_ns, kOverhead + 10'000);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.compute_busy_ns, 3 * (kOverhead + 10'000));
}

TEST_F(MultiQueue, AThreeEngineJobPostsExactlyOneCompletion) {
  // One job over H2D, a compute core and D2H, repeated: one completion each, with the chained modelled time.
  make(1, 2);
  open_queue(0, 0);
  uint64_t s = sgl1(0, kData, 1 << 20);
  for (int i = 0; i < 20; i++) {
    put(0, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 1 << 20, false, i), synth(50'000, i, false),
            dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0, 1 << 20, true, i)});
    run();
    auto v = drain(0);
    ASSERT_EQ(v.size(), 1u) << i;
    EXPECT_EQ(v[0].t_end - v[0].t_start,
              3 * kOverhead + (1ull << 20) * 1000 / kH2dMbps + 50'000 + (1ull << 20) * 1000 / kD2hMbps)
        << i;
  }
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_JOBS_COMPLETED)), 20u);
}

TEST_F(MultiQueue, SqRingWrapsAndAFullRingIsAccepted) {
  make(1);
  open_queue(0, 0, 4);
  for (int round = 0; round < 5; round++) {
    // A 3-command job fills the 4-entry ring (tail = head - 1) and wraps every other round.
    put(0, {nop(round, false), nop(round, false), nop(round)});
    run();
    auto v = drain(0);
    ASSERT_EQ(v.size(), 1u) << round;
    EXPECT_EQ(v[0].status, VNPU_CPL_OK);
    EXPECT_EQ(v[0].sq_index, uint32_t((round * 3 + 2) % 4));
  }
  EXPECT_EQ(qrd(VNPU_QREG_ERROR), 0u);
}

TEST_F(MultiQueue, QueueResetAbortsHungJobsAndLeavesTheQueueUsable) {
  make(2);
  open_queue(0, 0);
  open_queue(1, 0);
  wr(VNPU_REG_FI_KIND, VNPU_FI_COMPUTE_HANG);
  wr(VNPU_REG_FI_QUEUE, 0);
  wr(VNPU_REG_FI_AFTER, 1);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  put(0, {synth(1000, 1)});
  put(1, {synth(1000, 2)});
  run();
  EXPECT_TRUE(drain(0).empty());   // hung
  EXPECT_EQ(drain(1).size(), 1u);  // the other queue is unaffected
  EXPECT_FALSE(qrd(VNPU_QREG_STATUS, 0) & VNPU_QSTATUS_IDLE);
  EXPECT_EQ(rd(VNPU_REG_FI_COUNT), 1u);
  EXPECT_EQ(rd(VNPU_REG_FI_CTRL), 0u);  // fired once, disarmed
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_RESET, 0);
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].status, VNPU_CPL_ABORTED);
  EXPECT_EQ(v[0].tag, 1u);
  EXPECT_EQ(qrd(VNPU_QREG_STATUS, 0), uint32_t(VNPU_QSTATUS_IDLE));  // disabled, no error, idle
  open_queue(0, 0);
  put(0, {synth(1000, 3)});
  run();
  v = drain(0);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].status, VNPU_CPL_OK);
}

TEST_F(MultiQueue, DeviceResetDropsHungAndRunningWork) {
  make(1);
  open_queue(0, 0);
  wr(VNPU_REG_FI_KIND, VNPU_FI_COMPUTE_HANG);
  wr(VNPU_REG_FI_AFTER, 1);
  wr(VNPU_REG_FI_QUEUE, 0xffffffff);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  put(0, {synth(1000, 1), synth(1000, 2)});
  run();
  const uint64_t writes = host_.dma_writes();
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  run();
  // Job 2 had completed but its record is dropped with everything else; nothing is written after reset.
  EXPECT_LE(host_.dma_writes(), writes);
  EXPECT_EQ(qrd(VNPU_QREG_STATUS, 0), uint32_t(VNPU_QSTATUS_IDLE));
  EXPECT_EQ(rd(VNPU_REG_FI_COUNT), 0u);
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_JOBS_COMPLETED)), 0u);
}

// ---- v1: device MMU --------------------------------------------------------------------------------------

class Mmu : public Engine {
 protected:
  void SetUp() override {
    Engine::SetUp();
    r1_ = pt_alloc();
    r2_ = pt_alloc();
    // Context 1: VA 0 -> PA 1 MiB; context 2: VA 0 -> PA 2 MiB (read-only at VA 64 KiB -> PA 2 MiB + 64 KiB).
    map(r1_, 0, 0x100000);
    map(r2_, 0, 0x200000);
    map(r2_, 0x10000, 0x210000, false);
    set_ctx(1, r1_);
    set_ctx(2, r2_);
    wr(VNPU_REG_MMU_INVALIDATE, 0xffffffff);
    enable();
  }
  uint64_t r1_ = 0, r2_ = 0;
};

TEST_F(Mmu, ContextsSeeOnlyTheirOwnMemoryAndAViolationFaultsOnlyThatJob) {
  std::vector<uint8_t> secret(256, 0x5a);
  std::memcpy(host_.ptr(kData), secret.data(), secret.size());
  uint64_t in = sgl1(0, kData, 256), out = sgl1(1, kData + 0x1000, 256);
  std::memset(host_.ptr(kData + 0x1000), 0xee, 256);
  submit({in_ctx(dma(VNPU_OPC_DMA_H2D, in, 1, 0, 0, 256, true, 1), 1),        // ctx 1 writes its VA 0
          in_ctx(dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0, 256, true, 2), 2),       // ctx 2 reads its own VA 0
          in_ctx(dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0x20000, 16, true, 3), 2),  // unmapped in ctx 2
          in_ctx(nop(4), 1)});
  run();
  std::vector<vnpu_hw_cpl> v;
  vnpu_hw_cpl c{};
  while (pop(&c))
    v.push_back(c);
  ASSERT_EQ(v.size(), 4u);
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.tag < b.tag; });
  EXPECT_EQ(v[0].status, VNPU_CPL_OK);
  EXPECT_EQ(v[0].ctx_id, 1u);
  EXPECT_EQ(v[1].status, VNPU_CPL_OK);
  EXPECT_EQ(host_.ptr(kData + 0x1000)[0], 0);  // context 2 saw its own (zero) page, not context 1's data
  EXPECT_EQ(v[2].status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(v[2].fault_addr, 0x20000u);
  EXPECT_EQ(v[2].ctx_id, 2u);
  EXPECT_EQ(v[3].status, VNPU_CPL_OK);
  EXPECT_EQ(rd(VNPU_REG_MMU_LAST_FAULT_LO), 0x20000u);
  EXPECT_EQ(rd(VNPU_REG_MMU_LAST_FAULT_CTX), 2u);
  // Context 1's data is where its page table says: device-physical 1 MiB (context 0 maps it 1:1).
  EXPECT_EQ(copy_out(0x100000, 256)[0], 0x5a);
}

TEST_F(Mmu, WritesThroughReadOnlyPagesFault) {
  uint64_t in = sgl1(0, kData, 64);
  auto c = run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, in, 1, 0, 0x10000 + 8, 64, true, 1), 2)});
  EXPECT_EQ(c.status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(c.fault_addr, 0x10000u + 8);
  c = run_one({in_ctx(dma(VNPU_OPC_DMA_D2H, in, 1, 0, 0x10000 + 8, 64, true, 1), 2)});
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  c = run_one({in_ctx(matmul(0, 0x8000, 0x10000, 4, 4, 4, true), 2)});  // C in the read-only page
  EXPECT_EQ(c.status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(c.fault_addr, 0x10000u);
}

TEST_F(Mmu, InvalidAndOutOfRangeContextsFailTheJob) {
  set_ctx(3, r1_, false);
  wr(VNPU_REG_MMU_INVALIDATE, 3);
  auto c = run_one({in_ctx(nop(1), 3)});
  EXPECT_EQ(c.status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(c.fault_addr, 0u);
  EXPECT_EQ(run_one({in_ctx(nop(2), uint16_t(VNPU_ENGINE_DEFAULT_NUM_CONTEXTS))}).status, VNPU_CPL_BAD_CONTEXT);
  c = run_one({in_ctx(nop(3, false), 1), in_ctx(nop(4), 2)});  // contexts differ within the job
  EXPECT_EQ(c.status, VNPU_CPL_BAD_CONTEXT);
  EXPECT_EQ(c.sq_index, (sq_tail_ + 15) % 16);
}

TEST_F(Mmu, InvalidateMakesChangedMappingsVisible) {
  uint64_t out = sgl1(1, kData + 0x1000, 4);
  host_.put(kData, uint32_t(0x11111111));
  ASSERT_EQ(run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, 4), 1, 0, 0, 4, true), 1)}).status, VNPU_CPL_OK);
  // Remap context 1's VA 0 to a fresh page and invalidate: the job now reads the fresh (zero) page.
  unmap(r1_, 0);
  map(r1_, 0, 0x300000);
  wr(VNPU_REG_MMU_INVALIDATE, 1);
  ASSERT_EQ(run_one({in_ctx(dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0, 4, true), 1)}).status, VNPU_CPL_OK);
  EXPECT_EQ(host_.get<uint32_t>(kData + 0x1000), 0u);
  unmap(r1_, 0);
  wr(VNPU_REG_MMU_INVALIDATE, 1);
  EXPECT_EQ(run_one({in_ctx(dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0, 4, true), 1)}).status, VNPU_CPL_MMU_FAULT);
}

// Regression: TLB entries were keyed by page number only, so a job fetched before an MMU_INVALIDATE walked its
// old root after the invalidation and planted the stale translation, which the next job (new root) then used.
TEST_F(Mmu, AJobFetchedBeforeAnInvalidateCannotPlantStaleTranslations) {
  uint64_t r1b = pt_alloc();
  map(r1b, 0, 0x300000);  // context 1's new tables: VA 0 -> PA 3 MiB
  std::atomic<bool> switched{false};
  host_.on_read([&](uint64_t addr, size_t) {
    // Job A has been fetched (old root) and is reading its SGL, right before it walks VA 0: the driver now
    // points context 1 at its new tables and invalidates.
    if (addr == kSgl && !switched.exchange(true)) {
      set_ctx(1, r1b);
      wr(VNPU_REG_MMU_INVALIDATE, 1);
    }
  });
  host_.put(kData, uint32_t(0xaaaaaaaa));
  host_.put(kData + 0x1000, uint32_t(0xbbbbbbbb));
  ASSERT_EQ(run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, 4), 1, 0, 0, 4, true), 1)}).status, VNPU_CPL_OK);
  host_.on_read(nullptr);
  ASSERT_TRUE(switched.load());
  ASSERT_EQ(run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(1, kData + 0x1000, 4), 1, 0, 0, 4, true), 1)}).status,
            VNPU_CPL_OK);
  // Context 0 maps device memory 1:1: job A wrote the old page, job B must have written the new one.
  auto old_page = copy_out(0x100000, 4), new_page = copy_out(0x300000, 4);
  uint32_t o, n;
  std::memcpy(&o, old_page.data(), 4);
  std::memcpy(&n, new_page.data(), 4);
  EXPECT_EQ(o, 0xaaaaaaaau);
  EXPECT_EQ(n, 0xbbbbbbbbu) << "job B used job A's stale translation";
}

// Regression: reserved bits of context entries and page-table entries were ignored instead of faulting.
TEST_F(Mmu, ReservedBitsInContextEntriesAndPtesFault) {
  auto status = [&](unsigned ctx) {
    wr(VNPU_REG_MMU_INVALIDATE, ctx);
    return run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, 4), 1, 0, 0, 4, true), ctx)}).status;
  };
  ASSERT_EQ(status(1), VNPU_CPL_OK);
  host_.put(kCtxTable + 16 + 8, uint32_t(VNPU_CTX_F_VALID | 0x100));  // reserved flag
  EXPECT_EQ(status(1), VNPU_CPL_MMU_FAULT);
  host_.put(kCtxTable + 16 + 8, uint32_t(VNPU_CTX_F_VALID));
  host_.put(kCtxTable + 16 + 12, uint32_t(1));  // rsvd
  EXPECT_EQ(status(1), VNPU_CPL_MMU_FAULT);
  host_.put(kCtxTable + 16 + 12, uint32_t(0));
  ASSERT_EQ(status(1), VNPU_CPL_OK);
  uint64_t l1e = host_.get<uint64_t>(r1_);  // level-1 entry of VA 0
  host_.put(r1_, l1e | 0x10);
  EXPECT_EQ(status(1), VNPU_CPL_MMU_FAULT);
  host_.put(r1_, l1e);
  uint64_t l2 = l1e & VNPU_PTE_ADDR_MASK, l3 = host_.get<uint64_t>(l2) & VNPU_PTE_ADDR_MASK;
  uint64_t leaf = host_.get<uint64_t>(l3);
  host_.put(l3, leaf | 0x4);  // bit 2 of a leaf
  EXPECT_EQ(status(1), VNPU_CPL_MMU_FAULT);
  host_.put(l3, leaf);
  EXPECT_EQ(status(1), VNPU_CPL_OK);
}

TEST_F(Mmu, PhysicallyScatteredOperandsComputeCorrectly) {
  // Context 1: three virtually contiguous pages backed by out-of-order physical pages.
  map(r1_, 0x10000, 0x500000);
  map(r1_, 0x20000, 0x400000);
  map(r1_, 0x30000, 0x600000);
  wr(VNPU_REG_MMU_INVALIDATE, 1);
  constexpr uint32_t m = 64, n = 96, k = 200;  // A spans pages 1-2, C crosses into page 3
  std::vector<float> a(m * k), b(k * n);
  for (size_t i = 0; i < a.size(); i++)
    a[i] = float(int(i % 13) - 6) * 0.5f;
  for (size_t i = 0; i < b.size(); i++)
    b[i] = float(int(i % 7) - 3) * 0.25f;
  const uint64_t va_a = 0x10000 + 0x8000, va_b = 0x0, va_c = 0x28000;
  std::memcpy(host_.ptr(kData), a.data(), a.size() * 4);
  std::memcpy(host_.ptr(kData + 0x40000), b.data(), b.size() * 4);
  auto c =
      run_one({in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, m * k * 4), 1, 0, va_a, m * k * 4, false), 1),
               in_ctx(dma(VNPU_OPC_DMA_H2D, sgl1(1, kData + 0x40000, k * n * 4), 1, 0, va_b, k * n * 4, false), 1),
               in_ctx(matmul(va_a, va_b, va_c, m, n, k, false), 1),
               in_ctx(dma(VNPU_OPC_DMA_D2H, sgl1(2, kData + 0x80000, m * n * 4), 1, 0, va_c, m * n * 4, true), 1)});
  ASSERT_EQ(c.status, VNPU_CPL_OK);
  auto ref = reference_matmul(a, b, m, n, k);
  EXPECT_EQ(std::memcmp(host_.ptr(kData + 0x80000), ref.data(), ref.size() * 4), 0);
}

// Regression: checking a transfer's pages walked every page table entry of it (up to 2^24 for one DMA command)
// without looking at cancellation, so a disable, reset or unplug waited for the whole walk. Now it stops at the
// next page.
TEST_F(Mmu, APageWalkStopsAtTheNextPageWhenTheJobIsCancelled) {
  // Context 1: 256 virtual pages alternating between two physical pages: every page is its own run and walk.
  for (uint64_t va = 0; va < 256 * VNPU_MMU_PAGE_SIZE; va += VNPU_MMU_PAGE_SIZE)
    map(r1_, va, 0x800000 + (va / VNPU_MMU_PAGE_SIZE % 2) * VNPU_MMU_PAGE_SIZE);
  wr(VNPU_REG_MMU_INVALIDATE, 1);
  std::atomic<int> pt_reads{0}, after_cancel{0};
  std::atomic<bool> cancelled{false};
  host_.on_read([&](uint64_t addr, size_t) {
    if (addr < kPtPool || addr >= kPtPool + 0x100000)
      return;
    if (cancelled.load()) {
      after_cancel++;
    } else if (++pt_reads == 20) {
      cancelled = true;
      qwr(VNPU_QREG_CTRL, 0);  // the driver disables the queue mid-walk
    }
  });
  submit({in_ctx(dma(VNPU_OPC_DMA_D2H, sgl1(0, kData, 256 << 16), 1, 0, 0, 256 << 16, true, 7), 1)});
  run();
  host_.on_read(nullptr);
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  EXPECT_TRUE(cancelled.load());
  EXPECT_LE(after_cancel.load(), 8);  // the rest of the page being walked, not the remaining pages
}

TEST_F(Mmu, MappedBytesTelemetryCountsValidLeafEntries) {
  wr(VNPU_REG_MMU_INVALIDATE, 0xffffffff);
  vnpu_engine_wait_idle(engine_.get());
  // Context 0 maps all 16 MiB, context 1 one page, context 2 two pages.
  const uint64_t want = cfg_.devmem_size + 3 * VNPU_MMU_PAGE_SIZE;
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_MAPPED_BYTES)), uint32_t(want));
  EXPECT_EQ(rd(VNPU_REG_TELEMETRY(VNPU_TEL_MAPPED_BYTES) + 4), uint32_t(want >> 32));
}

// ---- v1: timing-only, telemetry, fault injection ------------------------------------------------------------

TEST_F(Engine, TimingOnlySkipsComputeButKeepsTheModelledTime) {
  enable();
  std::vector<float> ones(16, 1.0f);
  copy_in(0, ones.data(), 64);
  copy_in(0x1000, ones.data(), 64, 1);
  wr(VNPU_REG_CONTROL, VNPU_CONTROL_TIMING_ONLY);
  EXPECT_EQ(rd(VNPU_REG_CONTROL), VNPU_CONTROL_TIMING_ONLY);
  auto c = run_one({matmul(0, 0x1000, 0x2000, 4, 4, 4, true)});
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.t_end - c.t_start, kOverhead + 128 / kGflops);
  EXPECT_EQ(copy_out(0x2000, 4)[0], 0);  // C untouched
  wr(VNPU_REG_CONTROL, 0);
  EXPECT_EQ(run_one({matmul(0, 0x1000, 0x2000, 4, 4, 4, true)}).status, VNPU_CPL_OK);
  float v;
  auto out = copy_out(0x2000, 4);
  std::memcpy(&v, out.data(), 4);
  EXPECT_EQ(v, 4.0f);
}

TEST_F(Engine, TelemetryRegistersCountJobsBytesBusyTimeAndInterrupts) {
  enable();
  std::vector<uint8_t> buf(1000, 1);
  copy_in(0, buf.data(), 1000);
  EXPECT_EQ(status_of(synth(5000, 1)), VNPU_CPL_OK);
  EXPECT_EQ(status_of(nop(2, true) /* ok */), VNPU_CPL_OK);
  auto bad = nop(3);
  bad.opcode = 0x55;
  EXPECT_EQ(status_of(bad), VNPU_CPL_BAD_OPCODE);
  auto tel = [&](uint32_t c) {
    uint64_t lo = rd(VNPU_REG_TELEMETRY(c));
    return lo | uint64_t(rd(VNPU_REG_TELEMETRY(c) + 4)) << 32;
  };
  EXPECT_EQ(tel(VNPU_TEL_JOBS_COMPLETED), 3u);
  EXPECT_EQ(tel(VNPU_TEL_JOBS_FAILED), 1u);
  EXPECT_EQ(tel(VNPU_TEL_CMDS), 3u);
  EXPECT_EQ(tel(VNPU_TEL_H2D_BYTES), 1000u);
  EXPECT_EQ(tel(VNPU_TEL_H2D_BUSY_NS), kOverhead + 1000);
  EXPECT_EQ(tel(VNPU_TEL_COMPUTE_BUSY_NS), kOverhead + 5000);
  EXPECT_EQ(tel(VNPU_TEL_IRQS), 4u);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.irqs, 4u);
  EXPECT_EQ(st.jobs_completed, 3u);
}

TEST_F(Engine, SynthOccupiesTheModelledTimeAndValidatesItsFields) {
  enable();
  auto c = run_one({synth(123'456, 1)});
  EXPECT_EQ(c.status, VNPU_CPL_OK);
  EXPECT_EQ(c.t_end - c.t_start, kOverhead + 123'456);
  EXPECT_EQ(c.compute_ns, kOverhead + 123'456);
  EXPECT_EQ(status_of(synth(0, 2)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(synth(VNPU_SYNTH_MAX_NS + 1, 3)), VNPU_CPL_BAD_FIELD);
  auto s = synth(10, 4);
  s.synth.rsvd[2] = 1;
  EXPECT_EQ(status_of(s), VNPU_CPL_BAD_FIELD);
}

TEST_F(Engine, ExecValidatesFieldsAndProgramBeforeRunning) {
  enable();
  ASSERT_TRUE(rd(VNPU_REG_CAPS) & VNPU_CAP_EXEC);
  auto exec = [](uint64_t prog, uint32_t len, uint64_t bind, uint32_t nb) {
    vnpu_hw_cmd c{};
    c.opcode = VNPU_OPC_EXEC;
    c.flags = VNPU_CMD_F_LAST;
    c.exec.prog_addr = prog;
    c.exec.prog_len = len;
    c.exec.bindings_addr = bind;
    c.exec.num_bindings = nb;
    return c;
  };
  EXPECT_EQ(status_of(exec(0x1000, 0, 0x2000, 1)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(exec(0x1004, 64, 0x2000, 1)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(exec(0x1000, 64, 0x2000, 0)), VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(status_of(exec(0x1000, 64, 0x2000, VNPU_EXEC_MAX_BINDINGS + 1)), VNPU_CPL_BAD_FIELD);
  auto c = run_one({exec(cfg_.devmem_size, 64, 0x2000, 1)});
  EXPECT_EQ(c.status, VNPU_CPL_MMU_FAULT);
  EXPECT_EQ(c.fault_addr, cfg_.devmem_size);
  EXPECT_EQ(status_of(exec(0x1000, 64, 0x2000, 1)), VNPU_CPL_PROGRAM_INVALID);  // zeroed memory: no program
}

TEST_F(Engine, InjectedDmaErrorFailsTheChosenJobOnly) {
  enable();
  wr(VNPU_REG_FI_KIND, VNPU_FI_DMA_ERROR);
  wr(VNPU_REG_FI_QUEUE, 0);
  wr(VNPU_REG_FI_AFTER, 2);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  uint64_t s = sgl1(0, kData, 64);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, true)), VNPU_CPL_OK);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, true)), VNPU_CPL_DMA_FAULT);
  EXPECT_EQ(status_of(dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, true)), VNPU_CPL_OK);
  EXPECT_EQ(rd(VNPU_REG_FI_COUNT), 1u);
}

TEST_F(Engine, InjectedLostInterruptStillWritesTheRecord) {
  enable();
  wr(VNPU_REG_FI_KIND, VNPU_FI_LOST_IRQ);
  wr(VNPU_REG_FI_QUEUE, 0xffffffff);
  wr(VNPU_REG_FI_AFTER, 1);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  EXPECT_EQ(status_of(nop(1)), VNPU_CPL_OK);
  EXPECT_TRUE(host_.irqs().empty());
  EXPECT_EQ(status_of(nop(2)), VNPU_CPL_OK);
  EXPECT_EQ(host_.irqs().size(), 1u);
}

TEST_F(Engine, InjectedCorruptCompletionHasBadTagAndStatus) {
  enable();
  wr(VNPU_REG_FI_KIND, VNPU_FI_CORRUPT_CPL);
  wr(VNPU_REG_FI_QUEUE, 0xffffffff);
  wr(VNPU_REG_FI_AFTER, 1);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  auto c = run_one({nop(0x1234)});
  EXPECT_EQ(c.tag, ~uint64_t(0x1234));
  EXPECT_EQ(c.status, 0xffffu);
}

TEST_F(Engine, FaultRateFromConfigIsDeterministicPerSeed) {
  auto count_failures = [&](uint32_t seed) {
    VnpuEngineConfig cfg{};
    cfg.fi_kind = VNPU_FI_DMA_ERROR;
    cfg.fi_queue = 0xffffffff;
    cfg.fi_rate_ppm = 300'000;
    cfg.fi_seed = seed;
    create(cfg);
    EXPECT_EQ(rd(VNPU_REG_FI_CTRL), uint32_t(VNPU_FI_CTRL_ARM));  // armed by the configuration
    enable();
    std::string pattern;
    for (int i = 0; i < 40; i++)
      pattern += status_of(nop(uint64_t(i))) == VNPU_CPL_OK ? '.' : 'x';
    return pattern;
  };
  auto a = count_failures(7), b = count_failures(7), c = count_failures(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto fails = std::count(a.begin(), a.end(), 'x');
  EXPECT_GT(fails, 2);
  EXPECT_LT(fails, 30);
}

// ---- v1: determinism ---------------------------------------------------------------------------------------

TEST_F(MultiQueue, ModelledTimesDoNotDependOnHostSpeed) {
  // The same workload over 3 queues and 2 cores, once with instant host memory and once with random
  // per-access delays: every completion's t_start/t_end must be identical.
  auto workload = [&](unsigned jitter_us) {
    make(3, 2);
    const uint64_t t0 = host_.now();
    host_.set_jitter(jitter_us);
    for (unsigned q = 0; q < 3; q++)
      open_queue(q, q == 2 ? 1 : 0);
    wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
    uint64_t s = sgl1(0, kData, 8192), o = sgl1(1, kData + 0x10000, 4096);
    for (unsigned q = 0; q < 3; q++) {
      for (unsigned j = 0; j < 3; j++) {
        uint64_t dev = 0x100000 * (q + 1) + 0x10000 * j;
        put(q, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, dev, 8192, false, q * 10 + j),
                matmul(dev, dev + 0x400, dev + 0x4000, 16, 16, 16 + q, false, q * 10 + j),
                synth(700 * (j + 1), q * 10 + j, false),
                dma(VNPU_OPC_DMA_D2H, o, 1, 0, dev + 0x4000, 4096, true, q * 10 + j)});
      }
    }
    wr(VNPU_REG_CONTROL, 0);
    run();
    std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> times;
    for (unsigned q = 0; q < 3; q++)
      for (auto& c : drain(q))
        times.emplace_back(c.tag, c.t_start - t0, c.t_end - t0);
    std::sort(times.begin(), times.end());
    host_.set_jitter(0);
    return times;
  };
  auto fast = workload(0);
  auto slow = workload(300);
  ASSERT_EQ(fast.size(), 9u);
  EXPECT_EQ(fast, slow);
}

// ---- host memory bound -----------------------------------------------------------------------------------

// Regression: an EXEC operand that is physically scattered (aliased page tables) went through a bounce buffer of
// its full size, for every operand of the op (64 per op, per core), so a guest could make one CONCAT allocate
// tens of GiB of host memory. Bounce buffers now stay within a core's share of host_mem_max.
TEST_F(Engine, ExecBounceBuffersStayWithinTheCoresShareOfHostMemMax) {
  constexpr uint64_t kMiB = 1 << 20;
  constexpr uint64_t kInVa = 0, kOutVa = 4 * kMiB, kProgVa = 16 * kMiB, kBindVa = kProgVa + 0x10000;
  constexpr uint64_t kWVa = kProgVa + 0x20000;
  constexpr uint32_t kFloats = kMiB / 4;
  ProgramBuilder b;
  b.binding(VNPU_ISA_BIND_WEIGHTS, 256);  // every program has exactly one
  uint32_t in = b.binding(VNPU_ISA_BIND_INPUT, kMiB), out = b.binding(VNPU_ISA_BIND_OUTPUT, 4 * kMiB);
  uint32_t t[4];
  for (auto& x : t)
    x = b.tensor(in, 0, {kFloats});
  uint32_t y = b.tensor(out, 0, {4 * kFloats});
  vnpu_isa_axis ax{};
  b.op(VNPU_ISA_OP_CONCAT, {t[0], t[1], t[2], t[3]}, {y}, &ax);
  const std::vector<uint8_t> prog = b.bytes();
  const uint64_t binds[3] = {kWVa, kInVa, kOutVa};

  auto run_with = [&](uint64_t host_mem_max, uint32_t cores = 1) {
    VnpuEngineConfig cfg{};
    cfg.host_mem_max = host_mem_max;
    cfg.compute_cores = cores;
    create(cfg);
    enable();
    // Context 1: every operand page alternates between two physical pages, so none is contiguous.
    uint64_t r1 = pt_alloc();
    for (uint64_t va = 0; va < 8 * kMiB; va += VNPU_MMU_PAGE_SIZE)
      map(r1, va, (va < kOutVa ? 0x800000 : 0xa00000) + (va / VNPU_MMU_PAGE_SIZE % 2) * VNPU_MMU_PAGE_SIZE);
    map(r1, kProgVa, 0x900000);
    map(r1, kBindVa, 0x910000);
    map(r1, kWVa, 0x920000);
    set_ctx(1, r1);
    wr(VNPU_REG_MMU_INVALIDATE, 1);
    std::memcpy(host_.ptr(kData), prog.data(), prog.size());
    std::memcpy(host_.ptr(kData + 0x10000), binds, sizeof(binds));
    EXPECT_EQ(run_one({dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, uint32_t(prog.size())), 1, 0, 0x900000, prog.size(), false),
                       dma(VNPU_OPC_DMA_H2D, sgl1(1, kData + 0x10000, 24), 1, 0, 0x910000, 24, true)})
                  .status,
              VNPU_CPL_OK);
    vnpu_hw_cmd x{};
    x.opcode = VNPU_OPC_EXEC;
    x.flags = VNPU_CMD_F_LAST;
    x.ctx_id = 1;
    x.exec.prog_addr = kProgVa;
    x.exec.prog_len = uint32_t(prog.size());
    x.exec.bindings_addr = kBindVa;
    x.exec.num_bindings = 3;
    uint16_t st = run_one({x}).status;
    VnpuEngineStats stats;
    vnpu_engine_get_stats(engine_.get(), &stats);
    return std::make_pair(st, stats.host_mem_peak);
  };
  // 4 MiB of inputs and 4 MiB of output to gather: within a 16 MiB share it runs, bouncing 8 MiB.
  auto [ok, ok_peak] = run_with(16 * kMiB);
  EXPECT_EQ(ok, VNPU_CPL_OK);
  EXPECT_EQ(ok_peak, 8 * kMiB);
  // Within 4 MiB it is refused, and the engine never held more than that.
  auto [refused, peak] = run_with(4 * kMiB);
  EXPECT_EQ(refused, VNPU_CPL_PROGRAM_INVALID);
  EXPECT_LE(peak, 4 * kMiB);
  // Cores share it: with two, each command gets half (deterministic, whatever the other core does).
  EXPECT_EQ(run_with(16 * kMiB, 2).first, VNPU_CPL_OK);
  EXPECT_EQ(run_with(12 * kMiB, 2).first, VNPU_CPL_PROGRAM_INVALID);
}

TEST(EngineConfig, HostMemMaxDefaultsToOneGibAndRejectsLessThanOneMib) {
  VnpuEngineConfig cfg{};
  ASSERT_EQ(vnpu_engine_config_finalize(&cfg), 0);
  EXPECT_EQ(cfg.host_mem_max, 1ull << 30);
  VnpuEngineConfig small{};
  small.host_mem_max = (1 << 20) - 1;
  EXPECT_NE(vnpu_engine_config_finalize(&small), 0);
}

// ---- SIGNAL (interface 1.1) ----------------------------------------------------------------------------------

vnpu_hw_cmd sig(uint64_t tag) {
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_SIGNAL;
  c.tag = tag;
  return c;
}

class Signal : public MultiQueue {
 protected:
  void SetUp() override {
    MultiQueue::SetUp();
    open_queue(0, 0);
  }
  static bool is_signal(const vnpu_hw_cpl& c) { return c.flags & VNPU_CPL_F_SIGNAL; }
};

TEST_F(Signal, PostsAnIntermediateRecordWhenThePreviousCommandEnds) {
  const uint64_t t0 = host_.now();
  uint64_t in = sgl1(0, kData, kH2dBytes);
  put(0, {dma(VNPU_OPC_DMA_H2D, in, 1, 0, 0, kH2dBytes, false, 1), sig(7), synth(5000, 1, false), nop(9)});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 2u);
  // The intermediate record: the SIGNAL's own tag and ring index, the job's start, the time used so far.
  EXPECT_EQ(v[0].tag, 7u);
  EXPECT_EQ(v[0].status, VNPU_CPL_OK);
  EXPECT_EQ(v[0].flags, VNPU_CPL_F_PHASE | VNPU_CPL_F_SIGNAL);
  EXPECT_EQ(v[0].sq_index, 1u);
  EXPECT_EQ(v[0].t_start, t0);
  EXPECT_EQ(v[0].t_end, t0 + kH2dNs);
  EXPECT_EQ(v[0].h2d_ns, kH2dNs);
  EXPECT_EQ(v[0].compute_ns, 0u);
  EXPECT_EQ(v[0].ctx_id, 0u);
  // The job goes on; SIGNAL costs nothing: the job's time is that of its other commands.
  EXPECT_EQ(v[1].tag, 9u);
  EXPECT_EQ(v[1].flags, VNPU_CPL_F_PHASE);
  EXPECT_EQ(v[1].status, VNPU_CPL_OK);
  EXPECT_EQ(v[1].sq_index, 3u);
  EXPECT_EQ(v[1].t_start, t0);
  EXPECT_EQ(v[1].t_end, t0 + kH2dNs + kOverhead + 5000 + kOverhead);
  EXPECT_EQ(v[1].compute_ns, kOverhead + 5000);
  EXPECT_EQ(qrd(VNPU_QREG_JOBS_DONE), 1u);  // jobs, not records
  EXPECT_EQ(qrd(VNPU_QREG_CQ_TAIL), 2u);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.jobs_completed, 1u);
  EXPECT_EQ(st.cmds_executed, 4u);
}

TEST_F(Signal, AsTheFirstCommandPostsAtTheJobsStart) {
  const uint64_t t0 = host_.now();
  put(0, {sig(1), synth(3000, 2)});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(is_signal(v[0]));
  EXPECT_EQ(v[0].t_start, t0);
  EXPECT_EQ(v[0].t_end, t0);
  EXPECT_EQ(v[1].tag, 2u);
  EXPECT_EQ(v[1].t_end, t0 + kOverhead + 3000);
}

TEST_F(Signal, RecordsFollowModelledTimeAndAJobsSignalsPrecedeItsRecord) {
  make(2, 1);
  open_queue(0, 0);
  open_queue(1, 0);
  const uint64_t t0 = host_.now();
  wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
  // Queue 0: a long job, then a job whose signals come early; on one core its SYNTHs run after the long one.
  put(0, {synth(100'000, 1)});
  put(0, {sig(20), nop(0, false), sig(21), synth(10, 0, false), sig(22), nop(2)});
  // Queue 1: signals in several jobs of another queue, interleaved in time with queue 0's.
  put(1, {nop(0, false), sig(30), nop(3)});
  wr(VNPU_REG_CONTROL, 0);
  run();
  auto v = drain(0);
  std::vector<std::tuple<uint64_t, bool, uint64_t>> got;
  for (auto& c : v)
    got.emplace_back(c.tag, is_signal(c), c.t_end - t0);
  const uint64_t long_end = kOverhead + 100'000;
  std::vector<std::tuple<uint64_t, bool, uint64_t>> want = {
      {20, true, 0},                                      // at its job's start
      {21, true, kOverhead},                              // after the NOP
      {1, false, long_end},                               // the long job
      {22, true, long_end + kOverhead + 10},              // after its SYNTH, which waited for the core
      {2, false, long_end + kOverhead + 10 + kOverhead},  // then its own record
  };
  EXPECT_EQ(got, want);
  auto w = drain(1);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].tag, 30u);
  EXPECT_TRUE(is_signal(w[0]));
  EXPECT_EQ(w[0].t_end - t0, kOverhead);
  EXPECT_EQ(w[1].tag, 3u);
}

TEST_F(Signal, AJobFailingBeforeASignalPostsNoRecordForIt) {
  uint64_t s = sgl1(0, kData, 64);
  // SGL_INVALID at command 1: the SIGNAL at command 0 is posted, the one at 2 is not.
  put(0, {sig(1), dma(VNPU_OPC_DMA_H2D, s, 0, 0, 0, 64, false, 5), sig(2), nop(3)});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(is_signal(v[0]));
  EXPECT_EQ(v[0].tag, 1u);
  EXPECT_FALSE(is_signal(v[1]));
  EXPECT_EQ(v[1].status, VNPU_CPL_SGL_INVALID);
  EXPECT_EQ(v[1].sq_index, 1u);
  // A context fault at the first command: no record but the job's.
  set_ctx(3, 0, false);
  put(0, {in_ctx(sig(4), 3), in_ctx(nop(5), 3)});
  run();
  v = drain(0);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].status, VNPU_CPL_MMU_FAULT);
  // An injected DMA error on the job's first DMA command.
  wr(VNPU_REG_FI_KIND, VNPU_FI_DMA_ERROR);
  wr(VNPU_REG_FI_AFTER, 1);
  wr(VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
  put(0, {dma(VNPU_OPC_DMA_H2D, sgl1(0, kData, 64), 1, 0, 0, 64, false, 6), sig(7), nop(8)});
  run();
  v = drain(0);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].status, VNPU_CPL_DMA_FAULT);
}

TEST_F(Signal, PayloadLastFlagAndMoreThanTheMaximumAreBadField) {
  auto payload = sig(1);
  payload.raw[47] = 1;
  put(0, {payload, nop(2)});
  auto last = sig(3);
  last.flags = VNPU_CMD_F_LAST;  // a job cannot end with a SIGNAL
  put(0, {last});
  auto rsvd = sig(4);
  rsvd.rsvd1 = 1;
  put(0, {rsvd, nop(5)});
  run();
  auto v = drain(0);
  ASSERT_EQ(v.size(), 3u);
  for (auto& c : v) {
    EXPECT_FALSE(is_signal(c));
    EXPECT_EQ(c.status, VNPU_CPL_BAD_FIELD);
  }
  EXPECT_EQ(v[1].tag, 3u);
  // Five in one job: the four allowed are reached, the fifth fails the job.
  std::vector<vnpu_hw_cmd> job;
  for (uint64_t i = 0; i < VNPU_MAX_SIGNALS_PER_JOB + 1; i++)
    job.push_back(sig(10 + i));
  job.push_back(nop(20));
  put(0, job);
  run();
  v = drain(0);
  ASSERT_EQ(v.size(), VNPU_MAX_SIGNALS_PER_JOB + 1);
  for (unsigned i = 0; i < VNPU_MAX_SIGNALS_PER_JOB; i++) {
    EXPECT_TRUE(is_signal(v[i]));
    EXPECT_EQ(v[i].tag, 10u + i);
  }
  EXPECT_EQ(v.back().status, VNPU_CPL_BAD_FIELD);
  EXPECT_EQ(v.back().tag, 20u);
  EXPECT_EQ(v.back().sq_index, 5u + VNPU_MAX_SIGNALS_PER_JOB);  // the fifth SIGNAL (5 earlier slots)
}

TEST_F(Engine, CompletionRingBoundCountsSignalRecords) {
  enable(16, 4);  // the CQ holds 3 records
  std::vector<vnpu_hw_cmd> jobs;
  for (uint64_t i = 0; i < 6; i++) {
    jobs.push_back(sig(100 + i));
    jobs.push_back(nop(i));
  }
  submit(jobs);
  run();
  // Posted: the 3 signals due at t0. Owed: jobs 0..2's records; job 3's SIGNAL would make 5 > CQ_SIZE records,
  // so it waits unfetched at index 6.
  EXPECT_EQ(qrd(VNPU_QREG_CQ_TAIL), 3u);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 6u);  // counting jobs, not records, would fetch more
  std::vector<std::pair<uint64_t, bool>> got;
  vnpu_hw_cpl c{};
  for (int round = 0; round < 20 && got.size() < 12; round++) {
    while (pop(&c))
      got.emplace_back(c.tag, (c.flags & VNPU_CPL_F_SIGNAL) != 0);
    run();
  }
  ASSERT_EQ(got.size(), 12u);
  EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 12u);
  for (uint64_t i = 0; i < 6; i++) {  // every job's signal comes before the job's record
    auto s_at = std::find(got.begin(), got.end(), std::make_pair(100 + i, true));
    auto j_at = std::find(got.begin(), got.end(), std::make_pair(i, false));
    ASSERT_NE(s_at, got.end());
    ASSERT_NE(j_at, got.end());
    EXPECT_LT(s_at, j_at);
  }
}

TEST_F(Engine, AJobWithMoreRecordsThanTheCompletionRingHoldsStillCompletes) {
  enable(16, 2);  // one record at a time
  submit({sig(1), sig(2), sig(3), sig(4), nop(5), nop(6)});
  std::vector<uint64_t> tags;
  vnpu_hw_cpl c{};
  for (int round = 0; round < 20 && tags.size() < 6; round++) {
    run();
    while (pop(&c))
      tags.push_back(c.tag);
  }
  EXPECT_EQ(tags, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(Signal, DisablePostsReachedSignalsBeforeTheAbortedRecords) {
  // Job 1 occupies the core until t0 + 100100; job 2's SIGNAL is reached (its NOP ran) but not due until then.
  put(0, {synth(100'000, 1), synth(10, 0, false), sig(2), synth(10, 3, false), sig(4), nop(5)});
  vnpu_engine_wait_idle(engine_.get());
  qwr(VNPU_QREG_CTRL, 0);
  run();
  auto v = drain(0);
  std::vector<std::tuple<uint64_t, bool, uint16_t>> got;
  for (auto& c : v)
    got.emplace_back(c.tag, is_signal(c), c.status);
  // Everything fetched is aborted in fetch order; the SIGNALs the job reached come before its own record.
  std::vector<std::tuple<uint64_t, bool, uint16_t>> want = {
      {1, false, VNPU_CPL_ABORTED}, {2, true, VNPU_CPL_OK}, {4, true, VNPU_CPL_OK}, {5, false, VNPU_CPL_ABORTED}};
  EXPECT_EQ(got, want);
  EXPECT_TRUE(qrd(VNPU_QREG_STATUS) & VNPU_QSTATUS_IDLE);
}

TEST_F(Signal, DeviceResetDropsPendingSignalRecords) {
  put(0, {synth(100'000, 1), sig(2), nop(3)});
  vnpu_engine_wait_idle(engine_.get());
  wr(VNPU_REG_RESET, VNPU_RESET_MAGIC);
  run();
  EXPECT_TRUE(drain(0).empty());
}

// Regression: under lockstep the command processor fetched as soon as a doorbell was rung, so which queue's job
// it took first (and when SQ_HEAD moved) depended on host thread timing, not on the guest. Now it fetches at
// ticks: three queues rung one after the other give one trace however fast the host is.
TEST_F(MultiQueue, ArbitrationUnderLockstepDependsOnlyOnTheGuest) {
  auto workload = [&](unsigned jitter_us) {
    make(3, 1);
    vnpu_engine_set_lockstep(engine_.get(), 1);
    const uint64_t t0 = host_.now();
    for (unsigned q = 0; q < 3; q++)
      open_queue(q, 0);
    uint64_t s = sgl1(0, kData, 4096);
    host_.set_jitter(jitter_us);
    std::vector<uint32_t> heads;
    for (unsigned q = 0; q < 3; q++) {
      for (unsigned j = 0; j < 3; j++)
        put(q, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x10000 * (q * 3 + j), 4096, false, q * 10 + j),
                synth(500 + 100 * q, q * 10 + j)},
            false);
      qwr(VNPU_QREG_SQ_TAIL, rings_[q].tail, q);  // doorbells at one virtual time, in guest order
      heads.push_back(qrd(VNPU_QREG_SQ_HEAD, q));  // what the guest sees right after its doorbell
    }
    run();
    std::vector<std::tuple<unsigned, uint64_t, uint64_t, uint64_t>> trace;
    for (unsigned q = 0; q < 3; q++)
      for (auto& c : drain(q))
        trace.emplace_back(q, c.tag, c.t_start - t0, c.t_end - t0);
    for (uint32_t h : heads)
      trace.emplace_back(99, h, 0, 0);
    host_.set_jitter(0);
    return trace;
  };
  auto first = workload(0);
  ASSERT_EQ(first.size(), 12u);
  for (unsigned jitter : {200u, 0u, 500u, 0u, 300u, 0u})
    EXPECT_EQ(workload(jitter), first) << "jitter " << jitter;
}

TEST_F(MultiQueue, SignalTracesAreIdenticalUnderLockstepWhateverTheHostSpeed) {
  // Under icount (lockstep) the records' order per queue and all their times are a function of the guest's
  // commands: the same multi-queue workload with signals, with instant and with randomly slow host memory.
  auto workload = [&](unsigned jitter_us) {
    make(3, 2);
    vnpu_engine_set_lockstep(engine_.get(), 1);
    const uint64_t t0 = host_.now();
    host_.set_jitter(jitter_us);
    for (unsigned q = 0; q < 3; q++)
      open_queue(q, q == 2 ? 1 : 0);
    wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
    uint64_t s = sgl1(0, kData, 8192), o = sgl1(1, kData + 0x10000, 4096);
    for (unsigned q = 0; q < 3; q++) {
      for (unsigned j = 0; j < 3; j++) {
        uint64_t dev = 0x100000 * (q + 1) + 0x10000 * j, tag = q * 10 + j;
        put(q, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, dev, 8192, false, tag), sig(100 + tag), synth(700 * (j + 1), tag, false),
                sig(200 + tag), dma(VNPU_OPC_DMA_D2H, o, 1, 0, dev + 0x4000, 4096, true, tag)});
      }
    }
    wr(VNPU_REG_CONTROL, 0);
    run();
    std::vector<std::tuple<unsigned, uint64_t, uint16_t, uint64_t, uint64_t, uint32_t>> trace;
    for (unsigned q = 0; q < 3; q++)
      for (auto& c : drain(q))
        trace.emplace_back(q, c.tag, c.flags, c.t_start - t0, c.t_end - t0, c.compute_ns);
    host_.set_jitter(0);
    return trace;
  };
  auto fast = workload(0);
  auto slow = workload(300);
  ASSERT_EQ(fast.size(), 27u);
  EXPECT_EQ(fast, slow);
}


// ---- modelled engine time: the EXEC cap, aborted jobs, fetch pause and completion back-pressure -------------

// EXEC commands of context 0 (identity-mapped): exec_cmd() puts the program and its binding table in device
// memory first.
class Exec : public Engine {
 protected:
  static constexpr uint64_t kProg = 0x100000, kBinds = 0x110000, kIo = 0x120000;

  vnpu_hw_cmd exec_cmd(const std::vector<uint8_t>& prog, uint64_t tag,
                       const std::vector<uint64_t>& binds = {kIo, kIo + 0x1000}) {  // weights, scratch
    copy_in(kProg, prog.data(), uint32_t(prog.size()), 1);
    copy_in(kBinds, binds.data(), uint32_t(binds.size() * 8), 2);
    vnpu_hw_cmd x{};
    x.opcode = VNPU_OPC_EXEC;
    x.flags = VNPU_CMD_F_LAST;
    x.tag = tag;
    x.exec.prog_addr = kProg;
    x.exec.prog_len = uint32_t(prog.size());
    x.exec.bindings_addr = kBinds;
    x.exec.num_bindings = uint32_t(binds.size());
    return x;
  }
  // `ops` in-place ReLUs of four floats: each costs the op overhead (the arithmetic is negligible).
  static std::vector<uint8_t> relus(int ops) {
    ProgramBuilder b;
    b.binding(VNPU_ISA_BIND_WEIGHTS, 256);
    uint32_t x = b.tensor(b.binding(VNPU_ISA_BIND_SCRATCH, 64), 0, {4});
    vnpu_isa_unary relu{};
    relu.act = VNPU_ISA_ACT_RELU;
    for (int i = 0; i < ops; i++)
      b.op(VNPU_ISA_OP_UNARY, {x}, {x}, &relu);
    return b.bytes();
  }
};

// Regression: an EXEC's modelled cost had no bound while SYNTH's is 10 s: three ops of a 4 s op overhead booked
// a core for 12 s (and a hostile program's cost sums could wrap). Now more than VNPU_EXEC_MAX_NS is refused.
TEST_F(Exec, ModelledCostIsCappedLikeSynths) {
  constexpr uint64_t kOpNs = 4'000'000'000;
  VnpuEngineConfig cfg{};
  cfg.op_overhead_ns = uint32_t(kOpNs);
  create(cfg);
  enable();
  auto ok = run_one({exec_cmd(relus(2), 1)});
  EXPECT_EQ(ok.status, VNPU_CPL_OK);
  EXPECT_EQ(ok.t_end - ok.t_start, kOverhead + 2 * (kOpNs + 8));  // + 8 flops per ReLU of four floats
  const uint64_t t0 = host_.now();
  auto over = run_one({exec_cmd(relus(3), 2)});
  EXPECT_EQ(over.status, VNPU_CPL_PROGRAM_INVALID);
  // Refused at validation: nothing booked beyond the command's overhead, the core is free for the next job.
  EXPECT_EQ(over.t_end - over.t_start, kOverhead);
  auto next = run_one({synth(10, 3)});
  EXPECT_LT(next.t_end - t0, 1'000'000u);
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_LT(st.compute_busy_ns, 3 * kOpNs);
}

// Regression: a job aborted by a queue reset kept its whole booking of the compute core in the timing model,
// so the next job, rung right after the reset, started only when the aborted one would have ended (10 s later).
TEST_F(Timing, AnAbortedJobGivesBackTheEngineTimeItBooked) {
  enable();
  const uint64_t t0 = host_.now();
  submit({synth(VNPU_SYNTH_MAX_NS, 1)});
  vnpu_engine_wait_idle(engine_.get());  // fetched and booked: the core is taken until t0 + 10 s
  host_.set_clock(t0 + 5000);
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_RESET);
  run();
  vnpu_hw_cpl c{};
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  EXPECT_EQ(c.compute_ns, 5000u);  // the part it used before the reset
  VnpuEngineStats st;
  vnpu_engine_get_stats(engine_.get(), &st);
  EXPECT_EQ(st.compute_busy_ns, 5000u);
  host_.set_clock(t0 + 6000);
  enable();
  auto next = run_one({synth(1000, 2)});
  EXPECT_EQ(next.status, VNPU_CPL_OK);
  EXPECT_EQ(next.t_start, t0 + 6000);
  EXPECT_EQ(next.t_end, t0 + 6000 + kOverhead + 1000);
  // Two bookings of one job on one engine unwind in turn.
  const uint64_t t1 = host_.now();
  submit({synth(1'000'000, 0, false), synth(1'000'000, 3)});
  vnpu_engine_wait_idle(engine_.get());
  host_.set_clock(t1 + 100);
  qwr(VNPU_QREG_CTRL, VNPU_QCTRL_RESET);
  run();
  ASSERT_TRUE(pop(&c));
  EXPECT_EQ(c.status, VNPU_CPL_ABORTED);
  enable();
  next = run_one({synth(1000, 4)});
  EXPECT_EQ(next.t_start, t1 + 100);
}

// Regression: the timing model ignored CONTROL.FETCH_PAUSE: a job rung while fetching was paused was modelled
// from its doorbell on, as if it had run while the device was not allowed to fetch it.
TEST_F(Timing, AJobHeldByFetchPauseStartsWhenThePauseEnds) {
  for (int lockstep : {1, 0}) {
    create({});
    vnpu_engine_set_lockstep(engine_.get(), lockstep);
    enable();
    const uint64_t t0 = host_.now();
    wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
    submit({synth(1000, 1)});
    run();
    EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 0u);
    host_.set_clock(t0 + 50'000);
    wr(VNPU_REG_CONTROL, 0);
    run();
    vnpu_hw_cpl c{};
    ASSERT_TRUE(pop(&c));
    EXPECT_EQ(c.t_start, t0 + 50'000) << "lockstep " << lockstep;
    EXPECT_EQ(c.t_end, t0 + 50'000 + kOverhead + 1000) << "lockstep " << lockstep;
  }
}

// Regression: the timing model ignored the completion ring's back-pressure: a job held back by the record
// bound until the driver freed ring space (CQ_HEAD at 1 ms) was modelled from its doorbell on, starting at
// 3.3 us: long before the device could fetch it.
TEST_F(Timing, AJobHeldByCompletionBackPressureStartsWhenItCouldBeFetched) {
  for (int lockstep : {1, 0}) {
    create({});
    vnpu_engine_set_lockstep(engine_.get(), lockstep);
    enable(16, 2);  // the ring holds one record; two may be owed
    const uint64_t t0 = host_.now(), kJob = kOverhead + 1000;
    submit({synth(1000, 1), synth(1000, 2), synth(1000, 3), synth(1000, 4)});
    run();
    // Job 1 posted (the ring is now full), job 2 waits for ring space, job 3 fetched when job 1 posted.
    EXPECT_EQ(qrd(VNPU_QREG_SQ_HEAD), 3u);
    host_.set_clock(t0 + 1'000'000);
    std::vector<vnpu_hw_cpl> got;
    vnpu_hw_cpl c{};
    for (int round = 0; round < 10 && got.size() < 4; round++) {
      while (pop(&c))
        got.push_back(c);
      run();
    }
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(got[0].t_start, t0);
    EXPECT_EQ(got[1].t_start, t0 + kJob);
    EXPECT_EQ(got[2].t_start, t0 + 2 * kJob);  // fetched at t0 + kJob: the core was busy until after that
    EXPECT_EQ(got[3].t_start, t0 + 1'000'000) << "lockstep " << lockstep;  // fetched when job 2 could post
    EXPECT_EQ(got[3].t_end, t0 + 1'000'000 + kJob) << "lockstep " << lockstep;
  }
}

// Regression: oneDNN's blocked copies of EXEC operands were allocated outside host-mem-max (only bounce buffers
// counted): a convolution over 1 MiB tensors held 2 MiB of nChw16c copies whatever the budget. Now they count
// against the core's share; when it is exhausted the op runs on the reference kernel, with the same result.
TEST_F(Exec, OneDnnBlockedCopiesCountAgainstHostMemMax) {
  constexpr uint64_t kMiB = 1 << 20;
  constexpr uint32_t C = 16, H = 128, W = 128;
  constexpr uint64_t kW = 0x200000, kX = 0x400000, kY = 0x600000, kBytes = uint64_t(C) * H * W * 4;
  ProgramBuilder b;
  uint32_t wb = b.binding(VNPU_ISA_BIND_WEIGHTS, C * C * 9 * 4), xb = b.binding(VNPU_ISA_BIND_INPUT, kBytes),
           yb = b.binding(VNPU_ISA_BIND_OUTPUT, kBytes);
  uint32_t x = b.tensor(xb, 0, {1, C, H, W}), w = b.tensor(wb, 0, {C, C, 3, 3}), y = b.tensor(yb, 0, {1, C, H, W});
  vnpu_isa_conv cv{};
  cv.group = 1;
  cv.stride[0] = cv.stride[1] = 1;
  cv.dilation[0] = cv.dilation[1] = 1;
  cv.pad_begin[0] = cv.pad_begin[1] = cv.pad_end[0] = cv.pad_end[1] = 1;
  b.op(VNPU_ISA_OP_CONV, {x, w}, {y}, &cv);
  const std::vector<uint8_t> prog = b.bytes();
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> xv(kBytes / 4), wv(C * C * 9);
  for (auto& v : xv)
    v = u(rng);
  for (auto& v : wv)
    v = u(rng);

  auto run_with = [&](uint64_t host_mem_max) {
    VnpuEngineConfig cfg{};
    cfg.host_mem_max = host_mem_max;
    create(cfg);
    enable();
    copy_in(kX, xv.data(), uint32_t(kBytes), 3);
    copy_in(kW, wv.data(), uint32_t(wv.size() * 4), 4);
    EXPECT_EQ(run_one({exec_cmd(prog, 1, {kW, kX, kY})}).status, VNPU_CPL_OK);
    VnpuEngineStats st;
    vnpu_engine_get_stats(engine_.get(), &st);
    std::vector<uint8_t> raw = copy_out(kY, uint32_t(kBytes));
    std::vector<float> out(kBytes / 4);
    std::memcpy(out.data(), raw.data(), kBytes);
    return std::make_pair(out, st.host_mem_peak);
  };
  // Contiguous operands need no bounce buffers: what is counted is oneDNN's blocked input and output.
  auto [fast, fast_peak] = run_with(64 * kMiB);
  EXPECT_GE(fast_peak, 2 * kMiB);
  auto [ref, ref_peak] = run_with(1 * kMiB);
  EXPECT_LE(ref_peak, 1 * kMiB);
  ASSERT_EQ(fast.size(), ref.size());
  size_t bad = 0;
  for (size_t i = 0; i < fast.size(); i++)
    bad += std::fabs(fast[i] - ref[i]) > 1e-4f * (1.0f + std::fabs(fast[i]));
  EXPECT_EQ(bad, 0u);
}

// Under lockstep (icount), jobs held back by FETCH_PAUSE and by full completion rings start at times set by the
// guest's register writes: the same workload, with the driver reading its rings late, gives one trace with
// instant and with randomly slow host memory.
TEST_F(MultiQueue, HeldBackJobsGiveIdenticalTracesUnderLockstepWhateverTheHostSpeed) {
  auto workload = [&](unsigned jitter_us) {
    make(2, 1);
    vnpu_engine_set_lockstep(engine_.get(), 1);
    const uint64_t t0 = host_.now();
    host_.set_jitter(jitter_us);
    for (unsigned q = 0; q < 2; q++) {
      open_queue(q, q, 16);
      // A completion ring of 2 (one record at a time): at most two records owed, the rest waits unfetched.
      qwr(VNPU_QREG_CTRL, 0, q);
      std::memset(host_.ptr(rings_[q].cq), 0, 2 * sizeof(vnpu_hw_cpl));  // no records of an earlier workload
      program_queue(rings_[q].sq, 16, rings_[q].cq, 2, q, q);
      qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE, q);
      rings_[q].cq_size = 2;
    }
    uint64_t s = sgl1(0, kData, 4096);
    wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
    for (unsigned q = 0; q < 2; q++)
      for (unsigned j = 0; j < 5; j++) {
        uint64_t tag = q * 10 + j;
        if (j % 2)
          put(q, {synth(300 * j + 50 * q, tag)});
        else
          put(q, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x10000 * (q * 5 + j), 4096, true, tag)});
      }
    host_.set_clock(t0 + 1000);
    wr(VNPU_REG_CONTROL, 0);  // fetching starts here, not at the doorbells
    run();
    std::vector<std::tuple<unsigned, uint64_t, uint64_t, uint64_t>> trace;
    for (unsigned k = 0; k < 40 && trace.size() < 10; k++) {
      host_.set_clock(host_.now() + 3000 + 1000 * k);  // the driver reads one ring, late, at guest-chosen times
      for (auto& c : drain(k % 2))
        trace.emplace_back(k % 2, c.tag, c.t_start - t0, c.t_end - t0);
      run();
    }
    host_.set_jitter(0);
    return trace;
  };
  auto fast = workload(0);
  ASSERT_EQ(fast.size(), 10u);
  // Held back, not started at the doorbells: the last jobs start after the driver read the records before them.
  EXPECT_GT(std::get<2>(fast.back()), 10'000u);
  for (unsigned jitter : {300u, 0u, 200u})
    EXPECT_EQ(workload(jitter), fast) << "jitter " << jitter;
}

// Regression: under lockstep the command processor could fetch while a tick was still posting records (the
// engine lock is dropped around each record's DMA) if anything woke it then (here another CPU's CONTROL write
// during the first record's write; also a spurious wake-up): when two queues held back by full completion rings
// were released in one tick, the low-priority queue's job could be fetched, and book the H2D engine, before the
// high-priority one's. Now postings and fetches never overlap.
TEST_F(MultiQueue, QueuesReleasedInOneTickAreFetchedInArbitrationOrderUnderLockstep) {
  auto workload = [&](bool slow_record) {
    make(2, 1);
    vnpu_engine_set_lockstep(engine_.get(), 1);
    const uint64_t t0 = host_.now();
    for (unsigned q = 0; q < 2; q++) {
      open_queue(q, q, 16);
      qwr(VNPU_QREG_CTRL, 0, q);
      std::memset(host_.ptr(rings_[q].cq), 0, 2 * sizeof(vnpu_hw_cpl));  // no records of an earlier workload
      program_queue(rings_[q].sq, 16, rings_[q].cq, 2, q, q);  // one record at a time, two owed
      qwr(VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE, q);
      rings_[q].cq_size = 2;
    }
    const uint64_t cq0 = rings_[0].cq;
    std::atomic<bool> slow{false};
    host_.on_write([&](uint64_t addr, size_t) {
      if (slow.load() && addr >= cq0 && addr < cq0 + 128) {
        wr(VNPU_REG_CONTROL, 0);  // another CPU's register write while the record is being written
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
      }
    });
    uint64_t s = sgl1(0, kData, 4096);
    wr(VNPU_REG_CONTROL, VNPU_CONTROL_FETCH_PAUSE);
    for (unsigned q = 0; q < 2; q++)
      for (unsigned j = 0; j < 5; j++)
        put(q, {dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x10000 * (q * 5 + j), 4096, true, q * 10 + j)});
    wr(VNPU_REG_CONTROL, 0);
    run();  // each queue: one record posted, one waiting for ring space, one more job fetched, two held back
    host_.set_clock(t0 + 100'000);
    slow = slow_record;
    std::vector<std::tuple<unsigned, uint64_t, uint64_t, uint64_t>> trace;
    for (unsigned k = 0; k < 10 && trace.size() < 10; k++) {
      for (unsigned q = 0; q < 2; q++)  // both rings read at one guest time: one tick releases both queues
        for (auto& c : drain(q))
          trace.emplace_back(q, c.tag, c.t_start - t0, c.t_end - t0);
      run();
      host_.set_clock(host_.now() + 100'000);
    }
    host_.on_write(nullptr);
    return trace;
  };
  auto fast = workload(false);
  ASSERT_EQ(fast.size(), 10u);
  EXPECT_EQ(workload(true), fast);
}

}  // namespace
}  // namespace vnpu::test
