/* engine.c - the engine's public API and its thread: create/destroy, the
 * submit mailbox with its checks, the id registry, stats. The step itself
 * is in sched.c, a request's output queue in request.c. */
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine_internal.h"

void lm_engine_config_init(struct lm_engine_config *c) {
  memset(c, 0, sizeof(*c));
  c->backend = "auto";
  c->block_size = 16;
  c->gpu_memory_utilization = 0.9f;
  c->max_num_seqs = 256;
  c->max_waiting = 1024;
  c->enable_prefix_caching = 1;
  c->max_undrained_tokens = 256;
  c->stall_timeout_s = 30;
  c->max_decode_slowdown = 2.3;
  c->layered_prefill = 1;
}

const char *lm_finish_reason_name(enum lm_finish_reason r) {
  switch (r) {
  case LM_FINISH_LENGTH: return "length";
  case LM_FINISH_EOS: return "eos";
  case LM_FINISH_STOP_TOKEN: return "stop_token";
  case LM_FINISH_STOP_STRING: return "stop_string";
  case LM_FINISH_ABORT: return "abort";
  case LM_FINISH_ERROR: return "error";
  default: return "";
  }
}

void lm_request_params_init(const lm_engine *e, struct lm_request_params *p) {
  memset(p, 0, sizeof(*p));
  p->skip_special_tokens = 1;
  if (!e) return;
  /* generation_config.json's values, when it allows sampling at all */
  const struct lm_gen_defaults *g = &e->m->gen;
  int sample = g->do_sample != 0;
  struct lm_sampling *s = &p->sampling;
  if (g->has_temperature && sample) s->temperature = g->temperature;
  if (g->has_top_p && sample) s->top_p = g->top_p;
  if (g->has_top_k && sample) s->top_k = g->top_k;
  if (g->has_min_p && sample) s->min_p = g->min_p;
  if (g->has_repetition_penalty) s->repetition_penalty = g->repetition_penalty;
}

/* ---- the id registry (e->mu) ------------------------------------------- */

static uint32_t id_bucket(const char *id) {
  uint32_t h = 2166136261u;
  for (; *id; id++)
    h = (h ^ (uint8_t)*id) * 16777619u;
  return h % LM_REGISTRY_BUCKETS;
}

static lm_request *registry_find(lm_engine *e, const char *id) {
  for (lm_request *r = e->registry[id_bucket(id)]; r; r = r->reg_next)
    if (strcmp(r->id, id) == 0) return r;
  return NULL;
}

void lm_engine_registry_remove(lm_engine *e, lm_request *r) {
  pthread_mutex_lock(&e->mu);
  lm_request **link = &e->registry[id_bucket(r->id)];
  while (*link && *link != r)
    link = &(*link)->reg_next;
  if (*link) *link = r->reg_next;
  r->reg_next = NULL;
  pthread_mutex_unlock(&e->mu);
}

/* ---- the engine thread -------------------------------------------------- */

/* Copies the engine thread's counters and the queue sizes where any thread
 * can read them; e->mu held. */
static void publish_stats(lm_engine *e) {
  struct lm_engine_stats *s = &e->stats;
  int unstarted = 0;
  for (int i = 0; i < e->n_waiting; i++)
    unstarted += !e->waiting[i]->started;
  e->n_unstarted = unstarted;
  *s = e->st;
  s->num_running = e->n_running;
  s->num_waiting = e->n_waiting + e->inbox_len;
  s->kv_blocks_total = lm_kv_pool_num_blocks(e->pool);
  s->kv_blocks_cached = lm_kv_pool_num_cached(e->pool);
  s->kv_blocks_free = lm_kv_pool_num_free(e->pool) - s->kv_blocks_cached;
  s->kv_blocks_used = s->kv_blocks_total - lm_kv_pool_num_free(e->pool);
  s->busy = e->n_running + e->n_waiting + e->inbox_len > 0;
  s->num_held = 0;
  for (int i = 0; i < e->n_running; i++)
    s->num_held += atomic_load(&e->running[i]->held);
  for (int i = 0; i < e->n_waiting; i++)
    s->num_held += atomic_load(&e->waiting[i]->held);
  s->last_step_end_s = lm_now_s();
}

