/* model.c - config.json, generation_config.json and safetensors weights of
 * a Hugging Face checkpoint, each value checked before anything runs on it.
 *
 * Tensors are described by tables (global and per layer) of name, slot in
 * lm_weights and shape in config terms; the loader walks the tables. */
#include "engine/model.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/json.h"
#include "engine/safetensors.h"

#define CFG    "config.json"
#define GEN    "generation_config.json"
#define INDEX  "model.safetensors.index.json"
#define SINGLE "model.safetensors"

static const struct lm_arch_info lm_archs[] = {
    {"LlamaForCausalLM", 0, 0, "llama"},
    {"MistralForCausalLM", 0, 0, "mistral"},
    {"Qwen2ForCausalLM", 1, 0, "qwen2"},
    {"Qwen3ForCausalLM", 0, 1, "qwen3"},
};
#define N_ARCHS (sizeof(lm_archs) / sizeof(lm_archs[0]))

const struct lm_arch_info *lm_arch_find(const char *hf_name) {
  for (size_t i = 0; hf_name && i < N_ARCHS; i++)
    if (strcmp(lm_archs[i].hf_name, hf_name) == 0) return &lm_archs[i];
  return NULL;
}

/* Error messages quote names taken from the file, which may hold control
 * characters; the promise is one line, so those become '?'. */
