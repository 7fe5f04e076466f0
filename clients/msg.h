/* msg.h - the lmserve.v1 messages lmserve-client sends and reads, behind
 * plain structs so the commands do not depend on protobuf-c's layout.
 * Encoders return a malloc'd buffer the caller frees. */
#ifndef LMC_MSG_H
#define LMC_MSG_H

#include <stddef.h>
#include <stdint.h>

#define LMC_METHOD_GENERATE   "/lmserve.v1.Generation/Generate"
#define LMC_METHOD_CHAT       "/lmserve.v1.Generation/Chat"
#define LMC_METHOD_MODEL_INFO "/lmserve.v1.Generation/GetModelInfo"

/* One Generate or Chat request: a prompt (text or token ids, for Generate),
 * sampling and stopping. Zero values leave the server's defaults. */
struct lmc_request {
  const char *text;   /* Generate: prompt text, or */
  const int32_t *ids; /* [n_ids] prompt token ids */
  int n_ids;
  const char *const *roles;    /* Chat: [n_messages] */
  const char *const *contents; /* Chat: [n_messages] */
  int n_messages;
  int max_tokens;      /* 0: the rest of the context */
  int has_temperature; /* 0: the model's generation_config.json value */
  double temperature;  /* 0: greedy */
  double top_p;        /* 0: unset */
  int top_k;           /* 0: unset */
  int has_seed;
  uint64_t seed;
  const char *const *stop; /* [n_stop] stop strings */
  int n_stop;
  int ignore_eos;
  const char *request_id; /* NULL: the server assigns one */
};

int lmc_encode_generate(const struct lmc_request *r, uint8_t **buf, size_t *len, char *err);
int lmc_encode_chat(const struct lmc_request *r, uint8_t **buf, size_t *len, char *err);

/* One stream message. Pointers live until lmc_response_free. */
struct lmc_response {
  const int32_t *token_ids; /* [n_tokens] */
  int n_tokens;
  const char *text;          /* the text delta ("" when none) */
  const char *request_id;    /* "" when absent (after the first message) */
  const char *finish_reason; /* "" until the last message */
  int has_usage;
  int prompt_tokens, completion_tokens, cached_tokens;
  double queue_time_s, ttft_s, total_s;
  void *pb; /* the unpacked message */
};

int lmc_decode_response(const uint8_t *buf, size_t len, struct lmc_response *out, char *err);
void lmc_response_free(struct lmc_response *r);

/* GetModelInfo. */
struct lmc_model_info {
  char model[256];
  int vocab_size;
  int max_model_len;
};
int lmc_encode_model_info_request(uint8_t **buf, size_t *len, char *err);
int lmc_decode_model_info(const uint8_t *buf, size_t len, struct lmc_model_info *out, char *err);

#endif
