/* backend_test.c - every CPU backend op against a naive scalar reference
 * written here (double accumulation), on the AVX-512 and the portable
 * kernels, plus the batch-invariance promises of backend.h checked bit for
 * bit. One line per check: "ok - name" or "not ok - name ...". */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/cpu_internal.h"
#include "engine/sampler.h"

static int g_failed, g_checks;
static const char *g_isa = "";

LM_PRINTF(2, 3) static void check(int cond, const char *fmt, ...) {
  va_list ap;
  g_checks++;
  printf("%s - [%s] ", cond ? "ok" : "not ok", g_isa);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  if (!cond) g_failed++;
}

/* ---- inputs ------------------------------------------------------------ */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill(float *x, size_t n, float scale) {
  for (size_t i = 0; i < n; i++)
    x[i] = frand() * scale;
}

/* A tensor stored in dt; vals (f32) are rounded to what dt holds so the
 * reference sees exactly the stored values. Caller frees t->data. */
static struct lm_tensor make_tensor(enum lm_dtype dt, float *vals, int64_t rows, int64_t cols) {
  struct lm_tensor t = {.dtype = dt, .n_dims = cols ? 2 : 1, .shape = {rows, cols}};
  size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
  if (!cols) t.shape[1] = 0;
  void *d = malloc(n * lm_dtype_size(dt));
  for (size_t i = 0; i < n; i++) {
    if (dt == LM_DTYPE_BF16) {
      ((uint16_t *)d)[i] = lm_f32_to_bf16(vals[i]);
      vals[i] = lm_bf16_to_f32(((uint16_t *)d)[i]);
    } else if (dt == LM_DTYPE_F16) {
      ((uint16_t *)d)[i] = lm_f32_to_f16(vals[i]);
      vals[i] = lm_f16_to_f32(((uint16_t *)d)[i]);
    } else {
      ((float *)d)[i] = vals[i];
    }
  }
  t.data = d;
  return t;
}

static double nerr(const float *a, const double *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const enum lm_dtype k_dtypes[3] = {LM_DTYPE_BF16, LM_DTYPE_F16, LM_DTYPE_F32};

struct ctx {
  const struct lm_backend_ops *ops;
  void *st;  /* default thread count (>= 2 where the machine has them) */
  void *st1; /* one thread */
};

static float *act(struct ctx *c, size_t n) {
  return c->ops->act_alloc(c->st, n);
}

/* ---- matmul ------------------------------------------------------------ */

#define MATMUL_TOL 2e-6
/* attention by AMX tiles, whose queries and probabilities are split into
 * two bf16 halves (about 2^-16 of each) */
#define ATTN_TOL_AMX 1e-4

static void ref_matmul(double *y, const float *x, const float *w, const float *bias, int m, int n,
                       int k) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double acc = bias ? bias[j] : 0.0;
      for (int l = 0; l < k; l++)
        acc += (double)x[(size_t)i * k + l] * w[(size_t)j * k + l];
      y[(size_t)i * n + j] = acc;
    }
}

static void test_matmul_shape(struct ctx *c, enum lm_dtype dt, int m, int n, int k, int with_bias) {
  float *wv = malloc((size_t)n * k * sizeof(float)), *bv = malloc((size_t)n * sizeof(float));
  float *x = act(c, (size_t)m * k), *y = act(c, (size_t)m * n);
  double *ref = malloc((size_t)m * n * sizeof(double));
  fill(wv, (size_t)n * k, 0.5f);
  fill(bv, (size_t)n, 1.0f);
  fill(x, (size_t)m * k, 1.0f);
  struct lm_tensor w = make_tensor(dt, wv, n, k);
  struct lm_tensor b = make_tensor(dt, bv, n, 0);
  c->ops->matmul(c->st, y, x, &w, with_bias ? &b : NULL, m);
  /* bf16 weights by dot products: the kernel rounds x to bf16 first */
  float *xr = malloc((size_t)m * k * sizeof(float));
  int round_x = dt == LM_DTYPE_BF16 && ((struct lm_cpu *)c->st)->bf16_dot;
  for (size_t i = 0; i < (size_t)m * k; i++)
    xr[i] = round_x ? lm_bf16_to_f32(lm_f32_to_bf16(x[i])) : x[i];
  ref_matmul(ref, xr, wv, with_bias ? bv : NULL, m, n, k);
  free(xr);
  double e = nerr(y, ref, (size_t)m * n);
  check(e < MATMUL_TOL, "matmul %s M=%d N=%d K=%d bias=%d nerr=%.2e (< %.0e)", lm_dtype_name(dt), m,
        n, k, with_bias, e, MATMUL_TOL);
  /* W packed at load (as load_weights packs a model's) gives the same bits
   * as W packed per call from the file layout */
  char err[LM_ERR_LEN];
  if (c->ops->tensor_load && c->ops->tensor_load(c->st, &w, err) == 0) {
    float *yp = act(c, (size_t)m * n);
    c->ops->matmul(c->st, yp, x, &w, with_bias ? &b : NULL, m);
    int packed = ((struct lm_cpu *)c->st)->avx512; /* the portable kernels read W as stored */
    check(memcmp(y, yp, (size_t)m * n * sizeof(float)) == 0 && !w.dev == !packed,
          "matmul %s M=%d N=%d K=%d: loaded W bit-equals W as stored", lm_dtype_name(dt), m, n, k);
    c->ops->tensor_free(c->st, &w);
    c->ops->act_free(c->st, yp);
  }
  free((void *)w.data);
  free((void *)b.data);
  free(wv);
  free(bv);
  free(ref);
  c->ops->act_free(c->st, x);
  c->ops->act_free(c->st, y);
}

