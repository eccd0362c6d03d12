/* matmul for fp16, w4 and w2 weights (see cu_matmul.cuh for the paths).
 *
 * GEMV layout, every format: block = CU_GEMV_WARPS warps, warp w of block b
 * owns rows (b*CU_GEMV_WARPS + w)*R .. +R-1 (R = 4 for one token unless the
 * matrix is too short to fill the GPU, else 1); lane l reads 16-byte loads
 * l, l+32, ... of those rows (8 fp16, one W4 block or two W2 blocks each).
 * The last warp may own rows past the end: it reads row rows-1 again and
 * stores nothing.
 *
 * fp16 weights: x is fp32 [n][ldx], ldx a multiple of 8 floats, rows 16-byte
 * aligned and zero past cols (the weight's row padding is zero too, so no
 * bounds checks are needed), read from global memory (L1) by every warp; the
 * products are fp32 FMAs.
 *
 * W4/W2 weights, the batch-1 decode path that must stream weights at HBM
 * bandwidth: about 73 two-bit weights per SM per clock on an H200 against
 * 128 lane-instructions issued, so the inner loop has well under two
 * instructions per weight (docs/perf.md, "GEMV inner loop", counts them).
 *  - A prep kernel writes x once per call as fp16, in the order the
 *    unpacking produces fields and prescaled (below), plus an fp32 (E, SX)
 *    per 32-column block; each GEMV block stages a chunk of it in shared
 *    memory once for all its warps.
 *  - Unpacking uses the fp16 bit pattern: a half whose exponent field is 0
 *    is the subnormal m * 2^-24, so one LOP3 (word & mask) turns the two
 *    fields q at bit s of a word's halves into the half2 (q0, q1) * 2^(s-24)
 *    with no offset to remove. (OR-ing in the 0x6400 exponent instead gives
 *    1024 + q * 2^s; removing the 1024 costs one more HADD2/HFMA2 per two
 *    weights, and folding it into the group's min cannot work in fp16: the
 *    1024 * x in each product would round away q * x.) One SHF per word
 *    brings the odd bytes down, since only mantissa bits 0-9 can be used.
 *  - x is prescaled by 2^(24 - s - e) per column, e per block from its
 *    largest |x|, so each HFMA2 adds q * x * 2^-e exactly rounded in fp16;
 *    no product or sum overflows and the block's large products are normal
 *    fp16. HFMA2 keeps fp16 subnormals (PTX fma.rn.f16x2 has no ftz).
 *  - A block's 32 products are summed in four 8-term fp16 chains, added in
 *    fp16 and converted once: y += scale * E * sum + min * SX, E = 2^e, SX
 *    = the block's sum of x in fp32; rows and tiles accumulate in fp32. The
 *    error this adds is derived in tests/gpu/test_cuda_ops.c (check_matmul). */
#include "cu_matmul.cuh"

#include <float.h>

#define CU_GEMV_WARPS 4

/* ---- x preparation: gather by perm, pad with zeros, optionally to fp16 -- */

static __device__ __forceinline__ void cu_store_x(float *p, float v) { *p = v; }
static __device__ __forceinline__ void cu_store_x(__half *p, float v) { *p = cu_half_sat(v); }

/* xo[t][k] = x[t][perm ? perm[k] : k] for k < cols, 0 for cols <= k < ldo. */
template <typename T>
static __global__ void cu_prep_x_kernel(T *__restrict__ xo, const float *__restrict__ x,
                                        const int32_t *__restrict__ perm, int cols, int ldo) {
  int t = blockIdx.x;
  for (int k = blockIdx.y * blockDim.x + threadIdx.x; k < ldo; k += gridDim.y * blockDim.x) {
    float v = 0.0f;
    if (k < cols) v = x[(size_t)t * cols + (perm ? perm[k] : k)];
    cu_store_x(&xo[(size_t)t * ldo + k], v);
  }
}

template <typename T>
static bl_status cu_prep_x(cu_ctx *c, T *xo, const float *x, const int32_t *perm, int cols, int ldo,
                           int n) {
  dim3 grid((unsigned)n, cu_min_u(cu_cdiv((size_t)ldo, 256), 64));
  cu_prep_x_kernel<T><<<grid, 256, 0, c->stream>>>(xo, x, perm, cols, ldo);
  CU_CHECK_LAUNCH(c, "cu_prep_x_kernel");
  return BL_OK;
}

/* ---- fp16 GEMV ----------------------------------------------------------- */

