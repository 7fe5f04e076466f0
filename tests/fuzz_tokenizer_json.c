/* fuzz_tokenizer_json.c - libFuzzer target: any bytes as a model's
 * tokenizer.json (seeded with real ones cut to a few hundred tokens). It
 * loads, or fails with one line that names the file; a loaded tokenizer
 * encodes a fixed mixed-script text and the input's own bytes to ids of
 * tokens it knows, and decodes them, all without crashing or leaking. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/lm.h"
#include "engine/tokenizer.h"

/* in the working directory (tests/fuzz_run.sh runs in a scratch one) */
static char dir[64] = "lm_fuzz_tokjson.XXXXXX", path[128];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  if (!mkdtemp(dir)) {
    perror("fuzz_tokenizer_json: mkdtemp");
    exit(1);
  }
  snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
  return 0;
}

static void check_err(const char *err) {
  const char *end = memchr(err, '\0', LM_ERR_LEN);
  if (!end || !strstr(err, "tokenizer.json") || memchr(err, '\n', (size_t)(end - err)))
    __builtin_trap();
}

static void round_trip(const lm_tokenizer *tok, const char *s, size_t n) {
  char err[LM_ERR_LEN], *text;
  size_t len;
  lm_tokens ids = {0};
  if (lm_tokenizer_encode(tok, s, n, 1, &ids, err) == LM_OK) {
    for (size_t i = 0; i < ids.n; i++)
      if (!lm_tokenizer_id_token(tok, ids.ids[i], NULL)) __builtin_trap();
    for (int skip = 0; skip < 2; skip++)
      if (lm_tokenizer_decode(tok, ids.ids, ids.n, skip, &text, &len, err) == LM_OK) free(text);
  }
  lm_tokens_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char text[] =
      "Hello world! 123 caf\xc3\xa9 \xe4\xb8\x96\xe7\x95\x8c <s> </s> \n\t x";
  char err[LM_ERR_LEN];
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, size, f) != size || fclose(f)) __builtin_trap();
  lm_tokenizer *tok = NULL;
  err[0] = '\0';
  if (lm_tokenizer_load(dir, &tok, err) != LM_OK) {
    check_err(err);
    return 0;
  }
  round_trip(tok, text, sizeof(text) - 1);
  round_trip(tok, (const char *)data, size < 256 ? size : 256);
  lm_tokenizer_free(tok);
  return 0;
}
