/* cpu_gemm.c - y: [M, N] = x: [M, K] @ W^T (W: [N, K] bf16/f16/f32) + bias.
 *
 * Batch invariance: every y[m, n] is a dot product accumulated in one
 * 16-lane f32 vector over k in chunks of 32 (two FMAs per chunk, in a fixed
 * lane assignment), then reduced by one fixed tree (lm_hsum16). Tiling over
 * M and N only decides which accumulators live in registers together, never
 * the order of any element's additions, so M = 1 and M = 512 give the same
 * bits for a row, and so does any split of N across threads.
 *
 * bf16 weights on a CPU with AVX512_BF16 (the usual case) are multiplied as
 * they are stored, by dot products: x is rounded once per call to bf16
 * (nearest even), and each chunk of 32 k is one vdpbf16ps per (row,
 * column) pair, lane i taking k = 2i and 2i + 1 of the chunk. This halves
 * the instructions per multiply-add and the bytes of x the kernel reads;
 * the price is x's rounding to bf16, which a bf16 checkpoint's own
 * framework (activations in bf16) pays as well.
 *
 * Without AVX512_BF16 (or with LM_CPU_ISA=avx512), bf16 weights are widened
 * without a shuffle: in a 32-bit lane holding two bf16 values, (lane << 16)
 * is the even element and (lane & 0xffff0000) the odd one, both exactly;
 * x stays f32, laid out per chunk of 32 as [16 even k, 16 odd k]. f16 and
 * f32 weights always take this path with x in natural order. Prepared x is
 * zero padded to a multiple of 32 so the kernels never mask it.
 *
 * Widened panels: where more than one tile of x rows meets the same W rows
 * (a batch of decodes, a prefill chunk), widening W inside the tile would
 * repeat the conversion for every tile, and on CPUs whose shifts and masks
 * share ports with the FMAs that halves the kernel's speed. Instead each
 * thread widens a tile's W rows once into an f32 panel laid out like
 * prepared x (zero padded) and runs the f32 kernel on it: the same
 * products, added in the same order, so the bits equal the in-tile
 * widening that a single row (M = 1) uses.
 *
 * Which bf16 kernel runs is fixed per CPU, not measured, so a process
 * computes the same bits every run: dot products where vdpbf16ps does
 * twice the FMA's multiply-adds at its rate (AMD Zen 4 and later),
 * widening and FMAs where it is slower than the FMA (Intel Sapphire and
 * Emerald Rapids: backend_bench's probes read 158-166 against 462 GFLOP/s
 * on 2 cores). */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu_internal.h"

#define LM_GEMM_MB               64 /* x rows kept in L2 while a thread walks its W rows */
#define LM_GEMM_SERIAL_PREP_ROWS 4

static size_t lm_kpad(int k) {
  return ((size_t)k + 31) & ~(size_t)31;
}

/* Elements from one prepared x row (or widened W row) to the next: Kpad
 * and one more chunk, so that rows a power of two apart (K = 1024, 2048)
 * do not all fall in the same L1 sets (a tile reads 10 rows at once). */
static size_t lm_ld(int k) {
  return lm_kpad(k) + 32;
}

/* Prepared x row for the dot-product kernels: [Kpad] bf16. */
LM_BF16DOT_TARGET static void lm_gemm_prep_row_bf16(uint16_t *dst, const float *x, int k) {
  for (int c = 0; c < k; c += 32) {
    int n = k - c < 32 ? k - c : 32;
    __mmask16 lo = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
    __mmask16 hi = (__mmask16)(n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0);
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + c + 16),
                                     _mm512_maskz_loadu_ps(lo, x + c));
    _mm512_storeu_si512(dst + c, (__m512i)v);
  }
}

