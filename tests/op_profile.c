/* op_profile.c - where a decode step's time goes: wraps each backend op
 * with a timer, prefills --batch sequences of --prompt tokens each, decodes
 * them together for --decode steps (greedy) and prints milliseconds per
 * step for each op and for sampling, and the matmuls' FLOP rate beside the
 * FMA probe. The CPU ops are synchronous; on an asynchronous backend
 * (--backend cuda) each timed op waits for the device, so the decode runs
 * twice: as it runs in serving (the per-step time), then op by op.
 *
 * usage: op_profile --model DIR [--prompt N] [--decode N] [--batch N] [--threads N]
 *                   [--kv-cache-dtype auto|bf16|f32|fp8_e5m2] [--backend cpu|cuda] */
#include "engine/backend.h"
#include "engine/model.h"
#include "engine/roofline.h"
#include "engine/runner.h"
#include "engine/sampler.h"
#include "kernels/cuda_device.cuh"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct lm_backend_ops real, wrapped;
/* per op: seconds and calls */
static double T[16];
static long N[16];
static int n_ops;
static void *sync_st; /* the backend to wait for after each op, if asynchronous */
static void wait_device(void) {
  char err[LM_ERR_LEN];
  if (sync_st) real.sync(sync_st, err);
}
#define W(idx, name, args, call)                                                                   \
  static void w_##name args {                                                                      \
    double t = lm_now_s();                                                                         \
    real.name call;                                                                                \
    wait_device();                                                                                 \
    T[idx] += lm_now_s() - t;                                                                      \
    N[idx]++;                                                                                      \
  }
W(0, embed, (void *st, void *x, const struct lm_tensor *tb, const struct lm_batch *b),
  (st, x, tb, b))
W(1, rmsnorm, (void *st, void *o, const void *x, const struct lm_tensor *w, int r, int d, float e),
  (st, o, x, w, r, d, e))
W(2, add_rmsnorm,
  (void *st, void *o, void *res, const void *dl, const struct lm_tensor *w, int r, int d, float e),
  (st, o, res, dl, w, r, d, e))
W(3, matmul,
  (void *st, void *y, const void *x, const struct lm_tensor *w, const struct lm_tensor *b, int r),
  (st, y, x, w, b, r))
W(4, rope,
  (void *st, void *q, void *k, const struct lm_batch *b, const struct lm_rope *rp, int h, int kh),
  (st, q, k, b, rp, h, kh))
W(5, kv_write,
  (void *st, void *kv, const struct lm_kv_shape *s, int l, const void *k, const void *v,
   const struct lm_batch *b),
  (st, kv, s, l, k, v, b))
W(6, attention,
  (void *st, void *o, const void *q, const void *kv, const struct lm_kv_shape *s, int l,
   const struct lm_batch *b, int h, float sc),
  (st, o, q, kv, s, l, b, h, sc))
W(7, swiglu, (void *st, void *o, const void *g, const void *u, int r, int d), (st, o, g, u, r, d))
W(8, gather_rows, (void *st, void *o, const void *x, const int32_t *rows, int n, int d),
  (st, o, x, rows, n, d))
W(9, matmul_n,
  (void *st, void *const *y, const void *x, const struct lm_tensor *const *w,
   const struct lm_tensor *const *b, int n, int r),
  (st, y, x, w, b, n, r))
W(10, logits, (void *st, void *o, const void *x, const struct lm_tensor *w, int r),
  (st, o, x, w, r))
/* D decode steps of S sequences from token `from` of their ids; returns
 * the seconds taken, and those in sampling in *sample_s. */
/* D decode steps from position from; with profile (the CUDA backend), the
 * last step and its sampling are what a profiler started with collection
 * off records (`ncu --profile-from-start off`: one step's kernels). */