static int one_line(char *err, int rc) {
  for (char *p = err; rc != LM_OK && p && *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
  return rc;
}

/* ---- typed field readers: null counts as absent ---- */

static const lm_json *field(const lm_json *obj, const char *key) {
  const lm_json *v = lm_json_get(obj, key);
  return v && v->type != LM_JSON_NULL ? v : NULL;
}

/* Checks that v is an integer in [min, max]. */
static int int_value(const char *file, const char *key, const lm_json *v, int64_t min, int64_t max,
                     int64_t *out, char *err) {
  if (v->type != LM_JSON_NUMBER)
    return lm_errf(err, LM_EFORMAT, "%s: %s: expected an integer, got a %s", file, key,
                   lm_json_type_name(v->type));
  if (!v->is_int) {
    /* integers too long for is_int still get a range message */
    if (v->number == floor(v->number) && (v->number < (double)min || v->number > (double)max))
      return lm_errf(err, LM_ERANGE, "%s: %s: %g is out of range [%lld, %lld]", file, key,
                     v->number, (long long)min, (long long)max);
    return lm_errf(err, LM_EFORMAT, "%s: %s: expected an integer, got %g", file, key, v->number);
  }
  if (v->integer < min || v->integer > max)
    return lm_errf(err, LM_ERANGE, "%s: %s: %lld is out of range [%lld, %lld]", file, key,
                   (long long)v->integer, (long long)min, (long long)max);
  *out = v->integer;
  return LM_OK;
}

/* Reads obj[key] as an integer in [min, max]; *out untouched when absent. */
static int get_int(const char *file, const lm_json *obj, const char *key, int64_t min, int64_t max,
                   int required, int64_t *out, char *err) {
  const lm_json *v = field(obj, key);
  if (!v) return required ? lm_errf(err, LM_EFORMAT, "%s: %s: missing", file, key) : LM_OK;
  return int_value(file, key, v, min, max, out, err);
}

/* Range of a float field: open or closed at either end. */
struct range {
  double min;
  int min_open;
  double max;
  int max_open;
};

/* Reads v (may be NULL: absent) as a finite number within r. */
static int num_value(const char *file, const char *key, const lm_json *v, struct range r,
                     int required, int *present, float *out, char *err) {
  if (present) *present = 0;
  if (!v) return required ? lm_errf(err, LM_EFORMAT, "%s: %s: missing", file, key) : LM_OK;
  if (v->type != LM_JSON_NUMBER)
    return lm_errf(err, LM_EFORMAT, "%s: %s: expected a number, got a %s", file, key,
                   lm_json_type_name(v->type));
  /* checked as the float that is kept: 1e-65 is positive, (float)1e-65 is not */
  double x = v->number, f = fabs(x) <= FLT_MAX ? (float)x : x;
  if (!isfinite(f) || (r.min_open ? f <= r.min : f < r.min) ||
      (r.max_open ? f >= r.max : f > r.max))
    return lm_errf(err, LM_ERANGE, "%s: %s: %g is out of range %c%g, %g%c", file, key, x,
                   r.min_open ? '(' : '[', r.min, r.max, r.max_open ? ')' : ']');
  *out = (float)x;
  if (present) *present = 1;
  return LM_OK;
}

static int get_num(const char *file, const lm_json *obj, const char *key, struct range r,
                   int required, int *present, float *out, char *err) {
  return num_value(file, key, field(obj, key), r, required, present, out, err);
}

static int get_bool(const char *file, const lm_json *obj, const char *key, int *out, char *err) {
  const lm_json *v = field(obj, key);
  if (!v) return LM_OK;
  if (v->type != LM_JSON_BOOL)
    return lm_errf(err, LM_EFORMAT, "%s: %s: expected true or false, got a %s", file, key,
                   lm_json_type_name(v->type));
  *out = v->boolean;
  return LM_OK;
}

/* Appends the token ids of v (an integer or a list of them) to ids,
 * skipping duplicates. */
static int add_ids(const char *file, const char *key, const lm_json *v, int vocab, int32_t *ids,
                   int *n, char *err) {
  size_t count = v->type == LM_JSON_ARRAY ? v->n_kids : 1;
  if (v->type != LM_JSON_ARRAY && v->type != LM_JSON_NUMBER)
    return lm_errf(err, LM_EFORMAT, "%s: %s: expected an integer or a list of integers, got a %s",
                   file, key, lm_json_type_name(v->type));
  for (size_t i = 0; i < count; i++) {
    const lm_json *e = v->type == LM_JSON_ARRAY ? &v->kids[i] : v;
    if (e->type != LM_JSON_NUMBER || !e->is_int)
      return lm_errf(err, LM_EFORMAT, "%s: %s: expected integer token ids", file, key);
    if (e->integer < 0 || e->integer >= vocab)
      return lm_errf(err, LM_ERANGE, "%s: %s: token id %lld is outside the vocabulary [0, %d)",
                     file, key, (long long)e->integer, vocab);
    int dup = 0;
    for (int j = 0; j < *n; j++)
      dup |= ids[j] == (int32_t)e->integer;
    if (dup) continue;
    if (*n == LM_MAX_EOS)
      return lm_errf(err, LM_ERANGE, "%s: %s: more than %d distinct eos token ids", file, key,
                     LM_MAX_EOS);
    ids[(*n)++] = (int32_t)e->integer;
  }
  return LM_OK;
}

static int get_bos(const char *file, const lm_json *obj, int vocab, int32_t *bos, char *err) {
  const lm_json *v = field(obj, "bos_token_id");
  int64_t id;
  int rc;
  if (!v) return LM_OK;
  /* some checkpoints write a one-element list */
  if (v->type == LM_JSON_ARRAY && v->n_kids == 1) v = &v->kids[0];
  if ((rc = int_value(file, "bos_token_id", v, 0, (int64_t)vocab - 1, &id, err))) return rc;
  *bos = (int32_t)id;
  return LM_OK;
}

/* bos_token_id (replacing cfg's) and eos_token_id (merged into cfg's). */
static int get_special_ids(const char *file, const lm_json *obj, struct lm_config *cfg, char *err) {
  int rc;
  if ((rc = get_bos(file, obj, cfg->vocab_size, &cfg->bos_token_id, err))) return rc;
  const lm_json *eos = field(obj, "eos_token_id");
  if (!eos) return LM_OK;
  return add_ids(file, "eos_token_id", eos, cfg->vocab_size, cfg->eos_token_ids, &cfg->n_eos, err);
}

/* ---- config.json ---- */

struct int_field {
  const char *key;
  size_t off; /* of an int in struct lm_config */
  int64_t max;
  int required; /* else 0 stays and a default is derived */
};

#define COFF(f) offsetof(struct lm_config, f)
/* Upper bounds are far above any released model and keep every product
 * of two of them inside int64 and every [rows, cols] inside size_t. */
static const struct int_field cfg_ints[] = {
    {"hidden_size", COFF(hidden_size), 65536, 1},
    {"intermediate_size", COFF(intermediate_size), 1 << 20, 1},
    {"num_hidden_layers", COFF(n_layers), 1024, 1},
    {"num_attention_heads", COFF(n_heads), 1024, 1},
    {"num_key_value_heads", COFF(n_kv_heads), 1024, 0},
    {"head_dim", COFF(head_dim), 4096, 0},
    {"vocab_size", COFF(vocab_size), 1 << 22, 1},
    {"max_position_embeddings", COFF(max_position_embeddings), 1 << 27, 1},
};

struct dtype_name {
  const char *name;
  enum lm_dtype dtype;
};
static const struct dtype_name torch_dtypes[] = {
    {"float32", LM_DTYPE_F32},
    {"float16", LM_DTYPE_F16},
    {"bfloat16", LM_DTYPE_BF16},
};

static int parse_arch(const lm_json *root, struct lm_config *cfg, char *err) {
  const lm_json *a = field(root, "architectures");
  const char *name = NULL;
  if (a) {
    if (a->type != LM_JSON_ARRAY || a->n_kids == 0 || a->kids[0].type != LM_JSON_STRING)
      return lm_errf(err, LM_EFORMAT, CFG ": architectures: expected a non-empty list of names");
    name = a->kids[0].str;
    cfg->arch = lm_arch_find(name);
  } else {
    const lm_json *t = lm_json_get_type(root, "model_type", LM_JSON_STRING);
    if (!t) return lm_errf(err, LM_EFORMAT, CFG ": architectures: missing (and no model_type)");
    name = t->str;
    for (size_t i = 0; i < N_ARCHS; i++)
      if (strcmp(lm_archs[i].model_type, name) == 0) cfg->arch = &lm_archs[i];
  }
  if (cfg->arch) return LM_OK;
  char list[256] = "";
  for (size_t i = 0; i < N_ARCHS; i++)
    snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
             lm_archs[i].hf_name);
  return lm_errf(err, LM_EUNSUP, CFG ": architectures: \"%.100s\" is not supported (supported: %s)",
                 name, list);
}

