/* SPDX-License-Identifier: MIT */
/*
 * vnpu engine: device MMU. Every device address of a job is a virtual address of the job's context, translated
 * through the context's three-level page table in host memory (layout in vnpu_hw.h). Context-table entries and
 * leaf entries are cached per context until the driver writes MMU_INVALIDATE; the caches live under mmu_lock,
 * which is never held while host memory is read (page-table walks read it unlocked and insert afterwards, only
 * if no invalidation happened meanwhile).
 */
#include <stdlib.h>
#include <string.h>

#include "vnpu_engine_int.h"

#define PAGE VNPU_MMU_PAGE_SIZE
#define VA_LIMIT (1ull << VNPU_MMU_VA_BITS)

int vnpu_mmu_init(VnpuEngine *e)
{
    e->ctx = calloc(e->cfg.num_contexts, sizeof(*e->ctx));
    e->ctx_mapped = calloc(e->cfg.num_contexts, sizeof(*e->ctx_mapped));
    e->ctx_recount = calloc(e->cfg.num_contexts, sizeof(*e->ctx_recount));
    if (!e->ctx || !e->ctx_mapped || !e->ctx_recount || pthread_mutex_init(&e->mmu_lock, NULL)) {
        free(e->ctx);
        free(e->ctx_mapped);
        free(e->ctx_recount);
        return -1;
    }
    return 0;
}

void vnpu_mmu_fini(VnpuEngine *e)
{
    pthread_mutex_destroy(&e->mmu_lock);
    free(e->ctx);
    free(e->ctx_mapped);
    free(e->ctx_recount);
}

void vnpu_mmu_flush(VnpuEngine *e, uint32_t ctx)
{
    pthread_mutex_lock(&e->mmu_lock);
    e->ctx_table_mmu = e->ctx_table;
    for (uint32_t i = 0; i < e->cfg.num_contexts; i++) {
        if (ctx == UINT32_MAX || ctx == i) {
            VnpuCtxCache *c = &e->ctx[i];

            c->entry_valid = false;
            c->gen++;
            memset(c->tlb, 0, sizeof(c->tlb));
            e->ctx_recount[i] = true;
            e->recount_pending = true;
        }
    }
    pthread_mutex_unlock(&e->mmu_lock);
}

void vnpu_mmu_note_fault(VnpuEngine *e, uint16_t ctx, uint64_t va)
{
    e->mmu_faults++;
    e->stats.mmu_faults++;
    e->last_fault = va;
    e->last_fault_ctx = ctx;
}

static bool read_u64(VnpuEngine *e, uint32_t epoch, uint64_t addr, uint64_t *v)
{
    return vnpu_host_dma(e, epoch, addr, v, sizeof(*v), false) == 0;
}

bool vnpu_mmu_ctx(VnpuEngine *e, uint32_t epoch, uint16_t ctx_id, uint64_t *pt_root, uint32_t *gen_out)
{
    VnpuCtxCache *c = &e->ctx[ctx_id];
    struct vnpu_hw_ctx ent;
    uint64_t table;
    uint32_t gen;

    pthread_mutex_lock(&e->mmu_lock);
    gen = c->gen;
    if (gen_out) {
        *gen_out = gen;
    }
    if (c->entry_valid) {
        ent = c->entry;
        pthread_mutex_unlock(&e->mmu_lock);
        goto check;
    }
    table = e->ctx_table_mmu;
    pthread_mutex_unlock(&e->mmu_lock);

    if (!table || vnpu_host_dma(e, epoch, table + (uint64_t)ctx_id * sizeof(ent), &ent, sizeof(ent), false)) {
        return false; /* no table, or unreadable: not cached, the next job retries */
    }
    pthread_mutex_lock(&e->mmu_lock);
    if (c->gen == gen) {
        c->entry = ent;
        c->entry_valid = true;
    }
    pthread_mutex_unlock(&e->mmu_lock);
check:
    /* Reserved flags, rsvd and low root bits must be zero: anything else is an invalid context. */
    if (ent.flags != VNPU_CTX_F_VALID || ent.rsvd || ent.pt_root % 4096) {
        return false;
    }
    *pt_root = ent.pt_root;
    return true;
}

