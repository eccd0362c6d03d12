/* The CPU backend's kv_write and attention for every KV format (fp16, fp8
 * per head, fp8 per tensor, nvfp4) against dequantize-then-attend in double.
 *
 * For each format the expected cache is built here, from the layout written
 * down in backend.h (unit = [block_size] value rows then [block_size] scale
 * rows, per (block, kv head)) and the kv_format.h row quantizers, and the
 * backend's bytes must equal it: this checks offsets, scale rows, nibble
 * order and tensor-scale calibration. Caches start as 0xFF bytes (NaN in
 * fp16, E4M3 and as an nvfp4 scale), so reading an unwritten row shows.
 * Attention must then match softmax(q k / sqrt(d)) v computed in double on
 * the decoded values. History is written in two calls: the first
 * calibrates tensor scales, the second holds a token 20x larger than the
 * rest (the hard case: per-head fp8 keeps it at full precision, the
 * tensor-scaled formats saturate it, and both must still match the
 * reference). Backends: scalar and avx2 x 1 and 3 threads. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bl_half.h"
#include "kv_format.h"
#include "t.h"

#define MAX_BE 4
static bk_backend *g_be[MAX_BE];
static char g_label[MAX_BE][32];
static int g_nbe;
static uint64_t g_rng = 0x13198A2E03707344u;

static float rng_f(float lo, float hi) { /* splitmix64, never 0 */
  float v;
  do {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    v = lo + (hi - lo) * (float)((double)((z ^ (z >> 31)) >> 11) * 0x1p-53);
  } while (v == 0.0f);
  return v;
}

static void make_backends(void) {
  static const char *isas[2] = {"scalar", "avx2"};
  for (int i = 0; i < 2; i++)
    for (int t = 1; t <= 3; t += 2) {
      setenv("BALLAST_CPU_ISA", isas[i], 1);
      bk_backend *be = NULL;
      if (bk_cpu_create(t, &be, NULL) != BL_OK) {
        printf("skip: the %s path\n", isas[i]);
        break;
      }
      snprintf(g_label[g_nbe], sizeof g_label[0], "%s x%d", isas[i], t);
      g_be[g_nbe++] = be;
    }
  unsetenv("BALLAST_CPU_ISA");
}

typedef struct kind {
  bk_kvfmt fmt;
  bk_kvscale scaling;
  const char *name;
} kind;

enum { N_SEQ = 2, HIST0 = 140, HIST1 = 20, FIRST = 8, BIG_POS = 50, BIG = 20, MAXB = 160 };

/* One case: geometry, history and step tokens, the expected cache. */
typedef struct tcase {
  bk_kv_cache kv; /* geometry and format; k/v set per backend */
  int32_t bt[N_SEQ * MAXB], max_blocks;
  int n_hist, n_step;
  int32_t seq[HIST0 + HIST1 + 8], pos[HIST0 + HIST1 + 8], slot[HIST0 + HIST1 + 8];
  float *k, *v;     /* [n_hist + n_step][nkv*hd]: history then step */
  uint8_t *ek, *ev; /* expected layer-1 cache */
  float ts[2];      /* expected layer-1 tensor scales */
  double *dk, *dv;  /* decoded expected cache, [n_slots][nkv][hd] */
} tcase;

static size_t layer_bytes(const bk_kv_cache *kv) {
  return (size_t)kv->n_blocks * kv->n_kv_heads * bk_kv_unit_bytes(kv);
}

/* Encode row x as token slot `slot`, kv head kh, into the expected cache c
 * (independent index arithmetic from backend.h's layout description). */
static void expect_row(tcase *c, uint8_t *cache, int32_t slot, int kh, const float *x, float ts) {
  const bk_kv_cache *kv = &c->kv;
  int hd = kv->head_dim, bs = kv->block_size;
  size_t rb = bk_kv_row_bytes(kv->fmt, hd), sb = bk_kv_scale_bytes(kv->fmt, kv->scaling, hd);
  uint8_t *unit = cache + ((size_t)(slot / bs) * kv->n_kv_heads + kh) * (size_t)bs * (rb + sb);
  uint8_t *row = unit + (size_t)(slot % bs) * rb, *srow = unit + bs * rb + (slot % bs) * sb;
  if (kv->fmt == BK_KV_F16) {
    for (int i = 0; i < hd; i++) {
      uint16_t h = bl_float_to_half(x[i]);
      memcpy(row + 2 * i, &h, 2);
    }
  } else if (kv->fmt == BK_KV_NVFP4) {
    kv_nvfp4_quant_row(x, hd, ts, row, srow);
  } else if (kv->scaling == BK_KVS_HEAD) {
    *srow = kv_fp8_quant_row(x, hd, row);
  } else {
    kv_fp8t_quant_row(x, hd, ts, row);
  }
}

