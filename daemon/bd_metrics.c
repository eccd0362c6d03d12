/* ballastd's metrics: the counters and histograms of bd_metrics, and the
 * /metrics page in Prometheus text format 0.0.4.
 *
 * Every metric family is one row of BD_FAMILIES below: its name, type,
 * labels, help text and where its value comes from. The page, its HELP and
 * TYPE lines and docs/metrics.md (bd_metrics_doc) are all generated from
 * that table, so a metric is added in one place. The table lives here, not
 * in the docs: tests/unit/daemon/test_metrics compares docs/metrics.md with
 * bd_metrics_doc() byte for byte.
 *
 * Invariants of the page: each family appears once, as a HELP line, a TYPE
 * line and then all of its samples (possibly none), so a family whose labels
 * vary is never split; label values are escaped (\\, \", \n); histogram
 * buckets are cumulative and end with le="+Inf", then _sum and _count.
 *
 * Locks: updates take m->lock briefly. Rendering copies the counters under
 * m->lock, the router's aggregates under the router's lock and auto's class
 * names under auto's lock, one at a time, then formats with no lock held. */
#include "bd_metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- bd_text ------------------------------------------------------------ */

/* An empty text points here so buf is always a string; never written, since
 * the first append allocates. */
static char text_empty[1];

void bd_text_init(bd_text *t) { *t = (bd_text){.buf = text_empty}; }

void bd_text_free(bd_text *t) {
  if (t->buf != text_empty) free(t->buf);
  bd_text_init(t);
}

/* Room for n more bytes and the NUL; false (and failed) when out of memory. */
static bool text_reserve(bd_text *t, size_t n) {
  if (t->failed) return false;
  if (t->len + n + 1 <= t->cap) return true;
  size_t cap = t->cap ? t->cap : 256;
  while (cap < t->len + n + 1) {
    if (cap > SIZE_MAX / 2) goto fail;
    cap *= 2;
  }
  char *b = realloc(t->buf == text_empty ? NULL : t->buf, cap);
  if (!b) goto fail;
  if (t->buf == text_empty) b[0] = 0;
  t->buf = b;
  t->cap = cap;
  return true;
fail:
  t->failed = true;
  return false;
}

void bd_text_append(bd_text *t, const char *s, size_t n) {
  if (!text_reserve(t, n)) return;
  memcpy(t->buf + t->len, s, n);
  t->len += n;
  t->buf[t->len] = 0;
}

void bd_text_printf(bd_text *t, const char *fmt, ...) {
  if (t->failed) return;
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) {
    t->failed = true;
  } else if ((size_t)n < sizeof small) {
    bd_text_append(t, small, (size_t)n);
  } else if (text_reserve(t, (size_t)n)) {
    vsnprintf(t->buf + t->len, (size_t)n + 1, fmt, ap2);
    t->len += (size_t)n;
  }
  va_end(ap2);
}

/* ---- histograms ----------------------------------------------------------- */

/* Bucket upper bounds, seconds: roughly x2.5 steps. Request latencies run
 * from a few ms (queue, TTFT of a short prompt) to minutes (a long
 * reasoning trace); gaps between chunks from 1 ms to a stall of seconds. */
static const double bounds_req[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                    2.5,   5,    10,    25,   50,  100,  300};
static const double bounds_itl[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))
_Static_assert(N_OF(bounds_req) <= BD_HIST_MAX_BUCKETS, "too many buckets");
_Static_assert(N_OF(bounds_itl) <= BD_HIST_MAX_BUCKETS, "too many buckets");

static void hist_init(bd_hist *h, const double *bounds, int n) {
  *h = (bd_hist){.bounds = bounds, .n_bounds = n};
}

/* Caller holds the lock. A value equal to a bound counts in that bound's
 * bucket (Prometheus's le, "less or equal"). NaN and infinities are dropped:
 * one would make _sum useless forever; a negative time (clock skew) counts
 * as 0. */
static void hist_observe_locked(bd_hist *h, double v) {
  if (!isfinite(v)) return;
  if (v < 0) v = 0;
  int i = 0;
  while (i < h->n_bounds && v > h->bounds[i])
    i++;
  h->counts[i]++;
  h->count++;
  h->sum += v;
}

