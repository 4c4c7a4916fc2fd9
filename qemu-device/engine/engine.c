/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: lifetime, BAR0 register file, queue state machine and completion posting.
 *
 * The command processor and the engines' workers live in cp.c; this file is the transport-side half: MMIO
 * accesses, vnpu_engine_tick() and reset all run serialised by the transport and only take the engine lock
 * briefly (lockstep ticks and device reset wait, bounded, for the workers).
 */
#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "vnpu_engine_int.h"

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

void vnpu_guest_error(VnpuEngine *e, const char *fmt, ...)
{
    char msg[192];
    va_list ap;

    if (!e->host.guest_error) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->host.guest_error(e->host.opaque, msg);
}

uint32_t vnpu_epoch(VnpuEngine *e)
{
    return __atomic_load_n(&e->epoch, __ATOMIC_ACQUIRE);
}

int vnpu_host_dma(VnpuEngine *e, uint32_t epoch, uint64_t addr, void *buf, size_t len, bool write)
{
    int rc;

    pthread_mutex_lock(&e->gate_lock);
    while (e->paused && epoch == e->epoch) {
        pthread_cond_wait(&e->gate_cond, &e->gate_lock); /* the VM is stopped: no DMA until it runs */
    }
    if (epoch != e->epoch) {
        pthread_mutex_unlock(&e->gate_lock);
        return -1; /* work from before a device reset: it must not touch host memory any more */
    }
    e->dma_inflight++;
    pthread_mutex_unlock(&e->gate_lock);
    rc = write ? e->host.dma_write(e->host.opaque, addr, buf, len) : e->host.dma_read(e->host.opaque, addr, buf, len);
    pthread_mutex_lock(&e->gate_lock);
    if (!--e->dma_inflight) {
        pthread_cond_broadcast(&e->gate_cond);
    }
    pthread_mutex_unlock(&e->gate_lock);
    return rc;
}

/* Close the gate on every access begun before now and wait for those in progress (one chunk at most). */
static void gate_new_epoch(VnpuEngine *e)
{
    pthread_mutex_lock(&e->gate_lock);
    __atomic_store_n(&e->epoch, e->epoch + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&e->gate_cond); /* paused accesses wake up and fail */
    while (e->dma_inflight) {
        pthread_cond_wait(&e->gate_cond, &e->gate_lock);
    }
    pthread_mutex_unlock(&e->gate_lock);
}

bool vnpu_reset_settled(VnpuEngine *e)
{
    if (e->resetting && !e->running && !e->cp_busy && !e->compute_dispatching) {
        e->resetting = false;
    }
    return !e->resetting;
}

bool vnpu_exec_cancelled(const VnpuExec *x)
{
    return __atomic_load_n(&x->j->cancel, __ATOMIC_RELAXED) || __atomic_load_n(&x->e->stopping, __ATOMIC_RELAXED);
}

bool vnpu_devmem_range_ok(const VnpuEngine *e, uint64_t addr, uint64_t len)
{
    /* Written so that no intermediate sum can wrap. */
    return len <= e->cfg.devmem_size && addr <= e->cfg.devmem_size - len;
}

#define DEFAULT(f, d) \
    do { \
        if (!cfg->f) { \
            cfg->f = (d); \
        } \
    } while (0)

int vnpu_engine_config_finalize(VnpuEngineConfig *cfg)
{
    DEFAULT(devmem_size, VNPU_ENGINE_DEFAULT_DEVMEM_SIZE);
    DEFAULT(num_queues, VNPU_ENGINE_DEFAULT_NUM_QUEUES);
    DEFAULT(ring_max, VNPU_ENGINE_DEFAULT_RING_MAX);
    DEFAULT(h2d_mbps, VNPU_ENGINE_DEFAULT_H2D_MBPS);
    DEFAULT(d2h_mbps, VNPU_ENGINE_DEFAULT_D2H_MBPS);
    DEFAULT(compute_gflops, VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS);
    DEFAULT(cmd_overhead_ns, VNPU_ENGINE_DEFAULT_CMD_OVERHEAD_NS);
    DEFAULT(num_contexts, VNPU_ENGINE_DEFAULT_NUM_CONTEXTS);
    DEFAULT(compute_cores, VNPU_ENGINE_DEFAULT_COMPUTE_CORES);
    DEFAULT(h2d_latency_ns, VNPU_ENGINE_DEFAULT_H2D_LATENCY_NS);
    DEFAULT(d2h_latency_ns, VNPU_ENGINE_DEFAULT_D2H_LATENCY_NS);
    DEFAULT(op_overhead_ns, VNPU_ENGINE_DEFAULT_OP_OVERHEAD_NS);
    DEFAULT(devmem_gbps, VNPU_ENGINE_DEFAULT_DEVMEM_GBPS);
    DEFAULT(host_mem_max, VNPU_ENGINE_DEFAULT_HOST_MEM_MAX);
    if (cfg->devmem_size % VNPU_MMU_PAGE_SIZE || cfg->devmem_size > VNPU_ENGINE_DEVMEM_MAX ||
        cfg->num_queues > VNPU_ENGINE_MAX_QUEUES || !is_pow2(cfg->ring_max) || cfg->ring_max < 2 ||
        cfg->ring_max > VNPU_ENGINE_RING_MAX_LIMIT || cfg->num_contexts > VNPU_ENGINE_MAX_CONTEXTS ||
        cfg->compute_cores > VNPU_ENGINE_MAX_CORES || cfg->fi_kind > VNPU_FI_CORRUPT_CPL ||
        cfg->fi_rate_ppm > 1000000u || cfg->h2d_mbps == VNPU_CFG_ZERO || cfg->d2h_mbps == VNPU_CFG_ZERO ||
        cfg->compute_gflops == VNPU_CFG_ZERO || cfg->devmem_gbps == VNPU_CFG_ZERO ||
        cfg->host_mem_max < VNPU_ENGINE_MIN_HOST_MEM_MAX) {
        return -EINVAL;
    }
    return 0;
}

/* ---- queues ----------------------------------------------------------------------------------------------- */

static void queue_bump_gen(VnpuQueue *q)
{
    q->gen++;
}

static bool queue_cq_full(const VnpuQueue *q)
{
    return ((q->cq_tail + 1) & (q->cq_entries - 1)) == q->cq_head;
}

bool vnpu_queue_fetchable(const VnpuEngine *e, const VnpuQueue *q)
{
    (void)e;
    if (!q->enabled || q->error || q->sq_head == q->sq_tail || q->sig_wait) {
        return false;
    }
    /*
     * Start a new job only while the records not yet posted (1 + SIGNALs per job) fit the completion ring: this
     * bounds the device's own memory however long the driver leaves the completion ring full.
     */
    return q->open || q->records < q->cq_entries;
}

