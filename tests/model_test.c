/* model_test.c - checkpoint loading: safetensors validation, config.json
 * and generation_config.json parsing, weight checks against the config.
 * Writes tiny checkpoints into a temporary directory. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw, mkdtemp */
#endif
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/safetensors.h"

static int n_fail, n_pass;
static char tmp_root[256];

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                   \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* err must contain want */
#define CHECK_ERR(rc, err, want)                                                                   \
  do {                                                                                             \
    if ((rc) >= 0 || !strstr((err), (want))) {                                                     \
      fprintf(stderr, "  %s:%d: rc %d, err \"%s\", wanted \"%s\"\n", __FILE__, __LINE__, (rc),     \
              (err), (want));                                                                      \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

#define CHECK_OK(rc, err)                                                                          \
  do {                                                                                             \
    if ((rc) != 0) {                                                                               \
      fprintf(stderr, "  %s:%d: rc %d: %s\n", __FILE__, __LINE__, (rc), (err));                    \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static void run(const char *name, int (*fn)(void)) {
  if (fn() == 0) {
    printf("ok - %s\n", name);
    n_pass++;
  } else {
    printf("not ok - %s\n", name);
    n_fail++;
  }
}

/* ---- writing safetensors ---- */

struct tspec {
  char name[128];
  const char *dtype; /* safetensors name: "BF16" */
  int n_dims;
  int64_t shape[5];
};

static size_t st_dsize(const char *dt) {
  static const struct {
    const char *name;
    size_t size;
  } t[] = {{"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8}, {"U8", 1}, {"F8_E4M3", 1}};
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
    if (strcmp(t[i].name, dt) == 0) return t[i].size;
  return 1;
}

struct buf {
  char *p;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) abort();
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  buf_add(b, tmp, (size_t)n);
}

/* A whole file from a raw JSON header and data_len bytes of data (the header
 * is padded with spaces to 8 bytes, as the reference writer does). */
static void st_raw(struct buf *out, const char *header, size_t data_len) {
  size_t hlen = strlen(header), pad = (8 - hlen % 8) % 8;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (unsigned char)((hlen + pad) >> (8 * i));
  out->len = 0;
  buf_add(out, len8, 8);
  buf_add(out, header, hlen);
  for (size_t i = 0; i < pad; i++)
    buf_add(out, " ", 1);
  for (size_t i = 0; i < data_len; i++) {
    unsigned char c = (unsigned char)(i * 7 + 1);
    buf_add(out, &c, 1);
  }
}

/* A valid file holding the given tensors back to back; byte i of the data
 * section is (i * 7 + 1) & 255. */
static void st_build(struct buf *out, const struct tspec *t, size_t n) {
  struct buf h = {0};
  size_t off = 0;
  buf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
  for (size_t i = 0; i < n; i++) {
    size_t numel = 1;
    buf_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, t[i].dtype);
    for (int d = 0; d < t[i].n_dims; d++) {
      buf_printf(&h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
      numel *= (size_t)t[i].shape[d];
    }
    size_t bytes = numel * st_dsize(t[i].dtype);
    buf_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
    off += bytes;
  }
  buf_printf(&h, "}");
  st_raw(out, h.p, off);
  free(h.p);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len) abort();
  fclose(f);
}

static void write_text(const char *dir, const char *name, const char *text) {
  write_file(dir, name, text, strlen(text));
}

static int st_parse_text(const char *header, size_t data_len, char *err) {
  struct buf b = {0};
  lm_st_file *f = NULL;
  st_raw(&b, header, data_len);
  int rc = lm_st_parse("t.safetensors", b.p, b.len, &f, err);
  lm_st_close(f);
  free(b.p);
  return rc;
}

/* ---- config.json ---- */

/* Tiny dims: hidden 8, 2 heads of 4, 1 kv head, intermediate 12, 2 layers,
 * vocab 32. */
static const char *const base_cfg[][2] = {
    {"architectures", "[\"LlamaForCausalLM\"]"},
    {"hidden_size", "8"},
    {"intermediate_size", "12"},
    {"num_hidden_layers", "2"},
    {"num_attention_heads", "2"},
    {"num_key_value_heads", "1"},
    {"vocab_size", "32"},
    {"max_position_embeddings", "64"},
    {"rms_norm_eps", "1e-05"},
    {"rope_theta", "500000.0"},
    {"tie_word_embeddings", "false"},
    {"torch_dtype", "\"bfloat16\""},
    {"bos_token_id", "1"},
    {"eos_token_id", "2"},
};

/* base_cfg with overrides: pairs of key, value (NULL value: remove; a key
 * not in base_cfg is appended), ended by NULL. */
static void vcfg_text(struct buf *b, va_list ap) {
  const char *ov[32][2];
  int n_ov = 0, used[32] = {0};
  for (const char *k; (k = va_arg(ap, const char *)) && n_ov < 32; n_ov++) {
    ov[n_ov][0] = k;
    ov[n_ov][1] = va_arg(ap, const char *);
  }
  b->len = 0;
  buf_printf(b, "{");
  int first = 1;
  for (size_t i = 0; i < sizeof(base_cfg) / sizeof(base_cfg[0]); i++) {
    const char *v = base_cfg[i][1];
    for (int j = 0; j < n_ov; j++)
      if (strcmp(ov[j][0], base_cfg[i][0]) == 0) {
        v = ov[j][1];
        used[j] = 1;
      }
    if (!v) continue;
    buf_printf(b, "%s\"%s\": %s", first ? "" : ", ", base_cfg[i][0], v);
    first = 0;
  }
  for (int j = 0; j < n_ov; j++)
    if (!used[j] && ov[j][1]) buf_printf(b, ", \"%s\": %s", ov[j][0], ov[j][1]);
  buf_printf(b, "}");
}

static void cfg_text(struct buf *b, ...) {
  va_list ap;
  va_start(ap, b);
  vcfg_text(b, ap);
  va_end(ap);
}

/* lm_config_parse on base_cfg with overrides (as cfg_text) */
static int cfg_parse(struct lm_config *cfg, char *err, ...) {
  struct buf b = {0};
  va_list ap;
  va_start(ap, err);
  vcfg_text(&b, ap);
  va_end(ap);
  int rc = lm_config_parse(b.p, b.len, cfg, err);
  free(b.p);
  return rc;
}
#define CFG_PARSE(cfg, err, ...) cfg_parse((cfg), (err), __VA_ARGS__, (const char *)NULL)

/* ---- model directories ---- */

struct mopts {
  const char *arch;
  const char *dtype; /* safetensors name */
  int tied;
  int lm_head_when_tied;
  int shards;             /* 0: model.safetensors; else that many shards plus an index */
  int head_dim;           /* explicit head_dim, 0 for hidden / heads */
  const char *skip;       /* tensor left out */
  const char *bad_shape;  /* tensor whose first dim is one too large */
  const char *odd_dtype;  /* tensor stored as F16 */
  const char *extra;      /* tensor added (shape [8]) */
  const char *gen_config; /* generation_config.json text */
  int drop_shard;         /* shard file (1-based) not written */
  const char *index_skip; /* tensor left out of the weight_map */
};

static int layer_tensors(const struct mopts *o, int l, struct tspec *t) {
  int hd = o->head_dim ? o->head_dim : 4, q = 2 * hd, kv = hd, n = 0;
  int bias = strcmp(o->arch, "Qwen2ForCausalLM") == 0;
  int qkn = strcmp(o->arch, "Qwen3ForCausalLM") == 0;
  struct {
    const char *name;
    int n_dims, d0, d1, use;
  } s[] = {
      {"input_layernorm.weight", 1, 8, 0, 1},
      {"self_attn.q_proj.weight", 2, q, 8, 1},
      {"self_attn.k_proj.weight", 2, kv, 8, 1},
      {"self_attn.v_proj.weight", 2, kv, 8, 1},
      {"self_attn.o_proj.weight", 2, 8, q, 1},
      {"self_attn.q_proj.bias", 1, q, 0, bias},
      {"self_attn.k_proj.bias", 1, kv, 0, bias},
      {"self_attn.v_proj.bias", 1, kv, 0, bias},
      {"self_attn.q_norm.weight", 1, hd, 0, qkn},
      {"self_attn.k_norm.weight", 1, hd, 0, qkn},
      {"post_attention_layernorm.weight", 1, 8, 0, 1},
      {"mlp.gate_proj.weight", 2, 12, 8, 1},
      {"mlp.up_proj.weight", 2, 12, 8, 1},
      {"mlp.down_proj.weight", 2, 8, 12, 1},
  };
  for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
    if (!s[i].use) continue;
    snprintf(t[n].name, sizeof(t[n].name), "model.layers.%d.%s", l, s[i].name);
    t[n].n_dims = s[i].n_dims;
    t[n].shape[0] = s[i].d0;
    t[n].shape[1] = s[i].d1;
    n++;
  }
  return n;
}

/* Writes a checkpoint into a fresh directory; returns its path (static). */
static const char *make_model(const struct mopts *o) {
  static char dir[512];
  static int serial;
  struct tspec t[64];
  int n = 0;
  snprintf(dir, sizeof(dir), "%s/m%d", tmp_root, serial++);
  if (mkdir(dir, 0700) != 0) abort();

  struct buf b = {0};
  char arch[64], hd[16], tied[8];
  snprintf(arch, sizeof(arch), "[\"%s\"]", o->arch);
  snprintf(hd, sizeof(hd), "%d", o->head_dim);
  snprintf(tied, sizeof(tied), "%s", o->tied ? "true" : "false");
  cfg_text(&b, "architectures", arch, "tie_word_embeddings", tied, "head_dim",
           o->head_dim ? hd : NULL, NULL);
  write_text(dir, "config.json", b.p);
  if (o->gen_config) write_text(dir, "generation_config.json", o->gen_config);

  snprintf(t[n].name, sizeof(t[n].name), "model.embed_tokens.weight");
  t[n].n_dims = 2, t[n].shape[0] = 32, t[n].shape[1] = 8, n++;
  snprintf(t[n].name, sizeof(t[n].name), "model.norm.weight");
  t[n].n_dims = 1, t[n].shape[0] = 8, n++;
  if (!o->tied || o->lm_head_when_tied) {
    snprintf(t[n].name, sizeof(t[n].name), "lm_head.weight");
    t[n].n_dims = 2, t[n].shape[0] = 32, t[n].shape[1] = 8, n++;
  }
  for (int l = 0; l < 2; l++)
    n += layer_tensors(o, l, t + n);
  if (o->extra) {
    snprintf(t[n].name, sizeof(t[n].name), "%s", o->extra);
    t[n].n_dims = 1, t[n].shape[0] = 8, n++;
  }
  int m = 0;
  for (int i = 0; i < n; i++) {
    t[i].dtype = o->odd_dtype && strcmp(t[i].name, o->odd_dtype) == 0 ? "F16" : o->dtype;
    if (o->bad_shape && strcmp(t[i].name, o->bad_shape) == 0) t[i].shape[0]++;
    if (!o->skip || strcmp(t[i].name, o->skip) != 0) t[m++] = t[i];
  }
  n = m;

  if (!o->shards) {
    st_build(&b, t, (size_t)n);
    write_file(dir, "model.safetensors", b.p, b.len);
  } else {
    struct buf idx = {0};
    buf_printf(&idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    int first = 1;
    for (int s = 0; s < o->shards; s++) {
      struct tspec part[64];
      int k = 0;
      char fname[64];
      snprintf(fname, sizeof(fname), "model-%05d-of-%05d.safetensors", s + 1, o->shards);
      for (int i = s; i < n; i += o->shards) {
        part[k++] = t[i];
        if (o->index_skip && strcmp(t[i].name, o->index_skip) == 0) continue;
        buf_printf(&idx, "%s\"%s\": \"%s\"", first ? "" : ", ", t[i].name, fname);
        first = 0;
      }
      st_build(&b, part, (size_t)k);
      if (o->drop_shard != s + 1) write_file(dir, fname, b.p, b.len);
    }
    buf_printf(&idx, "}}");
    write_text(dir, "model.safetensors.index.json", idx.p);
    free(idx.p);
  }
  free(b.p);
  return dir;
}

static int load_err(const struct mopts *o, const char *want) {
  char err[LM_ERR_LEN] = "";
  lm_model *m = NULL;
  int rc = lm_model_load(make_model(o), &m, err);
  lm_model_free(m);
  CHECK_ERR(rc, err, want);
  CHECK(m == NULL);
  return 0;
}

/* ---- tests: architectures and config.json ---- */

static int test_arch_table(void) {
  const struct lm_arch_info *a;
  CHECK((a = lm_arch_find("LlamaForCausalLM")) && !a->qkv_bias && !a->qk_norm);
  CHECK((a = lm_arch_find("MistralForCausalLM")) && !a->qkv_bias && !a->qk_norm);
  CHECK((a = lm_arch_find("Qwen2ForCausalLM")) && a->qkv_bias && !a->qk_norm);
  CHECK((a = lm_arch_find("Qwen3ForCausalLM")) && !a->qkv_bias && a->qk_norm);
  CHECK(!lm_arch_find("GPT2LMHeadModel") && !lm_arch_find(""));
  return 0;
}

static int test_config_good(void) {
  struct lm_config c;
  char err[LM_ERR_LEN] = "";
  CHECK_OK(CFG_PARSE(&c, err, "x", NULL), err);
  CHECK(c.hidden_size == 8 && c.intermediate_size == 12 && c.n_layers == 2 && c.n_heads == 2);
  CHECK(c.n_kv_heads == 1 && c.head_dim == 4 && c.vocab_size == 32);
  CHECK(c.max_position_embeddings == 64 && c.rms_norm_eps == 1e-5f && c.rope_theta == 500000.0f);
  CHECK(!c.tie_word_embeddings && !c.rope_llama3 && c.dtype == LM_DTYPE_BF16);
  CHECK(c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2);
  /* defaults */
  CHECK_OK(CFG_PARSE(&c, err, "num_key_value_heads", NULL, "rope_theta", NULL, "bos_token_id", NULL,
                     "eos_token_id", "null", "tie_word_embeddings", NULL),
           err);
  CHECK(c.n_kv_heads == 2 && c.rope_theta == 10000.0f && c.bos_token_id == -1 && c.n_eos == 0);
  CHECK(!c.tie_word_embeddings);
  /* head_dim may differ from hidden / heads */
  CHECK_OK(CFG_PARSE(&c, err, "head_dim", "6"), err);
  CHECK(c.head_dim == 6);
  /* model_type when architectures is absent; "dtype" as in transformers 5 */
  CHECK_OK(CFG_PARSE(&c, err, "architectures", NULL, "model_type", "\"qwen3\"", "torch_dtype", NULL,
                     "dtype", "\"float16\""),
           err);
  CHECK(c.arch == lm_arch_find("Qwen3ForCausalLM") && c.dtype == LM_DTYPE_F16);
  return 0;
}

static int test_config_eos_list(void) {
  struct lm_config c;
  char err[LM_ERR_LEN] = "";
  CHECK_OK(CFG_PARSE(&c, err, "eos_token_id", "[2, 5, 2, 7]"), err);
  CHECK(c.n_eos == 3 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 5);
  CHECK(c.eos_token_ids[2] == 7);
  CHECK_OK(CFG_PARSE(&c, err, "eos_token_id", "[]", "bos_token_id", "[3]"), err);
  CHECK(c.n_eos == 0 && c.bos_token_id == 3);
  CHECK_ERR(CFG_PARSE(&c, err, "eos_token_id", "[2, 32]"), err,
            "config.json: eos_token_id: token id 32 is outside the vocabulary [0, 32)");
  CHECK_ERR(CFG_PARSE(&c, err, "eos_token_id", "[1,2,3,4,5,6,7,8,9]"), err,
            "more than 8 distinct eos token ids");
  CHECK_ERR(CFG_PARSE(&c, err, "eos_token_id", "\"2\""), err,
            "config.json: eos_token_id: expected");
  CHECK_ERR(CFG_PARSE(&c, err, "eos_token_id", "[2.5]"), err, "expected integer token ids");
  return 0;
}

static int test_config_sliding_window(void) {
  struct lm_config c;
  char err[LM_ERR_LEN] = "";
  CHECK_OK(CFG_PARSE(&c, err, "sliding_window", "16"), err);
  CHECK(c.max_position_embeddings == 16);
  CHECK_OK(CFG_PARSE(&c, err, "sliding_window", "16", "use_sliding_window", "false"), err);
  CHECK(c.max_position_embeddings == 64);
  CHECK_OK(CFG_PARSE(&c, err, "sliding_window", "null"), err);
  CHECK(c.max_position_embeddings == 64);
  CHECK_OK(CFG_PARSE(&c, err, "sliding_window", "4096"), err);
  CHECK(c.max_position_embeddings == 64);
  return 0;
}

static int test_config_rope(void) {
  struct lm_config c;
  char err[LM_ERR_LEN] = "";
  const char *l3 = "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                   "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}";
  CHECK_OK(CFG_PARSE(&c, err, "rope_scaling", l3), err);
  CHECK(c.rope_llama3 && c.rope_factor == 8.0f && c.rope_low_freq_factor == 1.0f);
  CHECK(c.rope_high_freq_factor == 4.0f && c.rope_original_max_position == 8192);
  CHECK_OK(CFG_PARSE(&c, err, "rope_scaling", "null"), err);
  CHECK(!c.rope_llama3);
  /* transformers 5: rope_parameters holds rope_theta */
  CHECK_OK(CFG_PARSE(&c, err, "rope_theta", NULL, "rope_parameters",
                     "{\"rope_type\": \"default\", \"rope_theta\": 1000000.0}"),
           err);
  CHECK(!c.rope_llama3 && c.rope_theta == 1e6f);
  CHECK_OK(CFG_PARSE(&c, err, "rope_theta", NULL, "rope_parameters",
                     "{\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 32.0, "
                     "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                     "\"original_max_position_embeddings\": 8192}"),
           err);
  CHECK(c.rope_llama3 && c.rope_factor == 32.0f && c.rope_theta == 5e5f);
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}"), err,
            "config.json: rope_scaling: rope_type \"yarn\" is not supported");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}"), err,
            "rope_type \"linear\" is not supported");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling", "{\"rope_type\": \"llama3\"}"), err,
            "config.json: rope_scaling.factor: missing");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling",
                      "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, "
                      "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}"),
            err, "high_freq_factor: 4 must exceed low_freq_factor 4");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling",
                      "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                      "\"high_freq_factor\": 4.0}"),
            err, "rope_scaling.original_max_position_embeddings: missing");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_scaling", "[]"), err, "rope_scaling: expected an object");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_theta", "0"), err, "config.json: rope_theta: 0 is out of");
  CHECK_ERR(CFG_PARSE(&c, err, "rope_theta", "-5"), err, "rope_theta: -5 is out of range");
  return 0;
}

