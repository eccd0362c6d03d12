/* rmsnorm: out[n][dim] = x * rsqrt(mean(x^2) + eps) * w, fp32 throughout. */
#ifndef CU_RMSNORM_CUH
#define CU_RMSNORM_CUH

#include "cu_common.cuh"

/* x, out: [n][dim] (out may be x); w: [dim]. */
bl_status cu_rmsnorm_launch(cu_ctx *c, float *out, const float *x, const float *w, int32_t n,
                            int32_t dim, float eps);

#endif
