/* tok_bpe.c - the BPE model: vocabulary, merge ranks, byte fallback, unk
 * handling and a word cache shared by all threads.
 *
 * Merging follows the library's Word::merge_all: always merge the adjacent
 * pair with the lowest rank, the leftmost one on ties. Short words do it by
 * scanning (cheaper than a heap at that size), long ones with a binary heap
 * whose stale entries are skipped, so long inputs stay O(n log n).
 *
 * The cache: encode runs on many threads over one const tokenizer, so the
 * cache is split into shards, each behind its own mutex, and a thread only
 * ever try-locks one: when the shard is busy it computes the word instead
 * of waiting (the library's cache does the same with its RwLock). Each shard
 * is direct-mapped; a collision replaces the older word. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

#define CACHE_SHARDS    128
#define CACHE_SLOTS     1024      /* per shard */
#define CACHE_MAX_BYTES 256       /* longer words are not cached, as in the library */
#define SCAN_MAX        48        /* words up to this many symbols merge by scanning */
#define LM_TOK_MAX_ID   (1 << 24) /* vocabulary ids below this (real ones: < 300k) */

struct cache_entry {
  uint64_t hash;
  uint32_t klen, nids;
  char *data; /* key bytes, then nids int32 ids */
};

struct cache_shard {
  pthread_mutex_t mu;
  struct cache_entry *slots;
};

struct merge_slot {
  uint64_t key; /* a << 32 | b, or UINT64_MAX when empty */
  uint32_t rank;
  int32_t new_id;
};

struct lm_tok_bpe {
  lm_strmap vocab;
  size_t *id_off; /* id -> offset of its string in vocab.bytes, or SIZE_MAX */
  uint32_t *id_len;
  int32_t max_id;
  struct merge_slot *merges;
  size_t merge_mask;
  int32_t unk_id; /* -1: no unk_token */
  int fuse_unk, byte_fallback, ignore_merges;
  char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
  size_t prefix_len, suffix_len;
  int32_t byte_ids[256]; /* <0xXX> tokens, -1 when absent */
  int32_t *small_ids;    /* code point < 0x800 -> id (no prefix/suffix), -1 */
  struct cache_shard *cache;
};

static const struct merge_slot *merge_get(const lm_tok_bpe *m, int32_t a, int32_t b) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t j = lm_tok_mix64(key) & m->merge_mask;
  for (;;) {
    const struct merge_slot *s = &m->merges[j];
    if (s->key == key) return s;
    if (s->key == UINT64_MAX) return NULL;
    j = (j + 1) & m->merge_mask;
  }
}

static void merge_put(lm_tok_bpe *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t j = lm_tok_mix64(key) & m->merge_mask;
  while (m->merges[j].key != UINT64_MAX && m->merges[j].key != key)
    j = (j + 1) & m->merge_mask;
  /* a repeated pair keeps the later rank, as the library's HashMap does */
  m->merges[j].key = key;
  m->merges[j].rank = rank;
  m->merges[j].new_id = new_id;
}

void lm_tok_bpe_free(lm_tok_bpe *m) {
  if (!m) return;
  lm_strmap_free(&m->vocab);
  free(m->id_off);
  free(m->id_len);
  free(m->merges);
  free(m->prefix);
  free(m->suffix);
  free(m->small_ids);
  if (m->cache) {
    for (size_t i = 0; i < CACHE_SHARDS; i++) {
      pthread_mutex_destroy(&m->cache[i].mu);
      for (size_t k = 0; m->cache[i].slots && k < CACHE_SLOTS; k++)
        free(m->cache[i].slots[k].data);
      free(m->cache[i].slots);
    }
    free(m->cache);
  }
  free(m);
}

static int opt_str(const lm_json *j, const char *key, char **out, size_t *len) {
  const lm_json *v = lm_json_get_type(j, key, LM_JSON_STRING);
  *out = NULL;
  *len = 0;
  if (!v || v->str_len == 0) return LM_OK;
  *out = malloc(v->str_len + 1);
  if (!*out) return LM_ENOMEM;
  memcpy(*out, v->str, v->str_len + 1);
  *len = v->str_len;
  return LM_OK;
}

