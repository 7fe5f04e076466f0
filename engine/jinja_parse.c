/* jinja_parse.c - tokens to a syntax tree, with the reference's grammar and
 * precedence (lowest first): conditional, or, and, not, comparison (and in),
 * + - ~, * / // %, **, is, |filter, unary sign, call/member/primary.
 * Constructs outside lmserve's subset (call blocks, filter blocks, argument
 * unpacking, filters and tests the reference does not have) are refused
 * here, naming the line and the construct. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/jinja_internal.h"

typedef struct {
  jj_arena *arena;
  const jj_token *t;
  size_t n, pos;
  char *err;
  int in_macro;
} parser;

static int fail(parser *P, const char *fmt, ...) LM_PRINTF(2, 3);
static int fail(parser *P, const char *fmt, ...) {
  char msg[LM_ERR_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t at = P->pos < P->n ? P->pos : P->n - 1;
  return lm_errf(P->err, LM_EINVAL, "chat template line %d: %s", P->t[at].line, msg);
}

#define UNSUPPORTED(P, what)                                                                       \
  lm_errf((P)->err, LM_EUNSUP, "chat template line %d: unsupported construct: %s",                 \
          (P)->t[(P)->pos < (P)->n ? (P)->pos : (P)->n - 1].line, what)

static const jj_token *peek(const parser *P, size_t k) {
  size_t i = P->pos + k;
  return &P->t[i < P->n ? i : P->n - 1];
}
static int is(const parser *P, enum jj_tok type) {
  return peek(P, 0)->type == type;
}
static int tok_eq(const jj_token *t, const char *s) {
  return t->n == strlen(s) && !memcmp(t->s, s, t->n);
}
static int is_id(const parser *P, size_t k, const char *name) {
  const jj_token *t = peek(P, k);
  return t->type == TK_ID && tok_eq(t, name);
}
static int is_stmt(const parser *P, const char *name) {
  return is(P, TK_OPEN_STMT) && is_id(P, 1, name);
}

static const char *tok_name(enum jj_tok t) {
  static const char *names[] = {"text",       "number",
                                "string",     "name",
                                "'='",        "'('",
                                "')'",        "'{%'",
                                "'%}'",       "'{{'",
                                "'}}'",       "'['",
                                "']'",        "'{'",
                                "'}'",        "','",
                                "'.'",        "':'",
                                "'|'",        "operator",
                                "operator",   "'**'",
                                "comparison", "sign",
                                "comment",    "end of template"};
  return names[t];
}

static int expect(parser *P, enum jj_tok type, const char *context) {
  if (!is(P, type))
    return fail(P, "expected %s %s, found %s", tok_name(type), context, tok_name(peek(P, 0)->type));
  P->pos++;
  return LM_OK;
}

static int expect_id(parser *P, const char *name) {
  if (!is_id(P, 0, name)) return fail(P, "expected '%s'", name);
  P->pos++;
  return LM_OK;
}

static jj_node *node(parser *P, enum jj_kind kind, int line) {
  jj_node *nd = jj_alloc(P->arena, sizeof(*nd));
  if (nd) {
    nd->kind = kind;
    nd->line = line;
  }
  return nd;
}

/* A growable node list in the arena. */
typedef struct {
  jj_node **v;
  size_t n, cap;
} nlist;

static int nl_push(parser *P, nlist *l, jj_node *nd) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    jj_node **v = jj_alloc(P->arena, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    if (l->n) memcpy(v, l->v, l->n * sizeof(*v));
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = nd;
  return LM_OK;
}

#define OOM(P) lm_errf((P)->err, LM_ENOMEM, "out of memory compiling a chat template")
#define TRY(expr)                                                                                  \
  do {                                                                                             \
    int rc_ = (expr);                                                                              \
    if (rc_ != LM_OK) return rc_;                                                                  \
  } while (0)

