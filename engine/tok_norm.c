/* tok_norm.c - normalizers: NFC, NFKC, NFD, NFKD, Lowercase, Strip,
 * Replace, Prepend and Sequence.
 *
 * Unicode normalization runs through utf8proc (Unicode 15), but the library
 * normalizes with tables of an older Unicode version: code points it does not
 * know yet are left alone and block composition and reordering. Those code
 * points (lm_tok_nfc_opaque, found by comparing both on every code point) are
 * copied through and the text between them is normalized separately, which
 * reproduces the library exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/tok_internal.h"

enum norm_kind { N_NFC, N_NFKC, N_NFD, N_NFKD, N_LOWER, N_STRIP, N_REPLACE, N_PREPEND, N_SEQ };

struct lm_tok_norm {
  enum norm_kind kind;
  int strip_left, strip_right;
  lm_tok_regex *re;
  char *content; /* Replace content, Prepend string */
  size_t content_len;
  lm_tok_norm **kids;
  size_t n_kids;
};

void lm_tok_norm_free(lm_tok_norm *n) {
  if (!n) return;
  for (size_t i = 0; i < n->n_kids; i++)
    lm_tok_norm_free(n->kids[i]);
  free(n->kids);
  lm_tok_regex_free(n->re);
  free(n->content);
  free(n);
}

static char *dup_str(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

/* Parses a {"String": s} or {"Regex": r} pattern object. */
int lm_tok_pattern_parse(const lm_json *pat, const char *path, lm_tok_regex **out, char *err) {
  const lm_json *s = lm_json_get_type(pat, "String", LM_JSON_STRING);
  const lm_json *r = lm_json_get_type(pat, "Regex", LM_JSON_STRING);
  char e2[LM_ERR_LEN];
  if (!s && !r)
    return lm_errf(err, LM_EFORMAT, "%s.pattern: expected {\"String\"} or {\"Regex\"}", path);
  int rc = s ? lm_tok_regex_new(s->str, s->str_len, 1, out, e2)
             : lm_tok_regex_new(r->str, r->str_len, 0, out, e2);
  if (rc) return lm_errf(err, rc, "%s.pattern: %s", path, e2);
  return LM_OK;
}

int lm_tok_norm_parse(const lm_json *j, const char *path, lm_tok_norm **out, char *err) {
  *out = NULL;
  const lm_json *type = lm_json_get_type(j, "type", LM_JSON_STRING);
  if (!type) return lm_errf(err, LM_EFORMAT, "%s: missing \"type\"", path);
  lm_tok_norm *n = calloc(1, sizeof(*n));
  if (!n) return lm_errf(err, LM_ENOMEM, "out of memory");
  const char *t = type->str;
  int rc = LM_OK;
  if (!strcmp(t, "NFC"))
    n->kind = N_NFC;
  else if (!strcmp(t, "NFKC"))
    n->kind = N_NFKC;
  else if (!strcmp(t, "NFD"))
    n->kind = N_NFD;
  else if (!strcmp(t, "NFKD"))
    n->kind = N_NFKD;
  else if (!strcmp(t, "Lowercase"))
    n->kind = N_LOWER;
  else if (!strcmp(t, "Strip")) {
    const lm_json *l = lm_json_get_type(j, "strip_left", LM_JSON_BOOL);
    const lm_json *r = lm_json_get_type(j, "strip_right", LM_JSON_BOOL);
    n->kind = N_STRIP;
    n->strip_left = l ? l->boolean : 1;
    n->strip_right = r ? r->boolean : 1;
  } else if (!strcmp(t, "Replace") || !strcmp(t, "Prepend")) {
    int rep = t[0] == 'R';
    const lm_json *c = lm_json_get_type(j, rep ? "content" : "prepend", LM_JSON_STRING);
    n->kind = rep ? N_REPLACE : N_PREPEND;
    if (!c) {
      rc = lm_errf(err, LM_EFORMAT, "%s: missing \"%s\" string", path, rep ? "content" : "prepend");
      goto err;
    }
    n->content = dup_str(c->str, c->str_len);
    n->content_len = c->str_len;
    if (!n->content) {
      rc = lm_errf(err, LM_ENOMEM, "out of memory");
      goto err;
    }
    if (rep && (rc = lm_tok_pattern_parse(lm_json_get(j, "pattern"), path, &n->re, err))) goto err;
  } else if (!strcmp(t, "Sequence")) {
    const lm_json *a = lm_json_get_type(j, "normalizers", LM_JSON_ARRAY);
    n->kind = N_SEQ;
    if (!a) {
      rc = lm_errf(err, LM_EFORMAT, "%s: missing \"normalizers\" array", path);
      goto err;
    }
    n->kids = calloc(a->n_kids ? a->n_kids : 1, sizeof(*n->kids));
    if (!n->kids) {
      rc = lm_errf(err, LM_ENOMEM, "out of memory");
      goto err;
    }
    for (size_t i = 0; i < a->n_kids; i++) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s.normalizers[%zu]", path, i);
      if ((rc = lm_tok_norm_parse(&a->kids[i], sub, &n->kids[i], err))) goto err;
      n->n_kids++;
    }
  } else {
    rc = lm_errf(err, LM_EUNSUP, "%s: unsupported type \"%s\"", path, t);
    goto err;
  }
  *out = n;
  return LM_OK;
err:
  lm_tok_norm_free(n);
  return rc;
}