/* rope_scaling (transformers 4) or rope_parameters (transformers 5, which
 * also moves rope_theta inside). */
static int parse_rope(const lm_json *root, struct lm_config *cfg, char *err) {
  const char *key = "rope_scaling";
  const lm_json *rs = field(root, key);
  const lm_json *rp = field(root, "rope_parameters");
  int rc;
  if (rp && rp->type != LM_JSON_OBJECT)
    return lm_errf(err, LM_EFORMAT, CFG ": rope_parameters: expected an object, got a %s",
                   lm_json_type_name(rp->type));
  if (!rs && rp) {
    rs = rp;
    key = "rope_parameters";
  }
  const struct range theta = {0, 1, 1e12, 0};
  cfg->rope_theta = 10000.0f;
  if ((rc = get_num(CFG, root, "rope_theta", theta, 0, NULL, &cfg->rope_theta, err))) return rc;
  if (rp && (rc = num_value(CFG, "rope_parameters.rope_theta", field(rp, "rope_theta"), theta, 0,
                            NULL, &cfg->rope_theta, err)))
    return rc;
  if (!rs) return LM_OK;
  if (rs->type != LM_JSON_OBJECT)
    return lm_errf(err, LM_EFORMAT, CFG ": %s: expected an object or null, got a %s", key,
                   lm_json_type_name(rs->type));
  const lm_json *t = lm_json_get_type(rs, "rope_type", LM_JSON_STRING);
  if (!t) t = lm_json_get_type(rs, "type", LM_JSON_STRING);
  if (!t) return lm_errf(err, LM_EFORMAT, CFG ": %s: missing \"rope_type\"", key);
  if (strcmp(t->str, "default") == 0) return LM_OK;
  if (strcmp(t->str, "llama3") != 0)
    return lm_errf(err, LM_EUNSUP,
                   CFG ": %s: rope_type \"%.64s\" is not supported (only llama3 or default)", key,
                   t->str);
  char k[64];
  int64_t orig = 0;
  static const char *const names[] = {"factor", "low_freq_factor", "high_freq_factor"};
  float *dst[] = {&cfg->rope_factor, &cfg->rope_low_freq_factor, &cfg->rope_high_freq_factor};
  for (int i = 0; i < 3; i++) {
    snprintf(k, sizeof(k), "%s.%s", key, names[i]);
    if ((rc = num_value(CFG, k, field(rs, names[i]), (struct range){0, 1, 1e6, 0}, 1, NULL, dst[i],
                        err)))
      return rc;
  }
  if (cfg->rope_factor < 1.0f)
    return lm_errf(err, LM_ERANGE, CFG ": %s.factor: %g must be at least 1", key,
                   (double)cfg->rope_factor);
  if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
    return lm_errf(err, LM_ERANGE,
                   CFG ": %s.high_freq_factor: %g must exceed low_freq_factor %g (it divides by "
                       "their difference)",
                   key, (double)cfg->rope_high_freq_factor, (double)cfg->rope_low_freq_factor);
  snprintf(k, sizeof(k), "%s.original_max_position_embeddings", key);
  const lm_json *o = field(rs, "original_max_position_embeddings");
  if (!o) return lm_errf(err, LM_EFORMAT, CFG ": %s: missing", k);
  if ((rc = int_value(CFG, k, o, 1, 1 << 27, &orig, err))) return rc;
  cfg->rope_original_max_position = (int)orig;
  cfg->rope_llama3 = 1;
  return LM_OK;
}

