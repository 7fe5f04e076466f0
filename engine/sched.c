/* sched.c - the engine step: schedule, run, sample, hand out tokens.
 *
 * There is no separate prefill phase. A request has n_tokens (prompt plus
 * generated) and num_computed_tokens (kv.n_cached_tokens); each step hands
 * out a token budget, first to running requests' decodes (the one token
 * each one's last sample added), then to short prompts while a long one
 * is prefilled (schedule_short), then to running requests' prompts in
 * arrival order, then to waiting requests by priority and arrival, so a
 * long prompt is split across steps and never stalls the others' decodes
 * or a short request's start.
 *
 * When the pool has no block for a running request, the newest running
 * request is preempted: its blocks go back (their hashes stay, so the
 * prefix cache makes the recomputation cheap), its tokens stay, and it
 * waits at the front of its priority to be computed again. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

static void list_remove(lm_request **list, int *n, lm_request *r) {
  for (int i = 0; i < *n; i++)
    if (list[i] == r) {
      memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof(*list));
      (*n)--;
      return;
    }
}

static int grow_list(lm_request ***list, int *cap, int need) {
  if (need <= *cap) return LM_OK;
  int cap2 = *cap ? *cap : 64;
  while (cap2 < need)
    cap2 *= 2;
  lm_request **l = realloc(*list, (size_t)cap2 * sizeof(*l));
  if (!l) return LM_ENOMEM;
  *list = l;
  *cap = cap2;
  return LM_OK;
}

int lm_sched_add_waiting(lm_engine *e, lm_request *r) {
  if (grow_list(&e->waiting, &e->cap_waiting, e->n_waiting + 1) != LM_OK) return LM_ENOMEM;
  int i = e->n_waiting;
  while (i > 0 &&
         (e->waiting[i - 1]->priority > r->priority ||
          (e->waiting[i - 1]->priority == r->priority && e->waiting[i - 1]->arrival > r->arrival)))
    i--;
  memmove(e->waiting + i + 1, e->waiting + i, (size_t)(e->n_waiting - i) * sizeof(*e->waiting));
  e->waiting[i] = r;
  e->n_waiting++;
  r->state = LM_REQ_WAITING;
  return LM_OK;
}

/* A request that leaves the running list drops its layered chunk: the
 * layers it ran are computed again. */
static void drop_layered(lm_engine *e, lm_request *r) {
  if (e->layered == r) e->layered = NULL;
  r->layer_next = 0;
}

static struct lm_usage usage_of(const lm_request *r, double now) {
  struct lm_usage u = {
      .prompt_tokens = r->n_prompt,
      .completion_tokens = r->n_generated,
      .cached_tokens = r->cached_tokens,
      .queue_time_s = (r->started ? r->first_sched_s : now) - r->submit_s,
      .ttft_s = r->first_token_s > 0 ? r->first_token_s - r->submit_s : 0,
      .total_s = now - r->submit_s,
  };
  return u;
}

void lm_sched_finish(lm_engine *e, lm_request *r, enum lm_finish_reason why, int error_code,
                     const char *error) {
  double now = lm_now_s();
  const char *stop_str = NULL;
  int32_t stop_id = -1;
  if (r->state == LM_REQ_RUNNING)
    list_remove(e->running, &e->n_running, r);
  else if (r->state == LM_REQ_WAITING)
    list_remove(e->waiting, &e->n_waiting, r);
  r->state = LM_REQ_FINISHED;
  drop_layered(e, r);
  e->text.len = 0;
  if (r->op) {
    if (why == LM_FINISH_ABORT || why == LM_FINISH_ERROR) lm_outproc_flush(r->op, &e->text);
    stop_str = why == LM_FINISH_STOP_STRING ? lm_outproc_stop_str(r->op) : NULL;
    if (why == LM_FINISH_EOS || why == LM_FINISH_STOP_TOKEN) stop_id = lm_outproc_stop_token(r->op);
  }
  lm_kv_seq_release(&r->kv, e->pool);
  /* the id is free again before anyone can see the finish */
  lm_engine_registry_remove(e, r);
  struct lm_usage u = usage_of(r, now);
  lm_request_publish_finish(r, why, stop_id, stop_str, e->text.data, e->text.len, &u, error_code,
                            error);
  lm_outproc_free(r->op);
  r->op = NULL;
  free(r->tokens);
  r->tokens = NULL;
  free(r->logit_bias);
  r->logit_bias = NULL;
  atomic_store(&r->held, 0);
  e->st.requests_finished++;
  lm_request_unref(r);
}

