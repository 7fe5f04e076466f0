/* kv_cache.c - the block pool with reference counts, an LRU free list
 * (doubly linked, O(1) take/put/remove) and a chained hash table of cached
 * blocks; block tables per sequence.
 *
 * Free list order: blocks without a hash sit at the head and are handed out
 * first; freed blocks with a hash join the tail, so the cached block
 * evicted next is the one freed longest ago. */
#include "engine/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"

#define NIL (-1)

struct lm_kv_pool {
  int n_blocks, block_size;
  int caching;
  int n_free;   /* blocks with ref == 0 */
  int n_cached; /* of those, with a hash */
  int32_t *ref; /* [n_blocks] references held by sequences */
  /* the free list: blocks with ref == 0 */
  int32_t *prev, *next; /* [n_blocks] */
  int32_t head, tail;
  /* the hash table: bucket -> chain of blocks through hnext */
  uint8_t *hashed;    /* [n_blocks] the block's hash is registered */
  uint64_t *hash;     /* [n_blocks] */
  uint64_t *parent;   /* [n_blocks] the parent block's hash */
  int32_t *hnext;     /* [n_blocks] */
  int32_t *buckets;   /* [n_buckets] */
  uint32_t n_buckets; /* a power of two */
  int32_t *tokens;    /* [n_blocks, block_size] token ids of registered blocks */
};

