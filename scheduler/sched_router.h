/* The router: one reasoning request across the executor (2-bit) and
 * planner (fp16) pools, under a policy (sched_policy.h).
 *
 *   plan      the planner writes a plan (thinking off, plan_max_tokens, any
 *             \boxed{...} removed); the plan goes into the last user message
 *             of the executor's prompt (plan_insert template).
 *   execute   the executor generates with the loop detector on (observing
 *             under direct/plan, stopping under rescue) and the answer
 *             tracker for the request's task.
 *   rescue    on a loop: if an answer was complete before the loop onset,
 *             commit: send "</think>" if the trace opened one and left it
 *             open, then the answer as \boxed{...}, and finish LOOP_COMMIT.
 *             Otherwise fall back once to the planner pool: from the
 *             original prompt with the full budget (restart, the paper's
 *             method), or continuing the 2-bit trace cut at the loop onset
 *             (resume). A loop in the fallback run commits the same way or
 *             finishes LOOP; nothing falls back twice.
 *
 * Every request ends with exactly one FINAL event carrying its trace
 * metrics (sched_trace). Events arrive on the pools' threads. */
#ifndef SCHED_ROUTER_H
#define SCHED_ROUTER_H

#include "chat.h"
#include "sched_policy.h"
#include "scheduler.h"

typedef struct sched_router sched_router;

/* The default templates (docs/controls.md). */
#define SCHED_DEFAULT_PLAN_PROMPT                                                                  \
  "Write a short plan for solving the problem below: a few numbered steps that say what to "       \
  "work out, in order. Do not carry out the calculations and do not state the final answer."       \
  "\n\nProblem:\n{question}"
#define SCHED_DEFAULT_PLAN_INSERT "{question}\n\nFollow this plan:\n{plan}"

/* Data-parallel replicas: a role (executor, planner) may be served by up to
 * SCHED_MAX_REPLICAS pools of the same model, each on its own device. A
 * phase goes to the healthy replica with the fewest of the router's phases
 * in it (ties: the lowest index); one replica's device error leaves the
 * others serving. */
#define SCHED_MAX_REPLICAS 8

typedef struct sched_router_cfg {
  sched_pool *executor; /* required, unless executors is given */
  sched_pool *planner;  /* NULL: plans, fallbacks and fp16 are refused */
  /* n_executors > 0 replicas serve as the executor (executor is then
   * ignored), and likewise planners */
  sched_pool *const *executors;
  int32_t n_executors;
  sched_pool *const *planners;
  int32_t n_planners;
  chat_template chat; /* how messages are rendered (the executor model's) */
  /* Templates; NULL: the defaults above. plan_prompt has
   * {question}; plan_insert has {question} and {plan}. */
  const char *plan_prompt, *plan_insert;
  const sched_policy *policies; /* named policies (copied); the built-ins are always known */
  int32_t n_policies;
  const char *default_policy; /* NULL: "rescue" */
  sched_policy_limits limits;
} sched_router_cfg;

typedef enum sched_rfinish {
  SCHED_R_RUNNING = 0,
  SCHED_R_STOP,
  SCHED_R_LENGTH,
  SCHED_R_LOOP_COMMIT,        /* a loop, answered with the answer given before it */
  SCHED_R_LOOP_FALLBACK_DONE, /* a loop, then the fp16 fallback run finished */
  SCHED_R_LOOP,               /* a loop and nothing to commit (no fallback left or allowed) */
  SCHED_R_CANCELLED,
  SCHED_R_DEADLINE,
  SCHED_R_ERROR,
} sched_rfinish;

const char *sched_rfinish_name(sched_rfinish f);

typedef enum sched_failure {
  SCHED_FAIL_NONE = 0,
  SCHED_FAIL_PATH_FINDING, /* looped before any answer */
  SCHED_FAIL_COMMITMENT,   /* looped after an answer */
} sched_failure;

const char *sched_failure_name(sched_failure f);

/* Per-request trace metrics and accounting (the final event). */
typedef struct sched_trace {
  char policy[SCHED_POLICY_NAME_MAX]; /* the policy asked for */
  char ran[SCHED_POLICY_NAME_MAX];    /* what ran: direct, rescue, plan, plan+rescue, fp16 */
  sched_regime regime;                /* auto only: the class's regime when routed */
  /* tokens generated per phase (exec: the 2-bit pool; the rest fp16: the
   * plan, a fallback run, an fp16-policy run), and prompt tokens prefilled */
  int32_t exec_tokens, plan_tokens, fallback_tokens, fp16_tokens;
  int32_t exec_prompt_tokens, plan_prompt_tokens, fallback_prompt_tokens, fp16_prompt_tokens;
  /* the output that stands (the executor's trace, or the fallback run's) */
  int32_t reasoning_tokens; /* its generated tokens (a resumed run counts the 2-bit prefix) */
  bool hit_budget, think_opened, think_closed;
  int32_t first_answer_at; /* -1: none */
  double commit_gap;       /* (reasoning_tokens - first_answer_at) / reasoning_tokens; -1: none */
  /* the first loop */
  bool loop;
  int32_t loop_fire_at, loop_onset;
  sched_failure failure;
  bool fell_back;
  sched_fallback fallback_mode;
  /* wall time, seconds */
  double plan_s, exec_s, fallback_s, total_s, ttft_s;
  /* estimated time at batch 1 and 8 from the pools' decode throughput, for
   * this request and for an fp16-only run, and their ratio (0: unknown) */
  double est_s[2], fp16_s[2], speedup[2];
} sched_trace;

