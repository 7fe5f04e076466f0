/* cpu_attention.c - causal attention over the paged KV cache.
 *
 * One work item is (sequence, kv head, tile of query heads, tile of query
 * tokens), at most LM_ATTN_ROWS (token, head) rows: the tile's query heads
 * that share the kv head walk the sequence's blocks together, so each K/V
 * block is loaded once into L1 and used by every row. A group of up to
 * LM_ATTN_ROWS heads is one head tile; a larger one (multi-query attention)
 * is split into near-equal head tiles of one token each. Each (token, head)
 * row keeps its own online-softmax state and visits its keys block by block
 * in position order, so its result depends only on its own query and
 * context length: not on the tile it shares, the other sequences in the
 * batch or the thread that runs it. On AVX-512, a block's keys are scored
 * 16 at a time (one accumulator each, one fixed transpose-and-add tree for
 * the 16 sums; where the block has fewer than 16 keys left, one horizontal
 * sum per key, decided by the key's place in its block alone), and each
 * row's output stays in registers while it walks a block.
 *
 * The cache holds f32 or bf16 (half the bytes to stream per context
 * token). bf16 K/V are widened exactly and the arithmetic is the f32
 * kernel's: on AVX-512 a 64-byte load of 32 bf16 values gives its even
 * elements (shift left) and its odd ones (mask) as two f32 vectors, the
 * query is loaded in that same even/odd order and the output is put back
 * in order when it is stored, so a widened value costs one instruction. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#include "engine/cpu_internal.h"

#define LM_ATTN_ROWS       32  /* (token, head) rows per work item */
#define LM_ATTN_MAX_HD     256 /* head_dim limit of the stack buffers */
#define LM_ATTN_MAX_BS     256 /* block_size limit of the stack buffers */
#define LM_ATTN_STACK_SEQS 256

struct lm_attn_job {
  float *out;          /* [T, n_heads, head_dim] */
  const float *q;      /* [T, n_heads, head_dim] */
  const char *k;       /* this layer's K: [n_blocks, n_kv_heads, block_size, head_dim] */
  const char *v;       /* this layer's V: same */
  enum lm_dtype dtype; /* of K and V: f32 or bf16 */
  size_t block_bytes;  /* of one (block, kv head): block_size * head_dim elements */
  const struct lm_batch *b;
  int n_heads, n_kv, hd, bs, group;
  int h_tile;  /* most query heads in a tile: group, or a share of it when larger */
  int n_htile; /* head tiles per kv head */
  int q_tile;  /* query tokens per tile: LM_ATTN_ROWS / h_tile */
  float scale;
  const int64_t *item_off; /* [S+1] first item of each sequence, or NULL */
  int seq;                 /* the one sequence when item_off is NULL */
  int avx512;
};

/* Rows r of a tile are (token t0 + r / nh, head g * group + h0 + r % nh). */
struct lm_attn_tile {
  int s, g, t0, t1, h0, nh;
};

/* Sets each row's query position (clamped to the context), and an empty
 * softmax state; returns the largest position, the last key any row reads. */
