/* sampler_test.c - Philox against the published known-answer vectors, and
 * each sampling step's effect on which ids can be drawn and how often. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "tests/check.h"

static void test_philox_kat(void) {
  /* Random123 kat_vectors, philox4x32 with 10 rounds */
  static const struct {
    uint32_t ctr[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (size_t i = 0; i < sizeof(kat) / sizeof(kat[0]); i++) {
    uint32_t out[4];
    uint64_t key = (uint64_t)kat[i].key[1] << 32 | kat[i].key[0];
    uint64_t lo = (uint64_t)kat[i].ctr[1] << 32 | kat[i].ctr[0];
    uint64_t hi = (uint64_t)kat[i].ctr[3] << 32 | kat[i].ctr[2];
    lm_philox4x32(key, hi, lo, out);
    lm_check(!memcmp(out, kat[i].out, sizeof(out)), "philox4x32-10 known answer %zu", i);
  }
}

#define VOCAB 64

static struct lm_sample_result draw(const float *logits, const struct lm_sampling *p, uint64_t pos,
                                    const int32_t *hist, size_t n_hist) {
  static float scratch[3 * VOCAB];
  struct lm_sample_row row = {.params = p, .position = pos, .history = hist, .n_history = n_hist};
  return lm_sampler_sample(logits, VOCAB, &row, scratch);
}

static void test_greedy(void) {
  float l[VOCAB];
  for (int i = 0; i < VOCAB; i++)
    l[i] = (float)(i % 7);
  struct lm_sampling p = {0};
  struct lm_sample_result r = draw(l, &p, 0, NULL, 0);
  lm_check(r.id == 6, "greedy picks the lowest id among tied maxima (got %d)", r.id);
  double lse = 0;
  for (int i = 0; i < VOCAB; i++)
    lse += exp(l[i]);
  lm_check(fabs(r.logprob - (6 - log(lse))) < 1e-5, "logprob is log-softmax of the raw logits");
  struct lm_logit_bias bias = {13, 100};
  p.logit_bias = &bias;
  p.n_logit_bias = 1;
  r = draw(l, &p, 0, NULL, 0);
  lm_check(r.id == 13 && fabs(r.logprob - (6 - log(lse))) < 1e-5,
           "logit bias moves the choice, not the reported logprob");
}

static void test_distribution(void) {
  float l[VOCAB];
  for (int i = 0; i < VOCAB; i++)
    l[i] = i < 4 ? (float)i : -30.0f;
  struct lm_sampling p = {.temperature = 1.0f, .seed = 1234};
  int count[VOCAB] = {0};
  const int n = 20000;
  for (int i = 0; i < n; i++)
    count[draw(l, &p, (uint64_t)i, NULL, 0).id]++;
  double z = exp(0) + exp(1) + exp(2) + exp(3), worst = 0;
  for (int i = 0; i < 4; i++) {
    double want = exp(i) / z;
    double dev = fabs(count[i] / (double)n - want) / sqrt(want * (1 - want) / n);
    if (dev > worst) worst = dev;
  }
  lm_check(worst < 5, "frequencies follow softmax (worst deviation %.2f sigma)", worst);

  struct lm_sampling same = p;
  int equal = 1, differ = 0;
  for (int i = 0; i < 200; i++) {
    equal &= draw(l, &p, (uint64_t)i, NULL, 0).id == draw(l, &same, (uint64_t)i, NULL, 0).id;
    struct lm_sampling other = p;
    other.seed = 99;
    differ += draw(l, &p, (uint64_t)i, NULL, 0).id != draw(l, &other, (uint64_t)i, NULL, 0).id;
  }
  lm_check(equal, "same seed and position give the same id");
  lm_check(differ > 20, "another seed gives other draws (%d of 200 differ)", differ);

  struct lm_sampling k1 = {.temperature = 1.0f, .top_k = 1, .seed = 5};
  int all_top = 1;
  for (int i = 0; i < 200; i++)
    all_top &= draw(l, &k1, (uint64_t)i, NULL, 0).id == 3;
  lm_check(all_top, "top_k 1 is greedy");

  /* probabilities 0.644, 0.237, 0.087, 0.032: top_p 0.7 keeps ids 3 and 2 */
  struct lm_sampling tp = {.temperature = 1.0f, .top_p = 0.7f, .seed = 5};
  int seen[VOCAB] = {0};
  for (int i = 0; i < 2000; i++)
    seen[draw(l, &tp, (uint64_t)i, NULL, 0).id]++;
  lm_check(seen[3] && seen[2] && !seen[1] && !seen[0], "top_p 0.7 keeps the two likeliest ids");

  struct lm_sampling mp = {.temperature = 1.0f, .min_p = 0.3f, .seed = 5};
  memset(seen, 0, sizeof(seen));
  for (int i = 0; i < 2000; i++)
    seen[draw(l, &mp, (uint64_t)i, NULL, 0).id]++;
  lm_check(seen[3] && seen[2] && !seen[1] && !seen[0], "min_p 0.3 drops ids under 0.3 x max");
}

static void test_penalties(void) {
  float l[VOCAB] = {0};
  l[1] = 2.0f;
  l[2] = 1.9f;
  int32_t hist[] = {1, 1, 1};
  struct lm_sampling p = {.repetition_penalty = 1.2f};
  lm_check(draw(l, &p, 0, hist, 3).id == 2, "repetition penalty demotes a seen id");
  struct lm_sampling f = {.frequency_penalty = 0.05f};
  lm_check(draw(l, &f, 0, hist, 3).id == 2, "frequency penalty counts each occurrence");
  struct lm_sampling pr = {.presence_penalty = 0.05f};
  lm_check(draw(l, &pr, 0, hist, 3).id == 1, "presence penalty counts an id once");
}

static void test_degenerate(void) {
  float l[VOCAB];
  for (int i = 0; i < VOCAB; i++)
    l[i] = (float)(i % 5);
  struct lm_sampling tiny = {.temperature = 1e-40f, .seed = 1};
  lm_check(draw(l, &tiny, 0, NULL, 0).id == 4, "a temperature so small 1/t overflows is greedy");
  float nan[VOCAB];
  for (int i = 0; i < VOCAB; i++)
    nan[i] = __builtin_nanf("");
  nan[9] = 1.0f;
  struct lm_sampling t1 = {.temperature = 1.0f, .seed = 1};
  struct lm_sample_result r = draw(nan, &t1, 0, NULL, 0);
  lm_check(r.id == 9, "NaN logits are never chosen (got %d)", r.id);
  for (int i = 0; i < VOCAB; i++)
    nan[i] = __builtin_nanf("");
  r = draw(nan, &t1, 0, NULL, 0);
  lm_check(r.id >= 0 && r.id < VOCAB, "all-NaN logits still give an id in range (%d)", r.id);
}

/* Reference for the truncation steps: sort everything, then cut. */
struct ref_cand {
  double p;
  int id;
};

static int ref_cmp(const void *a, const void *b) {
  const struct ref_cand *x = a, *y = b;
  if (x->p != y->p) return x->p > y->p ? -1 : 1;
  return x->id - y->id;
}

static int ref_sample(const float *l, int V, const struct lm_sampling *p, uint64_t pos) {
  struct ref_cand *c = malloc((size_t)V * sizeof(*c));
  float max = l[0];
  for (int i = 1; i < V; i++)
    if (l[i] > max) max = l[i];
  int n = 0;
  for (int i = 0; i < V; i++) {
    float e = expf((l[i] - max) * (1.0f / p->temperature));
    if (e > 0 && e >= p->min_p) c[n++] = (struct ref_cand){e, i};
  }
  qsort(c, (size_t)n, sizeof(*c), ref_cmp);
  if (p->top_k > 0 && p->top_k < n) n = p->top_k;
  double total = 0;
  for (int i = 0; i < n; i++)
    total += c[i].p;
  if (p->top_p > 0 && p->top_p < 1) {
    double target = p->top_p * total, acc = 0;
    int keep = 0;
    while (keep < n) {
      acc += c[keep++].p;
      if (acc >= target) break;
    }
    n = keep;
    total = acc;
  }
  double u = (double)lm_sampler_uniform(p->seed, pos) * total, acc = 0;
  int pick = c[n - 1].id;
  for (int i = 0; i < n; i++) {
    acc += c[i].p;
    if (u < acc) {
      pick = c[i].id;
      break;
    }
  }
  free(c);
  return pick;
}

static void test_against_full_sort(void) {
  enum { V = 3000 };
  float *l = malloc(V * sizeof(float)), *scratch = malloc(LM_SAMPLER_SCRATCH_FLOATS(V) * 4);
  int same = 0, n = 0;
  srand(11);
  for (int trial = 0; trial < 300; trial++) {
    float spread = (float)(rand() % 20 + 1);
    for (int i = 0; i < V; i++)
      l[i] = spread * (float)rand() / (float)RAND_MAX;
    struct lm_sampling p = {.temperature = 0.3f + (float)(rand() % 10) / 5.0f,
                            .top_k = rand() % 3 ? 0 : rand() % 2000,
                            .top_p = rand() % 2 ? 0 : (float)(rand() % 100) / 100.0f,
                            .min_p = rand() % 3 ? 0 : (float)(rand() % 50) / 100.0f,
                            .seed = (uint64_t)trial};
    struct lm_sample_row row = {.params = &p, .position = (uint64_t)trial};
    same += lm_sampler_sample(l, V, &row, scratch).id == ref_sample(l, V, &p, (uint64_t)trial);
    n++;
  }
  lm_check(same == n, "top-k/top-p/min-p by selection == by sorting everything (%d of %d)", same,
           n);
  free(l);
  free(scratch);
}

static void test_uniform(void) {
  float lo = 1, hi = 0;
  for (uint64_t i = 0; i < 100000; i++) {
    float u = lm_sampler_uniform(42, i);
    if (u < lo) lo = u;
    if (u > hi) hi = u;
  }
  lm_check(lo >= 0 && lo < 1e-3f && hi < 1 && hi > 0.999f, "uniform draws cover [0, 1)");
}

int main(void) {
  test_philox_kat();
  test_greedy();
  test_distribution();
  test_penalties();
  test_degenerate();
  test_against_full_sort();
  test_uniform();
  return lm_check_done();
}
