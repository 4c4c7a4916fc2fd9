/* SPDX-License-Identifier: MIT */
/*
 * Splitting a kernel's independent work items over threads: the OpenMP team oneDNN's kernels already use (the
 * engine's libdnnl is built on libgomp), so the non-oneDNN kernels run on as many threads as the convolutions
 * (OMP_NUM_THREADS, or every CPU) and no second pool competes with oneDNN's. Each thread gets one contiguous
 * range of items, so every output element is computed by exactly the code and in exactly the order of the
 * single-threaded loop: results are bit-identical for any thread count. Built without OpenMP (-fopenmp), the
 * ranges run one after the other on the calling thread.
 */
#include <stdatomic.h>

/* ThreadSanitizer cannot see libgomp's (uninstrumented) barriers: its builds run the ranges serially. */
#if defined(_OPENMP) && defined(__SANITIZE_THREAD__)
#undef _OPENMP
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "vnpu_ops.h"

/* Below this many elements touched, starting a parallel region costs more than it saves. */
#define VNPU_PARALLEL_MIN_ELEMS 32768

int vnpu_ops_threads(void)
{
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

int vnpu_ops_parallel(const VnpuOpArgs *a, uint64_t n, uint64_t elems, VnpuRangeFn *fn, void *ctx)
{
    int nt = vnpu_ops_threads();

    if (nt <= 1 || n < 2 || elems < VNPU_PARALLEL_MIN_ELEMS) {
        return n ? fn(a, ctx, 0, n) : VNPU_CPL_OK;
    }
    if ((uint64_t)nt > n) {
        nt = (int)n;
    }
#ifdef _OPENMP
    {
        atomic_int ret = VNPU_CPL_OK;

#pragma omp parallel num_threads(nt)
        {
            uint64_t t = (uint64_t)omp_get_thread_num(), T = (uint64_t)omp_get_num_threads();
            uint64_t b = (uint64_t)((__uint128_t)n * t / T), e = (uint64_t)((__uint128_t)n * (t + 1) / T);
            int r = b < e ? fn(a, ctx, b, e) : VNPU_CPL_OK;

            if (r != VNPU_CPL_OK) {
                int expect = VNPU_CPL_OK;

                /* The first failure wins; an allocation failure (-1) outranks a cancellation. */
                if (!atomic_compare_exchange_strong(&ret, &expect, r) && r == -1) {
                    atomic_store(&ret, -1);
                }
            }
        }
        return atomic_load(&ret);
    }
#else
    return fn(a, ctx, 0, n);
#endif
}
