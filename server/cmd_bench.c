/* cmd_bench.c - `lmserve bench`: the engine's serving benchmark, in
 * process (no network). One engine runs every workload; one thread submits
 * requests and drains them as the engine's notify callback signals, timing
 * every token as it arrives.
 *
 * Workloads (prompts are random token ids, seeded; ignore_eos and greedy,
 * so the output token totals of two runs are comparable):
 *   fixed     prompt/output lengths at concurrency 1, 8, 32, 64 (CPU) or
 *             1, 16, 64, 256 (CUDA)
 *   prefix    a shared 2k-token prefix with distinct suffixes: TTFT with the
 *             prefix cached against prompts never seen
 *   long      an 8k-token prompt arriving while decodes run: their
 *             inter-token latency, and the prompt's prefill speed, against
 *             each alone; the decodes' ITL alone is measured before the
 *             prompt and again after it, and printed beside the gates, and
 *             the prompt alone before the rest and after it, the gate
 *             taking the mean.
 *             The decodes are a steady population, as in a server:
 *             contexts of 1024 tokens (--long-decode-len) plus their
 *             ages, which are spread evenly over a life of 256 tokens; one
 *             that ends is replaced. Their own step stays the same from
 *             before the prompt to after it, so the gate measures what the
 *             prompt costs them. Then four short requests arrive while
 *             another long prompt runs beside the decodes: their TTFT.
 * Gates, measured in the same run: cached-prefix TTFT p50 >= 10x lower
 * than cold, p99 ITL during the 8k prefill <= 2.5x the median before it,
 * and that prefill at >= 50 % of its speed alone; then by backend:
 *   cpu   decode at concurrency 32 >= 50 % of the compute roofline
 *         (2 x parameters x tok/s / the AVX-512 FMA peak measured here;
 *         where the CPU has AMX the bf16 matmuls run on its tiles, and
 *         the AMX peak, measured too, is printed beside it)
 *   cuda  decode at concurrency 1 >= 70 % of the memory roofline: the
 *         bytes one token reads (weights as stored, embedding table
 *         excluded, plus the KV of the run's mean context) x tok/s / the
 *         bandwidth of a read-only kernel over 4 GiB, measured before the
 *         engine takes the memory. A decode step of one sequence is bound
 *         by reading every weight once, so this is the fraction of the
 *         fastest it could go.
 * The CPU backend is the default (so CI runs are unchanged); on the GPU
 * the KV pool takes what --gpu-memory-utilization leaves and the defaults
 * grow to serving sizes (512-token prompts, 256-token outputs, 2048 tokens
 * a step, 256 sequences). */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/stats.h"
#include "engine/engine.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/roofline.h"
#include "engine/threadpool.h"
#include "kernels/bandwidth.cuh"
#include "kernels/cuda_device.cuh"
#include "server/cli.h"

static const char usage[] =
    "usage: lmserve bench [--model DIR] [--threads N] [--json] [--only fixed|prefix|long]\n"
    "                     [--prompt-len N] [--output-len N] [--prefix-len N] [--long-len N]\n"
    "                     [--max-batched-tokens N] [--long-decodes N] [--long-decode-len N]\n"
    "                     [--seed S] [--max-decode-slowdown F] [--layered-prefill on|off]\n"
    "                     [--backend auto|cpu|cuda] [--gpu-memory-utilization F]\n"
    "                     [--kv-cache-dtype auto|bf16|f32|fp8_e5m2] [--gemm cublaslt|mma]\n"
    "  runs the engine's serving workloads in process and prints throughput,\n"
    "  TTFT and inter-token latency percentiles, prefix-cache hit rate, KV use\n"
    "  and the benchmark gates. Defaults: prompt 128, output 192, prefix 2048,\n"
    "  long 8192 tokens beside a steady 32 decodes over 1024-token contexts and\n"
    "  up, 512 tokens a step (serve's CPU default).\n"
    "  --backend defaults to cpu; on cuda (auto: when a GPU is present) the\n"
    "  device's read bandwidth is measured first, concurrency is 1, 16, 64 and\n"
    "  256, the KV pool takes what --gpu-memory-utilization (0.9) of the device\n"
    "  leaves, and the defaults are prompt 512, output 256, 2048 tokens a step.\n";

/* prompt_len, output_len and budget are 0 until given or defaulted for
 * the backend (main) */
struct bench_opts {
  const char *model, *only, *backend, *kv_dtype, *gemm;
  long threads, prompt_len, output_len, prefix_len, long_len, budget, long_decodes, seed;
  long long_decode_len;          /* the prompt length of each decode beside the long prompt */
  double gpu_memory_utilization; /* 0: the engine's default */
  double slowdown;               /* max_decode_slowdown; < 0: the engine's default */
  int layered;                   /* layered_prefill; < 0: the engine's default */
  int json;
};

/* ---- running requests ------------------------------------------------------ */

struct job {
  lm_request *r;
  int32_t *prompt; /* [n_prompt] */
  int n_prompt, max_tokens;
  double submit_s, first_s, last_s, done_s;
  int n_out, finished;
};

struct bench {
  lm_engine *e;
  struct lm_cli_waiter w;
  struct lm_output out;
  struct lmc_rng rng;
  int vocab;
  struct lmc_samples ttft, itl; /* seconds */
  struct lmc_samples arrivals;  /* lm_now_s() of every token received */
  int kv_peak;                  /* most KV blocks held by live requests */
  int waiting_peak;             /* most requests waiting */
  long replaced;                /* decodes beside the long prompt ended and sent again */
  int itl_on;                   /* record inter-token latencies */
  char err[LM_ERR_LEN];
};

/* Random ids in the middle of the vocabulary (no special tokens there). */
static void fill_random(struct bench *b, int32_t *ids, int n) {
  int lo = b->vocab / 16, span = b->vocab / 2;
  for (int i = 0; i < n; i++)
    ids[i] = (int32_t)lmc_rng_range(&b->rng, lo, lo + span - 1);
}