static int parse_merges(lm_tok_bpe *m, const lm_json *arr, char *err) {
  size_t slots = 16;
  while (slots < arr->n_kids * 2)
    slots *= 2;
  m->merges = malloc(slots * sizeof(*m->merges));
  if (!m->merges) return lm_errf(err, LM_ENOMEM, "out of memory");
  for (size_t i = 0; i < slots; i++)
    m->merges[i].key = UINT64_MAX;
  m->merge_mask = slots - 1;
  lm_buf joined = {0};
  uint32_t rank = 0;
  int rc = LM_OK;
  for (size_t i = 0; i < arr->n_kids; i++) {
    const lm_json *e = &arr->kids[i];
    const char *a, *b;
    size_t al, bl;
    if (e->type == LM_JSON_STRING) {
      if (e->str_len >= 8 && !memcmp(e->str, "#version", 8)) continue;
      const char *sp = memchr(e->str, ' ', e->str_len);
      if (!sp || memchr(sp + 1, ' ', e->str_len - (size_t)(sp + 1 - e->str))) {
        rc = lm_errf(err, LM_EFORMAT, "model.merges[%zu]: expected \"a b\"", i);
        goto out;
      }
      a = e->str;
      al = (size_t)(sp - e->str);
      b = sp + 1;
      bl = e->str_len - al - 1;
    } else if (e->type == LM_JSON_ARRAY && e->n_kids == 2 && e->kids[0].type == LM_JSON_STRING &&
               e->kids[1].type == LM_JSON_STRING) {
      a = e->kids[0].str;
      al = e->kids[0].str_len;
      b = e->kids[1].str;
      bl = e->kids[1].str_len;
    } else {
      rc = lm_errf(err, LM_EFORMAT, "model.merges[%zu]: expected \"a b\" or [a, b]", i);
      goto out;
    }
    int32_t ia = lm_strmap_get(&m->vocab, a, al), ib = lm_strmap_get(&m->vocab, b, bl);
    size_t skip = m->prefix_len <= bl ? m->prefix_len : bl;
    joined.n = 0;
    if (lm_buf_put(&joined, a, al) || lm_buf_put(&joined, b + skip, bl - skip)) {
      rc = lm_errf(err, LM_ENOMEM, "out of memory");
      goto out;
    }
    int32_t in = lm_strmap_get(&m->vocab, joined.p, joined.n);
    if (ia < 0 || ib < 0 || in < 0) {
      rc = lm_errf(err, LM_EFORMAT, "model.merges[%zu]: token \"%.*s\" not in vocab", i,
                   ia < 0   ? (int)al
                   : ib < 0 ? (int)bl
                            : (int)joined.n,
                   ia < 0   ? a
                   : ib < 0 ? b
                            : joined.p);
      goto out;
    }
    merge_put(m, ia, ib, rank++, in);
  }
out:
  lm_buf_free(&joined);
  return rc;
}

