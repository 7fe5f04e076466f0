/* step_model.h - how long an engine step takes, fitted to the steps run.
 *
 * A step's time is modelled as what its decodes alone would take plus what
 * its prompt chunks add:
 *
 *   t = d0 + d1 * decode_tokens + d2 * decode_keys
 *         + p1 * prompt_tokens + p3 * prompt_keys
 *
 * decode_keys: the keys attended by one-token chunks (a decode reads its
 * whole context for one query: bound by memory); prompt_keys: the keys
 * attended by the queries of longer chunks (position + 1 summed over their
 * tokens: bound by compute). d0 is what a step costs whatever it holds
 * (weights read at small batch, launches, sampling).
 *
 * The decode part is fitted to the steps that hold only decodes, and the
 * prompt part to what the other steps took beyond it. One fit of all four
 * terms over every step cannot tell them apart while a long prompt is
 * prefilled beside decodes (their keys grow together), and where the
 * matmuls are bound by reading the weights (a prompt token adds little to
 * a step until the step's tokens make them compute bound) it drifts: the
 * decodes' own step is then overestimated and a chunk's cost
 * underestimated, both in the prompt's favour. Until decode-only steps
 * have been seen, that one fit is what predicts.
 *
 * While a long prompt is prefilled beside decodes, every step holds a
 * chunk, and the decodes' contexts grow beyond those of the decode-only
 * steps the decode part was fitted on. Extrapolated (its slope by the
 * keys fitted over a narrow range), it underestimated their step by up to
 * a sixth at the end of an 8k prompt. So the scheduler runs the decodes
 * alone for a step whenever their keys have grown by an eighth
 * (LM_STEP_REACH), and by more than 8 a decode, past the most it has seen
 * (lm_step_model_explored): 9 of the about 200 steps of an 8k prompt
 * beside 32 decodes that start at context 96, as in `lmserve bench`. And
 * after LM_STEP_STALE steps with chunks in a row, whatever the keys, so
 * the decode part follows a machine whose speed changes under a steady
 * stream of prompts.
 *
 * Each fit is exponentially weighted least squares, so recent steps weigh
 * most and the model follows a machine whose speed changes; what no
 * recent step explored is remembered from older ones (step_model.c). The
 * scheduler uses it to size the prompt chunks it puts beside running
 * decodes (sched.c). Engine thread only. */
#ifndef LM_STEP_MODEL_H
#define LM_STEP_MODEL_H

#define LM_STEP_TERMS      4
#define LM_STEP_REACH      0.125 /* decode keys beyond those seen, as a fraction of them */
#define LM_STEP_REACH_KEYS 8     /* ... and at least this many a decode */
#define LM_STEP_STALE      64    /* steps with prompt chunks before the decodes are timed again */

struct lm_step_shape {
  double tokens;        /* all of the step's query tokens */
  double decode_keys;   /* keys attended by its one-token chunks */
  double prompt_tokens; /* tokens of its longer chunks */
  double prompt_keys;   /* keys attended by those */
};

/* One exponentially weighted least-squares fit: a fast one (about 14
 * steps) pulled towards a slow one (about 140). */
struct lm_step_fit {
  double c[LM_STEP_TERMS]; /* the fit used, in scaled terms (step_model.c) */
  double c_slow[LM_STEP_TERMS];
  double xx_fast[LM_STEP_TERMS][LM_STEP_TERMS], xt_fast[LM_STEP_TERMS];
  double xx_slow[LM_STEP_TERMS][LM_STEP_TERMS], xt_slow[LM_STEP_TERMS];
  int n_steps; /* steps observed */
};

typedef struct lm_step_model {
  struct lm_step_fit all;    /* every step, by all four terms */
  struct lm_step_fit decode; /* decode-only steps: 1, decode tokens, decode keys */
  struct lm_step_fit prompt; /* the rest beyond their decodes: prompt tokens, keys */
  double decode_keys_seen;   /* the most decode keys of recent decode-only steps */
  int since_decode;          /* steps with prompt chunks since the last decode-only one, up to
                                LM_STEP_STALE */
} lm_step_model;

void lm_step_model_init(lm_step_model *m);
/* One step of this shape took seconds. */
void lm_step_model_observe(lm_step_model *m, const struct lm_step_shape *s, double seconds);
/* Whether enough steps were seen to predict. */
int lm_step_model_ready(const lm_step_model *m);
/* Whether the decode part was fitted on decodes like these: 0 once it is
 * fitted and their keys exceed the most of the recent decode-only steps
 * by more than LM_STEP_REACH of it and LM_STEP_REACH_KEYS a decode, so
 * their own step would be extrapolated, or when LM_STEP_STALE steps
 * with prompt chunks have passed since the last decode-only one. */
int lm_step_model_explored(const lm_step_model *m, const struct lm_step_shape *decodes);
/* The predicted seconds of a step of this shape. */
double lm_step_model_predict(const lm_step_model *m, const struct lm_step_shape *s);
/* Seconds a chunk of n prompt tokens from position start adds to a step. */
double lm_step_model_chunk_seconds(const lm_step_model *m, int start, int n);
/* How many of want prompt tokens, from position start, one chunk can hold
 * while adding at most seconds to a step: none when seconds is 0, want
 * when there is time and the model sees no cost in prompt tokens. */
int lm_step_model_fit_chunk(const lm_step_model *m, int start, int want, double seconds);
/* Keys attended by n tokens at positions start .. start + n - 1. */
double lm_step_chunk_keys(int start, int n);

#endif
