/* SPDX-License-Identifier: MIT */
/*
 * ISA 1.1 ops: REDUCE, NORM (layer normalisation) and PAD — their semantic checks and reference kernels.
 * Kept apart from kernels_ref.c so that the ops added in 1.1 read as one unit. vnpu_ops_check() dispatches
 * here; like every kernel, these may assume that the op passed its check.
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

/* ---- REDUCE ----------------------------------------------------------------------------------------------- */

int vnpu_check_reduce(const VnpuOpArgs *a)
{
    const struct vnpu_isa_reduce *r = &a->attr.reduce;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    unsigned d;

    if (a->num_inputs != 1 || a->num_outputs != 1 || r->kind >= VNPU_ISA_REDUCE_COUNT_ || r->rsvd0 ||
        r->rsvd1 || x->rank != y->rank || (x->rank < 32 && (r->axes >> x->rank))) {
        return -1;
    }
    for (d = 0; d < x->rank; d++) {
        if (y->dims[d] != ((r->axes >> d) & 1 ? 1 : x->dims[d])) {
            return -1;
        }
    }
    return 0;
}

static double reduce_init(uint32_t kind)
{
    switch (kind) {
    case VNPU_ISA_REDUCE_MAX:
    case VNPU_ISA_REDUCE_LOG_SUM_EXP: /* first pass: the maximum */
        return -INFINITY;
    case VNPU_ISA_REDUCE_MIN:
        return INFINITY;
    case VNPU_ISA_REDUCE_PROD:
        return 1.0;
    default:
        return 0.0;
    }
}

static double reduce_step(uint32_t kind, double acc, double v)
{
    switch (kind) {
    case VNPU_ISA_REDUCE_MAX:
    case VNPU_ISA_REDUCE_LOG_SUM_EXP:
        return (isnan(v) || v > acc) ? v : acc; /* a NaN sticks: NaN > v and v > NaN are both false */
    case VNPU_ISA_REDUCE_MIN:
        return (isnan(v) || v < acc) ? v : acc;
    case VNPU_ISA_REDUCE_PROD:
        return acc * v;
    case VNPU_ISA_REDUCE_L1:
        return acc + fabs(v);
    case VNPU_ISA_REDUCE_L2:
    case VNPU_ISA_REDUCE_SUM_SQUARE:
        return acc + v * v;
    default:
        return acc + v;
    }
}

/*
 * Walks X in order and calls step for every element with the offset of the Y element it reduces into (Y's
 * dense strides with 0 for the reduced dims). Returns VNPU_CPL_ABORTED when cancelled.
 */
