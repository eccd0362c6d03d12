/* The router's request flow: plan -> execute -> rescue (commit or fall
 * back). See sched_router.h; accounting and aggregates are in
 * sched_acct.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_router_internal.h"

const char *sched_rfinish_name(sched_rfinish f) {
  static const char *names[] = {
      "running", "stop",      "length",   "loop_commit", "loop_fallback_done",
      "loop",    "cancelled", "deadline", "error"};
  return f <= SCHED_R_ERROR ? names[f] : "?";
}

const char *sched_failure_name(sched_failure f) {
  return f == SCHED_FAIL_PATH_FINDING ? "path_finding"
         : f == SCHED_FAIL_COMMITMENT ? "commitment"
                                      : "none";
}

/* ---- small helpers ---------------------------------------------------- */

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}

static bool buf_add(rbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? 2 * b->cap : 256;
    while (nc < b->len + n + 1)
      nc *= 2;
    char *p = realloc(b->s, nc);
    if (!p) return false;
    b->s = p;
    b->cap = nc;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
  return true;
}

/* tmpl with {question} and {plan} replaced. */
static char *fill_template(const char *tmpl, const char *q, size_t q_len, const char *plan,
                           size_t plan_len) {
  rbuf b = {0};
  for (const char *s = tmpl; *s;) {
    bool ok;
    if (!strncmp(s, "{question}", 10)) {
      ok = buf_add(&b, q, q_len);
      s += 10;
    } else if (!strncmp(s, "{plan}", 6)) {
      ok = buf_add(&b, plan ? plan : "", plan_len);
      s += 6;
    } else {
      ok = buf_add(&b, s++, 1);
    }
    if (!ok) {
      free(b.s);
      return NULL;
    }
  }
  return b.s ? b.s : dup_n("", 0);
}

/* Remove every \boxed{...} and \fbox{...} span (nested braces) from a plan,
 * so the executor is not handed an answer to copy, and trim it. */
size_t sched_plan_clean(char *s, size_t n) {
  size_t w = 0;
  for (size_t i = 0; i < n;) {
    size_t kw = !strncmp(s + i, "\\boxed{", 7) ? 7 : !strncmp(s + i, "\\fbox{", 6) ? 6 : 0;
    if (kw && i + kw <= n) {
      size_t j = i + kw;
      int depth = 1;
      while (j < n && depth > 0) {
        depth += s[j] == '{' ? 1 : s[j] == '}' ? -1 : 0;
        j++;
      }
      i = j;
      continue;
    }
    s[w++] = s[i++];
  }
  size_t a = 0;
  while (a < w && (s[a] == ' ' || s[a] == '\n' || s[a] == '\t' || s[a] == '\r'))
    a++;
  while (w > a && (s[w - 1] == ' ' || s[w - 1] == '\n' || s[w - 1] == '\t' || s[w - 1] == '\r'))
    w--;
  memmove(s, s + a, w - a);
  s[w - a] = 0;
  return w - a;
}

/* Render messages (the last user message's content replaced by content
 * when not NULL) and tokenize. */
static bl_status render(sched_router *r, const rq *q, const char *content, bool think,
                        int32_t **ids, int32_t *n, bl_err *err) {
  chat_message *m = malloc(q->n_messages * sizeof *m);
  if (!m) return bl_fail(err, BL_ENOMEM, "out of memory rendering a prompt");
  memcpy(m, q->messages, q->n_messages * sizeof *m);
  if (content) {
    m[q->last_user].content = content;
    m[q->last_user].content_len = strlen(content);
  }
  chat_opts o = {.add_generation_prompt = true, .disable_thinking = !think};
  char *text = NULL;
  size_t len = 0, cnt = 0;
  bl_status st = chat_render(r->chat, m, q->n_messages, &o, &text, &len, err);
  free(m);
  if (!st) st = tok_encode(r->tok, text, len, true, ids, &cnt, err);
  free(text);
  *n = (int32_t)cnt;
  return st;
}

