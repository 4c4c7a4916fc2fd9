// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: jobs - validation, dependencies, software and hardware queues,
 * completion (fence, report, event, io_uring, WAIT), timeouts and recovery.
 *
 * A batch is validated and translated into hardware commands before anything
 * is queued, so a bad submission never reaches the device. Each job carries a
 * dma_fence, the single source of truth for its completion: the report BO,
 * the DRM event, the io_uring CQE and WAIT all follow from the moment the
 * fence is signalled, and the fence holds the job's reference count.
 *
 * Path of a job: software queue (squeue->waiting, until its dependencies are
 * signalled and every earlier job of the queue moved on) -> the hardware
 * queue's software backlog (hwq->pending, so a full ring never fails a
 * submission) -> the command ring (hwq->hw) -> completion record -> DONE ->
 * signalled once every earlier job of its software queue is signalled too.
 *
 * A watchdog per hardware queue polls for completions whose interrupt went
 * missing and resets a queue that made no progress for job_timeout_ms.
 */
#include <linux/blkdev.h>
#include <linux/capability.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/iopoll.h>
#include <linux/io_uring/cmd.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/nospec.h>
#include <linux/overflow.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include <drm/drm_drv.h>
#include <drm/drm_print.h>
#include <drm/drm_utils.h>

#include "vnpu_drv.h"
#include "vnpu_trace.h"

unsigned int vnpu_max_inflight = 4096;
module_param_named(max_inflight, vnpu_max_inflight, uint, 0644);
MODULE_PARM_DESC(max_inflight,
		 "Jobs accepted and not yet completed per device before SUBMIT returns -EBUSY (default 4096)");

static unsigned int vnpu_job_timeout_ms = 10000;
module_param_named(job_timeout_ms, vnpu_job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms,
		 "A job that has been the oldest unfinished job on the device for this long is hung: it fails with -ETIMEDOUT and its hardware queue is reset; 0 disables (default 10000)");

static unsigned int vnpu_hwq_budget_ms = 100;
module_param_named(hw_queue_budget_ms, vnpu_hwq_budget_ms, uint, 0644);
MODULE_PARM_DESC(hw_queue_budget_ms,
		 "Estimated device time one hardware queue may have written to its ring beyond one job per compute core; later jobs wait in the driver, where a higher-priority queue's job can still overtake them; 0 = no limit (default 100)");

static unsigned int vnpu_watchdog_ms = 100;
module_param_named(watchdog_ms, vnpu_watchdog_ms, uint, 0644);
MODULE_PARM_DESC(watchdog_ms,
		 "Period of the per-queue watchdog that collects completions whose interrupt was lost (default 100)");

/* Tag of a struct vnpu_result in sq->waits (a job pointer has tag 0). */
#define VNPU_WAIT_RESULT 1

/* Per-command state of an io_uring SUBMIT: the job, holding a reference. */
struct vnpu_uring_pdu {
	struct vnpu_job *job;
};

/**
 * struct vnpu_event - a DRM event reserved at SUBMIT, sent at completion
 * @base: DRM bookkeeping
 * @ev: what read(2) returns
 */
struct vnpu_event {
	struct drm_pending_event base;
	struct drm_vnpu_event_job ev;
};

/**
 * struct vnpu_signal_event - a DRM event reserved at SUBMIT for one SIGNAL
 * command, sent when the device reports it reached (or at the job's
 * completion, if it never was)
 * @base: DRM bookkeeping
 * @ev: what read(2) returns
 */
struct vnpu_signal_event {
	struct drm_pending_event base;
	struct drm_vnpu_event_signal ev;
};

/**
 * struct vnpu_fixed - the io_uring registered-buffer range of one SUBMIT
 * command (IORING_URING_CMD_FIXED), DMA-mapped for its job's copies
 * @mapped: @sgt is DMA-mapped (until the job completes)
 * @dev: the DMA device
 * @pages: the range's pages, a reference each (held until the job is freed,
 *         as io_uring may unpin its buffer when the command is cancelled)
 * @npages: entries in @pages
 * @sgt: their DMA mapping
 * @sgl: scatter-gather list for the device, in coherent DMA memory
 * @sgl_dma: its DMA address
 * @sgl_count: entries in @sgl
 * @len: bytes of the range
 */
struct vnpu_fixed {
	bool mapped;
	struct device *dev;
	struct page **pages;
	unsigned int npages;
	struct sg_table sgt;
	struct vnpu_hw_sge *sgl;
	dma_addr_t sgl_dma;
	u32 sgl_count;
	u64 len;
};

enum { VNPU_ENG_H2D, VNPU_ENG_COMPUTE, VNPU_ENG_D2H };

static void vnpu_hwq_feed(struct vnpu_hwq *q);
static void vnpu_jobs_done(struct list_head *jobs);
static void vnpu_fixed_free(struct vnpu_fixed *f);

/* ---- fences and job lifetime --------------------------------------------- */

static const char *vnpu_fence_driver_name(struct dma_fence *f)
{
	return VNPU_DRIVER_NAME;
}

static const char *vnpu_fence_timeline_name(struct dma_fence *f)
{
	return "vnpu-queue";
}

static void vnpu_job_drop_objs(struct vnpu_job *job)
{
	while (job->nobjs)
		drm_gem_object_put(job->objs[--job->nobjs]);
	while (job->ndeps)
		dma_fence_put(job->deps[--job->ndeps]);
}

/* The last reference to the fence is gone; process context only. */
static void vnpu_fence_release(struct dma_fence *f)
{
	struct vnpu_job *job = container_of(f, struct vnpu_job, fence);
	struct vnpu_device *vdev = job->vdev;
	unsigned int i;

	if (job->fixed)
		vnpu_fixed_free(job->fixed);
	/* Events of a job that was never queued (a failed SUBMIT). */
	for (i = 0; i < job->nsignals; i++)
		if (job->sig_ev[i])
			drm_event_cancel_free(&vdev->drm, &job->sig_ev[i]->base);
	vnpu_job_drop_objs(job);
	if (job->ctx)
		vnpu_ctx_put(job->ctx);
	if (job->sq)
		vnpu_squeue_put(job->sq);
	kfree(job->result);
	kfree(job->objs);
	kfree(job->cmds);
	dma_fence_free(f);
	drm_dev_put(&vdev->drm);
}

static const struct dma_fence_ops vnpu_fence_ops = {
	.get_driver_name = vnpu_fence_driver_name,
	.get_timeline_name = vnpu_fence_timeline_name,
	.release = vnpu_fence_release,
};

static void vnpu_job_get(struct vnpu_job *job)
{
	dma_fence_get(&job->fence);
}

static void vnpu_job_put(struct vnpu_job *job)
{
	dma_fence_put(&job->fence);
}

static int vnpu_cpl_errno(u32 hw_status)
{
	switch (hw_status) {
	case VNPU_CPL_OK:
		return 0;
	case VNPU_CPL_MMU_FAULT:
		return -EFAULT;
	case VNPU_CPL_ABORTED:
		return -ECANCELED;
	default:
		return -EIO;
	}
}

/*
 * Hand the host BO ranges of the job's copy commands to the device (before
 * it is queued: the caller finished writing its inputs) or back to the CPU
 * (after it completed, before anyone learns so). Streaming mappings need
 * this when they bounce (swiotlb) or the CPU caches are not coherent.
 */
static void vnpu_job_sync(struct vnpu_job *job, bool for_device)
{
	u32 i, k;

	for (i = 0; i < job->ncmds; i++) {
		const struct vnpu_hw_cmd *c = &job->cmds[i];
		bool h2d = c->opcode == VNPU_OPC_DMA_H2D;

		if (!h2d && c->opcode != VNPU_OPC_DMA_D2H)
			continue;
		if (!for_device && h2d)
			continue;
		for (k = 0; k < job->nobjs; k++) {
			struct vnpu_bo *bo = vnpu_bo_from_gem(job->objs[k]);
			struct vnpu_ubo *ubo = vnpu_ubo_from_gem(job->objs[k]);
			struct sg_table *sgt = NULL;

			if (bo && bo->sgl_dma == vnpu_cpu64(c->dma.sgl_addr))
				sgt = bo->base.sgt;
			else if (ubo &&
				 ubo->sgl_dma == vnpu_cpu64(c->dma.sgl_addr))
				sgt = &ubo->sgt;
			if (!sgt)
				continue;
			vnpu_sgt_sync(job->vdev->drm.dev, sgt,
				      vnpu_cpu64(c->dma.sgl_offset),
				      vnpu_cpu64(c->dma.length), for_device,
				      h2d ? DMA_TO_DEVICE : DMA_FROM_DEVICE);
			break;
		}
	}
}

/* Copy into a host BO whose pages are pinned while the job holds it. */
static void vnpu_bo_write(struct vnpu_bo *bo, u64 off, const void *src,
			  size_t len)
{
	while (len) {
		struct page *page = bo->base.pages[off >> PAGE_SHIFT];
		size_t in = off & ~PAGE_MASK;
		size_t n = min_t(size_t, len, PAGE_SIZE - in);
		void *vaddr = kmap_local_page(page);

		memcpy(vaddr + in, src, n);
		kunmap_local(vaddr);
		off += n;
		src += n;
		len -= n;
	}
}

static void vnpu_job_write_report(struct vnpu_job *job)
{
	struct drm_vnpu_job_report r = {
		.seqno = job->seqno,
		.user_data = job->user_data,
		.status = job->status,
		.hw_status = job->hw_status,
		.t_submit = job->t_submit,
		.t_start = job->t_start,
		.t_end = job->t_end,
		.fault_addr = job->fault_addr,
		.h2d_ns = job->busy_ns[VNPU_ENG_H2D],
		.compute_ns = job->busy_ns[VNPU_ENG_COMPUTE],
		.d2h_ns = job->busy_ns[VNPU_ENG_D2H],
	};
	u32 valid = DRM_VNPU_REPORT_F_VALID;

	vnpu_bo_write(job->report_bo, job->report_offset, &r,
		      offsetof(struct drm_vnpu_job_report, flags));
	/* A reader that sees VALID sees every other field. */
	smp_wmb();
	vnpu_bo_write(job->report_bo, job->report_offset +
		      offsetof(struct drm_vnpu_job_report, flags),
		      &valid, sizeof(valid));
}

/* Send the event of the job's SIGNAL @k (reached at @t, or not: @status). */
static void vnpu_job_send_signal(struct vnpu_job *job, unsigned int k,
				 int status, u64 t)
{
	struct vnpu_signal_event *e = job->sig_ev[k];

	job->sig_ev[k] = NULL;
	e->ev.status = status;
	e->ev.t_signal = t;
	drm_send_event(&job->vdev->drm, &e->base);
}

/*
 * The job is complete: the events of SIGNALs it never reached go out now,
 * before its fence, event or CQE, so that each SIGNAL gives exactly one
 * event and all of them precede the job's completion.
 */
static void vnpu_job_flush_signals(struct vnpu_job *job)
{
	unsigned int k;

	for (k = job->signals_sent; k < job->nsignals; k++)
		/* A successful job without a record for it: a device fault. */
		vnpu_job_send_signal(job, k, job->status ?: -EIO, 0);
	job->signals_sent = job->nsignals;
}

static void vnpu_uring_task_done(struct io_uring_cmd *cmd,
				 unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	struct vnpu_job *job = pdu->job;

	io_uring_cmd_done(cmd, job->status, job->seqno, issue_flags);
	vnpu_job_put(job);
}

/*
 * The device is done with the job's registered-buffer range: unmapping it
 * makes what the device wrote visible to the CPU before anyone learns the
 * job completed. USERPTR objects stay mapped for later jobs and are synced
 * by range in vnpu_job_sync(): a whole-object sync for the CPU copied stale
 * bounce buffers (swiotlb) over the rest of the caller's pages, corrupting
 * the heap next to an imported tensor.
 */
static void vnpu_job_sync_user_memory(struct vnpu_job *job)
{
	struct device *dev = job->vdev->drm.dev;

	if (job->fixed && job->fixed->mapped) {
		dma_unmap_sgtable(dev, &job->fixed->sgt, DMA_BIDIRECTIONAL, 0);
		job->fixed->mapped = false;
	}
}

/*
 * The job and every earlier job of its queue are done: publish the result
 * (report, statistics, fence, event, CQE) and release what it used. Drops
 * the queue's reference. Process context.
 */
static void vnpu_job_complete(struct vnpu_job *job)
{
	struct vnpu_device *vdev = job->vdev;
	struct vnpu_ctx *ctx = job->ctx;
	struct io_uring_cmd *ucmd;
	unsigned long flags;
	unsigned int i;

	trace_vnpu_job_complete(job);
	vnpu_job_flush_signals(job);
	vnpu_job_sync(job, false);
	if (job->report_bo)
		vnpu_job_write_report(job);
	for (i = 0; i < ARRAY_SIZE(job->busy_ns); i++)
		atomic64_add(job->busy_ns[i], &ctx->busy_ns[i]);
	atomic64_inc(job->status ? &vdev->jobs_failed : &vdev->jobs_completed);

	/*
	 * The device is done with the job's objects: let them go before anyone
	 * learns the job completed, so that a waiter sees closed objects (and
	 * device memory deferred until the context is idle) already released.
	 */
	vnpu_job_sync_user_memory(job);
	vnpu_job_drop_objs(job);
	if (job->accounted) {
		job->accounted = false;
		atomic_dec(&vdev->inflight);
		vnpu_ctx_job_done(ctx);
	}

	/*
	 * A result WAIT may collect: keep only the record, let the job go.
	 * Replacing an entry allocates nothing. Before the fence, so that a
	 * waiter woken by it finds the record.
	 */
	if (job->result) {
		struct vnpu_result *r = job->result;

		r->status = job->status;
		r->hw_status = job->hw_status;
		r->t_start = job->t_start;
		r->t_end = job->t_end;
		if (xa_cmpxchg(&job->sq->waits, job->seqno, job,
			       xa_tag_pointer(r, VNPU_WAIT_RESULT),
			       GFP_NOWAIT) == job) {
			job->result = NULL;
			/* The table's reference; the queue's is still held. */
			vnpu_job_put(job);
		}
	}

	if (job->status)
		dma_fence_set_error(&job->fence, job->status);
	dma_fence_signal(&job->fence);

	if (job->event) {
		job->event->ev.user_data = job->user_data;
		job->event->ev.seqno = job->seqno;
		job->event->ev.status = job->status;
		job->event->ev.queue_id = job->sq->id;
		drm_send_event(&vdev->drm, &job->event->base);
		job->event = NULL;
	}

	/* Exactly one of this and vnpu_uring_cancel() takes the command. */
	spin_lock_irqsave(&job->fence_lock, flags);
	ucmd = job->ucmd;
	job->ucmd = NULL;
	spin_unlock_irqrestore(&job->fence_lock, flags);
	if (ucmd)
		io_uring_cmd_complete_in_task(ucmd, vnpu_uring_task_done);

	job->ctx = NULL;
	vnpu_ctx_put(ctx);
	vnpu_job_put(job);
}

