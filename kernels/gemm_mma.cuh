/* gemm_mma.cuh - lmserve's own GEMM, y = x @ w^T (bf16 inputs, f32
 * accumulation, bf16 or f32 output), on the tensor cores' m16n8k16 MMA.
 *
 * Every output element is summed in one order that depends on (N, K)
 * alone: K is cut into lm_gemm_mma_splits(N, K) splits of whole 32-wide
 * chunks; within a split the chunks go in order, two MMAs each, from a
 * zero accumulator; the splits' sums are then added left to right in f32.
 * Whatever the row count M and whichever tile shape or launch serves it, a
 * row gets the same bits alone as in any batch. Small M, where a step reads
 * every weight once and nothing else matters, runs each split in its own
 * warps and folds them in a second kernel; large M keeps the running sum in
 * registers. Both do the same additions. */
#ifndef LM_KERNELS_GEMM_MMA_CUH
#define LM_KERNELS_GEMM_MMA_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum lm_gemm_mma_mode {
  LM_GEMM_MMA_AUTO = -1,
  LM_GEMM_MMA_REGISTERS = 0, /* one launch, the splits' sums kept per thread */
  LM_GEMM_MMA_PARTIALS = 1,  /* the splits in parallel into ws, then a fold */
};

/* Whether the kernel takes [., K] x [N, K]^T: rows of K must start 16-byte aligned. */
int lm_gemm_mma_supported(int N, int K);

/* The number of K splits for the shape: a function of N and K only. */
int lm_gemm_mma_splits(int N, int K);

/* y: [M, N] = x: [M, K] @ w: [N, K]^T, x, w, y and ws 16-byte aligned. ws
 * (device, ws_bytes) holds the splits' partial sums in the partials mode;
 * AUTO picks it when the registers mode would leave the device idle and
 * the partials fit. Returns 0, or -1 with err written. */
int lm_gemm_mma_run(void *y, const uint16_t *x, const uint16_t *w, int M, int N, int K, int out_f32,
                    int mode, float *ws, size_t ws_bytes, void *stream, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