/* Moves the mailbox into the waiting queue; e->mu held on entry and exit. */
static void take_inbox(lm_engine *e) {
  lm_request *in = e->inbox;
  e->inbox = NULL;
  e->inbox_tail = &e->inbox;
  e->inbox_len = 0;
  while (in) {
    lm_request *r = in;
    in = r->inbox_next;
    r->inbox_next = NULL;
    e->n_unstarted++;
    if (lm_sched_add_waiting(e, r) != LM_OK) {
      pthread_mutex_unlock(&e->mu);
      lm_sched_finish(e, r, LM_FINISH_ERROR, LM_ENOMEM, "out of memory for the waiting queue");
      pthread_mutex_lock(&e->mu);
    }
  }
}

static void *engine_main(void *arg) {
  lm_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  while (!e->stop) {
    take_inbox(e);
    uint64_t kicks = e->kicks;
    pthread_mutex_unlock(&e->mu);
    int ran = lm_sched_step(e);
    double deadline = ran ? -1 : lm_sched_next_deadline(e, lm_now_s());
    pthread_mutex_lock(&e->mu);
    publish_stats(e);
    if (ran || e->stop || e->inbox || e->kicks != kicks) continue;
    if (deadline < 0) {
      pthread_cond_wait(&e->cv, &e->mu);
    } else {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + deadline + 1e-3;
      ts.tv_sec = (time_t)t;
      ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
      pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
  }
  /* stopping: everything still here ends as aborted */
  take_inbox(e);
  pthread_mutex_unlock(&e->mu);
  while (e->n_running)
    lm_sched_finish(e, e->running[e->n_running - 1], LM_FINISH_ABORT, 0, NULL);
  while (e->n_waiting)
    lm_sched_finish(e, e->waiting[e->n_waiting - 1], LM_FINISH_ABORT, 0, NULL);
  pthread_mutex_lock(&e->mu);
  publish_stats(e);
  pthread_mutex_unlock(&e->mu);
  return NULL;
}

/* ---- create / destroy --------------------------------------------------- */

/* Blocks of kv_dtype for the pool: exactly n_kv_blocks, else as many as
 * kv_cache_bytes holds; by default, what the backend has room for (the
 * GPU: its memory share less weights and activations), else an eighth of
 * host memory, at most 2 GiB; never more than max_num_seqs full-length
 * sequences need. */
static int pool_blocks(const struct lm_engine_config *c, const struct lm_config *mc,
                       const lm_backend *be, enum lm_dtype kv_dtype, int64_t *n_blocks, char *err) {
  const struct lm_backend_ops *ops = be->ops;
  struct lm_kv_shape shape = {mc->n_layers, 1,       c->block_size, mc->n_kv_heads,
                              mc->head_dim, kv_dtype};
  if (c->n_kv_blocks > 0) {
    *n_blocks = c->n_kv_blocks;
    return LM_OK;
  }
  size_t block_bytes = lm_kv_block_bytes(&shape);
  size_t bytes = c->kv_cache_bytes;
  if (bytes == 0 && ops->kv_budget) {
    /* the runner's buffers are allocated after the pool; the slack covers
     * what is not counted (cuBLASLt's workspace, the CUDA context's growth) */
    size_t reserve = lm_runner_activation_bytes(mc, c->max_num_batched_tokens, c->max_num_seqs,
                                                ops->act_elem_bytes) +
                     ((size_t)256 << 20);
    int rc = ops->kv_budget(be->st, reserve, c->max_num_batched_tokens, c->max_num_seqs,
                            c->max_model_len, &bytes, err);
    if (rc != LM_OK) return rc;
  } else if (bytes == 0) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 8 : (size_t)1 << 30;
    if (bytes > (size_t)2 << 30) bytes = (size_t)2 << 30;
  }
  int64_t n = (int64_t)(bytes / block_bytes);
  int64_t most =
      (int64_t)c->max_num_seqs * ((c->max_model_len + c->block_size - 1) / c->block_size);
  if (n > most) n = most;
  if (n > (1 << 30)) n = 1 << 30;
  if (n <= 0)
    return lm_errf(err, LM_EINVAL, "engine: a KV cache of %zu bytes holds no block of %d tokens",
                   bytes, c->block_size);
  *n_blocks = n;
  return LM_OK;
}

