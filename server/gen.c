/* gen.c - lmserve.v1.Generation: Generate and Chat stream from the engine;
 * Tokenize, Detokenize, GetModelInfo and Abort answer at once. */
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/json.h"
#include "server/server.h"

/* ---- streaming ------------------------------------------------------------ */

/* The engine thread, request lock held: only a wake-up. */
static void gen_notify(void *arg) {
  lm_call_wake(arg);
}

static uint64_t random_seed(struct lm_srv *s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
               ((uint64_t)atomic_fetch_add(&s->id_seq, 1) << 17);
  x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

/* Sends what the engine has produced: one message, at most one in flight.
 * With the finish it carries usage and the status. */
static void pump(struct lm_call *c) {
  if (c->send_busy || c->status_sent || c->close_cancelled || !c->req) return;
  struct lm_output *o = &c->out;
  int rc = lm_request_drain(c->req, o);
  if (rc == 0) return;
  if (rc < 0) {
    lm_request_abort(c->req);
    lm_call_reply(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, "server out of memory");
    return;
  }
  double now = lm_now_s();
  if (o->n_tokens) {
    struct lm_hist *itl = &c->srv->metrics.itl;
    if (c->completion_tokens > 0) {
      double per = (now - c->last_out_s) / o->n_tokens;
      for (int i = 0; i < o->n_tokens; i++)
        lm_hist_observe(itl, per);
    }
    c->last_out_s = now;
    c->completion_tokens += o->n_tokens;
  }
  Lmserve__V1__GenerateResponse m = LMSERVE__V1__GENERATE_RESPONSE__INIT;
  Lmserve__V1__Usage u = LMSERVE__V1__USAGE__INIT;
  int want = c->want_logprobs && o->logprobs;
  Lmserve__V1__TokenLogprob lp[want ? o->n_tokens : 1], *lpp[want ? o->n_tokens : 1];
  int n_top = want && o->top_logprobs ? o->n_top : 0;
  Lmserve__V1__TopLogprob top[n_top ? o->n_tokens * n_top : 1],
      *topp[n_top ? o->n_tokens * n_top : 1];
  if (!c->sent_first) m.request_id = c->id, c->sent_first = 1;
  m.token_ids = o->token_ids;
  m.n_token_ids = (size_t)o->n_tokens;
  m.text = o->text ? o->text : "";
  if (want) {
    for (int i = 0; i < o->n_tokens; i++) {
      lmserve__v1__token_logprob__init(&lp[i]);
      lp[i].token_id = o->token_ids[i];
      lp[i].logprob = o->logprobs[i];
      for (int j = 0; j < n_top; j++) {
        Lmserve__V1__TopLogprob *t = &top[i * n_top + j];
        lmserve__v1__top_logprob__init(t);
        t->token_id = o->top_logprobs[i * n_top + j].id;
        t->logprob = o->top_logprobs[i * n_top + j].logprob;
        topp[i * n_top + j] = t;
      }
      lp[i].top_logprobs = n_top ? &topp[i * n_top] : NULL;
      lp[i].n_top_logprobs = (size_t)n_top;
      lpp[i] = &lp[i];
    }
    m.logprobs = lpp;
    m.n_logprobs = (size_t)o->n_tokens;
  }
  grpc_status_code code = GRPC_STATUS_OK;
  const char *details = "";
  if (o->finished) {
    c->finished = 1;
    c->finish_reason = o->finish_reason;
    m.finish_reason = (char *)lm_finish_reason_name(o->finish_reason);
    if (o->stop_str) {
      m.matched_stop_case = LMSERVE__V1__GENERATE_RESPONSE__MATCHED_STOP_STOP_STRING;
      m.stop_string = (char *)o->stop_str;
    } else if (o->stop_token_id >= 0) {
      m.matched_stop_case = LMSERVE__V1__GENERATE_RESPONSE__MATCHED_STOP_STOP_TOKEN_ID;
      m.stop_token_id = o->stop_token_id;
    }
    u.prompt_tokens = (uint32_t)o->usage.prompt_tokens;
    u.completion_tokens = (uint32_t)o->usage.completion_tokens;
    u.cached_tokens = (uint32_t)o->usage.cached_tokens;
    u.queue_time_seconds = o->usage.queue_time_s;
    u.time_to_first_token_seconds = o->usage.ttft_s;
    u.total_time_seconds = o->usage.total_s;
    m.usage = &u;
    c->prompt_tokens = o->usage.prompt_tokens;
    c->cached_tokens = o->usage.cached_tokens;
    c->ttft_s = o->usage.ttft_s;
    if (o->finish_reason == LM_FINISH_ERROR) {
      code = lm_status_of(o->error_code);
      if (code == GRPC_STATUS_OK) code = GRPC_STATUS_INTERNAL;
      details = o->error;
    } else if (o->finish_reason == LM_FINISH_ABORT && atomic_load(&c->srv->draining)) {
      code = GRPC_STATUS_UNAVAILABLE;
      details = "the server is shutting down; retry on another replica";
    }
  }
  grpc_byte_buffer *bb = lm_pack(&m.base);
  grpc_slice det = grpc_slice_from_copied_string(details);
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_MESSAGE;
  ops[0].data.send_message.send_message = bb;
  if (o->finished) {
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = code;
    ops[1].data.send_status_from_server.status_details = &det;
    c->code = code;
    snprintf(c->msg, sizeof(c->msg), "%s", details);
  }
  lm_call_batch(c, ops, o->finished ? 2 : 1, o->finished ? LM_TAG_STATUS : LM_TAG_SEND);
  grpc_byte_buffer_destroy(bb);
  grpc_slice_unref(det);
}

static int encode_prompt(struct lm_call *c, struct lm_codec_req *r, lm_tokens *toks, char *err) {
  struct lm_srv *s = c->srv;
  if (r->prompt_ids) return LM_OK;
  if (r->kind == LM_CODEC_GENERATE)
    return lm_tokenizer_encode(s->tok, r->text, r->text_len, 1, toks, err);
  if (!s->chat) return lm_errf(err, LM_EUNSUP, "this model has no chat template; use Generate");
  lm_json_doc *doc = NULL;
  int rc = lm_json_parse(r->chat_json, r->chat_json_len, &doc, err);
  if (rc == LM_OK) rc = lm_chat_encode(s->chat, s->tok, lm_json_root(doc), toks, err);
  lm_json_free(doc);
  return rc;
}

static void gen_stream_start(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  char err[LM_ERR_LEN] = "";
  struct lm_codec_req r;
  lm_tokens toks = {0};
  struct lm_request_params base;
  grpc_slice sl = lm_read_payload(c->payload);
  int rc;
  if (atomic_load(&s->draining)) {
    rc = lm_errf(err, LM_ECLOSED, "the server is shutting down; retry on another replica");
    memset(&r, 0, sizeof(r));
    goto out;
  }
  lm_request_params_init(s->engine, &base);
  rc = lm_codec_decode(c->method == LM_M_CHAT ? LM_CODEC_CHAT : LM_CODEC_GENERATE,
                       GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), &s->lim, &base, &r, err);
  if (rc) goto out;
  if (r.params.request_id && *r.params.request_id)
    snprintf(c->id, sizeof(c->id), "%s", r.params.request_id);
  if (!r.seed_given) r.params.sampling.seed = random_seed(s);
  if ((rc = encode_prompt(c, &r, &toks, err))) goto out;
  const int32_t *ids = r.prompt_ids ? r.prompt_ids : toks.ids;
  int n = r.prompt_ids ? r.n_prompt_ids : (int)toks.n;
  if ((rc = lm_codec_check_prompt(&r, &s->lim, ids, n, err))) goto out;
  r.params.prompt = ids;
  r.params.n_prompt = n;
  r.params.notify = gen_notify;
  r.params.notify_arg = c;
  c->prompt_tokens = n;
  c->want_logprobs = r.params.logprobs;
  c->last_out_s = lm_now_s();
  rc = lm_engine_submit(s->engine, &r.params, &c->req, err);
  if (rc) goto out;
  snprintf(c->id, sizeof(c->id), "%s", lm_request_id(c->req));
  atomic_fetch_add(&s->live_streams, 1);
  /* x-request-id now, so a client knows the id before the first token */
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  c->md_id.key = grpc_slice_from_static_string("x-request-id");
  c->md_id.value = grpc_slice_from_static_string(c->id);
  op.data.send_initial_metadata.count = 1;
  op.data.send_initial_metadata.metadata = &c->md_id;
  c->started = 1;
  lm_call_batch(c, &op, 1, LM_TAG_SEND);
out:
  if (rc) {
    if (rc == LM_EUNSUP) {
      c->code = GRPC_STATUS_FAILED_PRECONDITION;
      lm_call_reply(c, NULL, GRPC_STATUS_FAILED_PRECONDITION, err);
    } else {
      lm_call_reply(c, NULL, lm_status_of(rc), err);
    }
  }
  lm_tokens_free(&toks);
  lm_codec_req_free(&r);
  grpc_slice_unref(sl);
}

