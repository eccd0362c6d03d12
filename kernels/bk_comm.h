/* Collectives across the backends of one tensor-parallel replica.
 *
 * A tensor-parallel model (model/tp.c) runs each layer on n shards, one
 * backend each, and sums the shards' partial outputs after the attention
 * output and MLP down projections. bk_comm is that sum: all_reduce adds
 * bufs[0..n) element-wise and leaves the sum in every one of them. bufs[i]
 * is a device pointer of bes[i], the backend the communicator was made for;
 * the call is ordered after the ops already queued on each backend and
 * before any queued later, as an op is.
 *
 * Two implementations:
 *   host  every backend: download each buffer, sum on the host in rank
 *         order, upload the sum to each. Synchronous and slow; what CPU
 *         shards (and GPUs without NCCL) use, and the reference the NCCL
 *         path is checked against.
 *   nccl  CUDA backends only (kernels/cuda/cu_comm.cu): one ncclAllReduce
 *         per rank on each backend's stream, grouped, over a clique made
 *         with ncclCommInitAll. Needs n distinct GPUs (NCCL refuses two
 *         ranks on one device).
 * bk_comm_create picks nccl where every backend is a bare CUDA backend on
 * a distinct device and the build has NCCL, else host. */
#ifndef BK_COMM_H
#define BK_COMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

#define BK_COMM_MAX 8

typedef struct bk_comm bk_comm;

struct bk_comm {
  const char *name; /* "host", "nccl" */
  int n;
  bk_backend *bes[BK_COMM_MAX]; /* not owned */
  void *ctx;
  /* bufs[i] (device pointers of bes[i], count floats each) = their sum.
   * BL_EDEVICE from a failed transfer or NCCL call (bk_comm_last_error). */
  bl_status (*all_reduce)(bk_comm *c, float *const *bufs, size_t count);
  void (*destroy)(bk_comm *c);
  char last_err[256];
};

/* The host communicator over bes[0..n), 1 <= n <= BK_COMM_MAX. */
bl_status bk_comm_host_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err);
/* The NCCL communicator: BL_EUNSUPPORTED where the build has no NCCL, a
 * backend is not a bare CUDA backend, or two share a device. */
bl_status bk_comm_nccl_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err);
/* nccl when bk_comm_nccl_create accepts, else host. */
bl_status bk_comm_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err);

static inline void bk_comm_destroy(bk_comm *c) {
  if (c) c->destroy(c);
}

#ifdef __cplusplus
}
#endif

#endif
