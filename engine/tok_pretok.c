/* tok_pretok.c - pre-tokenizers: Split, Digits, ByteLevel and Sequence.
 *
 * A Sequence is flattened into a list of steps. Each step maps the current
 * list of pieces to a new one, as the library's PreTokenizedString::split
 * does (empty pieces are dropped). Steps that only cut pieces (Split,
 * Digits) keep the text and produce new spans; ByteLevel rewrites the text
 * into the other buffer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

enum behavior { B_REMOVED, B_ISOLATED, B_PREV, B_NEXT, B_CONTIG };
enum step_kind { S_SPLIT, S_DIGITS, S_BYTELEVEL };

struct step {
  enum step_kind kind;
  enum behavior behavior;
  int invert, prefix_space, use_regex;
  lm_tok_regex *re;
};

struct lm_tok_pretok {
  struct step *steps;
  size_t n;
};

static lm_tok_regex *gpt2_re; /* ByteLevel's own regex, shared */
static pthread_once_t gpt2_once = PTHREAD_ONCE_INIT;
static void gpt2_init(void) {
  static const char p[] =
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
  char err[LM_ERR_LEN];
  lm_tok_regex_new(p, sizeof p - 1, 0, &gpt2_re, err);
}

/* byte -> the character ByteLevel shows it as (GPT-2's bytes_to_unicode) */
static char bl_chr[256][3];
static uint8_t bl_len[256];
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;
static void bl_init(void) {
  uint32_t next = 256;
  for (int b = 0; b < 256; b++) {
    int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = keep ? (uint32_t)b : next++;
    bl_len[b] = (uint8_t)lm_utf8_put(bl_chr[b], cp);
  }
}

/* The inverse, for the ByteLevel decoder: code point -> byte, or -1. */
int lm_tok_bytelevel_byte(uint32_t cp) {
  if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
    return (int)cp;
  if (cp < 256 || cp > 323) return -1;
  /* the 68 remapped bytes in increasing order */
  uint32_t k = cp - 256;
  for (int b = 0; b < 256; b++) {
    int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!keep && k-- == 0) return b;
  }
  return -1;
}

void lm_tok_pretok_free(lm_tok_pretok *p) {
  if (!p) return;
  for (size_t i = 0; i < p->n; i++)
    lm_tok_regex_free(p->steps[i].re);
  free(p->steps);
  free(p);
}

static int bool_field(const lm_json *j, const char *k, int dflt) {
  const lm_json *b = lm_json_get_type(j, k, LM_JSON_BOOL);
  return b ? b->boolean : dflt;
}

static int add_step(lm_tok_pretok *p, const lm_json *j, const char *path, char *err) {
  const lm_json *type = lm_json_get_type(j, "type", LM_JSON_STRING);
  if (!type) return lm_errf(err, LM_EFORMAT, "%s: missing \"type\"", path);
  const char *t = type->str;
  if (!strcmp(t, "Sequence")) {
    const lm_json *a = lm_json_get_type(j, "pretokenizers", LM_JSON_ARRAY);
    if (!a) return lm_errf(err, LM_EFORMAT, "%s: missing \"pretokenizers\" array", path);
    for (size_t i = 0; i < a->n_kids; i++) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", path, i);
      int rc = add_step(p, &a->kids[i], sub, err);
      if (rc) return rc;
    }
    return LM_OK;
  }
  struct step s = {0};
  if (!strcmp(t, "Split")) {
    const lm_json *b = lm_json_get_type(j, "behavior", LM_JSON_STRING);
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    s.kind = S_SPLIT;
    s.behavior = (enum behavior) - 1;
    for (int i = 0; b && i < 5; i++)
      if (!strcmp(b->str, names[i])) s.behavior = (enum behavior)i;
    if (s.behavior == (enum behavior) - 1)
      return lm_errf(err, LM_EUNSUP, "%s: unsupported behavior \"%s\"", path, b ? b->str : "");
    s.invert = bool_field(j, "invert", 0);
    int rc = lm_tok_pattern_parse(lm_json_get(j, "pattern"), path, &s.re, err);
    if (rc) return rc;
  } else if (!strcmp(t, "Digits")) {
    s.kind = S_DIGITS;
    s.behavior = bool_field(j, "individual_digits", 0) ? B_ISOLATED : B_CONTIG;
  } else if (!strcmp(t, "ByteLevel")) {
    s.kind = S_BYTELEVEL;
    s.prefix_space = bool_field(j, "add_prefix_space", 1);
    s.use_regex = bool_field(j, "use_regex", 1);
    pthread_once(&gpt2_once, gpt2_init);
    pthread_once(&bl_once, bl_init);
    if (!gpt2_re) return lm_errf(err, LM_ENOMEM, "%s: cannot compile the GPT-2 regex", path);
  } else {
    return lm_errf(err, LM_EUNSUP, "%s: unsupported type \"%s\"", path, t);
  }
  struct step *v = realloc(p->steps, (p->n + 1) * sizeof(*v));
  if (!v) {
    lm_tok_regex_free(s.re);
    return lm_errf(err, LM_ENOMEM, "out of memory");
  }
  p->steps = v;
  p->steps[p->n++] = s;
  return LM_OK;
}

