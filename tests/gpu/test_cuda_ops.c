/* Cross-backend op test (suite gpu): every op of the CUDA backend against the
 * CPU backend on the same random inputs (fixed seed, no zeros), odd shapes,
 * all three weight formats with and without perm, outputs poisoned with NaN
 * first so an element a kernel forgets to write fails; kv_write and attention
 * for every KV format (fp16, fp8 per head and per tensor, nvfp4), the caches
 * compared byte for byte; out-of-range device data (a KV slot, a block id, a
 * sequence, a position, a token id) must come back as BL_EDEVICE naming the
 * op and the value, each on a fresh backend since the fault is sticky.
 * After the checks, a few timings in GB/s (llm.c dev/cuda style);
 * BALLAST_NO_BENCH=1 skips them.
 *
 * Where no GPU is present (CI) bk_cuda_create says BL_EUNSUPPORTED: the test
 * prints one line "gpu suite skipped: <reason>" and exits 77, meson's skip.
 *
 * Tolerances are |got - want| <= atol + rtol*|want|; each comes with its
 * reason next to the check. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "bl_half.h"
#include "gpu_harness.h"
#include "t.h"

/* ---- comparison --------------------------------------------------------- */

/* One check per call: every element within atol_i + rtol*|want_i|, where
 * atol_i = atol_v ? atol_v[i] : atol. NaN fails. Prints the worst element
 * (and on success how much of the tolerance it used). */
static void expect_near_v(const char *what, const float *got, const float *want, size_t n,
                          const double *atol_v, double atol, double rtol) {
  size_t bad = 0, worst = 0;
  double worst_x = -1.0;
  for (size_t i = 0; i < n; i++) {
    double tol = (atol_v ? atol_v[i] : atol) + rtol * fabs((double)want[i]);
    double d = fabs((double)got[i] - (double)want[i]);
    double x = d / (tol > 0 ? tol : 1e-30);
    if (!(d <= tol)) {
      bad++;
      if (isnan(d)) x = INFINITY;
    }
    if (!(x <= worst_x)) {
      worst_x = x;
      worst = i;
    }
  }
  T_CHECKF(bad == 0, "%s: %zu of %zu off; worst [%zu] got %.9g want %.9g (%.3g x tol)", what, bad,
           n, worst, (double)got[worst], (double)want[worst], worst_x);
  /* How close to its tolerance each passing check came, to keep them honest. */
  if (!bad) printf("ok  %-48s worst %.2g x tol\n", what, worst_x);
}

static void expect_near(const char *what, const float *got, const float *want, size_t n,
                        double atol, double rtol) {
  expect_near_v(what, got, want, n, NULL, atol, rtol);
}

/* ---- ops, one runner per op: host inputs in, host output out ------------- */

typedef struct pair {
  bk_backend *cpu, *gpu;
} pair;

static float *run_embed(bk_backend *be, const bk_weight *hw, const int32_t *ids, int n) {
  bk_weight w = weight_on(be, hw);
  int32_t *d_ids = dev_put(be, ids, (size_t)n * 4);
  size_t ob = (size_t)n * hw->cols * 4;
  float *out = dev_poison(be, ob);
  must(be->embed(be, out, &w, d_ids, n), "embed");
  float *h = dev_take(be, out, ob);
  be->free(be, d_ids);
  weight_off(be, &w);
  return h;
}

static void test_embed(pair *p, rng *r) {
  static const struct {
    bk_wfmt fmt;
    int rows, cols, gs;
  } cases[] = {{BK_WF_F16, 37, 77, 0},
               {BK_WF_W4, 37, 96, 32},
               {BK_WF_W4, 5, 128, 64},
               {BK_WF_W2, 37, 96, 32},
               {BK_WF_W2, 9, 256, 128}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int perm = 0; perm < 2; perm++) {
      hweight h = make_weight(r, cases[c].fmt, cases[c].rows, cases[c].cols, cases[c].gs, perm);
      int32_t ids[6] = {
          0, cases[c].rows - 1, rng_int(r, cases[c].rows), rng_int(r, cases[c].rows), 1, 0};
      float *want = run_embed(p->cpu, &h.w, ids, 6), *got = run_embed(p->gpu, &h.w, ids, 6);
      char what[64];
      snprintf(what, sizeof what, "embed %s %dx%d%s", bk_wfmt_name(cases[c].fmt), cases[c].rows,
               cases[c].cols, perm ? " perm" : "");
      /* Both sides compute s*q + m in fp32 (the GPU may fuse it into one
       * FMA): at most 2 roundings of values below 2, so 1e-6 absolute. A
       * permuted table is written back through perm (backend.h): packed
       * column k lands in column perm[k]. */
      expect_near(what, got, want, (size_t)6 * cases[c].cols, 1e-6, 1e-6);
      free(want);
      free(got);
      free_weight(&h);
    }
}

static float *run_rmsnorm(bk_backend *be, const float *x, const float *w, int n, int dim,
                          bool inplace) {
  size_t xb = (size_t)n * dim * 4;
  float *dx = dev_put(be, x, xb), *dw = dev_put(be, w, (size_t)dim * 4);
  float *out = inplace ? dx : dev_poison(be, xb);
  must(be->rmsnorm(be, out, dx, dw, n, dim, 1e-6f), "rmsnorm");
  float *h = dev_take(be, out, xb);
  if (!inplace) be->free(be, dx);
  be->free(be, dw);
  return h;
}

