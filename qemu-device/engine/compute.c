/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: compute commands (MATMUL, EXEC, SYNTH) on a compute core.
 *
 * Each command runs in two steps. prepare() validates it, checks its operands against the job's context and
 * works out its modelled duration; the compute FIFO prepares commands one at a time in fetch order, which keeps
 * the model deterministic. run() then does the functional work on the core, in parallel with other cores;
 * nothing is run in timing-only mode (CONTROL.TIMING_ONLY: outputs are undefined).
 *
 * MATMUL numerics (part of the device contract, see docs/device.md): every C[i][j] is accumulated in f32,
 * starting from +0.0f and adding A[i][p] * B[p][j] for p = 0, 1, ..., k-1 in that order, with round-to-nearest
 * and no fused multiply-add. A reference loop in that order reproduces the device bit for bit.
 *
 * Operands are reached through VnpuProgramMem: a virtually contiguous operand whose pages are also physically
 * contiguous is used in place; otherwise it goes through a bounce buffer (copied in, and out for outputs).
 */
#include <stdlib.h>
#include <string.h>

#include "vnpu_engine_int.h"
#include "vnpu_program.h"

#define COL_BLOCK 512u /* columns of C kept hot while the k loop streams rows of B */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* ---- operand access ---------------------------------------------------------------------------------------- */

typedef struct ProgMem {
    const VnpuExec *x;
    bool faulted;
    uint64_t fault;
    uint64_t budget;    /* bounce bytes this command may hold at once (0: unlimited) */
    uint64_t held;
    bool refused;       /* an operand needed more than the budget */
} ProgMem;

/* A compute core's share of host_mem_max: what one command may hold in bounce buffers at once. */
static uint64_t core_budget(const VnpuEngine *e)
{
    return e->cfg.host_mem_max / e->cfg.compute_cores;
}

static void host_mem_charge(VnpuEngine *e, uint64_t len)
{
    uint64_t now = __atomic_add_fetch(&e->host_mem_used, len, __ATOMIC_RELAXED);
    uint64_t peak = __atomic_load_n(&e->host_mem_peak, __ATOMIC_RELAXED);

    while (now > peak && !__atomic_compare_exchange_n(&e->host_mem_peak, &peak, now, true, __ATOMIC_RELAXED,
                                                       __ATOMIC_RELAXED)) {
    }
}

static void note_fault(ProgMem *m, uint64_t va)
{
    if (!m->faulted) {
        m->faulted = true;
        m->fault = va;
    }
}

static void pm_unmap(void *opaque, void *ptr, uint64_t addr, uint64_t len, int write);

static void *pm_map(void *opaque, uint64_t addr, uint64_t len, int write)
{
    ProgMem *m = opaque;
    VnpuEngine *e = m->x->e;
    uint64_t pa, run, fault;
    void *bounce;

    if (!vnpu_mmu_translate(m->x, addr, len, write, &pa, &run, &fault)) {
        note_fault(m, fault);
        return NULL;
    }
    if (run == len) {
        return e->devmem + pa; /* contiguous: in place */
    }
    if (len > e->cfg.devmem_size || !vnpu_mmu_check(m->x, addr, len, write, &fault)) {
        note_fault(m, len > e->cfg.devmem_size ? addr + e->cfg.devmem_size : fault);
        return NULL;
    }
    /* Bounded before anything is allocated: the guest picks the operands (64 per op, aliased pages...). */
    if (m->budget && (len > m->budget || m->held > m->budget - len)) {
        m->refused = true;
        return NULL;
    }
    bounce = malloc(len);
    if (!bounce) {
        note_fault(m, addr);
        return NULL;
    }
    m->held += len;
    host_mem_charge(e, len);
    if (!vnpu_mmu_copy(m->x, addr, bounce, len, false, &fault)) {
        pm_unmap(m, bounce, addr, len, 0);
        note_fault(m, fault);
        return NULL;
    }
    return bounce;
}

