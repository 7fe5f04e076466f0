/* tok_regex.c - the patterns of Split pre-tokenizers and Replace
 * normalizers/decoders, with the library's (Oniguruma) semantics.
 *
 * Three patterns cover nearly every byte-level BPE tokenizer (GPT-2's, Llama
 * 3's, Qwen 2's); they get a hand-written matcher that runs several times
 * faster than a regex engine. Any other regex runs through PCRE2 (UTF + UCP,
 * JIT) after \p{L}, \p{N} and \s are rewritten into explicit classes taken
 * from the library, because PCRE2 10.42 and the library's Oniguruma know
 * different Unicode versions. tests/tokenizer_test.c checks that both paths
 * agree on the known patterns. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

enum re_kind { RE_LITERAL, RE_PCRE, RE_GPT2, RE_LLAMA3, RE_QWEN2 };

struct lm_tok_regex {
  enum re_kind kind, fast_kind;
  char *lit;
  size_t lit_len;
  pcre2_code *code;
};

static const char PAT_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char PAT_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,"
    "3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PAT_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- hand-written matcher --------------------------------------------- */

typedef struct {
  const char *s;
  size_t n;
} text;

static inline uint32_t cp_at(text t, size_t i, size_t *adv) {
  return lm_tok_utf8_next(t.s + i, t.n - i, adv);
}

static inline uint8_t cls_at(text t, size_t i, size_t *adv) {
  unsigned char b = (unsigned char)t.s[i];
  if (b < 0x80) {
    *adv = 1;
    /* ASCII fast path: letters, digits, and \t\n\v\f\r space */
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z') return LM_CC_L;
    if (b >= '0' && b <= '9') return LM_CC_N;
    if (b == ' ' || (b >= 9 && b <= 13)) return LM_CC_S;
    return 0;
  }
  return lm_tok_cclass(cp_at(t, i, adv)) & (LM_CC_L | LM_CC_N | LM_CC_S);
}

/* End of the run of characters of class mask starting at i. */
static size_t run(text t, size_t i, uint8_t mask) {
  while (i < t.n) {
    size_t a;
    if (!(cls_at(t, i, &a) & mask)) break;
    i += a;
  }
  return i;
}

static size_t run_other(text t, size_t i) {
  while (i < t.n) {
    size_t a;
    if (cls_at(t, i, &a)) break;
    i += a;
  }
  return i;
}

static int ci_eq(text t, size_t i, char c, int ci) {
  if (i >= t.n) return 0;
  char x = t.s[i];
  return ci ? (x | 0x20) == c : x == c;
}

/* Length of '(s|t|re|ve|m|ll|d) at i, 0 if none. */
static size_t contraction(text t, size_t i, int ci) {
  if (t.s[i] != '\'' || i + 1 >= t.n) return 0;
  size_t j = i + 1;
  if (ci_eq(t, j, 's', ci) || ci_eq(t, j, 't', ci) || ci_eq(t, j, 'm', ci) || ci_eq(t, j, 'd', ci))
    return 2;
  /* (?i) also folds U+017F LATIN SMALL LETTER LONG S onto s */
  if (ci && j + 1 < t.n && (unsigned char)t.s[j] == 0xc5 && (unsigned char)t.s[j + 1] == 0xbf)
    return 3;
  if ((ci_eq(t, j, 'r', ci) || ci_eq(t, j, 'v', ci)) && ci_eq(t, j + 1, 'e', ci)) return 3;
  if (ci_eq(t, j, 'l', ci) && ci_eq(t, j + 1, 'l', ci)) return 3;
  return 0;
}

/* The tail alternatives shared by all three patterns, for a whitespace
 * character at i: [\s*[\r\n]+ when crlf_alt] | \s+(?!\S) | \s+ */
static size_t spaces(text t, size_t i, int crlf_alt) {
  size_t j = run(t, i, LM_CC_S);
  if (crlf_alt) {
    size_t last_nl = (size_t)-1;
    for (size_t k = i; k < j; k++)
      if (t.s[k] == '\r' || t.s[k] == '\n') last_nl = k;
    if (last_nl != (size_t)-1) return last_nl + 1 - i;
  }
  if (j == t.n) return j - i;
  /* give back the last whitespace character so that (?!\S) holds */
  size_t k = j - 1;
  while (((unsigned char)t.s[k] & 0xc0) == 0x80)
    k--;
  if (k > i) return k - i;
  return j - i;
}

/* Length of the match starting at i (each pattern matches at every
 * position, so find_iter's matches tile the text). */