static int config_parse(const char *json, size_t len, struct lm_config *cfg, char *err) {
  lm_json_doc *doc = NULL;
  char jerr[LM_ERR_LEN];
  int rc;

  memset(cfg, 0, sizeof(*cfg));
  cfg->bos_token_id = -1;
  cfg->dtype = LM_DTYPE_BF16;
  if ((rc = lm_json_parse(json, len, &doc, jerr)) != LM_OK)
    return lm_errf(err, rc, CFG ": %s", jerr);
  const lm_json *root = lm_json_root(doc);
  if (root->type != LM_JSON_OBJECT) {
    rc = lm_errf(err, LM_EFORMAT, CFG ": expected an object, got a %s",
                 lm_json_type_name(root->type));
    goto err;
  }
  if ((rc = parse_arch(root, cfg, err))) goto err;

  for (size_t i = 0; i < sizeof(cfg_ints) / sizeof(cfg_ints[0]); i++) {
    const struct int_field *f = &cfg_ints[i];
    int64_t v = 0;
    if ((rc = get_int(CFG, root, f->key, 1, f->max, f->required, &v, err))) goto err;
    *(int *)((char *)cfg + f->off) = (int)v;
  }
  if (!cfg->n_kv_heads) cfg->n_kv_heads = cfg->n_heads;
  if (cfg->n_kv_heads > cfg->n_heads || cfg->n_heads % cfg->n_kv_heads) {
    rc = lm_errf(err, LM_ERANGE,
                 CFG ": num_key_value_heads: %d does not divide num_attention_heads %d",
                 cfg->n_kv_heads, cfg->n_heads);
    goto err;
  }
  if (!cfg->head_dim) {
    if (cfg->hidden_size % cfg->n_heads) {
      rc = lm_errf(err, LM_ERANGE,
                   CFG ": hidden_size: %d is not a multiple of num_attention_heads %d (and "
                       "head_dim is absent)",
                   cfg->hidden_size, cfg->n_heads);
      goto err;
    }
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
  }
  if (cfg->head_dim % 2) {
    rc = lm_errf(err, LM_ERANGE, CFG ": head_dim: %d must be even (RoPE rotates pairs)",
                 cfg->head_dim);
    goto err;
  }
  if ((int64_t)cfg->n_heads * cfg->head_dim > (1 << 20)) {
    rc = lm_errf(err, LM_ERANGE, CFG ": num_attention_heads * head_dim: %lld is over %d",
                 (long long)cfg->n_heads * cfg->head_dim, 1 << 20);
    goto err;
  }
  if ((rc = get_num(CFG, root, "rms_norm_eps", (struct range){0, 1, 1, 1}, 1, NULL,
                    &cfg->rms_norm_eps, err)))
    goto err;
  if ((rc = parse_rope(root, cfg, err))) goto err;
  if ((rc = get_bool(CFG, root, "tie_word_embeddings", &cfg->tie_word_embeddings, err))) goto err;

  /* Flags that change the computation in ways no arch row describes. Qwen2
   * always has q/k/v bias whatever attention_bias says, as in transformers;
   * elsewhere it also adds an o_proj bias, which lm_layer_weights lacks. */
  int attention_bias = 0, mlp_bias = 0;
  if ((rc = get_bool(CFG, root, "attention_bias", &attention_bias, err))) goto err;
  if ((rc = get_bool(CFG, root, "mlp_bias", &mlp_bias, err))) goto err;
  if ((attention_bias && !cfg->arch->qkv_bias) || mlp_bias) {
    rc = lm_errf(err, LM_EUNSUP, CFG ": %s: true is not supported for %s",
                 mlp_bias ? "mlp_bias" : "attention_bias", cfg->arch->hf_name);
    goto err;
  }

  /* Sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window)
   * equals full attention while a sequence fits in the window, so lmserve
   * serves such a model with its context capped at the window. */
  int64_t window = 0;
  int use_window = 1;
  if ((rc = get_int(CFG, root, "sliding_window", 1, INT32_MAX, 0, &window, err))) goto err;
  if ((rc = get_bool(CFG, root, "use_sliding_window", &use_window, err))) goto err;
  if (window && use_window && window < cfg->max_position_embeddings)
    cfg->max_position_embeddings = (int)window;

  /* informational: the tensors decide */
  const lm_json *dt = lm_json_get_type(root, "torch_dtype", LM_JSON_STRING);
  if (!dt) dt = lm_json_get_type(root, "dtype", LM_JSON_STRING);
  for (size_t i = 0; dt && i < sizeof(torch_dtypes) / sizeof(torch_dtypes[0]); i++)
    if (strcmp(dt->str, torch_dtypes[i].name) == 0) cfg->dtype = torch_dtypes[i].dtype;

  if ((rc = get_special_ids(CFG, root, cfg, err))) goto err;
  rc = LM_OK;

err:
  lm_json_free(doc);
  return rc;
}

/* ---- generation_config.json ---- */

