/* output.h - what a request's sampled tokens become: the decision to stop
 * (max_tokens, EOS, stop ids, stop strings, min_tokens) and the streamed
 * text.
 *
 * Text is produced incrementally with the tokenizer's streaming
 * detokenizer: only whole UTF-8 characters are released, and text that
 * could still turn out to be the start of a stop string is held back until
 * it cannot. Stop strings are matched on the detokenized text, across token
 * boundaries; a matched one (and everything after it) never reaches the
 * caller unless include_stop_str_in_output is set.
 *
 * The engine thread owns one lm_outproc per request. */
#ifndef LM_OUTPUT_H
#define LM_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

/* A growable byte buffer; zero-initialised is empty. */
struct lm_strbuf {
  char *data; /* NUL-terminated when len > 0 */
  size_t len, cap;
};
int lm_strbuf_append(struct lm_strbuf *b, const char *s, size_t n);
void lm_strbuf_free(struct lm_strbuf *b);

typedef struct lm_outproc lm_outproc;

/* p is the request as submitted (stop strings, stop ids, ignore_eos,
 * min_tokens, skip_special_tokens, include_stop_str_in_output are copied);
 * max_tokens is the resolved limit (> 0); the model's EOS ids come from
 * cfg. */
int lm_outproc_create(const lm_tokenizer *tok, const struct lm_config *cfg,
                      const struct lm_request_params *p, int max_tokens, lm_outproc **out,
                      char *err);
void lm_outproc_free(lm_outproc *o);

/* Takes the next sampled token and appends the text it releases to text.
 * Returns LM_FINISH_NONE to go on, or why the request ends here (the token
 * still counts as generated; an EOS or stop id adds no text). On an error
 * (out of memory) returns LM_FINISH_ERROR. */
enum lm_finish_reason lm_outproc_push(lm_outproc *o, int32_t id, struct lm_strbuf *text);

/* The request ends for a reason outside the outproc (an abort, an error):
 * appends whatever text was held back, up to a stop string it completes
 * (the finish stays the caller's). */
void lm_outproc_flush(lm_outproc *o, struct lm_strbuf *text);

/* The ids the next token must not be (sampled with
 * lm_sample_row.banned): while fewer than min_tokens tokens have been
 * generated, the EOS ids (unless ignore_eos) and the stop ids, as vLLM
 * masks them; none afterwards. Returns how many; *ids is owned by o. */
int lm_outproc_banned(const lm_outproc *o, const int32_t **ids);

/* After LM_FINISH_STOP_STRING: the matched stop string (owned by o). After
 * LM_FINISH_EOS or LM_FINISH_STOP_TOKEN: the id via lm_outproc_stop_token
 * (-1 otherwise). */
const char *lm_outproc_stop_str(const lm_outproc *o);
int32_t lm_outproc_stop_token(const lm_outproc *o);

#endif
