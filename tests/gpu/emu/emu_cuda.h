/* A small CUDA emulator for checking kernel logic on a CPU (tests/gpu/emu/run.sh):
 * one fiber per thread, block and warp barriers, warp shuffles. Not shipped. */
#pragma once
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <functional>
#include "bl_half.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__      static
#define __launch_bounds__(x)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3_ {
  unsigned x, y, z;
};
extern uint3_ threadIdx, blockIdx, blockDim, gridDim;

struct float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct __half {
  uint16_t x;
};
struct alignas(4) __half2 {
  __half x, y;
};
inline float __half2float(__half h) { return bl_half_to_float(h.x); }
inline __half __float2half_rn(float f) { return __half{bl_float_to_half(f)}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
template <class T> inline T __ldg(const T *p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
/* Fibers switch only at barriers and shuffles, so a plain compare-and-swap is atomic here. */
inline int atomicCAS(int *p, int cmp, int val) {
  int old = *p;
  if (old == cmp) *p = val;
  return old;
}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
/* Round-to-nearest float arithmetic that nvcc never contracts into an FMA;
 * on the host too each is one IEEE operation (x86-64 without -mfma). */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

/* fp16 arithmetic as the GPU does it: the exact result rounded once to
 * nearest even, subnormals kept (no flush), overflow to inf. Every finite
 * fp16 is an integer multiple of 2^-24 below 2^16, so a*b + c scaled by 2^48
 * is an exact 128-bit integer. */
inline uint16_t emu_hfma(uint16_t a, uint16_t b, uint16_t c) {
  float fa = bl_half_to_float(a), fb = bl_half_to_float(b), fc = bl_half_to_float(c);
  if (!isfinite(fa) || !isfinite(fb) || !isfinite(fc)) return bl_float_to_half(fa * fb + fc);
  __int128 v = (__int128)(int64_t)ldexp(fa, 24) * (int64_t)ldexp(fb, 24) +
               ((__int128)(int64_t)ldexp(fc, 24) << 24);
  if (v == 0) return 0;
  bool neg = v < 0;
  unsigned __int128 m = neg ? -(unsigned __int128)v : (unsigned __int128)v;
  uint64_t top = (uint64_t)(m >> 64);
  int nb = top ? 128 - __builtin_clzll(top) : 64 - __builtin_clzll((uint64_t)m);
  int sh = nb - 11 > 24 ? nb - 11 : 24; /* quantum 2^(sh-48): 11 significant bits, or 2^-24 */
  unsigned __int128 r = m >> sh, rem = m - (r << sh), half = (unsigned __int128)1 << (sh - 1);
  if (rem > half || (rem == half && (r & 1))) r++;
  double d = ldexp((double)(uint64_t)r, sh - 48); /* exact; past 65504 it becomes inf below */
  return bl_float_to_half((float)(neg ? -d : d));
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __half2{{emu_hfma(a.x.x, b.x.x, c.x.x)}, {emu_hfma(a.y.x, b.y.x, c.y.x)}};
}
inline __half2 __hadd2(__half2 a, __half2 b) {
  const __half one = {0x3c00};
  return __hfma2(a, __half2{one, one}, b);
}
inline __half2 __hmul2(__half2 a, __half2 b) { return __hfma2(a, b, __half2{{0}, {0}}); }
inline __half __hadd(__half a, __half b) { return __half{emu_hfma(a.x, 0x3c00, b.x)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

void emu_sync_block();
void emu_sync_warp();
extern float emu_xchg[1024];
inline float __shfl_xor_sync(unsigned, float v, int o) {
  unsigned me = threadIdx.x;
  emu_xchg[me] = v;
  emu_sync_warp();
  float r = emu_xchg[(me & ~31u) | ((me & 31u) ^ (unsigned)o)];
  emu_sync_warp();
  return r;
}
#define __syncthreads() emu_sync_block()

void emu_launch(dim3 grid, dim3 block, std::function<void()> fn);

/* ---- runtime ---- */
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef struct emu_stream *cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
#define cudaStreamNonBlocking 1
struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t totalGlobalMem;
};
struct cudaFuncAttributes {
  int numRegs;
};
enum cudaDeviceAttr { cudaDevAttrMemoryClockRate = 36, cudaDevAttrGlobalMemoryBusWidth = 37 };
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int dev);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
template <class F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
  a->numRegs = 0;
  return 0;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned);
cudaError_t cudaStreamDestroy(cudaStream_t);
cudaError_t cudaStreamSynchronize(cudaStream_t);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorName(cudaError_t);
const char *cudaGetErrorString(cudaError_t);
cudaError_t cudaMalloc(void **p, size_t b);
template <class T> cudaError_t cudaMalloc(T **p, size_t b) { return cudaMalloc((void **)p, b); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t b, cudaMemcpyKind, cudaStream_t);
cudaError_t cudaMemcpy2DAsync(void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h,
                              cudaMemcpyKind, cudaStream_t);
cudaError_t cudaMemsetAsync(void *d, int v, size_t b, cudaStream_t);
cudaError_t cudaMemset(void *d, int v, size_t b);
cudaError_t cudaMallocHost(void **p, size_t b);
template <class T> cudaError_t cudaMallocHost(T **p, size_t b) {
  return cudaMallocHost((void **)p, b);
}
cudaError_t cudaFreeHost(void *p);
/* stream capture (CUDA graphs): emu_rt.cpp records instead of running */
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph *cudaGraphExec_t;
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal,
  cudaStreamCaptureModeThreadLocal,
  cudaStreamCaptureModeRelaxed
};
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode);
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *, cudaGraph_t, unsigned long long);
cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t);
cudaError_t cudaGraphDestroy(cudaGraph_t);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t);

/* ---- cuBLAS ---- */
typedef struct emu_blas *cublasHandle_t;
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0 };
typedef enum { CUBLAS_OP_N, CUBLAS_OP_T } cublasOperation_t;
typedef enum { CUDA_R_16F, CUDA_R_32F } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT } cublasGemmAlgo_t;
cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
const char *cublasGetStatusName(cublasStatus_t);
const char *cublasGetStatusString(cublasStatus_t);
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t);
