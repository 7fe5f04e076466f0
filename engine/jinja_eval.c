/* jinja_eval.c - the tree-walking renderer: scopes, statements, operators,
 * member access, calls and macros, with the reference's semantics.
 *
 * Two deliberate departures, both toward Python Jinja (what Transformers
 * runs): output written before {% break %} / {% continue %} in an iteration
 * is kept, and a for loop's else block runs only when there was nothing to
 * iterate. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/jinja_internal.h"

enum { JJ_BREAK = 1, JJ_CONTINUE = 2 }; /* loop control, passed up like errors */
#define MAX_CALL_DEPTH 64

struct jj_env {
  jj_env *parent;
  jj_dict vars;
};

struct lm_jinja {
  jj_arena arena;
  jj_node **body;
  size_t n_body;
};

int jj_fail(jj_ctx *x, const char *fmt, ...) {
  char msg[LM_ERR_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return lm_errf(x->err, LM_EINVAL, "chat template line %d: %s", x->line, msg);
}

int jj_oom(jj_ctx *x) {
  return lm_errf(x->err, LM_ENOMEM, "out of memory rendering a chat template");
}

static jj_env *env_new(jj_ctx *x, jj_env *parent) {
  jj_env *e = jj_alloc(&x->arena, sizeof(*e));
  if (e) e->parent = parent;
  return e;
}

static int env_set(jj_ctx *x, jj_env *e, const char *name, size_t n, jj_val v) {
  return jj_dict_set(&x->arena, &e->vars, name, n, v) == LM_OK ? LM_OK : jj_oom(x);
}

static jj_val env_get(const jj_env *e, const char *name, size_t n) {
  for (; e; e = e->parent) {
    const jj_val *v = jj_dict_get(&e->vars, name, n);
    if (v) return *v;
  }
  return jv_undef();
}

#define TRY(expr)                                                                                  \
  do {                                                                                             \
    int rc_ = (expr);                                                                              \
    if (rc_ != LM_OK) return rc_;                                                                  \
  } while (0)

static int exec_block(jj_ctx *x, jj_node *const *body, size_t n, jj_env *env);

/* Runs body with its output captured into a string value. */
static int capture(jj_ctx *x, jj_node *const *body, size_t n, jj_env *env, jj_val *out) {
  jj_buf saved = x->out;
  x->out = (jj_buf){0};
  int rc = exec_block(x, body, n, env);
  jj_buf got = x->out;
  x->out = saved;
  if (rc == LM_OK && got.oom) rc = jj_oom(x);
  if (rc == LM_OK) {
    char *s = jj_alloc(&x->arena, got.n + 1);
    if (!s)
      rc = jj_oom(x);
    else if (got.n)
      memcpy(s, got.p, got.n);
    *out = jv_str(s, got.n);
  }
  free(got.p);
  return rc;
}

const jj_val *jj_kwarg(const jj_args *a, const char *name) {
  for (size_t i = 0; i < a->n_kw; i++)
    if (a->kw_nodes[i]->n == strlen(name) && !memcmp(a->kw_nodes[i]->s, name, a->kw_nodes[i]->n))
      return &a->kw[i];
  return NULL;
}

int jj_eval_args(jj_ctx *x, jj_node *const *args, size_t n, jj_env *env, jj_args *out) {
  *out = (jj_args){0};
  if (!n) return LM_OK;
  out->pos = jj_alloc(&x->arena, n * sizeof(jj_val));
  out->kw = jj_alloc(&x->arena, n * sizeof(jj_val));
  out->kw_nodes = jj_alloc(&x->arena, n * sizeof(jj_node *));
  if (!out->pos || !out->kw || !out->kw_nodes) return jj_oom(x);
  for (size_t i = 0; i < n; i++)
    if (args[i]->kind != N_KWARG) TRY(jj_eval(x, args[i], env, &out->pos[out->n_pos++]));
  for (size_t i = 0; i < n; i++) {
    if (args[i]->kind != N_KWARG) continue;
    for (size_t k = 0; k < out->n_kw; k++)
      if (out->kw_nodes[k]->n == args[i]->n && !memcmp(out->kw_nodes[k]->s, args[i]->s, args[i]->n))
        return jj_fail(x, "got multiple values for keyword argument '%.*s'", (int)args[i]->n,
                       args[i]->s);
    out->kw_nodes[out->n_kw] = args[i];
    TRY(jj_eval(x, args[i]->a, env, &out->kw[out->n_kw]));
    out->n_kw++;
  }
  return LM_OK;
}

/* ---- global functions ---- */

static int fn_namespace(jj_ctx *x, const jj_args *a, jj_val *out) {
  jj_val ns = jv_new_dict(&x->arena, JV_NS);
  if (ns.t == JV_UNDEF) return jj_oom(x);
  if (a->n_pos > 1) return jj_fail(x, "namespace expected at most 1 argument, got %zu", a->n_pos);
  if (a->n_pos == 1) {
    jj_val src = a->pos[0];
    if (src.t == JV_DICT) {
      for (size_t i = 0; i < src.u.d->n; i++)
        if (jj_dict_set(&x->arena, ns.u.d, src.u.d->items[i].key, src.u.d->items[i].key_len,
                        src.u.d->items[i].val) != LM_OK)
          return jj_oom(x);
    } else if (src.t == JV_LIST) {
      for (size_t i = 0; i < src.u.l->n; i++) {
        jj_val pair = src.u.l->items[i];
        if (pair.t != JV_LIST || pair.u.l->n != 2 || pair.u.l->items[0].t != JV_STR)
          return jj_fail(x, "namespace expected an object or a list of [key, value] pairs");
        jj_val k = pair.u.l->items[0];
        if (jj_dict_set(&x->arena, ns.u.d, k.u.s.p, k.u.s.n, pair.u.l->items[1]) != LM_OK)
          return jj_oom(x);
      }
    } else {
      return jj_fail(x, "'%s' object is not iterable", jv_type_name(src.t));
    }
  }
  for (size_t i = 0; i < a->n_kw; i++)
    if (jj_dict_set(&x->arena, ns.u.d, a->kw_nodes[i]->s, a->kw_nodes[i]->n, a->kw[i]) != LM_OK)
      return jj_oom(x);
  *out = ns;
  return LM_OK;
}

static int fn_range(jj_ctx *x, const jj_args *a, jj_val *out) {
  int64_t v[3] = {0, 0, 1};
  if (a->n_pos < 1 || a->n_pos > 3 || a->n_kw) return jj_fail(x, "range() takes 1 to 3 integers");
  for (size_t i = 0; i < a->n_pos; i++) {
    if (a->pos[i].t != JV_INT) return jj_fail(x, "range() takes integers");
    v[a->n_pos == 1 ? 1 : i] = a->pos[i].u.i;
  }
  if (v[2] == 0) return jj_fail(x, "range() step must not be zero");
  jj_val l = jv_new_list(&x->arena);
  if (l.t == JV_UNDEF) return jj_oom(x);
  for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
    if (l.u.l->n >= 1000000) return jj_fail(x, "range() of more than 1000000 items");
    if (jj_list_push(&x->arena, l.u.l, jv_int(i)) != LM_OK) return jj_oom(x);
  }
  *out = l;
  return LM_OK;
}

