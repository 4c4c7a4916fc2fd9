/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine library: internal state shared by the engine's translation units (engine.c register file, queues
 * and completion posting; cp.c command processor, job state machine and engine workers; dma.c scatter-gather
 * DMA; compute.c compute commands; mmu.c device MMU; timing.c timing model). Not installed.
 *
 * Threads: the command processor (CP) fetches commands into jobs and dispatches each job's commands onto the
 * in-order FIFO of the engine that runs them (H2D, D2H, compute). Each engine's worker takes its FIFO head once
 * the command before it in the same job has finished (and, for a job's first command with F_BARRIER, once every
 * earlier job of the queue has finished). Modelled times are computed in FIFO order per engine, from modelled
 * times only, so they do not depend on host speed.
 *
 * Locking: VnpuEngine.lock protects everything below except device memory contents, the MMU caches (mmu_lock, a
 * leaf lock: never held while taking `lock` or touching host memory) and fields marked "atomic". No host
 * callback that touches guest memory (dma_read/dma_write) is ever called with a lock held: in QEMU such an access
 * may need the BQL (DMA aimed at MMIO), and the BQL holder may be waiting for our lock in an MMIO handler.
 * host->schedule is called with the lock held (it only arms a timer); host->interrupt is called without it.
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

#define VNPU_ENGINE_RING_MAX_LIMIT 65536u
#define VNPU_ENGINE_DEVMEM_MAX (1ull << 40)
#define VNPU_NO_DEADLINE UINT64_MAX
#define VNPU_TLB_ENTRIES 64u

/* Engines of the timing model; each takes its commands in fetch order. */
typedef enum VnpuUnit {
    VNPU_UNIT_H2D,
    VNPU_UNIT_COMPUTE,
    VNPU_UNIT_D2H,
    VNPU_UNIT_COUNT,
    VNPU_UNIT_NONE = VNPU_UNIT_COUNT, /* NOP and commands rejected at fetch: handled inline, no engine */
} VnpuUnit;

typedef struct VnpuJob VnpuJob;

/* One command of a job. */
typedef struct VnpuSlot {
    struct vnpu_hw_cmd cmd;
    VnpuJob *job;
    struct VnpuSlot *unit_next; /* FIFO link of the engine that runs it */
    uint32_t idx;               /* position in the job */
    uint32_t sq_index;
    VnpuUnit unit;
    uint16_t pre_status;        /* failure found at fetch (unit NONE) */
    /*
     * The engine time it booked in the timing model (timing.c): [resv_prev, resv_end) is what a job that is
     * aborted before resv_end gives back, if nothing was booked on that engine after it (resv_seq).
     */
    uint64_t resv_seq;          /* 0: nothing booked */
    uint64_t resv_prev, resv_end;
    uint8_t resv_core;
} VnpuSlot;

typedef struct VnpuQueue VnpuQueue;

/*
 * A completion record waiting in its queue's posting list (q->done, by key, then job fetch order, then sub): the
 * job's final record, or the intermediate record of a SIGNAL command it has reached.
 */
#define VNPU_POST_FINAL 0xff
typedef struct VnpuPost {
    struct VnpuPost *next;
    VnpuJob *j;
    uint64_t key;               /* device clock it may be posted at (ABORTED: 0) */
    uint8_t sub;                /* SIGNAL records: 0.. in command order; VNPU_POST_FINAL */
    bool queued;                /* in q->done */
    /* SIGNAL records: captured when the SIGNAL was reached */
    uint32_t sq_index;
    uint64_t tag;
    uint64_t busy_ns[VNPU_UNIT_COUNT];
} VnpuPost;

