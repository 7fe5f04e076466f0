/* engine_test.c - the engine end to end on a tiny fixture model (CPU):
 * continuous batching with chunked prefill gives every request the same
 * tokens as running it alone (greedy and seeded), with the prefix cache on
 * or off and through preemptions; aborts, releases and thousands of random
 * submits leave the KV pool as it started; submit-time checks name the
 * field; min_tokens masks EOS and penalties count only generated tokens;
 * backpressure holds a request until it is drained and a stalled one is
 * aborted, but never one whose caller drained; destroy with requests in
 * flight leaks nothing; the step time model recovers known costs and the
 * decode slowdown limit splits a prompt beside decodes. Each scenario
 * proves from the engine's counters that it happened.
 *
 * usage: engine_test FIXTURES_DIR [MODEL (qwen3-bf16)] [RANDOM_SUBMITS (2000)] */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/lm.h"
#include "engine/step_model.h"
#include "tests/check.h"

static char model_dir[4096];
static const char *backend = "cpu"; /* argv[4]: the engine on another backend */
static int n_ids = 32000;           /* prompts draw ids from [3, n_ids): ordinary tokens */

/* ---- a request and everything it produced ------------------------------ */

struct job {
  int32_t prompt[1000];
  int n_prompt, max_tokens;
  struct lm_sampling sampling;
  int arrive_step;
  int priority;
  atomic_int notified; /* calls of the notify callback */
  double submit_s;     /* lm_now_s() at submit */
  lm_request *r;
  struct lm_output out;
  int32_t got[128];
  int n_got;
  char text[4096];
  size_t text_len;
  int finished;
  enum lm_finish_reason reason;
  struct lm_usage usage;
};

static void on_output(void *arg) {
  struct job *j = arg;
  atomic_fetch_add(&j->notified, 1);
}

static int job_submit(lm_engine *e, struct job *j, char *err) {
  struct lm_request_params p;
  lm_request_params_init(NULL, &p);
  p.prompt = j->prompt;
  p.n_prompt = j->n_prompt;
  p.max_tokens = j->max_tokens;
  p.sampling = j->sampling;
  p.ignore_eos = 1;
  p.priority = j->priority;
  p.notify = on_output;
  p.notify_arg = j;
  atomic_store(&j->notified, 0);
  j->n_got = 0;
  j->text_len = 0;
  j->finished = 0;
  memset(&j->out, 0, sizeof(j->out));
  j->submit_s = lm_now_s();
  return lm_engine_submit(e, &p, &j->r, err);
}

/* Drains what is ready; returns 1 once the job has finished. */
static int job_poll(struct job *j) {
  if (j->finished) return 1;
  if (lm_request_drain(j->r, &j->out) <= 0) return 0;
  for (int i = 0; i < j->out.n_tokens && j->n_got < 128; i++)
    j->got[j->n_got++] = j->out.token_ids[i];
  if (j->text_len + j->out.text_len < sizeof(j->text)) {
    memcpy(j->text + j->text_len, j->out.text, j->out.text_len);
    j->text_len += j->out.text_len;
  }
  if (j->out.finished) {
    j->finished = 1;
    j->reason = j->out.finish_reason;
    j->usage = j->out.usage;
    lm_output_free(&j->out);
    lm_request_release(j->r);
    j->r = NULL;
  }
  return j->finished;
}

static void nap(void) {
  struct timespec ts = {0, 200 * 1000};
  nanosleep(&ts, NULL);
}

static int job_wait(struct job *j) {
  double t0 = lm_now_s();
  while (!job_poll(j)) {
    if (lm_now_s() - t0 > 120) return 0;
    nap();
  }
  return 1;
}

/* Waits until the engine has nothing left and returns its counters. */
static struct lm_engine_stats settle(lm_engine *e) {
  struct lm_engine_stats s;
  double t0 = lm_now_s();
  do {
    nap();
    lm_engine_get_stats(e, &s);
  } while ((s.busy || s.kv_blocks_used) && lm_now_s() - t0 < 60);
  return s;
}

static int same_output(const struct job *a, const struct job *b) {
  return a->n_got == b->n_got && !memcmp(a->got, b->got, (size_t)a->n_got * sizeof(int32_t)) &&
         a->text_len == b->text_len && !memcmp(a->text, b->text, a->text_len);
}

/* ---- the workload ------------------------------------------------------- */

enum { N_JOBS = 32 };
static struct job ref[N_JOBS]; /* each run alone */

/* 32 requests: three shared system prefixes (so the prefix cache has
 * something to find), short and long prompts, greedy and seeded. */
static void make_jobs(struct job *jobs) {
  int32_t prefix[3][48];
  int prefix_len[3] = {48, 32, 20};
  srand(12345);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < 48; i++)
      prefix[k][i] = 3 + rand() % (n_ids - 3);
  for (int i = 0; i < N_JOBS; i++) {
    struct job *j = &jobs[i];
    memset(j, 0, sizeof(*j));
    int n = 0;
    if (i % 4 != 3) {
      memcpy(j->prompt, prefix[i % 3], (size_t)prefix_len[i % 3] * sizeof(int32_t));
      n = prefix_len[i % 3];
    }
    int tail = i % 5 == 4 ? 80 + rand() % 60 : 3 + rand() % 30;
    for (int t = 0; t < tail; t++)
      j->prompt[n++] = 3 + rand() % (n_ids - 3);
    j->n_prompt = n;
    j->max_tokens = i < 12 ? 40 : 8 + rand() % 30;
    if (i % 2) {
      j->sampling.temperature = 0.8f;
      j->sampling.top_k = 50;
      j->sampling.top_p = 0.9f;
      j->sampling.seed = 1000 + (uint64_t)i;
      if (i % 3 == 0) j->sampling.repetition_penalty = 1.3f;
    }
    j->arrive_step = i < 12 ? i : 12 + (i - 12) * 2 + rand() % 3;
  }
}

static lm_engine *open_engine(int prefix_caching, int batched_tokens, int n_blocks,
                              void (*tweak)(struct lm_engine_config *)) {
  char err[LM_ERR_LEN];
  struct lm_engine_config c;
  lm_engine *e = NULL;
  lm_engine_config_init(&c);
  c.model_dir = model_dir;
  c.backend = backend;
  c.backend_cfg.n_threads = 2;
  c.enable_prefix_caching = prefix_caching;
  c.max_num_batched_tokens = batched_tokens;
  c.max_num_seqs = 40;
  c.max_model_len = 1024;
  c.n_kv_blocks = n_blocks;
  if (tweak) tweak(&c);
  if (lm_engine_create(&c, &e, err) != LM_OK) {
    printf("# engine: %s\n", err);
    return NULL;
  }
  struct lm_engine_info info;
  lm_engine_get_info(e, &info);
  /* the ids above the ordinary vocabulary are special tokens */
  n_ids = info.vocab_size < 150000 ? info.vocab_size : 150000;
  return e;
}

/* Submits the jobs as the engine's step counter passes their arrival
 * step (all at once with by_step 0) and drains them all to the end. */
static int run_batch(lm_engine *e, struct job *jobs, int by_step) {
  char err[LM_ERR_LEN];
  int next = 0, done = 0;
  double t0 = lm_now_s();
  while (done < N_JOBS && lm_now_s() - t0 < 300) {
    struct lm_engine_stats s;
    lm_engine_get_stats(e, &s);
    while (next < N_JOBS && (!by_step || (uint64_t)jobs[next].arrive_step <= s.steps)) {
      if (job_submit(e, &jobs[next], err) != LM_OK) {
        printf("# submit %d: %s\n", next, err);
        return -1;
      }
      next++;
    }
    done = 0;
    for (int i = 0; i < next; i++)
      done += job_poll(&jobs[i]);
    if (done < N_JOBS) nap();
  }
  return done == N_JOBS ? 0 : -1;
}

static int count_same(const struct job *jobs) {
  int same = 0;
  for (int i = 0; i < N_JOBS; i++) {
    if (same_output(&jobs[i], &ref[i]))
      same++;
    else
      printf("# request %d: %d tokens vs %d alone\n", i, jobs[i].n_got, ref[i].n_got);
  }
  return same;
}

