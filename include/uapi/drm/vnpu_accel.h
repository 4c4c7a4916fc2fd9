/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR MIT) */
/*
 * vnpu accel driver uAPI. Included by the driver (kernel/), libruntime and the tests; docs/uapi.md describes it.
 *
 * Conventions (Documentation/process/botching-up-ioctls.rst): fixed-width fields, explicit padding, no holes,
 * every struct a multiple of 8 bytes. Every flags, pad and reserved field must be zero on input; unknown bits
 * give -EINVAL. Handles are GEM handles of the calling file; free any of them with DRM_IOCTL_GEM_CLOSE.
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

#define DRM_IOCTL_VNPU_GET_PARAM DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_GET_PARAM, struct drm_vnpu_get_param)
#define DRM_IOCTL_VNPU_BO_CREATE DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_BO_CREATE, struct drm_vnpu_bo_create)
#define DRM_IOCTL_VNPU_MEM_ALLOC DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_MEM_ALLOC, struct drm_vnpu_mem_alloc)
#define DRM_IOCTL_VNPU_SUBMIT DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_SUBMIT, struct drm_vnpu_submit)
#define DRM_IOCTL_VNPU_WAIT DRM_IOWR(DRM_COMMAND_BASE + DRM_VNPU_WAIT, struct drm_vnpu_wait)

/* ---- GET_PARAM ------------------------------------------------------------------------------------------ */
enum drm_vnpu_param {
	DRM_VNPU_PARAM_DEVICE_ID = 0, /* PCI vendor << 16 | device */
	DRM_VNPU_PARAM_DEVICE_VERSION = 1, /* device interface version, major << 16 | minor */
	DRM_VNPU_PARAM_CAPS = 2, /* device capability bits (VNPU_CAP_* of the device spec) */
	DRM_VNPU_PARAM_NUM_QUEUES = 3, /* hardware queues usable through SUBMIT */
	DRM_VNPU_PARAM_DEVMEM_SIZE = 4, /* device memory, bytes */
	DRM_VNPU_PARAM_DEVMEM_FREE = 5, /* device memory not allocated by anyone, bytes (a snapshot) */
	DRM_VNPU_PARAM_MAX_CMDS = 6, /* largest drm_vnpu_submit.cmd_count */
	DRM_VNPU_PARAM_URING_CMD = 7, /* io_uring command ABI version (1), 0 if absent */
	DRM_VNPU_PARAM_H2D_MBPS = 8, /* timing model: host-to-device DMA bandwidth, 10^6 B/s */
	DRM_VNPU_PARAM_D2H_MBPS = 9, /* timing model: device-to-host DMA bandwidth, 10^6 B/s */
	DRM_VNPU_PARAM_COMPUTE_GFLOPS = 10, /* timing model: compute throughput, GFLOP/s */
	DRM_VNPU_PARAM_DEVICE_CLOCK_NS = 11, /* current device clock, ns (same clock as job timestamps) */
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
/**
 * struct drm_vnpu_bo_create - create a host buffer object
 * @size: in, bytes, 1..2 GiB; rounded up to pages
 * @flags: in, must be 0
 * @handle: out, GEM handle
 * @pad: must be 0
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

/* ---- MEM_ALLOC: device-local memory ------------------------------------------------------------------- */
/**
 * struct drm_vnpu_mem_alloc - allocate device memory
 * @size: in, bytes, > 0; rounded up to 4 KiB. -ENOSPC when device memory is exhausted.
 * @flags: in, must be 0
 * @handle: out, GEM handle (not mmap-able; reach it with DMA commands)
 * @dev_addr: out, device address of the allocation (informational: commands name memory by handle)
 */
struct drm_vnpu_mem_alloc {
	__u64 size;
	__u32 flags;
	__u32 handle;
	__u64 dev_addr;
};

/* ---- SUBMIT: one job, a list of commands executed in order --------------------------------------------- */
enum drm_vnpu_op {
	DRM_VNPU_OP_INVALID = 0, /* catches zeroed entries: -EINVAL */
	DRM_VNPU_OP_COPY_TO_DEVICE = 1, /* BO range -> device memory range (H2D DMA) */
	DRM_VNPU_OP_COPY_FROM_DEVICE = 2, /* device memory range -> BO range (D2H DMA) */
	DRM_VNPU_OP_MATMUL = 3, /* C = A x B over device memory, f32, row-major */
};

/**
 * struct drm_vnpu_cmd_copy - DMA between a host BO and device memory
 * @bo_handle: BO created with BO_CREATE
 * @mem_handle: device memory from MEM_ALLOC
 * @bo_offset: byte offset into the BO
 * @mem_offset: byte offset into the device memory object
 * @size: bytes, > 0; both ranges must lie inside their objects
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
 * @a_handle, @b_handle, @c_handle: device memory handles (may be the same object)
 * @dtype: 0 = f32 (the only type in this version)
 * @a_offset, @b_offset, @c_offset: byte offsets, 4-byte aligned; each matrix must fit inside its object
 * @m, @n, @k: dimensions, each 1..16384
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
 * struct drm_vnpu_cmd - one command of a job (64 bytes)
 * @op: enum drm_vnpu_op
 * @flags: must be 0
 * @copy: for COPY_TO_DEVICE / COPY_FROM_DEVICE
 * @matmul: for MATMUL
 */
struct drm_vnpu_cmd {
	__u32 op;
	__u32 flags;
	union {
		struct drm_vnpu_cmd_copy copy;
		struct drm_vnpu_cmd_matmul matmul;
	};
};

#define DRM_VNPU_MAX_CMDS 64

/**
 * struct drm_vnpu_submit - queue one job
 * @cmds: in, user pointer to @cmd_count struct drm_vnpu_cmd
 * @cmd_count: in, 1..DRM_VNPU_MAX_CMDS
 * @flags: in, must be 0
 * @queue: in, hardware queue index, < DRM_VNPU_PARAM_NUM_QUEUES
 * @pad: must be 0
 * @seqno: out (ioctl only), the job's sequence number on that queue, for WAIT. Must be 0 on input.
 *
 * The driver validates every command (handles, ranges, dimensions) before anything reaches the device; a bad
 * command fails the whole submit with -EINVAL (unknown op, flags, pad, range) or -ENOENT (unknown handle).
 * Referenced objects stay alive until the job completes, even if their handles are closed.
 */
struct drm_vnpu_submit {
	__u64 cmds;
	__u32 cmd_count;
	__u32 flags;
	__u32 queue;
	__u32 pad;
	__u64 seqno;
};

/**
 * struct drm_vnpu_wait - wait for a job submitted with DRM_IOCTL_VNPU_SUBMIT by this file
 * @seqno: in, a seqno returned by SUBMIT on @queue
 * @timeout_ns: in, absolute CLOCK_MONOTONIC deadline; -ETIME when it passes first. 0 polls.
 * @queue: in, the queue the job was submitted to
 * @flags: in, must be 0
 * @job_status: out, 0 if the job succeeded, else negative errno (-EIO device fault, -ECANCELED aborted)
 * @hw_status: out, the device's completion status (enum vnpu_cpl_status of the device spec)
 * @t_start: out, device clock (ns) when the job started executing
 * @t_end: out, device clock (ns) when the job completed
 *
 * A job's result can be collected once: after a successful WAIT its seqno is forgotten and a second WAIT
 * gives -ENOENT, as does a seqno this file never received.
 */
struct drm_vnpu_wait {
	__u64 seqno;
	__s64 timeout_ns;
	__u32 queue;
	__u32 flags;
	__s32 job_status;
	__u32 hw_status;
	__u64 t_start;
	__u64 t_end;
};

/* ---- io_uring: IORING_OP_URING_CMD on the accel fd ---------------------------------------------------- */
/*
 * cmd_op DRM_VNPU_URING_CMD_SUBMIT: the SQE's command area holds a struct drm_vnpu_submit (needs a ring created
 * with IORING_SETUP_SQE128; the remaining command bytes must be zero, and so must seqno). The job is validated
 * exactly as by the ioctl; a validation error completes the SQE at once with that errno. Otherwise exactly one
 * CQE arrives when the device completes the job: res = 0 or the job's negative errno (as job_status above).
 * With IORING_SETUP_CQE32 the extra CQE words carry big_cqe[0] = seqno; big_cqe[1] is always 0 (Linux 6.12's
 * io_uring_cmd_done() carries only one extra word). Jobs submitted this way are not visible to WAIT.
 * Pending commands are cancelled (res = -ECANCELED) when the ring is torn down; the job itself still runs.
 */
#define DRM_VNPU_URING_CMD_SUBMIT 0x01

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_VNPU_ACCEL_H_ */
