/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR MIT) */
/*
 * vnpu accel driver uAPI, version 2. Included by the driver (kernel/), libruntime and the tests;
 * docs/uapi.md describes it. Self-contained: it needs only DRM's drm.h (libdrm's include directory in user
 * space); every value a caller compares with (capability bits, hardware status, limits) is defined here.
 *
 * Conventions (Documentation/process/botching-up-ioctls.rst): fixed-width fields, explicit padding, no holes,
 * every struct a multiple of 8 bytes. Every flags, pad and reserved field must be zero on input; unknown bits
 * give -EINVAL. Handles are GEM handles of the calling file; free any of them with DRM_IOCTL_GEM_CLOSE.
 * Of the DRM core ioctls only VERSION, GET_CAP, GEM_CLOSE, PRIME_HANDLE_TO_FD and PRIME_FD_TO_HANDLE work on
 * the accel fd; every other core ioctl number gives -ENOTTY.
 *
 * Each open file is one device context: its own device virtual address space (device MMU), its device memory
 * allocations mapped into it, its queues and its jobs. Another file reaches none of them: its device memory,
 * queues, jobs and results are unknown there, and new device memory is cleared. The one thing files can share
 * is a host BO that one of them exports with DRM_IOCTL_PRIME_HANDLE_TO_FD (device memory cannot be exported);
 * such a dma-buf carries no fences of vnpu jobs, so the sharers order their accesses themselves.
 */
#ifndef _UAPI_VNPU_ACCEL_H_
#define _UAPI_VNPU_ACCEL_H_

#include "drm.h"

