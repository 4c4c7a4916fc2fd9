/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vnpu: DRM accel driver for the vnpu simulated NPU - shared driver state.
 *
 * Object model (docs/uapi.md has the user-visible side):
 *
 *   vnpu_device   one PCI function: hardware queues (vnpu_hwq), the device
 *                 MMU's context table, the device-physical memory allocator
 *   vnpu_file     one open file: a device context, software queues
 *   vnpu_ctx      a device address space (context id, page tables, VA
 *                 allocator); refcounted, outlives the file while jobs or
 *                 device memory objects still use it
 *   vnpu_squeue   a software queue of one file (QUEUE_CREATE); jobs of it
 *                 complete in order; attached to one hardware queue
 *   vnpu_hwq      one device queue: command ring, completion ring, IRQ,
 *                 watchdog, recovery
 *   vnpu_job      one submitted job; its lifetime is its dma_fence's
 */
#ifndef VNPU_DRV_H
#define VNPU_DRV_H

#include <linux/atomic.h>
#include <linux/dma-direction.h>
#include <linux/dma-fence.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/llist.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
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

/* Hardware queues the driver drives; a device reporting more is used up to this many. */
#define VNPU_MAX_HWQ 8
/* Command/completion ring entries per hardware queue (clamped to RING_MAX). */
#define VNPU_RING_ENTRIES 1024u
/* Largest host BO. */
#define VNPU_BO_SIZE_MAX SZ_2G
/* io_uring command ABI version reported by DRM_VNPU_PARAM_URING_CMD. */
#define VNPU_URING_CMD_ABI 2
/* Software queues one file may have (ids 0..VNPU_MAX_SQ_PER_FILE-1). */
#define VNPU_MAX_SQ_PER_FILE DRM_VNPU_MAX_QUEUES
/* Lowest device virtual address handed out: address 0 and its page never map. */
#define VNPU_VA_BASE VNPU_MMU_PAGE_SIZE
/* A job caught in this many queue resets without being at fault is failed. */
#define VNPU_MAX_REQUEUES 3
/* Priority of the implicit queue 0. */
#define VNPU_DEFAULT_PRIORITY DRM_VNPU_DEFAULT_PRIORITY
/*
 * A queue remembers the outcome of its latest this many seqnos only: failures
 * (for dependencies named later) and results WAIT has not collected. Older
 * entries are pruned, so neither table grows with the queue's lifetime.
 */
#define VNPU_SEQNO_HISTORY DRM_VNPU_SEQNO_HISTORY
/*
 * Results of ioctl SUBMITs (without DRM_VNPU_SUBMIT_F_EVENT) one file may
 * hold, pending or completed, before SUBMIT fails with -ENOSPC: each is a
 * struct vnpu_result once its job completed (the job itself is freed).
 */
#define VNPU_MAX_RESULTS_PER_FILE DRM_VNPU_MAX_RESULTS
/*
 * New device memory is cleared by H2D DMA from a zeroed buffer of
 * VNPU_ZERO_BUF_SIZE bytes that a list of VNPU_ZERO_SGL_ENTRIES elements
 * repeats: one command clears up to VNPU_ZERO_CHUNK bytes.
 */
#define VNPU_ZERO_BUF_SIZE SZ_64K
#define VNPU_ZERO_SGL_ENTRIES 4096u
#define VNPU_ZERO_CHUNK ((u64)VNPU_ZERO_BUF_SIZE * VNPU_ZERO_SGL_ENTRIES)
/*
 * Bytes one clearing job zeroes: a large allocation is cleared by several
 * jobs, each well within the hang timeout even on a slow (emulated, loaded)
 * device.
 */
#define VNPU_ZERO_JOB_MAX ((u64)SZ_64M)

struct vnpu_device;
struct vnpu_job;
struct vnpu_event;

/**
 * struct vnpu_dep_cb - callback on one dependency fence of a job
 * @cb: the callback
 * @job: the waiting job
 */
struct vnpu_dep_cb {
	struct dma_fence_cb cb;
	struct vnpu_job *job;
};

/**
 * struct vnpu_pt - one 4 KiB device page table in coherent DMA memory
 * @cpu: kernel address of its 512 entries
 * @dma: DMA address the device walks
 * @next: level-1 and level-2 tables: the tables their entries point to
 */
