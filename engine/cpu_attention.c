/* cpu_attention.c - causal attention over the paged KV cache.
 *
 * One work item is (sequence, kv head, tile of query heads, tile of query
 * tokens), at most LM_ATTN_ROWS (token, head) rows (LM_ATTN_AMX_ROWS on
 * AMX tiles): the tile's query heads that share the kv head walk the
 * sequence's keys together, so each chunk of K/V is read from memory once
 * and used by every row. A group of up to that many heads is one head
 * tile; a larger one (multi-query attention) is split into near-equal head
 * tiles of one token each.
 *
 * Each (token, head) row keeps its own online-softmax state and takes its
 * keys in chunks of LM_ATTN_CHUNK positions (0-63, 64-127, ...) in order:
 * one max, one rescale of its output and one sum of exponentials per
 * chunk. The chunks are positions, not blocks, so a row's result depends
 * only on its own query and context: not on the tile it shares, the other
 * sequences in the batch, the thread that runs it or the block size.
 *
 * On AVX-512 the rows go through a chunk four at a time. The CPU stores K
 * transposed by 32-bit words (lm_cpu_k_index), so a 64-byte load holds one
 * word of 16 keys: each load is widened once and multiplied into the four
 * rows' scores by broadcast query elements, giving 16 scores a vector with
 * no horizontal sums. V is [block_size][head_dim]: each V vector, widened
 * once, is added into the four rows' outputs, four vectors of each at a
 * time in registers across the chunk's keys.
 *
 * The cache holds f32, bf16 (half the bytes to stream per context token)
 * or e5m2 (a quarter). Stored values are widened exactly and the
 * arithmetic is the f32 kernel's: a 64-byte load of 32 bf16 values gives
 * its even elements (shift left) and its odd ones (mask) as two f32
 * vectors; the output rows are kept in that even/odd order and put back in
 * order when they are stored, so a widened value costs one instruction.
 * e5m2 is the top byte of an f16: 64 values give their even and odd
 * elements the same way as f16 halves, and the output keeps the same
 * order. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu_internal.h"

#define LM_ATTN_ROWS       32   /* (token, head) rows per work item */
#define LM_ATTN_AMX_ROWS   128  /* ... on AMX tiles: each chunk's V tiles serve more rows */
#define LM_ATTN_AMX_LAG    8.0f /* log2 units a row's softmax reference may lag its maximum */
#define LM_ATTN_CHUNK      64   /* key positions per online-softmax update */
#define LM_ATTN_MAX_HD     256  /* head_dim limit of the stack buffers */
#define LM_ATTN_STACK_SEQS 256

struct lm_attn_job {
  float *out;          /* [T, n_heads, head_dim] */
  const float *q;      /* [T, n_heads, head_dim] */
  const char *k;       /* this layer's K: [n_kv_heads, n_blocks, block_size, head_dim] */
  const char *v;       /* this layer's V: same */
  enum lm_dtype dtype; /* of K and V: f32 or bf16 */
  size_t block_bytes;  /* of one (block, kv head): block_size * head_dim elements */
  const struct lm_batch *b;
  int n_heads, n_kv, hd, bs, group;
  int n_blocks; /* in the pool: a kv head has this many regions */
  int h_tile;   /* most query heads in a tile: group, or a share of it when larger */
  int n_htile;  /* head tiles per kv head */
  int rows;     /* (token, head) rows per work item: LM_ATTN_ROWS or LM_ATTN_AMX_ROWS */
  int q_tile;   /* query tokens per tile: rows / h_tile */
  float scale;
  const int64_t *item_off; /* [S+1] first item of each sequence, or NULL */
  int seq;                 /* the one sequence when item_off is NULL */
  int avx512;
  int amx; /* lm_cpu_attn_amx: AMX tiles, V by pairs of keys */
};

/* Rows r of a tile are (token t0 + r / nh, head g * group + h0 + r % nh). */
struct lm_attn_tile {
  int s, g, t0, t1, h0, nh;
};

/* Sets each row's query position (clamped to the context), and an empty
 * softmax state; returns the largest position, the last key any row reads. */
