/* runner_test.c - the forward pass over the paged KV cache gives the same
 * logits however the work is batched: alone or beside other sequences,
 * prefilled whole or in chunks, decoded token by token or prefilled, with
 * any block size. Batch invariance is exact (bit for bit), across block
 * sizes too: attention takes its keys in chunks of positions, not blocks.
 *
 * usage: runner_test FIXTURES_DIR   (models from tools/make_model.py --all) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "tests/check.h"

struct rig {
  lm_model *m;
  lm_backend *be;
  lm_runner *r;
  int vocab;
};

static int rig_open(struct rig *g, const char *dir, int block_size, int threads) {
  char err[LM_ERR_LEN];
  struct lm_backend_config bcfg = {.n_threads = threads};
  struct lm_runner_config rcfg = {.block_size = block_size,
                                  .n_blocks = 256,
                                  .max_batch_tokens = 512,
                                  .max_seqs = 8,
                                  .max_model_len = 1024};
  memset(g, 0, sizeof(*g));
  if (lm_model_load(dir, &g->m, err) != LM_OK || lm_backend_create("cpu", &bcfg, &g->be, err) ||
      g->be->ops->load_weights(g->be->st, g->m, err) ||
      lm_runner_create(g->m, g->be, &rcfg, &g->r, err)) {
    printf("# %s: %s\n", dir, err);
    return -1;
  }
  g->vocab = g->m->cfg.vocab_size;
  return 0;
}

static void rig_close(struct rig *g) {
  lm_runner_free(g->r);
  lm_backend_destroy(g->be);
  lm_model_free(g->m);
}

/* Runs the sequences' prompts in steps of at most `chunk` tokens each,
 * all sequences together in every step; returns each one's last logits. */
static int run(struct rig *g, const int32_t *const *prompts, const int *lens, int n, int chunk,
               float *out) {
  char err[LM_ERR_LEN];
  lm_kv_seq kv[8];
  struct lm_seq_chunk ch[8];
  int idx[8], rc = 0;
  memset(kv, 0, sizeof(kv));
  for (int s = 0; s < n; s++)
    lm_kv_seq_reserve(&kv[s], lm_runner_kv_pool(g->r), lens[s] + 1, NULL);
  for (;;) {
    int k = 0;
    for (int s = 0; s < n; s++) {
      int done = kv[s].n_cached_tokens, left = lens[s] - done;
      if (left <= 0) continue;
      int take = left < chunk ? left : chunk;
      ch[k] = (struct lm_seq_chunk){.kv = &kv[s],
                                    .tokens = prompts[s] + done,
                                    .n_tokens = take,
                                    .want_logits = done + take == lens[s]};
      idx[k++] = s;
    }
    if (!k) break;
    const void *logits;
    int n_logits;
    if (lm_runner_step(g->r, ch, k, &logits, &n_logits, err) != LM_OK) {
      printf("# step: %s\n", err);
      rc = -1;
      break;
    }
    float *rows = malloc((size_t)n_logits * (size_t)g->vocab * sizeof(float));
    g->be->ops->f32_read(g->be->st, rows, logits, (size_t)n_logits * (size_t)g->vocab);
    for (int i = 0, row = 0; i < k; i++)
      if (ch[i].want_logits)
        memcpy(out + (size_t)idx[i] * (size_t)g->vocab, rows + (size_t)row++ * (size_t)g->vocab,
               (size_t)g->vocab * sizeof(float));
    free(rows);
  }
  for (int s = 0; s < n; s++)
    lm_kv_seq_release(&kv[s], lm_runner_kv_pool(g->r));
  return rc;
}

static double rel_err(const float *a, const float *b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return sqrt(num / (den > 0 ? den : 1));
}