static void test_rmsnorm(pair *p, rng *r) {
  static const int cases[][3] = {{3, 1, 0}, {2, 7, 0}, {4, 576, 0}, {1, 4097, 0}, {5, 333, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    int n = cases[c][0], dim = cases[c][1];
    bool inplace = cases[c][2];
    float *x = rand_f(r, (size_t)n * dim, -2, 2), *w = rand_f(r, (size_t)dim, 0.5f, 1.5f);
    float *want = run_rmsnorm(p->cpu, x, w, n, dim, inplace);
    float *got = run_rmsnorm(p->gpu, x, w, n, dim, inplace);
    char what[64];
    snprintf(what, sizeof what, "rmsnorm %dx%d%s", n, dim, inplace ? " in place" : "");
    /* The sum of squares is added in a different order: relative error about
     * sqrt(dim/3) * 2^-24 (2e-6 at dim 4097), halved by the square root. */
    expect_near(what, got, want, (size_t)n * dim, 1e-6, 1e-5);
    free(x);
    free(w);
    free(want);
    free(got);
  }
}

static void run_rope(bk_backend *be, float *q, float *k, const float *qn, const float *kn,
                     const int32_t *pos, int n, const bk_heads *hd) {
  size_t qb = (size_t)n * hd->n_heads * hd->head_dim * 4;
  size_t kb = (size_t)n * hd->n_kv_heads * hd->head_dim * 4;
  size_t nb = (size_t)hd->head_dim * 4;
  float *dq = dev_put(be, q, qb), *dk = dev_put(be, k, kb);
  float *dqn = qn ? dev_put(be, qn, nb) : NULL, *dkn = kn ? dev_put(be, kn, nb) : NULL;
  int32_t *dpos = dev_put(be, pos, (size_t)n * 4);
  must(be->qk_norm_rope(be, dq, dk, dqn, dkn, dpos, n, hd), "qk_norm_rope");
  must(be->download(be, q, dq, qb), "download");
  must(be->download(be, k, dk, kb), "download");
  be->free(be, dq);
  be->free(be, dk);
  if (dqn) be->free(be, dqn);
  if (dkn) be->free(be, dkn);
  be->free(be, dpos);
}

static void test_rope(pair *p, rng *r) {
  static const struct {
    int nh, nkv, hd;
    bk_rope_style style;
    float theta;
    bool qn, kn;
  } cases[] = {{4, 2, 64, BK_ROPE_NEOX, 1e6f, true, true},
               {3, 3, 6, BK_ROPE_NORM, 1e4f, false, false},
               {2, 1, 256, BK_ROPE_NEOX, 1e6f, true, true},
               {5, 1, 10, BK_ROPE_NEOX, 5e5f, true, false},
               {4, 4, 128, BK_ROPE_NORM, 1e4f, false, true}};
  enum { N = 5 };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    bk_heads hd = {.n_heads = cases[c].nh,
                   .n_kv_heads = cases[c].nkv,
                   .head_dim = cases[c].hd,
                   .rope_theta = cases[c].theta,
                   .rope_style = cases[c].style,
                   .norm_eps = 1e-6f};
    int32_t pos[N] = {0, 1, 17, rng_int(r, 3000), 2999};
    size_t qn = (size_t)N * hd.n_heads * hd.head_dim, kn = (size_t)N * hd.n_kv_heads * hd.head_dim;
    float *q = rand_f(r, qn, -2, 2), *k = rand_f(r, kn, -2, 2);
    float *qw = cases[c].qn ? rand_f(r, (size_t)hd.head_dim, 0.5f, 1.5f) : NULL;
    float *kw = cases[c].kn ? rand_f(r, (size_t)hd.head_dim, 0.5f, 1.5f) : NULL;
    float *q2 = malloc(qn * 4), *k2 = malloc(kn * 4);
    memcpy(q2, q, qn * 4);
    memcpy(k2, k, kn * 4);
    run_rope(p->cpu, q, k, qw, kw, pos, N, &hd);
    run_rope(p->gpu, q2, k2, qw, kw, pos, N, &hd);
    /* The angle pos*inv_freq is an fp32 product (1/2 ulp, 6e-8*pos rad) of an
     * inv_freq whose powf may differ by 2 ulps between libm and CUDA: about
     * 3.6e-7*pos rad apart, times |x| < 4 after the norm: 2e-6*pos. */
    double *aq = malloc(qn * sizeof(double)), *ak = malloc(kn * sizeof(double));
    for (size_t i = 0; i < qn; i++)
      aq[i] = 1e-5 + 2e-6 * pos[i / (qn / N)];
    for (size_t i = 0; i < kn; i++)
      ak[i] = 1e-5 + 2e-6 * pos[i / (kn / N)];
    for (int which = 0; which < 2; which++) {
      char what[80];
      snprintf(what, sizeof what, "qk_norm_rope %s %d/%d hd %d %s", which ? "k" : "q", hd.n_heads,
               hd.n_kv_heads, hd.head_dim, hd.rope_style == BK_ROPE_NEOX ? "neox" : "norm");
      if (which)
        expect_near_v(what, k2, k, kn, ak, 0, 1e-5);
      else
        expect_near_v(what, q2, q, qn, aq, 0, 1e-5);
    }
    free(q), free(k), free(q2), free(k2), free(qw), free(kw), free(aq), free(ak);
  }
}

static float *run_matmul(bk_backend *be, const bk_weight *hw, const float *x, int n) {
  bk_weight w = weight_on(be, hw);
  size_t xb = (size_t)n * hw->cols * 4, yb = (size_t)n * hw->rows * 4;
  float *dx = dev_put(be, x, xb), *y = dev_poison(be, yb);
  must(be->matmul(be, y, dx, &w, n), "matmul");
  float *h = dev_take(be, y, yb);
  be->free(be, dx);
  weight_off(be, &w);
  return h;
}

