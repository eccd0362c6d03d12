/* sample: one token per row of logits[n][vocab] on the device, with the
 * host sampler's semantics less the penalties (model/sampler.c; backend.h's
 * bk_sample_params). One block of SM_NT threads per row; nothing is sorted.
 *
 * Canonical order (logit descending, lower id first on ties) is the order
 * of a 64-bit key per token, comp = key(z) << 32 | (vocab - 1 - id), where
 * key() maps the float's bits to an unsigned integer that orders as the
 * floats do (-0 taken as +0, as the host compares values; NaN takes no
 * part). Every set the sampler keeps is a canonical prefix, so it is one
 * threshold: P = {tokens with comp >= thr}.
 *
 * 1. One pass over the row: the largest logit (NaN ignored), its lowest id
 *    (the argmax) and the non-NaN count. Greedy (temperature < 1e-5 or NaN)
 *    or no finite maximum (all -inf or NaN, or a +inf): the argmax, as on
 *    the host.
 * 2. Every cut and the draw is "the first token of P at which a running
 *    total reaches a target": the count for top_k (target k) and for
 *    min_p; the weight w = exp(-(zmax - z) / T) for top_p (target top_p *
 *    S, S the weight of P) and for the draw (the first total > u * S). It is
 *    found by a radix select over comp, most significant digit first, in
 *    up to 5 levels of 11, 11, 10 bits (the logit) and 11, 11 bits (the id;
 *    reached only on exact ties; vocab <= 2^22). Each level is one pass
 *    over the row that builds a 2048-bin histogram (tokens and weight) of
 *    the tokens of P whose comp matches the digits fixed so far; a scan of
 *    the bins in canonical order finds the one where the total crosses and
 *    fixes its digit. A bin holding one token ends the select (usually
 *    after one or two levels). The token found becomes P's new threshold.
 * 3. min_p: one pass counts the tokens of P with w >= min_p. They lead P
 *    (w falls as the logit does), so the cut is a count select as in 2.
 *    top_k, top_p and min_p apply in that order, each to what the one
 *    before kept; a P of one token is the argmax.
 *
 * Weights are the host's bit for bit: sampler_exp_neg's polynomial
 * (model/sampler_internal.h) written with round-to-nearest intrinsics, so
 * no FMA contraction changes a rounding, and 0 past the same dmax. Totals
 * are exact integers: a weight in fixed point (2^40 is weight 1, rounded to
 * nearest) summed with 64-bit shared-memory atomics. So each level's bins
 * add up exactly to the bin they refine, and the token drawn does not
 * depend on the order of the atomics (the same on every run). It differs
 * from the host's double sums by at most vocab * 2^-41 in units of the
 * largest weight; that and u * S in double are the only differences from
 * sampler_sample: a draw or top_p cut within that of a boundary of the
 * kept distribution may fall on the neighbouring token
 * (tests/gpu/test_cuda_sample.c counts such rows).
 *
 * Cost per row: the first pass, 1-3 passes per cut in use and 1-3 for the
 * draw, each a read of the row (600 KB at 152K ids, L2-resident) with
 * atomics only for the tokens still in the select. */
#include "cu_sample.cuh"

#include <math.h>

#include "bl_rng.h"

enum {
  SM_NT = 512,            /* threads per row */
  SM_NB = 2048,           /* histogram bins, for the widest digit (11 bits) */
  SM_PER = SM_NB / SM_NT, /* bins per thread in the scan */
  SM_GRP = SM_NT / 32,    /* threads per group in the scan (32 groups) */
  SM_LEVELS = 5,          /* digits of comp: 11, 11, 10 | 11, 11 bits */
};

#define SM_ONE      1099511627776.0f /* 2^40: weight 1 in fixed point */
#define SM_GREEDY_T 1e-5f            /* as model/sampler.c (vLLM's epsilon) */

