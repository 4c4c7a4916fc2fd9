/* SPDX-License-Identifier: MIT */
/*
 * Interface between the engine's compute engine and the program interpreter (qemu-device/engine/ops/).
 *
 * A program is a compiled model's layer-level op stream (format: include/vnpu_isa.h). The command
 * VNPU_OPC_EXEC names the program bytes and a binding table in device memory; the compute engine copies the
 * program out, reads the binding table (the device address of each binding slot: weights, inputs, outputs,
 * scratch) and calls vnpu_program_execute(). Operands are (binding, offset) pairs the interpreter turns into
 * device addresses and maps through VnpuProgramMem, which applies the job's context translation (device MMU).
 *
 * Pure C, no QEMU headers, reentrant: several compute cores may run different programs concurrently.
 */
#ifndef VNPU_PROGRAM_H
#define VNPU_PROGRAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device-memory access for one program run, provided by the engine. */
typedef struct VnpuProgramMem {
    void *opaque;
    /*
     * Map [addr, addr + len) of the job's device address space for reading (write == 0) or reading and
     * writing. Returns a host pointer valid until the matching unmap, or NULL if any byte is unmapped, not
     * writable, or outside device memory; the engine then records the faulting address itself.
     */
    void *(*map)(void *opaque, uint64_t addr, uint64_t len, int write);
    /* Release a mapping (a bounce buffer is written back here when write != 0). */
    void (*unmap)(void *opaque, void *ptr, uint64_t addr, uint64_t len, int write);
    /*
     * Optional (NULL: no limit): host memory the kernels want besides the mappings, e.g. oneDNN's blocked
     * copies of operands. reserve() returns 0 when `len` bytes may be allocated, -1 when they would exceed the
     * run's budget (the kernel then takes a path that needs none: the reference kernel); every successful
     * reserve() is matched by a release() of the same length once the memory is freed.
     */
    int (*reserve)(void *opaque, uint64_t len);
    void (*release)(void *opaque, uint64_t len);
} VnpuProgramMem;

/* The compute side of the timing model, from the device configuration. */
typedef struct VnpuComputeModel {
    uint64_t flops_per_sec;     /* compute throughput of one compute core */
    uint64_t mem_bytes_per_sec; /* device-memory bandwidth seen by one core (memory-bound ops) */
    uint32_t op_overhead_ns;    /* fixed cost per op */
} VnpuComputeModel;

/* What one program run costs; the engine turns modelled_ns into the command's busy time. */
typedef struct VnpuProgramCost {
    uint64_t ops;          /* ops executed */
    uint64_t flops;        /* arithmetic operations */
    uint64_t bytes;        /* device-memory bytes read + written */
    uint64_t modelled_ns;  /* sum over ops of op_overhead + max(flops / flops_per_sec, bytes / mem_bytes_per_sec) */
} VnpuProgramCost;

typedef struct VnpuProgramRun {
    const void *code;               /* program bytes, already copied out of device memory */
    size_t code_len;
    const uint64_t *bindings;       /* device address of each binding slot */
    uint32_t num_bindings;
    int timing_only;                /* non-zero: validate and cost, but skip the functional work */
    const volatile int *cancel;     /* polled between ops and inside long kernels; non-zero: stop, VNPU_CPL_ABORTED */
    const VnpuComputeModel *model;
    /*
     * Bytes of host memory the interpreter may keep across runs for convolution weights converted to oneDNN's
     * layouts (verified against the weights' contents on every use); 0: convert on every run.
     */
    uint64_t weights_cache_max;
} VnpuProgramRun;

/*
 * Check a program without running it: container/program header, every op's opcode, attributes, operand
 * binding indices and static sizes. Returns VNPU_CPL_OK or VNPU_CPL_PROGRAM_INVALID (enum vnpu_cpl_status
 * in vnpu_hw.h); *bad_op (may be NULL) receives the index of the first bad op.
 */
int vnpu_program_validate(const void *code, size_t code_len, uint32_t num_bindings, uint32_t *bad_op);

/* Cost of a program under `model` without running it (the timing model needs it before functional work ends). */
int vnpu_program_cost(const void *code, size_t code_len, const VnpuComputeModel *model, VnpuProgramCost *cost);

/*
 * Run a program. Returns VNPU_CPL_OK, or VNPU_CPL_PROGRAM_INVALID / VNPU_CPL_MMU_FAULT (a map() returned NULL)
 * / VNPU_CPL_ABORTED (cancelled); *fail_op (may be NULL) receives the index of the op that failed. *cost is
 * filled in either case (for the ops that ran).
 */
int vnpu_program_execute(const VnpuProgramRun *run, const VnpuProgramMem *mem, VnpuProgramCost *cost,
                         uint32_t *fail_op);

#ifdef __cplusplus
}
#endif

#endif /* VNPU_PROGRAM_H */
