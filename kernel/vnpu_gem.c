// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: buffer objects.
 *
 * Host BOs are GEM shmem objects whose pages are pinned and DMA-mapped at
 * creation; each carries a scatter-gather list in coherent DMA memory that
 * DMA commands point the device at, so user space never supplies an address.
 *
 * Device memory objects are GEM objects without CPU pages. Each owns a range
 * of device-physical memory (a global drm_mm in 64 KiB granules) mapped at a
 * device virtual address of the creating file's context. They cannot be
 * mapped by the CPU or exported. When the last reference goes (the handle
 * and every job using it), the range is unmapped and invalidated; the
 * physical pages are reused only once the context has no job in flight.
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>

#include <drm/drm_drv.h>
#include <drm/drm_managed.h>
#include <drm/drm_print.h>
#include <drm/drm_vma_manager.h>

#include "vnpu_drv.h"

/*
 * Charge @npages pinned pages to @user against RLIMIT_MEMLOCK, as io_uring
 * does for registered buffers. Return: 0 or -ENOMEM.
 */
static int vnpu_charge_locked(struct user_struct *user, unsigned long npages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	unsigned long cur = atomic_long_read(&user->locked_vm);

	do {
		if (npages > limit || cur > limit - npages)
			return -ENOMEM;
	} while (!atomic_long_try_cmpxchg(&user->locked_vm, &cur,
					  cur + npages));
	return 0;
}

static void vnpu_uncharge_locked(struct user_struct *user,
				 unsigned long npages)
{
	atomic_long_sub(npages, &user->locked_vm);
	free_uid(user);
}

static void vnpu_bo_free(struct drm_gem_object *obj)
{
	struct vnpu_bo *bo = container_of(obj, struct vnpu_bo, base.base);

	if (bo->user)
		vnpu_uncharge_locked(bo->user, bo->locked_pages);

	if (!list_empty(&bo->link)) {
		struct vnpu_device *vdev = to_vnpu_device(obj->dev);

		mutex_lock(&vdev->bo_lock);
		list_del_init(&bo->link);
		mutex_unlock(&vdev->bo_lock);
	}
	if (bo->sgl)
		dma_free_coherent(obj->dev->dev,
				  bo->sgl_count * sizeof(*bo->sgl),
				  bo->sgl, bo->sgl_dma);
	/* Unmaps and releases the pages, then frees bo (base is first). */
	drm_gem_shmem_free(&bo->base);
}

static const struct drm_gem_object_funcs vnpu_bo_funcs = {
	.free = vnpu_bo_free,
	.print_info = drm_gem_shmem_object_print_info,
	.pin = drm_gem_shmem_object_pin,
	.unpin = drm_gem_shmem_object_unpin,
	.get_sg_table = drm_gem_shmem_object_get_sg_table,
	.vmap = drm_gem_shmem_object_vmap,
	.vunmap = drm_gem_shmem_object_vunmap,
	.mmap = drm_gem_shmem_object_mmap,
	.vm_ops = &drm_gem_shmem_vm_ops,
};

/**
 * vnpu_mem_release_phys - return the device-physical range and free @mem
 * @mem: a device memory object already unmapped and released as GEM object
 */
void vnpu_mem_release_phys(struct vnpu_mem *mem)
{
	struct vnpu_device *vdev = mem->ctx->vdev;

	mutex_lock(&vdev->mm_lock);
	vdev->devmem_used -= mem->phys.size;
	drm_mm_remove_node(&mem->phys);
	mutex_unlock(&vdev->mm_lock);
	/* The context reference stays with the zombie list's owner. */
	kfree(mem);
}

static void vnpu_mem_free(struct drm_gem_object *obj)
{
	struct vnpu_mem *mem = container_of(obj, struct vnpu_mem, base);
	struct vnpu_ctx *ctx = mem->ctx;

	drm_gem_object_release(obj);
	if (!ctx) {
		kfree(mem);
		return;
	}
	/* Unmaps; frees mem now or when the context's jobs drained. */
	vnpu_mem_retire(mem);
	vnpu_ctx_put(ctx);
}

static struct dma_buf *vnpu_mem_export(struct drm_gem_object *obj, int flags)
{
	/* Device memory has no pages a dma-buf importer could reach. */
	return ERR_PTR(-EOPNOTSUPP);
}

static const struct drm_gem_object_funcs vnpu_mem_funcs = {
	.free = vnpu_mem_free,
	.export = vnpu_mem_export,
};

