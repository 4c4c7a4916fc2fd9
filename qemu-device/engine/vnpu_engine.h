/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine library: the device's behaviour (register file, command processor, scatter-gather DMA engines,
 * compute cores, device MMU, timing model, telemetry, fault injection), independent of any transport. The QEMU
 * device (qemu-device/vnpu_pci.c) and libruntime's in-process "sim" backend both drive this same code; it
 * includes no QEMU header. docs/device.md is the specification.
 *
 * Threads and locks
 *  - vnpu_engine_mmio_read/_write, vnpu_engine_tick and vnpu_engine_reset are "transport-side" calls: the
 *    transport serialises them (QEMU: the BQL; sim: its own mutex). They never block for long (except in
 *    lockstep mode, see below) and never run commands themselves: a doorbell only wakes the command processor.
 *  - The engine owns 3 + compute_cores worker threads: the command processor (fetches jobs, arbitrates between
 *    queues, reads context-table entries), the H2D DMA engine, the D2H DMA engine and one thread per compute
 *    core. They move data with host->dma_read/dma_write, compute, and ask the transport for a tick at a modelled
 *    completion time with host->schedule. They never call host->interrupt and never take the transport's lock.
 *  - Completion records are written and interrupts raised only inside vnpu_engine_tick, i.e. in transport
 *    context, at or after the modelled time: a completion becomes visible at
 *    max(modelled completion time, time the functional work finished).
 */
#ifndef VNPU_ENGINE_H
#define VNPU_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct VnpuEngine VnpuEngine;

/*
 * Device configuration, fixed for the engine's lifetime (fault injection and timing-only are also the power-on
 * values of their registers, which the driver may change). Zero fields take the defaults below; for the fields
 * marked "(zero: VNPU_CFG_ZERO)" a real zero is requested with VNPU_CFG_ZERO. Fields after cmd_overhead_ns were
 * added in v1; a v0 initialiser that names its fields keeps working.
 */
typedef struct VnpuEngineConfig {
    uint64_t devmem_size;      /* bytes of device-local memory, multiple of 64 KiB, <= 1 TiB; default 1 GiB */
    uint32_t num_queues;       /* hardware queues, 1..16; default 8 */
    uint32_t ring_max;         /* largest ring (entries), power of two 2..65536; default 4096 */
    uint32_t h2d_mbps;         /* H2D DMA bandwidth, 10^6 B/s; default 13000 (PCIe Gen4 x8, effective) */
    uint32_t d2h_mbps;         /* D2H DMA bandwidth, 10^6 B/s; default 13000 */
    uint32_t compute_gflops;   /* throughput of ONE compute core, 10^9 FLOP/s; default 16000 */
    uint32_t cmd_overhead_ns;  /* fixed cost per command (zero: VNPU_CFG_ZERO); default 1000 */
    /* ---- v1 ---- */
    uint32_t num_contexts;     /* address-space contexts, 1..1024; default 64 */
    uint32_t compute_cores;    /* compute cores, 1..8; default 2 */
    uint32_t h2d_latency_ns;   /* fixed latency per H2D transfer (zero: VNPU_CFG_ZERO); default 1500 */
    uint32_t d2h_latency_ns;   /* fixed latency per D2H transfer (zero: VNPU_CFG_ZERO); default 1500 */
    uint32_t op_overhead_ns;   /* fixed cost per op of an EXEC program (zero: VNPU_CFG_ZERO); default 1000 */
    uint32_t devmem_gbps;      /* device-memory bandwidth of one core, 10^9 B/s; default 200 */
    uint32_t timing_only;      /* non-zero: CONTROL.TIMING_ONLY set at reset */
    /* Fault injection armed at reset when fi_kind != VNPU_FI_NONE (the FI_* registers' power-on values). */
    uint32_t fi_kind;          /* enum vnpu_fi_kind */
    uint32_t fi_queue;         /* queue index, or 0xffffffff for any queue (not defaulted: 0 is queue 0) */
    uint32_t fi_after;         /* fire once at this job (1-based); 0 = use fi_rate_ppm */
    uint32_t fi_rate_ppm;      /* probability per job, parts per million (when fi_after == 0) */
    uint32_t fi_seed;          /* seed of the deterministic sequence */
    /*
     * Host memory the engine may hold at once for guest-controlled work: EXEC operands gathered into bounce
     * buffers (physically scattered in device memory). Each compute core gets an equal share; an op whose
     * operands need more fails (PROGRAM_INVALID) without allocating. Bytes, >= 1 MiB; default 1 GiB.
     */
    uint64_t host_mem_max;
} VnpuEngineConfig;

#define VNPU_CFG_ZERO 0xffffffffu

