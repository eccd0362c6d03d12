/* Private to the router: sched_router.c (request flow) and sched_acct.c
 * (throughput accounting, aggregates, configuration). */
#ifndef SCHED_ROUTER_INTERNAL_H
#define SCHED_ROUTER_INTERNAL_H

#include <stdatomic.h>

#include "sched_router.h"

typedef struct rbuf {
  char *s;
  size_t len, cap;
} rbuf;

typedef enum rphase { PH_PLAN, PH_EXEC, PH_FP16, PH_FALLBACK } rphase;

/* The settings a reload replaces (sched_router_reconfigure): immutable once
 * built and shared by reference, so a request keeps the templates and
 * policies it started with while new requests see the new ones. */
typedef struct rconf {
  atomic_int refs;
  char *plan_prompt, *plan_insert;
  sched_policy *policies;
  int32_t n_policies;
  char default_policy[SCHED_POLICY_NAME_MAX];
  sched_policy_limits limits;
} rconf;

/* One request in flight. Its phases run one after another, so only one
 * pool thread touches it at a time; cancel takes the router lock. */
typedef struct rq {
  sched_router *r;
  uint64_t id;
  rconf *conf; /* a reference: the settings it started with */
  sched_policy pol;
  bool auto_routed;
  /* input */
  chat_message *messages; /* copies */
  size_t n_messages;
  int32_t last_user; /* index of the last user message, -1: none */
  bool think;
  bool ignore_eos;
  int32_t *orig, n_orig;         /* the prompt as asked */
  int32_t *exec, n_exec;         /* with the plan, or the resumed prefix */
  int32_t *plan_ids, n_plan_ids; /* the planner's prompt */
  int32_t max_tokens, priority;
  double deadline;
  sampler_params sampling;
  stop_set stop;
  sched_task task;
  char *labels, *task_class;
  sched_revent_fn on_event;
  void *user;
  /* progress (under the router lock: phase, pool, iid, cancelled) */
  rphase phase;
  sched_pool *pool; /* the current phase's replica: role[role].p[replica] */
  int role, replica;
  uint64_t iid; /* the current phase's id in its pool */
  bool cancelled;
  double t0, phase_t0;
  bool first_token, plan_oom;
  rbuf plan;
  size_t out_bytes; /* output text sent so far */
  size_t *text_at;  /* [max_tokens]: output bytes after executor token i */
  int32_t cut;      /* a resumed fallback's 2-bit prefix */
  char *answer, *graded;
  sched_trace trace;
} rq;

typedef struct fp16_len {
  char task_class[64];
  double sum;
  uint64_t n;
} fp16_len;

/* The replicas of one role (0 executor, 1 planner; n 0: none). */
typedef struct rrole {
  sched_pool *p[SCHED_MAX_REPLICAS];
  int32_t n;
  int32_t load[SCHED_MAX_REPLICAS]; /* phases submitted and not finished (router lock) */
} rrole;

struct sched_router {
  rrole role[2];
  const tok_tokenizer *tok;
  chat_template chat;
  rconf *conf; /* the current settings (swapped under lock) */
  sched_auto autor;
  pthread_mutex_t lock; /* live requests, ids, aggregates */
  uint64_t next_iid;
  rq **live;
  int32_t n_live, cap_live;
  sched_agg *aggs;
  int32_t n_aggs, cap_aggs;
  fp16_len *fp16;
  int32_t n_fp16, cap_fp16;
  double cal_tps[2][2]; /* [executor, planner][batch 1, 8] from calibration */
};

/* sched_router.c */
void router_on_event(const sched_event *ev, void *user);
size_t sched_plan_clean(char *s, size_t n);

/* sched_acct.c */
bl_status router_policy(const rconf *c, const char *name, const sched_policy_override *o,
                        sched_policy *out, bl_err *err);
/* The current settings, with a reference the caller drops with rconf_put. */
rconf *rconf_get(sched_router *r);
void rconf_put(rconf *c);
/* Estimates into q->trace and aggregates, as q finishes with f. */
void acct_finish(sched_router *r, rq *q, sched_rfinish f);

#endif
