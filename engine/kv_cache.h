/* kv_cache.h - host-side bookkeeping of the paged KV cache: a pool of
 * fixed-size blocks and, per sequence, the block table that maps its
 * positions to blocks. The backend owns the memory the blocks name. */
#ifndef LM_KV_CACHE_H
#define LM_KV_CACHE_H

#include <stdint.h>

typedef struct lm_kv_pool lm_kv_pool;

int lm_kv_pool_create(int n_blocks, int block_size, lm_kv_pool **out, char *err);
void lm_kv_pool_free(lm_kv_pool *pool);
int lm_kv_pool_block_size(const lm_kv_pool *pool);
int lm_kv_pool_num_free(const lm_kv_pool *pool);
int lm_kv_pool_num_blocks(const lm_kv_pool *pool);

/* Takes n blocks (all or none); LM_EFULL when fewer are free. */
int lm_kv_alloc_blocks(lm_kv_pool *pool, int n, int32_t *ids);
/* Returns blocks taken with lm_kv_alloc_blocks; each exactly once. */
void lm_kv_free_blocks(lm_kv_pool *pool, const int32_t *ids, int n);

/* A sequence's view of the cache: its block table and how many of its
 * tokens have their K/V written. */
typedef struct lm_kv_seq {
  int32_t *blocks; /* [n_blocks] */
  int n_blocks, cap_blocks;
  int n_cached_tokens;
} lm_kv_seq;

/* Grows the block table to cover n_tokens positions (all or nothing):
 * LM_EFULL when the pool has too few free blocks. */
int lm_kv_seq_reserve(lm_kv_seq *s, lm_kv_pool *pool, int n_tokens, char *err);
/* Returns every block to the pool and empties the table; a sequence that
 * holds no blocks needs no pool (NULL). */
void lm_kv_seq_release(lm_kv_seq *s, lm_kv_pool *pool);

#endif
