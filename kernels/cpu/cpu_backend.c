/* The CPU backend: bk_cpu_create, memory slots (host memory, 64-byte
 * aligned), ISA choice, and the element-wise ops (embed, rmsnorm, silu_mul,
 * add). Matmul lives in cpu_matmul.c, attention and RoPE in cpu_attn.c,
 * device_info in cpu_info.c.
 *
 * The ISA is chosen once here: AVX2+FMA+F16C where the CPU has them, else
 * portable C; BALLAST_CPU_ISA=scalar|avx2 forces one (tests run both). */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>

#include "bl_log.h"
#include "cpu_internal.h"

/* ---- scratch ---------------------------------------------------------- */

void *cpu_buf_get(cpu_buf *b, size_t bytes) {
  if (bytes == 0) bytes = 64;
  if (bytes <= b->cap) return b->p;
  size_t cap = (bytes + bytes / 4 + 63) / 64 * 64; /* some headroom: shapes vary by step */
  void *p = aligned_alloc(64, cap);
  if (!p) return NULL;
  free(b->p);
  b->p = p;
  b->cap = cap;
  return p;
}

static void cpu_buf_free(cpu_buf *b) {
  free(b->p);
  b->p = NULL;
  b->cap = 0;
}

bl_status cpu_op_oom(const char *op, size_t bytes) {
  bl_log(BL_LOG_ERROR, "cpu: %s: out of memory for %zu bytes of scratch", op, bytes);
  return BL_EDEVICE;
}

/* ---- memory ----------------------------------------------------------- */

static void *cpu_alloc(bk_backend *be, size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  return aligned_alloc(64, n ? n : 64);
}

static void cpu_free(bk_backend *be, void *p) { free(p); }

static bl_status cpu_upload(bk_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
  return BL_OK;
}

static bl_status cpu_copy(bk_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes) memmove(dst, src, bytes);
  return BL_OK;
}

static bl_status cpu_memset0(bk_backend *be, void *dst, size_t bytes) {
  if (bytes) memset(dst, 0, bytes);
  return BL_OK;
}

static bl_status cpu_sync(bk_backend *be) { return BL_OK; }

/* ---- embed ------------------------------------------------------------ */

typedef struct cpu_embed_job {
  float *out;         /* [n][cols] */
  const bk_weight *w; /* [rows][cols], any format */
  const int32_t *ids; /* [n] */
  float *tmp;         /* [n_threads][stride]: a row in packed order (perm only) */
  size_t stride;
  _Atomic int bad;        /* an id was out of range ... */
  _Atomic int32_t bad_id; /* ... this one */
} cpu_embed_job;

static void cpu_embed_run(void *arg, int64_t i0, int64_t i1, int tid) {
  cpu_embed_job *j = arg;
  const bk_weight *w = j->w;
  for (int64_t i = i0; i < i1; i++) {
    float *o = j->out + (size_t)i * w->cols;
    int32_t id = j->ids[i];
    if (id < 0 || id >= w->rows) {
      for (int32_t c = 0; c < w->cols; c++)
        o[c] = 0;
      atomic_store(&j->bad_id, id);
      atomic_store(&j->bad, 1);
      continue;
    }
    if (!w->perm) {
      bk_weight_row_f32(w, id, o);
      continue;
    }
    float *t = j->tmp + (size_t)tid * j->stride; /* packed column k is column perm[k] */
    bk_weight_row_f32(w, id, t);
    for (int32_t c = 0; c < w->cols; c++)
      o[w->perm[c]] = t[c];
  }
}

static bl_status cpu_embed(bk_backend *be, float *out, const bk_weight *table, const int32_t *ids,
                           int32_t n) {
  cpu_ctx *c = be->ctx;
  cpu_embed_job j = {.out = out, .w = table, .ids = ids};
  if (table->perm) {
    j.stride = cpu_thr_stride((size_t)table->cols);
    size_t bytes = (size_t)c->n_threads * j.stride * sizeof(float);
    if (!(j.tmp = cpu_buf_get(&c->thr, bytes))) return cpu_op_oom("embed", bytes);
  }
  cpu_pool_for(c->pool, n, cpu_grain(table->cols), cpu_embed_run, &j);
  if (atomic_load(&j.bad)) {
    bl_log(BL_LOG_ERROR, "cpu: embed: token id %d outside [0, %d)", (int)atomic_load(&j.bad_id),
           (int)table->rows);
    return BL_EDEVICE;
  }
  return BL_OK;
}

/* ---- rmsnorm ---------------------------------------------------------- */

typedef struct cpu_norm_job {
  const cpu_kern *k;
  float *out;     /* [n][dim]; may be x */
  const float *x; /* [n][dim] */
  const float *w; /* [dim] */
  int32_t dim;
  float eps;
} cpu_norm_job;

static void cpu_rmsnorm_run(void *arg, int64_t i0, int64_t i1, int tid) {
  cpu_norm_job *j = arg;
  for (int64_t i = i0; i < i1; i++) {
    const float *x = j->x + (size_t)i * j->dim;
    float ms = j->k->sumsq(x, j->dim) / (float)j->dim;
    j->k->norm_mul(j->out + (size_t)i * j->dim, x, 1.0f / sqrtf(ms + j->eps), j->w, j->dim);
  }
}