/* The reference's strftime: %Y %m %d %b %B %H %M %% in local time, any other
 * directive left as written. */
static int fn_strftime_now(jj_ctx *x, const jj_args *a, jj_val *out) {
  static const char *months[] = {"January",   "February", "March",    "April",
                                 "May",       "June",     "July",     "August",
                                 "September", "October",  "November", "December"};
  if (a->n_pos != 1 || a->pos[0].t != JV_STR)
    return jj_fail(x, "strftime_now() takes a format string");
  time_t now = time(NULL);
  struct tm tm;
  if (!localtime_r(&now, &tm)) return jj_fail(x, "strftime_now(): no local time");
  jj_buf b = {0};
  const char *f = a->pos[0].u.s.p, *end = f + a->pos[0].u.s.n;
  char tmp[32];
  while (f < end) {
    if (*f != '%' || f + 1 >= end || !strchr("YmdbBHM%", f[1])) {
      jj_putc(&b, *f++);
      continue;
    }
    switch (f[1]) {
    case 'Y': snprintf(tmp, sizeof(tmp), "%d", tm.tm_year + 1900); break;
    case 'm': snprintf(tmp, sizeof(tmp), "%02d", tm.tm_mon + 1); break;
    case 'd': snprintf(tmp, sizeof(tmp), "%02d", tm.tm_mday); break;
    case 'b': snprintf(tmp, sizeof(tmp), "%.3s", months[tm.tm_mon]); break;
    case 'B': snprintf(tmp, sizeof(tmp), "%s", months[tm.tm_mon]); break;
    case 'H': snprintf(tmp, sizeof(tmp), "%02d", tm.tm_hour); break;
    case 'M': snprintf(tmp, sizeof(tmp), "%02d", tm.tm_min); break;
    default: snprintf(tmp, sizeof(tmp), "%%"); break;
    }
    jj_puts(&b, tmp);
    f += 2;
  }
  char *s = b.oom ? NULL : jj_alloc(&x->arena, b.n + 1);
  if (s && b.n) memcpy(s, b.p, b.n);
  free(b.p);
  if (!s) return jj_oom(x);
  *out = jv_str(s, b.n);
  return LM_OK;
}

