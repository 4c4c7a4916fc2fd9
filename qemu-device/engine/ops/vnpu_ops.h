/* SPDX-License-Identifier: MIT */
/*
 * Program interpreter internals: decoded op arguments and the kernel entry points (reference and fast).
 *
 * Pure C11, no QEMU headers. Kernels are reentrant: they touch only their arguments (the oneDNN fast paths
 * share one process-wide CPU engine, which oneDNN makes thread-safe).
 */
#ifndef VNPU_OPS_H
#define VNPU_OPS_H

#include <stdint.h>

#include "vnpu_hw.h"
#include "vnpu_isa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A mapped tensor: host pointer to dense row-major f32 data. data may be NULL when count == 0. */
typedef struct VnpuTensor {
    float *data;
    uint32_t rank;
    uint64_t dims[VNPU_ISA_MAX_RANK];
    uint64_t count; /* product of dims (1 for rank 0) */
} VnpuTensor;

/* Attributes of any opcode, copied out of the program so kernels read them aligned. */
typedef union VnpuOpAttr {
    struct vnpu_isa_conv conv;
    struct vnpu_isa_pool pool;
    struct vnpu_isa_matmul matmul;
    struct vnpu_isa_binary binary;
    struct vnpu_isa_unary unary;
    struct vnpu_isa_affine affine;
    struct vnpu_isa_axis axis;
    struct vnpu_isa_slice slice;
    struct vnpu_isa_transpose transpose;
    struct vnpu_isa_resize resize;
    struct vnpu_isa_softmax softmax;
    struct vnpu_isa_reduce reduce;
    struct vnpu_isa_norm norm;
    struct vnpu_isa_pad pad;
    uint64_t raw[16];
} VnpuOpAttr;

/*
 * Channel-blocked copies of convolution outputs, kept for the rest of one program run (kernels_dnnl.c) so that a
 * later convolution reading the same bytes in the same layout skips its input reorder. Keyed by device address
 * range; vnpu_program_execute() drops every copy an op's output overlaps before the op runs (the plain tensor
 * is always written too, so dropping is always correct).
 */
typedef struct VnpuShadows VnpuShadows;

/* A table for one run; NULL (copies off) without oneDNN or memory. */
VnpuShadows *vnpu_shadows_new(void);
void vnpu_shadows_free(VnpuShadows *s);
/* Drops every copy overlapping [addr, addr + len). s may be NULL. */
void vnpu_shadows_invalidate(VnpuShadows *s, uint64_t addr, uint64_t len);

/* One decoded op: tensors t[0..num_inputs) are read, t[num_inputs..num_inputs+num_outputs) written. */
typedef struct VnpuOpArgs {
    uint32_t opcode;
    uint32_t num_inputs;
    uint32_t num_outputs;
    VnpuTensor t[VNPU_ISA_MAX_OPERANDS];
    VnpuOpAttr attr;
    const volatile int *cancel; /* may be NULL */
    VnpuShadows *shadows; /* may be NULL; with it, addr[] holds every operand's device address */
    uint64_t addr[VNPU_ISA_MAX_OPERANDS];
    const struct VnpuProgramMem *mem; /* may be NULL; its reserve()/release() bound the kernels' own buffers */
    /* Bytes of converted convolution weights that may be kept across runs (kernels_dnnl.c); 0: none. */
    uint64_t weights_cache_max;
} VnpuOpArgs;

/* Which kernels vnpu_ops_run() uses. */
typedef enum VnpuKernelMode {
    VNPU_KERNELS_AUTO = 0,      /* fast (oneDNN) where it applies, reference otherwise */
    VNPU_KERNELS_REFERENCE = 1, /* reference kernels only */
    VNPU_KERNELS_FAST_ONLY = 2, /* tests: fail with -1 when no fast kernel applies */
} VnpuKernelMode;

/*
 * Process-wide default for vnpu_program_execute() (initially AUTO, or REFERENCE when the environment variable
 * VNPU_KERNELS=reference is set). Thread-safe.
 */
void vnpu_ops_set_default_mode(VnpuKernelMode mode);
VnpuKernelMode vnpu_ops_default_mode(void);