static void test_matmul(struct ctx *c) {
  static const int shapes[][2] = {{64, 48}, {100, 37}, {1000, 130}, {33, 17}, {1024, 96}};
  for (int d = 0; d < 3; d++) {
    for (int s = 0; s < 5; s++) {
      int ms[] = {1, 2, 3, 4, 5, 7, 8, 13, 33, 128};
      for (int i = 0; i < 10; i++) {
        if (s >= 3 && ms[i] != 1 && ms[i] != 33) continue;
        test_matmul_shape(c, k_dtypes[d], ms[i], shapes[s][1], shapes[s][0], (i + s) % 2);
      }
    }
  }
  /* every M from 1 to 33 once, on bf16; and to 49 with K a multiple of
   * 32 (AMX tiles where they run: one or two row tiles, partial ones) */
  for (int m = 1; m <= 33; m++)
    test_matmul_shape(c, LM_DTYPE_BF16, m, 21, 77, m % 2);
  for (int m = 1; m <= 49; m++)
    test_matmul_shape(c, LM_DTYPE_BF16, m, 70, 96, m % 2);
}

/* Rows computed alone (M=1) equal the same rows inside M=7, 33, 128, and
 * one thread equals two, bit for bit. */
static void check_matmul_invariance(struct ctx *c, const struct lm_tensor *w, const float *x,
                                    float *y, float *y1, float *yt, int loaded) {
  int n = (int)w->shape[0], k = (int)w->shape[1];
  const char *dt = lm_dtype_name(w->dtype), *how = loaded ? " loaded" : "";
  int ms[] = {7, 33, 128};
  for (int i = 0; i < 3; i++) {
    int m = ms[i], same = 1;
    c->ops->matmul(c->st, y, x, w, NULL, m);
    for (int r = 0; r < m; r++) {
      c->ops->matmul(c->st, y1, x + (size_t)r * k, w, NULL, 1);
      same &= memcmp(y1, y + (size_t)r * n, (size_t)n * sizeof(float)) == 0;
    }
    check(same, "matmul %s K=%d%s rows alone (M=1) bit-equal rows within M=%d", dt, k, how, m);
  }
  c->ops->matmul(c->st, y, x, w, NULL, 33);
  c->ops->matmul(c->st1, yt, x, w, NULL, 33);
  check(memcmp(y, yt, (size_t)33 * n * sizeof(float)) == 0,
        "matmul %s K=%d%s 1 thread bit-equals default threads (M=33)", dt, k, how);
}

/* ... for odd and even K, W as stored and W packed at load. */
static void test_matmul_invariance(struct ctx *c) {
  for (int d = 0; d < 12; d++) {
    enum lm_dtype dt = k_dtypes[d % 3];
    int n = 83, k = d % 6 < 3 ? 333 : 320, mmax = 128, loaded = d >= 6;
    float *wv = malloc((size_t)n * k * sizeof(float));
    float *x = act(c, (size_t)mmax * k), *y = act(c, (size_t)mmax * n), *y1 = act(c, (size_t)n);
    float *yt = act(c, (size_t)mmax * n);
    char err[LM_ERR_LEN];
    fill(wv, (size_t)n * k, 0.5f);
    fill(x, (size_t)mmax * k, 1.0f);
    struct lm_tensor w = make_tensor(dt, wv, n, k);
    /* the second half: W packed at load, as a model's weights are */
    if (!loaded || (c->ops->tensor_load && c->ops->tensor_load(c->st, &w, err) == 0))
      check_matmul_invariance(c, &w, x, y, y1, yt, loaded);
    if (loaded && w.dev) c->ops->tensor_free(c->st, &w);
    free((void *)w.data);
    free(wv);
    c->ops->act_free(c->st, x);
    c->ops->act_free(c->st, y);
    c->ops->act_free(c->st, y1);
    c->ops->act_free(c->st, yt);
  }
}

/* ---- row-wise ops ------------------------------------------------------ */

static void test_norms(struct ctx *c) {
  int dims[] = {1024, 100, 128};
  int rows = 5;
  for (int d = 0; d < 3; d++)
    for (int di = 0; di < 3; di++) {
      int dim = dims[di];
      size_t n = (size_t)rows * dim;
      float *wv = malloc((size_t)dim * sizeof(float));
      float *x = act(c, n), *out = act(c, n), *res = act(c, n), *delta = act(c, n);
      double *ref = malloc(n * sizeof(double)), *rres = malloc(n * sizeof(double));
      float eps = 1e-6f;
      fill(wv, (size_t)dim, 1.0f);
      fill(x, n, 3.0f);
      fill(delta, n, 1.0f);
      memcpy(res, x, n * sizeof(float));
      struct lm_tensor w = make_tensor(k_dtypes[d], wv, dim, 0);
      c->ops->rmsnorm(c->st, out, x, &w, rows, dim, eps);
      for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < dim; i++)
          ss += (double)x[r * dim + i] * x[r * dim + i];
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++)
          ref[r * dim + i] = x[r * dim + i] * inv * wv[i];
      }
      double e = nerr(out, ref, n);
      check(e < 1e-6, "rmsnorm %s dim=%d nerr=%.2e (< 1e-6)", lm_dtype_name(k_dtypes[d]), dim, e);
      c->ops->add_rmsnorm(c->st, out, res, delta, &w, rows, dim, eps);
      for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) {
          rres[r * dim + i] = (double)x[r * dim + i] + delta[r * dim + i];
          ss += rres[r * dim + i] * rres[r * dim + i];
        }
        double inv = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++)
          ref[r * dim + i] = rres[r * dim + i] * inv * wv[i];
      }
      double e1 = nerr(out, ref, n), e2 = nerr(res, rres, n);
      check(e1 < 1e-6 && e2 < 1e-7, "add_rmsnorm %s dim=%d nerr out=%.2e residual=%.2e",
            lm_dtype_name(k_dtypes[d]), dim, e1, e2);
      free((void *)w.data);
      free(wv);
      free(ref);
      free(rres);
      c->ops->act_free(c->st, x);
      c->ops->act_free(c->st, out);
      c->ops->act_free(c->st, res);
      c->ops->act_free(c->st, delta);
    }
}

