/* AVX2 + FMA + F16C inner loops. This file alone is compiled with
 * -mavx2 -mfma -mf16c (kernels/cpu/meson.build) and is only entered after
 * cpu_isa_x86.c has checked the CPU, so nothing here may run at load time.
 *
 * Matmul reads each weight row once per tile of up to 8 tokens and keeps
 * the tile's partial sums in registers (NT tokens x U independent chains;
 * NT is a compile-time constant through always_inline, one function per NT).
 * Quantized blocks are widened without shifts: a W4 block's 16 bytes are
 * zero-extended as 8 words into 8 dwords and masked with 0xF, 0xF0, 0xF00,
 * 0xF000, giving q * 16^s; W2 bytes are zero-extended into dwords and masked
 * with 3 << 2s, giving q * 4^s. mm_prep_q pre-divides x by the same powers
 * of two (exact) and reorders each block's 32 values to match, so the
 * inner loop is mask, convert, multiply-add. Wide tiles walk the columns in
 * L1-sized chunks (av_mm_rows) so x is not re-read from L2 for every row. */
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "cpu_kern.h"

#define AI static inline __attribute__((always_inline))

AI float av_hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AI __m256 av_load_f16(const uint16_t *h) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* dst[n] = float(src[n]) for short runs (scales, mins). */
static void av_f16_run(float *dst, const uint16_t *src, int32_t n) {
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, av_load_f16(src + i));
  for (; i < n; i++)
    dst[i] = _cvtsh_ss(src[i]);
}

static float av_dot_f32(const float *a, const float *b, int32_t n) {
  __m256 acc = _mm256_setzero_ps();
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = av_hsum(acc);
  for (; i < n; i++)
    s += a[i] * b[i];
  return s;
}

/* ---- matmul: input preparation ---------------------------------------- */

/* Position in the natural block of kernel lane L (W4): lane 8s + w holds
 * nibble s of word w, i.e. elements 2w, 2w+16, 2w+1, 2w+17 for s = 0..3. */
static void av_prep_q(const bk_weight *w, const float *x, float *xp, float *xs) {
  const __m256 w4s[4] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f / 16),
                         _mm256_set1_ps(1.0f / 256), _mm256_set1_ps(1.0f / 4096)};
  const __m256 w2s[4] = {_mm256_set1_ps(1.0f), _mm256_set1_ps(1.0f / 4), _mm256_set1_ps(1.0f / 16),
                         _mm256_set1_ps(1.0f / 64)};
  int32_t nb = w->cols / BK_QBLOCK, bpg = w->group_size / BK_QBLOCK;
  __m256 gsum = _mm256_setzero_ps();
  for (int32_t b = 0; b < nb; b++) {
    float v[BK_QBLOCK]; /* this block of x in natural (perm-gathered) order */
    const float *src = x + (size_t)b * BK_QBLOCK;
    if (w->perm) {
      const int32_t *pm = w->perm + (size_t)b * BK_QBLOCK;
      for (int j = 0; j < BK_QBLOCK; j++)
        v[j] = x[pm[j]];
      src = v;
    }
    __m256 a0 = _mm256_loadu_ps(src), a1 = _mm256_loadu_ps(src + 8);
    __m256 a2 = _mm256_loadu_ps(src + 16), a3 = _mm256_loadu_ps(src + 24);
    gsum = _mm256_add_ps(gsum, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    if ((b + 1) % bpg == 0) {
      xs[b / bpg] = av_hsum(gsum);
      gsum = _mm256_setzero_ps();
    }
    float *o = xp + (size_t)b * BK_QBLOCK;
    if (w->fmt == BK_WF_W2) {
      _mm256_storeu_ps(o, a0);
      _mm256_storeu_ps(o + 8, _mm256_mul_ps(a1, w2s[1]));
      _mm256_storeu_ps(o + 16, _mm256_mul_ps(a2, w2s[2]));
      _mm256_storeu_ps(o + 24, _mm256_mul_ps(a3, w2s[3]));
      continue;
    }
    /* even / odd elements of 0..15 and of 16..31, in order */
    const __m256i fix = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    __m256 e0 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(a0, a1, 0x88), fix);
    __m256 o0 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(a0, a1, 0xDD), fix);
    __m256 e1 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(a2, a3, 0x88), fix);
    __m256 o1 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(a2, a3, 0xDD), fix);
    _mm256_storeu_ps(o, e0);
    _mm256_storeu_ps(o + 8, _mm256_mul_ps(e1, w4s[1]));
    _mm256_storeu_ps(o + 16, _mm256_mul_ps(o0, w4s[2]));
    _mm256_storeu_ps(o + 24, _mm256_mul_ps(o1, w4s[3]));
  }
}

