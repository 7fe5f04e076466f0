/* tok_decode.c - post-processors (ByteLevel, TemplateProcessing, Roberta/
 * BertProcessing, Sequence) and decoders (ByteLevel, Replace, ByteFallback,
 * Fuse, Strip, Sequence).
 *
 * A decoder works as the library's decode_chain: a list of token strings
 * goes through each step in turn and the result is joined. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

/* ---- post-processors --------------------------------------------------- */

struct lm_tok_post {
  int32_t *pre, *post; /* ids around the sequence when add_special */
  size_t n_pre, n_post;
};

void lm_tok_post_free(lm_tok_post *p) {
  if (!p) return;
  free(p->pre);
  free(p->post);
  free(p);
}

static int push_id(int32_t **v, size_t *n, int32_t id) {
  int32_t *x = realloc(*v, (*n + 1) * sizeof(*x));
  if (!x) return LM_ENOMEM;
  x[(*n)++] = id;
  *v = x;
  return LM_OK;
}

static int template_parse(lm_tok_post *p, const lm_json *j, const char *path, char *err) {
  const lm_json *single = lm_json_get_type(j, "single", LM_JSON_ARRAY);
  const lm_json *specials = lm_json_get_type(j, "special_tokens", LM_JSON_OBJECT);
  if (!single) return lm_errf(err, LM_EFORMAT, "%s: missing \"single\" array", path);
  int seen_a = 0;
  for (size_t i = 0; i < single->n_kids; i++) {
    const lm_json *piece = &single->kids[i];
    const lm_json *st = lm_json_get_type(piece, "SpecialToken", LM_JSON_OBJECT);
    const lm_json *sq = lm_json_get_type(piece, "Sequence", LM_JSON_OBJECT);
    if (sq) {
      const lm_json *id = lm_json_get_type(sq, "id", LM_JSON_STRING);
      if (!id || strcmp(id->str, "A") != 0 || seen_a)
        return lm_errf(err, LM_EUNSUP, "%s.single[%zu]: only one Sequence \"A\" is supported", path,
                       i);
      seen_a = 1;
      continue;
    }
    const lm_json *name = lm_json_get_type(st, "id", LM_JSON_STRING);
    if (!name) return lm_errf(err, LM_EFORMAT, "%s.single[%zu]: unknown piece", path, i);
    const lm_json *sp = lm_json_get_type(specials, name->str, LM_JSON_OBJECT);
    const lm_json *ids = lm_json_get_type(sp, "ids", LM_JSON_ARRAY);
    if (!ids)
      return lm_errf(err, LM_EFORMAT, "%s.special_tokens: \"%s\" missing or without \"ids\"", path,
                     name->str);
    for (size_t k = 0; k < ids->n_kids; k++) {
      if (ids->kids[k].type != LM_JSON_NUMBER || !ids->kids[k].is_int || ids->kids[k].integer < 0 ||
          ids->kids[k].integer > INT32_MAX)
        return lm_errf(err, LM_EFORMAT, "%s.special_tokens[\"%s\"].ids: not a token id", path,
                       name->str);
      int32_t id = (int32_t)ids->kids[k].integer;
      if (seen_a ? push_id(&p->post, &p->n_post, id) : push_id(&p->pre, &p->n_pre, id))
        return lm_errf(err, LM_ENOMEM, "out of memory");
    }
  }
  return LM_OK;
}

static int pair_id(const lm_json *j, const char *k, int32_t *id) {
  const lm_json *a = lm_json_get_type(j, k, LM_JSON_ARRAY);
  if (!a || a->n_kids != 2 || a->kids[1].type != LM_JSON_NUMBER || !a->kids[1].is_int ||
      a->kids[1].integer < 0 || a->kids[1].integer > INT32_MAX)
    return -1;
  *id = (int32_t)a->kids[1].integer;
  return 0;
}