/*
 * Forget failures older than the queue's history window. Slots reserved for
 * jobs still running read as empty and are skipped: each job's own
 * completion fills or releases its slot. sq->lock held.
 */
static void vnpu_squeue_prune_failed(struct vnpu_squeue *sq)
{
	unsigned long seqno;
	void *entry;

	lockdep_assert_held(&sq->lock);
	if (sq->last_seqno <= VNPU_SEQNO_HISTORY)
		return;
	/* Each entry is erased once: amortised O(1) per recorded failure. */
	xa_for_each_range(&sq->failed, seqno, entry, 0,
			  sq->last_seqno - VNPU_SEQNO_HISTORY)
		xa_erase(&sq->failed, seqno);
}

/*
 * @job has a result. Signal it and every following job of its queue that is
 * done too; a job done before an earlier one waits for it (queues complete
 * in order). Process context, no locks held.
 */
static void vnpu_job_done(struct vnpu_job *job)
{
	struct vnpu_squeue *sq = job->sq;
	struct vnpu_job *j, *tmp;
	LIST_HEAD(retire);

	spin_lock(&sq->lock);
	job->state = VNPU_JOB_DONE;
	/*
	 * One thread at a time retires a queue's jobs (IRQ threads, the
	 * watchdog and ready work can all get here), so that fences, events
	 * and CQEs of a queue follow seqno order. Another one busy retiring
	 * picks this job up when it gets to it.
	 */
	if (sq->retiring) {
		spin_unlock(&sq->lock);
		return;
	}
	sq->retiring = true;
	/* The last job's completion may drop the last other reference. */
	kref_get(&sq->ref);
	for (;;) {
		list_for_each_entry_safe(j, tmp, &sq->order, order_link) {
			if (j->state != VNPU_JOB_DONE)
				break;
			list_move_tail(&j->order_link, &retire);
			xa_erase(&sq->active, j->seqno);
			/*
			 * A failure is remembered for jobs that name it as a
			 * dependency later, in the slot reserved at SUBMIT:
			 * storing there allocates nothing and cannot fail.
			 * Success releases the slot.
			 */
			if (j->status) {
				void *old = xa_store(&sq->failed, j->seqno,
						     xa_mk_value(-j->status),
						     GFP_NOWAIT);

				WARN_ON_ONCE(xa_is_err(old));
				vnpu_squeue_prune_failed(sq);
			} else {
				xa_release(&sq->failed, j->seqno);
			}
		}
		if (list_empty(&retire))
			break;
		spin_unlock(&sq->lock);

		list_for_each_entry_safe(j, tmp, &retire, order_link) {
			list_del_init(&j->order_link);
			vnpu_job_complete(j);
		}
		spin_lock(&sq->lock);
	}
	sq->retiring = false;
	spin_unlock(&sq->lock);
	vnpu_squeue_put(sq);
}

static void vnpu_jobs_done(struct list_head *jobs)
{
	struct vnpu_job *job, *tmp;

	list_for_each_entry_safe(job, tmp, jobs, link) {
		list_del_init(&job->link);
		vnpu_job_done(job);
	}
}

/*
 * End a job the device gave no completion record of its own: @status is the
 * errno users see, @end (enum drm_vnpu_job_end) why, in hw_status.
 */
static void vnpu_job_fail(struct vnpu_job *job, int status, u32 end)
{
	job->status = status;
	job->hw_status = end;
}

/* ---- software queues ------------------------------------------------------ */

static u32 vnpu_hwq_priority(struct vnpu_device *vdev, u32 index)
{
	return index * (VNPU_PRIORITY_MAX + 1) / vdev->num_hwq;
}

/*
 * Pick the hardware queue for a software queue of @priority: among the queues
 * of the highest hardware priority not above @priority, the one with the
 * fewest software queues attached.
 */
static struct vnpu_hwq *vnpu_hwq_pick(struct vnpu_device *vdev, u32 priority)
{
	struct vnpu_hwq *best = NULL;
	unsigned int i;

	for (i = 0; i < vdev->num_hwq; i++) {
		struct vnpu_hwq *q = &vdev->hwq[i];

		/* A queue that did not restart is not handed to new users. */
		if (q->priority > priority || READ_ONCE(q->dead))
			continue;
		if (!best || q->priority > best->priority ||
		    (q->priority == best->priority &&
		     READ_ONCE(q->nsq) < READ_ONCE(best->nsq)))
			best = q;
	}
	if (best)
		return best;
	/* Nothing at or below @priority: any live queue. */
	for (i = 0; i < vdev->num_hwq; i++)
		if (!READ_ONCE(vdev->hwq[i].dead))
			return &vdev->hwq[i];
	return NULL;
}

struct vnpu_squeue *vnpu_squeue_create(struct vnpu_device *vdev, u32 id,
				       u32 priority)
{
	struct vnpu_squeue *sq;

	sq = kzalloc(sizeof(*sq), GFP_KERNEL_ACCOUNT);
	if (!sq)
		return ERR_PTR(-ENOMEM);
	sq->hwq = vnpu_hwq_pick(vdev, priority);
	if (!sq->hwq) {
		/* Wedged, or every queue failed to restart. */
		kfree(sq);
		return ERR_PTR(-ENODEV);
	}
	kref_init(&sq->ref);
	sq->vdev = vdev;
	sq->id = id;
	sq->priority = priority;
	sq->fence_ctx = dma_fence_context_alloc(1);
	mutex_init(&sq->submit_lock);
	spin_lock_init(&sq->lock);
	INIT_LIST_HEAD(&sq->order);
	INIT_LIST_HEAD(&sq->waiting);
	xa_init(&sq->active);
	xa_init(&sq->failed);
	xa_init(&sq->waits);

	spin_lock(&sq->hwq->lock);
	sq->hwq->nsq++;
	spin_unlock(&sq->hwq->lock);
	drm_dev_get(&vdev->drm);
	return sq;
}

static void vnpu_squeue_release(struct kref *ref)
{
	struct vnpu_squeue *sq = container_of(ref, struct vnpu_squeue, ref);
	struct vnpu_device *vdev = sq->vdev;

	spin_lock(&sq->hwq->lock);
	sq->hwq->nsq--;
	spin_unlock(&sq->hwq->lock);
	xa_destroy(&sq->active);
	xa_destroy(&sq->failed);
	xa_destroy(&sq->waits);
	mutex_destroy(&sq->submit_lock);
	kfree(sq);
	drm_dev_put(&vdev->drm);
}

void vnpu_squeue_put(struct vnpu_squeue *sq)
{
	kref_put(&sq->ref, vnpu_squeue_release);
}

/* Free an entry taken out of sq->waits: a result, or a job's reference. */
static void vnpu_wait_entry_free(void *entry)
{
	if (xa_pointer_tag(entry) == VNPU_WAIT_RESULT)
		kfree(xa_untag_pointer(entry));
	else
		vnpu_job_put(entry);
}

/*
 * Drop uncollected WAIT results of seqnos up to @last, uncounting them in
 * @vfile. Process context.
 */
static void vnpu_squeue_drop_waits(struct vnpu_squeue *sq,
				   struct vnpu_file *vfile, u64 last)
{
	unsigned long seqno;
	void *entry;

	/*
	 * A concurrent WAIT may take one, and completion may replace a job by
	 * its record, meanwhile: whoever erases an entry frees what it erased.
	 */
	xa_for_each_range(&sq->waits, seqno, entry, 0, last) {
		entry = xa_erase(&sq->waits, seqno);
		if (!entry)
			continue;
		vnpu_wait_entry_free(entry);
		atomic_dec(&vfile->results);
	}
}

static void vnpu_squeue_kick(struct vnpu_squeue *sq);

/*
 * Nobody can learn the outcome of the queue's jobs any more: those not yet
 * written to a ring complete with -ECANCELED (JOB_NOT_RUN) instead of
 * keeping the device busy; jobs on a ring may be running and finish.
 */
static void vnpu_squeue_cancel(struct vnpu_squeue *sq)
{
	struct vnpu_hwq *q = sq->hwq;
	struct vnpu_job *job, *tmp;
	LIST_HEAD(done);

	spin_lock(&sq->lock);
	sq->cancelled = true;
	spin_unlock(&sq->lock);

	spin_lock(&q->lock);
	list_for_each_entry_safe(job, tmp, &q->pending, link) {
		if (job->sq != sq)
			continue;
		vnpu_job_fail(job, -ECANCELED, DRM_VNPU_JOB_NOT_RUN);
		list_move_tail(&job->link, &done);
		q->njobs--;
	}
	spin_unlock(&q->lock);
	vnpu_jobs_done(&done);
	/* Jobs whose dependencies are met no longer go to the hardware. */
	vnpu_squeue_kick(sq);
}

/**
 * vnpu_squeue_detach - the queue leaves its file: no more submissions, and
 * results nobody will collect are dropped
 * @sq: queue
 * @vfile: its file
 * @cancel: the file is closed: jobs not yet handed to the device are
 *          cancelled (else they still run to completion)
 */
void vnpu_squeue_detach(struct vnpu_squeue *sq, struct vnpu_file *vfile,
			bool cancel)
{
	mutex_lock(&sq->submit_lock);
	sq->detached = true;
	mutex_unlock(&sq->submit_lock);
	vnpu_squeue_drop_waits(sq, vfile, ULONG_MAX);
	if (cancel)
		vnpu_squeue_cancel(sq);
}

static struct vnpu_squeue *vnpu_file_squeue_get(struct vnpu_file *vfile,
						u32 id)
{
	struct vnpu_squeue *sq;

	xa_lock(&vfile->queues);
	sq = xa_load(&vfile->queues, id);
	if (sq)
		kref_get(&sq->ref);
	xa_unlock(&vfile->queues);
	return sq;
}

/*
 * Move jobs whose dependencies are met from the head of the software queue
 * to the hardware queue, in order. A job whose dependency failed completes
 * with -ECANCELED without running.
 */
static void vnpu_squeue_kick(struct vnpu_squeue *sq)
{
	struct vnpu_hwq *q = sq->hwq;
	struct vnpu_job *job, *tmp;
	LIST_HEAD(failed);
	bool moved = false;

	spin_lock(&sq->lock);
	list_for_each_entry_safe(job, tmp, &sq->waiting, link) {
		if (atomic_read(&job->deps_pending))
			break;
		if (READ_ONCE(job->dep_failed)) {
			vnpu_job_fail(job, -ECANCELED, DRM_VNPU_JOB_DEP_FAILED);
			list_move_tail(&job->link, &failed);
			continue;
		}
		if (sq->cancelled) {
			vnpu_job_fail(job, -ECANCELED, DRM_VNPU_JOB_NOT_RUN);
			list_move_tail(&job->link, &failed);
			continue;
		}
		spin_lock(&q->lock);
		if (q->dead) {
			vnpu_job_fail(job, q->dead_status, q->dead_end);
			list_move_tail(&job->link, &failed);
		} else {
			job->state = VNPU_JOB_READY;
			list_move_tail(&job->link, &q->pending);
			q->njobs++;
			moved = true;
		}
		spin_unlock(&q->lock);
	}
	spin_unlock(&sq->lock);

	if (moved) {
		spin_lock(&q->lock);
		vnpu_hwq_feed(q);
		spin_unlock(&q->lock);
	}
	vnpu_jobs_done(&failed);
}

static void vnpu_job_dep_signalled(struct dma_fence *f, struct dma_fence_cb *cb)
{
	struct vnpu_dep_cb *dcb = container_of(cb, struct vnpu_dep_cb, cb);
	struct vnpu_job *job = dcb->job;
	struct vnpu_device *vdev = job->vdev;

	if (f->error)
		WRITE_ONCE(job->dep_failed, true);
	/* Alive: a job with a pending dependency cannot complete. */
	vnpu_job_get(job);
	if (atomic_dec_and_test(&job->deps_pending)) {
		/*
		 * Fence callbacks may run in any context: defer the kick. On
		 * the device's own workqueue, which remove drains, following
		 * chains of dependencies that queue the work again from it.
		 */
		llist_add(&job->ready_node, &vdev->ready);
		queue_work(vdev->ready_wq, &vdev->ready_work);
	} else {
		vnpu_job_put(job);
	}
}

void vnpu_ready_work(struct work_struct *work)
{
	struct vnpu_device *vdev = container_of(work, struct vnpu_device,
						ready_work);
	struct vnpu_job *job, *tmp;
	struct llist_node *list;

	list = llist_del_all(&vdev->ready);
	llist_for_each_entry_safe(job, tmp, list, ready_node) {
		vnpu_squeue_kick(job->sq);
		vnpu_job_put(job);
	}
}

/* ---- validation ----------------------------------------------------------- */

/* Look up @handle and keep the reference in the job (dropped with it). */
static struct drm_gem_object *vnpu_job_lookup(struct vnpu_job *job,
					      struct drm_file *file, u32 handle)
{
	struct drm_gem_object *obj;

	obj = drm_gem_object_lookup(file, handle);
	if (!obj) {
		drm_dbg(&job->vdev->drm, "submit: unknown handle %u\n", handle);
		return ERR_PTR(-ENOENT);
	}
	job->objs[job->nobjs++] = obj;
	return obj;
}

static struct vnpu_mem *vnpu_job_lookup_mem(struct vnpu_job *job,
					    struct drm_file *file, u32 handle)
{
	struct drm_gem_object *obj = vnpu_job_lookup(job, file, handle);
	struct vnpu_mem *mem;

	if (IS_ERR(obj))
		return ERR_CAST(obj);
	mem = vnpu_mem_from_gem(obj);
	/* Another context's memory is never reachable, even if shared. */
	if (!mem || mem->ctx != job->ctx) {
		drm_dbg(&job->vdev->drm,
			"submit: handle %u is not device memory of this file\n",
			handle);
		return ERR_PTR(-EINVAL);
	}
	return mem;
}

static struct vnpu_bo *vnpu_job_lookup_bo(struct vnpu_job *job,
					  struct drm_file *file, u32 handle)
{
	struct drm_gem_object *obj = vnpu_job_lookup(job, file, handle);
	struct vnpu_bo *bo;

	if (IS_ERR(obj))
		return ERR_CAST(obj);
	bo = vnpu_bo_from_gem(obj);
	if (!bo) {
		drm_dbg(&job->vdev->drm, "submit: handle %u is not a BO\n",
			handle);
		return ERR_PTR(-EINVAL);
	}
	return bo;
}

/* Does [offset, offset + size) lie inside an object of @obj_size bytes? */
static bool vnpu_range_ok(u64 offset, u64 size, u64 obj_size)
{
	return size <= obj_size && offset <= obj_size - size;
}

static bool vnpu_zero(const void *p, size_t len)
{
	return !memchr_inv(p, 0, len);
}

