/* backend.h - the operations a compute backend provides, as one table of
 * function pointers per backend (CPU here, CUDA beside it). The model
 * runner drives a forward pass through these ops only, so a new backend
 * slots in without touching the engine.
 *
 * Activation buffers belong to the backend: the runner allocates them with
 * act_alloc and passes them back; their element type is the backend's own
 * (f32 on the CPU, bf16 on the GPU). Logits are f32 on every backend, in
 * buffers from f32_alloc. Weights are lm_tensors as stored in the
 * checkpoint.
 *
 * A backend may run its ops asynchronously (the GPU queues them on a
 * stream): an op returns once its work is queued, inputs it was given in
 * host memory may be reused at once, and failures surface at the next
 * sample, *_read or sync.
 *
 * Batch invariance: for every output element, the order of floating-point
 * reductions must depend only on that element's own inputs (its row, its
 * sequence), never on how many rows or sequences are in the batch or on how
 * work is split across threads. A request therefore gets bit-identical
 * logits alone or batched. */
#ifndef LM_BACKEND_H
#define LM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

/* One forward step over a batch of sequences. The tokens of a sequence are
 * contiguous and in position order; a sequence contributes a prefill chunk
 * (many tokens) or a decode (one token). Host memory. */
struct lm_batch {
  int n_tokens;                /* T */
  int n_seqs;                  /* S */
  const int32_t *token_ids;    /* [T] */
  const int32_t *positions;    /* [T] position of each token in its sequence */
  const int32_t *slot_mapping; /* [T] KV slot: block * block_size + offset */
  const int32_t *q_start;      /* [S+1] first token of each sequence; q_start[S] == T */
  const int32_t
      *ctx_len; /* [S] tokens of the sequence in the KV cache once this step's are written */
  const int32_t *block_tables; /* [S, max_blocks] block ids, row-major */
  int max_blocks;
  const int32_t *logit_rows; /* [n_logits] token indices whose logits are wanted */
  int n_logits;
};

/* The paged KV cache: fixed-size blocks addressed through per-sequence
 * block tables. Layout of the backend's buffer:
 *   [n_layers][2 (K, V)] layer parts of n_blocks * n_kv_heads regions of
 *   block_size * head_dim dtype elements,
 * the regions of a part [n_blocks][n_kv_heads] (CUDA) or [n_kv_heads]
 * [n_blocks] (the CPU: a kv head's blocks one after another, so a
 * sequence's run of consecutive blocks is one stream for its attention)
 * (a type the backend lists in kv_dtypes; K after RoPE and V are rounded
 * to it as they are written). A V region is [block_size][head_dim] (the
 * CPU with AMX tiles: by pairs of keys, lm_cpu_v_index); a K region is in
 * the order the backend's attention reads best (CUDA: as V; the CPU:
 * transposed by 32-bit words, lm_cpu_k_index). */
struct lm_kv_shape {
  int n_layers;
  int n_blocks;
  int block_size; /* tokens per block */
  int n_kv_heads;
  int head_dim;
  enum lm_dtype dtype;
};

/* Bytes of one block across all layers (K and V). */
size_t lm_kv_block_bytes(const struct lm_kv_shape *s);
/* Bytes of one layer's K (or V): n_blocks * n_kv_heads regions;
 * layer l's K starts 2 * l of these into the buffer, its V 2 * l + 1. */
size_t lm_kv_layer_bytes(const struct lm_kv_shape *s);

/* RoPE (neox style: the two halves of a head rotate together). */
struct lm_rope {
  int head_dim;
  const float *inv_freq; /* [head_dim / 2], llama3 scaling already applied */
};

struct lm_sampling; /* engine/sampler.h */

struct lm_token_logprob {
  int32_t id;
  float logprob;
};