static int unicode_norm(enum norm_kind k, const char *s, size_t len, lm_buf *out) {
  size_t i = 0;
  for (; i < len && (unsigned char)s[i] < 0x80; i++) {
  }
  if (i == len) return lm_buf_put(out, s, len); /* ASCII is invariant */
  int opts = UTF8PROC_STABLE;
  if (k == N_NFC || k == N_NFKC)
    opts |= UTF8PROC_COMPOSE;
  else
    opts |= UTF8PROC_DECOMPOSE;
  if (k == N_NFKC || k == N_NFKD) opts |= UTF8PROC_COMPAT;
  size_t start = 0;
  i = 0;
  while (i <= len) {
    size_t adv = 0;
    int cut = i == len;
    if (!cut && (unsigned char)s[i] >= 0x80) {
      uint32_t cp = lm_tok_utf8_next(s + i, len - i, &adv);
      cut = (lm_tok_cclass(cp) & LM_CC_OPAQUE) != 0;
    } else if (!cut) {
      adv = 1;
    }
    if (cut) {
      if (i > start) {
        utf8proc_uint8_t *o = NULL;
        utf8proc_ssize_t r =
            utf8proc_map((const utf8proc_uint8_t *)s + start, (utf8proc_ssize_t)(i - start), &o,
                         (utf8proc_option_t)opts);
        if (r < 0) return LM_EINVAL;
        int rc = lm_buf_put(out, o, (size_t)r);
        free(o);
        if (rc) return rc;
      }
      if (i == len) break;
      if (lm_buf_put(out, s + i, adv)) return LM_ENOMEM;
      start = i + adv;
    }
    i += adv;
  }
  return LM_OK;
}

static int lowercase(const char *s, size_t len, lm_buf *out) {
  for (size_t i = 0; i < len;) {
    size_t adv;
    uint32_t cp = lm_tok_utf8_next(s + i, len - i, &adv);
    char tmp[8];
    size_t k;
    if (cp == 0x130) { /* full lowercase mapping: i + combining dot above */
      memcpy(tmp, "i\xcc\x87", 3);
      k = 3;
    } else {
      k = lm_utf8_put(tmp, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp));
    }
    if (lm_buf_put(out, tmp, k)) return LM_ENOMEM;
    i += adv;
  }
  return LM_OK;
}

static int is_space_at(const char *s, size_t len, size_t *adv) {
  uint32_t cp = lm_tok_utf8_next(s, len, adv);
  return (lm_tok_cclass(cp) & LM_CC_S) != 0;
}

static int strip(const lm_tok_norm *n, const char *s, size_t len, lm_buf *out) {
  size_t a = 0, b = len, adv;
  if (n->strip_left)
    while (a < b && is_space_at(s + a, b - a, &adv))
      a += adv;
  if (n->strip_right)
    while (b > a) {
      size_t k = b - 1;
      while (k > a && ((unsigned char)s[k] & 0xc0) == 0x80)
        k--;
      if (!is_space_at(s + k, b - k, &adv)) break;
      b = k;
    }
  return lm_buf_put(out, s + a, b - a);
}

static int replace(const lm_tok_norm *n, const char *s, size_t len, lm_buf *out) {
  lm_spans m = {0};
  int rc = lm_tok_regex_find(n->re, s, len, &m);
  size_t at = 0;
  for (size_t i = 0; !rc && i < m.n; i++) {
    if (lm_buf_put(out, s + at, m.v[i].start - at) || lm_buf_put(out, n->content, n->content_len))
      rc = LM_ENOMEM;
    at = m.v[i].end;
  }
  if (!rc) rc = lm_buf_put(out, s + at, len - at);
  lm_spans_free(&m);
  return rc;
}

int lm_tok_norm_apply(const lm_tok_norm *n, const char *s, size_t len, lm_buf *out) {
  switch (n->kind) {
  case N_NFC:
  case N_NFKC:
  case N_NFD:
  case N_NFKD: return unicode_norm(n->kind, s, len, out);
  case N_LOWER: return lowercase(s, len, out);
  case N_STRIP: return strip(n, s, len, out);
  case N_REPLACE: return replace(n, s, len, out);
  case N_PREPEND:
    if (len && lm_buf_put(out, n->content, n->content_len)) return LM_ENOMEM;
    return lm_buf_put(out, s, len);
  case N_SEQ: break;
  }
  /* Sequence: ping-pong between two scratch buffers */
  lm_buf a = {0}, b = {0};
  int rc = lm_buf_put(&a, s, len);
  for (size_t i = 0; !rc && i < n->n_kids; i++) {
    b.n = 0;
    rc = lm_tok_norm_apply(n->kids[i], a.p, a.n, &b);
    lm_buf t = a;
    a = b;
    b = t;
  }
  if (!rc) rc = lm_buf_put(out, a.p, a.n);
  lm_buf_free(&a);
  lm_buf_free(&b);
  return rc;
}