/* x[0..7] as floats (two 16-byte loads). */
static __device__ __forceinline__ void cu_load_x8(const float *__restrict__ x, float *xs) {
  float4 a = *(const float4 *)x, b = *(const float4 *)(x + 4);
  xs[0] = a.x, xs[1] = a.y, xs[2] = a.z, xs[3] = a.w;
  xs[4] = b.x, xs[5] = b.y, xs[6] = b.z, xs[7] = b.w;
}

/* sum_j w[j] * xs[j] over one 16-byte load of fp16 weights (8 columns). */
static __device__ __forceinline__ float cu_dot8_f16(uint4 raw, const float *xs) {
  float2 w0 = __half22float2(*(const __half2 *)&raw.x);
  float2 w1 = __half22float2(*(const __half2 *)&raw.y);
  float2 w2 = __half22float2(*(const __half2 *)&raw.z);
  float2 w3 = __half22float2(*(const __half2 *)&raw.w);
  return w0.x * xs[0] + w0.y * xs[1] + w1.x * xs[2] + w1.y * xs[3] + w2.x * xs[4] + w2.y * xs[5] +
         w3.x * xs[6] + w3.y * xs[7];
}

/* R rows per warp: each x value a lane loads serves R rows. */
template <int NT, int R>
static __global__ void __launch_bounds__(CU_GEMV_WARPS * 32)
    cu_gemv_f16_kernel(float *__restrict__ y, const float *__restrict__ x, int ldx,
                       const uint8_t *__restrict__ q, size_t stride, int rows) {
  int lane = threadIdx.x & 31;
  int row0 = (blockIdx.x * CU_GEMV_WARPS + (threadIdx.x >> 5)) * R;
  if (row0 >= rows) return; /* the whole warp leaves together */
  const uint4 *wrow[R];
#pragma unroll
  for (int r = 0; r < R; r++)
    wrow[r] = (const uint4 *)(q + (size_t)(row0 + r < rows ? row0 + r : rows - 1) * stride);
  int n_loads = (int)(stride / 16);
  float acc[NT][R] = {};
  for (int l = lane; l < n_loads; l += 32) {
    uint4 raw[R];
#pragma unroll
    for (int r = 0; r < R; r++)
      raw[r] = __ldg(wrow[r] + l);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float xs[8];
      cu_load_x8(x + (size_t)t * ldx + l * 8, xs);
#pragma unroll
      for (int r = 0; r < R; r++)
        acc[t][r] += cu_dot8_f16(raw[r], xs);
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float v = cu_warp_sum(acc[t][r]);
      if (lane == 0 && row0 + r < rows) y[(size_t)t * rows + row0 + r] = v;
    }
}

/* ---- W4/W2 GEMV: x preparation ------------------------------------------ */

/* The prepared x order (cu_xq_pos, cu_xq_shift) is in cu_matmul.cuh: the
 * mma path stages x in the same order. */

/* One warp per (token blockIdx.x, 32-column block): xq[t][b*32 + pos(j)] =
 * fp16(x[t][perm(k)] * 2^(24 - s(j) - e)), k = b*32 + j (0 for k >= cols),
 * and xb[t][b] = (2^e, sum of the block's x in fp32). e = exponent(max |x|)
 * + 9, so |x| * 2^(24-e) < 2^15: every prepared value is finite, and a
 * product q * x * 2^-e stays below 2^-9 * q (a 16-value span's sum below
 * 8 * 15 * 2^-9 < 0.25 per half2 lane for W4: no overflow) while products
 * are normal fp16 (>= 2^-14) for every x down to 2^-4 of the block's largest
 * |x|. NaN and inf propagate; an all-zero block has e = 0. */
template <int BITS>
static __global__ void cu_prep_xq_kernel(__half *__restrict__ xq, float2 *__restrict__ xb,
                                         const float *__restrict__ x,
                                         const int32_t *__restrict__ perm, int cols, int ldq) {
  int t = blockIdx.x, lane = threadIdx.x & 31, nblk = ldq / 32, wpb = blockDim.x >> 5;
  for (int b = blockIdx.y * wpb + (threadIdx.x >> 5); b < nblk; b += gridDim.y * wpb) {
    int k = b * 32 + lane;
    float v = k < cols ? x[(size_t)t * cols + (perm ? perm[k] : k)] : 0.0f;
    float amax = cu_warp_max(fabsf(v)), sum = cu_warp_sum(v);
    int e = 0;
    if (amax > 0.0f && amax <= FLT_MAX) {
      frexpf(amax, &e); /* amax < 2^e */
      e += 9;
    }
    xq[(size_t)t * ldq + b * 32 + cu_xq_pos<BITS>(lane)] =
        __float2half_rn(ldexpf(v, 24 - cu_xq_shift<BITS>(lane) - e));
    if (lane == 0) xb[(size_t)t * nblk + b] = make_float2(ldexpf(1.0f, e), sum);
  }
}