#define VNPU_ENGINE_DEFAULT_DEVMEM_SIZE (1ull << 30)
#define VNPU_ENGINE_DEFAULT_NUM_QUEUES 8u
#define VNPU_ENGINE_DEFAULT_RING_MAX 4096u
#define VNPU_ENGINE_DEFAULT_H2D_MBPS 13000u
#define VNPU_ENGINE_DEFAULT_D2H_MBPS 13000u
#define VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS 16000u
#define VNPU_ENGINE_DEFAULT_CMD_OVERHEAD_NS 1000u
#define VNPU_ENGINE_DEFAULT_NUM_CONTEXTS 64u
#define VNPU_ENGINE_DEFAULT_COMPUTE_CORES 2u
#define VNPU_ENGINE_DEFAULT_H2D_LATENCY_NS 1500u
#define VNPU_ENGINE_DEFAULT_D2H_LATENCY_NS 1500u
#define VNPU_ENGINE_DEFAULT_OP_OVERHEAD_NS 1000u
#define VNPU_ENGINE_DEFAULT_DEVMEM_GBPS 200u
#define VNPU_ENGINE_DEFAULT_HOST_MEM_MAX (1ull << 30)
#define VNPU_ENGINE_MIN_HOST_MEM_MAX (1ull << 20)

#define VNPU_ENGINE_MAX_QUEUES 16u
#define VNPU_ENGINE_MAX_CONTEXTS 1024u
#define VNPU_ENGINE_MAX_CORES 8u

/*
 * What the engine needs from its transport. dma_read, dma_write, clock_ns, schedule and interrupt are required;
 * the members after `interrupt` are optional (NULL = not needed).
 */
typedef struct VnpuEngineHost {
    void *opaque;
    /*
     * Read/write host memory at a DMA address (QEMU: guest memory through pci_dma_*; sim: process memory).
     * Return 0, or -1 on a bus error (the engine turns that into an error status, never a crash).
     * Called from the worker threads (data, command fetch, page-table walks) and from vnpu_engine_tick
     * (completion records), never with an engine lock held. Must be thread-safe, and must never wait for the
     * transport's own lock (reset and pause wait for accesses in progress while holding it; QEMU: the target
     * is checked to be RAM, which needs no BQL). Writes become visible in call order.
     */
    int (*dma_read)(void *opaque, uint64_t addr, void *buf, size_t len);
    int (*dma_write)(void *opaque, uint64_t addr, const void *buf, size_t len);
    /* The device clock in ns (QEMU: QEMU_CLOCK_VIRTUAL; sim: CLOCK_MONOTONIC). Any thread. */
    uint64_t (*clock_ns)(void *opaque);
    /*
     * Arrange for vnpu_engine_tick() to be called, in transport context, once clock_ns() >= deadline_ns.
     * A later call may replace an earlier deadline with an earlier or later one. Any thread, including from
     * inside vnpu_engine_tick; an engine lock may be held, so it must not call back into the engine.
     */
    void (*schedule)(void *opaque, uint64_t deadline_ns);
    /* Raise MSI-X vector `vector`. Called only from transport-side calls (tick). */
    void (*interrupt)(void *opaque, unsigned vector);
    /*
     * Optional. A guest programming mistake (bad command, bad doorbell, ...), as one line of text without a
     * trailing newline (QEMU: LOG_GUEST_ERROR + trace event). Any engine thread or transport context; an engine
     * lock may be held, so it must not call back into the engine.
     */
    void (*guest_error)(void *opaque, const char *msg);
    /*
     * Optional. Called on each worker thread when it starts and right before it exits (QEMU: register the
     * thread with RCU, which pci_dma_* relies on).
     */
    void (*worker_start)(void *opaque);
    void (*worker_stop)(void *opaque);
    /*
     * Optional, all three or none: the transport's threads for the engine's workers (QEMU: QemuThread, which
     * names the thread and blocks signals in it). thread_create starts fn(arg) as a joinable thread named
     * `name`, stores a handle in *thread and returns 0 or a negative errno; thread_join waits for it and frees
     * the handle; thread_detach lets it run to its end on its own and frees the handle. None: pthreads.
     * Called from vnpu_engine_create/destroy only.
     */
    int (*thread_create)(void *opaque, void **thread, const char *name, void *(*fn)(void *), void *arg);
    void (*thread_join)(void *opaque, void *thread);
    void (*thread_detach)(void *opaque, void *thread);
} VnpuEngineHost;

/*
 * Fill *cfg with defaults for every zero field; -EINVAL for an unsupported value. Idempotent: VNPU_CFG_ZERO stays
 * in the struct (the engine reads it as 0), so a finalized config can be finalized again or passed to create.
 */
int vnpu_engine_config_finalize(VnpuEngineConfig *cfg);

/*
 * Create an engine and start its worker threads. Returns 0 and sets *out, or a negative errno
 * (-EINVAL bad config, -ENOMEM device memory could not be allocated, -EAGAIN threads).
 */
int vnpu_engine_create(const VnpuEngineConfig *cfg, const VnpuEngineHost *host, VnpuEngine **out);

