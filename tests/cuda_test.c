/* cuda_test.c - the CUDA backend against the CPU backend. Side A is the
 * CPU (f32 activations), side B the GPU (bf16 activations and KV, f32
 * logits). Every op runs on the same inputs on both sides and side B's
 * output is compared with side A's by normalized error ||a - b|| / ||a||
 * against a threshold written beside each check (bf16 rounding of the
 * inputs is part of the expected error); the sampler runs on the same f32
 * logits; whole fixture models run through the runner prompt by prompt and
 * then token by token; side B alone must keep the batch-invariance promise
 * of backend.h bit for bit, op by op and through the engine.
 *
 * Without a GPU the same harness runs with the CPU on both sides, where
 * every error must be exactly 0 and every invariance hold (a check of the
 * harness itself), then says the CUDA backend was skipped. With
 * LMSERVE_REQUIRE_GPU=1 a missing GPU is a failure instead.
 *
 * usage: cuda_test [--gemm cublaslt|mma] [--ops-only | --attention-only] FIXTURES_DIR
 *   (--gemm: the CUDA backend's GEMMs, backend.h; default cublaslt)
 *   (models from tools/make_model.py --all) */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/lm.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/sampler.h"
#include "kernels/cuda_device.cuh"
#include "kernels/gemm_mma.cuh"
#include "tests/check.h"

/* Thresholds on ||a - b|| / ||a||. bf16 keeps 8 significant bits: one
 * rounding of a vector costs about 1e-3, an op rounds its inputs and its
 * output, attention rounds q, K, V, the probabilities and the output, and
 * a whole model compounds every layer's roundings. */
#define TOL_ELEM    1e-2
#define TOL_MATMUL  1e-2
#define TOL_ATTN    2e-2
#define TOL_MODEL   3e-2
#define TOL_LOGPROB 1e-4 /* absolute, on f32 logits both sides read exactly */
/* Two logits closer than this may swap order under bf16 activations; a
 * row whose measured error e moves each logit by about e * rms(row) widens
 * it to a few of those (near_tie). */
#define NEAR_TIE 0.05f

/* ---- the two sides ----------------------------------------------------- */

struct side {
  const char *label;   /* "A" or "B" */
  const char *backend; /* lm_backend_create name */
  lm_backend *be;      /* for the op and sampler checks (no model loaded) */
};

static struct side g_side[2] = {{"A", "cpu", NULL}, {"B", "cuda", NULL}};
/* No GPU: both sides are the CPU and every comparison must be exact. */
static int g_self_check;
/* the backends' lm_backend_config.gemm (--gemm) */
static const char *g_gemm;

static double tol(double t) {
  return g_self_check ? 0.0 : t;
}

/* ---- inputs ------------------------------------------------------------ */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *randv(size_t n, float scale) {
  float *x = malloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++)
    x[i] = frand() * scale;
  return x;
}

/* A host result, NaN until a side fills it, so a side that failed to
 * produce it fails the comparison. */
static float *nanv(size_t n) {
  float *x = malloc((n ? n : 1) * sizeof(float));
  for (size_t i = 0; i < n; i++)
    x[i] = NAN;
  return x;
}

static double nerr(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)a[i] * a[i];
  }
  return sqrt(den > 0 ? num / den : num);
}

/* One comparison line: side B's n values against side A's. NaN fails. */
LM_PRINTF(5, 6)
static int compare(const float *a, const float *b, size_t n, double limit, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof(name), fmt, ap);
  va_end(ap);
  double e = nerr(a, b, n), lim = tol(limit);
  return lm_check(e <= lim, "%s: nerr=%.2e (<= %.0e)", name, e, lim);
}

/* Bit equality of floats (NaN equals a NaN with the same bits). */
static int same_bits(const float *a, const float *b, size_t n) {
  return memcmp(a, b, n * sizeof(float)) == 0;
}

/* ---- buffers on a side ------------------------------------------------- */

enum { MAX_BUFS = 16 };

/* The buffers one check allocates on one side, freed together. */
struct bufs {
  struct side *s;
  void *p[MAX_BUFS];
  int n, failed;
};

static void *buf_new(struct bufs *a, const float *host, size_t n, int f32) {
  const struct lm_backend_ops *ops = a->s->be->ops;
  void *st = a->s->be->st;
  void *p = a->n < MAX_BUFS ? (f32 ? ops->f32_alloc : ops->act_alloc)(st, n ? n : 1) : NULL;
  if (!p) {
    a->failed = 1;
    return NULL;
  }
  a->p[a->n++] = p;
  if (host && (f32 ? ops->f32_write : ops->act_write)(st, p, host, n) != LM_OK) a->failed = 1;
  return p;
}

/* An activation buffer of n elements, holding host (rounded to the
 * side's type) unless host is NULL. */
static void *buf_act(struct bufs *a, const float *host, size_t n) {
  return buf_new(a, host, n, 0);
}

static void *buf_f32(struct bufs *a, const float *host, size_t n) {
  return buf_new(a, host, n, 1);
}

static int bufs_ok(struct bufs *a, const char *what) {
  if (a->failed) printf("# %s: side %s cannot allocate or write its buffers\n", what, a->s->label);
  return !a->failed;
}

static void bufs_free(struct bufs *a) {
  for (int i = 0; i < a->n; i++)
    a->s->be->ops->act_free(a->s->be->st, a->p[i]);
  a->n = 0;
}

/* Copies n values of buf (f32: an f32_alloc buffer) to host once the side's
 * queued ops are done. On failure says why and leaves host as it was. */
static int fetch(struct side *s, float *host, const void *buf, size_t n, int f32,
                 const char *what) {
  const struct lm_backend_ops *ops = s->be->ops;
  char err[LM_ERR_LEN] = "";
  int rc = ops->sync ? ops->sync(s->be->st, err) : LM_OK;
  if (rc == LM_OK) rc = (f32 ? ops->f32_read : ops->act_read)(s->be->st, host, buf, n);
  if (rc != LM_OK)
    printf("# %s: side %s failed (%d): %s\n", what, s->label, rc, err[0] ? err : "read failed");
  return rc;
}

/* begin_step for ops that read the batch, where the side has it. */
static int begin(struct side *s, const struct lm_batch *b, const char *what) {
  char err[LM_ERR_LEN] = "";
  const struct lm_backend_ops *ops = s->be->ops;
  if (!ops->begin_step || ops->begin_step(s->be->st, b, err) == LM_OK) return 0;
  printf("# %s: side %s begin_step: %s\n", what, s->label, err);
  return -1;
}

/* ---- weights ----------------------------------------------------------- */

/* A synthetic weight: the same stored bytes for both sides, each side with
 * its own lm_tensor (tensor_load sets that side's dev). */
struct wt {
  struct lm_tensor t[2];
  void *data;
  int loaded[2];
};

/* vals: [rows, cols] (cols 0: a vector of rows) stored in dt. */
static int wt_make(struct wt *w, enum lm_dtype dt, const float *vals, int64_t rows, int64_t cols) {
  size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
  char err[LM_ERR_LEN] = "";
  memset(w, 0, sizeof(*w));
  w->data = malloc(n * lm_dtype_size(dt));
  for (size_t i = 0; i < n; i++) {
    if (dt == LM_DTYPE_BF16)
      ((uint16_t *)w->data)[i] = lm_f32_to_bf16(vals[i]);
    else if (dt == LM_DTYPE_F16)
      ((uint16_t *)w->data)[i] = lm_f32_to_f16(vals[i]);
    else
      ((float *)w->data)[i] = vals[i];
  }
  for (int i = 0; i < 2; i++) {
    const struct lm_backend_ops *ops = g_side[i].be->ops;
    w->t[i] = (struct lm_tensor){
        .data = w->data, .dtype = dt, .n_dims = cols ? 2 : 1, .shape = {rows, cols}};
    if (!ops->tensor_load) continue;
    if (ops->tensor_load(g_side[i].be->st, &w->t[i], err) != LM_OK) {
      lm_check(0, "tensor_load %s [%lld, %lld] on side %s: %s", lm_dtype_name(dt), (long long)rows,
               (long long)cols, g_side[i].label, err);
      return -1;
    }
    w->loaded[i] = 1;
  }
  return 0;
}

static void wt_free(struct wt *w) {
  for (int i = 0; i < 2; i++)
    if (w->loaded[i]) g_side[i].be->ops->tensor_free(g_side[i].be->st, &w->t[i]);
  free(w->data);
  memset(w, 0, sizeof(*w));
}

static const enum lm_dtype k_dtypes[3] = {LM_DTYPE_BF16, LM_DTYPE_F16, LM_DTYPE_F32};

/* ---- batches ----------------------------------------------------------- */

enum { ATTN_BS = 16 }; /* tokens per KV block in every batch here */

/* A step's batch description in host memory. */
struct step {
  struct lm_batch b;
  int32_t *tok, *pos, *slot, *qs, *ctx, *tables, *lrows;
  float *k, *v; /* [T, n_kv_heads, head_dim] this step's keys and values */
};

static void step_free(struct step *o) {
  free(o->tok);
  free(o->pos);
  free(o->slot);
  free(o->qs);
  free(o->ctx);
  free(o->tables);
  free(o->lrows);
  free(o->k);
  free(o->v);
  memset(o, 0, sizeof(*o));
}

/* o->b from o's arrays. */
static void step_describe(struct step *o, int t_n, int n_seqs, int max_blocks, int n_logits) {
  o->b = (struct lm_batch){.n_tokens = t_n,
                           .n_seqs = n_seqs,
                           .token_ids = o->tok,
                           .positions = o->pos,
                           .slot_mapping = o->slot,
                           .q_start = o->qs,
                           .ctx_len = o->ctx,
                           .block_tables = o->tables,
                           .max_blocks = max_blocks,
                           .logit_rows = o->lrows,
                           .n_logits = n_logits};
}

/* T decodes, token t at position pos[t] (NULL: t), for the ops that read
 * only ids, positions or logit rows: every field valid, no KV involved
 * (every block table entry is block 0). */