/* What kind of total a select walks, and how its target is set. */
enum sm_mode {
  SM_COUNT, /* tokens; target given */
  SM_TOP_P, /* weight; target = ceil(top_p * S): the first total >= top_p * S */
  SM_DRAW,  /* weight; target = floor(u * S) + 1: the first total > u * S */
};

/* The block's shared state: histograms, scan totals, reductions, and the
 * select in progress: 42.4 KiB of the 48 KiB a block may hold statically. */
typedef struct sm_smem {
  unsigned cnt[SM_NB];             /* tokens per bin */
  unsigned long long mass[SM_NB];  /* fixed-point weight per bin */
  int slot[SM_NB];                 /* a token of the bin (the token, when cnt is 1) */
  unsigned tc[SM_NT];              /* per thread: tokens in its SM_PER bins; reductions */
  unsigned long long tm[SM_NT];    /* per thread: weight in its SM_PER bins */
  float rv[SM_NT];                 /* argmax reduction: values */
  int ri[SM_NT];                   /* argmax reduction: ids (-1: none yet) */
  unsigned gc[32];                 /* per group of SM_GRP threads: tokens */
  unsigned long long gm[32];       /* and weight */
  unsigned long long prefix, mask; /* the digits of comp fixed so far, and their bits */
  unsigned long long above_m;      /* weight of P's tokens before the fixed range */
  unsigned long long target;       /* what the total must reach */
  unsigned above_c;                /* tokens of P before the fixed range */
  int bin;                         /* the bin the last scan picked */
  int found;                       /* the token the select ended on; -1: not yet */
} sm_smem;

/* One row and its weight function. */
typedef struct sm_row {
  const float *z; /* [vocab] */
  int32_t vocab;
  float zmax, inv_t, dmax;
} sm_row;

