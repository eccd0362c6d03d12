/* The sampler's histogram path: truncation and the draw without sorting the
 * vocabulary, for every parameter set except a small top_k (sampler.c).
 *
 * One vectorizable pass gives each token its weight w = exp(-d), d = (zmax -
 * z) / T, and a bucket: NB buckets of equal width in d over the live range
 * [0, span], span = min((zmax - zmin) / T, DMAX). A second pass counts
 * tokens and sums weights per bucket. Buckets are monotone in z, so bucket
 * b holds canonical positions [ccum[b], ccum[b + 1]) and the canonical
 * prefix mass up to any bucket edge is known. Every cut (top_k, top_p,
 * min_p) and the draw is a position in canonical order; only the bucket it
 * falls in is gathered and sorted (about n / NB tokens for flat logits).
 *
 * Tokens with d > DMAX = 54 ln 2 + ln n (all together under 2^-54 of the
 * mass) and -inf get weight 0 and the bucket NB after the live ones; NaN
 * gets NB + 1 and takes no part. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "sampler_internal.h"

#define NB SAMPLER_NB

typedef struct hist {
  const float *z;
  int32_t n;
  const sampler_work *w;
  float scale;    /* buckets per unit of d */
  uint32_t total; /* tokens that are not NaN */
  double s;       /* their weight */
  int32_t held;   /* bucket sorted in w->c; -1: none */
} hist;

/* Largest logit and smallest finite one, over 64 lanes (vectorizes). */
static void range_of(const float *z, int32_t n, float *zmax, float *zmin) {
  float mx[64], mn[64];
  for (int j = 0; j < 64; j++)
    mx[j] = -INFINITY, mn[j] = INFINITY;
  int32_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 64; j++) {
      float v = z[i + j], f = v > -INFINITY ? v : INFINITY;
      mx[j] = v > mx[j] ? v : mx[j];
      mn[j] = f < mn[j] ? f : mn[j];
    }
  for (; i < n; i++) {
    float v = z[i], f = v > -INFINITY ? v : INFINITY;
    mx[0] = v > mx[0] ? v : mx[0];
    mn[0] = f < mn[0] ? f : mn[0];
  }
  for (int j = 1; j < 64; j++) {
    mx[0] = mx[j] > mx[0] ? mx[j] : mx[0];
    mn[0] = mn[j] < mn[0] ? mn[j] : mn[0];
  }
  *zmax = mx[0];
  *zmin = mn[0];
}

/* Weights, buckets and the per-bucket prefix sums. False when no logit is
 * finite (or one is +inf): the caller falls back to argmax. */
static bool build(hist *h, const float *z, int32_t n, float inv_t, const sampler_work *w) {
  float zmax, zmin;
  range_of(z, n, &zmax, &zmin);
  if (!(zmax > -INFINITY && zmax < INFINITY)) return false;
  float dmax = (float)(54 * M_LN2 + log((double)n)), range = (zmax - zmin) * inv_t;
  float span = range < dmax ? range : dmax;
  *h = (hist){.z = z, .n = n, .w = w, .scale = span > 0 ? (float)NB / span : 0, .held = -1};
  float *wt = w->w, scale = h->scale;
  uint16_t *bk = w->b;
  for (int32_t i = 0; i < n; i++) { /* vectorizes: selects only on integers */
    float d = (zmax - z[i]) * inv_t, e = sampler_exp_neg(d);
    int32_t ok = d <= span, eb;
    memcpy(&eb, &e, 4);
    eb &= -ok;
    memcpy(&wt[i], &eb, 4);
    float bf = d * scale;
    bf = bf < NB - 1 ? bf : NB - 1; /* inf, NaN: NB - 1, then replaced */
    bk[i] = (uint16_t)(ok ? (int32_t)bf : NB + (z[i] != z[i]));
  }
  uint32_t(*cnt)[NB + 2] = (uint32_t(*)[NB + 2]) w->cnt;
  double(*mass)[NB + 2] = (double(*)[NB + 2]) w->mass;
  memset(cnt, 0, 4 * sizeof *cnt);
  memset(mass, 0, 4 * sizeof *mass);
  int32_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++) {
      cnt[j][bk[i + j]]++;
      mass[j][bk[i + j]] += wt[i + j];
    }
  for (; i < n; i++) {
    cnt[0][bk[i]]++;
    mass[0][bk[i]] += wt[i];
  }
  w->ccum[0] = 0;
  w->mcum[0] = 0;
  for (int32_t b = 0; b < NB + 2; b++) {
    w->ccum[b + 1] = w->ccum[b] + cnt[0][b] + cnt[1][b] + cnt[2][b] + cnt[3][b];
    w->mcum[b + 1] = w->mcum[b] + (((mass[0][b] + mass[1][b]) + mass[2][b]) + mass[3][b]);
  }
  h->total = w->ccum[NB + 1];
  h->s = w->mcum[NB];
  return true;
}

