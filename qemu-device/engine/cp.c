/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: command processor, job state machine and the engines' worker threads.
 *
 * The command processor (CP) thread arbitrates between queues (highest PRIORITY first, round-robin among equals,
 * one whole job at a time), fetches a job's commands, checks what can be checked without running them, resolves
 * the job's context, applies fault injection and puts each command on the in-order FIFO of the engine that runs
 * it. The H2D and D2H threads and one thread per compute core take their FIFO head once the job's previous
 * command has finished. Commands without an engine (NOP, commands rejected at fetch) are retired inline by
 * whichever thread finishes the command before them. See vnpu_engine_int.h for the locking rules.
 */
#include <stdlib.h>
#include <string.h>

#include "vnpu_engine_int.h"

static void wake_all(VnpuEngine *e)
{
    pthread_cond_broadcast(&e->work_cond);
    pthread_cond_broadcast(&e->idle_cond);
}

static void sleep_on_work(VnpuEngine *e)
{
    pthread_cond_broadcast(&e->idle_cond);
    pthread_cond_wait(&e->work_cond, &e->lock);
}

/* Worker threads tell the transport when they start and stop (QEMU: RCU registration). */
static void worker_start(VnpuEngine *e)
{
    if (e->host.worker_start) {
        e->host.worker_start(e->host.opaque);
    }
}

