/* SPDX-License-Identifier: MIT */
/*
 * vnpu hardware interface: PCI identity, BAR0 register map, command ring, scatter-gather and completion formats.
 *
 * This header is the single definition of the device's programming interface. The device model
 * (qemu-device/), the kernel driver (kernel/), libruntime's sim backend and the tests all include it;
 * docs/device.md describes the same layout in prose. All multi-byte fields are little-endian.
 */
#ifndef VNPU_HW_H
#define VNPU_HW_H

#include <linux/types.h>

/* ---- PCI identity ---------------------------------------------------------------------------------------- */
#define VNPU_PCI_VENDOR_ID 0x1b36 /* Red Hat, Inc. (QEMU) */
#define VNPU_PCI_DEVICE_ID 0x10f5
#define VNPU_PCI_CLASS 0x1200 /* processing accelerator */
#define VNPU_PCI_REVISION 0x01

#define VNPU_BAR_REGS 0 /* 64 KiB MMIO register file */
#define VNPU_BAR_MSIX 2 /* MSI-X table and PBA */
#define VNPU_BAR_REGS_SIZE 0x10000

/* ---- Global registers (BAR0, 32-bit access only) -------------------------------------------------------- */
#define VNPU_REG_ID 0x000 /* RO: VNPU_ID_MAGIC */
#define VNPU_REG_VERSION 0x004 /* RO: interface version, major << 16 | minor */
#define VNPU_REG_CAPS 0x008 /* RO: VNPU_CAP_* */
#define VNPU_REG_NUM_QUEUES 0x00c /* RO: number of hardware command queues */
#define VNPU_REG_DEVMEM_SIZE_LO 0x010 /* RO: device-local memory size in bytes */
#define VNPU_REG_DEVMEM_SIZE_HI 0x014
#define VNPU_REG_RING_MAX 0x018 /* RO: largest ring size (entries) a queue accepts */
#define VNPU_REG_STATUS 0x020 /* RO: VNPU_STATUS_* */
#define VNPU_REG_RESET 0x024 /* WO: write VNPU_RESET_MAGIC to reset the whole device */
#define VNPU_REG_SCRATCH 0x028 /* RW: no effect; for bring-up */
#define VNPU_REG_CLOCK_LO 0x030 /* RO: device clock, ns; reading LO latches HI */
#define VNPU_REG_CLOCK_HI 0x034
#define VNPU_REG_H2D_MBPS 0x040 /* RO: timing model, host-to-device DMA bandwidth, MB/s (10^6 B/s) */
#define VNPU_REG_D2H_MBPS 0x044 /* RO: timing model, device-to-host DMA bandwidth, MB/s */
#define VNPU_REG_COMPUTE_GFLOPS 0x048 /* RO: timing model, compute throughput, GFLOP/s */
#define VNPU_REG_CMD_OVERHEAD_NS 0x04c /* RO: timing model, fixed cost of every command, ns */

#define VNPU_ID_MAGIC 0x55504e56u /* "VNPU" in memory order */
#define VNPU_VERSION_MAJOR 0
#define VNPU_VERSION_MINOR 1
#define VNPU_VERSION ((VNPU_VERSION_MAJOR << 16) | VNPU_VERSION_MINOR)
#define VNPU_RESET_MAGIC 0x52535421u /* "!TSR" */

#define VNPU_CAP_DMA_SG (1u << 0) /* scatter-gather DMA engine (H2D, D2H) */
#define VNPU_CAP_OP_MATMUL (1u << 1) /* VNPU_OPC_MATMUL, f32 */

#define VNPU_STATUS_READY (1u << 0) /* device initialised and accepting queue setup */

/* ---- Per-queue registers: queue q lives at VNPU_REG_QUEUE_BASE + q * VNPU_REG_QUEUE_STRIDE -------------- */
#define VNPU_REG_QUEUE_BASE 0x1000
#define VNPU_REG_QUEUE_STRIDE 0x100
#define VNPU_REG_QUEUE(q, reg) (VNPU_REG_QUEUE_BASE + (q) * VNPU_REG_QUEUE_STRIDE + (reg))