static int gen_config_parse(const char *json, size_t len, struct lm_config *cfg,
                            struct lm_gen_defaults *gen, char *err) {
  lm_json_doc *doc = NULL;
  char jerr[LM_ERR_LEN];
  int64_t top_k = 0;
  int rc;

  memset(gen, 0, sizeof(*gen));
  gen->do_sample = -1;
  if ((rc = lm_json_parse(json, len, &doc, jerr)) != LM_OK)
    return lm_errf(err, rc, GEN ": %s", jerr);
  const lm_json *root = lm_json_root(doc);
  if (root->type != LM_JSON_OBJECT) {
    rc = lm_errf(err, LM_EFORMAT, GEN ": expected an object, got a %s",
                 lm_json_type_name(root->type));
    goto err;
  }
  if ((rc = get_num(GEN, root, "temperature", (struct range){0, 0, 1e6, 0}, 0,
                    &gen->has_temperature, &gen->temperature, err)) ||
      (rc = get_num(GEN, root, "top_p", (struct range){0, 1, 1, 0}, 0, &gen->has_top_p, &gen->top_p,
                    err)) ||
      (rc = get_num(GEN, root, "min_p", (struct range){0, 0, 1, 0}, 0, &gen->has_min_p, &gen->min_p,
                    err)) ||
      (rc = get_num(GEN, root, "repetition_penalty", (struct range){0, 1, 1e6, 0}, 0,
                    &gen->has_repetition_penalty, &gen->repetition_penalty, err)) ||
      (rc = get_int(GEN, root, "top_k", 0, INT32_MAX, 0, &top_k, err)))
    goto err;
  gen->has_top_k = field(root, "top_k") != NULL;
  gen->top_k = (int)top_k;
  if (field(root, "do_sample") && (rc = get_bool(GEN, root, "do_sample", &gen->do_sample, err)))
    goto err;

  /* the generation config is what generate() uses, so its bos wins */
  if ((rc = get_special_ids(GEN, root, cfg, err))) goto err;
  rc = LM_OK;

err:
  lm_json_free(doc);
  return rc;
}

/* ---- weights ---- */

/* A tensor dimension in config terms. */
enum dim { D_HIDDEN, D_INTER, D_VOCAB, D_Q, D_KV, D_HEAD, N_DIMS };
static const char *const dim_names[N_DIMS] = {
    "hidden_size",      "intermediate_size",   "vocab_size",
    "n_heads*head_dim", "n_kv_heads*head_dim", "head_dim",
};

enum need { ALWAYS, IF_QKV_BIAS, IF_QK_NORM, IF_UNTIED };

struct tensor_spec {
  const char *name; /* per-layer: the part after "model.layers.N." */
  size_t off;       /* of the lm_tensor in lm_weights / lm_layer_weights */
  enum need need;
  int n_dims;
  enum dim dims[2];
};

#define WOFF(f) offsetof(struct lm_weights, f)
#define LOFF(f) offsetof(struct lm_layer_weights, f)

static const struct tensor_spec global_specs[] = {
    {"model.embed_tokens.weight", WOFF(embed), ALWAYS, 2, {D_VOCAB, D_HIDDEN}},
    {"model.norm.weight", WOFF(final_norm), ALWAYS, 1, {D_HIDDEN}},
    /* loaded when present even if tied: then it is what the model uses */
    {"lm_head.weight", WOFF(lm_head), IF_UNTIED, 2, {D_VOCAB, D_HIDDEN}},
};

static const struct tensor_spec layer_specs[] = {
    {"input_layernorm.weight", LOFF(attn_norm), ALWAYS, 1, {D_HIDDEN}},
    {"self_attn.q_proj.weight", LOFF(wq), ALWAYS, 2, {D_Q, D_HIDDEN}},
    {"self_attn.k_proj.weight", LOFF(wk), ALWAYS, 2, {D_KV, D_HIDDEN}},
    {"self_attn.v_proj.weight", LOFF(wv), ALWAYS, 2, {D_KV, D_HIDDEN}},
    {"self_attn.o_proj.weight", LOFF(wo), ALWAYS, 2, {D_HIDDEN, D_Q}},
    {"self_attn.q_proj.bias", LOFF(bq), IF_QKV_BIAS, 1, {D_Q}},
    {"self_attn.k_proj.bias", LOFF(bk), IF_QKV_BIAS, 1, {D_KV}},
    {"self_attn.v_proj.bias", LOFF(bv), IF_QKV_BIAS, 1, {D_KV}},
    {"self_attn.q_norm.weight", LOFF(q_norm), IF_QK_NORM, 1, {D_HEAD}},
    {"self_attn.k_norm.weight", LOFF(k_norm), IF_QK_NORM, 1, {D_HEAD}},
    {"post_attention_layernorm.weight", LOFF(mlp_norm), ALWAYS, 1, {D_HIDDEN}},
    {"mlp.gate_proj.weight", LOFF(w_gate), ALWAYS, 2, {D_INTER, D_HIDDEN}},
    {"mlp.up_proj.weight", LOFF(w_up), ALWAYS, 2, {D_INTER, D_HIDDEN}},
    {"mlp.down_proj.weight", LOFF(w_down), ALWAYS, 2, {D_HIDDEN, D_INTER}},
};

