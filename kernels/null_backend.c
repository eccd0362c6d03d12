/* The null backend: host buffers and ops that do nothing. It lets the
 * scheduler run at full speed with no model math, so `ballast bench
 * --device null --concurrency ...` measures the scheduler's own cost per
 * step (planning, block tables, sampling, events). Logits come back as
 * whatever the buffer held (zeros at first), so generation is meaningless;
 * never use it to serve. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static void nb_destroy(bk_backend *be) { free(be); }
static void *nb_alloc(bk_backend *be, size_t bytes) { return calloc(1, bytes ? bytes : 1); }
static void nb_free(bk_backend *be, void *p) { free(p); }
static bl_status nb_move(bk_backend *be, void *dst, const void *src, size_t bytes) {
  memmove(dst, src, bytes);
  return BL_OK;
}
static bl_status nb_memset0(bk_backend *be, void *dst, size_t bytes) {
  memset(dst, 0, bytes);
  return BL_OK;
}
static bl_status nb_sync(bk_backend *be) { return BL_OK; }
static bl_status nb_embed(bk_backend *be, float *out, const bk_weight *t, const int32_t *ids,
                          int32_t n) {
  return BL_OK;
}
static bl_status nb_rmsnorm(bk_backend *be, float *out, const float *x, const float *w, int32_t n,
                            int32_t dim, float eps) {
  return BL_OK;
}
static bl_status nb_rope(bk_backend *be, float *q, float *k, const float *qn, const float *kn,
                         const int32_t *pos, int32_t n, const bk_heads *h) {
  return BL_OK;
}
static bl_status nb_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w,
                           int32_t n) {
  return BL_OK;
}
static bl_status nb_silu_mul(bk_backend *be, float *out, const float *g, const float *u, size_t n) {
  return BL_OK;
}
static bl_status nb_add(bk_backend *be, float *x, const float *y, size_t n) { return BL_OK; }
static bl_status nb_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                             const float *v, const int32_t *slots, int32_t n) {
  return BL_OK;
}
static bl_status nb_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                              int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  return BL_OK;
}

bl_status bk_null_create(bk_backend **out, bl_err *err) {
  bk_backend *be = calloc(1, sizeof *be);
  if (!be) return bl_fail(err, BL_ENOMEM, "null backend: out of memory");
  *be = (bk_backend){.name = "null",
                     .destroy = nb_destroy,
                     .alloc = nb_alloc,
                     .free = nb_free,
                     .upload = nb_move,
                     .download = nb_move,
                     .copy = nb_move,
                     .memset0 = nb_memset0,
                     .sync = nb_sync,
                     .embed = nb_embed,
                     .rmsnorm = nb_rmsnorm,
                     .qk_norm_rope = nb_rope,
                     .matmul = nb_matmul,
                     .silu_mul = nb_silu_mul,
                     .add = nb_add,
                     .kv_write = nb_kv_write,
                     .attention = nb_attention};
  *out = be;
  return BL_OK;
}