uint64_t lm_kv_block_hash(uint64_t parent_hash, const int32_t *tokens, int n_tokens) {
  /* splitmix64's finaliser over each token, seeded by the parent */
  uint64_t h = parent_hash ^ 0x6a09e667f3bcc909ull;
  for (int i = 0; i < n_tokens; i++) {
    h ^= (uint64_t)(uint32_t)tokens[i] + 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  return h;
}

static void list_remove(lm_kv_pool *p, int32_t b) {
  int32_t pv = p->prev[b], nx = p->next[b];
  if (pv != NIL)
    p->next[pv] = nx;
  else
    p->head = nx;
  if (nx != NIL)
    p->prev[nx] = pv;
  else
    p->tail = pv;
  p->prev[b] = p->next[b] = NIL;
}

static void list_push_head(lm_kv_pool *p, int32_t b) {
  p->prev[b] = NIL;
  p->next[b] = p->head;
  if (p->head != NIL)
    p->prev[p->head] = b;
  else
    p->tail = b;
  p->head = b;
}

static void list_push_tail(lm_kv_pool *p, int32_t b) {
  p->next[b] = NIL;
  p->prev[b] = p->tail;
  if (p->tail != NIL)
    p->next[p->tail] = b;
  else
    p->head = b;
  p->tail = b;
}

static uint32_t bucket_of(const lm_kv_pool *p, uint64_t h) {
  return (uint32_t)(h ^ (h >> 32)) & (p->n_buckets - 1);
}

static void hash_unregister(lm_kv_pool *p, int32_t b) {
  int32_t *link = &p->buckets[bucket_of(p, p->hash[b])];
  while (*link != NIL && *link != b)
    link = &p->hnext[*link];
  if (*link == b) *link = p->hnext[b];
  p->hnext[b] = NIL;
  p->hashed[b] = 0;
}

/* The registered block holding exactly these tokens after parent, or NIL. */
static int32_t hash_find(const lm_kv_pool *p, uint64_t h, uint64_t parent, const int32_t *tokens) {
  size_t bs = (size_t)p->block_size;
  for (int32_t b = p->buckets[bucket_of(p, h)]; b != NIL; b = p->hnext[b])
    if (p->hash[b] == h && p->parent[b] == parent &&
        memcmp(p->tokens + (size_t)b * bs, tokens, bs * sizeof(int32_t)) == 0)
      return b;
  return NIL;
}

int lm_kv_pool_create(int n_blocks, int block_size, lm_kv_pool **out, char *err) {
  lm_kv_pool *p;
  *out = NULL;
  if (n_blocks <= 0 || block_size <= 0)
    return lm_errf(err, LM_EINVAL, "kv cache: %d blocks of %d tokens is not a cache", n_blocks,
                   block_size);
  p = calloc(1, sizeof(*p));
  if (!p) goto err;
  size_t n = (size_t)n_blocks;
  p->n_buckets = 1;
  while (p->n_buckets < n && p->n_buckets < (1u << 30))
    p->n_buckets <<= 1;
  p->ref = calloc(n, sizeof(*p->ref));
  p->prev = malloc(n * sizeof(*p->prev));
  p->next = malloc(n * sizeof(*p->next));
  p->hashed = calloc(n, sizeof(*p->hashed));
  p->hash = calloc(n, sizeof(*p->hash));
  p->parent = calloc(n, sizeof(*p->parent));
  p->hnext = malloc(n * sizeof(*p->hnext));
  p->buckets = malloc(p->n_buckets * sizeof(*p->buckets));
  if (!p->ref || !p->prev || !p->next || !p->hashed || !p->hash || !p->parent || !p->hnext ||
      !p->buckets)
    goto err;
  p->n_blocks = n_blocks;
  p->block_size = block_size;
  p->n_free = n_blocks;
  p->head = p->tail = NIL;
  /* hand out low ids first */
  for (int32_t b = 0; b < n_blocks; b++) {
    list_push_tail(p, b);
    p->hnext[b] = NIL;
  }
  for (uint32_t i = 0; i < p->n_buckets; i++)
    p->buckets[i] = NIL;
  *out = p;
  return LM_OK;
err:
  lm_kv_pool_free(p);
  return lm_errf(err, LM_ENOMEM, "kv cache: out of memory for %d blocks", n_blocks);
}

void lm_kv_pool_free(lm_kv_pool *pool) {
  if (!pool) return;
  free(pool->ref);
  free(pool->prev);
  free(pool->next);
  free(pool->hashed);
  free(pool->hash);
  free(pool->parent);
  free(pool->hnext);
  free(pool->buckets);
  free(pool->tokens);
  free(pool);
}

int lm_kv_pool_block_size(const lm_kv_pool *pool) {
  return pool->block_size;
}
int lm_kv_pool_num_free(const lm_kv_pool *pool) {
  return pool->n_free;
}
int lm_kv_pool_num_blocks(const lm_kv_pool *pool) {
  return pool->n_blocks;
}
int lm_kv_pool_num_cached(const lm_kv_pool *pool) {
  return pool->n_cached;
}

int lm_kv_pool_set_prefix_caching(lm_kv_pool *pool, int enable, char *err) {
  if (enable && !pool->tokens) {
    /* the token ids of every block, to confirm hash hits; allocated only
     * when caching is used */
    pool->tokens = malloc((size_t)pool->n_blocks * (size_t)pool->block_size * sizeof(int32_t));
    if (!pool->tokens)
      return lm_errf(err, LM_ENOMEM, "kv cache: out of memory for the prefix cache of %d blocks",
                     pool->n_blocks);
  }
  if (!enable) {
    for (int32_t b = 0; b < pool->n_blocks; b++)
      if (pool->hashed[b]) {
        hash_unregister(pool, b);
        if (pool->ref[b] == 0) {
          /* an evictable block without a hash moves to the head */
          list_remove(pool, b);
          list_push_head(pool, b);
          pool->n_cached--;
        }
      }
  }
  pool->caching = enable != 0;
  return LM_OK;
}

static int cmp_id(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

int lm_kv_alloc_blocks(lm_kv_pool *pool, int n, int32_t *ids) {
  if (n > pool->n_free) return LM_EFULL;
  for (int i = 0; i < n; i++) {
    int32_t b = pool->head;
    list_remove(pool, b);
    if (pool->hashed[b]) {
      hash_unregister(pool, b);
      pool->n_cached--;
    }
    pool->ref[b] = 1;
    pool->n_free--;
    ids[i] = b;
  }
  /* in ascending order: cached blocks come back a sequence's last first,
   * and a run of consecutive blocks is then one forward stream of K and V
   * per kv head (the CPU's layout, backend.h) */
  qsort(ids, (size_t)n, sizeof(*ids), cmp_id);
  return LM_OK;
}

void lm_kv_free_blocks(lm_kv_pool *pool, const int32_t *ids, int n) {
  /* last block first: a sequence's later blocks are the least likely to
   * be shared, so they sit nearer the head and are evicted before its
   * earlier ones */
  for (int i = n - 1; i >= 0; i--) {
    int32_t b = ids[i];
    if (b < 0 || b >= pool->n_blocks || pool->ref[b] <= 0) continue;
    if (--pool->ref[b] > 0) continue;
    pool->n_free++;
    if (pool->hashed[b]) {
      list_push_tail(pool, b);
      pool->n_cached++;
    } else {
      list_push_head(pool, b);
    }
  }
}

static int seq_grow(lm_kv_seq *s, int64_t need) {
  if (need <= s->cap_blocks) return LM_OK;
  int32_t *b = realloc(s->blocks, (size_t)need * sizeof(*b));
  if (!b) return LM_ENOMEM;
  s->blocks = b;
  s->cap_blocks = (int)need;
  return LM_OK;
}

int lm_kv_seq_reserve(lm_kv_seq *s, lm_kv_pool *pool, int n_tokens, char *err) {
  if (n_tokens < 0) return lm_errf(err, LM_EINVAL, "kv cache: cannot reserve %d tokens", n_tokens);
  /* in 64 bits: n_tokens near INT_MAX must not wrap */
  int64_t need = ((int64_t)n_tokens + pool->block_size - 1) / pool->block_size;
  if (need <= s->n_blocks) return LM_OK;
  if (need - s->n_blocks > pool->n_free)
    return lm_errf(err, LM_EFULL, "kv cache: %d tokens need %lld more blocks, %d are free",
                   n_tokens, (long long)(need - s->n_blocks), pool->n_free);
  /* from here need <= the pool's n_blocks, an int */
  if (seq_grow(s, need) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "kv cache: out of memory for a block table");
  lm_kv_alloc_blocks(pool, (int)need - s->n_blocks, s->blocks + s->n_blocks);
  s->n_blocks = (int)need;
  return LM_OK;
}

void lm_kv_seq_release(lm_kv_seq *s, lm_kv_pool *pool) {
  if (s->n_blocks) lm_kv_free_blocks(pool, s->blocks, s->n_blocks);
  free(s->blocks);
  memset(s, 0, sizeof(*s));
}

int lm_kv_seq_match_prefix(lm_kv_seq *s, lm_kv_pool *pool, const int32_t *tokens, int n_tokens) {
  int bs = pool->block_size, n_full = n_tokens / bs, n = 0;
  uint64_t h = 0, parent = 0;
  if (!pool->caching || s->n_blocks != 0 || n_full <= 0) return 0;
  if (seq_grow(s, n_full) != LM_OK) return LM_ENOMEM;
  for (; n < n_full; n++) {
    const int32_t *t = tokens + (size_t)n * bs;
    h = lm_kv_block_hash(parent, t, bs);
    int32_t b = hash_find(pool, h, parent, t);
    if (b == NIL) break;
    if (pool->ref[b]++ == 0) {
      list_remove(pool, b);
      pool->n_free--;
      pool->n_cached--;
    }
    s->blocks[n] = b;
    parent = h;
  }
  s->n_blocks = s->n_hashed_blocks = n;
  s->last_hash = parent;
  s->n_cached_tokens = n * bs;
  return n * bs;
}

void lm_kv_seq_commit(lm_kv_seq *s, lm_kv_pool *pool, const int32_t *tokens) {
  int bs = pool->block_size, n_full = s->n_cached_tokens / bs;
  if (!pool->caching) return;
  if (n_full > s->n_blocks) n_full = s->n_blocks;
  for (int i = s->n_hashed_blocks; i < n_full; i++) {
    const int32_t *t = tokens + (size_t)i * bs;
    uint64_t h = lm_kv_block_hash(s->last_hash, t, bs);
    int32_t b = s->blocks[i];
    if (!pool->hashed[b] && hash_find(pool, h, s->last_hash, t) == NIL) {
      pool->hash[b] = h;
      pool->parent[b] = s->last_hash;
      memcpy(pool->tokens + (size_t)b * bs, t, (size_t)bs * sizeof(int32_t));
      uint32_t k = bucket_of(pool, h);
      pool->hnext[b] = pool->buckets[k];
      pool->buckets[k] = b;
      pool->hashed[b] = 1;
    }
    s->last_hash = h;
    s->n_hashed_blocks = i + 1;
  }
}