/* ---- matmul: row kernels ---------------------------------------------- */

/* out[t] = sum_k w[k] x[t][k] for NT tokens. Every token is summed the same
 * way whatever NT is (two chains of 8 lanes, alternating every 8 columns),
 * so a token's result does not depend on the batch it is in. */
AI void av_row_f16(const uint16_t *wr, const float *x, size_t ldx, int32_t cols, const int NT,
                   float *out) {
  enum { U = 2 };
  __m256 acc[CPU_MM_TILE][U];
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
    for (int u = 0; u < U; u++)
      acc[t][u] = _mm256_setzero_ps();
  int32_t k = 0;
  for (; k + 8 * U <= cols; k += 8 * U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; u++) {
      __m256 wv = av_load_f16(wr + k + 8 * u);
#pragma GCC unroll 8
      for (int t = 0; t < NT; t++)
        acc[t][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * ldx + k + 8 * u), acc[t][u]);
    }
  }
  for (; k + 8 <= cols; k += 8) {
    __m256 wv = av_load_f16(wr + k);
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++)
      acc[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * ldx + k), acc[t][0]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++) {
    __m256 s = acc[t][0];
#pragma GCC unroll 4
    for (int u = 1; u < U; u++)
      s = _mm256_add_ps(s, acc[t][u]);
    out[t] = av_hsum(s);
  }
  for (; k < cols; k++) {
    float wv = _cvtsh_ss(wr[k]);
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++)
      out[t] += wv * x[t * ldx + k];
  }
}

/* One packed block widened to 4 vectors of q * 2^(bits*s) (see the top). */
AI void av_unpack(bk_wfmt f, const uint8_t *qb, __m256 q[4]) {
  if (f == BK_WF_W4) {
    __m256i d = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)qb));
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x000F)));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x00F0)));
    q[2] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x0F00)));
    q[3] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0xF000)));
  } else {
    __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qb));
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x03)));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x0C)));
    q[2] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0x30)));
    q[3] = _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(0xC0)));
  }
}

/* acc[t] += scale * sum over block b of q * x[t]. */
AI void av_block(bk_wfmt f, const uint8_t *qr, int32_t b, const float *x, size_t ldx, __m256 sv,
                 const int NT, __m256 *acc) {
  __m256 q[4];
  av_unpack(f, qr + (size_t)b * (f == BK_WF_W4 ? 16 : 8), q);
  const float *xb = x + (size_t)b * BK_QBLOCK;
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++) {
    const float *xt = xb + t * ldx;
    __m256 p = _mm256_mul_ps(q[0], _mm256_loadu_ps(xt));
    p = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xt + 8), p);
    p = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xt + 16), p);
    p = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xt + 24), p);
    acc[t] = _mm256_fmadd_ps(sv, p, acc[t]);
  }
}

/* Groups are handled in segments of AV_SEG so their scales and mins are
 * converted 8 at a time into a small stack buffer. */
#define AV_SEG 64

/* out[t] = sum over blocks [b0, b1) of scale_g * (q.x[t])_block for one row. */
AI void av_row_q(bk_wfmt f, const bk_weight *w, int32_t r, const float *x, size_t ldx, int32_t b0,
                 int32_t b1, const int NT, float *out) {
  int32_t ng = w->cols / w->group_size, bpg = w->group_size / BK_QBLOCK;
  const uint8_t *qr =
      (const uint8_t *)w->q + (size_t)r * (size_t)w->cols * (f == BK_WF_W4 ? 4 : 2) / 8;
  const uint16_t *scr = w->scales + (size_t)r * ng;
  __m256 acc0[CPU_MM_TILE], acc1[CPU_MM_TILE]; /* even and odd blocks, for any NT */
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++)
    acc0[t] = acc1[t] = _mm256_setzero_ps();
  float sbuf[AV_SEG];
  int32_t g_end = (b1 - 1) / bpg + 1;
  for (int32_t g0 = b0 / bpg; g0 < g_end; g0 += AV_SEG) {
    int32_t gn = g_end - g0 < AV_SEG ? g_end - g0 : AV_SEG;
    av_f16_run(sbuf, scr + g0, gn);
    for (int32_t g = g0; g < g0 + gn; g++) {
      __m256 sv = _mm256_broadcast_ss(&sbuf[g - g0]);
      int32_t b = g * bpg > b0 ? g * bpg : b0, be = (g + 1) * bpg < b1 ? (g + 1) * bpg : b1;
      for (; b + 2 <= be; b += 2) {
        av_block(f, qr, b, x, ldx, sv, NT, acc0);
        av_block(f, qr, b + 1, x, ldx, sv, NT, acc1);
      }
      if (b < be) av_block(f, qr, b, x, ldx, sv, NT, acc0);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++)
    out[t] = av_hsum(_mm256_add_ps(acc0[t], acc1[t]));
}