static int call_macro(jj_ctx *x, const jj_node *m, const jj_args *a, jj_env *caller, jj_val *out) {
  if (x->depth >= MAX_CALL_DEPTH)
    return jj_fail(x, "macro calls nested deeper than %d", MAX_CALL_DEPTH);
  jj_env *scope = env_new(x, caller);
  if (!scope) return jj_oom(x);
  if (a->n_pos > m->n_args)
    return jj_fail(x, "macro '%.*s' takes not more than %zu argument(s)", (int)m->n, m->s,
                   m->n_args);
  size_t used_kw = 0;
  for (size_t i = 0; i < m->n_args; i++) {
    const jj_node *p = m->args[i];
    jj_val v = jv_undef();
    int have = i < a->n_pos;
    if (have) v = a->pos[i];
    for (size_t k = 0; !have && k < a->n_kw; k++)
      if (a->kw_nodes[k]->n == p->n && !memcmp(a->kw_nodes[k]->s, p->s, p->n))
        v = a->kw[k], have = 1, used_kw++;
    TRY(env_set(x, scope, p->s, p->n, v));
  }
  if (used_kw < a->n_kw)
    return jj_fail(x, "macro '%.*s' got an unknown keyword argument", (int)m->n, m->s);
  for (size_t i = 0; i < m->n_args; i++) { /* defaults see the bound parameters */
    const jj_node *p = m->args[i];
    if (p->kind != N_KWARG || env_get(scope, p->s, p->n).t != JV_UNDEF) continue;
    jj_val v;
    TRY(jj_eval(x, p->a, scope, &v));
    TRY(env_set(x, scope, p->s, p->n, v));
  }
  x->depth++;
  int rc = capture(x, m->body, m->n_body, scope, out);
  x->depth--;
  if (rc == JJ_BREAK || rc == JJ_CONTINUE) return jj_fail(x, "break or continue outside a loop");
  return rc;
}

static int eval_call(jj_ctx *x, const jj_node *nd, jj_env *env, jj_val *out) {
  jj_args a;
  jj_val fn;
  TRY(jj_eval_args(x, nd->args, nd->n_args, env, &a));
  TRY(jj_eval(x, nd->a, env, &fn));
  x->line = nd->line;
  if (fn.t != JV_FUNC)
    return jj_fail(x, "cannot call something that is not a function: got %s", jv_type_name(fn.t));
  const jj_func *f = fn.u.fn;
  if (f->kind == FN_MACRO) return call_macro(x, f->node, &a, env, out);
  if (f->kind == FN_METHOD) return jj_call_method(x, f, &a, out);
  if (!strcmp(f->name, "namespace")) return fn_namespace(x, &a, out);
  if (!strcmp(f->name, "range")) return fn_range(x, &a, out);
  if (!strcmp(f->name, "strftime_now")) return fn_strftime_now(x, &a, out);
  /* raise_exception: the template's own message is the error */
  jj_buf b = {0};
  char msg[LM_ERR_LEN];
  if (a.n_pos && jv_prim_str(&b, a.pos[0], msg) == LM_OK && !b.oom)
    jj_fail(x, "raise_exception: %.*s", (int)b.n, b.p);
  else
    jj_fail(x, "raise_exception called");
  free(b.p);
  return LM_EINVAL;
}

/* ---- operators ---- */

static int is_number(jj_val v) {
  return v.t == JV_INT || v.t == JV_FLOAT;
}
static double as_double(jj_val v) {
  return v.t == JV_INT ? (double)v.u.i : v.t == JV_FLOAT ? v.u.f : (double)v.u.b;
}

static const char *op_name(enum jj_op op) {
  static const char *names[] = {"and", "or", "not", "==",     "!=", "<", ">",
                                "<=",  ">=", "in",  "not in", "+",  "-", "~",
                                "*",   "/",  "//",  "%",      "**", "-", "+"};
  return names[op];
}

int jj_buf_value(jj_ctx *x, jj_buf *b, jj_val *out) {
  if (b->oom) {
    free(b->p);
    return jj_oom(x);
  }
  char *s = jj_alloc(&x->arena, b->n + 1);
  if (s && b->n) memcpy(s, b->p, b->n);
  free(b->p);
  if (!s) return jj_oom(x);
  *out = jv_str(s, b->n);
  return LM_OK;
}

static int join2(jj_ctx *x, jj_val l, jj_val r, jj_val *out) {
  jj_buf b = {0};
  char msg[LM_ERR_LEN];
  if (jv_prim_str(&b, l, msg) != LM_OK || jv_prim_str(&b, r, msg) != LM_OK) {
    free(b.p);
    return jj_fail(x, "%s", msg);
  }
  return jj_buf_value(x, &b, out);
}

