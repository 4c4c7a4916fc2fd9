/*
 * vnpu: a simulated NPU as a PCI(e) device.
 *
 * This file is only the transport: PCI identity, BAR0 MMIO, MSI-X, guest-memory DMA and the virtual clock. The
 * device's behaviour (register file, command processor, scatter-gather DMA, matmul, timing model) lives in the
 * engine library (hw/misc/vnpu/, the repository's qemu-device/engine/), which is shared with libruntime's
 * in-process simulator. Specification: docs/device.md in the vnpu repository.
 *
 * Threads: MMIO handlers and the completion timer run with the BQL held and call into the engine, which
 * serialises them against its own worker threads (command processor, H2D, D2H, one per compute core) with an
 * internal mutex (lock order: BQL -> engine). The workers read commands, walk page tables and move data with
 * pci_dma_* without the BQL and never raise interrupts; completion records and MSI-X messages are sent only from
 * the timer callback, at the modelled time.
 *
 * SPDX-License-Identifier: MIT
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/log.h"
#include "qemu/module.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "hw/core/cpu.h"
#include "hw/pci/msix.h"
#include "hw/pci/pci_bus.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/pcie.h"
#include "hw/qdev-properties.h"
#include "hw/resettable.h"
#include "migration/vmstate.h"
#include "system/cpu-timers.h"
#include "system/dma.h"
#include "system/runstate.h"
#include "trace.h"
#include "vnpu/vnpu_engine.h"
#include "vnpu/vnpu_hw.h"

#define TYPE_VNPU "vnpu"
OBJECT_DECLARE_TYPE(VnpuState, VnpuClass, VNPU)

/* User-settable properties (-device vnpu,devmem-size=...,h2d-mbps=...); docs/device.md lists them all. */
typedef struct VnpuParams {
    uint64_t devmem_size;
    uint32_t num_queues;
    uint32_t num_contexts;
    uint32_t ring_max;
    uint32_t compute_cores;
    uint32_t h2d_mbps;
    uint32_t d2h_mbps;
    uint32_t h2d_latency_ns;
    uint32_t d2h_latency_ns;
    uint32_t compute_gflops;
    uint32_t devmem_gbps;
    uint32_t cmd_overhead_ns;
    uint32_t op_overhead_ns;
    bool timing_only;
    uint32_t fi_kind;
    uint32_t fi_queue;
    uint32_t fi_after;
    uint32_t fi_rate_ppm;
    uint32_t fi_seed;
    uint64_t host_mem_max;
} VnpuParams;

struct VnpuState {
    PCIDevice parent_obj;

    MemoryRegion regs;
    QEMUTimer *timer;       /* QEMU_CLOCK_VIRTUAL; fires vnpu_engine_tick() */
    VnpuEngine *engine;
    VMChangeStateEntry *vmstate_entry; /* pauses the engine's DMA while the VM is stopped */
    VnpuParams params;
};

struct VnpuClass {
    PCIDeviceClass parent_class;
    DeviceRealize parent_dc_realize;
};

/* ---- engine host callbacks ------------------------------------------------------------------------------- */

/*
 * The engine's DMA goes to guest RAM only. An access to MMIO (or unassigned space) would take the BQL inside the
 * worker, while a device reset or a VM stop holds the BQL and waits for the worker's access to end: refusing
 * such targets up front keeps every wait under the BQL bounded by one memcpy. A DMA the device cannot do
 * fails the command with DMA_FAULT (docs/device.md).
 */
static bool vnpu_dma_target_is_ram(PCIDevice *pdev, uint64_t addr, size_t len, bool is_write)
{
    AddressSpace *as = pci_get_address_space(pdev);

    RCU_READ_LOCK_GUARD();
    while (len) {
        hwaddr xlat, l = len;
        MemoryRegion *mr = address_space_translate(as, addr, &xlat, &l, is_write, MEMTXATTRS_UNSPECIFIED);

        if (!l || !memory_region_is_ram(mr) || (is_write && mr->readonly)) {
            return false;
        }
        addr += l;
        len -= l;
    }
    return true;
}