static void check_matmul(pair *p, rng *r, const hweight *h, int n) {
  const bk_weight *w = &h->w;
  float *x = rand_f(r, (size_t)n * w->cols, -1, 1);
  float *want = run_matmul(p->cpu, w, x, n), *got = run_matmul(p->gpu, w, x, n);
  /* Either side may round x and w to fp16 (the cuBLAS path does for large n):
   * each product is then off by at most 2*2^-11 relative, so the sum by at
   * most 1e-3 * sum_k |w_k x_k|, plus fp32 rounding of the sums.
   * The W4/W2 GEMV (n = 1, kernels/cuda/cu_matmul.cu) rounds x to fp16
   * (w = scale*q + min stays exact) and sums q*x*2^-e in fp16 over 16-value
   * spans, 8 HFMA2 per half2 lane, then in fp32. Each HFMA2 rounds to u =
   * 2^-11 of its partial sum S_k (2^-25 absolute below fp16's normal range,
   * < 2^-15 * the block's max |x| after the prescale), so a span is off by
   * at most u * (|S_1| + ... + |S_8|) <= 8u * sum |q x|: 3.9e-3 * sum
   * |scale q x|, ~4x the bound above, if every partial sum were as large as
   * the span's sum of |q x|. With products of both signs they grow as a
   * random walk and the roundings cancel: the emulator (fp16 bit for bit as
   * the GPU; fixed data) measures 0.49x the 1e-3 bound at worst, 0.25x with
   * fp32 sums, so it is not widened. Mis-scaling one of W2's four field
   * positions fails it by 20-190x. */
  double *atol = malloc((size_t)n * w->rows * sizeof(double));
  for (int t = 0; t < n; t++)
    for (int i = 0; i < w->rows; i++) {
      double a = 0;
      for (int k = 0; k < w->cols; k++)
        a += fabs((double)h->ref[(size_t)i * w->cols + k] *
                  x[(size_t)t * w->cols + (w->perm ? w->perm[k] : k)]);
      atol[(size_t)t * w->rows + i] = 1e-3 * a + 1e-6;
    }
  char what[96];
  snprintf(what, sizeof what, "matmul %s %dx%d g%d%s n=%d", bk_wfmt_name(w->fmt), w->rows, w->cols,
           w->group_size, w->perm ? " perm" : "", n);
  expect_near_v(what, got, want, (size_t)n * w->rows, atol, 0, 1e-5);
  free(atol);
  free(x);
  free(want);
  free(got);
}

static void test_matmul(pair *p, rng *r) {
  static const struct {
    bk_wfmt fmt;
    int rows, cols, gs;
  } cases[] = {{BK_WF_F16, 33, 77, 0},
               {BK_WF_F16, 64, 256, 0},
               {BK_WF_W4, 45, 96, 32},
               {BK_WF_W4, 67, 256, 128},
               {BK_WF_W4, 8, 2048, 64},
               {BK_WF_W2, 45, 96, 32},
               {BK_WF_W2, 67, 256, 128},
               {BK_WF_W2, 9, 1056, 32},
               /* enough rows for the 4-rows-per-warp GEMV on a 132-SM GPU */
               {BK_WF_F16, 2115, 136, 0},
               {BK_WF_W4, 2115, 256, 64},
               {BK_WF_W2, 2117, 160, 32}};
  /* fp16: 1..8 one GEMV tile, 9 up on cuBLAS; W4/W2: 1 the GEMV, 3..33 the tensor
   * cores (test_cuda_mma.c covers that path; kernels/cuda/cu_matmul.cuh). */
  static const int ns[] = {1, 3, 8, 9, 17, 33};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int perm = 0; perm < 2; perm++) {
      hweight h = make_weight(r, cases[c].fmt, cases[c].rows, cases[c].cols, cases[c].gs, perm);
      for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        check_matmul(p, r, &h, ns[i]);
      free_weight(&h);
    }
}

static float *run_silu_mul(bk_backend *be, const float *g, const float *u, size_t n, bool alias) {
  float *dg = dev_put(be, g, n * 4), *du = dev_put(be, u, n * 4);
  float *out = alias ? dg : dev_poison(be, n * 4);
  must(be->silu_mul(be, out, dg, du, n), "silu_mul");
  float *h = dev_take(be, out, n * 4);
  if (!alias) be->free(be, dg);
  be->free(be, du);
  return h;
}

static float *run_add(bk_backend *be, const float *x, const float *y, size_t n) {
  float *dx = dev_put(be, x, n * 4), *dy = dev_put(be, y, n * 4);
  must(be->add(be, dx, dy, n), "add");
  be->free(be, dy);
  return dev_take(be, dx, n * 4);
}

static void test_eltwise(pair *p, rng *r) {
  static const size_t ns[] = {1, 7, 1000, 4099};
  for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
    size_t n = ns[c];
    float *g = rand_f(r, n, -8, 8), *u = rand_f(r, n, -2, 2);
    char what[64];
    for (int alias = 0; alias < 2; alias++) {
      float *want = run_silu_mul(p->cpu, g, u, n, alias),
            *got = run_silu_mul(p->gpu, g, u, n, alias);
      snprintf(what, sizeof what, "silu_mul n=%zu%s", n, alias ? " in place" : "");
      /* expf differs by a few ulps between libm and CUDA; then a divide and a
       * multiply: a few 1e-7 relative. */
      expect_near(what, got, want, n, 1e-7, 1e-5);
      free(want);
      free(got);
    }
    float *want = run_add(p->cpu, g, u, n), *got = run_add(p->gpu, g, u, n);
    snprintf(what, sizeof what, "add n=%zu", n);
    /* IEEE addition is correctly rounded: both sides agree bit for bit. */
    expect_near(what, got, want, n, 0, 0);
    free(want), free(got), free(g), free(u);
  }
}

