/* KV cache encodings: E4M3 (fp8), E2M1 (fp4), the E8M0 power-of-two row
 * scales of fp8, the nvfp4 group quantizer, and the rules that derive every
 * scale from the data. The cache layout is in kernels/backend.h.
 *
 * The element functions are inline and callable from C and from CUDA device
 * code (KV_FN), so the CPU backend and the CUDA kernels share this one copy
 * of each rounding rule and write byte-identical caches. They use only
 * integer operations and fp32 operations that are exact or correctly
 * rounded (no sums that FMA contraction could change) and keep fp32
 * subnormals out of every result that matters, so flush-to-zero does not
 * change them either.
 *
 *  E4M3 ("fn"): s.eeee.mmm, bias 7, subnormals 2^-9..., max 448, no inf,
 *               NaN = s.1111.111.
 *  E2M1:        s.ee.m, bias 1: 0, 0.5, 1, 1.5, 2, 3, 4, 6; no inf or NaN.
 *  E8M0:        a byte b meaning 2^(b - 127); here b is in 1..253.
 * Encoders round to nearest, ties to even, and saturate: a finite value past
 * the largest one, or an infinity, becomes the largest one (+-448, +-6).
 * E4M3 keeps NaN (0x7F); E2M1 has none, so an nvfp4 group holding a NaN
 * gets the NaN scale and decodes to NaN throughout.
 *
 * Scale rules (why: docs/kvcache.md):
 *  - fp8, per head (default): each token's head vector gets its own scale
 *    2^k, the smallest with amax <= 448 * 2^k. Written once with its token,
 *    so a later, larger token can never overflow an earlier scale, tokens
 *    of one step never interact, and multiplying by 2^k is exact.
 *  - fp8 per tensor, and the fp32 tensor scale of nvfp4: set once per
 *    (layer, K|V) by the first kv_write that holds a non-zero finite value,
 *    to KV_CALIB_HEADROOM times what that write needs; fixed afterwards
 *    (values stored earlier depend on it). Later values up to HEADROOM x the
 *    calibration amax encode without clipping; larger ones saturate.
 *  - nvfp4 group scale: E4M3 of amax16 / (6 * ts), rounded to nearest; the
 *    values are then divided by the decoded scale, so the group's largest
 *    value lands within 6 * (1 + 2^-4) and clips by at most 1/17 of itself.
 * amax always means the largest finite |x| (NaN and inf do not count). */
#ifndef KV_FORMAT_H
#define KV_FORMAT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"
#include "bl_status.h"

#if defined(__CUDACC__)
#define KV_FN static __host__ __device__ __forceinline__
#else
#define KV_FN static inline
#endif

/* Headroom of calibrated tensor scales: 4 costs two binades at the bottom of
 * E4M3's 2^17.8 range and lets later values grow 4x past the first write. */
#define KV_CALIB_HEADROOM 4.0f
#define KV_E4M3_MAX       448.0f
#define KV_E2M1_MAX       6.0f
#define KV_E4M3_NAN       0x7F
/* Elements per nvfp4 group (one E4M3 scale each). */
#define KV_NVFP4_GROUP 16

KV_FN uint32_t kv_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

KV_FN float kv_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* 2^k as a normal float, -126 <= k <= 127. */
KV_FN float kv_exp2i(int k) { return kv_bits_f32((uint32_t)(k + 127) << 23); }

/* max(amax, |x|) counting finite x only. */
KV_FN float kv_amax_add(float amax, float x) {
  float a = fabsf(x);
  return a > amax && a <= 3.40282347e38f ? a : amax;
}

/* ---- elements ------------------------------------------------------------ */

KV_FN uint8_t kv_e4m3_from_f32(float x) {
  uint32_t u = kv_f32_bits(x), a = u & 0x7FFFFFFFu;
  uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  if (a > 0x7F800000u) return KV_E4M3_NAN;  /* NaN */
  if (a >= 0x43E00000u) return sign | 0x7E; /* >= 448, inf: saturate */
  if (a < 0x3C800000u) /* < 2^-6: subnormal, steps of 2^-9 (a * 512 is exact); a
                         result of 8 is code 0x08, the smallest normal, as it should be */
    return sign | (uint8_t)rintf(kv_bits_f32(a) * 512.0f);
  /* Normal: keep 3 of the 23 mantissa bits, ties to even; a carry moves
   * into the exponent, and below 448 it cannot reach the NaN code. */
  a += 0x7FFFFu + ((a >> 20) & 1u);
  return sign | (uint8_t)((a >> 20) - ((127u - 7u) << 3));
}

KV_FN float kv_e4m3_to_f32(uint8_t c) {
  uint32_t e = (c >> 3) & 15u, m = c & 7u;
  if (e == 15 && m == 7) return kv_bits_f32(0x7FC00000u);
  float v = (float)(e ? m + 8 : m) * kv_exp2i((e ? (int)e : 1) - 10); /* exact */
  return c & 0x80 ? -v : v;
}

