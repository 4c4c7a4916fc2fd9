// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: DRM accel driver for the vnpu simulated NPU - PCI probe, DRM
 * registration, files and their contexts, GET_PARAM, fdinfo.
 */
#include <linux/dma-mapping.h>
#include <linux/iopoll.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>

#include <drm/drm_accel.h>
#include <drm/drm_drv.h>
#include <drm/drm_ioctl.h>
#include <drm/drm_managed.h>
#include <drm/drm_print.h>

#include "vnpu_drv.h"

#define CREATE_TRACE_POINTS
#include "vnpu_trace.h"

/* The uAPI header repeats the device's values that callers compare with. */
static_assert(DRM_VNPU_MAX_PRIORITY == VNPU_PRIORITY_MAX);
static_assert(DRM_VNPU_CAP_DMA_SG == VNPU_CAP_DMA_SG);
static_assert(DRM_VNPU_CAP_OP_MATMUL == VNPU_CAP_OP_MATMUL);
static_assert(DRM_VNPU_CAP_MMU == VNPU_CAP_MMU);
static_assert(DRM_VNPU_CAP_EXEC == VNPU_CAP_EXEC);
static_assert(DRM_VNPU_CAP_SYNTH == VNPU_CAP_SYNTH);
static_assert(DRM_VNPU_CAP_FAULT_INJECT == VNPU_CAP_FAULT_INJECT);
static_assert(DRM_VNPU_CAP_TIMING_ONLY == VNPU_CAP_TIMING_ONLY);
static_assert(DRM_VNPU_CAP_TELEMETRY == VNPU_CAP_TELEMETRY);
static_assert(DRM_VNPU_CAP_SIGNAL == VNPU_CAP_SIGNAL);
static_assert(DRM_VNPU_MAX_SIGNALS == VNPU_MAX_SIGNALS_PER_JOB);
static_assert((int)DRM_VNPU_HW_OK == (int)VNPU_CPL_OK);
static_assert((int)DRM_VNPU_HW_BAD_OPCODE == (int)VNPU_CPL_BAD_OPCODE);
static_assert((int)DRM_VNPU_HW_BAD_FIELD == (int)VNPU_CPL_BAD_FIELD);
static_assert((int)DRM_VNPU_HW_DEVMEM_RANGE == (int)VNPU_CPL_DEVMEM_RANGE);
static_assert((int)DRM_VNPU_HW_SGL_INVALID == (int)VNPU_CPL_SGL_INVALID);
static_assert((int)DRM_VNPU_HW_DMA_FAULT == (int)VNPU_CPL_DMA_FAULT);
static_assert((int)DRM_VNPU_HW_ABORTED == (int)VNPU_CPL_ABORTED);
static_assert((int)DRM_VNPU_HW_JOB_TOO_LONG == (int)VNPU_CPL_JOB_TOO_LONG);
static_assert((int)DRM_VNPU_HW_MMU_FAULT == (int)VNPU_CPL_MMU_FAULT);
static_assert((int)DRM_VNPU_HW_PROGRAM_INVALID == (int)VNPU_CPL_PROGRAM_INVALID);
static_assert((int)DRM_VNPU_HW_BAD_CONTEXT == (int)VNPU_CPL_BAD_CONTEXT);

/*
 * DRM's default event space (4 KiB) holds 128 job events; allow one unread
 * event per job the device may have in flight.
 */
#define VNPU_EVENT_SPACE (8192 * sizeof(struct drm_vnpu_event_job))