#if defined(__cplusplus)
extern "C" {
#endif

#define DRM_VNPU_GET_PARAM 0x00
#define DRM_VNPU_BO_CREATE 0x01
#define DRM_VNPU_MEM_ALLOC 0x02
#define DRM_VNPU_SUBMIT 0x03
#define DRM_VNPU_WAIT 0x04
#define DRM_VNPU_BO_INFO 0x05
#define DRM_VNPU_QUEUE_CREATE 0x06
#define DRM_VNPU_QUEUE_DESTROY 0x07

#define DRM_IOCTL_VNPU_GET_PARAM DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_GET_PARAM, struct drm_vnpu_get_param)
#define DRM_IOCTL_VNPU_BO_CREATE DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_BO_CREATE, struct drm_vnpu_bo_create)
#define DRM_IOCTL_VNPU_MEM_ALLOC DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_MEM_ALLOC, struct drm_vnpu_mem_alloc)
#define DRM_IOCTL_VNPU_SUBMIT DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_SUBMIT, struct drm_vnpu_submit)
#define DRM_IOCTL_VNPU_WAIT DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_WAIT, struct drm_vnpu_wait)
#define DRM_IOCTL_VNPU_BO_INFO DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_BO_INFO, struct drm_vnpu_bo_info)
#define DRM_IOCTL_VNPU_QUEUE_CREATE DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_QUEUE_CREATE, struct drm_vnpu_queue_create)
#define DRM_IOCTL_VNPU_QUEUE_DESTROY DRM_IOW(DRM_COMMAND_BASE + DRM_VNPU_QUEUE_DESTROY, struct drm_vnpu_queue_destroy)

/* ---- limits --------------------------------------------------------------------------------------------- */
#define DRM_VNPU_MAX_PRIORITY 3 /* highest queue priority (DRM_VNPU_PARAM_MAX_PRIORITY) */
#define DRM_VNPU_DEFAULT_PRIORITY 1 /* queue 0's priority; higher ones need CAP_SYS_NICE */
#define DRM_VNPU_MAX_QUEUES 64 /* queues per file, queue 0 included */
#define DRM_VNPU_SEQNO_HISTORY 4096 /* a queue remembers the outcome of its latest this many seqnos */
#define DRM_VNPU_MAX_RESULTS 16384 /* uncollected WAIT results per file before SUBMIT gives -ENOSPC */

/* ---- device capability bits (DRM_VNPU_PARAM_CAPS; docs/device.md, CAPS register) ------------------------ */
#define DRM_VNPU_CAP_DMA_SG (1u << 0) /* scatter-gather DMA engine (COPY_TO/FROM_DEVICE) */
#define DRM_VNPU_CAP_OP_MATMUL (1u << 1) /* DRM_VNPU_OP_MATMUL */
#define DRM_VNPU_CAP_MMU (1u << 2) /* per-context device MMU */
#define DRM_VNPU_CAP_EXEC (1u << 3) /* DRM_VNPU_OP_EXEC */
#define DRM_VNPU_CAP_SYNTH (1u << 4) /* DRM_VNPU_OP_SYNTH */
#define DRM_VNPU_CAP_FAULT_INJECT (1u << 5) /* fault injection (debugfs fault_inject) */
#define DRM_VNPU_CAP_TIMING_ONLY (1u << 6) /* timing-only mode (DRM_VNPU_PARAM_TIMING_ONLY) */
#define DRM_VNPU_CAP_TELEMETRY (1u << 7) /* telemetry counters (sysfs busy_ns_*) */

/* ---- hardware completion status (hw_status of WAIT and the job report; docs/device.md) ------------------- */
enum drm_vnpu_hw_status {
	DRM_VNPU_HW_OK = 0,
	DRM_VNPU_HW_BAD_OPCODE = 1, /* unknown opcode */
	DRM_VNPU_HW_BAD_FIELD = 2, /* reserved field non-zero, dimension or dtype out of range */
	DRM_VNPU_HW_DEVMEM_RANGE = 3, /* device memory access outside device memory */
	DRM_VNPU_HW_SGL_INVALID = 4, /* scatter-gather list malformed */
	DRM_VNPU_HW_DMA_FAULT = 5, /* host memory access failed */
	DRM_VNPU_HW_ABORTED = 6, /* not run to completion: queue reset, device removed, failed dependency */
	DRM_VNPU_HW_JOB_TOO_LONG = 7, /* too many commands in one job */
	DRM_VNPU_HW_MMU_FAULT = 8, /* translation fault; fault_addr in the job report */
	DRM_VNPU_HW_PROGRAM_INVALID = 9, /* EXEC program malformed */
	DRM_VNPU_HW_BAD_CONTEXT = 10, /* bad device context id */
};

/* ---- GET_PARAM ------------------------------------------------------------------------------------------ */
enum drm_vnpu_param {
	DRM_VNPU_PARAM_DEVICE_ID = 0, /* PCI vendor << 16 | device */
	DRM_VNPU_PARAM_DEVICE_VERSION = 1, /* device interface version, major << 16 | minor */
	DRM_VNPU_PARAM_CAPS = 2, /* device capability bits, DRM_VNPU_CAP_* */
	DRM_VNPU_PARAM_NUM_QUEUES = 3, /* hardware queues of the device */
	DRM_VNPU_PARAM_DEVMEM_SIZE = 4, /* device memory, bytes */
	DRM_VNPU_PARAM_DEVMEM_FREE = 5, /* device memory not allocated by anyone, bytes (a snapshot) */
	DRM_VNPU_PARAM_MAX_CMDS = 6, /* largest drm_vnpu_job.cmd_count */
	DRM_VNPU_PARAM_URING_CMD = 7, /* io_uring command ABI version (2), 0 if absent */
	DRM_VNPU_PARAM_H2D_MBPS = 8, /* timing model: host-to-device DMA bandwidth, 10^6 B/s */
	DRM_VNPU_PARAM_D2H_MBPS = 9, /* timing model: device-to-host DMA bandwidth, 10^6 B/s */
	DRM_VNPU_PARAM_COMPUTE_GFLOPS = 10, /* timing model: compute throughput per core, GFLOP/s */
	DRM_VNPU_PARAM_DEVICE_CLOCK_NS = 11, /* current device clock, ns (same clock as job timestamps) */
	DRM_VNPU_PARAM_MAX_JOBS = 12, /* largest drm_vnpu_submit.job_count */
	DRM_VNPU_PARAM_MAX_DEPS = 13, /* largest drm_vnpu_job.dep_count */
	DRM_VNPU_PARAM_MAX_PRIORITY = 14, /* highest drm_vnpu_queue_create.priority */
	DRM_VNPU_PARAM_MMU_PAGE_SIZE = 15, /* device MMU page size; MEM_ALLOC sizes round up to it */
	DRM_VNPU_PARAM_COMPUTE_CORES = 16, /* compute cores of the device */
	DRM_VNPU_PARAM_CONTEXT_ID = 17, /* the device context id of this file (created on first use; -ENOSPC) */
	DRM_VNPU_PARAM_DEVMEM_USED = 18, /* device memory allocated by this file, bytes */
	DRM_VNPU_PARAM_TIMING_ONLY = 19, /* 1 if the device skips functional compute (outputs undefined) */
};

/**
 * struct drm_vnpu_get_param - query one device parameter
 * @param: in, enum drm_vnpu_param; unknown values give -EINVAL
 * @pad: must be 0
 * @value: out, the parameter's value
 */
struct drm_vnpu_get_param {
	__u32 param;
	__u32 pad;
	__u64 value;
};

/* ---- BO_CREATE: host memory the device reaches by DMA (GEM shmem, pinned while it exists) ---------------- */
#define DRM_VNPU_BO_WC (1u << 0) /* write-combined CPU mapping (fast streaming writes, slow reads) */

/**
 * struct drm_vnpu_bo_create - create a host buffer object
 * @size: in, bytes, 1..2 GiB; rounded up to pages. The pages stay pinned while the BO exists and are charged to
 *        the creating user's RLIMIT_MEMLOCK (as io_uring's registered buffers are) unless the caller has
 *        CAP_IPC_LOCK: -ENOMEM beyond the limit. Closing the last handle gives the charge back.
 * @flags: in, DRM_VNPU_BO_*
 * @handle: out, GEM handle
 * @pad: must be 0
 * @pad2: must be 0
 * @mmap_offset: out, offset to pass to mmap(2) on the accel fd to map the BO
 */
struct drm_vnpu_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
	__u32 pad;
	__u32 pad2;
	__u64 mmap_offset;
};

