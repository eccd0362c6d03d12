/* The host communicator (bk_comm.h) and the choice between it and NCCL. */
#include "bk_comm.h"

#include <stdio.h>
#include <stdlib.h>

#include "bl_log.h"

typedef struct host_ctx {
  float *sum, *tmp; /* host [cap] each */
  size_t cap;
} host_ctx;

static bl_status host_fail(bk_comm *c, int rank, const char *what, bl_status st) {
  const bk_backend *be = c->bes[rank];
  const char *why = be->last_error ? be->last_error(be) : NULL;
  snprintf(c->last_err, sizeof c->last_err, "all-reduce: %s on rank %d (%s)%s%s", what, rank,
           be->name, why && *why ? ": " : "", why && *why ? why : "");
  return st;
}

static bl_status host_all_reduce(bk_comm *c, float *const *bufs, size_t count) {
  host_ctx *h = c->ctx;
  if (c->n == 1) return BL_OK;
  if (count > h->cap) {
    float *s = malloc(count * sizeof *s), *t = malloc(count * sizeof *t);
    if (!s || !t) {
      free(s);
      free(t);
      snprintf(c->last_err, sizeof c->last_err, "all-reduce: out of memory for %zu floats", count);
      return BL_ENOMEM;
    }
    free(h->sum);
    free(h->tmp);
    h->sum = s;
    h->tmp = t;
    h->cap = count;
  }
  size_t bytes = count * sizeof(float);
  bl_status st;
  if ((st = c->bes[0]->download(c->bes[0], h->sum, bufs[0], bytes)))
    return host_fail(c, 0, "download", st);
  for (int r = 1; r < c->n; r++) {
    if ((st = c->bes[r]->download(c->bes[r], h->tmp, bufs[r], bytes)))
      return host_fail(c, r, "download", st);
    for (size_t i = 0; i < count; i++)
      h->sum[i] += h->tmp[i];
  }
  for (int r = 0; r < c->n; r++)
    if ((st = c->bes[r]->upload(c->bes[r], bufs[r], h->sum, bytes)))
      return host_fail(c, r, "upload", st);
  return BL_OK;
}

static void host_destroy(bk_comm *c) {
  host_ctx *h = c->ctx;
  free(h->sum);
  free(h->tmp);
  free(h);
  free(c);
}

static bl_status check_ranks(bk_backend *const *bes, int n, bl_err *err) {
  if (n < 1 || n > BK_COMM_MAX)
    return bl_fail(err, BL_EINVAL, "communicator: %d ranks (1..%d)", n, BK_COMM_MAX);
  for (int i = 0; i < n; i++)
    if (!bes[i]) return bl_fail(err, BL_EINVAL, "communicator: rank %d has no backend", i);
  return BL_OK;
}

bl_status bk_comm_host_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err) {
  *out = NULL;
  bl_status st = check_ranks(bes, n, err);
  if (st) return st;
  bk_comm *c = calloc(1, sizeof *c);
  host_ctx *h = calloc(1, sizeof *h);
  if (!c || !h) {
    free(c);
    free(h);
    return bl_fail(err, BL_ENOMEM, "communicator: out of memory");
  }
  c->name = "host";
  c->n = n;
  for (int i = 0; i < n; i++)
    c->bes[i] = bes[i];
  c->ctx = h;
  c->all_reduce = host_all_reduce;
  c->destroy = host_destroy;
  *out = c;
  return BL_OK;
}

bl_status bk_comm_create(bk_backend *const *bes, int n, bk_comm **out, bl_err *err) {
  bl_status st = check_ranks(bes, n, err);
  if (st) return st;
  if (n > 1) {
    bl_err why = {0};
    st = bk_comm_nccl_create(bes, n, out, &why);
    if (st == BL_OK) return BL_OK;
    /* Unsupported is the normal case off NCCL; anything else deserves a word. */
    if (st != BL_EUNSUPPORTED) bl_log(BL_LOG_WARN, "%s; summing through the host instead", why.msg);
  }
  return bk_comm_host_create(bes, n, out, err);
}
