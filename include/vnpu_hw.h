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
/*
 * 1af4:10f0..10ff is the range QEMU's docs/specs/pci-ids.rst sets aside for experimental devices without
 * registration (Red Hat donates it to QEMU; an official ID is needed before such a device ships or goes
 * upstream). 1b36:10f5, used before, lies outside every range QEMU documents.
 */
#define VNPU_PCI_VENDOR_ID 0x1af4 /* Red Hat, Inc. (ex-Qumranet), QEMU virtual devices */
#define VNPU_PCI_DEVICE_ID 0x10f5 /* experimental range 1af4:10f0..10ff */
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
#define VNPU_REG_CLOCK_LO 0x030 /* RO: device clock, ns; reading LO latches HI for the reading CPU */
#define VNPU_REG_CLOCK_HI 0x034
#define VNPU_REG_H2D_MBPS 0x040 /* RO: timing model, host-to-device DMA bandwidth, MB/s (10^6 B/s) */
#define VNPU_REG_D2H_MBPS 0x044 /* RO: timing model, device-to-host DMA bandwidth, MB/s */
#define VNPU_REG_COMPUTE_GFLOPS 0x048 /* RO: timing model, compute throughput, GFLOP/s */
#define VNPU_REG_CMD_OVERHEAD_NS 0x04c /* RO: timing model, fixed cost of every command, ns */
#define VNPU_REG_H2D_LATENCY_NS 0x050 /* RO: timing model, fixed latency of every H2D transfer, ns */
#define VNPU_REG_D2H_LATENCY_NS 0x054 /* RO: timing model, fixed latency of every D2H transfer, ns */
#define VNPU_REG_OP_OVERHEAD_NS 0x058 /* RO: timing model, fixed cost of every op of an EXEC program, ns */
#define VNPU_REG_DEVMEM_GBPS 0x05c /* RO: timing model, device-memory bandwidth of one compute core, GB/s */
#define VNPU_REG_COMPUTE_CORES 0x060 /* RO: compute cores (EXEC/MATMUL/SYNTH commands run on any free core) */
#define VNPU_REG_NUM_CONTEXTS 0x064 /* RO: device address-space contexts (context ids 0..NUM_CONTEXTS-1) */
#define VNPU_REG_CONTROL 0x068 /* RW: VNPU_CONTROL_* */

/*
 * Device MMU (see "Contexts and the device MMU" below). The context table is NUM_CONTEXTS entries of
 * struct vnpu_hw_ctx in host memory; writing CTX_TABLE_BASE_HI latches the 64-bit base (write LO first).
 */
#define VNPU_REG_CTX_TABLE_LO 0x080 /* RW: DMA address of the context table, 4 KiB aligned */
#define VNPU_REG_CTX_TABLE_HI 0x084
#define VNPU_REG_MMU_INVALIDATE 0x088 /* WO: drop cached translations of context N, or of all (0xffffffff) */
#define VNPU_REG_MMU_FAULTS 0x08c /* RO: translation faults since reset (wraps) */
#define VNPU_REG_MMU_LAST_FAULT_LO 0x090 /* RO: device address of the last translation fault */
#define VNPU_REG_MMU_LAST_FAULT_HI 0x094
#define VNPU_REG_MMU_LAST_FAULT_CTX 0x098 /* RO: context of the last translation fault */

#define VNPU_ID_MAGIC 0x55504e56u /* "VNPU" in memory order */
#define VNPU_VERSION_MAJOR 1
#define VNPU_VERSION_MINOR 1 /* 1.1: VNPU_OPC_SIGNAL */
#define VNPU_VERSION ((VNPU_VERSION_MAJOR << 16) | VNPU_VERSION_MINOR)
#define VNPU_RESET_MAGIC 0x52535421u /* "!TSR" */

#define VNPU_CAP_DMA_SG (1u << 0) /* scatter-gather DMA engine (H2D, D2H) */
#define VNPU_CAP_OP_MATMUL (1u << 1) /* VNPU_OPC_MATMUL, f32 */
#define VNPU_CAP_MMU (1u << 2) /* per-context device MMU; every device address is translated */
#define VNPU_CAP_EXEC (1u << 3) /* VNPU_OPC_EXEC: programs in the format of vnpu_isa.h */
#define VNPU_CAP_SYNTH (1u << 4) /* VNPU_OPC_SYNTH: modelled busy time without functional work */
#define VNPU_CAP_FAULT_INJECT (1u << 5) /* fault-injection registers */
#define VNPU_CAP_TIMING_ONLY (1u << 6) /* VNPU_CONTROL_TIMING_ONLY */
#define VNPU_CAP_TELEMETRY (1u << 7) /* telemetry counters */
#define VNPU_CAP_SIGNAL (1u << 8) /* VNPU_OPC_SIGNAL: intermediate completion records (interface 1.1) */