struct VnpuJob {
    VnpuQueue *q;
    VnpuJob *prev, *next;       /* q->jobs, fetch order */
    VnpuPost final;             /* the job's own record, queued in q->done once it has finished */
    VnpuPost sig[VNPU_MAX_SIGNALS_PER_JOB]; /* records of the SIGNALs it reached */
    uint8_t nsig;               /* records owed for fetched SIGNALs (<= max): counted in q->records */
    uint8_t sig_reached, sig_posted;
    uint64_t seq;               /* global fetch order */
    unsigned refs;              /* queue list + FIFO entries + running worker */
    VnpuSlot *cmds;
    uint32_t ncmds, cap;
    uint32_t next_cmd;          /* every command before it has finished */
    uint16_t ctx_id;
    bool ctx_ok;
    uint64_t pt_root;           /* snapshot of the context's level-1 table at dispatch */
    uint32_t ctx_gen;           /* the context's invalidation generation when that snapshot was taken */
    uint64_t visible;           /* doorbell time of the job's last command */

    bool running;               /* a worker executes cmds[next_cmd] */
    bool done;                  /* finished; its completion waits in q->done */
    bool hung;                  /* fault injection: never finishes */
    bool dropped;               /* device reset / re-enable: no completion at all */
    int cancel;                 /* atomic: abort running work (queue disabled/reset, device reset) */
    uint32_t epoch;             /* e->epoch when fetched: a device reset refuses its host memory accesses */
    bool barrier;
    uint32_t barrier_wait;      /* earlier jobs of the queue not finished yet */
    uint64_t barrier_ready;     /* max modelled end of earlier jobs of the queue */
    int32_t hang_at;            /* fault injection: command index at which the job hangs, -1 none */
    uint32_t fi_kind;           /* fault injected into this job (enum vnpu_fi_kind) */

    uint16_t status;
    uint32_t fail_index;        /* ring index of the failing command */
    uint64_t fault_addr;
    bool started;
    uint64_t t_start, t_end;    /* modelled */
    uint64_t busy_ns[VNPU_UNIT_COUNT];
};

struct VnpuQueue {
    unsigned id;
    /* Registers as the driver wrote them; latched into the fields below by ENABLE. */
    uint32_t sq_base_lo, sq_base_hi, sq_size;
    uint32_t cq_base_lo, cq_base_hi, cq_size;
    uint32_t msix_vector, ctrl, priority_reg;

    bool enabled;
    bool draining;      /* disabled with ABORTED completions still to post */
    uint32_t error;     /* VNPU_QERR_* */
    uint64_t sq_base, cq_base;
    uint32_t sq_entries, cq_entries, vector, priority;
    uint32_t sq_tail, sq_head, cq_head, cq_tail;
    uint16_t phase;
    uint32_t jobs_done;
    uint32_t gen;       /* bumped by enable/disable/reset: the CP drops a fetch that raced with it */
    uint64_t *db_time;  /* [ring_max]: device clock at which each SQ slot was made visible by a doorbell */

    VnpuJob *open;      /* job being fetched (no F_LAST yet) */
    VnpuJob *jobs_head, *jobs_tail; /* dispatched and not yet posted */
    uint32_t njobs;
    VnpuPost *done;     /* records to post, sorted by (key, job seq, sub) */
    /*
     * Records owed by fetched jobs not yet posted (each job 1 + its fetched SIGNALs): a new job is fetched only
     * while this is below the CQ size, a SIGNAL only while it still fits (or is the fetching job's own backlog).
     */
    uint32_t records;
    bool sig_wait;      /* the next command is a SIGNAL that does not fit yet: wait for records to post */
    uint64_t end_max;   /* max modelled end of the queue's finished jobs */
    uint64_t cq_resume_ns; /* device clock when the record bound (records < CQ size) last stopped holding it back */
};

typedef struct VnpuFifo {
    VnpuSlot *head, *tail;
} VnpuFifo;

/*
 * A cached leaf entry, tagged with the level-1 table it was walked from and the context's invalidation
 * generation the walking job was fetched in: it serves only jobs with the same root and generation, so a job
 * fetched before an MMU_INVALIDATE never serves (or plants) stale translations for jobs fetched after it.
 */
typedef struct VnpuTlbEntry {
    uint64_t vpn1;      /* virtual page number + 1; 0 = empty */
    uint64_t pte;
    uint64_t root;
    uint32_t gen;
} VnpuTlbEntry;