/* ---- updates ---------------------------------------------------------- */

bl_status bd_metrics_init(bd_metrics *m, bl_err *err) {
  memset(m, 0, sizeof *m);
  if (pthread_mutex_init(&m->lock, NULL))
    return bl_fail(err, BL_ENOMEM, "metrics: cannot create a mutex");
  hist_init(&m->ttft, bounds_req, N_OF(bounds_req));
  hist_init(&m->e2e, bounds_req, N_OF(bounds_req));
  hist_init(&m->queue, bounds_req, N_OF(bounds_req));
  hist_init(&m->itl, bounds_itl, N_OF(bounds_itl));
  return BL_OK;
}

void bd_metrics_destroy(bd_metrics *m) { pthread_mutex_destroy(&m->lock); }

void bd_metrics_accepted(bd_metrics *m) {
  pthread_mutex_lock(&m->lock);
  m->requests++;
  pthread_mutex_unlock(&m->lock);
}

void bd_metrics_rejected(bd_metrics *m, int grpc_code) {
  if (grpc_code < 0 || grpc_code >= BD_N_GRPC_CODES) return;
  pthread_mutex_lock(&m->lock);
  m->rejected[grpc_code]++;
  pthread_mutex_unlock(&m->lock);
}

void bd_metrics_itl(bd_metrics *m, double s) {
  pthread_mutex_lock(&m->lock);
  hist_observe_locked(&m->itl, s);
  pthread_mutex_unlock(&m->lock);
}

/* A negative ttft_s / queue_s / e2e_s means "did not happen" (no token was
 * sent, the request never ran) and is not observed. */
void bd_metrics_finished(bd_metrics *m, sched_rfinish f, double ttft_s, double e2e_s,
                         double queue_s, int32_t tokens) {
  pthread_mutex_lock(&m->lock);
  if (f >= SCHED_R_STOP && f <= SCHED_R_ERROR) m->finished[f]++;
  if (ttft_s >= 0) hist_observe_locked(&m->ttft, ttft_s);
  if (e2e_s >= 0) hist_observe_locked(&m->e2e, e2e_s);
  if (queue_s >= 0) hist_observe_locked(&m->queue, queue_s);
  if (tokens > 0) m->streamed_tokens += (uint64_t)tokens;
  pthread_mutex_unlock(&m->lock);
}

void bd_metrics_slow_client(bd_metrics *m) {
  pthread_mutex_lock(&m->lock);
  m->slow_client_cuts++;
  pthread_mutex_unlock(&m->lock);
}

void bd_metrics_reload(bd_metrics *m, bool ok) {
  pthread_mutex_lock(&m->lock);
  if (ok)
    m->reloads_ok++;
  else
    m->reloads_failed++;
  pthread_mutex_unlock(&m->lock);
}

/* ---- sample formatting ---------------------------------------------------- */

/* The shortest decimal that reads back as v (as Prometheus's Go code
 * writes floats), and the format's spellings of NaN and infinities. */
static void put_value(bd_text *t, double v) {
  char s[40];
  if (isnan(v)) {
    snprintf(s, sizeof s, "NaN");
  } else if (isinf(v)) {
    snprintf(s, sizeof s, "%s", v > 0 ? "+Inf" : "-Inf");
  } else {
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(s, sizeof s, "%.*g", prec, v);
      if (strtod(s, NULL) == v) break;
    }
  }
  bd_text_printf(t, "%s", s);
}

static void put_escaped(bd_text *t, const char *s) {
  for (const char *p = s; *p; p++) {
    if (*p == '\\')
      bd_text_append(t, "\\\\", 2);
    else if (*p == '"')
      bd_text_append(t, "\\\"", 2);
    else if (*p == '\n')
      bd_text_append(t, "\\n", 2);
    else
      bd_text_append(t, p, 1);
  }
}

/* One sample line: name+suffix{k0="v0",...} value. kv holds n_kv
 * (name, value) pairs; a NULL value is written as "". */