/* Prepared x row: [Kpad], chunked as described above. */
LM_AVX512_TARGET static void lm_gemm_prep_row(float *dst, const float *x, int k, enum lm_dtype dt) {
  size_t kp = lm_kpad(k);
  if (dt != LM_DTYPE_BF16) {
    memcpy(dst, x, (size_t)k * sizeof(float));
    memset(dst + k, 0, (kp - (size_t)k) * sizeof(float));
    return;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (size_t c = 0; c < kp; c += 32) {
    size_t n = (size_t)k - c < 32 ? (size_t)k - c : 32;
    __mmask16 lo = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
    __mmask16 hi = (__mmask16)(n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0);
    __m512 a = _mm512_maskz_loadu_ps(lo, x + c), b = _mm512_maskz_loadu_ps(hi, x + c + 16);
    _mm512_storeu_ps(dst + c, _mm512_permutex2var_ps(a, even, b));
    _mm512_storeu_ps(dst + c + 16, _mm512_permutex2var_ps(a, odd, b));
  }
}

struct lm_gemm_job {
  float *y;       /* [M, N] */
  const float *x; /* [M, K] */
  const void *xp; /* [M, lm_ld(K)] prepared: f32, or bf16 when dot */
  const void *w;  /* [N, K] */
  float *panels;  /* per thread [8, lm_ld(K)] widened W rows, or NULL */
  enum lm_dtype dt;
  const struct lm_tensor *bias;
  int m, n, k;
  int avx512;
  int dot;       /* bf16 weights by dot products */
  int64_t chunk; /* columns (W rows) per work item, a multiple of 16 */
};

static void lm_gemm_prep_item(void *argp, int64_t m, int tid) {
  struct lm_gemm_job *j = argp;
  (void)tid;
  if (j->dot)
    lm_gemm_prep_row_bf16((uint16_t *)j->xp + (size_t)m * lm_ld(j->k), j->x + (size_t)m * j->k,
                          j->k);
  else
    lm_gemm_prep_row((float *)j->xp + (size_t)m * lm_ld(j->k), j->x + (size_t)m * j->k, j->k,
                     j->dt);
}

/* ---- AVX-512 ---------------------------------------------------------- */

/* The two f32 vectors of W chunk c of one row; mask covers the valid
 * elements of a partial last chunk (all ones otherwise). */
LM_AVX512_TARGET static inline __attribute__((always_inline)) void
lm_gemm_load_w(int dt, const void *row, size_t c, __mmask32 mask, int partial, __m512 *w0,
               __m512 *w1) {
  if (dt == LM_DTYPE_BF16) {
    const uint16_t *p = (const uint16_t *)row + c;
    __m512i r = partial ? _mm512_maskz_loadu_epi16(mask, p) : _mm512_loadu_si512(p);
    *w0 = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));
    *w1 = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u)));
  } else if (dt == LM_DTYPE_F16) {
    const uint16_t *p = (const uint16_t *)row + c;
    __m256i r0 = partial ? _mm256_maskz_loadu_epi16((__mmask16)mask, p)
                         : _mm256_loadu_si256((const __m256i *)p);
    __m256i r1 = partial ? _mm256_maskz_loadu_epi16((__mmask16)(mask >> 16), p + 16)
                         : _mm256_loadu_si256((const __m256i *)(p + 16));
    *w0 = _mm512_cvtph_ps(r0);
    *w1 = _mm512_cvtph_ps(r1);
  } else {
    const float *p = (const float *)row + c;
    *w0 = partial ? _mm512_maskz_loadu_ps((__mmask16)mask, p) : _mm512_loadu_ps(p);
    *w1 =
        partial ? _mm512_maskz_loadu_ps((__mmask16)(mask >> 16), p + 16) : _mm512_loadu_ps(p + 16);
  }
}

struct lm_tile {
  const void *xp; /* first prepared x row of the tile */
  size_t ldx;     /* elements from one x row to the next */
  const char *w;  /* first W row of the tile */
  size_t ldw;     /* bytes per W row */
  float *y;       /* y[m0, n0] */
  size_t ldy;     /* N */
  int k;
};

/* A tile's MR x NR accumulators: cleared, and reduced into out[i * 8 + j]. */
LM_AVX512_INLINE void lm_gemm_acc_zero(__m512 acc[4][8], int MR, int NR) {
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++)
      acc[i][j] = _mm512_setzero_ps();
}

LM_AVX512_INLINE void lm_gemm_acc_out(__m512 acc[4][8], int MR, int NR, float *out) {
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++)
      out[i * 8 + j] = lm_hsum16(acc[i][j]);
}

/* MR x-rows by NR W-rows of accumulators; MR, NR and DT are constants at
 * every call site, so the arrays below live in registers. */
