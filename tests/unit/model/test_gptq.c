/* GPTQ: the solver against round-to-nearest on the same grid, the inverse
 * Hessian factor, and whole models quantized, reloaded and compared with
 * their fp16 logits.
 *
 * 0. The X^T X accumulation against a plain double sum.
 * 1. Random W, correlated X (mixed columns with uneven scales, as real
 *    activations have): GPTQ's output error ||X W^T - X Wq^T||_F must be
 *    below RTN's for every seed, 2 and 4 bits, sym and asym. This is the
 *    property GPTQ exists for; a sign error or an off-by-one in the error
 *    propagation makes it fail.
 * 2. H = identity: no error propagates (H^-1 is diagonal), so GPTQ must
 *    give exactly RTN's q, scales and zeros, for group sizes that split,
 *    fill and span the solver's 128-column blocks.
 * 3. U from gptq_hinv_chol satisfies U^T U H = I and is upper triangular.
 * 4. tiny-qwen3 (random weights, no tokenizer: pseudo-random calibration
 *    ids) and, when BALLAST_SMOLLM2_GGUF names the demo model, SmolLM2 with
 *    the committed calibration text: quantize with GPTQ and RTN (tiny at 4
 *    and 2 bits, SmolLM2 at 4; see check_smollm2 for why) through
 *    model_export_gptq, load the folders back, and compare logits on
 *    held-out tokens with the fp16 model's (mean KL). GPTQ must not be
 *    worse than RTN on held-out text of the calibration's kind. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/t.h"
#include "bl_half.h"
#include "kv_cache.h"
#include "model_export.h"
#include "model_internal.h"

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_state;
static double urand(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}
static double nrand(void) { /* Box-Muller */
  double u = urand() + 1e-300, v = urand();
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* H = 2/n X^T X, full upper triangle, from x [n][in]. */
static double *hessian(const float *x, int32_t n, int32_t in) {
  double *H = calloc((size_t)in * (size_t)in, sizeof *H);
  gptq_hessian_add(H, in, x, n, 3);
  for (size_t i = 0; i < (size_t)in; i++)
    for (size_t j = i; j < (size_t)in; j++)
      H[i * (size_t)in + j] *= 2.0 / n;
  return H;
}

/* ||X (A - B)^T||_F for A, B [out][in]. */
static double out_err(const float *x, int32_t n, int32_t in, const float *A, const float *B,
                      int32_t out) {
  double s = 0;
  for (int32_t t = 0; t < n; t++)
    for (int32_t r = 0; r < out; r++) {
      double d = 0;
      for (int32_t k = 0; k < in; k++)
        d +=
            (double)x[(size_t)t * in + k] * ((double)A[(size_t)r * in + k] - B[(size_t)r * in + k]);
      s += d * d;
    }
  return sqrt(s);
}

static void dequant(const qlinear *ql, float *W) {
  for (int32_t r = 0; r < ql->out; r++)
    for (int32_t k = 0; k < ql->in; k++) {
      size_t g = (size_t)(k / ql->group_size) * (size_t)ql->out + (size_t)r;
      W[(size_t)r * ql->in + k] =
          bl_half_to_float(ql->scales[g]) * (float)(ql->q[(size_t)r * ql->in + k] - ql->zeros[g]);
    }
}

static void rtn(const float *W, int32_t out, int32_t in, int32_t bits, int32_t gs, bool sym,
                qlinear *ql) {
  int32_t ng = ql->n_groups;
  uint16_t sc[64];
  int32_t z[64];
  for (int32_t r = 0; r < out; r++) {
    quant_row(W + (size_t)r * in, in, bits, gs, sym, ql->q + (size_t)r * in, sc, z);
    for (int32_t g = 0; g < ng; g++) {
      ql->scales[(size_t)g * out + r] = sc[g];
      ql->zeros[(size_t)g * out + r] = z[g];
    }
  }
}

