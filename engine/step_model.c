/* step_model.c - the step time model of step_model.h.
 *
 * Two exponentially weighted least-squares fits over the same steps: a fast
 * one (a step's weight halves in about 14 steps) that follows the machine,
 * and a slow one (about 140) that remembers what recent steps did not
 * explore, e.g. what a prompt chunk costs after a long run of decodes. The
 * fast fit is pulled towards the slow one by a small ridge, so a
 * coefficient the recent steps cannot tell apart stays at its slow value
 * instead of drifting. Each fit keeps its weighted sums (X^T X and X^T t)
 * and solves the 4 x 4 system after every step. */
#include "engine/step_model.h"

#include <math.h>
#include <string.h>

#define LM_STEP_FAST  0.95
#define LM_STEP_SLOW  0.995
#define LM_STEP_RIDGE 1e-3 /* fast towards slow */
#define LM_STEP_PRIOR 1e-6 /* slow towards zero */
#define LM_STEP_READY 8    /* steps before the model predicts */

/* Scaled terms: a typical step puts each near 1. */
static void terms(const struct lm_step_shape *s, double x[LM_STEP_TERMS]) {
  x[0] = 1;
  x[1] = s->tokens / 256;
  x[2] = s->decode_keys / 65536;
  x[3] = s->prompt_keys / 1048576;
}

/* Solves (a + ridge I) c = b + ridge * c0 by Cholesky; a is symmetric
 * positive semi-definite, so the ridge makes the system definite. Leaves
 * c as it was if the factorization fails (it cannot in exact arithmetic). */
static void solve(double a[LM_STEP_TERMS][LM_STEP_TERMS], const double *b, double ridge,
                  const double *c0, double *c) {
  double l[LM_STEP_TERMS][LM_STEP_TERMS] = {{0}}, y[LM_STEP_TERMS], r[LM_STEP_TERMS];
  for (int i = 0; i < LM_STEP_TERMS; i++)
    r[i] = b[i] + ridge * (c0 ? c0[i] : 0);
  for (int i = 0; i < LM_STEP_TERMS; i++)
    for (int j = 0; j <= i; j++) {
      double s = a[i][j] + (i == j ? ridge : 0);
      for (int k = 0; k < j; k++)
        s -= l[i][k] * l[j][k];
      if (i == j) {
        if (!(s > 0)) return;
        l[i][i] = sqrt(s);
      } else {
        l[i][j] = s / l[j][j];
      }
    }
  for (int i = 0; i < LM_STEP_TERMS; i++) {
    double s = r[i];
    for (int k = 0; k < i; k++)
      s -= l[i][k] * y[k];
    y[i] = s / l[i][i];
  }
  for (int i = LM_STEP_TERMS - 1; i >= 0; i--) {
    double s = y[i];
    for (int k = i + 1; k < LM_STEP_TERMS; k++)
      s -= l[k][i] * c[k];
    c[i] = s / l[i][i];
  }
}

void lm_step_model_init(lm_step_model *m) {
  memset(m, 0, sizeof(*m));
}

void lm_step_model_observe(lm_step_model *m, const struct lm_step_shape *s, double seconds) {
  double x[LM_STEP_TERMS];
  if (!(seconds >= 0) || !isfinite(seconds)) return;
  terms(s, x);
  for (int i = 0; i < LM_STEP_TERMS; i++) {
    for (int j = 0; j < LM_STEP_TERMS; j++) {
      m->xx_fast[i][j] = LM_STEP_FAST * m->xx_fast[i][j] + x[i] * x[j];
      m->xx_slow[i][j] = LM_STEP_SLOW * m->xx_slow[i][j] + x[i] * x[j];
    }
    m->xt_fast[i] = LM_STEP_FAST * m->xt_fast[i] + x[i] * seconds;
    m->xt_slow[i] = LM_STEP_SLOW * m->xt_slow[i] + x[i] * seconds;
  }
  solve(m->xx_slow, m->xt_slow, LM_STEP_PRIOR, NULL, m->c_slow);
  solve(m->xx_fast, m->xt_fast, LM_STEP_RIDGE, m->c_slow, m->c);
  m->n_steps++;
}

int lm_step_model_ready(const lm_step_model *m) {
  return m->n_steps >= LM_STEP_READY;
}

double lm_step_model_predict(const lm_step_model *m, const struct lm_step_shape *s) {
  double x[LM_STEP_TERMS], t = 0;
  terms(s, x);
  for (int i = 0; i < LM_STEP_TERMS; i++)
    t += m->c[i] * x[i];
  return t > 0 ? t : 0;
}

double lm_step_chunk_keys(int start, int n) {
  return (double)n * start + (double)n * (n + 1) / 2;
}

/* Seconds a prompt token and a prompt key add to a step; a term fitted
 * below zero adds nothing. */
static void marginal(const lm_step_model *m, double *per_token, double *per_key) {
  *per_token = m->c[1] > 0 ? m->c[1] / 256 : 0;
  *per_key = m->c[3] > 0 ? m->c[3] / 1048576 : 0;
}

double lm_step_model_chunk_seconds(const lm_step_model *m, int start, int n) {
  double per_token, per_key;
  marginal(m, &per_token, &per_key);
  return per_token * n + per_key * lm_step_chunk_keys(start, n);
}

int lm_step_model_fit_chunk(const lm_step_model *m, int start, int want, double seconds) {
  double per_token, per_key;
  marginal(m, &per_token, &per_key);
  if (want <= 0) return 0;
  if (per_token == 0 && per_key == 0) return want;
  if (!(seconds > 0)) return 0;
  /* per_key / 2 n^2 + (per_token + per_key (start + 1/2)) n <= seconds */
  double a = per_key / 2, b = per_token + per_key * (start + 0.5);
  double n = a > 0 ? (-b + sqrt(b * b + 4 * a * seconds)) / (2 * a) : seconds / b;
  if (!(n < want)) return want;
  int k = (int)n;
  while (k > 0 && lm_step_model_chunk_seconds(m, start, k) > seconds)
    k--;
  return k;
}
