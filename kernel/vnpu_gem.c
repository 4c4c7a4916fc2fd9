// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: buffer objects.
 *
 * Host BOs are GEM shmem objects whose pages are pinned and DMA-mapped at
 * creation; each carries a scatter-gather list in coherent DMA memory that DMA
 * commands point the device at, so user space never supplies an address.
 * Device memory objects are GEM objects without backing pages that own a
 * range of device addresses from a drm_mm allocator; they cannot be mapped.
 */
#include <linux/dma-mapping.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>

#include <drm/drm_drv.h>
#include <drm/drm_managed.h>
#include <drm/drm_print.h>
#include <drm/drm_vma_manager.h>

#include "vnpu_drv.h"

static void vnpu_bo_free(struct drm_gem_object *obj)
{
	struct vnpu_bo *bo = container_of(obj, struct vnpu_bo, base.base);

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

static void vnpu_mem_free(struct drm_gem_object *obj)
{
	struct vnpu_mem *mem = container_of(obj, struct vnpu_mem, base);
	struct vnpu_device *vdev = to_vnpu_device(obj->dev);

	mutex_lock(&vdev->mm_lock);
	if (drm_mm_node_allocated(&mem->node)) {
		vdev->devmem_used -= mem->node.size;
		drm_mm_remove_node(&mem->node);
	}
	mutex_unlock(&vdev->mm_lock);

	drm_gem_object_release(obj);
	kfree(mem);
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

	bo = kzalloc(sizeof(*bo), GFP_KERNEL);
	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &vnpu_bo_funcs;
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
		bo->sgl[i].addr = cpu_to_le64(sg_dma_address(sg));
		bo->sgl[i].len = cpu_to_le32(sg_dma_len(sg));
		bo->sgl[i].rsvd = 0;
	}
	return 0;
}

int vnpu_bo_create_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file)
{
	struct drm_vnpu_bo_create *args = data;
	struct drm_gem_shmem_object *shmem;
	struct drm_gem_object *obj;
	u32 handle;
	int idx, ret;

	if (args->flags || args->pad || args->pad2) {
		drm_dbg(drm, "bo_create: flags/pad not zero\n");
		return -EINVAL;
	}
	if (!args->size || args->size > VNPU_BO_SIZE_MAX) {
		drm_dbg(drm, "bo_create: bad size %llu\n", args->size);
		return -EINVAL;
	}
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	shmem = drm_gem_shmem_create(drm, PAGE_ALIGN(args->size));
	if (IS_ERR(shmem)) {
		ret = PTR_ERR(shmem);
		goto out_exit;
	}
	obj = &shmem->base;

	ret = vnpu_bo_build_sgl(container_of(shmem, struct vnpu_bo, base));
	if (ret)
		goto out_put;

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

int vnpu_mem_alloc_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct drm_vnpu_mem_alloc *args = data;
	struct vnpu_mem *mem;
	u64 size;
	u32 handle;
	int ret;

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
	size = ALIGN(args->size, VNPU_DEVMEM_ALIGN);

	mem = kzalloc(sizeof(*mem), GFP_KERNEL);
	if (!mem)
		return -ENOMEM;
	mem->base.funcs = &vnpu_mem_funcs;
	drm_gem_private_object_init(drm, &mem->base, size);

	mutex_lock(&vdev->mm_lock);
	ret = drm_mm_insert_node_generic(&vdev->mm, &mem->node, size,
					 VNPU_DEVMEM_ALIGN, 0,
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

	ret = drm_gem_handle_create(file, &mem->base, &handle);
	if (ret)
		goto out_put;

	args->handle = handle;
	args->dev_addr = mem->node.start;

out_put:
	drm_gem_object_put(&mem->base);
	return ret;
}

u64 vnpu_devmem_free_bytes(struct vnpu_device *vdev)
{
	u64 used;

	mutex_lock(&vdev->mm_lock);
	used = vdev->devmem_used;
	mutex_unlock(&vdev->mm_lock);
	return vdev->devmem_size - used;
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