/* ---- KV cache and attention ---------------------------------------------- */

enum { KV_SEQS = 3, KV_LAYERS = 2 };

typedef struct kv_case {
  int nh, nkv, hd, bs, len[KV_SEQS];
} kv_case;

/* A KV format under test. */
typedef struct kv_kind {
  bk_kvfmt fmt;
  bk_kvscale scaling;
  const char *name;
} kv_kind;

static const kv_kind kv_kinds[] = {{BK_KV_F16, BK_KVS_HEAD, "fp16"},
                                   {BK_KV_FP8, BK_KVS_HEAD, "fp8"},
                                   {BK_KV_FP8, BK_KVS_TENSOR, "fp8-tensor"},
                                   {BK_KV_NVFP4, BK_KVS_HEAD, "nvfp4"}};

/* The host description shared by both backends. */
typedef struct kv_setup {
  int n_blocks, max_blocks, n_write, n_first;
  int32_t *tables;                    /* [KV_SEQS][max_blocks] */
  int32_t *slots;                     /* [n_write]: every position of every sequence */
  float *k[KV_LAYERS], *v[KV_LAYERS]; /* [n_write][nkv*hd] */
} kv_setup;

static kv_setup kv_make(rng *r, const kv_case *c) {
  kv_setup s = {0};
  int need = 0;
  for (int i = 0; i < KV_SEQS; i++) {
    int nb = (c->len[i] + c->bs - 1) / c->bs;
    need += nb;
    if (nb > s.max_blocks) s.max_blocks = nb;
    s.n_write += c->len[i];
  }
  s.n_blocks = need + 3; /* spare blocks stay zero */
  int32_t *ids = malloc((size_t)s.n_blocks * 4);
  for (int i = 0; i < s.n_blocks; i++)
    ids[i] = i;
  shuffle(r, ids, s.n_blocks); /* non-contiguous block tables */
  s.tables = malloc((size_t)KV_SEQS * s.max_blocks * 4);
  s.slots = malloc((size_t)s.n_write * 4);
  int next = 0, w = 0;
  for (int i = 0; i < KV_SEQS; i++) {
    for (int b = 0; b < s.max_blocks; b++)
      s.tables[i * s.max_blocks + b] = b * c->bs < c->len[i] ? ids[next++] : -1;
    for (int p = 0; p < c->len[i]; p++)
      s.slots[w++] = s.tables[i * s.max_blocks + p / c->bs] * c->bs + p % c->bs;
  }
  free(ids);
  size_t row = (size_t)c->nkv * c->hd;
  /* kv_write runs in two calls: the first calibrates tensor scales. The
   * last token is 8x larger than the rest, past the calibration headroom,
   * so saturation must match as well. */
  s.n_first = s.n_write > 1 ? s.n_write / 2 : 1;
  for (int l = 0; l < KV_LAYERS; l++) {
    s.k[l] = rand_f(r, (size_t)s.n_write * row, -1, 1);
    s.v[l] = rand_f(r, (size_t)s.n_write * row, -1, 1);
    if (s.n_write > 1)
      for (size_t i = 0; i < row; i++) {
        s.k[l][(size_t)(s.n_write - 1) * row + i] *= 8;
        s.v[l][(size_t)(s.n_write - 1) * row + i] *= 8;
      }
  }
  return s;
}

static void kv_free(kv_setup *s) {
  free(s->tables);
  free(s->slots);
  for (int l = 0; l < KV_LAYERS; l++)
    free(s->k[l]), free(s->v[l]);
}

static size_t kv_layer_bytes(const bk_kv_cache *kv) {
  return (size_t)kv->n_blocks * kv->n_kv_heads * bk_kv_unit_bytes(kv);
}

/* A zeroed cache on be in format kind, filled through kv_write with every
 * layer's K/V (two calls per layer, see kv_make). */
static bk_kv_cache kv_build(bk_backend *be, const kv_case *c, const kv_setup *s,
                            const kv_kind *kind) {
  bk_kv_cache kv = {.fmt = kind->fmt,
                    .scaling = kind->scaling,
                    .n_layers = KV_LAYERS,
                    .n_blocks = s->n_blocks,
                    .block_size = c->bs,
                    .n_kv_heads = c->nkv,
                    .head_dim = c->hd};
  kv.k = calloc(KV_LAYERS, sizeof(void *));
  kv.v = calloc(KV_LAYERS, sizeof(void *));
  if (bk_kv_tensor_scaled(kv.fmt, kv.scaling)) {
    kv.tensor_scales = dev_alloc(be, KV_LAYERS * 2 * sizeof(float));
    must(be->memset0(be, kv.tensor_scales, KV_LAYERS * 2 * sizeof(float)), "memset0");
  }
  size_t lb = kv_layer_bytes(&kv), row = (size_t)c->nkv * c->hd;
  size_t rb = (size_t)s->n_write * row * 4;
  int32_t *dslots = dev_put(be, s->slots, (size_t)s->n_write * 4);
  for (int l = 0; l < KV_LAYERS; l++) {
    kv.k[l] = dev_alloc(be, lb);
    kv.v[l] = dev_alloc(be, lb);
    must(be->memset0(be, kv.k[l], lb), "memset0");
    must(be->memset0(be, kv.v[l], lb), "memset0");
    float *dk = dev_put(be, s->k[l], rb), *dv = dev_put(be, s->v[l], rb);
    int n1 = s->n_first, n2 = s->n_write - n1;
    must(be->kv_write(be, &kv, l, dk, dv, dslots, n1), "kv_write");
    if (n2 > 0)
      must(be->kv_write(be, &kv, l, dk + (size_t)n1 * row, dv + (size_t)n1 * row, dslots + n1, n2),
           "kv_write");
    must(be->sync(be), "sync");
    be->free(be, dk);
    be->free(be, dv);
  }
  be->free(be, dslots);
  return kv;
}

