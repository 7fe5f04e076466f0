/* backend_cuda.c - the CUDA backend: the ops of backend.h over the kernels
 * in kernels/, driven from plain C (no CUDA header here: the kernels' .cuh
 * headers are plain C declarations).
 *
 * Every op is queued on one stream and returns; sample, the *_read ops and
 * sync wait for the stream and report the first failure, including one an
 * op could not return (a scratch buffer that could not grow is remembered
 * in st->rc and reported there).
 *
 * Memory: weights are copied once at load, matrices as bf16 (converted
 * from f16 or f32 checkpoints), norm weights and biases as f32. Each
 * layer's q/k/v weights sit side by side in one allocation, as do gate and
 * up, so each group is one GEMM (matmul_n). Activations and the KV pool are
 * bf16, logits f32. The batch description of a step goes to the device in
 * one copy (begin_step). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/sampler.h"
#include "kernels/attention.cuh"
#include "kernels/cuda_device.cuh"
#include "kernels/gemm.cuh"
#include "kernels/kv_cache.cuh"
#include "kernels/norm.cuh"
#include "kernels/rope.cuh"
#include "kernels/rows.cuh"
#include "kernels/sample.cuh"

/* GEMM algorithms are pinned for row counts up to this at load (a larger
 * step re-checks the same algorithm for its row count). */
#define LM_CUDA_PLAN_MAX_M 8192

/* A growable device or pinned host buffer. */
struct lm_cuda_buf {
  void *p;
  size_t bytes;
};

/* The step's batch description on the device (one copy from staging). */
struct lm_cuda_step {
  int32_t *token_ids, *positions, *slot_mapping; /* [T] */
  int32_t *seq_of_token;                         /* [T] */
  int32_t *q_start;                              /* [S + 1] */
  int32_t *block_tables;                         /* [S, max_blocks] */
  int32_t *logit_rows;                           /* [n_logits] */
  const int32_t *host_logit_rows;                /* the runner's array, to recognise it */
  int n_logits;
  int max_q_len, max_ctx_len;
};

struct lm_cuda {
  void *stream;
  lm_cuda_gemm *gemm;
  float memory_utilization;
  int rc; /* a failure an op could not return, reported at the next wait */
  char err[LM_ERR_LEN];

  /* weights: device allocations and the tensors whose dev they back */
  void **allocs;
  int n_allocs, cap_allocs;
  struct lm_tensor **loaded;
  int n_loaded, cap_loaded;
  size_t weight_bytes;
  int widest_f32;               /* widest GEMM whose output goes through cu->f32 */
  int n_heads, head_dim, vocab; /* of the loaded model, for workspace sizes */
  struct {
    int N, K, out_f32;
  } shapes[8]; /* the model's GEMMs, planned for planned_m rows */
  int n_shapes, planned_m;

  struct lm_cuda_buf stage;     /* pinned: the step's batch, sample rows */
  struct lm_cuda_buf batch;     /* device: the step's batch arrays */
  struct lm_cuda_buf f32;       /* device: fused GEMM outputs [T, N] f32 */
  struct lm_cuda_buf attn_ws;   /* device: attention split partials */
  struct lm_cuda_buf sample_ws; /* device: sampler working rows */
  struct lm_cuda_buf sample_in; /* device: sample rows and id lists */
  struct lm_cuda_buf sample_out;
  struct lm_cuda_buf host_out; /* pinned: sample results */
  struct lm_cuda_buf gather;   /* device: gather indices not from the step */
  struct lm_cuda_step step;
  float rope_host[LM_CUDA_ATTN_MAX_HEAD_DIM / 2]; /* inv_freq as last uploaded */
  float *rope_dev;                                /* [head_dim / 2] */
  int rope_n;
};

/* ---- errors and buffers ---------------------------------------------- */

static void fail(struct lm_cuda *cu, int rc, const char *what) {
  if (cu->rc != LM_OK) return; /* keep the first */
  cu->rc = lm_errf(cu->err, rc, "cuda: %s", what);
}

/* Waits for the stream; then reports (and forgets) a failure an op
 * remembered, so one failed step does not fail the ones after it. A CUDA
 * error that broke the context stays: the runtime keeps it sticky. */
static int wait_stream(struct lm_cuda *cu, char *err) {
  char why[LM_ERR_LEN];
  int sync_rc = lm_cuda_sync(cu->stream, why, sizeof(why));
  if (cu->rc != LM_OK) {
    int rc = lm_errf(err, cu->rc, "%s", cu->err);
    cu->rc = LM_OK;
    return rc;
  }
  if (sync_rc != 0) return lm_errf(err, LM_EIO, "cuda: %s", why);
  return LM_OK;
}

/* Device scratch grows with the stream idle: queued kernels may still use
 * the old buffer. */
static int grow_dev(struct lm_cuda *cu, struct lm_cuda_buf *b, size_t bytes) {
  if (bytes <= b->bytes) return LM_OK;
  bytes += bytes / 4;
  char why[LM_ERR_LEN];
  if (b->p && lm_cuda_sync(cu->stream, why, sizeof(why)) != 0) fail(cu, LM_EIO, why);
  void *p = lm_cuda_malloc(bytes);
  if (!p) return LM_ENOMEM;
  lm_cuda_free(b->p);
  b->p = p;
  b->bytes = bytes;
  return LM_OK;
}

/* Pinned host buffers are only grown with the stream idle (callers wait
 * first), since a queued copy may still read the old one. */
static int grow_host(struct lm_cuda_buf *b, size_t bytes) {
  if (bytes <= b->bytes) return LM_OK;
  bytes += bytes / 4;
  void *p = lm_cuda_host_alloc(bytes);
  if (!p) return LM_ENOMEM;
  lm_cuda_host_free(b->p);
  b->p = p;
  b->bytes = bytes;
  return LM_OK;
}