static void test_batch_invariance(void) {
  char err[LM_ERR_LEN];
  lm_engine *e = open_engine(0, 32, 0, NULL);
  if (!lm_check(e != NULL, "engine opens on %s", model_dir)) return;
  make_jobs(ref);
  int ok = 1;
  for (int i = 0; i < N_JOBS && ok; i++)
    ok = job_submit(e, &ref[i], err) == LM_OK && job_wait(&ref[i]) &&
         ref[i].reason == LM_FINISH_LENGTH && ref[i].n_got == ref[i].max_tokens;
  lm_check(ok, "32 requests run alone, each to max_tokens");
  static struct job jobs[N_JOBS];
  make_jobs(jobs);
  lm_check(run_batch(e, jobs, 1) == 0, "32 requests arriving at random steps all finish");
  lm_check(count_same(jobs) == N_JOBS,
           "every request's tokens and text batched equal those it got alone");
  int notified = 0;
  for (int i = 0; i < N_JOBS; i++)
    notified += atomic_load(&jobs[i].notified) > 0;
  lm_check(notified == N_JOBS, "every request's notify callback was called");
  struct lm_engine_stats s = settle(e);
  lm_check(s.max_decodes_with_prefill >= 8, "a step mixed %d decodes with a prefill chunk (>= 8)",
           s.max_decodes_with_prefill);
  lm_check(s.max_prefill_steps >= 3, "a prompt was split over %d steps (>= 3)",
           s.max_prefill_steps);
  lm_check(s.prefix_cache_queries == 0 && s.kv_blocks_cached == 0,
           "with prefix caching off nothing is looked up or cached");
  lm_check(s.kv_blocks_used == 0 && s.kv_blocks_free == s.kv_blocks_total,
           "all %d blocks are free at the end", s.kv_blocks_total);
  lm_check(s.requests_finished == 2 * N_JOBS, "%llu requests finished",
           (unsigned long long)s.requests_finished);
  lm_engine_destroy(e);
}

static void test_prefix_cache(void) {
  lm_engine *e = open_engine(1, 64, 0, NULL);
  if (!lm_check(e != NULL, "engine with the prefix cache opens")) return;
  static struct job jobs[N_JOBS];
  make_jobs(jobs);
  lm_check(run_batch(e, jobs, 0) == 0, "32 requests submitted at once all finish");
  lm_check(count_same(jobs) == N_JOBS,
           "with the prefix cache on, every output equals the one alone");
  int cached = 0;
  for (int i = 0; i < N_JOBS; i++)
    cached += jobs[i].usage.cached_tokens;
  /* the same prompt again: everything but its last block is cached */
  char err[LM_ERR_LEN];
  struct job again = jobs[0];
  int ok = job_submit(e, &again, err) == LM_OK && job_wait(&again);
  lm_check(ok && same_output(&again, &ref[0]) && again.usage.cached_tokens >= again.n_prompt - 16,
           "a repeated prompt finds %d of its %d tokens cached and gives the same output",
           again.usage.cached_tokens, again.n_prompt);
  struct lm_engine_stats s = settle(e);
  lm_check(cached > 0 && s.prefix_cache_hits > 0 && s.prefix_cache_hits <= s.prefix_cache_queries,
           "cached tokens %d in usage, %llu of %llu looked-up tokens hit", cached,
           (unsigned long long)s.prefix_cache_hits, (unsigned long long)s.prefix_cache_queries);
  lm_check(s.kv_blocks_used == 0 && s.kv_blocks_cached > 0 &&
               s.kv_blocks_cached + s.kv_blocks_free == s.kv_blocks_total,
           "at the end no block is used, %d stay cached, %d free", s.kv_blocks_cached,
           s.kv_blocks_free);
  lm_engine_destroy(e);
}

static void test_preemption(void) {
  char err[LM_ERR_LEN];
  lm_engine *e = open_engine(1, 64, 20, NULL);
  if (!lm_check(e != NULL, "engine with a 20-block pool opens")) return;
  static struct job jobs[N_JOBS];
  make_jobs(jobs);
  lm_check(run_batch(e, jobs, 0) == 0, "32 requests on a 20-block pool all finish");
  lm_check(count_same(jobs) == N_JOBS, "through preemptions every output equals the one alone");
  struct lm_engine_stats s = settle(e);
  lm_check(s.preemptions >= 5, "%llu preemptions happened (>= 5)",
           (unsigned long long)s.preemptions);
  lm_check(s.kv_blocks_used == 0, "no block is held at the end");
  struct job big = ref[0];
  big.max_tokens = 20 * 16 - big.n_prompt + 1;
  lm_check(job_submit(e, &big, err) == LM_ERANGE && strstr(err, "blocks"),
           "a request needing more blocks than the pool is refused: %s", err);
  lm_engine_destroy(e);
}

static void small_queue(struct lm_engine_config *c) {
  c->max_num_seqs = 1;
  c->max_waiting = 3;
}

static void held_back(struct lm_engine_config *c) {
  c->max_undrained_tokens = 4;
  c->stall_timeout_s = 2;
}

static struct job simple_job(int n_prompt, int max_tokens, int salt) {
  struct job j;
  memset(&j, 0, sizeof(j));
  for (int i = 0; i < n_prompt; i++)
    j.prompt[i] = 3 + (i * 7919 + salt * 104729) % (n_ids - 3);
  j.n_prompt = n_prompt;
  j.max_tokens = max_tokens;
  return j;
}

/* Waits until the job has produced at least n tokens (draining them). */
static int wait_tokens(struct job *j, int n) {
  double t0 = lm_now_s();
  while (j->n_got < n && !j->finished && lm_now_s() - t0 < 60) {
    job_poll(j);
    nap();
  }
  return j->n_got >= n;
}

static void test_invalid(lm_engine *e) {
  char err[LM_ERR_LEN];
  struct lm_request_params p;
  lm_request *r = NULL;
  int32_t prompt[4] = {1, 2, 3, 4}, bad_prompt[2] = {5, 999999999}, bad_stop = -3;
  static int32_t full_prompt[1024]; /* max_model_len tokens */
  for (int i = 0; i < 1024; i++)
    full_prompt[i] = 100 + i;
  const char *empty_stop[1] = {""};
  struct {
    const char *field;
    int code;
  } cases[] = {
      {"prompt", LM_EINVAL},       {"prompt", LM_EINVAL},     {"temperature", LM_EINVAL},
      {"temperature", LM_EINVAL},  {"top_p", LM_EINVAL},      {"top_k", LM_EINVAL},
      {"top_logprobs", LM_EINVAL}, {"min_p", LM_EINVAL},      {"stop_token_ids", LM_EINVAL},
      {"stop", LM_EINVAL},         {"max_tokens", LM_EINVAL}, {"min_tokens", LM_EINVAL},
      {"max_tokens", LM_ERANGE},   {"request_id", LM_EINVAL}, {"repetition_penalty", LM_EINVAL},
      {"min_tokens", LM_EINVAL},   {"prompt", LM_ERANGE},
  };
  char long_id[400];
  memset(long_id, 'x', sizeof(long_id) - 1);
  long_id[sizeof(long_id) - 1] = '\0';
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    lm_request_params_init(e, &p);
    p.prompt = prompt;
    p.n_prompt = 4;
    p.max_tokens = 4;
    switch (i) {
    case 0: p.n_prompt = 0; break;
    case 1: p.prompt = bad_prompt, p.n_prompt = 2; break;
    case 2: p.sampling.temperature = -1; break;
    case 3: p.sampling.temperature = NAN; break;
    case 4: p.sampling.top_p = 1.5f; break;
    case 5: p.sampling.top_k = -1; break;
    case 6: p.top_logprobs = LM_MAX_TOP_LOGPROBS + 1; break;
    case 7: p.sampling.min_p = NAN; break;
    case 8: p.stop_token_ids = &bad_stop, p.n_stop_token_ids = 1; break;
    case 9: p.stop = empty_stop, p.n_stop = 1; break;
    case 10: p.max_tokens = -1; break;
    case 11: p.min_tokens = 5; break;
    case 12: p.max_tokens = 1021; break;
    case 13: p.request_id = long_id; break;
    case 14: p.sampling.repetition_penalty = -2; break;
    /* max_tokens 0 (up to max_model_len) leaves 1020: min_tokens cannot be met */
    case 15: p.max_tokens = 0, p.min_tokens = 1021; break;
    /* the prompt alone fills max_model_len: the field at fault is the prompt */
    case 16: p.prompt = full_prompt, p.n_prompt = 1024, p.max_tokens = 0; break;
    }
    err[0] = '\0';
    int rc = lm_engine_submit(e, &p, &r, err);
    if (rc == LM_OK) lm_request_release(r); /* wrongly accepted: not left running */
    /* the message starts with the field at fault */
    lm_check(rc == cases[i].code && r == NULL &&
                 !strncmp(err, cases[i].field, strlen(cases[i].field)),
             "case %zu is refused naming %s: %s", i, cases[i].field, err);
  }
}

