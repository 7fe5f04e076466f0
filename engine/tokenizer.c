/* tokenizer.c - loading tokenizer.json / tokenizer_config.json and running
 * the pipeline: added tokens -> normalizer -> pre-tokenizer -> BPE ->
 * post-processor, and ids -> decoder -> text.
 *
 * Encode keeps all its scratch in locals, so a loaded tokenizer is never
 * written to except through the BPE cache, which locks (tok_bpe.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok_internal.h"

struct lm_tokenizer {
  lm_tok_norm *norm;
  lm_tok_pretok *pretok;
  lm_tok_bpe *model;
  lm_tok_added *added;
  lm_tok_post *post;
  lm_tok_dec *dec;
  char *bos, *eos;
  char **tmpl_names, **tmpl_texts; /* chat templates by name */
  size_t n_tmpl;
  char *tmpl_default;
};

void lm_tokenizer_free(lm_tokenizer *tok) {
  if (!tok) return;
  lm_tok_norm_free(tok->norm);
  lm_tok_pretok_free(tok->pretok);
  lm_tok_bpe_free(tok->model);
  lm_tok_added_free(tok->added);
  lm_tok_post_free(tok->post);
  lm_tok_dec_free(tok->dec);
  free(tok->bos);
  free(tok->eos);
  for (size_t i = 0; i < tok->n_tmpl; i++) {
    free(tok->tmpl_names[i]);
    free(tok->tmpl_texts[i]);
  }
  free(tok->tmpl_names);
  free(tok->tmpl_texts);
  free(tok);
}

static char *dup_json_str(const lm_json *s) {
  char *p = malloc(s->str_len + 1);
  if (p) memcpy(p, s->str, s->str_len + 1);
  return p;
}

/* A special token in tokenizer_config.json: "text" or {"content": "text"}. */
static int config_token(const lm_json *root, const char *key, char **out) {
  const lm_json *v = lm_json_get(root, key);
  if (v && v->type == LM_JSON_OBJECT) v = lm_json_get_type(v, "content", LM_JSON_STRING);
  if (!v || v->type != LM_JSON_STRING) return LM_OK;
  *out = dup_json_str(v);
  return *out ? LM_OK : LM_ENOMEM;
}

static int add_template(lm_tokenizer *tok, const char *name, const lm_json *text) {
  char **n = realloc(tok->tmpl_names, (tok->n_tmpl + 1) * sizeof(*n));
  if (!n) return LM_ENOMEM;
  tok->tmpl_names = n;
  char **t = realloc(tok->tmpl_texts, (tok->n_tmpl + 1) * sizeof(*t));
  if (!t) return LM_ENOMEM;
  tok->tmpl_texts = t;
  char *nm = strdup(name), *tx = dup_json_str(text);
  if (!nm || !tx) {
    free(nm);
    free(tx);
    return LM_ENOMEM;
  }
  tok->tmpl_names[tok->n_tmpl] = nm;
  tok->tmpl_texts[tok->n_tmpl++] = tx;
  if (!strcmp(name, "default")) tok->tmpl_default = tx;
  return LM_OK;
}

static int load_config(lm_tokenizer *tok, const char *dir, char *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  char *data = NULL;
  size_t len;
  lm_json_doc *doc = NULL;
  char e2[LM_ERR_LEN];
  if (lm_read_file(path, &data, &len, e2) != LM_OK) return LM_OK; /* optional */
  int rc = lm_json_parse(data, len, &doc, e2);
  if (rc) {
    rc = lm_errf(err, rc, "%s: %s", path, e2);
    goto out;
  }
  const lm_json *root = lm_json_root(doc);
  if ((rc = config_token(root, "bos_token", &tok->bos)) ||
      (rc = config_token(root, "eos_token", &tok->eos)))
    goto oom;
  const lm_json *ct = lm_json_get(root, "chat_template");
  if (ct && ct->type == LM_JSON_STRING) {
    if ((rc = add_template(tok, "default", ct))) goto oom;
  } else if (ct && ct->type == LM_JSON_ARRAY) {
    for (size_t i = 0; i < ct->n_kids; i++) {
      const lm_json *name = lm_json_get_type(&ct->kids[i], "name", LM_JSON_STRING);
      const lm_json *text = lm_json_get_type(&ct->kids[i], "template", LM_JSON_STRING);
      if (!name || !text) {
        rc = lm_errf(err, LM_EFORMAT, "%s: chat_template[%zu]: needs \"name\" and \"template\"",
                     path, i);
        goto out;
      }
      if ((rc = add_template(tok, name->str, text))) goto oom;
    }
  }
  goto out;
oom:
  rc = lm_errf(err, LM_ENOMEM, "%s: out of memory", path);
out:
  lm_json_free(doc);
  free(data);
  return rc;
}