static void buf_free_dev(struct lm_cuda_buf *b) {
  lm_cuda_free(b->p);
  b->p = NULL;
  b->bytes = 0;
}

static void buf_free_host(struct lm_cuda_buf *b) {
  lm_cuda_host_free(b->p);
  b->p = NULL;
  b->bytes = 0;
}

/* ---- create / destroy ------------------------------------------------ */

static void lm_cuda_be_destroy(void *st) {
  struct lm_cuda *cu = st;
  if (!cu) return;
  if (cu->stream) lm_cuda_sync(cu->stream, NULL, 0);
  for (int i = 0; i < cu->n_loaded; i++)
    cu->loaded[i]->dev = NULL;
  for (int i = 0; i < cu->n_allocs; i++)
    lm_cuda_free(cu->allocs[i]);
  free(cu->allocs);
  free(cu->loaded);
  struct lm_cuda_buf *dev[] = {&cu->batch,     &cu->f32,        &cu->attn_ws, &cu->sample_ws,
                               &cu->sample_in, &cu->sample_out, &cu->gather};
  for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
    buf_free_dev(dev[i]);
  buf_free_host(&cu->stage);
  buf_free_host(&cu->host_out);
  lm_cuda_free(cu->rope_dev);
  lm_cuda_gemm_free(cu->gemm);
  lm_cuda_stream_destroy(cu->stream);
  free(cu);
}

static int lm_cuda_be_create(const struct lm_backend_config *cfg, void **st, char *err) {
  char why[LM_ERR_LEN] = "";
  struct lm_cuda *cu = calloc(1, sizeof(*cu));
  *st = NULL;
  if (!cu) return lm_errf(err, LM_ENOMEM, "cuda: out of memory");
  cu->memory_utilization =
      cfg && cfg->gpu_memory_utilization > 0 ? cfg->gpu_memory_utilization : 0.9f;
  if (lm_cuda_stream_create(&cu->stream, why, sizeof(why)) != 0) {
    lm_cuda_be_destroy(cu);
    return lm_errf(err, LM_EIO, "cuda: cannot start: %s", why);
  }
  if (lm_cuda_gemm_create(&cu->gemm, cfg ? cfg->gemm : NULL, why, sizeof(why)) != 0) {
    lm_cuda_be_destroy(cu);
    return lm_errf(err, LM_EUNSUP, "cuda: %s", why);
  }
  *st = cu;
  return LM_OK;
}

/* ---- weights ----------------------------------------------------------- */

/* Remembers a device allocation (dev may be NULL: none) and the tensors
 * pointing into it. */
static int track(struct lm_cuda *cu, void *dev, struct lm_tensor **ts, int n) {
  /* both lists grow before either changes, so a failure leaves neither half-done */
  if (cu->n_allocs == cu->cap_allocs) {
    int cap = cu->cap_allocs ? 2 * cu->cap_allocs : 64;
    void **a = realloc(cu->allocs, (size_t)cap * sizeof(*a));
    if (!a) return LM_ENOMEM;
    cu->allocs = a;
    cu->cap_allocs = cap;
  }
  if (cu->n_loaded + n > cu->cap_loaded) {
    int cap = cu->cap_loaded ? 2 * cu->cap_loaded : 64;
    while (cap < cu->n_loaded + n)
      cap *= 2;
    struct lm_tensor **l = realloc(cu->loaded, (size_t)cap * sizeof(*l));
    if (!l) return LM_ENOMEM;
    cu->loaded = l;
    cu->cap_loaded = cap;
  }
  if (dev) cu->allocs[cu->n_allocs++] = dev;
  for (int i = 0; i < n; i++)
    cu->loaded[cu->n_loaded++] = ts[i];
  return LM_OK;
}

static size_t tensor_elems(const struct lm_tensor *t) {
  size_t n = 1;
  for (int i = 0; i < t->n_dims; i++)
    n *= (size_t)t->shape[i];
  return n;
}

/* Matrices go to the device as bf16, vectors (norm weights, biases) as f32. */
static size_t dev_elem_bytes(const struct lm_tensor *t) {
  return t->n_dims >= 2 ? 2 : 4;
}

/* Copies t into dev (its device form), converting through a pinned
 * staging buffer in chunks. */
static int upload(struct lm_cuda *cu, void *dev, const struct lm_tensor *t, char *err) {
  const size_t chunk = (size_t)8 << 20; /* elements per copy */
  size_t n = tensor_elems(t), out_bytes = dev_elem_bytes(t);
  char why[LM_ERR_LEN];
  int rc;
  if ((rc = wait_stream(cu, err)) != LM_OK) return rc;
  if (grow_host(&cu->stage, chunk * 4) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "cuda: no pinned memory for weight upload");
  for (size_t at = 0; at < n; at += chunk) {
    size_t m = n - at < chunk ? n - at : chunk;
    for (size_t i = 0; i < m; i++) {
      float v;
      switch (t->dtype) {
      case LM_DTYPE_BF16: v = lm_bf16_to_f32(((const uint16_t *)t->data)[at + i]); break;
      case LM_DTYPE_F16: v = lm_f16_to_f32(((const uint16_t *)t->data)[at + i]); break;
      default: v = ((const float *)t->data)[at + i]; break;
      }
      if (out_bytes == 2)
        ((uint16_t *)cu->stage.p)[i] = lm_f32_to_bf16(v);
      else
        ((float *)cu->stage.p)[i] = v;
    }
    if (lm_cuda_h2d((char *)dev + at * out_bytes, cu->stage.p, m * out_bytes, cu->stream, why,
                    sizeof(why)) != 0 ||
        lm_cuda_sync(cu->stream, why, sizeof(why)) != 0)
      return lm_errf(err, LM_EIO, "cuda: weight upload: %s", why);
  }
  return LM_OK;
}