static void preempt(lm_engine *e, lm_request *r) {
  list_remove(e->running, &e->n_running, r);
  drop_layered(e, r);
  lm_kv_seq_release(&r->kv, e->pool);
  /* cannot fail: the step made room for every request */
  lm_sched_add_waiting(e, r);
  e->st.preemptions++;
}

/* Backpressure: a request whose caller has not drained enough output is
 * skipped (it keeps its blocks) and its hold time starts. */
static int held_back(lm_engine *e, lm_request *r, double now) {
  if (lm_request_check_held(r, e->cfg.max_undrained_tokens)) {
    if (r->held_since_s == 0) r->held_since_s = now;
    return 1;
  }
  r->held_since_s = 0;
  return 0;
}

/* n tokens of r, over layers more of its layers (0: all). */
static void add_chunk(lm_engine *e, int i, lm_request *r, int n, int layers) {
  int done = r->kv.n_cached_tokens, begin = r->layer_next, end = begin + layers;
  e->chunks[i] = (struct lm_seq_chunk){
      .kv = &r->kv,
      .tokens = r->tokens + done,
      .n_tokens = n,
      .want_logits = done + n == r->n_tokens && (layers == 0 || end == e->m->cfg.n_layers),
      .layer_begin = layers ? begin : 0,
      .layer_end = layers ? end : 0,
  };
  e->chunk_req[i] = r;
  r->sched_step = e->sched_steps;
  if (layers && begin == 0) {
    e->layered = r;
    r->layer_tokens = n;
  }
}

/* Aborted and stalled requests end before anything is scheduled, so their
 * blocks are free for this step. */
static void reap(lm_engine *e, double now) {
  for (int l = 0; l < 2; l++)
    for (int i = (l == 0 ? e->n_running : e->n_waiting) - 1; i >= 0; i--) {
      lm_request *r = (l == 0 ? e->running : e->waiting)[i];
      if (atomic_load(&r->abort_flag)) {
        lm_sched_finish(e, r, LM_FINISH_ABORT, 0, NULL);
        continue;
      }
      /* held_since_s is only refreshed when the scheduler reaches the
       * request; one whose caller has drained since (but that the budget or
       * the sequence limit kept from being looked at) is not stalled */
      if (r->held_since_s > 0 && !lm_request_check_held(r, e->cfg.max_undrained_tokens))
        r->held_since_s = 0;
      if (r->held_since_s > 0 && now - r->held_since_s > e->cfg.stall_timeout_s) {
        e->st.stall_aborts++;
        lm_sched_finish(e, r, LM_FINISH_ABORT, 0, NULL);
      }
    }
}

double lm_sched_next_deadline(lm_engine *e, double now) {
  double best = -1;
  for (int l = 0; l < 2; l++) {
    lm_request **list = l == 0 ? e->running : e->waiting;
    int n = l == 0 ? e->n_running : e->n_waiting;
    for (int i = 0; i < n; i++)
      if (list[i]->held_since_s > 0) {
        double d = list[i]->held_since_s + e->cfg.stall_timeout_s - now;
        if (d < 0) d = 0;
        if (best < 0 || d < best) best = d;
      }
  }
  return best;
}

