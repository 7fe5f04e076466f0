/* json.c - recursive-descent JSON parser into an arena-allocated tree. */
#include "engine/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"

#define JSON_MAX_DEPTH 256
#define ARENA_CHUNK    (1u << 20)
/* Chunks start small and double up to ARENA_CHUNK, so that a small document
 * (a request, a generation config) does not cost a 1 MiB allocation. */
#define ARENA_FIRST_CHUNK 4096u

struct arena_chunk {
  struct arena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

struct lm_json_doc {
  struct arena_chunk *chunks;
  size_t next_cap; /* capacity of the next chunk */
  lm_json root;
};

struct parser {
  const char *p, *end;
  lm_json_doc *doc;
  char *err;
  /* scratch stack of children shared by all nesting levels */
  lm_json *stack;
  size_t n_stack, cap_stack;
};

static void *arena_alloc(lm_json_doc *doc, size_t size) {
  struct arena_chunk *c = doc->chunks;
  size = (size + 15) & ~(size_t)15;
  if (!c || c->cap - c->used < size) {
    if (doc->next_cap < ARENA_FIRST_CHUNK) doc->next_cap = ARENA_FIRST_CHUNK;
    size_t cap = size > doc->next_cap ? size : doc->next_cap;
    c = malloc(sizeof(*c) + cap);
    if (!c) return NULL;
    if (doc->next_cap < ARENA_CHUNK) doc->next_cap *= 2;
    c->used = 0;
    c->cap = cap;
    c->next = doc->chunks;
    doc->chunks = c;
  }
  void *out = c->data + c->used;
  c->used += size;
  return out;
}

static int fail(struct parser *ps, const char *what) {
  /* lm_json_parse prefixes the byte offset */
  return lm_errf(ps->err, LM_EFORMAT, "%s", what);
}

static void skip_ws(struct parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return -1;
  }
  *out = v;
  return 0;
}

/* Parses a string at ps->p (on the opening quote) into the arena. */
static int parse_string(struct parser *ps, const char **out, size_t *out_len) {
  const char *s = ++ps->p;
  size_t n_esc = 0;
  while (s < ps->end && *s != '"') {
    if ((unsigned char)*s < 0x20) {
      ps->p = s;
      return fail(ps, "control character in string");
    }
    if (*s == '\\') {
      /* a backslash as the last byte: stepping over it would point past end */
      if (ps->end - s < 2) {
        s = ps->end;
        break;
      }
      s++;
      n_esc++;
    }
    s++;
  }
  if (s >= ps->end) return fail(ps, "unterminated string");
  size_t raw = (size_t)(s - ps->p);
  char *o = arena_alloc(ps->doc, raw + 1);
  if (!o) return lm_errf(ps->err, LM_ENOMEM, "out of memory parsing JSON");
  if (!n_esc) {
    memcpy(o, ps->p, raw);
    o[raw] = '\0';
    *out = o;
    *out_len = raw;
    ps->p = s + 1;
    return LM_OK;
  }
  size_t n = 0;
  const char *q = ps->p;
  while (q < s) {
    if (*q != '\\') {
      o[n++] = *q++;
      continue;
    }
    q++;
    switch (*q) {
    case '"': o[n++] = '"'; break;
    case '\\': o[n++] = '\\'; break;
    case '/': o[n++] = '/'; break;
    case 'b': o[n++] = '\b'; break;
    case 'f': o[n++] = '\f'; break;
    case 'n': o[n++] = '\n'; break;
    case 'r': o[n++] = '\r'; break;
    case 't': o[n++] = '\t'; break;
    case 'u': {
      unsigned cp, lo;
      if (s - q < 5 || hex4(q + 1, &cp) != 0) {
        ps->p = q;
        return fail(ps, "bad \\u escape");
      }
      q += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && s - q >= 7 && q[1] == '\\' && q[2] == 'u' &&
          hex4(q + 3, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        q += 6;
      } else if (cp >= 0xd800 && cp < 0xe000) {
        cp = 0xfffd; /* lone surrogate: replacement character */
      }
      n += lm_utf8_put(o + n, cp);
      break;
    }
    default: ps->p = q; return fail(ps, "bad escape in string");
    }
    q++;
  }
  o[n] = '\0';
  *out = o;
  *out_len = n;
  ps->p = s + 1;
  return LM_OK;
}

