/* sample.cu - the host sampler (engine/sampler.c) on the GPU, one block of
 * LM_SAMPLE_THREADS per row.
 *
 * The steps, their order and their float arithmetic are those of
 * lm_sampler_sample; what differs is how the kept candidates are found. The
 * CPU sorts them by (weight desc, id asc). A block cannot sort a vocabulary
 * cheaply, but it need not: every question the sampler asks of that order
 * is "where does a running total first reach a bound" - top_k (the count
 * reaches k), top_p (the mass reaches top_p * total) and the draw (the mass
 * passes u). Each is answered by a radix select over a 64-bit rank,
 *   rank = float bits of the weight << 32 | (0xffffffff - id),
 * which orders as (weight desc, id asc) because positive floats order as
 * their bits and no two ids are equal. Eight bits at a time from the top, a
 * pass over the row builds a 256-bucket histogram (count and mass) of the
 * ranks that share the digits found so far; warp 0 walks the buckets from
 * the highest to the one where the bound is reached. Once that bucket holds
 * a single rank, one more pass reads it. The set kept by top_k or top_p is
 * then "rank >= the selected rank", a prefix of the order, and the next
 * question is asked of that prefix alone.
 *
 * Masses are fixed-point integers, weight * 2^s with s as large as a row of
 * the vocabulary allows without overflowing 64 bits: sums are then exact and
 * independent of the order threads add them in, so a bucket's mass is the
 * sum of its sub-buckets' and a draw is the same on every run. They differ
 * from the CPU's double sums by rounding alone, far below the 2^-24 steps
 * of u. */
#include "kernels/sample.cuh"

#include <math.h>

#include "kernels/cuda_check.cuh"

#define LM_SAMPLE_THREADS   1024
#define LM_SAMPLE_FULL      0xffffffffu
#define LM_SAMPLE_ALIGN     256
#define LM_SAMPLE_IN_PROMPT 0x40000000   /* a flag beside the output count, as in sampler.c */
#define LM_SAMPLE_CAND_MIN  (1ull << 32) /* the least rank of a positive weight */

/* One row's workspace is two halves of this many bytes: w: [vocab] f32,
 * then counts: [vocab] int32. */
static __host__ __device__ size_t lm_sample_half_bytes(int vocab) {
  return ((size_t)vocab * 4 + LM_SAMPLE_ALIGN - 1) / LM_SAMPLE_ALIGN * LM_SAMPLE_ALIGN;
}

/* lm_sampler_uniform: Philox4x32-10 keyed by the seed with counter
 * (hi 0, lo position), the top 24 bits of the first output. */
static __device__ float lm_sample_uniform(uint64_t seed, uint64_t position) {
  uint32_t c0 = (uint32_t)position, c1 = (uint32_t)(position >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}

/* ---- block reductions ----------------------------------------------------- */

/* (va, ia) before (vb, ib): larger value, then lower id; id -1 is none. */
static __device__ __forceinline__ bool lm_sample_better(float va, int ia, float vb, int ib) {
  return ia >= 0 && (ib < 0 || va > vb || (va == vb && ia < ib));
}

static __device__ __forceinline__ void lm_warp_best(float &v, int &id) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_down_sync(LM_SAMPLE_FULL, v, o);
    int oi = __shfl_down_sync(LM_SAMPLE_FULL, id, o);
    if (lm_sample_better(ov, oi, v, id)) {
      v = ov;
      id = oi;
    }
  }
}

/* The best (v, id) of the block by lm_sample_better, to every thread; id
 * -1 when no thread had one. Called by the whole block. */
static __device__ void lm_block_best(float &v, int &id) {
  __shared__ float s_v[32];
  __shared__ int s_id[32];
  __shared__ float s_best_v;
  __shared__ int s_best_id;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  lm_warp_best(v, id);
  if (lane == 0) {
    s_v[warp] = v;
    s_id[warp] = id;
  }
  __syncthreads();
  if (warp == 0) {
    bool have = lane < (int)(blockDim.x >> 5);
    v = have ? s_v[lane] : -INFINITY;
    id = have ? s_id[lane] : -1;
    lm_warp_best(v, id);
    if (lane == 0) {
      s_best_v = v;
      s_best_id = id;
    }
  }
  __syncthreads();
  v = s_best_v;
  id = s_best_id;
}