/* One reader's high-half latches of the 64-bit register pairs (engine.c). */
#define VNPU_LATCH_PAIRS 16u
typedef struct VnpuLatch {
    uint32_t hi[VNPU_LATCH_PAIRS];
    uint32_t armed;     /* bit p: hi[p] was latched by a LO read and not yet returned */
} VnpuLatch;

typedef struct VnpuCtxCache {
    bool entry_valid;   /* `entry` holds the context-table entry */
    struct vnpu_hw_ctx entry;
    uint32_t gen;       /* bumped by invalidation */
    VnpuTlbEntry tlb[VNPU_TLB_ENTRIES];
} VnpuCtxCache;

struct VnpuEngine {
    VnpuEngineConfig cfg;
    VnpuEngineHost host;
    uint8_t *devmem;

    pthread_mutex_t lock;
    pthread_cond_t work_cond;   /* workers: something may have changed */
    pthread_cond_t idle_cond;   /* a worker went to sleep */
    void *threads[3 + VNPU_ENGINE_MAX_CORES]; /* CP, H2D, D2H, cores: host->thread_create handles */
    unsigned nthreads;
    unsigned threads_alive;     /* workers that have not passed vnpu_worker_exit() */
    bool abandoned;             /* destroy gave up waiting: the last worker out frees the engine */
    bool stopping;              /* atomic */
    bool resetting;             /* device reset: workers still hold dropped jobs; nothing is fetched (STATUS.READY 0) */

    /*
     * Host memory gate (gate_lock, a leaf lock like mmu_lock): every worker-side dma_read/dma_write goes through
     * vnpu_host_dma(), which refuses accesses of an older epoch (bumped by device reset), holds them while the
     * engine is paused (VM stopped), and counts those in progress so that reset and pause can wait for them.
     */
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    uint32_t epoch;             /* written under gate_lock, read atomically */
    unsigned dma_inflight;
    bool paused;
    bool lockstep;
    /*
     * Lockstep: the CP fetches (and recounts) only while a tick has this open, so what it fetches, in which
     * order, and when SQ_HEAD/telemetry change, is decided at tick times: a function of the guest's actions.
     */
    bool fetch_window;
    bool cp_busy;               /* CP is fetching outside the lock */
    bool compute_dispatching;   /* a core is preparing the compute FIFO head (keeps modelled order) */
    unsigned running;           /* commands executing outside the lock */
    unsigned rr_next;
    uint64_t seq;

    VnpuFifo fifo[VNPU_UNIT_COUNT];
    uint64_t busy_until[VNPU_UNIT_COUNT];  /* H2D, D2H (COMPUTE unused: per core below) */
    uint64_t core_busy_until[VNPU_ENGINE_MAX_CORES];
    uint64_t resv_seq;                     /* bookings so far (timing.c) */
    uint64_t resv_last[VNPU_UNIT_COUNT + VNPU_ENGINE_MAX_CORES]; /* last booking per engine: H2D, -, D2H, cores */
    /*
     * Modelled times at which fetching could resume: CONTROL.FETCH_PAUSE cleared (fetch_resume_ns), and per
     * queue the completion-ring back-pressure lifted (VnpuQueue.cq_resume_ns). A job's modelled start is never
     * before the time it could have been fetched.
     */
    uint64_t fetch_resume_ns;

    uint64_t host_mem_used;     /* atomic: bounce bytes held by all cores */
    uint64_t host_mem_peak;     /* atomic: most of it at once */
    uint32_t scratch, control;
    VnpuLatch *latch;           /* [latch_readers], per reader of 64-bit registers */
    unsigned latch_readers;
    uint64_t armed;             /* deadline last passed to host->schedule, VNPU_NO_DEADLINE if none */
    VnpuEngineStats stats;