static void test_abort_release_ids(lm_engine *e) {
  char err[LM_ERR_LEN];
  struct lm_request_params p;
  struct job a = simple_job(40, 100, 1), b = simple_job(30, 100, 2);
  lm_check(job_submit(e, &a, err) == LM_OK && wait_tokens(&a, 3), "a request streams tokens");
  lm_request_abort(a.r);
  int ended = job_wait(&a);
  lm_check(ended && a.reason == LM_FINISH_ABORT && a.n_got < 100,
           "lm_request_abort ends it mid-stream as \"%s\" after %d tokens",
           lm_finish_reason_name(a.reason), a.n_got);
  struct lm_engine_stats s = settle(e);
  lm_check(s.kv_blocks_used == 0, "the aborted request's blocks are free");

  lm_check(job_submit(e, &b, err) == LM_OK && wait_tokens(&b, 2), "another request streams");
  lm_request_release(b.r);
  lm_output_free(&b.out);
  b.r = NULL;
  s = settle(e);
  lm_check(s.kv_blocks_used == 0 && s.num_running == 0,
           "releasing a running request aborts it and frees its blocks");

  /* ids: a live one cannot be reused, an unknown one cannot be aborted */
  lm_request *r1 = NULL, *r2 = NULL;
  int rc;
  int32_t prompt[8] = {11, 12, 13, 14, 15, 16, 17, 18};
  lm_request_params_init(e, &p);
  p.prompt = prompt;
  p.n_prompt = 8;
  p.max_tokens = 200;
  p.request_id = "same-id";
  lm_check(lm_engine_submit(e, &p, &r1, err) == LM_OK && !strcmp(lm_request_id(r1), "same-id"),
           "a request takes the id it was given");
  lm_check(lm_engine_submit(e, &p, &r2, err) == LM_EEXIST && r2 == NULL && strstr(err, "same-id"),
           "a second live request with that id is refused: %s", err);
  lm_check(lm_engine_abort(e, "no-such-id") == LM_ENOENT, "aborting an unknown id: LM_ENOENT");
  lm_check(lm_engine_abort(e, "same-id") == LM_OK, "lm_engine_abort finds the live id");
  struct job j1 = {0};
  j1.r = r1;
  lm_check(job_wait(&j1) && j1.reason == LM_FINISH_ABORT, "aborted by id, it ends as abort");
  lm_check(lm_engine_submit(e, &p, &r2, err) == LM_OK, "the id is free again once it finished");
  p.request_id = NULL;
  lm_request *r3 = NULL;
  rc = lm_engine_submit(e, &p, &r3, err);
  lm_check(rc == LM_OK && r3 && lm_request_id(r3)[0] &&
               strcmp(lm_request_id(r3), lm_request_id(r2)),
           "a request without an id gets a fresh one (%s)", r3 ? lm_request_id(r3) : "");
  lm_request_release(r2);
  lm_request_release(r3);
  s = settle(e);
  lm_check(s.kv_blocks_used == 0, "released requests leave no block used");
}

static void test_backpressure(lm_engine *e) {
  char err[LM_ERR_LEN];
  struct job j = simple_job(20, 30, 3);
  struct lm_engine_stats s;
  int ended;
  if (!lm_check(job_submit(e, &j, err) == LM_OK, "submit a 30-token request")) return;
  /* not drained: the engine stops once more than 4 tokens wait */
  double t0 = lm_now_s();
  do {
    nap();
    lm_engine_get_stats(e, &s);
  } while (s.num_held == 0 && lm_now_s() - t0 < 30);
  uint64_t produced = s.generation_tokens;
  struct timespec ts = {0, 100 * 1000 * 1000};
  nanosleep(&ts, NULL);
  lm_engine_get_stats(e, &s);
  lm_check(s.num_held == 1 && s.generation_tokens == produced && s.kv_blocks_used > 0,
           "an undrained request is held back after 5 tokens and keeps its blocks");
  lm_check(job_wait(&j) && j.reason == LM_FINISH_LENGTH && j.n_got == 30,
           "draining resumes it and it finishes all 30 tokens");

  struct job k = simple_job(20, 30, 4);
  lm_check(job_submit(e, &k, err) == LM_OK, "submit another and never drain it");
  t0 = lm_now_s();
  do {
    nap();
    lm_engine_get_stats(e, &s);
  } while (s.stall_aborts == 0 && lm_now_s() - t0 < 30);
  lm_check(s.stall_aborts == 1, "held past stall_timeout_s it is aborted after %.1f s",
           lm_now_s() - t0);
  ended = job_wait(&k);
  lm_check(ended && k.reason == LM_FINISH_ABORT && k.usage.total_s >= 2,
           "its caller sees \"abort\" and what was made before (%d tokens)", k.n_got);
  s = settle(e);
  lm_check(s.kv_blocks_used == 0, "its blocks are free");
}

/* Thousands of random submits, drains, aborts and releases: the pool ends
 * as it started and every request is accounted for. */
static void test_random_traffic(lm_engine *e, int n_submits) {
  char err[LM_ERR_LEN];
  enum { LIVE = 48 };
  static struct job live[LIVE];
  int used[LIVE] = {0}, accepted = 0, aborted = 0;
  struct lm_engine_stats s0, s;
  lm_engine_get_stats(e, &s0);
  srand(99);
  for (int op = 0; accepted < n_submits; op++) {
    int k = rand() % LIVE, what = rand() % 8;
    struct job *j = &live[k];
    if (used[k] && job_poll(j)) used[k] = 0;
    if (!used[k]) {
      *j = simple_job(1 + rand() % 60, 1 + rand() % 6, op);
      if (job_submit(e, j, err) == LM_OK) used[k] = 1, accepted++;
    } else if (what == 0) {
      lm_request_abort(j->r), aborted++;
    } else if (what == 1) {
      /* LM_ENOENT when it has just finished */
      lm_engine_abort(e, lm_request_id(j->r));
      aborted++;
    } else if (what == 2) {
      lm_output_free(&j->out);
      lm_request_release(j->r);
      used[k] = 0;
    }
    if (op % 16 == 0) nap();
  }
  for (int k = 0; k < LIVE; k++)
    if (used[k]) {
      lm_request_abort(live[k].r);
      job_wait(&live[k]);
    }
  s = settle(e);
  lm_check(aborted > n_submits / 4, "%d requests submitted, %d aborts sent", accepted, aborted);
  lm_check(s.requests_finished - s0.requests_finished == (uint64_t)accepted,
           "every one of them finished");
  lm_check(s.kv_blocks_used == 0 && s.kv_blocks_cached + s.kv_blocks_free == s.kv_blocks_total &&
               s0.kv_blocks_used == 0,
           "pool accounting is back where it started: 0 used, %d cached + %d free of %d",
           s.kv_blocks_cached, s.kv_blocks_free, s.kv_blocks_total);
}

/* Greedy with logprobs and 5 alternatives: each token is its own best
 * alternative, with the same logprob, and the alternatives come best
 * first. */
