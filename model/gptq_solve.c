/* GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, arXiv:2210.17323) for one
 * linear layer: quantize W [out][in] column by column so that the layer's
 * output on calibration inputs X [n][in] moves as little as possible,
 * min ||X W^T - X Wq^T||_F^2, whose Hessian in each row of W is
 * H = 2/n X^T X [in][in].
 *
 * The steps, as in the paper's reference code (desc_act / act-order is not
 * done: columns go in natural order, so g_idx stays k / group_size):
 *  - dead inputs (H_ii == 0, the column never sees a nonzero activation):
 *    W[:, i] = 0 and H_ii = 1;
 *  - damping: H += damp * mean(diag(H)) * I (retried 10x larger, up to
 *    three times, if H is still not numerically positive definite);
 *  - U = upper Cholesky factor of H^-1 (U^T U = H^-1), in double;
 *  - columns in blocks of at most 128: quantize column i on the grid of its
 *    group, err = (w_i - q_i) / U_ii, subtract err * U[i, j] from every
 *    later column j of the block at once and from the columns after the
 *    block in one batched update when the block ends (the "lazy batch");
 *  - the grid of a group (quant_group_params: the same grid as RTN's
 *    quant_row) is taken from the weights as updated so far when the
 *    group's first column is reached. Block lengths are chosen so that a
 *    group never starts inside a block it does not end in, so "as updated
 *    so far" holds for every column of the group.
 *
 * Rows of W are independent given U, so threads take chunks of rows and run
 * the whole column sweep on them without synchronising. W and U are float
 * in the sweep (the reference is float32 throughout); H, its Cholesky
 * factor and the triangular inverse are double.
 *
 * Sizes for an 8B model (in up to 12288, the down projection): H is
 * in^2 doubles (1.2 GB), U in^2 floats (0.6 GB), W out*in floats (0.2 GB);
 * the factorization is O(in^3) (about 1e12 flops for down_proj). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bl_half.h"
#include "model_internal.h"

/* ---- a parallel-for over [0, n) with threads made per call ---------------
 * Calls are few (at most a few hundred per linear) and each runs for
 * milliseconds or more, so creating threads each time costs little; chunks of `grain` come from an
 * atomic counter so triangular work balances. */

typedef void (*par_fn)(void *arg, int64_t i0, int64_t i1);

typedef struct par_job {
  par_fn fn;
  void *arg;
  int64_t n, grain;
  atomic_llong next;
} par_job;

static void *par_worker(void *p) {
  par_job *j = p;
  for (;;) {
    int64_t i0 = atomic_fetch_add(&j->next, j->grain);
    if (i0 >= j->n) break;
    j->fn(j->arg, i0, i0 + j->grain < j->n ? i0 + j->grain : j->n);
  }
  return NULL;
}

static int threads_or_online(int n_threads) {
  if (n_threads > 0) return n_threads;
  long c = sysconf(_SC_NPROCESSORS_ONLN);
  return c > 0 ? (int)c : 1;
}

static void par_for(int n_threads, int64_t n, int64_t grain, par_fn fn, void *arg) {
  par_job j = {.fn = fn, .arg = arg, .n = n, .grain = grain > 0 ? grain : 1};
  atomic_init(&j.next, 0);
  int64_t chunks = (n + j.grain - 1) / j.grain;
  int nt = threads_or_online(n_threads);
  if (nt > chunks) nt = (int)chunks;
  if (nt > 256) nt = 256;
  pthread_t tid[256];
  int started = 0;
  /* A thread that cannot be created just leaves its chunks to the others. */
  for (int t = 1; t < nt; t++)
    if (pthread_create(&tid[started], NULL, par_worker, &j) == 0) started++;
  par_worker(&j);
  for (int t = 0; t < started; t++)
    pthread_join(tid[t], NULL);
}

/* ---- y -= sum of 4 scaled rows --------------------------------------------
 * The trailing update of the factorization, the triangular inverse and the
 * sweep's lazy batch are all y -= sum_k a_k x_k over many rows x_k. Taking
 * four terms per pass loads and stores y once per four multiply-adds. */

