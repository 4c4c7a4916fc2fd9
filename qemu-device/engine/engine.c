/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: lifetime, BAR0 register file, queue state machine and completion posting.
 *
 * The command processor (worker thread) lives in cp.c; this file is the transport-side half: MMIO accesses,
 * vnpu_engine_tick() and reset all run serialised by the transport and only take the engine lock briefly.
 */
#include <errno.h>
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

bool vnpu_exec_cancelled(const VnpuExec *x)
{
    return __atomic_load_n(&x->q->gen, __ATOMIC_RELAXED) != x->gen ||
           __atomic_load_n(&x->e->stopping, __ATOMIC_RELAXED);
}

bool vnpu_devmem_range_ok(const VnpuEngine *e, uint64_t addr, uint64_t len)
{
    /* Written so that no intermediate sum can wrap. */
    return len <= e->cfg.devmem_size && addr <= e->cfg.devmem_size - len;
}

int vnpu_engine_config_finalize(VnpuEngineConfig *cfg)
{
    if (!cfg->devmem_size) {
        cfg->devmem_size = VNPU_ENGINE_DEFAULT_DEVMEM_SIZE;
    }
    if (!cfg->num_queues) {
        cfg->num_queues = 1;
    }
    if (!cfg->ring_max) {
        cfg->ring_max = VNPU_ENGINE_DEFAULT_RING_MAX;
    }
    if (!cfg->h2d_mbps) {
        cfg->h2d_mbps = VNPU_ENGINE_DEFAULT_H2D_MBPS;
    }
    if (!cfg->d2h_mbps) {
        cfg->d2h_mbps = VNPU_ENGINE_DEFAULT_D2H_MBPS;
    }
    if (!cfg->compute_gflops) {
        cfg->compute_gflops = VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS;
    }
    if (!cfg->cmd_overhead_ns) {
        cfg->cmd_overhead_ns = VNPU_ENGINE_DEFAULT_CMD_OVERHEAD_NS;
    }
    if (cfg->devmem_size % 4096 || cfg->devmem_size > VNPU_ENGINE_DEVMEM_MAX) {
        return -EINVAL;
    }
    if (cfg->num_queues > VNPU_ENGINE_MAX_QUEUES) {
        return -EINVAL;
    }
    if (!is_pow2(cfg->ring_max) || cfg->ring_max < 2 || cfg->ring_max > VNPU_ENGINE_RING_MAX_LIMIT) {
        return -EINVAL;
    }
    return 0;
}

/* ---- queues ----------------------------------------------------------------------------------------------- */

static void queue_bump_gen(VnpuQueue *q)
{
    __atomic_add_fetch(&q->gen, 1, __ATOMIC_RELAXED);
}

static bool queue_cq_full(const VnpuQueue *q)
{
    return ((q->cq_tail + 1) & (q->cq_entries - 1)) == q->cq_head;
}

bool vnpu_queue_fetchable(const VnpuQueue *q)
{
    if (!q->enabled || q->error || q->sq_head == q->sq_tail) {
        return false;
    }
    /*
     * Start a new job only while the completions not yet posted fit the completion ring: this bounds the
     * device's own memory however long the driver leaves the completion ring full.
     */
    return q->job.ncmds || q->pend_count < q->cq_entries;
}

/* Whether the head of q's pending FIFO may be posted once its deadline has come. */
static bool queue_can_post(const VnpuEngine *e, const VnpuQueue *q)
{
    if (!q->pend_count || q->error == VNPU_QERR_CQ_WRITE || queue_cq_full(q)) {
        return false;
    }
    if (q->draining) {
        /* An ABORTED record tells the driver the buffers are free: not while the worker may still use them. */
        return e->active_queue != q;
    }
    return q->enabled;
}

static bool queue_idle(const VnpuEngine *e, const VnpuQueue *q)
{
    return !q->job.ncmds && !q->pend_count && e->active_queue != q &&
           !(q->enabled && !q->error && q->sq_head != q->sq_tail);
}

static void arm_at(VnpuEngine *e, uint64_t deadline);