/* The open safetensors files of a model; lm_model.files. */
struct model_files {
  size_t n;
  lm_st_file **st; /* [n] */
  char **names;    /* [n] relative to the model dir, for messages */
};

struct wm_entry {
  const char *tensor;
  size_t file;
};

struct loader {
  const char *dir;
  lm_model *m;
  struct model_files *files;
  lm_json_doc *index;  /* model.safetensors.index.json, when sharded */
  struct wm_entry *wm; /* [n_wm] its weight_map sorted by name */
  size_t n_wm;
  int64_t dim[N_DIMS];
  const char *first_name; /* the tensor that fixed cfg.dtype */
  char *err;
};

static void files_free(struct model_files *fs) {
  if (!fs) return;
  for (size_t i = 0; i < fs->n; i++) {
    lm_st_close(fs->st[i]);
    free(fs->names[i]);
  }
  free(fs->st);
  free(fs->names);
  free(fs);
}

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int file_exists(const char *dir, const char *name) {
  char *p = join(dir, name);
  int ok = p && access(p, F_OK) == 0;
  free(p);
  return ok;
}

/* Opens dir/name and appends it to L->files. */
static int add_file(struct loader *L, const char *name) {
  struct model_files *fs = L->files;
  lm_st_file **st = realloc(fs->st, (fs->n + 1) * sizeof(*st));
  if (st) fs->st = st;
  char **names = realloc(fs->names, (fs->n + 1) * sizeof(*names));
  if (names) fs->names = names;
  char *copy = strdup(name), *path = join(L->dir, name);
  int rc = LM_ENOMEM;
  if (!st || !names || !copy || !path) {
    rc = lm_errf(L->err, LM_ENOMEM, "%s: out of memory", name);
    goto err;
  }
  if ((rc = lm_st_open(path, &fs->st[fs->n], L->err)) != LM_OK) goto err;
  fs->names[fs->n++] = copy;
  free(path);
  return LM_OK;
err:
  free(copy);
  free(path);
  return rc;
}

static int cmp_wm(const void *a, const void *b) {
  return strcmp(((const struct wm_entry *)a)->tensor, ((const struct wm_entry *)b)->tensor);
}

/* Reads the index and opens every shard it names. */
static int open_shards(struct loader *L) {
  char *text = NULL, *path = join(L->dir, INDEX);
  size_t len;
  char jerr[LM_ERR_LEN];
  int rc;

  if (!path) return lm_errf(L->err, LM_ENOMEM, INDEX ": out of memory");
  rc = lm_read_file(path, &text, &len, L->err);
  free(path);
  if (rc) return rc;
  if ((rc = lm_json_parse(text, len, &L->index, jerr))) {
    rc = lm_errf(L->err, rc, INDEX ": %s", jerr);
    goto err;
  }
  const lm_json *wm = lm_json_get_type(lm_json_root(L->index), "weight_map", LM_JSON_OBJECT);
  if (!wm || wm->n_kids == 0) {
    rc = lm_errf(L->err, LM_EFORMAT, INDEX ": weight_map: missing or empty");
    goto err;
  }
  L->wm = calloc(wm->n_kids, sizeof(*L->wm));
  if (!L->wm) {
    rc = lm_errf(L->err, LM_ENOMEM, INDEX ": out of memory");
    goto err;
  }
  for (size_t i = 0; i < wm->n_kids; i++) {
    const lm_json *e = &wm->kids[i];
    /* shards sit beside the index; a path elsewhere is refused, not followed */
    if (e->type != LM_JSON_STRING || e->str_len == 0 || strlen(e->str) != e->str_len ||
        strchr(e->str, '/') || e->str[0] == '.') {
      rc = lm_errf(L->err, LM_EFORMAT, INDEX ": weight_map: %.200s: expected a file name", e->key);
      goto err;
    }
    size_t f = 0;
    while (f < L->files->n && strcmp(L->files->names[f], e->str) != 0)
      f++;
    if (f == L->files->n && (rc = add_file(L, e->str))) goto err;
    L->wm[i].tensor = e->key;
    L->wm[i].file = f;
  }
  L->n_wm = wm->n_kids;
  qsort(L->wm, L->n_wm, sizeof(*L->wm), cmp_wm);
  for (size_t i = 1; i < L->n_wm; i++)
    if (strcmp(L->wm[i - 1].tensor, L->wm[i].tensor) == 0 && L->wm[i - 1].file != L->wm[i].file) {
      rc = lm_errf(L->err, LM_EFORMAT, INDEX ": weight_map: %.200s is listed twice",
                   L->wm[i].tensor);
      goto err;
    }
  rc = LM_OK;
err:
  free(text);
  return rc;
}