static void step_simple(struct step *o, int t_n, const int32_t *ids, const int32_t *pos,
                        const int32_t *lrows, int n_logits) {
  int max_blocks = 1;
  memset(o, 0, sizeof(*o));
  o->tok = calloc((size_t)t_n, sizeof(int32_t));
  o->pos = calloc((size_t)t_n, sizeof(int32_t));
  o->slot = calloc((size_t)t_n, sizeof(int32_t));
  o->qs = calloc((size_t)t_n + 1, sizeof(int32_t));
  o->ctx = calloc((size_t)t_n, sizeof(int32_t));
  o->lrows = calloc((size_t)n_logits + 1, sizeof(int32_t));
  for (int t = 0; t < t_n; t++) {
    o->tok[t] = ids ? ids[t] : 0;
    o->pos[t] = pos ? pos[t] : t;
    o->slot[t] = o->pos[t] % ATTN_BS;
    o->qs[t + 1] = t + 1;
    o->ctx[t] = o->pos[t] + 1;
    if (o->ctx[t] > max_blocks * ATTN_BS) max_blocks = (o->ctx[t] + ATTN_BS - 1) / ATTN_BS;
  }
  o->tables = calloc((size_t)t_n * max_blocks, sizeof(int32_t));
  if (lrows) memcpy(o->lrows, lrows, (size_t)n_logits * sizeof(int32_t));
  step_describe(o, t_n, t_n, max_blocks, n_logits);
}

/* ---- embed, norms, swiglu, gather -------------------------------------- */

static void test_embed(void) {
  enum { VOCAB = 50, HIDDEN = 96, T = 5 };
  int32_t ids[T] = {3, 49, 0, 3, 17};
  for (int d = 0; d < 3; d++) {
    float *tv = randv((size_t)VOCAB * HIDDEN, 1.0f), *out[2];
    struct wt w;
    struct step st;
    if (wt_make(&w, k_dtypes[d], tv, VOCAB, HIDDEN) != 0) {
      wt_free(&w);
      free(tv);
      continue;
    }
    step_simple(&st, T, ids, NULL, NULL, 0);
    for (int i = 0; i < 2; i++) {
      struct side *s = &g_side[i];
      struct bufs a = {.s = s};
      void *x = buf_act(&a, NULL, (size_t)T * HIDDEN);
      out[i] = nanv((size_t)T * HIDDEN);
      if (bufs_ok(&a, "embed") && begin(s, &st.b, "embed") == 0) {
        s->be->ops->embed(s->be->st, x, &w.t[i], &st.b);
        fetch(s, out[i], x, (size_t)T * HIDDEN, 0, "embed");
      }
      bufs_free(&a);
    }
    compare(out[0], out[1], (size_t)T * HIDDEN, TOL_ELEM, "embed %s table [%d, %d], %d ids",
            lm_dtype_name(k_dtypes[d]), VOCAB, HIDDEN, T);
    free(out[0]);
    free(out[1]);
    step_free(&st);
    wt_free(&w);
    free(tv);
  }
}

static void test_norms(void) {
  /* hidden sizes, and head_dim rows as q_norm / k_norm see them */
  static const int dims[][2] = {{64, 5}, {1024, 3}, {4096, 2}, {32, 28}, {128, 24}};
  const float eps = 1e-6f;
  for (int d = 0; d < 3; d++)
    for (size_t di = 0; di < sizeof(dims) / sizeof(dims[0]); di++) {
      int dim = dims[di][0], rows = dims[di][1];
      size_t n = (size_t)rows * dim;
      float *wv = randv((size_t)dim, 1.0f), *x = randv(n, 3.0f), *delta = randv(n, 1.0f);
      float *out[2], *out2[2], *res[2];
      struct wt w;
      if (wt_make(&w, k_dtypes[d], wv, dim, 0) != 0) {
        wt_free(&w);
        free(wv), free(x), free(delta);
        continue;
      }
      for (int i = 0; i < 2; i++) {
        struct side *s = &g_side[i];
        struct bufs a = {.s = s};
        void *xb = buf_act(&a, x, n), *ob = buf_act(&a, NULL, n), *rb = buf_act(&a, x, n);
        void *db = buf_act(&a, delta, n), *o2 = buf_act(&a, NULL, n);
        out[i] = nanv(n), out2[i] = nanv(n), res[i] = nanv(n);
        if (bufs_ok(&a, "rmsnorm")) {
          s->be->ops->rmsnorm(s->be->st, ob, xb, &w.t[i], rows, dim, eps);
          s->be->ops->add_rmsnorm(s->be->st, o2, rb, db, &w.t[i], rows, dim, eps);
          if (fetch(s, out[i], ob, n, 0, "rmsnorm") == LM_OK &&
              fetch(s, out2[i], o2, n, 0, "add_rmsnorm") == LM_OK)
            fetch(s, res[i], rb, n, 0, "add_rmsnorm residual");
        }
        bufs_free(&a);
      }
      const char *dt = lm_dtype_name(k_dtypes[d]);
      compare(out[0], out[1], n, TOL_ELEM, "rmsnorm %s weight, %d rows of %d", dt, rows, dim);
      compare(out2[0], out2[1], n, TOL_ELEM, "add_rmsnorm %s weight, %d rows of %d: out", dt, rows,
              dim);
      compare(res[0], res[1], n, TOL_ELEM, "add_rmsnorm %s weight, %d rows of %d: residual", dt,
              rows, dim);
      for (int i = 0; i < 2; i++)
        free(out[i]), free(out2[i]), free(res[i]);
      wt_free(&w);
      free(wv), free(x), free(delta);
    }
}

static void test_swiglu_gather(void) {
  static const int shapes[][2] = {{7, 320}, {1, 160}, {64, 96}};
  for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
    int rows = shapes[si][0], dim = shapes[si][1];
    size_t n = (size_t)rows * dim;
    float *g = randv(n, 8.0f), *u = randv(n, 2.0f), *out[2];
    for (int i = 0; i < 2; i++) {
      struct side *s = &g_side[i];
      struct bufs a = {.s = s};
      void *gb = buf_act(&a, g, n), *ub = buf_act(&a, u, n), *ob = buf_act(&a, NULL, n);
      out[i] = nanv(n);
      if (bufs_ok(&a, "swiglu")) {
        s->be->ops->swiglu(s->be->st, ob, gb, ub, rows, dim);
        fetch(s, out[i], ob, n, 0, "swiglu");
      }
      bufs_free(&a);
    }
    compare(out[0], out[1], n, TOL_ELEM, "swiglu %d rows of %d", rows, dim);
    free(out[0]), free(out[1]), free(g), free(u);
  }

  /* the rows whose logits are wanted, repeats included, after the batch
   * that names them is begun: passed as the batch's own logit_rows (as
   * the runner does; a backend may use the copy it took at begin_step),
   * then as another array holding the same ids */
  enum { T = 7, DIM = 96, N = 4 };
  int32_t idx[N] = {6, 0, 3, 6};
  float *x = randv((size_t)T * DIM, 2.0f), *out[2];
  struct step st;
  step_simple(&st, T, NULL, NULL, idx, N);
  for (int other = 0; other < 2; other++) {
    for (int i = 0; i < 2; i++) {
      struct side *s = &g_side[i];
      struct bufs a = {.s = s};
      void *xb = buf_act(&a, x, (size_t)T * DIM), *ob = buf_act(&a, NULL, (size_t)N * DIM);
      out[i] = nanv((size_t)N * DIM);
      if (bufs_ok(&a, "gather_rows") && begin(s, &st.b, "gather_rows") == 0) {
        s->be->ops->gather_rows(s->be->st, ob, xb, other ? idx : st.b.logit_rows, N, DIM);
        fetch(s, out[i], ob, (size_t)N * DIM, 0, "gather_rows");
      }
      bufs_free(&a);
    }
    compare(out[0], out[1], (size_t)N * DIM, TOL_ELEM,
            "gather_rows {6, 0, 3, 6} of %d rows of %d, ids given as %s", T, DIM,
            other ? "another array" : "the batch's logit_rows");
    free(out[0]), free(out[1]);
  }
  free(x);
  step_free(&st);
}

/* ---- matmul, matmul_n, logits ------------------------------------------ */

static void test_matmul(void) {
  enum { N = 192, K = 160, MMAX = 64 };
  static const int ms[] = {1, 7, MMAX};
  static const int alone_rows[] = {0, 31, MMAX - 1};
  for (int d = 0; d < 3; d++) {
    enum lm_dtype dt = k_dtypes[d];
    float *wv = randv((size_t)N * K, 0.5f), *bv = randv(N, 1.0f), *x = randv((size_t)MMAX * K, 1);
    float *y[2][3][2]; /* [side][m][bias] */
    int invariant = 0;
    struct wt w, b;
    memset(&b, 0, sizeof(b)); /* wt_free'd even when making w fails */
    int ok = wt_make(&w, dt, wv, N, K) == 0 && wt_make(&b, dt, bv, N, 0) == 0;
    for (int i = 0; ok && i < 2; i++) {
      struct side *s = &g_side[i];
      const struct lm_backend_ops *ops = s->be->ops;
      struct bufs a = {.s = s};
      void *xb = buf_act(&a, x, (size_t)MMAX * K), *yb[3][2];
      for (int m = 0; m < 3; m++)
        for (int bi = 0; bi < 2; bi++) {
          yb[m][bi] = buf_act(&a, NULL, (size_t)ms[m] * N);
          y[i][m][bi] = nanv((size_t)ms[m] * N);
        }
      if (!bufs_ok(&a, "matmul")) {
        bufs_free(&a);
        continue;
      }
      for (int m = 0; m < 3; m++)
        for (int bi = 0; bi < 2; bi++)
          ops->matmul(s->be->st, yb[m][bi], xb, &w.t[i], bi ? &b.t[i] : NULL, ms[m]);
      for (int m = 0; m < 3; m++)
        for (int bi = 0; bi < 2; bi++)
          fetch(s, y[i][m][bi], yb[m][bi], (size_t)ms[m] * N, 0, "matmul");
      bufs_free(&a);
      if (i == 1) {
        /* side B: a row's result depends on that row alone, not on M */
        invariant = same_bits(y[1][1][1], y[1][2][1], (size_t)ms[1] * N);
        for (size_t r = 0; r < sizeof(alone_rows) / sizeof(alone_rows[0]); r++) {
          struct bufs a1 = {.s = s};
          int row = alone_rows[r];
          void *x1 = buf_act(&a1, x + (size_t)row * K, K), *y1 = buf_act(&a1, NULL, N);
          float *h = nanv(N);
          if (bufs_ok(&a1, "matmul M=1")) {
            ops->matmul(s->be->st, y1, x1, &w.t[i], &b.t[i], 1);
            fetch(s, h, y1, N, 0, "matmul M=1");
          }
          invariant &= same_bits(h, y[1][2][1] + (size_t)row * N, N);
          free(h);
          bufs_free(&a1);
        }
      }
    }
    for (int m = 0; ok && m < 3; m++)
      for (int bi = 0; bi < 2; bi++)
        compare(y[0][m][bi], y[1][m][bi], (size_t)ms[m] * N, TOL_MATMUL,
                "matmul %s weight [%d, %d], M=%d, %s", lm_dtype_name(dt), N, K, ms[m],
                bi ? "bias" : "no bias");
    if (ok)
      lm_check(invariant, "side B matmul %s: rows alone (M=1) and in M=7 bit-equal them in M=%d",
               lm_dtype_name(dt), MMAX);
    for (int i = 0; ok && i < 2; i++)
      for (int m = 0; m < 3; m++)
        for (int bi = 0; bi < 2; bi++)
          free(y[i][m][bi]);
    wt_free(&w);
    wt_free(&b);
    free(wv), free(bv), free(x);
  }
}

