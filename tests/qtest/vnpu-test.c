/*
 * QTest testcase for the vnpu PCI device (docs/device.md in the vnpu repository).
 *
 * Drives the device at register level through QEMU's qtest accelerator: no guest code runs, the test plays the
 * driver (config space, BAR0, rings and tables in guest RAM) and moves the virtual clock itself. Covers the
 * register file, queue configuration, ring wrap and phase, scatter-gather edge cases, MMU faults, SIGNAL
 * records, hostile DMA targets and doorbells, device and system reset with work in flight, and hot-unplug (the
 * PCIe slot powered off by the "guest") with work in flight.
 *
 * grafted into QEMU's tests/qtest/ by the vnpu repository's scripts/qemu-build.sh and run by `./vnpu test`.
 *
 * SPDX-License-Identifier: MIT
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "libqos/pci.h"
#include "libqos/pci-pc.h"
#include "hw/pci/pci_regs.h"
#include "vnpu_hw.h"

#define DEVMEM_SIZE (16 * 1024 * 1024)

/* Guest RAM layout (the machine has 256 MiB). */
#define CTX_TABLE   0x01000000ull
#define PT_POOL     0x01010000ull /* 4 KiB tables */
#define SQ_BASE     0x01100000ull
#define CQ_BASE     0x01180000ull
#define SGL_BASE    0x01200000ull
#define DATA_BASE   0x01400000ull
#define UNASSIGNED  0x40000000ull /* above RAM, below the PCI hole: nothing there */

typedef struct Vnpu {
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar;
    uint64_t bar_addr; /* guest-physical address of BAR0 */
    uint64_t pt_next;
    uint64_t root0;
    uint32_t sq_size, cq_size, sq_tail, cq_head;
    uint16_t phase;
} Vnpu;

static uint32_t rd(Vnpu *v, uint32_t off)
{
    return qpci_io_readl(v->dev, v->bar, off);
}

static void wr(Vnpu *v, uint32_t off, uint32_t val)
{
    qpci_io_writel(v->dev, v->bar, off, val);
}

static uint32_t qrd(Vnpu *v, unsigned q, uint32_t reg)
{
    return rd(v, VNPU_REG_QUEUE(q, reg));
}

static void qwr(Vnpu *v, unsigned q, uint32_t reg, uint32_t val)
{
    wr(v, VNPU_REG_QUEUE(q, reg), val);
}

static void put64(Vnpu *v, uint64_t addr, uint64_t val)
{
    qtest_writeq(v->qts, addr, val);
}

static uint64_t pt_alloc(Vnpu *v)
{
    uint64_t at = v->pt_next;
    g_autofree void *zero = g_malloc0(4096);

    v->pt_next += 4096;
    qtest_memwrite(v->qts, at, zero, 4096);
    return at;
}

static void set_ctx(Vnpu *v, unsigned ctx, uint64_t root, bool valid)
{
    put64(v, CTX_TABLE + ctx * 16, root);
    qtest_writel(v->qts, CTX_TABLE + ctx * 16 + 8, valid ? VNPU_CTX_F_VALID : 0);
    qtest_writel(v->qts, CTX_TABLE + ctx * 16 + 12, 0);
}

/* Map one 64 KiB page va -> pa in the tables under root. */
static void map(Vnpu *v, uint64_t root, uint64_t va, uint64_t pa, bool writable)
{
    uint64_t table = root;

    for (int level = 1; level < 3; level++) {
        uint64_t at = table + VNPU_MMU_INDEX(va, level) * 8;
        uint64_t pte = qtest_readq(v->qts, at);

        if (!(pte & VNPU_PTE_VALID)) {
            pte = pt_alloc(v) | VNPU_PTE_VALID;
            put64(v, at, pte);
        }
        table = pte & VNPU_PTE_ADDR_MASK;
    }
    put64(v, table + VNPU_MMU_INDEX(va, 3) * 8,
          pa | VNPU_PTE_VALID | (writable ? VNPU_PTE_WRITE : 0));
}

static void setup_mmu(Vnpu *v)
{
    g_autofree void *zero = g_malloc0(0x10000);

    qtest_memwrite(v->qts, CTX_TABLE, zero, 0x10000);
    v->pt_next = PT_POOL;
    v->root0 = pt_alloc(v);
    for (uint64_t a = 0; a < DEVMEM_SIZE; a += VNPU_MMU_PAGE_SIZE) {
        map(v, v->root0, a, a, true);
    }
    set_ctx(v, 0, v->root0, true);
    wr(v, VNPU_REG_CTX_TABLE_LO, (uint32_t)CTX_TABLE);
    wr(v, VNPU_REG_CTX_TABLE_HI, (uint32_t)(CTX_TABLE >> 32));
}

static void vnpu_attach(Vnpu *v, int devfn)
{
    uint64_t size;

    v->dev = qpci_device_find(v->bus, devfn);
    g_assert(v->dev);
    g_assert_cmphex(qpci_config_readw(v->dev, PCI_VENDOR_ID), ==, VNPU_PCI_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(v->dev, PCI_DEVICE_ID), ==, VNPU_PCI_DEVICE_ID);
    qpci_device_enable(v->dev);
    v->bar = qpci_iomap(v->dev, VNPU_BAR_REGS, &size);
    g_assert_cmpuint(size, ==, VNPU_BAR_REGS_SIZE);
    v->bar_addr = qpci_config_readl(v->dev, PCI_BASE_ADDRESS_0) & PCI_BASE_ADDRESS_MEM_MASK;
    setup_mmu(v);
}

static Vnpu *vnpu_start(const char *props)
{
    Vnpu *v = g_new0(Vnpu, 1);

    v->qts = qtest_initf("-machine q35 -nodefaults -m 256M -device vnpu,addr=04.0,devmem-size=16M%s", props);
    v->bus = qpci_new_pc(v->qts, NULL);
    vnpu_attach(v, QPCI_DEVFN(4, 0));
    return v;
}

static void vnpu_stop(Vnpu *v)
{
    if (v->dev) {
        qpci_iounmap(v->dev, v->bar);
        g_free(v->dev);
    }
    qpci_free_pc(v->bus);
    qtest_quit(v->qts);
    g_free(v);
}

