/* Private to the sampler (sampler.c, sampler_hist.c): candidates, the
 * scratch layout and the one weight function both paths use. */
#ifndef SAMPLER_INTERNAL_H
#define SAMPLER_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "sampler.h"

enum { SAMPLER_NB = 1024 }; /* histogram buckets over the live range of d = (zmax - z) / T */

typedef struct cand {
  float z; /* processed logit (a weight once a path says so) */
  int32_t id;
} cand;

/* Scratch, carved from the caller's buffer (sampler_scratch_bytes). */
typedef struct sampler_work {
  float *z;       /* [n] penalized logits, when penalties apply */
  float *w;       /* [n] weights exp(-d); 0 beyond the live range */
  uint16_t *b;    /* [n] bucket: [0, NB) live, NB far or -inf, NB + 1 NaN */
  cand *c;        /* [n] candidates: the heap, or the buckets being sorted */
  uint32_t *cnt;  /* [4][NB + 2] tokens per bucket, four copies (breaks store chains) */
  double *mass;   /* [4][NB + 2] weight per bucket */
  uint32_t *ccum; /* [NB + 3] tokens in buckets < b */
  double *mcum;   /* [NB + 3] weight in buckets < b */
} sampler_work;

sampler_work sampler_work_at(void *scratch, int32_t n);

/* Canonical order: logit descending, then id ascending. */
int sampler_cand_cmp(const void *a, const void *b);

/* exp(-d) for d >= 0 (d > 87, inf and NaN give exp(-87)), within 2 ulp of
 * exp: Cephes expf's range reduction and polynomial in plain float and int
 * arithmetic, so loops over it vectorize (libm's expf does not), and the
 * same on every platform. The sampler's only weight function. */
static inline float sampler_exp_neg(float d) {
  int32_t db;
  memcpy(&db, &d, 4);
  db = db < 0x42AE0000 ? db : 0x42AE0000; /* 87.0f; an integer min vectorizes under trapping math */
  memcpy(&d, &db, 4);
  float t = d * -1.44269504088896341f + 12582912.0f; /* round(-d log2 e) in the low bits */
  float n = t - 12582912.0f;
  int32_t ni;
  memcpy(&ni, &t, 4);
  ni -= 0x4B400000;
  float r = -d - n * 0.693359375f + n * 2.12194440e-4f; /* -d - n ln 2, two parts */
  float p = 1.9875691500e-4f;                           /* Horner */
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  int32_t e = (ni + 127) << 23; /* 2^n, n >= -126 */
  float s;
  memcpy(&s, &e, 4);
  return p * s;
}

/* Largest of x[0..n), NaN ignored (-inf if none). 64 independent lanes:
 * GCC vectorizes this shape (maxps) but not an 8-lane or scalar one. */
static inline float sampler_max(const float *x, int32_t n) {
  float m[64];
  for (int j = 0; j < 64; j++)
    m[j] = -INFINITY;
  int32_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 64; j++)
      m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
  for (; i < n; i++)
    m[0] = x[i] > m[0] ? x[i] : m[0];
  for (int j = 1; j < 64; j++)
    m[0] = m[j] > m[0] ? m[j] : m[0];
  return m[0];
}

/* Histogram path (sampler_hist.c): any parameters without a small top_k.
 * Returns the drawn token, or -1 when no logit is finite. */
int32_t sampler_hist_draw(const sampler_params *p, const float *z, int32_t n, double u,
                          const sampler_work *w);
/* The kept set in canonical order with probabilities; 0 when no logit is finite. */
int32_t sampler_hist_dist(const sampler_params *p, const float *z, int32_t n, const sampler_work *w,
                          int32_t *ids, float *probs);

#endif
