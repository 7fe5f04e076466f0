/* sampler.h - turning a row of logits into a token, on the host.
 *
 * Randomness comes from a counter-based generator (Philox4x32-10) keyed by
 * the request's seed with the output position as the counter, so a seeded
 * request draws the same numbers whatever batch it runs in and on any
 * backend. */
#ifndef LM_SAMPLER_H
#define LM_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/backend.h"

struct lm_logit_bias {
  int32_t id;
  float bias;
};

/* Per-request sampling parameters. Zero-initialised means greedy. */
struct lm_sampling {
  float temperature; /* 0: greedy (argmax, lowest id on ties) */
  int top_k;         /* 0: off */
  float top_p;       /* 0 or 1: off */
  float min_p;       /* 0: off */
  uint64_t seed;
  float repetition_penalty; /* 0 or 1: off */
  float presence_penalty;
  float frequency_penalty;
  const struct lm_logit_bias *logit_bias;
  size_t n_logit_bias;
};

/* Checks s for a vocabulary of vocab_size ids; LM_EINVAL with a message
 * naming the field ("top_p must be in (0, 1], got 1.5") when a value is
 * out of range: temperature negative or not finite, top_p outside [0, 1]
 * (0 is off, as above), top_k < 0, min_p outside [0, 1], a penalty not
 * finite, repetition_penalty < 0 (0 is off), a logit_bias id outside the
 * vocabulary or a bias not finite. Thread-safe. */
int lm_sampling_check(const struct lm_sampling *s, int vocab_size, char *err);

/* 1 when s has a repetition, presence or frequency penalty in effect, so
 * the token history matters to the draw. */
int lm_sampling_penalizes(const struct lm_sampling *s);

/* Philox4x32-10: four 32-bit outputs for (key, counter). */
void lm_philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]);
/* A uniform float in [0, 1) from the seed and output position. */
float lm_sampler_uniform(uint64_t seed, uint64_t position);

/* Index of the largest element, the lowest one on ties; NaNs are skipped
 * (0 when all are NaN). */
int lm_sampler_argmax(const float *x, int n);

/* Most top logprobs one row can report. */
#define LM_SAMPLER_MAX_TOP 20

/* Floats of scratch lm_sampler_sample needs for a vocabulary. */
#define LM_SAMPLER_SCRATCH_FLOATS(vocab) (3 * (size_t)(vocab))

/* Samples one id from logits: [vocab] (f32, left unchanged), using
 * LM_SAMPLER_SCRATCH_FLOATS(vocab) floats of scratch. The reported logprobs
 * (the chosen id's, and row->top when row->n_top_logprobs > 0: the most
 * likely ids, best first, lower id first on ties, at most
 * LM_SAMPLER_MAX_TOP) are of the model's distribution: the log-softmax of
 * the raw logits, before bias, penalties, bans and temperature. Thread-safe
 * with separate scratch. */
struct lm_sample_result lm_sampler_sample(const float *logits, int vocab,
                                          const struct lm_sample_row *row, float *scratch);

#endif
