/* SPDX-License-Identifier: MIT */
/*
 * Fast kernels on oneDNN (libdnnl 2.6, C API): convolution, transposed convolution, pooling, matmul over the
 * program's plain row-major (nchw / ab) layouts. One CPU engine per process (created once, thread-safe);
 * a stream per call; each op's primitives (and its reorders') created once per process and kept (PrimEntry).
 * Anything outside what is mapped here returns 1 and the caller runs the reference kernel.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <dnnl.h>

#include "vnpu_ops.h"
#include "vnpu_program.h"

#define IN(a, i) (&(a)->t[(i)])
#define OUT(a, i) (&(a)->t[(a)->num_inputs + (i)])

static dnnl_engine_t vnpu_dnnl_engine;
static pthread_once_t vnpu_dnnl_once = PTHREAD_ONCE_INIT;

static void vnpu_dnnl_init(void)
{
    if (dnnl_engine_create(&vnpu_dnnl_engine, dnnl_cpu, 0) != dnnl_success) {
        vnpu_dnnl_engine = NULL;
    }
}

static dnnl_engine_t engine_get(void)
{
    pthread_once(&vnpu_dnnl_once, vnpu_dnnl_init);
    return vnpu_dnnl_engine;
}

/* ---- primitives cached per op -------------------------------------------------------------------------------
 *
 * Creating a primitive descriptor walks oneDNN's implementation list (every reorder, every convolution kernel
 * checks the shapes), which costs tens to hundreds of microseconds per op and per layout conversion on every
 * run, even when oneDNN's own primitive cache then hands back the compiled kernel. Here each op's primitive
 * (and each reorder's) is created once per thread, keyed by everything it depends on (a key struct the caller
 * zero-fills, so padding never makes equal keys differ), and executed from then on. Per thread: a primitive
 * created with oneDNN's default (library) scratchpad uses the creating thread's global scratchpad, so one
 * primitive object executed from another thread at the same time would share or overrun it (wrong results
 * with two compute cores, seen in the Python suite's 100 concurrent requests). Threads are told apart by a
 * number never reused (a new thread may get a dead one's pthread_t). The table is bounded
 * (PRIM_CACHE_MAX entries, never evicted while the process lives: a program's ops are a fixed set); when it
 * is full, callers create, use and destroy primitives per call as before.
 */
#define PRIM_CACHE_BUCKETS 1024
#define PRIM_CACHE_MAX 8192

typedef struct PrimEntry {
    struct PrimEntry *next;
    uint64_t hash;
    uint64_t thread;          /* prim_thread() of the creating (and only executing) thread */
    dnnl_primitive_desc_t pd; /* NULL: oneDNN has no implementation for this key (the fast path does not apply) */
    dnnl_primitive_t prim;
    int aux;                  /* per kernel: e.g. a convolution's "activation applied afterwards" */
    size_t len;
    unsigned char key[];
} PrimEntry;

static pthread_mutex_t prim_lock = PTHREAD_MUTEX_INITIALIZER;
static PrimEntry *prim_table[PRIM_CACHE_BUCKETS];
static unsigned prim_count;

/* This thread's number: assigned on first use, never reused. */
static uint64_t prim_thread(void)
{
    static uint64_t next_thread;
    static __thread uint64_t self;

    if (!self) {
        self = __atomic_add_fetch(&next_thread, 1, __ATOMIC_RELAXED);
    }
    return self;
}

static uint64_t prim_hash(const void *key, size_t len)
{
    const unsigned char *k = key;
    uint64_t h = UINT64_C(1469598103934665603) ^ prim_thread() * UINT64_C(0x9e3779b97f4a7c15);
    size_t i;

    for (i = 0; i < len; i++) {
        h = (h ^ k[i]) * UINT64_C(1099511628211);
    }
    return h;
}

/* The entry for key, or NULL. Entries are never freed, so the pointer stays valid. */
static const PrimEntry *prim_find(const void *key, size_t len)
{
    uint64_t h = prim_hash(key, len);
    const PrimEntry *e;

    pthread_mutex_lock(&prim_lock);
    for (e = prim_table[h % PRIM_CACHE_BUCKETS]; e; e = e->next) {
        if (e->hash == h && e->thread == prim_thread() && e->len == len && memcmp(e->key, key, len) == 0) {
            break;
        }
    }
    pthread_mutex_unlock(&prim_lock);
    return e;
}

/*
 * Keeps (pd, prim, aux) for key and returns its entry: the one already there if another thread was first (then
 * pd and prim are destroyed). NULL when the table is full or out of memory: the caller still owns pd and prim.
 */
static const PrimEntry *prim_put(const void *key, size_t len, dnnl_primitive_desc_t pd, dnnl_primitive_t prim,
                                 int aux)
{
    uint64_t h = prim_hash(key, len);
    PrimEntry *e, *n;

    pthread_mutex_lock(&prim_lock);
    for (e = prim_table[h % PRIM_CACHE_BUCKETS]; e; e = e->next) {
        if (e->hash == h && e->thread == prim_thread() && e->len == len && memcmp(e->key, key, len) == 0) {
            pthread_mutex_unlock(&prim_lock);
            if (prim) {
                dnnl_primitive_destroy(prim);
            }
            if (pd) {
                dnnl_primitive_desc_destroy(pd);
            }
            return e;
        }
    }
    n = prim_count < PRIM_CACHE_MAX ? malloc(sizeof(*n) + len) : NULL;
    if (n) {
        n->hash = h;
        n->thread = prim_thread();
        n->pd = pd;
        n->prim = prim;
        n->aux = aux;
        n->len = len;
        memcpy(n->key, key, len);
        n->next = prim_table[h % PRIM_CACHE_BUCKETS];
        prim_table[h % PRIM_CACHE_BUCKETS] = n;
        prim_count++;
    }
    pthread_mutex_unlock(&prim_lock);
    return n;
}

/*
 * Post-ops of a primitive: with `residual`, a sum (dst += the primitive's result), then the fused activation as
 * an eltwise post-op. 0 when everything was appended, 1 when oneDNN has no post-op for the activation (the
 * caller applies it afterwards), -1 on failure.
 */
static int act_post_op(uint32_t act, float alpha, float beta, int residual, dnnl_primitive_attr_t attr)
{
    dnnl_post_ops_t po;
    dnnl_alg_kind_t alg = dnnl_alg_kind_undef;
    float a = 0.0f, b = 0.0f;
    int ret, unmapped = 0;

    switch (act) {
    case VNPU_ISA_ACT_NONE:
        break;
    case VNPU_ISA_ACT_RELU:
        alg = dnnl_eltwise_relu;
        break;
    case VNPU_ISA_ACT_LEAKY_RELU:
        alg = dnnl_eltwise_relu;
        a = alpha;
        break;
    case VNPU_ISA_ACT_SIGMOID:
        alg = dnnl_eltwise_logistic;
        break;
    case VNPU_ISA_ACT_SILU:
        alg = dnnl_eltwise_swish;
        a = 1.0f;
        break;
    case VNPU_ISA_ACT_CLIP:
        alg = dnnl_eltwise_clip_v2; /* min(max(x, alpha), beta), like ONNX Clip */
        a = alpha;
        b = beta;
        break;
    case VNPU_ISA_ACT_TANH:
        alg = dnnl_eltwise_tanh;
        break;
    case VNPU_ISA_ACT_GELU:
        alg = dnnl_eltwise_gelu_erf;
        break;
    case VNPU_ISA_ACT_HARD_SWISH:
        alg = dnnl_eltwise_hardswish;
        break;
    default:
        unmapped = 1;
        break;
    }
    if (!residual && alg == dnnl_alg_kind_undef) {
        return unmapped;
    }
    if (dnnl_post_ops_create(&po) != dnnl_success) {
        return -1;
    }
    ret = (!residual || dnnl_post_ops_append_sum(po, 1.0f) == dnnl_success) &&
          (alg == dnnl_alg_kind_undef || dnnl_post_ops_append_eltwise(po, 1.0f, alg, a, b) == dnnl_success) &&
          dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success ? unmapped : -1;
    dnnl_post_ops_destroy(po);
    return ret;
}