static int post_add(lm_tok_post *p, const lm_json *j, const char *path, char *err) {
  const lm_json *type = lm_json_get_type(j, "type", LM_JSON_STRING);
  if (!type) return lm_errf(err, LM_EFORMAT, "%s: missing \"type\"", path);
  const char *t = type->str;
  if (!strcmp(t, "ByteLevel")) return LM_OK; /* only touches offsets */
  if (!strcmp(t, "Sequence")) {
    const lm_json *a = lm_json_get_type(j, "processors", LM_JSON_ARRAY);
    if (!a) return lm_errf(err, LM_EFORMAT, "%s: missing \"processors\" array", path);
    for (size_t i = 0; i < a->n_kids; i++) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s.processors[%zu]", path, i);
      /* each processor wraps what the previous one produced */
      lm_tok_post inner = {0};
      int rc = post_add(&inner, &a->kids[i], sub, err);
      for (size_t k = 0; !rc && k < inner.n_pre; k++)
        rc = push_id(&p->pre, &p->n_pre, 0);
      if (!rc && inner.n_pre) {
        memmove(p->pre + inner.n_pre, p->pre, (p->n_pre - inner.n_pre) * sizeof(int32_t));
        memcpy(p->pre, inner.pre, inner.n_pre * sizeof(int32_t));
      }
      for (size_t k = 0; !rc && k < inner.n_post; k++)
        rc = push_id(&p->post, &p->n_post, inner.post[k]);
      free(inner.pre);
      free(inner.post);
      if (rc) return rc == LM_ENOMEM ? lm_errf(err, rc, "out of memory") : rc;
    }
    return LM_OK;
  }
  if (!strcmp(t, "TemplateProcessing")) return template_parse(p, j, path, err);
  if (!strcmp(t, "RobertaProcessing") || !strcmp(t, "BertProcessing")) {
    int32_t cls, sep;
    if (pair_id(j, "cls", &cls) || pair_id(j, "sep", &sep))
      return lm_errf(err, LM_EFORMAT, "%s: needs \"cls\" and \"sep\" pairs", path);
    if (push_id(&p->pre, &p->n_pre, cls) || push_id(&p->post, &p->n_post, sep))
      return lm_errf(err, LM_ENOMEM, "out of memory");
    return LM_OK;
  }
  return lm_errf(err, LM_EUNSUP, "%s: unsupported type \"%s\"", path, t);
}

int lm_tok_post_parse(const lm_json *j, const char *path, lm_tok_post **out, char *err) {
  *out = NULL;
  lm_tok_post *p = calloc(1, sizeof(*p));
  if (!p) return lm_errf(err, LM_ENOMEM, "out of memory");
  int rc = post_add(p, j, path, err);
  if (rc) {
    lm_tok_post_free(p);
    return rc;
  }
  *out = p;
  return LM_OK;
}

size_t lm_tok_post_n(const lm_tok_post *p) {
  return p ? p->n_pre + p->n_post : 0;
}

int32_t lm_tok_post_at(const lm_tok_post *p, size_t i) {
  return i < p->n_pre ? p->pre[i] : p->post[i - p->n_pre];
}

int lm_tok_post_apply(const lm_tok_post *p, lm_tokens *out, size_t start) {
  size_t n = out->n - start;
  for (size_t i = 0; i < p->n_pre + p->n_post; i++)
    if (lm_tokens_push(out, 0)) return LM_ENOMEM;
  if (!p->n_pre && !p->n_post) return LM_OK;
  memmove(out->ids + start + p->n_pre, out->ids + start, n * sizeof(int32_t));
  if (p->n_pre) memcpy(out->ids + start, p->pre, p->n_pre * sizeof(int32_t));
  if (p->n_post) memcpy(out->ids + start + p->n_pre + n, p->post, p->n_post * sizeof(int32_t));
  return LM_OK;
}

/* ---- decoders ----------------------------------------------------------- */

enum dec_kind { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP };

struct dec_step {
  enum dec_kind kind;
  lm_tok_regex *re;
  char *content;
  size_t content_len;
  uint32_t strip_cp;
  size_t start, stop;
};

struct lm_tok_dec {
  struct dec_step *steps;
  size_t n;
};

void lm_tok_dec_free(lm_tok_dec *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) {
    lm_tok_regex_free(d->steps[i].re);
    free(d->steps[i].content);
  }
  free(d->steps);
  free(d);
}

static size_t uint_field(const lm_json *j, const char *k) {
  const lm_json *v = lm_json_get_type(j, k, LM_JSON_NUMBER);
  return v && v->number > 0 ? (size_t)v->number : 0;
}

