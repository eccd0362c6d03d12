/* What the GPU op tests share (header only, like t.h, whose counters are
 * per file): seeded random inputs, backend buffers whose failures end the
 * test, and random weights in the canonical layout with their dequantized
 * values; opening the backends. Used by every test in tests/gpu. */
#ifndef GPU_HARNESS_H
#define GPU_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bl_half.h"

/* ---- random inputs ---------------------------------------------------- */

typedef struct rng {
  uint64_t s;
} rng;

static inline uint64_t rng_next(rng *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi), never exactly 0 (a zero hides a missing multiply). */
static inline float rng_f(rng *r, float lo, float hi) {
  float u = (float)((rng_next(r) >> 40) + 1) / 16777217.0f; /* (0, 1) */
  float v = lo + (hi - lo) * u;
  return v == 0.0f ? 1e-3f : v;
}

static inline int rng_int(rng *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }

static inline float *rand_f(rng *r, size_t n, float lo, float hi) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; i < n; i++)
    p[i] = rng_f(r, lo, hi);
  return p;
}

static inline void shuffle(rng *r, int32_t *a, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = rng_int(r, i + 1);
    int32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* ---- buffers on a backend (harness failures end the test) -------------- */

static inline void must(bl_status st, const char *what) {
  if (st != BL_OK) {
    fprintf(stderr, "harness: %s: %s\n", what, bl_status_str(st));
    exit(1);
  }
}

static inline void *dev_alloc(bk_backend *be, size_t bytes) {
  void *p = be->alloc(be, bytes);
  if (!p) {
    fprintf(stderr, "harness: %s: alloc of %zu bytes failed\n", be->name, bytes);
    exit(1);
  }
  return p;
}

static inline void *dev_put(bk_backend *be, const void *host, size_t bytes) {
  void *p = dev_alloc(be, bytes);
  must(be->upload(be, p, host, bytes), "upload");
  return p;
}

/* A buffer of NaN (all bits set) that an op is expected to overwrite. */
static inline void *dev_poison(bk_backend *be, size_t bytes) {
  void *h = malloc(bytes);
  memset(h, 0xff, bytes);
  void *p = dev_put(be, h, bytes);
  free(h);
  return p;
}

static inline void *dev_take(bk_backend *be, void *p, size_t bytes) {
  void *h = malloc(bytes);
  must(be->download(be, h, p, bytes), "download");
  be->free(be, p);
  return h;
}

/* ---- weights -------------------------------------------------------------- */

/* A host weight in the canonical layout plus its dequantized values. */
typedef struct hweight {
  bk_weight w;
  float *ref; /* [rows][cols], packed column order (bk_weight_row_f32) */
} hweight;

/* gs 0: one group per row (quantized); w in about [-1, 1]. */
static inline hweight make_weight(rng *r, bk_wfmt fmt, int rows, int cols, int gs, bool perm) {
  if (gs == 0) gs = cols;
  hweight h = {.w = {.fmt = fmt, .rows = rows, .cols = cols, .group_size = gs}};
  if (fmt == BK_WF_F16) {
    uint16_t *q = malloc((size_t)rows * cols * 2);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
      q[i] = bl_float_to_half(rng_f(r, -1, 1));
    h.w.q = q;
    h.w.group_size = cols;
  } else {
    int qmax = (1 << bk_wfmt_bits(fmt)) - 1, ng = cols / gs;
    size_t rb = bk_weight_row_bytes(fmt, cols);
    uint8_t *q = malloc((size_t)rows * rb), *vals = malloc((size_t)cols);
    uint16_t *sc = malloc((size_t)rows * ng * 2), *mn = malloc((size_t)rows * ng * 2);
    for (int i = 0; i < rows; i++) {
      for (int k = 0; k < cols; k++)
        vals[k] = (uint8_t)rng_int(r, qmax + 1);
      bk_pack_row(fmt, vals, cols, q + (size_t)i * rb);
    }
    for (size_t g = 0; g < (size_t)rows * ng; g++) { /* w in about [-1, 1] */
      float s = rng_f(r, 1.0f, 2.0f) / (float)qmax;
      sc[g] = bl_float_to_half(s);
      mn[g] = bl_float_to_half(-rng_f(r, 0.5f, 1.0f));
    }
    free(vals);
    h.w.q = q;
    h.w.scales = sc;
    h.w.mins = mn;
  }
  if (perm) {
    int32_t *p = malloc((size_t)cols * sizeof *p);
    for (int k = 0; k < cols; k++)
      p[k] = k;
    shuffle(r, p, cols);
    h.w.perm = p;
  }
  h.ref = malloc((size_t)rows * cols * sizeof(float));
  for (int i = 0; i < rows; i++)
    bk_weight_row_f32(&h.w, i, h.ref + (size_t)i * cols);
  return h;
}

static inline void free_weight(hweight *h) {
  free((void *)h->w.q);
  free((void *)h->w.scales);
  free((void *)h->w.mins);
  free((void *)h->w.perm);
  free(h->ref);
}

/* The backend's own copy of the weight description (w->dev differs). */
static inline bk_weight weight_on(bk_backend *be, const bk_weight *w) {
  bk_weight c = *w;
  c.dev = NULL;
  if (be->weight_prepare) must(be->weight_prepare(be, &c), "weight_prepare");
  return c;
}

static inline void weight_off(bk_backend *be, bk_weight *w) {
  if (be->weight_release) be->weight_release(be, w);
}

/* ---- opening the backends (main) ----------------------------------------- */

/* The CUDA backend on device 0 and, when cpu is not NULL, a CPU backend.
 * Returns -1 when they are open; 77 (meson's skip) after one line saying
 * why where the build has no CUDA or no GPU is present; 1 when opening
 * failed otherwise (a real error, never a skip). */
static inline int gpu_open(bk_backend **gpu, bk_backend **cpu) {
  setvbuf(stdout, NULL, _IOLBF, 0); /* keep stdout and stderr lines in order */
  bl_err err = {0};
  *gpu = NULL;
  if (cpu) *cpu = NULL;
  bl_status st = bk_cuda_create(0, gpu, &err);
  if (st == BL_EUNSUPPORTED) {
    printf("gpu suite skipped: %s\n", err.msg);
    return 77;
  }
  if (st != BL_OK) {
    fprintf(stderr, "bk_cuda_create: %s\n", err.msg);
    return 1;
  }
  bl_err_clear(&err);
  if (cpu && bk_cpu_create(0, cpu, &err) != BL_OK) {
    fprintf(stderr, "bk_cpu_create: %s\n", err.msg);
    bk_destroy(*gpu);
    *gpu = NULL;
    return 1;
  }
  return -1;
}

#endif