static int lm_attn_rows_init(const struct lm_attn_job *j, const struct lm_attn_tile *tl, int n_rows,
                             int *pos, float *m, float *l) {
  /* no key past the sequence's block table, whatever ctx_len says */
  int pmax = -1, ctx = j->b->ctx_len[tl->s];
  ctx = ctx < j->b->max_blocks * j->bs ? ctx : j->b->max_blocks * j->bs;
  for (int r = 0; r < n_rows; r++) {
    int p = j->b->positions[tl->t0 + r / tl->nh];
    pos[r] = p < ctx - 1 ? p : ctx - 1;
    if (pos[r] > pmax) pmax = pos[r];
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  return pmax;
}

/* Where row r's query (in q) and output (in out) start. */
static inline size_t lm_attn_row_off(const struct lm_attn_job *j, const struct lm_attn_tile *tl,
                                     int r) {
  int t = tl->t0 + r / tl->nh, h = tl->g * j->group + tl->h0 + r % tl->nh;
  return ((size_t)t * j->n_heads + h) * (size_t)j->hd;
}

/* Row r's query and, in *n_valid, how many keys of the current chunk it
 * reads; n_upto counts the keys from the chunk's first position through
 * the row's own (<= 0: the chunk is past the row, NULL). */
static inline const float *lm_attn_row_q(const struct lm_attn_job *j, const struct lm_attn_tile *tl,
                                         int r, int n_upto, int *n_valid) {
  if (n_upto <= 0) return NULL;
  *n_valid = n_upto < LM_ATTN_CHUNK ? n_upto : LM_ATTN_CHUNK;
  return j->q + lm_attn_row_off(j, tl, r);
}

/* The keys of chunk base (a multiple of LM_ATTN_CHUNK) up to pmax, the
 * tile's last key: as pieces that each lie in one block and one 16-key
 * vector of the chunk (a full chunk in blocks of a multiple of 16: four),
 * and each key's V row. */
struct lm_attn_chunk {
  int n_pieces;
  struct lm_attn_piece {
    const char *k; /* the block's K region */
    int off, n;    /* its keys off .. off + n - 1 */
    int k0;        /* the first one's index in the chunk */
  } piece[LM_ATTN_CHUNK];
  const char *v[LM_ATTN_CHUNK];
};

static inline void lm_attn_chunk_init(const struct lm_attn_job *j, const struct lm_attn_tile *tl,
                                      const int32_t *table, int base, int pmax,
                                      struct lm_attn_chunk *ck) {
  size_t rb = (size_t)j->hd * lm_dtype_size(j->dtype); /* bytes of a V row */
  int n = pmax + 1 - base < LM_ATTN_CHUNK ? pmax + 1 - base : LM_ATTN_CHUNK;
  ck->n_pieces = 0;
  for (int k0 = 0; k0 < n;) {
    int p = base + k0, off = p % j->bs, len = j->bs - off;
    len = len < 16 - k0 % 16 ? len : 16 - k0 % 16;
    len = len < n - k0 ? len : n - k0;
    size_t boff = lm_cpu_kv_region(table[p / j->bs], tl->g, j->n_blocks) * j->block_bytes;
    ck->piece[ck->n_pieces++] = (struct lm_attn_piece){j->k + boff, off, len, k0};
    for (int t = 0; t < len; t++)
      ck->v[k0 + t] = j->v + boff + (size_t)(off + t) * rb;
    k0 += len;
  }
}

/* The chunk after the one at base (into ck[c ^ 1], ck[c] being the
 * current one), for the AVX-512 path's prefetches while the current one is
 * computed; NULL past the tile's last key. */
static inline const struct lm_attn_chunk *
lm_attn_next_chunk(const struct lm_attn_job *j, const struct lm_attn_tile *tl, const int32_t *table,
                   int base, int pmax, struct lm_attn_chunk *ck, int c) {
  if (base + LM_ATTN_CHUNK > pmax) return NULL;
  lm_attn_chunk_init(j, tl, table, base + LM_ATTN_CHUNK, pmax, &ck[c ^ 1]);
  return &ck[c ^ 1];
}

/* ---- AVX-512 ---------------------------------------------------------- */

/* Vector d (of NV) of a K or V row as f32 (KT: the stored type, 0 f32, 1
 * bf16, 2 e5m2): lanes 16d .. 16d + 15 of an f32 row; of a bf16 or e5m2
 * row, the even elements of 32 (d / 2) .. + 31 for d even and the odd ones
 * for d odd. */
LM_AVX512_INLINE __m512 lm_attn_kv16(int KT, const void *row, int d) {
  if (!KT) return _mm512_loadu_ps((const float *)row + 16 * d);
  if (KT == 2) {
    /* e5m2 is an f16's top byte: the even bytes of 64 shifted up, or the
     * odd ones masked, then half of the 32 halves widened */
    __m512i x = _mm512_loadu_si512((const uint8_t *)row + 64 * (d / 4));
    __m512i h =
        d % 2 ? _mm512_and_si512(x, _mm512_set1_epi16((short)0xff00)) : _mm512_slli_epi16(x, 8);
    return _mm512_cvtph_ps(d % 4 < 2 ? _mm512_castsi512_si256(h) : _mm512_extracti64x4_epi64(h, 1));
  }
  __m512i x = _mm512_loadu_si512((const uint16_t *)row + 32 * (d / 2));
  return _mm512_castsi512_ps(d % 2 ? _mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u))
                                   : _mm512_slli_epi32(x, 16));
}

/* lm_exp16 out of line: inlined, its constants would be kept in registers
 * across the tile's loops and leave too few for the V accumulators. */
LM_AVX512_TARGET static __attribute__((noinline)) __m512 lm_attn_exp16(__m512 x) {
  return lm_exp16(x);
}

/* Stores o * inv to dst in element order (o in lm_attn_kv16's order). */
LM_AVX512_INLINE void lm_attn_store_o(int NV, int KT, float *dst, const __m512 *o, __m512 inv) {
  if (!KT) {
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

/* The word at kw of a bf16 or e5m2 K region (KT 1, 2) for 16 keys (km:
 * which of them the region holds), widened: the pair's even dim in even,
 * its odd dim in odd. e5m2 goes through f16, whose top byte it is. */
LM_AVX512_INLINE void lm_attn_k_pair(int KT, const char *kw, __mmask16 km, __m512 *even,
                                     __m512 *odd) {
  if (KT == 2) {
    __m256i w = _mm256_maskz_loadu_epi16(km, kw);
    *even = _mm512_cvtph_ps(_mm256_slli_epi16(w, 8));
    *odd = _mm512_cvtph_ps(_mm256_and_si256(w, _mm256_set1_epi16((short)0xff00)));
  } else {
    __m512i w = _mm512_maskz_loadu_epi32(km, kw);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
  }
}

/* Scores of NR rows (queries q, head_dim = NV * 16 floats apart) against
 * the 16 keys at kw, the first word of a word-transposed K region (words
 * ws bytes apart; km: which of the keys the region holds): each row sums
 * q[d] k[d] in four accumulators by d mod 4, each in order of d, then
 * (a0 + a1) + (a2 + a3). A bf16 or e5m2 word widens to its even dim and
 * its odd one (lm_attn_k_pair). The sums do not depend on NR, so a row's
 * scores do not depend on the rows it is computed with. */
LM_AVX512_INLINE void lm_attn_qk(int NR, int NV, int KT, const float *q, const char *kw, size_t ws,
                                 __mmask16 km, __m512 *s) {
  __m512 a[4][4];
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
    for (int x = 0; x < 4; x++)
      a[r][x] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int d = 0; d < NV * 16; d += 4) {
    __m512 k[4];
    if (KT) {
      lm_attn_k_pair(KT, kw, km, &k[0], &k[1]);
      lm_attn_k_pair(KT, kw + ws, km, &k[2], &k[3]);
      kw += 2 * ws;
    } else {
#pragma GCC unroll 4
      for (int x = 0; x < 4; x++)
        k[x] = _mm512_maskz_loadu_ps(km, kw + x * ws);
      kw += 4 * ws;
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
      for (int x = 0; x < 4; x++)
        a[r][x] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * NV * 16 + d + x]), k[x], a[r][x]);
  }
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++)
    s[r] = _mm512_add_ps(_mm512_add_ps(a[r][0], a[r][1]), _mm512_add_ps(a[r][2], a[r][3]));
}

/* Pulls the line at a into L1 (l1) or L2. */
LM_AVX512_INLINE void lm_attn_pull(const char *a, int l1) {
  if (l1)
    _mm_prefetch(a, _MM_HINT_T0);
  else
    _mm_prefetch(a, _MM_HINT_T1);
}

