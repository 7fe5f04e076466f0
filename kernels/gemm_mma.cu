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

#include <atomic>

#include "kernels/cuda_check.cuh"

#define LM_MMA_CHUNK 32
/* K splits: doubled while the 8-column warps at M <= 16 are fewer than
 * LM_MMA_SPLIT_WARPS (a few per SM leave the memory system idle) and each
 * split keeps at least LM_MMA_MIN_SPLIT_CHUNKS chunks */
#define LM_MMA_SPLIT_WARPS      2048
#define LM_MMA_MIN_SPLIT_CHUNKS 8
#define LM_MMA_MAX_SPLITS       16
/* the partials mode is used below this many warps (direct kernel) or
 * blocks (tiled kernel) in the registers mode: a few per SM of an H100 */
#define LM_MMA_PARTIAL_WARPS  4096
#define LM_MMA_PARTIAL_BLOCKS 264

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

/* A warp's MT x 16 by NT x 8 tile of sums v, rows from m0 and columns from
 * n0, as the MMA's accumulators lay it out (lane g, t: rows g and g + 8,
 * columns 2t and 2t + 1 of each 16 x 8 piece). */
template <int MT, int NT>
static __device__ __forceinline__ void lm_mma_store_tile(void *y, int out_f32, int M, int N, int m0,
                                                         int n0, const float (&v)[MT][NT][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NT; j++) {
      int r = m0 + 16 * i + g, n = n0 + 8 * j + 2 * t;
      lm_mma_store(y, out_f32, M, N, r, n, v[i][j][0], v[i][j][1]);
      lm_mma_store(y, out_f32, M, N, r + 8, n, v[i][j][2], v[i][j][3]);
    }
}

/* Split s's sums in acc join the running sum tot (the first split's are
 * it), and acc starts again from zero: the one fold every mode does. */
template <int MT, int NT>
static __device__ __forceinline__ void lm_mma_fold_split(float (&tot)[MT][NT][4],
                                                         float (&acc)[MT][NT][4], int s) {
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        tot[i][j][e] = s == 0 ? acc[i][j][e] : __fadd_rn(tot[i][j][e], acc[i][j][e]);
        acc[i][j][e] = 0.0f;
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
    float acc[MT][NT][4] = {};
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
    if (PARTIAL)
      lm_mma_store_tile<MT, NT>(splits > 1 ? (void *)(ws + (size_t)s * M * N) : y,
                                splits > 1 || out_f32, M, N, m0, n0, acc);
    else
      lm_mma_fold_split<MT, NT>(tot, acc, s);
  }
  if (!PARTIAL) lm_mma_store_tile<MT, NT>(y, out_f32, M, N, m0, n0, tot);
}

/* ---- larger M: tiles staged in shared memory ------------------------------
 *
 * A block of WM x 4 warps computes a (WM x 64) x 128 tile of y (a warp 64 x
 * 32: MT = NT = 4), its x and w rows staged chunk by chunk in shared memory
 * by cp.async, LM_MMA_STAGES chunks deep. A stage holds each row's 32 k's
 * as 64 contiguous bytes, and a warp reads its fragments with the same
 * 16-byte-per-lane pattern as the kernel above (eight lanes read 128
 * contiguous bytes: no bank conflicts), so the MMAs, their order, and the
 * splits' fold are those of lm_gemm_mma_kernel. */
#define LM_MMA_STAGES    4
#define LM_MMA_TILE_N    128
#define LM_MMA_TILE_WN   4
#define LM_MMA_ROW_BYTES (LM_MMA_CHUNK * 2)

static __host__ __device__ constexpr size_t lm_mma_tiled_smem(int wm) {
  return (size_t)LM_MMA_STAGES * (wm * 64 + LM_MMA_TILE_N) * LM_MMA_ROW_BYTES;
}

/* Queues chunk c of ROWS rows of src ([., K], from row first; rows from
 * limit on read as zeros) into dst, 64 bytes a row, by THREADS threads. */
