/* kv_write: encode fp32 K/V rows into the paged cache in any bk_kvfmt.
 * Layout per layer (backend.h): [n_blocks][n_kv_heads] units of block_size
 * value rows, then block_size scale rows (row and scale-row bytes from
 * backend.h, passed to the kernels).
 *
 * fp16: one block per (token, kv head), fp32 -> fp16 round to nearest even
 * as bl_float_to_half. fp8 / nvfp4: one warp per (token, kv head, K|V),
 * through the element and scale functions of kvcache/kv_format.h that the
 * CPU backend also uses, so both backends write the same bytes. fp8 per
 * head: the warp's max of |x| (finite values; max is exact in any order)
 * gives the E8M0 scale, then each lane encodes its elements. nvfp4: lane g
 * quantizes group g (16 elements) with its E4M3 scale.
 *
 * Tensor-scaled formats (fp8 per tensor, nvfp4) first run a one-block
 * kernel per K and V that, while the layer's scale is still 0, sets it from
 * the largest finite |x| of this write's in-range tokens (kv_format.h's
 * rule); once set it exits at once. It is queued before the encode kernel
 * on the same stream.
 *
 * A slot past the cache is written nowhere and recorded in the device error
 * word (cu_common.cuh), which the next download or sync reports; the
 * calibration skips it as well. */
#include "cu_kv_write.cuh"

#include "kv_format.h"

/* Does the token at slot write nothing? A negative slot is padding; one past
 * the cache is a fault, recorded in the device error word (thread 0 of the
 * first (token, head) unit reports it) and not written. */
static __device__ __forceinline__ bool cu_kv_slot_skip(int slot, int n_slots, cu_derr *derr) {
  if (slot < 0) return true;
  if (slot < n_slots) return false;
  if (threadIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0)
    cu_derr_set(derr, CU_DERR_KV_SLOT, slot, n_slots);
  return true;
}

static __global__ void cu_kv_write_kernel(__half *__restrict__ kc, __half *__restrict__ vc,
                                          const float *__restrict__ k, const float *__restrict__ v,
                                          const int32_t *__restrict__ slots, int n_slots,
                                          int n_kv_heads, int block_size, int head_dim,
                                          cu_derr *derr) {
  int t = blockIdx.x, h = blockIdx.y;
  int slot = slots[t];
  if (cu_kv_slot_skip(slot, n_slots, derr)) return; /* the whole block: no barriers below */
  size_t dst =
      (((size_t)(slot / block_size) * n_kv_heads + h) * block_size + (size_t)(slot % block_size)) *
      head_dim;
  size_t src = ((size_t)t * n_kv_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    kc[dst + d] = __float2half_rn(k[src + d]);
    vc[dst + d] = __float2half_rn(v[src + d]);
  }
}

/* ts[0] (K, blockIdx.x 0) or ts[1] (V, 1): see the top of the file. x rows
 * are [n][row]; blockDim.x is a multiple of 32, at most 1024. */
