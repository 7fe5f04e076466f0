/* roofline.h - the machine's own limits, measured for the benchmarks to
 * compare against: read bandwidth and FMA peak (and the bf16 dot-product
 * and AMX tile peaks), on the pool's threads.
 *
 * The probes use AVX-512: call them only when
 * __builtin_cpu_supports("avx512f"). */
#ifndef LM_ENGINE_ROOFLINE_H
#define LM_ENGINE_ROOFLINE_H

#include <stddef.h>

#include "engine/threadpool.h"

#define LM_BENCH_READ_PASSES 6
#define LM_BENCH_FMA_PASSES  3

/* Read bandwidth in GB/s: best of LM_BENCH_READ_PASSES read-only passes
 * over a buffer of `bytes` (make it >= 1 GiB so no cache holds it); 0 when
 * the buffer cannot be allocated. */
double lm_bench_read_gbs(lm_pool *pool, size_t bytes);

/* FMA peak in GFLOP/s: best of LM_BENCH_FMA_PASSES runs of independent
 * FMA chains held in registers. */
double lm_bench_fma_gflops(lm_pool *pool);

/* The same for AVX512_BF16 dot products (vdpbf16ps: 32 multiply-adds an
 * instruction); 0 on a CPU without them. */
double lm_bench_bf16dot_gflops(lm_pool *pool);

/* The same for AMX bf16 tiles (tdpbf16ps: 8192 multiply-adds an
 * instruction); 0 where the process may not use them. */
double lm_bench_amx_gflops(lm_pool *pool);

#endif
