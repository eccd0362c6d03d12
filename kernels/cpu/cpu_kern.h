/* The CPU backend's ISA-specific inner loops, one table per instruction set.
 *
 * cpu_scalar.c fills the portable table; cpu_avx2.c (compiled with
 * -mavx2 -mfma -mf16c, in its own library) fills the AVX2 one. The op layer
 * (cpu_backend.c, cpu_matmul.c, cpu_attn.c, cpu_kv.c) splits work over threads and calls
 * these on rows; nothing here knows about threads. */
#ifndef CPU_KERN_H
#define CPU_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Tokens per matmul tile: each weight row is read once per tile. */
#define CPU_MM_TILE 4
/* Query heads per kv head that attention handles (GQA group size). */
#define CPU_ATTN_MAX_GROUP 16
/* Cache positions scored at once by attn_block (a stack array of floats). */
#define CPU_ATTN_RUN 64

/* One matmul call as the row kernels see it. */
typedef struct cpu_mm {
  const bk_weight *w;
  const float *x;  /* [n][ldx]: F16: x gathered by perm; W4/W2: mm_prep_q output */
  size_t ldx;      /* floats between tokens of x */
  const float *xs; /* [n][cols/group_size] per-group sums of the gathered x (W4/W2) */
  float *y;        /* [n][rows] */
  int32_t n;       /* tokens; kernels tile them by CPU_MM_TILE */
} cpu_mm;

typedef struct cpu_kern {
  const char *name; /* "scalar", "avx2" */
  /* One token of a W4/W2 matmul: xp[cols] = x[perm[k]] (x[k] without perm)
   * in the order and scaling the row kernel reads; xs[cols/group_size] =
   * sums of x[perm[k]] over each group. */
  void (*mm_prep_q)(const bk_weight *w, const float *x, float *xp, float *xs);
  /* y[t][r] for every token t and rows r0 <= r < r1. */
  void (*mm_rows)(const cpu_mm *m, int32_t r0, int32_t r1);
  /* Fold cnt cache positions of one head into an online softmax: k, v are
   * fp16 [cnt][hd]; qs[hd] is q already scaled by 1/sqrt(hd); o[hd] is the
   * unnormalised output, *m the running maximum score, *l the running sum
   * of exp(score - *m). */
  void (*attn_block)(const float *qs, const uint16_t *k, const uint16_t *v, int32_t cnt, int32_t hd,
                     float *o, float *m, float *l);
  /* The same over float32 k, v [cnt][hd] (quantized KV formats, decoded a
   * block at a time by cpu_kv_dequant_rows). */
  void (*attn_block_f32)(const float *qs, const float *k, const float *v, int32_t cnt, int32_t hd,
                         float *o, float *m, float *l);
  /* y[i] *= a. */
  void (*scale)(float *y, float a, int32_t n);
  /* dst[i] = fp16(src[i]), round to nearest even. */
  void (*to_f16)(uint16_t *dst, const float *src, int32_t n);
  /* sum x[i]^2. */
  float (*sumsq)(const float *x, int32_t n);
  /* out[i] = (x[i] * s) * w[i]; out may be x. */
  void (*norm_mul)(float *out, const float *x, float s, const float *w, int32_t n);
  /* out[i] = silu(g[i]) * u[i]; out may be g. */
  void (*silu_mul)(float *out, const float *g, const float *u, size_t n);
  /* x[i] += y[i]. */
  void (*add)(float *x, const float *y, size_t n);
} cpu_kern;

const cpu_kern *cpu_kern_scalar(void);
/* The AVX2+FMA+F16C table, or NULL where this build or this CPU lacks it
 * (cpu_isa_x86.c / cpu_isa_none.c, chosen by meson). */
const cpu_kern *cpu_kern_avx2(void);
/* The table itself (cpu_avx2.c); only cpu_isa_x86.c calls it, after the check. */
const cpu_kern *cpu_avx2_kern(void);

#endif
