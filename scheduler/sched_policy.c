/* Policies, overrides and the auto router. See sched_policy.h. */
#include "sched_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *sched_fallback_name(sched_fallback f) {
  return f == SCHED_FALLBACK_RESUME ? "resume" : "restart";
}

const char *sched_regime_name(sched_regime r) {
  switch (r) {
  case SCHED_REGIME_STABLE: return "stable";
  case SCHED_REGIME_DEGRADED: return "degraded";
  case SCHED_REGIME_COLLAPSE: return "collapse";
  }
  return "?";
}

bl_status sched_policy_builtin(const char *name, sched_policy *out, bl_err *err) {
  static const struct {
    const char *name;
    sched_route route;
    bool plan, rescue;
  } known[] = {
      {"direct", SCHED_ROUTE_EXECUTOR, false, false},
      {"rescue", SCHED_ROUTE_EXECUTOR, false, true},
      {"plan", SCHED_ROUTE_EXECUTOR, true, false},
      {"plan+rescue", SCHED_ROUTE_EXECUTOR, true, true},
      {"fp16", SCHED_ROUTE_FP16, false, false},
      {"auto", SCHED_ROUTE_AUTO, false, true},
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    if (strcmp(name, known[i].name)) continue;
    *out = (sched_policy){.route = known[i].route,
                          .plan = known[i].plan,
                          .rescue = known[i].rescue,
                          .allow_overrides = true};
    snprintf(out->name, sizeof out->name, "%s", name);
    return sched_policy_check(out, err);
  }
  return bl_fail(err, BL_EINVAL,
                 "unknown policy \"%s\" (built in: direct, rescue, plan, plan+rescue, fp16, auto)",
                 name);
}

bl_status sched_policy_check(sched_policy *p, bl_err *err) {
  if (!p->loop.window) p->loop.window = 1024;
  if (!p->loop.ngram) p->loop.ngram = 20;
  if (!p->loop.min_count) p->loop.min_count = 4;
  if (!p->plan_max_tokens) p->plan_max_tokens = 256;
  if (!p->name[0]) return bl_fail(err, BL_EINVAL, "a policy needs a name");
  if (p->loop.ngram < 1 || p->loop.ngram > p->loop.window || p->loop.min_count < 2)
    return bl_fail(err, BL_EINVAL,
                   "policy %s: loop window %d, ngram %d, min_count %d: need 1 <= ngram <= window "
                   "and min_count >= 2",
                   p->name, p->loop.window, p->loop.ngram, p->loop.min_count);
  if (p->plan_max_tokens < 1)
    return bl_fail(err, BL_EINVAL, "policy %s: plan_max_tokens %d: expected >= 1", p->name,
                   p->plan_max_tokens);
  if (p->fallback != SCHED_FALLBACK_RESTART && p->fallback != SCHED_FALLBACK_RESUME)
    return bl_fail(err, BL_EINVAL, "policy %s: unknown fallback mode %d", p->name,
                   (int)p->fallback);
  return BL_OK;
}

bl_status sched_policy_apply(const sched_policy *base, const sched_policy_override *o,
                             const sched_policy_limits *lim, sched_policy *out, bl_err *err) {
  *out = *base;
  bool any = o->window || o->ngram || o->min_count || o->plan_max_tokens || o->fallback >= 0;
  if (!any) return BL_OK;
  if (!base->allow_overrides)
    return bl_fail(err, BL_EINVAL, "policy %s does not allow overrides", base->name);
  int32_t max_window = lim && lim->max_window ? lim->max_window : 8192;
  int32_t max_plan = lim && lim->max_plan_tokens ? lim->max_plan_tokens : 1024;
  if (o->window < 0 || o->ngram < 0 || o->min_count < 0 || o->plan_max_tokens < 0 ||
      o->fallback > SCHED_FALLBACK_RESUME)
    return bl_fail(err, BL_EINVAL, "policy override: negative or unknown value");
  if (o->window > max_window)
    return bl_fail(err, BL_ERANGE, "loop window %d: the limit is %d", o->window, max_window);
  if (o->plan_max_tokens > max_plan)
    return bl_fail(err, BL_ERANGE, "plan_max_tokens %d: the limit is %d", o->plan_max_tokens,
                   max_plan);
  if (o->window) out->loop.window = o->window;
  if (o->ngram) out->loop.ngram = o->ngram;
  if (o->min_count) out->loop.min_count = o->min_count;
  if (o->plan_max_tokens) out->plan_max_tokens = o->plan_max_tokens;
  if (o->fallback >= 0) out->fallback = (sched_fallback)o->fallback;
  return sched_policy_check(out, err);
}

/* ---- auto ------------------------------------------------------------- */

enum { OUT_LOOP = 1, OUT_FALLBACK = 2, OUT_THINK_OPENED = 4, OUT_THINK_CLOSED = 8 };

