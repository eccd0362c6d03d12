/* The CPU backend's ops against plain double-precision references.
 *
 * Every op runs on up to four backends: ISA scalar and avx2 (forced through
 * BALLAST_CPU_ISA before bk_cpu_create; avx2 is skipped with a line where
 * the CPU lacks it) times 1 and 3 threads. Inputs come from a fixed-seed
 * PRNG and are never zero; outputs are filled with NaN first, so an element
 * an op fails to write fails its check. Shapes are odd on purpose: row
 * counts that are not multiples of 8, 1..17 tokens, every group size, with
 * and without act-order perm, head dims with SIMD tails. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bl_half.h"
#include "t.h"

/* ---- harness ---------------------------------------------------------- */

#define MAX_BE 4
static bk_backend *g_be[MAX_BE];
static char g_label[MAX_BE][32];
static int g_nbe;

static uint64_t g_rng = 0x243F6A8885A308D3u;

static uint64_t rng_next(void) { /* splitmix64 */
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

static float rng_f(float lo, float hi) {
  float v;
  do
    v = lo + (hi - lo) * (float)((double)(rng_next() >> 11) * 0x1p-53);
  while (v == 0.0f);
  return v;
}

static int rng_int(int n) { return (int)(rng_next() % (uint64_t)n); }

static float *fvec(size_t n, float lo, float hi) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++)
    v[i] = rng_f(lo, hi);
  return v;
}

static float *fnan(size_t n) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++)
    v[i] = NAN;
  return v;
}

static float *fdup(const float *a, size_t n) {
  float *v = malloc(n * sizeof *v);
  memcpy(v, a, n * sizeof *v);
  return v;
}

