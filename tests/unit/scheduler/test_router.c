/* The router's rules (plan, rescue: commit / fall back, policies,
 * accounting) on scripted models: the tiny Qwen3's shapes on the null
 * backend, with embed and lm_head replaced so the model says exactly what a
 * test scripts (by generated position), and a byte-level tokenizer built
 * here (256 byte tokens + ChatML and think markers). Both pools are stepped
 * by hand, one request at a time. Pools made unhealthy by a device error
 * (bk_fault around the scripted backend) refuse or end what needs them.
 * usage: test_router TESTS_DATA_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bk_fault.h"
#include "byte_tok.h"
#include "sched_router.h"
#include "sched_router_internal.h"
#include "t.h"

/* ---- the scripted model ---------------------------------------------- */

typedef struct script {
  int32_t ids[8192];
  int32_t n;
  int32_t prompt_len;
  int32_t step_ids[8192], n_step;
  int32_t prompt[8192]; /* the last prompt prefilled */
  int32_t n_prompt;
  int32_t last_pos;
  int32_t vocab;
} script;

static bl_status sc_embed(bk_backend *be, float *out, const bk_weight *t, const int32_t *ids,
                          int32_t n) {
  script *s = be->ctx;
  for (int32_t i = 0; i < n && i < 8192; i++) {
    out[(size_t)i * t->cols] = (float)ids[i];
    s->step_ids[i] = ids[i];
  }
  s->n_step = n;
  return BL_OK;
}

static bl_status sc_rope(bk_backend *be, float *q, float *k, const float *qn, const float *kn,
                         const int32_t *pos, int32_t n, const bk_heads *h) {
  script *s = be->ctx;
  if (n > 0 && pos[0] == 0) { /* a prefill from the start: a new sequence */
    s->prompt_len = n;
    memcpy(s->prompt, s->step_ids, (size_t)n * sizeof *s->prompt);
    s->n_prompt = n;
  }
  if (n > 0) s->last_pos = pos[n - 1];
  return BL_OK;
}

static bl_status sc_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w,
                           int32_t n) {
  script *s = be->ctx;
  if (w->rows != s->vocab) return BL_OK; /* a layer's linear: nothing (null backend) */
  int32_t g = s->last_pos + 1 - s->prompt_len;
  int32_t next = g >= 0 && g < s->n ? s->ids[g] : IM_END;
  for (int32_t i = 0; i < n; i++)
    for (int32_t j = 0; j < w->rows; j++)
      y[(size_t)i * w->rows + j] = j == next ? 30.f : 0.f;
  return BL_OK;
}

typedef struct world {
  script sx, sp; /* executor's, planner's */
  bk_backend *bx, *bp;
  model *mx, *mp;
  sched_pool *px, *pp;
  sched_router *r;
} world;

