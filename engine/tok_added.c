/* tok_added.c - the added vocabulary: tokens from "added_tokens" that are
 * cut out of the text before the normalizer and pre-tokenizer run.
 *
 * As in the library's AddedVocabulary, tokens with normalized=false are
 * matched on the raw text, those with normalized=true on each normalized
 * piece (against their own normalized content). Matching is leftmost-
 * longest (the library uses Aho-Corasick with MatchKind::LeftmostLongest);
 * a byte trie walked from each position gives the same matches, and a
 * first-byte table skips positions where no token can start. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/tok_internal.h"

struct trie_node {
  int32_t first_child, next_sibling;
  int32_t token; /* index into toks, -1 */
  unsigned char byte;
};

struct trie {
  struct trie_node *nodes;
  size_t n, cap;
  uint8_t starts[256];
};

struct lm_tok_added {
  lm_tok_added_token *toks;
  size_t n;
  char **norm_content; /* normalized content, for normalized tokens */
  size_t *norm_len;
  struct trie tries[2]; /* [0] raw text, [1] normalized pieces */
  lm_strmap by_content;
  int32_t max_id;
  int32_t *by_id; /* id - min_id -> index, -1 */
  int32_t min_id;
  size_t id_span;
};

static int32_t trie_new_node(struct trie *t, unsigned char byte) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct trie_node *v = realloc(t->nodes, cap * sizeof(*v));
    if (!v) return -1;
    t->nodes = v;
    t->cap = cap;
  }
  t->nodes[t->n] = (struct trie_node){-1, -1, -1, byte};
  return (int32_t)t->n++;
}

static int trie_add(struct trie *t, const char *s, size_t n, int32_t token) {
  if (!t->n && trie_new_node(t, 0) < 0) return LM_ENOMEM;
  int32_t cur = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char b = (unsigned char)s[i];
    int32_t c = t->nodes[cur].first_child;
    while (c >= 0 && t->nodes[c].byte != b)
      c = t->nodes[c].next_sibling;
    if (c < 0) {
      c = trie_new_node(t, b);
      if (c < 0) return LM_ENOMEM;
      t->nodes[c].next_sibling = t->nodes[cur].first_child;
      t->nodes[cur].first_child = c;
    }
    cur = c;
  }
  /* the first token with a given content wins, as the library dedups */
  if (t->nodes[cur].token < 0) t->nodes[cur].token = token;
  t->starts[(unsigned char)s[0]] = 1;
  return LM_OK;
}

/* Longest token starting at s[i], or -1; *len gets its length. */
static int32_t trie_longest(const struct trie *t, const char *s, size_t n, size_t i, size_t *len) {
  int32_t cur = 0, best = -1;
  for (size_t k = i; k < n; k++) {
    unsigned char b = (unsigned char)s[k];
    int32_t c = t->nodes[cur].first_child;
    while (c >= 0 && t->nodes[c].byte != b)
      c = t->nodes[c].next_sibling;
    if (c < 0) break;
    cur = c;
    if (t->nodes[cur].token >= 0) {
      best = t->nodes[cur].token;
      *len = k + 1 - i;
    }
  }
  return best;
}

void lm_tok_added_free(lm_tok_added *a) {
  if (!a) return;
  for (size_t i = 0; i < a->n; i++) {
    free((char *)a->toks[i].content);
    if (a->norm_content) free(a->norm_content[i]);
  }
  free(a->toks);
  free(a->norm_content);
  free(a->norm_len);
  free(a->tries[0].nodes);
  free(a->tries[1].nodes);
  lm_strmap_free(&a->by_content);
  free(a->by_id);
  free(a);
}

static int flag(const lm_json *t, const char *k) {
  const lm_json *b = lm_json_get_type(t, k, LM_JSON_BOOL);
  return b && b->boolean;
}

