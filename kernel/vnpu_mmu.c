// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: device contexts and the device MMU.
 *
 * Every file gets one context: an id in the device's context table and a
 * three-level page table in coherent DMA memory that maps the file's device
 * virtual addresses to device-physical 64 KiB pages. Tables are allocated on
 * first use and kept until the context goes away (a context's tables are
 * bounded by the device memory it can map). After every change the driver
 * writes the context id to MMU_INVALIDATE so jobs fetched afterwards see it.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include <drm/drm_drv.h>
#include <drm/drm_managed.h>
#include <drm/drm_print.h>

#include "vnpu_drv.h"

#define VNPU_PT_BYTES (VNPU_MMU_TABLE_ENTRIES * sizeof(__le64))

static int vnpu_pt_alloc(struct vnpu_device *vdev, struct vnpu_pt *pt,
			 bool dir)
{
	pt->cpu = dma_alloc_coherent(vdev->drm.dev, VNPU_PT_BYTES, &pt->dma,
				     GFP_KERNEL);
	if (!pt->cpu)
		return -ENOMEM;
	pt->next = NULL;
	if (dir) {
		pt->next = kcalloc(VNPU_MMU_TABLE_ENTRIES, sizeof(*pt->next),
				   GFP_KERNEL);
		if (!pt->next) {
			dma_free_coherent(vdev->drm.dev, VNPU_PT_BYTES,
					  pt->cpu, pt->dma);
			return -ENOMEM;
		}
	}
	return 0;
}

static void vnpu_pt_free(struct vnpu_device *vdev, struct vnpu_pt *pt)
{
	unsigned int i;

	if (pt->next) {
		for (i = 0; i < VNPU_MMU_TABLE_ENTRIES; i++) {
			if (!pt->next[i])
				continue;
			vnpu_pt_free(vdev, pt->next[i]);
			kfree(pt->next[i]);
		}
		kfree(pt->next);
	}
	dma_free_coherent(vdev->drm.dev, VNPU_PT_BYTES, pt->cpu, pt->dma);
}

/* The table an entry of @dir points to, allocated if absent. ctx->lock held. */
static struct vnpu_pt *vnpu_pt_child(struct vnpu_ctx *ctx, struct vnpu_pt *dir,
				     unsigned int idx, bool leaf)
{
	struct vnpu_pt *pt = dir->next[idx];

	if (pt)
		return pt;
	pt = kzalloc(sizeof(*pt), GFP_KERNEL);
	if (!pt)
		return NULL;
	if (vnpu_pt_alloc(ctx->vdev, pt, !leaf)) {
		kfree(pt);
		return NULL;
	}
	dir->next[idx] = pt;
	dir->cpu[idx] = cpu_to_le64((pt->dma & VNPU_PTE_ADDR_MASK) |
				    VNPU_PTE_VALID);
	return pt;
}

/* ctx_lock held; a removed device has no registers left to write. */
static void vnpu_mmu_invalidate_locked(struct vnpu_device *vdev, u32 id)
{
	int idx;

	lockdep_assert_held(&vdev->ctx_lock);
	if (!drm_dev_enter(&vdev->drm, &idx))
		return;
	/* writel() orders the table updates before the invalidation. */
	vnpu_wr(vdev, VNPU_REG_MMU_INVALIDATE, id);
	drm_dev_exit(idx);
}

static void vnpu_mmu_invalidate(struct vnpu_device *vdev, u32 id)
{
	mutex_lock(&vdev->ctx_lock);
	vnpu_mmu_invalidate_locked(vdev, id);
	mutex_unlock(&vdev->ctx_lock);
}

/**
 * vnpu_ctx_map - map [@va, @va + @size) to device-physical [@pa, ...)
 * @ctx: context
 * @va: device virtual address, page aligned
 * @pa: device-physical address, page aligned
 * @size: bytes, page aligned
 *
 * Return: 0, or -ENOMEM with nothing mapped.
 */
int vnpu_ctx_map(struct vnpu_ctx *ctx, u64 va, u64 pa, u64 size)
{
	struct vnpu_pt *l2, *l3;
	u64 off;

	mutex_lock(&ctx->lock);
	if (!ctx->root.cpu) {
		/* The device is gone (vnpu_mmu_unplug). */
		mutex_unlock(&ctx->lock);
		return -ENODEV;
	}
	for (off = 0; off < size; off += VNPU_MMU_PAGE_SIZE) {
		u64 v = va + off;

		l2 = vnpu_pt_child(ctx, &ctx->root, VNPU_MMU_INDEX(v, 1),
				   false);
		l3 = l2 ? vnpu_pt_child(ctx, l2, VNPU_MMU_INDEX(v, 2), true) :
			  NULL;
		if (!l3) {
			mutex_unlock(&ctx->lock);
			vnpu_ctx_unmap(ctx, va, off);
			return -ENOMEM;
		}
		l3->cpu[VNPU_MMU_INDEX(v, 3)] =
			cpu_to_le64(((pa + off) & VNPU_PTE_ADDR_MASK) |
				    VNPU_PTE_VALID | VNPU_PTE_WRITE);
	}
	mutex_unlock(&ctx->lock);
	/* The device may have cached the absence of these pages. */
	vnpu_mmu_invalidate(ctx->vdev, ctx->id);
	return 0;
}