struct vnpu_pt {
	__le64 *cpu;
	dma_addr_t dma;
	struct vnpu_pt **next;
};

/**
 * struct vnpu_ctx - a device address space
 * @ref: references: the file, every device memory object, every job
 * @vdev: device
 * @id: context id (index into the device's context table), >= 1
 * @lock: protects @va, the page tables and @zombies
 * @va: device virtual address allocator
 * @root: level-1 page table
 * @zombies: device memory unmapped but whose device-physical pages wait for
 *           @inflight to drop to zero (a job fetched before the unmap may
 *           still use a cached translation)
 * @inflight: jobs of this context accepted and not yet completed
 * @devmem_bytes: device memory mapped into this context
 * @busy_ns: per engine (h2d, compute, d2h), modelled busy time of completed
 *           jobs, for fdinfo
 * @link: entry in vdev->ctx_list (ctx_lock)
 */
struct vnpu_ctx {
	struct kref ref;
	struct vnpu_device *vdev;
	u32 id;
	struct mutex lock; /* see @lock above */
	struct drm_mm va;
	struct vnpu_pt root;
	struct list_head zombies;
	atomic_t inflight;
	atomic64_t devmem_bytes;
	atomic64_t busy_ns[3];
	struct list_head link;
};

/**
 * struct vnpu_hwq - one hardware command queue
 * @vdev: device
 * @index: hardware queue number; also its MSI-X vector
 * @priority: arbitration priority programmed into the device
 * @irq: Linux IRQ number
 * @lock: protects the ring state, @pending, @hw, @stopped, @dead, @nsq,
 *        @njobs; taken by submitters, the IRQ thread, the watchdog
 * @service_lock: serialises completion processing and recovery
 * @sq: command ring
 * @sq_dma: its DMA address
 * @cq: completion ring
 * @cq_dma: its DMA address
 * @entries: entries of each ring (power of two)
 * @sq_tail: free-running count of command entries written
 * @sq_free: free-running index below which command entries may be reused
 * @cq_head: next completion ring index to consume (wrapped)
 * @cq_phase: phase bit value of a valid completion in this pass
 * @next_tag: last tag handed out (tags are never 0)
 * @db_cb: an unplug callback for this queue is registered in a task's block
 *         plug (it holds a DRM device reference)
 * @db_owed: jobs written to the ring since the last doorbell write
 * @doorbells: SQ_TAIL doorbell writes (sysfs doorbells)
 * @pending: jobs ready to run, not yet on the ring (FIFO)
 * @hw: jobs on the ring, in ring order
 * @njobs: jobs on @pending and @hw
 * @nsq: software queues attached
 * @stopped: feeding paused (recovery)
 * @dead: unusable (device removed or queue could not be restarted)
 * @dead_status: errno jobs fail with once @dead
 * @dead_end: enum drm_vnpu_job_end they fail with once @dead
 * @reset_head: SQ_HEAD when the device was quiesced for a device reset
 * @awaiting_reset: its queue reset did not finish; stopped, with every job
 *                  still on @hw, until the device reset (vnpu_device_recover)
 * @corrupt: a completion with an unknown tag was seen; reset pending
 * @head_seq: feed_seq of the oldest job on the ring when the watchdog last
 *            looked (0: none, or the clock must restart)
 * @head_since: jiffies since which that job has been the oldest unfinished
 *              job the driver handed to the device (its hang clock)
 * @watchdog: polls for lost interrupts and hung jobs while jobs are on it
 * @resets: queue resets done
 * @bad_cpls: completion records rejected (unknown tag or context, ring
 *            overrun); each one resets the queue
 */
struct vnpu_hwq {
	struct vnpu_device *vdev;
	u32 index;
	u32 priority;
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
	u64 next_tag;
	bool db_cb;
	u32 db_owed;
	atomic64_t doorbells;

	struct list_head pending;
	struct list_head hw;
	u32 njobs;
	u32 nsq;
	bool stopped;
	bool dead;
	int dead_status;
	u32 dead_end;
	u32 reset_head;
	bool awaiting_reset;
	bool corrupt;
	u64 head_seq;
	unsigned long head_since;
	struct delayed_work watchdog;
	atomic64_t resets;
	atomic64_t bad_cpls;
};