LM_AVX512_TARGET static inline __attribute__((always_inline)) void
lm_gemm_tile(int DT, int MR, int NR, const struct lm_tile *t, float *out) {
  __m512 acc[4][8];
  const float *xp = t->xp;
  const size_t esz = DT == LM_DTYPE_F32 ? 4 : 2;
  size_t kfull = (size_t)t->k & ~(size_t)31;
  int rem = t->k & 31;
  lm_gemm_acc_zero(acc, MR, NR);
  size_t c0 = 0;
  if (MR == 1) {
    /* Decode is bound by how many cache misses are in flight: read 4
     * consecutive chunks (256 bytes of bf16) of a row before moving to the
     * next row, and pull the same span of the next tile's rows into L2.
     * Each accumulator still takes the chunks in k order, so the sums are
     * the bits the generic loop below would give. */
    for (; c0 + 128 <= kfull; c0 += 128) {
      __m512 xa[4], xb[4];
#pragma GCC unroll 4
      for (int u = 0; u < 4; u++) {
        xa[u] = _mm512_loadu_ps(xp + c0 + 32 * (size_t)u);
        xb[u] = _mm512_loadu_ps(xp + c0 + 32 * (size_t)u + 16);
      }
#pragma GCC unroll 8
      for (int j = 0; j < NR; j++) {
        const char *next = t->w + (size_t)(j + NR) * t->ldw + c0 * esz;
        for (size_t b = 0; b < 128 * esz; b += 64)
          _mm_prefetch(next + b, _MM_HINT_T1);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
          __m512 w0, w1;
          lm_gemm_load_w(DT, t->w + (size_t)j * t->ldw, c0 + 32 * (size_t)u, (__mmask32)~0u, 0, &w0,
                         &w1);
          acc[0][j] = _mm512_fmadd_ps(xa[u], w0, acc[0][j]);
          acc[0][j] = _mm512_fmadd_ps(xb[u], w1, acc[0][j]);
        }
      }
    }
  }
  if (DT == LM_DTYPE_F32 && MR > 1 && rem == 0) {
    /* f32 W (stored so, or a widened panel): each half chunk in turn, so
     * MR x-vectors and one W vector leave room for MR x 6 accumulators;
     * every accumulator still adds its first half's product, then its
     * second's, as below */
    for (size_t c = 0; c < kfull; c += 32) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; half++) {
        __m512 xh[4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
          xh[i] = _mm512_loadu_ps(xp + (size_t)i * t->ldx + c + 16 * half);
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++) {
          __m512 w = _mm512_loadu_ps((const float *)(t->w + (size_t)j * t->ldw) + c + 16 * half);
#pragma GCC unroll 4
          for (int i = 0; i < MR; i++)
            acc[i][j] = _mm512_fmadd_ps(xh[i], w, acc[i][j]);
        }
      }
    }
    lm_gemm_acc_out(acc, MR, NR, out);
    return;
  }
  for (size_t c = c0; c <= kfull; c += 32) {
    int partial = c == kfull;
    __mmask32 mask = partial ? (__mmask32)((1ull << rem) - 1) : (__mmask32)~0u;
    __m512 x0[4], x1[4];
    if (partial && rem == 0) break;
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
      x0[i] = _mm512_loadu_ps(xp + (size_t)i * t->ldx + c);
      x1[i] = _mm512_loadu_ps(xp + (size_t)i * t->ldx + c + 16);
    }
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) {
      __m512 w0, w1;
      /* Decode streams W from DRAM and is bound by how many misses are in
       * flight: pull the next tile's rows into L2 while this tile runs
       * (past the last row this touches nothing: prefetches never fault). */
      if (MR == 1) _mm_prefetch(t->w + (size_t)(j + NR) * t->ldw + c * esz, _MM_HINT_T1);
      lm_gemm_load_w(DT, t->w + (size_t)j * t->ldw, c, mask, partial, &w0, &w1);
#pragma GCC unroll 4
      for (int i = 0; i < MR; i++)
        acc[i][j] = _mm512_fmadd_ps(x0[i], w0, acc[i][j]);
#pragma GCC unroll 4
      for (int i = 0; i < MR; i++)
        acc[i][j] = _mm512_fmadd_ps(x1[i], w1, acc[i][j]);
    }
  }
  lm_gemm_acc_out(acc, MR, NR, out);
}

