/* cpu_gemm.c - y: [M, N] = x: [M, K] @ W^T (W: [N, K] bf16/f16/f32) + bias.
 *
 * Batch invariance: every y[m, n] is one f32 chain over k in order,
 * acc = fma(x[m, k], W[n, k], acc) from acc = 0 for k = 0 .. K - 1, then
 * + bias[n] (the dot-product kernel below: one chain over the pairs of k;
 * the portable fallback: a multiply and an add a k). Tiling over M and N
 * only decides which chains share the registers; no chain is split or
 * reordered, so M = 1 and M = 512 give the same bits for a row, and so
 * does any split of N across threads.
 *
 * Packed W: the kernels read W in panels of 16 rows (16 columns of y),
 * transposed by 32-bit words: word u of a panel is one 64-byte vector, lane
 * c from row 16p + c. A word is one f32, or the 16-bit pair of k = 2u and
 * 2u + 1 with the even one in the low half (past an odd K the high half is
 * 0); rows past N are zeros. A bf16 pair widens without a shuffle:
 * (word << 16) is the even k and (word & 0xffff0000) the odd one, both
 * exactly. load_weights packs every matmul weight once (lm_tensor.dev
 * holds the packed copy); a tensor without one (the file mapping, or a
 * tensor a test made) is packed per call, a few panels at a time, into
 * per-thread scratch, which computes the same bits.
 *
 * The micro-kernel is an outer product: MR x NV accumulator vectors (x rows
 * by 16-column panels, up to 8 x 3 or 4 x 4) stay in registers, and for
 * each k the NV W vectors are multiplied by each row's x[m, k], broadcast
 * from memory. No horizontal sums, and each W load serves MR rows.
 *
 * bf16 dot products: where vdpbf16ps does twice the FMA's multiply-adds at
 * its rate (AMD Zen 4 and later), x is rounded once per call to bf16 pairs
 * and each word is one vdpbf16ps per (row, panel); the price is x's
 * rounding, which a bf16 checkpoint's own framework pays as well. On Intel
 * Sapphire and Emerald Rapids vdpbf16ps is slower than the FMA
 * (backend_bench's probes: 158-171 against 462 GFLOP/s on 2 cores), so the
 * widening kernel runs there, unless the process may use AMX.
 *
 * AMX tiles: a panel's 16 words from u are a B tile as tdpbf16ps takes it
 * (16 rows of k pairs by 16 columns), and 16 rows of the bf16 pairs of x an
 * A tile, so the packed layout serves the tiles as it is. A tile product
 * adds 32 k to every element of a 16 x 16 f32 accumulator tile, in an order
 * the hardware fixes; each element is one chain over the k steps from 0 up,
 * so a row's bits again do not depend on M or on its place in a tile. K
 * must be a multiple of 32 (every k step whole); other bf16 matrices take
 * the dot products. Which kernel runs is fixed per CPU and matrix, not
 * measured, so a process computes the same bits every run. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu_internal.h"

#define LM_GEMM_MB        64  /* x rows a thread takes through its panels at once */
#define LM_GEMM_MR        8   /* most x rows in a micro-kernel */
#define LM_GEMM_NV        4   /* most panels in a micro-kernel */
#define LM_GEMM_PF        16  /* words of W prefetched ahead (1 KiB a panel) */
#define LM_GEMM_CHUNK     12  /* a multiple of every NV */
#define LM_GEMM_ITEMS_MAX 256 /* work items of one matrix */
#define LM_TILE_DOT       3   /* kernel "dtype" for bf16 by dot products */
#define LM_DOT_PREP_MB    4   /* up to this many rows, x is rounded on the calling thread */
#define LM_AMX_PF         2   /* k steps of B tiles prefetched ahead */

/* Words in a packed row of K elements of dt. */
static size_t lm_gemm_words(int k, enum lm_dtype dt) {
  return dt == LM_DTYPE_F32 ? (size_t)k : ((size_t)k + 1) / 2;
}

size_t lm_cpu_packed_bytes(const struct lm_tensor *w) {
  size_t panels = ((size_t)w->shape[0] + 15) / 16;
  return panels * lm_gemm_words((int)w->shape[1], w->dtype) * 64;
}

/* Whether lm_gemm_pack's gathers reach every row of a panel: their byte
 * offsets (up to 15 rows) are 32-bit. */
static int lm_gemm_packable(int k, enum lm_dtype dt) {
  return (int64_t)k * (int64_t)lm_dtype_size(dt) * 15 <= INT32_MAX;
}

/* Packs panels [p0, p0 + np) of W (stored [N, K]) into dst. Each word of 16
 * rows is one gather; an odd K's last 16-bit element is read on its own, so
 * nothing past a row (or the tensor) is touched. */
