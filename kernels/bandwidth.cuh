/* bandwidth.cuh - the device's read bandwidth, measured: the denominator
 * of the decode memory roofline (a decode step reads every weight once, so
 * its speed is bounded by how fast the GPU can stream its memory). */
#ifndef LM_KERNELS_BANDWIDTH_CUH
#define LM_KERNELS_BANDWIDTH_CUH

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Allocates bytes (rounded down to a multiple of 16) on device 0, fills
 * them, and times a read-only reduction over all of them passes times
 * (after one untimed warm-up pass) with CUDA events. Returns the best
 * pass's bandwidth in GB/s (1e9 bytes), or 0 with err written when the
 * device, the allocation or the kernel fails, or when the reduction's
 * checksum is wrong. Frees everything it allocated before returning. Use a
 * size well beyond the L2 cache (>= 4 GiB) so the figure is DRAM's. */
double lm_cuda_read_gbs(size_t bytes, int passes, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