static int dec_add(lm_tok_dec *d, const lm_json *j, const char *path, char *err) {
  const lm_json *type = lm_json_get_type(j, "type", LM_JSON_STRING);
  if (!type) return lm_errf(err, LM_EFORMAT, "%s: missing \"type\"", path);
  const char *t = type->str;
  struct dec_step s = {0};
  if (!strcmp(t, "Sequence")) {
    const lm_json *a = lm_json_get_type(j, "decoders", LM_JSON_ARRAY);
    if (!a) return lm_errf(err, LM_EFORMAT, "%s: missing \"decoders\" array", path);
    for (size_t i = 0; i < a->n_kids; i++) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s.decoders[%zu]", path, i);
      int rc = dec_add(d, &a->kids[i], sub, err);
      if (rc) return rc;
    }
    return LM_OK;
  } else if (!strcmp(t, "ByteLevel")) {
    s.kind = D_BYTELEVEL;
  } else if (!strcmp(t, "ByteFallback")) {
    s.kind = D_BYTEFALLBACK;
  } else if (!strcmp(t, "Fuse")) {
    s.kind = D_FUSE;
  } else if (!strcmp(t, "Strip")) {
    const lm_json *c = lm_json_get_type(j, "content", LM_JSON_STRING);
    size_t adv;
    if (!c || !c->str_len) return lm_errf(err, LM_EFORMAT, "%s: missing \"content\"", path);
    s.kind = D_STRIP;
    s.strip_cp = lm_tok_utf8_next(c->str, c->str_len, &adv);
    s.start = uint_field(j, "start");
    s.stop = uint_field(j, "stop");
  } else if (!strcmp(t, "Replace")) {
    const lm_json *c = lm_json_get_type(j, "content", LM_JSON_STRING);
    if (!c) return lm_errf(err, LM_EFORMAT, "%s: missing \"content\"", path);
    s.kind = D_REPLACE;
    s.content = malloc(c->str_len + 1);
    if (!s.content) return lm_errf(err, LM_ENOMEM, "out of memory");
    memcpy(s.content, c->str, c->str_len + 1);
    s.content_len = c->str_len;
    int rc = lm_tok_pattern_parse(lm_json_get(j, "pattern"), path, &s.re, err);
    if (rc) {
      free(s.content);
      return rc;
    }
  } else {
    return lm_errf(err, LM_EUNSUP, "%s: unsupported type \"%s\"", path, t);
  }
  struct dec_step *v = realloc(d->steps, (d->n + 1) * sizeof(*v));
  if (!v) {
    lm_tok_regex_free(s.re);
    free(s.content);
    return lm_errf(err, LM_ENOMEM, "out of memory");
  }
  d->steps = v;
  d->steps[d->n++] = s;
  return LM_OK;
}

int lm_tok_dec_has_bytefallback(const lm_tok_dec *d) {
  for (size_t i = 0; d && i < d->n; i++)
    if (d->steps[i].kind == D_BYTEFALLBACK) return 1;
  return 0;
}

int lm_tok_dec_parse(const lm_json *j, const char *path, lm_tok_dec **out, char *err) {
  *out = NULL;
  lm_tok_dec *d = calloc(1, sizeof(*d));
  if (!d) return lm_errf(err, LM_ENOMEM, "out of memory");
  int rc = dec_add(d, j, path, err);
  if (rc) {
    lm_tok_dec_free(d);
    return rc;
  }
  *out = d;
  return LM_OK;
}

/* A list of token strings: bytes in buf, [start, end) in sp. */
typedef struct {
  lm_buf buf;
  lm_spans sp;
} toklist;

static int tl_push(toklist *l, const char *s, size_t n) {
  size_t at = l->buf.n;
  if (lm_buf_put(&l->buf, s, n)) return LM_ENOMEM;
  return lm_spans_push(&l->sp, at, at + n);
}

/* Appends to the last token of l (which must exist). */
static int tl_extend(toklist *l, const char *s, size_t n) {
  if (lm_buf_put(&l->buf, s, n)) return LM_ENOMEM;
  l->sp.v[l->sp.n - 1].end = l->buf.n;
  return LM_OK;
}

