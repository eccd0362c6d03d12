/* The NCCL communicator (kernels/bk_comm.h): one clique per tensor-parallel
 * replica, made with ncclCommInitAll over the ranks' devices, and one
 * grouped ncclAllReduce per call on each rank's stream, so the sum is
 * ordered with the ops around it exactly as a kernel would be. Built only
 * where meson found NCCL (BL_HAVE_NCCL); elsewhere bk_comm_nccl_create says
 * so and bk_comm_create uses the host communicator. */
#include <stdio.h>
#include <stdlib.h>

#include "bk_comm.h"
#include "cu_common.cuh"
#include "cu_ops.h"

#ifdef BL_HAVE_NCCL
#include <nccl.h>

typedef struct nccl_ctx {
  ncclComm_t comms[BK_COMM_MAX];
} nccl_ctx;

/* Is be a bare CUDA backend (not a wrapper such as bk_fault)? Its
 * last_error slot is the CUDA backend's own. */
static bool is_cuda(const bk_backend *be) { return be->last_error == cu_last_error; }

static bl_status nccl_all_reduce(bk_comm *c, float *const *bufs, size_t count) {
  nccl_ctx *x = (nccl_ctx *)c->ctx;
  ncclResult_t r = ncclGroupStart();
  for (int i = 0; r == ncclSuccess && i < c->n; i++) {
    cu_ctx *cc = cu_ctx_of(c->bes[i]);
    r = ncclAllReduce(bufs[i], bufs[i], count, ncclFloat, ncclSum, x->comms[i], cc->stream);
  }
  ncclResult_t g = ncclGroupEnd();
  if (r == ncclSuccess) r = g;
  if (r == ncclSuccess) return BL_OK;
  snprintf(c->last_err, sizeof c->last_err, "all-reduce: ncclAllReduce of %zu floats: %s (%s)",
           count, ncclGetErrorString(r), ncclGetLastError(NULL));
  return BL_EDEVICE;
}

static void nccl_destroy(bk_comm *c) {
  nccl_ctx *x = (nccl_ctx *)c->ctx;
  for (int i = 0; i < c->n; i++)
    if (x->comms[i]) ncclCommDestroy(x->comms[i]);
  free(x);
  free(c);
}

extern "C" bl_status bk_comm_nccl_create(bk_backend *const *bes, int n, bk_comm **out,
                                         bl_err *err) {
  *out = NULL;
  if (n < 1 || n > BK_COMM_MAX)
    return bl_fail(err, BL_EINVAL, "nccl: %d ranks (1..%d)", n, BK_COMM_MAX);
  int devs[BK_COMM_MAX];
  for (int i = 0; i < n; i++) {
    if (!bes[i] || !is_cuda(bes[i]))
      return bl_fail(err, BL_EUNSUPPORTED, "nccl: rank %d (%s) is not a CUDA backend", i,
                     bes[i] ? bes[i]->name : "none");
    devs[i] = cu_ctx_of(bes[i])->dev;
    for (int j = 0; j < i; j++)
      if (devs[j] == devs[i])
        return bl_fail(err, BL_EUNSUPPORTED, "nccl: ranks %d and %d share cuda:%d", j, i, devs[i]);
  }
  bk_comm *c = (bk_comm *)calloc(1, sizeof *c);
  nccl_ctx *x = (nccl_ctx *)calloc(1, sizeof *x);
  if (!c || !x) {
    free(c);
    free(x);
    return bl_fail(err, BL_ENOMEM, "nccl: out of memory");
  }
  ncclResult_t r = ncclCommInitAll(x->comms, n, devs);
  if (r != ncclSuccess) {
    free(c);
    free(x);
    return bl_fail(err, BL_EDEVICE, "nccl: ncclCommInitAll over %d GPUs: %s", n,
                   ncclGetErrorString(r));
  }
  c->name = "nccl";
  c->n = n;
  for (int i = 0; i < n; i++)
    c->bes[i] = bes[i];
  c->ctx = x;
  c->all_reduce = nccl_all_reduce;
  c->destroy = nccl_destroy;
  *out = c;
  return BL_OK;
}

#else

extern "C" bl_status bk_comm_nccl_create(bk_backend *const *bes, int n, bk_comm **out,
                                         bl_err *err) {
  (void)bes;
  (void)n;
  *out = NULL;
  return bl_fail(err, BL_EUNSUPPORTED, "nccl: this ballast was built without NCCL");
}

#endif