/*
 * When set, compute commands (MATMUL, EXEC) are validated and timed but not executed; outputs are undefined.
 * MATMUL operands are still translated (MMU faults reported); an EXEC's program and binding table are read and
 * validated, its operands are not translated (docs/device.md, Timing-only mode).
 */
#define VNPU_CONTROL_TIMING_ONLY (1u << 0)
/*
 * When set, the command processor fetches no further commands (jobs already fetched keep running). For quiescing
 * before a reset, and for tests that need several queues' doorbells to be visible before arbitration starts.
 * The timing model starts no job fetched afterwards before the time the bit was cleared.
 */
#define VNPU_CONTROL_FETCH_PAUSE (1u << 1)

#define VNPU_STATUS_READY (1u << 0) /* 0 after a device reset until no engine holds dropped work; nothing is fetched until 1 */

/*
 * Telemetry (RO, 64-bit counters as LO/HI pairs). Counted since device reset.
 * 64-bit registers (CLOCK, MMU_LAST_FAULT, telemetry): reading LO latches HI in a latch private to the reading
 * CPU and to that pair; that CPU's next HI read returns it (with nothing latched, HI reads live). Read LO then HI
 * on one CPU, with preemption disabled in between.
 * Busy times are modelled device time, so utilisation = busy delta / CLOCK delta.
 */
#define VNPU_REG_TELEMETRY_BASE 0x200
#define VNPU_TEL_JOBS_COMPLETED 0x00 /* jobs completed with VNPU_CPL_OK */
#define VNPU_TEL_JOBS_FAILED 0x08 /* jobs completed with any other status */
#define VNPU_TEL_CMDS 0x10 /* commands executed */
#define VNPU_TEL_H2D_BYTES 0x18
#define VNPU_TEL_D2H_BYTES 0x20
#define VNPU_TEL_FLOPS 0x28
#define VNPU_TEL_H2D_BUSY_NS 0x30
#define VNPU_TEL_D2H_BUSY_NS 0x38
#define VNPU_TEL_COMPUTE_BUSY_NS 0x40 /* summed over compute cores */
#define VNPU_TEL_IRQS 0x48 /* interrupts raised */
#define VNPU_TEL_MAPPED_BYTES 0x50 /* bytes of device memory mapped by valid leaf PTEs seen at the last walk of
				      * each context (a snapshot refreshed on MMU_INVALIDATE) */
#define VNPU_REG_TELEMETRY(c) (VNPU_REG_TELEMETRY_BASE + (c))

/*
 * Fault injection (for driver bring-up and recovery tests). Program KIND, QUEUE, AFTER/RATE, then write
 * FI_CTRL.ARM. A fault fires on a job (the whole job is affected) when the job is the AFTER-th job fetched on
 * the selected queue since arming (AFTER >= 1; fires once, then disarms), or, with AFTER = 0, with probability
 * RATE_PPM / 10^6 per job (deterministic sequence from SEED; stays armed). FI_COUNT counts faults injected.
 */
#define VNPU_REG_FI_KIND 0x300 /* RW: enum vnpu_fi_kind */
#define VNPU_REG_FI_QUEUE 0x304 /* RW: queue index, or 0xffffffff for any queue */
#define VNPU_REG_FI_AFTER 0x308 /* RW: job ordinal (1-based) at which to fire once; 0 = use RATE_PPM */
#define VNPU_REG_FI_RATE_PPM 0x30c /* RW: probability per job, parts per million */
#define VNPU_REG_FI_SEED 0x310 /* RW: seed of the deterministic sequence */
#define VNPU_REG_FI_CTRL 0x314 /* RW: VNPU_FI_CTRL_* */
#define VNPU_REG_FI_COUNT 0x318 /* RO: faults injected since reset */

#define VNPU_FI_CTRL_ARM (1u << 0)

enum vnpu_fi_kind {
	VNPU_FI_NONE = 0,
	VNPU_FI_DMA_ERROR = 1, /* the job's first DMA command fails with VNPU_CPL_DMA_FAULT */
	VNPU_FI_COMPUTE_HANG = 2, /* the job never completes; only a queue reset or device reset ends it */
	VNPU_FI_LOST_IRQ = 3, /* the completion record is written but no interrupt is raised for it */
	VNPU_FI_CORRUPT_CPL = 4, /* the completion record is written with a corrupted tag and status */
};