/* Pulls a piece's K (k) or V (!k) into L1 (l1) or L2: the lines of its
 * keys in every word row of the K region (a piece's keys span at most two
 * lines of a row), or their V rows. */
LM_AVX512_INLINE void lm_attn_prefetch(const struct lm_attn_job *j, const struct lm_attn_chunk *ck,
                                       int pi, int k, int l1) {
  const struct lm_attn_piece *pc = &ck->piece[pi];
  if (k) {
    size_t wb = lm_cpu_k_word_bytes(j->dtype);
    int n_words = j->hd * (int)lm_dtype_size(j->dtype) / (int)wb;
    for (int w = 0; w < n_words; w++) {
      const char *a = pc->k + ((size_t)w * j->bs + pc->off) * wb, *e = a + (pc->n - 1) * wb;
      lm_attn_pull(a, l1);
      if (((uintptr_t)a ^ (uintptr_t)e) >= 64) lm_attn_pull(e, l1);
    }
    return;
  }
  size_t rb = (size_t)j->hd * lm_dtype_size(j->dtype);
  for (int t = 0; t < pc->n; t++)
    for (size_t x = 0; x < rb; x += 64)
      lm_attn_pull(ck->v[pc->k0 + t] + x, l1);
}

/* Step pi of a tile's prefetches while rows score chunk ck: with pk (the
 * first rows to score it), piece pi + 1's K into L1 and piece pi of the
 * next chunk (NULL: none) into L2; with pv (the last), piece pi's V into
 * L1 for the weighted sums that follow. Returns 0 once no step is left. */
LM_AVX512_INLINE int lm_attn_prefetch_step(const struct lm_attn_job *j,
                                           const struct lm_attn_chunk *ck,
                                           const struct lm_attn_chunk *next, int pi, int pk,
                                           int pv) {
  if (pv && pi < ck->n_pieces) lm_attn_prefetch(j, ck, pi, 0, 1);
  if (pk && pi + 1 < ck->n_pieces) lm_attn_prefetch(j, ck, pi + 1, 1, 1);
  if (pk && next && pi < next->n_pieces) {
    lm_attn_prefetch(j, next, pi, 1, 0);
    lm_attn_prefetch(j, next, pi, 0, 0);
  }
  return (pv && pi < ck->n_pieces) ||
         (pk && (pi + 1 < ck->n_pieces || (next && pi < next->n_pieces)));
}

/* NR consecutive rows of a tile against one chunk: their scores (queries
 * q, head_dim floats apart) and the online-softmax update. Row x reads the
 * chunk's first nv[x] keys (>= 1); afterwards sc[x] holds its
 * exp(score - new max) and alpha[x] exp(old max - new max), the factor of
 * its output so far. Each row's arithmetic is what it would be alone. */
LM_AVX512_INLINE void
lm_attn_rows_score(int NR, int NV, int KT, const struct lm_attn_job *j, const float *q,
                   const int *nv, const struct lm_attn_chunk *ck, const struct lm_attn_chunk *next,
                   int pk, int pv, float (*sc)[LM_ATTN_CHUNK], float *m, float *l, float *alpha) {
  size_t ws = (size_t)j->bs * lm_cpu_k_word_bytes(j->dtype);
  int nmax = 0;
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++)
    nmax = nv[r] > nmax ? nv[r] : nmax;
  int pi = 0;
  for (; pi < ck->n_pieces && ck->piece[pi].k0 < nmax; pi++) {
    const struct lm_attn_piece *pc = &ck->piece[pi];
    __mmask16 km = lm_cpu_lanes(pc->n);
    __m512 s[4];
    if (pk || pv) lm_attn_prefetch_step(j, ck, next, pi, pk, pv);
    lm_attn_qk(NR, NV, KT, q, pc->k + (size_t)pc->off * lm_cpu_k_word_bytes(j->dtype), ws, km, s);
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
      _mm512_mask_storeu_ps(sc[r] + pc->k0, km, _mm512_mul_ps(s[r], _mm512_set1_ps(j->scale)));
  }
  /* the steps of pieces these rows do not read (other rows of the tile
   * do), and of a next chunk's pieces beyond this one's */
  while ((pk || pv) && lm_attn_prefetch_step(j, ck, next, pi, pk, pv))
    pi++;
  /* the rows' new maxima, and exp(old - new) for all rows in one vector */
  float m_new[4], dm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++) {
    __m512 bmax = _mm512_set1_ps(-INFINITY);
    for (int c0 = 0; c0 < nv[r]; c0 += 16)
      bmax = _mm512_max_ps(bmax, _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY),
                                                     lm_cpu_lanes(nv[r] - c0), sc[r] + c0));
    float bm = _mm512_reduce_max_ps(bmax);
    m_new[r] = m[r] > bm ? m[r] : bm;
    dm[r] = m[r] - m_new[r];
  }
  _mm512_mask_storeu_ps(alpha, lm_cpu_lanes(NR),
                        lm_attn_exp16(_mm512_maskz_loadu_ps(lm_cpu_lanes(NR), dm)));
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++) {
    __m512 psum = _mm512_setzero_ps();
    for (int c0 = 0; c0 < nv[r]; c0 += 16) {
      __m512 p = _mm512_maskz_mov_ps(
          lm_cpu_lanes(nv[r] - c0),
          lm_attn_exp16(_mm512_sub_ps(_mm512_maskz_load_ps(lm_cpu_lanes(nv[r] - c0), sc[r] + c0),
                                      _mm512_set1_ps(m_new[r]))));
      _mm512_store_ps(sc[r] + c0, p);
      psum = _mm512_add_ps(psum, p);
    }
    l[r] = l[r] * alpha[r] + lm_hsum16(psum);
    m[r] = m_new[r];
  }
}

/* The same rows' weighted sums of the chunk's V: o = o * alpha + sum of
 * sc[i] v[i], the output vectors (in lm_attn_kv16's order) four at a time
 * in registers across the chunk's keys. */