/**
 * struct vnpu_device - one vnpu PCI function
 * @drm: DRM device (embedded)
 * @regs: BAR0 registers
 * @caps: VNPU_REG_CAPS
 * @version: VNPU_REG_VERSION
 * @devmem_size: bytes of device memory
 * @num_hwq: hardware queues in use
 * @num_contexts: device contexts (ids 1..num_contexts-1 are given to files)
 * @compute_cores: VNPU_REG_COMPUTE_CORES
 * @max_cmds: largest job, in commands
 * @h2d_mbps: timing model, H2D bandwidth (MB/s), for job cost estimates
 * @d2h_mbps: timing model, D2H bandwidth (MB/s)
 * @gflops: timing model, compute throughput of one core (GFLOP/s)
 * @feed_seq: jobs written to any ring so far (the order the device can
 *            have fetched them in)
 * @mm_lock: protects @mm and @devmem_used
 * @mm: allocator over device-physical memory [0, devmem_size)
 * @devmem_used: bytes allocated from @mm (including unmapped zombies)
 * @ctx_ida: context ids
 * @ctx_table: context table (coherent DMA memory)
 * @ctx_table_dma: its DMA address
 * @ctx_table_bytes: its size
 * @ctx_lock: serialises context table updates and invalidations
 * @contexts: live contexts
 * @ctx_list: live contexts (@ctx_lock), whose page tables remove frees
 * @unplugged: remove freed the context table and page tables (@ctx_lock)
 * @bo_lock: protects @bo_list
 * @bo_list: host BOs with DMA mappings, which remove unmaps
 * @inflight: jobs accepted and not yet completed, device-wide
 * @jobs_completed: jobs completed with status 0
 * @jobs_failed: jobs completed with an error
 * @ready: jobs whose dependencies were satisfied from a fence callback
 * @ready_work: moves @ready jobs on in process context, on @ready_wq
 * @ready_wq: the device's own workqueue for @ready_work, drained and
 *            destroyed on remove so no work runs after it
 * @kq: the driver's own software queue (clearing new device memory)
 * @zero_buf: VNPU_ZERO_BUF_SIZE zero bytes in coherent DMA memory
 * @zero_dma: its DMA address
 * @zero_sgl: VNPU_ZERO_SGL_ENTRIES list elements, each @zero_buf
 * @zero_sgl_dma: its DMA address
 * @reset_lock: serialises device resets (vnpu_device_recover, PCI reset
 *              and error callbacks); taken before any queue's service_lock
 * @reset_jobs: jobs completed while quiescing, published after restart
 * @reset_work: runs vnpu_device_recover when a queue reset did not finish
 * @device_resets: device resets done by recovery
 * @stopping: remove or shutdown took the device; no more recovery
 * @wedged: the device did not come back from a reset: bus mastering is off,
 *          every queue is dead, nothing is fed to it until it is rebound
 * @hwq: hardware queues
 */
struct vnpu_device {
	struct drm_device drm;
	void __iomem *regs;
	u32 caps;
	u32 version;
	u64 devmem_size;
	u32 num_hwq;
	u32 num_contexts;
	u32 compute_cores;
	u32 max_cmds;
	u32 h2d_mbps;
	u32 d2h_mbps;
	u32 gflops;
	atomic64_t feed_seq;

	struct mutex mm_lock; /* see @mm_lock above */
	struct drm_mm mm;
	u64 devmem_used;

	struct ida ctx_ida;
	struct vnpu_hw_ctx *ctx_table;
	dma_addr_t ctx_table_dma;
	size_t ctx_table_bytes;
	struct mutex ctx_lock; /* see @ctx_lock above */
	atomic_t contexts;
	struct list_head ctx_list;
	bool unplugged;
	struct mutex bo_lock; /* see @bo_lock above */
	struct list_head bo_list;

	atomic_t inflight;
	atomic64_t jobs_completed;
	atomic64_t jobs_failed;
	struct llist_head ready;
	struct work_struct ready_work;
	struct workqueue_struct *ready_wq;

