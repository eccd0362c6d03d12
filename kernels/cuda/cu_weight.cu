/* weight_prepare / weight_release: the host bk_weight copied into the device
 * layout described in cu_weight.cuh. */
#include "cu_weight.cuh"

#include <stdlib.h>
#include <string.h>

const cu_weight *cu_weight_of(cu_ctx *c, const bk_weight *w, const char *op) {
  const cu_weight *cw = (const cu_weight *)w->dev;
  if (!cw || cw->rows != w->rows || cw->cols != w->cols || cw->fmt != w->fmt) {
    cu_invalid(c, op, "weight not prepared on this backend (weight_prepare)");
    return NULL;
  }
  return cw;
}

static void cu_weight_free(cu_weight *cw) {
  if (!cw) return;
  if (cw->q) cudaFree(cw->q);
  if (cw->sm) cudaFree(cw->sm);
  if (cw->perm) cudaFree(cw->perm);
  free(cw);
}

static const char *cu_weight_check(const bk_weight *w) {
  if (w->fmt != BK_WF_F16 && w->fmt != BK_WF_W4 && w->fmt != BK_WF_W2) return "unknown format";
  if (w->rows <= 0 || w->cols <= 0) return "empty shape";
  if (!w->q) return "no data";
  if (w->fmt == BK_WF_F16) return NULL;
  if (w->group_size <= 0 || w->group_size % BK_QBLOCK || w->cols % w->group_size)
    return "group_size must be a multiple of 32 dividing cols";
  if (!w->scales || !w->mins) return "no scales or mins";
  return NULL;
}

/* Allocate and fill cw's arrays from w; on failure the caller frees cw. */
static bl_status cu_weight_upload(cu_ctx *c, const bk_weight *w, cu_weight *cw) {
  size_t row_bytes = w->fmt == BK_WF_F16 ? (size_t)w->cols * 2
                                         : (size_t)w->cols * (size_t)bk_wfmt_bits(w->fmt) / 8;
  cw->fmt = w->fmt;
  cw->rows = w->rows;
  cw->cols = w->cols;
  cw->group_size = w->fmt == BK_WF_F16 ? w->cols : w->group_size;
  cw->n_groups = w->cols / cw->group_size;
  cw->stride = cu_round_up(row_bytes, 16);
  size_t q_bytes = (size_t)w->rows * cw->stride;
  CU_CHECK(c, cudaMalloc(&cw->q, q_bytes));
  if (cw->stride != row_bytes) CU_CHECK(c, cudaMemsetAsync(cw->q, 0, q_bytes, c->stream));
  CU_CHECK(c, cudaMemcpy2DAsync(cw->q, cw->stride, w->q, row_bytes, row_bytes, (size_t)w->rows,
                                cudaMemcpyHostToDevice, c->stream));
  if (w->perm) {
    CU_CHECK(c, cudaMalloc(&cw->perm, (size_t)w->cols * sizeof(int32_t)));
    CU_CHECK(c, cudaMemcpyAsync(cw->perm, w->perm, (size_t)w->cols * sizeof(int32_t),
                                cudaMemcpyHostToDevice, c->stream));
  }
  if (w->fmt != BK_WF_F16) {
    /* (scale, min) pairs as __half2, rows in quads (cu_weight.cuh) */
    int ngr = cw->n_groups;
    size_t ng = cu_round_up((size_t)w->rows, 4) * (size_t)ngr;
    uint16_t *sm = (uint16_t *)calloc(ng, 4);
    if (!sm) return BL_ENOMEM;
    for (int r = 0; r < w->rows; r++)
      for (int g = 0; g < ngr; g++) {
        size_t i = cu_sm_index(r, g, ngr), h = (size_t)r * (size_t)ngr + (size_t)g;
        sm[2 * i] = w->scales[h];
        sm[2 * i + 1] = w->mins[h];
      }
    cudaError_t e = cudaMalloc(&cw->sm, ng * 4);
    if (e == cudaSuccess)
      e = cudaMemcpyAsync(cw->sm, sm, ng * 4, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream); /* before sm is freed */
    free(sm);
    if (e != cudaSuccess) return cu_fail(c, e, "upload scales", __FILE__, __LINE__);
  }
  /* The host arrays may go away once we return. */
  CU_CHECK(c, cudaStreamSynchronize(c->stream));
  return BL_OK;
}

extern "C" bl_status cu_weight_prepare(bk_backend *be, bk_weight *w) {
  CU_ENTER(c, be);
  if (w->dev) cu_weight_release(be, w);
  const char *why = cu_weight_check(w);
  if (why) return cu_invalid(c, "weight_prepare", why);
  cu_weight *cw = (cu_weight *)calloc(1, sizeof *cw);
  if (!cw) return BL_ENOMEM;
  bl_status st = cu_weight_upload(c, w, cw);
  if (st != BL_OK) {
    cudaStreamSynchronize(c->stream);
    cu_weight_free(cw);
    return st;
  }
  w->dev = cw;
  return BL_OK;
}

extern "C" void cu_weight_release(bk_backend *be, bk_weight *w) {
  cu_ctx *c = cu_ctx_of(be);
  if (!w->dev) return;
  cudaSetDevice(c->dev);
  /* cudaFree waits for queued work that may still read the weight. */
  cu_weight_free((cu_weight *)w->dev);
  w->dev = NULL;
}
