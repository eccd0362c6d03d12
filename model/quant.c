/* Round-to-nearest group quantization with the GPTQ quantizer's grid.
 *
 * Per group: the range [min(x), max(x)] is widened to include 0; sym uses
 * [-a, a] with a = max|x| and zero = 2^(bits-1); asym puts zero at
 * round(-xmin/scale). Zero is kept in [1, 2^bits] so the GPTQ v1 format
 * (which stores zero - 1 in `bits` bits) can hold every group: a group whose
 * zero would round to 0 is re-gridded with zero 1. The scale is rounded to
 * fp16 before q is computed, so q is optimal for the scale actually stored. */
#include <math.h>

#include "bl_half.h"
#include "model_internal.h"

void quant_group_params(const float *x, int32_t n, int32_t bits, bool sym, uint16_t *scale_out,
                        int32_t *zero_out) {
  int32_t maxq = (1 << bits) - 1;
  float lo = 0.0f, hi = 0.0f;
  for (int32_t i = 0; i < n; i++) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  float scale;
  int32_t zero;
  if (sym) {
    float a = fmaxf(-lo, hi);
    if (a == 0.0f) a = 1.0f;
    scale = 2.0f * a / (float)maxq;
    zero = (maxq + 1) / 2;
  } else {
    if (lo == 0.0f && hi == 0.0f) hi = 1.0f;
    scale = (hi - lo) / (float)maxq;
    zero = (int32_t)lrintf(-lo / scale);
    if (zero < 1) { /* keep zero representable in GPTQ v1 */
      zero = 1;
      scale = hi / (float)(maxq - 1);
    }
    if (zero > maxq) zero = maxq;
  }
  *scale_out = bl_float_to_half(scale);
  *zero_out = zero;
}

void quant_row(const float *x, int32_t cols, int32_t bits, int32_t gs, bool sym, uint8_t *q,
               uint16_t *scales, int32_t *zeros) {
  for (int32_t g = 0; g * gs < cols; g++) {
    int32_t n = cols - g * gs < gs ? cols - g * gs : gs;
    quant_group_params(x + g * gs, n, bits, sym, &scales[g], &zeros[g]);
    float s = bl_half_to_float(scales[g]);
    for (int32_t i = 0; i < n; i++)
      q[g * gs + i] = quant_value(x[g * gs + i], s, zeros[g], bits);
  }
}