/* Whether the head of q's finished jobs may be posted once its deadline has come. */
static bool queue_can_post(const VnpuQueue *q)
{
    return q->done && q->error != VNPU_QERR_CQ_WRITE && !queue_cq_full(q) && (q->enabled || q->draining);
}

static bool queue_idle(const VnpuQueue *q)
{
    return !q->open && !q->jobs_head && !(q->enabled && !q->error && q->sq_head != q->sq_tail);
}

static void arm_at(VnpuEngine *e, uint64_t deadline)
{
    if (deadline < e->armed) {
        e->armed = deadline;
        e->host.schedule(e->host.opaque, deadline);
    }
}

void vnpu_engine_rearm(VnpuEngine *e)
{
    uint64_t next = VNPU_NO_DEADLINE;

    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        const VnpuQueue *q = &e->queues[i];

        if (queue_can_post(q) && q->done->key < next) {
            next = q->done->key;
        }
    }
    arm_at(e, next);
}

bool vnpu_engine_quiescent(VnpuEngine *e)
{
    bool cp = vnpu_cp_may_run(e);

    if (e->cp_busy || e->running || e->compute_dispatching || (cp && e->recount_pending)) {
        return false;
    }
    if (cp && !(e->control & VNPU_CONTROL_FETCH_PAUSE)) {
        for (unsigned i = 0; i < e->cfg.num_queues; i++) {
            if (vnpu_queue_fetchable(e, &e->queues[i])) {
                return false;
            }
        }
    }
    for (unsigned u = 0; u < VNPU_UNIT_COUNT; u++) {
        if (vnpu_unit_head_ready(e, (VnpuUnit)u)) {
            return false;
        }
    }
    return true;
}

/*
 * Lockstep (icount): one tick waits at most this long for the workers, holding the transport's lock (QEMU: the
 * BQL). If they are still busy, the tick posts nothing and re-arms at the same virtual time: guest time does not
 * move on until the device is quiescent, yet the lock is released between steps (MMIO, the monitor, unplug and
 * reset all get through), and what is posted at a virtual time never depends on how fast the host was.
 */
#define VNPU_LOCKSTEP_STEP_MS 10

static bool wait_quiescent_step(VnpuEngine *e)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += VNPU_LOCKSTEP_STEP_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!vnpu_engine_quiescent(e)) {
        if (pthread_cond_timedwait(&e->idle_cond, &e->lock, &until) == ETIMEDOUT) {
            return vnpu_engine_quiescent(e);
        }
    }
    return true;
}

void vnpu_queue_set_error(VnpuEngine *e, VnpuQueue *q, uint32_t err)
{
    if (q->error) {
        return; /* the first error is the one reported */
    }
    q->error = err;
    queue_bump_gen(q); /* a fetch in progress is dropped */
    if (err == VNPU_QERR_CQ_WRITE) {
        vnpu_queue_drop_all(e, q); /* nothing can be reported any more */
        return;
    }
    /* No more commands will be fetched: a job left open can never see its F_LAST. */
    if (q->open) {
        /* Report it as aborted, after the jobs already dispatched (they still run). */
        vnpu_job_finish(e, vnpu_queue_abort_open(e, q));
    }
}

static uint64_t reg64(uint32_t lo, uint32_t hi)
{
    return (uint64_t)hi << 32 | lo;
}

static void queue_enable(VnpuEngine *e, VnpuQueue *q)
{
    uint64_t sq_base = reg64(q->sq_base_lo, q->sq_base_hi);
    uint64_t cq_base = reg64(q->cq_base_lo, q->cq_base_hi);
    const char *why = NULL;

    if (!is_pow2(q->sq_size) || q->sq_size < 2 || q->sq_size > e->cfg.ring_max) {
        why = "SQ_SIZE not a power of two in 2..RING_MAX";
    } else if (!is_pow2(q->cq_size) || q->cq_size < 2 || q->cq_size > e->cfg.ring_max) {
        why = "CQ_SIZE not a power of two in 2..RING_MAX";
    } else if (sq_base % sizeof(struct vnpu_hw_cmd) || cq_base % sizeof(struct vnpu_hw_cpl)) {
        why = "ring base misaligned";
    } else if (sq_base > UINT64_MAX - ((uint64_t)q->sq_size * sizeof(struct vnpu_hw_cmd) - 1) ||
               cq_base > UINT64_MAX - ((uint64_t)q->cq_size * sizeof(struct vnpu_hw_cpl) - 1)) {
        why = "ring wraps the DMA address space";
    } else if (q->msix_vector >= vnpu_engine_num_vectors(e)) {
        why = "MSIX_VECTOR out of range";
    }

    queue_bump_gen(q);
    vnpu_queue_drop_all(e, q); /* records still draining from before are not wanted any more */
    q->draining = false;
    q->sq_head = q->sq_tail = q->cq_head = q->cq_tail = 0;
    q->phase = 1;
    q->jobs_done = 0;
    if (why) {
        vnpu_guest_error(e, "queue %u: enable rejected: %s", q->id, why);
        q->enabled = false;
        q->ctrl = 0;
        q->error = VNPU_QERR_CONFIG;
        return;
    }
    q->error = VNPU_QERR_NONE;
    q->sq_base = sq_base;
    q->cq_base = cq_base;
    q->sq_entries = q->sq_size;
    q->cq_entries = q->cq_size;
    q->vector = q->msix_vector;
    q->priority = q->priority_reg > VNPU_PRIORITY_MAX ? VNPU_PRIORITY_MAX : q->priority_reg;
    q->enabled = true;
    pthread_cond_broadcast(&e->work_cond);
}

/* Disable (and queue RESET): everything fetched and not yet reported completes with ABORTED. */
static void queue_disable(VnpuEngine *e, VnpuQueue *q)
{
    bool was_enabled = q->enabled;

    q->enabled = false;
    queue_bump_gen(q);
    if (q->error == VNPU_QERR_CQ_WRITE) {
        vnpu_queue_drop_all(e, q);
    } else if (was_enabled || q->open || q->jobs_head) {
        vnpu_queue_abort_all(e, q);
    }
    q->draining = q->jobs_head != NULL;
    q->error = VNPU_QERR_NONE;
    vnpu_engine_rearm(e);
}

static void queue_reset_regs(VnpuEngine *e, VnpuQueue *q)
{
    queue_bump_gen(q);
    vnpu_queue_drop_all(e, q);
    q->sq_base_lo = q->sq_base_hi = q->sq_size = 0;
    q->cq_base_lo = q->cq_base_hi = q->cq_size = 0;
    q->msix_vector = q->ctrl = q->priority_reg = 0;
    q->enabled = q->draining = false;
    q->error = VNPU_QERR_NONE;
    q->sq_base = q->cq_base = 0;
    q->sq_entries = q->cq_entries = q->vector = q->priority = 0;
    q->sq_tail = q->sq_head = q->cq_head = q->cq_tail = 0;
    q->phase = 1;
    q->jobs_done = 0;
}