LM_AVX512_TARGET static void lm_gemm_pack(uint32_t *dst, const void *w, enum lm_dtype dt, int n,
                                          int k, int64_t p0, int np) {
  size_t row = (size_t)k * lm_dtype_size(dt), kw = lm_gemm_words(k, dt);
  size_t whole = dt == LM_DTYPE_F32 ? (size_t)k : (size_t)k / 2; /* words inside every row */
  __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32((int)row));
  for (int64_t p = p0; p < p0 + np; p++) {
    int rows = n - 16 * (int)p < 16 ? n - 16 * (int)p : 16;
    __mmask16 valid = lm_cpu_lanes(rows);
    const char *base = (const char *)w + (size_t)p * 16 * row;
    uint32_t *d = dst + (size_t)(p - p0) * kw * 16;
    for (size_t u = 0; u < whole; u++)
      _mm512_store_si512(d + u * 16, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, idx,
                                                                 base + u * 4, 1));
    if (whole < kw)
      for (int c = 0; c < 16; c++)
        d[whole * 16 + (size_t)c] =
            c < rows ? ((const uint16_t *)(base + (size_t)c * row))[k - 1] : 0u;
  }
}

/* ---- micro-kernels ------------------------------------------------------ */

struct lm_tile {
  const float *x;     /* first x row of the tile, ldx floats apart */
  const uint32_t *xw; /* dot: first prepared x row, bf16 pairs, ldx words apart */
  size_t ldx;
  const uint32_t *w; /* first panel, ldp words apart */
  size_t ldp;
  const uint32_t *next; /* the next group's first panel */
  unsigned next_panels; /* bit j: this tile pulls panel j of next into L2 */
  int k;
  size_t words; /* in a panel row: K, or K / 2 rounded up */
  float *y;     /* y[m0, 16 p0], ldy floats from one row to the next */
  size_t ldy;
  const float *bias; /* [16 * NV] */
  int ncols;         /* columns of y the panels hold, 1 .. 16 * NV */
};

LM_AVX512_INLINE void lm_gemm_zero(__m512 acc[LM_GEMM_MR][LM_GEMM_NV], int MR, int NV) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
      acc[i][j] = _mm512_setzero_ps();
}

/* y = acc + bias, the columns past ncols left alone. */
LM_AVX512_INLINE void lm_gemm_store(__m512 acc[LM_GEMM_MR][LM_GEMM_NV], int MR, int NV,
                                    const struct lm_tile *t) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; j++) {
    __mmask16 mask = lm_cpu_lanes(t->ncols - 16 * j);
    __m512 b = _mm512_loadu_ps(t->bias + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
      _mm512_mask_storeu_ps(t->y + (size_t)i * t->ldy + 16 * j, mask, _mm512_add_ps(acc[i][j], b));
  }
}

/* The even (odd = 0) or odd (odd = 1) k of a word of 16-bit pairs. */
LM_AVX512_INLINE __m512 lm_gemm_widen(int DT, const uint32_t *word, int odd) {
  __m512i r = _mm512_load_si512(word);
  if (DT == LM_DTYPE_BF16)
    return _mm512_castsi512_ps(odd ? _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u))
                                   : _mm512_slli_epi32(r, 16));
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(odd ? _mm512_srli_epi32(r, 16) : r));
}

/* Every tile prefetches its panels ahead: the first tile of rows streams
 * them from DRAM and needs misses in flight (for the others these hit L2).
 * The tiles after the first also pull the next group's panels into L2, a
 * share each, so its first tile finds them there. Past a panel's end this
 * touches nothing: prefetches never fault. */
LM_AVX512_INLINE void lm_gemm_prefetch(const struct lm_tile *t, size_t u, int NV) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; j++)
    _mm_prefetch((const char *)(t->w + (size_t)j * t->ldp + (u + LM_GEMM_PF) * 16), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int j = 0; j < LM_GEMM_NV; j++)
    if (t->next_panels >> j & 1)
      _mm_prefetch((const char *)(t->next + (size_t)j * t->ldp + u * 16), _MM_HINT_T1);
}

/* acc[i][j] += x[i * ldx] * w[j]: one k of MR rows into NV panels. */
LM_AVX512_INLINE void lm_gemm_fma(__m512 acc[LM_GEMM_MR][LM_GEMM_NV], int MR, int NV,
                                  const float *x, size_t ldx, const __m512 w[LM_GEMM_NV]) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    __m512 b = _mm512_set1_ps(x[(size_t)i * ldx]);
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
      acc[i][j] = _mm512_fmadd_ps(b, w[j], acc[i][j]);
  }
}

/* One half (odd) of 16-bit word u of NV panels, widened, into the rows'
 * k = 2u + odd. */
LM_AVX512_INLINE void lm_gemm_half(__m512 acc[LM_GEMM_MR][LM_GEMM_NV], int DT, int MR, int NV,
                                   const struct lm_tile *t, size_t u, int odd) {
  __m512 e[LM_GEMM_NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; j++)
    e[j] = lm_gemm_widen(DT, t->w + (size_t)j * t->ldp + u * 16, odd);
  lm_gemm_fma(acc, MR, NV, t->x + 2 * u + (size_t)odd, t->ldx, e);
}