static int check_config(struct lm_engine_config *c, const struct lm_config *mc, char *err) {
  if (c->block_size <= 0 || c->block_size > 256)
    return lm_errf(err, LM_EINVAL, "engine: block_size %d outside 1..256", c->block_size);
  if (!(c->gpu_memory_utilization > 0 && c->gpu_memory_utilization <= 1))
    return lm_errf(err, LM_EINVAL, "engine: gpu_memory_utilization %g outside (0, 1]",
                   (double)c->gpu_memory_utilization);
  if (c->max_num_seqs <= 0)
    return lm_errf(err, LM_EINVAL, "engine: max_num_seqs %d must be > 0", c->max_num_seqs);
  if (c->max_num_batched_tokens < 0)
    return lm_errf(err, LM_EINVAL, "engine: max_num_batched_tokens %d must be >= 0",
                   c->max_num_batched_tokens);
  if (c->max_waiting < 0)
    return lm_errf(err, LM_EINVAL, "engine: max_waiting %d must be >= 0", c->max_waiting);
  if (c->max_undrained_tokens <= 0)
    return lm_errf(err, LM_EINVAL, "engine: max_undrained_tokens %d must be > 0",
                   c->max_undrained_tokens);
  if (!(c->stall_timeout_s > 0))
    return lm_errf(err, LM_EINVAL, "engine: stall_timeout_s must be > 0");
  if (!(c->max_decode_slowdown == 0 ||
        (c->max_decode_slowdown >= 1 && c->max_decode_slowdown <= 1e6)))
    return lm_errf(err, LM_EINVAL,
                   "engine: max_decode_slowdown %g must be 0 (no limit) or in 1..1e6",
                   c->max_decode_slowdown);
  if (c->layered_prefill != 0 && c->layered_prefill != 1)
    return lm_errf(err, LM_EINVAL, "engine: layered_prefill %d must be 0 or 1", c->layered_prefill);
  if (c->max_model_len < 0 || c->max_model_len > mc->max_position_embeddings)
    return lm_errf(err, LM_EINVAL,
                   "engine: max_model_len %d outside 0..%d (the model's max_position_embeddings)",
                   c->max_model_len, mc->max_position_embeddings);
  if (c->max_model_len == 0) c->max_model_len = mc->max_position_embeddings;
  if (!c->backend) c->backend = "auto";
  return LM_OK;
}

static int alloc_scratch(lm_engine *e) {
  size_t s = (size_t)e->cfg.max_num_seqs;
  e->running = malloc(s * sizeof(*e->running));
  e->cap_running = (int)s;
  e->chunks = calloc(s, sizeof(*e->chunks));
  e->chunk_req = calloc(s, sizeof(*e->chunk_req));
  e->rows = calloc(s, sizeof(*e->rows));
  e->results = calloc(s, sizeof(*e->results));
  e->row_req = calloc(s, sizeof(*e->row_req));
  e->top = calloc(s * LM_MAX_TOP_LOGPROBS, sizeof(*e->top));
  if (!e->running || !e->chunks || !e->chunk_req || !e->rows || !e->results || !e->row_req ||
      !e->top)
    return LM_ENOMEM;
  return LM_OK;
}