int lm_tok_added_parse(const lm_json *arr, const lm_tok_bpe *model, const lm_tok_norm *norm,
                       lm_tok_added **out, char *err) {
  *out = NULL;
  int rc = LM_OK;
  lm_tok_added *a = calloc(1, sizeof(*a));
  size_t cnt = arr ? arr->n_kids : 0;
  if (!a || lm_strmap_init(&a->by_content, cnt + 1)) goto oom;
  a->toks = calloc(cnt + 1, sizeof(*a->toks));
  a->norm_content = calloc(cnt + 1, sizeof(*a->norm_content));
  a->norm_len = calloc(cnt + 1, sizeof(*a->norm_len));
  if (!a->toks || !a->norm_content || !a->norm_len) goto oom;
  a->max_id = -1;
  int32_t model_size = (int32_t)lm_tok_bpe_vocab_size(model);
  for (size_t i = 0; i < cnt; i++) {
    const lm_json *t = &arr->kids[i];
    const lm_json *c = lm_json_get_type(t, "content", LM_JSON_STRING);
    if (!c) {
      rc = lm_errf(err, LM_EFORMAT, "added_tokens[%zu]: missing \"content\"", i);
      goto err;
    }
    /* the library skips empty tokens and repeats of the same content */
    if (c->str_len == 0 || lm_strmap_get(&a->by_content, c->str, c->str_len) >= 0) continue;
    lm_tok_added_token *k = &a->toks[a->n];
    char *content = malloc(c->str_len + 1);
    if (!content) goto oom;
    memcpy(content, c->str, c->str_len + 1);
    k->content = content;
    k->len = c->str_len;
    k->special = (uint8_t)flag(t, "special");
    /* AddedToken's default: normalized unless special */
    const lm_json *nb = lm_json_get_type(t, "normalized", LM_JSON_BOOL);
    k->normalized = (uint8_t)(nb ? nb->boolean : !k->special);
    k->lstrip = (uint8_t)flag(t, "lstrip");
    k->rstrip = (uint8_t)flag(t, "rstrip");
    k->single_word = (uint8_t)flag(t, "single_word");
    /* ids as the library assigns them when it deserializes: the model's
     * id if the content is in its vocab, else the next free id */
    int32_t id = lm_tok_bpe_token_id(model, c->str, c->str_len);
    if (id < 0) {
      if (a->max_id < 0)
        id = model_size;
      else
        id = (a->max_id >= model_size || model_size == 0) ? a->max_id + 1 : model_size;
    }
    k->id = id;
    if (id > a->max_id) a->max_id = id;
    a->n++;
    if (lm_strmap_put(&a->by_content, content, k->len, (int32_t)(a->n - 1))) goto oom;
    if (k->normalized) {
      lm_buf nb2 = {0};
      if (norm) {
        if ((rc = lm_tok_norm_apply(norm, content, k->len, &nb2))) {
          lm_buf_free(&nb2);
          rc = lm_errf(err, rc, "added_tokens[%zu]: cannot normalize", i);
          goto err;
        }
      } else if (lm_buf_put(&nb2, content, k->len)) {
        goto oom;
      }
      a->norm_content[a->n - 1] = nb2.p;
      a->norm_len[a->n - 1] = nb2.n;
      if (nb2.n && trie_add(&a->tries[1], nb2.p, nb2.n, (int32_t)(a->n - 1))) goto oom;
    } else if (trie_add(&a->tries[0], content, k->len, (int32_t)(a->n - 1))) {
      goto oom;
    }
  }
  a->min_id = INT32_MAX;
  for (size_t i = 0; i < a->n; i++)
    if (a->toks[i].id < a->min_id) a->min_id = a->toks[i].id;
  if (a->n) {
    a->id_span = (size_t)(a->max_id - a->min_id) + 1;
    a->by_id = malloc(a->id_span * sizeof(*a->by_id));
    if (!a->by_id) goto oom;
    for (size_t i = 0; i < a->id_span; i++)
      a->by_id[i] = -1;
    for (size_t i = 0; i < a->n; i++)
      a->by_id[a->toks[i].id - a->min_id] = (int32_t)i;
  }
  *out = a;
  return LM_OK;
oom:
  rc = lm_errf(err, LM_ENOMEM, "out of memory loading added_tokens");
err:
  lm_tok_added_free(a);
  return rc;
}