/**
 * vnpu_ctx_unmap - remove the mapping of [@va, @va + @size) and invalidate
 * @ctx: context
 * @va: device virtual address, page aligned
 * @size: bytes, page aligned
 */
void vnpu_ctx_unmap(struct vnpu_ctx *ctx, u64 va, u64 size)
{
	struct vnpu_pt *l2, *l3;
	u64 off;

	mutex_lock(&ctx->lock);
	for (off = 0; ctx->root.next && off < size;
	     off += VNPU_MMU_PAGE_SIZE) {
		u64 v = va + off;

		l2 = ctx->root.next[VNPU_MMU_INDEX(v, 1)];
		l3 = l2 ? l2->next[VNPU_MMU_INDEX(v, 2)] : NULL;
		if (l3)
			l3->cpu[VNPU_MMU_INDEX(v, 3)] = 0;
	}
	mutex_unlock(&ctx->lock);
	vnpu_mmu_invalidate(ctx->vdev, ctx->id);
}

/**
 * vnpu_ctx_create - allocate a context id, an empty page table and a valid
 * context table entry
 * @vdev: device
 *
 * Return: the context (one reference), or ERR_PTR(-ENOSPC) when every
 * context id is taken, or another errno.
 */
struct vnpu_ctx *vnpu_ctx_create(struct vnpu_device *vdev)
{
	struct vnpu_ctx *ctx;
	int id, ret;

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return ERR_PTR(-ENOMEM);

	/* Id 0 is never valid, so a zeroed command cannot reach memory. */
	id = ida_alloc_range(&vdev->ctx_ida, 1, vdev->num_contexts - 1,
			     GFP_KERNEL);
	if (id < 0) {
		ret = id == -ENOSPC ? -ENOSPC : id;
		goto err_free;
	}

	ret = vnpu_pt_alloc(vdev, &ctx->root, true);
	if (ret)
		goto err_ida;

	kref_init(&ctx->ref);
	ctx->vdev = vdev;
	ctx->id = id;
	mutex_init(&ctx->lock);
	INIT_LIST_HEAD(&ctx->zombies);
	drm_mm_init(&ctx->va, VNPU_VA_BASE,
		    (1ull << VNPU_MMU_VA_BITS) - VNPU_VA_BASE);

	mutex_lock(&vdev->ctx_lock);
	vdev->ctx_table[id].pt_root = vnpu_hw64(ctx->root.dma);
	vdev->ctx_table[id].rsvd = 0;
	/* The root must be visible before the entry turns valid. */
	dma_wmb();
	vdev->ctx_table[id].flags = vnpu_hw32(VNPU_CTX_F_VALID);
	vnpu_mmu_invalidate_locked(vdev, id);
	list_add_tail(&ctx->link, &vdev->ctx_list);
	mutex_unlock(&vdev->ctx_lock);

	atomic_inc(&vdev->contexts);
	drm_dev_get(&vdev->drm);
	return ctx;

err_ida:
	ida_free(&vdev->ctx_ida, id);
err_free:
	kfree(ctx);
	return ERR_PTR(ret);
}

static void vnpu_ctx_free_zombies(struct vnpu_ctx *ctx)
{
	struct vnpu_mem *mem, *tmp;

	lockdep_assert_held(&ctx->lock);
	list_for_each_entry_safe(mem, tmp, &ctx->zombies, zombie) {
		list_del(&mem->zombie);
		vnpu_mem_release_phys(mem);
	}
}

static void vnpu_ctx_release(struct kref *ref)
{
	struct vnpu_ctx *ctx = container_of(ref, struct vnpu_ctx, ref);
	struct vnpu_device *vdev = ctx->vdev;

	/* No job and no device memory object is left: nothing can fetch. */
	mutex_lock(&vdev->ctx_lock);
	list_del(&ctx->link);
	if (vdev->ctx_table) {
		vdev->ctx_table[ctx->id].flags = 0;
		vdev->ctx_table[ctx->id].pt_root = 0;
		vnpu_mmu_invalidate_locked(vdev, ctx->id);
	}
	mutex_unlock(&vdev->ctx_lock);

	mutex_lock(&ctx->lock);
	vnpu_ctx_free_zombies(ctx);
	mutex_unlock(&ctx->lock);

	if (ctx->root.cpu)
		vnpu_pt_free(vdev, &ctx->root);
	drm_mm_takedown(&ctx->va);
	mutex_destroy(&ctx->lock);
	ida_free(&vdev->ctx_ida, ctx->id);
	atomic_dec(&vdev->contexts);
	kfree(ctx);
	drm_dev_put(&vdev->drm);
}

/**
 * vnpu_ctx_put - drop a context reference; process context
 * @ctx: context
 */
