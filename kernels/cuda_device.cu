/* cuda_device.cu - GPU presence and identity through the CUDA runtime. */
#include "kernels/cuda_device.cuh"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

extern "C" int lm_cuda_device_count(char *why, unsigned long why_len) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why && why_len) snprintf(why, why_len, "%s", cudaGetErrorString(e));
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