static size_t match_at(enum re_kind kind, text t, size_t i) {
  int gpt2 = kind == RE_GPT2;
  size_t a, l = contraction(t, i, !gpt2);
  if (l) return l;
  uint8_t c0 = cls_at(t, i, &a);
  size_t i1 = i + a;
  uint8_t c1 = 0;
  size_t a1 = 0;
  if (i1 < t.n) c1 = cls_at(t, i1, &a1);
  /* letters: ` ?\p{L}+` (GPT-2) or `[^\r\n\p{L}\p{N}]?\p{L}+` */
  if (c0 & LM_CC_L) return run(t, i1, LM_CC_L) - i;
  if (i1 < t.n && (c1 & LM_CC_L)) {
    int pre = gpt2 ? t.s[i] == ' ' : !(c0 & LM_CC_N) && t.s[i] != '\r' && t.s[i] != '\n';
    if (pre) return run(t, i1 + a1, LM_CC_L) - i;
  }
  /* numbers */
  if (c0 & LM_CC_N) {
    if (kind == RE_QWEN2) return a;
    if (kind == RE_LLAMA3) {
      size_t j = i1;
      for (int k = 1; k < 3 && j < t.n; k++) {
        size_t b;
        if (!(cls_at(t, j, &b) & LM_CC_N)) break;
        j += b;
      }
      return j - i;
    }
    return run(t, i1, LM_CC_N) - i;
  }
  if (gpt2 && t.s[i] == ' ' && i1 < t.n && (c1 & LM_CC_N)) return run(t, i1 + a1, LM_CC_N) - i;
  /* ` ?[^\s\p{L}\p{N}]+` then `[\r\n]*` outside GPT-2 */
  size_t j = 0;
  if (!c0)
    j = run_other(t, i1);
  else if (t.s[i] == ' ' && i1 < t.n && !c1)
    j = run_other(t, i1 + a1);
  if (j) {
    if (!gpt2)
      while (j < t.n && (t.s[j] == '\r' || t.s[j] == '\n'))
        j++;
    return j - i;
  }
  return spaces(t, i, !gpt2);
}

static int fast_find(enum re_kind kind, const char *s, size_t n, lm_spans *out) {
  text t = {s, n};
  size_t i = 0;
  while (i < n) {
    size_t l = match_at(kind, t, i);
    if (lm_spans_push(out, i, i + l)) return LM_ENOMEM;
    i += l;
  }
  return LM_OK;
}

/* ---- PCRE2 ------------------------------------------------------------ */

static int put_ranges(lm_buf *b, const lm_tok_range *r, size_t n) {
  char tmp[48];
  for (size_t i = 0; i < n; i++) {
    int k = r[i].lo == r[i].hi ? snprintf(tmp, sizeof tmp, "\\x{%x}", r[i].lo)
                               : snprintf(tmp, sizeof tmp, "\\x{%x}-\\x{%x}", r[i].lo, r[i].hi);
    if (lm_buf_put(b, tmp, (size_t)k)) return LM_ENOMEM;
  }
  return LM_OK;
}

/* Rewrites \p{L}, \p{N}, \s (and \P{L}, \P{N}, \S outside classes) into
 * explicit classes. */
static int translate(const char *p, size_t n, lm_buf *b) {
  int in_class = 0;
  for (size_t i = 0; i < n; i++) {
    const lm_tok_range *r = NULL;
    size_t rn = 0, skip = 0;
    int neg = 0;
    if (p[i] == '\\' && i + 1 < n) {
      char c = p[i + 1];
      if ((c == 'p' || c == 'P') && i + 4 < n && p[i + 2] == '{' && p[i + 4] == '}' &&
          (p[i + 3] == 'L' || p[i + 3] == 'N')) {
        r = p[i + 3] == 'L' ? lm_tok_letter : lm_tok_number;
        rn = p[i + 3] == 'L' ? lm_tok_letter_n : lm_tok_number_n;
        neg = c == 'P';
        skip = 5;
      } else if (c == 's' || c == 'S') {
        r = lm_tok_space;
        rn = lm_tok_space_n;
        neg = c == 'S';
        skip = 2;
      }
      if (r && !(neg && in_class)) {
        if (!in_class && lm_buf_put(b, neg ? "[^" : "[", neg ? 2 : 1)) return LM_ENOMEM;
        if (put_ranges(b, r, rn)) return LM_ENOMEM;
        if (!in_class && lm_buf_put(b, "]", 1)) return LM_ENOMEM;
        i += skip - 1;
        continue;
      }
      if (lm_buf_put(b, p + i, 2)) return LM_ENOMEM;
      i++;
      continue;
    }
    if (!in_class && p[i] == '[') {
      in_class = 1;
      if (lm_buf_put(b, p + i, 1)) return LM_ENOMEM;
      /* a ']' right after '[' or '[^' is a literal */
      if (i + 1 < n && p[i + 1] == '^') {
        if (lm_buf_put(b, "^", 1)) return LM_ENOMEM;
        i++;
      }
      if (i + 1 < n && p[i + 1] == ']') {
        if (lm_buf_put(b, "\\]", 2)) return LM_ENOMEM;
        i++;
      }
      continue;
    }
    if (in_class && p[i] == ']') in_class = 0;
    if (lm_buf_put(b, p + i, 1)) return LM_ENOMEM;
  }
  return LM_OK;
}

