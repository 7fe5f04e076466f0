/* kv_cache.cu - the write of a step's keys and values into the paged pool.
 * One thread per unit of a (token, kv head) row, copying both K and V; a
 * unit is 8 bf16 (16 bytes) when head_dim and the buffers allow it. */
#include "kernels/kv_cache.cuh"

#include <stdint.h>

#include "kernels/cuda_check.cuh"

#define LM_KVW_THREADS         256
#define LM_KVW_MAX_GRID_BLOCKS 65535u

/* kbase, vbase: the layer's K and V parts, [n_blocks, n_kv_heads, block_size, units];
 * k, v: [T, n_kv_heads, units]; slots: [T]. A negative slot (padding) or
 * one beyond the last block is skipped, as the CPU backend does. */
template <typename U>
__global__ void lm_kv_write_kernel(U *kbase, U *vbase, const U *k, const U *v, const int32_t *slots,
                                   int T, int n_kv_heads, int block_size, int n_blocks,
                                   size_t units) {
  size_t total = (size_t)T * n_kv_heads * units;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    size_t d = e % units, th = e / units;
    int h = (int)(th % (size_t)n_kv_heads);
    size_t t = th / (size_t)n_kv_heads;
    int32_t slot = slots[t];
    if (slot < 0) continue;
    int blk = slot / block_size, off = slot % block_size;
    if (blk >= n_blocks) continue;
    size_t dst = (((size_t)blk * n_kv_heads + h) * block_size + off) * units + d;
    kbase[dst] = k[e];
    vbase[dst] = v[e];
  }
}

template <typename U>
static void lm_kv_write_launch(uint16_t *kbase, uint16_t *vbase, const uint16_t *k,
                               const uint16_t *v, const int32_t *slots, int T,
                               const struct lm_cuda_kv *kv, cudaStream_t s) {
  size_t units = (size_t)kv->head_dim * sizeof(uint16_t) / sizeof(U);
  unsigned grid = lm_cdiv((size_t)T * kv->n_kv_heads * units, LM_KVW_THREADS);
  if (grid > LM_KVW_MAX_GRID_BLOCKS) grid = LM_KVW_MAX_GRID_BLOCKS;
  lm_kv_write_kernel<U><<<grid, LM_KVW_THREADS, 0, s>>>((U *)kbase, (U *)vbase, (const U *)k,
                                                        (const U *)v, slots, T, kv->n_kv_heads,
                                                        kv->block_size, kv->n_blocks, units);
}

extern "C" void lm_cuda_kv_write(const struct lm_cuda_kv *kv, int layer, const uint16_t *k,
                                 const uint16_t *v, const int32_t *slots, int T, void *stream) {
  size_t part = lm_cuda_kv_part_elems(kv);
  uint16_t *kbase, *vbase;
  if (T <= 0 || layer < 0 || layer >= kv->n_layers || part == 0 || kv->n_kv_heads <= 0 ||
      kv->block_size <= 0 || kv->head_dim <= 0 || kv->n_blocks <= 0)
    return;
  kbase = kv->base + (size_t)layer * 2 * part;
  vbase = kbase + part;
  if (kv->head_dim % 8 == 0 &&
      ((uintptr_t)kbase | (uintptr_t)vbase | (uintptr_t)k | (uintptr_t)v) % 16 == 0)
    lm_kv_write_launch<uint4>(kbase, vbase, k, v, slots, T, kv, (cudaStream_t)stream);
  else
    lm_kv_write_launch<uint16_t>(kbase, vbase, k, v, slots, T, kv, (cudaStream_t)stream);
}
