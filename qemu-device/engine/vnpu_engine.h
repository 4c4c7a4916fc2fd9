/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine library: the device's behaviour (register file, command processor, scatter-gather DMA engine,
 * compute engine, timing model), independent of any transport. The QEMU device (qemu-device/vnpu_pci.c) and
 * libruntime's in-process "sim" backend both drive this same code; it includes no QEMU header.
 *
 * Threads and locks
 *  - vnpu_engine_mmio_read/_write, vnpu_engine_tick and vnpu_engine_reset are "transport-side" calls: the
 *    transport serialises them (QEMU: the BQL; sim: its own mutex). They never block for long and never run
 *    commands themselves: a doorbell only wakes the engine's worker thread.
 *  - The worker thread (created by vnpu_engine_create) fetches commands, moves data with host->dma_read/
 *    dma_write, computes, and asks the transport for a tick at the modelled completion time with
 *    host->schedule. It never calls host->interrupt and never takes the transport's lock.
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

/* Device configuration, fixed for the engine's lifetime. Zero fields take the defaults below. */
typedef struct VnpuEngineConfig {
    uint64_t devmem_size;      /* bytes of device-local memory, multiple of 4 KiB, <= 1 TiB; default 256 MiB */
    uint32_t num_queues;       /* hardware queues, 1..16; default 1 */
    uint32_t ring_max;         /* largest ring (entries), power of two 2..65536; default 4096 */
    uint32_t h2d_mbps;         /* H2D DMA bandwidth, 10^6 B/s; default 4000 */
    uint32_t d2h_mbps;         /* D2H DMA bandwidth, 10^6 B/s; default 4000 */
    uint32_t compute_gflops;   /* compute throughput, 10^9 FLOP/s; default 500 */
    uint32_t cmd_overhead_ns;  /* fixed cost per command; default 2000 */
} VnpuEngineConfig;

#define VNPU_ENGINE_DEFAULT_DEVMEM_SIZE (256ull << 20)
#define VNPU_ENGINE_DEFAULT_RING_MAX 4096u
#define VNPU_ENGINE_DEFAULT_H2D_MBPS 4000u
#define VNPU_ENGINE_DEFAULT_D2H_MBPS 4000u
#define VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS 500u
#define VNPU_ENGINE_DEFAULT_CMD_OVERHEAD_NS 2000u

/*
 * What the engine needs from its transport. dma_read, dma_write, clock_ns, schedule and interrupt are required;
 * the members after `interrupt` are optional (NULL = not needed) and were added after v0's first draft, so a
 * transport that fills the struct with designated initialisers keeps working.
 */
typedef struct VnpuEngineHost {
    void *opaque;
    /*
     * Read/write host memory at a DMA address (QEMU: guest memory through pci_dma_*; sim: process memory).
     * Return 0, or -1 on a bus error (the engine turns that into an error status, never a crash).
     * Called from the worker thread (data, command fetch) and from vnpu_engine_tick (completion records).
     */
    int (*dma_read)(void *opaque, uint64_t addr, void *buf, size_t len);
    int (*dma_write)(void *opaque, uint64_t addr, const void *buf, size_t len);
    /* The device clock in ns (QEMU: QEMU_CLOCK_VIRTUAL; sim: CLOCK_MONOTONIC). Any thread. */
    uint64_t (*clock_ns)(void *opaque);
    /*
     * Arrange for vnpu_engine_tick() to be called, in transport context, once clock_ns() >= deadline_ns.
     * A later call may replace an earlier deadline with an earlier or later one. Any thread, including from
     * inside vnpu_engine_tick.
     */
    void (*schedule)(void *opaque, uint64_t deadline_ns);
    /* Raise MSI-X vector `vector`. Called only from transport-side calls (tick, mmio_write). */
    void (*interrupt)(void *opaque, unsigned vector);
    /*
     * Optional. A guest programming mistake (bad command, bad doorbell, ...), as one line of text without a
     * trailing newline (QEMU: LOG_GUEST_ERROR + trace event). Worker thread or transport context; the engine's
     * lock may be held, so it must not call back into the engine.
     */
    void (*guest_error)(void *opaque, const char *msg);
    /*
     * Optional. Called on the worker thread when it starts and right before it exits (QEMU: register the thread
     * with RCU, which pci_dma_* relies on).
     */
    void (*worker_start)(void *opaque);
    void (*worker_stop)(void *opaque);
} VnpuEngineHost;

/* Fill *cfg with defaults for every zero field; returns -EINVAL (negative errno) for an unsupported value. */
int vnpu_engine_config_finalize(VnpuEngineConfig *cfg);

/*
 * Create an engine and start its worker thread. Returns 0 and sets *out, or a negative errno
 * (-EINVAL bad config, -ENOMEM device memory could not be allocated).
 */
int vnpu_engine_create(const VnpuEngineConfig *cfg, const VnpuEngineHost *host, VnpuEngine **out);

/* Stop the worker, drop pending work (nothing more is written to host memory) and free the engine. */
void vnpu_engine_destroy(VnpuEngine *e);

/* BAR0 register access. Only 4-byte aligned 32-bit accesses have effect; others read 0 / are ignored. */
uint64_t vnpu_engine_mmio_read(VnpuEngine *e, uint64_t offset, unsigned size);
void vnpu_engine_mmio_write(VnpuEngine *e, uint64_t offset, uint64_t value, unsigned size);

/* Post every completion whose modelled time has come, raise interrupts, re-arm host->schedule if needed. */
void vnpu_engine_tick(VnpuEngine *e);

/* Device reset (as VNPU_REG_RESET): queues disabled, in-flight jobs dropped, registers to power-on values. */
void vnpu_engine_reset(VnpuEngine *e);

/*
 * Block until the worker thread has nothing it can do: every doorbell-visible command has been fetched and run,
 * or the worker waits for completion-ring space. Completions may still wait for their modelled time (tick).
 * For tests and the sim backend; never call it from a host callback.
 */
void vnpu_engine_wait_idle(VnpuEngine *e);

/*
 * Lockstep mode, for transports whose clock does not advance while the transport is blocked (QEMU under
 * -icount): a doorbell arms a tick at the earliest time any of its commands could complete, and every
 * vnpu_engine_tick() first waits (bounded, ~5 s of host time) for the worker to finish the commands already made
 * visible. Virtual time then never runs past a modelled completion while the host is still computing, so
 * completions appear at exactly the modelled time. Off by default: it blocks the transport while the worker runs.
 * Transport context.
 */
void vnpu_engine_set_lockstep(VnpuEngine *e, int on);

/* Number of MSI-X vectors the device needs (one per queue). */
unsigned vnpu_engine_num_vectors(const VnpuEngine *e);

/* Counters for monitoring and tests; a consistent snapshot. */
typedef struct VnpuEngineStats {
    uint64_t jobs_completed;
    uint64_t jobs_failed;
    uint64_t cmds_executed;
    uint64_t h2d_bytes, d2h_bytes;
    uint64_t flops;
    uint64_t h2d_busy_ns, compute_busy_ns, d2h_busy_ns; /* modelled busy time per engine */
} VnpuEngineStats;
void vnpu_engine_get_stats(VnpuEngine *e, VnpuEngineStats *out);

#ifdef __cplusplus
}
#endif

#endif /* VNPU_ENGINE_H */