/* Uploads ts[0..n) side by side into one allocation (a fused group shares
 * its K: the rows stack). On failure nothing of the group stays. */
static int load_group(struct lm_cuda *cu, struct lm_tensor **ts, int n, char *err) {
  size_t bytes = 0;
  for (int i = 0; i < n; i++)
    bytes += tensor_elems(ts[i]) * dev_elem_bytes(ts[i]);
  char *dev = lm_cuda_malloc(bytes);
  if (!dev)
    return lm_errf(err, LM_ENOMEM,
                   "cuda: out of device memory loading weights (%zu bytes loaded, %zu more)",
                   cu->weight_bytes, bytes);
  if (track(cu, dev, ts, n) != LM_OK) {
    lm_cuda_free(dev);
    return lm_errf(err, LM_ENOMEM, "cuda: out of memory");
  }
  char *at = dev;
  for (int i = 0; i < n; i++) {
    int rc = upload(cu, at, ts[i], err);
    if (rc != LM_OK) {
      /* the group was tracked last: take it back off both lists */
      cu->n_allocs--;
      cu->n_loaded -= n;
      for (int j = 0; j < n; j++)
        ts[j]->dev = NULL;
      lm_cuda_free(dev);
      return rc;
    }
    ts[i]->dev = at;
    at += tensor_elems(ts[i]) * dev_elem_bytes(ts[i]);
  }
  cu->weight_bytes += bytes;
  return LM_OK;
}

/* Pins the algorithm for w's shape, choosing among the candidates on w itself. */
static int plan(struct lm_cuda *cu, const struct lm_tensor *w, int N, int out_f32, char *err) {
  char why[LM_ERR_LEN];
  int K = (int)w->shape[1];
  if (lm_cuda_gemm_plan(cu->gemm, N, K, out_f32, LM_CUDA_PLAN_MAX_M, w->dev, why, sizeof(why)) != 0)
    return lm_errf(err, LM_EUNSUP, "cuda: GEMM %dx%d: %s", N, K, why);
  if (cu->n_shapes < (int)(sizeof(cu->shapes) / sizeof(cu->shapes[0]))) {
    cu->shapes[cu->n_shapes].N = N;
    cu->shapes[cu->n_shapes].K = K;
    cu->shapes[cu->n_shapes++].out_f32 = out_f32;
  }
  cu->planned_m = LM_CUDA_PLAN_MAX_M;
  return LM_OK;
}

/* Checks the pinned algorithms for steps of T rows, where a failure can
 * still be returned. */
static int plan_rows(struct lm_cuda *cu, int T, char *err) {
  char why[LM_ERR_LEN];
  if (T <= cu->planned_m) return LM_OK;
  for (int i = 0; i < cu->n_shapes; i++)
    if (lm_cuda_gemm_plan(cu->gemm, cu->shapes[i].N, cu->shapes[i].K, cu->shapes[i].out_f32, T,
                          NULL, why, sizeof(why)) != 0)
      return lm_errf(err, LM_EUNSUP, "cuda: GEMM for %d rows: %s", T, why);
  cu->planned_m = T;
  return LM_OK;
}

/* A fused GEMM of N rows of weights from w on (a group stored side by
 * side): its f32 output is split into bf16 activations. */
static int plan_fused(struct lm_cuda *cu, const struct lm_tensor *w, int N, char *err) {
  if (N > cu->widest_f32) cu->widest_f32 = N;
  return plan(cu, w, N, 1, err);
}

static int lm_cuda_be_load_weights(void *st, lm_model *m, char *err) {
  struct lm_cuda *cu = st;
  const struct lm_config *c = &m->cfg;
  struct lm_weights *w = &m->w;
  int rc, H = c->hidden_size, Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;
  int I = c->intermediate_size;
  struct lm_tensor *one[1];
  cu->n_heads = c->n_heads;
  cu->head_dim = c->head_dim;
  cu->vocab = c->vocab_size;
#define LOAD1(t) (one[0] = (t), load_group(cu, one, 1, err))
  if ((rc = LOAD1(&w->embed)) != LM_OK || (rc = LOAD1(&w->final_norm)) != LM_OK) return rc;
  if (w->lm_head.data == w->embed.data) {
    /* tied: the embedding's device copy, reset with the others at destroy */
    struct lm_tensor *head = &w->lm_head;
    if (track(cu, NULL, &head, 1) != LM_OK) return lm_errf(err, LM_ENOMEM, "cuda: out of memory");
    head->dev = w->embed.dev;
  } else if ((rc = LOAD1(&w->lm_head)) != LM_OK)
    return rc;
  for (int l = 0; l < c->n_layers; l++) {
    struct lm_layer_weights *lw = &w->layers[l];
    struct lm_tensor *qkv[3] = {&lw->wq, &lw->wk, &lw->wv}, *gate_up[2] = {&lw->w_gate, &lw->w_up};
    if ((rc = load_group(cu, qkv, 3, err)) != LM_OK ||
        (rc = load_group(cu, gate_up, 2, err)) != LM_OK || (rc = LOAD1(&lw->wo)) != LM_OK ||
        (rc = LOAD1(&lw->w_down)) != LM_OK || (rc = LOAD1(&lw->attn_norm)) != LM_OK ||
        (rc = LOAD1(&lw->mlp_norm)) != LM_OK)
      return rc;
    if (c->arch->qkv_bias) {
      struct lm_tensor *b[3] = {&lw->bq, &lw->bk, &lw->bv};
      if ((rc = load_group(cu, b, 3, err)) != LM_OK) return rc;
    }
    if (c->arch->qk_norm &&
        ((rc = LOAD1(&lw->q_norm)) != LM_OK || (rc = LOAD1(&lw->k_norm)) != LM_OK))
      return rc;
  }
#undef LOAD1
  const struct lm_layer_weights *l0 = &w->layers[0];
  if ((rc = plan_fused(cu, &l0->wq, Q + 2 * KV, err)) != LM_OK ||
      (rc = plan_fused(cu, &l0->w_gate, 2 * I, err)) != LM_OK ||
      (rc = plan(cu, &l0->wo, H, 0, err)) != LM_OK ||
      (rc = plan(cu, &l0->w_down, H, 0, err)) != LM_OK ||
      (rc = plan(cu, &w->lm_head, c->vocab_size, 1, err)) != LM_OK)
    return rc;
  return LM_OK;
}

