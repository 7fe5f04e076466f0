/* engine.h - the serving engine: one thread that owns the model, the paged
 * KV cache (with prefix caching) and the scheduler, running
 * iteration-level (continuous) batching with chunked prefill.
 *
 * Callers on any thread submit requests and drain their output; they never
 * wait for the engine's work. A submit goes through a mailbox; each request
 * has an output queue the caller drains, and a notify callback the engine
 * calls when output is ready. Only the engine thread touches scheduler, KV
 * and model state.
 *
 * Prompts arrive as token ids: callers tokenize (the tokenizer is
 * thread-safe, lm_engine_tokenizer) so the engine thread spends no time on
 * text. Output text is produced by the engine: streamed deltas are whole
 * UTF-8 characters, and text that could be the start of a stop string is
 * held back until it cannot. */
#ifndef LM_ENGINE_H
#define LM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/backend.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#define LM_MAX_TOP_LOGPROBS 20

struct lm_engine_config {
  const char *model_dir;
  const char *backend; /* "auto" (default), "cpu" or "cuda" */
  struct lm_backend_config backend_cfg;
  int block_size;               /* tokens per KV block (16) */
  size_t kv_cache_bytes;        /* KV pool size; 0: a default from memory */
  int n_kv_blocks;              /* > 0: exactly this many blocks (tests) */
  const char *kv_cache_dtype;   /* "auto" (NULL: the weights' type where the
                                   backend stores it, else f32, else bf16),
                                   "bf16" or "f32" */
  float gpu_memory_utilization; /* CUDA: fraction of device memory (0.9) */
  int max_num_seqs;             /* requests in one step (256) */
  int max_num_batched_tokens;   /* tokens in one step, all requests (0: the
                                   backend's, 2048 on a GPU and 512 on the
                                   CPU, where one step is compute bound and
                                   running decodes wait for all of it);
                                   also the step's compute budget, where a
                                   token deep in a long context counts for
                                   more (its attention; see sched.c) */
  double max_decode_slowdown;   /* a step that carries prompt tokens beside
                                   running decodes takes at most this many
                                   times as long as the decodes alone would,
                                   by a model of step times fitted to the
                                   steps run (2.3; 0: no limit but the token
                                   budget; see sched.c) */
  int layered_prefill;          /* where max_decode_slowdown would cut a
                                   prompt's chunk short, the chunk keeps
                                   its size and runs over a few layers a
                                   step instead, on a backend that can (1;
                                   see sched.c) */
  int max_model_len;            /* 0: the model's max_position_embeddings */
  int max_waiting;              /* queued requests beyond this get LM_EFULL (1024) */
  int enable_prefix_caching;    /* 1 */
  int max_undrained_tokens;     /* backpressure: a request with more output
                                   tokens than this not yet drained is not
                                   scheduled until its caller drains (256) */
  double stall_timeout_s;       /* a request not drained for this long while
                                   held back is aborted (30) */
};

/* Fills the defaults above. */
void lm_engine_config_init(struct lm_engine_config *c);

enum lm_finish_reason {
  LM_FINISH_NONE = 0, /* still running */
  LM_FINISH_LENGTH,   /* max_tokens or max_model_len reached */
  LM_FINISH_EOS,      /* an EOS id of the model */
  LM_FINISH_STOP_TOKEN,
  LM_FINISH_STOP_STRING,
  LM_FINISH_ABORT, /* lm_request_abort / lm_engine_abort / release / stall */
  LM_FINISH_ERROR,
};

/* "length", "eos", "stop_token", "stop_string", "abort", "error" ("" for
 * LM_FINISH_NONE). */
const char *lm_finish_reason_name(enum lm_finish_reason r);

/* Called by the engine thread when a request's output queue goes from
 * drained to non-empty, and when the request finishes. It runs with the
 * request's lock held: it must be cheap, must not block and must not call
 * back into the request (post a wake-up and return). Never called after
 * lm_request_release returns. */
