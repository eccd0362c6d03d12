/* matmul on the CPU: y[n][rows] = x[n][cols] . W^T for fp16, W4 and W2.
 *
 * Two parallel phases. (1) Input preparation, per token: gather x through
 * w->perm (GPTQ act-order) and, for quantized weights, the per-group sums of
 * x and the kernel's ordering/scaling of x (cpu_kern.mm_prep_q), into the
 * context's scratch. fp16 without perm reads x in place. (2) Rows are split
 * into chunks handed out to threads; each chunk streams its weight rows once
 * per tile of up to CPU_MM_TILE tokens. Weights are never dequantized to
 * memory. */
#include "cpu_internal.h"

/* Keep a chunk's weight bytes within this when there are several token
 * tiles, so tiles after the first read the rows from L2. */
#define CPU_MM_CHUNK_BYTES (256 * 1024)

typedef struct cpu_prep_job {
  const cpu_kern *k;
  const bk_weight *w;
  const float *x; /* [n][cols] caller's input */
  float *xp;      /* [n][cols] prepared input */
  float *xs;      /* [n][cols/group_size] group sums (quantized) */
} cpu_prep_job;

static void cpu_prep_run(void *arg, int64_t t0, int64_t t1, int tid) {
  cpu_prep_job *j = arg;
  const bk_weight *w = j->w;
  for (int64_t t = t0; t < t1; t++) {
    const float *x = j->x + (size_t)t * w->cols;
    float *xp = j->xp + (size_t)t * w->cols;
    if (w->fmt == BK_WF_F16) {
      for (int32_t k = 0; k < w->cols; k++)
        xp[k] = x[w->perm[k]];
    } else {
      j->k->mm_prep_q(w, x, xp, j->xs + (size_t)t * (w->cols / w->group_size));
    }
  }
}

typedef struct cpu_mm_job {
  const cpu_kern *k;
  cpu_mm m;
} cpu_mm_job;

static void cpu_mm_run(void *arg, int64_t r0, int64_t r1, int tid) {
  cpu_mm_job *j = arg;
  j->k->mm_rows(&j->m, (int32_t)r0, (int32_t)r1);
}

/* Rows per chunk: enough work to be worth a dispatch, about four chunks per
 * thread for balance, and L2-sized when the weights are read once per tile. */
static int64_t cpu_mm_grain(const cpu_ctx *c, const bk_weight *w, int32_t n) {
  int64_t g = (w->rows + 4 * (int64_t)c->n_threads - 1) / (4 * (int64_t)c->n_threads);
  int64_t min_rows = cpu_grain((int64_t)w->cols * n);
  if (g < min_rows) g = min_rows;
  if (n > CPU_MM_TILE) {
    int64_t row_bytes =
        w->fmt == BK_WF_F16 ? 2 * (int64_t)w->cols : (int64_t)bk_weight_row_bytes(w->fmt, w->cols);
    int64_t cap = CPU_MM_CHUNK_BYTES / (row_bytes > 0 ? row_bytes : 1);
    if (g > cap) g = cap > 0 ? cap : 1;
  }
  return g;
}

bl_status cpu_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n) {
  cpu_ctx *c = be->ctx;
  if (n <= 0 || w->rows <= 0) return BL_OK;
  cpu_mm_job j = {.k = c->k, .m = {.w = w, .x = x, .ldx = (size_t)w->cols, .y = y, .n = n}};
  if (w->fmt != BK_WF_F16 || w->perm) {
    size_t xb = (size_t)n * (size_t)w->cols * sizeof(float);
    size_t sb =
        w->fmt == BK_WF_F16 ? 0 : (size_t)n * (size_t)(w->cols / w->group_size) * sizeof(float);
    cpu_prep_job p = {.k = c->k, .w = w, .x = x};
    if (!(p.xp = cpu_buf_get(&c->mm_x, xb))) return cpu_op_oom("matmul", xb);
    if (sb && !(p.xs = cpu_buf_get(&c->mm_xs, sb))) return cpu_op_oom("matmul", sb);
    cpu_pool_for(c->pool, n, cpu_grain(w->cols), cpu_prep_run, &p);
    j.m.x = p.xp;
    j.m.xs = p.xs;
  }
  cpu_pool_for(c->pool, w->rows, cpu_mm_grain(c, w, n), cpu_mm_run, &j);
  return BL_OK;
}