static __global__ void cu_kv_calibrate_kernel(float *__restrict__ ts, const float *__restrict__ k,
                                              const float *__restrict__ v,
                                              const int32_t *__restrict__ slots, int n, int n_slots,
                                              int row, int fp8) {
  __shared__ float part[32];
  float *t = ts + blockIdx.x;
  if (*t != 0.0f) return; /* every thread reads the same value: all return */
  const float *x = blockIdx.x ? v : k;
  float amax = 0.0f;
  for (size_t i = threadIdx.x; i < (size_t)n * row; i += blockDim.x) {
    int s = slots[i / row];
    if (s >= 0 && s < n_slots) amax = kv_amax_add(amax, x[i]);
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  amax = cu_warp_max(amax);
  if (lane == 0) part[warp] = amax;
  __syncthreads(); /* also orders every thread's read of *t before the write below */
  if (warp == 0) {
    amax = cu_warp_max(lane < nw ? part[lane] : 0.0f);
    if (lane == 0) *t = fp8 ? kv_fp8_tensor_scale(amax) : kv_nvfp4_tensor_scale(amax);
  }
}

/* One warp per (token blockIdx.x, kv head blockIdx.y, K|V blockIdx.z). */
static __global__ void cu_kv_write_q_kernel(uint8_t *__restrict__ kc, uint8_t *__restrict__ vc,
                                            const float *__restrict__ k,
                                            const float *__restrict__ v,
                                            const float *__restrict__ ts,
                                            const int32_t *__restrict__ slots, int n_slots,
                                            int n_kv_heads, int block_size, int head_dim, size_t rb,
                                            size_t sb, int fmt, int scaling, cu_derr *derr) {
  int t = blockIdx.x, h = blockIdx.y, which = blockIdx.z, lane = threadIdx.x;
  int slot = slots[t];
  if (cu_kv_slot_skip(slot, n_slots, derr)) return; /* the whole warp */
  size_t unit_bytes = (size_t)block_size * (rb + sb);
  size_t off = (size_t)(slot % block_size);
  uint8_t *unit = (which ? vc : kc) + ((size_t)(slot / block_size) * n_kv_heads + h) * unit_bytes;
  uint8_t *row = unit + off * rb, *srow = unit + (size_t)block_size * rb + off * sb;
  const float *x = (which ? v : k) + ((size_t)t * n_kv_heads + h) * head_dim;
  float tsv = ts ? ts[which] : 0.0f;
  if (fmt == BK_KV_NVFP4) {
    for (int g = lane; g < head_dim / KV_NVFP4_GROUP; g += 32)
      kv_nvfp4_quant_group(x + g * KV_NVFP4_GROUP, tsv, row + g * (KV_NVFP4_GROUP / 2), srow + g);
  } else if (scaling == BK_KVS_TENSOR) {
    for (int d = lane; d < head_dim; d += 32)
      row[d] = tsv > 0.0f ? kv_e4m3_from_f32(x[d] / tsv) : 0;
  } else {
    float amax = 0.0f;
    for (int d = lane; d < head_dim; d += 32)
      amax = kv_amax_add(amax, x[d]);
    uint8_t sc = kv_fp8_row_scale(cu_warp_max(amax));
    float inv = kv_exp2i(127 - (int)sc);
    for (int d = lane; d < head_dim; d += 32)
      row[d] = kv_e4m3_from_f32(x[d] * inv);
    if (lane == 0) *srow = sc;
  }
}

bl_status cu_kv_write_launch(cu_ctx *c, const bk_kv_cache *kv, int32_t layer, const float *k,
                             const float *v, const int32_t *slots, int32_t n) {
  if (n <= 0) return BL_OK;
  if (!bk_kv_geometry_ok(kv->fmt, kv->head_dim))
    return cu_invalid(c, "kv_write", "a KV format that cannot hold this head_dim");
  int n_slots = kv->n_blocks * kv->block_size;
  if (kv->fmt == BK_KV_F16) {
    dim3 grid((unsigned)n, (unsigned)kv->n_kv_heads);
    unsigned threads = cu_min_u((unsigned)cu_round_up((size_t)kv->head_dim, 32), 128);
    cu_kv_write_kernel<<<grid, threads, 0, c->stream>>>(
        (__half *)kv->k[layer], (__half *)kv->v[layer], k, v, slots, n_slots, kv->n_kv_heads,
        kv->block_size, kv->head_dim, c->derr);
    CU_CHECK_LAUNCH(c, "cu_kv_write_kernel");
    return BL_OK;
  }
  float *ts = NULL;
  if (bk_kv_tensor_scaled(kv->fmt, kv->scaling)) {
    ts = kv->tensor_scales + 2 * (size_t)layer;
    cu_kv_calibrate_kernel<<<2, 256, 0, c->stream>>>(
        ts, k, v, slots, n, n_slots, kv->n_kv_heads * kv->head_dim, kv->fmt == BK_KV_FP8);
    CU_CHECK_LAUNCH(c, "cu_kv_calibrate_kernel");
  }
  dim3 grid((unsigned)n, (unsigned)kv->n_kv_heads, 2);
  cu_kv_write_q_kernel<<<grid, 32, 0, c->stream>>>(
      (uint8_t *)kv->k[layer], (uint8_t *)kv->v[layer], k, v, ts, slots, n_slots, kv->n_kv_heads,
      kv->block_size, kv->head_dim, bk_kv_row_bytes(kv->fmt, kv->head_dim),
      bk_kv_scale_bytes(kv->fmt, kv->scaling, kv->head_dim), (int)kv->fmt, (int)kv->scaling,
      c->derr);
  CU_CHECK_LAUNCH(c, "cu_kv_write_q_kernel");
  return BL_OK;
}

extern "C" bl_status cu_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer,
                                 const float *k, const float *v, const int32_t *slots, int32_t n) {
  CU_ENTER(c, be);
  return cu_kv_write_launch(c, kv, layer, k, v, slots, n);
}
