/* chat.c - a model's chat templates: compiled at load, rendered per request
 * with the variables Transformers' apply_chat_template passes (messages,
 * tools, add_generation_prompt, the special tokens, chat_template_kwargs). */
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/jinja.h"
#include "engine/lm.h"

struct lm_chat {
  size_t n;
  char **names;
  lm_jinja **tmpls;
  char *bos, *eos;
};

void lm_chat_free(lm_chat *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++) {
    free(c->names[i]);
    lm_jinja_free(c->tmpls[i]);
  }
  free(c->names);
  free(c->tmpls);
  free(c->bos);
  free(c->eos);
  free(c);
}

static int dup_opt(const char *s, char **out) {
  *out = NULL;
  return s && !(*out = strdup(s)) ? -1 : 0;
}

int lm_chat_create(const char *const *names, const char *const *templates, size_t n,
                   const char *bos_token, const char *eos_token, lm_chat **out, char *err) {
  lm_chat *c = calloc(1, sizeof(*c));
  char msg[LM_ERR_LEN];
  int rc = LM_ENOMEM;
  *out = NULL;
  if (!c) goto oom;
  c->names = calloc(n ? n : 1, sizeof(*c->names));
  c->tmpls = calloc(n ? n : 1, sizeof(*c->tmpls));
  if (!c->names || !c->tmpls || dup_opt(bos_token, &c->bos) || dup_opt(eos_token, &c->eos))
    goto oom;
  for (; c->n < n; c->n++) {
    size_t i = c->n;
    if (!(c->names[i] = strdup(names[i]))) goto oom;
    rc = lm_jinja_compile(templates[i], strlen(templates[i]), &c->tmpls[i], msg);
    if (rc != LM_OK) {
      if (n > 1)
        lm_errf(err, rc, "template '%s': %s", names[i], msg);
      else
        lm_errf(err, rc, "%s", msg);
      c->n++;
      goto err;
    }
  }
  *out = c;
  return LM_OK;
oom:
  rc = lm_errf(err, LM_ENOMEM, "out of memory loading chat templates");
err:
  lm_chat_free(c);
  return rc;
}

int lm_chat_load(const lm_tokenizer *tok, lm_chat **out, char *err) {
  size_t n = lm_tokenizer_chat_template_count(tok);
  *out = NULL;
  if (n == 0) return LM_OK;
  const char **names = calloc(n, sizeof(*names)), **tmpls = calloc(n, sizeof(*tmpls));
  int rc;
  if (!names || !tmpls) {
    rc = lm_errf(err, LM_ENOMEM, "out of memory loading chat templates");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    names[i] = lm_tokenizer_chat_template_name(tok, i);
    tmpls[i] = lm_tokenizer_chat_template_named(tok, names[i]);
    if (!names[i] || !tmpls[i]) {
      rc = lm_errf(err, LM_EFORMAT, "tokenizer_config.json: chat template %zu has no name or text",
                   i);
      goto out;
    }
  }
  rc = lm_chat_create(names, tmpls, n, lm_tokenizer_bos_token(tok), lm_tokenizer_eos_token(tok),
                      out, err);
out:
  free(names);
  free(tmpls);
  return rc;
}

static const lm_jinja *find(const lm_chat *c, const char *name) {
  for (size_t i = 0; i < c->n; i++)
    if (!strcmp(c->names[i], name)) return c->tmpls[i];
  return NULL;
}

static const char *json_kind(const lm_json *j) {
  return j->type == LM_JSON_ARRAY    ? "a list"
         : j->type == LM_JSON_OBJECT ? "an object"
                                     : lm_json_type_name(j->type);
}

static int check_messages(const lm_json *msgs, char *err) {
  if (msgs->type != LM_JSON_ARRAY)
    return lm_errf(err, LM_EINVAL, "\"messages\" must be a list of messages, not %s",
                   json_kind(msgs));
  for (size_t i = 0; i < msgs->n_kids; i++) {
    const lm_json *m = &msgs->kids[i], *role, *content;
    if (m->type != LM_JSON_OBJECT)
      return lm_errf(err, LM_EINVAL, "messages[%zu] must be an object, not %s", i, json_kind(m));
    if (!(role = lm_json_get(m, "role")) || role->type != LM_JSON_STRING)
      return lm_errf(err, LM_EINVAL, "messages[%zu].role must be a string", i);
    content = lm_json_get(m, "content");
    if (content && content->type != LM_JSON_STRING && content->type != LM_JSON_NULL &&
        content->type != LM_JSON_ARRAY)
      return lm_errf(
          err, LM_EINVAL,
          "messages[%zu].content must be a string, a list of content parts or null, not %s", i,
          json_kind(content));
  }
  return LM_OK;
}

