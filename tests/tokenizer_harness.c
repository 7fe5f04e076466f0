/* tokenizer_harness.c - the C side of tests/tokenizer_parity.js.
 *
 *   tokenizer_harness DIR < records > results
 *
 * Each record is a header line "E <nbytes>\n" followed by that many bytes of
 * text (any bytes), or "D <nbytes>\n" followed by space-separated ids. For E
 * it prints one JSON line {"a":[ids without specials],"b":[ids with
 * specials],"d0":decode(b),"d1":decode(b, skip_special),"s":stream_ok};
 * for D {"d0":...,"d1":...,"s":...}. stream_ok says whether feeding the ids
 * one at a time through lm_detok gave exactly the decode (for both
 * skip_special settings) with every delta valid UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json.h"
#include "engine/lm.h"
#include "engine/tokenizer.h"

static int valid_utf8(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    unsigned char b = u[i];
    size_t l = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (!l || i + l > n) return 0;
    for (size_t k = 1; k < l; k++)
      if ((u[i + k] & 0xc0) != 0x80) return 0;
    i += l;
  }
  return 1;
}

static int stream_ok(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip,
                     const char *want, size_t want_len) {
  lm_detok *d = NULL;
  char err[LM_ERR_LEN];
  char *got = NULL;
  size_t len = 0, cap = 0;
  int ok = 1;
  if (lm_detok_create(tok, skip, &d)) return 0;
  for (size_t i = 0; i <= n && ok; i++) {
    const char *delta;
    size_t dl;
    int rc =
        i < n ? lm_detok_push(d, ids[i], &delta, &dl, err) : lm_detok_flush(d, &delta, &dl, err);
    if (rc || !valid_utf8(delta, dl)) {
      ok = 0;
      break;
    }
    if (len + dl + 1 > cap) {
      cap = (len + dl + 1) * 2;
      char *g = realloc(got, cap);
      if (!g) {
        ok = 0;
        break;
      }
      got = g;
    }
    memcpy(got + len, delta, dl);
    len += dl;
  }
  if (ok) ok = len == want_len && (len == 0 || !memcmp(got, want, len));
  free(got);
  lm_detok_free(d);
  return ok;
}

static void print_ids(const char *key, const lm_tokens *t) {
  printf("\"%s\":[", key);
  for (size_t i = 0; i < t->n; i++)
    printf(i ? ",%d" : "%d", (int)t->ids[i]);
  printf("]");
}

static int decode_and_stream(const lm_tokenizer *tok, const lm_tokens *t) {
  char err[LM_ERR_LEN];
  int ok = 1;
  for (int skip = 0; skip < 2; skip++) {
    char *text;
    size_t len;
    if (lm_tokenizer_decode(tok, t->ids, t->n, skip, &text, &len, err)) {
      fprintf(stderr, "decode: %s\n", err);
      return -1;
    }
    printf(",\"d%d\":", skip);
    lm_json_write_str(stdout, text, len);
    ok = ok && stream_ok(tok, t->ids, t->n, skip, text, len);
    free(text);
  }
  printf(",\"s\":%d}\n", ok);
  return 0;
}

int main(int argc, char **argv) {
  char err[LM_ERR_LEN];
  lm_tokenizer *tok;
  if (argc != 2) {
    fprintf(stderr, "usage: %s TOKENIZER_DIR < records\n", argv[0]);
    return 2;
  }
  if (lm_tokenizer_load(argv[1], &tok, err)) {
    fprintf(stderr, "load: %s\n", err);
    return 1;
  }
  char kind;
  size_t n;
  char *buf = NULL;
  size_t cap = 0;
  lm_tokens a = {0}, b = {0};
  while (scanf(" %c %zu", &kind, &n) == 2) {
    if (getchar() != '\n') break;
    if (n + 1 > cap) {
      cap = (n + 1) * 2;
      buf = realloc(buf, cap);
      if (!buf) return 1;
    }
    if (fread(buf, 1, n, stdin) != n) break;
    buf[n] = '\0';
    a.n = b.n = 0;
    if (kind == 'E') {
      if (lm_tokenizer_encode(tok, buf, n, 0, &a, err) ||
          lm_tokenizer_encode(tok, buf, n, 1, &b, err)) {
        fprintf(stderr, "encode: %s\n", err);
        return 1;
      }
      printf("{");
      print_ids("a", &a);
      printf(",");
      print_ids("b", &b);
    } else {
      char *p = buf, *end;
      while (*p) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        lm_tokens *t = &b;
        if (t->n == t->cap) {
          t->cap = t->cap ? t->cap * 2 : 64;
          t->ids = realloc(t->ids, t->cap * sizeof(*t->ids));
          if (!t->ids) return 1;
        }
        t->ids[t->n++] = (int32_t)v;
        p = end;
      }
      printf("{\"n\":%zu", b.n);
    }
    if (decode_and_stream(tok, &b)) return 1;
  }
  fflush(stdout);
  lm_tokens_free(&a);
  lm_tokens_free(&b);
  free(buf);
  lm_tokenizer_free(tok);
  return 0;
}