static void engine_free(lm_engine *e) {
  if (!e) return;
  lm_runner_free(e->runner);
  lm_backend_destroy(e->be);
  lm_tokenizer_free(e->tok);
  lm_model_free(e->m);
  free(e->running);
  free(e->waiting);
  free(e->chunks);
  free(e->chunk_req);
  free(e->rows);
  free(e->results);
  free(e->row_req);
  free(e->top);
  lm_strbuf_free(&e->text);
  pthread_cond_destroy(&e->cv);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

int lm_engine_create(const struct lm_engine_config *cfg, lm_engine **out, char *err) {
  lm_engine *e;
  int rc;
  *out = NULL;
  if (!cfg || !cfg->model_dir) return lm_errf(err, LM_EINVAL, "engine: no model_dir");
  e = calloc(1, sizeof(*e));
  if (!e) return lm_errf(err, LM_ENOMEM, "engine: out of memory");
  pthread_mutex_init(&e->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&e->cv, &ca);
  pthread_condattr_destroy(&ca);
  e->inbox_tail = &e->inbox;
  e->cfg = *cfg;
  e->cfg.backend_cfg.gpu_memory_utilization = cfg->gpu_memory_utilization;
  if ((rc = lm_model_load(cfg->model_dir, &e->m, err)) != LM_OK ||
      (rc = lm_tokenizer_load(cfg->model_dir, &e->tok, err)) != LM_OK ||
      (rc = check_config(&e->cfg, &e->m->cfg, err)) != LM_OK ||
      (rc = lm_backend_create(e->cfg.backend, &e->cfg.backend_cfg, &e->be, err)) != LM_OK ||
      (rc = e->be->ops->load_weights(e->be->st, e->m, err)) != LM_OK)
    goto err;
  if (e->cfg.max_num_batched_tokens == 0)
    e->cfg.max_num_batched_tokens = e->be->ops->batched_tokens;
  const struct lm_config *mc = &e->m->cfg;
  int64_t n_blocks = 0;
  enum lm_dtype kv_dtype;
  if ((rc = lm_backend_kv_dtype(e->be->ops, mc->dtype, e->cfg.kv_cache_dtype, &kv_dtype, err)) !=
          LM_OK ||
      (rc = pool_blocks(&e->cfg, mc, e->be, kv_dtype, &n_blocks, err)) != LM_OK)
    goto err;
  e->cfg.n_kv_blocks = (int)n_blocks;
  e->attn_ctx_tokens = lm_config_layer_params(mc) / (2.0 * mc->n_heads * mc->head_dim);
  lm_step_model_init(&e->step_model);
  struct lm_runner_config rcfg = {
      .block_size = e->cfg.block_size,
      .n_blocks = (int)n_blocks,
      .max_batch_tokens = e->cfg.max_num_batched_tokens,
      .max_seqs = e->cfg.max_num_seqs,
      .max_model_len = e->cfg.max_model_len,
      .kv_dtype = lm_dtype_name(kv_dtype),
  };
  if ((rc = lm_runner_create(e->m, e->be, &rcfg, &e->runner, err)) != LM_OK) goto err;
  e->cfg.layered_prefill &= lm_runner_layer_chunks(e->runner);
  e->pool = lm_runner_kv_pool(e->runner);
  if ((rc = lm_kv_pool_set_prefix_caching(e->pool, e->cfg.enable_prefix_caching, err)) != LM_OK)
    goto err;
  if (alloc_scratch(e) != LM_OK) {
    rc = lm_errf(err, LM_ENOMEM, "engine: out of memory");
    goto err;
  }
  e->info = (struct lm_engine_info){
      .architecture = mc->arch->hf_name,
      .dtype = lm_dtype_name(mc->dtype),
      .kv_dtype = lm_dtype_name(lm_runner_kv_shape(e->runner)->dtype),
      .backend = e->be->ops->name,
      .max_model_len = e->cfg.max_model_len,
      .vocab_size = mc->vocab_size,
      .block_size = e->cfg.block_size,
      .n_kv_blocks = (int)n_blocks,
      .kv_block_bytes = lm_kv_block_bytes(lm_runner_kv_shape(e->runner)),
      .kv_capacity_tokens = n_blocks * e->cfg.block_size,
      .max_num_seqs = e->cfg.max_num_seqs,
      .max_num_batched_tokens = e->cfg.max_num_batched_tokens,
      .max_waiting = e->cfg.max_waiting,
      .max_decode_slowdown = e->cfg.max_decode_slowdown,
      .layered_prefill = e->cfg.layered_prefill,
  };
  publish_stats(e);
  if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
    rc = lm_errf(err, LM_ENOMEM, "engine: cannot start the engine thread");
    goto err;
  }
  pthread_setname_np(e->thread, "lm-engine");
  e->thread_started = 1;
  *out = e;
  return LM_OK;
err:
  engine_free(e);
  return rc;
}

void lm_engine_destroy(lm_engine *e) {
  if (!e) return;
  pthread_mutex_lock(&e->mu);
  e->stop = e->closed = 1;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  if (e->thread_started) pthread_join(e->thread, NULL);
  engine_free(e);
}

void lm_engine_close(lm_engine *e) {
  pthread_mutex_lock(&e->mu);
  e->closed = 1;
  pthread_mutex_unlock(&e->mu);
}

/* ---- submit ------------------------------------------------------------- */