/* MR x-rows by NV panels by FMAs; DT, MR and NV are constants at every call
 * site, so the accumulators live in registers. */
LM_AVX512_TARGET static inline __attribute__((always_inline)) void
lm_gemm_kernel(int DT, int MR, int NV, const struct lm_tile *t) {
  __m512 acc[LM_GEMM_MR][LM_GEMM_NV], e[LM_GEMM_NV];
  const float *x = t->x;
  const uint32_t *w = t->w;
  size_t ldp = t->ldp, pairs = (size_t)t->k / 2;
  lm_gemm_zero(acc, MR, NV);
  if (DT == LM_DTYPE_F32) {
    for (size_t u = 0; u < t->words; u++) {
      lm_gemm_prefetch(t, u, NV);
#pragma GCC unroll 4
      for (int j = 0; j < NV; j++)
        e[j] = _mm512_load_ps((const float *)w + (size_t)j * ldp + u * 16);
      lm_gemm_fma(acc, MR, NV, x + u, t->ldx, e);
    }
    lm_gemm_store(acc, MR, NV, t);
    return;
  }
  /* the odd halves are widened after the even ones' FMAs, so 8 x 3
   * accumulators and 3 W vectors fit the 32 registers */
  for (size_t u = 0; u < pairs; u++) {
    lm_gemm_prefetch(t, u, NV);
    lm_gemm_half(acc, DT, MR, NV, t, u, 0);
    lm_gemm_half(acc, DT, MR, NV, t, u, 1);
  }
  if (t->k & 1) lm_gemm_half(acc, DT, MR, NV, t, pairs, 0); /* an odd K's last word: its even k */
  lm_gemm_store(acc, MR, NV, t);
}

/* The same loop by vdpbf16ps, x prepared as bf16 pairs (zero past K, as W
 * is, so an odd K's last pair adds 0 x 0). */
LM_BF16DOT_TARGET static inline __attribute__((always_inline)) void
lm_gemm_kernel_dot(int MR, int NV, const struct lm_tile *t) {
  __m512 acc[LM_GEMM_MR][LM_GEMM_NV];
  lm_gemm_zero(acc, MR, NV);
  for (size_t u = 0; u < t->words; u++) {
    __m512i wv[LM_GEMM_NV];
    lm_gemm_prefetch(t, u, NV);
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
      wv[j] = _mm512_load_si512(t->w + (size_t)j * t->ldp + u * 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      __m512i b = _mm512_set1_epi32((int)t->xw[(size_t)i * t->ldx + u]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; j++)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)b, (__m512bh)wv[j]);
    }
  }
  lm_gemm_store(acc, MR, NV, t);
}

typedef void (*lm_tile_fn)(const struct lm_tile *t);

/* Kernel "dtypes": the FMA kernel per stored dtype (LM_DTYPE_F32 = 0,
 * F16 = 1, BF16 = 2), and LM_TILE_DOT. Up to 4 rows take up to 4 panels,
 * up to 8 rows up to 3: at most 24 accumulators next to the W vectors. */
#define LM_TILE_TARGET_0 LM_AVX512_TARGET
#define LM_TILE_TARGET_1 LM_AVX512_TARGET
#define LM_TILE_TARGET_2 LM_AVX512_TARGET
#define LM_TILE_TARGET_3 LM_BF16DOT_TARGET
#define LM_TILE_KERNEL(DT, MR, NV, t)                                                              \
  ((DT) == LM_TILE_DOT ? lm_gemm_kernel_dot(MR, NV, t) : lm_gemm_kernel(DT, MR, NV, t))
#define LM_DEF_TILE(DT, MR, NV)                                                                    \
  LM_TILE_TARGET_##DT static void lm_tile_##DT##_##MR##_##NV(const struct lm_tile *t) {            \
    LM_TILE_KERNEL(DT, MR, NV, t);                                                                 \
  }
#define LM_DEF_TILES_NV3(DT, MR)                                                                   \
  LM_DEF_TILE(DT, MR, 1) LM_DEF_TILE(DT, MR, 2) LM_DEF_TILE(DT, MR, 3)
#define LM_DEF_TILES_NV4(DT, MR) LM_DEF_TILES_NV3(DT, MR) LM_DEF_TILE(DT, MR, 4)
#define LM_DEF_TILES(DT)                                                                           \
  LM_DEF_TILES_NV4(DT, 1)                                                                          \
  LM_DEF_TILES_NV4(DT, 2)                                                                          \
  LM_DEF_TILES_NV4(DT, 3)                                                                          \
  LM_DEF_TILES_NV4(DT, 4)                                                                          \
  LM_DEF_TILES_NV3(DT, 5) LM_DEF_TILES_NV3(DT, 6) LM_DEF_TILES_NV3(DT, 7) LM_DEF_TILES_NV3(DT, 8)
