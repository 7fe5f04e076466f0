/* attention.cu - paged causal attention over the KV pool, bf16 in and out,
 * f32 arithmetic.
 *
 * The unit of work is one (query row, head) "row": a warp owns a row and
 * walks its keys 0..p in tiles of 32 keys at absolute offsets (0, 32, ...),
 * grouped into splits of LM_CUDA_ATTN_SPLIT_KEYS at absolute offsets
 * (0, 512, ...). A split's partial softmax state (m, l, acc) is built by
 * lm_attn_tile from an empty state over the split's tiles in order, and the
 * partials are folded left in split order by lm_attn_combine into an empty
 * state; out = acc / l. Every operation of both functions is an explicitly
 * rounded intrinsic (__fmaf_rn, __fmul_rn, __fadd_rn), expf, a max or a
 * fixed xor butterfly, so the compiler cannot contract or reorder anything
 * differently in the two kernels that inline them. A row's bits thus
 * depend on its q and its keys alone, whichever kernel runs it and
 * whatever else is in the batch.
 *
 * Decodes (a sequence with one query token): there is only one row per
 * head, so parallelism comes from the splits. lm_attn_decode_kernel gives
 * each (sequence, split, head) its own warp, reading K/V straight from the
 * pool, and writes the split's partial to the workspace;
 * lm_attn_fold_kernel folds a row's partials in split order and writes out.
 *
 * Prefill chunks (more than one query token): many rows share the same
 * keys, so lm_attn_prefill_kernel gives a block the rows of a few
 * consecutive tokens and the query heads of one KV head (one row per
 * warp), stages each 32-key tile of K and V in shared memory once for all
 * its warps, and each warp folds its splits as it goes. Blocks are laid
 * over the step's tokens (not over sequences x longest chunk), so a step
 * of one long chunk and many decodes launches few idle blocks; a block
 * whose tokens span sequences takes them one sequence at a time.
 *
 * K and V rows are read 16 bytes at a time: the pool's base must be
 * 16-byte aligned (cudaMalloc's is), and head_dim a multiple of 32 makes
 * every row so. */
#include "kernels/attention.cuh"

#include <math.h>
#include <stdint.h>

#include "kernels/cuda_check.cuh"

#define LM_ATTN_TILE          32                               /* keys per tile: one per lane */
#define LM_ATTN_NV            (LM_CUDA_ATTN_MAX_HEAD_DIM / 32) /* most dims a lane owns */
#define LM_ATTN_DECODE_WARPS  4 /* warps (rows) per block in the decode and fold kernels */
#define LM_ATTN_PREFILL_WARPS 8 /* warps (rows) per block in the prefill kernel */
#define LM_ATTN_PAD           8 /* bf16 after each staged K/V row: keeps 16-byte rows, spreads banks */
#define LM_ATTN_FULL          0xffffffffu