/* Worker thread (data, command fetch) or timer callback (completion records); no engine lock held. */
static int vnpu_host_dma_read(void *opaque, uint64_t addr, void *buf, size_t len)
{
    VnpuState *s = opaque;

    if (!vnpu_dma_target_is_ram(PCI_DEVICE(s), addr, len, false)) {
        qemu_log_mask(LOG_GUEST_ERROR, "vnpu: DMA read of %zu bytes at 0x%" PRIx64 " is not to RAM\n", len, addr);
        trace_vnpu_err_dma_not_ram("read", addr, len);
        return -1;
    }
    if (pci_dma_read(PCI_DEVICE(s), addr, buf, len) != MEMTX_OK) {
        qemu_log_mask(LOG_GUEST_ERROR, "vnpu: DMA read of %zu bytes at 0x%" PRIx64 " failed\n", len, addr);
        trace_vnpu_err_dma("read", addr, len);
        return -1;
    }
    return 0;
}

static int vnpu_host_dma_write(void *opaque, uint64_t addr, const void *buf, size_t len)
{
    VnpuState *s = opaque;

    if (!vnpu_dma_target_is_ram(PCI_DEVICE(s), addr, len, true)) {
        qemu_log_mask(LOG_GUEST_ERROR, "vnpu: DMA write of %zu bytes at 0x%" PRIx64 " is not to RAM\n", len, addr);
        trace_vnpu_err_dma_not_ram("write", addr, len);
        return -1;
    }
    /* pci_dma_write -> dma_memory_rw issues smp_mb() first: writes land in the order the engine makes them. */
    if (pci_dma_write(PCI_DEVICE(s), addr, buf, len) != MEMTX_OK) {
        qemu_log_mask(LOG_GUEST_ERROR, "vnpu: DMA write of %zu bytes at 0x%" PRIx64 " failed\n", len, addr);
        trace_vnpu_err_dma("write", addr, len);
        return -1;
    }
    return 0;
}

static uint64_t vnpu_host_clock_ns(void *opaque)
{
    return qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
}

/*
 * Any thread, possibly with the engine lock held: only arms the timer (timer_mod_* is thread-safe). The engine
 * passes the earliest deadline it needs; anticipate keeps an earlier one already armed, so a racing later
 * request can never postpone a due completion (a spurious early tick is harmless).
 */
static void vnpu_host_schedule(void *opaque, uint64_t deadline_ns)
{
    VnpuState *s = opaque;
    int64_t when = deadline_ns > INT64_MAX ? INT64_MAX : (int64_t)deadline_ns;

    trace_vnpu_schedule(deadline_ns);
    timer_mod_anticipate_ns(s->timer, when);
}

/* Timer callback (BQL held). Without MSI-X the device signals nothing: the driver must enable MSI-X or poll. */
static void vnpu_host_interrupt(void *opaque, unsigned vector)
{
    PCIDevice *pdev = PCI_DEVICE(opaque);

    if (msix_enabled(pdev)) {
        trace_vnpu_irq(vector);
        msix_notify(pdev, vector);
    } else {
        trace_vnpu_irq_suppressed(vector);
    }
}

static void vnpu_host_guest_error(void *opaque, const char *msg)
{
    qemu_log_mask(LOG_GUEST_ERROR, "vnpu: %s\n", msg);
    trace_vnpu_err_guest(msg);
}

/* pci_dma_* dereferences RCU-protected memory maps: the worker must be a registered RCU reader. */
static void vnpu_host_worker_start(void *opaque)
{
    rcu_register_thread();
}

static void vnpu_host_worker_stop(void *opaque)
{
    rcu_unregister_thread();
}

/* Main loop, BQL held. While the VM is stopped the engine's workers touch no guest memory. */
static void vnpu_vm_state_change(void *opaque, bool running, RunState state)
{
    VnpuState *s = opaque;

    trace_vnpu_vm_state(running, state);
    vnpu_engine_set_paused(s->engine, !running);
}

/* Worker threads are QemuThreads: named (-name debug-threads=on) and with every signal blocked. */
static int vnpu_host_thread_create(void *opaque, void **thread, const char *name, void *(*fn)(void *),
                                   void *arg)
{
    QemuThread *t = g_new0(QemuThread, 1);

    qemu_thread_create(t, name, fn, arg, QEMU_THREAD_JOINABLE);
    *thread = t;
    return 0;
}

static void vnpu_host_thread_join(void *opaque, void *thread)
{
    qemu_thread_join(thread);
    g_free(thread);
}