static void shuffle(int32_t *a, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = rng_int(i + 1);
    int32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* One check per array: element i passes when
 * |got - want| <= atol + rtol*|want| + rmag*mag[i] (mag may be NULL). */
static void check_arr(const char *what, int be, const float *got, const double *want,
                      const double *mag, size_t n, double atol, double rtol, double rmag) {
  size_t nbad = 0, first = 0;
  for (size_t i = 0; i < n; i++) {
    double tol = atol + rtol * fabs(want[i]) + (mag ? rmag * mag[i] : 0);
    if (!(fabs((double)got[i] - want[i]) <= tol) && nbad++ == 0) first = i;
  }
  T_CHECKF(nbad == 0, "%s on %s: %zu of %zu off, first [%zu] got %.9g want %.9g", what, g_label[be],
           nbad, n, first, nbad ? (double)got[first] : 0.0, nbad ? want[first] : 0.0);
}

static void make_backends(void) {
  static const char *isas[2] = {"scalar", "avx2"};
  static const int threads[2] = {1, 3};
  for (int i = 0; i < 2; i++) {
    for (int t = 0; t < 2; t++) {
      setenv("BALLAST_CPU_ISA", isas[i], 1);
      bl_err err = {0};
      bk_backend *be = NULL;
      bl_status st = bk_cpu_create(threads[t], &be, &err);
      if (st == BL_EUNSUPPORTED && i == 1) {
        printf("skip: the avx2 path: %s\n", err.msg);
        break;
      }
      T_CHECKF(st == BL_OK, "bk_cpu_create(%s, %d): %s", isas[i], threads[t], err.msg);
      if (st != BL_OK) continue;
      T_CHECKF(strstr(be->name, isas[i]) != NULL, "name %s for %s", be->name, isas[i]);
      snprintf(g_label[g_nbe], sizeof g_label[0], "%s x%d", isas[i], threads[t]);
      g_be[g_nbe++] = be;
    }
  }
  setenv("BALLAST_CPU_ISA", "sse9", 1);
  bk_backend *be = NULL;
  T_CHECK(bk_cpu_create(1, &be, NULL) == BL_EINVAL && be == NULL);
  unsetenv("BALLAST_CPU_ISA");
  T_CHECK(bk_cpu_create(0, &be, NULL) == BL_OK && be != NULL); /* all cores, best ISA */
  bk_destroy(be);
}

/* ---- test weights ----------------------------------------------------- */

typedef struct tweight {
  bk_weight w;
  uint16_t *h;           /* F16: [rows][cols] */
  uint8_t *vals;         /* W4/W2: [rows][cols] quantized values, packed column order */
  uint8_t *packed;       /* [rows][row bytes] */
  uint16_t *sc16, *mn16; /* [rows][ng] */
  int32_t *perm;         /* [cols] or NULL */
} tweight;

static void tw_make(tweight *t, bk_wfmt f, int rows, int cols, int gs, bool perm) {
  memset(t, 0, sizeof *t);
  t->w =
      (bk_weight){.fmt = f, .rows = rows, .cols = cols, .group_size = f == BK_WF_F16 ? cols : gs};
  size_t nel = (size_t)rows * cols;
  if (f == BK_WF_F16) {
    t->h = malloc(nel * 2);
    for (size_t i = 0; i < nel; i++)
      t->h[i] = bl_float_to_half(rng_f(-1, 1));
    t->w.q = t->h;
  } else {
    int qmax = (1 << bk_wfmt_bits(f)) - 1, ng = cols / gs;
    size_t rb = bk_weight_row_bytes(f, cols);
    t->vals = malloc(nel);
    t->packed = malloc((size_t)rows * rb);
    for (size_t i = 0; i < nel; i++)
      t->vals[i] = (uint8_t)rng_int(qmax + 1);
    for (int r = 0; r < rows; r++)
      bk_pack_row(f, t->vals + (size_t)r * cols, cols, t->packed + r * rb);
    t->sc16 = malloc((size_t)rows * ng * 2);
    t->mn16 = malloc((size_t)rows * ng * 2);
    for (int i = 0; i < rows * ng; i++) {
      t->sc16[i] = bl_float_to_half(rng_f(0.002f, 0.05f));
      t->mn16[i] = bl_float_to_half(-rng_f(0.5f, 1.5f) * qmax / 2 * bl_half_to_float(t->sc16[i]));
    }
    t->w.q = t->packed;
    t->w.scales = t->sc16;
    t->w.mins = t->mn16;
  }
  if (perm) {
    t->perm = malloc((size_t)cols * sizeof *t->perm);
    for (int k = 0; k < cols; k++)
      t->perm[k] = k;
    shuffle(t->perm, cols);
    t->w.perm = t->perm;
  }
}

static void tw_free(tweight *t) {
  free(t->h);
  free(t->vals);
  free(t->packed);
  free(t->sc16);
  free(t->mn16);
  free(t->perm);
}

/* Element (r, k), packed order, from the test's own arrays; *mag is the
 * size of the terms a kernel adds for it: |w| (F16), |scale*q| + |min|. */
static double tw_elem(const tweight *t, int r, int k, double *mag) {
  const bk_weight *w = &t->w;
  if (w->fmt == BK_WF_F16) {
    double v = bl_half_to_float(t->h[(size_t)r * w->cols + k]);
    *mag = fabs(v);
    return v;
  }
  int ng = w->cols / w->group_size, g = k / w->group_size;
  double s = bl_half_to_float(t->sc16[r * ng + g]), m = bl_half_to_float(t->mn16[r * ng + g]);
  double q = t->vals[(size_t)r * w->cols + k];
  *mag = fabs(s) * q + fabs(m);
  return s * q + m;
}

/* ---- matmul ----------------------------------------------------------- */

static void test_matmul_case(bk_wfmt f, int rows, int cols, int gs, int n, bool perm) {
  char what[96];
  snprintf(what, sizeof what, "matmul %s rows=%d cols=%d gs=%d n=%d%s", bk_wfmt_name(f), rows, cols,
           gs, n, perm ? " perm" : "");
  tweight t;
  tw_make(&t, f, rows, cols, gs, perm);
  float *x = fvec((size_t)n * cols, -1, 1), *x0 = fdup(x, (size_t)n * cols);
  double *ref = malloc((size_t)n * rows * sizeof *ref),
         *mag = malloc((size_t)n * rows * sizeof *mag);
  float *row = malloc((size_t)cols * sizeof *row);
  for (int r = 0; r < rows; r++) {
    bk_weight_row_f32(&t.w, r, row); /* the reference dequantization */
    for (int i = 0; i < n; i++) {
      double a = 0, mg = 0, m;
      for (int k = 0; k < cols; k++) {
        double xv = x[(size_t)i * cols + (perm ? t.perm[k] : k)];
        a += (double)row[k] * xv;
        tw_elem(&t, r, k, &m);
        mg += m * fabs(xv);
      }
      ref[(size_t)i * rows + r] = a;
      mag[(size_t)i * rows + r] = mg;
    }
  }
  for (int b = 0; b < g_nbe; b++) {
    float *y = fnan((size_t)n * rows);
    T_CHECK(g_be[b]->matmul(g_be[b], y, x, &t.w, n) == BL_OK);
    /* float32 sums of at most ~100 terms each (vector lanes, blocks,
     * groups): error <= ~100 eps * sum|terms| ~ 6e-6 mag; one wrong or
     * missing term moves the result by ~mag/cols >= 4e-4 mag (cols <= 2560). */
    check_arr(what, b, y, ref, mag, (size_t)n * rows, 1e-6, 0, 1e-5);
    free(y);
  }
  T_CHECKF(memcmp(x, x0, (size_t)n * cols * sizeof *x) == 0, "%s: x was modified", what);
  free(x);
  free(x0);
  free(ref);
  free(mag);
  free(row);
  tw_free(&t);
}

static void test_matmul(void) {
  static const int ns[] = {1, 2, 3, 8, 9, 17};
  static const int f16_shapes[][2] = {{1, 8}, {7, 37}, {33, 64}, {67, 200}, {13, 1024}, {5, 1100}};
  static const int q_shapes[][3] = {{1, 32, 32},  {7, 64, 32},    {33, 128, 64}, {67, 384, 128},
                                    {19, 96, 96}, {11, 2240, 32}, {5, 2560, 32}, {9, 1024, 1024}};
  for (int p = 0; p < 2; p++)
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
      for (size_t s = 0; s < sizeof f16_shapes / sizeof f16_shapes[0]; s++)
        test_matmul_case(BK_WF_F16, f16_shapes[s][0], f16_shapes[s][1], 0, ns[i], p);
      for (int f = BK_WF_W4; f <= BK_WF_W2; f++)
        for (size_t s = 0; s < sizeof q_shapes / sizeof q_shapes[0]; s++)
          test_matmul_case((bk_wfmt)f, q_shapes[s][0], q_shapes[s][1], q_shapes[s][2], ns[i], p);
    }
  /* enough rows for several chunks per thread, and more than one token tile */
  test_matmul_case(BK_WF_F16, 1000, 512, 0, 17, false);
  test_matmul_case(BK_WF_W4, 1001, 512, 128, 17, true);
  test_matmul_case(BK_WF_W2, 999, 512, 64, 11, false);
}

