/* rows.cuh - row gathers (embedding lookup, the rows whose logits are
 * wanted), SwiGLU and the split of a fused GEMM's output. bf16 rows. */
#ifndef LM_KERNELS_ROWS_CUH
#define LM_KERNELS_ROWS_CUH

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out: [n, dim] = src[idx[i]] (idx: device [n]; src: [*, dim]) */
void lm_cuda_gather_rows(uint16_t *out, const uint16_t *src, const int32_t *idx, int n, int dim,
                         void *stream);

/* out: [rows, dim] = bf16(bf16(silu(gate)) * up), as Transformers' act(gate) * up */
void lm_cuda_swiglu(uint16_t *out, const uint16_t *gate, const uint16_t *up, int rows, int dim,
                    void *stream);

#define LM_CUDA_MAX_SPLIT 4

/* src: [rows, sum(widths)] f32, the output of a fused GEMM ->
 * dst[i]: [rows, widths[i]] bf16 = bf16(src columns + bias[i]), n <= LM_CUDA_MAX_SPLIT;
 * bias[i] (f32 [widths[i]]) may be NULL. One rounding, as a GEMM with a
 * bias epilogue. */
void lm_cuda_split_cols(uint16_t *const *dst, const float *const *bias, const int *widths, int n,
                        const float *src, int rows, void *stream);

#ifdef __cplusplus
}
#endif

#endif