static int job_submit(struct bench *b, struct job *j) {
  struct lm_request_params p;
  lm_request_params_init(NULL, &p);
  p.prompt = j->prompt;
  p.n_prompt = j->n_prompt;
  p.max_tokens = j->max_tokens;
  p.ignore_eos = 1;
  p.notify = lm_cli_wake;
  p.notify_arg = &b->w;
  j->submit_s = lm_now_s();
  j->first_s = j->last_s = j->done_s = 0;
  j->n_out = j->finished = 0;
  return lm_engine_submit(b->e, &p, &j->r, b->err);
}

/* Drains every unfinished job once; returns LM_OK or an error. */
static int drain_all(struct bench *b, struct job *jobs, int n) {
  struct lm_engine_stats st;
  lm_engine_get_stats(b->e, &st);
  if (st.kv_blocks_used > b->kv_peak) b->kv_peak = st.kv_blocks_used;
  if (st.num_waiting > b->waiting_peak) b->waiting_peak = st.num_waiting;
  for (int i = 0; i < n; i++) {
    struct job *j = &jobs[i];
    if (j->finished || !j->r) continue;
    int got = lm_request_drain(j->r, &b->out);
    if (got < 0) return lm_errf(b->err, got, "bench: out of memory draining");
    if (got == 0) continue;
    double now = lm_now_s();
    int k = b->out.n_tokens;
    if (k > 0) {
      if (!j->n_out) {
        j->first_s = now;
        if (lmc_samples_add(&b->ttft, now - j->submit_s)) return LM_ENOMEM;
        k--; /* the first token has no inter-token gap */
      }
      /* tokens that arrived together share the gap since the last one */
      for (int t = 0; t < k && b->itl_on && j->last_s > 0; t++)
        if (lmc_samples_add(&b->itl, (now - j->last_s) / k)) return LM_ENOMEM;
      j->last_s = now;
      j->n_out += b->out.n_tokens;
      for (int t = 0; t < b->out.n_tokens; t++)
        if (lmc_samples_add(&b->arrivals, now)) return LM_ENOMEM;
    }
    if (b->out.finished) {
      j->finished = 1;
      j->done_s = now;
      if (b->out.finish_reason == LM_FINISH_ERROR)
        return lm_errf(b->err, LM_EINVAL, "bench: a request failed: %s", b->out.error);
    }
  }
  return LM_OK;
}

static int all_done(const struct job *jobs, int n) {
  for (int i = 0; i < n; i++)
    if (!jobs[i].finished) return 0;
  return 1;
}

static void jobs_release(struct job *jobs, int n) {
  for (int i = 0; i < n; i++) {
    lm_request_release(jobs[i].r);
    jobs[i].r = NULL;
    free(jobs[i].prompt);
    jobs[i].prompt = NULL;
  }
}

static int jobs_make(struct bench *b, struct job *jobs, int n, int prompt_len, int max_tokens) {
  for (int i = 0; i < n; i++) {
    jobs[i] = (struct job){.n_prompt = prompt_len, .max_tokens = max_tokens};
    if (!(jobs[i].prompt = malloc((size_t)prompt_len * sizeof(int32_t))))
      return lm_errf(b->err, LM_ENOMEM, "bench: out of memory");
    fill_random(b, jobs[i].prompt, prompt_len);
  }
  return LM_OK;
}

/* Drains jobs[0, n) until all have finished. */
static int wait_done(struct bench *b, struct job *jobs, int n) {
  while (!all_done(jobs, n)) {
    lm_cli_wait(&b->w);
    int rc = drain_all(b, jobs, n);
    if (rc != LM_OK) return rc;
  }
  return LM_OK;
}

/* Runs jobs[0, n) submitted together until all finish. */
static int run_together(struct bench *b, struct job *jobs, int n) {
  int rc;
  for (int i = 0; i < n; i++)
    if ((rc = job_submit(b, &jobs[i])) != LM_OK) return rc;
  return wait_done(b, jobs, n);
}

/* ---- reporting ------------------------------------------------------------ */

struct result {
  char name[32];
  int concurrency, n_requests;
  long prompt_tokens, output_tokens;
  double wall_s, out_tps, total_tps, decode_tps;
  double ttft[3], itl[3]; /* p50, p90, p99 in ms */
  double hit_rate, kv_peak;
  int waiting_peak;          /* most requests waiting at once */
  long steps, limited_steps; /* engine steps; of those, max_decode_slowdown shortened */
  long probe_steps;          /* steps whose decodes ran alone while prompt tokens waited */
  long layered_steps;        /* steps that ran a prompt chunk over some of the layers */
};

static void summarize(struct bench *b, const struct job *jobs, int n, double t0, double t1,
                      const struct lm_engine_stats *s0, const struct lm_engine_stats *s1,
                      struct result *r) {
  r->n_requests = n;
  r->prompt_tokens = r->output_tokens = 0;
  double last_first = 0, first_done = t1;
  for (int i = 0; i < n; i++) {
    r->prompt_tokens += jobs[i].n_prompt;
    r->output_tokens += jobs[i].n_out;
    if (jobs[i].first_s > last_first) last_first = jobs[i].first_s;
    if (jobs[i].done_s > 0 && jobs[i].done_s < first_done) first_done = jobs[i].done_s;
  }
  r->wall_s = t1 - t0;
  r->out_tps = (double)r->output_tokens / r->wall_s;
  r->total_tps = (double)(r->output_tokens + r->prompt_tokens) / r->wall_s;
  /* decode: tokens received while every request was decoding (after the
   * last first token, up to the first finish); NAN when there was no such
   * time (the budget left the last prompt waiting until others had ended) */
  long in_window = 0;
  for (size_t i = 0; i < b->arrivals.n; i++)
    in_window += b->arrivals.v[i] > last_first && b->arrivals.v[i] <= first_done;
  r->decode_tps = first_done > last_first ? (double)in_window / (first_done - last_first) : NAN;
  struct lmc_summary t, l;
  lmc_samples_summarize(&b->ttft, &t);
  lmc_samples_summarize(&b->itl, &l);
  double tq[3] = {t.p50, t.p90, t.p99}, lq[3] = {l.p50, l.p90, l.p99};
  for (int i = 0; i < 3; i++) {
    r->ttft[i] = tq[i] * 1e3;
    r->itl[i] = lq[i] * 1e3;
  }
  uint64_t qs = s1->prefix_cache_queries - s0->prefix_cache_queries;
  r->hit_rate = qs ? (double)(s1->prefix_cache_hits - s0->prefix_cache_hits) / (double)qs : 0;
  r->kv_peak = s1->kv_blocks_total ? (double)b->kv_peak / s1->kv_blocks_total : 0;
  r->waiting_peak = b->waiting_peak;
  r->steps = (long)(s1->steps - s0->steps);
  r->limited_steps = (long)(s1->slowdown_limited_steps - s0->slowdown_limited_steps);
  r->probe_steps = (long)(s1->decode_probe_steps - s0->decode_probe_steps);
  r->layered_steps = (long)(s1->layered_steps - s0->layered_steps);
}

