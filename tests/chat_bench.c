/* chat_bench.c - time to render a 20-turn conversation (system prompt, 20
 * user/assistant turns with reasoning, two tools) through a model's chat
 * template. Usage: chat_bench [MODEL_DIR] (default models/fixtures/qwen3-f32) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/lm.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "models/fixtures/qwen3-f32";
  char err[LM_ERR_LEN], *req = NULL, *text = NULL;
  size_t cap = 1 << 16, n = 0, len;
  lm_tokenizer *tok = NULL;
  lm_chat *chat = NULL;
  lm_json_doc *doc = NULL;
  int rc = 1;
  if (lm_tokenizer_load(dir, &tok, err) != LM_OK || lm_chat_load(tok, &chat, err) != LM_OK ||
      !chat) {
    fprintf(stderr, "chat_bench: %s: %s\n", dir, chat || *err ? err : "no chat template");
    goto out;
  }
  if (!(req = malloc(cap))) goto out;
  n += (size_t)snprintf(
      req + n, cap - n,
      "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
      "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
      "\"string\"}}}}},"
      "{\"type\": \"function\", \"function\": {\"name\": \"search\", \"parameters\": {}}}],"
      "\"messages\": [{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"}");
  for (int t = 0; t < 20; t++)
    n += (size_t)snprintf(
        req + n, cap - n,
        ", {\"role\": \"user\", \"content\": \"Question %d: what should I know about topic %d?\"}"
        ", {\"role\": \"assistant\", \"content\": \"<think>\\nThinking about topic "
        "%d.\\n</think>\\n\\n"
        "Here is a paragraph-long answer about topic %d, with some detail and a closing line.\"}",
        t, t, t, t);
  n += (size_t)snprintf(req + n, cap - n, ", {\"role\": \"user\", \"content\": \"Thanks!\"}]}");
  if (lm_json_parse(req, n, &doc, err) != LM_OK) {
    fprintf(stderr, "chat_bench: %s\n", err);
    goto out;
  }
  enum { RUNS = 2000 };
  static double us[RUNS];
  for (int i = 0; i < RUNS + 100; i++) {
    double t0 = lm_now_s();
    if (lm_chat_render(chat, lm_json_root(doc), &text, &len, err) != LM_OK) {
      fprintf(stderr, "chat_bench: %s\n", err);
      goto out;
    }
    if (i >= 100) us[i - 100] = (lm_now_s() - t0) * 1e6;
    free(text);
    text = NULL;
  }
  qsort(us, RUNS, sizeof(us[0]), cmp_double);
  printf("chat template render, %s, 20 turns + system + 2 tools (%zu bytes of JSON in, %zu bytes "
         "out):\n",
         dir, n, len);
  printf("  median %.1f us, p90 %.1f us, p99 %.1f us over %d renders\n", us[RUNS / 2],
         us[RUNS * 9 / 10], us[RUNS * 99 / 100], RUNS);
  rc = 0;
out:
  free(text);
  free(req);
  lm_json_free(doc);
  lm_chat_free(chat);
  lm_tokenizer_free(tok);
  return rc;
}