static void queue_sq_doorbell(VnpuEngine *e, VnpuQueue *q, uint32_t tail)
{
    uint32_t mask = q->sq_entries - 1;
    uint64_t now;

    if (!q->enabled || q->error) {
        vnpu_guest_error(e, "queue %u: SQ_TAIL doorbell while the queue is %s", q->id,
                         q->enabled ? "stopped by an error" : "disabled");
        return;
    }
    /* The new tail must lie in the ring and must not lap commands the device has not fetched yet. */
    if (tail >= q->sq_entries || ((tail - q->sq_head) & mask) < ((q->sq_tail - q->sq_head) & mask)) {
        vnpu_guest_error(e, "queue %u: SQ_TAIL %u invalid (size %u head %u tail %u)", q->id, tail,
                         q->sq_entries, q->sq_head, q->sq_tail);
        vnpu_queue_set_error(e, q, VNPU_QERR_DOORBELL);
        return;
    }
    now = e->host.clock_ns(e->host.opaque);
    for (uint32_t i = q->sq_tail; i != tail; i = (i + 1) & mask) {
        q->db_time[i] = now;
    }
    q->sq_tail = tail;
    if (e->lockstep) {
        /* The earliest record: a SIGNAL as a job's first command is due when the job becomes visible. */
        arm_at(e, now);
    }
    pthread_cond_broadcast(&e->work_cond);
}

static void queue_cq_doorbell(VnpuEngine *e, VnpuQueue *q, uint32_t head)
{
    uint32_t mask = q->cq_entries - 1;

    if (!q->enabled && !q->draining) {
        vnpu_guest_error(e, "queue %u: CQ_HEAD doorbell while the queue is disabled", q->id);
        return;
    }
    /* The driver may release only completions the device has posted. */
    if (head >= q->cq_entries || ((head - q->cq_head) & mask) > ((q->cq_tail - q->cq_head) & mask)) {
        vnpu_guest_error(e, "queue %u: CQ_HEAD %u invalid (size %u head %u tail %u)", q->id, head,
                         q->cq_entries, q->cq_head, q->cq_tail);
        vnpu_queue_set_error(e, q, VNPU_QERR_DOORBELL);
        return;
    }
    q->cq_head = head;
    /* Completions held back by a full ring can go now; in lockstep, fetching held back by it too. */
    vnpu_engine_rearm(e);
    if (e->lockstep) {
        arm_at(e, e->host.clock_ns(e->host.opaque));
    }
    pthread_cond_broadcast(&e->work_cond);
}

static uint32_t queue_status(const VnpuQueue *q)
{
    uint32_t st = 0;

    if (q->enabled) {
        st |= VNPU_QSTATUS_ENABLED;
    }
    if (q->error) {
        st |= VNPU_QSTATUS_ERROR;
    }
    if (queue_idle(q)) {
        st |= VNPU_QSTATUS_IDLE;
    }
    return st;
}

static uint32_t queue_read(VnpuEngine *e, VnpuQueue *q, uint32_t reg)
{
    (void)e;
    switch (reg) {
    case VNPU_QREG_SQ_BASE_LO: return q->sq_base_lo;
    case VNPU_QREG_SQ_BASE_HI: return q->sq_base_hi;
    case VNPU_QREG_SQ_SIZE: return q->sq_size;
    case VNPU_QREG_CQ_BASE_LO: return q->cq_base_lo;
    case VNPU_QREG_CQ_BASE_HI: return q->cq_base_hi;
    case VNPU_QREG_CQ_SIZE: return q->cq_size;
    case VNPU_QREG_MSIX_VECTOR: return q->msix_vector;
    case VNPU_QREG_CTRL: return q->ctrl;
    case VNPU_QREG_STATUS: return queue_status(q);
    case VNPU_QREG_ERROR: return q->error;
    case VNPU_QREG_SQ_TAIL: return q->sq_tail;
    case VNPU_QREG_SQ_HEAD: return q->sq_head;
    case VNPU_QREG_CQ_HEAD: return q->cq_head;
    case VNPU_QREG_CQ_TAIL: return q->cq_tail;
    case VNPU_QREG_JOBS_DONE: return q->jobs_done;
    case VNPU_QREG_PRIORITY: return q->priority_reg;
    default: return 0;
    }
}

static void queue_write(VnpuEngine *e, VnpuQueue *q, uint32_t reg, uint32_t val)
{
    switch (reg) {
    case VNPU_QREG_SQ_BASE_LO: q->sq_base_lo = val; break;
    case VNPU_QREG_SQ_BASE_HI: q->sq_base_hi = val; break;
    case VNPU_QREG_SQ_SIZE: q->sq_size = val; break;
    case VNPU_QREG_CQ_BASE_LO: q->cq_base_lo = val; break;
    case VNPU_QREG_CQ_BASE_HI: q->cq_base_hi = val; break;
    case VNPU_QREG_CQ_SIZE: q->cq_size = val; break;
    case VNPU_QREG_MSIX_VECTOR: q->msix_vector = val; break;
    case VNPU_QREG_PRIORITY:
        if (val > VNPU_PRIORITY_MAX) {
            vnpu_guest_error(e, "queue %u: PRIORITY %u above %u, clamped", q->id, val, VNPU_PRIORITY_MAX);
            val = VNPU_PRIORITY_MAX;
        }
        q->priority_reg = val;
        break;
    case VNPU_QREG_CTRL:
        if (val & VNPU_QCTRL_RESET) {
            q->ctrl = 0;
            queue_disable(e, q);
        } else if ((val & VNPU_QCTRL_ENABLE) && !q->enabled) {
            q->ctrl = VNPU_QCTRL_ENABLE;
            queue_enable(e, q);
        } else if (!(val & VNPU_QCTRL_ENABLE)) {
            q->ctrl = 0;
            queue_disable(e, q);
        }
        break;
    case VNPU_QREG_SQ_TAIL: queue_sq_doorbell(e, q, val); break;
    case VNPU_QREG_CQ_HEAD: queue_cq_doorbell(e, q, val); break;
    default:
        vnpu_guest_error(e, "queue %u: write 0x%x to read-only or unknown register 0x%x", q->id, val, reg);
        break;
    }
}

/* ---- register file ---------------------------------------------------------------------------------------- */

static VnpuQueue *queue_of(VnpuEngine *e, uint64_t offset, uint32_t *reg)
{
    uint64_t rel;

    if (offset < VNPU_REG_QUEUE_BASE) {
        return NULL;
    }
    rel = offset - VNPU_REG_QUEUE_BASE;
    if (rel / VNPU_REG_QUEUE_STRIDE >= e->cfg.num_queues) {
        return NULL;
    }
    *reg = rel % VNPU_REG_QUEUE_STRIDE;
    return &e->queues[rel / VNPU_REG_QUEUE_STRIDE];
}