static double decode(lm_runner *r, lm_backend *be, lm_kv_seq *kv, const int32_t *ids, int from,
                     int S, int D, int vocab, struct lm_seq_chunk *ch,
                     const struct lm_sample_row *rows, struct lm_sample_result *res,
                     double *sample_s, int profile) {
  char err[LM_ERR_LEN];
  const void *l;
  int nl;
  double t0 = lm_now_s();
  *sample_s = 0;
  for (int i = 0; i < D; i++) {
    for (int s = 0; s < S; s++)
      ch[s] = (struct lm_seq_chunk){
          .kv = &kv[s], .tokens = ids + from + i, .n_tokens = 1, .want_logits = 1};
    if (profile && i == D - 1) lm_cuda_profiler(1);
    lm_runner_step(r, ch, S, &l, &nl, err);
    double t = lm_now_s();
    be->ops->sample(be->st, l, S, vocab, rows, res, err);
    *sample_s += lm_now_s() - t;
    if (profile && i == D - 1) lm_cuda_profiler(0);
  }
  return lm_now_s() - t0;
}

static const char *names[] = {"embed",  "rmsnorm",  "add_rmsnorm", "matmul",
                              "rope",   "kv_write", "attention",   "swiglu",
                              "gather", "matmul_n", "logits"};
