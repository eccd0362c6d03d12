/* The continuous-batching scheduler: pools, requests, steps.
 *
 * A pool is one loaded model (one precision) with its paged KV cache, driven
 * by one scheduler thread (or stepped by hand in tests and benchmarks). Every
 * step runs one forward pass over: one token of every decoding sequence,
 * then chunks of prompts being prefilled, then newly admitted requests,
 * within a token budget (max_batched_tokens) and a sequence cap
 * (max_num_seqs). A sequence is just its token history (prompt + generated)
 * and how much of it has K/V in the cache; prefill and decode are the same
 * thing (feed tokens[n_computed..n_tokens), sample when the last is fed), so
 * preemption by recompute, prefix-cache hits and moves between pools only
 * change n_computed.
 *
 * Ordering: lower priority number sooner, FIFO within a level (arrival
 * order); a waiting request's effective priority improves by one level every
 * aging_steps steps so none waits forever. When blocks run out, the running
 * sequence with the highest priority number (newest on ties) is preempted:
 * its blocks are freed and it waits again with its history, to be
 * recomputed. A request that could never fit the pool alone is refused at
 * submit, so the most urgent running sequence always makes progress.
 *
 * Results come back as events through the request's callback, on the
 * scheduler's thread: tokens with their released text, then one final event
 * with the finish reason. Greedy output is independent of batch composition,
 * preemption and prefix hits because the CPU kernels are batch-invariant
 * (kernels/cpu: fixed reduction order per token) and sampling draws depend
 * only on (seed, position).
 *
 * Health: a device error (BL_EDEVICE from the forward pass or a KV copy)
 * is sticky on a GPU, so the pool stops using its backend for good. Every
 * request it holds, and every one that reaches it later, finishes
 * SCHED_FIN_ERROR with "LABEL is unhealthy after a device error: ..."
 * (LABEL: cfg.label, by default "NAME pool");
 * sched_submit refuses new ones (BL_EDEVICE); the thread stays up and the
 * stats say so (healthy, error). Any other failure of a step only fails
 * that step's requests. */
#ifndef SCHEDULER_H
#define SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"
#include "model.h"
#include "sampler.h"
#include "sched_answer.h"
#include "sched_loop.h"
#include "stop.h"

typedef struct sched_pool sched_pool;

typedef enum sched_finish {
  SCHED_RUNNING = 0,   /* not finished (token events) */
  SCHED_FIN_STOP,      /* EOS, a stop id or a stop string: event.stop says which */
  SCHED_FIN_LENGTH,    /* max_tokens generated */
  SCHED_FIN_CANCELLED, /* sched_cancel */
  SCHED_FIN_DEADLINE,  /* the deadline passed first */
  SCHED_FIN_ERROR,     /* event.error says why (e.g. a device error) */
  SCHED_FIN_LOOP,      /* the loop detector fired (SCHED_LOOP_STOP): event.loop_* say where */
} sched_finish;

/* Per-token loop detection (sched_loop.h) on a request's generated tokens. */
typedef enum sched_loop_mode {
  SCHED_LOOP_DEFAULT = 0, /* the pool's setting */
  SCHED_LOOP_OFF,
  SCHED_LOOP_OBSERVE, /* record where it fires (event.loop_*), keep generating */
  SCHED_LOOP_STOP,    /* end the request with SCHED_FIN_LOOP when it fires */
} sched_loop_mode;

const char *sched_finish_name(sched_finish f);

typedef struct sched_event {
  uint64_t id;
  sched_finish finish; /* SCHED_RUNNING for token events */
  int32_t token;       /* token events: the new token (-1 on a final event) */
  const char *text;    /* text released with this event (may be empty; never NULL) */
  size_t text_len;
  const sampler_logprobs *logprobs; /* token events when n_logprobs > 0, else NULL */
  stop_hit stop;                    /* SCHED_FIN_STOP */
  const char *error;                /* SCHED_FIN_ERROR */
  /* Usage, on every event: */
  int32_t n_prompt, n_generated;
  int32_t n_cached;    /* prompt tokens served from the prefix cache (first admission) */
  int32_t n_preempted; /* times recomputed after preemption */
  /* Trace state, when the request tracks it (loop detection on or a task): */
  int32_t loop_fire_at, loop_onset; /* generated-token positions; -1: not fired */
  const sched_answer *answer;       /* the answer tracker, or NULL; valid during the callback */
  const int32_t *tokens;            /* the history, prompt + generated, valid during the callback */
  int32_t n_tokens;
} sched_event;

typedef void (*sched_event_fn)(const sched_event *ev, void *user);

/* A request. Submit copies everything; the caller may free its arrays. */
typedef struct sched_req {
  uint64_t id; /* the caller's; used by sched_cancel / sched_move */
  const int32_t *prompt;
  int32_t n_prompt;
  int32_t n_generated; /* of prompt's last tokens, how many were generated (a request
                        * moved from another pool); counts toward max_tokens */
  int32_t max_tokens;
  sampler_params sampling;
  const stop_set *stop; /* may be NULL: the model's EOS only (unless ignore_eos) */
  bool ignore_eos;
  int32_t priority; /* lower = sooner */
  double deadline;  /* absolute, sched_now() clock; 0: none */
  sched_loop_mode loop;
  sched_loop_params loop_params; /* zeros: the paper's 1024 / 20 / 4 */
  sched_task task;               /* answer tracking; NONE still tracks <think> when loop is on */
  const char *labels;            /* choice labels (NULL: "ABCD") */
  bool think_open;               /* the prompt ends inside a <think> block */
  sched_event_fn on_event;
  void *user;
} sched_req;