static void dims_of(const VnpuTensor *t, dnnl_dims_t d)
{
    unsigned i;

    for (i = 0; i < t->rank; i++) {
        d[i] = (dnnl_dim_t)t->dims[i];
    }
}

typedef struct DnnlCall {
    dnnl_primitive_desc_t pd; /* owned (with prim) when the primitive is not cached */
    dnnl_primitive_t prim;
    const struct PrimEntry *e; /* the cached primitive, or NULL */
    dnnl_stream_t stream;
    dnnl_memory_t mem[4];
    dnnl_exec_arg_t args[4];
    int nargs;
} DnnlCall;

static int call_arg(DnnlCall *c, int arg, const dnnl_memory_desc_t *md, void *ptr)
{
    dnnl_memory_t m;

    if (dnnl_memory_create(&m, md, engine_get(), ptr) != dnnl_success) {
        return -1;
    }
    c->mem[c->nargs] = m;
    c->args[c->nargs].arg = arg;
    c->args[c->nargs].memory = m;
    c->nargs++;
    return 0;
}

/*
 * Runs the primitive of c (cached, or created by call_cached) on the memories added with call_arg, frees
 * everything c owns.
 */
static int call_run(DnnlCall *c, int ok);

/*
 * Runs a reorder (layout conversion) between two memories on `stream`; the reorder primitive is cached per
 * (source, destination) descriptor pair.
 */
static int reorder(dnnl_stream_t stream, const dnnl_memory_desc_t *smd, void *sp, const dnnl_memory_desc_t *dmd,
                   void *dp)
{
    struct {
        uint32_t tag;
        dnnl_memory_desc_t s, d;
    } key;
    const PrimEntry *e;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    DnnlCall c;
    int ok, ret = -1, i;

    memset(&key, 0, sizeof(key));
    key.tag = 0x52454f52; /* "REOR" */
    memcpy(&key.s, smd, sizeof(*smd));
    memcpy(&key.d, dmd, sizeof(*dmd));
    e = prim_find(&key, sizeof(key));
    if (!e) {
        if (dnnl_reorder_primitive_desc_create(&pd, smd, engine_get(), dmd, engine_get(), NULL) != dnnl_success) {
            return -1;
        }
        if (dnnl_primitive_create(&prim, pd) != dnnl_success) {
            dnnl_primitive_desc_destroy(pd);
            return -1;
        }
        e = prim_put(&key, sizeof(key), pd, prim, 0);
        if (e) {
            pd = NULL;
            prim = NULL;
        }
    }
    memset(&c, 0, sizeof(c));
    ok = call_arg(&c, DNNL_ARG_FROM, smd, sp) == 0 && call_arg(&c, DNNL_ARG_TO, dmd, dp) == 0;
    if (ok && dnnl_primitive_execute(e ? e->prim : prim, stream, c.nargs, c.args) == dnnl_success) {
        ret = 0;
    }
    for (i = 0; i < c.nargs; i++) {
        dnnl_memory_destroy(c.mem[i]);
    }
    if (prim) {
        /* Not cached: it must outlive its execution on the stream. */
        dnnl_stream_wait(stream);
        dnnl_primitive_destroy(prim);
        dnnl_primitive_desc_destroy(pd);
    }
    return ret;
}

/*
 * Blocked and padded copies are host memory the guest's program makes the device allocate: they count against
 * the run's budget (VnpuProgramMem.reserve, the core's share of host-mem-max, together with its bounce
 * buffers). A refused reservation makes the fast kernel fail and the caller run the reference kernel, which
 * needs no copies.
 */
static int shadows_evict_oldest(VnpuShadows *t);

static void *buf_alloc(const VnpuOpArgs *a, uint64_t bytes)
{
    const VnpuProgramMem *m = a->mem;
    void *p;

    if (m && m->reserve && m->release) {
        while (m->reserve(m->opaque, bytes)) {
            /* Copies kept for later ops (VnpuShadows) give way to the copies this op needs now. */
            if (!a->shadows || shadows_evict_oldest(a->shadows)) {
                return NULL;
            }
        }
    }
    p = aligned_alloc(64, bytes);
    if (!p && m && m->reserve && m->release) {
        m->release(m->opaque, bytes);
    }
    return p;
}

static void buf_release(const VnpuProgramMem *m, uint64_t bytes)
{
    if (m && m->reserve && m->release) {
        m->release(m->opaque, bytes);
    }
}

/* Frees a buffer of buf_alloc (NULL: nothing). */
static void buf_free(const VnpuOpArgs *a, void *p, uint64_t bytes)
{
    if (p) {
        free(p);
        buf_release(a->mem, bytes);
    }
}

/*
 * When `want` differs from the plain layout, a 64-byte aligned buffer for it in *buf, of *bytes bytes (else
 * *buf stays NULL). -1 if out of memory or beyond the run's budget.
 */
static int layout_buffer(const VnpuOpArgs *a, const dnnl_memory_desc_t *plain, const dnnl_memory_desc_t *want,
                         void **buf, uint64_t *bytes)
{
    if (dnnl_memory_desc_equal(want, plain)) {
        return 0;
    }
    *bytes = (dnnl_memory_desc_get_size(want) + 63) / 64 * 64;
    *buf = buf_alloc(a, *bytes);
    return *buf ? 0 : -1;
}

/* Like layout_buffer, and reorders `data` (in the plain layout) into the buffer on `stream`. */
static int layout_in(const VnpuOpArgs *a, dnnl_stream_t stream, const dnnl_memory_desc_t *plain, void *data,
                     const dnnl_memory_desc_t *want, void **buf, uint64_t *bytes)
{
    if (layout_buffer(a, plain, want, buf, bytes)) {
        return -1;
    }
    return *buf && reorder(stream, plain, data, want, *buf) ? -1 : 0;
}

/*
 * Runs prim on `stream` with the memories added by call_arg. When the output was computed in the buffer yb
 * (layout yq), reorders it back to `plain` at y. Waits for the stream.
 */
static int call_run_to_plain(DnnlCall *c, dnnl_primitive_t prim, dnnl_stream_t stream,
                             const dnnl_memory_desc_t *yq, void *yb, const dnnl_memory_desc_t *plain, void *y)
{
    return dnnl_primitive_execute(prim, stream, c->nargs, c->args) == dnnl_success &&
                   (!yb || reorder(stream, yq, yb, plain, y) == 0) && dnnl_stream_wait(stream) == dnnl_success
               ? VNPU_CPL_OK
               : -1;
}

/*
 * The cached (pd, primitive) of key: on a miss, made from *pd (which this takes over; NULL: no implementation,
 * remembered as such) with aux. 0 with *e set (its pd NULL when oneDNN has no implementation), or 0 with *e
 * NULL and *pd, *prim owned by the caller (table full), or -1 (oneDNN failed; *pd destroyed).
 */
