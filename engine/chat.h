/* chat.h - a model's chat templates (tokenizer_config.json `chat_template`,
 * Jinja), rendered exactly as Hugging Face Transformers renders them.
 *
 * Templates are compiled once at model load; a construct lmserve does not
 * implement is refused there, naming the template line and the construct,
 * rather than rendered wrongly. A compiled lm_chat is immutable: any number
 * of threads may render with it at once. */
#ifndef LM_CHAT_H
#define LM_CHAT_H

#include <stddef.h>

#include "engine/json.h"
#include "engine/tokenizer.h"

typedef struct lm_chat lm_chat;

/* Compiles every chat template the tokenizer's config holds. A tokenizer
 * without one gives *out == NULL and LM_OK (chat requests are then refused
 * by the caller). */
int lm_chat_load(const lm_tokenizer *tok, lm_chat **out, char *err);
void lm_chat_free(lm_chat *c);

/* Compiles n named templates (names[i] such as "default" or "tool_use")
 * given as text, with the special tokens the templates see as bos_token and
 * eos_token (either may be NULL). lm_chat_load is this with the tokenizer's
 * templates and tokens. */
int lm_chat_create(const char *const *names, const char *const *templates, size_t n,
                   const char *bos_token, const char *eos_token, lm_chat **out, char *err);

/* Renders a chat request, the JSON value Transformers' apply_chat_template
 * takes:
 *   {"messages": [...], "tools": [...], "add_generation_prompt": true,
 *    "chat_template_kwargs": {...}}
 * or a bare messages array. add_generation_prompt defaults to true. The
 * "tool_use" template is chosen when tools are given and the model has one,
 * otherwise "default". The text is malloc'd and NUL-terminated (*len
 * excludes the NUL). Bad input (messages not a list, content of the wrong
 * type, the template's raise_exception) is LM_EINVAL with the reason. */
int lm_chat_render(const lm_chat *c, const lm_json *request, char **text, size_t *len, char *err);

/* Renders and tokenizes for the model. Special-token strings in the
 * rendered text are recognised, and no BOS is added: the template already
 * wrote it, and adding another is the classic double-BOS bug. */
int lm_chat_encode(const lm_chat *c, const lm_tokenizer *tok, const lm_json *request,
                   lm_tokens *out, char *err);

#endif
