/* The emulator's scheduler (fibers: a block runs until every live thread
 * waits at a barrier), a malloc-backed CUDA runtime, and cuBLAS GemmEx as a
 * plain loop. See run.sh. */
#include "emu_cuda.h"
#include <malloc.h>
#include <ucontext.h>
#include <vector>

uint3_ threadIdx, blockIdx, blockDim, gridDim;
float emu_xchg[1024];

enum { RUN, AT_BLOCK, AT_WARP, DONE };
static std::vector<int> g_state;
static std::vector<char *> g_stacks;
static int g_cur;
static const std::function<void()> *g_fn;
static const size_t STACK = 128 * 1024;
static long g_launches, g_threads;

static void fiber_entry(void);

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
/* Fiber switch without swapcontext's sigprocmask system calls (they made
 * test_cuda_model 13x slower: 18 minutes, not 80 s): save the callee-saved
 * registers on the old stack, switch stack pointers, restore. The SysV ABI
 * leaves every other register caller-saved; the FP control words are never
 * changed. Under ASan (SAN=1) the intercepted swapcontext below keeps the
 * stack shadow right. */
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(".pushsection .text\n"
    ".globl emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n"
    ".popsection\n");
static void *g_main_sp;
static std::vector<void *> g_sp;
static void fiber_init(unsigned t) {
  /* a frame emu_switch pops: six registers, then fiber_entry as the return
   * address, sitting 16-aligned so fiber_entry starts with rsp = 8 mod 16 */
  uintptr_t top = ((uintptr_t)g_stacks[t] + STACK) & ~(uintptr_t)15;
  void **f = (void **)(top - 64);
  for (int i = 0; i < 6; i++)
    f[i] = nullptr;
  f[6] = (void *)fiber_entry;
  f[7] = nullptr;
  g_sp[t] = f;
}
static void fiber_resize(unsigned nt) { g_sp.resize(nt); }
static void to_main(void) { emu_switch(&g_sp[g_cur], g_main_sp); }
static void to_fiber(unsigned t) { emu_switch(&g_main_sp, g_sp[t]); }
#else
static ucontext_t g_main;
static std::vector<ucontext_t> g_ctx;
static void fiber_init(unsigned t) {
  getcontext(&g_ctx[t]);
  g_ctx[t].uc_stack.ss_sp = g_stacks[t];
  g_ctx[t].uc_stack.ss_size = STACK;
  g_ctx[t].uc_link = nullptr;
  makecontext(&g_ctx[t], fiber_entry, 0);
}
static void fiber_resize(unsigned nt) { g_ctx.resize(nt); }
static void to_main(void) { swapcontext(&g_ctx[g_cur], &g_main); }
static void to_fiber(unsigned t) { swapcontext(&g_main, &g_ctx[t]); }
#endif

static void fiber_entry(void) {
  (*g_fn)();
  g_state[g_cur] = DONE;
  to_main(); /* never resumed */
  abort();
}
void emu_sync_block() {
  g_state[g_cur] = AT_BLOCK;
  to_main();
}
void emu_sync_warp() {
  g_state[g_cur] = AT_WARP;
  to_main();
}

/* ---- stream capture (CUDA graphs) ----
 * While a capture is open, launches, async copies and sets and cuBLAS calls
 * are recorded (their arguments by value, memory read at replay), and the
 * calls a real capture refuses (sync, malloc, free, sync copies) fail and
 * invalidate it, so cudaStreamEndCapture fails as CUDA's does. */
struct emu_graph {
  std::vector<std::function<void()>> ops;
};
static emu_graph *g_rec; /* the open capture, or NULL */
static bool g_rec_bad;
enum { EMU_CAPTURE_UNSUPPORTED = 900, EMU_CAPTURE_INVALIDATED = 901 };

