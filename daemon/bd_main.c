/* ballastd: wiring only. Parse the command line, load the config and the
 * engine, start the gRPC server and the admin endpoint, then run the
 * libevent loop: SIGHUP reloads, SIGTERM/SIGINT drain (readiness false, new
 * calls UNAVAILABLE, running ones finish within server.drain_timeout_s, the
 * rest are cancelled) and exit 0. Once idle after serving, the heap's free
 * pages go back to the system (glibc keeps them otherwise, and a burst of
 * streams would hold its peak RSS for good). A pool that turns unhealthy
 * after a device error wakes the loop (health_ev), which tells the health
 * watchers; the process stays up. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__ /* defined by the headers above */
#include <malloc.h>
#endif

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include "bd_daemon.h"
#include "bl_log.h"

#define DRAIN_POLL_MS  20
#define CANCEL_GRACE_S 10.0 /* after cancelling at the drain timeout */
#define IDLE_CHECK_S   2    /* how often an idle daemon looks at its heap */

typedef struct app {
  bd_daemon d;
  struct event_base *base;
  struct evhttp *http;
  struct event *sig_hup, *sig_term, *sig_int, *drain_timer, *idle_timer;
  struct event *health_ev;  /* made active by a pool thread (event_active is thread-safe) */
  uint_fast64_t trimmed_at; /* streams_started when the heap was last trimmed */
  double drain_start, drain_timeout;
  bool cancelled;
} app;

static void usage(FILE *f) {
  fprintf(f, "usage: ballastd --config FILE [--log-level debug|info|warn|error]\n"
             "       ballastd --check-config FILE   validate a config and exit\n"
             "       ballastd --config-doc          print docs/configuration.md\n");
}

static void on_hup(evutil_socket_t fd, short what, void *arg) {
  app *a = arg;
  bd_reload_result res;
  bl_err err = {0};
  bl_log(BL_LOG_INFO, "SIGHUP: reloading %s", a->d.config_path);
  bd_daemon_reload(&a->d, &res, &err); /* logs either way */
}

static void drain_tick(evutil_socket_t fd, short what, void *arg) {
  app *a = arg;
  double waited = sched_now() - a->drain_start;
  int active = atomic_load(&a->d.active_streams);
  if (active == 0) {
    bl_log(BL_LOG_INFO, "drained after %.2fs", waited);
    event_base_loopexit(a->base, NULL);
    return;
  }
  if (!a->cancelled && waited >= a->drain_timeout) {
    bl_log(BL_LOG_WARN, "drain timeout (%.1fs): cancelling %d running streams", a->drain_timeout,
           active);
    bd_grpc_cancel_all(a->d.grpc);
    a->cancelled = true;
  } else if (a->cancelled && waited >= a->drain_timeout + CANCEL_GRACE_S) {
    bl_log(BL_LOG_ERROR, "%d streams did not end after cancelling; exiting", active);
    event_base_loopexit(a->base, NULL);
    return;
  }
  struct timeval tv = {0, DRAIN_POLL_MS * 1000};
  evtimer_add(a->drain_timer, &tv);
}

/* Every IDLE_CHECK_S: when no stream is open and some ran since the last
 * trim, hand the heap's free pages back. */