static int vnpu_open(struct drm_device *drm, struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct vnpu_squeue *sq;
	struct vnpu_file *vfile;
	int ret;

	vfile = kzalloc(sizeof(*vfile), GFP_KERNEL_ACCOUNT);
	if (!vfile)
		return -ENOMEM;
	vfile->vdev = vdev;
	mutex_init(&vfile->lock);
	xa_init_flags(&vfile->queues, XA_FLAGS_ALLOC);

	sq = vnpu_squeue_create(vdev, 0, VNPU_DEFAULT_PRIORITY);
	if (IS_ERR(sq)) {
		ret = PTR_ERR(sq);
		goto err_free;
	}
	ret = xa_insert(&vfile->queues, 0, sq, GFP_KERNEL);
	if (ret) {
		vnpu_squeue_put(sq);
		goto err_free;
	}

	file->event_space = max_t(int, file->event_space, VNPU_EVENT_SPACE);
	file->driver_priv = vfile;
	return 0;

err_free:
	xa_destroy(&vfile->queues);
	kfree(vfile);
	return ret;
}

static void vnpu_postclose(struct drm_device *drm, struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;
	struct vnpu_squeue *sq;
	unsigned long id;

	/*
	 * Jobs not yet handed to the device are cancelled; those on a ring
	 * hold their queue, context and objects, run to completion and free
	 * what they used.
	 */
	xa_for_each(&vfile->queues, id, sq) {
		xa_erase(&vfile->queues, id);
		vnpu_squeue_detach(sq, vfile, true);
		vnpu_squeue_put(sq);
	}
	xa_destroy(&vfile->queues);
	if (vfile->ctx)
		vnpu_ctx_put(vfile->ctx);
	mutex_destroy(&vfile->lock);
	kfree(vfile);
}

/**
 * vnpu_file_ctx - the file's device context, created on first use
 * @vfile: file
 *
 * Return: the context (owned by the file), or ERR_PTR(-ENOSPC) when the
 * device has no free context.
 */
struct vnpu_ctx *vnpu_file_ctx(struct vnpu_file *vfile)
{
	struct vnpu_ctx *ctx;

	ctx = READ_ONCE(vfile->ctx);
	if (ctx)
		return ctx;
	mutex_lock(&vfile->lock);
	ctx = vfile->ctx;
	if (!ctx) {
		ctx = vnpu_ctx_create(vfile->vdev);
		if (!IS_ERR(ctx))
			WRITE_ONCE(vfile->ctx, ctx);
	}
	mutex_unlock(&vfile->lock);
	return ctx;
}

u64 vnpu_device_clock(struct vnpu_device *vdev)
{
	return vnpu_rd64(vdev, VNPU_REG_CLOCK_LO);
}

