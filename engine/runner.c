/* runner.c - the transformer forward pass, one function per step of a
 * layer, over backend ops. Shapes: T tokens in the step, H hidden size,
 * Q = n_heads * head_dim, KV = n_kv_heads * head_dim, I intermediate. */
#include "engine/runner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lm_runner {
  lm_model *m;
  lm_backend *be;
  struct lm_runner_config cfg;
  struct lm_kv_shape kv_shape;
  void *kv;
  lm_kv_pool *pool;
  float *inv_freq; /* [head_dim / 2] */
  struct lm_rope rope;

  /* activations (backend buffers) */
  void *x;      /* [T, H] residual stream */
  void *h;      /* [T, H] normed input of the next matmul */
  void *q, *qn; /* [T, Q] queries, then after q_norm */
  void *k, *kn; /* [T, KV] */
  void *v;      /* [T, KV] */
  void *att;    /* [T, Q] attention output */
  void *o;      /* [T, H] attention or MLP output, added to x */
  void *gate;   /* [T, I] */
  void *up;     /* [T, I] */
  void *last;   /* [max_seqs, H] normed rows whose logits are wanted */
  void *logits; /* [max_seqs, vocab] f32 */
  void *kept;   /* [T, H] a layered chunk's rows of x between its steps (layer_chunks) */

  /* the layered chunk whose rows kept holds: its sequence, first position,
   * tokens and the next layer it runs (kept_kv NULL: none) */
  const lm_kv_seq *kept_kv;
  const int32_t *kept_tokens;
  int kept_start, kept_n, kept_layer;
  int32_t *iota; /* [max_batch_tokens] 0, 1, 2, ... */

  /* the step's batch description (host) */
  int32_t *token_ids, *positions, *slot_mapping; /* [max_batch_tokens] */
  int32_t *q_start;                              /* [max_seqs + 1] */
  int32_t *ctx_len, *logit_rows;                 /* [max_seqs] */
  int32_t *block_tables;                         /* [max_seqs, max_blocks] */
  int max_blocks;
};

void lm_runner_rope_inv_freq(const struct lm_config *c, float *inv_freq) {
  int half = c->head_dim / 2;
  for (int i = 0; i < half; i++) {
    double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim);
    if (c->rope_llama3) {
      /* Llama 3.1: long wavelengths slowed by factor, short ones kept,
       * a smooth blend between. */
      double old_len = c->rope_original_max_position;
      double low_wavelen = old_len / c->rope_low_freq_factor;
      double high_wavelen = old_len / c->rope_high_freq_factor;
      double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / c->rope_factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_len / wavelen - c->rope_low_freq_factor) /
                        (c->rope_high_freq_factor - c->rope_low_freq_factor);
        f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
      }
    }
    inv_freq[i] = (float)f;
  }
}

#define LM_RUNNER_ACTS 12

/* Elements of each activation buffer, in the order lm_runner_create lists
 * them: x, h, q, qn, k, kn, v, att, o, gate, up, last. */
static void act_elems(const struct lm_config *c, size_t T, size_t S, size_t n[LM_RUNNER_ACTS]) {
  size_t H = (size_t)c->hidden_size, Q = (size_t)c->n_heads * (size_t)c->head_dim;
  size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim, I = (size_t)c->intermediate_size;
  size_t e[LM_RUNNER_ACTS] = {T * H,  T * H, T * Q, T * Q, T * KV, T * KV,
                              T * KV, T * Q, T * H, T * I, T * I,  S * H};
  memcpy(n, e, sizeof(e));
}

size_t lm_runner_activation_bytes(const struct lm_config *c, int max_batch_tokens, int max_seqs,
                                  size_t act_elem_bytes) {
  size_t n[LM_RUNNER_ACTS], sum = 0;
  act_elems(c, (size_t)max_batch_tokens, (size_t)max_seqs, n);
  for (int i = 0; i < LM_RUNNER_ACTS; i++)
    sum += n[i];
  /* plus the f32 logits */
  return sum * act_elem_bytes + (size_t)max_seqs * (size_t)c->vocab_size * sizeof(float);
}