LM_AVX512_INLINE void lm_attn_rows_pv(int NR, int NV, int KT, const int *nv,
                                      const struct lm_attn_chunk *ck,
                                      const float (*sc)[LM_ATTN_CHUNK], const float *alpha,
                                      __m512 (*o)[LM_ATTN_MAX_HD / 16]) {
  int nmin = LM_ATTN_CHUNK;
#pragma GCC unroll 4
  for (int r = 0; r < NR; r++)
    nmin = nv[r] < nmin ? nv[r] : nmin;
    /* not unrolled, so the accumulators stay in registers */
#pragma GCC unroll 1
  for (int d0 = 0; d0 < NV; d0 += 4) {
    const int DV = NV - d0 < 4 ? NV - d0 : 4;
    __m512 ov[4][4] = {{_mm512_setzero_ps()}};
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
      for (int x = 0; x < DV; x++)
        ov[r][x] = _mm512_mul_ps(o[r][d0 + x], _mm512_set1_ps(alpha[r]));
    /* the keys every row reads, then the rest of the diagonal chunk's,
     * which only some rows read, row by row */
    for (int i = 0; i < nmin; i++) {
      __m512 v[4];
#pragma GCC unroll 4
      for (int x = 0; x < DV; x++)
        v[x] = lm_attn_kv16(KT, ck->v[i], d0 + x);
#pragma GCC unroll 4
      for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int x = 0; x < DV; x++)
          ov[r][x] = _mm512_fmadd_ps(_mm512_set1_ps(sc[r][i]), v[x], ov[r][x]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
      for (int i = nmin; i < nv[r]; i++)
#pragma GCC unroll 4
        for (int x = 0; x < DV; x++)
          ov[r][x] = _mm512_fmadd_ps(_mm512_set1_ps(sc[r][i]), lm_attn_kv16(KT, ck->v[i], d0 + x),
                                     ov[r][x]);
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
      for (int x = 0; x < DV; x++)
        o[r][d0 + x] = ov[r][x];
  }
}

/* How many rows from r go through a chunk together: the run of rows that
 * read it (nv > 0), four, two or one. */
static inline int lm_attn_run(const int *nv, int r, int n_rows) {
  int n = 1;
  while (n < 4 && r + n < n_rows && nv[r + n] > 0)
    n++;
  return n == 4 ? 4 : n >= 2 ? 2 : 1;
}

/* The tile: chunk by chunk, the scores of the rows that read the chunk
 * four (then two, then one) at a time, then their weighted sums of V, so
 * that K and the queries are in L1 for the one and V and the outputs for
 * the other; then the outputs. */
LM_AVX512_INLINE void lm_attn_tile_avx512_nv(int NV, int KT, const struct lm_attn_job *j,
                                             const struct lm_attn_tile *tl) {
  const struct lm_batch *b = j->b;
  int n_rows = (tl->t1 - tl->t0) * tl->nh;
  int pos[LM_ATTN_ROWS], nv[LM_ATTN_ROWS];
  float m[LM_ATTN_ROWS], l[LM_ATTN_ROWS], alpha[LM_ATTN_ROWS];
  float sc[LM_ATTN_ROWS][LM_ATTN_CHUNK] __attribute__((aligned(64)));
  /* the rows' queries, head_dim floats apart */
  float qr[LM_ATTN_ROWS * LM_ATTN_MAX_HD] __attribute__((aligned(64)));
  /* o: [n_rows, head_dim] running weighted sum of V */
  __m512 o[LM_ATTN_ROWS][LM_ATTN_MAX_HD / 16];
  struct lm_attn_chunk ck[2];
  int pmax = lm_attn_rows_init(j, tl, n_rows, pos, m, l);
  for (int r = 0; r < n_rows; r++) {
    const float *src = j->q + lm_attn_row_off(j, tl, r);
#pragma GCC unroll 16
    for (int d = 0; d < NV; d++) {
      _mm512_store_ps(qr + (r * NV + d) * 16, _mm512_loadu_ps(src + 16 * d));
      o[r][d] = _mm512_setzero_ps();
    }
  }
  const int32_t *table = b->block_tables + (size_t)tl->s * b->max_blocks;
  /* a sequence's blocks may lie anywhere in the pool (consecutive ones are
   * a kv head's stream, others are not), so the chunk after the one being
   * scored is described too, for lm_attn_rows_score's prefetches (pulling a
   * whole chunk at once, or only into L2, was slower) */
  lm_attn_chunk_init(j, tl, table, 0, pmax, &ck[0]);
  for (int base = 0, c = 0; base <= pmax; base += LM_ATTN_CHUNK, c ^= 1) {
    const struct lm_attn_chunk *next = lm_attn_next_chunk(j, tl, table, base, pmax, ck, c);
    /* the groups of rows that read the chunk: g0[x], g0[x] + 1, ... */
    int g0[LM_ATTN_ROWS], ng = 0;
    for (int r = 0; r < n_rows; r++) {
      int n = pos[r] + 1 - base;
      nv[r] = n < LM_ATTN_CHUNK ? n : LM_ATTN_CHUNK;
    }
    for (int r = 0; r<n_rows; r += nv[r]> 0 ? lm_attn_run(nv, r, n_rows) : 1)
      if (nv[r] > 0) g0[ng++] = r;
    for (int x = 0; x < ng; x++) {
      int r = g0[x], nr = lm_attn_run(nv, r, n_rows), pk = x == 0, pv = x == ng - 1;
      const float *q = qr + r * NV * 16;
      if (nr == 4)
        lm_attn_rows_score(4, NV, KT, j, q, nv + r, &ck[c], next, pk, pv, sc + r, m + r, l + r,
                           alpha + r);
      else if (nr == 2)
        lm_attn_rows_score(2, NV, KT, j, q, nv + r, &ck[c], next, pk, pv, sc + r, m + r, l + r,
                           alpha + r);
      else
        lm_attn_rows_score(1, NV, KT, j, q, nv + r, &ck[c], next, pk, pv, sc + r, m + r, l + r,
                           alpha + r);
    }
    for (int x = 0; x < ng; x++) {
      int r = g0[x], nr = lm_attn_run(nv, r, n_rows);
      const float(*s)[LM_ATTN_CHUNK] = (const float(*)[LM_ATTN_CHUNK])(sc + r);
      if (nr == 4)
        lm_attn_rows_pv(4, NV, KT, nv + r, &ck[c], s, alpha + r, o + r);
      else if (nr == 2)
        lm_attn_rows_pv(2, NV, KT, nv + r, &ck[c], s, alpha + r, o + r);
      else
        lm_attn_rows_pv(1, NV, KT, nv + r, &ck[c], s, alpha + r, o + r);
    }
  }
  for (int r = 0; r < n_rows; r++) {
    float *dst = j->out + lm_attn_row_off(j, tl, r);
    lm_attn_store_o(NV, KT, dst, o[r], _mm512_set1_ps(l[r] > 0.0f ? 1.0f / l[r] : 0.0f));
  }
}

/* The tile at NV and KT fixed: head_dim / 16 vectors (a multiple of 1, 2
 * or 4 for f32, bf16 or e5m2: lm_cpu_attention takes the AVX-512 path only
 * then, and up to LM_ATTN_MAX_HD) and the stored type. */
LM_AVX512_TARGET static void lm_attn_tile_avx512(const struct lm_attn_job *j,
                                                 const struct lm_attn_tile *tl) {
  int kt = j->dtype == LM_DTYPE_F8E5M2 ? 2 : j->dtype == LM_DTYPE_BF16;
#define LM_ATTN_CASE(KT, NV)                                                                       \
  case (KT) << 5 | (NV): lm_attn_tile_avx512_nv(NV, KT, j, tl); break
  switch (kt << 5 | j->hd / 16) {
    LM_ATTN_CASE(0, 1);
    LM_ATTN_CASE(0, 2);
    LM_ATTN_CASE(0, 3);
    LM_ATTN_CASE(0, 4);
    LM_ATTN_CASE(0, 5);
    LM_ATTN_CASE(0, 6);
    LM_ATTN_CASE(0, 7);
    LM_ATTN_CASE(0, 8);
    LM_ATTN_CASE(0, 9);
    LM_ATTN_CASE(0, 10);
    LM_ATTN_CASE(0, 11);
    LM_ATTN_CASE(0, 12);
    LM_ATTN_CASE(0, 13);
    LM_ATTN_CASE(0, 14);
    LM_ATTN_CASE(0, 15);
    LM_ATTN_CASE(0, 16);
    LM_ATTN_CASE(1, 2);
    LM_ATTN_CASE(1, 4);
    LM_ATTN_CASE(1, 6);
    LM_ATTN_CASE(1, 8);
    LM_ATTN_CASE(1, 10);
    LM_ATTN_CASE(1, 12);
    LM_ATTN_CASE(1, 14);
    LM_ATTN_CASE(1, 16);
    LM_ATTN_CASE(2, 4);
    LM_ATTN_CASE(2, 8);
    LM_ATTN_CASE(2, 12);
    LM_ATTN_CASE(2, 16);
  default: break;
  }
#undef LM_ATTN_CASE
}

/* ---- AMX tiles ----------------------------------------------------------
 *
 * A bf16 cache in blocks of a multiple of 16 keys, head_dim a multiple of
 * 32 (lm_cpu_attn_amx). A K region's 16 words from 16 s, for the 16 keys
 * of a piece, are a B tile of dims 32 s .. 32 s + 31 by 16 keys. V regions
 * are stored by pairs of keys, so 16 rows from a multiple of 32 keys are a
 * B tile of 32 keys by 16 dims: read in place where those keys lie whole
 * in consecutive memory (a block of 32 or more, or consecutive blocks of a
 * kv head) and the tile has more than 16 rows, else from a copy (its keys
 * past the chunk's last zeroed), whatever the block size. The queries and
 * the probabilities are split into two bf16 halves, x = hi + lo with lo =
 * bf16(x - hi) and hi = bf16(x) (queries) or x cut to its top 16 bits
 * (probabilities), which hold x to about 2^-16 of it: the tile products
 * are then about as exact as f32 FMAs (a single bf16 rounding of either
 * gives 1e-3 errors on attention outputs). A tile's rows go through each
 * chunk up to 16 at a time: scores S = Q K^T, the pieces side by side in
 * four accumulators, each adding the high then the low half of every 32
 * dims in order (the queries scaled to log2 units beforehand); the
 * online-softmax update in f32, in powers of 2, its maxima, factors and
 * sums 16 rows at a time; then P V, 32 keys a product (hi then lo),
 * accumulated onto 16 dims of each row's output a tile, four tiles at a
 * time. A row's softmax reference moves only when a chunk's maximum passes
 * it by more than LM_ATTN_AMX_LAG (its probabilities are then at most 2^8,
 * which the halves hold as well): until then alpha is exactly 1 and the
 * output is not rescaled, only added to. Every product and every reduction
 * is row by row, so a row's result is its own whatever the other rows of
 * its tile, and the same in blocks of 16 or 32 keys. Keys past a row's own
 * are 0 in P; V is read in place only for keys up to the chunk's last (all
 * written) and is 0 past it in a copy, so no stale slot reaches a sum. */

/* Tiles 0-3 accumulate (rows x 16 keys of S, or x 16 dims of O), 4 and 5
 * hold the A operand's halves (rows x 32 dims of Q, or x 32 keys of P),
 * 6 the B operand (16 pairs x 16 keys of K, or x 16 dims of V). */
LM_AMX_TARGET static void lm_attn_amx_configure(struct lm_amx_cfg *have, int rows) {
  struct lm_amx_cfg c;
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 6; t++) {
    c.rows[t] = (uint8_t)rows;
    c.colsb[t] = 64;
  }
  c.rows[6] = 16;
  c.colsb[6] = 64;
  lm_amx_load_cfg(have, &c);
}

