/* output.c - a request's finish decision and streamed text.
 *
 * Text flows: sampled id -> streaming detokenizer (whole UTF-8 characters
 * only) -> held buffer -> released to the caller. The held buffer keeps the
 * longest suffix that could still grow into a stop string, so a match can
 * only ever start inside it: released text never holds any part of one.
 *
 * A stop string matches only where it starts and ends on character
 * boundaries of the decoded text, so no match can cut a character in two (a
 * stop string that is half a character's bytes never matches). When a
 * token's text completes several stop strings, the one that ends first
 * wins (ties: the longer one), which is what a character-by-character
 * stream would have found, so the outcome does not depend on how the text
 * was split into tokens.
 *
 * min_tokens follows vLLM: the first min_tokens generated tokens never end
 * the request (EOS, stop ids and stop strings are ignored there), and a stop
 * string must end in text produced after them. */
#include "engine/output.h"

#include <stdlib.h>
#include <string.h>

int lm_strbuf_append(struct lm_strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return LM_ENOMEM;
    b->data = p;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
  return LM_OK;
}

void lm_strbuf_free(struct lm_strbuf *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

struct lm_outproc {
  const lm_tokenizer *tok;
  const struct lm_config *cfg;
  lm_detok *dt;
  char **stop; /* [n_stop] NUL-terminated copies */
  size_t *stop_len;
  int n_stop;
  size_t max_stop_len;
  int32_t *stop_ids; /* [n_stop_ids + n_eos]: the stop ids, then the EOS ids
                        unless ignore_eos (all banned before min_tokens) */
  int n_stop_ids, n_banned;
  int ignore_eos, include_stop, min_tokens, max_tokens;
  int n_generated;
  enum lm_finish_reason finished;
  int matched;           /* index into stop, or -1 */
  int32_t stop_id;       /* the EOS or stop id that ended it, or -1 */
  struct lm_strbuf held; /* decoded, not yet released */
};

int lm_outproc_create(const lm_tokenizer *tok, const struct lm_config *cfg,
                      const struct lm_request_params *p, int max_tokens, lm_outproc **out,
                      char *err) {
  *out = NULL;
  if (max_tokens <= 0) return lm_errf(err, LM_EINVAL, "max_tokens must be > 0, got %d", max_tokens);
  if (p->min_tokens < 0)
    return lm_errf(err, LM_EINVAL, "min_tokens must be >= 0, got %d", p->min_tokens);
  if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
    return lm_errf(err, LM_EINVAL, "stop: bad list of %d strings", p->n_stop);
  if (p->n_stop_token_ids < 0 || (p->n_stop_token_ids > 0 && !p->stop_token_ids))
    return lm_errf(err, LM_EINVAL, "stop_token_ids: bad list of %d ids", p->n_stop_token_ids);
  for (int i = 0; i < p->n_stop; i++)
    if (!p->stop[i] || !p->stop[i][0]) return lm_errf(err, LM_EINVAL, "stop[%d] is empty", i);

  lm_outproc *o = calloc(1, sizeof(*o));
  if (!o) goto nomem;
  o->tok = tok;
  o->cfg = cfg;
  o->ignore_eos = p->ignore_eos;
  o->include_stop = p->include_stop_str_in_output;
  o->min_tokens = p->min_tokens;
  o->max_tokens = max_tokens;
  o->matched = -1;
  o->stop_id = -1;
  if (lm_detok_create(tok, p->skip_special_tokens, &o->dt) != LM_OK) goto nomem;
  if (p->n_stop > 0) {
    o->stop = calloc((size_t)p->n_stop, sizeof(*o->stop));
    o->stop_len = calloc((size_t)p->n_stop, sizeof(*o->stop_len));
    if (!o->stop || !o->stop_len) goto nomem;
    o->n_stop = p->n_stop;
    for (int i = 0; i < p->n_stop; i++) {
      if (!(o->stop[i] = strdup(p->stop[i]))) goto nomem;
      o->stop_len[i] = strlen(o->stop[i]);
      if (o->stop_len[i] > o->max_stop_len) o->max_stop_len = o->stop_len[i];
    }
  }
  int n_eos = p->ignore_eos ? 0 : cfg->n_eos;
  if (p->n_stop_token_ids + n_eos > 0) {
    o->stop_ids = malloc((size_t)(p->n_stop_token_ids + n_eos) * sizeof(*o->stop_ids));
    if (!o->stop_ids) goto nomem;
    if (p->n_stop_token_ids)
      memcpy(o->stop_ids, p->stop_token_ids, (size_t)p->n_stop_token_ids * sizeof(*o->stop_ids));
    if (n_eos)
      memcpy(o->stop_ids + p->n_stop_token_ids, cfg->eos_token_ids,
             (size_t)n_eos * sizeof(*o->stop_ids));
    o->n_stop_ids = p->n_stop_token_ids;
    o->n_banned = p->n_stop_token_ids + n_eos;
  }
  *out = o;
  return LM_OK;
nomem:
  lm_outproc_free(o);
  return lm_errf(err, LM_ENOMEM, "output: out of memory");
}

void lm_outproc_free(lm_outproc *o) {
  if (!o) return;
  lm_detok_free(o->dt);
  for (int i = 0; o->stop && i < o->n_stop; i++)
    free(o->stop[i]);
  free(o->stop);
  free(o->stop_len);
  free(o->stop_ids);
  lm_strbuf_free(&o->held);
  free(o);
}

static int is_cont(char c) {
  return ((unsigned char)c & 0xc0) == 0x80;
}

/* A character boundary of s[0, n) at i (n itself is one). */
static int boundary(const char *s, size_t n, size_t i) {
  return i >= n || !is_cont(s[i]);
}

/* The first stop string that ends after `from` in held text h[0, n), ends
 * earliest, and starts and ends on character boundaries: its index, with
 * *start set; -1 when none. */
static int find_stop(const lm_outproc *o, const char *h, size_t n, size_t from, size_t *start) {
  int best = -1;
  size_t best_end = 0, best_start = 0;
  for (int i = 0; i < o->n_stop; i++) {
    size_t sl = o->stop_len[i];
    if (sl > n) continue;
    size_t pos = from + 1 > sl ? from + 1 - sl : 0; /* a match must end after from */
    while (pos + sl <= n) {
      const char *m = memmem(h + pos, n - pos, o->stop[i], sl);
      if (!m) break;
      size_t s = (size_t)(m - h);
      if (boundary(h, n, s) && boundary(h, n, s + sl)) {
        size_t end = s + sl;
        if (best < 0 || end < best_end || (end == best_end && s < best_start)) {
          best = i;
          best_end = end;
          best_start = s;
        }
        break;
      }
      pos = s + 1;
    }
  }
  *start = best_start;
  return best;
}

/* Bytes at the end of h[0, n) that could be the start of a stop string. */
static size_t hold_len(const lm_outproc *o, const char *h, size_t n) {
  size_t hold = 0;
  for (int i = 0; i < o->n_stop; i++) {
    size_t k = o->stop_len[i] - 1 < n ? o->stop_len[i] - 1 : n;
    for (; k > hold; k--)
      if (!is_cont(h[n - k]) && !memcmp(h + n - k, o->stop[i], k)) break;
    if (k > hold) hold = k;
  }
  return hold;
}

/* Releases the first n bytes of held into text and drops `drop` more. */
static int release(lm_outproc *o, size_t n, size_t drop, struct lm_strbuf *text) {
  if (!o->held.len) return LM_OK;
  if (n && lm_strbuf_append(text, o->held.data, n) != LM_OK) return LM_ENOMEM;
  size_t gone = n + drop;
  memmove(o->held.data, o->held.data + gone, o->held.len - gone);
  o->held.len -= gone;
  o->held.data[o->held.len] = '\0';
  return LM_OK;
}

/* After new text was added to held (it was `before` bytes long): finds a
 * stop string ending in the new text, then releases what is safe (all of
 * it when finishing). Returns the finish reason, which a stop string
 * overrides. */
static enum lm_finish_reason settle(lm_outproc *o, size_t before, int counts,
                                    enum lm_finish_reason why, struct lm_strbuf *text) {
  const char *h = o->held.data;
  size_t n = o->held.len, start = 0;
  int m = counts && n > before ? find_stop(o, h, n, before, &start) : -1;
  if (m >= 0) {
    o->matched = m;
    o->stop_id = -1;
    size_t keep = start + (o->include_stop ? o->stop_len[m] : 0);
    if (release(o, keep, n - keep, text) != LM_OK) return LM_FINISH_ERROR;
    return LM_FINISH_STOP_STRING;
  }
  size_t out = why != LM_FINISH_NONE ? n : n - hold_len(o, h, n);
  if (release(o, out, 0, text) != LM_OK) return LM_FINISH_ERROR;
  return why;
}

static int is_stop_id(const lm_outproc *o, int32_t id) {
  for (int i = 0; i < o->n_stop_ids; i++)
    if (o->stop_ids[i] == id) return 1;
  return 0;
}

enum lm_finish_reason lm_outproc_push(lm_outproc *o, int32_t id, struct lm_strbuf *text) {
  char err[LM_ERR_LEN];
  if (o->finished != LM_FINISH_NONE) return o->finished;
  o->n_generated++;
  int counts = o->n_generated > o->min_tokens;
  enum lm_finish_reason why = LM_FINISH_NONE;
  size_t before = o->held.len;
  const char *d;
  size_t dn;
  if (counts && !o->ignore_eos && lm_config_is_eos(o->cfg, id)) {
    why = LM_FINISH_EOS;
  } else if (counts && is_stop_id(o, id)) {
    why = LM_FINISH_STOP_TOKEN;
  } else if (lm_tokenizer_id_token(o->tok, id, NULL)) {
    /* ids past the tokenizer's vocabulary (padding rows of the model's
     * embedding) have no text */
    if (lm_detok_push(o->dt, id, &d, &dn, err) != LM_OK) goto fail;
    if (dn && lm_strbuf_append(&o->held, d, dn) != LM_OK) goto fail;
  }
  if (why == LM_FINISH_NONE && o->n_generated >= o->max_tokens) why = LM_FINISH_LENGTH;
  if (why != LM_FINISH_NONE) {
    if (why != LM_FINISH_LENGTH) o->stop_id = id;
    if (lm_detok_flush(o->dt, &d, &dn, err) != LM_OK) goto fail;
    if (dn && lm_strbuf_append(&o->held, d, dn) != LM_OK) goto fail;
  }
  why = settle(o, before, counts, why, text);
  o->finished = why;
  return why;
fail:
  o->finished = LM_FINISH_ERROR;
  return LM_FINISH_ERROR;
}

void lm_outproc_flush(lm_outproc *o, struct lm_strbuf *text) {
  char err[LM_ERR_LEN];
  const char *d;
  size_t dn, before = o->held.len;
  if (o->finished != LM_FINISH_NONE) {
    release(o, o->held.len, 0, text);
    return;
  }
  if (lm_detok_flush(o->dt, &d, &dn, err) == LM_OK && dn) lm_strbuf_append(&o->held, d, dn);
  /* the detokenizer can hold back whole characters beside an incomplete
   * one: a stop string they complete still ends the text here */
  settle(o, before, o->n_generated > o->min_tokens, LM_FINISH_ABORT, text);
  o->finished = LM_FINISH_ABORT;
}

int lm_outproc_banned(const lm_outproc *o, const int32_t **ids) {
  *ids = o->stop_ids;
  return o->n_generated < o->min_tokens ? o->n_banned : 0;
}

const char *lm_outproc_stop_str(const lm_outproc *o) {
  return o->matched >= 0 ? o->stop[o->matched] : NULL;
}

int32_t lm_outproc_stop_token(const lm_outproc *o) {
  return o->stop_id;
}