#define LM_ROW_NV3(DT, MR)                                                                         \
  { lm_tile_##DT##_##MR##_1, lm_tile_##DT##_##MR##_2, lm_tile_##DT##_##MR##_3, NULL }
#define LM_ROW_NV4(DT, MR)                                                                         \
  {                                                                                                \
    lm_tile_##DT##_##MR##_1, lm_tile_##DT##_##MR##_2, lm_tile_##DT##_##MR##_3,                     \
        lm_tile_##DT##_##MR##_4                                                                    \
  }
#define LM_TILE_TABLE(DT)                                                                          \
  {                                                                                                \
    LM_ROW_NV4(DT, 1), LM_ROW_NV4(DT, 2), LM_ROW_NV4(DT, 3), LM_ROW_NV4(DT, 4), LM_ROW_NV3(DT, 5), \
        LM_ROW_NV3(DT, 6), LM_ROW_NV3(DT, 7), LM_ROW_NV3(DT, 8)                                    \
  }

LM_DEF_TILES(0)
LM_DEF_TILES(1)
LM_DEF_TILES(2)
LM_DEF_TILES(3)

static const lm_tile_fn lm_tiles[4][LM_GEMM_MR][LM_GEMM_NV] = {LM_TILE_TABLE(0), LM_TILE_TABLE(1),
                                                               LM_TILE_TABLE(2), LM_TILE_TABLE(3)};

/* ---- jobs --------------------------------------------------------------- */

struct lm_gemm_job {
  float *y;           /* [M, N] */
  const float *x;     /* [M, K] */
  const uint32_t *xw; /* dot: [M, xw_ld] x rounded to bf16 pairs */
  size_t xw_ld;
  const uint32_t *packed; /* [ceil(N / 16), words, 16], or NULL */
  const void *w;          /* [N, K] as stored */
  uint32_t *scratch;      /* per thread [LM_GEMM_NV, words, 16] where not packed */
  enum lm_dtype dt;
  const struct lm_tensor *bias;
  int m, n, k;
  int avx512;
  int dot;                              /* bf16 weights by dot products (x as bf16 pairs) */
  int amx;                              /* ... by AMX tiles */
  int64_t unit;                         /* panels in a group */
  int64_t start[LM_GEMM_ITEMS_MAX + 1]; /* item i: groups start[i] .. start[i + 1] */
};

/* Row m of x rounded to bf16 pairs, zero past K. */
LM_BF16DOT_TARGET static void lm_gemm_prep_item(void *argp, int64_t m, int tid) {
  struct lm_gemm_job *j = argp;
  const float *x = j->x + (size_t)m * j->k;
  uint32_t *dst = (uint32_t *)j->xw + (size_t)m * j->xw_ld;
  (void)tid;
  for (int c = 0; c < j->k; c += 32) {
    int n = j->k - c < 32 ? j->k - c : 32;
    __mmask16 lo = lm_cpu_lanes(n), hi = lm_cpu_lanes(n - 16);
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + c + 16),
                                     _mm512_maskz_loadu_ps(lo, x + c));
    _mm512_storeu_si512(dst + c / 2, (__m512i)v);
  }
}

/* Panels a micro-kernel takes for a block of rows (up to LM_GEMM_MB): 4
 * where its tiles have up to 4 rows, else 3. */
static int lm_gemm_nv_max(int rows) {
  int tiles;
  if (rows > LM_GEMM_MB) rows = LM_GEMM_MB;
  tiles = (rows + LM_GEMM_MR - 1) / LM_GEMM_MR;
  return (rows + tiles - 1) / tiles <= 4 ? 4 : 3;
}

/* Sets up the group of np panels from p: their bias (0 past N) into bias,
 * and their W into scratch where it is not packed. Returns the columns of
 * y they hold. */
static int lm_gemm_group(const struct lm_gemm_job *j, int64_t p, int np, uint32_t *scratch,
                         float *bias) {
  int ncols = j->n - 16 * (int)p < 16 * np ? j->n - 16 * (int)p : 16 * np;
  for (int c = 0; c < 16 * np; c++)
    bias[c] = j->bias && c < ncols
                  ? lm_cpu_elem(j->bias->data, j->bias->dtype, (size_t)(16 * p + c))
                  : 0.0f;
  if (!j->packed) lm_gemm_pack(scratch, j->w, j->dt, j->n, j->k, p, np);
  return ncols;
}

