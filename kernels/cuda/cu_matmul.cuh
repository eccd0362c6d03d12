/* matmul: y[n][rows] = x[n][cols] . W^T for a prepared weight of any format.
 *
 * Three paths, chosen by format and token count in cu_matmul_launch:
 *  - GEMV (fp16 up to CU_GEMV_MAX_TOKENS_F16 tokens, W4/W2 up to
 *    CU_GEMV_MAX_TOKENS_Q: batch-1 decode): one warp per output row (or
 *    four) streams the row once per CU_GEMV_TILE tokens with 16-byte loads
 *    and warp-reduces. fp16 weights: fp32 products and sums. W4/W2: x
 *    rounded to fp16 once per call and staged in shared memory, fields
 *    unpacked in registers as fp16, w = scale*q + min folded as
 *    scale*sum(q*x) + min*sum(x) per 32-column block, the block's sum(q*x)
 *    in fp16, the rest in fp32 (cu_matmul.cu).
 *  - Tensor cores (W4/W2, CU_MMA_MIN_TOKENS..CU_MMA_MAX_TOKENS, cu_mma.cu):
 *    each block dequantizes a tile of rows to fp16 in shared memory and
 *    multiplies it by x (fp16) with WMMA, fp32 accumulate.
 *  - cuBLAS (fp16 past the GEMV, W4/W2 past CU_MMA_MAX_TOKENS, or a W4/W2
 *    batch of one the GEMV cannot address): x is rounded to fp16 and cuBLAS
 *    multiplies it by the fp16 weight (quantized weights are first
 *    dequantized to fp16, a tile of rows at a time), fp32 accumulate and
 *    fp32 output.
 * With a perm, x is gathered into packed column order first. */
#ifndef CU_MATMUL_CUH
#define CU_MATMUL_CUH

#include "cu_mma.cuh"
#include "cu_weight.cuh"

/* Tokens one GEMV launch handles (weights read once per tile). */
#define CU_GEMV_TILE 8
/* Most tokens that take the GEMV path: fp16 weights, W4/W2 weights (the
 * rest up to CU_MMA_MAX_TOKENS take the tensor cores). To be tuned on the
 * GPU with the timings in tests/gpu/test_cuda_ops.c and test_cuda_mma.c. */
#define CU_GEMV_MAX_TOKENS_F16 8
#define CU_GEMV_MAX_TOKENS_Q   (CU_MMA_MIN_TOKENS - 1)
/* Bytes of fp16 weight tile the cuBLAS path dequantizes at a time. */
#define CU_DEQUANT_TILE_BYTES ((size_t)64 << 20)

bl_status cu_matmul_launch(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n);

/* ---- pieces the GEMV (cu_matmul.cu) and the mma path (cu_mma.cu) share -- */

/* x as fp16: saturated instead of overflowing to inf. Activations past
 * 65504 are rare, and a clipped value is a smaller error than an inf in
 * every output. */
static __device__ __forceinline__ __half cu_half_sat(float v) {
  return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

static __device__ __forceinline__ __half2 cu_h2(uint32_t u) {
  __half2 h;
  memcpy(&h, &u, 4); /* a register move */
  return h;
}

static __device__ __forceinline__ uint32_t cu_u32(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

/* Where column j (0..31) of a 32-column block sits in the prepared x (in
 * halves), and at which bit s of its 16-bit half its field is unpacked.
 * Half2 p of the prepared block pairs the two fields one LOP3 takes from a
 * word: W2 word w (block bytes 4w..4w+3; byte j holds columns j, j+8, j+16,
 * j+24 at bits 0, 2, 4, 6), shifted right by hi*8 (hi = 0 or 1), masked at
 * field f: p = 8w + 2f + hi, columns 8f + 4w + hi + {0, 2}; W4 word w (byte
 * j holds columns j and j+16 at bits 0 and 4): p = 4w + 2f + hi, columns
 * 16f + 4w + hi + {0, 2}. */
template <int BITS> static __host__ __device__ __forceinline__ int cu_xq_pos(int j) {
  return BITS == 2 ? 16 * ((j >> 2) & 1) + 4 * (j >> 3) + 2 * (j & 1) + ((j >> 1) & 1)
                   : 8 * ((j >> 2) & 3) + 4 * (j >> 4) + 2 * (j & 1) + ((j >> 1) & 1);
}
template <int BITS> static __host__ __device__ __forceinline__ int cu_xq_shift(int j) {
  return BITS == 2 ? 2 * (j >> 3) : 4 * (j >> 4);
}

#endif