/* ---- unary methods -------------------------------------------------------- */

static void tokenize(struct lm_call *c, const uint8_t *buf, size_t len) {
  char err[LM_ERR_LEN];
  Lmserve__V1__TokenizeRequest *q = lmserve__v1__tokenize_request__unpack(NULL, len, buf);
  lm_tokens toks = {0};
  if (!q) {
    lm_call_reply(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "malformed lmserve.v1.TokenizeRequest");
    return;
  }
  size_t n = strlen(q->text);
  int add = q->add_special_tokens_opt_case ? q->add_special_tokens : 1;
  int rc = n > c->srv->lim.max_prompt_bytes
               ? lm_errf(err, LM_ERANGE, "text: %zu bytes, the server accepts at most %zu", n,
                         c->srv->lim.max_prompt_bytes)
               : lm_tokenizer_encode(c->srv->tok, q->text, n, add, &toks, err);
  if (rc) {
    lm_call_reply(c, NULL, lm_status_of(rc), err);
  } else {
    Lmserve__V1__TokenizeResponse m = LMSERVE__V1__TOKENIZE_RESPONSE__INIT;
    m.token_ids = toks.ids;
    m.n_token_ids = toks.n;
    m.max_model_len = (uint32_t)c->srv->info.max_model_len;
    lm_call_reply(c, &m.base, GRPC_STATUS_OK, NULL);
  }
  lm_tokens_free(&toks);
  lmserve__v1__tokenize_request__free_unpacked(q, NULL);
}