static void test_model(const char *root, const char *name) {
  char dir[4096];
  snprintf(dir, sizeof(dir), "%s/%s", root, name);
  struct rig g, g32, g1;
  if (!lm_check(rig_open(&g, dir, 16, 2) == 0, "%s: loads", name)) return;
  int V = g.vocab;
  enum { LA = 70, LB = 9, LC = 33 };
  int32_t a[LA], b[LB], c[LC];
  for (int i = 0; i < LA; i++)
    a[i] = (i * 7919 + 13) % 1000 + 100;
  for (int i = 0; i < LB; i++)
    b[i] = (i * 104729 + 7) % 1000 + 100;
  for (int i = 0; i < LC; i++)
    c[i] = (i * 15485863 + 3) % 1000 + 100;
  const int32_t *alone[] = {a}, *mixed[] = {b, a, c};
  int len_alone[] = {LA}, len_mixed[] = {LB, LA, LC};
  float *ref = malloc((size_t)V * sizeof(float)), *out = malloc(3 * (size_t)V * sizeof(float));

  run(&g, alone, len_alone, 1, 512, ref);
  run(&g, mixed, len_mixed, 3, 512, out);
  lm_check(!memcmp(ref, out + V, (size_t)V * sizeof(float)),
           "%s: a sequence's logits alone == inside a batch of 3 (bit-exact)", name);
  for (int chunk = 1; chunk <= 32; chunk *= 4) {
    run(&g, mixed, len_mixed, 3, chunk, out);
    lm_check(!memcmp(ref, out + V, (size_t)V * sizeof(float)),
             "%s: prefill in chunks of %d == whole prefill (bit-exact)", name, chunk);
  }

  /* decode of token n equals the last row of a prefill over n + 1 tokens */
  float *dec = malloc((size_t)V * sizeof(float));
  {
    char err[LM_ERR_LEN];
    lm_kv_seq kv = {0};
    lm_kv_seq_reserve(&kv, lm_runner_kv_pool(g.r), LA, NULL);
    struct lm_seq_chunk pre = {.kv = &kv, .tokens = a, .n_tokens = LA - 1, .want_logits = 0},
                        one = {.kv = &kv, .tokens = a + LA - 1, .n_tokens = 1, .want_logits = 1};
    const void *l;
    int nl;
    lm_runner_step(g.r, &pre, 1, &l, &nl, err);
    lm_runner_step(g.r, &one, 1, &l, &nl, err);
    g.be->ops->f32_read(g.be->st, dec, l, (size_t)V);
    lm_kv_seq_release(&kv, lm_runner_kv_pool(g.r));
  }
  lm_check(!memcmp(ref, dec, (size_t)V * sizeof(float)),
           "%s: decoding the last token == prefilling it (bit-exact)", name);

  {
    /* a layered chunk: the first 40 tokens of a run one layer a step
     * beside another sequence's decodes, then the rest as one chunk */
    char err[LM_ERR_LEN];
    int L = g.m->cfg.n_layers, ok = 1, cached_between = 1;
    lm_kv_pool *pool = lm_runner_kv_pool(g.r);
    lm_kv_seq kb = {0}, ka = {0};
    lm_kv_seq_reserve(&kb, pool, LB + L, NULL);
    lm_kv_seq_reserve(&ka, pool, LA, NULL);
    struct lm_seq_chunk ch[2] = {{.kv = &kb, .tokens = b, .n_tokens = LB, .want_logits = 1}};
    const void *l;
    int nl;
    ok &= lm_runner_step(g.r, ch, 1, &l, &nl, err) == LM_OK;
    for (int layer = 0; layer < L; layer++) {
      ch[0] =
          (struct lm_seq_chunk){.kv = &kb, .tokens = b + layer, .n_tokens = 1, .want_logits = 1};
      ch[1] = (struct lm_seq_chunk){
          .kv = &ka, .tokens = a, .n_tokens = 40, .layer_begin = layer, .layer_end = layer + 1};
      ok &= lm_runner_step(g.r, ch, 2, &l, &nl, err) == LM_OK && nl == 1;
      cached_between &= ka.n_cached_tokens == (layer + 1 < L ? 0 : 40);
    }
    ch[0] =
        (struct lm_seq_chunk){.kv = &ka, .tokens = a + 40, .n_tokens = LA - 40, .want_logits = 1};
    ok &= lm_runner_step(g.r, ch, 1, &l, &nl, err) == LM_OK;
    g.be->ops->f32_read(g.be->st, dec, l, (size_t)V);
    lm_check(ok && cached_between && !memcmp(ref, dec, (size_t)V * sizeof(float)),
             "%s: 40 tokens run a layer a step beside decodes, then the rest == whole prefill "
             "(bit-exact; cached only after the last layer: %d)",
             name, cached_between);

    /* refused: resuming without the kept rows, a layered chunk not last,
     * logits before the last layer */
    lm_kv_seq_release(&ka, pool);
    lm_kv_seq_reserve(&ka, pool, LA, NULL);
    ch[0] = (struct lm_seq_chunk){.kv = &kb, .tokens = b, .n_tokens = 1, .want_logits = 1};
    ch[1] = (struct lm_seq_chunk){
        .kv = &ka, .tokens = a + 1, .n_tokens = 40, .layer_begin = 1, .layer_end = L};
    int rc1 = lm_runner_step(g.r, ch, 2, &l, &nl, err);
    lm_check(rc1 == LM_EINVAL && strstr(err, "kept rows"),
             "%s: a chunk resuming at layer 1 "
             "without its kept rows is refused: %s",
             name, err);
    struct lm_seq_chunk swapped[2] = {ch[1], ch[0]};
    swapped[0].layer_begin = 0;
    swapped[0].layer_end = 1;
    int rc2 = lm_runner_step(g.r, swapped, 2, &l, &nl, err);
    lm_check(rc2 == LM_EINVAL && strstr(err, "only the last"),
             "%s: a layered chunk before another is refused: %s", name, err);
    ch[1] = (struct lm_seq_chunk){.kv = &ka,
                                  .tokens = a,
                                  .n_tokens = 40,
                                  .want_logits = 1,
                                  .layer_begin = 0,
                                  .layer_end = L - 1};
    int rc3 = L > 1 ? lm_runner_step(g.r, ch, 2, &l, &nl, err) : LM_EINVAL;
    lm_check(rc3 == LM_EINVAL && ka.n_cached_tokens == 0 && kb.n_cached_tokens == LB + L,
             "%s: logits before a chunk's last layer are refused, nothing computed: %s", name, err);
    lm_kv_seq_release(&ka, pool);
    lm_kv_seq_release(&kb, pool);
  }

  {
    /* bad input is refused before anything runs; a table reserved past
     * max_model_len is cut to what positions can reach */
    char err[LM_ERR_LEN];
    lm_kv_seq kv = {0};
    lm_kv_seq_reserve(&kv, lm_runner_kv_pool(g.r), 200 * 16, NULL);
    int32_t bad[2] = {a[0], V};
    struct lm_seq_chunk ch = {.kv = &kv, .tokens = bad, .n_tokens = 2, .want_logits = 1};
    const void *l;
    int nl;
    int rc = lm_runner_step(g.r, &ch, 1, &l, &nl, err);
    lm_check(rc == LM_EINVAL && strstr(err, "vocabulary") && kv.n_cached_tokens == 0,
             "%s: a token id outside the vocabulary is refused: %s", name, err);
    ch.n_tokens = 1;
    lm_check(lm_runner_step(g.r, &ch, 1, &l, &nl, err) == LM_OK,
             "%s: a step with a block table longer than max_model_len runs", name);
    lm_kv_seq_release(&kv, lm_runner_kv_pool(g.r));
  }

  if (rig_open(&g32, dir, 32, 2) == 0) {
    run(&g32, alone, len_alone, 1, 512, out);
    /* the softmax takes its keys in chunks of positions whatever the
     * block size, so every sum is the same; a wrong block index gives
     * errors near 1 */
    lm_check(!memcmp(ref, out, (size_t)V * sizeof(float)),
             "%s: block size 32 == block size 16 (bit-exact; rel err %.2e)", name,
             rel_err(out, ref, V));
    rig_close(&g32);
  }
  if (rig_open(&g1, dir, 16, 1) == 0) {
    run(&g1, alone, len_alone, 1, 512, out);
    lm_check(!memcmp(ref, out, (size_t)V * sizeof(float)), "%s: 1 thread == 2 threads (bit-exact)",
             name);
    rig_close(&g1);
  }
  free(dec);
  free(ref);
  free(out);
  rig_close(&g);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: runner_test FIXTURES_DIR\n");
    return 2;
  }
  static const char *const models[] = {"qwen3-bf16", "llama31-f32", "qwen2-bf16", "mistral-f32"};
  for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
    test_model(argv[1], models[i]);
  return lm_check_done();
}
