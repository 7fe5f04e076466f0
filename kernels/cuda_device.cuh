/* cuda_device.cuh - the CUDA runtime as the host code may use it without
 * including a CUDA header: plain C declarations. Pointers named dev are
 * device memory; a stream is a cudaStream_t passed as void *. Copies and
 * kernels on a stream run in order; lm_cuda_sync waits for them and
 * reports the first failure of any of them. */
#ifndef LM_CUDA_DEVICE_CUH
#define LM_CUDA_DEVICE_CUH

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no GPU or no driver. On
 * 0, why (driver missing, no device) is written to why[0..why_len). */
int lm_cuda_device_count(char *why, unsigned long why_len);

/* Name and memory of device 0, for logs; returns 0 on success. */
int lm_cuda_device_info(char *name, unsigned long name_len, unsigned long long *total_bytes);

/* Selects device 0 and creates the stream every op of a backend runs on. */
int lm_cuda_stream_create(void **stream, char *err, size_t err_len);
void lm_cuda_stream_destroy(void *stream);

/* Device memory; NULL on failure. lm_cuda_free accepts NULL. */
void *lm_cuda_malloc(size_t bytes);
void lm_cuda_free(void *dev);
/* Page-locked host memory, so copies on the stream are truly asynchronous. */
void *lm_cuda_host_alloc(size_t bytes);
void lm_cuda_host_free(void *host);

/* Asynchronous on the stream; the host buffer must stay valid (and, for
 * d2h, unread) until lm_cuda_sync. Return 0 or -1 with err written. */
int lm_cuda_h2d(void *dev, const void *host, size_t bytes, void *stream, char *err, size_t err_len);
int lm_cuda_d2h(void *host, const void *dev, size_t bytes, void *stream, char *err, size_t err_len);
int lm_cuda_memset(void *dev, int value, size_t bytes, void *stream, char *err, size_t err_len);
/* Waits for the stream; 0, or -1 with the first launch or execution error. */
int lm_cuda_sync(void *stream, char *err, size_t err_len);

/* Free and total memory of the current device. */
int lm_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

/* Starts (on) or stops what a profiler started with collection off
 * (`ncu --profile-from-start off`) records; does nothing otherwise. */
void lm_cuda_profiler(int on);

#ifdef __cplusplus
}
#endif

#endif
