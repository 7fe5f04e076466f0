/* main.c - the lmserve binary: subcommand dispatch and shared flag helpers. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/cli.h"

static const char usage[] =
    "usage: lmserve <command> [flags]\n"
    "\n"
    "commands:\n"
    "  serve      serve the model over gRPC (lmserve.v1.Generation) on --port\n"
    "  generate   stream a completion of --prompt to stdout\n"
    "  tokenize   text on stdin -> JSON array of token ids (--decode reverses)\n"
    "  bench      the engine's serving benchmark, in process (throughput, latency, gates)\n"
    "\n"
    "Run 'lmserve <command> --help' for its flags. Without --model, lmserve\n"
    "uses $LMSERVE_MODEL or the demo model installed beside the binary.\n";

const char *lm_cli_model_dir(const char *flag, char *buf, size_t size) {
  if (flag) return flag;
  const char *env = getenv("LMSERVE_MODEL");
  if (env && *env) return env;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return "models/demo";
  exe[n] = '\0';
  /* strip "/lmserve" and then "/bin" */
  for (int i = 0; i < 2; i++) {
    char *slash = strrchr(exe, '/');
    if (!slash) return "models/demo";
    *slash = '\0';
  }
  snprintf(buf, size, "%s/models/demo", exe);
  return buf;
}

int lm_cli_int(const char *flag, const char *s, long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = s ? strtol(s, &end, 10) : 0;
  if (!s || errno || end == s || *end || v < min || v > max) {
    fprintf(stderr, "lmserve: %s needs an integer in [%ld, %ld], got '%s'\n", flag, min, max,
            s ? s : "");
    return -1;
  }
  *out = v;
  return 0;
}

int lm_cli_float(const char *flag, const char *s, double min, double max, double *out) {
  char *end;
  errno = 0;
  double v = s ? strtod(s, &end) : 0;
  if (!s || errno || end == s || *end || !(v >= min && v <= max)) {
    fprintf(stderr, "lmserve: %s needs a number in [%g, %g], got '%s'\n", flag, min, max,
            s ? s : "");
    return -1;
  }
  *out = v;
  return 0;
}

int lm_cli_slowdown(const char *flag, const char *s, double *out) {
  if (lm_cli_float(flag, s, 0, 1e6, out)) return -1;
  if (*out > 0 && *out < 1) {
    fprintf(stderr, "lmserve: %s needs 0 (no limit) or a factor >= 1, got '%s'\n", flag, s);
    return -1;
  }
  return 0;
}

int lm_cli_on_off(const char *flag, const char *s, int *out) {
  if (strcmp(s, "on") && strcmp(s, "off")) {
    fprintf(stderr, "lmserve: %s takes on or off, got '%s'\n", flag, s);
    return -1;
  }
  *out = !strcmp(s, "on");
  return 0;
}

void lm_cli_wake(void *arg) {
  struct lm_cli_waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->ready = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

void lm_cli_wait(struct lm_cli_waiter *w) {
  pthread_mutex_lock(&w->mu);
  while (!w->ready)
    pthread_cond_wait(&w->cv, &w->mu);
  w->ready = 0;
  pthread_mutex_unlock(&w->mu);
}

void lm_cli_load_error(const char *dir, const char *err) {
  if (strstr(err, dir))
    fprintf(stderr, "lmserve: %s\n", err);
  else
    fprintf(stderr, "lmserve: %s: %s\n", dir, err);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "generate")) return lm_cmd_generate(argc - 1, argv + 1);
  if (!strcmp(argv[1], "tokenize")) return lm_cmd_tokenize(argc - 1, argv + 1);
  if (!strcmp(argv[1], "serve")) return lm_cmd_serve(argc - 1, argv + 1);
  if (!strcmp(argv[1], "bench")) return lm_cmd_bench(argc - 1, argv + 1);
  fprintf(stderr, "lmserve: unknown command '%s'\n%s", argv[1], usage);
  return 2;
}
