/* kv_cache.c - block pool as a stack of free ids; block tables per sequence. */
#include "engine/kv_cache.h"

#include <stdlib.h>

#include "engine/lm.h"

struct lm_kv_pool {
  int n_blocks, block_size;
  int n_free;
  int32_t *free_ids; /* [n_blocks], the first n_free are free */
};

int lm_kv_pool_create(int n_blocks, int block_size, lm_kv_pool **out, char *err) {
  lm_kv_pool *p;
  *out = NULL;
  if (n_blocks <= 0 || block_size <= 0)
    return lm_errf(err, LM_EINVAL, "kv cache: %d blocks of %d tokens is not a cache", n_blocks,
                   block_size);
  p = calloc(1, sizeof(*p));
  if (!p) goto err;
  p->free_ids = malloc((size_t)n_blocks * sizeof(*p->free_ids));
  if (!p->free_ids) goto err;
  p->n_blocks = n_blocks;
  p->block_size = block_size;
  p->n_free = n_blocks;
  /* hand out low ids first */
  for (int i = 0; i < n_blocks; i++)
    p->free_ids[i] = n_blocks - 1 - i;
  *out = p;
  return LM_OK;
err:
  lm_kv_pool_free(p);
  return lm_errf(err, LM_ENOMEM, "kv cache: out of memory for %d blocks", n_blocks);
}

void lm_kv_pool_free(lm_kv_pool *pool) {
  if (!pool) return;
  free(pool->free_ids);
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

int lm_kv_alloc_blocks(lm_kv_pool *pool, int n, int32_t *ids) {
  if (n > pool->n_free) return LM_EFULL;
  for (int i = 0; i < n; i++)
    ids[i] = pool->free_ids[--pool->n_free];
  return LM_OK;
}

void lm_kv_free_blocks(lm_kv_pool *pool, const int32_t *ids, int n) {
  /* more frees than blocks means a block was freed twice: keep the stack
   * inside its array rather than corrupt the heap */
  for (int i = 0; i < n && pool->n_free < pool->n_blocks; i++)
    pool->free_ids[pool->n_free++] = ids[i];
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
  if (need > s->cap_blocks) {
    int32_t *b = realloc(s->blocks, (size_t)need * sizeof(*b));
    if (!b) return lm_errf(err, LM_ENOMEM, "kv cache: out of memory for a block table");
    s->blocks = b;
    s->cap_blocks = (int)need;
  }
  lm_kv_alloc_blocks(pool, (int)need - s->n_blocks, s->blocks + s->n_blocks);
  s->n_blocks = (int)need;
  return LM_OK;
}

void lm_kv_seq_release(lm_kv_seq *s, lm_kv_pool *pool) {
  if (s->n_blocks) lm_kv_free_blocks(pool, s->blocks, s->n_blocks);
  free(s->blocks);
  s->blocks = NULL;
  s->n_blocks = s->cap_blocks = 0;
  s->n_cached_tokens = 0;
}