/* ---- 0. the Hessian accumulation -------------------------------------------- */

static void check_hessian(int32_t dim, int32_t n) {
  float *x = malloc((size_t)n * dim * sizeof *x);
  rng_state = 99 + (uint64_t)dim * 7 + (uint64_t)n;
  for (size_t i = 0; i < (size_t)n * dim; i++)
    x[i] = (float)nrand();
  double *S = calloc((size_t)dim * dim, sizeof *S), worst = 0;
  gptq_hessian_add(S, dim, x, n, 3);
  gptq_hessian_add(S, dim, x, n, 1); /* accumulates: twice the sum */
  for (int32_t i = 0; i < dim; i++)
    for (int32_t j = i; j < dim; j++) {
      double want = 0;
      for (int32_t t = 0; t < n; t++)
        want += 2.0 * x[(size_t)t * dim + i] * x[(size_t)t * dim + j];
      worst = fmax(worst, fabs(S[(size_t)i * dim + j] - want) / (1 + fabs(want)));
    }
  T_CHECKF(worst < 1e-12, "hessian dim %d n %d: relative error %g", dim, n, worst);
  free(x), free(S);
}

/* ---- 1. GPTQ beats RTN on correlated inputs -------------------------------- */

static void check_solver_vs_rtn(void) {
  const int32_t n = 512, in = 256, out = 48, gs = 64;
  float *x = malloc((size_t)n * in * sizeof *x), *W = malloc((size_t)out * in * sizeof *W);
  float *Wg = malloc((size_t)out * in * sizeof *Wg), *Wr = malloc((size_t)out * in * sizeof *Wr);
  float *Wdq = malloc((size_t)out * in * sizeof *Wdq);
  float *z = malloc((size_t)n * in * sizeof *z),
        *col_scale = malloc((size_t)in * sizeof *col_scale);
  for (uint64_t seed = 1; seed <= 4; seed++) {
    rng_state = 0x1234567ull * seed + 99;
    /* x_t = z_t mixed along a chain (x_k = 0.8 x_{k-1} + z_k) plus a few
     * shared latent factors, then uneven channel scales. */
    for (size_t i = 0; i < (size_t)n * in; i++)
      z[i] = (float)nrand();
    for (int32_t k = 0; k < in; k++)
      col_scale[k] = (float)(0.2 + 2.0 * urand() * urand());
    for (int32_t t = 0; t < n; t++) {
      double f[3] = {nrand(), nrand(), nrand()}, prev = 0;
      for (int32_t k = 0; k < in; k++) {
        prev = 0.8 * prev + z[(size_t)t * in + k] + f[k % 3] * 1.5;
        x[(size_t)t * in + k] = (float)(prev * col_scale[k]);
      }
    }
    for (size_t i = 0; i < (size_t)out * in; i++)
      W[i] = (float)(0.05 * nrand());
    for (int bits = 2; bits <= 4; bits += 2)
      for (int sym = 0; sym <= 1; sym++) {
        qlinear qg, qr;
        T_CHECK(qlinear_alloc(&qg, bits, in, out, gs) == BL_OK &&
                qlinear_alloc(&qr, bits, in, out, gs) == BL_OK);
        double *H = hessian(x, n, in);
        memcpy(Wg, W, (size_t)out * in * sizeof *W);
        gptq_params p = {.bits = bits, .group_size = gs, .sym = sym, .damp = 0.01, .n_threads = 3};
        bl_err err = {0};
        double loss = 0;
        T_CHECKF(gptq_solve(&p, Wg, H, &qg, &loss, &err) == BL_OK, "%s", err.msg);
        rtn(W, out, in, bits, gs, sym, &qr);
        dequant(&qr, Wr);
        dequant(&qg, Wdq);
        /* The solver's W output is the dequantized result. */
        double maxd = 0;
        for (size_t i = 0; i < (size_t)out * in; i++)
          maxd = fmax(maxd, fabs(Wdq[i] - Wg[i]));
        T_CHECKF(maxd < 1e-6, "solver W differs from its q by %g", maxd);
        double eg = out_err(x, n, in, W, Wdq, out), er = out_err(x, n, in, W, Wr, out);
        fprintf(stderr, "solver seed %d w%d %s g%d: ||X dW^T|| gptq %.4f rtn %.4f (ratio %.3f)\n",
                (int)seed, bits, sym ? "sym " : "asym", gs, eg, er, eg / er);
        T_CHECKF(eg < 0.9 * er, "GPTQ error %.4f not below 0.9x RTN's %.4f", eg, er);
        free(H);
        qlinear_free(&qg);
        qlinear_free(&qr);
      }
  }
  free(x), free(W), free(Wg), free(Wr), free(Wdq), free(z), free(col_scale);
}