static void kv_destroy(bk_backend *be, bk_kv_cache *kv) {
  for (int l = 0; l < kv->n_layers; l++)
    be->free(be, kv->k[l]), be->free(be, kv->v[l]);
  if (kv->tensor_scales) be->free(be, kv->tensor_scales);
  free(kv->k);
  free(kv->v);
}

static void check_kv_equal(pair *p, const kv_case *c, const kv_kind *kind, bk_kv_cache *kc,
                           bk_kv_cache *kg) {
  size_t lb = kv_layer_bytes(kc);
  uint8_t *a = malloc(lb), *b = malloc(lb);
  for (int l = 0; l < KV_LAYERS; l++)
    for (int kvsel = 0; kvsel < 2; kvsel++) {
      must(p->cpu->download(p->cpu, a, kvsel ? kc->v[l] : kc->k[l], lb), "download");
      must(p->gpu->download(p->gpu, b, kvsel ? kg->v[l] : kg->k[l], lb), "download");
      size_t diff = 0;
      for (size_t i = 0; i < lb; i++)
        diff += a[i] != b[i];
      /* Both backends encode with kvcache/kv_format.h: integer bit work and
       * correctly rounded fp32 multiplies and divides (no FMA-contractible
       * sums), fp16 by round to nearest even: bit for bit. */
      T_CHECKF(diff == 0, "kv_write %s hd %d bs %d layer %d %s: %zu of %zu bytes differ",
               kind->name, c->hd, c->bs, l, kvsel ? "v" : "k", diff, lb);
    }
  if (kc->tensor_scales) {
    float ta[KV_LAYERS * 2], tb[KV_LAYERS * 2];
    must(p->cpu->download(p->cpu, ta, kc->tensor_scales, sizeof ta), "download");
    must(p->gpu->download(p->gpu, tb, kg->tensor_scales, sizeof tb), "download");
    /* max is exact in any order, then the same two fp32 operations */
    T_CHECKF(memcmp(ta, tb, sizeof ta) == 0 && ta[0] > 0,
             "kv_write %s hd %d: tensor scales differ (cpu %g, gpu %g)", kind->name, c->hd,
             (double)ta[0], (double)tb[0]);
  }
  free(a);
  free(b);
}

static float *run_attention(bk_backend *be, const bk_kv_cache *kv, const kv_setup *s,
                            const kv_case *c, const float *q, const int32_t *seq,
                            const int32_t *pos, int n_tok, int layer) {
  bk_heads hd = {.n_heads = c->nh, .n_kv_heads = c->nkv, .head_dim = c->hd};
  size_t qb = (size_t)n_tok * c->nh * c->hd * 4;
  float *dq = dev_put(be, q, qb), *out = dev_poison(be, qb);
  bk_attn_batch b = {.n_tok = n_tok, .n_seq = KV_SEQS, .max_blocks = s->max_blocks};
  b.tok_seq = dev_put(be, seq, (size_t)n_tok * 4);
  b.tok_pos = dev_put(be, pos, (size_t)n_tok * 4);
  b.block_tables = dev_put(be, s->tables, (size_t)KV_SEQS * s->max_blocks * 4);
  must(be->attention(be, out, dq, kv, layer, &b, &hd), "attention");
  float *h = dev_take(be, out, qb);
  be->free(be, dq);
  be->free(be, (void *)b.tok_seq);
  be->free(be, (void *)b.tok_pos);
  be->free(be, (void *)b.block_tables);
  return h;
}