static void lm_cuda_be_tensor_free(void *st, struct lm_tensor *t);

static int lm_cuda_be_tensor_load(void *st, struct lm_tensor *t, char *err) {
  struct lm_tensor *one[1] = {t};
  lm_cuda_be_tensor_free(st, t); /* loading again replaces the old copy */
  return load_group(st, one, 1, err);
}

static void lm_cuda_be_tensor_free(void *st, struct lm_tensor *t) {
  struct lm_cuda *cu = st;
  if (!t->dev) return;
  lm_cuda_sync(cu->stream, NULL, 0);
  for (int i = 0; i < cu->n_allocs; i++)
    if (cu->allocs[i] == t->dev) {
      lm_cuda_free(t->dev);
      cu->allocs[i] = cu->allocs[--cu->n_allocs];
      break;
    }
  for (int i = 0; i < cu->n_loaded; i++)
    if (cu->loaded[i] == t) {
      cu->loaded[i] = cu->loaded[--cu->n_loaded];
      break;
    }
  t->dev = NULL;
}

/* ---- buffers ------------------------------------------------------------ */

static void *lm_cuda_be_act_alloc(void *st, size_t n_elems) {
  (void)st;
  if (n_elems > SIZE_MAX / 2) return NULL;
  return lm_cuda_malloc(n_elems ? n_elems * 2 : 2);
}

static void *lm_cuda_be_f32_alloc(void *st, size_t n_elems) {
  (void)st;
  if (n_elems > SIZE_MAX / 4) return NULL;
  return lm_cuda_malloc(n_elems ? n_elems * 4 : 4);
}

static void lm_cuda_be_act_free(void *st, void *buf) {
  struct lm_cuda *cu = st;
  lm_cuda_sync(cu->stream, NULL, 0);
  lm_cuda_free(buf);
}

/* Moves n elements of elem_bytes between host and device through the
 * pinned staging buffer; to_dev chooses the direction. */
static int transfer(struct lm_cuda *cu, void *dev, void *host, size_t bytes, int to_dev) {
  char why[LM_ERR_LEN];
  int rc = to_dev ? lm_cuda_h2d(dev, host, bytes, cu->stream, why, sizeof(why))
                  : lm_cuda_d2h(host, dev, bytes, cu->stream, why, sizeof(why));
  if (rc == 0) rc = lm_cuda_sync(cu->stream, why, sizeof(why));
  if (rc != 0) {
    fail(cu, LM_EIO, why);
    return LM_EIO;
  }
  return LM_OK;
}

static int lm_cuda_be_act_read(void *st, float *dst, const void *src, size_t n) {
  struct lm_cuda *cu = st;
  int rc;
  if ((rc = wait_stream(cu, NULL)) != LM_OK) return rc;
  if (grow_host(&cu->stage, n * 2) != LM_OK) return LM_ENOMEM;
  if ((rc = transfer(cu, (void *)src, cu->stage.p, n * 2, 0)) != LM_OK) return rc;
  for (size_t i = 0; i < n; i++)
    dst[i] = lm_bf16_to_f32(((const uint16_t *)cu->stage.p)[i]);
  return LM_OK;
}

static int lm_cuda_be_act_write(void *st, void *dst, const float *src, size_t n) {
  struct lm_cuda *cu = st;
  int rc;
  if ((rc = wait_stream(cu, NULL)) != LM_OK) return rc;
  if (grow_host(&cu->stage, n * 2) != LM_OK) return LM_ENOMEM;
  for (size_t i = 0; i < n; i++)
    ((uint16_t *)cu->stage.p)[i] = lm_f32_to_bf16(src[i]);
  return transfer(cu, dst, cu->stage.p, n * 2, 1);
}

static int lm_cuda_be_f32_read(void *st, float *dst, const void *src, size_t n) {
  struct lm_cuda *cu = st;
  int rc;
  if ((rc = wait_stream(cu, NULL)) != LM_OK) return rc;
  return transfer(cu, (void *)src, dst, n * 4, 0);
}

static int lm_cuda_be_f32_write(void *st, void *dst, const float *src, size_t n) {
  struct lm_cuda *cu = st;
  int rc;
  if ((rc = wait_stream(cu, NULL)) != LM_OK) return rc;
  return transfer(cu, dst, (void *)src, n * 4, 1);
}

/* Device scratch a step of T tokens over S sequences with contexts up to
 * L needs beside the runner's activations (each grown with 1/4 slack). */
static size_t workspace_bytes(const struct lm_cuda *cu, int T, int S, int L) {
  size_t f32 = (size_t)T * (size_t)cu->widest_f32 * 4;
  size_t attn = lm_cuda_attention_workspace_bytes(S, cu->n_heads, cu->head_dim, L);
  size_t sample =
      lm_cuda_sample_workspace_bytes(S, cu->vocab) + (size_t)S * sizeof(struct lm_cuda_sample_out);
  return (f32 + attn + sample) / 4 * 5;
}

