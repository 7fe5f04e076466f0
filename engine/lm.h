/* lm.h - what every lmserve module shares: status codes, error buffers,
 * dtypes and small file helpers. */
#ifndef LM_H
#define LM_H

#include <stddef.h>
#include <stdint.h>

/* Status codes: 0 is success, failures are negative. */
#define LM_OK      0
#define LM_EINVAL  (-1)  /* bad argument or bad input from a caller */
#define LM_ENOMEM  (-2)  /* allocation failed */
#define LM_EIO     (-3)  /* file missing, unreadable or truncated */
#define LM_EFORMAT (-4)  /* file readable but its contents are wrong */
#define LM_EUNSUP  (-5)  /* valid but not supported by lmserve */
#define LM_ERANGE  (-6)  /* a value outside its allowed range */
#define LM_EFULL   (-7)  /* out of capacity (KV blocks, queue slots) */
#define LM_EEXIST  (-8)  /* a name already in use (a live request id) */
#define LM_ENOENT  (-9)  /* no such thing (an unknown request id) */
#define LM_ECLOSED (-10) /* the engine no longer accepts work (draining) */

/* Every function that can fail with a reason takes a caller-owned buffer of
 * LM_ERR_LEN bytes and writes one line there (no trailing newline). */
#define LM_ERR_LEN 512

#if defined(__GNUC__)
#define LM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LM_PRINTF(a, b)
#endif

/* Writes a formatted message into err (may be NULL) and returns code. The
 * message is one line: control characters other than tab become spaces. */
int lm_errf(char *err, int code, const char *fmt, ...) LM_PRINTF(3, 4);

enum lm_dtype {
  LM_DTYPE_F32 = 0,
  LM_DTYPE_F16 = 1,
  LM_DTYPE_BF16 = 2,
  LM_DTYPE_F8E5M2 = 3, /* 8 bits: 1 sign, 5 exponent, 2 mantissa (the top byte
                        * of an f16); KV cache only */
};

size_t lm_dtype_size(enum lm_dtype dt);
const char *lm_dtype_name(enum lm_dtype dt);

/* Conversions between storage types and f32. */
static inline float lm_bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v = {.u = (uint32_t)h << 16};
  return v.f;
}

static inline uint16_t lm_f32_to_bf16(float f) {
  union {
    uint32_t u;
    float f;
  } v = {.f = f};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
  /* round to nearest even, as PyTorch and CUDA do */
  return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

float lm_f16_to_f32(uint16_t h);
uint16_t lm_f32_to_f16(float f);

static inline float lm_e5m2_to_f32(uint8_t b) {
  return lm_f16_to_f32((uint16_t)(b << 8));
}

/* Nearest even e5m2; magnitudes from the largest finite (57344) up,
 * infinities included, saturate to it; NaN stays NaN. */
uint8_t lm_f32_to_e5m2(float f);

/* The length of the well-formed UTF-8 sequence at s[0..n) (0 if invalid or
 * truncated; then *bad is the length of its maximal invalid subpart). */
size_t lm_utf8_seq_len(const unsigned char *s, size_t n, size_t *bad);
/* How many bytes at the start of s[0..n) are well-formed UTF-8. */
size_t lm_utf8_valid_prefix(const char *s, size_t n);

/* Writes cp (at most 0x10ffff) as 1 to 4 bytes of UTF-8 at out and returns
 * how many. */
size_t lm_utf8_put(char *out, uint32_t cp);

/* Reads a whole file into a malloc'd buffer with a NUL byte appended (not
 * counted in *len). */
int lm_read_file(const char *path, char **data, size_t *len, char *err);

/* Monotonic clock. */
double lm_now_s(void);

#endif