static void test_logprobs(lm_engine *e) {
  char err[LM_ERR_LEN];
  struct lm_request_params p;
  struct lm_output out = {0};
  lm_request *r = NULL;
  int32_t prompt[6] = {101, 202, 303, 404, 505, 606};
  lm_request_params_init(NULL, &p);
  p.prompt = prompt;
  p.n_prompt = 6;
  p.max_tokens = 6;
  p.logprobs = 1;
  p.top_logprobs = 5;
  if (!lm_check(lm_engine_submit(e, &p, &r, err) == LM_OK, "submit with top_logprobs 5")) return;
  int n = 0, ok = 1, finished = 0;
  double t0 = lm_now_s();
  while (!finished && lm_now_s() - t0 < 60) {
    if (lm_request_drain(r, &out) <= 0) {
      nap();
      continue;
    }
    ok &= out.n_top == 5;
    for (int i = 0; i < out.n_tokens; i++, n++) {
      const struct lm_token_logprob *t = out.top_logprobs + (size_t)i * 5;
      ok &= out.logprobs[i] <= 0 && t[0].id == out.token_ids[i] && t[0].logprob == out.logprobs[i];
      for (int k = 1; k < 5; k++)
        ok &= t[k].logprob <= t[k - 1].logprob && t[k].id != t[0].id;
    }
    finished = out.finished;
  }
  lm_check(finished && n == 6 && ok,
           "6 greedy tokens each come with its logprob and 5 alternatives, itself first");
  lm_output_free(&out);
  lm_request_release(r);
}

/* Runs one request to its end, collecting its tokens into j. */
static int run_params(lm_engine *e, struct lm_request_params *p, struct job *j) {
  char err[LM_ERR_LEN];
  memset(j, 0, sizeof(*j));
  if (lm_engine_submit(e, p, &j->r, err) != LM_OK) {
    printf("# submit: %s\n", err);
    return 0;
  }
  return job_wait(j);
}

/* min_tokens masks EOS (vLLM's semantics): with every EOS id pushed far
 * ahead by logit_bias, the first min_tokens tokens are still not EOS and
 * the next one is. Presence and frequency penalties count only generated
 * tokens: a token of the prompt, favoured by logit_bias, is drawn first
 * and only its own repetition is penalised. */
static void test_min_tokens_and_penalties(lm_engine *e) {
  const struct lm_config *mc = lm_engine_model_config(e);
  struct lm_logit_bias bias[8];
  int n_bias = 0;
  for (int i = 0; i < mc->n_eos && n_bias < 8; i++)
    bias[n_bias++] = (struct lm_logit_bias){mc->eos_token_ids[i], 100};
  int32_t prompt[6] = {101, 202, 303, 404, 505, 606};
  struct lm_request_params p;
  struct job j;
  lm_request_params_init(NULL, &p);
  p.prompt = prompt;
  p.n_prompt = 6;
  p.max_tokens = 10;
  p.min_tokens = 4;
  p.sampling.logit_bias = bias;
  p.sampling.n_logit_bias = (size_t)n_bias;
  int ok = n_bias > 0 && run_params(e, &p, &j);
  int early_eos = 0;
  for (int i = 0; i < j.n_got && i < 4; i++)
    early_eos += lm_config_is_eos(mc, j.got[i]);
  lm_check(ok && early_eos == 0 && j.reason == LM_FINISH_EOS && j.n_got == 5 &&
               j.usage.completion_tokens == 5,
           "EOS favoured by logit_bias is masked for min_tokens 4, then ends it at token %d (%s, "
           "%d EOS before)",
           j.n_got, lm_finish_reason_name(j.reason), early_eos);

  struct lm_logit_bias favour = {prompt[0], 50};
  lm_request_params_init(NULL, &p);
  p.prompt = prompt;
  p.n_prompt = 6;
  p.max_tokens = 2;
  p.ignore_eos = 1;
  p.sampling.logit_bias = &favour;
  p.sampling.n_logit_bias = 1;
  p.sampling.presence_penalty = 100;
  ok = run_params(e, &p, &j);
  lm_check(ok && j.n_got == 2 && j.got[0] == prompt[0] && j.got[1] != prompt[0],
           "presence_penalty spares the prompt's ids and penalises generated ones (%d, %d)",
           j.n_got > 0 ? j.got[0] : -1, j.n_got > 1 ? j.got[1] : -1);
}

static void one_token_budget(struct lm_engine_config *c) {
  c->max_num_batched_tokens = 1;
  c->max_model_len = 4096;
  c->max_undrained_tokens = 2;
  c->stall_timeout_s = 0.8;
}

/* The stall timeout is for callers that do not drain. Two requests are
 * held back; both callers drain; with a budget of one token per step the
 * older one takes every step for longer than the timeout (then it is
 * aborted). The newer one waits for its turn, but its caller drained: it
 * must not be aborted as stalled. */
static void test_stall_needs_undrained(void) {
  char err[LM_ERR_LEN];
  lm_engine *e = open_engine(1, 1, 600, one_token_budget);
  if (!lm_check(e != NULL, "engine with a budget of 1 token per step opens")) return;
  struct job a = simple_job(2, 4000, 7), b = simple_job(2, 20, 8);
  struct lm_engine_stats s;
  int ok = job_submit(e, &a, err) == LM_OK;
  double t0 = lm_now_s();
  do {
    nap();
    lm_engine_get_stats(e, &s);
  } while (ok && s.num_held < 1 && lm_now_s() - t0 < 30);
  ok &= s.num_held == 1 && job_submit(e, &b, err) == LM_OK;
  do {
    nap();
    lm_engine_get_stats(e, &s);
  } while (ok && s.num_held < 2 && lm_now_s() - t0 < 30);
  lm_check(ok && s.num_held == 2, "both requests are held back, undrained");
  double a_end = 0;
  t0 = lm_now_s();
  while ((!a.finished || !b.finished) && lm_now_s() - t0 < 120) {
    if (!a.finished && lm_now_s() - t0 > 2.5 * 0.8) lm_request_abort(a.r);
    if (!a.finished && job_poll(&a)) a_end = lm_now_s() - t0;
    job_poll(&b);
    nap();
  }
  s = settle(e);
  lm_check(a.finished && b.finished && a_end > 0.8 && b.reason == LM_FINISH_LENGTH &&
               b.n_got == 20 && s.stall_aborts == 0,
           "drained, the newer one finishes (%s) after the older ran %.2f s, with no stall abort "
           "(%llu)",
           lm_finish_reason_name(b.reason), a_end, (unsigned long long)s.stall_aborts);
  lm_engine_destroy(e);
}

static void test_misc(int n_submits) {
  lm_engine *e = open_engine(1, 64, 64, held_back);
  if (!lm_check(e != NULL, "engine with backpressure at 4 tokens opens")) return;
  test_invalid(e);
  test_logprobs(e);
  test_min_tokens_and_penalties(e);
  test_abort_release_ids(e);
  test_backpressure(e);
  test_random_traffic(e, n_submits);
  char err[LM_ERR_LEN];
  struct job j = simple_job(5, 5, 5);
  lm_engine_close(e);
  lm_check(job_submit(e, &j, err) == LM_ECLOSED, "a closed engine refuses: %s", err);
  lm_engine_destroy(e);
}

/* One sequence slot and room for 3 waiting: the queue fills, then destroy
 * ends everything in flight. */