#define VNPU_QREG_SQ_BASE_LO 0x00 /* RW: DMA address of the command ring, 64-byte aligned */
#define VNPU_QREG_SQ_BASE_HI 0x04
#define VNPU_QREG_SQ_SIZE 0x08 /* RW: command ring entries, power of two, 2..RING_MAX */
#define VNPU_QREG_CQ_BASE_LO 0x10 /* RW: DMA address of the completion ring, 32-byte aligned */
#define VNPU_QREG_CQ_BASE_HI 0x14
#define VNPU_QREG_CQ_SIZE 0x18 /* RW: completion ring entries, power of two, 2..RING_MAX */
#define VNPU_QREG_MSIX_VECTOR 0x1c /* RW: MSI-X vector raised when completions are posted */
#define VNPU_QREG_CTRL 0x20 /* RW: VNPU_QCTRL_* */
#define VNPU_QREG_STATUS 0x24 /* RO: VNPU_QSTATUS_* */
#define VNPU_QREG_ERROR 0x28 /* RO: VNPU_QERR_* that stopped the queue, 0 if none */
#define VNPU_QREG_SQ_TAIL 0x30 /* RW doorbell: index one past the last valid command */
#define VNPU_QREG_SQ_HEAD 0x34 /* RO: index of the next command the device will fetch */
#define VNPU_QREG_CQ_HEAD 0x38 /* RW doorbell: index of the next completion the driver will consume */
#define VNPU_QREG_CQ_TAIL 0x3c /* RO: index of the next completion the device will write */
#define VNPU_QREG_JOBS_DONE 0x40 /* RO: completions posted since the queue was enabled (wraps) */

/*
 * Setting ENABLE latches the ring registers, zeroes SQ_HEAD/SQ_TAIL/CQ_HEAD/CQ_TAIL and the completion phase
 * (the first pass over the completion ring writes phase 1). Invalid ring registers leave the queue disabled
 * with STATUS.ERROR set and ERROR = VNPU_QERR_CONFIG. Clearing ENABLE stops fetching; jobs already fetched
 * complete with VNPU_CPL_ABORTED.
 */
#define VNPU_QCTRL_ENABLE (1u << 0)

#define VNPU_QSTATUS_ENABLED (1u << 0)
#define VNPU_QSTATUS_ERROR (1u << 1) /* stopped; see VNPU_QREG_ERROR; recover by disable + enable */
#define VNPU_QSTATUS_IDLE (1u << 2) /* nothing fetched and not yet completed */

#define VNPU_QERR_NONE 0
#define VNPU_QERR_CONFIG 1 /* bad ring base/size or vector at enable time */
#define VNPU_QERR_SQ_FETCH 2 /* DMA read of the command ring failed */
#define VNPU_QERR_CQ_WRITE 3 /* DMA write of the completion ring failed */
#define VNPU_QERR_DOORBELL 4 /* SQ_TAIL or CQ_HEAD written with an index >= ring size */

/* ---- Command ring entry (64 bytes) ----------------------------------------------------------------------- */
/*
 * A job is a run of consecutive commands ending with one that has VNPU_CMD_F_LAST. Commands of one job execute
 * strictly in order; different jobs overlap across engines (H2D DMA, compute, D2H DMA), each engine in ring
 * order. When a command fails, the rest of its job is skipped and the job completes with that command's status.
 */
enum vnpu_opcode {
	VNPU_OPC_NOP = 0x00,
	VNPU_OPC_DMA_H2D = 0x01, /* host scatter-gather list -> device memory */
	VNPU_OPC_DMA_D2H = 0x02, /* device memory -> host scatter-gather list */
	VNPU_OPC_MATMUL = 0x10, /* C[m,n] = A[m,k] x B[k,n], row-major, dense, in device memory */
};

#define VNPU_CMD_F_LAST (1u << 0) /* last command of a job: post a completion record and interrupt */
#define VNPU_CMD_F_MASK VNPU_CMD_F_LAST