/* A step's budget: max_num_batched_tokens tokens, and as much compute.
 * A token at context position p costs 1 + p / attn_ctx_tokens token
 * equivalents (its weight matmuls plus its attention over p earlier
 * tokens), so a prefill chunk deep into a long prompt gets fewer tokens.
 * With short contexts both budgets are the plain token count.
 *
 * Beside running decodes, prompt chunks also get a time: the decodes' own
 * step, as the step model predicts it (step_model.h), times
 * max_decode_slowdown - 1. So a step that carries prompt tokens takes at
 * most max_decode_slowdown times as long as the decodes alone would, on
 * whatever machine the model was fitted: the decodes keep their
 * inter-token latency. The first chunk gets at least LM_PROMPT_FLOOR
 * tokens, so a prompt always advances (the short prompts' share and the
 * running prompts may each take one: schedule_short); except that where
 * the model has not timed decodes like these alone (their contexts have
 * grown past those it has seen, or 64 steps with chunks have passed:
 * lm_step_model_explored), the prompts wait for one step and the decodes'
 * own step is measured. */
#define LM_PROMPT_FLOOR 16

/* Layered chunks. Sized to that time, a chunk deep into a long prompt
 * holds a few dozen tokens, and each such chunk reads the prompt's whole
 * KV again for its attention and rides in the decodes' matmuls as a
 * second pass over their weights, where alone the prompt's chunks hold
 * hundreds of tokens: split thin, a prompt costs more than alone. So
 * where the time would cut a chunk below half of what the token budget
 * gives it (up to LM_LAYERED_TOKENS), the chunk runs over k of the layers
 * a step instead, the runner keeping its rows between steps (runner.h),
 * with as many tokens as k layers' time holds: the k that runs the most
 * token-layers a step (counting the steps a chunk of L layers takes) and
 * at least twice the ordinary chunk's tokens. Its layers take their share
 * of the step's time and compute budget (what short prompts left:
 * schedule_short), its rows the token budget in full. One prompt at a
 * time (e->layered); a request that leaves the running list starts its
 * chunk again. */
#define LM_LAYERED_TOKENS 512
#define LM_LAYERED_MIN    32   /* tokens below which a chunk is not layered */
#define LM_LAYERED_FILL   0.97 /* of the time, as the decodes' step is predicted again each step */

struct budget {
  int tokens;
  double cost;
  double seconds; /* for prompt chunks (INFINITY: no limit) */
  int floor;      /* prompt tokens the next chunk gets whatever seconds says */
  double spent;   /* seconds the prompt chunks took, past seconds where the floor gave more */
  int capped;     /* seconds shortened (or layered) a chunk */
  int probe;      /* the decodes run alone, for the step model */
  /* the short prompts' share (schedule_short; short_max 0: any prompt) */
  int short_max;      /* prompts with at most this many tokens left, no layered chunk */
  int short_priority; /* waiting ones of this priority or a more urgent one */
  int keep_free;      /* waiting ones admitted while this many tokens' blocks stay free */
};

/* Token equivalents of n tokens at positions start .. start + n - 1. */
static double chunk_cost(const lm_engine *e, int start, int n) {
  return n + ((double)n * start + (double)n * (n - 1) / 2) / e->attn_ctx_tokens;
}

/* How many of want tokens from position start fit. A decode always does
 * (while any token is left): a step never leaves a running sequence
 * behind for a prompt's sake. */
static int budget_fit(const lm_engine *e, struct budget *b, int start, int want) {
  int n = want < b->tokens ? want : b->tokens;
  if (n <= 1) return n;
  if (chunk_cost(e, start, n) > b->cost) {
    /* n^2 / 2L + n (1 + (start - 1/2) / L) <= cost: the positive root */
    double a = 0.5 / e->attn_ctx_tokens, q = 1 + (start - 0.5) / e->attn_ctx_tokens;
    double root = b->cost > 0 ? (-q + sqrt(q * q + 4 * a * b->cost)) / (2 * a) : 0;
    n = root < n ? (int)root : n;
    while (n > 0 && chunk_cost(e, start, n) > b->cost)
      n--;
  }
  if (n > 1 && b->seconds < INFINITY) {
    int t = lm_step_model_fit_chunk(&e->step_model, start, n, b->seconds);
    if (t < b->floor) t = b->floor < n ? b->floor : n;
    if (t < n) {
      n = t;
      b->capped = 1;
    }
  }
  return n;
}