void vnpu_ctx_put(struct vnpu_ctx *ctx)
{
	kref_put(&ctx->ref, vnpu_ctx_release);
}

/**
 * vnpu_ctx_job_done - a job of @ctx completed; once none is left, release
 * the device-physical memory of freed objects
 * @ctx: context
 */
void vnpu_ctx_job_done(struct vnpu_ctx *ctx)
{
	if (!atomic_dec_and_test(&ctx->inflight))
		return;
	mutex_lock(&ctx->lock);
	if (!atomic_read(&ctx->inflight))
		vnpu_ctx_free_zombies(ctx);
	mutex_unlock(&ctx->lock);
}

/**
 * vnpu_mem_retire - called when a device memory object is freed: unmap it
 * and release its device-physical pages once no job of the context that may
 * have cached the translation is left
 * @mem: the object (kept allocated until its pages are released)
 */
void vnpu_mem_retire(struct vnpu_mem *mem)
{
	struct vnpu_ctx *ctx = mem->ctx;

	vnpu_ctx_unmap(ctx, mem->va.start, mem->va.size);
	atomic64_sub(mem->va.size, &ctx->devmem_bytes);
	mutex_lock(&ctx->lock);
	drm_mm_remove_node(&mem->va);
	list_add_tail(&mem->zombie, &ctx->zombies);
	if (!atomic_read(&ctx->inflight))
		vnpu_ctx_free_zombies(ctx);
	mutex_unlock(&ctx->lock);
}

static void vnpu_mmu_fini(struct drm_device *drm, void *arg)
{
	struct vnpu_device *vdev = arg;

	/* Runs at the last drm_device reference: every context is gone. */
	if (vdev->ctx_table)
		dma_free_coherent(drm->dev, vdev->ctx_table_bytes,
				  vdev->ctx_table, vdev->ctx_table_dma);
	ida_destroy(&vdev->ctx_ida);
}

/**
 * vnpu_mmu_unplug - free the DMA memory of the context table and of every
 * live context's page tables when the device goes away
 * @vdev: device, reset, with no job left
 *
 * Files may outlive the device (their contexts with them); their DMA memory
 * must not (it belongs to the device: the DMA API reports it as leaked
 * when the driver unbinds). Contexts keep working as empty shells: map
 * fails with -ENODEV, unmap does nothing.
 */
void vnpu_mmu_unplug(struct vnpu_device *vdev)
{
	struct vnpu_ctx *ctx;

	mutex_lock(&vdev->ctx_lock);
	list_for_each_entry(ctx, &vdev->ctx_list, link) {
		mutex_lock(&ctx->lock);
		if (ctx->root.cpu)
			vnpu_pt_free(vdev, &ctx->root);
		ctx->root.cpu = NULL;
		ctx->root.next = NULL;
		mutex_unlock(&ctx->lock);
	}
	dma_free_coherent(vdev->drm.dev, vdev->ctx_table_bytes,
			  vdev->ctx_table, vdev->ctx_table_dma);
	vdev->ctx_table = NULL;
	vdev->unplugged = true;
	mutex_unlock(&vdev->ctx_lock);
}

/**
 * vnpu_mmu_init - allocate the context table
 * @vdev: device
 *
 * Return: 0 or negative errno.
 */
int vnpu_mmu_init(struct vnpu_device *vdev)
{
	struct device *dev = vdev->drm.dev;
	int ret;

	ida_init(&vdev->ctx_ida);
	ret = drmm_mutex_init(&vdev->drm, &vdev->ctx_lock);
	if (ret)
		return ret;
	atomic_set(&vdev->contexts, 0);
	/*
	 * Page aligned (hence 4 KiB aligned), zeroed: every entry invalid.
	 * Freed with the drm_device, as contexts may outlive the PCI binding.
	 */
	vdev->ctx_table_bytes = PAGE_ALIGN(vdev->num_contexts *
					   sizeof(*vdev->ctx_table));
	vdev->ctx_table = dma_alloc_coherent(dev, vdev->ctx_table_bytes,
					     &vdev->ctx_table_dma, GFP_KERNEL);
	if (!vdev->ctx_table) {
		ida_destroy(&vdev->ctx_ida);
		return -ENOMEM;
	}
	vnpu_mmu_hw_init(vdev);
	return drmm_add_action_or_reset(&vdev->drm, vnpu_mmu_fini, vdev);
}

/**
 * vnpu_mmu_hw_init - point the device at the context table
 * @vdev: device
 */
void vnpu_mmu_hw_init(struct vnpu_device *vdev)
{
	/* Writing HI latches the 64-bit base. */
	vnpu_wr(vdev, VNPU_REG_CTX_TABLE_LO, lower_32_bits(vdev->ctx_table_dma));
	vnpu_wr(vdev, VNPU_REG_CTX_TABLE_HI, upper_32_bits(vdev->ctx_table_dma));
	vnpu_wr(vdev, VNPU_REG_MMU_INVALIDATE, 0xffffffff);
}
