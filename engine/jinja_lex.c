/* jinja_lex.c - template text to tokens, byte for byte as the reference
 * (@huggingface/jinja) does it, including its preprocessing with
 * Transformers' trim_blocks and lstrip_blocks. Every byte of the
 * preprocessed text remembers its line in the original template, so errors
 * name the line the author sees. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "engine/jinja_internal.h"

typedef struct {
  char *p;
  int *line;
  size_t n;
} text_map;

static int map_alloc(jj_arena *a, text_map *m, size_t cap) {
  m->p = jj_alloc(a, cap + 1);
  m->line = jj_alloc(a, (cap + 1) * sizeof(int));
  m->n = 0;
  return m->p && m->line ? 0 : -1;
}

static void map_copy(text_map *dst, const text_map *src, size_t i, size_t n) {
  memcpy(dst->p + dst->n, src->p + i, n);
  memcpy(dst->line + dst->n, src->line + i, n * sizeof(int));
  dst->n += n;
}

/* Start of a line for a JavaScript multiline ^: after \n, \r, U+2028, U+2029. */
static int at_line_start(const text_map *m, size_t i) {
  if (i == 0) return 1;
  char c = m->p[i - 1];
  if (c == '\n' || c == '\r') return 1;
  return i >= 3 && (unsigned char)m->p[i - 3] == 0xe2 && (unsigned char)m->p[i - 2] == 0x80 &&
         ((unsigned char)c == 0xa8 || (unsigned char)c == 0xa9);
}

/* lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1". */
static void pass_lstrip(const text_map *in, text_map *out) {
  size_t i = 0;
  while (i < in->n) {
    if (at_line_start(in, i)) {
      size_t j = i;
      while (j < in->n && (in->p[j] == ' ' || in->p[j] == '\t'))
        j++;
      if (j + 1 < in->n && in->p[j] == '{' && strchr("#%-", in->p[j + 1]) && in->p[j + 1]) i = j;
    }
    map_copy(out, in, i, 1);
    i++;
  }
}

/* trim_blocks: /([#%-]})\n/g -> "$1". */
static void pass_trim(const text_map *in, text_map *out) {
  for (size_t i = 0; i < in->n; i++) {
    map_copy(out, in, i, 1);
    if (i + 2 < in->n && (in->p[i] == '#' || in->p[i] == '%' || in->p[i] == '-') &&
        in->p[i + 1] == '}' && in->p[i + 2] == '\n') {
      map_copy(out, in, i + 1, 1);
      i += 2;
    }
  }
}

static size_t skip_space(const text_map *m, size_t i) {
  size_t k;
  while (i < m->n && (k = jj_js_space(m->p + i, m->p + m->n)) > 0)
    i += k;
  return i;
}

/* {% generation %} and {% endgeneration %} (assistant masks, meaningless
 * for rendering) are removed with the whitespace their '-' asks for:
 * /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs. */
static void pass_generation(const text_map *in, text_map *out) {
  size_t i = 0, floor = 0; /* output before floor belongs to an earlier match */
  while (i < in->n) {
    if (in->p[i] == '{' && i + 1 < in->n && in->p[i + 1] == '%') {
      size_t j = i + 2;
      int lstrip = 0, rstrip = 0;
      if (j < in->n && in->p[j] == '-') lstrip = 1, j++;
      j = skip_space(in, j);
      if (j + 3 <= in->n && !memcmp(in->p + j, "end", 3)) j += 3;
      if (j + 10 <= in->n && !memcmp(in->p + j, "generation", 10)) {
        j = skip_space(in, j + 10);
        if (j < in->n && in->p[j] == '-') rstrip = 1, j++;
        if (j + 1 < in->n && in->p[j] == '%' && in->p[j + 1] == '}') {
          j += 2;
          if (lstrip) {
            while (out->n > floor) {
              size_t back = 1;
              while (back < out->n - floor && back < 3 &&
                     ((unsigned char)out->p[out->n - back] & 0xc0) == 0x80)
                back++;
              if (jj_js_space(out->p + out->n - back, out->p + out->n) != back) break;
              out->n -= back;
            }
          }
          if (rstrip) j = skip_space(in, j);
          floor = out->n;
          i = j;
          continue;
        }
      }
    }
    map_copy(out, in, i, 1);
    i++;
  }
}