static int prim_get(const void *key, size_t len, dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim, int aux,
                    const PrimEntry **e)
{
    *prim = NULL;
    if (*pd && dnnl_primitive_create(prim, *pd) != dnnl_success) {
        dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        return -1;
    }
    *e = prim_put(key, len, *pd, *prim, aux);
    if (*e) {
        *pd = NULL;
        *prim = NULL;
    }
    return 0;
}

/* Destroys what prim_get left to the caller once the stream is done with it. */
static void prim_release(dnnl_primitive_desc_t pd, dnnl_primitive_t prim)
{
    if (prim) {
        dnnl_primitive_destroy(prim);
    }
    if (pd) {
        dnnl_primitive_desc_destroy(pd);
    }
}

static int call_run(DnnlCall *c, int ok)
{
    dnnl_primitive_t prim = c->e ? c->e->prim : c->prim;
    int ret = -1, i;

    if (ok && prim && dnnl_stream_create(&c->stream, engine_get(), dnnl_stream_default_flags) == dnnl_success) {
        if (dnnl_primitive_execute(prim, c->stream, c->nargs, c->args) == dnnl_success &&
            dnnl_stream_wait(c->stream) == dnnl_success) {
            ret = VNPU_CPL_OK;
        }
        dnnl_stream_destroy(c->stream);
    }
    for (i = 0; i < c->nargs; i++) {
        dnnl_memory_destroy(c->mem[i]);
    }
    prim_release(c->pd, c->prim);
    return ret;
}

/* Frees the memories added by call_arg and, once its work is done, `stream` (may be NULL). */
static void call_release(DnnlCall *c, dnnl_stream_t stream)
{
    int i;

    for (i = 0; i < c->nargs; i++) {
        dnnl_memory_destroy(c->mem[i]);
    }
    if (stream) {
        dnnl_stream_wait(stream);
        dnnl_stream_destroy(stream);
    }
}

/*
 * Primitive attributes carrying the fused activation: 0, or -1 on failure. *after is set when oneDNN has no
 * post-op for it: the caller applies it over the output with act_apply() (never a silent fall-back to the
 * reference kernel for the whole op).
 */
static int act_attr(uint32_t act, float alpha, float beta, int residual, dnnl_primitive_attr_t *attr, int *after)
{
    int r;

    *after = 0;
    if (dnnl_primitive_attr_create(attr) != dnnl_success) {
        return -1;
    }
    r = act_post_op(act, alpha, beta, residual, *attr);
    if (r < 0) {
        dnnl_primitive_attr_destroy(*attr);
        return -1;
    }
    *after = r;
    return 0;
}

/* The activation of `a` (ctx: its vnpu_isa act fields) over output elements [begin, end), in place. */
typedef struct ActAfter {
    uint32_t act;
    float alpha, beta;
} ActAfter;

static int act_range(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const ActAfter *f = ctx;
    float *y = OUT(a, 0)->data;
    uint64_t i;

    for (i = begin; i < end; i++) {
        y[i] = vnpu_ops_act(y[i], f->act, f->alpha, f->beta);
        if ((i & 0xffff) == 0xffff && a->cancel && *a->cancel) {
            return VNPU_CPL_ABORTED;
        }
    }
    return VNPU_CPL_OK;
}

/*
 * The activation oneDNN could not fuse, in place over a kernel's output (the reference kernels' function, so
 * both agree), on the kernels' threads, polling cancellation every 64 Ki elements.
 */
static int act_apply(int ret, int after, const VnpuOpArgs *a, uint32_t act, float alpha, float beta)
{
    ActAfter f = {act, alpha, beta};

    if (ret != VNPU_CPL_OK || !after) {
        return ret;
    }
    return vnpu_ops_parallel(a, OUT(a, 0)->count, OUT(a, 0)->count, act_range, &f);
}

/*
 * The primitive of op descriptor d (initialised by the caller when desc_ok) with the fused activation, cached
 * under key (which must determine d and the activation): sets c's primitive and *after. 0, 1 when oneDNN has
 * no implementation (use the reference kernel), -1 on failure.
 */
static int call_cached(DnnlCall *c, const void *key, size_t len, int desc_ok, const_dnnl_op_desc_t d, uint32_t act,
                       float alpha, float beta, int *after)
{
    dnnl_primitive_attr_t attr;

    c->e = prim_find(key, len);
    if (!c->e) {
        if (act_attr(act, alpha, beta, 0, &attr, after)) {
            return -1;
        }
        if (!desc_ok || dnnl_primitive_desc_create(&c->pd, d, attr, engine_get(), NULL) != dnnl_success) {
            c->pd = NULL;
        }
        dnnl_primitive_attr_destroy(attr);
        if (prim_get(key, len, &c->pd, &c->prim, *after, &c->e)) {
            return -1;
        }
    }
    if (c->e) {
        *after = c->e->aux;
        return c->e->pd ? 0 : 1;
    }
    return c->pd ? 0 : 1;
}

/* Dims of t right-aligned to `rank`, missing leading dims 1 (broadcast): the equal ranks oneDNN wants. */
static void dims_of_rank(const VnpuTensor *t, unsigned rank, dnnl_dims_t d)
{
    unsigned i;

    for (i = 0; i < rank; i++) {
        d[i] = i + t->rank >= rank ? (dnnl_dim_t)t->dims[i + t->rank - rank] : 1;
    }
}

/*
 * Row-major strides of a matmul operand of rank r; with `trans`, the last two dims of d are swapped and
 * the strides read the stored matrix transposed.
 */
static void matmul_operand(dnnl_dims_t d, dnnl_dims_t st, unsigned r, int trans)
{
    dnnl_dim_t s;
    int j;

    if (trans) {
        dnnl_dim_t t = d[r - 1];

        d[r - 1] = d[r - 2];
        d[r - 2] = t;
        st[r - 2] = 1;
        st[r - 1] = d[r - 2];
    } else {
        st[r - 1] = 1;
        st[r - 2] = d[r - 1];
    }
    s = d[r - 1] * d[r - 2];
    for (j = (int)r - 3; j >= 0; j--) {
        st[j] = s;
        s *= d[j];
    }
}

/* ---- blocked copies of convolution outputs (VnpuShadows) ---------------------------------------------------- */

#define SHADOW_SLOTS 8
#define SHADOW_MAX_BYTES (UINT64_C(512) << 20) /* held at once; the oldest copies go first */

typedef struct VnpuShadow {
    uint64_t addr, len; /* device address range of the plain tensor; len 0: free slot */
    uint64_t bytes;     /* of buf (reserved from the run's budget through VnpuShadows.mem) */
    uint64_t age;
    dnnl_memory_desc_t md;
    void *buf;
} VnpuShadow;

struct VnpuShadows {
    VnpuShadow s[SHADOW_SLOTS];
    uint64_t bytes, clock;
    const void *pinned; /* the copy the running op reads: never evicted */
    const VnpuProgramMem *mem; /* the run's budget the copies were reserved from (one run per table) */
};

VnpuShadows *vnpu_shadows_new(void)
{
    return engine_get() ? calloc(1, sizeof(VnpuShadows)) : NULL;
}

static void shadow_drop(VnpuShadows *t, VnpuShadow *s)
{
    free(s->buf);
    buf_release(t->mem, s->bytes);
    t->bytes -= s->bytes;
    memset(s, 0, sizeof(*s));
}

