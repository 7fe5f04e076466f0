/* roofline.c - read-bandwidth and FMA-peak probes shared by the benchmarks. */
#include "engine/roofline.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu_internal.h"
#include "engine/lm.h"

#define LM_BENCH_AVX512 __attribute__((target("avx512f")))

struct read_job {
  const float *buf; /* [n] */
  size_t n;
  float *sums; /* [n_threads]: keeps the loads from being optimized away */
};

LM_BENCH_AVX512 static void read_avx512(void *arg, int tid, int n_threads) {
  struct read_job *j = arg;
  int64_t b, e;
  lm_pool_split((int64_t)j->n, 64, tid, n_threads, &b, &e);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t i = b; i < e; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_load_ps(j->buf + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(j->buf + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(j->buf + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(j->buf + i + 48));
  }
  j->sums[tid] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

double lm_bench_read_gbs(lm_pool *pool, size_t bytes) {
  /* whole 256-byte steps of the loop */
  struct read_job j = {.n = bytes / 256 * 64};
  float *buf = j.n ? aligned_alloc(64, j.n * sizeof(float)) : NULL;
  float *sums = calloc((size_t)lm_pool_size(pool), sizeof(float));
  double best = 0;
  if (!buf || !sums) goto out;
  bytes = j.n * sizeof(float);
  memset(buf, 1, bytes);
  j.buf = buf;
  j.sums = sums;
  for (int rep = 0; rep < LM_BENCH_READ_PASSES; rep++) {
    double t = lm_now_s();
    lm_pool_run(pool, read_avx512, &j);
    double gbs = (double)bytes / (lm_now_s() - t) / 1e9;
    if (gbs > best) best = gbs;
  }
out:
  free(buf);
  free(sums);
  return best;
}

#define LM_BENCH_FMA_CHAINS 10

struct fma_job {
  long iters;
  float *sums; /* [n_threads] */
};

/* Ten independent chains hide the FMA latency on two FMA ports. */
LM_BENCH_AVX512 static void fma_avx512(void *arg, int tid, int n_threads) {
  struct fma_job *j = arg;
  (void)n_threads;
  __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  __m512 a0 = _mm512_set1_ps((float)tid), a1 = a0, a2 = a0, a3 = a0, a4 = a0;
  __m512 a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
  for (long i = 0; i < j->iters; i++) {
    a0 = _mm512_fmadd_ps(a0, m, c);
    a1 = _mm512_fmadd_ps(a1, m, c);
    a2 = _mm512_fmadd_ps(a2, m, c);
    a3 = _mm512_fmadd_ps(a3, m, c);
    a4 = _mm512_fmadd_ps(a4, m, c);
    a5 = _mm512_fmadd_ps(a5, m, c);
    a6 = _mm512_fmadd_ps(a6, m, c);
    a7 = _mm512_fmadd_ps(a7, m, c);
    a8 = _mm512_fmadd_ps(a8, m, c);
    a9 = _mm512_fmadd_ps(a9, m, c);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  j->sums[tid] = _mm512_reduce_add_ps(_mm512_add_ps(s, _mm512_add_ps(a8, a9)));
}

/* The same for vdpbf16ps: 32 multiply-adds of bf16 pairs per instruction,
 * into f32 lanes. */
__attribute__((target("avx512f,avx512bf16"))) static void dot_avx512(void *arg, int tid,
                                                                     int n_threads) {
  struct fma_job *j = arg;
  __m512 acc[LM_BENCH_FMA_CHAINS], s = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3400);
  (void)n_threads;
  for (int c = 0; c < LM_BENCH_FMA_CHAINS; c++)
    acc[c] = _mm512_set1_ps((float)tid);
  for (long i = 0; i < j->iters; i++)
#pragma GCC unroll 10
    for (int c = 0; c < LM_BENCH_FMA_CHAINS; c++)
      acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  for (int c = 0; c < LM_BENCH_FMA_CHAINS; c++)
    s = _mm512_add_ps(s, acc[c]);
  j->sums[tid] = _mm512_reduce_add_ps(s);
}

/* The same for AMX tiles: four independent 16 x 16 accumulators, each
 * taking a 16 x 32 by 32 x 16 bf16 product an iteration. */
LM_AMX_TARGET static void amx_tiles(void *arg, int tid, int n_threads) {
  struct fma_job *j = arg;
  struct lm_amx_cfg have, c;
  uint16_t ab[16 * 32] __attribute__((aligned(64)));
  float out[16 * 16] __attribute__((aligned(64)));
  (void)n_threads;
  memset(&have, 0, sizeof(have));
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 8; t++) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  for (int i = 0; i < 16 * 32; i++)
    ab[i] = 0x3400;
  lm_amx_load_cfg(&have, &c);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  _tile_loadd(6, ab, 64);
  _tile_loadd(7, ab, 64);
  for (long i = 0; i < j->iters; i++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  j->sums[tid] = out[0];
}

/* Best GFLOP/s of LM_BENCH_FMA_PASSES runs of fn, flops_per_iter a
 * thread. */
static double probe_gflops(lm_pool *pool, lm_pool_fn fn, double flops_per_iter, long iters) {
  struct fma_job j = {.iters = iters};
  double best = 0;
  j.sums = calloc((size_t)lm_pool_size(pool), sizeof(float));
  if (!j.sums) return 0;
  for (int rep = 0; rep < LM_BENCH_FMA_PASSES; rep++) {
    double t = lm_now_s();
    lm_pool_run(pool, fn, &j);
    double flops = flops_per_iter * (double)j.iters * lm_pool_size(pool);
    double g = flops / (lm_now_s() - t) / 1e9;
    if (g > best) best = g;
  }
  free(j.sums);
  return best;
}

double lm_bench_fma_gflops(lm_pool *pool) {
  return probe_gflops(pool, fma_avx512, 2.0 * 16 * LM_BENCH_FMA_CHAINS, 20 * 1000 * 1000);
}

double lm_bench_bf16dot_gflops(lm_pool *pool) {
  if (!__builtin_cpu_supports("avx512bf16")) return 0;
  return probe_gflops(pool, dot_avx512, 2.0 * 32 * LM_BENCH_FMA_CHAINS, 20 * 1000 * 1000);
}

double lm_bench_amx_gflops(lm_pool *pool) {
  if (!lm_cpu_has_amx()) return 0;
  return probe_gflops(pool, amx_tiles, 4 * 2.0 * 16 * 16 * 32, 2 * 1000 * 1000);
}