static int lex_fail(char *err, int line, const char *fmt, ...) LM_PRINTF(3, 4);
static int lex_fail(char *err, int line, const char *fmt, ...) {
  char msg[LM_ERR_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return lm_errf(err, LM_EINVAL, "chat template line %d: %s", line, msg);
}

/* A byte as an error message shows it: 'c' when printable, else 0xNN, so
 * the message stays one line. */
static const char *show_byte(char c, char buf[8]) {
  unsigned char u = (unsigned char)c;
  if (u >= 0x20 && u < 0x7f)
    snprintf(buf, 8, "'%c'", c);
  else
    snprintf(buf, 8, "0x%02x", u);
  return buf;
}

typedef struct {
  jj_arena *arena;
  const text_map *m;
  size_t pos;
  jj_token *toks;
  size_t n, cap;
  char *err;
} lexer;

static int push(lexer *L, enum jj_tok type, const char *s, size_t n, int line) {
  if (L->n == L->cap) {
    size_t cap = L->cap ? L->cap * 2 : 256;
    jj_token *t = jj_alloc(L->arena, cap * sizeof(*t));
    if (!t) return lm_errf(L->err, LM_ENOMEM, "out of memory compiling a chat template");
    if (L->n) memcpy(t, L->toks, L->n * sizeof(*t));
    L->toks = t;
    L->cap = cap;
  }
  L->toks[L->n++] = (jj_token){.type = type, .s = s, .n = n, .line = line};
  return LM_OK;
}

static int last_type(const lexer *L) {
  return L->n ? (int)L->toks[L->n - 1].type : -1;
}

static void strip_trailing_ws(lexer *L) {
  if (!L->n || L->toks[L->n - 1].type != TK_TEXT) return;
  jj_token *t = &L->toks[L->n - 1];
  jj_trim(&t->s, &t->n, 0, 1);
  if (t->n == 0) L->n--;
}

static int is_digit(char c) {
  return c >= '0' && c <= '9';
}
static int is_word(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A string literal from just after the opening quote; *out is unescaped. */
static int lex_string(lexer *L, char quote, const char **out, size_t *out_n) {
  const text_map *m = L->m;
  int line = m->line[L->pos - 1];
  char *buf = jj_alloc(L->arena, m->n - L->pos + 1);
  size_t n = 0;
  uint32_t high = 0; /* a pending UTF-16 high surrogate from \u escapes */
  if (!buf) return lm_errf(L->err, LM_ENOMEM, "out of memory compiling a chat template");
  for (;;) {
    if (L->pos >= m->n) return lex_fail(L->err, line, "unterminated string literal");
    char c = m->p[L->pos];
    if (c == quote) break;
    if (c != '\\') {
      buf[n++] = c;
      L->pos++;
      continue;
    }
    if (++L->pos >= m->n) return lex_fail(L->err, line, "unterminated string literal");
    char e = m->p[L->pos++];
    if (e == 'x' || e == 'u') {
      size_t len = e == 'x' ? 2 : 4;
      uint32_t cp = 0;
      for (size_t k = 0; k < len; k++) {
        int h = L->pos + k < m->n ? hexval(m->p[L->pos + k]) : -1;
        if (h < 0) return lex_fail(L->err, line, "invalid \\%c escape in a string literal", e);
        cp = cp * 16 + (uint32_t)h;
      }
      L->pos += len;
      if (cp >= 0xd800 && cp < 0xdc00) {
        high = cp;
        continue;
      }
      if (cp >= 0xdc00 && cp < 0xe000)
        cp = high ? 0x10000 + ((high - 0xd800) << 10) + (cp - 0xdc00) : 0xfffd;
      high = 0;
      n += lm_utf8_put(buf + n, cp);
      continue;
    }
    if (high) n += lm_utf8_put(buf + n, 0xfffd), high = 0;
    const char *from = "ntrbfv'\"\\", *to = "\n\t\r\b\f\v'\"\\";
    const char *hit = strchr(from, e);
    char shown[8];
    if (!hit || !e)
      return lex_fail(L->err, line, "unknown escape: backslash, then %s, in a string literal",
                      show_byte(e, shown));
    buf[n++] = to[hit - from];
  }
  if (high) n += lm_utf8_put(buf + n, 0xfffd);
  L->pos++; /* the closing quote */
  *out = buf;
  *out_n = n;
  return LM_OK;
}

static const struct {
  const char *s;
  enum jj_tok type;
} fixed[] = {
    {"{%", TK_OPEN_STMT}, {"%}", TK_CLOSE_STMT}, {"{{", TK_OPEN_EXPR}, {"}}", TK_CLOSE_EXPR},
    {"(", TK_LPAREN},     {")", TK_RPAREN},      {"{", TK_LBRACE},     {"}", TK_RBRACE},
    {"[", TK_LBRACKET},   {"]", TK_RBRACKET},    {",", TK_COMMA},      {".", TK_DOT},
    {":", TK_COLON},      {"|", TK_PIPE},        {"<=", TK_CMP},       {">=", TK_CMP},
    {"==", TK_CMP},       {"!=", TK_CMP},        {"<", TK_CMP},        {">", TK_CMP},
    {"+", TK_ADD},        {"-", TK_ADD},         {"~", TK_ADD},        {"**", TK_POW},
    {"*", TK_MUL},        {"//", TK_MUL},        {"/", TK_MUL},        {"%", TK_MUL},
    {"=", TK_EQUALS},
};

static int lex_body(lexer *L) {
  const text_map *m = L->m;
  const char *p = m->p;
  size_t n = m->n;
  int brace_depth = 0, rc;
  while (L->pos < n) {
    int lt = last_type(L), line = m->line[L->pos];
    if (lt < 0 || lt == TK_CLOSE_STMT || lt == TK_CLOSE_EXPR || lt == TK_COMMENT) {
      size_t start = L->pos;
      while (L->pos < n &&
             !(p[L->pos] == '{' && L->pos + 1 < n &&
               (p[L->pos + 1] == '%' || p[L->pos + 1] == '{' || p[L->pos + 1] == '#')))
        L->pos++;
      if (L->pos > start) {
        if ((rc = push(L, TK_TEXT, p + start, L->pos - start, line)) != LM_OK) return rc;
        continue;
      }
    }
    if (p[L->pos] == '{' && L->pos + 1 < n && p[L->pos + 1] == '#') {
      L->pos += 2;
      int strip_before = L->pos < n && p[L->pos] == '-';
      if (strip_before) L->pos++;
      size_t start = L->pos;
      while (!(p[L->pos] == '#' && L->pos + 1 < n && p[L->pos + 1] == '}')) {
        if (L->pos + 2 >= n) return lex_fail(L->err, line, "comment without '#}'");
        L->pos++;
      }
      size_t len = L->pos - start;
      int strip_after = len > 0 && p[start + len - 1] == '-';
      if (strip_after) len--;
      if (strip_before) strip_trailing_ws(L);
      if ((rc = push(L, TK_COMMENT, p + start, len, line)) != LM_OK) return rc;
      L->pos += 2;
      if (strip_after) L->pos = skip_space(m, L->pos);
      continue;
    }
    if (L->pos + 3 <= n && (!memcmp(p + L->pos, "{%-", 3) || !memcmp(p + L->pos, "{{-", 3))) {
      strip_trailing_ws(L);
      int stmt = p[L->pos + 1] == '%';
      if ((rc = push(L, stmt ? TK_OPEN_STMT : TK_OPEN_EXPR, p + L->pos, 2, line)) != LM_OK)
        return rc;
      if (!stmt) brace_depth = 0;
      L->pos += 3;
      continue;
    }
    L->pos = skip_space(m, L->pos);
    if (L->pos >= n) break;
    line = m->line[L->pos];
    if (L->pos + 3 <= n && (!memcmp(p + L->pos, "-%}", 3) || !memcmp(p + L->pos, "-}}", 3))) {
      int stmt = p[L->pos + 1] == '%';
      if ((rc = push(L, stmt ? TK_CLOSE_STMT : TK_CLOSE_EXPR, p + L->pos + 1, 2, line)) != LM_OK)
        return rc;
      L->pos = skip_space(m, L->pos + 3);
      continue;
    }
    char c = p[L->pos];
    if (c == '-' || c == '+') {
      lt = last_type(L);
      if (lt == TK_TEXT || lt < 0) return lex_fail(L->err, line, "unexpected character '%c'", c);
      if (lt != TK_ID && lt != TK_NUM && lt != TK_STR && lt != TK_RPAREN && lt != TK_RBRACKET) {
        size_t start = L->pos++;
        while (L->pos < n && is_digit(p[L->pos]))
          L->pos++;
        size_t digits = L->pos - start - 1;
        if (digits > 0 && L->pos + 1 < n && p[L->pos] == '.' && is_digit(p[L->pos + 1])) {
          L->pos++;
          while (L->pos < n && is_digit(p[L->pos]))
            L->pos++;
        }
        rc = push(L, digits ? TK_NUM : TK_UNARY, p + start, L->pos - start, line);
        if (rc != LM_OK) return rc;
        continue;
      }
    }
    int matched = 0;
    for (size_t k = 0; k < sizeof(fixed) / sizeof(fixed[0]); k++) {
      size_t len = strlen(fixed[k].s);
      if (fixed[k].type == TK_CLOSE_EXPR && brace_depth > 0) continue;
      if (L->pos + len > n || memcmp(p + L->pos, fixed[k].s, len)) continue;
      if ((rc = push(L, fixed[k].type, p + L->pos, len, line)) != LM_OK) return rc;
      if (fixed[k].type == TK_OPEN_EXPR) brace_depth = 0;
      if (fixed[k].type == TK_LBRACE) brace_depth++;
      if (fixed[k].type == TK_RBRACE) brace_depth--;
      L->pos += len;
      matched = 1;
      break;
    }
    if (matched) continue;
    if (c == '\'' || c == '"') {
      const char *s = NULL;
      size_t len = 0;
      L->pos++;
      if ((rc = lex_string(L, c, &s, &len)) != LM_OK) return rc;
      if ((rc = push(L, TK_STR, s, len, line)) != LM_OK) return rc;
      continue;
    }
    if (is_digit(c)) {
      size_t start = L->pos;
      while (L->pos < n && is_digit(p[L->pos]))
        L->pos++;
      if (last_type(L) != TK_DOT && L->pos + 1 < n && p[L->pos] == '.' && is_digit(p[L->pos + 1])) {
        L->pos++;
        while (L->pos < n && is_digit(p[L->pos]))
          L->pos++;
      }
      if ((rc = push(L, TK_NUM, p + start, L->pos - start, line)) != LM_OK) return rc;
      continue;
    }
    if (is_word(c)) {
      size_t start = L->pos;
      while (L->pos < n && is_word(p[L->pos]))
        L->pos++;
      if ((rc = push(L, TK_ID, p + start, L->pos - start, line)) != LM_OK) return rc;
      continue;
    }
    char shown[8];
    return lex_fail(L->err, line, "unexpected character %s", show_byte(c, shown));
  }
  return push(L, TK_EOF, p + n, 0, n ? m->line[n - 1] : 1);
}

int jj_lex(jj_arena *arena, const char *src, size_t len, jj_token **toks, size_t *n_toks,
           char *err) {
  text_map a, b;
  if (map_alloc(arena, &a, len) || map_alloc(arena, &b, len))
    return lm_errf(err, LM_ENOMEM, "out of memory compiling a chat template");
  int line = 1;
  for (size_t i = 0; i < len; i++) {
    a.p[i] = src[i];
    a.line[i] = line;
    if (src[i] == '\n') line++;
  }
  a.n = len;
  if (a.n && a.p[a.n - 1] == '\n') a.n--;
  pass_lstrip(&a, &b);
  a.n = 0;
  pass_trim(&b, &a);
  b.n = 0;
  pass_generation(&a, &b);
  b.p[b.n] = '\0';
  lexer L = {.arena = arena, .m = &b, .err = err};
  int rc = lex_body(&L);
  if (rc != LM_OK) return rc;
  *toks = L.toks;
  *n_toks = L.n;
  return LM_OK;
}
