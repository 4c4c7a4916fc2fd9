// SPDX-License-Identifier: GPL-2.0-only
/*
 * vnpu: jobs - validation, the hardware rings, completion, WAIT and the
 * io_uring command.
 *
 * A job is validated and translated into hardware commands before anything
 * is queued, so a bad submission never reaches the device. Accepted jobs go
 * on a per-queue software list that feeds the command ring as ring space is
 * reclaimed; SUBMIT therefore never fails because the ring is momentarily
 * full. Only the device-wide in-flight cap (module parameter max_inflight)
 * turns a submission away, with -EBUSY.
 *
 * Completion records are consumed by phase bit in the queue's threaded IRQ
 * handler. A watchdog also consumes them (lost interrupts), checks the queue
 * for a device error and resets a queue that makes no progress.
 */
#include <linux/dma-mapping.h>
#include <linux/iopoll.h>
#include <linux/io_uring/cmd.h>
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

unsigned int vnpu_max_inflight = 4096;
module_param_named(max_inflight, vnpu_max_inflight, uint, 0644);
MODULE_PARM_DESC(max_inflight,
		 "Jobs accepted and not yet completed per device before SUBMIT returns -EBUSY (default 4096)");

static unsigned int vnpu_job_timeout_ms = 30000;
module_param_named(job_timeout_ms, vnpu_job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms,
		 "Reset a queue whose jobs make no progress for this long, failing them with -ETIMEDOUT; 0 disables (default 30000)");

#define VNPU_WATCHDOG_MS 500

/* Per-command state of an io_uring SUBMIT: the job, holding a reference. */
struct vnpu_uring_pdu {
	struct vnpu_job *job;
};

/* ---- job lifetime ------------------------------------------------------ */

static void vnpu_job_put_objs(struct vnpu_job *job)
{
	while (job->nobjs)
		drm_gem_object_put(job->objs[--job->nobjs]);
}

static void vnpu_job_release(struct kref *ref)
{
	struct vnpu_job *job = container_of(ref, struct vnpu_job, ref);
	struct vnpu_device *vdev = job->vdev;

	vnpu_job_put_objs(job);
	if (job->accounted)
		atomic_dec(&vdev->inflight);
	kfree(job->objs);
	kfree(job->cmds);
	kfree(job);
	drm_dev_put(&vdev->drm);
}

/* Process context only: the last put may free GEM objects. */
static void vnpu_job_put(struct vnpu_job *job)
{
	kref_put(&job->ref, vnpu_job_release);
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
 * The job has left the queue with its status set: release what it used,
 * wake waiters and hand the result to a waiting io_uring command. Drops the
 * queue's reference.
 */
static void vnpu_job_finish(struct vnpu_job *job)
{
	struct vnpu_queue *q = job->queue;
	struct io_uring_cmd *ucmd;

	vnpu_job_put_objs(job);
	if (job->accounted) {
		job->accounted = false;
		atomic_dec(&job->vdev->inflight);
	}

	/* Exactly one of this and vnpu_uring_cancel() takes the command. */
	spin_lock(&q->lock);
	ucmd = job->ucmd;
	job->ucmd = NULL;
	spin_unlock(&q->lock);

	complete_all(&job->done);
	if (ucmd)
		io_uring_cmd_do_in_task_lazy(ucmd, vnpu_uring_task_done);
	vnpu_job_put(job);
}

static void vnpu_jobs_finish(struct list_head *jobs)
{
	struct vnpu_job *job, *tmp;

	list_for_each_entry_safe(job, tmp, jobs, node) {
		list_del_init(&job->node);
		vnpu_job_finish(job);
	}
}

static void vnpu_jobs_fail(struct list_head *jobs, int status)
{
	struct vnpu_job *job;

	list_for_each_entry(job, jobs, node) {
		job->status = status;
		job->hw_status = VNPU_CPL_ABORTED;
	}
}

/* ---- validation -------------------------------------------------------- */

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
	if (!mem) {
		drm_dbg(&job->vdev->drm,
			"submit: handle %u is not device memory\n", handle);
		return ERR_PTR(-EINVAL);
	}
	return mem;
}

