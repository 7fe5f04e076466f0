/* backend_bench.c - CPU backend throughput: read bandwidth, GEMV on
 * Qwen3-0.6B-shaped bf16 weights (>= 1 GB, not cache resident), GEMM at
 * M = 512, FMA peak, decode and prefill attention, pool dispatch cost.
 * Prints numbers; not a test. Usage: backend_bench [n_threads]
 * [attention|gemm|decode] [consecutive]: "attention" runs prefill
 * attention alone, repeated (for a profiler); "gemm" only times the 36
 * layers' matmuls from memory at M = 1 to 128 rows (gemm_rows); "decode"
 * only times the attention of 32 decodes of 1152 tokens, their blocks
 * shuffled, from memory (bench_decode_batch); "consecutive"
 * gives each sequence its blocks in order, one after another in the pool,
 * as a fresh pool hands them out (by default they lie in reverse, as after
 * churn). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/cpu_internal.h"
#include "tests/roofline.h"

static const struct lm_backend_ops *ops = &lm_backend_cpu_ops;
static int consecutive; /* the attention's blocks in order instead of in reverse */

static void noop_body(void *arg, int tid, int nt) {
  (void)arg;
  (void)tid;
  (void)nt;
}

/* ---- weights ----------------------------------------------------------- */

static struct lm_tensor make_bf16(int64_t n, int64_t k, uint32_t seed) {
  struct lm_tensor t = {.dtype = LM_DTYPE_BF16, .n_dims = 2, .shape = {n, k}};
  size_t cnt = (size_t)n * k;
  uint16_t *d = NULL;
  if (posix_memalign((void **)&d, 64, cnt * 2) != 0) abort();
  for (size_t i = 0; i < cnt; i++) {
    seed = seed * 1664525u + 1013904223u;
    /* values in about [-0.06, 0.06]: normal numbers like a real checkpoint */
    d[i] = (uint16_t)(0x3c00u | ((seed >> 16) & 0x83ffu));
  }
  t.data = d;
  return t;
}

/* ---- attention --------------------------------------------------------- */

/* A KV cache of Qwen3-0.6B's heads (8 kv heads, head_dim 128, blocks of
 * 16) in n_layers layers of n_blocks blocks, filled with values in [0,
 * 1): its shape into *shape; NULL (said on stderr) when it cannot. */
static void *bench_kv(void *st, int n_layers, int n_blocks, enum lm_dtype dt,
                      struct lm_kv_shape *shape) {
  *shape = (struct lm_kv_shape){.n_layers = n_layers,
                                .n_blocks = n_blocks,
                                .block_size = 16,
                                .n_kv_heads = 8,
                                .head_dim = 128,
                                .dtype = dt};
  char err[LM_ERR_LEN];
  void *kv;
  if (ops->kv_create(st, shape, &kv, err) != 0) {
    fprintf(stderr, "kv_create: %s\n", err);
    return NULL;
  }
  size_t n = (size_t)2 * n_layers * n_blocks * 8 * 16 * 128;
  for (size_t i = 0; i < n; i++) {
    float v = (float)((i * 2654435761u) % 1000) / 1000.0f;
    if (dt == LM_DTYPE_BF16)
      ((uint16_t *)kv)[i] = lm_f32_to_bf16(v);
    else
      ((float *)kv)[i] = v;
  }
  return kv;
}

/* The best of reps passes of the batch's attention over every layer of
 * the KV, in seconds a layer (Qwen3-0.6B's 16 query heads). */
static double time_attention(void *st, float *out, const float *q, const void *kv,
                             const struct lm_kv_shape *shape, const struct lm_batch *b, int reps) {
  double best = 1e9;
  for (int r = 0; r < reps; r++) {
    double t0 = lm_now_s();
    for (int l = 0; l < shape->n_layers; l++)
      ops->attention(st, out, q, kv, shape, l, b, 16, 0.088f);
    double dt = (lm_now_s() - t0) / shape->n_layers;
    if (dt < best) best = dt;
  }
  return best;
}

