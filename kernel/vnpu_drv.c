// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: DRM accel driver for the vnpu simulated NPU - PCI probe, DRM
 * registration, GET_PARAM.
 */
#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/iopoll.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>

#include <drm/drm_accel.h>
#include <drm/drm_debugfs.h>
#include <drm/drm_drv.h>
#include <drm/drm_ioctl.h>

#include "vnpu_drv.h"

static int vnpu_open(struct drm_device *drm, struct drm_file *file)
{
	struct vnpu_file *vfile;
	unsigned int i;

	vfile = kzalloc(sizeof(*vfile), GFP_KERNEL);
	if (!vfile)
		return -ENOMEM;
	vfile->vdev = to_vnpu_device(drm);
	for (i = 0; i < VNPU_MAX_QUEUES; i++)
		xa_init(&vfile->jobs[i]);
	file->driver_priv = vfile;
	return 0;
}

static void vnpu_postclose(struct drm_device *drm, struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;

	/*
	 * Jobs still in flight keep their own references to the objects they
	 * use; only the uncollected WAIT results go away with the file.
	 */
	vnpu_file_release_jobs(vfile);
	kfree(vfile);
}

static u64 vnpu_device_clock(struct vnpu_device *vdev)
{
	u32 lo, hi;

	/* Reading LO latches HI, so the pair is consistent. */
	lo = vnpu_rd(vdev, VNPU_REG_CLOCK_LO);
	hi = vnpu_rd(vdev, VNPU_REG_CLOCK_HI);
	return (u64)hi << 32 | lo;
}

static int vnpu_get_param_ioctl(struct drm_device *drm, void *data,
				struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct pci_dev *pdev = to_pci_dev(drm->dev);
	struct drm_vnpu_get_param *args = data;
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
		args->value = vdev->num_queues;
		break;
	case DRM_VNPU_PARAM_DEVMEM_SIZE:
		args->value = vdev->devmem_size;
		break;
	case DRM_VNPU_PARAM_DEVMEM_FREE:
		args->value = vnpu_devmem_free_bytes(vdev);
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
	default:
		drm_dbg(drm, "get_param: unknown param %u\n", args->param);
		ret = -EINVAL;
		break;
	}

	drm_dev_exit(idx);
	return ret;
}

#if IS_ENABLED(CONFIG_DEBUG_FS)
/*
 * Writing a queue number to inject_queue_error makes that queue fail the way
 * a device fault does, so tests can exercise error recovery.
 */
static ssize_t vnpu_inject_queue_error_write(struct file *f,
					     const char __user *buf,
					     size_t len, loff_t *pos)
{
	struct vnpu_device *vdev = f->private_data;
	int idx, ret;
	u32 qi;

	ret = kstrtou32_from_user(buf, len, 0, &qi);
	if (ret)
		return ret;
	if (qi >= vdev->num_queues)
		return -EINVAL;
	if (!drm_dev_enter(&vdev->drm, &idx))
		return -ENODEV;
	vnpu_queue_inject_error(&vdev->queues[qi]);
	drm_dev_exit(idx);
	return len;
}

static const struct file_operations vnpu_inject_queue_error_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.write = vnpu_inject_queue_error_write,
	.llseek = noop_llseek,
};

/* Accel devices get no debugfs_init() call in 6.12: use the device's dir. */
static void vnpu_debugfs_init(struct vnpu_device *vdev)
{
	debugfs_create_file("inject_queue_error", 0200, vdev->drm.debugfs_root,
			    vdev, &vnpu_inject_queue_error_fops);
}
#else
static void vnpu_debugfs_init(struct vnpu_device *vdev)
{
}
#endif

static const struct drm_ioctl_desc vnpu_ioctls[] = {
	DRM_IOCTL_DEF_DRV(VNPU_GET_PARAM, vnpu_get_param_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_BO_CREATE, vnpu_bo_create_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_MEM_ALLOC, vnpu_mem_alloc_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_SUBMIT, vnpu_submit_ioctl, 0),
	DRM_IOCTL_DEF_DRV(VNPU_WAIT, vnpu_wait_ioctl, 0),
};

