/* rows.cu - row gather, SwiGLU and the split of a fused GEMM's output.
 * All three are element-wise with grid-stride loops; no output element
 * depends on any other, so they are batch invariant by construction. */
#include "kernels/rows.cuh"

#include <stdint.h>
#include <string.h>

#include "kernels/cuda_check.cuh"

#define LM_ROWS_THREADS         256
#define LM_ROWS_MAX_GRID_BLOCKS 65535u

static unsigned lm_rows_grid(size_t n) {
  unsigned g = lm_cdiv(n, LM_ROWS_THREADS);
  return g < LM_ROWS_MAX_GRID_BLOCKS ? g : LM_ROWS_MAX_GRID_BLOCKS;
}

/* ---- gather_rows ------------------------------------------------------- */

/* out: [n, units] = src[idx[i]] (src: [*, units]), a unit being one bf16 or,
 * when every row is 16-byte aligned, 8 of them. A negative idx yields a
 * zero row. */
template <typename U>
__global__ void lm_gather_rows_kernel(U *out, const U *src, const int32_t *idx, int n,
                                      size_t units) {
  size_t total = (size_t)n * units;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    size_t row = e / units, col = e % units;
    int32_t r = idx[row];
    out[e] = r < 0 ? U{} : src[(size_t)r * units + col];
  }
}

extern "C" void lm_cuda_gather_rows(uint16_t *out, const uint16_t *src, const int32_t *idx, int n,
                                    int dim, void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  if (n <= 0 || dim <= 0) return;
  if (dim % 8 == 0 && ((uintptr_t)out | (uintptr_t)src) % 16 == 0) {
    size_t units = (size_t)dim / 8;
    lm_gather_rows_kernel<uint4><<<lm_rows_grid((size_t)n * units), LM_ROWS_THREADS, 0, s>>>(
        (uint4 *)out, (const uint4 *)src, idx, n, units);
  } else {
    lm_gather_rows_kernel<uint16_t>
        <<<lm_rows_grid((size_t)n * dim), LM_ROWS_THREADS, 0, s>>>(out, src, idx, n, (size_t)dim);
  }
}

/* ---- swiglu ------------------------------------------------------------ */

/* out, gate, up: [n] (rows * dim flattened). silu in f32 with the accurate
 * expf, rounded to bf16 as Transformers' bf16 activation returns it, then
 * the bf16 product rounded once more. */
__global__ void lm_swiglu_kernel(uint16_t *out, const uint16_t *gate, const uint16_t *up,
                                 size_t n) {
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (size_t)gridDim.x * blockDim.x) {
    float g = lm_ld_bf16(gate, e);
    float act = __bfloat162float(__float2bfloat16_rn(g / (1.0f + expf(-g))));
    out[e] = lm_to_bf16(act * lm_ld_bf16(up, e));
  }
}

extern "C" void lm_cuda_swiglu(uint16_t *out, const uint16_t *gate, const uint16_t *up, int rows,
                               int dim, void *stream) {
  size_t n = (size_t)rows * (size_t)dim;
  if (rows <= 0 || dim <= 0) return;
  lm_swiglu_kernel<<<lm_rows_grid(n), LM_ROWS_THREADS, 0, (cudaStream_t)stream>>>(out, gate, up, n);
}

/* ---- split_cols -------------------------------------------------------- */

/* Passed by value: the destinations of one split, and where each begins
 * in the source row (first[n] is the source row's width). */
struct lm_split_args {
  uint16_t *dst[LM_CUDA_MAX_SPLIT];     /* dst[i]: [rows, widths[i]] */
  const float *bias[LM_CUDA_MAX_SPLIT]; /* bias[i]: [widths[i]] or NULL */
  int first[LM_CUDA_MAX_SPLIT + 1];
  int n;
};

/* src: [rows, first[n]] f32 -> the dst columns, bias added in f32, one rounding */
__global__ void lm_split_cols_kernel(struct lm_split_args a, const float *src, int rows) {
  size_t width = (size_t)a.first[a.n], total = (size_t)rows * width;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    size_t r = e / width;
    int c = (int)(e % width), i = 0;
    while (i + 1 < a.n && c >= a.first[i + 1])
      i++;
    int w = a.first[i + 1] - a.first[i], j = c - a.first[i];
    float v = src[e];
    if (a.bias[i]) v += a.bias[i][j];
    a.dst[i][r * (size_t)w + j] = lm_to_bf16(v);
  }
}

extern "C" void lm_cuda_split_cols(uint16_t *const *dst, const float *const *bias,
                                   const int *widths, int n, const float *src, int rows,
                                   void *stream) {
  struct lm_split_args a;
  if (rows <= 0 || n <= 0 || n > LM_CUDA_MAX_SPLIT) return;
  memset(&a, 0, sizeof a);
  a.n = n;
  for (int i = 0; i < n; i++) {
    if (widths[i] < 0) return;
    a.dst[i] = dst[i];
    a.bias[i] = bias ? bias[i] : NULL;
    a.first[i + 1] = a.first[i] + widths[i];
  }
  if (a.first[n] == 0) return;
  lm_split_cols_kernel<<<lm_rows_grid((size_t)rows * a.first[n]), LM_ROWS_THREADS, 0,
                         (cudaStream_t)stream>>>(a, src, rows);
}
