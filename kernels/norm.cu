/* norm.cu - RMSNorm and residual add + RMSNorm on bf16 rows.
 *
 * A row is reduced by one warp (dim <= LM_NORM_WARP_MAX_DIM) or by one
 * block of LM_NORM_BLOCK_THREADS; which one depends on dim alone. Each
 * lane sums its strided elements in index order, lanes combine by a fixed
 * xor butterfly and warps in warp order, so a row's sum of squares, and
 * hence its output, never depends on how many rows are in the batch.
 *
 * Every element is read and written by the one thread that owns it, so
 * out may alias x. */
#include "kernels/norm.cuh"

#include "kernels/cuda_check.cuh"

#define LM_NORM_WARP_MAX_DIM    1024
#define LM_NORM_ROWS_PER_BLOCK  4 /* warps, one row each, in the warp kernel */
#define LM_NORM_BLOCK_THREADS   256
#define LM_NORM_BLOCK_WARPS     (LM_NORM_BLOCK_THREADS / 32)
#define LM_NORM_MAX_GRID_BLOCKS 65535u

static __device__ __forceinline__ float lm_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Adds delta into the row of residual (rounded to bf16 and stored) when
 * delta is non-NULL and returns this thread's sum of squares over its
 * elements i = first, first + stride, ... of the (rounded) row. */
static __device__ __forceinline__ float lm_norm_sumsq(uint16_t *res, const uint16_t *x,
                                                      const uint16_t *delta, int dim, int first,
                                                      int stride) {
  float ss = 0.0f;
  for (int i = first; i < dim; i += stride) {
    float v;
    if (delta) {
      uint16_t r = lm_to_bf16(lm_ld_bf16(res, (size_t)i) + lm_ld_bf16(delta, (size_t)i));
      res[i] = r;
      v = __bfloat162float(__ushort_as_bfloat16(r));
    } else {
      v = lm_ld_bf16(x, (size_t)i);
    }
    ss += v * v;
  }
  return ss;
}

/* out = bf16(w * bf16(x * inv)) over this thread's elements; x is the
 * residual row when adding (this thread wrote those elements itself). */
static __device__ __forceinline__ void lm_norm_scale(uint16_t *out, const uint16_t *x,
                                                     const float *w, float inv, int dim, int first,
                                                     int stride) {
  for (int i = first; i < dim; i += stride) {
    float n = __bfloat162float(__float2bfloat16_rn(lm_ld_bf16(x, (size_t)i) * inv));
    out[i] = lm_to_bf16(w[i] * n);
  }
}

/* as Transformers: x * rsqrt(mean(x^2) + eps), with a correctly rounded
 * square root and division, as the CPU backend computes it */
static __device__ __forceinline__ float lm_norm_inv(float ss, int dim, float eps) {
  return 1.0f / sqrtf(ss / (float)dim + eps);
}

/* One warp per row. out, x, residual, delta: [rows, dim]; w: [dim]. x is
 * ignored (the residual is normalized) when delta is non-NULL. */
__global__ void lm_rmsnorm_warp_kernel(uint16_t *out, uint16_t *residual, const uint16_t *x,
                                       const uint16_t *delta, const float *w, int rows, int dim,
                                       float eps) {
  int lane = threadIdx.x & 31;
  for (size_t r = (size_t)blockIdx.x * LM_NORM_ROWS_PER_BLOCK + threadIdx.x / 32; r < (size_t)rows;
       r += (size_t)gridDim.x * LM_NORM_ROWS_PER_BLOCK) {
    size_t base = r * (size_t)dim;
    uint16_t *res = delta ? residual + base : NULL;
    const uint16_t *xr = delta ? res : x + base;
    const uint16_t *dr = delta ? delta + base : NULL;
    float ss = lm_warp_sum(lm_norm_sumsq(res, xr, dr, dim, lane, 32));
    lm_norm_scale(out + base, xr, w, lm_norm_inv(ss, dim, eps), dim, lane, 32);
  }
}

/* One block of LM_NORM_BLOCK_THREADS per row; same arguments. */
__global__ void lm_rmsnorm_block_kernel(uint16_t *out, uint16_t *residual, const uint16_t *x,
                                        const uint16_t *delta, const float *w, int rows, int dim,
                                        float eps) {
  __shared__ float warp_ss[LM_NORM_BLOCK_WARPS];
  int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  for (size_t r = blockIdx.x; r < (size_t)rows; r += gridDim.x) {
    size_t base = r * (size_t)dim;
    uint16_t *res = delta ? residual + base : NULL;
    const uint16_t *xr = delta ? res : x + base;
    const uint16_t *dr = delta ? delta + base : NULL;
    float ss = lm_warp_sum(lm_norm_sumsq(res, xr, dr, dim, tid, LM_NORM_BLOCK_THREADS));
    if (lane == 0) warp_ss[warp] = ss;
    __syncthreads();
    ss = lm_warp_sum(lane < LM_NORM_BLOCK_WARPS ? warp_ss[lane] : 0.0f);
    /* every warp has read warp_ss before the next row overwrites it */
    __syncthreads();
    lm_norm_scale(out + base, xr, w, lm_norm_inv(ss, dim, eps), dim, tid, LM_NORM_BLOCK_THREADS);
  }
}

static void lm_norm_launch(uint16_t *out, uint16_t *residual, const uint16_t *x,
                           const uint16_t *delta, const float *w, int rows, int dim, float eps,
                           void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  unsigned grid;
  if (rows <= 0 || dim <= 0) return;
  if (dim <= LM_NORM_WARP_MAX_DIM) {
    grid = lm_cdiv((size_t)rows, LM_NORM_ROWS_PER_BLOCK);
    if (grid > LM_NORM_MAX_GRID_BLOCKS) grid = LM_NORM_MAX_GRID_BLOCKS;
    lm_rmsnorm_warp_kernel<<<grid, 32 * LM_NORM_ROWS_PER_BLOCK, 0, s>>>(out, residual, x, delta, w,
                                                                        rows, dim, eps);
  } else {
    grid = rows < (int)LM_NORM_MAX_GRID_BLOCKS ? (unsigned)rows : LM_NORM_MAX_GRID_BLOCKS;
    lm_rmsnorm_block_kernel<<<grid, LM_NORM_BLOCK_THREADS, 0, s>>>(out, residual, x, delta, w, rows,
                                                                   dim, eps);
  }
}

extern "C" void lm_cuda_rmsnorm(uint16_t *out, const uint16_t *x, const float *w, int rows, int dim,
                                float eps, void *stream) {
  lm_norm_launch(out, NULL, x, NULL, w, rows, dim, eps, stream);
}

extern "C" void lm_cuda_add_rmsnorm(uint16_t *out, uint16_t *residual, const uint16_t *delta,
                                    const float *w, int rows, int dim, float eps, void *stream) {
  /* a NULL delta would select the plain path, which reads x: pass the
   * residual as x so that case still normalizes the residual */
  lm_norm_launch(out, residual, residual, delta, w, rows, dim, eps, stream);
}
