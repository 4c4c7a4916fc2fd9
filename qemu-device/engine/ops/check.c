/* SPDX-License-Identifier: MIT */
/*
 * Per-opcode semantic checks (shapes and attributes), flop counts for the cost model, and kernel dispatch.
 * vnpu_ops_check() is what makes the kernels memory-safe: a kernel may assume every index it derives from a
 * checked op lies inside its tensors.
 */
#include <math.h>
#include <string.h>

#include "vnpu_ops.h"

#define IN(a, i) (&(a)->t[(i)])
#define OUT(a, i) (&(a)->t[(a)->num_inputs + (i)])

float vnpu_ops_act(float x, uint32_t act, float alpha, float beta)
{
    switch (act) {
    case VNPU_ISA_ACT_RELU:
        return x > 0.0f ? x : 0.0f;
    case VNPU_ISA_ACT_SIGMOID:
        return 1.0f / (1.0f + expf(-x));
    case VNPU_ISA_ACT_SILU:
        return x / (1.0f + expf(-x));
    case VNPU_ISA_ACT_CLIP: {
        /* ONNX's min(max(x, alpha), beta): beta wins when alpha > beta, as in oneDNN's clip_v2. */
        float y = x < alpha ? alpha : x;

        return y > beta ? beta : y;
    }
    case VNPU_ISA_ACT_LEAKY_RELU:
        return x < 0.0f ? alpha * x : x;
    case VNPU_ISA_ACT_TANH:
        return tanhf(x);
    case VNPU_ISA_ACT_EXP:
        return expf(x);
    case VNPU_ISA_ACT_LOG:
        return logf(x);
    case VNPU_ISA_ACT_SQRT:
        return sqrtf(x);
    case VNPU_ISA_ACT_NEG:
        return -x;
    case VNPU_ISA_ACT_ABS:
        return fabsf(x);
    case VNPU_ISA_ACT_HARD_SIGMOID: {
        float y = alpha * x + beta;

        return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
    }
    case VNPU_ISA_ACT_RECIPROCAL:
        return 1.0f / x;
    case VNPU_ISA_ACT_ELU:
        return x < 0.0f ? alpha * (expf(x) - 1.0f) : x;
    case VNPU_ISA_ACT_FLOOR:
        return floorf(x);
    case VNPU_ISA_ACT_CEIL:
        return ceilf(x);
    case VNPU_ISA_ACT_ROUND:
        return rintf(x); /* default rounding mode: ties to even */
    case VNPU_ISA_ACT_ERF:
        return erff(x);
    case VNPU_ISA_ACT_GELU:
        return (float)(0.5 * (double)x * (1.0 + erf((double)x * 0.70710678118654752440)));
    case VNPU_ISA_ACT_SOFTPLUS:
        /* log1p(exp(x)) without overflow for large x */
        return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
    case VNPU_ISA_ACT_SOFTSIGN:
        return x / (1.0f + fabsf(x));
    case VNPU_ISA_ACT_HARD_SWISH: {
        float y = x / 6.0f + 0.5f;

        return x * (y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y));
    }
    case VNPU_ISA_ACT_SELU:
        return beta * (x <= 0.0f ? alpha * (expf(x) - 1.0f) : x);
    case VNPU_ISA_ACT_SIN:
        return sinf(x);
    case VNPU_ISA_ACT_COS:
        return cosf(x);
    case VNPU_ISA_ACT_TAN:
        return tanf(x);
    case VNPU_ISA_ACT_ASIN:
        return asinf(x);
    case VNPU_ISA_ACT_ACOS:
        return acosf(x);
    case VNPU_ISA_ACT_ATAN:
        return atanf(x);
    case VNPU_ISA_ACT_SINH:
        return sinhf(x);
    case VNPU_ISA_ACT_COSH:
        return coshf(x);
    case VNPU_ISA_ACT_ASINH:
        return asinhf(x);
    case VNPU_ISA_ACT_ACOSH:
        return acoshf(x);
    case VNPU_ISA_ACT_ATANH:
        return atanhf(x);
    case VNPU_ISA_ACT_SIGN:
        return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
    case VNPU_ISA_ACT_CELU:
        return (x > 0.0f ? x : 0.0f) + fminf(0.0f, alpha * (expf(x / alpha) - 1.0f));
    case VNPU_ISA_ACT_THRESHOLDED_RELU:
        return x > alpha ? x : 0.0f;
    case VNPU_ISA_ACT_SHRINK:
        return x < -alpha ? x + beta : (x > alpha ? x - beta : 0.0f);
    default:
        return x;
    }
}

