/* silu_mul: out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). */
#ifndef CU_SILU_MUL_CUH
#define CU_SILU_MUL_CUH

#include "cu_common.cuh"

/* out, gate, up: [n]; out may alias gate (or up). */
bl_status cu_silu_mul_launch(cu_ctx *c, float *out, const float *gate, const float *up, size_t n);

#endif
