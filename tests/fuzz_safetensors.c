/* fuzz_safetensors.c - libFuzzer target: any bytes as a whole safetensors
 * file. Whatever lm_st_parse accepts must be safe to walk: every tensor's
 * bytes are read and every name found again by lookup. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[LM_ERR_LEN];
  lm_st_file *f = NULL;
  if (lm_st_parse("fuzz.safetensors", data, size, &f, err) != LM_OK) {
    /* a failure always leaves one line */
    if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n')) __builtin_trap();
    return 0;
  }
  volatile unsigned sum = 0;
  for (size_t i = 0; i < lm_st_count(f); i++) {
    const struct lm_st_tensor *t = lm_st_tensor_at(f, i);
    if (lm_st_find(f, t->name) != t) __builtin_trap();
    const uint8_t *p = t->data;
    if (t->n_bytes) {
      if (p < data || p + t->n_bytes > data + size) __builtin_trap();
      sum += p[0] + p[t->n_bytes - 1];
    }
  }
  (void)sum;
  lm_st_close(f);
  return 0;
}