/* The own GEMM kernel directly (GPU only): each shape's rows keep their
 * bits at every M (every tile shape), in both modes, alone and in a batch,
 * and are within f32 summation error of a float64 sum of the same bf16
 * inputs; rows past M are never written. The shapes have several K
 * splits (one of them empty), a K that is not a multiple of the 32-wide
 * chunk, and N not a multiple of the 8-column group, odd in both output
 * types. */
static void test_gemm_mma(void) {
  static const struct {
    int N, K, out_f32;
  } shapes[] = {{200, 1064, 1}, {136, 608, 0}, {77, 96, 1}, {75, 200, 0}, {1030, 4104, 0}};
  static const int ms[] = {1, 3, 16, 17, 40, 64, 65, 300};
  enum { NM = sizeof(ms) / sizeof(ms[0]), MMAX = 300 };
  char err[LM_ERR_LEN];
  if (g_self_check) return;
  for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
    err[0] = 0;
    const int N = shapes[si].N, K = shapes[si].K, f32 = shapes[si].out_f32, out = f32 ? 4 : 2;
    const int splits = lm_gemm_mma_splits(N, K);
    size_t ws_bytes = (size_t)16 * MMAX * N * 4, ybytes = (size_t)MMAX * N * out;
    uint16_t *hx = malloc((size_t)MMAX * K * 2), *hw = malloc((size_t)N * K * 2);
    unsigned char *ref = malloc(ybytes), *got = malloc(ybytes), *poison = malloc(ybytes);
    void *stream = NULL;
    uint16_t *dx = lm_cuda_malloc((size_t)MMAX * K * 2), *dw = lm_cuda_malloc((size_t)N * K * 2);
    void *dy = lm_cuda_malloc(ybytes);
    float *ws = lm_cuda_malloc(ws_bytes);
    int ok = hx && hw && ref && got && poison && dx && dw && dy && ws &&
             lm_cuda_stream_create(&stream, err, sizeof(err)) == 0;
    if (poison) memset(poison, 0xff, ybytes);
    for (size_t i = 0; ok && i < (size_t)MMAX * K; i++)
      hx[i] = lm_f32_to_bf16(frand());
    for (size_t i = 0; ok && i < (size_t)N * K; i++)
      hw[i] = lm_f32_to_bf16(frand() * 0.25f);
    ok = ok && lm_cuda_h2d(dx, hx, (size_t)MMAX * K * 2, stream, err, sizeof(err)) == 0 &&
         lm_cuda_h2d(dw, hw, (size_t)N * K * 2, stream, err, sizeof(err)) == 0;
    /* the reference: M = MMAX in the registers mode */
    ok = ok &&
         lm_gemm_mma_run(dy, dx, dw, MMAX, N, K, f32, LM_GEMM_MMA_REGISTERS, ws, ws_bytes, stream,
                         err, sizeof(err)) == 0 &&
         lm_cuda_d2h(ref, dy, ybytes, stream, err, sizeof(err)) == 0 &&
         lm_cuda_sync(stream, err, sizeof(err)) == 0;
    if (!lm_check(ok, "gemm_mma N=%d K=%d: set-up and first run%s%s", N, K, err[0] ? ": " : "",
                  err))
      goto done;
    double e2 = 0, r2 = 0;
    for (int m = 0; m < MMAX; m++)
      for (int n = 0; n < N; n++) {
        double sum = 0;
        for (int k = 0; k < K; k++)
          sum +=
              (double)lm_bf16_to_f32(hx[(size_t)m * K + k]) * lm_bf16_to_f32(hw[(size_t)n * K + k]);
        size_t i = (size_t)m * N + n;
        double v = f32 ? ((float *)ref)[i] : lm_bf16_to_f32(((uint16_t *)ref)[i]);
        e2 += (v - sum) * (v - sum);
        r2 += sum * sum;
      }
    double e = sqrt(e2 / (r2 > 0 ? r2 : 1));
    lm_check(e <= (f32 ? 1e-4 : 5e-3),
             "gemm_mma N=%d K=%d (%d splits, %s output) vs a float64 sum: nerr=%.2e", N, K, splits,
             f32 ? "f32" : "bf16", e);
    int same = 1, runs = 0;
    for (int mode = LM_GEMM_MMA_REGISTERS; mode <= LM_GEMM_MMA_PARTIALS; mode++)
      for (int j = 0; j < NM && ok; j++) {
        /* the last rows of a batch of ms[j] rows starting at row MMAX - ms[j] */
        int M = ms[j], r0 = MMAX - M;
        size_t rows = (size_t)M * N * out;
        ok = lm_cuda_memset(dy, 0xff, ybytes, stream, err, sizeof(err)) == 0 &&
             lm_gemm_mma_run(dy, dx + (size_t)r0 * K, dw, M, N, K, f32, mode, ws, ws_bytes, stream,
                             err, sizeof(err)) == 0 &&
             lm_cuda_d2h(got, dy, ybytes, stream, err, sizeof(err)) == 0 &&
             lm_cuda_sync(stream, err, sizeof(err)) == 0;
        same &= ok && !memcmp(got, ref + (size_t)r0 * N * out, rows) &&
                !memcmp(got + rows, poison, ybytes - rows);
        runs += ok;
      }
    lm_check(
        ok && same,
        "gemm_mma N=%d K=%d (%d splits): rows bit-equal at M = 1..%d, both modes, none written "
        "past M (%d runs)%s%s",
        N, K, splits, MMAX, runs, err[0] ? ": " : "", err);
  done:
    lm_cuda_free(dx), lm_cuda_free(dw), lm_cuda_free(dy), lm_cuda_free(ws);
    if (stream) lm_cuda_stream_destroy(stream);
    free(hx), free(hw), free(ref), free(got), free(poison);
  }
}

/* ys[i] = x @ ws[i]^T + biases[i]: the side's matmul_n where it has one,
 * else n matmuls (what the runner does). */
static void side_matmul_n(struct side *s, void *const *ys, const void *x,
                          const struct lm_tensor *const *ws, const struct lm_tensor *const *biases,
                          int n, int rows) {
  const struct lm_backend_ops *ops = s->be->ops;
  if (ops->matmul_n) {
    ops->matmul_n(s->be->st, ys, x, ws, biases, n, rows);
    return;
  }
  for (int i = 0; i < n; i++)
    ops->matmul(s->be->st, ys[i], x, ws[i], biases[i], rows);
}

static void test_matmul_n(void) {
  enum { K = 64, MMAX = 64 };
  /* QKV with biases (qwen2), then gate and up without. Loaded one by one,
   * these weights need not sit side by side on a backend, which may then
   * run them one GEMM each; test_model_matmul_n covers the fused GEMM. */
  static const struct {
    int n, widths[3], bias;
  } groups[] = {{3, {128, 64, 64}, 1}, {2, {160, 160, 0}, 0}};
  static const int ms[] = {1, 7, MMAX};
  const char *how = g_side[1].be->ops->matmul_n ? "matmul_n op" : "no matmul_n: matmul per weight";
  float *x = randv((size_t)MMAX * K, 1.0f);
  for (size_t gi = 0; gi < sizeof(groups) / sizeof(groups[0]); gi++) {
    int n = groups[gi].n, total = 0, ok = 1;
    struct wt w[3], b[3];
    float *wv[3], *bv[3];
    memset(w, 0, sizeof(w));
    memset(b, 0, sizeof(b));
    for (int j = 0; j < n; j++) {
      total += groups[gi].widths[j];
      wv[j] = randv((size_t)groups[gi].widths[j] * K, 0.5f);
      bv[j] = randv((size_t)groups[gi].widths[j], 1.0f);
      ok = ok && wt_make(&w[j], LM_DTYPE_BF16, wv[j], groups[gi].widths[j], K) == 0 &&
           wt_make(&b[j], LM_DTYPE_BF16, bv[j], groups[gi].widths[j], 0) == 0;
    }
    for (int mi = 0; ok && mi < 3; mi++) {
      int m = ms[mi];
      float *out[2];
      for (int i = 0; i < 2; i++) {
        struct side *s = &g_side[i];
        struct bufs a = {.s = s};
        void *xb = buf_act(&a, x, (size_t)m * K), *ys[3] = {NULL, NULL, NULL};
        const struct lm_tensor *ws[3], *bs[3];
        for (int j = 0; j < n; j++) {
          ys[j] = buf_act(&a, NULL, (size_t)m * groups[gi].widths[j]);
          ws[j] = &w[j].t[i];
          bs[j] = groups[gi].bias ? &b[j].t[i] : NULL;
        }
        out[i] = nanv((size_t)m * total);
        if (bufs_ok(&a, "matmul_n")) {
          side_matmul_n(s, ys, xb, ws, bs, n, m);
          for (int j = 0, off = 0; j < n; off += m * groups[gi].widths[j], j++)
            if (fetch(s, out[i] + off, ys[j], (size_t)m * groups[gi].widths[j], 0, "matmul_n"))
              break;
        }
        bufs_free(&a);
      }
      compare(out[0], out[1], (size_t)m * total, TOL_MATMUL,
              "matmul_n %d bf16 weights of %d rows in all, K=%d, %s, M=%d (side B: %s)", n, total,
              K, groups[gi].bias ? "biases" : "no bias", m, how);
      free(out[0]), free(out[1]);
    }
    for (int j = 0; j < n; j++) {
      wt_free(&w[j]);
      wt_free(&b[j]);
      free(wv[j]), free(bv[j]);
    }
  }
  free(x);
}

static void test_logits(void) {
  enum { VOCAB = 1000, HIDDEN = 64, ROWS = 3 };
  for (int d = 0; d < 3; d++) {
    float *wv = randv((size_t)VOCAB * HIDDEN, 0.5f), *x = randv((size_t)ROWS * HIDDEN, 2.0f);
    float *out[2];
    struct wt w;
    if (wt_make(&w, k_dtypes[d], wv, VOCAB, HIDDEN) != 0) {
      wt_free(&w);
      free(wv), free(x);
      continue;
    }
    for (int i = 0; i < 2; i++) {
      struct side *s = &g_side[i];
      struct bufs a = {.s = s};
      void *xb = buf_act(&a, x, (size_t)ROWS * HIDDEN), *lb = buf_f32(&a, NULL, ROWS * VOCAB);
      out[i] = nanv((size_t)ROWS * VOCAB);
      if (bufs_ok(&a, "logits")) {
        s->be->ops->logits(s->be->st, lb, xb, &w.t[i], ROWS);
        fetch(s, out[i], lb, (size_t)ROWS * VOCAB, 1, "logits");
      }
      bufs_free(&a);
    }
    compare(out[0], out[1], (size_t)ROWS * VOCAB, TOL_MATMUL,
            "logits %s lm_head [%d, %d], %d rows, f32 out", lm_dtype_name(k_dtypes[d]), VOCAB,
            HIDDEN, ROWS);
    free(out[0]), free(out[1]);
    wt_free(&w);
    free(wv), free(x);
  }
}

