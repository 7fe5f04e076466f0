/* attention.cu - paged causal attention over the KV pool, bf16 in and out,
 * f32 arithmetic.
 *
 * The unit of work is one (query row, head) "row": a warp owns a row and
 * walks its keys 0..p in tiles of 32 keys at absolute offsets (0, 32, ...),
 * grouped into splits at absolute offsets (attention.cuh: 0, 128, ...,
 * 2048, 2560, ...): at batch 1 a 2k context is 16 splits a KV head,
 * decoded in parallel. A split's partial softmax state (m, l, acc) is built by
 * lm_attn_tile from an empty state over the split's tiles in order, and the
 * partials are folded left in split order by lm_attn_combine into an empty
 * state; out = acc / l. Every operation of both functions is an explicitly
 * rounded intrinsic (__fmaf_rn, __fmul_rn, __fadd_rn), expf, a max or a
 * fixed xor butterfly, so the compiler cannot contract or reorder anything
 * differently in the two kernels that inline them. A row's bits thus
 * depend on its q and its keys alone, whichever kernel runs it and
 * whatever else is in the batch.
 *
 * Both kernels stage each 32-key tile of K and V in shared memory once for
 * all the rows of a block, with asynchronous copies (cp.async) two tiles
 * deep, so the next tile's reads overlap this tile's arithmetic.
 *
 * Decodes (a sequence with one query token): there is only one row per
 * head, so parallelism comes from the splits. lm_attn_decode_kernel gives
 * each (sequence, split, KV head) a block, a warp per query head of the
 * group, and writes each split's partial to the workspace;
 * lm_attn_fold_kernel folds a row's partials in split order and writes out.
 *
 * Prefill chunks (more than one query token): many rows share the same
 * keys, so lm_attn_prefill_kernel gives a block the rows of a few
 * consecutive tokens and the query heads of one KV head (a warp owns one
 * row, or LM_ATTN_PREFILL_ROWS rows of one head and consecutive tokens in
 * steps long enough to fill the device that way), and each warp folds its
 * splits as it goes. Blocks are laid over the step's tokens (not
 * over sequences x longest chunk), so a step of one long chunk and many
 * decodes launches few idle blocks; a block whose tokens span sequences
 * takes them one sequence at a time.
 *
 * K and V rows are read 16 bytes at a time: the pool's base must be
 * 16-byte aligned (cudaMalloc's is), and head_dim a multiple of 32 makes
 * every row so. */
#include "kernels/attention.cuh"

#include <math.h>
#include <stdint.h>

#include <atomic>

#include "kernels/cuda_check.cuh"

#define LM_ATTN_TILE          32 /* keys per tile: one per lane */
#define LM_ATTN_DECODE_WARPS  4  /* warps (rows) per block in the fold kernel */
#define LM_ATTN_PREFILL_WARPS 8  /* warps per block in the prefill kernel */
#define LM_ATTN_PREFILL_ROWS  4  /* rows per warp in the prefill kernel, for long chunks */
#define LM_ATTN_PAD           8 /* bf16 after each staged K/V row: keeps 16-byte rows, spreads banks */
#define LM_ATTN_FULL          0xffffffffu

/* One row's online-softmax state; lane i's acc[c] is dim i + 32 c. NV (a
 * power of two, at least head_dim / 32) sizes the registers it takes; only
 * the first head_dim / 32 are used. */
template <int NV> struct lm_attn_part {
  float m;       /* largest score so far (-inf: no key yet) */
  float l;       /* sum of exp(score - m) */
  float acc[NV]; /* sum of exp(score - m) * v, this lane's dims */
};

/* What every kernel reads; the pointers are device pointers. */
struct lm_attn_args {
  uint16_t *out;               /* [T, n_heads, head_dim] */
  const uint16_t *q;           /* [T, n_heads, head_dim] */
  const uint16_t *k;           /* this layer's K: [n_blocks, n_kv_heads, block_size, head_dim] */
  const uint16_t *v;           /* this layer's V: same */
  const int32_t *q_start;      /* [S + 1] */
  const int32_t *positions;    /* [T] */
  const int32_t *seq_of_token; /* [T] */
  const int32_t *block_tables; /* [S, max_blocks] */
  float *ws;                   /* [S, max_splits, n_heads, 2 + head_dim] decode partials */
  int n_tokens, n_seqs, max_blocks;
  int n_heads, n_kv, group, hd, bs;
  int max_ctx_len, max_splits;
  int heads_per_block, tokens_per_block; /* prefill: a block's rows */
  float scale;
};

