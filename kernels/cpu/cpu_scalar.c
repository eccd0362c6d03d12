/* Portable C inner loops: the fallback on CPUs without AVX2 and the second
 * path the unit tests check. Written for clarity first; loops keep several
 * independent sums so compilers can vectorise where they may. Quantized
 * rows use dot = sum_g scale_g * sum_{k in g} q_k x_k + min_g * sum_{k in g} x_k
 * with x in natural (perm-gathered) order. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "bl_half.h"
#include "cpu_kern.h"

static void sc_prep_q(const bk_weight *w, const float *x, float *xp, float *xs) {
  int32_t cols = w->cols, gs = w->group_size;
  for (int32_t k = 0; k < cols; k++)
    xp[k] = w->perm ? x[w->perm[k]] : x[k];
  for (int32_t g = 0; g < cols / gs; g++) {
    float s = 0;
    for (int32_t k = 0; k < gs; k++)
      s += xp[g * gs + k];
    xs[g] = s;
  }
}

/* Quantized value k (0 <= k < 32) of one packed block. */
static inline int sc_qval(bk_wfmt f, const uint8_t *blk, int k) {
  if (f == BK_WF_W4) return k < 16 ? blk[k] & 15 : blk[k - 16] >> 4;
  return (blk[k & 7] >> (2 * (k >> 3))) & 3;
}

/* One row of F16 for nt tokens: out[t] = sum_k w[k] x[t][k]. */
static void sc_row_f16(const uint16_t *wr, const float *x, size_t ldx, int32_t cols, int nt,
                       float *out) {
  float acc[CPU_MM_TILE] = {0};
  float wb[64]; /* a run of the row converted once, used by every token */
  for (int32_t k0 = 0; k0 < cols; k0 += 64) {
    int32_t len = cols - k0 < 64 ? cols - k0 : 64;
    for (int32_t k = 0; k < len; k++)
      wb[k] = bl_half_to_float(wr[k0 + k]);
    for (int t = 0; t < nt; t++) {
      const float *xt = x + (size_t)t * ldx + k0;
      float s = 0;
      for (int32_t k = 0; k < len; k++)
        s += wb[k] * xt[k];
      acc[t] += s;
    }
  }
  for (int t = 0; t < nt; t++)
    out[t] = acc[t];
}

/* One quantized row for nt tokens. */
static void sc_row_q(const bk_weight *w, int32_t r, const float *x, size_t ldx, const float *xs,
                     int nt, float *out) {
  int32_t cols = w->cols, gs = w->group_size, ng = cols / gs;
  int bb = BK_QBLOCK * bk_wfmt_bits(w->fmt) / 8; /* bytes per block */
  const uint8_t *qr = (const uint8_t *)w->q + (size_t)r * bk_weight_row_bytes(w->fmt, cols);
  float acc[CPU_MM_TILE] = {0};
  for (int32_t g = 0; g < ng; g++) {
    float sc = bl_half_to_float(w->scales[(size_t)r * ng + g]);
    float mn = bl_half_to_float(w->mins[(size_t)r * ng + g]);
    float qx[CPU_MM_TILE] = {0};
    for (int32_t b = g * gs / BK_QBLOCK; b < (g + 1) * gs / BK_QBLOCK; b++) {
      float qf[BK_QBLOCK];
      for (int k = 0; k < BK_QBLOCK; k++)
        qf[k] = (float)sc_qval(w->fmt, qr + (size_t)b * bb, k);
      for (int t = 0; t < nt; t++) {
        const float *xt = x + (size_t)t * ldx + (size_t)b * BK_QBLOCK;
        float s = 0;
        for (int k = 0; k < BK_QBLOCK; k++)
          s += qf[k] * xt[k];
        qx[t] += s;
      }
    }
    for (int t = 0; t < nt; t++)
      acc[t] += sc * qx[t] + mn * xs[(size_t)t * ng + g];
  }
  for (int t = 0; t < nt; t++)
    out[t] = acc[t];
}

static void sc_mm_rows(const cpu_mm *m, int32_t r0, int32_t r1) {
  const bk_weight *w = m->w;
  int32_t ng = w->fmt == BK_WF_F16 ? 0 : w->cols / w->group_size;
  for (int32_t t0 = 0; t0 < m->n; t0 += CPU_MM_TILE) {
    int nt = m->n - t0 < CPU_MM_TILE ? m->n - t0 : CPU_MM_TILE;
    const float *x = m->x + (size_t)t0 * m->ldx;
    for (int32_t r = r0; r < r1; r++) {
      float o[CPU_MM_TILE];
      if (w->fmt == BK_WF_F16)
        sc_row_f16((const uint16_t *)w->q + (size_t)r * w->cols, x, m->ldx, w->cols, nt, o);
      else
        sc_row_q(w, r, x, m->ldx, m->xs + (size_t)t0 * ng, nt, o);
      for (int t = 0; t < nt; t++)
        m->y[(size_t)(t0 + t) * w->rows + r] = o[t];
    }
  }
}

