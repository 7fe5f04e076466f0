/* cuda_device.cuh - what the host code may ask of the CUDA runtime without
 * including a CUDA header: plain C declarations. */
#ifndef LM_CUDA_DEVICE_CUH
#define LM_CUDA_DEVICE_CUH

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no GPU or no driver. On
 * 0, why (driver missing, no device) is written to why[0..why_len). */
int lm_cuda_device_count(char *why, unsigned long why_len);

/* Name and memory of device 0, for logs; returns 0 on success. */
int lm_cuda_device_info(char *name, unsigned long name_len, unsigned long long *total_bytes);

#ifdef __cplusplus
}
#endif

#endif