/* Layers of an n-token chunk from position start that fit the compute
 * budget and the time left (at least one while the floor holds), up to
 * most. */
static int layers_fit(const lm_engine *e, const struct budget *b, int start, int n, int most) {
  double k = e->m->cfg.n_layers * b->cost / chunk_cost(e, start, n);
  if (b->seconds < INFINITY) {
    double per_layer = lm_step_model_chunk_seconds(&e->step_model, start, n) / e->m->cfg.n_layers;
    if (per_layer > 0) k = fmin(k, b->seconds / per_layer);
  }
  int layers = k < most ? (int)k : most;
  if (layers < 1 && b->floor > 0) layers = 1;
  return layers > 0 ? layers : 0;
}

/* A prompt's next chunk: *n tokens over *layers layers (0: all of them,
 * an ordinary chunk). A new layered chunk takes only free blocks (it
 * reserves them here): short of them the chunk is the ordinary one, which
 * may preempt others or wait. */
static void prompt_fit(lm_engine *e, struct budget *b, lm_request *r, int start, int want, int *n,
                       int *layers) {
  int L = e->m->cfg.n_layers;
  *layers = 0;
  /* more decodes than when it began leave too few rows: it begins again */
  if (r->layer_next > 0 && r->layer_tokens > b->tokens) drop_layered(e, r);
  if (r->layer_next > 0) {
    /* the layered chunk under way goes on with the same tokens */
    int most = L - r->layer_next;
    *n = r->layer_tokens;
    *layers = layers_fit(e, b, start, *n, most);
    if (*layers < most) b->capped = 1;
    if (!*layers) *n = 0;
    return;
  }
  *n = budget_fit(e, b, start, want);
  /* the rows take the token budget in full, the layers their share of
   * the compute budget and of the time */
  int whole = want < b->tokens ? want : b->tokens;
  if (whole > LM_LAYERED_TOKENS) whole = LM_LAYERED_TOKENS;
  if (!e->cfg.layered_prefill || e->layered || b->short_max || b->seconds == INFINITY ||
      2 * *n >= whole)
    return;
  /* against the tokens the time holds (the floor may give more, past the
   * time), the most token-layers a step, unless whole layers waste a
   * tenth of the time */
  int t = lm_step_model_fit_chunk(&e->step_model, start, whole, b->seconds), best_m = 0, best_k = 0;
  double best = 0.9 * t * L;
  for (int k = 1; k < L; k++) {
    int m =
        lm_step_model_fit_chunk(&e->step_model, start, whole, LM_LAYERED_FILL * b->seconds * L / k);
    if (m < LM_LAYERED_MIN || m < 2 * t || k * chunk_cost(e, start, m) > L * b->cost) break;
    double per_step = (double)m * L / ((L + k - 1) / k);
    if (per_step > best) {
      best = per_step;
      best_m = m;
      best_k = k;
    }
  }
  if (best_k && lm_kv_seq_reserve(&r->kv, e->pool, start + best_m, NULL) == LM_OK) {
    *n = best_m;
    *layers = best_k;
  }
}

/* A chunk of n tokens from position start over layers of the layers (0:
 * all) takes its share of the budget; its rows count in full. */
static void budget_take(const lm_engine *e, struct budget *b, int start, int n, int layers) {
  double f = layers ? (double)layers / e->m->cfg.n_layers : 1;
  b->tokens -= n;
  b->cost -= f * chunk_cost(e, start, n);
  if (n > 1 && b->seconds < INFINITY) {
    double t = f * lm_step_model_chunk_seconds(&e->step_model, start, n);
    b->seconds = b->seconds > t ? b->seconds - t : 0;
    b->spent += t;
    b->floor = 0;
  }
}

/* Removes the step's chunk i of n, keeping the others' order. */
static void remove_chunk(lm_engine *e, int i, int n) {
  memmove(e->chunks + i, e->chunks + i + 1, (size_t)(n - 1 - i) * sizeof(*e->chunks));
  memmove(e->chunk_req + i, e->chunk_req + i + 1, (size_t)(n - 1 - i) * sizeof(*e->chunk_req));
}