static void test_full_and_destroy(void) {
  char err[LM_ERR_LEN];
  lm_engine *e = open_engine(1, 64, 0, small_queue);
  if (!lm_check(e != NULL, "engine with 1 slot and 3 waiting places opens")) return;
  /* one slot: of two requests waiting behind a running one, the lower
   * priority value runs first although it came second */
  struct job first = simple_job(10, 20, 1), low = simple_job(10, 2, 2), high = simple_job(10, 2, 3);
  low.priority = 5;
  int ok = job_submit(e, &first, err) == LM_OK && job_submit(e, &low, err) == LM_OK &&
           job_submit(e, &high, err) == LM_OK && job_wait(&first) && job_wait(&low) &&
           job_wait(&high);
  lm_check(ok && high.usage.queue_time_s < low.usage.queue_time_s,
           "priority 0 waited %.3f s, priority 5 (submitted earlier) %.3f s",
           high.usage.queue_time_s, low.usage.queue_time_s);
  struct job jobs[8];
  int accepted = 0, rc = LM_OK;
  for (int i = 0; i < 8 && rc == LM_OK; i++) {
    jobs[i] = simple_job(10, 500, i);
    if ((rc = job_submit(e, &jobs[i], err)) == LM_OK) accepted++;
  }
  lm_check(rc == LM_EFULL && accepted >= 3 && accepted <= 4,
           "after %d requests the full waiting queue says retry later: %s", accepted, err);
  lm_engine_destroy(e);
  ok = 1;
  for (int i = 0; i < accepted; i++)
    ok &= job_poll(&jobs[i]) && jobs[i].reason == LM_FINISH_ABORT;
  lm_check(ok, "destroy ends every request in flight as aborted; handles stay usable");
}

/* The step budget counts a token's attention over its context: a 256-token
 * prompt under a 64-token budget needs more than 4 steps once its chunks
 * reach deep positions, and comes out as it does in one chunk. */
static void test_compute_budget(void) {
  char err[LM_ERR_LEN];
  struct job one, split;
  lm_engine *e = open_engine(0, 2048, 0, NULL);
  if (!lm_check(e != NULL, "engine with a 2048-token budget opens")) return;
  memset(&one, 0, sizeof(one));
  srand(777);
  one.n_prompt = 256;
  for (int i = 0; i < one.n_prompt; i++)
    one.prompt[i] = 3 + rand() % (n_ids - 3);
  one.max_tokens = 12;
  split = one;
  int ok = job_submit(e, &one, err) == LM_OK && job_wait(&one);
  struct lm_engine_stats s = settle(e);
  lm_check(ok && s.max_prefill_steps == 1, "a 256-token prompt in one step under 2048 (%d steps)",
           s.max_prefill_steps);
  lm_engine_destroy(e);
  e = open_engine(0, 64, 0, NULL);
  if (!lm_check(e != NULL, "engine with a 64-token budget opens")) return;
  ok = job_submit(e, &split, err) == LM_OK && job_wait(&split);
  s = settle(e);
  lm_check(ok && s.max_prefill_steps > 4,
           "under a 64-token budget its prefill takes %d steps (> 4: deep chunks cost more)",
           s.max_prefill_steps);
  lm_check(same_output(&one, &split), "and its output equals the one-chunk prefill");
  lm_engine_destroy(e);
}

/* ---- the step time model and the decode slowdown limit ------------------ */

/* t with +-4 % noise drawn from seed; t itself without one. */
static double noisy(double t, unsigned *seed) {
  if (!seed) return t;
  *seed = *seed * 1103515245u + 12345u;
  return t * (0.96 + 0.08 * ((*seed >> 8) & 0xffff) / 65535.0);
}

/* A machine whose step costs are known: 2 ms a step, 40 us a token, 3 ns a
 * decode key, 0.5 ns a prompt key, times k, with +-4 % noise (none
 * without a seed). */
static double known_step(const struct lm_step_shape *s, double k, unsigned *seed) {
  return noisy(k * (2e-3 + 40e-6 * s->tokens + 3e-9 * s->decode_keys + 0.5e-9 * s->prompt_keys),
               seed);
}

static struct lm_step_shape decode_shape(int n, int ctx) {
  struct lm_step_shape s = {n, (double)n * ctx, 0, 0};
  return s;
}

static void test_step_model(void) {
  lm_step_model m;
  unsigned seed = 99;
  lm_step_model_init(&m);
  lm_check(!lm_step_model_ready(&m), "the step model does not predict before any step");
  /* decode-only steps and steps with a prompt chunk at growing depth */
  for (int i = 0; i < 200; i++) {
    struct lm_step_shape s = decode_shape(32, 100 + i);
    if (i % 3 == 0) {
      int n = 16 + i % 48, start = 40 * i;
      s.tokens += n;
      s.prompt_tokens = n;
      s.prompt_keys = lm_step_chunk_keys(start, n);
    }
    lm_step_model_observe(&m, &s, known_step(&s, 1, &seed));
  }
  lm_check(lm_step_model_ready(&m), "it predicts after 200 steps");
  struct lm_step_shape d = decode_shape(32, 300), mixed = d;
  mixed.tokens += 40;
  mixed.prompt_tokens = 40;
  mixed.prompt_keys = lm_step_chunk_keys(6000, 40);
  double td = lm_step_model_predict(&m, &d), tm = lm_step_model_predict(&m, &mixed);
  double want_d = known_step(&d, 1, NULL), want_m = known_step(&mixed, 1, NULL);
  lm_check(fabs(td / want_d - 1) < 0.08 && fabs(tm / want_m - 1) < 0.08,
           "it predicts a decode step %.3f ms (true %.3f) and a mixed one %.3f ms (true %.3f)",
           td * 1e3, want_d * 1e3, tm * 1e3, want_m * 1e3);
  double budget = 3e-3;
  int n = lm_step_model_fit_chunk(&m, 6000, 4096, budget);
  lm_check(n > 0 && n < 4096 && lm_step_model_chunk_seconds(&m, 6000, n) <= budget &&
               lm_step_model_chunk_seconds(&m, 6000, n + 1) > budget,
           "the largest chunk at position 6000 within %.0f ms is %d tokens", budget * 1e3, n);
  lm_check(lm_step_model_fit_chunk(&m, 6000, 5, budget) == 5 &&
               lm_step_model_fit_chunk(&m, 6000, 100, 0) == 0,
           "a chunk never exceeds what is wanted, and no time holds none");
  lm_step_model fresh;
  lm_step_model_init(&fresh);
  lm_check(
      lm_step_model_fit_chunk(&fresh, 0, 100, 0) == 0 &&
          lm_step_model_fit_chunk(&fresh, 0, 100, budget) == 100,
      "a model that sees no cost in prompt tokens still fits none in no time (and all in some)");
  /* the machine halves its speed and only decodes run: the decode step
   * follows within a few dozen steps, a prompt chunk's cost is remembered */
  double chunk0 = lm_step_model_chunk_seconds(&m, 6000, 40);
  for (int i = 0; i < 60; i++) {
    struct lm_step_shape s = decode_shape(32, 300 + i);
    lm_step_model_observe(&m, &s, known_step(&s, 2, &seed));
  }
  d = decode_shape(32, 360);
  want_d = known_step(&d, 2, NULL);
  td = lm_step_model_predict(&m, &d);
  double chunk1 = lm_step_model_chunk_seconds(&m, 6000, 40);
  lm_check(fabs(td / want_d - 1) < 0.1, "after a slowdown a decode step is %.3f ms (true %.3f)",
           td * 1e3, want_d * 1e3);
  lm_check(chunk1 > 0.5 * chunk0 && chunk1 < 2.5 * chunk0,
           "and a 40-token chunk still costs %.3f ms (%.3f before): not forgotten", chunk1 * 1e3,
           chunk0 * 1e3);
}

/* Adds a chunk of n prompt tokens at position pos to the decodes' shape s. */
static void add_chunk(struct lm_step_shape *s, int pos, int n) {
  s->tokens += n;
  s->prompt_tokens = n;
  s->prompt_keys = lm_step_chunk_keys(pos, n);
}

/* Adds to the decodes' shape s the chunk of a prompt at position pos the
 * scheduler would: sized to the decodes' predicted step
 * (max_decode_slowdown 2), at least 16 tokens; returns its length. */
static int add_chunk_beside(const lm_step_model *m, struct lm_step_shape *s, int pos, int left) {
  int n = lm_step_model_fit_chunk(m, pos, left, lm_step_model_predict(m, s));
  n = n < 16 ? (left < 16 ? left : 16) : n;
  add_chunk(s, pos, n);
  return n;
}

/* A machine whose weight matmuls are bound by reading the weights up to
 * about 80 tokens a step (as on AMX tiles), and whose attention dominates
 * a chunk deep in a prompt: 1 ms + max(5 ms, 60 us a token), 0.8 us a
 * decode key, 0.1 us a prompt key, +-4 % noise. */