/* ---- MEM_ALLOC: device-local memory, mapped into this file's device address space ------------------------ */
/**
 * struct drm_vnpu_mem_alloc - allocate device memory
 * @size: in, bytes, > 0; rounded up to the MMU page size. -ENOSPC when device memory is exhausted. The memory
 *        reads as zeros: the driver clears it by DMA before it returns (-EIO if that fails).
 * @flags: in, must be 0
 * @handle: out, GEM handle (not mmap-able; reach it with DMA commands)
 * @dev_addr: out, device virtual address of the allocation in this file's context. Commands name memory by
 *            handle + offset; the address is what programs' binding tables hold (see DRM_VNPU_OP_EXEC).
 */
struct drm_vnpu_mem_alloc {
	__u64 size;
	__u32 flags;
	__u32 handle;
	__u64 dev_addr;
};

/* ---- BO_INFO: what a handle is ------------------------------------------------------------------------- */
enum drm_vnpu_bo_kind {
	DRM_VNPU_BO_KIND_HOST = 1, /* from BO_CREATE */
	DRM_VNPU_BO_KIND_DEVICE = 2, /* from MEM_ALLOC */
};

/**
 * struct drm_vnpu_bo_info - describe a handle
 * @handle: in, GEM handle of this file
 * @kind: out, enum drm_vnpu_bo_kind
 * @size: out, bytes (after rounding)
 * @flags: out, the flags it was created with
 * @pad: must be 0
 * @mmap_offset: out, host BOs: mmap offset; device memory: 0
 * @dev_addr: out, device memory: device virtual address in this file's context; host BOs: 0
 */
struct drm_vnpu_bo_info {
	__u32 handle;
	__u32 kind;
	__u64 size;
	__u32 flags;
	__u32 pad;
	__u64 mmap_offset;
	__u64 dev_addr;
};