/* A preempted request that already has a chunk in the step (a decode, or
 * a short prompt's chunk) leaves it: its blocks are gone. */
static void unschedule(lm_engine *e, int *n, const lm_request *r) {
  for (int i = 0; i < *n; i++)
    if (e->chunk_req[i] == r) {
      remove_chunk(e, i, *n);
      (*n)--;
      return;
    }
}

/* Running requests, oldest first: their decodes (and one-token
 * remainders), or their unfinished prompts (in the short prompts' share,
 * only short ones, not the one whose layered chunk is under way). A
 * request already in the step is passed over. */
static int schedule_running(lm_engine *e, double now, struct budget *budget, int *preempted,
                            int decodes, int n) {
  for (int i = 0; budget->tokens > 0 && i < e->n_running;) {
    lm_request *r = e->running[i];
    int left = r->n_tokens - r->kv.n_cached_tokens;
    if ((left == 1) != decodes || r->sched_step == e->sched_steps ||
        (budget->short_max && (left > budget->short_max || r == e->layered)) ||
        held_back(e, r, now)) {
      i++;
      continue;
    }
    int want, layers = 0;
    if (decodes)
      want = budget_fit(e, budget, r->kv.n_cached_tokens, left);
    else
      prompt_fit(e, budget, r, r->kv.n_cached_tokens, left, &want, &layers);
    if (want <= 0) {
      i++;
      continue;
    }
    int rc, fits = 1;
    while ((rc = lm_kv_seq_reserve(&r->kv, e->pool, r->kv.n_cached_tokens + want, NULL)) ==
           LM_EFULL) {
      lm_request *victim = e->running[e->n_running - 1];
      if (victim == r && e->n_running == 1) {
        fits = 0;
        break;
      }
      preempt(e, victim);
      unschedule(e, &n, victim);
      *preempted = 1;
      if (victim == r) {
        fits = 0;
        break;
      }
    }
    if (rc == LM_ENOMEM) {
      lm_sched_finish(e, r, LM_FINISH_ERROR, LM_ENOMEM, "out of memory for a block table");
      continue;
    }
    if (!fits) {
      if (r->state == LM_REQ_RUNNING) i++;
      continue;
    }
    budget_take(e, budget, r->kv.n_cached_tokens, want, layers);
    add_chunk(e, n++, r, want, layers);
    i++;
  }
  return n;
}

/* The step model's shape of the first n chunks. */
static struct lm_step_shape step_shape(const lm_engine *e, int n) {
  struct lm_step_shape shape = {0, 0, 0, 0};
  for (int i = 0; i < n; i++) {
    const struct lm_seq_chunk *c = &e->chunks[i];
    int start = e->chunk_req[i]->kv.n_cached_tokens, k = c->n_tokens;
    /* a layered chunk counts for the share of the layers it runs */
    double f = c->layer_end ? (double)(c->layer_end - c->layer_begin) / e->m->cfg.n_layers : 1;
    shape.tokens += f * k;
    if (k == 1) {
      shape.decode_keys += start + 1;
    } else {
      shape.prompt_tokens += f * k;
      shape.prompt_keys += f * lm_step_chunk_keys(start, k);
    }
  }
  return shape;
}

/* The time prompt chunks get beside the n decodes scheduled so far. */
static void limit_prompts(lm_engine *e, int n, struct budget *b) {
  if (e->cfg.max_decode_slowdown <= 0 || n == 0 || !lm_step_model_ready(&e->step_model)) return;
  struct lm_step_shape d = step_shape(e, n);
  if (!lm_step_model_explored(&e->step_model, &d)) {
    /* the decodes run alone this step: their time is measured, not
     * extrapolated (step_model.h) */
    b->seconds = 0;
    b->floor = 0;
    b->probe = 1;
    return;
  }
  b->seconds = (e->cfg.max_decode_slowdown - 1) * lm_step_model_predict(&e->step_model, &d);
  b->floor = LM_PROMPT_FLOOR;
}

