/* client_stats_test.c - the load generator's statistics: percentiles with
 * linear interpolation (numpy's default), summaries, and the workload's
 * random numbers (ranges, exponential inter-arrival times). */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "clients/stats.h"

static void test_quantiles(void) {
  double two[] = {1, 2};
  lm_check(lmc_quantile_sorted(two, 2, 0.5) == 1.5, "p50 of {1, 2} interpolates to 1.5");
  double v[11];
  for (int i = 0; i < 11; i++)
    v[i] = i + 1; /* 1..11 */
  lm_check(lmc_quantile_sorted(v, 11, 0.9) == 10, "p90 of 1..11 is 10 (rank 9 of 0..10)");
  lm_check(fabs(lmc_quantile_sorted(v, 11, 0.99) - 10.9) < 1e-12, "p99 of 1..11 is 10.9");
  lm_check(lmc_quantile_sorted(v, 11, 0) == 1 && lmc_quantile_sorted(v, 11, 1) == 11,
           "p0 and p100 are the extremes");
  lm_check(lmc_quantile_sorted(v, 0, 0.5) == 0, "an empty set gives 0");
  double one = 7;
  lm_check(lmc_quantile_sorted(&one, 1, 0.99) == 7, "one sample is every percentile");
}

static void test_summary(void) {
  struct lmc_samples s = {0};
  /* 1000..1 in reverse: summarize must sort */
  int ok = 1;
  for (int i = 1000; i >= 1; i--)
    ok &= lmc_samples_add(&s, i * 1e-3) == 0;
  lm_check(ok && s.n == 1000, "1000 samples added (the array grows)");
  struct lmc_summary m;
  lmc_samples_summarize(&s, &m);
  lm_check(m.n == 1000 && m.min == 1e-3 && m.max == 1.0, "min and max");
  lm_check(fabs(m.mean - 0.5005) < 1e-12, "mean of 1..1000 ms is 500.5 ms (%g)", m.mean);
  lm_check(fabs(m.p50 - 0.5005) < 1e-12, "p50 of 1..1000 ms is 500.5 ms (%g)", m.p50);
  lm_check(fabs(m.p90 - 0.9001) < 1e-12, "p90 of 1..1000 ms is 900.1 ms (%g)", m.p90);
  lm_check(fabs(m.p99 - 0.99001) < 1e-12, "p99 of 1..1000 ms is 990.01 ms (%g)", m.p99);
  lmc_samples_free(&s);
  lmc_samples_free(&s);
  lmc_samples_free(NULL);
  lmc_samples_summarize(&s, &m);
  lm_check(m.n == 0 && m.p99 == 0,
           "an empty set summarizes to zeros; free twice and NULL are safe");
}

static void test_rng(void) {
  struct lmc_rng a, b;
  lmc_rng_seed(&a, 42);
  lmc_rng_seed(&b, 42);
  int same = 1;
  for (int i = 0; i < 100; i++)
    same &= lmc_rng_u64(&a) == lmc_rng_u64(&b);
  lm_check(same, "a seed makes the sequence repeatable");
  lmc_rng_seed(&b, 43);
  lm_check(lmc_rng_u64(&a) != lmc_rng_u64(&b), "another seed gives another sequence");
  int in = 1, seen_lo = 0, seen_hi = 0;
  for (int i = 0; i < 10000; i++) {
    long x = lmc_rng_range(&a, 3, 9);
    in &= x >= 3 && x <= 9;
    seen_lo |= x == 3;
    seen_hi |= x == 9;
  }
  lm_check(in && seen_lo && seen_hi, "range [3, 9] stays inside and reaches both ends");
  lm_check(lmc_rng_range(&a, 5, 5) == 5 && lmc_rng_range(&a, 5, 2) == 5, "empty ranges give lo");
  double sum = 0, sum2 = 0, umin = 1, umax = 0;
  const int n = 200000;
  for (int i = 0; i < n; i++) {
    double u = lmc_rng_uniform(&a);
    umin = u < umin ? u : umin;
    umax = u > umax ? u : umax;
    double x = lmc_rng_exponential(&a, 4.0);
    sum += x;
    sum2 += x * x;
  }
  double mean = sum / n, var = sum2 / n - mean * mean;
  lm_check(umin >= 0 && umax < 1, "uniform stays in [0, 1)");
  /* exponential(rate 4): mean 0.25, variance 0.0625; the standard error of
   * the mean over 200k draws is 0.00056, so 0.005 is ~9 sigma */
  lm_check(fabs(mean - 0.25) < 0.005, "Poisson inter-arrival mean is 1/rate (%.4f)", mean);
  lm_check(fabs(var - 0.0625) < 0.004, "and its variance is 1/rate^2 (%.4f)", var);
}

int main(void) {
  test_quantiles();
  test_summary();
  test_rng();
  return lm_check_done();
}