/* The block's sum, to every thread; lanes and then warps combine in a fixed
 * order, so a row's sum never depends on the batch. Called by the whole
 * block. */
template <typename T> static __device__ T lm_block_sum(T x) {
  __shared__ T s_part[32];
  __shared__ T s_total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    x += __shfl_down_sync(LM_SAMPLE_FULL, x, o);
  if (lane == 0) s_part[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < (int)(blockDim.x >> 5) ? s_part[lane] : (T)0;
    for (int o = 16; o > 0; o >>= 1)
      x += __shfl_down_sync(LM_SAMPLE_FULL, x, o);
    if (lane == 0) s_total = x;
  }
  __syncthreads();
  return s_total;
}

/* ---- radix select over the candidate order -------------------------------- */

enum { LM_SEL_COUNT, LM_SEL_MASS_GE, LM_SEL_MASS_GT };

/* The bound a select looks for, on the running count and mass of the order
 * through an element: count >= k, mass >= thr or mass > thr. */
struct lm_sel_bound {
  int kind;
  unsigned k;
  double thr; /* in mass units */
};

static __device__ __forceinline__ bool lm_sel_reached(const lm_sel_bound &b, unsigned cnt,
                                                      unsigned long long mass) {
  if (b.kind == LM_SEL_COUNT) return cnt >= b.k;
  return b.kind == LM_SEL_MASS_GE ? (double)mass >= b.thr : (double)mass > b.thr;
}

static __device__ __forceinline__ unsigned long long lm_rank(float e, int id) {
  return (unsigned long long)__float_as_uint(e) << 32 | (0xffffffffu - (unsigned)id);
}

static __device__ __forceinline__ float lm_rank_weight(unsigned long long rank) {
  return __uint_as_float((unsigned)(rank >> 32));
}

static __device__ __forceinline__ unsigned long long lm_mass(float e, double scale) {
  return __double2ull_rn((double)e * scale);
}

/* Adds (count 1, mass m) to bucket d for every lane with in set. Lanes of a
 * warp that share a bucket add once, through their lowest lane: the first
 * passes put most of a row into a few buckets, where shared-memory atomics
 * on one address would serialize. Called by all 32 lanes; m < 2^63. */
static __device__ __forceinline__ void lm_hist_add(unsigned *h_cnt, unsigned long long *h_mass,
                                                   bool in, unsigned d, unsigned long long m) {
  unsigned peers = __match_any_sync(LM_SAMPLE_FULL, in ? d : LM_SAMPLE_FULL);
  /* 21-bit pieces: 32 of them sum below 2^26, within the 32-bit reduction */
  unsigned a = __reduce_add_sync(peers, (unsigned)m & 0x1fffffu);
  unsigned b = __reduce_add_sync(peers, (unsigned)(m >> 21) & 0x1fffffu);
  unsigned c = __reduce_add_sync(peers, (unsigned)(m >> 42));
  if (in && (int)(threadIdx.x & 31) == __ffs(peers) - 1) {
    atomicAdd(&h_cnt[d], (unsigned)__popc(peers));
    atomicAdd(&h_mass[d], a + ((unsigned long long)b << 21) + ((unsigned long long)c << 42));
  }
}

enum { LM_SEL_MORE, LM_SEL_ONE, LM_SEL_NONE };

/* What warp 0 tells the block after a pass. */
struct lm_sel_state {
  unsigned long long prefix;      /* the rank's digits found so far */
  unsigned long long before_mass; /* of the kept ranks above the prefix */
  unsigned long long found;       /* the rank, read by the last pass */
  unsigned before_cnt;
  int step; /* LM_SEL_MORE: go on; LM_SEL_ONE: one rank has the prefix; LM_SEL_NONE: empty */
};