void lm_runner_free(lm_runner *r) {
  if (!r) return;
  const struct lm_backend_ops *ops = r->be->ops;
  void *bufs[] = {r->x,   r->h, r->q,    r->qn, r->k,    r->kn,   r->v,
                  r->att, r->o, r->gate, r->up, r->last, r->kept, r->logits};
  for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
    if (bufs[i]) ops->act_free(r->be->st, bufs[i]);
  if (r->kv) ops->kv_free(r->be->st, r->kv);
  lm_kv_pool_free(r->pool);
  free(r->inv_freq);
  free(r->token_ids);
  free(r->positions);
  free(r->slot_mapping);
  free(r->q_start);
  free(r->ctx_len);
  free(r->logit_rows);
  free(r->block_tables);
  free(r->iota);
  free(r);
}

int lm_runner_create(lm_model *m, lm_backend *be, const struct lm_runner_config *cfg,
                     lm_runner **out, char *err) {
  const struct lm_config *c = &m->cfg;
  const struct lm_backend_ops *ops = be->ops;
  lm_runner *r;
  int rc;
  *out = NULL;
  if (cfg->block_size <= 0 || cfg->n_blocks <= 0 || cfg->max_batch_tokens <= 0 ||
      cfg->max_seqs <= 0)
    return lm_errf(err, LM_EINVAL, "runner: block size, blocks, batch tokens and seqs must be > 0");
  r = calloc(1, sizeof(*r));
  if (!r) return lm_errf(err, LM_ENOMEM, "runner: out of memory");
  r->m = m;
  r->be = be;
  r->cfg = *cfg;
  if (r->cfg.max_model_len <= 0 || r->cfg.max_model_len > c->max_position_embeddings)
    r->cfg.max_model_len = c->max_position_embeddings;
  r->kv_shape = (struct lm_kv_shape){c->n_layers,   cfg->n_blocks, cfg->block_size,
                                     c->n_kv_heads, c->head_dim,   LM_DTYPE_F32};
  if ((rc = lm_backend_kv_dtype(ops, c->dtype, cfg->kv_dtype, &r->kv_shape.dtype, err)) != LM_OK)
    goto err;
  if ((rc = lm_kv_pool_create(cfg->n_blocks, cfg->block_size, &r->pool, err)) != LM_OK) goto err;
  if ((rc = ops->kv_create(be->st, &r->kv_shape, &r->kv, err)) != LM_OK) goto err;

  r->inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof(float));
  if (!r->inv_freq) goto nomem;
  lm_runner_rope_inv_freq(c, r->inv_freq);
  r->rope = (struct lm_rope){c->head_dim, r->inv_freq};

  size_t T = (size_t)cfg->max_batch_tokens, S = (size_t)cfg->max_seqs, n[LM_RUNNER_ACTS];
  void **bufs[LM_RUNNER_ACTS] = {&r->x, &r->h,   &r->q, &r->qn,   &r->k,  &r->kn,
                                 &r->v, &r->att, &r->o, &r->gate, &r->up, &r->last};
  act_elems(c, T, S, n);
  for (int i = 0; i < LM_RUNNER_ACTS; i++)
    if (!(*bufs[i] = ops->act_alloc(be->st, n[i]))) goto nomem;
  if (!(r->logits = ops->f32_alloc(be->st, S * (size_t)c->vocab_size))) goto nomem;
  if (ops->layer_chunks && !(r->kept = ops->act_alloc(be->st, T * (size_t)c->hidden_size)))
    goto nomem;

  r->max_blocks = (r->cfg.max_model_len + cfg->block_size - 1) / cfg->block_size;
  r->token_ids = malloc(T * sizeof(int32_t));
  r->positions = malloc(T * sizeof(int32_t));
  r->slot_mapping = malloc(T * sizeof(int32_t));
  r->q_start = malloc((S + 1) * sizeof(int32_t));
  r->ctx_len = malloc(S * sizeof(int32_t));
  r->logit_rows = malloc(S * sizeof(int32_t));
  r->block_tables = malloc(S * (size_t)r->max_blocks * sizeof(int32_t));
  r->iota = malloc(T * sizeof(int32_t));
  if (!r->token_ids || !r->positions || !r->slot_mapping || !r->q_start || !r->ctx_len ||
      !r->logit_rows || !r->block_tables || !r->iota)
    goto nomem;
  for (size_t i = 0; i < T; i++)
    r->iota[i] = (int32_t)i;
  *out = r;
  return LM_OK;
