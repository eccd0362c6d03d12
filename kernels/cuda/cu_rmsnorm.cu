/* rmsnorm: one block per row. Every thread reads the elements it later
 * writes, and all reads of the sum come before the block_sum barrier, so
 * out may alias x. */
#include "cu_rmsnorm.cuh"

static __global__ void cu_rmsnorm_kernel(float *out, const float *x, const float *__restrict__ w,
                                         int dim, float eps) {
  const float *xr = x + (size_t)blockIdx.x * dim;
  float *orow = out + (size_t)blockIdx.x * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    ss += xr[i] * xr[i];
  ss = cu_block_sum(ss);
  float r = 1.0f / sqrtf(ss / (float)dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    orow[i] = xr[i] * r * w[i];
}

bl_status cu_rmsnorm_launch(cu_ctx *c, float *out, const float *x, const float *w, int32_t n,
                            int32_t dim, float eps) {
  if (n <= 0 || dim <= 0) return BL_OK;
  unsigned threads = cu_min_u((unsigned)cu_round_up((size_t)dim, 32), 256);
  cu_rmsnorm_kernel<<<(unsigned)n, threads, 0, c->stream>>>(out, x, w, dim, eps);
  CU_CHECK_LAUNCH(c, "cu_rmsnorm_kernel");
  return BL_OK;
}

extern "C" bl_status cu_rmsnorm(bk_backend *be, float *out, const float *x, const float *w,
                                int32_t n, int32_t dim, float eps) {
  CU_ENTER(c, be);
  return cu_rmsnorm_launch(c, out, x, w, n, dim, eps);
}
