/* tok_internal.h - what the tokenizer's tok_*.c files share: UTF-8 and
 * character-class helpers, growable buffers, hash maps, and the interfaces
 * of each pipeline stage (normalizer, added vocabulary, pre-tokenizer, BPE,
 * post-processor, decoder). Not a public header. */
#ifndef LM_TOK_INTERNAL_H
#define LM_TOK_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/json.h"
#include "engine/lm.h"
#include "engine/tokenizer.h"

/* ---- Unicode ---------------------------------------------------------- */

typedef struct {
  uint32_t lo, hi;
} lm_tok_range;

/* Generated from the official library by tests/tokenizer_gen_unicode.js. */
extern const lm_tok_range lm_tok_letter[], lm_tok_number[], lm_tok_space[], lm_tok_nfc_opaque[];
extern const size_t lm_tok_letter_n, lm_tok_number_n, lm_tok_space_n, lm_tok_nfc_opaque_n;

/* Character classes as Oniguruma sees them in the library: \p{L}, \p{N},
 * \s. A code point with none of them is "other" ([^\s\p{L}\p{N}]). */
#define LM_CC_L      1
#define LM_CC_N      2
#define LM_CC_S      4
#define LM_CC_OPAQUE 8 /* see tok_norm.c */
uint8_t lm_tok_cclass(uint32_t cp);

static inline size_t lm_tok_utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
}
/* Decodes one code point of valid UTF-8 at s (n >= 1 bytes available);
 * *adv gets its length. Never reads past s[n - 1]: a sequence cut short
 * by n decodes as its lead byte alone (*adv = 1). */
static inline uint32_t lm_tok_utf8_next(const char *s, size_t n, size_t *adv) {
  const unsigned char *u = (const unsigned char *)s;
  size_t len = lm_tok_utf8_len(u[0]);
  if (len > n) len = 1;
  *adv = len;
  switch (len) {
  case 1: return u[0];
  case 2: return ((uint32_t)(u[0] & 0x1f) << 6) | (u[1] & 0x3f);
  case 3: return ((uint32_t)(u[0] & 0x0f) << 12) | ((uint32_t)(u[1] & 0x3f) << 6) | (u[2] & 0x3f);
  default:
    return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3f) << 12) |
           ((uint32_t)(u[2] & 0x3f) << 6) | (u[3] & 0x3f);
  }
}

/* ---- buffers, spans, hashing ----------------------------------------- */

typedef struct {
  char *p;
  size_t n, cap;
} lm_buf;
int lm_buf_reserve(lm_buf *b, size_t extra);
int lm_buf_put(lm_buf *b, const void *s, size_t n);
void lm_buf_free(lm_buf *b);

/* Appends s with invalid UTF-8 replaced by U+FFFD, one per maximal invalid
 * subpart, exactly as Rust's String::from_utf8_lossy (and WHATWG decoders). */
int lm_buf_put_lossy(lm_buf *b, const char *s, size_t n);

typedef struct {
  size_t start, end;
} lm_span;
typedef struct {
  lm_span *v;
  size_t n, cap;
} lm_spans;
int lm_spans_push(lm_spans *s, size_t start, size_t end);
void lm_spans_free(lm_spans *s);

uint64_t lm_tok_hash(const void *s, size_t n);
/* A 64-bit bit mixer (every input bit affects every output bit). */
uint64_t lm_tok_mix64(uint64_t x);

/* String -> int32 map; keys are copied into the map. */
typedef struct {
  uint32_t *slots; /* index+1 into keys, 0 = empty */
  size_t mask;
  struct lm_strmap_key {
    uint64_t hash;
    size_t off, len;
    int32_t val;
  } * keys;
  size_t n, cap;
  lm_buf bytes;
} lm_strmap;
int lm_strmap_init(lm_strmap *m, size_t expected);
/* Sets key to val (replacing an existing value). */
int lm_strmap_put(lm_strmap *m, const char *k, size_t n, int32_t val);
int32_t lm_strmap_get(const lm_strmap *m, const char *k, size_t n); /* -1 if absent */
void lm_strmap_free(lm_strmap *m);

/* The type name of j for error messages ("missing" when j is NULL). */
const char *lm_tok_jtype(const lm_json *j);

/* ---- regex ------------------------------------------------------------ */

/* A pattern from tokenizer.json: a literal string or an Oniguruma regex.
 * The known GPT-2 / Llama 3 / Qwen 2 split patterns run through a
 * hand-written matcher; every other regex through PCRE2 with \p{L}, \p{N}
 * and \s replaced by the library's exact classes. */
typedef struct lm_tok_regex lm_tok_regex;
int lm_tok_regex_new(const char *pat, size_t len, int literal, lm_tok_regex **out, char *err);
void lm_tok_regex_free(lm_tok_regex *re);
/* Appends the matches in s as the library's find_iter yields them. */
int lm_tok_regex_find(const lm_tok_regex *re, const char *s, size_t n, lm_spans *out);
/* Tests only: route a known pattern through PCRE2 instead (1) or not (0). */
void lm_tok_regex_force_pcre(lm_tok_regex *re, int on);

/* ---- stages ----------------------------------------------------------- */

typedef struct lm_tok_norm lm_tok_norm;
int lm_tok_norm_parse(const lm_json *j, const char *path, lm_tok_norm **out, char *err);
void lm_tok_norm_free(lm_tok_norm *n);
/* Appends the normalized form of s (valid UTF-8) to out. */
int lm_tok_norm_apply(const lm_tok_norm *n, const char *s, size_t len, lm_buf *out);

