/* sampler.c - logits to token ids on the host, with a Philox stream.
 *
 * Order of the steps (the CUDA sampler follows the same order):
 *   logprob of every id from the raw logits (what is reported)
 *   logit bias, repetition / presence / frequency penalties
 *   greedy argmax when temperature is 0
 *   temperature, then min-p, top-k and top-p over the distribution
 *   inverse CDF walk over the kept ids, sorted by (probability desc, id asc),
 *   at u = uniform(seed, output position). */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void lm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
  uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = (uint32_t)p0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

float lm_sampler_uniform(uint64_t seed, uint64_t position) {
  uint32_t r[4];
  lm_philox4x32(seed, 0, position, r);
  return (float)(r[0] >> 8) * (1.0f / 16777216.0f); /* 24 bits: exact in f32, < 1 */
}

int lm_sampling_check(const struct lm_sampling *s, int vocab_size, char *err) {
  if (!isfinite(s->temperature) || s->temperature < 0)
    return lm_errf(err, LM_EINVAL, "temperature must be >= 0, got %g", (double)s->temperature);
  if (!(s->top_p >= 0 && s->top_p <= 1))
    return lm_errf(err, LM_EINVAL, "top_p must be in (0, 1] (0: off), got %g", (double)s->top_p);
  if (s->top_k < 0) return lm_errf(err, LM_EINVAL, "top_k must be >= 0 (0: off), got %d", s->top_k);
  if (!(s->min_p >= 0 && s->min_p <= 1))
    return lm_errf(err, LM_EINVAL, "min_p must be in [0, 1], got %g", (double)s->min_p);
  if (!isfinite(s->repetition_penalty) || s->repetition_penalty < 0)
    return lm_errf(err, LM_EINVAL, "repetition_penalty must be > 0 (0: off), got %g",
                   (double)s->repetition_penalty);
  if (!isfinite(s->presence_penalty))
    return lm_errf(err, LM_EINVAL, "presence_penalty must be finite, got %g",
                   (double)s->presence_penalty);
  if (!isfinite(s->frequency_penalty))
    return lm_errf(err, LM_EINVAL, "frequency_penalty must be finite, got %g",
                   (double)s->frequency_penalty);
  if (s->n_logit_bias && !s->logit_bias)
    return lm_errf(err, LM_EINVAL, "logit_bias: %zu entries without a list", s->n_logit_bias);
  for (size_t i = 0; i < s->n_logit_bias; i++) {
    const struct lm_logit_bias *b = &s->logit_bias[i];
    if (b->id < 0 || b->id >= vocab_size)
      return lm_errf(err, LM_EINVAL, "logit_bias: token id %d is outside the vocabulary (0..%d)",
                     (int)b->id, vocab_size - 1);
    if (!isfinite(b->bias))
      return lm_errf(err, LM_EINVAL, "logit_bias: the bias of token %d must be finite, got %g",
                     (int)b->id, (double)b->bias);
  }
  return LM_OK;
}

int lm_sampling_penalizes(const struct lm_sampling *s) {
  return (s->repetition_penalty > 0 && s->repetition_penalty != 1.0f) || s->presence_penalty != 0 ||
         s->frequency_penalty != 0;
}

