/* CUDA graphs: the capture slots of the backend table (backend.h).
 *
 * A capture is cudaStreamBeginCapture on the backend's stream in thread-local
 * mode, so only this thread's calls are checked against it; capture_end
 * instantiates the graph at once (the decode step is replayed many times
 * for each capture). cu_scratch refuses to grow while a capture is open,
 * and each graph remembers the scratch generation it was recorded at: a
 * launch after the scratch moved is BL_AGAIN, never a replay that reads
 * freed memory. Kernels' device errors still land in the error word, which
 * download and sync read as for any op. */
#include <stdlib.h>

#include "cu_common.cuh"
#include "cu_ops.h"

typedef struct cu_graph {
  cudaGraphExec_t exec;
  uint64_t scratch_gen;
} cu_graph;

extern "C" bl_status cu_capture_begin(bk_backend *be) {
  cu_ctx *c = cu_ctx_of(be);
  if (c->capturing) return cu_invalid(c, "capture_begin", "a capture is already open");
  cudaSetDevice(c->dev);
  CU_CHECK(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
  c->capturing = 1;
  return BL_OK;
}

extern "C" bl_status cu_capture_end(bk_backend *be, void **out) {
  cu_ctx *c = cu_ctx_of(be);
  *out = NULL;
  if (!c->capturing) return cu_invalid(c, "capture_end", "no capture is open");
  c->capturing = 0;
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(c->stream, &g);
  cudaGraphExec_t exec = NULL;
  if (e == cudaSuccess && g) e = cudaGraphInstantiate(&exec, g, 0);
  if (g) cudaGraphDestroy(g);
  cu_graph *gr = e == cudaSuccess ? (cu_graph *)malloc(sizeof *gr) : NULL;
  if (!gr) {
    /* An op the capture could not hold (or no memory): nothing is left
     * recorded and the stream is usable, so this is not a device fault. */
    if (exec) cudaGraphExecDestroy(exec);
    cudaGetLastError();
    bl_log(BL_LOG_WARN, "%s: graph capture failed: %s", c->name,
           e == cudaSuccess ? "out of memory" : cudaGetErrorString(e));
    return BL_EUNSUPPORTED;
  }
  gr->exec = exec;
  gr->scratch_gen = c->scratch_gen;
  *out = gr;
  return BL_OK;
}

extern "C" bl_status cu_graph_launch(bk_backend *be, void *graph) {
  cu_ctx *c = cu_ctx_of(be);
  cu_graph *gr = (cu_graph *)graph;
  if (gr->scratch_gen != c->scratch_gen) return BL_AGAIN;
  CU_CHECK(c, cudaGraphLaunch(gr->exec, c->stream));
  return BL_OK;
}

extern "C" void cu_graph_free(bk_backend *be, void *graph) {
  cu_graph *gr = (cu_graph *)graph;
  if (!gr) return;
  cudaStreamSynchronize(cu_ctx_of(be)->stream); /* no launch of it still queued */
  cudaGraphExecDestroy(gr->exec);
  free(gr);
}