static void test_attention(pair *p, rng *r) {
  static const kv_case cases[] = {{6, 2, 64, 16, {1, 23, 50}},
                                  {4, 4, 40, 5, {7, 3, 12}},
                                  {8, 1, 128, 8, {40, 1, 9}},
                                  {2, 1, 256, 16, {33, 2, 17}},
                                  {3, 3, 8, 4, {2, 9, 5}},
                                  /* long enough for 8 and 16 warps per block */
                                  {4, 2, 64, 16, {300, 5, 260}},
                                  {2, 1, 128, 32, {1100, 3, 40}}};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
    for (size_t ki = 0; ki < sizeof kv_kinds / sizeof kv_kinds[0]; ki++) {
      const kv_case *c = &cases[ci];
      const kv_kind *kind = &kv_kinds[ki];
      if (!bk_kv_geometry_ok(kind->fmt, c->hd)) continue; /* nvfp4: hd % 16 */
      kv_setup s = kv_make(r, c);
      bk_kv_cache kc = kv_build(p->cpu, c, &s, kind), kg = kv_build(p->gpu, c, &s, kind);
      check_kv_equal(p, c, kind, &kc, &kg);
      /* A mixed step: decode tokens at the end of sequences 0 and 2, a
       * prefill chunk in the middle of sequence 1, and a token at position 0. */
      enum { T = 7 };
      int32_t seq[T] = {0, 1, 1, 1, 2, 2, 1};
      int32_t pos[T] = {c->len[0] - 1,
                        c->len[1] - 3,
                        c->len[1] - 2,
                        c->len[1] - 1,
                        c->len[2] - 1,
                        c->len[2] / 2,
                        0};
      for (int t = 0; t < T; t++)
        if (pos[t] < 0) pos[t] = 0;
      float *q = rand_f(r, (size_t)T * c->nh * c->hd, -1, 1);
      for (int layer = 0; layer < KV_LAYERS; layer++) {
        float *want = run_attention(p->cpu, &kc, &s, c, q, seq, pos, T, layer);
        float *got = run_attention(p->gpu, &kg, &s, c, q, seq, pos, T, layer);
        char what[96];
        snprintf(what, sizeof what, "attention %s %d/%d hd %d bs %d layer %d", kind->name, c->nh,
                 c->nkv, c->hd, c->bs, layer);
        /* The caches are byte-identical and both sides decode with the same
         * kv_format.h functions, so K and V are the same floats; then fp32
         * scores and softmax on both sides, with sums in another order and
         * expf ulps apart. Outputs are convex combinations of |v| <= 8
         * (one 8x token): 2e-5 absolute plus 1e-4 relative, as for fp16. */
        expect_near(what, got, want, (size_t)T * c->nh * c->hd, 2e-5, 1e-4);
        free(want);
        free(got);
      }
      free(q);
      kv_destroy(p->cpu, &kc);
      kv_destroy(p->gpu, &kg);
      kv_free(&s);
    }
}

/* ---- device errors -------------------------------------------------------- */

/* stderr into a temporary file, to read what the backend logged. */
typedef struct capture {
  int saved;
  FILE *f;
} capture;

static capture capture_start(void) {
  fflush(stderr);
  capture c = {dup(2), tmpfile()};
  if (c.saved < 0 || !c.f || dup2(fileno(c.f), 2) < 0) {
    fprintf(stderr, "harness: cannot capture stderr\n");
    exit(1);
  }
  return c;
}

/* Stop capturing; buf gets what was written (echoed to stderr as well). */
static void capture_end(capture *c, char *buf, size_t size) {
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  rewind(c->f);
  size_t k = fread(buf, 1, size - 1, c->f);
  buf[k] = 0;
  fclose(c->f);
  fputs(buf, stderr);
}

/* A fresh CUDA backend: the device error word is sticky, so every case gets
 * its own (as a replica's is rebuilt after a fault). */
static bk_backend *fresh_gpu(void) {
  bl_err err = {0};
  bk_backend *g = NULL;
  must(bk_cuda_create(0, &g, &err), "bk_cuda_create");
  return g;
}

/* The op ran (asynchronously, BL_OK); now sync must say BL_EDEVICE with the
 * op and the value in the message, twice (sticky), and so must a download. */
static void expect_fault(bk_backend *g, const char *what, const char *msg) {
  char log[2048];
  capture cap = capture_start();
  bl_status st = g->sync(g), st2 = g->sync(g);
  float dummy;
  void *d = dev_alloc(g, sizeof dummy);
  bl_status st3 = g->download(g, &dummy, d, sizeof dummy);
  g->free(g, d);
  capture_end(&cap, log, sizeof log);
  T_CHECKF(st == BL_EDEVICE, "%s: sync gave %s, not %s", what, bl_status_str(st),
           bl_status_str(BL_EDEVICE));
  T_CHECKF(st2 == BL_EDEVICE && st3 == BL_EDEVICE, "%s: the fault is not sticky (%s, %s)", what,
           bl_status_str(st2), bl_status_str(st3));
  T_CHECKF(strstr(log, msg) != NULL, "%s: the log does not say \"%s\"", what, msg);
  if (st == BL_EDEVICE && strstr(log, msg)) printf("ok  %-48s BL_EDEVICE\n", what);
}

/* kv_write to a slot one past the cache: nothing written past the layer
 * (a guard region behind it keeps its pattern), the valid token written. */
static void test_fault_kv_write(rng *r, bk_kvfmt fmt) {
  bk_backend *g = fresh_gpu();
  enum { NB = 4, BS = 16, NKV = 2, HD = 32, GUARD = 4096 };
  bk_kv_cache kv = {.fmt = fmt,
                    .n_layers = 1,
                    .n_blocks = NB,
                    .block_size = BS,
                    .n_kv_heads = NKV,
                    .head_dim = HD};
  void *k[1], *v[1];
  kv.k = k, kv.v = v;
  if (bk_kv_tensor_scaled(kv.fmt, kv.scaling)) {
    kv.tensor_scales = dev_alloc(g, 2 * sizeof(float));
    must(g->memset0(g, kv.tensor_scales, 2 * sizeof(float)), "memset0");
  }
  size_t lb = kv_layer_bytes(&kv);
  uint8_t *pat = malloc(lb + GUARD);
  memset(pat, 0x5a, lb + GUARD);
  k[0] = dev_put(g, pat, lb + GUARD);
  v[0] = dev_put(g, pat, lb + GUARD);
  int32_t slots[2] = {5, NB * BS}; /* the second is one past the last slot */
  float *x = rand_f(r, 2 * NKV * HD, -1, 1);
  float *dx = dev_put(g, x, 2 * NKV * HD * sizeof(float));
  int32_t *ds = dev_put(g, slots, sizeof slots);
  bl_status st = g->kv_write(g, &kv, 0, dx, dx, ds, 2);
  char what[64], msg[96];
  snprintf(what, sizeof what, "fault kv_write %s slot %d", fmt == BK_KV_F16 ? "fp16" : "nvfp4",
           NB * BS);
  snprintf(msg, sizeof msg, "kv_write: slot %d outside the cache's %d slots", NB * BS, NB * BS);
  T_CHECKF(st == BL_OK, "%s: the op itself gave %s", what, bl_status_str(st));
  expect_fault(g, what, msg);
  /* download still copies after the fault (and says BL_EDEVICE) */
  uint8_t *got = malloc(lb + GUARD);
  for (int which = 0; which < 2; which++) {
    (void)g->download(g, got, which ? v[0] : k[0], lb + GUARD);
    T_CHECKF(memcmp(got + lb, pat + lb, GUARD) == 0, "%s: the guard past the layer was written",
             what);
    T_CHECKF(memcmp(got, pat, lb) != 0, "%s: the valid token was not written", what);
  }
  free(got), free(pat), free(x);
  g->free(g, dx), g->free(g, ds), g->free(g, k[0]), g->free(g, v[0]);
  if (kv.tensor_scales) g->free(g, kv.tensor_scales);
  bk_destroy(g);
}

