/* The fault-injecting backend wrapper (bk_fault.h). Each op counts its call
 * and either forwards to the inner backend or returns the injected status.
 * Counters and the sticky flag are atomics: a pool's backend is driven by
 * one thread at a time, but loading and stepping may be different threads. */
#include "bk_fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
  OP_UPLOAD,
  OP_DOWNLOAD,
  OP_COPY,
  OP_MEMSET0,
  OP_SYNC,
  OP_WEIGHT_PREPARE,
  OP_EMBED,
  OP_RMSNORM,
  OP_QK_NORM_ROPE,
  OP_MATMUL,
  OP_SILU_MUL,
  OP_ADD,
  OP_KV_WRITE,
  OP_ATTENTION,
  N_OPS
};

static const char *const op_names[N_OPS] = {
    "upload",  "download",     "copy",   "memset0",  "sync", "weight_prepare", "embed",
    "rmsnorm", "qk_norm_rope", "matmul", "silu_mul", "add",  "kv_write",       "attention"};

const char *bk_fault_op_name(int i) { return i >= 0 && i < N_OPS ? op_names[i] : NULL; }

typedef struct fault {
  bk_backend be; /* the wrapper; be.ctx points here */
  bk_backend *inner;
  bk_fault_spec spec;
  atomic_uint_fast64_t calls[N_OPS];
  atomic_bool fired;    /* the sticky device error has happened */
  atomic_bool injected; /* msg is set */
  char msg[160];
} fault;

#define F(be) ((fault *)(be)->ctx)

bl_status bk_fault_parse(const char *spec, bk_fault_spec *out, bl_err *err) {
  const char *want = "expected OP:N[:device|inval|nomem], e.g. matmul:200";
  if (!spec || !*spec) return bl_fail(err, BL_EINVAL, "fault spec is empty: %s", want);
  const char *c1 = strchr(spec, ':');
  if (!c1) return bl_fail(err, BL_EINVAL, "fault spec '%s': %s", spec, want);
  size_t op_len = (size_t)(c1 - spec);
  int op = -1;
  for (int i = 0; i < N_OPS; i++)
    if (strlen(op_names[i]) == op_len && !strncmp(spec, op_names[i], op_len)) op = i;
  if (op < 0) {
    char ops[256] = "";
    for (int i = 0; i < N_OPS; i++)
      snprintf(ops + strlen(ops), sizeof ops - strlen(ops), "%s%s", i ? ", " : "", op_names[i]);
    return bl_fail(err, BL_EINVAL, "fault spec '%s': unknown op '%.*s' (ops: %s)", spec,
                   (int)op_len, spec, ops);
  }
  const char *num = c1 + 1;
  char *end = NULL;
  errno = 0;
  unsigned long long n = *num >= '0' && *num <= '9' ? strtoull(num, &end, 10) : 0;
  if (!end || end == num || errno || (*end && *end != ':'))
    return bl_fail(err, BL_EINVAL, "fault spec '%s': N is not a number: %s", spec, want);
  if (n < 1) return bl_fail(err, BL_EINVAL, "fault spec '%s': N must be at least 1", spec);
  bl_status status = BL_EDEVICE;
  if (*end == ':') {
    const char *kind = end + 1;
    if (!strcmp(kind, "device"))
      status = BL_EDEVICE;
    else if (!strcmp(kind, "inval"))
      status = BL_EINVAL;
    else if (!strcmp(kind, "nomem"))
      status = BL_ENOMEM;
    else
      return bl_fail(err, BL_EINVAL, "fault spec '%s': unknown kind '%s' (device, inval, nomem)",
                     spec, kind);
  }
  *out = (bk_fault_spec){.op = op, .n = (uint64_t)n, .status = status};
  return BL_OK;
}

/* Count a call of op: BL_OK to forward it, else the status to return. */
static bl_status gate(fault *f, int op) {
  if (atomic_load(&f->fired)) return BL_EDEVICE;
  uint64_t n = atomic_fetch_add(&f->calls[op], 1) + 1;
  if (op != f->spec.op || n != f->spec.n) return BL_OK;
  const char *what = f->spec.status == BL_EDEVICE ? "device error" : bl_status_str(f->spec.status);
  snprintf(f->msg, sizeof f->msg, "%s: injected %s in %s (call %llu)", f->inner->name, what,
           op_names[op], (unsigned long long)n);
  atomic_store(&f->injected, true);
  if (f->spec.status == BL_EDEVICE) atomic_store(&f->fired, true);
  return f->spec.status;
}

#define GATE(be, op)                                                                               \
  do {                                                                                             \
    bl_status g_ = gate(F(be), op);                                                                \
    if (g_) return g_;                                                                             \
  } while (0)

static void fw_destroy(bk_backend *be) {
  bk_destroy(F(be)->inner);
  free(F(be));
}

static void *fw_alloc(bk_backend *be, size_t bytes) {
  if (atomic_load(&F(be)->fired)) return NULL;
  return F(be)->inner->alloc(F(be)->inner, bytes);
}

static void fw_free(bk_backend *be, void *p) { F(be)->inner->free(F(be)->inner, p); }

static bl_status fw_upload(bk_backend *be, void *dst, const void *src, size_t bytes) {
  GATE(be, OP_UPLOAD);
  return F(be)->inner->upload(F(be)->inner, dst, src, bytes);
}