static int vnpu_build_copy(struct vnpu_job *job, struct drm_file *file,
			   const struct drm_vnpu_cmd_copy *c, bool to_device,
			   bool fixed, struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;
	struct drm_gem_object *obj;
	struct vnpu_mem *mem;
	struct vnpu_ubo *ubo;
	struct vnpu_bo *bo;
	dma_addr_t sgl_dma;
	u32 sgl_count;

	if (!vnpu_zero(c->reserved, sizeof(c->reserved))) {
		drm_dbg(drm, "submit: copy reserved not zero\n");
		return -EINVAL;
	}
	if (!c->size) {
		drm_dbg(drm, "submit: copy of zero bytes\n");
		return -EINVAL;
	}
	if (fixed) {
		/* The io_uring command's registered-buffer range. */
		if (!job->fixed || c->bo_handle ||
		    !vnpu_range_ok(c->bo_offset, c->size, job->fixed->len)) {
			drm_dbg(drm, "submit: bad registered-buffer copy\n");
			return -EINVAL;
		}
		mem = vnpu_job_lookup_mem(job, file, c->mem_handle);
		if (IS_ERR(mem))
			return PTR_ERR(mem);
		if (!vnpu_range_ok(c->mem_offset, c->size, mem->base.size)) {
			drm_dbg(drm, "submit: copy range outside its objects\n");
			return -EINVAL;
		}
		sgl_dma = job->fixed->sgl_dma;
		sgl_count = job->fixed->sgl_count;
		goto build;
	}
	/* A BO_CREATE BO or USERPTR memory. */
	obj = vnpu_job_lookup(job, file, c->bo_handle);
	if (IS_ERR(obj))
		return PTR_ERR(obj);
	bo = vnpu_bo_from_gem(obj);
	ubo = vnpu_ubo_from_gem(obj);
	if (bo) {
		sgl_dma = bo->sgl_dma;
		sgl_count = bo->sgl_count;
	} else if (ubo) {
		if (!to_device && (ubo->flags & DRM_VNPU_USERPTR_READ_ONLY)) {
			drm_dbg(drm, "submit: copy into read-only user memory\n");
			return -EACCES;
		}
		/* Synced for the device by range, in vnpu_job_sync(). */
		sgl_dma = ubo->sgl_dma;
		sgl_count = ubo->sgl_count;
	} else {
		drm_dbg(drm, "submit: handle %u is not a BO\n", c->bo_handle);
		return -EINVAL;
	}
	mem = vnpu_job_lookup_mem(job, file, c->mem_handle);
	if (IS_ERR(mem))
		return PTR_ERR(mem);

	if (!vnpu_range_ok(c->bo_offset, c->size, obj->size) ||
	    !vnpu_range_ok(c->mem_offset, c->size, mem->base.size)) {
		drm_dbg(drm, "submit: copy range outside its objects\n");
		return -EINVAL;
	}

build:
	hc->opcode = to_device ? VNPU_OPC_DMA_H2D : VNPU_OPC_DMA_D2H;
	hc->dma.sgl_addr = vnpu_hw64(sgl_dma);
	hc->dma.sgl_count = vnpu_hw32(sgl_count);
	hc->dma.sgl_offset = vnpu_hw64(c->bo_offset);
	hc->dma.dev_addr = vnpu_hw64(mem->va.start + c->mem_offset);
	hc->dma.length = vnpu_hw64(c->size);
	return 0;
}

static int vnpu_matmul_operand(struct vnpu_job *job, struct drm_file *file,
			       u32 handle, u64 offset, u64 rows, u64 cols,
			       struct vnpu_mem **memp, __u64 *addr)
{
	struct vnpu_mem *mem;

	mem = vnpu_job_lookup_mem(job, file, handle);
	if (IS_ERR(mem))
		return PTR_ERR(mem);
	/* Dimensions are at most 16384, so this cannot overflow. */
	if (!vnpu_range_ok(offset, rows * cols * sizeof(u32), mem->base.size)) {
		drm_dbg(&job->vdev->drm,
			"submit: matmul operand outside handle %u\n", handle);
		return -EINVAL;
	}
	*memp = mem;
	*addr = vnpu_hw64(mem->va.start + offset);
	return 0;
}

static bool vnpu_dim_ok(u32 dim)
{
	return dim >= 1 && dim <= VNPU_MATMUL_DIM_MAX;
}

static bool vnpu_overlap(struct vnpu_mem *a, u64 aoff, u64 alen,
			 struct vnpu_mem *b, u64 boff, u64 blen)
{
	return a == b && aoff < boff + blen && boff < aoff + alen;
}

static int vnpu_build_matmul(struct vnpu_job *job, struct drm_file *file,
			     const struct drm_vnpu_cmd_matmul *m,
			     struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;
	struct vnpu_mem *a, *b, *c;
	u64 alen, blen, clen;
	int ret;

	if (m->pad) {
		drm_dbg(drm, "submit: matmul pad not zero\n");
		return -EINVAL;
	}
	if (m->dtype != VNPU_DTYPE_F32) {
		drm_dbg(drm, "submit: matmul dtype %u\n", m->dtype);
		return -EINVAL;
	}
	if (!vnpu_dim_ok(m->m) || !vnpu_dim_ok(m->n) || !vnpu_dim_ok(m->k)) {
		drm_dbg(drm, "submit: matmul dims %ux%ux%u\n",
			m->m, m->n, m->k);
		return -EINVAL;
	}
	if ((m->a_offset | m->b_offset | m->c_offset) & (sizeof(u32) - 1)) {
		drm_dbg(drm, "submit: matmul offsets not 4-byte aligned\n");
		return -EINVAL;
	}

	ret = vnpu_matmul_operand(job, file, m->a_handle, m->a_offset,
				  m->m, m->k, &a, &hc->matmul.a_addr);
	if (ret)
		return ret;
	ret = vnpu_matmul_operand(job, file, m->b_handle, m->b_offset,
				  m->k, m->n, &b, &hc->matmul.b_addr);
	if (ret)
		return ret;
	ret = vnpu_matmul_operand(job, file, m->c_handle, m->c_offset,
				  m->m, m->n, &c, &hc->matmul.c_addr);
	if (ret)
		return ret;
	alen = (u64)m->m * m->k * sizeof(u32);
	blen = (u64)m->k * m->n * sizeof(u32);
	clen = (u64)m->m * m->n * sizeof(u32);
	if (vnpu_overlap(c, m->c_offset, clen, a, m->a_offset, alen) ||
	    vnpu_overlap(c, m->c_offset, clen, b, m->b_offset, blen)) {
		drm_dbg(drm, "submit: matmul output overlaps an input\n");
		return -EINVAL;
	}

	hc->opcode = VNPU_OPC_MATMUL;
	hc->matmul.m = vnpu_hw32(m->m);
	hc->matmul.n = vnpu_hw32(m->n);
	hc->matmul.k = vnpu_hw32(m->k);
	hc->matmul.dtype = vnpu_hw32(VNPU_DTYPE_F32);
	return 0;
}

static int vnpu_build_exec(struct vnpu_job *job, struct drm_file *file,
			   const struct drm_vnpu_cmd_exec *e,
			   struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;
	struct vnpu_mem *prog, *bind;

	if (e->pad || !vnpu_zero(e->reserved, sizeof(e->reserved))) {
		drm_dbg(drm, "submit: exec pad/reserved not zero\n");
		return -EINVAL;
	}
	if (!e->prog_size || e->prog_size > VNPU_PROG_MAX_LEN) {
		drm_dbg(drm, "submit: exec program size %llu\n", e->prog_size);
		return -EINVAL;
	}
	if (!e->num_bindings || e->num_bindings > VNPU_EXEC_MAX_BINDINGS) {
		drm_dbg(drm, "submit: exec %u bindings\n", e->num_bindings);
		return -EINVAL;
	}
	if ((e->prog_offset | e->bindings_offset) & 7) {
		drm_dbg(drm, "submit: exec offsets not 8-byte aligned\n");
		return -EINVAL;
	}
	prog = vnpu_job_lookup_mem(job, file, e->prog_handle);
	if (IS_ERR(prog))
		return PTR_ERR(prog);
	bind = vnpu_job_lookup_mem(job, file, e->bindings_handle);
	if (IS_ERR(bind))
		return PTR_ERR(bind);
	if (!vnpu_range_ok(e->prog_offset, e->prog_size, prog->base.size) ||
	    !vnpu_range_ok(e->bindings_offset,
			   (u64)e->num_bindings * sizeof(u64),
			   bind->base.size)) {
		drm_dbg(drm, "submit: exec program or bindings outside its object\n");
		return -EINVAL;
	}

	hc->opcode = VNPU_OPC_EXEC;
	hc->exec.prog_addr = vnpu_hw64(prog->va.start + e->prog_offset);
	hc->exec.prog_len = vnpu_hw32(e->prog_size);
	hc->exec.num_bindings = vnpu_hw32(e->num_bindings);
	hc->exec.bindings_addr = vnpu_hw64(bind->va.start +
					     e->bindings_offset);
	return 0;
}

static int vnpu_build_cmd(struct vnpu_job *job, struct drm_file *file,
			  const struct drm_vnpu_cmd *uc, struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;

	bool copy = uc->op == DRM_VNPU_OP_COPY_TO_DEVICE ||
		    uc->op == DRM_VNPU_OP_COPY_FROM_DEVICE;
	bool fixed = uc->flags & DRM_VNPU_CMD_F_FIXED;

	if (uc->flags & ~(copy ? DRM_VNPU_CMD_F_FIXED : 0)) {
		drm_dbg(drm, "submit: command flags 0x%x\n", uc->flags);
		return -EINVAL;
	}
	switch (uc->op) {
	case DRM_VNPU_OP_COPY_TO_DEVICE:
		return vnpu_build_copy(job, file, &uc->copy, true, fixed, hc);
	case DRM_VNPU_OP_COPY_FROM_DEVICE:
		return vnpu_build_copy(job, file, &uc->copy, false, fixed, hc);
	case DRM_VNPU_OP_MATMUL:
		return vnpu_build_matmul(job, file, &uc->matmul, hc);
	case DRM_VNPU_OP_EXEC:
		return vnpu_build_exec(job, file, &uc->exec, hc);
	case DRM_VNPU_OP_SYNTH:
		if (!vnpu_zero(uc->synth.reserved, sizeof(uc->synth.reserved)) ||
		    !uc->synth.ns || uc->synth.ns > VNPU_SYNTH_MAX_NS) {
			drm_dbg(drm, "submit: bad synth command\n");
			return -EINVAL;
		}
		hc->opcode = VNPU_OPC_SYNTH;
		hc->synth.ns = vnpu_hw64(uc->synth.ns);
		return 0;
	case DRM_VNPU_OP_NOP:
		if (!vnpu_zero(uc->raw, sizeof(uc->raw))) {
			drm_dbg(drm, "submit: nop payload not zero\n");
			return -EINVAL;
		}
		hc->opcode = VNPU_OPC_NOP;
		return 0;
	case DRM_VNPU_OP_SIGNAL:
		if (!(job->vdev->caps & VNPU_CAP_SIGNAL) ||
		    !vnpu_zero(uc->raw, sizeof(uc->raw)) ||
		    job->nsignals == DRM_VNPU_MAX_SIGNALS) {
			drm_dbg(drm, "submit: bad signal command\n");
			return -EINVAL;
		}
		job->sig_cmd[job->nsignals++] = hc - job->cmds;
		hc->opcode = VNPU_OPC_SIGNAL;
		return 0;
	default:
		drm_dbg(drm, "submit: unknown op %u\n", uc->op);
		return -EINVAL;
	}
}

/* What a batch being submitted to one queue needs while it is validated. */
struct vnpu_batch {
	struct drm_file *file;
	struct vnpu_file *vfile;
	struct vnpu_squeue *sq;
	struct vnpu_ctx *ctx;
	struct vnpu_job **jobs;
	u32 count;
	u64 first_seqno;
	bool want_results;
	struct vnpu_fixed *fixed;
};

/* Resolve one dependency to a fence (or a known failure) of this file. */
static int vnpu_job_add_dep(struct vnpu_job *job, struct vnpu_batch *b,
			    const struct drm_vnpu_dep *d, u32 index)
{
	struct drm_device *drm = &job->vdev->drm;
	struct dma_fence *fence = NULL;
	struct vnpu_squeue *dsq;
	struct vnpu_job *dj;
	int ret = 0;

	if (d->pad) {
		drm_dbg(drm, "submit: dependency pad not zero\n");
		return -EINVAL;
	}
	/* An earlier job of the same batch. */
	if (d->queue_id == b->sq->id && d->seqno >= b->first_seqno) {
		if (d->seqno - b->first_seqno >= index) {
			drm_dbg(drm, "submit: dependency on a later job\n");
			return -EINVAL;
		}
		job->deps[job->ndeps++] =
			dma_fence_get(&b->jobs[d->seqno - b->first_seqno]->fence);
		return 0;
	}

	dsq = vnpu_file_squeue_get(b->vfile, d->queue_id);
	if (!dsq) {
		drm_dbg(drm, "submit: dependency on unknown queue %u\n",
			d->queue_id);
		return -ENOENT;
	}
	spin_lock(&dsq->lock);
	dj = NULL;
	if (!d->seqno || d->seqno > dsq->last_seqno) {
		drm_dbg(drm, "submit: dependency on seqno %llu not issued\n",
			d->seqno);
		ret = -EINVAL;
	} else {
		dj = xa_load(&dsq->active, d->seqno);
	}
	if (dj) {
		fence = dma_fence_get(&dj->fence);
	} else if (!ret && dsq->last_seqno - d->seqno >= VNPU_SEQNO_HISTORY) {
		/* Completed so long ago that its outcome may be pruned. */
		drm_dbg(drm, "submit: dependency on seqno %llu too old\n",
			d->seqno);
		ret = -EINVAL;
	} else if (!ret && xa_load(&dsq->failed, d->seqno)) {
		/*
		 * Not active, so completed. A slot reserved at SUBMIT reads
		 * as NULL but only while its job is active; once completed,
		 * NULL means success.
		 */
		job->dep_failed = true;
	}
	spin_unlock(&dsq->lock);
	vnpu_squeue_put(dsq);
	if (fence)
		job->deps[job->ndeps++] = fence;
	return ret;
}