/* Decode element i of (slot, kh) from the expected cache, by hand. */
static double decode(const tcase *c, const uint8_t *cache, int32_t slot, int kh, int i, float ts) {
  const bk_kv_cache *kv = &c->kv;
  int hd = kv->head_dim, bs = kv->block_size;
  size_t rb = bk_kv_row_bytes(kv->fmt, hd), sb = bk_kv_scale_bytes(kv->fmt, kv->scaling, hd);
  const uint8_t *unit =
      cache + ((size_t)(slot / bs) * kv->n_kv_heads + kh) * (size_t)bs * (rb + sb);
  const uint8_t *row = unit + (size_t)(slot % bs) * rb, *srow = unit + bs * rb + (slot % bs) * sb;
  if (kv->fmt == BK_KV_F16) return bl_half_to_float((uint16_t)(row[2 * i] | row[2 * i + 1] << 8));
  if (kv->fmt == BK_KV_NVFP4) {
    uint8_t q = (uint8_t)(i & 1 ? row[i / 2] >> 4 : row[i / 2] & 15);
    return (double)kv_e2m1_to_f32(q) * (double)(kv_e4m3_to_f32(srow[i / 16]) * ts);
  }
  double s = kv->scaling == BK_KVS_HEAD ? ldexp(1.0, srow[0] - 127) : ts;
  return (double)kv_e4m3_to_f32(row[i]) * s;
}

static float calib(const tcase *c, const float *x, int n) {
  float amax = 0;
  for (size_t i = 0; i < (size_t)n * c->kv.n_kv_heads * c->kv.head_dim; i++)
    amax = kv_amax_add(amax, x[i]);
  return c->kv.fmt == BK_KV_FP8 ? kv_fp8_tensor_scale(amax) : kv_nvfp4_tensor_scale(amax);
}

static void add_tok(tcase *c, int i, int seq, int pos) {
  int bs = c->kv.block_size;
  c->seq[i] = seq;
  c->pos[i] = pos;
  c->slot[i] = c->bt[seq * c->max_blocks + pos / bs] * bs + pos % bs;
}

static void case_build(tcase *c, const kind *kd, int bs, int hd, int nkv) {
  memset(c, 0, sizeof *c);
  c->max_blocks = (HIST0 + 8 + bs - 1) / bs;
  c->kv = (bk_kv_cache){.fmt = kd->fmt,
                        .scaling = kd->scaling,
                        .n_layers = 2,
                        .n_blocks = N_SEQ * c->max_blocks + 2,
                        .block_size = bs,
                        .n_kv_heads = nkv,
                        .head_dim = hd};
  for (int i = 0; i < N_SEQ * c->max_blocks; i++) /* reversed, interleaved: not the identity */
    c->bt[i] = c->kv.n_blocks - 1 - (i % N_SEQ ? i / N_SEQ : c->max_blocks + i / N_SEQ);
  int n = 0;
  for (int p = 0; p < HIST0; p++) /* seq 0's first FIRST tokens, then seq 1, then the rest */
    if (p < FIRST) add_tok(c, n++, 0, p);
  for (int p = 0; p < HIST1; p++)
    add_tok(c, n++, 1, p);
  for (int p = FIRST; p < HIST0; p++)
    add_tok(c, n++, 0, p);
  c->n_hist = n;
  add_tok(c, n++, 0, HIST0); /* decode of seq 0 */
  for (int p = HIST1; p < HIST1 + 5; p++)
    add_tok(c, n++, 1, p); /* prefill chunk of seq 1 */
  c->n_step = n - c->n_hist;
  size_t row = (size_t)nkv * hd;
  c->k = malloc((size_t)n * row * sizeof(float));
  c->v = malloc((size_t)n * row * sizeof(float));
  for (size_t i = 0; i < (size_t)n * row; i++) {
    c->k[i] = rng_f(-1, 1);
    c->v[i] = rng_f(-1, 1);
  }
  int big = FIRST + HIST1 + (BIG_POS - FIRST); /* seq 0, position BIG_POS */
  for (size_t i = 0; i < row; i++)
    c->k[big * row + i] *= BIG, c->v[big * row + i] *= BIG;
  size_t lb = layer_bytes(&c->kv), n_slots = (size_t)c->kv.n_blocks * bs;
  c->ek = malloc(lb);
  c->ev = malloc(lb);
  memset(c->ek, 0xFF, lb);
  memset(c->ev, 0xFF, lb);
  if (bk_kv_tensor_scaled(kd->fmt, kd->scaling)) { /* first call: FIRST tokens */
    c->ts[0] = calib(c, c->k, FIRST);
    c->ts[1] = calib(c, c->v, FIRST);
  }
  for (int t = 0; t < n; t++)
    for (int kh = 0; kh < nkv; kh++) {
      expect_row(c, c->ek, c->slot[t], kh, c->k + t * row + (size_t)kh * hd, c->ts[0]);
      expect_row(c, c->ev, c->slot[t], kh, c->v + t * row + (size_t)kh * hd, c->ts[1]);
    }
  c->dk = calloc(n_slots * row, sizeof(double));
  c->dv = calloc(n_slots * row, sizeof(double));
  for (int t = 0; t < n; t++)
    for (int kh = 0; kh < nkv; kh++)
      for (int i = 0; i < hd; i++) {
        size_t at = ((size_t)c->slot[t] * nkv + kh) * hd + i;
        c->dk[at] = decode(c, c->ek, c->slot[t], kh, i, c->ts[0]);
        c->dv[at] = decode(c, c->ev, c->slot[t], kh, i, c->ts[1]);
      }
}