/* out[t] += sum_g min_g * xs[t][g] for one row. */
static void av_row_min(const bk_weight *w, int32_t r, const float *xs, int nt, float *out) {
  int32_t ng = w->cols / w->group_size;
  const uint16_t *mnr = w->mins + (size_t)r * ng;
  float mbuf[AV_SEG];
  for (int32_t g0 = 0; g0 < ng; g0 += AV_SEG) {
    int32_t gn = ng - g0 < AV_SEG ? ng - g0 : AV_SEG;
    av_f16_run(mbuf, mnr + g0, gn);
    for (int t = 0; t < nt; t++)
      out[t] += av_dot_f32(mbuf, xs + (size_t)t * ng + g0, gn);
  }
}

/* Rows r0..r1 of tokens t0..t0+NT over columns [k0, k1): part[r - r0][t]
 * += the partial dot products (quantized: plus the min terms once, with
 * the chunk at k0 == 0). */
typedef void (*av_rows_fn)(const cpu_mm *m, int32_t t0, int32_t r0, int32_t r1, int32_t k0,
                           int32_t k1, float *part);

#define AV_ROWS_F16(NT)                                                                            \
  static void av_f16_##NT(const cpu_mm *m, int32_t t0, int32_t r0, int32_t r1, int32_t k0,         \
                          int32_t k1, float *part) {                                               \
    const bk_weight *w = m->w;                                                                     \
    const float *x = m->x + (size_t)t0 * m->ldx + k0;                                              \
    for (int32_t r = r0; r < r1; r++) {                                                            \
      float o[NT];                                                                                 \
      av_row_f16((const uint16_t *)w->q + (size_t)r * w->cols + k0, x, m->ldx, k1 - k0, NT, o);    \
      for (int t = 0; t < NT; t++)                                                                 \
        part[(r - r0) * NT + t] += o[t];                                                           \
    }                                                                                              \
  }

#define AV_ROWS_Q(NAME, FMT, NT)                                                                   \
  static void NAME##_##NT(const cpu_mm *m, int32_t t0, int32_t r0, int32_t r1, int32_t k0,         \
                          int32_t k1, float *part) {                                               \
    const bk_weight *w = m->w;                                                                     \
    const float *x = m->x + (size_t)t0 * m->ldx;                                                   \
    const float *xs = m->xs + (size_t)t0 * (w->cols / w->group_size);                              \
    for (int32_t r = r0; r < r1; r++) {                                                            \
      float o[NT];                                                                                 \
      av_row_q(FMT, w, r, x, m->ldx, k0 / BK_QBLOCK, k1 / BK_QBLOCK, NT, o);                       \
      if (k0 == 0) av_row_min(w, r, xs, NT, o);                                                    \
      for (int t = 0; t < NT; t++)                                                                 \
        part[(r - r0) * NT + t] += o[t];                                                           \
    }                                                                                              \
  }

#define AV_ROWS(NT) AV_ROWS_F16(NT) AV_ROWS_Q(av_w4, BK_WF_W4, NT) AV_ROWS_Q(av_w2, BK_WF_W2, NT)
AV_ROWS(1)
AV_ROWS(2)
AV_ROWS(3)
AV_ROWS(4)