static int test_config_ranges(void) {
  static const struct {
    const char *key, *val, *want;
  } cases[] = {
      {"hidden_size", "0", "config.json: hidden_size: 0 is out of range [1, 65536]"},
      {"hidden_size", "-8", "config.json: hidden_size: -8 is out of range"},
      {"hidden_size", "70000", "config.json: hidden_size: 70000 is out of range"},
      {"hidden_size", "\"8\"", "config.json: hidden_size: expected an integer, got a string"},
      {"hidden_size", "8.5", "config.json: hidden_size: expected an integer, got 8.5"},
      {"hidden_size", "1e300", "config.json: hidden_size: 1e+300 is out of range"},
      {"hidden_size", NULL, "config.json: hidden_size: missing"},
      {"intermediate_size", "0", "config.json: intermediate_size: 0 is out of range"},
      {"num_hidden_layers", "2000", "config.json: num_hidden_layers: 2000 is out of range"},
      {"num_attention_heads", "2048", "config.json: num_attention_heads: 2048 is out of range"},
      {"num_attention_heads", "3", "hidden_size: 8 is not a multiple of num_attention_heads 3"},
      {"vocab_size", "5000000", "config.json: vocab_size: 5000000 is out of range"},
      {"vocab_size", "1", "config.json: bos_token_id: 1 is out of range [0, 0]"},
      {"max_position_embeddings", "0", "config.json: max_position_embeddings: 0 is out of range"},
      {"rms_norm_eps", "0", "config.json: rms_norm_eps: 0 is out of range (0, 1)"},
      {"rms_norm_eps", "1", "config.json: rms_norm_eps: 1 is out of range (0, 1)"},
      {"rms_norm_eps", "null", "config.json: rms_norm_eps: missing"},
      {"rms_norm_eps", "1e-65", "config.json: rms_norm_eps: 1e-65 is out of range (0, 1)"},
      {"head_dim", "5", "config.json: head_dim: 5 must be even"},
      {"head_dim", "0", "config.json: head_dim: 0 is out of range"},
      {"bos_token_id", "32", "config.json: bos_token_id: 32 is out of range [0, 31]"},
      {"bos_token_id", "-1", "config.json: bos_token_id: -1 is out of range"},
      {"tie_word_embeddings", "1", "config.json: tie_word_embeddings: expected true or false"},
      {"architectures", "[\"GPT2LMHeadModel\"]",
       "config.json: architectures: \"GPT2LMHeadModel\" is not supported"},
      {"architectures", "[]", "config.json: architectures: expected a non-empty list"},
      {"attention_bias", "true", "config.json: attention_bias: true is not supported"},
      {"mlp_bias", "true", "config.json: mlp_bias: true is not supported"},
  };
  char err[LM_ERR_LEN];
  struct lm_config c;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    err[0] = '\0';
    CHECK_ERR(CFG_PARSE(&c, err, cases[i].key, cases[i].val), err, cases[i].want);
  }
  CHECK_ERR(CFG_PARSE(&c, err, "num_attention_heads", "8", "num_key_value_heads", "3",
                      "hidden_size", "64"),
            err, "config.json: num_key_value_heads: 3 does not divide num_attention_heads 8");
  CHECK_ERR(lm_config_parse("[1]", 3, &c, err), err, "config.json: expected an object");
  CHECK_ERR(lm_config_parse("{\"a\":", 5, &c, err), err, "config.json: invalid JSON at byte 5");
  CHECK_ERR(lm_config_parse("", 0, &c, err), err, "config.json: invalid JSON");
  return 0;
}

