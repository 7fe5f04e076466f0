/* attention.cuh - paged attention over the KV pool (kv_cache.cuh), for
 * prefill chunks and decodes in one step, GQA-aware, bf16 q/K/V with f32
 * accumulation.
 *
 * Every query token at position p attends to keys 0..p of its sequence,
 * read through the block table. The keys are cut into splits at absolute
 * positions: LM_CUDA_ATTN_SPLIT_KEYS each up to LM_CUDA_ATTN_FINE_KEYS
 * (0..127, 128..255, ..., 1920..2047), LM_CUDA_ATTN_LONG_SPLIT_KEYS each
 * after (2048..2559, ...): a short context still spreads a decode over
 * the device, and a long one keeps the decode workspace (a partial per
 * split) small;
 * each split's partial softmax (max, sum, weighted V) is computed by one
 * device function in a fixed order, and the partials are folded left in
 * split order. A token's output is therefore a function of its own q and
 * its context alone: the same bits whether it was a decode or part of a
 * prefill chunk of any length, alone or in any batch.
 *
 * Sequences whose chunk is one token (decodes) run their splits in
 * parallel and fold them in a second kernel; prefill chunks run a block
 * per query tile, with the K/V tiles shared by the tile's queries and the
 * query heads of a KV head. */
#ifndef LM_KERNELS_ATTENTION_CUH
#define LM_KERNELS_ATTENTION_CUH

#include <stddef.h>
#include <stdint.h>

#include "kernels/kv_cache.cuh"

#ifdef __cplusplus
extern "C" {
#endif

#define LM_CUDA_ATTN_SPLIT_KEYS      128
#define LM_CUDA_ATTN_FINE_KEYS       2048
#define LM_CUDA_ATTN_LONG_SPLIT_KEYS 512
#define LM_CUDA_ATTN_MAX_HEAD_DIM    256

struct lm_cuda_attn_batch {
  int n_tokens;                /* T */
  int n_seqs;                  /* S */
  const int32_t *q_start;      /* device [S+1]: first token of each sequence */
  const int32_t *positions;    /* device [T] */
  const int32_t *seq_of_token; /* device [T] */
  const int32_t *block_tables; /* device [S, max_blocks] */
  int max_blocks;
  int max_q_len;   /* host: the longest chunk in the step */
  int max_ctx_len; /* host: the longest context (max position + 1) */
};

/* Workspace bytes for steps of at most max_seqs sequences and contexts of
 * at most max_model_len tokens. */
size_t lm_cuda_attention_workspace_bytes(int max_seqs, int n_heads, int head_dim,
                                         int max_model_len);

/* out: [T, n_heads, head_dim] = softmax(q k^T * scale) v; q: [T, n_heads, head_dim];
 * query head h reads KV head h / (n_heads / n_kv_heads). head_dim is a
 * multiple of 32 and at most LM_CUDA_ATTN_MAX_HEAD_DIM. */
void lm_cuda_attention(uint16_t *out, const uint16_t *q, const struct lm_cuda_kv *kv, int layer,
                       const struct lm_cuda_attn_batch *b, int n_heads, float scale,
                       void *workspace, void *stream);

#ifdef __cplusplus
}
#endif

#endif