/* Warp 0: the digit at shift. Lane l holds digits 255 - 8l down to 248 - 8l,
 * so lanes in order walk the digits in descending order; a scan over the
 * lanes' sums gives each lane the count and mass above its digits, and the
 * first lane whose digit reaches the bound wins. When no digit does (the
 * bound lies past the kept set), the last kept rank is taken: the lowest
 * non-empty digit. */
static __device__ void lm_sel_scan(const unsigned *h_cnt, const unsigned long long *h_mass,
                                   int shift, unsigned long long prefix, unsigned bcnt,
                                   unsigned long long bmass, const lm_sel_bound &b,
                                   lm_sel_state *st) {
  const int lane = threadIdx.x & 31;
  const int top = 255 - 8 * lane;
  unsigned lc = 0;
  unsigned long long lm = 0;
  for (int j = 0; j < 8; j++) {
    lc += h_cnt[top - j];
    lm += h_mass[top - j];
  }
  unsigned ic = lc; /* inclusive over lanes 0..lane */
  unsigned long long im = lm;
  for (int o = 1; o < 32; o <<= 1) {
    unsigned oc = __shfl_up_sync(LM_SAMPLE_FULL, ic, o);
    unsigned long long om = __shfl_up_sync(LM_SAMPLE_FULL, im, o);
    if (lane >= o) {
      ic += oc;
      im += om;
    }
  }
  unsigned cnt = bcnt + ic - lc; /* running totals before each digit */
  unsigned long long mass = bmass + im - lm;
  int hit = -1;
  for (int j = 0; j < 8 && hit < 0; j++) {
    int d = top - j;
    if (h_cnt[d] > 0 && lm_sel_reached(b, cnt + h_cnt[d], mass + h_mass[d])) {
      hit = d;
    } else {
      cnt += h_cnt[d];
      mass += h_mass[d];
    }
  }
  unsigned hits = __ballot_sync(LM_SAMPLE_FULL, hit >= 0);
  int d = -1;
  if (hits) {
    if (lane == __ffs(hits) - 1) d = hit;
  } else {
    unsigned nonempty = __ballot_sync(LM_SAMPLE_FULL, lc > 0);
    if (!nonempty) {
      if (lane == 0) {
        st->prefix = prefix;
        st->before_cnt = bcnt;
        st->before_mass = bmass;
        st->step = LM_SEL_NONE;
      }
      return;
    }
    if (lane == 31 - __clz(nonempty)) {
      for (int j = 7; j >= 0 && d < 0; j--)
        if (h_cnt[top - j]) d = top - j;
      cnt = bcnt + ic - h_cnt[d];
      mass = bmass + im - h_mass[d];
    }
  }
  if (d >= 0) {
    st->prefix = prefix | (unsigned long long)d << shift;
    st->before_cnt = cnt;
    st->before_mass = mass;
    st->step = h_cnt[d] == 1 ? LM_SEL_ONE : LM_SEL_MORE;
  }
}

struct lm_sel {
  unsigned long long rank;        /* < LM_SAMPLE_CAND_MIN: none */
  unsigned long long before_mass; /* of the kept ranks above it */
};

/* The first element of the order, among the kept ranks (>= r_min), whose
 * running count and mass reach b; the last kept one when none does. e:
 * [vocab] weights, 0 for the ids that are not candidates. Called by the
 * whole block. */
