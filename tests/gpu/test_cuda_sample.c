/* Device sampling (suite gpu): the CUDA backend's sample slot against the
 * host sampler, sampler_sample (model/sampler.c), row for row.
 *
 * Random logits (fixed seed) of 1, 7, 1000 and 151,936 ids in eight kinds
 * (gaussian, peaked, few distinct values with ties and -0/+0, -inf with
 * NaN, flat, all equal, +inf, all NaN), each row with its own logits and
 * one of the parameter sets below (greedy, temperature alone, top_k 1 / 5 /
 * 20 / 50 / 2000 / off, top_p 0.1 / 0.9, min_p, and combinations), seed and
 * position, every set in each launch, so rows of one batch differ.
 *
 * Tolerance. Greedy rows (temperature < 1e-5, no finite logit, or a +inf)
 * must give the host's token exactly, and so must every sampled row but a
 * "boundary" row. The device weighs tokens with the host's own weight
 * function bit for bit but adds the weights in 40-bit fixed point (each
 * rounded to 2^-41 of the largest weight), the host in double: over k
 * tokens their running totals differ by at most k * 2^-41, plus double
 * rounding. The test rebuilds each row's kept distribution on the host, in
 * canonical order from the sampler's weights (sampler_exp_neg) with long
 * double sums; a row is a boundary row when the draw point u * S or the
 * top_p point top_p * S lies within TOL = k * 2^-39 + 1e-12 * S (k the
 * tokens kept at that step, S their weight, in units of the largest
 * weight: twice the bound, for the point and the boundary together) of a
 * cumulative weight between two kept tokens. The min_p cut compares the
 * same float weights with the same float min_p on both sides, so it has no
 * tolerance. A boundary row may pick the neighbouring token, and boundary
 * rows must stay under 0.5% of the sampled rows (their expected share is
 * about 1e-6). The rebuilt distribution must draw the host's token on every
 * other sampled row, which checks the judge itself. A rerun of one batch
 * must give the same ids (the device's sums are exact integers, so the
 * order of its atomics cannot change a token).
 *
 * Where no GPU is present bk_cuda_create says BL_EUNSUPPORTED: the test
 * prints one line "gpu suite skipped: <reason>" and exits 77. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gpu_harness.h"
#include "sampler.h"
#include "sampler_internal.h"
#include "t.h"

/* ---- random logits ------------------------------------------------------ */

static double rng_u(rng *r) { return (double)((rng_next(r) >> 11) + 1) / 9007199254740993.0; }

static double rng_gauss(rng *r) { return sqrt(-2 * log(rng_u(r))) * cos(2 * M_PI * rng_u(r)); }

enum { K_GAUSS, K_PEAKED, K_TIES, K_NEGINF, K_FLAT, K_EQUAL, K_POSINF, K_ALLNAN, K_N };
static const char *const kind_name[K_N] = {"gauss", "peaked",    "ties", "-inf+nan",
                                           "flat",  "all-equal", "+inf", "all-nan"};

static void make_logits(rng *r, float *x, int32_t n, int kind) {
  for (int32_t i = 0; i < n; i++) {
    double g = rng_gauss(r);
    switch (kind) {
    case K_GAUSS: x[i] = (float)(3 * g); break;
    case K_PEAKED: x[i] = (float)(2.5 * g + (rng_u(r) < 20.0 / n ? 12 * rng_u(r) : 0)); break;
    case K_TIES: x[i] = (float)(round(2 * g) / 2); break; /* few values, -0 and +0 */
    case K_NEGINF: x[i] = rng_u(r) < 0.3 ? -INFINITY : (float)(4 * g); break;
    case K_FLAT: x[i] = (float)(2 * rng_u(r) - 1); break; /* the worst case for truncation */
    case K_EQUAL: x[i] = 0.5f; break;
    case K_POSINF: x[i] = (float)(3 * g); break;
    default: x[i] = NAN; break;
    }
  }
  if ((kind == K_NEGINF || kind == K_EQUAL) && n > 3) x[n / 3] = NAN, x[1] = NAN;
  if (kind == K_POSINF) x[n / 2] = x[n - 1] = INFINITY; /* the argmax is n / 2 */
}

/* ---- parameter sets ----------------------------------------------------- */

typedef struct pset {
  const char *name;
  float temperature;
  int32_t top_k;
  float top_p, min_p;
} pset;