/* ---- requests --------------------------------------------------------- */

static void rq_free(rq *q) {
  if (!q) return;
  for (size_t i = 0; i < q->n_messages; i++)
    free((char *)q->messages[i].content), free((char *)q->messages[i].reasoning);
  free(q->messages);
  free(q->orig);
  free(q->exec);
  free(q->plan_ids);
  free(q->text_at);
  free(q->plan.s);
  free(q->labels);
  free(q->task_class);
  free(q->answer);
  free(q->graded);
  stop_set_free(&q->stop);
  rconf_put(q->conf);
  free(q);
}

static bl_status copy_messages(rq *q, const sched_rreq *in, bl_err *err) {
  q->messages = calloc(in->n_messages, sizeof *q->messages);
  if (!q->messages) return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  q->n_messages = in->n_messages;
  q->last_user = -1;
  for (size_t i = 0; i < in->n_messages; i++) {
    const chat_message *m = &in->messages[i];
    chat_message *c = &q->messages[i];
    *c = *m;
    c->content = m->content ? dup_n(m->content, m->content_len) : NULL;
    c->reasoning = m->reasoning ? dup_n(m->reasoning, m->reasoning_len) : NULL;
    if ((m->content && !c->content) || (m->reasoning && !c->reasoning))
      return bl_fail(err, BL_ENOMEM, "out of memory for a request");
    if (m->role == CHAT_USER) q->last_user = (int32_t)i;
  }
  return BL_OK;
}

static bool is_live(const sched_router *r, const rq *q) {
  for (int32_t i = 0; i < r->n_live; i++)
    if (r->live[i] == q) return true;
  return false;
}

static rq *take_live(sched_router *r, const rq *q) {
  for (int32_t i = 0; i < r->n_live; i++)
    if (r->live[i] == q) {
      r->live[i] = r->live[--r->n_live];
      return (rq *)q;
    }
  return NULL;
}

/* The replica of role `which` a new phase goes to (lock held): the healthy
 * one with the least load, ties to the lowest index; -1 when none is
 * healthy, with the first replica's error in why. */
static int32_t pick_replica(const sched_router *r, int which, char *why, size_t n) {
  const rrole *ro = &r->role[which];
  int32_t best = -1;
  for (int32_t i = 0; i < ro->n; i++) {
    if (!sched_pool_healthy(ro->p[i], best < 0 && i == 0 ? why : NULL, n)) continue;
    if (best < 0 || ro->load[i] < ro->load[best]) best = i;
  }
  return best;
}

/* The phase on q's replica ended (or never started): it no longer counts. */
static void phase_left(sched_router *r, rq *q) {
  pthread_mutex_lock(&r->lock);
  r->role[q->role].load[q->replica]--;
  pthread_mutex_unlock(&r->lock);
}

/* Submit one phase of q to a replica of role `which` (0 executor, 1
 * planner; the lock is not held). */
