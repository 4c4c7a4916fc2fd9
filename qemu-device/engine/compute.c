/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: compute unit. v0 has one operation, f32 matrix multiply in device memory.
 *
 * Numerics (part of the device contract, see docs/device.md): every C[i][j] is accumulated in f32, starting from
 * +0.0f and adding A[i][p] * B[p][j] for p = 0, 1, ..., k-1 in that order, with round-to-nearest and no fused
 * multiply-add. A reference loop in that order reproduces the device bit for bit.
 */
#include <string.h>

#include "vnpu_engine_int.h"

#define COL_BLOCK 512u /* columns of C kept hot while the k loop streams rows of B */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen; /* both ranges already checked to lie in device memory */
}

void vnpu_compute_matmul(const VnpuExec *x, const struct vnpu_hw_matmul *mm, VnpuCmdResult *r)
{
    VnpuEngine *e = x->e;
    uint64_t m = mm->m, n = mm->n, k = mm->k;
    uint64_t a_len, b_len, c_len;
    const float *a, *b;
    float *c;

    r->unit = VNPU_UNIT_COMPUTE;
    if (mm->rsvd0 || mm->dtype != VNPU_DTYPE_F32 || !m || !n || !k || m > VNPU_MATMUL_DIM_MAX ||
        n > VNPU_MATMUL_DIM_MAX || k > VNPU_MATMUL_DIM_MAX) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    /* Operands are f32 arrays: 4-byte alignment is required. */
    if (mm->a_addr % 4 || mm->b_addr % 4 || mm->c_addr % 4) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    a_len = m * k * 4; /* each dimension <= 2^14, so at most 2^30 bytes */
    b_len = k * n * 4;
    c_len = m * n * 4;
    if (!vnpu_devmem_range_ok(e, mm->a_addr, a_len) || !vnpu_devmem_range_ok(e, mm->b_addr, b_len) ||
        !vnpu_devmem_range_ok(e, mm->c_addr, c_len)) {
        r->status = VNPU_CPL_DEVMEM_RANGE;
        return;
    }
    /* C is written while A and B are still read: an in-place product is not defined, so it is refused. */
    if (overlaps(mm->c_addr, c_len, mm->a_addr, a_len) || overlaps(mm->c_addr, c_len, mm->b_addr, b_len)) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }

    a = (const float *)(e->devmem + mm->a_addr);
    b = (const float *)(e->devmem + mm->b_addr);
    c = (float *)(e->devmem + mm->c_addr);
    for (uint64_t i = 0; i < m; i++) {
        const float *arow = a + i * k;
        float *crow = c + i * n;

        if (vnpu_exec_cancelled(x)) {
            r->status = VNPU_CPL_ABORTED;
            return;
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
    r->status = VNPU_CPL_OK;
    r->flops = 2 * m * n * k;
}