static void test_swiglu_gather_embed(struct ctx *c) {
  int rows = 7, dim = 300;
  size_t n = (size_t)rows * dim;
  float *g = act(c, n), *u = act(c, n), *out = act(c, n);
  double *ref = malloc(n * sizeof(double));
  fill(g, n, 8.0f);
  fill(u, n, 2.0f);
  c->ops->swiglu(c->st, out, g, u, rows, dim);
  for (size_t i = 0; i < n; i++)
    ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
  double e = nerr(out, ref, n);
  check(e < 1e-6, "swiglu rows=%d dim=%d nerr=%.2e (< 1e-6)", rows, dim, e);

  int32_t idx[4] = {6, 0, 3, 6};
  c->ops->gather_rows(c->st, out, g, idx, 4, dim);
  int same = 1;
  for (int i = 0; i < 4; i++)
    same &= memcmp(out + (size_t)i * dim, g + (size_t)idx[i] * dim, (size_t)dim * 4) == 0;
  check(same, "gather_rows copies the named rows");

  for (int d = 0; d < 3; d++) {
    int vocab = 50, hidden = 72;
    float *tv = malloc((size_t)vocab * hidden * sizeof(float));
    fill(tv, (size_t)vocab * hidden, 1.0f);
    struct lm_tensor t = make_tensor(k_dtypes[d], tv, vocab, hidden);
    int32_t ids[5] = {3, 49, 0, 3, 17};
    struct lm_batch b = {.n_tokens = 5, .token_ids = ids};
    float *x = act(c, (size_t)5 * hidden);
    c->ops->embed(c->st, x, &t, &b);
    same = 1;
    for (int i = 0; i < 5; i++)
      same &= memcmp(x + (size_t)i * hidden, tv + (size_t)ids[i] * hidden, (size_t)hidden * 4) == 0;
    check(same, "embed %s gathers and widens rows exactly", lm_dtype_name(k_dtypes[d]));
    free((void *)t.data);
    free(tv);
    c->ops->act_free(c->st, x);
  }
  free(ref);
  c->ops->act_free(c->st, g);
  c->ops->act_free(c->st, u);
  c->ops->act_free(c->st, out);
}

static void test_rope(struct ctx *c) {
  int hds[] = {64, 128};
  for (int hi = 0; hi < 2; hi++) {
    int hd = hds[hi], nh = 4, nkv = 2, t_n = 6;
    int32_t pos[6] = {0, 1, 17, 255, 1000, 4095};
    float inv[64];
    for (int i = 0; i < hd / 2; i++)
      inv[i] = (float)pow(1000000.0, -2.0 * i / hd);
    size_t nq = (size_t)t_n * nh * hd, nk = (size_t)t_n * nkv * hd;
    float *q = act(c, nq), *k = act(c, nk), *q0 = malloc(nq * 4), *k0 = malloc(nk * 4);
    double *rq = malloc(nq * sizeof(double)), *rk = malloc(nk * sizeof(double));
    fill(q, nq, 1.0f);
    fill(k, nk, 1.0f);
    memcpy(q0, q, nq * 4);
    memcpy(k0, k, nk * 4);
    struct lm_batch b = {.n_tokens = t_n, .positions = pos};
    struct lm_rope rope = {.head_dim = hd, .inv_freq = inv};
    c->ops->rope(c->st, q, k, &b, &rope, nh, nkv);
    for (int pass = 0; pass < 2; pass++) {
      int heads = pass ? nkv : nh;
      const float *src = pass ? k0 : q0;
      double *dst = pass ? rk : rq;
      for (int t = 0; t < t_n; t++)
        for (int h = 0; h < heads; h++)
          for (int i = 0; i < hd / 2; i++) {
            /* the angle as HF forms it (an f32 product), then exact cos/sin */
            double ang = (double)((float)pos[t] * inv[i]);
            size_t o = ((size_t)t * heads + h) * hd;
            double a = src[o + i], bb = src[o + i + hd / 2];
            dst[o + i] = a * cos(ang) - bb * sin(ang);
            dst[o + i + hd / 2] = bb * cos(ang) + a * sin(ang);
          }
    }
    double eq = nerr(q, rq, nq), ek = nerr(k, rk, nk);
    check(eq < 1e-6 && ek < 1e-6, "rope head_dim=%d nerr q=%.2e k=%.2e (< 1e-6)", hd, eq, ek);
    free(q0);
    free(k0);
    free(rq);
    free(rk);
    c->ops->act_free(c->st, q);
    c->ops->act_free(c->st, k);
  }
}

/* ---- kv_write + attention ---------------------------------------------- */

/* A sequence's whole history, kept by position outside the cache. */
struct seq {
  int n_ctx_before, n_new; /* tokens cached already, tokens in this step */
  int32_t blocks[128];     /* its block table */
  float *k, *v;            /* [n_ctx_before + n_new, n_kv, hd] */
};

struct attn_case {
  int hd, bs, n_kv, group;
  enum lm_dtype dtype; /* of the cache */
};