/* ---- W4/W2 GEMV: the kernel ---------------------------------------------- */

/* NT*KC halves of prepared x per block in shared memory (36 KiB with the
 * padding below, plus 4 KiB of (E, SX)), KC a multiple of the columns one
 * pass of a warp covers. */
#define CU_GEMV_XS_HALVES 16384
template <int BITS, int NT> static __host__ __device__ constexpr int cu_gemv_kc() {
  return CU_GEMV_XS_HALVES / NT / (32 * 128 / BITS) * (32 * 128 / BITS);
}

/* A staged x row keeps 16 bytes of padding after every 128: chunk c (8
 * halves) lives at chunk c + c/8. A lane reads the CPL = 4 (W4) or 8 (W2)
 * consecutive chunks of its load; without padding the 8 lanes of one
 * LDS.128 phase would all hit the same banks (W2; 4-way for W4), with it
 * they hit 8 different 16-byte bank groups, the staging stores too, and
 * the lane's chunks stay at immediate offsets from one base per pass
 * (l*CPL + l*CPL/8: for W4 l*CPL/8 is the same for the lane's 4 chunks). */
static __host__ __device__ __forceinline__ int cu_xs_pad(int c) { return c + (c >> 3); }

/* The 32 fields of one block (words wd[0..BITS-1]) as 16 half2 of subnormal
 * q * 2^(s-24), in the prepared x order (cu_xq_pos): per word one SHF and
 * 8/BITS * 2 LOP3. */
template <int BITS>
static __device__ __forceinline__ void cu_unpack_block(const uint32_t *wd, __half2 *wq) {
  constexpr uint32_t M = BITS == 4 ? 0x000f000fu : 0x00030003u;
  constexpr int NF = 8 / BITS; /* fields per byte */
#pragma unroll
  for (int w = 0; w < BITS; w++) {
    uint32_t lo = wd[w], hi = wd[w] >> 8;
#pragma unroll
    for (int f = 0; f < NF; f++) {
      wq[w * 2 * NF + 2 * f] = cu_h2(lo & (M << (BITS * f)));
      wq[w * 2 * NF + 2 * f + 1] = cu_h2(hi & (M << (BITS * f)));
    }
  }
}

/* Products per fp16 span: a half2 accumulator takes CU_HSPAN/2 HFMA2 (that
 * many products per lane) before it goes to fp32. 16 measures 0.49x the
 * bound of test_cuda_ops' check_matmul and costs 0.31 instructions per
 * weight in conversions and block sums; 32 would cost 0.19 for 0.69x, 8
 * 0.56 for 0.33x (docs/perf.md, "GEMV inner loop"). */
#define CU_HSPAN 16

/* sum over the block of q * x * 2^-e: 32/CU_HSPAN chains of CU_HSPAN/2
 * HFMA2 in fp16, each converted to fp32 and summed there. */
static __device__ __forceinline__ float cu_hdot_block(const __half2 *wq, const uint4 *xv) {
  constexpr int L = CU_HSPAN / 2, NC = 16 / L;
  __half2 a[NC];
#pragma unroll
  for (int c = 0; c < NC; c++)
    a[c] = cu_h2(0);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const uint32_t xw[4] = {xv[i].x, xv[i].y, xv[i].z, xv[i].w};
#pragma unroll
    for (int j = 0; j < 4; j++)
      a[(4 * i + j) / L] = __hfma2(wq[4 * i + j], cu_h2(xw[j]), a[(4 * i + j) / L]);
  }
  float f = 0.0f;
#pragma unroll
  for (int c = 0; c < NC; c++) {
    float2 v = __half22float2(a[c]);
    f += v.x + v.y;
  }
  return f;
}

/* The (scale, min) of the warp's R rows for group gi; srow points at the
 * first row's entry of group 0. */