#define WB_PROMPT_KEY 0.1e-6
static double weight_bound_step(const struct lm_step_shape *s, unsigned *seed) {
  double mm = 60e-6 * s->tokens > 5e-3 ? 60e-6 * s->tokens : 5e-3;
  return noisy(1e-3 + mm + 0.8e-6 * s->decode_keys + WB_PROMPT_KEY * s->prompt_keys, seed);
}

/* The scheduler's loop on that machine: 32 decodes run alone, then an
 * 8192-token prompt is prefilled beside them in chunks the model sizes to
 * the decodes' own predicted step (max_decode_slowdown 2, a 16-token
 * floor). The decode keys and the prompt keys grow together, and a prompt
 * token costs less than the decodes' tokens seem to: the steps must still
 * stay near twice the decodes' own. */
static void test_step_model_beside_decodes(void) {
  lm_step_model m;
  unsigned seed = 7;
  int ctx = 100, pos = 0, steps = 0, over = 0;
  double worst = 0;
  lm_step_model_init(&m);
  for (int i = 0; i < 60; i++, ctx++) {
    struct lm_step_shape s = decode_shape(32, ctx);
    lm_step_model_observe(&m, &s, weight_bound_step(&s, &seed));
  }
  for (; pos < 8192; steps++, ctx++) {
    struct lm_step_shape s = decode_shape(32, ctx);
    double alone = weight_bound_step(&s, NULL);
    int n = add_chunk_beside(&m, &s, pos, 8192 - pos);
    pos += n;
    double t = weight_bound_step(&s, NULL);
    /* past the floor's reach (16 tokens deep in the prompt can exceed it) */
    if (steps >= 20 && lm_step_chunk_keys(pos - n, 16) * WB_PROMPT_KEY < alone) {
      worst = t / alone > worst ? t / alone : worst;
      over += t > 2.3 * alone;
    }
    lm_step_model_observe(&m, &s, weight_bound_step(&s, &seed));
  }
  struct lm_step_shape d = decode_shape(32, ctx);
  double td = lm_step_model_predict(&m, &d), want = weight_bound_step(&d, NULL);
  lm_check(fabs(td / want - 1) < 0.1,
           "after %d steps beside a long prompt, the decodes alone are predicted at %.3f ms "
           "(true %.3f)",
           steps, td * 1e3, want * 1e3);
  lm_check(over == 0, "and no step with a chunk took over 2.3 x the decodes alone (worst %.2f x)",
           worst);
}

/* A machine where the decodes' step grows with their contexts as a
 * CPU's does (their KV read from memory): 10 ms + 0.2 ms a token + 5 us a
 * decode key, and 0.1 us a prompt key; +-4 % noise. */
static double growing_step(const struct lm_step_shape *s, unsigned *seed) {
  return noisy(10e-3 + 0.2e-3 * s->tokens + 5e-6 * s->decode_keys + 0.1e-6 * s->prompt_keys, seed);
}

/* One step of the scheduler's loop on growing_step's machine, its time
 * times k: the decodes s alone where the model has not timed decodes like
 * them (returns 1), else s with a chunk of n prompt tokens at pos. */
static int probe_or_chunk(lm_step_model *m, struct lm_step_shape s, int n, int pos, double k,
                          unsigned *seed) {
  int probe = !lm_step_model_explored(m, &s);
  if (!probe) add_chunk(&s, pos, n);
  lm_step_model_observe(m, &s, k * growing_step(&s, seed));
  return probe;
}

/* 32 decodes run alone from context 64 to 96 (the decode part's slope is
 * fitted over a narrow range), then an 8192-token prompt is prefilled
 * beside them as the scheduler does it: a decode-only step whenever the
 * model has not seen decodes as long (lm_step_model_explored), else a
 * chunk sized to the decodes' predicted step (max_decode_slowdown 2, the
 * 16-token floor). The decodes' own step is then still predicted at its
 * true time when the prompt ends, their contexts twice as long, and
 * the steps with a chunk take twice the decodes' time. */
static void test_step_model_probes(void) {
  lm_step_model m;
  unsigned seed = 5;
  int ctx = 64, steps = 0, probes = 0, n_ratio = 0;
  double ratio = 0, worst = 0;
  lm_step_model_init(&m);
  for (; ctx < 96; ctx++) {
    struct lm_step_shape s = decode_shape(32, ctx);
    lm_step_model_observe(&m, &s, growing_step(&s, &seed));
  }
  for (int pos = 0; pos < 8192; steps++, ctx++) {
    struct lm_step_shape s = decode_shape(32, ctx);
    double alone = growing_step(&s, NULL);
    if (!lm_step_model_explored(&m, &s)) {
      probes++;
      lm_step_model_observe(&m, &s, growing_step(&s, &seed));
      continue;
    }
    int n = add_chunk_beside(&m, &s, pos, 8192 - pos);
    pos += n;
    double t = growing_step(&s, NULL);
    if (steps >= 20 && lm_step_chunk_keys(pos - n, 16) * 0.1e-6 < alone) {
      ratio += t / alone;
      worst = t / alone > worst ? t / alone : worst;
      n_ratio++;
    }
    lm_step_model_observe(&m, &s, growing_step(&s, &seed));
  }
  struct lm_step_shape d = decode_shape(32, ctx);
  double td = lm_step_model_predict(&m, &d), want = growing_step(&d, NULL);
  ratio /= n_ratio;
  lm_check(probes > 0 && probes * 10 < steps,
           "beside the prompt, %d of %d steps ran the decodes alone (the contexts grew from 96 "
           "to %d)",
           probes, steps, ctx);
  lm_check(fabs(td / want - 1) < 0.03,
           "then the decodes alone are predicted at %.2f ms (true %.2f ms)", td * 1e3, want * 1e3);
  lm_check(ratio > 1.85 && ratio < 2.15 && worst < 2.4,
           "and the steps with a chunk took %.2f x the decodes alone on average (worst %.2f x)",
           ratio, worst);
  /* short contexts grow by an eighth in a step or two: the model waits for
   * LM_STEP_REACH_KEYS a decode instead */
  lm_step_model_init(&m);
  probes = 0;
  for (ctx = 4; ctx < 12; ctx++) {
    struct lm_step_shape s = decode_shape(32, ctx);
    lm_step_model_observe(&m, &s, growing_step(&s, &seed));
  }
  for (int i = 0; i < 40; i++, ctx++)
    probes += probe_or_chunk(&m, decode_shape(32, ctx), 16, 16 * i, 1, &seed);
  lm_check(probes >= 3 && probes <= 5,
           "from context 12, the decodes ran alone %d times in 40 steps (one in 9)", probes);
  /* decodes whose contexts stay put (as many end as begin) beside a steady
   * stream of prompts, and after LM_STEP_STALE steps the machine's steps
   * take half as long again: the decodes are timed alone at once (their
   * contexts jumped from 51 to 200), then after every LM_STEP_STALE steps
   * with chunks (3 times), and their predicted step moves most of the way */
  probes = 0;
  for (int i = 0; i < 4 * LM_STEP_STALE; i++) {
    double k = i < LM_STEP_STALE ? 1 : 1.5;
    probes += probe_or_chunk(&m, decode_shape(32, 200), 32, 0, k, &seed);
  }
  d = decode_shape(32, 200);
  td = lm_step_model_predict(&m, &d);
  want = 1.5 * growing_step(&d, NULL);
  lm_check(
      probes == 4 && fabs(td / want - 1) < 0.1,
      "with the contexts steady, %d of %d steps timed the decodes alone, and after the machine "
      "slowed their step is predicted at %.2f ms (true %.2f ms, within 10 %%)",
      probes, 4 * LM_STEP_STALE, td * 1e3, want * 1e3);
}

/* ---- a long prompt beside running decodes ------------------------------ */

/* Eight decodes (8-token prompts, dec_tokens each) and a long prompt of
 * n_long tokens (4 to generate), drawn from seed. */