template <int ROWS, int THREADS>
static __device__ __forceinline__ void lm_mma_stage_rows(unsigned char *dst, const uint16_t *src,
                                                         int first, int limit, int c, int K) {
#pragma unroll
  for (int p = threadIdx.x; p < ROWS * 4; p += THREADS) {
    int row = p >> 2, q = p & 3, k = c * LM_MMA_CHUNK + 8 * q, r = first + row;
    bool ok = r < limit && k < K;
    lm_cp_async16_or_zero(dst + row * LM_MMA_ROW_BYTES + 16 * q, ok ? src + (size_t)r * K + k : src,
                          ok);
  }
}

/* Queues chunk c's rows of x (the block's m rows) and w (its n rows) into
 * stage buffer st, one copy group per thread; chunks past c_end load nothing. */
template <int WM>
static __device__ __forceinline__ void lm_mma_stage(unsigned char *smem, int st, int c, int c_end,
                                                    const uint16_t *x, const uint16_t *w, int M,
                                                    int N, int K, int m_blk, int n_blk) {
  constexpr int BM = WM * 64, THREADS = 32 * WM * LM_MMA_TILE_WN;
  unsigned char *a_s = smem + (size_t)st * (BM + LM_MMA_TILE_N) * LM_MMA_ROW_BYTES;
  if (c < c_end) {
    lm_mma_stage_rows<BM, THREADS>(a_s, x, m_blk, M, c, K);
    lm_mma_stage_rows<LM_MMA_TILE_N, THREADS>(a_s + (size_t)BM * LM_MMA_ROW_BYTES, w, n_blk, N, c,
                                              K);
  }
  lm_cp_async_commit();
}

/* Grid (N / 128, M / (WM x 64), splits when PARTIAL); the modes as in
 * lm_gemm_mma_kernel. */
template <int WM, bool PARTIAL>
static __global__ void __launch_bounds__(32 * WM * LM_MMA_TILE_WN)
    lm_gemm_mma_tiled_kernel(void *y, float *ws, const uint16_t *__restrict__ x,
                             const uint16_t *__restrict__ w, int M, int N, int K, int splits,
                             int split_chunks, int out_f32) {
  extern __shared__ __align__(16) unsigned char lm_mma_smem[];
  constexpr int BM = WM * 64, MT = 4, NT = 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int m_blk = blockIdx.y * BM, n_blk = blockIdx.x * LM_MMA_TILE_N;
  const int wm0 = (warp / LM_MMA_TILE_WN) * 64, wn0 = (warp % LM_MMA_TILE_WN) * 32;
  const int chunks = (K + LM_MMA_CHUNK - 1) / LM_MMA_CHUNK;
  const int s_lo = PARTIAL ? (int)blockIdx.z : 0, s_hi = PARTIAL ? s_lo + 1 : splits;
  const int c_lo = min(chunks, s_lo * split_chunks), c_end = min(chunks, s_hi * split_chunks);

  float acc[MT][NT][4] = {}, tot[MT][NT][4] = {};

#pragma unroll
  for (int st = 0; st < LM_MMA_STAGES - 1; st++)
    lm_mma_stage<WM>(lm_mma_smem, st, c_lo + st, c_end, x, w, M, N, K, m_blk, n_blk);

  int s = s_lo; /* the split acc belongs to */
  for (int c = c_lo; c < c_end; c++) {
    lm_cp_async_wait<LM_MMA_STAGES - 2>();
    __syncthreads(); /* chunk c has landed everywhere; chunk c - 1's stage is free */
    lm_mma_stage<WM>(lm_mma_smem, (c - c_lo + LM_MMA_STAGES - 1) % LM_MMA_STAGES,
                     c + LM_MMA_STAGES - 1, c_end, x, w, M, N, K, m_blk, n_blk);
    if (!PARTIAL && c == (s + 1) * split_chunks) /* a split ends: fold it */
      lm_mma_fold_split<MT, NT>(tot, acc, s++);
    const unsigned char *a_s = lm_mma_smem + (size_t)((c - c_lo) % LM_MMA_STAGES) *
                                                 (BM + LM_MMA_TILE_N) * LM_MMA_ROW_BYTES;
    const unsigned char *b_s = a_s + (size_t)BM * LM_MMA_ROW_BYTES;
    uint4 a[MT][2], b[NT];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int h = 0; h < 2; h++)
        a[i][h] = *(const uint4 *)(a_s + (wm0 + 16 * i + 8 * h + g) * LM_MMA_ROW_BYTES + 16 * t);
#pragma unroll
    for (int j = 0; j < NT; j++)
      b[j] = *(const uint4 *)(b_s + (wn0 + 8 * j + g) * LM_MMA_ROW_BYTES + 16 * t);
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++) {
        lm_mma(acc[i][j], a[i][0].x, a[i][1].x, a[i][0].y, a[i][1].y, b[j].x, b[j].y);
        lm_mma(acc[i][j], a[i][0].z, a[i][1].z, a[i][0].w, a[i][1].w, b[j].z, b[j].w);
      }
  }
  lm_cp_async_wait<0>();

  const int m0 = m_blk + wm0, n0 = n_blk + wn0;
  if (!PARTIAL) {
    /* the last split with chunks, then any empty ones after it (as the
     * registers kernel adds their zero sums) */
    for (; s < splits; s++)
      lm_mma_fold_split<MT, NT>(tot, acc, s);
  }
  lm_mma_store_tile<MT, NT>(PARTIAL && splits > 1 ? (void *)(ws + (size_t)s_lo * M * N) : y,
                            (PARTIAL && splits > 1) || out_f32, M, N, m0, n0, PARTIAL ? acc : tot);
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