/* Drops the oldest copy that is not pinned: 0, or -1 if there is none. */
static int shadows_evict_oldest(VnpuShadows *t)
{
    VnpuShadow *oldest = NULL;
    unsigned i;

    for (i = 0; i < SHADOW_SLOTS; i++) {
        VnpuShadow *s = &t->s[i];

        if (s->len && s->buf != t->pinned && (!oldest || s->age < oldest->age)) {
            oldest = s;
        }
    }
    if (!oldest) {
        return -1;
    }
    shadow_drop(t, oldest);
    return 0;
}

void vnpu_shadows_free(VnpuShadows *t)
{
    unsigned i;

    if (!t) {
        return;
    }
    for (i = 0; i < SHADOW_SLOTS; i++) {
        if (t->s[i].len) {
            shadow_drop(t, &t->s[i]);
        }
    }
    free(t);
}

void vnpu_shadows_invalidate(VnpuShadows *t, uint64_t addr, uint64_t len)
{
    unsigned i;

    if (!t || !len) {
        return;
    }
    for (i = 0; i < SHADOW_SLOTS; i++) {
        VnpuShadow *s = &t->s[i];

        if (s->len && addr < s->addr + s->len && s->addr < addr + len) {
            shadow_drop(t, s);
        }
    }
}

/* The blocked copy of exactly [addr, addr + len) in layout md, or NULL. */
static void *shadow_find(VnpuShadows *t, uint64_t addr, uint64_t len, const dnnl_memory_desc_t *md)
{
    unsigned i;

    for (i = 0; t && len && i < SHADOW_SLOTS; i++) {
        const VnpuShadow *s = &t->s[i];

        if (s->len == len && s->addr == addr && dnnl_memory_desc_equal(&s->md, md)) {
            return s->buf;
        }
    }
    return NULL;
}

/*
 * Takes ownership of buf (the blocked copy of [addr, addr + len) in layout md, `bytes` reserved from a's
 * budget by buf_alloc): 0, or -1 (caller frees it).
 */
static int shadow_add(VnpuShadows *t, const VnpuOpArgs *a, uint64_t addr, uint64_t len,
                      const dnnl_memory_desc_t *md, void *buf, uint64_t bytes)
{
    VnpuShadow *s;
    unsigned i;

    if (!t || !len || bytes > SHADOW_MAX_BYTES || (t->mem && t->mem != a->mem)) {
        return -1;
    }
    t->mem = a->mem;
    vnpu_shadows_invalidate(t, addr, len);
    for (;;) {
        VnpuShadow *oldest = NULL, *fr = NULL;

        for (i = 0; i < SHADOW_SLOTS; i++) {
            s = &t->s[i];
            if (!s->len) {
                fr = fr ? fr : s;
            } else if (!oldest || s->age < oldest->age) {
                oldest = s;
            }
        }
        if (fr && t->bytes + bytes <= SHADOW_MAX_BYTES) {
            s = fr;
            break;
        }
        shadow_drop(t, oldest); /* something is held: either no free slot or too many bytes */
    }
    s->addr = addr;
    s->len = len;
    s->bytes = bytes;
    s->age = ++t->clock;
    s->md = *md;
    s->buf = buf;
    t->bytes += bytes;
    return 0;
}

/* ---- convolution weights kept in the primitive's layout across runs (PackedWeights) ---------------------------
 *
 * A convolution's weights are converted from the program's goihw into the layout its primitive wants (blocked,
 * e.g. OIhw16i16o) before it can run. The weights are the same on every run of a model, so the converted copy is
 * kept, keyed by the weights' device address, size and target layout, and bounded by the budget the engine gives
 * (VnpuProgramRun.weights_cache_max: a compute core's share of host-mem-max). Device memory can be rewritten by
 * the host at any time without the device noticing (in QEMU it is guest RAM), so a copy is used only if the
 * weights still hash to what they were converted from: a keyed 64-bit hash of the plain bytes (key random per
 * process, so a guest cannot construct a colliding set of weights), computed in 256 KiB chunks over the kernel
 * threads. Hashing reads the weights once; converting reads them and writes a fresh buffer (page faults
 * included), which is what this saves, together with one parallel region per convolution.
 */
#define PW_CHUNK (UINT64_C(256) << 10)

typedef struct PackedWeights {
    struct PackedWeights *next;
    uint64_t addr, len;     /* device address and bytes of the plain weights */
    uint64_t hash;          /* of the plain bytes buf was converted from */
    dnnl_memory_desc_t md;  /* buf's layout */
    uint64_t bytes;         /* of buf */
    uint64_t last_use;
    int refs;
    int cached;             /* in the list (else freed by pw_release) */
    void *buf;
} PackedWeights;

static pthread_mutex_t pw_lock = PTHREAD_MUTEX_INITIALIZER;
static PackedWeights *pw_list;
static uint64_t pw_bytes, pw_clock, pw_key[2];
static pthread_once_t pw_once = PTHREAD_ONCE_INIT;

static void pw_init(void)
{
    FILE *f = fopen("/dev/urandom", "rb");

    if (!f || fread(pw_key, sizeof(pw_key), 1, f) != 1) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        pw_key[0] = (uint64_t)ts.tv_nsec * UINT64_C(0x9e3779b97f4a7c15) ^ (uint64_t)ts.tv_sec;
        pw_key[1] = (uint64_t)(uintptr_t)&ts * UINT64_C(0xc2b2ae3d27d4eb4f) ^ (uint64_t)getpid();
    }
    if (f) {
        fclose(f);
    }
}

static uint64_t pw_mix(uint64_t h, uint64_t v)
{
    h ^= v * UINT64_C(0x87c37b91114253d5);
    h = (h << 31 | h >> 33) * UINT64_C(0x4cf5ad432745937f);
    return h;
}

static uint64_t pw_final(uint64_t h)
{
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    return h ^ (h >> 33);
}

typedef struct PwHash {
    const unsigned char *data;
    uint64_t len;
    uint64_t *chunk; /* one hash per PW_CHUNK bytes */
} PwHash;

static int pw_hash_chunks(const VnpuOpArgs *a, void *ctx, uint64_t begin, uint64_t end)
{
    const PwHash *ph = ctx;
    uint64_t c;

    (void)a;
    for (c = begin; c < end; c++) {
        const unsigned char *p = ph->data + c * PW_CHUNK;
        uint64_t n = ph->len - c * PW_CHUNK < PW_CHUNK ? ph->len - c * PW_CHUNK : PW_CHUNK, i, v[4];
        uint64_t h[4] = {pw_key[0] ^ c, pw_key[1] + c, pw_key[0] - c, pw_key[1] ^ ~c};

        for (i = 0; i + 32 <= n; i += 32) {
            memcpy(v, p + i, 32);
            h[0] = pw_mix(h[0], v[0]);
            h[1] = pw_mix(h[1], v[1]);
            h[2] = pw_mix(h[2], v[2]);
            h[3] = pw_mix(h[3], v[3]);
        }
        for (; i < n; i += 4) { /* lengths are multiples of 4 (f32) */
            uint32_t w;

            memcpy(&w, p + i, 4);
            h[0] = pw_mix(h[0], w);
        }
        ph->chunk[c] = pw_final(h[0] ^ pw_final(h[1]) ^ pw_final(h[2] + 1) ^ pw_final(h[3] + 2) ^ n);
    }
    return VNPU_CPL_OK;
}

