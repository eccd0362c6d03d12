/* fp16/bf16 conversions: exhaustive over every fp16 bit pattern (round trip
 * must be exact, NaN stays NaN), and float->fp16 rounding checked against
 * the compiler's _Float16 conversion (round-to-nearest-even) on random and
 * edge-case floats. */
#include <stdint.h>
#include <string.h>

#include "../../common/t.h"
#include "bl_half.h"
#include "bl_status.h"

#if defined(__FLT16_MAX__) /* random floats against the compiler's own conversion */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}
#endif

int main(void) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = bl_half_to_float((uint16_t)h);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
      T_CHECK(f != f);
      continue;
    }
    T_CHECKF(bl_float_to_half(f) == h, "pattern 0x%04x", h);
  }
#if defined(__FLT16_MAX__)
  for (int i = 0; i < 2000000; i++) {
    uint32_t bits = next32();
    float f;
    memcpy(&f, &bits, 4);
    if (f != f) continue;
    _Float16 ref = (_Float16)f;
    uint16_t rb;
    memcpy(&rb, &ref, 2);
    T_CHECKF(bl_float_to_half(f) == rb, "float bits 0x%08x", bits);
  }
#endif
  T_CHECK(bl_float_to_half(65520.0f) == 0x7c00); /* rounds to inf */
  T_CHECK(bl_float_to_half(65519.0f) == 0x7bff);
  T_CHECK(bl_float_to_half(5.9604645e-8f) == 0x0001); /* smallest subnormal */
  T_CHECK(bl_float_to_half(2.9802322e-8f) == 0x0000); /* exactly half: ties to even (0) */
  T_CHECK(bl_bf16_to_float(bl_float_to_bf16(1.0f)) == 1.0f);
  T_CHECK(bl_float_to_bf16(1.00390625f) == 0x3f80); /* tie to even */
  T_CHECK(bl_float_to_bf16(1.01171875f) == 0x3f82);
  bl_err e = {0};
  T_CHECK(bl_fail(&e, BL_EFORMAT, "first %d", 1) == BL_EFORMAT);
  bl_fail(&e, BL_EIO, "second");
  T_CHECK(strcmp(e.msg, "first 1") == 0 && e.status == BL_EFORMAT);
  return T_DONE();
}
