/* stats.h - latency samples and their percentiles for the load generator.
 *
 * A sample set is a growable array of doubles (seconds); percentiles are
 * taken by sorting a copy once at report time, with linear interpolation
 * between closest ranks (numpy's default), so p50 of {1, 2} is 1.5.
 * Not thread-safe: one owner. */
#ifndef LMC_STATS_H
#define LMC_STATS_H

#include <stddef.h>

struct lmc_samples {
  double *v; /* [n] */
  size_t n, cap;
};

/* Appends x; LM_ENOMEM when the array cannot grow (x is dropped). */
int lmc_samples_add(struct lmc_samples *s, double x);
void lmc_samples_free(struct lmc_samples *s);

struct lmc_summary {
  size_t n;
  double mean, min, max, p50, p90, p99;
};

/* Sorts s in place and fills out (all zero when s is empty). */
void lmc_samples_summarize(struct lmc_samples *s, struct lmc_summary *out);

/* The q-th quantile (0..1) of sorted values v[0..n-1]; 0 when n is 0. */
double lmc_quantile_sorted(const double *v, size_t n, double q);

/* Random numbers for workloads: xorshift64*, seeded, reproducible. */
struct lmc_rng {
  unsigned long long s;
};
void lmc_rng_seed(struct lmc_rng *r, unsigned long long seed);
unsigned long long lmc_rng_u64(struct lmc_rng *r);
double lmc_rng_uniform(struct lmc_rng *r);                  /* [0, 1) */
double lmc_rng_exponential(struct lmc_rng *r, double rate); /* mean 1/rate */
/* An integer uniform in [lo, hi] (lo when hi < lo). */
long lmc_rng_range(struct lmc_rng *r, long lo, long hi);

#endif