static void detokenize(struct lm_call *c, const uint8_t *buf, size_t len) {
  char err[LM_ERR_LEN];
  Lmserve__V1__DetokenizeRequest *q = lmserve__v1__detokenize_request__unpack(NULL, len, buf);
  char *text = NULL;
  size_t n = 0;
  if (!q) {
    lm_call_reply(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "malformed lmserve.v1.DetokenizeRequest");
    return;
  }
  int rc = LM_OK, vocab = c->srv->lim.vocab_size;
  for (size_t i = 0; i < q->n_token_ids && !rc; i++)
    if (q->token_ids[i] < 0 || q->token_ids[i] >= vocab)
      rc = lm_errf(err, LM_EINVAL, "token_ids[%zu]: %d, must be in [0, %d)", i, q->token_ids[i],
                   vocab);
  int skip = q->skip_special_tokens_opt_case ? q->skip_special_tokens : 1;
  if (!rc)
    rc = lm_tokenizer_decode(c->srv->tok, q->token_ids, q->n_token_ids, skip, &text, &n, err);
  if (rc) {
    lm_call_reply(c, NULL, lm_status_of(rc), err);
  } else {
    Lmserve__V1__DetokenizeResponse m = LMSERVE__V1__DETOKENIZE_RESPONSE__INIT;
    m.text = text;
    lm_call_reply(c, &m.base, GRPC_STATUS_OK, NULL);
  }
  free(text);
  lmserve__v1__detokenize_request__free_unpacked(q, NULL);
}

static void model_info(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  const struct lm_engine_info *i = &s->info;
  Lmserve__V1__GetModelInfoResponse m = LMSERVE__V1__GET_MODEL_INFO_RESPONSE__INIT;
  m.served_model_name = (char *)s->model_name;
  m.architecture = (char *)i->architecture;
  m.max_model_len = (uint32_t)i->max_model_len;
  m.vocab_size = (uint32_t)i->vocab_size;
  m.dtype = (char *)i->dtype;
  m.backend = (char *)i->backend;
  m.kv_capacity_tokens = (uint64_t)i->kv_capacity_tokens;
  m.block_size = (uint32_t)i->block_size;
  m.num_kv_blocks = (uint32_t)i->n_kv_blocks;
  m.max_num_seqs = (uint32_t)i->max_num_seqs;
  m.max_num_batched_tokens = (uint32_t)i->max_num_batched_tokens;
  m.max_waiting = (uint32_t)i->max_waiting;
  m.max_decode_slowdown = i->max_decode_slowdown;
  m.layered_prefill = i->layered_prefill != 0;
  m.max_request_bytes = (uint32_t)s->opts.max_request_bytes;
  m.has_chat_template = s->chat != NULL;
  const char *bos = lm_tokenizer_bos_token(s->tok), *eos = lm_tokenizer_eos_token(s->tok);
  m.bos_token = (char *)(bos ? bos : "");
  m.eos_token = (char *)(eos ? eos : "");
  lm_call_reply(c, &m.base, GRPC_STATUS_OK, NULL);
}