/* ---- rope -------------------------------------------------------------- */

static void test_rope(void) {
  /* one table per head_dim, alive for the whole test: a backend may keep
   * its copy of a table keyed by where it lives */
  static float inv64[32], inv128[64];
  static const int32_t pos[6] = {0, 1, 17, 255, 1000, 4095};
  enum { T = 6, NH = 4, NKV = 2 };
  for (int hi = 0; hi < 2; hi++) {
    int hd = hi ? 128 : 64;
    float *inv = hi ? inv128 : inv64;
    for (int i = 0; i < hd / 2; i++)
      inv[i] = (float)pow(1000000.0, -2.0 * i / hd);
    struct lm_rope rope = {.head_dim = hd, .inv_freq = inv};
    size_t nq = (size_t)T * NH * hd, nk = (size_t)T * NKV * hd;
    float *q = randv(nq, 1.0f), *k = randv(nk, 1.0f), *oq[2], *ok[2];
    struct step st;
    step_simple(&st, T, NULL, pos, NULL, 0);
    for (int i = 0; i < 2; i++) {
      struct side *s = &g_side[i];
      struct bufs a = {.s = s};
      void *qb = buf_act(&a, q, nq), *kb = buf_act(&a, k, nk);
      oq[i] = nanv(nq), ok[i] = nanv(nk);
      if (bufs_ok(&a, "rope") && begin(s, &st.b, "rope") == 0) {
        s->be->ops->rope(s->be->st, qb, kb, &st.b, &rope, NH, NKV);
        if (fetch(s, oq[i], qb, nq, 0, "rope q") == LM_OK) fetch(s, ok[i], kb, nk, 0, "rope k");
      }
      bufs_free(&a);
    }
    compare(oq[0], oq[1], nq, TOL_ELEM, "rope head_dim=%d q (positions 0..4095)", hd);
    compare(ok[0], ok[1], nk, TOL_ELEM, "rope head_dim=%d k (positions 0..4095)", hd);
    for (int i = 0; i < 2; i++)
      free(oq[i]), free(ok[i]);
    free(q), free(k);
    step_free(&st);
  }
}

/* ---- kv_write + attention ---------------------------------------------- */

struct attn_seq {
  int before, n_new; /* tokens cached by earlier steps, tokens in this step */
};

struct attn_case {
  int head_dim, n_kv_heads, group, n_seqs;
  struct attn_seq seqs[4];
  const char *what;
};

/* A sequence's keys and values by position, and its block table. */
struct hist {
  int before, n_new;
  int32_t *blocks; /* [max_blocks] */
  float *k, *v;    /* [before + n_new, n_kv_heads, head_dim] */
};

/* The batch of sequences which[0..n): their cached prefixes (prefix = 1,
 * the earlier steps) or this step's tokens. */
static void step_attn(struct step *o, const struct hist *h, const int *which, int n, int prefix,
                      int kv_width, int max_blocks) {
  int t_n = 0, t = 0;
  for (int i = 0; i < n; i++)
    t_n += prefix ? h[which[i]].before : h[which[i]].n_new;
  memset(o, 0, sizeof(*o));
  o->tok = calloc((size_t)t_n + 1, sizeof(int32_t));
  o->pos = calloc((size_t)t_n + 1, sizeof(int32_t));
  o->slot = calloc((size_t)t_n + 1, sizeof(int32_t));
  o->qs = calloc((size_t)n + 1, sizeof(int32_t));
  o->ctx = calloc((size_t)n, sizeof(int32_t));
  o->tables = calloc((size_t)n * max_blocks, sizeof(int32_t));
  o->lrows = calloc(1, sizeof(int32_t));
  o->k = malloc(((size_t)t_n + 1) * kv_width * sizeof(float));
  o->v = malloc(((size_t)t_n + 1) * kv_width * sizeof(float));
  for (int i = 0; i < n; i++) {
    const struct hist *s = &h[which[i]];
    int p0 = prefix ? 0 : s->before, p1 = prefix ? s->before : s->before + s->n_new;
    o->qs[i] = t;
    o->ctx[i] = p1;
    memcpy(o->tables + (size_t)i * max_blocks, s->blocks, (size_t)max_blocks * sizeof(int32_t));
    for (int p = p0; p < p1; p++, t++) {
      o->pos[t] = p;
      o->slot[t] = s->blocks[p / ATTN_BS] * ATTN_BS + p % ATTN_BS;
      memcpy(o->k + (size_t)t * kv_width, s->k + (size_t)p * kv_width, kv_width * sizeof(float));
      memcpy(o->v + (size_t)t * kv_width, s->v + (size_t)p * kv_width, kv_width * sizeof(float));
    }
  }
  o->qs[n] = t;
  step_describe(o, t_n, n, max_blocks, 0);
}

/* Side s: the earlier steps' K/V written, then this step's, then attention
 * over the step into out (host [T, n_heads, head_dim]). On side B each
 * sequence is then run alone; *alone_same says whether its output bit-equals
 * its rows in the batch. */
static void attn_side(struct side *s, const struct attn_case *c, const struct hist *h,
                      const struct step *pre, const struct step *step, const float *q,
                      const struct lm_kv_shape *shape, int max_blocks, float *out,
                      int *alone_same) {
  const struct lm_backend_ops *ops = s->be->ops;
  int nh = c->n_kv_heads * c->group, hd = c->head_dim, layer = 1;
  int kv_width = c->n_kv_heads * hd, t_n = step->b.n_tokens;
  float scale = 1.0f / sqrtf((float)hd);
  char err[LM_ERR_LEN] = "";
  void *kv = NULL;
  struct bufs a = {.s = s};
  if (ops->kv_create(s->be->st, shape, &kv, err) != LM_OK) {
    printf("# attention %s: side %s kv_create: %s\n", c->what, s->label, err);
    return;
  }
  void *pk = buf_act(&a, pre->k, (size_t)pre->b.n_tokens * kv_width);
  void *pv = buf_act(&a, pre->v, (size_t)pre->b.n_tokens * kv_width);
  void *sk = buf_act(&a, step->k, (size_t)t_n * kv_width);
  void *sv = buf_act(&a, step->v, (size_t)t_n * kv_width);
  void *qb = buf_act(&a, q, (size_t)t_n * nh * hd), *ob = buf_act(&a, NULL, (size_t)t_n * nh * hd);
  if (!bufs_ok(&a, c->what)) goto done;
  if (pre->b.n_tokens > 0) {
    if (begin(s, &pre->b, c->what) != 0) goto done;
    ops->kv_write(s->be->st, kv, shape, layer, pk, pv, &pre->b);
  }
  if (begin(s, &step->b, c->what) != 0) goto done;
  ops->kv_write(s->be->st, kv, shape, layer, sk, sv, &step->b);
  ops->attention(s->be->st, ob, qb, kv, shape, layer, &step->b, nh, scale);
  if (fetch(s, out, ob, (size_t)t_n * nh * hd, 0, c->what) != LM_OK || !alone_same) goto done;
  *alone_same = 1;
  for (int si = 0; si < c->n_seqs; si++) {
    struct step one;
    struct bufs a1 = {.s = s};
    int which[1] = {si};
    step_attn(&one, h, which, 1, 0, kv_width, max_blocks);
    size_t off = (size_t)step->qs[si] * nh * hd, len = (size_t)one.b.n_tokens * nh * hd;
    void *q1 = buf_act(&a1, q + off, len), *o1 = buf_act(&a1, NULL, len);
    float *got = nanv(len);
    if (bufs_ok(&a1, c->what) && begin(s, &one.b, c->what) == 0) {
      ops->attention(s->be->st, o1, q1, kv, shape, layer, &one.b, nh, scale);
      fetch(s, got, o1, len, 0, c->what);
    }
    *alone_same &= same_bits(got, out + off, len);
    free(got);
    bufs_free(&a1);
    step_free(&one);
  }
done:
  bufs_free(&a);
  ops->kv_free(s->be->st, kv);
}

static void test_attention_case(const struct attn_case *c) {
  int hd = c->head_dim, n_kv = c->n_kv_heads, nh = n_kv * c->group, kv_width = n_kv * hd;
  int max_blocks = 0, n_blocks = 0, next = 0, all[4] = {0, 1, 2, 3};
  struct hist h[4];
  for (int s = 0; s < c->n_seqs; s++) {
    int nb = (c->seqs[s].before + c->seqs[s].n_new + ATTN_BS - 1) / ATTN_BS;
    max_blocks = nb > max_blocks ? nb : max_blocks;
    n_blocks += nb;
  }
  /* blocks handed out as i * 7 mod n_blocks, so tables are scattered */
  n_blocks += 3;
  while (n_blocks % 7 == 0)
    n_blocks++;
  for (int s = 0; s < c->n_seqs; s++) {
    int total = c->seqs[s].before + c->seqs[s].n_new;
    h[s].before = c->seqs[s].before;
    h[s].n_new = c->seqs[s].n_new;
    h[s].blocks = calloc((size_t)max_blocks, sizeof(int32_t));
    for (int b = 0; b * ATTN_BS < total; b++)
      h[s].blocks[b] = (next++ * 7) % n_blocks;
    h[s].k = randv((size_t)total * kv_width, 2.0f);
    h[s].v = randv((size_t)total * kv_width, 1.0f);
  }
  struct lm_kv_shape shape = {.n_layers = 2,
                              .n_blocks = n_blocks,
                              .block_size = ATTN_BS,
                              .n_kv_heads = n_kv,
                              .head_dim = hd,
                              .dtype = LM_DTYPE_BF16};
  /* the earlier steps: only sequences that have a context */
  int with_ctx[4], n_with_ctx = 0;
  for (int s = 0; s < c->n_seqs; s++)
    if (c->seqs[s].before > 0) with_ctx[n_with_ctx++] = s;
  struct step pre, step;
  step_attn(&pre, h, with_ctx, n_with_ctx, 1, kv_width, max_blocks);
  step_attn(&step, h, all, c->n_seqs, 0, kv_width, max_blocks);
  size_t n_out = (size_t)step.b.n_tokens * nh * hd;
  float *q = randv(n_out, 1.0f), *out[2] = {nanv(n_out), nanv(n_out)};
  int alone_same = 0;
  attn_side(&g_side[0], c, h, &pre, &step, q, &shape, max_blocks, out[0], NULL);
  attn_side(&g_side[1], c, h, &pre, &step, q, &shape, max_blocks, out[1], &alone_same);
  compare(out[0], out[1], n_out, TOL_ATTN,
          "kv_write + attention, %s (head_dim %d, %d kv heads, group %d, block %d)", c->what, hd,
          n_kv, c->group, ATTN_BS);
  lm_check(alone_same, "side B attention, %s: each sequence alone bit-equals it in the batch",
           c->what);
  free(q), free(out[0]), free(out[1]);
  step_free(&pre);
  step_free(&step);
  for (int s = 0; s < c->n_seqs; s++)
    free(h[s].blocks), free(h[s].k), free(h[s].v);
}