static void pm_unmap(void *opaque, void *ptr, uint64_t addr, uint64_t len, int write)
{
    ProgMem *m = opaque;
    VnpuEngine *e = m->x->e;
    uint64_t fault;

    if (!ptr || ((uint8_t *)ptr >= e->devmem && (uint8_t *)ptr < e->devmem + e->cfg.devmem_size)) {
        return;
    }
    if (write && !vnpu_mmu_copy(m->x, addr, ptr, len, true, &fault)) {
        note_fault(m, fault); /* the tables changed under the job */
    }
    free(ptr);
    m->held -= len;
    __atomic_sub_fetch(&e->host_mem_used, len, __ATOMIC_RELAXED);
}

/*
 * The kernels' own buffers (oneDNN's blocked and padded copies of operands) share the command's budget with
 * its bounce buffers. A refusal is not an error: the kernel falls back to one that needs no copies.
 */
static int pm_reserve(void *opaque, uint64_t len)
{
    ProgMem *m = opaque;

    if (m->budget && (len > m->budget || m->held > m->budget - len)) {
        return -1;
    }
    m->held += len;
    host_mem_charge(m->x->e, len);
    return 0;
}

static void pm_release(void *opaque, uint64_t len)
{
    ProgMem *m = opaque;

    m->held -= len;
    __atomic_sub_fetch(&m->x->e->host_mem_used, len, __ATOMIC_RELAXED);
}

static const VnpuProgramMem *prog_mem(ProgMem *m, VnpuProgramMem *pm)
{
    pm->opaque = m;
    pm->map = pm_map;
    pm->unmap = pm_unmap;
    pm->reserve = pm_reserve;
    pm->release = pm_release;
    return pm;
}

static VnpuComputeModel model_of(const VnpuEngine *e)
{
    return (VnpuComputeModel){
        .flops_per_sec = (uint64_t)e->cfg.compute_gflops * 1000000000ull,
        .mem_bytes_per_sec = (uint64_t)e->cfg.devmem_gbps * 1000000000ull,
        .op_overhead_ns = e->cfg.op_overhead_ns,
    };
}

/* ---- prepare ----------------------------------------------------------------------------------------------- */

static void prepare_matmul(const VnpuExec *x, const struct vnpu_hw_matmul *mm, VnpuCmdResult *r)
{
    uint64_t m = mm->m, n = mm->n, k = mm->k;
    uint64_t a_len, b_len, c_len;

    if (mm->rsvd0 || mm->dtype != VNPU_DTYPE_F32 || !m || !n || !k || m > VNPU_MATMUL_DIM_MAX ||
        n > VNPU_MATMUL_DIM_MAX || k > VNPU_MATMUL_DIM_MAX || mm->a_addr % 4 || mm->b_addr % 4 ||
        mm->c_addr % 4) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    a_len = m * k * 4; /* each dimension <= 2^14, so at most 2^30 bytes */
    b_len = k * n * 4;
    c_len = m * n * 4;
    /* C is written while A and B are still read: an in-place product is not defined, so it is refused. */
    if (overlaps(mm->c_addr, c_len, mm->a_addr, a_len) || overlaps(mm->c_addr, c_len, mm->b_addr, b_len)) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    if (!vnpu_mmu_check(x, mm->a_addr, a_len, false, &r->fault_addr) ||
        !vnpu_mmu_check(x, mm->b_addr, b_len, false, &r->fault_addr) ||
        !vnpu_mmu_check(x, mm->c_addr, c_len, true, &r->fault_addr)) {
        r->status = VNPU_CPL_MMU_FAULT;
        return;
    }
    r->flops = 2 * m * n * k;
    r->work_ns = vnpu_timing_matmul_ns(&x->e->cfg, r->flops, a_len + b_len + c_len);
}