enum vnpu_dtype {
	VNPU_DTYPE_F32 = 0,
};

struct vnpu_hw_dma {
	__u64 sgl_addr; /* DMA address of an array of struct vnpu_hw_sge, 16-byte aligned */
	__u32 sgl_count; /* entries in that array, 1..VNPU_SGL_MAX */
	__u32 rsvd0; /* must be 0 */
	__u64 sgl_offset; /* bytes to skip at the start of the buffer the list describes */
	__u64 dev_addr; /* device memory address */
	__u64 length; /* bytes to move, > 0 */
	__u64 rsvd1[1];
};

struct vnpu_hw_matmul {
	__u64 a_addr; /* device memory address of A (m x k) */
	__u64 b_addr; /* B (k x n) */
	__u64 c_addr; /* C (m x n), written */
	__u32 m, n, k; /* each 1..VNPU_MATMUL_DIM_MAX */
	__u32 dtype; /* enum vnpu_dtype */
	__u64 rsvd0; /* must be 0 */
};

struct vnpu_hw_cmd {
	__u8 opcode; /* enum vnpu_opcode */
	__u8 flags; /* VNPU_CMD_F_* */
	__u16 rsvd0; /* must be 0 */
	__u32 rsvd1; /* must be 0 */
	__u64 tag; /* opaque; copied into the completion record of the job */
	union {
		struct vnpu_hw_dma dma;
		struct vnpu_hw_matmul matmul;
		__u8 raw[48];
	};
};

/* Scatter-gather element (16 bytes). */
struct vnpu_hw_sge {
	__u64 addr; /* DMA address */
	__u32 len; /* bytes, > 0 */
	__u32 rsvd; /* must be 0 */
};

#define VNPU_SGL_MAX (1u << 20)
#define VNPU_MATMUL_DIM_MAX 16384u

/* ---- Completion ring entry (32 bytes) -------------------------------------------------------------------- */
enum vnpu_cpl_status {
	VNPU_CPL_OK = 0,
	VNPU_CPL_BAD_OPCODE = 1, /* unknown opcode */
	VNPU_CPL_BAD_FIELD = 2, /* reserved field or flag non-zero, dimension or dtype out of range */
	VNPU_CPL_DEVMEM_RANGE = 3, /* device memory access outside device memory */
	VNPU_CPL_SGL_INVALID = 4, /* scatter-gather list malformed or shorter than offset + length */
	VNPU_CPL_DMA_FAULT = 5, /* host memory access failed (bus error, bus mastering off) */
	VNPU_CPL_ABORTED = 6, /* queue disabled or device reset before the job finished */
	VNPU_CPL_JOB_TOO_LONG = 7, /* more than VNPU_JOB_MAX_CMDS commands without VNPU_CMD_F_LAST */
};

#define VNPU_JOB_MAX_CMDS 256u

#define VNPU_CPL_F_PHASE (1u << 0) /* toggles on every pass over the completion ring; first pass writes 1 */

struct vnpu_hw_cpl {
	__u64 tag; /* tag of the job's last command (or of the failing command's job) */
	__u16 status; /* enum vnpu_cpl_status */
	__u16 flags; /* VNPU_CPL_F_* */
	__u32 sq_index; /* ring index of the failing command, or of the last command on success */
	__u64 t_start; /* device clock (ns) when the job's first command started executing */
	__u64 t_end; /* device clock (ns) when the job finished (= when this record became visible) */
};

#ifdef __cplusplus
static_assert(sizeof(struct vnpu_hw_cmd) == 64, "command layout");
static_assert(sizeof(struct vnpu_hw_sge) == 16, "sge layout");
static_assert(sizeof(struct vnpu_hw_cpl) == 32, "completion layout");
#elif !defined(__KERNEL__)
_Static_assert(sizeof(struct vnpu_hw_cmd) == 64, "command layout");
_Static_assert(sizeof(struct vnpu_hw_sge) == 16, "sge layout");
_Static_assert(sizeof(struct vnpu_hw_cpl) == 32, "completion layout");
#endif

#endif /* VNPU_HW_H */
