/* The tensor-core path of matmul for W4/W2 weights at 2..64 tokens:
 * y[n][rows] = x[n][cols] . W^T with nvcuda::wmma 16x16x16 fragments, fp16
 * inputs and fp32 accumulation (WMMA lowers to mma.sync, so one source
 * serves sm_80, sm_90 and sm_100). The product is taken as y^T = W . x^T:
 * matrix_a is a 16-row tile of W (row major in shared memory), matrix_b a
 * 16-token tile of x (x is staged [token][k], so column major), the
 * accumulator a 16-row x 16-token tile of y^T (stored column major: y).
 *
 * One call:
 *  1. cu_mma_prep_x_kernel writes x once as fp16 [NP][ldx]: NP = n rounded
 *     up to 16, ldx = cols rounded up to CU_MMA_BK, gathered through perm,
 *     saturated at +-65504 (cu_half_sat, as the other paths), zero past cols
 *     and for tokens n..NP-1, and each 32-column block in the order the
 *     dequantization below produces columns (cu_xq_pos, the GEMV's order), so
 *     neither side reorders anything. Every block of the kernel reads its x
 *     again; read prepared, that is 2 coalesced bytes a value from L2 instead
 *     of a 4-byte gather through perm in every block.
 *  2. cu_mma_kernel, grid (row tiles, K splits), block CU_MMA_WARPS = 4
 *     warps, tile CU_MMA_BM = 128 rows x NP tokens. Per stage of CU_MMA_BK =
 *     64 columns (two 32-column quantization blocks; the last stage may be
 *     one): thread i dequantizes row i's 64 weights (one 16-byte W2 load, two
 *     W4) with their (scale, min) into shared memory as fp16, the block
 *     copies the stage's x [NP][64] there, and warp w multiplies its 32 rows
 *     (two matrix_a fragments) by the NT = NP/16 matrix_b fragments over the
 *     stage's four k-steps: 2*NT accumulators of 16x16 per warp. The next
 *     stage's weight words, (scale, min) and x are loaded into registers
 *     before this stage's mma_sync, so the loads are in flight during the
 *     math. At the end the accumulators go through shared memory to y,
 *     coalesced and bounds-checked (rows and tokens past the end are
 *     computed on zeros and dropped).
 *  3. K splits (when the row tiles alone cannot give every SM
 *     CU_MMA_BLOCKS_PER_SM blocks): split s takes stages [s*S/splits,
 *     (s+1)*S/splits) and writes its partial y to scratch [splits][n][rows];
 *     cu_mma_reduce_kernel adds them in split order, so results do not depend
 *     on scheduling. The split count depends on the shape and the GPU only,
 *     not on n, and every output is summed over k in the same order for any
 *     n: a token's result does not depend on the batch it is in (2..64).
 *
 * Dequantization: w = scale * q + min, the formula of bk_weight_row_f32 and
 * cu_weight_elem, as one HFMA2 per two weights on the exact (q, q'): the
 * exact value rounded once to fp16, which is the cuBLAS path's
 * fp16(fp32(scale * q + min)) whenever the fp32 value is exact (an fp16
 * scale times q < 16 is exact; adding min is unless the two are more than
 * 2^13 apart). q comes out of the packed word exactly with the fp16 magic
 * number: a field at bit s of a half, ORed with the exponent of 2^(10-s),
 * reads as 2^(10-s) + q, and adding -2^(10-s) leaves q. Per two weights one
 * LOP3, one HADD2 and one HFMA2, plus one SHF per word for the odd bytes (the
 * GEMV's subnormal trick would need a multiply by 2^(24-s), which fp16 cannot
 * hold). The error against the CPU is the fp16 rounding of w and x (2^-11
 * each, relative) plus fp32 sums: tests/gpu/test_cuda_mma.c.
 *
 * Balance (estimated from H200 figures, not measured: docs/perf.md says how
 * the H200's numbers are derived). Per SM per clock the H200 has 18.4 bytes
 * of HBM (73.5 W2 or 36.8 W4 weights), 128 bytes of shared memory, 128
 * lane-instructions and about 1900 dense fp16 tensor FMAs (989 TFLOP/s;
 * mma.sync reaches less than that on sm_90, where wgmma is the full-rate
 * instruction). Per weight of a stage this kernel spends:
 *  - shared memory: 2 bytes to store it dequantized and 2 to load it as
 *    matrix_a (each warp loads only its own rows), NT bytes of matrix_b loads
 *    (each warp loads all NT x fragments per k-step for its 32 rows) and
 *    NT/4 to stage x: 5.25 bytes at NT = 1 (n <= 16), 9 at NT = 4;
 *  - about 1.8 lane-instructions (1.7 of dequantization, the fragment loads
 *    and mma_sync issue little);
 *  - NP tensor FMAs;
 *  - 1/4 (W2) or 1/2 (W4) byte of HBM, 1/32 more of (scale, min) at g128,
 *    and NT/4 bytes of x from L2.
 * So shared memory binds: about 24 weights per SM per clock at NT = 1 (W2
 * at a third of the HBM rate, W4 at two thirds), 14 at NT = 4, where the
 * tensor cores at mma.sync rates are close to binding too. That beats the
 * GEMV re-reading the weights per 8-token tile from about 8 tokens up (0.61
 * instructions per weight per token: 13 weights per clock at 16 tokens) and
 * the cuBLAS path's fp16 copy of the weights (8-16x their bytes) everywhere
 * in 2..64; below 8 tokens the GEMV (still memory-bound at 2) may win, hence
 * CU_MMA_MIN_TOKENS is a tuning constant. Getting past the shared-memory
 * bound means dequantizing straight into mma.sync register fragments and
 * keeping x's fragments in registers (the Marlin layout), which WMMA's opaque
 * fragments do not allow. K splits cost splits * n * rows * 4 bytes written
 * and read again (L2-resident at these sizes). */