/* Batch invariance: a token's matmul result is bitwise the same whatever
 * batch it is in, wherever it sits in that batch and however many threads
 * run it. The scheduler's guarantee that a greedy request's output does not
 * depend on its batch (or on preemption by recompute, which prefills what
 * was decoded) rests on this. Backends of one ISA must also agree with each
 * other bitwise across thread counts. */
static void test_matmul_batch_invariance_case(bk_wfmt f, int rows, int cols, int gs) {
  enum { N = 13 };
  tweight t;
  tw_make(&t, f, rows, cols, gs, false);
  float *x = fvec((size_t)N * cols, -1, 1);
  float *yb = malloc((size_t)N * rows * sizeof *yb), *y1 = malloc((size_t)rows * sizeof *y1);
  float *first = malloc((size_t)N * rows * sizeof *first);
  for (int b = 0; b < g_nbe; b++) {
    int bad = 0;
    for (int n = 1; n <= N; n++) {
      T_CHECK(g_be[b]->matmul(g_be[b], yb, x, &t.w, n) == BL_OK);
      for (int i = 0; i < n; i++) {
        T_CHECK(g_be[b]->matmul(g_be[b], y1, x + (size_t)i * cols, &t.w, 1) == BL_OK);
        bad += memcmp(y1, yb + (size_t)i * rows, (size_t)rows * sizeof *y1) != 0;
      }
    }
    T_CHECKF(bad == 0, "%s %s rows=%d cols=%d: %d tokens differ from the same token alone",
             g_label[b], bk_wfmt_name(f), rows, cols, bad);
    if (b > 0 && strncmp(g_label[b], g_label[b - 1], 4) == 0) /* same ISA, other thread count */
      T_CHECKF(memcmp(first, yb, (size_t)N * rows * sizeof *yb) == 0, "%s %s: differs from %s",
               g_label[b], bk_wfmt_name(f), g_label[b - 1]);
    memcpy(first, yb, (size_t)N * rows * sizeof *yb);
  }
  free(x);
  free(yb);
  free(y1);
  free(first);
  tw_free(&t);
}

