/* step_model.h - how long an engine step takes, fitted to the steps run.
 *
 * A step's time is modelled as
 *
 *   t = c0 + c1 * tokens + c2 * decode_keys + c3 * prompt_keys
 *
 * tokens: the step's query tokens (each goes through every weight matmul);
 * decode_keys: the keys attended by one-token chunks (a decode reads its
 * whole context for one query: bound by memory); prompt_keys: the keys
 * attended by the queries of longer chunks (position + 1 summed over their
 * tokens: bound by compute). c0 is what a step costs whatever it holds
 * (weights read at small batch, launches, sampling).
 *
 * The coefficients are fitted by exponentially weighted least squares over
 * every step the engine runs, so recent steps weigh most and the model
 * follows a machine whose speed changes; what no recent step explored is
 * remembered from older ones (step_model.c). The
 * scheduler uses it to size the prompt chunks it puts beside running
 * decodes (sched.c). Engine thread only. */
#ifndef LM_STEP_MODEL_H
#define LM_STEP_MODEL_H

#define LM_STEP_TERMS 4

struct lm_step_shape {
  double tokens, decode_keys, prompt_keys;
};

typedef struct lm_step_model {
  double c[LM_STEP_TERMS]; /* the fit used, in scaled terms (step_model.c) */
  double c_slow[LM_STEP_TERMS];
  double xx_fast[LM_STEP_TERMS][LM_STEP_TERMS], xt_fast[LM_STEP_TERMS];
  double xx_slow[LM_STEP_TERMS][LM_STEP_TERMS], xt_slow[LM_STEP_TERMS];
  int n_steps; /* steps observed */
} lm_step_model;

void lm_step_model_init(lm_step_model *m);
/* One step of this shape took seconds. */
void lm_step_model_observe(lm_step_model *m, const struct lm_step_shape *s, double seconds);
/* Whether enough steps were seen to predict. */
int lm_step_model_ready(const lm_step_model *m);
/* The predicted seconds of a step of this shape. */
double lm_step_model_predict(const lm_step_model *m, const struct lm_step_shape *s);
/* Seconds a chunk of n prompt tokens from position start adds to a step. */
double lm_step_model_chunk_seconds(const lm_step_model *m, int start, int n);
/* How many of want prompt tokens, from position start, one chunk can hold
 * while adding at most seconds to a step (want when the model sees no
 * cost in prompt tokens). */
int lm_step_model_fit_chunk(const lm_step_model *m, int start, int want, double seconds);
/* Keys attended by n tokens at positions start .. start + n - 1. */
double lm_step_chunk_keys(int start, int n);

#endif