/* The dot-product kernel: MR x-rows by NR bf16 W-rows, x prepared as bf16.
 * Same loop shapes as lm_gemm_tile, one vdpbf16ps per (row, column,
 * chunk); each accumulator takes the chunks in k order whatever MR and NR
 * are. */
LM_BF16DOT_TARGET static inline __attribute__((always_inline)) void
lm_gemm_tile_dot(int MR, int NR, const struct lm_tile *t, float *out) {
  __m512 acc[4][8];
  const uint16_t *xp = t->xp;
  size_t kfull = (size_t)t->k & ~(size_t)31;
  int rem = t->k & 31;
  lm_gemm_acc_zero(acc, MR, NR);
  size_t c0 = 0;
  if (MR == 1) {
    /* decode: 4 consecutive chunks of a row per visit, next tile's rows
     * pulled into L2 (see lm_gemm_tile) */
    for (; c0 + 128 <= kfull; c0 += 128) {
      __m512i xa[4];
#pragma GCC unroll 4
      for (int u = 0; u < 4; u++)
        xa[u] = _mm512_loadu_si512(xp + c0 + 32 * (size_t)u);
#pragma GCC unroll 8
      for (int j = 0; j < NR; j++) {
        const uint16_t *row = (const uint16_t *)(t->w + (size_t)j * t->ldw) + c0;
        const char *next = t->w + (size_t)(j + NR) * t->ldw + c0 * 2;
        for (size_t b = 0; b < 256; b += 64)
          _mm_prefetch(next + b, _MM_HINT_T1);
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
          acc[0][j] = _mm512_dpbf16_ps(acc[0][j], (__m512bh)xa[u],
                                       (__m512bh)_mm512_loadu_si512(row + 32 * u));
      }
    }
  }
  for (size_t c = c0; c <= kfull; c += 32) {
    int partial = c == kfull;
    __mmask32 mask = partial ? (__mmask32)((1ull << rem) - 1) : (__mmask32)~0u;
    __m512i xv[4];
    if (partial && rem == 0) break;
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
      xv[i] = _mm512_loadu_si512(xp + (size_t)i * t->ldx + c);
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) {
      const uint16_t *p = (const uint16_t *)(t->w + (size_t)j * t->ldw) + c;
      if (MR == 1) _mm_prefetch(t->w + (size_t)(j + NR) * t->ldw + c * 2, _MM_HINT_T1);
      __m512i w = partial ? _mm512_maskz_loadu_epi16(mask, p) : _mm512_loadu_si512(p);
#pragma GCC unroll 4
      for (int i = 0; i < MR; i++)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)xv[i], (__m512bh)w);
    }
  }
  lm_gemm_acc_out(acc, MR, NR, out);
}

typedef void (*lm_tile_fn)(const struct lm_tile *t, float *out);

/* Kernel "dtypes": the FMA kernel per stored dtype (LM_DTYPE_F32 = 0,
 * F16 = 1, BF16 = 2), and 3 for bf16 by dot products. */
#define LM_TILE_DOT      3
#define LM_TILE_TARGET_0 LM_AVX512_TARGET
#define LM_TILE_TARGET_1 LM_AVX512_TARGET
#define LM_TILE_TARGET_2 LM_AVX512_TARGET
#define LM_TILE_TARGET_3 LM_BF16DOT_TARGET
#define LM_TILE_KERNEL(DT, MR, NR, t, out)                                                         \
  ((DT) == LM_TILE_DOT ? lm_gemm_tile_dot(MR, NR, t, out) : lm_gemm_tile(DT, MR, NR, t, out))
#define LM_DEF_TILE(DT, MR, NR)                                                                    \
  LM_TILE_TARGET_##DT static void lm_tile_##DT##_##MR##_##NR(const struct lm_tile *t,              \
                                                             float *out) {                         \
    LM_TILE_KERNEL(DT, MR, NR, t, out);                                                            \
  }
#define LM_DEF_TILES_MR(DT, MR)                                                                    \
  LM_DEF_TILE(DT, MR, 1)                                                                           \
  LM_DEF_TILE(DT, MR, 2)                                                                           \
  LM_DEF_TILE(DT, MR, 3)                                                                           \
  LM_DEF_TILE(DT, MR, 4)                                                                           \
  LM_DEF_TILE(DT, MR, 5)                                                                           \
  LM_DEF_TILE(DT, MR, 6)                                                                           \
  LM_DEF_TILE(DT, MR, 7)                                                                           \
  LM_DEF_TILE(DT, MR, 8)
