/* C entry points of the CUDA backend (kernels/cuda/).
 *
 * Every op has the same name and signature as its bk_backend slot, with the
 * cu_ prefix, so the table in cu_backend.cu is a list of these and a test or
 * benchmark can call an op directly. All pointers are device pointers from
 * be->alloc; ops are asynchronous on the backend's stream and return BL_OK,
 * BL_EINVAL (a weight that was not prepared, a shape a kernel cannot take) or
 * BL_EDEVICE (a CUDA or cuBLAS call failed; or, from download and sync, a
 * kernel met an id, slot or block out of range: cu_common.cuh's device error
 * word, sticky; the message is logged at error level and kept for
 * cu_last_error). This header is plain C. */
#ifndef CU_OPS_H
#define CU_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

/* The message of the last device error on this backend ("" when none). */
const char *cu_last_error(const bk_backend *be);

/* What the backend runs on: name, memory (cudaMemGetInfo), SMs, compute
 * capability and the rated memory bandwidth (cu_backend.cu says how). */
bl_status cu_device_info(const bk_backend *be, bk_device_info *out);

/* Copy the canonical host layout of w to the device (w->dev); see
 * cu_weight.cuh for the device layout. Synchronous: the host arrays may be
 * freed on return. */
bl_status cu_weight_prepare(bk_backend *be, bk_weight *w);
void cu_weight_release(bk_backend *be, bk_weight *w);

bl_status cu_embed(bk_backend *be, float *out, const bk_weight *table, const int32_t *ids,
                   int32_t n);
bl_status cu_rmsnorm(bk_backend *be, float *out, const float *x, const float *w, int32_t n,
                     int32_t dim, float eps);
bl_status cu_qk_norm_rope(bk_backend *be, float *q, float *k, const float *q_norm,
                          const float *k_norm, const int32_t *pos, int32_t n, const bk_heads *h);
/* CUDA graphs (cu_graph.cu): the capture slots of bk_backend. */
bl_status cu_capture_begin(bk_backend *be);
bl_status cu_capture_end(bk_backend *be, void **graph);
bl_status cu_graph_launch(bk_backend *be, void *graph);
void cu_graph_free(bk_backend *be, void *graph);

bl_status cu_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n);
bl_status cu_silu_mul(bk_backend *be, float *out, const float *gate, const float *up, size_t n);
bl_status cu_add(bk_backend *be, float *x, const float *y, size_t n);
bl_status cu_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                      const float *v, const int32_t *slots, int32_t n);
bl_status cu_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                       int32_t layer, const bk_attn_batch *b, const bk_heads *h);
bl_status cu_sample(bk_backend *be, int32_t *ids, const float *logits, int32_t n, int32_t vocab,
                    const bk_sample_params *p);

#ifdef __cplusplus
}
#endif

#endif
