/* forward_dump.c - runs prompts through lmserve's forward pass and prints
 * the logits of each prompt's last token and its greedy continuation, as
 * JSON, for tests/forward_compare.py to check against tests/torch_ref.py
 * and for tests/hf_compare.py against Transformers' logits (tests/data/hf).
 *
 * The prompts run together the way the engine runs requests: every step
 * has a token budget (--chunk) shared by all sequences, so long prompts are
 * prefilled in chunks that continue earlier context through the block
 * table, next to other sequences' decode tokens.
 *
 * usage: forward_dump --model DIR --prompts FILE --greedy N --out FILE
 *                     [--chunk TOKENS] [--block-size N] [--threads N]
 *                     [--backend cpu|cuda|auto] [--kv-cache-dtype auto|bf16|f32] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/cpu_internal.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/sampler.h"

struct seq {
  int32_t *ids; /* [n_prompt + greedy] prompt then continuation */
  int n_prompt, n_out;
  lm_kv_seq kv;
  float *last_logits; /* [vocab] */
};

/* Reads {"prompts": [[ids...], ...]}: non-empty lists of ids in [0, vocab). */
static int load_prompts(const char *path, int vocab, int greedy, struct seq **out, int *n_out,
                        char *err) {
  char *text;
  size_t len;
  lm_json_doc *doc = NULL;
  struct seq *seqs = NULL;
  size_t n = 0;
  int rc = lm_read_file(path, &text, &len, err);
  if (rc != LM_OK) return rc;
  if ((rc = lm_json_parse(text, len, &doc, err)) != LM_OK) goto out;
  const lm_json *ps = lm_json_get_type(lm_json_root(doc), "prompts", LM_JSON_ARRAY);
  if (!ps || !ps->n_kids) {
    rc = lm_errf(err, LM_EFORMAT, "%s: needs a non-empty \"prompts\" array", path);
    goto out;
  }
  if (!(seqs = calloc(ps->n_kids, sizeof(*seqs)))) goto nomem;
  for (n = 0; n < ps->n_kids; n++) {
    const lm_json *p = &ps->kids[n];
    if (p->type != LM_JSON_ARRAY || !p->n_kids) {
      rc = lm_errf(err, LM_EFORMAT, "%s: prompts[%zu] is not a non-empty array", path, n);
      goto out;
    }
    if (!(seqs[n].ids = malloc((p->n_kids + (size_t)greedy) * sizeof(int32_t)))) goto nomem;
    seqs[n].n_prompt = (int)p->n_kids;
    for (size_t j = 0; j < p->n_kids; j++) {
      const lm_json *id = &p->kids[j];
      if (id->type != LM_JSON_NUMBER || !id->is_int || id->integer < 0 || id->integer >= vocab) {
        rc = lm_errf(err, LM_EFORMAT, "%s: prompts[%zu][%zu] is not a token id below %d", path, n,
                     j, vocab);
        goto out;
      }
      seqs[n].ids[j] = (int32_t)id->integer;
    }
  }
  rc = LM_OK;
  goto out;
nomem:
  rc = lm_errf(err, LM_ENOMEM, "%s: out of memory", path);
out:
  if (rc != LM_OK && seqs) {
    for (size_t i = 0; i <= n && i < ps->n_kids; i++)
      free(seqs[i].ids);
    free(seqs);
    seqs = NULL;
  }
  *out = seqs;
  *n_out = seqs ? (int)n : 0;
  lm_json_free(doc);
  free(text);
  return rc;
}

