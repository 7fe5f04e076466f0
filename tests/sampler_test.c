/* sampler_test.c - Philox against the published known-answer vectors,
 * each sampling step's effect on which ids can be drawn and how often, top
 * logprobs against sorting everything, penalties against vLLM's formula,
 * and the checks on sampling parameters. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
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

/* Reference top-n: sort every (logit, id), best first, lower id on ties. */
struct ref_top {
  float x;
  int id;
};

static int ref_top_cmp(const void *a, const void *b) {
  const struct ref_top *p = a, *q = b;
  if (p->x != q->x) return p->x > q->x ? -1 : 1;
  return p->id - q->id;
}

static void test_top_logprobs(void) {
  enum { V = 5000 };
  float *l = malloc(V * sizeof(float)), *scratch = malloc(LM_SAMPLER_SCRATCH_FLOATS(V) * 4);
  struct ref_top *ref = malloc(V * sizeof(*ref));
  int ids_ok = 1, lp_ok = 1, chosen_ok = 1;
  double worst = 0;
  srand(7);
  for (int trial = 0; trial < 200; trial++) {
    /* few distinct values: many ties; a NaN now and then */
    int levels = 2 + rand() % 200;
    int nv = 0;
    for (int i = 0; i < V; i++) {
      l[i] = (float)(rand() % levels) * 0.37f - 20.0f;
      if (rand() % 1000 == 0) l[i] = __builtin_nanf("");
      if (l[i] == l[i]) ref[nv++] = (struct ref_top){l[i], i};
    }
    qsort(ref, (size_t)nv, sizeof(*ref), ref_top_cmp);
    double m = ref[0].x, s = 0;
    for (int i = 0; i < nv; i++)
      s += exp((double)ref[i].x - m);
    double lse = m + log(s);
    struct lm_token_logprob top[LM_SAMPLER_MAX_TOP];
    struct lm_sampling p = {.temperature = trial % 2 ? 0.8f : 0.0f,
                            .seed = (uint64_t)trial,
                            .repetition_penalty = 1.3f};
    int32_t hist[] = {ref[0].id, ref[1].id};
    struct lm_sample_row row = {.params = &p,
                                .position = (uint64_t)trial,
                                .history = hist,
                                .n_history = 2,
                                .n_top_logprobs = 1 + trial % LM_SAMPLER_MAX_TOP,
                                .top = top};
    struct lm_sample_result r = lm_sampler_sample(l, V, &row, scratch);
    for (int j = 0; j < row.n_top_logprobs; j++) {
      ids_ok &= top[j].id == ref[j].id;
      double err = fabs(top[j].logprob - ((double)ref[j].x - lse));
      if (!(err <= worst)) worst = err; /* NaN counts as worst */
    }
    chosen_ok &= fabs(r.logprob - ((double)l[r.id] - lse)) < 1e-4;
  }
  lp_ok = worst < 1e-4; /* false for NaN */
  lm_check(ids_ok, "top logprobs: the same ids, in the same order (ties: lower id), as sorting "
                   "everything, penalties and temperature notwithstanding");
  lm_check(lp_ok, "top logprobs are log-softmax of the raw logits (worst error %.2g)", worst);
  lm_check(chosen_ok, "the chosen id's logprob is of the raw logits");
  free(l);
  free(scratch);
  free(ref);
}

/* vLLM's apply_penalties on one row: repetition over prompt and output
 * (divide positive logits, multiply the rest), then frequency and presence
 * over the output. */
static void ref_penalties(float *l, int V, const struct lm_sampling *p, const int32_t *h,
                          int n_prompt, int n) {
  int *in_prompt = calloc((size_t)V, sizeof(int)), *out = calloc((size_t)V, sizeof(int));
  for (int i = 0; i < n; i++)
    (i < n_prompt ? in_prompt : out)[h[i]] += 1;
  for (int i = 0; i < V; i++) {
    float rep = (in_prompt[i] || out[i]) && p->repetition_penalty > 0 ? p->repetition_penalty : 1;
    l[i] = l[i] > 0 ? l[i] / rep : l[i] * rep;
    l[i] -= p->frequency_penalty * (float)out[i];
    l[i] -= p->presence_penalty * (float)(out[i] > 0);
  }
  free(in_prompt);
  free(out);
}

