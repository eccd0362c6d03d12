/* Data-parallel replicas behind the router (sched_router.h): the tiny
 * Qwen3 on one single-thread CPU backend per replica, the pools stepped by
 * hand, requests given as token ids under the direct policy.
 *  - a phase goes to the healthy replica with the least of the router's
 *    load, ties to the lowest index; the load drops as phases finish;
 *  - replicas of one model give the same greedy tokens, and events name
 *    the role, not the replica;
 *  - a device error on one replica fails only the requests it holds (with
 *    its label in the error); the others go on, and new requests go to the
 *    healthy ones; with none healthy a submit is refused (BL_EDEVICE);
 *  - the router refuses replica sets it cannot balance over;
 *  - sched_stats_add folds replica stats as scheduler.h says, and
 *    sched_router_stats folds a role's.
 * usage: test_replicas TESTS_DATA_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bk_fault.h"
#include "byte_tok.h"
#include "sched_router.h"

#define N_REP 3

typedef struct out {
  int tokens, finals;
  int32_t ids[64];
  sched_rfinish fin;
  char error[SCHED_ERROR_MAX];
  char pool[32];
} out;

static void on_ev(const sched_revent *ev, void *user) {
  out *o = user;
  if (ev->kind == SCHED_REV_TOKEN) {
    if (o->tokens < 64) o->ids[o->tokens] = ev->token;
    o->tokens++;
    snprintf(o->pool, sizeof o->pool, "%s", ev->pool);
  } else if (ev->kind == SCHED_REV_FINAL) {
    o->finals++;
    o->fin = ev->finish;
    snprintf(o->error, sizeof o->error, "%s", ev->error ? ev->error : "");
  }
}

typedef struct world {
  bk_backend *be[N_REP];
  model *m[N_REP];
  sched_pool *p[N_REP];
  int n;
  sched_router *r;
} world;

/* n executor replicas; faults[i]: NULL or a bk_fault spec for replica i. */
static bool world_init(world *w, const char *dir, int n, const char *const *faults) {
  memset(w, 0, sizeof *w);
  w->n = n;
  bl_err err = {0};
  char path[4096];
  snprintf(path, sizeof path, "%s/tiny-qwen3", dir);
  for (int i = 0; i < n; i++) {
    T_CHECKF(bk_cpu_create(1, &w->be[i], &err) == BL_OK, "%s", err.msg);
    if (!w->be[i]) return false;
    if (faults && faults[i]) {
      bk_backend *f = NULL;
      T_CHECKF(bk_fault_wrap(w->be[i], faults[i], &f, &err) == BL_OK, "%s", err.msg);
      if (!f) return false;
      w->be[i] = f;
    }
    model_load_opts o = {.precision = MODEL_PREC_W4};
    T_CHECKF(model_load(path, &o, w->be[i], &w->m[i], &err) == BL_OK, "%s", err.msg);
    if (!w->m[i]) return false;
    w->m[i]->tok = byte_tokenizer_n(w->m[i]->cfg.vocab);
    char label[64];
    snprintf(label, sizeof label, "executor replica %d (cpu)", i);
    sched_pool_cfg c = {.name = "executor",
                        .label = label,
                        .m = w->m[i],
                        .n_blocks = 64,
                        .max_num_seqs = 4,
                        .max_batched_tokens = 256};
    T_CHECKF(sched_pool_create(&c, &w->p[i], &err) == BL_OK, "%s", err.msg);
    if (!w->p[i]) return false;
  }
  sched_router_cfg rc = {.executors = w->p, .n_executors = n, .chat = CHAT_CHATML};
  T_CHECKF(sched_router_create(&rc, &w->r, &err) == BL_OK, "%s", err.msg);
  return w->r != NULL;
}

static void world_free(world *w) {
  sched_router_destroy(w->r);
  for (int i = 0; i < N_REP; i++) {
    sched_pool_destroy(w->p[i]);
    model_free(w->m[i]);
    bk_destroy(w->be[i]);
  }
}