static int act_ok(uint32_t act)
{
    return act < VNPU_ISA_ACT_COUNT_;
}

static int same_shape(const VnpuTensor *a, const VnpuTensor *b)
{
    return a->rank == b->rank && memcmp(a->dims, b->dims, sizeof(a->dims)) == 0;
}

/* x broadcasts (numpy rules, right-aligned) to y's shape. */
static int broadcasts_to(const VnpuTensor *x, const VnpuTensor *y)
{
    unsigned i;

    if (x->rank > y->rank) {
        return 0;
    }
    for (i = 0; i < x->rank; i++) {
        uint64_t xd = x->dims[x->rank - 1 - i], yd = y->dims[y->rank - 1 - i];

        if (xd != yd && xd != 1) {
            return 0;
        }
    }
    return 1;
}

static int check_conv(const VnpuOpArgs *a, int transpose)
{
    const struct vnpu_isa_conv *c = &a->attr.conv;
    const VnpuTensor *x = IN(a, 0), *w = IN(a, 1), *y = OUT(a, 0);
    int bias = !!(c->flags & VNPU_ISA_CONV_F_BIAS), res = !!(c->flags & VNPU_ISA_CONV_F_RESIDUAL);
    uint32_t flags = VNPU_ISA_CONV_F_BIAS | (transpose ? 0 : VNPU_ISA_CONV_F_RESIDUAL);
    uint64_t m, cin_g;
    unsigned i;

    if ((c->flags & ~flags) || c->rsvd0 || !act_ok(c->act) || a->num_inputs != 2u + bias + res ||
        a->num_outputs != 1 || x->rank != 4 || w->rank != 4 || y->rank != 4 || c->group < 1) {
        return -1;
    }
    if (res) {
        const VnpuTensor *r = IN(a, 2 + bias);

        if (r->rank != 4 || memcmp(r->dims, y->dims, sizeof(r->dims))) {
            return -1;
        }
    }
    if (transpose) {
        cin_g = x->dims[1] / c->group;
        m = w->dims[1] * c->group;
        if (w->dims[0] != x->dims[1]) {
            return -1;
        }
    } else {
        m = w->dims[0];
        cin_g = w->dims[1];
        if (cin_g * c->group != x->dims[1]) {
            return -1;
        }
    }
    if (x->dims[1] % c->group || m % c->group || y->dims[0] != x->dims[0] || y->dims[1] != m || cin_g == 0) {
        return -1;
    }
    if (bias && (IN(a, 2)->count != m || IN(a, 2)->rank != 1)) {
        return -1;
    }
    for (i = 0; i < 2; i++) {
        uint64_t k = w->dims[2 + i], in = x->dims[2 + i], span, padded;

        if (c->stride[i] < 1 || c->dilation[i] < 1 || k < 1) {
            return -1;
        }
        span = (uint64_t)c->dilation[i] * (k - 1) + 1;
        if (transpose) {
            if (c->output_padding[i] >= c->stride[i] && c->output_padding[i] >= c->dilation[i]) {
                return -1;
            }
            if (in < 1) {
                return -1;
            }
            padded = (uint64_t)c->stride[i] * (in - 1) + c->output_padding[i] + span;
            if (padded < (uint64_t)c->pad_begin[i] + c->pad_end[i] ||
                y->dims[2 + i] != padded - c->pad_begin[i] - c->pad_end[i]) {
                return -1;
            }
        } else {
            if (c->output_padding[i]) {
                return -1;
            }
            padded = in + c->pad_begin[i] + c->pad_end[i];
            if (padded < span || y->dims[2 + i] != (padded - span) / c->stride[i] + 1) {
                return -1;
            }
        }
    }
    return 0;
}