	struct vnpu_squeue *kq;
	void *zero_buf;
	dma_addr_t zero_dma;
	struct vnpu_hw_sge *zero_sgl;
	dma_addr_t zero_sgl_dma;

	struct mutex reset_lock; /* see @reset_lock above */
	struct list_head reset_jobs;
	struct work_struct reset_work;
	atomic64_t device_resets;
	bool stopping;
	bool wedged;

	struct vnpu_hwq hwq[VNPU_MAX_HWQ];
};

/**
 * struct vnpu_squeue - a software queue of one file
 * @ref: references: the file's queue table, every job of it
 * @vdev: device
 * @hwq: hardware queue it is multiplexed onto
 * @id: queue id within the file
 * @priority: requested priority
 * @fence_ctx: dma_fence context of its jobs
 * @submit_lock: serialises SUBMITs on this queue (seqno order = queue order)
 * @lock: protects @order, @waiting, @last_seqno and the xarrays' consistency
 * @order: jobs not yet completed, in seqno order
 * @waiting: jobs not yet handed to @hwq (dependencies, or an earlier job
 *           still waiting), in seqno order
 * @last_seqno: last seqno handed out
 * @active: seqno -> job not yet completed (no reference; for dependencies)
 * @failed: seqno -> xa_mk_value(-errno) of completed jobs that failed, for
 *          the latest VNPU_SEQNO_HISTORY seqnos (@lock); the slot of every
 *          job is reserved at SUBMIT (reads as NULL) and released when the
 *          job completes successfully
 * @waits: seqno -> result of a job submitted by ioctl without an event:
 *         the job (a reference) until it completes, then its struct
 *         vnpu_result (tagged 1); until WAIT collects it or it falls out of
 *         the latest VNPU_SEQNO_HISTORY seqnos
 * @detached: the queue was destroyed or its file closed (@submit_lock)
 * @cancelled: its file was closed: jobs not yet handed to the hardware
 *             queue complete with -ECANCELED instead (@lock)
 * @retiring: a thread is completing the queue's done jobs in order (@lock)
 */
struct vnpu_squeue {
	struct kref ref;
	struct vnpu_device *vdev;
	struct vnpu_hwq *hwq;
	u32 id;
	u32 priority;
	u64 fence_ctx;
	struct mutex submit_lock; /* see @submit_lock above */
	spinlock_t lock; /* see @lock above */
	struct list_head order;
	struct list_head waiting;
	u64 last_seqno;
	struct xarray active;
	struct xarray failed;
	struct xarray waits;
	bool detached;
	bool cancelled;
	bool retiring;
};

/**
 * struct vnpu_result - what WAIT returns about a completed job
 * @status: 0 or negative errno
 * @hw_status: enum vnpu_cpl_status
 * @t_start: device clock at start
 * @t_end: device clock at completion
 */
struct vnpu_result {
	s32 status;
	u32 hw_status;
	u64 t_start;
	u64 t_end;
};

/**
 * struct vnpu_file - per-open-file state
 * @vdev: device
 * @lock: protects @ctx creation
 * @ctx: device context, created on first use (NULL before)
 * @queues: queue id -> struct vnpu_squeue (a reference)
 * @results: entries in the @waits of its queues, at most
 *           VNPU_MAX_RESULTS_PER_FILE
 */
struct vnpu_file {
	struct vnpu_device *vdev;
	struct mutex lock; /* see @lock above */
	struct vnpu_ctx *ctx;
	struct xarray queues;
	atomic_t results;
};

/**
 * struct vnpu_bo - host buffer object: GEM shmem, pages pinned and DMA-mapped
 * at creation, described to the device by a scatter-gather list
 * @base: shmem object
 * @sgl: scatter-gather list in coherent DMA memory
 * @sgl_dma: its DMA address
 * @sgl_count: entries in @sgl
 * @flags: DRM_VNPU_BO_* it was created with
 * @user: the user its pinned pages are charged to (RLIMIT_MEMLOCK), or
 *        NULL (created with CAP_IPC_LOCK)
 * @locked_pages: pages charged to @user
 * @link: entry in vdev->bo_list while DMA-mapped
 */
struct vnpu_bo {
	struct drm_gem_shmem_object base;
	struct vnpu_hw_sge *sgl;
	dma_addr_t sgl_dma;
	u32 sgl_count;
	u32 flags;
	struct user_struct *user;
	unsigned long locked_pages;
	struct list_head link;
};