static int parse_any(parser *P, jj_node **out);
static int parse_expr(parser *P, jj_node **out);
static int parse_primary(parser *P, jj_node **out);
static int parse_or(parser *P, jj_node **out);

/* Statements until one of the names (as {% name ... %}) comes. */
static int parse_block_until(parser *P, const char *const *names, jj_node ***body, size_t *n) {
  nlist l = {0};
  size_t n_names = 0;
  while (names[n_names])
    n_names++;
  for (;;) {
    if (is(P, TK_EOF))
      return fail(P, "expected {%% %s %%} before the end of the template", names[n_names - 1]);
    int stop = 0;
    for (const char *const *s = names; *s; s++)
      stop |= is_stmt(P, *s);
    if (stop) break;
    jj_node *nd;
    TRY(parse_any(P, &nd));
    if (nl_push(P, &l, nd) != LM_OK) return OOM(P);
  }
  *body = l.v;
  *n = l.n;
  return LM_OK;
}

static int parse_sequence(parser *P, int primary, jj_node **out) {
  jj_node *first;
  int line = peek(P, 0)->line;
  TRY(primary ? parse_primary(P, &first) : parse_expr(P, &first));
  if (!is(P, TK_COMMA)) {
    *out = first;
    return LM_OK;
  }
  nlist l = {0};
  if (nl_push(P, &l, first) != LM_OK) return OOM(P);
  while (is(P, TK_COMMA)) {
    P->pos++;
    jj_node *nd;
    TRY(primary ? parse_primary(P, &nd) : parse_expr(P, &nd));
    if (nl_push(P, &l, nd) != LM_OK) return OOM(P);
  }
  jj_node *t = node(P, N_TUPLE, line);
  if (!t) return OOM(P);
  t->args = l.v;
  t->n_args = l.n;
  *out = t;
  return LM_OK;
}

/* Argument lists: mode 0 for a call, 1 for macro parameters. */
static int parse_args(parser *P, int params, jj_node ***args, size_t *n) {
  nlist l = {0};
  int saw_kw = 0;
  TRY(expect(P, TK_LPAREN, "to open the arguments"));
  while (!is(P, TK_RPAREN)) {
    if (is(P, TK_EOF)) return fail(P, "unterminated argument list");
    if (is(P, TK_POW) || (is(P, TK_MUL) && tok_eq(peek(P, 0), "*")))
      return UNSUPPORTED(P, "argument unpacking (* or **)");
    jj_node *arg;
    int line = peek(P, 0)->line;
    TRY(parse_expr(P, &arg));
    if (is(P, TK_EQUALS)) {
      P->pos++;
      if (arg->kind != N_ID) return fail(P, "expected a name before '='");
      jj_node *kw = node(P, N_KWARG, line);
      if (!kw) return OOM(P);
      kw->s = arg->s;
      kw->n = arg->n;
      TRY(parse_expr(P, &kw->a));
      arg = kw;
      saw_kw = 1;
    } else if (saw_kw) {
      return fail(P, params ? "a parameter without default follows one with a default"
                            : "a positional argument follows a keyword argument");
    }
    if (params) {
      if (arg->kind != N_ID && arg->kind != N_KWARG) return fail(P, "expected a parameter name");
      for (size_t i = 0; i < l.n; i++)
        if (l.v[i]->n == arg->n && !memcmp(l.v[i]->s, arg->s, arg->n))
          return fail(P, "duplicate parameter '%.*s'", (int)arg->n, arg->s);
    }
    if (nl_push(P, &l, arg) != LM_OK) return OOM(P);
    if (is(P, TK_COMMA)) P->pos++;
  }
  P->pos++;
  *args = l.v;
  *n = l.n;
  return LM_OK;
}

static int parse_member(parser *P, jj_node **obj);

static int parse_call(parser *P, jj_node *callee, jj_node **out) {
  jj_node *call = node(P, N_CALL, callee->line);
  if (!call) return OOM(P);
  call->a = callee;
  TRY(parse_args(P, 0, &call->args, &call->n_args));
  TRY(parse_member(P, &call));
  if (is(P, TK_LPAREN)) return parse_call(P, call, out);
  *out = call;
  return LM_OK;
}

