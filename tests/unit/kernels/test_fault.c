/* The fault-injecting backend (kernels/bk_fault.h): spec parsing and its
 * errors, the N-th call of the named op failing, the device error sticking
 * to every op after it (and nothing reaching the inner backend), the
 * one-shot kinds, optional slots, last_error, and ownership of the inner
 * backend. The inner backend is the null backend with counting ops. */
#include <stdio.h>
#include <string.h>

#include "bk_fault.h"
#include "t.h"

/* ---- a counting inner backend ---------------------------------------- */

typedef struct counts {
  int matmul, add, upload, sync, prepare, release, destroyed;
} counts;

static counts g_counts;

static bl_status c_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n) {
  g_counts.matmul++;
  return BL_OK;
}
static bl_status c_add(bk_backend *be, float *x, const float *y, size_t n) {
  g_counts.add++;
  return BL_OK;
}
static bl_status c_upload(bk_backend *be, void *dst, const void *src, size_t bytes) {
  g_counts.upload++;
  memcpy(dst, src, bytes);
  return BL_OK;
}
static bl_status c_sync(bk_backend *be) {
  g_counts.sync++;
  return BL_OK;
}
static bl_status c_prepare(bk_backend *be, bk_weight *w) {
  g_counts.prepare++;
  return BL_OK;
}
static void c_release(bk_backend *be, bk_weight *w) { g_counts.release++; }

static void (*null_destroy)(bk_backend *be);
static void c_destroy(bk_backend *be) {
  g_counts.destroyed++;
  null_destroy(be);
}

static bk_backend *inner(bool optional) {
  memset(&g_counts, 0, sizeof g_counts);
  bk_backend *be = NULL;
  T_CHECK(bk_null_create(&be, NULL) == BL_OK);
  if (!be) return NULL;
  null_destroy = be->destroy;
  be->destroy = c_destroy;
  be->matmul = c_matmul;
  be->add = c_add;
  be->upload = c_upload;
  be->sync = c_sync;
  if (optional) {
    be->weight_prepare = c_prepare;
    be->weight_release = c_release;
  }
  return be;
}

/* ---- parsing ---------------------------------------------------------- */