/**
 * struct vnpu_mem - device memory: device-physical pages mapped at a device
 * virtual address of one context (GEM object without CPU pages)
 * @base: GEM object
 * @ctx: the context it is mapped into (a reference)
 * @phys: device-physical range
 * @va: device virtual range in @ctx
 * @zombie: entry in ctx->zombies after the object was freed
 */
struct vnpu_mem {
	struct drm_gem_object base;
	struct vnpu_ctx *ctx;
	struct drm_mm_node phys;
	struct drm_mm_node va;
	struct list_head zombie;
};

/**
 * struct vnpu_ubo - user memory as a host object (USERPTR): the caller's
 * pages pinned with FOLL_LONGTERM and DMA-mapped, described to the device by
 * a scatter-gather list like a BO's
 * @base: GEM object (private: no shmem, no mmap offset)
 * @pages: the pinned pages
 * @npages: entries in @pages
 * @sgt: their DMA mapping
 * @sgl: scatter-gather list in coherent DMA memory
 * @sgl_dma: its DMA address
 * @sgl_count: entries in @sgl
 * @flags: DRM_VNPU_USERPTR_* it was created with
 * @user: the user the pages are charged to (RLIMIT_MEMLOCK), or NULL
 */
struct vnpu_ubo {
	struct drm_gem_object base;
	struct page **pages;
	unsigned long npages;
	struct sg_table sgt;
	struct vnpu_hw_sge *sgl;
	dma_addr_t sgl_dma;
	u32 sgl_count;
	u32 flags;
	struct user_struct *user;
};

/* How a USERPTR object is DMA-mapped: the device only reads a read-only one. */
static inline enum dma_data_direction
vnpu_ubo_dma_dir(const struct vnpu_ubo *ubo)
{
	return ubo->flags & DRM_VNPU_USERPTR_READ_ONLY ? DMA_TO_DEVICE :
							 DMA_BIDIRECTIONAL;
}

struct vnpu_signal_event;
struct vnpu_fixed;

enum vnpu_job_state {
	VNPU_JOB_WAITING, /* on squeue->waiting */
	VNPU_JOB_READY, /* on hwq->pending */
	VNPU_JOB_RING, /* on hwq->hw */
	VNPU_JOB_DONE, /* result known; waits for earlier jobs of its queue */
};

/**
 * struct vnpu_job - one submitted job
 * @fence: signalled when the job completed, in queue order, with its error;
 *         its reference count is the job's
 * @fence_lock: the fence's lock; also guards @ucmd
 * @vdev: device (a DRM device reference is held)
 * @sq: software queue (a reference)
 * @ctx: device context (a reference until completion)
 * @seqno: sequence number on @sq
 * @user_data: from the submission
 * @order_link: entry in sq->order
 * @link: entry in sq->waiting, hwq->pending or hwq->hw
 * @state: enum vnpu_job_state
 * @cmds: hardware commands, built at validation (ctx_id/tag/flags at feed)
 * @ncmds: number of @cmds
 * @sq_start: free-running ring index of the first command once on the ring
 * @tag: hardware tag while on the ring
 * @feed_seq: vdev->feed_seq when it was last written to a ring
 * @cost_ns: estimated modelled device time (0 = not estimated yet, or free)
 * @costed: @cost_ns is known
 * @objs: GEM objects referenced (a reference each, dropped at completion)
 * @nobjs: number of @objs
 * @report_bo: host BO receiving the job report, or NULL (also in @objs)
 * @report_offset: byte offset of the report
 * @deps: dependency fences (a reference each)
 * @dep_cbs: callbacks on @deps
 * @ndeps: number of @deps
 * @deps_pending: unsignalled dependencies + 1 until the job is queued
 * @dep_failed: a dependency completed with an error
 * @ready_node: entry in vdev->ready
 * @event: DRM event to send at completion, or NULL
 * @sig_ev: per SIGNAL command, its DRM event reserved at SUBMIT until sent
 * @sig_cmd: per SIGNAL command, its index in @cmds (in command order)
 * @nsignals: SIGNAL commands in the job
 * @signals_sent: SIGNAL events sent so far (reached, in order)
 * @fixed: io_uring registered-buffer range of the command (IORING_URING_CMD_FIXED), or NULL
 * @ucmd: io_uring command to complete, or NULL (@fence_lock)
 * @result: for a job in sq->waits, its result record, stored there in
 *          place of the job when it completes
 * @requeues: times the job was put back after a queue reset
 * @aborted: recovery saw an ABORTED completion for it
 * @started: that ABORTED completion says it had started (t_start < t_end,
 *           or busy time on an engine): it is never run again
 * @accounted: counted in vdev->inflight and ctx->inflight
 * @status: 0 or negative errno, valid in state DONE
 * @hw_status: enum vnpu_cpl_status, valid in state DONE
 * @t_submit: CLOCK_MONOTONIC ns at acceptance
 * @t_start: device clock at start
 * @t_end: device clock at completion
 * @fault_addr: faulting device virtual address for MMU faults
 * @busy_ns: modelled busy ns per engine (h2d, compute, d2h)
 */