static int test_gen_config(void) {
  struct lm_config c;
  struct lm_gen_defaults g;
  char err[LM_ERR_LEN] = "";
  const char *gc = "{\"bos_token_id\": 1, \"eos_token_id\": [2, 9, 2], \"temperature\": 0.6, "
                   "\"top_p\": 0.9, \"top_k\": 20, \"min_p\": 0.05, \"repetition_penalty\": 1.1, "
                   "\"do_sample\": true, \"transformers_version\": \"4.45.0\"}";
  CHECK_OK(CFG_PARSE(&c, err, "eos_token_id", "[2, 3]"), err);
  CHECK_OK(lm_gen_config_parse(gc, strlen(gc), &c, &g, err), err);
  CHECK(c.n_eos == 3 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 3);
  CHECK(c.eos_token_ids[2] == 9 && c.bos_token_id == 1);
  CHECK(g.has_temperature && g.temperature == 0.6f && g.has_top_p && g.top_p == 0.9f);
  CHECK(g.has_top_k && g.top_k == 20 && g.has_min_p && g.min_p == 0.05f);
  CHECK(g.has_repetition_penalty && g.repetition_penalty == 1.1f && g.do_sample == 1);

  const char *nulls = "{\"temperature\": null, \"top_k\": null, \"eos_token_id\": 4}";
  CHECK_OK(lm_gen_config_parse(nulls, strlen(nulls), &c, &g, err), err);
  CHECK(!g.has_temperature && !g.has_top_k && !g.has_top_p && g.do_sample == -1);
  CHECK(c.n_eos == 4 && c.eos_token_ids[3] == 4);

  static const struct {
    const char *text, *want;
  } bad[] = {
      {"{\"temperature\": -1}", "generation_config.json: temperature: -1 is out of range"},
      {"{\"top_p\": 0}", "generation_config.json: top_p: 0 is out of range (0, 1]"},
      {"{\"top_p\": 1.5}", "top_p: 1.5 is out of range"},
      {"{\"top_k\": -1}", "generation_config.json: top_k: -1 is out of range"},
      {"{\"min_p\": 2}", "min_p: 2 is out of range"},
      {"{\"repetition_penalty\": 0}", "repetition_penalty: 0 is out of range"},
      {"{\"do_sample\": \"yes\"}", "generation_config.json: do_sample: expected true or false"},
      {"{\"eos_token_id\": [40]}", "generation_config.json: eos_token_id: token id 40 is outside"},
      {"{\"bos_token_id\": 99}", "generation_config.json: bos_token_id: 99 is out of range"},
      {"[]", "generation_config.json: expected an object"},
      {"{", "generation_config.json: invalid JSON"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    CHECK_ERR(lm_gen_config_parse(bad[i].text, strlen(bad[i].text), &c, &g, err), err, bad[i].want);
  }
  return 0;
}

/* ---- tests: safetensors ---- */

static int test_st_valid(void) {
  struct buf b = {0};
  struct tspec t[3] = {{"a", "F32", 2, {2, 3}}, {"b", "BF16", 1, {5}}, {"scalar", "F16", 0, {0}}};
  char err[LM_ERR_LEN] = "";
  lm_st_file *f = NULL;
  st_build(&b, t, 3);
  CHECK_OK(lm_st_parse("x.safetensors", b.p, b.len, &f, err), err);
  CHECK(lm_st_count(f) == 3);
  const struct lm_st_tensor *a = lm_st_find(f, "a"), *bb = lm_st_find(f, "b");
  const struct lm_st_tensor *s = lm_st_find(f, "scalar");
  CHECK(a && a->dtype == LM_DTYPE_F32 && a->n_dims == 2 && a->shape[0] == 2 && a->shape[1] == 3);
  CHECK(a->n_bytes == 24 && bb->n_bytes == 10 && bb->dtype == LM_DTYPE_BF16);
  CHECK(s && s->n_dims == 0 && s->n_bytes == 2 && s->dtype == LM_DTYPE_F16);
  size_t hlen = b.len - 24 - 10 - 2;
  CHECK((const char *)a->data == b.p + hlen && (const char *)bb->data == b.p + hlen + 24);
  CHECK(*(const unsigned char *)bb->data == (unsigned char)(24 * 7 + 1));
  CHECK(lm_st_tensor_at(f, 1) == bb && lm_st_tensor_at(f, 3) == NULL);
  CHECK(!lm_st_find(f, "c") && !lm_st_find(f, "__metadata__"));
  CHECK(strcmp(lm_st_name(f), "x.safetensors") == 0);
  lm_st_close(f);
  lm_st_close(NULL);
  free(b.p);
  return 0;
}

static int test_st_many_lookup(void) {
  enum { N = 1000 };
  struct tspec *t = calloc(N, sizeof(*t));
  struct buf b = {0};
  char err[LM_ERR_LEN] = "";
  lm_st_file *f = NULL;
  CHECK(t);
  for (int i = 0; i < N; i++) {
    snprintf(t[i].name, sizeof(t[i].name), "model.layers.%d.w", i);
    t[i].dtype = "BF16", t[i].n_dims = 1, t[i].shape[0] = 4;
  }
  st_build(&b, t, N);
  CHECK_OK(lm_st_parse("big", b.p, b.len, &f, err), err);
  int found = 0;
  for (int i = 0; i < N; i++) {
    const struct lm_st_tensor *x = lm_st_find(f, t[i].name);
    found += x && strcmp(x->name, t[i].name) == 0;
  }
  CHECK(found == N && !lm_st_find(f, "model.layers.1000.w"));
  lm_st_close(f);
  free(b.p);
  free(t);
  return 0;
}

static int test_st_bad(void) {
  static const struct {
    const char *header;
    size_t data_len;
    const char *want;
  } cases[] = {
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,32]}}", 16,
       "t.safetensors: w: data_offsets end 32 is past the data section (16 bytes"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16,
       "t.safetensors: w: data_offsets end 4 is before begin 8"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
       "t.safetensors: w: data_offsets span 16 bytes but shape and dtype need 12"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}", 16,
       "t.safetensors: header: invalid JSON at byte"},
      {"{\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
       "t.safetensors: w: dtype F64 is not supported"},
      {"{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
       "w: dtype I64 is not supported"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16,
       "w: dtype U8 is not supported"},
      {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16,
       "w: dtype F8_E4M3 is not supported"},
      {"{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16,
       "w: unknown dtype \"Q4\""},
      {"{\"w\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 16, "w: missing string \"dtype\""},
      {"{\"w\":{\"dtype\":\"F16\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,2]}}", 16,
       "w: 5 dimensions (at most 4"},
      {"{\"w\":{\"dtype\":\"F16\",\"shape\":[-1],\"data_offsets\":[0,2]}}", 16,
       "w: shape[0] is not a non-negative integer"},
      {"{\"w\":{\"dtype\":\"F16\",\"shape\":[1.5],\"data_offsets\":[0,2]}}", 16,
       "w: shape[0] is not a non-negative integer"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[999999999999999999,10],\"data_offsets\":[0,2]}}", 16,
       "w: element count overflows"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[999999999999999999,5],\"data_offsets\":[0,2]}}", 16,
       "w: byte size overflows"},
      {"{\"w\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0]}}", 16,
       "w: \"data_offsets\" must be [begin, end]"},
      {"{\"w\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[-2,0]}}", 16,
       "w: \"data_offsets\" must be [begin, end]"},
      {"{\"w\":[1]}", 16, "w: entry is a array, not an object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       16, "t.safetensors: b: data overlaps a"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
       16, "t.safetensors: tensor a appears twice"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[2,10]}}", 16,
       "w: data at file offset"},
      {"[1]", 16, "t.safetensors: header is not a JSON object"},
  };
  char err[LM_ERR_LEN];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    err[0] = '\0';
    CHECK_ERR(st_parse_text(cases[i].header, cases[i].data_len, err), err, cases[i].want);
  }
  /* __metadata__ is skipped whatever it holds */
  CHECK_OK(st_parse_text("{\"__metadata__\":{\"a\":\"b\"}}", 0, err), err);

  /* short buffers and lengths past the end */
  lm_st_file *f = NULL;
  unsigned char small[12] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
  CHECK_ERR(lm_st_parse("t", small, 5, &f, err), err, "t: 5 bytes, too short");
  CHECK_ERR(lm_st_parse("t", small, 12, &f, err), err, "t: header length 200 exceeds the file");
  small[0] = 0xff, memset(small + 1, 0xff, 7);
  CHECK_ERR(lm_st_parse("t", small, 12, &f, err), err, "exceeds the file");
  small[0] = 4, memset(small + 1, 0, 7);
  CHECK_OK(lm_st_parse("t", small, 12, &f, err), err);
  CHECK(lm_st_count(f) == 0 && !lm_st_find(f, "x"));
  lm_st_close(f);
  return 0;
}

