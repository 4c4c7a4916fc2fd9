// SPDX-License-Identifier: MIT
// vnpu-microbench: host-side micro-benchmarks of the real code paths (Google Benchmark). Performance targets
// live here and in vnpu-bench, never in timed unit tests. Run with --benchmark_min_time=0.2 for a short pass
// (scripts/bench.sh), or `meson test --benchmark -C build`.
//
//  - Engine/*: the device's engine library driven only through its MMIO API (tests/engine/fake_host.h as the
//    transport, whose clock moves only when the benchmark fires the armed deadline). What is timed is host
//    work: doorbell → command-processor thread → engine worker → tick → completion record.
//  - Kernels/*: the program interpreter's op kernels (vnpu_ops_run), reference vs oneDNN.
//  - Runtime/*: a no-op request (synthetic model, all stages 0) through libruntime's sim backend, whose
//    completions wait for the modelled device time (a few µs of command overhead and DMA latency).
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <vnpu/vnpu.h>

#include "fake_host.h"

extern "C" {
#include "vnpu_hw.h"
#include "vnpu_ops.h"
}

namespace {

using vnpu::test::FakeHost;

// ---- engine ----------------------------------------------------------------------------------------------

/// One engine with queue 0 enabled, context 0 mapping all device memory 1:1, and the FakeHost's memory laid
/// out as: rings, context table and page tables, then scatter-gather lists, then data.
class EngineRig {
 public:
  static constexpr uint64_t kSq = FakeHost::kBase;
  static constexpr uint64_t kCq = FakeHost::kBase + 0x10000;
  static constexpr uint64_t kCtxTable = FakeHost::kBase + 0x20000;
  static constexpr uint64_t kPageTables = FakeHost::kBase + 0x30000;
  static constexpr uint64_t kSgl = FakeHost::kBase + 0x100000;   // up to 64 Ki entries
  static constexpr uint64_t kData = FakeHost::kBase + 0x200000;  // kDataSize bytes
  static constexpr uint64_t kDataSize = 16 << 20;
  static constexpr uint64_t kDevmem = 32 << 20;
  static constexpr uint32_t kRing = 64;