static void print_result(const struct bench_opts *o, const struct result *r) {
  char dec[32];
  if (o->json) {
    if (isnan(r->decode_tps))
      snprintf(dec, sizeof(dec), "null");
    else
      snprintf(dec, sizeof(dec), "%.2f", r->decode_tps);
    printf("{\"workload\": \"%s\", \"concurrency\": %d, \"requests\": %d, \"prompt_tokens\": %ld, "
           "\"output_tokens\": %ld, \"wall_s\": %.3f, \"output_tok_s\": %.2f, "
           "\"total_tok_s\": %.2f, \"decode_tok_s\": %s, \"ttft_ms\": [%.1f, %.1f, %.1f], "
           "\"itl_ms\": [%.2f, %.2f, %.2f], \"prefix_hit_rate\": %.3f, \"kv_peak\": %.3f, "
           "\"steps\": %ld, \"slowdown_limited_steps\": %ld, \"decode_probe_steps\": %ld, "
           "\"layered_steps\": %ld}\n",
           r->name, r->concurrency, r->n_requests, r->prompt_tokens, r->output_tokens, r->wall_s,
           r->out_tps, r->total_tps, dec, r->ttft[0], r->ttft[1], r->ttft[2], r->itl[0], r->itl[1],
           r->itl[2], r->hit_rate, r->kv_peak, r->steps, r->limited_steps, r->probe_steps,
           r->layered_steps);
  } else {
    /* n/a: no time when every request was decoding */
    if (isnan(r->decode_tps))
      snprintf(dec, sizeof(dec), "n/a");
    else
      snprintf(dec, sizeof(dec), "%.1f", r->decode_tps);
    printf("%-12s c=%-3d n=%-3d out %6ld tok  %7.1f out tok/s  %7.1f total tok/s  decode %7s "
           "tok/s | TTFT ms p50 %8.1f p90 %8.1f p99 %8.1f | ITL ms p50 %7.1f p90 %7.1f p99 %7.1f "
           "| hit %.2f  KV peak %.2f | steps %ld, %ld limited, %ld probes, %ld layered\n",
           r->name, r->concurrency, r->n_requests, r->output_tokens, r->out_tps, r->total_tps, dec,
           r->ttft[0], r->ttft[1], r->ttft[2], r->itl[0], r->itl[1], r->itl[2], r->hit_rate,
           r->kv_peak, r->steps, r->limited_steps, r->probe_steps, r->layered_steps);
  }
  fflush(stdout);
}

static void reset(struct bench *b) {
  b->ttft.n = b->itl.n = b->arrivals.n = 0;
  b->kv_peak = b->waiting_peak = 0;
}

/* The end of a phase that began at t0 with the engine's counters at s0:
 * its summary over jobs[0, n), with their TTFTs only (others' first
 * tokens came in the phase too), into *r. */
static int phase_result(struct bench *b, const struct job *jobs, int n, double t0,
                        const struct lm_engine_stats *s0, const char *name, int concurrency,
                        struct result *r) {
  struct lm_engine_stats s1;
  double t1 = lm_now_s();
  lm_engine_get_stats(b->e, &s1);
  b->ttft.n = 0;
  for (int i = 0; i < n; i++)
    if (lmc_samples_add(&b->ttft, jobs[i].first_s - jobs[i].submit_s))
      return lm_errf(b->err, LM_ENOMEM, "bench: out of memory");
  snprintf(r->name, sizeof(r->name), "%s", name);
  r->concurrency = concurrency;
  summarize(b, jobs, n, t0, t1, s0, &s1, r);
  return LM_OK;
}

/* ---- workloads ------------------------------------------------------------- */

static int fixed(struct bench *b, const struct bench_opts *o, int conc, struct result *r) {
  struct job *jobs = calloc((size_t)conc, sizeof(*jobs));
  struct lm_engine_stats s0;
  int rc = LM_ENOMEM;
  if (!jobs) return lm_errf(b->err, rc, "bench: out of memory");
  reset(b);
  b->itl_on = 1;
  if ((rc = jobs_make(b, jobs, conc, (int)o->prompt_len, (int)o->output_len)) != LM_OK) goto out;
  lm_engine_get_stats(b->e, &s0);
  double t0 = lm_now_s();
  if ((rc = run_together(b, jobs, conc)) == LM_OK)
    rc = phase_result(b, jobs, conc, t0, &s0, "fixed", conc, r);
out:
  jobs_release(jobs, conc);
  free(jobs);
  return rc;
}

/* TTFT p50 of prompts never seen, then of prompts sharing a cached
 * prefix, one request at a time. */