static void put_sample(bd_text *t, const char *name, const char *suffix, const char *const *kv,
                       int n_kv, double v) {
  bd_text_printf(t, "%s%s", name, suffix);
  for (int i = 0; i < n_kv; i++) {
    bd_text_printf(t, "%s%s=\"", i ? "," : "{", kv[2 * i]);
    put_escaped(t, kv[2 * i + 1] ? kv[2 * i + 1] : "");
    bd_text_append(t, "\"", 1);
  }
  bd_text_append(t, n_kv ? "} " : " ", n_kv ? 2 : 1);
  put_value(t, v);
  bd_text_append(t, "\n", 1);
}

/* ---- what a render sees --------------------------------------------------- */

typedef struct auto_row {
  char name[64];
  sched_regime regime;
  int32_t n;
  double loop, fallback, think_closed;
} auto_row;

typedef struct rctx {
  bd_metrics m; /* a copy of the counters (its lock is never used) */
  bd_server_view sv;
  const bd_pool_view *pools;
  int n_pools;
  sched_agg *aggs;
  int32_t n_aggs, cap_aggs;
  auto_row *autos;
  int32_t n_autos;
  bool oom;
  bd_text *out;
} rctx;

typedef enum scope {
  ONE,    /* one sample, no labels */
  POOL,   /* one per pool: {pool} */
  AGG,    /* one per router aggregate: {policy,task_class} */
  AUTO,   /* one per auto class: {task_class} */
  CUSTOM, /* the row's own emitter */
} scope;

typedef enum ftype { COUNTER, GAUGE, HISTOGRAM } ftype;
static const char *const type_names[] = {"counter", "gauge", "histogram"};

typedef struct family family;
typedef void (*emit_fn)(rctx *c, const family *f);
struct family {
  int id;
  scope sc;
  const char *name;
  ftype type;
  const char *labels; /* for the docs; the emitters write these */
  const char *help;
  emit_fn emit; /* CUSTOM rows */
};

/* ---- CUSTOM emitters ------------------------------------------------------ */

static const char *const grpc_code_names[BD_N_GRPC_CODES] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

/* Only codes seen: most of the 17 are never a reason to refuse a request. */
static void emit_rejected(rctx *c, const family *f) {
  for (int i = 0; i < BD_N_GRPC_CODES; i++)
    if (c->m.rejected[i]) {
      const char *kv[] = {"code", grpc_code_names[i]};
      put_sample(c->out, f->name, "", kv, 1, (double)c->m.rejected[i]);
    }
}

static void emit_finished(rctx *c, const family *f) {
  for (int r = SCHED_R_STOP; r <= SCHED_R_ERROR; r++) {
    const char *kv[] = {"reason", sched_rfinish_name((sched_rfinish)r)};
    put_sample(c->out, f->name, "", kv, 1, (double)c->m.finished[r]);
  }
}

static void emit_reloads(rctx *c, const family *f) {
  const char *ok[] = {"result", "ok"}, *failed[] = {"result", "failed"};
  put_sample(c->out, f->name, "", ok, 1, (double)c->m.reloads_ok);
  put_sample(c->out, f->name, "", failed, 1, (double)c->m.reloads_failed);
}

static void emit_hist(rctx *c, const family *f, const bd_hist *h) {
  uint64_t cum = 0;
  char le[32];
  const char *kv[] = {"le", le};
  for (int i = 0; i <= h->n_bounds; i++) {
    cum += h->counts[i];
    if (i < h->n_bounds)
      snprintf(le, sizeof le, "%g", h->bounds[i]);
    else
      snprintf(le, sizeof le, "+Inf");
    put_sample(c->out, f->name, "_bucket", kv, 1, (double)cum);
  }
  put_sample(c->out, f->name, "_sum", NULL, 0, h->sum);
  put_sample(c->out, f->name, "_count", NULL, 0, (double)h->count);
}

static void emit_ttft(rctx *c, const family *f) { emit_hist(c, f, &c->m.ttft); }
static void emit_itl(rctx *c, const family *f) { emit_hist(c, f, &c->m.itl); }
static void emit_e2e(rctx *c, const family *f) { emit_hist(c, f, &c->m.e2e); }
static void emit_queue(rctx *c, const family *f) { emit_hist(c, f, &c->m.queue); }

