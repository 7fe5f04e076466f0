/* jinja_filter.c - filters, tests and the methods of strings and dicts,
 * per value type as the reference dispatches them (a filter written without
 * parentheses and one called with arguments take different paths there,
 * and here).
 *
 * One deliberate departure: strip/lstrip/rstrip with an argument strip
 * those characters, as Python's str methods do (Qwen3's template calls
 * .strip('\n')); the reference ignores the argument and strips
 * whitespace. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/jinja_internal.h"

static int name_is(const char *s, size_t n, const char *name) {
  return strlen(name) == n && !memcmp(s, name, n);
}

static int in_set(const char *s, size_t n, const char *const *set) {
  for (; *set; set++)
    if (name_is(s, n, *set)) return 1;
  return 0;
}

static const char *const filters[] = {
    "safe",       "tojson", "list",    "first",    "last",  "length", "reverse",    "sort",
    "join",       "string", "unique",  "upper",    "lower", "title",  "capitalize", "trim",
    "indent",     "int",    "float",   "abs",      "items", "bool",   "default",    "selectattr",
    "rejectattr", "map",    "replace", "dictsort", "keys",  "values", NULL};
static const char *const tests[] = {"boolean",  "callable",  "odd",      "even",   "false",
                                    "true",     "none",      "string",   "number", "integer",
                                    "iterable", "mapping",   "sequence", "lower",  "upper",
                                    "defined",  "undefined", "equalto",  "eq",     NULL};

int jj_known_filter(const char *s, size_t n) {
  return in_set(s, n, filters);
}
int jj_known_test(const char *s, size_t n) {
  return in_set(s, n, tests);
}

static int to_json(jj_ctx *x, jj_val v, const jj_json_opts *o, jj_val *out) {
  jj_buf b = {0};
  char msg[LM_ERR_LEN];
  int rc = jv_tojson(&b, v, o, 0, msg);
  if (rc != LM_OK) {
    free(b.p);
    return rc == LM_ENOMEM ? jj_oom(x) : jj_fail(x, "%s", msg);
  }
  return jj_buf_value(x, &b, out);
}

/* ---- tests ---- */

static int str_is_case(jj_ctx *x, jj_val v, int upper, int *r) {
  jj_val c;
  if (v.t != JV_STR) return *r = 0, LM_OK;
  if (jj_case(&x->arena, v, upper, &c) != LM_OK) return jj_oom(x);
  *r = c.u.s.n == v.u.s.n && !memcmp(c.u.s.p, v.u.s.p, v.u.s.n);
  return LM_OK;
}

int jj_apply_test(jj_ctx *x, const char *s, size_t n, jj_val v, int *r) {
  enum jj_type t = v.t;
  if (name_is(s, n, "odd") || name_is(s, n, "even")) {
    if (t != JV_INT) return jj_fail(x, "cannot test %.*s on %s", (int)n, s, jv_type_name(t));
    *r = (v.u.i % 2 != 0) == name_is(s, n, "odd");
  } else if (name_is(s, n, "boolean"))
    *r = t == JV_BOOL;
  else if (name_is(s, n, "callable"))
    *r = t == JV_FUNC;
  else if (name_is(s, n, "false"))
    *r = t == JV_BOOL && !v.u.b;
  else if (name_is(s, n, "true"))
    *r = t == JV_BOOL && v.u.b;
  else if (name_is(s, n, "none"))
    *r = t == JV_NONE;
  else if (name_is(s, n, "string"))
    *r = t == JV_STR;
  else if (name_is(s, n, "number"))
    *r = t == JV_INT || t == JV_FLOAT;
  else if (name_is(s, n, "integer"))
    *r = t == JV_INT;
  else if (name_is(s, n, "iterable"))
    *r = t == JV_LIST || t == JV_STR;
  else if (name_is(s, n, "mapping"))
    *r = t == JV_DICT;
  else if (name_is(s, n, "sequence"))
    *r = t == JV_LIST || t == JV_DICT || t == JV_STR;
  else if (name_is(s, n, "lower"))
    return str_is_case(x, v, 0, r);
  else if (name_is(s, n, "upper"))
    return str_is_case(x, v, 1, r);
  else if (name_is(s, n, "defined"))
    *r = t != JV_UNDEF;
  else if (name_is(s, n, "undefined"))
    *r = t == JV_UNDEF;
  else /* equalto, eq: without an argument, compares with undefined */
    *r = t == JV_UNDEF;
  return LM_OK;
}

/* ---- string methods ---- */

static jj_val method(jj_ctx *x, jj_val self, const char *name) {
  jj_func *f = jj_alloc(&x->arena, sizeof(*f));
  if (!f) return jv_undef();
  f->kind = FN_METHOD;
  f->self = self;
  f->name = name;
  return (jj_val){.t = JV_FUNC, .u.fn = f};
}

