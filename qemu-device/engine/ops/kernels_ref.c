/* SPDX-License-Identifier: MIT */
/*
 * Reference kernels: the plain, obviously-correct definition of every op. Used when no fast kernel applies,
 * by constant folding in tests, and as the oracle the fast kernels are checked against. Inputs are checked
 * by vnpu_ops_check() first, so every index derived here is in range.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vnpu_ops.h"

#define IN(a, i) (&(a)->t[(i)])
#define OUT(a, i) (&(a)->t[(a)->num_inputs + (i)])

static int cancelled(const VnpuOpArgs *a)
{
    return a->cancel && *a->cancel;
}

/* Row-major element strides of t, right-aligned to `rank` dims; broadcast (size-1 or missing) dims get 0. */
static void bcast_strides(const VnpuTensor *t, unsigned rank, const uint64_t *out_dims, uint64_t *strides)
{
    uint64_t s = 1;
    unsigned i;

    for (i = 0; i < rank; i++) {
        strides[i] = 0;
    }
    for (i = 0; i < t->rank; i++) {
        unsigned td = t->rank - 1 - i, od = rank - 1 - i;

        strides[od] = (t->dims[td] == 1 && out_dims[od] != 1) ? 0 : s;
        s *= t->dims[td];
    }
}

static void dense_strides(const VnpuTensor *t, uint64_t *strides)
{
    uint64_t s = 1;
    int i;

    for (i = (int)t->rank - 1; i >= 0; i--) {
        strides[i] = s;
        s *= t->dims[i];
    }
}

/* The index vector of row-major position o over dims[0..n) (the row walks' starting point for a range). */
static void unravel(uint64_t o, const uint64_t *dims, unsigned n, uint64_t *idx)
{
    unsigned i;

    for (i = n; i-- > 0;) {
        idx[i] = dims[i] ? o % dims[i] : 0;
        o = dims[i] ? o / dims[i] : 0;
    }
}

/* Handles the outputs of a data-movement op that need no index walk: empty, or rank 0 (one element). */
static int copy_trivial(const VnpuTensor *x, const VnpuTensor *y)
{
    if (y->count == 0) {
        return 1;
    }
    if (y->rank == 0) {
        y->data[0] = x->data[0];
        return 1;
    }
    return 0;
}

/* The shapes a (transposed) convolution's per-output sum reads. */
typedef struct ConvShape {
    const struct vnpu_isa_conv *c;
    const VnpuTensor *x, *w;
    uint64_t C, H, W, KH, KW, Cg, Mg;
} ConvShape;

/* Adds the contributions to output (n, m, oh, ow) to acc, in the kernel's own summation order. */
typedef double ConvSum(const ConvShape *s, double acc, uint64_t n, uint64_t m, uint64_t oh, uint64_t ow);

/*
 * Runs `sum` for every output of the (transposed) convolution: bias first, then the contributions, then the
 * residual (F_RESIDUAL), then the fused activation. Checks for cancellation once per output row.
 */
static int conv_each_output(const VnpuOpArgs *a, ConvSum *sum)
{
    const struct vnpu_isa_conv *c = &a->attr.conv;
    const VnpuTensor *x = IN(a, 0), *w = IN(a, 1), *y = OUT(a, 0);
    const float *bias = (c->flags & VNPU_ISA_CONV_F_BIAS) ? IN(a, 2)->data : NULL;
    const float *res = (c->flags & VNPU_ISA_CONV_F_RESIDUAL) ? IN(a, a->num_inputs - 1)->data : NULL;
    uint64_t N = x->dims[0], M = y->dims[1], OH = y->dims[2], OW = y->dims[3];
    uint64_t n, m, oh, ow;
    ConvShape s = {
        .c = c, .x = x, .w = w,
        .C = x->dims[1], .H = x->dims[2], .W = x->dims[3], .KH = w->dims[2], .KW = w->dims[3],
        .Cg = x->dims[1] / c->group, .Mg = M / c->group,
    };

    for (n = 0; n < N; n++) {
        for (m = 0; m < M; m++) {
            for (oh = 0; oh < OH; oh++) {
                if (cancelled(a)) {
                    return VNPU_CPL_ABORTED;
                }
                for (ow = 0; ow < OW; ow++) {
                    double acc = sum(&s, bias ? bias[m] : 0.0, n, m, oh, ow);
                    uint64_t at = ((n * M + m) * OH + oh) * OW + ow;
                    /* The residual is added to the rounded convolution, as a separate f32 Add would. */
                    float v = res ? (float)acc + res[at] : (float)acc;

                    y->data[at] = vnpu_ops_act(v, c->act, c->act_alpha, c->act_beta);
                }
            }
        }
    }
    return VNPU_CPL_OK;
}

