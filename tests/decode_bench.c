/* decode_bench.c - single-sequence speed of the CPU backend against the
 * machine's own limits, measured side by side in one run:
 *
 *   read bandwidth   a read-only AVX-512 loop over 1 GiB, same threads
 *   FMA peak         independent AVX-512 FMA chains in registers, same threads
 *   prefill          one prompt of --prompt tokens in one step: tok/s, GFLOP/s
 *   decode           --decode greedy tokens after it: tok/s and the fraction
 *                    of the memory roofline, i.e. (weight bytes as stored,
 *                    embedding table excluded, + KV bytes read) per token x
 *                    tok/s / read bandwidth
 *
 * A shared machine's bandwidth moves by 2x within minutes, so the decode
 * runs in rounds with the bandwidth measured right before each, and the
 * fraction reported is the median of the rounds' ratios.
 *
 * usage: decode_bench --model DIR [--prompt N] [--decode N] [--threads N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/sampler.h"
#include "engine/threadpool.h"
#include "tests/roofline.h"

/* Prefill then greedy decode of one sequence; prints the figures and
 * returns the decode roofline fraction (negative on failure). */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

#define ROUNDS 8

/* Sorts v: [ROUNDS] and returns its median. */
static double median(double *v) {
  qsort(v, ROUNDS, sizeof(double), cmp_double);
  return (v[ROUNDS / 2 - 1] + v[ROUNDS / 2]) / 2;
}