/* The V of chunk ck's keys 32 g .. 32 g + 31 as P V's B operand: 16 pair
 * rows ([2][hd] bf16 values each, hd * 2 apart). Where in_place and the
 * chunk's pieces 2 g and 2 g + 1 are whole (16 keys each, so all in the
 * context) and lie one after the other in the cache, as consecutive blocks
 * of a kv head do, the rows are read there; else they are staged into vs,
 * zero past the chunk's last key, and read from it. */
LM_AMX_TARGET static const uint16_t *lm_attn_amx_v(uint16_t *vs, const struct lm_attn_chunk *ck,
                                                   int hd, int g, int in_place) {
  const size_t pair = (size_t)hd * 2; /* bf16 values a pair row */
  const struct lm_attn_piece *pc = &ck->piece[2 * g];
  if (in_place && 2 * g + 1 < ck->n_pieces && pc[0].n == 16 && pc[1].n == 16 &&
      ck->v[pc[1].k0] == ck->v[pc[0].k0] + 8 * pair * 2)
    return (const uint16_t *)ck->v[pc[0].k0];
  uint16_t *dst = vs + (size_t)g * 16 * pair;
  for (int h = 0; h < 2; h++, pc++) {
    uint16_t *to = dst + (size_t)h * 8 * pair;
    if (2 * g + h >= ck->n_pieces) {
      memset(to, 0, 8 * pair * 2);
      continue;
    }
    const char *src = ck->v[pc->k0];
    if (pc->n == 16) {
      memcpy(to, src, 8 * pair * 2);
      continue;
    }
    for (int i = 0; i < 8; i++)
      for (int d = 0; d < hd; d += 16) {
        __m512i w = _mm512_loadu_si512(src + ((size_t)i * hd + d) * 4);
        if (2 * i + 1 >= pc->n)
          w = 2 * i < pc->n ? _mm512_and_si512(w, _mm512_set1_epi32(0xffff))
                            : _mm512_setzero_si512();
        _mm512_store_si512(to + (size_t)i * pair + 2 * d, w);
      }
  }
  return dst;
}