template <int NV> static __device__ __forceinline__ void lm_attn_empty(struct lm_attn_part<NV> *a) {
  a->m = -INFINITY;
  a->l = 0.0f;
#pragma unroll
  for (int c = 0; c < NV; c++)
    a->acc[c] = 0.0f;
}

/* ---- splits (attention.cuh) ---------------------------------------------- */

#define LM_ATTN_FINE_SPLITS (LM_CUDA_ATTN_FINE_KEYS / LM_CUDA_ATTN_SPLIT_KEYS)

/* The first key of split i. */
static __host__ __device__ __forceinline__ long long lm_attn_split_start(int i) {
  return i <= LM_ATTN_FINE_SPLITS ? (long long)i * LM_CUDA_ATTN_SPLIT_KEYS
                                  : LM_CUDA_ATTN_FINE_KEYS + (long long)(i - LM_ATTN_FINE_SPLITS) *
                                                                 LM_CUDA_ATTN_LONG_SPLIT_KEYS;
}

/* The splits keys 0..p span (0 when p < 0). */
static __host__ __device__ __forceinline__ int lm_attn_n_splits(long long p) {
  if (p < 0) return 0;
  if (p < LM_CUDA_ATTN_FINE_KEYS) return (int)(p / LM_CUDA_ATTN_SPLIT_KEYS) + 1;
  return LM_ATTN_FINE_SPLITS + (int)((p - LM_CUDA_ATTN_FINE_KEYS) / LM_CUDA_ATTN_LONG_SPLIT_KEYS) +
         1;
}

/* Whether key k > 0 begins a split (k a multiple of the 32-key tile). */
static __device__ __forceinline__ bool lm_attn_split_begins(int k) {
  return k > 0 && (k < LM_CUDA_ATTN_FINE_KEYS
                       ? k % LM_CUDA_ATTN_SPLIT_KEYS == 0
                       : (k - LM_CUDA_ATTN_FINE_KEYS) % LM_CUDA_ATTN_LONG_SPLIT_KEYS == 0);
}

/* The last key token t reads: its position, clamped so that a bad position
 * can neither read past its block table nor need a split the decode grid
 * has no room for (both bounds hold for every valid batch). */
static __device__ __forceinline__ int lm_attn_last_key(const struct lm_attn_args &a, int t) {
  long long cap = (long long)a.max_blocks * a.bs;
  if (cap > a.max_ctx_len) cap = a.max_ctx_len;
  int p = a.positions[t];
  return (long long)p < cap ? p : (int)(cap - 1);
}

/* Element offset of key `key`'s row in the layer's K (and V) part. */
static __device__ __forceinline__ size_t lm_attn_key_row(const struct lm_attn_args &a,
                                                         const int32_t *table, int g, int key) {
  int blk = table[key / a.bs];
  return (((size_t)blk * a.n_kv + g) * a.bs + (size_t)(key % a.bs)) * a.hd;
}

/* bf16 pair packed in a 32-bit word: the low half is the lower index */
static __device__ __forceinline__ float lm_attn_lo(uint32_t w) {
  return __uint_as_float(w << 16);
}
static __device__ __forceinline__ float lm_attn_hi(uint32_t w) {
  return __uint_as_float(w & 0xffff0000u);
}

/* Folds one tile of keys into a. Lane j holds key tile_start + j; the
 * first n_valid (1..32, the same in every lane) are visible to the row.
 * q: [hd] f32, read by every lane (shared memory); k_row, v_row: this
 * lane's key row [hd] bf16, 16-byte aligned, global or shared, read only
 * when lane < n_valid. */