/* ---- 1b. the blocked sweep against the textbook one --------------------------
 * Column by column over the whole row, every later column updated at once,
 * in double, with U from gptq_hinv_chol (checked in 3): the lazy-batch
 * blocking must not change the result beyond float rounding. */

static void naive_gptq(const float *W0, const double *H, int32_t out, int32_t in,
                       const gptq_params *p, float *Wq) {
  size_t nin = (size_t)in;
  double *Hc = malloc(nin * nin * sizeof *Hc), *diag = malloc(nin * sizeof *diag), mean = 0;
  float *U = malloc(nin * nin * sizeof *U);
  double *w = malloc(nin * sizeof *w);
  memcpy(Hc, H, nin * nin * sizeof *Hc);
  for (size_t i = 0; i < nin; i++)
    mean += diag[i] = H[i * nin + i];
  for (size_t i = 0; i < nin; i++)
    diag[i] += p->damp * mean / in;
  T_CHECK(gptq_hinv_chol(Hc, diag, in, U, 1) == BL_OK);
  for (int32_t r = 0; r < out; r++) {
    for (int32_t k = 0; k < in; k++)
      w[k] = W0[(size_t)r * nin + k];
    float s = 0;
    int32_t z = 0;
    for (int32_t i = 0; i < in; i++) {
      if (i % p->group_size == 0) {
        int32_t len = in - i < p->group_size ? in - i : p->group_size;
        float g[512];
        uint16_t s16;
        for (int32_t k = 0; k < len; k++)
          g[k] = (float)w[i + k];
        quant_group_params(g, len, p->bits, p->sym, &s16, &z);
        s = bl_half_to_float(s16);
      }
      double dq = s * (double)(quant_value((float)w[i], s, z, p->bits) - z);
      double e = (w[i] - dq) / U[(size_t)i * nin + (size_t)i];
      for (int32_t k = i + 1; k < in; k++)
        w[k] -= e * U[(size_t)i * nin + (size_t)k];
      Wq[(size_t)r * nin + (size_t)i] = (float)dq;
    }
  }
  free(Hc), free(diag), free(U), free(w);
}