int lm_tokenizer_load(const char *dir, lm_tokenizer **out, char *err) {
  char path[4096];
  char *data = NULL;
  size_t len;
  lm_json_doc *doc = NULL;
  char e2[LM_ERR_LEN];
  int rc;
  *out = NULL;
  lm_tokenizer *tok = calloc(1, sizeof(*tok));
  if (!tok) return lm_errf(err, LM_ENOMEM, "out of memory");
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  if ((rc = lm_read_file(path, &data, &len, err))) goto err;
  if ((rc = lm_json_parse(data, len, &doc, e2))) {
    rc = lm_errf(err, rc, "%s: %s", path, e2);
    goto err;
  }
  const lm_json *root = lm_json_root(doc), *j;
  if (root->type != LM_JSON_OBJECT) {
    rc = lm_errf(err, LM_EFORMAT, "%s: not a JSON object", path);
    goto err;
  }
  if (((j = lm_json_get(root, "truncation")) && j->type != LM_JSON_NULL) ||
      ((j = lm_json_get(root, "padding")) && j->type != LM_JSON_NULL)) {
    rc = lm_errf(err, LM_EUNSUP, "%s: %s: truncation and padding are not supported", path, j->key);
    goto err;
  }
  if ((j = lm_json_get(root, "normalizer")) && j->type != LM_JSON_NULL &&
      (rc = lm_tok_norm_parse(j, "normalizer", &tok->norm, e2)))
    goto sub;
  if ((j = lm_json_get(root, "pre_tokenizer")) && j->type != LM_JSON_NULL &&
      (rc = lm_tok_pretok_parse(j, "pre_tokenizer", &tok->pretok, e2)))
    goto sub;
  if ((rc = lm_tok_bpe_parse(lm_json_get(root, "model"), &tok->model, e2))) goto sub;
  j = lm_json_get(root, "added_tokens");
  if (j && j->type != LM_JSON_ARRAY && j->type != LM_JSON_NULL) {
    rc = lm_errf(err, LM_EFORMAT, "%s: added_tokens: expected an array", path);
    goto err;
  }
  if ((rc = lm_tok_added_parse(j && j->type == LM_JSON_ARRAY ? j : NULL, tok->model, tok->norm,
                               &tok->added, e2)))
    goto sub;
  if ((j = lm_json_get(root, "post_processor")) && j->type != LM_JSON_NULL &&
      (rc = lm_tok_post_parse(j, "post_processor", &tok->post, e2)))
    goto sub;
  /* what encode adds must be a token the model and the decoder know */
  for (size_t i = 0; i < lm_tok_post_n(tok->post); i++) {
    int32_t id = lm_tok_post_at(tok->post, i);
    if (!lm_tokenizer_id_token(tok, id, NULL)) {
      rc = lm_errf(err, LM_EFORMAT,
                   "%s: post_processor: special token id %d is not in the vocabulary", path,
                   (int)id);
      goto err;
    }
  }
  if ((j = lm_json_get(root, "decoder")) && j->type != LM_JSON_NULL &&
      (rc = lm_tok_dec_parse(j, "decoder", &tok->dec, e2)))
    goto sub;
  lm_json_free(doc);
  doc = NULL;
  free(data);
  data = NULL;
  if ((rc = load_config(tok, dir, err))) goto err;
  *out = tok;
  return LM_OK;
sub:
  rc = lm_errf(err, rc, "%s: %s", path, e2);
err:
  lm_json_free(doc);
  free(data);
  lm_tokenizer_free(tok);
  return rc;
}

