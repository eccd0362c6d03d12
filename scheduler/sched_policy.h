/* Reasoning-control policies: which pools a request runs in and which
 * controls watch it (the paper's sections 6-8).
 *
 *   direct        the 2-bit executor alone (loops are only observed)
 *   rescue        executor + loop rescue: on a loop, commit to an answer
 *                 given before the loop onset, else fall back to fp16
 *   plan          the fp16 planner writes a short plan first (thinking off,
 *                 any \boxed removed), inserted into the executor's prompt
 *   plan+rescue   both
 *   fp16          the planner pool alone (the full-precision baseline)
 *   auto          per task class, from the outcomes seen so far: collapse
 *                 -> fp16, process-degraded -> plan+rescue, stable -> rescue
 *                 (sched_auto below)
 *
 * Named policies come from the operator's config; a request names one and
 * may override the fields in sched_policy_override when the policy allows
 * it, within sched_policy_limits. */
#ifndef SCHED_POLICY_H
#define SCHED_POLICY_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bl_status.h"
#include "sched_loop.h"

typedef enum sched_route {
  SCHED_ROUTE_EXECUTOR = 0, /* 2-bit, with the controls below */
  SCHED_ROUTE_FP16,         /* planner pool only */
  SCHED_ROUTE_AUTO,         /* decided per request by sched_auto */
} sched_route;

typedef enum sched_fallback {
  SCHED_FALLBACK_RESTART = 0, /* rerun in fp16 from the original prompt, full budget (paper) */
  SCHED_FALLBACK_RESUME,      /* fp16 continues from the 2-bit trace cut at the loop onset */
} sched_fallback;

const char *sched_fallback_name(sched_fallback f);

#define SCHED_POLICY_NAME_MAX 32

typedef struct sched_policy {
  char name[SCHED_POLICY_NAME_MAX];
  sched_route route;
  bool plan;   /* fp16 plan before the executor runs */
  bool rescue; /* act on loops (commit or fall back); else only observe them */
  sched_fallback fallback;
  sched_loop_params loop;  /* 0 fields: 1024 / 20 / 4 */
  int32_t plan_max_tokens; /* 0: 256 */
  bool allow_overrides;    /* requests may change the fields of sched_policy_override */
} sched_policy;

/* A request's changes to its policy; 0 (or -1 for fallback) leaves a field. */
typedef struct sched_policy_override {
  int32_t window, ngram, min_count;
  int32_t plan_max_tokens;
  int32_t fallback; /* -1: keep; else a sched_fallback */
} sched_policy_override;

#define SCHED_POLICY_OVERRIDE_NONE ((sched_policy_override){.fallback = -1})

/* Operator limits on overrides. 0 fields: window 8192, plan 1024 tokens. */
typedef struct sched_policy_limits {
  int32_t max_window;
  int32_t max_plan_tokens;
} sched_policy_limits;

/* The built-in policy of that name ("direct", "rescue", "plan",
 * "plan+rescue", "fp16", "auto"), overrides allowed; BL_EINVAL otherwise. */
bl_status sched_policy_builtin(const char *name, sched_policy *out, bl_err *err);
/* Fill defaults (loop parameters, plan budget) and check the fields. */
bl_status sched_policy_check(sched_policy *p, bl_err *err);
/* out = base with o applied; BL_EINVAL when the policy allows no overrides
 * or a value is out of range, BL_ERANGE over a limit. */
bl_status sched_policy_apply(const sched_policy *base, const sched_policy_override *o,
                             const sched_policy_limits *lim, sched_policy *out, bl_err *err);

/* ---- auto: routing by task class -------------------------------------- */

typedef enum sched_regime {
  SCHED_REGIME_STABLE = 0, /* rescue */
  SCHED_REGIME_DEGRADED,   /* plan+rescue */
  SCHED_REGIME_COLLAPSE,   /* fp16 (one request in SCHED_AUTO_PROBE still probes plan+rescue) */
} sched_regime;

const char *sched_regime_name(sched_regime r);

/* Outcome of one executor run under rescue, fed back to auto. */
typedef struct sched_outcome {
  bool loop, fallback;
  bool think_opened, think_closed;
} sched_outcome;

#define SCHED_AUTO_WINDOW      64 /* outcomes remembered per class */
#define SCHED_AUTO_MIN         16 /* outcomes before a class leaves STABLE */
#define SCHED_AUTO_PROBE       8  /* in COLLAPSE, every 8th request probes the executor */
#define SCHED_AUTO_MAX_CLASSES 256

typedef struct sched_auto_class {
  char name[64];
  uint8_t ring[SCHED_AUTO_WINDOW]; /* outcome bits */
  int32_t n, head;                 /* outcomes held, next slot */
  sched_regime regime;
  uint64_t routed;
} sched_auto_class;

typedef struct sched_auto {
  pthread_mutex_t lock;
  sched_auto_class *classes;
  int32_t n_classes;
} sched_auto;

bl_status sched_auto_init(sched_auto *a, bl_err *err);
void sched_auto_free(sched_auto *a);
/* The policy a request of this class runs now: "fp16", "plan+rescue" or
 * "rescue" (with base's loop and plan settings). Thread-safe. Classes past
 * SCHED_AUTO_MAX_CLASSES share one named "other"; NULL or "" is "default". */
sched_regime sched_auto_route(sched_auto *a, const char *cls, const sched_policy *base,
                              sched_policy *out);
/* Thread-safe. */
void sched_auto_observe(sched_auto *a, const char *cls, const sched_outcome *o);
/* Rates over the class's window (for metrics); false for an unknown class. */
bool sched_auto_rates(sched_auto *a, const char *cls, sched_regime *regime, int32_t *n,
                      double *loop_rate, double *fallback_rate, double *think_closed_rate);

#endif