static int test_st_open_files(void) {
  char dir[300], path[400], err[LM_ERR_LEN] = "";
  struct buf b = {0};
  struct tspec t[1] = {{"w", "F32", 1, {64}}};
  lm_st_file *f = NULL;
  snprintf(dir, sizeof(dir), "%s/st", tmp_root);
  CHECK(mkdir(dir, 0700) == 0);
  st_build(&b, t, 1);
  write_file(dir, "ok.safetensors", b.p, b.len);
  write_file(dir, "trunc.safetensors", b.p, b.len - 10);
  write_file(dir, "tiny.safetensors", b.p, 6);
  write_file(dir, "empty.safetensors", b.p, 0);
  snprintf(path, sizeof(path), "%s/ok.safetensors", dir);
  CHECK_OK(lm_st_open(path, &f, err), err);
  CHECK(lm_st_find(f, "w")->n_bytes == 256);
  CHECK(((const float *)lm_st_find(f, "w")->data)[0] != 0.0f);
  lm_st_close(f);
  snprintf(path, sizeof(path), "%s/trunc.safetensors", dir);
  CHECK_ERR(lm_st_open(path, &f, err), err, "trunc.safetensors: w: data_offsets end 256 is past");
  CHECK(f == NULL);
  snprintf(path, sizeof(path), "%s/tiny.safetensors", dir);
  CHECK_ERR(lm_st_open(path, &f, err), err, "tiny.safetensors: 6 bytes, too short");
  snprintf(path, sizeof(path), "%s/empty.safetensors", dir);
  CHECK_ERR(lm_st_open(path, &f, err), err, "empty.safetensors: 0 bytes");
  snprintf(path, sizeof(path), "%s/none.safetensors", dir);
  CHECK_ERR(lm_st_open(path, &f, err), err, "none.safetensors: cannot open");
  CHECK_ERR(lm_st_open(dir, &f, err), err, "not a regular file");
  free(b.p);
  return 0;
}