/* Finds a tensor by name; NULL with *file set to the file it should be in
 * (or SIZE_MAX when the index has no entry) when absent. */
static const struct lm_st_tensor *find(const struct loader *L, const char *name, size_t *file) {
  *file = 0;
  if (L->wm) {
    struct wm_entry key = {.tensor = name};
    const struct wm_entry *e = bsearch(&key, L->wm, L->n_wm, sizeof(*L->wm), cmp_wm);
    if (!e) {
      *file = SIZE_MAX;
      return NULL;
    }
    *file = e->file;
  }
  return lm_st_find(L->files->st[*file], name);
}

static void fmt_shape(char *buf, size_t size, int n, const int64_t *shape) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < n && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < size) snprintf(buf + used, size - used, "]");
}

/* Fills out from the named tensor after checking its dtype and shape.
 * An absent optional tensor leaves out zeroed. */
static int load_tensor(struct loader *L, const char *name, const struct tensor_spec *s,
                       int required, struct lm_tensor *out) {
  size_t fi;
  const struct lm_st_tensor *t = find(L, name, &fi);
  memset(out, 0, sizeof(*out));
  if (!t) {
    if (!required) return LM_OK;
    if (fi == SIZE_MAX)
      return lm_errf(L->err, LM_EFORMAT, INDEX ": weight_map: no entry for tensor %s", name);
    if (L->wm)
      return lm_errf(L->err, LM_EFORMAT, "%s: tensor %s (listed in " INDEX ") is missing",
                     L->files->names[fi], name);
    return lm_errf(L->err, LM_EFORMAT, "%s: tensor %s is missing", L->files->names[fi], name);
  }
  const char *file = L->files->names[fi];
  int64_t want[2];
  int same = t->n_dims == s->n_dims;
  for (int i = 0; i < s->n_dims; i++) {
    want[i] = L->dim[s->dims[i]];
    same = same && t->shape[i] == want[i];
  }
  if (!same) {
    char got[128], exp[128];
    fmt_shape(got, sizeof(got), t->n_dims, t->shape);
    fmt_shape(exp, sizeof(exp), s->n_dims, want);
    return lm_errf(L->err, LM_EFORMAT, "%s: %s: shape %s but config says %s (%s%s%s)", file, name,
                   got, exp, dim_names[s->dims[0]], s->n_dims > 1 ? ", " : "",
                   s->n_dims > 1 ? dim_names[s->dims[1]] : "");
  }
  if (!L->first_name) {
    L->first_name = name;
    L->m->cfg.dtype = t->dtype;
  } else if (t->dtype != L->m->cfg.dtype) {
    return lm_errf(L->err, LM_EUNSUP, "%s: %s: dtype %s but %s is %s (all weights must share one)",
                   file, name, lm_dtype_name(t->dtype), L->first_name,
                   lm_dtype_name(L->m->cfg.dtype));
  }
  out->data = t->data;
  out->dtype = t->dtype;
  out->n_dims = t->n_dims;
  memcpy(out->shape, t->shape, sizeof(out->shape));
  L->m->weight_bytes += t->n_bytes;
  return LM_OK;
}

static int needed(const struct lm_config *c, enum need n) {
  switch (n) {
  case ALWAYS: return 1;
  case IF_QKV_BIAS: return c->arch->qkv_bias;
  case IF_QK_NORM: return c->arch->qk_norm;
  case IF_UNTIED: return !c->tie_word_embeddings;
  }
  return 1;
}

static int load_weights(struct loader *L) {
  lm_model *m = L->m;
  const struct lm_config *c = &m->cfg;
  char name[160];
  int rc;

  L->dim[D_HIDDEN] = c->hidden_size;
  L->dim[D_INTER] = c->intermediate_size;
  L->dim[D_VOCAB] = c->vocab_size;
  L->dim[D_Q] = (int64_t)c->n_heads * c->head_dim;
  L->dim[D_KV] = (int64_t)c->n_kv_heads * c->head_dim;
  L->dim[D_HEAD] = c->head_dim;

  for (size_t i = 0; i < sizeof(global_specs) / sizeof(global_specs[0]); i++) {
    const struct tensor_spec *s = &global_specs[i];
    struct lm_tensor *t = (struct lm_tensor *)((char *)&m->w + s->off);
    if ((rc = load_tensor(L, s->name, s, needed(c, s->need), t))) return rc;
  }
  if (!m->w.lm_head.data) m->w.lm_head = m->w.embed;

  m->w.layers = calloc((size_t)c->n_layers, sizeof(*m->w.layers));
  if (!m->w.layers) return lm_errf(L->err, LM_ENOMEM, "out of memory for %d layers", c->n_layers);
  for (int l = 0; l < c->n_layers; l++) {
    for (size_t i = 0; i < sizeof(layer_specs) / sizeof(layer_specs[0]); i++) {
      const struct tensor_spec *s = &layer_specs[i];
      struct lm_tensor *t = (struct lm_tensor *)((char *)&m->w.layers[l] + s->off);
      int need = needed(c, s->need);
      snprintf(name, sizeof(name), "model.layers.%d.%s", l, s->name);
      if ((rc = load_tensor(L, name, s, need, t))) return rc;
      /* a bias or norm the architecture does not apply would be silently
       * dropped and give wrong outputs */
      if (!need && t->data) {
        size_t fi;
        find(L, name, &fi);
        return lm_errf(L->err, LM_EUNSUP, "%s: %s: unexpected for %s", L->files->names[fi], name,
                       c->arch->hf_name);
      }
    }
  }
  return LM_OK;
}

