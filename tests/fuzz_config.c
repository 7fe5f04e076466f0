/* fuzz_config.c - libFuzzer target: any bytes as config.json, then as
 * generation_config.json merged into the parsed (or a fixed) config. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/model.h"

static void check_cfg(const struct lm_config *c) {
  /* what the rest of the engine relies on once parsing succeeded */
  if (!c->arch || c->hidden_size <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
      c->n_heads % c->n_kv_heads || c->head_dim <= 0 || c->head_dim % 2 || c->vocab_size <= 0 ||
      c->n_layers <= 0 || !(c->rms_norm_eps > 0) || !(c->rope_theta > 0) || c->n_eos < 0 ||
      c->n_eos > LM_MAX_EOS || c->bos_token_id >= c->vocab_size)
    __builtin_trap();
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] < 0 || c->eos_token_ids[i] >= c->vocab_size) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[LM_ERR_LEN];
  struct lm_config cfg;
  struct lm_gen_defaults gen;
  if (lm_config_parse((const char *)data, size, &cfg, err) == LM_OK) {
    check_cfg(&cfg);
  } else {
    if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n')) __builtin_trap();
    static const char base[] = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,"
                               "\"intermediate_size\":8,\"num_hidden_layers\":1,"
                               "\"num_attention_heads\":2,\"vocab_size\":32,"
                               "\"max_position_embeddings\":16,\"rms_norm_eps\":1e-5}";
    if (lm_config_parse(base, sizeof(base) - 1, &cfg, err) != LM_OK) __builtin_trap();
  }
  if (lm_gen_config_parse((const char *)data, size, &cfg, &gen, err) == LM_OK)
    check_cfg(&cfg);
  else if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n'))
    __builtin_trap();
  return 0;
}