/* Everything that can be checked without the engine's state. */
static int check_params(const lm_engine *e, const struct lm_request_params *p, char *err) {
  int vocab = e->info.vocab_size;
  if (p->request_id && strlen(p->request_id) >= LM_REQUEST_ID_MAX)
    return lm_errf(err, LM_EINVAL, "request_id: longer than %d bytes", LM_REQUEST_ID_MAX - 1);
  if (!p->prompt || p->n_prompt <= 0)
    return lm_errf(err, LM_EINVAL, "prompt: empty (give at least one token)");
  for (int i = 0; i < p->n_prompt; i++)
    if (p->prompt[i] < 0 || p->prompt[i] >= vocab)
      return lm_errf(err, LM_EINVAL,
                     "prompt: token id %d at position %d outside the vocabulary (%d)", p->prompt[i],
                     i, vocab);
  if (p->truncate_prompt_tokens < 0)
    return lm_errf(err, LM_EINVAL, "truncate_prompt_tokens: %d must be >= 0",
                   p->truncate_prompt_tokens);
  if (p->max_tokens < 0)
    return lm_errf(err, LM_EINVAL, "max_tokens: %d must be >= 0", p->max_tokens);
  if (p->min_tokens < 0)
    return lm_errf(err, LM_EINVAL, "min_tokens: %d must be >= 0", p->min_tokens);
  if (p->max_tokens > 0 && p->min_tokens > p->max_tokens)
    return lm_errf(err, LM_EINVAL, "min_tokens: %d is more than max_tokens %d", p->min_tokens,
                   p->max_tokens);
  if (p->logprobs != 0 && p->logprobs != 1)
    return lm_errf(err, LM_EINVAL, "logprobs: %d must be 0 or 1", p->logprobs);
  if (p->top_logprobs < 0 || p->top_logprobs > LM_MAX_TOP_LOGPROBS)
    return lm_errf(err, LM_EINVAL, "top_logprobs: %d outside 0..%d", p->top_logprobs,
                   LM_MAX_TOP_LOGPROBS);
  if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
    return lm_errf(err, LM_EINVAL, "stop: %d strings given without an array", p->n_stop);
  for (int i = 0; i < p->n_stop; i++)
    if (!p->stop[i] || !p->stop[i][0])
      return lm_errf(err, LM_EINVAL, "stop: string %d is empty", i);
  if (p->n_stop_token_ids < 0 || (p->n_stop_token_ids > 0 && !p->stop_token_ids))
    return lm_errf(err, LM_EINVAL, "stop_token_ids: %d ids given without an array",
                   p->n_stop_token_ids);
  for (int i = 0; i < p->n_stop_token_ids; i++)
    if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= vocab)
      return lm_errf(err, LM_EINVAL, "stop_token_ids: id %d outside the vocabulary (%d)",
                     p->stop_token_ids[i], vocab);
  return lm_sampling_check(&p->sampling, vocab, err);
}

/* A request with everything copied out of p; the prompt already cut to
 * n_prompt tokens from its end. */
static int build_request(lm_engine *e, const struct lm_request_params *p, int n_prompt,
                         int max_tokens, lm_request **out, char *err) {
  lm_request *r = lm_request_new();
  int rc;
  *out = NULL;
  if (!r) return lm_errf(err, LM_ENOMEM, "out of memory for a request");
  r->cap_tokens = n_prompt + max_tokens;
  r->tokens = malloc((size_t)r->cap_tokens * sizeof(int32_t));
  if (!r->tokens) goto nomem;
  memcpy(r->tokens, p->prompt + (p->n_prompt - n_prompt), (size_t)n_prompt * sizeof(int32_t));
  r->n_tokens = r->n_prompt = n_prompt;
  r->max_tokens = max_tokens;
  r->sampling = p->sampling;
  if (p->sampling.n_logit_bias) {
    r->logit_bias = malloc(p->sampling.n_logit_bias * sizeof(*r->logit_bias));
    if (!r->logit_bias) goto nomem;
    memcpy(r->logit_bias, p->sampling.logit_bias,
           p->sampling.n_logit_bias * sizeof(*r->logit_bias));
  }
  r->sampling.logit_bias = r->logit_bias;
  if ((rc = lm_outproc_create(e->tok, &e->m->cfg, p, max_tokens, &r->op, err)) != LM_OK) {
    lm_request_unref(r);
    return rc;
  }
  r->want_logprobs = p->logprobs || p->top_logprobs > 0;
  r->n_top = p->top_logprobs;
  r->priority = p->priority;
  r->notify = p->notify;
  r->notify_arg = p->notify_arg;
  r->usage.prompt_tokens = n_prompt;
  *out = r;
  return LM_OK;
nomem:
  lm_request_unref(r);
  return lm_errf(err, LM_ENOMEM, "out of memory for a request");
}

