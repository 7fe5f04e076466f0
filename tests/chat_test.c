/* chat_test.c - chat templates: constructs with hand-derived results, load
 * errors naming line and construct, bad requests, template choice, no
 * double BOS, and concurrent renders. Parity with @huggingface/jinja on real
 * templates is tests/chat_parity.js. Usage: chat_test FIXTURES_DIR */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/jinja.h"
#include "engine/lm.h"
#include "tests/check.h"

/* Renders tmpl with vars (JSON text); returns the text or NULL with err. */
static char *render(const char *tmpl, const char *vars, int *rc, char *err) {
  lm_jinja *t = NULL;
  lm_json_doc *doc = NULL;
  char *text = NULL;
  size_t len;
  *rc = lm_jinja_compile(tmpl, strlen(tmpl), &t, err);
  if (*rc == LM_OK) *rc = lm_json_parse(vars, strlen(vars), &doc, err);
  if (*rc == LM_OK) *rc = lm_jinja_render(t, lm_json_root(doc), &text, &len, err);
  lm_json_free(doc);
  lm_jinja_free(t);
  return text;
}

static void expect_text(const char *name, const char *tmpl, const char *vars, const char *want) {
  char err[LM_ERR_LEN] = "";
  int rc;
  char *got = render(tmpl, vars, &rc, err);
  lm_check(got && !strcmp(got, want), "%s: got \"%s\" (%s), want \"%s\"", name,
           got ? got : "(null)", err, want);
  free(got);
}

static void expect_error(const char *name, const char *tmpl, const char *vars, int code,
                         const char *a, const char *b) {
  char err[LM_ERR_LEN] = "";
  int rc;
  char *got = render(tmpl, vars, &rc, err);
  lm_check(!got && rc == code && strstr(err, a) && (!b || strstr(err, b)),
           "%s: rc %d, error \"%s\"", name, rc, err);
  free(got);
}

static void test_constructs(void) {
  expect_text("trim_blocks drops the newline after a tag", "{% if true %}\nA{% endif %}\n", "{}",
              "A");
  expect_text("lstrip_blocks drops indentation before a tag", "  {% if true %}x{% endif %}", "{}",
              "x");
  expect_text("whitespace control", "a  {{- 'b' -}}  c", "{}", "abc");
  expect_text("loop.* values",
              "{% for x in xs %}{{ loop.index }}{{ loop.revindex0 }}{{ loop.first }};{% endfor %}",
              "{\"xs\": [5, 6]}", "11true;20false;");
  expect_text("namespace survives the loop scope",
              "{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor "
              "%}{{ ns.n }}",
              "{\"xs\": [1, 2, 3]}", "6");
  expect_text("set in a loop does not leak",
              "{% set a = 1 %}{% for x in [1] %}{% set a = 2 %}{% endfor %}{{ a }}", "{}", "1");
  expect_text("reverse slice and negative index", "{{ xs[::-1] | join(',') }} {{ xs[-1] }}",
              "{\"xs\": [1, 2, 3]}", "3,2,1 3");
  expect_text("string methods",
              "{{ ' a b '.strip() ~ '|' ~ 'a,b'.split(',') | last ~ '|' ~ 'xhix'.strip('x') }}",
              "{}", "a b|b|hi");
  expect_text("tojson matches json.dumps spacing", "{{ d | tojson }}",
              "{\"d\": {\"a\": [1, 2.5, null], \"b\": \"\\u00e9\"}}",
              "{\"a\": [1, 2.5, null], \"b\": \"\xc3\xa9\"}");
  expect_text("macro with default and keyword",
              "{% macro m(a, b='x') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(2, b='y') }}",
              "{}", "1x2y");
  expect_text("selectattr and map",
              "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='c') | join }}",
              "{\"ms\": [{\"role\": \"user\", \"c\": \"a\"}, {\"role\": \"bot\", \"c\": \"b\"}, "
              "{\"role\": \"user\", \"c\": \"c\"}]}",
              "ac");
  expect_text("undefined is empty and falsy",
              "[{{ nope }}{{ nope.attr }}]{% if nope %}x{% endif %}{{ nope is defined }}", "{}",
              "[]false");
  expect_text("in, not in, ternary",
              "{{ 'a' in 'cat' }} {{ 3 not in [1, 2] }} {{ 'y' if 0 else 'n' }}", "{}",
              "true true n");
  expect_text("integer and float arithmetic", "{{ 7 // 2 }} {{ 7 / 2 }} {{ 2 ** 3 }} {{ 1.0 }}",
              "{}", "3 3.5 8 1.0");
}

static void test_errors(void) {
  expect_error("unsupported filter is refused at load with its line", "x\n{{ a | wordcount }}",
               "{}", LM_EUNSUP, "line 2", "filter 'wordcount'");
  expect_error("unsupported statement is refused at load", "{% include 'x' %}", "{}", LM_EUNSUP,
               "line 1", "{% include %}");
  expect_error("unterminated block is a syntax error", "a\n{% if x %}b", "{}", LM_EINVAL, "line 2",
               "endif");
  expect_error("raise_exception gives the template's message and line",
               "\n\n{{ raise_exception('Conversation roles must alternate') }}", "{}", LM_EINVAL,
               "line 3", "Conversation roles must alternate");
  expect_error("adding undefined is an error", "{{ nope + 'a' }}", "{}", LM_EINVAL, "undefined",
               NULL);
  expect_error("an escape of a newline is named by its byte, on one line", "{{ 'a\\\nb' }}", "{}",
               LM_EINVAL, "line 1", "unknown escape: backslash, then 0x0a, in a string literal");
  expect_error("a raise_exception message keeps to one line",
               "{{ raise_exception('two\\nlines') }}", "{}", LM_EINVAL, "two lines", NULL);
  expect_error("calling a method of undefined is an error", "{{ nope.strip() }}", "{}", LM_EINVAL,
               "not a function", NULL);
}