  explicit EngineRig(bool timing_only = false) : host_(kData - FakeHost::kBase + kDataSize) {
    VnpuEngineConfig cfg{};
    cfg.devmem_size = kDevmem;
    cfg.num_queues = 1;
    cfg.compute_cores = 1;
    cfg.timing_only = timing_only ? 1 : 0;
    VnpuEngineHost h = host_.host();
    if (vnpu_engine_create(&cfg, &h, &engine_) != 0)
      return;
    identity_map_context0();
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_SQ_BASE_LO), uint32_t(kSq));
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_SQ_BASE_HI), uint32_t(kSq >> 32));
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_SQ_SIZE), kRing);
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_CQ_BASE_LO), uint32_t(kCq));
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_CQ_BASE_HI), uint32_t(kCq >> 32));
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_CQ_SIZE), kRing);
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_CTRL), VNPU_QCTRL_ENABLE);
  }
  ~EngineRig() {
    if (engine_)
      vnpu_engine_destroy(engine_);
  }
  EngineRig(const EngineRig&) = delete;
  EngineRig& operator=(const EngineRig&) = delete;

  [[nodiscard]] bool ok() {
    return engine_ && (rd(VNPU_REG_QUEUE(0, VNPU_QREG_STATUS)) & (VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_ERROR)) ==
                          VNPU_QSTATUS_ENABLED;
  }
  FakeHost& host() { return host_; }

  /// Submits one single-command job, lets the engine run it to its modelled completion and returns the
  /// completion's status (or -1 if no completion was posted).
  int run(vnpu_hw_cmd cmd) {
    cmd.flags |= VNPU_CMD_F_LAST;
    host_.put(kSq + uint64_t(sq_tail_) * sizeof(cmd), cmd);
    sq_tail_ = (sq_tail_ + 1) % kRing;
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_SQ_TAIL), sq_tail_);
    for (;;) {  // the transport's timer: fire every armed deadline at once
      vnpu_engine_wait_idle(engine_);
      const uint64_t d = host_.take_deadline();
      if (d == FakeHost::kNoDeadline)
        break;
      if (d > host_.now())
        host_.set_clock(d);
      vnpu_engine_tick(engine_);
    }
    const auto c = host_.get<vnpu_hw_cpl>(kCq + uint64_t(cq_head_) * sizeof(vnpu_hw_cpl));
    if ((c.flags & VNPU_CPL_F_PHASE) != phase_)
      return -1;
    cq_head_ = (cq_head_ + 1) % kRing;
    if (cq_head_ == 0)
      phase_ ^= 1;
    wr(VNPU_REG_QUEUE(0, VNPU_QREG_CQ_HEAD), cq_head_);
    return c.status;
  }

 private:
  uint32_t rd(uint64_t off) { return uint32_t(vnpu_engine_mmio_read(engine_, off, 4)); }
  void wr(uint64_t off, uint32_t v) { vnpu_engine_mmio_write(engine_, off, v, 4); }

  void identity_map_context0() {
    uint64_t next_table = kPageTables;
    auto table_at = [&](uint64_t entry) {
      uint64_t pte = host_.get<uint64_t>(entry);
      if (!(pte & VNPU_PTE_VALID)) {
        std::memset(host_.ptr(next_table), 0, 4096);
        pte = next_table | VNPU_PTE_VALID;
        next_table += 4096;
        host_.put(entry, pte);
      }
      return pte & VNPU_PTE_ADDR_MASK;
    };
    std::memset(host_.ptr(kPageTables), 0, 4096);
    const uint64_t root = next_table;
    next_table += 4096;
    for (uint64_t a = 0; a < kDevmem; a += VNPU_MMU_PAGE_SIZE) {
      const uint64_t l2 = table_at(root + VNPU_MMU_INDEX(a, 1) * 8);
      const uint64_t l3 = table_at(l2 + VNPU_MMU_INDEX(a, 2) * 8);
      host_.put(l3 + VNPU_MMU_INDEX(a, 3) * 8, a | VNPU_PTE_VALID | VNPU_PTE_WRITE);
    }
    host_.put(kCtxTable, vnpu_hw_ctx{root, VNPU_CTX_F_VALID, 0});
    wr(VNPU_REG_CTX_TABLE_LO, uint32_t(kCtxTable));
    wr(VNPU_REG_CTX_TABLE_HI, uint32_t(kCtxTable >> 32));
  }

  FakeHost host_;
  VnpuEngine* engine_ = nullptr;
  uint32_t sq_tail_ = 0, cq_head_ = 0;
  uint16_t phase_ = 1;
};

