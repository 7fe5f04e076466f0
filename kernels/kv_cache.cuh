/* kv_cache.cuh - the paged KV pool on the GPU and the write of a step's
 * keys and values into it. Layout (engine/backend.h; the CPU orders a
 * layer part's regions by kv head first):
 *   [n_layers][2 (K, V)][n_blocks][n_kv_heads][block_size][head_dim] bf16
 * A token's slot is block * block_size + offset. */
#ifndef LM_KERNELS_KV_CACHE_CUH
#define LM_KERNELS_KV_CACHE_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lm_cuda_kv {
  uint16_t *base; /* device */
  int n_layers;
  int n_blocks;
  int block_size;
  int n_kv_heads;
  int head_dim;
};

/* Elements of one layer's K (or V) part: n_blocks * n_kv_heads * block_size * head_dim. */
static inline size_t lm_cuda_kv_part_elems(const struct lm_cuda_kv *kv) {
  return (size_t)kv->n_blocks * kv->n_kv_heads * kv->block_size * kv->head_dim;
}

/* k, v: [T, n_kv_heads, head_dim] -> the layer's blocks at slots (device [T]) */
void lm_cuda_kv_write(const struct lm_cuda_kv *kv, int layer, const uint16_t *k, const uint16_t *v,
                      const int32_t *slots, int T, void *stream);

#ifdef __cplusplus
}
#endif

#endif