/* x as bf16 halves: hi = bf16(x), lo = bf16(x - hi). */
LM_AMX_TARGET static inline void lm_attn_amx_split(__m512 x, uint16_t *hi, uint16_t *lo) {
  __m256bh h = _mm512_cvtneps_pbh(x);
  __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
  _mm256_store_si256((__m256i *)hi, (__m256i)h);
  _mm256_store_si256((__m256i *)lo, (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, hf)));
}

/* 32 values (x0, then x1) as bf16 halves for P: hi = x with its low 16
 * bits cut (exact in bf16), lo = bf16(x - hi); they hold x to about 2^-16
 * of it, as lm_attn_amx_split does. */
LM_AMX_TARGET static inline void lm_attn_amx_split32(__m512 x0, __m512 x1, uint16_t *hi,
                                                     uint16_t *lo) {
  const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
  __m512 h0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), top));
  __m512 h1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), top));
  _mm512_store_si512(hi, (__m512i)_mm512_cvtne2ps_pbh(h1, h0));
  _mm512_store_si512(lo,
                     (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0)));
}

/* 2^x to about 2 ulp (Cephes' exp2f polynomial on [-1/2, 1/2], scaled by
 * 2^n with scalef); very negative x gives 0. */
LM_AVX512_INLINE __m512 lm_exp2_16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
  __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

/* Lane r of the result: the maximum (max) or the sum of v[r]'s 16 lanes,
 * for 16 rows at once; each row's by the same tree, whatever the others
 * hold. */
LM_AVX512_INLINE __m512 lm_attn_rows16(const __m512 *v, int max) {
#define LM_ATTN_OP(a, b) (max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b))
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; i++) /* rows 2i, 2i + 1 in each 128-bit lane */
    x[i] = LM_ATTN_OP(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                      _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++) { /* rows 4i .. 4i + 3 in each 128-bit lane */
    __m512d c = _mm512_castps_pd(x[2 * i]), d = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = LM_ATTN_OP(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
                      _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  for (int i = 0; i < 2; i++) /* rows 8i .. 8i + 3, then 8i + 4 .. 8i + 7, over half lanes */
    z[i] = LM_ATTN_OP(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                      _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xdd));
  return LM_ATTN_OP(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xdd));
#undef LM_ATTN_OP
}

/* The online-softmax update of rows 0 .. nr - 1 (states m and l, nr of
 * each) against a chunk: row r's scores (scaled) are sc[r], of which it
 * reads the first nv[r]; ph[r] and pl[r] get the halves of its
 * probabilities over n16 keys (0 past nv[r]) and alpha[r] its output's
 * factor. The rows' maxima, factors and sums go 16 lanes at a time.
 * Returns the rows whose reference moved (alpha not 1). */
LM_AMX_TARGET static __mmask16 lm_attn_amx_softmax(const float (*sc)[LM_ATTN_CHUNK], const int *nv,
                                                   int nr, int n16, uint16_t (*ph)[LM_ATTN_CHUNK],
                                                   uint16_t (*pl)[LM_ATTN_CHUNK], float *alpha,
                                                   float *m, float *l) {
  __m512 v[16], ninf = _mm512_set1_ps(-INFINITY);
  float mn[16] __attribute__((aligned(64)));
  __mmask16 rows = lm_cpu_lanes(nr);
  for (int r = 0; r < 16; r++) {
    v[r] = ninf;
    for (int c0 = 0; r < nr && c0 < nv[r]; c0 += 16)
      v[r] = _mm512_mask_max_ps(v[r], lm_cpu_lanes(nv[r] - c0), v[r], _mm512_load_ps(sc[r] + c0));
  }
  __m512 mo = _mm512_mask_loadu_ps(ninf, rows, m), bm = lm_attn_rows16(v, 1);
  /* a row's reference moves only when the chunk's maximum passes it by
   * more than 2^8 (or it has none yet): otherwise alpha is exactly 1 */
  __mmask16 move =
      _mm512_cmp_ps_mask(bm, _mm512_add_ps(mo, _mm512_set1_ps(LM_ATTN_AMX_LAG)), _CMP_GT_OQ) & rows;
  __m512 mnew = _mm512_mask_blend_ps(move, mo, bm);
  __m512 a = _mm512_mask_blend_ps(move, _mm512_set1_ps(1.0f), lm_exp2_16(_mm512_sub_ps(mo, mnew)));
  _mm512_store_ps(mn, mnew);
  for (int r = 0; r < 16; r++) {
    v[r] = _mm512_setzero_ps();
    if (r >= nr) continue;
    if (nv[r] <= 0) {
      memset(ph[r], 0, sizeof(ph[r]));
      memset(pl[r], 0, sizeof(pl[r]));
      continue;
    }
    __m512 b = _mm512_set1_ps(mn[r]);
    for (int c0 = 0; c0 < n16; c0 += 32) {
      __m512 e0 = _mm512_maskz_mov_ps(lm_cpu_lanes(nv[r] - c0),
                                      lm_exp2_16(_mm512_sub_ps(_mm512_load_ps(sc[r] + c0), b)));
      __m512 e1 =
          _mm512_maskz_mov_ps(lm_cpu_lanes(nv[r] - c0 - 16),
                              lm_exp2_16(_mm512_sub_ps(_mm512_load_ps(sc[r] + c0 + 16), b)));
      lm_attn_amx_split32(e0, e1, ph[r] + c0, pl[r] + c0);
      v[r] = _mm512_add_ps(v[r], _mm512_add_ps(e0, e1));
    }
  }
  _mm512_mask_storeu_ps(alpha, rows, a);
  _mm512_mask_storeu_ps(
      l, rows,
      _mm512_fmadd_ps(_mm512_mask_loadu_ps(_mm512_setzero_ps(), rows, l), a, lm_attn_rows16(v, 0)));
  _mm512_mask_storeu_ps(m, rows, mnew);
  return move;
}

