/* The CUDA backend's table: device selection, the stream and cuBLAS handle,
 * buffers, and error reporting. The ops live in one .cu per op (cu_ops.h).
 *
 * All work of a backend goes to its one stream, so ops run in call order and
 * upload/copy/memset0 return before the device has finished; download and
 * sync wait. Upload from pageable memory returns once the source has been
 * staged, so the caller may reuse it at once. download and sync are also
 * where a fault a kernel recorded in the device error word (cu_derr) comes
 * back as BL_EDEVICE; the word is copied behind the queued work, so it
 * covers every op queued before. */
#include "cu_attention.cuh"
#include "cu_common.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bl_status cu_fail(cu_ctx *c, cudaError_t e, const char *what, const char *file, int line) {
  snprintf(c->last_err, sizeof c->last_err, "%s: %s: %s (%s) at %s:%d", c->name, what,
           cudaGetErrorName(e), cudaGetErrorString(e), file, line);
  bl_log(BL_LOG_ERROR, "%s", c->last_err);
  return BL_EDEVICE;
}

bl_status cu_fail_blas(cu_ctx *c, cublasStatus_t s, const char *what, const char *file, int line) {
  snprintf(c->last_err, sizeof c->last_err, "%s: %s: %s (%s) at %s:%d", c->name, what,
           cublasGetStatusName(s), cublasGetStatusString(s), file, line);
  bl_log(BL_LOG_ERROR, "%s", c->last_err);
  return BL_EDEVICE;
}

bl_status cu_invalid(cu_ctx *c, const char *op, const char *why) {
  bl_log(BL_LOG_ERROR, "%s: %s: %s", c->name, op, why);
  return BL_EINVAL;
}

bl_status cu_scratch(cu_ctx *c, size_t bytes, void **out) {
  if (bytes > c->scratch_bytes) {
    if (c->capturing) /* growing syncs and frees: a capture cannot hold that */
      return cu_invalid(c, "scratch", "would grow inside a graph capture");
    size_t grow = cu_round_up(bytes + bytes / 4, (size_t)1 << 20);
    c->scratch_gen++;
    CU_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->scratch) CU_CHECK(c, cudaFree(c->scratch));
    c->scratch = NULL;
    c->scratch_bytes = 0;
    CU_CHECK(c, cudaMalloc(&c->scratch, grow));
    c->scratch_bytes = grow;
  }
  *out = c->scratch;
  return BL_OK;
}

/* Queue the copy of the device error word (before the caller's sync). */
static bl_status cu_derr_fetch(cu_ctx *c) {
  CU_CHECK(c, cudaMemcpyAsync(c->derr_host, c->derr, sizeof *c->derr, cudaMemcpyDeviceToHost,
                              c->stream));
  return BL_OK;
}

/* After the sync: BL_EDEVICE, with the op and the bad value, once a kernel has
 * recorded a fault. Sticky (cu_derr): every later check fails the same way;
 * the message is logged the first time. */
static bl_status cu_derr_check(cu_ctx *c) {
  const cu_derr *e = c->derr_host;
  if (!e->code) return BL_OK;
  int n = snprintf(c->last_err, sizeof c->last_err, "%s: ", c->name);
  char *m = c->last_err + n;
  size_t left = sizeof c->last_err - (size_t)n;
  switch (e->code) {
  case CU_DERR_EMBED_ID:
    snprintf(m, left, "embed: token id %d outside the table's %d rows", e->value, e->limit);
    break;
  case CU_DERR_KV_SLOT:
    snprintf(m, left, "kv_write: slot %d outside the cache's %d slots", e->value, e->limit);
    break;
  case CU_DERR_ATTN_SEQ:
    snprintf(m, left, "attention: sequence %d outside the batch's %d sequences", e->value,
             e->limit);
    break;
  case CU_DERR_ATTN_POS:
    snprintf(m, left, "attention: position %d past the block table's %d positions", e->value,
             e->limit);
    break;
  case CU_DERR_ATTN_BLOCK:
    snprintf(m, left, "attention: block id %d outside the cache's %d blocks", e->value, e->limit);
    break;
  default: snprintf(m, left, "device error word %d (%d, %d)", e->code, e->value, e->limit); break;
  }
  if (!c->derr_logged) bl_log(BL_LOG_ERROR, "%s", c->last_err);
  c->derr_logged = 1;
  return BL_EDEVICE;
}

extern "C" const char *cu_last_error(const bk_backend *be) { return cu_ctx_of(be)->last_err; }

/* ---- buffers ---------------------------------------------------------- */