/* ---- tests: whole checkpoints ---- */

static size_t expect_bytes(const struct mopts *o, size_t dsize, int with_head) {
  size_t hd = o->head_dim ? (size_t)o->head_dim : 4, q = 2 * hd, kv = hd;
  size_t layer = 8 + q * 8 + 2 * kv * 8 + 8 * q + 8 + 3 * 12 * 8;
  if (strcmp(o->arch, "Qwen2ForCausalLM") == 0) layer += q + 2 * kv;
  if (strcmp(o->arch, "Qwen3ForCausalLM") == 0) layer += 2 * hd;
  return (32 * 8 + 8 + (with_head ? 32 * 8 : 0) + 2 * layer) * dsize;
}

static int check_model(const struct mopts *o) {
  char err[LM_ERR_LEN] = "";
  lm_model *m = NULL;
  CHECK_OK(lm_model_load(make_model(o), &m, err), err);
  const struct lm_config *c = &m->cfg;
  static const struct {
    const char *st;
    enum lm_dtype dt;
  } dts[] = {{"F32", LM_DTYPE_F32}, {"F16", LM_DTYPE_F16}, {"BF16", LM_DTYPE_BF16}};
  enum lm_dtype want = LM_DTYPE_F32;
  for (int i = 0; i < 3; i++)
    if (strcmp(dts[i].st, o->dtype) == 0) want = dts[i].dt;
  CHECK(c->arch == lm_arch_find(o->arch) && c->dtype == want);
  CHECK(c->tie_word_embeddings == o->tied);
  CHECK(m->w.embed.data && m->w.embed.shape[0] == 32 && m->w.embed.shape[1] == 8);
  CHECK(m->w.final_norm.data && m->w.final_norm.n_dims == 1 && m->w.layers);
  int separate_head = !o->tied || o->lm_head_when_tied;
  CHECK(separate_head ? m->w.lm_head.data != m->w.embed.data
                      : m->w.lm_head.data == m->w.embed.data);
  CHECK(m->w.lm_head.shape[0] == 32 && m->w.lm_head.dtype == want);
  for (int l = 0; l < 2; l++) {
    const struct lm_layer_weights *L = &m->w.layers[l];
    CHECK(L->wq.data && L->wk.data && L->wv.data && L->wo.data && L->attn_norm.data);
    CHECK(L->mlp_norm.data && L->w_gate.data && L->w_up.data && L->w_down.data);
    CHECK(L->wq.shape[0] == 2 * c->head_dim && L->wo.shape[1] == 2 * c->head_dim);
    CHECK(L->w_down.shape[0] == 8 && L->w_down.shape[1] == 12 && L->wk.dtype == want);
    CHECK(!!L->bq.data == c->arch->qkv_bias && !!L->bv.data == c->arch->qkv_bias);
    CHECK(!!L->q_norm.data == c->arch->qk_norm && !!L->k_norm.data == c->arch->qk_norm);
    CHECK(L->wq.dev == NULL);
  }
  size_t ds = want == LM_DTYPE_F32 ? 4 : 2, embed = 32 * 8 * ds;
  CHECK(m->weight_bytes == expect_bytes(o, ds, separate_head));
  CHECK(lm_model_decode_bytes(m) == m->weight_bytes - (separate_head ? embed : 0));
  lm_model_free(m);
  return 0;
}