static int vnpu_job_build(struct vnpu_job *job, struct vnpu_batch *b,
			  const struct drm_vnpu_job *uj, u32 index)
{
	struct drm_device *drm = &job->vdev->drm;
	struct drm_vnpu_dep deps[DRM_VNPU_MAX_DEPS];
	struct drm_vnpu_cmd *ucmds;
	u32 i, max_objs;
	int ret;

	if (uj->flags) {
		drm_dbg(drm, "submit: job flags not zero\n");
		return -EINVAL;
	}
	if (!uj->cmd_count || uj->cmd_count > job->vdev->max_cmds) {
		drm_dbg(drm, "submit: %u commands\n", uj->cmd_count);
		return -EINVAL;
	}
	if (uj->dep_count > DRM_VNPU_MAX_DEPS) {
		drm_dbg(drm, "submit: %u dependencies\n", uj->dep_count);
		return -EINVAL;
	}
	if (uj->report_handle ? uj->report_offset & 7 : uj->report_offset) {
		drm_dbg(drm, "submit: bad report offset\n");
		return -EINVAL;
	}

	/* The job owns the registered-buffer range (one job per command). */
	job->fixed = b->fixed;
	b->fixed = NULL;
	job->user_data = uj->user_data;
	job->ncmds = uj->cmd_count;
	job->cmds = kcalloc(job->ncmds, sizeof(*job->cmds),
			    GFP_KERNEL_ACCOUNT);
	/* Up to three objects per command, plus the report BO. */
	max_objs = job->ncmds * 3 + 1;
	job->objs = kcalloc(max_objs, sizeof(*job->objs), GFP_KERNEL_ACCOUNT);
	ucmds = kvmalloc_array(job->ncmds, sizeof(*ucmds), GFP_KERNEL);
	if (b->want_results)
		job->result = kzalloc(sizeof(*job->result), GFP_KERNEL_ACCOUNT);
	if (!job->cmds || !job->objs || !ucmds ||
	    (b->want_results && !job->result)) {
		ret = -ENOMEM;
		goto out;
	}
	if (copy_from_user(ucmds, u64_to_user_ptr(uj->cmds),
			   job->ncmds * sizeof(*ucmds))) {
		ret = -EFAULT;
		goto out;
	}
	for (i = 0; i < job->ncmds; i++) {
		ret = vnpu_build_cmd(job, b->file, &ucmds[i], &job->cmds[i]);
		if (ret)
			goto out;
	}
	if (job->cmds[job->ncmds - 1].opcode == VNPU_OPC_SIGNAL) {
		drm_dbg(drm, "submit: a job cannot end with a signal\n");
		ret = -EINVAL;
		goto out;
	}

	if (uj->report_handle) {
		job->report_bo = vnpu_job_lookup_bo(job, b->file,
						    uj->report_handle);
		if (IS_ERR(job->report_bo)) {
			ret = PTR_ERR(job->report_bo);
			job->report_bo = NULL;
			goto out;
		}
		if (!vnpu_range_ok(uj->report_offset,
				   sizeof(struct drm_vnpu_job_report),
				   job->report_bo->base.base.size)) {
			drm_dbg(drm, "submit: report outside its BO\n");
			ret = -EINVAL;
			goto out;
		}
		job->report_offset = uj->report_offset;
	}

	if (uj->dep_count &&
	    copy_from_user(deps, u64_to_user_ptr(uj->deps),
			   uj->dep_count * sizeof(*deps))) {
		ret = -EFAULT;
		goto out;
	}
	for (i = 0; i < uj->dep_count; i++) {
		ret = vnpu_job_add_dep(job, b, &deps[i], index);
		if (ret)
			goto out;
	}
	vnpu_job_sync(job, true);
	ret = 0;
out:
	kvfree(ucmds);
	return ret;
}

static struct vnpu_job *vnpu_job_alloc(struct vnpu_batch *b, u64 seqno)
{
	struct vnpu_device *vdev = b->sq->vdev;
	struct vnpu_job *job;

	job = kzalloc(sizeof(*job), GFP_KERNEL_ACCOUNT);
	if (!job)
		return NULL;
	spin_lock_init(&job->fence_lock);
	dma_fence_init(&job->fence, &vnpu_fence_ops, &job->fence_lock,
		       b->sq->fence_ctx, seqno);
	drm_dev_get(&vdev->drm);
	job->vdev = vdev;
	kref_get(&b->sq->ref);
	job->sq = b->sq;
	kref_get(&b->ctx->ref);
	job->ctx = b->ctx;
	job->seqno = seqno;
	INIT_LIST_HEAD(&job->order_link);
	INIT_LIST_HEAD(&job->link);
	atomic_set(&job->deps_pending, 1);
	return job;
}

/* ---- the hardware queue --------------------------------------------------- */

/* The submitting task's plug is flushed: ring the doorbells it held back. */
static void vnpu_unplug(struct blk_plug_cb *cb, bool from_schedule)
{
	struct vnpu_hwq *q = cb->data;
	struct drm_device *drm = &q->vdev->drm;
	int idx;

	spin_lock(&q->lock);
	q->db_cb = false;
	if (q->db_owed && drm_dev_enter(drm, &idx)) {
		if (!q->stopped && !q->dead) {
			atomic64_inc(&q->doorbells);
			vnpu_qwr(q, VNPU_QREG_SQ_TAIL,
				 q->sq_tail & (q->entries - 1));
		}
		drm_dev_exit(idx);
	}
	q->db_owed = 0;
	spin_unlock(&q->lock);
	drm_dev_put(drm);
	kfree(cb);
}

/* Jobs at most one doorbell write waits for. */
#define VNPU_DB_BATCH 16

/*
 * Tell the device about new ring entries. A task that submits several
 * io_uring commands at once runs under a block plug (io_uring plugs
 * IORING_OP_URING_CMD batches, as for NVMe passthrough): its doorbell
 * writes wait until the plug is flushed (end of the batch, or the task
 * sleeping), so that one write covers up to VNPU_DB_BATCH jobs of the
 * batch; the bound keeps the device busy and the hang watchdog honest
 * during a long batch. Anything else rings at once. q->lock held.
 */
static void vnpu_hwq_doorbell(struct vnpu_hwq *q)
{
	if (current->plug && in_task()) {
		/* The callback holds the device until it has run. */
		if (!q->db_cb && blk_check_plugged(vnpu_unplug, q,
						   sizeof(struct blk_plug_cb))) {
			drm_dev_get(&q->vdev->drm);
			q->db_cb = true;
		}
		if (q->db_cb && ++q->db_owed < VNPU_DB_BATCH)
			return;
	}
	q->db_owed = 0;
	atomic64_inc(&q->doorbells);
	/* writel() orders the ring writes before the doorbell. */
	vnpu_qwr(q, VNPU_QREG_SQ_TAIL, q->sq_tail & (q->entries - 1));
}

/*
 * Estimate the job's modelled device time from the device's timing model:
 * SYNTH time, DMA bytes over bandwidth, MATMUL flops over one core's
 * throughput. EXEC programs and everything else count as free (the driver
 * does not parse programs). Only used to bound how much work a hardware
 * queue hands to the device ahead of time.
 */
static u64 vnpu_job_cost(struct vnpu_job *job)
{
	struct vnpu_device *vdev = job->vdev;
	u64 ns = 0;
	u32 i;

	if (job->costed)
		return job->cost_ns;
	for (i = 0; i < job->ncmds; i++) {
		const struct vnpu_hw_cmd *c = &job->cmds[i];

		switch (c->opcode) {
		case VNPU_OPC_SYNTH:
			ns += vnpu_cpu64(c->synth.ns);
			break;
		case VNPU_OPC_DMA_H2D:
		case VNPU_OPC_DMA_D2H:
			ns += div_u64(vnpu_cpu64(c->dma.length) * 1000,
				      max(c->opcode == VNPU_OPC_DMA_H2D ?
					  vdev->h2d_mbps : vdev->d2h_mbps, 1u));
			break;
		case VNPU_OPC_MATMUL:
			ns += div_u64(2ull * vnpu_cpu32(c->matmul.m) *
				      vnpu_cpu32(c->matmul.n) *
				      vnpu_cpu32(c->matmul.k),
				      max(vdev->gflops, 1u));
			break;
		default:
			break;
		}
	}
	job->cost_ns = ns;
	job->costed = true;
	return ns;
}

/*
 * The device fetches every job it can see and each engine serves jobs in
 * fetch order: once written, a long job of a low-priority queue delays every
 * job fetched after it, whatever that one's priority. So a queue keeps at
 * most one job per compute core plus hw_queue_budget_ms of estimated work on
 * its ring; the rest waits in q->pending, behind which a higher-priority
 * queue's job is fetched first. q->lock held.
 */
static bool vnpu_hwq_may_write(struct vnpu_hwq *q, struct vnpu_job *next)
{
	u64 budget = (u64)READ_ONCE(vnpu_hwq_budget_ms) * NSEC_PER_MSEC;
	struct vnpu_job *job;
	u32 n = 0;
	u64 ns;

	if (!budget)
		return true;
	ns = vnpu_job_cost(next);
	list_for_each_entry(job, &q->hw, link) {
		n++;
		ns += job->cost_ns;
	}
	return n < max(q->vdev->compute_cores, 1u) || ns <= budget;
}

/* Write pending jobs to the command ring while they fit. q->lock held. */
static void vnpu_hwq_feed(struct vnpu_hwq *q)
{
	u32 mask = q->entries - 1;
	struct vnpu_job *job;
	bool written = false;
	u32 i, used;

	if (q->stopped || q->dead)
		return;

	while (!list_empty(&q->pending)) {
		job = list_first_entry(&q->pending, struct vnpu_job, link);
		/* One entry stays free: tail == head means an empty ring. */
		used = q->sq_tail - q->sq_free;
		if (q->entries - 1 - used < job->ncmds)
			break;
		if (!vnpu_hwq_may_write(q, job))
			break;

		if (!++q->next_tag)
			++q->next_tag;
		job->tag = q->next_tag;
		job->sq_start = q->sq_tail;
		for (i = 0; i < job->ncmds; i++) {
			struct vnpu_hw_cmd *e = &q->sq[q->sq_tail++ & mask];

			memcpy(e, &job->cmds[i], sizeof(*e));
			/* Written by the kernel only: the context is trusted. */
			e->ctx_id = vnpu_hw16(job->ctx->id);
			e->tag = vnpu_hw64(job->tag);
			e->flags = i == job->ncmds - 1 ? VNPU_CMD_F_LAST : 0;
		}
		job->feed_seq = atomic64_inc_return(&q->vdev->feed_seq);
		job->state = VNPU_JOB_RING;
		list_move_tail(&job->link, &q->hw);
		trace_vnpu_job_submit(job, q->index);
		written = true;
	}

	if (!written)
		return;
	vnpu_hwq_doorbell(q);
	queue_delayed_work(system_wq, &q->watchdog,
			   msecs_to_jiffies(max(vnpu_watchdog_ms, 10u)));
}

static struct vnpu_job *vnpu_hwq_find(struct vnpu_hwq *q, u64 tag)
{
	struct vnpu_job *job;

	/* Jobs mostly complete in ring order: the first entry usually hits. */
	list_for_each_entry(job, &q->hw, link)
		if (job->tag == tag)
			return job;
	return NULL;
}

/*
 * An intermediate record of @job: accept it if it names the job's next
 * SIGNAL command (status OK, ring index inside the job, in command order)
 * and send that SIGNAL's event. A job written again after a queue reset
 * reaches SIGNALs already sent once more: dropped. q->lock held.
 */
static bool vnpu_job_signal_reached(struct vnpu_hwq *q, struct vnpu_job *job,
				    const struct vnpu_hw_cpl *cpl)
{
	u32 sq_index = vnpu_cpu32(cpl->sq_index);
	u32 idx = (sq_index - job->sq_start) & (q->entries - 1);
	unsigned int k = job->signals_sent;

	if (vnpu_cpu16(cpl->status) != VNPU_CPL_OK || sq_index >= q->entries ||
	    idx >= job->ncmds)
		return false;
	if (k < job->nsignals && job->sig_cmd[k] == idx) {
		vnpu_job_send_signal(job, k, 0, vnpu_cpu64(cpl->t_end));
		job->signals_sent++;
		return true;
	}
	if (job->requeues)
		while (k--)
			if (job->sig_cmd[k] == idx)
				return true;
	return false;
}

/* Is the completion record at the ring's head valid in this pass? */
static bool vnpu_cpl_valid(struct vnpu_hwq *q)
{
	struct vnpu_hw_cpl *cpl = &q->cq[q->cq_head];

	return (vnpu_cpu16(READ_ONCE(cpl->flags)) & VNPU_CPL_F_PHASE) ==
	       q->cq_phase;
}

/*
 * Consume valid completion records. Finished jobs move to @done; with
 * @recovering, ABORTED records only mark their job (recovery decides).
 * The device is not trusted: a record whose tag and context name no job on
 * this queue's ring, or more records than the ring holds (the device wrote
 * past the head the driver published), is counted in q->bad_cpls and marks
 * the queue corrupt, which resets it; the loop is bounded by the ring size.
 * q->lock held.
 */
static void vnpu_hwq_reap(struct vnpu_hwq *q, struct list_head *done,
			  bool recovering)
{
	struct drm_device *drm = &q->vdev->drm;
	u32 budget = q->entries;
	struct vnpu_hw_cpl *cpl;
	struct vnpu_job *job;
	bool any = false;
	u32 hw_status;

	while (vnpu_cpl_valid(q)) {
		if (!budget--) {
			drm_err_ratelimited(drm,
					    "queue %u: more completions than ring entries\n",
					    q->index);
			atomic64_inc(&q->bad_cpls);
			q->corrupt = true;
			break;
		}
		cpl = &q->cq[q->cq_head];
		/* Read the record only after seeing its phase bit. */
		dma_rmb();
		hw_status = vnpu_cpu16(cpl->status);
		job = vnpu_hwq_find(q, vnpu_cpu64(cpl->tag));
		if (!job || vnpu_cpu16(cpl->ctx_id) != job->ctx->id) {
			drm_err_ratelimited(drm,
					    "queue %u: completion with unknown tag 0x%llx (status %u)\n",
					    q->index, vnpu_cpu64(cpl->tag),
					    hw_status);
			atomic64_inc(&q->bad_cpls);
			q->corrupt = true;
		} else if (vnpu_cpu16(cpl->flags) & VNPU_CPL_F_SIGNAL) {
			/* Intermediate: the job goes on. */
			if (!vnpu_job_signal_reached(q, job, cpl)) {
				drm_err_ratelimited(drm,
						    "queue %u: bad signal record (tag 0x%llx, index %u)\n",
						    q->index, job->tag,
						    vnpu_cpu32(cpl->sq_index));
				atomic64_inc(&q->bad_cpls);
				q->corrupt = true;
			}
		} else if (recovering && hw_status == VNPU_CPL_ABORTED) {
			job->aborted = true;
			job->started = vnpu_cpu64(cpl->t_start) <
				       vnpu_cpu64(cpl->t_end) ||
				       cpl->h2d_ns || cpl->compute_ns ||
				       cpl->d2h_ns;
		} else {
			job->hw_status = hw_status;
			job->status = vnpu_cpl_errno(hw_status);
			job->t_start = vnpu_cpu64(cpl->t_start);
			job->t_end = vnpu_cpu64(cpl->t_end);
			job->fault_addr = vnpu_cpu64(cpl->fault_addr);
			job->busy_ns[VNPU_ENG_H2D] = vnpu_cpu32(cpl->h2d_ns);
			job->busy_ns[VNPU_ENG_COMPUTE] =
				vnpu_cpu32(cpl->compute_ns);
			job->busy_ns[VNPU_ENG_D2H] = vnpu_cpu32(cpl->d2h_ns);
			list_move_tail(&job->link, done);
			q->njobs--;
		}

		if (++q->cq_head == q->entries) {
			q->cq_head = 0;
			q->cq_phase ^= VNPU_CPL_F_PHASE;
		}
		any = true;
	}

	if (!any)
		return;
	if (!recovering)
		vnpu_qwr(q, VNPU_QREG_CQ_HEAD, q->cq_head);
	/* Entries before the oldest unfinished job are free again. */
	if (list_empty(&q->hw))
		q->sq_free = q->sq_tail;
	else
		q->sq_free = list_first_entry(&q->hw, struct vnpu_job,
					      link)->sq_start;
	if (!recovering)
		vnpu_hwq_feed(q);
}

