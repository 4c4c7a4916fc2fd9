/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vnpu: DRM accel driver for the vnpu simulated NPU - shared driver state.
 */
#ifndef VNPU_DRV_H
#define VNPU_DRV_H

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include <drm/drm_device.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_gem_shmem_helper.h>
#include <drm/drm_mm.h>

#include "vnpu_hw.h"
#include "vnpu_accel.h"

#define VNPU_DRIVER_NAME "vnpu"

/* Queues the driver drives; a device reporting more is used up to this many. */
#define VNPU_MAX_QUEUES 8
/* Command ring entries per queue (clamped to the device's RING_MAX). */
#define VNPU_RING_ENTRIES 256u
/* Device memory allocation granule and alignment. */
#define VNPU_DEVMEM_ALIGN SZ_4K
/* Largest host BO. */
#define VNPU_BO_SIZE_MAX SZ_2G
/* io_uring command ABI version reported by DRM_VNPU_PARAM_URING_CMD. */
#define VNPU_URING_CMD_ABI 1

struct vnpu_device;

/**
 * struct vnpu_queue - one hardware command queue and its software backlog
 * @vdev: owning device
 * @index: hardware queue number
 * @irq: Linux IRQ number of the queue's MSI-X vector
 * @lock: protects every field below it and the ucmd of the queue's jobs;
 *        taken from the IRQ thread, submitters and io_uring cancellation
 * @service_lock: serialises completion processing, recovery and teardown
 *                (IRQ thread, watchdog, remove)
 * @sq: command ring (coherent DMA memory)
 * @sq_dma: its DMA address
 * @cq: completion ring (coherent DMA memory)
 * @cq_dma: its DMA address
 * @entries: entries of each ring (power of two)
 * @sq_tail: free-running count of ring entries written
 * @sq_free: free-running index below which ring entries may be reused
 * @cq_head: next completion ring index to consume (wrapped)
 * @cq_phase: phase bit value that marks a valid completion in this pass
 * @pending: jobs accepted by SUBMIT but not yet written to the ring (FIFO)
 * @hw: jobs written to the ring and not yet completed, in ring order
 * @stopped: feeding paused (recovery in progress)
 * @dead: queue unusable (device removed or recovery failed); jobs fail
 * @dead_status: errno jobs fail with once @dead
 * @seqno: last sequence number handed out on this queue
 * @progress: completions consumed since the watchdog last looked
 * @idle_ticks: watchdog periods without progress while jobs were in flight
 * @watchdog: periodic check for lost interrupts, errors and stuck jobs
 */
struct vnpu_queue {
	struct vnpu_device *vdev;
	u32 index;
	int irq;

	spinlock_t lock; /* see @lock above */
	struct mutex service_lock; /* see @service_lock above */

	struct vnpu_hw_cmd *sq;
	dma_addr_t sq_dma;
	struct vnpu_hw_cpl *cq;
	dma_addr_t cq_dma;
	u32 entries;
	u32 sq_tail;
	u32 sq_free;
	u32 cq_head;
	u16 cq_phase;

	struct list_head pending;
	struct list_head hw;
	bool stopped;
	bool dead;
	int dead_status;
	atomic64_t seqno;
	bool progress;
	unsigned int idle_ticks;
	struct delayed_work watchdog;
};

/**
 * struct vnpu_device - one vnpu PCI function
 * @drm: DRM device (embedded; its lifetime is the structure's lifetime)
 * @regs: BAR0 registers
 * @caps: VNPU_REG_CAPS
 * @version: VNPU_REG_VERSION
 * @devmem_size: bytes of device memory
 * @num_queues: queues in use (<= VNPU_MAX_QUEUES)
 * @max_cmds: largest job, in commands
 * @mm_lock: protects @mm and @devmem_used
 * @mm: allocator over device memory addresses [0, devmem_size)
 * @devmem_used: bytes allocated from @mm
 * @inflight: jobs accepted and not yet completed, device-wide
 * @queues: hardware queues
 */
struct vnpu_device {
	struct drm_device drm;
	void __iomem *regs;
	u32 caps;
	u32 version;
	u64 devmem_size;
	u32 num_queues;
	u32 max_cmds;

	struct mutex mm_lock; /* protects mm and devmem_used */
	struct drm_mm mm;
	u64 devmem_used;

	atomic_t inflight;
	struct vnpu_queue queues[VNPU_MAX_QUEUES];
};

/**
 * struct vnpu_file - per-open-file state
 * @vdev: device
 * @jobs: per queue, jobs submitted by ioctl whose result was not yet
 *        collected by WAIT, indexed by seqno; each entry holds a job reference
 */