static uint32_t caps(void)
{
    return VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL | VNPU_CAP_MMU | VNPU_CAP_SYNTH | VNPU_CAP_FAULT_INJECT |
           VNPU_CAP_TIMING_ONLY | VNPU_CAP_TELEMETRY | VNPU_CAP_EXEC | VNPU_CAP_SIGNAL;
}

static uint64_t telemetry(const VnpuEngine *e, uint32_t counter)
{
    const VnpuEngineStats *s = &e->stats;

    switch (counter) {
    case VNPU_TEL_JOBS_COMPLETED: return s->jobs_completed;
    case VNPU_TEL_JOBS_FAILED: return s->jobs_failed;
    case VNPU_TEL_CMDS: return s->cmds_executed;
    case VNPU_TEL_H2D_BYTES: return s->h2d_bytes;
    case VNPU_TEL_D2H_BYTES: return s->d2h_bytes;
    case VNPU_TEL_FLOPS: return s->flops;
    case VNPU_TEL_H2D_BUSY_NS: return s->h2d_busy_ns;
    case VNPU_TEL_D2H_BUSY_NS: return s->d2h_busy_ns;
    case VNPU_TEL_COMPUTE_BUSY_NS: return s->compute_busy_ns;
    case VNPU_TEL_IRQS: return s->irqs;
    case VNPU_TEL_MAPPED_BYTES: return s->mapped_bytes;
    default: return 0;
    }
}

/*
 * 64-bit registers read as LO/HI pairs. Reading LO latches the high half in a latch private to the reader (QEMU:
 * the vCPU) and to that register; the reader's next HI read of that register returns it and consumes it, so a
 * LO-then-HI pair from one CPU is consistent whatever other CPUs or other counters read in between. A HI read
 * with nothing latched returns the live high half (see docs/device.md, "64-bit registers").
 */
enum {
    LATCH_CLOCK,
    LATCH_LAST_FAULT,
    LATCH_TELEMETRY, /* + counter offset / 8 */
};

static VnpuLatch *latch_of(VnpuEngine *e, unsigned reader)
{
    if (reader >= e->latch_readers && reader < VNPU_ENGINE_MAX_READERS) {
        unsigned n = reader + 1 > 2 * e->latch_readers ? reader + 1 : 2 * e->latch_readers;
        VnpuLatch *l = realloc(e->latch, n * sizeof(*l));

        if (l) {
            memset(l + e->latch_readers, 0, (n - e->latch_readers) * sizeof(*l));
            e->latch = l;
            e->latch_readers = n;
        }
    }
    /* Out of memory or an absurd reader id: share slot 0 (still consistent for one reader at a time). */
    return reader < e->latch_readers ? &e->latch[reader] : &e->latch[0];
}

static uint32_t read_lo(VnpuEngine *e, unsigned reader, unsigned pair, uint64_t v)
{
    VnpuLatch *l = latch_of(e, reader);

    l->hi[pair] = (uint32_t)(v >> 32);
    l->armed |= 1u << pair;
    return (uint32_t)v;
}

static uint32_t read_hi(VnpuEngine *e, unsigned reader, unsigned pair, uint64_t live)
{
    VnpuLatch *l = latch_of(e, reader);

    if (l->armed & (1u << pair)) {
        l->armed &= ~(1u << pair);
        return l->hi[pair];
    }
    return (uint32_t)(live >> 32);
}

static uint32_t global_read(VnpuEngine *e, uint64_t offset, unsigned reader)
{
    if (offset >= VNPU_REG_TELEMETRY_BASE && offset <= VNPU_REG_TELEMETRY(VNPU_TEL_MAPPED_BYTES) + 4) {
        uint32_t rel = (uint32_t)(offset - VNPU_REG_TELEMETRY_BASE);
        unsigned pair = LATCH_TELEMETRY + rel / 8;
        uint64_t v = telemetry(e, rel & ~7u);

        return rel % 8 ? read_hi(e, reader, pair, v) : read_lo(e, reader, pair, v);
    }
    switch (offset) {
    case VNPU_REG_ID: return VNPU_ID_MAGIC;
    case VNPU_REG_VERSION: return VNPU_VERSION;
    case VNPU_REG_CAPS: return caps();
    case VNPU_REG_NUM_QUEUES: return e->cfg.num_queues;
    case VNPU_REG_DEVMEM_SIZE_LO: return (uint32_t)e->cfg.devmem_size;
    case VNPU_REG_DEVMEM_SIZE_HI: return (uint32_t)(e->cfg.devmem_size >> 32);
    case VNPU_REG_RING_MAX: return e->cfg.ring_max;
    case VNPU_REG_STATUS: return vnpu_reset_settled(e) ? VNPU_STATUS_READY : 0;
    case VNPU_REG_SCRATCH: return e->scratch;
    case VNPU_REG_CLOCK_LO: return read_lo(e, reader, LATCH_CLOCK, e->host.clock_ns(e->host.opaque));
    case VNPU_REG_CLOCK_HI: return read_hi(e, reader, LATCH_CLOCK, e->host.clock_ns(e->host.opaque));
    case VNPU_REG_H2D_MBPS: return e->cfg.h2d_mbps;
    case VNPU_REG_D2H_MBPS: return e->cfg.d2h_mbps;
    case VNPU_REG_COMPUTE_GFLOPS: return e->cfg.compute_gflops;
    case VNPU_REG_CMD_OVERHEAD_NS: return e->cfg.cmd_overhead_ns;
    case VNPU_REG_H2D_LATENCY_NS: return e->cfg.h2d_latency_ns;
    case VNPU_REG_D2H_LATENCY_NS: return e->cfg.d2h_latency_ns;
    case VNPU_REG_OP_OVERHEAD_NS: return e->cfg.op_overhead_ns;
    case VNPU_REG_DEVMEM_GBPS: return e->cfg.devmem_gbps;
    case VNPU_REG_COMPUTE_CORES: return e->cfg.compute_cores;
    case VNPU_REG_NUM_CONTEXTS: return e->cfg.num_contexts;
    case VNPU_REG_CONTROL: return e->control;
    case VNPU_REG_CTX_TABLE_LO: return (uint32_t)e->ctx_table;
    case VNPU_REG_CTX_TABLE_HI: return (uint32_t)(e->ctx_table >> 32);
    case VNPU_REG_MMU_FAULTS: return e->mmu_faults;
    case VNPU_REG_MMU_LAST_FAULT_LO: return read_lo(e, reader, LATCH_LAST_FAULT, e->last_fault);
    case VNPU_REG_MMU_LAST_FAULT_HI: return read_hi(e, reader, LATCH_LAST_FAULT, e->last_fault);
    case VNPU_REG_MMU_LAST_FAULT_CTX: return e->last_fault_ctx;
    case VNPU_REG_FI_KIND: return e->fi_kind;
    case VNPU_REG_FI_QUEUE: return e->fi_queue;
    case VNPU_REG_FI_AFTER: return e->fi_after;
    case VNPU_REG_FI_RATE_PPM: return e->fi_rate_ppm;
    case VNPU_REG_FI_SEED: return e->fi_seed;
    case VNPU_REG_FI_CTRL: return e->fi_ctrl;
    case VNPU_REG_FI_COUNT: return e->fi_count;
    default: return 0; /* RESET, MMU_INVALIDATE (write-only) and holes read as zero */
    }
}

