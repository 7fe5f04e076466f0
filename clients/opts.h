/* opts.h - command-line value parsing shared by lmserve-client's commands:
 * whole-string numbers within bounds, with a one-line message on stderr
 * naming the flag when they are not. */
#ifndef LMC_OPTS_H
#define LMC_OPTS_H

int lmc_opt_int(const char *flag, const char *s, long min, long max, long *out);
int lmc_opt_float(const char *flag, const char *s, double min, double max, double *out);

#endif