static bool recording(std::function<void()> op) {
  if (!g_rec) return false;
  g_rec->ops.push_back(std::move(op));
  return true;
}
static cudaError_t refuse_in_capture(void) {
  if (!g_rec) return 0;
  g_rec_bad = true;
  return EMU_CAPTURE_UNSUPPORTED;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  if (g_rec) return EMU_CAPTURE_UNSUPPORTED;
  g_rec = new emu_graph;
  g_rec_bad = false;
  return 0;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
  emu_graph *r = g_rec;
  g_rec = NULL;
  *g = NULL;
  if (!r) return cudaErrorInvalidValue;
  if (g_rec_bad) {
    delete r;
    return EMU_CAPTURE_INVALIDATED;
  }
  *g = r;
  return 0;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
  *e = new emu_graph(*g);
  return 0;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
  if (g_rec) return refuse_in_capture();
  for (auto &op : e->ops)
    op();
  return 0;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return 0;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return 0;
}

void emu_launch(dim3 grid, dim3 block, std::function<void()> fn) {
  if (recording([grid, block, fn]() { emu_launch(grid, block, fn); })) return;
  unsigned nt = block.x * block.y * block.z;
  if (block.y != 1 || block.z != 1 || nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    fprintf(stderr, "emu: bad launch config grid %u,%u,%u block %u\n", grid.x, grid.y, grid.z, nt);
    abort();
  }
  g_launches++;
  g_fn = &fn;
  while (g_stacks.size() < nt)
    g_stacks.push_back((char *)malloc(STACK));
  fiber_resize(nt);
  g_state.resize(nt);
  blockDim = {block.x, 1, 1};
  gridDim = {grid.x, grid.y, grid.z};
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        blockIdx = {bx, by, bz};
        for (unsigned t = 0; t < nt; t++) {
          fiber_init(t);
          g_state[t] = RUN;
        }
        g_threads += nt;
        for (;;) {
          bool ran = false;
          for (unsigned t = 0; t < nt; t++)
            if (g_state[t] == RUN) {
              g_cur = (int)t;
              threadIdx = {t, 0, 0};
              to_fiber(t);
              ran = true;
            }
          /* release barriers */
          bool all_done = true, released = false;
          unsigned live = 0, at_block = 0;
          for (unsigned t = 0; t < nt; t++) {
            if (g_state[t] != DONE) {
              all_done = false;
              live++;
            }
            if (g_state[t] == AT_BLOCK) at_block++;
          }
          if (all_done) break;
          if (at_block && at_block == live) {
            for (unsigned t = 0; t < nt; t++)
              if (g_state[t] == AT_BLOCK) g_state[t] = RUN;
            released = true;
          }
          for (unsigned w = 0; w * 32 < nt; w++) {
            unsigned lo = w * 32, hi = lo + 32 < nt ? lo + 32 : nt, waiting = 0, done = 0;
            for (unsigned t = lo; t < hi; t++) {
              waiting += g_state[t] == AT_WARP;
              done += g_state[t] == DONE;
            }
            if (waiting && waiting + done == hi - lo) {
              if (done) {
                fprintf(stderr, "emu: shuffle in warp %u with %u exited lanes\n", w, done);
                abort();
              }
              for (unsigned t = lo; t < hi; t++)
                g_state[t] = RUN;
              released = true;
            }
          }
          if (!ran && !released) {
            fprintf(stderr, "emu: deadlock (block %u,%u)\n", bx, by);
            abort();
          }
        }
      }
}

/* The emulated device: plainly not a GPU. Its memory is EMU_MEM_TOTAL less
 * what cudaMalloc holds; its "rated" bandwidth is 1,000,000 kHz x 256 bits,
 * 64 GB/s by cu_device_info's formula (tests/gpu/emu/test_device_info.c). */