template <int R>
static __device__ __forceinline__ void cu_gemv_sm(float2 *g, const __half2 *srow, int gi) {
  if constexpr (R == 4) {
    uint4 v = __ldg((const uint4 *)srow + gi); /* the quad's four rows */
    g[0] = __half22float2(cu_h2(v.x)), g[1] = __half22float2(cu_h2(v.y));
    g[2] = __half22float2(cu_h2(v.z)), g[3] = __half22float2(cu_h2(v.w));
  } else {
    g[0] = __half22float2(srow[4 * gi]);
  }
}

/* The words of block bb (0 or 1) of a 16-byte load: a W4 block is the whole
 * load, W2 block bb is words 2*bb and 2*bb+1. */
template <int BITS>
static __device__ __forceinline__ void cu_block_words(uint32_t *wd, const uint4 &raw, int bb) {
  if constexpr (BITS == 4) {
    wd[0] = raw.x, wd[1] = raw.y, wd[2] = raw.z, wd[3] = raw.w;
  } else {
    wd[0] = bb ? raw.z : raw.x;
    wd[1] = bb ? raw.w : raw.y;
  }
}

/* Block lb of the chunk (bb of its load) for the warp's R rows and NT
 * tokens: acc += scale * E * sum + min * SX. xl = the load's chunks (token 0;
 * the token rows are XR chunks apart), xe = the staged (E, SX), g = the R
 * rows' (scale, min). */