typedef void (*lm_notify_fn)(void *arg);

struct lm_request_params {
  const char *request_id; /* NULL or "": the engine assigns one */
  const int32_t *prompt;  /* [n_prompt] token ids */
  int n_prompt;
  int truncate_prompt_tokens; /* > 0: keep only the last N prompt tokens */
  struct lm_sampling sampling;
  int max_tokens; /* 0: up to max_model_len */
  int min_tokens; /* EOS and stop ids/strings are ignored before this many */
  const int32_t *stop_token_ids;
  int n_stop_token_ids;
  const char *const *stop; /* [n_stop] stop strings (NUL-terminated) */
  int n_stop;
  int ignore_eos;
  int include_stop_str_in_output;
  int skip_special_tokens; /* in the output text (1) */
  int logprobs;            /* 1: the chosen token's logprob for every token */
  int top_logprobs;        /* 0..LM_MAX_TOP_LOGPROBS alternatives per token */
  int priority;            /* lower runs first, FCFS within a priority (0) */
  lm_notify_fn notify;
  void *notify_arg;
};

typedef struct lm_engine lm_engine;
typedef struct lm_request lm_request;

/* Defaults: skip_special_tokens on, everything else off/zero, and when e is
 * not NULL the sampling values from the model's generation_config.json. */
void lm_request_params_init(const lm_engine *e, struct lm_request_params *p);

/* Loads the model and tokenizer, creates the backend and KV pool, and
 * starts the engine thread. Model problems are one line in err naming the
 * file and field. */
int lm_engine_create(const struct lm_engine_config *cfg, lm_engine **out, char *err);
/* Stops the thread, aborts every request (their callers still hold their
 * handles and must release them) and frees the engine. */
void lm_engine_destroy(lm_engine *e);

/* From any thread, never waits for engine work. Everything in p is copied.
 * Fails at once, naming the field, with:
 *   LM_EINVAL  a bad value (empty prompt, unknown token id, negative
 *              temperature, top_p outside (0, 1], top_k < 0, NaN,
 *              top_logprobs > 20, ...)
 *   LM_ERANGE  prompt + max_tokens over max_model_len, or more blocks than
 *              the whole pool holds
 *   LM_EEXIST  request_id names a live request
 *   LM_EFULL   the waiting queue is full (retry later)
 *   LM_ECLOSED the engine is closed
 * On success *out holds one reference for the caller. */
int lm_engine_submit(lm_engine *e, const struct lm_request_params *p, lm_request **out, char *err);

/* Aborts a live request by id (from any thread): LM_ENOENT if none. */
int lm_engine_abort(lm_engine *e, const char *request_id);

/* Refuses new submits with LM_ECLOSED; running requests go on. */
void lm_engine_close(lm_engine *e);

const char *lm_request_id(const lm_request *r);
/* Asks the engine to stop the request; it finishes with LM_FINISH_ABORT
 * within one step and its blocks are freed. Any thread. */
void lm_request_abort(lm_request *r);
/* Drops the caller's reference; a request still running is aborted. */
void lm_request_release(lm_request *r);

struct lm_usage {
  int prompt_tokens; /* after truncation */
  int completion_tokens;
  int cached_tokens;   /* prompt tokens found in the prefix cache */
  double queue_time_s; /* submit -> first scheduled */
  double ttft_s;       /* submit -> first output token */
  double total_s;      /* submit -> finish */
};

/* What a drain hands over: everything produced since the last drain. A
 * zero-initialised lm_output is ready to use; its buffers grow as needed
 * and are reused by the next drain. */
