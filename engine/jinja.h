/* jinja.h - the Jinja subset that Hugging Face chat templates use, with the
 * semantics of @huggingface/jinja (the reference implementation of
 * Transformers' template environment: trim_blocks and lstrip_blocks on,
 * raise_exception, strftime_now, namespace, loop.*).
 *
 * A template is compiled once (lexer -> parser -> syntax tree); a construct
 * outside the subset is refused there, naming the template line and the
 * construct. A compiled template is immutable: any number of threads may
 * render it at once, each render working in its own arena. */
#ifndef LM_JINJA_H
#define LM_JINJA_H

#include <stddef.h>

#include "engine/json.h"

typedef struct lm_jinja lm_jinja;

/* Compiles len bytes of template text (copied). */
int lm_jinja_compile(const char *src, size_t len, lm_jinja **out, char *err);
void lm_jinja_free(lm_jinja *t);

/* Renders with the members of vars (a JSON object, or NULL for none) as the
 * template's variables, beside the globals (true, false, none, namespace,
 * range, raise_exception, strftime_now). JSON numbers with an integral value
 * are integers, as in the reference. The text is malloc'd and
 * NUL-terminated; *len excludes the NUL. A runtime error (the template's
 * raise_exception, an operation on the wrong types) is LM_EINVAL with the
 * template line and the reason. */
int lm_jinja_render(const lm_jinja *t, const lm_json *vars, char **text, size_t *len, char *err);

#endif