/*
 * Drop every job and return registers to power-on values. When it returns, no engine can issue another host
 * memory access for the dropped work: the gate refuses their epoch and the accesses in progress have ended
 * (each is at most one 1 MiB chunk; transports never make them wait for the transport's lock, see
 * VnpuEngineHost). Workers still computing on dropped jobs (device memory only) keep STATUS.READY at 0 and
 * new fetches waiting until they let go, which they do at their next cancellation check.
 */
static void engine_reset_locked(VnpuEngine *e)
{
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        queue_reset_regs(e, &e->queues[i]);
    }
    gate_new_epoch(e);
    e->resetting = true;
    vnpu_reset_settled(e);
    e->scratch = 0;
    e->control = e->cfg.timing_only ? VNPU_CONTROL_TIMING_ONLY : 0;
    memset(e->latch, 0, e->latch_readers * sizeof(*e->latch));
    memset(e->busy_until, 0, sizeof(e->busy_until));
    memset(e->core_busy_until, 0, sizeof(e->core_busy_until));
    memset(e->resv_last, 0, sizeof(e->resv_last));
    e->fetch_resume_ns = 0;
    /* A tick that still comes for the old deadline finds nothing to do; the next completion re-arms. */
    e->armed = VNPU_NO_DEADLINE;
    e->ctx_table = 0;
    e->ctx_table_lo = 0;
    e->mmu_faults = 0;
    e->last_fault = 0;
    e->last_fault_ctx = 0;
    vnpu_mmu_flush(e, UINT32_MAX);
    memset(e->ctx_mapped, 0, e->cfg.num_contexts * sizeof(*e->ctx_mapped));
    memset(&e->stats, 0, sizeof(e->stats));
    vnpu_fi_reset(e);
    pthread_cond_broadcast(&e->work_cond);
}

static void fi_write(VnpuEngine *e, uint64_t offset, uint32_t val)
{
    switch (offset) {
    case VNPU_REG_FI_KIND:
        if (val > VNPU_FI_CORRUPT_CPL) {
            vnpu_guest_error(e, "FI_KIND %u unknown", val);
            return;
        }
        e->fi_kind = val;
        break;
    case VNPU_REG_FI_QUEUE: e->fi_queue = val; break;
    case VNPU_REG_FI_AFTER: e->fi_after = val; break;
    case VNPU_REG_FI_RATE_PPM: e->fi_rate_ppm = val > 1000000u ? 1000000u : val; break;
    case VNPU_REG_FI_SEED: e->fi_seed = val; break;
    case VNPU_REG_FI_CTRL:
        e->fi_ctrl = val & VNPU_FI_CTRL_ARM;
        if (e->fi_ctrl) {
            /* Arming restarts the job count and the random sequence. */
            e->fi_jobs = 0;
            e->fi_rng = e->fi_seed ? e->fi_seed : 0x9e3779b9u;
        }
        break;
    }
}

static void global_write(VnpuEngine *e, uint64_t offset, uint32_t val)
{
    switch (offset) {
    case VNPU_REG_SCRATCH:
        e->scratch = val;
        break;
    case VNPU_REG_RESET:
        if (val == VNPU_RESET_MAGIC) {
            engine_reset_locked(e);
        } else {
            vnpu_guest_error(e, "RESET written with 0x%x, not the reset magic", val);
        }
        break;
    case VNPU_REG_CONTROL:
        if (val & ~(VNPU_CONTROL_TIMING_ONLY | VNPU_CONTROL_FETCH_PAUSE)) {
            vnpu_guest_error(e, "CONTROL: reserved bits 0x%x ignored",
                             val & ~(VNPU_CONTROL_TIMING_ONLY | VNPU_CONTROL_FETCH_PAUSE));
        }
        if ((e->control & VNPU_CONTROL_FETCH_PAUSE) && !(val & VNPU_CONTROL_FETCH_PAUSE)) {
            e->fetch_resume_ns = e->host.clock_ns(e->host.opaque); /* nothing held back starts before now */
        }
        __atomic_store_n(&e->control, val & (VNPU_CONTROL_TIMING_ONLY | VNPU_CONTROL_FETCH_PAUSE),
                         __ATOMIC_RELAXED);
        if (e->lockstep) {
            arm_at(e, e->host.clock_ns(e->host.opaque)); /* FETCH_PAUSE cleared: fetch at the next tick */
        }
        pthread_cond_broadcast(&e->work_cond);
        break;
    case VNPU_REG_CTX_TABLE_LO:
        e->ctx_table_lo = val;
        break;
    case VNPU_REG_CTX_TABLE_HI:
        e->ctx_table = reg64(e->ctx_table_lo, val);
        if (e->ctx_table % 4096) {
            vnpu_guest_error(e, "CTX_TABLE 0x%llx not 4 KiB aligned: every context is invalid",
                             (unsigned long long)e->ctx_table);
            e->ctx_table = 0;
        }
        vnpu_mmu_flush(e, UINT32_MAX);
        pthread_cond_broadcast(&e->work_cond);
        break;
    case VNPU_REG_MMU_INVALIDATE:
        if (val != UINT32_MAX && val >= e->cfg.num_contexts) {
            vnpu_guest_error(e, "MMU_INVALIDATE: no context %u", val);
            break;
        }
        vnpu_mmu_flush(e, val);
        if (e->lockstep) {
            arm_at(e, e->host.clock_ns(e->host.opaque)); /* the CP recounts MAPPED_BYTES in the next tick */
        }
        pthread_cond_broadcast(&e->work_cond);
        break;
    case VNPU_REG_FI_KIND:
    case VNPU_REG_FI_QUEUE:
    case VNPU_REG_FI_AFTER:
    case VNPU_REG_FI_RATE_PPM:
    case VNPU_REG_FI_SEED:
    case VNPU_REG_FI_CTRL:
        fi_write(e, offset, val);
        break;
    default:
        vnpu_guest_error(e, "write 0x%x to read-only or unknown register 0x%llx", val, (unsigned long long)offset);
        break;
    }
}