/* [format][tile width] */
static const av_rows_fn av_rows[3][CPU_MM_TILE + 1] = {
    [BK_WF_F16] = {NULL, av_f16_1, av_f16_2, av_f16_3, av_f16_4},
    [BK_WF_W4] = {NULL, av_w4_1, av_w4_2, av_w4_3, av_w4_4},
    [BK_WF_W2] = {NULL, av_w2_1, av_w2_2, av_w2_3, av_w2_4},
};

/* Columns are walked in chunks of AV_KC over AV_RB rows at a time, so a
 * full tile's x (CPU_MM_TILE tokens x AV_KC floats, 16 KiB) stays in L1 while
 * the rows stream past. The chunk width is the same for every tile width:
 * chunk partial sums are added in column order, and a fixed width keeps a
 * token's rounding independent of its batch (batch invariance). */
#define AV_KC 1024
#define AV_RB 16

static void av_mm_rows(const cpu_mm *m, int32_t r0, int32_t r1) {
  const bk_weight *w = m->w;
  for (int32_t t0 = 0; t0 < m->n; t0 += CPU_MM_TILE) {
    int nt = m->n - t0 < CPU_MM_TILE ? m->n - t0 : CPU_MM_TILE;
    int32_t kc = AV_KC;
    av_rows_fn fn = av_rows[w->fmt][nt];
    for (int32_t rb = r0; rb < r1; rb += AV_RB) {
      int32_t re = rb + AV_RB < r1 ? rb + AV_RB : r1;
      float part[AV_RB * CPU_MM_TILE] = {0}; /* [row][token] */
      for (int32_t k0 = 0; k0 < w->cols; k0 += kc)
        fn(m, t0, rb, re, k0, k0 + kc < w->cols ? k0 + kc : w->cols, part);
      for (int32_t r = rb; r < re; r++)
        for (int t = 0; t < nt; t++)
          m->y[(size_t)(t0 + t) * w->rows + r] = part[(r - rb) * nt + t];
    }
  }
}

/* ---- vector helpers for attention and the element-wise ops ------------- */

/* e^x to about 2 ulp (Cephes expf: x = n ln2 + r, degree-5 polynomial on r);
 * x is clamped so 2^n stays a normal float. */
AI __m256 av_exp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* Cache rows are fp16 (f32 false) or float32 (f32 true, the decoded
 * quantized formats); always_inline with a constant flag gives one loop per
 * element type. */
AI __m256 av_load_kv(const void *p, int32_t i, bool f32) {
  return f32 ? _mm256_loadu_ps((const float *)p + i) : av_load_f16((const uint16_t *)p + i);
}

AI float av_kv_elem(const void *p, int32_t i, bool f32) {
  return f32 ? ((const float *)p)[i] : _cvtsh_ss(((const uint16_t *)p)[i]);
}

AI const void *av_kv_row(const void *p, size_t row, bool f32) {
  return f32 ? (const void *)((const float *)p + row) : (const void *)((const uint16_t *)p + row);
}

AI float av_dot_kv(const float *x, const void *h, int32_t n, bool f32) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int32_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), av_load_kv(h, i, f32), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), av_load_kv(h, i + 8, f32), a1);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), av_load_kv(h, i, f32), a0);
  float s = av_hsum(_mm256_add_ps(a0, a1));
  for (; i < n; i++)
    s += x[i] * av_kv_elem(h, i, f32);
  return s;
}

/* y[i] += a * h[i]. */
AI void av_axpy_kv(float *y, float a, const void *h, int32_t n, bool f32) {
  __m256 av = _mm256_set1_ps(a);
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, av_load_kv(h, i, f32), _mm256_loadu_ps(y + i)));
  for (; i < n; i++)
    y[i] += a * av_kv_elem(h, i, f32);
}

/* y[i] += a * h[i] + b * g[i]: two cache rows per pass over y. */
AI void av_axpy2_kv(float *y, float a, const void *h, float b, const void *g, int32_t n, bool f32) {
  __m256 av = _mm256_set1_ps(a), bv = _mm256_set1_ps(b);
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_fmadd_ps(av, av_load_kv(h, i, f32), _mm256_loadu_ps(y + i));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(bv, av_load_kv(g, i, f32), t));
  }
  for (; i < n; i++)
    y[i] += a * av_kv_elem(h, i, f32) + b * av_kv_elem(g, i, f32);
}

static void av_scale(float *y, float a, int32_t n);

