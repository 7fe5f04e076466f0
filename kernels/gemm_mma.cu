/* gemm_mma.cu - y = x @ w^T on mma.sync.m16n8k16 (bf16 in, f32 sums), one
 * summation order per weight shape for every M (gemm_mma.cuh).
 *
 * Fragments come straight from global memory, without shared memory: lane
 * (g = lane / 4, t = lane % 4) of a warp loads 16 bytes, k = 8t .. 8t + 7
 * of a 32-wide chunk, from weight row g of each 8-column group and from x
 * rows g and g + 8 of each 16-row group. The two MMAs of a chunk take the
 * first and the second half of those vectors: each sums its 16 k's in a
 * fixed permutation of the chunk, the same for x and w, so every load is
 * a full 16-byte vector and no lane moves data to another. At M = 1 a warp
 * reads its 8 weight rows as 8 x 64 contiguous bytes a chunk (whole 32-byte
 * sectors), several chunks in flight, and the zero rows of the MMA's other
 * 15 are never loaded.
 *
 * Tile shapes by M (a warp covers MT x 16 rows and NT x 8 columns, a block
 * WM x WN warps, U chunks loaded ahead of their MMAs) differ only in what
 * is loaded together; an element's additions are the same in all of them,
 * and a chunk past the end of a split is never added (not even as zeros,
 * which could turn a -0 sum into +0). */
#include "kernels/gemm_mma.cuh"

#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda_check.cuh"

#define LM_MMA_CHUNK 32
/* K splits: doubled while the 8-column warps at M <= 16 are fewer than
 * LM_MMA_SPLIT_WARPS (a few per SM leave the memory system idle) and each
 * split keeps at least LM_MMA_MIN_SPLIT_CHUNKS chunks */
#define LM_MMA_SPLIT_WARPS      2048
#define LM_MMA_MIN_SPLIT_CHUNKS 8
#define LM_MMA_MAX_SPLITS       16
/* the partials mode is used below this many warps in the registers mode */
#define LM_MMA_PARTIAL_WARPS 4096

extern "C" int lm_gemm_mma_supported(int N, int K) {
  return N > 0 && K > 0 && K % 8 == 0;
}

extern "C" int lm_gemm_mma_splits(int N, int K) {
  long n8 = (N + 7) / 8;
  int chunks = (K + LM_MMA_CHUNK - 1) / LM_MMA_CHUNK, s = 1;
  while (s < LM_MMA_MAX_SPLITS && n8 * s < LM_MMA_SPLIT_WARPS &&
         chunks >= 2 * s * LM_MMA_MIN_SPLIT_CHUNKS)
    s *= 2;
  return s;
}

static __device__ __forceinline__ void lm_mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                              uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* weights are read once a step: past L1, straight to registers */
static __device__ __forceinline__ uint4 lm_ld_stream(const uint16_t *p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

/* elements (r, n) and (r, n + 1) of an [M, N] f32 or bf16 matrix */
static __device__ __forceinline__ void lm_mma_store(void *y, int out_f32, int M, int N, int r,
                                                    int n, float v0, float v1) {
  if (r >= M || n >= N) return;
  size_t i = (size_t)r * N + n;
  int pair = n + 1 < N && N % 2 == 0;
  if (out_f32) {
    float *p = (float *)y + i;
    if (pair) {
      *(float2 *)p = make_float2(v0, v1);
    } else {
      p[0] = v0;
      if (n + 1 < N) p[1] = v1;
    }
  } else {
    uint16_t *p = (uint16_t *)y + i;
    if (pair) {
      *(uint32_t *)p = (uint32_t)lm_to_bf16(v0) | (uint32_t)lm_to_bf16(v1) << 16;
    } else {
      p[0] = lm_to_bf16(v0);
      if (n + 1 < N) p[1] = lm_to_bf16(v1);
    }
  }
}

/* Blocks of WM x WN warps; grid (N / block columns, M / block rows, splits
 * when PARTIAL). With PARTIAL, split z's sums go to ws[z] (to y when there
 * is one split); otherwise each thread adds its splits' sums itself. */
template <int MT, int NT, int WM, int WN, int U, bool PARTIAL>
static __global__ void __launch_bounds__(32 * WM * WN)
    lm_gemm_mma_kernel(void *y, float *ws, const uint16_t *__restrict__ x,
                       const uint16_t *__restrict__ w, int M, int N, int K, int splits,
                       int split_chunks, int out_f32) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int m0 = (blockIdx.y * WM + warp / WN) * MT * 16;
  const int n0 = (blockIdx.x * WN + warp % WN) * NT * 8;
  const int chunks = (K + LM_MMA_CHUNK - 1) / LM_MMA_CHUNK;
  if (m0 >= M || n0 >= N) return; /* whole warps; no barriers below */

  const uint16_t *xr[MT][2], *wr[NT];
  bool xin[MT][2], win[NT];
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      int r = m0 + 16 * i + 8 * h + g;
      xin[i][h] = r < M;
      xr[i][h] = x + (size_t)(xin[i][h] ? r : 0) * K + 8 * t;
    }
