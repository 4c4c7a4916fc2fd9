/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vnpu: tracepoints (events/vnpu/ in tracefs).
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM vnpu

#if !defined(VNPU_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define VNPU_TRACE_H

#include <linux/tracepoint.h>

#include "vnpu_drv.h"

TRACE_EVENT(vnpu_job_submit,
	    TP_PROTO(struct vnpu_job *job, u32 hwq),
	    TP_ARGS(job, hwq),
	    TP_STRUCT__entry(__field(u32, minor)
			     __field(u32, ctx)
			     __field(u32, queue)
			     __field(u32, hwq)
			     __field(u64, seqno)
			     __field(u64, tag)
			     __field(u32, ncmds)),
	    TP_fast_assign(__entry->minor = job->vdev->drm.accel->index;
			   __entry->ctx = job->ctx->id;
			   __entry->queue = job->sq->id;
			   __entry->hwq = hwq;
			   __entry->seqno = job->seqno;
			   __entry->tag = job->tag;
			   __entry->ncmds = job->ncmds;),
	    TP_printk("accel%u ctx=%u queue=%u hwq=%u seqno=%llu tag=%llu cmds=%u",
		      __entry->minor, __entry->ctx, __entry->queue,
		      __entry->hwq, __entry->seqno, __entry->tag,
		      __entry->ncmds)
);

TRACE_EVENT(vnpu_job_complete,
	    TP_PROTO(struct vnpu_job *job),
	    TP_ARGS(job),
	    TP_STRUCT__entry(__field(u32, minor)
			     __field(u32, ctx)
			     __field(u32, queue)
			     __field(u64, seqno)
			     __field(int, status)
			     __field(u32, hw_status)
			     __field(u64, device_ns)),
	    TP_fast_assign(__entry->minor = job->vdev->drm.accel->index;
			   __entry->ctx = job->ctx->id;
			   __entry->queue = job->sq->id;
			   __entry->seqno = job->seqno;
			   __entry->status = job->status;
			   __entry->hw_status = job->hw_status;
			   __entry->device_ns = job->t_end > job->t_start ?
						job->t_end - job->t_start : 0;),
	    TP_printk("accel%u ctx=%u queue=%u seqno=%llu status=%d hw_status=%u device_ns=%llu",
		      __entry->minor, __entry->ctx, __entry->queue,
		      __entry->seqno, __entry->status, __entry->hw_status,
		      __entry->device_ns)
);

#endif /* VNPU_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE vnpu_trace
#include <trace/define_trace.h>
