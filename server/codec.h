/* codec.h - lmserve.v1 Generate and Chat requests: decoding, validation and
 * translation into engine parameters. Everything here runs before any
 * engine work, so a bad request costs one decode.
 *
 * Pure functions of their inputs (no engine, no gRPC): any thread, and the
 * request fuzzer drives them directly. */
#ifndef LM_SERVER_CODEC_H
#define LM_SERVER_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "lmserve/v1/lmserve.pb-c.h"

#define LM_CODEC_MAX_ID_BYTES   128 /* request_id */
#define LM_CODEC_MAX_STOP       32  /* stop strings and stop token ids, each */
#define LM_CODEC_MAX_STOP_BYTES 256

/* What the served model allows. */
struct lm_codec_limits {
  int vocab_size;
  int max_model_len;
  size_t max_prompt_bytes; /* text prompt / rendered chat (bytes) */
};

enum lm_codec_kind { LM_CODEC_GENERATE, LM_CODEC_CHAT };

/* A decoded request. params points into the message and the arrays here,
 * so it lives as long as this struct; prompt is not set (the caller
 * tokenizes text / chat_json). */
struct lm_codec_req {
  enum lm_codec_kind kind;
  Lmserve__V1__GenerateRequest *gen; /* LM_CODEC_GENERATE */
  Lmserve__V1__ChatRequest *chat;    /* LM_CODEC_CHAT */
  const char *text;                  /* Generate text prompt, or NULL */
  size_t text_len;
  const int32_t *prompt_ids; /* Generate token-id prompt, or NULL */
  int n_prompt_ids;
  char *chat_json; /* Chat: {"messages":...} as lm_chat_render takes */
  size_t chat_json_len;
  int seed_given; /* 0: the caller picks a random seed */
  struct lm_request_params params;
  struct lm_logit_bias *bias; /* [params.sampling.n_logit_bias] */
  const char **stop;          /* [params.n_stop] */
  int32_t *stop_ids;          /* [params.n_stop_token_ids] */
};

/* Decodes len bytes of a GenerateRequest or ChatRequest and checks every
 * field against lim. base holds the defaults (lm_request_params_init);
 * fields the client set replace them. LM_EINVAL (with the field and what
 * to fix) on bad input, LM_ERANGE when the prompt or max_tokens cannot fit
 * max_model_len, LM_ENOMEM. Free out with lm_codec_req_free on any
 * result. */
int lm_codec_decode(enum lm_codec_kind kind, const uint8_t *buf, size_t len,
                    const struct lm_codec_limits *lim, const struct lm_request_params *base,
                    struct lm_codec_req *out, char *err);
void lm_codec_req_free(struct lm_codec_req *r);

/* Checks a prompt's token ids once known (vocabulary, length against
 * max_tokens and max_model_len, after truncation). */
int lm_codec_check_prompt(const struct lm_codec_req *r, const struct lm_codec_limits *lim,
                          const int32_t *ids, int n, char *err);

#endif