/* A figure of 0 means "not measured" (no step of that batch size yet, no
 * calibration), so it is left out rather than shown as a real 0. */
static void emit_tps(rctx *c, const family *f) {
  static const int32_t batch[2] = {1, 8};
  for (int i = 0; i < c->n_pools; i++) {
    const bd_pool_view *p = &c->pools[i];
    for (int b = 0; b < 2; b++) {
      double v[2] = {sched_tps_at(&p->stats, batch[b], true), p->calibrated_tps[b]};
      for (int src = 0; src < 2; src++) {
        if (!(v[src] > 0)) continue;
        const char *kv[] = {"pool",  p->name,       "precision", p->precision,
                            "batch", b ? "8" : "1", "source",    src ? "calibrated" : "live"};
        put_sample(c->out, f->name, "", kv, 4, v[src]);
      }
    }
  }
}

static void emit_pol_finished(rctx *c, const family *f) {
  for (int32_t i = 0; i < c->n_aggs; i++) {
    const sched_agg *a = &c->aggs[i];
    for (int r = SCHED_R_STOP; r <= SCHED_R_ERROR; r++) {
      const char *kv[] = {"policy",      a->policy, "task_class",
                          a->task_class, "reason",  sched_rfinish_name((sched_rfinish)r)};
      put_sample(c->out, f->name, "", kv, 3, (double)a->finished[r]);
    }
  }
}

static void emit_pol_failures(rctx *c, const family *f) {
  for (int32_t i = 0; i < c->n_aggs; i++) {
    const sched_agg *a = &c->aggs[i];
    for (int k = 0; k < 2; k++) {
      const char *kv[] = {
          "policy",     a->policy,
          "task_class", a->task_class,
          "kind",       sched_failure_name(k ? SCHED_FAIL_COMMITMENT : SCHED_FAIL_PATH_FINDING)};
      put_sample(c->out, f->name, "", kv, 3, (double)(k ? a->commitment : a->path_finding));
    }
  }
}

static void emit_regime(rctx *c, const family *f) {
  for (int32_t i = 0; i < c->n_autos; i++)
    for (int g = SCHED_REGIME_STABLE; g <= SCHED_REGIME_COLLAPSE; g++) {
      const char *kv[] = {"task_class", c->autos[i].name, "regime",
                          sched_regime_name((sched_regime)g)};
      put_sample(c->out, f->name, "", kv, 2, c->autos[i].regime == (sched_regime)g);
    }
}

/* ---- the table -------------------------------------------------------------
 * X(id, scope, name, type, labels, help, how): how is V(expression) for the
 * ONE / POOL / AGG / AUTO scopes, evaluated with c (rctx), pv and s (the pool view and its
 * sched_stats), a (the sched_agg) or k (the auto_row) in scope, or
 * F(emitter) for CUSTOM rows. Help text must not hold '|' (a docs cell). */
