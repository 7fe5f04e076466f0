/* engine_internal.h - the engine's and a request's state, shared by
 * engine.c (the API and the engine thread), request.c (a request's output
 * queue, seen from both sides) and sched.c (the scheduler step).
 *
 * Locks: e->mu guards the mailbox, the id registry, the closed/stop flags
 * and the stats snapshot; r->mu guards a request's output queue and its
 * link to the engine (r->e). Order: r->mu before e->mu; the engine thread
 * never holds e->mu while it takes a request's lock. Everything marked
 * "engine thread" is touched by the engine thread only (after submit has
 * handed the request over through the mailbox). */
#ifndef LM_ENGINE_INTERNAL_H
#define LM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/output.h"
#include "engine/runner.h"
#include "engine/step_model.h"

#define LM_REQUEST_ID_MAX   256 /* bytes of a request id, NUL included */
#define LM_REGISTRY_BUCKETS 1024

enum lm_req_state { LM_REQ_NEW, LM_REQ_WAITING, LM_REQ_RUNNING, LM_REQ_FINISHED };

struct lm_request {
  char id[LM_REQUEST_ID_MAX];
  atomic_int refs;        /* the caller's and the engine's */
  atomic_int abort_flag;  /* set by any thread, acted on by the engine */
  atomic_int held;        /* engine: skipped for backpressure */
  lm_request *reg_next;   /* e->registry chain (e->mu) */
  lm_request *inbox_next; /* e->inbox (e->mu) */
  lm_notify_fn notify;
  void *notify_arg;
  int want_logprobs, n_top; /* what each output token carries */

  /* ---- guarded by mu ---- */
  pthread_mutex_t mu;
  lm_engine *e; /* NULL once the engine is done with the request */
  int released; /* the caller let go: no more notify */
  int32_t *q_ids;
  float *q_logprobs;
  size_t *q_text_end;             /* [q_n] q_text.len once each token's text was added */
  struct lm_token_logprob *q_top; /* [q_n, n_top] */
  int q_n, q_cap;
  struct lm_strbuf q_text;
  int finished;
  int finish_drained; /* a drain has handed the finish over */
  enum lm_finish_reason finish_reason;
  int32_t stop_token_id;
  char *stop_str;
  struct lm_usage usage;
  int error_code;
  char error[LM_ERR_LEN];

  /* ---- engine thread ---- */
  enum lm_req_state state;
  uint64_t arrival; /* submit order: FCFS within a priority */
  int priority;
  int32_t *tokens; /* [cap_tokens] prompt, then generated ids */
  int n_tokens, n_prompt, cap_tokens;
  int max_tokens; /* resolved: > 0 */
  int n_generated;
  lm_kv_seq kv; /* kv.n_cached_tokens is num_computed_tokens */
  lm_outproc *op;
  struct lm_sampling sampling;
  struct lm_logit_bias *logit_bias;
  int started;         /* scheduled at least once */
  uint64_t sched_step; /* the last e->sched_steps that gave it a chunk */
  int prefill_steps;
  /* a layered chunk (sched.c): its tokens, from kv.n_cached_tokens, and
   * the next layer they run (0: no layered chunk under way) */
  int layer_tokens, layer_next;
  int cached_tokens;
  double submit_s, first_sched_s, first_token_s;
  double held_since_s; /* when backpressure first skipped it (0: not held) */
};

struct lm_engine {
  struct lm_engine_config cfg; /* resolved */
  lm_model *m;
  lm_tokenizer *tok;
  lm_backend *be;
  lm_runner *runner;
  lm_kv_pool *pool;
  struct lm_engine_info info;
  /* The context length at which a token's attention costs as many FLOPs
   * as its weight matmuls: per-layer matmul parameters / (2 * heads *
   * head_dim). The scheduler's compute budget (sched.c) is built on it. */
  double attn_ctx_tokens;
  lm_step_model step_model; /* engine thread */
  lm_request *layered;      /* engine thread: the request whose layered chunk the runner holds */
  uint64_t sched_steps;     /* engine thread: steps scheduled (sched.c) */

  pthread_t thread;
  int thread_started;

  /* ---- guarded by mu ---- */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  lm_request *inbox, **inbox_tail;
  int inbox_len;
  int n_unstarted; /* waiting requests never scheduled (engine writes) */
  uint64_t kicks;  /* bumped on every event the engine must look at */
  int closed, stop;
  uint64_t next_id, next_arrival;
  lm_request *registry[LM_REGISTRY_BUCKETS];
  struct lm_engine_stats stats;

  /* ---- engine thread ---- */
  lm_request **running; /* [n_running] oldest first */
  int n_running, cap_running;
  lm_request **waiting; /* [n_waiting] by (priority, arrival) */
  int n_waiting, cap_waiting;
  struct lm_engine_stats st;   /* counters, copied to stats after each step */
  struct lm_seq_chunk *chunks; /* [max_num_seqs] */
  lm_request **chunk_req;      /* [max_num_seqs] */
  struct lm_sample_row *rows;  /* [max_num_seqs] */
  struct lm_sample_result *results;
  lm_request **row_req;
  struct lm_token_logprob *top; /* [max_num_seqs, LM_MAX_TOP_LOGPROBS] */
  struct lm_strbuf text;        /* one token's text */
};

/* request.c */
lm_request *lm_request_new(void);
void lm_request_unref(lm_request *r);
/* Engine thread: appends one token (and its text) to the output queue and
 * notifies when the queue was drained before. */
int lm_request_push_output(lm_request *r, int32_t id, const struct lm_sample_result *res,
                           const struct lm_token_logprob *top, const char *text, size_t text_len,
                           const struct lm_usage *usage);
/* Engine thread: the request is over; it publishes the finish, detaches
 * from the engine and notifies. */
void lm_request_publish_finish(lm_request *r, enum lm_finish_reason why, int32_t stop_token_id,
                               const char *stop_str, const char *tail, size_t tail_len,
                               const struct lm_usage *usage, int error_code, const char *error);
/* Engine thread: whether more than limit tokens wait undrained; records
 * the answer in r->held under the request's lock, so a drain that follows
 * always sees it and wakes the engine. */
int lm_request_check_held(lm_request *r, int limit);

/* sched.c (engine thread) */
/* One step: schedule, run, sample, hand out tokens. Returns 1 when it ran
 * the model, 0 when nothing could be scheduled. */
int lm_sched_step(lm_engine *e);
/* Adds a request to the waiting queue (by priority, then arrival). */
int lm_sched_add_waiting(lm_engine *e, lm_request *r);
/* Finishes a request wherever it is (running, waiting): frees its blocks
 * and engine-side state, publishes the finish and drops the engine's
 * reference. */
void lm_sched_finish(lm_engine *e, lm_request *r, enum lm_finish_reason why, int error_code,
                     const char *error);
/* Seconds until the earliest held request stalls out (< 0: none held). */
double lm_sched_next_deadline(lm_engine *e, double now);

/* engine.c */
void lm_engine_registry_remove(lm_engine *e, lm_request *r);

#endif