/* A straggler the engine gave up waiting for (see vnpu_engine_destroy) ends on its own. */
static void vnpu_host_thread_detach(void *opaque, void *thread)
{
    pthread_detach(((QemuThread *)thread)->thread);
    g_free(thread);
}

static void vnpu_timer_cb(void *opaque)
{
    VnpuState *s = opaque;

    trace_vnpu_tick(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL));
    vnpu_engine_tick(s->engine);
}

/* ---- BAR0 ------------------------------------------------------------------------------------------------ */

static uint64_t vnpu_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    VnpuState *s = opaque;
    /* 64-bit registers latch their high half per reader: the vCPU (docs/device.md, "64-bit registers"). */
    unsigned reader = current_cpu ? current_cpu->cpu_index + 1 : 0;
    uint64_t val = vnpu_engine_mmio_read_as(s->engine, addr, size, reader);

    trace_vnpu_mmio_read(addr, size, val);
    return val;
}

static void vnpu_mmio_write(void *opaque, hwaddr addr, uint64_t val, unsigned size)
{
    VnpuState *s = opaque;

    trace_vnpu_mmio_write(addr, size, val);
    vnpu_engine_mmio_write(s->engine, addr, val, size);
}

static const MemoryRegionOps vnpu_mmio_ops = {
    .read = vnpu_mmio_read,
    .write = vnpu_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* Registers are 32 bits wide; other sizes and unaligned accesses are rejected by the memory core. */
    .valid = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
    .impl = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

/* ---- lifecycle ------------------------------------------------------------------------------------------- */

static void vnpu_realize(PCIDevice *pdev, Error **errp)
{
    VnpuState *s = VNPU(pdev);
    /* Latencies and overheads may legitimately be 0; the engine spells an explicit zero VNPU_CFG_ZERO. */
#define NS_PARAM(v) ((v) ? (v) : VNPU_CFG_ZERO)
    VnpuEngineConfig cfg = {
        .devmem_size = s->params.devmem_size,
        .num_queues = s->params.num_queues,
        .ring_max = s->params.ring_max,
        .h2d_mbps = s->params.h2d_mbps,
        .d2h_mbps = s->params.d2h_mbps,
        .compute_gflops = s->params.compute_gflops,
        .cmd_overhead_ns = NS_PARAM(s->params.cmd_overhead_ns),
        .num_contexts = s->params.num_contexts,
        .compute_cores = s->params.compute_cores,
        .h2d_latency_ns = NS_PARAM(s->params.h2d_latency_ns),
        .d2h_latency_ns = NS_PARAM(s->params.d2h_latency_ns),
        .op_overhead_ns = NS_PARAM(s->params.op_overhead_ns),
        .devmem_gbps = s->params.devmem_gbps,
        .timing_only = s->params.timing_only,
        .fi_kind = s->params.fi_kind,
        .fi_queue = s->params.fi_queue,
        .fi_after = s->params.fi_after,
        .fi_rate_ppm = s->params.fi_rate_ppm,
        .fi_seed = s->params.fi_seed,
        .host_mem_max = s->params.host_mem_max,
    };
#undef NS_PARAM
    const VnpuEngineHost host = {
        .opaque = s,
        .dma_read = vnpu_host_dma_read,
        .dma_write = vnpu_host_dma_write,
        .clock_ns = vnpu_host_clock_ns,
        .schedule = vnpu_host_schedule,
        .interrupt = vnpu_host_interrupt,
        .guest_error = vnpu_host_guest_error,
        .worker_start = vnpu_host_worker_start,
        .worker_stop = vnpu_host_worker_stop,
        .thread_create = vnpu_host_thread_create,
        .thread_join = vnpu_host_thread_join,
        .thread_detach = vnpu_host_thread_detach,
    };
    unsigned nvec;
    int rc;

    if (vnpu_engine_config_finalize(&cfg)) {
        error_setg(errp, "vnpu: invalid configuration (devmem-size: a multiple of 64 KiB, at most 1 TiB; "
                   "num-queues 1..16; num-contexts 1..1024; compute-cores 1..8; ring-max a power of two "
                   "2..65536; fi-kind 0..4; fi-rate-ppm <= 1000000; rates non-zero; host-mem-max >= 1M)");
        return;
    }
    pci_config_set_interrupt_pin(pdev->config, 0); /* MSI-X only */
    if (pci_is_express(pdev)) {
        rc = pcie_endpoint_cap_init(pdev, 0);
        if (rc < 0) {
            error_setg(errp, "vnpu: cannot add the PCI Express capability");
            return;
        }
    }

    s->timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, vnpu_timer_cb, s);
    rc = vnpu_engine_create(&cfg, &host, &s->engine);
    if (rc) {
        error_setg_errno(errp, -rc, "vnpu: cannot create the device engine (%" PRIu64 " bytes of device memory)",
                         cfg.devmem_size);
        goto err_free_timer;
    }

    /* Under icount, make completions appear at exactly the modelled virtual time (see vnpu_engine.h). */
    vnpu_engine_set_lockstep(s->engine, icount_enabled());
    vnpu_engine_set_paused(s->engine, !runstate_is_running());
    s->vmstate_entry = qemu_add_vm_change_state_handler(vnpu_vm_state_change, s);

    memory_region_init_io(&s->regs, OBJECT(s), &vnpu_mmio_ops, s, "vnpu-regs", VNPU_BAR_REGS_SIZE);
    pci_register_bar(pdev, VNPU_BAR_REGS, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->regs);

    nvec = vnpu_engine_num_vectors(s->engine);
    if (msix_init_exclusive_bar(pdev, nvec, VNPU_BAR_MSIX, errp) < 0) {
        goto err_destroy_engine;
    }
    for (unsigned v = 0; v < nvec; v++) {
        msix_vector_use(pdev, v); /* msix_notify() ignores vectors never marked used */
    }
    return;

err_destroy_engine:
    qemu_del_vm_change_state_handler(s->vmstate_entry);
    s->vmstate_entry = NULL;
    vnpu_engine_destroy(s->engine);
    s->engine = NULL;
err_free_timer:
    timer_free(s->timer);
    s->timer = NULL;
    if (pci_is_express(pdev)) {
        pcie_cap_exit(pdev);
    }
}