static int check_pool(const VnpuOpArgs *a)
{
    const struct vnpu_isa_pool *p = &a->attr.pool;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    unsigned i;

    if (p->kind > VNPU_ISA_POOL_AVG || (p->flags & ~VNPU_ISA_POOL_F_COUNT_PAD) || a->num_inputs != 1 ||
        a->num_outputs != 1 || x->rank != 4 || y->rank != 4 || y->dims[0] != x->dims[0] ||
        y->dims[1] != x->dims[1]) {
        return -1;
    }
    for (i = 0; i < 2; i++) {
        uint64_t span;

        if (p->kernel[i] < 1 || p->stride[i] < 1 || p->dilation[i] < 1 ||
            (p->kind == VNPU_ISA_POOL_AVG && p->dilation[i] != 1) || p->pad_begin[i] >= (uint64_t)p->kernel[i] * p->dilation[i] ||
            p->pad_end[i] >= (uint64_t)p->kernel[i] * p->dilation[i]) {
            return -1;
        }
        span = (uint64_t)p->dilation[i] * (p->kernel[i] - 1) + 1;
        if (x->dims[2 + i] + p->pad_begin[i] + p->pad_end[i] < span) {
            return -1;
        }
        /* floor mode gives (padded - span) / stride + 1; ceil mode at most one more window, which must start
         * inside the input or its begin padding. */
        {
            uint64_t padded = x->dims[2 + i] + p->pad_begin[i] + p->pad_end[i];
            uint64_t floor_n = (padded - span) / p->stride[i] + 1;

            if (y->dims[2 + i] != floor_n && y->dims[2 + i] != floor_n + 1) {
                return -1;
            }
            if (y->dims[2 + i] == floor_n + 1 &&
                (uint64_t)p->stride[i] * floor_n >= x->dims[2 + i] + p->pad_begin[i]) {
                return -1;
            }
        }
    }
    return 0;
}

static int check_matmul(const VnpuOpArgs *a)
{
    const struct vnpu_isa_matmul *mm = &a->attr.matmul;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    int bias = !!(mm->flags & VNPU_ISA_MATMUL_F_BIAS);
    uint64_t m, k, kb, n;
    unsigned i, yb;

    if ((mm->flags & ~7u) || !act_ok(mm->act) || a->num_inputs != 2u + bias || a->num_outputs != 1 ||
        A->rank < 2 || B->rank < 2 || Y->rank < 2) {
        return -1;
    }
    m = (mm->flags & VNPU_ISA_MATMUL_F_TRANS_A) ? A->dims[A->rank - 1] : A->dims[A->rank - 2];
    k = (mm->flags & VNPU_ISA_MATMUL_F_TRANS_A) ? A->dims[A->rank - 2] : A->dims[A->rank - 1];
    kb = (mm->flags & VNPU_ISA_MATMUL_F_TRANS_B) ? B->dims[B->rank - 1] : B->dims[B->rank - 2];
    n = (mm->flags & VNPU_ISA_MATMUL_F_TRANS_B) ? B->dims[B->rank - 2] : B->dims[B->rank - 1];
    if (k != kb || Y->dims[Y->rank - 2] != m || Y->dims[Y->rank - 1] != n) {
        return -1;
    }
    yb = Y->rank - 2;
    if (A->rank - 2 > yb || B->rank - 2 > yb) {
        return -1;
    }
    for (i = 0; i < yb; i++) {
        uint64_t yd = Y->dims[yb - 1 - i];
        uint64_t ad = i < A->rank - 2u ? A->dims[A->rank - 3 - i] : 1;
        uint64_t bd = i < B->rank - 2u ? B->dims[B->rank - 3 - i] : 1;

        if ((ad != yd && ad != 1) || (bd != yd && bd != 1) || (ad == 1 && bd == 1 && yd != 1)) {
            return -1;
        }
    }
    if (bias) {
        const VnpuTensor *C = IN(a, 2);
        uint64_t cr = C->rank == 2 ? C->dims[0] : 1, cc = C->rank >= 1 ? C->dims[C->rank - 1] : 1;

        if (C->rank > 2 || (cr != 1 && cr != m) || (cc != 1 && cc != n)) {
            return -1;
        }
    }
    return 0;
}