void vnpu_engine_rearm(VnpuEngine *e)
{
    uint64_t next = VNPU_NO_DEADLINE;

    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        const VnpuQueue *q = &e->queues[i];

        if (queue_can_post(e, q)) {
            const VnpuCompletion *c = &q->pending[q->pend_head];

            if (c->deadline < next) {
                next = c->deadline;
            }
        }
    }
    arm_at(e, next);
}

static void arm_at(VnpuEngine *e, uint64_t deadline)
{
    if (deadline < e->armed) {
        e->armed = deadline;
        e->host.schedule(e->host.opaque, deadline);
    }
}

static bool worker_has_work(const VnpuEngine *e)
{
    if (!e->worker_idle) {
        return true;
    }
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        if (vnpu_queue_fetchable(&e->queues[i])) {
            return true;
        }
    }
    return false;
}

/* Lockstep: let the worker finish what is visible, so that every modelled deadline is known before time moves. */
static void wait_worker_bounded(VnpuEngine *e)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5; /* bounded: a worker stuck on the transport (DMA into MMIO) must not deadlock us */
    while (worker_has_work(e)) {
        if (pthread_cond_timedwait(&e->idle_cond, &e->lock, &until) == ETIMEDOUT) {
            break;
        }
    }
}

void vnpu_queue_push_completion(VnpuEngine *e, VnpuQueue *q, const VnpuJob *job)
{
    uint32_t cap = e->cfg.ring_max + 1;
    VnpuCompletion *c;

    if (q->error == VNPU_QERR_CQ_WRITE) {
        return; /* the completion ring is unusable; nothing can be reported */
    }
    if (q->pend_count == cap) {
        /* Unreachable by construction (see vnpu_queue_fetchable); never overwrite a record. */
        return;
    }
    c = &q->pending[(q->pend_head + q->pend_count) % cap];
    c->tag = job->tag;
    c->t_start = job->t_start;
    c->deadline = job->t_end;
    c->sq_index = job->sq_index;
    c->status = job->status;
    q->pend_count++;
    vnpu_engine_rearm(e);
}

/* Turn the open job (if any) into an ABORTED completion, due now. */
static void queue_abort_open_job(VnpuEngine *e, VnpuQueue *q)
{
    if (q->job.ncmds) {
        q->job.status = VNPU_CPL_ABORTED;
        q->job.t_end = 0;
        vnpu_queue_push_completion(e, q, &q->job);
    }
    memset(&q->job, 0, sizeof(q->job));
}

void vnpu_queue_set_error(VnpuEngine *e, VnpuQueue *q, uint32_t err)
{
    if (q->error) {
        return; /* the first error is the one reported */
    }
    q->error = err;
    if (err == VNPU_QERR_CQ_WRITE) {
        q->pend_count = 0;
        memset(&q->job, 0, sizeof(q->job));
        return;
    }
    /* No more commands will be fetched: a job left open can never see its F_LAST. */
    if (e->active_queue != q) {
        queue_abort_open_job(e, q);
    }
}

static void queue_drop_all(VnpuQueue *q)
{
    q->pend_head = 0;
    q->pend_count = 0;
    q->draining = false;
    memset(&q->job, 0, sizeof(q->job));
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
    queue_drop_all(q);
    q->sq_head = q->sq_tail = q->cq_head = q->cq_tail = 0;
    q->phase = 1;
    q->jobs_done = 0;
    if (why) {
        vnpu_guest_error(e, "queue %u: enable rejected: %s", q->id, why);
        q->enabled = false;
        q->error = VNPU_QERR_CONFIG;
        return;
    }
    q->error = VNPU_QERR_NONE;
    q->sq_base = sq_base;
    q->cq_base = cq_base;
    q->sq_entries = q->sq_size;
    q->cq_entries = q->cq_size;
    q->vector = q->msix_vector;
    q->enabled = true;
}