static const int32_t PROMPT[5] = {72, 101, 108, 108, 111};

static bl_status submit(world *w, uint64_t id, int32_t max_tokens, out *o, bl_err *err) {
  memset(o, 0, sizeof *o);
  sched_rreq q = {.id = id,
                  .prompt = PROMPT,
                  .n_prompt = 5,
                  .max_tokens = max_tokens,
                  .ignore_eos = true,
                  .policy = "direct",
                  .overrides = SCHED_POLICY_OVERRIDE_NONE,
                  .on_event = on_ev,
                  .user = o};
  return sched_router_submit(w->r, &q, err);
}

/* Step every replica until all are idle. */
static void drain(world *w) {
  for (int round = 0; round < 1000; round++) {
    bool all_idle = true;
    for (int i = 0; i < w->n; i++) {
      bool idle;
      bl_err ignore = {0};
      sched_pool_step(w->p[i], &idle, &ignore);
      all_idle = all_idle && idle;
    }
    if (all_idle) return;
  }
  T_CHECKF(0, "the replicas did not drain in 1000 rounds");
}

static void loads(world *w, int32_t *l) {
  for (int i = 0; i < w->n; i++)
    l[i] = sched_router_load(w->r, 0, i);
}

static void test_balance(const char *dir) {
  world w;
  if (!world_init(&w, dir, 2, NULL)) goto done;
  out o[5];
  bl_err err = {0};
  int32_t l[N_REP];
  /* 4 at once: 2 each, alternating (ties go to the lowest index) */
  for (int i = 0; i < 4; i++) {
    T_CHECKF(submit(&w, (uint64_t)i, 6, &o[i], &err) == BL_OK, "%s", err.msg);
    loads(&w, l);
    T_CHECKF(l[0] == i / 2 + 1 && l[1] == (i + 1) / 2, "after %d submits: load %d/%d", i + 1, l[0],
             l[1]);
  }
  drain(&w);
  loads(&w, l);
  T_CHECKF(l[0] == 0 && l[1] == 0, "load after draining: %d/%d", l[0], l[1]);
  for (int i = 0; i < 4; i++) {
    T_CHECKF(o[i].finals == 1 && o[i].fin == SCHED_R_LENGTH && o[i].tokens == 6,
             "request %d: %d finals, finish %d, %d tokens", i, o[i].finals, o[i].fin, o[i].tokens);
    T_CHECKF(!strcmp(o[i].pool, "executor"), "request %d: pool %s", i, o[i].pool);
    /* the same model and prompt, greedy: the same tokens on either replica */
    T_CHECKF(!memcmp(o[i].ids, o[0].ids, 6 * sizeof *o[i].ids), "request %d differs", i);
  }
  for (int i = 0; i < 2; i++) {
    sched_stats s;
    sched_pool_stats(w.p[i], &s);
    T_CHECKF(s.finished == 2, "replica %d finished %llu", i, (unsigned long long)s.finished);
  }
  /* least load wins: one long request on replica 0, one short on 1; once
   * the short one is done the next goes to 1 again, then 0 and 1 tie */
  T_CHECK(submit(&w, 10, 40, &o[0], &err) == BL_OK);
  T_CHECK(submit(&w, 11, 2, &o[1], &err) == BL_OK);
  for (int s = 0; s < 4; s++) {
    bool idle;
    sched_pool_step(w.p[1], &idle, &err);
  }
  T_CHECKF(o[1].finals == 1, "the short request did not finish (%d)", o[1].finals);
  T_CHECK(submit(&w, 12, 2, &o[2], &err) == BL_OK);
  loads(&w, l);
  T_CHECKF(l[0] == 1 && l[1] == 1, "the third went to %s (load %d/%d)", l[1] ? "1" : "0", l[0],
           l[1]);
  drain(&w);
done:
  world_free(&w);
}

/* Replica 0's backend fails its 3rd embed (its 3rd forward pass) with a
 * device error. */
