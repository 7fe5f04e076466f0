/* opts.c - command-line numbers. */
#include "clients/opts.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/lm.h"

int lmc_opt_int(const char *flag, const char *s, long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max) {
    fprintf(stderr, "lmserve-client: %s wants an integer in [%ld, %ld], got \"%s\"\n", flag, min,
            max, s);
    return LM_EINVAL;
  }
  *out = v;
  return LM_OK;
}

int lmc_opt_float(const char *flag, const char *s, double min, double max, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || isnan(v) || v < min || v > max) {
    fprintf(stderr, "lmserve-client: %s wants a number in [%g, %g], got \"%s\"\n", flag, min, max,
            s);
    return LM_EINVAL;
  }
  *out = v;
  return LM_OK;
}