void BM_EngineNopRoundTrip(benchmark::State& state) {
  EngineRig rig;
  if (!rig.ok())
    return state.SkipWithError("engine did not start");
  vnpu_hw_cmd nop{};
  nop.opcode = VNPU_OPC_NOP;
  for (auto _ : state) {
    if (rig.run(nop) != VNPU_CPL_OK)
      return state.SkipWithError("NOP job failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EngineNopRoundTrip)->Name("Engine/NopJobRoundTrip")->UseRealTime();

// Host-to-device DMA of `bytes` through a scatter-gather list of 4 KiB host pages (the layout pinned user
// memory has). DMA copies in timing-only mode too (only compute is skipped), so there is one variant.
void BM_EngineSgH2d(benchmark::State& state) {
  const uint64_t bytes = static_cast<uint64_t>(state.range(0));
  const uint32_t pages = static_cast<uint32_t>(bytes / 4096);
  EngineRig rig;
  if (!rig.ok())
    return state.SkipWithError("engine did not start");
  std::memset(rig.host().ptr(EngineRig::kData), 0x5a, bytes);
  // Every other page, so that neighbouring elements are never contiguous and cannot be merged.
  for (uint32_t i = 0; i < pages; i++) {
    const uint64_t page = (i * 2ull) % (EngineRig::kDataSize / 4096) + (i * 2ull >= EngineRig::kDataSize / 4096);
    rig.host().put(EngineRig::kSgl + i * 16ull, vnpu_hw_sge{EngineRig::kData + page * 4096, 4096, 0});
  }
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_DMA_H2D;
  c.dma.sgl_addr = EngineRig::kSgl;
  c.dma.sgl_count = pages;
  c.dma.dev_addr = 0;
  c.dma.length = bytes;
  for (auto _ : state) {
    if (rig.run(c) != VNPU_CPL_OK)
      return state.SkipWithError("DMA job failed");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["sg_entries/s"] = benchmark::Counter(
      static_cast<double>(pages) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EngineSgH2d)->Name("Engine/SgH2d")->RangeMultiplier(4)->Range(64 << 10, 16 << 20)->UseRealTime();

// One MATMUL command (f32, M = N = K = arg) on a compute core: functional vs timing-only (validated and
// timed by the model, arithmetic skipped).
void BM_EngineMatmulCommand(benchmark::State& state, bool timing_only) {
  const uint32_t d = static_cast<uint32_t>(state.range(0));
  const uint64_t bytes = uint64_t(d) * d * 4;
  EngineRig rig(timing_only);
  if (!rig.ok())
    return state.SkipWithError("engine did not start");
  vnpu_hw_cmd c{};
  c.opcode = VNPU_OPC_MATMUL;
  c.matmul.a_addr = 0;
  c.matmul.b_addr = bytes;
  c.matmul.c_addr = 2 * bytes;
  c.matmul.m = c.matmul.n = c.matmul.k = d;
  c.matmul.dtype = VNPU_DTYPE_F32;
  for (auto _ : state) {
    if (rig.run(c) != VNPU_CPL_OK)
      return state.SkipWithError("MATMUL job failed");
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * d * d * d * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}
BENCHMARK_CAPTURE(BM_EngineMatmulCommand, functional, false)
    ->Name("Engine/MatmulCommand/functional")
    ->Arg(256)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_EngineMatmulCommand, timing_only, true)
    ->Name("Engine/MatmulCommand/timing_only")
    ->Arg(256)
    ->UseRealTime();

// ---- kernels ---------------------------------------------------------------------------------------------

/// A decoded op with owned, deterministic pseudo-random operands.
class Op {
 public:
  explicit Op(uint32_t opcode) : a_(std::make_unique<VnpuOpArgs>()) {
    std::memset(a_.get(), 0, sizeof(VnpuOpArgs));
    a_->opcode = opcode;
  }
  VnpuOpAttr& attr() { return a_->attr; }
  void in(std::vector<uint64_t> dims) { add(dims, true); }
  void out(std::vector<uint64_t> dims) { add(dims, false); }
  [[nodiscard]] bool valid() { return vnpu_ops_check(a_.get()) == 0; }
  [[nodiscard]] double flops() { return static_cast<double>(vnpu_ops_flops(a_.get())); }
  int run(VnpuKernelMode mode) { return vnpu_ops_run(a_.get(), mode); }

 private:
  void add(const std::vector<uint64_t>& dims, bool input) {
    const uint32_t i = a_->num_inputs + a_->num_outputs;
    VnpuTensor& t = a_->t[i];
    t.rank = static_cast<uint32_t>(dims.size());
    t.count = 1;
    for (size_t d = 0; d < dims.size(); d++)
      t.dims[d] = dims[d], t.count *= dims[d];
    auto& data = data_.emplace_back(t.count);
    std::mt19937 rng(i + 1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& v : data)
      v = u(rng);
    t.data = data.data();
    (input ? a_->num_inputs : a_->num_outputs)++;
  }
  std::unique_ptr<VnpuOpArgs> a_;
  std::vector<std::vector<float>> data_;
};

void run_op(benchmark::State& state, Op& op, VnpuKernelMode mode) {
  if (!op.valid())
    return state.SkipWithError("invalid op");
  for (auto _ : state) {
    if (op.run(mode) != VNPU_CPL_OK)
      return state.SkipWithError("kernel failed (no fast path?)");
  }
  state.counters["FLOP/s"] = benchmark::Counter(op.flops() * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

// Y[n,n] = A[n,n] · B[n,n], f32.
void BM_Matmul(benchmark::State& state, VnpuKernelMode mode) {
  const uint64_t n = static_cast<uint64_t>(state.range(0));
  Op op(VNPU_ISA_OP_MATMUL);
  op.attr().matmul.alpha = 1.0f;
  op.attr().matmul.beta = 1.0f;
  op.in({n, n});
  op.in({n, n});
  op.out({n, n});
  run_op(state, op, mode);
}
BENCHMARK_CAPTURE(BM_Matmul, reference, VNPU_KERNELS_REFERENCE)
    ->Name("Kernels/Matmul/reference")
    ->Arg(128)
    ->Arg(256)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matmul, onednn, VNPU_KERNELS_FAST_ONLY)
    ->Name("Kernels/Matmul/onednn")
    ->Arg(128)
    ->Arg(256)
    ->Arg(512)
    ->UseRealTime();

// 3x3 convolution, stride 1, pad 1, with bias and ReLU: 1 x C x 56 x 56 -> 1 x C x 56 x 56 (a ResNet stage).
void BM_Conv3x3(benchmark::State& state, VnpuKernelMode mode) {
  const uint64_t c = static_cast<uint64_t>(state.range(0)), hw = 56;
  Op op(VNPU_ISA_OP_CONV);
  auto& cv = op.attr().conv;
  cv.group = 1;
  cv.flags = VNPU_ISA_CONV_F_BIAS;
  cv.act = VNPU_ISA_ACT_RELU;
  for (int i = 0; i < 2; i++)
    cv.stride[i] = cv.dilation[i] = cv.pad_begin[i] = cv.pad_end[i] = 1;
  op.in({1, c, hw, hw});
  op.in({c, c, 3, 3});
  op.in({c});
  op.out({1, c, hw, hw});
  run_op(state, op, mode);
}
BENCHMARK_CAPTURE(BM_Conv3x3, reference, VNPU_KERNELS_REFERENCE)
    ->Name("Kernels/Conv3x3/reference")
    ->Arg(32)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Conv3x3, onednn, VNPU_KERNELS_FAST_ONLY)
    ->Name("Kernels/Conv3x3/onednn")
    ->Arg(32)
    ->Arg(64)
    ->UseRealTime();

// ---- runtime ---------------------------------------------------------------------------------------------

vnpu::CompiledModel noop_model() {
  vnpu::SyntheticSpec spec;  // 4-byte transfers
  spec.compute = std::chrono::nanoseconds(1);
  return vnpu::CompiledModel::synthetic(spec);
}

vnpu::RuntimeOptions sim_options() {
  vnpu::RuntimeOptions o;
  o.backend = "sim";
  return o;
}

void BM_RuntimeSyncNoop(benchmark::State& state) {
  vnpu::Runtime rt(noop_model(), sim_options());
  const vnpu::Tensor x({1});
  for (auto _ : state)
    benchmark::DoNotOptimize(rt.run(vnpu::Tensor(x)));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RuntimeSyncNoop)->Name("Runtime/Sync/NoopRoundTrip")->UseRealTime();

// One request at a time: run() to the resolved task.
void BM_AsyncRuntimeNoop(benchmark::State& state) {
  vnpu::AsyncRuntime rt(noop_model(), sim_options());
  const vnpu::Tensor x({1});
  for (auto _ : state)
    benchmark::DoNotOptimize(rt.run(vnpu::Tensor(x)).wait());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AsyncRuntimeNoop)->Name("Runtime/Async/NoopRoundTrip")->UseRealTime();

// Rate with `depth` requests in flight (the pipeline overlapping prep, H2D, compute and D2H of requests).
void BM_AsyncRuntimeNoopPipelined(benchmark::State& state) {
  const size_t depth = static_cast<size_t>(state.range(0));
  vnpu::RuntimeOptions o = sim_options();
  o.max_in_flight = static_cast<int>(depth);
  vnpu::AsyncRuntime rt(noop_model(), o);
  const vnpu::Tensor x({1});
  std::vector<vnpu::Task<vnpu::Outputs>> window(depth);
  size_t i = 0;
  for (auto _ : state) {
    auto& slot = window[i++ % depth];
    if (slot.valid())
      benchmark::DoNotOptimize(slot.wait());
    slot = rt.run(vnpu::Tensor(x));
  }
  for (auto& t : window)
    if (t.valid())
      (void)t.wait();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AsyncRuntimeNoopPipelined)->Name("Runtime/Async/NoopPipelined")->Arg(8)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