static __device__ lm_sel lm_select(const float *e, int vocab, unsigned long long r_min,
                                   const lm_sel_bound &b, double scale) {
  __shared__ unsigned h_cnt[256];
  __shared__ unsigned long long h_mass[256];
  __shared__ lm_sel_state st;
  const int lane = threadIdx.x & 31;
  unsigned long long prefix = 0, mask = 0, bmass = 0;
  unsigned bcnt = 0;
  int step = LM_SEL_MORE;
  for (int shift = 56; shift >= 0 && step == LM_SEL_MORE; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
      h_cnt[d] = 0;
      h_mass[d] = 0;
    }
    __syncthreads();
    /* i0 is the same for the whole warp, as lm_hist_add needs */
    for (int i0 = threadIdx.x - lane; i0 < vocab; i0 += blockDim.x) {
      int i = i0 + lane;
      float ei = i < vocab ? e[i] : 0.0f;
      unsigned long long r = i < vocab ? lm_rank(ei, i) : 0;
      bool in = r >= r_min && (r & mask) == prefix;
      lm_hist_add(h_cnt, h_mass, in, (unsigned)(r >> shift) & 255u, in ? lm_mass(ei, scale) : 0);
    }
    __syncthreads();
    if (threadIdx.x < 32) lm_sel_scan(h_cnt, h_mass, shift, prefix, bcnt, bmass, b, &st);
    __syncthreads();
    prefix = st.prefix;
    bcnt = st.before_cnt;
    bmass = st.before_mass;
    step = st.step;
    mask |= 0xffull << shift;
  }
  lm_sel out = {0, bmass};
  if (step == LM_SEL_NONE) return out;
  if (mask == ~0ull) {
    out.rank = prefix;
    return out;
  }
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    unsigned long long r = lm_rank(e[i], i);
    if (r >= r_min && (r & mask) == prefix) st.found = r; /* exactly one thread */
  }
  __syncthreads();
  out.rank = st.found;
  return out;
}

/* ---- the steps of lm_sampler_sample --------------------------------------- */

/* apply_penalties after the bias and bans: the repetition penalty once per
 * distinct id of prompt and output, presence once per distinct id of the
 * output, frequency per occurrence in the output. The first thread to take
 * an id's count (and zero it) applies them. w: [vocab]; counts: [vocab]
 * scratch. Called by the whole block. */
static __device__ void lm_sample_penalties(float *w, int32_t *counts, int vocab,
                                           const struct lm_cuda_sample_row *p, const int32_t *ids) {
  const float rp = p->repetition_penalty, pres = p->presence_penalty, freq = p->frequency_penalty;
  const bool rep = rp > 0 && rp != 1.0f;
  const int n = p->n_history;
  if (n <= 0 || (!rep && pres == 0 && freq == 0)) return;
  const int32_t *h = ids + p->history_start; /* h: [n] prompt, then output */
  const int n_prompt = p->n_prompt < 0 ? 0 : (p->n_prompt < n ? p->n_prompt : n);
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (h[i] >= 0 && h[i] < vocab) counts[h[i]] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int id = h[i];
    if (id < 0 || id >= vocab) continue;
    if (i < n_prompt)
      atomicOr(&counts[id], LM_SAMPLE_IN_PROMPT);
    else
      atomicAdd(&counts[id], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    int id = h[i];
    if (id < 0 || id >= vocab) continue;
    int c = atomicExch(&counts[id], 0);
    if (c == 0) continue;
    int out = c & ~LM_SAMPLE_IN_PROMPT;
    float l = w[id];
    /* _rn: no contraction into an fma, so the roundings are the CPU's */
    if (rep) l = l > 0 ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
    if (out > 0) l = __fsub_rn(l, __fadd_rn(pres, __fmul_rn(freq, (float)out)));
    w[id] = l;
  }
  __syncthreads();
}

/* The draw at temperature 1 / inv_t from the working logits w (turned into
 * weights in place), whose largest is max: min_p, top_k, top_p, then the
 * first id of the order whose running mass passes u * kept mass. greedy
 * when nothing is left to draw from. Called by the whole block. */