int lm_tok_bpe_parse(const lm_json *j, lm_tok_bpe **out, char *err) {
  *out = NULL;
  int rc;
  const lm_json *type = lm_json_get_type(j, "type", LM_JSON_STRING);
  const lm_json *vocab = lm_json_get_type(j, "vocab", LM_JSON_OBJECT);
  const lm_json *merges = lm_json_get_type(j, "merges", LM_JSON_ARRAY);
  const lm_json *dropout = lm_json_get_type(j, "dropout", LM_JSON_NUMBER);
  if (!j || j->type != LM_JSON_OBJECT) return lm_errf(err, LM_EFORMAT, "model: missing");
  if (!type && vocab && merges)
    type = NULL; /* older files omit "type" for BPE */
  else if (!type || strcmp(type->str, "BPE") != 0)
    return lm_errf(err, LM_EUNSUP, "model: unsupported type \"%s\"", type ? type->str : "?");
  if (!vocab || !merges)
    return lm_errf(err, LM_EFORMAT, "model: BPE needs a \"vocab\" object and a \"merges\" array");
  if (dropout && dropout->number != 0.0)
    return lm_errf(err, LM_EUNSUP, "model.dropout: BPE dropout is not supported");
  lm_tok_bpe *m = calloc(1, sizeof(*m));
  if (!m) return lm_errf(err, LM_ENOMEM, "out of memory");
  if ((rc = lm_strmap_init(&m->vocab, vocab->n_kids))) goto oom;
  m->max_id = -1;
  for (size_t i = 0; i < vocab->n_kids; i++) {
    const lm_json *v = &vocab->kids[i];
    /* ids index dense tables: far beyond any real vocabulary is an error,
     * not gigabytes of them */
    if (v->type != LM_JSON_NUMBER || !v->is_int || v->integer < 0 || v->integer >= LM_TOK_MAX_ID) {
      rc = lm_errf(err, LM_EFORMAT, "model.vocab[\"%.*s\"]: expected an integer id in 0..%d",
                   (int)(v->key_len > 100 ? 100 : v->key_len), v->key, LM_TOK_MAX_ID - 1);
      goto err;
    }
    if ((rc = lm_strmap_put(&m->vocab, v->key, v->key_len, (int32_t)v->integer))) goto oom;
    if ((int32_t)v->integer > m->max_id) m->max_id = (int32_t)v->integer;
  }
  m->id_off = malloc(((size_t)m->max_id + 1) * sizeof(*m->id_off));
  m->id_len = malloc(((size_t)m->max_id + 1) * sizeof(*m->id_len));
  if (!m->id_off || !m->id_len) goto oom;
  for (int32_t i = 0; i <= m->max_id; i++)
    m->id_off[i] = SIZE_MAX;
  for (size_t i = 0; i < m->vocab.n; i++) {
    const struct lm_strmap_key *k = &m->vocab.keys[i];
    if (lm_strmap_get(&m->vocab, m->vocab.bytes.p + k->off, k->len) != k->val) continue;
    m->id_off[k->val] = k->off;
    m->id_len[k->val] = (uint32_t)k->len;
  }
  if (opt_str(j, "continuing_subword_prefix", &m->prefix, &m->prefix_len) ||
      opt_str(j, "end_of_word_suffix", &m->suffix, &m->suffix_len))
    goto oom;
  const lm_json *unk = lm_json_get_type(j, "unk_token", LM_JSON_STRING);
  m->unk_id = -1;
  if (unk) {
    m->unk_id = lm_strmap_get(&m->vocab, unk->str, unk->str_len);
    if (m->unk_id < 0) {
      rc = lm_errf(err, LM_EFORMAT, "model.unk_token: \"%s\" is not in the vocab", unk->str);
      goto err;
    }
  }
  const lm_json *b;
  m->fuse_unk = (b = lm_json_get_type(j, "fuse_unk", LM_JSON_BOOL)) && b->boolean;
  m->byte_fallback = (b = lm_json_get_type(j, "byte_fallback", LM_JSON_BOOL)) && b->boolean;
  m->ignore_merges = (b = lm_json_get_type(j, "ignore_merges", LM_JSON_BOOL)) && b->boolean;
  for (int i = 0; i < 256; i++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", i);
    m->byte_ids[i] = lm_strmap_get(&m->vocab, name, 6);
  }
  if ((rc = parse_merges(m, merges, err))) goto err;
  if (!m->prefix_len && !m->suffix_len) {
    m->small_ids = malloc(0x800 * sizeof(*m->small_ids));
    if (!m->small_ids) goto oom;
    for (uint32_t c = 0; c < 0x800; c++) {
      char tmp[4];
      size_t n = lm_utf8_put(tmp, c);
      m->small_ids[c] = lm_strmap_get(&m->vocab, tmp, n);
    }
  }
  m->cache = calloc(CACHE_SHARDS, sizeof(*m->cache));
  if (!m->cache) goto oom;
  for (size_t i = 0; i < CACHE_SHARDS; i++) {
    pthread_mutex_init(&m->cache[i].mu, NULL);
    m->cache[i].slots = calloc(CACHE_SLOTS, sizeof(struct cache_entry));
    if (!m->cache[i].slots) goto oom;
  }
  *out = m;
  return LM_OK;
oom:
  rc = lm_errf(err, LM_ENOMEM, "out of memory loading the BPE model");
err:
  lm_tok_bpe_free(m);
  return rc;
}

size_t lm_tok_bpe_vocab_size(const lm_tok_bpe *m) {
  return m->vocab.n;
}
int32_t lm_tok_bpe_max_id(const lm_tok_bpe *m) {
  return m->max_id;
}
int32_t lm_tok_bpe_token_id(const lm_tok_bpe *m, const char *s, size_t n) {
  return lm_strmap_get(&m->vocab, s, n);
}
const char *lm_tok_bpe_id_token(const lm_tok_bpe *m, int32_t id, size_t *len) {
  if (id < 0 || id > m->max_id || m->id_off[id] == SIZE_MAX) return NULL;
  *len = m->id_len[id];
  return m->vocab.bytes.p + m->id_off[id];
}

