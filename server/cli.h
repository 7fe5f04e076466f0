/* cli.h - the lmserve command line: one function per subcommand. */
#ifndef LM_CLI_H
#define LM_CLI_H

#include <pthread.h>
#include <stddef.h>

/* The model directory to use: --model if given, else $LMSERVE_MODEL, else
 * the demo model next to the binary (<prefix>/bin/lmserve ->
 * <prefix>/models/demo), so it is found from any working directory. */
const char *lm_cli_model_dir(const char *flag, char *buf, size_t size);

/* Parses a whole-string integer or float flag value; 0 on success. */
int lm_cli_int(const char *flag, const char *s, long min, long max, long *out);
int lm_cli_float(const char *flag, const char *s, double min, double max, double *out);
/* --max-decode-slowdown: 0 (no limit) or a factor >= 1. */
int lm_cli_slowdown(const char *flag, const char *s, double *out);
/* "on" (1) or "off" (0). */
int lm_cli_on_off(const char *flag, const char *s, int *out);

/* Prints a start-up failure as one line: the model directory, unless the
 * message already names it, then the message. */
void lm_cli_load_error(const char *dir, const char *err);

/* A request's notify callback for a command-line loop: lm_cli_wake (the
 * engine thread; only signals) sets the flag, lm_cli_wait sleeps until it
 * is set and clears it. */
struct lm_cli_waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int ready;
};
void lm_cli_wake(void *arg);
void lm_cli_wait(struct lm_cli_waiter *w);

int lm_cmd_generate(int argc, char **argv);
int lm_cmd_tokenize(int argc, char **argv);
int lm_cmd_serve(int argc, char **argv);
int lm_cmd_bench(int argc, char **argv);

#endif
