/* The tensor-core matmul path (suite gpu): W4/W2 weights at 2..64 tokens,
 * which the CUDA backend's matmul sends to kernels/cuda/cu_mma.cu, against
 * the CPU backend, in the llm.c dev/cuda manner: random inputs from a fixed
 * seed (no zeros), every variant (W4 and W2, with and without a perm, groups
 * of 32, 64 and 128 columns and one group per row) at every launch shape
 * that matters to the kernel (2, 3, 8, 15, 16, 17, 33 and 64 tokens: one to
 * four 16-token fragments, full and partial; rows below, at and past one
 * 128-row tile and not a multiple of it; columns with and without a last
 * stage of one 32-column block; with and without K splits), and the paths on
 * either side of it (1 token: the GEMV; 65: dequantize + cuBLAS), the output
 * poisoned with NaN and followed by a guard, so an element the kernel
 * forgets or one it writes past the end fails. Then, on a GPU, timings per
 * shape in GB/s and TFLOP/s (BALLAST_NO_BENCH=1 skips them, as the emulator
 * run does).
 *
 * Where no GPU is present (CI) bk_cuda_create says BL_EUNSUPPORTED: the test
 * prints one line "gpu suite skipped: <reason>" and exits 77, meson's skip.
 *
 * Tolerances, |got - want| <= atol_i + rtol*|want| per element (t, i):
 *  - against the CPU backend (fp32 weights and x, fp32 sums): atol_i =
 *    1e-3 * sum_k |w_ik x_tk| + 1e-6, rtol = 1e-5. The path rounds x and
 *    w = scale*q + min to fp16 (2^-11 relative each, so each product is off
 *    by at most 2^-10 + 2^-22 < 0.98e-3 of itself) and sums in fp32 (a few
 *    2^-24 per add, growing as a random walk); the same bound as the cuBLAS
 *    path's in tests/gpu/test_cuda_ops.c, which rounds the same way.
 *  - against the same sums in double over the fp16-rounded w and x: atol_i =
 *    (cols + 16) * 2^-23 * sum_k |fp16(w_ik) fp16(x_tk)|, rtol = 0: only the
 *    fp32 accumulation may differ (each add off by at most 2^-23 of a
 *    partial sum, tensor cores truncating; cols adds plus a few K-split
 *    adds). This one checks that the dequantization is scale*q + min rounded
 *    once to fp16 and nothing looser; it is 8-140x tighter than the first.
 *  - a token's output does not depend on the batch: the first two tokens of
 *    the 64-token run equal, bit for bit, a 2-token run on the same x
 *    (cu_mma.cu sums every output in the same order for any n). */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "bl_half.h"
#include "gpu_harness.h"
#include "t.h"

/* ---- one matmul on a backend -------------------------------------------- */

#define GUARD 64 /* floats after y that must stay NaN */

/* y[n][rows] of be's matmul, host memory. y starts as NaN (all bits set)
 * with GUARD more floats after it; *guard_ok says whether those stayed. */
static float *run_matmul(bk_backend *be, const bk_weight *hw, const float *x, int n,
                         bool *guard_ok) {
  bk_weight w = weight_on(be, hw);
  size_t xb = (size_t)n * hw->cols * 4, yl = (size_t)n * hw->rows + GUARD;
  float *h = malloc(yl * 4);
  memset(h, 0xff, yl * 4);
  float *dx = dev_put(be, x, xb), *y = dev_put(be, h, yl * 4);
  must(be->matmul(be, y, dx, &w, n), "matmul");
  must(be->download(be, h, y, yl * 4), "download");
  uint32_t bits = 0xffffffffu;
  *guard_ok = true;
  for (size_t i = yl - GUARD; i < yl; i++)
    *guard_ok = *guard_ok && memcmp(&h[i], &bits, 4) == 0;
  be->free(be, dx);
  be->free(be, y);
  weight_off(be, &w);
  return h;
}

/* ---- comparison --------------------------------------------------------- */

/* One check: every element within atol[i] + rtol*|want[i]|; NaN fails. On
 * success prints how much of the tolerance the worst element used. */