template <int BITS, int NT, int R, int XR, int XE>
static __device__ __forceinline__ void cu_gemv_q_block(float (&acc)[NT][R], const uint4 *raw,
                                                       int bb, int lb, const uint4 *xl,
                                                       const float2 *xe, const float2 *g) {
  __half2 wq[16];
  uint32_t wd[4];
  if constexpr (R == 1) {
    cu_block_words<BITS>(wd, raw[0], bb);
    cu_unpack_block<BITS>(wd, wq);
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    uint4 xv[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
      xv[i] = xl[t * XR + 4 * bb + i];
    float2 e = xe[t * XE + lb];
#pragma unroll
    for (int r = 0; r < R; r++) {
      if constexpr (R > 1) {
        cu_block_words<BITS>(wd, raw[r], bb);
        cu_unpack_block<BITS>(wd, wq);
      }
      float h = cu_hdot_block(wq, xv);
      acc[t][r] = fmaf(g[r].x * e.x, h, fmaf(g[r].y, e.y, acc[t][r]));
    }
  }
}

/* One load l of the warp's R rows (raw[r] = row r's 16 bytes at load l)
 * against the staged x (see cu_gemv_q_block); c0 = the chunk's first
 * column. PAIR: every W2 load's two blocks share a group (group_size % 64 ==
 * 0), so one (scale, min) load serves both. With many tokens the two W2
 * blocks run as a loop, not unrolled, so that the compiler does not hoist
 * both blocks' x for every token at once (over 255 registers, spills). */
template <int BITS, int NT, int R, bool PAIR, int XR, int XE>
static __device__ __forceinline__ void
cu_gemv_q_pass(float (&acc)[NT][R], const uint4 *raw, int l, const uint4 *xl, const float2 *xe,
               int c0, const __half2 *srow, int n_groups, unsigned gdiv) {
  constexpr int BPL = 4 / BITS; /* blocks per load */
  float2 g[R];
  if constexpr (BPL == 2 && NT > 4) {
#pragma unroll 1
    for (int bb = 0; bb < 2; bb++) {
      int lb = l * 2 + bb;
      if (bb == 0 || !PAIR) {
        int gi = (int)__umulhi((unsigned)(c0 + lb * 32), gdiv);
        cu_gemv_sm<R>(g, srow, gi < n_groups - 1 ? gi : n_groups - 1);
      }
      cu_gemv_q_block<BITS, NT, R, XR, XE>(acc, raw, bb, lb, xl, xe, g);
    }
  } else {
#pragma unroll
    for (int bb = 0; bb < BPL; bb++) {
      int lb = l * BPL + bb; /* block in the chunk */
      if (bb == 0 || !PAIR) {
        int gi = (int)__umulhi((unsigned)(c0 + lb * 32), gdiv);
        if (bb) gi = gi < n_groups - 1 ? gi : n_groups - 1; /* an odd W2 row's padding block */
        cu_gemv_sm<R>(g, srow, gi);
      }
      cu_gemv_q_block<BITS, NT, R, XR, XE>(acc, raw, bb, lb, xl, xe, g);
    }
  }
}

/* xq: prepared x [NT][ldq] halves as 16-byte chunks; xb: [NT][ldq/32] (E, SX).
 * gdiv = ceil(2^32 / group_size), or 0 for one group per row: the group of
 * column k is umulhi(k, gdiv) (exact for the columns cu_gemv_q_ok allows).
 * R = 4 needs row0 % 4 == 0 (true: row0 = (block * WARPS + warp) * 4). Every
 * warp takes part in staging, so none leaves early; each pass issues the
 * next pass's weight loads before it computes (two register sets). */
template <int BITS, int NT, int R, bool PAIR>
static __global__ void __launch_bounds__(CU_GEMV_WARPS * 32)
    cu_gemv_q_kernel(float *__restrict__ y, const uint4 *__restrict__ xq,
                     const float2 *__restrict__ xb, int ldq, const uint8_t *__restrict__ q,
                     const __half2 *__restrict__ sm, size_t stride, int n_groups, unsigned gdiv,
                     int rows) {
  constexpr int VPL = 128 / BITS, CPL = VPL / 8, KC = cu_gemv_kc<BITS, NT>();
  constexpr int XR = KC / 8 + KC / 64, XE = KC / 32; /* chunks per token row, padded */
  static_assert(R == 1 || R == 4, "one row or a quad per warp");
  static_assert(R == 1 || NT == 1, "R rows per warp for one token, one row for several");
  __shared__ uint4 xs[NT * XR];  /* prepared x, padded (cu_xs_pad) */
  __shared__ float2 xe[NT * XE]; /* (E, SX) per block */
  int lane = threadIdx.x & 31;
  int row0 = (blockIdx.x * CU_GEMV_WARPS + (threadIdx.x >> 5)) * R;
  bool active = row0 < rows; /* warp-uniform */
  int rr = row0 < rows ? row0 : rows - 1;
  const __half2 *srow = sm + cu_sm_index(rr, 0, n_groups);
  /* Row r's next load is wq[wo[r]]: 32-bit offsets (cu_gemv_q_ok checks
   * that rows * stride / 16 fits), one IMAD.WIDE per load. */
  const uint4 *wq = (const uint4 *)q;
  unsigned wo[R];
  float acc[NT][R] = {};
  for (int c0 = 0; c0 < ldq; c0 += KC) {
    int kc = ldq - c0 < KC ? ldq - c0 : KC, nl = kc / VPL;
    uint4 ra[R] = {}, rb[R] = {};
#pragma unroll
    for (int r = 0; r < R; r++) {
      wo[r] = (unsigned)((size_t)(rr + r < rows ? rr + r : rows - 1) * (stride / 16)) +
              (unsigned)(c0 / VPL + lane);
      if (active && lane < nl) ra[r] = __ldg(wq + wo[r]); /* in flight while x is staged */
    }
    __syncthreads(); /* every warp is done with the previous chunk */
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const uint4 *src = xq + ((size_t)t * ldq + c0) / 8;
      for (int i = threadIdx.x; i < kc / 8; i += blockDim.x)
        xs[t * XR + cu_xs_pad(i)] = src[i];
      const float2 *bsrc = xb + ((size_t)t * ldq + c0) / 32;
      for (int i = threadIdx.x; i < kc / 32; i += blockDim.x)
        xe[t * XE + i] = bsrc[i];
    }
    __syncthreads();
    if (!active) continue;
    /* pass l = lane + 32j reads wq[wo + 32j] and the chunks at xl */
    const uint4 *xl = xs + cu_xs_pad(lane * CPL);
    for (int l = lane; l < nl; l += 64) {
#pragma unroll
      for (int r = 0; r < R; r++)
        if (l + 32 < nl) rb[r] = __ldg(wq + wo[r] + 32);
      cu_gemv_q_pass<BITS, NT, R, PAIR, XR, XE>(acc, ra, l, xl, xe, c0, srow, n_groups, gdiv);
      if (l + 32 >= nl) break;
#pragma unroll
      for (int r = 0; r < R; r++)
        if (l + 64 < nl) ra[r] = __ldg(wq + wo[r] + 64);
      cu_gemv_q_pass<BITS, NT, R, PAIR, XR, XE>(acc, rb, l + 32, xl + cu_xs_pad(32 * CPL), xe, c0,
                                                srow, n_groups, gdiv);
#pragma unroll
      for (int r = 0; r < R; r++)
        wo[r] += 64;
      xl += 2 * cu_xs_pad(32 * CPL);
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float v = cu_warp_sum(acc[t][r]);
      if (lane == 0 && row0 + r < rows) y[(size_t)t * rows + row0 + r] = v;
    }
}

/* ---- GEMV launches ------------------------------------------------------- */

/* Four rows per warp for one token where that still gives every SM a block;
 * else one (with more tokens, four rows need too many registers). */
static bool cu_gemv_four_rows(const cu_ctx *c, const cu_weight *w) {
  return (size_t)w->rows >= (size_t)CU_GEMV_WARPS * 4 * (size_t)c->sm_count;
}

template <int NT>
static void cu_gemv_f16_launch(cu_ctx *c, float *y, const float *x, int ldx, const cu_weight *w) {
  const uint8_t *q = (const uint8_t *)w->q;
  if constexpr (NT == 1) {
    if (cu_gemv_four_rows(c, w)) {
      unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS * 4);
      cu_gemv_f16_kernel<1, 4>
          <<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(y, x, ldx, q, w->stride, w->rows);
      return;
    }
  }
  unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS);
  cu_gemv_f16_kernel<NT, 1>
      <<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(y, x, ldx, q, w->stride, w->rows);
}