/* One row to sample, with what the sampler needs to know about it. */
struct lm_sample_row {
  const struct lm_sampling *params;
  uint64_t position;      /* output position: the Philox counter */
  const int32_t *history; /* tokens seen so far (for penalties), or NULL */
  size_t n_history;
  int n_top_logprobs;           /* 0..20: most likely ids to report */
  struct lm_token_logprob *top; /* [n_top_logprobs] filled best first */
  /* The first n_prompt of history are the prompt: the repetition penalty
   * covers prompt and output, presence and frequency only the output (as
   * in vLLM). */
  size_t n_prompt;
  const int32_t *banned; /* [n_banned] ids that cannot be drawn (min_tokens) */
  int n_banned;
  /* The caller wants no logprob (nor top logprobs): the result's logprob
   * is NaN and a full pass over the vocabulary is saved. */
  int skip_logprob;
};

struct lm_sample_result {
  int32_t id;
  float logprob; /* of the chosen id under the model's distribution */
};

struct lm_backend_config {
  int n_threads;          /* 0: all cores */
  int cpu_mapped_weights; /* CPU: compute from the file mapping instead of a huge-page copy */
  /* GPU: the share of the device's memory lmserve may hold (weights, KV
   * pool, activations together); 0 means 0.9. lm_engine_create copies
   * lm_engine_config.gpu_memory_utilization here. */
  float gpu_memory_utilization;
  /* GPU: the GEMMs, each batch invariant (docs/CUDA.md): "cublaslt" (NULL:
   * one pinned cuBLASLt algorithm per weight shape; the fastest prefill) or
   * "mma" (lmserve's own kernels; the fastest decode at small batches,
   * slower prefill). */
  const char *gemm;
};

struct lm_backend_ops {
  const char *name;
  int (*create)(const struct lm_backend_config *cfg, void **st, char *err);
  void (*destroy)(void *st);
  /* Makes one model's weights usable: a backend may keep its own copy of a
   * tensor in lm_tensor.dev (the GPU in device memory, the CPU its matmul
   * weights packed in panels on huge pages). The model must outlive the
   * backend: destroy sets dev back to NULL. */
  int (*load_weights)(void *st, lm_model *m, char *err);
  /* Optional (NULL: ops read lm_tensor.data directly): makes one tensor
   * outside a model usable (sets t->dev), for tests and tools; undone by
   * tensor_free. */
  int (*tensor_load)(void *st, struct lm_tensor *t, char *err);
  void (*tensor_free)(void *st, struct lm_tensor *t);

  size_t act_elem_bytes; /* element size of activation buffers */
  unsigned kv_dtypes;    /* KV element types it stores: bit 1 << lm_dtype each */
  int batched_tokens;    /* > 0: the engine's default tokens a step (engine.h) */
  /* 1: a step may run one chunk over some of the layers (runner.h): the
   * layers it skips then take a batch that is a prefix of the step's
   * (fewer tokens and sequences, the same arrays), and gather_rows takes
   * row lists in host memory. */
  int layer_chunks;
  void *(*act_alloc)(void *st, size_t n_elems);
  void (*act_free)(void *st, void *buf); /* frees act_alloc and f32_alloc buffers */
  /* Copies n_elems activations to host f32 (for tests), waiting for the
   * ops before. */
  int (*act_read)(void *st, float *dst, const void *src, size_t n_elems);
  /* Copies n_elems host f32 into an activation buffer (rounded to the
   * backend's type; for tests). */
  int (*act_write)(void *st, void *dst, const float *src, size_t n_elems);
  /* f32 buffers, whatever the activation type: logits. */
  void *(*f32_alloc)(void *st, size_t n_elems);
  int (*f32_read)(void *st, float *dst, const void *src, size_t n_elems);
  int (*f32_write)(void *st, void *dst, const float *src, size_t n_elems);

  /* Optional (NULL: no limit but host memory): bytes the KV pool may take
   * once the weights are loaded, keeping reserve_bytes free for the
   * runner's activations and room for the backend's own workspaces for
   * steps of max_tokens tokens over max_seqs sequences with contexts up to
   * max_model_len. */
  int (*kv_budget)(void *st, size_t reserve_bytes, int max_tokens, int max_seqs, int max_model_len,
                   size_t *kv_bytes, char *err);

  int (*kv_create)(void *st, const struct lm_kv_shape *shape, void **kv, char *err);
  void (*kv_free)(void *st, void *kv);

  /* Optional: called once per step before any op that reads b, so a
   * backend can move the batch description to its memory in one copy. */
  int (*begin_step)(void *st, const struct lm_batch *b, char *err);
  /* Optional: waits for the queued ops; 0 or the first failure. */
  int (*sync)(void *st, char *err);