static void program_queue(Vnpu *v, unsigned q, uint64_t sq, uint32_t sq_size, uint64_t cq, uint32_t cq_size)
{
    g_autofree void *zero = g_malloc0((size_t)cq_size * sizeof(struct vnpu_hw_cpl));

    qtest_memwrite(v->qts, cq, zero, (size_t)cq_size * sizeof(struct vnpu_hw_cpl));
    qwr(v, q, VNPU_QREG_SQ_BASE_LO, (uint32_t)sq);
    qwr(v, q, VNPU_QREG_SQ_BASE_HI, (uint32_t)(sq >> 32));
    qwr(v, q, VNPU_QREG_SQ_SIZE, sq_size);
    qwr(v, q, VNPU_QREG_CQ_BASE_LO, (uint32_t)cq);
    qwr(v, q, VNPU_QREG_CQ_BASE_HI, (uint32_t)(cq >> 32));
    qwr(v, q, VNPU_QREG_CQ_SIZE, cq_size);
    qwr(v, q, VNPU_QREG_MSIX_VECTOR, q);
}

static void enable(Vnpu *v, uint32_t sq_size, uint32_t cq_size)
{
    qwr(v, 0, VNPU_QREG_CTRL, 0); /* from any state: disable (clears ERROR), then enable */
    program_queue(v, 0, SQ_BASE, sq_size, CQ_BASE, cq_size);
    qwr(v, 0, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
    g_assert_cmphex(qrd(v, 0, VNPU_QREG_STATUS) & (VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_ERROR), ==,
                    VNPU_QSTATUS_ENABLED);
    v->sq_size = sq_size;
    v->cq_size = cq_size;
    v->sq_tail = v->cq_head = 0;
    v->phase = 1;
}

static void submit(Vnpu *v, const struct vnpu_hw_cmd *cmds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        qtest_memwrite(v->qts, SQ_BASE + (uint64_t)v->sq_tail * sizeof(cmds[i]), &cmds[i], sizeof(cmds[i]));
        v->sq_tail = (v->sq_tail + 1) % v->sq_size;
    }
    qwr(v, 0, VNPU_QREG_SQ_TAIL, v->sq_tail);
}

static bool pop(Vnpu *v, struct vnpu_hw_cpl *out)
{
    struct vnpu_hw_cpl c;

    qtest_memread(v->qts, CQ_BASE + (uint64_t)v->cq_head * sizeof(c), &c, sizeof(c));
    if ((c.flags & VNPU_CPL_F_PHASE) != v->phase) {
        return false;
    }
    *out = c;
    v->cq_head = (v->cq_head + 1) % v->cq_size;
    if (!v->cq_head) {
        v->phase ^= 1;
    }
    qwr(v, 0, VNPU_QREG_CQ_HEAD, v->cq_head);
    return true;
}

/*
 * Move virtual time on in steps of step_ns until a record is posted. Functional work runs on the device's host
 * threads, so a record can need some host time as well: bounded at about 20 s of it.
 */
static bool wait_cpl(Vnpu *v, struct vnpu_hw_cpl *out, int64_t step_ns)
{
    for (int i = 0; i < 4000; i++) {
        if (pop(v, out)) {
            return true;
        }
        qtest_clock_step(v->qts, step_ns);
        if (i > 20) {
            g_usleep(5000);
        }
    }
    return false;
}

static struct vnpu_hw_cpl run_one(Vnpu *v, const struct vnpu_hw_cmd *cmds, unsigned n)
{
    struct vnpu_hw_cpl c = { 0 };

    submit(v, cmds, n);
    g_assert(wait_cpl(v, &c, 100000));
    return c;
}

static struct vnpu_hw_cmd cmd_nop(uint64_t tag, bool last)
{
    struct vnpu_hw_cmd c = { .opcode = VNPU_OPC_NOP, .flags = last ? VNPU_CMD_F_LAST : 0, .tag = tag };

    return c;
}

static struct vnpu_hw_cmd cmd_signal(uint64_t tag)
{
    struct vnpu_hw_cmd c = { .opcode = VNPU_OPC_SIGNAL, .tag = tag };

    return c;
}

static struct vnpu_hw_cmd cmd_synth(uint64_t ns, uint64_t tag, bool last)
{
    struct vnpu_hw_cmd c = { .opcode = VNPU_OPC_SYNTH, .flags = last ? VNPU_CMD_F_LAST : 0, .tag = tag };

    c.synth.ns = ns;
    return c;
}

static struct vnpu_hw_cmd cmd_dma(uint8_t opc, uint64_t sgl, uint32_t count, uint64_t off, uint64_t dev,
                                  uint64_t len, uint64_t tag, bool last)
{
    struct vnpu_hw_cmd c = { .opcode = opc, .flags = last ? VNPU_CMD_F_LAST : 0, .tag = tag };

    c.dma.sgl_addr = sgl;
    c.dma.sgl_count = count;
    c.dma.sgl_offset = off;
    c.dma.dev_addr = dev;
    c.dma.length = len;
    return c;
}

static void put_sge(Vnpu *v, uint64_t at, uint64_t addr, uint32_t len, uint32_t rsvd)
{
    struct vnpu_hw_sge e = { .addr = addr, .len = len, .rsvd = rsvd };

    qtest_memwrite(v->qts, at, &e, sizeof(e));
}

static uint16_t status_of(Vnpu *v, struct vnpu_hw_cmd c)
{
    return run_one(v, &c, 1).status;
}

/* ---- registers ---------------------------------------------------------------------------------------- */

