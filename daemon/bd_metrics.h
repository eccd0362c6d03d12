/* The daemon's counters and latency histograms, and their rendering as
 * Prometheus text (exposition format 0.0.4) for the admin endpoint's
 * /metrics. Counters are defined once (X-macros in bd_metrics.c) and
 * updated under one mutex by the gRPC and pool threads; rendering takes a
 * snapshot of the pools and the router handed in by the caller.
 *
 * Names (all prefixed ballast_): see docs/metrics.md, generated from the
 * same table. */
#ifndef BD_METRICS_H
#define BD_METRICS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sched_router.h"
#include "scheduler.h"

/* A growable text buffer; after an allocation failure it stays failed and
 * further appends do nothing. */
typedef struct bd_text {
  char *buf; /* NUL-terminated */
  size_t len, cap;
  bool failed;
} bd_text;

void bd_text_init(bd_text *t);
void bd_text_free(bd_text *t);
void bd_text_printf(bd_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bd_text_append(bd_text *t, const char *s, size_t n);

/* Latency histogram with fixed bucket bounds (seconds). */
#define BD_HIST_MAX_BUCKETS 20
typedef struct bd_hist {
  const double *bounds; /* ascending upper bounds; +Inf is implicit */
  int n_bounds;
  uint64_t counts[BD_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
  uint64_t count;
  double sum;
} bd_hist;

/* gRPC status codes the server refuses requests with (for the rejected
 * counter's label); index by grpc_status_code, 0..16. */
#define BD_N_GRPC_CODES 17

typedef struct bd_metrics {
  pthread_mutex_t lock;
  uint64_t requests;                    /* Generate calls accepted */
  uint64_t rejected[BD_N_GRPC_CODES];   /* refused before running, by status code */
  uint64_t finished[SCHED_R_ERROR + 1]; /* by finish reason */
  uint64_t streamed_tokens;             /* tokens sent to clients */
  uint64_t slow_client_cuts;            /* streams cut off for an unread buffer */
  uint64_t reloads_ok, reloads_failed;
  bd_hist ttft, itl, e2e, queue; /* seconds */
} bd_metrics;

bl_status bd_metrics_init(bd_metrics *m, bl_err *err);
void bd_metrics_destroy(bd_metrics *m);

/* Thread-safe updates. */
void bd_metrics_accepted(bd_metrics *m);
void bd_metrics_rejected(bd_metrics *m, int grpc_code);
void bd_metrics_itl(bd_metrics *m, double s); /* gap between two chunks of one stream */
void bd_metrics_finished(bd_metrics *m, sched_rfinish f, double ttft_s, double e2e_s,
                         double queue_s, int32_t tokens);
void bd_metrics_slow_client(bd_metrics *m);
void bd_metrics_reload(bd_metrics *m, bool ok);

/* What the caller knows at render time. */
typedef struct bd_pool_view {
  const char *name;      /* "executor", "planner" */
  const char *precision; /* "w2", "fp16" */
  sched_stats stats;     /* its replicas' folded (sched_router_stats) */
  int32_t replicas, replicas_healthy;
  double calibrated_tps[2]; /* batch 1, batch 8; 0: not measured */
} bd_pool_view;

typedef struct bd_server_view {
  bool ready, draining;
  int32_t active_streams;
  uint64_t config_generation;
  double uptime_s;
} bd_server_view;

/* The whole /metrics page: counters and histograms above, per-pool gauges
 * and counters, the router's aggregates per (policy, task class)
 * (sched_router_aggs) and auto's per-class rates and regime. router may be
 * NULL (models not loaded yet). */
void bd_metrics_render(bd_metrics *m, const bd_pool_view *pools, int n_pools, sched_router *router,
                       const bd_server_view *server, bd_text *out);

/* docs/metrics.md: a table of every family (name, type, labels, meaning)
 * and the histogram buckets, from the same table the page is rendered from. */
void bd_metrics_doc(FILE *f);

#endif