static int pcre_compile(lm_tok_regex *re, const char *pat, size_t len, char *err) {
  lm_buf b = {0};
  int rc = translate(pat, len, &b);
  if (rc) return lm_errf(err, rc, "out of memory");
  int ec;
  PCRE2_SIZE eo;
  /* the pattern comes from a model file: PCRE2 checks that it is UTF-8 */
  re->code = pcre2_compile((PCRE2_SPTR)b.p, b.n, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
  lm_buf_free(&b);
  if (!re->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return lm_errf(err, LM_EUNSUP, "regex \"%.*s\" not supported: %s", (int)(len > 200 ? 200 : len),
                   pat, (const char *)msg);
  }
  /* JIT is optional: without it (or on a JIT error) the interpreter runs */
  pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
  return LM_OK;
}

int lm_tok_regex_new(const char *pat, size_t len, int literal, lm_tok_regex **out, char *err) {
  *out = NULL;
  lm_tok_regex *re = calloc(1, sizeof(*re));
  if (!re) return lm_errf(err, LM_ENOMEM, "out of memory");
  if (literal) {
    if (len == 0) {
      free(re);
      return lm_errf(err, LM_EUNSUP, "empty string pattern not supported");
    }
    re->kind = RE_LITERAL;
    re->lit = malloc(len);
    if (!re->lit) {
      free(re);
      return lm_errf(err, LM_ENOMEM, "out of memory");
    }
    memcpy(re->lit, pat, len);
    re->lit_len = len;
    *out = re;
    return LM_OK;
  }
  re->kind = RE_PCRE;
  if (len == sizeof PAT_GPT2 - 1 && !memcmp(pat, PAT_GPT2, len)) re->kind = RE_GPT2;
  if (len == sizeof PAT_LLAMA3 - 1 && !memcmp(pat, PAT_LLAMA3, len)) re->kind = RE_LLAMA3;
  if (len == sizeof PAT_QWEN2 - 1 && !memcmp(pat, PAT_QWEN2, len)) re->kind = RE_QWEN2;
  re->fast_kind = re->kind;
  int rc = pcre_compile(re, pat, len, err);
  if (rc) {
    free(re);
    return rc;
  }
  *out = re;
  return LM_OK;
}

void lm_tok_regex_free(lm_tok_regex *re) {
  if (!re) return;
  free(re->lit);
  if (re->code) pcre2_code_free(re->code);
  free(re);
}

void lm_tok_regex_force_pcre(lm_tok_regex *re, int on) {
  if (re->kind != RE_LITERAL) re->kind = on ? RE_PCRE : re->fast_kind;
}

static int pcre_find(const lm_tok_regex *re, const char *s, size_t n, lm_spans *out) {
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
  if (!md) return LM_ENOMEM;
  int rc = LM_OK;
  /* Oniguruma's find_iter: an empty match right where the previous match
   * ended is skipped by advancing one character. */
  size_t last_end = 0, last_match_end = (size_t)-1;
  while (last_end <= n) {
    int m = pcre2_match(re->code, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, md, NULL);
    if (m == PCRE2_ERROR_JIT_STACKLIMIT)
      m = pcre2_match(re->code, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                      NULL);
    if (m == PCRE2_ERROR_NOMATCH) break;
    if (m < 0) {
      rc = LM_EINVAL;
      break;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t ms = ov[0], me = ov[1];
    if (ms == me && last_match_end == me) {
      last_end += last_end < n ? lm_tok_utf8_len((unsigned char)s[last_end]) : 1;
      continue;
    }
    last_end = me;
    last_match_end = me;
    if (lm_spans_push(out, ms, me)) {
      rc = LM_ENOMEM;
      break;
    }
  }
  pcre2_match_data_free(md);
  return rc;
}

static int literal_find(const lm_tok_regex *re, const char *s, size_t n, lm_spans *out) {
  size_t i = 0;
  while (i + re->lit_len <= n) {
    const char *p = memmem(s + i, n - i, re->lit, re->lit_len);
    if (!p) break;
    size_t at = (size_t)(p - s);
    if (lm_spans_push(out, at, at + re->lit_len)) return LM_ENOMEM;
    i = at + re->lit_len;
  }
  return LM_OK;
}

int lm_tok_regex_find(const lm_tok_regex *re, const char *s, size_t n, lm_spans *out) {
  switch (re->kind) {
  case RE_LITERAL: return literal_find(re, s, n, out);
  case RE_PCRE: return pcre_find(re, s, n, out);
  default: return fast_find(re->kind, s, n, out);
  }
}