static int check_resize(const VnpuOpArgs *a)
{
    const struct vnpu_isa_resize *r = &a->attr.resize;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint32_t flags = VNPU_ISA_RESIZE_F_SIZES | (r->mode == VNPU_ISA_RESIZE_CUBIC ? VNPU_ISA_RESIZE_F_EXCLUDE_OUTSIDE : 0);
    unsigned i;

    if (r->mode > VNPU_ISA_RESIZE_CUBIC || r->coord > VNPU_ISA_COORD_TF_HALF_PIXEL_FOR_NN ||
        (r->mode == VNPU_ISA_RESIZE_CUBIC ? !isfinite(r->cubic_a) : r->nearest > VNPU_ISA_NEAREST_CEIL) ||
        (r->flags & ~flags) || a->num_inputs != 1 || a->num_outputs != 1 || x->rank != y->rank) {
        return -1;
    }
    for (i = 0; i < x->rank; i++) {
        if (((r->flags & VNPU_ISA_RESIZE_F_SIZES) ? 0 : (!(r->scale[i] > 0.0f) || isinf(r->scale[i]))) ||
            (y->dims[i] && !x->dims[i])) {
            return -1;
        }
    }
    for (; i < VNPU_ISA_MAX_RANK; i++) {
        if (r->scale[i] != 0.0f) {
            return -1;
        }
    }
    return 0;
}

