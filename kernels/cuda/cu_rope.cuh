/* qk_norm_rope: per-head RMSNorm (optional) then rotary embedding, in place
 * on q and k. */
#ifndef CU_ROPE_CUH
#define CU_ROPE_CUH

#include "cu_common.cuh"

/* q: [n][n_heads*head_dim], k: [n][n_kv_heads*head_dim], q_norm/k_norm:
 * [head_dim] or NULL, pos: device int32 [n]. head_dim must be even. */
bl_status cu_qk_norm_rope_launch(cu_ctx *c, float *q, float *k, const float *q_norm,
                                 const float *k_norm, const int32_t *pos, int32_t n,
                                 const bk_heads *h);

#endif