/* Program the rings and enable the queue; the rings must be reset. */
static int vnpu_hwq_enable(struct vnpu_hwq *q)
{
	u32 status;
	int ret;

	vnpu_qwr(q, VNPU_QREG_CTRL, 0);
	vnpu_qwr(q, VNPU_QREG_SQ_BASE_LO, lower_32_bits(q->sq_dma));
	vnpu_qwr(q, VNPU_QREG_SQ_BASE_HI, upper_32_bits(q->sq_dma));
	vnpu_qwr(q, VNPU_QREG_SQ_SIZE, q->entries);
	vnpu_qwr(q, VNPU_QREG_CQ_BASE_LO, lower_32_bits(q->cq_dma));
	vnpu_qwr(q, VNPU_QREG_CQ_BASE_HI, upper_32_bits(q->cq_dma));
	vnpu_qwr(q, VNPU_QREG_CQ_SIZE, q->entries);
	vnpu_qwr(q, VNPU_QREG_MSIX_VECTOR, q->index);
	vnpu_qwr(q, VNPU_QREG_PRIORITY, q->priority);
	vnpu_qwr(q, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);

	ret = readl_poll_timeout(q->vdev->regs +
				 VNPU_REG_QUEUE(q->index, VNPU_QREG_STATUS),
				 status,
				 status & (VNPU_QSTATUS_ENABLED |
					   VNPU_QSTATUS_ERROR),
				 10, 100000);
	if (ret || (status & VNPU_QSTATUS_ERROR)) {
		drm_err(&q->vdev->drm,
			"queue %u: enable failed (status 0x%x, error %u)\n",
			q->index, status, vnpu_qrd(q, VNPU_QREG_ERROR));
		vnpu_qwr(q, VNPU_QREG_CTRL, 0);
		return -EIO;
	}
	return 0;
}

static unsigned int vnpu_reset_timeout_ms = 1000;
module_param_named(reset_timeout_ms, vnpu_reset_timeout_ms, uint, 0644);
MODULE_PARM_DESC(reset_timeout_ms,
		 "How long a queue reset may take before the whole device is reset (default 1000)");

static unsigned int vnpu_device_reset_timeout_ms = 5000;
module_param_named(device_reset_timeout_ms, vnpu_device_reset_timeout_ms,
		   uint, 0644);
MODULE_PARM_DESC(device_reset_timeout_ms,
		 "How long a device reset may take before the device is declared wedged (default 5000)");

/* Why jobs fail that a reset for @reason caught on the ring without a record. */
static u32 vnpu_reason_end(int reason)
{
	switch (reason) {
	case -EIO:
		return DRM_VNPU_JOB_QUEUE_ERROR;
	case -ENODEV:
		return DRM_VNPU_JOB_DEVICE_LOST;
	default:
		return DRM_VNPU_JOB_CORRUPT;
	}
}

/*
 * After the device stopped (queue reset) or forgot (device reset) the
 * queue's jobs, decide each one on the ring. A job that may have run is never
 * written again: the blamed one fails with -ETIMEDOUT; one the device
 * reported ABORTED after it had started, or one a device reset dropped after
 * it was fetched (it may have started: the device says nothing), with
 * -ECONNABORTED; one fetched that got no record from a queue reset (its
 * record was corrupted, or the queue stopped on an error) with @reason. Jobs
 * that never started go back to the backlog in order, at most
 * VNPU_MAX_REQUEUES times (then -ECANCELED). @fatal: all fail with @reason.
 * @fetched: ring entries past q->sq_free the device had fetched before it
 * was stopped. Resets the ring state. q->lock held.
 */
static void vnpu_hwq_sort_out(struct vnpu_hwq *q, struct list_head *done,
			      struct vnpu_job *blamed, int reason, u32 fetched,
			      bool device_reset, bool fatal)
{
	struct vnpu_job *job, *tmp;
	LIST_HEAD(requeue);

	list_for_each_entry_safe(job, tmp, &q->hw, link) {
		bool was_fetched = job->aborted ||
				   job->sq_start - q->sq_free < fetched;
		int status = 0;
		u32 end = 0;

		if (job == blamed || job->hw_status == DRM_VNPU_JOB_TIMEOUT) {
			status = -ETIMEDOUT;
			end = DRM_VNPU_JOB_TIMEOUT;
		} else if (fatal) {
			status = reason;
			end = q->dead_end;
		} else if (job->aborted ? job->started :
			   was_fetched && device_reset) {
			status = -ECONNABORTED;
			end = DRM_VNPU_JOB_INTERRUPTED;
		} else if (was_fetched && !job->aborted) {
			status = reason == -EIO ? -EIO : -EBADMSG;
			end = vnpu_reason_end(reason);
		} else if (++job->requeues > VNPU_MAX_REQUEUES) {
			status = -ECANCELED;
			end = DRM_VNPU_JOB_NOT_RUN;
		}

		if (status) {
			vnpu_job_fail(job, status, end);
			list_move_tail(&job->link, done);
			q->njobs--;
		} else {
			job->aborted = false;
			job->started = false;
			job->state = VNPU_JOB_READY;
			list_move_tail(&job->link, &requeue);
		}
	}
	list_splice(&requeue, &q->pending);

	memset(q->cq, 0, q->entries * sizeof(*q->cq));
	q->sq_tail = 0;
	q->sq_free = 0;
	q->cq_head = 0;
	q->cq_phase = VNPU_CPL_F_PHASE;
	q->corrupt = false;
}

/* Mark the queue dead: its backlog and later jobs fail with @status/@end. */
static void vnpu_hwq_kill(struct vnpu_hwq *q, struct list_head *done,
			  int status, u32 end)
{
	struct vnpu_job *job, *tmp;

	q->dead = true;
	q->dead_status = status;
	q->dead_end = end;
	list_for_each_entry_safe(job, tmp, &q->pending, link) {
		vnpu_job_fail(job, status, end);
		list_move_tail(&job->link, done);
		q->njobs--;
	}
}

/*
 * Reset the queue (QCTRL_RESET) and restart it with empty rings, unless
 * @fatal; vnpu_hwq_sort_out() decides the jobs on it. A reset that does not
 * finish within reset_timeout_ms leaves the queue stopped with all its jobs
 * (the device may still be using their memory) and escalates to a device
 * reset (vnpu_device_recover). A queue that does not enable again is dead:
 * its jobs fail with -ECANCELED (never run) and new queues avoid it. With
 * @fatal (device removed, already reset) all jobs fail with -ENODEV.
 * service_lock held; jobs with a result go to @done.
 */
static void vnpu_hwq_recover(struct vnpu_hwq *q, struct list_head *done,
			     int reason, bool fatal)
{
	struct vnpu_job *blamed = NULL;
	u32 mask = q->entries - 1;
	u32 head, fetched, st;
	int ret = 0;

	spin_lock(&q->lock);
	q->stopped = true;
	vnpu_hwq_reap(q, done, false);
	if (reason == -ETIMEDOUT && !list_empty(&q->hw))
		blamed = list_first_entry(&q->hw, struct vnpu_job, link);
	head = vnpu_qrd(q, VNPU_QREG_SQ_HEAD);
	spin_unlock(&q->lock);

	vnpu_qwr(q, VNPU_QREG_CTRL, VNPU_QCTRL_RESET);
	if (readl_poll_timeout(q->vdev->regs +
			       VNPU_REG_QUEUE(q->index, VNPU_QREG_STATUS),
			       st, (st & VNPU_QSTATUS_IDLE) &&
			       !(st & VNPU_QSTATUS_ENABLED), 100,
			       (u64)READ_ONCE(vnpu_reset_timeout_ms) * 1000) &&
	    !fatal) {
		drm_err(&q->vdev->drm,
			"queue %u: reset did not finish (status 0x%x), resetting the device\n",
			q->index, st);
		spin_lock(&q->lock);
		if (blamed) {
			/* The device reset drops it without a record. */
			blamed->aborted = true;
			blamed->started = true;
			vnpu_job_fail(blamed, -ETIMEDOUT, DRM_VNPU_JOB_TIMEOUT);
		}
		q->awaiting_reset = true;
		spin_unlock(&q->lock);
		atomic64_inc(&q->resets);
		queue_work(system_unbound_wq, &q->vdev->reset_work);
		return;
	}

	spin_lock(&q->lock);
	vnpu_hwq_reap(q, done, true);
	fetched = (head - (q->sq_free & mask)) & mask;
	if (fatal)
		q->dead_end = q->vdev->wedged ? DRM_VNPU_JOB_WEDGED :
						DRM_VNPU_JOB_DEVICE_LOST;
	vnpu_hwq_sort_out(q, done, blamed, fatal ? -ENODEV : reason, fetched,
			  false, fatal);
	spin_unlock(&q->lock);

	if (!fatal)
		ret = vnpu_hwq_enable(q);
	atomic64_inc(&q->resets);

	spin_lock(&q->lock);
	if (fatal)
		vnpu_hwq_kill(q, done, -ENODEV, q->dead_end);
	else if (ret)
		vnpu_hwq_kill(q, done, -ECANCELED, DRM_VNPU_JOB_NOT_RUN);
	q->stopped = false;
	q->head_seq = 0;
	vnpu_hwq_feed(q);
	spin_unlock(&q->lock);
}

/**
 * vnpu_device_quiesce - stop every queue ahead of a device reset
 * @vdev: device
 *
 * Takes reset_lock and every queue's service_lock (vnpu_device_restart()
 * releases them), pauses fetching and collects the completions already
 * posted. Afterwards the device may be reset (RESET register, FLR, bus
 * reset); the jobs stay on the rings until vnpu_device_restart() decides.
 */
void vnpu_device_quiesce(struct vnpu_device *vdev)
{
	unsigned int i;
	u32 ctl;

	mutex_lock(&vdev->reset_lock);
	for (i = 0; i < vdev->num_hwq; i++)
		mutex_lock_nest_lock(&vdev->hwq[i].service_lock,
				     &vdev->reset_lock);

	/* Jobs fetched from now on would be dropped without a trace. */
	ctl = vnpu_rd(vdev, VNPU_REG_CONTROL);
	if (ctl != U32_MAX)
		vnpu_wr(vdev, VNPU_REG_CONTROL, ctl | VNPU_CONTROL_FETCH_PAUSE);

	for (i = 0; i < vdev->num_hwq; i++) {
		struct vnpu_hwq *q = &vdev->hwq[i];

		spin_lock(&q->lock);
		q->stopped = true;
		/* Records a queue reset left are decided by restart. */
		if (!q->dead)
			vnpu_hwq_reap(q, &vdev->reset_jobs, true);
		/* A device reset zeroes it: what was fetched is known now. */
		q->reset_head = vnpu_qrd(q, VNPU_QREG_SQ_HEAD);
		spin_unlock(&q->lock);
	}
}

/* The device is gone for good: stop its DMA, tell user space, fail all. */
static void vnpu_device_wedge(struct vnpu_device *vdev, struct list_head *done)
{
	struct drm_device *drm = &vdev->drm;
	char event[] = "WEDGED=rebind";
	char *envp[2];
	unsigned int i;

	pci_clear_master(to_pci_dev(drm->dev));
	WRITE_ONCE(vdev->wedged, true);
	drm_err(drm, "device did not come back from a reset: wedged (rebind the driver to recover)\n");
	for (i = 0; i < vdev->num_hwq; i++) {
		struct vnpu_hwq *q = &vdev->hwq[i];

		spin_lock(&q->lock);
		q->dead_end = DRM_VNPU_JOB_WEDGED;
		vnpu_hwq_sort_out(q, done, NULL, -ENODEV, 0, true, true);
		vnpu_hwq_kill(q, done, -ENODEV, DRM_VNPU_JOB_WEDGED);
		q->awaiting_reset = false;
		q->stopped = false;
		spin_unlock(&q->lock);
	}
	/* As drm_dev_wedged_event() of later kernels does; 6.12 lacks it. */
	envp[0] = event;
	envp[1] = NULL;
	if (drm->accel)
		kobject_uevent_env(&drm->accel->kdev->kobj, KOBJ_CHANGE, envp);
}

/**
 * vnpu_device_restart - bring the device back after a device reset
 * @vdev: device, quiesced by vnpu_device_quiesce()
 * @reset_done: the device was reset already (PCI reset); else reset it here
 *
 * Waits up to device_reset_timeout_ms for STATUS.READY; if it does not come
 * the device is wedged (vnpu_device_wedge). Otherwise re-programs the context
 * table and MMU, decides each queue's jobs (fetched ones may have run and
 * fail with -ECONNABORTED, the others run again) and enables the queues.
 * Memory a job used is released only once its job completed here, after the
 * device can no longer reach it. Drops the locks quiesce took.
 */
void vnpu_device_restart(struct vnpu_device *vdev, bool reset_done)
{
	unsigned int i;
	LIST_HEAD(done);
	u32 st;
	int ret;

	list_splice_init(&vdev->reset_jobs, &done);
	if (!reset_done)
		vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	atomic64_inc(&vdev->device_resets);
	ret = readl_poll_timeout(vdev->regs + VNPU_REG_STATUS, st,
				 st != U32_MAX && (st & VNPU_STATUS_READY), 100,
				 (u64)READ_ONCE(vnpu_device_reset_timeout_ms) *
				 1000);
	if (ret || READ_ONCE(vdev->wedged)) {
		vnpu_device_wedge(vdev, &done);
		goto out;
	}

	vnpu_mmu_hw_init(vdev);
	for (i = 0; i < vdev->num_hwq; i++) {
		struct vnpu_hwq *q = &vdev->hwq[i];
		u32 mask = q->entries - 1;

		spin_lock(&q->lock);
		if (q->dead) {
			spin_unlock(&q->lock);
			continue;
		}
		vnpu_hwq_sort_out(q, &done, NULL, -EBADMSG,
				  (q->reset_head - (q->sq_free & mask)) & mask,
				  true, false);
		q->awaiting_reset = false;
		spin_unlock(&q->lock);

		ret = vnpu_hwq_enable(q);
		spin_lock(&q->lock);
		if (ret)
			vnpu_hwq_kill(q, &done, -ECANCELED,
				      DRM_VNPU_JOB_NOT_RUN);
		q->stopped = false;
		q->head_seq = 0;
		vnpu_hwq_feed(q);
		spin_unlock(&q->lock);
	}
	drm_info(&vdev->drm, "device reset done\n");
out:
	for (i = vdev->num_hwq; i--;)
		mutex_unlock(&vdev->hwq[i].service_lock);
	mutex_unlock(&vdev->reset_lock);
	vnpu_jobs_done(&done);
}