/* Does [offset, offset + size) lie inside an object of @obj_size bytes? */
static bool vnpu_range_ok(u64 offset, u64 size, u64 obj_size)
{
	return size <= obj_size && offset <= obj_size - size;
}

static int vnpu_build_copy(struct vnpu_job *job, struct drm_file *file,
			   const struct drm_vnpu_cmd_copy *c, bool to_device,
			   struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;
	struct drm_gem_object *obj;
	struct vnpu_mem *mem;
	struct vnpu_bo *bo;

	if (c->reserved[0] || c->reserved[1] || c->reserved[2]) {
		drm_dbg(drm, "submit: copy reserved not zero\n");
		return -EINVAL;
	}
	if (!c->size) {
		drm_dbg(drm, "submit: copy of zero bytes\n");
		return -EINVAL;
	}

	obj = vnpu_job_lookup(job, file, c->bo_handle);
	if (IS_ERR(obj))
		return PTR_ERR(obj);
	bo = vnpu_bo_from_gem(obj);
	if (!bo) {
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

	hc->opcode = to_device ? VNPU_OPC_DMA_H2D : VNPU_OPC_DMA_D2H;
	hc->dma.sgl_addr = cpu_to_le64(bo->sgl_dma);
	hc->dma.sgl_count = cpu_to_le32(bo->sgl_count);
	hc->dma.sgl_offset = cpu_to_le64(c->bo_offset);
	hc->dma.dev_addr = cpu_to_le64(mem->node.start + c->mem_offset);
	hc->dma.length = cpu_to_le64(c->size);
	return 0;
}

static int vnpu_matmul_operand(struct vnpu_job *job, struct drm_file *file,
			       u32 handle, u64 offset, u64 rows, u64 cols,
			       __le64 *addr)
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
	*addr = cpu_to_le64(mem->node.start + offset);
	return 0;
}

static bool vnpu_dim_ok(u32 dim)
{
	return dim >= 1 && dim <= VNPU_MATMUL_DIM_MAX;
}

static int vnpu_build_matmul(struct vnpu_job *job, struct drm_file *file,
			     const struct drm_vnpu_cmd_matmul *m,
			     struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;
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
				  m->m, m->k, &hc->matmul.a_addr);
	if (ret)
		return ret;
	ret = vnpu_matmul_operand(job, file, m->b_handle, m->b_offset,
				  m->k, m->n, &hc->matmul.b_addr);
	if (ret)
		return ret;
	ret = vnpu_matmul_operand(job, file, m->c_handle, m->c_offset,
				  m->m, m->n, &hc->matmul.c_addr);
	if (ret)
		return ret;

	hc->opcode = VNPU_OPC_MATMUL;
	hc->matmul.m = cpu_to_le32(m->m);
	hc->matmul.n = cpu_to_le32(m->n);
	hc->matmul.k = cpu_to_le32(m->k);
	hc->matmul.dtype = cpu_to_le32(VNPU_DTYPE_F32);
	return 0;
}

static int vnpu_build_cmd(struct vnpu_job *job, struct drm_file *file,
			  const struct drm_vnpu_cmd *uc, struct vnpu_hw_cmd *hc)
{
	struct drm_device *drm = &job->vdev->drm;

	if (uc->flags) {
		drm_dbg(drm, "submit: command flags not zero\n");
		return -EINVAL;
	}
	switch (uc->op) {
	case DRM_VNPU_OP_COPY_TO_DEVICE:
		return vnpu_build_copy(job, file, &uc->copy, true, hc);
	case DRM_VNPU_OP_COPY_FROM_DEVICE:
		return vnpu_build_copy(job, file, &uc->copy, false, hc);
	case DRM_VNPU_OP_MATMUL:
		return vnpu_build_matmul(job, file, &uc->matmul, hc);
	default:
		drm_dbg(drm, "submit: unknown op %u\n", uc->op);
		return -EINVAL;
	}
}

/*
 * Validate a submission and build its job: the one path shared by the ioctl
 * and the io_uring command. Returns the job holding one reference, or an
 * ERR_PTR; nothing has reached the device either way.
 */