/* Gather and sort bucket b into w->c (canonical order). */
static void hold(hist *h, int32_t b) {
  if (h->held == b) return;
  const uint16_t *bk = h->w->b;
  cand *c = h->w->c;
  uint16_t bb = (uint16_t)b;
  int32_t m = 0, i = 0, n = h->n;
  for (; i + 16 <= n; i += 16) {
    int any = 0;
    for (int j = 0; j < 16; j++)
      any |= bk[i + j] == bb;
    if (!any) continue;
    for (int32_t j = i; j < i + 16; j++)
      if (bk[j] == bb) c[m++] = (cand){h->z[j], j};
  }
  for (; i < n; i++)
    if (bk[i] == bb) c[m++] = (cand){h->z[i], i};
  qsort(c, (size_t)m, sizeof *c, sampler_cand_cmp);
  h->held = b;
}

/* Bucket of canonical position k < total. */
static int32_t bucket_at(const hist *h, uint32_t k) {
  const uint32_t *cc = h->w->ccum;
  int32_t lo = 0, hi = NB + 1; /* cc[lo] <= k < cc[hi] */
  while (hi - lo > 1) {
    int32_t mid = (lo + hi) / 2;
    if (cc[mid] <= k)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Weight of the first k tokens in canonical order. */
static double mass_of(hist *h, uint32_t k) {
  if (k == 0) return 0;
  int32_t b = bucket_at(h, k - 1);
  const uint32_t *cc = h->w->ccum;
  if (k == cc[b + 1]) return h->w->mcum[b + 1];
  hold(h, b);
  double acc = h->w->mcum[b];
  for (uint32_t j = 0; j < k - cc[b]; j++)
    acc += h->w->w[h->w->c[j].id];
  return acc;
}

/* Smallest k <= limit whose prefix weight reaches x (acc >= x, as top_p
 * keeps), or passes it (x < acc, as the draw picks) when strict; limit if
 * none does. */
static uint32_t cross(hist *h, double x, uint32_t limit, bool strict) {
  const uint32_t *cc = h->w->ccum;
  const double *mc = h->w->mcum;
  for (int32_t b = 0; b < NB && cc[b] < limit; b++) {
    if (cc[b + 1] == cc[b] || (mc[b + 1] < x * (1 - 1e-9) && cc[b + 1] < limit)) continue;
    hold(h, b);
    double acc = mc[b];
    for (uint32_t j = 0; j < cc[b + 1] - cc[b] && cc[b] + j < limit; j++) {
      acc += h->w->w[h->w->c[j].id];
      if (strict ? x < acc : acc >= x) return cc[b] + j + 1;
    }
  }
  /* bucket NB weighs nothing: only a rounding miss reaches it */
  if (cc[NB] < limit && (strict ? x < mc[NB] : mc[NB] >= x)) return cc[NB] + 1;
  return limit;
}

/* Number of leading tokens (<= limit) with weight >= min_p. Buckets whose
 * every weight is clearly above min_p are not sorted. */
static uint32_t min_p_cut(hist *h, float min_p, uint32_t limit) {
  const uint32_t *cc = h->w->ccum;
  for (int32_t b = 0; b < NB && cc[b] < limit; b++) {
    if (cc[b + 1] == cc[b]) continue;
    if (sampler_exp_neg((float)(b + 1) / h->scale) >= min_p * (1 + 1e-5f)) continue;
    hold(h, b);
    for (uint32_t j = 0; j < cc[b + 1] - cc[b] && cc[b] + j < limit; j++)
      if (h->w->w[h->w->c[j].id] < min_p) return cc[b] + j;
  }
  return cc[NB] < limit ? cc[NB] : limit; /* bucket NB weighs 0 */
}

/* How many leading tokens are kept, and their weight. */
static uint32_t kept(const sampler_params *p, hist *h, double *s_kept) {
  uint32_t k = h->total;
  double s = h->s;
  if (p->top_k > 0 && (uint32_t)p->top_k < k) {
    k = (uint32_t)p->top_k;
    s = mass_of(h, k);
  }
  uint32_t k0 = k;
  if (p->top_p > 0 && p->top_p < 1) k = cross(h, p->top_p * s, k, false);
  if (p->min_p > 0) {
    k = min_p_cut(h, p->min_p, k);
    k = k ? k : 1;
  }
  *s_kept = k == k0 ? s : mass_of(h, k);
  return k;
}

int32_t sampler_hist_draw(const sampler_params *p, const float *z, int32_t n, double u,
                          const sampler_work *w) {
  hist h;
  if (!build(&h, z, n, 1.0f / p->temperature, w)) return -1;
  double s;
  uint32_t k = kept(p, &h, &s);
  uint32_t at = cross(&h, u * s, k, true) - 1;
  int32_t b = bucket_at(&h, at);
  hold(&h, b);
  return w->c[at - w->ccum[b]].id;
}

int32_t sampler_hist_dist(const sampler_params *p, const float *z, int32_t n, const sampler_work *w,
                          int32_t *ids, float *probs) {
  hist h;
  if (!build(&h, z, n, 1.0f / p->temperature, w)) return 0;
  double s;
  uint32_t k = kept(p, &h, &s);
  int32_t last = bucket_at(&h, k - 1), m = 0;
  for (int32_t i = 0; i < n; i++)
    if (w->b[i] <= last) w->c[m++] = (cand){z[i], i};
  qsort(w->c, (size_t)m, sizeof *w->c, sampler_cand_cmp);
  for (uint32_t i = 0; i < k; i++) {
    ids[i] = w->c[i].id;
    probs[i] = (float)(w->w[w->c[i].id] / s);
  }
  return (int32_t)k;
}
