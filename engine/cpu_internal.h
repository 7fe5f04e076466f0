/* cpu_internal.h - what the CPU backend's files share: the backend state,
 * the instruction-set switch and the ops split out into their own files.
 * Not a public header: only engine/backend_cpu.c and engine/cpu_*.c
 * include it. */
#ifndef LM_CPU_INTERNAL_H
#define LM_CPU_INTERNAL_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/threadpool.h"

/* AVX-512 code is compiled per function with this target attribute and
 * chosen at run time, so the binary still runs (on the scalar path) on CPUs
 * without AVX-512. */
#define LM_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

#define LM_AVX512_INLINE LM_AVX512_TARGET static inline __attribute__((always_inline))

/* ... and with AVX512_BF16, for the bf16 matmul kernels. */
#define LM_BF16DOT_TARGET                                                                          \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

/* ... and with AMX, for the bf16 matmuls by tiles. */
#define LM_AMX_TARGET                                                                              \
  __attribute__((                                                                                  \
      target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

/* The one horizontal-sum tree every reduction uses (lanes 0-7 + 8-15, then
 * halves again): fixed, so a row's sum never depends on its neighbours. */
LM_AVX512_INLINE float lm_hsum16(__m512 v) {
  __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

/* exp(x) to about 2 ulp (Cephes polynomial on [-ln2/2, ln2/2], scaled by
 * 2^n with scalef); -inf and very negative x give 0. */
LM_AVX512_INLINE __m512 lm_exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-104.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

struct lm_cpu {
  lm_pool *pool;
  int n_threads;
  int avx512;            /* 1: AVX-512 kernels; 0: portable scalar code */
  int bf16_dot;          /* 1: bf16 matmuls round x to bf16 pairs: AVX512_BF16 dot products,
                          * or AMX tiles where amx (cpu_gemm.c) */
  int amx;               /* 1: bf16 matmuls by AMX tiles where K is a multiple of 32 */
  int mapped_weights;    /* compute from the file mapping, no copy */
  const lm_model *model; /* the one model load_weights was given */
  void *weights;         /* huge-page copy of the matmul weights, packed (cpu_gemm.c) */
  size_t weights_bytes;
  struct lm_tensor **copied; /* [n_copied] tensors whose dev points into weights */
  int n_copied;
  /* matmul's x rounded to bf16 pairs for the dot-product kernels (engine
   * thread only) */
  void *xprep; /* [rows, K rounded up to 32, plus 32] bf16 */
  size_t xprep_bytes;
  /* matmul's W packed per call where it is not packed at load, per thread
   * [4 panels, words of K, 16] */
  void *panels;
  size_t panels_bytes;
  float *sample_scratch; /* [n_threads, LM_SAMPLER_SCRATCH_FLOATS(vocab)] */
  size_t sample_scratch_bytes;
};

/* Whether this process may use AMX bf16 tiles (asking Linux for the tile
 * state the first time). */
int lm_cpu_has_amx(void);

/* Grows a 64-byte aligned scratch buffer; returns 0 or LM_ENOMEM (the old
 * buffer is kept on failure). */
int lm_cpu_grow(void **buf, size_t *have_bytes, size_t want_bytes);

/* The first n of 16 lanes (none for n <= 0, all for n >= 16). */
static inline __mmask16 lm_cpu_lanes(int n) {
  return n >= 16 ? (__mmask16)0xffff : n > 0 ? (__mmask16)((1u << n) - 1) : 0;
}

/* One element of a stored tensor as f32. */
static inline float lm_cpu_elem(const void *data, enum lm_dtype dt, size_t i) {
  switch (dt) {
  case LM_DTYPE_BF16: return lm_bf16_to_f32(((const uint16_t *)data)[i]);
  case LM_DTYPE_F16: return lm_f16_to_f32(((const uint16_t *)data)[i]);
  case LM_DTYPE_F8E5M2: return lm_e5m2_to_f32(((const uint8_t *)data)[i]);
  case LM_DTYPE_F32: break;
  }
  return ((const float *)data)[i];
}

/* Elements n from i of a stored f32, f16, bf16 or e5m2 row as f32 (n >= 16:
 * all 16 lanes; the rest zero), widened exactly. */
LM_AVX512_INLINE __m512 lm_cpu_load16(const void *src, enum lm_dtype dt, size_t i, int n) {
  __mmask16 m = lm_cpu_lanes(n);
  switch (dt) {
  case LM_DTYPE_F32: return _mm512_maskz_loadu_ps(m, (const float *)src + i);
  case LM_DTYPE_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)src + i));
  case LM_DTYPE_BF16:
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)src + i)), 16));
  case LM_DTYPE_F8E5M2: /* the top byte of an f16 */
    return _mm512_cvtph_ps(_mm256_slli_epi16(
        _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(m, (const uint8_t *)src + i)), 8));
  }
  return _mm512_setzero_ps();
}

