/* Canonical quantized layout shared by every backend: packing, unpacking
 * and the float reference dequantization (see backend.h for the layout). */
#include "backend.h"

#include "bl_half.h"

const char *bk_wfmt_name(bk_wfmt f) {
  switch (f) {
  case BK_WF_F16: return "fp16";
  case BK_WF_W4: return "w4";
  case BK_WF_W2: return "w2";
  }
  return "?";
}

size_t bk_weight_row_bytes(bk_wfmt f, int32_t cols) {
  return (size_t)cols * (size_t)bk_wfmt_bits(f) / 8;
}

void bk_pack_row(bk_wfmt f, const uint8_t *vals, int32_t cols, uint8_t *out) {
  for (int32_t b = 0; b < cols / BK_QBLOCK; b++) {
    const uint8_t *v = vals + b * BK_QBLOCK;
    if (f == BK_WF_W4) {
      uint8_t *o = out + b * 16;
      for (int j = 0; j < 16; j++)
        o[j] = (uint8_t)((v[j] & 15) | (v[j + 16] & 15) << 4);
    } else {
      uint8_t *o = out + b * 8;
      for (int j = 0; j < 8; j++)
        o[j] = (uint8_t)((v[j] & 3) | (v[j + 8] & 3) << 2 | (v[j + 16] & 3) << 4 |
                         (v[j + 24] & 3) << 6);
    }
  }
}

void bk_unpack_row(bk_wfmt f, const uint8_t *packed, int32_t cols, uint8_t *vals) {
  for (int32_t b = 0; b < cols / BK_QBLOCK; b++) {
    uint8_t *v = vals + b * BK_QBLOCK;
    if (f == BK_WF_W4) {
      const uint8_t *p = packed + b * 16;
      for (int j = 0; j < 16; j++) {
        v[j] = p[j] & 15;
        v[j + 16] = p[j] >> 4;
      }
    } else {
      const uint8_t *p = packed + b * 8;
      for (int j = 0; j < 8; j++)
        for (int s = 0; s < 4; s++)
          v[j + 8 * s] = (p[j] >> (2 * s)) & 3;
    }
  }
}

void bk_weight_row_f32(const bk_weight *w, int32_t r, float *out) {
  if (w->fmt == BK_WF_F16) {
    const uint16_t *row = (const uint16_t *)w->q + (size_t)r * (size_t)w->cols;
    for (int32_t k = 0; k < w->cols; k++)
      out[k] = bl_half_to_float(row[k]);
    return;
  }
  const uint8_t *row = (const uint8_t *)w->q + (size_t)r * bk_weight_row_bytes(w->fmt, w->cols);
  int32_t ng = w->cols / w->group_size;
  uint8_t vals[BK_QBLOCK];
  for (int32_t b = 0; b < w->cols / BK_QBLOCK; b++) {
    int32_t g = b * BK_QBLOCK / w->group_size;
    float s = bl_half_to_float(w->scales[(size_t)r * ng + g]);
    float m = bl_half_to_float(w->mins[(size_t)r * ng + g]);
    bk_unpack_row(w->fmt, row + (size_t)b * BK_QBLOCK * bk_wfmt_bits(w->fmt) / 8, BK_QBLOCK, vals);
    for (int j = 0; j < BK_QBLOCK; j++)
      out[b * BK_QBLOCK + j] = s * (float)vals[j] + m;
  }
}