static void axpy4_d(double *restrict y, const double *a, const double *restrict x0,
                    const double *restrict x1, const double *restrict x2, const double *restrict x3,
                    int64_t len) {
  double a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t j = 0; j < len; j++)
    y[j] -= a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + a3 * x3[j];
}

/* y -= sum_{k<nk} a[k] * (x + k*ld), any nk. */
static void axpy_rows_d(double *restrict y, const double *a, const double *x, size_t ld, int nk,
                        int64_t len) {
  int k = 0;
  for (; k + 4 <= nk; k += 4)
    axpy4_d(y, a + k, x + (size_t)k * ld, x + (size_t)(k + 1) * ld, x + (size_t)(k + 2) * ld,
            x + (size_t)(k + 3) * ld, len);
  for (; k < nk; k++) {
    const double *restrict xk = x + (size_t)k * ld;
    for (int64_t j = 0; j < len; j++)
      y[j] -= a[k] * xk[j];
  }
}

static void axpy4_f(float *restrict y, const float *a, const float *restrict x0,
                    const float *restrict x1, const float *restrict x2, const float *restrict x3,
                    int64_t len) {
  float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t j = 0; j < len; j++)
    y[j] -= a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + a3 * x3[j];
}

static void axpy_rows_f(float *restrict y, const float *a, const float *x, size_t ld, int nk,
                        int64_t len) {
  int k = 0;
  for (; k + 4 <= nk; k += 4)
    axpy4_f(y, a + k, x + (size_t)k * ld, x + (size_t)(k + 1) * ld, x + (size_t)(k + 2) * ld,
            x + (size_t)(k + 3) * ld, len);
  for (; k < nk; k++) {
    const float *restrict xk = x + (size_t)k * ld;
    for (int64_t j = 0; j < len; j++)
      y[j] -= a[k] * xk[j];
  }
}

/* ---- Hessian accumulation ------------------------------------------------
 * S += X^T X on the upper triangle, in double. Threads take blocks of 4
 * rows i; for each tile of columns j >= i they run over the tokens 4 at a
 * time, so each load and store of S[i][j] carries 4 multiply-adds and each
 * x[t][j] serves 4 rows (the j loop vectorizes). A block's few entries left
 * of the diagonal get computed too; they land in the strict lower triangle,
 * which no reader of S looks at. */

typedef struct hess_job {
  double *S;
  const float *x;
  int32_t dim, n;
} hess_job;

enum { HESS_JT = 512 }; /* columns per tile: 4 rows x 512 doubles = 16 KB of S in L1 */

static void hess_block(double *restrict s0, double *restrict s1, double *restrict s2,
                       double *restrict s3, const double a[4][4], const float *restrict x0,
                       const float *restrict x1, const float *restrict x2, const float *restrict x3,
                       int64_t len) {
  for (int64_t j = 0; j < len; j++) {
    double y0 = x0[j], y1 = x1[j], y2 = x2[j], y3 = x3[j];
    s0[j] += a[0][0] * y0 + a[0][1] * y1 + a[0][2] * y2 + a[0][3] * y3;
    s1[j] += a[1][0] * y0 + a[1][1] * y1 + a[1][2] * y2 + a[1][3] * y3;
    s2[j] += a[2][0] * y0 + a[2][1] * y1 + a[2][2] * y2 + a[2][3] * y3;
    s3[j] += a[3][0] * y0 + a[3][1] * y1 + a[3][2] * y2 + a[3][3] * y3;
  }
}

static void hess_rows(void *arg, int64_t b0, int64_t b1) {
  const hess_job *h = arg;
  size_t dim = (size_t)h->dim;
  static const float zeros[HESS_JT]; /* stands in for tokens past n */
  double dummy[HESS_JT];             /* stands in for rows past dim */
  for (int64_t b = b0; b < b1; b++) {
    int64_t i0 = 4 * b;
    int nr = h->dim - i0 < 4 ? (int)(h->dim - i0) : 4;
    for (int64_t jt = i0; jt < h->dim; jt += HESS_JT) {
      int64_t len = jt + HESS_JT < h->dim ? HESS_JT : h->dim - jt;
      double *s[4];
      for (int r = 0; r < 4; r++)
        s[r] = r < nr ? h->S + (size_t)(i0 + r) * dim + (size_t)jt : dummy;
      for (int32_t t = 0; t < h->n; t += 4) {
        const float *x[4];
        double a[4][4];
        for (int k = 0; k < 4; k++) {
          const float *row = t + k < h->n ? h->x + (size_t)(t + k) * dim : NULL;
          x[k] = row ? row + jt : zeros;
          for (int r = 0; r < 4; r++)
            a[r][k] = row && r < nr ? (double)row[i0 + r] : 0.0;
        }
        hess_block(s[0], s[1], s[2], s[3], (const double(*)[4])a, x[0], x[1], x[2], x[3], len);
      }
    }
  }
}

