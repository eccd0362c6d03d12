/* ballastd's shared state and the seams between its files.
 *
 *   bd_main.c      command line, libevent loop, signals, start-up, drain
 *   bd_engine.c    models, pools, router from the config; live reload
 *   bd_admin.c     the admin HTTP endpoint (evhttp) on the main thread
 *   bd_grpc.c      gRPC C core: completion-queue threads, call slots, replies
 *   bd_generate.c  the Generate stream: request -> router, events -> messages
 *   bd_service.c   the unary RPCs and grpc.health.v1
 *
 * Threads: main (libevent: signals, admin HTTP, drain), grpc_threads
 * completion-queue threads, one scheduler thread per pool. The config is an
 * immutable object swapped whole under cfg_lock (readers hold the read lock
 * only while they copy what they need). */
#ifndef BD_DAEMON_H
#define BD_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bd_config.h"
#include "bd_metrics.h"
#include "chat.h"
#include "sched_router.h"

#define BD_VERSION "0.1.0"

/* ---- engine: models, pools, router ------------------------------------ */

/* One data-parallel copy of a pool's model: its backends (several when
 * the model is split, tensor_parallel), model and scheduler (with its
 * thread and KV cache). */
typedef struct bd_replica {
  char device[40]; /* "cpu", "cuda:N"; a split replica's joined with +: "cuda:0+1" */
  char label[72];  /* how its errors and logs name it: "executor pool", "executor replica 1
                    * (cuda:1)" */
  bk_backend *bes[BD_MAX_DEVICES];
  int n_be;
  model *m;
  sched_pool *p;
} bd_replica;

typedef struct bd_pool {
  const char *name; /* "executor", "planner" */
  char precision[8];
  char kv_format[8];
  char *model_path;
  bd_replica rep[BD_MAX_DEVICES];
  sched_pool *sps[BD_MAX_DEVICES]; /* rep[i].p, as the router takes them */
  int n_rep;
  int32_t block_size, max_num_seqs; /* per replica */
  int32_t tensor_parallel;          /* backends per replica */
} bd_pool;

/* What start-up hands the engine besides the config. */
typedef struct bd_engine_opts {
  /* BALLAST_INJECT_FAULT, a test hook: "POOL[.R]:OP:N[:KIND]" wraps the
   * backend of pool POOL's replica R (default 0) with bk_fault
   * (kernels/bk_fault.h); NULL or "": none */
  const char *inject_fault;
  /* called once on a pool's thread when that pool turns unhealthy (NULL: none) */
  void (*on_unhealthy)(void *user);
  void *user;
} bd_engine_opts;

typedef struct bd_engine {
  bd_pool pools[2]; /* [0] executor, [1] planner */
  int n_pools;
  sched_router *router;
  chat_template chat;
  sampler_params sampling; /* the executor model's defaults */
  const tok_tokenizer *tok;
  int32_t vocab;
  bd_engine_opts opts;
} bd_engine;

/* Load both pools, start their threads, build the router and calibrate.
 * A malformed opts->inject_fault fails with a message naming the variable. */
bl_status bd_engine_open(bd_engine *e, const bd_config *c, const bd_engine_opts *opts, bl_err *err);
void bd_engine_close(bd_engine *e);
/* The router settings of a config (points into c). */
sched_router_cfg bd_engine_router_cfg(const bd_engine *e, const bd_config *c);

/* ---- the daemon -------------------------------------------------------- */

typedef struct bd_grpc bd_grpc;
typedef struct bd_daemon bd_daemon;

struct bd_daemon {
  char *config_path;
  pthread_rwlock_t cfg_lock;
  bd_config *cfg;                  /* current; under cfg_lock */
  atomic_uint_fast64_t generation; /* 1 at start, +1 per accepted reload */
  pthread_mutex_t reload_lock;     /* one reload at a time */
  bd_engine engine;
  bd_metrics metrics;
  atomic_bool ready, draining;
  atomic_int active_streams;
  atomic_uint_fast64_t streams_started; /* Generate calls taken in, ever */
  double t_start;                       /* sched_now() at start */
  bd_grpc *grpc;
  char grpc_addr[128], admin_addr[128];   /* as bound (real ports) */
  void (*on_health_change)(bd_daemon *d); /* set by bd_grpc: health watchers */
};

typedef struct bd_reload_result {
  uint64_t generation;
  const char *restart_keys[32];
  int n_restart_keys;
} bd_reload_result;

/* Re-read the config file; invalid: err says why (FILE:LINE) and the old
 * config stays. Valid: the router's settings and log level are applied, the
 * config swapped, restart-only changes listed. Thread-safe. */
bl_status bd_daemon_reload(bd_daemon *d, bd_reload_result *res, bl_err *err);

void bd_daemon_apply_log_level(const bd_config *c);

/* The admin HTTP endpoint on the main thread's event base. */
struct event_base;
struct evhttp;
bl_status bd_admin_start(bd_daemon *d, struct event_base *base, const char *listen,
                         struct evhttp **out, bl_err *err);

/* Copies of the limits a request needs, read under the config lock. */
typedef struct bd_limits {
  int32_t max_message_bytes, max_prompt_tokens, max_tokens, default_max_tokens, max_streams;
  int32_t stream_buffer_bytes;
} bd_limits;
bd_limits bd_daemon_limits(bd_daemon *d);
/* Serving: started, not draining and the executor pool healthy. Otherwise
 * why (NULL or n bytes) gets "starting", "draining" or the executor's
 * error. Thread-safe. */
bool bd_daemon_serving(bd_daemon *d, char *why, size_t n);
/* The admin token check: 0 ok, 1 missing/wrong, 2 no token configured. */
int bd_daemon_check_token(bd_daemon *d, const char *bearer, size_t len);

/* Metrics page (admin endpoint); out is bd_text. */
void bd_daemon_render_metrics(bd_daemon *d, bd_text *out);

/* ---- gRPC -------------------------------------------------------------- */

/* Bind, register the services and start grpc_threads threads. *bound gets
 * "host:port" with the real port. */
bl_status bd_grpc_start(bd_daemon *d, const bd_config *c, bd_grpc **out, bl_err *err);
/* Cancel every running Generate (drain timeout passed). */
void bd_grpc_cancel_all(bd_grpc *g);
/* Stop accepting, end all calls, join the threads, free. */
void bd_grpc_stop(bd_grpc *g);

#endif