static int parse_subscript(parser *P, jj_node **out) {
  jj_node *parts[3] = {0};
  size_t n = 0;
  int slice = 0, line = peek(P, 0)->line;
  while (!is(P, TK_RBRACKET)) {
    if (is(P, TK_EOF)) return fail(P, "unterminated '['");
    if (n == 3) return fail(P, "a slice takes at most 3 parts");
    if (is(P, TK_COLON)) {
      parts[n++] = NULL;
      P->pos++;
      slice = 1;
    } else {
      TRY(parse_expr(P, &parts[n++]));
      if (is(P, TK_COLON)) P->pos++, slice = 1;
    }
  }
  if (n == 0) return fail(P, "expected an index or slice inside '[]'");
  if (!slice) {
    *out = parts[0];
    return LM_OK;
  }
  jj_node *s = node(P, N_SLICE, line);
  if (!s) return OOM(P);
  s->a = parts[0];
  s->b = parts[1];
  s->c = parts[2];
  *out = s;
  return LM_OK;
}

static int parse_member(parser *P, jj_node **obj) {
  while (is(P, TK_DOT) || is(P, TK_LBRACKET)) {
    int computed = is(P, TK_LBRACKET), line = peek(P, 0)->line;
    P->pos++;
    jj_node *m = node(P, N_MEMBER, line), *prop;
    if (!m) return OOM(P);
    if (computed) {
      TRY(parse_subscript(P, &prop));
      TRY(expect(P, TK_RBRACKET, "to close the subscript"));
    } else {
      TRY(parse_primary(P, &prop));
      if (prop->kind != N_ID && prop->kind != N_INT)
        return fail(P, "expected a name or integer after '.'");
    }
    m->a = *obj;
    m->b = prop;
    m->flag = computed;
    *obj = m;
  }
  return LM_OK;
}

static int parse_call_member(parser *P, jj_node **out) {
  jj_node *nd;
  TRY(parse_primary(P, &nd));
  TRY(parse_member(P, &nd));
  if (is(P, TK_LPAREN)) return parse_call(P, nd, out);
  *out = nd;
  return LM_OK;
}

static int parse_unary_sign(parser *P, jj_node **out) {
  const jj_token *t = peek(P, 0);
  if ((t->type == TK_UNARY || t->type == TK_ADD) && (tok_eq(t, "-") || tok_eq(t, "+"))) {
    P->pos++;
    jj_node *u = node(P, N_UNARY, t->line);
    if (!u) return OOM(P);
    u->op = tok_eq(t, "-") ? OP_NEG : OP_POS;
    TRY(parse_unary_sign(P, &u->a));
    *out = u;
    return LM_OK;
  }
  return parse_call_member(P, out);
}

static int parse_filter(parser *P, jj_node **out) {
  TRY(parse_unary_sign(P, out));
  while (is(P, TK_PIPE)) {
    P->pos++;
    const jj_token *name = peek(P, 0);
    if (name->type != TK_ID) return fail(P, "expected a filter name after '|'");
    if (!jj_known_filter(name->s, name->n)) {
      char what[128];
      snprintf(what, sizeof(what), "filter '%.*s'", (int)(name->n > 64 ? 64 : name->n), name->s);
      return UNSUPPORTED(P, what);
    }
    P->pos++;
    jj_node *f = node(P, N_FILTER, name->line);
    if (!f) return OOM(P);
    f->a = *out;
    f->s = name->s;
    f->n = name->n;
    if (is(P, TK_LPAREN)) {
      f->flag = 1;
      TRY(parse_args(P, 0, &f->args, &f->n_args));
      int sel = tok_eq(name, "selectattr") || tok_eq(name, "rejectattr");
      for (size_t i = 0; sel && i < f->n_args; i++)
        if (f->args[i]->kind != N_STR)
          return fail(P, "the arguments of %.*s must be string literals", (int)name->n, name->s);
      if (is(P, TK_DOT) || is(P, TK_LBRACKET) || is(P, TK_LPAREN))
        return UNSUPPORTED(P, "member access or call on a filter result without parentheses");
    }
    *out = f;
  }
  return LM_OK;
}