static void prepare_exec(const VnpuExec *x, const struct vnpu_hw_exec *ex, VnpuComputePrep *p, VnpuCmdResult *r)
{
    VnpuComputeModel model = model_of(x->e);
    VnpuProgramCost cost = { 0 };
    uint32_t bad_op = 0;
    int st;

    if (!vnpu_all_zero(ex->rsvd, sizeof(ex->rsvd)) || ex->prog_addr % 8 || !ex->prog_len ||
        ex->prog_len > VNPU_PROG_MAX_LEN || !ex->num_bindings || ex->num_bindings > VNPU_EXEC_MAX_BINDINGS ||
        ex->bindings_addr % 8) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    p->code = malloc(ex->prog_len);
    p->bindings = malloc(ex->num_bindings * sizeof(uint64_t));
    if (!p->code || !p->bindings) {
        r->status = VNPU_CPL_PROGRAM_INVALID;
        return;
    }
    if (!vnpu_mmu_copy(x, ex->prog_addr, p->code, ex->prog_len, false, &r->fault_addr) ||
        !vnpu_mmu_copy(x, ex->bindings_addr, p->bindings, ex->num_bindings * sizeof(uint64_t), false,
                       &r->fault_addr)) {
        r->status = VNPU_CPL_MMU_FAULT;
        return;
    }
    st = vnpu_program_validate(p->code, ex->prog_len, ex->num_bindings, &bad_op);
    if (st == VNPU_CPL_OK) {
        st = vnpu_program_cost(p->code, ex->prog_len, &model, &cost);
    }
    if (st != VNPU_CPL_OK) {
        vnpu_guest_error(x->e, "EXEC: program invalid (op %u)", bad_op);
        r->status = VNPU_CPL_PROGRAM_INVALID;
        return;
    }
    /*
     * Like SYNTH's ns: one command may not book a core for more than VNPU_EXEC_MAX_NS of modelled time (the sums
     * saturate, so no program wraps below it). Refused before it runs or reserves anything.
     */
    if (cost.modelled_ns > VNPU_EXEC_MAX_NS) {
        vnpu_guest_error(x->e, "EXEC: modelled cost %llu ns above the limit of %llu ns",
                         (unsigned long long)cost.modelled_ns, (unsigned long long)VNPU_EXEC_MAX_NS);
        r->status = VNPU_CPL_PROGRAM_INVALID;
        return;
    }
    r->flops = cost.flops;
    r->work_ns = cost.modelled_ns;
}

void vnpu_compute_prepare(const VnpuExec *x, VnpuComputePrep *p, VnpuCmdResult *r)
{
    const struct vnpu_hw_cmd *cmd = &x->s->cmd;

    memset(p, 0, sizeof(*p));
    r->status = VNPU_CPL_OK;
    switch (cmd->opcode) {
    case VNPU_OPC_MATMUL:
        prepare_matmul(x, &cmd->matmul, r);
        break;
    case VNPU_OPC_EXEC:
        prepare_exec(x, &cmd->exec, p, r);
        break;
    case VNPU_OPC_SYNTH:
        if (!cmd->synth.ns || cmd->synth.ns > VNPU_SYNTH_MAX_NS ||
            !vnpu_all_zero(cmd->synth.rsvd, sizeof(cmd->synth.rsvd))) {
            r->status = VNPU_CPL_BAD_FIELD;
        } else {
            r->work_ns = cmd->synth.ns;
        }
        break;
    default:
        r->status = VNPU_CPL_BAD_OPCODE; /* the CP routes only compute opcodes here */
        break;
    }
}

/* ---- run --------------------------------------------------------------------------------------------------- */