struct lm_output {
  int32_t *token_ids; /* [n_tokens] new token ids */
  int n_tokens;
  char *text; /* [text_len] new text, NUL-terminated, whole UTF-8 characters */
  size_t text_len;
  size_t *text_ends;                     /* [n_tokens] text released through each token: token i
                                            released text[text_ends[i-1] (0 for i = 0), text_ends[i]);
                                            any text after the last end came with the finish */
  float *logprobs;                       /* [n_tokens] when the request asked for logprobs */
  struct lm_token_logprob *top_logprobs; /* [n_tokens][n_top], best first */
  int n_top;
  int finished; /* the request is over; nothing more will come */
  enum lm_finish_reason finish_reason;
  int32_t stop_token_id; /* the EOS or stop id that ended it, or -1 */
  const char *stop_str;  /* the stop string that ended it, or NULL; valid
                            until lm_request_release */
  struct lm_usage usage; /* final when finished; counts so far otherwise */
  int error_code;        /* LM_FINISH_ERROR: the status and its message */
  char error[LM_ERR_LEN];
  size_t cap_tokens, cap_text; /* allocation sizes (internal) */
};

/* Moves pending output into out (replacing its previous contents). Returns
 * 1 when out holds anything new (tokens, text or the finish), 0 otherwise,
 * LM_ENOMEM when out cannot grow (the output stays queued). Draining also
 * releases backpressure on the request. */
int lm_request_drain(lm_request *r, struct lm_output *out);
void lm_output_free(struct lm_output *out);

/* What the engine serves, fixed after create. Strings live as long as the
 * engine. */
struct lm_engine_info {
  const char *architecture; /* "LlamaForCausalLM", ... */
  const char *dtype;        /* "bfloat16", "float16", "float32" */
  const char *kv_dtype;     /* the KV cache's element type, named the same way */
  const char *backend;      /* "cpu" or "cuda" */
  int max_model_len;
  int vocab_size;
  int block_size;
  int n_kv_blocks;
  size_t kv_block_bytes; /* one block across all layers, K and V */
  int64_t kv_capacity_tokens;
  int max_num_seqs;
  int max_num_batched_tokens;
  int max_waiting;
  double max_decode_slowdown;
  int layered_prefill; /* on, and the backend can */
};
void lm_engine_get_info(const lm_engine *e, struct lm_engine_info *info);
const lm_tokenizer *lm_engine_tokenizer(const lm_engine *e);
const struct lm_config *lm_engine_model_config(const lm_engine *e);

/* Counters, consistent with each other as of the end of a step. Any
 * thread. */
struct lm_engine_stats {
  int num_running;
  int num_waiting; /* includes preempted requests waiting to resume */
  int kv_blocks_total;
  int kv_blocks_used;   /* held by live requests */
  int kv_blocks_cached; /* free, with a hash, findable by the prefix cache */
  int kv_blocks_free;   /* free without a hash */
  uint64_t steps;
  uint64_t requests_finished;
  uint64_t prompt_tokens;        /* computed prompt tokens (cache hits excluded) */
  uint64_t generation_tokens;    /* tokens produced */
  uint64_t prefix_cache_queries; /* prompt tokens looked up */
  uint64_t prefix_cache_hits;    /* of those, found in the cache */
  uint64_t preemptions;
  int max_decodes_with_prefill;    /* most decodes in one step that also ran a prefill chunk */
  int max_prefill_steps;           /* most steps any one prompt's prefill took */
  uint64_t slowdown_limited_steps; /* steps whose prompt chunks max_decode_slowdown shortened */
  uint64_t decode_probe_steps;     /* steps whose decodes ran alone while prompt tokens
                                      waited, to time them (step_model.h) */
  uint64_t layered_steps;          /* steps that ran a prompt chunk over some of the layers */
  int busy;                        /* has requests */
  int num_held;                    /* requests not scheduled for backpressure */
  uint64_t stall_aborts;           /* requests aborted for stalling past stall_timeout_s */
  double last_step_end_s;          /* lm_now_s() at the end of the last step */
};
void lm_engine_get_stats(lm_engine *e, struct lm_engine_stats *s);

#endif