static bl_status submit_phase(sched_router *r, rq *q, rphase ph, int which, const int32_t *prompt,
                              int32_t n_prompt, int32_t n_generated, int32_t max_tokens,
                              bl_err *err) {
  bool plan = ph == PH_PLAN;
  sched_req sr = {.prompt = prompt,
                  .n_prompt = n_prompt,
                  .n_generated = n_generated,
                  .max_tokens = max_tokens,
                  .sampling = q->sampling,
                  .stop = plan ? NULL : &q->stop,
                  .ignore_eos = !plan && q->ignore_eos,
                  .priority = q->priority,
                  .deadline = q->deadline,
                  .loop = plan                             ? SCHED_LOOP_OFF
                          : q->pol.rescue && ph != PH_FP16 ? SCHED_LOOP_STOP
                                                           : SCHED_LOOP_OBSERVE,
                  .loop_params = q->pol.loop,
                  .task = plan ? SCHED_TASK_NONE : q->task,
                  .labels = q->labels,
                  .on_event = router_on_event,
                  .user = q};
  char why[SCHED_ERROR_MAX] = "";
  pthread_mutex_lock(&r->lock);
  int32_t at = pick_replica(r, which, why, sizeof why);
  if (at < 0 || q->cancelled) {
    pthread_mutex_unlock(&r->lock);
    return at < 0 ? bl_fail(err, BL_EDEVICE, "%s", why) : bl_fail(err, BL_ECANCELED, "cancelled");
  }
  sched_pool *pool = r->role[which].p[at];
  r->role[which].load[at]++;
  sr.id = r->next_iid++;
  q->phase = ph;
  q->pool = pool;
  q->role = which;
  q->replica = at;
  q->iid = sr.id;
  q->phase_t0 = sched_now();
  pthread_mutex_unlock(&r->lock);
  bl_status st = sched_submit(pool, &sr, err);
  if (st) { /* no event will come */
    phase_left(r, q);
    return st;
  }
  /* A cancel that raced with the submit may have reached the pool first and
   * been dropped; q may already be finished and freed, so it is only
   * touched while still live. */
  pthread_mutex_lock(&r->lock);
  if (is_live(r, q) && q->cancelled && q->iid == sr.id) sched_cancel(pool, sr.id);
  pthread_mutex_unlock(&r->lock);
  return BL_OK;
}

/* A pool the request will surely need is unhealthy: refuse it now
 * (BL_EDEVICE) rather than fail it later. One that turns unhealthy while
 * the request runs refuses the next phase's submit, which ends it ERROR. */
static bl_status check_health(sched_router *r, bool executor, bool planner, bl_err *err) {
  char why[SCHED_ERROR_MAX] = "";
  pthread_mutex_lock(&r->lock);
  bool ok = (!executor || pick_replica(r, 0, why, sizeof why) >= 0) &&
            (!planner || !r->role[1].n || pick_replica(r, 1, why, sizeof why) >= 0);
  pthread_mutex_unlock(&r->lock);
  return ok ? BL_OK : bl_fail(err, BL_EDEVICE, "%s", why);
}

static void emit(rq *q, sched_revent ev) {
  ev.id = q->id;
  if (!ev.text) ev.text = "";
  ev.trace = &q->trace;
  q->on_event(&ev, q->user);
}

static void finish(sched_router *r, rq *q, sched_rfinish f, const char *error) {
  double now = sched_now();
  q->trace.total_s = now - q->t0;
  acct_finish(r, q, f);
  emit(q, (sched_revent){.kind = SCHED_REV_FINAL,
                         .finish = f,
                         .error = error,
                         .answer = q->answer,
                         .graded = q->graded});
  pthread_mutex_lock(&r->lock);
  take_live(r, q);
  pthread_mutex_unlock(&r->lock);
  rq_free(q);
}

