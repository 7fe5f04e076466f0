/* backend.c - picks a compute backend by name. */
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