#define EMU_MEM_TOTAL ((size_t)1 << 34)
static size_t g_alloc_bytes;
cudaError_t cudaGetDeviceCount(int *n) {
  *n = 1;
  return 0;
}
cudaError_t cudaSetDevice(int) { return 0; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
  memset(p, 0, sizeof *p);
  strcpy(p->name, "ballast CUDA emulator (CPU)");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 2;
  p->totalGlobalMem = EMU_MEM_TOTAL;
  return 0;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int dev) {
  switch (a) {
  case cudaDevAttrMemoryClockRate: *v = 1000000; return 0;  /* kHz */
  case cudaDevAttrGlobalMemoryBusWidth: *v = 256; return 0; /* bits */
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
  *total_b = EMU_MEM_TOTAL;
  *free_b = g_alloc_bytes < EMU_MEM_TOTAL ? EMU_MEM_TOTAL - g_alloc_bytes : 0;
  return 0;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
  *s = (cudaStream_t)1;
  return 0;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return refuse_in_capture(); }
cudaError_t cudaGetLastError(void) { return 0; }
const char *cudaGetErrorName(cudaError_t) { return "emuError"; }
const char *cudaGetErrorString(cudaError_t) { return "emu error"; }
cudaError_t cudaMalloc(void **p, size_t b) {
  if (g_rec) return refuse_in_capture();
  /* fill with garbage so reads of unwritten memory show */
  if (posix_memalign(p, 256, b ? b : 1)) return 2;
  memset(*p, 0xA5, b);
  g_alloc_bytes += malloc_usable_size(*p);
  return 0;
}
cudaError_t cudaFree(void *p) {
  if (g_rec) return refuse_in_capture();
  if (p) g_alloc_bytes -= malloc_usable_size(p);
  free(p);
  return 0;
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t b, cudaMemcpyKind, cudaStream_t) {
  if (recording([=]() { memmove(d, s, b); })) return 0;
  memmove(d, s, b);
  return 0;
}
cudaError_t cudaMemcpy2DAsync(void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h,
                              cudaMemcpyKind, cudaStream_t) {
  if (w > dp || w > sp) return cudaErrorInvalidValue;
  if (recording([=]() {
        for (size_t i = 0; i < h; i++)
          memcpy((char *)d + i * dp, (const char *)s + i * sp, w);
      }))
    return 0;
  for (size_t i = 0; i < h; i++)
    memcpy((char *)d + i * dp, (const char *)s + i * sp, w);
  return 0;
}
cudaError_t cudaMemsetAsync(void *d, int v, size_t b, cudaStream_t) {
  if (recording([=]() { memset(d, v, b); })) return 0;
  memset(d, v, b);
  return 0;
}
cudaError_t cudaMemset(void *d, int v, size_t b) {
  if (g_rec) return refuse_in_capture();
  memset(d, v, b);
  return 0;
}
cudaError_t cudaMallocHost(void **p, size_t b) { /* host memory: not in g_alloc_bytes */
  if (g_rec) return refuse_in_capture();
  if (posix_memalign(p, 256, b ? b : 1)) return 2;
  memset(*p, 0xA5, b);
  return 0;
}
cudaError_t cudaFreeHost(void *p) {
  free(p);
  return 0;
}

cublasStatus_t cublasCreate(cublasHandle_t *h) {
  *h = (cublasHandle_t)1;
  return 0;
}
cublasStatus_t cublasDestroy(cublasHandle_t) { return 0; }
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return 0; }
const char *cublasGetStatusName(cublasStatus_t) { return "EMU"; }
const char *cublasGetStatusString(cublasStatus_t) { return "emu"; }
static float ld(const void *p, cudaDataType t, size_t i) {
  return t == CUDA_R_16F ? bl_half_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t) {
  if (ct != CUDA_R_32F) return 7;
  /* column-major: C[i + j*ldc] = alpha * sum_l op(A)[i,l] op(B)[l,j] + beta*C */
  if ((ta == CUBLAS_OP_N ? lda < m : lda < k) || (tb == CUBLAS_OP_N ? ldb < k : ldb < n) ||
      ldc < m) {
    fprintf(stderr, "emu: gemm bad ld\n");
    return 7;
  }
  float al = *(const float *)alpha, be = *(const float *)beta; /* read now, as cuBLAS does */
  if (recording([=]() {
        cublasGemmEx(NULL, ta, tb, m, n, k, &al, A, at, lda, B, bt, ldb, &be, C, ct, ldc,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      }))
    return 0;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int l = 0; l < k; l++) {
        float a =
            ta == CUBLAS_OP_N ? ld(A, at, i + (size_t)l * lda) : ld(A, at, l + (size_t)i * lda);
        float b =
            tb == CUBLAS_OP_N ? ld(B, bt, l + (size_t)j * ldb) : ld(B, bt, j + (size_t)l * ldb);
        s += (double)a * b;
      }
      float *c = (float *)C + i + (size_t)j * ldc;
      *c = al * (float)s + (be != 0 ? be * *c : 0.0f);
    }
  return 0;
}
