/* stream.c - generate and chat: parse flags, send one request, print each
 * stream message as it arrives (the text delta, or with --json one object
 * per message), and end with the status. */
#include "clients/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/msg.h"
#include "clients/opts.h"
#include "clients/rpc.h"
#include "engine/json.h"
#include "engine/lm.h"

#define MAX_STOP 16

struct stream_opts {
  const char *server;
  const char *prompt;
  const char *system;
  double deadline_s;
  int json;
  const char *stop[MAX_STOP];
  struct lmc_request req;
};

static void usage(const char *cmd) {
  fprintf(stderr,
          "usage: lmserve-client %s [--server ADDR] %s[--max-tokens N]\n"
          "         [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop STR]...\n"
          "         [--ignore-eos] [--request-id ID] [--deadline S] [--json]\n",
          cmd, strcmp(cmd, "chat") ? "[--prompt TEXT] " : "[--system TEXT] ");
}

static int parse_opts(const char *cmd, int argc, char **argv, struct stream_opts *o) {
  memset(o, 0, sizeof(*o));
  o->server = "127.0.0.1:50051";
  o->req.stop = o->stop;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long n;
    int rc = 0, takes = 1;
    if (!strcmp(a, "--server") && v)
      o->server = v;
    else if (!strcmp(a, "--prompt") && v && strcmp(cmd, "chat"))
      o->prompt = v;
    else if (!strcmp(a, "--system") && v && !strcmp(cmd, "chat"))
      o->system = v;
    else if (!strcmp(a, "--max-tokens") && v)
      rc = lmc_opt_int(a, v, 1, 100000000, &n), o->req.max_tokens = (int)n;
    else if (!strcmp(a, "--temperature") && v)
      rc = lmc_opt_float(a, v, 0, 100, &o->req.temperature), o->req.has_temperature = 1;
    else if (!strcmp(a, "--top-p") && v)
      rc = lmc_opt_float(a, v, 1e-9, 1, &o->req.top_p);
    else if (!strcmp(a, "--top-k") && v)
      rc = lmc_opt_int(a, v, 0, 100000000, &n), o->req.top_k = (int)n;
    else if (!strcmp(a, "--seed") && v)
      rc = lmc_opt_int(a, v, 0, 0x7fffffffffffffffL, &n), o->req.seed = (uint64_t)n,
      o->req.has_seed = 1;
    else if (!strcmp(a, "--stop") && v && o->req.n_stop < MAX_STOP)
      o->stop[o->req.n_stop++] = v;
    else if (!strcmp(a, "--request-id") && v)
      o->req.request_id = v;
    else if (!strcmp(a, "--deadline") && v)
      rc = lmc_opt_float(a, v, 0, 1e7, &o->deadline_s);
    else if (!strcmp(a, "--ignore-eos"))
      o->req.ignore_eos = 1, takes = 0;
    else if (!strcmp(a, "--json"))
      o->json = 1, takes = 0;
    else {
      fprintf(stderr, "lmserve-client %s: unknown or incomplete option %s\n", cmd, a);
      usage(cmd);
      return LM_EINVAL;
    }
    if (rc) return rc;
    i += takes;
  }
  return LM_OK;
}

static void print_json(const struct lmc_response *r) {
  printf("{\"request_id\": ");
  lm_json_write_str(stdout, r->request_id, strlen(r->request_id));
  printf(", \"token_ids\": [");
  for (int i = 0; i < r->n_tokens; i++)
    printf("%s%d", i ? ", " : "", r->token_ids[i]);
  printf("], \"text\": ");
  lm_json_write_str(stdout, r->text, strlen(r->text));
  printf(", \"finish_reason\": ");
  lm_json_write_str(stdout, r->finish_reason, strlen(r->finish_reason));
  if (r->has_usage)
    printf(", \"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, \"cached_tokens\": "
           "%d, \"queue_time_s\": %.6f, \"ttft_s\": %.6f, \"total_s\": %.6f}",
           r->prompt_tokens, r->completion_tokens, r->cached_tokens, r->queue_time_s, r->ttft_s,
           r->total_s);
  printf("}\n");
}

/* Runs one streamed call and prints it. With reply not NULL the text is
 * also collected there (malloc'd). Returns the exit status: 0, or 1 with
 * the gRPC status printed on stderr. */
static int stream_call(const char *cmd, struct lmc_conn *conn, const char *method,
                       const struct stream_opts *o, const uint8_t *req, size_t req_len,
                       char **reply) {
  struct lmc_call call;
  char err[LM_ERR_LEN];
  size_t reply_len = 0;
  int rc = 1;
  if (reply) *reply = NULL;
  if (lmc_call_start(conn, method, req, req_len, o->deadline_s, NULL, 0, &call, err) != LM_OK) {
    fprintf(stderr, "lmserve-client %s: %s\n", cmd, err);
    return 1;
  }
  uint8_t *msg;
  size_t len;
  int got, bad = 0, printed = 0;
  while ((got = lmc_call_next(&call, &msg, &len)) == 1) {
    struct lmc_response r;
    if (lmc_decode_response(msg, len, &r, err) != LM_OK) {
      free(msg);
      fprintf(stderr, "lmserve-client %s: %s\n", cmd, err);
      lmc_call_cancel(&call);
      bad = 1;
      break;
    }
    if (o->json) {
      print_json(&r);
    } else {
      fputs(r.text, stdout);
      printed |= r.text[0] != 0;
    }
    fflush(stdout);
    if (reply) {
      size_t n = strlen(r.text);
      char *p = realloc(*reply, reply_len + n + 1);
      if (p) {
        memcpy(p + reply_len, r.text, n + 1);
        *reply = p;
        reply_len += n;
      }
    }
    lmc_response_free(&r);
    free(msg);
  }
  int code = lmc_call_finish(&call, err);
  if (!o->json && (printed || code == GRPC_STATUS_OK)) putchar('\n');
  if (got < 0)
    fprintf(stderr, "lmserve-client %s: out of memory\n", cmd);
  else if (code != GRPC_STATUS_OK && !bad)
    fprintf(stderr, "lmserve-client %s: %s: %s\n", cmd, lmc_status_name(code), err);
  else if (!bad)
    rc = 0;
  return rc;
}