    /* Device MMU */
    uint32_t ctx_table_lo;
    uint64_t ctx_table;
    uint32_t mmu_faults;
    uint64_t last_fault;
    uint32_t last_fault_ctx;
    uint64_t *ctx_mapped;       /* [num_contexts] bytes mapped, last count */
    bool *ctx_recount;          /* [num_contexts] count pending (CP) */
    bool recount_pending;
    pthread_mutex_t mmu_lock;
    VnpuCtxCache *ctx;          /* [num_contexts], under mmu_lock */
    uint64_t ctx_table_mmu;     /* copy of ctx_table under mmu_lock */

    /* Fault injection registers */
    uint32_t fi_kind, fi_queue, fi_after, fi_rate_ppm, fi_seed, fi_ctrl, fi_count;
    uint32_t fi_jobs;           /* matching jobs since arming */
    uint32_t fi_rng;

    VnpuQueue queues[VNPU_ENGINE_MAX_QUEUES];
};

/* Execution context of one command outside the lock. */
typedef struct VnpuExec {
    VnpuEngine *e;
    VnpuJob *j;
    VnpuSlot *s;
} VnpuExec;

/* What a command produced. */
typedef struct VnpuCmdResult {
    uint16_t status;
    uint64_t fault_addr;    /* VNPU_CPL_MMU_FAULT */
    uint64_t bytes;         /* DMA: bytes moved */
    uint64_t flops;         /* compute */
    uint64_t work_ns;       /* modelled duration beyond cmd_overhead_ns (compute: from validation) */
} VnpuCmdResult;

/* engine.c */
/*
 * A worker's access to host memory on behalf of work fetched in `epoch`: waits while the engine is paused,
 * fails (-1, nothing accessed) once a device reset has moved past that epoch. No engine lock may be held.
 */
