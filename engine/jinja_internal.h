/* jinja_internal.h - what the Jinja lexer, parser, values and interpreter
 * share. Nothing here is used outside engine/jinja_*.c. */
#ifndef LM_JINJA_INTERNAL_H
#define LM_JINJA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/jinja.h"
#include "engine/lm.h"

/* ---- arena: bump allocation in chunks, freed all at once ---- */
typedef struct jj_chunk jj_chunk;
typedef struct {
  jj_chunk *head;
  char *cur, *end;
} jj_arena;
void *jj_alloc(jj_arena *a, size_t size); /* zeroed; NULL when out of memory */
void jj_arena_free(jj_arena *a);

/* ---- growable byte buffer (malloc'd) ---- */
typedef struct {
  char *p;
  size_t n, cap;
  int oom; /* set once an append failed; later appends do nothing */
} jj_buf;
void jj_put(jj_buf *b, const char *s, size_t n);
void jj_puts(jj_buf *b, const char *s);
void jj_putc(jj_buf *b, char c);

/* ---- tokens ---- */
enum jj_tok {
  TK_TEXT,
  TK_NUM,
  TK_STR,
  TK_ID,
  TK_EQUALS,
  TK_LPAREN,
  TK_RPAREN,
  TK_OPEN_STMT,
  TK_CLOSE_STMT,
  TK_OPEN_EXPR,
  TK_CLOSE_EXPR,
  TK_LBRACKET,
  TK_RBRACKET,
  TK_LBRACE,
  TK_RBRACE,
  TK_COMMA,
  TK_DOT,
  TK_COLON,
  TK_PIPE,
  TK_ADD, /* + - ~ */
  TK_MUL, /* * / // % */
  TK_POW, /* ** */
  TK_CMP, /* < > <= >= == != */
  TK_UNARY,
  TK_COMMENT,
  TK_EOF,
};

typedef struct {
  enum jj_tok type;
  const char *s; /* value: source text, or the unescaped string literal */
  size_t n;
  int line; /* line in the original template */
} jj_token;

/* Applies the reference's preprocessing (one trailing newline dropped,
 * lstrip_blocks, trim_blocks, {% generation %} removed) and splits the
 * result into tokens, ending with TK_EOF. Everything lives in arena. */
int jj_lex(jj_arena *arena, const char *src, size_t len, jj_token **toks, size_t *n_toks,
           char *err);

/* ---- syntax tree ---- */
enum jj_kind {
  /* statements */
  N_SET,   /* a = target, b = value or NULL with body */
  N_IF,    /* a = test, body, alt */
  N_FOR,   /* a = loop variable, b = iterable, c = select test, body, alt = else */
  N_MACRO, /* s = name, args = parameters (N_ID or N_KWARG), body */
  N_BREAK,
  N_CONTINUE,
  N_COMMENT,
  /* expressions */
  N_STR,     /* s, n (text between tags is an N_STR too) */
  N_INT,     /* i */
  N_FLOAT,   /* f */
  N_ID,      /* s, n */
  N_LIST,    /* args */
  N_TUPLE,   /* args */
  N_DICT,    /* args = key, value, key, value, ... */
  N_MEMBER,  /* a = object, b = property; flag = computed */
  N_SLICE,   /* a, b, c = start, stop, step (each may be NULL) */
  N_CALL,    /* a = callee, args */
  N_KWARG,   /* s = name, a = value */
  N_BINARY,  /* op, a, b */
  N_UNARY,   /* op, a */
  N_FILTER,  /* a = operand, s = filter name, args; flag = called with () */
  N_TEST,    /* a = operand, s = test name; flag = negated */
  N_SELECT,  /* a = value, b = test: "a if b" without else */
  N_TERNARY, /* a = test, b = if true, c = if false */
};

enum jj_op {
  OP_AND,
  OP_OR,
  OP_NOT,
  OP_EQ,
  OP_NE,
  OP_LT,
  OP_GT,
  OP_LE,
  OP_GE,
  OP_IN,
  OP_NOT_IN,
  OP_ADD,
  OP_SUB,
  OP_CONCAT,
  OP_MUL,
  OP_DIV,
  OP_FLOORDIV,
  OP_MOD,
  OP_POW,
  OP_NEG,
  OP_POS,
};

typedef struct jj_node jj_node;
struct jj_node {
  enum jj_kind kind;
  enum jj_op op;
  int line;
  int flag;
  const char *s;
  size_t n;
  int64_t i;
  double f;
  jj_node *a, *b, *c;
  jj_node **args, **body, **alt;
  size_t n_args, n_body, n_alt;
};

/* Parses tokens into the top-level statement list. */
int jj_parse(jj_arena *arena, const jj_token *toks, size_t n_toks, jj_node ***body, size_t *n_body,
             char *err);

/* ---- values ---- */
enum jj_type {
  JV_UNDEF,
  JV_NONE,
  JV_BOOL,
  JV_INT,
  JV_FLOAT,
  JV_STR,
  JV_LIST,
  JV_DICT,
  JV_NS, /* namespace(): a dict whose attributes may be assigned */
  JV_FUNC,
};

typedef struct jj_list jj_list;
typedef struct jj_dict jj_dict;
typedef struct jj_func jj_func;

typedef struct {
  enum jj_type t;
  union {
    int b;
    int64_t i;
    double f;
    struct {
      const char *p;
      size_t n;
    } s;
    jj_list *l;
    jj_dict *d;
    jj_func *fn;
  } u;
} jj_val;

struct jj_list {
  jj_val *items;
  size_t n, cap;
};

typedef struct {
  const char *key;
  size_t key_len;
  jj_val val;
} jj_entry;