/* ---- QUEUE_CREATE / QUEUE_DESTROY ---------------------------------------------------------------------- */
/**
 * struct drm_vnpu_queue_create - create a submission queue of this file
 * @priority: in, 0 (lowest) .. DRM_VNPU_MAX_PRIORITY; the device serves higher priorities first.
 *            Above DRM_VNPU_DEFAULT_PRIORITY (queue 0's) needs CAP_SYS_NICE, else -EACCES.
 * @flags: in, must be 0
 * @queue_id: out, queue id for SUBMIT/WAIT (ids are per file, below DRM_VNPU_MAX_QUEUES; queue 0 exists
 *            implicitly at DRM_VNPU_DEFAULT_PRIORITY)
 * @pad: must be 0
 *
 * Jobs of one queue complete in submission order. Queues of all files are multiplexed onto the device's
 * hardware queues by priority (docs/uapi.md).
 */
struct drm_vnpu_queue_create {
	__u32 priority;
	__u32 flags;
	__u32 queue_id;
	__u32 pad;
};

/**
 * struct drm_vnpu_queue_destroy - destroy a queue; jobs already submitted still run and complete
 * @queue_id: in, a queue created by QUEUE_CREATE (queue 0 cannot be destroyed: -EINVAL)
 * @pad: must be 0
 */
struct drm_vnpu_queue_destroy {
	__u32 queue_id;
	__u32 pad;
};

/* ---- Commands ------------------------------------------------------------------------------------------ */
enum drm_vnpu_op {
	DRM_VNPU_OP_INVALID = 0, /* catches zeroed entries: -EINVAL */
	DRM_VNPU_OP_COPY_TO_DEVICE = 1, /* BO range -> device memory range (H2D DMA) */
	DRM_VNPU_OP_COPY_FROM_DEVICE = 2, /* device memory range -> BO range (D2H DMA) */
	DRM_VNPU_OP_MATMUL = 3, /* C = A x B over device memory, f32, row-major */
	DRM_VNPU_OP_EXEC = 4, /* run a compiled program (vnpu_isa.h) that lives in device memory */
	DRM_VNPU_OP_SYNTH = 5, /* occupy a compute core for a modelled time; for benchmarks */
	DRM_VNPU_OP_NOP = 6, /* does nothing; for measuring submission overhead */
};

/**
 * struct drm_vnpu_cmd_copy - DMA between a host BO and device memory
 * @bo_handle: BO created with BO_CREATE
 * @mem_handle: device memory from MEM_ALLOC
 * @bo_offset: byte offset into the BO
 * @mem_offset: byte offset into the device memory object
 * @size: bytes, > 0; both ranges must lie inside their objects
 * @reserved: must be 0
 */
struct drm_vnpu_cmd_copy {
	__u32 bo_handle;
	__u32 mem_handle;
	__u64 bo_offset;
	__u64 mem_offset;
	__u64 size;
	__u64 reserved[3];
};

/**
 * struct drm_vnpu_cmd_matmul - C[m,n] = A[m,k] x B[k,n] in device memory
 * @a_handle: device memory handle of A (A, B and C may be the same object; C must not overlap A or B)
 * @b_handle: device memory handle of B
 * @c_handle: device memory handle of C
 * @dtype: 0 = f32 (the only type)
 * @a_offset: byte offset of A, 4-byte aligned; the matrix must fit inside its object
 * @b_offset: byte offset of B, likewise
 * @c_offset: byte offset of C, likewise
 * @m: rows of A and C, 1..16384
 * @n: columns of B and C, 1..16384
 * @k: columns of A and rows of B, 1..16384
 * @pad: must be 0
 */
struct drm_vnpu_cmd_matmul {
	__u32 a_handle;
	__u32 b_handle;
	__u32 c_handle;
	__u32 dtype;
	__u64 a_offset;
	__u64 b_offset;
	__u64 c_offset;
	__u32 m;
	__u32 n;
	__u32 k;
	__u32 pad;
};