struct vnpu_bo *vnpu_bo_from_gem(struct drm_gem_object *obj)
{
	if (obj->funcs != &vnpu_bo_funcs)
		return NULL;
	return container_of(obj, struct vnpu_bo, base.base);
}

struct vnpu_mem *vnpu_mem_from_gem(struct drm_gem_object *obj)
{
	if (obj->funcs != &vnpu_mem_funcs)
		return NULL;
	return container_of(obj, struct vnpu_mem, base);
}

struct drm_gem_object *vnpu_gem_create_object(struct drm_device *drm,
					      size_t size)
{
	struct vnpu_bo *bo;

	bo = kzalloc(sizeof(*bo), GFP_KERNEL_ACCOUNT);
	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &vnpu_bo_funcs;
	INIT_LIST_HEAD(&bo->link);
	return &bo->base.base;
}

/* Pin and map the pages and describe them to the device. */
static int vnpu_bo_build_sgl(struct vnpu_bo *bo)
{
	struct device *dev = bo->base.base.dev->dev;
	struct scatterlist *sg;
	struct sg_table *sgt;
	unsigned int i;

	sgt = drm_gem_shmem_get_pages_sgt(&bo->base);
	if (IS_ERR(sgt))
		return PTR_ERR(sgt);
	if (!sgt->nents || sgt->nents > VNPU_SGL_MAX)
		return -E2BIG;

	bo->sgl = dma_alloc_coherent(dev, sgt->nents * sizeof(*bo->sgl),
				     &bo->sgl_dma, GFP_KERNEL);
	if (!bo->sgl)
		return -ENOMEM;
	bo->sgl_count = sgt->nents;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		bo->sgl[i].addr = vnpu_hw64(sg_dma_address(sg));
		bo->sgl[i].len = vnpu_hw32(sg_dma_len(sg));
		bo->sgl[i].rsvd = 0;
	}
	return 0;
}

/**
 * vnpu_sgt_sync - pass bytes [@off, @off + @len) of a host object's
 * streaming mapping to the device (before a transfer) or back to the CPU
 * (after one)
 * @dev: the device it is mapped for
 * @sgt: the mapping (a host BO's shmem table, a USERPTR object's table)
 * @off: byte offset
 * @len: bytes
 * @for_device: true before the device accesses the range, false after
 * @dir: DMA_TO_DEVICE (the device reads) or DMA_FROM_DEVICE (it writes)
 *
 * Only the range is synced: other jobs may use other parts of the BO, and
 * with bounce buffers (swiotlb) a whole-BO sync for the CPU would overwrite
 * them (and the job reports the driver writes) with stale bounce contents.
 */
void vnpu_sgt_sync(struct device *dev, struct sg_table *sgt, u64 off, u64 len,
		   bool for_device, enum dma_data_direction dir)
{
	struct scatterlist *sg;
	u64 pos = 0, end = off + len;
	unsigned int i;

	if (!sgt || !sgt->sgl)
		return;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		u64 seg = sg_dma_len(sg);

		/*
		 * Only where the DMA layer has work to do (bounce buffers,
		 * non-coherent caches). Elsewhere the sync is a no-op, and
		 * DMA-API debugging cannot tell which of two mappings of a
		 * page (the same user memory imported twice) a range sync
		 * means: it reports memory "not allocated".
		 */
		if (pos + seg > off && dma_need_sync(dev, sg_dma_address(sg))) {
			u64 s = max(off, pos) - pos;
			u64 n = min(end, pos + seg) - pos - s;

			if (for_device)
				dma_sync_single_range_for_device(dev,
								 sg_dma_address(sg),
								 s, n, dir);
			else
				dma_sync_single_range_for_cpu(dev,
							      sg_dma_address(sg),
							      s, n, dir);
		}
		pos += seg;
		if (pos >= end)
			break;
	}
}

/**
 * vnpu_bo_unplug_all - unmap every host BO from the device that goes away
 * @vdev: device, reset, with no job left
 *
 * BOs may outlive the device (handles, mmaps, dma-bufs); their streaming
 * mappings and SG lists belong to the device and must not. The pages stay
 * (the CPU mapping keeps working) and are released with the BO.
 */