/* Rows r .. r + nr - 1 (nr <= 16) of a tile (their queries' halves qh and
 * ql, outputs o, head_dim apart) against chunk ck, of which the row r + x
 * reads the first nv[x] keys, and whose keys 32 g .. 32 g + 31 have their V
 * at vg[g] (lm_attn_amx_v). */
LM_AMX_TARGET static void lm_attn_amx_rows(const struct lm_attn_job *j,
                                           const struct lm_attn_chunk *ck, const int *nv,
                                           const uint16_t *qh, const uint16_t *ql, float *o,
                                           float *m, float *l, int nr, const uint16_t *const *vg,
                                           struct lm_amx_cfg *have) {
  const int hd = j->hd;
  float sc[16][LM_ATTN_CHUNK] __attribute__((aligned(64)));
  uint16_t ph[16][LM_ATTN_CHUNK] __attribute__((aligned(64)));
  uint16_t pl[16][LM_ATTN_CHUNK] __attribute__((aligned(64)));
  float alpha[16];
  int nmax = 0, np = 0;
  for (int r = 0; r < nr; r++)
    nmax = nv[r] > nmax ? nv[r] : nmax;
  if (nmax <= 0) return;
  while (np < ck->n_pieces && ck->piece[np].k0 < nmax)
    np++;
  lm_attn_amx_configure(have, nr);
  /* S = Q K^T, a piece an accumulator, 32 dims at a time */
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int s = 0; s < hd / 32; s++) {
    _tile_loadd(4, qh + 32 * s, (size_t)hd * 2);
    _tile_loadd(5, ql + 32 * s, (size_t)hd * 2);
#define LM_ATTN_AMX_QK(T)                                                                          \
  if ((T) < np) {                                                                                  \
    const struct lm_attn_piece *pc = &ck->piece[T];                                                \
    _tile_loadd(6, pc->k + ((size_t)16 * s * j->bs + pc->off) * 4, (size_t)j->bs * 4);             \
    _tile_dpbf16ps(T, 4, 6);                                                                       \
    _tile_dpbf16ps(T, 5, 6);                                                                       \
  }
    LM_ATTN_AMX_QK(0)
    LM_ATTN_AMX_QK(1)
    LM_ATTN_AMX_QK(2)
    LM_ATTN_AMX_QK(3)
#undef LM_ATTN_AMX_QK
  }
  _tile_stored(0, sc[0], LM_ATTN_CHUNK * sizeof(float));
  if (np > 1) _tile_stored(1, sc[0] + 16, LM_ATTN_CHUNK * sizeof(float));
  if (np > 2) _tile_stored(2, sc[0] + 32, LM_ATTN_CHUNK * sizeof(float));
  if (np > 3) _tile_stored(3, sc[0] + 48, LM_ATTN_CHUNK * sizeof(float));
  int n_ks = (nmax + 31) / 32; /* k steps of P V */
  __mmask16 move = lm_attn_amx_softmax((const float(*)[LM_ATTN_CHUNK])sc, nv, nr, 32 * n_ks, ph, pl,
                                       alpha, m, l);
  for (int r = 0; move; r++, move >>= 1)
    if (move & 1)
      for (int d = 0; d < hd; d += 16) {
        float *dst = o + (size_t)r * hd + d;
        _mm512_store_ps(dst, _mm512_mul_ps(_mm512_load_ps(dst), _mm512_set1_ps(alpha[r])));
      }
  /* O += P V, 64 dims (4 accumulators, loaded from o) at a time, or the
   * last 32 */
  const size_t vstride = (size_t)hd * 4, ostride = (size_t)hd * sizeof(float);
  for (int d0 = 0; d0 < hd; d0 += 64) {
    int nd = hd - d0 >= 64 ? 4 : 2;
    _tile_loadd(0, o + d0, ostride);
    _tile_loadd(1, o + d0 + 16, ostride);
    if (nd == 4) {
      _tile_loadd(2, o + d0 + 32, ostride);
      _tile_loadd(3, o + d0 + 48, ostride);
    }
    for (int ks = 0; ks < n_ks; ks++) {
      const uint16_t *v = vg[ks] + (size_t)d0 * 2;
      _tile_loadd(4, ph[0] + 32 * ks, LM_ATTN_CHUNK * sizeof(uint16_t));
      _tile_loadd(5, pl[0] + 32 * ks, LM_ATTN_CHUNK * sizeof(uint16_t));
      _tile_loadd(6, v, vstride);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(0, 5, 6);
      _tile_loadd(6, v + 32, vstride);
      _tile_dpbf16ps(1, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
      if (nd == 4) {
        _tile_loadd(6, v + 64, vstride);
        _tile_dpbf16ps(2, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        _tile_loadd(6, v + 96, vstride);
        _tile_dpbf16ps(3, 4, 6);
        _tile_dpbf16ps(3, 5, 6);
      }
    }
    _tile_stored(0, o + d0, ostride);
    _tile_stored(1, o + d0 + 16, ostride);
    if (nd == 4) {
      _tile_stored(2, o + d0 + 32, ostride);
      _tile_stored(3, o + d0 + 48, ostride);
    }
  }
}

/* The tile: the queries' halves (scaled to log2 units: the softmax takes
 * powers of 2), then chunk by chunk where its V is read (lm_attn_amx_v)
 * and its rows 16 at a time; then the outputs. A chunk is read from
 * memory once for up to LM_ATTN_AMX_ROWS rows, without prefetches: on AMX
 * they cost more than they saved (in decode too). */
LM_AMX_TARGET static void lm_attn_tile_amx(const struct lm_attn_job *j,
                                           const struct lm_attn_tile *tl) {
  const int hd = j->hd;
  int n_rows = (tl->t1 - tl->t0) * tl->nh;
  int pos[LM_ATTN_AMX_ROWS], nv[LM_ATTN_AMX_ROWS];
  float m[LM_ATTN_AMX_ROWS], l[LM_ATTN_AMX_ROWS];
  uint16_t qh[LM_ATTN_AMX_ROWS * LM_ATTN_MAX_HD] __attribute__((aligned(64)));
  uint16_t ql[LM_ATTN_AMX_ROWS * LM_ATTN_MAX_HD] __attribute__((aligned(64)));
  uint16_t vs[LM_ATTN_CHUNK * LM_ATTN_MAX_HD] __attribute__((aligned(64)));
  float o[LM_ATTN_AMX_ROWS * LM_ATTN_MAX_HD] __attribute__((aligned(64)));
  struct lm_attn_chunk ck;
  struct lm_amx_cfg have;
  memset(&have, 0, sizeof(have));
  int pmax = lm_attn_rows_init(j, tl, n_rows, pos, m, l);
  __m512 scale = _mm512_set1_ps(j->scale * 1.44269504088896341f); /* scores in log2 units */
  for (int r = 0; r < n_rows; r++) {
    const float *src = j->q + lm_attn_row_off(j, tl, r);
    for (int d = 0; d < hd; d += 16) {
      lm_attn_amx_split(_mm512_mul_ps(_mm512_loadu_ps(src + d), scale), qh + (size_t)r * hd + d,
                        ql + (size_t)r * hd + d);
      _mm512_store_ps(o + (size_t)r * hd + d, _mm512_setzero_ps());
    }
  }
  const int32_t *table = j->b->block_tables + (size_t)tl->s * j->b->max_blocks;
  /* V in place only for many rows: for a few (decode), the copy's loads
   * bring V from memory faster than the tile loads do */
  const int in_place = n_rows > 16;
  for (int base = 0; base <= pmax; base += LM_ATTN_CHUNK) {
    lm_attn_chunk_init(j, tl, table, base, pmax, &ck);
    for (int r = 0; r < n_rows; r++) {
      int k = pos[r] + 1 - base;
      nv[r] = k < LM_ATTN_CHUNK ? k : LM_ATTN_CHUNK;
    }
    const uint16_t *vg[LM_ATTN_CHUNK / 32];
    for (int g = 0; 32 * g < 16 * ck.n_pieces; g++)
      vg[g] = lm_attn_amx_v(vs, &ck, hd, g, in_place);
    for (int r = 0; r < n_rows; r += 16) {
      int nr = n_rows - r < 16 ? n_rows - r : 16;
      lm_attn_amx_rows(j, &ck, nv + r, qh + (size_t)r * hd, ql + (size_t)r * hd, o + (size_t)r * hd,
                       m + r, l + r, nr, vg, &have);
    }
  }
  if (have.palette) _tile_release();
  for (int r = 0; r < n_rows; r++) {
    float *dst = j->out + lm_attn_row_off(j, tl, r);
    __m512 inv = _mm512_set1_ps(l[r] > 0.0f ? 1.0f / l[r] : 0.0f);
    for (int d = 0; d < hd; d += 16)
      _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_load_ps(o + (size_t)r * hd + d), inv));
  }
}