static void lm_gemm_avx512_range(const struct lm_gemm_job *j, int64_t p0, int64_t p1, int tid) {
  size_t words = lm_gemm_words(j->k, j->dt), ldp = words * 16;
  uint32_t *scratch = j->packed ? NULL : j->scratch + (size_t)tid * LM_GEMM_NV * ldp;
  int kern = j->dot ? LM_TILE_DOT : (int)j->dt;
  for (int mb = 0; mb < j->m; mb += LM_GEMM_MB) {
    int rows = j->m - mb < LM_GEMM_MB ? j->m - mb : LM_GEMM_MB;
    int tiles = (rows + LM_GEMM_MR - 1) / LM_GEMM_MR, nv_max = lm_gemm_nv_max(rows);
    for (int64_t p = p0; p < p1; p += nv_max) {
      int nv = (int)(p1 - p < nv_max ? p1 - p : nv_max);
      const uint32_t *w = j->packed ? j->packed + (size_t)p * ldp : scratch;
      float bias[16 * LM_GEMM_NV];
      int ncols = lm_gemm_group(j, p, nv, scratch, bias);
      /* the panels of the group after this one, whose loads tiles 1 ..
       * tiles - 1 share */
      int next_nv =
          j->packed && p + nv < p1 ? (int)(p1 - p - nv < nv_max ? p1 - p - nv : nv_max) : 0;
      /* tiles of near-equal rows, so 33 rows run as 7 + 7 + 7 + 6 + 6 */
      for (int t = 0, m = mb; t < tiles; t++) {
        int mr = rows / tiles + (t < rows % tiles);
        unsigned next_panels = 0;
        for (int b = 0; t > 0 && b < next_nv; b++)
          if (b % (tiles - 1) == t - 1) next_panels |= 1u << b;
        struct lm_tile tile = {.x = j->x + (size_t)m * j->k,
                               .xw = j->xw ? j->xw + (size_t)m * j->xw_ld : NULL,
                               .ldx = j->dot ? j->xw_ld : (size_t)j->k,
                               .w = w,
                               .ldp = ldp,
                               .next = w + (size_t)nv * ldp,
                               .next_panels = next_panels,
                               .k = j->k,
                               .words = words,
                               .y = j->y + (size_t)m * j->n + (size_t)p * 16,
                               .ldy = (size_t)j->n,
                               .bias = bias,
                               .ncols = ncols};
        lm_tiles[kern][mr - 1][nv - 1](&tile);
        m += mr;
      }
    }
  }
}

/* ---- AMX tiles ---------------------------------------------------------- */

/* Tiles: C accumulators 0-3, A (x rows) 4 and 5, B (panels) 6 and 7. A
 * kernel takes MA row tiles (of r0 and r1 rows) by NB panels, MA x NB <= 4:
 * C tile a * NB + b is A tile a times panel b. */
struct lm_amx_tile {
  const uint32_t *xw; /* first x row, bf16 pairs, ldx words apart */
  size_t ldx;
  const uint32_t *w; /* first panel, ldp words apart */
  size_t ldp;
  size_t words; /* K / 2, a multiple of 16 */
  float *y;     /* y[m0, 16 p0], ldy floats from one row to the next */
  size_t ldy;
  const float *bias; /* [16 * NB] */
  int ncols;         /* columns of y the panels hold */
  int rows[2];       /* rows of each A tile */
};

LM_AMX_TARGET static void lm_amx_configure(struct lm_amx_cfg *have, int ma, int nb, int r0,
                                           int r1) {
  struct lm_amx_cfg c;
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < ma * nb; t++)
    c.rows[t] = (uint8_t)(t / nb ? r1 : r0);
  c.rows[4] = (uint8_t)r0;
  c.rows[5] = (uint8_t)(ma > 1 ? r1 : 0);
  c.rows[6] = c.rows[7] = 16;
  for (int t = 0; t < 8; t++)
    c.colsb[t] = c.rows[t] ? 64 : 0;
  lm_amx_load_cfg(have, &c);
}

/* C tile c (rows of A tile c / nb) + bias into y. */
LM_AMX_TARGET static void lm_amx_store(const struct lm_amx_tile *t, const float *acc, int c,
                                       int nb) {
  int a = c / nb, b = c % nb;
  __mmask16 mask = lm_cpu_lanes(t->ncols - 16 * b);
  __m512 bias = _mm512_loadu_ps(t->bias + 16 * b);
  float *y = t->y + (size_t)(16 * a) * t->ldy + 16 * b;
  for (int i = 0; i < t->rows[a]; i++)
    _mm512_mask_storeu_ps(y + (size_t)i * t->ldy, mask,
                          _mm512_add_ps(_mm512_loadu_ps(acc + 16 * i), bias));
}

/* B tile b of k step u into tile register 6 + b % 2, its lines of k step u
 * + LM_AMX_PF pulled into L1 (the first row pair streams them from DRAM;
 * for the pairs after it they are in cache). b is a constant at every call
 * site. */
LM_AMX_TARGET static inline __attribute__((always_inline)) void
lm_amx_load_b(const struct lm_amx_tile *t, int b, size_t u) {
  const uint32_t *src = t->w + (size_t)b * t->ldp + u * 16;
  for (int l = 0; l < 16; l++)
    _mm_prefetch((const char *)(src + (LM_AMX_PF * 16 + l) * 16), _MM_HINT_T0);
  if (b % 2)
    _tile_loadd(7, src, 64);
  else
    _tile_loadd(6, src, 64);
}