const lm_tok_added_token *lm_tok_added_by_id(const lm_tok_added *a, int32_t id) {
  if (!a->n || id < a->min_id || id > a->max_id) return NULL;
  int32_t k = a->by_id[id - a->min_id];
  return k < 0 ? NULL : &a->toks[k];
}

int32_t lm_tok_added_id(const lm_tok_added *a, const char *s, size_t n) {
  int32_t k = lm_strmap_get(&a->by_content, s, n);
  return k < 0 ? -1 : a->toks[k].id;
}

int32_t lm_tok_added_max_id(const lm_tok_added *a) {
  return a->max_id;
}
size_t lm_tok_added_count(const lm_tok_added *a) {
  return a->n;
}
int lm_tok_added_has(const lm_tok_added *a, int normalized_set) {
  return a->tries[normalized_set ? 1 : 0].n > 0;
}

/* Word characters as the library's regex \w sees them (alphanumeric, marks,
 * connector punctuation). */
static int is_word(uint32_t cp) {
  if (lm_tok_cclass(cp) & (LM_CC_L | LM_CC_N)) return 1;
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC || c == UTF8PROC_CATEGORY_ME ||
         c == UTF8PROC_CATEGORY_PC;
}

static uint32_t cp_before(const char *s, size_t i) {
  size_t k = i - 1, adv;
  while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
    k--;
  return lm_tok_utf8_next(s + k, i - k, &adv);
}

static int push_piece(lm_tok_pieces *p, size_t start, size_t end, int32_t id) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    lm_tok_piece *v = realloc(p->v, cap * sizeof(*v));
    if (!v) return LM_ENOMEM;
    p->v = v;
    p->cap = cap;
  }
  p->v[p->n++] = (lm_tok_piece){start, end, id};
  return LM_OK;
}

int lm_tok_added_split(const lm_tok_added *a, int normalized_set, const char *s, size_t n,
                       lm_tok_pieces *out) {
  const struct trie *t = &a->tries[normalized_set ? 1 : 0];
  size_t start_offset = 0, i = 0;
  while (t->n && i < n) {
    if (!t->starts[(unsigned char)s[i]]) {
      i++;
      continue;
    }
    size_t len = 0;
    int32_t k = trie_longest(t, s, n, i, &len);
    if (k < 0) {
      i++;
      continue;
    }
    const lm_tok_added_token *tok = &a->toks[k];
    size_t start = i, stop = i + len, adv;
    i = stop; /* the scan resumes after the raw match, as Aho-Corasick does */
    if (tok->single_word) {
      int start_space = start == 0 || !is_word(cp_before(s, start));
      int stop_space = stop == n || !is_word(lm_tok_utf8_next(s + stop, n - stop, &adv));
      if (!start_space || !stop_space) continue;
    }
    if (tok->lstrip) {
      size_t ns = start;
      while (ns > 0 && (lm_tok_cclass(cp_before(s, ns)) & LM_CC_S)) {
        size_t k2 = ns - 1;
        while (k2 > 0 && ((unsigned char)s[k2] & 0xc0) == 0x80)
          k2--;
        ns = k2;
      }
      start = ns > start_offset ? ns : start_offset;
    }
    if (tok->rstrip)
      while (stop < n && (lm_tok_cclass(lm_tok_utf8_next(s + stop, n - stop, &adv)) & LM_CC_S))
        stop += adv;
    if (start > start_offset && push_piece(out, start_offset, start, -1)) return LM_ENOMEM;
    if (push_piece(out, start, stop, tok->id)) return LM_ENOMEM;
    start_offset = stop;
    if (i < stop) i = stop;
  }
  if (start_offset < n && push_piece(out, start_offset, n, -1)) return LM_ENOMEM;
  return LM_OK;
}

void lm_tok_pieces_free(lm_tok_pieces *p) {
  free(p->v);
  p->v = NULL;
  p->n = p->cap = 0;
}