/* Builds the batch of `n` sequences (indices in which[]), each
 * contributing either its cached prefix (prefix = 1) or this step's tokens. */
struct built {
  struct lm_batch b;
  int32_t *tok, *pos, *slot, *qs, *ctx, *tables;
  float *k, *v; /* [T, n_kv, hd] */
};

static void build(struct built *o, struct ctx *c, struct seq *seqs, const int *which, int n,
                  int prefix, int bs, int n_kv, int hd, int max_blocks) {
  int t_n = 0;
  for (int i = 0; i < n; i++)
    t_n += prefix ? seqs[which[i]].n_ctx_before : seqs[which[i]].n_new;
  memset(o, 0, sizeof(*o));
  o->tok = calloc((size_t)t_n + 1, 4);
  o->pos = calloc((size_t)t_n + 1, 4);
  o->slot = calloc((size_t)t_n + 1, 4);
  o->qs = calloc((size_t)n + 1, 4);
  o->ctx = calloc((size_t)n, 4);
  o->tables = calloc((size_t)n * max_blocks, 4);
  o->k = act(c, (size_t)(t_n + 1) * n_kv * hd);
  o->v = act(c, (size_t)(t_n + 1) * n_kv * hd);
  int t = 0;
  for (int i = 0; i < n; i++) {
    struct seq *s = &seqs[which[i]];
    int p0 = prefix ? 0 : s->n_ctx_before,
        p1 = prefix ? s->n_ctx_before : s->n_ctx_before + s->n_new;
    o->qs[i] = t;
    o->ctx[i] = p1;
    memcpy(o->tables + (size_t)i * max_blocks, s->blocks, (size_t)max_blocks * 4);
    for (int p = p0; p < p1; p++, t++) {
      o->pos[t] = p;
      o->slot[t] = s->blocks[p / bs] * bs + p % bs;
      memcpy(o->k + (size_t)t * n_kv * hd, s->k + (size_t)p * n_kv * hd, (size_t)n_kv * hd * 4);
      memcpy(o->v + (size_t)t * n_kv * hd, s->v + (size_t)p * n_kv * hd, (size_t)n_kv * hd * 4);
    }
  }
  o->qs[n] = t;
  o->b = (struct lm_batch){.n_tokens = t_n,
                           .n_seqs = n,
                           .token_ids = o->tok,
                           .positions = o->pos,
                           .slot_mapping = o->slot,
                           .q_start = o->qs,
                           .ctx_len = o->ctx,
                           .block_tables = o->tables,
                           .max_blocks = max_blocks};
}

static void built_free(struct built *o, struct ctx *c) {
  free(o->tok);
  free(o->pos);
  free(o->slot);
  free(o->qs);
  free(o->ctx);
  free(o->tables);
  c->ops->act_free(c->st, o->k);
  c->ops->act_free(c->st, o->v);
}

/* x as the cache of type dt holds it */
static double kv_held(float x, enum lm_dtype dt) {
  if (dt == LM_DTYPE_F8E5M2) return lm_e5m2_to_f32(lm_f32_to_e5m2(x));
  return dt == LM_DTYPE_BF16 ? lm_bf16_to_f32(lm_f32_to_bf16(x)) : x;
}

static void ref_attention(double *out, const float *q, struct seq *s, int pos, int nh, int n_kv,
                          int hd, float scale, enum lm_dtype dt) {
  int group = nh / n_kv;
  double *w = malloc(((size_t)pos + 1) * sizeof(double));
  for (int h = 0; h < nh; h++) {
    int g = h / group;
    double mx = -INFINITY, sum = 0;
    for (int p = 0; p <= pos; p++) {
      double acc = 0;
      for (int d = 0; d < hd; d++)
        acc += (double)q[h * hd + d] * kv_held(s->k[((size_t)p * n_kv + g) * hd + d], dt);
      w[p] = acc * scale;
      mx = w[p] > mx ? w[p] : mx;
    }
    for (int p = 0; p <= pos; p++)
      sum += (w[p] = exp(w[p] - mx));
    for (int d = 0; d < hd; d++) {
      double acc = 0;
      for (int p = 0; p <= pos; p++)
        acc += w[p] * kv_held(s->v[((size_t)p * n_kv + g) * hd + d], dt);
      out[h * hd + d] = acc / sum;
    }
  }
  free(w);
}

/* Every slot of the cache to NaN, as blocks freed by a request whose K/V
 * went NaN would hold: no key past a row's own may reach its output. */
static void kv_fill_nan(void *kv, const struct lm_kv_shape *shape) {
  size_t n = (size_t)shape->n_layers * 2 * shape->n_blocks * shape->n_kv_heads * shape->block_size *
             shape->head_dim;
  for (size_t i = 0; i < n; i++)
    if (shape->dtype == LM_DTYPE_BF16)
      ((uint16_t *)kv)[i] = 0x7fc0;
    else if (shape->dtype == LM_DTYPE_F8E5M2)
      ((uint8_t *)kv)[i] = 0x7f;
    else
      ((float *)kv)[i] = NAN;
}

/* kv_write into a bf16 or e5m2 cache stores what lm_f32_to_bf16 or
 * lm_f32_to_e5m2 gives, on every kernel path: values at and around
 * halfway points, below 2^-14, near and past e5m2's largest finite,
 * infinities and NaN. */