/* Leaf entry of va, or false on any fault. */
static bool leaf(const VnpuExec *x, uint64_t va, bool write, uint64_t *pte_out)
{
    VnpuEngine *e = x->e;
    VnpuCtxCache *c = &e->ctx[x->j->ctx_id];
    uint64_t vpn = va >> VNPU_MMU_PAGE_SHIFT;
    VnpuTlbEntry *t = &c->tlb[vpn % VNPU_TLB_ENTRIES];
    uint64_t root = x->j->pt_root, table = root, pte = 0;
    uint32_t gen = x->j->ctx_gen;

    if (va >= VA_LIMIT) {
        return false;
    }
    pthread_mutex_lock(&e->mmu_lock);
    if (t->vpn1 == vpn + 1 && t->root == root && t->gen == gen) {
        pte = t->pte;
        pthread_mutex_unlock(&e->mmu_lock);
        goto check;
    }
    pthread_mutex_unlock(&e->mmu_lock);

    for (int level = 1; level <= VNPU_MMU_LEVELS; level++) {
        if (!read_u64(e, x->j->epoch, table + VNPU_MMU_INDEX(va, level) * 8, &pte) || !(pte & VNPU_PTE_VALID) ||
            (level < VNPU_MMU_LEVELS && (pte & VNPU_PTE_TABLE_RSVD_MASK))) {
            return false;
        }
        table = pte & VNPU_PTE_ADDR_MASK;
    }
    pthread_mutex_lock(&e->mmu_lock);
    /* Only a job fetched since the last invalidation may fill the cache (see VnpuTlbEntry). */
    if (c->gen == gen) {
        t->vpn1 = vpn + 1;
        t->pte = pte;
        t->root = root;
        t->gen = gen;
    }
    pthread_mutex_unlock(&e->mmu_lock);
check:
    if (!(pte & VNPU_PTE_VALID) || (pte & VNPU_PTE_LEAF_RSVD_MASK) || (write && !(pte & VNPU_PTE_WRITE))) {
        return false;
    }
    pte &= VNPU_PTE_ADDR_MASK;
    if (pte % PAGE || !vnpu_devmem_range_ok(e, pte, PAGE)) {
        return false;
    }
    *pte_out = pte;
    return true;
}

bool vnpu_mmu_translate(const VnpuExec *x, uint64_t va, uint64_t len, bool write, uint64_t *pa, uint64_t *run,
                        uint64_t *fault)
{
    uint64_t page, first, got;

    if (!x->j->ctx_ok || !leaf(x, va, write, &page)) {
        *fault = va;
        return false;
    }
    first = page + (va & (PAGE - 1));
    got = PAGE - (va & (PAGE - 1));
    /* Extend the run while the next virtual page maps to the next physical page. */
    while (got < len) {
        uint64_t next;

        if (va + got < va || !leaf(x, va + got, write, &next) || next != first + got) {
            break;
        }
        got += PAGE;
    }
    *pa = first;
    *run = got < len ? got : len;
    return true;
}

bool vnpu_mmu_check(const VnpuExec *x, uint64_t va, uint64_t len, bool write, uint64_t *fault)
{
    uint64_t pa, run;

    if (len && va > UINT64_MAX - (len - 1)) {
        *fault = va;
        return false;
    }
    while (len) {
        /*
         * A transfer may span 2^24 pages, each a table walk: a disable, reset or unplug stops it at the next
         * page (the job is then reported ABORTED, not faulted).
         */
        if (vnpu_exec_cancelled(x)) {
            *fault = va;
            return false;
        }
        if (!vnpu_mmu_translate(x, va, len, write, &pa, &run, fault)) {
            return false;
        }
        va += run;
        len -= run;
    }
    return true;
}

bool vnpu_mmu_copy(const VnpuExec *x, uint64_t va, void *buf, uint64_t len, bool to_device, uint64_t *fault)
{
    uint8_t *b = buf;
    uint64_t pa, run;

    while (len) {
        if (vnpu_exec_cancelled(x)) {
            *fault = va;
            return false;
        }
        if (!vnpu_mmu_translate(x, va, len, to_device, &pa, &run, fault)) {
            return false;
        }
        if (to_device) {
            memcpy(x->e->devmem + pa, b, run);
        } else {
            memcpy(b, x->e->devmem + pa, run);
        }
        va += run;
        b += run;
        len -= run;
    }
    return true;
}

/* Bytes mapped by valid leaf entries pointing into device memory (telemetry; unreadable tables count 0). */
uint64_t vnpu_mmu_count_mapped(VnpuEngine *e, uint32_t epoch, uint64_t pt_root)
{
    uint64_t *l1 = malloc(3 * 4096), *l2 = l1 + 512, *l3 = l2 + 512;
    uint64_t total = 0;

    if (!l1) {
        return 0;
    }
    if (vnpu_host_dma(e, epoch, pt_root, l1, 4096, false)) {
        goto out;
    }
    for (unsigned i = 0; i < 512; i++) {
        if (!(l1[i] & VNPU_PTE_VALID) || (l1[i] & VNPU_PTE_TABLE_RSVD_MASK) ||
            vnpu_host_dma(e, epoch, l1[i] & VNPU_PTE_ADDR_MASK, l2, 4096, false)) {
            continue;
        }
        for (unsigned k = 0; k < 512; k++) {
            if (!(l2[k] & VNPU_PTE_VALID) || (l2[k] & VNPU_PTE_TABLE_RSVD_MASK) ||
                vnpu_host_dma(e, epoch, l2[k] & VNPU_PTE_ADDR_MASK, l3, 4096, false)) {
                continue;
            }
            for (unsigned m = 0; m < 512; m++) {
                uint64_t pa = l3[m] & VNPU_PTE_ADDR_MASK;

                if ((l3[m] & VNPU_PTE_VALID) && !(l3[m] & VNPU_PTE_LEAF_RSVD_MASK) && vnpu_devmem_range_ok(e, pa, PAGE)) {
                    total += PAGE;
                }
            }
        }
    }
out:
    free(l1);
    return total;
}
