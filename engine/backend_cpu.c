/* backend_cpu.c - the CPU backend: f32 activations, f32 paged KV cache,
 * work split over a persistent thread pool. matmul lives in cpu_gemm.c and
 * attention in cpu_attention.c; the element-wise and row-wise ops are here.
 *
 * Every op computes each output row from that row's inputs alone with a
 * fixed reduction order, so rows never depend on the batch around them. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/cpu_internal.h"
#include "engine/sampler.h"

/* Below this many elements an op runs on the caller alone: a parallel
 * region costs more than the work. */
#define LM_CPU_SERIAL_ELEMS   16384
#define LM_CPU_MAX_HEAD_DIM   256
#define LM_CPU_MAX_BLOCK_SIZE 256

static void *lm_cpu_aligned(size_t bytes) {
  void *p = NULL;
  bytes = (bytes + 63) & ~(size_t)63;
  if (bytes == 0) bytes = 64;
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  return p;
}

int lm_cpu_grow(void **buf, size_t *have_bytes, size_t want_bytes) {
  void *p;
  if (want_bytes <= *have_bytes) return LM_OK;
  p = lm_cpu_aligned(want_bytes);
  if (!p) return LM_ENOMEM;
  free(*buf);
  *buf = p;
  *have_bytes = want_bytes;
  return LM_OK;
}

LM_AVX512_TARGET static void lm_cpu_convert_avx512(float *dst, const void *src, enum lm_dtype dt,
                                                   size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    int left = n - i < 16 ? (int)(n - i) : 16;
    _mm512_mask_storeu_ps(dst + i, lm_cpu_lanes(left), lm_cpu_load16(src, dt, i, left));
  }
}

static int lm_cpu_has_avx512(void) {
  static int cached = -1;
  if (cached < 0) {
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return cached;
}

void lm_cpu_convert_row(float *dst, const void *src, enum lm_dtype dt, size_t n) {
  if (dt == LM_DTYPE_F32) {
    memcpy(dst, src, n * sizeof(float));
    return;
  }
  if (lm_cpu_has_avx512()) {
    lm_cpu_convert_avx512(dst, src, dt, n);
    return;
  }
  for (size_t i = 0; i < n; i++)
    dst[i] = lm_cpu_elem(src, dt, i);
}

/* AMX-TILE and AMX-BF16 (CPUID.(7,0):EDX bits 24 and 22), with the tile
 * data state granted: Linux keeps it off until a process asks
 * (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), and the grant covers every
 * thread of the process. A kernel that refuses it (too old, or a thread's
 * signal stack too small for the tile state) leaves the AVX-512 kernels. */
static int lm_cpu_amx_granted;

static void lm_cpu_amx_ask(void) {
  unsigned a, b, c, d;
  if (lm_cpu_has_avx512() && __builtin_cpu_supports("avx512bf16") &&
      __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 22 & 1))
    lm_cpu_amx_granted =
        syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

int lm_cpu_has_amx(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, lm_cpu_amx_ask);
  return lm_cpu_amx_granted;
}

/* ---- lifecycle, buffers ------------------------------------------------ */

static int lm_cpu_create(const struct lm_backend_config *cfg, void **st, char *err) {
  struct lm_cpu *cpu = calloc(1, sizeof(*cpu));
  *st = NULL;
  if (!cpu) return lm_errf(err, LM_ENOMEM, "cpu backend: out of memory");
  cpu->pool = lm_pool_create(cfg ? cfg->n_threads : 0);
  if (!cpu->pool) {
    free(cpu);
    return lm_errf(err, LM_ENOMEM, "cpu backend: cannot start worker threads");
  }
  cpu->n_threads = lm_pool_size(cpu->pool);
  cpu->avx512 = lm_cpu_has_avx512();
  /* bf16 dot products where they are the fast path: AMD's vdpbf16ps does
   * twice the FMA's multiply-adds at its rate, Intel's (Sapphire and
   * Emerald Rapids) a third of the FMA's GFLOP/s, so widening wins there
   * (cpu_gemm.c; backend_bench prints both probes) */
  int has_dot = cpu->avx512 && __builtin_cpu_supports("avx512bf16");
  /* AMX tiles, where the CPU has them, do 8 times the FMA's multiply-adds
   * a cycle (Sapphire Rapids and later), and round x to bf16 as the dot
   * products do */
  cpu->amx = lm_cpu_has_amx();
  cpu->bf16_dot = cpu->amx || (has_dot && __builtin_cpu_is("amd"));
  cpu->mapped_weights = cfg ? cfg->cpu_mapped_weights : 0;
  /* LM_CPU_ISA=scalar forces the portable kernels, LM_CPU_ISA=avx512 the
   * AVX-512 ones without bf16 dot products or tiles, LM_CPU_ISA=bf16dot
   * the dot products wherever the CPU has them, LM_CPU_ISA=amx the tiles
   * wherever it has them (tests, comparisons) */
  const char *isa = getenv("LM_CPU_ISA");
  if (isa && strcmp(isa, "scalar") == 0) cpu->avx512 = 0;
  if (isa && (strcmp(isa, "scalar") == 0 || strcmp(isa, "avx512") == 0)) cpu->bf16_dot = 0;
  if (isa && strcmp(isa, "bf16dot") == 0) cpu->bf16_dot = has_dot;
  if (isa && strcmp(isa, "amx") != 0) cpu->amx = 0;
  *st = cpu;
  return LM_OK;
}