static double bench(const char *dir, int mapped, int prompt_len, int n_decode, lm_pool *probe,
                    int threads) {
  char err[LM_ERR_LEN];
  lm_model *m = NULL;
  lm_backend *be = NULL;
  lm_runner *r = NULL;
  lm_kv_seq kv = {0};
  int total = prompt_len + n_decode;
  struct lm_backend_config bcfg = {.n_threads = threads, .cpu_mapped_weights = mapped};
  struct lm_runner_config rcfg = {.block_size = 16,
                                  .n_blocks = total / 16 + 1,
                                  .max_batch_tokens = prompt_len,
                                  .max_seqs = 1,
                                  .max_model_len = total};
  if (lm_model_load(dir, &m, err) || lm_backend_create("cpu", &bcfg, &be, err) ||
      be->ops->load_weights(be->st, m, err) || lm_runner_create(m, be, &rcfg, &r, err) ||
      lm_kv_seq_reserve(&kv, lm_runner_kv_pool(r), total, err)) {
    fprintf(stderr, "decode_bench: %s\n", err);
    return -1;
  }
  const struct lm_config *c = &m->cfg;
  int32_t *ids = malloc((size_t)total * sizeof(int32_t));
  for (int i = 0; i < prompt_len; i++)
    ids[i] = (int32_t)((i * 7919 + 11) % 30000 + 1000);

  const void *logits;
  int n_logits;
  struct lm_sampling greedy = {0};
  struct lm_sample_row row = {.params = &greedy};
  struct lm_sample_result res;
  struct lm_seq_chunk ch = {.kv = &kv, .tokens = ids, .n_tokens = prompt_len, .want_logits = 1};
  double peak = lm_bench_fma_gflops(probe);
  double t0 = lm_now_s();
  lm_runner_step(r, &ch, 1, &logits, &n_logits, err);
  be->ops->sample(be->st, logits, 1, c->vocab_size, &row, &res, err);
  double prefill_s = lm_now_s() - t0;
  ids[prompt_len] = res.id;

  /* decode: weights as stored once per token, plus the KV read so far */
  double weight_bytes = (double)lm_model_decode_bytes(m);
  size_t kv_token_bytes = lm_kv_block_bytes(lm_runner_kv_shape(r)) / (size_t)rcfg.block_size;
  double ratio[ROUNDS], rate[ROUNDS], gbs[ROUNDS], bws[ROUNDS];
  int per_round = (n_decode - 1) / ROUNDS, pos = prompt_len;
  for (int round = 0; round < ROUNDS; round++) {
    double bw = lm_bench_read_gbs(probe, (size_t)1 << 30), bytes = 0;
    t0 = lm_now_s();
    for (int i = 0; i < per_round; i++, pos++) {
      ch = (struct lm_seq_chunk){.kv = &kv, .tokens = ids + pos, .n_tokens = 1, .want_logits = 1};
      lm_runner_step(r, &ch, 1, &logits, &n_logits, err);
      row.position = (uint64_t)(pos - prompt_len + 1);
      be->ops->sample(be->st, logits, 1, c->vocab_size, &row, &res, err);
      ids[pos + 1] = res.id;
      bytes += weight_bytes + (double)(pos + 1) * (double)kv_token_bytes;
    }
    double s = lm_now_s() - t0;
    rate[round] = per_round / s;
    gbs[round] = bytes / s / 1e9;
    bws[round] = bw;
    ratio[round] = gbs[round] / bw;
  }
  double frac = median(ratio), tok_s = median(rate), gbs_med = median(gbs), bw_med = median(bws);

  /* prefill FLOPs: 2 per weight per token, plus QK^T and PV over the
   * causal triangle */
  double attn_flops =
      4.0 * c->n_layers * c->n_heads * c->head_dim * (double)prompt_len * (prompt_len + 1) / 2.0;
  double prefill_flops = 2.0 * weight_bytes / lm_dtype_size(c->dtype) * prompt_len + attn_flops;
  double prefill_gflops = prefill_flops / prefill_s / 1e9;

  printf("weights %s: %s, %d layers, hidden %d, %.0f MB read per token\n",
         mapped ? "in the file mapping (4 KiB pages)" : "copied to 2 MiB pages",
         lm_dtype_name(c->dtype), c->n_layers, c->hidden_size, weight_bytes / 1e6);
  printf("prefill %d tokens: %.3f s, %.1f tok/s, %.1f GFLOP/s = %.1f%% of FMA peak\n", prompt_len,
         prefill_s, prompt_len / prefill_s, prefill_gflops, 100 * prefill_gflops / peak);
  printf("decode %d x %d tokens: median %.2f tok/s (%.1f ms/token), %.1f GB/s (%.1f-%.1f) against "
         "read bandwidth %.1f GB/s (%.1f-%.1f): median %.1f%% (rounds %.1f-%.1f%%)\n",
         ROUNDS, per_round, tok_s, 1e3 / tok_s, gbs_med, gbs[0], gbs[ROUNDS - 1], bw_med, bws[0],
         bws[ROUNDS - 1], 100 * frac, 100 * ratio[0], 100 * ratio[ROUNDS - 1]);

  free(ids);
  lm_kv_seq_release(&kv, lm_runner_kv_pool(r));
  lm_runner_free(r);
  lm_backend_destroy(be);
  lm_model_free(m);
  return frac;
}

int main(int argc, char **argv) {
  const char *dir = NULL;
  int prompt_len = 512, n_decode = 64, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model"))
      dir = argv[i + 1];
    else if (!strcmp(argv[i], "--prompt"))
      prompt_len = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--decode"))
      n_decode = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
  }
  if (!dir || prompt_len <= 0 || n_decode < 2 * ROUNDS) {
    fprintf(stderr, "usage: decode_bench --model DIR [--prompt N] [--decode N] [--threads N]\n");
    return 2;
  }
  if (!__builtin_cpu_supports("avx512f")) {
    printf("SKIPPED: decode_bench measures against AVX-512 kernels; this CPU has none\n");
    return 0;
  }

  /* the probes run on their own pool of the same size, asleep meanwhile */
  lm_pool *probe = lm_pool_create(threads);
  printf("model %s, %d threads\n", dir, lm_pool_size(probe));
  double copied = bench(dir, 0, prompt_len, n_decode, probe, threads);
  double mapped = bench(dir, 1, prompt_len, n_decode, probe, threads);
  lm_pool_destroy(probe);
  if (copied < 0 || mapped < 0) return 1;
  printf("decode roofline fraction %.3f (gate 0.70); from the file mapping %.3f\n", copied, mapped);
  return 0;
}