/* fault: NULL, or a bk_fault spec wrapped around the scripted backend */
static model *load(const char *dir, model_prec prec, const char *fault, bk_backend **be,
                   script *s) {
  bl_err err = {0};
  T_CHECK(bk_null_create(be, &err) == BL_OK);
  (*be)->ctx = s;
  (*be)->embed = sc_embed;
  (*be)->qk_norm_rope = sc_rope;
  (*be)->matmul = sc_matmul;
  if (fault) {
    bk_backend *w = NULL;
    T_CHECKF(bk_fault_wrap(*be, fault, &w, &err) == BL_OK, "%s", err.msg);
    if (w) *be = w;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/tiny-qwen3", dir);
  model_load_opts o = {.precision = prec};
  model *m = NULL;
  T_CHECKF(model_load(path, &o, *be, &m, &err) == BL_OK, "%s", err.msg);
  m->tok = byte_tokenizer();
  s->vocab = m->cfg.vocab;
  m->cfg.n_eos = 1;
  m->cfg.eos_ids[0] = IM_END;
  return m;
}

static sched_pool *mkpool(model *m, const char *name) {
  sched_pool_cfg c = {
      .name = name, .m = m, .n_blocks = 512, .max_num_seqs = 8, .max_batched_tokens = 4096};
  sched_pool *p = NULL;
  bl_err err = {0};
  T_CHECKF(sched_pool_create(&c, &p, &err) == BL_OK, "%s", err.msg);
  return p;
}

static void world_init_faults(world *w, const char *dir, bool planner, const char *fault_x,
                              const char *fault_p) {
  memset(w, 0, sizeof *w);
  w->mx = load(dir, MODEL_PREC_W2, fault_x, &w->bx, &w->sx);
  w->px = mkpool(w->mx, "executor");
  if (planner) {
    w->mp = load(dir, MODEL_PREC_FP16, fault_p, &w->bp, &w->sp);
    w->pp = mkpool(w->mp, "planner");
  }
  sched_router_cfg rc = {.executor = w->px, .planner = w->pp, .chat = CHAT_CHATML};
  bl_err err = {0};
  T_CHECKF(sched_router_create(&rc, &w->r, &err) == BL_OK, "%s", err.msg);
}

static void world_init(world *w, const char *dir, bool planner) {
  world_init_faults(w, dir, planner, NULL, NULL);
}

static void world_free(world *w) {
  sched_router_destroy(w->r);
  sched_pool_destroy(w->px);
  sched_pool_destroy(w->pp);
  model_free(w->mx);
  model_free(w->mp);
  bk_destroy(w->bx);
  bk_destroy(w->bp);
}

/* Script text as byte tokens (with <think> and </think> as their tokens). */
static void set_script(script *s, const char *text) {
  s->n = 0;
  for (const char *p = text; *p;) {
    if (!strncmp(p, "<think>", 7)) {
      s->ids[s->n++] = THINK;
      p += 7;
    } else if (!strncmp(p, "</think>", 8)) {
      s->ids[s->n++] = END_THINK;
      p += 8;
    } else {
      s->ids[s->n++] = (unsigned char)*p++;
    }
  }
}

static void add_cycle(script *s, const char *text, int times) {
  char buf[8192] = {0};
  for (int i = 0; i < times; i++)
    strcat(buf, text);
  script tmp;
  set_script(&tmp, buf);
  memcpy(s->ids + s->n, tmp.ids, (size_t)tmp.n * sizeof *s->ids);
  s->n += tmp.n;
}

/* ---- a request's events ---------------------------------------------- */

typedef struct out {
  char text[16384]; /* the output as a client assembles it */
  size_t len;
  char plan[4096];
  int finals, loops, commits, fallbacks, plans, tokens_after_final;
  size_t keep;
  sched_rfinish fin;
  char error[SCHED_ERROR_MAX];
  char answer[256], graded[256];
  bool has_answer;
  sched_trace tr;
  char pools[64];
  double tps[2][2];
  sched_router *r;
} out;

static void on_ev(const sched_revent *ev, void *user) {
  out *o = user;
  if (o->finals) o->tokens_after_final++;
  switch (ev->kind) {
  case SCHED_REV_TOKEN:
    if (o->len + ev->text_len < sizeof o->text) memcpy(o->text + o->len, ev->text, ev->text_len);
    o->len += ev->text_len;
    if (!strstr(o->pools, ev->precision)) strcat(o->pools, ev->precision), strcat(o->pools, " ");
    break;
  case SCHED_REV_PLAN:
    o->plans++;
    snprintf(o->plan, sizeof o->plan, "%.*s", (int)ev->text_len, ev->text);
    break;
  case SCHED_REV_LOOP: o->loops++; break;
  case SCHED_REV_COMMIT:
    o->commits++;
    memcpy(o->text + o->len, ev->text, ev->text_len);
    o->len += ev->text_len;
    break;
  case SCHED_REV_FALLBACK:
    o->fallbacks++;
    o->keep = ev->keep_bytes;
    o->len = ev->keep_bytes;
    break;
  case SCHED_REV_FINAL:
    o->finals++;
    o->fin = ev->finish;
    snprintf(o->error, sizeof o->error, "%s", ev->error ? ev->error : "");
    o->has_answer = ev->answer != NULL;
    snprintf(o->answer, sizeof o->answer, "%s", ev->answer ? ev->answer : "");
    snprintf(o->graded, sizeof o->graded, "%s", ev->graded ? ev->graded : "");
    o->tr = *ev->trace;
    for (int w = 0; w < 2; w++)
      for (int b = 0; b < 2; b++)
        o->tps[w][b] = sched_router_tps(o->r, w, b ? 8 : 1);
    break;
  }
  o->text[o->len < sizeof o->text ? o->len : sizeof o->text - 1] = 0;
}

static void drain(world *w, out *o) {
  bl_err err = {0};
  for (int i = 0; i < 100000 && !o->finals; i++) {
    bool idle;
    T_CHECKF(sched_pool_step(w->px, &idle, &err) == BL_OK, "%s", err.msg);
    if (w->pp) T_CHECKF(sched_pool_step(w->pp, &idle, &err) == BL_OK, "%s", err.msg);
  }
  T_CHECKF(o->finals == 1, "finals %d", o->finals);
  T_CHECK(o->tokens_after_final == 0);
}

static const chat_message Q[] = {
    {.role = CHAT_USER, .content = "What is 3 + 4?", .content_len = 14}};

static bl_status ask_id(world *w, out *o, uint64_t id, const char *policy, sched_policy_override ov,
                        int32_t max_tokens, bl_err *err) {
  memset(o, 0, sizeof *o);
  o->r = w->r;
  sched_rreq q = {.id = id,
                  .messages = Q,
                  .n_messages = 1,
                  .enable_thinking = true,
                  .max_tokens = max_tokens,
                  .policy = policy,
                  .overrides = ov,
                  .task = SCHED_TASK_MATH,
                  .on_event = on_ev,
                  .user = o};
  return sched_router_submit(w->r, &q, err);
}

static bl_status ask(world *w, out *o, const char *policy, sched_policy_override ov,
                     int32_t max_tokens, bl_err *err) {
  return ask_id(w, o, 7, policy, ov, max_tokens, err);
}

static void run(world *w, out *o, const char *policy, sched_policy_override ov,
                int32_t max_tokens) {
  bl_err err = {0};
  T_CHECKF(ask(w, o, policy, ov, max_tokens, &err) == BL_OK, "%s", err.msg);
  drain(w, o);
}

/* The detector's rule, naively: first i where the n-gram ending at i occurs
 * m times in the last min(t, i+1) tokens; the onset is the first of them. */
static void naive_loop(const int32_t *x, int32_t len, int32_t t, int32_t n, int32_t m,
                       int32_t *fire, int32_t *onset) {
  *fire = *onset = -1;
  for (int32_t i = n - 1; i < len; i++) {
    int32_t lo = i + 1 - t < 0 ? 0 : i + 1 - t, cnt = 0, first = -1;
    for (int32_t s = lo; s + n - 1 <= i; s++)
      if (!memcmp(x + s, x + i - n + 1, (size_t)n * sizeof *x)) {
        if (first < 0) first = s;
        cnt++;
      }
    if (cnt >= m) {
      *fire = i;
      *onset = first;
      return;
    }
  }
}

#define NONE SCHED_POLICY_OVERRIDE_NONE
static const char CYCLE[] = "Let me check that again. ";

static void test_direct(world *w) {
  out o;
  set_script(&w->sx, "<think>3 plus 4 is 7.</think>The answer is \\boxed{7}.");
  run(w, &o, "direct", NONE, 200);
  T_CHECK(o.fin == SCHED_R_STOP);
  T_CHECKF(!strcmp(o.text, "<think>3 plus 4 is 7.</think>The answer is \\boxed{7}."), "%s", o.text);
  T_CHECK(!strcmp(o.answer, "7") && !strcmp(o.graded, "7"));
  T_CHECK(!o.tr.loop && o.loops == 0 && o.tr.think_opened && o.tr.think_closed);
  T_CHECK(o.tr.exec_tokens == w->sx.n + 1 && o.tr.plan_tokens == 0 && o.tr.fallback_tokens == 0);
  T_CHECK(o.tr.reasoning_tokens == w->sx.n + 1 && !o.tr.hit_budget);
  T_CHECKF(!strcmp(o.pools, "w2 "), "%s", o.pools);
  T_CHECK(!strcmp(o.tr.policy, "direct") && !strcmp(o.tr.ran, "direct"));
  /* first answer: the token that closes the box */
  int32_t close = 0;
  while (w->sx.ids[close] != '}')
    close++;
  T_CHECKF(o.tr.first_answer_at == close, "first_answer_at %d want %d", o.tr.first_answer_at,
           close);

  /* direct only observes a loop */
  set_script(&w->sx, "Hmm. ");
  add_cycle(&w->sx, CYCLE, 12);
  run(w, &o, "direct", NONE, 150);
  T_CHECK(o.fin == SCHED_R_LENGTH && o.tr.loop && o.loops == 0 && o.tr.hit_budget);
  T_CHECK(o.tr.failure == SCHED_FAIL_PATH_FINDING && o.commits == 0 && o.fallbacks == 0);
}

static void test_commit(world *w) {
  out o;
  /* several answers before the onset: the latest stands; think left open */
  set_script(&w->sx, "<think>Maybe \\boxed{6}. No: \\boxed{7}. ");
  int32_t pre = w->sx.n;
  add_cycle(&w->sx, CYCLE, 12);
  run(w, &o, "rescue", NONE, 1000);
  int32_t fire, onset;
  naive_loop(w->sx.ids, w->sx.n, 1024, 20, 4, &fire, &onset);
  T_CHECK(o.fin == SCHED_R_LOOP_COMMIT && o.loops == 1 && o.commits == 1 && o.fallbacks == 0);
  T_CHECKF(o.tr.loop_fire_at == fire && o.tr.loop_onset == onset, "fire %d/%d onset %d/%d",
           o.tr.loop_fire_at, fire, o.tr.loop_onset, onset);
  /* the cycle and the prefix share the suffix ". ", so the onset is 2 early */
  T_CHECKF(onset == pre - 2 && o.tr.exec_tokens == fire + 1, "pre %d onset %d exec %d fire %d", pre,
           onset, o.tr.exec_tokens, fire);
  T_CHECK(!strcmp(o.answer, "7") && o.tr.failure == SCHED_FAIL_COMMITMENT);
  const char *tail = "\n</think>\n\nThe final answer is $\\boxed{7}$.";
  T_CHECKF(o.len > strlen(tail) && !strcmp(o.text + o.len - strlen(tail), tail), "%s", o.text);
  T_CHECK(o.tr.think_opened && o.tr.think_closed);

  /* a loop after </think>: commit without closing again */
  set_script(&w->sx, "<think>ok</think>So \\boxed{4}. ");
  add_cycle(&w->sx, CYCLE, 12);
  run(w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP_COMMIT && !strcmp(o.answer, "4"));
  tail = "\n\nThe final answer is $\\boxed{4}$.";
  T_CHECKF(!strcmp(o.text + o.len - strlen(tail), tail) && !strstr(o.text + 10, "</think>\n\nThe"),
           "%s", o.text);
}

static void test_fallback(world *w) {
  out o;
  /* no answer before the loop: rerun in fp16 from the original prompt */
  set_script(&w->sx, "Hmm. ");
  add_cycle(&w->sx, CYCLE, 12);
  set_script(&w->sp, "Three and four make \\boxed{7}.");
  run(w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP_FALLBACK_DONE && o.loops == 1 && o.fallbacks == 1 && o.keep == 0);
  T_CHECKF(!strcmp(o.text, "Three and four make \\boxed{7}."), "%s", o.text);
  T_CHECK(!strcmp(o.answer, "7") && o.tr.fell_back && o.tr.fallback_mode == SCHED_FALLBACK_RESTART);
  T_CHECK(o.tr.failure == SCHED_FAIL_PATH_FINDING);
  T_CHECK(o.tr.fallback_tokens == w->sp.n + 1 && o.tr.reasoning_tokens == w->sp.n + 1);
  T_CHECKF(!strcmp(o.pools, "w2 fp16 "), "%s", o.pools);
  /* the fallback reran the prompt as asked */
  T_CHECK(w->sp.n_prompt == o.tr.fallback_prompt_tokens &&
          o.tr.fallback_prompt_tokens == o.tr.exec_prompt_tokens);

  /* boxed answers only inside the loop: nothing stands before the onset */
  set_script(&w->sx, "Hmm. ");
  add_cycle(&w->sx, "so \\boxed{5} again and ", 12);
  run(w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP_FALLBACK_DONE && o.fallbacks == 1 && !strcmp(o.answer, "7"));

  /* resume: fp16 continues the 2-bit trace cut at the onset */
  set_script(&w->sx, "First, 3 + 4. ");
  add_cycle(&w->sx, CYCLE, 12);
  set_script(&w->sp, "That is \\boxed{7}.");
  sched_policy_override ov = NONE;
  ov.fallback = SCHED_FALLBACK_RESUME;
  run(w, &o, "rescue", ov, 1000);
  int32_t fire, onset;
  naive_loop(w->sx.ids, w->sx.n, 1024, 20, 4, &fire, &onset);
  T_CHECK(o.fin == SCHED_R_LOOP_FALLBACK_DONE && o.tr.fallback_mode == SCHED_FALLBACK_RESUME);
  T_CHECKF(o.keep == (size_t)onset, "keep %zu onset %d", o.keep, onset); /* one byte per token */
  char want[8192];
  snprintf(want, sizeof want, "%.*s%s", onset, "First, 3 + 4. Let me check that again. ",
           "That is \\boxed{7}.");
  T_CHECKF(!strcmp(o.text, want), "%s | %s", o.text, want);
  T_CHECK(o.tr.fallback_tokens == w->sp.n + 1 && o.tr.reasoning_tokens == onset + w->sp.n + 1);
  T_CHECK(w->sp.n_prompt == o.tr.exec_prompt_tokens + onset);

  /* the fallback loops too: never a second fallback */
  set_script(&w->sx, "Hmm. ");
  add_cycle(&w->sx, CYCLE, 12);
  set_script(&w->sp, "Well. ");
  add_cycle(&w->sp, "Again and again. ", 12);
  run(w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP && o.fallbacks == 1 && o.loops == 2 && !o.has_answer);

  /* ... and commits when it had an answer before its loop */
  set_script(&w->sp, "It is \\boxed{7}. ");
  add_cycle(&w->sp, "Again and again. ", 12);
  run(w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP_COMMIT && o.fallbacks == 1 && !strcmp(o.answer, "7"));
}

static void test_plan(world *w) {
  out o;
  set_script(&w->sp, "1. Add 3 and 4.\n2. Report \\boxed{7} as the result.\n");
  set_script(&w->sx, "Following the plan: \\boxed{7}.");
  run(w, &o, "plan", NONE, 200);
  T_CHECK(o.fin == SCHED_R_STOP && o.plans == 1 && !strcmp(o.answer, "7"));
  T_CHECKF(!strcmp(o.plan, "1. Add 3 and 4.\n2. Report  as the result."), "plan: %s", o.plan);
  T_CHECK(o.tr.plan_tokens == w->sp.n + 1 && o.tr.exec_tokens == w->sx.n + 1);
  /* the executor's prompt carries the plan, and the plan prompt was thinking-off */
  size_t len;
  char *exec = tok_decode(w->mx->tok, w->sx.prompt, (size_t)w->sx.n_prompt, &len);
  T_CHECKF(strstr(exec, "What is 3 + 4?\n\nFollow this plan:\n1. Add 3 and 4.\n2. Report  as the "
                        "result.<|im_end|>"),
           "%s", exec);
  T_CHECK(!strstr(exec, "boxed"));
  free(exec);
  char *plan = tok_decode(w->mp->tok, w->sp.prompt, (size_t)w->sp.n_prompt, &len);
  T_CHECKF(strstr(plan, "Write a short plan") && strstr(plan, "What is 3 + 4?"), "%s", plan);
  free(plan);
  T_CHECK(sched_plan_clean((char[]){"  \\boxed{\\frac{1}{2}} x \\fbox{y} "}, 33) == 1);

  /* plan+rescue: the plan tokens are fp16 work; the executor loops and commits */
  set_script(&w->sx, "By the plan \\boxed{7}. ");
  add_cycle(&w->sx, CYCLE, 12);
  run(w, &o, "plan+rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP_COMMIT && o.plans == 1 && o.tr.plan_tokens > 0);
}

static void test_policies(world *w) {
  out o;
  bl_err err = {0};
  set_script(&w->sp, "fp16 says \\boxed{7}.");
  run(w, &o, "fp16", NONE, 100);
  T_CHECK(o.fin == SCHED_R_STOP && o.tr.fp16_tokens == w->sp.n + 1 && o.tr.exec_tokens == 0);
  T_CHECKF(!strcmp(o.pools, "fp16 "), "%s", o.pools);

  T_CHECK(ask(w, &o, "nonsense", NONE, 10, &err) == BL_EINVAL && strstr(err.msg, "nonsense"));
  err = (bl_err){0};
  sched_policy_override big = NONE;
  big.window = 100000;
  T_CHECK(ask(w, &o, "rescue", big, 10, &err) == BL_ERANGE && strstr(err.msg, "limit"));
  err = (bl_err){0};
  sched_policy_override bad = NONE;
  bad.ngram = 2000;
  T_CHECK(ask(w, &o, "rescue", bad, 10, &err) == BL_EINVAL);
  err = (bl_err){0};
  T_CHECK(ask(w, &o, "rescue", NONE, 0, &err) == BL_EINVAL);
  /* planning needs messages */
  int32_t ids[3] = {1, 2, 3};
  sched_rreq q = {.id = 1,
                  .prompt = ids,
                  .n_prompt = 3,
                  .max_tokens = 5,
                  .policy = "plan",
                  .overrides = NONE,
                  .on_event = on_ev,
                  .user = &o};
  err = (bl_err){0};
  T_CHECK(sched_router_submit(w->r, &q, &err) == BL_EUNSUPPORTED && strstr(err.msg, "messages"));
  /* prompt ids work for the others */
  set_script(&w->sx, "\\boxed{1}");
  q.policy = "rescue";
  memset(&o, 0, sizeof o);
  o.r = w->r;
  err = (bl_err){0};
  T_CHECKF(sched_router_submit(w->r, &q, &err) == BL_OK, "%s", err.msg);
  drain(w, &o);
  T_CHECK(o.fin == SCHED_R_LENGTH && o.tr.exec_prompt_tokens == 3);
  q.max_prompt = 2; /* the prompt limit */
  err = (bl_err){0};
  T_CHECK(sched_router_submit(w->r, &q, &err) == BL_ERANGE && strstr(err.msg, "limit is 2"));
  q.max_prompt = 0;

  /* window / period: a period longer than t/m cannot fire */
  sched_policy_override small = NONE;
  small.window = 64, small.ngram = 4, small.min_count = 4;
  set_script(&w->sx, "");
  add_cycle(&w->sx, "abcdefghijklmnopqrst", 10); /* period 20: 3*20+4 = 64 fits */
  set_script(&w->sp, "ok");
  run(w, &o, "rescue", small, 400);
  T_CHECK(o.tr.loop && o.tr.loop_fire_at == 63 && o.tr.loop_onset == 0);
  set_script(&w->sx, "");
  add_cycle(&w->sx, "abcdefghijklmnopqrstu", 10); /* period 21: 3*21+4 = 67 does not */
  run(w, &o, "rescue", small, 200);
  T_CHECK(!o.tr.loop && o.fin == SCHED_R_LENGTH);

  /* cancel: exactly one final, CANCELLED */
  set_script(&w->sx, "");
  add_cycle(&w->sx, "abcdefghijklmnopqrstuvwxyz0123456789", 100);
  T_CHECK(ask(w, &o, "direct", NONE, 2000, &err) == BL_OK);
  bool idle;
  for (int i = 0; i < 5; i++)
    sched_pool_step(w->px, &idle, &err);
  sched_router_cancel(w->r, 7);
  drain(w, &o);
  T_CHECK(o.fin == SCHED_R_CANCELLED);
}

static void test_no_planner(const char *dir) {
  world w;
  world_init(&w, dir, false);
  out o;
  bl_err err = {0};
  T_CHECK(ask(&w, &o, "fp16", NONE, 10, &err) == BL_EUNSUPPORTED && strstr(err.msg, "planner"));
  /* rescue without a planner: a loop with no answer ends LOOP */
  set_script(&w.sx, "Hmm. ");
  add_cycle(&w.sx, CYCLE, 12);
  run(&w, &o, "rescue", NONE, 1000);
  T_CHECK(o.fin == SCHED_R_LOOP && o.fallbacks == 0);
  world_free(&w);
}

/* ---- unhealthy pools ---------------------------------------------------- */

static bool says(const char *msg, const char *pool, const char *cause) {
  char head[96];
  snprintf(head, sizeof head, "%s pool is unhealthy after a device error: null: ", pool);
  return !strncmp(msg, head, strlen(head)) && strstr(msg, cause);
}

/* The planner's first forward pass meets a device error. */
static void test_unhealthy_planner(const char *dir) {
  world w;
  world_init_faults(&w, dir, true, NULL, "embed:1");
  const char *cause = "injected device error in embed (call 1)";
  out o;
  bl_err err = {0};
  set_script(&w.sp, "fp16 says \\boxed{7}.");
  T_CHECKF(ask(&w, &o, "fp16", NONE, 100, &err) == BL_OK, "%s", err.msg);
  bool idle;
  T_CHECK(sched_pool_step(w.pp, &idle, &err) == BL_EDEVICE);
  T_CHECKF(o.finals == 1 && o.fin == SCHED_R_ERROR && says(o.error, "planner", cause), "%s: %s",
           sched_rfinish_name(o.fin), o.error);
  /* what needs the planner is refused at once, with its error */
  const char *need[] = {"fp16", "plan", "plan+rescue"};
  for (int i = 0; i < 3; i++) {
    err = (bl_err){0};
    T_CHECKF(ask(&w, &o, need[i], NONE, 100, &err) == BL_EDEVICE && says(err.msg, "planner", cause),
             "%s: %s", need[i], err.msg);
    T_CHECK(o.finals == 0);
  }
  /* a loop with nothing to commit would fall back to it: ERROR, no fallback */
  set_script(&w.sx, "Hmm. ");
  add_cycle(&w.sx, CYCLE, 12);
  run(&w, &o, "rescue", NONE, 1000);
  T_CHECKF(o.fin == SCHED_R_ERROR && says(o.error, "planner", cause), "%s: %s",
           sched_rfinish_name(o.fin), o.error);
  T_CHECK(o.loops == 1 && o.fallbacks == 0 && !o.tr.fell_back && o.tr.exec_tokens > 0);
  /* what needs only the executor runs */
  set_script(&w.sx, "<think>3 plus 4 is 7.</think>\\boxed{7}");
  run(&w, &o, "rescue", NONE, 200);
  T_CHECK(o.fin == SCHED_R_STOP && !strcmp(o.answer, "7") && !o.error[0]);
  world_free(&w);
}

/* The executor fails while a plan is being written: the plan's request
 * ends ERROR when its executor phase cannot start. */
static void test_unhealthy_executor(const char *dir) {
  world w;
  world_init_faults(&w, dir, true, "embed:2", NULL);
  const char *cause = "injected device error in embed (call 2)";
  out po, o;
  bl_err err = {0};
  set_script(&w.sp, "1. Add 3 and 4.\n");
  set_script(&w.sx, "Let me count: one, two, three.");
  T_CHECKF(ask_id(&w, &po, 1, "plan", NONE, 200, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(ask_id(&w, &o, 2, "direct", NONE, 200, &err) == BL_OK, "%s", err.msg);
  bool idle;
  T_CHECK(sched_pool_step(w.px, &idle, &err) == BL_OK);
  T_CHECK(sched_pool_step(w.px, &idle, &err) == BL_EDEVICE);
  T_CHECKF(o.finals == 1 && o.fin == SCHED_R_ERROR && says(o.error, "executor", cause), "%s: %s",
           sched_rfinish_name(o.fin), o.error);
  T_CHECK(po.finals == 0);
  for (int i = 0; i < 1000 && !po.finals; i++) {
    T_CHECK(sched_pool_step(w.pp, &idle, &err) == BL_OK);
    T_CHECK(sched_pool_step(w.px, &idle, &err) == BL_OK);
  }
  T_CHECKF(po.finals == 1 && po.plans == 1 && po.fin == SCHED_R_ERROR &&
               says(po.error, "executor", cause),
           "%s: %s", sched_rfinish_name(po.fin), po.error);
  T_CHECK(po.tr.plan_tokens > 0 && po.tr.exec_tokens == 0);
  const char *need[] = {"direct", "rescue", "plan", "auto"};
  for (int i = 0; i < 4; i++) {
    err = (bl_err){0};
    T_CHECKF(ask(&w, &o, need[i], NONE, 100, &err) == BL_EDEVICE &&
                 says(err.msg, "executor", cause),
             "%s: %s", need[i], err.msg);
  }
  set_script(&w.sp, "fp16 says \\boxed{7}.");
  run(&w, &o, "fp16", NONE, 100); /* the planner alone still serves */
  T_CHECK(o.fin == SCHED_R_STOP && !strcmp(o.answer, "7"));
  world_free(&w);
}

typedef struct agg_seen {
  int n;
  uint64_t rescue_fallbacks;
} agg_seen;

static void count_aggs(const sched_agg *a, void *u) {
  agg_seen *s = u;
  s->n++;
  if (!strcmp(a->policy, "rescue")) s->rescue_fallbacks += a->fallbacks;
}

static void test_accounting(world *w) {
  bl_err err = {0};
  T_CHECKF(sched_router_calibrate(w->r, 16, &err) == BL_OK, "%s", err.msg);
  T_CHECK(w->r->cal_tps[0][0] > 0 && w->r->cal_tps[0][1] > 0 && w->r->cal_tps[1][0] > 0 &&
          w->r->cal_tps[1][1] > 0);
  out o;
  set_script(&w->sp, "\\boxed{7}");
  run(w, &o, "fp16", NONE, 100);
  T_NEAR(o.tr.speedup[0], 1.0, 1e-9, 0);
  T_NEAR(o.tr.speedup[1], 1.0, 1e-9, 0);
  /* a restart fallback: estimated = 2-bit tokens at executor speed + fp16 tokens at planner speed
   */
  set_script(&w->sx, "Hmm. ");
  add_cycle(&w->sx, CYCLE, 12);
  run(w, &o, "rescue", NONE, 1000);
  for (int b = 0; b < 2; b++) {
    double est = o.tr.exec_tokens / o.tps[0][b] + o.tr.fallback_tokens / o.tps[1][b];
    T_NEAR(o.tr.est_s[b], est, 1e-12, 1e-9);
    T_NEAR(o.tr.fp16_s[b], o.tr.fallback_tokens / o.tps[1][b], 1e-12, 1e-9);
    T_NEAR(o.tr.speedup[b], o.tr.fp16_s[b] / est, 1e-12, 1e-9);
  }
  agg_seen seen = {0};
  sched_router_aggs(w->r, count_aggs, &seen);
  T_CHECK(seen.n >= 3 && seen.rescue_fallbacks >= 1);
}

static void test_auto(void) {
  sched_auto a;
  bl_err err = {0};
  T_CHECK(sched_auto_init(&a, &err) == BL_OK);
  sched_policy base, got;
  T_CHECK(sched_policy_builtin("auto", &base, &err) == BL_OK);
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_STABLE);
  T_CHECK(got.rescue && !got.plan && got.route == SCHED_ROUTE_EXECUTOR);
  /* loops without fallbacks: degraded after SCHED_AUTO_MIN outcomes */
  sched_outcome loop = {.loop = true}, clean = {0}, fb = {.loop = true, .fallback = true};
  for (int i = 0; i < SCHED_AUTO_MIN - 1; i++)
    sched_auto_observe(&a, "gsm8k", &loop);
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_STABLE);
  sched_auto_observe(&a, "gsm8k", &loop);
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_DEGRADED);
  T_CHECK(got.plan && got.rescue && got.route == SCHED_ROUTE_EXECUTOR);
  /* hysteresis: 16 loops of 64 (25%) enter; falling to 15% stays; <= 10% leaves */
  for (int i = 0; i < 48; i++)
    sched_auto_observe(&a, "gsm8k", &clean); /* 16/64 = 25% */
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_DEGRADED);
  for (int i = 0; i < 6; i++)
    sched_auto_observe(&a, "gsm8k", &clean); /* 10/64 = 15.6% */
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_DEGRADED);
  for (int i = 0; i < 4; i++)
    sched_auto_observe(&a, "gsm8k", &clean); /* 6/64 = 9.4% */
  T_CHECK(sched_auto_route(&a, "gsm8k", &base, &got) == SCHED_REGIME_STABLE);
  /* fallbacks: collapse routes to fp16, but one in SCHED_AUTO_PROBE still probes */
  for (int i = 0; i < 40; i++)
    sched_auto_observe(&a, "aime", &fb);
  int fp16 = 0, probes = 0;
  for (int i = 0; i < 4 * SCHED_AUTO_PROBE; i++) {
    T_CHECK(sched_auto_route(&a, "aime", &base, &got) == SCHED_REGIME_COLLAPSE);
    if (got.route == SCHED_ROUTE_FP16)
      fp16++;
    else
      probes += got.plan && got.rescue;
  }
  T_CHECK(probes == 4 && fp16 == 4 * SCHED_AUTO_PROBE - 4);
  /* think-closed rate: traces that open <think> and never close it */
  sched_outcome open = {.think_opened = true};
  for (int i = 0; i < SCHED_AUTO_MIN; i++)
    sched_auto_observe(&a, "gpqa", &open);
  T_CHECK(sched_auto_route(&a, "gpqa", &base, &got) == SCHED_REGIME_DEGRADED);
  sched_regime rg;
  int32_t n;
  double lr, fr, tc;
  T_CHECK(sched_auto_rates(&a, "gpqa", &rg, &n, &lr, &fr, &tc) && n == SCHED_AUTO_MIN && tc == 0);
  sched_auto_free(&a);
}