/* The prepared x of one tile: [nt][ldq] halves and [nt][ldq/32] (E, SX). */
typedef struct cu_xq {
  const uint4 *x;
  const float2 *b;
  int ldq;
  unsigned gdiv;
} cu_xq;

template <int BITS, int NT, bool PAIR>
static void cu_gemv_q_launch_p(cu_ctx *c, float *y, const cu_xq *xq, const cu_weight *w) {
  const uint8_t *q = (const uint8_t *)w->q;
  if constexpr (NT == 1) {
    if (cu_gemv_four_rows(c, w)) {
      unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS * 4);
      cu_gemv_q_kernel<BITS, 1, 4, PAIR><<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(
          y, xq->x, xq->b, xq->ldq, q, w->sm, w->stride, w->n_groups, xq->gdiv, w->rows);
      return;
    }
  }
  unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS);
  cu_gemv_q_kernel<BITS, NT, 1, PAIR><<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(
      y, xq->x, xq->b, xq->ldq, q, w->sm, w->stride, w->n_groups, xq->gdiv, w->rows);
}

template <int BITS, int NT>
static void cu_gemv_q_launch(cu_ctx *c, float *y, const cu_xq *xq, const cu_weight *w) {
  if constexpr (BITS == 2) {
    if (w->group_size % 64 == 0) {
      cu_gemv_q_launch_p<BITS, NT, true>(c, y, xq, w);
      return;
    }
  }
  cu_gemv_q_launch_p<BITS, NT, false>(c, y, xq, w);
}

/* One tile of nt <= CU_GEMV_TILE tokens; x is fp32 [nt][ldx] (fp16) or xq. */
template <int BITS, int NT>
static void cu_gemv_tile_nt(cu_ctx *c, float *y, const float *x, int ldx, const cu_xq *xq,
                            const cu_weight *w) {
  if constexpr (BITS == 16)
    cu_gemv_f16_launch<NT>(c, y, x, ldx, w);
  else
    cu_gemv_q_launch<BITS, NT>(c, y, xq, w);
}

template <int BITS>
static void cu_gemv_tile(cu_ctx *c, float *y, const float *x, int ldx, const cu_xq *xq,
                         const cu_weight *w, int nt) {
  switch (nt) {
  case 1: cu_gemv_tile_nt<BITS, 1>(c, y, x, ldx, xq, w); break;
  case 2: cu_gemv_tile_nt<BITS, 2>(c, y, x, ldx, xq, w); break;
  case 3: cu_gemv_tile_nt<BITS, 3>(c, y, x, ldx, xq, w); break;
  case 4: cu_gemv_tile_nt<BITS, 4>(c, y, x, ldx, xq, w); break;
  case 5: cu_gemv_tile_nt<BITS, 5>(c, y, x, ldx, xq, w); break;
  case 6: cu_gemv_tile_nt<BITS, 6>(c, y, x, ldx, xq, w); break;
  case 7: cu_gemv_tile_nt<BITS, 7>(c, y, x, ldx, xq, w); break;
  default: cu_gemv_tile_nt<BITS, 8>(c, y, x, ldx, xq, w); break;
  }
}

static int cu_xq_ld(const cu_weight *w) {
  return (int)cu_round_up((size_t)w->cols, (size_t)cu_weight_elems_per_load(w->fmt));
}