#pragma unroll
  for (int j = 0; j < NT; j++) {
    int n = n0 + 8 * j + g;
    win[j] = n < N;
    wr[j] = w + (size_t)(win[j] ? n : 0) * K + 8 * t;
  }

  float tot[MT][NT][4] = {};
  const int s_lo = PARTIAL ? (int)blockIdx.z : 0, s_hi = PARTIAL ? s_lo + 1 : splits;
  for (int s = s_lo; s < s_hi; s++) {
    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
          acc[i][j][e] = 0.0f;
    const int c_lo = s * split_chunks, c_hi = min(chunks, c_lo + split_chunks);
    for (int c = c_lo; c < c_hi; c += U) {
      uint4 a[U][MT][2], b[U][NT];
#pragma unroll
      for (int u = 0; u < U; u++) {
        const size_t off = (size_t)(c + u) * LM_MMA_CHUNK;
        const bool in = c + u < c_hi && (c + u) * LM_MMA_CHUNK + 8 * t < K;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
          for (int h = 0; h < 2; h++)
            a[u][i][h] =
                in && xin[i][h] ? __ldg((const uint4 *)(xr[i][h] + off)) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int j = 0; j < NT; j++)
          b[u][j] = in && win[j] ? lm_ld_stream(wr[j] + off) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (c + u >= c_hi) break;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
          for (int j = 0; j < NT; j++) {
            lm_mma(acc[i][j], a[u][i][0].x, a[u][i][1].x, a[u][i][0].y, a[u][i][1].y, b[u][j].x,
                   b[u][j].y);
            lm_mma(acc[i][j], a[u][i][0].z, a[u][i][1].z, a[u][i][0].w, a[u][i][1].w, b[u][j].z,
                   b[u][j].w);
          }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++) {
        if (PARTIAL) {
          int r = m0 + 16 * i + g, n = n0 + 8 * j + 2 * t;
          void *dst = splits > 1 ? (void *)(ws + (size_t)s * M * N) : y;
          int f32 = splits > 1 || out_f32;
          lm_mma_store(dst, f32, M, N, r, n, acc[i][j][0], acc[i][j][1]);
          lm_mma_store(dst, f32, M, N, r + 8, n, acc[i][j][2], acc[i][j][3]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; e++)
            tot[i][j][e] = s == 0 ? acc[i][j][e] : __fadd_rn(tot[i][j][e], acc[i][j][e]);
        }
      }
  }
  if (!PARTIAL) {
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++) {
        int r = m0 + 16 * i + g, n = n0 + 8 * j + 2 * t;
        lm_mma_store(y, out_f32, M, N, r, n, tot[i][j][0], tot[i][j][1]);
        lm_mma_store(y, out_f32, M, N, r + 8, n, tot[i][j][2], tot[i][j][3]);
      }
  }
}