static void worker_stop(VnpuEngine *e)
{
    if (e->host.worker_stop) {
        e->host.worker_stop(e->host.opaque);
    }
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* ---- jobs -------------------------------------------------------------------------------------------------- */

static VnpuJob *job_new(VnpuEngine *e, VnpuQueue *q)
{
    VnpuJob *j = calloc(1, sizeof(*j));

    if (j) {
        j->q = q;
        j->refs = 1;
        j->hang_at = -1;
        j->epoch = vnpu_epoch(e);
    }
    return j;
}

void vnpu_job_unref(VnpuJob *j)
{
    if (--j->refs == 0) {
        free(j->cmds);
        free(j);
    }
}

static bool job_dead(const VnpuJob *j)
{
    return j->dropped || j->done || j->hung || __atomic_load_n(&j->cancel, __ATOMIC_RELAXED);
}

static void job_fail(VnpuEngine *e, VnpuJob *j, const VnpuSlot *s, uint16_t status, uint64_t fault)
{
    j->status = status;
    j->fail_index = s->sq_index;
    j->fault_addr = status == VNPU_CPL_MMU_FAULT ? fault : 0;
    if (status == VNPU_CPL_MMU_FAULT) {
        vnpu_mmu_note_fault(e, j->ctx_id, j->fault_addr);
    }
}

static uint64_t post_key(const VnpuJob *j)
{
    return j->status == VNPU_CPL_ABORTED ? 0 : j->t_end;
}

static bool post_before(const VnpuPost *a, const VnpuPost *b)
{
    if (a->key != b->key) {
        return a->key < b->key;
    }
    if (a->j->seq != b->j->seq) {
        return a->j->seq < b->j->seq;
    }
    return a->sub < b->sub;
}

static void post_insert(VnpuQueue *q, VnpuPost *p)
{
    VnpuPost **pp = &q->done;

    while (*pp && post_before(*pp, p)) {
        pp = &(*pp)->next;
    }
    p->next = *pp;
    *pp = p;
    p->queued = true;
}

static void post_unlink(VnpuQueue *q, VnpuPost *p)
{
    for (VnpuPost **pp = &q->done; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    p->next = NULL;
    p->queued = false;
}

/*
 * The queue owes n records fewer as of device clock `when`. If the record bound was holding its fetching back,
 * that is when fetching can go on: the timing model starts no job it fetches afterwards before then.
 */
void vnpu_queue_records_sub(VnpuQueue *q, uint32_t n, uint64_t when)
{
    if (!n) {
        return;
    }
    if (q->records >= q->cq_entries || q->sig_wait) {
        q->cq_resume_ns = max_u64(q->cq_resume_ns, when);
    }
    q->records -= n;
    q->sig_wait = false; /* a SIGNAL waiting for room may fit now */
}

/*
 * Queue the finished job's own record. Its SIGNAL records still waiting go no later than it (an aborted job's
 * record is due at once); SIGNALs it never reached owe no record.
 */
static void done_insert(VnpuQueue *q, VnpuJob *j)
{
    uint64_t key = post_key(j);

    /* (An aborted job's queue fetches nothing until it is enabled again, which forgets the resume time.) */
    vnpu_queue_records_sub(q, j->nsig - j->sig_reached, j->status == VNPU_CPL_ABORTED ? 0 : j->t_end);
    j->nsig = j->sig_reached;
    for (unsigned i = j->sig_posted; i < j->sig_reached; i++) {
        VnpuPost *p = &j->sig[i];

        if (p->queued && p->key > key) {
            post_unlink(q, p);
            p->key = key;
            post_insert(q, p);
        }
    }
    j->final.j = j;
    j->final.sub = VNPU_POST_FINAL;
    j->final.key = key;
    post_insert(q, &j->final);
}

/* The job reached a SIGNAL (its previous command has finished): queue the intermediate record. Lock held. */
static void job_signal(VnpuEngine *e, VnpuJob *j, const VnpuSlot *s)
{
    VnpuPost *p = &j->sig[j->sig_reached];

    vnpu_timing_account(e, j, VNPU_UNIT_NONE, NULL, false, true, 0); /* no engine, no cost: start = end = ready */
    j->sig_reached++;
    p->j = j;
    p->sub = (uint8_t)(j->sig_reached - 1);
    p->key = j->t_end;
    p->sq_index = s->sq_index;
    p->tag = s->cmd.tag;
    memcpy(p->busy_ns, j->busy_ns, sizeof(p->busy_ns));
    post_insert(j->q, p);
    vnpu_engine_rearm(e);
}

static void job_advance(VnpuEngine *e, VnpuJob *j);

/* The job has finished (successfully, with an error or aborted): queue its completion. */
void vnpu_job_finish(VnpuEngine *e, VnpuJob *j)
{
    VnpuQueue *q = j->q;

    j->done = true;
    j->hung = false;
    if (j->status != VNPU_CPL_ABORTED) {
        q->end_max = max_u64(q->end_max, j->t_end);
    }
    done_insert(q, j);
    /* Barrier jobs fetched after this one wait for it. */
    for (VnpuJob *k = j->next; k; k = k->next) {
        if (k->barrier && !k->done && k->barrier_wait) {
            k->barrier_ready = max_u64(k->barrier_ready, j->t_end);
            if (!--k->barrier_wait) {
                job_advance(e, k);
            }
        }
    }
    vnpu_engine_rearm(e);
    wake_all(e);
}

/* Retire commands without an engine and notice the end of the job. Lock held. */
static void job_advance(VnpuEngine *e, VnpuJob *j)
{
    while (!job_dead(j) && j->status == VNPU_CPL_OK && j->next_cmd < j->ncmds) {
        VnpuSlot *s = &j->cmds[j->next_cmd];

        if (j->next_cmd == 0 && j->barrier && j->barrier_wait) {
            return;
        }
        if (j->hang_at == (int32_t)j->next_cmd) {
            j->hung = true; /* only a queue or device reset ends it */
            wake_all(e);
            return;
        }
        if (s->unit != VNPU_UNIT_NONE) {
            wake_all(e); /* its engine's worker takes it when it reaches the FIFO head */
            return;
        }
        if (s->cmd.opcode == VNPU_OPC_SIGNAL && s->pre_status == VNPU_CPL_OK) {
            job_signal(e, j, s);
            e->stats.cmds_executed++;
            j->next_cmd++;
            continue;
        }
        vnpu_timing_account(e, j, VNPU_UNIT_NONE, NULL, true, s->pre_status == VNPU_CPL_OK, 0);
        if (s->pre_status != VNPU_CPL_OK) {
            job_fail(e, j, s, s->pre_status, 0);
            break;
        }
        e->stats.cmds_executed++;
        j->next_cmd++;
    }
    if (!j->done && !j->hung && !j->dropped && !__atomic_load_n(&j->cancel, __ATOMIC_RELAXED) &&
        (j->next_cmd >= j->ncmds || j->status != VNPU_CPL_OK)) {
        vnpu_job_finish(e, j);
    }
}

/* Abort a job of a disabled/reset queue: it completes with ABORTED once no worker runs it any more. */
void vnpu_job_abort(VnpuEngine *e, VnpuJob *j)
{
    if (j->dropped) {
        return;
    }
    __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
    j->status = VNPU_CPL_ABORTED;
    j->fault_addr = 0;
    vnpu_timing_release(e, j, e->host.clock_ns(e->host.opaque));
    if (!j->done && !j->running) {
        vnpu_job_finish(e, j);
    }
}

void vnpu_queue_append(VnpuQueue *q, VnpuJob *j)
{
    j->prev = q->jobs_tail;
    if (q->jobs_tail) {
        q->jobs_tail->next = j;
    } else {
        q->jobs_head = j;
    }
    q->jobs_tail = j;
    q->njobs++;
}

void vnpu_queue_unlink(VnpuQueue *q, VnpuJob *j)
{
    if (j->prev) {
        j->prev->next = j->next;
    } else {
        q->jobs_head = j->next;
    }
    if (j->next) {
        j->next->prev = j->prev;
    } else {
        q->jobs_tail = j->prev;
    }
    j->prev = j->next = NULL;
    q->njobs--;
}

VnpuJob *vnpu_queue_abort_open(VnpuEngine *e, VnpuQueue *q)
{
    VnpuJob *open = q->open;

    if (!open) {
        return NULL;
    }
    q->open = NULL;
    open->status = VNPU_CPL_ABORTED;
    open->fail_index = open->cmds[open->ncmds - 1].sq_index;
    open->ctx_id = open->cmds[0].cmd.ctx_id;
    open->cancel = 1;
    open->seq = ++e->seq;
    vnpu_queue_append(q, open);
    return open;
}

/* Forget a job without a completion (device reset, queue re-enabled). Workers still holding it let go later. */
void vnpu_job_drop(VnpuEngine *e, VnpuJob *j)
{
    vnpu_timing_release(e, j, e->host.clock_ns(e->host.opaque));
    j->dropped = true;
    __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
    vnpu_queue_records_sub(j->q, 1u + j->nsig - j->sig_posted, 0); /* its queue starts afresh before fetching */
    vnpu_queue_unlink(j->q, j);
    vnpu_job_unref(j);
}

void vnpu_queue_abort_all(VnpuEngine *e, VnpuQueue *q)
{
    /* Fetched without its F_LAST: it can never run, report it so the driver can reclaim it. */
    VnpuJob *open = vnpu_queue_abort_open(e, q);
    uint64_t now = e->host.clock_ns(e->host.opaque);

    if (open) {
        open->done = true;
    }
    /* Whatever they booked beyond now goes back to the engines; the newest first, it was booked last. */
    for (VnpuJob *j = q->jobs_tail; j; j = j->prev) {
        vnpu_timing_release(e, j, now);
    }
    for (VnpuJob *j = q->jobs_head; j; j = j->next) {
        if (!j->done) {
            __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
            j->status = VNPU_CPL_ABORTED;
            j->fault_addr = 0;
            if (!j->running) {
                j->done = true;
            }
        } else {
            /* Finished but not yet reported: reported as ABORTED, like everything fetched. */
            j->status = VNPU_CPL_ABORTED;
            j->fault_addr = 0;
        }
        j->hung = false;
    }
    /*
     * Rebuild the posting order: aborted records go first, in fetch order, each job's SIGNAL records that were
     * reached but not yet posted before its own record.
     */
    q->done = NULL;
    for (VnpuJob *j = q->jobs_head; j; j = j->next) {
        for (unsigned i = j->sig_posted; i < j->sig_reached; i++) {
            j->sig[i].key = 0;
            post_insert(q, &j->sig[i]);
        }
        if (j->done) {
            j->final.queued = false;
            done_insert(q, j);
        }
    }
    vnpu_engine_rearm(e);
    wake_all(e);
}

void vnpu_queue_drop_all(VnpuEngine *e, VnpuQueue *q)
{
    if (q->open) {
        vnpu_job_unref(q->open);
        q->open = NULL;
    }
    while (q->jobs_tail) {
        vnpu_job_drop(e, q->jobs_tail); /* newest first: bookings unwind in reverse */
    }
    q->done = NULL;
    q->records = 0; /* the open job's too */
    q->sig_wait = false;
    q->end_max = 0;
    q->cq_resume_ns = 0;
    wake_all(e);
}

/* ---- fault injection --------------------------------------------------------------------------------------- */

void vnpu_fi_reset(VnpuEngine *e)
{
    e->fi_kind = e->cfg.fi_kind;
    e->fi_queue = e->cfg.fi_queue;
    e->fi_after = e->cfg.fi_after;
    e->fi_rate_ppm = e->cfg.fi_rate_ppm;
    e->fi_seed = e->cfg.fi_seed;
    e->fi_ctrl = e->cfg.fi_kind != VNPU_FI_NONE ? VNPU_FI_CTRL_ARM : 0;
    e->fi_count = 0;
    e->fi_jobs = 0;
    e->fi_rng = e->fi_seed ? e->fi_seed : 0x9e3779b9u;
}

static uint32_t xorshift32(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static uint32_t fi_decide(VnpuEngine *e, const VnpuQueue *q)
{
    bool fire;

    if (!(e->fi_ctrl & VNPU_FI_CTRL_ARM) || e->fi_kind == VNPU_FI_NONE || e->fi_kind > VNPU_FI_CORRUPT_CPL ||
        (e->fi_queue != 0xffffffffu && e->fi_queue != q->id)) {
        return VNPU_FI_NONE;
    }
    e->fi_jobs++;
    if (e->fi_after) {
        fire = e->fi_jobs == e->fi_after;
        if (fire) {
            e->fi_ctrl &= ~VNPU_FI_CTRL_ARM;
        }
    } else {
        fire = xorshift32(&e->fi_rng) % 1000000u < e->fi_rate_ppm;
    }
    if (!fire) {
        return VNPU_FI_NONE;
    }
    e->fi_count++;
    e->stats.faults_injected++;
    return e->fi_kind;
}

/* ---- command processor ------------------------------------------------------------------------------------- */

/* Highest PRIORITY first; round-robin among equals. */
static VnpuQueue *pick_queue(VnpuEngine *e)
{
    VnpuQueue *best = NULL;

    if ((e->control & VNPU_CONTROL_FETCH_PAUSE) || !vnpu_reset_settled(e) || !vnpu_cp_may_run(e)) {
        return NULL; /* after a device reset, nothing new until the old jobs are let go */
    }
    for (unsigned n = 0; n < e->cfg.num_queues; n++) {
        VnpuQueue *q = &e->queues[(e->rr_next + n) % e->cfg.num_queues];

        if (vnpu_queue_fetchable(e, q) && (!best || q->priority > best->priority)) {
            best = q;
        }
    }
    if (best) {
        e->rr_next = (best->id + 1) % e->cfg.num_queues;
    }
    return best;
}

/* Decide per command which engine runs it, or the status it fails with when reached. Lock held. */
static void job_decode(VnpuEngine *e, VnpuJob *j, bool too_long)
{
    unsigned nsig = 0;

    j->ctx_id = j->cmds[0].cmd.ctx_id;
    j->barrier = j->cmds[0].cmd.flags & VNPU_CMD_F_BARRIER;
    for (uint32_t i = 0; i < j->ncmds; i++) {
        VnpuSlot *s = &j->cmds[i];
        const struct vnpu_hw_cmd *c = &s->cmd;
        uint16_t st = VNPU_CPL_OK;

        s->unit = VNPU_UNIT_NONE;
        switch (c->opcode) {
        case VNPU_OPC_NOP:
            break;
        case VNPU_OPC_SIGNAL:
            if (!vnpu_all_zero(c->raw, sizeof(c->raw)) || (c->flags & VNPU_CMD_F_LAST) ||
                ++nsig > VNPU_MAX_SIGNALS_PER_JOB) {
                vnpu_guest_error(e, "queue %u cmd %u: SIGNAL with a payload, F_LAST or more than %u in the job",
                                 j->q->id, s->sq_index, VNPU_MAX_SIGNALS_PER_JOB);
                st = VNPU_CPL_BAD_FIELD;
            }
            break;
        case VNPU_OPC_DMA_H2D:
            s->unit = VNPU_UNIT_H2D;
            break;
        case VNPU_OPC_DMA_D2H:
            s->unit = VNPU_UNIT_D2H;
            break;
        case VNPU_OPC_MATMUL:
        case VNPU_OPC_EXEC:
        case VNPU_OPC_SYNTH:
            s->unit = VNPU_UNIT_COMPUTE;
            break;
        default:
            vnpu_guest_error(e, "queue %u cmd %u: unknown opcode 0x%x", j->q->id, s->sq_index, c->opcode);
            st = VNPU_CPL_BAD_OPCODE;
            break;
        }
        if (st == VNPU_CPL_OK && ((c->flags & ~VNPU_CMD_F_MASK) || (i && (c->flags & VNPU_CMD_F_BARRIER)) ||
                                  c->rsvd1 || (c->opcode == VNPU_OPC_NOP && !vnpu_all_zero(c->raw, sizeof(c->raw))))) {
            vnpu_guest_error(e, "queue %u cmd %u: reserved flag or field set", j->q->id, s->sq_index);
            st = VNPU_CPL_BAD_FIELD;
        }
        if (st == VNPU_CPL_OK && (c->ctx_id != j->ctx_id || j->ctx_id >= e->cfg.num_contexts)) {
            vnpu_guest_error(e, "queue %u cmd %u: context %u invalid or differs within the job", j->q->id,
                             s->sq_index, c->ctx_id);
            st = VNPU_CPL_BAD_CONTEXT;
        }
        if (st == VNPU_CPL_OK && i == 0 && !j->ctx_ok) {
            vnpu_guest_error(e, "queue %u: context %u is not valid", j->q->id, j->ctx_id);
            st = VNPU_CPL_MMU_FAULT;
        }
        if (st == VNPU_CPL_OK && too_long && i == j->ncmds - 1) {
            vnpu_guest_error(e, "queue %u cmd %u: job has no F_LAST within %u commands", j->q->id, s->sq_index,
                             VNPU_JOB_MAX_CMDS);
            st = VNPU_CPL_JOB_TOO_LONG;
        }
        if (st != VNPU_CPL_OK) {
            s->unit = VNPU_UNIT_NONE;
            s->pre_status = st;
        }
    }
}

static void job_inject(VnpuEngine *e, VnpuJob *j)
{
    uint32_t i;

    j->fi_kind = fi_decide(e, j->q);
    switch (j->fi_kind) {
    case VNPU_FI_DMA_ERROR:
        for (i = 0; i < j->ncmds && j->cmds[i].unit != VNPU_UNIT_H2D && j->cmds[i].unit != VNPU_UNIT_D2H; i++) {
        }
        if (i == j->ncmds) {
            i = 0;
        }
        j->cmds[i].unit = VNPU_UNIT_NONE;
        j->cmds[i].pre_status = VNPU_CPL_DMA_FAULT;
        break;
    case VNPU_FI_COMPUTE_HANG:
        for (i = 0; i < j->ncmds && j->cmds[i].unit != VNPU_UNIT_COMPUTE; i++) {
        }
        j->hang_at = i == j->ncmds ? 0 : (int32_t)i;
        break;
    default:
        break;
    }
}

static void job_dispatch(VnpuEngine *e, VnpuQueue *q, VnpuJob *j)
{
    j->seq = ++e->seq;
    vnpu_queue_append(q, j);
    if (j->barrier) {
        for (VnpuJob *k = q->jobs_head; k != j; k = k->next) {
            if (!k->done) {
                j->barrier_wait++;
            }
        }
        j->barrier_ready = q->end_max;
    }
    for (uint32_t i = 0; i < j->ncmds; i++) {
        VnpuSlot *s = &j->cmds[i];
        VnpuFifo *f;

        s->job = j;
        s->idx = i;
        if (s->unit == VNPU_UNIT_NONE) {
            continue;
        }
        f = &e->fifo[s->unit];
        s->unit_next = NULL;
        if (f->tail) {
            f->tail->unit_next = s;
        } else {
            f->head = s;
        }
        f->tail = s;
        j->refs++;
    }
    job_advance(e, j);
    wake_all(e);
}

/* Fetch one command of q; dispatch the job when it is complete. Lock held (dropped around host memory). */
static bool fetch_one(VnpuEngine *e, VnpuQueue *q)
{
    uint32_t index = q->sq_head, gen = q->gen, epoch = vnpu_epoch(e);
    uint64_t addr = q->sq_base + (uint64_t)index * sizeof(struct vnpu_hw_cmd);
    uint64_t visible = q->db_time[index];
    struct vnpu_hw_cmd cmd;
    VnpuJob *j;
    uint64_t root = 0;
    uint32_t ctx_gen = 0;
    bool last, too_long, ok = false;
    int rc;

    /*
     * SQ_HEAD moves past the slot only once the command has been copied out: until then the driver must not
     * reuse it (docs/device.md, Rings). Only this thread fetches, so the slot stays ours while unlocked.
     */
    e->cp_busy = true;
    pthread_mutex_unlock(&e->lock);
    rc = vnpu_host_dma(e, epoch, addr, &cmd, sizeof(cmd), false);
    pthread_mutex_lock(&e->lock);
    e->cp_busy = false;
    if (q->gen != gen) {
        return false; /* disabled or reset meanwhile */
    }
    if (rc) {
        vnpu_guest_error(e, "queue %u: fetch of command %u at 0x%llx failed", q->id, index,
                         (unsigned long long)addr);
        vnpu_queue_set_error(e, q, VNPU_QERR_SQ_FETCH);
        return false;
    }
    j = q->open;
    if (cmd.opcode == VNPU_OPC_SIGNAL && (!j || j->nsig < VNPU_MAX_SIGNALS_PER_JOB)) {
        /*
         * Back-pressure counts records: a SIGNAL owes one more. It waits (unfetched) while that would exceed the
         * CQ size, unless everything owed is this job's own (its records then simply wait for CQ space).
         */
        uint32_t own = j ? 1u + j->nsig : 0, need = j ? 1 : 2;

        if (q->records + need > q->cq_entries && q->records > own) {
            q->sig_wait = true;
            return false;
        }
    }
    q->sq_head = (index + 1) & (q->sq_entries - 1);
    if (!j) {
        j = q->open = job_new(e, q);
        if (j) {
            q->records++;
        }
    }
    if (j && j->ncmds == j->cap) {
        uint32_t cap = j->cap ? j->cap * 2 : 4;
        VnpuSlot *n = realloc(j->cmds, cap * sizeof(*n));

        if (n) {
            j->cmds = n;
            j->cap = cap;
        }
    }
    if (!j || j->ncmds == j->cap) {
        vnpu_guest_error(e, "queue %u: out of memory for a job", q->id);
        vnpu_queue_set_error(e, q, VNPU_QERR_SQ_FETCH);
        return false;
    }
    memset(&j->cmds[j->ncmds], 0, sizeof(j->cmds[0]));
    j->cmds[j->ncmds].cmd = cmd;
    j->cmds[j->ncmds].sq_index = index;
    j->ncmds++;
    /*
     * The job could not be fetched before its doorbell, nor while CONTROL.FETCH_PAUSE held fetching or the
     * completion ring's record bound held this queue back: its modelled start is no earlier than the latest of
     * these (a function of the guest's register writes and the device's modelled postings only).
     */
    j->visible = max_u64(visible, max_u64(e->fetch_resume_ns, q->cq_resume_ns));
    if (cmd.opcode == VNPU_OPC_SIGNAL && j->nsig < VNPU_MAX_SIGNALS_PER_JOB) {
        j->nsig++;
        q->records++;
    }
    last = cmd.flags & VNPU_CMD_F_LAST;
    too_long = !last && j->ncmds >= VNPU_JOB_MAX_CMDS;
    if (!last && !too_long) {
        return true; /* keep fetching this job */
    }

    /* The context entry is read from host memory: without the lock, the job still parked in q->open. */
    if (j->cmds[0].cmd.ctx_id < e->cfg.num_contexts) {
        e->cp_busy = true;
        pthread_mutex_unlock(&e->lock);
        ok = vnpu_mmu_ctx(e, j->epoch, j->cmds[0].cmd.ctx_id, &root, &ctx_gen);
        pthread_mutex_lock(&e->lock);
        e->cp_busy = false;
        if (q->gen != gen || q->open != j) {
            return false; /* the queue was disabled or reset: the job was aborted or dropped with it */
        }
    }
    q->open = NULL;
    j->ctx_ok = ok;
    j->pt_root = root;
    j->ctx_gen = ctx_gen;
    job_decode(e, j, too_long);
    job_inject(e, j);
    job_dispatch(e, q, j);
    return false;
}

static void recount(VnpuEngine *e)
{
    e->recount_pending = false;
    uint32_t epoch = vnpu_epoch(e);

    for (uint32_t i = 0; i < e->cfg.num_contexts && !e->stopping; i++) {
        uint64_t root = 0, n = 0;

        if (!e->ctx_recount[i]) {
            continue;
        }
        e->ctx_recount[i] = false;
        e->cp_busy = true;
        pthread_mutex_unlock(&e->lock);
        if (vnpu_mmu_ctx(e, epoch, (uint16_t)i, &root, NULL)) {
            n = vnpu_mmu_count_mapped(e, epoch, root);
        }
        pthread_mutex_lock(&e->lock);
        e->cp_busy = false;
        if (!e->ctx_recount[i]) {
            e->stats.mapped_bytes += n - e->ctx_mapped[i];
            e->ctx_mapped[i] = n;
        }
    }
}

void *vnpu_cp_main(void *opaque)
{
    VnpuEngine *e = opaque;
    VnpuQueue *sticky = NULL;

    worker_start(e);
    pthread_mutex_lock(&e->lock);
    while (!e->stopping) {
        VnpuQueue *q;

        if (e->recount_pending && vnpu_cp_may_run(e)) {
            recount(e);
            continue;
        }
        /* A job is fetched whole before arbitration moves on, as long as its commands are visible. */
        q = sticky && sticky->open && vnpu_queue_fetchable(e, sticky) &&
                    !(e->control & VNPU_CONTROL_FETCH_PAUSE) && vnpu_cp_may_run(e)
                ? sticky
                : pick_queue(e);
        if (!q) {
            sticky = NULL;
            sleep_on_work(e);
            continue;
        }
        sticky = fetch_one(e, q) ? q : NULL;
    }
    wake_all(e);
    pthread_mutex_unlock(&e->lock);
    worker_stop(e);
    vnpu_worker_exit(e);
    return NULL;
}

/* ---- engine workers ---------------------------------------------------------------------------------------- */

bool vnpu_unit_head_ready(VnpuEngine *e, VnpuUnit u)
{
    VnpuSlot *s = e->fifo[u].head;
    VnpuJob *j;

    if (!s) {
        return false;
    }
    j = s->job;
    if (job_dead(j)) {
        return true; /* to be discarded */
    }
    if (j->next_cmd != s->idx || j->running || (s->idx == 0 && j->barrier && j->barrier_wait)) {
        return false;
    }
    return u != VNPU_UNIT_COMPUTE || !e->compute_dispatching;
}

static VnpuSlot *pop(VnpuEngine *e, VnpuUnit u)
{
    VnpuFifo *f = &e->fifo[u];
    VnpuSlot *s = f->head;

    f->head = s->unit_next;
    if (!f->head) {
        f->tail = NULL;
    }
    s->unit_next = NULL;
    return s;
}

/* A command finished on its engine. Lock held. */
static void stage_done(VnpuEngine *e, VnpuJob *j, VnpuSlot *s, VnpuUnit u, const VnpuCmdResult *r,
                       bool accounted)
{
    if (j->dropped) {
        return;
    }
    if (__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
        j->status = VNPU_CPL_ABORTED;
        if (!j->done) {
            vnpu_job_finish(e, j);
        }
        return;
    }
    if (!accounted) {
        uint64_t work = 0;

        if (r->status == VNPU_CPL_OK) {
            work = u == VNPU_UNIT_COMPUTE ? r->work_ns : vnpu_timing_dma_ns(&e->cfg, u == VNPU_UNIT_H2D, r->bytes);
        }
        vnpu_timing_account(e, j, u, s, true, r->status == VNPU_CPL_OK, work);
    }
    if (r->status != VNPU_CPL_OK) {
        vnpu_guest_error(e, "queue %u cmd %u: opcode 0x%x failed with status %u", j->q->id, s->sq_index,
                         s->cmd.opcode, r->status);
        job_fail(e, j, s, r->status, r->fault_addr);
    } else {
        e->stats.cmds_executed++;
        if (u == VNPU_UNIT_H2D) {
            e->stats.h2d_bytes += r->bytes;
        } else if (u == VNPU_UNIT_D2H) {
            e->stats.d2h_bytes += r->bytes;
        } else {
            e->stats.flops += r->flops;
        }
        j->next_cmd++;
    }
    job_advance(e, j);
}

/*
 * Take unit u's FIFO head and mark its job running; NULL when there is nothing to run yet (after sleeping) or
 * the head's job is dead (dropped). Either way the caller re-checks e->stopping. Called with e->lock held.
 */
static VnpuSlot *worker_take(VnpuEngine *e, VnpuUnit u)
{
    VnpuSlot *s;

    if (!vnpu_unit_head_ready(e, u)) {
        sleep_on_work(e);
        return NULL;
    }
    s = pop(e, u);
    if (job_dead(s->job)) {
        vnpu_job_unref(s->job);
        return NULL;
    }
    s->job->running = true;
    e->running++;
    return s;
}

static void *dma_main(VnpuEngine *e, VnpuUnit u)
{
    worker_start(e);
    pthread_mutex_lock(&e->lock);
    while (!e->stopping) {
        VnpuCmdResult r = { .status = VNPU_CPL_OK };
        VnpuSlot *s = worker_take(e, u);
        VnpuJob *j;
        VnpuExec x;

        if (!s) {
            continue;
        }
        j = s->job;
        x = (VnpuExec){ .e = e, .j = j, .s = s };
        pthread_mutex_unlock(&e->lock);
        vnpu_dma_execute(&x, &s->cmd.dma, u == VNPU_UNIT_H2D, &r);
        pthread_mutex_lock(&e->lock);
        e->running--;
        j->running = false;
        stage_done(e, j, s, u, &r, false);
        vnpu_job_unref(j);
        wake_all(e);
    }
    pthread_mutex_unlock(&e->lock);
    worker_stop(e);
    vnpu_worker_exit(e);
    return NULL;
}

void *vnpu_h2d_main(void *opaque)
{
    return dma_main(opaque, VNPU_UNIT_H2D);
}

void *vnpu_d2h_main(void *opaque)
{
    return dma_main(opaque, VNPU_UNIT_D2H);
}

void *vnpu_core_main(void *opaque)
{
    VnpuEngine *e = opaque;

    worker_start(e);
    pthread_mutex_lock(&e->lock);
    while (!e->stopping) {
        VnpuCmdResult r = { .status = VNPU_CPL_OK };
        VnpuComputePrep prep;
        VnpuSlot *s = worker_take(e, VNPU_UNIT_COMPUTE);
        VnpuJob *j;
        VnpuExec x;

        if (!s) {
            continue;
        }
        j = s->job;
        /* Prepared one at a time, in FIFO order: the modelled core assignment depends only on that order. */
        e->compute_dispatching = true;
        x = (VnpuExec){ .e = e, .j = j, .s = s };
        pthread_mutex_unlock(&e->lock);
        vnpu_compute_prepare(&x, &prep, &r);
        pthread_mutex_lock(&e->lock);
        e->compute_dispatching = false;
        if (r.status != VNPU_CPL_OK || job_dead(j)) {
            e->running--;
            j->running = false;
            stage_done(e, j, s, VNPU_UNIT_COMPUTE, &r, false);
        } else {
            vnpu_timing_account(e, j, VNPU_UNIT_COMPUTE, s, true, true, r.work_ns);
            wake_all(e); /* the next compute command can be prepared by another core */
            pthread_mutex_unlock(&e->lock);
            vnpu_compute_run(&x, &prep, &r);
            pthread_mutex_lock(&e->lock);
            e->running--;
            j->running = false;
            stage_done(e, j, s, VNPU_UNIT_COMPUTE, &r, true);
        }
        vnpu_compute_release(&prep);
        vnpu_job_unref(j);
        wake_all(e);
    }
    pthread_mutex_unlock(&e->lock);
    worker_stop(e);
    vnpu_worker_exit(e);
    return NULL;
}