typedef enum sched_rkind {
  SCHED_REV_TOKEN,    /* output text and token from pool / precision */
  SCHED_REV_PLAN,     /* the plan is ready: text is the plan */
  SCHED_REV_LOOP,     /* the detector fired: trace.loop_* */
  SCHED_REV_COMMIT,   /* text is appended to the output (the committed answer) */
  SCHED_REV_FALLBACK, /* the output restarts: keep its first keep_bytes bytes */
  SCHED_REV_FINAL,
} sched_rkind;

typedef struct sched_revent {
  sched_rkind kind;
  uint64_t id;
  const char *pool, *precision; /* TOKEN */
  int32_t token;                /* TOKEN */
  const char *text;             /* TOKEN, PLAN, COMMIT; never NULL */
  size_t text_len;
  size_t keep_bytes;        /* FALLBACK: 0 for restart, the text before the onset for resume */
  sched_rfinish finish;     /* FINAL */
  const char *error;        /* FINAL with ERROR */
  const char *answer;       /* FINAL: the answer given (NULL: none) */
  const char *graded;       /* FINAL: the answer to grade (adds the numeric fallback) */
  const sched_trace *trace; /* LOOP, FALLBACK, FINAL */
} sched_revent;

typedef void (*sched_revent_fn)(const sched_revent *ev, void *user);

typedef struct sched_rreq {
  uint64_t id; /* the caller's; unique among its live requests */
  /* The input: chat messages (rendered with cfg.chat; needed to plan), or
   * prompt token ids as they are. */
  const chat_message *messages;
  size_t n_messages;
  bool enable_thinking;
  const int32_t *prompt;
  int32_t n_prompt;
  int32_t max_prompt; /* > 0: refuse (BL_ERANGE) a prompt longer than this, as rendered */
  int32_t max_tokens;
  sampler_params sampling;
  const stop_set *stop;
  bool ignore_eos; /* generate past the models' EOS (stop strings still stop) */
  int32_t priority;
  double deadline;
  const char *policy;              /* NULL: the default */
  sched_policy_override overrides; /* SCHED_POLICY_OVERRIDE_NONE for none */
  sched_task task;
  const char *labels;     /* choice labels, NULL: "ABCD" */
  const char *task_class; /* auto's key; NULL: "default" */
  sched_revent_fn on_event;
  void *user;
} sched_rreq;

bl_status sched_router_create(const sched_router_cfg *cfg, sched_router **out, bl_err *err);
/* The pools must be stopped or idle: live requests are not waited for. */
void sched_router_destroy(sched_router *r);
/* Replace the templates, named policies, default policy and limits with
 * cfg's (its pools and chat template are ignored). Requests in flight keep
 * the settings they started with. On error nothing changes. Thread-safe. */
bl_status sched_router_reconfigure(sched_router *r, const sched_router_cfg *cfg, bl_err *err);

/* Validate (policy, overrides, input), copy and start. Errors, with the
 * reason and no event sent: BL_EINVAL (malformed: unknown policy, bad
 * override), BL_ERANGE (over a limit), BL_EUNSUPPORTED (the policy needs
 * what is missing: a planner pool, chat messages), BL_EDEVICE (the policy
 * needs a pool that is unhealthy after a device error: its error).
 * A pool that turns unhealthy later ends the request ERROR with its
 * error, also when a later phase (the executor after a plan, a fallback)
 * would need it. Thread-safe. */
bl_status sched_router_submit(sched_router *r, const sched_rreq *q, bl_err *err);
/* Thread-safe; unknown ids are ignored. */
void sched_router_cancel(sched_router *r, uint64_t id);

/* Decode throughput (tokens/s) of one replica, used for the estimates: the
 * live figure at that batch size once the role's replicas have
 * SCHED_ACCT_MIN_STEPS steps there (their mean), else the calibration's.
 * which: 0 executor, 1 planner. */
#define SCHED_ACCT_MIN_STEPS 32
double sched_router_tps(sched_router *r, int which, int32_t batch);
/* Measure both roles at batch 1 and 8 with n_tokens-token decodes, on
 * each role's first replica (replicas are the same model on like devices;
 * measuring each would multiply start-up time). The pools must be idle;
 * stepped by hand unless their threads run. */
bl_status sched_router_calibrate(sched_router *r, int32_t n_tokens, bl_err *err);
/* The calibration's figure alone (batch 1 or 8; 0: not measured). */
double sched_router_calibrated(const sched_router *r, int which, int32_t batch);

/* Aggregates per (policy, task class), for metrics. */
typedef struct sched_agg {
  char policy[SCHED_POLICY_NAME_MAX];
  char task_class[64];
  uint64_t requests, finished[SCHED_R_ERROR + 1];
  uint64_t loops, commits, fallbacks, path_finding, commitment;
  uint64_t think_opened, think_closed, hit_budget, answered;
  uint64_t exec_tokens, plan_tokens, fallback_tokens, reasoning_tokens;
  double total_s;
} sched_agg;

/* Calls fn for each aggregate under the router's lock (keep fn short). */
void sched_router_aggs(sched_router *r, void (*fn)(const sched_agg *a, void *user), void *user);
/* The auto router's state, for metrics. */
sched_auto *sched_router_auto(sched_router *r);
/* A role's stats (0 executor, 1 planner), its replicas' folded with
 * sched_stats_add (healthy while one is); returns how many replicas are
 * healthy. Thread-safe. */
int32_t sched_router_stats(sched_router *r, int which, sched_stats *out);
/* The router's phases in flight on replica i of a role (0 executor, 1
 * planner): what it balances on. */
int32_t sched_router_load(sched_router *r, int which, int32_t i);

#endif