static struct vnpu_job *vnpu_job_create(struct vnpu_device *vdev,
					struct drm_file *file,
					const struct drm_vnpu_submit *args)
{
	struct drm_device *drm = &vdev->drm;
	struct drm_vnpu_cmd *ucmds;
	struct vnpu_queue *q;
	struct vnpu_job *job;
	u32 i, qi;
	int ret;

	if (args->flags || args->pad || args->seqno) {
		drm_dbg(drm, "submit: flags/pad/seqno not zero\n");
		return ERR_PTR(-EINVAL);
	}
	if (!args->cmd_count || args->cmd_count > vdev->max_cmds) {
		drm_dbg(drm, "submit: cmd_count %u\n", args->cmd_count);
		return ERR_PTR(-EINVAL);
	}
	if (args->queue >= vdev->num_queues) {
		drm_dbg(drm, "submit: queue %u\n", args->queue);
		return ERR_PTR(-EINVAL);
	}
	qi = array_index_nospec(args->queue, vdev->num_queues);
	q = &vdev->queues[qi];

	ucmds = memdup_array_user(u64_to_user_ptr(args->cmds), args->cmd_count,
				  sizeof(*ucmds));
	if (IS_ERR(ucmds))
		return ERR_CAST(ucmds);

	ret = -ENOMEM;
	job = kzalloc(sizeof(*job), GFP_KERNEL_ACCOUNT);
	if (!job)
		goto err_free_ucmds;
	kref_init(&job->ref);
	init_completion(&job->done);
	INIT_LIST_HEAD(&job->node);
	job->vdev = vdev;
	job->queue = q;
	drm_dev_get(drm);

	job->cmds = kcalloc(args->cmd_count, sizeof(*job->cmds),
			    GFP_KERNEL_ACCOUNT);
	/* At most three objects per command. */
	job->objs = kcalloc(args->cmd_count * 3, sizeof(*job->objs),
			    GFP_KERNEL_ACCOUNT);
	if (!job->cmds || !job->objs)
		goto err_put_job;
	job->ncmds = args->cmd_count;

	for (i = 0; i < job->ncmds; i++) {
		ret = vnpu_build_cmd(job, file, &ucmds[i], &job->cmds[i]);
		if (ret)
			goto err_put_job;
	}

	if (atomic_inc_return(&vdev->inflight) > vnpu_max_inflight) {
		atomic_dec(&vdev->inflight);
		drm_dbg(drm, "submit: %u jobs in flight\n", vnpu_max_inflight);
		ret = -EBUSY;
		goto err_put_job;
	}
	job->accounted = true;

	job->seqno = atomic64_inc_return(&q->seqno);
	for (i = 0; i < job->ncmds; i++)
		job->cmds[i].tag = cpu_to_le64(job->seqno);
	job->cmds[job->ncmds - 1].flags = VNPU_CMD_F_LAST;

	kfree(ucmds);
	return job;

err_put_job:
	vnpu_job_put(job);
err_free_ucmds:
	kfree(ucmds);
	return ERR_PTR(ret);
}

/* ---- rings ------------------------------------------------------------- */

/* Move pending jobs onto the command ring while they fit. q->lock held. */
static void vnpu_queue_feed(struct vnpu_queue *q)
{
	u32 mask = q->entries - 1;
	struct vnpu_job *job;
	bool written = false;
	u32 i, used;

	if (q->stopped || q->dead)
		return;

	while (!list_empty(&q->pending)) {
		job = list_first_entry(&q->pending, struct vnpu_job, node);
		/* One entry stays free: tail == head means an empty ring. */
		used = q->sq_tail - q->sq_free;
		if (q->entries - 1 - used < job->ncmds)
			break;

		job->sq_start = q->sq_tail;
		for (i = 0; i < job->ncmds; i++)
			memcpy(&q->sq[q->sq_tail++ & mask], &job->cmds[i],
			       sizeof(*q->sq));
		list_move_tail(&job->node, &q->hw);
		written = true;
	}

	/* writel() orders the ring writes before the doorbell. */
	if (written)
		vnpu_qwr(q, VNPU_QREG_SQ_TAIL, q->sq_tail & mask);
}