static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                    "Qwen3ForCausalLM"};

static int test_load_all_archs(void) {
  static const char *const dts[] = {"BF16", "F16", "F32"};
  for (int a = 0; a < 4; a++)
    for (int d = 0; d < 3; d++)
      for (int tied = 0; tied < 2; tied++) {
        struct mopts o = {.arch = archs[a], .dtype = dts[d], .tied = tied};
        if (a == 3) o.head_dim = 6; /* Qwen3: head_dim != hidden / heads */
        if (check_model(&o)) {
          fprintf(stderr, "  %s %s tied=%d\n", archs[a], dts[d], tied);
          return 1;
        }
      }
  return 0;
}

static int test_load_tied_with_head(void) {
  struct mopts o = {.arch = "Qwen2ForCausalLM", .dtype = "BF16", .tied = 1, .lm_head_when_tied = 1};
  return check_model(&o);
}

static int test_load_sharded(void) {
  for (int a = 0; a < 4; a++) {
    struct mopts o = {.arch = archs[a], .dtype = "BF16", .shards = 3, .tied = a % 2};
    if (check_model(&o)) return 1;
  }
  return 0;
}

static int test_load_data_as_stored(void) {
  char err[LM_ERR_LEN] = "";
  lm_model *m = NULL;
  struct mopts o = {.arch = "LlamaForCausalLM", .dtype = "F32"};
  CHECK_OK(lm_model_load(make_model(&o), &m, err), err);
  /* embed_tokens is the first tensor: the data section starts with it */
  const unsigned char *p = m->w.embed.data;
  CHECK(p[0] == 1 && p[1] == 8 && p[100] == (unsigned char)(100 * 7 + 1));
  CHECK(((uintptr_t)m->w.layers[1].w_up.data & 3) == 0);
  lm_model_free(m);
  return 0;
}

