/* cuda_check.cuh - what the .cu files share: the CUDA headers, a launch
 * check and bf16 conversions. Included by the .cu files in kernels/ only; the engine
 * sees the plain C headers beside each op. */
#ifndef LM_CUDA_CHECK_CUH
#define LM_CUDA_CHECK_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

/* Writes "what: CUDA error" into err and returns -1 when e failed. */
#define LM_CUDA_CHECK(e, err, err_len, what)                                                       \
  do {                                                                                             \
    cudaError_t lm_e_ = (e);                                                                       \
    if (lm_e_ != cudaSuccess) {                                                                    \
      if ((err) && (err_len))                                                                      \
        snprintf((err), (err_len), "%s: %s", (what), cudaGetErrorString(lm_e_));                   \
      return -1;                                                                                   \
    }                                                                                              \
  } while (0)

static __device__ __forceinline__ float lm_ld_bf16(const uint16_t *p, size_t i) {
  return __bfloat162float(__ushort_as_bfloat16(p[i]));
}

/* round to nearest even, as the host's lm_f32_to_bf16 and PyTorch do */
static __device__ __forceinline__ uint16_t lm_to_bf16(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

static __host__ __device__ __forceinline__ unsigned lm_cdiv(size_t a, size_t b) {
  return (unsigned)((a + b - 1) / b);
}

/* Asynchronous 16-byte copies from global to shared memory (sm_80+): queued
 * by each thread, closed into a group by lm_cp_async_commit, waited for by
 * lm_cp_async_wait<n> (until at most n of this thread's groups are in
 * flight). lm_cp_async16_or_zero fills zeros instead, without reading src,
 * when !valid. */
static __device__ __forceinline__ void lm_cp_async16_or_zero(void *smem, const void *gmem,
                                                             bool valid) {
  unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0));
}

static __device__ __forceinline__ void lm_cp_async16(void *smem, const void *gmem) {
  lm_cp_async16_or_zero(smem, gmem, true);
}

static __device__ __forceinline__ void lm_cp_async_commit(void) {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int n> static __device__ __forceinline__ void lm_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n));
}

#endif