/* The prompt: --prompt, else all of standard input. */
static char *read_prompt(const char *flag) {
  if (flag) return strdup(flag);
  size_t cap = 4096, n = 0, k;
  char *buf = malloc(cap);
  if (!buf) return NULL;
  while ((k = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
    n += k;
    if (cap - n - 1 == 0) {
      char *p = realloc(buf, cap * 2);
      if (!p) {
        free(buf);
        return NULL;
      }
      buf = p;
      cap *= 2;
    }
  }
  buf[n] = 0;
  return buf;
}

int lmc_cmd_generate(int argc, char **argv) {
  struct stream_opts o;
  struct lmc_conn conn;
  char err[LM_ERR_LEN];
  uint8_t *req = NULL;
  size_t len;
  int rc = 1;
  if (parse_opts("generate", argc, argv, &o)) return 2;
  char *prompt = read_prompt(o.prompt);
  if (!prompt) {
    fputs("lmserve-client generate: out of memory\n", stderr);
    return 1;
  }
  o.req.text = prompt;
  if (lmc_encode_generate(&o.req, &req, &len, err) != LM_OK) goto err;
  if (lmc_conn_open(o.server, &conn, err) != LM_OK) goto err;
  rc = stream_call("generate", &conn, LMC_METHOD_GENERATE, &o, req, len, NULL);
  lmc_conn_close(&conn);
  err[0] = 0;
err:
  if (rc && err[0]) fprintf(stderr, "lmserve-client generate: %s\n", err);
  free(req);
  free(prompt);
  return rc;
}

/* The conversation so far: [n] roles and contents, malloc'd. */
struct history {
  const char **roles;
  char **contents;
  int n, cap;
};

static int history_add(struct history *h, const char *role, char *content) {
  if (h->n == h->cap) {
    int cap = h->cap ? h->cap * 2 : 8;
    const char **r = realloc(h->roles, (size_t)cap * sizeof(*r));
    if (!r) return LM_ENOMEM;
    h->roles = r;
    char **c = realloc(h->contents, (size_t)cap * sizeof(*c));
    if (!c) return LM_ENOMEM;
    h->contents = c;
    h->cap = cap;
  }
  h->roles[h->n] = role;
  h->contents[h->n++] = content;
  return LM_OK;
}

static void history_free(struct history *h) {
  for (int i = 0; i < h->n; i++)
    free(h->contents[i]);
  free(h->roles);
  free(h->contents);
}

/* Interactive: each line of standard input is a user turn; the reply is
 * streamed and kept in the history for the next turn. */
int lmc_cmd_chat(int argc, char **argv) {
  struct stream_opts o;
  struct lmc_conn conn;
  struct history h = {0};
  char err[LM_ERR_LEN] = "";
  char *line = NULL;
  size_t line_cap = 0;
  int rc = 0, tty = isatty(0);
  if (parse_opts("chat", argc, argv, &o)) return 2;
  if (lmc_conn_open(o.server, &conn, err) != LM_OK) {
    fprintf(stderr, "lmserve-client chat: %s\n", err);
    return 1;
  }
  if (o.system) {
    char *s = strdup(o.system);
    if (!s || history_add(&h, "system", s)) {
      free(s);
      rc = 1;
      goto done;
    }
  }
  for (;;) {
    if (tty) {
      fputs("> ", stdout);
      fflush(stdout);
    }
    ssize_t n = getline(&line, &line_cap, stdin);
    if (n < 0) break;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = 0;
    if (n == 0) continue;
    char *turn = strdup(line);
    if (!turn || history_add(&h, "user", turn)) {
      free(turn);
      rc = 1;
      break;
    }
    o.req.roles = h.roles;
    o.req.contents = (const char *const *)h.contents;
    o.req.n_messages = h.n;
    uint8_t *req;
    size_t len;
    if (lmc_encode_chat(&o.req, &req, &len, err) != LM_OK) {
      fprintf(stderr, "lmserve-client chat: %s\n", err);
      rc = 1;
      break;
    }
    char *reply = NULL;
    rc = stream_call("chat", &conn, LMC_METHOD_CHAT, &o, req, len, &reply);
    free(req);
    if (rc) {
      free(reply);
      break;
    }
    if (!reply && !(reply = strdup(""))) {
      rc = 1;
      break;
    }
    if (history_add(&h, "assistant", reply)) {
      free(reply);
      rc = 1;
      break;
    }
  }
done:
  free(line);
  history_free(&h);
  lmc_conn_close(&conn);
  return rc;
}