uint64_t vnpu_engine_mmio_read_as(VnpuEngine *e, uint64_t offset, unsigned size, unsigned reader)
{
    VnpuQueue *q;
    uint32_t reg, val;

    if (size != 4 || offset % 4 || offset >= VNPU_BAR_REGS_SIZE) {
        return 0;
    }
    pthread_mutex_lock(&e->lock);
    q = queue_of(e, offset, &reg);
    val = q ? queue_read(e, q, reg) : global_read(e, offset, reader);
    pthread_mutex_unlock(&e->lock);
    return val;
}

uint64_t vnpu_engine_mmio_read(VnpuEngine *e, uint64_t offset, unsigned size)
{
    return vnpu_engine_mmio_read_as(e, offset, size, 0);
}

void vnpu_engine_mmio_write(VnpuEngine *e, uint64_t offset, uint64_t value, unsigned size)
{
    uint32_t val = (uint32_t)value;
    VnpuQueue *q;
    uint32_t reg;

    if (size != 4 || offset % 4 || offset >= VNPU_BAR_REGS_SIZE) {
        vnpu_guest_error(e, "ignored %u-byte write at 0x%llx: registers are 32-bit", size,
                         (unsigned long long)offset);
        return;
    }
    pthread_mutex_lock(&e->lock);
    q = queue_of(e, offset, &reg);
    if (q) {
        queue_write(e, q, reg, val);
    } else {
        global_write(e, offset, val);
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- completion posting ----------------------------------------------------------------------------------- */

static uint32_t sat32(uint64_t v)
{
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/*
 * Write one completion record so that a driver polling the phase bit on another CPU never sees a new phase with
 * an old payload: the whole record first with the phase the slot had before (the previous pass's, "not new"),
 * then, ordered after it, the record again with the new phase. The second write changes no byte but the
 * phase, so however the transport splits it, a reader that sees the new phase sees the whole payload. It is a
 * full record (not just the flags word) so that transports publishing records word by word (libruntime's sim:
 * the phase word last, with release) handle both writes alike. The transport orders DMA writes in call order
 * (QEMU: dma_memory_rw() issues smp_mb() before every access); the fence orders our own stores for transports
 * that write with plain memcpy.
 */
static int post_record(VnpuEngine *e, uint64_t addr, const struct vnpu_hw_cpl *rec)
{
    struct vnpu_hw_cpl body = *rec;

    body.flags ^= VNPU_CPL_F_PHASE;
    if (e->host.dma_write(e->host.opaque, addr, &body, sizeof(body))) {
        return -1;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return e->host.dma_write(e->host.opaque, addr, rec, sizeof(*rec));
}

void vnpu_engine_tick(VnpuEngine *e)
{
    uint32_t raise = 0; /* bitmap of vectors */
    uint64_t now;

    pthread_mutex_lock(&e->lock);
    e->armed = VNPU_NO_DEADLINE; /* the transport's timer has fired (or never was armed) */
    now = e->host.clock_ns(e->host.opaque);
    if (e->lockstep) {
        e->fetch_window = true; /* the CP fetches what is visible now, then the tick goes on */
        pthread_cond_broadcast(&e->work_cond);
    }
    if (e->lockstep && !wait_quiescent_step(e)) {
        arm_at(e, now); /* still working: again at the same virtual time, nothing posted */
        pthread_mutex_unlock(&e->lock);
        return;
    }
    /*
     * Lockstep: nothing is fetched while records are posted (the lock is dropped around each record's DMA, and
     * a record can make its queue fetchable again). What the postings make fetchable is fetched by another tick
     * at this same virtual time, with every posting done: which queue goes first never depends on host timing.
     */
    if (e->lockstep) {
        e->fetch_window = false;
    }
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        VnpuQueue *q = &e->queues[i];

        while (queue_can_post(q) && q->done->key <= now) {
            VnpuPost *p = q->done;
            VnpuJob *j = p->j;
            const VnpuSlot *last = &j->cmds[j->ncmds - 1];
            bool final = p->sub == VNPU_POST_FINAL;
            const uint64_t *busy = final ? j->busy_ns : p->busy_ns;
            struct vnpu_hw_cpl rec = {
                .tag = final ? last->cmd.tag : p->tag,
                .status = final ? j->status : VNPU_CPL_OK,
                .flags = (q->phase ? VNPU_CPL_F_PHASE : 0) | (final ? 0 : VNPU_CPL_F_SIGNAL),
                .sq_index = !final ? p->sq_index
                            : j->status == VNPU_CPL_OK || j->status == VNPU_CPL_ABORTED ? last->sq_index
                                                                                      : j->fail_index,
                .t_start = j->started && j->t_start <= now ? j->t_start : now,
                .t_end = now,
                .fault_addr = final ? j->fault_addr : 0,
                .h2d_ns = sat32(busy[VNPU_UNIT_H2D]),
                .compute_ns = sat32(busy[VNPU_UNIT_COMPUTE]),
                .d2h_ns = sat32(busy[VNPU_UNIT_D2H]),
                .ctx_id = j->ctx_id,
            };
            uint64_t addr = q->cq_base + (uint64_t)q->cq_tail * sizeof(rec);
            bool lost_irq = final && j->fi_kind == VNPU_FI_LOST_IRQ;
            uint32_t gen = q->gen;
            int rc;

            if (final && j->fi_kind == VNPU_FI_CORRUPT_CPL) {
                rec.tag = ~rec.tag;
                rec.status = 0xffff;
            }
            q->done = p->next;
            p->next = NULL;
            p->queued = false;
            q->cq_tail = (q->cq_tail + 1) & (q->cq_entries - 1);
            if (!q->cq_tail) {
                q->phase ^= 1;
            }
            vnpu_queue_records_sub(q, 1, now);
            if (final) {
                q->jobs_done++;
                if (j->status == VNPU_CPL_OK) {
                    e->stats.jobs_completed++;
                } else {
                    e->stats.jobs_failed++;
                }
                j->dropped = true; /* posted: no longer the queue's */
                vnpu_queue_unlink(q, j);
                vnpu_job_unref(j);
            } else {
                j->sig_posted++;
            }

            /* Never touch guest memory under the lock (see vnpu_engine_int.h). */
            pthread_mutex_unlock(&e->lock);
            rc = post_record(e, addr, &rec);
            pthread_mutex_lock(&e->lock);

            if (q->gen != gen) {
                break; /* the record's own DMA reset or disabled the queue */
            }
            if (rc) {
                vnpu_guest_error(e, "queue %u: completion write to 0x%llx failed", q->id,
                                 (unsigned long long)addr);
                vnpu_queue_set_error(e, q, VNPU_QERR_CQ_WRITE);
                break;
            }
            if (!lost_irq) {
                raise |= 1u << q->vector;
            }
        }
        if (q->draining && !q->jobs_head) {
            q->draining = false;
        }
    }
    vnpu_engine_rearm(e);
    if (e->lockstep) {
        bool fetchable = false;

        for (unsigned i = 0; i < e->cfg.num_queues && !(e->control & VNPU_CONTROL_FETCH_PAUSE); i++) {
            fetchable |= vnpu_queue_fetchable(e, &e->queues[i]);
        }
        if (fetchable || e->recount_pending || !vnpu_engine_quiescent(e)) {
            arm_at(e, now); /* posting let more work start (CQ space): settle it before time moves on */
        }
        /* Otherwise the window stays shut until the next tick: doorbells and invalidations arm one. */
    }
    for (unsigned v = 0; v < 32; v++) {
        if (raise & (1u << v)) {
            e->stats.irqs++;
        }
    }
    /* Posting freed room for jobs not yet fetched. */
    pthread_cond_broadcast(&e->work_cond);
    pthread_mutex_unlock(&e->lock);

    for (unsigned v = 0; raise; v++, raise >>= 1) {
        if (raise & 1) {
            e->host.interrupt(e->host.opaque, v);
        }
    }
}

/* ---- lifetime --------------------------------------------------------------------------------------------- */

/* What an abandoned engine's stragglers may still call: nothing that reaches the (gone) transport. */
static int abandoned_dma(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque, (void)addr, (void)buf, (void)len;
    return -1;
}

static int abandoned_dma_write(void *opaque, uint64_t addr, const void *buf, size_t len)
{
    (void)opaque, (void)addr, (void)buf, (void)len;
    return -1;
}

static uint64_t abandoned_clock(void *opaque)
{
    (void)opaque;
    return 0;
}

static void abandoned_schedule(void *opaque, uint64_t deadline)
{
    (void)opaque, (void)deadline;
}

static void abandoned_interrupt(void *opaque, unsigned vector)
{
    (void)opaque, (void)vector;
}

static void engine_free(VnpuEngine *e);

/* Default worker threads (no host->thread_create): pthreads, the handle a malloc'd pthread_t. */
static int pthread_start(void *opaque, void **thread, const char *name, void *(*fn)(void *), void *arg)
{
    pthread_t *t = malloc(sizeof(*t));
    int rc;

    (void)opaque, (void)name;
    if (!t) {
        return -ENOMEM;
    }
    rc = pthread_create(t, NULL, fn, arg);
    if (rc) {
        free(t);
        return -rc;
    }
    *thread = t;
    return 0;
}

static void pthread_join_free(void *opaque, void *thread)
{
    (void)opaque;
    pthread_join(*(pthread_t *)thread, NULL);
    free(thread);
}

static void pthread_detach_free(void *opaque, void *thread)
{
    (void)opaque;
    pthread_detach(*(pthread_t *)thread);
    free(thread);
}

void vnpu_worker_exit(VnpuEngine *e)
{
    bool last;

    pthread_mutex_lock(&e->lock);
    last = !--e->threads_alive && e->abandoned;
    pthread_cond_broadcast(&e->idle_cond);
    pthread_mutex_unlock(&e->lock);
    if (last) {
        engine_free(e);
    }
}

/*
 * Stop the workers and wait at most bound_ms for them to exit; true if they all did (joined). A worker that is
 * stuck (a host access that does not return, a kernel between two cancellation checks) must not hold up the
 * transport (QEMU: hot-unplug under the BQL): the engine is then abandoned to its stragglers, which get host
 * callbacks that do nothing, and the last of them frees it. The caller must not touch e after false.
 */
static bool stop_threads(VnpuEngine *e, unsigned bound_ms)
{
    void *threads[3 + VNPU_ENGINE_MAX_CORES];
    void (*join)(void *, void *) = e->host.thread_join, (*detach)(void *, void *) = e->host.thread_detach;
    void *opaque = e->host.opaque;
    unsigned n = e->nthreads;
    struct timespec until;
    bool all;

    memcpy(threads, e->threads, sizeof(threads));
    pthread_mutex_lock(&e->lock);
    __atomic_store_n(&e->stopping, true, __ATOMIC_RELAXED); /* long commands poll this and give up */
    pthread_cond_broadcast(&e->work_cond);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += bound_ms / 1000;
    until.tv_nsec += (long)(bound_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (e->threads_alive && pthread_cond_timedwait(&e->idle_cond, &e->lock, &until) != ETIMEDOUT) {
    }
    all = !e->threads_alive;
    if (!all) {
        e->abandoned = true;
        e->host.dma_read = abandoned_dma;
        e->host.dma_write = abandoned_dma_write;
        e->host.clock_ns = abandoned_clock;
        e->host.schedule = abandoned_schedule;
        e->host.interrupt = abandoned_interrupt;
        e->host.guest_error = NULL;
    }
    pthread_mutex_unlock(&e->lock);
    for (unsigned i = 0; i < n; i++) {
        if (all) {
            join(opaque, threads[i]);
        } else {
            detach(opaque, threads[i]);
        }
    }
    return all;
}

static int start_thread(VnpuEngine *e, const char *name, void *(*fn)(void *))
{
    int rc;

    pthread_mutex_lock(&e->lock);
    e->threads_alive++; /* before the thread runs: it counts itself out in vnpu_worker_exit() */
    pthread_mutex_unlock(&e->lock);
    rc = e->host.thread_create(e->host.opaque, &e->threads[e->nthreads], name, fn, e);
    if (rc) {
        pthread_mutex_lock(&e->lock);
        e->threads_alive--;
        pthread_mutex_unlock(&e->lock);
        return rc < 0 ? rc : -EAGAIN;
    }
    e->nthreads++;
    return 0;
}

static void free_all(VnpuEngine *e)
{
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        vnpu_queue_drop_all(e, &e->queues[i]);
    }
    for (unsigned u = 0; u < VNPU_UNIT_COUNT; u++) {
        while (e->fifo[u].head) {
            VnpuSlot *s = e->fifo[u].head;

            e->fifo[u].head = s->unit_next;
            vnpu_job_unref(s->job);
        }
    }
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        free(e->queues[i].db_time);
    }
}

int vnpu_engine_create(const VnpuEngineConfig *cfg, const VnpuEngineHost *host, VnpuEngine **out)
{
    VnpuEngine *e;
    void *mem;
    int rc;

    if (!cfg || !host || !out || !host->dma_read || !host->dma_write || !host->clock_ns || !host->schedule ||
        !host->interrupt) {
        return -EINVAL;
    }
    e = calloc(1, sizeof(*e));
    if (!e) {
        return -ENOMEM;
    }
    e->cfg = *cfg;
    e->host = *host;
    if (!host->thread_create || !host->thread_join || !host->thread_detach) {
        e->host.thread_create = pthread_start;
        e->host.thread_join = pthread_join_free;
        e->host.thread_detach = pthread_detach_free;
    }
    rc = vnpu_engine_config_finalize(&e->cfg);
    if (rc) {
        goto err_free_engine;
    }
    /* Internally VNPU_CFG_ZERO is a plain 0. */
    if (e->cfg.cmd_overhead_ns == VNPU_CFG_ZERO) {
        e->cfg.cmd_overhead_ns = 0;
    }
    if (e->cfg.h2d_latency_ns == VNPU_CFG_ZERO) {
        e->cfg.h2d_latency_ns = 0;
    }
    if (e->cfg.d2h_latency_ns == VNPU_CFG_ZERO) {
        e->cfg.d2h_latency_ns = 0;
    }
    if (e->cfg.op_overhead_ns == VNPU_CFG_ZERO) {
        e->cfg.op_overhead_ns = 0;
    }
    rc = -ENOMEM;
    /* Untouched device memory costs nothing: anonymous pages are zero-filled on first use. */
    mem = mmap(NULL, e->cfg.devmem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
               -1, 0);
    if (mem == MAP_FAILED) {
        goto err_free_engine;
    }
    e->devmem = mem;
    e->latch = calloc(1, sizeof(*e->latch));
    if (!e->latch) {
        goto err_unmap;
    }
    e->latch_readers = 1;
    if (vnpu_mmu_init(e)) {
        goto err_free_latch;
    }
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        VnpuQueue *q = &e->queues[i];

        q->id = i;
        q->db_time = calloc(e->cfg.ring_max, sizeof(*q->db_time));
        if (!q->db_time) {
            goto err_free_queues;
        }
    }
    if (pthread_mutex_init(&e->lock, NULL)) {
        goto err_free_queues;
    }
    if (pthread_cond_init(&e->work_cond, NULL)) {
        goto err_destroy_lock;
    }
    if (pthread_cond_init(&e->idle_cond, NULL)) {
        goto err_destroy_work_cond;
    }
    if (pthread_mutex_init(&e->gate_lock, NULL)) {
        goto err_destroy_idle_cond;
    }
    if (pthread_cond_init(&e->gate_cond, NULL)) {
        goto err_destroy_gate_lock;
    }
    pthread_mutex_lock(&e->lock);
    engine_reset_locked(e);
    pthread_mutex_unlock(&e->lock);

    rc = start_thread(e, "vnpu-cp", vnpu_cp_main);
    if (!rc) {
        rc = start_thread(e, "vnpu-h2d", vnpu_h2d_main);
    }
    if (!rc) {
        rc = start_thread(e, "vnpu-d2h", vnpu_d2h_main);
    }
    for (unsigned c = 0; !rc && c < e->cfg.compute_cores; c++) {
        rc = start_thread(e, "vnpu-core", vnpu_core_main);
    }
    if (rc) {
        goto err_stop_threads;
    }
    *out = e;
    return 0;

err_stop_threads:
    /* Fresh workers have nothing to be stuck on: they exit at once. */
    if (!stop_threads(e, UINT32_MAX / 2)) {
        return rc;
    }
    pthread_cond_destroy(&e->gate_cond);
err_destroy_gate_lock:
    pthread_mutex_destroy(&e->gate_lock);
err_destroy_idle_cond:
    pthread_cond_destroy(&e->idle_cond);
err_destroy_work_cond:
    pthread_cond_destroy(&e->work_cond);
err_destroy_lock:
    pthread_mutex_destroy(&e->lock);
err_free_queues:
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        free(e->queues[i].db_time);
    }
    vnpu_mmu_fini(e);
err_free_latch:
    free(e->latch);
err_unmap:
    munmap(e->devmem, e->cfg.devmem_size);
err_free_engine:
    free(e);
    return rc;
}