/**
 * struct drm_vnpu_cmd_exec - run a program
 * @prog_handle: device memory holding the program
 * @bindings_handle: device memory holding the binding table: @num_bindings __u64 device virtual addresses
 *                   (this file's context), one per binding slot of the program
 * @prog_offset: byte offset of the program, 8-byte aligned
 * @prog_size: program bytes, 1..16 MiB, inside the object
 * @bindings_offset: byte offset of the binding table, 8-byte aligned; the table must fit inside the object
 * @num_bindings: 1..64
 * @pad: must be 0
 * @reserved: must be 0
 *
 * The program and the binding table's addresses are checked by the device (format, device MMU): a bad program
 * fails the job with -EIO (hw_status PROGRAM_INVALID), an address outside this file's allocations with -EFAULT
 * (hw_status MMU_FAULT, fault address in the job report).
 */
struct drm_vnpu_cmd_exec {
	__u32 prog_handle;
	__u32 bindings_handle;
	__u64 prog_offset;
	__u64 prog_size;
	__u64 bindings_offset;
	__u32 num_bindings;
	__u32 pad;
	__u64 reserved[2];
};

/**
 * struct drm_vnpu_cmd_synth - occupy a compute core
 * @ns: modelled busy time, 1..10^10
 * @reserved: must be 0
 */
struct drm_vnpu_cmd_synth {
	__u64 ns;
	__u64 reserved[6];
};

/**
 * struct drm_vnpu_cmd - one command of a job (64 bytes)
 * @op: enum drm_vnpu_op
 * @flags: must be 0
 * @copy: for COPY_TO_DEVICE / COPY_FROM_DEVICE
 * @matmul: for MATMUL
 * @exec: for EXEC
 * @synth: for SYNTH
 * @raw: NOP: must be all 0
 */
struct drm_vnpu_cmd {
	__u32 op;
	__u32 flags;
	union {
		struct drm_vnpu_cmd_copy copy;
		struct drm_vnpu_cmd_matmul matmul;
		struct drm_vnpu_cmd_exec exec;
		struct drm_vnpu_cmd_synth synth;
		__u8 raw[56];
	};
};

#define DRM_VNPU_MAX_CMDS 64
#define DRM_VNPU_MAX_JOBS 256
#define DRM_VNPU_MAX_DEPS 16

/* ---- Jobs and SUBMIT ----------------------------------------------------------------------------------- */
/**
 * struct drm_vnpu_dep - a job this job waits for
 * @queue_id: a queue of this file
 * @pad: must be 0
 * @seqno: a seqno returned for that queue (already completed jobs are fine; a seqno not yet issued: -EINVAL),
 *         or an earlier job of the same batch on the same queue (its seqno is first_seqno + its index).
 *         A completed job 4096 or more seqnos older than the queue's latest gives -EINVAL: the queue keeps
 *         the outcome of its latest 4096 seqnos only.
 *
 * A job starts only after all its dependencies completed. If a dependency failed, the job does not run and
 * completes with -ECANCELED.
 */
struct drm_vnpu_dep {
	__u32 queue_id;
	__u32 pad;
	__u64 seqno;
};

/**
 * struct drm_vnpu_job - one job: a list of commands executed in order
 * @cmds: user pointer to @cmd_count struct drm_vnpu_cmd
 * @cmd_count: 1..DRM_VNPU_MAX_CMDS
 * @flags: must be 0
 * @deps: user pointer to @dep_count struct drm_vnpu_dep (ignored when @dep_count is 0)
 * @dep_count: 0..DRM_VNPU_MAX_DEPS
 * @report_handle: 0, or a host BO where the driver writes a struct drm_vnpu_job_report when the job completes
 *                 (before the CQE, event or WAIT return)
 * @report_offset: byte offset of the report in that BO, 8-byte aligned, report inside the BO
 * @user_data: opaque; returned in the DRM event and the job report
 */
struct drm_vnpu_job {
	__u64 cmds;
	__u32 cmd_count;
	__u32 flags;
	__u64 deps;
	__u32 dep_count;
	__u32 report_handle;
	__u64 report_offset;
	__u64 user_data;
};