int main(int argc, char **argv) {
  char err[LM_ERR_LEN];
  lm_model *m = NULL;
  lm_backend *be = NULL;
  lm_runner *r = NULL;
  const char *dir = NULL, *kv_dtype = NULL, *backend = "cpu", *gemm = NULL;
  int P = 128, D = 64, S = 1, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model"))
      dir = argv[i + 1];
    else if (!strcmp(argv[i], "--prompt"))
      P = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--decode"))
      D = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--batch"))
      S = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--kv-cache-dtype"))
      kv_dtype = argv[i + 1];
    else if (!strcmp(argv[i], "--backend"))
      backend = argv[i + 1];
    else if (!strcmp(argv[i], "--gemm"))
      gemm = argv[i + 1];
  }
  if (!dir || P <= 0 || D <= 0 || S <= 0 || S > 256) {
    fprintf(stderr, "usage: op_profile --model DIR [--prompt N] [--decode N] [--batch N<=256] "
                    "[--threads N] [--kv-cache-dtype auto|bf16|f32] [--backend cpu|cuda] "
                    "[--gemm cublaslt|mma]\n");
    return 2;
  }
  struct lm_backend_config c = {.n_threads = threads, .gemm = gemm};
  lm_kv_seq kv[256] = {{0}};
  if (lm_model_load(dir, &m, err) || lm_backend_create(backend, &c, &be, err) ||
      be->ops->load_weights(be->st, m, err)) {
    fprintf(stderr, "op_profile: %s\n", err);
    return 1;
  }
  real = *be->ops;
  wrapped = real;
  wrapped.embed = w_embed;
  wrapped.rmsnorm = w_rmsnorm;
  wrapped.add_rmsnorm = w_add_rmsnorm;
  wrapped.matmul = w_matmul;
  wrapped.rope = w_rope;
  wrapped.kv_write = w_kv_write;
  wrapped.attention = w_attention;
  wrapped.swiglu = w_swiglu;
  wrapped.gather_rows = w_gather_rows;
  if (real.matmul_n) wrapped.matmul_n = w_matmul_n;
  if (real.logits) wrapped.logits = w_logits;
  n_ops = (int)(sizeof(names) / sizeof(names[0]));
  be->ops = &wrapped;
  int async = strcmp(backend, "cpu") != 0 && real.sync;
  int per_seq = (P + 2 * D) / 16 + 2;
  struct lm_runner_config rc = {16, S * per_seq, P > S ? P : S, S, P + 2 * D, kv_dtype};
  if (lm_runner_create(m, be, &rc, &r, err)) {
    fprintf(stderr, "op_profile: %s\n", err);
    return 1;
  }
  for (int s = 0; s < S; s++)
    if (lm_kv_seq_reserve(&kv[s], lm_runner_kv_pool(r), P + 2 * D, err)) {
      fprintf(stderr, "op_profile: %s\n", err);
      return 1;
    }
  int32_t *ids = malloc((size_t)(P + 2 * D) * sizeof(int32_t));
  struct lm_seq_chunk *ch = calloc((size_t)S, sizeof(*ch));
  struct lm_sample_row *rows = calloc((size_t)S, sizeof(*rows));
  struct lm_sample_result *res = calloc((size_t)S, sizeof(*res));
  for (int i = 0; i < P + 2 * D; i++)
    ids[i] = 1000 + i % 30000;
  const void *l;
  int nl;
  if (async) sync_st = be->st;
  double tp = lm_now_s();
  for (int s = 0; s < S; s++) {
    ch[0] = (struct lm_seq_chunk){.kv = &kv[s], .tokens = ids, .n_tokens = P, .want_logits = 1};
    lm_runner_step(r, ch, 1, &l, &nl, err);
  }
  tp = lm_now_s() - tp;
  printf("prefill %d x %d tokens: %.1f tok/s; matmul %.0f ms, lm_head %.0f ms, attention %.0f ms\n",
         S, P, S * P / tp, (T[3] + T[9]) * 1e3, T[10] * 1e3, T[6] * 1e3);
  struct lm_sampling sp = {0};
  for (int s = 0; s < S; s++) /* greedy without logprobs, as the bench asks */
    rows[s] = (struct lm_sample_row){.params = &sp, .skip_logprob = 1};
  int first = 0, vocab = m->cfg.vocab_size;
  double ts;
  if (async) { /* the decode as served: no op waits for the device */
    be->ops = &real;
    double t = decode(r, be, kv, ids, P, S, D, vocab, ch, rows, res, &ts, 1);
    printf("batch %d, context %d..%d, as served: per step %.2f ms (%.1f tok/s)\n", S, P, P + D,
           t / D * 1e3, S * D / t);
    be->ops = &wrapped;
    first = D;
  }
  memset(T, 0, sizeof(T));
  memset(N, 0, sizeof(N));
  double tot = decode(r, be, kv, ids, P + first, S, D, vocab, ch, rows, res, &ts, 0);
  lm_pool *probe = !async && __builtin_cpu_supports("avx512f") ? lm_pool_create(c.n_threads) : NULL;
  double peak = probe ? lm_bench_fma_gflops(probe) : 0;
  if (probe) lm_pool_destroy(probe);
  printf("batch %d, context %d..%d%s: per step %.2f ms (%.1f tok/s); sample %.2f ms\n", S,
         P + first, P + first + D, async ? ", op by op" : "", tot / D * 1e3, S * D / tot,
         ts / D * 1e3);
  double sum = 0;
  for (int i = 0; i < n_ops; i++) {
    if (!N[i]) continue;
    printf("%-12s %7.3f ms/step  (%ld calls/step)\n", names[i], T[i] / D * 1e3, N[i] / D);
    sum += T[i];
  }
  double gf = 2.0 * lm_config_matmul_params(&m->cfg) * S * D / 1e9, tm = T[3] + T[9] + T[10];
  if (peak > 0)
    printf("matmul + logits %.1f GFLOP/s = %.0f %% of the FMA probe (%.0f GFLOP/s)\n", gf / tm,
           100 * gf / tm / peak, peak);
  else
    printf("matmul + logits %.1f GFLOP/s\n", gf / tm);
  printf("ops total %.2f ms, unaccounted %.2f ms\n", sum / D * 1e3, (tot - sum - ts) / D * 1e3);
  free(ids);
  free(ch);
  free(rows);
  free(res);
  for (int s = 0; s < S; s++)
    lm_kv_seq_release(&kv[s], lm_runner_kv_pool(r));
  lm_runner_free(r);
  be->ops = &real;
  lm_backend_destroy(be);
  lm_model_free(m);
  return 0;
}
