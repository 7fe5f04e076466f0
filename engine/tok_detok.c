/* tok_detok.c - incremental detokenizer for streaming.
 *
 * The vLLM scheme: keep two offsets into the ids, prefix and read. Each push
 * decodes ids[prefix..] and ids[prefix..read]; the text the new id added is
 * the difference. Decoding a short window instead of everything keeps a push
 * O(1) amortized, and decoding the window with some context before the new
 * ids keeps context-dependent decoders right (a Strip of the leading space
 * applies to both decodes, so it cancels out). Text ending in U+FFFD is an
 * incomplete UTF-8 sequence (or byte-fallback bytes) still waiting for its
 * continuation, so it is held back until a later id completes it.
 *
 * ByteFallback needs one more rule: it turns a whole run of <0xXX> tokens
 * into U+FFFDs (one per byte) when the run is not valid UTF-8, so a later
 * byte can spoil bytes that already formed complete characters. Text is
 * therefore held while the last (not skipped) token is such a byte. */
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

struct lm_detok {
  const lm_tokenizer *tok;
  int skip_special;
  int32_t *ids; /* ids[0] is the id at index base of the stream */
  size_t n, cap;
  size_t prefix, read; /* offsets into ids */
  int in_bytes;        /* the last decoded token is a ByteFallback byte */
  lm_buf prefix_text;  /* decode(ids[prefix..read]) */
  lm_buf text;         /* decode(ids[prefix..n]) */
  lm_buf delta;
};

int lm_detok_create(const lm_tokenizer *tok, int skip_special, lm_detok **out) {
  *out = NULL;
  lm_detok *d = calloc(1, sizeof(*d));
  if (!d) return LM_ENOMEM;
  d->tok = tok;
  d->skip_special = skip_special;
  *out = d;
  return LM_OK;
}

void lm_detok_free(lm_detok *d) {
  if (!d) return;
  free(d->ids);
  lm_buf_free(&d->prefix_text);
  lm_buf_free(&d->text);
  lm_buf_free(&d->delta);
  free(d);
}

static int ends_with_fffd(const lm_buf *b) {
  return b->n >= 3 && !memcmp(b->p + b->n - 3, "\xef\xbf\xbd", 3);
}

/* Sets d->delta to text[len(prefix_text)..] when that is sound. */
static int diff(lm_detok *d, int final) {
  d->delta.n = 0;
  if (lm_buf_reserve(&d->delta, 0)) return LM_ENOMEM;
  d->delta.p[0] = '\0';
  size_t pl = d->prefix_text.n;
  if (d->text.n <= pl || (!final && ends_with_fffd(&d->text))) return 0;
  /* the window's text must extend the prefix text at a character boundary */
  if ((pl && memcmp(d->text.p, d->prefix_text.p, pl) != 0) ||
      ((unsigned char)d->text.p[pl] & 0xc0) == 0x80)
    return 0;
  if (lm_buf_put(&d->delta, d->text.p + pl, d->text.n - pl)) return LM_ENOMEM;
  return 1;
}

int lm_detok_push(lm_detok *d, int32_t id, const char **delta, size_t *delta_len, char *err) {
  *delta = "";
  *delta_len = 0;
  if (!lm_tokenizer_id_token(d->tok, id, NULL))
    return lm_errf(err, LM_ERANGE, "detok: id %d is not in the vocabulary", (int)id);
  /* drop ids no window will look at again */
  if (d->prefix > 256 && d->prefix * 2 > d->n) {
    memmove(d->ids, d->ids + d->prefix, (d->n - d->prefix) * sizeof(*d->ids));
    d->n -= d->prefix;
    d->read -= d->prefix;
    d->prefix = 0;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    int32_t *v = realloc(d->ids, cap * sizeof(*v));
    if (!v) return lm_errf(err, LM_ENOMEM, "detok: out of memory");
    d->ids = v;
    d->cap = cap;
  }
  d->ids[d->n++] = id;
  int fb = lm_tok_fallback_byte(d->tok, id, d->skip_special);
  if (fb >= 0) d->in_bytes = fb;
  if (d->in_bytes) return LM_OK;
  d->text.n = 0;
  int rc = lm_tok_decode_buf(d->tok, d->ids + d->prefix, d->n - d->prefix, d->skip_special,
                             &d->text, err);
  if (rc) return rc;
  int got = diff(d, 0);
  if (got < 0) return lm_errf(err, LM_ENOMEM, "detok: out of memory");
  if (got) {
    d->prefix = d->read;
    d->read = d->n;
    d->prefix_text.n = 0;
    rc = lm_tok_decode_buf(d->tok, d->ids + d->prefix, d->read - d->prefix, d->skip_special,
                           &d->prefix_text, err);
    if (rc) return rc;
  }
  *delta = d->delta.p;
  *delta_len = d->delta.n;
  return LM_OK;
}

int lm_detok_flush(lm_detok *d, const char **delta, size_t *delta_len, char *err) {
  *delta = "";
  *delta_len = 0;
  d->text.n = 0;
  /* nothing pushed yet: no id array at all */
  const int32_t *ids = d->ids ? d->ids + d->prefix : NULL;
  int rc = lm_tok_decode_buf(d->tok, ids, d->n - d->prefix, d->skip_special, &d->text, err);
  if (rc) return rc;
  if (diff(d, 1) < 0) return lm_errf(err, LM_ENOMEM, "detok: out of memory");
  /* the stream is complete: start over */
  d->n = d->prefix = d->read = 0;
  d->in_bytes = 0;
  d->prefix_text.n = 0;
  *delta = d->delta.p;
  *delta_len = d->delta.n;
  return LM_OK;
}
