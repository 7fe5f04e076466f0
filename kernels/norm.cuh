/* norm.cuh - RMSNorm, alone and fused with the residual add.
 *
 * Activations are bf16 ([rows, dim] row-major, uint16_t bits); w is f32
 * (a checkpoint's bf16 norm weight widens exactly). As in Transformers:
 * the sum of squares in f32, out = bf16(w * bf16(x * rsqrt(mean + eps))).
 * One row's sum is reduced in a fixed order that depends only on dim. */
#ifndef LM_KERNELS_NORM_CUH
#define LM_KERNELS_NORM_CUH

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out: [rows, dim] = rmsnorm(x: [rows, dim]) * w: [dim] */
void lm_cuda_rmsnorm(uint16_t *out, const uint16_t *x, const float *w, int rows, int dim, float eps,
                     void *stream);

/* residual: [rows, dim] = bf16(residual + delta), then out = rmsnorm(residual) * w */
void lm_cuda_add_rmsnorm(uint16_t *out, uint16_t *residual, const uint16_t *delta, const float *w,
                         int rows, int dim, float eps, void *stream);

#ifdef __cplusplus
}
#endif

#endif
