/* jinja_value.c - the template value type: arena, buffers, containers,
 * conversion from JSON, printing (JavaScript number formatting, as the
 * reference prints), tojson, equality and ordering. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/jinja_internal.h"

struct jj_chunk {
  jj_chunk *next;
};

void *jj_alloc(jj_arena *a, size_t size) {
  size = (size + 15) & ~(size_t)15;
  if ((size_t)(a->end - a->cur) < size) {
    size_t chunk = size > 32768 ? size : 32768;
    jj_chunk *c = malloc(sizeof(jj_chunk) + 16 + chunk);
    if (!c) return NULL;
    c->next = a->head;
    a->head = c;
    a->cur = (char *)c + ((sizeof(jj_chunk) + 15) & ~(size_t)15);
    a->end = a->cur + chunk;
  }
  void *p = a->cur;
  a->cur += size;
  memset(p, 0, size);
  return p;
}

void jj_arena_free(jj_arena *a) {
  while (a->head) {
    jj_chunk *next = a->head->next;
    free(a->head);
    a->head = next;
  }
  a->cur = a->end = NULL;
}

void jj_put(jj_buf *b, const char *s, size_t n) {
  if (b->oom || n == 0) return;
  if (b->cap - b->n < n + 1) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}
void jj_puts(jj_buf *b, const char *s) {
  jj_put(b, s, strlen(s));
}
void jj_putc(jj_buf *b, char c) {
  jj_put(b, &c, 1);
}

const char *jv_type_name(enum jj_type t) {
  static const char *names[] = {"UndefinedValue", "NullValue",    "BooleanValue", "IntegerValue",
                                "FloatValue",     "StringValue",  "ArrayValue",   "ObjectValue",
                                "NamespaceValue", "FunctionValue"};
  return names[t];
}

int jv_truthy(jj_val v) {
  switch (v.t) {
  case JV_BOOL: return v.u.b;
  case JV_INT: return v.u.i != 0;
  case JV_FLOAT: return v.u.f != 0 && !isnan(v.u.f);
  case JV_STR: return v.u.s.n > 0;
  case JV_LIST: return v.u.l->n > 0;
  case JV_DICT: return v.u.d->n > 0;
  case JV_NS:
  case JV_FUNC: return 1;
  default: return 0;
  }
}

int jj_list_push(jj_arena *a, jj_list *l, jj_val v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    jj_val *items = jj_alloc(a, cap * sizeof(*items));
    if (!items) return LM_ENOMEM;
    if (l->n) memcpy(items, l->items, l->n * sizeof(*items));
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n++] = v;
  return LM_OK;
}

const jj_val *jj_dict_get(const jj_dict *d, const char *key, size_t key_len) {
  for (size_t i = 0; i < d->n; i++)
    if (d->items[i].key_len == key_len && !memcmp(d->items[i].key, key, key_len))
      return &d->items[i].val;
  return NULL;
}

int jj_dict_set(jj_arena *a, jj_dict *d, const char *key, size_t key_len, jj_val v) {
  jj_val *old = (jj_val *)jj_dict_get(d, key, key_len);
  if (old) {
    *old = v;
    return LM_OK;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    jj_entry *items = jj_alloc(a, cap * sizeof(*items));
    if (!items) return LM_ENOMEM;
    if (d->n) memcpy(items, d->items, d->n * sizeof(*items));
    d->items = items;
    d->cap = cap;
  }
  d->items[d->n++] = (jj_entry){.key = key, .key_len = key_len, .val = v};
  return LM_OK;
}

jj_val jv_new_list(jj_arena *a) {
  jj_val v = {.t = JV_LIST};
  v.u.l = jj_alloc(a, sizeof(jj_list));
  return v.u.l ? v : jv_undef();
}

jj_val jv_new_dict(jj_arena *a, enum jj_type t) {
  jj_val v = {.t = t};
  v.u.d = jj_alloc(a, sizeof(jj_dict));
  return v.u.d ? v : jv_undef();
}

int jv_from_json(jj_arena *a, const lm_json *j, jj_val *out) {
  switch (j->type) {
  case LM_JSON_NULL: *out = jv_none(); return LM_OK;
  case LM_JSON_BOOL: *out = jv_bool(j->boolean); return LM_OK;
  case LM_JSON_NUMBER:
    /* JavaScript has one number type: the reference makes every integral
     * number an integer, 2.0 included. */
    if (j->is_int && fabs(j->number) < 9.2e18)
      *out = jv_int(j->integer);
    else if (j->number == floor(j->number) && fabs(j->number) < 9.007199254740992e15)
      *out = jv_int((int64_t)j->number);
    else
      *out = jv_float(j->number);
    return LM_OK;
  case LM_JSON_STRING: *out = jv_str(j->str, j->str_len); return LM_OK;
  case LM_JSON_ARRAY: {
    jj_val l = jv_new_list(a);
    if (l.t == JV_UNDEF) return LM_ENOMEM;
    for (size_t i = 0; i < j->n_kids; i++) {
      jj_val v;
      int rc = jv_from_json(a, &j->kids[i], &v);
      if (rc != LM_OK || (rc = jj_list_push(a, l.u.l, v)) != LM_OK) return rc;
    }
    *out = l;
    return LM_OK;
  }
  case LM_JSON_OBJECT: {
    jj_val d = jv_new_dict(a, JV_DICT);
    if (d.t == JV_UNDEF) return LM_ENOMEM;
    for (size_t i = 0; i < j->n_kids; i++) {
      jj_val v;
      const lm_json *k = &j->kids[i];
      int rc = jv_from_json(a, k, &v);
      if (rc != LM_OK || (rc = jj_dict_set(a, d.u.d, k->key, k->key_len, v)) != LM_OK) return rc;
    }
    *out = d;
    return LM_OK;
  }
  }
  return LM_EINVAL;
}