static int arith(jj_ctx *x, enum jj_op op, jj_val l, jj_val r, jj_val *out) {
  int fl = l.t == JV_FLOAT || r.t == JV_FLOAT;
  double a = as_double(l), b = as_double(r);
  if (!fl) {
    int64_t i = l.u.i, j = r.u.i, res;
    switch (op) {
    case OP_ADD:
      if (!__builtin_add_overflow(i, j, &res)) return *out = jv_int(res), LM_OK;
      return *out = jv_float(a + b), LM_OK;
    case OP_SUB:
      if (!__builtin_sub_overflow(i, j, &res)) return *out = jv_int(res), LM_OK;
      return *out = jv_float(a - b), LM_OK;
    case OP_MUL:
      if (!__builtin_mul_overflow(i, j, &res)) return *out = jv_int(res), LM_OK;
      return *out = jv_float(a * b), LM_OK;
    case OP_FLOORDIV:
    case OP_MOD:
      if (j == 0) return jj_fail(x, "integer division or modulo by zero");
      if (j == -1) return *out = jv_int(op == OP_MOD ? 0 : (i == INT64_MIN ? i : -i)), LM_OK;
      if (op == OP_MOD) return *out = jv_int(i % j), LM_OK;
      return *out = jv_int((int64_t)floor(a / b)), LM_OK;
    default: break;
    }
  }
  switch (op) {
  case OP_ADD: *out = jv_float(a + b); break;
  case OP_SUB: *out = jv_float(a - b); break;
  case OP_MUL: *out = jv_float(a * b); break;
  case OP_DIV: *out = jv_float(a / b); break;
  case OP_FLOORDIV: *out = jv_float(floor(a / b)); break;
  case OP_MOD: *out = jv_float(fmod(a, b)); break;
  case OP_LT: *out = jv_bool(a < b); break;
  case OP_GT: *out = jv_bool(a > b); break;
  case OP_LE: *out = jv_bool(a <= b); break;
  case OP_GE: *out = jv_bool(a >= b); break;
  default: return jj_fail(x, "unknown operator %s between numbers", op_name(op));
  }
  return LM_OK;
}

static int eval_binary(jj_ctx *x, const jj_node *nd, jj_env *env, jj_val *out) {
  jj_val l, r;
  TRY(jj_eval(x, nd->a, env, &l));
  if (nd->op == OP_AND) return jv_truthy(l) ? jj_eval(x, nd->b, env, out) : (*out = l, LM_OK);
  if (nd->op == OP_OR) return jv_truthy(l) ? (*out = l, LM_OK) : jj_eval(x, nd->b, env, out);
  TRY(jj_eval(x, nd->b, env, &r));
  x->line = nd->line;
  enum jj_op op = nd->op;
  if (op == OP_EQ || op == OP_NE) return *out = jv_bool(jv_loose_eq(l, r) == (op == OP_EQ)), LM_OK;
  int in = op == OP_IN || op == OP_NOT_IN;
  if (l.t == JV_UNDEF || r.t == JV_UNDEF) {
    if (r.t == JV_UNDEF && in) return *out = jv_bool(op == OP_NOT_IN), LM_OK;
    return jj_fail(x, "cannot perform operation %s on undefined values", op_name(op));
  }
  if (l.t == JV_NONE || r.t == JV_NONE)
    return jj_fail(x, "cannot perform operation %s on null values", op_name(op));
  if (op == OP_CONCAT) return join2(x, l, r, out);
  if (op == OP_POW && l.t != JV_STR && l.t <= JV_FLOAT && r.t <= JV_FLOAT && l.t >= JV_BOOL &&
      r.t >= JV_BOOL) {
    double a = as_double(l), b = as_double(r), res = pow(a, b);
    if (a == 0 && b < 0) return jj_fail(x, "0.0 cannot be raised to a negative power");
    if (!isfinite(res)) return jj_fail(x, "exponentiation result is not a finite real number");
    int fl = l.t == JV_FLOAT || r.t == JV_FLOAT || b < 0;
    if (!fl && fabs(res) < 9.2e18) return *out = jv_int((int64_t)res), LM_OK;
    return *out = jv_float(res), LM_OK;
  }
  if (is_number(l) && is_number(r)) return arith(x, op, l, r, out);
  if (l.t == JV_LIST && r.t == JV_LIST && op == OP_ADD) {
    jj_val c = jv_new_list(&x->arena);
    if (c.t == JV_UNDEF) return jj_oom(x);
    for (size_t i = 0; i < l.u.l->n; i++)
      if (jj_list_push(&x->arena, c.u.l, l.u.l->items[i]) != LM_OK) return jj_oom(x);
    for (size_t i = 0; i < r.u.l->n; i++)
      if (jj_list_push(&x->arena, c.u.l, r.u.l->items[i]) != LM_OK) return jj_oom(x);
    return *out = c, LM_OK;
  }
  if (r.t == JV_LIST && in) {
    int found = 0;
    for (size_t i = 0; i < r.u.l->n && !found; i++)
      found = jv_strict_eq(r.u.l->items[i], l);
    return *out = jv_bool(found == (op == OP_IN)), LM_OK;
  }
  if ((l.t == JV_STR || r.t == JV_STR) && op == OP_ADD) return join2(x, l, r, out);
  if (l.t == JV_STR && r.t == JV_STR && in) {
    int found = memmem(r.u.s.p, r.u.s.n, l.u.s.p, l.u.s.n) != NULL || l.u.s.n == 0;
    return *out = jv_bool(found == (op == OP_IN)), LM_OK;
  }
  if (l.t == JV_STR && r.t == JV_DICT && in)
    return *out = jv_bool((jj_dict_get(r.u.d, l.u.s.p, l.u.s.n) != NULL) == (op == OP_IN)), LM_OK;
  return jj_fail(x, "unknown operator \"%s\" between %s and %s", op_name(op), jv_type_name(l.t),
                 jv_type_name(r.t));
}

