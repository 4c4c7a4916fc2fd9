/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: scatter-gather DMA between host memory (through host->dma_read/dma_write) and device memory,
 * the device side addressed virtually through the job's context (mmu.c).
 *
 * The list is walked twice. The first pass validates every element and the total length before a single byte
 * moves, so a malformed list never leaves a half-done transfer; the second pass moves the data and re-checks
 * each element, because the driver could rewrite the list between the passes. Elements are read in bounded
 * chunks, and no size the guest supplies is trusted for an allocation.
 */
#include <string.h>

#include "vnpu_engine_int.h"

#define SGE_CHUNK 256u                 /* elements per dma_read of the list (4 KiB) */
#define XFER_CHUNK (1u << 20)          /* bytes per data dma_read/dma_write; cancellation is checked between */

typedef struct SglWalk {
    const VnpuExec *x;
    const struct vnpu_hw_dma *d;
    struct vnpu_hw_sge buf[SGE_CHUNK];
    uint32_t next;      /* index of the next element to read from the list */
    uint32_t filled, pos;
} SglWalk;

/* Next element of the list into *sge; returns a VNPU_CPL_* status. */
static uint16_t sgl_next(SglWalk *w, struct vnpu_hw_sge *sge)
{
    VnpuEngine *e = w->x->e;

    if (w->pos == w->filled) {
        uint32_t n = w->d->sgl_count - w->next;

        if (n > SGE_CHUNK) {
            n = SGE_CHUNK;
        }
        if (vnpu_host_dma(e, w->x->j->epoch, w->d->sgl_addr + (uint64_t)w->next * sizeof(*sge), w->buf,
                          n * sizeof(*sge), false)) {
            vnpu_guest_error(e, "SGL read at 0x%llx failed",
                             (unsigned long long)(w->d->sgl_addr + (uint64_t)w->next * sizeof(*sge)));
            return VNPU_CPL_DMA_FAULT;
        }
        w->next += n;
        w->filled = n;
        w->pos = 0;
    }
    *sge = w->buf[w->pos++];
    if (!sge->len || sge->rsvd || sge->addr > UINT64_MAX - (sge->len - 1)) {
        vnpu_guest_error(e, "SGL element %u invalid (addr 0x%llx len %u rsvd %u)", w->next - w->filled + w->pos - 1,
                         (unsigned long long)sge->addr, sge->len, sge->rsvd);
        return VNPU_CPL_SGL_INVALID;
    }
    return VNPU_CPL_OK;
}

static void sgl_rewind(SglWalk *w)
{
    w->next = w->filled = w->pos = 0;
}

/* Pass 1: every element valid and the list covers sgl_offset + length. */
static uint16_t sgl_validate(SglWalk *w)
{
    uint64_t total = 0; /* <= 2^20 elements * (2^32 - 1) bytes: cannot overflow */
    struct vnpu_hw_sge sge;

    for (uint32_t i = 0; i < w->d->sgl_count; i++) {
        uint16_t st = sgl_next(w, &sge);

        if (st != VNPU_CPL_OK) {
            return st;
        }
        total += sge.len;
    }
    if (total < w->d->sgl_offset + w->d->length) {
        vnpu_guest_error(w->x->e, "SGL covers %llu bytes, command needs offset %llu + length %llu",
                         (unsigned long long)total, (unsigned long long)w->d->sgl_offset,
                         (unsigned long long)w->d->length);
        return VNPU_CPL_SGL_INVALID;
    }
    return VNPU_CPL_OK;
}

static uint16_t move(const VnpuExec *x, uint64_t host_addr, uint64_t dev_va, uint64_t len, bool to_device,
                     VnpuCmdResult *r)
{
    VnpuEngine *e = x->e;

    while (len) {
        size_t n = len > XFER_CHUNK ? XFER_CHUNK : (size_t)len;
        uint64_t pa, run;
        uint8_t *dev;
        int rc;

        if (vnpu_exec_cancelled(x)) {
            return VNPU_CPL_ABORTED;
        }
        /* Checked before the transfer; a driver that changed the tables meanwhile still gets a clean fault. */
        if (!vnpu_mmu_translate(x, dev_va, n, to_device, &pa, &run, &r->fault_addr)) {
            return VNPU_CPL_MMU_FAULT;
        }
        n = (size_t)run;
        dev = e->devmem + pa;
        rc = vnpu_host_dma(e, x->j->epoch, host_addr, dev, n, !to_device);
        if (rc) {
            vnpu_guest_error(e, "%s DMA at host 0x%llx (%zu bytes) failed", to_device ? "H2D" : "D2H",
                             (unsigned long long)host_addr, n);
            return VNPU_CPL_DMA_FAULT;
        }
        host_addr += n;
        dev_va += n;
        len -= n;
    }
    return VNPU_CPL_OK;
}

/* Pass 2: skip sgl_offset bytes of the list, then move length bytes. */
static uint16_t sgl_transfer(SglWalk *w, bool to_device, VnpuCmdResult *r)
{
    uint64_t skip = w->d->sgl_offset, left = w->d->length;
    uint64_t dev = w->d->dev_addr;
    struct vnpu_hw_sge sge;

    for (uint32_t i = 0; i < w->d->sgl_count && left; i++) {
        uint16_t st = sgl_next(w, &sge);
        uint64_t n;

        if (st != VNPU_CPL_OK) {
            return st;
        }
        if (skip >= sge.len) {
            skip -= sge.len;
            continue;
        }
        n = sge.len - skip;
        if (n > left) {
            n = left;
        }
        st = move(w->x, sge.addr + skip, dev, n, to_device, r);
        if (st != VNPU_CPL_OK) {
            return st;
        }
        skip = 0;
        dev += n;
        left -= n;
    }
    if (left) {
        /* The list changed under us between the passes. */
        vnpu_guest_error(w->x->e, "SGL shrank during the transfer");
        return VNPU_CPL_SGL_INVALID;
    }
    return VNPU_CPL_OK;
}

void vnpu_dma_execute(const VnpuExec *x, const struct vnpu_hw_dma *d, bool to_device, VnpuCmdResult *r)
{
    SglWalk w = { .x = x, .d = d };
    uint16_t st;

    if (d->rsvd0 || d->rsvd1[0] || !d->length) {
        r->status = VNPU_CPL_BAD_FIELD;
        return;
    }
    if (!d->sgl_count || d->sgl_count > VNPU_SGL_MAX || d->sgl_addr % sizeof(struct vnpu_hw_sge) ||
        d->sgl_addr > UINT64_MAX - ((uint64_t)d->sgl_count * sizeof(struct vnpu_hw_sge) - 1) ||
        d->sgl_offset > UINT64_MAX - d->length) {
        r->status = VNPU_CPL_SGL_INVALID;
        return;
    }
    st = sgl_validate(&w);
    /* Every device page must be mapped (and writable for H2D) before a byte moves. */
    if (st == VNPU_CPL_OK && !vnpu_mmu_check(x, d->dev_addr, d->length, to_device, &r->fault_addr)) {
        vnpu_guest_error(x->e, "%s: device address 0x%llx not mapped%s in context %u", to_device ? "H2D" : "D2H",
                         (unsigned long long)r->fault_addr, to_device ? " writable" : "", x->j->ctx_id);
        st = VNPU_CPL_MMU_FAULT;
    }
    if (st == VNPU_CPL_OK) {
        sgl_rewind(&w);
        st = sgl_transfer(&w, to_device, r);
    }
    r->status = st;
    r->bytes = st == VNPU_CPL_OK ? d->length : 0;
}