static void test_registers(void)
{
    Vnpu *v = vnpu_start("");
    uint32_t all_caps = VNPU_CAP_DMA_SG | VNPU_CAP_OP_MATMUL | VNPU_CAP_MMU | VNPU_CAP_EXEC | VNPU_CAP_SYNTH |
                        VNPU_CAP_FAULT_INJECT | VNPU_CAP_TIMING_ONLY | VNPU_CAP_TELEMETRY | VNPU_CAP_SIGNAL;
    uint32_t lo, hi;
    uint64_t t0, t1;

    g_assert_cmphex(qpci_config_readw(v->dev, PCI_CLASS_DEVICE), ==, VNPU_PCI_CLASS);
    g_assert_cmphex(qpci_config_readb(v->dev, PCI_REVISION_ID), ==, VNPU_PCI_REVISION);
    g_assert_cmphex(rd(v, VNPU_REG_ID), ==, VNPU_ID_MAGIC);
    g_assert_cmphex(rd(v, VNPU_REG_VERSION), ==, 0x00010001);
    g_assert_cmphex(rd(v, VNPU_REG_CAPS), ==, all_caps);
    g_assert_cmpuint(rd(v, VNPU_REG_NUM_QUEUES), ==, 8);
    g_assert_cmpuint(rd(v, VNPU_REG_DEVMEM_SIZE_LO), ==, DEVMEM_SIZE);
    g_assert_cmpuint(rd(v, VNPU_REG_DEVMEM_SIZE_HI), ==, 0);
    g_assert_cmpuint(rd(v, VNPU_REG_RING_MAX), ==, 4096);
    g_assert_cmphex(rd(v, VNPU_REG_STATUS), ==, VNPU_STATUS_READY);
    g_assert_cmpuint(rd(v, VNPU_REG_H2D_MBPS), ==, 13000);
    g_assert_cmpuint(rd(v, VNPU_REG_D2H_MBPS), ==, 13000);
    g_assert_cmpuint(rd(v, VNPU_REG_COMPUTE_GFLOPS), ==, 16000);
    g_assert_cmpuint(rd(v, VNPU_REG_CMD_OVERHEAD_NS), ==, 1000);
    g_assert_cmpuint(rd(v, VNPU_REG_H2D_LATENCY_NS), ==, 1500);
    g_assert_cmpuint(rd(v, VNPU_REG_D2H_LATENCY_NS), ==, 1500);
    g_assert_cmpuint(rd(v, VNPU_REG_OP_OVERHEAD_NS), ==, 1000);
    g_assert_cmpuint(rd(v, VNPU_REG_DEVMEM_GBPS), ==, 200);
    g_assert_cmpuint(rd(v, VNPU_REG_COMPUTE_CORES), ==, 2);
    g_assert_cmpuint(rd(v, VNPU_REG_NUM_CONTEXTS), ==, 64);
    g_assert_cmphex(rd(v, VNPU_REG_CONTROL), ==, 0);
    g_assert_cmpuint(rd(v, VNPU_REG_MMU_FAULTS), ==, 0);
    for (uint32_t c = 0; c <= VNPU_TEL_MAPPED_BYTES; c += 8) {
        if (c != VNPU_TEL_MAPPED_BYTES) {
            g_assert_cmpuint(rd(v, VNPU_REG_TELEMETRY(c)), ==, 0);
        }
        g_assert_cmpuint(rd(v, VNPU_REG_TELEMETRY(c) + 4), ==, 0);
    }
    for (uint32_t off = 0x300; off <= 0x318; off += 4) {
        g_assert_cmphex(rd(v, off), ==, off == VNPU_REG_FI_QUEUE ? 0xffffffff : 0);
    }

    /* Read-only registers ignore writes; holes read 0. */
    wr(v, VNPU_REG_ID, 0);
    wr(v, VNPU_REG_CAPS, 0);
    wr(v, VNPU_REG_NUM_QUEUES, 1);
    g_assert_cmphex(rd(v, VNPU_REG_ID), ==, VNPU_ID_MAGIC);
    g_assert_cmphex(rd(v, VNPU_REG_CAPS), ==, all_caps);
    g_assert_cmpuint(rd(v, VNPU_REG_NUM_QUEUES), ==, 8);
    wr(v, 0x0fc, 0x1234);
    g_assert_cmphex(rd(v, 0x0fc), ==, 0);
    g_assert_cmphex(rd(v, VNPU_REG_RESET), ==, 0);
    g_assert_cmphex(rd(v, VNPU_REG_QUEUE(8, VNPU_QREG_SQ_SIZE)), ==, 0); /* no queue 8 */

    /* SCRATCH is RW; only aligned 32-bit accesses have an effect. */
    wr(v, VNPU_REG_SCRATCH, 0xdeadbeef);
    g_assert_cmphex(rd(v, VNPU_REG_SCRATCH), ==, 0xdeadbeef);
    qpci_io_writeb(v->dev, v->bar, VNPU_REG_SCRATCH, 0x11);
    qpci_io_writew(v->dev, v->bar, VNPU_REG_SCRATCH + 2, 0x2222);
    g_assert_cmphex(rd(v, VNPU_REG_SCRATCH), ==, 0xdeadbeef);

    /* CONTROL keeps its two bits. */
    wr(v, VNPU_REG_CONTROL, 0xffffffff);
    g_assert_cmphex(rd(v, VNPU_REG_CONTROL), ==, VNPU_CONTROL_TIMING_ONLY | VNPU_CONTROL_FETCH_PAUSE);
    wr(v, VNPU_REG_CONTROL, 0);

    /* The clock is the virtual clock; LO latches HI. */
    lo = rd(v, VNPU_REG_CLOCK_LO);
    hi = rd(v, VNPU_REG_CLOCK_HI);
    t0 = (uint64_t)hi << 32 | lo;
    qtest_clock_step(v->qts, 5000000);
    lo = rd(v, VNPU_REG_CLOCK_LO);
    hi = rd(v, VNPU_REG_CLOCK_HI);
    t1 = (uint64_t)hi << 32 | lo;
    g_assert_cmpuint(t1 - t0, >=, 5000000);
    g_assert_cmpuint(t1 - t0, <, 6000000);

    /* Queue registers read back; PRIORITY clamps; the status of a fresh queue is IDLE. */
    for (unsigned q = 0; q < 8; q++) {
        program_queue(v, q, SQ_BASE + q * 0x1000, 16, CQ_BASE + q * 0x2000, 32);
        qwr(v, q, VNPU_QREG_PRIORITY, 7);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_SQ_BASE_LO), ==, (uint32_t)(SQ_BASE + q * 0x1000));
        g_assert_cmphex(qrd(v, q, VNPU_QREG_SQ_BASE_HI), ==, 0);
        g_assert_cmpuint(qrd(v, q, VNPU_QREG_SQ_SIZE), ==, 16);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_CQ_BASE_LO), ==, (uint32_t)(CQ_BASE + q * 0x2000));
        g_assert_cmpuint(qrd(v, q, VNPU_QREG_CQ_SIZE), ==, 32);
        g_assert_cmpuint(qrd(v, q, VNPU_QREG_MSIX_VECTOR), ==, q);
        g_assert_cmpuint(qrd(v, q, VNPU_QREG_PRIORITY), ==, VNPU_PRIORITY_MAX);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_IDLE);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_ERROR), ==, 0);
        qwr(v, q, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_IDLE);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_CTRL), ==, VNPU_QCTRL_ENABLE);
        qwr(v, q, VNPU_QREG_SQ_HEAD, 5); /* read-only */
        g_assert_cmpuint(qrd(v, q, VNPU_QREG_SQ_HEAD), ==, 0);
    }

    /* Device reset returns everything to power-on values. */
    wr(v, VNPU_REG_RESET, 0x1234); /* not the magic: ignored */
    g_assert_cmphex(rd(v, VNPU_REG_SCRATCH), ==, 0xdeadbeef);
    wr(v, VNPU_REG_RESET, VNPU_RESET_MAGIC);
    g_assert_cmphex(rd(v, VNPU_REG_SCRATCH), ==, 0);
    g_assert_cmphex(rd(v, VNPU_REG_CTX_TABLE_LO), ==, 0);
    for (unsigned q = 0; q < 8; q++) {
        g_assert_cmphex(qrd(v, q, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_IDLE);
        g_assert_cmphex(qrd(v, q, VNPU_QREG_SQ_BASE_LO), ==, 0);
    }
    vnpu_stop(v);
}