/* attention with one bad id in the batch: a block id past the cache or
 * negative inside the attended range, a sequence outside the batch, a
 * position past the block table. */
static void test_fault_attention(rng *r, int kind) {
  bk_backend *g = fresh_gpu();
  enum { NB = 4, BS = 8, NH = 2, NKV = 1, HD = 32, MAXB = 3 };
  bk_kv_cache kv = {.fmt = BK_KV_F16,
                    .n_layers = 1,
                    .n_blocks = NB,
                    .block_size = BS,
                    .n_kv_heads = NKV,
                    .head_dim = HD};
  void *k[1], *v[1];
  kv.k = k, kv.v = v;
  size_t lb = kv_layer_bytes(&kv);
  k[0] = dev_alloc(g, lb);
  v[0] = dev_alloc(g, lb);
  must(g->memset0(g, k[0], lb), "memset0");
  must(g->memset0(g, v[0], lb), "memset0");
  int32_t table[MAXB] = {2, 0, 1}, seq[2] = {0, 0}, pos[2] = {3, 2 * BS + 1};
  static const char *whats[] = {"block id past the cache", "negative block id",
                                "sequence outside the batch", "position past the table"};
  static const char *msgs[] = {"attention: block id 4 outside the cache's 4 blocks",
                               "attention: block id -1 outside the cache's 4 blocks",
                               "attention: sequence 1 outside the batch's 1 sequences",
                               "attention: position 24 past the block table's 24 positions"};
  if (kind == 0) table[1] = NB;
  if (kind == 1) table[2] = -1;
  if (kind == 2) seq[1] = 1;
  if (kind == 3) pos[1] = MAXB * BS; /* NB 4, MAXB * BS 24: the messages above */
  char what[64];
  snprintf(what, sizeof what, "fault attention %s", whats[kind]);
  bk_heads hd = {.n_heads = NH, .n_kv_heads = NKV, .head_dim = HD};
  float *q = rand_f(r, 2 * NH * HD, -1, 1);
  float *dq = dev_put(g, q, 2 * NH * HD * sizeof(float));
  float *out = dev_alloc(g, 2 * NH * HD * sizeof(float));
  bk_attn_batch b = {.n_tok = 2, .n_seq = 1, .max_blocks = MAXB};
  b.tok_seq = dev_put(g, seq, sizeof seq);
  b.tok_pos = dev_put(g, pos, sizeof pos);
  b.block_tables = dev_put(g, table, sizeof table);
  bl_status st = g->attention(g, out, dq, &kv, 0, &b, &hd);
  T_CHECKF(st == BL_OK, "%s: the op itself gave %s", what, bl_status_str(st));
  expect_fault(g, what, msgs[kind]);
  free(q);
  g->free(g, dq), g->free(g, out), g->free(g, k[0]), g->free(g, v[0]);
  g->free(g, (void *)b.tok_seq), g->free(g, (void *)b.tok_pos), g->free(g, (void *)b.block_tables);
  bk_destroy(g);
}

/* embed of a token id past the table. */
static void test_fault_embed(rng *r) {
  bk_backend *g = fresh_gpu();
  hweight h = make_weight(r, BK_WF_W4, 9, 64, 32, false);
  bk_weight w = weight_on(g, &h.w);
  int32_t ids[3] = {1, 9, 0};
  int32_t *d_ids = dev_put(g, ids, sizeof ids);
  float *out = dev_alloc(g, 3 * 64 * sizeof(float));
  bl_status st = g->embed(g, out, &w, d_ids, 3);
  T_CHECKF(st == BL_OK, "fault embed: the op itself gave %s", bl_status_str(st));
  expect_fault(g, "fault embed token id 9", "embed: token id 9 outside the table's 9 rows");
  g->free(g, d_ids), g->free(g, out);
  weight_off(g, &w);
  free_weight(&h);
  bk_destroy(g);
}

static void test_faults(rng *r) {
  test_fault_kv_write(r, BK_KV_F16);
  test_fault_kv_write(r, BK_KV_NVFP4);
  for (int kind = 0; kind < 4; kind++)
    test_fault_attention(r, kind);
  test_fault_embed(r);
}

