/* The daemon's shared operations: reload (nginx's model: build the new
 * config beside the old, keep the old when the new one fails), the limits a
 * request reads, the admin token check, and the metrics page. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bd_daemon.h"
#include "bl_log.h"

static bl_log_level log_level(const char *s) {
  if (!strcmp(s, "debug")) return BL_LOG_DEBUG;
  if (!strcmp(s, "warn")) return BL_LOG_WARN;
  if (!strcmp(s, "error")) return BL_LOG_ERROR;
  return BL_LOG_INFO;
}

void bd_daemon_apply_log_level(const bd_config *c) { bl_log_set_level(log_level(c->log_level)); }

bl_status bd_daemon_reload(bd_daemon *d, bd_reload_result *res, bl_err *err) {
  memset(res, 0, sizeof *res);
  pthread_mutex_lock(&d->reload_lock);
  bd_config *nc = NULL;
  bl_status st = bd_config_load(d->config_path, &nc, err);
  if (!st) { /* RESTART keys keep their running values until a restart */
    const int max = (int)(sizeof res->restart_keys / sizeof *res->restart_keys);
    pthread_rwlock_rdlock(&d->cfg_lock);
    int n = bd_config_restart_diff(d->cfg, nc, res->restart_keys, max);
    res->n_restart_keys = n < max ? n : max;
    st = bd_config_keep_restart(nc, d->cfg);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (st) bl_fail(err, st, "out of memory");
  }
  if (!st) { /* the router checks what the config parser cannot: templates, the default */
    sched_router_cfg rc = bd_engine_router_cfg(&d->engine, nc);
    st = sched_router_reconfigure(d->engine.router, &rc, err);
  }
  if (st) {
    pthread_mutex_unlock(&d->reload_lock);
    bd_config_free(nc);
    res->n_restart_keys = 0;
    bd_metrics_reload(&d->metrics, false);
    bl_log(BL_LOG_WARN, "reload refused, the running config stays: %s", err->msg);
    return st;
  }
  pthread_rwlock_wrlock(&d->cfg_lock);
  bd_config *old = d->cfg;
  d->cfg = nc;
  res->generation = atomic_fetch_add(&d->generation, 1) + 1;
  pthread_rwlock_unlock(&d->cfg_lock);
  bd_daemon_apply_log_level(nc);
  pthread_mutex_unlock(&d->reload_lock);
  bd_config_free(old); /* nothing reads it outside the lock */
  bd_metrics_reload(&d->metrics, true);
  bl_log(BL_LOG_INFO, "reloaded %s: generation %llu", d->config_path,
         (unsigned long long)res->generation);
  for (int i = 0; i < res->n_restart_keys; i++)
    bl_log(BL_LOG_WARN, "reload: %s changed; it takes effect after a restart",
           res->restart_keys[i]);
  return BL_OK;
}

bd_limits bd_daemon_limits(bd_daemon *d) {
  pthread_rwlock_rdlock(&d->cfg_lock);
  const bd_config *c = d->cfg;
  bd_limits l = {.max_message_bytes = c->max_message_bytes,
                 .max_prompt_tokens = c->max_prompt_tokens,
                 .max_tokens = c->max_tokens,
                 .default_max_tokens = c->default_max_tokens,
                 .max_streams = c->max_streams,
                 .stream_buffer_bytes = c->stream_buffer_bytes};
  pthread_rwlock_unlock(&d->cfg_lock);
  return l;
}

bool bd_daemon_serving(bd_daemon *d, char *why, size_t n) {
  const char *state = !atomic_load(&d->ready)     ? "starting"
                      : atomic_load(&d->draining) ? "draining"
                                                  : NULL;
  if (state) {
    if (why && n) snprintf(why, n, "%s", state);
    return false;
  }
  sched_stats s; /* the executor serves while one of its replicas is healthy */
  sched_router_stats(d->engine.router, 0, &s);
  if (!s.healthy && why && n) snprintf(why, n, "%s", s.error);
  return s.healthy;
}

int bd_daemon_check_token(bd_daemon *d, const char *bearer, size_t len) {
  pthread_rwlock_rdlock(&d->cfg_lock);
  const char *tok = d->cfg->admin_token;
  int r = 2;
  if (tok) {
    size_t n = strlen(tok);
    unsigned diff = (unsigned)(n != len) | (unsigned)!bearer;
    for (size_t i = 0; bearer && i < len; i++)
      diff |= (unsigned char)(bearer[i] ^ tok[i % (n ? n : 1)]);
    r = diff ? 1 : 0;
  }
  pthread_rwlock_unlock(&d->cfg_lock);
  return r;
}

void bd_daemon_render_metrics(bd_daemon *d, bd_text *out) {
  bd_pool_view v[2];
  const bd_engine *e = &d->engine;
  int n = atomic_load(&d->ready) ? e->n_pools : 0;
  for (int i = 0; i < n; i++) {
    v[i].name = e->pools[i].name;
    v[i].precision = e->pools[i].precision;
    v[i].replicas_healthy = sched_router_stats(e->router, i, &v[i].stats);
    v[i].replicas = e->pools[i].n_rep;
    v[i].calibrated_tps[0] = sched_router_calibrated(e->router, i, 1);
    v[i].calibrated_tps[1] = sched_router_calibrated(e->router, i, 8);
  }
  bd_server_view sv = {.ready = bd_daemon_serving(d, NULL, 0),
                       .draining = atomic_load(&d->draining),
                       .active_streams = atomic_load(&d->active_streams),
                       .config_generation = atomic_load(&d->generation),
                       .uptime_s = sched_now() - d->t_start};
  bd_metrics_render(&d->metrics, v, n, n ? e->router : NULL, &sv, out);
}