static void test_matmul_batch_invariance(void) {
  test_matmul_batch_invariance_case(BK_WF_F16, 37, 1100, 0);
  test_matmul_batch_invariance_case(BK_WF_F16, 300, 2048, 0);
  test_matmul_batch_invariance_case(BK_WF_W4, 41, 2560, 32);
  test_matmul_batch_invariance_case(BK_WF_W2, 300, 1536, 64);
  test_matmul_batch_invariance_case(BK_WF_W2, 29, 1024, 1024);
}

/* ---- embed ------------------------------------------------------------ */

static void test_embed_case(bk_wfmt f, int rows, int cols, int gs, bool perm, int n) {
  char what[80];
  snprintf(what, sizeof what, "embed %s cols=%d gs=%d n=%d%s", bk_wfmt_name(f), cols, gs, n,
           perm ? " perm" : "");
  tweight t;
  tw_make(&t, f, rows, cols, gs, perm);
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  double *ref = malloc((size_t)n * cols * sizeof *ref), m;
  for (int i = 0; i < n; i++) {
    ids[i] = rng_int(rows);
    for (int k = 0; k < cols; k++)
      ref[(size_t)i * cols + (perm ? t.perm[k] : k)] = tw_elem(&t, ids[i], k, &m);
  }
  for (int b = 0; b < g_nbe; b++) {
    float *out = fnan((size_t)n * cols);
    T_CHECK(g_be[b]->embed(g_be[b], out, &t.w, ids, n) == BL_OK);
    /* one float32 multiply-add of fp16 values: half an ulp twice */
    check_arr(what, b, out, ref, NULL, (size_t)n * cols, 1e-7, 2e-7, 0);
    free(out);
  }
  ids[n - 1] = rows; /* out of range: reported, not read */
  float *out = fnan((size_t)n * cols);
  T_CHECK(g_be[0]->embed(g_be[0], out, &t.w, ids, n) == BL_EDEVICE);
  free(out);
  free(ids);
  free(ref);
  tw_free(&t);
}

static void test_embed(void) {
  test_embed_case(BK_WF_F16, 50, 37, 0, false, 1);
  test_embed_case(BK_WF_F16, 50, 64, 0, false, 9);
  test_embed_case(BK_WF_W4, 50, 96, 32, false, 5);
  test_embed_case(BK_WF_W4, 50, 128, 64, true, 9);
  test_embed_case(BK_WF_W2, 50, 64, 64, false, 3);
  test_embed_case(BK_WF_W2, 50, 96, 32, true, 17);
}

/* ---- rmsnorm, silu_mul, add ------------------------------------------- */

static void test_rmsnorm_case(int n, int dim, bool inplace) {
  char what[64];
  snprintf(what, sizeof what, "rmsnorm n=%d dim=%d%s", n, dim, inplace ? " in place" : "");
  const float eps = 1e-6f;
  float *x = fvec((size_t)n * dim, -2, 2), *w = fvec((size_t)dim, 0.5f, 1.5f);
  double *ref = malloc((size_t)n * dim * sizeof *ref);
  for (int i = 0; i < n; i++) {
    const float *xi = x + (size_t)i * dim;
    double ss = 0;
    for (int k = 0; k < dim; k++)
      ss += (double)xi[k] * xi[k];
    double r = 1.0 / sqrt(ss / dim + eps);
    for (int k = 0; k < dim; k++)
      ref[(size_t)i * dim + k] = xi[k] * r * w[k];
  }
  for (int b = 0; b < g_nbe; b++) {
    float *out = inplace ? fdup(x, (size_t)n * dim) : fnan((size_t)n * dim);
    T_CHECK(g_be[b]->rmsnorm(g_be[b], out, inplace ? out : x, w, n, dim, eps) == BL_OK);
    /* float32 sum of squares (relative error ~1e-6 here) and two products */
    check_arr(what, b, out, ref, NULL, (size_t)n * dim, 1e-6, 1e-5, 0);
    free(out);
  }
  free(x);
  free(w);
  free(ref);
}