void vnpu_engine_destroy(VnpuEngine *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->lock);
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        for (VnpuJob *j = e->queues[i].jobs_head; j; j = j->next) {
            __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
        }
    }
    pthread_mutex_unlock(&e->lock);
    pthread_mutex_lock(&e->gate_lock);
    e->paused = false; /* workers held at the gate must get out to see `stopping` */
    __atomic_store_n(&e->epoch, e->epoch + 1, __ATOMIC_RELEASE); /* and start no new host access */
    pthread_cond_broadcast(&e->gate_cond);
    pthread_mutex_unlock(&e->gate_lock);
    if (!stop_threads(e, VNPU_ENGINE_DESTROY_WAIT_MS)) {
        return; /* abandoned: the last straggler frees it */
    }
    engine_free(e);
}

static void engine_free(VnpuEngine *e)
{
    free_all(e);
    pthread_cond_destroy(&e->gate_cond);
    pthread_mutex_destroy(&e->gate_lock);
    pthread_cond_destroy(&e->idle_cond);
    pthread_cond_destroy(&e->work_cond);
    pthread_mutex_destroy(&e->lock);
    vnpu_mmu_fini(e);
    free(e->latch);
    munmap(e->devmem, e->cfg.devmem_size);
    free(e);
}

void vnpu_engine_reset(VnpuEngine *e)
{
    pthread_mutex_lock(&e->lock);
    engine_reset_locked(e);
    pthread_mutex_unlock(&e->lock);
}

