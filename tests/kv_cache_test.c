/* kv_cache_test.c - the block pool and per-sequence block tables: no block
 * is handed out twice, all-or-nothing allocation, and accounting that
 * returns to its start after random reserve/release traffic. The prefix
 * cache: full blocks are found again by their contents (never the wrong
 * ones), shared blocks are reference counted, freed blocks stay findable
 * until evicted least recently freed first, and blocks without a hash are
 * handed out before cached ones. */
#include <stdlib.h>
#include <string.h>

#include "engine/kv_cache.h"
#include "engine/lm.h"
#include "tests/check.h"

static void test_pool(void) {
  char err[LM_ERR_LEN];
  lm_kv_pool *pool;
  lm_check(lm_kv_pool_create(0, 16, &pool, err) == LM_EINVAL, "a pool of 0 blocks is refused");
  if (!lm_check(lm_kv_pool_create(10, 16, &pool, err) == LM_OK, "create 10 blocks")) return;
  int32_t ids[10];
  lm_check(lm_kv_alloc_blocks(pool, 11, ids) == LM_EFULL && lm_kv_pool_num_free(pool) == 10,
           "asking for more than is free takes nothing");
  lm_check(lm_kv_alloc_blocks(pool, 10, ids) == LM_OK && lm_kv_pool_num_free(pool) == 0,
           "all blocks can be taken");
  int seen[10] = {0}, dup = 0;
  for (int i = 0; i < 10; i++)
    dup |= ids[i] < 0 || ids[i] >= 10 || seen[ids[i]]++;
  lm_check(!dup, "each block id is handed out once");
  lm_kv_free_blocks(pool, ids, 10);
  lm_check(lm_kv_pool_num_free(pool) == 10, "freed blocks come back");
  lm_kv_pool_free(pool);
  lm_kv_pool_free(NULL);
}

static void test_seqs(void) {
  char err[LM_ERR_LEN];
  lm_kv_pool *pool;
  enum { N_SEQ = 16, N_BLOCKS = 60, BS = 16 };
  lm_kv_pool_create(N_BLOCKS, BS, &pool, err);
  lm_kv_seq seqs[N_SEQ];
  memset(seqs, 0, sizeof(seqs));
  srand(7);
  int ok = 1, full = 0;
  for (int it = 0; it < 20000; it++) {
    lm_kv_seq *s = &seqs[rand() % N_SEQ];
    if (rand() % 4 == 0) {
      lm_kv_seq_release(s, pool);
      continue;
    }
    int want = s->n_blocks * BS + rand() % 40;
    int before = s->n_blocks, rc = lm_kv_seq_reserve(s, pool, want, NULL);
    if (rc == LM_EFULL) {
      full++;
      ok &= s->n_blocks == before;
    } else {
      ok &= rc == LM_OK && s->n_blocks * BS >= want && (s->n_blocks - 1) * BS < want + BS;
    }
    int used = 0;
    for (int i = 0; i < N_SEQ; i++)
      used += seqs[i].n_blocks;
    ok &= used + lm_kv_pool_num_free(pool) == N_BLOCKS;
  }
  lm_check(ok, "used + free == total after every one of 20000 random reserves/releases");
  lm_check(full > 0, "the pool ran full along the way (%d times)", full);
  char *owner = calloc(N_BLOCKS, 1);
  int dup = 0;
  for (int i = 0; i < N_SEQ; i++)
    for (int b = 0; b < seqs[i].n_blocks; b++)
      dup |= owner[seqs[i].blocks[b]]++;
  lm_check(!dup, "no block belongs to two sequences");
  free(owner);
  for (int i = 0; i < N_SEQ; i++)
    lm_kv_seq_release(&seqs[i], pool);
  lm_check(lm_kv_pool_num_free(pool) == N_BLOCKS, "releasing everything frees every block");
  lm_kv_pool_free(pool);
}

enum { BS = 4 };

