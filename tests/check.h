/* check.h - the output format of lmserve's test programs: one line per
 * check, "ok - name" or "not ok - name: why", and a summary. */
#ifndef LM_CHECK_H
#define LM_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int lm_checks_failed, lm_checks_run;

/* Records one check; returns cond so callers can stop early. */
__attribute__((format(printf, 2, 3), unused)) static int lm_check(int cond, const char *fmt, ...) {
  va_list ap;
  lm_checks_run++;
  if (!cond) lm_checks_failed++;
  fputs(cond ? "ok - " : "not ok - ", stdout);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  return cond;
}

/* Prints the summary and returns the exit status for main. */
__attribute__((unused)) static int lm_check_done(void) {
  printf("%d checks, %d failed\n", lm_checks_run, lm_checks_failed);
  return lm_checks_failed ? 1 : 0;
}

#endif
