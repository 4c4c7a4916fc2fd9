// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: sysfs attributes (/sys/bus/pci/devices/<bdf>/vnpu/, read by
 * vnpu-smi; docs/uapi.md lists them) and the debugfs fault-injection file
 * (/sys/kernel/debug/accel/<bdf>/fault_inject).
 */
#include <linux/debugfs.h>
#include <linux/pci.h>
#include <linux/seq_file.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>

#include <drm/drm_drv.h>

#include "vnpu_drv.h"

static struct vnpu_device *vnpu_from_dev(struct device *dev)
{
	return pci_get_drvdata(to_pci_dev(dev));
}

/* Reads a device register only while the device is bound. */
static ssize_t vnpu_show_reg64(struct device *dev, char *buf, u32 reg)
{
	struct vnpu_device *vdev = vnpu_from_dev(dev);
	ssize_t ret;
	int idx;

	if (!drm_dev_enter(&vdev->drm, &idx))
		return -ENODEV;
	ret = sysfs_emit(buf, "%llu\n", vnpu_rd64(vdev, reg));
	drm_dev_exit(idx);
	return ret;
}

static ssize_t device_clock_ns_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return vnpu_show_reg64(dev, buf, VNPU_REG_CLOCK_LO);
}
static DEVICE_ATTR_RO(device_clock_ns);

static ssize_t busy_ns_h2d_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return vnpu_show_reg64(dev, buf,
			       VNPU_REG_TELEMETRY(VNPU_TEL_H2D_BUSY_NS));
}
static DEVICE_ATTR_RO(busy_ns_h2d);

static ssize_t busy_ns_compute_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return vnpu_show_reg64(dev, buf,
			       VNPU_REG_TELEMETRY(VNPU_TEL_COMPUTE_BUSY_NS));
}
static DEVICE_ATTR_RO(busy_ns_compute);

static ssize_t busy_ns_d2h_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return vnpu_show_reg64(dev, buf,
			       VNPU_REG_TELEMETRY(VNPU_TEL_D2H_BUSY_NS));
}
static DEVICE_ATTR_RO(busy_ns_d2h);

static ssize_t jobs_completed_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&vnpu_from_dev(dev)->jobs_completed));
}
static DEVICE_ATTR_RO(jobs_completed);

static ssize_t jobs_failed_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&vnpu_from_dev(dev)->jobs_failed));
}
static DEVICE_ATTR_RO(jobs_failed);

/* 1 once a reset failed: no work is accepted until the driver is rebound. */
static ssize_t wedged_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(vnpu_from_dev(dev)->wedged));
}
static DEVICE_ATTR_RO(wedged);

static ssize_t device_resets_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&vnpu_from_dev(dev)->device_resets));
}
static DEVICE_ATTR_RO(device_resets);

static ssize_t devmem_size_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", vnpu_from_dev(dev)->devmem_size);
}
static DEVICE_ATTR_RO(devmem_size);

static ssize_t devmem_used_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", vnpu_devmem_used(vnpu_from_dev(dev)));
}
static DEVICE_ATTR_RO(devmem_used);

static ssize_t contexts_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  atomic_read(&vnpu_from_dev(dev)->contexts));
}
static DEVICE_ATTR_RO(contexts);

/* One line per hardware queue: index priority head tail inflight. */
static ssize_t queues_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct vnpu_device *vdev = vnpu_from_dev(dev);
	ssize_t len = 0;
	unsigned int i;
	int idx;

	if (!drm_dev_enter(&vdev->drm, &idx))
		return -ENODEV;
	for (i = 0; i < vdev->num_hwq; i++) {
		struct vnpu_hwq *q = &vdev->hwq[i];
		u32 njobs;

		spin_lock(&q->lock);
		njobs = q->njobs;
		spin_unlock(&q->lock);
		len += sysfs_emit_at(buf, len, "%u %u %u %u %u\n", i,
				     q->priority,
				     vnpu_qrd(q, VNPU_QREG_SQ_HEAD),
				     vnpu_qrd(q, VNPU_QREG_SQ_TAIL), njobs);
	}
	drm_dev_exit(idx);
	return len;
}
static DEVICE_ATTR_RO(queues);

/* SQ_TAIL doorbell writes per hardware queue: "index count" lines. */
static ssize_t doorbells_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	struct vnpu_device *vdev = vnpu_from_dev(dev);
	ssize_t len = 0;
	unsigned int i;

	for (i = 0; i < vdev->num_hwq; i++)
		len += sysfs_emit_at(buf, len, "%u %lld\n", i,
				     atomic64_read(&vdev->hwq[i].doorbells));
	return len;
}
static DEVICE_ATTR_RO(doorbells);