static int lm_attn_rows_init(const struct lm_attn_job *j, const struct lm_attn_tile *tl, int n_rows,
                             int *pos, float *m, float *l) {
  int pmax = -1, ctx = j->b->ctx_len[tl->s];
  for (int r = 0; r < n_rows; r++) {
    int p = j->b->positions[tl->t0 + r / tl->nh];
    pos[r] = p < ctx - 1 ? p : ctx - 1;
    if (pos[r] > pmax) pmax = pos[r];
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  return pmax;
}

/* Row r's query and, in *n_valid, how many keys of the current block it
 * reads; n_upto counts the keys from the block's first position through
 * the row's own (<= 0: the block is past the row, NULL). */
static inline const float *lm_attn_row_q(const struct lm_attn_job *j, const struct lm_attn_tile *tl,
                                         int r, int n_upto, int *n_valid) {
  int t = tl->t0 + r / tl->nh, h = tl->g * j->group + tl->h0 + r % tl->nh;
  if (n_upto <= 0) return NULL;
  *n_valid = n_upto < j->bs ? n_upto : j->bs;
  return j->q + ((size_t)t * j->n_heads + h) * (size_t)j->hd;
}

/* ---- AVX-512 ---------------------------------------------------------- */

/* Vector d (of NV) of a K or V row as f32: lanes 16d .. 16d + 15 of an f32
 * row; of a bf16 row (BF), the even elements of 32 (d / 2) .. + 31 for d
 * even and the odd ones for d odd. */
LM_AVX512_INLINE __m512 lm_attn_kv16(int BF, const void *row, int d) {
  if (!BF) return _mm512_loadu_ps((const float *)row + 16 * d);
  __m512i x = _mm512_loadu_si512((const uint16_t *)row + 32 * (d / 2));
  return _mm512_castsi512_ps(d % 2 ? _mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u))
                                   : _mm512_slli_epi32(x, 16));
}

/* A query row in the order lm_attn_kv16 gives K's elements. */
LM_AVX512_INLINE void lm_attn_load_q(int NV, int BF, const float *q, __m512 *qv) {
  if (!BF) {
#pragma GCC unroll 16
    for (int d = 0; d < NV; d++)
      qv[d] = _mm512_loadu_ps(q + 16 * d);
    return;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#pragma GCC unroll 8
  for (int c = 0; c < NV / 2; c++) {
    __m512 lo = _mm512_loadu_ps(q + 32 * c), hi = _mm512_loadu_ps(q + 32 * c + 16);
    qv[2 * c] = _mm512_permutex2var_ps(lo, even, hi);
    qv[2 * c + 1] = _mm512_permutex2var_ps(lo, odd, hi);
  }
}

/* Stores o * inv to dst in element order (undoing lm_attn_load_q's). */
LM_AVX512_INLINE void lm_attn_store_o(int NV, int BF, float *dst, const __m512 *o, __m512 inv) {
  if (!BF) {
#pragma GCC unroll 16
    for (int d = 0; d < NV; d++)
      _mm512_storeu_ps(dst + 16 * d, _mm512_mul_ps(o[d], inv));
    return;
  }
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#pragma GCC unroll 8
  for (int c = 0; c < NV / 2; c++) {
    __m512 e = _mm512_mul_ps(o[2 * c], inv), od = _mm512_mul_ps(o[2 * c + 1], inv);
    _mm512_storeu_ps(dst + 32 * c, _mm512_permutex2var_ps(e, lo, od));
    _mm512_storeu_ps(dst + 32 * c + 16, _mm512_permutex2var_ps(e, hi, od));
  }
}

/* q . k for 16 consecutive keys (rows of k, head_dim = 16 * NV elements
 * of row_bytes): one accumulator per key, then one fixed transpose-and-add
 * tree that sums the 16 accumulators' lanes into one vector of 16 scores,
 * in key order. */
LM_AVX512_INLINE __m512 lm_attn_scores16(int NV, int BF, const __m512 *qv, const char *k,
                                         size_t row_bytes) {
  __m512 a[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i++)
    a[i] = _mm512_mul_ps(qv[0], lm_attn_kv16(BF, k + i * row_bytes, 0));
#pragma GCC unroll 16
  for (int d = 1; d < NV; d++)
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
      a[i] = _mm512_fmadd_ps(qv[d], lm_attn_kv16(BF, k + i * row_bytes, d), a[i]);
  /* 16 -> 8: halves of key pairs (i, i + 1) side by side */
  __m512 b[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
  /* 8 -> 4: 128-bit quarter q of c[i] holds 4 lanes of key 4i + q */
  __m512 c[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
  /* 4 -> 2 -> 1 within the quarters */
  __m512 d0 =
      _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x44), _mm512_shuffle_ps(c[0], c[1], 0xee));
  __m512 d1 =
      _mm512_add_ps(_mm512_shuffle_ps(c[2], c[3], 0x44), _mm512_shuffle_ps(c[2], c[3], 0xee));
  __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d0, d1, 0x88), _mm512_shuffle_ps(d0, d1, 0xdd));
  /* e's lane 4q + j holds key q + 4j: back to key order */
  return _mm512_permutexvar_ps(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), e);
}