template <int NV>
static __device__ __forceinline__ void lm_attn_tile(struct lm_attn_part<NV> *a, const float *q,
                                                    const uint16_t *k_row, const uint16_t *v_row,
                                                    int n_valid, int hd, float scale) {
  const int lane = threadIdx.x & 31, nv = hd >> 5;
  float s = -INFINITY;
  if (lane < n_valid) {
    /* one sequential dot product per key, d = 0..hd-1 */
    float dot = 0.0f;
    for (int d = 0; d < hd; d += 8) {
      uint4 kw = *reinterpret_cast<const uint4 *>(k_row + d);
      float4 q0 = *reinterpret_cast<const float4 *>(q + d);
      float4 q1 = *reinterpret_cast<const float4 *>(q + d + 4);
      dot = __fmaf_rn(q0.x, lm_attn_lo(kw.x), dot);
      dot = __fmaf_rn(q0.y, lm_attn_hi(kw.x), dot);
      dot = __fmaf_rn(q0.z, lm_attn_lo(kw.y), dot);
      dot = __fmaf_rn(q0.w, lm_attn_hi(kw.y), dot);
      dot = __fmaf_rn(q1.x, lm_attn_lo(kw.z), dot);
      dot = __fmaf_rn(q1.y, lm_attn_hi(kw.z), dot);
      dot = __fmaf_rn(q1.z, lm_attn_lo(kw.w), dot);
      dot = __fmaf_rn(q1.w, lm_attn_hi(kw.w), dot);
    }
    s = __fmul_rn(dot, scale);
  }
  float tmax = s;
  for (int o = 16; o > 0; o >>= 1)
    tmax = fmaxf(tmax, __shfl_xor_sync(LM_ATTN_FULL, tmax, o));
  float m_new = fmaxf(a->m, tmax);
  /* the first tile: nothing to rescale, and -inf - -inf would be NaN */
  float rescale = a->m == -INFINITY ? 1.0f : expf(__fsub_rn(a->m, m_new));
  float p = lane < n_valid ? expf(__fsub_rn(s, m_new)) : 0.0f;
  /* xor butterfly: every lane adds the same pairs, so all hold one sum */
  float psum = p;
  for (int o = 16; o > 0; o >>= 1)
    psum = __fadd_rn(psum, __shfl_xor_sync(LM_ATTN_FULL, psum, o));
  a->l = __fmaf_rn(a->l, rescale, psum);
  a->m = m_new;
#pragma unroll
  for (int c = 0; c < NV; c++)
    if (c < nv) a->acc[c] = __fmul_rn(a->acc[c], rescale);
  for (int j = 0; j < n_valid; j++) {
    float pj = __shfl_sync(LM_ATTN_FULL, p, j);
    const uint16_t *vj = reinterpret_cast<const uint16_t *>(
        __shfl_sync(LM_ATTN_FULL, reinterpret_cast<unsigned long long>(v_row), j));
#pragma unroll
    for (int c = 0; c < NV; c++)
      if (c < nv) a->acc[c] = __fmaf_rn(pj, lm_ld_bf16(vj, (size_t)(lane + 32 * c)), a->acc[c]);
  }
}

/* a = a (+) b, the partials of consecutive key ranges, a's first. */
template <int NV>
static __device__ __forceinline__ void lm_attn_combine(struct lm_attn_part<NV> *a,
                                                       const struct lm_attn_part<NV> *b, int hd) {
  const int nv = hd >> 5;
  float m = fmaxf(a->m, b->m);
  float ea = a->m == -INFINITY ? 0.0f : expf(__fsub_rn(a->m, m));
  float eb = b->m == -INFINITY ? 0.0f : expf(__fsub_rn(b->m, m));
  a->l = __fmaf_rn(a->l, ea, __fmul_rn(b->l, eb));
#pragma unroll
  for (int c = 0; c < NV; c++)
    if (c < nv) a->acc[c] = __fmaf_rn(a->acc[c], ea, __fmul_rn(b->acc[c], eb));
  a->m = m;
}

/* dst: [hd] = acc / l in bf16; a row with no keys (l == 0) is zero, as on the CPU. */
template <int NV>
static __device__ __forceinline__ void lm_attn_store(uint16_t *dst,
                                                     const struct lm_attn_part<NV> *a, int hd) {
  const int lane = threadIdx.x & 31, nv = hd >> 5;
#pragma unroll
  for (int c = 0; c < NV; c++)
    if (c < nv) dst[lane + 32 * c] = lm_to_bf16(a->l > 0.0f ? __fdiv_rn(a->acc[c], a->l) : 0.0f);
}