static int lm_cuda_be_kv_budget(void *st, size_t reserve_bytes, int max_tokens, int max_seqs,
                                int max_model_len, size_t *kv_bytes, char *err) {
  struct lm_cuda *cu = st;
  size_t free_b = 0, total = 0;
  reserve_bytes += workspace_bytes(cu, max_tokens, max_seqs, max_model_len);
  if (lm_cuda_mem_info(&free_b, &total) != 0)
    return lm_errf(err, LM_EIO, "cuda: cannot read the device's free memory");
  double allowed = (double)cu->memory_utilization * (double)total;
  double used = (double)(total - free_b), left = allowed - used - (double)reserve_bytes;
  if (left < (double)((size_t)16 << 20))
    return lm_errf(
        err, LM_ENOMEM,
        "cuda: no room for a KV cache: gpu_memory_utilization %.2f allows %.2f GiB of "
        "%.2f GiB, %.2f GiB are in use (weights %.2f GiB) and activations need %.2f GiB; "
        "raise --gpu-memory-utilization or lower --max-num-batched-tokens / "
        "--max-num-seqs",
        (double)cu->memory_utilization, allowed / (1 << 30), (double)total / (1 << 30),
        used / (1 << 30), (double)cu->weight_bytes / (1 << 30), (double)reserve_bytes / (1 << 30));
  *kv_bytes = (size_t)left;
  return LM_OK;
}

static int lm_cuda_be_kv_create(void *st, const struct lm_kv_shape *s, void **kv, char *err) {
  struct lm_cuda *cu = st;
  char why[LM_ERR_LEN];
  struct lm_cuda_kv *k;
  *kv = NULL;
  if (s->n_layers <= 0 || s->n_blocks <= 0 || s->block_size <= 0 || s->n_kv_heads <= 0 ||
      s->head_dim <= 0)
    return lm_errf(err, LM_EINVAL, "cuda kv cache: every dimension must be positive");
  if (s->head_dim % 32 || s->head_dim > LM_CUDA_ATTN_MAX_HEAD_DIM)
    return lm_errf(err, LM_EUNSUP, "cuda kv cache: head_dim %d must be a multiple of 32 up to %d",
                   s->head_dim, LM_CUDA_ATTN_MAX_HEAD_DIM);
  if (s->dtype != LM_DTYPE_BF16)
    return lm_errf(err, LM_EUNSUP, "cuda kv cache: stores bf16, not %s", lm_dtype_name(s->dtype));
  if (!(k = calloc(1, sizeof(*k)))) return lm_errf(err, LM_ENOMEM, "cuda kv cache: out of memory");
  *k = (struct lm_cuda_kv){NULL,          s->n_layers,   s->n_blocks,
                           s->block_size, s->n_kv_heads, s->head_dim};
  size_t bytes = (size_t)s->n_layers * 2 * lm_cuda_kv_part_elems(k) * 2;
  if (!(k->base = lm_cuda_malloc(bytes))) {
    free(k);
    return lm_errf(err, LM_ENOMEM, "cuda kv cache: cannot allocate %zu bytes on the device", bytes);
  }
  /* zeroed, so a masked-out read of an unwritten slot is finite */
  if (lm_cuda_memset(k->base, 0, bytes, cu->stream, why, sizeof(why)) != 0 ||
      lm_cuda_sync(cu->stream, why, sizeof(why)) != 0) {
    lm_cuda_free(k->base);
    free(k);
    return lm_errf(err, LM_EIO, "cuda kv cache: %s", why);
  }
  *kv = k;
  return LM_OK;
}

static void lm_cuda_be_kv_free(void *st, void *kv) {
  struct lm_cuda *cu = st;
  struct lm_cuda_kv *k = kv;
  if (!k) return;
  lm_cuda_sync(cu->stream, NULL, 0);
  lm_cuda_free(k->base);
  free(k);
}

/* ---- the step ------------------------------------------------------------ */

static int lm_cuda_be_begin_step(void *st, const struct lm_batch *b, char *err) {
  struct lm_cuda *cu = st;
  int T = b->n_tokens, S = b->n_seqs, rc;
  size_t n_bt = (size_t)S * (size_t)b->max_blocks;
  /* int32 counts: 4 arrays of T, q_start, block tables, logit rows */
  size_t n = 4 * (size_t)T + (size_t)S + 1 + n_bt + (size_t)b->n_logits;
  if ((rc = wait_stream(cu, err)) != LM_OK) return rc;
  if (grow_host(&cu->stage, n * 4) != LM_OK || grow_dev(cu, &cu->batch, n * 4) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "cuda: no memory for the step's batch (%d tokens)", T);
  int32_t *h = cu->stage.p, *d = cu->batch.p;
  struct lm_cuda_step *s = &cu->step;
  memcpy(h, b->token_ids, (size_t)T * 4);
  memcpy(h + T, b->positions, (size_t)T * 4);
  memcpy(h + 2 * (size_t)T, b->slot_mapping, (size_t)T * 4);
  s->max_q_len = 0;
  s->max_ctx_len = 0;
  for (int i = 0; i < S; i++) {
    int q_len = b->q_start[i + 1] - b->q_start[i];
    for (int t = b->q_start[i]; t < b->q_start[i + 1]; t++)
      h[3 * (size_t)T + t] = i;
    if (q_len > s->max_q_len) s->max_q_len = q_len;
    if (b->ctx_len[i] > s->max_ctx_len) s->max_ctx_len = b->ctx_len[i];
  }
  int32_t *at = h + 4 * (size_t)T;
  memcpy(at, b->q_start, ((size_t)S + 1) * 4);
  memcpy(at + S + 1, b->block_tables, n_bt * 4);
  memcpy(at + S + 1 + n_bt, b->logit_rows, (size_t)b->n_logits * 4);
  s->token_ids = d;
  s->positions = d + T;
  s->slot_mapping = d + 2 * (size_t)T;
  s->seq_of_token = d + 3 * (size_t)T;
  s->q_start = d + 4 * (size_t)T;
  s->block_tables = s->q_start + S + 1;
  s->logit_rows = s->block_tables + n_bt;
  s->host_logit_rows = b->logit_rows;
  s->n_logits = b->n_logits;

  /* what the ops need, grown and checked here where a failure can be
   * returned (the KV budget left room for it) */
  if ((rc = plan_rows(cu, T, err)) != LM_OK) return rc;
  if (grow_dev(cu, &cu->f32, (size_t)T * (size_t)cu->widest_f32 * 4) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "cuda: no memory for GEMM outputs (%d tokens)", T);
  if (cu->n_heads > 0 &&
      grow_dev(cu, &cu->attn_ws,
               lm_cuda_attention_workspace_bytes(S, cu->n_heads, cu->head_dim,
                                                 s->max_ctx_len > 0 ? s->max_ctx_len : 1)) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "cuda: no memory for the attention workspace");
  char why[LM_ERR_LEN];
  if (lm_cuda_h2d(d, h, n * 4, cu->stream, why, sizeof(why)) != 0)
    return lm_errf(err, LM_EIO, "cuda: batch copy: %s", why);
  return LM_OK;
}