void vnpu_engine_wait_idle(VnpuEngine *e)
{
    pthread_mutex_lock(&e->lock);
    while (!vnpu_engine_quiescent(e)) {
        pthread_cond_wait(&e->idle_cond, &e->lock);
    }
    pthread_mutex_unlock(&e->lock);
}

void vnpu_engine_set_paused(VnpuEngine *e, int paused)
{
    pthread_mutex_lock(&e->gate_lock);
    e->paused = paused != 0;
    if (e->paused) {
        while (e->dma_inflight) {
            pthread_cond_wait(&e->gate_cond, &e->gate_lock);
        }
    } else {
        pthread_cond_broadcast(&e->gate_cond);
    }
    pthread_mutex_unlock(&e->gate_lock);
}

void vnpu_engine_set_lockstep(VnpuEngine *e, int on)
{
    pthread_mutex_lock(&e->lock);
    e->lockstep = on != 0;
    e->fetch_window = false;
    if (e->lockstep) {
        arm_at(e, e->host.clock_ns(e->host.opaque)); /* anything already visible is fetched at the next tick */
    }
    pthread_mutex_unlock(&e->lock);
}

unsigned vnpu_engine_num_vectors(const VnpuEngine *e)
{
    return e->cfg.num_queues;
}

void vnpu_engine_get_stats(VnpuEngine *e, VnpuEngineStats *out)
{
    pthread_mutex_lock(&e->lock);
    *out = e->stats;
    out->host_mem_peak = __atomic_load_n(&e->host_mem_peak, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&e->lock);
}