/* Attention of one sequence's last n_q tokens over a context of ctx
 * tokens (Qwen3-0.6B: 16 q / 8 kv heads, head_dim 128, blocks of 16 laid
 * out in reverse in the pool, or in order with "consecutive"), in
 * n_layers layers one after the other: with 1 the KV stays in cache
 * between repeats, with 28 a deep context's KV (940 MB at 8k) comes from
 * memory as in a real step. One query token is decode, bound by the KV
 * bytes; more is a prefill chunk, bound by its FLOPs. q and out each hold
 * n_q * 16 * 128 floats. */
static int bench_attention(void *st, float *out, const float *q, int ctx, int n_q, int n_layers,
                           enum lm_dtype dt_kv, double peak, int reps) {
  const int bs = 16, nh = 16, nkv = 8, hd = 128, nb = ctx / bs;
  struct lm_kv_shape shape;
  void *kv = bench_kv(st, n_layers, nb, dt_kv, &shape);
  if (!kv) return 1;
  size_t n = (size_t)2 * n_layers * nb * nkv * bs * hd, esz = lm_dtype_size(dt_kv);
  int32_t *table = malloc((size_t)nb * 4), *pos = malloc((size_t)n_q * 4), qs[2] = {0, n_q},
          cl = ctx;
  for (int i = 0; i < nb; i++)
    table[i] = consecutive ? i : nb - 1 - i;
  double flops = 0;
  for (int t = 0; t < n_q; t++) {
    pos[t] = ctx - n_q + t;
    flops += 4.0 * nh * hd * (pos[t] + 1);
  }
  struct lm_batch b = {.n_tokens = n_q,
                       .n_seqs = 1,
                       .token_ids = pos,
                       .positions = pos,
                       .slot_mapping = pos,
                       .q_start = qs,
                       .ctx_len = &cl,
                       .block_tables = table,
                       .max_blocks = nb};
  double best = time_attention(st, out, q, kv, &shape, &b, reps);
  if (n_q == 1)
    printf("(4) decode attention ctx=%d (16 q / 8 kv heads, hd 128, %s KV %.1f MB a layer%s): "
           "%.1f us per layer, %.1f GB/s of KV, x28 layers = %.2f ms\n",
           ctx, dt_kv == LM_DTYPE_BF16 ? "bf16" : "f32", n * esz / n_layers / 1e6,
           n_layers > 1 ? ", 28 layers, from memory" : "", best * 1e6,
           n * esz / n_layers / best / 1e9, best * 28 * 1e3);
  else
    printf(
        "(5) prefill attention, %d tokens at positions %d..%d (%s KV, %s): %.0f GFLOP/s = %.0f%% "
        "of FMA peak, x28 layers = %.1f ms\n",
        n_q, ctx - n_q, ctx - 1, dt_kv == LM_DTYPE_BF16 ? "bf16" : "f32",
        n_layers > 1 ? "28 layers, from memory" : "cache resident", flops / best / 1e9,
        100 * flops / best / 1e9 / peak, best * 28 * 1e3);
  free(pos);
  free(table);
  ops->kv_free(st, kv);
  return 0;
}

/* n_seqs decodes of ctx tokens each, one query token a sequence, their
 * blocks shuffled over a pool of n_layers layers (not cache resident), as
 * a decode step at that batch reads them. Prints GB/s of KV. */
