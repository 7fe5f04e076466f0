/* output_test.c - the finish decision and streamed text of a request
 * (engine/output.c) on real tokenizers: stop strings split across tokens
 * and inside multi-byte characters, overlapping stop strings,
 * include_stop_str_in_output, min_tokens, EOS and stop ids,
 * skip_special_tokens, and a randomized comparison against a reference
 * that decodes whole prefixes with lm_tokenizer_decode (itself checked
 * against the official tokenizers library) and searches them naively.
 *
 * usage: output_test FIXTURES_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
#include "engine/output.h"
#include "tests/check.h"

struct fix {
  const char *name;
  lm_tokenizer *tok;
  struct lm_config cfg;
  int byte_level; /* GPT-2 byte-to-unicode vocabulary (else byte fallback) */
};

static int load_fix(const char *root, const char *name, int byte_level, struct fix *f) {
  char dir[1024], path[1100], err[LM_ERR_LEN];
  char *json = NULL;
  size_t len = 0;
  struct lm_gen_defaults gen;
  memset(f, 0, sizeof(*f));
  f->name = name;
  f->byte_level = byte_level;
  snprintf(dir, sizeof(dir), "%s/%s", root, name);
  snprintf(path, sizeof(path), "%s/config.json", dir);
  int rc = lm_read_file(path, &json, &len, err);
  if (!rc) rc = lm_config_parse(json, len, &f->cfg, err);
  free(json);
  snprintf(path, sizeof(path), "%s/generation_config.json", dir);
  if (!rc && lm_read_file(path, &json, &len, err) == LM_OK) {
    rc = lm_gen_config_parse(json, len, &f->cfg, &gen, err);
    free(json);
  }
  if (!rc) rc = lm_tokenizer_load(dir, &f->tok, err);
  if (rc) printf("# %s: %s\n", name, err);
  return rc;
}

/* ---- building token sequences ---------------------------------------- */

static void add_text(const struct fix *f, lm_tokens *t, const char *s) {
  char err[LM_ERR_LEN];
  if (lm_tokenizer_encode(f->tok, s, strlen(s), 0, t, err) != LM_OK) printf("# encode: %s\n", err);
}

static void add_id(lm_tokens *t, int32_t id) {
  if (t->n == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 64;
    t->ids = realloc(t->ids, t->cap * sizeof(*t->ids));
    if (!t->ids) abort();
  }
  t->ids[t->n++] = id;
}

/* The id of the single-byte token for b: GPT-2's byte-to-unicode table for
 * byte-level vocabularies, <0xXX> for byte fallback. */
static int32_t byte_id(const struct fix *f, unsigned char b) {
  char s[8];
  size_t n;
  if (f->byte_level) {
    uint32_t cp = b;
    if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae)) {
      uint32_t k = 0;
      for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || c >= 0xae)) k++;
      cp = 256 + k;
    }
    n = lm_utf8_put(s, cp);
  } else {
    n = (size_t)snprintf(s, sizeof(s), "<0x%02X>", b);
  }
  return lm_tokenizer_token_id(f->tok, s, n);
}

/* Appends s one byte token at a time: every character's bytes end up in
 * separate tokens. */
static void add_bytes(const struct fix *f, lm_tokens *t, const char *s) {
  for (; *s; s++)
    add_id(t, byte_id(f, (unsigned char)*s));
}

/* ---- running an outproc ------------------------------------------------ */

struct run {
  enum lm_finish_reason why;
  int consumed; /* tokens pushed until the finish */
  struct lm_strbuf text;
  int bad_utf8;     /* a delta that is not whole, valid UTF-8 */
  int leaked_stop;  /* a delta released while a later match started inside it */
  const char *stop; /* the matched stop string (points into stop_copy), or NULL */
  char stop_copy[64];
  int32_t stop_id;
  size_t release_at[512]; /* text length after each push */
};

struct params {
  const char *const *stop;
  int n_stop;
  const int32_t *stop_ids;
  int n_stop_ids;
  int min_tokens, max_tokens, include, ignore_eos, keep_special;
};