void vnpu_bo_unplug_all(struct vnpu_device *vdev)
{
	struct device *dev = vdev->drm.dev;
	struct vnpu_bo *bo, *tmp;

	mutex_lock(&vdev->bo_lock);
	list_for_each_entry_safe(bo, tmp, &vdev->bo_list, link) {
		struct drm_gem_shmem_object *shmem = &bo->base;

		dma_resv_lock(shmem->base.resv, NULL);
		if (shmem->sgt) {
			dma_unmap_sgtable(dev, shmem->sgt, DMA_BIDIRECTIONAL, 0);
			sg_free_table(shmem->sgt);
			kfree(shmem->sgt);
			shmem->sgt = NULL;
		}
		dma_resv_unlock(shmem->base.resv);
		dma_free_coherent(dev, bo->sgl_count * sizeof(*bo->sgl),
				  bo->sgl, bo->sgl_dma);
		bo->sgl = NULL;
		list_del_init(&bo->link);
	}
	mutex_unlock(&vdev->bo_lock);
}

int vnpu_bo_create_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file)
{
	struct drm_vnpu_bo_create *args = data;
	struct drm_gem_shmem_object *shmem;
	struct user_struct *user = NULL;
	struct drm_gem_object *obj;
	unsigned long npages;
	struct vnpu_bo *bo;
	u32 handle;
	int idx, ret;

	if (args->flags & ~DRM_VNPU_BO_WC) {
		drm_dbg(drm, "bo_create: unknown flags 0x%x\n", args->flags);
		return -EINVAL;
	}
	if (args->pad || args->pad2) {
		drm_dbg(drm, "bo_create: pad not zero\n");
		return -EINVAL;
	}
	if (!args->size || args->size > VNPU_BO_SIZE_MAX) {
		drm_dbg(drm, "bo_create: bad size %llu\n", args->size);
		return -EINVAL;
	}
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	/*
	 * The pages stay pinned as long as the BO exists: charge them to the
	 * creator's RLIMIT_MEMLOCK unless it may lock memory at will, so
	 * that a pinner is refused instead of the OOM killer picking a
	 * bystander (the pages are in nobody's RSS).
	 */
	npages = PAGE_ALIGN(args->size) >> PAGE_SHIFT;
	if (!capable(CAP_IPC_LOCK)) {
		user = get_uid(current_user());
		ret = vnpu_charge_locked(user, npages);
		if (ret) {
			free_uid(user);
			drm_dbg(drm, "bo_create: RLIMIT_MEMLOCK reached\n");
			goto out_exit;
		}
	}

	shmem = drm_gem_shmem_create(drm, PAGE_ALIGN(args->size));
	if (IS_ERR(shmem)) {
		ret = PTR_ERR(shmem);
		if (user)
			vnpu_uncharge_locked(user, npages);
		goto out_exit;
	}
	obj = &shmem->base;
	bo = container_of(shmem, struct vnpu_bo, base);
	/* From here the BO's free path uncharges. */
	bo->user = user;
	bo->locked_pages = npages;
	bo->flags = args->flags;
	shmem->map_wc = !!(args->flags & DRM_VNPU_BO_WC);

	ret = vnpu_bo_build_sgl(bo);
	if (ret)
		goto out_put;
	mutex_lock(&to_vnpu_device(drm)->bo_lock);
	list_add_tail(&bo->link, &to_vnpu_device(drm)->bo_list);
	mutex_unlock(&to_vnpu_device(drm)->bo_lock);

	ret = drm_gem_handle_create(file, obj, &handle);
	if (ret)
		goto out_put;

	args->handle = handle;
	args->mmap_offset = drm_vma_node_offset_addr(&obj->vma_node);

out_put:
	/* On success the handle holds the only reference. */
	drm_gem_object_put(obj);
out_exit:
	drm_dev_exit(idx);
	return ret;
}

int vnpu_bo_info_ioctl(struct drm_device *drm, void *data,
		       struct drm_file *file)
{
	struct drm_vnpu_bo_info *args = data;
	struct drm_gem_object *obj;
	struct vnpu_mem *mem;
	struct vnpu_bo *bo;
	int ret = 0;

	if (args->pad) {
		drm_dbg(drm, "bo_info: pad not zero\n");
		return -EINVAL;
	}
	args->kind = 0;
	args->flags = 0;
	args->mmap_offset = 0;
	args->dev_addr = 0;
	obj = drm_gem_object_lookup(file, args->handle);
	if (!obj)
		return -ENOENT;