static const pset psets[] = {
    {"greedy", 0, 0, 0, 0},
    {"T=1e-6 (greedy)", 1e-6f, 0, 0, 0},
    {"T=1", 1, 0, 0, 0},
    {"T=0.7", 0.7f, 0, 0, 0},
    {"T=1e-5", 1e-5f, 0, 0, 0},
    {"T=100", 100, 0, 0, 0},
    {"top_k=1", 1, 1, 0, 0},
    {"top_k=5", 1, 5, 0, 0},
    {"top_k=50 T=0.8", 0.8f, 50, 0, 0},
    {"top_k=2000", 1, 2000, 0, 0},
    {"top_k=1<<30 (off)", 1, 1 << 30, 0, 0},
    {"top_p=0.1", 1, 0, 0.1f, 0},
    {"top_p=0.9", 1, 0, 0.9f, 0},
    {"min_p=0.05", 1, 0, 0, 0.05f},
    {"min_p=1", 1, 0, 0, 1},
    {"top_k=50 top_p=0.9 T=0.8", 0.8f, 50, 0.9f, 0},
    {"top_k=20 top_p=0.8 min_p=0.05 T=0.7", 0.7f, 20, 0.8f, 0.05f},
    {"top_p=0.95 min_p=0.02 T=1.3", 1.3f, 0, 0.95f, 0.02f},
    {"top_k=2000 top_p=0.9 min_p=0.1 T=0.6", 0.6f, 2000, 0.9f, 0.1f},
};
enum { N_PSETS = sizeof psets / sizeof psets[0] };

static sampler_params host_params(const bk_sample_params *p) {
  return (sampler_params){.temperature = p->temperature,
                          .top_k = p->top_k,
                          .top_p = p->top_p,
                          .min_p = p->min_p,
                          .seed = p->seed};
}

/* ---- the boundary judge ------------------------------------------------- */

typedef struct rc {
  float z;
  int32_t id;
} rc;

static int rc_cmp(const void *pa, const void *pb) { /* canonical order; -0 == +0 */
  const rc *a = pa, *b = pb;
  if (a->z != b->z) return a->z < b->z ? 1 : -1;
  return (a->id > b->id) - (a->id < b->id);
}

typedef struct verdict {
  bool greedy;   /* greedy row: exact match required */
  bool boundary; /* a cut or the draw within TOL of a boundary */
  int32_t id;    /* the token the rebuilt distribution draws */
} verdict;

/* Is x within TOL of one of the cumulative weights acc[1..k-1] of the k
 * kept tokens? acc: [k + 1]. */
static bool near_edge(const long double *acc, int32_t k, long double x) {
  long double tol = k * 0x1p-39L + 1e-12L * acc[k];
  for (int32_t j = 1; j < k; j++)
    if (fabsl(acc[j] - x) <= tol) return true;
  return false;
}

/* Rebuild row's kept distribution (c, w, acc: scratch [n], [n], [n + 1]). */
static verdict judge(const bk_sample_params *p, const float *x, int32_t n, rc *c, float *w,
                     long double *acc) {
  verdict v = {.greedy = true, .id = sampler_argmax(x, n)};
  float zmax = sampler_max(x, n); /* NaN ignored */
  if (!(p->temperature >= 1e-5f) || !(zmax > -INFINITY && zmax < INFINITY)) return v;
  v.greedy = false;
  int32_t m = 0;
  for (int32_t i = 0; i < n; i++)
    if (x[i] == x[i]) c[m++] = (rc){x[i], i};
  qsort(c, (size_t)m, sizeof *c, rc_cmp);
  float inv_t = 1.0f / p->temperature, dmax = (float)(54 * M_LN2 + log((double)n));
  int32_t k = p->top_k > 0 && p->top_k < m ? p->top_k : m;
  acc[0] = 0;
  for (int32_t j = 0; j < m; j++) {
    float d = (c[0].z - c[j].z) * inv_t;
    w[j] = d <= dmax ? sampler_exp_neg(d) : 0;
    acc[j + 1] = acc[j] + w[j];
  }
  if (p->top_p > 0 && p->top_p < 1) {
    long double t = (long double)p->top_p * acc[k];
    v.boundary |= near_edge(acc, k, t);
    int32_t j = 1;
    while (j < k && acc[j] < t)
      j++;
    k = j;
  }
  if (p->min_p > 0) {
    int32_t j = 0;
    while (j < k && w[j] >= p->min_p) /* the device's weights are these floats: no tolerance */
      j++;
    k = j ? j : 1;
  }
  long double xs = (long double)sampler_uniform(p->seed, (uint64_t)p->pos) * acc[k];
  v.boundary |= near_edge(acc, k, xs);
  int32_t j = 1;
  while (j < k && !(xs < acc[j]))
    j++;
  v.id = c[j - 1].id;
  return v;
}

/* ---- the comparison ----------------------------------------------------- */

typedef struct tally {
  long rows, greedy, sampled, boundary, boundary_moved;
} tally;