static int parse_test(parser *P, jj_node **out) {
  TRY(parse_filter(P, out));
  while (is_id(P, 0, "is")) {
    P->pos++;
    int negate = is_id(P, 0, "not");
    if (negate) P->pos++;
    const jj_token *name = peek(P, 0);
    if (name->type != TK_ID) return fail(P, "expected a test name after 'is'");
    if (!jj_known_test(name->s, name->n)) {
      char what[128];
      snprintf(what, sizeof(what), "test '%.*s'", (int)(name->n > 64 ? 64 : name->n), name->s);
      return UNSUPPORTED(P, what);
    }
    P->pos++;
    if (is(P, TK_LPAREN)) return UNSUPPORTED(P, "a test with arguments");
    jj_node *t = node(P, N_TEST, name->line);
    if (!t) return OOM(P);
    t->a = *out;
    t->s = name->s;
    t->n = name->n;
    t->flag = negate;
    *out = t;
  }
  return LM_OK;
}

static int binop(parser *P, enum jj_op op, jj_node *l, jj_node *r, int line, jj_node **out) {
  jj_node *b = node(P, N_BINARY, line);
  if (!b) return OOM(P);
  b->op = op;
  b->a = l;
  b->b = r;
  *out = b;
  return LM_OK;
}

static int parse_pow(parser *P, jj_node **out) {
  TRY(parse_test(P, out));
  while (is(P, TK_POW)) {
    int line = peek(P, 0)->line;
    P->pos++;
    jj_node *r;
    TRY(parse_test(P, &r));
    TRY(binop(P, OP_POW, *out, r, line, out));
  }
  return LM_OK;
}

static int parse_mul(parser *P, jj_node **out) {
  TRY(parse_pow(P, out));
  while (is(P, TK_MUL)) {
    const jj_token *t = peek(P, 0);
    P->pos++;
    enum jj_op op = tok_eq(t, "*")    ? OP_MUL
                    : tok_eq(t, "/")  ? OP_DIV
                    : tok_eq(t, "//") ? OP_FLOORDIV
                                      : OP_MOD;
    jj_node *r;
    TRY(parse_pow(P, &r));
    TRY(binop(P, op, *out, r, t->line, out));
  }
  return LM_OK;
}

static int parse_add(parser *P, jj_node **out) {
  TRY(parse_mul(P, out));
  while (is(P, TK_ADD)) {
    const jj_token *t = peek(P, 0);
    P->pos++;
    enum jj_op op = tok_eq(t, "+") ? OP_ADD : tok_eq(t, "-") ? OP_SUB : OP_CONCAT;
    jj_node *r;
    TRY(parse_mul(P, &r));
    TRY(binop(P, op, *out, r, t->line, out));
  }
  return LM_OK;
}

static int parse_cmp(parser *P, jj_node **out) {
  TRY(parse_add(P, out));
  for (;;) {
    const jj_token *t = peek(P, 0);
    enum jj_op op;
    if (is_id(P, 0, "not") && is_id(P, 1, "in")) {
      op = OP_NOT_IN;
      P->pos += 2;
    } else if (is_id(P, 0, "in")) {
      op = OP_IN;
      P->pos++;
    } else if (t->type == TK_CMP) {
      op = tok_eq(t, "==")   ? OP_EQ
           : tok_eq(t, "!=") ? OP_NE
           : tok_eq(t, "<")  ? OP_LT
           : tok_eq(t, ">")  ? OP_GT
           : tok_eq(t, "<=") ? OP_LE
                             : OP_GE;
      P->pos++;
    } else {
      return LM_OK;
    }
    jj_node *r;
    TRY(parse_add(P, &r));
    TRY(binop(P, op, *out, r, t->line, out));
  }
}