nomem:
  rc = lm_errf(err, LM_ENOMEM, "runner: out of memory for activations or KV cache");
err:
  lm_runner_free(r);
  return rc;
}

lm_kv_pool *lm_runner_kv_pool(lm_runner *r) {
  return r->pool;
}

const struct lm_kv_shape *lm_runner_kv_shape(const lm_runner *r) {
  return &r->kv_shape;
}

int lm_runner_layer_chunks(const lm_runner *r) {
  return r->be->ops->layer_chunks;
}

/* Checks the step's layer ranges: all layers, or a layered chunk last
 * (resuming where the kept rows left off). Sets *lc to it (or NULL). */
static int check_layers(lm_runner *r, const struct lm_seq_chunk *chunks, int n,
                        const struct lm_seq_chunk **lc, char *err) {
  int L = r->m->cfg.n_layers;
  *lc = NULL;
  for (int s = 0; s < n; s++) {
    const struct lm_seq_chunk *c = &chunks[s];
    if (c->layer_begin == 0 && (c->layer_end == 0 || c->layer_end == L)) continue;
    if (!r->be->ops->layer_chunks || s != n - 1)
      return lm_errf(err, LM_EINVAL,
                     "runner: chunk %d runs layers %d..%d: only the last chunk may,"
                     " on a backend with layer chunks",
                     s, c->layer_begin, c->layer_end);
    if (c->layer_begin < 0 || c->layer_end <= c->layer_begin || c->layer_end > L ||
        (c->want_logits && c->layer_end < L))
      return lm_errf(err, LM_EINVAL, "runner: layers %d..%d of %d (logits: %d)", c->layer_begin,
                     c->layer_end, L, c->want_logits);
    if (c->layer_begin > 0 && (c->kv != r->kept_kv || c->kv->n_cached_tokens != r->kept_start ||
                               c->n_tokens != r->kept_n || c->tokens != r->kept_tokens ||
                               c->layer_begin != r->kept_layer))
      return lm_errf(err, LM_EINVAL, "runner: a chunk resumes at layer %d without its kept rows",
                     c->layer_begin);
    *lc = c;
  }
  return LM_OK;
}

/* Fills the batch description from the chunks. */
static int build_batch(lm_runner *r, const struct lm_seq_chunk *chunks, int n, struct lm_batch *b,
                       char *err) {
  int bs = r->cfg.block_size, t = 0, nl = 0;
  if (n <= 0 || n > r->cfg.max_seqs)
    return lm_errf(err, LM_EINVAL, "runner: %d sequences in a step (max %d)", n, r->cfg.max_seqs);
  for (int s = 0; s < n; s++) {
    const struct lm_seq_chunk *c = &chunks[s];
    int start = c->kv->n_cached_tokens, end = start + c->n_tokens;
    if (c->n_tokens <= 0 || t + c->n_tokens > r->cfg.max_batch_tokens)
      return lm_errf(err, LM_EINVAL, "runner: step over %d tokens", r->cfg.max_batch_tokens);
    if (end > r->cfg.max_model_len || end > c->kv->n_blocks * bs)
      return lm_errf(err, LM_EINVAL, "runner: sequence %d needs %d tokens of cache, has %d", s, end,
                     c->kv->n_blocks * bs);
    /* a table reserved past max_model_len holds blocks no position can
     * reach: the row keeps only the reachable ones */
    int n_blocks = c->kv->n_blocks < r->max_blocks ? c->kv->n_blocks : r->max_blocks;
    r->q_start[s] = t;
    r->ctx_len[s] = end;
    memcpy(r->block_tables + (size_t)s * r->max_blocks, c->kv->blocks,
           (size_t)n_blocks * sizeof(int32_t));
    for (int i = 0; i < c->n_tokens; i++, t++) {
      int pos = start + i;
      if (c->tokens[i] < 0 || c->tokens[i] >= r->m->cfg.vocab_size)
        return lm_errf(err, LM_EINVAL, "runner: token id %d outside the vocabulary (%d)",
                       c->tokens[i], r->m->cfg.vocab_size);
      r->token_ids[t] = c->tokens[i];
      r->positions[t] = pos;
      r->slot_mapping[t] = c->kv->blocks[pos / bs] * bs + pos % bs;
    }
    if (c->want_logits) r->logit_rows[nl++] = t - 1;
  }
  r->q_start[n] = t;
  *b = (struct lm_batch){
      .n_tokens = t,
      .n_seqs = n,
      .token_ids = r->token_ids,
      .positions = r->positions,
      .slot_mapping = r->slot_mapping,
      .q_start = r->q_start,
      .ctx_len = r->ctx_len,
      .block_tables = r->block_tables,
      .max_blocks = r->max_blocks,
      .logit_rows = r->logit_rows,
      .n_logits = nl,
  };
  return LM_OK;
}