static void test_elementwise_case(size_t n) {
  char what[64];
  float *g = fvec(n, -12, 12), *u = fvec(n, -2, 2);
  g[0] = -100.0f; /* exp(100) overflows a naive float sigmoid */
  if (n > 1) g[1] = 95.0f;
  double *ref = malloc(n * sizeof *ref), *sum = malloc(n * sizeof *sum);
  for (size_t i = 0; i < n; i++) {
    ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    sum[i] = (double)(g[i] + u[i]); /* float addition is exact to compare */
  }
  for (int b = 0; b < g_nbe; b++) {
    float *out = fnan(n);
    snprintf(what, sizeof what, "silu_mul n=%zu", n);
    T_CHECK(g_be[b]->silu_mul(g_be[b], out, g, u, n) == BL_OK);
    /* expf (scalar) or a Cephes polynomial (avx2): a few ulp */
    check_arr(what, b, out, ref, NULL, n, 1e-6, 1e-5, 0);
    float *alias = fdup(g, n);
    snprintf(what, sizeof what, "silu_mul n=%zu out=gate", n);
    T_CHECK(g_be[b]->silu_mul(g_be[b], alias, alias, u, n) == BL_OK);
    check_arr(what, b, alias, ref, NULL, n, 1e-6, 1e-5, 0);
    memcpy(out, g, n * sizeof *out);
    snprintf(what, sizeof what, "add n=%zu", n);
    T_CHECK(g_be[b]->add(g_be[b], out, u, n) == BL_OK);
    check_arr(what, b, out, sum, NULL, n, 0, 0, 0);
    free(out);
    free(alias);
  }
  free(g);
  free(u);
  free(ref);
  free(sum);
}

static void test_rmsnorm_elementwise(void) {
  static const int ns[] = {1, 3, 9};
  static const int dims[] = {1, 7, 64, 4099};
  for (int i = 0; i < 3; i++)
    for (int d = 0; d < 4; d++) {
      test_rmsnorm_case(ns[i], dims[d], false);
      test_rmsnorm_case(ns[i], dims[d], true);
    }
  static const size_t sizes[] = {1, 7, 8, 1001, 70001};
  for (int i = 0; i < 5; i++)
    test_elementwise_case(sizes[i]);
}

/* ---- qk_norm_rope ----------------------------------------------------- */

/* RoPE on one head in double, with the angle rounded to float32 the way HF
 * (and the kernel) compute it: inv_freq and pos * inv_freq in float32. */
static void rope_ref(double *v, int hd, int pos, float theta, bk_rope_style style) {
  for (int i = 0; i < hd / 2; i++) {
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
    float ang = (float)pos * inv;
    double c = cos((double)ang), s = sin((double)ang);
    int a = style == BK_ROPE_NEOX ? i : 2 * i, b = style == BK_ROPE_NEOX ? i + hd / 2 : 2 * i + 1;
    double va = v[a], vb = v[b];
    v[a] = va * c - vb * s;
    v[b] = vb * c + va * s;
  }
}

/* Reference for all heads of n tokens of one of q or k. */
static void norm_rope_ref(const float *x, double *ref, int n, int nh, const float *nw,
                          const int32_t *pos, const bk_heads *h) {
  int hd = h->head_dim;
  for (int t = 0; t < n; t++)
    for (int hh = 0; hh < nh; hh++) {
      const float *xi = x + ((size_t)t * nh + hh) * hd;
      double *v = ref + ((size_t)t * nh + hh) * hd, ss = 0;
      for (int k = 0; k < hd; k++)
        ss += (double)xi[k] * xi[k];
      double r = nw ? 1.0 / sqrt(ss / hd + h->norm_eps) : 1.0;
      for (int k = 0; k < hd; k++)
        v[k] = xi[k] * r * (nw ? nw[k] : 1.0);
      rope_ref(v, hd, pos[t], h->rope_theta, h->rope_style);
    }
}

