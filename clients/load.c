/* load.c - the load generator: workload, event loop and report.
 *
 * Every request is one Generate stream of random token ids (so prompt
 * lengths are exact) with ignore_eos on by default (so every request
 * produces exactly its max_tokens and token totals are comparable with
 * `lmserve bench`). Each call runs three batches on the shared queue:
 * the sends plus initial metadata, one receive at a time, and the status.
 * A call is done when all three have completed. */
#include "clients/load.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "clients/msg.h"
#include "clients/opts.h"
#include "clients/rpc.h"
#include "clients/stats.h"
#include "engine/lm.h"

struct load_opts {
  const char *server;
  int concurrency;        /* closed loop: streams in flight (rate mode: the cap, 0 none) */
  double rate;            /* > 0: Poisson arrivals per second */
  long requests;          /* stop launching after this many (0: by duration) */
  double duration_s;      /* stop launching after this long (0: by count) */
  int input_tokens;       /* mean prompt length */
  int output_tokens;      /* mean max_tokens */
  double range_ratio;     /* lengths uniform in mean * [1 - r, 1 + r] */
  double shared_prefix;   /* fraction of the mean prompt shared by all requests */
  double cancel_fraction; /* requests cancelled after a random token count */
  double deadline_s;      /* per-request deadline (0: none) */
  int ignore_eos;
  double temperature;
  unsigned long long seed;
  int json;
  double progress_s; /* seconds between progress lines on stderr (0: off) */
};

enum { TAG_START, TAG_RECV, TAG_STATUS };

struct slot;
struct tag {
  struct slot *slot;
  int kind;
};

struct slot {
  grpc_call *call;
  struct tag tags[3];
  int pending; /* batches not yet completed */
  grpc_metadata_array initial_md, trailing_md;
  grpc_status_code status;
  grpc_slice details;
  grpc_byte_buffer *send, *recv;
  double t_start, t_last;
  int n_out;        /* output tokens received */
  int cancel_after; /* > 0: cancel once this many tokens arrived */
  int cancelled;
  int in_use;
};

struct load {
  struct load_opts o;
  struct lmc_conn conn;
  grpc_completion_queue *cq;
  struct lmc_rng rng;
  struct lmc_model_info info;
  int32_t *prefix; /* [n_prefix] ids every prompt starts with */
  int n_prefix;
  int32_t *ids; /* [cap_ids] scratch prompt */
  int cap_ids;
  struct slot *slots; /* [n_slots] */
  int n_slots, in_flight;
  long launched, done;
  double t0, t_end;
  /* results */
  struct lmc_samples ttft, itl, e2e;
  long long out_tokens, prompt_tokens;
  long status_count[17];
  long cancelled_ok; /* cancelled by us and ended CANCELLED */
  char first_error[LM_ERR_LEN];
};

static void usage(void) {
  fputs("usage: lmserve-client load [--server ADDR] [--concurrency N | --rate R]\n"
        "         [--requests N | --duration S] [--input-tokens N] [--output-tokens N]\n"
        "         [--range-ratio F] [--shared-prefix F] [--cancel-fraction F]\n"
        "         [--deadline S] [--no-ignore-eos] [--temperature T] [--seed S]\n"
        "         [--progress S] [--json]\n",
        stderr);
}