static lm_json member(const lm_json *v, const char *key) {
  lm_json m = *v;
  m.key = key;
  m.key_len = strlen(key);
  return m;
}

static lm_json str_member(const char *key, const char *s) {
  lm_json m = {.type = LM_JSON_STRING, .str = s, .str_len = strlen(s)};
  return member(&m, key);
}

int lm_chat_render(const lm_chat *c, const lm_json *request, char **text, size_t *len, char *err) {
  const lm_json *msgs = request, *tools = NULL, *kwargs = NULL, *agp;
  int gen_prompt = 1, rc;
  *text = NULL;
  *len = 0;
  if (!c) return lm_errf(err, LM_EINVAL, "this model has no chat template");
  if (request->type == LM_JSON_OBJECT) {
    if (!(msgs = lm_json_get(request, "messages")))
      return lm_errf(err, LM_EINVAL, "chat request has no \"messages\"");
    if ((tools = lm_json_get(request, "tools")) && tools->type == LM_JSON_NULL) tools = NULL;
    if (tools && tools->type != LM_JSON_ARRAY)
      return lm_errf(err, LM_EINVAL, "\"tools\" must be a list, not %s", json_kind(tools));
    if ((agp = lm_json_get(request, "add_generation_prompt")) && agp->type != LM_JSON_NULL) {
      if (agp->type != LM_JSON_BOOL)
        return lm_errf(err, LM_EINVAL, "\"add_generation_prompt\" must be true or false");
      gen_prompt = agp->boolean;
    }
    if ((kwargs = lm_json_get(request, "chat_template_kwargs")) && kwargs->type == LM_JSON_NULL)
      kwargs = NULL;
    if (kwargs && kwargs->type != LM_JSON_OBJECT)
      return lm_errf(err, LM_EINVAL, "\"chat_template_kwargs\" must be an object, not %s",
                     json_kind(kwargs));
  } else if (request->type != LM_JSON_ARRAY) {
    return lm_errf(
        err, LM_EINVAL,
        "a chat request must be an object with \"messages\" or a list of messages, not %s",
        json_kind(request));
  }
  if ((rc = check_messages(msgs, err)) != LM_OK) return rc;
  /* Transformers picks "tool_use" whenever tools are passed and the model
   * has such a template. */
  const lm_jinja *t = tools ? find(c, "tool_use") : NULL;
  if (!t) t = find(c, "default");
  if (!t) return lm_errf(err, LM_EINVAL, "this model has no \"default\" chat template");

  size_t n_kw = kwargs ? kwargs->n_kids : 0, n = 0;
  lm_json *vars = calloc(5 + n_kw, sizeof(*vars));
  if (!vars) return lm_errf(err, LM_ENOMEM, "out of memory rendering a chat template");
  lm_json none = {.type = LM_JSON_NULL}, gp = {.type = LM_JSON_BOOL, .boolean = gen_prompt};
  if (c->bos) vars[n++] = str_member("bos_token", c->bos);
  if (c->eos) vars[n++] = str_member("eos_token", c->eos);
  for (size_t i = 0; i < n_kw;
       i++) { /* as in Transformers, these may override the special tokens */
    const lm_json *k = &kwargs->kids[i];
    if ((k->key_len == 8 && !memcmp(k->key, "messages", 8)) ||
        (k->key_len == 5 && !memcmp(k->key, "tools", 5)) ||
        (k->key_len == 21 && !memcmp(k->key, "add_generation_prompt", 21))) {
      free(vars);
      return lm_errf(err, LM_EINVAL, "chat_template_kwargs may not set \"%.*s\"", (int)k->key_len,
                     k->key);
    }
    vars[n++] = *k;
  }
  vars[n++] = member(msgs, "messages");
  vars[n++] = member(tools ? tools : &none, "tools");
  vars[n++] = member(&gp, "add_generation_prompt");
  lm_json root = {.type = LM_JSON_OBJECT, .kids = vars, .n_kids = n};
  rc = lm_jinja_render(t, &root, text, len, err);
  free(vars);
  return rc;
}

int lm_chat_encode(const lm_chat *c, const lm_tokenizer *tok, const lm_json *request,
                   lm_tokens *out, char *err) {
  char *text;
  size_t len;
  int rc = lm_chat_render(c, request, &text, &len, err);
  if (rc != LM_OK) return rc;
  /* add_special = 0: the template wrote every special token the model
   * expects, BOS included where the model has one. Letting the
   * post-processor add its BOS as well would start the prompt with two
   * (the classic double-BOS bug). Special-token strings in the text are
   * still recognised as single tokens. */
  rc = lm_tokenizer_encode(tok, text, len, 0, out, err);
  free(text);
  return rc;
}