static int bench_decode_batch(void *st, int n_seqs, int ctx, int n_layers, int reps) {
  const int bs = 16, nh = 16, nkv = 8, hd = 128, per = (ctx + bs - 1) / bs, nb = n_seqs * per;
  struct lm_kv_shape shape;
  void *kv = bench_kv(st, n_layers, nb, LM_DTYPE_BF16, &shape);
  if (!kv) return 1;
  int32_t *table = malloc((size_t)nb * 4), *pos = malloc((size_t)n_seqs * 4),
          *qs = malloc(((size_t)n_seqs + 1) * 4), *cl = malloc((size_t)n_seqs * 4);
  float *q = calloc((size_t)n_seqs * nh * hd, 4), *out = calloc((size_t)n_seqs * nh * hd, 4);
  uint32_t seed = 7;
  for (int i = 0; i < nb; i++)
    table[i] = i;
  for (int i = nb - 1; i > 0; i--) {
    seed = seed * 1664525u + 1013904223u;
    int k = (int)(seed % (uint32_t)(i + 1)), t = table[i];
    table[i] = table[k];
    table[k] = t;
  }
  for (int s = 0; s < n_seqs; s++) {
    pos[s] = ctx - 1;
    qs[s] = s;
    cl[s] = ctx;
  }
  qs[n_seqs] = n_seqs;
  for (size_t i = 0; i < (size_t)n_seqs * nh * hd; i++)
    q[i] = 0.01f * (float)(i % 7);
  struct lm_batch b = {.n_tokens = n_seqs,
                       .n_seqs = n_seqs,
                       .token_ids = pos,
                       .positions = pos,
                       .slot_mapping = pos,
                       .q_start = qs,
                       .ctx_len = cl,
                       .block_tables = table,
                       .max_blocks = per};
  double best = time_attention(st, out, q, kv, &shape, &b, reps);
  double bytes = (double)n_seqs * ctx * nkv * hd * 2 * 2;
  printf("(6) decode attention, %d sequences of %d tokens (bf16 KV %.0f MB a layer, %d layers, "
         "blocks shuffled): %.2f ms a layer, %.1f GB/s of KV\n",
         n_seqs, ctx, bytes / 1e6, n_layers, best * 1e3, bytes / best / 1e9);
  free(table);
  free(pos);
  free(qs);
  free(cl);
  free(q);
  free(out);
  ops->kv_free(st, kv);
  return 0;
}

/* ---- matmuls by rows --------------------------------------------------- */

/* The n matrices w[0 .. n - 1] (wbytes in all, not cache resident) at M =
 * 1 to 128 rows: a decode step's linear part at that batch, or a decode
 * step's with a prompt chunk beside it. Best of 3 passes each. */
static void gemm_rows(void *st, float *y, const float *x, const struct lm_tensor *w, int n,
                      size_t wbytes) {
  static const int ms[] = {1, 8, 16, 24, 32, 48, 64, 96, 128};
  for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
      double t0 = lm_now_s();
      for (int i = 0; i < n; i++)
        ops->matmul(st, y, x, &w[i], NULL, ms[mi]);
      double dt = lm_now_s() - t0;
      if (dt < best) best = dt;
    }
    /* 2 FLOPs a row per bf16 weight: M x wbytes */
    printf("GEMM M=%3d, %.2f GB of weights: %6.1f ms, %5.1f GB/s, %5.0f GFLOP/s\n", ms[mi],
           wbytes / 1e9, best * 1e3, wbytes / best / 1e9, ms[mi] * (double)wbytes / best / 1e9);
  }
}