static int vnpu_cpl_errno(u32 hw_status)
{
	switch (hw_status) {
	case VNPU_CPL_OK:
		return 0;
	case VNPU_CPL_ABORTED:
		return -ECANCELED;
	default:
		return -EIO;
	}
}

static struct vnpu_job *vnpu_queue_find(struct vnpu_queue *q, u64 tag)
{
	struct vnpu_job *job;

	/* Jobs mostly complete in ring order: the first entry usually hits. */
	list_for_each_entry(job, &q->hw, node)
		if (job->seqno == tag)
			return job;
	return NULL;
}

/*
 * Consume valid completion records, moving their jobs to @done, and reclaim
 * ring space. @doorbell: tell the device (not once the queue is disabled).
 * q->lock held. Returns whether anything was consumed.
 */
static bool vnpu_queue_reap(struct vnpu_queue *q, struct list_head *done,
			    bool doorbell)
{
	struct drm_device *drm = &q->vdev->drm;
	struct vnpu_hw_cpl *cpl;
	struct vnpu_job *job;
	bool any = false;
	u64 tag;

	for (;;) {
		cpl = &q->cq[q->cq_head];
		if ((le16_to_cpu(READ_ONCE(cpl->flags)) & VNPU_CPL_F_PHASE) !=
		    q->cq_phase)
			break;
		/* Read the record only after seeing its phase bit. */
		dma_rmb();
		tag = le64_to_cpu(cpl->tag);

		job = vnpu_queue_find(q, tag);
		if (job) {
			job->hw_status = le16_to_cpu(cpl->status);
			job->status = vnpu_cpl_errno(job->hw_status);
			job->t_start = le64_to_cpu(cpl->t_start);
			job->t_end = le64_to_cpu(cpl->t_end);
			list_move_tail(&job->node, done);
		} else {
			drm_err_ratelimited(drm,
					    "queue %u: completion for unknown tag %llu\n",
					    q->index, tag);
		}

		if (++q->cq_head == q->entries) {
			q->cq_head = 0;
			q->cq_phase ^= VNPU_CPL_F_PHASE;
		}
		any = true;
	}

	if (!any)
		return false;

	if (doorbell)
		vnpu_qwr(q, VNPU_QREG_CQ_HEAD, q->cq_head);
	q->progress = true;
	/* Entries before the oldest unfinished job are free again. */
	if (list_empty(&q->hw))
		q->sq_free = q->sq_tail;
	else
		q->sq_free = list_first_entry(&q->hw, struct vnpu_job,
					      node)->sq_start;
	vnpu_queue_feed(q);
	return true;
}

/* Program the rings and enable the queue; both rings must be reset. */
static int vnpu_queue_enable(struct vnpu_queue *q)
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

/*
 * Stop the queue, fail the jobs the device had with @status and restart it
 * with empty rings (unless @fatal). Pending jobs then go to the fresh ring;
 * if the queue cannot be restarted they fail too. service_lock held; the
 * failed jobs are added to @done.
 */
static void vnpu_queue_recover(struct vnpu_queue *q, struct list_head *done,
			       int status, bool fatal)
{
	LIST_HEAD(reaped);
	struct vnpu_job *job;
	u32 st;
	int ret = 0;

	/* Collect what finished, which also frees room for aborted records. */
	spin_lock(&q->lock);
	q->stopped = true;
	vnpu_queue_reap(q, done, true);
	spin_unlock(&q->lock);

	/* Fetched jobs complete as ABORTED once the queue is disabled. */
	vnpu_qwr(q, VNPU_QREG_CTRL, 0);
	if (readl_poll_timeout(q->vdev->regs +
			       VNPU_REG_QUEUE(q->index, VNPU_QREG_STATUS),
			       st, !(st & VNPU_QSTATUS_ENABLED) &&
			       (st & (VNPU_QSTATUS_IDLE | VNPU_QSTATUS_ERROR)),
			       100, 500000))
		drm_warn(&q->vdev->drm, "queue %u: did not stop (status 0x%x)\n",
			 q->index, st);

	spin_lock(&q->lock);
	vnpu_queue_reap(q, &reaped, false);
	/* Aborted by us: report why rather than a bare cancellation. */
	list_for_each_entry(job, &reaped, node)
		if (job->hw_status == VNPU_CPL_ABORTED)
			job->status = status;
	list_splice_tail_init(&reaped, done);
	vnpu_jobs_fail(&q->hw, status);
	list_splice_tail_init(&q->hw, done);

	memset(q->cq, 0, q->entries * sizeof(*q->cq));
	q->sq_tail = 0;
	q->sq_free = 0;
	q->cq_head = 0;
	q->cq_phase = VNPU_CPL_F_PHASE;
	spin_unlock(&q->lock);

	if (!fatal)
		ret = vnpu_queue_enable(q);

	spin_lock(&q->lock);
	if (fatal || ret) {
		q->dead = true;
		q->dead_status = fatal ? -ENODEV : -EIO;
		vnpu_jobs_fail(&q->pending, q->dead_status);
		list_splice_tail_init(&q->pending, done);
	}
	q->stopped = false;
	vnpu_queue_feed(q);
	spin_unlock(&q->lock);
}