void jj_put_js_number(jj_buf *b, double x) {
  char tmp[64], digits[24];
  if (isnan(x)) return jj_puts(b, "NaN");
  if (isinf(x)) return jj_puts(b, x < 0 ? "-Infinity" : "Infinity");
  if (x == 0) return jj_putc(b, '0');
  if (x < 0) {
    jj_putc(b, '-');
    x = -x;
  }
  int prec = 1;
  for (; prec < 17; prec++) {
    snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, x);
    if (strtod(tmp, NULL) == x) break;
  }
  snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, x);
  /* tmp: d[.ddd]e[+-]XX */
  int k = 0, e;
  char *p = tmp;
  for (; *p && *p != 'e'; p++)
    if (*p != '.') digits[k++] = *p;
  e = atoi(p + 1);
  while (k > 1 && digits[k - 1] == '0')
    k--;
  digits[k] = '\0';
  int n = e + 1; /* the decimal point sits after n digits */
  if (k <= n && n <= 21) {
    jj_put(b, digits, (size_t)k);
    for (int i = k; i < n; i++)
      jj_putc(b, '0');
  } else if (0 < n && n <= 21) {
    jj_put(b, digits, (size_t)n);
    jj_putc(b, '.');
    jj_put(b, digits + n, (size_t)(k - n));
  } else if (-6 < n && n <= 0) {
    jj_puts(b, "0.");
    for (int i = 0; i < -n; i++)
      jj_putc(b, '0');
    jj_put(b, digits, (size_t)k);
  } else {
    jj_putc(b, digits[0]);
    if (k > 1) {
      jj_putc(b, '.');
      jj_put(b, digits + 1, (size_t)(k - 1));
    }
    snprintf(tmp, sizeof(tmp), "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
    jj_puts(b, tmp);
  }
}