static void lm_cpu_destroy(void *st) {
  struct lm_cpu *cpu = st;
  if (!cpu) return;
  lm_pool_destroy(cpu->pool);
  /* the model outlives the backend (backend.h): point its tensors back at
   * the file */
  for (int i = 0; i < cpu->n_copied; i++)
    cpu->copied[i]->dev = NULL;
  free(cpu->copied);
  if (cpu->weights) munmap(cpu->weights, cpu->weights_bytes);
  free(cpu->xprep);
  free(cpu->panels);
  free(cpu->sample_scratch);
  free(cpu);
}

/* The matmul weights are streamed once per decoded token. In the file
 * mapping they sit on 4 KiB pages and every page is a TLB miss at that
 * rate; copied into memory on 2 MiB pages, decode reads them markedly
 * faster (docs/BENCHMARKS.md). The copy is packed in panels for the matmul
 * kernels (cpu_gemm.c), about the size as stored (rows rounded up to 16, a
 * 16-bit K to even). With
 * cfg->cpu_mapped_weights (or without AVX-512, whose portable kernels read
 * W as stored) they stay in the mapping and use no extra memory. */
static int lm_cpu_load_weights(void *st, lm_model *m, char *err) {
  struct lm_cpu *cpu = st;
  const size_t huge = (size_t)2 << 20;
  int n = 0, per_layer = 7;
  if (cpu->model)
    return cpu->model == m ? LM_OK
                           : lm_errf(err, LM_EINVAL, "cpu backend: already serving another model");
  cpu->model = m;
  if (cpu->mapped_weights || !cpu->avx512) return LM_OK;
  cpu->copied = calloc((size_t)m->cfg.n_layers * (size_t)per_layer + 1, sizeof(*cpu->copied));
  if (!cpu->copied) return lm_errf(err, LM_ENOMEM, "cpu backend: out of memory");
  for (int l = 0; l < m->cfg.n_layers; l++) {
    struct lm_layer_weights *lw = &m->w.layers[l];
    struct lm_tensor *ts[] = {&lw->wq,     &lw->wk,   &lw->wv,    &lw->wo,
                              &lw->w_gate, &lw->w_up, &lw->w_down};
    for (int i = 0; i < per_layer; i++)
      cpu->copied[n++] = ts[i];
  }
  cpu->copied[n++] = &m->w.lm_head;
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += lm_cpu_packed_bytes(cpu->copied[i]);
  /* one spare huge page so the copy can start on a 2 MiB boundary */
  size_t mapped = ((total + huge - 1) & ~(huge - 1)) + huge;
  void *base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    free(cpu->copied);
    cpu->copied = NULL;
    return lm_errf(err, LM_ENOMEM, "cpu backend: cannot allocate %zu bytes for the weights", total);
  }
  char *at = (char *)(((uintptr_t)base + huge - 1) & ~(uintptr_t)(huge - 1));
  madvise(at, mapped - (size_t)(at - (char *)base), MADV_HUGEPAGE);
  for (int i = 0; i < n; i++) {
    /* a tensor the kernels cannot pack stays in the mapping (dev NULL) */
    if (lm_cpu_pack(cpu, at, cpu->copied[i]) == LM_OK) cpu->copied[i]->dev = at;
    at += lm_cpu_packed_bytes(cpu->copied[i]);
  }
  cpu->weights = base;
  cpu->weights_bytes = mapped;
  cpu->n_copied = n;
  return LM_OK;
}

