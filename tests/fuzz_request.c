/* fuzz_request.c - libFuzzer target: any bytes as a GenerateRequest or
 * ChatRequest (the first byte picks which), through the server's decoding
 * and validation. Accepted requests must hand the engine only values in
 * range, and a Chat request's JSON must always parse. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/json.h"
#include "server/codec.h"

#define VOCAB   1000
#define MAX_LEN 512

static void check_params(const struct lm_codec_req *r) {
  const struct lm_request_params *p = &r->params;
  const struct lm_sampling *s = &p->sampling;
  if (!(s->temperature >= 0 && s->temperature <= 100) || s->top_k < 0 ||
      !(s->top_p >= 0 && s->top_p <= 1) || !(s->min_p >= 0 && s->min_p <= 1) ||
      !(s->repetition_penalty >= 0) || !isfinite(s->presence_penalty) ||
      !isfinite(s->frequency_penalty))
    __builtin_trap();
  for (size_t i = 0; i < s->n_logit_bias; i++)
    if (s->logit_bias[i].id < 0 || s->logit_bias[i].id >= VOCAB || !isfinite(s->logit_bias[i].bias))
      __builtin_trap();
  if (p->max_tokens < 0 || p->max_tokens > MAX_LEN || p->min_tokens < 0 || p->top_logprobs < 0 ||
      p->top_logprobs > LM_MAX_TOP_LOGPROBS || p->truncate_prompt_tokens < 0 ||
      p->n_stop > LM_CODEC_MAX_STOP || p->n_stop_token_ids > LM_CODEC_MAX_STOP)
    __builtin_trap();
  for (int i = 0; i < p->n_stop_token_ids; i++)
    if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= VOCAB) __builtin_trap();
  for (int i = 0; i < p->n_stop; i++)
    if (!p->stop[i][0]) __builtin_trap();
  if (p->request_id && strlen(p->request_id) > LM_CODEC_MAX_ID_BYTES) __builtin_trap();
  if (r->kind == LM_CODEC_GENERATE) {
    if (!r->text == !r->prompt_ids) __builtin_trap();
    for (int i = 0; i < r->n_prompt_ids; i++)
      if (r->prompt_ids[i] < 0 || r->prompt_ids[i] >= VOCAB) __builtin_trap();
  } else {
    char err[LM_ERR_LEN];
    lm_json_doc *doc = NULL;
    if (!r->chat_json || lm_json_parse(r->chat_json, r->chat_json_len, &doc, err) != LM_OK)
      __builtin_trap();
    if (!lm_json_get_type(lm_json_root(doc), "messages", LM_JSON_ARRAY)) __builtin_trap();
    lm_json_free(doc);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  enum lm_codec_kind kind = data[0] & 1 ? LM_CODEC_CHAT : LM_CODEC_GENERATE;
  struct lm_codec_limits lim = {VOCAB, MAX_LEN, 4096};
  struct lm_request_params base;
  memset(&base, 0, sizeof(base));
  base.skip_special_tokens = 1;
  struct lm_codec_req r;
  char err[LM_ERR_LEN];
  int rc = lm_codec_decode(kind, data + 1, size - 1, &lim, &base, &r, err);
  if (rc == LM_OK) {
    check_params(&r);
    if (r.prompt_ids) {
      int rc2 = lm_codec_check_prompt(&r, &lim, r.prompt_ids, r.n_prompt_ids, err);
      if (rc2 != LM_OK && rc2 != LM_ERANGE && rc2 != LM_EINVAL) __builtin_trap();
    }
  } else if (rc != LM_EINVAL && rc != LM_ERANGE && rc != LM_ENOMEM) {
    __builtin_trap();
  }
  if (rc != LM_OK && (!memchr(err, '\0', sizeof(err)) || !err[0])) __builtin_trap();
  lm_codec_req_free(&r);
  return 0;
}