bl_status sched_router_submit(sched_router *r, const sched_rreq *in, bl_err *err) {
  if (!in->on_event) return bl_fail(err, BL_EINVAL, "a request needs an event callback");
  if (!in->messages == !in->prompt)
    return bl_fail(err, BL_EINVAL, "give either chat messages or prompt token ids");
  sched_policy pol;
  rconf *conf = rconf_get(r);
  bl_status st = router_policy(conf, in->policy, &in->overrides, &pol, err);
  rq *q = st ? NULL : calloc(1, sizeof *q);
  if (!st && !q) st = bl_fail(err, BL_ENOMEM, "out of memory for a request");
  if (st) {
    rconf_put(conf);
    return st;
  }
  q->conf = conf;
  snprintf(q->trace.policy, sizeof q->trace.policy, "%s", pol.name);
  if (pol.route == SCHED_ROUTE_AUTO) {
    q->auto_routed = true;
    q->trace.regime = sched_auto_route(&r->autor, in->task_class, &pol, &pol);
  }
  q->pol = pol;
  snprintf(q->trace.ran, sizeof q->trace.ran, "%s",
           pol.route == SCHED_ROUTE_FP16 ? "fp16"
           : pol.plan                    ? (pol.rescue ? "plan+rescue" : "plan")
                                         : (pol.rescue ? "rescue" : "direct"));
  q->r = r;
  q->id = in->id;
  q->t0 = sched_now();
  q->max_tokens = in->max_tokens;
  q->sampling = in->sampling;
  q->priority = in->priority;
  q->deadline = in->deadline;
  q->task = in->task;
  q->think = in->enable_thinking;
  q->ignore_eos = in->ignore_eos;
  q->on_event = in->on_event;
  q->user = in->user;
  q->trace.first_answer_at = q->trace.loop_fire_at = q->trace.loop_onset = -1;
  q->trace.commit_gap = -1;
  q->labels = in->labels ? dup_n(in->labels, strlen(in->labels)) : NULL;
  q->task_class = dup_n(in->task_class ? in->task_class : "default",
                        strlen(in->task_class ? in->task_class : "default"));
  if ((in->labels && !q->labels) || !q->task_class) {
    rq_free(q);
    return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  }
  bool needs_planner = pol.plan || pol.route == SCHED_ROUTE_FP16;
  if (needs_planner && !r->role[1].n)
    st = bl_fail(err, BL_EUNSUPPORTED, "policy %s needs the fp16 planner pool, and there is none",
                 pol.name);
  else if (pol.plan && !in->messages)
    st = bl_fail(err, BL_EUNSUPPORTED,
                 "policy %s plans, which needs chat messages (not prompt token ids)", pol.name);
  else if (in->max_tokens < 1)
    st = bl_fail(err, BL_EINVAL, "max_tokens %d: expected >= 1", in->max_tokens);
  if (!st) st = check_health(r, pol.route != SCHED_ROUTE_FP16, needs_planner, err);
  if (!st) st = stop_set_copy(&q->stop, in->stop, err);
  if (!st && in->messages) {
    st = copy_messages(q, in, err);
    if (!st && q->last_user < 0 && pol.plan)
      st = bl_fail(err, BL_EUNSUPPORTED, "policy %s plans, which needs a user message", pol.name);
    if (!st) st = render(r, q, NULL, q->think, &q->orig, &q->n_orig, err);
  } else if (!st) {
    q->orig = malloc((size_t)in->n_prompt * sizeof *q->orig);
    if (!q->orig)
      st = bl_fail(err, BL_ENOMEM, "out of memory for a request");
    else
      memcpy(q->orig, in->prompt, (size_t)in->n_prompt * sizeof *q->orig);
    q->n_orig = in->n_prompt;
  }
  if (!st && in->max_prompt > 0 && q->n_orig > in->max_prompt)
    st = bl_fail(err, BL_ERANGE, "the prompt has %d tokens; the limit is %d", q->n_orig,
                 in->max_prompt);
  if (!st && pol.plan) {
    const chat_message *u = &q->messages[q->last_user];
    char *pp = fill_template(q->conf->plan_prompt, u->content, u->content_len, NULL, 0);
    st = pp ? render(r, q, pp, false, &q->plan_ids, &q->n_plan_ids, err)
            : bl_fail(err, BL_ENOMEM, "out of memory for a request");
    free(pp);
  }
  q->text_at = st ? NULL : calloc((size_t)in->max_tokens, sizeof *q->text_at);
  if (!st && !q->text_at) st = bl_fail(err, BL_ENOMEM, "out of memory for a request");
  if (st) {
    rq_free(q);
    return st;
  }
  pthread_mutex_lock(&r->lock);
  if (r->n_live == r->cap_live) {
    int32_t nc = r->cap_live ? 2 * r->cap_live : 64;
    rq **l = realloc(r->live, (size_t)nc * sizeof *l);
    if (l) r->live = l, r->cap_live = nc;
  }
  bool room = r->n_live < r->cap_live;
  if (room) r->live[r->n_live++] = q;
  pthread_mutex_unlock(&r->lock);
  if (!room) {
    rq_free(q);
    return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  }
  if (pol.plan)
    st = submit_phase(r, q, PH_PLAN, 1, q->plan_ids, q->n_plan_ids, 0, pol.plan_max_tokens, err);
  else if (pol.route == SCHED_ROUTE_FP16)
    st = submit_phase(r, q, PH_FP16, 1, q->orig, q->n_orig, 0, q->max_tokens, err);
  else
    st = submit_phase(r, q, PH_EXEC, 0, q->orig, q->n_orig, 0, q->max_tokens, err);
  if (st) {
    pthread_mutex_lock(&r->lock);
    take_live(r, q);
    pthread_mutex_unlock(&r->lock);
    rq_free(q);
  }
  return st;
}