#define LM_DEF_TILES(DT)                                                                           \
  LM_DEF_TILES_MR(DT, 1) LM_DEF_TILES_MR(DT, 2) LM_DEF_TILES_MR(DT, 3) LM_DEF_TILES_MR(DT, 4)
#define LM_TILE_ROW(DT, MR)                                                                        \
  {                                                                                                \
    lm_tile_##DT##_##MR##_1, lm_tile_##DT##_##MR##_2, lm_tile_##DT##_##MR##_3,                     \
        lm_tile_##DT##_##MR##_4, lm_tile_##DT##_##MR##_5, lm_tile_##DT##_##MR##_6,                 \
        lm_tile_##DT##_##MR##_7, lm_tile_##DT##_##MR##_8                                           \
  }
#define LM_TILE_TABLE(DT)                                                                          \
  { LM_TILE_ROW(DT, 1), LM_TILE_ROW(DT, 2), LM_TILE_ROW(DT, 3), LM_TILE_ROW(DT, 4) }

LM_DEF_TILES(0)
LM_DEF_TILES(1)
LM_DEF_TILES(2)
LM_DEF_TILES(3)

static const lm_tile_fn lm_tiles[4][4][8] = {LM_TILE_TABLE(0), LM_TILE_TABLE(1), LM_TILE_TABLE(2),
                                             LM_TILE_TABLE(3)};

/* Widest NR that fits the 32 vector registers next to MR rows of x: the
 * FMA kernels hold two x vectors per row and chunk (f32 W one, a half
 * chunk at a time), the dot kernels one. */
static const int lm_tile_nr[5] = {0, 8, 8, 6, 5};
static const int lm_f32_tile_nr[5] = {0, 8, 8, 8, 6};
static const int lm_dot_tile_nr[5] = {0, 8, 8, 8, 6};

static float lm_gemm_bias(const struct lm_tensor *bias, int64_t n) {
  return bias ? lm_cpu_elem(bias->data, bias->dtype, (size_t)n) : 0.0f;
}

/* W rows [nr, K] (bf16 or f16) widened to f32 rows of Kpad, in the order
 * the FMA kernel takes them (bf16: [16 even, 16 odd] per chunk), zero
 * padded. */
LM_AVX512_TARGET static void lm_gemm_widen(float *dst, const char *w, size_t ldw, int nr, int k,
                                           enum lm_dtype dt) {
  size_t kp = lm_kpad(k);
  int rem = k & 31;
  for (int r = 0; r < nr; r++) {
    const void *row = w + (size_t)r * ldw;
    float *d = dst + (size_t)r * lm_ld(k);
    for (size_t c = 0; c < kp; c += 32) {
      int partial = c + 32 > (size_t)k;
      __mmask32 mask = partial ? (__mmask32)((1ull << rem) - 1) : (__mmask32)~0u;
      __m512 w0, w1;
      lm_gemm_load_w(dt, row, c, mask, partial, &w0, &w1);
      _mm512_store_ps(d + c, w0);
      _mm512_store_ps(d + c + 16, w1);
    }
  }
}