static void test_kv_write_rounding(struct ctx *c, enum lm_dtype dt) {
  enum { HD = 32, N_KV = 2, T = 3, BS = 16 };
  struct lm_kv_shape shape = {.n_layers = 1,
                              .n_blocks = 2,
                              .block_size = BS,
                              .n_kv_heads = N_KV,
                              .head_dim = HD,
                              .dtype = dt};
  static const float special[] = {0.0f,       -0.0f,     1.125f,    -1.375f,  1.0625f,
                                  1.0078125f, 3e-5f,     -7.7e-6f,  2.3e-5f,  1e-9f,
                                  1e-41f,     57343.0f,  -61439.0f, 61440.0f, 1e30f,
                                  INFINITY,   -INFINITY, NAN,       5.0e-5f,  -6.1035e-5f};
  int n = T * N_KV * HD, same = 1;
  float *k = act(c, (size_t)n), *v = act(c, (size_t)n);
  fill(k, (size_t)n, 3.0f);
  fill(v, (size_t)n, 0.01f);
  for (int i = 0; i < (int)(sizeof(special) / sizeof(special[0])); i++) {
    k[i * 5 % n] = special[i];
    v[i * 7 % n] = special[i];
  }
  void *kv = NULL;
  char err[LM_ERR_LEN];
  if (c->ops->kv_create(c->st, &shape, &kv, err) != 0) {
    check(0, "kv_create %s: %s", lm_dtype_name(dt), err);
    return;
  }
  int32_t slots[T] = {0, 17, 31}, pos[T] = {0, 1, 2};
  struct lm_batch b = {.n_tokens = T, .positions = pos, .slot_mapping = slots};
  c->ops->kv_write(c->st, kv, &shape, 0, k, v, &b);
  size_t layer = (size_t)shape.n_blocks * N_KV * BS * HD;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < N_KV; h++)
      for (int d = 0; d < HD; d++) {
        size_t region = ((size_t)h * shape.n_blocks + slots[t] / BS) * BS * HD;
        size_t ki = region + ((size_t)(d / 2) * BS + slots[t] % BS) * 2 + d % 2,
               vi = layer + region +
                    lm_cpu_v_index(slots[t] % BS, d, HD, lm_cpu_attn_amx(c->st, &shape));
        int x = (t * N_KV + h) * HD + d;
        if (dt == LM_DTYPE_BF16)
          same &= ((const uint16_t *)kv)[ki] == lm_f32_to_bf16(k[x]) &&
                  ((const uint16_t *)kv)[vi] == lm_f32_to_bf16(v[x]);
        else
          same &= ((const uint8_t *)kv)[ki] == lm_f32_to_e5m2(k[x]) &&
                  ((const uint8_t *)kv)[vi] == lm_f32_to_e5m2(v[x]);
      }
  check(same, "kv_write %s: every stored element is the f32 rounded by lm.h", lm_dtype_name(dt));
  c->ops->kv_free(c->st, kv);
  c->ops->act_free(c->st, k);
  c->ops->act_free(c->st, v);
}

/* The step's attention (layer 1) with the same contexts cached in blocks
 * of bs2 tokens, each sequence's blocks consecutive, in reverse order or
 * (ascending) in order, into out. */
static int attention_in_blocks(struct ctx *c, const struct attn_case *ac, struct seq *seqs,
                               int n_seqs, int bs2, int ascending, const float *q, float *out) {
  int n_kv = ac->n_kv, hd = ac->hd, max_blocks = (100 + bs2 - 1) / bs2 + 1;
  struct lm_kv_shape shape = {.n_layers = 2,
                              .n_blocks = n_seqs * max_blocks,
                              .block_size = bs2,
                              .n_kv_heads = n_kv,
                              .head_dim = hd,
                              .dtype = ac->dtype};
  int32_t saved[8][128], all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  char err[LM_ERR_LEN];
  void *kv = NULL;
  if (n_seqs > 8 || max_blocks > 128 || c->ops->kv_create(c->st, &shape, &kv, err) != 0) return -1;
  kv_fill_nan(kv, &shape);
  for (int s = 0; s < n_seqs; s++) {
    memcpy(saved[s], seqs[s].blocks, sizeof(saved[s]));
    for (int i = 0; i < max_blocks; i++)
      seqs[s].blocks[i] = s * max_blocks + (ascending ? i : max_blocks - 1 - i);
  }
  struct built pre, step;
  build(&pre, c, seqs, all, n_seqs, 1, bs2, n_kv, hd, max_blocks);
  build(&step, c, seqs, all, n_seqs, 0, bs2, n_kv, hd, max_blocks);
  c->ops->kv_write(c->st, kv, &shape, 1, pre.k, pre.v, &pre.b);
  c->ops->kv_write(c->st, kv, &shape, 1, step.k, step.v, &step.b);
  c->ops->attention(c->st, out, q, kv, &shape, 1, &step.b, n_kv * ac->group,
                    1.0f / sqrtf((float)hd));
  built_free(&pre, c);
  built_free(&step, c);
  for (int s = 0; s < n_seqs; s++)
    memcpy(seqs[s].blocks, saved[s], sizeof(saved[s]));
  c->ops->kv_free(c->st, kv);
  return 0;
}