static bl_status fw_download(bk_backend *be, void *dst, const void *src, size_t bytes) {
  GATE(be, OP_DOWNLOAD);
  return F(be)->inner->download(F(be)->inner, dst, src, bytes);
}

static bl_status fw_copy(bk_backend *be, void *dst, const void *src, size_t bytes) {
  GATE(be, OP_COPY);
  return F(be)->inner->copy(F(be)->inner, dst, src, bytes);
}

static bl_status fw_memset0(bk_backend *be, void *dst, size_t bytes) {
  GATE(be, OP_MEMSET0);
  return F(be)->inner->memset0(F(be)->inner, dst, bytes);
}

static bl_status fw_sync(bk_backend *be) {
  GATE(be, OP_SYNC);
  return F(be)->inner->sync(F(be)->inner);
}

static bl_status fw_weight_prepare(bk_backend *be, bk_weight *w) {
  GATE(be, OP_WEIGHT_PREPARE);
  return F(be)->inner->weight_prepare(F(be)->inner, w);
}

static void fw_weight_release(bk_backend *be, bk_weight *w) {
  F(be)->inner->weight_release(F(be)->inner, w);
}

static bl_status fw_embed(bk_backend *be, float *out, const bk_weight *t, const int32_t *ids,
                          int32_t n) {
  GATE(be, OP_EMBED);
  return F(be)->inner->embed(F(be)->inner, out, t, ids, n);
}

static bl_status fw_rmsnorm(bk_backend *be, float *out, const float *x, const float *w, int32_t n,
                            int32_t dim, float eps) {
  GATE(be, OP_RMSNORM);
  return F(be)->inner->rmsnorm(F(be)->inner, out, x, w, n, dim, eps);
}

static bl_status fw_qk_norm_rope(bk_backend *be, float *q, float *k, const float *qn,
                                 const float *kn, const int32_t *pos, int32_t n,
                                 const bk_heads *h) {
  GATE(be, OP_QK_NORM_ROPE);
  return F(be)->inner->qk_norm_rope(F(be)->inner, q, k, qn, kn, pos, n, h);
}

static bl_status fw_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w,
                           int32_t n) {
  GATE(be, OP_MATMUL);
  return F(be)->inner->matmul(F(be)->inner, y, x, w, n);
}

static bl_status fw_silu_mul(bk_backend *be, float *out, const float *g, const float *u, size_t n) {
  GATE(be, OP_SILU_MUL);
  return F(be)->inner->silu_mul(F(be)->inner, out, g, u, n);
}

static bl_status fw_add(bk_backend *be, float *x, const float *y, size_t n) {
  GATE(be, OP_ADD);
  return F(be)->inner->add(F(be)->inner, x, y, n);
}

static bl_status fw_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                             const float *v, const int32_t *slots, int32_t n) {
  GATE(be, OP_KV_WRITE);
  return F(be)->inner->kv_write(F(be)->inner, kv, layer, k, v, slots, n);
}

static bl_status fw_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                              int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  GATE(be, OP_ATTENTION);
  return F(be)->inner->attention(F(be)->inner, out, q, kv, layer, b, h);
}

static const char *fw_last_error(const bk_backend *be) {
  fault *f = F(be);
  if (atomic_load(&f->injected)) return f->msg;
  return f->inner->last_error ? f->inner->last_error(f->inner) : "";
}

/* A query, not an op: neither counted nor failed by the fault. */
static bl_status fw_device_info(const bk_backend *be, bk_device_info *out) {
  return F(be)->inner->device_info(F(be)->inner, out);
}

bl_status bk_fault_wrap(bk_backend *inner, const char *spec, bk_backend **out, bl_err *err) {
  *out = NULL;
  bk_fault_spec s;
  bl_status st = bk_fault_parse(spec, &s, err);
  if (st) return st;
  fault *f = calloc(1, sizeof *f);
  if (!f) return bl_fail(err, BL_ENOMEM, "fault backend: out of memory");
  f->inner = inner;
  f->spec = s;
  f->be = (bk_backend){.name = inner->name,
                       .ctx = f,
                       .destroy = fw_destroy,
                       .alloc = fw_alloc,
                       .free = fw_free,
                       .upload = fw_upload,
                       .download = fw_download,
                       .copy = fw_copy,
                       .memset0 = fw_memset0,
                       .sync = fw_sync,
                       /* optional slots stay optional */
                       .weight_prepare = inner->weight_prepare ? fw_weight_prepare : NULL,
                       .weight_release = inner->weight_release ? fw_weight_release : NULL,
                       .embed = fw_embed,
                       .rmsnorm = fw_rmsnorm,
                       .qk_norm_rope = fw_qk_norm_rope,
                       .matmul = fw_matmul,
                       .silu_mul = fw_silu_mul,
                       .add = fw_add,
                       .kv_write = fw_kv_write,
                       .attention = fw_attention,
                       .last_error = fw_last_error,
                       .device_info = inner->device_info ? fw_device_info : NULL};
  *out = &f->be;
  return BL_OK;
}

bool bk_fault_fired(const bk_backend *be) {
  return be && be->destroy == fw_destroy && atomic_load(&F(be)->injected);
}