static lm_outproc *make(const struct fix *f, const struct params *q) {
  struct lm_request_params p;
  char err[LM_ERR_LEN];
  memset(&p, 0, sizeof(p));
  p.stop = q->stop;
  p.n_stop = q->n_stop;
  p.stop_token_ids = q->stop_ids;
  p.n_stop_token_ids = q->n_stop_ids;
  p.min_tokens = q->min_tokens;
  p.include_stop_str_in_output = q->include;
  p.ignore_eos = q->ignore_eos;
  p.skip_special_tokens = !q->keep_special;
  lm_outproc *o = NULL;
  if (lm_outproc_create(f->tok, &f->cfg, &p, q->max_tokens, &o, err) != LM_OK)
    printf("# create: %s\n", err);
  return o;
}

/* Pushes ids until the outproc finishes (or flushes after the last). */
static void run(const struct fix *f, const struct params *q, const lm_tokens *t, struct run *r) {
  memset(r, 0, sizeof(*r));
  lm_outproc *o = make(f, q);
  if (!o) {
    r->why = LM_FINISH_ERROR;
    return;
  }
  for (size_t i = 0; i < t->n; i++) {
    size_t before = r->text.len;
    r->why = lm_outproc_push(o, t->ids[i], &r->text);
    r->consumed = (int)i + 1;
    size_t got = r->text.len - before;
    if (got && lm_utf8_valid_prefix(r->text.data + before, got) != got) r->bad_utf8 = 1;
    if (i < 512) r->release_at[i] = r->text.len;
    if (r->why != LM_FINISH_NONE) break;
  }
  if (r->why == LM_FINISH_NONE) lm_outproc_flush(o, &r->text);
  const char *m = lm_outproc_stop_str(o);
  if (m) {
    snprintf(r->stop_copy, sizeof(r->stop_copy), "%s", m);
    r->stop = r->stop_copy;
  }
  r->stop_id = lm_outproc_stop_token(o);
  lm_outproc_free(o);
}

static char *decode(const struct fix *f, const int32_t *ids, size_t n, int skip, size_t *len) {
  char *s = NULL, err[LM_ERR_LEN];
  if (lm_tokenizer_decode(f->tok, ids, n, skip, &s, len, err) != LM_OK) {
    printf("# decode: %s\n", err);
    *len = 0;
    s = calloc(1, 1);
  }
  return s;
}

static int text_is(const struct run *r, const char *want) {
  size_t n = strlen(want);
  int ok = r->text.len == n && (!n || !memcmp(r->text.data, want, n));
  if (!ok) printf("#   got  \"%.*s\"\n#   want \"%s\"\n", (int)r->text.len, r->text.data, want);
  return ok;
}

/* ---- scenarios ---------------------------------------------------------- */

static void test_split_across_tokens(const struct fix *f) {
  const char *stop[] = {"world"};
  struct params q = {.stop = stop, .n_stop = 1, .max_tokens = 100};
  lm_tokens t = {0};
  add_text(f, &t, "The answer is");
  size_t before_wor = t.n;
  add_text(f, &t, " wor");
  size_t after_wor = t.n;
  add_text(f, &t, "ld");
  size_t after_ld = t.n;
  add_text(f, &t, " and more");
  struct run r;
  run(f, &q, &t, &r);
  lm_check(r.why == LM_FINISH_STOP_STRING && r.consumed == (int)after_ld && r.stop &&
               !strcmp(r.stop, "world") && text_is(&r, "The answer is "),
           "%s: a stop string split over tokens ends the request at its last token (%d of %zu)",
           f->name, r.consumed, after_ld);
  /* after " wor" only "The answer is " may be out: "wor" could start "world" */
  lm_check(r.release_at[after_wor - 1] == strlen("The answer is ") && before_wor > 0,
           "%s: text that could start a stop string is held back (%zu bytes out)", f->name,
           r.release_at[after_wor - 1]);
  lm_strbuf_free(&r.text);

  /* the held text is released once it cannot be a stop string */
  t.n = 0;
  add_text(f, &t, "The answer is");
  add_text(f, &t, " wor");
  after_wor = t.n;
  add_text(f, &t, "k");
  size_t after_k = t.n;
  add_text(f, &t, " done");
  run(f, &q, &t, &r);
  lm_check(r.release_at[after_k - 1] == strlen("The answer is work") &&
               r.release_at[after_wor - 1] < r.release_at[after_k - 1],
           "%s: held text is released as soon as it cannot start a stop string", f->name);
  lm_check(r.why == LM_FINISH_NONE && text_is(&r, "The answer is work done"),
           "%s: no stop string: all the text comes out", f->name);
  lm_strbuf_free(&r.text);
  lm_tokens_free(&t);
}

