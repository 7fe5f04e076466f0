/* gemm.cuh - y = x @ w^T through cuBLASLt: bf16 inputs, f32 accumulation,
 * bf16 or f32 output.
 *
 * Batch invariance: cuBLASLt's heuristic picks a different kernel (and
 * reduction order, split-K included) as the row count M changes, so a
 * row's result would depend on its batch. lm_cuda_gemm_plan pins one
 * algorithm per weight shape, without split-K, that is valid for every M
 * up to max_m; lm_cuda_gemm_run always uses it. */
#ifndef LM_KERNELS_GEMM_CUH
#define LM_KERNELS_GEMM_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_cuda_gemm lm_cuda_gemm;

/* kind: "cublaslt" (or NULL): one pinned cuBLASLt algorithm per shape;
 * "mma": gemm_mma.cu for every shape it takes (K a multiple of 8), cuBLASLt
 * for the rest. */
int lm_cuda_gemm_create(lm_cuda_gemm **out, const char *kind, char *err, size_t err_len);
void lm_cuda_gemm_free(lm_cuda_gemm *g);

/* Chooses and pins the algorithm for [M, K] x [N, K]^T -> [M, N] (f32 output
 * when out_f32), for every M in 1..max_m. Idempotent per (N, K, out_f32).
 * The candidates are tried on w (device [N, K] bf16, such as the model's own
 * weights), or on a trial matrix made for the purpose when w is NULL. */
int lm_cuda_gemm_plan(lm_cuda_gemm *g, int N, int K, int out_f32, int max_m, const uint16_t *w,
                      char *err, size_t err_len);

/* y: [M, N] (bf16, or f32 when out_f32) = x: [M, K] bf16 @ w: [N, K] bf16 ^T.
 * The shape must have been planned. Returns 0, or -1 with err written. */
int lm_cuda_gemm_run(lm_cuda_gemm *g, void *y, const uint16_t *x, const uint16_t *w, int M, int N,
                     int K, int out_f32, void *stream, char *err, size_t err_len);

/* For benchmarks: the same GEMM with the heuristic's own first choice for
 * this M (split-K allowed), to measure what pinning costs. */
int lm_cuda_gemm_run_heuristic(lm_cuda_gemm *g, void *y, const uint16_t *x, const uint16_t *w,
                               int M, int N, int K, int out_f32, void *stream, char *err,
                               size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