/* A matmul weight outside a model, packed as load_weights packs (tests and
 * tools); other tensors need nothing. */
static int lm_cpu_tensor_load(void *st, struct lm_tensor *t, char *err) {
  struct lm_cpu *cpu = st;
  if (!cpu->avx512 || t->n_dims != 2) return LM_OK;
  void *packed = lm_cpu_aligned(lm_cpu_packed_bytes(t));
  if (!packed) return lm_errf(err, LM_ENOMEM, "cpu backend: cannot pack a tensor");
  if (lm_cpu_pack(cpu, packed, t) != LM_OK) { /* computed from t->data as stored */
    free(packed);
    return LM_OK;
  }
  free(t->dev); /* loading again replaces the old copy */
  t->dev = packed;
  return LM_OK;
}

static void lm_cpu_tensor_free(void *st, struct lm_tensor *t) {
  (void)st;
  free(t->dev);
  t->dev = NULL;
}

static void *lm_cpu_act_alloc(void *st, size_t n_elems) {
  (void)st;
  if (n_elems > SIZE_MAX / sizeof(float)) return NULL;
  return lm_cpu_aligned(n_elems * sizeof(float));
}

static void lm_cpu_act_free(void *st, void *buf) {
  (void)st;
  free(buf);
}

static int lm_cpu_act_read(void *st, float *dst, const void *src, size_t n_elems) {
  (void)st;
  memcpy(dst, src, n_elems * sizeof(float));
  return LM_OK;
}

static int lm_cpu_act_write(void *st, void *dst, const float *src, size_t n_elems) {
  (void)st;
  memcpy(dst, src, n_elems * sizeof(float));
  return LM_OK;
}

static void lm_cpu_logits(void *st, void *logits, const void *x, const struct lm_tensor *w,
                          int rows) {
  lm_cpu_matmul(st, logits, x, w, NULL, rows);
}

static int lm_cpu_kv_create(void *st, const struct lm_kv_shape *s, void **kv, char *err) {
  size_t n = 1;
  int64_t dims[6];
  (void)st;
  *kv = NULL;
  if (s->n_layers <= 0 || s->n_blocks <= 0 || s->block_size <= 0 || s->n_kv_heads <= 0 ||
      s->head_dim <= 0)
    return lm_errf(err, LM_EINVAL, "cpu kv cache: every dimension must be positive");
  if (s->head_dim > LM_CPU_MAX_HEAD_DIM || s->block_size > LM_CPU_MAX_BLOCK_SIZE)
    return lm_errf(err, LM_EUNSUP, "cpu kv cache: head_dim %d / block_size %d above %d / %d",
                   s->head_dim, s->block_size, LM_CPU_MAX_HEAD_DIM, LM_CPU_MAX_BLOCK_SIZE);
  if (s->dtype != LM_DTYPE_F32 && s->dtype != LM_DTYPE_BF16 && s->dtype != LM_DTYPE_F8E5M2)
    return lm_errf(err, LM_EUNSUP, "cpu kv cache: stores f32, bf16 or fp8_e5m2, not %s",
                   lm_dtype_name(s->dtype));
  /* K is stored by pairs of dims (lm_cpu_k_index): a head fills whole pairs */
  if (s->dtype != LM_DTYPE_F32 && s->head_dim % 2)
    return lm_errf(err, LM_EUNSUP, "cpu kv cache: head_dim %d is odd; %s needs it even",
                   s->head_dim, lm_dtype_name(s->dtype));
  dims[0] = s->n_layers, dims[1] = 2, dims[2] = s->n_blocks, dims[3] = s->n_kv_heads;
  dims[4] = s->block_size, dims[5] = s->head_dim;
  for (int i = 0; i < 6; i++) {
    if (n > SIZE_MAX / sizeof(float) / (size_t)dims[i])
      return lm_errf(err, LM_ERANGE, "cpu kv cache: size overflows");
    n *= (size_t)dims[i];
  }
  /* The pool is as large as the caller wants resident: commit it now, on
   * huge pages, so decode steps never stop for first-touch page faults
   * (each fresh 4 KiB page cost more than the token's K/V copy itself). */
  size_t bytes = n * lm_dtype_size(s->dtype), huge = (size_t)2 << 20;
  if (posix_memalign(kv, huge, (bytes + huge - 1) & ~(huge - 1)) != 0) {
    *kv = NULL;
    return lm_errf(err, LM_ENOMEM, "cpu kv cache: cannot allocate %zu bytes", bytes);
  }
  madvise(*kv, (bytes + huge - 1) & ~(huge - 1), MADV_HUGEPAGE);
  memset(*kv, 0, bytes);
  return LM_OK;
}