	bo = vnpu_bo_from_gem(obj);
	mem = vnpu_mem_from_gem(obj);
	args->size = obj->size;
	if (bo) {
		args->kind = DRM_VNPU_BO_KIND_HOST;
		args->flags = bo->flags;
		args->mmap_offset = drm_vma_node_offset_addr(&obj->vma_node);
	} else if (mem) {
		args->kind = DRM_VNPU_BO_KIND_DEVICE;
		args->dev_addr = mem->va.start;
	} else if (vnpu_ubo_from_gem(obj)) {
		args->kind = DRM_VNPU_BO_KIND_USERPTR;
		args->flags = vnpu_ubo_from_gem(obj)->flags;
	} else {
		/* An imported dma-buf of another driver. */
		args->size = 0;
		ret = -EINVAL;
	}
	drm_gem_object_put(obj);
	return ret;
}

int vnpu_mem_alloc_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct drm_vnpu_mem_alloc *args = data;
	struct vnpu_ctx *ctx;
	struct vnpu_mem *mem;
	u64 size;
	u32 handle;
	int idx, ret;

	if (args->flags) {
		drm_dbg(drm, "mem_alloc: flags not zero\n");
		return -EINVAL;
	}
	if (!args->size) {
		drm_dbg(drm, "mem_alloc: zero size\n");
		return -EINVAL;
	}
	/* Checked before rounding, so the rounding cannot overflow. */
	if (args->size > vdev->devmem_size)
		return -ENOSPC;
	size = ALIGN(args->size, VNPU_MMU_PAGE_SIZE);

	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;
	ctx = vnpu_file_ctx(file->driver_priv);
	if (IS_ERR(ctx)) {
		ret = PTR_ERR(ctx);
		goto out_exit;
	}

	mem = kzalloc(sizeof(*mem), GFP_KERNEL_ACCOUNT);
	if (!mem) {
		ret = -ENOMEM;
		goto out_exit;
	}
	mem->base.funcs = &vnpu_mem_funcs;
	drm_gem_private_object_init(drm, &mem->base, size);

	mutex_lock(&vdev->mm_lock);
	ret = drm_mm_insert_node_generic(&vdev->mm, &mem->phys, size,
					 VNPU_MMU_PAGE_SIZE, 0,
					 DRM_MM_INSERT_BEST);
	if (!ret)
		vdev->devmem_used += size;
	mutex_unlock(&vdev->mm_lock);
	if (ret) {
		drm_dbg(drm, "mem_alloc: %llu bytes: device memory exhausted\n",
			size);
		ret = -ENOSPC;
		goto out_put;
	}

	mutex_lock(&ctx->lock);
	ret = drm_mm_insert_node_generic(&ctx->va, &mem->va, size,
					 VNPU_MMU_PAGE_SIZE, 0,
					 DRM_MM_INSERT_BEST);
	mutex_unlock(&ctx->lock);
	if (ret) {
		ret = -ENOSPC;
		goto err_phys;
	}
	ret = vnpu_ctx_map(ctx, mem->va.start, mem->phys.start, size);
	if (ret)
		goto err_va;

	/* From here the object's free path unmaps and releases both ranges. */
	kref_get(&ctx->ref);
	mem->ctx = ctx;
	atomic64_add(size, &ctx->devmem_bytes);

	/* Another context's old data never reaches this one. */
	ret = vnpu_mem_clear(vdev, mem);
	if (ret)
		goto out_put;

	ret = drm_gem_handle_create(file, &mem->base, &handle);
	if (ret)
		goto out_put;

	args->handle = handle;
	args->dev_addr = mem->va.start;
	goto out_put;

err_va:
	mutex_lock(&ctx->lock);
	drm_mm_remove_node(&mem->va);
	mutex_unlock(&ctx->lock);
err_phys:
	mutex_lock(&vdev->mm_lock);
	vdev->devmem_used -= size;
	drm_mm_remove_node(&mem->phys);
	mutex_unlock(&vdev->mm_lock);
out_put:
	drm_gem_object_put(&mem->base);
out_exit:
	drm_dev_exit(idx);
	return ret;
}

/**
 * vnpu_file_host_bytes - bytes of host BOs the file has handles for
 * @file: DRM file
 *
 * Return: the sum of the sizes (an object with several handles counts once
 * per handle).
 */
u64 vnpu_file_host_bytes(struct drm_file *file)
{
	struct drm_gem_object *obj;
	u64 bytes = 0;
	int id;

	spin_lock(&file->table_lock);
	idr_for_each_entry(&file->object_idr, obj, id)
		if (vnpu_bo_from_gem(obj) || vnpu_ubo_from_gem(obj))
			bytes += obj->size;
	spin_unlock(&file->table_lock);
	return bytes;
}

u64 vnpu_devmem_used(struct vnpu_device *vdev)
{
	u64 used;

	mutex_lock(&vdev->mm_lock);
	used = vdev->devmem_used;
	mutex_unlock(&vdev->mm_lock);
	return used;
}