static const char *const str_methods[] = {"upper",      "lower",  "strip",   "title",
                                          "capitalize", "rstrip", "lstrip",  "startswith",
                                          "endswith",   "split",  "replace", NULL};
static const char *const dict_methods[] = {"get", "items", "keys", "values", "dictsort", NULL};

int jj_builtin_attr(jj_ctx *x, jj_val obj, const char *name, size_t n, jj_val *out) {
  *out = jv_undef();
  const char *const *set = obj.t == JV_STR ? str_methods : obj.t == JV_DICT ? dict_methods : NULL;
  if ((obj.t == JV_STR || obj.t == JV_LIST) && name_is(name, n, "length")) {
    *out = jv_int((int64_t)(obj.t == JV_STR ? jj_utf16_len(obj.u.s.p, obj.u.s.n) : obj.u.l->n));
    return LM_OK;
  }
  for (; set && *set; set++)
    if (name_is(name, n, *set)) {
      *out = method(x, obj, *set);
      return out->t == JV_UNDEF ? jj_oom(x) : LM_OK;
    }
  return LM_OK;
}

static int title_case(jj_ctx *x, jj_val s, jj_val *out) {
  char *buf = jj_alloc(&x->arena, s.u.s.n + 1);
  if (!buf) return jj_oom(x);
  for (size_t i = 0; i < s.u.s.n; i++) {
    char c = s.u.s.p[i], prev = i ? s.u.s.p[i - 1] : ' ';
    int prev_word = (prev >= '0' && prev <= '9') || (prev >= 'a' && prev <= 'z') ||
                    (prev >= 'A' && prev <= 'Z') || prev == '_';
    buf[i] = !prev_word && c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
  }
  *out = jv_str(buf, s.u.s.n);
  return LM_OK;
}

static int capitalize(jj_ctx *x, jj_val s, jj_val *out) {
  if (!s.u.s.n) return *out = s, LM_OK;
  uint32_t cp;
  size_t k = jj_utf8_next(s.u.s.p, s.u.s.p + s.u.s.n, &cp);
  jj_val first, up;
  first = jv_str(s.u.s.p, k);
  if (jj_case(&x->arena, first, 1, &up) != LM_OK) return jj_oom(x);
  jj_buf b = {0};
  jj_put(&b, up.u.s.p, up.u.s.n);
  jj_put(&b, s.u.s.p + k, s.u.s.n - k);
  return jj_buf_value(x, &b, out);
}

static int affix(jj_ctx *x, jj_val self, const jj_args *a, int end, jj_val *out) {
  const char *what = end ? "endswith" : "startswith";
  if (a->n_pos == 0) return jj_fail(x, "%s() requires an argument", what);
  jj_val p = a->pos[0];
  const jj_val *cand = &p;
  size_t n = 1;
  if (p.t == JV_LIST)
    cand = p.u.l->items, n = p.u.l->n;
  else if (p.t != JV_STR)
    return jj_fail(x, "%s() argument must be a string or tuple of strings", what);
  for (size_t i = 0; i < n; i++) {
    if (cand[i].t != JV_STR) return jj_fail(x, "%s() tuple elements must be strings", what);
    size_t k = cand[i].u.s.n;
    if (k <= self.u.s.n && !memcmp(self.u.s.p + (end ? self.u.s.n - k : 0), cand[i].u.s.p, k))
      return *out = jv_bool(1), LM_OK;
  }
  return *out = jv_bool(0), LM_OK;
}

static int push_str(jj_ctx *x, jj_val l, const char *p, size_t n) {
  return jj_list_push(&x->arena, l.u.l, jv_str(p, n)) == LM_OK ? LM_OK : jj_oom(x);
}