static void queue_disable(VnpuEngine *e, VnpuQueue *q)
{
    uint32_t cap = e->cfg.ring_max + 1;

    if (!q->enabled) {
        q->error = VNPU_QERR_NONE; /* disable clears a CONFIG error left by a rejected enable */
        return;
    }
    q->enabled = false;
    queue_bump_gen(q); /* the worker drops whatever it is running for this queue */
    if (q->error == VNPU_QERR_CQ_WRITE) {
        queue_drop_all(q);
    } else {
        /* Everything fetched but not yet reported completes with ABORTED, in order, as soon as possible. */
        for (uint32_t i = 0; i < q->pend_count; i++) {
            VnpuCompletion *c = &q->pending[(q->pend_head + i) % cap];

            c->status = VNPU_CPL_ABORTED;
            c->deadline = 0;
        }
        queue_abort_open_job(e, q);
        q->draining = q->pend_count != 0;
    }
    q->error = VNPU_QERR_NONE;
    vnpu_engine_rearm(e);
}

static void queue_reset(VnpuQueue *q)
{
    queue_bump_gen(q);
    queue_drop_all(q);
    q->sq_base_lo = q->sq_base_hi = q->sq_size = 0;
    q->cq_base_lo = q->cq_base_hi = q->cq_size = 0;
    q->msix_vector = q->ctrl = 0;
    q->enabled = false;
    q->error = VNPU_QERR_NONE;
    q->sq_base = q->cq_base = 0;
    q->sq_entries = q->cq_entries = q->vector = 0;
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
        /* No job can complete sooner than one command overhead after it became visible. */
        arm_at(e, now + e->cfg.cmd_overhead_ns);
    }
    pthread_cond_signal(&e->work_cond);
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
    /* Completions held back by a full ring can go now; a job held back by them can start. */
    vnpu_engine_rearm(e);
    pthread_cond_signal(&e->work_cond);
}

static uint32_t queue_status(const VnpuEngine *e, const VnpuQueue *q)
{
    uint32_t st = 0;

    if (q->enabled) {
        st |= VNPU_QSTATUS_ENABLED;
    }
    if (q->error) {
        st |= VNPU_QSTATUS_ERROR;
    }
    if (queue_idle(e, q)) {
        st |= VNPU_QSTATUS_IDLE;
    }
    return st;
}