static void test_penalties_vllm(void) {
  float l[VOCAB] = {0};
  l[1] = 2.0f;
  l[2] = 1.9f;
  int32_t prompt_only[] = {1};
  struct lm_sample_row row = {.history = prompt_only, .n_history = 1, .n_prompt = 1};
  static float scratch[3 * VOCAB];
  struct lm_sampling pr = {.presence_penalty = 1.0f}, rep = {.repetition_penalty = 1.2f};
  row.params = &pr;
  lm_check(lm_sampler_sample(l, VOCAB, &row, scratch).id == 1,
           "presence penalty ignores ids seen only in the prompt");
  row.params = &rep;
  lm_check(lm_sampler_sample(l, VOCAB, &row, scratch).id == 2,
           "repetition penalty covers ids seen in the prompt");
  struct lm_sampling fr = {.frequency_penalty = 1.0f};
  row.params = &fr;
  lm_check(lm_sampler_sample(l, VOCAB, &row, scratch).id == 1,
           "frequency penalty ignores ids seen only in the prompt");

  enum { V = 400 };
  float *x = malloc(V * sizeof(float)), *y = malloc(V * sizeof(float));
  float *big = malloc(LM_SAMPLER_SCRATCH_FLOATS(V) * sizeof(float));
  int32_t h[64];
  int same = 0, trials = 500;
  srand(3);
  for (int t = 0; t < trials; t++) {
    for (int i = 0; i < V; i++)
      x[i] = (float)(rand() % 2001 - 1000) / 250.0f;
    int n = rand() % 64, n_prompt = n ? rand() % (n + 1) : 0;
    for (int i = 0; i < n; i++)
      h[i] = rand() % 40; /* a small range: repeats */
    struct lm_sampling p = {.repetition_penalty = rand() % 2 ? 0 : 0.5f + (float)(rand() % 30) / 10,
                            .presence_penalty = (float)(rand() % 21 - 10) / 5,
                            .frequency_penalty = (float)(rand() % 21 - 10) / 5};
    memcpy(y, x, V * sizeof(float));
    ref_penalties(y, V, &p, h, n_prompt, n);
    struct lm_sample_row r = {
        .params = &p, .history = h, .n_history = (size_t)n, .n_prompt = (size_t)n_prompt};
    same += lm_sampler_sample(x, V, &r, big).id == lm_sampler_argmax(y, V);
  }
  lm_check(same == trials, "greedy after penalties == argmax of vLLM's formula (%d of %d)", same,
           trials);
  free(x);
  free(y);
  free(big);
}

static void test_banned(void) {
  float l[VOCAB];
  for (int i = 0; i < VOCAB; i++)
    l[i] = i < 4 ? (float)i : -30.0f;
  int32_t banned[] = {3, 2};
  static float scratch[3 * VOCAB];
  struct lm_sampling t1 = {.temperature = 1.0f, .seed = 9}, g = {0};
  struct lm_sample_row row = {.params = &t1, .banned = banned, .n_banned = 2};
  int never = 1;
  for (uint64_t i = 0; i < 500; i++) {
    row.position = i;
    int id = lm_sampler_sample(l, VOCAB, &row, scratch).id;
    never &= id != 3 && id != 2;
  }
  row.params = &g;
  struct lm_sample_result r = lm_sampler_sample(l, VOCAB, &row, scratch);
  lm_check(never && r.id == 1, "banned ids are never drawn, greedy or sampled (greedy: %d)", r.id);
}

