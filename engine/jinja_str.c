/* jinja_str.c - UTF-8 string helpers with JavaScript's notion of
 * whitespace (\s, trim) and length (UTF-16 units), as the reference sees
 * strings. */
#include <string.h>
#include <utf8proc.h>

#include "engine/jinja_internal.h"

size_t jj_utf8_next(const char *p, const char *end, uint32_t *cp) {
  const unsigned char *s = (const unsigned char *)p;
  size_t avail = (size_t)(end - p);
  if (s[0] < 0x80 || avail < 2) {
    *cp = s[0];
    return 1;
  }
  size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 1;
  if (len == 1 || len > avail) {
    *cp = 0xfffd;
    return 1;
  }
  uint32_t c = s[0] & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) {
      *cp = 0xfffd;
      return 1;
    }
    c = (c << 6) | (s[i] & 0x3f);
  }
  *cp = c;
  return len;
}

static int is_js_space_cp(uint32_t c) {
  return (c >= 9 && c <= 13) || c == ' ' || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000 || c == 0xfeff;
}

size_t jj_js_space(const char *p, const char *end) {
  if (p >= end) return 0;
  unsigned char c = (unsigned char)*p;
  if (c < 0x80) return (c >= 9 && c <= 13) || c == ' ' ? 1 : 0;
  uint32_t cp;
  size_t n = jj_utf8_next(p, end, &cp);
  return is_js_space_cp(cp) ? n : 0;
}

size_t jj_utf16_len(const char *p, size_t n) {
  const char *end = p + n;
  size_t units = 0;
  while (p < end) {
    uint32_t cp;
    p += jj_utf8_next(p, end, &cp);
    units += cp >= 0x10000 ? 2 : 1;
  }
  return units;
}

/* The start of the character that ends at end (bytes back to a lead byte). */
static const char *char_before(const char *begin, const char *end) {
  const char *q = end - 1;
  while (q > begin && end - q < 4 && ((unsigned char)*q & 0xc0) == 0x80)
    q--;
  return q;
}

void jj_trim(const char **p, size_t *n, int left, int right) {
  const char *s = *p, *e = *p + *n;
  size_t k;
  while (left && s < e && (k = jj_js_space(s, e)) > 0)
    s += k;
  while (right && e > s) {
    const char *q = char_before(s, e);
    if (jj_js_space(q, e) != (size_t)(e - q)) break;
    e = q;
  }
  *p = s;
  *n = (size_t)(e - s);
}

static int in_chars(const char *c, size_t len, const char *chars, size_t n_chars) {
  for (const char *q = chars, *qe = chars + n_chars; q < qe;) {
    uint32_t cp;
    size_t k = jj_utf8_next(q, qe, &cp);
    if (k == len && !memcmp(q, c, len)) return 1;
    q += k;
  }
  return 0;
}

void jj_strip_chars(const char **p, size_t *n, const char *chars, size_t n_chars, int left,
                    int right) {
  const char *s = *p, *e = *p + *n;
  while (left && s < e) {
    uint32_t cp;
    size_t k = jj_utf8_next(s, e, &cp);
    if (!in_chars(s, k, chars, n_chars)) break;
    s += k;
  }
  while (right && e > s) {
    const char *q = char_before(s, e);
    if (!in_chars(q, (size_t)(e - q), chars, n_chars)) break;
    e = q;
  }
  *p = s;
  *n = (size_t)(e - s);
}

int jj_case(jj_arena *a, jj_val s, int upper, jj_val *out) {
  const char *p = s.u.s.p, *end = p + s.u.s.n;
  char *buf = jj_alloc(a, s.u.s.n * 2 + 4); /* case mapping grows a character by at most 2x */
  size_t n = 0;
  if (!buf) return LM_ENOMEM;
  while (p < end) {
    uint32_t cp;
    size_t k = jj_utf8_next(p, end, &cp);
    uint32_t m = (uint32_t)(upper ? utf8proc_toupper((utf8proc_int32_t)cp)
                                  : utf8proc_tolower((utf8proc_int32_t)cp));
    if (m == cp || cp == 0xfffd) {
      memcpy(buf + n, p, k);
      n += k;
    } else {
      n += lm_utf8_put(buf + n, m);
    }
    p += k;
  }
  *out = jv_str(buf, n);
  return LM_OK;
}