#include "cu_matmul.cuh"
#include "cu_mma.cuh"

#include <mma.h>

namespace wmma = nvcuda::wmma;

#define CU_MMA_WARPS   4
#define CU_MMA_THREADS (CU_MMA_WARPS * 32)
#define CU_MMA_BM      (CU_MMA_WARPS * 32) /* rows per block: one per thread, 32 per warp */
#define CU_MMA_BK      64                  /* columns per stage */
/* Halves per staged row: 16 bytes of padding, so the 8 rows of an
 * ldmatrix phase (144 bytes apart) and a warp's 16-byte dequantized stores
 * land in 8 different 16-byte bank groups. A multiple of 8 halves, as WMMA
 * wants. */
#define CU_MMA_LDS (CU_MMA_BK + 8)
/* Floats per staged output column (one token): a multiple of 4, as WMMA
 * wants. */
#define CU_MMA_LDY (CU_MMA_BM + 4)
/* K splits: at least this many blocks per SM where the row tiles give
 * fewer, each split at least CU_MMA_MIN_STAGES stages, at most
 * CU_MMA_MAX_SPLITS splits. */
#define CU_MMA_BLOCKS_PER_SM 2
#define CU_MMA_MIN_STAGES    4
#define CU_MMA_MAX_SPLITS    8

typedef struct cu_mma_args {
  float *y;           /* [n][rows], or the partials [splits][n][rows] */
  const __half *xh;   /* prepared x [NP][ldx] */
  const uint8_t *q;   /* packed rows, stride bytes apart (cu_weight.cuh) */
  const uint32_t *sm; /* (scale, min) as __half2 bits, cu_sm_index order */
  size_t stride;
  int ldx, rows, cols, n, n_groups, group_size;
} cu_mma_args;

/* Shared memory: the stage (W [BM][LDS] then x [NP][LDS], fp16) and, after
 * the last stage, the output [NP][LDY] (fp32) in the same bytes. 32-byte
 * aligned: WMMA wants 256-bit aligned tile pointers. */