static void test_attention_case(struct ctx *c, const struct attn_case *ac) {
  enum { NSEQ = 4 };
  int hd = ac->hd, bs = ac->bs, n_kv = ac->n_kv, nh = n_kv * ac->group, layer = 1;
  /* 0: prefill chunk continuing a context; 1: decode; 2: fresh prefill;
   * 3: decode at a block boundary */
  int before[NSEQ] = {40, 99, 0, 2 * bs}, news[NSEQ] = {25, 1, 17, 1};
  /* enough blocks for 100 tokens a sequence; a pool size prime to 7 so
   * the scrambled hand-out below gives every block once */
  int max_blocks = (100 + bs - 1) / bs + 1, n_blocks = NSEQ * max_blocks + 8;
  n_blocks += n_blocks % 7 == 0;
  struct lm_kv_shape shape = {.n_layers = 2,
                              .n_blocks = n_blocks,
                              .block_size = bs,
                              .n_kv_heads = n_kv,
                              .head_dim = hd,
                              .dtype = ac->dtype};
  const char *dn = lm_dtype_name(ac->dtype);
  /* AMX tiles hold the queries and the probabilities to about 2^-16 */
  int amx = lm_cpu_attn_amx(c->st, &shape);
  double tol = amx ? ATTN_TOL_AMX : 1e-5;
  void *kv = NULL;
  char err[LM_ERR_LEN];
  struct seq seqs[NSEQ];
  float scale = 1.0f / sqrtf((float)hd);
  int rc = c->ops->kv_create(c->st, &shape, &kv, err);
  if (rc != 0) {
    check(0, "kv_create: %s", err);
    return;
  }
  kv_fill_nan(kv, &shape);
  /* blocks handed out in a scrambled order so tables are not contiguous */
  int next = 0;
  for (int s = 0; s < NSEQ; s++) {
    int total = before[s] + news[s];
    seqs[s].n_ctx_before = before[s];
    seqs[s].n_new = news[s];
    for (int i = 0; i < max_blocks; i++)
      seqs[s].blocks[i] = (next++ * 7) % shape.n_blocks;
    seqs[s].k = malloc((size_t)total * n_kv * hd * 4);
    seqs[s].v = malloc((size_t)total * n_kv * hd * 4);
    fill(seqs[s].k, (size_t)total * n_kv * hd, 2.0f);
    fill(seqs[s].v, (size_t)total * n_kv * hd, 1.0f);
  }
  /* earlier steps: the cached prefixes */
  int all[NSEQ] = {0, 1, 2, 3};
  struct built pre, step;
  build(&pre, c, seqs, all, NSEQ, 1, bs, n_kv, hd, max_blocks);
  c->ops->kv_write(c->st, kv, &shape, layer, pre.k, pre.v, &pre.b);
  /* layout check: K and V of seq 1 position 37, head n_kv-1 sit where
   * backend.h (the CPU's regions: [n_kv_heads][n_blocks]) and
   * lm_cpu_k_index say, rounded to the cache's type (bf16: to nearest
   * even): K transposed by 32-bit words, V [slot][head_dim] */
  {
    int p = 37, h = n_kv - 1, blk = seqs[1].blocks[p / bs], i = p % bs, same = 1;
    size_t region = ((size_t)h * shape.n_blocks + blk) * bs * hd,
           layer_elems = (size_t)shape.n_blocks * n_kv * bs * hd;
    size_t k_off = (size_t)layer * 2 * layer_elems + region, v_off = k_off + layer_elems;
    const float *ks = seqs[1].k + ((size_t)p * n_kv + h) * hd;
    const float *vs = seqs[1].v + ((size_t)p * n_kv + h) * hd;
    for (int d = 0; d < hd; d++) {
      /* K word w = d (f32) or the pair d / 2 (bf16, e5m2: even dim low)
       * of key i */
      size_t kd =
          ac->dtype == LM_DTYPE_F32 ? (size_t)d * bs + i : ((size_t)(d / 2) * bs + i) * 2 + d % 2;
      size_t vd = lm_cpu_v_index(i, d, hd, amx);
      if (ac->dtype == LM_DTYPE_F8E5M2)
        same &= ((uint8_t *)kv)[k_off + kd] == lm_f32_to_e5m2(ks[d]) &&
                ((uint8_t *)kv)[v_off + vd] == lm_f32_to_e5m2(vs[d]);
      else if (ac->dtype == LM_DTYPE_BF16)
        same &= ((uint16_t *)kv)[k_off + kd] == lm_f32_to_bf16(ks[d]) &&
                ((uint16_t *)kv)[v_off + vd] == lm_f32_to_bf16(vs[d]);
      else
        same &= ((float *)kv)[k_off + kd] == ks[d] && ((float *)kv)[v_off + vd] == vs[d];
    }
    check(same, "kv_write layout: K words transposed, V %s (%s hd=%d bs=%d)",
          amx ? "by pairs of keys" : "[slot][head_dim]", dn, hd, bs);
  }
  /* this step: a mixed batch */
  build(&step, c, seqs, all, NSEQ, 0, bs, n_kv, hd, max_blocks);
  int t_n = step.b.n_tokens;
  float *q = act(c, (size_t)t_n * nh * hd), *out = act(c, (size_t)t_n * nh * hd);
  float *out1 = act(c, (size_t)t_n * nh * hd);
  double *ref = malloc((size_t)t_n * nh * hd * sizeof(double));
  fill(q, (size_t)t_n * nh * hd, 1.0f);
  c->ops->kv_write(c->st, kv, &shape, layer, step.k, step.v, &step.b);
  c->ops->attention(c->st, out, q, kv, &shape, layer, &step.b, nh, scale);
  for (int s = 0; s < NSEQ; s++)
    for (int t = step.qs[s]; t < step.qs[s + 1]; t++)
      ref_attention(ref + (size_t)t * nh * hd, q + (size_t)t * nh * hd, &seqs[s], step.pos[t], nh,
                    n_kv, hd, scale, ac->dtype);
  double e = nerr(out, ref, (size_t)t_n * nh * hd);
  check(e < tol, "attention %s hd=%d bs=%d gqa=%d%s mixed prefill+decode nerr=%.2e (< %.0e)", dn,
        hd, bs, ac->group, amx ? " (amx)" : "", e, tol);
  /* the same sequences alone, and on one thread: bit-equal */
  int same_alone = 1;
  for (int s = 0; s < NSEQ; s++) {
    struct built one;
    int w1[1] = {s};
    build(&one, c, seqs, w1, 1, 0, bs, n_kv, hd, max_blocks);
    size_t off = (size_t)step.qs[s] * nh * hd, len = (size_t)one.b.n_tokens * nh * hd;
    c->ops->attention(c->st, out1, q + off, kv, &shape, layer, &one.b, nh, scale);
    same_alone &= memcmp(out1, out + off, len * 4) == 0;
    built_free(&one, c);
  }
  check(same_alone,
        "attention %s hd=%d bs=%d gqa=%d: each sequence alone bit-equals it in the batch", dn, hd,
        bs, ac->group);
  c->ops->attention(c->st1, out1, q, kv, &shape, layer, &step.b, nh, scale);
  check(memcmp(out1, out, (size_t)t_n * nh * hd * 4) == 0,
        "attention %s hd=%d bs=%d gqa=%d: 1 thread bit-equals default threads", dn, hd, bs,
        ac->group);
  /* keys are taken in chunks of positions, not blocks: another block size
   * (one that splits the 16-key vectors for blocks of 16, and blocks of one
   * key for blocks of 32) gives the same bits; with AMX tiles, which need
   * blocks of a multiple of 16, another such size (and a size that is not,
   * where the tiles do not apply) */
  int cands[] = {bs == 16 ? 40 : bs == 32 ? 1 : 16, 32, 16, 40}, bs2 = cands[0];
  for (int i = 0; i < 4; i++) {
    struct lm_kv_shape s2 = shape;
    s2.block_size = cands[i];
    if (cands[i] != bs && lm_cpu_attn_amx(c->st, &s2) == amx) {
      bs2 = cands[i];
      break;
    }
  }
  for (size_t i = 0; i < (size_t)t_n * nh * hd; i++)
    out1[i] = NAN;
  check(attention_in_blocks(c, ac, seqs, NSEQ, bs2, 0, q, out1) == 0 &&
            memcmp(out1, out, (size_t)t_n * nh * hd * 4) == 0,
        "attention %s hd=%d bs=%d gqa=%d: blocks of %d bit-equal blocks of %d", dn, hd, bs,
        ac->group, bs2, bs);
  /* a sequence's blocks one after another in the pool (as the pool hands
   * them out; on AMX tiles V is then read in place) against the scrambled
   * ones above */
  for (size_t i = 0; i < (size_t)t_n * nh * hd; i++)
    out1[i] = NAN;
  check(attention_in_blocks(c, ac, seqs, NSEQ, bs, 1, q, out1) == 0 &&
            memcmp(out1, out, (size_t)t_n * nh * hd * 4) == 0,
        "attention %s hd=%d bs=%d gqa=%d: consecutive blocks bit-equal scrambled ones", dn, hd, bs,
        ac->group);
  free(ref);
  c->ops->act_free(c->st, q);
  c->ops->act_free(c->st, out);
  c->ops->act_free(c->st, out1);
  built_free(&pre, c);
  built_free(&step, c);
  for (int s = 0; s < NSEQ; s++) {
    free(seqs[s].k);
    free(seqs[s].v);
  }
  c->ops->kv_free(c->st, kv);
}