/* C tile c += A tile a times B tile b. tdpbf16ps spells its tile numbers
 * into the instruction, so each pair a kernel uses is written out; the
 * arguments are constants at every call site. */
LM_AMX_TARGET static inline __attribute__((always_inline)) void lm_amx_dp(int c, int a, int b) {
  switch (c * 100 + a * 10 + b) {
  case 46: _tile_dpbf16ps(0, 4, 6); break;
  case 147: _tile_dpbf16ps(1, 4, 7); break;
  case 156: _tile_dpbf16ps(1, 5, 6); break;
  case 246: _tile_dpbf16ps(2, 4, 6); break;
  case 256: _tile_dpbf16ps(2, 5, 6); break;
  case 347: _tile_dpbf16ps(3, 4, 7); break;
  case 357: _tile_dpbf16ps(3, 5, 7); break;
  default: __builtin_unreachable();
  }
}

LM_AMX_TARGET static inline __attribute__((always_inline)) void
lm_amx_kernel(int MA, int NB, const struct lm_amx_tile *t) {
  float acc[16 * 16] __attribute__((aligned(64)));
  size_t sa = t->ldx * sizeof(uint32_t);
  _tile_zero(0);
  if (MA * NB > 1) _tile_zero(1);
  if (MA * NB > 2) _tile_zero(2);
  if (MA * NB > 3) _tile_zero(3);
  for (size_t u = 0; u < t->words; u += 16) {
    _tile_loadd(4, t->xw + u, sa);
    if (MA > 1) _tile_loadd(5, t->xw + 16 * t->ldx + u, sa);
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
      lm_amx_load_b(t, b, u);
      lm_amx_dp(b, 4, 6 + b % 2);
      if (MA > 1) lm_amx_dp(NB + b, 5, 6 + b % 2);
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < MA * NB; c++) {
    if (c == 0) _tile_stored(0, acc, 64);
    if (c == 1) _tile_stored(1, acc, 64);
    if (c == 2) _tile_stored(2, acc, 64);
    if (c == 3) _tile_stored(3, acc, 64);
    lm_amx_store(t, acc, c, NB);
  }
}

#define LM_DEF_AMX(MA, NB)                                                                         \
  LM_AMX_TARGET static void lm_amx_##MA##_##NB(const struct lm_amx_tile *t) {                      \
    lm_amx_kernel(MA, NB, t);                                                                      \
  }
LM_DEF_AMX(1, 1)
LM_DEF_AMX(1, 2)
LM_DEF_AMX(1, 3)
LM_DEF_AMX(1, 4)
LM_DEF_AMX(2, 1)
LM_DEF_AMX(2, 2)

typedef void (*lm_amx_fn)(const struct lm_amx_tile *t);
static const lm_amx_fn lm_amx_kernels[2][4] = {{lm_amx_1_1, lm_amx_1_2, lm_amx_1_3, lm_amx_1_4},
                                               {lm_amx_2_1, lm_amx_2_2, NULL, NULL}};

/* Panels a group takes: 4 for one row tile, 2 for pairs. */
static int lm_amx_nb_max(int rows) {
  return rows <= 16 ? 4 : 2;
}

LM_AMX_TARGET static void lm_gemm_amx_range(const struct lm_gemm_job *j, int64_t p0, int64_t p1,
                                            int tid) {
  size_t words = lm_gemm_words(j->k, j->dt), ldp = words * 16;
  uint32_t *scratch = j->packed ? NULL : j->scratch + (size_t)tid * LM_GEMM_NV * ldp;
  struct lm_amx_cfg have;
  memset(&have, 0, sizeof(have));
  for (int mb = 0; mb < j->m; mb += LM_GEMM_MB) {
    int rows = j->m - mb < LM_GEMM_MB ? j->m - mb : LM_GEMM_MB, nb_max = lm_amx_nb_max(rows);
    for (int64_t p = p0; p < p1; p += nb_max) {
      int nb = (int)(p1 - p < nb_max ? p1 - p : nb_max);
      float bias[16 * LM_GEMM_NV];
      int ncols = lm_gemm_group(j, p, nb, scratch, bias);
      for (int m = mb; m < mb + rows; m += 32) {
        int left = mb + rows - m, r0 = left < 16 ? left : 16, r1 = left - r0 < 16 ? left - r0 : 16;
        int ma = r1 > 0 ? 2 : 1;
        struct lm_amx_tile tile = {.xw = j->xw + (size_t)m * j->xw_ld,
                                   .ldx = j->xw_ld,
                                   .w = j->packed ? j->packed + (size_t)p * ldp : scratch,
                                   .ldp = ldp,
                                   .words = words,
                                   .y = j->y + (size_t)m * j->n + (size_t)p * 16,
                                   .ldy = (size_t)j->n,
                                   .bias = bias,
                                   .ncols = ncols,
                                   .rows = {r0, r1}};
        lm_amx_configure(&have, ma, nb, r0, r1);
        lm_amx_kernels[ma - 1][nb - 1](&tile);
      }
    }
  }
  /* tiles back in their init state: a context switch then saves none */
  if (have.palette) _tile_release();
}