static void test_queue_config(void)
{
    Vnpu *v = vnpu_start(",num-queues=2,ring-max=64");
    struct {
        uint64_t sq, cq;
        uint32_t sq_size, cq_size, vector;
    } bad[] = {
        { SQ_BASE, CQ_BASE, 3, 16, 0 },        /* not a power of two */
        { SQ_BASE, CQ_BASE, 1, 16, 0 },        /* too small */
        { SQ_BASE, CQ_BASE, 16, 128, 0 },      /* above RING_MAX */
        { SQ_BASE + 8, CQ_BASE, 16, 16, 0 },   /* misaligned */
        { SQ_BASE, CQ_BASE + 32, 16, 16, 0 },
        { SQ_BASE, CQ_BASE, 16, 16, 2 },       /* no such vector */
        { ~0ull - 63, CQ_BASE, 16, 16, 0 },    /* wraps the address space */
    };

    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        program_queue(v, 0, bad[i].sq, bad[i].sq_size, CQ_BASE, bad[i].cq_size);
        qwr(v, 0, VNPU_QREG_CQ_BASE_LO, (uint32_t)bad[i].cq);
        qwr(v, 0, VNPU_QREG_MSIX_VECTOR, bad[i].vector);
        qwr(v, 0, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
        g_assert_cmphex(qrd(v, 0, VNPU_QREG_STATUS) & (VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_ERROR), ==,
                        VNPU_QSTATUS_ERROR);
        g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, VNPU_QERR_CONFIG);
    }
    enable(v, 16, 16);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, 0);

    /* Doorbells: a tail outside the ring stops the queue; CQ_HEAD beyond what was posted too. */
    qwr(v, 0, VNPU_QREG_SQ_TAIL, 16);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, VNPU_QERR_DOORBELL);
    enable(v, 16, 16);
    qwr(v, 0, VNPU_QREG_CQ_HEAD, 1);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, VNPU_QERR_DOORBELL);
    /* A doorbell on a disabled queue is ignored. */
    qwr(v, 1, VNPU_QREG_SQ_TAIL, 1);
    g_assert_cmphex(qrd(v, 1, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_IDLE);
    vnpu_stop(v);
}

/* ---- rings -------------------------------------------------------------------------------------------- */

static void test_ring_wrap(void)
{
    Vnpu *v = vnpu_start("");
    struct vnpu_hw_cpl c;

    enable(v, 4, 4);
    for (uint64_t i = 0; i < 11; i++) {
        struct vnpu_hw_cmd cmd = cmd_nop(100 + i, true);

        c = run_one(v, &cmd, 1);
        g_assert_cmpuint(c.tag, ==, 100 + i);
        g_assert_cmpuint(c.status, ==, VNPU_CPL_OK);
        g_assert_cmpuint(c.sq_index, ==, i % 4);
        /* Not icount: visible no earlier than modelled (cmd-overhead-ns), at the step that found it done. */
        g_assert_cmpuint(c.t_end - c.t_start, >=, 1000);
    }
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_JOBS_DONE), ==, 11);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_SQ_HEAD), ==, 3);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_CQ_TAIL), ==, 3);

    /* A full ring (size - 1 commands) is accepted and completes in order across the wrap. */
    {
        struct vnpu_hw_cmd jobs[3] = { cmd_nop(1, true), cmd_nop(2, true), cmd_nop(3, true) };

        submit(v, jobs, 3);
        for (uint64_t i = 1; i <= 3; i++) {
            g_assert(wait_cpl(v, &c, 100000));
            g_assert_cmpuint(c.tag, ==, i);
        }
    }
    g_assert(!pop(v, &c));
    g_assert_cmphex(qrd(v, 0, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_ENABLED | VNPU_QSTATUS_IDLE);
    vnpu_stop(v);
}

/* ---- scatter-gather DMA ------------------------------------------------------------------------------- */