/* ---- Per-queue registers: queue q lives at VNPU_REG_QUEUE_BASE + q * VNPU_REG_QUEUE_STRIDE -------------- */
#define VNPU_REG_QUEUE_BASE 0x1000
#define VNPU_REG_QUEUE_STRIDE 0x100
#define VNPU_REG_QUEUE(q, reg) (VNPU_REG_QUEUE_BASE + (q) * VNPU_REG_QUEUE_STRIDE + (reg))

#define VNPU_QREG_SQ_BASE_LO 0x00 /* RW: DMA address of the command ring, 64-byte aligned */
#define VNPU_QREG_SQ_BASE_HI 0x04
#define VNPU_QREG_SQ_SIZE 0x08 /* RW: command ring entries, power of two, 2..RING_MAX */
#define VNPU_QREG_CQ_BASE_LO 0x10 /* RW: DMA address of the completion ring, 64-byte aligned */
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
#define VNPU_QREG_PRIORITY 0x44 /* RW: 0 (lowest) .. VNPU_PRIORITY_MAX; latched at enable */

#define VNPU_PRIORITY_MAX 3

/*
 * Setting ENABLE latches the ring registers and PRIORITY, zeroes SQ_HEAD/SQ_TAIL/CQ_HEAD/CQ_TAIL and the
 * completion phase (the first pass over the completion ring writes phase 1). Invalid ring registers leave the
 * queue disabled with STATUS.ERROR set and ERROR = VNPU_QERR_CONFIG. Clearing ENABLE stops fetching; jobs
 * already fetched complete with VNPU_CPL_ABORTED.
 * Writing RESET (self-clearing; other bits of the write are ignored) resets the queue: jobs fetched and not yet
 * completed (including hung ones) are aborted and report VNPU_CPL_ABORTED, then the queue is left disabled with
 * ERROR cleared, ready to be enabled again. STATUS.IDLE reads 1 once the reset is complete.
 *
 * Arbitration: when several queues have fetchable jobs, the command processor takes the next job from the
 * highest PRIORITY; queues of equal priority are served round-robin, one job at a time.
 */
#define VNPU_QCTRL_ENABLE (1u << 0)
#define VNPU_QCTRL_RESET (1u << 1)

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
 * A job is a run of consecutive commands ending with one that has VNPU_CMD_F_LAST; all commands of a job carry
 * the same ctx_id. Commands of one job execute strictly in order; different jobs overlap across engines (H2D
 * DMA, compute cores, D2H DMA), each engine taking work in the order jobs were fetched. A job whose first
 * command has VNPU_CMD_F_BARRIER starts only after every job fetched earlier from the same queue completed.
 * When a command fails, the rest of its job is skipped and the job completes with that command's status.
 *
 * Every device address in a command (dev_addr, a/b/c_addr, prog_addr, bindings_addr, and the binding table's
 * entries) is a device virtual address in context ctx_id, translated by the device MMU.
 */
enum vnpu_opcode {
	VNPU_OPC_NOP = 0x00,
	VNPU_OPC_DMA_H2D = 0x01, /* host scatter-gather list -> device memory */
	VNPU_OPC_DMA_D2H = 0x02, /* device memory -> host scatter-gather list */
	/*
	 * Intermediate completion (1.1, VNPU_CAP_SIGNAL): when the job's previous command has finished (for a first
	 * command: when the job starts), post a record with the SIGNAL's tag, status OK and VNPU_CPL_F_SIGNAL; the
	 * job goes on. No engine, no cost. Payload all zero; never F_LAST; at most VNPU_MAX_SIGNALS_PER_JOB per job
	 * (else VNPU_CPL_BAD_FIELD). A job that fails before reaching a SIGNAL posts no record for it.
	 */
	VNPU_OPC_SIGNAL = 0x03,
	VNPU_OPC_MATMUL = 0x10, /* C[m,n] = A[m,k] x B[k,n], row-major, dense, in device memory */
	VNPU_OPC_EXEC = 0x11, /* run a program (vnpu_isa.h) on a compute core */
	VNPU_OPC_SYNTH = 0x12, /* occupy a compute core for `ns` of modelled time; no functional work */
};