static int lm_cuda_be_sync(void *st, char *err) {
  return wait_stream(st, err);
}

static void lm_cuda_be_embed(void *st, void *x, const struct lm_tensor *table,
                             const struct lm_batch *b) {
  struct lm_cuda *cu = st;
  lm_cuda_gather_rows(x, table->dev, cu->step.token_ids, b->n_tokens, (int)table->shape[1],
                      cu->stream);
}

static void lm_cuda_be_rmsnorm(void *st, void *out, const void *x, const struct lm_tensor *w,
                               int rows, int dim, float eps) {
  struct lm_cuda *cu = st;
  lm_cuda_rmsnorm(out, x, w->dev, rows, dim, eps, cu->stream);
}

static void lm_cuda_be_add_rmsnorm(void *st, void *out, void *residual, const void *delta,
                                   const struct lm_tensor *w, int rows, int dim, float eps) {
  struct lm_cuda *cu = st;
  lm_cuda_add_rmsnorm(out, residual, delta, w->dev, rows, dim, eps, cu->stream);
}

static void gemm(struct lm_cuda *cu, void *y, const void *x, const struct lm_tensor *w, int rows,
                 int out_f32) {
  char why[LM_ERR_LEN];
  int N = (int)w->shape[0], K = (int)w->shape[1];
  if (rows <= 0 || cu->rc != LM_OK) return;
  /* planned at load for LM_CUDA_PLAN_MAX_M rows; a larger step re-checks
   * the same algorithm for its row count */
  int max_m = rows > LM_CUDA_PLAN_MAX_M ? rows : LM_CUDA_PLAN_MAX_M;
  if (lm_cuda_gemm_plan(cu->gemm, N, K, out_f32, max_m, w->dev, why, sizeof(why)) != 0 ||
      lm_cuda_gemm_run(cu->gemm, y, x, w->dev, rows, N, K, out_f32, cu->stream, why, sizeof(why)) !=
          0)
    fail(cu, LM_EIO, why);
}

/* ys[i] = columns of one f32 GEMM output plus bias, rounded once */
static void split(struct lm_cuda *cu, void *const *ys, const struct lm_tensor *const *biases,
                  const int *widths, int n, int rows) {
  uint16_t *dst[LM_CUDA_MAX_SPLIT];
  const float *bias[LM_CUDA_MAX_SPLIT];
  for (int i = 0; i < n; i++) {
    dst[i] = ys[i];
    bias[i] = biases[i] ? biases[i]->dev : NULL;
  }
  lm_cuda_split_cols(dst, bias, widths, n, cu->f32.p, rows, cu->stream);
}

static void lm_cuda_be_matmul(void *st, void *y, const void *x, const struct lm_tensor *w,
                              const struct lm_tensor *bias, int rows) {
  struct lm_cuda *cu = st;
  if (!bias) {
    gemm(cu, y, x, w, rows, 0);
    return;
  }
  int N = (int)w->shape[0];
  if (grow_dev(cu, &cu->f32, (size_t)rows * (size_t)N * 4) != LM_OK) {
    fail(cu, LM_ENOMEM, "no device memory for a GEMM output");
    return;
  }
  gemm(cu, cu->f32.p, x, w, rows, 1);
  void *const ys[1] = {y};
  split(cu, ys, &bias, &N, 1, rows);
}

/* One GEMM when the weights sit side by side (load_group), else n. */
static void lm_cuda_be_matmul_n(void *st, void *const *ys, const void *x,
                                const struct lm_tensor *const *ws,
                                const struct lm_tensor *const *biases, int n, int rows) {
  struct lm_cuda *cu = st;
  int widths[LM_CUDA_MAX_SPLIT], N = 0, K = (int)ws[0]->shape[1], fused = n <= LM_CUDA_MAX_SPLIT;
  for (int i = 0; i < n && fused; i++) {
    widths[i] = (int)ws[i]->shape[0];
    fused = ws[i]->shape[1] == K &&
            (char *)ws[i]->dev == (char *)ws[0]->dev + (size_t)N * (size_t)K * 2;
    N += widths[i];
  }
  if (!fused) {
    for (int i = 0; i < n; i++)
      lm_cuda_be_matmul(st, ys[i], x, ws[i], biases[i], rows);
    return;
  }
  if (grow_dev(cu, &cu->f32, (size_t)rows * (size_t)N * 4) != LM_OK) {
    fail(cu, LM_ENOMEM, "no device memory for a fused GEMM output");
    return;
  }
  struct lm_tensor all = *ws[0];
  all.shape[0] = N;
  gemm(cu, cu->f32.p, x, &all, rows, 1);
  split(cu, ys, biases, widths, n, rows);
}

