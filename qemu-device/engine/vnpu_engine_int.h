/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine library: internal state shared by the engine's translation units (engine.c register file and
 * completion posting, cp.c command processor, dma.c scatter-gather DMA, compute.c, timing.c). Not installed.
 *
 * Locking: one mutex, VnpuEngine.lock, protects everything below except the device memory contents (touched only
 * by the worker thread) and the fields marked "atomic". No host callback that touches guest memory
 * (dma_read/dma_write) is ever called with the lock held: in QEMU such an access may need the BQL (DMA aimed at
 * MMIO), and the BQL holder may be waiting for our lock in an MMIO handler. host->schedule is called with the
 * lock held (it only arms a timer); host->interrupt is called without it.
 */
#ifndef VNPU_ENGINE_INT_H
#define VNPU_ENGINE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vnpu_engine.h"
#include "vnpu_hw.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the vnpu engine assumes a little-endian host (ring and descriptor layouts are little-endian)"
#endif

#define VNPU_ENGINE_MAX_QUEUES 16u
#define VNPU_ENGINE_RING_MAX_LIMIT 65536u
#define VNPU_ENGINE_DEVMEM_MAX (1ull << 40)
#define VNPU_NO_DEADLINE UINT64_MAX

/* Execution units of the timing model; each runs its commands in order. */
typedef enum VnpuUnit {
    VNPU_UNIT_H2D,
    VNPU_UNIT_COMPUTE,
    VNPU_UNIT_D2H,
    VNPU_UNIT_COUNT,
    VNPU_UNIT_NONE = VNPU_UNIT_COUNT, /* NOP and failed commands: no engine is occupied */
} VnpuUnit;

/* A finished job waiting for its modelled time (and for completion-ring space) to be posted. */
typedef struct VnpuCompletion {
    uint64_t tag;
    uint64_t t_start;
    uint64_t deadline;
    uint32_t sq_index;
    uint16_t status;
} VnpuCompletion;

/* The job whose commands the worker is fetching (no VNPU_CMD_F_LAST seen yet). */
typedef struct VnpuJob {
    uint32_t ncmds;     /* commands consumed so far; 0 = no job open */
    uint16_t status;    /* first failure, or VNPU_CPL_OK */
    uint32_t sq_index;  /* failing command, or the latest command */
    uint64_t tag;
    uint64_t t_start;   /* modelled start of the first command */
    uint64_t t_end;     /* modelled end of the latest command */
} VnpuJob;

typedef struct VnpuQueue {
    unsigned id;
    /* Registers as the driver wrote them; latched into the fields below by ENABLE. */
    uint32_t sq_base_lo, sq_base_hi, sq_size;
    uint32_t cq_base_lo, cq_base_hi, cq_size;
    uint32_t msix_vector, ctrl;

    bool enabled;
    bool draining;      /* disabled with ABORTED completions still to post */
    uint32_t error;     /* VNPU_QERR_* */
    uint64_t sq_base, cq_base;
    uint32_t sq_entries, cq_entries, vector;
    uint32_t sq_tail, sq_head, cq_head, cq_tail;
    uint16_t phase;
    uint32_t jobs_done;
    uint32_t gen;       /* atomic: bumped by enable/disable/reset; stale worker results are dropped */
    uint64_t *db_time;  /* [ring_max]: device clock at which each SQ slot was made visible by a doorbell */

    VnpuJob job;
    VnpuCompletion *pending; /* FIFO of ring_max + 1 entries */
    uint32_t pend_head, pend_count;
} VnpuQueue;

struct VnpuEngine {
    VnpuEngineConfig cfg;
    VnpuEngineHost host;
    uint8_t *devmem;

    pthread_mutex_t lock;
    pthread_cond_t work_cond;   /* worker: something may be fetchable, or stopping */
    pthread_cond_t idle_cond;   /* vnpu_engine_wait_idle */
    pthread_t worker;
    bool stopping;              /* atomic */
    bool worker_idle;
    bool lockstep;              /* see vnpu_engine_set_lockstep */
    VnpuQueue *active_queue;    /* queue whose command the worker is running outside the lock */
    unsigned rr_next;

    uint32_t scratch;
    uint32_t clock_hi_latch;
    uint64_t busy_until[VNPU_UNIT_COUNT];
    uint64_t armed;             /* deadline last passed to host->schedule, VNPU_NO_DEADLINE if none */
    VnpuEngineStats stats;

    VnpuQueue queues[VNPU_ENGINE_MAX_QUEUES];
};

/* What executing one command produced (cp.c, dma.c, compute.c). */
typedef struct VnpuCmdResult {
    uint16_t status;
    VnpuUnit unit;
    uint64_t bytes;     /* DMA: bytes moved */
    uint64_t flops;     /* MATMUL: 2 * m * n * k */
} VnpuCmdResult;

/* Lets long-running work notice that its queue was disabled/reset or the engine is stopping. */
typedef struct VnpuExec {
    VnpuEngine *e;
    VnpuQueue *q;
    uint32_t gen;
} VnpuExec;

/* engine.c */
void vnpu_guest_error(VnpuEngine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool vnpu_exec_cancelled(const VnpuExec *x);
bool vnpu_devmem_range_ok(const VnpuEngine *e, uint64_t addr, uint64_t len);
void vnpu_queue_push_completion(VnpuEngine *e, VnpuQueue *q, const VnpuJob *job);
void vnpu_queue_set_error(VnpuEngine *e, VnpuQueue *q, uint32_t err);
bool vnpu_queue_fetchable(const VnpuQueue *q);
void vnpu_engine_rearm(VnpuEngine *e);

/* cp.c */
void *vnpu_cp_worker_main(void *opaque);

/* dma.c */
void vnpu_dma_execute(const VnpuExec *x, const struct vnpu_hw_dma *d, bool to_device, VnpuCmdResult *r);

/* compute.c */
void vnpu_compute_matmul(const VnpuExec *x, const struct vnpu_hw_matmul *mm, VnpuCmdResult *r);

/* timing.c */
uint64_t vnpu_timing_duration(const VnpuEngineConfig *cfg, const VnpuCmdResult *r);
void vnpu_timing_account(VnpuEngine *e, VnpuJob *job, uint64_t visible_ns, const VnpuCmdResult *r,
                         bool executed);

#endif /* VNPU_ENGINE_INT_H */