/* ---- timings ------------------------------------------------------------ */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Qwen3-8B gate_proj (12288 x 4096, g128) at the token counts around the
 * GEMV/cuBLAS switch and a 512-token prefill; weight bytes per second, and
 * the FLOP rate for the large n. */
static void bench_matmul(bk_backend *g, rng *r, bk_wfmt fmt, const int *ns, int n_ns) {
  int rows = 12288, cols = 4096, gs = 128, n_max = 0;
  for (int i = 0; i < n_ns; i++)
    n_max = ns[i] > n_max ? ns[i] : n_max;
  hweight h = make_weight(r, fmt, rows, cols, gs, false);
  bk_weight w = weight_on(g, &h.w);
  float *x = rand_f(r, (size_t)n_max * cols, -1, 1);
  float *dx = dev_put(g, x, (size_t)n_max * cols * 4), *y = dev_alloc(g, (size_t)n_max * rows * 4);
  double wbytes = (double)rows * cols * bk_wfmt_bits(fmt) / 8 +
                  (fmt == BK_WF_F16 ? 0 : (double)rows * (cols / gs) * 4);
  for (int i = 0; i < n_ns; i++) {
    int n = ns[i], iters = 20;
    must(g->matmul(g, y, dx, &w, n), "matmul"); /* warm-up */
    must(g->sync(g), "sync");
    double t0 = now_s();
    for (int it = 0; it < iters; it++)
      must(g->matmul(g, y, dx, &w, n), "matmul");
    must(g->sync(g), "sync");
    double dt = (now_s() - t0) / iters;
    printf("bench matmul %-4s %dx%d n=%-3d %8.1f us  %7.1f GB/s  %7.2f TFLOP/s\n",
           bk_wfmt_name(fmt), rows, cols, n, dt * 1e6, wbytes / dt * 1e-9,
           2.0 * rows * cols * n / dt * 1e-12);
  }
  g->free(g, dx);
  g->free(g, y);
  weight_off(g, &w);
  free(x);
  free_weight(&h);
}

static void bench_attention(bk_backend *g, rng *r, const kv_kind *kind) {
  kv_case c = {32, 8, 128, 16, {4096, 4096, 4096}};
  kv_setup s = kv_make(r, &c);
  bk_kv_cache kv = kv_build(g, &c, &s, kind);
  enum { T = 3 };
  int32_t seq[T] = {0, 1, 2}, pos[T] = {4095, 4095, 4095};
  bk_heads hd = {.n_heads = c.nh, .n_kv_heads = c.nkv, .head_dim = c.hd};
  float *q = rand_f(r, (size_t)T * c.nh * c.hd, -1, 1);
  size_t qb = (size_t)T * c.nh * c.hd * 4;
  float *dq = dev_put(g, q, qb), *out = dev_alloc(g, qb);
  bk_attn_batch b = {.n_tok = T, .n_seq = KV_SEQS, .max_blocks = s.max_blocks};
  b.tok_seq = dev_put(g, seq, sizeof seq);
  b.tok_pos = dev_put(g, pos, sizeof pos);
  b.block_tables = dev_put(g, s.tables, (size_t)KV_SEQS * s.max_blocks * 4);
  must(g->attention(g, out, dq, &kv, 0, &b, &hd), "attention"); /* warm-up */
  must(g->sync(g), "sync");
  int iters = 20;
  double t0 = now_s();
  for (int i = 0; i < iters; i++)
    must(g->attention(g, out, dq, &kv, 0, &b, &hd), "attention");
  must(g->sync(g), "sync");
  double dt = (now_s() - t0) / iters;
  /* K and V (values and scales) read once per kv head */
  double bytes = (double)T * 4096 * 2 * c.nkv *
                 (double)(bk_kv_row_bytes(kind->fmt, c.hd) +
                          bk_kv_scale_bytes(kind->fmt, kind->scaling, c.hd));
  printf("bench attention %-10s %d seqs x 4096 pos, %d/%d heads x %d: %8.1f us  %7.1f GB/s\n",
         kind->name, T, c.nh, c.nkv, c.hd, dt * 1e6, bytes / dt * 1e-9);
  g->free(g, dq);
  g->free(g, out);
  g->free(g, (void *)b.tok_seq);
  g->free(g, (void *)b.tok_pos);
  g->free(g, (void *)b.block_tables);
  free(q);
  kv_destroy(g, &kv);
  kv_free(&s);
}

int main(void) {
  bk_backend *gpu, *cpu;
  int rc = gpu_open(&gpu, &cpu);
  if (rc >= 0) return rc;
  pair p = {cpu, gpu};
  rng r = {20250101};
  test_embed(&p, &r);
  test_rmsnorm(&p, &r);
  test_rope(&p, &r);
  test_matmul(&p, &r);
  test_eltwise(&p, &r);
  test_attention(&p, &r);
  test_faults(&r);
  if (!t_failed && !getenv("BALLAST_NO_BENCH")) {
    static const int ns_f16[] = {1, 8, 9, 512}, ns_q[] = {1, 2, 8, 16, 32, 33, 64, 512};
    bench_matmul(gpu, &r, BK_WF_F16, ns_f16, 4);
    bench_matmul(gpu, &r, BK_WF_W4, ns_q, 8);
    bench_matmul(gpu, &r, BK_WF_W2, ns_q, 8);
    for (size_t i = 0; i < sizeof kv_kinds / sizeof kv_kinds[0]; i++)
      bench_attention(gpu, &r, &kv_kinds[i]);
  }
  bk_destroy(cpu);
  bk_destroy(gpu);
  return T_DONE();
}