static int split(jj_ctx *x, jj_val self, const jj_args *a, jj_val *out) {
  jj_val sep = a->n_pos > 0 ? a->pos[0] : jv_none();
  jj_val max = a->n_pos > 1 ? a->pos[1] : jv_int(-1);
  if (sep.t != JV_STR && sep.t != JV_NONE)
    return jj_fail(x, "sep argument must be a string or null");
  if (max.t != JV_INT) return jj_fail(x, "maxsplit argument must be a number");
  jj_val l = jv_new_list(&x->arena);
  if (l.t == JV_UNDEF) return jj_oom(x);
  const char *p = self.u.s.p, *end = p + self.u.s.n;
  int64_t limit = max.u.i;
  if (sep.t == JV_NONE) {
    size_t n = self.u.s.n;
    jj_trim(&p, &n, 1, 0);
    for (;;) {
      size_t k;
      while (p < end && (k = jj_js_space(p, end)) > 0)
        p += k;
      if (p >= end) break;
      const char *w = p;
      if (limit != -1 && (int64_t)l.u.l->n >= limit) { /* the rest, as it is */
        if (push_str(x, l, w, (size_t)(end - w)) != LM_OK) return LM_ENOMEM;
        break;
      }
      while (p < end && jj_js_space(p, end) == 0) {
        uint32_t cp;
        p += jj_utf8_next(p, end, &cp);
      }
      if (push_str(x, l, w, (size_t)(p - w)) != LM_OK) return LM_ENOMEM;
    }
    return *out = l, LM_OK;
  }
  if (sep.u.s.n == 0) return jj_fail(x, "empty separator");
  for (;;) {
    const char *hit = (limit == -1 || (int64_t)l.u.l->n < limit)
                          ? memmem(p, (size_t)(end - p), sep.u.s.p, sep.u.s.n)
                          : NULL;
    if (!hit) break;
    if (push_str(x, l, p, (size_t)(hit - p)) != LM_OK) return LM_ENOMEM;
    p = hit + sep.u.s.n;
  }
  if (push_str(x, l, p, (size_t)(end - p)) != LM_OK) return LM_ENOMEM;
  return *out = l, LM_OK;
}

static int replace(jj_ctx *x, jj_val self, jj_val old, jj_val new_, jj_val count, jj_val *out) {
  if (old.t != JV_STR || new_.t != JV_STR) return jj_fail(x, "replace() arguments must be strings");
  if (count.t != JV_INT && count.t != JV_NONE)
    return jj_fail(x, "replace() count argument must be a number or null");
  int64_t left = count.t == JV_INT && count.u.i >= 0 ? count.u.i : INT64_MAX;
  if (count.t == JV_INT && count.u.i == 0) return *out = self, LM_OK;
  jj_buf b = {0};
  const char *p = self.u.s.p, *end = p + self.u.s.n;
  if (old.u.s.n == 0) { /* matches before every character and at the end */
    while (left > 0) {
      jj_put(&b, new_.u.s.p, new_.u.s.n);
      left--;
      if (p >= end) break;
      uint32_t cp;
      size_t k = jj_utf8_next(p, end, &cp);
      jj_put(&b, p, k);
      p += k;
    }
    jj_put(&b, p, (size_t)(end - p));
    return jj_buf_value(x, &b, out);
  }
  while (left > 0) {
    const char *hit = memmem(p, (size_t)(end - p), old.u.s.p, old.u.s.n);
    if (!hit) break;
    jj_put(&b, p, (size_t)(hit - p));
    jj_put(&b, new_.u.s.p, new_.u.s.n);
    p = hit + old.u.s.n;
    left--;
  }
  jj_put(&b, p, (size_t)(end - p));
  return jj_buf_value(x, &b, out);
}

static int strip(jj_ctx *x, jj_val self, const jj_args *a, int left, int right, jj_val *out) {
  const char *p = self.u.s.p;
  size_t n = self.u.s.n;
  if (a->n_pos > 0 && a->pos[0].t == JV_STR)
    jj_strip_chars(&p, &n, a->pos[0].u.s.p, a->pos[0].u.s.n, left, right);
  else if (a->n_pos > 0 && a->pos[0].t != JV_NONE)
    return jj_fail(x, "strip arg must be None or str");
  else
    jj_trim(&p, &n, left, right);
  return *out = jv_str(p, n), LM_OK;
}

static int items_list(jj_ctx *x, jj_val d, int what, jj_val *out) {
  jj_val l = jv_new_list(&x->arena);
  if (l.t == JV_UNDEF) return jj_oom(x);
  for (size_t i = 0; i < d.u.d->n; i++) {
    const jj_entry *e = &d.u.d->items[i];
    jj_val item = what == 1 ? jv_str(e->key, e->key_len) : e->val;
    if (what == 0) {
      item = jv_new_list(&x->arena);
      if (item.t == JV_UNDEF ||
          jj_list_push(&x->arena, item.u.l, jv_str(e->key, e->key_len)) != LM_OK ||
          jj_list_push(&x->arena, item.u.l, e->val) != LM_OK)
        return jj_oom(x);
    }
    if (jj_list_push(&x->arena, l.u.l, item) != LM_OK) return jj_oom(x);
  }
  return *out = l, LM_OK;
}