static void test_attention(void) {
  static const struct attn_case cases[] = {
      {64, 2, 1, 1, {{40, 1}}, "decode"},
      {128, 2, 2, 1, {{40, 25}}, "prefill chunk after earlier context"},
      {64, 4, 2, 1, {{0, 37}}, "fresh prefill"},
      {128, 2, 2, 4, {{40, 25}, {99, 1}, {0, 17}, {32, 1}}, "mixed prefill chunks and decodes"},
      {64, 1, 4, 2, {{50, 9}, {70, 1}}, "GQA group 4"},
      {128, 2, 8, 2, {{16, 16}, {47, 1}}, "GQA group 8"},
      {64, 2, 2, 3, {{600, 1}, {500, 30}, {1030, 1}}, "over 512 keys, across many splits"},
      {128, 2, 4, 1, {{480, 64}}, "a 64-token chunk across a split boundary"},
      {64, 2, 2, 3, {{2700, 1}, {2500, 70}, {2040, 1}}, "past 2048 keys, where splits are 512"},
      {256, 2, 2, 2, {{20, 40}, {530, 1}}, "head_dim 256"},
      {96, 1, 4, 3, {{10, 70}, {33, 1}, {0, 5}}, "head_dim 96"},
      {32, 2, 3, 2, {{30, 20}, {45, 1}}, "head_dim 32, GQA group 3"},
      {160, 1, 6, 2, {{12, 33}, {40, 1}}, "head_dim 160, GQA group 6"},
      {64, 1, 16, 2, {{8, 20}, {530, 1}}, "GQA group 16"},
      {64, 8, 4, 1, {{0, 600}}, "a 600-token prefill over 8 KV heads (four rows a warp)"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    test_attention_case(&cases[i]);
}

/* ---- sample ------------------------------------------------------------ */

enum { N_SROWS = 16, HIST_TOP = 12 };

/* ids of the k largest of l[0..vocab), best first */
static void top_ids(const float *l, int vocab, int32_t *ids, int k) {
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int i = 0; i < vocab; i++) {
      int taken = 0;
      if (best >= 0 && !(l[i] > l[best])) continue;
      for (int q = 0; q < j && !taken; q++)
        taken = ids[q] == i;
      if (!taken) best = i;
    }
    ids[j] = best;
  }
}

/* Samples rows[0..n) of logits (host [n, vocab]) on side s. */
static int side_sample(struct side *s, const float *logits, int n, int vocab,
                       const struct lm_sample_row *rows, struct lm_sample_result *res) {
  char err[LM_ERR_LEN] = "";
  struct bufs a = {.s = s};
  void *lb = buf_f32(&a, logits, (size_t)n * vocab);
  int rc = bufs_ok(&a, "sample") ? s->be->ops->sample(s->be->st, lb, n, vocab, rows, res, err)
                                 : LM_ENOMEM;
  if (rc != LM_OK) printf("# sample: side %s: %s\n", s->label, err);
  bufs_free(&a);
  return rc;
}

/* Side B drew `other` where side A drew something else: a near tie when
 * side A itself draws `other` from the same row with its logits jittered by
 * 1e-4, a difference no larger than the two sides' rounding. */
static int near_tie_draw(const float *logits, int vocab, const struct lm_sample_row *row,
                         int32_t other) {
  float *l = malloc((size_t)vocab * sizeof(float));
  struct lm_sample_row r = *row;
  struct lm_sample_result res;
  int tie = 0;
  r.n_top_logprobs = 0;
  r.top = NULL;
  for (int trial = 0; trial < 8 && !tie; trial++) {
    for (int i = 0; i < vocab; i++)
      l[i] = logits[i] + frand() * 1e-4f;
    tie = side_sample(&g_side[0], l, 1, vocab, &r, &res) == LM_OK && res.id == other;
  }
  free(l);
  return tie;
}

static void test_sample_vocab(int vocab) {
  const int n = N_SROWS;
  /* clear gaps: uniform over [-8, 8) */
  float *logits = randv((size_t)n * vocab, 8.0f);
  static struct lm_sampling p[N_SROWS];
  static int32_t hi[N_SROWS][HIST_TOP], hist[N_SROWS][16], banned[N_SROWS][3];
  static struct lm_logit_bias bias[N_SROWS][2];
  static struct lm_token_logprob top[2][N_SROWS][LM_SAMPLER_MAX_TOP], top1[LM_SAMPLER_MAX_TOP];
  static const char *what[N_SROWS] = {
      "greedy",
      "greedy, 5 top logprobs",
      "temperature 0.7",
      "temperature 1, top_k 20",
      "temperature 0.9, top_p 0.8, 3 top logprobs",
      "temperature 1.3, min_p 0.1",
      "temperature 0.8, top_k 50, top_p 0.9, min_p 0.05, 20 top logprobs",
      "greedy, repetition/presence/frequency penalties over prompt and output",
      "temperature 1, top_k 40, penalties over prompt and output",
      "greedy, logit bias down on the best id and up on another",
      "temperature 0.9, logit bias",
      "greedy, the two best ids banned",
      "temperature 1.1, top_p 0.95, three ids banned",
      "greedy, no logprob wanted",
      "temperature 0.8, no logprob wanted",
      "temperature 1e-30 (all the mass on the best id), 2 top logprobs",
  };
  struct lm_sample_row rows[2][N_SROWS];
  struct lm_sample_result res[2][N_SROWS];
  memset(p, 0, sizeof(p));
  memset(rows, 0, sizeof(rows));
  for (int i = 0; i < n; i++) {
    const float *l = logits + (size_t)i * vocab;
    struct lm_sample_row *r = &rows[0][i];
    top_ids(l, vocab, hi[i], HIST_TOP);
    r->params = &p[i];
    r->position = 1000 + (uint64_t)i * 37;
    p[i].seed = 77 + (uint64_t)i;
    /* a prompt of 6 ids, then an output repeating the best id */
    int32_t out_part[10] = {hi[i][0], hi[i][6], hi[i][7],  hi[i][0], hi[i][8],
                            hi[i][9], hi[i][0], hi[i][10], hi[i][1], hi[i][11]};
    memcpy(hist[i], hi[i], 6 * sizeof(int32_t));
    memcpy(hist[i] + 6, out_part, sizeof(out_part));
    switch (i) {
    case 1: r->n_top_logprobs = 5; break;
    case 2: p[i].temperature = 0.7f; break;
    case 3: p[i].temperature = 1.0f, p[i].top_k = 20; break;
    case 4: p[i].temperature = 0.9f, p[i].top_p = 0.8f, r->n_top_logprobs = 3; break;
    case 5: p[i].temperature = 1.3f, p[i].min_p = 0.1f; break;
    case 6:
      p[i].temperature = 0.8f, p[i].top_k = 50, p[i].top_p = 0.9f, p[i].min_p = 0.05f;
      r->n_top_logprobs = 20;
      break;
    case 7:
    case 8:
      p[i].repetition_penalty = i == 7 ? 1.3f : 1.2f;
      p[i].presence_penalty = i == 7 ? 0.5f : 0.4f;
      p[i].frequency_penalty = i == 7 ? 0.3f : 0.2f;
      if (i == 8) p[i].temperature = 1.0f, p[i].top_k = 40;
      r->history = hist[i];
      r->n_history = 16;
      r->n_prompt = 6;
      break;
    case 9:
    case 10:
      bias[i][0] = (struct lm_logit_bias){hi[i][0], i == 9 ? -50.0f : 1.5f};
      bias[i][1] = (struct lm_logit_bias){hi[i][3], 2.5f};
      p[i].logit_bias = bias[i];
      p[i].n_logit_bias = 2;
      if (i == 10) p[i].temperature = 0.9f;
      break;
    case 11:
    case 12:
      banned[i][0] = hi[i][0], banned[i][1] = hi[i][i == 11 ? 1 : 2], banned[i][2] = hi[i][4];
      r->banned = banned[i];
      r->n_banned = i == 11 ? 2 : 3;
      if (i == 12) p[i].temperature = 1.1f, p[i].top_p = 0.95f;
      break;
    case 13: r->skip_logprob = 1; break;
    case 14: p[i].temperature = 0.8f, r->skip_logprob = 1; break;
    case 15: p[i].temperature = 1e-30f, r->n_top_logprobs = 2; break;
    }
  }
  for (int i = 0; i < n; i++) {
    rows[1][i] = rows[0][i];
    rows[0][i].top = top[0][i];
    rows[1][i].top = top[1][i];
  }
  int rc0 = side_sample(&g_side[0], logits, n, vocab, rows[0], res[0]);
  int rc1 = side_sample(&g_side[1], logits, n, vocab, rows[1], res[1]);
  if (!lm_check(rc0 == LM_OK && rc1 == LM_OK, "sample %d rows of vocab %d on both sides", n,
                vocab)) {
    free(logits);
    return;
  }
  for (int i = 0; i < n; i++) {
    const float *l = logits + (size_t)i * vocab;
    struct lm_sample_result a = res[0][i], b = res[1][i];
    int tie = 0, id_ok = a.id == b.id, lp_ok, top_ok = 1;
    if (!id_ok && !g_self_check) id_ok = tie = near_tie_draw(l, vocab, &rows[0][i], b.id);
    if (rows[0][i].skip_logprob)
      lp_ok = isnan(a.logprob) && isnan(b.logprob);
    else
      lp_ok = tie || fabsf(a.logprob - b.logprob) <= tol(TOL_LOGPROB);
    for (int j = 0; j < rows[0][i].n_top_logprobs; j++) {
      const struct lm_token_logprob *ta = top[0][i], *tb = top[1][i];
      /* ids may swap only between entries tied on side A */
      int swap =
          !g_self_check && ((j > 0 && fabsf(ta[j].logprob - ta[j - 1].logprob) <= TOL_LOGPROB) ||
                            (j + 1 < rows[0][i].n_top_logprobs &&
                             fabsf(ta[j].logprob - ta[j + 1].logprob) <= TOL_LOGPROB));
      top_ok &= (ta[j].id == tb[j].id || swap) &&
                fabsf(ta[j].logprob - tb[j].logprob) <= tol(TOL_LOGPROB);
    }
    lm_check(id_ok && lp_ok && top_ok,
             "sample vocab %d, %s: id %d / %d%s, logprob %.6f / %.6f (within %.0e)%s", vocab,
             what[i], a.id, b.id, tie ? " (near tie)" : "", (double)a.logprob, (double)b.logprob,
             tol(TOL_LOGPROB),
             rows[0][i].n_top_logprobs ? (top_ok ? ", top logprobs match" : ", top logprobs differ")
                                       : "");
  }

  /* side B: a row sampled alone gives what it gave in the batch */
  int alone_same = 1;
  for (int i = 0; i < n; i++) {
    struct lm_sample_row r = rows[1][i];
    struct lm_sample_result one;
    r.top = top1;
    if (side_sample(&g_side[1], logits + (size_t)i * vocab, 1, vocab, &r, &one) != LM_OK) {
      alone_same = 0;
      continue;
    }
    alone_same &= one.id == res[1][i].id && same_bits(&one.logprob, &res[1][i].logprob, 1);
    for (int j = 0; j < r.n_top_logprobs; j++)
      alone_same &=
          top1[j].id == top[1][i][j].id && same_bits(&top1[j].logprob, &top[1][i][j].logprob, 1);
  }
  lm_check(alone_same, "side B sample vocab %d: each row alone bit-equals it in the batch", vocab);
  free(logits);
}

