/* cmd_generate.c - `lmserve generate`: one prompt, streamed to stdout as it
 * is produced. The request goes through the engine like any served
 * request (one code path): submitted to an lm_engine, its output drained
 * as the engine's notify callback signals it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/chat.h"
#include "engine/engine.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/output.h"
#include "server/cli.h"

static const char usage[] =
    "usage: lmserve generate [--model DIR] (--prompt TEXT | --chat) [--max-tokens N]\n"
    "                        [--temperature T] [--top-p P] [--top-k K] [--min-p P]\n"
    "                        [--repetition-penalty R] [--seed S] [--ignore-eos]\n"
    "                        [--stop STR]... [--stop-token-id ID]... [--min-tokens N]\n"
    "                        [--json] [--threads N] [--backend auto|cpu|cuda]\n"
    "                        [--cpu-mapped-weights] [--kv-cache-dtype auto|bf16|f32|fp8_e5m2]\n"
    "                        [--gemm cublaslt|mma]\n"
    "  streams the completion of TEXT to stdout. Sampling values not given come\n"
    "  from the model's generation_config.json, then greedy (temperature 0);\n"
    "  --json prints one JSON object per token: {\"id\": ID, \"text\": \"...\"}.\n"
    "  --chat reads a chat request from stdin ({\"messages\": [...]} or a messages\n"
    "  array) and renders it with the model's chat template.\n"
    "  --stop ends the completion before STR (repeatable); --stop-token-id at ID;\n"
    "  --min-tokens N: neither (nor EOS) ends it within the first N tokens.\n"
    "  --cpu-mapped-weights computes from the file mapping (less memory, slower).\n";

#define MAX_STOPS 16

struct gen_opts {
  const char *model, *prompt, *backend, *kv_dtype, *gemm;
  long max_tokens, threads, min_tokens;
  int json, ignore_eos, mapped_weights, seed_set, chat;
  uint64_t seed;
  struct lm_gen_defaults flags; /* sampling values given on the command line */
  const char *stop[MAX_STOPS];
  int n_stop;
  int32_t stop_ids[MAX_STOPS];
  int n_stop_ids;
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
    } else if (!strcmp(a, "--chat")) {
      o->chat = 1;
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
    } else if (!strcmp(a, "--kv-cache-dtype")) {
      o->kv_dtype = v;
    } else if (!strcmp(a, "--gemm")) {
      o->gemm = v;
    } else if (!strcmp(a, "--max-tokens")) {
      bad = lm_cli_int(a, v, 1, 1 << 24, &o->max_tokens);
    } else if (!strcmp(a, "--min-tokens")) {
      bad = lm_cli_int(a, v, 0, 1 << 24, &o->min_tokens);
    } else if (!strcmp(a, "--threads")) {
      bad = lm_cli_int(a, v, 0, 1024, &o->threads);
    } else if (!strcmp(a, "--stop") || !strcmp(a, "--stop-token-id")) {
      int is_id = a[6] == '-';
      if ((is_id ? o->n_stop_ids : o->n_stop) == MAX_STOPS) {
        fprintf(stderr, "lmserve generate: at most %d %s flags\n", MAX_STOPS, a);
        return -1;
      }
      if (is_id) {
        bad = lm_cli_int(a, v, 0, 0x7fffffff, &l);
        o->stop_ids[o->n_stop_ids++] = (int32_t)l;
      } else if (!*v) {
        fprintf(stderr, "lmserve generate: --stop needs a non-empty string\n");
        return -1;
      } else {
        o->stop[o->n_stop++] = v;
      }
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

/* The request: generation_config.json's sampling values (from
 * lm_request_params_init), each replaced by the command line's when given. */
static void request_params(const lm_engine *e, const struct gen_opts *o, const lm_tokens *prompt,
                           struct lm_request_params *p) {
  const struct lm_gen_defaults *f = &o->flags;
  lm_request_params_init(e, p);
  struct lm_sampling *s = &p->sampling;
  if (f->has_temperature) s->temperature = f->temperature;
  if (f->has_top_p) s->top_p = f->top_p;
  if (f->has_top_k) s->top_k = f->top_k;
  if (f->has_min_p) s->min_p = f->min_p;
  if (f->has_repetition_penalty) s->repetition_penalty = f->repetition_penalty;
  s->seed = o->seed_set ? o->seed : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
  p->prompt = prompt->ids;
  p->n_prompt = (int)prompt->n;
  p->max_tokens = (int)o->max_tokens;
  p->min_tokens = (int)o->min_tokens;
  p->ignore_eos = o->ignore_eos;
  p->stop = o->stop;
  p->n_stop = o->n_stop;
  p->stop_token_ids = o->stop_ids;
  p->n_stop_token_ids = o->n_stop_ids;
}

static void emit(const struct gen_opts *o, int32_t id, const char *text, size_t len) {
  if (o->json) {
    printf("{\"id\": %d, \"text\": ", id);
    lm_json_write_str(stdout, text, len);
    puts("}");
  } else {
    fwrite(text, 1, len, stdout);
  }
}

/* In --json, each token is printed once the next drain shows whether it
 * is the EOS or stop id that ended the request (not printed: it adds no
 * text), with the text it released; text released at the finish (held
 * back until then) goes with the last token printed. */
struct pending {
  int has;
  int32_t id;
  struct lm_strbuf text;
};

static int hold(struct pending *p, int32_t id, const char *text, size_t len) {
  p->has = 1;
  p->id = id;
  p->text.len = 0;
  return lm_strbuf_append(&p->text, text, len);
}

static void print_pending(const struct gen_opts *o, struct pending *p) {
  if (p->has) emit(o, p->id, p->text.len ? p->text.data : "", p->text.len);
  p->has = 0;
}

static int emit_output(const struct gen_opts *o, const struct lm_output *out, struct pending *p) {
  int rc = LM_OK;
  if (!o->json) {
    emit(o, -1, out->text, out->text_len);
  } else {
    size_t at = 0;
    for (int i = 0; i < out->n_tokens && rc == LM_OK; i++) {
      print_pending(o, p);
      rc = hold(p, out->token_ids[i], out->text + at, out->text_ends[i] - at);
      at = out->text_ends[i];
    }
    if (rc == LM_OK && out->text_len > at) {
      if (p->has)
        rc = lm_strbuf_append(&p->text, out->text + at, out->text_len - at);
      else
        emit(o, -1, out->text + at, out->text_len - at);
    }
    if (out->finished && p->has) {
      if ((out->finish_reason == LM_FINISH_EOS || out->finish_reason == LM_FINISH_STOP_TOKEN) &&
          p->id == out->stop_token_id)
        p->id = -1;
      if (p->id >= 0 || p->text.len) print_pending(o, p);
    }
  }
  fflush(stdout);
  return rc;
}

/* --chat: the request on stdin, rendered with the model's chat template. */
static int chat_prompt(const lm_tokenizer *tok, lm_tokens *prompt, char *err) {
  lm_chat *chat = NULL;
  lm_json_doc *doc = NULL;
  char *text = NULL;
  size_t len = 0, cap = 0;
  int rc;
  for (;;) {
    if (len + 4096 > cap) {
      char *t = realloc(text, cap = cap ? cap * 2 : 65536);
      if (!t) {
        rc = lm_errf(err, LM_ENOMEM, "out of memory reading stdin");
        goto out;
      }
      text = t;
    }
    size_t got = fread(text + len, 1, cap - len - 1, stdin);
    len += got;
    if (got == 0) break;
  }
  if (ferror(stdin)) {
    rc = lm_errf(err, LM_EIO, "cannot read the chat request from stdin");
    goto out;
  }
  if ((rc = lm_chat_load(tok, &chat, err)) != LM_OK) goto out;
  if (!chat) {
    rc = lm_errf(err, LM_EUNSUP, "the model has no chat template: use --prompt");
    goto out;
  }
  if ((rc = lm_json_parse(text, len, &doc, err)) != LM_OK) goto out;
  rc = lm_chat_encode(chat, tok, lm_json_root(doc), prompt, err);
out:
  lm_json_free(doc);
  lm_chat_free(chat);
  free(text);
  return rc;
}

int lm_cmd_generate(int argc, char **argv) {
  struct gen_opts o = {.backend = "auto", .max_tokens = 256};
  char dir_buf[4096], err[LM_ERR_LEN];
  lm_engine *e = NULL;
  lm_request *req = NULL;
  lm_tokens prompt = {0};
  struct lm_output out = {0};
  struct pending pend = {0};
  struct lm_cli_waiter w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
  int rc = 1;

  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help")) {
      fputs(usage, stdout);
      return 0;
    }
  if (parse_opts(argc, argv, &o) != 0) return 2;
  if (!o.prompt == !o.chat) {
    fprintf(stderr, "lmserve generate: give one of --prompt and --chat\n%s", usage);
    return 2;
  }
  const char *dir = lm_cli_model_dir(o.model, dir_buf, sizeof(dir_buf));
  struct lm_engine_config cfg;
  lm_engine_config_init(&cfg);
  cfg.model_dir = dir;
  cfg.backend = o.backend;
  cfg.kv_cache_dtype = o.kv_dtype;
  cfg.backend_cfg.n_threads = (int)o.threads;
  cfg.backend_cfg.cpu_mapped_weights = o.mapped_weights;
  cfg.backend_cfg.gemm = o.gemm;
  cfg.max_num_seqs = 1;
  if (o.prompt) {
    /* a prompt has at most one token per byte, plus a few added (BOS): a
     * KV pool this size always holds the request */
    cfg.n_kv_blocks =
        (int)((strlen(o.prompt) + 8 + (size_t)o.max_tokens + cfg.block_size - 1) / cfg.block_size);
  }
  if (lm_engine_create(&cfg, &e, err) != LM_OK) {
    lm_cli_load_error(dir, err);
    goto out;
  }
  const lm_tokenizer *tok = lm_engine_tokenizer(e);
  if (o.chat ? chat_prompt(tok, &prompt, err) != LM_OK
             : lm_tokenizer_encode(tok, o.prompt, strlen(o.prompt), 1, &prompt, err) != LM_OK) {
    fprintf(stderr, "lmserve: %s: %s\n", o.chat ? "chat request" : "prompt", err);
    goto out;
  }
  if (prompt.n == 0) {
    fprintf(stderr, "lmserve: the prompt is empty: give some text with --prompt\n");
    goto out;
  }
  struct lm_engine_info info;
  lm_engine_get_info(e, &info);
  long total = (long)prompt.n + o.max_tokens;
  if (total > info.max_model_len) {
    fprintf(stderr,
            "lmserve: prompt (%zu tokens) + --max-tokens %ld exceeds the model's context of %d "
            "tokens: shorten the prompt or lower --max-tokens\n",
            prompt.n, o.max_tokens, info.max_model_len);
    goto out;
  }
  struct lm_request_params p;
  request_params(e, &o, &prompt, &p);
  p.notify = lm_cli_wake;
  p.notify_arg = &w;
  if (lm_engine_submit(e, &p, &req, err) != LM_OK) {
    fprintf(stderr, "lmserve: %s\n", err);
    goto out;
  }
  for (;;) {
    lm_cli_wait(&w);
    int got = lm_request_drain(req, &out);
    if (got < 0) {
      fprintf(stderr, "lmserve: out of memory draining the output\n");
      goto out;
    }
    if (got == 0) continue;
    if (emit_output(&o, &out, &pend) != LM_OK) {
      fprintf(stderr, "lmserve: out of memory printing the output\n");
      goto out;
    }
    if (out.finished) break;
  }
  if (out.finish_reason == LM_FINISH_ERROR || out.finish_reason == LM_FINISH_ABORT) {
    fprintf(stderr, "lmserve: generation stopped: %s\n",
            out.finish_reason == LM_FINISH_ERROR ? out.error : "aborted");
    goto out;
  }
  if (!o.json) putchar('\n');
  rc = 0;
out:
  lm_request_release(req);
  lm_engine_destroy(e);
  lm_output_free(&out);
  lm_strbuf_free(&pend.text);
  lm_tokens_free(&prompt);
  return rc;
}