/* One row's pass over one block: scores of its n_valid keys, the online
 * softmax update, and the weighted sum of V. NV (head_dim / 16) is a
 * constant at the specialized call sites, so the row's output stays in
 * registers across the block. */
LM_AVX512_INLINE void lm_attn_row_block(int NV, int BF, const float *q, const char *kb,
                                        const char *vb, int n_valid, int bs, float scale, float *m,
                                        float *l, __m512 *o, float *sc) {
  const size_t rb = (size_t)NV * 16 * (BF ? 2 : 4); /* bytes of a K or V row */
  __m512 qv[LM_ATTN_MAX_HD / 16], ov[LM_ATTN_MAX_HD / 16];
  lm_attn_load_q(NV, BF, q, qv);
  float bmax = -INFINITY;
  int i = 0;
  for (; i + 16 <= bs && i < n_valid; i += 16)
    _mm512_store_ps(sc + i, _mm512_mul_ps(lm_attn_scores16(NV, BF, qv, kb + i * rb, rb),
                                          _mm512_set1_ps(scale)));
  for (; i < n_valid; i++) {
    const char *k = kb + i * rb;
    __m512 acc = _mm512_mul_ps(qv[0], lm_attn_kv16(BF, k, 0));
#pragma GCC unroll 16
    for (int d = 1; d < NV; d++)
      acc = _mm512_fmadd_ps(qv[d], lm_attn_kv16(BF, k, d), acc);
    sc[i] = lm_hsum16(acc) * scale;
  }
  for (i = 0; i < n_valid; i++)
    bmax = sc[i] > bmax ? sc[i] : bmax;
  float m_new = *m > bmax ? *m : bmax;
  float alpha = expf(*m - m_new);
  __m512 psum = _mm512_setzero_ps();
  for (int i = 0; i < n_valid; i += 16) {
    __mmask16 mk = n_valid - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n_valid - i)) - 1);
    __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, sc + i);
    __m512 p = _mm512_maskz_mov_ps(mk, lm_exp16(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
    _mm512_store_ps(sc + i, p);
    psum = _mm512_add_ps(psum, p);
  }
  *l = *l * alpha + lm_hsum16(psum);
  *m = m_new;
  __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int d = 0; d < NV; d++)
    ov[d] = _mm512_mul_ps(o[d], va);
  for (int i = 0; i < n_valid; i++) {
    const char *v = vb + i * rb;
    __m512 p = _mm512_set1_ps(sc[i]);
#pragma GCC unroll 16
    for (int d = 0; d < NV; d++)
      ov[d] = _mm512_fmadd_ps(p, lm_attn_kv16(BF, v, d), ov[d]);
  }
#pragma GCC unroll 16
  for (int d = 0; d < NV; d++)
    o[d] = ov[d];
}

