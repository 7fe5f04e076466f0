/* model.h - a Hugging Face checkpoint directory: config, generation
 * defaults and weights (safetensors, mmapped and used as stored).
 *
 * Architectures differ only through one row of lm_arch_info each; code that
 * runs the model reads those flags and never compares architecture names. */
#ifndef LM_MODEL_H
#define LM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/lm.h"

#define LM_MAX_EOS  8
#define LM_MAX_DIMS 4

struct lm_arch_info {
  const char *hf_name;    /* "architectures"[0] in config.json */
  int qkv_bias;           /* q_proj, k_proj, v_proj carry a .bias */
  int qk_norm;            /* per-head RMSNorm on q and k before RoPE (q_norm, k_norm) */
  const char *model_type; /* config.json "model_type", used when "architectures" is absent */
};

/* Returns the row for an HF architecture name, or NULL. */
const struct lm_arch_info *lm_arch_find(const char *hf_name);

struct lm_config {
  const struct lm_arch_info *arch;
  int hidden_size;
  int intermediate_size;
  int n_layers;   /* num_hidden_layers */
  int n_heads;    /* num_attention_heads */
  int n_kv_heads; /* num_key_value_heads (defaults to n_heads) */
  int head_dim;   /* head_dim, or hidden_size / n_heads */
  int vocab_size;
  int max_position_embeddings;
  float rms_norm_eps;
  float rope_theta;
  int tie_word_embeddings;
  /* rope_scaling {"rope_type"/"type": "llama3", ...}; rope_llama3 == 0 means
   * plain RoPE */
  int rope_llama3;
  float rope_factor;
  float rope_low_freq_factor;
  float rope_high_freq_factor;
  int rope_original_max_position;
  enum lm_dtype dtype; /* of the stored weights (all tensors share it) */
  /* token ids; -1 when absent */
  int32_t bos_token_id;
  int32_t eos_token_ids[LM_MAX_EOS]; /* config.json and generation_config.json, merged */
  int n_eos;
};

/* Sampling defaults from generation_config.json; has_* is 0 when absent. */
struct lm_gen_defaults {
  int has_temperature, has_top_p, has_top_k, has_repetition_penalty, has_min_p;
  float temperature, top_p, min_p, repetition_penalty;
  int top_k;
  int do_sample; /* -1 when absent */
};

/* A weight as stored. Shapes follow the HF checkpoint: a Linear weight is
 * [out_features, in_features], row-major. */
struct lm_tensor {
  const void *data; /* host pointer into the mmapped file */
  void *dev;        /* a backend's own copy of data, or NULL (backend.h load_weights) */
  enum lm_dtype dtype;
  int n_dims;
  int64_t shape[LM_MAX_DIMS];
};

struct lm_layer_weights {
  struct lm_tensor attn_norm;      /* input_layernorm.weight: [hidden] */
  struct lm_tensor wq, wk, wv, wo; /* q: [n_heads*head_dim, hidden], k/v: [n_kv_heads*head_dim,
                                      hidden], o: [hidden, n_heads*head_dim] */
  struct lm_tensor bq, bk, bv;     /* qkv_bias only: [n_heads*head_dim], [n_kv_heads*head_dim] */
  struct lm_tensor q_norm, k_norm; /* qk_norm only: [head_dim] */
  struct lm_tensor mlp_norm;       /* post_attention_layernorm.weight: [hidden] */
  struct lm_tensor w_gate, w_up,
      w_down; /* gate/up: [intermediate, hidden], down: [hidden, intermediate] */
};

struct lm_weights {
  struct lm_tensor embed;          /* model.embed_tokens.weight: [vocab, hidden] */
  struct lm_tensor final_norm;     /* model.norm.weight: [hidden] */
  struct lm_tensor lm_head;        /* lm_head.weight, or embed when tied: [vocab, hidden] */
  struct lm_layer_weights *layers; /* [n_layers] */
};

typedef struct lm_model lm_model;
struct lm_model {
  char *dir;
  struct lm_config cfg;
  struct lm_gen_defaults gen;
  struct lm_weights w;
  size_t weight_bytes; /* all tensors as stored */
  void *files;         /* mmapped safetensors files (private) */
};

/* Loads DIR/config.json, DIR/generation_config.json (optional) and the
 * safetensors weights, checking every tensor's presence, dtype and shape
 * against the config. On failure err holds one line naming the file and
 * the field or tensor. */
int lm_model_load(const char *dir, lm_model **out, char *err);
void lm_model_free(lm_model *m);

/* Parses config.json text alone (for tests and fuzzing). */
int lm_config_parse(const char *json, size_t len, struct lm_config *cfg, char *err);

/* Parses generation_config.json text alone: sampling defaults into gen
 * (reset first), and its bos_token_id / eos_token_id merged into cfg (eos
 * ids appended without duplicates, every id checked against
 * cfg->vocab_size). cfg must come from lm_config_parse. */
int lm_gen_config_parse(const char *json, size_t len, struct lm_config *cfg,
                        struct lm_gen_defaults *gen, char *err);

/* Bytes of the weights read per decoded token: everything but the
 * embedding table (still counted when tied, as it is the lm_head). */
size_t lm_model_decode_bytes(const lm_model *m);

/* Multiply-adds per token in the weight matmuls of one layer (q, k, v, o,
 * gate, up, down), and of the whole model (every layer and the lm_head;
 * the embedding lookup is no matmul). */
double lm_config_layer_params(const struct lm_config *c);
double lm_config_matmul_params(const struct lm_config *c);

/* 1 when id is one of cfg->eos_token_ids, else 0. */
int lm_config_is_eos(const struct lm_config *cfg, int32_t id);

#endif