int vnpu_ops_check(const VnpuOpArgs *a)
{
    unsigned i;

    switch (a->opcode) {
    case VNPU_ISA_OP_CONV:
        return check_conv(a, 0);
    case VNPU_ISA_OP_CONV_TRANSPOSE:
        return check_conv(a, 1);
    case VNPU_ISA_OP_POOL:
        return check_pool(a);
    case VNPU_ISA_OP_MATMUL:
        return check_matmul(a);
    case VNPU_ISA_OP_BINARY:
        if (a->attr.binary.kind >= VNPU_ISA_BIN_COUNT_ || !act_ok(a->attr.binary.act) || a->num_inputs != 2 ||
            a->num_outputs != 1 || !broadcasts_to(IN(a, 0), OUT(a, 0)) || !broadcasts_to(IN(a, 1), OUT(a, 0))) {
            return -1;
        }
        /* every output dim must come from an input (no broadcasting of two 1s to a larger dim). */
        for (i = 0; i < OUT(a, 0)->rank; i++) {
            const VnpuTensor *y = OUT(a, 0);
            unsigned back = y->rank - 1 - i;
            uint64_t ad = back < IN(a, 0)->rank ? IN(a, 0)->dims[IN(a, 0)->rank - 1 - back] : 1;
            uint64_t bd = back < IN(a, 1)->rank ? IN(a, 1)->dims[IN(a, 1)->rank - 1 - back] : 1;

            if (ad != y->dims[i] && bd != y->dims[i]) {
                return -1;
            }
        }
        return 0;
    case VNPU_ISA_OP_UNARY:
        return (a->attr.unary.act == VNPU_ISA_ACT_NONE || !act_ok(a->attr.unary.act) || a->attr.unary.rsvd0 ||
                a->num_inputs != 1 || a->num_outputs != 1 || IN(a, 0)->count != OUT(a, 0)->count) ? -1 : 0;
    case VNPU_ISA_OP_CHANNEL_AFFINE:
        return (!act_ok(a->attr.affine.act) || a->attr.affine.rsvd0 || a->num_inputs != 3 ||
                a->num_outputs != 1 || IN(a, 0)->rank < 2 || !same_shape(IN(a, 0), OUT(a, 0)) ||
                IN(a, 1)->count != IN(a, 0)->dims[1] || IN(a, 2)->count != IN(a, 0)->dims[1]) ? -1 : 0;
    case VNPU_ISA_OP_CONCAT: {
        const VnpuTensor *y = OUT(a, 0);
        uint32_t axis = a->attr.axis.axis;
        uint64_t sum = 0;

        if (a->attr.axis.rsvd0 || a->num_outputs != 1 || axis >= y->rank) {
            return -1;
        }
        for (i = 0; i < a->num_inputs; i++) {
            const VnpuTensor *x = IN(a, i);
            unsigned d;

            if (x->rank != y->rank) {
                return -1;
            }
            for (d = 0; d < y->rank; d++) {
                if (d != axis && x->dims[d] != y->dims[d]) {
                    return -1;
                }
            }
            sum += x->dims[axis];
        }
        return sum == y->dims[axis] ? 0 : -1;
    }
    case VNPU_ISA_OP_SLICE: {
        const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
        const struct vnpu_isa_slice *s = &a->attr.slice;

        if (a->num_inputs != 1 || a->num_outputs != 1 || x->rank != y->rank) {
            return -1;
        }
        if (y->count == 0) {
            return 0;
        }
        for (i = 0; i < y->rank; i++) {
            /* (dims - 1) * step reaches 2^64: computed in 128 bits (int64 would overflow, undefined). */
            __int128 last;

            if (s->step[i] == 0 || s->start[i] < 0 || (uint64_t)s->start[i] >= x->dims[i] ||
                s->step[i] > (int64_t)1 << 32 || s->step[i] < -((int64_t)1 << 32)) {
                return -1;
            }
            last = (__int128)s->start[i] + (__int128)(y->dims[i] - 1) * s->step[i];
            if (last < 0 || (uint64_t)last >= x->dims[i]) {
                return -1;
            }
        }
        return 0;
    }
    case VNPU_ISA_OP_TRANSPOSE: {
        const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
        unsigned seen = 0;

        if (a->num_inputs != 1 || a->num_outputs != 1 || x->rank != y->rank) {
            return -1;
        }
        for (i = 0; i < VNPU_ISA_MAX_RANK; i++) {
            uint32_t p = a->attr.transpose.perm[i];

            if (i >= x->rank) {
                if (p) {
                    return -1;
                }
                continue;
            }
            if (p >= x->rank || (seen & (1u << p)) || y->dims[i] != x->dims[p]) {
                return -1;
            }
            seen |= 1u << p;
        }
        return 0;
    }
    case VNPU_ISA_OP_COPY:
        return (a->num_inputs != 1 || a->num_outputs != 1 || IN(a, 0)->count != OUT(a, 0)->count) ? -1 : 0;
    case VNPU_ISA_OP_RESIZE:
        return check_resize(a);
    case VNPU_ISA_OP_REDUCE:
        return vnpu_check_reduce(a);
    case VNPU_ISA_OP_NORM:
        return vnpu_check_norm(a);
    case VNPU_ISA_OP_PAD:
        return vnpu_check_pad(a);
    case VNPU_ISA_OP_SOFTMAX:
        return (a->num_inputs != 1 || a->num_outputs != 1 || !same_shape(IN(a, 0), OUT(a, 0)) ||
                (a->attr.softmax.flags & ~3u) || (IN(a, 0)->rank && a->attr.softmax.axis >= IN(a, 0)->rank) ||
                (!IN(a, 0)->rank && a->attr.softmax.axis)) ? -1 : 0;
    default:
        return -1;
    }
}