/* Consume completions and check for a device error. */
static void vnpu_queue_service(struct vnpu_queue *q)
{
	LIST_HEAD(done);
	u32 status;

	mutex_lock(&q->service_lock);
	spin_lock(&q->lock);
	if (!q->dead)
		vnpu_queue_reap(q, &done, true);
	spin_unlock(&q->lock);

	if (!q->dead) {
		status = vnpu_qrd(q, VNPU_QREG_STATUS);
		if (status & VNPU_QSTATUS_ERROR) {
			drm_err(&q->vdev->drm,
				"queue %u: device error %u, resetting queue\n",
				q->index, vnpu_qrd(q, VNPU_QREG_ERROR));
			vnpu_queue_recover(q, &done, -EIO, false);
		}
	}
	mutex_unlock(&q->service_lock);

	vnpu_jobs_finish(&done);
}

static void vnpu_queue_push(struct vnpu_queue *q, struct vnpu_job *job,
			    struct io_uring_cmd *ucmd)
{
	bool dead;

	/* The queue's reference, dropped by vnpu_job_finish(). */
	kref_get(&job->ref);

	spin_lock(&q->lock);
	job->ucmd = ucmd;
	dead = q->dead;
	if (dead) {
		job->status = q->dead_status;
		job->hw_status = VNPU_CPL_ABORTED;
	} else {
		list_add_tail(&job->node, &q->pending);
		vnpu_queue_feed(q);
	}
	spin_unlock(&q->lock);

	if (dead)
		vnpu_job_finish(job);
}

irqreturn_t vnpu_irq_handler(int irq, void *arg)
{
	return IRQ_WAKE_THREAD;
}

irqreturn_t vnpu_irq_thread(int irq, void *arg)
{
	vnpu_queue_service(arg);
	return IRQ_HANDLED;
}

static void vnpu_watchdog(struct work_struct *work)
{
	struct vnpu_queue *q = container_of(to_delayed_work(work),
					    struct vnpu_queue, watchdog);
	unsigned int timeout = READ_ONCE(vnpu_job_timeout_ms);
	LIST_HEAD(done);
	bool busy, stuck;

	/* Also picks up completions whose interrupt went missing. */
	vnpu_queue_service(q);

	mutex_lock(&q->service_lock);
	spin_lock(&q->lock);
	busy = !list_empty(&q->hw);
	if (!busy || q->progress)
		q->idle_ticks = 0;
	else
		q->idle_ticks++;
	q->progress = false;
	stuck = !q->dead && busy && timeout &&
		q->idle_ticks * VNPU_WATCHDOG_MS >= timeout;
	spin_unlock(&q->lock);

	if (stuck) {
		drm_err(&q->vdev->drm,
			"queue %u: no progress for %u ms, resetting queue\n",
			q->index, q->idle_ticks * VNPU_WATCHDOG_MS);
		q->idle_ticks = 0;
		vnpu_queue_recover(q, &done, -ETIMEDOUT, false);
	}
	mutex_unlock(&q->service_lock);

	vnpu_jobs_finish(&done);

	if (!READ_ONCE(q->dead))
		queue_delayed_work(system_wq, &q->watchdog,
				   msecs_to_jiffies(VNPU_WATCHDOG_MS));
}