#define VNPU_CMD_F_LAST (1u << 0) /* last command of a job: post a completion record and interrupt */
#define VNPU_CMD_F_BARRIER (1u << 1) /* (first command of a job) wait for earlier jobs of the queue */
#define VNPU_CMD_F_MASK (VNPU_CMD_F_LAST | VNPU_CMD_F_BARRIER)

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

struct vnpu_hw_exec {
	__u64 prog_addr; /* device address of the program (vnpu_isa.h), 8-byte aligned */
	__u32 prog_len; /* bytes, 1..VNPU_PROG_MAX_LEN */
	__u32 num_bindings; /* entries in the binding table, 1..VNPU_EXEC_MAX_BINDINGS */
	__u64 bindings_addr; /* device address of __u64[num_bindings]: device address of each binding slot */
	__u64 rsvd[3]; /* must be 0 */
};

struct vnpu_hw_synth {
	__u64 ns; /* modelled busy time, 1..VNPU_SYNTH_MAX_NS */
	__u64 rsvd[5]; /* must be 0 */
};

struct vnpu_hw_cmd {
	__u8 opcode; /* enum vnpu_opcode */
	__u8 flags; /* VNPU_CMD_F_* */
	__u16 ctx_id; /* address-space context, < NUM_CONTEXTS; the same for every command of a job */
	__u32 rsvd1; /* must be 0 */
	__u64 tag; /* opaque; copied into the completion record of the job */
	union {
		struct vnpu_hw_dma dma;
		struct vnpu_hw_matmul matmul;
		struct vnpu_hw_exec exec;
		struct vnpu_hw_synth synth;
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
#define VNPU_PROG_MAX_LEN (16u << 20)
#define VNPU_EXEC_MAX_BINDINGS 64u
#define VNPU_SYNTH_MAX_NS 10000000000ull /* 10 s */
/* Largest modelled cost of one EXEC command (sum over its ops, before cmd_overhead_ns); more is PROGRAM_INVALID */
#define VNPU_EXEC_MAX_NS VNPU_SYNTH_MAX_NS
#define VNPU_MAX_SIGNALS_PER_JOB 4u /* SIGNAL commands per job */

/* ---- Contexts and the device MMU -------------------------------------------------------------------------- */
/*
 * Each context has its own device virtual address space of 2^VNPU_MMU_VA_BITS bytes, mapped in
 * VNPU_MMU_PAGE_SIZE pages to device-physical memory [0, DEVMEM_SIZE) by a three-level page table in host
 * memory. Each table is one 4 KiB page of 512 little-endian 64-bit entries; a virtual address splits as
 *   VA[42:34] level-1 index | VA[33:25] level-2 index | VA[24:16] level-3 index | VA[15:0] page offset.
 * Level-1 and level-2 entries hold the DMA address of the next table; level-3 entries hold the device-physical
 * address of a 64 KiB page. An access through an entry without VALID, a write through a level-3 entry without
 * WRITE, an address >= 2^VA_BITS, a level-3 address outside device memory, or a table that cannot be read
 * (DMA error) is a translation fault: the job completes with VNPU_CPL_MMU_FAULT and fault_addr = the faulting
 * device virtual address. The device may cache translations; after changing a context's tables (or its context
 * table entry) the driver writes the context id to MMU_INVALIDATE, which applies to jobs fetched afterwards.
 */
#define VNPU_MMU_PAGE_SHIFT 16
#define VNPU_MMU_PAGE_SIZE (1ull << VNPU_MMU_PAGE_SHIFT)
#define VNPU_MMU_LEVELS 3
#define VNPU_MMU_LEVEL_BITS 9
#define VNPU_MMU_VA_BITS (VNPU_MMU_PAGE_SHIFT + VNPU_MMU_LEVELS * VNPU_MMU_LEVEL_BITS) /* 43 */
#define VNPU_MMU_TABLE_ENTRIES 512
#define VNPU_MMU_INDEX(va, level) /* level 1..3 */ \
	(((va) >> (VNPU_MMU_PAGE_SHIFT + (3 - (level)) * VNPU_MMU_LEVEL_BITS)) & (VNPU_MMU_TABLE_ENTRIES - 1))

#define VNPU_PTE_VALID (1ull << 0)
#define VNPU_PTE_WRITE (1ull << 1) /* level 3 only: writes allowed */
#define VNPU_PTE_ADDR_MASK 0xfffffffffffff000ull /* table address (4 KiB aligned) or page address (64 KiB aligned) */
/* Reserved bits (must be 0, else a translation fault): level 1/2 bits 11:1, level 3 bits 15:2. */
#define VNPU_PTE_TABLE_RSVD_MASK 0x0000000000000ffeull
#define VNPU_PTE_LEAF_RSVD_MASK 0x000000000000fffcull

/* Context table entry (16 bytes). */
struct vnpu_hw_ctx {
	__u64 pt_root; /* DMA address of the level-1 table, 4 KiB aligned */
	__u32 flags; /* VNPU_CTX_F_* */
	__u32 rsvd; /* must be 0 */
};

#define VNPU_CTX_F_VALID (1u << 0) /* jobs of an invalid context fail with VNPU_CPL_MMU_FAULT at fault_addr 0 */
/* Other flags, rsvd and pt_root bits 11:0 are reserved: an entry with any of them set is an invalid context. */

/* ---- Completion ring entry (64 bytes) -------------------------------------------------------------------- */
enum vnpu_cpl_status {
	VNPU_CPL_OK = 0,
	VNPU_CPL_BAD_OPCODE = 1, /* unknown opcode */
	VNPU_CPL_BAD_FIELD = 2, /* reserved field or flag non-zero, dimension or dtype out of range */
	VNPU_CPL_DEVMEM_RANGE = 3, /* device memory access outside device memory */
	VNPU_CPL_SGL_INVALID = 4, /* scatter-gather list malformed or shorter than offset + length */
	VNPU_CPL_DMA_FAULT = 5, /* host memory access failed (bus error, bus mastering off) */
	VNPU_CPL_ABORTED = 6, /* queue disabled or reset before the job was reported (device reset: no record) */
	VNPU_CPL_JOB_TOO_LONG = 7, /* more than VNPU_JOB_MAX_CMDS commands without VNPU_CMD_F_LAST */
	VNPU_CPL_MMU_FAULT = 8, /* translation fault; fault_addr holds the device virtual address */
	VNPU_CPL_PROGRAM_INVALID = 9, /* EXEC program malformed, operands aliasing, over host-mem-max or VNPU_EXEC_MAX_NS */
	VNPU_CPL_BAD_CONTEXT = 10, /* ctx_id >= NUM_CONTEXTS or differs within the job */
};

#define VNPU_JOB_MAX_CMDS 256u

#define VNPU_CPL_F_PHASE (1u << 0) /* toggles on every pass over the completion ring; first pass writes 1 */
/*
 * Intermediate record of a SIGNAL command: the job goes on. tag and sq_index are the SIGNAL's, status OK,
 * t_start the job's start, t_end when the record became visible, the *_ns fields the job's time so far. A job's
 * intermediate records always precede its final record (the one without this flag).
 */
#define VNPU_CPL_F_SIGNAL (1u << 1)

struct vnpu_hw_cpl {
	__u64 tag; /* tag of the job's last command (or of the failing command's job) */
	__u16 status; /* enum vnpu_cpl_status */
	__u16 flags; /* VNPU_CPL_F_* */
	__u32 sq_index; /* ring index of the failing command, or of the last command on success */
	__u64 t_start; /* device clock (ns) when the job's first command started executing */
	__u64 t_end; /* device clock (ns) when the job finished (= when this record became visible) */
	__u64 fault_addr; /* VNPU_CPL_MMU_FAULT: faulting device virtual address; else 0 */
	__u32 h2d_ns; /* modelled busy time the job spent on the H2D engine (saturates at 2^32-1) */
	__u32 compute_ns; /* ... on compute cores */
	__u32 d2h_ns; /* ... on the D2H engine */
	__u16 ctx_id; /* the job's context */
	__u16 rsvd0;
	__u64 rsvd1;
};

#ifdef __cplusplus
static_assert(sizeof(struct vnpu_hw_cmd) == 64, "command layout");
static_assert(sizeof(struct vnpu_hw_sge) == 16, "sge layout");
static_assert(sizeof(struct vnpu_hw_cpl) == 64, "completion layout");
static_assert(sizeof(struct vnpu_hw_ctx) == 16, "context layout");
#elif !defined(__KERNEL__)
_Static_assert(sizeof(struct vnpu_hw_cmd) == 64, "command layout");
_Static_assert(sizeof(struct vnpu_hw_sge) == 16, "sge layout");
_Static_assert(sizeof(struct vnpu_hw_cpl) == 64, "completion layout");
_Static_assert(sizeof(struct vnpu_hw_ctx) == 16, "context layout");
#endif

#endif /* VNPU_HW_H */