static float sc_dot_f16(const float *x, const uint16_t *h, int32_t n) {
  float s = 0;
  for (int32_t i = 0; i < n; i++)
    s += x[i] * bl_half_to_float(h[i]);
  return s;
}

static void sc_axpy_f16(float *y, float a, const uint16_t *h, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    y[i] += a * bl_half_to_float(h[i]);
}

static void sc_scale(float *y, float a, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    y[i] *= a;
}

static float sc_dot_f32(const float *x, const float *y, int32_t n) {
  float s = 0;
  for (int32_t i = 0; i < n; i++)
    s += x[i] * y[i];
  return s;
}

static void sc_axpy_f32(float *y, float a, const float *x, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    y[i] += a * x[i];
}

/* One online-softmax fold over cnt cached rows; K/V rows are fp16 or, for
 * decoded quantized blocks, float32 (one body, as on the AVX2 path). */
static inline void sc_attn_block_kv(const float *qs, const void *kb, const void *vb, int32_t cnt,
                                    int32_t hd, float *o, float *m, float *l, bool f32) {
  float s[CPU_ATTN_RUN];
  for (int32_t c0 = 0; c0 < cnt; c0 += CPU_ATTN_RUN) {
    int32_t cc = cnt - c0 < CPU_ATTN_RUN ? cnt - c0 : CPU_ATTN_RUN;
    float mx = -INFINITY;
    for (int32_t i = 0; i < cc; i++) {
      size_t r = (size_t)(c0 + i) * hd;
      s[i] = f32 ? sc_dot_f32(qs, (const float *)kb + r, hd)
                 : sc_dot_f16(qs, (const uint16_t *)kb + r, hd);
      mx = s[i] > mx ? s[i] : mx;
    }
    if (mx > *m) {
      float a = expf(*m - mx);
      sc_scale(o, a, hd);
      *l *= a;
      *m = mx;
    }
    for (int32_t i = 0; i < cc; i++) {
      float p = expf(s[i] - *m);
      size_t r = (size_t)(c0 + i) * hd;
      *l += p;
      if (f32)
        sc_axpy_f32(o, p, (const float *)vb + r, hd);
      else
        sc_axpy_f16(o, p, (const uint16_t *)vb + r, hd);
    }
  }
}

static void sc_attn_block(const float *qs, const uint16_t *kb, const uint16_t *vb, int32_t cnt,
                          int32_t hd, float *o, float *m, float *l) {
  sc_attn_block_kv(qs, kb, vb, cnt, hd, o, m, l, false);
}

static void sc_attn_block_f32(const float *qs, const float *kb, const float *vb, int32_t cnt,
                              int32_t hd, float *o, float *m, float *l) {
  sc_attn_block_kv(qs, kb, vb, cnt, hd, o, m, l, true);
}

static void sc_to_f16(uint16_t *dst, const float *src, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    dst[i] = bl_float_to_half(src[i]);
}

static float sc_sumsq(const float *x, int32_t n) {
  float s = 0;
  for (int32_t i = 0; i < n; i++)
    s += x[i] * x[i];
  return s;
}

static void sc_norm_mul(float *out, const float *x, float s, const float *w, int32_t n) {
  for (int32_t i = 0; i < n; i++)
    out[i] = (x[i] * s) * w[i];
}

static void sc_silu_mul(float *out, const float *g, const float *u, size_t n) {
  for (size_t i = 0; i < n; i++)
    out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void sc_add(float *x, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] += y[i];
}

static const cpu_kern sc_table = {
    .name = "scalar",
    .mm_prep_q = sc_prep_q,
    .mm_rows = sc_mm_rows,
    .attn_block = sc_attn_block,
    .attn_block_f32 = sc_attn_block_f32,
    .scale = sc_scale,
    .to_f16 = sc_to_f16,
    .sumsq = sc_sumsq,
    .norm_mul = sc_norm_mul,
    .silu_mul = sc_silu_mul,
    .add = sc_add,
};

const cpu_kern *cpu_kern_scalar(void) { return &sc_table; }