static uint32_t queue_read(VnpuEngine *e, VnpuQueue *q, uint32_t reg)
{
    switch (reg) {
    case VNPU_QREG_SQ_BASE_LO: return q->sq_base_lo;
    case VNPU_QREG_SQ_BASE_HI: return q->sq_base_hi;
    case VNPU_QREG_SQ_SIZE: return q->sq_size;
    case VNPU_QREG_CQ_BASE_LO: return q->cq_base_lo;
    case VNPU_QREG_CQ_BASE_HI: return q->cq_base_hi;
    case VNPU_QREG_CQ_SIZE: return q->cq_size;
    case VNPU_QREG_MSIX_VECTOR: return q->msix_vector;
    case VNPU_QREG_CTRL: return q->ctrl;
    case VNPU_QREG_STATUS: return queue_status(e, q);
    case VNPU_QREG_ERROR: return q->error;
    case VNPU_QREG_SQ_TAIL: return q->sq_tail;
    case VNPU_QREG_SQ_HEAD: return q->sq_head;
    case VNPU_QREG_CQ_HEAD: return q->cq_head;
    case VNPU_QREG_CQ_TAIL: return q->cq_tail;
    case VNPU_QREG_JOBS_DONE: return q->jobs_done;
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
    case VNPU_QREG_CTRL:
        q->ctrl = val & VNPU_QCTRL_ENABLE;
        if ((val & VNPU_QCTRL_ENABLE) && !q->enabled) {
            queue_enable(e, q);
        } else if (!(val & VNPU_QCTRL_ENABLE)) {
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

static uint32_t global_read(VnpuEngine *e, uint64_t offset)
{
    uint64_t now;

    switch (offset) {
    case VNPU_REG_ID: return VNPU_ID_MAGIC;
    case VNPU_REG_VERSION: return VNPU_VERSION;
    case VNPU_REG_CAPS: return VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL;
    case VNPU_REG_NUM_QUEUES: return e->cfg.num_queues;
    case VNPU_REG_DEVMEM_SIZE_LO: return (uint32_t)e->cfg.devmem_size;
    case VNPU_REG_DEVMEM_SIZE_HI: return (uint32_t)(e->cfg.devmem_size >> 32);
    case VNPU_REG_RING_MAX: return e->cfg.ring_max;
    case VNPU_REG_STATUS: return VNPU_STATUS_READY;
    case VNPU_REG_SCRATCH: return e->scratch;
    case VNPU_REG_CLOCK_LO:
        now = e->host.clock_ns(e->host.opaque);
        e->clock_hi_latch = (uint32_t)(now >> 32);
        return (uint32_t)now;
    case VNPU_REG_CLOCK_HI: return e->clock_hi_latch;
    case VNPU_REG_H2D_MBPS: return e->cfg.h2d_mbps;
    case VNPU_REG_D2H_MBPS: return e->cfg.d2h_mbps;
    case VNPU_REG_COMPUTE_GFLOPS: return e->cfg.compute_gflops;
    case VNPU_REG_CMD_OVERHEAD_NS: return e->cfg.cmd_overhead_ns;
    default: return 0; /* RESET (write-only) and holes read as zero */
    }
}

static void engine_reset_locked(VnpuEngine *e)
{
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        queue_reset(&e->queues[i]);
    }
    e->scratch = 0;
    e->clock_hi_latch = 0;
    memset(e->busy_until, 0, sizeof(e->busy_until));
    /* A tick that still comes for the old deadline finds nothing to do; the next push re-arms. */
    e->armed = VNPU_NO_DEADLINE;
}

uint64_t vnpu_engine_mmio_read(VnpuEngine *e, uint64_t offset, unsigned size)
{
    VnpuQueue *q;
    uint32_t reg, val;

    if (size != 4 || offset % 4 || offset >= VNPU_BAR_REGS_SIZE) {
        return 0;
    }
    pthread_mutex_lock(&e->lock);
    q = queue_of(e, offset, &reg);
    val = q ? queue_read(e, q, reg) : global_read(e, offset);
    pthread_mutex_unlock(&e->lock);
    return val;
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
    } else if (offset == VNPU_REG_SCRATCH) {
        e->scratch = val;
    } else if (offset == VNPU_REG_RESET) {
        if (val == VNPU_RESET_MAGIC) {
            engine_reset_locked(e);
        } else {
            vnpu_guest_error(e, "RESET written with 0x%x, not the reset magic", val);
        }
    } else {
        vnpu_guest_error(e, "write 0x%x to read-only or unknown register 0x%llx", val,
                         (unsigned long long)offset);
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- completion posting ----------------------------------------------------------------------------------- */

void vnpu_engine_tick(VnpuEngine *e)
{
    uint32_t raise = 0; /* bitmap of vectors */
    uint32_t cap = e->cfg.ring_max + 1;
    uint64_t now;

    pthread_mutex_lock(&e->lock);
    e->armed = VNPU_NO_DEADLINE; /* the transport's timer has fired (or never was armed) */
    if (e->lockstep) {
        wait_worker_bounded(e);
    }
    now = e->host.clock_ns(e->host.opaque);
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        VnpuQueue *q = &e->queues[i];

        while (queue_can_post(e, q) && q->pending[q->pend_head].deadline <= now) {
            const VnpuCompletion *c = &q->pending[q->pend_head];
            struct vnpu_hw_cpl rec = {
                .tag = c->tag,
                .status = c->status,
                .flags = q->phase ? VNPU_CPL_F_PHASE : 0,
                .sq_index = c->sq_index,
                .t_start = c->t_start,
                .t_end = now,
            };
            uint64_t addr = q->cq_base + (uint64_t)q->cq_tail * sizeof(rec);
            uint32_t gen = q->gen;
            int rc;

            if (c->t_start > now) {
                rec.t_start = now; /* an aborted job may be reported before its modelled start */
            }
            q->pend_head = (q->pend_head + 1) % cap;
            q->pend_count--;
            q->cq_tail = (q->cq_tail + 1) & (q->cq_entries - 1);
            if (!q->cq_tail) {
                q->phase ^= 1;
            }
            q->jobs_done++;
            e->stats.jobs_completed++;
            if (rec.status != VNPU_CPL_OK) {
                e->stats.jobs_failed++;
            }

            /* Never touch guest memory under the lock (see vnpu_engine_int.h). */
            pthread_mutex_unlock(&e->lock);
            rc = e->host.dma_write(e->host.opaque, addr, &rec, sizeof(rec));
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
            raise |= 1u << q->vector;
        }
        if (q->draining && !q->pend_count) {
            q->draining = false;
        }
    }
    vnpu_engine_rearm(e);
    if (e->lockstep && worker_has_work(e)) {
        arm_at(e, now + e->cfg.cmd_overhead_ns); /* the bounded wait gave up: look again soon */
    }
    /* Posting freed room for pending completions, so a job waiting for it may start. */
    pthread_cond_signal(&e->work_cond);
    pthread_mutex_unlock(&e->lock);

    for (unsigned v = 0; raise; v++, raise >>= 1) {
        if (raise & 1) {
            e->host.interrupt(e->host.opaque, v);
        }
    }
}

/* ---- lifetime --------------------------------------------------------------------------------------------- */

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
    rc = vnpu_engine_config_finalize(&e->cfg);
    if (rc) {
        goto err_free_engine;
    }
    rc = -ENOMEM;
    /* Untouched device memory costs nothing: anonymous pages are zero-filled on first use. */
    mem = mmap(NULL, e->cfg.devmem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
               -1, 0);
    if (mem == MAP_FAILED) {
        goto err_free_engine;
    }
    e->devmem = mem;
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        VnpuQueue *q = &e->queues[i];

        q->id = i;
        q->db_time = calloc(e->cfg.ring_max, sizeof(*q->db_time));
        q->pending = calloc(e->cfg.ring_max + 1, sizeof(*q->pending));
        if (!q->db_time || !q->pending) {
            goto err_free_queues;
        }
        queue_reset(q);
    }
    e->armed = VNPU_NO_DEADLINE;
    e->worker_idle = true;
    if (pthread_mutex_init(&e->lock, NULL)) {
        goto err_free_queues;
    }
    if (pthread_cond_init(&e->work_cond, NULL)) {
        goto err_destroy_lock;
    }
    if (pthread_cond_init(&e->idle_cond, NULL)) {
        goto err_destroy_work_cond;
    }
    rc = -pthread_create(&e->worker, NULL, vnpu_cp_worker_main, e);
    if (rc) {
        goto err_destroy_idle_cond;
    }
    *out = e;
    return 0;

err_destroy_idle_cond:
    pthread_cond_destroy(&e->idle_cond);
err_destroy_work_cond:
    pthread_cond_destroy(&e->work_cond);
err_destroy_lock:
    pthread_mutex_destroy(&e->lock);
err_free_queues:
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        free(e->queues[i].db_time);
        free(e->queues[i].pending);
    }
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
    __atomic_store_n(&e->stopping, true, __ATOMIC_RELAXED); /* long commands poll this and give up */
    pthread_cond_signal(&e->work_cond);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->worker, NULL);

    pthread_cond_destroy(&e->idle_cond);
    pthread_cond_destroy(&e->work_cond);
    pthread_mutex_destroy(&e->lock);
    for (unsigned i = 0; i < e->cfg.num_queues; i++) {
        free(e->queues[i].db_time);
        free(e->queues[i].pending);
    }
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
    while (worker_has_work(e)) {
        pthread_cond_wait(&e->idle_cond, &e->lock);
    }
    pthread_mutex_unlock(&e->lock);
}

void vnpu_engine_set_lockstep(VnpuEngine *e, int on)
{
    pthread_mutex_lock(&e->lock);
    e->lockstep = on != 0;
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
    pthread_mutex_unlock(&e->lock);
}