static void test_rope_case(int n, int hd, bk_rope_style style, bool norms, float theta) {
  char what[80];
  snprintf(what, sizeof what, "qk_norm_rope n=%d hd=%d %s%s", n, hd,
           style == BK_ROPE_NEOX ? "neox" : "norm", norms ? " qk-norm" : "");
  bk_heads h = {.n_heads = 6,
                .n_kv_heads = 2,
                .head_dim = hd,
                .rope_theta = theta,
                .rope_style = style,
                .norm_eps = 1e-6f};
  size_t nq = (size_t)n * h.n_heads * hd, nk = (size_t)n * h.n_kv_heads * hd;
  float *q = fvec(nq, -2, 2), *k = fvec(nk, -2, 2);
  float *qn = norms ? fvec((size_t)hd, 0.5f, 1.5f) : NULL,
        *kn = norms ? fvec((size_t)hd, 0.5f, 1.5f) : NULL;
  int32_t *pos = malloc((size_t)n * sizeof *pos);
  for (int t = 0; t < n; t++)
    pos[t] = t == 0 ? 0 : rng_int(5000);
  double *rq = malloc(nq * sizeof *rq), *rk = malloc(nk * sizeof *rk);
  norm_rope_ref(q, rq, n, h.n_heads, qn, pos, &h);
  norm_rope_ref(k, rk, n, h.n_kv_heads, kn, pos, &h);
  for (int b = 0; b < g_nbe; b++) {
    float *qc = fdup(q, nq), *kc = fdup(k, nk);
    T_CHECK(g_be[b]->qk_norm_rope(g_be[b], qc, kc, qn, kn, pos, n, &h) == BL_OK);
    /* values are O(1): float32 cos/sin and products, ~10 ulp of the inputs */
    check_arr(what, b, qc, rq, NULL, nq, 1e-5, 1e-5, 0);
    check_arr(what, b, kc, rk, NULL, nk, 1e-5, 1e-5, 0);
    free(qc);
    free(kc);
  }
  free(q);
  free(k);
  free(qn);
  free(kn);
  free(pos);
  free(rq);
  free(rk);
}

static void test_rope(void) {
  static const int ns[] = {1, 3, 9};
  static const int hds[] = {64, 128, 68};
  for (int i = 0; i < 3; i++)
    for (int d = 0; d < 3; d++)
      for (int s = 0; s < 2; s++)
        for (int nm = 0; nm < 2; nm++)
          test_rope_case(ns[i], hds[d], (bk_rope_style)s, nm, d == 1 ? 1e6f : 1e4f);
}

/* ---- kv_write + attention --------------------------------------------- */

#define N_SEQ   3
#define MAX_CTX 160

typedef struct tstep {
  int32_t n;                  /* tokens */
  int32_t *seq, *pos, *slots; /* [n] */
  float *k, *v;               /* [n][n_kv_heads*hd] */
} tstep;

typedef struct tattn {
  bk_kv_cache kv;              /* geometry; k/v pointers set per backend */
  int32_t bt[N_SEQ * MAX_CTX]; /* [N_SEQ][max_blocks] */
  int32_t max_blocks;
  tstep hist, step;  /* history tokens, then this step's */
  uint16_t *sk, *sv; /* expected layer-1 cache contents */
} tattn;

static int32_t slot_of(const tattn *a, int seq, int pos) {
  int bs = a->kv.block_size;
  return a->bt[seq * a->max_blocks + pos / bs] * bs + pos % bs;
}

static void step_add(tattn *a, tstep *s, int seq, int pos) {
  int row = a->kv.n_kv_heads * a->kv.head_dim, i = s->n++;
  s->seq[i] = seq;
  s->pos[i] = pos;
  s->slots[i] = slot_of(a, seq, pos);
  for (int e = 0; e < row; e++) {
    s->k[(size_t)i * row + e] = rng_f(-1, 1);
    s->v[(size_t)i * row + e] = rng_f(-1, 1);
  }
  /* the shadow cache: what kv_write must leave behind */
  size_t blk = (size_t)(s->slots[i] / a->kv.block_size),
         off = (size_t)(s->slots[i] % a->kv.block_size);
  for (int kh = 0; kh < a->kv.n_kv_heads; kh++)
    for (int d = 0; d < a->kv.head_dim; d++) {
      size_t at = ((blk * a->kv.n_kv_heads + kh) * a->kv.block_size + off) * a->kv.head_dim + d;
      a->sk[at] = bl_float_to_half(s->k[(size_t)i * row + kh * a->kv.head_dim + d]);
      a->sv[at] = bl_float_to_half(s->v[(size_t)i * row + kh * a->kv.head_dim + d]);
    }
}

static void step_alloc(tstep *s, int cap, int row) {
  s->n = 0;
  s->seq = malloc((size_t)cap * sizeof(int32_t));
  s->pos = malloc((size_t)cap * sizeof(int32_t));
  s->slots = malloc((size_t)cap * sizeof(int32_t));
  s->k = malloc((size_t)cap * row * sizeof(float));
  s->v = malloc((size_t)cap * row * sizeof(float));
}