static struct attribute *vnpu_attrs[] = {
	&dev_attr_device_clock_ns.attr,
	&dev_attr_busy_ns_h2d.attr,
	&dev_attr_busy_ns_compute.attr,
	&dev_attr_busy_ns_d2h.attr,
	&dev_attr_jobs_completed.attr,
	&dev_attr_jobs_failed.attr,
	&dev_attr_wedged.attr,
	&dev_attr_device_resets.attr,
	&dev_attr_devmem_size.attr,
	&dev_attr_devmem_used.attr,
	&dev_attr_contexts.attr,
	&dev_attr_queues.attr,
	&dev_attr_doorbells.attr,
	NULL
};

static const struct attribute_group vnpu_attr_group = {
	.name = "vnpu",
	.attrs = vnpu_attrs,
};

int vnpu_sysfs_init(struct vnpu_device *vdev)
{
	return devm_device_add_group(vdev->drm.dev, &vnpu_attr_group);
}

#if IS_ENABLED(CONFIG_DEBUG_FS)
/*
 * fault_inject: write "KIND QUEUE AFTER [RATE_PPM [SEED]]" to program the
 * device's fault-injection registers and arm them (KIND 0 disarms); QUEUE
 * -1 means any queue. Reading shows the registers and FI_COUNT.
 */
static ssize_t vnpu_fi_write(struct file *f, const char __user *ubuf,
			     size_t len, loff_t *pos)
{
	struct vnpu_device *vdev = file_inode(f)->i_private;
	u32 kind, after, rate = 0, seed = 0;
	char buf[96];
	int queue, n, idx;

	if (!(vdev->caps & VNPU_CAP_FAULT_INJECT))
		return -EOPNOTSUPP;
	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	n = sscanf(buf, "%u %d %u %u %u", &kind, &queue, &after, &rate, &seed);
	if (n < 3 || kind > VNPU_FI_CORRUPT_CPL ||
	    (queue != -1 && (queue < 0 || queue >= vdev->num_hwq)))
		return -EINVAL;
	if (!drm_dev_enter(&vdev->drm, &idx))
		return -ENODEV;
	vnpu_wr(vdev, VNPU_REG_FI_CTRL, 0);
	vnpu_wr(vdev, VNPU_REG_FI_KIND, kind);
	vnpu_wr(vdev, VNPU_REG_FI_QUEUE, (u32)queue);
	vnpu_wr(vdev, VNPU_REG_FI_AFTER, after);
	vnpu_wr(vdev, VNPU_REG_FI_RATE_PPM, rate);
	vnpu_wr(vdev, VNPU_REG_FI_SEED, seed);
	if (kind != VNPU_FI_NONE)
		vnpu_wr(vdev, VNPU_REG_FI_CTRL, VNPU_FI_CTRL_ARM);
	drm_dev_exit(idx);
	return len;
}

static int vnpu_fi_show(struct seq_file *m, void *unused)
{
	struct vnpu_device *vdev = m->private;
	int idx;

	if (!drm_dev_enter(&vdev->drm, &idx))
		return -ENODEV;
	seq_printf(m, "kind %u queue %d after %u rate_ppm %u seed %u ctrl %u count %u\n",
		   vnpu_rd(vdev, VNPU_REG_FI_KIND),
		   (int)vnpu_rd(vdev, VNPU_REG_FI_QUEUE),
		   vnpu_rd(vdev, VNPU_REG_FI_AFTER),
		   vnpu_rd(vdev, VNPU_REG_FI_RATE_PPM),
		   vnpu_rd(vdev, VNPU_REG_FI_SEED),
		   vnpu_rd(vdev, VNPU_REG_FI_CTRL),
		   vnpu_rd(vdev, VNPU_REG_FI_COUNT));
	drm_dev_exit(idx);
	return 0;
}

static int vnpu_fi_open(struct inode *inode, struct file *f)
{
	return single_open(f, vnpu_fi_show, inode->i_private);
}

static const struct file_operations vnpu_fi_fops = {
	.owner = THIS_MODULE,
	.open = vnpu_fi_open,
	.read = seq_read,
	.write = vnpu_fi_write,
	.llseek = seq_lseek,
	.release = single_release,
};

static int vnpu_resets_show(struct seq_file *m, void *unused)
{
	struct vnpu_device *vdev = m->private;
	unsigned int i;

	/* index, resets, rejected completion records */
	for (i = 0; i < vdev->num_hwq; i++)
		seq_printf(m, "%u %lld %lld\n", i,
			   atomic64_read(&vdev->hwq[i].resets),
			   atomic64_read(&vdev->hwq[i].bad_cpls));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vnpu_resets);

/* Accel devices get no debugfs_init() call in 6.12: use the device's dir. */
void vnpu_debugfs_init(struct vnpu_device *vdev)
{
	debugfs_create_file("fault_inject", 0600, vdev->drm.debugfs_root,
			    vdev, &vnpu_fi_fops);
	debugfs_create_file("queue_resets", 0400, vdev->drm.debugfs_root,
			    vdev, &vnpu_resets_fops);
}
#else
void vnpu_debugfs_init(struct vnpu_device *vdev)
{
}
#endif