/* ---- portable fallback (same algorithm, scalar) ------------------------ */

static void lm_attn_tile_scalar(const struct lm_attn_job *j, const struct lm_attn_tile *tl) {
  const struct lm_batch *b = j->b;
  const int hd = j->hd, bs = j->bs;
  int n_rows = (tl->t1 - tl->t0) * tl->nh;
  int pos[LM_ATTN_ROWS];
  float m[LM_ATTN_ROWS], l[LM_ATTN_ROWS], sc[LM_ATTN_CHUNK];
  float o[LM_ATTN_ROWS][LM_ATTN_MAX_HD]; /* [n_rows, head_dim] */
  struct lm_attn_chunk ck;
  int pmax = lm_attn_rows_init(j, tl, n_rows, pos, m, l);
  for (int r = 0; r < n_rows; r++)
    for (int d = 0; d < hd; d++)
      o[r][d] = 0.0f;
  const int32_t *table = b->block_tables + (size_t)tl->s * b->max_blocks;
  for (int base = 0; base <= pmax; base += LM_ATTN_CHUNK) {
    lm_attn_chunk_init(j, tl, table, base, pmax, &ck);
    for (int r = 0; r < n_rows; r++) {
      int n_valid;
      const float *q = lm_attn_row_q(j, tl, r, pos[r] + 1 - base, &n_valid);
      if (!q) continue;
      float bmax = -INFINITY, psum = 0.0f;
      for (int pi = 0; pi < ck.n_pieces && ck.piece[pi].k0 < n_valid; pi++) {
        const struct lm_attn_piece *pc = &ck.piece[pi];
        for (int i = pc->k0; i < pc->k0 + pc->n && i < n_valid; i++) {
          float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* by d mod 4, as the AVX-512 path */
          for (int d = 0; d < hd; d++)
            acc[d % 4] += q[d] * lm_cpu_elem(pc->k, j->dtype,
                                             lm_cpu_k_index(pc->off + i - pc->k0, d, bs, j->dtype));
          sc[i] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * j->scale;
          bmax = sc[i] > bmax ? sc[i] : bmax;
        }
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
          o[r][d] += sc[i] * lm_cpu_elem(ck.v[i], j->dtype, (size_t)d);
    }
  }
  for (int r = 0; r < n_rows; r++) {
    float *dst = j->out + lm_attn_row_off(j, tl, r);
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
  if (j->amx)
    lm_attn_tile_amx(j, &tl);
  else if (j->avx512)
    lm_attn_tile_avx512(j, &tl);
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
      .n_blocks = shape->n_blocks,
      .hd = shape->head_dim,
      .bs = shape->block_size,
      .group = n_heads / shape->n_kv_heads,
      .scale = scale,
      .avx512 = cpu->avx512 && shape->head_dim % (64 / (int)lm_dtype_size(shape->dtype)) == 0 &&
                shape->head_dim <= LM_ATTN_MAX_HD,
      .amx = lm_cpu_attn_amx(cpu, shape)};
  if (b->n_seqs <= 0 || j.group <= 0) return;
  j.rows = j.amx ? LM_ATTN_AMX_ROWS : LM_ATTN_ROWS;
  j.n_htile = (j.group + j.rows - 1) / j.rows;
  j.h_tile = (j.group + j.n_htile - 1) / j.n_htile;
  j.q_tile = j.rows / j.h_tile;
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