int lm_tok_pretok_parse(const lm_json *j, const char *path, lm_tok_pretok **out, char *err) {
  *out = NULL;
  lm_tok_pretok *p = calloc(1, sizeof(*p));
  if (!p) return lm_errf(err, LM_ENOMEM, "out of memory");
  int rc = add_step(p, j, path, err);
  if (rc) {
    lm_tok_pretok_free(p);
    return rc;
  }
  *out = p;
  return LM_OK;
}

/* ---- splitting ----------------------------------------------------------- */

/* Pieces of s[a..b) cut by the matches in m (offsets relative to s+a), as
 * NormalizedString::split does with each behavior; appended to out as
 * absolute spans. */
static int cut(const lm_spans *m, size_t a, size_t b, int invert, enum behavior beh,
               lm_spans *out) {
  /* (start, end, is_match) covering [a, b) */
  size_t prev = 0, len = b - a, n_out0 = out->n;
  int prev_match = 0, rc = LM_OK;
  /* last kept piece's index in out (merging modifies it) */
#define EMIT(st, en, ismatch)                                                                      \
  do {                                                                                             \
    size_t st_ = (st), en_ = (en);                                                                 \
    int im_ = (ismatch) != invert;                                                                 \
    switch (beh) {                                                                                 \
    case B_REMOVED:                                                                                \
      if (!im_) rc = lm_spans_push(out, a + st_, a + en_);                                         \
      break;                                                                                       \
    case B_ISOLATED: rc = lm_spans_push(out, a + st_, a + en_); break;                             \
    case B_CONTIG:                                                                                 \
      if (im_ == prev_match && out->n > n_out0)                                                    \
        out->v[out->n - 1].end = a + en_;                                                          \
      else                                                                                         \
        rc = lm_spans_push(out, a + st_, a + en_);                                                 \
      break;                                                                                       \
    case B_PREV:                                                                                   \
      if (im_ && !prev_match && out->n > n_out0)                                                   \
        out->v[out->n - 1].end = a + en_;                                                          \
      else                                                                                         \
        rc = lm_spans_push(out, a + st_, a + en_);                                                 \
      break;                                                                                       \
    case B_NEXT:                                                                                   \
      /* merged in a second pass below, from the right */                                          \
      rc = lm_spans_push(out, a + st_, a + en_);                                                   \
      if (!rc) out->v[out->n - 1].start |= (size_t)im_ << 63;                                      \
      break;                                                                                       \
    }                                                                                              \
    prev_match = im_;                                                                              \
  } while (0)
  if (len == 0) {
    EMIT(0, 0, 0);
  } else {
    for (size_t i = 0; i < m->n && !rc; i++) {
      if (prev != m->v[i].start) EMIT(prev, m->v[i].start, 0);
      if (!rc) EMIT(m->v[i].start, m->v[i].end, 1);
      prev = m->v[i].end;
    }
    if (!rc && prev != len) EMIT(prev, len, 0);
  }
#undef EMIT
  if (rc || beh != B_NEXT) return rc;
  /* MergedWithNext: walking right to left, a match not preceded (on its
   * right) by a match is merged into the piece on its right */
  size_t n = out->n - n_out0, w = out->n;
  lm_span *v = out->v + n_out0;
  const size_t flag = (size_t)1 << 63;
  int prevm = 0;
  for (size_t k = n; k-- > 0;) {
    int im = (v[k].start & flag) != 0;
    size_t st = v[k].start & ~flag, en = v[k].end;
    if (im && !prevm && w < out->n)
      out->v[w].start = st;
    else {
      w--;
      out->v[w].start = st;
      out->v[w].end = en;
    }
    prevm = im;
  }
  /* pieces now sit in out->v[w..n_out0+n); move them down */
  size_t kept = out->n - w;
  memmove(v, out->v + w, kept * sizeof(*v));
  out->n = n_out0 + kept;
  return LM_OK;
}