static void lm_gemm_avx512_range(const struct lm_gemm_job *j, int64_t n0, int64_t n1, int tid) {
  size_t esz = lm_dtype_size(j->dt), kp = lm_kpad(j->k), ld = lm_ld(j->k);
  size_t xsz = j->dot ? 2 : sizeof(float), ldy = (size_t)j->n;
  float out[4 * 8], *y = j->y;
  float *panel = j->panels ? j->panels + (size_t)tid * 8 * ld : NULL;
  for (int64_t mb = 0; mb < j->m; mb += LM_GEMM_MB) {
    int64_t mb_end = mb + LM_GEMM_MB < j->m ? mb + LM_GEMM_MB : j->m;
    int widen = panel && mb_end - mb > 4;
    /* the half-chunk f32 kernel takes whole chunks of f32 W */
    int f32_whole = widen || (j->dt == LM_DTYPE_F32 && !j->dot && (j->k & 31) == 0);
    const int *nr_table = j->dot ? lm_dot_tile_nr : f32_whole ? lm_f32_tile_nr : lm_tile_nr;
    int nr_step = nr_table[mb_end - mb < 4 ? mb_end - mb : 4];
    for (int64_t n = n0; n < n1; n += nr_step) {
      int nr = (int)(n1 - n < nr_step ? n1 - n : nr_step);
      const char *w = (const char *)j->w + (size_t)n * (size_t)j->k * esz;
      float bias[8];
      for (int c = 0; c < nr; c++)
        bias[c] = lm_gemm_bias(j->bias, n + c);
      if (widen) lm_gemm_widen(panel, w, (size_t)j->k * esz, nr, j->k, j->dt);
      for (int64_t m = mb; m < mb_end; m += 4) {
        int mr = (int)(mb_end - m < 4 ? mb_end - m : 4);
        struct lm_tile t = {.xp = (const char *)j->xp + (size_t)m * ld * xsz,
                            .ldx = ld,
                            .w = widen ? (const char *)panel : w,
                            .ldw = widen ? ld * sizeof(float) : (size_t)j->k * esz,
                            .k = widen ? (int)kp : j->k};
        int kern = j->dot ? LM_TILE_DOT : widen ? LM_DTYPE_F32 : (int)j->dt;
        lm_tiles[kern][mr - 1][nr - 1](&t, out);
        for (int i = 0; i < mr; i++) {
          float *yr = y + (size_t)(m + i) * ldy + n;
          for (int c = 0; c < nr; c++)
            yr[c] = out[i * 8 + c] + bias[c];
        }
      }
    }
  }
}

/* ---- portable fallback ------------------------------------------------- */

/* Sequential over k per element: batch invariant by construction. */
static void lm_gemm_scalar_range(const struct lm_gemm_job *j, int64_t n0, int64_t n1) {
  size_t esz = lm_dtype_size(j->dt);
  for (int64_t n = n0; n < n1; n++) {
    const char *w = (const char *)j->w + (size_t)n * (size_t)j->k * esz;
    for (int64_t m = 0; m < j->m; m++) {
      const float *x = j->x + (size_t)m * j->k;
      float acc = 0.0f;
      for (int k = 0; k < j->k; k++)
        acc += x[k] * lm_cpu_elem(w, j->dt, (size_t)k);
      j->y[(size_t)m * j->n + n] = acc + lm_gemm_bias(j->bias, n);
    }
  }
}

/* One contiguous range of columns; which thread takes it changes nothing
 * in the result. */
static void lm_gemm_item(void *argp, int64_t item, int tid) {
  const struct lm_gemm_job *j = argp;
  int64_t n0 = item * j->chunk, n1 = n0 + j->chunk < j->n ? n0 + j->chunk : j->n;
  if (j->avx512)
    lm_gemm_avx512_range(j, n0, n1, tid);
  else
    lm_gemm_scalar_range(j, n0, n1);
}

static int64_t lm_gemm_items(struct lm_gemm_job *j, int n_threads) {
  /* a few items per thread, so a thread whose core is taken by another
   * process leaves its share to the others */
  int64_t per = (j->n + 4 * n_threads - 1) / (4 * n_threads);
  j->chunk = (per + 15) & ~(int64_t)15;
  return (j->n + j->chunk - 1) / j->chunk;
}

static struct lm_gemm_job lm_gemm_job_of(const struct lm_cpu *cpu, void *y, const void *x,
                                         const struct lm_tensor *w, const struct lm_tensor *bias,
                                         int rows) {
  return (struct lm_gemm_job){.y = y,
                              .x = x,
                              .w = w->dev ? w->dev : w->data,
                              .dt = w->dtype,
                              .bias = bias,
                              .m = rows,
                              .n = (int)w->shape[0],
                              .k = (int)w->shape[1],
                              .avx512 = cpu->avx512,
                              .dot = cpu->bf16_dot && w->dtype == LM_DTYPE_BF16};
}

/* Gives the job its per-thread panels where W is widened and more than one
 * tile of rows meets each W row; without memory for them the tiles widen
 * W themselves (same bits). */