static void step_free(tstep *s) {
  free(s->seq);
  free(s->pos);
  free(s->slots);
  free(s->k);
  free(s->v);
}

static size_t kv_elems(const bk_kv_cache *kv) {
  return (size_t)kv->n_blocks * kv->n_kv_heads * kv->block_size * kv->head_dim;
}

/* Sequences 0, 1, 2 hold 0, 140 and 20 positions; the step decodes one token
 * of 0 and 1 and prefills 9 of 2, interleaved. */
static void attn_build(tattn *a, int bs, int hd, int nkv) {
  memset(a, 0, sizeof *a);
  a->max_blocks = (MAX_CTX + bs - 1) / bs;
  a->kv = (bk_kv_cache){.fmt = BK_KV_F16,
                        .n_layers = 2,
                        .n_blocks = N_SEQ * a->max_blocks + 3,
                        .block_size = bs,
                        .n_kv_heads = nkv,
                        .head_dim = hd};
  int32_t ids[N_SEQ * MAX_CTX + 3];
  for (int i = 0; i < a->kv.n_blocks; i++)
    ids[i] = i;
  shuffle(ids, a->kv.n_blocks);
  memcpy(a->bt, ids, (size_t)N_SEQ * a->max_blocks * sizeof(int32_t));
  size_t ne = kv_elems(&a->kv);
  a->sk = malloc(ne * 2);
  a->sv = malloc(ne * 2);
  for (size_t i = 0; i < ne; i++)
    a->sk[i] = a->sv[i] = 0x7E00; /* NaN: never written */
  step_alloc(&a->hist, 160, nkv * hd);
  step_alloc(&a->step, 16, nkv * hd);
  for (int p = 0; p < 140; p++)
    step_add(a, &a->hist, 1, p);
  for (int p = 0; p < 20; p++)
    step_add(a, &a->hist, 2, p);
  for (int p = 20; p < 25; p++)
    step_add(a, &a->step, 2, p);
  step_add(a, &a->step, 0, 0);
  for (int p = 25; p < 29; p++)
    step_add(a, &a->step, 2, p);
  step_add(a, &a->step, 1, 140);
}

static void attn_ref(const tattn *a, const float *q, const bk_heads *h, double *ref) {
  int hd = h->head_dim, nh = h->n_heads, bs = a->kv.block_size;
  double *s = malloc(MAX_CTX * sizeof *s);
  for (int t = 0; t < a->step.n; t++)
    for (int hh = 0; hh < nh; hh++) {
      int kvh = hh / (nh / h->n_kv_heads), npos = a->step.pos[t] + 1;
      const float *qv = q + ((size_t)t * nh + hh) * hd;
      double mx = -INFINITY, l = 0, *o = ref + ((size_t)t * nh + hh) * hd;
      for (int p = 0; p < npos; p++) {
        int32_t slot = slot_of(a, a->step.seq[t], p);
        size_t base = (((size_t)(slot / bs) * h->n_kv_heads + kvh) * bs + slot % bs) * hd;
        s[p] = 0;
        for (int d = 0; d < hd; d++)
          s[p] += qv[d] * (double)bl_half_to_float(a->sk[base + d]);
        s[p] /= sqrt((double)hd);
        mx = fmax(mx, s[p]);
      }
      for (int d = 0; d < hd; d++)
        o[d] = 0;
      for (int p = 0; p < npos; p++) {
        int32_t slot = slot_of(a, a->step.seq[t], p);
        size_t base = (((size_t)(slot / bs) * h->n_kv_heads + kvh) * bs + slot % bs) * hd;
        double e = exp(s[p] - mx);
        l += e;
        for (int d = 0; d < hd; d++)
          o[d] += e * bl_half_to_float(a->sv[base + d]);
      }
      for (int d = 0; d < hd; d++)
        o[d] /= l;
    }
  free(s);
}

/* kv_write of the history and the step, checked against the shadow cache
 * byte for byte (layer 0 must stay untouched), then attention. */