template <int NT> static __host__ __device__ constexpr int cu_mma_smem_bytes() {
  return (CU_MMA_BM + 16 * NT) * CU_MMA_LDS * 2 > 16 * NT * CU_MMA_LDY * 4
             ? (CU_MMA_BM + 16 * NT) * CU_MMA_LDS * 2
             : 16 * NT * CU_MMA_LDY * 4;
}
template <int NT> struct alignas(32) cu_mma_smem { uint4 raw[cu_mma_smem_bytes<NT>() / 16]; };

/* ---- x preparation -------------------------------------------------------- */

/* xo[t][b*32 + cu_xq_pos(j)] = fp16(x[t][perm(k)]), k = b*32 + j, for t < n
 * and k < cols; 0 elsewhere in [NP][ldx] (gridDim.x = NP). */
template <int BITS>
static __global__ void cu_mma_prep_x_kernel(__half *__restrict__ xo, const float *__restrict__ x,
                                            const int32_t *__restrict__ perm, int cols, int ldx,
                                            int n) {
  int t = blockIdx.x;
  for (int k = blockIdx.y * blockDim.x + threadIdx.x; k < ldx; k += gridDim.y * blockDim.x) {
    float v = 0.0f;
    if (t < n && k < cols) v = x[(size_t)t * cols + (perm ? perm[k] : k)];
    xo[(size_t)t * ldx + (k & ~31) + cu_xq_pos<BITS>(k & 31)] = cu_half_sat(v);
  }
}

/* ---- one stage: registers, then shared memory ----------------------------- */

/* What a thread loads for one stage: its row's weight words and (scale, min)
 * for the stage's (up to) two 32-column blocks, and its share of x. */
template <int BITS, int NT> struct cu_mma_stage {
  uint4 w[BITS / 2]; /* W2: one 16-byte load = 64 columns; W4: two */
  uint32_t sm[2];    /* (scale, min) of blocks 0 and 1 */
  uint4 x[NT];       /* 16-byte pieces tid + CU_MMA_THREADS * i of x [NP][64] */
};

/* Load stage k0 (kc = 32 or 64 columns) for row r (live: r < rows). Weight
 * reads stay inside the row: its bytes start 16-aligned, a W2 row of
 * 32 (mod 64) columns is padded to 16 bytes (cu_weight.cuh), and a W4 row's
 * second load is only read when the stage has 64 columns. x needs no bounds:
 * the prepared x is zero to NP and ldx. */
template <int BITS, int NT>
static __device__ __forceinline__ void cu_mma_load(cu_mma_stage<BITS, NT> &s, const cu_mma_args &a,
                                                   int r, bool live, int k0, int kc) {
  if (live) {
    const uint4 *src = (const uint4 *)(a.q + (size_t)r * a.stride + (size_t)k0 * BITS / 8);
    s.w[0] = __ldg(src);
    if constexpr (BITS == 4) {
      if (kc > 32) s.w[1] = __ldg(src + 1);
    }
    s.sm[0] = __ldg(a.sm + cu_sm_index(r, k0 / a.group_size, a.n_groups));
    if (kc > 32) s.sm[1] = __ldg(a.sm + cu_sm_index(r, (k0 + 32) / a.group_size, a.n_groups));
  }
#pragma unroll
  for (int i = 0; i < NT; i++) {
    int p = threadIdx.x + CU_MMA_THREADS * i; /* piece: token p / 8, columns (p % 8) * 8.. */
    s.x[i] = __ldg((const uint4 *)(a.xh + (size_t)(p >> 3) * a.ldx + k0) + (p & 7));
  }
}

/* One 32-column block (words wd[0..BITS-1]) with (scale, min) smv to 32
 * fp16 weights in the cu_xq_pos order, as four 16-byte pieces. */
