/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: command processor. One worker thread fetches 64-byte commands from the queues' rings, validates
 * them, runs them (dma.c, compute.c), models their timing (timing.c) and queues each job's completion for
 * vnpu_engine_tick() to post at its modelled time.
 */
#include <string.h>

#include "vnpu_engine_int.h"

/* Round-robin over queues with something to fetch, so one busy queue cannot starve another. */
static VnpuQueue *pick_queue(VnpuEngine *e)
{
    for (unsigned n = 0; n < e->cfg.num_queues; n++) {
        VnpuQueue *q = &e->queues[(e->rr_next + n) % e->cfg.num_queues];

        if (vnpu_queue_fetchable(q)) {
            e->rr_next = (q->id + 1) % e->cfg.num_queues;
            return q;
        }
    }
    return NULL;
}

static bool all_zero(const void *p, size_t len)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < len; i++) {
        if (b[i]) {
            return false;
        }
    }
    return true;
}

/* Validate the fields common to every command, then run it. Worker thread, engine lock not held. */
static void execute(const VnpuExec *x, const struct vnpu_hw_cmd *cmd, uint32_t index, VnpuCmdResult *r)
{
    VnpuEngine *e = x->e;

    r->status = VNPU_CPL_OK;
    r->unit = VNPU_UNIT_NONE;
    switch (cmd->opcode) {
    case VNPU_OPC_NOP:
    case VNPU_OPC_DMA_H2D:
    case VNPU_OPC_DMA_D2H:
    case VNPU_OPC_MATMUL:
        break;
    default:
        vnpu_guest_error(e, "queue %u cmd %u: unknown opcode 0x%x", x->q->id, index, cmd->opcode);
        r->status = VNPU_CPL_BAD_OPCODE;
        return;
    }
    if (cmd->flags & ~VNPU_CMD_F_MASK || cmd->rsvd0 || cmd->rsvd1) {
        vnpu_guest_error(e, "queue %u cmd %u: reserved flag or field set", x->q->id, index);
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    switch (cmd->opcode) {
    case VNPU_OPC_NOP:
        if (!all_zero(cmd->raw, sizeof(cmd->raw))) {
            vnpu_guest_error(e, "queue %u cmd %u: NOP with a non-zero payload", x->q->id, index);
            r->status = VNPU_CPL_BAD_FIELD;
        }
        break;
    case VNPU_OPC_DMA_H2D:
        vnpu_dma_execute(x, &cmd->dma, true, r);
        break;
    case VNPU_OPC_DMA_D2H:
        vnpu_dma_execute(x, &cmd->dma, false, r);
        break;
    case VNPU_OPC_MATMUL:
        vnpu_compute_matmul(x, &cmd->matmul, r);
        break;
    }
    if (r->status != VNPU_CPL_OK) {
        vnpu_guest_error(e, "queue %u cmd %u: opcode 0x%x failed with status %u", x->q->id, index, cmd->opcode,
                         r->status);
    }
}

/*
 * Fetch and run the command at q's SQ head. Called and returns with the engine lock held; drops it while
 * touching guest memory or computing.
 */
static void step(VnpuEngine *e, VnpuQueue *q)
{
    uint32_t index = q->sq_head;
    uint64_t visible = q->db_time[index];
    uint64_t addr = q->sq_base + (uint64_t)index * sizeof(struct vnpu_hw_cmd);
    bool skip = q->job.ncmds && q->job.status != VNPU_CPL_OK;
    VnpuExec x = { .e = e, .q = q, .gen = q->gen };
    VnpuCmdResult r = { .status = VNPU_CPL_OK, .unit = VNPU_UNIT_NONE };
    struct vnpu_hw_cmd cmd;
    bool last;
    int rc;

    q->sq_head = (index + 1) & (q->sq_entries - 1);
    e->active_queue = q;
    pthread_mutex_unlock(&e->lock);

    rc = e->host.dma_read(e->host.opaque, addr, &cmd, sizeof(cmd));
    if (!rc && !skip) {
        execute(&x, &cmd, index, &r);
    }

    pthread_mutex_lock(&e->lock);
    e->active_queue = NULL;
    if (q->gen != x.gen) {
        /* Disabled or reset meanwhile: the transport side already reported (or dropped) this job. */
        vnpu_engine_rearm(e); /* a draining queue may have been waiting for us */
        return;
    }
    if (rc) {
        vnpu_guest_error(e, "queue %u: fetch of command %u at 0x%llx failed", q->id, index,
                         (unsigned long long)addr);
        vnpu_queue_set_error(e, q, VNPU_QERR_SQ_FETCH);
        return;
    }

    last = cmd.flags & VNPU_CMD_F_LAST;
    vnpu_timing_account(e, &q->job, visible, &r, !skip);
    q->job.ncmds++;
    q->job.tag = cmd.tag;
    if (!skip) {
        q->job.sq_index = index;
        if (r.status != VNPU_CPL_OK) {
            q->job.status = r.status;
        } else {
            e->stats.cmds_executed++;
        }
    }
    if (!last && q->job.ncmds >= VNPU_JOB_MAX_CMDS) {
        /* The job cannot end within the limit: end it here rather than wait for an F_LAST that may never come. */
        vnpu_guest_error(e, "queue %u cmd %u: job has no F_LAST within %u commands", q->id, index,
                         VNPU_JOB_MAX_CMDS);
        if (q->job.status == VNPU_CPL_OK) {
            q->job.status = VNPU_CPL_JOB_TOO_LONG;
            q->job.sq_index = index;
        }
        last = true;
    }
    if (last) {
        vnpu_queue_push_completion(e, q, &q->job);
        memset(&q->job, 0, sizeof(q->job));
    } else if (q->error) {
        /* A doorbell error stopped the queue while we ran: F_LAST can no longer arrive. */
        vnpu_queue_push_completion(e, q, &(VnpuJob){ .ncmds = q->job.ncmds, .status = VNPU_CPL_ABORTED,
                                                     .sq_index = q->job.sq_index, .tag = q->job.tag,
                                                     .t_start = q->job.t_start });
        memset(&q->job, 0, sizeof(q->job));
    }
}

void *vnpu_cp_worker_main(void *opaque)
{
    VnpuEngine *e = opaque;

    if (e->host.worker_start) {
        e->host.worker_start(e->host.opaque);
    }
    pthread_mutex_lock(&e->lock);
    while (!e->stopping) {
        VnpuQueue *q = pick_queue(e);

        if (!q) {
            e->worker_idle = true;
            pthread_cond_broadcast(&e->idle_cond);
            pthread_cond_wait(&e->work_cond, &e->lock);
            continue;
        }
        e->worker_idle = false;
        step(e, q);
    }
    e->worker_idle = true;
    pthread_cond_broadcast(&e->idle_cond);
    pthread_mutex_unlock(&e->lock);
    if (e->host.worker_stop) {
        e->host.worker_stop(e->host.opaque);
    }
    return NULL;
}