static int reduce_walk(const VnpuOpArgs *a, uint32_t kind, double *acc, const double *shift)
{
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t ys[VNPU_ISA_MAX_RANK], idx[VNPU_ISA_MAX_RANK] = {0}, s = 1, yoff = 0, i, inner, inner_ys, row = 0;
    unsigned r = x->rank, d;

    if (x->count == 0) {
        return VNPU_CPL_OK;
    }
    if (r == 0) {
        acc[0] = reduce_step(kind, acc[0], (double)x->data[0] - (shift ? shift[0] : 0.0));
        return VNPU_CPL_OK;
    }
    for (d = r; d-- > 0;) {
        ys[d] = y->dims[d] == 1 && x->dims[d] != 1 ? 0 : s;
        s *= y->dims[d];
    }
    inner = x->dims[r - 1];
    inner_ys = ys[r - 1];
    for (i = 0; i < x->count; i += inner) {
        const float *xp = x->data + i;
        uint64_t j;

        if (shift) { /* log-sum-exp second pass: sum of exp(x - max) */
            for (j = 0; j < inner; j++) {
                uint64_t o = yoff + j * inner_ys;

                acc[o] += exp((double)xp[j] - shift[o]);
            }
        } else {
            for (j = 0; j < inner; j++) {
                uint64_t o = yoff + j * inner_ys;

                acc[o] = reduce_step(kind, acc[o], (double)xp[j]);
            }
        }
        for (d = r - 1; d-- > 0;) {
            idx[d]++;
            yoff += ys[d];
            if (idx[d] < x->dims[d]) {
                break;
            }
            yoff -= ys[d] * idx[d];
            idx[d] = 0;
        }
        if ((++row & 1023) == 0 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

int vnpu_ref_reduce(const VnpuOpArgs *a)
{
    const struct vnpu_isa_reduce *r = &a->attr.reduce;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t n = y->count ? x->count / y->count : 0, i;
    double *acc, *mx = NULL;
    int ret;

    if (y->count == 0) {
        return VNPU_CPL_OK;
    }
    acc = malloc(y->count * sizeof(*acc));
    if (!acc) {
        return -1;
    }
    for (i = 0; i < y->count; i++) {
        acc[i] = reduce_init(r->kind);
    }
    ret = reduce_walk(a, r->kind, acc, NULL);
    if (ret == VNPU_CPL_OK && r->kind == VNPU_ISA_REDUCE_LOG_SUM_EXP) {
        mx = acc;
        acc = calloc(y->count, sizeof(*acc));
        if (!acc) {
            free(mx);
            return -1;
        }
        ret = reduce_walk(a, r->kind, acc, mx);
    }
    if (ret == VNPU_CPL_OK) {
        for (i = 0; i < y->count; i++) {
            double v = acc[i];

            switch (r->kind) {
            case VNPU_ISA_REDUCE_MEAN:
                v = v / (double)n; /* empty: 0 / 0 = NaN */
                break;
            case VNPU_ISA_REDUCE_L2:
                v = sqrt(v);
                break;
            case VNPU_ISA_REDUCE_LOG_SUM:
                v = log(v);
                break;
            case VNPU_ISA_REDUCE_LOG_SUM_EXP:
                v = isinf(mx[i]) ? mx[i] : mx[i] + log(v); /* -inf: empty, or every element -inf */
                break;
            default:
                break;
            }
            y->data[i] = (float)v;
        }
    }
    free(mx);
    free(acc);
    return ret;
}

/* ---- NORM ------------------------------------------------------------------------------------------------- */

int vnpu_check_norm(const VnpuOpArgs *a)
{
    const struct vnpu_isa_norm *nm = &a->attr.norm;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t inner = 1;
    unsigned d;

    if (a->num_inputs != 3 || a->num_outputs != 1 || nm->rsvd0 || nm->act >= VNPU_ISA_ACT_COUNT_ ||
        x->rank < 1 || nm->axis >= x->rank || !(nm->epsilon >= 0.0f) || isinf(nm->epsilon) ||
        x->rank != y->rank || memcmp(x->dims, y->dims, sizeof(x->dims)) != 0) {
        return -1;
    }
    for (d = nm->axis; d < x->rank; d++) {
        inner *= x->dims[d];
    }
    return IN(a, 1)->count == inner && IN(a, 2)->count == inner ? 0 : -1;
}

int vnpu_ref_norm(const VnpuOpArgs *a)
{
    const struct vnpu_isa_norm *nm = &a->attr.norm;
    const VnpuTensor *x = IN(a, 0), *s = IN(a, 1), *b = IN(a, 2), *y = OUT(a, 0);
    uint64_t inner = s->count, outer, o, j;

    if (y->count == 0 || inner == 0) {
        return VNPU_CPL_OK;
    }
    outer = x->count / inner;
    for (o = 0; o < outer; o++) {
        const float *xp = x->data + o * inner;
        float *yp = y->data + o * inner;
        double mean = 0.0, var = 0.0, inv;

        for (j = 0; j < inner; j++) {
            mean += xp[j];
        }
        mean /= (double)inner;
        for (j = 0; j < inner; j++) {
            double dv = xp[j] - mean;

            var += dv * dv;
        }
        var /= (double)inner;
        inv = 1.0 / sqrt(var + nm->epsilon);
        for (j = 0; j < inner; j++) {
            float v = (float)(((double)xp[j] - mean) * inv) * s->data[j] + b->data[j];

            yp[j] = vnpu_ops_act(v, nm->act, nm->act_alpha, nm->act_beta);
        }
        if ((o & 255) == 255 && cancelled(a)) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

/* ---- PAD -------------------------------------------------------------------------------------------------- */

int vnpu_check_pad(const VnpuOpArgs *a)
{
    const struct vnpu_isa_pad *p = &a->attr.pad;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    unsigned d;

    if (a->num_inputs != 1 || a->num_outputs != 1 || p->mode > VNPU_ISA_PAD_EDGE || x->rank != y->rank ||
        (p->mode != VNPU_ISA_PAD_CONSTANT && p->value != 0.0f)) {
        return -1;
    }
    for (d = 0; d < VNPU_ISA_MAX_RANK; d++) {
        if (d >= x->rank) {
            if (p->begin[d] || p->end[d]) {
                return -1;
            }
            continue;
        }
        if (y->dims[d] != (uint64_t)p->begin[d] + x->dims[d] + p->end[d]) {
            return -1;
        }
        if (p->mode == VNPU_ISA_PAD_REFLECT && (p->begin[d] || p->end[d]) &&
            (p->begin[d] >= x->dims[d] || p->end[d] >= x->dims[d])) {
            return -1;
        }
        if (p->mode == VNPU_ISA_PAD_EDGE && (p->begin[d] || p->end[d]) && x->dims[d] == 0) {
            return -1;
        }
    }
    /* reflect/edge take every output value from X: it must not be empty unless Y is */
    return p->mode != VNPU_ISA_PAD_CONSTANT && x->count == 0 && y->count ? -1 : 0;
}

/* Source index along one dim for output coordinate o, or -1 for a constant-padding cell. */
static int64_t pad_source(uint32_t mode, int64_t o, uint64_t begin, uint64_t n)
{
    int64_t j = o - (int64_t)begin, last = (int64_t)n - 1;

    if (j >= 0 && j <= last) {
        return j;
    }
    switch (mode) {
    case VNPU_ISA_PAD_REFLECT:
        return j < 0 ? -j : 2 * last - j;
    case VNPU_ISA_PAD_EDGE:
        return j < 0 ? 0 : last;
    default:
        return -1;
    }
}

int vnpu_ref_pad(const VnpuOpArgs *a)
{
    const struct vnpu_isa_pad *p = &a->attr.pad;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    uint64_t xs[VNPU_ISA_MAX_RANK], idx[VNPU_ISA_MAX_RANK] = {0}, s = 1, total = 0, rows, row, w;
    int64_t *src[VNPU_ISA_MAX_RANK], *buf;
    unsigned r = y->rank, d;

    if (y->count == 0) {
        return VNPU_CPL_OK;
    }
    if (r == 0) {
        y->data[0] = x->data[0];
        return VNPU_CPL_OK;
    }
    for (d = r; d-- > 0;) {
        xs[d] = s;
        s *= x->dims[d];
        total += y->dims[d];
    }
    buf = malloc(total * sizeof(*buf));
    if (!buf) {
        return -1;
    }
    total = 0;
    for (d = 0; d < r; d++) {
        uint64_t o;

        src[d] = buf + total;
        total += y->dims[d];
        for (o = 0; o < y->dims[d]; o++) {
            src[d][o] = pad_source(p->mode, (int64_t)o, p->begin[d], x->dims[d]);
        }
    }
    w = y->dims[r - 1];
    rows = y->count / w;
    for (row = 0; row < rows; row++) {
        float *yp = y->data + row * w;
        int64_t off = 0;
        uint64_t j;

        for (d = 0; d + 1 < r; d++) {
            int64_t k = src[d][idx[d]];

            if (k < 0) {
                off = -1;
                break;
            }
            off += k * (int64_t)xs[d];
        }
        for (j = 0; j < w; j++) {
            int64_t k = src[r - 1][j];

            yp[j] = off < 0 || k < 0 ? p->value : x->data[off + k];
        }
        for (d = r - 1; d-- > 0;) {
            if (++idx[d] < y->dims[d]) {
                break;
            }
            idx[d] = 0;
        }
        if ((row & 1023) == 1023 && cancelled(a)) {
            free(buf);
            return VNPU_CPL_ABORTED;
        }
    }
    free(buf);
    return VNPU_CPL_OK;
}