#define DRM_VNPU_SUBMIT_F_EVENT (1u << 0) /* deliver a struct drm_vnpu_event_job on the fd per job */

/**
 * struct drm_vnpu_submit - queue a batch of jobs
 * @jobs: in, user pointer to @job_count struct drm_vnpu_job
 * @job_count: in, 1..DRM_VNPU_MAX_JOBS
 * @queue_id: in, a queue of this file (0 always exists)
 * @flags: in, DRM_VNPU_SUBMIT_F_*
 * @pad: must be 0
 * @first_seqno: out, job i of the batch gets seqno first_seqno + i on @queue_id. Must be 0 on input.
 *
 * All jobs of the batch are validated before any is queued: on error nothing is queued and the ioctl fails
 * with -EINVAL (bad field, range, op), -ENOENT (unknown handle or queue), -EFAULT (bad user pointer), -EBUSY
 * (the per-device in-flight limit, a module parameter, is reached; retry after jobs complete) or -ENOSPC (without
 * DRM_VNPU_SUBMIT_F_EVENT: the file already holds 16384 results not yet collected by WAIT, pending or completed;
 * WAIT for some first). A full hardware
 * ring never fails a submission: jobs wait in a software queue. Referenced objects stay alive until the job
 * completes, even if their handles are closed.
 */
struct drm_vnpu_submit {
	__u64 jobs;
	__u32 job_count;
	__u32 queue_id;
	__u32 flags;
	__u32 pad;
	__u64 first_seqno;
};

/**
 * struct drm_vnpu_job_report - written into the report BO when a job completes
 * @seqno: the job's seqno
 * @user_data: the job's user_data
 * @status: 0, or the job's negative errno (-EIO device error, -EFAULT MMU fault, -ETIMEDOUT, -ECANCELED)
 * @hw_status: the device's completion status, enum drm_vnpu_hw_status
 * @t_submit: CLOCK_MONOTONIC ns when the driver accepted the job
 * @t_start: device clock ns when the job started executing (0 if it never ran)
 * @t_end: device clock ns when the job completed
 * @fault_addr: the faulting device virtual address for -EFAULT, else 0
 * @h2d_ns: modelled busy time of the job on the H2D DMA engine, ns
 * @compute_ns: modelled busy time of the job on compute cores, ns
 * @d2h_ns: modelled busy time of the job on the D2H DMA engine, ns
 * @flags: DRM_VNPU_REPORT_F_VALID (set last, after every other field)
 */
struct drm_vnpu_job_report {
	__u64 seqno;
	__u64 user_data;
	__s32 status;
	__u32 hw_status;
	__u64 t_submit;
	__u64 t_start;
	__u64 t_end;
	__u64 fault_addr;
	__u32 h2d_ns;
	__u32 compute_ns;
	__u32 d2h_ns;
	__u32 flags;
};

#define DRM_VNPU_REPORT_F_VALID (1u << 0)

/* ---- Completion without io_uring: DRM events on the fd ------------------------------------------------- */
#define DRM_VNPU_EVENT_JOB 0x80000000

/**
 * struct drm_vnpu_event_job - read(2) from the accel fd after SUBMIT with DRM_VNPU_SUBMIT_F_EVENT
 * @base: type DRM_VNPU_EVENT_JOB, length sizeof(this)
 * @user_data: the job's user_data
 * @seqno: the job's seqno
 * @status: 0 or the job's negative errno
 * @queue_id: the job's queue
 */
struct drm_vnpu_event_job {
	struct drm_event base;
	__u64 user_data;
	__u64 seqno;
	__s32 status;
	__u32 queue_id;
};