#define BD_FAMILIES(X)                                                                             \
  X(REQUESTS, ONE, "ballast_requests_total", COUNTER, "", "Generate calls accepted",               \
    V(c->m.requests))                                                                              \
  X(REJECTED, CUSTOM, "ballast_requests_rejected_total", COUNTER, "code",                          \
    "Generate calls refused before running, by gRPC status name (codes seen so far)",              \
    F(emit_rejected))                                                                              \
  X(FINISHED, CUSTOM, "ballast_requests_finished_total", COUNTER, "reason",                        \
    "Generate calls finished, by reason: stop, length, loop_commit, loop_fallback_done, loop, "    \
    "cancelled, deadline, error",                                                                  \
    F(emit_finished))                                                                              \
  X(STREAMED, ONE, "ballast_streamed_tokens_total", COUNTER, "",                                   \
    "Tokens of finished requests sent to clients", V(c->m.streamed_tokens))                        \
  X(SLOW_CUTS, ONE, "ballast_slow_client_cuts_total", COUNTER, "",                                 \
    "Streams cut off because the client left more than limits.stream_buffer_bytes unread",         \
    V(c->m.slow_client_cuts))                                                                      \
  X(RELOADS, CUSTOM, "ballast_reloads_total", COUNTER, "result",                                   \
    "Config reloads (SIGHUP, POST /v1/reload, Reload RPC), by result: ok or failed",               \
    F(emit_reloads))                                                                               \
  X(TTFT, CUSTOM, "ballast_ttft_seconds", HISTOGRAM, "",                                           \
    "Time from accepting a Generate call to its first streamed token", F(emit_ttft))               \
  X(ITL, CUSTOM, "ballast_itl_seconds", HISTOGRAM, "",                                             \
    "Gap between two consecutive tokens of one stream, as generated", F(emit_itl))                 \
  X(E2E, CUSTOM, "ballast_e2e_seconds", HISTOGRAM, "",                                             \
    "Time from accepting a Generate call to its final message", F(emit_e2e))                       \
  X(QUEUE, CUSTOM, "ballast_queue_seconds", HISTOGRAM, "",                                         \
    "Time from a call's arrival to the router accepting it (decode, checks, tokenize)",            \
    F(emit_queue))                                                                                 \
  X(ACTIVE, ONE, "ballast_active_streams", GAUGE, "", "Generate streams open now",                 \
    V(c->sv.active_streams))                                                                       \
  X(READY, ONE, "ballast_ready", GAUGE, "",                                                        \
    "1 when serving (models loaded, not draining, executor pool healthy), else 0", V(c->sv.ready)) \
  X(DRAINING, ONE, "ballast_draining", GAUGE, "", "1 while draining after SIGTERM or SIGINT",      \
    V(c->sv.draining))                                                                             \
  X(CONFIG_GEN, ONE, "ballast_config_generation", GAUGE, "",                                       \
    "Generation of the config in use (1 at start, +1 per successful reload)",                      \
    V(c->sv.config_generation))                                                                    \
  X(UPTIME, ONE, "ballast_uptime_seconds", GAUGE, "", "Seconds since the daemon started",          \
    V(c->sv.uptime_s))                                                                             \
  X(POOL_HEALTHY, POOL, "ballast_pool_healthy", GAUGE, "pool",                                     \
    "1 while one of the pool's replicas is healthy; 0 once device errors made all unhealthy "      \
    "(requests that need the pool are refused)",                                                   \
    V(s->healthy))                                                                                 \
  X(POOL_REPLICAS, POOL, "ballast_pool_replicas", GAUGE, "pool",                                   \
    "Data-parallel replicas of the pool (pools.NAME.replicas)", V(pv->replicas))                   \
  X(POOL_REPLICAS_OK, POOL, "ballast_pool_replicas_healthy", GAUGE, "pool",                        \
    "Replicas of the pool not failed by a device error (each is unhealthy for good after one)",    \
    V(pv->replicas_healthy))                                                                       \
  X(POOL_RUNNING, POOL, "ballast_pool_running", GAUGE, "pool", "Sequences running in the pool",    \
    V(s->running))                                                                                 \
  X(POOL_WAITING, POOL, "ballast_pool_waiting", GAUGE, "pool",                                     \
    "Requests waiting for admission (new or preempted)", V(s->waiting))                            \
  X(KV_USED, POOL, "ballast_kv_blocks_used", GAUGE, "pool", "KV cache blocks in use",              \
    V(s->total_blocks - s->free_blocks))                                                           \
  X(KV_TOTAL, POOL, "ballast_kv_blocks_total", GAUGE, "pool", "KV cache blocks in the pool",       \
    V(s->total_blocks))                                                                            \
  X(KV_RATIO, POOL, "ballast_kv_usage_ratio", GAUGE, "pool",                                       \
    "KV cache blocks in use over blocks in the pool, 0 to 1",                                      \
    V(s->total_blocks > 0 ? (double)(s->total_blocks - s->free_blocks) / s->total_blocks : 0))     \
  X(POOL_STEPS, POOL, "ballast_pool_steps_total", COUNTER, "pool",                                 \
    "Scheduler steps (forward passes) run", V(s->steps))                                           \
  X(POOL_PREFILL, POOL, "ballast_pool_prefill_tokens_total", COUNTER, "pool",                      \
    "Prompt tokens prefilled (recomputation after preemption included)", V(s->prefill_tokens))     \
  X(POOL_GENERATED, POOL, "ballast_pool_generated_tokens_total", COUNTER, "pool",                  \
    "Tokens generated", V(s->generated_tokens))                                                    \
  X(POOL_PREEMPT, POOL, "ballast_pool_preemptions_total", COUNTER, "pool",                         \
    "Sequences preempted for KV blocks (to be recomputed)", V(s->preemptions))                     \
  X(POOL_PREFIX, POOL, "ballast_pool_prefix_hit_tokens_total", COUNTER, "pool",                    \
    "Prompt tokens served from the prefix cache", V(s->prefix_hit_tokens))                         \
  X(POOL_LOOPS, POOL, "ballast_pool_loops_total", COUNTER, "pool",                                 \
    "Requests whose loop detector fired", V(s->loops))                                             \
  X(DECODE_TPS, CUSTOM, "ballast_decode_tokens_per_second", GAUGE,                                 \
    "pool, precision, batch, source",                                                              \
    "Decode throughput at batch 1 and 8: live (moving average of pure-decode steps) or "           \
    "calibrated (measured at start); absent until measured",                                       \
    F(emit_tps))                                                                                   \
  X(POL_REQUESTS, AGG, "ballast_policy_requests_total", COUNTER, "policy, task_class",             \
    "Router requests finished, by the policy asked for and the task class", V(a->requests))        \
  X(POL_FINISHED, CUSTOM, "ballast_policy_finished_total", COUNTER, "policy, task_class, reason",  \
    "Router requests finished, by reason (as ballast_requests_finished_total)",                    \
    F(emit_pol_finished))                                                                          \
  X(POL_LOOPS, AGG, "ballast_policy_loops_total", COUNTER, "policy, task_class",                   \
    "Requests whose trace looped (the first loop)", V(a->loops))                                   \
  X(POL_COMMITS, AGG, "ballast_policy_commits_total", COUNTER, "policy, task_class",               \
    "Loops answered by committing the answer given before the loop", V(a->commits))                \
  X(POL_FALLBACKS, AGG, "ballast_policy_fallbacks_total", COUNTER, "policy, task_class",           \
    "Loops that fell back to the planner (fp16) pool", V(a->fallbacks))                            \
  X(POL_FAILURES, CUSTOM, "ballast_policy_failures_total", COUNTER, "policy, task_class, kind",    \
    "Loops by kind: path_finding (before any answer) or commitment (after one)",                   \
    F(emit_pol_failures))                                                                          \
  X(POL_THINK_OPENED, AGG, "ballast_policy_think_opened_total", COUNTER, "policy, task_class",     \
    "Traces that opened a think block", V(a->think_opened))                                        \
  X(POL_THINK_CLOSED, AGG, "ballast_policy_think_closed_total", COUNTER, "policy, task_class",     \
    "Traces that closed their think block", V(a->think_closed))                                    \
  X(POL_HIT_BUDGET, AGG, "ballast_policy_hit_budget_total", COUNTER, "policy, task_class",         \
    "Requests that used their whole max_tokens", V(a->hit_budget))                                 \
  X(POL_ANSWERED, AGG, "ballast_policy_answered_total", COUNTER, "policy, task_class",             \
    "Requests that gave an answer", V(a->answered))                                                \
  X(POL_EXEC_TOKENS, AGG, "ballast_policy_exec_tokens_total", COUNTER, "policy, task_class",       \
    "Tokens generated by the executor (2-bit) pool", V(a->exec_tokens))                            \
  X(POL_PLAN_TOKENS, AGG, "ballast_policy_plan_tokens_total", COUNTER, "policy, task_class",       \
    "Plan tokens generated by the planner pool", V(a->plan_tokens))                                \
  X(POL_FB_TOKENS, AGG, "ballast_policy_fallback_tokens_total", COUNTER, "policy, task_class",     \
    "Tokens generated on the planner pool by fallback runs and fp16-policy runs",                  \
    V(a->fallback_tokens))                                                                         \
  X(POL_REASONING, AGG, "ballast_policy_reasoning_tokens_total", COUNTER, "policy, task_class",    \
    "Generated tokens of the output that stands", V(a->reasoning_tokens))                          \
  X(POL_SECONDS, AGG, "ballast_policy_seconds_total", COUNTER, "policy, task_class",               \
    "Wall time of finished requests, seconds", V(a->total_s))                                      \
  X(AUTO_REGIME, CUSTOM, "ballast_auto_regime", GAUGE, "task_class, regime",                       \
    "The auto policy's regime per task class: 1 for the current of stable, degraded, collapse, "   \
    "0 for the others",                                                                            \
    F(emit_regime))                                                                                \
  X(AUTO_OUTCOMES, AUTO, "ballast_auto_outcomes", GAUGE, "task_class",                             \
    "Outcomes in the auto policy's window for the class", V(k->n))                                 \
  X(AUTO_LOOP_RATE, AUTO, "ballast_auto_loop_rate", GAUGE, "task_class",                           \
    "Share of the window's executor runs that looped", V(k->loop))                                 \
  X(AUTO_FB_RATE, AUTO, "ballast_auto_fallback_rate", GAUGE, "task_class",                         \
    "Share of the window's executor runs that fell back", V(k->fallback))                          \
  X(AUTO_THINK_RATE, AUTO, "ballast_auto_think_closed_rate", GAUGE, "task_class",                  \
    "Of the window's traces that opened a think block, the share that closed it (1: none opened)", \
    V(k->think_closed))