int main(int argc, char **argv) {
  const char *model_dir = NULL, *prompts = NULL, *out_path = NULL, *backend = "cpu",
             *kv_dtype = NULL;
  int greedy = 0, chunk = 48, block_size = 16, threads = 0;
  char err[LM_ERR_LEN];
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model"))
      model_dir = argv[i + 1];
    else if (!strcmp(argv[i], "--prompts"))
      prompts = argv[i + 1];
    else if (!strcmp(argv[i], "--out"))
      out_path = argv[i + 1];
    else if (!strcmp(argv[i], "--greedy"))
      greedy = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--chunk"))
      chunk = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--block-size"))
      block_size = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--backend"))
      backend = argv[i + 1];
    else if (!strcmp(argv[i], "--kv-cache-dtype"))
      kv_dtype = argv[i + 1];
  }
  if (!model_dir || !prompts || !out_path || chunk <= 0 || block_size <= 0) {
    fprintf(stderr, "usage: forward_dump --model DIR --prompts FILE --greedy N --out FILE "
                    "[--chunk TOKENS] [--block-size N] [--threads N] [--backend cpu|cuda|auto] "
                    "[--kv-cache-dtype auto|bf16|f32]\n");
    return 2;
  }
  lm_model *m = NULL;
  lm_backend *be = NULL;
  lm_runner *r = NULL;
  struct seq *seqs = NULL;
  struct lm_seq_chunk *chunks = NULL;
  int *owner = NULL;
  float *logits = NULL;
  int n_seqs = 0, rc = 1;
  if (lm_model_load(model_dir, &m, err) != LM_OK ||
      load_prompts(prompts, m->cfg.vocab_size, greedy, &seqs, &n_seqs, err) != LM_OK) {
    fprintf(stderr, "forward_dump: %s\n", err);
    goto out;
  }
  int vocab = m->cfg.vocab_size, n_blocks = 0;
  for (int s = 0; s < n_seqs; s++)
    n_blocks += (seqs[s].n_prompt + greedy) / block_size + 1;
  struct lm_backend_config bcfg = {.n_threads = threads};
  struct lm_runner_config rcfg = {.block_size = block_size,
                                  .n_blocks = n_blocks,
                                  .max_batch_tokens = chunk + n_seqs,
                                  .max_seqs = n_seqs,
                                  .kv_dtype = kv_dtype};
  if (lm_backend_create(backend, &bcfg, &be, err) != LM_OK ||
      be->ops->load_weights(be->st, m, err) != LM_OK ||
      lm_runner_create(m, be, &rcfg, &r, err) != LM_OK) {
    fprintf(stderr, "forward_dump: %s\n", err);
    goto out;
  }
  chunks = calloc((size_t)n_seqs, sizeof(*chunks));
  owner = calloc((size_t)n_seqs, sizeof(int));
  logits = malloc((size_t)n_seqs * (size_t)vocab * sizeof(float));
  if (!chunks || !owner || !logits) {
    fprintf(stderr, "forward_dump: out of memory\n");
    goto out;
  }
  for (int s = 0; s < n_seqs; s++) {
    seqs[s].last_logits = malloc((size_t)vocab * sizeof(float));
    if (!seqs[s].last_logits ||
        lm_kv_seq_reserve(&seqs[s].kv, lm_runner_kv_pool(r), seqs[s].n_prompt + greedy, err)) {
      fprintf(stderr, "forward_dump: %s\n", seqs[s].last_logits ? err : "out of memory");
      goto out;
    }
  }
  for (;;) {
    /* decodes first, then prefill chunks from what is left of the budget */
    int n = 0, budget = chunk;
    for (int pass = 0; pass < 2; pass++) {
      for (int s = 0; s < n_seqs; s++) {
        struct seq *q = &seqs[s];
        int computed = q->kv.n_cached_tokens, in_prefill = computed < q->n_prompt;
        if (pass == 0 && !in_prefill && q->n_out < greedy) {
          chunks[n] = (struct lm_seq_chunk){
              .kv = &q->kv, .tokens = q->ids + computed, .n_tokens = 1, .want_logits = 1};
          owner[n++] = s;
        } else if (pass == 1 && in_prefill && budget > 0) {
          int take = q->n_prompt - computed < budget ? q->n_prompt - computed : budget;
          budget -= take;
          chunks[n] = (struct lm_seq_chunk){.kv = &q->kv,
                                            .tokens = q->ids + computed,
                                            .n_tokens = take,
                                            .want_logits = computed + take == q->n_prompt};
          owner[n++] = s;
        }
      }
    }
    if (n == 0) break;
    const void *dev_logits;
    int n_logits;
    if (lm_runner_step(r, chunks, n, &dev_logits, &n_logits, err) != LM_OK) {
      fprintf(stderr, "forward_dump: %s\n", err);
      goto out;
    }
    /* logits: [n_logits, vocab] f32 on every backend */
    if (be->ops->f32_read(be->st, logits, dev_logits, (size_t)n_logits * (size_t)vocab) != 0) {
      fprintf(stderr, "forward_dump: reading the logits from the %s backend failed\n", backend);
      goto out;
    }
    for (int i = 0, row = 0; i < n; i++) {
      if (!chunks[i].want_logits) continue;
      struct seq *q = &seqs[owner[i]];
      const float *l = logits + (size_t)row++ * (size_t)vocab;
      if (q->n_out == 0) memcpy(q->last_logits, l, (size_t)vocab * sizeof(float));
      if (q->n_out < greedy) q->ids[q->n_prompt + q->n_out++] = lm_sampler_argmax(l, vocab);
    }
    if (greedy == 0) {
      int pending = 0;
      for (int s = 0; s < n_seqs; s++)
        pending |= seqs[s].kv.n_cached_tokens < seqs[s].n_prompt;
      if (!pending) break;
    }
  }
  FILE *f = fopen(out_path, "w");
  if (!f) {
    fprintf(stderr, "forward_dump: cannot write %s\n", out_path);
    goto out;
  }
  /* what the reference must round to match: bf16 weights multiplied by
   * dot products take x rounded to bf16; a bf16 cache holds K and V so */
  int x_bf16 = !strcmp(be->ops->name, "cpu") && ((struct lm_cpu *)be->st)->bf16_dot &&
               m->w.layers[0].wq.dtype == LM_DTYPE_BF16;
  fprintf(f, "{\"matmul_inputs\": \"%s\",\n\"kv_cache\": \"%s\",\n", x_bf16 ? "bf16" : "f32",
          lm_runner_kv_shape(r)->dtype == LM_DTYPE_BF16     ? "bf16"
          : lm_runner_kv_shape(r)->dtype == LM_DTYPE_F8E5M2 ? "e5m2"
                                                            : "f32");
  fputs("\"last_logits\": [", f);
  for (int s = 0; s < n_seqs; s++) {
    fputs(s ? ",\n[" : "[", f);
    for (int i = 0; i < vocab; i++)
      fprintf(f, i ? ",%.9g" : "%.9g", seqs[s].last_logits[i]);
    fputc(']', f);
  }
  fputs("],\n\"greedy\": [", f);
  for (int s = 0; s < n_seqs; s++) {
    fputs(s ? ",[" : "[", f);
    for (int i = 0; i < seqs[s].n_out; i++)
      fprintf(f, i ? ",%d" : "%d", seqs[s].ids[seqs[s].n_prompt + i]);
    fputc(']', f);
  }
  fputs("]}\n", f);
  fclose(f);
  rc = 0;
out:
  free(chunks);
  free(owner);
  free(logits);
  for (int s = 0; s < n_seqs; s++) {
    lm_kv_seq_release(&seqs[s].kv, r ? lm_runner_kv_pool(r) : NULL);
    free(seqs[s].ids);
    free(seqs[s].last_logits);
  }
  free(seqs);
  lm_runner_free(r);
  lm_backend_destroy(be);
  lm_model_free(m);
  return rc;
}