static int prefix(struct bench *b, const struct bench_opts *o, struct result *cold,
                  struct result *warm) {
  enum { N_COLD = 3, N_WARM = 8 };
  int plen = (int)o->prefix_len, slen = 64, out_len = 8;
  struct job jobs[N_COLD + N_WARM] = {{.n_out = 0}};
  struct lm_engine_stats s0;
  int rc = jobs_make(b, jobs, N_COLD + N_WARM, plen + slen, out_len);
  if (rc != LM_OK) goto out;
  for (int i = N_COLD + 1; i < N_COLD + N_WARM; i++) /* the shared prefix: job N_COLD's */
    memcpy(jobs[i].prompt, jobs[N_COLD].prompt, (size_t)plen * sizeof(int32_t));
  for (int phase = 0; phase < 2; phase++) {
    int first = phase ? N_COLD + 1 : 0, n = phase ? N_WARM - 1 : N_COLD + 1;
    struct result *r = phase ? warm : cold;
    reset(b);
    b->itl_on = 0;
    lm_engine_get_stats(b->e, &s0);
    double t0 = lm_now_s();
    for (int i = first; i < first + n; i++)
      if ((rc = run_together(b, &jobs[i], 1)) != LM_OK) goto out;
    if ((rc = phase_result(b, &jobs[first], n, t0, &s0, phase ? "prefix-warm" : "prefix-cold", 1,
                           r)) != LM_OK)
      goto out;
  }
out:
  jobs_release(jobs, N_COLD + N_WARM);
  return rc;
}

/* The decodes beside the long prompt are a steady population, as in a
 * server: each lives LONG_DECODE_LIFE output tokens over a context of
 * long_decode_len tokens plus its age, their ages spread evenly, and one
 * that ends is replaced by a new one over the same context (its prompt's
 * blocks still cached). So their contexts, and their own step, stay the
 * same from before the long prompt arrives to after it: the ITL gate
 * measures what the prompt costs them, not their own growth (a fixed set
 * of decodes of 1024 tokens grows by a sixth over the prompt's prefill
 * on the CPU backend, and their own step nearly as much). */
#define LONG_DECODE_LIFE 256

/* Decode i of n starts at age i * LIFE / n: its prompt holds that many
 * tokens past the common length, and it has the rest of its life to go. */
static int long_decode_age(int i, int n) {
  return (int)((long)i * LONG_DECODE_LIFE / n);
}

/* Sends a finished job again over its first n_prompt prompt tokens. */
static int job_restart(struct bench *b, struct job *j, int n_prompt, int max_tokens) {
  lm_request_release(j->r);
  j->r = NULL;
  j->n_prompt = n_prompt;
  j->max_tokens = max_tokens;
  return job_submit(b, j);
}

/* Drains jobs[0, n) until count more output tokens have come (every
 * token lands in b->arrivals), the ITL samples cleared first (afterwards
 * they are the wait's); a decode of the first nd that ends starts again,
 * over its first plen + 1 prompt tokens for the rest of a life: with plen
 * a whole number of blocks (1024 is 64) all but the last token are cached,
 * and the one left enters a step as a decode does, not as a prompt chunk
 * waiting behind the long prompt's. Stops early, with LM_OK, once
 * *until_done finishes. */
static int run_tokens(struct bench *b, struct job *jobs, int n, int nd, int plen, size_t count,
                      const struct job *until_done) {
  size_t start = b->arrivals.n;
  int rc;
  b->itl.n = 0;
  while (b->arrivals.n - start < count && !(until_done && until_done->finished)) {
    lm_cli_wait(&b->w);
    if ((rc = drain_all(b, jobs, n)) != LM_OK) return rc;
    for (int i = 0; i < nd; i++) {
      if (!jobs[i].finished) continue;
      if ((rc = job_restart(b, &jobs[i], plen + 1, LONG_DECODE_LIFE - 1)) != LM_OK) return rc;
      b->replaced++;
    }
  }
  return LM_OK;
}

/* The nd decodes' ITL p50 in ms, into *p50_ms, over 16 tokens each after
 * settle more each (the samples are sorted in place). */
static int decodes_itl_p50(struct bench *b, struct job *jobs, int nd, int plen, int settle,
                           double *p50_ms) {
  struct lmc_summary sum;
  int rc = run_tokens(b, jobs, nd, nd, plen, (size_t)settle * nd, NULL);
  if (rc != LM_OK || (rc = run_tokens(b, jobs, nd, nd, plen, 16 * (size_t)nd, NULL)) != LM_OK)
    return rc;
  lmc_samples_summarize(&b->itl, &sum);
  *p50_ms = sum.p50 * 1e3;
  return LM_OK;
}

/* Short requests that arrive while a long prompt is prefilled beside the
 * decodes: a third long prompt, never seen, then LONG_ARRIVALS requests
 * of prompt_len fresh tokens (2 to generate), one each time the decodes
 * have taken 8 more tokens apiece. Once they have all finished the long
 * prompt is aborted; *during says whether it had its first token yet.
 * jobs: [decodes..., long prompt, arrivals...]; their TTFTs go to *r. */
#define LONG_ARRIVALS 4

static int long_arrivals(struct bench *b, struct job *jobs, int nd, int plen, struct result *r,
                         int *during) {
  struct job *lp = &jobs[nd], *arr = &jobs[nd + 1];
  int n = nd + 1 + LONG_ARRIVALS, rc;
  struct lm_engine_stats s0;
  reset(b);
  b->itl_on = 0;
  lm_engine_get_stats(b->e, &s0);
  double t0 = lm_now_s();
  if ((rc = job_submit(b, lp)) != LM_OK) return rc;
  for (int i = 0; i < LONG_ARRIVALS; i++)
    if ((rc = run_tokens(b, jobs, n, nd, plen, 8 * (size_t)nd, NULL)) != LM_OK ||
        (rc = job_submit(b, &arr[i])) != LM_OK)
      return rc;
  while (!all_done(arr, LONG_ARRIVALS))
    if ((rc = run_tokens(b, jobs, n, nd, plen, 1, NULL)) != LM_OK) return rc;
  /* whether the long prompt was still being prefilled when the last
   * arrival had finished */
  *during = lp->n_out == 0;
  rc = phase_result(b, arr, LONG_ARRIVALS, t0, &s0, "long-arrive", n, r);
  if (!lp->finished) lm_request_abort(lp->r);
  return rc;
}

