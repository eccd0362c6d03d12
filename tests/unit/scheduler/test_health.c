/* A pool's health (scheduler.h, "Health") on the tiny Qwen3 over a CPU
 * backend wrapped with bk_fault (kernels/bk_fault.h):
 *  - a device error fails every request of the pool, running and waiting,
 *    with "NAME pool is unhealthy after a device error: <the backend's
 *    message>", frees their KV blocks, and the pool stays unhealthy:
 *    sched_submit refuses (BL_EDEVICE), a request moved in fails at the
 *    next step, the stats say healthy false with the error, on_unhealthy
 *    runs once;
 *  - a device error met while planning (a copy-on-write) does the same;
 *  - the same with the pool's thread, which stays up and keeps answering
 *    (submits refused, cancels, stats, stop);
 *  - a failure that is not the device's (BL_EINVAL) fails that step's
 *    requests only: the pool stays healthy and serves the next ones.
 * usage: test_health TESTS_DATA_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bk_fault.h"
#include "scheduler.h"
#include "t.h"

typedef struct rec {
  int n, finals;
  sched_finish fin;
  char error[SCHED_ERROR_MAX];
} rec;

static void on_event(const sched_event *ev, void *user) {
  rec *r = user;
  if (ev->finish == SCHED_RUNNING) {
    r->n++;
    return;
  }
  r->finals++;
  r->fin = ev->finish;
  snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "");
}

typedef struct world {
  bk_backend *be;
  model *m;
  sched_pool *p;
  int unhealthy_calls;
} world;

static void count_unhealthy(sched_pool *p, void *user) { ((world *)user)->unhealthy_calls++; }

/* The tiny Qwen3 on a 2-thread CPU backend wrapped with fault spec; a pool
 * of at most 2 running sequences. */