/* The keyed hash of len bytes at data (independent of the thread count), or 0 with *ok = 0 if out of memory. */
static uint64_t pw_hash(const VnpuOpArgs *a, const void *data, uint64_t len, int *ok)
{
    uint64_t n = (len + PW_CHUNK - 1) / PW_CHUNK, h = pw_key[1] ^ len, c;
    PwHash ph = {data, len, malloc(n * sizeof(uint64_t))};

    *ok = ph.chunk && vnpu_ops_parallel(a, n, len / 4, pw_hash_chunks, &ph) == VNPU_CPL_OK;
    for (c = 0; *ok && c < n; c++) {
        h = pw_mix(h, ph.chunk[c]);
    }
    free(ph.chunk);
    return pw_final(h);
}

/* Frees unreferenced entries, least recently used first, until `need` more bytes fit in `max`. */
static void pw_evict(uint64_t need, uint64_t max)
{
    while (pw_bytes + need > max) {
        PackedWeights **pp, **victim = NULL;

        for (pp = &pw_list; *pp; pp = &(*pp)->next) {
            if (!(*pp)->refs && (!victim || (*pp)->last_use < (*victim)->last_use)) {
                victim = pp;
            }
        }
        if (!victim) {
            return;
        }
        {
            PackedWeights *v = *victim;

            *victim = v->next;
            pw_bytes -= v->bytes;
            free(v->buf);
            free(v);
        }
    }
}

/*
 * The weights of convolution `a` (plain layout wmd at w) in layout wq, converted on `stream` unless a kept copy
 * still matches: a referenced entry (release with pw_release after the primitive ran), or NULL on failure.
 */
static PackedWeights *pw_get(const VnpuOpArgs *a, dnnl_stream_t stream, const dnnl_memory_desc_t *wmd,
                             const VnpuTensor *w, const dnnl_memory_desc_t *wq)
{
    uint64_t addr = a->addr[1], len = w->count * 4, h, bytes = dnnl_memory_desc_get_size(wq);
    PackedWeights *e, **pp;
    int ok;

    pthread_once(&pw_once, pw_init);
    h = pw_hash(a, w->data, len, &ok);
    if (!ok) {
        return NULL;
    }
    pthread_mutex_lock(&pw_lock);
    for (pp = &pw_list; (e = *pp) != NULL;) {
        if (e->addr == addr && e->len == len && dnnl_memory_desc_equal(&e->md, wq)) {
            if (e->hash == h) {
                e->refs++;
                e->last_use = ++pw_clock;
                pthread_mutex_unlock(&pw_lock);
                return e;
            }
            if (!e->refs) { /* the weights at this address changed: the copy is dead */
                *pp = e->next;
                pw_bytes -= e->bytes;
                free(e->buf);
                free(e);
                continue;
            }
        }
        pp = &e->next;
    }
    pthread_mutex_unlock(&pw_lock);
    e = calloc(1, sizeof(*e));
    if (!e || !(e->buf = aligned_alloc(64, (bytes + 63) / 64 * 64)) ||
        reorder(stream, wmd, w->data, wq, e->buf) || dnnl_stream_wait(stream) != dnnl_success) {
        if (e) {
            free(e->buf);
        }
        free(e);
        return NULL;
    }
    e->addr = addr;
    e->len = len;
    e->hash = h;
    e->md = *wq;
    e->bytes = bytes;
    e->refs = 1;
    pthread_mutex_lock(&pw_lock);
    pw_evict(bytes, a->weights_cache_max);
    if (pw_bytes + bytes <= a->weights_cache_max) {
        e->cached = 1;
        e->last_use = ++pw_clock;
        e->next = pw_list;
        pw_list = e;
        pw_bytes += bytes;
    }
    pthread_mutex_unlock(&pw_lock);
    return e;
}

static void pw_release(PackedWeights *e)
{
    if (!e) {
        return;
    }
    pthread_mutex_lock(&pw_lock);
    e->refs--;
    if (!e->cached) {
        free(e->buf);
        free(e);
    }
    pthread_mutex_unlock(&pw_lock);
}

/* A (de)convolution primitive descriptor for these memory descriptors, or NULL. */
static dnnl_primitive_desc_t conv_pd(const VnpuOpArgs *a, int transpose, const dnnl_memory_desc_t *x,
                                     const dnnl_memory_desc_t *w, const dnnl_memory_desc_t *b,
                                     const dnnl_memory_desc_t *y, const dnnl_dim_t *strides, const dnnl_dim_t *dil,
                                     const dnnl_dim_t *pl, const dnnl_dim_t *pr, const_dnnl_primitive_attr_t attr)
{
    dnnl_primitive_desc_t pd = NULL;
    int ok;

    (void)a;
    if (transpose) {
        dnnl_deconvolution_desc_t d;

        ok = dnnl_dilated_deconvolution_forward_desc_init(&d, dnnl_forward_inference, dnnl_deconvolution_direct, x, w,
                                                          b, y, strides, dil, pl, pr) == dnnl_success &&
             dnnl_primitive_desc_create(&pd, &d, attr, engine_get(), NULL) == dnnl_success;
    } else {
        dnnl_convolution_desc_t d;

        ok = dnnl_dilated_convolution_forward_desc_init(&d, dnnl_forward_inference, dnnl_convolution_direct, x, w, b,
                                                        y, strides, dil, pl, pr) == dnnl_success &&
             dnnl_primitive_desc_create(&pd, &d, attr, engine_get(), NULL) == dnnl_success;
    }
    return ok ? pd : NULL;
}

/* oneDNN's "ref:" implementations are plain loops: slower than staying in plain layouts. */
static int is_reference_impl(const_dnnl_primitive_desc_t pd)
{
    const char *name = NULL;

    return dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name &&
           strncmp(name, "ref", 3) == 0;
}

/*
 * Convolutions run in channel-blocked layouts (nChw16c, or what oneDNN picks): the plain nchw tensors of the
 * program and the weights are reordered in and out around the primitive. The reorders cost a pass over
 * memory; the blocked kernels more than make up for it against nchw's im2col + GEMM path (2.4x here).
 */
