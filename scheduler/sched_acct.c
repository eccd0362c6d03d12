/* The router's configuration, throughput accounting and aggregates.
 *
 * Speed-up estimate (the paper's Table 4, per request): the time a request
 * took is estimated as its 2-bit tokens over the executor's decode
 * throughput plus its fp16 tokens (plan, fallback, fp16 run) over the
 * planner's, at batch 1 and at batch 8. The fp16-only time it is compared
 * with is the length of an fp16 run of the same prompt over the planner's
 * throughput: the request's own fp16 run when it had one from the original
 * prompt (fp16 policy, restart fallback), else the mean length of such runs
 * in its task class once SCHED_ACCT_MIN_FP16 have been seen, else its own
 * output length (assuming fp16 would have needed as many tokens). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_router_internal.h"

#define SCHED_ACCT_MIN_FP16 8

/* ---- settings --------------------------------------------------------- */

rconf *rconf_get(sched_router *r) {
  pthread_mutex_lock(&r->lock);
  rconf *c = r->conf;
  atomic_fetch_add(&c->refs, 1);
  pthread_mutex_unlock(&r->lock);
  return c;
}

void rconf_put(rconf *c) {
  if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
  free(c->plan_prompt);
  free(c->plan_insert);
  free(c->policies);
  free(c);
}

/* Templates, named policies, the default and the limits from cfg, checked. */
static bl_status rconf_build(const sched_router_cfg *cfg, rconf **out, bl_err *err) {
  rconf *c = calloc(1, sizeof *c);
  if (!c) return bl_fail(err, BL_ENOMEM, "router: out of memory");
  atomic_init(&c->refs, 1);
  c->limits = cfg->limits;
  c->plan_prompt = strdup(cfg->plan_prompt ? cfg->plan_prompt : SCHED_DEFAULT_PLAN_PROMPT);
  c->plan_insert = strdup(cfg->plan_insert ? cfg->plan_insert : SCHED_DEFAULT_PLAN_INSERT);
  bl_status st = BL_OK;
  if (!c->plan_prompt || !c->plan_insert) st = bl_fail(err, BL_ENOMEM, "router: out of memory");
  if (!st && !strstr(c->plan_prompt, "{question}"))
    st = bl_fail(err, BL_EINVAL, "router: plan_prompt has no {question}");
  if (!st && (!strstr(c->plan_insert, "{question}") || !strstr(c->plan_insert, "{plan}")))
    st = bl_fail(err, BL_EINVAL, "router: plan_insert needs {question} and {plan}");
  if (!st && cfg->n_policies) {
    c->policies = malloc((size_t)cfg->n_policies * sizeof *c->policies);
    if (!c->policies) st = bl_fail(err, BL_ENOMEM, "router: out of memory");
    for (int32_t i = 0; !st && i < cfg->n_policies; i++) {
      c->policies[i] = cfg->policies[i];
      st = sched_policy_check(&c->policies[i], err);
      c->n_policies = i + 1;
    }
  }
  snprintf(c->default_policy, sizeof c->default_policy, "%s",
           cfg->default_policy ? cfg->default_policy : "rescue");
  sched_policy probe;
  if (!st) st = router_policy(c, c->default_policy, &SCHED_POLICY_OVERRIDE_NONE, &probe, err);
  if (st) {
    rconf_put(c);
    return st;
  }
  *out = c;
  return BL_OK;
}

/* A role's replicas from cfg: the array when given, else the lone pool. */
static bl_status role_of(rrole *ro, const char *what, sched_pool *one, sched_pool *const *many,
                         int32_t n, bl_err *err) {
  if (n < 0 || n > SCHED_MAX_REPLICAS)
    return bl_fail(err, BL_EINVAL, "router: %d %s replicas: expected 0..%d", n, what,
                   SCHED_MAX_REPLICAS);
  ro->n = 0;
  if (n == 0 && one) ro->p[ro->n++] = one;
  for (int32_t i = 0; i < n; i++) {
    if (!many[i]) return bl_fail(err, BL_EINVAL, "router: %s replica %d is NULL", what, i);
    ro->p[ro->n++] = many[i];
  }
  for (int32_t i = 1; i < ro->n; i++) {
    const model *a = sched_pool_model(ro->p[0]), *b = sched_pool_model(ro->p[i]);
    if (a->cfg.vocab != b->cfg.vocab || a->prec != b->prec)
      return bl_fail(err, BL_EINVAL, "router: %s replica %d holds another model than replica 0",
                     what, i);
  }
  return BL_OK;
}