LM_AVX512_INLINE void lm_attn_tile_avx512_nv(int NV, int BF, const struct lm_attn_job *j,
                                             const struct lm_attn_tile *tl) {
  const struct lm_batch *b = j->b;
  const int hd = NV * 16, bs = j->bs;
  const size_t bb = j->block_bytes;
  int n_rows = (tl->t1 - tl->t0) * tl->nh;
  int pos[LM_ATTN_ROWS];
  float m[LM_ATTN_ROWS], l[LM_ATTN_ROWS];
  float sc[LM_ATTN_MAX_BS] __attribute__((aligned(64)));
  /* o: [n_rows, head_dim] running weighted sum of V */
  __m512 o[LM_ATTN_ROWS][LM_ATTN_MAX_HD / 16];
  int pmax = lm_attn_rows_init(j, tl, n_rows, pos, m, l);
  for (int r = 0; r < n_rows; r++)
#pragma GCC unroll 16
    for (int d = 0; d < NV; d++)
      o[r][d] = _mm512_setzero_ps();
  const int32_t *table = b->block_tables + (size_t)tl->s * b->max_blocks;
  for (int bi = 0; bi * bs <= pmax && bi < b->max_blocks; bi++) {
    size_t off = ((size_t)table[bi] * j->n_kv + tl->g) * bb;
    const char *kb = j->k + off, *vb = j->v + off; /* [block_size, head_dim] */
    /* blocks are scattered in the pool, so no hardware prefetcher finds the
     * next one: pull its K and V into L1 while this one is scored */
    if ((bi + 1) * bs <= pmax && bi + 1 < b->max_blocks) {
      size_t next = ((size_t)table[bi + 1] * j->n_kv + tl->g) * bb;
      const char *nk = j->k + next, *nv_ = j->v + next;
      for (size_t x = 0; x < bb; x += 64) {
        _mm_prefetch(nk + x, _MM_HINT_T0);
        _mm_prefetch(nv_ + x, _MM_HINT_T0);
      }
    }
    for (int r = 0; r < n_rows; r++) {
      int n_valid;
      const float *q = lm_attn_row_q(j, tl, r, pos[r] + 1 - bi * bs, &n_valid);
      if (q) lm_attn_row_block(NV, BF, q, kb, vb, n_valid, bs, j->scale, &m[r], &l[r], o[r], sc);
    }
  }
  for (int r = 0; r < n_rows; r++) {
    int t = tl->t0 + r / tl->nh, h = tl->g * j->group + tl->h0 + r % tl->nh;
    float *dst = j->out + ((size_t)t * j->n_heads + h) * hd;
    lm_attn_store_o(NV, BF, dst, o[r], _mm512_set1_ps(l[r] > 0.0f ? 1.0f / l[r] : 0.0f));
  }
}

/* NV fixed at every head size the AVX-512 path takes (head_dim a multiple
 * of 16 up to LM_ATTN_MAX_HD for f32, of 32 for bf16) */
LM_AVX512_TARGET static void lm_attn_tile_avx512_f32(const struct lm_attn_job *j,
                                                     const struct lm_attn_tile *tl) {
  switch (j->hd / 16) {
  case 1: lm_attn_tile_avx512_nv(1, 0, j, tl); break;
  case 2: lm_attn_tile_avx512_nv(2, 0, j, tl); break;
  case 3: lm_attn_tile_avx512_nv(3, 0, j, tl); break;
  case 4: lm_attn_tile_avx512_nv(4, 0, j, tl); break;
  case 5: lm_attn_tile_avx512_nv(5, 0, j, tl); break;
  case 6: lm_attn_tile_avx512_nv(6, 0, j, tl); break;
  case 7: lm_attn_tile_avx512_nv(7, 0, j, tl); break;
  case 8: lm_attn_tile_avx512_nv(8, 0, j, tl); break;
  case 9: lm_attn_tile_avx512_nv(9, 0, j, tl); break;
  case 10: lm_attn_tile_avx512_nv(10, 0, j, tl); break;
  case 11: lm_attn_tile_avx512_nv(11, 0, j, tl); break;
  case 12: lm_attn_tile_avx512_nv(12, 0, j, tl); break;
  case 13: lm_attn_tile_avx512_nv(13, 0, j, tl); break;
  case 14: lm_attn_tile_avx512_nv(14, 0, j, tl); break;
  case 15: lm_attn_tile_avx512_nv(15, 0, j, tl); break;
  case 16: lm_attn_tile_avx512_nv(16, 0, j, tl); break;
  default: break;
  }
}