/* ---- encode ------------------------------------------------------------- */

struct enc_scratch {
  lm_buf norm;
  lm_tok_pieces npieces;
  lm_tok_pt_scratch pt;
};

static int encode_plain(const lm_tokenizer *tok, const char *s, size_t n, struct enc_scratch *sc,
                        lm_tokens *out) {
  const lm_buf *text;
  const lm_spans *words;
  int rc = lm_tok_pretok_apply(tok->pretok, s, n, &sc->pt, &text, &words);
  for (size_t i = 0; !rc && i < words->n; i++)
    rc = lm_tok_bpe_encode_word(tok->model, text->p + words->v[i].start,
                                words->v[i].end - words->v[i].start, out);
  return rc;
}

/* One piece of raw text that is not an added token. */
static int encode_piece(const lm_tokenizer *tok, const char *s, size_t n, struct enc_scratch *sc,
                        lm_tokens *out) {
  int rc;
  if (tok->norm) {
    sc->norm.n = 0;
    if ((rc = lm_tok_norm_apply(tok->norm, s, n, &sc->norm))) return rc;
    s = sc->norm.p;
    n = sc->norm.n;
  }
  if (!n) return LM_OK;
  if (!lm_tok_added_has(tok->added, 1)) return encode_plain(tok, s, n, sc, out);
  sc->npieces.n = 0;
  if ((rc = lm_tok_added_split(tok->added, 1, s, n, &sc->npieces))) return rc;
  for (size_t i = 0; !rc && i < sc->npieces.n; i++) {
    const lm_tok_piece *p = &sc->npieces.v[i];
    if (p->id >= 0)
      rc = lm_tokens_push(out, p->id);
    else if (p->end > p->start)
      rc = encode_plain(tok, s + p->start, p->end - p->start, sc, out);
  }
  return rc;
}

int lm_tokenizer_encode(const lm_tokenizer *tok, const char *text, size_t len, int add_special,
                        lm_tokens *out, char *err) {
  lm_buf lossy = {0};
  lm_tok_pieces pieces = {0};
  struct enc_scratch sc = {0};
  size_t start = out->n;
  int rc = LM_OK;
  if (!text && len) return lm_errf(err, LM_EINVAL, "encode: NULL text");
  if (len && lm_utf8_valid_prefix(text, len) != len) {
    /* invalid UTF-8: encode what the library sees after a lossy
     * conversion (each maximal invalid subpart becomes U+FFFD) */
    if ((rc = lm_buf_put_lossy(&lossy, text, len))) goto err;
    text = lossy.p;
    len = lossy.n;
  }
  if ((rc = lm_tok_added_split(tok->added, 0, text ? text : "", len, &pieces))) goto err;
  for (size_t i = 0; i < pieces.n; i++) {
    const lm_tok_piece *p = &pieces.v[i];
    if (p->id >= 0)
      rc = lm_tokens_push(out, p->id);
    else if (p->end > p->start)
      rc = encode_piece(tok, text + p->start, p->end - p->start, &sc, out);
    if (rc) goto err;
  }
  if (add_special && tok->post && (rc = lm_tok_post_apply(tok->post, out, start))) goto err;
  goto out;
err:
  out->n = start;
  rc = lm_errf(err, rc, "encode: %s", rc == LM_ENOMEM ? "out of memory" : "failed");
out:
  lm_buf_free(&lossy);
  lm_tok_pieces_free(&pieces);
  lm_buf_free(&sc.norm);
  lm_tok_pieces_free(&sc.npieces);
  lm_tok_pt_scratch_free(&sc.pt);
  return rc;
}

/* ---- decode ------------------------------------------------------------- */

