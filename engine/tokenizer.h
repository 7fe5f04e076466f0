/* tokenizer.h - the Hugging Face tokenizer.json pipeline, implemented
 * generically: normalizer -> added/special tokens -> pre-tokenizer -> BPE
 * model -> post-processor, and the decoder back to bytes.
 *
 * A loaded tokenizer is immutable; encode and decode may be called from any
 * number of threads at once. */
#ifndef LM_TOKENIZER_H
#define LM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct lm_tokenizer lm_tokenizer;

/* Loads DIR/tokenizer.json (and DIR/tokenizer_config.json when present).
 * Components lmserve does not implement are refused by name. */
int lm_tokenizer_load(const char *dir, lm_tokenizer **out, char *err);
void lm_tokenizer_free(lm_tokenizer *tok);

/* A growable array of token ids owned by the caller; free with
 * lm_tokens_free. */
typedef struct {
  int32_t *ids;
  size_t n, cap;
} lm_tokens;
void lm_tokens_free(lm_tokens *t);

/* Appends the ids of text (any bytes; invalid UTF-8 is handled as the
 * official library does for its lossy conversion) to out. With
 * add_special, the post-processor adds its special tokens (BOS and the
 * like) exactly as the official library's encode(text,
 * add_special_tokens=True). Special-token strings inside text are always
 * recognised, as in the official library. */
int lm_tokenizer_encode(const lm_tokenizer *tok, const char *text, size_t len, int add_special,
                        lm_tokens *out, char *err);

/* Decodes ids to text through the tokenizer's decoder. The result is
 * malloc'd and NUL-terminated; *len excludes the NUL. Ids outside the
 * vocabulary are an error. */
int lm_tokenizer_decode(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                        char **text, size_t *len, char *err);

size_t lm_tokenizer_vocab_size(const lm_tokenizer *tok); /* model vocab + added tokens */
/* The id of a token's exact string (vocabulary or added token), or -1. */
int32_t lm_tokenizer_token_id(const lm_tokenizer *tok, const char *s, size_t len);
int lm_tokenizer_is_special(const lm_tokenizer *tok, int32_t id);
/* bos_token / eos_token from tokenizer_config.json, or NULL. */
const char *lm_tokenizer_bos_token(const lm_tokenizer *tok);
const char *lm_tokenizer_eos_token(const lm_tokenizer *tok);
/* chat_template from tokenizer_config.json (the default one), or NULL. */
const char *lm_tokenizer_chat_template(const lm_tokenizer *tok);
/* tokenizer_config.json may hold a list of named chat templates ("default",
 * "tool_use", ...); a plain string is stored under the name "default". */
const char *lm_tokenizer_chat_template_named(const lm_tokenizer *tok, const char *name);
size_t lm_tokenizer_chat_template_count(const lm_tokenizer *tok);
const char *lm_tokenizer_chat_template_name(const lm_tokenizer *tok, size_t i);
/* The string of a token (added token content or vocabulary entry, before
 * decoding), or NULL; *len (may be NULL) gets its length. */
const char *lm_tokenizer_id_token(const lm_tokenizer *tok, int32_t id, size_t *len);

/* Incremental detokenizer for streaming: push ids one at a time and get
 * back only text that is complete UTF-8 and will not change as more ids
 * arrive. The text of all pushes followed by lm_detok_flush equals
 * lm_tokenizer_decode of all ids. */
typedef struct lm_detok lm_detok;
int lm_detok_create(const lm_tokenizer *tok, int skip_special, lm_detok **out);
void lm_detok_free(lm_detok *d);
/* Sets *delta to the text that became final with this id (possibly empty);
 * it points into d and stays valid until the next call on d. */
int lm_detok_push(lm_detok *d, int32_t id, const char **delta, size_t *delta_len, char *err);
/* The text still held back (incomplete UTF-8 becomes U+FFFD, as in decode). */
int lm_detok_flush(lm_detok *d, const char **delta, size_t *delta_len, char *err);

#endif