LM_AVX512_TARGET static void lm_attn_tile_avx512_bf16(const struct lm_attn_job *j,
                                                      const struct lm_attn_tile *tl) {
  switch (j->hd / 32) {
  case 1: lm_attn_tile_avx512_nv(2, 1, j, tl); break;
  case 2: lm_attn_tile_avx512_nv(4, 1, j, tl); break;
  case 3: lm_attn_tile_avx512_nv(6, 1, j, tl); break;
  case 4: lm_attn_tile_avx512_nv(8, 1, j, tl); break;
  case 5: lm_attn_tile_avx512_nv(10, 1, j, tl); break;
  case 6: lm_attn_tile_avx512_nv(12, 1, j, tl); break;
  case 7: lm_attn_tile_avx512_nv(14, 1, j, tl); break;
  case 8: lm_attn_tile_avx512_nv(16, 1, j, tl); break;
  default: break;
  }
}

/* ---- portable fallback (same algorithm, scalar) ------------------------ */

static void lm_attn_tile_scalar(const struct lm_attn_job *j, const struct lm_attn_tile *tl) {
  const struct lm_batch *b = j->b;
  const int hd = j->hd, bs = j->bs;
  int n_rows = (tl->t1 - tl->t0) * tl->nh;
  int pos[LM_ATTN_ROWS];
  float m[LM_ATTN_ROWS], l[LM_ATTN_ROWS], sc[LM_ATTN_MAX_BS];
  float o[LM_ATTN_ROWS][LM_ATTN_MAX_HD]; /* [n_rows, head_dim] */
  int pmax = lm_attn_rows_init(j, tl, n_rows, pos, m, l);
  for (int r = 0; r < n_rows; r++)
    for (int d = 0; d < hd; d++)
      o[r][d] = 0.0f;
  const int32_t *table = b->block_tables + (size_t)tl->s * b->max_blocks;
  for (int bi = 0; bi * bs <= pmax && bi < b->max_blocks; bi++) {
    size_t off = ((size_t)table[bi] * j->n_kv + tl->g) * j->block_bytes;
    const char *kb = j->k + off, *vb = j->v + off;
    for (int r = 0; r < n_rows; r++) {
      int n_valid;
      const float *q = lm_attn_row_q(j, tl, r, pos[r] + 1 - bi * bs, &n_valid);
      if (!q) continue;
      float bmax = -INFINITY, psum = 0.0f;
      for (int i = 0; i < n_valid; i++) {
        float acc = 0.0f;
        for (int d = 0; d < hd; d++)
          acc += q[d] * lm_cpu_elem(kb, j->dtype, (size_t)i * hd + d);
        sc[i] = acc * j->scale;
        bmax = sc[i] > bmax ? sc[i] : bmax;
      }
      float m_new = m[r] > bmax ? m[r] : bmax;
      float alpha = expf(m[r] - m_new);
      for (int i = 0; i < n_valid; i++) {
        sc[i] = expf(sc[i] - m_new);
        psum += sc[i];
      }
      l[r] = l[r] * alpha + psum;
      m[r] = m_new;
      for (int d = 0; d < hd; d++)
        o[r][d] *= alpha;
      for (int i = 0; i < n_valid; i++)
        for (int d = 0; d < hd; d++)
          o[r][d] += sc[i] * lm_cpu_elem(vb, j->dtype, (size_t)i * hd + d);
    }
  }
  for (int r = 0; r < n_rows; r++) {
    int t = tl->t0 + r / tl->nh, h = tl->g * j->group + tl->h0 + r % tl->nh;
    float *dst = j->out + ((size_t)t * j->n_heads + h) * hd;
    float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    for (int d = 0; d < hd; d++)
      dst[d] = o[r][d] * inv;
  }
}

static int lm_attn_seq_items(const struct lm_attn_job *j, int s) {
  int n_q = j->b->q_start[s + 1] - j->b->q_start[s];
  return j->n_kv * j->n_htile * ((n_q + j->q_tile - 1) / j->q_tile);
}

