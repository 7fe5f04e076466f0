/* tokenizer_bench.c - encoding speed on one thread.
 *
 *   tokenizer_bench TOKENIZER_DIR TEXT_FILE [CHUNK_BYTES]
 *
 * Loads the tokenizer (its word cache starts empty), cuts the text into
 * chunks of about CHUNK_BYTES (default 65536) at line ends, encodes them one
 * after the other and prints MB/s and tokens. tests/tokenizer_bench.sh runs
 * it next to the official library on the same chunks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
#include "engine/tokenizer.h"

int main(int argc, char **argv) {
  char err[LM_ERR_LEN];
  if (argc < 3) {
    fprintf(stderr, "usage: %s TOKENIZER_DIR TEXT_FILE [CHUNK_BYTES]\n", argv[0]);
    return 2;
  }
  size_t chunk = argc > 3 ? (size_t)atol(argv[3]) : 65536;
  char *text;
  size_t len;
  if (lm_read_file(argv[2], &text, &len, err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  lm_tokenizer *tok;
  double t0 = lm_now_s();
  if (lm_tokenizer_load(argv[1], &tok, err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  double t_load = lm_now_s() - t0;
  lm_tokens ids = {0};
  size_t n_tokens = 0;
  t0 = lm_now_s();
  for (size_t at = 0; at < len;) {
    size_t end = at + chunk < len ? at + chunk : len;
    while (end < len && text[end - 1] != '\n')
      end++;
    ids.n = 0;
    if (lm_tokenizer_encode(tok, text + at, end - at, 0, &ids, err)) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    n_tokens += ids.n;
    at = end;
  }
  double dt = lm_now_s() - t0;
  printf("lmserve: %.2f MB/s (%zu bytes, %zu tokens, %.3f s; load %.2f s)\n", len / dt / 1e6, len,
         n_tokens, dt, t_load);
  lm_tokens_free(&ids);
  lm_tokenizer_free(tok);
  free(text);
  return 0;
}