void gptq_hessian_add(double *S, int32_t dim, const float *x, int32_t n, int n_threads) {
  hess_job h = {.S = S, .x = x, .dim = dim, .n = n};
  par_for(n_threads, (dim + 3) / 4, 2, hess_rows, &h);
}

/* ---- U = upper Cholesky factor of H^-1 ------------------------------------
 * With J the reversal permutation and J H J = L L^T (L lower):
 * H^-1 = J L^-T L^-1 J = (J L^-1 J)^T (J L^-1 J), and J L^-1 J is upper
 * triangular with a positive diagonal, so it is the unique upper factor U.
 * That is one Cholesky and one triangular inverse (2/3 n^3 flops) instead
 * of the reference's Cholesky, cholesky_inverse and a second Cholesky.
 *
 * A = J H J lives in H's strict lower triangle (A[i][j], j < i, is
 * H[n-1-i][n-1-j], an element of H's strict upper triangle, so the two never
 * overlap) and its diagonal in a separate array, so H itself survives for
 * the next linear that shares it. */

enum { CH_NB = 64, CH_JT = 256, INV_CT = 32 };

typedef struct chol_job {
  double *A, *ld;   /* A row-major [n][n], strict lower used; ld[n] its diagonal */
  const double *PT; /* panel transposed [CH_NB][n] */
  int32_t n, k0, k1;
  float *U;
} chol_job;

/* Panel rows i >= k1: L[i][k] = (A[i][k] - sum_{m<k} L[i][m] L[k][m]) / L[k][k]. */
static void chol_panel(void *arg, int64_t i0, int64_t i1) {
  const chol_job *c = arg;
  size_t n = (size_t)c->n;
  for (int64_t i = i0 + c->k1; i < i1 + c->k1; i++) {
    double *ai = c->A + (size_t)i * n;
    for (int32_t k = c->k0; k < c->k1; k++) {
      const double *ak = c->A + (size_t)k * n;
      double s = ai[k];
      for (int32_t m = c->k0; m < k; m++)
        s -= ai[m] * ak[m];
      ai[k] = s / c->ld[k];
    }
  }
}

/* Trailing update, rows i >= k1, columns k1 <= j < i:
 * A[i][j] -= sum_{m in panel} L[i][m] L[j][m], with L[j][m] read from the
 * transposed panel so the inner loop runs along contiguous j. The diagonal
 * (in ld) gets the same update. */
static void chol_trail(void *arg, int64_t i0, int64_t i1) {
  const chol_job *c = arg;
  size_t n = (size_t)c->n;
  int32_t nb = c->k1 - c->k0;
  i0 += c->k1;
  i1 += c->k1;
  for (int64_t jt = c->k1; jt < i1; jt += CH_JT) {
    for (int64_t i = i0; i < i1; i++) {
      int64_t je = jt + CH_JT < i ? jt + CH_JT : i;
      if (je <= jt) continue;
      double *ai = c->A + (size_t)i * n;
      /* The panel part of row i (columns k0..k1) is left of jt: no overlap. */
      axpy_rows_d(ai + jt, ai + c->k0, c->PT + jt, n, nb, je - jt);
    }
  }
  for (int64_t i = i0; i < i1; i++) {
    const double *ai = c->A + (size_t)i * n;
    double s = 0;
    for (int32_t m = c->k0; m < c->k1; m++)
      s += ai[m] * ai[m];
    c->ld[i] -= s;
  }
}

/* Column tiles of X = L^-1 (lower): row by row, x_i = (e_i - sum_{k<i}
 * L[i][k] x_k) / L[i][i] restricted to the tile's columns, then written
 * flipped into U[n-1-i][n-1-c]. Tiles are independent. */