static void lm_attn_item(void *argp, int64_t item, int tid) {
  const struct lm_attn_job *j = argp;
  struct lm_attn_tile tl;
  int s = j->seq;
  (void)tid;
  if (j->item_off) {
    /* binary search: the last sequence whose first item is <= item */
    int lo = 0, hi = j->b->n_seqs - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (j->item_off[mid] <= item)
        lo = mid;
      else
        hi = mid - 1;
    }
    s = lo;
    item -= j->item_off[s];
  }
  int tiles = (j->b->q_start[s + 1] - j->b->q_start[s] + j->q_tile - 1) / j->q_tile;
  int ht = (int)(item / tiles);
  tl.s = s;
  tl.g = ht / j->n_htile;
  tl.h0 = ht % j->n_htile * j->group / j->n_htile;
  tl.nh = (ht % j->n_htile + 1) * j->group / j->n_htile - tl.h0;
  tl.t0 = j->b->q_start[s] + (int)(item % tiles) * j->q_tile;
  tl.t1 = tl.t0 + j->q_tile < j->b->q_start[s + 1] ? tl.t0 + j->q_tile : j->b->q_start[s + 1];
  if (j->avx512 && j->dtype == LM_DTYPE_BF16)
    lm_attn_tile_avx512_bf16(j, &tl);
  else if (j->avx512)
    lm_attn_tile_avx512_f32(j, &tl);
  else
    lm_attn_tile_scalar(j, &tl);
}

void lm_cpu_attention(void *st, void *out, const void *q, const void *kv,
                      const struct lm_kv_shape *shape, int layer, const struct lm_batch *b,
                      int n_heads, float scale) {
  struct lm_cpu *cpu = st;
  size_t block_bytes = (size_t)shape->block_size * shape->head_dim * lm_dtype_size(shape->dtype);
  size_t layer_bytes = lm_kv_layer_bytes(shape);
  int64_t stack_off[LM_ATTN_STACK_SEQS + 1], *off = stack_off;
  struct lm_attn_job j = {
      .out = out,
      .q = q,
      .k = (const char *)kv + (size_t)layer * 2 * layer_bytes,
      .v = (const char *)kv + ((size_t)layer * 2 + 1) * layer_bytes,
      .dtype = shape->dtype,
      .block_bytes = block_bytes,
      .b = b,
      .n_heads = n_heads,
      .n_kv = shape->n_kv_heads,
      .hd = shape->head_dim,
      .bs = shape->block_size,
      .group = n_heads / shape->n_kv_heads,
      .scale = scale,
      .avx512 = cpu->avx512 && shape->head_dim % (shape->dtype == LM_DTYPE_BF16 ? 32 : 16) == 0 &&
                shape->head_dim <= LM_ATTN_MAX_HD};
  if (b->n_seqs <= 0 || j.group <= 0) return;
  j.n_htile = (j.group + LM_ATTN_ROWS - 1) / LM_ATTN_ROWS;
  j.h_tile = (j.group + j.n_htile - 1) / j.n_htile;
  j.q_tile = LM_ATTN_ROWS / j.h_tile;
  if (b->n_seqs > LM_ATTN_STACK_SEQS) off = malloc(((size_t)b->n_seqs + 1) * sizeof(*off));
  if (!off) {
    /* out of memory for the item index: one parallel loop per sequence */
    for (int s = 0; s < b->n_seqs; s++) {
      j.seq = s;
      lm_pool_for(cpu->pool, lm_attn_seq_items(&j, s), lm_attn_item, &j);
    }
    return;
  }
  off[0] = 0;
  for (int s = 0; s < b->n_seqs; s++)
    off[s + 1] = off[s] + lm_attn_seq_items(&j, s);
  j.item_off = off;
  lm_pool_for(cpu->pool, off[b->n_seqs], lm_attn_item, &j);
  if (off != stack_off) free(off);
}