static void lm_cpu_kv_free(void *st, void *kv) {
  (void)st;
  free(kv);
}

/* ---- row-parallel helper ----------------------------------------------- */

typedef void (*lm_cpu_rows_fn)(const void *arg, int64_t r0, int64_t r1);

struct lm_cpu_rows_job {
  lm_cpu_rows_fn fn;
  const void *arg;
  int64_t rows, chunk;
};

static void lm_cpu_rows_item(void *argp, int64_t item, int tid) {
  const struct lm_cpu_rows_job *j = argp;
  int64_t r0 = item * j->chunk, r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
  (void)tid;
  j->fn(j->arg, r0, r1);
}

/* Runs fn over [0, rows) in contiguous chunks (a few per thread), or on the
 * caller alone when the op is small. */
static void lm_cpu_rows(struct lm_cpu *cpu, int64_t rows, int64_t elems_per_row, lm_cpu_rows_fn fn,
                        const void *arg) {
  struct lm_cpu_rows_job j = {.fn = fn, .arg = arg, .rows = rows};
  if (rows <= 0) return;
  if (rows == 1 || rows * elems_per_row < LM_CPU_SERIAL_ELEMS) {
    fn(arg, 0, rows);
    return;
  }
  j.chunk = (rows + 4 * cpu->n_threads - 1) / (4 * cpu->n_threads);
  lm_pool_for(cpu->pool, (rows + j.chunk - 1) / j.chunk, lm_cpu_rows_item, &j);
}

/* ---- embed, gather ----------------------------------------------------- */

struct lm_embed_args {
  float *x; /* [T, hidden] */
  const struct lm_tensor *table;
  const int32_t *ids;
  int64_t hidden, vocab;
};

static void lm_embed_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_embed_args *a = argp;
  size_t esz = lm_dtype_size(a->table->dtype);
  for (int64_t t = r0; t < r1; t++) {
    float *dst = a->x + (size_t)t * a->hidden;
    int32_t id = a->ids[t];
    if (id < 0 || id >= a->vocab) {
      /* the engine validates ids; a stray one yields a zero row, not a crash */
      memset(dst, 0, (size_t)a->hidden * sizeof(float));
      continue;
    }
    lm_cpu_convert_row(dst, (const char *)a->table->data + (size_t)id * a->hidden * esz,
                       a->table->dtype, (size_t)a->hidden);
  }
}

static void lm_cpu_embed(void *st, void *x, const struct lm_tensor *table,
                         const struct lm_batch *b) {
  struct lm_embed_args a = {.x = x,
                            .table = table,
                            .ids = b->token_ids,
                            .hidden = table->shape[1],
                            .vocab = table->shape[0]};
  lm_cpu_rows(st, b->n_tokens, a.hidden, lm_embed_rows, &a);
}

struct lm_gather_args {
  float *out;     /* [n, dim] */
  const float *x; /* [?, dim] */
  const int32_t *rows;
  int64_t dim;
};

static void lm_gather_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_gather_args *a = argp;
  for (int64_t i = r0; i < r1; i++)
    memcpy(a->out + (size_t)i * a->dim, a->x + (size_t)a->rows[i] * a->dim,
           (size_t)a->dim * sizeof(float));
}

static void lm_cpu_gather_rows(void *st, void *out, const void *x, const int32_t *rows, int n,
                               int dim) {
  struct lm_gather_args a = {.out = out, .x = x, .rows = rows, .dim = dim};
  lm_cpu_rows(st, n, dim, lm_gather_rows, &a);
}

/* ---- rmsnorm ----------------------------------------------------------- */

struct lm_norm_args {
  float *out;                /* [rows, dim] */
  float *residual;           /* [rows, dim] or NULL */
  const float *x;            /* [rows, dim]; the residual when adding */
  const float *delta;        /* [rows, dim] or NULL */
  const struct lm_tensor *w; /* [dim] */
  int dim;
  float eps;
  int avx512;
};