static void test_one_unhealthy(const char *dir) {
  const char *faults[N_REP] = {"embed:3", NULL, NULL};
  world w;
  if (!world_init(&w, dir, 2, faults)) goto done;
  out a, b, c, d;
  bl_err err = {0};
  T_CHECK(submit(&w, 1, 8, &a, &err) == BL_OK); /* replica 0 */
  T_CHECK(submit(&w, 2, 8, &b, &err) == BL_OK); /* replica 1 */
  drain(&w);
  T_CHECKF(a.finals == 1 && a.fin == SCHED_R_ERROR, "a: %d finals, finish %d", a.finals, a.fin);
  T_CHECKF(strstr(a.error, "executor replica 0 (cpu) is unhealthy after a device error") &&
               strstr(a.error, "injected device error in embed (call 3)"),
           "a: %s", a.error);
  T_CHECKF(b.finals == 1 && b.fin == SCHED_R_LENGTH && b.tokens == 8, "b: finish %d, %d tokens",
           b.fin, b.tokens);
  T_CHECK(!sched_pool_healthy(w.p[0], NULL, 0) && sched_pool_healthy(w.p[1], NULL, 0));
  /* new requests all go to the healthy replica, and finish */
  T_CHECKF(submit(&w, 3, 4, &c, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(submit(&w, 4, 4, &d, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(sched_router_load(w.r, 0, 0) == 0 && sched_router_load(w.r, 0, 1) == 2, "load %d/%d",
           sched_router_load(w.r, 0, 0), sched_router_load(w.r, 0, 1));
  drain(&w);
  T_CHECKF(c.fin == SCHED_R_LENGTH && d.fin == SCHED_R_LENGTH, "c %d d %d", c.fin, d.fin);
  /* the role's stats: healthy while one replica is */
  sched_stats sum;
  sched_router_stats(w.r, 0, &sum);
  T_CHECKF(sum.healthy && !sum.error[0], "folded: healthy %d error %s", sum.healthy, sum.error);
  T_CHECKF(sum.finished == 4, "folded finished %llu", (unsigned long long)sum.finished);
done:
  world_free(&w);
}

static void test_none_healthy(const char *dir) {
  const char *faults[N_REP] = {"embed:1", "embed:1", NULL};
  world w;
  if (!world_init(&w, dir, 2, faults)) goto done;
  out a, b, c;
  bl_err err = {0};
  T_CHECK(submit(&w, 1, 4, &a, &err) == BL_OK);
  T_CHECK(submit(&w, 2, 4, &b, &err) == BL_OK);
  drain(&w);
  T_CHECKF(a.fin == SCHED_R_ERROR && b.fin == SCHED_R_ERROR, "a %d b %d", a.fin, b.fin);
  bl_status st = submit(&w, 3, 4, &c, &err);
  T_CHECKF(st == BL_EDEVICE && strstr(err.msg, "executor replica 0 (cpu) is unhealthy"),
           "a submit with no healthy replica: %s: %s", bl_status_str(st), err.msg);
  T_CHECKF(c.finals == 0, "a refused request got %d finals", c.finals);
  sched_stats sum;
  sched_router_stats(w.r, 0, &sum);
  T_CHECKF(!sum.healthy && strstr(sum.error, "replica 0"), "folded: %d %s", sum.healthy, sum.error);
done:
  world_free(&w);
}

static void test_bad_sets(const char *dir) {
  world w;
  if (!world_init(&w, dir, 2, NULL)) goto done;
  bl_err err = {0};
  sched_router *r = NULL;
  sched_pool *many[SCHED_MAX_REPLICAS + 1];
  for (int i = 0; i <= SCHED_MAX_REPLICAS; i++)
    many[i] = w.p[i % 2];
  sched_router_cfg c = {.executors = many, .n_executors = SCHED_MAX_REPLICAS + 1};
  T_CHECKF(sched_router_create(&c, &r, &err) == BL_EINVAL && strstr(err.msg, "replicas"), "%s",
           err.msg);
  err = (bl_err){0};
  sched_pool *holey[2] = {w.p[0], NULL};
  c = (sched_router_cfg){.executors = holey, .n_executors = 2};
  T_CHECKF(sched_router_create(&c, &r, &err) == BL_EINVAL && strstr(err.msg, "replica 1"), "%s",
           err.msg);
  /* another precision of the same model is another model */
  bk_backend *be = NULL;
  model *m = NULL;
  sched_pool *p = NULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/tiny-qwen3", dir);
  model_load_opts o = {.precision = MODEL_PREC_FP16};
  T_CHECK(bk_cpu_create(1, &be, &err) == BL_OK);
  T_CHECKF(be && model_load(path, &o, be, &m, &err) == BL_OK, "%s", err.msg);
  sched_pool_cfg pc = {
      .name = "executor", .m = m, .n_blocks = 8, .max_num_seqs = 1, .max_batched_tokens = 32};
  T_CHECKF(m && sched_pool_create(&pc, &p, &err) == BL_OK, "%s", err.msg);
  err = (bl_err){0};
  sched_pool *mixed[2] = {w.p[0], p};
  c = (sched_router_cfg){.executors = mixed, .n_executors = 2};
  T_CHECKF(sched_router_create(&c, &r, &err) == BL_EINVAL && strstr(err.msg, "another model"), "%s",
           err.msg);
  T_CHECK(r == NULL);
  sched_pool_destroy(p);
  model_free(m);
  bk_destroy(be);
done:
  world_free(&w);
}

/* sched_stats_add on made-up figures. */
static void test_stats_add(void) {
  sched_stats a = {.steps = 10,
                   .finished = 3,
                   .running = 1,
                   .free_blocks = 5,
                   .total_blocks = 8,
                   .max_wait_steps = 7,
                   .healthy = true};
  a.decode_tps[1] = (sched_tps){.steps = 10, .sum_s = 1.0, .ewma = 12};
  sched_stats b = {.steps = 30,
                   .finished = 1,
                   .waiting = 2,
                   .free_blocks = 8,
                   .total_blocks = 8,
                   .max_wait_steps = 3,
                   .healthy = false};
  snprintf(b.error, sizeof b.error, "b is unhealthy");
  b.decode_tps[1] = (sched_tps){.steps = 30, .sum_s = 2.0, .ewma = 20};
  b.decode_tps[8] = (sched_tps){.steps = 4, .sum_s = 1.0, .ewma = 30};
  sched_stats sum = {0};
  sched_stats_add(&sum, &b);
  T_CHECKF(!sum.healthy && !strcmp(sum.error, "b is unhealthy"), "one unhealthy: %s", sum.error);
  sched_stats_add(&sum, &a);
  T_CHECK(sum.steps == 40 && sum.finished == 4 && sum.running == 1 && sum.waiting == 2);
  T_CHECK(sum.free_blocks == 13 && sum.total_blocks == 16 && sum.max_wait_steps == 7);
  T_CHECKF(sum.healthy && !sum.error[0], "one of two healthy: %d %s", sum.healthy, sum.error);
  T_CHECK(sum.decode_tps[1].steps == 40);
  T_NEAR(sum.decode_tps[1].sum_s, 3.0, 1e-12, 0);
  T_NEAR(sum.decode_tps[1].ewma, (12.0 * 10 + 20.0 * 30) / 40, 1e-9, 0);
  T_NEAR(sched_tps_at(&sum, 1, false), 40.0 / 3.0, 1e-9, 0); /* per replica */
  T_CHECK(sum.decode_tps[8].steps == 4);
  T_NEAR(sum.decode_tps[8].ewma, 30, 1e-12, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TESTS_DATA_DIR\n", argv[0]);
    return 2;
  }
  test_stats_add();
  test_balance(argv[1]);
  test_one_unhealthy(argv[1]);
  test_none_healthy(argv[1]);
  test_bad_sets(argv[1]);
  return T_DONE();
}
