/* step_model.c - the step time model of step_model.h.
 *
 * Each of its three fits is two exponentially weighted least-squares fits
 * over the same steps: a fast one (a step's weight halves in about 14
 * steps) that follows the machine, and a slow one (about 140) that
 * remembers what recent steps did not explore, e.g. what a prompt chunk
 * costs after a long run of decodes. The fast fit is pulled towards the
 * slow one by a small ridge, so a coefficient the recent steps cannot tell
 * apart stays at its slow value instead of drifting. Each keeps its
 * weighted sums (X^T X and X^T t) and solves the 4 x 4 system after every
 * step it takes; a term a fit does not use is 0 in its rows, and the ridge
 * keeps its coefficient at 0. */
#include "engine/step_model.h"

#include <math.h>
#include <string.h>

#define LM_STEP_FAST  0.95
#define LM_STEP_SLOW  0.995
#define LM_STEP_RIDGE 1e-3 /* fast towards slow */
#define LM_STEP_PRIOR 1e-6 /* slow towards zero */
#define LM_STEP_READY 8    /* steps before the model predicts */

/* Scaled terms (a typical step puts each near 1): of the whole step, of
 * its decodes alone, and of what its prompt chunks add. */
static void terms_all(const struct lm_step_shape *s, double x[LM_STEP_TERMS]) {
  x[0] = 1;
  x[1] = s->tokens / 256;
  x[2] = s->decode_keys / 65536;
  x[3] = s->prompt_keys / 1048576;
}

static void terms_decode(const struct lm_step_shape *s, double x[LM_STEP_TERMS]) {
  x[0] = 1;
  x[1] = (s->tokens - s->prompt_tokens) / 256;
  x[2] = s->decode_keys / 65536;
  x[3] = 0;
}

static void terms_prompt(const struct lm_step_shape *s, double x[LM_STEP_TERMS]) {
  x[0] = 0;
  x[1] = s->prompt_tokens / 256;
  x[2] = 0;
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

static void fit_add(struct lm_step_fit *f, const double x[LM_STEP_TERMS], double t) {
  for (int i = 0; i < LM_STEP_TERMS; i++) {
    for (int j = 0; j < LM_STEP_TERMS; j++) {
      f->xx_fast[i][j] = LM_STEP_FAST * f->xx_fast[i][j] + x[i] * x[j];
      f->xx_slow[i][j] = LM_STEP_SLOW * f->xx_slow[i][j] + x[i] * x[j];
    }
    f->xt_fast[i] = LM_STEP_FAST * f->xt_fast[i] + x[i] * t;
    f->xt_slow[i] = LM_STEP_SLOW * f->xt_slow[i] + x[i] * t;
  }
  solve(f->xx_slow, f->xt_slow, LM_STEP_PRIOR, NULL, f->c_slow);
  solve(f->xx_fast, f->xt_fast, LM_STEP_RIDGE, f->c_slow, f->c);
  f->n_steps++;
}

static double fit_eval(const struct lm_step_fit *f, const double x[LM_STEP_TERMS]) {
  double t = 0;
  for (int i = 0; i < LM_STEP_TERMS; i++)
    t += f->c[i] * x[i];
  return t;
}

/* Whether the decode part, and then the prompt part, is fitted. */
static int decode_ready(const lm_step_model *m) {
  return m->decode.n_steps >= LM_STEP_READY;
}

static int split_ready(const lm_step_model *m) {
  return decode_ready(m) && m->prompt.n_steps >= LM_STEP_READY;
}

void lm_step_model_observe(lm_step_model *m, const struct lm_step_shape *s, double seconds) {
  double x[LM_STEP_TERMS], xd[LM_STEP_TERMS];
  if (!(seconds >= 0) || !isfinite(seconds)) return;
  terms_all(s, x);
  fit_add(&m->all, x, seconds);
  terms_decode(s, xd);
  if (s->prompt_tokens <= 0) {
    fit_add(&m->decode, xd, seconds);
    m->since_decode = 0;
    /* the range narrows by the slow fit's factor a decode-only step, so an
     * old most counts as unexplored after about 24 steps below it, while
     * the slow fit still weighs it: an extra probe at worst */
    m->decode_keys_seen *= LM_STEP_SLOW;
    if (s->decode_keys > m->decode_keys_seen) m->decode_keys_seen = s->decode_keys;
  } else {
    /* saturates: a server whose steps all carry chunks never resets it */
    if (m->since_decode < LM_STEP_STALE) m->since_decode++;
    if (decode_ready(m)) {
      terms_prompt(s, x);
      fit_add(&m->prompt, x, seconds - fit_eval(&m->decode, xd));
    }
  }
}

int lm_step_model_ready(const lm_step_model *m) {
  return m->all.n_steps >= LM_STEP_READY;
}

int lm_step_model_explored(const lm_step_model *m, const struct lm_step_shape *decodes) {
  double seen = m->decode_keys_seen;
  if (!decode_ready(m)) return 1;
  if (m->since_decode >= LM_STEP_STALE) return 0;
  double n_decodes = decodes->tokens - decodes->prompt_tokens;
  return decodes->decode_keys <= (1 + LM_STEP_REACH) * seen ||
         decodes->decode_keys <= seen + LM_STEP_REACH_KEYS * n_decodes;
}

double lm_step_model_predict(const lm_step_model *m, const struct lm_step_shape *s) {
  double x[LM_STEP_TERMS], t;
  if (decode_ready(m) && (s->prompt_tokens <= 0 || split_ready(m))) {
    terms_decode(s, x);
    t = fit_eval(&m->decode, x);
    if (s->prompt_tokens > 0) {
      terms_prompt(s, x);
      t += fit_eval(&m->prompt, x);
    }
  } else {
    terms_all(s, x);
    t = fit_eval(&m->all, x);
  }
  return t > 0 ? t : 0;
}

double lm_step_chunk_keys(int start, int n) {
  return (double)n * start + (double)n * (n + 1) / 2;
}

/* Seconds a prompt token and a prompt key add to a step; a term fitted
 * below zero adds nothing. */
static void marginal(const lm_step_model *m, double *per_token, double *per_key) {
  const double *c = split_ready(m) ? m->prompt.c : m->all.c;
  *per_token = c[1] > 0 ? c[1] / 256 : 0;
  *per_key = c[3] > 0 ? c[3] / 1048576 : 0;
}

double lm_step_model_chunk_seconds(const lm_step_model *m, int start, int n) {
  double per_token, per_key;
  marginal(m, &per_token, &per_key);
  return per_token * n + per_key * lm_step_chunk_keys(start, n);
}

int lm_step_model_fit_chunk(const lm_step_model *m, int start, int want, double seconds) {
  /* no time left holds nothing, whatever the fit says a token costs */
  if (want <= 0 || !(seconds > 0)) return 0;
  double per_token, per_key;
  marginal(m, &per_token, &per_key);
  if (per_token == 0 && per_key == 0) return want;
  /* per_key / 2 n^2 + (per_token + per_key (start + 1/2)) n <= seconds */
  double a = per_key / 2, b = per_token + per_key * (start + 0.5);
  double n = a > 0 ? (-b + sqrt(b * b + 4 * a * seconds)) / (2 * a) : seconds / b;
  if (!(n < want)) return want;
  int k = (int)n;
  while (k > 0 && lm_step_model_chunk_seconds(m, start, k) > seconds)
    k--;
  return k;
}