static void test_sample(void) {
  test_sample_vocab(1000);
  test_sample_vocab(151936);
}

/* ---- whole models through the runner ------------------------------------ */

enum { N_PROMPTS = 3, CHUNK = 64, N_DECODE = 32 };
static const int k_prompt_lens[N_PROMPTS] = {1, 7, 300};

struct rig {
  lm_model *m;
  lm_backend *be;
  lm_runner *r;
  lm_kv_seq kv[N_PROMPTS];
};

static void rig_close(struct rig *g) {
  for (int s = 0; s < N_PROMPTS; s++)
    if (g->r) lm_kv_seq_release(&g->kv[s], lm_runner_kv_pool(g->r));
  lm_runner_free(g->r);
  lm_backend_destroy(g->be);
  lm_model_free(g->m);
  memset(g, 0, sizeof(*g));
}

/* A fresh backend of side s serving the model at dir (a backend serves one
 * model), with room for every prompt and its decodes. */
static int rig_open(struct rig *g, const struct side *s, const char *dir, char *err) {
  struct lm_backend_config bcfg = {.gemm = g_gemm};
  struct lm_runner_config rcfg = {.block_size = 16,
                                  .n_blocks = 128,
                                  .max_batch_tokens = N_PROMPTS * CHUNK,
                                  .max_seqs = N_PROMPTS,
                                  .max_model_len = 1024};
  int rc;
  memset(g, 0, sizeof(*g));
  if ((rc = lm_model_load(dir, &g->m, err)) != LM_OK ||
      (rc = lm_backend_create(s->backend, &bcfg, &g->be, err)) != LM_OK ||
      (rc = g->be->ops->load_weights(g->be->st, g->m, err)) != LM_OK ||
      (rc = lm_runner_create(g->m, g->be, &rcfg, &g->r, err)) != LM_OK)
    return rc;
  for (int p = 0; p < N_PROMPTS; p++)
    if ((rc = lm_kv_seq_reserve(&g->kv[p], lm_runner_kv_pool(g->r), k_prompt_lens[p] + N_DECODE + 1,
                                err)) != LM_OK)
      return rc;
  return LM_OK;
}

/* One runner step; the logits of the chunks that want them to out. */
static int rig_step(struct rig *g, struct lm_seq_chunk *ch, int n, float *out, char *err) {
  const void *logits;
  int n_logits, rc;
  if ((rc = lm_runner_step(g->r, ch, n, &logits, &n_logits, err)) != LM_OK) return rc;
  if (g->be->ops->sync && (rc = g->be->ops->sync(g->be->st, err)) != LM_OK) return rc;
  if (n_logits == 0) return LM_OK;
  rc =
      g->be->ops->f32_read(g->be->st, out, logits, (size_t)n_logits * (size_t)g->m->cfg.vocab_size);
  return rc == LM_OK ? rc : lm_errf(err, rc, "f32_read of the logits failed");
}

/* The runner's fused GEMMs on the weights of layer 0 as load_weights left
 * them (a backend may keep a group side by side and run it as one GEMM):
 * q, k, v with their biases where the model has them, then gate and up. */
static void test_model_matmul_n(struct rig *g, const char *name) {
  enum { M = 7 };
  const struct lm_config *c = &g[0].m->cfg;
  int H = c->hidden_size, bias = c->arch->qkv_bias;
  float *x = randv((size_t)M * H, 2.0f);
  for (int group = 0; group < 2; group++) {
    int n = group ? 2 : 3, total = 0;
    float *out[2];
    for (int i = 0; i < 2; i++) {
      struct side s = {g_side[i].label, g_side[i].backend, g[i].be};
      struct lm_layer_weights *lw = &g[i].m->w.layers[0];
      const struct lm_tensor *ws[3] = {&lw->wq, &lw->wk, &lw->wv}, *bs[3] = {NULL, NULL, NULL};
      struct bufs a = {.s = &s};
      void *xb = buf_act(&a, x, (size_t)M * H), *ys[3] = {NULL, NULL, NULL};
      if (group) {
        ws[0] = &lw->w_gate;
        ws[1] = &lw->w_up;
      } else if (bias) {
        bs[0] = &lw->bq, bs[1] = &lw->bk, bs[2] = &lw->bv;
      }
      total = 0;
      for (int j = 0; j < n; j++) {
        ys[j] = buf_act(&a, NULL, (size_t)M * ws[j]->shape[0]);
        total += (int)ws[j]->shape[0];
      }
      out[i] = nanv((size_t)M * total);
      if (bufs_ok(&a, "model matmul_n")) {
        side_matmul_n(&s, ys, xb, ws, bs, n, M);
        for (int j = 0, off = 0; j < n; off += M * (int)ws[j]->shape[0], j++)
          if (fetch(&s, out[i] + off, ys[j], (size_t)M * ws[j]->shape[0], 0, "model matmul_n"))
            break;
      }
      bufs_free(&a);
    }
    compare(out[0], out[1], (size_t)M * total, TOL_MATMUL,
            "model %s: layer 0 %s through matmul_n, M=%d", name,
            group  ? "gate, up"
            : bias ? "q, k, v with biases"
                   : "q, k, v",
            M);
    free(out[0]), free(out[1]);
  }
  free(x);
}

/* The gap between the two largest of x[0..n). */
static float top2_gap(const float *x, int n) {
  float a = -INFINITY, b = -INFINITY;
  for (int i = 0; i < n; i++) {
    if (x[i] > a)
      b = a, a = x[i];
    else if (x[i] > b)
      b = x[i];
  }
  return a - b;
}

/* The CPU row a's top two are close enough for an error of e (normalized,
 * measured on this row) to swap them. */
static int near_tie(const float *a, int n, double e) {
  double sq = 0;
  for (int i = 0; i < n; i++)
    sq += (double)a[i] * a[i];
  double rms = sqrt(sq / n), limit = 4 * e * rms;
  return top2_gap(a, n) < (limit > NEAR_TIE ? limit : NEAR_TIE);
}

static void test_model(const char *root, const char *name) {
  char dir[4096], err[LM_ERR_LEN] = "";
  struct rig g[2];
  memset(g, 0, sizeof(g));
  snprintf(dir, sizeof(dir), "%s/%s", root, name);
  int rc = rig_open(&g[0], &g_side[0], dir, err);
  if (rc == LM_OK) rc = rig_open(&g[1], &g_side[1], dir, err);
  if (!lm_check(rc == LM_OK, "model %s: loads and runs on both sides%s%s", name, rc ? ": " : "",
                rc ? err : "")) {
    rig_close(&g[0]);
    rig_close(&g[1]);
    return;
  }
  test_model_matmul_n(g, name);
  int V = g[0].m->cfg.vocab_size, n_ids = V < 30000 ? V : 30000;
  int32_t *prompt[N_PROMPTS];
  float *last[2];
  for (int p = 0; p < N_PROMPTS; p++) {
    prompt[p] = malloc((size_t)k_prompt_lens[p] * sizeof(int32_t));
    for (int t = 0; t < k_prompt_lens[p]; t++)
      prompt[p][t] = 100 + (t * 7919 + p * 104729) % (n_ids - 100);
  }
  for (int i = 0; i < 2; i++)
    last[i] = nanv((size_t)N_PROMPTS * V);

  /* prefill, every prompt CHUNK tokens at a time, all in each step */
  float *step_out = malloc((size_t)N_PROMPTS * V * sizeof(float));
  for (int i = 0; i < 2 && rc == LM_OK; i++) {
    for (;;) {
      struct lm_seq_chunk ch[N_PROMPTS];
      int idx[N_PROMPTS], k = 0;
      for (int p = 0; p < N_PROMPTS; p++) {
        int done = g[i].kv[p].n_cached_tokens, left = k_prompt_lens[p] - done;
        if (left <= 0) continue;
        int take = left < CHUNK ? left : CHUNK;
        ch[k] = (struct lm_seq_chunk){.kv = &g[i].kv[p],
                                      .tokens = prompt[p] + done,
                                      .n_tokens = take,
                                      .want_logits = take == left};
        idx[k++] = p;
      }
      if (!k) break;
      if ((rc = rig_step(&g[i], ch, k, step_out, err)) != LM_OK) break;
      for (int c = 0, row = 0; c < k; c++)
        if (ch[c].want_logits)
          memcpy(last[i] + (size_t)idx[c] * V, step_out + (size_t)row++ * V, (size_t)V * 4);
    }
  }
  if (rc != LM_OK) printf("# model %s prefill: %s\n", name, err);
  for (int p = 0; p < N_PROMPTS; p++) {
    const float *a = last[0] + (size_t)p * V, *b = last[1] + (size_t)p * V;
    double e = nerr(a, b, (size_t)V);
    int am = lm_sampler_argmax(a, V), bm = lm_sampler_argmax(b, V);
    float gap = top2_gap(a, V);
    int tie = am != bm && !g_self_check && near_tie(a, V, e);
    lm_check(e <= tol(TOL_MODEL) && (am == bm || tie),
             "model %s, prompt of %d tokens: last logits nerr=%.2e (<= %.0e), argmax %d / %d (CPU "
             "top-2 gap %.3f%s)",
             name, k_prompt_lens[p], e, tol(TOL_MODEL), am, bm, (double)gap,
             tie ? ": a near tie" : "");
  }

  /* decode, both sides fed the CPU's greedy choice (teacher forcing) */
  int differ = 0, ties = 0, steps_run = 0;
  double worst = 0;
  float *next[2] = {nanv((size_t)N_PROMPTS * V), nanv((size_t)N_PROMPTS * V)};
  for (int t = 0; t < N_DECODE && rc == LM_OK; t++) {
    int32_t tok[N_PROMPTS];
    for (int p = 0; p < N_PROMPTS; p++)
      tok[p] = lm_sampler_argmax((t ? next[0] : last[0]) + (size_t)p * V, V);
    for (int i = 0; i < 2 && rc == LM_OK; i++) {
      struct lm_seq_chunk ch[N_PROMPTS];
      for (int p = 0; p < N_PROMPTS; p++)
        ch[p] = (struct lm_seq_chunk){
            .kv = &g[i].kv[p], .tokens = &tok[p], .n_tokens = 1, .want_logits = 1};
      rc = rig_step(&g[i], ch, N_PROMPTS, next[i], err);
    }
    if (rc != LM_OK) break;
    steps_run++;
    for (int p = 0; p < N_PROMPTS; p++) {
      const float *a = next[0] + (size_t)p * V, *b = next[1] + (size_t)p * V;
      double e = nerr(a, b, (size_t)V);
      worst = e > worst || e != e ? e : worst;
      if (lm_sampler_argmax(a, V) != lm_sampler_argmax(b, V)) {
        differ++;
        ties += !g_self_check && near_tie(a, V, e);
      }
    }
  }
  if (rc != LM_OK) printf("# model %s decode: %s\n", name, err);
  lm_check(rc == LM_OK && steps_run == N_DECODE && differ == ties,
           "model %s: %d teacher-forced decode steps x %d prompts: %d argmaxes differ, %d of them "
           "near ties (CPU top-2 gap under max(%.2f, 4 x row error x row rms))",
           name, steps_run, N_PROMPTS, differ, ties, (double)NEAR_TIE);
  lm_check(rc == LM_OK && worst <= tol(TOL_MODEL),
           "model %s: decode logits worst nerr=%.2e (<= %.0e) over the %d steps", name, worst,
           tol(TOL_MODEL), steps_run);
  for (int i = 0; i < 2; i++) {
    free(next[i]);
    free(last[i]);
    rig_close(&g[i]);
  }
  free(step_out);
  for (int p = 0; p < N_PROMPTS; p++)
    free(prompt[p]);
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(a, b);
}