static void case_free(tcase *c) {
  free(c->k), free(c->v), free(c->ek), free(c->ev), free(c->dk), free(c->dv);
}

/* The stored values stay within the format's error of the inputs: fp8 per
 * head for every token (the 20x one included); tensor-scaled formats for
 * the tokens inside the calibrated range (the 20x one saturates). */
static void check_precision(const tcase *c, const char *what) {
  const bk_kv_cache *kv = &c->kv;
  if (kv->fmt == BK_KV_F16) return;
  size_t row = (size_t)kv->n_kv_heads * kv->head_dim;
  int bad = 0, big = FIRST + HIST1 + (BIG_POS - FIRST);
  for (int t = 0; t < c->n_hist + c->n_step; t++) {
    if (t == big && bk_kv_tensor_scaled(kv->fmt, kv->scaling)) continue;
    for (size_t e = 0; e < row; e++) {
      double x = c->v[t * row + e], d = c->dv[(size_t)c->slot[t] * row + e];
      /* fp8: half an E4M3 step (2^-4 relative) plus half a subnormal step
       * of the largest scale (2^-10 * 2^k, 2^k <= amax/224 <= BIG/16);
       * nvfp4: a quarter of |x| or of the group's scale (<= 1.0625 amax / 6,
       * amax <= 1 outside the 20x token) */
      double tol =
          kv->fmt == BK_KV_FP8 ? fabs(x) / 16 + 0x1p-10 * BIG / 16 : fmax(fabs(x), 1.0625 / 6) / 4;
      bad += !(fabs(d - x) <= tol);
    }
  }
  T_CHECKF(bad == 0, "%s: %d stored V values outside the format's error", what, bad);
}

static void attn_ref(const tcase *c, const float *q, const bk_heads *h, double *out) {
  int hd = h->head_dim, nh = h->n_heads, nkv = h->n_kv_heads;
  double s[HIST0 + 8];
  for (int t = c->n_hist; t < c->n_hist + c->n_step; t++)
    for (int hh = 0; hh < nh; hh++) {
      int kvh = hh / (nh / nkv), seq = c->seq[t], np = c->pos[t] + 1;
      const float *qv = q + ((size_t)(t - c->n_hist) * nh + hh) * hd;
      double mx = -INFINITY, l = 0, *o = out + ((size_t)(t - c->n_hist) * nh + hh) * hd;
      for (int p = 0; p < np; p++) {
        int bs = c->kv.block_size;
        size_t at = ((size_t)(c->bt[seq * c->max_blocks + p / bs] * bs + p % bs) * nkv + kvh) * hd;
        s[p] = 0;
        for (int d = 0; d < hd; d++)
          s[p] += qv[d] * c->dk[at + d];
        s[p] /= sqrt((double)hd);
        mx = fmax(mx, s[p]);
      }
      for (int d = 0; d < hd; d++)
        o[d] = 0;
      for (int p = 0; p < np; p++) {
        int bs = c->kv.block_size;
        size_t at = ((size_t)(c->bt[seq * c->max_blocks + p / bs] * bs + p % bs) * nkv + kvh) * hd;
        double e = exp(s[p] - mx);
        l += e;
        for (int d = 0; d < hd; d++)
          o[d] += e * c->dv[at + d];
      }
      for (int d = 0; d < hd; d++)
        o[d] /= l;
    }
}