static int parse_opts(int argc, char **argv, struct load_opts *o) {
  *o = (struct load_opts){.server = "127.0.0.1:50051",
                          .concurrency = 8,
                          .input_tokens = 128,
                          .output_tokens = 128,
                          .ignore_eos = 1,
                          .seed = 1,
                          .progress_s = -1};
  int have_requests = 0, have_conc = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long n;
    int rc = 0, takes = 1;
    if (!strcmp(a, "--server") && v)
      o->server = v;
    else if (!strcmp(a, "--concurrency") && v)
      rc = lmc_opt_int(a, v, 0, 100000, &n), o->concurrency = (int)n, have_conc = 1;
    else if (!strcmp(a, "--rate") && v)
      rc = lmc_opt_float(a, v, 1e-6, 1e6, &o->rate);
    else if (!strcmp(a, "--requests") && v)
      rc = lmc_opt_int(a, v, 1, 100000000, &o->requests), have_requests = 1;
    else if (!strcmp(a, "--duration") && v)
      rc = lmc_opt_float(a, v, 0.001, 1e7, &o->duration_s);
    else if (!strcmp(a, "--input-tokens") && v)
      rc = lmc_opt_int(a, v, 1, 10000000, &n), o->input_tokens = (int)n;
    else if (!strcmp(a, "--output-tokens") && v)
      rc = lmc_opt_int(a, v, 1, 10000000, &n), o->output_tokens = (int)n;
    else if (!strcmp(a, "--range-ratio") && v)
      rc = lmc_opt_float(a, v, 0, 1, &o->range_ratio);
    else if (!strcmp(a, "--shared-prefix") && v)
      rc = lmc_opt_float(a, v, 0, 1, &o->shared_prefix);
    else if (!strcmp(a, "--cancel-fraction") && v)
      rc = lmc_opt_float(a, v, 0, 1, &o->cancel_fraction);
    else if (!strcmp(a, "--deadline") && v)
      rc = lmc_opt_float(a, v, 0, 1e7, &o->deadline_s);
    else if (!strcmp(a, "--temperature") && v)
      rc = lmc_opt_float(a, v, 0, 100, &o->temperature);
    else if (!strcmp(a, "--seed") && v)
      rc = lmc_opt_int(a, v, 0, LONG_MAX, &n), o->seed = (unsigned long long)n;
    else if (!strcmp(a, "--progress") && v)
      rc = lmc_opt_float(a, v, 0, 1e7, &o->progress_s);
    else if (!strcmp(a, "--no-ignore-eos"))
      o->ignore_eos = 0, takes = 0;
    else if (!strcmp(a, "--json"))
      o->json = 1, takes = 0;
    else {
      fprintf(stderr, "lmserve-client load: unknown or incomplete option %s\n", a);
      usage();
      return LM_EINVAL;
    }
    if (rc) return rc;
    i += takes;
  }
  if (!have_requests && o->duration_s == 0) o->requests = 64;
  if (have_requests && o->duration_s > 0) {
    fputs("lmserve-client load: give --requests or --duration, not both\n", stderr);
    return LM_EINVAL;
  }
  if (o->rate == 0 && o->concurrency == 0) {
    fputs("lmserve-client load: --concurrency must be at least 1 without --rate\n", stderr);
    return LM_EINVAL;
  }
  if (o->rate > 0 && !have_conc) o->concurrency = 0;
  if (o->progress_s < 0) o->progress_s = isatty(2) ? 2 : 10;
  return LM_OK;
}

/* A length uniform in mean * [1 - r, 1 + r], at least 1. */
static int draw_len(struct load *L, int mean) {
  long lo = lround(mean * (1 - L->o.range_ratio)), hi = lround(mean * (1 + L->o.range_ratio));
  long n = lmc_rng_range(&L->rng, lo, hi);
  return n < 1 ? 1 : (int)n;
}

/* Ordinary tokens: BPE vocabularies put special and added tokens at the
 * end, so prompts draw from the lower 90%. */
static int32_t draw_id(struct load *L) {
  long hi = (long)(L->info.vocab_size * 0.9);
  return (int32_t)lmc_rng_range(&L->rng, 0, hi > 0 ? hi - 1 : 0);
}

static int fetch_model_info(struct load *L, char *err) {
  uint8_t *req = NULL, *msg = NULL;
  size_t req_len, len;
  struct lmc_call call;
  int rc = lmc_encode_model_info_request(&req, &req_len, err);
  if (rc) return rc;
  rc = lmc_call_start(&L->conn, LMC_METHOD_MODEL_INFO, req, req_len, 30, NULL, 0, &call, err);
  free(req);
  if (rc) return rc;
  int got = lmc_call_next(&call, &msg, &len);
  char detail[LM_ERR_LEN];
  int code = lmc_call_finish(&call, detail);
  if (code != GRPC_STATUS_OK || got != 1) {
    free(msg);
    return lm_errf(err, LM_EIO, "GetModelInfo on %s: %s: %s", L->o.server, lmc_status_name(code),
                   detail);
  }
  rc = lmc_decode_model_info(msg, len, &L->info, err);
  free(msg);
  return rc;
}