/* ---- WAIT ---------------------------------------------------------------------------------------------- */
/**
 * struct drm_vnpu_wait - wait for a job submitted with DRM_IOCTL_VNPU_SUBMIT by this file
 * @seqno: in, a seqno returned by SUBMIT on @queue_id
 * @timeout_ns: in, absolute CLOCK_MONOTONIC deadline; -ETIME when it passes first. 0 polls.
 * @queue_id: in, the queue the job was submitted to
 * @flags: in, must be 0
 * @job_status: out, 0 if the job succeeded, else its negative errno (as in struct drm_vnpu_job_report)
 * @hw_status: out, the device's completion status, enum drm_vnpu_hw_status
 * @t_start: out, device clock (ns) when the job started executing
 * @t_end: out, device clock (ns) when the job completed
 *
 * Jobs of a queue complete in order, so a successful WAIT for seqno s also means every earlier job of that
 * queue completed. A job's result can be collected once: after a successful WAIT its seqno is forgotten and a
 * second WAIT gives -ENOENT, as does a seqno this file never received, an unknown queue, or a result not
 * collected before 4096 later seqnos were issued on the queue (it is dropped; the job still runs). Jobs submitted
 * through io_uring or with DRM_VNPU_SUBMIT_F_EVENT are reported by their CQE or event, not by WAIT.
 */
struct drm_vnpu_wait {
	__u64 seqno;
	__s64 timeout_ns;
	__u32 queue_id;
	__u32 flags;
	__s32 job_status;
	__u32 hw_status;
	__u64 t_start;
	__u64 t_end;
};

/* ---- io_uring: IORING_OP_URING_CMD on the accel fd ---------------------------------------------------- */
/*
 * cmd_op DRM_VNPU_URING_CMD_SUBMIT: the SQE's command area (needs IORING_SETUP_SQE128) holds a
 * struct drm_vnpu_uring_submit, the remaining command bytes zero. The job is validated exactly as by SUBMIT; a
 * validation error completes the SQE at once with that errno. Otherwise exactly one CQE arrives when the job
 * completes: res = 0 or the job's negative errno. With IORING_SETUP_CQE32, big_cqe[0] = the job's seqno
 * (big_cqe[1] is 0: Linux 6.12 carries one extra word). Device times and the hardware status are in the job
 * report, if one was requested. Pending commands complete with -ECANCELED when the ring is torn down; the job
 * itself still runs to completion.
 */
#define DRM_VNPU_URING_CMD_SUBMIT 0x02

/**
 * struct drm_vnpu_uring_submit - io_uring SUBMIT payload (one job)
 * @queue_id: a queue of this file
 * @flags: must be 0
 * @job: the job
 */
struct drm_vnpu_uring_submit {
	__u32 queue_id;
	__u32 flags;
	struct drm_vnpu_job job;
};

/* ---- USERPTR: the caller's own memory as a host BO (pinned user pages) ---------------------------------- */
#define DRM_VNPU_USERPTR 0x08
#define DRM_IOCTL_VNPU_USERPTR DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_USERPTR, struct drm_vnpu_userptr)

#define DRM_VNPU_USERPTR_READ_ONLY (1u << 0) /* the device only reads it: not a COPY_FROM_DEVICE target */

/* GET_PARAM: 1 if DRM_IOCTL_VNPU_USERPTR is supported (older drivers give -EINVAL for the param). */
#define DRM_VNPU_PARAM_USERPTR 20

/* BO_INFO kind of a USERPTR object (size = the pinned range, flags = DRM_VNPU_USERPTR_*, no mmap offset). */
#define DRM_VNPU_BO_KIND_USERPTR 3