static int vnpu_get_param_ioctl(struct drm_device *drm, void *data,
				struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct pci_dev *pdev = to_pci_dev(drm->dev);
	struct drm_vnpu_get_param *args = data;
	struct vnpu_file *vfile = file->driver_priv;
	struct vnpu_ctx *ctx;
	int idx, ret = 0;

	if (args->pad) {
		drm_dbg(drm, "get_param: pad not zero\n");
		return -EINVAL;
	}
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	switch (args->param) {
	case DRM_VNPU_PARAM_DEVICE_ID:
		args->value = (u64)pdev->vendor << 16 | pdev->device;
		break;
	case DRM_VNPU_PARAM_DEVICE_VERSION:
		args->value = vdev->version;
		break;
	case DRM_VNPU_PARAM_CAPS:
		args->value = vdev->caps;
		break;
	case DRM_VNPU_PARAM_NUM_QUEUES:
		args->value = vdev->num_hwq;
		break;
	case DRM_VNPU_PARAM_DEVMEM_SIZE:
		args->value = vdev->devmem_size;
		break;
	case DRM_VNPU_PARAM_DEVMEM_FREE:
		args->value = vdev->devmem_size - vnpu_devmem_used(vdev);
		break;
	case DRM_VNPU_PARAM_MAX_CMDS:
		args->value = vdev->max_cmds;
		break;
	case DRM_VNPU_PARAM_URING_CMD:
		args->value = VNPU_URING_CMD_ABI;
		break;
	case DRM_VNPU_PARAM_H2D_MBPS:
		args->value = vnpu_rd(vdev, VNPU_REG_H2D_MBPS);
		break;
	case DRM_VNPU_PARAM_D2H_MBPS:
		args->value = vnpu_rd(vdev, VNPU_REG_D2H_MBPS);
		break;
	case DRM_VNPU_PARAM_COMPUTE_GFLOPS:
		args->value = vnpu_rd(vdev, VNPU_REG_COMPUTE_GFLOPS);
		break;
	case DRM_VNPU_PARAM_DEVICE_CLOCK_NS:
		args->value = vnpu_device_clock(vdev);
		break;
	case DRM_VNPU_PARAM_MAX_JOBS:
		args->value = DRM_VNPU_MAX_JOBS;
		break;
	case DRM_VNPU_PARAM_MAX_DEPS:
		args->value = DRM_VNPU_MAX_DEPS;
		break;
	case DRM_VNPU_PARAM_MAX_PRIORITY:
		args->value = DRM_VNPU_MAX_PRIORITY;
		break;
	case DRM_VNPU_PARAM_MMU_PAGE_SIZE:
		args->value = VNPU_MMU_PAGE_SIZE;
		break;
	case DRM_VNPU_PARAM_COMPUTE_CORES:
		args->value = vdev->compute_cores;
		break;
	case DRM_VNPU_PARAM_CONTEXT_ID:
		ctx = vnpu_file_ctx(vfile);
		if (IS_ERR(ctx))
			ret = PTR_ERR(ctx);
		else
			args->value = ctx->id;
		break;
	case DRM_VNPU_PARAM_DEVMEM_USED:
		ctx = READ_ONCE(vfile->ctx);
		args->value = ctx ? atomic64_read(&ctx->devmem_bytes) : 0;
		break;
	case DRM_VNPU_PARAM_TIMING_ONLY:
		args->value = !!(vnpu_rd(vdev, VNPU_REG_CONTROL) &
				 VNPU_CONTROL_TIMING_ONLY);
		break;
	case DRM_VNPU_PARAM_USERPTR:
		args->value = 1;
		break;
	case DRM_VNPU_PARAM_MAX_SIGNALS:
		args->value = vdev->caps & VNPU_CAP_SIGNAL ?
			      DRM_VNPU_MAX_SIGNALS : 0;
		break;
	default:
		drm_dbg(drm, "get_param: unknown param %u\n", args->param);
		ret = -EINVAL;
		break;
	}

	drm_dev_exit(idx);
	return ret;
}

/* DRM's fdinfo keys (Documentation/gpu/drm-usage-stats.rst). */
static void vnpu_show_fdinfo(struct drm_printer *p, struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;
	struct vnpu_ctx *ctx = READ_ONCE(vfile->ctx);
	static const char * const engines[] = { "h2d", "compute", "d2h" };
	u64 dev_bytes = ctx ? atomic64_read(&ctx->devmem_bytes) : 0;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(engines); i++)
		drm_printf(p, "drm-engine-%s:\t%llu ns\n", engines[i],
			   ctx ? atomic64_read(&ctx->busy_ns[i]) : 0);
	drm_printf(p, "drm-engine-capacity-compute:\t%u\n",
		   vfile->vdev->compute_cores);
	drm_printf(p, "drm-total-device:\t%llu KiB\n", dev_bytes >> 10);
	drm_printf(p, "drm-resident-device:\t%llu KiB\n", dev_bytes >> 10);
	drm_printf(p, "drm-total-host:\t%llu KiB\n",
		   vnpu_file_host_bytes(file) >> 10);
	if (ctx)
		drm_printf(p, "vnpu-context:\t%u\n", ctx->id);
}