/* One launch: reps rows per parameter set, of one vocab and logit kind. */
static void check_batch(bk_backend *be, rng *r, int32_t vocab, int kind, int reps, tally *ty,
                        bool rerun) {
  int32_t n = reps * N_PSETS;
  size_t row_bytes = (size_t)vocab * sizeof(float);
  float *x = malloc((size_t)n * row_bytes);
  bk_sample_params *p = calloc((size_t)n, sizeof *p);
  int32_t *got = malloc((size_t)n * sizeof *got), *again = malloc((size_t)n * sizeof *again);
  for (int32_t i = 0; i < n; i++) {
    const pset *s = &psets[i % N_PSETS];
    make_logits(r, x + (size_t)i * vocab, vocab, kind);
    p[i] = (bk_sample_params){.temperature = s->temperature,
                              .top_k = s->top_k,
                              .top_p = s->top_p,
                              .min_p = s->min_p,
                              .seed = rng_next(r),
                              .pos = (int32_t)(rng_next(r) % 100000)};
  }
  float *dx = be->alloc(be, (size_t)n * row_bytes);
  int32_t *dids = be->alloc(be, (size_t)n * sizeof *dids);
  if (!dx || !dids) {
    fprintf(stderr, "harness: alloc of %d rows of %d failed\n", n, vocab);
    exit(1);
  }
  must(be->upload(be, dx, x, (size_t)n * row_bytes), "upload");
  memset(got, 0xff, (size_t)n * sizeof *got); /* -1: a row the kernel forgot */
  must(be->upload(be, dids, got, (size_t)n * sizeof *got), "upload");
  must(be->sample(be, dids, dx, n, vocab, p), "sample");
  must(be->download(be, got, dids, (size_t)n * sizeof *got), "download");
  if (rerun) {
    must(be->sample(be, dids, dx, n, vocab, p), "sample");
    must(be->download(be, again, dids, (size_t)n * sizeof *again), "download");
    T_CHECKF(!memcmp(got, again, (size_t)n * sizeof *got), "vocab %d %s: a rerun drew other ids",
             vocab, kind_name[kind]);
  }
  void *scratch = malloc(sampler_scratch_bytes(vocab));
  rc *c = malloc((size_t)vocab * sizeof *c);
  float *w = malloc((size_t)vocab * sizeof *w);
  long double *acc = malloc(((size_t)vocab + 1) * sizeof *acc);
  for (int32_t i = 0; i < n; i++) {
    const float *xi = x + (size_t)i * vocab;
    sampler_params sp = host_params(&p[i]);
    int32_t want = sampler_sample(&sp, xi, vocab, (uint64_t)p[i].pos, scratch);
    verdict v = judge(&p[i], xi, vocab, c, w, acc);
    const char *ps = psets[i % N_PSETS].name;
    ty->rows++;
    ty->greedy += v.greedy;
    ty->sampled += !v.greedy;
    ty->boundary += v.boundary;
    if (v.greedy || !v.boundary) {
      T_CHECKF(got[i] == want, "vocab %d %s [%s] row %d: device %d, host %d%s", vocab,
               kind_name[kind], ps, i, got[i], want, v.greedy ? " (greedy)" : "");
      if (!v.greedy)
        T_CHECKF(v.id == want, "judge: vocab %d %s [%s] row %d: rebuilt %d, host %d", vocab,
                 kind_name[kind], ps, i, v.id, want);
    } else {
      T_CHECKF(got[i] >= 0 && got[i] < vocab, "vocab %d %s [%s] row %d: device id %d", vocab,
               kind_name[kind], ps, i, got[i]);
      ty->boundary_moved += got[i] != want;
    }
  }
  be->free(be, dx);
  be->free(be, dids);
  free(x);
  free(p);
  free(got);
  free(again);
  free(scratch);
  free(c);
  free(w);
  free(acc);
}

static void test_rows(bk_backend *be, rng *r) {
  static const int32_t vocabs[] = {1, 7, 1000, 151936};
  static const int reps[] = {24, 24, 8, 2};
  for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
    tally ty = {0};
    int fails = t_failed;
    for (int k = 0; k < K_N; k++)
      check_batch(be, r, vocabs[v], k, reps[v], &ty, vocabs[v] == 1000);
    printf("%s vocab %-6d %ld rows: %ld greedy, %ld sampled, %ld boundary (%ld moved)\n",
           t_failed == fails ? "ok " : "BAD", vocabs[v], ty.rows, ty.greedy, ty.sampled,
           ty.boundary, ty.boundary_moved);
    T_CHECKF(ty.boundary * 200 <= ty.sampled, "vocab %d: %ld boundary rows of %ld sampled",
             vocabs[v], ty.boundary, ty.sampled);
  }
}

/* Arguments the op must refuse or pass over. */
static void test_args(bk_backend *be) {
  bk_sample_params p = {.temperature = 1};
  float *dx = be->alloc(be, 4 * sizeof(float));
  int32_t *dids = be->alloc(be, sizeof(int32_t));
  T_CHECK(be->sample(be, dids, dx, 1, 0, &p) == BL_EINVAL);
  T_CHECK(be->sample(be, dids, dx, 0, 4, &p) == BL_OK);
  must(be->sync(be), "sync");
  be->free(be, dx);
  be->free(be, dids);
}

int main(void) {
  bk_backend *gpu;
  int open_rc = gpu_open(&gpu, NULL);
  if (open_rc >= 0) return open_rc;
  T_CHECK(gpu->sample != NULL);
  if (gpu->sample) {
    rng r = {20250611};
    test_args(gpu);
    test_rows(gpu, &r);
  }
  bk_destroy(gpu);
  return T_DONE();
}