static void make_beside(struct job *dec, struct job *longp, unsigned seed, int dec_tokens,
                        int n_long) {
  srand(seed);
  memset(dec, 0, 8 * sizeof(*dec));
  for (int i = 0; i < 8; i++) {
    dec[i].n_prompt = 8;
    for (int t = 0; t < 8; t++)
      dec[i].prompt[t] = 3 + rand() % (n_ids - 3);
    dec[i].max_tokens = dec_tokens;
  }
  memset(longp, 0, sizeof(*longp));
  longp->n_prompt = n_long;
  for (int t = 0; t < n_long; t++)
    longp->prompt[t] = 3 + rand() % (n_ids - 3);
  longp->max_tokens = 4;
}

/* Called each round while the long prompt runs, with the engine's prompt
 * tokens when it was sent; returns the job to follow from then on. */
typedef struct job *(*beside_hook)(lm_engine *e, struct job *cur, uint64_t prompt_tokens0,
                                   void *arg);

/* Runs the decodes until the engine has taken 24 steps (so the step model
 * has timed at least 16 decode steps), then sends the long prompt and
 * follows it (or what hook turns to) to its end; then aborts the decodes
 * and waits for the engine to settle (its counters in *s). Returns how
 * many decodes were still running when the prompt finished, -1 when a
 * submit failed or time ran out. */
static int run_beside(lm_engine *e, struct job *dec, struct job *longp, beside_hook hook, void *arg,
                      struct lm_engine_stats *s) {
  char err[LM_ERR_LEN];
  int ok = 1, unfinished = 0;
  for (int i = 0; i < 8; i++)
    ok &= job_submit(e, &dec[i], err) == LM_OK;
  double t0 = lm_now_s();
  do {
    for (int i = 0; i < 8; i++)
      job_poll(&dec[i]);
    nap();
    lm_engine_get_stats(e, s);
  } while (s->steps < 24 && lm_now_s() - t0 < 60);
  uint64_t prompt0 = s->prompt_tokens;
  ok &= job_submit(e, longp, err) == LM_OK;
  struct job *cur = longp;
  while (ok && !cur->finished && lm_now_s() - t0 < 120) {
    for (int i = 0; i < 8; i++)
      job_poll(&dec[i]);
    job_poll(cur);
    if (hook) cur = hook(e, cur, prompt0, arg);
    nap();
  }
  for (int i = 0; i < 8; i++)
    unfinished += !job_poll(&dec[i]);
  for (int i = 0; i < 8; i++)
    if (dec[i].r) lm_request_abort(dec[i].r);
  for (int i = 0; i < 8; i++)
    job_wait(&dec[i]);
  *s = settle(e);
  return ok && cur->finished ? unfinished : -1;
}

static void slowdown_one(struct lm_engine_config *c) {
  c->max_decode_slowdown = 1;
}

static void slowdown_off(struct lm_engine_config *c) {
  c->max_decode_slowdown = 0;
}

/* Eight decodes run; a 256-token prompt arrives. Without the limit it is
 * computed in one step; with max_decode_slowdown 1 its chunks beside the
 * decodes shrink to the 16-token floor, and its output is the same. */
static void test_decode_slowdown(void) {
  struct job dec[8], longp[2];
  int steps[2] = {0, 0};
  uint64_t limited[2] = {0, 0}, probes[2] = {0, 0};
  for (int pass = 0; pass < 2; pass++) {
    lm_engine *e = open_engine(0, 2048, 0, pass ? slowdown_one : slowdown_off);
    if (!lm_check(e != NULL, "engine with max_decode_slowdown %d opens", pass)) return;
    make_beside(dec, &longp[pass], 4242, 120, 256);
    struct lm_engine_stats s;
    int unfinished = run_beside(e, dec, &longp[pass], NULL, NULL, &s);
    lm_check(unfinished > 0, "the prompt finished while %d decodes were still running", unfinished);
    steps[pass] = s.max_prefill_steps;
    limited[pass] = s.slowdown_limited_steps;
    probes[pass] = s.decode_probe_steps;
    lm_engine_destroy(e);
  }
  lm_check(steps[0] == 1 && limited[0] == 0,
           "without the limit the prompt takes %d step beside the decodes (%llu limited)", steps[0],
           (unsigned long long)limited[0]);
  lm_check(steps[1] >= 256 / 16 && limited[1] > 0,
           "with max_decode_slowdown 1 it takes %d steps (>= 16), %llu of them limited", steps[1],
           (unsigned long long)limited[1]);
  /* the decodes' contexts grow by more than 8 tokens while the prompt is
   * prefilled: the model times them alone as they pass what it has seen */
  lm_check(probes[0] == 0 && probes[1] > 0,
           "and the decodes ran alone for %llu step(s) in between to be timed (%llu without the "
           "limit)",
           (unsigned long long)probes[1], (unsigned long long)probes[0]);
  lm_check(same_output(&longp[0], &longp[1]), "and its output is the same");
}

/* ---- layered chunks ------------------------------------------------------ */

static const char *layered_dir; /* a model with more layers (argv[5]) */
static double layered_slowdown;
static int layered_on;

static void layered_cfg(struct lm_engine_config *c) {
  c->model_dir = layered_dir;
  c->max_decode_slowdown = layered_slowdown;
  c->layered_prefill = layered_on;
}

/* Eight decodes run; a 1000-token prompt arrives. Beside them, with
 * max_decode_slowdown 2, a chunk gets the decodes' own step: a few dozen
 * tokens of this model's four layers. Layered, the chunks hold hundreds
 * of tokens over one or two layers a step. Passes: no limit (the
 * reference), the limit without layers, with them, and with them and the
 * prefix cache while the prompt is aborted once a chunk is in the cache
 * and sent again. Every output is the reference's. */
/* Pass 3's hook: once a chunk of the prompt is in the cache, abort it and
 * send the prompt again. */
struct resend {
  struct job *again;
  uint64_t at_abort, before_again;
  int first_aborted;
};

static struct job *abort_and_resend(lm_engine *e, struct job *cur, uint64_t prompt0, void *arg) {
  char err[LM_ERR_LEN];
  struct resend *rs = arg;
  struct lm_engine_stats s;
  lm_engine_get_stats(e, &s);
  if (cur == rs->again || cur->finished || s.layered_steps == 0 || s.prompt_tokens < prompt0 + 16)
    return cur;
  rs->at_abort = s.layered_steps;
  lm_request_abort(cur->r);
  job_wait(cur);
  rs->first_aborted = cur->reason == LM_FINISH_ABORT && cur->n_got == 0;
  lm_engine_get_stats(e, &s);
  rs->before_again = s.layered_steps;
  /* a failed submit leaves the aborted job, finished, to follow */
  return job_submit(e, rs->again, err) == LM_OK ? rs->again : cur;
}