static void expect_near(const char *what, const float *got, const double *want, size_t n,
                        const double *atol, double rtol) {
  size_t bad = 0, worst = 0;
  double worst_x = -1.0;
  for (size_t i = 0; i < n; i++) {
    double tol = atol[i] + rtol * fabs(want[i]), d = fabs((double)got[i] - want[i]);
    double x = d / (tol > 0 ? tol : 1e-300);
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
           n, worst, (double)got[worst], want[worst], worst_x);
  if (!bad) printf("ok  %-56s worst %.2g x tol\n", what, worst_x);
}

typedef struct pair {
  bk_backend *cpu, *gpu;
} pair;

/* x[t][perm ? perm[k] : k]: the input packed column k multiplies. */
static double xk(const bk_weight *w, const float *x, int t, int k) {
  return x[(size_t)t * w->cols + (w->perm ? w->perm[k] : k)];
}

static double f16(double v) { return bl_half_to_float(bl_float_to_half((float)v)); }

/* The tolerances of the file comment, for the n tokens of x (the fp16
 * reference not for the GEMV, n = 1, whose fp16 sums are looser: see
 * tests/gpu/test_cuda_ops.c). Returns the GPU's output (the caller frees
 * it). */
static float *check_matmul(pair *p, const hweight *h, const float *x, int n) {
  const bk_weight *w = &h->w;
  int rows = w->rows, cols = w->cols;
  bool g_cpu, g_gpu;
  float *want = run_matmul(p->cpu, w, x, n, &g_cpu), *got = run_matmul(p->gpu, w, x, n, &g_gpu);
  char what[112];
  int len = snprintf(what, sizeof what, "mma %s %dx%d g%d%s n=%d", bk_wfmt_name(w->fmt), rows, cols,
                     w->group_size, w->perm ? " perm" : "", n);
  T_CHECKF(g_gpu, "%s: wrote past y[%d][%d]", what, n, rows);
  size_t ny = (size_t)n * rows;
  double *ref = malloc(ny * sizeof *ref), *ref16 = malloc(ny * sizeof *ref16);
  double *atol = malloc(ny * sizeof *atol), *atol16 = malloc(ny * sizeof *atol16);
  for (int t = 0; t < n; t++)
    for (int i = 0; i < rows; i++) {
      const float *wr = h->ref + (size_t)i * cols;
      double a = 0, s16 = 0, a16 = 0;
      for (int k = 0; k < cols; k++) {
        double v = xk(w, x, t, k), pr = f16(wr[k]) * f16(v);
        a += fabs(wr[k] * v);
        s16 += pr;
        a16 += fabs(pr);
      }
      size_t o = (size_t)t * rows + i;
      ref[o] = want[o];
      atol[o] = 1e-3 * a + 1e-6;
      ref16[o] = s16;
      atol16[o] = (cols + 16) * ldexp(a16, -23);
    }
  expect_near(what, got, ref, ny, atol, 1e-5);
  snprintf(what + len, sizeof what - (size_t)len, " fp16 ref");
  if (n > 1) expect_near(what, got, ref16, ny, atol16, 0);
  free(ref), free(ref16), free(atol), free(atol16), free(want);
  return got;
}

/* ---- the variants -------------------------------------------------------- */

static void test_mma(pair *p, rng *r) {
  /* The splits are cu_mma.cu's: at most one per 4 stages of 64 columns and
   * only while the 128-row tiles give fewer than 2 blocks per SM. */
  static const struct {
    int rows, cols;
  } shapes[] = {
      {45, 96},    /* one partial tile, a last stage of one block, no split */
      {128, 1024}, /* one full tile, 4 K splits (any GPU, the emulator too) */
      {300, 384},  /* three tiles, the last partial; too few stages to split */
      {257, 1056}, /* a partial tile, splits, a last stage of one block */
  };
  static const int gss[] = {32, 64, 128, 0}, ns[] = {1, 2, 3, 8, 15, 16, 17, 33, 64, 65};
  static const bk_wfmt fmts[] = {BK_WF_W4, BK_WF_W2};
  enum { N_BIG = 64, X_ROWS = 65 }; /* the largest mma batch; the largest n */
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (size_t g = 0; g < sizeof gss / sizeof gss[0]; g++) {
      int rows = shapes[s].rows, cols = shapes[s].cols, gs = gss[g];
      if (gs && cols % gs) continue;
      for (size_t f = 0; f < 2; f++)
        for (int perm = 0; perm < 2; perm++) {
          hweight h = make_weight(r, fmts[f], rows, cols, gs, perm);
          float *x = malloc((size_t)X_ROWS * cols * sizeof *x);
          for (size_t i = 0; i < (size_t)X_ROWS * cols; i++)
            x[i] = rng_f(r, -1, 1);
          float *y2 = NULL, *y64 = NULL;
          for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            float *y = check_matmul(p, &h, x, ns[i]);
            float **keep = ns[i] == 2 ? &y2 : ns[i] == N_BIG ? &y64 : NULL;
            if (keep)
              *keep = y;
            else
              free(y);
          }
          T_CHECKF(y2 && y64 && memcmp(y2, y64, (size_t)2 * rows * sizeof *y2) == 0,
                   "mma %s %dx%d g%d%s: tokens 0-1 differ between n=2 and n=64",
                   bk_wfmt_name(fmts[f]), rows, cols, h.w.group_size, perm ? " perm" : "");
          free(y2), free(y64), free(x);
          free_weight(&h);
        }
    }
}

