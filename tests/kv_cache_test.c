/* kv_cache_test.c - the block pool and per-sequence block tables: no block
 * is handed out twice, all-or-nothing allocation, and accounting that
 * returns to its start after random reserve/release traffic. */
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

int main(void) {
  test_pool();
  test_seqs();
  return lm_check_done();
}