/* q_f: [hd] f32 <- q_row: [hd] bf16, by the calling warp. */
static __device__ __forceinline__ void lm_attn_load_q(float *q_f, const uint16_t *q_row, int hd) {
  for (int d = threadIdx.x & 31; d < hd; d += 32)
    q_f[d] = lm_ld_bf16(q_row, (size_t)d);
}

/* ---- tiles in shared memory --------------------------------------------- */

/* Staged tiles: k_s, v_s: [2][32][hd + LM_ATTN_PAD] bf16 (two tiles deep),
 * then the block's queries as f32. */
static __host__ __device__ size_t lm_attn_tiles_bytes(int hd) {
  return 4 * (size_t)LM_ATTN_TILE * (hd + LM_ATTN_PAD) * sizeof(uint16_t);
}

/* Queues, by every thread of the block, the copy of keys ts..ts+n-1 of KV
 * head g (K and V rows) into buffer buf of the staged tiles, as one copy
 * group per thread (empty for threads with nothing to copy). */
static __device__ __forceinline__ void lm_attn_stage(const struct lm_attn_args &a,
                                                     const int32_t *table, int g, int ts, int n,
                                                     unsigned char *smem, int buf) {
  const int ld = a.hd + LM_ATTN_PAD, units = a.hd / 8; /* 16-byte units per row */
  uint16_t *k_s = reinterpret_cast<uint16_t *>(smem) + (size_t)buf * LM_ATTN_TILE * ld;
  uint16_t *v_s = k_s + 2 * (size_t)LM_ATTN_TILE * ld;
  for (int i = threadIdx.x; i < n * units; i += blockDim.x) {
    int j = i / units, u = i % units;
    size_t row = lm_attn_key_row(a, table, g, ts + j);
    lm_cp_async16(k_s + (size_t)j * ld + u * 8, a.k + row + u * 8);
    lm_cp_async16(v_s + (size_t)j * ld + u * 8, a.v + row + u * 8);
  }
  lm_cp_async_commit();
}

/* Lane's K row of buffer buf. */
static __device__ __forceinline__ const uint16_t *lm_attn_k_s(const unsigned char *smem, int hd,
                                                              int buf) {
  const int ld = hd + LM_ATTN_PAD;
  return reinterpret_cast<const uint16_t *>(smem) +
         ((size_t)buf * LM_ATTN_TILE + (threadIdx.x & 31)) * ld;
}

/* Keys k0..k1-1 of KV head g, tile by tile: stages tile i + 1 while the
 * block works on tile i; fold(ts, k_row, v_row) is called by every thread
 * once per tile with its lane's staged rows, between barriers. k0, k1 and
 * the tile count are the same in the whole block. */
template <typename F>
static __device__ __forceinline__ void lm_attn_walk(const struct lm_attn_args &a,
                                                    const int32_t *table, int g, int k0, int k1,
                                                    unsigned char *smem, F fold) {
  const int ld = a.hd + LM_ATTN_PAD;
  const int n_tiles = k1 > k0 ? (k1 - k0 + LM_ATTN_TILE - 1) / LM_ATTN_TILE : 0;
  if (n_tiles > 0)
    lm_attn_stage(a, table, g, k0, k1 - k0 < LM_ATTN_TILE ? k1 - k0 : LM_ATTN_TILE, smem, 0);
  for (int i = 0; i < n_tiles; i++) {
    int ts = k0 + i * LM_ATTN_TILE;
    if (i + 1 < n_tiles) {
      int next = ts + LM_ATTN_TILE;
      lm_attn_stage(a, table, g, next, k1 - next < LM_ATTN_TILE ? k1 - next : LM_ATTN_TILE, smem,
                    (i + 1) & 1);
      lm_cp_async_wait<1>();
    } else {
      lm_cp_async_wait<0>();
    }
    __syncthreads(); /* every thread's copies of tile i have landed */
    const uint16_t *k_row = lm_attn_k_s(smem, a.hd, i & 1);
    fold(ts, k_row, k_row + 2 * (size_t)LM_ATTN_TILE * ld);
    __syncthreads(); /* tile i is read before tile i + 2 overwrites it */
  }
}