static void check_sweep_vs_naive(int32_t in, int32_t gs, int bits, bool sym) {
  const int32_t n = 384, out = 16;
  float *x = malloc((size_t)n * in * sizeof *x), *W = malloc((size_t)out * in * sizeof *W);
  float *Wg = malloc((size_t)out * in * sizeof *Wg), *Wn = malloc((size_t)out * in * sizeof *Wn);
  rng_state = 31337 + (uint64_t)in + (uint64_t)gs;
  for (int32_t t = 0; t < n; t++) {
    double prev = 0;
    for (int32_t k = 0; k < in; k++)
      x[(size_t)t * in + k] = (float)(prev = 0.7 * prev + nrand());
  }
  for (size_t i = 0; i < (size_t)out * in; i++)
    W[i] = (float)nrand();
  double *H = hessian(x, n, in);
  gptq_params p = {.bits = bits, .group_size = gs, .sym = sym, .damp = 0.01, .n_threads = 3};
  naive_gptq(W, H, out, in, &p, Wn);
  qlinear ql;
  T_CHECK(qlinear_alloc(&ql, bits, in, out, gs) == BL_OK);
  memcpy(Wg, W, (size_t)out * in * sizeof *W);
  bl_err err = {0};
  T_CHECKF(gptq_solve(&p, Wg, H, &ql, NULL, &err) == BL_OK, "%s", err.msg);
  size_t same = 0, total = (size_t)out * in;
  for (size_t i = 0; i < total; i++)
    same += Wg[i] == Wn[i];
  double eg = out_err(x, n, in, W, Wg, out), en = out_err(x, n, in, W, Wn, out);
  fprintf(stderr, "sweep vs naive in %d g%d w%d %s: %.2f%% weights equal, error %.4f vs %.4f\n", in,
          gs, bits, sym ? "sym" : "asym", 100.0 * same / total, eg, en);
  T_CHECK(same >= total * 99 / 100 && fabs(eg - en) <= 0.01 * en);
  free(x), free(W), free(Wg), free(Wn), free(H);
  qlinear_free(&ql);
}

/* ---- 2. H = I gives RTN exactly ------------------------------------------- */

static void check_identity_is_rtn(int32_t in, int32_t gs, int bits, bool sym) {
  const int32_t out = 24;
  float *W = malloc((size_t)out * in * sizeof *W), *Wg = malloc((size_t)out * in * sizeof *Wg);
  double *H = calloc((size_t)in * in, sizeof *H);
  for (int32_t i = 0; i < in; i++)
    H[(size_t)i * in + i] = 1.0;
  rng_state = 777 + (uint64_t)in * 31 + (uint64_t)gs;
  for (size_t i = 0; i < (size_t)out * in; i++)
    W[i] = (float)(nrand() * (1 + 3 * (i % 7 == 0)));
  memcpy(Wg, W, (size_t)out * in * sizeof *W);
  qlinear qg, qr;
  T_CHECK(qlinear_alloc(&qg, bits, in, out, gs) == BL_OK &&
          qlinear_alloc(&qr, bits, in, out, gs) == BL_OK);
  gptq_params p = {.bits = bits, .group_size = gs, .sym = sym, .damp = 0.01, .n_threads = 2};
  bl_err err = {0};
  T_CHECKF(gptq_solve(&p, Wg, H, &qg, NULL, &err) == BL_OK, "%s", err.msg);
  rtn(W, out, in, bits, gs, sym, &qr);
  size_t ng = (size_t)qg.n_groups * (size_t)out;
  bool same = memcmp(qg.q, qr.q, (size_t)out * in) == 0 &&
              memcmp(qg.scales, qr.scales, ng * 2) == 0 && memcmp(qg.zeros, qr.zeros, ng * 4) == 0;
  T_CHECKF(same, "H = I: GPTQ differs from RTN (in %d, group %d, w%d %s)", in, gs, bits,
           sym ? "sym" : "asym");
  free(W), free(Wg), free(H);
  qlinear_free(&qg);
  qlinear_free(&qr);
}

/* ---- 3. the inverse Hessian factor ------------------------------------------ */