static int parse_number(struct parser *ps, lm_json *v) {
  const char *s = ps->p;
  int is_int = 1;
  if (s < ps->end && *s == '-') s++;
  if (s >= ps->end || !(*s >= '0' && *s <= '9')) return fail(ps, "bad number");
  if (*s == '0')
    s++;
  else
    while (s < ps->end && *s >= '0' && *s <= '9')
      s++;
  if (s < ps->end && *s == '.') {
    is_int = 0;
    s++;
    if (s >= ps->end || !(*s >= '0' && *s <= '9')) return fail(ps, "bad number");
    while (s < ps->end && *s >= '0' && *s <= '9')
      s++;
  }
  if (s < ps->end && (*s == 'e' || *s == 'E')) {
    is_int = 0;
    s++;
    if (s < ps->end && (*s == '+' || *s == '-')) s++;
    if (s >= ps->end || !(*s >= '0' && *s <= '9')) return fail(ps, "bad number");
    while (s < ps->end && *s >= '0' && *s <= '9')
      s++;
  }
  char buf[64];
  size_t n = (size_t)(s - ps->p);
  if (n >= sizeof(buf)) return fail(ps, "number too long");
  memcpy(buf, ps->p, n);
  buf[n] = '\0';
  v->type = LM_JSON_NUMBER;
  v->number = strtod(buf, NULL);
  if (is_int && n <= 18) {
    v->is_int = 1;
    v->integer = strtoll(buf, NULL, 10);
  }
  ps->p = s;
  return LM_OK;
}

static int push(struct parser *ps, const lm_json *v) {
  if (ps->n_stack == ps->cap_stack) {
    size_t cap = ps->cap_stack ? ps->cap_stack * 2 : 256;
    lm_json *s = realloc(ps->stack, cap * sizeof(*s));
    if (!s) return lm_errf(ps->err, LM_ENOMEM, "out of memory parsing JSON");
    ps->stack = s;
    ps->cap_stack = cap;
  }
  ps->stack[ps->n_stack++] = *v;
  return LM_OK;
}

/* Moves the children pushed since mark into the arena as v's kids. */
static int pop_kids(struct parser *ps, size_t mark, lm_json *v) {
  size_t n = ps->n_stack - mark;
  v->n_kids = n;
  v->kids = NULL;
  if (n) {
    v->kids = arena_alloc(ps->doc, n * sizeof(lm_json));
    if (!v->kids) return lm_errf(ps->err, LM_ENOMEM, "out of memory parsing JSON");
    memcpy(v->kids, ps->stack + mark, n * sizeof(lm_json));
  }
  ps->n_stack = mark;
  return LM_OK;
}