/* A reload: new requests see the new settings, a request in flight keeps
 * the ones it started with, and an invalid set changes nothing. */
static void test_reconfigure(world *w) {
  out o;
  bl_err err = {0};
  set_script(&w->sp, "1. Add.\n");
  set_script(&w->sx, "\\boxed{7}");
  T_CHECK(ask(w, &o, "mine", NONE, 50, &err) == BL_EINVAL);
  sched_policy mine;
  T_CHECK(sched_policy_builtin("plan", &mine, &err) == BL_OK);
  snprintf(mine.name, sizeof mine.name, "mine");
  sched_router_cfg rc = {.policies = &mine,
                         .n_policies = 1,
                         .default_policy = "mine",
                         .plan_insert = "{question} [{plan}]"};
  /* a plan request in flight under the old template */
  err = (bl_err){0};
  T_CHECK(ask(w, &o, "plan", NONE, 50, &err) == BL_OK);
  bool idle;
  sched_pool_step(w->pp, &idle, &err);
  T_CHECKF(sched_router_reconfigure(w->r, &rc, &err) == BL_OK, "%s", err.msg);
  drain(w, &o);
  size_t len;
  char *exec = tok_decode(w->mx->tok, w->sx.prompt, (size_t)w->sx.n_prompt, &len);
  T_CHECKF(strstr(exec, "Follow this plan:\n1. Add."), "%s", exec);
  free(exec);
  /* new requests: the new template and the named policy, also as the default */
  run(w, &o, NULL, NONE, 50);
  T_CHECKF(!strcmp(o.tr.policy, "mine") && o.plans == 1, "%s", o.tr.policy);
  exec = tok_decode(w->mx->tok, w->sx.prompt, (size_t)w->sx.n_prompt, &len);
  T_CHECKF(strstr(exec, "What is 3 + 4? [1. Add.]"), "%s", exec);
  free(exec);
  /* invalid: an unknown default, a template without {plan}; the last good set stays */
  sched_router_cfg bad = {.default_policy = "nope"};
  err = (bl_err){0};
  T_CHECK(sched_router_reconfigure(w->r, &bad, &err) == BL_EINVAL && strstr(err.msg, "nope"));
  bad = (sched_router_cfg){.plan_insert = "{question}"};
  err = (bl_err){0};
  T_CHECK(sched_router_reconfigure(w->r, &bad, &err) == BL_EINVAL && strstr(err.msg, "{plan}"));
  run(w, &o, "mine", NONE, 50);
  T_CHECK(o.fin == SCHED_R_STOP || o.fin == SCHED_R_LENGTH);
  rc = (sched_router_cfg){0};
  T_CHECK(sched_router_reconfigure(w->r, &rc, &err) == BL_OK);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_router TESTS_DATA_DIR\n");
    return 2;
  }
  test_auto();
  world w;
  world_init(&w, argv[1], true);
  test_direct(&w);
  test_commit(&w);
  test_fallback(&w);
  test_plan(&w);
  test_policies(&w);
  test_accounting(&w);
  test_reconfigure(&w);
  world_free(&w);
  test_no_planner(argv[1]);
  test_unhealthy_planner(argv[1]);
  test_unhealthy_executor(argv[1]);
  return T_DONE();
}
