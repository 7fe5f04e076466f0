/* safetensors.c - validation of a safetensors header and a name index over
 * its tensors. The same code checks a mapped file and a buffer handed in by
 * the fuzzer, so everything the header claims is checked against len. */
#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/json.h"

/* The reference implementation refuses headers over 100 MB; a real one for
 * a 1000-tensor checkpoint is about 100 KB. */
#define ST_MAX_HEADER_BYTES (100u << 20)

struct lm_st_file {
  char *name; /* for messages: the path, or what lm_st_parse was given */
  void *map;  /* the mapping, NULL when parsed from a caller's buffer */
  size_t map_len;
  struct lm_st_tensor *tensors; /* [n] in header order */
  size_t n;
  char *names;     /* all tensor names, NUL-separated; tensors[i].name points in */
  uint32_t *slots; /* [n_slots] open-addressing hash: tensor index + 1, 0 = empty */
  size_t n_slots;  /* power of two, at least 2n */
};

struct st_dtype {
  const char *name;
  int supported;
  enum lm_dtype dtype;
};

/* Every dtype the format defines, so an unsupported one is named as such
 * rather than reported as garbage. */
static const struct st_dtype st_dtypes[] = {
    {"F32", 1, LM_DTYPE_F32},  {"F16", 1, LM_DTYPE_F16},     {"BF16", 1, LM_DTYPE_BF16},
    {"F64", 0, LM_DTYPE_F32},  {"I64", 0, LM_DTYPE_F32},     {"I32", 0, LM_DTYPE_F32},
    {"I16", 0, LM_DTYPE_F32},  {"I8", 0, LM_DTYPE_F32},      {"U64", 0, LM_DTYPE_F32},
    {"U32", 0, LM_DTYPE_F32},  {"U16", 0, LM_DTYPE_F32},     {"U8", 0, LM_DTYPE_F32},
    {"BOOL", 0, LM_DTYPE_F32}, {"F8_E4M3", 0, LM_DTYPE_F32}, {"F8_E5M2", 0, LM_DTYPE_F32},
};

/* Error messages quote names taken from the file, which may hold control
 * characters; the promise is one line, so those become '?'. */