/* model/sampler_internal.h's sampler_exp_neg, operation for operation. */
static __device__ __forceinline__ float sm_exp_neg(float d) {
  int db = (int)__float_as_uint(d);
  db = db < 0x42AE0000 ? db : 0x42AE0000; /* 87.0f */
  d = __int_as_float(db);
  float t = __fadd_rn(__fmul_rn(d, -1.44269504088896341f), 12582912.0f);
  float n = __fsub_rn(t, 12582912.0f);
  int ni = (int)__float_as_uint(t) - 0x4B400000;
  float r = __fadd_rn(__fsub_rn(-d, __fmul_rn(n, 0.693359375f)), __fmul_rn(n, 2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
  p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
  p = __fadd_rn(__fadd_rn(__fmul_rn(p, __fmul_rn(r, r)), r), 1.0f);
  return __fmul_rn(p, __int_as_float((ni + 127) << 23));
}

/* The host's weight: exp(-(zmax - z) / T), 0 past dmax (and for -inf). */
static __device__ __forceinline__ float sm_weight(const sm_row &r, float z) {
  float d = __fmul_rn(__fsub_rn(r.zmax, z), r.inv_t);
  return d <= r.dmax ? sm_exp_neg(d) : 0.0f;
}

static __device__ __forceinline__ unsigned long long sm_fixed(float w) {
  return (unsigned long long)llrintf(w * SM_ONE); /* exact product: a power of two */
}

/* The canonical-order key of a non-NaN logit z at id. */
static __device__ __forceinline__ unsigned long long sm_comp(float z, int id, int vocab) {
  unsigned b = __float_as_uint(z);
  if ((b << 1) == 0) b = 0; /* -0 as +0 */
  unsigned key = b >> 31 ? ~b : b | 0x80000000u;
  return (unsigned long long)key << 32 | (unsigned)(vocab - 1 - id);
}

static __device__ __forceinline__ int sm_shift(int lv) {
  return lv == 0 ? 53 : lv == 1 ? 42 : lv == 2 ? 32 : lv == 3 ? 11 : 0;
}
static __device__ __forceinline__ int sm_bits(int lv) { return lv == 2 ? 10 : 11; }

/* Sum of v over the block; every thread gets it. */
static __device__ unsigned sm_block_sum(sm_smem &sh, unsigned v) {
  int t = threadIdx.x;
  __syncthreads(); /* tc may still be read */
  sh.tc[t] = v;
  __syncthreads();
  for (int s = SM_NT / 2; s > 0; s >>= 1) {
    if (t < s) sh.tc[t] += sh.tc[t + s];
    __syncthreads();
  }
  return sh.tc[0];
}

/* Histogram, by the digit at shift (bits wide), of the tokens of P = {comp
 * >= thr} whose comp matches sh.prefix under sh.mask. Bins run in canonical
 * order: bin 0 holds the largest digit. */
template <bool MASS>
static __device__ void sm_hist(sm_smem &sh, const sm_row &r, unsigned long long thr, int shift,
                               int bits) {
  for (int b = threadIdx.x; b < SM_NB; b += SM_NT) {
    sh.cnt[b] = 0;
    if (MASS) sh.mass[b] = 0;
  }
  __syncthreads();
  unsigned long long prefix = sh.prefix, mask = sh.mask;
  unsigned top = (1u << bits) - 1;
  for (int i = threadIdx.x; i < r.vocab; i += SM_NT) {
    float z = r.z[i];
    if (z != z) continue;
    unsigned long long c = sm_comp(z, i, r.vocab);
    if (c < thr || ((c ^ prefix) & mask)) continue;
    unsigned b = top - (unsigned)(c >> shift & top);
    atomicAdd(&sh.cnt[b], 1u);
    if (MASS) atomicAdd(&sh.mass[b], sm_fixed(sm_weight(r, z)));
    sh.slot[b] = i;
  }
  __syncthreads();
}

/* Does the total (tokens ac, weight am, plus one more bin's c, m) reach the
 * target? */
template <bool MASS>
static __device__ __forceinline__ bool sm_reaches(unsigned ac, unsigned long long am, unsigned c,
                                                  unsigned long long m, unsigned long long tg) {
  return MASS ? am + m >= tg : (unsigned long long)ac + c >= tg;
}

/* The first bin, in canonical order, at which the total of P up to and
 * through it reaches sh.target; sh.above_c / above_m advance past the bins
 * before it. On the first level of a weight select, S (the weight of P) is
 * the sum of all bins and sets the target from arg (top_p or u). Thread 0
 * walks 32 group totals, then the SM_GRP thread totals of one group, then
 * the SM_PER bins of one thread. */
template <bool MASS> static __device__ int sm_pick(sm_smem &sh, int mode, double arg, bool first) {
  int t = threadIdx.x;
  unsigned c = 0;
  unsigned long long m = 0;
  for (int j = 0; j < SM_PER; j++) {
    c += sh.cnt[t * SM_PER + j];
    if (MASS) m += sh.mass[t * SM_PER + j];
  }
  sh.tc[t] = c;
  sh.tm[t] = m;
  __syncthreads();
  if (t < 32) {
    c = 0;
    m = 0;
    for (int j = 0; j < SM_GRP; j++) {
      c += sh.tc[t * SM_GRP + j];
      m += sh.tm[t * SM_GRP + j];
    }
    sh.gc[t] = c;
    sh.gm[t] = m;
  }
  __syncthreads();
  if (t == 0) {
    if (MASS && first) {
      unsigned long long s = 0;
      for (int g = 0; g < 32; g++)
        s += sh.gm[g];
      double x = arg * (double)s;
      unsigned long long tg =
          mode == SM_TOP_P ? (unsigned long long)ceil(x) : (unsigned long long)floor(x) + 1;
      sh.target = tg < 1 ? 1 : tg > s ? s : tg; /* s >= 2^40: P's first token weighs 1 */
    }
    unsigned ac = sh.above_c;
    unsigned long long am = sh.above_m, tg = sh.target;
    int g = 0, u, b;
    for (; g < 31 && !sm_reaches<MASS>(ac, am, sh.gc[g], sh.gm[g], tg); g++)
      ac += sh.gc[g], am += sh.gm[g];
    for (u = g * SM_GRP;
         u < g * SM_GRP + SM_GRP - 1 && !sm_reaches<MASS>(ac, am, sh.tc[u], sh.tm[u], tg); u++)
      ac += sh.tc[u], am += sh.tm[u];
    for (b = u * SM_PER; b < u * SM_PER + SM_PER - 1 &&
                         !sm_reaches<MASS>(ac, am, sh.cnt[b], MASS ? sh.mass[b] : 0, tg);
         b++)
      ac += sh.cnt[b], am += MASS ? sh.mass[b] : 0;
    sh.above_c = ac;
    sh.above_m = am;
    sh.bin = b;
  }
  __syncthreads();
  return sh.bin;
}

/* The token of P = {comp >= thr} at which the running total (tokens, or
 * weight with MASS) first reaches the target: k for SM_COUNT, else set from
 * arg (sm_mode). On return sh.above_c is the number of P's tokens before it. */
template <bool MASS>
static __device__ int sm_select(sm_smem &sh, const sm_row &r, unsigned long long thr, int mode,
                                double arg, unsigned k) {
  __syncthreads(); /* every thread has read the last select's results */
  if (threadIdx.x == 0) {
    sh.prefix = sh.mask = 0;
    sh.above_c = 0;
    sh.above_m = 0;
    sh.target = k;
    sh.found = -1;
  }
  __syncthreads();
  for (int lv = 0; lv < SM_LEVELS; lv++) {
    int shift = sm_shift(lv), bits = sm_bits(lv);
    sm_hist<MASS>(sh, r, thr, shift, bits);
    int b = sm_pick<MASS>(sh, mode, arg, lv == 0);
    if (threadIdx.x == 0) {
      unsigned top = (1u << bits) - 1;
      if (sh.cnt[b] == 1 || lv == SM_LEVELS - 1) /* comp is unique: the last level holds one */
        sh.found = sh.slot[b];
      sh.prefix |= (unsigned long long)(top - (unsigned)b) << shift;
      sh.mask |= (unsigned long long)top << shift;
    }
    __syncthreads();
    if (sh.found >= 0) break;
  }
  return sh.found;
}

/* The sampled token of a row with a finite maximum (steps 2 and 3). */
static __device__ int sm_sampled(sm_smem &sh, sm_row &r, const bk_sample_params &p, unsigned total,
                                 int argmax) {
  r.inv_t = __fdiv_rn(1.0f, p.temperature);
  unsigned long long thr = 0; /* P: all non-NaN */
  unsigned n_p = total;
  if (p.top_k > 0 && (unsigned)p.top_k < n_p) {
    n_p = (unsigned)p.top_k;
    int id = n_p == 1 ? argmax : sm_select<false>(sh, r, thr, SM_COUNT, 0, n_p);
    thr = sm_comp(r.z[id], id, r.vocab);
  }
  if (n_p > 1 && p.top_p > 0 && p.top_p < 1) {
    int id = sm_select<true>(sh, r, thr, SM_TOP_P, p.top_p, 0);
    thr = sm_comp(r.z[id], id, r.vocab);
    n_p = sh.above_c + 1;
  }
  if (n_p > 1 && p.min_p > 0) {
    unsigned c = 0;
    for (int i = threadIdx.x; i < r.vocab; i += SM_NT) {
      float z = r.z[i];
      c += z == z && sm_comp(z, i, r.vocab) >= thr && sm_weight(r, z) >= p.min_p;
    }
    c = sm_block_sum(sh, c);
    c = c ? c : 1;
    if (c < n_p) {
      n_p = c;
      int id = n_p == 1 ? argmax : sm_select<false>(sh, r, thr, SM_COUNT, 0, n_p);
      thr = sm_comp(r.z[id], id, r.vocab);
    }
  }
  if (n_p == 1) return argmax; /* P's first token */
  double u = bl_rng_uniform(p.seed, (uint64_t)p.pos);
  return sm_select<true>(sh, r, thr, SM_DRAW, u, 0);
}

static __global__ void __launch_bounds__(SM_NT)
    cu_sample_kernel(int32_t *__restrict__ ids, const float *__restrict__ logits, int vocab,
                     const bk_sample_params *__restrict__ params, float dmax) {
  __shared__ sm_smem sh;
  const bk_sample_params p = params[blockIdx.x];
  sm_row r;
  r.z = logits + (size_t)blockIdx.x * vocab;
  r.vocab = vocab;
  r.dmax = dmax;
  /* 1: the largest logit, its lowest id and the non-NaN count */
  int t = threadIdx.x, bi = -1;
  float bv = -INFINITY;
  unsigned cnt = 0;
  for (int i = t; i < vocab; i += SM_NT) {
    float z = r.z[i];
    if (z != z) continue;
    cnt++;
    if (bi < 0 || z > bv) bv = z, bi = i; /* ids rise: the first of equals stays */
  }
  sh.rv[t] = bv;
  sh.ri[t] = bi;
  sh.tc[t] = cnt;
  __syncthreads();
  for (int s = SM_NT / 2; s > 0; s >>= 1) {
    if (t < s) {
      float ov = sh.rv[t + s];
      int oi = sh.ri[t + s];
      if (oi >= 0 && (sh.ri[t] < 0 || ov > sh.rv[t] || (ov == sh.rv[t] && oi < sh.ri[t]))) {
        sh.rv[t] = ov;
        sh.ri[t] = oi;
      }
      sh.tc[t] += sh.tc[t + s];
    }
    __syncthreads();
  }
  float zmax = sh.rv[0];
  int argmax = sh.ri[0] < 0 ? 0 : sh.ri[0]; /* all NaN: 0, as sampler_argmax */
  unsigned total = sh.tc[0];
  int id = argmax;
  if (p.temperature >= SM_GREEDY_T && zmax > -INFINITY && zmax < INFINITY) {
    r.zmax = zmax;
    id = sm_sampled(sh, r, p, total, argmax);
  }
  if (t == 0) ids[blockIdx.x] = id;
}

/* The parameters on the device: the context's buffer, grown (after the
 * stream has drained, as cu_scratch) to the largest batch seen. */
static bl_status sm_put_params(cu_ctx *c, const bk_sample_params *p, int32_t n) {
  if ((size_t)n > c->sample_p_rows) {
    size_t rows = cu_round_up((size_t)n, 64);
    CU_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->sample_p) CU_CHECK(c, cudaFree(c->sample_p));
    c->sample_p = NULL;
    c->sample_p_rows = 0;
    CU_CHECK(c, cudaMalloc(&c->sample_p, rows * sizeof *p));
    c->sample_p_rows = rows;
  }
  CU_CHECK(
      c, cudaMemcpyAsync(c->sample_p, p, (size_t)n * sizeof *p, cudaMemcpyHostToDevice, c->stream));
  return BL_OK;
}

bl_status cu_sample_launch(cu_ctx *c, int32_t *ids, const float *logits, int32_t n, int32_t vocab,
                           const bk_sample_params *p) {
  if (vocab < 1 || vocab > CU_SAMPLE_MAX_VOCAB)
    return cu_invalid(c, "sample", "vocab outside 1 .. 2^22");
  if (n <= 0) return BL_OK;
  bl_status st = sm_put_params(c, p, n);
  if (st != BL_OK) return st;
  float dmax = (float)(54 * M_LN2 + log((double)vocab)); /* as model/sampler.c */
  cu_sample_kernel<<<(unsigned)n, SM_NT, 0, c->stream>>>(ids, logits, vocab, c->sample_p, dmax);
  CU_CHECK_LAUNCH(c, "cu_sample_kernel");
  return BL_OK;
}

extern "C" bl_status cu_sample(bk_backend *be, int32_t *ids, const float *logits, int32_t n,
                               int32_t vocab, const bk_sample_params *p) {
  CU_ENTER(c, be);
  return cu_sample_launch(c, ids, logits, n, vocab, p);
}