static int parse_not(parser *P, jj_node **out) {
  if (is_id(P, 0, "not")) {
    jj_node *u = node(P, N_UNARY, peek(P, 0)->line);
    if (!u) return OOM(P);
    P->pos++;
    u->op = OP_NOT;
    TRY(parse_not(P, &u->a));
    *out = u;
    return LM_OK;
  }
  return parse_cmp(P, out);
}

static int parse_and(parser *P, jj_node **out) {
  TRY(parse_not(P, out));
  while (is_id(P, 0, "and")) {
    int line = peek(P, 0)->line;
    P->pos++;
    jj_node *r;
    TRY(parse_not(P, &r));
    TRY(binop(P, OP_AND, *out, r, line, out));
  }
  return LM_OK;
}

static int parse_or(parser *P, jj_node **out) {
  TRY(parse_and(P, out));
  while (is_id(P, 0, "or")) {
    int line = peek(P, 0)->line;
    P->pos++;
    jj_node *r;
    TRY(parse_and(P, &r));
    TRY(binop(P, OP_OR, *out, r, line, out));
  }
  return LM_OK;
}

static int parse_expr(parser *P, jj_node **out) {
  jj_node *a;
  TRY(parse_or(P, &a));
  if (!is_id(P, 0, "if")) {
    *out = a;
    return LM_OK;
  }
  int line = peek(P, 0)->line;
  P->pos++;
  jj_node *test;
  TRY(parse_or(P, &test));
  if (is_id(P, 0, "else")) {
    P->pos++;
    jj_node *t = node(P, N_TERNARY, line);
    if (!t) return OOM(P);
    t->a = test;
    t->b = a;
    TRY(parse_expr(P, &t->c));
    *out = t;
    return LM_OK;
  }
  jj_node *s = node(P, N_SELECT, line);
  if (!s) return OOM(P);
  s->a = a;
  s->b = test;
  *out = s;
  return LM_OK;
}

static int parse_primary(parser *P, jj_node **out) {
  const jj_token *t = peek(P, 0);
  jj_node *nd;
  P->pos++;
  switch (t->type) {
  case TK_NUM: {
    char buf[64];
    size_t n = t->n < sizeof(buf) - 1 ? t->n : sizeof(buf) - 1;
    memcpy(buf, t->s, n);
    buf[n] = '\0';
    int is_float = memchr(t->s, '.', t->n) != NULL;
    if (!(nd = node(P, is_float ? N_FLOAT : N_INT, t->line))) return OOM(P);
    if (is_float)
      nd->f = strtod(buf, NULL);
    else
      nd->i = strtoll(buf, NULL, 10);
    break;
  }
  case TK_STR: {
    size_t total = t->n;
    size_t k = P->pos;
    while (k < P->n && P->t[k].type == TK_STR)
      total += P->t[k++].n;
    if (!(nd = node(P, N_STR, t->line))) return OOM(P);
    if (k == P->pos) {
      nd->s = t->s;
      nd->n = t->n;
      break;
    }
    char *s = jj_alloc(P->arena, total + 1);
    if (!s) return OOM(P);
    memcpy(s, t->s, t->n);
    nd->n = t->n;
    for (; P->pos < k; P->pos++) {
      memcpy(s + nd->n, P->t[P->pos].s, P->t[P->pos].n);
      nd->n += P->t[P->pos].n;
    }
    nd->s = s;
    break;
  }
  case TK_ID:
    if (!(nd = node(P, N_ID, t->line))) return OOM(P);
    nd->s = t->s;
    nd->n = t->n;
    if (!P->in_macro || !(tok_eq(t, "varargs") || tok_eq(t, "kwargs") || tok_eq(t, "caller")))
      break;
    P->pos--;
    return UNSUPPORTED(P, "varargs, kwargs or caller in a macro");
  case TK_LPAREN:
    TRY(parse_sequence(P, 0, &nd));
    TRY(expect(P, TK_RPAREN, "to close '('"));
    break;
  case TK_LBRACKET:
  case TK_LBRACE: {
    int dict = t->type == TK_LBRACE;
    nlist l = {0};
    while (!is(P, dict ? TK_RBRACE : TK_RBRACKET)) {
      if (is(P, TK_EOF)) return fail(P, "unterminated %s literal", dict ? "dict" : "list");
      jj_node *v;
      TRY(parse_expr(P, &v));
      if (nl_push(P, &l, v) != LM_OK) return OOM(P);
      if (dict) {
        TRY(expect(P, TK_COLON, "between a key and its value"));
        TRY(parse_expr(P, &v));
        if (nl_push(P, &l, v) != LM_OK) return OOM(P);
      }
      if (is(P, TK_COMMA)) P->pos++;
    }
    P->pos++;
    if (!(nd = node(P, dict ? N_DICT : N_LIST, t->line))) return OOM(P);
    nd->args = l.v;
    nd->n_args = l.n;
    break;
  }
  default: P->pos--; return fail(P, "unexpected %s", tok_name(t->type));
  }
  *out = nd;
  return LM_OK;
}

