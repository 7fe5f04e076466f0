/* lm.c - shared helpers: error formatting, dtypes, files, clock. */
#include "engine/lm.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int lm_errf(char *err, int code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, LM_ERR_LEN, fmt, ap);
    va_end(ap);
    /* one line, whatever the pieces held (text quoted from a template, a
     * request or a file) */
    for (char *p = err; *p; p++)
      if ((unsigned char)*p < 0x20 && *p != '\t') *p = ' ';
  }
  return code;
}

size_t lm_dtype_size(enum lm_dtype dt) {
  switch (dt) {
  case LM_DTYPE_F32: return 4;
  case LM_DTYPE_F16: return 2;
  case LM_DTYPE_BF16: return 2;
  case LM_DTYPE_F8E5M2: return 1;
  }
  return 0;
}

const char *lm_dtype_name(enum lm_dtype dt) {
  switch (dt) {
  case LM_DTYPE_F32: return "float32";
  case LM_DTYPE_F16: return "float16";
  case LM_DTYPE_BF16: return "bfloat16";
  case LM_DTYPE_F8E5M2: return "float8_e5m2";
  }
  return "unknown";
}

uint8_t lm_f32_to_e5m2(float f) {
  union {
    float f;
    uint32_t u;
  } v = {.f = f};
  uint32_t sign = (v.u >> 24) & 0x80u, a = v.u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint8_t)(sign | 0x7fu);  /* NaN */
  if (a >= 0x47600000u) return (uint8_t)(sign | 0x7bu); /* >= 57344 */
  if (a < 0x38800000u) {
    /* below 2^-14: multiples of 2^-16, rounded to nearest even (4 is
     * 2^-14, the smallest normal's code) */
    v.u = a;
    return (uint8_t)(sign | (uint32_t)lrintf(v.f * 65536.0f));
  }
  /* keep two mantissa bits, nearest even; a carry moves the exponent */
  uint32_t r = a + 0xfffffu + ((a >> 21) & 1u);
  return (uint8_t)(sign | (((r >> 23) - 112u) << 2) | ((r >> 21) & 3u));
}

float lm_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  union {
    uint32_t u;
    float f;
  } v;
  if (exp == 0) {
    /* zero or subnormal: value is man * 2^-24 */
    float f = ldexpf((float)man, -24);
    return sign ? -f : f;
  }
  if (exp == 31)
    v.u = sign | 0x7f800000u | (man << 13);
  else
    v.u = sign | ((exp + 112) << 23) | (man << 13);
  return v.f;
}

uint16_t lm_f32_to_f16(float f) {
  union {
    uint32_t u;
    float f;
  } v = {.f = f};
  uint32_t sign = (v.u >> 16) & 0x8000u;
  float a = fabsf(f);
  if (isnan(f)) return (uint16_t)(sign | 0x7e00u);
  if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
  if (a < 6.103515625e-05f) {
    /* subnormal: round to a multiple of 2^-24, nearest even */
    float q = nearbyintf(a * 16777216.0f);
    return (uint16_t)(sign | (uint32_t)q);
  }
  uint32_t u = v.u & 0x7fffffffu;
  u += 0xfffu + ((u >> 13) & 1u);
  return (uint16_t)(sign | (((u >> 23) - 112) << 10) | ((u >> 13) & 0x3ffu));
}

int lm_read_file(const char *path, char **data, size_t *len, char *err) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long size;
  *data = NULL;
  *len = 0;
  if (!f) return lm_errf(err, LM_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return lm_errf(err, LM_EIO, "%s: cannot read: %s", path, strerror(errno));
  }
  buf = malloc((size_t)size + 1);
  if (!buf) {
    fclose(f);
    return lm_errf(err, LM_ENOMEM, "%s: out of memory reading %ld bytes", path, size);
  }
  if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
    free(buf);
    fclose(f);
    return lm_errf(err, LM_EIO, "%s: short read", path);
  }
  fclose(f);
  buf[size] = '\0';
  *data = buf;
  *len = (size_t)size;
  return LM_OK;
}

double lm_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Length of the valid sequence at s[0..n) (0 if invalid or truncated) and,
 * through *bad, how many bytes form the maximal invalid subpart. */
size_t lm_utf8_seq_len(const unsigned char *s, size_t n, size_t *bad) {
  unsigned char b = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf)
    len = 2;
  else if (b >= 0xe0 && b <= 0xef) {
    len = 3;
    if (b == 0xe0) lo = 0xa0;
    if (b == 0xed) hi = 0x9f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    len = 4;
    if (b == 0xf0) lo = 0x90;
    if (b == 0xf4) hi = 0x8f;
  } else {
    *bad = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < len; i++) {
    if (i >= n) break;
    unsigned char c = s[i];
    if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) break;
  }
  if (i == len) return len;
  *bad = i;
  return 0;
}

size_t lm_utf8_valid_prefix(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, bad;
  while (i < n) {
    if (u[i] < 0x80) {
      i++;
      continue;
    }
    size_t l = lm_utf8_seq_len(u + i, n - i, &bad);
    if (!l) break;
    i += l;
  }
  return i;
}

size_t lm_utf8_put(char *out, uint32_t cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}