bl_status sched_router_create(const sched_router_cfg *cfg, sched_router **out, bl_err *err) {
  *out = NULL;
  rrole role[2];
  memset(role, 0, sizeof role);
  bl_status st0 =
      role_of(&role[0], "executor", cfg->executor, cfg->executors, cfg->n_executors, err);
  if (!st0) st0 = role_of(&role[1], "planner", cfg->planner, cfg->planners, cfg->n_planners, err);
  if (st0) return st0;
  if (!role[0].n) return bl_fail(err, BL_EINVAL, "router: an executor pool is required");
  const model *em = sched_pool_model(role[0].p[0]);
  if (!em->tok) return bl_fail(err, BL_EINVAL, "router: the executor's model has no tokenizer");
  if (role[1].n && sched_pool_model(role[1].p[0])->cfg.vocab != em->cfg.vocab)
    return bl_fail(err, BL_EINVAL, "router: executor and planner have different vocabularies");
  sched_router *r = calloc(1, sizeof *r);
  if (!r) return bl_fail(err, BL_ENOMEM, "router: out of memory");
  memcpy(r->role, role, sizeof role);
  r->tok = em->tok;
  r->chat = cfg->chat;
  r->next_iid = 1;
  pthread_mutex_init(&r->lock, NULL);
  bl_status st = sched_auto_init(&r->autor, err);
  if (!st) st = rconf_build(cfg, &r->conf, err);
  if (st) {
    sched_router_destroy(r);
    return st;
  }
  *out = r;
  return BL_OK;
}

bl_status sched_router_reconfigure(sched_router *r, const sched_router_cfg *cfg, bl_err *err) {
  rconf *c;
  bl_status st = rconf_build(cfg, &c, err);
  if (st) return st;
  pthread_mutex_lock(&r->lock);
  rconf *old = r->conf;
  r->conf = c;
  pthread_mutex_unlock(&r->lock);
  rconf_put(old);
  return BL_OK;
}

void sched_router_destroy(sched_router *r) {
  if (!r) return;
  sched_auto_free(&r->autor);
  pthread_mutex_destroy(&r->lock);
  rconf_put(r->conf);
  free(r->live);
  free(r->aggs);
  free(r->fp16);
  free(r);
}

sched_auto *sched_router_auto(sched_router *r) { return &r->autor; }

int32_t sched_router_load(sched_router *r, int which, int32_t i) {
  const rrole *ro = &r->role[which ? 1 : 0];
  pthread_mutex_lock(&r->lock);
  int32_t n = i >= 0 && i < ro->n ? ro->load[i] : 0;
  pthread_mutex_unlock(&r->lock);
  return n;
}

bl_status router_policy(const rconf *c, const char *name, const sched_policy_override *o,
                        sched_policy *out, bl_err *err) {
  if (!name) name = c->default_policy;
  sched_policy base;
  bool found = false;
  for (int32_t i = 0; i < c->n_policies && !found; i++)
    if (!strcmp(c->policies[i].name, name)) base = c->policies[i], found = true;
  bl_status st = found ? BL_OK : sched_policy_builtin(name, &base, err);
  if (st) return st;
  return sched_policy_apply(&base, o, &c->limits, out, err);
}

/* ---- throughput ------------------------------------------------------- */

int32_t sched_router_stats(sched_router *r, int which, sched_stats *out) {
  const rrole *ro = &r->role[which ? 1 : 0];
  memset(out, 0, sizeof *out);
  int32_t healthy = 0;
  sched_stats one;
  for (int32_t i = 0; i < ro->n; i++) {
    sched_pool_stats(ro->p[i], &one);
    sched_stats_add(out, &one);
    healthy += one.healthy;
  }
  return healthy;
}

double sched_router_tps(sched_router *r, int which, int32_t batch) {
  if (!r->role[which ? 1 : 0].n) return 0;
  sched_stats s;
  sched_router_stats(r, which, &s);
  if (batch >= 1 && batch <= SCHED_TPS_MAX_BATCH &&
      s.decode_tps[batch].steps >= SCHED_ACCT_MIN_STEPS)
    return sched_tps_at(&s, batch, true);
  int b = batch == 1 ? 0 : batch == 8 ? 1 : -1;
  return b < 0 ? 0 : r->cal_tps[which][b];
}

double sched_router_calibrated(const sched_router *r, int which, int32_t batch) {
  int b = batch == 1 ? 0 : batch == 8 ? 1 : -1;
  return b < 0 || which < 0 || which > 1 ? 0 : r->cal_tps[which][b];
}