static void check_hinv_chol(int32_t n) {
  /* H = A A^T / n + 0.1 I: SPD and far from diagonal. */
  double *A = malloc((size_t)n * n * sizeof *A), *H = calloc((size_t)n * n, sizeof *H);
  double *diag = malloc((size_t)n * sizeof *diag);
  float *U = malloc((size_t)n * n * sizeof *U);
  rng_state = 4242 + (uint64_t)n;
  for (size_t i = 0; i < (size_t)n * n; i++)
    A[i] = nrand() + 0.5;
  for (int32_t i = 0; i < n; i++)
    for (int32_t j = i; j < n; j++) {
      double s = 0;
      for (int32_t k = 0; k < n; k++)
        s += A[(size_t)i * n + k] * A[(size_t)j * n + k];
      H[(size_t)i * n + j] = s / n + (i == j ? 0.1 : 0);
    }
  for (int32_t i = 0; i < n; i++)
    diag[i] = H[(size_t)i * n + i];
  T_CHECK(gptq_hinv_chol(H, diag, n, U, 3) == BL_OK);
  /* Full symmetric H again from the (kept) upper triangle. */
  for (int32_t i = 0; i < n; i++)
    for (int32_t j = 0; j < i; j++)
      H[(size_t)i * n + j] = H[(size_t)j * n + i];
  double worst = 0, lower = 0;
  for (int32_t i = 0; i < n; i++)
    for (int32_t j = 0; j < n; j++) {
      if (j < i) lower = fmax(lower, fabs(U[(size_t)i * n + j]));
      /* (U^T U H)[i][j] = sum_k (U^T U)[i][k] H[k][j] */
      double s = 0;
      for (int32_t k = 0; k < n; k++) {
        double utu = 0;
        for (int32_t m = 0; m <= (i < k ? i : k); m++)
          utu += (double)U[(size_t)m * n + i] * U[(size_t)m * n + k];
        s += utu * H[(size_t)k * n + j];
      }
      worst = fmax(worst, fabs(s - (i == j)));
    }
  fprintf(stderr, "hinv_chol n=%d: max |U^T U H - I| %.2e, max |strict lower U| %g\n", n, worst,
          lower);
  T_CHECK(worst < 1e-3 && lower == 0);
  free(A), free(H), free(diag), free(U);
}

/* ---- 4. whole models --------------------------------------------------------- */

/* Logits [len][vocab] of one prefill. */
static bool logits_of(model *m, const int32_t *ids, int32_t len, float *logits) {
  bl_err err = {0};
  kv_pool kv;
  int32_t bs = 16, nb = (len + bs - 1) / bs;
  if (kv_pool_init(&kv, m->be, BK_KV_F16, m->cfg.n_layers, m->cfg.n_kv_heads, m->cfg.head_dim, bs,
                   nb, &err) != BL_OK)
    return false;
  kv_seq seq = {0};
  bool ok = kv_seq_reserve(&kv, &seq, len) == BL_OK;
  int32_t *pos = malloc((size_t)len * 4 * sizeof *pos), *sq = pos + len, *slots = sq + len,
          *out = slots + len;
  for (int32_t t = 0; t < len && ok; t++) {
    pos[t] = t;
    sq[t] = 0;
    slots[t] = kv_seq_slot(&kv, &seq, t);
    out[t] = t;
  }
  model_batch b = {.n_tok = len,
                   .ids = ids,
                   .pos = pos,
                   .seq = sq,
                   .slots = slots,
                   .n_seq = 1,
                   .max_blocks = seq.n_blocks,
                   .block_tables = seq.blocks,
                   .n_out = len,
                   .out_tok = out};
  ok = ok && model_forward(m, kv.dev, &b, logits, &err) == BL_OK;
  if (!ok) fprintf(stderr, "forward: %s\n", err.msg);
  free(pos);
  kv_seq_free(&kv, &seq);
  kv_pool_destroy(&kv);
  return ok;
}

/* Mean over rows of KL(softmax(ref) || softmax(got)). */
static double mean_kl(const float *ref, const float *got, int32_t rows, int32_t vocab) {
  double total = 0;
  for (int32_t r = 0; r < rows; r++) {
    const float *a = ref + (size_t)r * vocab, *b = got + (size_t)r * vocab;
    double ma = -INFINITY, mb = -INFINITY, za = 0, zb = 0, kl = 0;
    for (int32_t i = 0; i < vocab; i++)
      ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
    for (int32_t i = 0; i < vocab; i++)
      za += exp(a[i] - ma), zb += exp(b[i] - mb);
    for (int32_t i = 0; i < vocab; i++) {
      double la = a[i] - ma - log(za), lb = b[i] - mb - log(zb);
      kl += exp(la) * (la - lb);
    }
    total += kl;
  }
  return total / rows;
}