/* Stable insertion sort (lists in templates are short); keys[i] orders items[i]. */
static int sort_values(jj_ctx *x, jj_val *items, const jj_val *keys_in, size_t n, int reverse,
                       int cs) {
  jj_val *keys = jj_alloc(&x->arena, (n ? n : 1) * sizeof(jj_val));
  char msg[LM_ERR_LEN];
  if (!keys) return jj_oom(x);
  memcpy(keys, keys_in, n * sizeof(jj_val));
  for (size_t i = 1; i < n; i++) {
    jj_val it = items[i], k = keys[i];
    size_t j = i;
    while (j > 0) {
      int rc, c = jv_compare(keys[j - 1], k, cs, &rc, msg);
      if (rc != LM_OK) return jj_fail(x, "%s", msg);
      if (reverse ? c >= 0 : c <= 0) break;
      items[j] = items[j - 1];
      keys[j] = keys[j - 1];
      j--;
    }
    items[j] = it;
    keys[j] = k;
  }
  return LM_OK;
}

static int bool_arg(jj_ctx *x, const jj_args *a, size_t pos, const char *kw, int dflt, int *out) {
  const jj_val *v = pos < a->n_pos ? &a->pos[pos] : jj_kwarg(a, kw);
  if (!v) return *out = dflt, LM_OK;
  if (v->t != JV_BOOL) return jj_fail(x, "%s must be a boolean", kw);
  return *out = v->u.b, LM_OK;
}

static int dictsort(jj_ctx *x, jj_val d, const jj_args *a, jj_val *out) {
  int cs = 0, reverse = 0;
  if (bool_arg(x, a, 0, "case_sensitive", 0, &cs) || bool_arg(x, a, 2, "reverse", 0, &reverse))
    return LM_EINVAL;
  const jj_val *by = a->n_pos > 1 ? &a->pos[1] : jj_kwarg(a, "by");
  int by_value = 0;
  if (by) {
    if (by->t != JV_STR) return jj_fail(x, "by must be a string");
    if (!name_is(by->u.s.p, by->u.s.n, "key") && !name_is(by->u.s.p, by->u.s.n, "value"))
      return jj_fail(x, "by must be either 'key' or 'value'");
    by_value = name_is(by->u.s.p, by->u.s.n, "value");
  }
  if (items_list(x, d, 0, out) != LM_OK) return LM_ENOMEM;
  size_t n = out->u.l->n;
  jj_val *keys = jj_alloc(&x->arena, (n ? n : 1) * sizeof(jj_val));
  if (!keys) return jj_oom(x);
  for (size_t i = 0; i < n; i++)
    keys[i] = out->u.l->items[i].u.l->items[by_value];
  return sort_values(x, out->u.l->items, keys, n, reverse, cs);
}

int jj_call_method(jj_ctx *x, const jj_func *fn, const jj_args *a, jj_val *out) {
  jj_val self = fn->self;
  const char *m = fn->name;
  if (a->n_kw && strcmp(m, "replace") && strcmp(m, "dictsort"))
    return jj_fail(x, "%s() takes no keyword arguments", m);
  if (self.t == JV_STR) {
    if (!strcmp(m, "upper") || !strcmp(m, "lower"))
      return jj_case(&x->arena, self, m[0] == 'u', out) == LM_OK ? LM_OK : jj_oom(x);
    if (!strcmp(m, "strip")) return strip(x, self, a, 1, 1, out);
    if (!strcmp(m, "lstrip")) return strip(x, self, a, 1, 0, out);
    if (!strcmp(m, "rstrip")) return strip(x, self, a, 0, 1, out);
    if (!strcmp(m, "title")) return title_case(x, self, out);
    if (!strcmp(m, "capitalize")) return capitalize(x, self, out);
    if (!strcmp(m, "startswith")) return affix(x, self, a, 0, out);
    if (!strcmp(m, "endswith")) return affix(x, self, a, 1, out);
    if (!strcmp(m, "split")) return split(x, self, a, out);
    if (a->n_pos < 2) return jj_fail(x, "replace() requires at least two arguments");
    const jj_val *count = a->n_pos > 2 ? &a->pos[2] : jj_kwarg(a, "count");
    return replace(x, self, a->pos[0], a->pos[1], count ? *count : jv_none(), out);
  }
  if (!strcmp(m, "get")) {
    if (a->n_pos < 1 || a->pos[0].t != JV_STR)
      return jj_fail(x, "object key must be a string: got %s",
                     jv_type_name(a->n_pos ? a->pos[0].t : JV_UNDEF));
    const jj_val *v = jj_dict_get(self.u.d, a->pos[0].u.s.p, a->pos[0].u.s.n);
    *out = v ? *v : a->n_pos > 1 ? a->pos[1] : jv_none();
    return LM_OK;
  }
  if (!strcmp(m, "items")) return items_list(x, self, 0, out);
  if (!strcmp(m, "keys")) return items_list(x, self, 1, out);
  if (!strcmp(m, "values")) return items_list(x, self, 2, out);
  return dictsort(x, self, a, out);
}