/* A token of a space and the first byte of a character: the detokenizer
 * holds both back until the character completes. If the request then ends
 * from outside (an abort), the flushed text still stops at a stop string. */
static void test_flush_stops(const struct fix *f) {
  int32_t id = -1;
  size_t vocab = lm_tokenizer_vocab_size(f->tok);
  for (size_t i = 0; i < vocab && id < 0; i++) {
    size_t len, tl;
    int32_t one = (int32_t)i;
    const char *tok = lm_tokenizer_id_token(f->tok, one, &tl);
    char *s = tok && !lm_tokenizer_is_special(f->tok, one) ? decode(f, &one, 1, 1, &len) : NULL;
    if (s && len == 4 && !memcmp(s, " \xef\xbf\xbd", 4)) id = one;
    free(s);
  }
  if (!lm_check(id >= 0, "%s: a token decodes to a space and an incomplete character", f->name))
    return;
  lm_tokens t = {0};
  add_text(f, &t, "A");
  add_id(&t, id);
  for (int include = 0; include < 2; include++) {
    const char *stop[] = {" "};
    struct params q = {.stop = stop, .n_stop = 1, .max_tokens = 100, .include = include};
    struct run r;
    run(f, &q, &t, &r);
    lm_check(r.why == LM_FINISH_NONE && r.release_at[t.n - 1] == 1 &&
                 text_is(&r, include ? "A " : "A"),
             "%s: the space of token %d is held back, and the flush at an abort stops at it%s",
             f->name, id, include ? " (included)" : "");
    lm_strbuf_free(&r.text);
  }
  lm_tokens_free(&t);
}

static void test_multibyte(const struct fix *f) {
  /* 日 = e6 97 a5, 😀 = f0 9f 98 80; each byte in its own token */
  lm_tokens t = {0};
  add_text(f, &t, "Price:");
  add_bytes(f, &t, "\xe6\x97\xa5");
  add_bytes(f, &t, "\xf0\x9f\x98\x80");
  add_text(f, &t, " ok");
  size_t n_full;
  char *full = decode(f, t.ids, t.n, 1, &n_full);
  int ids_ok = 1;
  for (size_t i = 0; i < t.n; i++)
    ids_ok &= t.ids[i] >= 0;
  lm_check(ids_ok && strstr(full, "Price:\xe6\x97\xa5\xf0\x9f\x98\x80"),
           "%s: byte tokens decode to the characters (\"%s\")", f->name, full);

  /* the text wanted is the full decode, cut where a whole-character stop
   * string starts; stop strings that are parts of characters never match */
  static const struct {
    const char *stop;
    int matches;
  } cases[] = {
      {"\x97\xa5", 0},     /* the second half of 日 */
      {"\xa5\xf0\x9f", 0}, /* the end of 日 and the start of 😀 */
      {"\xf0\x9f", 0},     /* the first half of 😀 */
      {":\xe6\x97\xa5\xf0", 0}, {"\xe6\x97\xa5", 1}, {"\xf0\x9f\x98\x80", 1},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const char *stop[] = {cases[c].stop};
    struct params q = {.stop = stop, .n_stop = 1, .max_tokens = 100};
    struct run r;
    run(f, &q, &t, &r);
    const char *at = strstr(full, cases[c].stop);
    size_t want = cases[c].matches && at ? (size_t)(at - full) : n_full;
    lm_check(!r.bad_utf8 && at &&
                 r.why == (cases[c].matches ? LM_FINISH_STOP_STRING : LM_FINISH_NONE) &&
                 r.text.len == want && !memcmp(r.text.data, full, want),
             "%s: stop string %zu inside multi-byte characters: whole characters only, %s", f->name,
             c, cases[c].matches ? "matched" : "never matched inside a character");
    lm_strbuf_free(&r.text);
  }
  free(full);
  lm_tokens_free(&t);
}