int vnpu_queue_init(struct vnpu_device *vdev, struct vnpu_queue *q, u32 index,
		    int irq)
{
	struct device *dev = vdev->drm.dev;
	int ret;

	q->vdev = vdev;
	q->index = index;
	q->irq = irq;
	spin_lock_init(&q->lock);
	mutex_init(&q->service_lock);
	INIT_LIST_HEAD(&q->pending);
	INIT_LIST_HEAD(&q->hw);
	INIT_DELAYED_WORK(&q->watchdog, vnpu_watchdog);
	atomic64_set(&q->seqno, 0);
	q->cq_phase = VNPU_CPL_F_PHASE;

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

	ret = vnpu_queue_enable(q);
	if (ret) {
		free_irq(irq, q);
		return ret;
	}

	queue_delayed_work(system_wq, &q->watchdog,
			   msecs_to_jiffies(VNPU_WATCHDOG_MS));
	return 0;
}

/* Disable the queue for good; every job it holds fails with -ENODEV. */
void vnpu_queue_fini(struct vnpu_queue *q)
{
	LIST_HEAD(done);

	spin_lock(&q->lock);
	q->dead = true;
	q->dead_status = -ENODEV;
	spin_unlock(&q->lock);
	cancel_delayed_work_sync(&q->watchdog);

	mutex_lock(&q->service_lock);
	vnpu_queue_recover(q, &done, -ENODEV, true);
	mutex_unlock(&q->service_lock);

	free_irq(q->irq, q);
	vnpu_jobs_finish(&done);
}

/*
 * Debug aid: ring the doorbell with an index outside the ring, which the
 * device treats as a fatal queue error, and let the watchdog recover it now.
 */
void vnpu_queue_inject_error(struct vnpu_queue *q)
{
	spin_lock(&q->lock);
	if (!q->dead && !q->stopped)
		vnpu_qwr(q, VNPU_QREG_SQ_TAIL, q->entries);
	spin_unlock(&q->lock);
	mod_delayed_work(system_wq, &q->watchdog, 0);
}

/* ---- ioctls -------------------------------------------------------------- */

int vnpu_submit_ioctl(struct drm_device *drm, void *data,
		      struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct vnpu_file *vfile = file->driver_priv;
	struct drm_vnpu_submit *args = data;
	struct vnpu_job *job;
	int idx, ret;

	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	job = vnpu_job_create(vdev, file, args);
	if (IS_ERR(job)) {
		ret = PTR_ERR(job);
		goto out_exit;
	}

	/* The WAIT table's reference, dropped by WAIT or at file close. */
	kref_get(&job->ref);
	ret = xa_insert(&vfile->jobs[job->queue->index], job->seqno, job,
			GFP_KERNEL_ACCOUNT);
	if (ret) {
		vnpu_job_put(job);
		goto out_put;
	}

	vnpu_queue_push(job->queue, job, NULL);
	args->seqno = job->seqno;

out_put:
	vnpu_job_put(job);
out_exit:
	drm_dev_exit(idx);
	return ret;
}

int vnpu_wait_ioctl(struct drm_device *drm, void *data, struct drm_file *file)
{
	struct vnpu_device *vdev = to_vnpu_device(drm);
	struct vnpu_file *vfile = file->driver_priv;
	struct drm_vnpu_wait *args = data;
	struct vnpu_job *job;
	struct xarray *xa;
	long timeout;
	int ret = 0;

	if (args->flags) {
		drm_dbg(drm, "wait: flags not zero\n");
		return -EINVAL;
	}
	if (args->queue >= vdev->num_queues) {
		drm_dbg(drm, "wait: queue %u\n", args->queue);
		return -EINVAL;
	}
	if (args->seqno > ULONG_MAX)
		return -ENOENT;
	xa = &vfile->jobs[array_index_nospec(args->queue, vdev->num_queues)];

	xa_lock(xa);
	job = xa_load(xa, args->seqno);
	if (job)
		kref_get(&job->ref);
	xa_unlock(xa);
	if (!job)
		return -ENOENT;

	if (!completion_done(&job->done)) {
		timeout = drm_timeout_abs_to_jiffies(args->timeout_ns);
		if (!timeout) {
			ret = -ETIME;
		} else {
			timeout = wait_for_completion_interruptible_timeout(&job->done,
									    timeout);
			if (timeout < 0)
				ret = timeout;
			else if (!timeout)
				ret = -ETIME;
		}
	}

	/* Only one waiter collects the result. */
	if (!ret) {
		if (xa_cmpxchg(xa, args->seqno, job, NULL, 0) == job) {
			args->job_status = job->status;
			args->hw_status = job->hw_status;
			args->t_start = job->t_start;
			args->t_end = job->t_end;
			vnpu_job_put(job);
		} else {
			ret = -ENOENT;
		}
	}

	vnpu_job_put(job);
	return ret;
}