static int parse_value(struct parser *ps, lm_json *v, int depth) {
  int rc;
  memset(v, 0, sizeof(*v));
  skip_ws(ps);
  if (ps->p >= ps->end) return fail(ps, "unexpected end of input");
  if (depth > JSON_MAX_DEPTH) return fail(ps, "nesting too deep");
  switch (*ps->p) {
  case '{': {
    size_t mark = ps->n_stack;
    v->type = LM_JSON_OBJECT;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
      ps->p++;
      return LM_OK;
    }
    for (;;) {
      lm_json kid;
      const char *key;
      size_t key_len;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected member name");
      if ((rc = parse_string(ps, &key, &key_len)) != LM_OK) return rc;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
      ps->p++;
      if ((rc = parse_value(ps, &kid, depth + 1)) != LM_OK) return rc;
      kid.key = key;
      kid.key_len = key_len;
      if ((rc = push(ps, &kid)) != LM_OK) return rc;
      skip_ws(ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return pop_kids(ps, mark, v);
      }
      return fail(ps, "expected ',' or '}'");
    }
  }
  case '[': {
    size_t mark = ps->n_stack;
    v->type = LM_JSON_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
      ps->p++;
      return LM_OK;
    }
    for (;;) {
      lm_json kid;
      if ((rc = parse_value(ps, &kid, depth + 1)) != LM_OK) return rc;
      if ((rc = push(ps, &kid)) != LM_OK) return rc;
      skip_ws(ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return pop_kids(ps, mark, v);
      }
      return fail(ps, "expected ',' or ']'");
    }
  }
  case '"': v->type = LM_JSON_STRING; return parse_string(ps, &v->str, &v->str_len);
  case 't':
    if (ps->end - ps->p >= 4 && memcmp(ps->p, "true", 4) == 0) {
      v->type = LM_JSON_BOOL;
      v->boolean = 1;
      ps->p += 4;
      return LM_OK;
    }
    return fail(ps, "unexpected token");
  case 'f':
    if (ps->end - ps->p >= 5 && memcmp(ps->p, "false", 5) == 0) {
      v->type = LM_JSON_BOOL;
      ps->p += 5;
      return LM_OK;
    }
    return fail(ps, "unexpected token");
  case 'n':
    if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0) {
      v->type = LM_JSON_NULL;
      ps->p += 4;
      return LM_OK;
    }
    return fail(ps, "unexpected token");
  default: return parse_number(ps, v);
  }
}

int lm_json_parse(const char *text, size_t len, lm_json_doc **out, char *err) {
  struct parser ps = {.p = text, .end = text + len, .err = err};
  int rc;
  *out = NULL;
  /* JSON is UTF-8: text that is not fails here, not in whoever reads its
   * strings (a regex, a chat template) */
  size_t valid = lm_utf8_valid_prefix(text, len);
  if (valid != len) return lm_errf(err, LM_EFORMAT, "invalid JSON at byte %zu: not UTF-8", valid);
  ps.doc = calloc(1, sizeof(*ps.doc));
  if (!ps.doc) return lm_errf(err, LM_ENOMEM, "out of memory parsing JSON");
  rc = parse_value(&ps, &ps.doc->root, 0);
  if (rc == LM_OK) {
    skip_ws(&ps);
    if (ps.p != ps.end) rc = fail(&ps, "trailing characters after the value");
  }
  if (rc == LM_EFORMAT && err) {
    char what[LM_ERR_LEN];
    memcpy(what, err, sizeof(what));
    snprintf(err, LM_ERR_LEN, "invalid JSON at byte %zu: %.400s", (size_t)(ps.p - text), what);
  }
  free(ps.stack);
  if (rc != LM_OK) {
    lm_json_free(ps.doc);
    return rc;
  }
  *out = ps.doc;
  return LM_OK;
}

void lm_json_free(lm_json_doc *doc) {
  if (!doc) return;
  struct arena_chunk *c = doc->chunks;
  while (c) {
    struct arena_chunk *next = c->next;
    free(c);
    c = next;
  }
  free(doc);
}

const lm_json *lm_json_root(const lm_json_doc *doc) {
  return &doc->root;
}

const lm_json *lm_json_get(const lm_json *obj, const char *key) {
  if (!obj || obj->type != LM_JSON_OBJECT) return NULL;
  size_t len = strlen(key);
  for (size_t i = obj->n_kids; i-- > 0;) {
    const lm_json *m = &obj->kids[i];
    if (m->key_len == len && memcmp(m->key, key, len) == 0) return m;
  }
  return NULL;
}

const lm_json *lm_json_get_type(const lm_json *obj, const char *key, enum lm_json_type type) {
  const lm_json *v = lm_json_get(obj, key);
  return v && v->type == type ? v : NULL;
}

const char *lm_json_type_name(enum lm_json_type type) {
  static const char *const names[] = {"null", "boolean", "number", "string", "array", "object"};
  return (unsigned)type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

void lm_json_write_str(FILE *f, const char *s, size_t len) {
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      if (c < 0x20)
        fprintf(f, "\\u%04x", c);
      else
        fputc(c, f);
    }
  }
  fputc('"', f);
}