/* ---- decodes ------------------------------------------------------------ */

/* Block (x, y): sequence s = x / max_splits, split x % max_splits; KV head
 * g = y / n_hsub and its query heads [hsub * hpb, hsub * hpb + hpb)
 * (hsub = y % n_hsub, hpb = heads_per_block), a warp each. Writes the
 * split's partial of sequence s's one token for each head to ws; sequences
 * that are not decodes, and splits past the token's last key, have nothing
 * to do (the whole block returns). */
template <int NV> static __global__ void lm_attn_decode_kernel(struct lm_attn_args a) {
  extern __shared__ __align__(16) unsigned char lm_attn_smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, hd = a.hd;
  const int hpb = a.heads_per_block, n_hsub = (a.group + hpb - 1) / hpb;
  const int s = blockIdx.x / a.max_splits, split = blockIdx.x % a.max_splits;
  const int g = blockIdx.y / n_hsub, w_head = (blockIdx.y % n_hsub) * hpb + warp;
  if (s >= a.n_seqs) return;
  int t = a.q_start[s];
  if (a.q_start[s + 1] - t != 1) return;
  int p = lm_attn_last_key(a, t);
  long long k_first = lm_attn_split_start(split), k_next = lm_attn_split_start(split + 1);
  if (k_first > p) return;
  int k0 = (int)k_first, k1 = (int)(p + 1 < k_next ? p + 1 : k_next);
  const bool mine = w_head < a.group;
  const int h = g * a.group + w_head;
  const int32_t *table = a.block_tables + (size_t)s * a.max_blocks;

  float *q_f =
      reinterpret_cast<float *>(lm_attn_smem + lm_attn_tiles_bytes(hd)) + (size_t)warp * hd;
  if (mine) lm_attn_load_q(q_f, a.q + ((size_t)t * a.n_heads + h) * hd, hd);

  struct lm_attn_part<NV> part;
  lm_attn_empty(&part);
  lm_attn_walk(a, table, g, k0, k1, lm_attn_smem,
               [&](int ts, const uint16_t *k_row, const uint16_t *v_row) {
                 int n_valid = k1 - ts < LM_ATTN_TILE ? k1 - ts : LM_ATTN_TILE;
                 if (mine) lm_attn_tile(&part, q_f, k_row, v_row, n_valid, hd, a.scale);
               });
  if (!mine) return;

  /* dst: [2 + hd] = m, l, acc */
  float *dst = a.ws + (((size_t)s * a.max_splits + split) * a.n_heads + h) * (size_t)(hd + 2);
  if (lane == 0) {
    dst[0] = part.m;
    dst[1] = part.l;
  }
  const int nv = hd >> 5;
#pragma unroll
  for (int c = 0; c < NV; c++)
    if (c < nv) dst[2 + lane + 32 * c] = part.acc[c];
}

/* Warp w = (s, h): folds the partials of sequence s's one token, head h,
 * in split order (the same fold the prefill kernel does as it goes). */
template <int NV> static __global__ void lm_attn_fold_kernel(struct lm_attn_args a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  long long w = (long long)blockIdx.x * LM_ATTN_DECODE_WARPS + warp;
  int h = (int)(w % a.n_heads);
  long long s = w / a.n_heads;
  if (s >= a.n_seqs) return;
  int t = a.q_start[s];
  if (a.q_start[s + 1] - t != 1) return;
  int p = lm_attn_last_key(a, t);
  int n_splits = lm_attn_n_splits(p);
  const int nv = a.hd >> 5;

  struct lm_attn_part<NV> run, part;
  lm_attn_empty(&run);
  lm_attn_empty(&part);
  for (int i = 0; i < n_splits; i++) {
    /* src: [2 + hd] = m, l, acc */
    const float *src = a.ws + (((size_t)s * a.max_splits + i) * a.n_heads + h) * (size_t)(a.hd + 2);
    part.m = src[0];
    part.l = src[1];
#pragma unroll
    for (int c = 0; c < NV; c++)
      if (c < nv) part.acc[c] = src[2 + lane + 32 * c];
    lm_attn_combine(&run, &part, a.hd);
  }
  lm_attn_store(a.out + ((size_t)t * a.n_heads + h) * a.hd, &run, a.hd);
}