/* Scores for a run of positions, one rescale if the maximum grew, exps 8
 * at a time, then V two rows per pass. */
AI void av_attn_block_kv(const float *qs, const void *kb, const void *vb, int32_t cnt, int32_t hd,
                         float *o, float *m, float *l, bool f32) {
  float s[CPU_ATTN_RUN];
  for (int32_t c0 = 0; c0 < cnt; c0 += CPU_ATTN_RUN) {
    int32_t cc = cnt - c0 < CPU_ATTN_RUN ? cnt - c0 : CPU_ATTN_RUN;
    const void *k = av_kv_row(kb, (size_t)c0 * hd, f32), *v = av_kv_row(vb, (size_t)c0 * hd, f32);
    float mx = -INFINITY;
    for (int32_t i = 0; i < cc; i++) {
      s[i] = av_dot_kv(qs, av_kv_row(k, (size_t)i * hd, f32), hd, f32);
      mx = s[i] > mx ? s[i] : mx;
    }
    if (mx > *m) {
      float a = expf(*m - mx);
      av_scale(o, a, hd);
      *l *= a;
      *m = mx;
    }
    __m256 mv = _mm256_set1_ps(*m), lv = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 8 <= cc; i += 8) {
      __m256 e = av_exp(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
      _mm256_storeu_ps(s + i, e);
      lv = _mm256_add_ps(lv, e);
    }
    float ls = av_hsum(lv);
    for (; i < cc; i++)
      ls += s[i] = expf(s[i] - *m);
    *l += ls;
    for (i = 0; i + 1 < cc; i += 2)
      av_axpy2_kv(o, s[i], av_kv_row(v, (size_t)i * hd, f32), s[i + 1],
                  av_kv_row(v, (size_t)(i + 1) * hd, f32), hd, f32);
    if (i < cc) av_axpy_kv(o, s[i], av_kv_row(v, (size_t)i * hd, f32), hd, f32);
  }
}

static void av_attn_block(const float *qs, const uint16_t *kb, const uint16_t *vb, int32_t cnt,
                          int32_t hd, float *o, float *m, float *l) {
  av_attn_block_kv(qs, kb, vb, cnt, hd, o, m, l, false);
}

static void av_attn_block_f32(const float *qs, const float *kb, const float *vb, int32_t cnt,
                              int32_t hd, float *o, float *m, float *l) {
  av_attn_block_kv(qs, kb, vb, cnt, hd, o, m, l, true);
}

static void av_scale(float *y, float a, int32_t n) {
  __m256 av = _mm256_set1_ps(a);
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(av, _mm256_loadu_ps(y + i)));
  for (; i < n; i++)
    y[i] *= a;
}

static void av_to_f16(uint16_t *dst, const float *src, int32_t n) {
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++)
    dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

static float av_sumsq(const float *x, int32_t n) {
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
  int32_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; u++) {
      __m256 v = _mm256_loadu_ps(x + i + 8 * u);
      a[u] = _mm256_fmadd_ps(v, v, a[u]);
    }
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    a[0] = _mm256_fmadd_ps(v, v, a[0]);
  }
  float s = av_hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  for (; i < n; i++)
    s += x[i] * x[i];
  return s;
}

static void av_norm_mul(float *out, const float *x, float s, const float *w, int32_t n) {
  __m256 sv = _mm256_set1_ps(s);
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(
        out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w + i)));
  for (; i < n; i++)
    out[i] = (x[i] * s) * w[i];
}

static void av_silu_mul(float *out, const float *g, const float *u, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gv = _mm256_loadu_ps(g + i);
    __m256 den = _mm256_add_ps(one, av_exp(_mm256_sub_ps(_mm256_setzero_ps(), gv)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++)
    out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void av_add(float *x, const float *y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++)
    x[i] += y[i];
}

static const cpu_kern av_table = {
    .name = "avx2",
    .mm_prep_q = av_prep_q,
    .mm_rows = av_mm_rows,
    .attn_block = av_attn_block,
    .attn_block_f32 = av_attn_block_f32,
    .scale = av_scale,
    .to_f16 = av_to_f16,
    .sumsq = av_sumsq,
    .norm_mul = av_norm_mul,
    .silu_mul = av_silu_mul,
    .add = av_add,
};

const cpu_kern *cpu_avx2_kern(void) { return &av_table; }