static int digits_find(const char *s, size_t n, lm_spans *m) {
  for (size_t i = 0; i < n;) {
    size_t adv;
    uint32_t cp = lm_tok_utf8_next(s + i, n - i, &adv);
    if ((lm_tok_cclass(cp) & LM_CC_N) && lm_spans_push(m, i, i + adv)) return LM_ENOMEM;
    i += adv;
  }
  return LM_OK;
}

static int bytelevel(const struct step *st, const lm_buf *in, const lm_spans *sp,
                     lm_tok_pt_scratch *sc, lm_buf *out, lm_spans *osp) {
  lm_buf tmp = {0};
  int rc = LM_OK;
  for (size_t i = 0; i < sp->n && !rc; i++) {
    const char *s = in->p + sp->v[i].start;
    size_t n = sp->v[i].end - sp->v[i].start;
    if (st->prefix_space && (n == 0 || s[0] != ' ')) {
      tmp.n = 0;
      if (lm_buf_put(&tmp, " ", 1) || lm_buf_put(&tmp, s, n)) {
        rc = LM_ENOMEM;
        break;
      }
      s = tmp.p;
      n = tmp.n;
    }
    sc->matches.n = 0;
    if (st->use_regex)
      rc = lm_tok_regex_find(gpt2_re, s, n, &sc->matches);
    else if (n)
      rc = lm_spans_push(&sc->matches, 0, n);
    for (size_t k = 0; k < sc->matches.n && !rc; k++) {
      size_t a = sc->matches.v[k].start, b = sc->matches.v[k].end;
      if (a == b) continue;
      if (lm_buf_reserve(out, 2 * (b - a))) {
        rc = LM_ENOMEM;
        break;
      }
      size_t o = out->n;
      for (size_t q = a; q < b; q++) {
        unsigned char c = (unsigned char)s[q];
        memcpy(out->p + out->n, bl_chr[c], bl_len[c]);
        out->n += bl_len[c];
      }
      rc = lm_spans_push(osp, o, out->n);
    }
  }
  lm_buf_free(&tmp);
  return rc;
}

int lm_tok_pretok_apply(const lm_tok_pretok *p, const char *s, size_t len, lm_tok_pt_scratch *sc,
                        const lm_buf **out_text, const lm_spans **out_words) {
  lm_buf *text = &sc->a, *other = &sc->b;
  lm_spans *cur = &sc->sa, *next = &sc->sb;
  text->n = 0;
  cur->n = 0;
  if (lm_buf_put(text, s, len) || lm_spans_push(cur, 0, len)) return LM_ENOMEM;
  for (size_t i = 0; p && i < p->n; i++) {
    const struct step *st = &p->steps[i];
    next->n = 0;
    if (st->kind == S_BYTELEVEL) {
      other->n = 0;
      int rc = bytelevel(st, text, cur, sc, other, next);
      if (rc) return rc;
      lm_buf *t = text;
      text = other;
      other = t;
    } else {
      for (size_t k = 0; k < cur->n; k++) {
        size_t a = cur->v[k].start, b = cur->v[k].end;
        sc->matches.n = 0;
        int rc = st->kind == S_SPLIT ? lm_tok_regex_find(st->re, text->p + a, b - a, &sc->matches)
                                     : digits_find(text->p + a, b - a, &sc->matches);
        if (!rc) rc = cut(&sc->matches, a, b, st->invert, st->behavior, next);
        if (rc) return rc;
      }
    }
    /* drop empty pieces */
    size_t w = 0;
    for (size_t k = 0; k < next->n; k++)
      if (next->v[k].end > next->v[k].start) next->v[w++] = next->v[k];
    next->n = w;
    lm_spans *t = cur;
    cur = next;
    next = t;
  }
  if (!p) {
    cur->n = 0;
    if (len) lm_spans_push(cur, 0, len);
  }
  *out_text = text;
  *out_words = cur;
  return LM_OK;
}

void lm_tok_pt_scratch_free(lm_tok_pt_scratch *sc) {
  lm_buf_free(&sc->a);
  lm_buf_free(&sc->b);
  lm_spans_free(&sc->sa);
  lm_spans_free(&sc->sb);
  lm_spans_free(&sc->matches);
}