void sched_router_cancel(sched_router *r, uint64_t id) {
  pthread_mutex_lock(&r->lock);
  for (int32_t i = 0; i < r->n_live; i++) {
    rq *q = r->live[i];
    if (q->id != id || q->cancelled) continue;
    q->cancelled = true;
    sched_cancel(q->pool, q->iid);
  }
  pthread_mutex_unlock(&r->lock);
}

/* ---- phases ----------------------------------------------------------- */

static sched_rfinish plain_finish(sched_finish f) {
  switch (f) {
  case SCHED_FIN_STOP: return SCHED_R_STOP;
  case SCHED_FIN_LENGTH: return SCHED_R_LENGTH;
  case SCHED_FIN_CANCELLED: return SCHED_R_CANCELLED;
  case SCHED_FIN_DEADLINE: return SCHED_R_DEADLINE;
  case SCHED_FIN_LOOP: return SCHED_R_LOOP;
  default: return SCHED_R_ERROR;
  }
}

/* A later phase could not start: the request ends. */
static void phase_failed(sched_router *r, rq *q, bl_err *err) {
  finish(r, q, err->status == BL_ECANCELED ? SCHED_R_CANCELLED : SCHED_R_ERROR, err->msg);
}

static void plan_done(sched_router *r, rq *q, const sched_event *ev) {
  q->trace.plan_tokens = ev->n_generated;
  q->trace.plan_prompt_tokens = ev->n_prompt;
  q->trace.plan_s = sched_now() - q->phase_t0;
  if (ev->finish != SCHED_FIN_STOP && ev->finish != SCHED_FIN_LENGTH) {
    finish(r, q, plain_finish(ev->finish), ev->error);
    return;
  }
  if (q->plan_oom) {
    finish(r, q, SCHED_R_ERROR, "out of memory holding the plan");
    return;
  }
  q->plan.len = q->plan.s ? sched_plan_clean(q->plan.s, q->plan.len) : 0;
  emit(q, (sched_revent){.kind = SCHED_REV_PLAN, .text = q->plan.s, .text_len = q->plan.len});
  const chat_message *u = &q->messages[q->last_user];
  char *content =
      fill_template(q->conf->plan_insert, u->content, u->content_len, q->plan.s, q->plan.len);
  bl_err err = {0};
  bl_status st = content ? render(r, q, content, q->think, &q->exec, &q->n_exec, &err)
                         : bl_fail(&err, BL_ENOMEM, "out of memory inserting the plan");
  free(content);
  if (!st) st = submit_phase(r, q, PH_EXEC, 0, q->exec, q->n_exec, 0, q->max_tokens, &err);
  if (st) phase_failed(r, q, &err);
}