/**
 * vnpu_device_recover - reset the whole device and restart its queues
 * @vdev: device
 */
void vnpu_device_recover(struct vnpu_device *vdev)
{
	vnpu_device_quiesce(vdev);
	vnpu_device_restart(vdev, false);
}

void vnpu_reset_work(struct work_struct *work)
{
	struct vnpu_device *vdev = container_of(work, struct vnpu_device,
						reset_work);

	/* Queued by a recovery that raced remove: remove owns the device. */
	if (READ_ONCE(vdev->stopping))
		return;
	vnpu_device_recover(vdev);
}

/**
 * vnpu_device_stop - make sure the device can no longer DMA (remove,
 * shutdown): pause fetching, reset it, turn bus mastering off. The jobs it
 * held are completed afterwards by vnpu_hwq_fini().
 * @vdev: device
 */
void vnpu_device_stop(struct vnpu_device *vdev)
{
	struct pci_dev *pdev = to_pci_dev(vdev->drm.dev);
	unsigned int i;
	u32 st;

	WRITE_ONCE(vdev->stopping, true);
	cancel_work_sync(&vdev->reset_work);
	mutex_lock(&vdev->reset_lock);
	for (i = 0; i < vdev->num_hwq; i++) {
		spin_lock(&vdev->hwq[i].lock);
		vdev->hwq[i].stopped = true;
		spin_unlock(&vdev->hwq[i].lock);
	}
	vnpu_wr(vdev, VNPU_REG_CONTROL,
		vnpu_rd(vdev, VNPU_REG_CONTROL) | VNPU_CONTROL_FETCH_PAUSE);
	/* When the write returns no engine reaches host memory any more. */
	vnpu_wr(vdev, VNPU_REG_RESET, VNPU_RESET_MAGIC);
	if (readl_poll_timeout(vdev->regs + VNPU_REG_STATUS, st,
			       st & VNPU_STATUS_READY, 100,
			       (u64)READ_ONCE(vnpu_device_reset_timeout_ms) *
			       1000))
		drm_warn(&vdev->drm, "device still busy after reset\n");
	pci_clear_master(pdev);
	mutex_unlock(&vdev->reset_lock);
}

/* Consume completions; reset the queue on a device error or a bad record. */
static void vnpu_hwq_service(struct vnpu_hwq *q)
{
	LIST_HEAD(done);
	bool corrupt, idle;
	u32 status;

	mutex_lock(&q->service_lock);
	spin_lock(&q->lock);
	/* Stopped: a device reset is pending and owns the queue. */
	idle = q->dead || q->stopped;
	if (!idle)
		vnpu_hwq_reap(q, &done, false);
	corrupt = q->corrupt;
	spin_unlock(&q->lock);

	if (!idle) {
		status = vnpu_qrd(q, VNPU_QREG_STATUS);
		if (corrupt || (status & VNPU_QSTATUS_ERROR)) {
			drm_err(&q->vdev->drm,
				"queue %u: %s, resetting queue\n", q->index,
				corrupt ? "corrupted completion" :
					  "device error");
			vnpu_hwq_recover(q, &done, corrupt ? -EBADMSG : -EIO,
					 false);
		}
	}
	mutex_unlock(&q->service_lock);

	vnpu_jobs_done(&done);
}

irqreturn_t vnpu_irq_handler(int irq, void *arg)
{
	return IRQ_WAKE_THREAD;
}

irqreturn_t vnpu_irq_thread(int irq, void *arg)
{
	vnpu_hwq_service(arg);
	return IRQ_HANDLED;
}

/* feed_seq of the oldest job on @q's ring, or 0 when it has none. */
static u64 vnpu_hwq_head_seq(struct vnpu_hwq *q)
{
	lockdep_assert_held(&q->lock);
	if (q->dead || list_empty(&q->hw))
		return 0;
	return list_first_entry(&q->hw, struct vnpu_job, link)->feed_seq;
}

/*
 * Does another hardware queue hold a job written before feed_seq @seq that
 * is still unfinished? The device may then be running it ahead of @q's
 * oldest job, which is waiting, not hung.
 */
static bool vnpu_device_has_older(struct vnpu_hwq *q, u64 seq)
{
	struct vnpu_device *vdev = q->vdev;
	bool older = false;
	unsigned int i;

	for (i = 0; i < vdev->num_hwq && !older; i++) {
		struct vnpu_hwq *p = &vdev->hwq[i];
		u64 head;

		if (p == q)
			continue;
		spin_lock(&p->lock);
		head = vnpu_hwq_head_seq(p);
		spin_unlock(&p->lock);
		older = head && head < seq;
	}
	return older;
}

/*
 * Is the oldest job on @q's ring hung? Its clock runs only while it is the
 * oldest unfinished job the driver handed to the device: jobs written
 * before it (on any queue) come first on the engines, and a job of a
 * lower-priority queue still running is no fault of this one. So the job
 * that ran too long is blamed, never one queued behind it. service_lock held.
 */
static bool vnpu_hwq_hung(struct vnpu_hwq *q, unsigned int timeout)
{
	bool older, hung = false;
	u64 seq;

	spin_lock(&q->lock);
	seq = q->stopped ? 0 : vnpu_hwq_head_seq(q);
	if (seq != q->head_seq) {
		q->head_seq = seq;
		q->head_since = jiffies;
	}
	spin_unlock(&q->lock);
	if (!seq || !timeout)
		return false;

	older = vnpu_device_has_older(q, seq);

	spin_lock(&q->lock);
	if (q->head_seq == seq) {
		if (older)
			q->head_since = jiffies;
		else
			hung = time_after(jiffies, q->head_since +
					  msecs_to_jiffies(timeout));
	}
	spin_unlock(&q->lock);
	return hung;
}

static void vnpu_watchdog(struct work_struct *work)
{
	struct vnpu_hwq *q = container_of(to_delayed_work(work),
					  struct vnpu_hwq, watchdog);
	unsigned int timeout = READ_ONCE(vnpu_job_timeout_ms);
	LIST_HEAD(done);

	/* Also picks up completions whose interrupt went missing. */
	vnpu_hwq_service(q);

	mutex_lock(&q->service_lock);
	if (vnpu_hwq_hung(q, timeout)) {
		drm_err(&q->vdev->drm,
			"queue %u: oldest job ran for %u ms, resetting queue\n",
			q->index, timeout);
		vnpu_hwq_recover(q, &done, -ETIMEDOUT, false);
	}
	mutex_unlock(&q->service_lock);

	vnpu_jobs_done(&done);

	spin_lock(&q->lock);
	if (!q->dead && !q->stopped && !list_empty(&q->hw))
		queue_delayed_work(system_wq, &q->watchdog,
				   msecs_to_jiffies(max(vnpu_watchdog_ms, 10u)));
	spin_unlock(&q->lock);
}

int vnpu_hwq_init(struct vnpu_device *vdev, struct vnpu_hwq *q, u32 index,
		  int irq)
{
	struct device *dev = vdev->drm.dev;
	int ret;

	q->vdev = vdev;
	q->index = index;
	q->priority = vnpu_hwq_priority(vdev, index);
	q->irq = irq;
	spin_lock_init(&q->lock);
	mutex_init(&q->service_lock);
	INIT_LIST_HEAD(&q->pending);
	INIT_LIST_HEAD(&q->hw);
	INIT_DELAYED_WORK(&q->watchdog, vnpu_watchdog);
	q->cq_phase = VNPU_CPL_F_PHASE;
	atomic64_set(&q->resets, 0);
	atomic64_set(&q->bad_cpls, 0);

	/* Device-managed: freed after remove, when no job points at them. */
	q->sq = dmam_alloc_coherent(dev, q->entries * sizeof(*q->sq),
				    &q->sq_dma, GFP_KERNEL);
	q->cq = dmam_alloc_coherent(dev, q->entries * sizeof(*q->cq),
				    &q->cq_dma, GFP_KERNEL);
	if (!q->sq || !q->cq)
		return -ENOMEM;

	ret = request_threaded_irq(irq, vnpu_irq_handler, vnpu_irq_thread, 0,
				   VNPU_DRIVER_NAME, q);
	if (ret)
		return ret;

	ret = vnpu_hwq_enable(q);
	if (ret) {
		free_irq(irq, q);
		return ret;
	}
	return 0;
}

/* Disable the queue for good; every job it holds fails with -ENODEV. */
void vnpu_hwq_fini(struct vnpu_hwq *q)
{
	LIST_HEAD(done);

	spin_lock(&q->lock);
	q->dead = true;
	q->dead_status = -ENODEV;
	q->dead_end = q->vdev->wedged ? DRM_VNPU_JOB_WEDGED :
					DRM_VNPU_JOB_DEVICE_LOST;
	spin_unlock(&q->lock);
	cancel_delayed_work_sync(&q->watchdog);

	mutex_lock(&q->service_lock);
	vnpu_hwq_recover(q, &done, -ENODEV, true);
	mutex_unlock(&q->service_lock);

	free_irq(q->irq, q);
	vnpu_jobs_done(&done);
}

/* ---- submission ----------------------------------------------------------- */

static void vnpu_batch_free(struct vnpu_batch *b)
{
	u32 i;

	for (i = 0; i < b->count; i++)
		if (b->jobs[i])
			vnpu_job_put(b->jobs[i]);
}

/*
 * Validate and build @count jobs for @b->sq, reserve events, account them
 * and make their seqnos visible to dependency lookups. On error nothing is
 * left behind. sq->submit_lock held.
 */
static int vnpu_submit_reserve(struct vnpu_batch *b, u32 flags);

static int vnpu_submit_prepare(struct vnpu_batch *b,
			       const struct drm_vnpu_job *ujobs, u32 flags)
{
	struct vnpu_device *vdev = b->sq->vdev;
	struct drm_device *drm = &vdev->drm;
	u32 i;
	int ret;

	b->first_seqno = b->sq->last_seqno + 1;
	for (i = 0; i < b->count; i++) {
		b->jobs[i] = vnpu_job_alloc(b, b->first_seqno + i);
		if (!b->jobs[i])
			return -ENOMEM;
		ret = vnpu_job_build(b->jobs[i], b, &ujobs[i], i);
		if (ret)
			return ret;
	}

	if (atomic_add_return(b->count, &vdev->inflight) > vnpu_max_inflight) {
		atomic_sub(b->count, &vdev->inflight);
		drm_dbg(drm, "submit: in-flight limit %u reached\n",
			vnpu_max_inflight);
		return -EBUSY;
	}
	return vnpu_submit_reserve(b, flags);
}

/*
 * Reserve the DRM events of @job's SIGNAL commands in the file's event
 * space. Return: 0, -ENOSPC (event space full) or -ENOMEM.
 */
static int vnpu_job_reserve_signals(struct vnpu_job *job, struct vnpu_batch *b)
{
	struct drm_device *drm = &job->vdev->drm;
	struct vnpu_signal_event *e;
	unsigned int k;
	int ret;

	for (k = 0; k < job->nsignals; k++) {
		e = kzalloc(sizeof(*e), GFP_KERNEL_ACCOUNT);
		if (!e)
			return -ENOMEM;
		e->ev.base.type = DRM_VNPU_EVENT_SIGNAL;
		e->ev.base.length = sizeof(e->ev);
		e->ev.user_data = job->user_data;
		e->ev.seqno = job->seqno;
		e->ev.queue_id = b->sq->id;
		e->ev.cmd_index = job->sig_cmd[k];
		ret = drm_event_reserve_init(drm, b->file, &e->base,
					     &e->ev.base);
		if (ret) {
			kfree(e);
			drm_dbg(drm, "submit: event space full\n");
			/* drm_event_reserve_init's only failure. */
			return -ENOSPC;
		}
		job->sig_ev[k] = e;
	}
	return 0;
}

static void vnpu_job_cancel_signals(struct vnpu_job *job)
{
	unsigned int k;

	for (k = 0; k < job->nsignals; k++) {
		if (job->sig_ev[k])
			drm_event_cancel_free(&job->vdev->drm,
					      &job->sig_ev[k]->base);
		job->sig_ev[k] = NULL;
	}
}

/*
 * Reserve events and failure slots of the built jobs of @b, already counted
 * in vdev->inflight, and make their seqnos visible to dependency lookups.
 * On error the jobs are no longer counted. sq->submit_lock held.
 */
static int vnpu_submit_reserve(struct vnpu_batch *b, u32 flags)
{
	struct vnpu_device *vdev = b->sq->vdev;
	struct drm_device *drm = &vdev->drm;
	u32 i, stored = 0;
	int ret;

	atomic_add(b->count, &b->ctx->inflight);
	for (i = 0; i < b->count; i++)
		b->jobs[i]->accounted = true;

	if (flags & DRM_VNPU_SUBMIT_F_EVENT) {
		for (i = 0; i < b->count; i++) {
			struct vnpu_event *e = kzalloc(sizeof(*e),
						       GFP_KERNEL_ACCOUNT);

			if (!e) {
				ret = -ENOMEM;
				goto err_events;
			}
			e->ev.base.type = DRM_VNPU_EVENT_JOB;
			e->ev.base.length = sizeof(e->ev);
			ret = drm_event_reserve_init(drm, b->file, &e->base,
						     &e->ev.base);
			if (ret) {
				kfree(e);
				goto err_events;
			}
			b->jobs[i]->event = e;
		}
	}
	for (i = 0; i < b->count; i++) {
		ret = vnpu_job_reserve_signals(b->jobs[i], b);
		if (ret)
			goto err_events;
	}

	/*
	 * Reserve each job's slot in the failure table now, while sleeping is
	 * allowed, so that completion can record a failure without
	 * allocating.
	 */
	for (stored = 0; stored < b->count; stored++) {
		struct vnpu_job *job = b->jobs[stored];

		ret = xa_reserve(&b->sq->failed, job->seqno,
				 GFP_KERNEL_ACCOUNT);
		if (ret)
			goto err_active;
		ret = xa_err(xa_store(&b->sq->active, job->seqno, job,
				      GFP_KERNEL_ACCOUNT));
		if (ret) {
			xa_release(&b->sq->failed, job->seqno);
			goto err_active;
		}
	}
	return 0;

err_active:
	while (stored--) {
		xa_erase(&b->sq->active, b->jobs[stored]->seqno);
		xa_release(&b->sq->failed, b->jobs[stored]->seqno);
	}
err_events:
	for (i = 0; i < b->count; i++) {
		if (b->jobs[i]->event)
			drm_event_cancel_free(drm, &b->jobs[i]->event->base);
		b->jobs[i]->event = NULL;
		vnpu_job_cancel_signals(b->jobs[i]);
		b->jobs[i]->accounted = false;
	}
	atomic_sub(b->count, &vdev->inflight);
	/* Frees device memory retired while this batch was counted. */
	for (i = 0; i < b->count; i++)
		vnpu_ctx_job_done(b->ctx);
	return ret;
}

