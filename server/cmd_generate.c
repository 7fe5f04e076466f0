/* cmd_generate.c - `lmserve generate`: one prompt, streamed to stdout as it
 * is produced. A single sequence through the same runner, sampler and
 * detokenizer the server uses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "server/cli.h"

static const char usage[] =
    "usage: lmserve generate [--model DIR] --prompt TEXT [--max-tokens N]\n"
    "                        [--temperature T] [--top-p P] [--top-k K] [--min-p P]\n"
    "                        [--repetition-penalty R] [--seed S] [--ignore-eos]\n"
    "                        [--json] [--threads N] [--backend cpu|auto]\n"
    "                        [--cpu-mapped-weights]\n"
    "  streams the completion of TEXT to stdout. Sampling values not given come\n"
    "  from the model's generation_config.json, then greedy (temperature 0);\n"
    "  --json prints one JSON object per token: {\"id\": ID, \"text\": \"...\"}.\n"
    "  --cpu-mapped-weights computes from the file mapping (less memory, slower).\n";

struct gen_opts {
  const char *model, *prompt, *backend;
  long max_tokens, threads;
  int json, ignore_eos, mapped_weights, seed_set;
  uint64_t seed;
  struct lm_gen_defaults flags; /* sampling values given on the command line */
};

static int parse_opts(int argc, char **argv, struct gen_opts *o) {
  struct lm_gen_defaults *f = &o->flags;
  double d = 0;
  long l = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--json")) {
      o->json = 1;
      continue;
    } else if (!strcmp(a, "--ignore-eos")) {
      o->ignore_eos = 1;
      continue;
    } else if (!strcmp(a, "--cpu-mapped-weights")) {
      o->mapped_weights = 1;
      continue;
    } else if (!v) {
      fprintf(stderr, "lmserve generate: unknown or incomplete flag '%s'\n%s", a, usage);
      return -1;
    } else if (!strcmp(a, "--model")) {
      o->model = v;
    } else if (!strcmp(a, "--prompt")) {
      o->prompt = v;
    } else if (!strcmp(a, "--backend")) {
      o->backend = v;
    } else if (!strcmp(a, "--max-tokens")) {
      bad = lm_cli_int(a, v, 1, 1 << 24, &o->max_tokens);
    } else if (!strcmp(a, "--threads")) {
      bad = lm_cli_int(a, v, 0, 1024, &o->threads);
    } else if (!strcmp(a, "--temperature")) {
      bad = lm_cli_float(a, v, 0, 100, &d);
      f->temperature = (float)d, f->has_temperature = 1;
    } else if (!strcmp(a, "--top-p")) {
      bad = lm_cli_float(a, v, 0, 1, &d);
      f->top_p = (float)d, f->has_top_p = 1;
    } else if (!strcmp(a, "--min-p")) {
      bad = lm_cli_float(a, v, 0, 1, &d);
      f->min_p = (float)d, f->has_min_p = 1;
    } else if (!strcmp(a, "--repetition-penalty")) {
      bad = lm_cli_float(a, v, 0.01, 100, &d);
      f->repetition_penalty = (float)d, f->has_repetition_penalty = 1;
    } else if (!strcmp(a, "--top-k")) {
      bad = lm_cli_int(a, v, 0, 1 << 24, &l);
      f->top_k = (int)l, f->has_top_k = 1;
    } else if (!strcmp(a, "--seed")) {
      bad = lm_cli_int(a, v, 0, 0x7fffffffffffffffL, &l);
      o->seed = (uint64_t)l, o->seed_set = 1;
    } else {
      fprintf(stderr, "lmserve generate: unknown flag '%s'\n%s", a, usage);
      return -1;
    }
    if (bad) return -1;
    i++;
  }
  return 0;
}

/* Each sampling value: the command line's, else generation_config.json's
 * (when it allows sampling), else off. */
static struct lm_sampling sampling_params(const struct gen_opts *o,
                                          const struct lm_gen_defaults *g) {
  const struct lm_gen_defaults *f = &o->flags;
  int sample = g->do_sample != 0; /* absent (-1) counts as allowed */
  struct lm_sampling s = {0};
  s.temperature = f->has_temperature             ? f->temperature
                  : g->has_temperature && sample ? g->temperature
                                                 : 0.0f;
  s.top_p = f->has_top_p ? f->top_p : g->has_top_p && sample ? g->top_p : 0.0f;
  s.top_k = f->has_top_k ? f->top_k : g->has_top_k && sample ? g->top_k : 0;
  s.min_p = f->has_min_p ? f->min_p : g->has_min_p && sample ? g->min_p : 0.0f;
  s.repetition_penalty = f->has_repetition_penalty   ? f->repetition_penalty
                         : g->has_repetition_penalty ? g->repetition_penalty
                                                     : 0.0f;
  s.seed = o->seed_set ? o->seed : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
  return s;
}

static void emit(const struct gen_opts *o, int32_t id, const char *text, size_t len) {
  if (o->json) {
    printf("{\"id\": %d, \"text\": ", id);
    lm_json_write_str(stdout, text, len);
    puts("}");
  } else {
    fwrite(text, 1, len, stdout);
  }
  fflush(stdout);
}