static void slot_clear(struct slot *s) {
  grpc_metadata_array_destroy(&s->initial_md);
  grpc_metadata_array_destroy(&s->trailing_md);
  grpc_slice_unref(s->details);
  if (s->send) grpc_byte_buffer_destroy(s->send);
  if (s->recv) grpc_byte_buffer_destroy(s->recv);
  if (s->call) grpc_call_unref(s->call);
  memset(s, 0, sizeof(*s));
}

static int start_recv(struct slot *s) {
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv;
  if (grpc_call_start_batch(s->call, &op, 1, &s->tags[TAG_RECV], NULL) != GRPC_CALL_OK)
    return LM_EIO;
  s->pending++;
  return LM_OK;
}

/* Starts one request in a free slot. */
static int launch(struct load *L, char *err) {
  struct slot *s = NULL;
  for (int i = 0; i < L->n_slots && !s; i++)
    if (!L->slots[i].in_use) s = &L->slots[i];
  if (!s) return lm_errf(err, LM_EFULL, "no free stream slot");
  int n_in = draw_len(L, L->o.input_tokens), n_out = draw_len(L, L->o.output_tokens);
  if (L->info.max_model_len > 0 && n_in + n_out > L->info.max_model_len) {
    n_out = n_out < L->info.max_model_len / 2 ? n_out : L->info.max_model_len / 2;
    n_in = L->info.max_model_len - n_out;
  }
  if (n_in > L->cap_ids) {
    int32_t *ids = realloc(L->ids, (size_t)n_in * sizeof(*ids));
    if (!ids) return lm_errf(err, LM_ENOMEM, "out of memory for a %d-token prompt", n_in);
    L->ids = ids;
    L->cap_ids = n_in;
  }
  int np = L->n_prefix < n_in ? L->n_prefix : n_in;
  if (np > 0) memcpy(L->ids, L->prefix, (size_t)np * sizeof(*L->ids));
  for (int i = np; i < n_in; i++)
    L->ids[i] = draw_id(L);
  struct lmc_request r = {.ids = L->ids,
                          .n_ids = n_in,
                          .max_tokens = n_out,
                          .has_temperature = 1,
                          .temperature = L->o.temperature,
                          .ignore_eos = L->o.ignore_eos};
  uint8_t *buf;
  size_t len;
  int rc = lmc_encode_generate(&r, &buf, &len, err);
  if (rc) return rc;
  memset(s, 0, sizeof(*s));
  s->in_use = 1;
  for (int k = 0; k < 3; k++)
    s->tags[k] = (struct tag){s, k};
  grpc_metadata_array_init(&s->initial_md);
  grpc_metadata_array_init(&s->trailing_md);
  if (L->o.cancel_fraction > 0 && lmc_rng_uniform(&L->rng) < L->o.cancel_fraction)
    s->cancel_after = (int)lmc_rng_range(&L->rng, 1, n_out > 1 ? n_out - 1 : 1);
  grpc_slice body = grpc_slice_new(buf, len, free);
  s->send = grpc_raw_byte_buffer_create(&body, 1);
  grpc_slice_unref(body);
  s->call = grpc_channel_create_call(L->conn.channel, NULL, GRPC_PROPAGATE_DEFAULTS, L->cq,
                                     grpc_slice_from_static_string(LMC_METHOD_GENERATE), NULL,
                                     lmc_deadline(L->o.deadline_s), NULL);
  if (!s->call) {
    slot_clear(s);
    return lm_errf(err, LM_EIO, "cannot create a call on %s", L->o.server);
  }
  grpc_op ops[4];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = s->send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
  s->status = GRPC_STATUS_UNKNOWN; /* until the status batch fills it */
  s->t_start = s->t_last = lm_now_s();
  if (grpc_call_start_batch(s->call, ops, 4, &s->tags[TAG_START], NULL) != GRPC_CALL_OK) {
    slot_clear(s);
    return lm_errf(err, LM_EIO, "grpc_call_start_batch failed");
  }
  s->pending = 1;
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  ops[0].data.recv_status_on_client.status = &s->status;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  if (grpc_call_start_batch(s->call, ops, 1, &s->tags[TAG_STATUS], NULL) != GRPC_CALL_OK ||
      (s->pending++, start_recv(s) != LM_OK)) {
    /* whatever started completes once cancelled; on_event then finishes it */
    grpc_call_cancel(s->call, NULL);
  }
  L->launched++;
  L->in_flight++;
  return LM_OK;
}