static void lm_gemm_panels(struct lm_cpu *cpu, struct lm_gemm_job *j) {
  j->panels = NULL;
  if (!j->avx512 || j->dot || j->dt == LM_DTYPE_F32 || j->m <= 4) return;
  size_t bytes = (size_t)cpu->n_threads * 8 * lm_ld(j->k) * sizeof(float);
  if (lm_cpu_grow(&cpu->panels, &cpu->panels_bytes, bytes) == 0) j->panels = cpu->panels;
}

/* Bytes of one prepared row of x for this job's kernel. */
static size_t lm_gemm_prep_bytes(const struct lm_gemm_job *j) {
  return lm_ld(j->k) * (j->dot ? 2 : sizeof(float));
}

void lm_cpu_matmul(void *st, void *y, const void *x, const struct lm_tensor *w,
                   const struct lm_tensor *bias, int rows) {
  struct lm_cpu *cpu = st;
  struct lm_gemm_job j = lm_gemm_job_of(cpu, y, x, w, bias, rows);
  if (rows <= 0 || j.n <= 0) return;
  lm_gemm_panels(cpu, &j);
  if (j.avx512) {
    /* One prepared copy of x for the whole call. The runner sizes its
     * activations up front, so failing here means the machine is out of
     * memory; process x in slices that fit what we already have. */
    size_t row_bytes = lm_gemm_prep_bytes(&j);
    int64_t slice = rows;
    if (lm_cpu_grow((void **)&cpu->xprep, &cpu->xprep_bytes, row_bytes * (size_t)rows) != 0)
      slice = (int64_t)(cpu->xprep_bytes / row_bytes);
    if (slice <= 0) {
      for (size_t i = 0; i < (size_t)rows * (size_t)j.n; i++)
        ((float *)y)[i] = NAN;
      return;
    }
    for (int64_t m0 = 0; m0 < rows; m0 += slice) {
      struct lm_gemm_job s = j;
      s.m = (int)(rows - m0 < slice ? rows - m0 : slice);
      s.x = (const float *)x + (size_t)m0 * j.k;
      s.y = (float *)y + (size_t)m0 * j.n;
      s.xp = cpu->xprep;
      if (s.m <= LM_GEMM_SERIAL_PREP_ROWS)
        for (int m = 0; m < s.m; m++)
          lm_gemm_prep_item(&s, m, 0);
      else
        lm_pool_for(cpu->pool, s.m, lm_gemm_prep_item, &s);
      lm_pool_for(cpu->pool, lm_gemm_items(&s, cpu->n_threads), lm_gemm_item, &s);
    }
    return;
  }
  lm_pool_for(cpu->pool, lm_gemm_items(&j, cpu->n_threads), lm_gemm_item, &j);
}

/* Several matrices of the same input (q, k and v; gate and up): x is
 * prepared once and every matrix's column ranges are items of one parallel
 * loop, so a decode step pays one dispatch and one barrier for the group.
 * Each output is computed exactly as lm_cpu_matmul computes it. */
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
    same = ws[i]->dtype == ws[0]->dtype && ws[i]->shape[1] == ws[0]->shape[1];
    g.jobs[i] = lm_gemm_job_of(cpu, ys[i], x, ws[i], biases[i], rows);
    g.first[i + 1] = g.first[i] + lm_gemm_items(&g.jobs[i], cpu->n_threads);
  }
  if (!same || lm_cpu_grow(&cpu->xprep, &cpu->xprep_bytes,
                           lm_gemm_prep_bytes(&g.jobs[0]) * (size_t)rows) != 0) {
    for (int i = 0; i < n; i++)
      lm_cpu_matmul(st, ys[i], x, ws[i], biases[i], rows);
    return;
  }
  /* the jobs share K and dtype, so one set of panels serves them all */
  lm_gemm_panels(cpu, &g.jobs[0]);
  for (int i = 0; i < n; i++) {
    g.jobs[i].xp = cpu->xprep;
    g.jobs[i].panels = g.jobs[0].panels;
  }
  if (rows <= LM_GEMM_SERIAL_PREP_ROWS)
    for (int m = 0; m < rows; m++)
      lm_gemm_prep_item(&g.jobs[0], m, 0);
  else
    lm_pool_for(cpu->pool, rows, lm_gemm_prep_item, &g.jobs[0]);
  lm_pool_for(cpu->pool, g.first[n], lm_gemm_group_item, &g);
}
