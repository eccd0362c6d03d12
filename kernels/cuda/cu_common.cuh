/* Shared pieces of the CUDA backend: the per-device context, the checks that
 * turn a failed CUDA/cuBLAS call into BL_EDEVICE with a logged message, the
 * grow-only scratch buffer, and the warp/block reductions the kernels use.
 *
 * Invariants: one context per device, used by one thread (the replica's
 * scheduler), every launch on ctx->stream, so work is ordered and the scratch
 * buffer may be reused by the next op without a sync. Kernels never exit()
 * or trap; bad device data (an out-of-range id) gives NaN, not a fault. */
#ifndef CU_COMMON_CUH
#define CU_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

#include "cu_ops.h"

extern "C" {
#include "bl_log.h"
}

typedef struct cu_ctx {
  int dev;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *scratch; /* device, scratch_bytes, grow-only */
  size_t scratch_bytes;
  int sm_count, cc_major, cc_minor;
  char name[16];      /* "cuda:N" */
  char last_err[256]; /* last device error message */
} cu_ctx;

static inline cu_ctx *cu_ctx_of(const bk_backend *be) { return (cu_ctx *)be->ctx; }

/* Log a failed CUDA call and return BL_EDEVICE (cu_backend.cu). */
bl_status cu_fail(cu_ctx *c, cudaError_t e, const char *what, const char *file, int line);
bl_status cu_fail_blas(cu_ctx *c, cublasStatus_t s, const char *what, const char *file, int line);
/* Log a bad argument that only a kernel can see and return BL_EINVAL. */
bl_status cu_invalid(cu_ctx *c, const char *op, const char *why);

/* A device buffer of at least bytes, valid until the next cu_scratch call.
 * Growing waits for the stream first, so no queued kernel still reads the
 * old buffer when it is freed. */
bl_status cu_scratch(cu_ctx *c, size_t bytes, void **out);

#define CU_CHECK(c, call)                                                                          \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) return cu_fail((c), e_, #call, __FILE__, __LINE__);                     \
  } while (0)

/* After every launch: a bad configuration or a missing kernel image shows here. */
#define CU_CHECK_LAUNCH(c, kernel_name)                                                            \
  do {                                                                                             \
    cudaError_t e_ = cudaGetLastError();                                                           \
    if (e_ != cudaSuccess) return cu_fail((c), e_, "launch " kernel_name, __FILE__, __LINE__);     \
  } while (0)

#define CU_CHECK_BLAS(c, call)                                                                     \
  do {                                                                                             \
    cublasStatus_t s_ = (call);                                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) return cu_fail_blas((c), s_, #call, __FILE__, __LINE__);      \
  } while (0)

/* Start of every op: the context, and this thread's current device set to it
 * (a replica's thread may drive several devices). */
#define CU_ENTER(c, be)                                                                            \
  cu_ctx *c = cu_ctx_of(be);                                                                       \
  CU_CHECK(c, cudaSetDevice(c->dev))

static inline unsigned cu_cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }
static inline unsigned cu_min_u(unsigned a, unsigned b) { return a < b ? a : b; }
static inline size_t cu_round_up(size_t a, size_t b) { return (a + b - 1) / b * b; }

/* Sum over the 32 lanes of a warp; every lane gets the result. All 32 lanes
 * must call it. */
static __device__ __forceinline__ float cu_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Sum over the block; every thread gets the result. blockDim.x must be a
 * multiple of 32 and every thread must call it. The leading barrier lets a
 * kernel call it twice in a row. */
static __device__ __forceinline__ float cu_block_sum(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = cu_warp_sum(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  return cu_warp_sum(lane < nw ? part[lane] : 0.0f);
}

#endif