/* The long prompt j alone, into *r. */
static int long_alone(struct bench *b, struct job *j, struct result *r, const char *name) {
  struct lm_engine_stats s0;
  reset(b);
  b->itl_on = 0;
  lm_engine_get_stats(b->e, &s0);
  double t0 = lm_now_s();
  int rc = run_together(b, j, 1);
  return rc != LM_OK ? rc : phase_result(b, j, 1, t0, &s0, name, 1, r);
}

/* The long prompt alone, then arriving while decodes run, then short
 * requests arriving while another runs (long_arrivals), then a fourth
 * long prompt alone again once the decodes have ended: the prompt alone
 * is timed on both sides of the rest, so a machine whose speed drifts
 * over the minutes between moves both alike. The decodes' ITL p50 before
 * the prompt arrives goes to itl_p50[0], and after its prefill to
 * itl_p50[1]; their ITLs while it prefills go to during->itl. The long
 * prompt's TTFT is ttft[0] of alone[0] (before), alone[1] (after) and
 * during. */
static int long_prefill(struct bench *b, const struct bench_opts *o, struct result alone[2],
                        struct result *during, struct result *arrive, int *arrive_during,
                        double itl_p50[2]) {
  int nd = (int)o->long_decodes, llen = (int)o->long_len, plen = (int)o->long_decode_len;
  /* [decodes..., third long prompt, arrivals..., long alone twice, long] */
  int n = nd + LONG_ARRIVALS + 4;
  struct job *jobs = calloc((size_t)n, sizeof(*jobs));
  struct lm_engine_stats s0;
  int rc = LM_ENOMEM;
  if (!jobs) return lm_errf(b->err, rc, "bench: out of memory");
  if ((rc = jobs_make(b, jobs, nd, plen + LONG_DECODE_LIFE, 1)) != LM_OK ||
      (rc = jobs_make(b, &jobs[nd], 1, llen, 1)) != LM_OK ||
      (rc = jobs_make(b, &jobs[nd + 1], LONG_ARRIVALS, (int)o->prompt_len, 2)) != LM_OK ||
      (rc = jobs_make(b, &jobs[n - 3], 3, llen, 1)) != LM_OK)
    goto out;
  struct job *la = &jobs[n - 3], *ld = &jobs[n - 1];

  /* The decodes' prompts run once first, for one token each, and stay in
   * the prefix cache: sent again, every decode starts within a step or
   * two at its age's context, rather than over the hundreds of steps
   * their prompts would take to enter beside the first ones' decodes. */
  for (int i = 0; i < nd; i++)
    jobs[i].n_prompt = plen + long_decode_age(i, nd);
  if ((rc = run_together(b, jobs, nd)) != LM_OK) goto out;

  if ((rc = long_alone(b, la, &alone[0], "long-alone")) != LM_OK) goto out;

  reset(b);
  b->itl_on = 1;
  for (int i = 0; i < nd; i++)
    if ((rc = job_restart(b, &jobs[i], jobs[i].n_prompt,
                          LONG_DECODE_LIFE - long_decode_age(i, nd))) != LM_OK)
      goto out;
  /* 16 tokens a decode to settle, the next 16 give the decode-only ITL;
   * then the long prompt comes */
  if ((rc = decodes_itl_p50(b, jobs, nd, plen, 16, &itl_p50[0])) != LM_OK) goto out;
  reset(b);
  lm_engine_get_stats(b->e, &s0);
  double t0 = lm_now_s();
  /* the ITL samples are the decodes' while it ran */
  if ((rc = job_submit(b, ld)) != LM_OK ||
      (rc = run_tokens(b, jobs, n, nd, plen, SIZE_MAX, ld)) != LM_OK ||
      (rc = phase_result(b, ld, 1, t0, &s0, "long-during", nd + 1, during)) != LM_OK)
    goto out;
  /* the decodes alone again: 16 tokens a decode after 4 that may still
   * have shared a step with the prompt's last chunk */
  if ((rc = decodes_itl_p50(b, jobs, nd, plen, 4, &itl_p50[1])) != LM_OK ||
      (rc = long_arrivals(b, jobs, nd, plen, arrive, arrive_during)) != LM_OK)
    goto out;
  /* the decodes end (the third long prompt was aborted), then the prompt
   * runs alone again */
  for (int i = 0; i < nd; i++)
    if (jobs[i].r && !jobs[i].finished) lm_request_abort(jobs[i].r);
  if ((rc = wait_done(b, jobs, nd + 1)) != LM_OK) goto out;
  rc = long_alone(b, &la[1], &alone[1], "long-alone-after");
out:
  for (int i = 0; i < n; i++)
    if (jobs[i].r && !jobs[i].finished) lm_request_abort(jobs[i].r);
  jobs_release(jobs, n);
  free(jobs);
  return rc;
}

/* ---- the command ----------------------------------------------------------- */