/* ---- prefill chunks ----------------------------------------------------- */

/* Block (x, y): tokens [x * tpb, x * tpb + tpb) of the step (tpb =
 * tokens_per_block), KV head g = y / n_hsub and its query heads
 * [hsub * hpb, hsub * hpb + hpb) (hsub = y % n_hsub, hpb = heads_per_block).
 * Warp w owns the rows of head g * group + hsub * hpb + w % hpb and tokens
 * x * tpb + (w / hpb) * R + r, r = 0..R-1 (R: 1, or LM_ATTN_PREFILL_ROWS for
 * steps with enough tokens to fill the device with such blocks). The
 * block's tokens are taken one sequence at a time (a segment); segments of
 * decodes are skipped (the decode kernels own them). Every loop that
 * reaches a __syncthreads depends only on values the whole block shares. */
template <int NV, int R>
static __global__ void __launch_bounds__(LM_ATTN_PREFILL_WARPS * 32, NV <= 4 ? 2 : 1)
    lm_attn_prefill_kernel(struct lm_attn_args a) {
  extern __shared__ __align__(16) unsigned char lm_attn_smem[];
  __shared__ int last_s[LM_ATTN_PREFILL_WARPS * R]; /* each row's last key, -1 if idle */
  const int hd = a.hd;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hpb = a.heads_per_block, tpb = a.tokens_per_block;
  const int n_hsub = (a.group + hpb - 1) / hpb;
  const int g = blockIdx.y / n_hsub, hsub = blockIdx.y % n_hsub;
  const int w_head = hsub * hpb + warp % hpb; /* within the KV head's group */
  const bool w_ok =
      (warp / hpb + 1) * R <= tpb && w_head < a.group; /* 8 % hpb, or past the group */
  const int h = g * a.group + w_head;
  const int t_first = blockIdx.x * tpb;
  const int t_end = t_first + tpb < a.n_tokens ? t_first + tpb : a.n_tokens;
  const int tw0 = t_first + (warp / hpb) * R; /* this warp's first token */
  float *q_f = reinterpret_cast<float *>(lm_attn_smem + lm_attn_tiles_bytes(hd)) +
               (size_t)warp * R * hd; /* [R, hd] */

  for (int t = t_first; t < t_end;) {
    int s = a.seq_of_token[t];
    int seq_first = a.q_start[s], seq_end = a.q_start[s + 1];
    int seg_end = seq_end < t_end ? seq_end : t_end;
    if (seg_end <= t) seg_end = t + 1; /* an inconsistent batch: step on, compute nothing */
    if (seq_end - seq_first > 1 && t >= seq_first && t < seq_end) {
      int p[R];
      bool mine[R];
#pragma unroll
      for (int r = 0; r < R; r++) {
        int tw = tw0 + r;
        mine[r] = w_ok && tw >= t && tw < seg_end;
        p[r] = mine[r] ? lm_attn_last_key(a, tw) : -1;
        if (mine[r])
          lm_attn_load_q(q_f + (size_t)r * hd, a.q + ((size_t)tw * a.n_heads + h) * hd, hd);
        if (lane == 0) last_s[warp * R + r] = p[r];
      }
      __syncthreads();
      int kmax = -1; /* the segment's last key: the block stages keys 0..kmax */
      for (int i = 0; i < LM_ATTN_PREFILL_WARPS * R; i++)
        kmax = last_s[i] > kmax ? last_s[i] : kmax;
      const int32_t *table = a.block_tables + (size_t)s * a.max_blocks;

      struct lm_attn_part<NV> run[R], cur[R];
#pragma unroll
      for (int r = 0; r < R; r++) {
        lm_attn_empty(&run[r]);
        lm_attn_empty(&cur[r]);
      }
      lm_attn_walk(a, table, g, 0, kmax + 1, lm_attn_smem,
                   [&](int ts, const uint16_t *k_row, const uint16_t *v_row) {
#pragma unroll
                     for (int r = 0; r < R; r++) {
                       if (p[r] < ts) continue; /* the same in every lane of the warp */
                       /* a new split: fold the finished one, as the fold kernel does */
                       if (lm_attn_split_begins(ts)) {
                         lm_attn_combine(&run[r], &cur[r], hd);
                         lm_attn_empty(&cur[r]);
                       }
                       int n_valid = p[r] + 1 - ts < LM_ATTN_TILE ? p[r] + 1 - ts : LM_ATTN_TILE;
                       lm_attn_tile(&cur[r], q_f + (size_t)r * hd, k_row, v_row, n_valid, hd,
                                    a.scale);
                     }
                   });
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (!mine[r]) continue;
        if (p[r] >= 0) lm_attn_combine(&run[r], &cur[r], hd);
        lm_attn_store(a.out + ((size_t)(tw0 + r) * a.n_heads + h) * hd, &run[r], hd);
      }
      __syncthreads(); /* last_s and the queries are read before the next segment writes them */
    }
    t = seg_end;
  }
}