static int step_bytelevel(const toklist *in, toklist *out) {
  lm_buf bytes = {0};
  int rc = LM_OK;
  for (size_t i = 0; i < in->sp.n && !rc; i++) {
    const char *s = in->buf.p + in->sp.v[i].start;
    size_t n = in->sp.v[i].end - in->sp.v[i].start, at = bytes.n;
    int ok = 1;
    if (lm_buf_reserve(&bytes, n)) rc = LM_ENOMEM;
    for (size_t k = 0; k < n && !rc;) {
      size_t adv;
      int b = lm_tok_bytelevel_byte(lm_tok_utf8_next(s + k, n - k, &adv));
      if (b < 0) {
        ok = 0;
        break;
      }
      bytes.p[bytes.n++] = (char)b;
      k += adv;
    }
    if (!ok) { /* a character outside the byte alphabet: the token as is */
      bytes.n = at;
      rc = lm_buf_put(&bytes, s, n);
    }
  }
  lm_buf lossy = {0};
  if (!rc) rc = lm_buf_put_lossy(&lossy, bytes.p, bytes.n);
  if (!rc) rc = tl_push(out, lossy.p ? lossy.p : "", lossy.n);
  lm_buf_free(&bytes);
  lm_buf_free(&lossy);
  return rc;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int flush_bytes(lm_buf *pend, toklist *out) {
  int rc = LM_OK;
  if (!pend->n) return rc;
  if (lm_utf8_valid_prefix(pend->p, pend->n) == pend->n)
    rc = tl_push(out, pend->p, pend->n);
  else /* one U+FFFD per byte, as the library does here */
    for (size_t i = 0; i < pend->n && !rc; i++)
      rc = tl_push(out, "\xef\xbf\xbd", 3);
  pend->n = 0;
  return rc;
}

static int step_bytefallback(const toklist *in, toklist *out) {
  lm_buf pend = {0};
  int rc = LM_OK;
  for (size_t i = 0; i < in->sp.n && !rc; i++) {
    const char *s = in->buf.p + in->sp.v[i].start;
    size_t n = in->sp.v[i].end - in->sp.v[i].start;
    int hi, lo;
    /* u8::from_str_radix also takes a leading '+' on one digit */
    if (n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' &&
        (((hi = hexval(s[3])) >= 0 && (lo = hexval(s[4])) >= 0) ||
         (s[3] == '+' && (hi = 0, (lo = hexval(s[4])) >= 0)))) {
      unsigned char b = (unsigned char)(hi * 16 + lo);
      rc = lm_buf_put(&pend, &b, 1);
      continue;
    }
    rc = flush_bytes(&pend, out);
    if (!rc) rc = tl_push(out, s, n);
  }
  if (!rc) rc = flush_bytes(&pend, out);
  lm_buf_free(&pend);
  return rc;
}

static int step_strip(const struct dec_step *st, const toklist *in, toklist *out) {
  for (size_t i = 0; i < in->sp.n; i++) {
    const char *s = in->buf.p + in->sp.v[i].start;
    size_t n = in->sp.v[i].end - in->sp.v[i].start, a = 0, b = n, adv;
    for (size_t k = 0; k < st->start && a < b; k++) {
      if (lm_tok_utf8_next(s + a, n - a, &adv) != st->strip_cp) break;
      a += adv;
    }
    for (size_t k = 0; k < st->stop && b > a; k++) {
      size_t q = b - 1;
      while (q > a && ((unsigned char)s[q] & 0xc0) == 0x80)
        q--;
      if (lm_tok_utf8_next(s + q, b - q, &adv) != st->strip_cp) break;
      b = q;
    }
    if (tl_push(out, s + a, b - a)) return LM_ENOMEM;
  }
  return LM_OK;
}

static int step_replace(const struct dec_step *st, const toklist *in, toklist *out) {
  lm_spans m = {0};
  int rc = LM_OK;
  for (size_t i = 0; i < in->sp.n && !rc; i++) {
    const char *s = in->buf.p + in->sp.v[i].start;
    size_t n = in->sp.v[i].end - in->sp.v[i].start, at = 0;
    m.n = 0;
    if ((rc = lm_tok_regex_find(st->re, s, n, &m)) || (rc = tl_push(out, "", 0))) break;
    for (size_t k = 0; k < m.n && !rc; k++) {
      rc = tl_extend(out, s + at, m.v[k].start - at);
      if (!rc) rc = tl_extend(out, st->content, st->content_len);
      at = m.v[k].end;
    }
    if (!rc) rc = tl_extend(out, s + at, n - at);
  }
  lm_spans_free(&m);
  return rc;
}

int lm_tok_dec_apply(const lm_tok_dec *d, const char *const *toks, const size_t *lens, size_t n,
                     lm_buf *out) {
  if (!d) {
    for (size_t i = 0; i < n; i++)
      if ((i && lm_buf_put(out, " ", 1)) || lm_buf_put(out, toks[i], lens[i])) return LM_ENOMEM;
    return LM_OK;
  }
  toklist a = {0}, b = {0};
  int rc = LM_OK;
  for (size_t i = 0; i < n && !rc; i++)
    rc = tl_push(&a, toks[i], lens[i]);
  for (size_t i = 0; i < d->n && !rc; i++) {
    const struct dec_step *st = &d->steps[i];
    b.buf.n = 0;
    b.sp.n = 0;
    switch (st->kind) {
    case D_BYTELEVEL: rc = step_bytelevel(&a, &b); break;
    case D_BYTEFALLBACK: rc = step_bytefallback(&a, &b); break;
    case D_STRIP: rc = step_strip(st, &a, &b); break;
    case D_REPLACE: rc = step_replace(st, &a, &b); break;
    case D_FUSE:
      rc = tl_push(&b, a.buf.p ? a.buf.p : "", 0);
      for (size_t k = 0; k < a.sp.n && !rc; k++)
        rc = tl_extend(&b, a.buf.p + a.sp.v[k].start, a.sp.v[k].end - a.sp.v[k].start);
      break;
    }
    toklist t = a;
    a = b;
    b = t;
  }
  for (size_t i = 0; i < a.sp.n && !rc; i++)
    rc = lm_buf_put(out, a.buf.p + a.sp.v[i].start, a.sp.v[i].end - a.sp.v[i].start);
  if (!rc && lm_buf_reserve(out, 0)) rc = LM_ENOMEM;
  lm_buf_free(&a.buf);
  lm_buf_free(&b.buf);
  lm_spans_free(&a.sp);
  lm_spans_free(&b.sp);
  return rc;
}