static int parse_opts(int argc, char **argv, struct bench_opts *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--json")) {
      o->json = 1;
      continue;
    } else if (!v) {
      fprintf(stderr, "lmserve bench: unknown or incomplete flag '%s'\n%s", a, usage);
      return -1;
    } else if (!strcmp(a, "--model")) {
      o->model = v;
    } else if (!strcmp(a, "--only")) {
      o->only = v;
    } else if (!strcmp(a, "--threads")) {
      bad = lm_cli_int(a, v, 0, 1024, &o->threads);
    } else if (!strcmp(a, "--prompt-len")) {
      bad = lm_cli_int(a, v, 1, 1 << 20, &o->prompt_len);
    } else if (!strcmp(a, "--output-len")) {
      bad = lm_cli_int(a, v, 2, 1 << 20, &o->output_len);
    } else if (!strcmp(a, "--prefix-len")) {
      bad = lm_cli_int(a, v, 16, 1 << 20, &o->prefix_len);
    } else if (!strcmp(a, "--long-len")) {
      bad = lm_cli_int(a, v, 16, 1 << 20, &o->long_len);
    } else if (!strcmp(a, "--long-decodes")) {
      bad = lm_cli_int(a, v, 1, 256, &o->long_decodes);
    } else if (!strcmp(a, "--long-decode-len")) {
      bad = lm_cli_int(a, v, 1, 1 << 20, &o->long_decode_len);
    } else if (!strcmp(a, "--max-batched-tokens")) {
      bad = lm_cli_int(a, v, 1, 1 << 20, &o->budget);
    } else if (!strcmp(a, "--seed")) {
      bad = lm_cli_int(a, v, 0, 0x7fffffffL, &o->seed);
    } else if (!strcmp(a, "--backend")) {
      o->backend = v;
      if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda")) {
        fprintf(stderr, "lmserve bench: --backend takes auto, cpu or cuda, not '%s'\n", v);
        return -1;
      }
    } else if (!strcmp(a, "--gpu-memory-utilization")) {
      bad = lm_cli_float(a, v, 0.01, 1, &o->gpu_memory_utilization);
    } else if (!strcmp(a, "--kv-cache-dtype")) {
      o->kv_dtype = v;
    } else if (!strcmp(a, "--gemm")) {
      o->gemm = v;
    } else if (!strcmp(a, "--max-decode-slowdown")) {
      bad = lm_cli_slowdown(a, v, &o->slowdown);
    } else if (!strcmp(a, "--layered-prefill")) {
      bad = lm_cli_on_off(a, v, &o->layered);
    } else {
      fprintf(stderr, "lmserve bench: unknown flag '%s'\n%s", a, usage);
      return -1;
    }
    if (bad) return -1;
    i++;
  }
  return 0;
}

static void gate(const struct bench_opts *o, const char *name, double value, double limit,
                 int at_least, int *all) {
  int pass = at_least ? value >= limit : value <= limit; /* NAN (not measured) fails */
  *all &= pass;
  if (o->json && isnan(value))
    printf("{\"gate\": \"%s\", \"value\": null, \"limit\": %.3f, \"pass\": false}\n", name, limit);
  else if (o->json)
    printf("{\"gate\": \"%s\", \"value\": %.3f, \"limit\": %.3f, \"pass\": %s}\n", name, value,
           limit, pass ? "true" : "false");
  else
    printf("gate %-44s %8.3f %s %6.3f  %s\n", name, value, at_least ? ">=" : "<=", limit,
           pass ? "PASS" : "FAIL");
}

static int want(const struct bench_opts *o, const char *w) {
  return !o->only || !strcmp(o->only, w);
}

/* Bytes one sequence's decode step reads on the GPU beyond the weights:
 * K and V of every layer, bf16 in the pool, for each token of context. */
static double gpu_kv_token_bytes(const struct lm_config *c) {
  return 2.0 * c->n_layers * c->n_kv_heads * c->head_dim * 2;
}