static void test_overlapping(const struct fix *f) {
  static const struct {
    const char *stop[3];
    int n;
    const char *text, *want, *matched;
  } cases[] = {
      {{"abcd", "bc"}, 2, "xabcde", "xa", "bc"},   /* the one that ends first */
      {{"bc", "abcd"}, 2, "xabcde", "xa", "bc"},   /* whatever the list order */
      {{"cd", "bcd"}, 2, "xabcde", "xa", "bcd"},   /* same end: the longer */
      {{"ab", "abc"}, 2, "xabcde", "x", "ab"},     /* a prefix of another */
      {{"aa", "aab"}, 2, "xaaab", "x", "aa"},      /* repeated characters */
      {{"yyz", "q"}, 2, "yyyyyz yz", "yyy", "yyz"} /* partial matches restart */
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    struct params q = {.stop = cases[c].stop, .n_stop = cases[c].n, .max_tokens = 100};
    /* one character per token, and the whole text in as few tokens as BPE
     * makes: the outcome must not depend on the split */
    for (int split = 0; split < 2; split++) {
      lm_tokens t = {0};
      if (split) {
        add_text(f, &t, cases[c].text);
      } else {
        for (const char *p = cases[c].text; *p; p++) {
          char one[2] = {*p, 0};
          add_text(f, &t, one);
        }
      }
      struct run r;
      run(f, &q, &t, &r);
      lm_check(r.why == LM_FINISH_STOP_STRING && r.stop && !strcmp(r.stop, cases[c].matched) &&
                   text_is(&r, cases[c].want),
               "%s: overlapping stop strings case %zu (%s): \"%s\" matches", f->name, c,
               split ? "BPE tokens" : "one token per character", cases[c].matched);
      lm_strbuf_free(&r.text);
      lm_tokens_free(&t);
    }
  }
}

static void test_include_stop(const struct fix *f) {
  const char *stop[] = {"STOP"};
  struct params q = {.stop = stop, .n_stop = 1, .max_tokens = 100, .include = 1};
  lm_tokens t = {0};
  add_text(f, &t, "one two ST");
  add_text(f, &t, "OP three");
  struct run r;
  run(f, &q, &t, &r);
  lm_check(r.why == LM_FINISH_STOP_STRING && text_is(&r, "one two STOP"),
           "%s: include_stop_str_in_output keeps the stop string, drops what follows", f->name);
  lm_strbuf_free(&r.text);
  lm_tokens_free(&t);
}

static void test_min_tokens(const struct fix *f) {
  int32_t eos = f->cfg.eos_token_ids[0];
  lm_tokens t = {0};
  add_text(f, &t, "a");
  add_id(&t, eos); /* token 2: too early */
  add_text(f, &t, " b");
  add_text(f, &t, " c");
  size_t at = t.n;
  add_id(&t, eos);
  add_text(f, &t, " d");
  struct params q = {.min_tokens = (int)at - 1, .max_tokens = 100};
  struct run r;
  run(f, &q, &t, &r);
  lm_check(f->cfg.n_eos > 0 && r.why == LM_FINISH_EOS && r.consumed == (int)at + 1 &&
               r.stop_id == eos && text_is(&r, "a b c"),
           "%s: min_tokens %d: an EOS at token 2 is ignored, the one at token %zu ends it", f->name,
           q.min_tokens, at + 1);
  lm_strbuf_free(&r.text);
  q.min_tokens = 0;
  run(f, &q, &t, &r);
  lm_check(r.why == LM_FINISH_EOS && r.consumed == 2 && text_is(&r, "a"),
           "%s: without min_tokens the first EOS ends it", f->name);
  lm_strbuf_free(&r.text);
  q.ignore_eos = 1;
  run(f, &q, &t, &r);
  lm_check(r.why == LM_FINISH_NONE && r.consumed == (int)t.n && text_is(&r, "a b c d"),
           "%s: ignore_eos: EOS ids neither stop nor show (special, skipped)", f->name);
  lm_strbuf_free(&r.text);

  /* a stop string inside the first min_tokens tokens does not count; one
   * ending after them does */
  const char *stop[] = {"xy"};
  t.n = 0;
  add_text(f, &t, "xy");
  size_t n0 = t.n;
  add_text(f, &t, " x");
  add_text(f, &t, "y z");
  struct params q2 = {.stop = stop, .n_stop = 1, .min_tokens = (int)n0, .max_tokens = 100};
  run(f, &q2, &t, &r);
  lm_check(r.why == LM_FINISH_STOP_STRING && text_is(&r, "xy "),
           "%s: stop strings within the first min_tokens tokens are ignored", f->name);
  lm_strbuf_free(&r.text);
  lm_tokens_free(&t);
}

