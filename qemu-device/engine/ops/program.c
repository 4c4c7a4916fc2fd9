/* SPDX-License-Identifier: MIT */
/*
 * Program interpreter: decodes a vnpu_isa.h program, checks it, costs it, and runs it op by op through
 * VnpuProgramMem. Every read of the program goes through bounds-checked helpers (the program comes from guest
 * memory and is untrusted). Reentrant: all state lives on the caller's stack or in the heap per call.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "vnpu_program.h"
#include "vnpu_ops.h"

static atomic_int vnpu_ops_mode = -1; /* -1: not yet read from the environment */

void vnpu_ops_set_default_mode(VnpuKernelMode mode)
{
    atomic_store(&vnpu_ops_mode, (int)mode);
}

VnpuKernelMode vnpu_ops_default_mode(void)
{
    int m = atomic_load(&vnpu_ops_mode);

    if (m < 0) {
        const char *env = getenv("VNPU_KERNELS");

        m = (env && strcmp(env, "reference") == 0) ? VNPU_KERNELS_REFERENCE : VNPU_KERNELS_AUTO;
        atomic_store(&vnpu_ops_mode, m);
    }
    return (VnpuKernelMode)m;
}

/* A program whose header and tables were checked: every table lies inside code. */
typedef struct VnpuProgram {
    const uint8_t *code;
    size_t len;
    struct vnpu_isa_program hdr;
} VnpuProgram;

static int range_ok(uint64_t off, uint64_t size, uint64_t limit)
{
    return off <= limit && size <= limit - off;
}

static int program_open(VnpuProgram *p, const void *code, size_t len)
{
    const struct vnpu_isa_program *h = &p->hdr;

    if (!code || len < sizeof(p->hdr) || len > VNPU_PROG_MAX_LEN) {
        return -1;
    }
    p->code = code;
    p->len = len;
    memcpy(&p->hdr, code, sizeof(p->hdr));
    if (h->magic != VNPU_ISA_PROGRAM_MAGIC || h->version_major != VNPU_ISA_VERSION_MAJOR ||
        h->header_size < sizeof(*h) || h->header_size > len || h->flags || h->rsvd0 || h->rsvd1 ||
        h->total_size != len || h->num_bindings < 1 || h->num_bindings > VNPU_ISA_MAX_BINDINGS ||
        h->num_tensors > VNPU_ISA_MAX_TENSORS || h->num_ops > VNPU_ISA_MAX_OPS ||
        (h->bindings_offset | h->tensors_offset | h->ops_offset) % 8) {
        return -1;
    }
    if (!range_ok(h->bindings_offset, (uint64_t)h->num_bindings * sizeof(struct vnpu_isa_binding), len) ||
        !range_ok(h->tensors_offset, (uint64_t)h->num_tensors * sizeof(struct vnpu_isa_tensor), len) ||
        !range_ok(h->ops_offset, h->ops_size, len) || h->bindings_offset < h->header_size ||
        h->tensors_offset < h->header_size || h->ops_offset < h->header_size) {
        return -1;
    }
    return 0;
}

static void program_binding(const VnpuProgram *p, uint32_t i, struct vnpu_isa_binding *b)
{
    memcpy(b, p->code + p->hdr.bindings_offset + (uint64_t)i * sizeof(*b), sizeof(*b));
}

/* Decodes tensor `idx` into t (data NULL) and its location; checks it fits its binding. */
static int program_tensor(const VnpuProgram *p, uint32_t idx, VnpuTensor *t, uint32_t *binding,
                          uint64_t *offset)
{
    struct vnpu_isa_tensor d;
    struct vnpu_isa_binding b;
    uint64_t n = 1;
    unsigned i;

    if (idx >= p->hdr.num_tensors) {
        return -1;
    }
    memcpy(&d, p->code + p->hdr.tensors_offset + (uint64_t)idx * sizeof(d), sizeof(d));
    if (d.binding >= p->hdr.num_bindings || d.dtype != VNPU_DTYPE_F32 || d.rank > VNPU_ISA_MAX_RANK ||
        d.rsvd0 || d.offset % 4) {
        return -1;
    }
    memset(t, 0, sizeof(*t));
    t->rank = d.rank;
    for (i = 0; i < VNPU_ISA_MAX_RANK; i++) {
        if (i >= d.rank) {
            if (d.dims[i]) {
                return -1;
            }
            continue;
        }
        t->dims[i] = d.dims[i];
        /* dims are 32-bit; 2^62 bytes bounds every product we form below. */
        if (d.dims[i] && n > (UINT64_C(1) << 60) / d.dims[i]) {
            return -1;
        }
        n *= d.dims[i];
    }
    t->count = n;
    program_binding(p, d.binding, &b);
    if (!range_ok(d.offset, n * 4, b.size)) {
        return -1;
    }
    *binding = d.binding;
    *offset = d.offset;
    return 0;
}

