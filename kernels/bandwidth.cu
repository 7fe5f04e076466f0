/* bandwidth.cu - a read-only streaming kernel, timed: the best bandwidth a
 * kernel can draw from device memory, against which decode speed is
 * judged. Each thread sums 16-byte words in a grid-stride loop with four
 * loads in flight, so the memory system, not the issue rate, is the
 * limit; the sums meet in one atomic per warp so the loads cannot be
 * optimised away, and the total is checked against the fill. */
#include "kernels/bandwidth.cuh"

#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda_check.cuh"

#define LM_BW_THREADS 256
/* every byte of the buffer is this value, so every 32-bit word is
 * LM_BW_FILL_WORD and the checksum is known in advance */
#define LM_BW_FILL_BYTE 0x5a
#define LM_BW_FILL_WORD 0x5a5a5a5au

/* src: [n] 16-byte words; *sum += the 32-bit words of src, modulo 2^32 */
__global__ void lm_read_sum_kernel(const uint4 *__restrict__ src, size_t n, unsigned *sum) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned acc = 0;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 a = __ldg(src + i), b = __ldg(src + i + stride), c = __ldg(src + i + 2 * stride),
          d = __ldg(src + i + 3 * stride);
    acc += (a.x + a.y + a.z + a.w) + (b.x + b.y + b.z + b.w) + (c.x + c.y + c.z + c.w) +
           (d.x + d.y + d.z + d.w);
  }
  for (; i < n; i += stride) {
    uint4 a = __ldg(src + i);
    acc += a.x + a.y + a.z + a.w;
  }
  /* every thread of the block gets here (no early exit), so full-mask
   * shuffles are safe */
  for (int o = 16; o > 0; o >>= 1)
    acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) atomicAdd(sum, acc);
}

/* On failure: writes the message, clears the runtime's last error so it
 * does not surface in a later call, and goes to the cleanup. */
#define LM_BW_TRY(call, what)                                                                      \
  do {                                                                                             \
    cudaError_t lm_bw_e_ = (call);                                                                 \
    if (lm_bw_e_ != cudaSuccess) {                                                                 \
      if (err && err_len) snprintf(err, err_len, "%s: %s", (what), cudaGetErrorString(lm_bw_e_));  \
      cudaGetLastError();                                                                          \
      goto out;                                                                                    \
    }                                                                                              \
  } while (0)

extern "C" double lm_cuda_read_gbs(size_t bytes, int passes, char *err, size_t err_len) {
  /* declared before the first goto: C++ forbids jumping over initialisations */
  size_t n = bytes / 16;
  uint4 *src = NULL; /* src: [n] */
  unsigned *sum = NULL;
  cudaStream_t s = NULL;
  cudaEvent_t start = NULL, stop = NULL;
  int sms = 0, per_sm = 0;
  unsigned grid = 0, got = 0, want = 0;
  float best_ms = 0, ms = 0;
  double gbs = 0;

  if (n == 0 || passes <= 0) {
    if (err && err_len)
      snprintf(err, err_len, "read bandwidth: %zu bytes over %d passes measures nothing", bytes,
               passes);
    return 0;
  }
  LM_BW_TRY(cudaSetDevice(0), "read bandwidth: cudaSetDevice(0)");
  LM_BW_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0),
            "read bandwidth: multiprocessor count");
  LM_BW_TRY(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lm_read_sum_kernel, LM_BW_THREADS, 0),
      "read bandwidth: occupancy");
  /* a full device's worth of resident blocks, never more than there are
   * words for, never zero */
  grid = (unsigned)(sms > 0 ? sms : 1) * (unsigned)(per_sm > 0 ? per_sm : 1);
  if ((size_t)grid > (size_t)lm_cdiv(n, LM_BW_THREADS)) grid = lm_cdiv(n, LM_BW_THREADS);

  LM_BW_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "read bandwidth: stream");
  LM_BW_TRY(cudaEventCreate(&start), "read bandwidth: event");
  LM_BW_TRY(cudaEventCreate(&stop), "read bandwidth: event");
  LM_BW_TRY(cudaMalloc((void **)&src, n * 16), "read bandwidth: cudaMalloc of the buffer");
  LM_BW_TRY(cudaMalloc((void **)&sum, sizeof(unsigned)), "read bandwidth: cudaMalloc");
  LM_BW_TRY(cudaMemsetAsync(src, LM_BW_FILL_BYTE, n * 16, s), "read bandwidth: fill");
  LM_BW_TRY(cudaMemsetAsync(sum, 0, sizeof(unsigned), s), "read bandwidth: fill");

  /* pass 0 warms up (TLB, clocks) and is not timed */
  for (int p = 0; p <= passes; p++) {
    LM_BW_TRY(cudaEventRecord(start, s), "read bandwidth: event record");
    lm_read_sum_kernel<<<grid, LM_BW_THREADS, 0, s>>>(src, n, sum);
    LM_BW_TRY(cudaGetLastError(), "read bandwidth: kernel launch");
    LM_BW_TRY(cudaEventRecord(stop, s), "read bandwidth: event record");
    LM_BW_TRY(cudaEventSynchronize(stop), "read bandwidth: kernel");
    LM_BW_TRY(cudaEventElapsedTime(&ms, start, stop), "read bandwidth: elapsed time");
    if (p > 0 && ms > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
  }
  LM_BW_TRY(cudaMemcpyAsync(&got, sum, sizeof(unsigned), cudaMemcpyDeviceToHost, s),
            "read bandwidth: copy the checksum");
  LM_BW_TRY(cudaStreamSynchronize(s), "read bandwidth: copy the checksum");
  /* (passes + 1) runs over n words of 4 x LM_BW_FILL_WORD, modulo 2^32 */
  want = (unsigned)n * 4u * LM_BW_FILL_WORD * (unsigned)(passes + 1);
  if (got != want) {
    if (err && err_len)
      snprintf(err, err_len, "read bandwidth: checksum %08x, expected %08x", got, want);
    goto out;
  }
  if (best_ms <= 0) {
    if (err && err_len) snprintf(err, err_len, "read bandwidth: no pass took measurable time");
    goto out;
  }
  gbs = (double)(n * 16) / ((double)best_ms * 1e6);
out:
  if (src) cudaFree(src);
  if (sum) cudaFree(sum);
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
  if (s) cudaStreamDestroy(s);
  return gbs;
}