static int model_load(const char *dir, lm_model **out, char *err) {
  struct loader L = {.dir = dir, .err = err};
  char *text = NULL, *path = NULL;
  size_t len;
  int rc;

  *out = NULL;
  L.m = calloc(1, sizeof(*L.m));
  L.files = calloc(1, sizeof(*L.files));
  if (!L.m || !L.files || !(L.m->dir = strdup(dir))) {
    rc = lm_errf(err, LM_ENOMEM, "out of memory loading %s", dir);
    goto err;
  }
  L.m->files = L.files;

  if (!(path = join(dir, CFG))) {
    rc = lm_errf(err, LM_ENOMEM, "out of memory");
    goto err;
  }
  if ((rc = lm_read_file(path, &text, &len, err))) goto err;
  if ((rc = config_parse(text, len, &L.m->cfg, err))) goto err;
  free(text);
  free(path);
  text = path = NULL;

  L.m->gen.do_sample = -1;
  if (file_exists(dir, GEN)) {
    if (!(path = join(dir, GEN))) {
      rc = lm_errf(err, LM_ENOMEM, "out of memory");
      goto err;
    }
    if ((rc = lm_read_file(path, &text, &len, err))) goto err;
    if ((rc = gen_config_parse(text, len, &L.m->cfg, &L.m->gen, err))) goto err;
  }

  /* as transformers does: a single file wins over an index */
  if (file_exists(dir, SINGLE))
    rc = add_file(&L, SINGLE);
  else if (file_exists(dir, INDEX))
    rc = open_shards(&L);
  else
    rc = lm_errf(err, LM_EIO, "%s: no " SINGLE " or " INDEX, dir);
  if (rc) goto err;
  if ((rc = load_weights(&L))) goto err;

  *out = L.m;
  L.m = NULL;
  L.files = NULL; /* owned by *out */
  rc = LM_OK;

err:
  free(text);
  free(path);
  free(L.wm);
  lm_json_free(L.index);
  if (!L.m || L.m->files != L.files) files_free(L.files);
  lm_model_free(L.m);
  return rc;
}

void lm_model_free(lm_model *m) {
  if (!m) return;
  files_free(m->files);
  free(m->w.layers);
  free(m->dir);
  free(m);
}

size_t lm_model_decode_bytes(const lm_model *m) {
  if (!m || !m->w.embed.data) return 0;
  /* The embedding table is only gathered from, one row per token; when it
   * doubles as the lm_head every byte of it is read. */
  if (m->w.lm_head.data == m->w.embed.data) return m->weight_bytes;
  return m->weight_bytes -
         (size_t)(m->w.embed.shape[0] * m->w.embed.shape[1]) * lm_dtype_size(m->w.embed.dtype);
}

double lm_config_layer_params(const struct lm_config *c) {
  double h = c->hidden_size, q = (double)c->n_heads * c->head_dim,
         kv = (double)c->n_kv_heads * c->head_dim;
  return h * (2 * q + 2 * kv) + 3 * h * c->intermediate_size;
}

double lm_config_matmul_params(const struct lm_config *c) {
  return lm_config_layer_params(c) * c->n_layers + (double)c->hidden_size * c->vocab_size;
}

int lm_config_is_eos(const struct lm_config *cfg, int32_t id) {
  for (int i = 0; i < cfg->n_eos; i++)
    if (cfg->eos_token_ids[i] == id) return 1;
  return 0;
}

int lm_config_parse(const char *json, size_t len, struct lm_config *cfg, char *err) {
  return one_line(err, config_parse(json, len, cfg, err));
}

int lm_model_load(const char *dir, lm_model **out, char *err) {
  return one_line(err, model_load(dir, out, err));
}

int lm_gen_config_parse(const char *json, size_t len, struct lm_config *cfg,
                        struct lm_gen_defaults *gen, char *err) {
  return one_line(err, gen_config_parse(json, len, cfg, gen, err));
}