int main(int argc, char **argv) {
  struct lm_backend_config cfg = {.n_threads = argc > 1 ? atoi(argv[1]) : 0};
  int attn_only = argc > 2 && !strcmp(argv[2], "attention");
  int gemm_only = argc > 2 && !strcmp(argv[2], "gemm");
  int decode_only = argc > 2 && !strcmp(argv[2], "decode");
  consecutive = argc > 3 && !strcmp(argv[3], "consecutive");
  char err[LM_ERR_LEN];
  void *st;
  if (ops->create(&cfg, &st, err) != 0) {
    fprintf(stderr, "create: %s\n", err);
    return 1;
  }
  struct lm_cpu *cpu = st;
  if (decode_only) {
    int rc = bench_decode_batch(st, 32, 1152, 4, 8);
    ops->destroy(st);
    return rc;
  }
  printf("threads: %d, kernels: %s\n", cpu->n_threads,
         !cpu->avx512 ? "scalar"
         : cpu->amx   ? "avx512, bf16 matmuls and attention on AMX tiles"
                      : "avx512");

  /* pool dispatch */
  {
    int reps = 20000;
    double t0 = lm_now_s();
    for (int i = 0; i < reps; i++)
      lm_pool_run(cpu->pool, noop_body, NULL);
    printf("pool: empty parallel region %.2f us\n", (lm_now_s() - t0) / reps * 1e6);
  }

  /* (1) read bandwidth over 1 GiB, FMA peak */
  double bw = NAN, peak = NAN;
  if (attn_only) {
    peak = lm_bench_fma_gflops(cpu->pool);
  } else if (__builtin_cpu_supports("avx512f")) {
    bw = lm_bench_read_gbs(cpu->pool, (size_t)1 << 30);
    peak = lm_bench_fma_gflops(cpu->pool);
    printf("(1) read bandwidth, 1 GiB, AVX-512 loads: %.1f GB/s (best of %d)\n", bw,
           LM_BENCH_READ_PASSES);
    printf("    AVX-512 FMA peak: %.0f GFLOP/s (best of %d)\n", peak, LM_BENCH_FMA_PASSES);
    /* what decides between the two bf16 matmul kernels (cpu_gemm.c) */
    printf("    AVX512_BF16 dot peak: %.0f GFLOP/s (0: no AVX512_BF16; dot products are %s here)\n",
           lm_bench_bf16dot_gflops(cpu->pool), cpu->bf16_dot && !cpu->amx ? "used" : "not used");
    printf("    AMX bf16 peak: %.0f GFLOP/s (0: no AMX, or not granted; tiles are %s here)\n",
           lm_bench_amx_gflops(cpu->pool), cpu->amx ? "used" : "not used");
  } else {
    printf("(1) read bandwidth and FMA peak: skipped, the probes need AVX-512\n");
  }

  /* (2) GEMV on Qwen3-0.6B-shaped layers (q, k, v, o, gate, up, down) */
  enum { NL = 36, NM = 7 };
  static const int shp[NM][2] = {{2048, 1024}, {1024, 1024}, {1024, 1024}, {1024, 2048},
                                 {3072, 1024}, {3072, 1024}, {1024, 3072}};
  struct lm_tensor(*w)[NM] = calloc(NL, sizeof(*w));
  size_t wbytes = 0;
  float *x = ops->act_alloc(st, (size_t)512 * 3072), *y = ops->act_alloc(st, (size_t)512 * 3072);
  for (size_t i = 0; i < (size_t)512 * 3072; i++)
    x[i] = sinf((float)i);
  for (int l = 0; l < NL && !attn_only; l++)
    for (int m = 0; m < NM; m++) {
      w[l][m] = make_bf16(shp[m][0], shp[m][1], (uint32_t)(l * NM + m + 1));
      /* packed as load_weights packs a model's */
      if (ops->tensor_load && ops->tensor_load(st, &w[l][m], err) != 0) {
        fprintf(stderr, "tensor_load: %s\n", err);
        return 1;
      }
      wbytes += (size_t)shp[m][0] * shp[m][1] * 2;
    }
  if (gemm_only) {
    gemm_rows(st, y, x, &w[0][0], NL * NM, wbytes);
    ops->destroy(st);
    return 0;
  }
  if (!attn_only) {
    double best = 1e9;
    for (int r = 0; r < 4; r++) {
      double t0 = lm_now_s();
      for (int l = 0; l < NL; l++)
        for (int m = 0; m < NM; m++)
          ops->matmul(st, y, x, &w[l][m], NULL, 1);
      double dt = lm_now_s() - t0;
      if (dt < best) best = dt;
    }
    double gbs = wbytes / best / 1e9;
    printf("(2) GEMV M=1 bf16, %d distinct Qwen3-0.6B-shaped layers (%.2f GB): %.1f GB/s = %.0f%% "
           "of (1); %.1f us per layer\n",
           NL, wbytes / 1e9, gbs, 100 * gbs / bw, best / NL * 1e6);
    {
      /* the same kernel on one 2 MB matrix that stays in L3: the compute
       * ceiling, to tell a memory-bound GEMV from an instruction-bound one */
      int reps = 500;
      double t0 = lm_now_s();
      for (int r = 0; r < reps; r++)
        ops->matmul(st, y, x, &w[0][1], NULL, 1);
      double dt = lm_now_s() - t0;
      printf("    cache-resident 1024 -> 1024 (2 MB, L3): %.1f GB/s\n",
             (double)reps * 1024 * 1024 * 2 / dt / 1e9);
    }
    for (int m = 0; m < NM; m++) {
      double t0 = lm_now_s();
      for (int l = 0; l < NL; l++)
        ops->matmul(st, y, x, &w[l][m], NULL, 1);
      double dt = lm_now_s() - t0;
      printf("    %4d -> %4d: %.1f GB/s\n", shp[m][1], shp[m][0],
             (double)NL * shp[m][0] * shp[m][1] * 2 / dt / 1e9);
    }
  }

  /* (3) GEMM M=512 */
  if (!attn_only) {
    int ms[] = {512, 64, 32, 16, 4};
    for (int mi = 0; mi < 5; mi++) {
      int M = ms[mi];
      double flops = 0, best = 1e9;
      for (int r = 0; r < 2; r++) {
        double t0 = lm_now_s();
        flops = 0;
        for (int m = 0; m < NM; m++) {
          ops->matmul(st, y, x, &w[r][m], NULL, M);
          flops += 2.0 * M * shp[m][0] * shp[m][1];
        }
        double dt = lm_now_s() - t0;
        if (dt < best) best = dt;
      }
      printf("(3) GEMM M=%d bf16 (one layer's 7 matrices): %.0f GFLOP/s = %.0f%% of FMA peak\n", M,
             flops / best / 1e9, 100 * flops / best / 1e9 / peak);
      /* one 2 MB matrix again and again: the kernel without DRAM */
      int reps = 8192 / M;
      double t0 = lm_now_s();
      for (int r = 0; r < reps; r++)
        ops->matmul(st, y, x, &w[0][1], NULL, M);
      double gf = 2.0 * M * 1024 * 1024 * reps / (lm_now_s() - t0) / 1e9;
      printf("    cache-resident 1024 -> 1024: %.0f GFLOP/s = %.0f%%\n", gf, 100 * gf / peak);
    }
  }

  /* (4) decode attention, one sequence: 16 q / 8 kv heads, head_dim 128;
   * (5) a 64-token prefill chunk deep in a prompt, and a whole 512-token
   * one; then chunks of 64 and 24 tokens at 8k over 28 layers' KV, as a
   * step beside decodes meets them; the 24 tokens again on one layer's KV
   * in cache (their FLOPs alone), and one decode token over the 28 layers
   * (the KV's read alone) */
  for (int ci = 0; ci < 4; ci++)
    if (!attn_only && bench_attention(st, y, x, ci % 2 ? 4096 : 1024, 1, 1,
                                      ci < 2 ? LM_DTYPE_F32 : LM_DTYPE_BF16, peak, 50) != 0)
      return 1;
  if (bench_attention(st, y, x, 4096, 64, 1, LM_DTYPE_BF16, peak, attn_only ? 100 : 5) != 0 ||
      bench_attention(st, y, x, 512, 512, 1, LM_DTYPE_BF16, peak, attn_only ? 100 : 5) != 0 ||
      bench_attention(st, y, x, 8192, 64, 28, LM_DTYPE_BF16, peak, attn_only ? 10 : 3) != 0 ||
      bench_attention(st, y, x, 8192, 24, 28, LM_DTYPE_BF16, peak, attn_only ? 10 : 3) != 0 ||
      bench_attention(st, y, x, 8192, 24, 1, LM_DTYPE_BF16, peak, attn_only ? 100 : 5) != 0 ||
      bench_attention(st, y, x, 8192, 1, 28, LM_DTYPE_BF16, peak, attn_only ? 10 : 3) != 0)
    return 1;
  ops->destroy(st);
  return 0;
}