static const struct drm_ioctl_desc vnpu_ioctls[] = {
	DRM_IOCTL_DEF_DRV(VNPU_GET_PARAM, vnpu_get_param_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_BO_CREATE, vnpu_bo_create_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_MEM_ALLOC, vnpu_mem_alloc_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_SUBMIT, vnpu_submit_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_WAIT, vnpu_wait_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_BO_INFO, vnpu_bo_info_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_QUEUE_CREATE, vnpu_queue_create_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_QUEUE_DESTROY, vnpu_queue_destroy_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_USERPTR, vnpu_userptr_ioctl, 0),
};

/*
 * The DRM core ioctls an accel file may use: the ones DRM allows on render
 * nodes (DRM_RENDER_ALLOW) that vnpu supports. Accel files have no master,
 * no authentication and no mode setting, and some core handlers assume a
 * master (6.12's drm_getunique() and drm_getmagic() dereference a NULL
 * file_priv->master), so every other core ioctl fails with -ENOTTY before
 * it reaches drm_ioctl().
 */
static bool vnpu_core_ioctl_allowed(unsigned int nr)
{
	switch (nr) {
	case DRM_IOCTL_NR(DRM_IOCTL_VERSION):
	case DRM_IOCTL_NR(DRM_IOCTL_GET_CAP):
	case DRM_IOCTL_NR(DRM_IOCTL_GEM_CLOSE):
	case DRM_IOCTL_NR(DRM_IOCTL_PRIME_HANDLE_TO_FD):
	case DRM_IOCTL_NR(DRM_IOCTL_PRIME_FD_TO_HANDLE):
		return true;
	default:
		return false;
	}
}

static bool vnpu_ioctl_allowed(unsigned int cmd)
{
	unsigned int nr = DRM_IOCTL_NR(cmd);

	if (_IOC_TYPE(cmd) != DRM_IOCTL_BASE)
		return false;
	/* Driver ioctls: drm_ioctl() checks them against vnpu_ioctls. */
	if (nr >= DRM_COMMAND_BASE && nr < DRM_COMMAND_END)
		return true;
	return vnpu_core_ioctl_allowed(nr);
}

static long vnpu_unlocked_ioctl(struct file *filp, unsigned int cmd,
				unsigned long arg)
{
	if (!vnpu_ioctl_allowed(cmd))
		return -ENOTTY;
	return drm_ioctl(filp, cmd, arg);
}

#ifdef CONFIG_COMPAT
static long vnpu_compat_ioctl(struct file *filp, unsigned int cmd,
			      unsigned long arg)
{
	if (!vnpu_ioctl_allowed(cmd))
		return -ENOTTY;
	return drm_compat_ioctl(filp, cmd, arg);
}
#else
#define vnpu_compat_ioctl NULL
#endif

/* DRM_ACCEL_FOPS open-coded: own ioctl entry points, io_uring, fdinfo. */
static const struct file_operations vnpu_fops = {
	.owner = THIS_MODULE,
	.open = accel_open,
	.release = drm_release,
	.unlocked_ioctl = vnpu_unlocked_ioctl,
	.compat_ioctl = vnpu_compat_ioctl,
	.poll = drm_poll,
	.read = drm_read,
	.llseek = noop_llseek,
	.mmap = drm_gem_mmap,
	.fop_flags = FOP_UNSIGNED_OFFSET,
	.uring_cmd = vnpu_uring_cmd,
	.show_fdinfo = drm_show_fdinfo,
};

static const struct drm_driver vnpu_drm_driver = {
	.driver_features = DRIVER_GEM | DRIVER_COMPUTE_ACCEL,
	.open = vnpu_open,
	.postclose = vnpu_postclose,
	.show_fdinfo = vnpu_show_fdinfo,
	.gem_create_object = vnpu_gem_create_object,
	.ioctls = vnpu_ioctls,
	.num_ioctls = ARRAY_SIZE(vnpu_ioctls),
	.fops = &vnpu_fops,
	.name = VNPU_DRIVER_NAME,
	.desc = "vnpu simulated NPU",
	.date = "20250101",
	.major = 1,
	.minor = 0,
};