/* ---- timings ------------------------------------------------------------ */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The linears of Qwen3-8B (g128) at each launch shape, with n = 1 (GEMV) and
 * 65 (dequantize + cuBLAS) beside them: weight bytes (packed, plus the
 * (scale, min) pairs) per second and FLOP/s (2 * rows * cols * n). */
static void bench_mma(bk_backend *g, rng *r) {
  static const struct {
    const char *name;
    int rows, cols;
  } shapes[] = {{"q/o_proj", 4096, 4096},
                {"k/v_proj", 1024, 4096},
                {"gate/up", 12288, 4096},
                {"down", 4096, 12288}};
  static const int ns[] = {1, 2, 3, 8, 15, 16, 17, 33, 64, 65};
  static const bk_wfmt fmts[] = {BK_WF_W4, BK_WF_W2};
  enum { N_MAX = 65, GS = 128 };
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (size_t f = 0; f < 2; f++) {
      int rows = shapes[s].rows, cols = shapes[s].cols;
      hweight h = make_weight(r, fmts[f], rows, cols, GS, false);
      bk_weight w = weight_on(g, &h.w);
      float *x = malloc((size_t)N_MAX * cols * sizeof *x);
      for (size_t i = 0; i < (size_t)N_MAX * cols; i++)
        x[i] = rng_f(r, -1, 1);
      float *dx = dev_put(g, x, (size_t)N_MAX * cols * 4);
      float *y = dev_alloc(g, (size_t)N_MAX * rows * 4);
      double wbytes =
          (double)rows * cols * bk_wfmt_bits(fmts[f]) / 8 + (double)rows * cols / GS * 4;
      for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        int n = ns[i], iters = 50;
        must(g->matmul(g, y, dx, &w, n), "matmul"); /* warm-up */
        must(g->sync(g), "sync");
        double t0 = now_s();
        for (int it = 0; it < iters; it++)
          must(g->matmul(g, y, dx, &w, n), "matmul");
        must(g->sync(g), "sync");
        double dt = (now_s() - t0) / iters;
        const char *path = n == 1 ? "gemv" : n > 64 ? "cublas" : "mma";
        printf("bench mma %-4s %-8s %5dx%-5d n=%-2d %-6s %8.1f us %7.1f GB/s %7.2f TFLOP/s\n",
               bk_wfmt_name(fmts[f]), shapes[s].name, rows, cols, n, path, dt * 1e6,
               wbytes / dt * 1e-9, 2.0 * rows * cols * n / dt * 1e-12);
      }
      g->free(g, dx);
      g->free(g, y);
      weight_off(g, &w);
      free(x);
      free_weight(&h);
    }
}

int main(void) {
  bk_backend *gpu, *cpu;
  int rc = gpu_open(&gpu, &cpu);
  if (rc >= 0) return rc;
  pair p = {cpu, gpu};
  rng r = {20260301};
  test_mma(&p, &r);
  if (!t_failed && !getenv("BALLAST_NO_BENCH")) bench_mma(gpu, &r);
  bk_destroy(cpu);
  bk_destroy(gpu);
  return T_DONE();
}