struct vnpu_job {
	struct dma_fence fence;
	spinlock_t fence_lock; /* see @fence_lock above */
	struct vnpu_device *vdev;
	struct vnpu_squeue *sq;
	struct vnpu_ctx *ctx;
	u64 seqno;
	u64 user_data;
	struct list_head order_link;
	struct list_head link;
	enum vnpu_job_state state;

	struct vnpu_hw_cmd *cmds;
	u32 ncmds;
	u32 sq_start;
	u64 tag;
	u64 feed_seq;
	u64 cost_ns;
	bool costed;

	struct drm_gem_object **objs;
	u32 nobjs;
	struct vnpu_bo *report_bo;
	u64 report_offset;

	struct dma_fence *deps[DRM_VNPU_MAX_DEPS];
	struct vnpu_dep_cb dep_cbs[DRM_VNPU_MAX_DEPS];
	u32 ndeps;
	atomic_t deps_pending;
	bool dep_failed;
	struct llist_node ready_node;

	struct vnpu_event *event;
	struct vnpu_signal_event *sig_ev[DRM_VNPU_MAX_SIGNALS];
	u8 sig_cmd[DRM_VNPU_MAX_SIGNALS];
	u8 nsignals;
	u8 signals_sent;
	struct vnpu_fixed *fixed;
	struct io_uring_cmd *ucmd;
	struct vnpu_result *result;
	u32 requeues;
	bool aborted;
	bool started;
	bool accounted;

	int status;
	u32 hw_status;
	u64 t_submit;
	u64 t_start;
	u64 t_end;
	u64 fault_addr;
	u32 busy_ns[3];
};

/*
 * vnpu_hw.h, shared with the device model and user space, declares the
 * little-endian fields of rings, lists and tables as plain __u16/__u32/
 * __u64. These convert to and from them and tell sparse that they do.
 */
#define vnpu_hw16(v) ((__force __u16)cpu_to_le16(v))
#define vnpu_hw32(v) ((__force __u32)cpu_to_le32(v))
#define vnpu_hw64(v) ((__force __u64)cpu_to_le64(v))
#define vnpu_cpu16(v) le16_to_cpu((__force __le16)(v))
#define vnpu_cpu32(v) le32_to_cpu((__force __le32)(v))
#define vnpu_cpu64(v) le64_to_cpu((__force __le64)(v))

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

static inline u64 vnpu_rd64(struct vnpu_device *vdev, u32 lo)
{
	u32 l, h;

	/*
	 * Reading LO latches HI for the reading CPU (docs/device.md), so both
	 * halves must be read on one CPU: no migration in between.
	 */
	preempt_disable();
	l = vnpu_rd(vdev, lo);
	h = vnpu_rd(vdev, lo + 4);
	preempt_enable();
	return (u64)h << 32 | l;
}

static inline u32 vnpu_qrd(struct vnpu_hwq *q, u32 reg)
{
	return vnpu_rd(q->vdev, VNPU_REG_QUEUE(q->index, reg));
}

static inline void vnpu_qwr(struct vnpu_hwq *q, u32 reg, u32 val)
{
	vnpu_wr(q->vdev, VNPU_REG_QUEUE(q->index, reg), val);
}

