/* kv_cache.h - host-side bookkeeping of the paged KV cache: a pool of
 * fixed-size blocks, per sequence the block table that maps its positions
 * to blocks, and the prefix cache.
 *
 * Prefix cache: once a block is full, its hash (chained on the parent
 * block's hash and the block's token ids) is registered. Blocks are
 * reference counted; a freed block that has a hash keeps it and stays
 * findable in an LRU free list until it is handed out again, so a new
 * sequence (or a preempted one recomputing) with the same prefix takes the
 * cached blocks instead of computing them. A hash hit is confirmed by
 * comparing the block's token ids, so a collision can never share the
 * wrong K/V.
 *
 * Not thread-safe: one thread (the engine's) owns a pool and its
 * sequences. */
#ifndef LM_KV_CACHE_H
#define LM_KV_CACHE_H

#include <stdint.h>

typedef struct lm_kv_pool lm_kv_pool;

int lm_kv_pool_create(int n_blocks, int block_size, lm_kv_pool **out, char *err);
void lm_kv_pool_free(lm_kv_pool *pool);
int lm_kv_pool_block_size(const lm_kv_pool *pool);
/* Blocks no sequence holds (cached ones included). */
int lm_kv_pool_num_free(const lm_kv_pool *pool);
int lm_kv_pool_num_blocks(const lm_kv_pool *pool);
/* Free blocks that keep a hash (findable by lm_kv_seq_match_prefix). */
int lm_kv_pool_num_cached(const lm_kv_pool *pool);
/* Turns hashing of full blocks on or off (off by default). Turning it off
 * drops every cached hash. LM_ENOMEM when the token copies it keeps cannot
 * be allocated (caching stays off). */
int lm_kv_pool_set_prefix_caching(lm_kv_pool *pool, int enable, char *err);

/* Takes n blocks (all or none); LM_EFULL when fewer are free. Blocks
 * without a hash go first, then cached ones, least recently freed first
 * (their hash is dropped); ids holds the ones taken in ascending order. */
int lm_kv_alloc_blocks(lm_kv_pool *pool, int n, int32_t *ids);
/* Drops one reference on each block; a block whose last reference goes is
 * free again. A block freed more often than it was taken is ignored. */
void lm_kv_free_blocks(lm_kv_pool *pool, const int32_t *ids, int n);

/* The chained hash of one full block. */
uint64_t lm_kv_block_hash(uint64_t parent_hash, const int32_t *tokens, int n_tokens);

/* A sequence's view of the cache: its block table and how many of its
 * tokens have their K/V written. Zero-initialised is empty. */
typedef struct lm_kv_seq {
  int32_t *blocks; /* [n_blocks] */
  int n_blocks, cap_blocks;
  int n_cached_tokens;
  int n_hashed_blocks; /* leading full blocks whose hash is known */
  uint64_t last_hash;  /* hash of block n_hashed_blocks - 1 (0 when none) */
} lm_kv_seq;

/* Grows the block table to cover n_tokens positions (all or nothing):
 * LM_EFULL when the pool has too few free blocks. */
int lm_kv_seq_reserve(lm_kv_seq *s, lm_kv_pool *pool, int n_tokens, char *err);
/* Returns every block to the pool and empties the table; a sequence that
 * holds no blocks needs no pool (NULL). */
void lm_kv_seq_release(lm_kv_seq *s, lm_kv_pool *pool);

/* For an empty sequence: takes (one more reference on) the longest run of
 * cached full blocks that hold tokens[0 .. n_tokens), as its first blocks,
 * and sets n_cached_tokens to the tokens they cover, which it returns. The
 * caller passes n_tokens short of the last token it needs logits for.
 * Returns 0 with prefix caching off. LM_ENOMEM when the table cannot grow
 * (nothing taken). */
int lm_kv_seq_match_prefix(lm_kv_seq *s, lm_kv_pool *pool, const int32_t *tokens, int n_tokens);

/* Registers the hash of every block that became full since the last call:
 * tokens[0 .. s->n_cached_tokens) are the sequence's tokens, written.
 * A block whose contents another block already caches stays unregistered
 * (the first copy serves later lookups). */
void lm_kv_seq_commit(lm_kv_seq *s, lm_kv_pool *pool, const int32_t *tokens);

#endif