static int conv_common(const VnpuOpArgs *a, int transpose)
{
    const struct vnpu_isa_conv *cv = &a->attr.conv;
    const VnpuTensor *x = IN(a, 0), *w = IN(a, 1), *y = OUT(a, 0);
    int bias = !!(cv->flags & VNPU_ISA_CONV_F_BIAS), res = !!(cv->flags & VNPU_ISA_CONV_F_RESIDUAL);
    dnnl_memory_desc_t xmd, wmd, bmd, ymd, xany, wany, yany, xblk, yblk;
    const dnnl_memory_desc_t *xq, *wq, *yq;
    dnnl_dims_t xd, wd, yd, bd, strides, dil, pl, pr;
    dnnl_primitive_attr_t attr;
    dnnl_stream_t stream = NULL;
    dnnl_primitive_desc_t pd = NULL, opd;
    dnnl_primitive_t prim = NULL;
    const PrimEntry *e = NULL;
    PackedWeights *pw = NULL;
    void *xb = NULL, *wb = NULL, *yb = NULL, *xs;
    uint64_t xbn = 0, wbn = 0, ybn = 0;
    DnnlCall c;
    int ok, i, after, ret = -1;
    uint64_t g = cv->group;
    struct {
        uint32_t tag, transpose, bias, res, act;
        float alpha, beta;
        dnnl_dims_t xd, wd, yd, strides, dil, pl, pr;
    } key;

    if (!engine_get() || x->count == 0 || y->count == 0) {
        return 1;
    }
    memset(&c, 0, sizeof(c));
    dims_of(x, xd);
    dims_of(y, yd);
    for (i = 0; i < 2; i++) {
        strides[i] = cv->stride[i];
        dil[i] = (dnnl_dim_t)cv->dilation[i] - 1; /* oneDNN counts dilation from 0 */
        pl[i] = cv->pad_begin[i];
        pr[i] = cv->pad_end[i];
    }
    if (transpose) {
        /* Our weights are [C, M/g, kh, kw] = oneDNN's iohw per group: g x (M/g) x (C/g) x kh x kw as "giohw". */
        wd[0] = (dnnl_dim_t)g;
        wd[1] = (dnnl_dim_t)(w->dims[1]);
        wd[2] = (dnnl_dim_t)(w->dims[0] / g);
        wd[3] = (dnnl_dim_t)w->dims[2];
        wd[4] = (dnnl_dim_t)w->dims[3];
        /* output_padding is extra rows at the end: oneDNN expresses it as less right padding. */
        for (i = 0; i < 2; i++) {
            pr[i] -= cv->output_padding[i];
        }
    } else {
        wd[0] = (dnnl_dim_t)g;
        wd[1] = (dnnl_dim_t)(w->dims[0] / g);
        wd[2] = (dnnl_dim_t)w->dims[1];
        wd[3] = (dnnl_dim_t)w->dims[2];
        wd[4] = (dnnl_dim_t)w->dims[3];
    }
    bd[0] = (dnnl_dim_t)y->dims[1];
    ok = dnnl_memory_desc_init_by_tag(&xmd, 4, xd, dnnl_f32, dnnl_nchw) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&ymd, 4, yd, dnnl_f32, dnnl_nchw) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&wmd, 5, wd, dnnl_f32, transpose ? dnnl_giohw : dnnl_goihw) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&bmd, 1, bd, dnnl_f32, dnnl_a) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&xany, 4, xd, dnnl_f32, dnnl_format_tag_any) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&yany, 4, yd, dnnl_f32, dnnl_format_tag_any) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&wany, 5, wd, dnnl_f32, dnnl_format_tag_any) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&xblk, 4, xd, dnnl_f32, dnnl_nChw16c) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&yblk, 4, yd, dnnl_f32, dnnl_nChw16c) == dnnl_success;
    if (!ok) {
        return -1;
    }
    memset(&key, 0, sizeof(key));
    key.tag = 0x434f4e56; /* "CONV" */
    key.transpose = (uint32_t)transpose;
    key.bias = (uint32_t)bias;
    key.res = (uint32_t)res;
    key.act = cv->act;
    key.alpha = cv->act_alpha;
    key.beta = cv->act_beta;
    memcpy(key.xd, xd, 4 * sizeof(xd[0]));
    memcpy(key.wd, wd, 5 * sizeof(wd[0]));
    memcpy(key.yd, yd, 4 * sizeof(yd[0]));
    memcpy(key.strides, strides, 2 * sizeof(strides[0]));
    memcpy(key.dil, dil, 2 * sizeof(dil[0]));
    memcpy(key.pl, pl, 2 * sizeof(pl[0]));
    memcpy(key.pr, pr, 2 * sizeof(pr[0]));
    e = prim_find(&key, sizeof(key));
    if (e) {
        after = e->aux;
        goto have_pd;
    }
    if (act_attr(cv->act, cv->act_alpha, cv->act_beta, res, &attr, &after)) {
        return -1;
    }
    /*
     * First choice: activations in nChw16c, whose conversion from and to nchw is cheap (a 16-row interleave)
     * and which oneDNN's direct AVX-512 kernels use; measured faster here than letting oneDNN pick (it picks
     * nhwc, whose conversion is a full transpose). If that only has a reference implementation for this
     * shape, let oneDNN choose every layout.
     */
    pd = conv_pd(a, transpose, x->dims[1] % 16 == 0 ? &xblk : &xany, &wany, bias ? &bmd : NULL,
                 y->dims[1] % 16 == 0 ? &yblk : &yany, strides, dil, pl, pr, attr);
    if (pd && is_reference_impl(pd)) {
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
    }
    if (!pd) {
        pd = conv_pd(a, transpose, &xany, &wany, bias ? &bmd : NULL, &yany, strides, dil, pl, pr, attr);
    }
    dnnl_primitive_attr_destroy(attr);
    if (prim_get(&key, sizeof(key), &pd, &prim, after, &e)) {
        return -1;
    }
have_pd:
    opd = e ? e->pd : pd;
    if (!opd) {
        return 1;
    }
    xq = dnnl_primitive_desc_query_md(opd, dnnl_query_src_md, 0);
    wq = dnnl_primitive_desc_query_md(opd, dnnl_query_weights_md, 0);
    yq = dnnl_primitive_desc_query_md(opd, dnnl_query_dst_md, 0);
    if (!xq || !wq || !yq || dnnl_stream_create(&stream, engine_get(), dnnl_stream_default_flags) != dnnl_success) {
        goto out;
    }
    /*
     * Inputs into the primitive's layouts (skipped when they already match, or when an earlier convolution of
     * this run left the input's blocked copy).
     */
    xs = a->shadows ? shadow_find(a->shadows, a->addr[0], x->count * 4, xq) : NULL;
    if (a->shadows) {
        a->shadows->pinned = xs; /* the allocations below may evict other copies, not this one */
    }
    if (a->weights_cache_max && !dnnl_memory_desc_equal(&wmd, wq)) {
        pw = pw_get(a, stream, &wmd, w, wq);
        if (!pw) {
            goto out;
        }
    }
    if ((!xs && layout_in(a, stream, &xmd, x->data, xq, &xb, &xbn)) ||
        (!pw && layout_in(a, stream, &wmd, w->data, wq, &wb, &wbn)) || layout_buffer(a, &ymd, yq, &yb, &ybn)) {
        goto out;
    }
    /* The sum post-op adds to what the destination holds: the residual, in the destination's layout. */
    if (res) {
        const VnpuTensor *r = IN(a, a->num_inputs - 1);
        void *rs = a->shadows ? shadow_find(a->shadows, a->addr[a->num_inputs - 1], r->count * 4, yq) : NULL;

        if (!yb) {
            memcpy(y->data, r->data, y->count * 4); /* checked: Y does not overlap R */
        } else if (rs) {
            memcpy(yb, rs, dnnl_memory_desc_get_size(yq));
        } else if (reorder(stream, &ymd, r->data, yq, yb)) {
            goto out;
        }
    }
    ok = call_arg(&c, DNNL_ARG_SRC, xq, xs ? xs : xb ? xb : x->data) == 0 &&
         call_arg(&c, DNNL_ARG_WEIGHTS, wq, pw ? pw->buf : wb ? wb : w->data) == 0 &&
         call_arg(&c, DNNL_ARG_DST, yq, yb ? yb : y->data) == 0 &&
         (!bias || call_arg(&c, DNNL_ARG_BIAS, &bmd, IN(a, 2)->data) == 0);
    if (ok) {
        ret = call_run_to_plain(&c, e ? e->prim : prim, stream, yq, yb, &ymd, y->data);
    }
    /* The blocked output stays for a later convolution (an activation applied after would make it stale). */
    if (ret == VNPU_CPL_OK && yb && !after && a->shadows &&
        shadow_add(a->shadows, a, a->addr[a->num_inputs], y->count * 4, yq, yb, ybn) == 0) {
        yb = NULL;
    }
