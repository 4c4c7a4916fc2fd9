/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: timing model. Three engines (H2D DMA, compute cores, D2H DMA) each take their commands in fetch
 * order; a command starts when its job is visible (doorbell of the job's last command; for a barrier job also the
 * end of every earlier job of its queue), the job's previous command has ended, and its engine is free:
 *
 *   start = max(ready, busy_until[engine])          (compute: the core that frees up first)
 *   end   = start + cmd_overhead_ns + work           (busy_until[engine] = end)
 *
 *   DMA:    work = latency_ns + ceil(bytes * 1000 / MBps)
 *   MATMUL: work = max(ceil(2*m*n*k / GFLOPs), ceil(bytes(A, B, C) / GBps))
 *   EXEC:   work = vnpu_program_cost().modelled_ns   (per op: op_overhead + max(flops/FLOPs, bytes/BW))
 *   SYNTH:  work = ns
 *
 * NOP and commands that fail validation occupy no engine and cost cmd_overhead_ns; commands skipped after a
 * failure cost nothing. Every input of the model is itself modelled, so the result never depends on host speed.
 * docs/device.md describes the model for drivers.
 */
#include "vnpu_engine_int.h"

static uint64_t div_ceil(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

uint64_t vnpu_timing_dma_ns(const VnpuEngineConfig *cfg, bool to_device, uint64_t bytes)
{
    /* bytes <= devmem size <= 2^40, so bytes * 1000 cannot overflow */
    return (to_device ? cfg->h2d_latency_ns : cfg->d2h_latency_ns) +
           div_ceil(bytes * 1000, to_device ? cfg->h2d_mbps : cfg->d2h_mbps);
}

uint64_t vnpu_timing_matmul_ns(const VnpuEngineConfig *cfg, uint64_t flops, uint64_t bytes)
{
    return max_u64(div_ceil(flops, cfg->compute_gflops), div_ceil(bytes, cfg->devmem_gbps));
}

void vnpu_timing_account(VnpuEngine *e, VnpuJob *j, VnpuUnit u, VnpuSlot *s, bool executed, bool ok,
                         uint64_t work_ns)
{
    uint64_t ready = j->started ? j->t_end : max_u64(j->visible, j->barrier ? j->barrier_ready : 0);
    uint64_t start = ready, end = ready;

    if (executed) {
        uint64_t dur = e->cfg.cmd_overhead_ns;

        if (ok && u != VNPU_UNIT_NONE) {
            uint64_t *busy = &e->busy_until[u];
            unsigned slot = u, core = 0;

            dur += work_ns;
            if (u == VNPU_UNIT_COMPUTE) {
                for (unsigned c = 1; c < e->cfg.compute_cores; c++) {
                    if (e->core_busy_until[c] < e->core_busy_until[core]) {
                        core = c;
                    }
                }
                busy = &e->core_busy_until[core];
                slot = VNPU_UNIT_COUNT + core;
            }
            start = max_u64(ready, *busy);
            if (s) {
                s->resv_seq = ++e->resv_seq;
                s->resv_prev = *busy;
                s->resv_end = start + dur;
                s->resv_core = (uint8_t)core;
                e->resv_last[slot] = s->resv_seq;
            }
            *busy = start + dur;
            j->busy_ns[u] += dur;
            switch (u) {
            case VNPU_UNIT_H2D:
                e->stats.h2d_busy_ns += dur;
                break;
            case VNPU_UNIT_COMPUTE:
                e->stats.compute_busy_ns += dur;
                break;
            default:
                e->stats.d2h_busy_ns += dur;
                break;
            }
        }
        end = start + dur;
    }
    if (!j->started) {
        j->started = true;
        j->t_start = start;
    }
    j->t_end = end;
}

/*
 * An aborted job stops using its engines at `now` (the disable or reset): what it booked beyond that goes back
 * to the engine, which is then free at max(now, when it was free before the booking). Later bookings of other
 * jobs behind it on the same engine keep their times (they are already promised), so only an engine whose last
 * booking is this job's gets time back; the job's commands are walked last first so that several bookings of
 * one job on one engine unwind in turn. Busy-time telemetry and the job's own engine times shrink likewise.
 */
void vnpu_timing_release(VnpuEngine *e, VnpuJob *j, uint64_t now)
{
    for (uint32_t i = j->ncmds; i-- > 0;) {
        VnpuSlot *s = &j->cmds[i];
        unsigned slot;
        uint64_t *busy, back, given;

        if (!s->resv_seq) {
            continue;
        }
        slot = s->unit == VNPU_UNIT_COMPUTE ? (unsigned)VNPU_UNIT_COUNT + s->resv_core : (unsigned)s->unit;
        busy = s->unit == VNPU_UNIT_COMPUTE ? &e->core_busy_until[s->resv_core] : &e->busy_until[s->unit];
        if (e->resv_last[slot] != s->resv_seq || s->resv_end <= now || *busy != s->resv_end) {
            s->resv_seq = 0;
            continue; /* over already, or other work booked behind it */
        }
        back = max_u64(now, s->resv_prev);
        given = s->resv_end - back;
        *busy = back;
        e->resv_last[slot] = 0;
        s->resv_seq = 0;
        j->busy_ns[s->unit] -= given < j->busy_ns[s->unit] ? given : j->busy_ns[s->unit];
        switch (s->unit) {
        case VNPU_UNIT_H2D:
            e->stats.h2d_busy_ns -= given;
            break;
        case VNPU_UNIT_COMPUTE:
            e->stats.compute_busy_ns -= given;
            break;
        default:
            e->stats.d2h_busy_ns -= given;
            break;
        }
        /* An earlier booking of this job on the same engine may now be the last one again. */
        for (uint32_t k = i; k-- > 0;) {
            VnpuSlot *p = &j->cmds[k];

            if (p->resv_seq && p->unit == s->unit && p->resv_core == s->resv_core && p->resv_end == back) {
                e->resv_last[slot] = p->resv_seq;
                break;
            }
        }
    }
}