enum {
#define X(id, sc, name, type, labels, help, how) FAM_##id,
  BD_FAMILIES(X)
#undef X
      N_FAMILIES
};

static const family families[N_FAMILIES] = {
#define V(e)  NULL
#define F(fn) fn

#define X(id, sc, name, type, labels, help, how) {FAM_##id, sc, name, type, labels, help, how},
    BD_FAMILIES(X)
#undef X
#undef F
#undef V
};

/* The value of a V(...) row; the pointers its scope does not use are NULL. */
static double family_value(int id, const rctx *c, const bd_pool_view *pv, const sched_agg *a,
                           const auto_row *k) {
  const sched_stats *s = pv ? &pv->stats : NULL;
  switch (id) {
#define V(e)  return (double)(e);
#define F(fn) break;
#define X(id, sc, name, type, labels, help, how)                                                   \
  case FAM_##id: how
    BD_FAMILIES(X)
#undef X
#undef F
#undef V
  }
  return 0;
}

/* ---- collecting the router's state ------------------------------------- */

/* Called under the router's lock: only copies. */
static void collect_agg(const sched_agg *a, void *user) {
  rctx *c = user;
  if (c->n_aggs == c->cap_aggs) {
    int32_t cap = c->cap_aggs ? 2 * c->cap_aggs : 16;
    sched_agg *na = realloc(c->aggs, (size_t)cap * sizeof *na);
    if (!na) {
      c->oom = true;
      return;
    }
    c->aggs = na;
    c->cap_aggs = cap;
  }
  c->aggs[c->n_aggs++] = *a;
}