static void test_stop_ids_and_length(const struct fix *f) {
  lm_tokens t = {0}, and = {0};
  add_text(f, &and, " and");
  add_text(f, &t, "cats");
  add_text(f, &t, " and");
  add_text(f, &t, " dogs");
  struct params q = {.stop_ids = and.ids, .n_stop_ids = 1, .max_tokens = 100};
  struct run r;
  run(f, &q, &t, &r);
  lm_check(and.n == 1 && r.why == LM_FINISH_STOP_TOKEN && r.stop_id == and.ids[0] &&
               text_is(&r, "cats"),
           "%s: a stop token id ends the request and adds no text", f->name);
  lm_strbuf_free(&r.text);

  const char *stop[] = {"dogs!"};
  struct params q2 = {.stop = stop, .n_stop = 1, .max_tokens = (int)t.n};
  run(f, &q2, &t, &r);
  lm_check(r.why == LM_FINISH_LENGTH && r.consumed == (int)t.n && r.stop_id == -1 &&
               text_is(&r, "cats and dogs"),
           "%s: max_tokens ends it with length, releasing held text", f->name);
  lm_strbuf_free(&r.text);
  const char *stop2[] = {"dogs"};
  q2.stop = stop2;
  run(f, &q2, &t, &r);
  lm_check(r.why == LM_FINISH_STOP_STRING && text_is(&r, "cats and "),
           "%s: a stop string completed by the last allowed token wins over length", f->name);
  lm_strbuf_free(&r.text);

  /* the model's vocabulary can be larger than the tokenizer's */
  int32_t pad = (int32_t)lm_tokenizer_vocab_size(f->tok);
  if (pad >= f->cfg.vocab_size) { /* no room past the tokenizer's vocabulary */
    lm_tokens_free(&t);
    lm_tokens_free(&and);
    return;
  }
  t.n = 0;
  add_text(f, &t, "cats");
  add_id(&t, pad);
  add_text(f, &t, " and");
  struct params q3 = {.max_tokens = 100};
  run(f, &q3, &t, &r);
  lm_check((size_t)pad >= lm_tokenizer_vocab_size(f->tok) && r.why == LM_FINISH_NONE &&
               text_is(&r, "cats and"),
           "%s: an id past the tokenizer's vocabulary (%d) adds no text and is no error", f->name,
           (int)pad);
  lm_strbuf_free(&r.text);
  lm_tokens_free(&t);
  lm_tokens_free(&and);
}

static void test_special_tokens(const struct fix *f, const char *special) {
  int32_t sid = lm_tokenizer_token_id(f->tok, special, strlen(special));
  lm_tokens t = {0};
  add_text(f, &t, "Hi");
  add_id(&t, sid);
  add_text(f, &t, " there");
  for (int keep = 0; keep < 2; keep++) {
    struct params q = {.max_tokens = 100, .keep_special = keep};
    struct run r;
    run(f, &q, &t, &r);
    size_t n;
    char *want = decode(f, t.ids, t.n, !keep, &n);
    lm_check(sid >= 0 && lm_tokenizer_is_special(f->tok, sid) && r.text.len == n &&
                 !memcmp(r.text.data, want, n) && (strstr(want, special) != NULL) == keep,
             "%s: skip_special_tokens %s: %s %s", f->name, keep ? "off" : "on", special,
             keep ? "shown" : "skipped");
    free(want);
    lm_strbuf_free(&r.text);
  }
  lm_tokens_free(&t);
}