static void vnpu_devmem_fini(struct drm_device *drm, void *arg)
{
	struct vnpu_device *vdev = arg;

	/* Runs at the last drm_device reference: every object is gone. */
	drm_mm_takedown(&vdev->mm);
}

int vnpu_devmem_init(struct vnpu_device *vdev)
{
	int ret;

	ret = drmm_mutex_init(&vdev->drm, &vdev->mm_lock);
	if (ret)
		return ret;
	drm_mm_init(&vdev->mm, 0, vdev->devmem_size);
	vdev->devmem_used = 0;
	return drmm_add_action_or_reset(&vdev->drm, vnpu_devmem_fini, vdev);
}

/* ---- USERPTR: pinned user memory ------------------------------------------ */

static void vnpu_ubo_unpin(struct vnpu_ubo *ubo, unsigned long npinned)
{
	/* The device may have written them: mark dirty unless read-only. */
	unpin_user_pages_dirty_lock(ubo->pages, npinned,
				    !(ubo->flags & DRM_VNPU_USERPTR_READ_ONLY));
}

static void vnpu_ubo_free(struct drm_gem_object *obj)
{
	struct vnpu_ubo *ubo = container_of(obj, struct vnpu_ubo, base);
	struct device *dev = obj->dev->dev;

	/* Runs when the handle and every job naming the object are gone. */
	if (ubo->sgl)
		dma_free_coherent(dev, ubo->sgl_count * sizeof(*ubo->sgl),
				  ubo->sgl, ubo->sgl_dma);
	if (ubo->sgt.sgl) {
		/*
		 * No sync for the CPU: jobs synced the ranges the device wrote.
		 * Bouncing the whole mapping back (swiotlb) would copy stale
		 * bytes over the rest of the caller's pages (its heap).
		 */
		dma_unmap_sgtable(dev, &ubo->sgt, vnpu_ubo_dma_dir(ubo),
				  DMA_ATTR_SKIP_CPU_SYNC);
		sg_free_table(&ubo->sgt);
	}
	if (ubo->pages) {
		vnpu_ubo_unpin(ubo, ubo->npages);
		kvfree(ubo->pages);
	}
	if (ubo->user)
		vnpu_uncharge_locked(ubo->user, ubo->npages);
	drm_gem_object_release(obj);
	kfree(ubo);
}

static struct dma_buf *vnpu_ubo_export(struct drm_gem_object *obj, int flags)
{
	/* Another process's pinned pages are not ours to hand out. */
	return ERR_PTR(-EOPNOTSUPP);
}

static const struct drm_gem_object_funcs vnpu_ubo_funcs = {
	.free = vnpu_ubo_free,
	.export = vnpu_ubo_export,
};

struct vnpu_ubo *vnpu_ubo_from_gem(struct drm_gem_object *obj)
{
	if (obj->funcs != &vnpu_ubo_funcs)
		return NULL;
	return container_of(obj, struct vnpu_ubo, base);
}

/* Pin the caller's pages; on failure nothing stays pinned. */
static int vnpu_ubo_pin(struct vnpu_ubo *ubo, unsigned long addr)
{
	unsigned int gup = FOLL_LONGTERM;
	unsigned long done = 0;
	int n;

	if (!(ubo->flags & DRM_VNPU_USERPTR_READ_ONLY))
		gup |= FOLL_WRITE;
	while (done < ubo->npages) {
		n = pin_user_pages_fast(addr + (done << PAGE_SHIFT),
					min_t(unsigned long,
					      ubo->npages - done, SZ_64K),
					gup, ubo->pages + done);
		if (n <= 0) {
			if (done)
				vnpu_ubo_unpin(ubo, done);
			return n ? n : -EFAULT;
		}
		done += n;
		if (fatal_signal_pending(current)) {
			vnpu_ubo_unpin(ubo, done);
			return -EINTR;
		}
	}
	return 0;
}