static const char *const names[] = {"default", "tool_use"};
static const char *const tmpls[] = {
    "{{ bos_token }}D{{ messages | length }}{% if add_generation_prompt %}G{% endif %}",
    "T{{ tools | length }}{{ enable_thinking }}"};

static int chat_render_str(const lm_chat *c, const char *req, char **text, char *err) {
  lm_json_doc *doc;
  size_t len;
  int rc = lm_json_parse(req, strlen(req), &doc, err);
  if (rc != LM_OK) return rc;
  rc = lm_chat_render(c, lm_json_root(doc), text, &len, err);
  lm_json_free(doc);
  return rc;
}

static void test_requests(void) {
  lm_chat *c;
  char err[LM_ERR_LEN], *text = NULL;
  if (!lm_check(lm_chat_create((const char **)names, (const char **)tmpls, 2, "<s>", "</s>", &c,
                               err) == LM_OK,
                "two named templates compile: %s", err))
    return;
  struct {
    const char *name, *req, *want;
  } ok[] = {
      {"bare list, generation prompt on by default", "[{\"role\": \"user\", \"content\": \"hi\"}]",
       "<s>D1G"},
      {"add_generation_prompt false", "{\"messages\": [], \"add_generation_prompt\": false}",
       "<s>D0"},
      {"tools choose tool_use, kwargs reach the template",
       "{\"messages\": [], \"tools\": [{}, {}], \"chat_template_kwargs\": {\"enable_thinking\": "
       "false}}",
       "T2false"},
  };
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    int rc = chat_render_str(c, ok[i].req, &text, err);
    lm_check(rc == LM_OK && !strcmp(text, ok[i].want), "%s: \"%s\" %s", ok[i].name, rc ? "" : text,
             rc ? err : "");
    free(text);
    text = NULL;
  }
  struct {
    const char *name, *req, *msg;
  } bad[] = {
      {"messages not a list", "{\"messages\": \"hi\"}", "\"messages\" must be a list"},
      {"content of the wrong type", "[{\"role\": \"user\", \"content\": 5}]",
       "messages[0].content must be"},
      {"message without role", "[{\"content\": \"x\"}]", "messages[0].role"},
      {"request of the wrong type", "42", "chat request must be"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = chat_render_str(c, bad[i].req, &text, err);
    lm_check(rc == LM_EINVAL && strstr(err, bad[i].msg), "%s is refused: %s", bad[i].name, err);
    free(text);
    text = NULL;
  }
  lm_chat_free(c);
}

typedef struct {
  const lm_chat *c;
  const char *req;
  const char *want;
  int same;
} job;

static void *worker(void *arg) {
  job *j = arg;
  char err[LM_ERR_LEN];
  for (int i = 0; i < 200; i++) {
    char *text = NULL;
    if (chat_render_str(j->c, j->req, &text, err) == LM_OK && !strcmp(text, j->want)) j->same++;
    free(text);
  }
  return NULL;
}

static void test_model(const char *fixtures) {
  char dir[1024], err[LM_ERR_LEN], *want = NULL;
  lm_tokenizer *tok = NULL;
  lm_chat *c = NULL;
  lm_json_doc *doc = NULL;
  lm_tokens ids = {0};
  const char *req = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                    "{\"role\": \"user\", \"content\": \"Hi \\u00e9\"}]}";
  snprintf(dir, sizeof(dir), "%s/llama31-f32", fixtures);
  if (!lm_check(lm_tokenizer_load(dir, &tok, err) == LM_OK && lm_chat_load(tok, &c, err) == LM_OK &&
                    c,
                "llama31 fixture chat template loads: %s", err))
    goto out;
  if (lm_json_parse(req, strlen(req), &doc, err) != LM_OK ||
      !lm_check(lm_chat_encode(c, tok, lm_json_root(doc), &ids, err) == LM_OK, "encode: %s", err))
    goto out;
  int32_t bos = lm_tokenizer_token_id(tok, "<|begin_of_text|>", 17);
  size_t n_bos = 0;
  for (size_t i = 0; i < ids.n; i++)
    n_bos += ids.ids[i] == bos;
  lm_check(ids.n > 2 && ids.ids[0] == bos && n_bos == 1,
           "encoded prompt starts with exactly one BOS (%zu of %zu)", n_bos, ids.n);
  int32_t eot = lm_tokenizer_token_id(tok, "<|eot_id|>", 10);
  size_t n_eot = 0;
  for (size_t i = 0; i < ids.n; i++)
    n_eot += ids.ids[i] == eot;
  lm_check(n_eot == 2,
           "special-token strings in the rendered text become single tokens (%zu <|eot_id|>)",
           n_eot);

  if (chat_render_str(c, req, &want, err) != LM_OK) goto out;
  job jobs[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (job){.c = c, .req = req, .want = want};
    pthread_create(&th[i], NULL, worker, &jobs[i]);
  }
  int same = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    same += jobs[i].same;
  }
  lm_check(same == 800, "4 threads rendering one template concurrently agree (%d of 800)", same);
out:
  free(want);
  lm_tokens_free(&ids);
  lm_json_free(doc);
  lm_chat_free(c);
  lm_tokenizer_free(tok);
}

int main(int argc, char **argv) {
  test_constructs();
  test_errors();
  test_requests();
  test_model(argc > 1 ? argv[1] : "models/fixtures");
  return lm_check_done();
}