static __device__ int lm_sample_draw(float *w, int vocab, const struct lm_cuda_sample_row *p,
                                     float max, float inv_t, int greedy) {
  /* weights relative to the most likely id, whose weight is 1: min_p is a
   * floor on the weight itself */
  const float floor_e = p->min_p > 0 ? p->min_p : 0.0f;
  /* vocab < 2^bits and every weight <= 1, so a row's mass stays below 2^63 */
  const int bits = 32 - __clz(vocab);
  const double scale = (double)(1ull << (63 - bits));
  unsigned n = 0;
  unsigned long long total = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float e = expf(__fmul_rn(__fsub_rn(w[i], max), inv_t));
    bool keep = e > 0.0f && e >= floor_e; /* false for NaN */
    w[i] = keep ? e : 0.0f;
    if (keep) {
      n++;
      total += lm_mass(e, scale);
    }
  }
  n = lm_block_sum(n);
  total = lm_block_sum(total);
  if (n == 0) return greedy; /* no finite logit to sample from */
  unsigned long long r_min = LM_SAMPLE_CAND_MIN;
  if (p->top_k > 0 && (unsigned)p->top_k < n) {
    lm_sel_bound b = {LM_SEL_COUNT, (unsigned)p->top_k, 0.0};
    lm_sel s = lm_select(w, vocab, r_min, b, scale);
    if (s.rank < LM_SAMPLE_CAND_MIN) return greedy;
    r_min = s.rank;
    total = s.before_mass + lm_mass(lm_rank_weight(s.rank), scale);
  }
  if (p->top_p > 0 && p->top_p < 1) {
    lm_sel_bound b = {LM_SEL_MASS_GE, 0, (double)p->top_p * (double)total};
    lm_sel s = lm_select(w, vocab, r_min, b, scale);
    if (s.rank < LM_SAMPLE_CAND_MIN) return greedy;
    r_min = s.rank;
    total = s.before_mass + lm_mass(lm_rank_weight(s.rank), scale);
  }
  double u = (double)lm_sample_uniform(p->seed, p->position) * (double)total;
  lm_sel_bound b = {LM_SEL_MASS_GT, 0, u};
  lm_sel s = lm_select(w, vocab, r_min, b, scale);
  if (s.rank < LM_SAMPLE_CAND_MIN) return greedy;
  unsigned id = 0xffffffffu - (unsigned)s.rank;
  return id < (unsigned)vocab ? (int)id : greedy;
}

/* One block per row. logits: [n, vocab]; rows, out: [n]; workspace: [n]
 * rows of 2 * lm_sample_half_bytes(vocab). */