static void put_int(jj_buf *b, int64_t i) {
  char tmp[32];
  jj_put(b, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%lld", (long long)i));
}

int jv_prim_str(jj_buf *b, jj_val v, char *msg) {
  switch (v.t) {
  case JV_STR: jj_put(b, v.u.s.p, v.u.s.n); return LM_OK;
  case JV_INT: put_int(b, v.u.i); return LM_OK;
  case JV_FLOAT: jj_put_js_number(b, v.u.f); return LM_OK;
  case JV_BOOL: jj_puts(b, v.u.b ? "true" : "false"); return LM_OK;
  default:
    snprintf(msg, LM_ERR_LEN, "cannot join a %s into a string", jv_type_name(v.t));
    return LM_EINVAL;
  }
}

int jv_print(jj_buf *b, jj_val v, char *msg) {
  switch (v.t) {
  case JV_UNDEF:
  case JV_NONE: return LM_OK; /* the reference prints nothing for none and undefined */
  case JV_FLOAT:
    if (v.u.f == 0 && signbit(v.u.f)) {
      jj_puts(b, "-0.0");
    } else if (v.u.f == floor(v.u.f) && fabs(v.u.f) < 1e21) {
      char tmp[400];
      jj_put(b, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%.1f", v.u.f));
    } else {
      jj_put_js_number(b, v.u.f);
    }
    return LM_OK;
  case JV_LIST:
  case JV_DICT:
  case JV_NS: {
    jj_json_opts o = {0};
    return jv_tojson(b, v, &o, 0, msg);
  }
  case JV_FUNC: snprintf(msg, LM_ERR_LEN, "cannot print a function"); return LM_EINVAL;
  default: return jv_prim_str(b, v, msg);
  }
}

static void put_json_string(jj_buf *b, const char *s, size_t n, int ensure_ascii) {
  static const char hex[] = "0123456789abcdef";
  const char *end = s + n;
  jj_putc(b, '"');
  while (s < end) {
    const char *run = s;
    while (s < end && (unsigned char)*s >= 0x20 && *s != '"' && *s != '\\' &&
           (!ensure_ascii || (unsigned char)*s < 0x7f))
      s++;
    jj_put(b, run, (size_t)(s - run));
    if (s == end) break;
    unsigned char c = (unsigned char)*s;
    if (c >= 0x7f) { /* ensure_ascii: one \uXXXX per UTF-16 unit */
      uint32_t cp;
      s += jj_utf8_next(s, end, &cp);
      uint32_t units[2] = {cp, 0};
      int nu = 1;
      if (cp >= 0x10000) {
        units[0] = 0xd800 + ((cp - 0x10000) >> 10);
        units[1] = 0xdc00 + ((cp - 0x10000) & 0x3ff);
        nu = 2;
      }
      for (int i = 0; i < nu; i++) {
        char u[6] = {'\\',
                     'u',
                     hex[units[i] >> 12],
                     hex[(units[i] >> 8) & 15],
                     hex[(units[i] >> 4) & 15],
                     hex[units[i] & 15]};
        jj_put(b, u, 6);
      }
      continue;
    }
    s++;
    const char *esc = NULL;
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    }
    if (esc) {
      jj_puts(b, esc);
    } else {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      jj_put(b, u, 6);
    }
  }
  jj_putc(b, '"');
}

static void put_indent(jj_buf *b, int indent, int depth) {
  jj_putc(b, '\n');
  for (int i = 0; i < indent * depth; i++)
    jj_putc(b, ' ');
}

static int key_cmp(const void *pa, const void *pb) {
  const jj_entry *a = *(const jj_entry *const *)pa, *b = *(const jj_entry *const *)pb;
  size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
  int c = memcmp(a->key, b->key, n);
  return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

int jv_tojson(jj_buf *b, jj_val v, const jj_json_opts *o, int depth, char *msg) {
  const char *item_sep = o->item_sep ? o->item_sep : o->indent ? "," : ", ";
  const char *key_sep = o->key_sep ? o->key_sep : ": ";
  int rc;
  switch (v.t) {
  case JV_UNDEF: jj_puts(b, o->undef_to_null ? "null" : "undefined"); return LM_OK;
  case JV_NONE: jj_puts(b, "null"); return LM_OK;
  case JV_FLOAT:
    if (!isfinite(v.u.f))
      jj_puts(b, "null");
    else
      jj_put_js_number(b, v.u.f);
    return LM_OK;
  case JV_STR: put_json_string(b, v.u.s.p, v.u.s.n, o->ensure_ascii); return LM_OK;
  case JV_LIST: {
    const jj_list *l = v.u.l;
    jj_putc(b, '[');
    for (size_t i = 0; i < l->n; i++) {
      if (i) jj_puts(b, item_sep);
      if (o->indent) put_indent(b, o->indent, depth + 1);
      if ((rc = jv_tojson(b, l->items[i], o, depth + 1, msg)) != LM_OK) return rc;
    }
    if (o->indent && l->n) put_indent(b, o->indent, depth);
    jj_putc(b, ']');
    return LM_OK;
  }
  case JV_DICT:
  case JV_NS: {
    const jj_dict *d = v.u.d;
    const jj_entry *stack[16], **order = stack;
    if (d->n > 16 && !(order = malloc(d->n * sizeof(*order)))) {
      snprintf(msg, LM_ERR_LEN, "out of memory");
      return LM_ENOMEM;
    }
    for (size_t i = 0; i < d->n; i++)
      order[i] = &d->items[i];
    if (o->sort_keys) qsort(order, d->n, sizeof(*order), key_cmp);
    rc = LM_OK;
    jj_putc(b, '{');
    for (size_t i = 0; i < d->n && rc == LM_OK; i++) {
      if (i) jj_puts(b, item_sep);
      if (o->indent) put_indent(b, o->indent, depth + 1);
      put_json_string(b, order[i]->key, order[i]->key_len, o->ensure_ascii);
      jj_puts(b, key_sep);
      rc = jv_tojson(b, order[i]->val, o, depth + 1, msg);
    }
    if (order != stack) free(order);
    if (rc != LM_OK) return rc;
    if (o->indent && d->n) put_indent(b, o->indent, depth);
    jj_putc(b, '}');
    return LM_OK;
  }
  case JV_FUNC: snprintf(msg, LM_ERR_LEN, "cannot convert a function to JSON"); return LM_EINVAL;
  default: return jv_prim_str(b, v, msg);
  }
}

static int is_num(jj_val v) {
  return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}
static double num(jj_val v) {
  return v.t == JV_INT ? (double)v.u.i : v.t == JV_FLOAT ? v.u.f : (double)v.u.b;
}

/* JavaScript's ToNumber of a string: surrounding whitespace ignored, empty
 * is 0, anything that is not a whole number literal is NaN. */
static double str_to_num(const char *p, size_t n) {
  jj_trim(&p, &n, 1, 1);
  if (n == 0) return 0;
  char buf[64];
  if (n >= sizeof(buf)) return NAN;
  memcpy(buf, p, n);
  buf[n] = '\0';
  char *end;
  double d = strtod(buf, &end);
  return end == buf + n ? d : NAN;
}

int jv_strict_eq(jj_val a, jj_val b) {
  if ((a.t == JV_INT || a.t == JV_FLOAT) && (b.t == JV_INT || b.t == JV_FLOAT))
    return a.t == JV_INT && b.t == JV_INT ? a.u.i == b.u.i : num(a) == num(b);
  if (a.t != b.t) return 0;
  switch (a.t) {
  case JV_UNDEF:
  case JV_NONE: return 1;
  case JV_BOOL: return a.u.b == b.u.b;
  case JV_STR: return a.u.s.n == b.u.s.n && !memcmp(a.u.s.p, b.u.s.p, a.u.s.n);
  case JV_LIST: return a.u.l == b.u.l;
  case JV_DICT:
  case JV_NS: return a.u.d == b.u.d;
  case JV_FUNC: return a.u.fn == b.u.fn;
  default: return 0;
  }
}

int jv_loose_eq(jj_val a, jj_val b) {
  int a_nil = a.t == JV_UNDEF || a.t == JV_NONE, b_nil = b.t == JV_UNDEF || b.t == JV_NONE;
  if (a_nil || b_nil) return a_nil && b_nil;
  if (is_num(a) && is_num(b)) {
    if (a.t == JV_INT && b.t == JV_INT) return a.u.i == b.u.i;
    return num(a) == num(b);
  }
  if (is_num(a) && b.t == JV_STR) return num(a) == str_to_num(b.u.s.p, b.u.s.n);
  if (a.t == JV_STR && is_num(b)) return str_to_num(a.u.s.p, a.u.s.n) == num(b);
  return jv_strict_eq(a, b);
}

static int str_cmp(jj_val a, jj_val b, int case_sensitive) {
  const char *p = a.u.s.p, *q = b.u.s.p, *pe = p + a.u.s.n, *qe = q + b.u.s.n;
  while (p < pe && q < qe) {
    uint32_t c, d;
    p += jj_utf8_next(p, pe, &c);
    q += jj_utf8_next(q, qe, &d);
    if (!case_sensitive) {
      if (c < 128 && c >= 'A' && c <= 'Z') c += 32;
      if (d < 128 && d >= 'A' && d <= 'Z') d += 32;
    }
    if (c != d) return c < d ? -1 : 1;
  }
  return p < pe ? 1 : q < qe ? -1 : 0;
}

int jv_compare(jj_val a, jj_val b, int case_sensitive, int *rc, char *msg) {
  *rc = LM_OK;
  if ((a.t == JV_NONE && b.t == JV_NONE) || (a.t == JV_UNDEF && b.t == JV_UNDEF)) return 0;
  if (is_num(a) && is_num(b)) return num(a) < num(b) ? -1 : num(a) > num(b) ? 1 : 0;
  if (a.t == JV_STR && b.t == JV_STR) return str_cmp(a, b, case_sensitive);
  snprintf(msg, LM_ERR_LEN, "cannot compare %s with %s", jv_type_name(a.t), jv_type_name(b.t));
  *rc = LM_EINVAL;
  return 0;
}