bl_status sched_auto_init(sched_auto *a, bl_err *err) {
  *a = (sched_auto){0};
  a->classes = calloc(SCHED_AUTO_MAX_CLASSES + 1, sizeof *a->classes);
  if (!a->classes) return bl_fail(err, BL_ENOMEM, "out of memory for the auto router");
  pthread_mutex_init(&a->lock, NULL);
  return BL_OK;
}

void sched_auto_free(sched_auto *a) {
  if (!a->classes) return;
  pthread_mutex_destroy(&a->lock);
  free(a->classes);
  a->classes = NULL;
}

/* The class named cls (created on first use); the lock is held. */
static sched_auto_class *find_class(sched_auto *a, const char *cls, bool create) {
  if (!cls || !*cls) cls = "default";
  for (int32_t i = 0; i < a->n_classes; i++)
    if (!strncmp(a->classes[i].name, cls, sizeof a->classes[i].name - 1)) return &a->classes[i];
  if (!create) return NULL;
  /* one slot beyond the limit is kept for "other" */
  if (a->n_classes >= SCHED_AUTO_MAX_CLASSES && strcmp(cls, "other"))
    return find_class(a, "other", true);
  sched_auto_class *c = &a->classes[a->n_classes++];
  *c = (sched_auto_class){0};
  snprintf(c->name, sizeof c->name, "%s", cls);
  return c;
}

static void rates(const sched_auto_class *c, double *loop, double *fb, double *tc) {
  int32_t n_loop = 0, n_fb = 0, n_open = 0, n_closed = 0;
  for (int32_t i = 0; i < c->n; i++) {
    uint8_t b = c->ring[i];
    n_loop += !!(b & OUT_LOOP);
    n_fb += !!(b & OUT_FALLBACK);
    n_open += !!(b & OUT_THINK_OPENED);
    n_closed += (b & OUT_THINK_OPENED) && (b & OUT_THINK_CLOSED);
  }
  *loop = c->n ? (double)n_loop / c->n : 0;
  *fb = c->n ? (double)n_fb / c->n : 0;
  *tc = n_open ? (double)n_closed / n_open : 1; /* traces that never think cannot fail to close */
}

/* Hysteresis: a regime is entered at one threshold and left at a looser
 * one, so a class near a boundary does not flip on every outcome. */
static sched_regime next_regime(const sched_auto_class *c) {
  if (c->n < SCHED_AUTO_MIN) return c->regime;
  double loop, fb, tc;
  rates(c, &loop, &fb, &tc);
  bool collapse = c->regime == SCHED_REGIME_COLLAPSE ? fb > 0.30 : fb >= 0.50;
  if (collapse) return SCHED_REGIME_COLLAPSE;
  bool degraded =
      c->regime != SCHED_REGIME_STABLE ? (loop > 0.10 || tc < 0.90) : (loop >= 0.20 || tc <= 0.80);
  return degraded ? SCHED_REGIME_DEGRADED : SCHED_REGIME_STABLE;
}

sched_regime sched_auto_route(sched_auto *a, const char *cls, const sched_policy *base,
                              sched_policy *out) {
  pthread_mutex_lock(&a->lock);
  sched_auto_class *c = find_class(a, cls, true);
  sched_regime r = c ? c->regime : SCHED_REGIME_STABLE;
  uint64_t nth = c ? c->routed++ : 0;
  pthread_mutex_unlock(&a->lock);
  *out = *base;
  out->route = SCHED_ROUTE_EXECUTOR;
  out->rescue = true;
  out->plan = r != SCHED_REGIME_STABLE;
  if (r == SCHED_REGIME_COLLAPSE && nth % SCHED_AUTO_PROBE != 0) {
    out->route = SCHED_ROUTE_FP16;
    out->plan = false;
  }
  return r;
}

void sched_auto_observe(sched_auto *a, const char *cls, const sched_outcome *o) {
  uint8_t b = (uint8_t)((o->loop ? OUT_LOOP : 0) | (o->fallback ? OUT_FALLBACK : 0) |
                        (o->think_opened ? OUT_THINK_OPENED : 0) |
                        (o->think_closed ? OUT_THINK_CLOSED : 0));
  pthread_mutex_lock(&a->lock);
  sched_auto_class *c = find_class(a, cls, true);
  if (c) {
    c->ring[c->head] = b;
    c->head = (c->head + 1) % SCHED_AUTO_WINDOW;
    if (c->n < SCHED_AUTO_WINDOW) c->n++;
    c->regime = next_regime(c);
  }
  pthread_mutex_unlock(&a->lock);
}

bool sched_auto_rates(sched_auto *a, const char *cls, sched_regime *regime, int32_t *n,
                      double *loop_rate, double *fallback_rate, double *think_closed_rate) {
  pthread_mutex_lock(&a->lock);
  sched_auto_class *c = find_class(a, cls, false);
  if (c) {
    *regime = c->regime;
    *n = c->n;
    rates(c, loop_rate, fallback_rate, think_closed_rate);
  }
  pthread_mutex_unlock(&a->lock);
  return c != NULL;
}