__global__ void __launch_bounds__(LM_SAMPLE_THREADS)
    lm_sample_kernel(const float *logits, int vocab, const struct lm_cuda_sample_row *rows,
                     const int32_t *ids, const float *bias_values, char *workspace,
                     struct lm_cuda_sample_out *outs) {
  const struct lm_cuda_sample_row *p = &rows[blockIdx.x];
  struct lm_cuda_sample_out *out = &outs[blockIdx.x];
  const size_t half = lm_sample_half_bytes(vocab);
  const float *x = logits + (size_t)blockIdx.x * vocab;            /* x: [vocab] raw logits */
  float *w = (float *)(workspace + (size_t)blockIdx.x * 2 * half); /* w: [vocab] working logits */
  int32_t *counts = (int32_t *)(workspace + (size_t)blockIdx.x * 2 * half + half); /* [vocab] */
  const int tid = threadIdx.x, nt = blockDim.x;

  /* The raw argmax and each thread's n best raw logits (ids ascending, so
   * a strict > keeps the lower id first on ties), copying x into w. */
  const int n_top =
      p->n_top < 0 ? 0 : (p->n_top < LM_CUDA_SAMPLE_MAX_TOP ? p->n_top : LM_CUDA_SAMPLE_MAX_TOP);
  const bool want_lp = !p->skip_logprob || n_top > 0;
  float top_v[LM_CUDA_SAMPLE_MAX_TOP]; /* top_v, top_id: [have] this thread's best first */
  int top_id[LM_CUDA_SAMPLE_MAX_TOP];
  int have = 0;
  float bv = -INFINITY;
  int bi = -1;
  for (int i = tid; i < vocab; i += nt) {
    float v = x[i];
    w[i] = v;
    if (v != v) continue; /* NaNs are never the argmax nor a top logprob */
    if (bi < 0 || v > bv) {
      bv = v;
      bi = i;
    }
    if (n_top > 0 && (have < n_top || v > top_v[n_top - 1])) {
      int j = have < n_top ? have++ : n_top - 1;
      while (j > 0 && v > top_v[j - 1]) {
        top_v[j] = top_v[j - 1];
        top_id[j] = top_id[j - 1];
        j--;
      }
      top_v[j] = v;
      top_id[j] = i;
    }
  }
  lm_block_best(bv, bi);
  const float raw_max = bi >= 0 ? bv : __int_as_float(0x7fc00000); /* all NaN: x[0], a NaN */

  /* log(sum(exp(x - max))) in double, as log_sum_exp */
  double lse = __longlong_as_double(0x7ff8000000000000ll);
  if (want_lp) {
    double s = 0;
    for (int i = tid; i < vocab; i += nt) {
      float v = x[i];
      if (v == v) s += exp((double)v - (double)raw_max);
    }
    lse = (double)raw_max + log(lm_block_sum(s));
  }

  /* Merge the threads' lists: n rounds of the block's best head. */
  int head = 0, n_out = 0;
  for (int r = 0; r < n_top; r++) {
    float v = head < have ? top_v[head] : -INFINITY;
    int id = head < have ? top_id[head] : -1;
    lm_block_best(v, id);
    if (id < 0) break; /* fewer non-NaN logits than n_top */
    if (head < have && top_id[head] == id) head++;
    if (tid == 0) {
      out->top_ids[r] = id;
      out->top_logprobs[r] = (float)((double)v - lse);
    }
    n_out = r + 1;
  }
  if (tid == 0)
    for (int r = n_out; r < LM_CUDA_SAMPLE_MAX_TOP; r++) {
      out->top_ids[r] = -1;
      out->top_logprobs[r] = -INFINITY;
    }

  /* Bias, bans, penalties on w. A bias adds once per entry; entries that
   * repeat an id add in no fixed order (the same sum up to rounding). */
  __syncthreads(); /* every w[i] is copied before biases land on any id */
  for (int i = tid; i < p->n_bias; i += nt) {
    int id = ids[p->bias_start + i];
    if (id >= 0 && id < vocab) atomicAdd(&w[id], bias_values[p->bias_start + i]);
  }
  __syncthreads();
  for (int i = tid; i < p->n_banned; i += nt) {
    int id = ids[p->banned_start + i];
    if (id >= 0 && id < vocab) w[id] = -INFINITY;
  }
  __syncthreads();
  lm_sample_penalties(w, counts, vocab, p, ids);

  /* Greedy is the argmax of w; the draw needs its max too. */
  float gv = -INFINITY;
  int gi = -1;
  for (int i = tid; i < vocab; i += nt) {
    float v = w[i];
    if (v == v && (gi < 0 || v > gv)) {
      gv = v;
      gi = i;
    }
  }
  lm_block_best(gv, gi);
  int pick = gi >= 0 ? gi : 0;
  const float t = p->temperature;
  const float inv_t = t > 0 ? 1.0f / t : 0.0f;
  /* temperature 0, or so small that 1/t overflows: greedy */
  if (inv_t > 0 && !isinf(inv_t))
    pick = lm_sample_draw(w, vocab, p, gi >= 0 ? gv : __int_as_float(0x7fc00000), inv_t, pick);
  if (tid == 0) {
    out->id = pick;
    out->logprob = (float)((double)x[pick] - lse); /* NaN when no logprob was wanted */
  }
}

extern "C" size_t lm_cuda_sample_workspace_bytes(int max_rows, int vocab) {
  if (max_rows <= 0 || vocab <= 0) return 0;
  return (size_t)max_rows * 2 * lm_sample_half_bytes(vocab);
}

extern "C" void lm_cuda_sample(const float *logits, int n, int vocab,
                               const struct lm_cuda_sample_row *rows, const int32_t *ids,
                               const float *bias_values, void *workspace,
                               struct lm_cuda_sample_out *out, void *stream) {
  if (n <= 0 || vocab <= 0) return;
  lm_sample_kernel<<<(unsigned)n, LM_SAMPLE_THREADS, 0, (cudaStream_t)stream>>>(
      logits, vocab, rows, ids, bias_values, (char *)workspace, out);
}