/* ---- host ---------------------------------------------------------------- */

/* Dynamic shared memory: the staged tiles, then rows x hd f32 queries
 * (100,352 bytes for the prefill kernel at hd = 256; 51,200 at hd = 128). */
static size_t lm_attn_smem_bytes(int hd, int rows) {
  return lm_attn_tiles_bytes(hd) + (size_t)rows * hd * sizeof(float);
}

/* Opts the NV kernels in to the dynamic shared memory they take at their
 * largest head_dim (32 NV), above the 48 KiB a block gets by default. */
template <int NV> static cudaError_t lm_attn_opt_in() {
  cudaError_t e =
      cudaFuncSetAttribute(lm_attn_decode_kernel<NV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           (int)lm_attn_smem_bytes(32 * NV, LM_ATTN_PREFILL_WARPS));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(lm_attn_prefill_kernel<NV, 1>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)lm_attn_smem_bytes(32 * NV, LM_ATTN_PREFILL_WARPS));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(
        lm_attn_prefill_kernel<NV, LM_ATTN_PREFILL_ROWS>,
        cudaFuncAttributeMaxDynamicSharedMemorySize,
        (int)lm_attn_smem_bytes(32 * NV, LM_ATTN_PREFILL_WARPS * LM_ATTN_PREFILL_ROWS));
  return e;
}

/* The device's multiprocessors (one device per process); 1 if unknown. */
static int lm_attn_sm_count(void) {
  static const int n = [] {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 1;
    return sms > 0 ? sms : 1;
  }();
  return n;
}

/* The step's kernels with NV registers of state per row. */
template <int NV>
static void lm_attn_run(struct lm_attn_args a, const struct lm_cuda_attn_batch *b,
                        cudaStream_t st) {
  const int hd = a.hd, n_hsub = (a.group + a.heads_per_block - 1) / a.heads_per_block;
  /* once per process (one device), retried until it succeeds (a failure
   * may be an earlier error the call reports); if it failed, the launches
   * below fail and the stream's next check reports it */
  static std::atomic<bool> opted{false};
  if (!opted.load() && lm_attn_opt_in<NV>() == cudaSuccess) opted.store(true);
  /* One long chunk alone has no decodes; otherwise any sequence may be one. */
  bool any_decode = !(b->n_seqs == 1 && b->max_q_len > 1);
  if (any_decode) {
    if (a.max_splits > 0)
      lm_attn_decode_kernel<NV>
          <<<dim3((unsigned)(a.n_seqs * a.max_splits), (unsigned)(a.n_kv * n_hsub)),
             32 * a.heads_per_block, lm_attn_smem_bytes(hd, a.heads_per_block), st>>>(a);
    /* also with no keys at all: the rows are then written as zeros */
    size_t rows = (size_t)a.n_seqs * a.n_heads;
    lm_attn_fold_kernel<NV>
        <<<lm_cdiv(rows, LM_ATTN_DECODE_WARPS), LM_ATTN_DECODE_WARPS * 32, 0, st>>>(a);
  }
  if (b->max_q_len > 1) {
    /* Several rows a warp read each staged tile for more tokens, but make
     * fewer blocks: only where those still fill the device twice over
     * (long chunks), else a row a warp (short chunks over a long context,
     * such as a prompt after a cached prefix). The rows' bits are the same. */
    int warp_tokens = LM_ATTN_PREFILL_WARPS / a.heads_per_block;
    size_t blocks = lm_cdiv((size_t)a.n_tokens, (size_t)warp_tokens * LM_ATTN_PREFILL_ROWS) *
                    (size_t)(a.n_kv * n_hsub);
    bool rows = blocks >= 2 * (size_t)lm_attn_sm_count();
    a.tokens_per_block = warp_tokens * (rows ? LM_ATTN_PREFILL_ROWS : 1);
    dim3 grid(lm_cdiv((size_t)a.n_tokens, (size_t)a.tokens_per_block), (unsigned)(a.n_kv * n_hsub));
    if (rows)
      lm_attn_prefill_kernel<NV, LM_ATTN_PREFILL_ROWS>
          <<<grid, LM_ATTN_PREFILL_WARPS * 32,
             lm_attn_smem_bytes(hd, LM_ATTN_PREFILL_WARPS * LM_ATTN_PREFILL_ROWS), st>>>(a);
    else
      lm_attn_prefill_kernel<NV, 1>
          <<<grid, LM_ATTN_PREFILL_WARPS * 32, lm_attn_smem_bytes(hd, LM_ATTN_PREFILL_WARPS), st>>>(
              a);
  }
}

