/* tok_util.c - UTF-8, character classes, buffers and the string hash map
 * that the tokenizer stages share. */
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

/* ---- character classes ------------------------------------------------ */

static uint8_t bmp_class[0x10000];
static pthread_once_t bmp_once = PTHREAD_ONCE_INIT;

static void fill(const lm_tok_range *r, size_t n, uint8_t bit) {
  for (size_t i = 0; i < n; i++)
    for (uint32_t c = r[i].lo; c <= r[i].hi && c < 0x10000; c++)
      bmp_class[c] |= bit;
}

static void bmp_init(void) {
  fill(lm_tok_letter, lm_tok_letter_n, LM_CC_L);
  fill(lm_tok_number, lm_tok_number_n, LM_CC_N);
  fill(lm_tok_space, lm_tok_space_n, LM_CC_S);
  fill(lm_tok_nfc_opaque, lm_tok_nfc_opaque_n, LM_CC_OPAQUE);
}

static int in_ranges(const lm_tok_range *r, size_t n, uint32_t c) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < r[mid].lo)
      hi = mid;
    else if (c > r[mid].hi)
      lo = mid + 1;
    else
      return 1;
  }
  return 0;
}

uint8_t lm_tok_cclass(uint32_t cp) {
  if (cp < 0x10000) {
    pthread_once(&bmp_once, bmp_init);
    return bmp_class[cp];
  }
  uint8_t c = 0;
  if (in_ranges(lm_tok_letter, lm_tok_letter_n, cp)) c |= LM_CC_L;
  if (in_ranges(lm_tok_number, lm_tok_number_n, cp)) c |= LM_CC_N;
  if (in_ranges(lm_tok_space, lm_tok_space_n, cp)) c |= LM_CC_S;
  if (in_ranges(lm_tok_nfc_opaque, lm_tok_nfc_opaque_n, cp)) c |= LM_CC_OPAQUE;
  return c;
}

/* ---- UTF-8 ------------------------------------------------------------- */

int lm_buf_put_lossy(lm_buf *b, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t ok = lm_utf8_valid_prefix(s + i, n - i);
    if (lm_buf_put(b, s + i, ok)) return LM_ENOMEM;
    i += ok;
    if (i >= n) break;
    size_t bad = 1;
    lm_utf8_seq_len(u + i, n - i, &bad);
    if (lm_buf_put(b, "\xef\xbf\xbd", 3)) return LM_ENOMEM;
    i += bad;
  }
  return LM_OK;
}

/* ---- buffers ----------------------------------------------------------- */

int lm_buf_reserve(lm_buf *b, size_t extra) {
  if (b->cap - b->n >= extra + 1) return LM_OK;
  size_t cap = b->cap ? b->cap : 64;
  while (cap - b->n < extra + 1)
    cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return LM_ENOMEM;
  b->p = p;
  b->cap = cap;
  return LM_OK;
}

int lm_buf_put(lm_buf *b, const void *s, size_t n) {
  if (lm_buf_reserve(b, n)) return LM_ENOMEM;
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
  return LM_OK;
}

void lm_buf_free(lm_buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

int lm_spans_push(lm_spans *s, size_t start, size_t end) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 32;
    lm_span *v = realloc(s->v, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n].start = start;
  s->v[s->n].end = end;
  s->n++;
  return LM_OK;
}

void lm_spans_free(lm_spans *s) {
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
}

int lm_tokens_push(lm_tokens *t, int32_t id) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    int32_t *v = realloc(t->ids, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    t->ids = v;
    t->cap = cap;
  }
  t->ids[t->n++] = id;
  return LM_OK;
}

void lm_tokens_free(lm_tokens *t) {
  if (!t) return;
  free(t->ids);
  t->ids = NULL;
  t->n = t->cap = 0;
}

/* ---- hashing ----------------------------------------------------------- */

uint64_t lm_tok_mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ull;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ull;
  x ^= x >> 32;
  return x;
}

uint64_t lm_tok_hash(const void *s, size_t n) {
  const unsigned char *p = s;
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = (h ^ lm_tok_mix64(w)) * 0x9fb21c651e98df25ull;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  for (size_t i = 0; i < n; i++)
    w |= (uint64_t)p[i] << (8 * i);
  h = (h ^ lm_tok_mix64(w ^ 0xa0761d6478bd642full)) * 0x9fb21c651e98df25ull;
  return lm_tok_mix64(h);
}

/* ---- string map -------------------------------------------------------- */

int lm_strmap_init(lm_strmap *m, size_t expected) {
  memset(m, 0, sizeof(*m));
  size_t slots = 16;
  while (slots < expected * 2)
    slots *= 2;
  m->slots = calloc(slots, sizeof(*m->slots));
  if (!m->slots) return LM_ENOMEM;
  m->mask = slots - 1;
  return LM_OK;
}

static int strmap_grow(lm_strmap *m) {
  size_t slots = (m->mask + 1) * 2;
  uint32_t *s = calloc(slots, sizeof(*s));
  if (!s) return LM_ENOMEM;
  for (size_t i = 0; i < m->n; i++) {
    size_t j = m->keys[i].hash & (slots - 1);
    while (s[j])
      j = (j + 1) & (slots - 1);
    s[j] = (uint32_t)(i + 1);
  }
  free(m->slots);
  m->slots = s;
  m->mask = slots - 1;
  return LM_OK;
}

int lm_strmap_put(lm_strmap *m, const char *k, size_t n, int32_t val) {
  uint64_t h = lm_tok_hash(k, n);
  size_t j = h & m->mask;
  while (m->slots[j]) {
    struct lm_strmap_key *e = &m->keys[m->slots[j] - 1];
    if (e->hash == h && e->len == n && memcmp(m->bytes.p + e->off, k, n) == 0) {
      e->val = val;
      return LM_OK;
    }
    j = (j + 1) & m->mask;
  }
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    struct lm_strmap_key *v = realloc(m->keys, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    m->keys = v;
    m->cap = cap;
  }
  struct lm_strmap_key *e = &m->keys[m->n];
  e->hash = h;
  e->off = m->bytes.n;
  e->len = n;
  e->val = val;
  /* keys stay NUL-terminated so lookups by id can hand out C strings */
  if (lm_buf_put(&m->bytes, k, n) || lm_buf_put(&m->bytes, "", 1)) return LM_ENOMEM;
  m->slots[j] = (uint32_t)(++m->n);
  if (m->n * 2 > m->mask + 1) return strmap_grow(m);
  return LM_OK;
}

int32_t lm_strmap_get(const lm_strmap *m, const char *k, size_t n) {
  uint64_t h = lm_tok_hash(k, n);
  size_t j = h & m->mask;
  while (m->slots[j]) {
    const struct lm_strmap_key *e = &m->keys[m->slots[j] - 1];
    if (e->hash == h && e->len == n && memcmp(m->bytes.p + e->off, k, n) == 0) return e->val;
    j = (j + 1) & m->mask;
  }
  return -1;
}

void lm_strmap_free(lm_strmap *m) {
  free(m->slots);
  free(m->keys);
  lm_buf_free(&m->bytes);
  memset(m, 0, sizeof(*m));
}

const char *lm_tok_jtype(const lm_json *j) {
  return j ? lm_json_type_name(j->type) : "missing";
}