/* mean of squares with 16 lane accumulators over the row, one fixed tree */
LM_AVX512_TARGET static float lm_sumsq_avx512(const float *x, int n) {
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  if (i < n) {
    __m512 v = _mm512_maskz_loadu_ps(lm_cpu_lanes(n - i), x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return lm_hsum16(acc);
}

/* res += delta (when delta), then out = w * (x * inv) with inv from the
 * mean of squares of x (res when adding): the scalar loop's arithmetic,
 * 16 elements at a time. */
LM_AVX512_TARGET static void lm_norm_row_avx512(const struct lm_norm_args *a, float *out,
                                                float *res, const float *x, const float *d) {
  int n = a->dim;
  if (d) {
    for (int i = 0; i < n; i += 16) {
      __mmask16 m = lm_cpu_lanes(n - i);
      _mm512_mask_storeu_ps(
          res + i, m,
          _mm512_add_ps(_mm512_maskz_loadu_ps(m, res + i), _mm512_maskz_loadu_ps(m, d + i)));
    }
    x = res;
  }
  float ss = lm_sumsq_avx512(x, n);
  __m512 inv = _mm512_set1_ps(1.0f / sqrtf(ss / (float)n + a->eps));
  for (int i = 0; i < n; i += 16) {
    __mmask16 m = lm_cpu_lanes(n - i);
    _mm512_mask_storeu_ps(out + i, m,
                          _mm512_mul_ps(lm_cpu_load16(a->w->data, a->w->dtype, (size_t)i, n - i),
                                        _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv)));
  }
}

static float lm_sumsq_scalar(const float *x, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; i++)
    acc += x[i] * x[i];
  return acc;
}

static void lm_norm_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_norm_args *a = argp;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = a->x + (size_t)r * a->dim;
    float *out = a->out + (size_t)r * a->dim;
    if (a->avx512) {
      lm_norm_row_avx512(a, out, a->delta ? a->residual + (size_t)r * a->dim : NULL, x,
                         a->delta ? a->delta + (size_t)r * a->dim : NULL);
      continue;
    }
    if (a->delta) {
      float *res = a->residual + (size_t)r * a->dim;
      const float *d = a->delta + (size_t)r * a->dim;
      for (int i = 0; i < a->dim; i++)
        res[i] += d[i];
      x = res;
    }
    float ss = lm_sumsq_scalar(x, a->dim);
    /* as HF: x * rsqrt(mean(x^2) + eps), then times the weight */
    float inv = 1.0f / sqrtf(ss / (float)a->dim + a->eps);
    const void *w = a->w->data;
    switch (a->w->dtype) {
    case LM_DTYPE_BF16:
      for (int i = 0; i < a->dim; i++)
        out[i] = lm_bf16_to_f32(((const uint16_t *)w)[i]) * (x[i] * inv);
      break;
    case LM_DTYPE_F16:
    case LM_DTYPE_F32:
    case LM_DTYPE_F8E5M2:
      for (int i = 0; i < a->dim; i++)
        out[i] = lm_cpu_elem(w, a->w->dtype, (size_t)i) * (x[i] * inv);
      break;
    }
  }
}

static void lm_cpu_rmsnorm(void *st, void *out, const void *x, const struct lm_tensor *w, int rows,
                           int dim, float eps) {
  struct lm_cpu *cpu = st;
  struct lm_norm_args a = {
      .out = out, .x = x, .w = w, .dim = dim, .eps = eps, .avx512 = cpu->avx512};
  lm_cpu_rows(cpu, rows, dim, lm_norm_rows, &a);
}

static void lm_cpu_add_rmsnorm(void *st, void *out, void *residual, const void *delta,
                               const struct lm_tensor *w, int rows, int dim, float eps) {
  struct lm_cpu *cpu = st;
  struct lm_norm_args a = {.out = out,
                           .residual = residual,
                           .x = residual,
                           .delta = delta,
                           .w = w,
                           .dim = dim,
                           .eps = eps,
                           .avx512 = cpu->avx512};
  lm_cpu_rows(cpu, rows, dim, lm_norm_rows, &a);
}

/* ---- rope -------------------------------------------------------------- */

struct lm_rope_args {
  float *q; /* [T, n_heads, head_dim] */
  float *k; /* [T, n_kv_heads, head_dim] */
  const int32_t *positions;
  const struct lm_rope *rope;
  int n_heads, n_kv_heads;
};

static void lm_rope_head(float *x, const float *cs, const float *sn, int half) {
  for (int i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cs[i] - b * sn[i];
    x[i + half] = b * cs[i] + a * sn[i];
  }
}