static void test_sg_dma(void)
{
    Vnpu *v = vnpu_start("");
    enum { LEN = 9000 };
    g_autofree uint8_t *src = g_malloc(LEN + 64);
    g_autofree uint8_t *dst = g_malloc0(LEN);
    uint64_t in = SGL_BASE, out = SGL_BASE + 0x1000, s = SGL_BASE + 0x2000;
    struct vnpu_hw_cmd job[2];
    struct vnpu_hw_cpl c;

    enable(v, 16, 16);
    for (int i = 0; i < LEN + 64; i++) {
        src[i] = (uint8_t)(i * 7 + 3);
    }
    /* Uneven elements at odd addresses; the transfer skips the first 5 bytes of the buffer. */
    qtest_memwrite(v->qts, DATA_BASE + 1, src, 7);
    qtest_memwrite(v->qts, DATA_BASE + 0x10003, src + 7, 4093);
    qtest_memwrite(v->qts, DATA_BASE + 0x20000, src + 7 + 4093, LEN + 64 - 7 - 4093);
    put_sge(v, in, DATA_BASE + 1, 7, 0);
    put_sge(v, in + 16, DATA_BASE + 0x10003, 4093, 0);
    put_sge(v, in + 32, DATA_BASE + 0x20000, LEN + 64 - 7 - 4093, 0);
    /* Out: two elements, the first ending mid-page of device memory. */
    put_sge(v, out, DATA_BASE + 0x40001, 3333, 0);
    put_sge(v, out + 16, DATA_BASE + 0x50000, LEN - 3333, 0);
    job[0] = cmd_dma(VNPU_OPC_DMA_H2D, in, 3, 5, 0xfff0, LEN, 1, false); /* across a 64 KiB device page */
    job[1] = cmd_dma(VNPU_OPC_DMA_D2H, out, 2, 0, 0xfff0, LEN, 1, true);
    c = run_one(v, job, 2);
    g_assert_cmpuint(c.status, ==, VNPU_CPL_OK);
    g_assert_cmpuint(c.h2d_ns, >, 0);
    g_assert_cmpuint(c.d2h_ns, >, 0);
    qtest_memread(v->qts, DATA_BASE + 0x40001, dst, 3333);
    qtest_memread(v->qts, DATA_BASE + 0x50000, dst + 3333, LEN - 3333);
    g_assert(memcmp(dst, src + 5, LEN) == 0);
    g_assert_cmpuint(rd(v, VNPU_REG_TELEMETRY(VNPU_TEL_H2D_BYTES)), ==, LEN);
    g_assert_cmpuint(rd(v, VNPU_REG_TELEMETRY(VNPU_TEL_D2H_BYTES)), ==, LEN);

    /* Malformed lists: nothing moves, the job fails with SGL_INVALID. */
    put_sge(v, s, DATA_BASE, 64, 0);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 0, 0, 0, 64, 2, true)), ==, VNPU_CPL_SGL_INVALID);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, VNPU_SGL_MAX + 1, 0, 0, 64, 2, true)), ==,
                     VNPU_CPL_SGL_INVALID);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s + 8, 1, 0, 0, 64, 2, true)), ==,
                     VNPU_CPL_SGL_INVALID);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 1, 0, 64, 2, true)), ==, VNPU_CPL_SGL_INVALID);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 1, ~0ull, 0, 64, 2, true)), ==,
                     VNPU_CPL_SGL_INVALID);
    put_sge(v, s + 16, DATA_BASE, 0, 0);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 2, 0, 0, 64, 2, true)), ==, VNPU_CPL_SGL_INVALID);
    put_sge(v, s + 16, DATA_BASE, 32, 1);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 2, 0, 0, 96, 2, true)), ==, VNPU_CPL_SGL_INVALID);
    put_sge(v, s + 16, ~0ull - 7, 32, 0);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 2, 0, 0, 96, 2, true)), ==, VNPU_CPL_SGL_INVALID);
    /* Zero length, reserved fields. */
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 0, 2, true)), ==, VNPU_CPL_BAD_FIELD);

    /* Hostile targets: data, list or element outside RAM (the device's own BAR, unassigned space). */
    put_sge(v, s, v->bar_addr, 64, 0);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0, 64, 3, true)), ==, VNPU_CPL_DMA_FAULT);
    g_assert_cmphex(rd(v, VNPU_REG_ID), ==, VNPU_ID_MAGIC); /* nothing was written into BAR0 */
    g_assert_cmphex(rd(v, VNPU_REG_SCRATCH), ==, 0);
    put_sge(v, s, UNASSIGNED, 64, 0);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 64, 3, true)), ==, VNPU_CPL_DMA_FAULT);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, UNASSIGNED, 1, 0, 0, 64, 3, true)), ==,
                     VNPU_CPL_DMA_FAULT);
    g_assert_cmpuint(status_of(v, cmd_dma(VNPU_OPC_DMA_H2D, v->bar_addr, 1, 0, 0, 64, 3, true)), ==,
                     VNPU_CPL_DMA_FAULT);
    /* The queue works on. */
    g_assert_cmpuint(status_of(v, cmd_nop(4, true)), ==, VNPU_CPL_OK);

    /* Bus mastering off: the command fetch fails (SQ_FETCH), nothing is written to guest memory. */
    qpci_config_writew(v->dev, PCI_COMMAND, qpci_config_readw(v->dev, PCI_COMMAND) & ~PCI_COMMAND_MASTER);
    {
        struct vnpu_hw_cmd nop = cmd_nop(5, true);

        submit(v, &nop, 1);
        for (int i = 0; i < 200 && !qrd(v, 0, VNPU_QREG_ERROR); i++) {
            qtest_clock_step(v->qts, 100000);
            g_usleep(1000);
        }
        g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, VNPU_QERR_SQ_FETCH);
        g_assert(!pop(v, &c));
    }
    vnpu_stop(v);
}

/* ---- hostile rings ------------------------------------------------------------------------------------ */