static void chol_inverse(void *arg, int64_t t0, int64_t t1) {
  const chol_job *c = arg;
  size_t n = (size_t)c->n;
  for (int64_t t = t0; t < t1; t++) {
    int64_t c0 = t * INV_CT, ct = c->n - c0 < INV_CT ? c->n - c0 : INV_CT;
    double *T = malloc((size_t)(c->n - c0) * INV_CT * sizeof *T); /* rows c0..n-1 */
    if (!T) continue; /* U keeps NaN there; the caller checks */
    for (int64_t i = c0; i < c->n; i++) {
      double *x = T + (size_t)(i - c0) * INV_CT;
      for (int c2 = 0; c2 < INV_CT; c2++)
        x[c2] = c0 + c2 == i ? 1.0 : 0.0;
      const double *li = c->A + (size_t)i * n;
      /* Rows k in [c0, i) of T lie before row i: no overlap with x. */
      for (int64_t k = c0; k < i; k += 256) {
        int nk = i - k < 256 ? (int)(i - k) : 256;
        axpy_rows_d(x, li + k, T + (size_t)(k - c0) * INV_CT, INV_CT, nk, INV_CT);
      }
      double d = c->ld[i];
      float *urow = c->U + (size_t)(c->n - 1 - i) * n;
      for (int c2 = 0; c2 < INV_CT; c2++)
        x[c2] /= d;
      for (int64_t c2 = 0; c2 < ct && c0 + c2 <= i; c2++)
        urow[n - 1 - (size_t)(c0 + c2)] = (float)x[c2];
    }
    free(T);
  }
}

bl_status gptq_hinv_chol(double *H, const double *diag, int32_t n, float *U, int n_threads) {
  size_t nn = (size_t)n;
  double *ld = malloc(nn * sizeof *ld), *PT = malloc((size_t)CH_NB * nn * sizeof *PT);
  if (!ld || !PT) {
    free(ld), free(PT);
    return BL_ENOMEM;
  }
  for (size_t i = 0; i < nn; i++) {
    ld[i] = diag[nn - 1 - i];
    for (size_t j = 0; j < i; j++)
      H[i * nn + j] = H[(nn - 1 - i) * nn + (nn - 1 - j)];
  }
  bl_status st = BL_OK;
  chol_job c = {.A = H, .ld = ld, .PT = PT, .n = n, .U = U};
  for (int32_t k0 = 0; k0 < n && !st; k0 += CH_NB) {
    int32_t k1 = k0 + CH_NB < n ? k0 + CH_NB : n;
    /* Diagonal block, unblocked (left-looking within the block). */
    for (int32_t k = k0; k < k1 && !st; k++) {
      const double *ak = H + (size_t)k * nn;
      double d = ld[k];
      for (int32_t m = k0; m < k; m++)
        d -= ak[m] * ak[m];
      if (!(d > 0.0)) {
        st = BL_EINVAL;
        break;
      }
      ld[k] = sqrt(d);
      for (int32_t i = k + 1; i < k1; i++) {
        double *ai = H + (size_t)i * nn, s = ai[k];
        for (int32_t m = k0; m < k; m++)
          s -= ai[m] * ak[m];
        ai[k] = s / ld[k];
      }
    }
    if (st || k1 == n) break;
    c.k0 = k0;
    c.k1 = k1;
    par_for(n_threads, n - k1, 16, chol_panel, &c);
    for (int32_t m = k0; m < k1; m++)
      for (int32_t j = k1; j < n; j++)
        PT[(size_t)(m - k0) * nn + (size_t)j] = H[(size_t)j * nn + (size_t)m];
    par_for(n_threads, n - k1, 16, chol_trail, &c);
  }
  if (!st) {
    memset(U, 0, nn * nn * sizeof *U);
    for (size_t i = 0; i < nn; i++)
      U[i * nn + i] = NAN; /* overwritten unless a tile ran out of memory */
    par_for(n_threads, (n + INV_CT - 1) / INV_CT, 1, chol_inverse, &c);
    for (size_t i = 0; i < nn && !st; i++)
      if (!isfinite(U[i * nn + i])) st = BL_ENOMEM;
  }
  free(ld);
  free(PT);
  return st;
}