/* ys[i] = x @ ws[i]^T + biases[i], as one GEMM where the backend can */
static void matmul_n(lm_runner *r, void *const *ys, const void *x,
                     const struct lm_tensor *const *ws, const struct lm_tensor *const *biases,
                     int n, int rows) {
  const struct lm_backend_ops *ops = r->be->ops;
  if (ops->matmul_n) {
    ops->matmul_n(r->be->st, ys, x, ws, biases, n, rows);
    return;
  }
  for (int i = 0; i < n; i++)
    ops->matmul(r->be->st, ys[i], x, ws[i], biases[i], rows);
}

/* h: [T, H] normed input -> x += o(attention(h)) */
static void attention_block(lm_runner *r, const struct lm_layer_weights *lw, int layer,
                            const struct lm_batch *b) {
  const struct lm_config *c = &r->m->cfg;
  const struct lm_backend_ops *ops = r->be->ops;
  void *st = r->be->st, *q = r->q, *k = r->k;
  int T = b->n_tokens;
  int has_bias = c->arch->qkv_bias;
  void *const qkv[3] = {r->q, r->k, r->v};
  const struct lm_tensor *const w[3] = {&lw->wq, &lw->wk, &lw->wv};
  const struct lm_tensor *const bias[3] = {has_bias ? &lw->bq : NULL, has_bias ? &lw->bk : NULL,
                                           has_bias ? &lw->bv : NULL};
  matmul_n(r, qkv, r->h, w, bias, 3, T);
  if (c->arch->qk_norm) {
    /* per-head RMSNorm: each head is a row of head_dim */
    ops->rmsnorm(st, r->qn, r->q, &lw->q_norm, T * c->n_heads, c->head_dim, c->rms_norm_eps);
    ops->rmsnorm(st, r->kn, r->k, &lw->k_norm, T * c->n_kv_heads, c->head_dim, c->rms_norm_eps);
    q = r->qn;
    k = r->kn;
  }
  ops->rope(st, q, k, b, &r->rope, c->n_heads, c->n_kv_heads);
  ops->kv_write(st, r->kv, &r->kv_shape, layer, k, r->v, b);
  ops->attention(st, r->att, q, r->kv, &r->kv_shape, layer, b, c->n_heads,
                 1.0f / sqrtf((float)c->head_dim));
  ops->matmul(st, r->o, r->att, &lw->wo, NULL, T);
}

/* h: [T, H] normed input -> o = down(silu(gate(h)) * up(h)) */
static void mlp_block(lm_runner *r, const struct lm_layer_weights *lw, int T) {
  const struct lm_backend_ops *ops = r->be->ops;
  void *st = r->be->st;
  void *const gate_up[2] = {r->gate, r->up};
  const struct lm_tensor *const w[2] = {&lw->w_gate, &lw->w_up};
  const struct lm_tensor *const none[2] = {NULL, NULL};
  matmul_n(r, gate_up, r->h, w, none, 2, T);
  ops->swiglu(st, r->gate, r->gate, r->up, T, r->m->cfg.intermediate_size);
  ops->matmul(st, r->o, r->gate, &lw->w_down, NULL, T);
}