/* ---- portable fallback ------------------------------------------------- */

/* Sequential over k per element: batch invariant by construction. */
static void lm_gemm_scalar_range(const struct lm_gemm_job *j, int64_t n0, int64_t n1) {
  size_t esz = lm_dtype_size(j->dt);
  for (int64_t n = n0; n < n1; n++) {
    const char *w = (const char *)j->w + (size_t)n * (size_t)j->k * esz;
    float bias = j->bias ? lm_cpu_elem(j->bias->data, j->bias->dtype, (size_t)n) : 0.0f;
    for (int64_t m = 0; m < j->m; m++) {
      const float *x = j->x + (size_t)m * j->k;
      float acc = 0.0f;
      for (int k = 0; k < j->k; k++)
        acc += x[k] * lm_cpu_elem(w, j->dt, (size_t)k);
      j->y[(size_t)m * j->n + n] = acc + bias;
    }
  }
}

/* One contiguous range of panels (16 columns each); which thread takes it
 * changes nothing in the result. */
static void lm_gemm_item(void *argp, int64_t item, int tid) {
  const struct lm_gemm_job *j = argp;
  int64_t panels = ((int64_t)j->n + 15) / 16;
  int64_t p0 = j->start[item] * j->unit, p1 = j->start[item + 1] * j->unit;
  if (p1 > panels) p1 = panels;
  if (j->amx)
    lm_gemm_amx_range(j, p0, p1, tid);
  else if (j->avx512)
    lm_gemm_avx512_range(j, p0, p1, tid);
  else
    lm_gemm_scalar_range(j, 16 * p0, 16 * p1 < j->n ? 16 * p1 : j->n);
}

/* Work items of whole groups of panels (as many as a micro-kernel takes,
 * or 12, a multiple of every group size, where there are many), sized
 * guided: each takes 1 / (2 x threads) of the groups left, at least one.
 * The large items come first, and the last ones are single groups, so the
 * threads finish within a group of each other, and a thread whose core is
 * taken by another process leaves its share to the others. */
static int64_t lm_gemm_items(struct lm_gemm_job *j, int n_threads) {
  int64_t panels = ((int64_t)j->n + 15) / 16, n = 0;
  int group = j->amx ? lm_amx_nb_max(j->m) : lm_gemm_nv_max(j->m);
  j->unit = panels >= (int64_t)LM_GEMM_CHUNK * 8 * n_threads ? LM_GEMM_CHUNK : group;
  j->start[0] = 0;
  for (int64_t left = (panels + j->unit - 1) / j->unit; left > 0; n++) {
    int64_t size = n + 1 == LM_GEMM_ITEMS_MAX ? left : (left + 2 * n_threads - 1) / (2 * n_threads);
    j->start[n + 1] = j->start[n] + size;
    left -= size;
  }
  return n;
}

static struct lm_gemm_job lm_gemm_job_of(const struct lm_cpu *cpu, void *y, const void *x,
                                         const struct lm_tensor *w, const struct lm_tensor *bias,
                                         int rows) {
  int avx512 = cpu->avx512 && lm_gemm_packable((int)w->shape[1], w->dtype);
  int dot = avx512 && cpu->bf16_dot && w->dtype == LM_DTYPE_BF16;
  return (struct lm_gemm_job){.y = y,
                              .x = x,
                              .packed = cpu->avx512 ? w->dev : NULL,
                              .w = w->data,
                              .dt = w->dtype,
                              .bias = bias,
                              .m = rows,
                              .n = (int)w->shape[0],
                              .k = (int)w->shape[1],
                              .avx512 = avx512,
                              .dot = dot,
                              .amx = dot && cpu->amx && w->shape[1] % 32 == 0};
}

/* Scratch for what the jobs need besides y: x in bf16 pairs for the dot
 * kernel, per-thread panels for W that is not packed. */
static int lm_gemm_scratch(struct lm_cpu *cpu, struct lm_gemm_job *jobs, int n, int rows) {
  size_t xw_ld = (((size_t)jobs[0].k + 31) & ~(size_t)31) / 2 + 16, panel_words = 0;
  for (int i = 0; i < n; i++)
    if (!jobs[i].packed) {
      size_t words = LM_GEMM_NV * 16 * lm_gemm_words(jobs[i].k, jobs[i].dt);
      if (words > panel_words) panel_words = words;
    }
  if (panel_words && lm_cpu_grow(&cpu->panels, &cpu->panels_bytes,
                                 panel_words * sizeof(uint32_t) * (size_t)cpu->n_threads) != 0)
    return LM_ENOMEM;
  if (jobs[0].dot &&
      lm_cpu_grow(&cpu->xprep, &cpu->xprep_bytes, xw_ld * sizeof(uint32_t) * (size_t)rows) != 0)
    return LM_ENOMEM;
  for (int i = 0; i < n; i++) {
    jobs[i].scratch = cpu->panels;
    jobs[i].xw = jobs[i].dot ? cpu->xprep : NULL;
    jobs[i].xw_ld = xw_ld;
  }
  if (jobs[0].dot) {
    if (rows <= LM_DOT_PREP_MB)
      for (int m = 0; m < rows; m++)
        lm_gemm_prep_item(&jobs[0], m, 0);
    else
      lm_pool_for(cpu->pool, rows, lm_gemm_prep_item, &jobs[0]);
  }
  return LM_OK;
}