/* ---- filters ---- */

/* getAttributeValue: a dotted path through dicts, namespaces and list indices. */
static jj_val attr_path(jj_val v, const char *path, size_t n) {
  const char *p = path, *end = path + n;
  while (p <= end) {
    const char *dot = memchr(p, '.', (size_t)(end - p));
    size_t k = dot ? (size_t)(dot - p) : (size_t)(end - p);
    if (v.t == JV_DICT || v.t == JV_NS) {
      const jj_val *f = jj_dict_get(v.u.d, p, k);
      v = f ? *f : jv_undef();
    } else if (v.t == JV_LIST) {
      char buf[24];
      if (k == 0 || k >= sizeof(buf)) return jv_undef();
      memcpy(buf, p, k);
      buf[k] = '\0';
      long i = strtol(buf, NULL, 10);
      if (!(buf[0] >= '0' && buf[0] <= '9') || i < 0 || (size_t)i >= v.u.l->n) return jv_undef();
      v = v.u.l->items[i];
    } else {
      return jv_undef();
    }
    if (!dot) break;
    p = dot + 1;
  }
  return v;
}

/* parseInt(s, 10) / parseFloat(s); 0 when nothing parses. */
static int parse_num(jj_val s, int as_float, jj_val *out) {
  const char *p = s.u.s.p;
  size_t n = s.u.s.n;
  jj_trim(&p, &n, 1, 0);
  char buf[128];
  if (n >= sizeof(buf)) n = sizeof(buf) - 1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  char *end;
  if (as_float) {
    double d = strtod(buf, &end);
    if (end == buf ||
        (buf[0] != '-' && buf[0] != '+' && buf[0] != '.' && (buf[0] < '0' || buf[0] > '9')))
      return 0; /* strtod takes nan, inf and hex; parseFloat does not */
    *out = jv_float(d);
    return 1;
  }
  long long i = strtoll(buf, &end, 10);
  if (end == buf) return 0;
  *out = jv_int(i);
  return 1;
}

static int filter_join(jj_ctx *x, jj_val v, jj_val sep, jj_val *out) {
  jj_buf b = {0};
  char msg[LM_ERR_LEN];
  if (v.t == JV_STR) {
    const char *p = v.u.s.p, *end = p + v.u.s.n;
    while (p < end) {
      uint32_t cp;
      size_t k = jj_utf8_next(p, end, &cp);
      if (p != v.u.s.p) jj_put(&b, sep.u.s.p, sep.u.s.n);
      jj_put(&b, p, k);
      p += k;
    }
    return jj_buf_value(x, &b, out);
  }
  for (size_t i = 0; i < v.u.l->n; i++) {
    jj_val it = v.u.l->items[i];
    if (i) jj_put(&b, sep.u.s.p, sep.u.s.n);
    if (it.t == JV_NONE || it.t == JV_UNDEF) continue;
    if (jv_prim_str(&b, it, msg) != LM_OK) {
      free(b.p);
      return jj_fail(x, "join: %s", msg);
    }
  }
  return jj_buf_value(x, &b, out);
}