static void test_attention(struct ctx *c) {
  static const struct attn_case cases[] = {
      {64, 16, 2, 1, LM_DTYPE_F32},
      {128, 16, 2, 2, LM_DTYPE_F32},
      {128, 32, 2, 4, LM_DTYPE_F32},
      {64, 32, 1, 4, LM_DTYPE_F32},
      {128, 16, 8, 2, LM_DTYPE_F32},
      {64, 16, 4, 8, LM_DTYPE_F32},
      /* groups above the 32-row tile: split into head tiles */
      {64, 16, 1, 64, LM_DTYPE_F32},
      {64, 16, 2, 40, LM_DTYPE_F32},
      /* a bf16 cache (widened in even/odd halves on AVX-512; head_dim 48
       * is not a multiple of 32 and takes the portable path) */
      {64, 16, 2, 1, LM_DTYPE_BF16},
      {128, 16, 8, 2, LM_DTYPE_BF16},
      {128, 32, 2, 4, LM_DTYPE_BF16},
      {256, 16, 1, 8, LM_DTYPE_BF16},
      {48, 16, 2, 2, LM_DTYPE_BF16},
      {64, 16, 2, 40, LM_DTYPE_BF16},
      /* blocks of fewer than 16 keys, and of 16 and a part: the AVX-512
       * path's masked key loads */
      {128, 8, 2, 2, LM_DTYPE_BF16},
      {64, 4, 2, 2, LM_DTYPE_F32},
      {64, 24, 2, 4, LM_DTYPE_F32},
      {128, 24, 8, 2, LM_DTYPE_BF16},
      /* an e5m2 cache (K words of 16 bits; head_dim 32 is not a multiple
       * of 64 and takes the portable path) */
      {64, 16, 2, 1, LM_DTYPE_F8E5M2},
      {128, 16, 8, 2, LM_DTYPE_F8E5M2},
      {128, 32, 2, 4, LM_DTYPE_F8E5M2},
      {256, 16, 1, 8, LM_DTYPE_F8E5M2},
      {32, 16, 2, 2, LM_DTYPE_F8E5M2},
      {192, 8, 2, 40, LM_DTYPE_F8E5M2},
      {128, 24, 8, 2, LM_DTYPE_F8E5M2},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    test_attention_case(c, &cases[i]);
}

/* ---- sample ------------------------------------------------------------ */

static void test_sample(struct ctx *c) {
  int n = 5, vocab = 1000;
  float *logits = act(c, (size_t)n * vocab);
  struct lm_sampling greedy;
  struct lm_sample_row rows[5];
  struct lm_sample_result res[5];
  char err[LM_ERR_LEN];
  memset(&greedy, 0, sizeof(greedy));
  fill(logits, (size_t)n * vocab, 5.0f);
  int ok = 1;
  for (int i = 0; i < n; i++) {
    rows[i] = (struct lm_sample_row){.params = &greedy, .position = (uint64_t)i};
    logits[(size_t)i * vocab + (i * 211) % vocab] = 100.0f;
  }
  int rc = c->ops->sample(c->st, logits, n, vocab, rows, res, err);
  for (int i = 0; i < n; i++)
    ok &= res[i].id == (i * 211) % vocab;
  check(rc == 0 && ok, "sample: greedy rows pick their argmax");
  c->ops->act_free(c->st, logits);
}

static void run_suite(const char *isa) {
  struct ctx c = {.ops = &lm_backend_cpu_ops};
  struct lm_backend_config cfg2 = {.n_threads = 2}, cfg1 = {.n_threads = 1};
  char err[LM_ERR_LEN];
  g_isa = isa;
  if (c.ops->create(&cfg2, &c.st, err) != 0 || c.ops->create(&cfg1, &c.st1, err) != 0) {
    check(0, "create: %s", err);
    return;
  }
  test_matmul(&c);
  test_matmul_invariance(&c);
  test_norms(&c);
  test_swiglu_gather_embed(&c);
  test_rope(&c);
  test_attention(&c);
  test_kv_write_rounding(&c, LM_DTYPE_BF16);
  test_kv_write_rounding(&c, LM_DTYPE_F8E5M2);
  test_sample(&c);
  c.ops->destroy(c.st);
  c.ops->destroy(c.st1);
}

/* f32 -> e5m2: every finite code round-trips, a value halfway between
 * two codes goes to the even one, anything from the largest finite up
 * saturates, NaN stays NaN. */
static void test_e5m2(void) {
  int trip = 1, even = 1, nan = 1;
  for (int b = 0; b < 256; b++) {
    int exp = (b >> 2) & 31;
    if (exp == 31) {
      nan &= b % 4 == 0 || isnan(lm_e5m2_to_f32((uint8_t)b));
      continue;
    }
    float x = lm_e5m2_to_f32((uint8_t)b);
    trip &= lm_f32_to_e5m2(x) == b;
    if ((b & 0x7f) == 0x7b) continue; /* the largest finite: no next code */
    float y = lm_e5m2_to_f32((uint8_t)(b + 1)), mid = (x + y) / 2;
    int want = b % 2 ? b + 1 : b;
    even &= lm_f32_to_e5m2(mid) == want && lm_f32_to_e5m2(nextafterf(mid, 0.0f)) == b &&
            lm_f32_to_e5m2(nextafterf(mid, 2 * y)) == b + 1;
  }
  check(trip, "e5m2: every finite code round-trips through f32");
  check(even, "e5m2: halfway rounds to even, either side to the nearer code");
  check(lm_f32_to_e5m2(57344.0f) == 0x7b && lm_f32_to_e5m2(61440.0f) == 0x7b &&
            lm_f32_to_e5m2(1e30f) == 0x7b && lm_f32_to_e5m2(INFINITY) == 0x7b &&
            lm_f32_to_e5m2(-INFINITY) == 0xfb,
        "e5m2: from 57344 up (infinity too) saturates to the largest finite");
  check(nan && isnan(lm_e5m2_to_f32(lm_f32_to_e5m2(NAN))), "e5m2: NaN stays NaN");
}

int main(void) {
  test_e5m2();
  lm_backend *be = NULL;
  char err[LM_ERR_LEN];
  struct lm_backend_config cfg = {0};
  int rc = lm_backend_create("cpu", &cfg, &be, err);
  check(rc == 0 && be && strcmp(be->ops->name, "cpu") == 0, "lm_backend_create(\"cpu\")");
  lm_backend_destroy(be);
  rc = lm_backend_create("auto", &cfg, &be, err);
  check(rc == 0 && be, "lm_backend_create(\"auto\") falls back to cpu");
  lm_backend_destroy(be);
  be = NULL;
  rc = lm_backend_create("cuda", &cfg, &be, err);
  check(rc == LM_EUNSUP && !be, "lm_backend_create(\"cuda\") is LM_EUNSUP: %s", err);

  unsetenv("LM_CPU_ISA");
  {
    void *st = NULL;
    if (lm_backend_cpu_ops.create(&cfg, &st, err) == 0)
      printf("# native suite: bf16 matmuls and attention %s\n",
             ((struct lm_cpu *)st)->amx ? "on AMX tiles"
                                        : "on AVX-512 or scalar code (no AMX here)");
    lm_backend_cpu_ops.destroy(st);
  }
  run_suite("native");
  /* both AVX-512 bf16 paths, whichever the CPU picks by default */
  setenv("LM_CPU_ISA", "avx512", 1);
  run_suite("avx512");
  if (__builtin_cpu_supports("avx512bf16")) {
    setenv("LM_CPU_ISA", "bf16dot", 1);
    run_suite("bf16dot");
  } else {
    printf("# bf16dot suite skipped: the CPU has no AVX512_BF16\n");
  }
  setenv("LM_CPU_ISA", "scalar", 1);
  run_suite("scalar");
  printf("# %d checks, %d failed\n", g_checks, g_failed);
  return g_failed ? 1 : 0;
}
