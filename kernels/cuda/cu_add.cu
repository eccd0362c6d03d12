/* add: a grid-stride loop, one element per thread and step. */
#include "cu_add.cuh"

static __global__ void cu_add_kernel(float *x, const float *y, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] += y[i];
}

bl_status cu_add_launch(cu_ctx *c, float *x, const float *y, size_t n) {
  if (!n) return BL_OK;
  unsigned grid = cu_min_u(cu_cdiv(n, 256), (unsigned)c->sm_count * 8);
  cu_add_kernel<<<grid, 256, 0, c->stream>>>(x, y, n);
  CU_CHECK_LAUNCH(c, "cu_add_kernel");
  return BL_OK;
}

extern "C" bl_status cu_add(bk_backend *be, float *x, const float *y, size_t n) {
  CU_ENTER(c, be);
  return cu_add_launch(c, x, y, n);
}
