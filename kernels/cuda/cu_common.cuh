/* Shared pieces of the CUDA backend: the per-device context, the checks that
 * turn a failed CUDA/cuBLAS call into BL_EDEVICE with a logged message, the
 * grow-only scratch buffer, and the warp/block reductions the kernels use.
 *
 * Invariants: one context per device, used by one thread (the replica's
 * scheduler), every launch on ctx->stream, so work is ordered and the scratch
 * buffer may be reused by the next op without a sync. Kernels never exit()
 * or trap: a kernel that meets bad device data (an out-of-range token id,
 * KV slot, sequence, position or block id) touches no memory out of range
 * and records the first such fault in the context's device error word
 * (cu_derr); download and sync report it as BL_EDEVICE. */
#ifndef CU_COMMON_CUH
#define CU_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cu_ops.h"

extern "C" {
#include "bl_log.h"
}

/* What a kernel found wrong in device data (cu_derr.code). */
enum cu_derr_code {
  CU_DERR_NONE = 0,
  CU_DERR_EMBED_ID,   /* embed: a token id outside the table's rows */
  CU_DERR_KV_SLOT,    /* kv_write: a slot past the cache (negative slots are padding) */
  CU_DERR_ATTN_SEQ,   /* attention: a token's sequence outside the batch */
  CU_DERR_ATTN_POS,   /* attention: a position past the block table's row */
  CU_DERR_ATTN_BLOCK, /* attention: a block id outside the cache */
};

/* The device error word: the first fault of the context's life, (code,
 * the bad value, the bound it broke). Sticky: nothing resets it, because
 * work queued after a fault (a KV write skipped, a position left out of
 * attention) has already run on bad state, as on a corrupted context; the
 * replica is marked unhealthy and rebuilt. */
typedef struct cu_derr {
  int code; /* cu_derr_code; 0: none */
  int value, limit;
  int pad;
} cu_derr;

/* Record a fault; the first one wins. */
static __device__ __forceinline__ void cu_derr_set(cu_derr *e, int code, int value, int limit) {
  if (atomicCAS(&e->code, 0, code) == 0) {
    e->value = value;
    e->limit = limit;
  }
}

typedef struct cu_ctx {
  int dev;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *scratch; /* device, scratch_bytes, grow-only */
  size_t scratch_bytes;
  uint64_t scratch_gen; /* times scratch moved: a graph recorded before is stale */
  int capturing;        /* a graph capture is open on stream (cu_graph.cu) */
  bool e2m1_hw;         /* decode nvfp4 KV by instruction (cu_e2m1_probe) */
  int sm_count, cc_major, cc_minor;
  char name[16];      /* "cuda:N" */
  char last_err[256]; /* last device error message */
  cu_derr *derr;      /* device, zeroed at creation, never reset (see cu_derr) */
  cu_derr *derr_host; /* pinned copy, read at download and sync */
  int derr_logged;    /* the fault has been logged (once) */

  /* The sample op's parameters (cu_sample.cu): device, grow-only. */
  bk_sample_params *sample_p; /* [sample_p_rows] */
  size_t sample_p_rows;
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

/* Max over the 32 lanes of a warp (fmaxf: NaN lanes are ignored); every
 * lane gets the result. All 32 lanes must call it. */
static __device__ __forceinline__ float cu_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
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