struct jj_dict {
  jj_entry *items;
  size_t n, cap;
};

enum jj_fn_kind {
  FN_MACRO,   /* macro: node */
  FN_BUILTIN, /* a global function: id */
  FN_METHOD,  /* a method bound to self: name */
};

struct jj_func {
  enum jj_fn_kind kind;
  const jj_node *node;
  const char *name;
  jj_val self;
};

static inline jj_val jv_undef(void) {
  return (jj_val){.t = JV_UNDEF};
}
static inline jj_val jv_none(void) {
  return (jj_val){.t = JV_NONE};
}
static inline jj_val jv_bool(int b) {
  return (jj_val){.t = JV_BOOL, .u.b = !!b};
}
static inline jj_val jv_int(int64_t i) {
  return (jj_val){.t = JV_INT, .u.i = i};
}
static inline jj_val jv_float(double f) {
  return (jj_val){.t = JV_FLOAT, .u.f = f};
}
static inline jj_val jv_str(const char *p, size_t n) {
  jj_val v = {.t = JV_STR};
  v.u.s.p = p;
  v.u.s.n = n;
  return v;
}

/* The reference's names for types, used in error messages. */
const char *jv_type_name(enum jj_type t);
int jv_truthy(jj_val v);
int jj_list_push(jj_arena *a, jj_list *l, jj_val v);
/* Sets key (replacing an existing one in place). */
int jj_dict_set(jj_arena *a, jj_dict *d, const char *key, size_t key_len, jj_val v);
const jj_val *jj_dict_get(const jj_dict *d, const char *key, size_t key_len);
jj_val jv_new_list(jj_arena *a);                 /* JV_UNDEF when out of memory */
jj_val jv_new_dict(jj_arena *a, enum jj_type t); /* JV_DICT or JV_NS */
/* A JSON value as a template value; strings point into the JSON. */
int jv_from_json(jj_arena *a, const lm_json *j, jj_val *out);

/* JavaScript's Number.prototype.toString (shortest round trip). */
void jj_put_js_number(jj_buf *b, double x);
/* How {{ value }} prints it; LM_EINVAL for a function. */
int jv_print(jj_buf *b, jj_val v, char *msg);
/* String(value) for the primitives + and ~ join; LM_EINVAL otherwise. */
int jv_prim_str(jj_buf *b, jj_val v, char *msg);

typedef struct {
  int indent; /* 0: one line */
  int ensure_ascii, sort_keys, undef_to_null;
  const char *item_sep, *key_sep; /* NULL: the defaults */
} jj_json_opts;
int jv_tojson(jj_buf *b, jj_val v, const jj_json_opts *o, int depth, char *msg);

/* Loose (==) and strict (=== as used by `in`) equality. */
int jv_loose_eq(jj_val a, jj_val b);
int jv_strict_eq(jj_val a, jj_val b);
/* Ordering for sort/dictsort: -1, 0, 1; LM_EINVAL (returned through rc) for
 * values that do not compare. */
int jv_compare(jj_val a, jj_val b, int case_sensitive, int *rc, char *msg);

/* ---- strings (UTF-8, with JavaScript's whitespace and lengths) ---- */
size_t jj_js_space(const char *p, const char *end); /* bytes of a whitespace char at p, or 0 */
size_t jj_utf16_len(const char *p, size_t n);
size_t jj_utf8_next(const char *p, const char *end, uint32_t *cp); /* bytes of the char at p */
void jj_trim(const char **p, size_t *n, int left, int right);
/* Strips any of the characters of chars, as Python's str.strip(chars). */
void jj_strip_chars(const char **p, size_t *n, const char *chars, size_t n_chars, int left,
                    int right);
/* Upper/lower case (simple case mapping per character). */
int jj_case(jj_arena *a, jj_val s, int upper, jj_val *out);

/* ---- interpreter ---- */
typedef struct jj_env jj_env;
typedef struct jj_ctx jj_ctx;
struct jj_ctx {
  jj_arena arena;
  jj_buf out;
  char *err;
  int line;  /* line of the node being evaluated */
  int depth; /* macro recursion */
};

/* err (LM_EINVAL) with the current template line. */
int jj_fail(jj_ctx *x, const char *fmt, ...) LM_PRINTF(2, 3);
int jj_oom(jj_ctx *x);
/* The text gathered in b as a string value in the render arena; frees b. */
int jj_buf_value(jj_ctx *x, jj_buf *b, jj_val *out);
int jj_eval(jj_ctx *x, const jj_node *node, jj_env *env, jj_val *out);
/* Evaluates call arguments: positional values, then keyword ones. */
typedef struct {
  jj_val *pos;
  size_t n_pos;
  const jj_node **kw_nodes; /* N_KWARG nodes, for the names */
  jj_val *kw;
  size_t n_kw;
} jj_args;
int jj_eval_args(jj_ctx *x, jj_node *const *args, size_t n, jj_env *env, jj_args *out);
const jj_val *jj_kwarg(const jj_args *a, const char *name);

int jj_apply_filter(jj_ctx *x, const jj_node *f, jj_val operand, jj_env *env, jj_val *out);
int jj_apply_test(jj_ctx *x, const char *name, size_t n, jj_val v, int *result);
int jj_call_method(jj_ctx *x, const jj_func *fn, const jj_args *args, jj_val *out);
/* The method or property `name` of a string, list or dict, or JV_UNDEF. */
int jj_builtin_attr(jj_ctx *x, jj_val obj, const char *name, size_t n, jj_val *out);

/* Names the compiler accepts (runtime behaviour is in jinja_filter.c). */
int jj_known_filter(const char *s, size_t n);
int jj_known_test(const char *s, size_t n);

#endif
