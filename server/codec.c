/* codec.c - GenerateRequest / ChatRequest -> lm_request_params, with every
 * field checked before the engine sees it. */
#include "server/codec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json.h"
#include "engine/lm.h"

/* protobuf-c unpacks recursively; a hostile message of nested Structs
 * could exhaust the stack before any check runs, so the wire is walked
 * first with the message descriptors and nesting is bounded. */
#define MAX_DEPTH 32

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

static int wire_ok(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end,
                   int depth) {
  if (depth > MAX_DEPTH) return 0;
  while (p < end) {
    uint64_t key, v;
    if (varint(&p, end, &key)) return 0;
    switch (key & 7) {
    case 0:
      if (varint(&p, end, &v)) return 0;
      break;
    case 1:
      if (end - p < 8) return 0;
      p += 8;
      break;
    case 5:
      if (end - p < 4) return 0;
      p += 4;
      break;
    case 2: {
      if (varint(&p, end, &v) || v > (uint64_t)(end - p)) return 0;
      const ProtobufCFieldDescriptor *f =
          d ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3)) : NULL;
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && !wire_ok(f->descriptor, p, p + v, depth + 1))
        return 0;
      p += v;
      break;
    }
    default: return 0;
    }
  }
  return 1;
}

/* ---- chat request -> JSON ------------------------------------------------ */

static void put_str(FILE *f, const char *s) {
  lm_json_write_str(f, s ? s : "", s ? strlen(s) : 0);
}

static void put_value(FILE *f, const Google__Protobuf__Value *v);

static void put_struct(FILE *f, const Google__Protobuf__Struct *s) {
  fputc('{', f);
  for (size_t i = 0; s && i < s->n_fields; i++) {
    if (i) fputc(',', f);
    put_str(f, s->fields[i]->key);
    fputc(':', f);
    put_value(f, s->fields[i]->value);
  }
  fputc('}', f);
}

static void put_value(FILE *f, const Google__Protobuf__Value *v) {
  if (!v) {
    fputs("null", f);
    return;
  }
  switch (v->kind_case) {
  case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
    if (isfinite(v->number_value))
      fprintf(f, "%.17g", v->number_value);
    else
      fputs("null", f);
    break;
  case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE: put_str(f, v->string_value); break;
  case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE: fputs(v->bool_value ? "true" : "false", f); break;
  case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE: put_struct(f, v->struct_value); break;
  case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
    fputc('[', f);
    for (size_t i = 0; v->list_value && i < v->list_value->n_values; i++) {
      if (i) fputc(',', f);
      put_value(f, v->list_value->values[i]);
    }
    fputc(']', f);
    break;
  default: fputs("null", f);
  }
}

/* Tool-call arguments are JSON text; templates expect an object (they
 * apply tojson themselves), so one that parses as an object goes in as
 * one and anything else as the string it is. */
static void put_arguments(FILE *f, const char *args) {
  lm_json_doc *doc = NULL;
  size_t n = args ? strlen(args) : 0;
  if (n && lm_json_parse(args, n, &doc, NULL) == LM_OK && lm_json_root(doc)->type == LM_JSON_OBJECT)
    fwrite(args, 1, n, f);
  else
    put_str(f, args);
  lm_json_free(doc);
}