template <int BITS>
static __device__ __forceinline__ void cu_mma_dequant(uint4 *dst, const uint32_t *wd,
                                                      uint32_t smv) {
  constexpr uint32_t M = BITS == 4 ? 0x000f000fu : 0x00030003u;
  constexpr int NF = 8 / BITS; /* fields per byte */
  const __half2 s2 = cu_h2((smv & 0xffffu) * 0x10001u), m2 = cu_h2((smv >> 16) * 0x10001u);
  uint32_t o[16];
#pragma unroll
  for (int w = 0; w < BITS; w++) {
    uint32_t lo = wd[w], hi = wd[w] >> 8;
#pragma unroll
    for (int f = 0; f < NF; f++) {
      /* the field sits at bit s = BITS*f: fp16 exponent of 2^(10-s), and -2^(10-s) */
      constexpr uint32_t one = 0x10001u;
      const uint32_t e = (25u - (uint32_t)(BITS * f)) << 10, mag = e * one,
                     neg = (e | 0x8000u) * one;
      __half2 q0 = __hadd2(cu_h2((lo & (M << (BITS * f))) | mag), cu_h2(neg));
      __half2 q1 = __hadd2(cu_h2((hi & (M << (BITS * f))) | mag), cu_h2(neg));
      o[w * 2 * NF + 2 * f] = cu_u32(__hfma2(q0, s2, m2));
      o[w * 2 * NF + 2 * f + 1] = cu_u32(__hfma2(q1, s2, m2));
    }
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
    dst[i] = uint4{o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]};
}

/* The stage from registers into shared memory: row tid of ws (zeros for a
 * row past the end) and the thread's pieces of xs. */
template <int BITS, int NT>
static __device__ __forceinline__ void
cu_mma_put(__half *ws, __half *xs, const cu_mma_stage<BITS, NT> &s, bool live, int kc) {
  uint4 *wrow = (uint4 *)(ws + threadIdx.x * CU_MMA_LDS);
  if (live) {
    uint32_t wd[4];
    if constexpr (BITS == 4) {
      wd[0] = s.w[0].x, wd[1] = s.w[0].y, wd[2] = s.w[0].z, wd[3] = s.w[0].w;
    } else {
      wd[0] = s.w[0].x, wd[1] = s.w[0].y;
    }
    cu_mma_dequant<BITS>(wrow, wd, s.sm[0]);
    if (kc > 32) {
      if constexpr (BITS == 4) {
        wd[0] = s.w[1].x, wd[1] = s.w[1].y, wd[2] = s.w[1].z, wd[3] = s.w[1].w;
      } else {
        wd[0] = s.w[0].z, wd[1] = s.w[0].w;
      }
      cu_mma_dequant<BITS>(wrow + 4, wd, s.sm[1]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < CU_MMA_BK / 8; i++)
      wrow[i] = uint4{0, 0, 0, 0};
  }
#pragma unroll
  for (int i = 0; i < NT; i++) {
    int p = threadIdx.x + CU_MMA_THREADS * i;
    *((uint4 *)(xs + (p >> 3) * CU_MMA_LDS) + (p & 7)) = s.x[i];
  }
}

/* ---- the kernel ------------------------------------------------------------ */

/* Columns of the stage at k0: 64, or 32 for a last stage of one block. */
static __device__ __forceinline__ int cu_mma_kc(int cols, int k0) {
  return cols - k0 < CU_MMA_BK ? cols - k0 : CU_MMA_BK;
}

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> cu_mma_acc;

/* acc[i][j] += rows warp*32 + 16i.. of ws times tokens 16j.. of xs, over the
 * stage's kc columns. */
template <int NT>
static __device__ __forceinline__ void cu_mma_stage_mma(cu_mma_acc (&acc)[2][NT], const __half *ws,
                                                        const __half *xs, int warp, int kc) {
  for (int kk = 0; kk < kc; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
#pragma unroll
    for (int i = 0; i < 2; i++)
      wmma::load_matrix_sync(fa[i], ws + (warp * 32 + i * 16) * CU_MMA_LDS + kk, CU_MMA_LDS);
#pragma unroll
    for (int j = 0; j < NT; j++) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, xs + j * 16 * CU_MMA_LDS + kk, CU_MMA_LDS);
#pragma unroll
      for (int i = 0; i < 2; i++)
        wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
    }
  }
}