KV_FN uint8_t kv_e2m1_from_f32(float x) {
  float a = fabsf(x); /* ties: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4 */
  unsigned c = (unsigned)(a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
               (a >= 3.5f) + (a > 5.0f); /* NaN: 0 */
  return (uint8_t)(c | ((kv_f32_bits(x) >> 28) & 8u));
}

KV_FN float kv_e2m1_to_f32(uint8_t c) {
  uint32_t e = (c >> 1) & 3u, m = c & 1u;
  float v = (float)(e ? m + 2 : m) * kv_exp2i((e ? (int)e : 1) - 2); /* exact */
  return c & 8 ? -v : v;
}

/* ---- fp8 scales ---------------------------------------------------------- */

/* E8M0 code of the power-of-two scale of a row with largest finite magnitude
 * amax: the smallest k with amax <= 448 * 2^k (exact, from the bits: 448 =
 * 1.75 * 2^8), clamped to [-126, 126] so 2^k and 2^-k are normal floats. */
KV_FN uint8_t kv_fp8_row_scale(float amax) {
  uint32_t u = kv_f32_bits(amax);
  int e = (int)((u >> 23) & 0xFFu) - 127;
  int k = e - 8 + ((u & 0x7FFFFFu) > 0x600000u);
  k = e < -126 ? -126 : k < -126 ? -126 : k > 126 ? 126 : k;
  return (uint8_t)(k + 127);
}

KV_FN float kv_e8m0_to_f32(uint8_t b) { return kv_exp2i((int)b - 127); }

/* The calibrated fp32 tensor scale for a first write with largest finite
 * magnitude amax (0 when amax is 0: not calibrated). */
KV_FN float kv_fp8_tensor_scale(float amax) { return amax * KV_CALIB_HEADROOM / KV_E4M3_MAX; }
KV_FN float kv_nvfp4_tensor_scale(float amax) {
  return amax * KV_CALIB_HEADROOM / (KV_E2M1_MAX * KV_E4M3_MAX);
}

/* ---- rows (one token, one kv head) ---------------------------------------- */

/* fp8, per-head scale: q[n] and the returned E8M0 scale code. */
KV_FN uint8_t kv_fp8_quant_row(const float *x, int n, uint8_t *q) {
  float amax = 0.0f;
  for (int i = 0; i < n; i++)
    amax = kv_amax_add(amax, x[i]);
  uint8_t sc = kv_fp8_row_scale(amax);
  float inv = kv_exp2i(127 - (int)sc);
  for (int i = 0; i < n; i++)
    q[i] = kv_e4m3_from_f32(x[i] * inv);
  return sc;
}

/* fp8, tensor scale ts (0: not calibrated, every value 0). */
KV_FN void kv_fp8t_quant_row(const float *x, int n, float ts, uint8_t *q) {
  for (int i = 0; i < n; i++)
    q[i] = ts > 0.0f ? kv_e4m3_from_f32(x[i] / ts) : 0;
}

/* One nvfp4 group: x[16] -> q[8] (element 2i low nibble, 2i+1 high) and its
 * E4M3 scale *sc, under tensor scale ts (0: not calibrated, all zero). */
KV_FN void kv_nvfp4_quant_group(const float *x, float ts, uint8_t *q, uint8_t *sc) {
  float amax = 0.0f;
  bool nan = false;
  for (int i = 0; i < KV_NVFP4_GROUP; i++) {
    amax = kv_amax_add(amax, x[i]);
    nan = nan || x[i] != x[i];
  }
  uint8_t s = nan ? KV_E4M3_NAN : ts > 0.0f ? kv_e4m3_from_f32(amax / (KV_E2M1_MAX * ts)) : 0;
  float d = s == KV_E4M3_NAN ? 0.0f : kv_e4m3_to_f32(s) * ts;
  for (int i = 0; i < KV_NVFP4_GROUP / 2; i++) {
    uint8_t lo = d > 0.0f ? kv_e2m1_from_f32(x[2 * i] / d) : 0;
    uint8_t hi = d > 0.0f ? kv_e2m1_from_f32(x[2 * i + 1] / d) : 0;
    q[i] = (uint8_t)(lo | hi << 4);
  }
  *sc = s;
}

/* nvfp4 row: x[n] (n % 16 == 0) -> q[n/2], sc[n/16]. */
KV_FN void kv_nvfp4_quant_row(const float *x, int n, float ts, uint8_t *q, uint8_t *sc) {
  for (int g = 0; g < n / KV_NVFP4_GROUP; g++)
    kv_nvfp4_quant_group(x + g * KV_NVFP4_GROUP, ts, q + g * (KV_NVFP4_GROUP / 2), sc + g);
}

/* Element i of an nvfp4 row. */
KV_FN float kv_nvfp4_elem(const uint8_t *q, const uint8_t *sc, float ts, int i) {
  uint8_t c = (uint8_t)((q[i >> 1] >> ((i & 1) * 4)) & 15u);
  return kv_e2m1_to_f32(c) * (kv_e4m3_to_f32(sc[i / KV_NVFP4_GROUP]) * ts);
}

/* Dequantize rows: out[n] = the values the cache holds. */
KV_FN void kv_fp8_dequant_row(const uint8_t *q, float scale, int n, float *out) {
  for (int i = 0; i < n; i++)
    out[i] = kv_e4m3_to_f32(q[i]) * scale;
}

KV_FN void kv_nvfp4_dequant_row(const uint8_t *q, const uint8_t *sc, float ts, int n, float *out) {
  for (int i = 0; i < n; i++)
    out[i] = kv_nvfp4_elem(q, sc, ts, i);
}

/* ---- formats (kv_format.c) ------------------------------------------------ */

/* "fp16", "fp8", "nvfp4". */
const char *kv_fmt_name(bk_kvfmt f);
/* "fp16" | "fp8" | "nvfp4" -> BL_OK, else BL_EINVAL. */
bl_status kv_fmt_parse(const char *s, bk_kvfmt *out);
/* "head" | "tensor". */
const char *kv_scale_name(bk_kvscale s);
bl_status kv_scale_parse(const char *s, bk_kvscale *out);

/* Bytes of cache one token of context takes over all layers (K and V,
 * values and their per-token scales; the per-tensor scales, 8 bytes a
 * layer, are not per token and not counted). */
uint64_t kv_token_bytes(bk_kvfmt f, bk_kvscale s, int32_t n_layers, int32_t n_kv_heads,
                        int32_t head_dim);

#ifdef __cplusplus
}
#endif

#endif