/* Queue prepared jobs; cannot fail. sq->submit_lock held. */
static void vnpu_submit_commit(struct vnpu_batch *b)
{
	struct vnpu_squeue *sq = b->sq;
	u64 now = ktime_get_ns();
	u32 i, d;

	spin_lock(&sq->lock);
	for (i = 0; i < b->count; i++) {
		struct vnpu_job *job = b->jobs[i];

		job->t_submit = now;
		/* The queue's reference, dropped at completion. */
		vnpu_job_get(job);
		list_add_tail(&job->order_link, &sq->order);
		list_add_tail(&job->link, &sq->waiting);
	}
	sq->last_seqno = b->first_seqno + b->count - 1;
	spin_unlock(&sq->lock);

	for (i = 0; i < b->count; i++) {
		struct vnpu_job *job = b->jobs[i];

		for (d = 0; d < job->ndeps; d++) {
			struct vnpu_dep_cb *dcb = &job->dep_cbs[d];

			dcb->job = job;
			atomic_inc(&job->deps_pending);
			if (dma_fence_add_callback(job->deps[d], &dcb->cb,
						   vnpu_job_dep_signalled)) {
				/* Already signalled. */
				if (job->deps[d]->error)
					job->dep_failed = true;
				atomic_dec(&job->deps_pending);
			}
		}
		atomic_dec(&job->deps_pending);
	}
	vnpu_squeue_kick(sq);
}

static int vnpu_batch_begin(struct vnpu_batch *b, struct drm_file *file,
			    u32 queue_id, u32 count, bool nowait)
{
	memset(b, 0, sizeof(*b));
	b->file = file;
	b->vfile = file->driver_priv;
	b->ctx = vnpu_file_ctx(b->vfile);
	if (IS_ERR(b->ctx))
		return PTR_ERR(b->ctx);
	b->sq = vnpu_file_squeue_get(b->vfile, queue_id);
	if (!b->sq) {
		drm_dbg(file->minor->dev, "submit: unknown queue %u\n",
			queue_id);
		return -ENOENT;
	}
	b->jobs = kcalloc(count, sizeof(*b->jobs), GFP_KERNEL);
	if (!b->jobs) {
		vnpu_squeue_put(b->sq);
		return -ENOMEM;
	}
	b->count = count;
	if (!nowait) {
		mutex_lock(&b->sq->submit_lock);
	} else if (!mutex_trylock(&b->sq->submit_lock)) {
		kfree(b->jobs);
		vnpu_squeue_put(b->sq);
		return -EAGAIN;
	}
	if (b->sq->detached) {
		mutex_unlock(&b->sq->submit_lock);
		kfree(b->jobs);
		vnpu_squeue_put(b->sq);
		return -ENOENT;
	}
	return 0;
}

static void vnpu_batch_end(struct vnpu_batch *b)
{
	mutex_unlock(&b->sq->submit_lock);
	vnpu_batch_free(b);
	kfree(b->jobs);
	vnpu_squeue_put(b->sq);
}

/* Zero @len bytes at device virtual address @va; one job's commands. */
static u32 vnpu_clear_cmds(struct vnpu_device *vdev, struct vnpu_hw_cmd *cmds,
			   u32 max, u64 *va, u64 *len)
{
	u64 budget = VNPU_ZERO_JOB_MAX;
	u32 n = 0;

	while (*len && n < max && budget) {
		u64 chunk = min3(*len, VNPU_ZERO_CHUNK, budget);
		struct vnpu_hw_cmd *hc = &cmds[n++];

		budget -= chunk;

		hc->opcode = VNPU_OPC_DMA_H2D;
		hc->dma.sgl_addr = vnpu_hw64(vdev->zero_sgl_dma);
		hc->dma.sgl_count = vnpu_hw32(VNPU_ZERO_SGL_ENTRIES);
		hc->dma.sgl_offset = 0;
		hc->dma.dev_addr = vnpu_hw64(*va);
		hc->dma.length = vnpu_hw64(chunk);
		*va += chunk;
		*len -= chunk;
	}
	return n;
}

/* Submit one kernel job clearing the next part of [*va, *va + *len). */
static struct vnpu_job *vnpu_clear_submit(struct vnpu_device *vdev,
					  struct vnpu_mem *mem, u64 *va,
					  u64 *len)
{
	struct vnpu_job *job = NULL;
	struct vnpu_batch b = {
		.sq = vdev->kq,
		.ctx = mem->ctx,
		.jobs = &job,
		.count = 1,
	};
	int ret;

	mutex_lock(&b.sq->submit_lock);
	b.first_seqno = b.sq->last_seqno + 1;
	job = vnpu_job_alloc(&b, b.first_seqno);
	if (!job) {
		ret = -ENOMEM;
		goto out;
	}
	job->cmds = kcalloc(vdev->max_cmds, sizeof(*job->cmds),
			    GFP_KERNEL_ACCOUNT);
	job->objs = kcalloc(1, sizeof(*job->objs), GFP_KERNEL_ACCOUNT);
	if (!job->cmds || !job->objs) {
		ret = -ENOMEM;
		goto out;
	}
	job->ncmds = vnpu_clear_cmds(vdev, job->cmds, vdev->max_cmds, va, len);
	/* The memory stays allocated until the clear is done with it. */
	drm_gem_object_get(&mem->base);
	job->objs[job->nobjs++] = &mem->base;

	/* Not limited by max_inflight: MEM_ALLOC does not fail with -EBUSY. */
	atomic_add(1, &vdev->inflight);
	ret = vnpu_submit_reserve(&b, 0);
	if (ret)
		goto out;
	vnpu_submit_commit(&b);
	vnpu_job_get(job);
out:
	mutex_unlock(&b.sq->submit_lock);
	vnpu_batch_free(&b);
	return ret ? ERR_PTR(ret) : job;
}

/**
 * vnpu_mem_clear - zero a new device memory object before its owner can
 * reach it: H2D DMA from the device's zero buffer, in kernel jobs on the
 * device's own queue, in the object's context
 * @vdev: device
 * @mem: the object, mapped at mem->va in mem->ctx
 *
 * Return: 0; -EIO when a clear job failed; -ERESTARTSYS when a signal came
 * first (the jobs still run and hold the object until they are done).
 */
int vnpu_mem_clear(struct vnpu_device *vdev, struct vnpu_mem *mem)
{
	u64 va = mem->va.start, len = mem->base.size;
	struct vnpu_job *job;
	long ret = 0;

	while (len && !ret) {
		job = vnpu_clear_submit(vdev, mem, &va, &len);
		if (IS_ERR(job))
			return PTR_ERR(job);
		/* Bounded: a hung clear times out like any job. */
		ret = dma_fence_wait(&job->fence, true);
		if (!ret && job->status) {
			drm_err_ratelimited(&vdev->drm,
					    "clearing device memory failed: %d\n",
					    job->status);
			ret = -EIO;
		}
		vnpu_job_put(job);
	}
	return ret;
}

/**
 * vnpu_kernel_queue_init - the device's own software queue, for the jobs
 * the driver submits itself (clearing device memory)
 * @vdev: device, its hardware queues initialised
 *
 * Return: 0 or -ENOMEM.
 */
int vnpu_kernel_queue_init(struct vnpu_device *vdev)
{
	struct device *dev = vdev->drm.dev;
	unsigned int i;

	vdev->zero_buf = dmam_alloc_coherent(dev, VNPU_ZERO_BUF_SIZE,
					     &vdev->zero_dma, GFP_KERNEL);
	vdev->zero_sgl = dmam_alloc_coherent(dev, VNPU_ZERO_SGL_ENTRIES *
					     sizeof(*vdev->zero_sgl),
					     &vdev->zero_sgl_dma, GFP_KERNEL);
	if (!vdev->zero_buf || !vdev->zero_sgl)
		return -ENOMEM;
	/* Coherent memory comes zeroed; say so rather than rely on it. */
	memset(vdev->zero_buf, 0, VNPU_ZERO_BUF_SIZE);
	for (i = 0; i < VNPU_ZERO_SGL_ENTRIES; i++) {
		vdev->zero_sgl[i].addr = vnpu_hw64(vdev->zero_dma);
		vdev->zero_sgl[i].len = vnpu_hw32(VNPU_ZERO_BUF_SIZE);
		vdev->zero_sgl[i].rsvd = 0;
	}

	vdev->kq = vnpu_squeue_create(vdev, 0, VNPU_DEFAULT_PRIORITY);
	if (IS_ERR(vdev->kq)) {
		int ret = PTR_ERR(vdev->kq);

		vdev->kq = NULL;
		return ret;
	}
	return 0;
}

/* Give back @n result slots of @b reserved by vnpu_results_reserve(). */
static void vnpu_results_unreserve(struct vnpu_batch *b, u32 n)
{
	u64 first = b->sq->last_seqno + 1;
	u32 i;

	if (!b->want_results)
		return;
	for (i = 0; i < n; i++)
		xa_release(&b->sq->waits, first + i);
	atomic_sub(b->count, &b->vfile->results);
	b->want_results = false;
}

/*
 * Count the batch's results against the file's cap and reserve their slots
 * in sq->waits, so that storing them later cannot fail. sq->submit_lock
 * held.
 */
static int vnpu_results_reserve(struct vnpu_batch *b)
{
	u64 first = b->sq->last_seqno + 1;
	u32 i;
	int ret;

	if (atomic_add_return(b->count, &b->vfile->results) >
	    VNPU_MAX_RESULTS_PER_FILE) {
		atomic_sub(b->count, &b->vfile->results);
		drm_dbg(b->file->minor->dev,
			"submit: %u uncollected results in this file\n",
			VNPU_MAX_RESULTS_PER_FILE);
		return -ENOSPC;
	}
	b->want_results = true;
	for (i = 0; i < b->count; i++) {
		ret = xa_reserve(&b->sq->waits, first + i, GFP_KERNEL_ACCOUNT);
		if (ret) {
			vnpu_results_unreserve(b, i);
			return ret;
		}
	}
	return 0;
}

int vnpu_submit_ioctl(struct drm_device *drm, void *data,
		      struct drm_file *file)
{
	struct drm_vnpu_submit *args = data;
	struct drm_vnpu_job *ujobs;
	struct vnpu_batch b;
	int idx, ret;
	u32 i;

	if (args->flags & ~DRM_VNPU_SUBMIT_F_EVENT) {
		drm_dbg(drm, "submit: unknown flags 0x%x\n", args->flags);
		return -EINVAL;
	}
	if (args->pad || args->first_seqno) {
		drm_dbg(drm, "submit: pad or first_seqno not zero\n");
		return -EINVAL;
	}
	if (!args->job_count || args->job_count > DRM_VNPU_MAX_JOBS) {
		drm_dbg(drm, "submit: %u jobs\n", args->job_count);
		return -EINVAL;
	}
	ujobs = kvmalloc_array(args->job_count, sizeof(*ujobs), GFP_KERNEL);
	if (!ujobs)
		return -ENOMEM;
	if (copy_from_user(ujobs, u64_to_user_ptr(args->jobs),
			   args->job_count * sizeof(*ujobs))) {
		ret = -EFAULT;
		goto out_free;
	}
	if (!drm_dev_enter(drm, &idx)) {
		ret = -ENODEV;
		goto out_free;
	}

	ret = vnpu_batch_begin(&b, file, args->queue_id, args->job_count,
			       false);
	if (ret)
		goto out_exit;
	if (!(args->flags & DRM_VNPU_SUBMIT_F_EVENT)) {
		ret = vnpu_results_reserve(&b);
		if (ret)
			goto out_end;
	}
	ret = vnpu_submit_prepare(&b, ujobs, args->flags);
	if (ret)
		goto out_unreserve;

	if (b.want_results) {
		/* WAIT's reference, until the job's record replaces it. */
		for (i = 0; i < b.count; i++) {
			void *old;

			vnpu_job_get(b.jobs[i]);
			/* Into the slot reserved above: allocates nothing. */
			old = xa_store(&b.sq->waits, b.jobs[i]->seqno,
				       b.jobs[i], GFP_NOWAIT);
			WARN_ON_ONCE(xa_is_err(old));
		}
	}
	vnpu_submit_commit(&b);
	args->first_seqno = b.first_seqno;
	/* Results nobody collected within the history window are dropped. */
	if (b.sq->last_seqno > VNPU_SEQNO_HISTORY)
		vnpu_squeue_drop_waits(b.sq, b.vfile,
				       b.sq->last_seqno - VNPU_SEQNO_HISTORY);
	goto out_end;

out_unreserve:
	vnpu_results_unreserve(&b, b.count);
out_end:
	vnpu_batch_end(&b);
out_exit:
	drm_dev_exit(idx);
out_free:
	kvfree(ujobs);
	return ret;
}

/*
 * Collect the result of @seqno if its job completed: 0 (copied to @args),
 * -ENOENT when there is none, or -EINPROGRESS with *@jobp the still running
 * job (a reference).
 */
static int vnpu_wait_collect(struct vnpu_squeue *sq, struct vnpu_file *vfile,
			     struct drm_vnpu_wait *args,
			     struct vnpu_job **jobp)
{
	struct vnpu_result *r;
	void *entry;

	xa_lock(&sq->waits);
	entry = xa_load(&sq->waits, args->seqno);
	if (!entry) {
		xa_unlock(&sq->waits);
		return -ENOENT;
	}
	if (xa_pointer_tag(entry) != VNPU_WAIT_RESULT) {
		*jobp = entry;
		vnpu_job_get(*jobp);
		xa_unlock(&sq->waits);
		return -EINPROGRESS;
	}
	/* Only one waiter collects it: the one that erases it. */
	r = xa_untag_pointer(entry);
	__xa_erase(&sq->waits, args->seqno);
	xa_unlock(&sq->waits);
	args->job_status = r->status;
	args->hw_status = r->hw_status;
	args->t_start = r->t_start;
	args->t_end = r->t_end;
	kfree(r);
	atomic_dec(&vfile->results);
	return 0;
}