/* ---- the column sweep ---------------------------------------------------- */

enum { SWEEP_ROWS = 8, SWEEP_JT = 512, SWEEP_MAX_BLOCK = 128 };

typedef struct sweep_job {
  float *W;
  const float *U;
  qlinear *ql;
  int32_t in, out, gs, block, bits;
  bool sym;
  double *row_loss; /* [out] */
} sweep_job;

/* Block length: at most 128, and either a multiple of the group size (groups
 * lie inside blocks) or a divisor of it (groups start at block starts). */
static int32_t sweep_block(int32_t gs) {
  if (gs <= SWEEP_MAX_BLOCK) return SWEEP_MAX_BLOCK / gs * gs;
  for (int32_t b = SWEEP_MAX_BLOCK; b > 1; b--)
    if (gs % b == 0) return b;
  return 1;
}

static void sweep_rows(void *arg, int64_t r0, int64_t r1) {
  const sweep_job *j = arg;
  size_t in = (size_t)j->in, out = (size_t)j->out;
  float E[SWEEP_ROWS][SWEEP_MAX_BLOCK]; /* scaled errors of the current block */
  float scale[SWEEP_ROWS];
  int32_t zero[SWEEP_ROWS];
  double loss[SWEEP_ROWS] = {0};
  int32_t nr = (int32_t)(r1 - r0);
  for (int32_t i1 = 0; i1 < j->in; i1 += j->block) {
    int32_t i2 = i1 + j->block < j->in ? i1 + j->block : j->in;
    for (int32_t r = 0; r < nr; r++) {
      size_t row = (size_t)r0 + (size_t)r;
      float *w = j->W + row * in;
      uint8_t *q = j->ql->q + row * in;
      for (int32_t i = i1; i < i2; i++) {
        if (i % j->gs == 0) {
          int32_t g = i / j->gs, len = j->in - i < j->gs ? j->in - i : j->gs;
          uint16_t s16;
          quant_group_params(w + i, len, j->bits, j->sym, &s16, &zero[r]);
          scale[r] = bl_half_to_float(s16);
          j->ql->scales[(size_t)g * out + row] = s16;
          j->ql->zeros[(size_t)g * out + row] = zero[r];
        }
        uint8_t qv = quant_value(w[i], scale[r], zero[r], j->bits);
        float dq = scale[r] * (float)((int32_t)qv - zero[r]);
        const float *u = j->U + (size_t)i * in;
        float e = (w[i] - dq) / u[i];
        loss[r] += (double)e * e;
        q[i] = qv;
        w[i] = dq;
        for (int32_t k = i + 1; k < i2; k++)
          w[k] -= e * u[k];
        E[r][i - i1] = e;
      }
    }
    /* Lazy batch: W[:, i2:] -= E @ U[i1:i2, i2:], tiled along columns so a
     * tile of U's rows is reused across the chunk's rows. */
    for (int32_t jt = i2; jt < j->in; jt += SWEEP_JT) {
      int32_t je = jt + SWEEP_JT < j->in ? jt + SWEEP_JT : j->in;
      for (int32_t r = 0; r < nr; r++) {
        float *w = j->W + ((size_t)r0 + (size_t)r) * in;
        axpy_rows_f(w + jt, E[r], j->U + (size_t)i1 * in + jt, in, i2 - i1, je - jt);
      }
    }
  }
  for (int32_t r = 0; r < nr; r++)
    j->row_loss[r0 + r] = loss[r];
}