static int filter_bare(jj_ctx *x, const char *f, jj_val v, jj_val *out) {
  enum jj_type t = v.t;
  if (!strcmp(f, "safe")) return *out = v, LM_OK;
  if (!strcmp(f, "tojson")) {
    jj_json_opts o = {.undef_to_null = 1};
    return to_json(x, v, &o, out);
  }
  if (t == JV_LIST) {
    jj_list *l = v.u.l;
    if (!strcmp(f, "list")) return *out = v, LM_OK;
    if (!strcmp(f, "first")) return *out = l->n ? l->items[0] : jv_undef(), LM_OK;
    if (!strcmp(f, "last")) return *out = l->n ? l->items[l->n - 1] : jv_undef(), LM_OK;
    if (!strcmp(f, "length")) return *out = jv_int((int64_t)l->n), LM_OK;
    if (!strcmp(f, "join")) return filter_join(x, v, jv_str("", 0), out);
    if (!strcmp(f, "string")) {
      jj_json_opts o = {0};
      return to_json(x, v, &o, out);
    }
    if (!strcmp(f, "reverse") || !strcmp(f, "sort") || !strcmp(f, "unique")) {
      jj_val c = jv_new_list(&x->arena);
      if (c.t == JV_UNDEF) return jj_oom(x);
      for (size_t i = 0; i < l->n; i++) {
        jj_val it = l->items[f[0] == 'r' ? l->n - 1 - i : i];
        int dup = 0;
        for (size_t k = 0; f[0] == 'u' && k < c.u.l->n && !dup; k++)
          dup = jv_strict_eq(c.u.l->items[k], it);
        if (!dup && jj_list_push(&x->arena, c.u.l, it) != LM_OK) return jj_oom(x);
      }
      *out = c;
      return f[1] == 'o' ? sort_values(x, c.u.l->items, c.u.l->items, c.u.l->n, 0, 0) : LM_OK;
    }
  } else if (t == JV_STR) {
    if (!strcmp(f, "length")) return *out = jv_int((int64_t)jj_utf16_len(v.u.s.p, v.u.s.n)), LM_OK;
    if (!strcmp(f, "upper") || !strcmp(f, "lower"))
      return jj_case(&x->arena, v, f[0] == 'u', out) == LM_OK ? LM_OK : jj_oom(x);
    if (!strcmp(f, "title")) return title_case(x, v, out);
    if (!strcmp(f, "capitalize")) return capitalize(x, v, out);
    if (!strcmp(f, "trim")) {
      *out = v;
      jj_trim(&out->u.s.p, &out->u.s.n, 1, 1);
      return LM_OK;
    }
    if (!strcmp(f, "join") || !strcmp(f, "string")) return *out = v, LM_OK;
    if (!strcmp(f, "int") || !strcmp(f, "float")) {
      if (!parse_num(v, f[0] == 'f', out)) *out = f[0] == 'f' ? jv_float(0) : jv_int(0);
      return LM_OK;
    }
    if (!strcmp(f, "indent")) {
      jj_buf b = {0};
      const char *p = v.u.s.p, *end = p + v.u.s.n;
      for (int first = 1;; first = 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (!first && le > p) jj_puts(&b, "    ");
        jj_put(&b, p, (size_t)(le - p));
        if (!nl) break;
        jj_putc(&b, '\n');
        p = nl + 1;
      }
      return jj_buf_value(x, &b, out);
    }
  } else if (t == JV_INT || t == JV_FLOAT) {
    if (!strcmp(f, "abs"))
      return *out = t == JV_INT ? jv_int(v.u.i < 0 ? -v.u.i : v.u.i) : jv_float(fabs(v.u.f)), LM_OK;
    if (!strcmp(f, "int")) return *out = t == JV_INT ? v : jv_int((int64_t)floor(v.u.f)), LM_OK;
    if (!strcmp(f, "float")) return *out = jv_float(t == JV_INT ? (double)v.u.i : v.u.f), LM_OK;
    if (!strcmp(f, "string")) {
      jj_buf b = {0};
      char msg[LM_ERR_LEN];
      jv_print(&b, v, msg);
      return jj_buf_value(x, &b, out);
    }
  } else if (t == JV_DICT) {
    if (!strcmp(f, "items")) return items_list(x, v, 0, out);
    if (!strcmp(f, "length")) return *out = jv_int((int64_t)v.u.d->n), LM_OK;
    if (!strcmp(f, "keys")) return items_list(x, v, 1, out);
    if (!strcmp(f, "values")) return items_list(x, v, 2, out);
    if (!strcmp(f, "dictsort")) {
      jj_args none = {0};
      return dictsort(x, v, &none, out);
    }
  } else if (t == JV_BOOL) {
    if (!strcmp(f, "bool")) return *out = v, LM_OK;
    if (!strcmp(f, "int")) return *out = jv_int(v.u.b), LM_OK;
    if (!strcmp(f, "float")) return *out = jv_float(v.u.b), LM_OK;
    if (!strcmp(f, "string")) return *out = jv_str(v.u.b ? "true" : "false", v.u.b ? 4 : 5), LM_OK;
  }
  return jj_fail(x, "cannot apply filter \"%s\" to %s", f, jv_type_name(t));
}

static int filter_selectattr(jj_ctx *x, const char *f, jj_val v, const jj_args *a, jj_val *out) {
  int select = f[0] == 's';
  for (size_t i = 0; i < v.u.l->n; i++)
    if (v.u.l->items[i].t != JV_DICT && v.u.l->items[i].t != JV_NS)
      return jj_fail(x, "`%s` can only be applied to array of objects", f);
  if (a->n_pos < 1) return jj_fail(x, "`%s` needs an attribute name", f);
  jj_val attr = a->pos[0];
  jj_val l = jv_new_list(&x->arena);
  if (l.t == JV_UNDEF) return jj_oom(x);
  for (size_t i = 0; i < v.u.l->n; i++) {
    const jj_val *got = jj_dict_get(v.u.l->items[i].u.d, attr.u.s.p, attr.u.s.n);
    int r = 0;
    if (got && a->n_pos > 1) {
      jj_val t = a->pos[1];
      if (name_is(t.u.s.p, t.u.s.n, "equalto") || name_is(t.u.s.p, t.u.s.n, "eq")) {
        r = jv_strict_eq(*got, a->n_pos > 2 ? a->pos[2] : jv_undef());
      } else {
        if (!jj_known_test(t.u.s.p, t.u.s.n))
          return jj_fail(x, "unknown test: %.*s", (int)t.u.s.n, t.u.s.p);
        if (jj_apply_test(x, t.u.s.p, t.u.s.n, *got, &r) != LM_OK) return LM_EINVAL;
      }
    } else if (got) {
      r = jv_truthy(*got);
    }
    if (r == select && jj_list_push(&x->arena, l.u.l, v.u.l->items[i]) != LM_OK) return jj_oom(x);
  }
  return *out = l, LM_OK;
}

