/* matmul for fp16, w4 and w2 weights (see cu_matmul.cuh for the paths).
 *
 * GEMV layout: block = CU_GEMV_WARPS warps, warp w of block b owns rows
 * (b*CU_GEMV_WARPS + w)*R .. +R-1 (R = 4 for one token unless the matrix is
 * too short to fill the GPU, else 1); lane l reads 16-byte loads l, l+32, ...
 * of those rows (8 fp16, one W4 block or two W2 blocks each) and the matching
 * x, which is fp32 [n][ldx] with ldx a multiple of 8 floats, rows 16-byte
 * aligned and zero past cols (the weight's row padding is zero too, so no
 * bounds checks are needed on fp16 rows). */
#include "cu_matmul.cuh"

#define CU_GEMV_WARPS 4

/* ---- x preparation: gather by perm, pad with zeros, optionally to fp16 -- */

static __device__ __forceinline__ void cu_store_x(float *p, float v) { *p = v; }
/* fp16 saturates instead of overflowing to inf: activations past 65504 are
 * rare, and a clipped value is a smaller error than an inf in every output. */
static __device__ __forceinline__ void cu_store_x(__half *p, float v) {
  *p = __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

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

/* ---- GEMV --------------------------------------------------------------- */

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

/* sum_j q[j] * xs[j] over one 32-column block whose bytes are the words
 * wd[0..BITS-1] (4 for W4, 2 for W2; layout in backend.h). */
template <int BITS>
static __device__ __forceinline__ float cu_qdot_block(const uint32_t *wd, const float *xs) {
  float qx = 0.0f;
  if constexpr (BITS == 4) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
      uint32_t byte = (wd[j >> 2] >> (8 * (j & 3))) & 0xffu;
      qx += (float)(byte & 15u) * xs[j] + (float)(byte >> 4) * xs[j + 16];
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; j++) {
      uint32_t byte = (wd[j >> 2] >> (8 * (j & 3))) & 0xffu;
      qx += (float)(byte & 3u) * xs[j] + (float)((byte >> 2) & 3u) * xs[j + 8] +
            (float)((byte >> 4) & 3u) * xs[j + 16] + (float)(byte >> 6) * xs[j + 24];
    }
  }
  return qx;
}

/* R rows per warp: each x value a lane loads serves R rows, which keeps the
 * x traffic (L1) below the weight traffic (HBM) for W4 and W2. The last warp
 * may own rows past the end: it reads row rows-1 again and stores nothing. */
