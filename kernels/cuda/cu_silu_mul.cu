/* silu_mul: a grid-stride loop; each element is read and written by one
 * thread, so out may alias an input. */
#include "cu_silu_mul.cuh"

static __global__ void cu_silu_mul_kernel(float *out, const float *gate, const float *up,
                                          size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

bl_status cu_silu_mul_launch(cu_ctx *c, float *out, const float *gate, const float *up, size_t n) {
  if (!n) return BL_OK;
  unsigned grid = cu_min_u(cu_cdiv(n, 256), (unsigned)c->sm_count * 8);
  cu_silu_mul_kernel<<<grid, 256, 0, c->stream>>>(out, gate, up, n);
  CU_CHECK_LAUNCH(c, "cu_silu_mul_kernel");
  return BL_OK;
}

extern "C" bl_status cu_silu_mul(bk_backend *be, float *out, const float *gate, const float *up,
                                 size_t n) {
  CU_ENTER(c, be);
  return cu_silu_mul_launch(c, out, gate, up, n);
}