typedef struct cal_wait {
  pthread_mutex_t lock;
  pthread_cond_t done;
  int32_t left;
} cal_wait;

static void cal_event(const sched_event *ev, void *user) {
  cal_wait *w = user;
  if (ev->finish == SCHED_RUNNING) return;
  pthread_mutex_lock(&w->lock);
  w->left--;
  pthread_cond_signal(&w->done);
  pthread_mutex_unlock(&w->lock);
}

/* batch requests of n_tokens decode tokens each; tokens/s over the steps
 * that decoded exactly batch sequences (0 when none did, e.g. too few
 * blocks to run them together). */
static bl_status calibrate_one(sched_pool *p, int32_t batch, int32_t n_tokens, double *tps,
                               bl_err *err) {
  sched_stats before, after;
  sched_pool_stats(p, &before);
  cal_wait w = {.left = 0};
  pthread_mutex_init(&w.lock, NULL);
  pthread_cond_init(&w.done, NULL);
  int32_t prompt[4] = {1, 2, 3, 4};
  bl_status st = BL_OK;
  for (int32_t i = 0; !st && i < batch; i++) {
    sched_req q = {.id = UINT64_MAX - (uint64_t)i,
                   .prompt = prompt,
                   .n_prompt = 4,
                   .max_tokens = n_tokens,
                   .ignore_eos = true,
                   .loop = SCHED_LOOP_OFF,
                   .on_event = cal_event,
                   .user = &w};
    pthread_mutex_lock(&w.lock);
    w.left++;
    pthread_mutex_unlock(&w.lock);
    if ((st = sched_submit(p, &q, err))) {
      pthread_mutex_lock(&w.lock);
      w.left--;
      pthread_mutex_unlock(&w.lock);
    }
  }
  bool threaded = sched_pool_threaded(p);
  for (;;) {
    pthread_mutex_lock(&w.lock);
    if (threaded)
      while (w.left > 0)
        pthread_cond_wait(&w.done, &w.lock);
    int32_t left = w.left;
    pthread_mutex_unlock(&w.lock);
    if (left <= 0) break;
    bool idle;
    bl_err ignore = {0};
    sched_pool_step(p, &idle, &ignore);
  }
  pthread_mutex_destroy(&w.lock);
  pthread_cond_destroy(&w.done);
  sched_pool_stats(p, &after);
  const sched_tps *a = &after.decode_tps[batch], *b = &before.decode_tps[batch];
  uint64_t steps = a->steps - b->steps;
  double secs = a->sum_s - b->sum_s;
  *tps = steps && secs > 0 ? (double)steps * batch / secs : 0;
  return st;
}

bl_status sched_router_calibrate(sched_router *r, int32_t n_tokens, bl_err *err) {
  static const int32_t batches[2] = {1, 8};
  for (int which = 0; which < 2; which++) {
    sched_pool *p = r->role[which].n ? r->role[which].p[0] : NULL;
    for (int b = 0; p && b < 2; b++) {
      double tps = 0;
      bl_status st = calibrate_one(p, batches[b], n_tokens, &tps, err);
      if (st) return st;
      char why[SCHED_ERROR_MAX]; /* its requests ended ERROR: no figure to keep */
      if (!sched_pool_healthy(p, why, sizeof why)) return bl_fail(err, BL_EDEVICE, "%s", why);
      r->cal_tps[which][b] = tps;
    }
  }
  return BL_OK;
}

/* ---- per request ------------------------------------------------------ */

/* The fp16 run lengths seen in a class (lock held), created when asked. */
static fp16_len *fp16_class(sched_router *r, const char *cls, bool create) {
  for (int32_t i = 0; i < r->n_fp16; i++)
    if (!strncmp(r->fp16[i].task_class, cls, sizeof r->fp16[i].task_class - 1)) return &r->fp16[i];
  if (!create || r->n_fp16 >= SCHED_AUTO_MAX_CLASSES) return NULL;
  if (r->n_fp16 == r->cap_fp16) {
    int32_t nc = r->cap_fp16 ? 2 * r->cap_fp16 : 16;
    fp16_len *f = realloc(r->fp16, (size_t)nc * sizeof *f);
    if (!f) return NULL;
    r->fp16 = f;
    r->cap_fp16 = nc;
  }
  fp16_len *f = &r->fp16[r->n_fp16++];
  *f = (fp16_len){0};
  snprintf(f->task_class, sizeof f->task_class, "%s", cls);
  return f;
}