static const struct file_operations vnpu_fops = {
	.owner = THIS_MODULE,
	DRM_ACCEL_FOPS,
	.uring_cmd = vnpu_uring_cmd,
	.show_fdinfo = drm_show_fdinfo,
};

static const struct drm_driver vnpu_drm_driver = {
	.driver_features = DRIVER_GEM | DRIVER_COMPUTE_ACCEL,
	.open = vnpu_open,
	.postclose = vnpu_postclose,
	.gem_create_object = vnpu_gem_create_object,
	.ioctls = vnpu_ioctls,
	.num_ioctls = ARRAY_SIZE(vnpu_ioctls),
	.fops = &vnpu_fops,
	.name = VNPU_DRIVER_NAME,
	.desc = "vnpu simulated NPU",
	.date = "20250101",
	.major = 0,
	.minor = 1,
};

static int vnpu_hw_init(struct vnpu_device *vdev)
{
	struct drm_device *drm = &vdev->drm;
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
	if ((vdev->caps & (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL)) !=
	    (VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL)) {
		drm_err(drm, "device lacks required capabilities (0x%x)\n",
			vdev->caps);
		return -ENODEV;
	}

	vdev->num_queues = vnpu_rd(vdev, VNPU_REG_NUM_QUEUES);
	if (!vdev->num_queues) {
		drm_err(drm, "device has no queues\n");
		return -ENODEV;
	}
	vdev->num_queues = min_t(u32, vdev->num_queues, VNPU_MAX_QUEUES);

	ring_max = vnpu_rd(vdev, VNPU_REG_RING_MAX);
	if (ring_max < 2) {
		drm_err(drm, "ring too small (%u entries)\n", ring_max);
		return -ENODEV;
	}

	vdev->devmem_size = (u64)vnpu_rd(vdev, VNPU_REG_DEVMEM_SIZE_HI) << 32 |
			    vnpu_rd(vdev, VNPU_REG_DEVMEM_SIZE_LO);
	vdev->devmem_size = round_down(vdev->devmem_size, VNPU_DEVMEM_ALIGN);
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
	vdev->max_cmds = min_t(u32, DRM_VNPU_MAX_CMDS, entries - 1);

	ret = vnpu_devmem_init(vdev);
	if (ret)
		return ret;

	/* One vector per queue; vector q serves queue q. */
	nvec = pci_alloc_irq_vectors(pdev, vdev->num_queues, vdev->num_queues,
				     PCI_IRQ_MSIX);
	if (nvec < 0) {
		drm_err(drm, "cannot allocate %u MSI-X vectors: %d\n",
			vdev->num_queues, nvec);
		return nvec;
	}

	for (i = 0; i < vdev->num_queues; i++) {
		vdev->queues[i].entries = entries;
		ret = vnpu_queue_init(vdev, &vdev->queues[i], i,
				      pci_irq_vector(pdev, i));
		if (ret)
			goto err_queues;
	}

	vnpu_debugfs_init(vdev);
	ret = drm_dev_register(drm, 0);
	if (ret)
		goto err_queues;

	drm_info(drm, "vnpu %u.%u: %u queue(s), %llu MiB device memory\n",
		 vdev->version >> 16, vdev->version & 0xffff, vdev->num_queues,
		 vdev->devmem_size >> 20);
	return 0;

err_queues:
	while (i--)
		vnpu_queue_fini(&vdev->queues[i]);
	vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	return ret;
}

static void vnpu_remove(struct pci_dev *pdev)
{
	struct vnpu_device *vdev = pci_get_drvdata(pdev);
	unsigned int i;

	/* No new ioctl or io_uring command gets past drm_dev_enter() now. */
	drm_dev_unplug(&vdev->drm);

	/* Jobs still in flight fail with -ENODEV; their waiters wake. */
	for (i = 0; i < vdev->num_queues; i++)
		vnpu_queue_fini(&vdev->queues[i]);

	vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	pci_clear_master(pdev);
}

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
};
module_pci_driver(vnpu_pci_driver);

MODULE_DESCRIPTION("DRM accel driver for the vnpu simulated NPU");
MODULE_LICENSE("GPL");