static void finish_slot(struct load *L, struct slot *s) {
  double now = lm_now_s();
  int code = (int)s->status;
  if (code >= 0 && code <= 16) L->status_count[code]++;
  if (code == GRPC_STATUS_OK) {
    lmc_samples_add(&L->e2e, now - s->t_start);
  } else if (s->cancelled && code == GRPC_STATUS_CANCELLED) {
    L->cancelled_ok++;
  } else if (!L->first_error[0]) {
    char *d = grpc_slice_to_c_string(s->details);
    snprintf(L->first_error, sizeof(L->first_error), "%s: %s", lmc_status_name(code), d);
    gpr_free(d);
  }
  slot_clear(s);
  L->in_flight--;
  L->done++;
  L->t_end = now;
}

static void on_message(struct load *L, struct slot *s) {
  uint8_t *buf;
  size_t len;
  struct lmc_response r;
  char err[LM_ERR_LEN];
  double now = lm_now_s();
  int ok = lmc_byte_buffer_copy(s->recv, &buf, &len) == LM_OK;
  grpc_byte_buffer_destroy(s->recv);
  s->recv = NULL;
  if (ok && lmc_decode_response(buf, len, &r, err) == LM_OK) {
    if (r.n_tokens > 0) {
      if (s->n_out == 0) {
        lmc_samples_add(&L->ttft, now - s->t_start);
      } else {
        /* a message may carry several tokens (coalesced while the previous
         * send was in flight): each counts the gap divided among them */
        double per = (now - s->t_last) / r.n_tokens;
        for (int i = 0; i < r.n_tokens; i++)
          lmc_samples_add(&L->itl, per);
      }
      s->n_out += r.n_tokens;
      L->out_tokens += r.n_tokens;
      s->t_last = now;
    }
    if (r.has_usage && r.finish_reason[0]) L->prompt_tokens += r.prompt_tokens;
    lmc_response_free(&r);
  }
  free(buf);
  if (s->cancel_after > 0 && !s->cancelled && s->n_out >= s->cancel_after) {
    s->cancelled = 1;
    grpc_call_cancel(s->call, NULL);
  }
  start_recv(s);
}

static void on_event(struct load *L, grpc_event ev) {
  struct tag *t = ev.tag;
  struct slot *s = t->slot;
  s->pending--;
  if (t->kind == TAG_RECV && ev.success && s->recv) on_message(L, s);
  if (s->pending == 0) finish_slot(L, s);
}

static int may_launch(const struct load *L, double now) {
  if (L->o.requests > 0 && L->launched >= L->o.requests) return 0;
  if (L->o.duration_s > 0 && now - L->t0 >= L->o.duration_s) return 0;
  return 1;
}

static void progress(const struct load *L, double now) {
  double el = now - L->t0;
  fprintf(stderr, "[%6.1fs] %ld done, %d in flight, %lld output tokens, %.1f tok/s\n", el, L->done,
          L->in_flight, L->out_tokens, el > 0 ? L->out_tokens / el : 0.0);
}