static int eval_unary(jj_ctx *x, const jj_node *nd, jj_env *env, jj_val *out) {
  jj_val v;
  TRY(jj_eval(x, nd->a, env, &v));
  x->line = nd->line;
  if (nd->op == OP_NOT) return *out = jv_bool(!jv_truthy(v)), LM_OK;
  int neg = nd->op == OP_NEG;
  if (v.t == JV_FLOAT) return *out = jv_float(neg ? -v.u.f : v.u.f), LM_OK;
  if (v.t == JV_INT || v.t == JV_BOOL) {
    int64_t i = v.t == JV_INT ? v.u.i : v.u.b;
    if (neg && i == INT64_MIN) return *out = jv_float(-(double)i), LM_OK;
    return *out = jv_int(neg ? -i : i), LM_OK;
  }
  return jj_fail(x, "unknown operator \"%s\" for %s", op_name(nd->op), jv_type_name(v.t));
}

/* ---- member access and slicing ---- */

/* Positions of code points: the reference slices strings by code point. */
static int eval_slice(jj_ctx *x, jj_val obj, const jj_node *s, jj_env *env, jj_val *out) {
  if (obj.t != JV_LIST && obj.t != JV_STR)
    return jj_fail(x, "slice object must be an array or string");
  jj_val part[3];
  const jj_node *nodes[3] = {s->a, s->b, s->c};
  for (int i = 0; i < 3; i++) {
    part[i] = jv_undef();
    if (nodes[i]) TRY(jj_eval(x, nodes[i], env, &part[i]));
    if (part[i].t != JV_INT && part[i].t != JV_UNDEF)
      return jj_fail(x, "slice indices must be integers or undefined");
  }
  const char **cps = NULL;
  int64_t len;
  if (obj.t == JV_LIST) {
    len = (int64_t)obj.u.l->n;
  } else {
    const char *p = obj.u.s.p, *end = p + obj.u.s.n;
    if (!(cps = jj_alloc(&x->arena, (obj.u.s.n + 1) * sizeof(*cps)))) return jj_oom(x);
    len = 0;
    while (p < end) {
      uint32_t cp;
      cps[len++] = p;
      p += jj_utf8_next(p, end, &cp);
    }
    cps[len] = end;
  }
  int64_t step = part[2].t == JV_INT ? part[2].u.i : 1, start, stop;
  int have_start = part[0].t == JV_INT, have_stop = part[1].t == JV_INT;
  if (step >= 0) {
    start = have_start ? part[0].u.i : 0;
    stop = have_stop ? part[1].u.i : len;
    start = start < 0 ? (len + start > 0 ? len + start : 0) : (start < len ? start : len);
    stop = stop < 0 ? (len + stop > 0 ? len + stop : 0) : (stop < len ? stop : len);
  } else {
    start = have_start ? part[0].u.i : len - 1;
    stop = have_stop ? part[1].u.i : -1;
    start = start < 0 ? (len + start > -1 ? len + start : -1) : (start < len - 1 ? start : len - 1);
    stop = stop < -1 ? (len + stop > -1 ? len + stop : -1) : (stop < len - 1 ? stop : len - 1);
  }
  int dir = step > 0 ? 1 : step < 0 ? -1 : 0;
  if (obj.t == JV_LIST) {
    jj_val l = jv_new_list(&x->arena);
    if (l.t == JV_UNDEF) return jj_oom(x);
    for (int64_t i = start; dir * i < dir * stop; i += step)
      if (jj_list_push(&x->arena, l.u.l, obj.u.l->items[i]) != LM_OK) return jj_oom(x);
    return *out = l, LM_OK;
  }
  char *buf = jj_alloc(&x->arena, obj.u.s.n + 1);
  size_t n = 0;
  if (!buf) return jj_oom(x);
  for (int64_t i = start; dir * i < dir * stop; i += step) {
    memcpy(buf + n, cps[i], (size_t)(cps[i + 1] - cps[i]));
    n += (size_t)(cps[i + 1] - cps[i]);
  }
  *out = jv_str(buf, n);
  return LM_OK;
}

static int index_value(jj_ctx *x, jj_val obj, int64_t i, jj_val *out) {
  *out = jv_undef();
  if (obj.t == JV_LIST) {
    int64_t n = (int64_t)obj.u.l->n;
    if (i < 0) i += n;
    if (i >= 0 && i < n) *out = obj.u.l->items[i];
    return LM_OK;
  }
  const char *p = obj.u.s.p, *end = p + obj.u.s.n;
  int64_t n = 0;
  for (const char *q = p; q < end; n++) {
    uint32_t cp;
    q += jj_utf8_next(q, end, &cp);
  }
  if (i < 0) i += n;
  for (int64_t k = 0; p < end && k <= i; k++) {
    uint32_t cp;
    size_t len = jj_utf8_next(p, end, &cp);
    if (k == i) return *out = jv_str(p, len), LM_OK;
    p += len;
  }
  (void)x;
  return LM_OK;
}

