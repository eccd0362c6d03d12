/* add: x[i] += y[i] (the residual connection). */
#ifndef CU_ADD_CUH
#define CU_ADD_CUH

#include "cu_common.cuh"

bl_status cu_add_launch(cu_ctx *c, float *x, const float *y, size_t n);

#endif