static int argmax_scalar(const float *x, int n) {
  int best = -1;
  for (int i = 0; i < n; i++)
    if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i; /* x == x: not NaN */
  return best < 0 ? 0 : best;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* The same answer 16 lanes at a time: each lane keeps the first index of
 * its largest non-NaN value (or its first non-NaN one, all being -inf);
 * then the largest value wins, the smallest index among equals. */
__attribute__((target("avx512f"))) static int argmax_avx512(const float *x, int n) {
  __m512 best = _mm512_set1_ps(-INFINITY);
  __m512i idx = _mm512_set1_epi32(-1),
          cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int i = 0;
  for (; i < n; i += 16) {
    __mmask16 in = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(in, x + i);
    __mmask16 valid = _mm512_mask_cmp_ps_mask(in, v, v, _CMP_ORD_Q);
    __mmask16 none = _mm512_cmplt_epi32_mask(idx, _mm512_setzero_si512());
    __mmask16 up = valid & (_mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | none);
    best = _mm512_mask_mov_ps(best, up, v);
    idx = _mm512_mask_mov_epi32(idx, up, cur);
    cur = _mm512_add_epi32(cur, step);
  }
  int32_t li[16];
  float lv[16];
  _mm512_storeu_si512(li, idx);
  _mm512_storeu_ps(lv, best);
  int win = -1;
  for (int l = 0; l < 16; l++)
    if (li[l] >= 0 && (win < 0 || lv[l] > lv[win] || (lv[l] == lv[win] && li[l] < li[win])))
      win = l;
  return win < 0 ? 0 : li[win];
}
#endif

int lm_sampler_argmax(const float *x, int n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return argmax_avx512(x, n);
#endif
  return argmax_scalar(x, n);
}

/* log(sum(exp(x))) with the max taken out, in double for a stable logprob;
 * NaNs are left out, as argmax leaves them out. */
static double log_sum_exp(const float *x, int n, float max) {
  double s = 0;
  for (int i = 0; i < n; i++)
    if (x[i] == x[i]) s += exp((double)x[i] - max);
  return (double)max + log(s);
}

#define SEEN_IN_PROMPT 0x40000000 /* a flag beside the output count */

/* counts: [vocab] int32 scratch. As in vLLM: the repetition penalty applies
 * once to every distinct id of prompt and output, presence once to every
 * distinct id of the output, frequency once per occurrence in the output. */
static void apply_penalties(float *l, int vocab, const struct lm_sampling *p,
                            const struct lm_sample_row *row, int32_t *counts) {
  for (size_t i = 0; i < p->n_logit_bias; i++) {
    int32_t id = p->logit_bias[i].id;
    if (id >= 0 && id < vocab) l[id] += p->logit_bias[i].bias;
  }
  for (int i = 0; i < row->n_banned; i++)
    if (row->banned[i] >= 0 && row->banned[i] < vocab) l[row->banned[i]] = -INFINITY;
  int rep = p->repetition_penalty > 0 && p->repetition_penalty != 1.0f;
  if (!row->history || !lm_sampling_penalizes(p)) return;
  size_t n_prompt = row->n_prompt < row->n_history ? row->n_prompt : row->n_history;
  memset(counts, 0, (size_t)vocab * sizeof(*counts));
  for (size_t i = 0; i < row->n_history; i++) {
    int32_t id = row->history[i];
    if (id < 0 || id >= vocab) continue;
    if (i < n_prompt)
      counts[id] |= SEEN_IN_PROMPT;
    else
      counts[id]++;
  }
  for (size_t i = 0; i < row->n_history; i++) {
    int32_t id = row->history[i];
    if (id < 0 || id >= vocab || counts[id] == 0) continue;
    int32_t out = counts[id] & ~SEEN_IN_PROMPT;
    if (rep) l[id] = l[id] > 0 ? l[id] / p->repetition_penalty : l[id] * p->repetition_penalty;
    if (out > 0) l[id] -= p->presence_penalty + p->frequency_penalty * (float)out;
    counts[id] = 0; /* once per distinct id */
  }
}

/* top: [n] the n largest logits, best first, lower id first on ties, as
 * logprobs (logit - lse); NaNs never qualify. Insertion into a sorted run of
 * at most LM_SAMPLER_MAX_TOP: O(vocab) with rare inserts. */
static void top_logprobs(const float *logits, int vocab, double lse, struct lm_token_logprob *top,
                         int n) {
  int have = 0;
  for (int i = 0; i < vocab; i++) {
    float x = logits[i];
    if (x != x || (have == n && !(x > top[n - 1].logprob))) continue;
    int j = have < n ? have++ : n - 1;
    while (j > 0 && x > top[j - 1].logprob) {
      top[j] = top[j - 1];
      j--;
    }
    top[j].id = i;
    top[j].logprob = x;
  }
  for (int j = 0; j < have; j++)
    top[j].logprob = (float)((double)top[j].logprob - lse);
  for (int j = have; j < n; j++) {
    top[j].id = -1;
    top[j].logprob = -INFINITY;
  }
}

struct cand {
  float p;
  int32_t id;
};

static int cand_cmp(const void *a, const void *b) {
  const struct cand *x = a, *y = b;
  if (x->p != y->p) return x->p > y->p ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Reorders c[0, n) so its first k entries are the k best by cand_cmp (a
 * total order, so the set is unique), in O(n): quickselect. */
static void select_top(struct cand *c, int n, int k) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    struct cand pivot = c[lo + (hi - lo) / 2];
    int i = lo, j = hi;
    while (i <= j) {
      while (cand_cmp(&c[i], &pivot) < 0)
        i++;
      while (cand_cmp(&c[j], &pivot) > 0)
        j--;
      if (i <= j) {
        struct cand t = c[i];
        c[i++] = c[j];
        c[j--] = t;
      }
    }
    if (k - 1 <= j)
      hi = j;
    else if (k - 1 >= i)
      lo = i;
    else
      break;
  }
}