/*
 * Whether an op may write an output whose bytes overlap input `in`'s. Kernels read their inputs while they write
 * their output, so an output that partly overlaps an input, or aliases an input of an op that is not
 * elementwise, would make the result depend on loop order and hand memcpy-based kernels (CONCAT) overlapping
 * ranges (undefined). Allowed: COPY (a memmove) with any overlap, and the elementwise ops computing in place
 * on their first input (exactly the same bytes). The compiler never emits anything else.
 */
static int operand_overlap_ok(uint32_t opcode, unsigned in, uint64_t out_lo, uint64_t out_len, uint64_t in_lo,
                              uint64_t in_len)
{
    if (!out_len || !in_len || out_lo >= in_lo + in_len || in_lo >= out_lo + out_len || opcode == VNPU_ISA_OP_COPY) {
        return 1;
    }
    return in == 0 && out_lo == in_lo && out_len == in_len &&
           (opcode == VNPU_ISA_OP_UNARY || opcode == VNPU_ISA_OP_BINARY || opcode == VNPU_ISA_OP_CHANNEL_AFFINE);
}

/* Every output of `a` against every input, by (binding, byte offset) or, with binding NULL, by host pointer. */
static int operands_overlap_ok(const VnpuOpArgs *a, const uint32_t *binding, const uint64_t *offset)
{
    unsigned o, i;

    for (o = a->num_inputs; o < a->num_inputs + a->num_outputs; o++) {
        for (i = 0; i < a->num_inputs; i++) {
            uint64_t olo = binding ? offset[o] : (uint64_t)(uintptr_t)a->t[o].data;
            uint64_t ilo = binding ? offset[i] : (uint64_t)(uintptr_t)a->t[i].data;

            if (binding ? binding[o] != binding[i] : (!a->t[o].data || !a->t[i].data)) {
                continue;
            }
            if (!operand_overlap_ok(a->opcode, i, olo, a->t[o].count * 4, ilo, a->t[i].count * 4)) {
                return 0;
            }
        }
    }
    return 1;
}

/*
 * Decodes the op record at *pos into args (tensor data pointers NULL) and the tensors' binding locations.
 * Advances *pos. Returns 0 if the op is well formed (structure and semantics).
 */
static int program_op(const VnpuProgram *p, uint64_t *pos, VnpuOpArgs *args, uint32_t *binding,
                      uint64_t *offset)
{
    uint64_t end = p->hdr.ops_offset + p->hdr.ops_size;
    struct vnpu_isa_op op;
    uint64_t operand_bytes;
    unsigned k, nops;
    int attr;

    if (!range_ok(*pos, sizeof(op), end)) {
        return -1;
    }
    memcpy(&op, p->code + *pos, sizeof(op));
    attr = vnpu_isa_attr_size(op.opcode);
    nops = op.num_inputs + op.num_outputs;
    if (attr < 0 || (uint32_t)attr != op.attr_size || op.flags || op.num_inputs < 1 || op.num_outputs < 1 ||
        nops > VNPU_ISA_MAX_OPERANDS || attr > (int)sizeof(args->attr)) {
        return -1;
    }
    operand_bytes = ((uint64_t)nops * 4 + 7) / 8 * 8;
    if (op.size != sizeof(op) + operand_bytes + op.attr_size || !range_ok(*pos, op.size, end)) {
        return -1;
    }
    memset(&args->attr, 0, sizeof(args->attr));
    args->shadows = NULL;
    args->weights_cache_max = 0;
    args->opcode = op.opcode;
    args->num_inputs = op.num_inputs;
    args->num_outputs = op.num_outputs;
    for (k = 0; k < nops; k++) {
        uint32_t idx;
        struct vnpu_isa_binding b;

        memcpy(&idx, p->code + *pos + sizeof(op) + 4 * k, 4);
        if (program_tensor(p, idx, &args->t[k], &binding[k], &offset[k])) {
            return -1;
        }
        if (k >= op.num_inputs) {
            program_binding(p, binding[k], &b);
            if (b.kind == VNPU_ISA_BIND_WEIGHTS || b.kind == VNPU_ISA_BIND_INPUT) {
                return -1; /* read-only slots */
            }
        }
    }
    memcpy(&args->attr, p->code + *pos + sizeof(op) + operand_bytes, op.attr_size);
    *pos += op.size;
    if (!operands_overlap_ok(args, binding, offset)) {
        return -1;
    }
    return vnpu_ops_check(args) ? -1 : 0;
}