static void test_hostile_rings(void)
{
    Vnpu *v = vnpu_start("");
    struct vnpu_hw_cmd nop = cmd_nop(1, true);
    struct vnpu_hw_cpl c;

    /* A command ring in the device's own BAR: the fetch fails, the queue stops with SQ_FETCH, no MMIO. */
    program_queue(v, 0, v->bar_addr, 16, CQ_BASE, 16);
    qwr(v, 0, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
    qwr(v, 0, VNPU_QREG_SQ_TAIL, 1);
    for (int i = 0; i < 200 && !qrd(v, 0, VNPU_QREG_ERROR); i++) {
        qtest_clock_step(v->qts, 100000);
        g_usleep(1000);
    }
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_ERROR), ==, VNPU_QERR_SQ_FETCH);

    /* A command ring in unassigned space. */
    program_queue(v, 1, UNASSIGNED, 16, CQ_BASE + 0x1000, 16);
    qwr(v, 1, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
    qwr(v, 1, VNPU_QREG_SQ_TAIL, 1);
    for (int i = 0; i < 200 && !qrd(v, 1, VNPU_QREG_ERROR); i++) {
        qtest_clock_step(v->qts, 100000);
        g_usleep(1000);
    }
    g_assert_cmpuint(qrd(v, 1, VNPU_QREG_ERROR), ==, VNPU_QERR_SQ_FETCH);

    /* A completion ring in the BAR: the record cannot be written, CQ_WRITE. */
    qwr(v, 2, VNPU_QREG_SQ_BASE_LO, (uint32_t)SQ_BASE);
    qwr(v, 2, VNPU_QREG_SQ_BASE_HI, 0);
    qwr(v, 2, VNPU_QREG_SQ_SIZE, 16);
    qwr(v, 2, VNPU_QREG_CQ_BASE_LO, (uint32_t)v->bar_addr);
    qwr(v, 2, VNPU_QREG_CQ_BASE_HI, (uint32_t)(v->bar_addr >> 32));
    qwr(v, 2, VNPU_QREG_CQ_SIZE, 16);
    qwr(v, 2, VNPU_QREG_MSIX_VECTOR, 2);
    qwr(v, 2, VNPU_QREG_CTRL, VNPU_QCTRL_ENABLE);
    qtest_memwrite(v->qts, SQ_BASE, &nop, sizeof(nop));
    qwr(v, 2, VNPU_QREG_SQ_TAIL, 1);
    for (int i = 0; i < 200 && !qrd(v, 2, VNPU_QREG_ERROR); i++) {
        qtest_clock_step(v->qts, 100000);
        g_usleep(1000);
    }
    g_assert_cmpuint(qrd(v, 2, VNPU_QREG_ERROR), ==, VNPU_QERR_CQ_WRITE);
    g_assert_cmphex(rd(v, VNPU_REG_ID), ==, VNPU_ID_MAGIC);

    /* Garbage commands: unknown opcodes, reserved bits; every job reports, the queue goes on. */
    enable(v, 16, 16);
    for (unsigned op = 0x04; op < 0x100; op += 0x1d) {
        struct vnpu_hw_cmd bad = { .opcode = op, .flags = VNPU_CMD_F_LAST, .tag = op };

        if (op == VNPU_OPC_MATMUL || op == VNPU_OPC_EXEC || op == VNPU_OPC_SYNTH) {
            continue;
        }
        c = run_one(v, &bad, 1);
        g_assert_cmpuint(c.status, ==, VNPU_CPL_BAD_OPCODE);
    }
    {
        struct vnpu_hw_cmd bad = cmd_nop(5, true);

        bad.flags |= 0x80;
        g_assert_cmpuint(status_of(v, bad), ==, VNPU_CPL_BAD_FIELD);
        bad = cmd_nop(5, true);
        bad.rsvd1 = 1;
        g_assert_cmpuint(status_of(v, bad), ==, VNPU_CPL_BAD_FIELD);
        bad = cmd_nop(5, true);
        bad.ctx_id = 64;
        g_assert_cmpuint(status_of(v, bad), ==, VNPU_CPL_BAD_CONTEXT);
    }
    /* A job without F_LAST within 256 commands: JOB_TOO_LONG, in a 512-entry ring. */
    {
        g_autofree struct vnpu_hw_cmd *many = g_new0(struct vnpu_hw_cmd, VNPU_JOB_MAX_CMDS);

        enable(v, 512, 16);
        for (unsigned i = 0; i < VNPU_JOB_MAX_CMDS; i++) {
            many[i] = cmd_nop(6, false);
        }
        c = run_one(v, many, VNPU_JOB_MAX_CMDS);
        g_assert_cmpuint(c.status, ==, VNPU_CPL_JOB_TOO_LONG);
    }
    vnpu_stop(v);
}

/* ---- MMU ---------------------------------------------------------------------------------------------- */

static void test_mmu_faults(void)
{
    Vnpu *v = vnpu_start("");
    uint64_t root1, s = SGL_BASE;
    struct vnpu_hw_cmd cmd;
    struct vnpu_hw_cpl c;

    enable(v, 16, 16);
    root1 = pt_alloc(v);
    map(v, root1, 0x10000, 0x20000, true);
    map(v, root1, 0x20000, 0x30000, false); /* read-only */
    set_ctx(v, 1, root1, true);
    wr(v, VNPU_REG_MMU_INVALIDATE, 1);
    put_sge(v, s, DATA_BASE, 0x20000, 0);

    /* Mapped: fine. Crossing into an unmapped page: fault at its first byte. */
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x10000, 0x10000, 1, true);
    cmd.ctx_id = 1;
    g_assert_cmpuint(run_one(v, &cmd, 1).status, ==, VNPU_CPL_OK);
    cmd = cmd_dma(VNPU_OPC_DMA_D2H, s, 1, 0, 0x28000, 0x10000, 2, true);
    cmd.ctx_id = 1;
    c = run_one(v, &cmd, 1);
    g_assert_cmpuint(c.status, ==, VNPU_CPL_MMU_FAULT);
    g_assert_cmphex(c.fault_addr, ==, 0x30000);
    g_assert_cmpuint(rd(v, VNPU_REG_MMU_FAULTS), ==, 1);
    g_assert_cmphex(rd(v, VNPU_REG_MMU_LAST_FAULT_LO), ==, 0x30000);
    g_assert_cmphex(rd(v, VNPU_REG_MMU_LAST_FAULT_HI), ==, 0);
    g_assert_cmpuint(rd(v, VNPU_REG_MMU_LAST_FAULT_CTX), ==, 1);
    /* Writing a read-only page. */
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x20000, 0x100, 3, true);
    cmd.ctx_id = 1;
    c = run_one(v, &cmd, 1);
    g_assert_cmpuint(c.status, ==, VNPU_CPL_MMU_FAULT);
    g_assert_cmphex(c.fault_addr, ==, 0x20000);
    /* Beyond the 43-bit space. */
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 1ull << 43, 0x100, 4, true);
    cmd.ctx_id = 1;
    g_assert_cmpuint(run_one(v, &cmd, 1).status, ==, VNPU_CPL_MMU_FAULT);
    /* A reserved bit in a level-3 entry. */
    map(v, root1, 0x40000, 0x40000 | 0x4, true);
    wr(v, VNPU_REG_MMU_INVALIDATE, 1);
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x40000, 0x100, 5, true);
    cmd.ctx_id = 1;
    g_assert_cmpuint(run_one(v, &cmd, 1).status, ==, VNPU_CPL_MMU_FAULT);
    /* A page outside device memory. */
    map(v, root1, 0x50000, DEVMEM_SIZE, true);
    wr(v, VNPU_REG_MMU_INVALIDATE, 1);
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0x50000, 0x100, 6, true);
    cmd.ctx_id = 1;
    g_assert_cmpuint(run_one(v, &cmd, 1).status, ==, VNPU_CPL_MMU_FAULT);
    /* Invalid context: fault at address 0. A page table in MMIO: fault, no access to the BAR. */
    set_ctx(v, 2, root1, false);
    wr(v, VNPU_REG_MMU_INVALIDATE, 2);
    cmd = cmd_nop(7, true);
    cmd.ctx_id = 2;
    c = run_one(v, &cmd, 1);
    g_assert_cmpuint(c.status, ==, VNPU_CPL_MMU_FAULT);
    g_assert_cmphex(c.fault_addr, ==, 0);
    set_ctx(v, 3, v->bar_addr, true);
    wr(v, VNPU_REG_MMU_INVALIDATE, 3);
    cmd = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 0x100, 8, true);
    cmd.ctx_id = 3;
    g_assert_cmpuint(run_one(v, &cmd, 1).status, ==, VNPU_CPL_MMU_FAULT);
    /* A context table in unassigned space: every context invalid. */
    wr(v, VNPU_REG_CTX_TABLE_LO, (uint32_t)UNASSIGNED);
    wr(v, VNPU_REG_CTX_TABLE_HI, 0);
    g_assert_cmpuint(status_of(v, cmd_nop(9, true)), ==, VNPU_CPL_MMU_FAULT);
    vnpu_stop(v);
}