/* Then waiting requests, by priority and arrival, while blocks, budget
 * and sequence slots last; the first that does not fit (in the short
 * prompts' share: that is not short, less urgent than the long prompt or
 * would leave too few free blocks) stops the rest. */
static int schedule_waiting(lm_engine *e, double now, struct budget *budget, int n) {
  int bs = e->cfg.block_size;
  for (int i = 0; budget->tokens > 0 && i < e->n_waiting && e->n_running < e->cfg.max_num_seqs;) {
    lm_request *r = e->waiting[i];
    if (held_back(e, r, now)) {
      i++;
      continue;
    }
    /* the most its cached blocks could leave to compute */
    if (budget->short_max && (r->priority > budget->short_priority ||
                              r->n_tokens - (r->n_tokens - 1) / bs * bs > budget->short_max))
      break;
    /* never the last token: its logits are needed */
    int hit = lm_kv_seq_match_prefix(&r->kv, e->pool, r->tokens, r->n_tokens - 1);
    if (hit < 0) {
      lm_sched_finish(e, r, LM_FINISH_ERROR, LM_ENOMEM, "out of memory for a block table");
      continue;
    }
    int want = 0, layers = 0;
    if (!budget->short_max || r->n_tokens - hit <= budget->short_max)
      prompt_fit(e, budget, r, hit, r->n_tokens - hit, &want, &layers);
    if (want <= 0) {
      lm_kv_seq_release(&r->kv, e->pool);
      break;
    }
    int rc = lm_kv_seq_reserve(&r->kv, e->pool, hit + want, NULL);
    if (rc == LM_OK && lm_kv_pool_num_free(e->pool) * bs < budget->keep_free) rc = LM_EFULL;
    if (rc != LM_OK) {
      lm_kv_seq_release(&r->kv, e->pool);
      if (rc == LM_ENOMEM) {
        lm_sched_finish(e, r, LM_FINISH_ERROR, LM_ENOMEM, "out of memory for a block table");
        continue;
      }
      break;
    }
    if (e->cfg.enable_prefix_caching) {
      e->st.prefix_cache_queries += (uint64_t)r->n_tokens;
      e->st.prefix_cache_hits += (uint64_t)hit;
    }
    list_remove(e->waiting, &e->n_waiting, r);
    e->running[e->n_running++] = r;
    r->state = LM_REQ_RUNNING;
    if (!r->started) {
      r->started = 1;
      r->first_sched_s = now;
      r->cached_tokens = hit < r->n_prompt ? hit : r->n_prompt;
    }
    budget_take(e, budget, hit, want, layers);
    add_chunk(e, n++, r, want, layers);
  }
  return n;
}

/* While a running prompt has more left than a step's token budget (a
 * long one), prompts with at most that much left (short ones) go ahead
 * of it, running ones first, then waiting ones as urgent as it: they take
 * up to LM_SHORT_SHARE of the step's tokens, compute and time, in
 * chunks over all the layers, and the long prompt the rest, with its own
 * floor. So a request that arrives while a long prompt is prefilled starts
 * within a few steps, rather than behind that prompt's every chunk, and
 * the long prompt advances every step whatever arrives. The layered
 * chunk under way keeps the token budget for its rows; otherwise a short
 * request is admitted only while the long prompt's chunk would still
 * find free blocks, so it is not preempted in the same step. */
#define LM_SHORT_SHARE 0.5