static int vnpu_hw_init(struct vnpu_device *vdev)
{
	struct drm_device *drm = &vdev->drm;
	const u32 need = VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL | VNPU_CAP_MMU;
	u32 id, status, ring_max;
	int ret;

	id = vnpu_rd(vdev, VNPU_REG_ID);
	if (id != VNPU_ID_MAGIC) {
		drm_err(drm, "unexpected ID register 0x%08x\n", id);
		return -ENODEV;
	}
	vdev->version = vnpu_rd(vdev, VNPU_REG_VERSION);
	if (vdev->version >> 16 != VNPU_VERSION_MAJOR) {
		drm_err(drm, "unsupported interface version %u.%u\n",
			vdev->version >> 16, vdev->version & 0xffff);
		return -ENODEV;
	}

	/* Start from power-on state whatever a previous driver left behind. */
	vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	ret = readl_poll_timeout(vdev->regs + VNPU_REG_STATUS, status,
				 status & VNPU_STATUS_READY, 100, 1000000);
	if (ret) {
		drm_err(drm, "device not ready after reset\n");
		return ret;
	}

	vdev->caps = vnpu_rd(vdev, VNPU_REG_CAPS);
	if ((vdev->caps & need) != need) {
		drm_err(drm, "device lacks required capabilities (0x%x)\n",
			vdev->caps);
		return -ENODEV;
	}

	vdev->num_hwq = vnpu_rd(vdev, VNPU_REG_NUM_QUEUES);
	if (!vdev->num_hwq) {
		drm_err(drm, "device has no queues\n");
		return -ENODEV;
	}
	vdev->num_hwq = min_t(u32, vdev->num_hwq, VNPU_MAX_HWQ);

	vdev->num_contexts = vnpu_rd(vdev, VNPU_REG_NUM_CONTEXTS);
	if (vdev->num_contexts < 2) {
		drm_err(drm, "device has %u contexts\n", vdev->num_contexts);
		return -ENODEV;
	}
	vdev->num_contexts = min_t(u32, vdev->num_contexts, 65536);
	vdev->compute_cores = vnpu_rd(vdev, VNPU_REG_COMPUTE_CORES);
	vdev->h2d_mbps = vnpu_rd(vdev, VNPU_REG_H2D_MBPS);
	vdev->d2h_mbps = vnpu_rd(vdev, VNPU_REG_D2H_MBPS);
	vdev->gflops = vnpu_rd(vdev, VNPU_REG_COMPUTE_GFLOPS);

	ring_max = vnpu_rd(vdev, VNPU_REG_RING_MAX);
	if (ring_max < 2) {
		drm_err(drm, "ring too small (%u entries)\n", ring_max);
		return -ENODEV;
	}

	vdev->devmem_size = vnpu_rd64(vdev, VNPU_REG_DEVMEM_SIZE_LO);
	vdev->devmem_size = round_down(vdev->devmem_size, VNPU_MMU_PAGE_SIZE);
	if (!vdev->devmem_size) {
		drm_err(drm, "device has no device memory\n");
		return -ENODEV;
	}
	return 0;
}

static u32 vnpu_ring_entries(struct vnpu_device *vdev)
{
	u32 ring_max = vnpu_rd(vdev, VNPU_REG_RING_MAX);

	return min_t(u32, VNPU_RING_ENTRIES, rounddown_pow_of_two(ring_max));
}

/*
 * Fail every job of the first @n queues, then let the jobs that depend on
 * them run out: each failure readies its dependents, whose ready_work fails
 * them and readies theirs, queueing the work again from inside itself.
 * destroy_workqueue() drains until no work is left, chains included, so no
 * driver code runs from the workqueue after this returns.
 */