int vnpu_host_dma(VnpuEngine *e, uint32_t epoch, uint64_t addr, void *buf, size_t len, bool write);
uint32_t vnpu_epoch(VnpuEngine *e);
/* Whether a device reset is over (no worker holds a dropped job any more); clears `resetting`. Lock held. */
bool vnpu_reset_settled(VnpuEngine *e);
void vnpu_guest_error(VnpuEngine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool vnpu_exec_cancelled(const VnpuExec *x);
bool vnpu_devmem_range_ok(const VnpuEngine *e, uint64_t addr, uint64_t len);
void vnpu_queue_set_error(VnpuEngine *e, VnpuQueue *q, uint32_t err);
bool vnpu_queue_fetchable(const VnpuEngine *e, const VnpuQueue *q);
void vnpu_engine_rearm(VnpuEngine *e);
bool vnpu_engine_quiescent(VnpuEngine *e);
/* Whether the CP may fetch or recount now (always, except in lockstep between ticks). Lock held. */
static inline bool vnpu_cp_may_run(const VnpuEngine *e)
{
    return !e->lockstep || e->fetch_window;
}

/* A worker thread's last call: the last one out of an abandoned engine frees it. Takes and drops e->lock. */
void vnpu_worker_exit(VnpuEngine *e);

/* cp.c */
void *vnpu_cp_main(void *opaque);
void *vnpu_h2d_main(void *opaque);
void *vnpu_d2h_main(void *opaque);
void *vnpu_core_main(void *opaque);
bool vnpu_unit_head_ready(VnpuEngine *e, VnpuUnit u);
void vnpu_job_unref(VnpuJob *j);
void vnpu_job_finish(VnpuEngine *e, VnpuJob *j);
void vnpu_job_abort(VnpuEngine *e, VnpuJob *j);
void vnpu_job_drop(VnpuEngine *e, VnpuJob *j);
void vnpu_queue_abort_all(VnpuEngine *e, VnpuQueue *q);
/* q owes n records fewer from device clock `when` on (see VnpuQueue.cq_resume_ns). Lock held. */
void vnpu_queue_records_sub(VnpuQueue *q, uint32_t n, uint64_t when);
void vnpu_queue_drop_all(VnpuEngine *e, VnpuQueue *q);
/* The queue's list of dispatched, not yet posted jobs (caller holds e->lock). */
void vnpu_queue_append(VnpuQueue *q, VnpuJob *j);
void vnpu_queue_unlink(VnpuQueue *q, VnpuJob *j);
/*
 * Detach the job being fetched (no F_LAST yet), mark it ABORTED and append it to the job list; returns it, or
 * NULL if there is none. The caller decides when it is finished. Caller holds e->lock.
 */
VnpuJob *vnpu_queue_abort_open(VnpuEngine *e, VnpuQueue *q);
void vnpu_fi_reset(VnpuEngine *e);

/* dma.c */
void vnpu_dma_execute(const VnpuExec *x, const struct vnpu_hw_dma *d, bool to_device, VnpuCmdResult *r);

/* compute.c: prepare (validate, cost) in FIFO order, then run. */
typedef struct VnpuComputePrep {
    void *code;
    uint64_t *bindings;
} VnpuComputePrep;
void vnpu_compute_prepare(const VnpuExec *x, VnpuComputePrep *p, VnpuCmdResult *r);
void vnpu_compute_run(const VnpuExec *x, VnpuComputePrep *p, VnpuCmdResult *r);
void vnpu_compute_release(VnpuComputePrep *p);

/* mmu.c */
int vnpu_mmu_init(VnpuEngine *e);
void vnpu_mmu_fini(VnpuEngine *e);
void vnpu_mmu_flush(VnpuEngine *e, uint32_t ctx); /* UINT32_MAX: all; caller holds e->lock */
/* Read (cached) context entry; false if the context is invalid or unreadable. No lock held. */
bool vnpu_mmu_ctx(VnpuEngine *e, uint32_t epoch, uint16_t ctx_id, uint64_t *pt_root, uint32_t *gen);
/*
 * Translate [va, va + len) of the job's space: on success *pa is the device-physical address of va and *run the
 * length (<= len, > 0) of the physically contiguous run starting there. On a fault returns false and *fault the
 * faulting virtual address. No lock held.
 */
bool vnpu_mmu_translate(const VnpuExec *x, uint64_t va, uint64_t len, bool write, uint64_t *pa, uint64_t *run,
                        uint64_t *fault);
/* Check every page of [va, va + len); false with *fault on the first bad page. */
bool vnpu_mmu_check(const VnpuExec *x, uint64_t va, uint64_t len, bool write, uint64_t *fault);
/* Copy between device virtual memory and a host buffer (bounce path). */
bool vnpu_mmu_copy(const VnpuExec *x, uint64_t va, void *buf, uint64_t len, bool to_device, uint64_t *fault);
uint64_t vnpu_mmu_count_mapped(VnpuEngine *e, uint32_t epoch, uint64_t pt_root);
void vnpu_mmu_note_fault(VnpuEngine *e, uint16_t ctx, uint64_t va); /* caller holds e->lock */

/* timing.c */
uint64_t vnpu_timing_dma_ns(const VnpuEngineConfig *cfg, bool to_device, uint64_t bytes);
uint64_t vnpu_timing_matmul_ns(const VnpuEngineConfig *cfg, uint64_t flops, uint64_t bytes);
/*
 * Account a command of j that ran (ok == status OK) on unit u: books its engine; s is the command (NULL for
 * unit NONE), which remembers the booking for vnpu_timing_release().
 */
void vnpu_timing_account(VnpuEngine *e, VnpuJob *j, VnpuUnit u, VnpuSlot *s, bool executed, bool ok,
                         uint64_t work_ns);
/*
 * j is aborted or dropped at device clock `now`: give back the engine time its commands booked beyond now, on
 * every engine where nothing was booked after them. Lock held.
 */
void vnpu_timing_release(VnpuEngine *e, VnpuJob *j, uint64_t now);

/* Reserved fields must be zero: true if all `len` bytes at p are. */
static inline bool vnpu_all_zero(const void *p, size_t len)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < len; i++) {
        if (b[i]) {
            return false;
        }
    }
    return true;
}

#endif /* VNPU_ENGINE_INT_H */