/* A sequence holding tokens[0, n) written, with its full blocks hashed. */
static int fill(lm_kv_seq *s, lm_kv_pool *pool, const int32_t *tokens, int n) {
  int hit = lm_kv_seq_match_prefix(s, pool, tokens, n - 1);
  if (hit < 0 || lm_kv_seq_reserve(s, pool, n, NULL) != LM_OK) return -1;
  s->n_cached_tokens = n;
  lm_kv_seq_commit(s, pool, tokens);
  return hit;
}

static void test_prefix_cache(void) {
  char err[LM_ERR_LEN];
  lm_kv_pool *pool;
  int32_t a[13], b[13];
  for (int i = 0; i < 13; i++)
    a[i] = b[i] = 100 + i;
  b[9] = 7; /* b differs from a in its third block */
  if (!lm_check(lm_kv_pool_create(8, BS, &pool, err) == LM_OK &&
                    lm_kv_pool_set_prefix_caching(pool, 1, err) == LM_OK,
                "a pool of 8 blocks with the prefix cache"))
    return;
  lm_kv_seq s1 = {0}, s2 = {0}, s3 = {0};
  lm_check(fill(&s1, pool, a, 13) == 0 && s1.n_hashed_blocks == 3,
           "a first sequence finds nothing and hashes its 3 full blocks");
  lm_kv_seq_release(&s1, pool);
  lm_check(lm_kv_pool_num_free(pool) == 8 && lm_kv_pool_num_cached(pool) == 3,
           "released, its 3 full blocks stay cached among the 8 free");
  int32_t first[3];
  lm_check(lm_kv_seq_match_prefix(&s2, pool, a, 12) == 12 && s2.n_cached_tokens == 12,
           "the same tokens find all 3 blocks");
  memcpy(first, s2.blocks, sizeof(first));
  lm_check(lm_kv_pool_num_free(pool) == 5 && lm_kv_pool_num_cached(pool) == 0,
           "blocks found are in use again");
  lm_check(lm_kv_seq_match_prefix(&s3, pool, b, 12) == 8 && !memcmp(s3.blocks, first, 8),
           "a sequence differing in its third block shares the first two");
  lm_kv_seq_release(&s2, pool);
  lm_check(lm_kv_pool_num_free(pool) == 6, "shared blocks stay used while one holder is left");
  lm_kv_seq_release(&s3, pool);
  lm_check(lm_kv_pool_num_free(pool) == 8 && lm_kv_pool_num_cached(pool) == 3,
           "the last holder's release makes them cached again");

  lm_kv_seq z = {0};
  lm_check(lm_kv_seq_match_prefix(&z, pool, a, 3) == 0 && z.n_blocks == 0,
           "fewer tokens than a block find nothing");
  /* the blocks without a hash go first; then the cached one freed
   * longest ago, which is the last block of a sequence */
  lm_kv_seq big = {0};
  lm_check(lm_kv_seq_reserve(&big, pool, 5 * BS, NULL) == LM_OK && lm_kv_pool_num_cached(pool) == 3,
           "5 new blocks come from the 5 without a hash");
  lm_check(lm_kv_seq_reserve(&big, pool, 6 * BS, NULL) == LM_OK && lm_kv_pool_num_cached(pool) == 2,
           "the 6th evicts one cached block");
  lm_check(lm_kv_seq_match_prefix(&s2, pool, a, 12) == 8,
           "the evicted one was the chain's last block: the first two are still found");
  lm_kv_seq_release(&s2, pool);
  lm_kv_seq_release(&big, pool);

  /* two sequences computing the same blocks: the first copy is cached */
  lm_check(fill(&s1, pool, b, 13) == 8 && fill(&s2, pool, a, 13) == 8,
           "two sequences both take the two blocks their prompts share");
  lm_kv_seq_release(&s1, pool);
  lm_kv_seq_release(&s2, pool);
  lm_check(lm_kv_pool_num_cached(pool) == 4 && lm_kv_pool_num_free(pool) == 8,
           "a's and b's chains share two blocks: 4 cached");
  lm_check(lm_kv_pool_set_prefix_caching(pool, 0, err) == LM_OK &&
               lm_kv_pool_num_cached(pool) == 0 && lm_kv_seq_match_prefix(&s1, pool, a, 12) == 0,
           "turning the cache off drops every hash");
  lm_kv_seq_release(&s1, pool);

  /* cached blocks come back a chain's last first; a sequence gets them in
   * ascending order (the CPU then reads consecutive ones as one stream) */
  int32_t all[8];
  int up = lm_kv_pool_set_prefix_caching(pool, 1, err) == LM_OK && fill(&s1, pool, b, 13) == 0 &&
           fill(&s2, pool, a, 13) == 8;
  lm_kv_seq_release(&s1, pool);
  lm_kv_seq_release(&s2, pool);
  up &= lm_kv_pool_num_cached(pool) == 4 && lm_kv_alloc_blocks(pool, 8, all) == LM_OK;
  for (int i = 1; up && i < 8; i++)
    up &= all[i - 1] < all[i];
  lm_check(up, "8 blocks taken at once, 4 of them cached, come in ascending order");
  lm_kv_free_blocks(pool, all, 8);
  lm_kv_pool_free(pool);
}