static int chat_json(const Lmserve__V1__ChatRequest *c, char **out, size_t *len, char *err) {
  FILE *f = open_memstream(out, len);
  if (!f) return lm_errf(err, LM_ENOMEM, "out of memory rendering the chat request");
  fputs("{\"messages\":[", f);
  for (size_t i = 0; i < c->n_messages; i++) {
    const Lmserve__V1__ChatMessage *m = c->messages[i];
    if (i) fputc(',', f);
    fputs("{\"role\":", f);
    put_str(f, m->role);
    fputs(",\"content\":", f);
    if (m->n_tool_calls && !*m->content)
      fputs("null", f); /* as OpenAI clients send an assistant's tool-call turn */
    else
      put_str(f, m->content);
    if (*m->name) fputs(",\"name\":", f), put_str(f, m->name);
    if (*m->tool_call_id) fputs(",\"tool_call_id\":", f), put_str(f, m->tool_call_id);
    if (m->n_tool_calls) {
      fputs(",\"tool_calls\":[", f);
      for (size_t j = 0; j < m->n_tool_calls; j++) {
        const Lmserve__V1__ToolCall *t = m->tool_calls[j];
        const Lmserve__V1__FunctionCall *fn = t->function;
        if (j) fputc(',', f);
        fputs("{\"id\":", f);
        put_str(f, t->id);
        fputs(",\"type\":", f);
        put_str(f, *t->type ? t->type : "function");
        fputs(",\"function\":{\"name\":", f);
        put_str(f, fn ? fn->name : "");
        fputs(",\"arguments\":", f);
        put_arguments(f, fn ? fn->arguments : "");
        fputs("}}", f);
      }
      fputc(']', f);
    }
    fputc('}', f);
  }
  fputc(']', f);
  if (c->n_tools) {
    fputs(",\"tools\":[", f);
    for (size_t i = 0; i < c->n_tools; i++) {
      const Lmserve__V1__Tool *t = c->tools[i];
      const Lmserve__V1__FunctionDefinition *fn = t->function;
      if (i) fputc(',', f);
      fputs("{\"type\":", f);
      put_str(f, *t->type ? t->type : "function");
      fputs(",\"function\":{\"name\":", f);
      put_str(f, fn ? fn->name : "");
      if (fn && *fn->description) fputs(",\"description\":", f), put_str(f, fn->description);
      if (fn && fn->parameters) fputs(",\"parameters\":", f), put_struct(f, fn->parameters);
      fputs("}}", f);
    }
    fputc(']', f);
  }
  fprintf(f, ",\"add_generation_prompt\":%s",
          c->add_generation_prompt_opt_case ? (c->add_generation_prompt ? "true" : "false")
                                            : "true");
  if (c->chat_template_kwargs) {
    fputs(",\"chat_template_kwargs\":", f);
    put_struct(f, c->chat_template_kwargs);
  }
  fputc('}', f);
  if (fclose(f) != 0 || !*out)
    return lm_errf(err, LM_ENOMEM, "out of memory rendering the chat request");
  return LM_OK;
}

/* ---- validation ----------------------------------------------------------- */

static int id_char_ok(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         strchr("-_.:/@+=", ch);
}

static int check_id(const char *id, char *err) {
  size_t n = strlen(id);
  if (n > LM_CODEC_MAX_ID_BYTES)
    return lm_errf(err, LM_EINVAL, "request_id: %zu bytes, at most %d allowed", n,
                   LM_CODEC_MAX_ID_BYTES);
  for (size_t i = 0; i < n; i++)
    if (!id_char_ok(id[i]))
      return lm_errf(err, LM_EINVAL,
                     "request_id: byte %zu (0x%02x) not allowed; use letters, digits and -_.:/@+=",
                     i, (unsigned char)id[i]);
  return LM_OK;
}