/* Block (blockIdx.x, blockIdx.y): rows blockIdx.x*BM.., split blockIdx.y of
 * gridDim.y. Every thread reaches every barrier; a warp whose 32 rows are all
 * past the end skips only its mma_sync. */
template <int BITS, int NT>
static __global__ void __launch_bounds__(CU_MMA_THREADS) cu_mma_kernel(cu_mma_args a) {
  __shared__ cu_mma_smem<NT> sh;
  __half *ws = (__half *)sh.raw, *xs = ws + CU_MMA_BM * CU_MMA_LDS;
  int warp = threadIdx.x >> 5, row0 = blockIdx.x * CU_MMA_BM, r = row0 + threadIdx.x;
  bool live = r < a.rows, warp_live = row0 + warp * 32 < a.rows;
  int n_st = (a.cols + CU_MMA_BK - 1) / CU_MMA_BK;
  int s0 = (int)((int64_t)blockIdx.y * n_st / gridDim.y);
  int s1 = (int)((int64_t)(blockIdx.y + 1) * n_st / gridDim.y);

  cu_mma_acc acc[2][NT];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < NT; j++)
      wmma::fill_fragment(acc[i][j], 0.0f);
  cu_mma_stage<BITS, NT> st = {};
  if (s0 < s1) {
    int k0 = s0 * CU_MMA_BK;
    cu_mma_load(st, a, r, live, k0, cu_mma_kc(a.cols, k0));
  }
  for (int s = s0; s < s1; s++) {
    int k0 = s * CU_MMA_BK, kc = cu_mma_kc(a.cols, k0);
    __syncthreads(); /* every warp is done with the previous stage */
    cu_mma_put(ws, xs, st, live, kc);
    __syncthreads();
    if (s + 1 < s1) {
      int k1 = k0 + CU_MMA_BK;
      cu_mma_load(st, a, r, live, k1, cu_mma_kc(a.cols, k1));
    }
    if (warp_live) cu_mma_stage_mma<NT>(acc, ws, xs, warp, kc);
  }

  __syncthreads(); /* the stage's bytes become the output */
  float *ys = (float *)sh.raw;
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < NT; j++)
      wmma::store_matrix_sync(ys + j * 16 * CU_MMA_LDY + warp * 32 + i * 16, acc[i][j], CU_MMA_LDY,
                              wmma::mem_col_major);
  __syncthreads();
  float *out = a.y + (size_t)blockIdx.y * (size_t)a.n * (size_t)a.rows;
  int nr = a.rows - row0 < CU_MMA_BM ? a.rows - row0 : CU_MMA_BM;
  for (int e = threadIdx.x; e < a.n * CU_MMA_BM; e += CU_MMA_THREADS) {
    int t = e / CU_MMA_BM, i = e % CU_MMA_BM;
    if (i < nr) out[(size_t)t * a.rows + row0 + i] = ys[t * CU_MMA_LDY + i];
  }
}

/* y[i] = sum over s of part[s][i], s in order. */
static __global__ void cu_mma_reduce_kernel(float *__restrict__ y, const float *__restrict__ part,
                                            size_t len, int splits) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
       i += (size_t)gridDim.x * blockDim.x) {
    float v = part[i];
    for (int s = 1; s < splits; s++)
      v += part[(size_t)s * len + i];
    y[i] = v;
  }
}

/* ---- launch ---------------------------------------------------------------- */