static void run_matmul(const VnpuExec *x, const struct vnpu_hw_matmul *mm, VnpuCmdResult *r)
{
    uint64_t m = mm->m, n = mm->n, k = mm->k;
    ProgMem pmem = { .x = x };
    const float *a, *b;
    float *c;

    a = pm_map(&pmem, mm->a_addr, m * k * 4, 0);
    b = pm_map(&pmem, mm->b_addr, k * n * 4, 0);
    c = pm_map(&pmem, mm->c_addr, m * n * 4, 1);
    if (!a || !b || !c) {
        r->status = VNPU_CPL_MMU_FAULT;
        goto out;
    }
    for (uint64_t i = 0; i < m; i++) {
        const float *arow = a + i * k;
        float *crow = c + i * n;

        if (vnpu_exec_cancelled(x)) {
            r->status = VNPU_CPL_ABORTED;
            goto out;
        }
        for (uint64_t j0 = 0; j0 < n; j0 += COL_BLOCK) {
            uint64_t jn = n - j0 < COL_BLOCK ? n - j0 : COL_BLOCK;
            float *cblk = crow + j0;

            memset(cblk, 0, jn * sizeof(float));
            for (uint64_t p = 0; p < k; p++) {
                const float av = arow[p];
                const float *brow = b + p * n + j0;

                for (uint64_t j = 0; j < jn; j++) {
                    cblk[j] += av * brow[j];
                }
            }
        }
    }
out:
    pm_unmap(&pmem, (void *)a, mm->a_addr, m * k * 4, 0);
    pm_unmap(&pmem, (void *)b, mm->b_addr, k * n * 4, 0);
    pm_unmap(&pmem, c, mm->c_addr, m * n * 4, r->status == VNPU_CPL_OK);
    if (r->status == VNPU_CPL_OK && pmem.faulted) {
        r->status = VNPU_CPL_MMU_FAULT;
    }
    if (pmem.faulted) {
        r->fault_addr = pmem.fault;
    }
}

static void run_exec(const VnpuExec *x, const struct vnpu_hw_exec *ex, VnpuComputePrep *p, VnpuCmdResult *r)
{
    VnpuComputeModel model = model_of(x->e);
    ProgMem pmem = { .x = x, .budget = core_budget(x->e) };
    VnpuProgramMem pm;
    VnpuProgramCost cost = { 0 };
    VnpuProgramRun run = {
        .code = p->code,
        .code_len = ex->prog_len,
        .bindings = p->bindings,
        .num_bindings = ex->num_bindings,
        .timing_only = 0,
        .cancel = &x->j->cancel,
        .model = &model,
        /* Converted weights kept across runs: at most a core's share of host-mem-max, like its bounce buffers. */
        .weights_cache_max = core_budget(x->e),
    };
    uint32_t fail_op = 0;
    int st = vnpu_program_execute(&run, prog_mem(&pmem, &pm), &cost, &fail_op);

    if (pmem.refused && !pmem.faulted) {
        vnpu_guest_error(x->e, "EXEC: op %u needs more bounce memory than a core's share of host-mem-max (%llu)",
                         fail_op, (unsigned long long)pmem.budget);
        st = VNPU_CPL_PROGRAM_INVALID;
    }
    if (st == VNPU_CPL_OK && pmem.faulted) {
        st = VNPU_CPL_MMU_FAULT;
    }
    if (st == VNPU_CPL_MMU_FAULT) {
        r->fault_addr = pmem.faulted ? pmem.fault : 0;
    }
    if (st != VNPU_CPL_OK && st != VNPU_CPL_ABORTED) {
        vnpu_guest_error(x->e, "EXEC: op %u failed with status %d", fail_op, st);
    }
    r->status = (uint16_t)st;
}

void vnpu_compute_run(const VnpuExec *x, VnpuComputePrep *p, VnpuCmdResult *r)
{
    const struct vnpu_hw_cmd *cmd = &x->s->cmd;

    if (__atomic_load_n(&x->e->control, __ATOMIC_RELAXED) & VNPU_CONTROL_TIMING_ONLY) {
        return;
    }
    switch (cmd->opcode) {
    case VNPU_OPC_MATMUL:
        run_matmul(x, &cmd->matmul, r);
        break;
    case VNPU_OPC_EXEC:
        run_exec(x, &cmd->exec, p, r);
        break;
    default:
        break; /* SYNTH: modelled time only */
    }
}

void vnpu_compute_release(VnpuComputePrep *p)
{
    free(p->code);
    free(p->bindings);
    p->code = NULL;
    p->bindings = NULL;
}