static void test_parse(void) {
  bk_fault_spec s;
  bl_err err = {0};
  T_CHECK(bk_fault_parse("matmul:200", &s, &err) == BL_OK);
  T_CHECK(!strcmp(bk_fault_op_name(s.op), "matmul") && s.n == 200 && s.status == BL_EDEVICE);
  T_CHECK(bk_fault_parse("attention:1:inval", &s, NULL) == BL_OK);
  T_CHECK(!strcmp(bk_fault_op_name(s.op), "attention") && s.n == 1 && s.status == BL_EINVAL);
  T_CHECK(bk_fault_parse("kv_write:7:nomem", &s, NULL) == BL_OK && s.status == BL_ENOMEM);
  T_CHECK(bk_fault_parse("sync:3:device", &s, NULL) == BL_OK && s.status == BL_EDEVICE);
  for (int i = 0; bk_fault_op_name(i); i++) { /* every op name parses */
    char spec[64];
    snprintf(spec, sizeof spec, "%s:1", bk_fault_op_name(i));
    T_CHECKF(bk_fault_parse(spec, &s, NULL) == BL_OK && s.op == i, "%s", spec);
  }
  T_CHECK(bk_fault_op_name(-1) == NULL);
  struct {
    const char *spec, *says;
  } bad[] = {
      {"", "empty"},
      {NULL, "empty"},
      {"matmul", "expected OP:N"},
      {"bogus:1", "unknown op 'bogus'"},
      {"alloc:1", "unknown op 'alloc'"}, /* alloc cannot return a status */
      {":5", "unknown op ''"},
      {"matmul:0", "at least 1"},
      {"matmul:-3", "not a number"},
      {"matmul:", "not a number"},
      {"matmul:abc", "not a number"},
      {"matmul:5x", "not a number"},
      {"matmul:99999999999999999999999", "not a number"},
      {"matmul:5:weird", "unknown kind 'weird'"},
      {"matmul:5:", "unknown kind ''"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err = (bl_err){0};
    bl_status st = bk_fault_parse(bad[i].spec, &s, &err);
    T_CHECKF(st == BL_EINVAL && strstr(err.msg, bad[i].says), "'%s': %s", bad[i].spec, err.msg);
  }
  /* the unknown-op error lists the ops */
  err = (bl_err){0};
  bk_fault_parse("matmull:1", &s, &err);
  T_CHECKF(strstr(err.msg, "matmul, silu_mul") && strstr(err.msg, "attention"), "%s", err.msg);
}

/* ---- the N-th call, then sticky --------------------------------------- */

static void test_sticky(void) {
  bk_backend *in = inner(false), *be = NULL;
  bl_err err = {0};
  T_CHECKF(bk_fault_wrap(in, "matmul:3", &be, &err) == BL_OK, "%s", err.msg);
  if (!be) return;
  T_CHECK(!strcmp(be->name, in->name)); /* logs read as the real device */
  T_CHECK(be->weight_prepare == NULL && be->weight_release == NULL); /* optional stays optional */
  float buf[4] = {1, 2, 3, 4}, y[4];
  bk_weight w = {.fmt = BK_WF_F16, .rows = 2, .cols = 2};
  /* other ops do not count toward matmul */
  for (int i = 0; i < 5; i++) {
    T_CHECK(be->add(be, buf, buf, 4) == BL_OK);
    T_CHECK(be->upload(be, y, buf, sizeof buf) == BL_OK);
  }
  T_CHECK(be->matmul(be, y, buf, &w, 1) == BL_OK);
  T_CHECK(be->matmul(be, y, buf, &w, 1) == BL_OK);
  T_CHECK(!bk_fault_fired(be) && !strcmp(be->last_error(be), ""));
  T_CHECK(g_counts.matmul == 2 && g_counts.add == 5 && g_counts.upload == 5);
  T_CHECK(be->matmul(be, y, buf, &w, 1) == BL_EDEVICE); /* the 3rd */
  T_CHECK(g_counts.matmul == 2);                        /* never reached the device */
  T_CHECK(bk_fault_fired(be));
  T_CHECKF(!strcmp(be->last_error(be), "null: injected device error in matmul (call 3)"), "%s",
           be->last_error(be));
  /* sticky: every op fails from now on, none is forwarded */
  T_CHECK(be->matmul(be, y, buf, &w, 1) == BL_EDEVICE);
  T_CHECK(be->add(be, buf, buf, 4) == BL_EDEVICE);
  T_CHECK(be->upload(be, y, buf, sizeof buf) == BL_EDEVICE);
  T_CHECK(be->download(be, y, buf, sizeof buf) == BL_EDEVICE);
  T_CHECK(be->copy(be, y, buf, sizeof buf) == BL_EDEVICE);
  T_CHECK(be->memset0(be, y, sizeof y) == BL_EDEVICE);
  T_CHECK(be->sync(be) == BL_EDEVICE);
  T_CHECK(be->embed(be, y, &w, NULL, 0) == BL_EDEVICE);
  T_CHECK(be->rmsnorm(be, y, buf, buf, 1, 4, 1e-6f) == BL_EDEVICE);
  T_CHECK(be->qk_norm_rope(be, y, y, NULL, NULL, NULL, 0, NULL) == BL_EDEVICE);
  T_CHECK(be->silu_mul(be, y, buf, buf, 4) == BL_EDEVICE);
  T_CHECK(be->kv_write(be, NULL, 0, NULL, NULL, NULL, 0) == BL_EDEVICE);
  T_CHECK(be->attention(be, y, buf, NULL, 0, NULL, NULL) == BL_EDEVICE);
  T_CHECK(g_counts.matmul == 2 && g_counts.add == 5 && g_counts.upload == 5 && g_counts.sync == 0);
  T_CHECK(be->alloc(be, 64) == NULL); /* a broken device allocates nothing */
  T_CHECK(!strcmp(be->last_error(be), "null: injected device error in matmul (call 3)"));
  bk_destroy(be); /* destroys the inner backend too */
  T_CHECK(g_counts.destroyed == 1);
}

/* ---- one-shot kinds, optional slots, ownership ------------------------ */

static void test_one_shot(void) {
  bk_backend *in = inner(true), *be = NULL;
  bl_err err = {0};
  T_CHECKF(bk_fault_wrap(in, "add:2:inval", &be, &err) == BL_OK, "%s", err.msg);
  if (!be) return;
  float x[2] = {0};
  T_CHECK(be->add(be, x, x, 2) == BL_OK);
  T_CHECK(be->add(be, x, x, 2) == BL_EINVAL);
  T_CHECK(be->add(be, x, x, 2) == BL_OK); /* not sticky */
  T_CHECK(be->sync(be) == BL_OK);
  T_CHECK(g_counts.add == 2 && g_counts.sync == 1);
  T_CHECK(bk_fault_fired(be));
  T_CHECKF(!strcmp(be->last_error(be), "null: injected invalid argument in add (call 2)"), "%s",
           be->last_error(be));
  void *p = be->alloc(be, 16);
  T_CHECK(p != NULL);
  be->free(be, p);
  bk_weight w = {0};
  T_CHECK(be->weight_prepare && be->weight_release);
  T_CHECK(be->weight_prepare(be, &w) == BL_OK && g_counts.prepare == 1);
  be->weight_release(be, &w);
  T_CHECK(g_counts.release == 1);
  bk_destroy(be);
  T_CHECK(g_counts.destroyed == 1);

  /* weight_prepare counts like any op (model loading is where it runs) */
  in = inner(true);
  T_CHECK(bk_fault_wrap(in, "weight_prepare:2:nomem", &be, NULL) == BL_OK);
  T_CHECK(be->weight_prepare(be, &w) == BL_OK);
  T_CHECK(be->weight_prepare(be, &w) == BL_ENOMEM && g_counts.prepare == 1);
  bk_destroy(be);

  /* a bad spec: nothing made, the inner backend is still the caller's */
  in = inner(false);
  be = (bk_backend *)&err; /* overwritten with NULL */
  err = (bl_err){0};
  T_CHECK(bk_fault_wrap(in, "matmul:0", &be, &err) == BL_EINVAL && be == NULL);
  T_CHECK(strstr(err.msg, "matmul:0") != NULL);
  T_CHECK(g_counts.destroyed == 0);
  T_CHECK(!bk_fault_fired(in)); /* not a wrapper */
  bk_destroy(in);
  T_CHECK(g_counts.destroyed == 1);
}

int main(void) {
  test_parse();
  test_sticky();
  test_one_shot();
  return T_DONE();
}