/* A held-out token sequence and the fp16 model's logits on it. */
typedef struct eval_set {
  const char *what;
  const int32_t *ids;
  int32_t n;
  bool checked; /* GPTQ must not be worse than RTN on it (else: reported only) */
  float *ref;   /* fp16 logits [n][vocab] */
} eval_set;

typedef struct e2e {
  const char *name, *src;
  int32_t group_size, n_calib;
  const int32_t *calib;
  eval_set *evals;
  int n_evals;
  bool w2; /* also at 2 bits (4 bits always) */
} e2e;

/* Quantize src at bits by method into a temp folder, load it and write the
 * mean KL of its logits against the fp16 ones to kl[e->n_evals]. */
static void quantized_kl(bk_backend *be, const e2e *e, int bits, model_quant_method method,
                         double *kl, double *secs) {
  char out[] = "/tmp/ballast-gptq-XXXXXX";
  T_CHECK(mkdtemp(out) != NULL);
  bl_err err = {0};
  model *fp = NULL, *back = NULL;
  model_load_opts o16 = {.precision = MODEL_PREC_FP16};
  model_export_opts eo = {.bits = bits,
                          .group_size = e->group_size,
                          .sym = false,
                          .method = method,
                          .calib_ids = e->calib,
                          .n_calib = e->n_calib};
  for (int i = 0; i < e->n_evals; i++)
    kl[i] = INFINITY;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  T_CHECKF(model_load(e->src, &o16, be, &fp, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(fp && model_export_gptq(fp, out, &eo, &err) == BL_OK, "%s", err.msg);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  *secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  T_CHECKF(model_load(out, NULL, be, &back, &err) == BL_OK, "%s", err.msg);
  for (int i = 0; back && i < e->n_evals; i++) {
    const eval_set *ev = &e->evals[i];
    size_t nv = (size_t)ev->n * (size_t)back->cfg.vocab;
    T_CHECK(back->prec == (bits == 4 ? MODEL_PREC_W4 : MODEL_PREC_W2));
    float *lg = malloc(nv * sizeof *lg);
    if (logits_of(back, ev->ids, ev->n, lg)) kl[i] = mean_kl(ev->ref, lg, ev->n, back->cfg.vocab);
    /* After GPTQ the in-memory model holds the quantized linears: it must
     * compute what the folder holds. */
    if (method == MODEL_QUANT_GPTQ && fp && i == 0) {
      float *lm = malloc(nv * sizeof *lm);
      if (logits_of(fp, ev->ids, ev->n, lm)) {
        double d = 0;
        for (size_t k = 0; k < nv; k++)
          d = fmax(d, fabs(lm[k] - lg[k]));
        T_CHECKF(d < 1e-3, "in-memory GPTQ model and the written folder differ by %g", d);
      }
      free(lm);
    }
    free(lg);
  }
  model_free(fp);
  model_free(back);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
  T_CHECK(system(cmd) == 0);
}

static void check_model_e2e(bk_backend *be, e2e *e) {
  bl_err err = {0};
  model *fp = NULL;
  model_load_opts o16 = {.precision = MODEL_PREC_FP16};
  T_CHECKF(model_load(e->src, &o16, be, &fp, &err) == BL_OK, "%s", err.msg);
  if (!fp) return;
  for (int i = 0; i < e->n_evals; i++) {
    eval_set *ev = &e->evals[i];
    ev->ref = malloc((size_t)ev->n * (size_t)fp->cfg.vocab * sizeof *ev->ref);
    T_CHECK(logits_of(fp, ev->ids, ev->n, ev->ref));
  }
  model_free(fp);
  for (int bits = 4; bits >= (e->w2 ? 2 : 4); bits -= 2) {
    double tg, tr, kg[4], kr[4];
    quantized_kl(be, e, bits, MODEL_QUANT_GPTQ, kg, &tg);
    quantized_kl(be, e, bits, MODEL_QUANT_RTN, kr, &tr);
    fprintf(stderr,
            "%s w%d g%d asym, %d calibration tokens, quantized in %.1f s (gptq) / %.1f s (rtn):\n",
            e->name, bits, e->group_size, e->n_calib, tg, tr);
    for (int i = 0; i < e->n_evals; i++) {
      const eval_set *ev = &e->evals[i];
      fprintf(stderr, "  mean KL to fp16 on %d tokens of %s: gptq %.5f, rtn %.5f, ratio %.3f%s\n",
              ev->n, ev->what, kg[i], kr[i], kg[i] / kr[i],
              ev->checked ? "" : " (reported, not checked)");
      if (ev->checked)
        T_CHECKF(kg[i] <= kr[i], "%s w%d on %s: GPTQ KL %.5f worse than RTN %.5f", e->name, bits,
                 ev->what, kg[i], kr[i]);
    }
  }
  for (int i = 0; i < e->n_evals; i++)
    free(e->evals[i].ref);
}

static void check_tiny(bk_backend *be, const char *dir) {
  char src[1024];
  snprintf(src, sizeof src, "%s/tiny-qwen3", dir);
  model *m = NULL;
  bl_err err = {0};
  model_load_opts o16 = {.precision = MODEL_PREC_FP16};
  T_CHECKF(model_load(src, &o16, be, &m, &err) == BL_OK, "%s", err.msg);
  if (!m) return;
  enum { N_CAL = 2048, N_EVAL = 128 };
  int32_t *cal = malloc(N_CAL * sizeof *cal), *ev = malloc(N_EVAL * sizeof *ev);
  model_calib_random(m, N_CAL, 1, cal);
  model_calib_random(m, N_EVAL, 2, ev);
  model_free(m);
  eval_set es = {.what = "pseudo-random ids", .ids = ev, .n = N_EVAL, .checked = true};
  e2e e = {.name = "tiny-qwen3",
           .src = src,
           .group_size = 32,
           .n_calib = N_CAL,
           .calib = cal,
           .evals = &es,
           .n_evals = 1,
           .w2 = true};
  check_model_e2e(be, &e);
  free(cal), free(ev);
}

/* SmolLM2 is checked at w4 g64 only. At 2 bits this 135M model does not
 * survive either method (mean KL 6 to 12 nats on held-out text: unrelated
 * distributions), and comparing two broken models says nothing; there
 * GPTQ with the test's 1024 calibration tokens also overfits them (w2 g32,
 * held-out docstrings: RTN 6.7; GPTQ 10.6 with 1024 tokens, 7.1 with 4096,
 * 5.2 with 4096 and damp 0.1). 2-bit GPTQ is checked on tiny-qwen3 and by
 * the solver tests above.
 *
 * The prose below was written for this test: unlike the calibration text
 * (Python docstrings). GPTQ fits the calibration distribution; on text far
 * from it a 135M model quantized by GPTQ can do worse than RTN (measured:
 * KL 0.42 vs 0.35 at w4 g64 with 4096 calibration tokens), so this set is
 * reported, not checked. The checked set is held-out docstrings of modules
 * the calibration text does not include (tests/data/calib/heldout.txt). */
static const char *k_prose =
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. From the top she could "
    "see the fishing boats returning to the harbour, their lamps swinging with the waves. In "
    "winter "
    "the storms came from the north, and the beam had to cut through sleet and fog so thick that "
    "the "
    "rocks below disappeared entirely. She kept a logbook of every ship that passed, noting the "
    "weather, the wind and the state of the sea. Years later, historians used those notes to "
    "reconstruct how the coastal trade had changed over half a century: fewer sailing ships, more "
    "steamers, and finally the large container vessels that no longer needed a keeper at all.";

static char *read_text(const char *dir, const char *name, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/calib/%s", dir, name);
  FILE *f = fopen(path, "rb");
  T_CHECKF(f != NULL, "%s: cannot open", path);
  if (!f) return NULL;
  char *text = malloc(1 << 20);
  *len = fread(text, 1, (1 << 20) - 1, f);
  fclose(f);
  return text;
}

static void check_smollm2(bk_backend *be, const char *dir) {
  /* Minutes of CPU: scripts/test.sh runs it in the release build only
   * (BALLAST_SKIP_SLOW_MODEL=1 in the sanitizer build). */
  const char *gguf = getenv("BALLAST_SMOLLM2_GGUF"), *skip = getenv("BALLAST_SKIP_SLOW_MODEL");
  if (!gguf || !*gguf || (skip && *skip == '1')) {
    fprintf(
        stderr,
        "SmolLM2 GPTQ check skipped (BALLAST_SMOLLM2_GGUF unset or BALLAST_SKIP_SLOW_MODEL=1)\n");
    return;
  }
  size_t len = 0, hlen = 0;
  char *text = read_text(dir, "calib.txt", &len), *held = read_text(dir, "heldout.txt", &hlen);
  model *m = NULL;
  bl_err err = {0};
  model_load_opts o16 = {.precision = MODEL_PREC_FP16};
  T_CHECKF(model_load(gguf, &o16, be, &m, &err) == BL_OK, "%s", err.msg);
  int32_t *cal = NULL, n_cal = 0, *ho = NULL, *pr = NULL;
  size_t n_ho = 0, n_pr = 0;
  /* 1024 tokens keep the test short; `ballast quantize` defaults to 4096. */
  if (m && text && held) {
    T_CHECKF(model_calib_from_text(m, text, len, 1024, 256, &cal, &n_cal, &err) == BL_OK, "%s",
             err.msg);
    T_CHECKF(tok_encode(m->tok, held, hlen, false, &ho, &n_ho, &err) == BL_OK, "%s", err.msg);
    T_CHECKF(tok_encode(m->tok, k_prose, strlen(k_prose), false, &pr, &n_pr, &err) == BL_OK, "%s",
             err.msg);
  }
  model_free(m);
  if (cal && ho && pr) {
    eval_set es[2] = {{.what = "held-out docstrings",
                       .ids = ho,
                       .n = n_ho < 512 ? (int32_t)n_ho : 512,
                       .checked = true},
                      {.what = "prose", .ids = pr, .n = (int32_t)n_pr}};
    e2e e = {.name = "SmolLM2-135M",
             .src = gguf,
             .group_size = 64,
             .n_calib = n_cal,
             .calib = cal,
             .evals = es,
             .n_evals = 2};
    check_model_e2e(be, &e);
  }
  free(cal), free(ho), free(pr), free(text), free(held);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/data";
  check_hessian(13, 7);
  check_hessian(600, 10);
  check_hinv_chol(1);
  check_hinv_chol(150);
  check_identity_is_rtn(96, 32, 4, false);
  check_identity_is_rtn(192, 64, 2, true);
  check_identity_is_rtn(512, 256, 2, false);
  check_identity_is_rtn(320, 160, 4, true);
  check_identity_is_rtn(200, 96, 4, false); /* a short last group */
  check_solver_vs_rtn();
  check_sweep_vs_naive(320, 32, 4, false);  /* 4 groups per 128-column block */
  check_sweep_vs_naive(320, 160, 2, true);  /* blocks of 80, 2 per group */
  check_sweep_vs_naive(384, 384, 4, false); /* one group over 3 blocks */
  bl_err err = {0};
  bk_backend *be = NULL;
  if (bk_cpu_create(0, &be, &err) != BL_OK) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  check_tiny(be, dir);
  check_smollm2(be, dir);
  bk_destroy(be);
  return T_DONE();
}
