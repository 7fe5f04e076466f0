/* cuda_device.cu - GPU presence and identity, the backend's stream,
 * device and pinned memory, and copies, through the CUDA runtime. */
#include "kernels/cuda_device.cuh"

#include <cuda_profiler_api.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda_check.cuh"

extern "C" int lm_cuda_device_count(char *why, unsigned long why_len) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    /* the runtime says "insufficient driver" when there is none at all */
    if (why && why_len && e == cudaErrorInsufficientDriver)
      snprintf(why, why_len, "no NVIDIA driver, or one older than CUDA %d.%d needs",
               CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    else if (why && why_len)
      snprintf(why, why_len, "%s", cudaGetErrorString(e));
    cudaGetLastError(); /* clear the sticky error for later calls */
    return 0;
  }
  if (n == 0 && why && why_len) snprintf(why, why_len, "no CUDA device");
  return n;
}

extern "C" int lm_cuda_device_info(char *name, unsigned long name_len,
                                   unsigned long long *total_bytes) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return -1;
  if (name && name_len) snprintf(name, name_len, "%s", p.name);
  if (total_bytes) *total_bytes = (unsigned long long)p.totalGlobalMem;
  return 0;
}

extern "C" int lm_cuda_stream_create(void **stream, char *err, size_t err_len) {
  cudaStream_t s = NULL;
  *stream = NULL;
  LM_CUDA_CHECK(cudaSetDevice(0), err, err_len, "cudaSetDevice(0)");
  /* non-blocking: the legacy default stream, which other libraries may use,
   * never serializes with the backend's work */
  LM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), err, err_len,
                "cudaStreamCreate");
  *stream = (void *)s;
  return 0;
}

extern "C" void lm_cuda_stream_destroy(void *stream) {
  if (stream) cudaStreamDestroy((cudaStream_t)stream);
}

extern "C" void *lm_cuda_malloc(size_t bytes) {
  void *p = NULL;
  /* cudaMalloc(0) succeeds with NULL, which callers would read as failure */
  if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError(); /* an allocation failure must not surface in a later lm_cuda_sync */
    return NULL;
  }
  return p;
}

extern "C" void lm_cuda_free(void *dev) {
  if (dev) cudaFree(dev);
}

extern "C" void *lm_cuda_host_alloc(size_t bytes) {
  void *p = NULL;
  if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  return p;
}

extern "C" void lm_cuda_host_free(void *host) {
  if (host) cudaFreeHost(host);
}

extern "C" int lm_cuda_h2d(void *dev, const void *host, size_t bytes, void *stream, char *err,
                           size_t err_len) {
  if (bytes == 0) return 0;
  LM_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream),
                err, err_len, "copy to device");
  return 0;
}

extern "C" int lm_cuda_d2h(void *host, const void *dev, size_t bytes, void *stream, char *err,
                           size_t err_len) {
  if (bytes == 0) return 0;
  LM_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)stream),
                err, err_len, "copy to host");
  return 0;
}

extern "C" int lm_cuda_memset(void *dev, int value, size_t bytes, void *stream, char *err,
                              size_t err_len) {
  if (bytes == 0) return 0;
  LM_CUDA_CHECK(cudaMemsetAsync(dev, value, bytes, (cudaStream_t)stream), err, err_len,
                "memset on device");
  return 0;
}

extern "C" int lm_cuda_sync(void *stream, char *err, size_t err_len) {
  /* a bad launch configuration is only reported by cudaGetLastError; a
   * fault while running, by the synchronization */
  cudaError_t launch = cudaGetLastError();
  cudaError_t run = cudaStreamSynchronize((cudaStream_t)stream);
  cudaGetLastError(); /* the synchronization's own error is now reported; do not repeat it */
  LM_CUDA_CHECK(launch, err, err_len, "CUDA kernel launch");
  LM_CUDA_CHECK(run, err, err_len, "CUDA stream");
  return 0;
}

extern "C" int lm_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (free_bytes) *free_bytes = f;
  if (total_bytes) *total_bytes = t;
  return 0;
}

extern "C" void lm_cuda_profiler(int on) {
  /* without a profiler attached these succeed and do nothing; an error
   * (no device) is not sticky and must not reach a later check */
  if ((on ? cudaProfilerStart() : cudaProfilerStop()) != cudaSuccess) cudaGetLastError();
}
