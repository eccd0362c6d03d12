/* IEEE binary16 and bfloat16 <-> float32 conversion, scalar and exact.
 *
 * fp16 round-to-nearest-even, with overflow to inf and subnormals kept, so
 * loaders and CPU references agree bit for bit with numpy/torch casts. Hot
 * loops use F16C through kernels/cpu instead. */
#ifndef BL_HALF_H
#define BL_HALF_H

#include <stdint.h>
#include <string.h>

static inline float bl_f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint32_t bl_bits_from_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float bl_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    /* zero or subnormal: man * 2^-24 */
    float f = (float)man * (1.0f / 16777216.0f);
    return sign ? -f : f;
  }
  if (exp == 31) return bl_f32_from_bits(sign | 0x7f800000u | (man << 13));
  return bl_f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t bl_float_to_half(float f) {
  uint32_t x = bl_bits_from_f32(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* inf or nan */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
  if (ax < 0x38800000u) {
    /* result is subnormal or zero: round |f| / 2^-24 to an integer */
    if (ax < 0x33000000u) return (uint16_t)sign; /* below half the smallest */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15, still in f32 layout */
  uint32_t h = r >> 13, rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

static inline float bl_bf16_to_float(uint16_t b) { return bl_f32_from_bits((uint32_t)b << 16); }

static inline uint16_t bl_float_to_bf16(float f) {
  uint32_t x = bl_bits_from_f32(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fffu + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

#endif