static bl_status cpu_rmsnorm(bk_backend *be, float *out, const float *x, const float *w, int32_t n,
                             int32_t dim, float eps) {
  cpu_ctx *c = be->ctx;
  cpu_norm_job j = {.k = c->k, .out = out, .x = x, .w = w, .dim = dim, .eps = eps};
  cpu_pool_for(c->pool, n, cpu_grain(dim), cpu_rmsnorm_run, &j);
  return BL_OK;
}

/* ---- silu_mul, add ---------------------------------------------------- */

typedef struct cpu_ew_job {
  const cpu_kern *k;
  float *out;
  const float *a, *b;
} cpu_ew_job;

static void cpu_silu_mul_run(void *arg, int64_t i0, int64_t i1, int tid) {
  cpu_ew_job *j = arg;
  j->k->silu_mul(j->out + i0, j->a + i0, j->b + i0, (size_t)(i1 - i0));
}

static void cpu_add_run(void *arg, int64_t i0, int64_t i1, int tid) {
  cpu_ew_job *j = arg;
  j->k->add(j->out + i0, j->a + i0, (size_t)(i1 - i0));
}

static bl_status cpu_silu_mul(bk_backend *be, float *out, const float *gate, const float *up,
                              size_t n) {
  cpu_ctx *c = be->ctx;
  cpu_ew_job j = {.k = c->k, .out = out, .a = gate, .b = up};
  cpu_pool_for(c->pool, (int64_t)n, CPU_MIN_WORK, cpu_silu_mul_run, &j);
  return BL_OK;
}

static bl_status cpu_add(bk_backend *be, float *x, const float *y, size_t n) {
  cpu_ctx *c = be->ctx;
  cpu_ew_job j = {.k = c->k, .out = x, .a = y};
  cpu_pool_for(c->pool, (int64_t)n, CPU_MIN_WORK, cpu_add_run, &j);
  return BL_OK;
}

/* ---- create / destroy ------------------------------------------------- */

static bl_status cpu_pick_isa(const cpu_kern **out, bl_err *err) {
  const cpu_kern *avx2 = cpu_kern_avx2();
  const char *env = getenv("BALLAST_CPU_ISA");
  if (!env || !*env) {
    *out = avx2 ? avx2 : cpu_kern_scalar();
    return BL_OK;
  }
  if (strcmp(env, "scalar") == 0) {
    *out = cpu_kern_scalar();
    return BL_OK;
  }
  if (strcmp(env, "avx2") == 0) {
    if (!avx2)
      return bl_fail(err, BL_EUNSUPPORTED,
                     "cpu: BALLAST_CPU_ISA=avx2 but this CPU or build lacks AVX2/FMA/F16C");
    *out = avx2;
    return BL_OK;
  }
  return bl_fail(err, BL_EINVAL, "cpu: BALLAST_CPU_ISA=%s: expected scalar or avx2", env);
}

static int cpu_online_cores(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static void cpu_destroy(bk_backend *be) {
  if (!be) return;
  cpu_ctx *c = be->ctx;
  if (c) {
    cpu_pool_destroy(c->pool);
    cpu_buf_free(&c->mm_x);
    cpu_buf_free(&c->mm_xs);
    cpu_buf_free(&c->thr);
    free(c);
  }
  free(be);
}

bl_status bk_cpu_create(int n_threads, bk_backend **out, bl_err *err) {
  *out = NULL;
  if (n_threads < 0) return bl_fail(err, BL_EINVAL, "cpu: thread count %d < 0", n_threads);
  const cpu_kern *k = NULL;
  bl_status st = cpu_pick_isa(&k, err);
  if (st != BL_OK) return st;
  bk_backend *be = calloc(1, sizeof *be);
  cpu_ctx *c = calloc(1, sizeof *c);
  if (!be || !c) {
    free(be);
    free(c);
    return bl_fail(err, BL_ENOMEM, "cpu: out of memory creating the backend");
  }
  be->ctx = c;
  c->k = k;
  c->n_threads = n_threads ? n_threads : cpu_online_cores();
  st = cpu_pool_create(c->n_threads, &c->pool, err);
  if (st != BL_OK) {
    cpu_destroy(be);
    return st;
  }
  snprintf(c->name, sizeof c->name, "cpu(%s)", k->name);
  be->name = c->name;
  be->destroy = cpu_destroy;
  be->alloc = cpu_alloc;
  be->free = cpu_free;
  be->upload = cpu_upload;
  be->download = cpu_upload; /* host to host either way */
  be->copy = cpu_copy;
  be->memset0 = cpu_memset0;
  be->sync = cpu_sync;
  be->weight_prepare = NULL; /* kernels read the canonical layout in place */
  be->weight_release = NULL;
  be->embed = cpu_embed;
  be->rmsnorm = cpu_rmsnorm;
  be->qk_norm_rope = cpu_qk_norm_rope;
  be->matmul = cpu_matmul;
  be->silu_mul = cpu_silu_mul;
  be->add = cpu_add;
  be->kv_write = cpu_kv_write;
  be->attention = cpu_attention;
  be->device_info = cpu_device_info;
  *out = be;
  return BL_OK;
}