static double sum_p(const struct cand *c, int n) {
  double s = 0;
  for (int i = 0; i < n; i++)
    s += c[i].p;
  return s;
}

struct lm_sample_result lm_sampler_sample(const float *logits, int vocab,
                                          const struct lm_sample_row *row, float *scratch) {
  const struct lm_sampling *p = row->params;
  struct lm_sample_result res;
  float *l = scratch; /* [vocab] working logits */
  int raw_max = lm_sampler_argmax(logits, vocab);
  int want_lp = !row->skip_logprob || (row->n_top_logprobs > 0 && row->top);
  double raw_lse = want_lp ? log_sum_exp(logits, vocab, logits[raw_max]) : NAN;
  if (row->n_top_logprobs > 0 && row->top) {
    int n = row->n_top_logprobs < LM_SAMPLER_MAX_TOP ? row->n_top_logprobs : LM_SAMPLER_MAX_TOP;
    top_logprobs(logits, vocab, raw_lse, row->top, n);
  }

  /* The candidates (and the penalty counts before them) use the rest of
   * scratch: vocab entries of 8 bytes = 2 * vocab floats after l. */
  struct cand *c = (struct cand *)(scratch + vocab);
  float inv_t = p->temperature > 0 ? 1.0f / p->temperature : 0.0f;
  int greedy = !(inv_t > 0) || isinf(inv_t); /* temperature 0, or so small 1/t overflows */
  if (greedy && p->n_logit_bias == 0 && row->n_banned == 0 &&
      !(row->history && lm_sampling_penalizes(p))) {
    /* nothing changes the raw logits: their argmax is the pick */
    res.id = raw_max;
    res.logprob = (float)((double)logits[res.id] - raw_lse);
    return res;
  }
  memcpy(l, logits, (size_t)vocab * sizeof(float));
  apply_penalties(l, vocab, p, row, (int32_t *)c);
  if (greedy) goto greedy;
  float max = l[lm_sampler_argmax(l, vocab)];
  /* weights relative to the most likely id, whose weight is 1: min_p is a
   * floor on the weight itself */
  float floor_e = p->min_p > 0 ? p->min_p : 0.0f;
  int n = 0;
  for (int i = 0; i < vocab; i++) {
    float e = expf((l[i] - max) * inv_t);
    if (e > 0 && e >= floor_e) {
      c[n].p = e;
      c[n].id = i;
      n++;
    }
  }
  if (n == 0) goto greedy; /* no finite logit to sample from */
  if (p->top_k > 0 && p->top_k < n) {
    select_top(c, n, p->top_k);
    n = p->top_k;
  }
  double total = sum_p(c, n);
  if (p->top_p > 0 && p->top_p < 1) {
    /* the nucleus is a prefix of the sorted order: sort only as much of
     * the candidates as it can span */
    double target = (double)p->top_p * total;
    int m = n < 256 ? n : 256;
    for (;;) {
      select_top(c, n, m);
      if (m == n || sum_p(c, m) >= target) break;
      m = m > n / 4 ? n : m * 4;
    }
    qsort(c, (size_t)m, sizeof(*c), cand_cmp);
    double acc = 0;
    int keep = 0;
    while (keep < m) {
      acc += c[keep++].p;
      if (acc >= target) break;
    }
    n = keep;
    total = acc;
  } else {
    qsort(c, (size_t)n, sizeof(*c), cand_cmp);
  }
  double u = (double)lm_sampler_uniform(p->seed, row->position) * total, acc = 0;
  int pick = n - 1;
  for (int i = 0; i < n; i++) {
    acc += c[i].p;
    if (u < acc) {
      pick = i;
      break;
    }
  }
  res.id = c[pick].id;
  res.logprob = (float)((double)logits[res.id] - raw_lse);
  return res;
greedy:
  res.id = lm_sampler_argmax(l, vocab);
  res.logprob = (float)((double)logits[res.id] - raw_lse);
  return res;
}