/* ---- merging -------------------------------------------------------------- */

struct sym {
  int32_t id, prev, next;
};

struct heap_item {
  uint32_t rank;
  int32_t pos, new_id;
};

static inline int heap_less(const struct heap_item *a, const struct heap_item *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(&it, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n) {
  struct heap_item top = h[0], last = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
    if (!heap_less(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n) h[i] = last;
  return top;
}

/* Merges s[0..n) in place (linked through prev/next, removed ones have id
 * -1). */
static int merge_all(const lm_tok_bpe *m, struct sym *s, size_t n) {
  if (n <= SCAN_MAX) {
    for (;;) {
      uint32_t best = UINT32_MAX;
      int32_t at = -1, nid = -1;
      for (int32_t i = 0; i >= 0 && s[i].next >= 0; i = s[i].next) {
        const struct merge_slot *ms = merge_get(m, s[i].id, s[s[i].next].id);
        if (ms && ms->rank < best) {
          best = ms->rank;
          at = i;
          nid = ms->new_id;
        }
      }
      if (at < 0) return LM_OK;
      int32_t r = s[at].next;
      s[at].id = nid;
      s[at].next = s[r].next;
      if (s[r].next >= 0) s[s[r].next].prev = at;
      s[r].id = -1;
    }
  }
  /* at most one push per initial pair and two per merge */
  struct heap_item *h = malloc(3 * n * sizeof(*h));
  if (!h) return LM_ENOMEM;
  size_t hn = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    const struct merge_slot *ms = merge_get(m, s[i].id, s[i + 1].id);
    if (ms) heap_push(h, &hn, (struct heap_item){ms->rank, (int32_t)i, ms->new_id});
  }
  while (hn) {
    struct heap_item top = heap_pop(h, &hn);
    struct sym *cur = &s[top.pos];
    if (cur->id < 0 || cur->next < 0) continue;
    int32_t r = cur->next;
    const struct merge_slot *ms = merge_get(m, cur->id, s[r].id);
    if (!ms || ms->new_id != top.new_id) continue; /* stale entry */
    cur->id = top.new_id;
    cur->next = s[r].next;
    if (s[r].next >= 0) s[s[r].next].prev = top.pos;
    s[r].id = -1;
    if (cur->prev >= 0 && (ms = merge_get(m, s[cur->prev].id, cur->id)))
      heap_push(h, &hn, (struct heap_item){ms->rank, cur->prev, ms->new_id});
    if (cur->next >= 0 && (ms = merge_get(m, cur->id, s[cur->next].id)))
      heap_push(h, &hn, (struct heap_item){ms->rank, top.pos, ms->new_id});
  }
  free(h);
  return LM_OK;
}

static int32_t char_id(const lm_tok_bpe *m, const char *c, size_t cl, int first, int last,
                       lm_buf *tmp) {
  if (m->small_ids && cl <= 2) {
    size_t adv;
    uint32_t cp = lm_tok_utf8_next(c, cl, &adv);
    if (cp < 0x800) return m->small_ids[cp];
  }
  if ((first || !m->prefix_len) && (!last || !m->suffix_len))
    return lm_strmap_get(&m->vocab, c, cl);
  tmp->n = 0;
  if (!first && lm_buf_put(tmp, m->prefix, m->prefix_len)) return -2;
  if (lm_buf_put(tmp, c, cl)) return -2;
  if (last && lm_buf_put(tmp, m->suffix, m->suffix_len)) return -2;
  return lm_strmap_get(&m->vocab, tmp->p, tmp->n);
}

/* The library's BPE::merge_word, then merge_all; ids appended to out. */
static int merge_word(const lm_tok_bpe *m, const char *w, size_t n, lm_tokens *out) {
  struct sym stack_syms[64];
  struct sym *s = stack_syms;
  size_t cap = 64, ns = 0;
  int rc = LM_OK;
  lm_buf tmp = {0};
  int32_t unk = -1; /* pending unk symbol */
#define ADD(ID)                                                                                    \
  do {                                                                                             \
    if (ns == cap) {                                                                               \
      struct sym *ns_ = malloc(2 * cap * sizeof(*ns_));                                            \
      if (!ns_) {                                                                                  \
        rc = LM_ENOMEM;                                                                            \
        goto out;                                                                                  \
      }                                                                                            \
      memcpy(ns_, s, ns * sizeof(*s));                                                             \
      if (s != stack_syms) free(s);                                                                \
      s = ns_;                                                                                     \
      cap *= 2;                                                                                    \
    }                                                                                              \
    s[ns].id = (ID);                                                                               \
    s[ns].prev = (int32_t)ns - 1;                                                                  \
    s[ns].next = -1;                                                                               \
    if (ns) s[ns - 1].next = (int32_t)ns;                                                          \
    ns++;                                                                                          \
  } while (0)
  for (size_t i = 0; i < n;) {
    size_t cl = lm_tok_utf8_len((unsigned char)w[i]);
    if (cl > n - i) cl = n - i;
    int32_t id = char_id(m, w + i, cl, i == 0, i + cl == n, &tmp);
    if (id == -2) {
      rc = LM_ENOMEM;
      goto out;
    }
    if (id >= 0) {
      if (unk >= 0) {
        ADD(unk);
        unk = -1;
      }
      ADD(id);
      i += cl;
      continue;
    }
    if (m->byte_fallback) {
      /* the library's fallback covers the bytes of the char with its
       * prefix/suffix, all or nothing */
      const char *bs = w + i;
      size_t bn = cl;
      if ((i > 0 && m->prefix_len) || (i + cl == n && m->suffix_len)) {
        bs = tmp.p;
        bn = tmp.n;
      }
      int all = 1;
      for (size_t k = 0; k < bn; k++)
        if (m->byte_ids[(unsigned char)bs[k]] < 0) all = 0;
      if (all) {
        for (size_t k = 0; k < bn; k++)
          ADD(m->byte_ids[(unsigned char)bs[k]]);
        i += cl;
        continue;
      }
    }
    if (m->unk_id >= 0) {
      if (unk >= 0 && !m->fuse_unk) ADD(unk);
      unk = m->unk_id;
    }
    i += cl;
  }
  if (unk >= 0) ADD(unk);
#undef ADD
  /* no symbol at all: every character unknown, with no unk token and no
   * byte for it (the library drops such characters) */
  if (ns == 0) goto out;
  if ((rc = merge_all(m, s, ns))) goto out;
  for (size_t i = 0; i < ns; i++)
    if (s[i].id >= 0 && (rc = lm_tokens_push(out, s[i].id))) goto out;
out:
  if (s != stack_syms) free(s);
  lm_buf_free(&tmp);
  return rc;
}

int lm_tok_bpe_encode_word(const lm_tok_bpe *m, const char *w, size_t n, lm_tokens *out) {
  if (n == 0) return LM_OK;
  if (m->ignore_merges) {
    int32_t id = lm_strmap_get(&m->vocab, w, n);
    if (id >= 0) return lm_tokens_push(out, id);
  }
  if (n > CACHE_MAX_BYTES) return merge_word(m, w, n, out);
  uint64_t h = lm_tok_hash(w, n);
  struct cache_shard *sh = &m->cache[h % CACHE_SHARDS];
  struct cache_entry *e = &sh->slots[(h / CACHE_SHARDS) % CACHE_SLOTS];
  if (pthread_mutex_trylock(&sh->mu) == 0) {
    if (e->data && e->hash == h && e->klen == n && !memcmp(e->data, w, n)) {
      int rc = LM_OK;
      for (uint32_t i = 0; i < e->nids && !rc; i++) {
        int32_t id;
        memcpy(&id, e->data + n + 4 * i, 4);
        rc = lm_tokens_push(out, id);
      }
      pthread_mutex_unlock(&sh->mu);
      return rc;
    }
    pthread_mutex_unlock(&sh->mu);
  }
  size_t first = out->n;
  int rc = merge_word(m, w, n, out);
  if (rc) return rc;
  size_t nids = out->n - first;
  char *data = malloc(n + 4 * nids);
  if (!data) return LM_OK; /* the cache is optional */
  memcpy(data, w, n);
  if (nids) memcpy(data + n, out->ids + first, 4 * nids);
  if (pthread_mutex_trylock(&sh->mu) == 0) {
    free(e->data);
    e->data = data;
    e->hash = h;
    e->klen = (uint32_t)n;
    e->nids = (uint32_t)nids;
    pthread_mutex_unlock(&sh->mu);
  } else {
    free(data);
  }
  return LM_OK;
}