/* Can the W4/W2 GEMV address the rows with 32-bit offsets of 16 bytes and
 * find every column's group with one umulhi? With gdiv =
 * ceil(2^32/gs) = (2^32 + d)/gs, umulhi(k, gdiv) = floor(k/gs + k*d/(gs*2^32)),
 * exact while k*d < 2^32 (d < gs); 0 when the row is one group. */
static bool cu_gemv_q_ok(const cu_weight *w, unsigned *gdiv) {
  *gdiv = 0;
  if ((uint64_t)w->rows * (w->stride / 16) >= ((uint64_t)1 << 32)) return false; /* wo[] */
  if (w->n_groups == 1) return true;
  uint64_t gs = (uint64_t)w->group_size, m = ((uint64_t)1 << 32) / gs + 1;
  if (((uint64_t)1 << 32) % gs == 0) m--;
  uint64_t d = m * gs - ((uint64_t)1 << 32);
  *gdiv = (unsigned)m;
  return (uint64_t)cu_xq_ld(w) * d < ((uint64_t)1 << 32);
}

template <int BITS>
static bl_status cu_gemv_q_prep(cu_ctx *c, cu_xq *xq, const float *x, const cu_weight *w,
                                int32_t n) {
  int ldq = cu_xq_ld(w), nblk = ldq / 32;
  size_t xb = cu_round_up((size_t)n * (size_t)ldq * sizeof(__half), 256);
  void *buf;
  bl_status st = cu_scratch(c, xb + (size_t)n * (size_t)nblk * sizeof(float2), &buf);
  if (st != BL_OK) return st;
  xq->x = (const uint4 *)buf;
  xq->b = (const float2 *)((char *)buf + xb);
  xq->ldq = ldq;
  dim3 grid((unsigned)n, cu_min_u(cu_cdiv((size_t)nblk, 4), 64));
  cu_prep_xq_kernel<BITS><<<grid, 128, 0, c->stream>>>((__half *)buf, (float2 *)((char *)buf + xb),
                                                       x, w->perm, w->cols, ldq);
  CU_CHECK_LAUNCH(c, "cu_prep_xq_kernel");
  return BL_OK;
}

static bl_status cu_gemv(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n,
                         unsigned gdiv) {
  int cols = w->cols, ldx = cols;
  cu_xq xq = {NULL, NULL, 0, gdiv};
  bl_status st = BL_OK;
  if (w->fmt == BK_WF_F16) {
    /* x as the kernel wants it: ldx = the weight's row length in elements
     * (zero padded), rows 16-byte aligned. */
    ldx = (int)(w->stride / 2);
    if (w->perm || ldx != cols || ((uintptr_t)x & 15u)) {
      void *buf;
      if ((st = cu_scratch(c, (size_t)n * (size_t)ldx * sizeof(float), &buf)) != BL_OK) return st;
      if ((st = cu_prep_x<float>(c, (float *)buf, x, w->perm, cols, ldx, n)) != BL_OK) return st;
      x = (const float *)buf;
    }
  } else {
    st = w->fmt == BK_WF_W4 ? cu_gemv_q_prep<4>(c, &xq, x, w, n)
                            : cu_gemv_q_prep<2>(c, &xq, x, w, n);
    if (st != BL_OK) return st;
  }
  for (int t0 = 0; t0 < n; t0 += CU_GEMV_TILE) {
    int nt = n - t0 < CU_GEMV_TILE ? n - t0 : CU_GEMV_TILE;
    const float *xt = x + (size_t)t0 * ldx;
    cu_xq xqt = xq;
    if (xq.x) {
      xqt.x += (size_t)t0 * xq.ldq / 8;
      xqt.b += (size_t)t0 * (xq.ldq / 32);
    }
    float *yt = y + (size_t)t0 * w->rows;
    switch (w->fmt) {
    case BK_WF_F16: cu_gemv_tile<16>(c, yt, xt, ldx, &xqt, w, nt); break;
    case BK_WF_W4: cu_gemv_tile<4>(c, yt, xt, ldx, &xqt, w, nt); break;
    case BK_WF_W2: cu_gemv_tile<2>(c, yt, xt, ldx, &xqt, w, nt); break;
    }
    CU_CHECK_LAUNCH(c, "cu_gemv_kernel");
  }
  return BL_OK;
}

/* ---- cuBLAS path ------------------------------------------------------- */