/* Bytes of a word of the CPU's K cache (lm_cpu_k_index): one f32, or a
 * pair of bf16 or e5m2 values. */
static inline size_t lm_cpu_k_word_bytes(enum lm_dtype dt) {
  return dt == LM_DTYPE_F8E5M2 ? 2 : 4;
}

/* Element index of dim d of key i in a (block, kv head) region of the K
 * cache, which the CPU stores transposed by words: [words of a
 * head][block_size], a word holding one f32 or a pair of dims 2w and 2w +
 * 1 (the even one in the low half: 32 bits of bf16, 16 of e5m2), so one
 * 64-byte (f32, bf16) or 32-byte (e5m2) load gives a word of 16
 * consecutive keys. V regions are [block_size][head_dim]. */
static inline size_t lm_cpu_k_index(int i, int d, int bs, enum lm_dtype dt) {
  int per = (int)(lm_cpu_k_word_bytes(dt) / lm_dtype_size(dt)); /* elements a word */
  return ((size_t)(d / per) * bs + i) * per + d % per;
}

/* Whether attention over this cache runs on AMX tiles (cpu_attention.c):
 * a bf16 cache whose blocks hold whole tiles of 16 keys and whose heads
 * whole k steps of 32 dims (kv_create holds head_dim to the kernels'
 * limit). Its V regions are then stored by pairs of keys
 * (lm_cpu_v_index). */
static inline int lm_cpu_attn_amx(const struct lm_cpu *cpu, const struct lm_kv_shape *s) {
  return cpu->amx && s->dtype == LM_DTYPE_BF16 && s->block_size % 16 == 0 && s->head_dim % 32 == 0;
}

/* Which region of a layer's K (or V) part holds kv head h of block blk:
 * a kv head's regions lie one block after another (backend.h). */
static inline size_t lm_cpu_kv_region(int blk, int h, int n_blocks) {
  return (size_t)h * (size_t)n_blocks + (size_t)blk;
}

/* Element index of dim d of key i in a V region: [block_size][head_dim],
 * or with AMX attention (pairs) [block_size / 2][head_dim][2], the even key
 * in the low half of each 32-bit word: 8 rows of it from a multiple of 16
 * keys are a V tile as tdpbf16ps takes it. */
static inline size_t lm_cpu_v_index(int i, int d, int hd, int pairs) {
  return pairs ? ((size_t)(i / 2) * hd + d) * 2 + i % 2 : (size_t)i * hd + d;
}

/* An AMX tile configuration (palette 1): tile t has rows[t] rows of
 * colsb[t] bytes. */
struct lm_amx_cfg {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

/* Loads c unless it is already what *have holds (per thread: the state
 * is the thread's own). */
LM_AMX_TARGET static inline void lm_amx_load_cfg(struct lm_amx_cfg *have,
                                                 const struct lm_amx_cfg *c) {
  if (memcmp(c, have, sizeof(*c)) == 0) return;
  *have = *c;
  _tile_loadconfig(have);
}

/* Converts n stored elements to f32. */
void lm_cpu_convert_row(float *dst, const void *src, enum lm_dtype dt, size_t n);

/* Bytes of a matmul weight [N, K] packed for the AVX-512 kernels: panels
 * of 16 rows transposed by 32-bit words (cpu_gemm.c). */
size_t lm_cpu_packed_bytes(const struct lm_tensor *w);
/* Packs w (as stored in w->data) into dst, 64-byte aligned, of
 * lm_cpu_packed_bytes; LM_EUNSUP without AVX-512 or for a tensor that is
 * not 2-D. */
int lm_cpu_pack(struct lm_cpu *cpu, void *dst, const struct lm_tensor *w);
void lm_cpu_matmul(void *st, void *y, const void *x, const struct lm_tensor *w,
                   const struct lm_tensor *bias, int rows);
/* Up to LM_CPU_MATMUL_N_MAX matrices of one input in one parallel loop. */
#define LM_CPU_MATMUL_N_MAX 4
void lm_cpu_matmul_n(void *st, void *const *ys, const void *x, const struct lm_tensor *const *ws,
                     const struct lm_tensor *const *biases, int n, int rows);
void lm_cpu_attention(void *st, void *out, const void *q, const void *kv,
                      const struct lm_kv_shape *shape, int layer, const struct lm_batch *b,
                      int n_heads, float scale);

#endif
