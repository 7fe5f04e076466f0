/* sample.cuh - the host sampler (engine/sampler.c) on the GPU: the same
 * steps in the same order, with the same Philox4x32-10 stream keyed by
 * the seed and counted by the output position, so a seeded request draws
 * the same token as on the CPU wherever the logits are not near-tied.
 * Only the chosen ids, their logprobs and the top logprobs come back.
 *
 * Steps per row (see engine/sampler.c):
 *   logprob of every id from the raw logits (log-softmax: what is reported)
 *   top n logprobs (best first, lower id first on ties)
 *   logit bias, bans (-inf), repetition / presence / frequency penalties
 *   greedy argmax (lowest id on ties) when temperature is 0 or 1/t overflows
 *   e = exp((l - max) / t); min_p keeps e >= min_p; top_k keeps the k best
 *   by (e desc, id asc); top_p keeps the shortest prefix of that order whose
 *   mass reaches top_p * total; u = uniform(seed, position) * kept mass;
 *   the pick is the first id of that order where the running mass exceeds u. */
#ifndef LM_KERNELS_SAMPLE_CUH
#define LM_KERNELS_SAMPLE_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LM_CUDA_SAMPLE_MAX_TOP 20

/* One row's parameters (device memory, filled by the host). The id lists
 * are offsets into the step's shared arrays. */
struct lm_cuda_sample_row {
  float temperature;
  float top_p;              /* 0 or 1: off */
  float min_p;              /* 0: off */
  float repetition_penalty; /* 0 or 1: off */
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;                    /* 0: off */
  int32_t n_top;                    /* 0..LM_CUDA_SAMPLE_MAX_TOP top logprobs to report */
  int32_t skip_logprob;             /* no logprob wanted (and n_top == 0) */
  int32_t bias_start, n_bias;       /* bias_ids / bias_values [bias_start, +n_bias) */
  int32_t banned_start, n_banned;   /* ids [banned_start, +n_banned) */
  int32_t history_start, n_history; /* ids [history_start, +n_history): prompt then output */
  int32_t n_prompt;                 /* the first n_prompt of the history are the prompt */
  uint32_t pad;
  uint64_t seed;
  uint64_t position; /* Philox counter */
};

struct lm_cuda_sample_out {
  int32_t id;
  float logprob;                              /* NaN when skip_logprob */
  int32_t top_ids[LM_CUDA_SAMPLE_MAX_TOP];    /* -1 past the vocabulary */
  float top_logprobs[LM_CUDA_SAMPLE_MAX_TOP]; /* -inf past the vocabulary */
};

/* Workspace bytes for up to max_rows rows of a vocabulary. */
size_t lm_cuda_sample_workspace_bytes(int max_rows, int vocab);

/* logits: device [n, vocab] f32 -> out: device [n]. rows: device [n];
 * ids: device array holding the bias, banned and history ids the rows
 * point into; bias_values: device [*] matching ids at the bias offsets. */
void lm_cuda_sample(const float *logits, int n, int vocab, const struct lm_cuda_sample_row *rows,
                    const int32_t *ids, const float *bias_values, void *workspace,
                    struct lm_cuda_sample_out *out, void *stream);

#ifdef __cplusplus
}
#endif

#endif