  /* x: [T, hidden] = table[token_ids] */
  void (*embed)(void *st, void *x, const struct lm_tensor *table, const struct lm_batch *b);
  /* out: [rows, dim] = x * rsqrt(mean(x^2) + eps) * w */
  void (*rmsnorm)(void *st, void *out, const void *x, const struct lm_tensor *w, int rows, int dim,
                  float eps);
  /* residual += delta, then out = rmsnorm(residual) */
  void (*add_rmsnorm)(void *st, void *out, void *residual, const void *delta,
                      const struct lm_tensor *w, int rows, int dim, float eps);
  /* y: [rows, N] = x: [rows, K] @ w^T (w: [N, K]) + bias: [N] (may be NULL) */
  void (*matmul)(void *st, void *y, const void *x, const struct lm_tensor *w,
                 const struct lm_tensor *bias, int rows);
  /* Optional: ys[i]: [rows, N_i] = x @ ws[i]^T + biases[i] (may be NULL) for
   * i < n <= 4, as one GEMM over the weights side by side where the backend
   * keeps them so (QKV, gate and up). NULL: the runner calls matmul n times. */
  void (*matmul_n)(void *st, void *const *ys, const void *x, const struct lm_tensor *const *ws,
                   const struct lm_tensor *const *biases, int n, int rows);
  /* logits: [rows, vocab] f32 (an f32_alloc buffer) = x: [rows, hidden] @ w^T */
  void (*logits)(void *st, void *logits, const void *x, const struct lm_tensor *w, int rows);
  /* In place on q: [T, n_heads, head_dim] and k: [T, n_kv_heads, head_dim] at b->positions */
  void (*rope)(void *st, void *q, void *k, const struct lm_batch *b, const struct lm_rope *rope,
               int n_heads, int n_kv_heads);
  /* Writes k, v: [T, n_kv_heads, head_dim] into the layer's blocks at b->slot_mapping */
  void (*kv_write)(void *st, void *kv, const struct lm_kv_shape *shape, int layer, const void *k,
                   const void *v, const struct lm_batch *b);
  /* out: [T, n_heads, head_dim]; each token attends causally to its
   * sequence's cached context (positions < its own + 1) through the block
   * table. GQA: query head h reads kv head h / (n_heads / n_kv_heads). */
  void (*attention)(void *st, void *out, const void *q, const void *kv,
                    const struct lm_kv_shape *shape, int layer, const struct lm_batch *b,
                    int n_heads, float scale);
  /* out: [rows, dim] = silu(gate) * up */
  void (*swiglu)(void *st, void *out, const void *gate, const void *up, int rows, int dim);
  /* out: [n, dim] = x[rows[i]] */
  void (*gather_rows)(void *st, void *out, const void *x, const int32_t *rows, int n, int dim);
  /* logits: [n, vocab] f32 -> one id (and its logprob) per row, waiting
   * for the ops before */
  int (*sample)(void *st, const void *logits, int n, int vocab, const struct lm_sample_row *rows,
                struct lm_sample_result *out, char *err);
};

typedef struct lm_backend {
  const struct lm_backend_ops *ops;
  void *st;
} lm_backend;

extern const struct lm_backend_ops lm_backend_cpu_ops;
extern const struct lm_backend_ops lm_backend_cuda_ops;

/* name: "cpu", "cuda" or "auto" (CUDA when a GPU is present). */
int lm_backend_create(const char *name, const struct lm_backend_config *cfg, lm_backend **out,
                      char *err);
void lm_backend_destroy(lm_backend *be);

/* The KV cache's element type for a model whose weights are stored as
 * weights: want is "auto" (or NULL: the weights' type where the backend
 * stores it, else f32, else bf16), "bf16"/"bfloat16" or "f32"/"float32".
 * LM_EINVAL for another name, LM_EUNSUP for a type the backend does not
 * store. */
int lm_backend_kv_dtype(const struct lm_backend_ops *ops, enum lm_dtype weights, const char *want,
                        enum lm_dtype *out, char *err);

#endif