bl_status gptq_hinv_build(double *H, int32_t n, const gptq_params *p, gptq_hinv *h, bl_err *err) {
  size_t nn = (size_t)n;
  *h = (gptq_hinv){.n = n};
  double *diag = malloc(nn * sizeof *diag);
  h->U = malloc(nn * nn * sizeof *h->U);
  h->dead = calloc(nn, 1);
  if (!diag || !h->U || !h->dead) {
    free(diag);
    gptq_hinv_free(h);
    return bl_fail(err, BL_ENOMEM, "gptq: out of memory for a %d x %d inverse Hessian", n, n);
  }
  double mean = 0;
  for (size_t i = 0; i < nn; i++) {
    diag[i] = H[i * nn + i];
    if (diag[i] == 0.0) { /* dead input: its weights cannot matter (zeroed in the sweep) */
      diag[i] = 1.0;
      h->dead[i] = 1;
    }
    mean += diag[i];
  }
  mean /= (double)n;
  double damp = p->damp > 0 ? p->damp : 0.01;
  bl_status st;
  for (int attempt = 0;; attempt++) {
    for (size_t i = 0; i < nn; i++)
      diag[i] += damp * mean;
    st = gptq_hinv_chol(H, diag, n, h->U, p->n_threads);
    if (st != BL_EINVAL || attempt == 3) break;
    for (size_t i = 0; i < nn; i++)
      diag[i] -= damp * mean;
    damp *= 10; /* as GPTQModel does: more damping until H factors */
  }
  free(diag);
  h->damp = damp;
  if (st) {
    gptq_hinv_free(h);
    return bl_fail(err, st,
                   st == BL_ENOMEM ? "gptq: out of memory inverting a %d x %d Hessian"
                                   : "gptq: the %d x %d Hessian is not positive definite",
                   n, n);
  }
  return BL_OK;
}

void gptq_hinv_free(gptq_hinv *h) {
  free(h->U);
  free(h->dead);
  h->U = NULL;
  h->dead = NULL;
}

bl_status gptq_quantize(const gptq_params *p, const gptq_hinv *h, float *W, qlinear *ql,
                        double *loss, bl_err *err) {
  int32_t in = ql->in, out = ql->out;
  if (p->bits != ql->bits || p->group_size != ql->group_size || in != h->n || out <= 0 ||
      p->group_size <= 0 || (p->bits != 2 && p->bits != 4 && p->bits != 8))
    return bl_fail(err, BL_EINVAL, "gptq: inconsistent parameters (%d bits, group %d, %dx%d, H %d)",
                   p->bits, p->group_size, out, in, h->n);
  double *row_loss = malloc((size_t)out * sizeof *row_loss);
  if (!row_loss) return bl_fail(err, BL_ENOMEM, "gptq: out of memory");
  for (size_t i = 0; i < (size_t)in; i++)
    if (h->dead[i])
      for (int32_t r = 0; r < out; r++)
        W[(size_t)r * (size_t)in + i] = 0.0f;
  sweep_job j = {.W = W,
                 .U = h->U,
                 .ql = ql,
                 .in = in,
                 .out = out,
                 .gs = p->group_size,
                 .block = sweep_block(p->group_size),
                 .bits = p->bits,
                 .sym = p->sym,
                 .row_loss = row_loss};
  par_for(p->n_threads, out, SWEEP_ROWS, sweep_rows, &j);
  if (loss) {
    *loss = 0;
    for (int32_t r = 0; r < out; r++)
      *loss += row_loss[r];
  }
  free(row_loss);
  return BL_OK;
}

bl_status gptq_solve(const gptq_params *p, float *W, double *H, qlinear *ql, double *loss,
                     bl_err *err) {
  gptq_hinv h;
  bl_status st = gptq_hinv_build(H, ql->in, p, &h, err);
  if (st) return st;
  st = gptq_quantize(p, &h, W, ql, loss, err);
  gptq_hinv_free(&h);
  return st;
}

bl_status qlinear_alloc(qlinear *ql, int32_t bits, int32_t in, int32_t out, int32_t group_size) {
  int32_t ng = (in + group_size - 1) / group_size;
  *ql = (qlinear){.bits = bits, .in = in, .out = out, .group_size = group_size, .n_groups = ng};
  ql->q = malloc((size_t)in * (size_t)out);
  ql->scales = malloc((size_t)ng * (size_t)out * sizeof *ql->scales);
  ql->zeros = malloc((size_t)ng * (size_t)out * sizeof *ql->zeros);
  if (ql->q && ql->scales && ql->zeros) return BL_OK;
  qlinear_free(ql);
  return BL_ENOMEM;
}

void qlinear_free(qlinear *ql) {
  free(ql->q);
  free(ql->scales);
  free(ql->zeros);
  ql->q = NULL;
  ql->scales = NULL;
  ql->zeros = NULL;
}
