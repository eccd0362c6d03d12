/* mma: the tensor-core path of matmul for W4/W2 weights at a few tokens
 * (cu_mma.cu has the design and its balance). cu_matmul_launch dispatches
 * here for CU_MMA_MIN_TOKENS..CU_MMA_MAX_TOKENS tokens: fewer take the GEMV,
 * more the dequantize + cuBLAS path (cu_matmul.cuh). */
#ifndef CU_MMA_CUH
#define CU_MMA_CUH

#include "cu_weight.cuh"

/* The token range of the mma path. The kernel takes 1..64 (the batch is
 * padded to 16 inside it); the lower end is where it should beat the GEMV,
 * to be tuned on a GPU (cu_mma.cu, "Balance"). */
#define CU_MMA_MIN_TOKENS 2
#define CU_MMA_MAX_TOKENS 64

/* y[n][rows] = x[n][cols] . W^T for a prepared W4/W2 weight, 1 <= n <=
 * CU_MMA_MAX_TOKENS; x and y fp32 device arrays. BL_EINVAL for another
 * format or n. */
bl_status cu_mma_launch(cu_ctx *c, float *y, const float *x, const cu_weight *w, int32_t n);

#endif