int lm_cmd_generate(int argc, char **argv) {
  struct gen_opts o = {.backend = "auto", .max_tokens = 256};
  char dir_buf[4096], err[LM_ERR_LEN];
  lm_model *m = NULL;
  lm_tokenizer *tok = NULL;
  lm_backend *be = NULL;
  lm_runner *r = NULL;
  lm_detok *dt = NULL;
  lm_tokens prompt = {0};
  lm_kv_seq seq = {0};
  int rc = 1;

  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help")) {
      fputs(usage, stdout);
      return 0;
    }
  if (parse_opts(argc, argv, &o) != 0) return 2;
  if (!o.prompt) {
    fprintf(stderr, "lmserve generate: --prompt is required\n%s", usage);
    return 2;
  }
  const char *dir = lm_cli_model_dir(o.model, dir_buf, sizeof(dir_buf));
  if (lm_model_load(dir, &m, err) != LM_OK || lm_tokenizer_load(dir, &tok, err) != LM_OK) {
    lm_cli_load_error(dir, err);
    goto out;
  }
  struct lm_sampling sampling = sampling_params(&o, &m->gen);
  const struct lm_config *c = &m->cfg;

  if (lm_tokenizer_encode(tok, o.prompt, strlen(o.prompt), 1, &prompt, err) != LM_OK) {
    fprintf(stderr, "lmserve: prompt: %s\n", err);
    goto out;
  }
  if (prompt.n == 0) {
    fprintf(stderr, "lmserve: the prompt is empty: give some text with --prompt\n");
    goto out;
  }
  long total = (long)prompt.n + o.max_tokens;
  if (total > c->max_position_embeddings) {
    fprintf(stderr,
            "lmserve: prompt (%zu tokens) + --max-tokens %ld exceeds the model's context of %d "
            "tokens: shorten the prompt or lower --max-tokens\n",
            prompt.n, o.max_tokens, c->max_position_embeddings);
    goto out;
  }

  struct lm_backend_config bcfg = {.n_threads = (int)o.threads,
                                   .cpu_mapped_weights = o.mapped_weights};
  if (lm_backend_create(o.backend, &bcfg, &be, err) != LM_OK ||
      be->ops->load_weights(be->st, m, err) != LM_OK) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto out;
  }
  const int block_size = 16, chunk = 512;
  struct lm_runner_config rcfg = {
      .block_size = block_size,
      .n_blocks = (int)((total + block_size - 1) / block_size),
      .max_batch_tokens = chunk,
      .max_seqs = 1,
      .max_model_len = (int)total,
  };
  if (lm_runner_create(m, be, &rcfg, &r, err) != LM_OK ||
      lm_kv_seq_reserve(&seq, lm_runner_kv_pool(r), (int)total, err) != LM_OK) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto out;
  }
  int32_t *history = malloc((size_t)total * sizeof(int32_t));
  if (!history || lm_detok_create(tok, 1, &dt) != LM_OK) {
    free(history);
    fprintf(stderr, "lmserve: out of memory\n");
    goto out;
  }
  memcpy(history, prompt.ids, prompt.n * sizeof(int32_t));

  /* prefill in chunks, then one token per step */
  size_t done = 0;
  int32_t next = 0;
  long produced = 0;
  const void *logits;
  int n_logits;
  while (produced < o.max_tokens) {
    struct lm_seq_chunk ch = {.kv = &seq, .want_logits = 1};
    if (done < prompt.n) {
      ch.tokens = prompt.ids + done;
      ch.n_tokens = (int)(prompt.n - done < (size_t)chunk ? prompt.n - done : (size_t)chunk);
      ch.want_logits = done + (size_t)ch.n_tokens == prompt.n;
      done += (size_t)ch.n_tokens;
    } else {
      ch.tokens = &next;
      ch.n_tokens = 1;
    }
    if (lm_runner_step(r, &ch, 1, &logits, &n_logits, err) != LM_OK) {
      fprintf(stderr, "lmserve: %s\n", err);
      goto free_history;
    }
    if (!ch.want_logits) continue;
    struct lm_sample_row row = {.params = &sampling,
                                .position = (uint64_t)produced,
                                .history = history,
                                .n_history = prompt.n + produced};
    struct lm_sample_result res;
    if (be->ops->sample(be->st, logits, 1, c->vocab_size, &row, &res, err) != LM_OK) {
      fprintf(stderr, "lmserve: %s\n", err);
      goto free_history;
    }
    next = res.id;
    history[prompt.n + produced++] = next;
    if (!o.ignore_eos && lm_config_is_eos(c, next)) break;
    const char *delta;
    size_t delta_len;
    if (lm_detok_push(dt, next, &delta, &delta_len, err) != LM_OK) {
      fprintf(stderr, "lmserve: %s\n", err);
      goto free_history;
    }
    if (delta_len || o.json) emit(&o, next, delta, delta_len);
  }
  const char *tail;
  size_t tail_len;
  if (lm_detok_flush(dt, &tail, &tail_len, err) != LM_OK) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto free_history;
  }
  if (tail_len) emit(&o, -1, tail, tail_len);
  if (!o.json) putchar('\n');
  rc = 0;
free_history:
  free(history);
out:
  lm_detok_free(dt);
  lm_kv_seq_release(&seq, r ? lm_runner_kv_pool(r) : NULL);
  lm_runner_free(r);
  lm_backend_destroy(be);
  lm_tokens_free(&prompt);
  lm_tokenizer_free(tok);
  lm_model_free(m);
  return rc;
}