static void vnpu_exit(PCIDevice *pdev)
{
    VnpuState *s = VNPU(pdev);

    qemu_del_vm_change_state_handler(s->vmstate_entry);
    s->vmstate_entry = NULL;
    msix_unuse_all_vectors(pdev);
    msix_uninit_exclusive_bar(pdev);
    /* Joins the worker: after this nothing calls schedule(), so the timer can go. */
    vnpu_engine_destroy(s->engine);
    s->engine = NULL;
    timer_free(s->timer);
    s->timer = NULL;
    if (pci_is_express(pdev)) {
        pcie_cap_exit(pdev);
    }
}

/*
 * Resettable hold phase (device, bus and system reset). When vnpu_engine_reset() returns no engine can issue
 * another DMA for the work dropped by the reset; STATUS.READY tells the driver when the workers have also let
 * go of it (docs/device.md, Reset).
 */
static void vnpu_reset_hold(Object *obj, ResetType type)
{
    VnpuState *s = VNPU(obj);

    trace_vnpu_reset(type);
    vnpu_engine_reset(s->engine);
}

/* The engine's state (jobs in flight on host threads, device memory) is not migrated. */
static const VMStateDescription vnpu_vmstate = {
    .name = TYPE_VNPU,
    .unmigratable = 1,
};

/*
 * A hybrid device: PCI Express behind a PCIe port (the q35 layout a driver sees on real hardware), conventional
 * PCI on a conventional or root bus. The choice must be made before the PCI core sizes config space.
 */
static void vnpu_dc_realize(DeviceState *dev, Error **errp)
{
    VnpuClass *vc = VNPU_GET_CLASS(dev);
    PCIDevice *pdev = PCI_DEVICE(dev);
    PCIBus *bus = pci_get_bus(pdev);

    if (pci_bus_is_express(bus) && !pci_bus_is_root(bus)) {
        pdev->cap_present |= QEMU_PCI_CAP_EXPRESS;
    }
    vc->parent_dc_realize(dev, errp);
}