out:
    if (a->shadows) {
        a->shadows->pinned = NULL;
    }
    call_release(&c, stream);
    buf_free(a, xb, xbn);
    buf_free(a, wb, wbn);
    buf_free(a, yb, ybn);
    pw_release(pw);
    prim_release(pd, prim);
    return act_apply(ret, after, a, cv->act, cv->act_alpha, cv->act_beta);
}

int vnpu_fast_conv(const VnpuOpArgs *a)
{
    return conv_common(a, 0);
}

int vnpu_fast_conv_transpose(const VnpuOpArgs *a)
{
    const struct vnpu_isa_conv *cv = &a->attr.conv;

    /* output_padding beyond the right padding would need negative oneDNN padding. */
    if (cv->output_padding[0] > cv->pad_end[0] || cv->output_padding[1] > cv->pad_end[1]) {
        return 1;
    }
    return conv_common(a, 1);
}

/*
 * Pooling: oneDNN's nchw pooling is a simple loop; its jit kernels want channel-blocked data. Large inputs
 * are reordered to nChw16c (nChw8c when C is not a multiple of 16) and back; small ones (e.g. a global
 * average pool's 1x1 output) stay plain, where the reorders would cost more than they save.
 */
int vnpu_fast_pool(const VnpuOpArgs *a)
{
    const struct vnpu_isa_pool *p = &a->attr.pool;
    const VnpuTensor *x = IN(a, 0), *y = OUT(a, 0);
    dnnl_memory_desc_t xmd, ymd, xblk, yany;
    const dnnl_memory_desc_t *yq;
    dnnl_dims_t xd, yd, strides, kernel, dil, pl, pr;
    dnnl_pooling_v2_desc_t d;
    dnnl_alg_kind_t alg;
    dnnl_primitive_desc_t pd = NULL, opd;
    dnnl_primitive_t prim = NULL;
    const PrimEntry *e = NULL;
    dnnl_stream_t stream = NULL;
    void *xb = NULL, *yb = NULL;
    uint64_t xbn = 0, ybn = 0;
    DnnlCall c;
    int ok, i, blocked, ret = -1;
    struct {
        uint32_t tag, alg, blocked, rsvd;
        dnnl_dims_t xd, yd;
        dnnl_dim_t win[2][5];
    } key;

    if (!engine_get() || x->count == 0 || y->count == 0) {
        return 1;
    }
    memset(&c, 0, sizeof(c));
    dims_of(x, xd);
    dims_of(y, yd);
    for (i = 0; i < 2; i++) {
        uint64_t span = (uint64_t)p->dilation[i] * (p->kernel[i] - 1) + 1;
        /* Right padding that makes oneDNN's floor formula produce our output size (ceil_mode windows). */
        int64_t need = (int64_t)((y->dims[2 + i] - 1) * p->stride[i] + span) - (int64_t)x->dims[2 + i] -
                       (int64_t)p->pad_begin[i];

        strides[i] = p->stride[i];
        kernel[i] = p->kernel[i];
        dil[i] = (dnnl_dim_t)p->dilation[i] - 1;
        pl[i] = p->pad_begin[i];
        pr[i] = need > (int64_t)p->pad_end[i] ? need : (int64_t)p->pad_end[i];
        /* Average with padding counted: oneDNN would count the extra ceil padding too; ONNX does not. */
        if (need > (int64_t)p->pad_end[i] && (p->flags & VNPU_ISA_POOL_F_COUNT_PAD)) {
            return 1;
        }
        if (pr[i] >= kernel[i] * (dil[i] + 1) || pl[i] >= kernel[i] * (dil[i] + 1)) {
            return 1;
        }
    }
    alg = p->kind == VNPU_ISA_POOL_MAX ? dnnl_pooling_max
          : (p->flags & VNPU_ISA_POOL_F_COUNT_PAD) ? dnnl_pooling_avg_include_padding
                                                   : dnnl_pooling_avg_exclude_padding;
    blocked = y->count >= 4096;
    ok = dnnl_memory_desc_init_by_tag(&xmd, 4, xd, dnnl_f32, dnnl_nchw) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&ymd, 4, yd, dnnl_f32, dnnl_nchw) == dnnl_success &&
         dnnl_memory_desc_init_by_tag(&xblk, 4, xd, dnnl_f32,
                                      !blocked ? dnnl_nchw : x->dims[1] % 16 == 0 ? dnnl_nChw16c : dnnl_nChw8c) ==
             dnnl_success &&
         dnnl_memory_desc_init_by_tag(&yany, 4, yd, dnnl_f32, blocked ? dnnl_format_tag_any : dnnl_nchw) ==
             dnnl_success;
    if (!ok) {
        return 1;
    }
    memset(&key, 0, sizeof(key));
    key.tag = 0x504f4f4c; /* "POOL" */
    key.alg = (uint32_t)alg;
    key.blocked = (uint32_t)blocked;
    memcpy(key.xd, xd, 4 * sizeof(xd[0]));
    memcpy(key.yd, yd, 4 * sizeof(yd[0]));
    for (i = 0; i < 2; i++) {
        key.win[i][0] = strides[i];
        key.win[i][1] = kernel[i];
        key.win[i][2] = dil[i];
        key.win[i][3] = pl[i];
        key.win[i][4] = pr[i];
    }
    e = prim_find(&key, sizeof(key));
    if (!e) {
        if (dnnl_pooling_v2_forward_desc_init(&d, dnnl_forward_inference, alg, &xblk, &yany, strides, kernel, dil,
                                              pl, pr) != dnnl_success ||
            dnnl_primitive_desc_create(&pd, &d, NULL, engine_get(), NULL) != dnnl_success) {
            pd = NULL;
        }
        if (prim_get(&key, sizeof(key), &pd, &prim, 0, &e)) {
            return -1;
        }
    }
    opd = e ? e->pd : pd;
    if (!opd) {
        return 1;
    }
    yq = dnnl_primitive_desc_query_md(opd, dnnl_query_dst_md, 0);
    if (!yq || dnnl_stream_create(&stream, engine_get(), dnnl_stream_default_flags) != dnnl_success) {
        goto out;
    }
    if (layout_in(a, stream, &xmd, x->data, &xblk, &xb, &xbn) || layout_buffer(a, &ymd, yq, &yb, &ybn)) {
        goto out;
    }
    ok = call_arg(&c, DNNL_ARG_SRC, &xblk, xb ? xb : x->data) == 0 &&
         call_arg(&c, DNNL_ARG_DST, yq, yb ? yb : y->data) == 0;
    if (ok) {
        ret = call_run_to_plain(&c, e ? e->prim : prim, stream, yq, yb, &ymd, y->data);
    }
out:
    call_release(&c, stream);
    buf_free(a, xb, xbn);
    buf_free(a, yb, ybn);
    prim_release(pd, prim);
    return ret;
}