/*
 * Stop the workers, drop pending work (nothing more is written to host memory) and free the engine. Waits at
 * most VNPU_ENGINE_DESTROY_WAIT_MS for the workers: a worker stuck in a host access that does not return or in
 * a kernel between two cancellation checks is left behind with callbacks that reach nothing of the transport
 * (no DMA, no schedule, no interrupt), and frees the engine when it gets out. Either way the transport's
 * callbacks are never called again once this returns, except a host access that was already in progress.
 */
void vnpu_engine_destroy(VnpuEngine *e);
#define VNPU_ENGINE_DESTROY_WAIT_MS 2000u

/* BAR0 register access. Only 4-byte aligned 32-bit accesses have effect; others read 0 / are ignored. */
uint64_t vnpu_engine_mmio_read(VnpuEngine *e, uint64_t offset, unsigned size);
/*
 * The same, naming the reader (QEMU: vCPU index + 1; 0 for everything else). Reading the LO half of a 64-bit
 * register latches its HI half for that reader only, so concurrent readers on different CPUs never tear each
 * other's values (docs/device.md, "64-bit registers"). vnpu_engine_mmio_read() is reader 0. Readers at or
 * above VNPU_ENGINE_MAX_READERS share reader 0's latches.
 */
uint64_t vnpu_engine_mmio_read_as(VnpuEngine *e, uint64_t offset, unsigned size, unsigned reader);
#define VNPU_ENGINE_MAX_READERS 4097u
void vnpu_engine_mmio_write(VnpuEngine *e, uint64_t offset, uint64_t value, unsigned size);

/* Post every completion whose modelled time has come, raise interrupts, re-arm host->schedule if needed. */
void vnpu_engine_tick(VnpuEngine *e);

/*
 * Device reset (as VNPU_REG_RESET): queues disabled, in-flight jobs dropped (no completion is written for
 * them), MMU state, telemetry and registers to power-on values. Returns once no engine can issue another host
 * memory access for the dropped jobs (accesses in progress, at most one chunk each, have ended). Workers still
 * computing on dropped jobs hold STATUS.READY at 0 (and new fetches back) until they reach their next
 * cancellation check.
 */
void vnpu_engine_reset(VnpuEngine *e);

/*
 * Pause (non-zero) or resume the engine's host memory accesses (QEMU: while the VM is stopped). Pausing returns
 * once no worker is inside a dma_read/dma_write; until resumed, every further access waits (a device reset
 * still cancels them). Workers may keep computing on device memory. Transport context.
 */
void vnpu_engine_set_paused(VnpuEngine *e, int paused);

/*
 * Block until the engine has nothing it can do right now: every doorbell-visible command has been fetched and
 * run (or waits for a barrier, completion-ring space, or is hung by fault injection). Completions may still wait
 * for their modelled time (tick). For tests and the sim backend; never call it from a host callback.
 */
void vnpu_engine_wait_idle(VnpuEngine *e);

/*
 * Lockstep mode, for transports whose clock does not advance while the transport is blocked (QEMU under
 * -icount): a doorbell arms a tick at the earliest time any of its commands could complete, and every
 * vnpu_engine_tick() first waits (bounded, ~5 s of host time) until the workers have finished everything made
 * visible. Virtual time then never runs past a modelled completion while the host is still computing, so
 * completions appear at exactly the modelled time. Off by default: it blocks the transport while workers run.
 * Transport context.
 */
void vnpu_engine_set_lockstep(VnpuEngine *e, int on);

/* Number of MSI-X vectors the device needs (one per queue). */
unsigned vnpu_engine_num_vectors(const VnpuEngine *e);

/* Counters for monitoring and tests (the same values as the TELEMETRY registers); a consistent snapshot. */
typedef struct VnpuEngineStats {
    uint64_t jobs_completed;   /* completions posted with VNPU_CPL_OK */
    uint64_t jobs_failed;      /* completions posted with any other status */
    uint64_t cmds_executed;
    uint64_t h2d_bytes, d2h_bytes;
    uint64_t flops;
    uint64_t h2d_busy_ns, compute_busy_ns, d2h_busy_ns; /* modelled busy time per engine (compute: all cores) */
    /* ---- v1 ---- */
    uint64_t irqs;             /* interrupts raised */
    uint64_t mapped_bytes;     /* as VNPU_TEL_MAPPED_BYTES */
    uint64_t mmu_faults;       /* translation faults */
    uint64_t faults_injected;  /* as VNPU_REG_FI_COUNT */
    uint64_t host_mem_peak;    /* most host memory held at once for bounce buffers (see host_mem_max) */
} VnpuEngineStats;
void vnpu_engine_get_stats(VnpuEngine *e, VnpuEngineStats *out);

#ifdef __cplusplus
}
#endif

#endif /* VNPU_ENGINE_H */