int jj_apply_filter(jj_ctx *x, const jj_node *fn, jj_val v, jj_env *env, jj_val *out) {
  char f[16];
  snprintf(f, sizeof(f), "%.*s", (int)fn->n, fn->s);
  if (!fn->flag) return filter_bare(x, f, v, out);
  jj_args a;
  int rc = jj_eval_args(x, fn->args, fn->n_args, env, &a);
  if (rc != LM_OK) return rc;
  x->line = fn->line;
  if (!strcmp(f, "tojson")) {
    jj_json_opts o = {.undef_to_null = 1};
    const jj_val *indent = jj_kwarg(&a, "indent"), *ea = jj_kwarg(&a, "ensure_ascii");
    const jj_val *sk = jj_kwarg(&a, "sort_keys"), *seps = jj_kwarg(&a, "separators");
    char item_sep[64], key_sep[64];
    if (indent && indent->t != JV_INT && indent->t != JV_NONE)
      return jj_fail(x, "if set, indent must be a number");
    if (indent && indent->t == JV_INT)
      o.indent = indent->u.i > 0 && indent->u.i < 64 ? (int)indent->u.i : 0;
    if (ea && ea->t != JV_BOOL) return jj_fail(x, "if set, ensure_ascii must be a boolean");
    if (sk && sk->t != JV_BOOL) return jj_fail(x, "if set, sort_keys must be a boolean");
    o.ensure_ascii = ea && ea->u.b;
    o.sort_keys = sk && sk->u.b;
    if (seps && seps->t != JV_NONE) {
      if (seps->t != JV_LIST || seps->u.l->n != 2 || seps->u.l->items[0].t != JV_STR ||
          seps->u.l->items[1].t != JV_STR || seps->u.l->items[0].u.s.n >= 64 ||
          seps->u.l->items[1].u.s.n >= 64)
        return jj_fail(x, "separators must be a tuple of two strings");
      snprintf(item_sep, sizeof(item_sep), "%.*s", (int)seps->u.l->items[0].u.s.n,
               seps->u.l->items[0].u.s.p);
      snprintf(key_sep, sizeof(key_sep), "%.*s", (int)seps->u.l->items[1].u.s.n,
               seps->u.l->items[1].u.s.p);
      o.item_sep = item_sep;
      o.key_sep = key_sep;
    }
    return to_json(x, v, &o, out);
  }
  if (!strcmp(f, "join")) {
    if (v.t != JV_STR && v.t != JV_LIST)
      return jj_fail(x, "cannot apply filter \"join\" to %s", jv_type_name(v.t));
    const jj_val *sep = a.n_pos ? &a.pos[0] : jj_kwarg(&a, "separator");
    if (sep && sep->t != JV_STR) return jj_fail(x, "separator must be a string");
    return filter_join(x, v, sep ? *sep : jv_str("", 0), out);
  }
  if (!strcmp(f, "int") || !strcmp(f, "float")) {
    int fl = f[0] == 'f';
    const jj_val *d = a.n_pos ? &a.pos[0] : jj_kwarg(&a, "default");
    jj_val dflt = d ? *d : fl ? jv_float(0) : jv_int(0);
    if (v.t == JV_STR) return parse_num(v, fl, out) ? LM_OK : (*out = dflt, LM_OK);
    if (v.t == JV_INT || v.t == JV_FLOAT) return *out = v, LM_OK;
    if (v.t == JV_BOOL) return *out = fl ? jv_float(v.u.b) : jv_int(v.u.b), LM_OK;
    return jj_fail(x, "cannot apply filter \"%s\" to %s", f, jv_type_name(v.t));
  }
  if (!strcmp(f, "default")) {
    jj_val dflt = a.n_pos ? a.pos[0] : jv_str("", 0);
    int boolean = 0;
    if (bool_arg(x, &a, 1, "boolean", 0, &boolean) != LM_OK) return LM_EINVAL;
    *out = v.t == JV_UNDEF || (boolean && !jv_truthy(v)) ? dflt : v;
    return LM_OK;
  }
  if (v.t == JV_LIST) {
    if (!strcmp(f, "sort")) {
      int reverse = 0, cs = 0;
      if (bool_arg(x, &a, 0, "reverse", 0, &reverse) ||
          bool_arg(x, &a, 1, "case_sensitive", 0, &cs))
        return LM_EINVAL;
      const jj_val *attr = a.n_pos > 2 ? &a.pos[2] : jj_kwarg(&a, "attribute");
      if (attr && attr->t != JV_STR && attr->t != JV_INT && attr->t != JV_NONE)
        return jj_fail(x, "attribute must be a string, integer, or null");
      jj_val c = jv_new_list(&x->arena);
      if (c.t == JV_UNDEF) return jj_oom(x);
      size_t n = v.u.l->n;
      jj_val *keys = jj_alloc(&x->arena, (n ? n : 1) * sizeof(jj_val));
      if (!keys) return jj_oom(x);
      char ibuf[24];
      for (size_t i = 0; i < n; i++) {
        jj_val it = v.u.l->items[i];
        if (jj_list_push(&x->arena, c.u.l, it) != LM_OK) return jj_oom(x);
        keys[i] = it;
        if (attr && attr->t == JV_STR) keys[i] = attr_path(it, attr->u.s.p, attr->u.s.n);
        if (attr && attr->t == JV_INT)
          keys[i] = attr_path(it, ibuf,
                              (size_t)snprintf(ibuf, sizeof(ibuf), "%lld", (long long)attr->u.i));
      }
      *out = c;
      return sort_values(x, c.u.l->items, keys, n, reverse, cs);
    }
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr"))
      return filter_selectattr(x, f, v, &a, out);
    if (!strcmp(f, "map")) {
      const jj_val *attr = jj_kwarg(&a, "attribute"), *dflt = jj_kwarg(&a, "default");
      if (!attr) return jj_fail(x, "`map` without `attribute` is not supported");
      if (attr->t != JV_STR) return jj_fail(x, "attribute must be a string");
      jj_val l = jv_new_list(&x->arena);
      if (l.t == JV_UNDEF) return jj_oom(x);
      for (size_t i = 0; i < v.u.l->n; i++) {
        jj_val it = v.u.l->items[i];
        if (it.t != JV_DICT && it.t != JV_NS) return jj_fail(x, "items in map must be objects");
        jj_val got = attr_path(it, attr->u.s.p, attr->u.s.n);
        if (got.t == JV_UNDEF && dflt) got = *dflt;
        if (jj_list_push(&x->arena, l.u.l, got) != LM_OK) return jj_oom(x);
      }
      return *out = l, LM_OK;
    }
  } else if (v.t == JV_STR) {
    if (!strcmp(f, "indent")) {
      const jj_val *w = a.n_pos ? &a.pos[0] : jj_kwarg(&a, "width");
      const jj_val *first = a.n_pos > 1 ? &a.pos[1] : jj_kwarg(&a, "first");
      const jj_val *blank = a.n_pos > 2 ? &a.pos[2] : jj_kwarg(&a, "blank");
      if (w && w->t != JV_INT) return jj_fail(x, "width must be a number");
      int64_t width = w ? w->u.i : 4;
      jj_buf b = {0};
      const char *p = v.u.s.p, *end = p + v.u.s.n;
      for (int line0 = 1;; line0 = 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        int skip =
            (line0 && !(first && jv_truthy(*first))) || (le == p && !(blank && jv_truthy(*blank)));
        for (int64_t k = 0; !skip && k < width && k < 4096; k++)
          jj_putc(&b, ' ');
        jj_put(&b, p, (size_t)(le - p));
        if (!nl) break;
        jj_putc(&b, '\n');
        p = nl + 1;
      }
      return jj_buf_value(x, &b, out);
    }
    if (!strcmp(f, "replace")) {
      if (a.n_pos < 2) return jj_fail(x, "replace() requires at least two arguments");
      const jj_val *count = a.n_pos > 2 ? &a.pos[2] : jj_kwarg(&a, "count");
      return replace(x, v, a.pos[0], a.pos[1], count ? *count : jv_none(), out);
    }
  } else if (v.t == JV_DICT) {
    jj_val m;
    if (jj_builtin_attr(x, v, fn->s, fn->n, &m) != LM_OK) return LM_ENOMEM;
    if (m.t == JV_FUNC) return jj_call_method(x, m.u.fn, &a, out);
  }
  return jj_fail(x, "cannot apply filter \"%s\" to %s", f, jv_type_name(v.t));
}