/* Keep the answer to report from the tracker of the run that stands. */
static void take_answer(rq *q, const sched_event *ev, const char *committed, size_t len) {
  free(q->answer);
  free(q->graded);
  q->answer = q->graded = NULL;
  const sched_answer *a = ev->answer;
  if (!committed && a) committed = sched_answer_current(a, &len, NULL);
  if (committed) q->answer = dup_n(committed, len);
  char g[SCHED_ANSWER_MAX + 1];
  if (q->answer)
    q->graded = dup_n(q->answer, len);
  else if (a && sched_answer_score(a, g, sizeof g))
    q->graded = dup_n(g, strlen(g));
  if (!a) return;
  q->trace.think_opened = a->think_opened;
  q->trace.think_closed = a->think_closed;
  q->trace.first_answer_at = a->first_at;
}

/* Trace fields of the run that stands, from its final event. */
static void stands(rq *q, const sched_event *ev) {
  q->trace.reasoning_tokens = ev->n_generated;
  q->trace.hit_budget = ev->finish == SCHED_FIN_LENGTH;
  take_answer(q, ev, NULL, 0);
}

/* A loop in the current phase: commit to the answer before the onset, or
 * fall back (once, from the executor), or end LOOP. */
static void rescue(sched_router *r, rq *q, const sched_event *ev) {
  size_t len = 0;
  const char *ans = ev->answer ? sched_answer_before(ev->answer, ev->loop_onset, &len, NULL) : NULL;
  if (!q->trace.loop) {
    q->trace.loop = true;
    q->trace.loop_fire_at = ev->loop_fire_at;
    q->trace.loop_onset = ev->loop_onset;
    q->trace.failure = ans ? SCHED_FAIL_COMMITMENT : SCHED_FAIL_PATH_FINDING;
  }
  emit(q, (sched_revent){.kind = SCHED_REV_LOOP});
  q->trace.reasoning_tokens = ev->n_generated;
  if (ans) {
    rbuf t = {0};
    bool open = ev->answer->think_opened && !ev->answer->think_closed;
    bool ok = buf_add(&t, open ? "\n</think>\n\n" : "\n\n", open ? 11 : 2) &&
              buf_add(&t, "The final answer is $\\boxed{", 28) && buf_add(&t, ans, len) &&
              buf_add(&t, "}$.", 3);
    take_answer(q, ev, ans, len);
    if (open) q->trace.think_closed = true;
    if (ok) emit(q, (sched_revent){.kind = SCHED_REV_COMMIT, .text = t.s, .text_len = t.len});
    free(t.s);
    finish(r, q, ok ? SCHED_R_LOOP_COMMIT : SCHED_R_ERROR, ok ? NULL : "out of memory committing");
    return;
  }
  if (q->phase != PH_EXEC || !r->role[1].n) {
    take_answer(q, ev, NULL, 0);
    finish(r, q, SCHED_R_LOOP, NULL);
    return;
  }
  bl_err err = {0};
  if (check_health(r, false, true, &err)) { /* no fallback to a broken pool; the output stands */
    take_answer(q, ev, NULL, 0);
    finish(r, q, SCHED_R_ERROR, err.msg);
    return;
  }
  /* fall back */
  q->trace.fell_back = true;
  q->trace.fallback_mode = q->pol.fallback;
  bool resume = q->pol.fallback == SCHED_FALLBACK_RESUME;
  int32_t cut = q->cut = resume ? ev->loop_onset : 0;
  size_t keep = cut > 0 ? q->text_at[cut - 1] : 0;
  q->out_bytes = keep;
  emit(q, (sched_revent){.kind = SCHED_REV_FALLBACK, .keep_bytes = keep});
  bl_status st;
  if (resume) {
    int32_t n = ev->n_prompt + cut;
    free(q->exec);
    q->exec = malloc((size_t)n * sizeof *q->exec);
    q->n_exec = n;
    st = q->exec ? BL_OK : bl_fail(&err, BL_ENOMEM, "out of memory for the fallback");
    if (!st) {
      memcpy(q->exec, ev->tokens, (size_t)n * sizeof *q->exec);
      st = submit_phase(r, q, PH_FALLBACK, 1, q->exec, n, cut, q->max_tokens, &err);
    }
  } else {
    st = submit_phase(r, q, PH_FALLBACK, 1, q->orig, q->n_orig, 0, q->max_tokens, &err);
  }
  if (st) phase_failed(r, q, &err);
}