static int one_line(char *err, int rc) {
  for (char *p = err; rc != LM_OK && p && *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
  return rc;
}

static int is_metadata(const lm_json *e) {
  return e->key_len == 12 && memcmp(e->key, "__metadata__", 12) == 0;
}

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Inserts tensor i; returns the index of an existing tensor of the same
 * name, or -1. */
static long index_insert(lm_st_file *f, size_t i) {
  size_t mask = f->n_slots - 1;
  for (size_t s = (size_t)hash_name(f->tensors[i].name) & mask;; s = (s + 1) & mask) {
    if (!f->slots[s]) {
      f->slots[s] = (uint32_t)(i + 1);
      return -1;
    }
    if (strcmp(f->tensors[f->slots[s] - 1].name, f->tensors[i].name) == 0)
      return (long)(f->slots[s] - 1);
  }
}

const struct lm_st_tensor *lm_st_find(const lm_st_file *f, const char *name) {
  if (!f || !f->n_slots) return NULL;
  size_t mask = f->n_slots - 1;
  for (size_t s = (size_t)hash_name(name) & mask; f->slots[s]; s = (s + 1) & mask) {
    const struct lm_st_tensor *t = &f->tensors[f->slots[s] - 1];
    if (strcmp(t->name, name) == 0) return t;
  }
  return NULL;
}

size_t lm_st_count(const lm_st_file *f) {
  return f ? f->n : 0;
}

const struct lm_st_tensor *lm_st_tensor_at(const lm_st_file *f, size_t i) {
  return f && i < f->n ? &f->tensors[i] : NULL;
}

const char *lm_st_name(const lm_st_file *f) {
  return f ? f->name : NULL;
}

void lm_st_close(lm_st_file *f) {
  if (!f) return;
  if (f->map) munmap(f->map, f->map_len);
  free(f->name);
  free(f->tensors);
  free(f->names);
  free(f->slots);
  free(f);
}

/* Reads a JSON number that must be a non-negative integer. */
static int get_u64(const lm_json *v, uint64_t *out) {
  if (!v || v->type != LM_JSON_NUMBER || !v->is_int || v->integer < 0) return -1;
  *out = (uint64_t)v->integer;
  return 0;
}

/* Fills t from one header entry; data_len is the size of the data section
 * and data_base its offset in the file (for the alignment check). */
static int parse_entry(const char *fname, const lm_json *e, struct lm_st_tensor *t,
                       const unsigned char *data, uint64_t data_base, uint64_t data_len,
                       char *err) {
  const char *tn = t->name;
  if (e->type != LM_JSON_OBJECT)
    return lm_errf(err, LM_EFORMAT, "%s: %s: entry is a %s, not an object", fname, tn,
                   lm_json_type_name(e->type));

  const lm_json *dt = lm_json_get_type(e, "dtype", LM_JSON_STRING);
  if (!dt) return lm_errf(err, LM_EFORMAT, "%s: %s: missing string \"dtype\"", fname, tn);
  const struct st_dtype *d = NULL;
  for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
    if (strlen(st_dtypes[i].name) == dt->str_len && strcmp(st_dtypes[i].name, dt->str) == 0)
      d = &st_dtypes[i];
  if (!d) return lm_errf(err, LM_EFORMAT, "%s: %s: unknown dtype \"%.32s\"", fname, tn, dt->str);
  if (!d->supported)
    return lm_errf(err, LM_EUNSUP, "%s: %s: dtype %s is not supported (F32, F16, BF16 are)", fname,
                   tn, d->name);
  t->dtype = d->dtype;

  const lm_json *sh = lm_json_get_type(e, "shape", LM_JSON_ARRAY);
  if (!sh) return lm_errf(err, LM_EFORMAT, "%s: %s: missing array \"shape\"", fname, tn);
  if (sh->n_kids > LM_MAX_DIMS)
    return lm_errf(err, LM_EUNSUP, "%s: %s: %zu dimensions (at most %d supported)", fname, tn,
                   sh->n_kids, LM_MAX_DIMS);
  t->n_dims = (int)sh->n_kids;
  uint64_t numel = 1;
  for (size_t i = 0; i < sh->n_kids; i++) {
    uint64_t dim;
    if (get_u64(&sh->kids[i], &dim) != 0)
      return lm_errf(err, LM_EFORMAT, "%s: %s: shape[%zu] is not a non-negative integer", fname, tn,
                     i);
    if (__builtin_mul_overflow(numel, dim, &numel) || numel > (uint64_t)INT64_MAX)
      return lm_errf(err, LM_ERANGE, "%s: %s: element count overflows", fname, tn);
    t->shape[i] = (int64_t)dim;
  }
  uint64_t n_bytes;
  if (__builtin_mul_overflow(numel, (uint64_t)lm_dtype_size(t->dtype), &n_bytes))
    return lm_errf(err, LM_ERANGE, "%s: %s: byte size overflows", fname, tn);

  const lm_json *off = lm_json_get_type(e, "data_offsets", LM_JSON_ARRAY);
  uint64_t begin, end;
  if (!off || off->n_kids != 2 || get_u64(&off->kids[0], &begin) != 0 ||
      get_u64(&off->kids[1], &end) != 0)
    return lm_errf(err, LM_EFORMAT,
                   "%s: %s: \"data_offsets\" must be [begin, end] of non-negative integers", fname,
                   tn);
  if (end < begin)
    return lm_errf(err, LM_EFORMAT, "%s: %s: data_offsets end %llu is before begin %llu", fname, tn,
                   (unsigned long long)end, (unsigned long long)begin);
  if (end > data_len)
    return lm_errf(err, LM_EIO,
                   "%s: %s: data_offsets end %llu is past the data section (%llu bytes; "
                   "truncated file?)",
                   fname, tn, (unsigned long long)end, (unsigned long long)data_len);
  if (end - begin != n_bytes)
    return lm_errf(err, LM_EFORMAT,
                   "%s: %s: data_offsets span %llu bytes but shape and dtype need %llu", fname, tn,
                   (unsigned long long)(end - begin), (unsigned long long)n_bytes);
  /* Backends read the data in place as float / uint16_t; the writers pad the
   * header so that this holds, and a file where it does not would mean
   * misaligned loads. */
  if ((data_base + begin) % lm_dtype_size(t->dtype) != 0)
    return lm_errf(err, LM_EFORMAT, "%s: %s: data at file offset %llu is not %zu-byte aligned",
                   fname, tn, (unsigned long long)(data_base + begin), lm_dtype_size(t->dtype));
  t->data = data + begin;
  t->n_bytes = (size_t)n_bytes;
  return LM_OK;
}

static int cmp_by_begin(const void *a, const void *b) {
  const struct lm_st_tensor *x = *(const struct lm_st_tensor *const *)a;
  const struct lm_st_tensor *y = *(const struct lm_st_tensor *const *)b;
  return (x->data > y->data) - (x->data < y->data);
}

/* Two tensors sharing bytes would alias under writes by a backend that
 * converts in place, and no writer produces that. */
static int check_overlap(lm_st_file *f, char *err) {
  int rc = LM_OK;
  const struct lm_st_tensor **order = malloc((f->n ? f->n : 1) * sizeof(*order));
  if (!order) return lm_errf(err, LM_ENOMEM, "%s: out of memory", f->name);
  size_t m = 0;
  for (size_t i = 0; i < f->n; i++)
    if (f->tensors[i].n_bytes) order[m++] = &f->tensors[i];
  qsort(order, m, sizeof(*order), cmp_by_begin);
  for (size_t i = 1; i < m; i++) {
    const char *prev_end = (const char *)order[i - 1]->data + order[i - 1]->n_bytes;
    if ((const char *)order[i]->data < prev_end) {
      rc = lm_errf(err, LM_EFORMAT, "%s: %s: data overlaps %s", f->name, order[i]->name,
                   order[i - 1]->name);
      break;
    }
  }
  free(order);
  return rc;
}

static int st_parse(const char *name, const void *buf, size_t len, lm_st_file **out, char *err) {
  const unsigned char *b = buf;
  lm_json_doc *doc = NULL;
  lm_st_file *f = NULL;
  char jerr[LM_ERR_LEN];
  int rc;

  *out = NULL;
  if (!name) name = "safetensors";
  if (len < 8)
    return lm_errf(err, LM_EIO, "%s: %zu bytes, too short for the header length (truncated?)", name,
                   len);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = (hlen << 8) | b[i];
  if (hlen > len - 8)
    return lm_errf(err, LM_EIO, "%s: header length %llu exceeds the file (%zu bytes; truncated?)",
                   name, (unsigned long long)hlen, len);
  if (hlen > ST_MAX_HEADER_BYTES)
    return lm_errf(err, LM_EFORMAT, "%s: header length %llu is over the %u-byte limit", name,
                   (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
  if (hlen < 2 || b[8] != '{')
    return lm_errf(err, LM_EFORMAT, "%s: header is not a JSON object", name);

  f = calloc(1, sizeof(*f));
  if (!f || !(f->name = strdup(name))) {
    rc = lm_errf(err, LM_ENOMEM, "%s: out of memory", name);
    goto err;
  }
  if ((rc = lm_json_parse((const char *)b + 8, (size_t)hlen, &doc, jerr)) != LM_OK) {
    rc = lm_errf(err, rc, "%s: header: %s", name, jerr);
    goto err;
  }
  const lm_json *root = lm_json_root(doc);
  if (root->type != LM_JSON_OBJECT) {
    rc = lm_errf(err, LM_EFORMAT, "%s: header is not a JSON object", name);
    goto err;
  }

  /* Count entries and the bytes their names need; "__metadata__" carries
   * free-form strings that nothing here uses. */
  size_t names_bytes = 0;
  for (size_t i = 0; i < root->n_kids; i++) {
    const lm_json *e = &root->kids[i];
    if (is_metadata(e)) continue;
    if (strlen(e->key) != e->key_len) {
      rc = lm_errf(err, LM_EFORMAT, "%s: a tensor name contains a NUL byte", name);
      goto err;
    }
    f->n++;
    names_bytes += e->key_len + 1;
  }
  /* slots hold index + 1 in a uint32_t */
  if (f->n > UINT32_MAX / 4) {
    rc = lm_errf(err, LM_ERANGE, "%s: %zu tensors is too many", name, f->n);
    goto err;
  }
  f->n_slots = 16;
  while (f->n_slots < 2 * f->n)
    f->n_slots *= 2;
  f->tensors = calloc(f->n ? f->n : 1, sizeof(*f->tensors));
  f->names = malloc(names_bytes ? names_bytes : 1);
  f->slots = calloc(f->n_slots, sizeof(*f->slots));
  if (!f->tensors || !f->names || !f->slots) {
    rc = lm_errf(err, LM_ENOMEM, "%s: out of memory for %zu tensors", name, f->n);
    goto err;
  }

  uint64_t data_base = 8 + hlen, data_len = len - data_base;
  char *np = f->names;
  size_t k = 0;
  for (size_t i = 0; i < root->n_kids; i++) {
    const lm_json *e = &root->kids[i];
    if (is_metadata(e)) continue;
    struct lm_st_tensor *t = &f->tensors[k];
    memcpy(np, e->key, e->key_len + 1);
    t->name = np;
    np += e->key_len + 1;
    if ((rc = parse_entry(name, e, t, b + data_base, data_base, data_len, err)) != LM_OK) goto err;
    if (index_insert(f, k) >= 0) {
      rc = lm_errf(err, LM_EFORMAT, "%s: tensor %s appears twice", name, t->name);
      goto err;
    }
    k++;
  }
  if ((rc = check_overlap(f, err)) != LM_OK) goto err;
  lm_json_free(doc);
  *out = f;
  return LM_OK;

err:
  lm_json_free(doc);
  lm_st_close(f);
  return rc;
}

int lm_st_parse(const char *name, const void *buf, size_t len, lm_st_file **out, char *err) {
  return one_line(err, st_parse(name, buf, len, out, err));
}

static int st_open(const char *path, lm_st_file **out, char *err) {
  struct stat st;
  void *map = NULL;
  size_t len = 0;
  int rc, fd;

  *out = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return lm_errf(err, LM_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (fstat(fd, &st) != 0) {
    rc = lm_errf(err, LM_EIO, "%s: cannot stat: %s", path, strerror(errno));
    goto err;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = lm_errf(err, LM_EIO, "%s: not a regular file", path);
    goto err;
  }
  if (st.st_size < 8) {
    rc = lm_errf(err, LM_EIO, "%s: %lld bytes, too short for the header length (truncated?)", path,
                 (long long)st.st_size);
    goto err;
  }
  len = (size_t)st.st_size;
  /* MAP_PRIVATE so that a backend that writes into a weight (it should not)
   * can never modify the checkpoint on disk. */
  map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    map = NULL;
    rc = lm_errf(err, LM_EIO, "%s: cannot mmap %zu bytes: %s", path, len, strerror(errno));
    goto err;
  }
  close(fd);
  fd = -1;
  if ((rc = st_parse(path, map, len, out, err)) != LM_OK) goto err;
  (*out)->map = map;
  (*out)->map_len = len;
  return LM_OK;

err:
  if (map) munmap(map, len);
  if (fd >= 0) close(fd);
  return rc;
}

int lm_st_open(const char *path, lm_st_file **out, char *err) {
  return one_line(err, st_open(path, out, err));
}