static int schedule_short(lm_engine *e, double now, struct budget *b, int *preempted, int n) {
  const lm_request *lp = NULL;
  int most = e->cfg.max_num_batched_tokens;
  for (int i = 0; i < e->n_running; i++) {
    const lm_request *r = e->running[i];
    if (r->n_tokens - r->kv.n_cached_tokens > most) {
      lp = r;
      most = r->n_tokens - r->kv.n_cached_tokens;
    }
  }
  if (!lp) return n;
  int keep = e->layered ? e->layered->layer_tokens : 0;
  struct budget s = *b;
  s.tokens = (int)(LM_SHORT_SHARE * b->tokens);
  if (s.tokens > b->tokens - keep) s.tokens = b->tokens - keep;
  if (s.tokens <= 0) return n;
  s.cost *= LM_SHORT_SHARE;
  s.seconds *= LM_SHORT_SHARE;
  s.spent = 0;
  s.short_max = e->cfg.max_num_batched_tokens;
  s.short_priority = lp->priority;
  s.keep_free = e->layered ? 0 : b->tokens - s.tokens;
  int tokens = s.tokens;
  double cost = s.cost;
  n = schedule_running(e, now, &s, preempted, 0, n);
  if (!*preempted) n = schedule_waiting(e, now, &s, n);
  /* what they took comes off the step's budget; the floor stays the
   * long prompt's */
  b->tokens -= tokens - s.tokens;
  b->cost -= cost - s.cost;
  if (b->seconds < INFINITY) b->seconds = fmax(0, b->seconds - s.spent);
  b->capped |= s.capped;
  return n;
}

/* The chunk's prompt tokens count as computed; a chunk that reaches into
 * the prompt is one more step of that prompt's prefill. */
static void count_chunks(lm_engine *e, int n) {
  int decodes = 0, prefills = 0;
  for (int i = 0; i < n; i++) {
    lm_request *r = e->chunk_req[i];
    const struct lm_seq_chunk *c = &e->chunks[i];
    int start = r->kv.n_cached_tokens, end = start + c->n_tokens;
    if (c->layer_end) e->st.layered_steps++;
    if (start < r->n_prompt) {
      prefills++;
      /* a layered chunk's tokens count at its last layer */
      if (!c->layer_end || c->layer_end == e->m->cfg.n_layers)
        e->st.prompt_tokens += (uint64_t)((end < r->n_prompt ? end : r->n_prompt) - start);
      if (++r->prefill_steps > e->st.max_prefill_steps) e->st.max_prefill_steps = r->prefill_steps;
    } else if (e->chunks[i].n_tokens == 1 && r->n_generated > 0) {
      decodes++;
    }
  }
  if (prefills && decodes > e->st.max_decodes_with_prefill)
    e->st.max_decodes_with_prefill = decodes;
}

/* The runner takes a layered chunk as the step's last (runner.h); the
 * order of the others stays. */
static void layered_last(lm_engine *e, int n) {
  for (int i = 0; i < n - 1; i++)
    if (e->chunks[i].layer_end) {
      struct lm_seq_chunk c = e->chunks[i];
      lm_request *r = e->chunk_req[i];
      remove_chunk(e, i, n);
      e->chunks[n - 1] = c;
      e->chunk_req[n - 1] = r;
      return;
    }
}

/* After the step: a layered chunk has run its layers; at the last one its
 * tokens are in the cache (the runner counted them) and it is done. */
static void layered_ran(lm_engine *e, int n) {
  const struct lm_seq_chunk *c = &e->chunks[n - 1];
  lm_request *r = e->chunk_req[n - 1];
  if (!c->layer_end) return;
  r->layer_next = c->layer_end < e->m->cfg.n_layers ? c->layer_end : 0;
  if (!r->layer_next) e->layered = NULL;
}

static void finish_all(lm_engine *e, int n, int code, const char *msg) {
  for (int i = 0; i < n; i++)
    lm_sched_finish(e, e->chunk_req[i], LM_FINISH_ERROR, code, msg);
}

/* One sampled token: the request's next id, its text and maybe its end. */
static void take_token(lm_engine *e, lm_request *r, const struct lm_sample_result *res,
                       const struct lm_token_logprob *top, double now) {
  r->tokens[r->n_tokens++] = res->id;
  r->n_generated++;
  if (r->first_token_s == 0) r->first_token_s = now;
  e->st.generation_tokens++;
  e->text.len = 0;
  enum lm_finish_reason why = lm_outproc_push(r->op, res->id, &e->text);
  struct lm_usage u = usage_of(r, now);
  if (lm_request_push_output(r, res->id, res, top, e->text.data, e->text.len, &u) != LM_OK) {
    lm_sched_finish(e, r, LM_FINISH_ERROR, LM_ENOMEM, "out of memory for the output queue");
    return;
  }
  if (why == LM_FINISH_ERROR)
    lm_sched_finish(e, r, why, LM_ENOMEM, "out of memory while detokenizing");
  else if (why != LM_FINISH_NONE)
    lm_sched_finish(e, r, why, 0, NULL);
  else if (r->n_generated >= r->max_tokens) /* the token array ends here */
    lm_sched_finish(e, r, LM_FINISH_LENGTH, 0, NULL);
}

