/* safetensors.h - one mmapped .safetensors file: an 8-byte little-endian
 * header length, a JSON header of tensor entries, then the data. Every
 * entry's dtype, shape and offsets are checked against the file size. */
#ifndef LM_SAFETENSORS_H
#define LM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

struct lm_st_tensor {
  const char *name;
  enum lm_dtype dtype;
  int n_dims;
  int64_t shape[LM_MAX_DIMS];
  const void *data; /* into the mapping */
  size_t n_bytes;
};

typedef struct lm_st_file lm_st_file;

/* Maps path and validates its header. Tensors of dtypes other than F32,
 * F16, BF16 are refused by name. */
int lm_st_open(const char *path, lm_st_file **out, char *err);
void lm_st_close(lm_st_file *f);

/* Validates a header held in memory (buf = whole file contents); the same
 * checks as lm_st_open. Used by the fuzzer. Tensor data pointers point into
 * buf, which must outlive the lm_st_file; names are copied. Also refused:
 * duplicate names, overlapping data, data not aligned to its element size. */
int lm_st_parse(const char *name, const void *buf, size_t len, lm_st_file **out, char *err);

size_t lm_st_count(const lm_st_file *f);
const struct lm_st_tensor *lm_st_tensor_at(const lm_st_file *f, size_t i);
/* Hash lookup; NULL when absent. */
const struct lm_st_tensor *lm_st_find(const lm_st_file *f, const char *name);
/* The path (or name given to lm_st_parse) used in messages. */
const char *lm_st_name(const lm_st_file *f);

#endif