/* ---- SIGNAL ------------------------------------------------------------------------------------------- */

static void test_signal(void)
{
    Vnpu *v = vnpu_start("");
    uint64_t s = SGL_BASE;
    struct vnpu_hw_cmd job[4], bad;
    struct vnpu_hw_cpl a, b;

    enable(v, 16, 16);
    put_sge(v, s, DATA_BASE, 0x10000, 0);
    job[0] = cmd_dma(VNPU_OPC_DMA_H2D, s, 1, 0, 0, 0x10000, 1, false);
    job[1] = cmd_signal(7);
    job[2] = cmd_synth(10000, 1, false);
    job[3] = cmd_nop(9, true);
    submit(v, job, 4);
    g_assert(wait_cpl(v, &a, 1000));
    g_assert(wait_cpl(v, &b, 1000));
    g_assert_cmpuint(a.tag, ==, 7);
    g_assert_cmphex(a.flags, ==, VNPU_CPL_F_PHASE | VNPU_CPL_F_SIGNAL);
    g_assert_cmpuint(a.status, ==, VNPU_CPL_OK);
    g_assert_cmpuint(a.sq_index, ==, 1);
    g_assert_cmpuint(a.t_start, ==, b.t_start);
    g_assert_cmpuint(a.t_end - a.t_start, >=, a.h2d_ns);
    g_assert_cmpuint(a.compute_ns, ==, 0);
    g_assert_cmpuint(b.tag, ==, 9);
    g_assert_cmphex(b.flags, ==, VNPU_CPL_F_PHASE);
    g_assert_cmpuint(b.t_end, >=, a.t_end);
    g_assert_cmpuint(b.h2d_ns, ==, a.h2d_ns);
    g_assert_cmpuint(b.compute_ns, ==, 11000); /* SYNTH: overhead + 10 us; the SIGNAL costs nothing */
    g_assert_cmpuint(b.t_end - b.t_start, >=, b.h2d_ns + 11000 + 1000);
    g_assert_cmpuint(qrd(v, 0, VNPU_QREG_JOBS_DONE), ==, 1);

    /* SIGNAL with F_LAST or a payload: BAD_FIELD, no intermediate record. */
    bad = cmd_signal(3);
    bad.flags = VNPU_CMD_F_LAST;
    a = run_one(v, &bad, 1);
    g_assert_cmpuint(a.status, ==, VNPU_CPL_BAD_FIELD);
    g_assert_cmphex(a.flags & VNPU_CPL_F_SIGNAL, ==, 0);
    job[0] = cmd_signal(4);
    job[0].raw[0] = 1;
    job[1] = cmd_nop(5, true);
    a = run_one(v, job, 2);
    g_assert_cmpuint(a.status, ==, VNPU_CPL_BAD_FIELD);
    g_assert_cmphex(a.flags & VNPU_CPL_F_SIGNAL, ==, 0);
    vnpu_stop(v);
}

/* ---- reset and unplug with work in flight ------------------------------------------------------------- */

/* A job that runs for `ns` of modelled time, then writes 4 KiB to DATA_BASE + 0x80000 (if it ever ends). */
static void submit_long_job(Vnpu *v, uint64_t ns)
{
    struct vnpu_hw_cmd job[3];
    uint64_t in = SGL_BASE, out = SGL_BASE + 0x100;

    put_sge(v, in, DATA_BASE, 0x100000, 0);
    put_sge(v, out, DATA_BASE + 0x80000, 0x1000, 0);
    job[0] = cmd_dma(VNPU_OPC_DMA_H2D, in, 1, 0, 0, 0x100000, 1, false);
    job[1] = cmd_synth(ns, 1, false);
    job[2] = cmd_dma(VNPU_OPC_DMA_D2H, out, 1, 0, 0, 0x1000, 1, true);
    submit(v, job, 3);
}

static bool region_is_zero(Vnpu *v, uint64_t addr, size_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);

    qtest_memread(v->qts, addr, buf, len);
    for (size_t i = 0; i < len; i++) {
        if (buf[i]) {
            return false;
        }
    }
    return true;
}