static void run_case(const kind *kd, int bs, int hd, int nh, int nkv) {
  char what[96];
  snprintf(what, sizeof what, "%s bs=%d hd=%d heads=%d/%d", kd->name, bs, hd, nh, nkv);
  tcase c;
  int failed_before = t_failed;
  case_build(&c, kd, bs, hd, nkv);
  check_precision(&c, what);
  bk_heads h = {.n_heads = nh, .n_kv_heads = nkv, .head_dim = hd};
  size_t no = (size_t)c.n_step * nh * hd, lb = layer_bytes(&c.kv), row = (size_t)nkv * hd;
  float *q = malloc(no * sizeof *q), *out = malloc(no * sizeof *out);
  for (size_t i = 0; i < no; i++)
    q[i] = rng_f(-3, 3);
  double *ref = malloc(no * sizeof *ref);
  attn_ref(&c, q, &h, ref);
  for (int b = 0; b < g_nbe; b++) {
    bk_backend *be = g_be[b];
    bk_kv_cache kv = c.kv;
    void *k[2], *v[2];
    float ts[4] = {0};
    kv.k = k, kv.v = v;
    kv.tensor_scales = bk_kv_tensor_scaled(kv.fmt, kv.scaling) ? ts : NULL;
    for (int l = 0; l < 2; l++) {
      k[l] = be->alloc(be, lb), v[l] = be->alloc(be, lb);
      memset(k[l], 0xFF, lb), memset(v[l], 0xFF, lb);
    }
    int32_t n2 = c.n_hist - FIRST;
    T_CHECK(be->kv_write(be, &kv, 1, c.k, c.v, c.slot, FIRST) == BL_OK);
    T_CHECK(be->kv_write(be, &kv, 1, c.k + FIRST * row, c.v + FIRST * row, c.slot + FIRST, n2) ==
            BL_OK);
    T_CHECK(be->kv_write(be, &kv, 1, c.k + c.n_hist * row, c.v + c.n_hist * row, c.slot + c.n_hist,
                         c.n_step) == BL_OK);
    T_CHECKF(memcmp(k[1], c.ek, lb) == 0 && memcmp(v[1], c.ev, lb) == 0,
             "%s on %s: cache bytes differ from the layout", what, g_label[b]);
    T_CHECKF(ts[2] == c.ts[0] && ts[3] == c.ts[1] && ts[0] == 0 && ts[1] == 0,
             "%s on %s: tensor scales %g %g (want %g %g), layer 0 %g", what, g_label[b],
             (double)ts[2], (double)ts[3], (double)c.ts[0], (double)c.ts[1], (double)ts[0]);
    bk_attn_batch ab = {.n_tok = c.n_step,
                        .tok_seq = c.seq + c.n_hist,
                        .tok_pos = c.pos + c.n_hist,
                        .block_tables = c.bt,
                        .n_seq = N_SEQ,
                        .max_blocks = c.max_blocks};
    for (size_t i = 0; i < no; i++)
      out[i] = NAN;
    T_CHECK(be->attention(be, out, q, &kv, 1, &ab, &h) == BL_OK);
    /* The same decoded values on both sides; float32 scores and exps against
     * double, softmax-weighted means of |v| <= 1 (and one token <= 20). */
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < no; i++)
      if (!(fabs(out[i] - ref[i]) <= 1e-5 + 1e-4 * fabs(ref[i])) && bad++ == 0) first = i;
    T_CHECKF(bad == 0, "%s on %s: %zu of %zu off, first [%zu] got %.9g want %.9g", what, g_label[b],
             bad, no, first, bad ? (double)out[first] : 0, bad ? ref[first] : 0);
    for (int l = 0; l < 2; l++)
      be->free(be, k[l]), be->free(be, v[l]);
  }
  printf("%s  %s\n", t_failed == failed_before ? "ok  " : "FAIL", what);
  free(q), free(out), free(ref);
  case_free(&c);
}

int main(void) {
  make_backends();
  static const kind kinds[] = {{BK_KV_F16, BK_KVS_HEAD, "fp16"},
                               {BK_KV_FP8, BK_KVS_HEAD, "fp8"},
                               {BK_KV_FP8, BK_KVS_TENSOR, "fp8-tensor"},
                               {BK_KV_NVFP4, BK_KVS_HEAD, "nvfp4"}};
  static const int shapes[][4] = {
      {16, 64, 6, 2}, {5, 128, 8, 1}, {16, 32, 4, 4}, {128, 64, 4, 2}, {7, 36, 2, 2}};
  for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      if (bk_kv_geometry_ok(kinds[k].fmt, shapes[s][1]))
        run_case(&kinds[k], shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3]);
  /* a format that cannot hold the head size is refused, not written */
  bk_kv_cache bad = {.fmt = BK_KV_NVFP4,
                     .n_layers = 1,
                     .n_blocks = 1,
                     .block_size = 4,
                     .n_kv_heads = 1,
                     .head_dim = 40};
  float x[40] = {0}, ts[2] = {0};
  void *p = g_be[0]->alloc(g_be[0], 4096);
  int32_t slot = 0;
  bad.k = &p, bad.v = &p, bad.tensor_scales = ts;
  T_CHECK(g_be[0]->kv_write(g_be[0], &bad, 0, x, x, &slot, 1) == BL_EINVAL);
  g_be[0]->free(g_be[0], p);
  for (int b = 0; b < g_nbe; b++)
    bk_destroy(g_be[b]);
  return T_DONE();
}
