/* json_test.c - the JSON reader: values, escapes, errors, depth limit. */
#include <stdlib.h>
#include <string.h>

#include "engine/json.h"
#include "engine/lm.h"
#include "tests/check.h"

static const lm_json *parse(const char *text, lm_json_doc **doc, char *err) {
  if (lm_json_parse(text, strlen(text), doc, err) != LM_OK) return NULL;
  return lm_json_root(*doc);
}

static void test_values(void) {
  char err[LM_ERR_LEN];
  lm_json_doc *doc = NULL;
  const lm_json *r =
      parse("{\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\","
            " \"n\": {\"a\": 1}, \"a\": 7}",
            &doc, err);
  lm_check(r && r->type == LM_JSON_OBJECT && r->n_kids == 4, "parses an object with 4 members");
  if (!r) return;
  const lm_json *a = lm_json_get(r, "a");
  lm_check(a && a->type == LM_JSON_NUMBER && a->integer == 7, "repeated key: the last one wins");
  const lm_json *arr = &r->kids[0];
  lm_check(arr->type == LM_JSON_ARRAY && arr->n_kids == 5 && arr->kids[0].is_int &&
               arr->kids[0].integer == 1 && !arr->kids[1].is_int &&
               arr->kids[1].number == -2500.0 && arr->kids[2].boolean == 1 &&
               arr->kids[3].type == LM_JSON_BOOL && arr->kids[4].type == LM_JSON_NULL,
           "array of number, number, true, false, null");
  const lm_json *s = lm_json_get_type(r, "s", LM_JSON_STRING);
  lm_check(s && s->str_len == 8 && !memcmp(s->str, "x\xc3\xa9\xf0\x9f\x98\x80\n", 8),
           "escapes and surrogate pairs decode to UTF-8");
  lm_check(lm_json_get_type(r, "s", LM_JSON_NUMBER) == NULL, "typed lookup refuses other types");
  lm_check(lm_json_get(lm_json_get(r, "n"), "a") != NULL, "nested lookup");
  lm_json_free(doc);

  doc = NULL;
  r = parse("\"a\\u0000b\"", &doc, err);
  lm_check(r && r->str_len == 3 && r->str[1] == '\0', "embedded NUL keeps its length");
  lm_json_free(doc);
}

static void test_errors(void) {
  static const char *const bad[] = {
      "",  "{",     "[1,]",    "{\"a\" 1}", "tru",    "\"abc",     "01",   "1.",
      "-", "[1] x", "\"\\x\"", "\"a\nb\"",  "{1: 2}", "\"\\u12\"", "[1e]", "nul",
  };
  char err[LM_ERR_LEN];
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    lm_json_doc *doc = NULL;
    int rc = lm_json_parse(bad[i], strlen(bad[i]), &doc, err);
    lm_check(rc == LM_EFORMAT && doc == NULL && strstr(err, "invalid JSON at byte"),
             "refuses '%s' (%s)", bad[i], rc ? err : "accepted");
  }
  /* JSON is UTF-8: a stray byte, an overlong form and a surrogate are refused
   * with where they are */
  static const char *const not_utf8[] = {"[\"ab\xff\"]", "\"\xc0\xaf\"",
                                         "{\"k\": \"\xed\xa0\x80\"}"};
  static const size_t at[] = {4, 1, 7};
  for (size_t i = 0; i < sizeof(not_utf8) / sizeof(not_utf8[0]); i++) {
    lm_json_doc *doc = NULL;
    char want[64];
    snprintf(want, sizeof(want), "invalid JSON at byte %zu: not UTF-8", at[i]);
    int rc = lm_json_parse(not_utf8[i], strlen(not_utf8[i]), &doc, err);
    lm_check(rc == LM_EFORMAT && doc == NULL && !strcmp(err, want), "refuses text %zu: %s", i,
             rc ? err : "accepted");
  }
  size_t depth = 10000;
  char *deep = malloc(depth + 1);
  memset(deep, '[', depth);
  deep[depth] = '\0';
  lm_json_doc *doc = NULL;
  int rc = lm_json_parse(deep, depth, &doc, err);
  lm_check(rc == LM_EFORMAT && strstr(err, "too deep"), "refuses nesting 10000 deep: %s", err);
  free(deep);
}

int main(void) {
  test_values();
  test_errors();
  return lm_check_done();
}