/* One layer over the rows of b. */
static void layer(lm_runner *r, int l, const struct lm_batch *b) {
  const struct lm_config *c = &r->m->cfg;
  const struct lm_weights *w = &r->m->w;
  const struct lm_layer_weights *lw = &w->layers[l];
  const struct lm_backend_ops *ops = r->be->ops;
  int T = b->n_tokens, H = c->hidden_size;
  float eps = c->rms_norm_eps;
  attention_block(r, lw, l, b);
  ops->add_rmsnorm(r->be->st, r->h, r->x, r->o, &lw->mlp_norm, T, H, eps);
  mlp_block(r, lw, T);
  const struct lm_tensor *next_norm =
      l + 1 < c->n_layers ? &w->layers[l + 1].attn_norm : &w->final_norm;
  ops->add_rmsnorm(r->be->st, r->h, r->x, r->o, next_norm, T, H, eps);
}

int lm_runner_step(lm_runner *r, const struct lm_seq_chunk *chunks, int n_chunks,
                   const void **logits, int *n_logits, char *err) {
  const struct lm_config *c = &r->m->cfg;
  const struct lm_weights *w = &r->m->w;
  const struct lm_backend_ops *ops = r->be->ops;
  void *st = r->be->st;
  const struct lm_seq_chunk *lc;
  struct lm_batch b;
  int rc = build_batch(r, chunks, n_chunks, &b, err);
  if (rc != LM_OK || (rc = check_layers(r, chunks, n_chunks, &lc, err)) != LM_OK) return rc;
  if (ops->begin_step && (rc = ops->begin_step(st, &b, err)) != LM_OK) return rc;
  int H = c->hidden_size, L = c->n_layers;
  float eps = c->rms_norm_eps;

  /* a layered chunk's layers take b, the others bo: the step's other
   * chunks, a prefix of b (the layered chunk's rows follow theirs) */
  struct lm_batch bo = b;
  int lb = 0, le = L;
  if (lc) {
    lb = lc->layer_begin;
    le = lc->layer_end;
    bo.n_seqs = n_chunks - 1;
    bo.n_tokens = b.q_start[n_chunks - 1];
  }
  size_t off = (size_t)bo.n_tokens * (size_t)H * ops->act_elem_bytes;
  const struct lm_batch *first = lb == 0 ? &b : &bo;
  if (first->n_tokens > 0) {
    ops->embed(st, r->x, &w->embed, first);
    ops->rmsnorm(st, r->h, r->x, &w->layers[0].attn_norm, first->n_tokens, H, eps);
  }
  for (int l = 0; l < L; l++) {
    if (lc && l == lb && lb > 0) {
      /* the layered chunk rejoins: its residual rows, normed for layer l */
      ops->gather_rows(st, (char *)r->x + off, r->kept, r->iota, lc->n_tokens, H);
      ops->rmsnorm(st, (char *)r->h + off, (char *)r->x + off, &w->layers[l].attn_norm,
                   lc->n_tokens, H, eps);
    }
    const struct lm_batch *cur = l >= lb && l < le ? &b : &bo;
    if (cur->n_tokens > 0) layer(r, l, cur);
    if (lc && l == le - 1 && le < L)
      ops->gather_rows(st, r->kept, r->x, r->iota + bo.n_tokens, lc->n_tokens, H);
  }
  if (b.n_logits > 0) {
    ops->gather_rows(st, r->last, r->h, b.logit_rows, b.n_logits, H);
    ops->logits(st, r->logits, r->last, &w->lm_head, b.n_logits);
  } else if (ops->sync && (rc = ops->sync(st, err)) != LM_OK) {
    /* no sampling follows to report a failed step */
    return rc;
  }
  /* a step without the layered chunk (it waited) leaves its rows kept */
  if (lc) r->kept_kv = NULL;
  if (lc && le < L) {
    r->kept_kv = lc->kv;
    r->kept_tokens = lc->tokens;
    r->kept_start = lc->kv->n_cached_tokens;
    r->kept_n = lc->n_tokens;
    r->kept_layer = le;
  }
  for (int s = 0; s < n_chunks; s++)
    if (&chunks[s] != lc || le == L) chunks[s].kv->n_cached_tokens += chunks[s].n_tokens;
  *logits = r->logits;
  *n_logits = b.n_logits;
  return LM_OK;
}