static void lm_cuda_be_logits(void *st, void *logits, const void *x, const struct lm_tensor *w,
                              int rows) {
  gemm(st, logits, x, w, rows, 1);
}

static void lm_cuda_be_rope(void *st, void *q, void *k, const struct lm_batch *b,
                            const struct lm_rope *rope, int n_heads, int n_kv_heads) {
  struct lm_cuda *cu = st;
  char why[LM_ERR_LEN];
  int half = rope->head_dim / 2;
  if (half > LM_CUDA_ATTN_MAX_HEAD_DIM / 2) {
    fail(cu, LM_EUNSUP, "RoPE head_dim above the attention kernels' limit");
    return;
  }
  /* the table changes only with the model: compared by value, uploaded
   * when it differs */
  if (cu->rope_n != half || memcmp(cu->rope_host, rope->inv_freq, (size_t)half * 4) != 0) {
    if (cu->rope_dev && lm_cuda_sync(cu->stream, why, sizeof(why)) != 0) fail(cu, LM_EIO, why);
    lm_cuda_free(cu->rope_dev);
    cu->rope_n = 0;
    if (!(cu->rope_dev = lm_cuda_malloc((size_t)half * 4))) {
      fail(cu, LM_ENOMEM, "no device memory for RoPE frequencies");
      return;
    }
    memcpy(cu->rope_host, rope->inv_freq, (size_t)half * 4);
    /* a copy from pageable memory is done with the host buffer on return */
    if (lm_cuda_h2d(cu->rope_dev, cu->rope_host, (size_t)half * 4, cu->stream, why, sizeof(why)) !=
        0) {
      fail(cu, LM_EIO, why);
      return;
    }
    cu->rope_n = half;
  }
  lm_cuda_rope(q, k, cu->step.positions, cu->rope_dev, b->n_tokens, n_heads, n_kv_heads,
               rope->head_dim, cu->stream);
}

static void lm_cuda_be_kv_write(void *st, void *kv, const struct lm_kv_shape *shape, int layer,
                                const void *k, const void *v, const struct lm_batch *b) {
  struct lm_cuda *cu = st;
  (void)shape;
  lm_cuda_kv_write(kv, layer, k, v, cu->step.slot_mapping, b->n_tokens, cu->stream);
}

static void lm_cuda_be_attention(void *st, void *out, const void *q, const void *kv,
                                 const struct lm_kv_shape *shape, int layer,
                                 const struct lm_batch *b, int n_heads, float scale) {
  struct lm_cuda *cu = st;
  const struct lm_cuda_step *s = &cu->step;
  size_t ws = lm_cuda_attention_workspace_bytes(b->n_seqs, n_heads, shape->head_dim,
                                                s->max_ctx_len > 0 ? s->max_ctx_len : 1);
  if (grow_dev(cu, &cu->attn_ws, ws) != LM_OK) {
    fail(cu, LM_ENOMEM, "no device memory for the attention workspace");
    return;
  }
  struct lm_cuda_attn_batch ab = {
      .n_tokens = b->n_tokens,
      .n_seqs = b->n_seqs,
      .q_start = s->q_start,
      .positions = s->positions,
      .seq_of_token = s->seq_of_token,
      .block_tables = s->block_tables,
      .max_blocks = b->max_blocks,
      .max_q_len = s->max_q_len,
      .max_ctx_len = s->max_ctx_len,
  };
  lm_cuda_attention(out, q, kv, layer, &ab, n_heads, scale, cu->attn_ws.p, cu->stream);
}

static void lm_cuda_be_swiglu(void *st, void *out, const void *gate, const void *up, int rows,
                              int dim) {
  struct lm_cuda *cu = st;
  lm_cuda_swiglu(out, gate, up, rows, dim, cu->stream);
}

static void lm_cuda_be_gather_rows(void *st, void *out, const void *x, const int32_t *rows, int n,
                                   int dim) {
  struct lm_cuda *cu = st;
  char why[LM_ERR_LEN];
  const int32_t *idx = cu->step.logit_rows;
  if (n <= 0) return;
  if (rows != cu->step.host_logit_rows || n > cu->step.n_logits) {
    if (grow_dev(cu, &cu->gather, (size_t)n * 4) != LM_OK) {
      fail(cu, LM_ENOMEM, "no device memory for gather indices");
      return;
    }
    if (lm_cuda_h2d(cu->gather.p, rows, (size_t)n * 4, cu->stream, why, sizeof(why)) != 0) {
      fail(cu, LM_EIO, why);
      return;
    }
    idx = cu->gather.p;
  }
  lm_cuda_gather_rows(out, x, idx, n, dim, cu->stream);
}

/* ---- sampling ------------------------------------------------------------ */

/* The row's history goes to the device only when a penalty reads it. */
static int penalised(const struct lm_sample_row *r) {
  return r->history && r->n_history > 0 && lm_sampling_penalizes(r->params);
}