/* Class names are copied under auto's lock, then each class's rates are read
 * through sched_auto_rates (which takes the lock itself). A class is never
 * removed, so every copied name is still known. */
static void collect_auto(rctx *c, sched_auto *a) {
  pthread_mutex_lock(&a->lock);
  int32_t n = a->n_classes;
  c->autos = n ? calloc((size_t)n, sizeof *c->autos) : NULL;
  if (c->autos)
    for (int32_t i = 0; i < n; i++)
      snprintf(c->autos[i].name, sizeof c->autos[i].name, "%s", a->classes[i].name);
  pthread_mutex_unlock(&a->lock);
  if (n && !c->autos) {
    c->oom = true;
    return;
  }
  for (int32_t i = 0; i < n; i++) {
    auto_row k = c->autos[i];
    if (sched_auto_rates(a, k.name, &k.regime, &k.n, &k.loop, &k.fallback, &k.think_closed))
      c->autos[c->n_autos++] = k;
  }
}

/* ---- rendering ------------------------------------------------------------ */

static void put_help(bd_text *t, const family *f) {
  bd_text_printf(t, "# HELP %s ", f->name);
  for (const char *p = f->help; *p; p++) /* HELP escapes only \\ and \n */
    if (*p == '\\' || *p == '\n')
      bd_text_append(t, *p == '\\' ? "\\\\" : "\\n", 2);
    else
      bd_text_append(t, p, 1);
  bd_text_printf(t, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
}

static void render_family(rctx *c, const family *f) {
  put_help(c->out, f);
  switch (f->sc) {
  case CUSTOM: f->emit(c, f); break;
  case ONE:
    put_sample(c->out, f->name, "", NULL, 0, family_value(f->id, c, NULL, NULL, NULL));
    break;
  case POOL:
    for (int i = 0; i < c->n_pools; i++) {
      const char *kv[] = {"pool", c->pools[i].name};
      double v = family_value(f->id, c, &c->pools[i], NULL, NULL);
      put_sample(c->out, f->name, "", kv, 1, v);
    }
    break;
  case AGG:
    for (int32_t i = 0; i < c->n_aggs; i++) {
      const sched_agg *a = &c->aggs[i];
      const char *kv[] = {"policy", a->policy, "task_class", a->task_class};
      put_sample(c->out, f->name, "", kv, 2, family_value(f->id, c, NULL, a, NULL));
    }
    break;
  case AUTO:
    for (int32_t i = 0; i < c->n_autos; i++) {
      const char *kv[] = {"task_class", c->autos[i].name};
      put_sample(c->out, f->name, "", kv, 1, family_value(f->id, c, NULL, NULL, &c->autos[i]));
    }
    break;
  }
}

void bd_metrics_render(bd_metrics *m, const bd_pool_view *pools, int n_pools, sched_router *router,
                       const bd_server_view *server, bd_text *out) {
  rctx c = {.pools = pools, .n_pools = pools ? n_pools : 0, .out = out};
  pthread_mutex_lock(&m->lock);
  c.m = *m;
  pthread_mutex_unlock(&m->lock);
  if (server) c.sv = *server;
  if (router) {
    sched_router_aggs(router, collect_agg, &c);
    collect_auto(&c, sched_router_auto(router));
  }
  /* A page missing the aggregates it could not copy would read as real
   * zeros; a failed text makes the caller answer 500 instead. */
  if (c.oom) out->failed = true;
  for (int i = 0; i < N_FAMILIES && !out->failed; i++)
    render_family(&c, &families[i]);
  free(c.aggs);
  free(c.autos);
}

/* ---- docs/metrics.md ----------------------------------------------------- */

static void doc_bounds(FILE *f, const char *what, const double *b, int n) {
  fprintf(f, "- %s:", what);
  for (int i = 0; i < n; i++)
    fprintf(f, " %g", b[i]);
  fprintf(f, ", +Inf\n");
}

void bd_metrics_doc(FILE *f) {
  fprintf(f, "# Metrics\n\n"
             "<!-- Generated from the table in daemon/bd_metrics.c by bd_metrics_doc(); do not "
             "edit.\n     Regenerate: tests/unit/daemon/test_metrics --doc > docs/metrics.md "
             "(in the build dir) -->\n\n"
             "`GET /metrics` on the admin listener serves these in the Prometheus text format "
             "0.0.4.\nFamilies labelled by `pool` have samples once the models are loaded; those "
             "labelled by\n`policy` once a router request has finished; the `ballast_auto_*` "
             "ones once the auto\npolicy has seen the task class.\n\n"
             "| Name | Type | Labels | Meaning |\n|---|---|---|---|\n");
  for (int i = 0; i < N_FAMILIES; i++) {
    const family *m = &families[i];
    fprintf(f, "| `%s` | %s | %s | %s |\n", m->name, type_names[m->type], m->labels, m->help);
  }
  fprintf(f, "\nHistogram buckets (upper bounds, seconds; `le` label):\n\n");
  doc_bounds(f, "`ballast_ttft_seconds`, `ballast_e2e_seconds`, `ballast_queue_seconds`",
             bounds_req, N_OF(bounds_req));
  doc_bounds(f, "`ballast_itl_seconds`", bounds_itl, N_OF(bounds_itl));
}