extern "C" size_t lm_cuda_attention_workspace_bytes(int max_seqs, int n_heads, int head_dim,
                                                    int max_model_len) {
  if (max_seqs <= 0 || n_heads <= 0 || head_dim <= 0 || max_model_len <= 0) return 0;
  size_t splits = (size_t)lm_attn_n_splits((long long)max_model_len - 1);
  return (size_t)max_seqs * n_heads * splits * ((size_t)head_dim + 2) * sizeof(float);
}

extern "C" void lm_cuda_attention(uint16_t *out, const uint16_t *q, const struct lm_cuda_kv *kv,
                                  int layer, const struct lm_cuda_attn_batch *b, int n_heads,
                                  float scale, void *workspace, void *stream) {
  cudaStream_t st = (cudaStream_t)stream;
  const int hd = kv->head_dim, n_kv = kv->n_kv_heads;
  if (b->n_seqs <= 0 || b->n_tokens <= 0 || n_heads <= 0 || n_kv <= 0 || n_heads % n_kv != 0 ||
      hd <= 0 || hd % 32 != 0 || hd > LM_CUDA_ATTN_MAX_HEAD_DIM || kv->block_size <= 0 ||
      layer < 0 || layer >= kv->n_layers || b->max_blocks <= 0)
    return;
  size_t part = lm_cuda_kv_part_elems(kv);
  struct lm_attn_args a;
  a.out = out;
  a.q = q;
  a.k = kv->base + (size_t)layer * 2 * part;
  a.v = a.k + part;
  a.q_start = b->q_start;
  a.positions = b->positions;
  a.seq_of_token = b->seq_of_token;
  a.block_tables = b->block_tables;
  a.ws = (float *)workspace;
  a.n_tokens = b->n_tokens;
  a.n_seqs = b->n_seqs;
  a.max_blocks = b->max_blocks;
  a.n_heads = n_heads;
  a.n_kv = n_kv;
  a.group = n_heads / n_kv;
  a.hd = hd;
  a.bs = kv->block_size;
  a.max_ctx_len = b->max_ctx_len > 0 ? b->max_ctx_len : 0;
  a.max_splits = lm_attn_n_splits((long long)a.max_ctx_len - 1);
  a.heads_per_block = a.group < LM_ATTN_PREFILL_WARPS ? a.group : LM_ATTN_PREFILL_WARPS;
  a.tokens_per_block = 0; /* lm_attn_run's choice, by the step's length */
  a.scale = scale;

  /* the registers a row's state takes: the next power of two of hd / 32 */
  int nv = hd / 32;
  if (nv <= 1)
    lm_attn_run<1>(a, b, st);
  else if (nv <= 2)
    lm_attn_run<2>(a, b, st);
  else if (nv <= 4)
    lm_attn_run<4>(a, b, st);
  else
    lm_attn_run<8>(a, b, st);
}