static int lm_cuda_be_sample(void *st, const void *logits, int n, int vocab,
                             const struct lm_sample_row *rows, struct lm_sample_result *out,
                             char *err) {
  struct lm_cuda *cu = st;
  char why[LM_ERR_LEN];
  int rc;
  if (n <= 0) return LM_OK;
  if (vocab <= 0) return lm_errf(err, LM_EINVAL, "sample: vocab %d", vocab);
  /* the staging buffer still feeds this step's queued batch copy: it is
   * refilled only after wait_stream below */
  size_t n_ids = 0;
  for (int i = 0; i < n; i++) {
    n_ids += rows[i].params->n_logit_bias + (size_t)(rows[i].n_banned > 0 ? rows[i].n_banned : 0);
    if (penalised(&rows[i])) n_ids += rows[i].n_history;
  }
  size_t rows_bytes = (size_t)n * sizeof(struct lm_cuda_sample_row);
  size_t bytes = rows_bytes + n_ids * 8; /* ids, then bias values */
  size_t out_bytes = (size_t)n * sizeof(struct lm_cuda_sample_out);
  if ((rc = wait_stream(cu, err)) != LM_OK) return rc;
  if (grow_host(&cu->stage, bytes) != LM_OK || grow_dev(cu, &cu->sample_in, bytes) != LM_OK ||
      grow_dev(cu, &cu->sample_out, out_bytes) != LM_OK || grow_host(&cu->host_out, out_bytes) ||
      grow_dev(cu, &cu->sample_ws, lm_cuda_sample_workspace_bytes(n, vocab)) != LM_OK)
    return lm_errf(err, LM_ENOMEM, "sample: no memory for %d rows", n);
  struct lm_cuda_sample_row *hr = cu->stage.p;
  int32_t *ids = (int32_t *)((char *)cu->stage.p + rows_bytes);
  float *vals = (float *)(ids + n_ids);
  int32_t at = 0;
  for (int i = 0; i < n; i++) {
    const struct lm_sample_row *r = &rows[i];
    const struct lm_sampling *p = r->params;
    struct lm_cuda_sample_row *d = &hr[i];
    memset(d, 0, sizeof(*d));
    d->temperature = p->temperature;
    d->top_p = p->top_p;
    d->min_p = p->min_p;
    d->repetition_penalty = p->repetition_penalty;
    d->presence_penalty = p->presence_penalty;
    d->frequency_penalty = p->frequency_penalty;
    d->top_k = p->top_k;
    d->n_top = r->top && r->n_top_logprobs > 0
                   ? (r->n_top_logprobs < LM_CUDA_SAMPLE_MAX_TOP ? r->n_top_logprobs
                                                                 : LM_CUDA_SAMPLE_MAX_TOP)
                   : 0;
    d->skip_logprob = r->skip_logprob && d->n_top == 0;
    d->seed = p->seed;
    d->position = r->position;
    d->bias_start = at;
    d->n_bias = (int32_t)p->n_logit_bias;
    for (size_t j = 0; j < p->n_logit_bias; j++, at++) {
      ids[at] = p->logit_bias[j].id;
      vals[at] = p->logit_bias[j].bias;
    }
    d->banned_start = at;
    d->n_banned = r->n_banned > 0 ? r->n_banned : 0;
    for (int j = 0; j < d->n_banned; j++, at++)
      ids[at] = r->banned[j];
    d->history_start = at;
    if (penalised(r)) {
      d->n_history = (int32_t)r->n_history;
      d->n_prompt = (int32_t)(r->n_prompt < r->n_history ? r->n_prompt : r->n_history);
      memcpy(ids + at, r->history, r->n_history * 4);
      at += (int32_t)r->n_history;
    }
  }
  char *din = cu->sample_in.p;
  if (lm_cuda_h2d(din, cu->stage.p, bytes, cu->stream, why, sizeof(why)) != 0)
    return lm_errf(err, LM_EIO, "sample: %s", why);
  lm_cuda_sample(logits, n, vocab, (const struct lm_cuda_sample_row *)din,
                 (const int32_t *)(din + rows_bytes), (const float *)(din + rows_bytes + n_ids * 4),
                 cu->sample_ws.p, cu->sample_out.p, cu->stream);
  if (lm_cuda_d2h(cu->host_out.p, cu->sample_out.p, out_bytes, cu->stream, why, sizeof(why)) != 0)
    return lm_errf(err, LM_EIO, "sample: %s", why);
  if ((rc = wait_stream(cu, err)) != LM_OK) return rc;
  const struct lm_cuda_sample_out *o = cu->host_out.p;
  for (int i = 0; i < n; i++) {
    out[i].id = o[i].id;
    out[i].logprob = o[i].logprob;
    for (int j = 0; j < hr[i].n_top; j++) {
      rows[i].top[j].id = o[i].top_ids[j];
      rows[i].top[j].logprob = o[i].top_logprobs[j];
    }
  }
  return LM_OK;
}

const struct lm_backend_ops lm_backend_cuda_ops = {
    .name = "cuda",
    .create = lm_cuda_be_create,
    .destroy = lm_cuda_be_destroy,
    .load_weights = lm_cuda_be_load_weights,
    .tensor_load = lm_cuda_be_tensor_load,
    .tensor_free = lm_cuda_be_tensor_free,
    .act_elem_bytes = 2,
    .kv_dtypes = 1u << LM_DTYPE_BF16,
    .batched_tokens = 2048,
    .act_alloc = lm_cuda_be_act_alloc,
    .act_free = lm_cuda_be_act_free,
    .act_read = lm_cuda_be_act_read,
    .act_write = lm_cuda_be_act_write,
    .f32_alloc = lm_cuda_be_f32_alloc,
    .f32_read = lm_cuda_be_f32_read,
    .f32_write = lm_cuda_be_f32_write,
    .kv_budget = lm_cuda_be_kv_budget,
    .kv_create = lm_cuda_be_kv_create,
    .kv_free = lm_cuda_be_kv_free,
    .begin_step = lm_cuda_be_begin_step,
    .sync = lm_cuda_be_sync,
    .embed = lm_cuda_be_embed,
    .rmsnorm = lm_cuda_be_rmsnorm,
    .add_rmsnorm = lm_cuda_be_add_rmsnorm,
    .matmul = lm_cuda_be_matmul,
    .matmul_n = lm_cuda_be_matmul_n,
    .logits = lm_cuda_be_logits,
    .rope = lm_cuda_be_rope,
    .kv_write = lm_cuda_be_kv_write,
    .attention = lm_cuda_be_attention,
    .swiglu = lm_cuda_be_swiglu,
    .gather_rows = lm_cuda_be_gather_rows,
    .sample = lm_cuda_be_sample,
};