static void test_bad_params(const struct fix *f) {
  const char *empty[] = {""};
  struct params q = {.stop = empty, .n_stop = 1, .max_tokens = 10};
  struct lm_request_params p;
  char err[LM_ERR_LEN] = "";
  lm_outproc *o = NULL;
  memset(&p, 0, sizeof(p));
  p.stop = q.stop;
  p.n_stop = 1;
  int rc = lm_outproc_create(f->tok, &f->cfg, &p, 10, &o, err);
  lm_check(rc == LM_EINVAL && !o && strstr(err, "stop[0]"), "%s: an empty stop string is refused",
           f->name);
  p.n_stop = 0;
  p.min_tokens = -1;
  rc = lm_outproc_create(f->tok, &f->cfg, &p, 10, &o, err);
  lm_check(rc == LM_EINVAL && strstr(err, "min_tokens"), "%s: min_tokens < 0 is refused", f->name);
  p.min_tokens = 0;
  rc = lm_outproc_create(f->tok, &f->cfg, &p, 0, &o, err);
  lm_check(rc == LM_EINVAL && strstr(err, "max_tokens"), "%s: max_tokens 0 is refused", f->name);
}

/* ---- randomized against a reference ------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % n);
}

/* decode(ids[0, k)) without trailing U+FFFD (an incomplete character) */
static char *prefix_text(const struct fix *f, const int32_t *ids, size_t k, int strip, size_t *n) {
  char *s = decode(f, ids, k, 1, n);
  while (strip && *n >= 3 && !memcmp(s + *n - 3, "\xef\xbf\xbd", 3))
    *n -= 3;
  return s;
}

static int at_boundary(const char *s, size_t n, size_t i) {
  return i >= n || ((unsigned char)s[i] & 0xc0) != 0x80;
}

/* The reference: the first k whose text holds a stop string (on character
 * boundaries, ending after the first min_tokens tokens' text), the one
 * ending first (ties: longer). */
static void reference(const struct fix *f, const lm_tokens *t, const struct params *q,
                      struct lm_strbuf *want, enum lm_finish_reason *why, const char **matched) {
  size_t m0 = 0, n;
  *matched = NULL;
  if (q->min_tokens > 0) free(prefix_text(f, t->ids, (size_t)q->min_tokens, 1, &m0));
  for (size_t k = (size_t)q->min_tokens + 1; k <= t->n; k++) {
    int last = k == t->n || (int)k == q->max_tokens;
    size_t tl = 0;
    const char *tk = lm_tokenizer_id_token(f->tok, t->ids[k - 1], &tl);
    /* ByteFallback decodes a run of byte tokens as a whole (U+FFFD for each
     * byte of an invalid run): nothing is final while the run goes on */
    if (!last && !f->byte_level && tk && tl == 6 && !memcmp(tk, "<0x", 3)) continue;
    char *s = prefix_text(f, t->ids, k, !last, &n);
    int best = -1;
    size_t best_end = 0, best_start = 0;
    for (int i = 0; i < q->n_stop; i++) {
      size_t sl = strlen(q->stop[i]);
      for (size_t st = 0; st + sl <= n; st++) {
        if (st + sl <= m0 || memcmp(s + st, q->stop[i], sl) || !at_boundary(s, n, st) ||
            !at_boundary(s, n, st + sl))
          continue;
        if (best < 0 || st + sl < best_end || (st + sl == best_end && st < best_start)) {
          best = i;
          best_end = st + sl;
          best_start = st;
        }
        break;
      }
    }
    if (best >= 0 || last) {
      size_t keep = best >= 0 ? best_start + (q->include ? strlen(q->stop[best]) : 0) : n;
      lm_strbuf_append(want, s, keep);
      *why = best >= 0                 ? LM_FINISH_STOP_STRING
             : (int)k == q->max_tokens ? LM_FINISH_LENGTH
                                       : LM_FINISH_NONE;
      if (best >= 0) *matched = q->stop[best];
      free(s);
      return;
    }
    free(s);
  }
}