static int check_sampling(const Lmserve__V1__SamplingParams *s, const struct lm_codec_limits *lim,
                          struct lm_codec_req *r, char *err) {
  struct lm_sampling *o = &r->params.sampling;
  if (!s) return LM_OK;
  if (s->temperature_opt_case) {
    if (!(s->temperature >= 0 && s->temperature <= 100))
      return lm_errf(err, LM_EINVAL, "sampling.temperature: %g, must be in [0, 100] (0: greedy)",
                     s->temperature);
    o->temperature = s->temperature;
  }
  if (s->top_k_opt_case) {
    if (s->top_k < -1)
      return lm_errf(err, LM_EINVAL, "sampling.top_k: %d, must be >= 0 (0 or -1: off)", s->top_k);
    o->top_k = s->top_k < 0 ? 0 : s->top_k;
  }
  if (s->top_p_opt_case) {
    if (!(s->top_p > 0 && s->top_p <= 1))
      return lm_errf(err, LM_EINVAL, "sampling.top_p: %g, must be in (0, 1]", s->top_p);
    o->top_p = s->top_p;
  }
  if (s->min_p_opt_case) {
    if (!(s->min_p >= 0 && s->min_p <= 1))
      return lm_errf(err, LM_EINVAL, "sampling.min_p: %g, must be in [0, 1]", s->min_p);
    o->min_p = s->min_p;
  }
  if (s->seed_opt_case) {
    o->seed = s->seed;
    r->seed_given = 1;
  }
  if (s->repetition_penalty_opt_case) {
    if (!(s->repetition_penalty > 0 && s->repetition_penalty <= 100))
      return lm_errf(err, LM_EINVAL, "sampling.repetition_penalty: %g, must be in (0, 100]",
                     s->repetition_penalty);
    o->repetition_penalty = s->repetition_penalty;
  }
  if (!(s->presence_penalty >= -2 && s->presence_penalty <= 2))
    return lm_errf(err, LM_EINVAL, "sampling.presence_penalty: %g, must be in [-2, 2]",
                   s->presence_penalty);
  if (!(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
    return lm_errf(err, LM_EINVAL, "sampling.frequency_penalty: %g, must be in [-2, 2]",
                   s->frequency_penalty);
  o->presence_penalty = s->presence_penalty;
  o->frequency_penalty = s->frequency_penalty;
  if (s->n_logit_bias > (size_t)lim->vocab_size)
    return lm_errf(err, LM_EINVAL, "sampling.logit_bias: %zu entries, the vocabulary has %d",
                   s->n_logit_bias, lim->vocab_size);
  if (s->n_logit_bias) {
    r->bias = calloc(s->n_logit_bias, sizeof(*r->bias));
    if (!r->bias) return lm_errf(err, LM_ENOMEM, "out of memory (logit_bias)");
    for (size_t i = 0; i < s->n_logit_bias; i++) {
      const Lmserve__V1__SamplingParams__LogitBiasEntry *b = s->logit_bias[i];
      if (b->key < 0 || b->key >= lim->vocab_size)
        return lm_errf(err, LM_EINVAL, "sampling.logit_bias: token id %d, must be in [0, %d)",
                       b->key, lim->vocab_size);
      if (!(b->value >= -100 && b->value <= 100))
        return lm_errf(err, LM_EINVAL, "sampling.logit_bias[%d]: %g, must be in [-100, 100]",
                       b->key, b->value);
      r->bias[i] = (struct lm_logit_bias){b->key, b->value};
    }
    o->logit_bias = r->bias;
    o->n_logit_bias = s->n_logit_bias;
  }
  return LM_OK;
}

static int check_stopping(const Lmserve__V1__StoppingParams *s, const struct lm_codec_limits *lim,
                          struct lm_codec_req *r, char *err) {
  struct lm_request_params *p = &r->params;
  if (!s) return LM_OK;
  if (s->max_tokens > (uint32_t)lim->max_model_len)
    return lm_errf(err, LM_ERANGE, "stopping.max_tokens: %u, over max_model_len %d", s->max_tokens,
                   lim->max_model_len);
  if (s->min_tokens > (uint32_t)lim->max_model_len ||
      (s->max_tokens && s->min_tokens > s->max_tokens))
    return lm_errf(err, LM_EINVAL, "stopping.min_tokens: %u, must be at most max_tokens",
                   s->min_tokens);
  p->max_tokens = (int)s->max_tokens;
  p->min_tokens = (int)s->min_tokens;
  p->ignore_eos = s->ignore_eos;
  p->include_stop_str_in_output = s->include_stop_str_in_output;
  if (s->n_stop > LM_CODEC_MAX_STOP || s->n_stop_token_ids > LM_CODEC_MAX_STOP)
    return lm_errf(err, LM_EINVAL, "stopping: %zu stop strings and %zu stop ids, at most %d each",
                   s->n_stop, s->n_stop_token_ids, LM_CODEC_MAX_STOP);
  if (s->n_stop) {
    r->stop = calloc(s->n_stop, sizeof(*r->stop));
    if (!r->stop) return lm_errf(err, LM_ENOMEM, "out of memory (stop)");
    for (size_t i = 0; i < s->n_stop; i++) {
      size_t n = strlen(s->stop[i]);
      if (n == 0 || n > LM_CODEC_MAX_STOP_BYTES)
        return lm_errf(err, LM_EINVAL, "stopping.stop[%zu]: %zu bytes, must be 1 to %d", i, n,
                       LM_CODEC_MAX_STOP_BYTES);
      r->stop[i] = s->stop[i];
    }
    p->stop = r->stop;
    p->n_stop = (int)s->n_stop;
  }
  if (s->n_stop_token_ids) {
    r->stop_ids = calloc(s->n_stop_token_ids, sizeof(*r->stop_ids));
    if (!r->stop_ids) return lm_errf(err, LM_ENOMEM, "out of memory (stop_token_ids)");
    for (size_t i = 0; i < s->n_stop_token_ids; i++) {
      int32_t id = s->stop_token_ids[i];
      if (id < 0 || id >= lim->vocab_size)
        return lm_errf(err, LM_EINVAL, "stopping.stop_token_ids[%zu]: %d, must be in [0, %d)", i,
                       id, lim->vocab_size);
      r->stop_ids[i] = id;
    }
    p->stop_token_ids = r->stop_ids;
    p->n_stop_token_ids = (int)s->n_stop_token_ids;
  }
  return LM_OK;
}

/* The fields Generate and Chat share. */
struct common {
  const Lmserve__V1__SamplingParams *sampling;
  const Lmserve__V1__StoppingParams *stopping;
  int logprobs, skip_special_set, skip_special;
  uint32_t top_logprobs, truncate;
  const char *request_id;
  int32_t priority;
};

static int check_common(const struct common *c, const struct lm_codec_limits *lim,
                        struct lm_codec_req *r, char *err) {
  struct lm_request_params *p = &r->params;
  int rc = check_id(c->request_id, err);
  if (rc) return rc;
  if (c->top_logprobs > LM_MAX_TOP_LOGPROBS)
    return lm_errf(err, LM_EINVAL, "top_logprobs: %u, at most %d", c->top_logprobs,
                   LM_MAX_TOP_LOGPROBS);
  if (c->truncate > (uint32_t)lim->max_model_len)
    return lm_errf(err, LM_EINVAL, "truncate_prompt_tokens: %u, over max_model_len %d", c->truncate,
                   lim->max_model_len);
  p->request_id = c->request_id;
  p->logprobs = c->logprobs || c->top_logprobs > 0;
  p->top_logprobs = (int)c->top_logprobs;
  p->truncate_prompt_tokens = (int)c->truncate;
  p->priority = c->priority;
  if (c->skip_special_set) p->skip_special_tokens = c->skip_special;
  if ((rc = check_sampling(c->sampling, lim, r, err))) return rc;
  return check_stopping(c->stopping, lim, r, err);
}

static int decode_generate(const Lmserve__V1__GenerateRequest *g, const struct lm_codec_limits *lim,
                           struct lm_codec_req *r, char *err) {
  struct common c = {g->sampling,
                     g->stopping,
                     g->logprobs,
                     g->skip_special_tokens_opt_case != 0,
                     g->skip_special_tokens,
                     g->top_logprobs,
                     g->truncate_prompt_tokens,
                     g->request_id,
                     g->priority};
  int rc = check_common(&c, lim, r, err);
  if (rc) return rc;
  if (g->prompt_case == LMSERVE__V1__GENERATE_REQUEST__PROMPT_TEXT) {
    r->text = g->text;
    r->text_len = strlen(g->text);
    if (r->text_len == 0) return lm_errf(err, LM_EINVAL, "text: empty prompt");
    if (r->text_len > lim->max_prompt_bytes)
      return lm_errf(err, LM_ERANGE, "text: %zu bytes, the server accepts at most %zu", r->text_len,
                     lim->max_prompt_bytes);
    return LM_OK;
  }
  if (g->prompt_case != LMSERVE__V1__GENERATE_REQUEST__PROMPT_TOKEN_IDS)
    return lm_errf(err, LM_EINVAL, "prompt: set text or token_ids");
  const Lmserve__V1__TokenIds *t = g->token_ids;
  if (!t || t->n_ids == 0) return lm_errf(err, LM_EINVAL, "token_ids: empty prompt");
  if (t->n_ids > (size_t)lim->max_model_len && !g->truncate_prompt_tokens)
    return lm_errf(err, LM_ERANGE,
                   "token_ids: %zu tokens, max_model_len is %d (shorten the prompt or set "
                   "truncate_prompt_tokens)",
                   t->n_ids, lim->max_model_len);
  for (size_t i = 0; i < t->n_ids; i++)
    if (t->ids[i] < 0 || t->ids[i] >= lim->vocab_size)
      return lm_errf(err, LM_EINVAL, "token_ids[%zu]: %d, must be in [0, %d)", i, t->ids[i],
                     lim->vocab_size);
  r->prompt_ids = t->ids;
  r->n_prompt_ids = (int)t->n_ids;
  return LM_OK;
}

static int decode_chat(const Lmserve__V1__ChatRequest *ch, const struct lm_codec_limits *lim,
                       struct lm_codec_req *r, char *err) {
  struct common c = {ch->sampling,
                     ch->stopping,
                     ch->logprobs,
                     ch->skip_special_tokens_opt_case != 0,
                     ch->skip_special_tokens,
                     ch->top_logprobs,
                     ch->truncate_prompt_tokens,
                     ch->request_id,
                     ch->priority};
  int rc = check_common(&c, lim, r, err);
  if (rc) return rc;
  if (ch->n_messages == 0) return lm_errf(err, LM_EINVAL, "messages: empty; give at least one");
  for (size_t i = 0; i < ch->n_messages; i++) {
    const Lmserve__V1__ChatMessage *m = ch->messages[i];
    if (!*m->role)
      return lm_errf(err, LM_EINVAL, "messages[%zu].role: empty (user, assistant, system, ...)", i);
    /* proto3 strings are UTF-8; the library that decoded this does not check */
    const char *text[] = {m->role, m->content, m->name, m->tool_call_id};
    static const char *const field[] = {"role", "content", "name", "tool_call_id"};
    for (size_t k = 0; k < 4; k++) {
      size_t len = text[k] ? strlen(text[k]) : 0;
      if (lm_utf8_valid_prefix(text[k], len) != len)
        return lm_errf(err, LM_EINVAL, "messages[%zu].%s: not valid UTF-8", i, field[k]);
    }
  }
  for (size_t i = 0; i < ch->n_tools; i++)
    if (!ch->tools[i]->function || !*ch->tools[i]->function->name)
      return lm_errf(err, LM_EINVAL, "tools[%zu].function.name: empty", i);
  if ((rc = chat_json(ch, &r->chat_json, &r->chat_json_len, err))) return rc;
  if (lm_utf8_valid_prefix(r->chat_json, r->chat_json_len) != r->chat_json_len)
    return lm_errf(err, LM_EINVAL, "tools or chat_template_kwargs: a string is not valid UTF-8");
  if (r->chat_json_len > lim->max_prompt_bytes + 4096)
    return lm_errf(err, LM_ERANGE, "messages: %zu bytes, the server accepts at most %zu",
                   r->chat_json_len, lim->max_prompt_bytes);
  return LM_OK;
}

int lm_codec_decode(enum lm_codec_kind kind, const uint8_t *buf, size_t len,
                    const struct lm_codec_limits *lim, const struct lm_request_params *base,
                    struct lm_codec_req *out, char *err) {
  const ProtobufCMessageDescriptor *d = kind == LM_CODEC_CHAT
                                            ? &lmserve__v1__chat_request__descriptor
                                            : &lmserve__v1__generate_request__descriptor;
  memset(out, 0, sizeof(*out));
  out->kind = kind;
  out->params = *base;
  if (!wire_ok(d, buf, buf + len, 0))
    return lm_errf(err, LM_EINVAL, "malformed %s (not valid protobuf, or nested over %d levels)",
                   d->name, MAX_DEPTH);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, buf);
  if (!m) return lm_errf(err, LM_EINVAL, "malformed %s (not valid protobuf)", d->name);
  if (kind == LM_CODEC_CHAT) {
    out->chat = (Lmserve__V1__ChatRequest *)m;
    return decode_chat(out->chat, lim, out, err);
  }
  out->gen = (Lmserve__V1__GenerateRequest *)m;
  return decode_generate(out->gen, lim, out, err);
}

int lm_codec_check_prompt(const struct lm_codec_req *r, const struct lm_codec_limits *lim,
                          const int32_t *ids, int n, char *err) {
  (void)ids;
  int trunc = r->params.truncate_prompt_tokens;
  if (trunc > 0 && n > trunc) n = trunc;
  if (n == 0) return lm_errf(err, LM_EINVAL, "the prompt has no tokens");
  int max_tokens = r->params.max_tokens;
  if (n >= lim->max_model_len || (long)n + max_tokens > lim->max_model_len)
    return lm_errf(err, LM_ERANGE,
                   "prompt (%d tokens) + max_tokens (%d) is over max_model_len %d: shorten the "
                   "prompt, lower max_tokens or set truncate_prompt_tokens",
                   n, max_tokens, lim->max_model_len);
  return LM_OK;
}

void lm_codec_req_free(struct lm_codec_req *r) {
  if (!r) return;
  if (r->gen) protobuf_c_message_free_unpacked(&r->gen->base, NULL);
  if (r->chat) protobuf_c_message_free_unpacked(&r->chat->base, NULL);
  free(r->chat_json);
  free(r->bias);
  free(r->stop);
  free(r->stop_ids);
  memset(r, 0, sizeof(*r));
}