static void test_layered_prefill(void) {
  struct job dec[4][8], longp[4], again;
  struct lm_engine_stats s[4];
  struct resend rs = {.again = &again};
  if (strcmp(backend, "cpu")) {
    printf("# layered prefill: the %s backend runs no layered chunks\n", backend);
    return;
  }
  if (!layered_dir) {
    printf("# layered prefill: no model with more layers given (engine_test's 5th argument)\n");
    lm_check(0, "a model for the layered prefill test");
    return;
  }
  for (int pass = 0; pass < 4; pass++) {
    layered_slowdown = pass == 0 ? 0 : 2;
    layered_on = pass >= 2;
    lm_engine *e = open_engine(pass == 3, 2048, 0, layered_cfg);
    if (!lm_check(e != NULL, "engine on %s opens (pass %d)", layered_dir, pass)) return;
    struct lm_engine_info info;
    lm_engine_get_info(e, &info);
    lm_check(info.layered_prefill == layered_on, "layered prefill is %s",
             layered_on ? "on" : "off");
    make_beside(dec[pass], &longp[pass], 777, 300, 1000);
    again = longp[pass];
    int unfinished =
        run_beside(e, dec[pass], &longp[pass], pass == 3 ? abort_and_resend : NULL, &rs, &s[pass]);
    lm_check(unfinished > 0 && s[pass].kv_blocks_used == 0,
             "pass %d: the prompt finished beside %d running decodes; no block is held after", pass,
             unfinished);
    lm_engine_destroy(e);
  }
  /* the decodes end when they are aborted: their common tokens match */
  int same = 1;
  for (int i = 0; i < 8; i++) {
    int n = dec[0][i].n_got < dec[2][i].n_got ? dec[0][i].n_got : dec[2][i].n_got;
    same &= n >= 16 && !memcmp(dec[0][i].got, dec[2][i].got, (size_t)n * sizeof(int32_t));
  }
  lm_check(s[1].layered_steps == 0 && s[1].slowdown_limited_steps > 0,
           "without layers the prompt's chunks were cut short (%llu steps) and none layered",
           (unsigned long long)s[1].slowdown_limited_steps);
  lm_check(
      s[2].layered_steps > 0 && same_output(&longp[0], &longp[2]) &&
          same_output(&longp[0], &longp[1]) && same,
      "layered, %llu steps ran the prompt over some of the layers; its output and the decodes' "
      "are the same as with no limit",
      (unsigned long long)s[2].layered_steps);
  lm_check(rs.first_aborted && rs.at_abort > 0 && again.usage.cached_tokens > 0 &&
               s[3].layered_steps > rs.before_again && same_output(&longp[0], &again),
           "aborted after %llu layered steps, the prompt sent again found %d tokens cached, ran "
           "%llu more layered steps and gives the same output",
           (unsigned long long)rs.at_abort, again.usage.cached_tokens,
           (unsigned long long)(s[3].layered_steps - rs.before_again));
}

/* ---- short prompts arriving during a long one ---------------------------- */

/* When a finished job's first token came (its TTFT after the submit). */
static double first_token_s(const struct job *j) {
  return j->submit_s + j->usage.ttft_s;
}

/* The hook: right after the long prompt, send the short one, which the
 * scheduler puts ahead of the long one's remaining chunks. */
static struct job *send_short(lm_engine *e, struct job *cur, uint64_t prompt0, void *arg) {
  char err[LM_ERR_LEN];
  struct job *shortp = arg;
  (void)prompt0;
  if (!shortp->r && !shortp->finished && job_submit(e, shortp, err) != LM_OK)
    shortp->finished = 1; /* n_got stays 0: the check fails */
  if (shortp->r) job_poll(shortp);
  return cur;
}

/* The stream's hook: N_STREAM short prompts sent at once, right after
 * the long one; the engine's steps from then to the long prompt's first
 * token, as seen from here. */
enum { N_STREAM = 40 };
struct stream {
  struct job shorts[N_STREAM];
  int ok;
  uint64_t steps0, steps;
};

static struct job *send_stream(lm_engine *e, struct job *cur, uint64_t prompt0, void *arg) {
  char err[LM_ERR_LEN];
  struct stream *st = arg;
  struct lm_engine_stats s;
  (void)prompt0;
  lm_engine_get_stats(e, &s);
  if (!st->ok) {
    st->ok = 1;
    st->steps0 = s.steps;
    for (int i = 0; i < N_STREAM; i++)
      st->ok &= job_submit(e, &st->shorts[i], err) == LM_OK;
  }
  for (int i = 0; i < N_STREAM; i++)
    if (st->shorts[i].r) job_poll(&st->shorts[i]);
  if (!st->steps && (job_poll(cur) || cur->n_got > 0)) st->steps = s.steps - st->steps0;
  return cur;
}

/* A 16-token prompt arrives right after a 1000-token one: alone (64
 * tokens a step), then beside eight decodes with max_decode_slowdown 1
 * (the long prompt's chunks are cut to the floor). Either way the short
 * prompt goes ahead of the long prompt's remaining chunks rather than
 * behind them, and both outputs are what each gives alone. Then 40 short
 * prompts arrive one after another during the long one beside the
 * decodes: they go ahead too, and the long prompt still advances by its
 * floor every step. */
static void test_short_arrival(void) {
  static struct stream st;
  struct job shortp[3], longp[4], dec[8];
  char err[LM_ERR_LEN];
  for (int pass = 0; pass < 4; pass++) {
    lm_engine *e = open_engine(0, 64, 0, pass >= 2 ? slowdown_one : NULL);
    if (!lm_check(e != NULL, "engine for the short arrivals opens (pass %d)", pass)) return;
    make_beside(dec, &longp[pass], 9191, 200, 1000);
    if (pass < 3) shortp[pass] = simple_job(16, 4, 1);
    if (pass == 0) {
      /* each alone: the reference */
      lm_check(job_submit(e, &longp[0], err) == LM_OK && job_wait(&longp[0]) &&
                   job_submit(e, &shortp[0], err) == LM_OK && job_wait(&shortp[0]),
               "the long and the short prompt run alone");
    } else if (pass == 1) {
      int ok = job_submit(e, &longp[1], err) == LM_OK;
      send_short(e, &longp[1], 0, &shortp[1]);
      lm_check(ok && job_wait(&longp[1]) && job_wait(&shortp[1]), "pass 1: both finish");
    } else {
      struct lm_engine_stats s;
      int stream = pass == 3, done;
      if (stream) {
        memset(&st, 0, sizeof(st));
        for (int i = 0; i < N_STREAM; i++)
          st.shorts[i] = simple_job(16, 4, 2 + i);
      }
      done = run_beside(e, dec, &longp[pass], stream ? send_stream : send_short,
                        stream ? (void *)&st : (void *)&shortp[2], &s) > 0;
      for (int i = 0; stream && i < N_STREAM; i++)
        done &= job_wait(&st.shorts[i]);
      if (!stream) done &= job_wait(&shortp[2]);
      lm_check(done, "pass %d: the long prompt finished beside running decodes, and the short %s",
               pass, stream ? "ones" : "one");
    }
    lm_engine_destroy(e);
  }
  for (int pass = 1; pass < 3; pass++) {
    lm_check(shortp[pass].n_got > 0 && first_token_s(&shortp[pass]) < first_token_s(&longp[pass]),
             "%s, the short prompt sent right after the long one had its first token %.1f ms "
             "before the long one",
             pass == 1 ? "alone" : "beside decodes",
             1e3 * (first_token_s(&longp[pass]) - first_token_s(&shortp[pass])));
    lm_check(same_output(&shortp[0], &shortp[pass]) && same_output(&longp[0], &longp[pass]),
             "and both outputs are those each gives alone");
  }
  /* each step the long prompt gets its 16-token floor beside one short
   * prompt's: 63 steps, some more where the decodes are timed alone (and
   * as seen from here); were the floor the short prompts', 40 more */
  int before = 0;
  for (int i = 0; i < N_STREAM; i++)
    before += st.shorts[i].n_got > 0 && first_token_s(&st.shorts[i]) < first_token_s(&longp[3]);
  lm_check(st.ok && before == N_STREAM && st.steps > 0 && st.steps <= 1000 / 16 + 24 &&
               same_output(&longp[0], &longp[3]),
           "all %d of %d short prompts sent at once after the long one had their first token "
           "before it; the long one took %llu steps (<= %d) and gives the same output",
           before, N_STREAM, (unsigned long long)st.steps, 1000 / 16 + 24);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: engine_test FIXTURES_DIR [MODEL [RANDOM_OPS [BACKEND [LAYERED_MODEL_DIR]]]]\n");
    return 2;
  }
  if (argc > 4) backend = argv[4];
  if (argc > 5) layered_dir = argv[5];
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in the log as it happens */
  snprintf(model_dir, sizeof(model_dir), "%s/%s", argv[1], argc > 2 ? argv[2] : "qwen3-bf16");
  test_batch_invariance();
  test_prefix_cache();
  test_preemption();
  test_misc(argc > 3 ? atoi(argv[3]) : 2000);
  test_full_and_destroy();
  test_stall_needs_undrained();
  test_compute_budget();
  test_step_model();
  test_step_model_beside_decodes();
  test_step_model_probes();
  test_decode_slowdown();
  test_layered_prefill();
  test_short_arrival();
  return lm_check_done();
}
