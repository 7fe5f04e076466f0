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
    "                        [--seed S] [--ignore-eos] [--json] [--threads N]\n"
    "                        [--backend cpu|auto]\n"
    "  streams the completion of TEXT to stdout. Sampling defaults come from the\n"
    "  model's generation_config.json (temperature 0 = greedy); --json prints one\n"
    "  JSON object per token: {\"id\": ID, \"text\": \"...\"}.\n";

struct gen_opts {
  const char *model, *prompt, *backend;
  long max_tokens, threads;
  int json, ignore_eos, seed_set;
  struct lm_sampling sampling;
};

static int parse_opts(int argc, char **argv, struct gen_opts *o) {
  double d;
  long l;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--json"))
      o->json = 1;
    else if (!strcmp(a, "--ignore-eos"))
      o->ignore_eos = 1;
    else if (!v) {
      fprintf(stderr, "lmserve generate: unknown or incomplete flag '%s'\n%s", a, usage);
      return -1;
    } else if (!strcmp(a, "--model"))
      o->model = v, i++;
    else if (!strcmp(a, "--prompt"))
      o->prompt = v, i++;
    else if (!strcmp(a, "--backend"))
      o->backend = v, i++;
    else if (!strcmp(a, "--max-tokens")) {
      if (lm_cli_int(a, v, 1, 1 << 24, &o->max_tokens)) return -1;
      i++;
    } else if (!strcmp(a, "--threads")) {
      if (lm_cli_int(a, v, 0, 1024, &o->threads)) return -1;
      i++;
    } else if (!strcmp(a, "--temperature")) {
      if (lm_cli_float(a, v, 0, 100, &d)) return -1;
      o->sampling.temperature = (float)d, i++;
    } else if (!strcmp(a, "--top-p")) {
      if (lm_cli_float(a, v, 0, 1, &d)) return -1;
      o->sampling.top_p = (float)d, i++;
    } else if (!strcmp(a, "--min-p")) {
      if (lm_cli_float(a, v, 0, 1, &d)) return -1;
      o->sampling.min_p = (float)d, i++;
    } else if (!strcmp(a, "--top-k")) {
      if (lm_cli_int(a, v, 0, 1 << 24, &l)) return -1;
      o->sampling.top_k = (int)l, i++;
    } else if (!strcmp(a, "--seed")) {
      if (lm_cli_int(a, v, 0, 0x7fffffffffffffffL, &l)) return -1;
      o->sampling.seed = (uint64_t)l, o->seed_set = 1, i++;
    } else {
      fprintf(stderr, "lmserve generate: unknown flag '%s'\n%s", a, usage);
      return -1;
    }
  }
  return 0;
}

/* Flags given on the command line win; the rest come from
 * generation_config.json, then greedy. */
static void apply_defaults(int argc, char **argv, struct gen_opts *o,
                           const struct lm_gen_defaults *g) {
  int has_t = 0, has_p = 0, has_k = 0, has_minp = 0;
  for (int i = 1; i < argc; i++) {
    has_t |= !strcmp(argv[i], "--temperature");
    has_p |= !strcmp(argv[i], "--top-p");
    has_k |= !strcmp(argv[i], "--top-k");
    has_minp |= !strcmp(argv[i], "--min-p");
  }
  int sample = g->do_sample != 0; /* absent (-1) counts as allowed */
  if (!has_t && g->has_temperature && sample) o->sampling.temperature = g->temperature;
  if (!has_p && g->has_top_p && sample) o->sampling.top_p = g->top_p;
  if (!has_k && g->has_top_k && sample) o->sampling.top_k = g->top_k;
  if (!has_minp && g->has_min_p && sample) o->sampling.min_p = g->min_p;
  if (g->has_repetition_penalty) o->sampling.repetition_penalty = g->repetition_penalty;
  if (!o->seed_set) o->sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
}

static int is_eos(const struct lm_config *c, int32_t id) {
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] == id) return 1;
  return 0;
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
  apply_defaults(argc, argv, &o, &m->gen);
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

  struct lm_backend_config bcfg = {.n_threads = (int)o.threads};
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
      lm_kv_seq_reserve(&seq, lm_runner_kv_pool(r), (int)total) != LM_OK) {
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
    struct lm_sample_row row = {&o.sampling, (uint64_t)produced, history, prompt.n + produced};
    struct lm_sample_result res;
    if (be->ops->sample(be->st, logits, 1, c->vocab_size, &row, &res, err) != LM_OK) {
      fprintf(stderr, "lmserve: %s\n", err);
      goto free_history;
    }
    next = res.id;
    history[prompt.n + produced++] = next;
    if (!o.ignore_eos && is_eos(c, next)) break;
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
  if (lm_detok_flush(dt, &tail, &tail_len, err) == LM_OK && tail_len) emit(&o, -1, tail, tail_len);
  if (!o.json) putchar('\n');
  rc = 0;
free_history:
  free(history);
out:
  lm_detok_free(dt);
  if (r) lm_kv_seq_release(&seq, lm_runner_kv_pool(r));
  lm_runner_free(r);
  lm_backend_destroy(be);
  lm_tokens_free(&prompt);
  lm_tokenizer_free(tok);
  lm_model_free(m);
  return rc;
}
