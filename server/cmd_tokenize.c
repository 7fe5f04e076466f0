/* cmd_tokenize.c - `lmserve tokenize`: text on stdin to a JSON array of ids,
 * with --decode, a JSON array of ids back to text, or with --chat, a chat
 * request rendered through the model's chat template. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/chat.h"
#include "engine/json.h"
#include "engine/lm.h"
#include "engine/tokenizer.h"
#include "server/cli.h"

static const char usage[] =
    "usage: lmserve tokenize [--model DIR | --tokenizer DIR] [--decode] [--no-special]\n"
    "                        [--skip-special] [--chat [--ids]]\n"
    "  reads text on stdin and prints a JSON array of token ids, with the special\n"
    "  tokens the tokenizer's post-processor adds (--no-special leaves them out);\n"
    "  --decode reads a JSON array of ids and prints the text (--skip-special\n"
    "  drops special tokens).\n"
    "  --chat reads a chat request, {\"messages\": [...], \"tools\": [...],\n"
    "  \"add_generation_prompt\": true, \"chat_template_kwargs\": {...}} or a bare\n"
    "  list of messages, and prints the prompt the model's chat template renders;\n"
    "  --ids prints its token ids instead (no BOS added: the template writes it).\n";

static int read_stdin(char **data, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  if (!buf) return -1;
  for (;;) {
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (n < cap) break;
    char *grown = realloc(buf, cap * 2 + 1);
    if (!grown) {
      free(buf);
      return -1;
    }
    buf = grown;
    cap *= 2;
  }
  buf[n] = '\0';
  *data = buf;
  *len = n;
  return 0;
}

static void print_ids(const lm_tokens *ids) {
  putchar('[');
  for (size_t i = 0; i < ids->n; i++)
    printf(i ? ", %d" : "%d", ids->ids[i]);
  puts("]");
}

static int render_chat(const lm_tokenizer *tok, const char *in, size_t len, int ids_only) {
  char err[LM_ERR_LEN];
  lm_json_doc *doc = NULL;
  lm_chat *chat = NULL;
  lm_tokens ids = {0};
  char *text = NULL;
  size_t text_len;
  int rc = 1;
  if (lm_json_parse(in, len, &doc, err) != LM_OK) {
    fprintf(stderr, "lmserve: tokenize --chat: stdin: %s\n", err);
    return 1;
  }
  if (lm_chat_load(tok, &chat, err) != LM_OK) {
    fprintf(stderr, "lmserve: tokenize --chat: %s\n", err);
    goto out;
  }
  if (!chat) {
    fprintf(stderr, "lmserve: tokenize --chat: the tokenizer has no chat_template\n");
    goto out;
  }
  if (ids_only ? lm_chat_encode(chat, tok, lm_json_root(doc), &ids, err)
               : lm_chat_render(chat, lm_json_root(doc), &text, &text_len, err)) {
    fprintf(stderr, "lmserve: tokenize --chat: %s\n", err);
    goto out;
  }
  if (ids_only)
    print_ids(&ids);
  else
    fwrite(text, 1, text_len, stdout);
  rc = 0;
out:
  free(text);
  lm_tokens_free(&ids);
  lm_chat_free(chat);
  lm_json_free(doc);
  return rc;
}

static int decode_ids(const lm_tokenizer *tok, const char *in, size_t len, int skip_special) {
  char err[LM_ERR_LEN];
  lm_json_doc *doc = NULL;
  lm_tokens ids = {0};
  char *text = NULL;
  size_t text_len;
  int rc = 1;
  if (lm_json_parse(in, len, &doc, err) != LM_OK) {
    fprintf(stderr, "lmserve: tokenize --decode: stdin: %s\n", err);
    return 1;
  }
  const lm_json *arr = lm_json_root(doc);
  if (arr->type != LM_JSON_ARRAY) {
    fprintf(stderr, "lmserve: tokenize --decode: stdin must be a JSON array of token ids\n");
    goto out;
  }
  ids.ids = malloc((arr->n_kids ? arr->n_kids : 1) * sizeof(int32_t));
  if (!ids.ids) goto out;
  for (size_t i = 0; i < arr->n_kids; i++) {
    const lm_json *v = &arr->kids[i];
    if (v->type != LM_JSON_NUMBER || !v->is_int || v->integer < 0 || v->integer > INT32_MAX) {
      fprintf(stderr, "lmserve: tokenize --decode: element %zu is not a token id\n", i);
      goto out;
    }
    ids.ids[ids.n++] = (int32_t)v->integer;
  }
  if (lm_tokenizer_decode(tok, ids.ids, ids.n, skip_special, &text, &text_len, err) != LM_OK) {
    fprintf(stderr, "lmserve: tokenize --decode: %s\n", err);
    goto out;
  }
  fwrite(text, 1, text_len, stdout);
  rc = 0;
out:
  free(text);
  lm_tokens_free(&ids);
  lm_json_free(doc);
  return rc;
}

int lm_cmd_tokenize(int argc, char **argv) {
  const char *dir_flag = NULL;
  int decode = 0, add_special = 1, skip_special = 0, chat = 0, ids_only = 0, rc = 1;
  char dir_buf[4096], err[LM_ERR_LEN];
  for (int i = 1; i < argc; i++) {
    if ((!strcmp(argv[i], "--model") || !strcmp(argv[i], "--tokenizer")) && i + 1 < argc)
      dir_flag = argv[++i];
    else if (!strcmp(argv[i], "--decode"))
      decode = 1;
    else if (!strcmp(argv[i], "--no-special"))
      add_special = 0;
    else if (!strcmp(argv[i], "--skip-special"))
      skip_special = 1;
    else if (!strcmp(argv[i], "--chat"))
      chat = 1;
    else if (!strcmp(argv[i], "--ids"))
      ids_only = 1;
    else if (!strcmp(argv[i], "--help")) {
      fputs(usage, stdout);
      return 0;
    } else {
      fprintf(stderr, "lmserve tokenize: unknown or incomplete flag '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  if (ids_only && !chat) {
    fprintf(stderr, "lmserve tokenize: --ids goes with --chat\n%s", usage);
    return 2;
  }
  const char *dir = lm_cli_model_dir(dir_flag, dir_buf, sizeof(dir_buf));
  lm_tokenizer *tok = NULL;
  char *in = NULL;
  size_t len;
  lm_tokens ids = {0};
  if (lm_tokenizer_load(dir, &tok, err) != LM_OK) {
    lm_cli_load_error(dir, err);
    return 1;
  }
  if (read_stdin(&in, &len) != 0) {
    fprintf(stderr, "lmserve: tokenize: cannot read stdin\n");
    goto out;
  }
  if (decode) {
    rc = decode_ids(tok, in, len, skip_special);
    goto out;
  }
  if (chat) {
    rc = render_chat(tok, in, len, ids_only);
    goto out;
  }
  if (lm_tokenizer_encode(tok, in, len, add_special, &ids, err) != LM_OK) {
    fprintf(stderr, "lmserve: tokenize: %s\n", err);
    goto out;
  }
  print_ids(&ids);
  rc = 0;
out:
  lm_tokens_free(&ids);
  free(in);
  lm_tokenizer_free(tok);
  return rc;
}
