/* stats.c - sample arrays, percentiles and the workload's random numbers. */
#include "clients/stats.h"

#include <math.h>
#include <stdlib.h>

#include "engine/lm.h"

int lmc_samples_add(struct lmc_samples *s, double x) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 256;
    double *v = realloc(s->v, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = x;
  return LM_OK;
}

void lmc_samples_free(struct lmc_samples *s) {
  if (!s) return;
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double lmc_quantile_sorted(const double *v, size_t n, double q) {
  if (n == 0) return 0;
  if (q <= 0) return v[0];
  if (q >= 1) return v[n - 1];
  double pos = q * (double)(n - 1);
  size_t i = (size_t)pos;
  double frac = pos - (double)i;
  if (i + 1 >= n) return v[n - 1];
  return v[i] + (v[i + 1] - v[i]) * frac;
}

void lmc_samples_summarize(struct lmc_samples *s, struct lmc_summary *out) {
  *out = (struct lmc_summary){0};
  if (s->n == 0) return;
  qsort(s->v, s->n, sizeof(*s->v), cmp_double);
  double sum = 0;
  for (size_t i = 0; i < s->n; i++)
    sum += s->v[i];
  out->n = s->n;
  out->mean = sum / (double)s->n;
  out->min = s->v[0];
  out->max = s->v[s->n - 1];
  out->p50 = lmc_quantile_sorted(s->v, s->n, 0.50);
  out->p90 = lmc_quantile_sorted(s->v, s->n, 0.90);
  out->p99 = lmc_quantile_sorted(s->v, s->n, 0.99);
}

void lmc_rng_seed(struct lmc_rng *r, unsigned long long seed) {
  /* splitmix64 of the seed, so 0 and small seeds give a non-zero state */
  unsigned long long z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  r->s = z ? z : 1;
}

unsigned long long lmc_rng_u64(struct lmc_rng *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 0x2545f4914f6cdd1dull;
}

double lmc_rng_uniform(struct lmc_rng *r) {
  return (double)(lmc_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

double lmc_rng_exponential(struct lmc_rng *r, double rate) {
  return -log(1.0 - lmc_rng_uniform(r)) / rate;
}

long lmc_rng_range(struct lmc_rng *r, long lo, long hi) {
  if (hi <= lo) return lo;
  return lo + (long)(lmc_rng_u64(r) % (unsigned long long)(hi - lo + 1));
}
