/* rope.cu - neox-style rotary embedding in place on bf16 q and k.
 *
 * One block per token: the token's cos and sin for each frequency are
 * computed once into shared memory, then the block's threads rotate the
 * (i, i + half) pairs of every q and k head of that token. */
#include "kernels/rope.cuh"

#include "kernels/cuda_check.cuh"

#define LM_ROPE_THREADS         128
#define LM_ROPE_MAX_GRID_BLOCKS 65535u

/* q: [T, n_heads, head_dim], k: [T, n_kv_heads, head_dim], pos: [T],
 * inv_freq: [head_dim / 2]; dynamic shared memory: 2 * half floats */
__global__ void lm_rope_kernel(uint16_t *q, uint16_t *k, const int32_t *pos, const float *inv_freq,
                               int T, int n_heads, int n_kv_heads, int head_dim) {
  extern __shared__ float lm_rope_cs[]; /* [2, half]: cos, then sin */
  int half = head_dim / 2, heads = n_heads + n_kv_heads;
  float *cs = lm_rope_cs, *sn = lm_rope_cs + half;
  for (int t = blockIdx.x; t < T; t += gridDim.x) {
    float p = (float)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      float ang = p * inv_freq[i];
      cs[i] = cosf(ang);
      sn[i] = sinf(ang);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < heads * half; e += blockDim.x) {
      int h = e / half, i = e % half;
      uint16_t *x = h < n_heads ? q + ((size_t)t * n_heads + h) * head_dim
                                : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
      float a = lm_ld_bf16(x, (size_t)i), b = lm_ld_bf16(x, (size_t)(i + half));
      /* __fmul_rn keeps the products out of an FMA: the same f32 value the
       * CPU backend computes, before the one rounding to bf16 */
      x[i] = lm_to_bf16(__fmul_rn(a, cs[i]) - __fmul_rn(b, sn[i]));
      x[i + half] = lm_to_bf16(__fmul_rn(b, cs[i]) + __fmul_rn(a, sn[i]));
    }
    /* the next token's table must wait until every thread is done with this one */
    __syncthreads();
  }
}

extern "C" void lm_cuda_rope(uint16_t *q, uint16_t *k, const int32_t *pos, const float *inv_freq,
                             int T, int n_heads, int n_kv_heads, int head_dim, void *stream) {
  unsigned grid;
  size_t shm = (size_t)head_dim * sizeof(float);
  if (T <= 0 || head_dim <= 0 || head_dim % 2 || n_heads < 0 || n_kv_heads < 0) return;
  if (n_heads + n_kv_heads == 0) return;
  grid = T < (int)LM_ROPE_MAX_GRID_BLOCKS ? (unsigned)T : LM_ROPE_MAX_GRID_BLOCKS;
  lm_rope_kernel<<<grid, LM_ROPE_THREADS, shm, (cudaStream_t)stream>>>(
      q, k, pos, inv_freq, T, n_heads, n_kv_heads, head_dim);
}