static void idle_tick(evutil_socket_t fd, short what, void *arg) {
  app *a = arg;
  uint_fast64_t started = atomic_load(&a->d.streams_started);
  if (atomic_load(&a->d.active_streams) || started == a->trimmed_at) return;
  a->trimmed_at = started;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

static void on_term(evutil_socket_t fd, short what, void *arg) {
  app *a = arg;
  if (atomic_load(&a->d.draining)) { /* a second signal: stop waiting */
    bl_log(BL_LOG_WARN, "second signal: cancelling running streams");
    if (!a->cancelled) bd_grpc_cancel_all(a->d.grpc);
    a->cancelled = true;
    return;
  }
  bl_log(BL_LOG_INFO, "signal %d: draining (%d running)", (int)fd,
         atomic_load(&a->d.active_streams));
  atomic_store(&a->d.draining, true);
  if (a->d.on_health_change) a->d.on_health_change(&a->d);
  pthread_rwlock_rdlock(&a->d.cfg_lock);
  a->drain_timeout = a->d.cfg->drain_timeout_s;
  pthread_rwlock_unlock(&a->d.cfg_lock);
  a->drain_start = sched_now();
  drain_tick(-1, 0, a);
}

/* On a pool's thread: hand the news to the main loop. */
static void pool_unhealthy(void *arg) {
  app *a = arg;
  event_active(a->health_ev, EV_TIMEOUT, 0);
}

static void on_health(evutil_socket_t fd, short what, void *arg) {
  app *a = arg;
  char why[SCHED_ERROR_MAX];
  if (!bd_daemon_serving(&a->d, why, sizeof why) && !atomic_load(&a->d.draining))
    bl_log(BL_LOG_ERROR, "not serving: %s", why);
  if (a->d.on_health_change) a->d.on_health_change(&a->d);
}

static int check_config(const char *path) {
  bd_config *c = NULL;
  bl_err err = {0};
  if (bd_config_load(path, &c, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  bd_config_free(c);
  printf("%s: ok\n", path);
  return 0;
}

static bl_status start(app *a, bl_err *err) {
  bd_daemon *d = &a->d;
  bl_status st = bd_metrics_init(&d->metrics, err);
  if (st) return st;
  if ((st = bd_config_load(d->config_path, &d->cfg, err))) return st;
  bd_daemon_apply_log_level(d->cfg);
  atomic_store(&d->generation, 1);
  d->t_start = sched_now();
  if (!(a->health_ev = event_new(a->base, -1, 0, on_health, a)))
    return bl_fail(err, BL_ENOMEM, "out of memory");
  bd_engine_opts eo = {.inject_fault = getenv("BALLAST_INJECT_FAULT"), /* a test hook */
                       .on_unhealthy = pool_unhealthy,
                       .user = a};
  if ((st = bd_engine_open(&d->engine, d->cfg, &eo, err))) return st;
  if ((st = bd_grpc_start(d, d->cfg, &d->grpc, err))) return st;
  if ((st = bd_admin_start(d, a->base, d->cfg->admin_listen, &a->http, err))) return st;
  a->sig_hup = evsignal_new(a->base, SIGHUP, on_hup, a);
  a->sig_term = evsignal_new(a->base, SIGTERM, on_term, a);
  a->sig_int = evsignal_new(a->base, SIGINT, on_term, a);
  a->drain_timer = evtimer_new(a->base, drain_tick, a);
  a->idle_timer = event_new(a->base, -1, EV_PERSIST, idle_tick, a);
  if (!a->sig_hup || !a->sig_term || !a->sig_int || !a->drain_timer || !a->idle_timer)
    return bl_fail(err, BL_ENOMEM, "out of memory");
  struct timeval idle_tv = {IDLE_CHECK_S, 0};
  evtimer_add(a->idle_timer, &idle_tv);
  evsignal_add(a->sig_hup, NULL);
  evsignal_add(a->sig_term, NULL);
  evsignal_add(a->sig_int, NULL);
  atomic_store(&d->ready, true);
  if (d->on_health_change) d->on_health_change(d);
  return BL_OK;
}

static void stop(app *a) {
  bd_daemon *d = &a->d;
  atomic_store(&d->ready, false);
  if (d->grpc) bd_grpc_stop(d->grpc);
  d->grpc = NULL;
  bd_engine_close(&d->engine);
  if (a->http) evhttp_free(a->http);
  struct event *evs[] = {a->sig_hup,     a->sig_term,   a->sig_int,
                         a->drain_timer, a->idle_timer, a->health_ev};
  for (size_t i = 0; i < sizeof evs / sizeof *evs; i++)
    if (evs[i]) event_free(evs[i]);
  bd_config_free(d->cfg);
  bd_metrics_destroy(&d->metrics);
}

int main(int argc, char **argv) {
  const char *config = NULL, *level = NULL;
  for (int i = 1; i < argc; i++) {
    bool has = i + 1 < argc;
    if (!strcmp(argv[i], "--check-config") && has) return check_config(argv[i + 1]);
    if (!strcmp(argv[i], "--config-doc")) return bd_config_doc(stdout), 0;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout), 0;
    if (!strcmp(argv[i], "--config") && has)
      config = argv[++i];
    else if (!strcmp(argv[i], "--log-level") && has)
      level = argv[++i];
    else
      return usage(stderr), 2;
  }
  if (!config) return usage(stderr), 2;
  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();
  static app a; /* zeroed; lives for the whole process */
  a.d.config_path = (char *)config;
  pthread_rwlock_init(&a.d.cfg_lock, NULL);
  pthread_mutex_init(&a.d.reload_lock, NULL);
  a.base = event_base_new();
  if (!a.base) {
    fprintf(stderr, "ballastd: cannot create the event loop\n");
    return 1;
  }
  bl_err err = {0};
  bl_status st = start(&a, &err);
  if (!st && level) {
    bd_config tmp = {.log_level = (char *)level};
    bd_daemon_apply_log_level(&tmp);
  }
  if (st) {
    fprintf(stderr, "ballastd: %s\n", err.msg);
    stop(&a);
    event_base_free(a.base);
    return 1;
  }
  printf("ballastd ready grpc=%s admin=%s\n", a.d.grpc_addr, a.d.admin_addr);
  fflush(stdout);
  bl_log(BL_LOG_INFO, "serving: grpc %s, admin %s, config %s", a.d.grpc_addr, a.d.admin_addr,
         config);
  event_base_dispatch(a.base);
  stop(&a);
  event_base_free(a.base);
  pthread_rwlock_destroy(&a.d.cfg_lock);
  pthread_mutex_destroy(&a.d.reload_lock);
  bl_log(BL_LOG_INFO, "exit");
  return 0;
}