/* vnpu_mmu.c */
int vnpu_mmu_init(struct vnpu_device *vdev);
void vnpu_mmu_hw_init(struct vnpu_device *vdev);
void vnpu_mmu_unplug(struct vnpu_device *vdev);
struct vnpu_ctx *vnpu_ctx_create(struct vnpu_device *vdev);
void vnpu_ctx_put(struct vnpu_ctx *ctx);
void vnpu_ctx_job_done(struct vnpu_ctx *ctx);
int vnpu_ctx_map(struct vnpu_ctx *ctx, u64 va, u64 pa, u64 size);
void vnpu_ctx_unmap(struct vnpu_ctx *ctx, u64 va, u64 size);
void vnpu_mem_retire(struct vnpu_mem *mem);

/* vnpu_gem.c */
struct drm_gem_object *vnpu_gem_create_object(struct drm_device *drm,
					      size_t size);
struct vnpu_bo *vnpu_bo_from_gem(struct drm_gem_object *obj);
struct vnpu_mem *vnpu_mem_from_gem(struct drm_gem_object *obj);
int vnpu_devmem_init(struct vnpu_device *vdev);
u64 vnpu_devmem_used(struct vnpu_device *vdev);
void vnpu_mem_release_phys(struct vnpu_mem *mem);
void vnpu_bo_unplug_all(struct vnpu_device *vdev);
void vnpu_sgt_sync(struct device *dev, struct sg_table *sgt, u64 off, u64 len,
		   bool for_device, enum dma_data_direction dir);
int vnpu_bo_create_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file);
int vnpu_bo_info_ioctl(struct drm_device *drm, void *data,
		       struct drm_file *file);
int vnpu_mem_alloc_ioctl(struct drm_device *drm, void *data,
			 struct drm_file *file);
u64 vnpu_file_host_bytes(struct drm_file *file);
struct vnpu_ubo *vnpu_ubo_from_gem(struct drm_gem_object *obj);
int vnpu_userptr_ioctl(struct drm_device *drm, void *data,
		       struct drm_file *file);

/* vnpu_drv.c */
struct vnpu_ctx *vnpu_file_ctx(struct vnpu_file *vfile);
u64 vnpu_device_clock(struct vnpu_device *vdev);

/* vnpu_job.c */
extern unsigned int vnpu_max_inflight;
int vnpu_hwq_init(struct vnpu_device *vdev, struct vnpu_hwq *q, u32 index,
		  int irq);
void vnpu_hwq_fini(struct vnpu_hwq *q);
void vnpu_reset_work(struct work_struct *work);
void vnpu_device_quiesce(struct vnpu_device *vdev);
void vnpu_device_restart(struct vnpu_device *vdev, bool reset_done);
void vnpu_device_recover(struct vnpu_device *vdev);
void vnpu_device_stop(struct vnpu_device *vdev);
irqreturn_t vnpu_irq_handler(int irq, void *arg);
irqreturn_t vnpu_irq_thread(int irq, void *arg);
void vnpu_ready_work(struct work_struct *work);
struct vnpu_squeue *vnpu_squeue_create(struct vnpu_device *vdev, u32 id,
				       u32 priority);
void vnpu_squeue_put(struct vnpu_squeue *sq);
void vnpu_squeue_detach(struct vnpu_squeue *sq, struct vnpu_file *vfile,
			bool cancel);
int vnpu_queue_create_ioctl(struct drm_device *drm, void *data,
			    struct drm_file *file);
int vnpu_queue_destroy_ioctl(struct drm_device *drm, void *data,
			     struct drm_file *file);
int vnpu_submit_ioctl(struct drm_device *drm, void *data,
		      struct drm_file *file);
int vnpu_wait_ioctl(struct drm_device *drm, void *data, struct drm_file *file);
int vnpu_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags);
int vnpu_kernel_queue_init(struct vnpu_device *vdev);
int vnpu_mem_clear(struct vnpu_device *vdev, struct vnpu_mem *mem);

/* vnpu_sysfs.c */
int vnpu_sysfs_init(struct vnpu_device *vdev);
void vnpu_debugfs_init(struct vnpu_device *vdev);

#endif /* VNPU_DRV_H */
