/* rope.cuh - rotary position embedding, neox style (the two halves of a
 * head rotate together), in place on bf16 q and k. The angle is
 * f32(pos) * inv_freq[i], cos and sin in f32 (accurate, not the fast
 * intrinsics), one rounding to bf16 per output. */
#ifndef LM_KERNELS_ROPE_CUH
#define LM_KERNELS_ROPE_CUH

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* q: [T, n_heads, head_dim], k: [T, n_kv_heads, head_dim], pos: device [T],
 * inv_freq: device [head_dim / 2] (llama3 scaling already applied) */
void lm_cuda_rope(uint16_t *q, uint16_t *k, const int32_t *pos, const float *inv_freq, int T,
                  int n_heads, int n_kv_heads, int head_dim, void *stream);

#ifdef __cplusplus
}
#endif

#endif
