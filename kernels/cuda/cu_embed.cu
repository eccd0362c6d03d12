/* embed: one thread per output element, grid.x over tokens. Packed column k
 * of a permuted table (GPTQ act-order) is natural column perm[k], so it is
 * written there (backend.h); an id outside the table gives a row of zeros
 * (as on the CPU backend) and a fault in the device error word. */
#include "cu_embed.cuh"

template <int BITS>
static __global__ void cu_embed_kernel(float *__restrict__ out, const uint8_t *__restrict__ q,
                                       const __half2 *__restrict__ sm, size_t stride, int n_groups,
                                       int group_size, int rows, int cols,
                                       const int32_t *__restrict__ perm,
                                       const int32_t *__restrict__ ids, cu_derr *derr) {
  int t = blockIdx.x;
  int id = ids[t];
  bool ok = id >= 0 && id < rows;
  if (!ok && threadIdx.x == 0 && blockIdx.y == 0) cu_derr_set(derr, CU_DERR_EMBED_ID, id, rows);
  float *o = out + (size_t)t * cols;
  for (int k = blockIdx.y * blockDim.x + threadIdx.x; k < cols; k += gridDim.y * blockDim.x)
    o[perm ? perm[k] : k] =
        ok ? cu_weight_elem<BITS>(q, sm, stride, n_groups, group_size, id, k) : 0.0f;
}

bl_status cu_embed_launch(cu_ctx *c, float *out, const cu_weight *w, const int32_t *ids,
                          int32_t n) {
  if (n <= 0) return BL_OK;
  const int threads = 256;
  dim3 grid((unsigned)n, cu_min_u(cu_cdiv((size_t)w->cols, threads), 64));
  const uint8_t *q = (const uint8_t *)w->q;
  switch (w->fmt) {
  case BK_WF_F16:
    cu_embed_kernel<16><<<grid, threads, 0, c->stream>>>(out, q, w->sm, w->stride, w->n_groups,
                                                         w->group_size, w->rows, w->cols, w->perm,
                                                         ids, c->derr);
    break;
  case BK_WF_W4:
    cu_embed_kernel<4><<<grid, threads, 0, c->stream>>>(out, q, w->sm, w->stride, w->n_groups,
                                                        w->group_size, w->rows, w->cols, w->perm,
                                                        ids, c->derr);
    break;
  case BK_WF_W2:
    cu_embed_kernel<2><<<grid, threads, 0, c->stream>>>(out, q, w->sm, w->stride, w->n_groups,
                                                        w->group_size, w->rows, w->cols, w->perm,
                                                        ids, c->derr);
    break;
  }
  CU_CHECK_LAUNCH(c, "cu_embed_kernel");
  return BL_OK;
}

extern "C" bl_status cu_embed(bk_backend *be, float *out, const bk_weight *table,
                              const int32_t *ids, int32_t n) {
  CU_ENTER(c, be);
  const cu_weight *w = cu_weight_of(c, table, "embed");
  if (!w) return BL_EINVAL;
  return cu_embed_launch(c, out, w, ids, n);
}