/* K splits for w on this GPU (1: none); see CU_MMA_BLOCKS_PER_SM. */
static int cu_mma_splits(const cu_ctx *c, const cu_weight *w) {
  int tiles = (int)cu_cdiv((size_t)w->rows, CU_MMA_BM);
  int n_st = (int)cu_cdiv((size_t)w->cols, CU_MMA_BK);
  int want = (int)cu_cdiv((size_t)CU_MMA_BLOCKS_PER_SM * (size_t)c->sm_count, (size_t)tiles);
  int most = n_st / CU_MMA_MIN_STAGES;
  if (most > CU_MMA_MAX_SPLITS) most = CU_MMA_MAX_SPLITS;
  int s = want < most ? want : most;
  return s > 1 ? s : 1;
}

/* The launches take their arguments by value, not through host pointers:
 * the emulator's launch evaluates them when the kernel runs, which under
 * graph capture is after this function returns. */
template <int BITS, int NT> static bl_status cu_mma_run(cu_ctx *c, cu_mma_args a, int splits) {
  dim3 grid(cu_cdiv((size_t)a.rows, CU_MMA_BM), (unsigned)splits);
  cu_mma_kernel<BITS, NT><<<grid, CU_MMA_THREADS, 0, c->stream>>>(a);
  CU_CHECK_LAUNCH(c, "cu_mma_kernel");
  return BL_OK;
}

template <int BITS>
static bl_status cu_mma_bits(cu_ctx *c, cu_mma_args a, int nt, int splits, const float *x,
                             const int32_t *perm) {
  dim3 pgrid((unsigned)(16 * nt), cu_min_u(cu_cdiv((size_t)a.ldx, 256), 64));
  cu_mma_prep_x_kernel<BITS>
      <<<pgrid, 256, 0, c->stream>>>((__half *)a.xh, x, perm, a.cols, a.ldx, a.n);
  CU_CHECK_LAUNCH(c, "cu_mma_prep_x_kernel");
  switch (nt) {
  case 1: return cu_mma_run<BITS, 1>(c, a, splits);
  case 2: return cu_mma_run<BITS, 2>(c, a, splits);
  case 3: return cu_mma_run<BITS, 3>(c, a, splits);
  default: return cu_mma_run<BITS, 4>(c, a, splits);
  }
}

bl_status cu_mma_launch(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n) {
  if ((w->fmt != BK_WF_W4 && w->fmt != BK_WF_W2) || n < 1 || n > CU_MMA_MAX_TOKENS)
    return cu_invalid(c, "matmul", "mma path: W4/W2 weights and 1..64 tokens only");
  int nt = (n + 15) / 16, splits = cu_mma_splits(c, w);
  int ldx = (int)cu_round_up((size_t)w->cols, CU_MMA_BK);
  size_t xb = cu_round_up((size_t)16 * nt * (size_t)ldx * sizeof(__half), 256);
  size_t pb = splits > 1 ? (size_t)splits * (size_t)n * (size_t)w->rows * sizeof(float) : 0;
  void *buf;
  bl_status st = cu_scratch(c, xb + pb, &buf);
  if (st != BL_OK) return st;
  cu_mma_args a = {splits > 1 ? (float *)((char *)buf + xb) : y,
                   (const __half *)buf,
                   (const uint8_t *)w->q,
                   (const uint32_t *)w->sm,
                   w->stride,
                   ldx,
                   w->rows,
                   w->cols,
                   n,
                   w->n_groups,
                   w->group_size};
  st = w->fmt == BK_WF_W4 ? cu_mma_bits<4>(c, a, nt, splits, x, w->perm)
                          : cu_mma_bits<2>(c, a, nt, splits, x, w->perm);
  if (st != BL_OK || splits == 1) return st;
  size_t len = (size_t)n * (size_t)w->rows;
  unsigned rgrid = cu_min_u(cu_cdiv(len, 256), 1024);
  cu_mma_reduce_kernel<<<rgrid, 256, 0, c->stream>>>(y, a.y, len, splits);
  CU_CHECK_LAUNCH(c, "cu_mma_reduce_kernel");
  return BL_OK;
}
