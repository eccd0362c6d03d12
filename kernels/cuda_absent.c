/* The CUDA backend in a build without CUDA (-Dcuda=disabled or no nvcc). */
#include "backend.h"

bl_status bk_cuda_create(int dev, bk_backend **out, bl_err *err) {
  *out = NULL;
  return bl_fail(err, BL_EUNSUPPORTED,
                 "cuda:%d: this ballast was built without CUDA (meson -Dcuda=enabled)", dev);
}