static int parse_if(parser *P, int line, jj_node **out) {
  jj_node *nd = node(P, N_IF, line);
  static const char *const stops[] = {"elif", "else", "endif", NULL};
  if (!nd) return OOM(P);
  TRY(parse_expr(P, &nd->a));
  TRY(expect(P, TK_CLOSE_STMT, "after the if condition"));
  TRY(parse_block_until(P, stops, &nd->body, &nd->n_body));
  if (is_stmt(P, "elif")) {
    int eline = peek(P, 1)->line;
    P->pos += 2;
    jj_node *elif;
    TRY(parse_if(P, eline, &elif));
    if (!(nd->alt = jj_alloc(P->arena, sizeof(jj_node *)))) return OOM(P);
    nd->alt[0] = elif;
    nd->n_alt = 1;
  } else if (is_stmt(P, "else")) {
    static const char *const end[] = {"endif", NULL};
    P->pos += 2;
    TRY(expect(P, TK_CLOSE_STMT, "after else"));
    TRY(parse_block_until(P, end, &nd->alt, &nd->n_alt));
  }
  *out = nd;
  return LM_OK;
}

static int parse_end(parser *P, const char *name) {
  TRY(expect(P, TK_OPEN_STMT, "to open the closing tag"));
  TRY(expect_id(P, name));
  return expect(P, TK_CLOSE_STMT, "to close the closing tag");
}