typedef void (*sched_health_fn)(sched_pool *p, void *user);

typedef struct sched_pool_cfg {
  const char *name;           /* what events call it (a role: replicas share it) */
  const char *label;          /* how its errors and logs name it; NULL: "NAME pool" */
  model *m;                   /* not owned; its backend runs the pool */
  bk_kvfmt kv_fmt;            /* BK_KV_F16 ... */
  int32_t block_size;         /* tokens per KV block; 0: 16 */
  int32_t n_blocks;           /* KV blocks in the pool */
  int32_t max_num_seqs;       /* running sequences; 0: 64 */
  int32_t max_batched_tokens; /* tokens per step; 0: 512 */
  bool prefix_cache;          /* share full blocks of equal prefixes */
  int32_t aging_steps;        /* 0: 256 */
  sched_loop_mode loop;       /* for requests that leave it DEFAULT; 0: off */
  /* NULL, or called once with health_user, on the stepping thread, when the
   * pool turns unhealthy (its requests have failed by then) */
  sched_health_fn on_unhealthy;
  void *health_user;
} sched_pool_cfg;

bl_status sched_pool_create(const sched_pool_cfg *cfg, sched_pool **out, bl_err *err);
/* Stops the thread if running; unfinished requests end CANCELLED. */
void sched_pool_destroy(sched_pool *p);
const char *sched_pool_name(const sched_pool *p);
model *sched_pool_model(const sched_pool *p);

/* Validate and enqueue (thread-safe). Bad input is BL_EINVAL / BL_ERANGE with
 * the reason and no event; the request is then not queued. An unhealthy
 * pool refuses with BL_EDEVICE and its error. */
bl_status sched_submit(sched_pool *p, const sched_req *r, bl_err *err);
/* Thread-safe; takes effect at the next step boundary. Unknown ids are
 * ignored (the request may have finished already). */
void sched_cancel(sched_pool *p, uint64_t id);
/* Move request id, with its history, from p to dst (same vocabulary): its
 * blocks in p are freed and dst prefills the history again. Thread-safe. */
void sched_move(sched_pool *p, uint64_t id, sched_pool *dst);

/* Drive by hand: one step; *idle is true when there was nothing to do. A
 * failed forward pass fails the requests of that step (SCHED_FIN_ERROR) and
 * returns the status; the pool stays usable, unless the status was
 * BL_EDEVICE: then it is unhealthy (see the top). An unhealthy pool's
 * steps fail whatever arrived and return BL_OK. */
bl_status sched_pool_step(sched_pool *p, bool *idle, bl_err *err);
/* Or run a thread that steps while there is work and sleeps otherwise. */
bl_status sched_pool_start(sched_pool *p, bl_err *err);
void sched_pool_stop(sched_pool *p);
bool sched_pool_threaded(sched_pool *p); /* its thread runs */

/* Decode throughput by batch size, from steps that only decoded (no prompt
 * tokens): the step's wall time, scheduling and sampling included. */
#define SCHED_TPS_MAX_BATCH 64
typedef struct sched_tps {
  uint64_t steps; /* pure-decode steps at this batch size */
  double sum_s;   /* their total time */
  double ewma;    /* moving tokens/s (alpha 1/8); 0 before the first step */
} sched_tps;

#define SCHED_ERROR_MAX 640 /* a pool name, the prefix and a bl_err message */
typedef struct sched_stats {
  uint64_t steps, forward_tokens, decode_tokens, prefill_tokens, generated_tokens;
  uint64_t device_sampled; /* generated tokens drawn on the device (model_forward_sample) */
  uint64_t prefix_hit_tokens, preemptions, finished;
  int32_t running, waiting, free_blocks, total_blocks;
  double forward_s;  /* time inside model_forward */
  double schedule_s; /* time in the step outside model_forward (scheduling, sampling, events) */
  uint64_t max_wait_steps; /* longest wait from arrival (or preemption) to admission */
  uint64_t loops;          /* requests whose loop detector fired */
  sched_tps decode_tps[SCHED_TPS_MAX_BATCH + 1]; /* [batch size] */
  bool healthy;                                  /* false for good after a device error */
  char error[SCHED_ERROR_MAX]; /* !healthy: why, the message its requests fail with */
} sched_stats;

/* Tokens/s at one batch size from stats: the moving figure when live is
 * true, else the mean over all steps; 0 when no step of that size ran. */
double sched_tps_at(const sched_stats *s, int32_t batch, bool live);

void sched_pool_stats(sched_pool *p, sched_stats *out); /* thread-safe */
/* Fold one replica's stats into sum (start from {0}): counts and times
 * add, max_wait_steps is the larger, decode rates become the replicas'
 * mean per replica (steps and time add; the moving figure is weighted by
 * steps), healthy while any replica is, error the first one's while none
 * is. */
void sched_stats_add(sched_stats *sum, const sched_stats *s);
/* Thread-safe: false once a device error made p unhealthy; why (NULL or n
 * bytes) gets its error. */
bool sched_pool_healthy(sched_pool *p, char *why, size_t n);

/* Monotonic seconds, the clock deadlines use. */
double sched_now(void);

#endif