static void lm_rope_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_rope_args *a = argp;
  int hd = a->rope->head_dim, half = hd / 2;
  float cs[LM_CPU_MAX_HEAD_DIM / 2], sn[LM_CPU_MAX_HEAD_DIM / 2];
  for (int64_t t = r0; t < r1; t++) {
    /* as HF in f32: angle = float(pos) * inv_freq, then cos and sin */
    float pos = (float)a->positions[t];
    for (int i = 0; i < half; i++) {
      float ang = pos * a->rope->inv_freq[i];
      cs[i] = cosf(ang);
      sn[i] = sinf(ang);
    }
    for (int h = 0; h < a->n_heads; h++)
      lm_rope_head(a->q + ((size_t)t * a->n_heads + h) * hd, cs, sn, half);
    for (int h = 0; h < a->n_kv_heads; h++)
      lm_rope_head(a->k + ((size_t)t * a->n_kv_heads + h) * hd, cs, sn, half);
  }
}

static void lm_cpu_rope(void *st, void *q, void *k, const struct lm_batch *b,
                        const struct lm_rope *rope, int n_heads, int n_kv_heads) {
  struct lm_rope_args a = {.q = q,
                           .k = k,
                           .positions = b->positions,
                           .rope = rope,
                           .n_heads = n_heads,
                           .n_kv_heads = n_kv_heads};
  if (rope->head_dim > LM_CPU_MAX_HEAD_DIM || rope->head_dim % 2) return;
  lm_cpu_rows(st, b->n_tokens, (int64_t)(n_heads + n_kv_heads) * rope->head_dim * 4, lm_rope_rows,
              &a);
}

/* ---- kv_write ---------------------------------------------------------- */

struct lm_kvw_args {
  char *kbase, *vbase; /* this layer's K and V: [n_kv_heads, n_blocks] regions */
  const float *k, *v;  /* [T, n_kv_heads, head_dim] */
  const struct lm_kv_shape *s;
  const int32_t *slots;
  int by16;  /* lm_kvw_head_avx512 (AVX-512, a bf16 or e5m2 cache, head_dim % 16 == 0) */
  int pairs; /* V by pairs of keys (lm_cpu_v_index) */
};

/* lm_f32_to_e5m2 on 16 lanes: nearest even, saturating, NaN kept. */
LM_AVX512_TARGET static __m128i lm_kvw_e5m2_16(__m512 x) {
  __m512i u = _mm512_castps_si512(x), a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  /* normal: two mantissa bits kept, nearest even; exponent 113 is code 4 */
  __m512i r = _mm512_add_epi32(
      a, _mm512_add_epi32(_mm512_set1_epi32(0xfffff),
                          _mm512_and_si512(_mm512_srli_epi32(a, 21), _mm512_set1_epi32(1))));
  __m512i code = _mm512_sub_epi32(_mm512_srli_epi32(r, 21), _mm512_set1_epi32(112 << 2));
  /* below 2^-14: multiples of 2^-16 */
  __m512i q =
      _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(65536.0f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  code = _mm512_mask_mov_epi32(code, _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x38800000)), q);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(0x47600000)),
                               _mm512_set1_epi32(0x7b));
  code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000)),
                               _mm512_set1_epi32(0x7f));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(code, sign));
}