typedef struct lm_tok_pretok lm_tok_pretok;
int lm_tok_pretok_parse(const lm_json *j, const char *path, lm_tok_pretok **out, char *err);
void lm_tok_pretok_free(lm_tok_pretok *p);
/* Splits s into words; words are appended to out_text, their spans (into
 * out_text) to out_words. */
typedef struct {
  lm_buf a, b;      /* ping-pong text */
  lm_spans sa, sb;  /* ping-pong spans */
  lm_spans matches; /* regex scratch */
} lm_tok_pt_scratch;
int lm_tok_pretok_apply(const lm_tok_pretok *p, const char *s, size_t len, lm_tok_pt_scratch *sc,
                        const lm_buf **out_text, const lm_spans **out_words);
void lm_tok_pt_scratch_free(lm_tok_pt_scratch *sc);

typedef struct lm_tok_bpe lm_tok_bpe;
int lm_tok_bpe_parse(const lm_json *j, lm_tok_bpe **out, char *err);
void lm_tok_bpe_free(lm_tok_bpe *m);
/* Appends the ids of one pre-tokenized word. */
int lm_tok_bpe_encode_word(const lm_tok_bpe *m, const char *w, size_t n, lm_tokens *out);
size_t lm_tok_bpe_vocab_size(const lm_tok_bpe *m);
int32_t lm_tok_bpe_token_id(const lm_tok_bpe *m, const char *s, size_t n);
/* The token string of id, or NULL. */
const char *lm_tok_bpe_id_token(const lm_tok_bpe *m, int32_t id, size_t *len);
int32_t lm_tok_bpe_max_id(const lm_tok_bpe *m);

typedef struct {
  int32_t id;
  const char *content; /* NUL-terminated, owned by the added vocabulary */
  size_t len;
  uint8_t special, normalized, lstrip, rstrip, single_word;
} lm_tok_added_token;
typedef struct lm_tok_added lm_tok_added;
/* n_model: the model's vocabulary size (ids are assigned as the library
 * does: a token already in the model vocabulary keeps the model's id). */
int lm_tok_added_parse(const lm_json *arr, const lm_tok_bpe *model, const lm_tok_norm *norm,
                       lm_tok_added **out, char *err);
void lm_tok_added_free(lm_tok_added *a);
/* Splits s into pieces: spans of plain text (id -1) and added tokens. */
typedef struct {
  size_t start, end;
  int32_t id;
} lm_tok_piece;
typedef struct {
  lm_tok_piece *v;
  size_t n, cap;
} lm_tok_pieces;
int lm_tok_added_split(const lm_tok_added *a, int normalized_set, const char *s, size_t n,
                       lm_tok_pieces *out);
int lm_tok_added_has(const lm_tok_added *a, int normalized_set);
const lm_tok_added_token *lm_tok_added_by_id(const lm_tok_added *a, int32_t id);
int32_t lm_tok_added_id(const lm_tok_added *a, const char *s, size_t n);
int32_t lm_tok_added_max_id(const lm_tok_added *a);
size_t lm_tok_added_count(const lm_tok_added *a);
void lm_tok_pieces_free(lm_tok_pieces *p);

typedef struct lm_tok_post lm_tok_post;
/* vocab lookups resolve token strings in TemplateProcessing. */
int lm_tok_post_parse(const lm_json *j, const char *path, lm_tok_post **out, char *err);
void lm_tok_post_free(lm_tok_post *p);
/* Rewrites ids[start..] of out as encode(add_special_tokens=True) would. */
int lm_tok_post_apply(const lm_tok_post *p, lm_tokens *out, size_t start);
/* The ids it adds (those before the sequence, then those after): n, and
 * the i-th. */
size_t lm_tok_post_n(const lm_tok_post *p);
int32_t lm_tok_post_at(const lm_tok_post *p, size_t i);

typedef struct lm_tok_dec lm_tok_dec;
int lm_tok_dec_parse(const lm_json *j, const char *path, lm_tok_dec **out, char *err);
void lm_tok_dec_free(lm_tok_dec *d);
/* Decodes n token strings (toks[i], lens[i]) to text appended to out; with
 * d NULL the tokens are joined by spaces, as in the library. */
int lm_tok_dec_apply(const lm_tok_dec *d, const char *const *toks, const size_t *lens, size_t n,
                     lm_buf *out);

int lm_tokens_push(lm_tokens *t, int32_t id);

/* {"String": s} or {"Regex": r} at pat; path names it in errors. */
int lm_tok_pattern_parse(const lm_json *pat, const char *path, lm_tok_regex **out, char *err);
/* ByteLevel's alphabet, inverted: code point -> byte, or -1. */
int lm_tok_bytelevel_byte(uint32_t cp);
/* For the detokenizer: 1 if id decodes through the decoder's ByteFallback
 * as a raw byte, 0 if not, -1 if decode skips it. */
int lm_tok_fallback_byte(const lm_tokenizer *tok, int32_t id, int skip_special);
int lm_tok_dec_has_bytefallback(const lm_tok_dec *d);
/* Decode into a buffer (tokenizer.c), for the detokenizer. */
int lm_tok_decode_buf(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                      lm_buf *out, char *err);

#endif