/*
 * Check an op's shapes and attributes (the semantic half of vnpu_program_validate; the structural half
 * is done while decoding). Returns 0 if valid. Only dims/ranks of args->t are read.
 */
int vnpu_ops_check(const VnpuOpArgs *args);

/* Arithmetic operations of one op (the cost model's flops). */
uint64_t vnpu_ops_flops(const VnpuOpArgs *args);

/*
 * Run one checked op. Returns VNPU_CPL_OK, VNPU_CPL_ABORTED (cancel seen), or -1 (FAST_ONLY and no fast
 * kernel applies; or a fast kernel's library failed).
 */
int vnpu_ops_run(const VnpuOpArgs *args, VnpuKernelMode mode);

/*
 * A kernel's work split into n independent items (rows, planes, elements): fn computes items [begin, end) and
 * returns VNPU_CPL_OK, VNPU_CPL_ABORTED (cancel seen) or -1 (out of memory).
 */
typedef int VnpuRangeFn(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end);

/*
 * Runs fn over [0, n) in contiguous ranges, one per thread of the OpenMP team (parallel.c), when the op touches
 * at least a few ten thousand elements (`elems`); otherwise, or inside a parallel region, on the calling thread.
 * Each item is computed as the serial loop computes it, so results do not depend on the thread count. Returns
 * VNPU_CPL_OK, or the first failure of a range (-1 before VNPU_CPL_ABORTED).
 */
int vnpu_ops_parallel(const VnpuOpArgs *a, uint64_t n, uint64_t elems, VnpuRangeFn *fn, void *ctx);

/* Threads vnpu_ops_parallel() would use from here (1 inside a parallel region or without OpenMP). */
int vnpu_ops_threads(void);

/* Activation function shared by every kernel that fuses one. */
float vnpu_ops_act(float x, uint32_t act, float alpha, float beta);

/* Reference kernels (plain C, double accumulation where it matters). Return VNPU_CPL_OK or VNPU_CPL_ABORTED. */
int vnpu_ref_conv(const VnpuOpArgs *a);
int vnpu_ref_conv_transpose(const VnpuOpArgs *a);
int vnpu_ref_pool(const VnpuOpArgs *a);
int vnpu_ref_matmul(const VnpuOpArgs *a);
int vnpu_ref_binary(const VnpuOpArgs *a);
int vnpu_ref_unary(const VnpuOpArgs *a);
int vnpu_ref_affine(const VnpuOpArgs *a);
int vnpu_ref_concat(const VnpuOpArgs *a);
int vnpu_ref_slice(const VnpuOpArgs *a);
int vnpu_ref_transpose(const VnpuOpArgs *a);
int vnpu_ref_copy(const VnpuOpArgs *a);
int vnpu_ref_resize(const VnpuOpArgs *a);
int vnpu_ref_softmax(const VnpuOpArgs *a);

/* ISA 1.1 ops (kernels_reduce.c): their checks (0 if valid) and reference kernels. */
int vnpu_check_reduce(const VnpuOpArgs *a);
int vnpu_check_norm(const VnpuOpArgs *a);
int vnpu_check_pad(const VnpuOpArgs *a);
int vnpu_ref_reduce(const VnpuOpArgs *a);
int vnpu_ref_norm(const VnpuOpArgs *a);
int vnpu_ref_pad(const VnpuOpArgs *a);

/* oneDNN kernels (conv, pooling, matmul, and large broadcast arithmetic). Return VNPU_CPL_OK, or 1 if this op's parameters are outside the fast path, or -1 if oneDNN
 * failed (the caller falls back to the reference kernel). */
int vnpu_fast_conv(const VnpuOpArgs *a);
int vnpu_fast_conv_transpose(const VnpuOpArgs *a);
int vnpu_fast_pool(const VnpuOpArgs *a);
int vnpu_fast_matmul(const VnpuOpArgs *a);
int vnpu_fast_binary(const VnpuOpArgs *a);

#ifdef __cplusplus
}
#endif

#endif /* VNPU_OPS_H */