static int eval_member(jj_ctx *x, const jj_node *nd, jj_env *env, jj_val *out) {
  jj_val obj, prop;
  TRY(jj_eval(x, nd->a, env, &obj));
  x->line = nd->line;
  if (nd->flag && nd->b->kind == N_SLICE) return eval_slice(x, obj, nd->b, env, out);
  if (nd->flag)
    TRY(jj_eval(x, nd->b, env, &prop));
  else if (nd->b->kind == N_INT)
    prop = jv_int(nd->b->i);
  else
    prop = jv_str(nd->b->s, nd->b->n);
  x->line = nd->line;
  if (obj.t == JV_DICT || obj.t == JV_NS) {
    if (prop.t != JV_STR)
      return jj_fail(x, "cannot access a property with a %s", jv_type_name(prop.t));
    const jj_val *v = jj_dict_get(obj.u.d, prop.u.s.p, prop.u.s.n);
    if (v) return *out = *v, LM_OK;
    if (obj.t == JV_NS) return *out = jv_undef(), LM_OK;
    return jj_builtin_attr(x, obj, prop.u.s.p, prop.u.s.n, out);
  }
  if ((obj.t == JV_LIST || obj.t == JV_STR) && prop.t == JV_INT)
    return index_value(x, obj, prop.u.i, out);
  if (prop.t != JV_STR)
    return jj_fail(x, "cannot access a property of %s with a %s", jv_type_name(obj.t),
                   jv_type_name(prop.t));
  return jj_builtin_attr(x, obj, prop.u.s.p, prop.u.s.n, out);
}

/* ---- expressions ---- */

int jj_eval(jj_ctx *x, const jj_node *nd, jj_env *env, jj_val *out) {
  x->line = nd->line;
  switch (nd->kind) {
  case N_STR: *out = jv_str(nd->s, nd->n); return LM_OK;
  case N_INT: *out = jv_int(nd->i); return LM_OK;
  case N_FLOAT: *out = jv_float(nd->f); return LM_OK;
  case N_ID: *out = env_get(env, nd->s, nd->n); return LM_OK;
  case N_LIST:
  case N_TUPLE: {
    jj_val l = jv_new_list(&x->arena);
    if (l.t == JV_UNDEF) return jj_oom(x);
    for (size_t i = 0; i < nd->n_args; i++) {
      jj_val v;
      TRY(jj_eval(x, nd->args[i], env, &v));
      if (jj_list_push(&x->arena, l.u.l, v) != LM_OK) return jj_oom(x);
    }
    return *out = l, LM_OK;
  }
  case N_DICT: {
    jj_val d = jv_new_dict(&x->arena, JV_DICT);
    if (d.t == JV_UNDEF) return jj_oom(x);
    for (size_t i = 0; i + 1 < nd->n_args; i += 2) {
      jj_val k, v;
      TRY(jj_eval(x, nd->args[i], env, &k));
      if (k.t != JV_STR)
        return jj_fail(x, "object keys must be strings: got %s", jv_type_name(k.t));
      TRY(jj_eval(x, nd->args[i + 1], env, &v));
      if (jj_dict_set(&x->arena, d.u.d, k.u.s.p, k.u.s.n, v) != LM_OK) return jj_oom(x);
    }
    return *out = d, LM_OK;
  }
  case N_MEMBER: return eval_member(x, nd, env, out);
  case N_CALL: return eval_call(x, nd, env, out);
  case N_BINARY: return eval_binary(x, nd, env, out);
  case N_UNARY: return eval_unary(x, nd, env, out);
  case N_FILTER: {
    jj_val v;
    TRY(jj_eval(x, nd->a, env, &v));
    x->line = nd->line;
    return jj_apply_filter(x, nd, v, env, out);
  }
  case N_TEST: {
    jj_val v;
    int r;
    TRY(jj_eval(x, nd->a, env, &v));
    x->line = nd->line;
    TRY(jj_apply_test(x, nd->s, nd->n, v, &r));
    return *out = jv_bool(r != nd->flag), LM_OK;
  }
  case N_SELECT: {
    jj_val t;
    TRY(jj_eval(x, nd->b, env, &t));
    return jv_truthy(t) ? jj_eval(x, nd->a, env, out) : (*out = jv_undef(), LM_OK);
  }
  case N_TERNARY: {
    jj_val t;
    TRY(jj_eval(x, nd->a, env, &t));
    return jj_eval(x, jv_truthy(t) ? nd->b : nd->c, env, out);
  }
  default: return jj_fail(x, "this construct is not an expression");
  }
}

/* ---- statements ---- */