/* Products of guest-chosen dimensions: saturate instead of wrapping, so a huge op can never look cheap. */
static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;

    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t vnpu_ops_flops(const VnpuOpArgs *a)
{
    const VnpuTensor *y = OUT(a, 0);

    switch (a->opcode) {
    case VNPU_ISA_OP_CONV: {
        const VnpuTensor *w = IN(a, 1);

        return sat_add(sat_mul(sat_mul(sat_mul(2 * y->count, w->dims[1]), w->dims[2]), w->dims[3]), y->count);
    }
    case VNPU_ISA_OP_CONV_TRANSPOSE: {
        const VnpuTensor *w = IN(a, 1);

        return sat_add(sat_mul(sat_mul(sat_mul(2 * IN(a, 0)->count, w->dims[1]), w->dims[2]), w->dims[3]),
                       y->count);
    }
    case VNPU_ISA_OP_POOL:
        return sat_mul(sat_mul(y->count, a->attr.pool.kernel[0]), a->attr.pool.kernel[1]);
    case VNPU_ISA_OP_MATMUL: {
        const VnpuTensor *A = IN(a, 0);
        uint64_t k = (a->attr.matmul.flags & VNPU_ISA_MATMUL_F_TRANS_A) ? A->dims[A->rank - 2]
                                                                       : A->dims[A->rank - 1];

        return sat_add(sat_mul(2 * y->count, k), y->count);
    }
    case VNPU_ISA_OP_BINARY:
    case VNPU_ISA_OP_UNARY:
    case VNPU_ISA_OP_CHANNEL_AFFINE:
        return 2 * y->count; /* count <= 2^60 (program.c) */
    case VNPU_ISA_OP_RESIZE:
        return sat_mul(a->attr.resize.mode == VNPU_ISA_RESIZE_CUBIC    ? 32
                       : a->attr.resize.mode == VNPU_ISA_RESIZE_LINEAR ? 8
                                                                       : 1,
                       y->count);
    case VNPU_ISA_OP_SOFTMAX:
        return sat_mul(5, y->count);
    case VNPU_ISA_OP_REDUCE:
        return sat_add(2 * IN(a, 0)->count, y->count);
    case VNPU_ISA_OP_NORM:
        return sat_mul(8, y->count);
    default:
        return 0; /* pure data movement: memory-bound */
    }
}

int vnpu_ops_run(const VnpuOpArgs *a, VnpuKernelMode mode)
{
    int r = 1;

    if (mode != VNPU_KERNELS_REFERENCE) {
        switch (a->opcode) {
        case VNPU_ISA_OP_CONV:
            r = vnpu_fast_conv(a);
            break;
        case VNPU_ISA_OP_CONV_TRANSPOSE:
            r = vnpu_fast_conv_transpose(a);
            break;
        case VNPU_ISA_OP_POOL:
            r = vnpu_fast_pool(a);
            break;
        case VNPU_ISA_OP_MATMUL:
            r = vnpu_fast_matmul(a);
            break;
        case VNPU_ISA_OP_BINARY:
            r = vnpu_fast_binary(a);
            break;
        default:
            break;
        }
        if (r == VNPU_CPL_OK) {
            return VNPU_CPL_OK;
        }
        if (mode == VNPU_KERNELS_FAST_ONLY) {
            return -1;
        }
    }
    switch (a->opcode) {
    case VNPU_ISA_OP_CONV:
        return vnpu_ref_conv(a);
    case VNPU_ISA_OP_CONV_TRANSPOSE:
        return vnpu_ref_conv_transpose(a);
    case VNPU_ISA_OP_POOL:
        return vnpu_ref_pool(a);
    case VNPU_ISA_OP_MATMUL:
        return vnpu_ref_matmul(a);
    case VNPU_ISA_OP_BINARY:
        return vnpu_ref_binary(a);
    case VNPU_ISA_OP_UNARY:
        return vnpu_ref_unary(a);
    case VNPU_ISA_OP_CHANNEL_AFFINE:
        return vnpu_ref_affine(a);
    case VNPU_ISA_OP_CONCAT:
        return vnpu_ref_concat(a);
    case VNPU_ISA_OP_SLICE:
        return vnpu_ref_slice(a);
    case VNPU_ISA_OP_TRANSPOSE:
        return vnpu_ref_transpose(a);
    case VNPU_ISA_OP_COPY:
        return vnpu_ref_copy(a);
    case VNPU_ISA_OP_RESIZE:
        return vnpu_ref_resize(a);
    case VNPU_ISA_OP_SOFTMAX:
        return vnpu_ref_softmax(a);
    case VNPU_ISA_OP_REDUCE:
        return vnpu_ref_reduce(a);
    case VNPU_ISA_OP_NORM:
        return vnpu_ref_norm(a);
    case VNPU_ISA_OP_PAD:
        return vnpu_ref_pad(a);
    default:
        return -1;
    }
}