static int test_load_generation_config(void) {
  char err[LM_ERR_LEN] = "";
  lm_model *m = NULL;
  struct mopts o = {.arch = "LlamaForCausalLM",
                    .dtype = "BF16",
                    .gen_config = "{\"eos_token_id\": [7, 2, 8], \"temperature\": 0.7, "
                                  "\"top_p\": 0.95, \"do_sample\": false}"};
  CHECK_OK(lm_model_load(make_model(&o), &m, err), err);
  CHECK(m->cfg.n_eos == 3 && m->cfg.eos_token_ids[0] == 2 && m->cfg.eos_token_ids[1] == 7);
  CHECK(m->cfg.eos_token_ids[2] == 8 && m->gen.has_temperature && m->gen.temperature == 0.7f);
  CHECK(m->gen.top_p == 0.95f && m->gen.do_sample == 0 && !m->gen.has_top_k);
  lm_model_free(m);
  /* absent: defaults */
  o.gen_config = NULL;
  CHECK_OK(lm_model_load(make_model(&o), &m, err), err);
  CHECK(m->gen.do_sample == -1 && !m->gen.has_temperature && m->cfg.n_eos == 1);
  lm_model_free(m);
  o.gen_config = "{\"top_k\": \"many\"}";
  return load_err(&o, "generation_config.json: top_k: expected an integer, got a string");
}