static void run_done(sched_router *r, rq *q, const sched_event *ev) {
  double dt = sched_now() - q->phase_t0;
  if (q->phase == PH_FALLBACK) {
    q->trace.fallback_s = dt;
    q->trace.fallback_tokens = ev->n_generated - q->cut; /* a resumed run's prefix was 2-bit */
    q->trace.fallback_prompt_tokens = ev->n_prompt;
  } else if (q->phase == PH_FP16) {
    q->trace.exec_s = dt;
    q->trace.fp16_tokens = ev->n_generated;
    q->trace.fp16_prompt_tokens = ev->n_prompt;
  } else {
    q->trace.exec_s = dt;
    q->trace.exec_tokens = ev->n_generated;
    q->trace.exec_prompt_tokens = ev->n_prompt;
  }
  if (q->phase == PH_EXEC && ev->loop_fire_at >= 0 && ev->finish != SCHED_FIN_LOOP &&
      !q->trace.loop) { /* observed only */
    q->trace.loop = true;
    q->trace.loop_fire_at = ev->loop_fire_at;
    q->trace.loop_onset = ev->loop_onset;
    q->trace.failure = ev->answer && sched_answer_before(ev->answer, ev->loop_onset, NULL, NULL)
                           ? SCHED_FAIL_COMMITMENT
                           : SCHED_FAIL_PATH_FINDING;
  }
  if (q->phase == PH_EXEC && q->auto_routed && ev->finish != SCHED_FIN_CANCELLED &&
      ev->finish != SCHED_FIN_ERROR) {
    bool looped = ev->loop_fire_at >= 0;
    bool will_fall_back =
        ev->finish == SCHED_FIN_LOOP && r->role[1].n &&
        !(ev->answer && sched_answer_before(ev->answer, ev->loop_onset, NULL, NULL));
    sched_outcome o = {.loop = looped,
                       .fallback = will_fall_back,
                       .think_opened = ev->answer && ev->answer->think_opened,
                       .think_closed = ev->answer && ev->answer->think_closed};
    sched_auto_observe(&r->autor, q->task_class, &o);
  }
  if (ev->finish == SCHED_FIN_LOOP) {
    rescue(r, q, ev);
    return;
  }
  stands(q, ev);
  sched_rfinish f = plain_finish(ev->finish);
  if (q->phase == PH_FALLBACK && (f == SCHED_R_STOP || f == SCHED_R_LENGTH))
    f = SCHED_R_LOOP_FALLBACK_DONE;
  finish(r, q, f, ev->error);
}

void router_on_event(const sched_event *ev, void *user) {
  rq *q = user;
  sched_router *r = q->r;
  if (ev->finish == SCHED_RUNNING) {
    if (q->phase == PH_PLAN) {
      if (!buf_add(&q->plan, ev->text, ev->text_len)) q->plan_oom = true;
      return;
    }
    if (!q->first_token) {
      q->first_token = true;
      q->trace.ttft_s = sched_now() - q->t0;
    }
    q->out_bytes += ev->text_len;
    int32_t at = ev->n_generated - 1;
    if (q->phase == PH_EXEC && at >= 0 && at < q->max_tokens) q->text_at[at] = q->out_bytes;
    const model *m = sched_pool_model(q->pool);
    emit(q, (sched_revent){.kind = SCHED_REV_TOKEN,
                           .pool = sched_pool_name(q->pool),
                           .precision = model_prec_name(m->prec),
                           .token = ev->token,
                           .text = ev->text,
                           .text_len = ev->text_len});
    return;
  }
  phase_left(r, q);
  if (q->phase == PH_PLAN)
    plan_done(r, q, ev);
  else
    run_done(r, q, ev);
}