/* What a matmul gives when the machine has no memory for its scratch: NaN,
 * which the engine reports as a failed step rather than a wrong token. */
static void lm_gemm_fail(float *y, int rows, int n) {
  for (size_t i = 0; i < (size_t)rows * (size_t)n; i++)
    y[i] = NAN;
}

void lm_cpu_matmul(void *st, void *y, const void *x, const struct lm_tensor *w,
                   const struct lm_tensor *bias, int rows) {
  struct lm_cpu *cpu = st;
  struct lm_gemm_job j = lm_gemm_job_of(cpu, y, x, w, bias, rows);
  if (rows <= 0 || j.n <= 0) return;
  if (j.avx512 && lm_gemm_scratch(cpu, &j, 1, rows) != 0) {
    lm_gemm_fail(y, rows, j.n);
    return;
  }
  lm_pool_for(cpu->pool, lm_gemm_items(&j, cpu->n_threads), lm_gemm_item, &j);
}

/* Several matrices of the same input (q, k and v; gate and up): every
 * matrix's panel ranges are items of one parallel loop, so a decode step
 * pays one dispatch and one barrier for the group. Each output is computed
 * exactly as lm_cpu_matmul computes it. */
struct lm_gemm_group {
  struct lm_gemm_job jobs[LM_CPU_MATMUL_N_MAX];
  int64_t first[LM_CPU_MATMUL_N_MAX + 1]; /* first item of each job */
  int n;
};

static void lm_gemm_group_item(void *argp, int64_t item, int tid) {
  struct lm_gemm_group *g = argp;
  int i = 0;
  while (i + 1 < g->n && g->first[i + 1] <= item)
    i++;
  lm_gemm_item(&g->jobs[i], item - g->first[i], tid);
}

void lm_cpu_matmul_n(void *st, void *const *ys, const void *x, const struct lm_tensor *const *ws,
                     const struct lm_tensor *const *biases, int n, int rows) {
  struct lm_cpu *cpu = st;
  struct lm_gemm_group g = {.n = n};
  int same = cpu->avx512 && n > 1 && n <= LM_CPU_MATMUL_N_MAX && rows > 0;
  for (int i = 0; same && i < n; i++) {
    same =
        ws[i]->dtype == ws[0]->dtype && ws[i]->shape[1] == ws[0]->shape[1] && ws[i]->shape[0] > 0;
    g.jobs[i] = lm_gemm_job_of(cpu, ys[i], x, ws[i], biases[i], rows);
    g.first[i + 1] = g.first[i] + lm_gemm_items(&g.jobs[i], cpu->n_threads);
  }
  if (!same || lm_gemm_scratch(cpu, g.jobs, n, rows) != 0) {
    for (int i = 0; i < n; i++)
      lm_cpu_matmul(st, ys[i], x, ws[i], biases[i], rows);
    return;
  }
  lm_pool_for(cpu->pool, g.first[n], lm_gemm_group_item, &g);
}

/* ---- packing ------------------------------------------------------------ */

struct lm_pack_job {
  uint32_t *dst;
  const struct lm_tensor *w;
};

static void lm_pack_item(void *argp, int64_t item, int tid) {
  const struct lm_pack_job *j = argp;
  int n = (int)j->w->shape[0], k = (int)j->w->shape[1];
  int64_t panels = ((int64_t)n + 15) / 16, p0 = item * LM_GEMM_CHUNK;
  int np = (int)(panels - p0 < LM_GEMM_CHUNK ? panels - p0 : LM_GEMM_CHUNK);
  (void)tid;
  lm_gemm_pack(j->dst + (size_t)p0 * lm_gemm_words(k, j->w->dtype) * 16, j->w->data, j->w->dtype, n,
               k, p0, np);
}

int lm_cpu_pack(struct lm_cpu *cpu, void *dst, const struct lm_tensor *w) {
  if (!cpu->avx512 || w->n_dims != 2 || !lm_gemm_packable((int)w->shape[1], w->dtype))
    return LM_EUNSUP;
  struct lm_pack_job j = {.dst = dst, .w = w};
  int64_t panels = (w->shape[0] + 15) / 16;
  lm_pool_for(cpu->pool, (panels + LM_GEMM_CHUNK - 1) / LM_GEMM_CHUNK, lm_pack_item, &j);
  return LM_OK;
}
