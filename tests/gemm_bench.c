/* gemm_bench.c - what lmserve's two batch-invariant GEMMs (kernels/gemm.cuh:
 * "mma", the own kernel, and "cublaslt", one pinned cuBLASLt algorithm per
 * shape) cost: for the GEMM shapes of Llama-3.1-8B and Qwen3-8B and batch
 * sizes from one decode row to a long prefill chunk, each one's time
 * against cuBLASLt's heuristic choice for that M (split-K and all), side by
 * side in one run, and the mma kernel's weight read rate. Prints one line
 * per (shape, M) and the worst ratios; without a GPU it prints SKIPPED.
 *
 * usage: gemm_bench [--iters N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/lm.h"
#include "kernels/cuda_device.cuh"
#include "kernels/gemm.cuh"

struct shape {
  const char *name;
  int N, K, out_f32;
};

static const struct shape k_shapes[] = {
    {"llama3.1-8b qkv", 4096 + 2 * 1024, 4096, 1}, {"llama3.1-8b o", 4096, 4096, 0},
    {"llama3.1-8b gate_up", 2 * 14336, 4096, 1},   {"llama3.1-8b down", 4096, 14336, 0},
    {"llama3.1-8b lm_head", 128256, 4096, 1},      {"qwen3-8b qkv", 4096 + 2 * 1024, 4096, 1},
    {"qwen3-8b gate_up", 2 * 12288, 4096, 1},      {"qwen3-8b down", 4096, 12288, 0},
};

static const int k_ms[] = {1, 8, 32, 128, 512, 2048};

/* the three ways: cuBLASLt's heuristic, the pinned algorithm, the mma kernel */
enum { HEURISTIC, PINNED, MMA, N_WAYS };

static int run_once(lm_cuda_gemm *const *g, int way, void *y, const uint16_t *x, const uint16_t *w,
                    int M, const struct shape *s, void *stream, char *err) {
  if (way == HEURISTIC)
    return lm_cuda_gemm_run_heuristic(g[0], y, x, w, M, s->N, s->K, s->out_f32, stream, err,
                                      LM_ERR_LEN);
  return lm_cuda_gemm_run(g[way == MMA], y, x, w, M, s->N, s->K, s->out_f32, stream, err,
                          LM_ERR_LEN);
}

/* Seconds per GEMM over iters runs after two warm-up runs; < 0 on failure.
 * The runs cycle through copies of the weights in w (w_bytes in all), so a
 * shape smaller than the L2 cache is still read from memory, as in a model. */
static double time_gemm(lm_cuda_gemm *const *g, int way, void *y, const uint16_t *x,
                        const uint16_t *w, size_t w_bytes, int M, const struct shape *s,
                        void *stream, int iters, char *err) {
  size_t one = (size_t)s->N * s->K, copies = w_bytes / (one * 2);
  if (copies > 8) copies = 8;
  for (int i = 0; i < 2; i++)
    if (run_once(g, way, y, x, w, M, s, stream, err) != 0) return -1;
  if (lm_cuda_sync(stream, err, LM_ERR_LEN) != 0) return -1;
  double t0 = lm_now_s();
  for (int i = 0; i < iters; i++)
    if (run_once(g, way, y, x, w + (size_t)(i % copies) * one, M, s, stream, err) != 0) return -1;
  if (lm_cuda_sync(stream, err, LM_ERR_LEN) != 0) return -1;
  return (lm_now_s() - t0) / iters;
}