static double conv_sum(const ConvShape *s, double acc, uint64_t n, uint64_t m, uint64_t oh, uint64_t ow)
{
    const struct vnpu_isa_conv *c = s->c;
    uint64_t C = s->C, H = s->H, W = s->W, KH = s->KH, KW = s->KW, Cg = s->Cg, g = m / s->Mg;
    const float *wm = s->w->data + m * Cg * KH * KW;
    uint64_t ci, kh, kw;

    for (ci = 0; ci < Cg; ci++) {
        const float *xc = s->x->data + ((n * C) + g * Cg + ci) * H * W;

        for (kh = 0; kh < KH; kh++) {
            int64_t ih = (int64_t)(oh * c->stride[0] + kh * c->dilation[0]) - c->pad_begin[0];

            if (ih < 0 || ih >= (int64_t)H) {
                continue;
            }
            for (kw = 0; kw < KW; kw++) {
                int64_t iw = (int64_t)(ow * c->stride[1] + kw * c->dilation[1]) - c->pad_begin[1];

                if (iw < 0 || iw >= (int64_t)W) {
                    continue;
                }
                acc += (double)xc[ih * W + iw] * wm[(ci * KH + kh) * KW + kw];
            }
        }
    }
    return acc;
}

/* The input index that kernel tap k of output o reads along spatial axis `axis`, or -1 if it reads none. */
static int64_t conv_transpose_tap(const struct vnpu_isa_conv *c, unsigned axis, uint64_t o, uint64_t k, uint64_t in)
{
    int64_t t = (int64_t)o + c->pad_begin[axis] - (int64_t)(k * c->dilation[axis]);

    if (t < 0 || t % c->stride[axis]) {
        return -1;
    }
    t /= c->stride[axis];
    return t < (int64_t)in ? t : -1;
}

/* Gather formulation (each output sums its contributions), so the result does not depend on order. */
static double conv_transpose_sum(const ConvShape *s, double acc, uint64_t n, uint64_t m, uint64_t oh,
                                 uint64_t ow)
{
    const struct vnpu_isa_conv *c = s->c;
    uint64_t C = s->C, H = s->H, W = s->W, KH = s->KH, KW = s->KW, Cg = s->Cg, Mg = s->Mg;
    uint64_t g = m / Mg, mg = m % Mg, ci, kh, kw;

    for (kh = 0; kh < KH; kh++) {
        int64_t ih = conv_transpose_tap(c, 0, oh, kh, H);

        if (ih < 0) {
            continue;
        }
        for (kw = 0; kw < KW; kw++) {
            int64_t iw = conv_transpose_tap(c, 1, ow, kw, W);

            if (iw < 0) {
                continue;
            }
            for (ci = 0; ci < Cg; ci++) {
                uint64_t cin = g * Cg + ci;

                acc += (double)s->x->data[((n * C + cin) * H + ih) * W + iw] *
                       s->w->data[((cin * Mg + mg) * KH + kh) * KW + kw];
            }
        }
    }
    return acc;
}

int vnpu_ref_conv(const VnpuOpArgs *a)
{
    return conv_each_output(a, conv_sum);
}

int vnpu_ref_conv_transpose(const VnpuOpArgs *a)
{
    return conv_each_output(a, conv_transpose_sum);
}