int vnpu_wait_ioctl(struct drm_device *drm, void *data, struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;
	struct drm_vnpu_wait *args = data;
	struct vnpu_squeue *sq;
	struct vnpu_job *job;
	long timeout;
	int ret;

	if (args->flags) {
		drm_dbg(drm, "wait: flags not zero\n");
		return -EINVAL;
	}
	sq = vnpu_file_squeue_get(vfile, args->queue_id);
	if (!sq)
		return -ENOENT;

	ret = vnpu_wait_collect(sq, vfile, args, &job);
	if (ret != -EINPROGRESS)
		goto out_sq;

	ret = 0;
	timeout = drm_timeout_abs_to_jiffies(args->timeout_ns);
	if (!timeout) {
		ret = -ETIME;
	} else {
		timeout = dma_fence_wait_timeout(&job->fence, true, timeout);
		if (timeout < 0)
			ret = timeout;
		else if (!timeout)
			ret = -ETIME;
	}
	/* A job whose fence is signalled left its record in its place. */
	if (!ret && dma_fence_is_signaled(&job->fence)) {
		ret = vnpu_wait_collect(sq, vfile, args, &job);
		if (WARN_ON_ONCE(ret == -EINPROGRESS)) {
			vnpu_job_put(job);
			ret = -ENOENT;
		}
	} else if (!ret) {
		ret = -ETIME;
	}
	vnpu_job_put(job);
out_sq:
	vnpu_squeue_put(sq);
	return ret;
}

int vnpu_queue_create_ioctl(struct drm_device *drm, void *data,
			    struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;
	struct drm_vnpu_queue_create *args = data;
	struct vnpu_squeue *sq;
	u32 id;
	int idx, ret;

	if (args->flags || args->pad) {
		drm_dbg(drm, "queue_create: flags or pad not zero\n");
		return -EINVAL;
	}
	if (args->priority > DRM_VNPU_MAX_PRIORITY) {
		drm_dbg(drm, "queue_create: priority %u\n", args->priority);
		return -EINVAL;
	}
	/* As amdgpu_ctx_priority_permit(): above normal takes CAP_SYS_NICE. */
	if (args->priority > VNPU_DEFAULT_PRIORITY && !capable(CAP_SYS_NICE)) {
		drm_dbg(drm, "queue_create: priority %u needs CAP_SYS_NICE\n",
			args->priority);
		return -EACCES;
	}
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;
	sq = vnpu_squeue_create(to_vnpu_device(drm), 0, args->priority);
	if (IS_ERR(sq)) {
		ret = PTR_ERR(sq);
		goto out_exit;
	}
	/*
	 * Lookups take the xarray lock: holding it while the id is written
	 * means nobody finds the queue before sq->id is right.
	 */
	xa_lock(&vfile->queues);
	ret = __xa_alloc(&vfile->queues, &id, sq,
			 XA_LIMIT(1, VNPU_MAX_SQ_PER_FILE - 1), GFP_KERNEL);
	if (!ret)
		sq->id = id;
	xa_unlock(&vfile->queues);
	if (ret) {
		vnpu_squeue_put(sq);
		ret = ret == -EBUSY ? -ENOSPC : ret;
		goto out_exit;
	}
	args->queue_id = id;
out_exit:
	drm_dev_exit(idx);
	return ret;
}

int vnpu_queue_destroy_ioctl(struct drm_device *drm, void *data,
			     struct drm_file *file)
{
	struct vnpu_file *vfile = file->driver_priv;
	struct drm_vnpu_queue_destroy *args = data;
	struct vnpu_squeue *sq;

	if (args->pad) {
		drm_dbg(drm, "queue_destroy: pad not zero\n");
		return -EINVAL;
	}
	if (!args->queue_id) {
		drm_dbg(drm, "queue_destroy: queue 0 is permanent\n");
		return -EINVAL;
	}
	sq = xa_erase(&vfile->queues, args->queue_id);
	if (!sq)
		return -ENOENT;
	vnpu_squeue_detach(sq, vfile, false);
	vnpu_squeue_put(sq);
	return 0;
}

/* ---- io_uring ------------------------------------------------------------- */

static void vnpu_uring_cancel(struct io_uring_cmd *cmd,
			      unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	/* Pairs with the release in vnpu_uring_submit(): job->ucmd is set. */
	struct vnpu_job *job = smp_load_acquire(&pdu->job);
	unsigned long flags;
	bool mine;

	/*
	 * Still being issued (no job yet): the issuer completes it or hands
	 * it to a job; io_uring calls again until the command is done.
	 */
	if (!job)
		return;

	spin_lock_irqsave(&job->fence_lock, flags);
	mine = job->ucmd == cmd;
	if (mine)
		job->ucmd = NULL;
	spin_unlock_irqrestore(&job->fence_lock, flags);

	/*
	 * If the job finished first, its completion is already queued as task
	 * work and will post the CQE; this call may come again until it has.
	 * Otherwise the CQE is ours; the job itself keeps running.
	 */
	if (!mine)
		return;
	io_uring_cmd_done(cmd, -ECANCELED, job->seqno, issue_flags);
	vnpu_job_put(job);
}

static void vnpu_fixed_free(struct vnpu_fixed *f)
{
	unsigned int i;

	if (f->sgl)
		dma_free_coherent(f->dev, f->sgl_count * sizeof(*f->sgl),
				  f->sgl, f->sgl_dma);
	if (f->mapped)
		dma_unmap_sgtable(f->dev, &f->sgt, DMA_BIDIRECTIONAL, 0);
	if (f->sgt.sgl)
		sg_free_table(&f->sgt);
	for (i = 0; i < f->npages; i++) {
		/* The device may have written it. */
		set_page_dirty_lock(f->pages[i]);
		put_page(f->pages[i]);
	}
	kvfree(f->pages);
	kfree(f);
}

/*
 * Take the pages of [@addr, @addr + @len) of the command's registered
 * buffer (io_uring checks the range) and map them for the device.
 */
static struct vnpu_fixed *vnpu_fixed_create(struct io_uring_cmd *cmd,
					    struct device *dev, u64 addr,
					    u32 len)
{
	const struct bio_vec *bv;
	struct iov_iter iter;
	struct vnpu_fixed *f;
	size_t skip, left, off0 = 0;
	struct scatterlist *sg;
	unsigned int i, max;
	int ret;

	ret = io_uring_cmd_import_fixed(addr, len, ITER_DEST, &iter, cmd);
	if (ret)
		return ERR_PTR(ret);
	if (!iov_iter_is_bvec(&iter))
		return ERR_PTR(-EINVAL);

	f = kzalloc(sizeof(*f), GFP_KERNEL_ACCOUNT);
	if (!f)
		return ERR_PTR(-ENOMEM);
	f->dev = dev;
	f->len = len;
	max = (len >> PAGE_SHIFT) + 2;
	f->pages = kvmalloc_array(max, sizeof(*f->pages), GFP_KERNEL_ACCOUNT);
	if (!f->pages) {
		ret = -ENOMEM;
		goto err;
	}

	/* Registered buffers are page runs: only the ends may be partial. */
	bv = iter.bvec;
	skip = iter.iov_offset;
	left = len;
	while (left) {
		size_t off = bv->bv_offset + skip;
		size_t n = min_t(size_t, left, bv->bv_len - skip);
		struct page *page = nth_page(bv->bv_page, off >> PAGE_SHIFT);
		unsigned int k, cnt;

		off &= ~PAGE_MASK;
		if (f->npages && off) {
			ret = -EINVAL;
			goto err;
		}
		if (!f->npages)
			off0 = off;
		cnt = DIV_ROUND_UP(off + n, PAGE_SIZE);
		if (f->npages + cnt > max ||
		    (left > n && ((off + n) & ~PAGE_MASK))) {
			ret = -EINVAL;
			goto err;
		}
		for (k = 0; k < cnt; k++) {
			f->pages[f->npages] = nth_page(page, k);
			get_page(f->pages[f->npages++]);
		}
		left -= n;
		skip = 0;
		bv++;
	}

	ret = sg_alloc_table_from_pages_segment(&f->sgt, f->pages, f->npages,
						off0, len,
						dma_get_max_seg_size(dev),
						GFP_KERNEL_ACCOUNT);
	if (ret)
		goto err;
	ret = dma_map_sgtable(dev, &f->sgt, DMA_BIDIRECTIONAL, 0);
	if (ret)
		goto err;
	f->mapped = true;
	if (f->sgt.nents > VNPU_SGL_MAX) {
		ret = -E2BIG;
		goto err;
	}
	f->sgl = dma_alloc_coherent(dev, f->sgt.nents * sizeof(*f->sgl),
				    &f->sgl_dma, GFP_KERNEL);
	if (!f->sgl) {
		ret = -ENOMEM;
		goto err;
	}
	f->sgl_count = f->sgt.nents;
	for_each_sgtable_dma_sg(&f->sgt, sg, i) {
		f->sgl[i].addr = vnpu_hw64(sg_dma_address(sg));
		f->sgl[i].len = vnpu_hw32(sg_dma_len(sg));
		f->sgl[i].rsvd = 0;
	}
	return f;

err:
	vnpu_fixed_free(f);
	return ERR_PTR(ret);
}

#define VNPU_URING_CMD_BYTES \
	(2 * sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd))

/*
 * Submit the job of an io_uring SUBMIT; 0 or a negative errno. Takes
 * @fixed (the registered-buffer range, or NULL). With @nowait (issued
 * inline, IO_URING_F_NONBLOCK), it does not wait for the queue's submit
 * lock or the context's creation: -EAGAIN before the command is marked
 * cancelable, and io_uring issues it again from its worker, which may
 * block.
 */
static int vnpu_uring_submit(struct io_uring_cmd *cmd, struct drm_file *file,
			     struct drm_vnpu_uring_submit *args,
			     struct vnpu_fixed *fixed, bool nowait,
			     unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	struct drm_device *drm = file->minor->dev;
	struct vnpu_file *vfile = file->driver_priv;
	struct vnpu_batch b;
	struct vnpu_job *job;
	int idx, ret;

	if (!drm_dev_enter(drm, &idx)) {
		ret = -ENODEV;
		goto out_free;
	}
	if (nowait && !READ_ONCE(vfile->ctx)) {
		ret = -EAGAIN;
		goto out_exit;
	}
	ret = vnpu_batch_begin(&b, file, args->queue_id, 1, nowait);
	if (ret)
		goto out_exit;
	if (nowait) {
		/* Marked only now, without a wait (see vnpu_uring_cmd()). */
		pdu->job = NULL;
		io_uring_cmd_mark_cancelable(cmd, issue_flags);
	}
	b.fixed = fixed;
	fixed = NULL;
	ret = vnpu_submit_prepare(&b, &args->job, 0);
	if (ret)
		goto out_end;

	/*
	 * The command's reference, dropped when its CQE is posted. The job
	 * owns the command before it can complete, so that CQEs of a queue
	 * are posted in seqno order; cancellation may take it from here on.
	 */
	job = b.jobs[0];
	vnpu_job_get(job);
	job->ucmd = cmd;
	/* Publish the job to vnpu_uring_cancel() after job->ucmd. */
	smp_store_release(&pdu->job, job);
	vnpu_submit_commit(&b);
out_end:
	/* Still here if no job took it. */
	if (b.fixed)
		vnpu_fixed_free(b.fixed);
	vnpu_batch_end(&b);
out_exit:
	drm_dev_exit(idx);
out_free:
	if (fixed)
		vnpu_fixed_free(fixed);
	return ret;
}

int vnpu_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	struct drm_file *file = cmd->file->private_data;
	const struct io_uring_sqe *sqe = cmd->sqe;
	bool fixed = cmd->flags & IORING_URING_CMD_FIXED;
	u8 payload[VNPU_URING_CMD_BYTES];
	struct drm_vnpu_uring_submit args;
	struct vnpu_fixed *vf = NULL;
	struct drm_device *drm;
	bool nowait;
	u64 addr;
	u32 len;
	int ret;

	if (issue_flags & IO_URING_F_CANCEL) {
		vnpu_uring_cancel(cmd, issue_flags);
		return 0;
	}

	/* This path bypasses drm_ioctl(): do its checks here. */
	if (!file || !drm_is_accel_client(file))
		return -EINVAL;
	drm = file->minor->dev;

	if (cmd->cmd_op != DRM_VNPU_URING_CMD_SUBMIT) {
		drm_dbg(drm, "uring: unknown cmd_op 0x%x\n", cmd->cmd_op);
		return -EINVAL;
	}
	if (!(issue_flags & IO_URING_F_SQE128)) {
		drm_dbg(drm, "uring: ring lacks IORING_SETUP_SQE128\n");
		return -EINVAL;
	}

	/* The other SQE fields this command could carry. */
	addr = READ_ONCE(sqe->addr);
	len = READ_ONCE(sqe->len);
	if (READ_ONCE(sqe->ioprio) || READ_ONCE(sqe->file_index) ||
	    (!fixed && (addr || len || READ_ONCE(sqe->buf_index))) ||
	    (fixed && (!len || len > VNPU_BO_SIZE_MAX))) {
		drm_dbg(drm, "uring: bad SQE addr/len/buf_index/ioprio\n");
		return -EINVAL;
	}

	/* The SQE may be reused once we return: copy it now, once. */
	memcpy(payload, io_uring_sqe_cmd(cmd->sqe), sizeof(payload));
	memcpy(&args, payload, sizeof(args));
	if (args.flags || memchr_inv(payload + sizeof(args), 0,
				     sizeof(payload) - sizeof(args))) {
		drm_dbg(drm, "uring: flags or trailing command bytes not zero\n");
		return -EINVAL;
	}

	if (fixed) {
		vf = vnpu_fixed_create(cmd, drm->dev, addr, len);
		if (IS_ERR(vf)) {
			drm_dbg(drm, "uring: registered buffer: %ld\n",
				PTR_ERR(vf));
			return PTR_ERR(vf);
		}
	}

	/*
	 * Issued inline (the ring's uring_lock held, IO_URING_F_NONBLOCK):
	 * nothing waits; a contended queue gives -EAGAIN before the command
	 * is marked cancelable, and io_uring issues it again from io-wq.
	 * Marking takes no lock in this context.
	 */
	nowait = (issue_flags & IO_URING_F_NONBLOCK) &&
		 !(issue_flags & IO_URING_F_UNLOCKED);
	if (nowait) {
		ret = vnpu_uring_submit(cmd, file, &args, vf, true,
					issue_flags);
		if (ret == -EAGAIN)
			return -EAGAIN;
		if (ret)
			io_uring_cmd_done(cmd, ret, 0, issue_flags);
		return -EIOCBQUEUED;
	}

	/*
	 * Mark the command cancelable before taking any driver lock, never
	 * under one: issued from io-wq (IO_URING_F_UNLOCKED) this takes the
	 * ring's uring_lock, which the submitting task holds while it issues
	 * other commands inline - and those take the queue's submit_lock.
	 * From here on the command completes through io_uring_cmd_done()
	 * only, never by a return value.
	 */
	pdu->job = NULL;
	io_uring_cmd_mark_cancelable(cmd, issue_flags);
	ret = vnpu_uring_submit(cmd, file, &args, vf, false, issue_flags);
	if (ret)
		io_uring_cmd_done(cmd, ret, 0, issue_flags);
	return -EIOCBQUEUED;
}