static void *cu_alloc(bk_backend *be, size_t bytes) {
  cu_ctx *c = cu_ctx_of(be);
  cudaSetDevice(c->dev);
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cu_fail(c, e, "cudaMalloc", __FILE__, __LINE__);
    cudaGetLastError(); /* an allocation failure is not sticky; clear it */
    return NULL;
  }
  return p;
}

static void cu_free(bk_backend *be, void *p) {
  cu_ctx *c = cu_ctx_of(be);
  cudaSetDevice(c->dev);
  if (!p) return;
  cudaError_t e = cudaFree(p);
  if (e != cudaSuccess) cu_fail(c, e, "cudaFree", __FILE__, __LINE__);
}

static bl_status cu_upload(bk_backend *be, void *dst, const void *host_src, size_t bytes) {
  CU_ENTER(c, be);
  if (!bytes) return BL_OK;
  CU_CHECK(c, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream));
  return BL_OK;
}

static bl_status cu_download(bk_backend *be, void *host_dst, const void *src, size_t bytes) {
  CU_ENTER(c, be);
  if (!bytes) return BL_OK;
  CU_CHECK(c, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
  bl_status st = cu_derr_fetch(c);
  if (st != BL_OK) return st;
  CU_CHECK(c, cudaStreamSynchronize(c->stream));
  return cu_derr_check(c);
}

static bl_status cu_copy(bk_backend *be, void *dst, const void *src, size_t bytes) {
  CU_ENTER(c, be);
  if (!bytes) return BL_OK;
  CU_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
  return BL_OK;
}

static bl_status cu_memset0(bk_backend *be, void *dst, size_t bytes) {
  CU_ENTER(c, be);
  if (!bytes) return BL_OK;
  CU_CHECK(c, cudaMemsetAsync(dst, 0, bytes, c->stream));
  return BL_OK;
}

static bl_status cu_sync(bk_backend *be) {
  CU_ENTER(c, be);
  bl_status st = cu_derr_fetch(c);
  if (st != BL_OK) return st;
  CU_CHECK(c, cudaStreamSynchronize(c->stream));
  return cu_derr_check(c);
}

/* ---- device info ------------------------------------------------------ */

/* The device_info slot. peak_gb_s is the memory's rated bandwidth from two
 * runtime attributes, the memory clock (kHz) and the bus width (bits), both
 * in CUDA 13's driver_types.h (cudaDeviceProp lost memoryClockRate in CUDA
 * 13; the attribute stayed):
 *   peak = 2 (double data rate) * clock_khz * 1e3 * bus_bits / 8 / 1e9 GB/s.
 * An H100 SXM reports 2,619,000 kHz and 5120 bits: 3352 GB/s, its rated
 * 3.35 TB/s. An H200 (6144 bits) is rated 4.8 TB/s, which the formula gives
 * for 3,125,000 kHz; a reported 3,201,000 kHz (3201 MHz) would give 4917
 * GB/s, 2.4 % over the datasheet. What an H200 reports was not checked on a
 * device here: `ballast bench` prints the figure it uses, and --peak-gb-s
 * overrides it. Memory is cudaMemGetInfo's (a MIG instance's own, where the
 * GPU is split; the peak is then still the whole GPU's). */
extern "C" bl_status cu_device_info(const bk_backend *be, bk_device_info *out) {
  memset(out, 0, sizeof *out);
  CU_ENTER(c, be);
  cudaDeviceProp prop;
  CU_CHECK(c, cudaGetDeviceProperties(&prop, c->dev));
  size_t free_b = 0, total_b = 0;
  CU_CHECK(c, cudaMemGetInfo(&free_b, &total_b));
  int clock_khz = 0, bus_bits = 0;
  CU_CHECK(c, cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, c->dev));
  CU_CHECK(c, cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, c->dev));
  snprintf(out->name, sizeof out->name, "%.*s", (int)sizeof out->name - 1, prop.name);
  out->mem_total = total_b;
  out->mem_free = free_b;
  out->peak_gb_s = 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9;
  out->sm_count = prop.multiProcessorCount;
  out->cc_major = prop.major;
  out->cc_minor = prop.minor;
  return BL_OK;
}

/* ---- life cycle ------------------------------------------------------- */

static void cu_destroy(bk_backend *be) {
  cu_ctx *c = cu_ctx_of(be);
  if (c) {
    if (c->stream) {
      cudaSetDevice(c->dev);
      cudaStreamSynchronize(c->stream);
    }
    if (c->scratch) cudaFree(c->scratch);
    if (c->sample_p) cudaFree(c->sample_p);
    if (c->derr) cudaFree(c->derr);
    if (c->derr_host) cudaFreeHost(c->derr_host);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
  }
  free(be);
}

