/* backend.c - picks a compute backend by name, and its KV element type. */
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "kernels/cuda_device.cuh"

int lm_backend_create(const char *name, const struct lm_backend_config *cfg, lm_backend **out,
                      char *err) {
  const struct lm_backend_ops *ops = NULL;
  lm_backend *be;
  int rc;
  *out = NULL;
  /* checked for every backend, so a bad name fails on the CPU too */
  if (cfg && cfg->gemm && strcmp(cfg->gemm, "cublaslt") && strcmp(cfg->gemm, "mma"))
    return lm_errf(err, LM_EINVAL, "backend: gemm \"%s\": expected cublaslt or mma", cfg->gemm);
  if (!name || strcmp(name, "auto") == 0) {
    /* a GPU that is present but unusable is an error, not a quiet fallback
     * to a backend a hundred times slower */
    ops = lm_cuda_device_count(NULL, 0) > 0 ? &lm_backend_cuda_ops : &lm_backend_cpu_ops;
  } else if (strcmp(name, "cpu") == 0) {
    ops = &lm_backend_cpu_ops;
  } else if (strcmp(name, "cuda") == 0) {
    char why[256] = "";
    if (lm_cuda_device_count(why, sizeof(why)) == 0)
      return lm_errf(err, LM_EUNSUP, "backend \"cuda\": no usable GPU (%s); use \"cpu\"", why);
    ops = &lm_backend_cuda_ops;
  } else {
    return lm_errf(err, LM_EINVAL, "backend \"%s\": unknown (expected cpu, cuda or auto)", name);
  }
  be = calloc(1, sizeof(*be));
  if (!be) return lm_errf(err, LM_ENOMEM, "backend: out of memory");
  be->ops = ops;
  rc = ops->create(cfg, &be->st, err);
  if (rc != LM_OK) {
    free(be);
    return rc;
  }
  *out = be;
  return LM_OK;
}

void lm_backend_destroy(lm_backend *be) {
  if (!be) return;
  be->ops->destroy(be->st);
  free(be);
}

int lm_backend_kv_dtype(const struct lm_backend_ops *ops, enum lm_dtype weights, const char *want,
                        enum lm_dtype *out, char *err) {
  enum lm_dtype dt;
  if (!want || strcmp(want, "auto") == 0) {
    /* a type the backend does not store: f32 keeps f16's precision */
    if (ops->kv_dtypes & (1u << weights))
      dt = weights;
    else
      dt = ops->kv_dtypes & (1u << LM_DTYPE_F32) ? LM_DTYPE_F32 : LM_DTYPE_BF16;
  } else if (strcmp(want, "bf16") == 0 || strcmp(want, "bfloat16") == 0) {
    dt = LM_DTYPE_BF16;
  } else if (strcmp(want, "f32") == 0 || strcmp(want, "float32") == 0) {
    dt = LM_DTYPE_F32;
  } else if (strcmp(want, "fp8_e5m2") == 0 || strcmp(want, "float8_e5m2") == 0) {
    dt = LM_DTYPE_F8E5M2;
  } else {
    return lm_errf(err, LM_EINVAL,
                   "kv cache dtype \"%s\": unknown (expected auto, bf16, f32 or fp8_e5m2)", want);
  }
  if (!(ops->kv_dtypes & (1u << dt)))
    return lm_errf(err, LM_EUNSUP, "kv cache dtype %s: the %s backend does not store it",
                   lm_dtype_name(dt), ops->name);
  *out = dt;
  return LM_OK;
}

size_t lm_kv_layer_bytes(const struct lm_kv_shape *s) {
  return (size_t)s->n_blocks * (size_t)s->n_kv_heads * (size_t)s->block_size * (size_t)s->head_dim *
         lm_dtype_size(s->dtype);
}

size_t lm_kv_block_bytes(const struct lm_kv_shape *s) {
  return (size_t)s->n_layers * 2 * (size_t)s->n_kv_heads * (size_t)s->block_size *
         (size_t)s->head_dim * lm_dtype_size(s->dtype);
}
