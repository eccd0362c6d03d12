/* Comparing rows of logits at a tolerance in units of the row's spread
 * (header only): a random model's logits have sd ~1, a trained one's
 * several units, so one rule serves both. */
#ifndef LOGITS_CMP_H
#define LOGITS_CMP_H

#include <math.h>
#include <stdint.h>

/* Standard deviation of x[n]. */
static inline double logits_row_sd(const float *x, int32_t n) {
  double s = 0, s2 = 0;
  for (int32_t i = 0; i < n; i++) {
    s += x[i];
    s2 += (double)x[i] * x[i];
  }
  double m = s / n, v = s2 / n - m * m;
  return v > 0 ? sqrt(v) : 0;
}

/* The worst |got - ref| / (atol_sd * sd + rtol * |ref|) over rows
 * [n_rows][n], sd that of the ref row: <= 1 passes. Equal values count 0
 * whatever the tolerance; a NaN makes the result NaN (a failure). */
static inline double logits_worst(const float *got, const float *ref, int32_t n_rows, int32_t n,
                                  double atol_sd, double rtol) {
  double worst = 0;
  for (int32_t r = 0; r < n_rows; r++) {
    const float *g = got + (size_t)r * (size_t)n, *x = ref + (size_t)r * (size_t)n;
    double sd = logits_row_sd(x, n);
    for (int32_t i = 0; i < n; i++) {
      double d = fabs((double)g[i] - x[i]);
      double e = d == 0 ? 0 : d / (atol_sd * sd + rtol * fabs((double)x[i]));
      if (!(e <= worst)) worst = e;
    }
  }
  return worst;
}

#endif