/* wt[i][k] = fp16(W[r0 + i][k]) for i < tr, k < cols; ld = cols. */
template <int BITS>
static __global__ void
cu_dequant_tile_kernel(__half *__restrict__ wt, const uint8_t *__restrict__ q,
                       const __half2 *__restrict__ sm, size_t stride, int n_groups, int group_size,
                       int r0, int tr, int cols) {
  size_t total = (size_t)tr * cols;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (size_t)gridDim.x * blockDim.x) {
    int i = (int)(e / cols), k = (int)(e % cols);
    wt[e] = __float2half_rn(cu_weight_elem<BITS>(q, sm, stride, n_groups, group_size, r0 + i, k));
  }
}

/* y[n][ldy] (columns r0..r0+m) = xh[n][ldx] . A^T, A = fp16 [m][lda]. */
static bl_status cu_gemm_f16(cu_ctx *c, float *y, int ldy, const __half *xh, int ldx,
                             const __half *a, int lda, int m, int n, int k) {
  const float one = 1.0f, zero = 0.0f;
  /* Column-major view: y^T (m x n) = A (m x k, stored as k x m, so op T) . xh^T (k x n). */
  CU_CHECK_BLAS(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_16F,
                                lda, xh, CUDA_R_16F, ldx, &zero, y, CUDA_R_32F, ldy,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return BL_OK;
}

static bl_status cu_gemm(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n) {
  int cols = w->cols, rows = w->rows;
  int ldx = (int)cu_round_up((size_t)cols, 8);
  size_t x_bytes = cu_round_up((size_t)n * (size_t)ldx * sizeof(__half), 256);
  int tile_rows = rows;
  if (w->fmt != BK_WF_F16) {
    size_t fit = CU_DEQUANT_TILE_BYTES / ((size_t)cols * sizeof(__half));
    if (fit < 64) fit = 64;
    if (fit < (size_t)rows) tile_rows = (int)fit;
  }
  size_t tile_bytes = w->fmt == BK_WF_F16 ? 0 : (size_t)tile_rows * (size_t)cols * sizeof(__half);
  void *buf;
  bl_status st = cu_scratch(c, x_bytes + tile_bytes, &buf);
  if (st != BL_OK) return st;
  __half *xh = (__half *)buf;
  st = cu_prep_x<__half>(c, xh, x, w->perm, cols, ldx, n);
  if (st != BL_OK) return st;
  if (w->fmt == BK_WF_F16)
    return cu_gemm_f16(c, y, rows, xh, ldx, (const __half *)w->q, (int)(w->stride / 2), rows, n,
                       cols);

  __half *wt = (__half *)((char *)buf + x_bytes);
  for (int r0 = 0; r0 < rows; r0 += tile_rows) {
    int tr = rows - r0 < tile_rows ? rows - r0 : tile_rows;
    unsigned grid = cu_min_u(cu_cdiv((size_t)tr * cols, 256), 8 * 1024);
    if (w->fmt == BK_WF_W4)
      cu_dequant_tile_kernel<4><<<grid, 256, 0, c->stream>>>(
          wt, (const uint8_t *)w->q, w->sm, w->stride, w->n_groups, w->group_size, r0, tr, cols);
    else
      cu_dequant_tile_kernel<2><<<grid, 256, 0, c->stream>>>(
          wt, (const uint8_t *)w->q, w->sm, w->stride, w->n_groups, w->group_size, r0, tr, cols);
    CU_CHECK_LAUNCH(c, "cu_dequant_tile_kernel");
    st = cu_gemm_f16(c, y + r0, rows, xh, ldx, wt, cols, tr, n, cols);
    if (st != BL_OK) return st;
  }
  return BL_OK;
}

bl_status cu_matmul_launch(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n) {
  if (n <= 0) return BL_OK;
  if (w->fmt != BK_WF_F16 && n >= CU_MMA_MIN_TOKENS && n <= CU_MMA_MAX_TOKENS)
    return cu_mma_launch(c, y, x, w, n);
  int gemv_max = w->fmt == BK_WF_F16 ? CU_GEMV_MAX_TOKENS_F16 : CU_GEMV_MAX_TOKENS_Q;
  unsigned gdiv = 0;
  bool gemv = n <= gemv_max && (w->fmt == BK_WF_F16 || cu_gemv_q_ok(w, &gdiv));
  return gemv ? cu_gemv(c, y, x, w, n, gdiv) : cu_gemm(c, y, x, w, n);
}

extern "C" bl_status cu_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w,
                               int32_t n) {
  CU_ENTER(c, be);
  const cu_weight *cw = cu_weight_of(c, w, "matmul");
  if (!cw) return BL_EINVAL;
  return cu_matmul_launch(c, y, x, cw, n);
}