/* The launch both kernels share: the splits, the mode, the fold. */
struct lm_mma_launch {
  int splits, split_chunks, partial;
  size_t mn;
};

/* Fills l for an M x N x K product; AUTO takes the partials mode when the
 * registers mode would launch fewer than busy_units (warps or blocks: its
 * `units`) and the partial sums fit ws. -1 with err written if the asked
 * mode cannot run. */
static int lm_mma_plan(struct lm_mma_launch *l, int M, int N, int K, int mode, size_t units,
                       size_t busy_units, const float *ws, size_t ws_bytes, char *err,
                       size_t err_len) {
  const int chunks = (K + LM_MMA_CHUNK - 1) / LM_MMA_CHUNK;
  l->splits = lm_gemm_mma_splits(N, K);
  l->split_chunks = (chunks + l->splits - 1) / l->splits;
  l->mn = (size_t)M * N;
  int fits = l->splits == 1 || (ws && (size_t)l->splits * l->mn * 4 <= ws_bytes);
  if (mode == LM_GEMM_MMA_AUTO)
    mode =
        l->splits > 1 && fits && units < busy_units ? LM_GEMM_MMA_PARTIALS : LM_GEMM_MMA_REGISTERS;
  if (mode == LM_GEMM_MMA_PARTIALS && !fits) {
    if (err && err_len)
      snprintf(err, err_len, "gemm: %d partial sums of %dx%d do not fit the %zu-byte workspace",
               l->splits, M, N, ws_bytes);
    return -1;
  }
  l->partial = mode == LM_GEMM_MMA_PARTIALS;
  return 0;
}

/* After the main kernel's launch: its launch error, else the fold's. */
static int lm_mma_fold_launch(const struct lm_mma_launch *l, void *y, const float *ws, int out_f32,
                              cudaStream_t stream, char *err, size_t err_len) {
  LM_CUDA_CHECK(cudaGetLastError(), err, err_len, "gemm launch");
  if (l->partial && l->splits > 1) {
    unsigned blocks = lm_cdiv(l->mn, 256);
    if (blocks > 4096) blocks = 4096;
    lm_gemm_mma_fold<<<blocks, 256, 0, stream>>>(y, ws, l->mn, l->splits, out_f32);
  }
  LM_CUDA_CHECK(cudaGetLastError(), err, err_len, "gemm launch");
  return 0;
}

