/* kv_write: one block per (token, kv head); fp32 -> fp16 round to nearest
 * even, as bl_float_to_half. Cache layout per layer (backend.h):
 * [n_blocks][n_kv_heads][block_size][head_dim]. */
#include "cu_kv_write.cuh"

static __global__ void cu_kv_write_kernel(__half *__restrict__ kc, __half *__restrict__ vc,
                                          const float *__restrict__ k, const float *__restrict__ v,
                                          const int32_t *__restrict__ slots, int n_slots,
                                          int n_kv_heads, int block_size, int head_dim) {
  int t = blockIdx.x, h = blockIdx.y;
  int slot = slots[t];
  if (slot < 0 || slot >= n_slots) return; /* the whole block: no barriers below */
  size_t dst =
      (((size_t)(slot / block_size) * n_kv_heads + h) * block_size + (size_t)(slot % block_size)) *
      head_dim;
  size_t src = ((size_t)t * n_kv_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    kc[dst + d] = __float2half_rn(k[src + d]);
    vc[dst + d] = __float2half_rn(v[src + d]);
  }
}

bl_status cu_kv_write_launch(cu_ctx *c, const bk_kv_cache *kv, int32_t layer, const float *k,
                             const float *v, const int32_t *slots, int32_t n) {
  if (n <= 0) return BL_OK;
  if (kv->fmt != BK_KV_F16) return cu_invalid(c, "kv_write", "only the fp16 KV format");
  dim3 grid((unsigned)n, (unsigned)kv->n_kv_heads);
  unsigned threads = cu_min_u((unsigned)cu_round_up((size_t)kv->head_dim, 32), 128);
  cu_kv_write_kernel<<<grid, threads, 0, c->stream>>>(
      (__half *)kv->k[layer], (__half *)kv->v[layer], k, v, slots, kv->n_blocks * kv->block_size,
      kv->n_kv_heads, kv->block_size, kv->head_dim);
  CU_CHECK_LAUNCH(c, "cu_kv_write_kernel");
  return BL_OK;
}

extern "C" bl_status cu_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer,
                                 const float *k, const float *v, const int32_t *slots, int32_t n) {
  CU_ENTER(c, be);
  return cu_kv_write_launch(c, kv, layer, k, v, slots, n);
}