int vnpu_ref_pool(const VnpuOpArgs *a)
{
    const struct vnpu_isa_pool *p = &a->attr.pool;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t NC = x->dims[0] * x->dims[1], H = x->dims[2], W = x->dims[3], OH = y->dims[2], OW = y->dims[3];
    int64_t hend_pad = (int64_t)H + p->pad_end[0], wend_pad = (int64_t)W + p->pad_end[1];
    uint64_t nc, oh, ow;

    for (nc = 0; nc < NC; nc++) {
        const float *xc = x->data + nc * H * W;

        for (oh = 0; oh < OH; oh++) {
            if (cancelled(a)) {
                return VNPU_CPL_ABORTED;
            }
            for (ow = 0; ow < OW; ow++) {
                double sum = 0.0;
                float mx = -INFINITY;
                uint64_t count = 0, padded_count = 0, kh, kw;

                for (kh = 0; kh < p->kernel[0]; kh++) {
                    int64_t ih = (int64_t)(oh * p->stride[0] + kh * p->dilation[0]) - p->pad_begin[0];

                    if (ih >= hend_pad) {
                        continue;
                    }
                    for (kw = 0; kw < p->kernel[1]; kw++) {
                        int64_t iw = (int64_t)(ow * p->stride[1] + kw * p->dilation[1]) - p->pad_begin[1];

                        if (iw >= wend_pad) {
                            continue;
                        }
                        padded_count++;
                        if (ih < 0 || iw < 0 || ih >= (int64_t)H || iw >= (int64_t)W) {
                            continue;
                        }
                        count++;
                        sum += xc[ih * W + iw];
                        if (xc[ih * W + iw] > mx || isnan(xc[ih * W + iw])) {
                            mx = xc[ih * W + iw];
                        }
                    }
                }
                if (p->kind == VNPU_ISA_POOL_MAX) {
                    y->data[(nc * OH + oh) * OW + ow] = count ? mx : 0.0f;
                } else {
                    uint64_t div = (p->flags & VNPU_ISA_POOL_F_COUNT_PAD) ? padded_count : count;

                    y->data[(nc * OH + oh) * OW + ow] = div ? (float)(sum / (double)div) : 0.0f;
                }
            }
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_matmul(const VnpuOpArgs *a)
{
    const struct vnpu_isa_matmul *mm = &a->attr.matmul;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    const VnpuTensor *C = (mm->flags & VNPU_ISA_MATMUL_F_BIAS) ? IN(a, 2) : NULL;
    int ta = !!(mm->flags & VNPU_ISA_MATMUL_F_TRANS_A), tb = !!(mm->flags & VNPU_ISA_MATMUL_F_TRANS_B);
    unsigned yr = Y->rank, nb = yr - 2, i;
    uint64_t M = Y->dims[yr - 2], N = Y->dims[yr - 1];
    uint64_t K = ta ? A->dims[A->rank - 2] : A->dims[A->rank - 1];
    uint64_t batches = (M && N) ? Y->count / (M * N) : 0, b;
    uint64_t astr[VNPU_ISA_MAX_RANK], bstr[VNPU_ISA_MAX_RANK];
    VnpuTensor ab = *A, bb = *B;
    uint64_t cr = 0, cc = 0;

    if (M == 0 || N == 0) {
        return VNPU_CPL_OK;
    }
    /* Batch strides in units of whole matrices, broadcast dims 0. */
    ab.rank = A->rank - 2;
    bb.rank = B->rank - 2;
    bcast_strides(&ab, nb, Y->dims, astr);
    bcast_strides(&bb, nb, Y->dims, bstr);
    if (C) {
        cr = (C->rank == 2 && C->dims[0] != 1) ? N : 0;
        if (C->rank == 2 && C->dims[0] != 1 && C->dims[1] == 1) {
            cr = 1;
        }
        cc = (C->rank >= 1 && C->dims[C->rank - 1] != 1) ? 1 : 0;
    }
    for (b = 0; b < batches; b++) {
        uint64_t rem = b, aoff = 0, boff = 0, m, n, k;
        const float *ap, *bp;
        float *yp = Y->data + b * M * N;

        for (i = nb; i-- > 0;) {
            uint64_t coord = rem % Y->dims[i];

            rem /= Y->dims[i];
            aoff += coord * astr[i];
            boff += coord * bstr[i];
        }
        ap = A->data + aoff * M * K;
        bp = B->data + boff * K * N;
        for (m = 0; m < M; m++) {
            if (cancelled(a)) {
                return VNPU_CPL_ABORTED;
            }
            for (n = 0; n < N; n++) {
                double acc = 0.0;
                float v;

                for (k = 0; k < K; k++) {
                    float av = ta ? ap[k * M + m] : ap[m * K + k];
                    float bv = tb ? bp[n * K + k] : bp[k * N + n];

                    acc += (double)av * bv;
                }
                v = (float)(mm->alpha * acc);
                if (C) {
                    v += mm->beta * C->data[m * cr + n * cc];
                }
                yp[m * N + n] = vnpu_ops_act(v, mm->act, mm->act_alpha, mm->act_beta);
            }
        }
    }
    return VNPU_CPL_OK;
}

static float binary(uint32_t kind, float x, float y)
{
    switch (kind) {
    case VNPU_ISA_BIN_ADD:
        return x + y;
    case VNPU_ISA_BIN_SUB:
        return x - y;
    case VNPU_ISA_BIN_MUL:
        return x * y;
    case VNPU_ISA_BIN_DIV:
        return x / y;
    case VNPU_ISA_BIN_MAX:
        return (x > y || isnan(x)) ? x : y;
    case VNPU_ISA_BIN_MIN:
        return (x < y || isnan(x)) ? x : y;
    case VNPU_ISA_BIN_FMOD:
        return fmodf(x, y);
    case VNPU_ISA_BIN_PRELU:
        return x < 0.0f ? x * y : x;
    default:
        return powf(x, y);
    }
}

/* One row: y[j] = op(a[j * sa], b[j * sb]), with the loop specialised per op so that it vectorises. */
static void binary_row(uint32_t kind, float *y, const float *a, uint64_t sa, const float *b, uint64_t sb,
                       uint64_t n)
{
    uint64_t j;

#define VNPU_BIN_ROW(EXPR)                                                                                        \
    do {                                                                                                          \
        if (sa == 1 && sb == 1) {                                                                                 \
            for (j = 0; j < n; j++) {                                                                             \
                float x = a[j], z = b[j];                                                                         \
                y[j] = (EXPR);                                                                                    \
            }                                                                                                     \
        } else if (sa == 1) {                                                                                     \
            float z = b[0];                                                                                       \
            for (j = 0; j < n; j++) {                                                                             \
                float x = a[j];                                                                                   \
                y[j] = (EXPR);                                                                                    \
            }                                                                                                     \
        } else {                                                                                                  \
            for (j = 0; j < n; j++) {                                                                             \
                float x = a[j * sa], z = b[j * sb];                                                               \
                y[j] = (EXPR);                                                                                    \
            }                                                                                                     \
        }                                                                                                         \
    } while (0)

    switch (kind) {
    case VNPU_ISA_BIN_ADD:
        VNPU_BIN_ROW(x + z);
        break;
    case VNPU_ISA_BIN_SUB:
        VNPU_BIN_ROW(x - z);
        break;
    case VNPU_ISA_BIN_MUL:
        VNPU_BIN_ROW(x * z);
        break;
    case VNPU_ISA_BIN_DIV:
        VNPU_BIN_ROW(x / z);
        break;
    default:
        for (j = 0; j < n; j++) {
            y[j] = binary(kind, a[j * sa], b[j * sb]);
        }
        break;
    }
#undef VNPU_BIN_ROW
}

/* A broadcast binary op as rows of `inner` elements over the outer dims [0, split). */
typedef struct BinaryRows {
    uint64_t as[VNPU_ISA_MAX_RANK], bs[VNPU_ISA_MAX_RANK];
    uint64_t inner, sa, sb;
    unsigned split;
} BinaryRows;

static int binary_rows(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const BinaryRows *br = ctx;
    const struct vnpu_isa_binary *bn = &a->attr.binary;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    uint64_t idx[VNPU_ISA_MAX_RANK], aoff = 0, boff = 0, o, inner = br->inner;
    unsigned i;

    unravel(begin, Y->dims, br->split, idx);
    for (i = 0; i < br->split; i++) {
        aoff += idx[i] * br->as[i];
        boff += idx[i] * br->bs[i];
    }
    for (o = begin; o < end; o++) {
        float *yp = Y->data + o * inner;

        binary_row(bn->kind, yp, A->data + aoff, br->sa, B->data + boff, br->sb, inner);
        if (bn->act == VNPU_ISA_ACT_RELU) {
            uint64_t j;

            for (j = 0; j < inner; j++) {
                yp[j] = yp[j] > 0.0f ? yp[j] : 0.0f;
            }
        } else if (bn->act != VNPU_ISA_ACT_NONE) {
            uint64_t j;

            for (j = 0; j < inner; j++) {
                yp[j] = vnpu_ops_act(yp[j], bn->act, bn->act_alpha, bn->act_beta);
            }
        }
        for (i = br->split; i-- > 0;) {
            idx[i]++;
            aoff += br->as[i];
            boff += br->bs[i];
            if (idx[i] < Y->dims[i]) {
                break;
            }
            aoff -= br->as[i] * idx[i];
            boff -= br->bs[i] * idx[i];
            idx[i] = 0;
        }
        if ((o & 1023) == 1023 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_binary(const VnpuOpArgs *a)
{
    const struct vnpu_isa_binary *bn = &a->attr.binary;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    BinaryRows br;
    uint64_t *as = br.as, *bs = br.bs, ys[VNPU_ISA_MAX_RANK];
    unsigned r = Y->rank, split;
    uint64_t inner = 1;
    int a_dense, b_dense;

    if (Y->count == 0) {
        return VNPU_CPL_OK;
    }
    if (r == 0) {
        Y->data[0] = vnpu_ops_act(binary(bn->kind, A->data[0], B->data[0]), bn->act, bn->act_alpha, bn->act_beta);
        return VNPU_CPL_OK;
    }
    bcast_strides(A, r, Y->dims, as);
    bcast_strides(B, r, Y->dims, bs);
    dense_strides(Y, ys);
    /*
     * The innermost run: the longest suffix of dims over which each input is either dense (walks with the
     * output) or broadcast (stays put). Same-shape operands make it the whole tensor; a per-channel operand
     * makes it one channel plane.
     */
    a_dense = as[r - 1] == ys[r - 1] || Y->dims[r - 1] == 1;
    b_dense = bs[r - 1] == ys[r - 1] || Y->dims[r - 1] == 1;
    for (split = r; split > 0; split--) {
        unsigned d = split - 1;
        int ad = as[d] == ys[d], bd = bs[d] == ys[d];

        if (Y->dims[d] != 1 && ((ad != a_dense) || (!ad && as[d] != 0) || (bd != b_dense) || (!bd && bs[d] != 0))) {
            break;
        }
        inner *= Y->dims[d];
    }
    br.sa = a_dense ? 1 : 0;
    br.sb = b_dense ? 1 : 0;
    br.inner = inner;
    br.split = split;
    return vnpu_ops_parallel(a, Y->count / inner, Y->count, binary_rows, &br);
}

static int unary_range(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const struct vnpu_isa_unary *u = &a->attr.unary;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t i;

    (void)ctx;
    for (i = begin; i < end; i++) {
        y->data[i] = vnpu_ops_act(x->data[i], u->act, u->act_alpha, u->act_beta);
        if ((i & 0xffff) == 0xffff && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_unary(const VnpuOpArgs *a)
{
    return vnpu_ops_parallel(a, OUT(a, 0)->count, OUT(a, 0)->count, unary_range, NULL);
}

/* Planes [begin, end) of n * C, each `inner` elements of one channel. */
static int affine_planes(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const struct vnpu_isa_affine *af = &a->attr.affine;
    const VnpuTensor *s = IN(a, 1), *t = IN(a, 2), *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t inner = *(const uint64_t *)ctx, C = x->dims[1], p, i;

    for (p = begin; p < end; p++) {
        uint64_t base = p * inner, c = p % C;

        if (cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
        for (i = 0; i < inner; i++) {
            y->data[base + i] =
                vnpu_ops_act(x->data[base + i] * s->data[c] + t->data[c], af->act, af->act_alpha, af->act_beta);
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_affine(const VnpuOpArgs *a)
{
    const VnpuTensor *x = IN(a, 0);
    /* An empty batch (dims[0] == 0) is valid and does nothing: never divide by it. */
    uint64_t C = x->dims[1], inner = C && x->dims[0] ? x->count / x->dims[0] / C : 0;

    return vnpu_ops_parallel(a, inner ? x->dims[0] * C : 0, x->count, affine_planes, &inner);
}

/* Outer rows [begin, end): each the inputs' chunks one after the other. */
static int concat_rows(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const VnpuTensor *y = OUT(a, 0);
    uint32_t axis = a->attr.axis.axis;
    uint64_t inner = *(const uint64_t *)ctx, o, pos = begin * y->dims[axis] * inner;
    unsigned i;

    for (o = begin; o < end; o++) {
        if ((o & 1023) == 1023 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
        for (i = 0; i < a->num_inputs; i++) {
            const VnpuTensor *x = IN(a, i);
            uint64_t chunk = x->dims[axis] * inner;

            if (chunk) {
                memcpy(y->data + pos, x->data + o * chunk, chunk * 4);
            }
            pos += chunk;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_concat(const VnpuOpArgs *a)
{
    const VnpuTensor *y = OUT(a, 0);
    uint32_t axis = a->attr.axis.axis;
    uint64_t outer = 1, inner = 1;
    unsigned i;

    for (i = 0; i < axis; i++) {
        outer *= y->dims[i];
    }
    for (i = axis + 1; i < y->rank; i++) {
        inner *= y->dims[i];
    }
    return vnpu_ops_parallel(a, y->count ? outer : 0, y->count, concat_rows, &inner);
}

/*
 * Rows of a gather whose input offset advances by stride[i] per step of output dim i (SLICE: step times the
 * input's stride; TRANSPOSE: the permuted input stride). Offsets are walked in unsigned (modulo 2^64)
 * arithmetic: a negative step is its two's complement, and a step of a dim of size 1 times a large stride may
 * exceed int64 in the intermediate sums (signed overflow is undefined). Every offset actually used is inside x
 * (vnpu_ops_check), so the modular sums are exact.
 */
typedef struct StridedRows {
    uint64_t base;
    uint64_t stride[VNPU_ISA_MAX_RANK];
} StridedRows;

static int strided_rows(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const StridedRows *sr = ctx;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t idx[VNPU_ISA_MAX_RANK], off = sr->base, inner, step_inner, o;
    unsigned r = y->rank, i;

    inner = y->dims[r - 1];
    step_inner = sr->stride[r - 1];
    unravel(begin, y->dims, r - 1, idx);
    for (i = 0; i + 1 < r; i++) {
        off += idx[i] * sr->stride[i];
    }
    for (o = begin; o < end; o++) {
        float *yp = y->data + o * inner;
        uint64_t j;

        if (step_inner == 1) {
            memcpy(yp, x->data + off, inner * 4);
        } else {
            for (j = 0; j < inner; j++) {
                yp[j] = x->data[off + j * step_inner];
            }
        }
        if ((o & 1023) == 1023 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
        for (i = r - 1; i-- > 0;) {
            idx[i]++;
            off += sr->stride[i];
            if (idx[i] < y->dims[i]) {
                break;
            }
            off -= sr->stride[i] * idx[i];
            idx[i] = 0;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_slice(const VnpuOpArgs *a)
{
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    const struct vnpu_isa_slice *s = &a->attr.slice;
    uint64_t xs[VNPU_ISA_MAX_RANK];
    StridedRows sr = {0};
    unsigned r = y->rank, i;

    if (copy_trivial(x, y)) {
        return VNPU_CPL_OK;
    }
    dense_strides(x, xs);
    for (i = 0; i < r; i++) {
        sr.base += (uint64_t)s->start[i] * xs[i];
        sr.stride[i] = (uint64_t)s->step[i] * xs[i];
    }
    return vnpu_ops_parallel(a, y->count / y->dims[r - 1], y->count, strided_rows, &sr);
}

int vnpu_ref_transpose(const VnpuOpArgs *a)
{
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t xs[VNPU_ISA_MAX_RANK];
    StridedRows sr = {0};
    unsigned r = y->rank, i;

    if (copy_trivial(x, y)) {
        return VNPU_CPL_OK;
    }
    dense_strides(x, xs);
    for (i = 0; i < r; i++) {
        sr.stride[i] = xs[a->attr.transpose.perm[i]]; /* input stride of output dim i */
    }
    return vnpu_ops_parallel(a, y->count / y->dims[r - 1], y->count, strided_rows, &sr);
}

int vnpu_ref_copy(const VnpuOpArgs *a)
{
    if (OUT(a, 0)->count) {
        memmove(OUT(a, 0)->data, IN(a, 0)->data, OUT(a, 0)->count * 4);
    }
    return VNPU_CPL_OK;
}

/*
 * Input coordinate of output coordinate o along one dim (ONNX Resize coordinate_transformation_mode).
 *
 * With output sizes (F_SIZES) the scale is exactly out / in, so the coordinate is computed from the integers
 * (o * in / out, ...): a coordinate that is mathematically an integer or a half stays exact, and nearest
 * rounding agrees with PyTorch and ONNX for every ratio (dividing by a rounded scale 18/14 put output 9 of a
 * 14 -> 18 resize at 6.9999 instead of 7, one pixel off). With model scales, the other modes divide by the
 * scale, and align_corners and pytorch_half_pixel use the integer output length, as PyTorch and ONNX Runtime
 * do (ONNX's Python reference uses scale * in, which put align_corners samples up to half a pixel off
 * PyTorch's whenever scale * in is not an integer).
 */
static double resize_coord(uint32_t mode, uint64_t o, uint64_t in, uint64_t out, double scale, int sizes)
{
    if (sizes) {
        double n = (double)in, d = (double)out, twice = 2.0 * (double)o + 1.0;

        switch (mode) {
        case VNPU_ISA_COORD_ASYMMETRIC:
            return (double)o * n / d;
        case VNPU_ISA_COORD_ALIGN_CORNERS:
            return out == 1 ? 0.0 : (double)o * (double)(in - 1) / (double)(out - 1);
        case VNPU_ISA_COORD_PYTORCH_HALF_PIXEL:
            return out == 1 ? 0.0 : (twice * n - d) / (2.0 * d);
        case VNPU_ISA_COORD_TF_HALF_PIXEL_FOR_NN:
            return twice * n / (2.0 * d);
        default:
            return (twice * n - d) / (2.0 * d);
        }
    }
    switch (mode) {
    case VNPU_ISA_COORD_ASYMMETRIC:
        return (double)o / scale;
    case VNPU_ISA_COORD_ALIGN_CORNERS:
        return out == 1 ? 0.0 : (double)o * (double)(in - 1) / (double)(out - 1);
    case VNPU_ISA_COORD_PYTORCH_HALF_PIXEL:
        return out == 1 ? 0.0 : ((double)o + 0.5) / scale - 0.5;
    case VNPU_ISA_COORD_TF_HALF_PIXEL_FOR_NN:
        return ((double)o + 0.5) / scale;
    default:
        return ((double)o + 0.5) / scale - 0.5;
    }
}

/*
 * Clamp a sampling coordinate (already rounded to an integer value) into [0, n) before converting it: a tiny
 * scale or a far coordinate gives doubles beyond int64, whose conversion is undefined. NaN clamps to 0.
 */
static int64_t clamp_index(double i, uint64_t n)
{
    return !(i >= 0.0) ? 0 : (i >= (double)(n - 1) ? (int64_t)(n - 1) : (int64_t)i);
}

/*
 * Per-dim sampling tables: for output coordinate o along dim d, the element offsets (index * stride) of the
 * two neighbours and the weight of the upper one (nearest: both neighbours equal, weight 0).
 */
typedef struct ResizeDim {
    uint64_t *lo, *hi;
    double *w;
    int interp; /* some output coordinate has a non-zero weight */
} ResizeDim;

/* The nearest input coordinate, as an integral double (clamp_index converts it). */
static double nearest_index(uint32_t mode, double c)
{
    double f = floor(c), frac = c - f;

    switch (mode) {
    case VNPU_ISA_NEAREST_FLOOR:
        return f;
    case VNPU_ISA_NEAREST_CEIL:
        return ceil(c);
    case VNPU_ISA_NEAREST_ROUND_PREFER_CEIL:
        return frac >= 0.5 ? f + 1.0 : f;
    default:
        return frac > 0.5 ? f + 1.0 : f;
    }
}

/* ONNX's cubic convolution weights of the taps floor(c) - 1 .. floor(c) + 2 for r = c - floor(c). */
static void cubic_weights(double A, double r, double *w)
{
    double s = r + 1.0, t = 1.0 - r, u = t + 1.0;

    w[0] = ((A * s - 5.0 * A) * s + 8.0 * A) * s - 4.0 * A;
    w[1] = ((A + 2.0) * r - (A + 3.0)) * r * r + 1.0;
    w[2] = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    w[3] = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A;
}

/*
 * The 4 taps (element indices along the dim, clamped to the edge as ONNX's reference pads with edge values)
 * and weights of every output coordinate of one dim. Returns 1 when the dim is resampled as the identity.
 */
static int cubic_table(const struct vnpu_isa_resize *rz, uint64_t in, uint64_t out, double scale, int64_t *idx,
                       double *wt)
{
    int identity = in == out;
    uint64_t j;
    int k;

    for (j = 0; j < out; j++) {
        double c = resize_coord(rz->coord, j, in, out, scale, !!(rz->flags & VNPU_ISA_RESIZE_F_SIZES));
        double f, sum = 0.0;

        /* Far outside (up to beyond int64) every tap is the edge: clamp before converting. */
        c = c < -4.0 ? -4.0 : c > (double)in + 4.0 ? (double)in + 4.0 : c;
        f = floor(c);
        cubic_weights(rz->cubic_a, c - f, wt + 4 * j);
        for (k = 0; k < 4; k++) {
            int64_t t = (int64_t)f - 1 + k;

            if ((rz->flags & VNPU_ISA_RESIZE_F_EXCLUDE_OUTSIDE) && (t < 0 || t >= (int64_t)in)) {
                wt[4 * j + k] = 0.0;
            }
            sum += wt[4 * j + k];
            idx[4 * j + k] = t < 0 ? 0 : t >= (int64_t)in ? (int64_t)in - 1 : t;
        }
        if (rz->flags & VNPU_ISA_RESIZE_F_EXCLUDE_OUTSIDE) {
            for (k = 0; k < 4; k++) {
                wt[4 * j + k] /= sum;
            }
        }
        identity &= wt[4 * j + 1] == 1.0 && wt[4 * j] == 0.0 && wt[4 * j + 2] == 0.0 && wt[4 * j + 3] == 0.0 &&
                    idx[4 * j + 1] == (int64_t)j;
    }
    return identity;
}

/*
 * Cubic RESIZE, separable: one pass per dim that is not the identity, in double. Dims that shrink go first, so
 * no intermediate tensor is larger than max(|X|, |Y|).
 */
static int resize_cubic(const VnpuOpArgs *a)
{
    const struct vnpu_isa_resize *rz = &a->attr.resize;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t cur[VNPU_ISA_MAX_RANK], n = x->count > y->count ? x->count : y->count, maxd = 1, i, work = 0;
    unsigned r = y->rank, d, pass;
    double *buf[2], *wt;
    int64_t *idx;
    int src = 0, ret = VNPU_CPL_OK;

    for (d = 0; d < r; d++) {
        cur[d] = x->dims[d];
        maxd = y->dims[d] > maxd ? y->dims[d] : maxd;
    }
    buf[0] = malloc(n * sizeof(double));
    buf[1] = malloc(n * sizeof(double));
    wt = malloc(maxd * 4 * sizeof(double));
    idx = malloc(maxd * 4 * sizeof(int64_t));
    if (!buf[0] || !buf[1] || !wt || !idx) {
        ret = -1;
        goto out;
    }
    for (i = 0; i < x->count; i++) {
        buf[0][i] = x->data[i];
    }
    for (pass = 0; pass < 2 && ret == VNPU_CPL_OK; pass++) {
        for (d = 0; d < r && ret == VNPU_CPL_OK; d++) {
            uint64_t in = x->dims[d], out = y->dims[d], outer = 1, inner = 1, o, j, e;
            double scale = (rz->flags & VNPU_ISA_RESIZE_F_SIZES) ? (double)out / (double)in : (double)rz->scale[d];
            const double *s;
            double *t;
            unsigned k;

            if ((pass == 0) != (out < in) || cubic_table(rz, in, out, scale, idx, wt)) {
                continue;
            }
            for (k = 0; k < d; k++) {
                outer *= cur[k];
            }
            for (k = d + 1; k < r; k++) {
                inner *= cur[k];
            }
            s = buf[src];
            t = buf[!src];
            for (o = 0; o < outer && ret == VNPU_CPL_OK; o++) {
                for (j = 0; j < out; j++) {
                    const double *w = wt + 4 * j;
                    const int64_t *p = idx + 4 * j;
                    double *yp = t + (o * out + j) * inner;

                    for (e = 0; e < inner; e++) {
                        const double *xp = s + o * in * inner + e;

                        yp[e] = w[0] * xp[p[0] * inner] + w[1] * xp[p[1] * inner] + w[2] * xp[p[2] * inner] +
                                w[3] * xp[p[3] * inner];
                    }
                    work += inner + 1;
                    if (work >= 65536) {
                        work = 0;
                        if (cancelled(a)) {
                            ret = VNPU_CPL_ABORTED;
                            break;
                        }
                    }
                }
            }
            cur[d] = out;
            src = !src;
        }
    }
    if (ret == VNPU_CPL_OK) {
        for (i = 0; i < y->count; i++) {
            y->data[i] = (float)buf[src][i];
        }
    }
out:
    free(buf[0]);
    free(buf[1]);
    free(wt);
    free(idx);
    return ret;
}

/* Output rows [begin, end) of a nearest/linear resize, from the per-dim tables `ctx` (ResizeDim[rank]). */
static int resize_rows(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const ResizeDim *dim = ctx;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t idx[VNPU_ISA_MAX_RANK], o, inner = y->dims[y->rank - 1];
    unsigned r = y->rank, i;

    unravel(begin, y->dims, r - 1, idx);
    for (o = begin; o < end; o++) {
        /* Corners of the outer dims with their weights (at most 2^(rank-1), usually 1 or 2). */
        uint64_t coff[1u << (VNPU_ISA_MAX_RANK - 1)];
        double cw[1u << (VNPU_ISA_MAX_RANK - 1)];
        unsigned nc = 1, k;
        const ResizeDim *last = &dim[r - 1];
        float *yp = y->data + o * inner;
        uint64_t j;

        coff[0] = 0;
        cw[0] = 1.0;
        for (i = 0; i + 1 < r; i++) {
            uint64_t lo = dim[i].lo[idx[i]], hi = dim[i].hi[idx[i]];
            double w = dim[i].w[idx[i]];

            if (w == 0.0) {
                for (k = 0; k < nc; k++) {
                    coff[k] += lo;
                }
                continue;
            }
            for (k = 0; k < nc; k++) {
                coff[nc + k] = coff[k] + hi;
                cw[nc + k] = cw[k] * w;
                coff[k] += lo;
                cw[k] *= 1.0 - w;
            }
            nc *= 2;
        }
        for (j = 0; j < inner; j++) {
            double acc = 0.0, w = last->w[j];

            for (k = 0; k < nc; k++) {
                const float *xp = x->data + coff[k];

                acc += cw[k] * (w == 0.0 ? xp[last->lo[j]] : (1.0 - w) * xp[last->lo[j]] + w * xp[last->hi[j]]);
            }
            yp[j] = (float)acc;
        }
        for (i = r - 1; i-- > 0;) {
            if (++idx[i] < y->dims[i]) {
                break;
            }
            idx[i] = 0;
        }
        if ((o & 1023) == 1023 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_resize(const VnpuOpArgs *a)
{
    const struct vnpu_isa_resize *rz = &a->attr.resize;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t xs[VNPU_ISA_MAX_RANK], total = 0;
    ResizeDim dim[VNPU_ISA_MAX_RANK];
    unsigned r = y->rank, i;
    uint64_t *ibuf;
    double *wbuf;
    int ret;

    if (copy_trivial(x, y)) {
        return VNPU_CPL_OK;
    }
    if (rz->mode == VNPU_ISA_RESIZE_CUBIC) {
        return resize_cubic(a);
    }
    dense_strides(x, xs);
    for (i = 0; i < r; i++) {
        total += y->dims[i];
    }
    ibuf = malloc(total * 2 * sizeof(*ibuf));
    wbuf = malloc(total * sizeof(*wbuf));
    if (!ibuf || !wbuf) {
        free(ibuf);
        free(wbuf);
        return -1;
    }
    total = 0;
    for (i = 0; i < r; i++) {
        double scale = (rz->flags & VNPU_ISA_RESIZE_F_SIZES) ? (double)y->dims[i] / (double)x->dims[i]
                                                            : (double)rz->scale[i];
        uint64_t j;

        dim[i].lo = ibuf + 2 * total;
        dim[i].hi = dim[i].lo + y->dims[i];
        dim[i].w = wbuf + total;
        dim[i].interp = 0;
        total += y->dims[i];
        for (j = 0; j < y->dims[i]; j++) {
            double c = resize_coord(rz->coord, j, x->dims[i], y->dims[i], scale,
                                    !!(rz->flags & VNPU_ISA_RESIZE_F_SIZES));
            int64_t lo, hi;
            double w = 0.0;

            if (rz->mode == VNPU_ISA_RESIZE_NEAREST) {
                lo = hi = clamp_index(nearest_index(rz->nearest, c), x->dims[i]);
            } else {
                double f = floor(c);

                lo = clamp_index(f, x->dims[i]);
                hi = clamp_index(f + 1.0, x->dims[i]);
                w = hi == lo ? 0.0 : c - f;
            }
            dim[i].lo[j] = (uint64_t)lo * xs[i];
            dim[i].hi[j] = (uint64_t)hi * xs[i];
            dim[i].w[j] = w;
            dim[i].interp |= w != 0.0;
        }
    }
    ret = vnpu_ops_parallel(a, y->count / y->dims[r - 1], y->count, resize_rows, dim);
    free(ibuf);
    free(wbuf);
    return ret;
}

/* Softmax lines [begin, end) of outer x inner, each `len` elements `inner` apart. */
typedef struct SoftmaxLines {
    uint64_t len, inner;
} SoftmaxLines;

static int softmax_lines(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const SoftmaxLines *sl = ctx;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint32_t flags = a->attr.softmax.flags;
    uint64_t len = sl->len, inner = sl->inner, l, j;

    for (l = begin; l < end; l++) {
        uint64_t o = l / inner, in = l % inner;
        const float *xp = x->data + o * len * inner + in;
        float *yp = y->data + o * len * inner + in;
        float mx = -INFINITY;
        double sum = 0.0;

        if ((l & 255) == 255 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
        for (j = 0; j < len; j++) {
            mx = xp[j * inner] > mx ? xp[j * inner] : mx;
        }
        for (j = 0; j < len; j++) {
            sum += exp((double)xp[j * inner] - mx);
        }
        for (j = 0; j < len; j++) {
            double v = (double)xp[j * inner] - mx;

            yp[j * inner] = (flags & VNPU_ISA_SOFTMAX_F_LOG) ? (float)(v - log(sum)) : (float)(exp(v) / sum);
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_softmax(const VnpuOpArgs *a)
{
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint32_t axis = a->attr.softmax.axis, flags = a->attr.softmax.flags;
    uint64_t outer = 1;
    SoftmaxLines sl = {1, 1};
    unsigned i;

    if (y->count == 0) {
        return VNPU_CPL_OK;
    }
    for (i = 0; i < x->rank; i++) {
        if (i < axis) {
            outer *= x->dims[i];
        } else if (i == axis || (flags & VNPU_ISA_SOFTMAX_F_FLATTEN)) {
            sl.len *= x->dims[i];
        } else {
            sl.inner *= x->dims[i];
        }
    }
    /* Each line costs a few exp() per element: worth threads from a smaller size than a copy. */
    return vnpu_ops_parallel(a, outer * sl.inner, y->count * 8, softmax_lines, &sl);
}