int lm_engine_submit(lm_engine *e, const struct lm_request_params *p, lm_request **out, char *err) {
  lm_request *r = NULL;
  int rc;
  *out = NULL;
  if ((rc = check_params(e, p, err)) != LM_OK) return rc;
  int n_prompt = p->n_prompt, len = e->cfg.max_model_len;
  if (p->truncate_prompt_tokens > 0 && p->truncate_prompt_tokens < n_prompt)
    n_prompt = p->truncate_prompt_tokens;
  int64_t max_tokens = p->max_tokens ? p->max_tokens : (int64_t)len - n_prompt;
  if (!p->max_tokens && max_tokens <= 0)
    return lm_errf(err, LM_ERANGE, "prompt: %d tokens leave no room for output in max_model_len %d",
                   n_prompt, len);
  if (n_prompt + max_tokens > len)
    return lm_errf(err, LM_ERANGE,
                   "max_tokens: the prompt (%d tokens) + max_tokens (%d) exceeds max_model_len %d",
                   n_prompt, p->max_tokens, len);
  /* with max_tokens 0 the limit is only known here */
  if (p->min_tokens > max_tokens)
    return lm_errf(err, LM_EINVAL,
                   "min_tokens: %d is more than the %lld tokens max_model_len %d leaves",
                   p->min_tokens, (long long)max_tokens, len);
  int64_t blocks = (n_prompt + max_tokens + e->cfg.block_size - 1) / e->cfg.block_size;
  if (blocks > e->info.n_kv_blocks)
    return lm_errf(err, LM_ERANGE,
                   "max_tokens: the prompt (%d tokens) + max_tokens (%lld) needs %lld KV blocks, "
                   "the whole cache has %d",
                   n_prompt, (long long)max_tokens, (long long)blocks, e->info.n_kv_blocks);
  if ((rc = build_request(e, p, n_prompt, (int)max_tokens, &r, err)) != LM_OK) return rc;

  pthread_mutex_lock(&e->mu);
  if (e->closed) {
    rc = lm_errf(err, LM_ECLOSED, "the engine is shutting down and takes no new requests");
    goto unlock;
  }
  if (e->inbox_len + e->n_unstarted >= e->cfg.max_waiting) {
    rc = lm_errf(err, LM_EFULL, "the waiting queue is full (%d requests): retry later",
                 e->cfg.max_waiting);
    goto unlock;
  }
  if (p->request_id && p->request_id[0]) {
    if (registry_find(e, p->request_id)) {
      rc = lm_errf(err, LM_EEXIST, "request_id: \"%s\" names a live request", p->request_id);
      goto unlock;
    }
    snprintf(r->id, sizeof(r->id), "%s", p->request_id);
  } else {
    do
      snprintf(r->id, sizeof(r->id), "req-%llu", (unsigned long long)++e->next_id);
    while (registry_find(e, r->id));
  }
  uint32_t b = id_bucket(r->id);
  r->reg_next = e->registry[b];
  e->registry[b] = r;
  r->arrival = e->next_arrival++;
  r->submit_s = lm_now_s();
  r->e = e;
  atomic_store(&r->refs, 2); /* the caller's and the engine's */
  *e->inbox_tail = r;
  e->inbox_tail = &r->inbox_next;
  e->inbox_len++;
  e->kicks++;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  *out = r;
  return LM_OK;
unlock:
  pthread_mutex_unlock(&e->mu);
  lm_request_unref(r);
  return rc;
}

int lm_engine_abort(lm_engine *e, const char *request_id) {
  int rc = LM_ENOENT;
  if (!request_id) return LM_ENOENT;
  pthread_mutex_lock(&e->mu);
  lm_request *r = registry_find(e, request_id);
  if (r) {
    atomic_store(&r->abort_flag, 1);
    e->kicks++;
    pthread_cond_signal(&e->cv);
    rc = LM_OK;
  }
  pthread_mutex_unlock(&e->mu);
  return rc;
}

/* ---- what the engine serves --------------------------------------------- */

void lm_engine_get_info(const lm_engine *e, struct lm_engine_info *info) {
  *info = e->info;
}

const lm_tokenizer *lm_engine_tokenizer(const lm_engine *e) {
  return e->tok;
}

const struct lm_config *lm_engine_model_config(const lm_engine *e) {
  return &e->m->cfg;
}

void lm_engine_get_stats(lm_engine *e, struct lm_engine_stats *s) {
  pthread_mutex_lock(&e->mu);
  *s = e->stats;
  pthread_mutex_unlock(&e->mu);
}
