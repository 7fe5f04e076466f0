/* json.h - a small JSON reader (RFC 8259) and string writer.
 *
 * The whole document is parsed into a tree that lives in one arena owned by
 * lm_json_doc; every pointer handed out stays valid until lm_json_free.
 * Strings are decoded UTF-8 with a NUL appended; they may contain NUL bytes,
 * so use the length. Object members keep their order in the text. */
#ifndef LM_JSON_H
#define LM_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum lm_json_type {
  LM_JSON_NULL,
  LM_JSON_BOOL,
  LM_JSON_NUMBER,
  LM_JSON_STRING,
  LM_JSON_ARRAY,
  LM_JSON_OBJECT,
};

typedef struct lm_json lm_json;
struct lm_json {
  enum lm_json_type type;
  int boolean;     /* LM_JSON_BOOL */
  int is_int;      /* LM_JSON_NUMBER written without fraction or exponent */
  double number;   /* LM_JSON_NUMBER */
  int64_t integer; /* LM_JSON_NUMBER when is_int and it fits */
  const char *str; /* LM_JSON_STRING */
  size_t str_len;
  const char *key; /* member name when this value sits in an object */
  size_t key_len;
  lm_json *kids; /* array items or object members, in order */
  size_t n_kids;
};

typedef struct lm_json_doc lm_json_doc;

/* Parses len bytes of text. Nesting deeper than 256 is refused. */
int lm_json_parse(const char *text, size_t len, lm_json_doc **out, char *err);
void lm_json_free(lm_json_doc *doc);
const lm_json *lm_json_root(const lm_json_doc *doc);

/* Member of an object by name (the last one if repeated); NULL when obj is
 * NULL, not an object, or has no such member. */
const lm_json *lm_json_get(const lm_json *obj, const char *key);
/* Typed lookups: NULL unless present with that type. */
const lm_json *lm_json_get_type(const lm_json *obj, const char *key, enum lm_json_type type);
const char *lm_json_type_name(enum lm_json_type type);

/* Writes s as a JSON string literal (quotes included). */
void lm_json_write_str(FILE *f, const char *s, size_t len);

#endif