template <int BITS, int NT, int R>
static __global__ void __launch_bounds__(CU_GEMV_WARPS * 32)
    cu_gemv_kernel(float *__restrict__ y, const float *__restrict__ x, int ldx,
                   const uint8_t *__restrict__ q, const __half2 *__restrict__ sm, size_t stride,
                   int n_groups, int group_size, int rows, int cols) {
  int lane = threadIdx.x & 31;
  int row0 = (blockIdx.x * CU_GEMV_WARPS + (threadIdx.x >> 5)) * R;
  if (row0 >= rows) return; /* the whole warp leaves together */
  int rr[R];
  const uint4 *wrow[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    rr[r] = row0 + r < rows ? row0 + r : rows - 1;
    wrow[r] = (const uint4 *)(q + (size_t)rr[r] * stride);
  }
  int n_loads = (int)(stride / 16);
  float acc[NT][R];
#pragma unroll
  for (int t = 0; t < NT; t++)
#pragma unroll
    for (int r = 0; r < R; r++)
      acc[t][r] = 0.0f;

  for (int l = lane; l < n_loads; l += 32) {
    uint4 raw[R];
#pragma unroll
    for (int r = 0; r < R; r++)
      raw[r] = __ldg(wrow[r] + l);
    if constexpr (BITS == 16) {
#pragma unroll
      for (int t = 0; t < NT; t++) {
        float xs[8];
        cu_load_x8(x + (size_t)t * ldx + l * 8, xs);
#pragma unroll
        for (int r = 0; r < R; r++)
          acc[t][r] += cu_dot8_f16(raw[r], xs);
      }
    } else {
      constexpr int BPL = 16 / (BITS * 4); /* blocks per load: W4 1, W2 2 */
#pragma unroll
      for (int bb = 0; bb < BPL; bb++) {
        int blk = l * BPL + bb;
        if (blk * 32 < cols) { /* the second W2 block of a row may be padding */
          float2 g[R];
#pragma unroll
          for (int r = 0; r < R; r++)
            g[r] = __half22float2(sm[(size_t)rr[r] * n_groups + blk * 32 / group_size]);
#pragma unroll
          for (int t = 0; t < NT; t++) {
            float xs[32], sx = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++)
              cu_load_x8(x + (size_t)t * ldx + blk * 32 + 8 * i, xs + 8 * i);
#pragma unroll
            for (int j = 0; j < 32; j++)
              sx += xs[j];
#pragma unroll
            for (int r = 0; r < R; r++) {
              uint32_t wd[4] = {raw[r].x, raw[r].y, raw[r].z, raw[r].w};
              /* w = scale*q + min, so sum w*x = scale*sum(q*x) + min*sum(x) */
              acc[t][r] += g[r].x * cu_qdot_block<BITS>(wd + bb * BITS, xs) + g[r].y * sx;
            }
          }
        }
      }
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

template <int BITS, int NT>
static void cu_gemv_launch_nt(cu_ctx *c, float *y, const float *x, int ldx, const cu_weight *w) {
  const uint8_t *q = (const uint8_t *)w->q;
  /* Four rows per warp for one token where that still gives every SM a
   * block; else one (with more tokens, four rows need over 240 registers). */
  if constexpr (NT == 1) {
    if ((size_t)w->rows >= (size_t)CU_GEMV_WARPS * 4 * (size_t)c->sm_count) {
      unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS * 4);
      cu_gemv_kernel<BITS, 1, 4><<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(
          y, x, ldx, q, w->sm, w->stride, w->n_groups, w->group_size, w->rows, w->cols);
      return;
    }
  }
  unsigned grid = cu_cdiv((size_t)w->rows, CU_GEMV_WARPS);
  cu_gemv_kernel<BITS, NT, 1><<<grid, CU_GEMV_WARPS * 32, 0, c->stream>>>(
      y, x, ldx, q, w->sm, w->stride, w->n_groups, w->group_size, w->rows, w->cols);
}

template <int BITS>
static void cu_gemv_launch_bits(cu_ctx *c, float *y, const float *x, int ldx, const cu_weight *w,
                                int nt) {
  switch (nt) {
  case 1: cu_gemv_launch_nt<BITS, 1>(c, y, x, ldx, w); break;
  case 2: cu_gemv_launch_nt<BITS, 2>(c, y, x, ldx, w); break;
  case 3: cu_gemv_launch_nt<BITS, 3>(c, y, x, ldx, w); break;
  case 4: cu_gemv_launch_nt<BITS, 4>(c, y, x, ldx, w); break;
  case 5: cu_gemv_launch_nt<BITS, 5>(c, y, x, ldx, w); break;
  case 6: cu_gemv_launch_nt<BITS, 6>(c, y, x, ldx, w); break;
  case 7: cu_gemv_launch_nt<BITS, 7>(c, y, x, ldx, w); break;
  default: cu_gemv_launch_nt<BITS, 8>(c, y, x, ldx, w); break;
  }
}

static bl_status cu_gemv(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n) {
  int cols = w->cols;
  /* x as the kernel wants it: ldx = the weight's row length in elements for
   * fp16 (zero padded), cols for quantized rows (whole blocks, no padding). */
  int ldx = w->fmt == BK_WF_F16 ? (int)(w->stride / 2) : cols;
  bool prep = w->perm || ldx != cols || ((uintptr_t)x & 15u);
  if (prep) {
    void *buf;
    bl_status st = cu_scratch(c, (size_t)n * (size_t)ldx * sizeof(float), &buf);
    if (st != BL_OK) return st;
    st = cu_prep_x<float>(c, (float *)buf, x, w->perm, cols, ldx, n);
    if (st != BL_OK) return st;
    x = (const float *)buf;
  }
  for (int t0 = 0; t0 < n; t0 += CU_GEMV_TILE) {
    int nt = n - t0 < CU_GEMV_TILE ? n - t0 : CU_GEMV_TILE;
    const float *xt = x + (size_t)t0 * ldx;
    float *yt = y + (size_t)t0 * w->rows;
    switch (w->fmt) {
    case BK_WF_F16: cu_gemv_launch_bits<16>(c, yt, xt, ldx, w, nt); break;
    case BK_WF_W4: cu_gemv_launch_bits<4>(c, yt, xt, ldx, w, nt); break;
    case BK_WF_W2: cu_gemv_launch_bits<2>(c, yt, xt, ldx, w, nt); break;
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
  int gemv_max = w->fmt == BK_WF_F16 ? CU_GEMV_MAX_TOKENS_F16 : CU_GEMV_MAX_TOKENS_Q;
  return n <= gemv_max ? cu_gemv(c, y, x, w, n) : cu_gemm(c, y, x, w, n);
}

extern "C" bl_status cu_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w,
                               int32_t n) {
  CU_ENTER(c, be);
  const cu_weight *cw = cu_weight_of(c, w, "matmul");
  if (!cw) return BL_EINVAL;
  return cu_matmul_launch(c, y, x, cw, n);
}