int lm_sched_step(lm_engine *e) {
  char err[LM_ERR_LEN];
  double now = lm_now_s();
  struct budget budget = {.tokens = e->cfg.max_num_batched_tokens,
                          .cost = e->cfg.max_num_batched_tokens,
                          .seconds = INFINITY};
  int preempted = 0, n;
  reap(e, now);
  /* preempted requests move to waiting: make room for all of them now */
  if (grow_list(&e->waiting, &e->cap_waiting, e->n_waiting + e->n_running) != LM_OK) return 0;
  e->sched_steps++;
  n = schedule_running(e, now, &budget, &preempted, 1, 0);
  limit_prompts(e, n, &budget);
  n = schedule_short(e, now, &budget, &preempted, n);
  n = schedule_running(e, now, &budget, &preempted, 0, n);
  /* after a preemption the pool is short: let running requests catch up */
  if (!preempted) n = schedule_waiting(e, now, &budget, n);
  if (n == 0) return 0;
  layered_last(e, n);
  count_chunks(e, n);
  struct lm_step_shape shape = step_shape(e, n);
  e->st.slowdown_limited_steps += (uint64_t)(budget.capped && !budget.probe);
  e->st.decode_probe_steps += (uint64_t)(budget.capped && budget.probe);

  const void *logits;
  int n_logits;
  double t0 = lm_now_s();
  int rc = lm_runner_step(e->runner, e->chunks, n, &logits, &n_logits, err);
  if (rc != LM_OK) {
    finish_all(e, n, rc, err);
    return 1;
  }
  e->st.steps++;
  layered_ran(e, n);
  int n_rows = 0;
  for (int i = 0; i < n; i++) {
    lm_request *r = e->chunk_req[i];
    if (!e->chunks[i].want_logits) continue;
    struct lm_token_logprob *top = e->top + (size_t)n_rows * LM_MAX_TOP_LOGPROBS;
    memset(top, 0, LM_MAX_TOP_LOGPROBS * sizeof(*top));
    const int32_t *banned;
    int n_banned = lm_outproc_banned(r->op, &banned);
    e->rows[n_rows] = (struct lm_sample_row){
        .params = &r->sampling,
        .position = (uint64_t)r->n_generated,
        .history = r->tokens,
        .n_history = (size_t)r->n_tokens,
        .n_top_logprobs = r->n_top,
        .skip_logprob = !r->want_logprobs && r->n_top == 0,
        .top = top,
        /* presence and frequency penalties count the output only */
        .n_prompt = (size_t)r->n_prompt,
        /* before min_tokens, EOS and stop ids cannot be drawn */
        .banned = banned,
        .n_banned = n_banned,
    };
    e->row_req[n_rows++] = r;
  }
  const struct lm_backend_ops *ops = e->be->ops;
  if (n_rows > 0 && (rc = ops->sample(e->be->st, logits, n_rows, e->info.vocab_size, e->rows,
                                      e->results, err)) != LM_OK) {
    /* a backend that runs asynchronously reports a failed step here: none
     * of its K/V may enter the prefix cache */
    finish_all(e, n, rc, err);
    return 1;
  }
  now = lm_now_s();
  lm_step_model_observe(&e->step_model, &shape, now - t0);
  for (int i = 0; i < n; i++)
    lm_kv_seq_commit(&e->chunk_req[i]->kv, e->pool, e->chunk_req[i]->tokens);
  for (int j = 0; j < n_rows; j++)
    take_token(e, e->row_req[j], &e->results[j], e->top + (size_t)j * LM_MAX_TOP_LOGPROBS, now);
  return 1;
}