/* DMA-map the pinned pages and describe them to the device. */
static int vnpu_ubo_map(struct vnpu_ubo *ubo)
{
	struct device *dev = ubo->base.dev->dev;
	struct scatterlist *sg;
	unsigned int i;
	int ret;

	ret = sg_alloc_table_from_pages_segment(&ubo->sgt, ubo->pages,
						ubo->npages, 0,
						ubo->npages << PAGE_SHIFT,
						/* Bounce buffers map less at once. */
						min_t(size_t,
						      dma_get_max_seg_size(dev),
						      dma_max_mapping_size(dev)),
						GFP_KERNEL_ACCOUNT);
	if (ret)
		return ret;
	/*
	 * No CPU sync here: every copy command syncs its own range at SUBMIT
	 * and at completion (vnpu_job_sync), and a whole-object sync would
	 * only repeat that. It also lets user memory be imported twice (two
	 * writable objects sharing a cacheline), which DMA-API debugging
	 * otherwise reports as an overlapping mapping.
	 */
	ret = dma_map_sgtable(dev, &ubo->sgt, vnpu_ubo_dma_dir(ubo),
			      DMA_ATTR_SKIP_CPU_SYNC);
	if (ret) {
		sg_free_table(&ubo->sgt);
		ubo->sgt.sgl = NULL;
		return ret;
	}
	if (!ubo->sgt.nents || ubo->sgt.nents > VNPU_SGL_MAX)
		return -E2BIG;

	ubo->sgl = dma_alloc_coherent(dev, ubo->sgt.nents * sizeof(*ubo->sgl),
				      &ubo->sgl_dma, GFP_KERNEL);
	if (!ubo->sgl)
		return -ENOMEM;
	ubo->sgl_count = ubo->sgt.nents;
	for_each_sgtable_dma_sg(&ubo->sgt, sg, i) {
		ubo->sgl[i].addr = vnpu_hw64(sg_dma_address(sg));
		ubo->sgl[i].len = vnpu_hw32(sg_dma_len(sg));
		ubo->sgl[i].rsvd = 0;
	}
	return 0;
}

int vnpu_userptr_ioctl(struct drm_device *drm, void *data,
		       struct drm_file *file)
{
	struct drm_vnpu_userptr *args = data;
	struct user_struct *user = NULL;
	struct vnpu_ubo *ubo;
	unsigned long npages;
	u32 handle;
	int idx, ret;

	if (args->flags & ~DRM_VNPU_USERPTR_READ_ONLY) {
		drm_dbg(drm, "userptr: unknown flags 0x%x\n", args->flags);
		return -EINVAL;
	}
	if (!args->size || args->size > VNPU_BO_SIZE_MAX ||
	    !PAGE_ALIGNED(args->addr) || !PAGE_ALIGNED(args->size)) {
		drm_dbg(drm, "userptr: range 0x%llx+%llu not page-granular\n",
			args->addr, args->size);
		return -EINVAL;
	}
	/* Wrapping, or beyond what a user address can be. */
	if (args->addr + args->size < args->addr ||
	    !access_ok(u64_to_user_ptr(args->addr), args->size)) {
		drm_dbg(drm, "userptr: range outside user space\n");
		return -EFAULT;
	}
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	npages = args->size >> PAGE_SHIFT;
	if (!capable(CAP_IPC_LOCK)) {
		user = get_uid(current_user());
		ret = vnpu_charge_locked(user, npages);
		if (ret) {
			free_uid(user);
			drm_dbg(drm, "userptr: RLIMIT_MEMLOCK reached\n");
			goto out_exit;
		}
	}

	ubo = kzalloc(sizeof(*ubo), GFP_KERNEL_ACCOUNT);
	if (!ubo) {
		ret = -ENOMEM;
		if (user)
			vnpu_uncharge_locked(user, npages);
		goto out_exit;
	}
	ubo->base.funcs = &vnpu_ubo_funcs;
	drm_gem_private_object_init(drm, &ubo->base, args->size);
	/* From here the object's free path uncharges. */
	ubo->user = user;
	ubo->npages = npages;
	ubo->flags = args->flags;

	ubo->pages = kvmalloc_array(npages, sizeof(*ubo->pages),
				    GFP_KERNEL_ACCOUNT);
	if (!ubo->pages) {
		ret = -ENOMEM;
		goto out_put;
	}
	ret = vnpu_ubo_pin(ubo, args->addr);
	if (ret) {
		kvfree(ubo->pages);
		ubo->pages = NULL;
		drm_dbg(drm, "userptr: pinning failed: %d\n", ret);
		goto out_put;
	}
	ret = vnpu_ubo_map(ubo);
	if (ret)
		goto out_put;

	ret = drm_gem_handle_create(file, &ubo->base, &handle);
	if (ret)
		goto out_put;
	args->handle = handle;

out_put:
	/* On success the handle holds the only reference. */
	drm_gem_object_put(&ubo->base);
out_exit:
	drm_dev_exit(idx);
	return ret;
}