int lm_tok_decode_buf(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                      lm_buf *out, char *err) {
  const char *small_t[64];
  size_t small_l[64];
  const char **toks = small_t;
  size_t *lens = small_l, k = 0;
  int rc = LM_OK;
  if (n > 64) {
    toks = malloc(n * sizeof(*toks));
    lens = malloc(n * sizeof(*lens));
    if (!toks || !lens) {
      rc = lm_errf(err, LM_ENOMEM, "decode: out of memory");
      goto out;
    }
  }
  for (size_t i = 0; i < n; i++) {
    const lm_tok_added_token *a = lm_tok_added_by_id(tok->added, ids[i]);
    if (a) {
      if (skip_special && a->special) continue;
      toks[k] = a->content;
      lens[k++] = a->len;
      continue;
    }
    toks[k] = lm_tok_bpe_id_token(tok->model, ids[i], &lens[k]);
    if (!toks[k]) {
      rc = lm_errf(err, LM_ERANGE, "decode: id %d is not in the vocabulary", (int)ids[i]);
      goto out;
    }
    k++;
  }
  if ((rc = lm_tok_dec_apply(tok->dec, toks, lens, k, out)))
    rc = lm_errf(err, rc, "decode: out of memory");
out:
  if (toks != small_t) free(toks);
  if (lens != small_l) free(lens);
  return rc;
}

int lm_tokenizer_decode(const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                        char **text, size_t *len, char *err) {
  lm_buf b = {0};
  *text = NULL;
  *len = 0;
  int rc = lm_tok_decode_buf(tok, ids, n, skip_special, &b, err);
  if (!rc && lm_buf_reserve(&b, 0)) rc = lm_errf(err, LM_ENOMEM, "decode: out of memory");
  if (rc) {
    lm_buf_free(&b);
    return rc;
  }
  b.p[b.n] = '\0';
  *text = b.p;
  *len = b.n;
  return LM_OK;
}

/* ---- lookups -------------------------------------------------------------- */

size_t lm_tokenizer_vocab_size(const lm_tokenizer *tok) {
  size_t n = lm_tok_bpe_vocab_size(tok->model);
  for (int32_t id = 0; id <= lm_tok_added_max_id(tok->added); id++) {
    size_t l;
    if (lm_tok_added_by_id(tok->added, id) && !lm_tok_bpe_id_token(tok->model, id, &l)) n++;
  }
  return n;
}

int32_t lm_tokenizer_token_id(const lm_tokenizer *tok, const char *s, size_t len) {
  int32_t id = lm_tok_added_id(tok->added, s, len);
  return id >= 0 ? id : lm_tok_bpe_token_id(tok->model, s, len);
}

int lm_tokenizer_is_special(const lm_tokenizer *tok, int32_t id) {
  const lm_tok_added_token *a = lm_tok_added_by_id(tok->added, id);
  return a && a->special;
}

const char *lm_tokenizer_bos_token(const lm_tokenizer *tok) {
  return tok->bos;
}
const char *lm_tokenizer_eos_token(const lm_tokenizer *tok) {
  return tok->eos;
}
const char *lm_tokenizer_chat_template(const lm_tokenizer *tok) {
  return tok->tmpl_default;
}

const char *lm_tokenizer_chat_template_named(const lm_tokenizer *tok, const char *name) {
  for (size_t i = 0; i < tok->n_tmpl; i++)
    if (!strcmp(tok->tmpl_names[i], name)) return tok->tmpl_texts[i];
  return NULL;
}

size_t lm_tokenizer_chat_template_count(const lm_tokenizer *tok) {
  return tok->n_tmpl;
}

const char *lm_tokenizer_chat_template_name(const lm_tokenizer *tok, size_t i) {
  return i < tok->n_tmpl ? tok->tmpl_names[i] : NULL;
}

const char *lm_tokenizer_id_token(const lm_tokenizer *tok, int32_t id, size_t *len) {
  const lm_tok_added_token *a = lm_tok_added_by_id(tok->added, id);
  size_t l = 0;
  const char *s = a ? a->content : lm_tok_bpe_id_token(tok->model, id, &l);
  if (a) l = a->len;
  if (len) *len = s ? l : 0;
  return s;
}

int lm_tok_fallback_byte(const lm_tokenizer *tok, int32_t id, int skip_special) {
  const lm_tok_added_token *a = lm_tok_added_by_id(tok->added, id);
  if (a && skip_special && a->special) return -1;
  if (!lm_tok_dec_has_bytefallback(tok->dec)) return 0;
  size_t n;
  const char *s = a ? a->content : lm_tok_bpe_id_token(tok->model, id, &n);
  if (a) n = a->len;
  return s && n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>';
}