static void test_check(void) {
  static const struct {
    struct lm_sampling s;
    const char *field; /* NULL: valid */
  } cases[] = {
      {{.temperature = 0.7f, .top_p = 0.9f, .top_k = 50, .min_p = 0.1f}, NULL},
      {{.top_p = 1.0f, .repetition_penalty = 1.1f, .presence_penalty = -2}, NULL},
      {{.temperature = -0.1f}, "temperature"},
      {{.temperature = __builtin_nanf("")}, "temperature"},
      {{.temperature = __builtin_inff()}, "temperature"},
      {{.top_p = 1.5f}, "top_p must be in (0, 1]"},
      {{.top_p = -0.5f}, "top_p"},
      {{.top_p = __builtin_nanf("")}, "top_p"},
      {{.top_k = -1}, "top_k"},
      {{.min_p = 1.5f}, "min_p"},
      {{.min_p = __builtin_nanf("")}, "min_p"},
      {{.repetition_penalty = -1}, "repetition_penalty"},
      {{.repetition_penalty = __builtin_nanf("")}, "repetition_penalty"},
      {{.presence_penalty = __builtin_inff()}, "presence_penalty"},
      {{.frequency_penalty = __builtin_nanf("")}, "frequency_penalty"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char err[LM_ERR_LEN] = "";
    int rc = lm_sampling_check(&cases[i].s, VOCAB, err);
    if (!cases[i].field)
      lm_check(rc == LM_OK, "sampling check: valid case %zu accepted (%s)", i, err);
    else
      lm_check(rc == LM_EINVAL && strstr(err, cases[i].field), "sampling check names %s: \"%s\"",
               cases[i].field, err);
  }
  struct lm_logit_bias bad_id = {VOCAB, 1}, neg = {-1, 1}, nan = {3, __builtin_nanf("")},
                       ok = {VOCAB - 1, -100};
  const struct lm_logit_bias *biases[] = {&bad_id, &neg, &nan, &ok};
  for (int i = 0; i < 4; i++) {
    char err[LM_ERR_LEN] = "";
    struct lm_sampling s = {.logit_bias = biases[i], .n_logit_bias = 1};
    int rc = lm_sampling_check(&s, VOCAB, err);
    lm_check(i == 3 ? rc == LM_OK : rc == LM_EINVAL && strstr(err, "logit_bias"),
             "sampling check: logit_bias case %d (%s)", i, i == 3 ? "valid" : err);
  }
}

/* Without a logprob wanted, the same ids come out and the logprob is NaN. */
static void test_skip_logprob(void) {
  static float scratch[3 * VOCAB];
  float l[VOCAB];
  int same = 1, nan = 1;
  for (int i = 0; i < VOCAB; i++)
    l[i] = (float)((i * 37) % 11) * 0.3f;
  for (int t = 0; t < 200; t++) {
    struct lm_sampling p = {.temperature = t % 2 ? 0.9f : 0.0f, .top_p = 0.8f, .seed = 7};
    struct lm_sample_row row = {.params = &p, .position = (uint64_t)t};
    struct lm_sample_result a = lm_sampler_sample(l, VOCAB, &row, scratch);
    row.skip_logprob = 1;
    struct lm_sample_result b = lm_sampler_sample(l, VOCAB, &row, scratch);
    same &= a.id == b.id && a.logprob == a.logprob;
    nan &= b.logprob != b.logprob;
  }
  lm_check(same && nan, "skip_logprob draws the same 200 ids and reports a NaN logprob");
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

/* lm_sampler_argmax (vectorized where the CPU has AVX-512) against the
 * definition: the first index of the largest non-NaN value; the first
 * non-NaN one when all are -inf; 0 when all are NaN. */
static int argmax_ref(const float *x, int n) {
  int best = -1;
  for (int i = 0; i < n; i++)
    if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i;
  return best < 0 ? 0 : best;
}

static void test_argmax(void) {
  static float x[151936 + 16];
  uint64_t seed = 12345;
  int bad = 0, cases = 0;
  for (int round = 0; round < 400; round++) {
    int n = round < 300 ? 1 + round % 50 : 151936 - round % 7;
    for (int i = 0; i < n; i++) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      uint32_t u = (uint32_t)(seed >> 33);
      /* few distinct values, so ties are common; some NaN and -inf */
      x[i] = u % 11 == 0      ? NAN
             : u % 7 == 0     ? -INFINITY
             : round % 5 == 0 ? -INFINITY
                              : (float)(u % 5) - 2.0f;
      if (round % 9 == 0) x[i] = NAN;
    }
    if (round % 13 == 0 && n > 3) x[n - 1] = 100.0f; /* the max in the tail */
    cases++;
    bad += lm_sampler_argmax(x, n) != argmax_ref(x, n);
  }
  lm_check(bad == 0,
           "argmax equals the first-index-of-max definition on %d arrays with NaN, "
           "-inf and ties (%d differ)",
           cases, bad);
}

int main(void) {
  test_philox_kat();
  test_argmax();
  test_greedy();
  test_distribution();
  test_penalties();
  test_degenerate();
  test_against_full_sort();
  test_uniform();
  test_skip_logprob();
  test_top_logprobs();
  test_penalties_vllm();
  test_banned();
  test_check();
  return lm_check_done();
}