static void vnpu_hwq_fini_all(struct vnpu_device *vdev, unsigned int n)
{
	while (n--)
		vnpu_hwq_fini(&vdev->hwq[n]);
	/* A recovery the watchdogs ran before they stopped may have queued it. */
	cancel_work_sync(&vdev->reset_work);
	destroy_workqueue(vdev->ready_wq);
	WARN_ON(!llist_empty(&vdev->ready));
}

static int vnpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vnpu_device *vdev;
	struct drm_device *drm;
	u32 entries;
	unsigned int i;
	int nvec, ret;

	vdev = devm_drm_dev_alloc(&pdev->dev, &vnpu_drm_driver,
				  struct vnpu_device, drm);
	if (IS_ERR(vdev))
		return PTR_ERR(vdev);
	drm = &vdev->drm;
	pci_set_drvdata(pdev, vdev);
	atomic_set(&vdev->inflight, 0);
	init_llist_head(&vdev->ready);
	INIT_WORK(&vdev->ready_work, vnpu_ready_work);
	ret = drmm_mutex_init(drm, &vdev->reset_lock);
	if (ret)
		return ret;
	INIT_LIST_HEAD(&vdev->reset_jobs);
	INIT_LIST_HEAD(&vdev->ctx_list);
	INIT_LIST_HEAD(&vdev->bo_list);
	ret = drmm_mutex_init(drm, &vdev->bo_lock);
	if (ret)
		return ret;
	INIT_WORK(&vdev->reset_work, vnpu_reset_work);
	atomic64_set(&vdev->device_resets, 0);

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	pci_set_master(pdev);

	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		return ret;
	/* Scatter-gather elements carry 32-bit lengths. */
	dma_set_max_seg_size(&pdev->dev, UINT_MAX);

	if (pci_resource_len(pdev, VNPU_BAR_REGS) < VNPU_BAR_REGS_SIZE) {
		drm_err(drm, "BAR%d too small\n", VNPU_BAR_REGS);
		return -ENODEV;
	}
	vdev->regs = pcim_iomap_region(pdev, VNPU_BAR_REGS, VNPU_DRIVER_NAME);
	if (IS_ERR(vdev->regs))
		return PTR_ERR(vdev->regs);

	ret = vnpu_hw_init(vdev);
	if (ret)
		return ret;
	entries = vnpu_ring_entries(vdev);
	/* A job must fit in the ring, which keeps one entry free. */
	vdev->max_cmds = min3(DRM_VNPU_MAX_CMDS, entries - 1, VNPU_JOB_MAX_CMDS);

	ret = vnpu_devmem_init(vdev);
	if (ret)
		return ret;
	ret = vnpu_mmu_init(vdev);
	if (ret)
		return ret;

	/* One vector per queue; vector q serves queue q. */
	nvec = pci_alloc_irq_vectors(pdev, vdev->num_hwq, vdev->num_hwq,
				     PCI_IRQ_MSIX);
	if (nvec < 0) {
		drm_err(drm, "cannot allocate %u MSI-X vectors: %d\n",
			vdev->num_hwq, nvec);
		return nvec;
	}

	/* Torn down by vnpu_hwq_fini_all(), once the queues are. */
	vdev->ready_wq = alloc_workqueue("vnpu-ready-%s", 0, 0,
					 pci_name(pdev));
	if (!vdev->ready_wq)
		return -ENOMEM;

	for (i = 0; i < vdev->num_hwq; i++) {
		vdev->hwq[i].entries = entries;
		ret = vnpu_hwq_init(vdev, &vdev->hwq[i], i,
				    pci_irq_vector(pdev, i));
		if (ret)
			goto err_queues;
	}

	ret = vnpu_kernel_queue_init(vdev);
	if (ret)
		goto err_queues;
	ret = vnpu_sysfs_init(vdev);
	if (ret)
		goto err_queues;
	vnpu_debugfs_init(vdev);
	ret = drm_dev_register(drm, 0);
	if (ret)
		goto err_queues;

	drm_info(drm, "vnpu %u.%u: %u queues, %u contexts, %llu MiB device memory\n",
		 vdev->version >> 16, vdev->version & 0xffff, vdev->num_hwq,
		 vdev->num_contexts, vdev->devmem_size >> 20);
	return 0;