/* Fixture model directories under root (a config.json each), sorted. */
static int list_fixtures(const char *root, char (*names)[64], int max) {
  DIR *d = opendir(root);
  struct dirent *de;
  int n = 0;
  if (!d) return 0;
  while ((de = readdir(d)) && n < max) {
    char path[4096];
    if (de->d_name[0] == '.' || strlen(de->d_name) >= 64) continue;
    snprintf(path, sizeof(path), "%s/%s/config.json", root, de->d_name);
    if (access(path, R_OK) != 0) continue;
    memcpy(names[n++], de->d_name, strlen(de->d_name) + 1); /* under 64, checked above */
  }
  closedir(d);
  qsort(names, (size_t)n, 64, name_cmp);
  return n;
}

/* ---- the engine ----------------------------------------------------------- */

enum { N_JOBS = 32, MAX_PROMPT = 600, MAX_OUT = 40, MAX_TOP = 3 };

struct job {
  int32_t prompt[MAX_PROMPT];
  int n_prompt, max_tokens, n_top;
  struct lm_sampling sampling;
  lm_request *r;
  struct lm_output out;
  int32_t ids[MAX_OUT];
  float logprobs[MAX_OUT];
  struct lm_token_logprob top[MAX_OUT][MAX_TOP];
  int n_got, finished;
  enum lm_finish_reason reason;
};

static lm_engine *engine_open(const struct side *s, const char *dir) {
  char err[LM_ERR_LEN];
  struct lm_engine_config c;
  lm_engine *e = NULL;
  lm_engine_config_init(&c);
  c.model_dir = dir;
  c.backend = s->backend;
  c.block_size = 16;
  c.n_kv_blocks = 1536; /* every request's prompt and output at once, no preemption */
  c.max_num_seqs = N_JOBS;
  c.max_num_batched_tokens = 256;
  c.max_model_len = 1024;
  c.enable_prefix_caching = 1;
  c.backend_cfg.gemm = g_gemm;
  if (lm_engine_create(&c, &e, err) != LM_OK) {
    printf("# engine on side %s (%s): %s\n", s->label, s->backend, err);
    return NULL;
  }
  return e;
}

static int job_submit(lm_engine *e, struct job *j) {
  char err[LM_ERR_LEN];
  struct lm_request_params p;
  lm_request_params_init(NULL, &p);
  p.prompt = j->prompt;
  p.n_prompt = j->n_prompt;
  p.max_tokens = j->max_tokens;
  p.sampling = j->sampling;
  p.ignore_eos = 1;
  p.logprobs = 1;
  p.top_logprobs = j->n_top;
  j->n_got = 0;
  j->finished = 0;
  j->r = NULL;
  memset(&j->out, 0, sizeof(j->out));
  int rc = lm_engine_submit(e, &p, &j->r, err);
  if (rc != LM_OK) printf("# submit: %s\n", err);
  return rc;
}

/* Drains what is ready; returns 1 once the job has finished. */
static int job_poll(struct job *j) {
  if (j->finished) return 1;
  if (!j->r || lm_request_drain(j->r, &j->out) <= 0) return 0;
  for (int i = 0; i < j->out.n_tokens && j->n_got < MAX_OUT; i++, j->n_got++) {
    j->ids[j->n_got] = j->out.token_ids[i];
    j->logprobs[j->n_got] = j->out.logprobs[i];
    for (int k = 0; k < j->n_top && k < j->out.n_top; k++)
      j->top[j->n_got][k] = j->out.top_logprobs[(size_t)i * j->out.n_top + k];
  }
  if (j->out.finished) {
    j->finished = 1;
    j->reason = j->out.finish_reason;
    if (j->reason == LM_FINISH_ERROR) printf("# a request failed: %s\n", j->out.error);
    lm_output_free(&j->out);
    lm_request_release(j->r);
    j->r = NULL;
  }
  return j->finished;
}

static void nap(void) {
  struct timespec ts = {0, 200 * 1000};
  nanosleep(&ts, NULL);
}

/* Runs jobs[0..n) each alone, one after another, or all at once; 0 when
 * every one finished with max_tokens tokens. Unfinished ones are released. */
static int jobs_run(lm_engine *e, struct job *jobs, int n, int at_once) {
  int ok = 1;
  double t0 = lm_now_s();
  for (int i = 0; i < n; i++) {
    jobs[i].r = NULL;
    jobs[i].finished = 0;
  }
  for (int i = 0; i < n && ok; i++) {
    ok = job_submit(e, &jobs[i]) == LM_OK;
    if (at_once) continue;
    while (ok && !job_poll(&jobs[i]) && lm_now_s() - t0 < 300)
      nap();
  }
  for (int done = 0; ok && done < n && lm_now_s() - t0 < 300;) {
    done = 0;
    for (int i = 0; i < n; i++)
      done += job_poll(&jobs[i]);
    if (done < n) nap();
  }
  for (int i = 0; i < n; i++) {
    ok &= jobs[i].finished && jobs[i].reason == LM_FINISH_LENGTH &&
          jobs[i].n_got == jobs[i].max_tokens;
    if (jobs[i].r) {
      lm_request_release(jobs[i].r);
      lm_output_free(&jobs[i].out);
      jobs[i].r = NULL;
    }
  }
  return ok ? 0 : -1;
}

static int same_job(const struct job *a, const struct job *b) {
  if (a->n_got != b->n_got || memcmp(a->ids, b->ids, (size_t)a->n_got * sizeof(int32_t)) ||
      !same_bits(a->logprobs, b->logprobs, (size_t)a->n_got))
    return 0;
  for (int t = 0; t < a->n_got; t++)
    for (int k = 0; k < a->n_top; k++)
      if (a->top[t][k].id != b->top[t][k].id ||
          !same_bits(&a->top[t][k].logprob, &b->top[t][k].logprob, 1))
        return 0;
  return 1;
}

static uint32_t job_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (uint32_t)(*s >> 32);
}

/* 32 requests: prompts of 1 to 600 tokens, three of every four opening
 * with one of three shared prefixes (the prefix cache has something to
 * find), 8 to 40 tokens out, greedy and seeded sampling (top_k, top_p,
 * min_p, penalties), logprobs always, top logprobs on some. */
static void make_jobs(struct job *jobs, int n_ids) {
  static const int lens[N_JOBS] = {1,   2,   7,   16,  17,  31,  33,  45,  64,  65,  100,
                                   127, 128, 129, 200, 255, 256, 257, 300, 333, 400, 450,
                                   500, 511, 512, 513, 520, 550, 577, 590, 599, 600};
  static const int prefix_len[3] = {24, 150, 510};
  int32_t prefix[3][510];
  uint64_t s = 0x2545f4914f6cdd1dull;
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < prefix_len[k]; i++)
      prefix[k][i] = 100 + (int32_t)(job_rand(&s) % (uint32_t)(n_ids - 100));
  for (int i = 0; i < N_JOBS; i++) {
    struct job *j = &jobs[i];
    int g = i % 4, n = 0;
    memset(j, 0, sizeof(*j));
    j->n_prompt = lens[(i * 7) % N_JOBS]; /* lengths shuffled across the groups */
    if (g < 3 && j->n_prompt > prefix_len[g]) {
      memcpy(j->prompt, prefix[g], (size_t)prefix_len[g] * sizeof(int32_t));
      n = prefix_len[g];
    }
    for (; n < j->n_prompt; n++)
      j->prompt[n] = 100 + (int32_t)(job_rand(&s) % (uint32_t)(n_ids - 100));
    /* mostly short outputs: every output token costs a pass over the
     * vocabulary on the CPU side of the self-check */
    j->max_tokens = i % 8 == 0 ? MAX_OUT : 8 + (i * 5) % 13;
    j->n_top = i % 3 == 0 ? MAX_TOP : 0;
    if (i % 2) {
      /* top_k or top_p on each (the sampler's plain-temperature path is
       * covered by the sampling checks) */
      struct lm_sampling *p = &j->sampling;
      p->temperature = 0.6f + 0.1f * (float)(i % 5);
      p->top_k = i % 3 != 2 ? 20 + 20 * (i % 3) : 0;
      p->top_p = i % 3 != 1 ? 0.9f : 0.0f;
      p->min_p = i % 7 == 1 ? 0.05f : 0.0f;
      p->repetition_penalty = i % 5 == 3 ? 1.2f : 0.0f;
      p->presence_penalty = i % 11 == 5 ? 0.3f : 0.0f;
      p->seed = 1000 + (uint64_t)i;
    }
  }
}