static int assign(jj_ctx *x, const jj_node *target, jj_val v, jj_env *env) {
  if (target->kind == N_ID) return env_set(x, env, target->s, target->n, v);
  if (target->kind == N_TUPLE) {
    if (v.t != JV_LIST) return jj_fail(x, "cannot unpack non-iterable type %s", jv_type_name(v.t));
    if (v.u.l->n != target->n_args)
      return jj_fail(x, "too %s items to unpack", target->n_args > v.u.l->n ? "few" : "many");
    for (size_t i = 0; i < target->n_args; i++) {
      if (target->args[i]->kind != N_ID) return jj_fail(x, "cannot unpack to a non-name");
      TRY(env_set(x, env, target->args[i]->s, target->args[i]->n, v.u.l->items[i]));
    }
    return LM_OK;
  }
  if (target->kind == N_MEMBER && !target->flag && target->b->kind == N_ID) {
    jj_val obj;
    TRY(jj_eval(x, target->a, env, &obj));
    if (obj.t != JV_NS) return jj_fail(x, "cannot assign an attribute of a non-namespace object");
    return jj_dict_set(&x->arena, obj.u.d, target->b->s, target->b->n, v) == LM_OK ? LM_OK
                                                                                   : jj_oom(x);
  }
  return jj_fail(x, "invalid target of an assignment");
}

static int loop_dict(jj_ctx *x, const jj_list *items, size_t i, jj_val *out) {
  size_t n = items->n;
  jj_val d = jv_new_dict(&x->arena, JV_DICT);
  if (d.t == JV_UNDEF) return jj_oom(x);
  struct {
    const char *k;
    jj_val v;
  } f[] = {
      {"index", jv_int((int64_t)i + 1)},
      {"index0", jv_int((int64_t)i)},
      {"revindex", jv_int((int64_t)(n - i))},
      {"revindex0", jv_int((int64_t)(n - i - 1))},
      {"first", jv_bool(i == 0)},
      {"last", jv_bool(i == n - 1)},
      {"length", jv_int((int64_t)n)},
      {"previtem", i > 0 ? items->items[i - 1] : jv_undef()},
      {"nextitem", i + 1 < n ? items->items[i + 1] : jv_undef()},
  };
  for (size_t k = 0; k < sizeof(f) / sizeof(f[0]); k++)
    if (jj_dict_set(&x->arena, d.u.d, f[k].k, strlen(f[k].k), f[k].v) != LM_OK) return jj_oom(x);
  *out = d;
  return LM_OK;
}

static int exec_for(jj_ctx *x, const jj_node *nd, jj_env *env) {
  jj_env *scope = env_new(x, env);
  jj_val it;
  if (!scope) return jj_oom(x);
  TRY(jj_eval(x, nd->b, scope, &it));
  x->line = nd->line;
  if (it.t == JV_DICT) { /* iterating a mapping gives its keys */
    jj_val keys = jv_new_list(&x->arena);
    if (keys.t == JV_UNDEF) return jj_oom(x);
    for (size_t i = 0; i < it.u.d->n; i++)
      if (jj_list_push(&x->arena, keys.u.l,
                       jv_str(it.u.d->items[i].key, it.u.d->items[i].key_len)) != LM_OK)
        return jj_oom(x);
    it = keys;
  }
  if (it.t != JV_LIST)
    return jj_fail(x, "expected an iterable or object in a for loop: got %s", jv_type_name(it.t));
  jj_list *items = it.u.l;
  if (nd->c) { /* for x in xs if cond: the condition filters before loop.* counts */
    jj_val kept = jv_new_list(&x->arena);
    if (kept.t == JV_UNDEF) return jj_oom(x);
    for (size_t i = 0; i < it.u.l->n; i++) {
      jj_env *ls = env_new(x, scope);
      jj_val t;
      if (!ls) return jj_oom(x);
      TRY(assign(x, nd->a, it.u.l->items[i], ls));
      TRY(jj_eval(x, nd->c, ls, &t));
      if (jv_truthy(t) && jj_list_push(&x->arena, kept.u.l, it.u.l->items[i]) != LM_OK)
        return jj_oom(x);
    }
    items = kept.u.l;
  }
  for (size_t i = 0; i < items->n; i++) {
    jj_val loop;
    TRY(loop_dict(x, items, i, &loop));
    TRY(env_set(x, scope, "loop", 4, loop));
    x->line = nd->line;
    TRY(assign(x, nd->a, items->items[i], scope));
    int rc = exec_block(x, nd->body, nd->n_body, scope);
    if (rc == JJ_BREAK) break;
    if (rc != LM_OK && rc != JJ_CONTINUE) return rc;
  }
  if (items->n == 0) return exec_block(x, nd->alt, nd->n_alt, scope);
  return LM_OK;
}