static int run_load(struct load *L, char *err) {
  /* Tags point into the slots, so the array is sized once. In rate mode
   * without --concurrency, at most 4096 streams are in flight; arrivals
   * beyond that wait (the report's TTFT then includes that wait). */
  L->n_slots = L->o.concurrency > 0 ? L->o.concurrency : 4096;
  L->slots = calloc((size_t)L->n_slots, sizeof(*L->slots));
  if (!L->slots) return lm_errf(err, LM_ENOMEM, "out of memory for %d streams", L->n_slots);
  L->t0 = L->t_end = lm_now_s();
  double next_arrival = L->t0, next_progress = L->t0 + L->o.progress_s;
  int rc = LM_OK;
  for (;;) {
    double now = lm_now_s();
    if (rc == LM_OK) {
      if (L->o.rate > 0) {
        while (now >= next_arrival && may_launch(L, now) && L->in_flight < L->n_slots) {
          if ((rc = launch(L, err)) != LM_OK) break;
          next_arrival += lmc_rng_exponential(&L->rng, L->o.rate);
        }
      } else {
        while (L->in_flight < L->o.concurrency && may_launch(L, now))
          if ((rc = launch(L, err)) != LM_OK) break;
      }
    }
    if (L->in_flight == 0 && (rc != LM_OK || !may_launch(L, now))) break;
    double wake = now + 1.0;
    if (L->o.rate > 0 && may_launch(L, now) && next_arrival < wake) wake = next_arrival;
    if (L->o.progress_s > 0 && next_progress < wake) wake = next_progress;
    gpr_timespec dl = gpr_time_add(
        gpr_now(GPR_CLOCK_MONOTONIC),
        gpr_time_from_micros((int64_t)((wake > now ? wake - now : 0) * 1e6), GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_next(L->cq, dl, NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
      on_event(L, ev);
      /* take whatever else is ready before launching more */
      while (
          (ev = grpc_completion_queue_next(L->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL)).type ==
          GRPC_OP_COMPLETE)
        on_event(L, ev);
    }
    now = lm_now_s();
    if (L->o.progress_s > 0 && now >= next_progress) {
      progress(L, now);
      next_progress = now + L->o.progress_s;
    }
  }
  return rc;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

static void print_summary_json(const char *name, struct lmc_summary *s, int last) {
  printf("  \"%s\": {\"n\": %zu, \"mean\": %.6f, \"p50\": %.6f, \"p90\": %.6f, \"p99\": %.6f, "
         "\"max\": %.6f}%s\n",
         name, s->n, s->mean, s->p50, s->p90, s->p99, s->max, last ? "" : ",");
}

static void print_summary_text(const char *name, struct lmc_summary *s) {
  printf("%-22s p50 %8.2f  p90 %8.2f  p99 %8.2f  mean %8.2f ms (n=%zu)\n", name, s->p50 * 1e3,
         s->p90 * 1e3, s->p99 * 1e3, s->mean * 1e3, s->n);
}

static void report(struct load *L, double cpu_s) {
  struct lmc_summary ttft, itl, e2e;
  lmc_samples_summarize(&L->ttft, &ttft);
  lmc_samples_summarize(&L->itl, &itl);
  lmc_samples_summarize(&L->e2e, &e2e);
  double wall = L->t_end - L->t0;
  double tok_s = wall > 0 ? L->out_tokens / wall : 0;
  long errors = 0;
  for (int c = 1; c <= 16; c++)
    errors += L->status_count[c];
  errors -= L->cancelled_ok;
  if (L->o.json) {
    printf("{\n  \"server\": \"%s\",\n  \"model\": \"%s\",\n", L->o.server, L->info.model);
    printf("  \"concurrency\": %d,\n  \"rate\": %.3f,\n  \"requests\": %ld,\n  \"ok\": %ld,\n"
           "  \"cancelled\": %ld,\n  \"errors\": %ld,\n",
           L->o.concurrency, L->o.rate, L->done, L->status_count[0], L->cancelled_ok, errors);
    printf("  \"status\": {");
    const char *sep = "";
    for (int c = 0; c <= 16; c++)
      if (L->status_count[c]) {
        printf("%s\"%s\": %ld", sep, lmc_status_name(c), L->status_count[c]);
        sep = ", ";
      }
    printf("},\n");
    printf("  \"duration_s\": %.6f,\n  \"prompt_tokens\": %lld,\n  \"output_tokens\": %lld,\n"
           "  \"output_tok_per_s\": %.3f,\n  \"requests_per_s\": %.3f,\n"
           "  \"client_cpu_s\": %.6f,\n",
           wall, L->prompt_tokens, L->out_tokens, tok_s, wall > 0 ? L->done / wall : 0, cpu_s);
    print_summary_json("ttft_s", &ttft, 0);
    print_summary_json("itl_s", &itl, 0);
    print_summary_json("e2e_s", &e2e, 1);
    printf("}\n");
  } else {
    printf("server %s, model %s, ", L->o.server, L->info.model);
    if (L->o.rate > 0)
      printf("Poisson rate %.2f/s", L->o.rate);
    else
      printf("concurrency %d", L->o.concurrency);
    printf("\nrequests %ld: ok %ld, cancelled %ld, errors %ld\n", L->done, L->status_count[0],
           L->cancelled_ok, errors);
    for (int c = 1; c <= 16; c++)
      if (L->status_count[c] &&
          !(c == GRPC_STATUS_CANCELLED && L->status_count[c] == L->cancelled_ok))
        printf("  %-20s %ld\n", lmc_status_name(c), L->status_count[c]);
    if (L->first_error[0]) printf("  first error: %s\n", L->first_error);
    printf("duration %.3f s, prompt tokens %lld, output tokens %lld\n", wall, L->prompt_tokens,
           L->out_tokens);
    printf("output throughput %.1f tok/s, %.2f requests/s\n", tok_s, wall > 0 ? L->done / wall : 0);
    print_summary_text("time to first token", &ttft);
    print_summary_text("inter-token latency", &itl);
    print_summary_text("request latency", &e2e);
    printf("client CPU %.3f s (%.1f%% of one core)\n", cpu_s, wall > 0 ? 100 * cpu_s / wall : 0);
  }
}

int lmc_cmd_load(int argc, char **argv) {
  struct load L;
  char err[LM_ERR_LEN] = "";
  int rc;
  memset(&L, 0, sizeof(L));
  if (parse_opts(argc, argv, &L.o)) return 2;
  lmc_rng_seed(&L.rng, L.o.seed);
  if ((rc = lmc_conn_open(L.o.server, &L.conn, err)) != LM_OK) goto err;
  L.cq = grpc_completion_queue_create_for_next(NULL);
  if (!L.cq) {
    rc = lm_errf(err, LM_ENOMEM, "cannot create a completion queue");
    goto err;
  }
  if ((rc = fetch_model_info(&L, err)) != LM_OK) goto err;
  L.n_prefix = (int)lround(L.o.shared_prefix * L.o.input_tokens);
  if (L.n_prefix > 0) {
    L.prefix = malloc((size_t)L.n_prefix * sizeof(*L.prefix));
    if (!L.prefix) {
      rc = lm_errf(err, LM_ENOMEM, "out of memory");
      goto err;
    }
    for (int i = 0; i < L.n_prefix; i++)
      L.prefix[i] = draw_id(&L);
  }
  double cpu0 = cpu_seconds();
  rc = run_load(&L, err);
  double cpu_s = cpu_seconds() - cpu0;
  if (rc == LM_OK) report(&L, cpu_s);
err:
  if (rc != LM_OK) fprintf(stderr, "lmserve-client load: %s\n", err);
  if (L.cq) {
    grpc_completion_queue_shutdown(L.cq);
    while (grpc_completion_queue_next(L.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(L.cq);
  }
  lmc_conn_close(&L.conn);
  free(L.slots);
  free(L.prefix);
  free(L.ids);
  lmc_samples_free(&L.ttft);
  lmc_samples_free(&L.itl);
  lmc_samples_free(&L.e2e);
  if (rc != LM_OK) return 1;
  long errors = 0;
  for (int c = 1; c <= 16; c++)
    errors += L.status_count[c];
  return errors - L.cancelled_ok > 0 ? 3 : 0;
}