/* Random sequences over a few shared prefixes: accounting holds after
 * every operation and a block is never found holding other tokens. */
static void test_prefix_traffic(void) {
  char err[LM_ERR_LEN];
  lm_kv_pool *pool;
  enum { N_SEQ = 12, N_BLOCKS = 40, MAXT = 64 };
  lm_kv_pool_create(N_BLOCKS, BS, &pool, err);
  lm_kv_pool_set_prefix_caching(pool, 1, err);
  lm_kv_seq seqs[N_SEQ];
  int32_t toks[N_SEQ][MAXT];
  int32_t *owner_tok = calloc((size_t)N_BLOCKS * BS, sizeof(int32_t)); /* what each block holds */
  memset(seqs, 0, sizeof(seqs));
  srand(11);
  int ok = 1, hits = 0;
  for (int it = 0; it < 20000 && ok; it++) {
    int k = rand() % N_SEQ;
    lm_kv_seq *s = &seqs[k];
    if (s->n_blocks && rand() % 3 == 0) {
      lm_kv_seq_release(s, pool);
      continue;
    }
    if (s->n_blocks) continue;
    int n = 2 + rand() % (MAXT - 2), family = rand() % 3;
    for (int i = 0; i < n; i++)
      toks[k][i] = i < 24 ? family * 1000 + i : rand() % 5;
    int hit = lm_kv_seq_match_prefix(s, pool, toks[k], n - 1);
    for (int i = 0; i < hit; i++)
      ok &= owner_tok[s->blocks[i / BS] * BS + i % BS] == toks[k][i];
    hits += hit > 0;
    if (lm_kv_seq_reserve(s, pool, n, NULL) != LM_OK) {
      lm_kv_seq_release(s, pool);
      continue;
    }
    for (int i = hit; i < n; i++)
      owner_tok[s->blocks[i / BS] * BS + i % BS] = toks[k][i];
    s->n_cached_tokens = n;
    lm_kv_seq_commit(s, pool, toks[k]);
    int used = 0;
    for (int i = 0; i < N_SEQ; i++)
      used += seqs[i].n_blocks;
    ok &= used >= N_BLOCKS - lm_kv_pool_num_free(pool) &&
          lm_kv_pool_num_cached(pool) <= lm_kv_pool_num_free(pool);
  }
  lm_check(ok, "20000 random fills and releases: found blocks hold the tokens asked for and "
               "accounting holds");
  lm_check(hits > 100, "the prefix cache was hit %d times", hits);
  for (int i = 0; i < N_SEQ; i++)
    lm_kv_seq_release(&seqs[i], pool);
  lm_check(lm_kv_pool_num_free(pool) == N_BLOCKS, "releasing everything frees every block");
  free(owner_tok);
  lm_kv_pool_free(pool);
}

int main(void) {
  test_pool();
  test_seqs();
  test_prefix_cache();
  test_prefix_traffic();
  return lm_check_done();
}
