/* request.c - a request handle as its caller sees it (id, abort, drain,
 * release) and the engine side of its output queue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

lm_request *lm_request_new(void) {
  lm_request *r = calloc(1, sizeof(*r));
  if (!r) return NULL;
  if (pthread_mutex_init(&r->mu, NULL) != 0) {
    free(r);
    return NULL;
  }
  atomic_init(&r->refs, 1);
  r->stop_token_id = -1;
  return r;
}

void lm_request_unref(lm_request *r) {
  if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
  /* the engine frees its side when it finishes a request; what is left
   * here belongs to a request it never took */
  lm_outproc_free(r->op);
  free(r->tokens);
  free(r->logit_bias);
  free(r->kv.blocks);
  free(r->q_ids);
  free(r->q_logprobs);
  free(r->q_text_end);
  free(r->q_top);
  lm_strbuf_free(&r->q_text);
  free(r->stop_str);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

const char *lm_request_id(const lm_request *r) {
  return r->id;
}

/* Wakes the engine thread for r; called with r->mu held. */
static void kick_locked(lm_request *r) {
  lm_engine *e = r->e;
  if (!e) return;
  pthread_mutex_lock(&e->mu);
  e->kicks++;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

void lm_request_abort(lm_request *r) {
  if (!r) return;
  atomic_store(&r->abort_flag, 1);
  pthread_mutex_lock(&r->mu);
  kick_locked(r);
  pthread_mutex_unlock(&r->mu);
}

void lm_request_release(lm_request *r) {
  if (!r) return;
  atomic_store(&r->abort_flag, 1);
  pthread_mutex_lock(&r->mu);
  r->released = 1;
  kick_locked(r);
  pthread_mutex_unlock(&r->mu);
  lm_request_unref(r);
}

static int grow(void **p, size_t n, size_t elem) {
  void *q = realloc(*p, n * elem);
  if (!q) return LM_ENOMEM;
  *p = q;
  return LM_OK;
}

int lm_request_drain(lm_request *r, struct lm_output *out) {
  int any, rc = LM_OK;
  pthread_mutex_lock(&r->mu);
  size_t n = (size_t)r->q_n, nt = (size_t)r->n_top;
  if (n > out->cap_tokens) {
    if (grow((void **)&out->token_ids, n, sizeof(int32_t)) ||
        grow((void **)&out->logprobs, n, sizeof(float)) ||
        grow((void **)&out->text_ends, n, sizeof(size_t))) {
      rc = LM_ENOMEM;
      goto out;
    }
    out->cap_tokens = n;
    out->n_top = 0; /* the top array follows the new size below */
  }
  /* out may have served a request with fewer alternatives per token */
  if (nt && out->cap_tokens && (out->n_top != (int)nt || !out->top_logprobs)) {
    if (grow((void **)&out->top_logprobs, out->cap_tokens * nt, sizeof(struct lm_token_logprob))) {
      rc = LM_ENOMEM;
      goto out;
    }
    out->n_top = (int)nt;
  }
  if (r->q_text.len + 1 > out->cap_text) {
    if (grow((void **)&out->text, r->q_text.len + 1, 1)) {
      rc = LM_ENOMEM;
      goto out;
    }
    out->cap_text = r->q_text.len + 1;
  }
  if (n) {
    memcpy(out->token_ids, r->q_ids, n * sizeof(int32_t));
    memcpy(out->text_ends, r->q_text_end, n * sizeof(size_t));
    if (r->want_logprobs) memcpy(out->logprobs, r->q_logprobs, n * sizeof(float));
    if (nt) memcpy(out->top_logprobs, r->q_top, n * nt * sizeof(struct lm_token_logprob));
  }
  out->n_tokens = (int)n;
  out->n_top = r->n_top;
  if (r->q_text.len) memcpy(out->text, r->q_text.data, r->q_text.len);
  out->text[r->q_text.len] = '\0';
  out->text_len = r->q_text.len;
  any = n > 0 || r->q_text.len > 0 || (r->finished && !r->finish_drained);
  r->finish_drained = r->finished;
  out->finished = r->finished;
  out->finish_reason = r->finish_reason;
  out->stop_token_id = r->stop_token_id;
  out->stop_str = r->stop_str;
  out->usage = r->usage;
  out->error_code = r->error_code;
  memcpy(out->error, r->error, sizeof(out->error));
  r->q_n = 0;
  r->q_text.len = 0;
  if (atomic_load(&r->held)) kick_locked(r);
  rc = any;
out:
  pthread_mutex_unlock(&r->mu);
  return rc;
}

void lm_output_free(struct lm_output *out) {
  if (!out) return;
  free(out->token_ids);
  free(out->text);
  free(out->logprobs);
  free(out->top_logprobs);
  free(out->text_ends);
  memset(out, 0, sizeof(*out));
}

int lm_request_check_held(lm_request *r, int limit) {
  pthread_mutex_lock(&r->mu);
  int held = r->q_n > limit;
  atomic_store(&r->held, held);
  pthread_mutex_unlock(&r->mu);
  return held;
}

static void notify_locked(lm_request *r) {
  if (!r->released && r->notify) r->notify(r->notify_arg);
}

int lm_request_push_output(lm_request *r, int32_t id, const struct lm_sample_result *res,
                           const struct lm_token_logprob *top, const char *text, size_t text_len,
                           const struct lm_usage *usage) {
  int rc = LM_OK;
  pthread_mutex_lock(&r->mu);
  int was_empty = r->q_n == 0 && r->q_text.len == 0;
  if (r->q_n == r->q_cap) {
    size_t cap = r->q_cap ? 2 * (size_t)r->q_cap : 16, nt = (size_t)r->n_top;
    if (grow((void **)&r->q_ids, cap, sizeof(int32_t)) ||
        grow((void **)&r->q_logprobs, cap, sizeof(float)) ||
        grow((void **)&r->q_text_end, cap, sizeof(size_t)) ||
        (nt && grow((void **)&r->q_top, cap * nt, sizeof(struct lm_token_logprob)))) {
      rc = LM_ENOMEM;
      goto out;
    }
    r->q_cap = (int)cap;
  }
  if (text_len && lm_strbuf_append(&r->q_text, text, text_len) != LM_OK) {
    rc = LM_ENOMEM;
    goto out;
  }
  r->q_ids[r->q_n] = id;
  r->q_logprobs[r->q_n] = res->logprob;
  r->q_text_end[r->q_n] = r->q_text.len;
  if (r->n_top)
    memcpy(r->q_top + (size_t)r->q_n * r->n_top, top,
           (size_t)r->n_top * sizeof(struct lm_token_logprob));
  r->q_n++;
  r->usage = *usage;
  if (was_empty) notify_locked(r);
out:
  pthread_mutex_unlock(&r->mu);
  return rc;
}

void lm_request_publish_finish(lm_request *r, enum lm_finish_reason why, int32_t stop_token_id,
                               const char *stop_str, const char *tail, size_t tail_len,
                               const struct lm_usage *usage, int error_code, const char *error) {
  pthread_mutex_lock(&r->mu);
  /* out of memory for the tail or the stop string: the finish itself
   * must still be delivered */
  if (tail_len) lm_strbuf_append(&r->q_text, tail, tail_len);
  if (stop_str) r->stop_str = strdup(stop_str);
  r->finished = 1;
  r->finish_reason = why;
  r->stop_token_id = stop_token_id;
  r->usage = *usage;
  r->error_code = error_code;
  if (error) snprintf(r->error, sizeof(r->error), "%s", error);
  r->e = NULL;
  notify_locked(r);
  pthread_mutex_unlock(&r->mu);
}