/* A kernel to ask the runtime whether this build has an image for the GPU. */
static __global__ void cu_probe_kernel(int *p) {
  if (p) *p = 0;
}

static bl_status cu_open_device(int dev, cu_ctx *c, bl_err *err) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    return bl_fail(err, BL_EUNSUPPORTED, "cuda:%d: no CUDA device (%s)", dev,
                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  }
  if (dev < 0 || dev >= n)
    return bl_fail(err, BL_EUNSUPPORTED, "cuda:%d: no such device (%d present)", dev, n);
  if ((e = cudaSetDevice(dev)) != cudaSuccess)
    return bl_fail(err, BL_EDEVICE, "cuda:%d: cudaSetDevice: %s", dev, cudaGetErrorString(e));
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess)
    return bl_fail(err, BL_EDEVICE, "cuda:%d: cudaGetDeviceProperties: %s", dev,
                   cudaGetErrorString(e));
  c->sm_count = prop.multiProcessorCount;
  c->cc_major = prop.major;
  c->cc_minor = prop.minor;
  cudaFuncAttributes fa;
  if ((e = cudaFuncGetAttributes(&fa, cu_probe_kernel)) != cudaSuccess) {
    cudaGetLastError();
    return bl_fail(err, BL_EUNSUPPORTED,
                   "cuda:%d: %s (sm_%d%d) has no kernel image in this build (%s); "
                   "rebuild with -Dgpu_arch=%d%d",
                   dev, prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major,
                   prop.minor);
  }
  if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
    return bl_fail(err, BL_EDEVICE, "cuda:%d: cudaStreamCreate: %s", dev, cudaGetErrorString(e));
  cublasStatus_t s = cublasCreate(&c->blas);
  if (s != CUBLAS_STATUS_SUCCESS) {
    c->blas = NULL;
    return bl_fail(err, BL_EDEVICE, "cuda:%d: cublasCreate: %s", dev, cublasGetStatusString(s));
  }
  if ((s = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
    return bl_fail(err, BL_EDEVICE, "cuda:%d: cublasSetStream: %s", dev, cublasGetStatusString(s));
  if ((e = cudaMalloc(&c->derr, sizeof *c->derr)) != cudaSuccess ||
      (e = cudaMemset(c->derr, 0, sizeof *c->derr)) != cudaSuccess ||
      (e = cudaMallocHost(&c->derr_host, sizeof *c->derr_host)) != cudaSuccess)
    return bl_fail(err, BL_EDEVICE, "cuda:%d: the device error word: %s", dev,
                   cudaGetErrorString(e));
  memset(c->derr_host, 0, sizeof *c->derr_host);
  c->e2m1_hw = cu_e2m1_probe(c);
  bl_log(BL_LOG_INFO, "cuda:%d: %s, sm_%d%d, %d SMs, %.1f GiB%s", dev, prop.name, prop.major,
         prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1 << 30),
         c->e2m1_hw ? ", nvfp4 KV decoded by instruction" : "");
  return BL_OK;
}

extern "C" bl_status bk_cuda_create(int dev, bk_backend **out, bl_err *err) {
  *out = NULL;
  bk_backend *be = (bk_backend *)calloc(1, sizeof *be);
  cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
  if (!be || !c) {
    free(be);
    free(c);
    return bl_fail(err, BL_ENOMEM, "cuda:%d: out of host memory", dev);
  }
  c->dev = dev;
  snprintf(c->name, sizeof c->name, "cuda:%d", dev);
  be->ctx = c;
  bl_status st = cu_open_device(dev, c, err);
  if (st != BL_OK) {
    cu_destroy(be);
    return st;
  }
  be->name = c->name;
  be->destroy = cu_destroy;
  be->alloc = cu_alloc;
  be->free = cu_free;
  be->upload = cu_upload;
  be->download = cu_download;
  be->copy = cu_copy;
  be->memset0 = cu_memset0;
  be->sync = cu_sync;
  be->weight_prepare = cu_weight_prepare;
  be->weight_release = cu_weight_release;
  be->embed = cu_embed;
  be->rmsnorm = cu_rmsnorm;
  be->qk_norm_rope = cu_qk_norm_rope;
  be->matmul = cu_matmul;
  be->silu_mul = cu_silu_mul;
  be->add = cu_add;
  be->kv_write = cu_kv_write;
  be->attention = cu_attention;
  be->last_error = cu_last_error;
  be->device_info = cu_device_info;
  be->sample = cu_sample;
  be->capture_begin = cu_capture_begin;
  be->capture_end = cu_capture_end;
  be->graph_launch = cu_graph_launch;
  be->graph_free = cu_graph_free;
  *out = be;
  return BL_OK;
}