int lm_cmd_bench(int argc, char **argv) {
  struct bench_opts o = {.backend = "cpu",
                         .prefix_len = 2048,
                         .long_len = 8192,
                         .long_decodes = 32,
                         .long_decode_len = 1024,
                         .seed = 1,
                         .slowdown = -1,
                         .layered = -1};
  char dir_buf[4096], err[LM_ERR_LEN], gpu_name[256] = "?";
  struct bench b = {.w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER}};
  int rc = 1, all = 1, cuda = 0;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help")) {
      fputs(usage, stdout);
      return 0;
    }
  if (parse_opts(argc, argv, &o) != 0) return 2;
  if (o.only && !want(&o, "fixed") && !want(&o, "prefix") && !want(&o, "long")) {
    fprintf(stderr, "lmserve bench: --only takes fixed, prefix or long\n");
    return 2;
  }
  lmc_rng_seed(&b.rng, (unsigned long long)o.seed);

  /* The backend the engine will pick, decided as lm_backend_create does,
   * so the GPU's bandwidth is measured before the engine holds its memory.
   * --backend cpu makes no CUDA call at all. */
  if (strcmp(o.backend, "cpu")) {
    char why[256] = "";
    cuda = lm_cuda_device_count(why, sizeof(why)) > 0;
    if (!cuda && !strcmp(o.backend, "cuda")) {
      fprintf(stderr, "lmserve bench: backend \"cuda\": no usable GPU (%s)\n", why);
      goto out;
    }
  }
  if (!o.prompt_len) o.prompt_len = cuda ? 512 : 128;
  if (!o.output_len) o.output_len = cuda ? 256 : 192;
  /* serve's defaults (engine.h), so the bench measures what is served */
  if (!o.budget) o.budget = cuda ? 2048 : 512;

  double peak_gflops = 0, amx_gflops = 0, read_gbs = 0;
  unsigned long long gpu_bytes = 0;
  if (cuda) {
    /* 4 GiB: far beyond the L2 cache, so the figure is the DRAM's */
    read_gbs = lm_cuda_read_gbs((size_t)4 << 30, 5, err, sizeof(err));
    if (!(read_gbs > 0)) {
      fprintf(stderr, "lmserve bench: %s\n", err);
      goto out;
    }
    lm_cuda_device_info(gpu_name, sizeof(gpu_name), &gpu_bytes);
  } else if (__builtin_cpu_supports("avx512f")) {
    /* the FMA peak first, before the engine's threads start */
    lm_pool *pool = lm_pool_create((int)o.threads);
    if (pool) peak_gflops = lm_bench_fma_gflops(pool);
    if (pool) amx_gflops = lm_bench_amx_gflops(pool);
    lm_pool_destroy(pool);
  }

  const char *dir = lm_cli_model_dir(o.model, dir_buf, sizeof(dir_buf));
  struct lm_engine_config cfg;
  lm_engine_config_init(&cfg);
  cfg.model_dir = dir;
  cfg.backend = o.backend;
  cfg.kv_cache_dtype = o.kv_dtype;
  cfg.backend_cfg.n_threads = (int)o.threads;
  cfg.backend_cfg.gemm = o.gemm;
  if (o.gpu_memory_utilization > 0) cfg.gpu_memory_utilization = (float)o.gpu_memory_utilization;
  cfg.max_num_batched_tokens = (int)o.budget;
  if (o.slowdown >= 0) cfg.max_decode_slowdown = o.slowdown;
  if (o.layered >= 0) cfg.layered_prefill = o.layered;
  cfg.max_model_len =
      (int)(o.long_len + 64 > o.prefix_len + 128 ? o.long_len + 64 : o.prefix_len + 128);
  if (cfg.max_model_len < o.long_decode_len + LONG_DECODE_LIFE)
    cfg.max_model_len = (int)(o.long_decode_len + LONG_DECODE_LIFE);
  cfg.max_undrained_tokens = 1 << 20;
  if (cuda) {
    /* n_kv_blocks and kv_cache_bytes stay 0: the pool takes what the
     * memory share leaves after weights and activations, as in serving */
    cfg.max_num_seqs = 256;
  } else {
    /* KV for the largest workload at once (host memory: keep it tight):
     * 64 fixed requests, or a long prompt beside its decodes and the short
     * arrivals with the one before cached; then room for the prefix
     * workload's cached prefixes */
    long fixed_tokens = 64 * (o.prompt_len + o.output_len + cfg.block_size);
    long long_tokens = 2 * o.long_len +
                       o.long_decodes * (o.long_decode_len + LONG_DECODE_LIFE + cfg.block_size) +
                       LONG_ARRIVALS * (o.prompt_len + 2 + cfg.block_size);
    long tokens = (fixed_tokens > long_tokens ? fixed_tokens : long_tokens) + 4 * o.prefix_len;
    cfg.n_kv_blocks = (int)((tokens + cfg.block_size - 1) / cfg.block_size);
  }
  if (lm_engine_create(&cfg, &b.e, err) != LM_OK) {
    lm_cli_load_error(dir, err);
    goto out;
  }
  struct lm_engine_info info;
  lm_engine_get_info(b.e, &info);
  if ((strcmp(info.backend, "cuda") == 0) != cuda) {
    fprintf(stderr, "lmserve bench: the engine runs on %s, expected %s\n", info.backend,
            cuda ? "cuda" : "cpu");
    goto out;
  }
  b.vocab = info.vocab_size;
  double params = lm_config_matmul_params(lm_engine_model_config(b.e));
  double decode_weight_bytes = 0;
  if (cuda) {
    /* the engine keeps its model to itself; loading it again only maps the
     * files a second time */
    lm_model *m = NULL;
    if (lm_model_load(dir, &m, err) != LM_OK) {
      lm_cli_load_error(dir, err);
      goto out;
    }
    decode_weight_bytes = (double)lm_model_decode_bytes(m);
    lm_model_free(m);
    if (o.json)
      printf("{\"model\": \"%s\", \"dtype\": \"%s\", \"backend\": \"%s\", \"parameters\": %.0f, "
             "\"fma_peak_gflops\": null, \"read_gbs\": %.1f, \"max_num_batched_tokens\": %d, "
             "\"kv_blocks\": %d, \"kv_dtype\": \"%s\"}\n",
             dir, info.dtype, info.backend, params, read_gbs, info.max_num_batched_tokens,
             info.n_kv_blocks, info.kv_dtype);
    else
      printf("model %s (%s, %.0f M matmul parameters, %.0f MB of weights read per token), "
             "backend %s on %s (%.1f GiB), read bandwidth %.1f GB/s, max_num_batched_tokens %d, "
             "%d KV blocks of %d (%s)\n",
             dir, info.dtype, params / 1e6, decode_weight_bytes / 1e6, info.backend, gpu_name,
             (double)gpu_bytes / (1 << 30), read_gbs, info.max_num_batched_tokens, info.n_kv_blocks,
             info.block_size, info.kv_dtype);
  } else if (o.json) {
    printf("{\"model\": \"%s\", \"dtype\": \"%s\", \"parameters\": %.0f, \"fma_peak_gflops\": "
           "%.1f, \"amx_peak_gflops\": %.1f, \"max_num_batched_tokens\": %d, \"kv_blocks\": %d, "
           "\"kv_dtype\": \"%s\"}\n",
           dir, info.dtype, params, peak_gflops, amx_gflops, info.max_num_batched_tokens,
           info.n_kv_blocks, info.kv_dtype);
  } else {
    printf("model %s (%s, %.0f M matmul parameters), FMA peak %.1f GFLOP/s, AMX bf16 peak "
           "%.1f GFLOP/s (0: none), max_num_batched_tokens %d, %d KV blocks of %d (%s)\n",
           dir, info.dtype, params / 1e6, peak_gflops, amx_gflops, info.max_num_batched_tokens,
           info.n_kv_blocks, info.block_size, info.kv_dtype);
  }
  fflush(stdout);

  struct result r, c1 = {.n_requests = 0};
  long total_out = 0;
  double decode32 = NAN; /* NAN too when the c=32 run had no decode window */
  if (want(&o, "fixed")) {
    static const int cpu_concs[] = {1, 8, 32, 64}, gpu_concs[] = {1, 16, 64, 256};
    const int *concs = cuda ? gpu_concs : cpu_concs;
    for (int i = 0; i < 4; i++) {
      if (fixed(&b, &o, concs[i], &r) != LM_OK) goto fail;
      print_result(&o, &r);
      total_out += r.output_tokens;
      if (concs[i] == 32) decode32 = r.decode_tps;
      if (concs[i] == 1) c1 = r;
    }
  }
  struct result cold = {.n_requests = 0}, warm = {.n_requests = 0};
  if (want(&o, "prefix")) {
    if (prefix(&b, &o, &cold, &warm) != LM_OK) goto fail;
    print_result(&o, &cold);
    print_result(&o, &warm);
    total_out += cold.output_tokens + warm.output_tokens;
  }
  struct result alone[2] = {{.n_requests = 0}, {.n_requests = 0}}, during = {.n_requests = 0},
                arrive = {.n_requests = 0};
  double itl_p50[2] = {0, 0}; /* the decodes alone, before the long prompt and after it */
  int arrive_during = 0;      /* the arrivals finished while the long prompt was prefilled */
  double alone_mean = 0;      /* ms: the long prompt alone, before the rest and after */
  if (want(&o, "long")) {
    if (long_prefill(&b, &o, alone, &during, &arrive, &arrive_during, itl_p50) != LM_OK) goto fail;
    alone_mean = (alone[0].ttft[0] + alone[1].ttft[0]) / 2;
    print_result(&o, &alone[0]);
    print_result(&o, &during);
    print_result(&o, &arrive);
    print_result(&o, &alone[1]);
    total_out += alone[0].output_tokens + during.output_tokens + arrive.output_tokens +
                 alone[1].output_tokens;
  }
  if (o.json)
    printf("{\"output_tokens_total\": %ld}\n", total_out);
  else
    printf("output tokens in all: %ld\n", total_out);

  if (!cuda && want(&o, "fixed")) {
    /* the gate's roofline is the FMA's; where bf16 matmuls run on AMX
     * tiles their own peak is far above it, and a c=32 step is bound by
     * reading the weights and the KV instead */
    if (amx_gflops > 0 && !o.json)
      printf("decode c=32: %.1f GFLOP/s, %.3f of the AMX bf16 peak\n", 2 * params * decode32 / 1e9,
             2 * params * decode32 / (amx_gflops * 1e9));
    gate(&o, "decode c=32 fraction of compute roofline",
         2 * params * decode32 / (peak_gflops * 1e9), 0.5, 1, &all);
  }
  if (cuda && c1.n_requests > 0) {
    /* output token i >= 1 is decoded over prompt + i tokens of context:
     * over the decode window that averages to prompt + outputs / 2 */
    double ctx = ((double)c1.prompt_tokens + (double)c1.output_tokens / 2) / c1.n_requests;
    double bytes = decode_weight_bytes + gpu_kv_token_bytes(lm_engine_model_config(b.e)) * ctx;
    if (!o.json)
      printf("decode c=1: %.1f MB read per token at a mean context of %.0f tokens, %.1f tok/s: "
             "%.1f GB/s of %.1f GB/s\n",
             bytes / 1e6, ctx, c1.decode_tps, bytes * c1.decode_tps / 1e9, read_gbs);
    gate(&o, "decode c=1 fraction of memory roofline", bytes * c1.decode_tps / (read_gbs * 1e9),
         0.7, 1, &all);
  }
  if (want(&o, "prefix"))
    gate(&o, "TTFT p50 cold / cached prefix", cold.ttft[0] / warm.ttft[0], 10, 1, &all);
  if (want(&o, "long")) {
    /* the decodes alone after the prompt show how their own step moved
     * while it prefilled; requests waiting while it ran (the prompt itself
     * for its first step) show whether the decodes' population held. The
     * prompt's own work beside them: its time there less its steps at the
     * mean of the decodes' step before and after, against its time alone */
    double work =
        (during.ttft[0] - (double)during.steps * (itl_p50[0] + itl_p50[1]) / 2) / alone_mean;
    if (o.json)
      printf("{\"long_decode_prompt_len\": %ld, \"long_decode_itl_p50_ms\": [%.3f, %.3f], "
             "\"long_itl_p99_during_over_p50_after\": %.3f, "
             "\"long_prompt_work_beside_over_alone\": %.3f, \"long_waiting_most\": %d, "
             "\"long_decodes_replaced\": %ld, \"long_arrivals_during_prefill\": %s, "
             "\"long_alone_ttft_ms\": [%.1f, %.1f]}\n",
             o.long_decode_len, itl_p50[0], itl_p50[1], during.itl[2] / itl_p50[1], work,
             during.waiting_peak, b.replaced, arrive_during ? "true" : "false", alone[0].ttft[0],
             alone[1].ttft[0]);
    else
      printf("long: the decodes (%ld-token contexts and up, %ld replaced as they ended) alone, "
             "ITL p50 %.1f ms before the prompt and %.1f ms after it (%.2f x); ITL p99 during / "
             "p50 after %.3f; the prompt's work beside them / alone %.2f; requests waiting while "
             "it ran, at most %d\n",
             o.long_decode_len, b.replaced, itl_p50[0], itl_p50[1], itl_p50[1] / itl_p50[0],
             during.itl[2] / itl_p50[1], work, during.waiting_peak);
    if (!o.json) {
      printf("long: the prompt alone took %.1f ms before the rest and %.1f ms after (%.3f x); "
             "the gate takes their mean\n",
             alone[0].ttft[0], alone[1].ttft[0], alone[1].ttft[0] / alone[0].ttft[0]);
      printf("long: %d requests of %ld tokens arriving while another long prompt ran beside the "
             "decodes: TTFT p50 %.1f ms, p99 %.1f ms (%.1f and %.1f decode steps), all done %s "
             "the long prompt's first token\n",
             LONG_ARRIVALS, o.prompt_len, arrive.ttft[0], arrive.ttft[2],
             arrive.ttft[0] / itl_p50[1], arrive.ttft[2] / itl_p50[1],
             arrive_during ? "before" : "after");
    }
    gate(&o, "ITL p99 during long prefill / p50 before", during.itl[2] / itl_p50[0], 2.5, 0, &all);
    gate(&o, "long prefill speed with decodes / alone", alone_mean / during.ttft[0], 0.5, 1, &all);
  }
  if (!o.json) printf("gates: %s\n", all ? "all pass" : "some fail");
  rc = 0;
  goto out;
fail:
  fprintf(stderr, "lmserve bench: %s\n", b.err);
out:
  lm_engine_destroy(b.e);
  lm_output_free(&b.out);
  lmc_samples_free(&b.ttft);
  lmc_samples_free(&b.itl);
  lmc_samples_free(&b.arrivals);
  return rc;
}