struct vnpu_file {
	struct vnpu_device *vdev;
	struct xarray jobs[VNPU_MAX_QUEUES];
};

/**
 * struct vnpu_bo - host buffer object: GEM shmem, pages pinned and DMA-mapped
 * at creation, described to the device by a scatter-gather list
 * @base: shmem object
 * @sgl: scatter-gather list in coherent DMA memory
 * @sgl_dma: its DMA address
 * @sgl_count: entries in @sgl
 */
struct vnpu_bo {
	struct drm_gem_shmem_object base;
	struct vnpu_hw_sge *sgl;
	dma_addr_t sgl_dma;
	u32 sgl_count;
};

/**
 * struct vnpu_mem - device memory allocation (GEM object without pages)
 * @base: GEM object
 * @node: range of device addresses
 */
struct vnpu_mem {
	struct drm_gem_object base;
	struct drm_mm_node node;
};

/**
 * struct vnpu_job - one submitted job
 * @ref: references: creator, queue (while pending or on the ring), the
 *       file's WAIT table (ioctl), the io_uring command (uring)
 * @vdev: device (a DRM device reference is held)
 * @queue: target queue
 * @seqno: sequence number on @queue; also the hardware tag
 * @node: entry in queue->pending or queue->hw
 * @cmds: hardware commands, built at validation
 * @ncmds: number of @cmds
 * @sq_start: free-running ring index of the first command once on the ring
 * @objs: GEM objects referenced by the commands (a reference each)
 * @nobjs: number of @objs
 * @accounted: counted in vdev->inflight
 * @ucmd: io_uring command waiting for this job, or NULL (queue->lock)
 * @done: completed when the job has finished
 * @status: 0 or negative errno, valid once @done
 * @hw_status: enum vnpu_cpl_status, valid once @done
 * @t_start: device clock at start, valid once @done
 * @t_end: device clock at completion, valid once @done
 */
struct vnpu_job {
	struct kref ref;
	struct vnpu_device *vdev;
	struct vnpu_queue *queue;
	u64 seqno;
	struct list_head node;

	struct vnpu_hw_cmd *cmds;
	u32 ncmds;
	u32 sq_start;

	struct drm_gem_object **objs;
	u32 nobjs;
	bool accounted;

	struct io_uring_cmd *ucmd;

	struct completion done;
	int status;
	u32 hw_status;
	u64 t_start;
	u64 t_end;
};

static inline struct vnpu_device *to_vnpu_device(struct drm_device *drm)
{
	return container_of(drm, struct vnpu_device, drm);
}

static inline u32 vnpu_rd(struct vnpu_device *vdev, u32 reg)
{
	return readl(vdev->regs + reg);
}

static inline void vnpu_wr(struct vnpu_device *vdev, u32 reg, u32 val)
{
	writel(val, vdev->regs + reg);
}

static inline u32 vnpu_qrd(struct vnpu_queue *q, u32 reg)
{
	return vnpu_rd(q->vdev, VNPU_REG_QUEUE(q->index, reg));
}

static inline void vnpu_qwr(struct vnpu_queue *q, u32 reg, u32 val)
{
	vnpu_wr(q->vdev, VNPU_REG_QUEUE(q->index, reg), val);
}

/* vnpu_gem.c */
struct drm_gem_object *vnpu_gem_create_object(struct drm_device *drm,
					      size_t size);
struct vnpu_bo *vnpu_bo_from_gem(struct drm_gem_object *obj);
struct vnpu_mem *vnpu_mem_from_gem(struct drm_gem_object *obj);
int vnpu_devmem_init(struct vnpu_device *vdev);
u64 vnpu_devmem_free_bytes(struct vnpu_device *vdev);
int vnpu_bo_create_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file);
int vnpu_mem_alloc_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file);

/* vnpu_job.c */
extern unsigned int vnpu_max_inflight;
int vnpu_queue_init(struct vnpu_device *vdev, struct vnpu_queue *q, u32 index,
		    int irq);
void vnpu_queue_fini(struct vnpu_queue *q);
void vnpu_queue_inject_error(struct vnpu_queue *q);
irqreturn_t vnpu_irq_handler(int irq, void *arg);
irqreturn_t vnpu_irq_thread(int irq, void *arg);
int vnpu_submit_ioctl(struct drm_device *drm, void *data,
		      struct drm_file *file);
int vnpu_wait_ioctl(struct drm_device *drm, void *data, struct drm_file *file);
int vnpu_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags);
void vnpu_file_release_jobs(struct vnpu_file *vfile);

#endif /* VNPU_DRV_H */