/* lm_f32_to_bf16 on 16 lanes: nearest even, NaN kept quiet. */
LM_AVX512_TARGET static __m256i lm_kvw_bf16_16(__m512 x) {
  __m512i u = _mm512_castps_si512(x);
  __m512i r = _mm512_add_epi32(
      u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                          _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                          _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

/* One token's head into a bf16 or e5m2 cache, 16 dims at a time: V's
 * elements in its row (or, by pairs of keys, in every other half of its
 * pair's row), K's pairs of dims down their word rows. */
LM_AVX512_TARGET static void lm_kvw_head_avx512(char *kreg, char *vreg, const float *k,
                                                const float *v, int off, int hd, int bs,
                                                enum lm_dtype dt, int pairs) {
  for (int d0 = 0; d0 < hd; d0 += 16) {
    if (dt == LM_DTYPE_F8E5M2) {
      _mm_storeu_si128((__m128i *)(vreg + (size_t)off * hd + d0),
                       lm_kvw_e5m2_16(_mm512_loadu_ps(v + d0)));
      uint16_t pairs[8];
      _mm_storeu_si128((__m128i *)pairs, lm_kvw_e5m2_16(_mm512_loadu_ps(k + d0)));
      for (int p = 0; p < 8; p++)
        ((uint16_t *)kreg)[(size_t)(d0 / 2 + p) * bs + off] = pairs[p];
    } else {
      __m256i vb = lm_kvw_bf16_16(_mm512_loadu_ps(v + d0));
      if (pairs) {
        __m512i w = _mm512_cvtepu16_epi32(vb);
        _mm512_mask_storeu_epi16(vreg + lm_cpu_v_index(off & ~1, d0, hd, 1) * 2,
                                 off % 2 ? 0xaaaaaaaau : 0x55555555u,
                                 off % 2 ? _mm512_slli_epi32(w, 16) : w);
      } else
        _mm256_storeu_si256((__m256i *)(vreg + ((size_t)off * hd + d0) * 2), vb);
      uint32_t pairs[8];
      _mm256_storeu_si256((__m256i *)pairs, lm_kvw_bf16_16(_mm512_loadu_ps(k + d0)));
      for (int p = 0; p < 8; p++)
        ((uint32_t *)kreg)[(size_t)(d0 / 2 + p) * bs + off] = pairs[p];
    }
  }
}

/* Element i of the cache's type (bf16, e5m2: nearest even) from an f32. */
static void lm_kvw_store(void *dst, size_t i, float x, enum lm_dtype dt) {
  if (dt == LM_DTYPE_BF16)
    ((uint16_t *)dst)[i] = lm_f32_to_bf16(x);
  else if (dt == LM_DTYPE_F8E5M2)
    ((uint8_t *)dst)[i] = lm_f32_to_e5m2(x);
  else
    ((float *)dst)[i] = x;
}

/* Each token's K into its slot's column of the word-transposed K region
 * (lm_cpu_k_index), its V into the slot's row of the V region. */
static void lm_kvw_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_kvw_args *a = argp;
  const struct lm_kv_shape *s = a->s;
  const int hd = s->head_dim, bs = s->block_size;
  size_t row = (size_t)s->n_kv_heads * hd, elem = lm_dtype_size(s->dtype);
  for (int64_t t = r0; t < r1; t++) {
    int32_t slot = a->slots[t];
    if (slot < 0) continue; /* padding token: nothing to store */
    int blk = slot / bs, off = slot % bs;
    if (blk >= s->n_blocks) continue;
    for (int h = 0; h < s->n_kv_heads; h++) {
      size_t region = lm_cpu_kv_region(blk, h, s->n_blocks) * bs * hd * elem;
      const float *k = a->k + (size_t)t * row + (size_t)h * hd;
      const float *v = a->v + (size_t)t * row + (size_t)h * hd;
      if (a->by16) {
        lm_kvw_head_avx512(a->kbase + region, a->vbase + region, k, v, off, hd, bs, s->dtype,
                           a->pairs);
        continue;
      }
      for (int d = 0; d < hd; d++) {
        lm_kvw_store(a->kbase + region, lm_cpu_k_index(off, d, bs, s->dtype), k[d], s->dtype);
        lm_kvw_store(a->vbase + region, lm_cpu_v_index(off, d, hd, a->pairs), v[d], s->dtype);
      }
    }
  }
}

static void lm_cpu_kv_write(void *st, void *kv, const struct lm_kv_shape *shape, int layer,
                            const void *k, const void *v, const struct lm_batch *b) {
  size_t layer_bytes = lm_kv_layer_bytes(shape);
  struct lm_kvw_args a = {.kbase = (char *)kv + (size_t)layer * 2 * layer_bytes,
                          .vbase = (char *)kv + ((size_t)layer * 2 + 1) * layer_bytes,
                          .k = k,
                          .v = v,
                          .s = shape,
                          .slots = b->slot_mapping,
                          .by16 = ((struct lm_cpu *)st)->avx512 && shape->dtype != LM_DTYPE_F32 &&
                                  shape->head_dim % 16 == 0,
                          .pairs = lm_cpu_attn_amx(st, shape)};
  lm_cpu_rows(st, b->n_tokens, (int64_t)shape->n_kv_heads * shape->head_dim * 2, lm_kvw_rows, &a);
}

/* ---- swiglu ------------------------------------------------------------ */

struct lm_swiglu_args {
  float *out;             /* [rows, dim] */
  const float *gate, *up; /* [rows, dim] */
  int64_t dim;
  int avx512;
};

LM_AVX512_TARGET static void lm_swiglu_avx512(float *out, const float *g, const float *u,
                                              int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 gv = _mm512_loadu_ps(g + i);
    __m512 e = lm_exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
  }
  for (; i < n; i++)
    out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void lm_swiglu_rows(const void *argp, int64_t r0, int64_t r1) {
  const struct lm_swiglu_args *a = argp;
  size_t o = (size_t)r0 * a->dim, n = (size_t)(r1 - r0) * a->dim;
  if (a->avx512) {
    lm_swiglu_avx512(a->out + o, a->gate + o, a->up + o, (int64_t)n);
    return;
  }
  for (size_t i = o; i < o + n; i++)
    a->out[i] = a->gate[i] / (1.0f + expf(-a->gate[i])) * a->up[i];
}

static void lm_cpu_swiglu(void *st, void *out, const void *gate, const void *up, int rows,
                          int dim) {
  struct lm_cpu *cpu = st;
  struct lm_swiglu_args a = {.out = out, .gate = gate, .up = up, .dim = dim, .avx512 = cpu->avx512};
  lm_cpu_rows(cpu, rows, dim, lm_swiglu_rows, &a);
}

/* ---- sample ------------------------------------------------------------ */

struct lm_sample_job {
  const float *logits; /* [n, vocab] */
  int vocab;
  const struct lm_sample_row *rows;
  struct lm_sample_result *out;
  float *scratch; /* [n_threads, LM_SAMPLER_SCRATCH_FLOATS(vocab)] */
};

static void lm_sample_item(void *argp, int64_t i, int tid) {
  const struct lm_sample_job *j = argp;
  j->out[i] = lm_sampler_sample(j->logits + (size_t)i * j->vocab, j->vocab, &j->rows[i],
                                j->scratch + (size_t)tid * LM_SAMPLER_SCRATCH_FLOATS(j->vocab));
}

static int lm_cpu_sample(void *st, const void *logits, int n, int vocab,
                         const struct lm_sample_row *rows, struct lm_sample_result *out,
                         char *err) {
  struct lm_cpu *cpu = st;
  struct lm_sample_job j = {.logits = logits, .vocab = vocab, .rows = rows, .out = out};
  size_t want = (size_t)cpu->n_threads * LM_SAMPLER_SCRATCH_FLOATS(vocab) * sizeof(float);
  if (n <= 0) return LM_OK;
  if (vocab <= 0) return lm_errf(err, LM_EINVAL, "sample: vocab %d", vocab);
  if (lm_cpu_grow((void **)&cpu->sample_scratch, &cpu->sample_scratch_bytes, want) != 0)
    return lm_errf(err, LM_ENOMEM, "sample: cannot allocate %zu bytes of scratch", want);
  j.scratch = cpu->sample_scratch;
  lm_pool_for(cpu->pool, n, lm_sample_item, &j);
  return LM_OK;
}

const struct lm_backend_ops lm_backend_cpu_ops = {
    .name = "cpu",
    .create = lm_cpu_create,
    .destroy = lm_cpu_destroy,
    .load_weights = lm_cpu_load_weights,
    .tensor_load = lm_cpu_tensor_load,
    .tensor_free = lm_cpu_tensor_free,
    .act_elem_bytes = sizeof(float),
    .kv_dtypes = (1u << LM_DTYPE_F32) | (1u << LM_DTYPE_BF16) | (1u << LM_DTYPE_F8E5M2),
    .batched_tokens = 512,
    .layer_chunks = 1,
    .act_alloc = lm_cpu_act_alloc,
    .act_free = lm_cpu_act_free,
    .act_read = lm_cpu_act_read,
    .act_write = lm_cpu_act_write,
    /* activations are f32 already */
    .f32_alloc = lm_cpu_act_alloc,
    .f32_read = lm_cpu_act_read,
    .f32_write = lm_cpu_act_write,
    .kv_create = lm_cpu_kv_create,
    .kv_free = lm_cpu_kv_free,
    .embed = lm_cpu_embed,
    .rmsnorm = lm_cpu_rmsnorm,
    .add_rmsnorm = lm_cpu_add_rmsnorm,
    .matmul = lm_cpu_matmul,
    .matmul_n = lm_cpu_matmul_n,
    .logits = lm_cpu_logits,
    .rope = lm_cpu_rope,
    .kv_write = lm_cpu_kv_write,
    .attention = lm_cpu_attention,
    .swiglu = lm_cpu_swiglu,
    .gather_rows = lm_cpu_gather_rows,
    .sample = lm_cpu_sample,
};