/* One row's online-softmax state; lane i's acc[c] is dim i + 32 c. */
struct lm_attn_part {
  float m;               /* largest score so far (-inf: no key yet) */
  float l;               /* sum of exp(score - m) */
  float acc[LM_ATTN_NV]; /* sum of exp(score - m) * v, this lane's dims */
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

static __device__ __forceinline__ void lm_attn_empty(struct lm_attn_part *a) {
  a->m = -INFINITY;
  a->l = 0.0f;
#pragma unroll
  for (int c = 0; c < LM_ATTN_NV; c++)
    a->acc[c] = 0.0f;
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
static __device__ __forceinline__ void lm_attn_tile(struct lm_attn_part *a, const float *q,
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
  for (int c = 0; c < LM_ATTN_NV; c++)
    if (c < nv) a->acc[c] = __fmul_rn(a->acc[c], rescale);
  for (int j = 0; j < n_valid; j++) {
    float pj = __shfl_sync(LM_ATTN_FULL, p, j);
    const uint16_t *vj = reinterpret_cast<const uint16_t *>(
        __shfl_sync(LM_ATTN_FULL, reinterpret_cast<unsigned long long>(v_row), j));
#pragma unroll
    for (int c = 0; c < LM_ATTN_NV; c++)
      if (c < nv) a->acc[c] = __fmaf_rn(pj, lm_ld_bf16(vj, (size_t)(lane + 32 * c)), a->acc[c]);
  }
}

/* a = a (+) b, the partials of consecutive key ranges, a's first. */
static __device__ __forceinline__ void lm_attn_combine(struct lm_attn_part *a,
                                                       const struct lm_attn_part *b, int hd) {
  const int nv = hd >> 5;
  float m = fmaxf(a->m, b->m);
  float ea = a->m == -INFINITY ? 0.0f : expf(__fsub_rn(a->m, m));
  float eb = b->m == -INFINITY ? 0.0f : expf(__fsub_rn(b->m, m));
  a->l = __fmaf_rn(a->l, ea, __fmul_rn(b->l, eb));
#pragma unroll
  for (int c = 0; c < LM_ATTN_NV; c++)
    if (c < nv) a->acc[c] = __fmaf_rn(a->acc[c], ea, __fmul_rn(b->acc[c], eb));
  a->m = m;
}

/* dst: [hd] = acc / l in bf16; a row with no keys (l == 0) is zero, as on the CPU. */
static __device__ __forceinline__ void lm_attn_store(uint16_t *dst, const struct lm_attn_part *a,
                                                     int hd) {
  const int lane = threadIdx.x & 31, nv = hd >> 5;
#pragma unroll
  for (int c = 0; c < LM_ATTN_NV; c++)
    if (c < nv) dst[lane + 32 * c] = lm_to_bf16(a->l > 0.0f ? __fdiv_rn(a->acc[c], a->l) : 0.0f);
}

/* q_f: [hd] f32 <- q_row: [hd] bf16, by the calling warp. */
static __device__ __forceinline__ void lm_attn_load_q(float *q_f, const uint16_t *q_row, int hd) {
  for (int d = threadIdx.x & 31; d < hd; d += 32)
    q_f[d] = lm_ld_bf16(q_row, (size_t)d);
}

/* ---- decodes ------------------------------------------------------------ */

/* Warp w = (s, split, h), h fastest so that a block's warps mostly share a
 * KV head's keys in L1. Writes the split's partial of sequence s's one
 * token, head h, to ws; sequences that are not decodes, and splits past a
 * token's last key, have nothing to do. */
static __global__ void lm_attn_decode_kernel(struct lm_attn_args a) {
  __shared__ __align__(16) float q_s[LM_ATTN_DECODE_WARPS][LM_CUDA_ATTN_MAX_HEAD_DIM];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  long long w = (long long)blockIdx.x * LM_ATTN_DECODE_WARPS + warp;
  int h = (int)(w % a.n_heads);
  long long rest = w / a.n_heads;
  int split = (int)(rest % a.max_splits);
  long long s = rest / a.max_splits;
  if (s >= a.n_seqs) return;
  int t = a.q_start[s];
  if (a.q_start[s + 1] - t != 1) return;
  int p = lm_attn_last_key(a, t);
  int k0 = split * LM_CUDA_ATTN_SPLIT_KEYS;
  if (k0 > p) return;
  int k1 = p + 1 < k0 + LM_CUDA_ATTN_SPLIT_KEYS ? p + 1 : k0 + LM_CUDA_ATTN_SPLIT_KEYS;
  int g = h / a.group;
  const int32_t *table = a.block_tables + (size_t)s * a.max_blocks;

  float *q_f = q_s[warp]; /* [hd] */
  lm_attn_load_q(q_f, a.q + ((size_t)t * a.n_heads + h) * a.hd, a.hd);
  __syncwarp();

  struct lm_attn_part part;
  lm_attn_empty(&part);
  for (int ts = k0; ts < k1; ts += LM_ATTN_TILE) {
    int n_valid = k1 - ts < LM_ATTN_TILE ? k1 - ts : LM_ATTN_TILE;
    size_t row = lane < n_valid ? lm_attn_key_row(a, table, g, ts + lane) : 0;
    lm_attn_tile(&part, q_f, a.k + row, a.v + row, n_valid, a.hd, a.scale);
  }

  /* dst: [2 + hd] = m, l, acc */
  float *dst = a.ws + (((size_t)s * a.max_splits + split) * a.n_heads + h) * (size_t)(a.hd + 2);
  if (lane == 0) {
    dst[0] = part.m;
    dst[1] = part.l;
  }
  const int nv = a.hd >> 5;
#pragma unroll
  for (int c = 0; c < LM_ATTN_NV; c++)
    if (c < nv) dst[2 + lane + 32 * c] = part.acc[c];
}

/* Warp w = (s, h): folds the partials of sequence s's one token, head h,
 * in split order (the same fold the prefill kernel does as it goes). */
static __global__ void lm_attn_fold_kernel(struct lm_attn_args a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  long long w = (long long)blockIdx.x * LM_ATTN_DECODE_WARPS + warp;
  int h = (int)(w % a.n_heads);
  long long s = w / a.n_heads;
  if (s >= a.n_seqs) return;
  int t = a.q_start[s];
  if (a.q_start[s + 1] - t != 1) return;
  int p = lm_attn_last_key(a, t);
  int n_splits = p >= 0 ? p / LM_CUDA_ATTN_SPLIT_KEYS + 1 : 0;
  const int nv = a.hd >> 5;

  struct lm_attn_part run, part;
  lm_attn_empty(&run);
  lm_attn_empty(&part);
  for (int i = 0; i < n_splits; i++) {
    /* src: [2 + hd] = m, l, acc */
    const float *src = a.ws + (((size_t)s * a.max_splits + i) * a.n_heads + h) * (size_t)(a.hd + 2);
    part.m = src[0];
    part.l = src[1];
#pragma unroll
    for (int c = 0; c < LM_ATTN_NV; c++)
      if (c < nv) part.acc[c] = src[2 + lane + 32 * c];
    lm_attn_combine(&run, &part, a.hd);
  }
  lm_attn_store(a.out + ((size_t)t * a.n_heads + h) * a.hd, &run, a.hd);
}

/* ---- prefill chunks ----------------------------------------------------- */

/* Dynamic shared memory of the prefill kernel for head_dim hd:
 *   k_s, v_s: [32, hd + LM_ATTN_PAD] bf16 each; q_s: [LM_ATTN_PREFILL_WARPS, hd] f32
 * (41,984 bytes at hd = 256, under the 48 KiB a block gets without opting in). */
static size_t lm_attn_prefill_smem_bytes(int hd) {
  return 2 * (size_t)LM_ATTN_TILE * (hd + LM_ATTN_PAD) * sizeof(uint16_t) +
         (size_t)LM_ATTN_PREFILL_WARPS * hd * sizeof(float);
}

/* Block (x, y): tokens [x * tpb, x * tpb + tpb) of the step (tpb =
 * tokens_per_block), KV head g = y / n_hsub and its query heads
 * [hsub * hpb, hsub * hpb + hpb) (hsub = y % n_hsub, hpb = heads_per_block).
 * Warp w owns the row (token x * tpb + w / hpb, head g * group + hsub * hpb +
 * w % hpb). The block's tokens are taken one sequence at a time (a
 * segment); segments of decodes are skipped (the decode kernels own them).
 * Every loop that reaches a __syncthreads depends only on values the whole
 * block shares. */
static __global__ void lm_attn_prefill_kernel(struct lm_attn_args a) {
  extern __shared__ __align__(16) unsigned char lm_attn_smem[];
  __shared__ int last_s[LM_ATTN_PREFILL_WARPS]; /* each warp's last key, -1 if idle */
  const int hd = a.hd, ld = hd + LM_ATTN_PAD;
  uint16_t *k_s = reinterpret_cast<uint16_t *>(lm_attn_smem);              /* [32, ld] */
  uint16_t *v_s = k_s + (size_t)LM_ATTN_TILE * ld;                         /* [32, ld] */
  float *q_s = reinterpret_cast<float *>(v_s + (size_t)LM_ATTN_TILE * ld); /* [warps, hd] */
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hpb = a.heads_per_block, tpb = a.tokens_per_block;
  const int n_hsub = (a.group + hpb - 1) / hpb;
  const int g = blockIdx.y / n_hsub, hsub = blockIdx.y % n_hsub;
  const int w_head = hsub * hpb + warp % hpb;             /* within the KV head's group */
  const bool w_ok = warp / hpb < tpb && w_head < a.group; /* 8 % hpb, or past the group */
  const int h = g * a.group + w_head;
  const int t_first = blockIdx.x * tpb;
  const int t_end = t_first + tpb < a.n_tokens ? t_first + tpb : a.n_tokens;
  const int tw = t_first + warp / hpb;  /* this warp's token */
  float *q_f = q_s + (size_t)warp * hd; /* [hd] */

  for (int t = t_first; t < t_end;) {
    int s = a.seq_of_token[t];
    int seq_first = a.q_start[s], seq_end = a.q_start[s + 1];
    int seg_end = seq_end < t_end ? seq_end : t_end;
    if (seg_end <= t) seg_end = t + 1; /* an inconsistent batch: step on, compute nothing */
    if (seq_end - seq_first > 1 && t >= seq_first && t < seq_end) {
      bool mine = w_ok && tw >= t && tw < seg_end;
      int p = mine ? lm_attn_last_key(a, tw) : -1;
      if (mine) lm_attn_load_q(q_f, a.q + ((size_t)tw * a.n_heads + h) * hd, hd);
      if (lane == 0) last_s[warp] = p;
      __syncthreads();
      int kmax = -1; /* the segment's last key: the block stages keys 0..kmax */
      for (int i = 0; i < LM_ATTN_PREFILL_WARPS; i++)
        kmax = last_s[i] > kmax ? last_s[i] : kmax;
      const int32_t *table = a.block_tables + (size_t)s * a.max_blocks;

      struct lm_attn_part run, cur;
      lm_attn_empty(&run);
      lm_attn_empty(&cur);
      for (int ts = 0; ts <= kmax; ts += LM_ATTN_TILE) {
        int n_stage = kmax + 1 - ts < LM_ATTN_TILE ? kmax + 1 - ts : LM_ATTN_TILE;
        int units = hd / 8; /* 16-byte units per row */
        for (int i = threadIdx.x; i < n_stage * units; i += blockDim.x) {
          int j = i / units, u = i % units;
          size_t row = lm_attn_key_row(a, table, g, ts + j);
          *reinterpret_cast<uint4 *>(k_s + (size_t)j * ld + u * 8) =
              *reinterpret_cast<const uint4 *>(a.k + row + u * 8);
          *reinterpret_cast<uint4 *>(v_s + (size_t)j * ld + u * 8) =
              *reinterpret_cast<const uint4 *>(a.v + row + u * 8);
        }
        __syncthreads();
        if (p >= ts) { /* the same in every lane of the warp */
          /* a new split: fold the finished one, as the fold kernel does */
          if (ts > 0 && ts % LM_CUDA_ATTN_SPLIT_KEYS == 0) {
            lm_attn_combine(&run, &cur, hd);
            lm_attn_empty(&cur);
          }
          int n_valid = p + 1 - ts < LM_ATTN_TILE ? p + 1 - ts : LM_ATTN_TILE;
          lm_attn_tile(&cur, q_f, k_s + (size_t)lane * ld, v_s + (size_t)lane * ld, n_valid, hd,
                       a.scale);
        }
        __syncthreads(); /* the tile is read before the next one overwrites it */
      }
      if (mine) {
        if (p >= 0) lm_attn_combine(&run, &cur, hd);
        lm_attn_store(a.out + ((size_t)tw * a.n_heads + h) * hd, &run, hd);
      }
      __syncthreads(); /* last_s and q_s are read before the next segment writes them */
    }
    t = seg_end;
  }
}

/* ---- host ---------------------------------------------------------------- */

extern "C" size_t lm_cuda_attention_workspace_bytes(int max_seqs, int n_heads, int head_dim,
                                                    int max_model_len) {
  if (max_seqs <= 0 || n_heads <= 0 || head_dim <= 0 || max_model_len <= 0) return 0;
  size_t splits = lm_cdiv((size_t)max_model_len, LM_CUDA_ATTN_SPLIT_KEYS);
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
  a.max_splits = (int)lm_cdiv((size_t)a.max_ctx_len, LM_CUDA_ATTN_SPLIT_KEYS);
  a.heads_per_block = a.group < LM_ATTN_PREFILL_WARPS ? a.group : LM_ATTN_PREFILL_WARPS;
  a.tokens_per_block = LM_ATTN_PREFILL_WARPS / a.heads_per_block;
  a.scale = scale;

  /* One long chunk alone has no decodes; otherwise any sequence may be one. */
  bool any_decode = !(b->n_seqs == 1 && b->max_q_len > 1);
  if (any_decode) {
    if (a.max_splits > 0) {
      size_t warps = (size_t)a.n_seqs * a.max_splits * n_heads;
      lm_attn_decode_kernel<<<lm_cdiv(warps, LM_ATTN_DECODE_WARPS), LM_ATTN_DECODE_WARPS * 32, 0,
                              st>>>(a);
    }
    /* also with no keys at all: the rows are then written as zeros */
    size_t rows = (size_t)a.n_seqs * n_heads;
    lm_attn_fold_kernel<<<lm_cdiv(rows, LM_ATTN_DECODE_WARPS), LM_ATTN_DECODE_WARPS * 32, 0, st>>>(
        a);
  }
  if (b->max_q_len > 1) {
    int n_hsub = (a.group + a.heads_per_block - 1) / a.heads_per_block;
    dim3 grid(lm_cdiv((size_t)a.n_tokens, (size_t)a.tokens_per_block), (unsigned)(n_kv * n_hsub));
    lm_attn_prefill_kernel<<<grid, LM_ATTN_PREFILL_WARPS * 32, lm_attn_prefill_smem_bytes(hd),
                             st>>>(a);
  }
}