static void test_reset_in_flight(void)
{
    Vnpu *v = vnpu_start("");
    g_autofree uint8_t *pattern = g_malloc(0x100000);
    struct vnpu_hw_cpl c;

    memset(pattern, 0xa5, 0x100000);
    qtest_memwrite(v->qts, DATA_BASE, pattern, 0x100000);
    qtest_memset(v->qts, DATA_BASE + 0x80000, 0, 0x1000);
    enable(v, 16, 16);
    submit_long_job(v, 1000000000);
    qtest_clock_step(v->qts, 200000); /* the H2D has ended, the SYNTH runs */
    g_usleep(20000);
    wr(v, VNPU_REG_RESET, VNPU_RESET_MAGIC);
    for (int i = 0; i < 1000 && !(rd(v, VNPU_REG_STATUS) & VNPU_STATUS_READY); i++) {
        g_usleep(1000);
    }
    g_assert_cmphex(rd(v, VNPU_REG_STATUS), ==, VNPU_STATUS_READY);
    /* Long after the job would have ended: no record, no D2H into guest memory. */
    qtest_memset(v->qts, DATA_BASE + 0x80000, 0, 0x1000);
    qtest_clock_step(v->qts, 3000000000ll);
    g_usleep(20000);
    g_assert(region_is_zero(v, CQ_BASE, 16 * sizeof(struct vnpu_hw_cpl)));
    g_assert(region_is_zero(v, DATA_BASE + 0x80000, 0x1000));
    g_assert_cmphex(qrd(v, 0, VNPU_QREG_STATUS), ==, VNPU_QSTATUS_IDLE);
    /* The device works again after being set up again. */
    setup_mmu(v);
    enable(v, 16, 16);
    g_assert_cmpuint(status_of(v, cmd_nop(2, true)), ==, VNPU_CPL_OK);

    /* The same through a system reset (Resettable). */
    submit_long_job(v, 1000000000);
    qtest_clock_step(v->qts, 200000);
    qtest_system_reset(v->qts);
    qtest_memset(v->qts, CQ_BASE, 0, 16 * sizeof(struct vnpu_hw_cpl));
    qtest_memset(v->qts, DATA_BASE + 0x80000, 0, 0x1000);
    qtest_clock_step(v->qts, 3000000000ll);
    g_usleep(20000);
    g_assert(region_is_zero(v, CQ_BASE, 16 * sizeof(struct vnpu_hw_cpl)));
    g_assert(region_is_zero(v, DATA_BASE + 0x80000, 0x1000));

    /* A queue reset with a job in flight aborts it with a record. */
    qpci_device_enable(v->dev);
    qpci_config_writel(v->dev, PCI_BASE_ADDRESS_0, (uint32_t)v->bar_addr);
    qpci_device_enable(v->dev);
    setup_mmu(v);
    enable(v, 16, 16);
    submit_long_job(v, 1000000000);
    qtest_clock_step(v->qts, 200000);
    qwr(v, 0, VNPU_QREG_CTRL, VNPU_QCTRL_RESET);
    g_assert(wait_cpl(v, &c, 100000));
    g_assert_cmpuint(c.status, ==, VNPU_CPL_ABORTED);
    vnpu_stop(v);
}

static void test_unplug_in_flight(void)
{
    Vnpu *v = g_new0(Vnpu, 1);
    QPCIDevice *port;
    uint8_t exp;
    uint16_t sltctl;
    gint64 t0;

    v->qts = qtest_init("-machine q35 -nodefaults -m 256M -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off "
                        "-device pcie-root-port,id=rp,addr=05.0,chassis=1,slot=1 "
                        "-device vnpu,bus=rp,id=npu,devmem-size=16M");
    v->bus = qpci_new_pc(v->qts, NULL);
    qpci_secondary_buses_init(v->bus);
    port = qpci_device_find(v->bus, QPCI_DEVFN(5, 0));
    g_assert(port);
    /* Forward the MMIO window the bus allocator hands out, and the device's DMA. */
    qpci_config_writew(port, PCI_MEMORY_BASE, 0xe000);
    qpci_config_writew(port, PCI_MEMORY_LIMIT, 0xeff0);
    qpci_device_enable(port);
    vnpu_attach(v, QPCI_DEVFN(1 << 5, 0));
    enable(v, 16, 16);
    submit_long_job(v, 5000000000ll);
    qtest_clock_step(v->qts, 200000);
    g_usleep(20000);

    /* The guest powers the slot off (what pciehp does after the attention button): QEMU unplugs the device. */
    exp = qpci_find_capability(port, PCI_CAP_ID_EXP, 0);
    g_assert(exp);
    qtest_qmp_device_del_send(v->qts, "npu");
    sltctl = qpci_config_readw(port, exp + PCI_EXP_SLTCTL);
    sltctl = (sltctl & ~(PCI_EXP_SLTCTL_PIC | PCI_EXP_SLTCTL_PCC)) | PCI_EXP_SLTCTL_PWR_IND_OFF | PCI_EXP_SLTCTL_PWR_OFF;
    t0 = g_get_monotonic_time();
    qpci_config_writew(port, exp + PCI_EXP_SLTCTL, sltctl);
    qtest_qmp_eventwait(v->qts, "DEVICE_DELETED");
    /* Bounded (the engine waits at most 2 s for its workers), and nothing reaches guest memory afterwards. */
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 10 * G_USEC_PER_SEC);
    qtest_memset(v->qts, CQ_BASE, 0, 16 * sizeof(struct vnpu_hw_cpl));
    qtest_memset(v->qts, DATA_BASE + 0x80000, 0, 0x1000);
    qtest_clock_step(v->qts, 6000000000ll);
    g_usleep(20000);
    g_assert(region_is_zero(v, CQ_BASE, 16 * sizeof(struct vnpu_hw_cpl)));
    g_assert(region_is_zero(v, DATA_BASE + 0x80000, 0x1000));
    g_free(port);
    g_free(v->dev);
    v->dev = NULL;
    vnpu_stop(v);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/vnpu/registers", test_registers);
    qtest_add_func("/vnpu/queue-config", test_queue_config);
    qtest_add_func("/vnpu/ring-wrap", test_ring_wrap);
    qtest_add_func("/vnpu/sg-dma", test_sg_dma);
    qtest_add_func("/vnpu/hostile-rings", test_hostile_rings);
    qtest_add_func("/vnpu/mmu-faults", test_mmu_faults);
    qtest_add_func("/vnpu/signal", test_signal);
    qtest_add_func("/vnpu/reset-in-flight", test_reset_in_flight);
    qtest_add_func("/vnpu/unplug-in-flight", test_unplug_in_flight);
    return g_test_run();
}
