/* The CUDA backend in a build without CUDA (-Dcuda=disabled or no nvcc). */
#include "backend.h"
#include "bk_comm.h"

bl_status bk_cuda_create(int dev, bk_backend **out, bl_err *err) {
  *out = NULL;
  return bl_fail(err, BL_EUNSUPPORTED,
                 "cuda:%d: this ballast was built without CUDA (meson -Dcuda=enabled)", dev);
}

bl_status bk_comm_nccl_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err) {
  (void)bes;
  (void)n;
  *out = NULL;
  return bl_fail(err, BL_EUNSUPPORTED, "nccl: this ballast was built without CUDA");
}
