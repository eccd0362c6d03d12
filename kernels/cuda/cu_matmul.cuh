/* matmul: y[n][rows] = x[n][cols] . W^T for a prepared weight of any format.
 *
 * Few tokens: a GEMV kernel, one warp per output row (or four), that streams
 * the row once per CU_GEMV_TILE tokens with 16-byte loads and warp-reduces.
 * fp16 weights: fp32 products and sums. W4/W2: x rounded to fp16 once per
 * call and staged in shared memory, fields unpacked in registers as fp16,
 * w = scale*q + min folded as scale*sum(q*x) + min*sum(x) per 32-column
 * block, the block's sum(q*x) in fp16, the rest in fp32 (cu_matmul.cu).
 * More tokens: x is rounded to fp16 and cuBLAS multiplies it by the fp16
 * weight (quantized weights are first dequantized to fp16, a tile of rows at
 * a time), fp32 accumulate and fp32 output. For fp16 weights cuBLAS wins past
 * one GEMV tile; for W4/W2 the dequantized copy costs 8-16x the packed bytes,
 * so the GEMV re-reading the packed rows stays cheaper up to a few tiles.
 * With a perm, x is gathered into packed column order first. */
#ifndef CU_MATMUL_CUH
#define CU_MATMUL_CUH

#include "cu_weight.cuh"

/* Tokens one GEMV launch handles (weights read once per tile). */
#define CU_GEMV_TILE 8
/* Most tokens that take the GEMV path: fp16 weights, W4/W2 weights. To be
 * tuned on the GPU with the timings in tests/gpu/test_cuda_ops.c. */
#define CU_GEMV_MAX_TOKENS_F16 8
#define CU_GEMV_MAX_TOKENS_Q   32
/* Bytes of fp16 weight tile the cuBLAS path dequantizes at a time. */
#define CU_DEQUANT_TILE_BYTES ((size_t)64 << 20)

bl_status cu_matmul_launch(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n);

#endif