static const Property vnpu_properties[] = {
    DEFINE_PROP_SIZE("devmem-size", VnpuState, params.devmem_size, VNPU_ENGINE_DEFAULT_DEVMEM_SIZE),
    DEFINE_PROP_UINT32("num-queues", VnpuState, params.num_queues, VNPU_ENGINE_DEFAULT_NUM_QUEUES),
    DEFINE_PROP_UINT32("num-contexts", VnpuState, params.num_contexts, VNPU_ENGINE_DEFAULT_NUM_CONTEXTS),
    DEFINE_PROP_UINT32("ring-max", VnpuState, params.ring_max, VNPU_ENGINE_DEFAULT_RING_MAX),
    DEFINE_PROP_UINT32("compute-cores", VnpuState, params.compute_cores, VNPU_ENGINE_DEFAULT_COMPUTE_CORES),
    DEFINE_PROP_UINT32("h2d-mbps", VnpuState, params.h2d_mbps, VNPU_ENGINE_DEFAULT_H2D_MBPS),
    DEFINE_PROP_UINT32("d2h-mbps", VnpuState, params.d2h_mbps, VNPU_ENGINE_DEFAULT_D2H_MBPS),
    DEFINE_PROP_UINT32("h2d-latency-ns", VnpuState, params.h2d_latency_ns, VNPU_ENGINE_DEFAULT_H2D_LATENCY_NS),
    DEFINE_PROP_UINT32("d2h-latency-ns", VnpuState, params.d2h_latency_ns, VNPU_ENGINE_DEFAULT_D2H_LATENCY_NS),
    DEFINE_PROP_UINT32("compute-gflops", VnpuState, params.compute_gflops, VNPU_ENGINE_DEFAULT_COMPUTE_GFLOPS),
    DEFINE_PROP_UINT32("devmem-gbps", VnpuState, params.devmem_gbps, VNPU_ENGINE_DEFAULT_DEVMEM_GBPS),
    DEFINE_PROP_UINT32("cmd-overhead-ns", VnpuState, params.cmd_overhead_ns,
                       VNPU_ENGINE_DEFAULT_CMD_OVERHEAD_NS),
    DEFINE_PROP_UINT32("op-overhead-ns", VnpuState, params.op_overhead_ns, VNPU_ENGINE_DEFAULT_OP_OVERHEAD_NS),
    DEFINE_PROP_BOOL("timing-only", VnpuState, params.timing_only, false),
    DEFINE_PROP_UINT32("fi-kind", VnpuState, params.fi_kind, VNPU_FI_NONE),
    DEFINE_PROP_UINT32("fi-queue", VnpuState, params.fi_queue, 0xffffffff),
    DEFINE_PROP_UINT32("fi-after", VnpuState, params.fi_after, 0),
    DEFINE_PROP_UINT32("fi-rate-ppm", VnpuState, params.fi_rate_ppm, 0),
    DEFINE_PROP_UINT32("fi-seed", VnpuState, params.fi_seed, 0),
    DEFINE_PROP_SIZE("host-mem-max", VnpuState, params.host_mem_max, VNPU_ENGINE_DEFAULT_HOST_MEM_MAX),
};

static void vnpu_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    ResettableClass *rc = RESETTABLE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    VnpuClass *vc = VNPU_CLASS(klass);

    k->realize = vnpu_realize;
    k->exit = vnpu_exit;
    k->vendor_id = VNPU_PCI_VENDOR_ID;
    k->device_id = VNPU_PCI_DEVICE_ID;
    k->revision = VNPU_PCI_REVISION;
    k->class_id = VNPU_PCI_CLASS;
    device_class_set_parent_realize(dc, vnpu_dc_realize, &vc->parent_dc_realize);
    rc->phases.hold = vnpu_reset_hold;
    dc->vmsd = &vnpu_vmstate;
    device_class_set_props(dc, vnpu_properties);
    dc->desc = "vnpu simulated NPU (queues, device MMU, DMA and compute engines with a timing model)";
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo vnpu_types[] = {
    {
        .name = TYPE_VNPU,
        .parent = TYPE_PCI_DEVICE,
        .instance_size = sizeof(VnpuState),
        .class_size = sizeof(VnpuClass),
        .class_init = vnpu_class_init,
        .interfaces = (InterfaceInfo[]) {
            { INTERFACE_PCIE_DEVICE },
            { INTERFACE_CONVENTIONAL_PCI_DEVICE },
            { },
        },
    },
};

DEFINE_TYPES(vnpu_types)