static bool world_init(world *w, const char *dir, const char *spec) {
  memset(w, 0, sizeof *w);
  bl_err err = {0};
  bk_backend *cpu = NULL;
  T_CHECKF(bk_cpu_create(2, &cpu, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(cpu && bk_fault_wrap(cpu, spec, &w->be, &err) == BL_OK, "%s", err.msg);
  if (!w->be) {
    bk_destroy(cpu);
    return false;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/tiny-qwen3", dir);
  model_load_opts o = {0};
  T_CHECKF(model_load(path, &o, w->be, &w->m, &err) == BL_OK, "%s", err.msg);
  if (!w->m) return false;
  sched_pool_cfg c = {.name = "test",
                      .m = w->m,
                      .n_blocks = 32,
                      .max_num_seqs = 2,
                      .max_batched_tokens = 128,
                      .prefix_cache = true,
                      .on_unhealthy = count_unhealthy,
                      .health_user = w};
  T_CHECKF(sched_pool_create(&c, &w->p, &err) == BL_OK, "%s", err.msg);
  return w->p != NULL;
}

static void world_free(world *w) {
  sched_pool_destroy(w->p);
  model_free(w->m);
  bk_destroy(w->be);
}

static const int32_t PROMPT[6] = {5, 6, 7, 8, 9, 10};

static bl_status submit(sched_pool *p, uint64_t id, int32_t max_tokens, rec *r, bl_err *err) {
  memset(r, 0, sizeof *r);
  sched_req q = {.id = id,
                 .prompt = PROMPT,
                 .n_prompt = 6,
                 .max_tokens = max_tokens,
                 .ignore_eos = true,
                 .on_event = on_event,
                 .user = r};
  return sched_submit(p, &q, err);
}

/* Does msg say the pool's error, with the backend's own message ("cpu(avx2): ...")? */
static bool says(const char *msg, const char *pool, const char *cause) {
  char head[96];
  snprintf(head, sizeof head, "%s pool is unhealthy after a device error: cpu", pool);
  return !strncmp(msg, head, strlen(head)) && strstr(msg, cause);
}

#define CAUSE "injected device error in embed (call 4)"

/* embed runs once per forward pass: the 4th step's fails. */
static void test_device_error(const char *dir) {
  world w;
  if (!world_init(&w, dir, "embed:4")) {
    world_free(&w);
    return;
  }
  rec r[3];
  bl_err err = {0};
  for (int i = 0; i < 3; i++)
    T_CHECKF(submit(w.p, (uint64_t)i, 50, &r[i], &err) == BL_OK, "%s", err.msg);
  bool idle;
  for (int s = 0; s < 3; s++)
    T_CHECKF(sched_pool_step(w.p, &idle, &err) == BL_OK, "step %d: %s", s, err.msg);
  sched_stats st;
  sched_pool_stats(w.p, &st);
  T_CHECK(st.healthy && !st.error[0] && st.running == 2 && st.waiting == 1);
  T_CHECK(r[0].n == 3 && r[1].n == 3 && r[2].n == 0 && !r[0].finals);
  err = (bl_err){0};
  T_CHECK(sched_pool_step(w.p, &idle, &err) == BL_EDEVICE);
  T_CHECKF(strstr(err.msg, "injected device error in embed (call 4)"), "%s", err.msg);
  /* every request, running or waiting, ends ERROR once, with the message */
  for (int i = 0; i < 3; i++) {
    T_CHECKF(r[i].finals == 1 && r[i].fin == SCHED_FIN_ERROR, "request %d: %d finals, %s", i,
             r[i].finals, sched_finish_name(r[i].fin));
    T_CHECKF(says(r[i].error, "test", CAUSE), "request %d: %s", i, r[i].error);
  }
  T_CHECK(r[0].n == 3 && r[1].n == 3 && r[2].n == 0);
  sched_pool_stats(w.p, &st);
  T_CHECK(!st.healthy && says(st.error, "test", CAUSE));
  T_CHECK(st.running == 0 && st.waiting == 0 && st.free_blocks == 32 && st.finished == 3);
  char why[SCHED_ERROR_MAX];
  T_CHECK(!sched_pool_healthy(w.p, why, sizeof why) && !strcmp(why, st.error));
  T_CHECK(w.unhealthy_calls == 1);
  /* new submissions are refused at once, with no event */
  rec late;
  err = (bl_err){0};
  T_CHECK(submit(w.p, 9, 5, &late, &err) == BL_EDEVICE);
  T_CHECKF(says(err.msg, "test", CAUSE), "%s", err.msg);
  /* one that reaches it anyway (a move from a healthy pool, with a model on
   * a backend of its own) fails at the next step */
  world hw;
  T_CHECK(world_init(&hw, dir, "embed:1000000"));
  sched_pool *h = hw.p;
  T_CHECK(submit(h, 10, 5, &late, NULL) == BL_OK);
  sched_move(h, 10, w.p);
  T_CHECK(sched_pool_step(h, &idle, NULL) == BL_OK && idle); /* hands it over */
  T_CHECK(sched_pool_step(w.p, &idle, NULL) == BL_OK && idle);
  T_CHECKF(late.finals == 1 && late.fin == SCHED_FIN_ERROR && says(late.error, "test", CAUSE),
           "moved in: %d finals, %s: %s", late.finals, sched_finish_name(late.fin), late.error);
  world_free(&hw);
  /* further steps do nothing and say nothing failed */
  T_CHECK(sched_pool_step(w.p, &idle, &err) == BL_OK && idle);
  T_CHECK(w.unhealthy_calls == 1);
  world_free(&w);
}

static void wait_finished(sched_pool *p, uint64_t n) {
  sched_stats st;
  double t0 = sched_now();
  do {
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
    sched_pool_stats(p, &st);
  } while (st.finished < n && sched_now() - t0 < 60);
  T_CHECKF(st.finished >= n, "%llu of %llu finished", (unsigned long long)st.finished,
           (unsigned long long)n);
}

/* A device error while planning: the copy-on-write of a shared last block
 * (a prompt cached whole) fails before any forward pass. copy runs once per
 * output row in a forward pass, then 2 per layer in a block copy. */
static void test_cow_device_error(const char *dir) {
  world w;
  if (!world_init(&w, dir, "copy:2")) {
    world_free(&w);
    return;
  }
  int32_t prompt[32];
  for (int i = 0; i < 32; i++)
    prompt[i] = 5 + i;
  rec a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  sched_req q = {.id = 1,
                 .prompt = prompt,
                 .n_prompt = 32,
                 .max_tokens = 1,
                 .ignore_eos = true,
                 .on_event = on_event,
                 .user = &a};
  T_CHECK(sched_submit(w.p, &q, NULL) == BL_OK);
  bool idle = false;
  bl_err err = {0};
  while (!idle)
    T_CHECKF(sched_pool_step(w.p, &idle, &err) == BL_OK, "%s", err.msg);
  T_CHECK(a.finals == 1 && a.fin == SCHED_FIN_LENGTH); /* its 2 blocks stay cached */
  q.id = 2;
  q.user = &b;
  T_CHECK(sched_submit(w.p, &q, NULL) == BL_OK);
  T_CHECK(sched_pool_step(w.p, &idle, &err) == BL_EDEVICE);
  T_CHECKF(strstr(err.msg, "copy-on-write") && strstr(err.msg, "injected device error in copy"),
           "%s", err.msg);
  T_CHECKF(b.finals == 1 && b.fin == SCHED_FIN_ERROR && b.n == 0 &&
               says(b.error, "test", "injected device error in copy (call 2)"),
           "%s: %s", sched_finish_name(b.fin), b.error);
  sched_stats st;
  sched_pool_stats(w.p, &st);
  T_CHECK(!st.healthy && st.free_blocks == 32 && w.unhealthy_calls == 1);
  world_free(&w);
}

/* The pool's thread survives: matmul fails in the 4th step (3 layers x 7 +
 * lm_head = 22 a step) and the thread goes on answering. */
static void test_thread(const char *dir) {
  world w;
  if (!world_init(&w, dir, "matmul:80")) {
    world_free(&w);
    return;
  }
  T_CHECK(sched_pool_start(w.p, NULL) == BL_OK);
  rec r[3];
  bl_err err = {0};
  for (int i = 0; i < 3; i++)
    T_CHECKF(submit(w.p, (uint64_t)i, 200, &r[i], &err) == BL_OK, "%s", err.msg);
  wait_finished(w.p, 3);
  const char *want = "injected device error in matmul (call 80)";
  for (int i = 0; i < 3; i++)
    T_CHECKF(r[i].finals == 1 && r[i].fin == SCHED_FIN_ERROR && says(r[i].error, "test", want),
             "request %d: %s %s", i, sched_finish_name(r[i].fin), r[i].error);
  T_CHECK(sched_pool_threaded(w.p)); /* still up */
  sched_stats st;
  sched_pool_stats(w.p, &st);
  T_CHECK(!st.healthy && says(st.error, "test", want) && st.free_blocks == 32);
  rec late;
  for (int i = 0; i < 20; i++) { /* refused every time, the thread answering the rest */
    err = (bl_err){0};
    T_CHECK(submit(w.p, 100 + (uint64_t)i, 5, &late, &err) == BL_EDEVICE && strstr(err.msg, want));
    sched_cancel(w.p, 100 + (uint64_t)i);
  }
  T_CHECK(late.finals == 0 && w.unhealthy_calls == 1);
  sched_pool_stop(w.p);
  world_free(&w);
}

/* Not a device error: that step's requests fail, the pool goes on. */
static void test_other_error(const char *dir) {
  world w;
  if (!world_init(&w, dir, "embed:2:inval")) {
    world_free(&w);
    return;
  }
  rec r[3];
  for (int i = 0; i < 3; i++)
    T_CHECK(submit(w.p, (uint64_t)i, 8, &r[i], NULL) == BL_OK);
  bool idle = false;
  bl_err err = {0};
  T_CHECK(sched_pool_step(w.p, &idle, &err) == BL_OK);
  T_CHECK(sched_pool_step(w.p, &idle, &err) == BL_EINVAL);
  T_CHECKF(strstr(err.msg, "): injected invalid argument in embed (call 2)"), "%s", err.msg);
  for (int i = 0; i < 2; i++) /* the two in that step */
    T_CHECKF(r[i].finals == 1 && r[i].fin == SCHED_FIN_ERROR &&
                 strstr(r[i].error, "injected invalid argument") &&
                 !strstr(r[i].error, "unhealthy"),
             "request %d: %s %s", i, sched_finish_name(r[i].fin), r[i].error);
  for (int i = 0; i < 100 && !idle; i++)
    T_CHECKF(sched_pool_step(w.p, &idle, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(r[2].finals == 1 && r[2].fin == SCHED_FIN_LENGTH && r[2].n == 8, "waiting one: %s, %d",
           sched_finish_name(r[2].fin), r[2].n);
  sched_stats st;
  sched_pool_stats(w.p, &st);
  T_CHECK(st.healthy && !st.error[0] && st.free_blocks == 32 && w.unhealthy_calls == 0);
  rec again;
  T_CHECK(submit(w.p, 7, 4, &again, NULL) == BL_OK);
  for (idle = false; !idle;)
    T_CHECK(sched_pool_step(w.p, &idle, NULL) == BL_OK);
  T_CHECK(again.finals == 1 && again.fin == SCHED_FIN_LENGTH && again.n == 4);
  world_free(&w);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_health TESTS_DATA_DIR\n");
    return 2;
  }
  test_device_error(argv[1]);
  test_cow_device_error(argv[1]);
  test_thread(argv[1]);
  test_other_error(argv[1]);
  return T_DONE();
}