/* y = ws[0] + ws[1] + ... left to right: the registers mode's additions */
static __global__ void lm_gemm_mma_fold(void *y, const float *__restrict__ ws, size_t mn,
                                        int splits, int out_f32) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < mn;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = ws[i];
    for (int s = 1; s < splits; s++)
      v = __fadd_rn(v, ws[(size_t)s * mn + i]);
    if (out_f32)
      ((float *)y)[i] = v;
    else
      ((uint16_t *)y)[i] = lm_to_bf16(v);
  }
}

template <int MT, int NT, int WM, int WN, int U>
static int lm_gemm_mma_launch(void *y, const uint16_t *x, const uint16_t *w, int M, int N, int K,
                              int out_f32, int mode, float *ws, size_t ws_bytes,
                              cudaStream_t stream, char *err, size_t err_len) {
  const int splits = lm_gemm_mma_splits(N, K);
  const int chunks = (K + LM_MMA_CHUNK - 1) / LM_MMA_CHUNK;
  const int split_chunks = (chunks + splits - 1) / splits;
  const size_t mn = (size_t)M * N;
  const int fits = splits == 1 || (ws && (size_t)splits * mn * 4 <= ws_bytes);
  dim3 grid(lm_cdiv(N, WN * NT * 8), lm_cdiv(M, WM * MT * 16), 1), block(32 * WM * WN);
  if (mode == LM_GEMM_MMA_AUTO)
    mode = splits > 1 && fits &&
                   (size_t)lm_cdiv(M, MT * 16) * lm_cdiv(N, NT * 8) < LM_MMA_PARTIAL_WARPS
               ? LM_GEMM_MMA_PARTIALS
               : LM_GEMM_MMA_REGISTERS;
  if (mode == LM_GEMM_MMA_PARTIALS && !fits) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: %d partial sums of %dx%d do not fit the %zu-byte workspace",
               splits, M, N, ws_bytes);
    return -1;
  }
  if (grid.y > 65535) {
    if (err && err_len) snprintf(err, err_len, "gemm: M=%d is too many rows", M);
    return -1;
  }
  if (mode == LM_GEMM_MMA_PARTIALS) {
    grid.z = splits;
    lm_gemm_mma_kernel<MT, NT, WM, WN, U, true>
        <<<grid, block, 0, stream>>>(y, ws, x, w, M, N, K, splits, split_chunks, out_f32);
    if (splits > 1) {
      unsigned blocks = lm_cdiv(mn, 256);
      if (blocks > 4096) blocks = 4096;
      lm_gemm_mma_fold<<<blocks, 256, 0, stream>>>(y, ws, mn, splits, out_f32);
    }
  } else {
    lm_gemm_mma_kernel<MT, NT, WM, WN, U, false>
        <<<grid, block, 0, stream>>>(y, ws, x, w, M, N, K, splits, split_chunks, out_f32);
  }
  LM_CUDA_CHECK(cudaGetLastError(), err, err_len, "gemm launch");
  return 0;
}

extern "C" int lm_gemm_mma_run(void *y, const uint16_t *x, const uint16_t *w, int M, int N, int K,
                               int out_f32, int mode, float *ws, size_t ws_bytes, void *stream,
                               char *err, size_t err_len) {
  cudaStream_t st = (cudaStream_t)stream;
  if (M < 0 || !lm_gemm_mma_supported(N, K)) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: shape M=%d N=%d K=%d not supported (K must be a multiple of 8)",
               M, N, K);
    return -1;
  }
  if (((uintptr_t)y | (uintptr_t)x | (uintptr_t)w) % 16) {
    if (err && err_len) snprintf(err, err_len, "gemm: x, w and y must be 16-byte aligned");
    return -1;
  }
  if (M == 0) return 0;
  /* one decode row to a few: one 8-column group a warp, 8 chunks in flight */
  if (M <= 16)
    return lm_gemm_mma_launch<1, 1, 1, 4, 8>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                             err_len);
  if (M <= 32)
    return lm_gemm_mma_launch<2, 2, 1, 4, 4>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                             err_len);
  if (M <= 64)
    return lm_gemm_mma_launch<4, 2, 1, 4, 2>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                             err_len);
  return lm_gemm_mma_launch<4, 4, 2, 2, 1>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                           err_len);
}