static int program_check_bindings(const VnpuProgram *p)
{
    unsigned i, weights = 0;

    for (i = 0; i < p->hdr.num_bindings; i++) {
        struct vnpu_isa_binding b;

        program_binding(p, i, &b);
        if (b.kind < VNPU_ISA_BIND_WEIGHTS || b.kind > VNPU_ISA_BIND_SCRATCH || b.flags) {
            return -1;
        }
        weights += b.kind == VNPU_ISA_BIND_WEIGHTS;
    }
    return weights == 1 ? 0 : -1;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t op_bytes(const VnpuOpArgs *a)
{
    uint64_t b = 0;
    unsigned k;

    for (k = 0; k < a->num_inputs + a->num_outputs; k++) {
        b = sat_add(b, a->t[k].count * 4);
    }
    return b;
}

static uint64_t ns_for(uint64_t amount, uint64_t per_sec)
{
    __uint128_t ns;

    if (!per_sec) {
        return 0;
    }
    ns = (__uint128_t)amount * 1000000000u / per_sec;
    return ns > UINT64_MAX ? UINT64_MAX : (uint64_t)ns;
}

/*
 * Every sum saturates: a hostile program must never wrap its cost into a small one (the device refuses an EXEC
 * whose modelled cost exceeds VNPU_EXEC_MAX_NS, compute.c).
 */
static void cost_add(VnpuProgramCost *c, const VnpuComputeModel *m, const VnpuOpArgs *a)
{
    uint64_t flops = vnpu_ops_flops(a), bytes = op_bytes(a);
    uint64_t tf = m ? ns_for(flops, m->flops_per_sec) : 0;
    uint64_t tb = m ? ns_for(bytes, m->mem_bytes_per_sec) : 0;

    c->ops++;
    c->flops = sat_add(c->flops, flops);
    c->bytes = sat_add(c->bytes, bytes);
    c->modelled_ns = sat_add(c->modelled_ns, sat_add(m ? m->op_overhead_ns : 0, tf > tb ? tf : tb));
}

/*
 * Decodes and checks the ops of an opened program in order, adding each to cost when cost is non-NULL.
 * Returns VNPU_CPL_OK, or VNPU_CPL_PROGRAM_INVALID with *bad_op (when non-NULL) the index of the first bad op.
 * *end is where the last op decoded ended.
 */
static int program_scan(const VnpuProgram *p, const VnpuComputeModel *model, VnpuProgramCost *cost,
                        uint32_t *bad_op, uint64_t *end)
{
    VnpuOpArgs *args;
    uint32_t binding[VNPU_ISA_MAX_OPERANDS];
    uint64_t offset[VNPU_ISA_MAX_OPERANDS];
    uint64_t pos;
    uint32_t i;
    int ret = VNPU_CPL_OK;

    args = malloc(sizeof(*args));
    if (!args) {
        return VNPU_CPL_PROGRAM_INVALID;
    }
    pos = p->hdr.ops_offset;
    for (i = 0; i < p->hdr.num_ops; i++) {
        if (program_op(p, &pos, args, binding, offset)) {
            if (bad_op) {
                *bad_op = i;
            }
            ret = VNPU_CPL_PROGRAM_INVALID;
            break;
        }
        if (cost) {
            cost_add(cost, model, args);
        }
    }
    free(args);
    *end = pos;
    return ret;
}

int vnpu_program_validate(const void *code, size_t code_len, uint32_t num_bindings, uint32_t *bad_op)
{
    VnpuProgram p;
    uint64_t end;
    int ret;

    if (bad_op) {
        *bad_op = 0;
    }
    if (program_open(&p, code, code_len) || program_check_bindings(&p) || num_bindings < p.hdr.num_bindings) {
        return VNPU_CPL_PROGRAM_INVALID;
    }
    ret = program_scan(&p, NULL, NULL, bad_op, &end);
    if (ret == VNPU_CPL_OK && end != p.hdr.ops_offset + p.hdr.ops_size) {
        if (bad_op) {
            *bad_op = p.hdr.num_ops;
        }
        ret = VNPU_CPL_PROGRAM_INVALID;
    }
    return ret;
}

int vnpu_program_cost(const void *code, size_t code_len, const VnpuComputeModel *model, VnpuProgramCost *cost)
{
    VnpuProgram p;
    uint64_t end;

    memset(cost, 0, sizeof(*cost));
    if (program_open(&p, code, code_len) || program_check_bindings(&p)) {
        return VNPU_CPL_PROGRAM_INVALID;
    }
    return program_scan(&p, model, cost, NULL, &end);
}

static void unmap_all(const VnpuProgramMem *mem, VnpuOpArgs *a, const uint64_t *addr, unsigned n)
{
    unsigned k;

    for (k = 0; k < n; k++) {
        if (a->t[k].data) {
            mem->unmap(mem->opaque, a->t[k].data, addr[k], a->t[k].count * 4, k >= a->num_inputs);
            a->t[k].data = NULL;
        }
    }
}

int vnpu_program_execute(const VnpuProgramRun *run, const VnpuProgramMem *mem, VnpuProgramCost *cost,
                         uint32_t *fail_op)
{
    VnpuProgram p;
    VnpuOpArgs *args;
    uint32_t binding[VNPU_ISA_MAX_OPERANDS];
    uint64_t offset[VNPU_ISA_MAX_OPERANDS], addr[VNPU_ISA_MAX_OPERANDS];
    VnpuKernelMode mode = vnpu_ops_default_mode();
    VnpuShadows *shadows;
    uint64_t pos;
    uint32_t i;
    int ret = VNPU_CPL_OK;

    memset(cost, 0, sizeof(*cost));
    if (fail_op) {
        *fail_op = 0;
    }
    if (!run || !mem || !mem->map || !mem->unmap ||
        program_open(&p, run->code, run->code_len) || program_check_bindings(&p) || !run->bindings ||
        run->num_bindings < p.hdr.num_bindings) {
        return VNPU_CPL_PROGRAM_INVALID;
    }
    /* Check the whole program first: a malformed op must not leave half of the outputs written. */
    ret = vnpu_program_validate(run->code, run->code_len, run->num_bindings, fail_op);
    if (ret != VNPU_CPL_OK) {
        return ret;
    }
    args = malloc(sizeof(*args));
    if (!args) {
        return VNPU_CPL_PROGRAM_INVALID;
    }
    shadows = mode == VNPU_KERNELS_REFERENCE || run->timing_only ? NULL : vnpu_shadows_new();
    pos = p.hdr.ops_offset;
    for (i = 0; i < p.hdr.num_ops; i++) {
        unsigned k, n;

        if (run->cancel && *run->cancel) {
            ret = VNPU_CPL_ABORTED;
            break;
        }
        if (program_op(&p, &pos, args, binding, offset)) {
            ret = VNPU_CPL_PROGRAM_INVALID;
            break;
        }
        args->cancel = run->cancel;
        cost_add(cost, run->model, args);
        if (run->timing_only) {
            continue;
        }
        n = args->num_inputs + args->num_outputs;
        for (k = 0; k < n; k++) {
            uint64_t bytes = args->t[k].count * 4;

            addr[k] = run->bindings[binding[k]] + offset[k];
            if (addr[k] < offset[k]) { /* wrapped around the address space */
                ret = VNPU_CPL_MMU_FAULT;
                break;
            }
            if (!bytes) {
                continue;
            }
            args->t[k].data = mem->map(mem->opaque, addr[k], bytes, k >= args->num_inputs);
            if (!args->t[k].data) {
                ret = VNPU_CPL_MMU_FAULT;
                break;
            }
        }
        /*
         * Bindings of the EXEC table, or page tables mapping two virtual pages to one physical page, can make
         * operands alias in device memory although the program keeps them apart: check what the kernel gets.
         */
        if (ret == VNPU_CPL_OK && !operands_overlap_ok(args, NULL, NULL)) {
            ret = VNPU_CPL_PROGRAM_INVALID;
        }
        if (ret == VNPU_CPL_OK) {
            int r;

            /* The outputs are about to change: blocked copies of their old contents are stale. */
            for (k = args->num_inputs; k < n; k++) {
                vnpu_shadows_invalidate(shadows, addr[k], args->t[k].count * 4);
            }
            args->shadows = shadows;
            args->mem = mem;
            args->weights_cache_max = run->weights_cache_max;
            memcpy(args->addr, addr, n * sizeof(addr[0]));
            r = vnpu_ops_run(args, mode);

            ret = r == VNPU_CPL_OK ? VNPU_CPL_OK : r == VNPU_CPL_ABORTED ? VNPU_CPL_ABORTED : VNPU_CPL_PROGRAM_INVALID;
        }
        unmap_all(mem, args, addr, n);
        if (ret != VNPU_CPL_OK) {
            break;
        }
    }
    if (ret != VNPU_CPL_OK && fail_op) {
        *fail_op = i;
    }
    vnpu_shadows_free(shadows);
    free(args);
    return ret;
}