err_queues:
	vnpu_hwq_fini_all(vdev, i);
	if (vdev->kq)
		vnpu_squeue_put(vdev->kq);
	vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	return ret;
}

static void vnpu_remove(struct pci_dev *pdev)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);

	/* No new ioctl or io_uring command gets past drm_dev_enter() now. */
	drm_dev_unplug(&vdev->drm);

	/*
	 * The device must not reach the jobs' memory once they complete: reset
	 * it and turn bus mastering off first (before, a queue reset that did
	 * not finish left a running device DMAing into freed pages).
	 */
	vnpu_device_stop(vdev);
	/* Jobs still in flight fail with -ENODEV; their waiters wake. */
	vnpu_hwq_fini_all(vdev, vdev->num_hwq);
	vnpu_squeue_put(vdev->kq);
	/*
	 * Objects and files may outlive the device; the DMA memory they hold
	 * of it may not (before, unbind with BOs alive left their mappings
	 * to be freed against an unbound device).
	 */
	vnpu_bo_unplug_all(vdev);
	vnpu_mmu_unplug(vdev);
}

/* Reboot, kexec: no DMA may continue into the next kernel's memory. */
static void vnpu_shutdown(struct pci_dev *pdev)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);

	if (vdev)
		vnpu_device_stop(vdev);
}

/*
 * PCI reset (sysfs reset, FLR, bus reset by another function's driver):
 * quiesce before it, then restart as after a device reset. Jobs the device
 * had fetched fail with -ECONNABORTED, the others run again.
 */
static void vnpu_reset_prepare(struct pci_dev *pdev)
{
	vnpu_device_quiesce(pci_get_drvdata(pdev));
}

static void vnpu_reset_done(struct pci_dev *pdev)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);

	pci_set_master(pdev);
	vnpu_device_restart(vdev, true);
}

/* AER and DPC: the link is down or frozen; reset and restart. */
static pci_ers_result_t vnpu_error_detected(struct pci_dev *pdev,
					    pci_channel_state_t state)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);

	drm_err(&vdev->drm, "PCI channel error (state %d)\n", state);
	if (state == pci_channel_io_perm_failure)
		return PCI_ERS_RESULT_DISCONNECT;
	vnpu_device_quiesce(vdev);
	return PCI_ERS_RESULT_NEED_RESET;
}

static pci_ers_result_t vnpu_slot_reset(struct pci_dev *pdev)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);

	pci_restore_state(pdev);
	pci_set_master(pdev);
	vnpu_device_restart(vdev, false);
	return READ_ONCE(vdev->wedged) ? PCI_ERS_RESULT_DISCONNECT :
					 PCI_ERS_RESULT_RECOVERED;
}

static const struct pci_error_handlers vnpu_err_handler = {
	.error_detected = vnpu_error_detected,
	.slot_reset = vnpu_slot_reset,
	.reset_prepare = vnpu_reset_prepare,
	.reset_done = vnpu_reset_done,
};

static const struct pci_device_id vnpu_pci_ids[] = {
	{ PCI_DEVICE(VNPU_PCI_VENDOR_ID, VNPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vnpu_pci_ids);

static struct pci_driver vnpu_pci_driver = {
	.name = VNPU_DRIVER_NAME,
	.id_table = vnpu_pci_ids,
	.probe = vnpu_probe,
	.remove = vnpu_remove,
	.shutdown = vnpu_shutdown,
	.err_handler = &vnpu_err_handler,
};
module_pci_driver(vnpu_pci_driver);

MODULE_DESCRIPTION("DRM accel driver for the vnpu simulated NPU");
MODULE_LICENSE("GPL");