int main(int argc, char **argv) {
  char err[LM_ERR_LEN] = "";
  int iters = 50;
  for (int i = 1; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
  if (lm_cuda_device_count(err, sizeof(err)) == 0) {
    printf("SKIPPED: no GPU (%s)\n", err);
    return 0;
  }
  void *stream = NULL;
  lm_cuda_gemm *g[2] = {NULL, NULL}; /* cublaslt, mma */
  if (lm_cuda_stream_create(&stream, err, sizeof(err)) != 0 ||
      lm_cuda_gemm_create(&g[0], "cublaslt", err, sizeof(err)) != 0 ||
      lm_cuda_gemm_create(&g[1], "mma", err, sizeof(err)) != 0) {
    fprintf(stderr, "gemm_bench: %s\n", err);
    return 1;
  }
  size_t max_w = 0, max_x = 0, max_y = 0;
  int max_m = k_ms[sizeof(k_ms) / sizeof(k_ms[0]) - 1];
  for (size_t i = 0; i < sizeof(k_shapes) / sizeof(k_shapes[0]); i++) {
    const struct shape *s = &k_shapes[i];
    size_t w = (size_t)s->N * s->K * 2, x = (size_t)max_m * s->K * 2, y = (size_t)max_m * s->N * 4;
    max_w = w > max_w ? w : max_w;
    max_x = x > max_x ? x : max_x;
    max_y = y > max_y ? y : max_y;
  }
  uint16_t *w = lm_cuda_malloc(max_w), *x = lm_cuda_malloc(max_x);
  void *y = lm_cuda_malloc(max_y);
  if (!w || !x || !y) {
    fprintf(stderr, "gemm_bench: out of device memory\n");
    return 1;
  }
  /* small values: bf16 0x3c00 is 0.0078125, so sums stay finite */
  uint16_t *host = malloc(max_w > max_x ? max_w : max_x);
  for (size_t i = 0; i < (max_w > max_x ? max_w : max_x) / 2; i++)
    host[i] = 0x3c00;
  if (lm_cuda_h2d(w, host, max_w, stream, err, sizeof(err)) != 0 ||
      lm_cuda_h2d(x, host, max_x, stream, err, sizeof(err)) != 0 ||
      lm_cuda_sync(stream, err, sizeof(err)) != 0) {
    fprintf(stderr, "gemm_bench: %s\n", err);
    return 1;
  }
  free(host);

  char name[256] = "";
  unsigned long long total = 0;
  lm_cuda_device_info(name, sizeof(name), &total);
  printf("gemm_bench: %s, %d iterations per point; mma = lmserve's kernel, pinned = one cuBLASLt "
         "algorithm per shape (both for every M), heuristic = cuBLASLt's choice for that M\n",
         name, iters);
  printf("%-22s %6s %9s %9s %9s %9s %9s %8s %8s\n", "shape", "M", "mma_us", "pinned_us", "heur_us",
         "mma/heur", "pin/heur", "mma_TF", "mma_GB/s");
  double worst[N_WAYS] = {0, 0, 0};
  for (size_t i = 0; i < sizeof(k_shapes) / sizeof(k_shapes[0]); i++) {
    const struct shape *s = &k_shapes[i];
    for (int k = 0; k < 2; k++)
      if (lm_cuda_gemm_plan(g[k], s->N, s->K, s->out_f32, max_m, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "gemm_bench: plan %s: %s\n", s->name, err);
        return 1;
      }
    for (size_t j = 0; j < sizeof(k_ms) / sizeof(k_ms[0]); j++) {
      int M = k_ms[j];
      /* alternating rounds, so drift hits every way alike */
      double t[N_WAYS] = {0, 0, 0};
      for (int round = 0; round < 3; round++)
        for (int way = 0; way < N_WAYS; way++) {
          double dt = time_gemm(g, way, y, x, w, max_w, M, s, stream, iters, err);
          if (dt < 0) {
            fprintf(stderr, "gemm_bench: %s M=%d: %s\n", s->name, M, err);
            return 1;
          }
          t[way] += dt / 3;
        }
      for (int way = PINNED; way <= MMA; way++)
        if (t[way] / t[HEURISTIC] > worst[way]) worst[way] = t[way] / t[HEURISTIC];
      printf("%-22s %6d %9.1f %9.1f %9.1f %9.3f %9.3f %8.1f %8.0f\n", s->name, M, t[MMA] * 1e6,
             t[PINNED] * 1e6, t[HEURISTIC] * 1e6, t[MMA] / t[HEURISTIC], t[PINNED] / t[HEURISTIC],
             2.0 * M * s->N * (double)s->K / t[MMA] / 1e12,
             2.0 * s->N * (double)s->K / t[MMA] / 1e9);
    }
  }
  printf("worst time ratio to the heuristic: mma %.3f, pinned %.3f\n", worst[MMA], worst[PINNED]);
  lm_cuda_free(w);
  lm_cuda_free(x);
  lm_cuda_free(y);
  lm_cuda_gemm_free(g[0]);
  lm_cuda_gemm_free(g[1]);
  lm_cuda_stream_destroy(stream);
  return 0;
}
