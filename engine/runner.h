/* runner.h - runs the model's forward pass over a batch of sequence chunks
 * through a backend's ops, against the paged KV cache.
 *
 * The caller (the scheduler, or a test) decides what runs: each chunk is a
 * sequence's next tokens, a prefill chunk or a single decode token, and the
 * caller has reserved enough blocks for them. Everything else (positions,
 * slot mapping, block tables, which logits to compute) is derived here. */
#ifndef LM_RUNNER_H
#define LM_RUNNER_H

#include <stdint.h>

#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

struct lm_runner_config {
  int block_size;       /* tokens per KV block (default 16) */
  int n_blocks;         /* KV blocks in the pool */
  int max_batch_tokens; /* tokens per step, all sequences together */
  int max_seqs;         /* sequences per step */
  int max_model_len;    /* longest sequence (0: the model's max_position_embeddings) */
  const char *kv_dtype; /* KV element type (lm_backend_kv_dtype's want; NULL: auto) */
};

struct lm_seq_chunk {
  lm_kv_seq *kv;         /* kv->n_cached_tokens: tokens already in the cache */
  const int32_t *tokens; /* [n_tokens] the chunk's ids */
  int n_tokens;
  int want_logits; /* compute the logits of the chunk's last token */
  /* The layers it runs this step, [layer_begin, layer_end); 0 and 0: all.
   * A layered chunk (the step's last, on a backend with layer_chunks)
   * runs the same tokens over several steps, a few layers each: the
   * runner keeps its rows of the residual stream between them, and its
   * tokens count as cached once its last layer has run. Until then it
   * wants no logits. */
  int layer_begin, layer_end;
};

typedef struct lm_runner lm_runner;

int lm_runner_create(lm_model *m, lm_backend *be, const struct lm_runner_config *cfg,
                     lm_runner **out, char *err);
void lm_runner_free(lm_runner *r);

lm_kv_pool *lm_runner_kv_pool(lm_runner *r);
/* The KV cache's shape (its element type included). */
const struct lm_kv_shape *lm_runner_kv_shape(const lm_runner *r);
/* Whether steps may hold a layered chunk (the backend's layer_chunks). */
int lm_runner_layer_chunks(const lm_runner *r);

/* Runs one forward step. On success *logits points at a backend buffer
 * [n_logits, vocab] (one row per chunk with want_logits, in chunk order),
 * valid until the next step, and each chunk's kv->n_cached_tokens has
 * grown by its n_tokens (a layered chunk's once its last layer ran). A
 * layered chunk that resumes past layer 0 must be the one whose rows the
 * runner kept from the step before (the same kv, tokens and next layer). */
int lm_runner_step(lm_runner *r, const struct lm_seq_chunk *chunks, int n_chunks,
                   const void **logits, int *n_logits, char *err);

/* Bytes of the activation and logit buffers a runner of this model
 * allocates for steps of max_batch_tokens over max_seqs sequences. */
size_t lm_runner_activation_bytes(const struct lm_config *c, int max_batch_tokens, int max_seqs,
                                  size_t act_elem_bytes);

/* Computes RoPE inverse frequencies [head_dim / 2] from the config,
 * including llama3 scaling. */
void lm_runner_rope_inv_freq(const struct lm_config *cfg, float *inv_freq);

#endif
