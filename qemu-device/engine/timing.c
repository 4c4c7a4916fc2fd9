/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: timing model. Three units (H2D DMA, compute, D2H DMA) each run their commands in order; a command
 * starts when it is visible (doorbell time), its job's previous command has ended, and its unit is free:
 *
 *   start = max(visible, end of the job's previous command, busy_until[unit])
 *   end   = start + cmd_overhead_ns + work / rate      (busy_until[unit] = end)
 *
 * with work / rate = ceil(bytes * 1000 / MBps) ns for DMA and ceil(2*m*n*k / GFLOPs) ns for MATMUL. NOP and
 * failing commands occupy no unit and cost cmd_overhead_ns; skipped commands (after a failure) cost nothing.
 * A job's modelled end is its last command's end; docs/device.md describes the model for drivers.
 */
#include "vnpu_engine_int.h"

static uint64_t div_ceil(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

uint64_t vnpu_timing_duration(const VnpuEngineConfig *cfg, const VnpuCmdResult *r)
{
    uint64_t work = 0;

    if (r->status == VNPU_CPL_OK) {
        switch (r->unit) {
        case VNPU_UNIT_H2D:
            /* bytes <= devmem size <= 2^40, so bytes * 1000 cannot overflow */
            work = div_ceil(r->bytes * 1000, cfg->h2d_mbps);
            break;
        case VNPU_UNIT_D2H:
            work = div_ceil(r->bytes * 1000, cfg->d2h_mbps);
            break;
        case VNPU_UNIT_COMPUTE:
            work = div_ceil(r->flops, cfg->compute_gflops);
            break;
        case VNPU_UNIT_NONE:
            break;
        }
    }
    return cfg->cmd_overhead_ns + work;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

void vnpu_timing_account(VnpuEngine *e, VnpuJob *job, uint64_t visible_ns, const VnpuCmdResult *r, bool executed)
{
    uint64_t ready = job->ncmds ? max_u64(visible_ns, job->t_end) : visible_ns;
    uint64_t start = ready, end = ready;

    if (executed) {
        uint64_t dur = vnpu_timing_duration(&e->cfg, r);

        if (r->status == VNPU_CPL_OK && r->unit != VNPU_UNIT_NONE) {
            start = max_u64(ready, e->busy_until[r->unit]);
            e->busy_until[r->unit] = start + dur;
            switch (r->unit) {
            case VNPU_UNIT_H2D:
                e->stats.h2d_busy_ns += dur;
                e->stats.h2d_bytes += r->bytes;
                break;
            case VNPU_UNIT_COMPUTE:
                e->stats.compute_busy_ns += dur;
                e->stats.flops += r->flops;
                break;
            case VNPU_UNIT_D2H:
                e->stats.d2h_busy_ns += dur;
                e->stats.d2h_bytes += r->bytes;
                break;
            case VNPU_UNIT_NONE:
                break;
            }
        }
        end = start + dur;
    }
    if (!job->ncmds) {
        job->t_start = start;
    }
    job->t_end = end;
}