void vnpu_file_release_jobs(struct vnpu_file *vfile)
{
	struct vnpu_job *job;
	unsigned long seqno;
	unsigned int i;

	for (i = 0; i < VNPU_MAX_QUEUES; i++) {
		xa_for_each(&vfile->jobs[i], seqno, job) {
			xa_erase(&vfile->jobs[i], seqno);
			vnpu_job_put(job);
		}
		xa_destroy(&vfile->jobs[i]);
	}
}

/* ---- io_uring ------------------------------------------------------------ */

static void vnpu_uring_cancel(struct io_uring_cmd *cmd,
			      unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	struct vnpu_job *job = pdu->job;
	struct vnpu_queue *q = job->queue;
	bool mine;

	spin_lock(&q->lock);
	mine = job->ucmd == cmd;
	if (mine)
		job->ucmd = NULL;
	spin_unlock(&q->lock);

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

#define VNPU_URING_CMD_BYTES \
	(2 * sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd))

int vnpu_uring_cmd(struct io_uring_cmd *cmd, unsigned int issue_flags)
{
	struct vnpu_uring_pdu *pdu = io_uring_cmd_to_pdu(cmd,
							 struct vnpu_uring_pdu);
	struct drm_file *file = cmd->file->private_data;
	u8 payload[VNPU_URING_CMD_BYTES];
	struct drm_vnpu_submit args;
	struct vnpu_device *vdev;
	struct drm_device *drm;
	struct vnpu_job *job;
	int idx;

	if (issue_flags & IO_URING_F_CANCEL) {
		vnpu_uring_cancel(cmd, issue_flags);
		return 0;
	}

	/* This path bypasses drm_ioctl(): do its checks here. */
	if (!file || !drm_is_accel_client(file))
		return -EINVAL;
	drm = file->minor->dev;
	vdev = to_vnpu_device(drm);

	if (cmd->cmd_op != DRM_VNPU_URING_CMD_SUBMIT) {
		drm_dbg(drm, "uring: unknown cmd_op 0x%x\n", cmd->cmd_op);
		return -EINVAL;
	}
	if (!(issue_flags & IO_URING_F_SQE128)) {
		drm_dbg(drm, "uring: ring lacks IORING_SETUP_SQE128\n");
		return -EINVAL;
	}

	/* The SQE may be reused once we return: copy it now, once. */
	memcpy(payload, io_uring_sqe_cmd(cmd->sqe), sizeof(payload));
	memcpy(&args, payload, sizeof(args));
	if (memchr_inv(payload + sizeof(args), 0,
		       sizeof(payload) - sizeof(args))) {
		drm_dbg(drm, "uring: command bytes after the submit not zero\n");
		return -EINVAL;
	}

	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;

	job = vnpu_job_create(vdev, file, &args);
	if (IS_ERR(job)) {
		drm_dev_exit(idx);
		return PTR_ERR(job);
	}

	/*
	 * The creator's reference passes to the command. Nothing can fail
	 * from here on: a cancelable command must be completed through
	 * io_uring_cmd_done(), never by a synchronous return.
	 */
	pdu->job = job;
	io_uring_cmd_mark_cancelable(cmd, issue_flags);
	vnpu_queue_push(job->queue, job, cmd);

	drm_dev_exit(idx);
	return -EIOCBQUEUED;
}