static struct job g_alone[N_JOBS], g_batch[N_JOBS];

/* Side B keeps backend.h's promise through the whole engine: every
 * request's tokens and logprobs are the same bits whether it ran alone or
 * among 31 others, its prefill chunked differently and its prefix maybe
 * found in the cache. */
static void test_engine_invariance(const char *dir, const char *name) {
  struct side *s = &g_side[1];
  lm_engine *e = engine_open(s, dir);
  if (!lm_check(e != NULL, "engine %s on side B (%s) opens", name, s->backend)) return;
  struct lm_engine_info info;
  lm_engine_get_info(e, &info);
  int n_ids = info.vocab_size < 30000 ? info.vocab_size : 30000;
  make_jobs(g_alone, n_ids);
  make_jobs(g_batch, n_ids);
  lm_check(jobs_run(e, g_alone, N_JOBS, 0) == 0,
           "engine %s on side B: 32 requests (prompts 1..600) run alone, each to max_tokens", name);
  lm_engine_destroy(e);
  e = engine_open(s, dir);
  if (!lm_check(e != NULL, "a fresh engine %s on side B opens", name)) return;
  lm_check(jobs_run(e, g_batch, N_JOBS, 1) == 0,
           "engine %s on side B: the same 32 requests submitted at once all finish", name);
  struct lm_engine_stats st;
  lm_engine_get_stats(e, &st);
  int same = 0;
  for (int i = 0; i < N_JOBS; i++) {
    if (same_job(&g_alone[i], &g_batch[i]))
      same++;
    else
      printf("# request %d (prompt %d, %s): batched differs from alone\n", i, g_alone[i].n_prompt,
             g_alone[i].sampling.temperature > 0 ? "seeded" : "greedy");
  }
  lm_check(same == N_JOBS,
           "engine %s on side B: %d of 32 requests batched give the tokens and logprobs they gave "
           "alone, bit for bit (a step mixed %d decodes with a prefill chunk; %llu prompt tokens "
           "hit the prefix cache)",
           name, same, st.max_decodes_with_prefill, (unsigned long long)st.prefix_cache_hits);
  lm_check(st.max_decodes_with_prefill >= 4, "the batched run mixed decodes with prefill (%d >= 4)",
           st.max_decodes_with_prefill);
  lm_engine_destroy(e);
}

/* Greedy generation through the engine on each side: the same tokens up
 * to the first near tie. */
static void test_engine_greedy(const char *dir, const char *name) {
  enum { N = 3 };
  static const int lens[N] = {5, 60, 300};
  static struct job jobs[2][N];
  int opened = 1;
  for (int i = 0; i < 2; i++) {
    lm_engine *e = engine_open(&g_side[i], dir);
    opened &= e != NULL;
    if (!e) continue;
    for (int p = 0; p < N; p++) {
      struct job *j = &jobs[i][p];
      memset(j, 0, sizeof(*j));
      j->n_prompt = lens[p];
      for (int t = 0; t < lens[p]; t++)
        j->prompt[t] = 100 + (t * 104729 + p * 7919) % 20000;
      j->max_tokens = 24;
      j->n_top = 2; /* the top-2 gap tells a near tie */
    }
    jobs_run(e, jobs[i], N, 0);
    lm_engine_destroy(e);
  }
  if (!lm_check(opened, "engine %s opens on both sides", name)) return;
  for (int p = 0; p < N; p++) {
    const struct job *a = &jobs[0][p], *b = &jobs[1][p];
    int n = a->n_got < b->n_got ? a->n_got : b->n_got, k = 0;
    while (k < n && a->ids[k] == b->ids[k])
      k++;
    if (k == n && a->n_got == b->n_got && n == a->max_tokens) {
      lm_check(1, "engine %s greedy, prompt of %d tokens: all %d tokens equal on both sides", name,
               lens[p], n);
      continue;
    }
    float gap = k < n ? a->top[k][0].logprob - a->top[k][1].logprob : INFINITY;
    lm_check(k < n && !g_self_check && gap < NEAR_TIE,
             "engine %s greedy, prompt of %d tokens: %d / %d tokens, equal up to token %d (%d / "
             "%d there), CPU top-2 gap %.3f (a near tie below %.2f)",
             name, lens[p], a->n_got, b->n_got, k, k < a->n_got ? a->ids[k] : -1,
             k < b->n_got ? b->ids[k] : -1, (double)gap, (double)NEAR_TIE);
  }
}

/* ---- main --------------------------------------------------------------- */

/* Names the ops a side lacks that backend.h does not mark optional; 1 when
 * none is missing. */
static int ops_complete(const struct lm_backend_ops *o, char *missing, size_t len) {
  const struct {
    const char *name;
    int have;
  } need[] = {
      {"load_weights", o->load_weights != NULL},
      {"tensor_free (with tensor_load)", !o->tensor_load || o->tensor_free},
      {"act_alloc", o->act_alloc != NULL},
      {"act_free", o->act_free != NULL},
      {"act_read", o->act_read != NULL},
      {"act_write", o->act_write != NULL},
      {"f32_alloc", o->f32_alloc != NULL},
      {"f32_read", o->f32_read != NULL},
      {"f32_write", o->f32_write != NULL},
      {"kv_create", o->kv_create != NULL},
      {"kv_free", o->kv_free != NULL},
      {"embed", o->embed != NULL},
      {"rmsnorm", o->rmsnorm != NULL},
      {"add_rmsnorm", o->add_rmsnorm != NULL},
      {"matmul", o->matmul != NULL},
      {"logits", o->logits != NULL},
      {"rope", o->rope != NULL},
      {"kv_write", o->kv_write != NULL},
      {"attention", o->attention != NULL},
      {"swiglu", o->swiglu != NULL},
      {"gather_rows", o->gather_rows != NULL},
      {"sample", o->sample != NULL},
  };
  size_t at = 0;
  missing[0] = '\0';
  for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
    if (!need[i].have && at < len)
      at += (size_t)snprintf(missing + at, len - at, " %s", need[i].name);
  return missing[0] == '\0';
}

static void run_op_checks(void) {
  test_embed();
  test_norms();
  test_swiglu_gather();
  test_matmul();
  test_gemm_mma();
  test_matmul_n();
  test_logits();
  test_rope();
  test_attention();
  test_sample();
}

int main(int argc, char **argv) {
  char why[256] = "", err[LM_ERR_LEN] = "";
  char names[32][64];
  /* --ops-only: the op and sampling checks alone, short enough for
   * compute-sanitizer; --attention-only: the attention checks alone, for
   * its slower racecheck */
  if (argc > 3 && !strcmp(argv[1], "--gemm")) {
    g_gemm = argv[2];
    argv += 2, argc -= 2;
  }
  int ops_only = argc > 2 && !strcmp(argv[1], "--ops-only");
  int attention_only = argc > 2 && !strcmp(argv[1], "--attention-only");
  if (ops_only || attention_only) argv++, argc--;
  ops_only |= attention_only;
  if (argc < 2) {
    fprintf(
        stderr,
        "usage: cuda_test [--gemm cublaslt|mma] [--ops-only | --attention-only] FIXTURES_DIR\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in the log as it happens */
  const char *require = getenv("LMSERVE_REQUIRE_GPU");
  int n_gpus = lm_cuda_device_count(why, sizeof(why));
  if (n_gpus == 0 && require && strcmp(require, "1") == 0) {
    lm_check(0, "a GPU is required (LMSERVE_REQUIRE_GPU=1): %s", why);
    printf("cuda_test: %d checks, %d failed\n", lm_checks_run, lm_checks_failed);
    return 1;
  }
  if (n_gpus == 0) {
    g_self_check = 1;
    g_side[1].backend = "cpu";
    printf("# no GPU (%s): the harness checks itself with the CPU on both sides, every error "
           "must be 0\n",
           why);
  } else {
    char dev[256] = "";
    unsigned long long bytes = 0;
    lm_cuda_device_info(dev, sizeof(dev), &bytes);
    printf("# side A: cpu, side B: cuda on %s (%.1f GiB), GEMMs: %s\n", dev,
           (double)bytes / (1 << 30), g_gemm ? g_gemm : "cublaslt");
  }

  int rc = LM_OK;
  for (int i = 0; i < 2 && rc == LM_OK; i++) {
    struct lm_backend_config cfg = {.gemm = g_gemm};
    rc = lm_backend_create(g_side[i].backend, &cfg, &g_side[i].be, err);
    lm_check(rc == LM_OK, "side %s: lm_backend_create(\"%s\")%s%s", g_side[i].label,
             g_side[i].backend, rc ? ": " : "", rc ? err : "");
    if (rc == LM_OK &&
        !lm_check(ops_complete(g_side[i].be->ops, err, sizeof(err)),
                  "side %s (%s) has every op backend.h requires%s%s", g_side[i].label,
                  g_side[i].backend, err[0] ? "; missing:" : "", err))
      rc = LM_EUNSUP;
  }
  if (rc == LM_OK && attention_only)
    test_attention();
  else if (rc == LM_OK)
    run_op_checks();
  for (int i = 0; i < 2; i++) {
    lm_backend_destroy(g_side[i].be);
    g_side[i].be = NULL;
  }

  if (rc == LM_OK && !ops_only) {
    int n = list_fixtures(argv[1], names, 32), qwen3 = -1;
    lm_check(n > 0, "fixture models in %s: %d", argv[1], n);
    for (int i = 0; i < n; i++) {
      test_model(argv[1], names[i]);
      if (!strcmp(names[i], "qwen3-bf16")) qwen3 = i;
    }
    if (n > 0) {
      char dir[4096];
      const char *name = names[qwen3 >= 0 ? qwen3 : 0];
      snprintf(dir, sizeof(dir), "%s/%s", argv[1], name);
      test_engine_invariance(dir, name);
      test_engine_greedy(dir, name);
    }
  }

  printf("cuda_test: %d checks, %d failed\n", lm_checks_run, lm_checks_failed);
  if (g_self_check && lm_checks_failed == 0)
    printf("SKIPPED: no GPU (%s); the CUDA backend was not run\n", why);
  return lm_checks_failed ? 1 : 0;
}