static void test_random(const struct fix *f, int iters) {
  static const char *const pieces[] = {
      "Hello", " world",   ",",   " the", " quick", " brown", " fox", " 日本語",
      "の",    "テキスト", " 😀",  "🎉",    " café",  " naïve", " –",   " done",
      ".",     "\n",       " ab", "c",    "abc",    " 中文",
  };
  const size_t n_pieces = sizeof(pieces) / sizeof(pieces[0]);
  int fails = 0, matched_any = 0, utf8_bad = 0;
  for (int it = 0; it < iters; it++) {
    lm_tokens t = {0};
    int n_parts = 4 + (int)rnd(10);
    for (int i = 0; i < n_parts; i++) {
      const char *p = pieces[rnd((uint32_t)n_pieces)];
      if (rnd(4) == 0)
        add_bytes(f, &t, p);
      else
        add_text(f, &t, p);
    }
    size_t n_full;
    char *full = decode(f, t.ids, t.n, 1, &n_full);
    char stops[3][16];
    const char *sp[3];
    int n_stop = 1 + (int)rnd(3);
    for (int i = 0; i < n_stop; i++) {
      size_t len = 1 + rnd(6), at = n_full > len ? rnd((uint32_t)(n_full - len)) : 0;
      if (len > n_full) len = n_full;
      memcpy(stops[i], full + at, len);
      stops[i][len] = '\0';
      if (rnd(8) == 0) strcpy(stops[i], "zzz");
      if (!stops[i][0]) strcpy(stops[i], "q");
      sp[i] = stops[i];
    }
    struct params q = {.stop = sp,
                       .n_stop = n_stop,
                       .include = (int)rnd(2),
                       .min_tokens = f->byte_level ? (int)rnd(4) : 0,
                       .max_tokens = rnd(3) ? (int)t.n : 1 + (int)rnd((uint32_t)t.n)};
    if (q.min_tokens >= q.max_tokens) q.min_tokens = 0;
    struct run r;
    run(f, &q, &t, &r);
    struct lm_strbuf want = {0};
    enum lm_finish_reason why = LM_FINISH_NONE;
    const char *m = NULL;
    reference(f, &t, &q, &want, &why, &m);
    int ok = r.why == why && r.text.len == want.len &&
             (!want.len || !memcmp(r.text.data, want.data, want.len)) &&
             ((!m && !r.stop) || (m && r.stop && !strcmp(m, r.stop)));
    if (why == LM_FINISH_STOP_STRING) matched_any++;
    if (r.bad_utf8) utf8_bad++;
    if (!ok && fails++ < 3) {
      printf("# iteration %d: reason %s want %s; got \"%.*s\" want \"%.*s\"; max_tokens %d of %zu, "
             "min_tokens %d, stops:",
             it, lm_finish_reason_name(r.why), lm_finish_reason_name(why), (int)r.text.len,
             r.text.data ? r.text.data : "", (int)want.len, want.data ? want.data : "",
             q.max_tokens, t.n, q.min_tokens);
      for (int i = 0; i < n_stop; i++) {
        printf(" \"");
        for (const char *c = sp[i]; *c; c++)
          printf((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f ? "\\x%02x" : "%c",
                 (unsigned char)*c);
        printf("\"");
      }
      printf("\n");
    }
    lm_strbuf_free(&want);
    lm_strbuf_free(&r.text);
    free(full);
    lm_tokens_free(&t);
  }
  lm_check(fails == 0 && matched_any > iters / 4,
           "%s: %d random token streams: text deltas concatenated equal the reference decode "
           "up to the stop string (%d stopped by one), same finish reason",
           f->name, iters, matched_any);
  lm_check(utf8_bad == 0, "%s: every text delta is whole, valid UTF-8", f->name);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: output_test FIXTURES_DIR\n");
    return 2;
  }
  static const struct {
    const char *name, *special;
    int byte_level; /* also exact-text scenarios (sentencepiece doubles spaces) */
  } fixtures[] = {
      {"qwen3-bf16", "<|im_start|>", 1},
      {"llama31-f32", "<|start_header_id|>", 1},
      {"llama2-f32", "<s>", 0},
  };
  for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
    struct fix f;
    if (!lm_check(load_fix(argv[1], fixtures[i].name, fixtures[i].byte_level, &f) == LM_OK,
                  "%s: tokenizer and config load", fixtures[i].name))
      continue;
    test_multibyte(&f);
    test_special_tokens(&f, fixtures[i].special);
    if (f.byte_level) {
      test_split_across_tokens(&f);
      test_overlapping(&f);
      test_include_stop(&f);
      test_min_tokens(&f);
      test_stop_ids_and_length(&f);
      test_flush_stops(&f);
    }
    test_bad_params(&f);
    test_random(&f, 300);
    lm_tokenizer_free(f.tok);
  }
  return lm_check_done();
}
