/* kv_write: store fp32 K and V rows of one layer into paged cache slots in
 * the cache's format (fp16, fp8 E4M3 with per-head or per-tensor scales,
 * nvfp4), byte-identical to the CPU backend. */
#ifndef CU_KV_WRITE_CUH
#define CU_KV_WRITE_CUH

#include "cu_common.cuh"

/* k, v: [n][n_kv_heads*head_dim] fp32; slots: device int32 [n]. A negative
 * slot (a padding token) is skipped; one at or past n_blocks*block_size is
 * skipped too and recorded as a fault (BL_EDEVICE at the next download or
 * sync).
 * Tensor-scaled formats calibrate kv->tensor_scales[2*layer .. +1] on the
 * layer's first write (kvcache/kv_format.h). */
bl_status cu_kv_write_launch(cu_ctx *c, const bk_kv_cache *kv, int32_t layer, const float *k,
                             const float *v, const int32_t *slots, int32_t n);

#endif