template <int MT, int NT, int WM, int WN, int U>
static int lm_gemm_mma_launch(void *y, const uint16_t *x, const uint16_t *w, int M, int N, int K,
                              int out_f32, int mode, float *ws, size_t ws_bytes,
                              cudaStream_t stream, char *err, size_t err_len) {
  struct lm_mma_launch l;
  dim3 grid(lm_cdiv(N, WN * NT * 8), lm_cdiv(M, WM * MT * 16), 1), block(32 * WM * WN);
  size_t warps = (size_t)lm_cdiv(M, MT * 16) * lm_cdiv(N, NT * 8);
  if (lm_mma_plan(&l, M, N, K, mode, warps, LM_MMA_PARTIAL_WARPS, ws, ws_bytes, err, err_len))
    return -1;
  if (l.partial) {
    grid.z = l.splits;
    lm_gemm_mma_kernel<MT, NT, WM, WN, U, true>
        <<<grid, block, 0, stream>>>(y, ws, x, w, M, N, K, l.splits, l.split_chunks, out_f32);
  } else {
    lm_gemm_mma_kernel<MT, NT, WM, WN, U, false>
        <<<grid, block, 0, stream>>>(y, ws, x, w, M, N, K, l.splits, l.split_chunks, out_f32);
  }
  return lm_mma_fold_launch(&l, y, ws, out_f32, stream, err, err_len);
}

/* Opts the tiled kernels in to their shared memory (above the default
 * 48 KiB for WM = 2), once per process. */
template <int WM> static cudaError_t lm_mma_tiled_opt_in() {
  cudaError_t e =
      cudaFuncSetAttribute(lm_gemm_mma_tiled_kernel<WM, false>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lm_mma_tiled_smem(WM));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(lm_gemm_mma_tiled_kernel<WM, true>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)lm_mma_tiled_smem(WM));
  return e;
}

template <int WM>
static int lm_gemm_mma_launch_tiled(void *y, const uint16_t *x, const uint16_t *w, int M, int N,
                                    int K, int out_f32, int mode, float *ws, size_t ws_bytes,
                                    cudaStream_t stream, char *err, size_t err_len) {
  /* until it has succeeded once: a failure may be an earlier error the
   * call reports, not the opt-in's own */
  static std::atomic<bool> opted{false};
  struct lm_mma_launch l;
  dim3 grid(lm_cdiv(N, LM_MMA_TILE_N), lm_cdiv(M, WM * 64), 1), block(32 * WM * LM_MMA_TILE_WN);
  if (!opted.load()) {
    LM_CUDA_CHECK(lm_mma_tiled_opt_in<WM>(), err, err_len, "gemm: shared memory opt-in");
    opted.store(true);
  }
  if (lm_mma_plan(&l, M, N, K, mode, (size_t)grid.x * grid.y, LM_MMA_PARTIAL_BLOCKS, ws, ws_bytes,
                  err, err_len))
    return -1;
  if (l.partial) {
    grid.z = l.splits;
    lm_gemm_mma_tiled_kernel<WM, true><<<grid, block, lm_mma_tiled_smem(WM), stream>>>(
        y, ws, x, w, M, N, K, l.splits, l.split_chunks, out_f32);
  } else {
    lm_gemm_mma_tiled_kernel<WM, false><<<grid, block, lm_mma_tiled_smem(WM), stream>>>(
        y, ws, x, w, M, N, K, l.splits, l.split_chunks, out_f32);
  }
  return lm_mma_fold_launch(&l, y, ws, out_f32, stream, err, err_len);
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
  if (((uintptr_t)y | (uintptr_t)x | (uintptr_t)w | (uintptr_t)ws) % 16) {
    if (err && err_len) snprintf(err, err_len, "gemm: x, w, y and ws must be 16-byte aligned");
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
  /* more rows: tiles staged in shared memory */
  if (M <= 64)
    return lm_gemm_mma_launch_tiled<1>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                       err_len);
  return lm_gemm_mma_launch_tiled<2>(y, x, w, M, N, K, out_f32, mode, ws, ws_bytes, st, err,
                                     err_len);
}