/**
 * struct drm_vnpu_userptr - make a range of the caller's memory a host BO the device DMAs to and from
 * @addr: in, user virtual address, page aligned (a buffer at any alignment: pin the pages around it and name
 *        its bytes with the copy command's bo_offset)
 * @size: in, bytes, a multiple of the page size, 1 page..2 GiB; [@addr, @addr + @size) must not wrap
 * @flags: in, DRM_VNPU_USERPTR_*
 * @handle: out, GEM handle. Usable as the @bo_handle of COPY_TO_DEVICE and (unless READ_ONLY) COPY_FROM_DEVICE
 *          commands; not as a report BO (-EINVAL), not mmap-able (the caller has the memory already), not
 *          exportable.
 *
 * The pages are pinned (FOLL_LONGTERM, and FOLL_WRITE unless READ_ONLY) when the ioctl runs: the range must be
 * mapped memory the caller may read (and write): -EFAULT otherwise, e.g. unmapped, or PROT_READ without
 * READ_ONLY. Memory that cannot be pinned for long (DAX, some special mappings) gives the errno of
 * pin_user_pages (-EFAULT, -EINVAL or -EOPNOTSUPP). The pinned pages are charged to the caller's
 * RLIMIT_MEMLOCK like BO_CREATE's (-ENOMEM beyond it, unless CAP_IPC_LOCK). They stay pinned until the handle
 * is closed and every job naming the object has completed: unmapping the range meanwhile does not free them
 * (the device keeps reading and writing the same pages, which the process no longer sees); after fork() the
 * parent keeps the pinned pages, the child gets copies (the kernel's rule for pinned anonymous memory).
 * A READ_ONLY object as a COPY_FROM_DEVICE target fails SUBMIT with -EACCES.
 */
struct drm_vnpu_userptr {
	__u64 addr;
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/* ---- SIGNAL: intermediate completions inside a job ------------------------------------------------------ */
/*
 * A DRM_VNPU_OP_SIGNAL command (payload all zero) is reached when the job's previous command has finished (for
 * a first command: when the job starts); it uses no engine. For every SIGNAL of a job the driver reserves a
 * struct drm_vnpu_event_signal on the fd at SUBMIT (both paths: ioctl, with or without
 * DRM_VNPU_SUBMIT_F_EVENT, and io_uring) and sends it when the device reports the SIGNAL reached, while the job
 * goes on. Each job with N SIGNALs delivers exactly N such events, in command order, all before the job's own
 * completion (its fence, job event, CQE or WAIT result): a SIGNAL the job never reached (it failed or was
 * cancelled before it) is sent at the job's completion with @status = the job's errno and @t_signal = 0.
 * Read them with read(2) on the fd (or an IORING_OP_READ kept in flight on the submission ring).
 * SUBMIT errors: -EINVAL (a SIGNAL as a job's last command, more than DRM_VNPU_MAX_SIGNALS in a job, a payload
 * not zero, a device without DRM_VNPU_CAP_SIGNAL), -ENOSPC (the fd's event space cannot hold the job's events:
 * read the pending events first; nothing was queued).
 */
#define DRM_VNPU_OP_SIGNAL 7 /* enum drm_vnpu_op: intermediate completion, a struct drm_vnpu_event_signal */
#define DRM_VNPU_CAP_SIGNAL (1u << 8) /* the device posts intermediate completions (DRM_VNPU_OP_SIGNAL) */
#define DRM_VNPU_MAX_SIGNALS 4 /* SIGNAL commands per job */
#define DRM_VNPU_EVENT_SIGNAL 0x80000001

/* GET_PARAM: SIGNALs allowed per job (DRM_VNPU_MAX_SIGNALS, or 0 if the device has no DRM_VNPU_CAP_SIGNAL). */
#define DRM_VNPU_PARAM_MAX_SIGNALS 21

/**
 * struct drm_vnpu_event_signal - read(2) from the accel fd: a SIGNAL command of a job was reached
 * @base: type DRM_VNPU_EVENT_SIGNAL, length sizeof(this)
 * @user_data: the job's user_data
 * @seqno: the job's seqno on @queue_id
 * @t_signal: device clock ns when the SIGNAL was reached (the job's previous command had finished); 0 if
 *            never reached
 * @status: 0 if reached, else the job's negative errno (the job ended before it; no data guarantee)
 * @queue_id: the job's queue
 * @cmd_index: index of the SIGNAL command in the job
 * @pad: 0
 */
struct drm_vnpu_event_signal {
	struct drm_event base;
	__u64 user_data;
	__u64 seqno;
	__u64 t_signal;
	__s32 status;
	__u32 queue_id;
	__u32 cmd_index;
	__u32 pad;
};

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_VNPU_ACCEL_H_ */