int vnpu_fast_matmul(const VnpuOpArgs *a)
{
    const struct vnpu_isa_matmul *mm = &a->attr.matmul;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    int bias = !!(mm->flags & VNPU_ISA_MATMUL_F_BIAS);
    dnnl_memory_desc_t amd, bmd, cmd, ymd;
    dnnl_dims_t ad, bd, cd, yd, as, bs, cs;
    dnnl_matmul_desc_t d;
    unsigned r = Y->rank, i;
    DnnlCall c;
    int ok, after, rc;
    struct {
        uint32_t tag, rank, bias, act;
        float alpha, beta;
        dnnl_dims_t ad, as, bd, bs, cd, cs, yd;
    } key;

    if (!engine_get() || Y->count == 0 || A->count == 0 || B->count == 0 || r > 6 || mm->alpha != 1.0f ||
        (bias && mm->beta != 1.0f)) {
        return 1;
    }
    memset(&c, 0, sizeof(c));
    /* oneDNN wants equal ranks: left-pad batch dims with 1 (broadcast). Strides express transposes. */
    dims_of_rank(A, r, ad);
    dims_of_rank(B, r, bd);
    dims_of(Y, yd);
    for (i = 0; i < r; i++) {
        cd[i] = 1;
    }
    matmul_operand(ad, as, r, !!(mm->flags & VNPU_ISA_MATMUL_F_TRANS_A));
    matmul_operand(bd, bs, r, !!(mm->flags & VNPU_ISA_MATMUL_F_TRANS_B));
    if (bias) {
        const VnpuTensor *C = IN(a, 2);
        int j;
        dnnl_dim_t s = 1;

        cd[r - 1] = C->rank >= 1 ? (dnnl_dim_t)C->dims[C->rank - 1] : 1;
        cd[r - 2] = C->rank == 2 ? (dnnl_dim_t)C->dims[0] : 1;
        for (j = (int)r - 1; j >= 0; j--) {
            cs[j] = s;
            s *= cd[j];
        }
    }
    ok = dnnl_memory_desc_init_by_strides(&amd, (int)r, ad, dnnl_f32, as) == dnnl_success &&
         dnnl_memory_desc_init_by_strides(&bmd, (int)r, bd, dnnl_f32, bs) == dnnl_success &&
         (!bias || dnnl_memory_desc_init_by_strides(&cmd, (int)r, cd, dnnl_f32, cs) == dnnl_success) &&
         dnnl_memory_desc_init_by_tag(&ymd, (int)r, yd, dnnl_f32,
                                      r == 2 ? dnnl_ab : r == 3 ? dnnl_abc : r == 4 ? dnnl_abcd
                                                       : r == 5 ? dnnl_abcde : dnnl_abcdef) == dnnl_success;
    if (!ok) {
        return -1;
    }
    memset(&key, 0, sizeof(key));
    key.tag = 0x4d4d554c; /* "MMUL" */
    key.rank = r;
    key.bias = (uint32_t)bias;
    key.act = mm->act;
    key.alpha = mm->act_alpha;
    key.beta = mm->act_beta;
    memcpy(key.ad, ad, r * sizeof(ad[0]));
    memcpy(key.as, as, r * sizeof(as[0]));
    memcpy(key.bd, bd, r * sizeof(bd[0]));
    memcpy(key.bs, bs, r * sizeof(bs[0]));
    memcpy(key.yd, yd, r * sizeof(yd[0]));
    if (bias) {
        memcpy(key.cd, cd, r * sizeof(cd[0]));
        memcpy(key.cs, cs, r * sizeof(cs[0]));
    }
    memset(&d, 0, sizeof(d));
    rc = call_cached(&c, &key, sizeof(key),
                     dnnl_matmul_desc_init(&d, &amd, &bmd, bias ? &cmd : NULL, &ymd) == dnnl_success, &d, mm->act,
                     mm->act_alpha, mm->act_beta, &after);
    if (rc) {
        return rc;
    }
    ok = call_arg(&c, DNNL_ARG_SRC, &amd, A->data) == 0 && call_arg(&c, DNNL_ARG_WEIGHTS, &bmd, B->data) == 0 &&
         call_arg(&c, DNNL_ARG_DST, &ymd, Y->data) == 0 &&
         (!bias || call_arg(&c, DNNL_ARG_BIAS, &cmd, IN(a, 2)->data) == 0);
    return act_apply(call_run(&c, ok), after, a, mm->act, mm->act_alpha, mm->act_beta);
}

/*
 * Broadcast arithmetic on large tensors (residual adds, SiLU products, per-channel scaling): oneDNN's binary
 * primitive is vectorised and multi-threaded. oneDNN wants src0 with the output's shape; commutative ops
 * swap operands for that, others fall back to the reference kernel when A is the broadcast one.
 */
int vnpu_fast_binary(const VnpuOpArgs *a)
{
    const struct vnpu_isa_binary *bn = &a->attr.binary;
    const VnpuTensor *A = IN(a, 0), *B = IN(a, 1), *Y = OUT(a, 0);
    dnnl_memory_desc_t amd, bmd, ymd;
    dnnl_dims_t ad, bd, yd;
    dnnl_binary_desc_t d;
    dnnl_alg_kind_t alg;
    unsigned r = Y->rank;
    int commutative, ok, after, rc;
    DnnlCall c;
    struct {
        uint32_t tag, alg, rank, act;
        float alpha, beta;
        dnnl_dims_t ad, bd, yd;
    } key;

    if (!engine_get() || Y->count < 65536 || r < 1 || r > 6) {
        return 1; /* small: a primitive costs more than the loop */
    }
    switch (bn->kind) {
    case VNPU_ISA_BIN_ADD:
        alg = dnnl_binary_add;
        commutative = 1;
        break;
    case VNPU_ISA_BIN_MUL:
        alg = dnnl_binary_mul;
        commutative = 1;
        break;
    case VNPU_ISA_BIN_SUB:
        alg = dnnl_binary_sub;
        commutative = 0;
        break;
    case VNPU_ISA_BIN_DIV:
        alg = dnnl_binary_div;
        commutative = 0;
        break;
    default:
        return 1;
    }
    if (A->count != Y->count) {
        if (!commutative || B->count != Y->count) {
            return 1;
        }
        A = IN(a, 1);
        B = IN(a, 0);
    }
    memset(&c, 0, sizeof(c));
    dims_of_rank(A, r, ad);
    dims_of_rank(B, r, bd);
    dims_of(Y, yd);
    {
        static const dnnl_format_tag_t tags[] = {dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde, dnnl_abcdef};

        ok = dnnl_memory_desc_init_by_tag(&amd, (int)r, ad, dnnl_f32, tags[r - 1]) == dnnl_success &&
             dnnl_memory_desc_init_by_tag(&bmd, (int)r, bd, dnnl_f32, tags[r - 1]) == dnnl_success &&
             dnnl_memory_desc_init_by_tag(&ymd, (int)r, yd, dnnl_f32, tags[r - 1]) == dnnl_success;
    }
    if (!ok) {
        return -1;
    }
    memset(&key, 0, sizeof(key));
    key.tag = 0x42494e41; /* "BINA" */
    key.alg = (uint32_t)alg;
    key.rank = r;
    key.act = bn->act;
    key.alpha = bn->act_alpha;
    key.beta = bn->act_beta;
    memcpy(key.ad, ad, r * sizeof(ad[0]));
    memcpy(key.bd, bd, r * sizeof(bd[0]));
    memcpy(key.yd, yd, r * sizeof(yd[0]));
    memset(&d, 0, sizeof(d));
    rc = call_cached(&c, &key, sizeof(key), dnnl_binary_desc_init(&d, alg, &amd, &bmd, &ymd) == dnnl_success, &d,
                     bn->act, bn->act_alpha, bn->act_beta, &after);
    if (rc) {
        return rc;
    }
    ok = call_arg(&c, DNNL_ARG_SRC_0, &amd, A->data) == 0 && call_arg(&c, DNNL_ARG_SRC_1, &bmd, B->data) == 0 &&
         call_arg(&c, DNNL_ARG_DST, &ymd, Y->data) == 0;
    return act_apply(call_run(&c, ok), after, a, bn->act, bn->act_alpha, bn->act_beta);
}