static int parse_statement(parser *P, jj_node **out) {
  TRY(expect(P, TK_OPEN_STMT, "to open a statement"));
  const jj_token *name = peek(P, 0);
  int line = name->line;
  if (name->type != TK_ID) return fail(P, "expected a statement name after '{%%'");
  P->pos++;
  if (tok_eq(name, "set")) {
    jj_node *nd = node(P, N_SET, line);
    if (!nd) return OOM(P);
    TRY(parse_sequence(P, 0, &nd->a));
    if (is(P, TK_EQUALS)) {
      P->pos++;
      TRY(parse_sequence(P, 0, &nd->b));
    } else {
      static const char *const end[] = {"endset", NULL};
      TRY(expect(P, TK_CLOSE_STMT, "after the set target"));
      TRY(parse_block_until(P, end, &nd->body, &nd->n_body));
      TRY(expect(P, TK_OPEN_STMT, "to open endset"));
      TRY(expect_id(P, "endset"));
    }
    TRY(expect(P, TK_CLOSE_STMT, "to close set"));
    *out = nd;
    return LM_OK;
  }
  if (tok_eq(name, "if")) {
    TRY(parse_if(P, line, out));
    return parse_end(P, "endif");
  }
  if (tok_eq(name, "for")) {
    static const char *const stops[] = {"else", "endfor", NULL};
    static const char *const end[] = {"endfor", NULL};
    jj_node *nd = node(P, N_FOR, line);
    if (!nd) return OOM(P);
    TRY(parse_sequence(P, 1, &nd->a));
    if (nd->a->kind != N_ID && nd->a->kind != N_TUPLE) return fail(P, "expected a loop variable");
    TRY(expect_id(P, "in"));
    TRY(parse_expr(P, &nd->b));
    if (nd->b->kind == N_SELECT) {
      nd->c = nd->b->b;
      nd->b = nd->b->a;
    }
    if (is_id(P, 0, "recursive")) return UNSUPPORTED(P, "recursive loops");
    TRY(expect(P, TK_CLOSE_STMT, "after the for header"));
    TRY(parse_block_until(P, stops, &nd->body, &nd->n_body));
    if (is_stmt(P, "else")) {
      P->pos += 2;
      TRY(expect(P, TK_CLOSE_STMT, "after else"));
      TRY(parse_block_until(P, end, &nd->alt, &nd->n_alt));
    }
    *out = nd;
    return parse_end(P, "endfor");
  }
  if (tok_eq(name, "macro")) {
    static const char *const end[] = {"endmacro", NULL};
    jj_node *nd = node(P, N_MACRO, line), *id;
    if (!nd) return OOM(P);
    TRY(parse_primary(P, &id));
    if (id->kind != N_ID) return fail(P, "expected the macro's name");
    nd->s = id->s;
    nd->n = id->n;
    TRY(parse_args(P, 1, &nd->args, &nd->n_args));
    TRY(expect(P, TK_CLOSE_STMT, "after the macro header"));
    P->in_macro++;
    int rc = parse_block_until(P, end, &nd->body, &nd->n_body);
    P->in_macro--;
    if (rc != LM_OK) return rc;
    *out = nd;
    return parse_end(P, "endmacro");
  }
  if (tok_eq(name, "break") || tok_eq(name, "continue")) {
    jj_node *nd = node(P, tok_eq(name, "break") ? N_BREAK : N_CONTINUE, line);
    if (!nd) return OOM(P);
    *out = nd;
    return expect(P, TK_CLOSE_STMT, "after break/continue");
  }
  P->pos--;
  char what[128];
  snprintf(what, sizeof(what), "{%% %.*s %%}", (int)(name->n > 64 ? 64 : name->n), name->s);
  return UNSUPPORTED(P, what);
}

static int parse_any(parser *P, jj_node **out) {
  const jj_token *t = peek(P, 0);
  switch (t->type) {
  case TK_COMMENT:
    P->pos++;
    if (!(*out = node(P, N_COMMENT, t->line))) return OOM(P);
    return LM_OK;
  case TK_TEXT:
    P->pos++;
    if (!(*out = node(P, N_STR, t->line))) return OOM(P);
    (*out)->s = t->s;
    (*out)->n = t->n;
    return LM_OK;
  case TK_OPEN_STMT: return parse_statement(P, out);
  case TK_OPEN_EXPR:
    P->pos++;
    TRY(parse_expr(P, out));
    return expect(P, TK_CLOSE_EXPR, "to close the expression");
  default: return fail(P, "unexpected %s", tok_name(t->type));
  }
}

int jj_parse(jj_arena *arena, const jj_token *toks, size_t n_toks, jj_node ***body, size_t *n_body,
             char *err) {
  parser P = {.arena = arena, .t = toks, .n = n_toks, .err = err};
  nlist l = {0};
  while (!is(&P, TK_EOF)) {
    jj_node *nd;
    TRY(parse_any(&P, &nd));
    if (nl_push(&P, &l, nd) != LM_OK) return OOM(&P);
  }
  *body = l.v;
  *n_body = l.n;
  return LM_OK;
}