static int test_load_errors(void) {
  struct mopts o = {.arch = "LlamaForCausalLM", .dtype = "BF16"};
  struct mopts x;
#define E(field, value, want)                                                                      \
  do {                                                                                             \
    x = o;                                                                                         \
    x.field = value;                                                                               \
    if (load_err(&x, want)) return 1;                                                              \
  } while (0)
  E(bad_shape, "model.layers.1.self_attn.k_proj.weight",
    "model.safetensors: model.layers.1.self_attn.k_proj.weight: shape [5, 8] but config says "
    "[4, 8]");
  E(bad_shape, "model.norm.weight", "model.norm.weight: shape [9] but config says [8]");
  E(bad_shape, "lm_head.weight", "lm_head.weight: shape [33, 8] but config says [32, 8]");
  E(skip, "model.layers.1.mlp.up_proj.weight",
    "model.safetensors: tensor model.layers.1.mlp.up_proj.weight is missing");
  E(skip, "lm_head.weight", "model.safetensors: tensor lm_head.weight is missing");
  E(odd_dtype, "model.layers.0.mlp.down_proj.weight",
    "model.safetensors: model.layers.0.mlp.down_proj.weight: dtype float16 but "
    "model.embed_tokens.weight is bfloat16");
  E(extra, "model.layers.0.self_attn.q_proj.bias", "unexpected for LlamaForCausalLM");
  E(arch, "GPT2LMHeadModel", "config.json: architectures: \"GPT2LMHeadModel\" is not supported");
  E(dtype, "F64", "dtype F64 is not supported");

  x = o;
  x.arch = "Qwen2ForCausalLM";
  x.skip = "model.layers.0.self_attn.v_proj.bias";
  if (load_err(&x, "tensor model.layers.0.self_attn.v_proj.bias is missing")) return 1;
  x = o;
  x.arch = "Qwen3ForCausalLM";
  x.head_dim = 6;
  x.bad_shape = "model.layers.1.self_attn.k_norm.weight";
  if (load_err(&x, "k_norm.weight: shape [7] but config says [6]")) return 1;

  /* sharded */
  o.shards = 2;
  E(drop_shard, 2, "model-00002-of-00002.safetensors: cannot open");
  E(bad_shape, "model.layers.1.self_attn.o_proj.weight",
    "-of-00002.safetensors: model.layers.1.self_attn.o_proj.weight: shape [9, 8]");
  E(skip, "model.layers.0.mlp.gate_proj.weight",
    "weight_map: no entry for tensor model.layers.0.mlp.gate_proj.weight");
  E(index_skip, "model.norm.weight",
    "model.safetensors.index.json: weight_map: no entry for tensor model.norm.weight");
#undef E

  char err[LM_ERR_LEN] = "", dir[400];
  lm_model *m = NULL;
  o.shards = 0;
  const char *d = make_model(&o);
  snprintf(dir, sizeof(dir), "%s/config.json", d);
  unlink(dir);
  CHECK_ERR(lm_model_load(d, &m, err), err, "config.json: cannot open");
  d = make_model(&o);
  snprintf(dir, sizeof(dir), "%s/model.safetensors", d);
  unlink(dir);
  CHECK_ERR(lm_model_load(d, &m, err), err, "no model.safetensors or model.safetensors.index.json");
  d = make_model(&o);
  write_text(d, "config.json", "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 0}");
  CHECK_ERR(lm_model_load(d, &m, err), err, "config.json: hidden_size: 0 is out of range");
  /* the index names a shard that has lost the tensor */
  o.shards = 2;
  d = make_model(&o);
  write_text(
      d, "model.safetensors.index.json",
      "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\"}}");
  CHECK_ERR(lm_model_load(d, &m, err), err,
            "model-00002-of-00002.safetensors: tensor model.embed_tokens.weight (listed in");
  write_text(d, "model.safetensors.index.json",
             "{\"weight_map\": {\"model.embed_tokens.weight\": \"../x.safetensors\"}}");
  CHECK_ERR(lm_model_load(d, &m, err), err,
            "weight_map: model.embed_tokens.weight: expected a file");
  write_text(d, "model.safetensors.index.json", "{\"weight_map\": {}}");
  CHECK_ERR(lm_model_load(d, &m, err), err, "model.safetensors.index.json: weight_map: missing");
  write_text(d, "model.safetensors.index.json", "{\"weight_map\": ");
  CHECK_ERR(lm_model_load(d, &m, err), err, "model.safetensors.index.json: invalid JSON");
  CHECK(m == NULL);
  return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

int main(void) {
  snprintf(tmp_root, sizeof(tmp_root), "%s/lm_model_test.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmp_root)) {
    perror("mkdtemp");
    return 1;
  }
  run("arch table has the four architectures and their flags", test_arch_table);
  run("config.json: fields, defaults, head_dim, model_type", test_config_good);
  run("config.json: eos_token_id int or list, deduplicated", test_config_eos_list);
  run("config.json: a sliding window caps the context", test_config_sliding_window);
  run("config.json: rope_scaling llama3, rope_parameters, others refused", test_config_rope);
  run("config.json: out-of-range and malformed values named", test_config_ranges);
  run("generation_config.json: defaults and eos merge", test_gen_config);
  run("safetensors: valid file parsed, data in place", test_st_valid);
  run("safetensors: 1000-tensor lookup", test_st_many_lookup);
  run("safetensors: every malformed header refused", test_st_bad);
  run("safetensors: open maps files, truncated/missing refused", test_st_open_files);
  run("load: every arch, bf16/f16/f32, tied and untied", test_load_all_archs);
  run("load: tied with lm_head present uses it", test_load_tied_with_head);
  run("load: sharded with index", test_load_sharded);
  run("load: weights used as stored", test_load_data_as_stored);
  run("load: generation_config.json merged", test_load_generation_config);
  run("load: each bad checkpoint gives one clear error", test_load_errors);
  nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