static int exec_stmt(jj_ctx *x, const jj_node *nd, jj_env *env) {
  x->line = nd->line;
  switch (nd->kind) {
  case N_COMMENT: return LM_OK;
  case N_BREAK: return JJ_BREAK;
  case N_CONTINUE: return JJ_CONTINUE;
  case N_SET: {
    jj_val v;
    if (nd->b)
      TRY(jj_eval(x, nd->b, env, &v));
    else
      TRY(capture(x, nd->body, nd->n_body, env, &v));
    x->line = nd->line;
    return assign(x, nd->a, v, env);
  }
  case N_IF: {
    jj_val t;
    TRY(jj_eval(x, nd->a, env, &t));
    return jv_truthy(t) ? exec_block(x, nd->body, nd->n_body, env)
                        : exec_block(x, nd->alt, nd->n_alt, env);
  }
  case N_FOR: return exec_for(x, nd, env);
  case N_MACRO: {
    jj_func *f = jj_alloc(&x->arena, sizeof(*f));
    if (!f) return jj_oom(x);
    f->kind = FN_MACRO;
    f->node = nd;
    jj_val v = {.t = JV_FUNC, .u.fn = f};
    return env_set(x, env, nd->s, nd->n, v);
  }
  default: {
    jj_val v;
    char msg[LM_ERR_LEN];
    TRY(jj_eval(x, nd, env, &v));
    if (jv_print(&x->out, v, msg) != LM_OK) return jj_fail(x, "%s", msg);
    return x->out.oom ? jj_oom(x) : LM_OK;
  }
  }
}

static int exec_block(jj_ctx *x, jj_node *const *body, size_t n, jj_env *env) {
  for (size_t i = 0; i < n; i++)
    TRY(exec_stmt(x, body[i], env));
  return LM_OK;
}

/* ---- public ---- */

int lm_jinja_compile(const char *src, size_t len, lm_jinja **out, char *err) {
  lm_jinja *t = calloc(1, sizeof(*t));
  jj_token *toks;
  size_t n_toks;
  int rc;
  *out = NULL;
  if (!t) return lm_errf(err, LM_ENOMEM, "out of memory compiling a chat template");
  if ((rc = jj_lex(&t->arena, src, len, &toks, &n_toks, err)) != LM_OK) goto err;
  if ((rc = jj_parse(&t->arena, toks, n_toks, &t->body, &t->n_body, err)) != LM_OK) goto err;
  *out = t;
  return LM_OK;
err:
  lm_jinja_free(t);
  return rc;
}

void lm_jinja_free(lm_jinja *t) {
  if (!t) return;
  jj_arena_free(&t->arena);
  free(t);
}

static int set_global(jj_ctx *x, jj_env *g, const char *name, jj_val v) {
  return env_set(x, g, name, strlen(name), v);
}

int lm_jinja_render(const lm_jinja *t, const lm_json *vars, char **text, size_t *len, char *err) {
  static const char *const builtins[] = {"namespace", "raise_exception", "range", "strftime_now"};
  jj_ctx x = {.err = err, .line = 1};
  jj_env *g = env_new(&x, NULL);
  int rc = LM_OK;
  *text = NULL;
  *len = 0;
  if (!g) {
    rc = jj_oom(&x);
    goto err;
  }
  if ((rc = set_global(&x, g, "true", jv_bool(1))) ||
      (rc = set_global(&x, g, "false", jv_bool(0))) ||
      (rc = set_global(&x, g, "none", jv_none())) || (rc = set_global(&x, g, "True", jv_bool(1))) ||
      (rc = set_global(&x, g, "False", jv_bool(0))) || (rc = set_global(&x, g, "None", jv_none())))
    goto err;
  for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
    jj_func *f = jj_alloc(&x.arena, sizeof(*f));
    if (!f) {
      rc = jj_oom(&x);
      goto err;
    }
    f->kind = FN_BUILTIN;
    f->name = builtins[i];
    if ((rc = set_global(&x, g, builtins[i], (jj_val){.t = JV_FUNC, .u.fn = f})) != LM_OK) goto err;
  }
  for (size_t i = 0; vars && vars->type == LM_JSON_OBJECT && i < vars->n_kids; i++) {
    jj_val v;
    if (jv_from_json(&x.arena, &vars->kids[i], &v) != LM_OK) {
      rc = jj_oom(&x);
      goto err;
    }
    if ((rc = env_set(&x, g, vars->kids[i].key, vars->kids[i].key_len, v)) != LM_OK) goto err;
  }
  rc = exec_block(&x, t->body, t->n_body, g);
  if (rc == JJ_BREAK || rc == JJ_CONTINUE) rc = jj_fail(&x, "break or continue outside a loop");
  if (rc == LM_OK && x.out.oom) rc = jj_oom(&x);
  if (rc != LM_OK) goto err;
  if (!x.out.p && !(x.out.p = calloc(1, 1))) {
    rc = jj_oom(&x);
    goto err;
  }
  *text = x.out.p;
  *len = x.out.n;
  jj_arena_free(&x.arena);
  return LM_OK;
err:
  free(x.out.p);
  jj_arena_free(&x.arena);
  return rc;
}
