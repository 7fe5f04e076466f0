/* chat_harness.c - renders chat requests for tests/chat_parity.js.
 *
 * Reads JSON lines on stdin, each
 *   {"model_dir": DIR, "request": {...}}        a model's own templates, or
 *   {"template": TEXT, "bos_token": S, "eos_token": S, "request": {...}}
 * and prints one JSON line per input: {"ok": true, "text": "..."} or
 * {"ok": false, "error": "..."}. Models stay loaded between lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/tokenizer.h"

#define MAX_MODELS 16

typedef struct {
  char *dir;
  lm_tokenizer *tok;
  lm_chat *chat;
  int rc;
  char err[LM_ERR_LEN];
} model;

static model models[MAX_MODELS];
static int n_models;

static model *get_model(const char *dir) {
  for (int i = 0; i < n_models; i++)
    if (!strcmp(models[i].dir, dir)) return &models[i];
  if (n_models == MAX_MODELS) return NULL;
  model *m = &models[n_models];
  if (!(m->dir = strdup(dir))) return NULL;
  n_models++;
  m->rc = lm_tokenizer_load(dir, &m->tok, m->err);
  if (m->rc == LM_OK) m->rc = lm_chat_load(m->tok, &m->chat, m->err);
  if (m->rc == LM_OK && !m->chat) {
    m->rc = LM_EINVAL;
    snprintf(m->err, sizeof(m->err), "%s has no chat template", dir);
  }
  return m;
}

static void reply_error(const char *msg) {
  fputs("{\"ok\": false, \"error\": ", stdout);
  lm_json_write_str(stdout, msg, strlen(msg));
  fputs("}\n", stdout);
}

static const char *opt_str(const lm_json *obj, const char *key) {
  const lm_json *v = lm_json_get_type(obj, key, LM_JSON_STRING);
  return v ? v->str : NULL;
}

static void handle(const char *line, size_t len) {
  char err[LM_ERR_LEN];
  lm_json_doc *doc = NULL;
  lm_chat *own = NULL;
  const lm_chat *chat = NULL;
  char *text = NULL;
  size_t text_len;
  if (lm_json_parse(line, len, &doc, err) != LM_OK) {
    reply_error(err);
    return;
  }
  const lm_json *root = lm_json_root(doc), *req = lm_json_get(root, "request");
  const char *dir = opt_str(root, "model_dir"), *tmpl = opt_str(root, "template");
  if (!req || (!dir && !tmpl)) {
    reply_error("each line needs \"request\" and \"model_dir\" or \"template\"");
    goto out;
  }
  if (dir) {
    model *m = get_model(dir);
    if (!m || m->rc != LM_OK) {
      reply_error(m ? m->err : "too many models");
      goto out;
    }
    chat = m->chat;
  } else {
    const char *name = "default";
    if (lm_chat_create(&name, &tmpl, 1, opt_str(root, "bos_token"), opt_str(root, "eos_token"),
                       &own, err) != LM_OK) {
      reply_error(err);
      goto out;
    }
    chat = own;
  }
  if (lm_chat_render(chat, req, &text, &text_len, err) != LM_OK) {
    reply_error(err);
    goto out;
  }
  fputs("{\"ok\": true, \"text\": ", stdout);
  lm_json_write_str(stdout, text, text_len);
  fputs("}\n", stdout);
out:
  fflush(stdout);
  free(text);
  lm_chat_free(own);
  lm_json_free(doc);
}

int main(void) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, stdin)) > 0) {
    if (line[n - 1] == '\n') line[--n] = '\0';
    if (n > 0) handle(line, (size_t)n);
  }
  free(line);
  for (int i = 0; i < n_models; i++) {
    lm_chat_free(models[i].chat);
    lm_tokenizer_free(models[i].tok);
    free(models[i].dir);
  }
  return 0;
}
