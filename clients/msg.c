/* msg.c - lmserve.v1 messages through protobuf-c. */
#include "clients/msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
#include "lmserve/v1/lmserve.pb-c.h"

/* Packs m into a malloc'd buffer. */
static int pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len, char *err) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *p = malloc(n ? n : 1);
  if (!p) return lm_errf(err, LM_ENOMEM, "out of memory for a %zu-byte request", n);
  *len = protobuf_c_message_pack(m, p);
  *buf = p;
  return LM_OK;
}

/* Fills the sampling and stopping messages both requests share. */
static void fill_params(const struct lmc_request *r, Lmserve__V1__SamplingParams *s,
                        Lmserve__V1__StoppingParams *t) {
  if (r->has_temperature) {
    s->temperature_opt_case = LMSERVE__V1__SAMPLING_PARAMS__TEMPERATURE_OPT_TEMPERATURE;
    s->temperature = (float)r->temperature;
  }
  if (r->top_p > 0) {
    s->top_p_opt_case = LMSERVE__V1__SAMPLING_PARAMS__TOP_P_OPT_TOP_P;
    s->top_p = (float)r->top_p;
  }
  if (r->top_k > 0) {
    s->top_k_opt_case = LMSERVE__V1__SAMPLING_PARAMS__TOP_K_OPT_TOP_K;
    s->top_k = r->top_k;
  }
  if (r->has_seed) {
    s->seed_opt_case = LMSERVE__V1__SAMPLING_PARAMS__SEED_OPT_SEED;
    s->seed = r->seed;
  }
  t->max_tokens = r->max_tokens > 0 ? (uint32_t)r->max_tokens : 0;
  t->n_stop = (size_t)r->n_stop;
  t->stop = (char **)r->stop;
  t->ignore_eos = r->ignore_eos != 0;
}

int lmc_encode_generate(const struct lmc_request *r, uint8_t **buf, size_t *len, char *err) {
  Lmserve__V1__GenerateRequest m = LMSERVE__V1__GENERATE_REQUEST__INIT;
  Lmserve__V1__SamplingParams s = LMSERVE__V1__SAMPLING_PARAMS__INIT;
  Lmserve__V1__StoppingParams t = LMSERVE__V1__STOPPING_PARAMS__INIT;
  Lmserve__V1__TokenIds ids = LMSERVE__V1__TOKEN_IDS__INIT;
  if (r->ids) {
    ids.n_ids = (size_t)r->n_ids;
    ids.ids = (int32_t *)r->ids;
    m.prompt_case = LMSERVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS;
    m.token_ids = &ids;
  } else {
    m.prompt_case = LMSERVE__V1__GENERATE_REQUEST__PROMPT_TEXT;
    m.text = (char *)(r->text ? r->text : "");
  }
  fill_params(r, &s, &t);
  m.sampling = &s;
  m.stopping = &t;
  if (r->request_id) m.request_id = (char *)r->request_id;
  return pack(&m.base, buf, len, err);
}

int lmc_encode_chat(const struct lmc_request *r, uint8_t **buf, size_t *len, char *err) {
  Lmserve__V1__ChatRequest m = LMSERVE__V1__CHAT_REQUEST__INIT;
  Lmserve__V1__SamplingParams s = LMSERVE__V1__SAMPLING_PARAMS__INIT;
  Lmserve__V1__StoppingParams t = LMSERVE__V1__STOPPING_PARAMS__INIT;
  int n = r->n_messages, rc;
  Lmserve__V1__ChatMessage *msgs = calloc((size_t)(n ? n : 1), sizeof(*msgs));
  Lmserve__V1__ChatMessage **ptrs = calloc((size_t)(n ? n : 1), sizeof(*ptrs));
  if (!msgs || !ptrs) {
    rc = lm_errf(err, LM_ENOMEM, "out of memory for %d chat messages", n);
    goto err;
  }
  for (int i = 0; i < n; i++) {
    Lmserve__V1__ChatMessage init = LMSERVE__V1__CHAT_MESSAGE__INIT;
    msgs[i] = init;
    msgs[i].role = (char *)r->roles[i];
    msgs[i].content = (char *)r->contents[i];
    ptrs[i] = &msgs[i];
  }
  m.n_messages = (size_t)n;
  m.messages = ptrs;
  fill_params(r, &s, &t);
  m.sampling = &s;
  m.stopping = &t;
  if (r->request_id) m.request_id = (char *)r->request_id;
  rc = pack(&m.base, buf, len, err);
err:
  free(msgs);
  free(ptrs);
  return rc;
}

int lmc_decode_response(const uint8_t *buf, size_t len, struct lmc_response *out, char *err) {
  memset(out, 0, sizeof(*out));
  Lmserve__V1__GenerateResponse *m = lmserve__v1__generate_response__unpack(NULL, len, buf);
  if (!m) return lm_errf(err, LM_EFORMAT, "a malformed GenerateResponse (%zu bytes)", len);
  out->pb = m;
  out->token_ids = m->token_ids;
  out->n_tokens = (int)m->n_token_ids;
  out->text = m->text ? m->text : "";
  out->request_id = m->request_id ? m->request_id : "";
  out->finish_reason = m->finish_reason ? m->finish_reason : "";
  if (m->usage) {
    out->has_usage = 1;
    out->prompt_tokens = (int)m->usage->prompt_tokens;
    out->completion_tokens = (int)m->usage->completion_tokens;
    out->cached_tokens = (int)m->usage->cached_tokens;
    out->queue_time_s = m->usage->queue_time_seconds;
    out->ttft_s = m->usage->time_to_first_token_seconds;
    out->total_s = m->usage->total_time_seconds;
  }
  return LM_OK;
}

void lmc_response_free(struct lmc_response *r) {
  if (!r) return;
  if (r->pb) lmserve__v1__generate_response__free_unpacked(r->pb, NULL);
  memset(r, 0, sizeof(*r));
}

int lmc_encode_model_info_request(uint8_t **buf, size_t *len, char *err) {
  Lmserve__V1__GetModelInfoRequest m = LMSERVE__V1__GET_MODEL_INFO_REQUEST__INIT;
  return pack(&m.base, buf, len, err);
}

int lmc_decode_model_info(const uint8_t *buf, size_t len, struct lmc_model_info *out, char *err) {
  Lmserve__V1__GetModelInfoResponse *m =
      lmserve__v1__get_model_info_response__unpack(NULL, len, buf);
  if (!m) return lm_errf(err, LM_EFORMAT, "a malformed GetModelInfoResponse (%zu bytes)", len);
  snprintf(out->model, sizeof(out->model), "%s", m->served_model_name ? m->served_model_name : "");
  out->vocab_size = (int)m->vocab_size;
  out->max_model_len = (int)m->max_model_len;
  lmserve__v1__get_model_info_response__free_unpacked(m, NULL);
  return LM_OK;
}