static void abort_req(struct lm_call *c, const uint8_t *buf, size_t len) {
  Lmserve__V1__AbortRequest *q = lmserve__v1__abort_request__unpack(NULL, len, buf);
  if (!q || !*q->request_id) {
    lm_call_reply(c, NULL, GRPC_STATUS_INVALID_ARGUMENT,
                  q ? "request_id: empty; name the request to abort"
                    : "malformed lmserve.v1.AbortRequest");
  } else if (lm_engine_abort(c->srv->engine, q->request_id) == LM_ENOENT) {
    snprintf(c->msg, sizeof(c->msg), "no live request with id '%.200s'", q->request_id);
    lm_call_reply(c, NULL, GRPC_STATUS_NOT_FOUND, c->msg);
  } else {
    Lmserve__V1__AbortResponse m = LMSERVE__V1__ABORT_RESPONSE__INIT;
    lm_call_reply(c, &m.base, GRPC_STATUS_OK, NULL);
  }
  if (q) lmserve__v1__abort_request__free_unpacked(q, NULL);
}

void lm_gen_start(struct lm_call *c) {
  if (c->method == LM_M_GENERATE || c->method == LM_M_CHAT) {
    gen_stream_start(c);
    return;
  }
  grpc_slice sl = lm_read_payload(c->payload);
  const uint8_t *buf = GRPC_SLICE_START_PTR(sl);
  size_t len = GRPC_SLICE_LENGTH(sl);
  switch (c->method) {
  case LM_M_TOKENIZE: tokenize(c, buf, len); break;
  case LM_M_DETOKENIZE: detokenize(c, buf, len); break;
  case LM_M_MODEL_INFO: model_info(c); break;
  default: abort_req(c, buf, len);
  }
  grpc_slice_unref(sl);
}

void lm_gen_event(struct lm_call *c, enum lm_tag_kind k, int ok) {
  if (!c->req) return;
  if (k == LM_TAG_CLOSE && c->close_cancelled) {
    lm_request_abort(c->req); /* leaves the engine within one step */
    return;
  }
  if (k == LM_TAG_SEND && !ok) { /* the stream is gone: stop the work */
    lm_request_abort(c->req);
    return;
  }
  if (k == LM_TAG_SEND || k == LM_TAG_NOTIFY) pump(c);
}

/* One log line per request, metrics, and the engine reference. */
void lm_gen_finish(struct lm_call *c) {
  struct lm_srv *s = c->srv;
  double dur = lm_now_s() - c->t_start;
  if (c->method == LM_M_GENERATE || c->method == LM_M_CHAT) {
    struct lm_metrics *m = &s->metrics;
    if (c->req) {
      lm_request_release(c->req);
      c->req = NULL;
      atomic_fetch_sub(&s->live_streams, 1);
      atomic_fetch_add(&m->prompt_tokens, (unsigned long long)c->prompt_tokens);
      atomic_fetch_add(&m->generation_tokens, (unsigned long long)c->completion_tokens);
      if (c->finished) {
        lm_hist_observe(&m->e2e, c->out.usage.total_s);
        lm_hist_observe(&m->queue, c->out.usage.queue_time_s);
        if (c->completion_tokens) lm_hist_observe(&m->ttft, c->out.usage.ttft_s);
      }
    }
    lm_srv_log(s, c->code == GRPC_STATUS_OK ? LM_LOG_INFO : LM_LOG_WARN,
               "%s id=%s peer=%s prompt_tokens=%d output_tokens=%d cached_tokens=%d ttft=%.4fs "
               "duration=%.4fs status=%d finish=%s%s%s",
               lm_method_name[c->method], c->id[0] ? c->id : "-", c->peer, c->prompt_tokens,
               c->completion_tokens, c->cached_tokens, c->ttft_s, dur, (int)c->code,
               c->finished ? lm_finish_reason_name(c->finish_reason) : "none",
               c->msg[0] ? " message=" : "", c->msg);
  } else {
    lm_srv_log(s, LM_LOG_DEBUG, "%s peer=%s duration=%.4fs status=%d%s%s",
               lm_method_name[c->method], c->peer, dur, (int)c->code, c->msg[0] ? " message=" : "",
               c->msg);
  }
}