static void attn_run(tattn *a, int b, const float *q, const bk_heads *h, const double *ref,
                     const char *what) {
  bk_backend *be = g_be[b];
  size_t bytes = kv_elems(&a->kv) * 2;
  void *k[2], *v[2];
  for (int l = 0; l < 2; l++) {
    k[l] = be->alloc(be, bytes);
    v[l] = be->alloc(be, bytes);
    for (size_t i = 0; i < bytes / 2; i++)
      ((uint16_t *)k[l])[i] = ((uint16_t *)v[l])[i] = 0x7E00;
  }
  bk_kv_cache kv = a->kv;
  kv.k = k;
  kv.v = v;
  T_CHECK(be->kv_write(be, &kv, 1, a->hist.k, a->hist.v, a->hist.slots, a->hist.n) == BL_OK);
  T_CHECK(be->kv_write(be, &kv, 1, a->step.k, a->step.v, a->step.slots, a->step.n) == BL_OK);
  int32_t skip = -1; /* a padding token writes nothing */
  T_CHECK(be->kv_write(be, &kv, 1, a->step.k, a->step.v, &skip, 1) == BL_OK);
  int32_t past = a->kv.n_blocks * a->kv.block_size; /* reported, not written */
  T_CHECK(be->kv_write(be, &kv, 1, a->step.k, a->step.v, &past, 1) == BL_EDEVICE);
  T_CHECKF(memcmp(k[1], a->sk, bytes) == 0 && memcmp(v[1], a->sv, bytes) == 0,
           "%s on %s: kv_write cache contents", what, g_label[b]);
  bool l0 = true;
  for (size_t i = 0; i < bytes / 2; i++)
    l0 = l0 && ((uint16_t *)k[0])[i] == 0x7E00 && ((uint16_t *)v[0])[i] == 0x7E00;
  T_CHECKF(l0, "%s on %s: kv_write touched layer 0", what, g_label[b]);
  bk_attn_batch ab = {.n_tok = a->step.n,
                      .tok_seq = a->step.seq,
                      .tok_pos = a->step.pos,
                      .block_tables = a->bt,
                      .n_seq = N_SEQ,
                      .max_blocks = a->max_blocks};
  size_t no = (size_t)a->step.n * h->n_heads * h->head_dim;
  float *out = fnan(no);
  T_CHECK(be->attention(be, out, q, &kv, 1, &ab, h) == BL_OK);
  /* softmax-weighted means of fp16 values in [-1, 1]; float32 scores and
   * exps put the error near 1e-6 */
  check_arr(what, b, out, ref, NULL, no, 1e-5, 1e-4, 0);
  int32_t bad_bt[N_SEQ * MAX_CTX];
  memcpy(bad_bt, a->bt, sizeof bad_bt);
  bad_bt[1 * a->max_blocks] = a->kv.n_blocks; /* a block id past the cache */
  ab.block_tables = bad_bt;
  T_CHECK(be->attention(be, out, q, &kv, 1, &ab, h) == BL_EDEVICE);
  free(out);
  for (int l = 0; l < 2; l++) {
    be->free(be, k[l]);
    be->free(be, v[l]);
  }
}

static void test_attention_case(int bs, int hd, int nh, int nkv) {
  char what[80];
  snprintf(what, sizeof what, "attention bs=%d hd=%d heads=%d/%d", bs, hd, nh, nkv);
  tattn a;
  attn_build(&a, bs, hd, nkv);
  bk_heads h = {.n_heads = nh, .n_kv_heads = nkv, .head_dim = hd, .rope_theta = 1e4f};
  size_t no = (size_t)a.step.n * nh * hd;
  float *q = fvec(no, -3, 3); /* scores of order 1: a softmax that is neither flat nor one-hot */
  double *ref = malloc(no * sizeof *ref);
  attn_ref(&a, q, &h, ref);
  for (int b = 0; b < g_nbe; b++)
    attn_run(&a, b, q, &h, ref, what);
  free(q);
  free(ref);
  free(a.sk);
  free(a.sv);
  step_free(&a.hist);
  step_free(&a.step);
}

static void test_attention(void) {
  test_attention_case(16, 64, 6, 2);
  test_attention_case(5, 64, 6, 2);
  test_attention_case(16, 68, 4, 4);
  test_attention_case(5, 128, 8, 1);
  test_attention_case(1, 36, 2, 2);
  test_attention_case(128, 64, 4, 2); /* runs of 64 positions inside a block */
}

int main(void) {
  make_backends();
  test_matmul();
  test_matmul_batch_invariance();
  test_embed();
  test_rmsnorm_elementwise();
  test_rope();
  test_attention();
  for (int b = 0; b < g_nbe; b++)
    bk_destroy(g_be[b]);
  return T_DONE();
}