static sched_agg *agg_for(sched_router *r, const char *policy, const char *cls) {
  for (int32_t i = 0; i < r->n_aggs; i++)
    if (!strcmp(r->aggs[i].policy, policy) &&
        !strncmp(r->aggs[i].task_class, cls, sizeof r->aggs[i].task_class - 1))
      return &r->aggs[i];
  if (r->n_aggs >= 4 * SCHED_AUTO_MAX_CLASSES) return NULL;
  if (r->n_aggs == r->cap_aggs) {
    int32_t nc = r->cap_aggs ? 2 * r->cap_aggs : 16;
    sched_agg *a = realloc(r->aggs, (size_t)nc * sizeof *a);
    if (!a) return NULL;
    r->aggs = a;
    r->cap_aggs = nc;
  }
  sched_agg *a = &r->aggs[r->n_aggs++];
  *a = (sched_agg){0};
  snprintf(a->policy, sizeof a->policy, "%s", policy);
  snprintf(a->task_class, sizeof a->task_class, "%s", cls);
  return a;
}

void acct_finish(sched_router *r, rq *q, sched_rfinish f) {
  sched_trace *t = &q->trace;
  if (t->first_answer_at >= 0 && t->reasoning_tokens > 0)
    t->commit_gap = (double)(t->reasoning_tokens - (t->first_answer_at + 1)) / t->reasoning_tokens;
  int32_t fp16_tok = t->plan_tokens + t->fallback_tokens + t->fp16_tokens;
  /* an fp16 run of the original prompt that finished on its own */
  int32_t own_fp16 = -1;
  if (t->fp16_tokens > 0 && (f == SCHED_R_STOP || f == SCHED_R_LENGTH)) own_fp16 = t->fp16_tokens;
  if (t->fell_back && t->fallback_mode == SCHED_FALLBACK_RESTART && f == SCHED_R_LOOP_FALLBACK_DONE)
    own_fp16 = t->fallback_tokens;
  double tps[2][2];
  for (int w = 0; w < 2; w++)
    for (int b = 0; b < 2; b++)
      tps[w][b] = sched_router_tps(r, w, b ? 8 : 1);
  pthread_mutex_lock(&r->lock);
  double ref = t->exec_tokens;
  fp16_len *fl = fp16_class(r, q->task_class, own_fp16 >= 0);
  if (own_fp16 >= 0) {
    ref = own_fp16;
    if (fl) fl->sum += own_fp16, fl->n++;
  } else if (fl && fl->n >= SCHED_ACCT_MIN_FP16) {
    ref = fl->sum / (double)fl->n;
  }
  for (int b = 0; b < 2; b++) {
    double e = tps[0][b], p = tps[1][b];
    bool known = p > 0 && (t->exec_tokens == 0 || e > 0);
    t->est_s[b] = known ? (e > 0 ? t->exec_tokens / e : 0) + fp16_tok / p : 0;
    t->fp16_s[b] = known ? ref / p : 0;
    t->speedup[b] = known && t->est_s[b] > 0 ? t->fp16_s[b] / t->est_s[b] : 0;
  }
  sched_agg *a = agg_for(r, t->policy, q->task_class);
  if (a) {
    a->requests++;
    a->finished[f]++;
    a->loops += t->loop;
    a->commits += f == SCHED_R_LOOP_COMMIT;
    a->fallbacks += t->fell_back;
    a->path_finding += t->failure == SCHED_FAIL_PATH_FINDING;
    a->commitment += t->failure == SCHED_FAIL_COMMITMENT;
    a->think_opened += t->think_opened;
    a->think_closed += t->think_opened && t->think_closed;
    a->hit_budget += t->hit_budget;
    a->answered += q->answer != NULL;
    a->exec_tokens += (uint64_t)t->exec_tokens;
    a->plan_tokens += (uint64_t)t->plan_tokens;
    a->fallback_tokens += (uint64_t)(t->fallback_tokens + t->fp16_tokens);
    a->reasoning_tokens += (uint64_t)t->reasoning_tokens;
    a->total_s += t->total_s;
  }
  pthread_mutex_unlock(&r->lock);
}

void sched_router_aggs(sched_router *r, void (*fn)(const sched_agg *a, void *user), void *user) {
  pthread_mutex_lock(&r->lock);
  for (int32_t i = 0; i < r->n_aggs; i++)
    fn(&r->aggs[i], user);
  pthread_mutex_unlock(&r->lock);
}
