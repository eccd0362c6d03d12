/* The unary RPCs (Tokenize, ServerInfo, GetStats, Reload), the standard
 * grpc.health.v1 Check, and Watch, which streams the serving status each
 * time it changes (draining, or an executor pool unhealthy after a device
 * error, turns it NOT_SERVING). Unary handlers run on the completion-queue
 * thread that received the call; each is short. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ballast.pb-c.h"
#include "bd_grpc_internal.h"
#include "bl_log.h"
#include "health.pb-c.h"

#define PACK(kind, msg, out, len)                                                                  \
  do {                                                                                             \
    *(len) = kind##__get_packed_size(msg);                                                         \
    *(out) = malloc(*(len) ? *(len) : 1);                                                          \
    if (*(out)) kind##__pack(msg, *(out));                                                         \
  } while (0)

static void reply_packed(bd_grpc *g, bd_incoming *in, uint8_t *buf, size_t len) {
  if (!buf)
    bd_reply(g, in, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
  else
    bd_reply(g, in, GRPC_STATUS_OK, NULL, buf, len);
  free(buf);
}

/* ---- Tokenize ------------------------------------------------------------ */

static void tokenize(bd_grpc *g, bd_incoming *in, const uint8_t *req, size_t req_len) {
  const bd_engine *e = &g->d->engine;
  Ballast__V1__TokenizeRequest *m = ballast__v1__tokenize_request__unpack(NULL, req_len, req);
  if (!m) {
    bd_reply(g, in, GRPC_STATUS_INVALID_ARGUMENT, "malformed TokenizeRequest", NULL, 0);
    return;
  }
  bl_err err = {0};
  bl_status st = BL_OK;
  char *text = NULL;
  size_t text_len = 0;
  chat_message *msgs = NULL;
  if ((m->text && *m->text) == (m->n_messages > 0)) {
    st = bl_fail(&err, BL_EINVAL, "give exactly one of text and messages");
  } else if (m->n_messages) {
    msgs = calloc(m->n_messages, sizeof *msgs);
    if (!msgs) st = bl_fail(&err, BL_ENOMEM, "out of memory");
    for (size_t i = 0; !st && i < m->n_messages; i++) {
      const char *role = m->messages[i]->role ? m->messages[i]->role : "";
      if (!strcmp(role, "system"))
        msgs[i].role = CHAT_SYSTEM;
      else if (!strcmp(role, "user"))
        msgs[i].role = CHAT_USER;
      else if (!strcmp(role, "assistant"))
        msgs[i].role = CHAT_ASSISTANT;
      else
        st = bl_fail(&err, BL_EINVAL,
                     "messages[%zu].role '%.32s': expected system, user or assistant", i, role);
      msgs[i].content = m->messages[i]->content ? m->messages[i]->content : "";
      msgs[i].content_len = strlen(msgs[i].content);
    }
    chat_opts o = {.add_generation_prompt = true,
                   .disable_thinking = m->enable_thinking_present_case && !m->enable_thinking};
    if (!st) st = chat_render(e->chat, msgs, m->n_messages, &o, &text, &text_len, &err);
  }
  int32_t *ids = NULL;
  size_t n = 0;
  if (!st)
    st = m->n_messages ? tok_encode(e->tok, text, text_len, true, &ids, &n, &err)
                       : tok_encode(e->tok, m->text, strlen(m->text), true, &ids, &n, &err);
  free(text);
  free(msgs);
  ballast__v1__tokenize_request__free_unpacked(m, NULL);
  if (st) {
    bd_reply(g, in, bd_status_of(st), err.msg, NULL, 0);
    free(ids);
    return;
  }
  Ballast__V1__TokenizeResponse r = BALLAST__V1__TOKENIZE_RESPONSE__INIT;
  r.ids = ids;
  r.n_ids = n;
  uint8_t *buf;
  size_t len;
  PACK(ballast__v1__tokenize_response, &r, &buf, &len);
  free(ids);
  reply_packed(g, in, buf, len);
}

/* ---- ServerInfo ------------------------------------------------------------ */

static void server_info(bd_grpc *g, bd_incoming *in) {
  bd_daemon *d = g->d;
  const bd_engine *e = &d->engine;
  Ballast__V1__PoolInfo pi[2], *pp[2];
  Ballast__V1__ReplicaInfo ri[2][BD_MAX_DEVICES], *rp[2][BD_MAX_DEVICES];
  char errors[2][BD_MAX_DEVICES + 1][SCHED_ERROR_MAX]; /* [pool][0: the pool's, 1 + replica] */
  for (int i = 0; i < e->n_pools; i++) {
    const bd_pool *p = &e->pools[i];
    sched_stats st, one;
    memset(&st, 0, sizeof st);
    for (int r = 0; r < p->n_rep; r++) {
      sched_pool_stats(p->rep[r].p, &one);
      sched_stats_add(&st, &one);
      memcpy(errors[i][r + 1], one.error, sizeof one.error);
      ballast__v1__replica_info__init(&ri[i][r]);
      ri[i][r].device = (char *)p->rep[r].device;
      ri[i][r].all_reduce = (char *)model_tp_comm_name(p->rep[r].m);
      ri[i][r].healthy = one.healthy;
      ri[i][r].error = one.healthy ? (char *)"" : errors[i][r + 1];
      ri[i][r].running = one.running;
      ri[i][r].waiting = one.waiting;
      ri[i][r].kv_blocks_total = one.total_blocks;
      ri[i][r].kv_blocks_free = one.free_blocks;
      rp[i][r] = &ri[i][r];
    }
    memcpy(errors[i][0], st.error, sizeof st.error);
    ballast__v1__pool_info__init(&pi[i]);
    pi[i].name = (char *)p->name;
    pi[i].model = p->model_path;
    pi[i].precision = (char *)p->precision;
    pi[i].kv_format = (char *)p->kv_format;
    pi[i].device = (char *)p->rep[0].device;
    pi[i].n_replicas = (size_t)p->n_rep;
    pi[i].tensor_parallel = p->tensor_parallel;
    pi[i].replicas = rp[i];
    pi[i].kv_blocks_total = st.total_blocks;
    pi[i].kv_blocks_free = st.free_blocks;
    pi[i].block_size = p->block_size;
    pi[i].max_num_seqs = p->max_num_seqs;
    pi[i].running = st.running;
    pi[i].waiting = st.waiting;
    pi[i].healthy = st.healthy;
    pi[i].error = st.healthy ? (char *)"" : errors[i][0];
    pp[i] = &pi[i];
  }
  Ballast__V1__Limits lim = BALLAST__V1__LIMITS__INIT;
  Ballast__V1__ServerInfoResponse r = BALLAST__V1__SERVER_INFO_RESPONSE__INIT;
  char *names[64 + 6];
  size_t n_names = 0;
  static const char *const builtin[] = {"direct", "rescue", "plan", "plan+rescue", "fp16", "auto"};
  for (size_t i = 0; i < 6; i++)
    names[n_names++] = (char *)builtin[i];
  pthread_rwlock_rdlock(&d->cfg_lock);
  const bd_config *c = d->cfg;
  for (int32_t i = 0; i < c->n_policies && n_names < sizeof names / sizeof *names; i++)
    names[n_names++] = c->policies[i].name;
  lim.max_message_bytes = c->max_message_bytes;
  lim.max_prompt_tokens = c->max_prompt_tokens;
  lim.max_tokens = c->max_tokens;
  lim.max_streams = c->max_streams;
  lim.default_max_tokens = c->default_max_tokens;
  r.version = BD_VERSION;
  r.pools = pp;
  r.n_pools = (size_t)e->n_pools;
  r.draining = atomic_load(&d->draining);
  r.policies = names;
  r.n_policies = n_names;
  r.default_policy = c->default_policy;
  r.limits = &lim;
  r.config_generation = atomic_load(&d->generation);
  r.config_path = d->config_path;
  uint8_t *buf;
  size_t len;
  PACK(ballast__v1__server_info_response, &r, &buf, &len);
  pthread_rwlock_unlock(&d->cfg_lock);
  reply_packed(g, in, buf, len);
}

/* ---- GetStats --------------------------------------------------------------- */

typedef struct agg_list {
  sched_agg *a;
  size_t n, cap;
} agg_list;

static void collect_agg(const sched_agg *a, void *user) {
  agg_list *l = user;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 16;
    sched_agg *na = realloc(l->a, cap * sizeof *na);
    if (!na) return;
    l->a = na, l->cap = cap;
  }
  l->a[l->n++] = *a;
}

static void get_stats(bd_grpc *g, bd_incoming *in) {
  bd_daemon *d = g->d;
  const bd_engine *e = &d->engine;
  Ballast__V1__PoolStats ps[2], *pp[2];
  for (int i = 0; i < e->n_pools; i++) {
    sched_stats st;
    sched_router_stats(e->router, i, &st);
    ballast__v1__pool_stats__init(&ps[i]);
    ps[i].name = (char *)e->pools[i].name;
    ps[i].steps = st.steps;
    ps[i].prefill_tokens = st.prefill_tokens;
    ps[i].generated_tokens = st.generated_tokens;
    ps[i].preemptions = st.preemptions;
    ps[i].loops = st.loops;
    ps[i].running = st.running;
    ps[i].waiting = st.waiting;
    ps[i].kv_blocks_free = st.free_blocks;
    ps[i].kv_blocks_total = st.total_blocks;
    ps[i].decode_tps_b1 = sched_tps_at(&st, 1, true);
    ps[i].decode_tps_b8 = sched_tps_at(&st, 8, true);
    ps[i].calibrated_tps_b1 = sched_router_calibrated(e->router, i, 1);
    ps[i].calibrated_tps_b8 = sched_router_calibrated(e->router, i, 8);
    ps[i].healthy = st.healthy;
    pp[i] = &ps[i];
  }
  Ballast__V1__FinishCount fc[SCHED_R_ERROR], *fp[SCHED_R_ERROR];
  Ballast__V1__GetStatsResponse r = BALLAST__V1__GET_STATS_RESPONSE__INIT;
  pthread_mutex_lock(&d->metrics.lock);
  r.requests = d->metrics.requests;
  for (int c = 0; c < BD_N_GRPC_CODES; c++)
    r.rejected += d->metrics.rejected[c];
  for (int f = SCHED_R_STOP; f <= SCHED_R_ERROR; f++) {
    ballast__v1__finish_count__init(&fc[f - 1]);
    fc[f - 1].reason = (Ballast__V1__FinishReason)f;
    fc[f - 1].count = d->metrics.finished[f];
    fp[f - 1] = &fc[f - 1];
  }
  pthread_mutex_unlock(&d->metrics.lock);
  agg_list al = {0};
  sched_router_aggs(e->router, collect_agg, &al);
  Ballast__V1__PolicyStats *pol = calloc(al.n ? al.n : 1, sizeof *pol);
  Ballast__V1__PolicyStats **polp = calloc(al.n ? al.n : 1, sizeof *polp);
  size_t np = pol && polp ? al.n : 0;
  for (size_t i = 0; i < np; i++) {
    ballast__v1__policy_stats__init(&pol[i]);
    pol[i].policy = al.a[i].policy;
    pol[i].task_class = al.a[i].task_class;
    pol[i].requests = al.a[i].requests;
    pol[i].loops = al.a[i].loops;
    pol[i].commits = al.a[i].commits;
    pol[i].fallbacks = al.a[i].fallbacks;
    pol[i].answered = al.a[i].answered;
    pol[i].reasoning_tokens = al.a[i].reasoning_tokens;
    polp[i] = &pol[i];
  }
  r.pools = pp;
  r.n_pools = (size_t)e->n_pools;
  r.finished = fp;
  r.n_finished = SCHED_R_ERROR;
  r.active_streams = atomic_load(&d->active_streams);
  r.policies = polp;
  r.n_policies = np;
  r.uptime_s = sched_now() - d->t_start;
  uint8_t *buf;
  size_t len;
  PACK(ballast__v1__get_stats_response, &r, &buf, &len);
  free(pol);
  free(polp);
  free(al.a);
  reply_packed(g, in, buf, len);
}

/* ---- Reload --------------------------------------------------------------- */

static void reload(bd_grpc *g, bd_incoming *in) {
  size_t n = 0;
  const char *auth = bd_metadata(&in->md, "authorization", &n);
  int tok = auth && n > 7 && !strncmp(auth, "Bearer ", 7)
                ? bd_daemon_check_token(g->d, auth + 7, n - 7)
                : bd_daemon_check_token(g->d, NULL, 0);
  if (tok == 2) {
    bd_reply(g, in, GRPC_STATUS_PERMISSION_DENIED,
             "reload is off: no server.admin_token is configured", NULL, 0);
    return;
  }
  if (tok) {
    bd_reply(g, in, GRPC_STATUS_UNAUTHENTICATED,
             auth ? "the authorization metadata's bearer token is not server.admin_token"
                  : "reload needs metadata authorization: Bearer <server.admin_token>",
             NULL, 0);
    return;
  }
  bd_reload_result res;
  bl_err err = {0};
  if (bd_daemon_reload(g->d, &res, &err)) {
    bd_reply(g, in, GRPC_STATUS_FAILED_PRECONDITION, err.msg, NULL, 0);
    return;
  }
  Ballast__V1__ReloadResponse r = BALLAST__V1__RELOAD_RESPONSE__INIT;
  r.config_generation = res.generation;
  r.restart_required = (char **)res.restart_keys;
  r.n_restart_required = (size_t)res.n_restart_keys;
  r.message =
      res.n_restart_keys ? "reloaded; some changes take effect only after a restart" : "reloaded";
  uint8_t *buf;
  size_t len;
  PACK(ballast__v1__reload_response, &r, &buf, &len);
  reply_packed(g, in, buf, len);
}

/* ---- health ---------------------------------------------------------------- */

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving;

static bool known_service(const char *s) { return !*s || !strcmp(s, "ballast.v1.Ballast"); }

static serving status_now(bd_daemon *d) {
  return bd_daemon_serving(d, NULL, 0)
             ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static uint8_t *pack_health(serving s, size_t *len) {
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = s;
  uint8_t *buf;
  PACK(grpc__health__v1__health_check_response, &r, &buf, len);
  return buf;
}

static void health_check(bd_grpc *g, bd_incoming *in, const uint8_t *req, size_t req_len) {
  Grpc__Health__V1__HealthCheckRequest *m =
      grpc__health__v1__health_check_request__unpack(NULL, req_len, req);
  if (!m) {
    bd_reply(g, in, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest", NULL, 0);
    return;
  }
  bool known = known_service(m->service ? m->service : "");
  grpc__health__v1__health_check_request__free_unpacked(m, NULL);
  if (!known) {
    bd_reply(g, in, GRPC_STATUS_NOT_FOUND, "unknown service", NULL, 0);
    return;
  }
  size_t len;
  uint8_t *buf = pack_health(status_now(g->d), &len);
  reply_packed(g, in, buf, len);
}

struct bd_watch {
  bd_grpc *g;
  grpc_call *call;
  bd_watch *prev, *next; /* g->watches, under g->lock */
  pthread_mutex_t mu;
  int refs; /* the close batch, the list, a send in flight */
  bd_tag send_tag, close_tag;
  int cancelled;
  bool known, sending, md_sent, ended, listed;
  int last; /* last status sent; -1: none */
  grpc_byte_buffer *inflight;
};

static void watch_unref_unlock(bd_watch *w) {
  bool last = --w->refs == 0;
  pthread_mutex_unlock(&w->mu);
  if (!last) return;
  grpc_call_unref(w->call);
  pthread_mutex_destroy(&w->mu);
  free(w);
}

static void watch_pump(bd_watch *w) {
  if (w->sending || w->ended) return;
  serving now = w->known ? status_now(w->g->d)
                         : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  if ((int)now == w->last) return;
  size_t len;
  uint8_t *buf = pack_health(now, &len);
  if (!buf) return;
  w->inflight = bd_make_buffer(buf, len);
  free(buf);
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (!w->md_sent) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA, w->md_sent = true;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n++].data.send_message.send_message = w->inflight;
  w->sending = true;
  w->refs++;
  w->last = (int)now;
  if (grpc_call_start_batch(w->call, ops, n, &w->send_tag, NULL) != GRPC_CALL_OK) {
    w->sending = false, w->ended = true, w->refs--;
    grpc_byte_buffer_destroy(w->inflight), w->inflight = NULL;
  }
}

static void watch_sent(bd_tag *t, bool ok) {
  bd_watch *w = (bd_watch *)((char *)t - offsetof(bd_watch, send_tag));
  pthread_mutex_lock(&w->mu);
  grpc_byte_buffer_destroy(w->inflight), w->inflight = NULL;
  w->sending = false;
  if (!ok) w->ended = true;
  watch_pump(w);
  watch_unref_unlock(w);
}

static void watch_closed(bd_tag *t, bool ok) {
  bd_watch *w = (bd_watch *)((char *)t - offsetof(bd_watch, close_tag));
  bd_grpc *g = w->g;
  pthread_mutex_lock(&g->lock);
  pthread_mutex_lock(&w->mu);
  w->ended = true;
  if (w->listed) {
    w->listed = false;
    if (w->prev)
      w->prev->next = w->next;
    else
      g->watches = w->next;
    if (w->next) w->next->prev = w->prev;
    w->refs--; /* the list's */
  }
  pthread_mutex_unlock(&g->lock);
  watch_unref_unlock(w); /* the close batch's */
}

void bd_health_watch_start(bd_grpc *g, bd_incoming *in) {
  size_t len;
  uint8_t *req = bd_read_payload(in->payload, &len);
  Grpc__Health__V1__HealthCheckRequest *m =
      req ? grpc__health__v1__health_check_request__unpack(NULL, len, req) : NULL;
  free(req);
  if (!m) {
    bd_reply(g, in, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest", NULL, 0);
    return;
  }
  bd_watch *w = calloc(1, sizeof *w);
  if (!w) {
    grpc__health__v1__health_check_request__free_unpacked(m, NULL);
    bd_reply(g, in, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
    return;
  }
  w->known = known_service(m->service ? m->service : "");
  grpc__health__v1__health_check_request__free_unpacked(m, NULL);
  if (in->payload) grpc_byte_buffer_destroy(in->payload);
  grpc_metadata_array_destroy(&in->md);
  pthread_mutex_init(&w->mu, NULL);
  w->g = g;
  w->call = in->call;
  w->last = -1;
  w->send_tag.fn = watch_sent;
  w->close_tag.fn = watch_closed;
  w->refs = 2;
  w->listed = true;
  pthread_mutex_lock(&g->lock);
  w->next = g->watches;
  if (g->watches) g->watches->prev = w;
  g->watches = w;
  pthread_mutex_lock(&w->mu);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &w->cancelled;
  if (grpc_call_start_batch(w->call, &op, 1, &w->close_tag, NULL) != GRPC_CALL_OK) {
    w->ended = true; /* cannot happen on a fresh call; stay listed until stop */
  }
  watch_pump(w);
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_unlock(&g->lock);
}

void bd_health_changed(bd_daemon *d) {
  bd_grpc *g = d->grpc;
  if (!g) return;
  pthread_mutex_lock(&g->lock);
  for (bd_watch *w = g->watches; w; w = w->next) {
    pthread_mutex_lock(&w->mu);
    watch_pump(w);
    pthread_mutex_unlock(&w->mu);
  }
  pthread_mutex_unlock(&g->lock);
}

void bd_health_end_all(bd_grpc *g) {
  pthread_mutex_lock(&g->lock);
  for (bd_watch *w = g->watches; w; w = w->next)
    grpc_call_cancel(w->call, NULL);
  pthread_mutex_unlock(&g->lock);
}

/* ---- dispatch --------------------------------------------------------------- */

void bd_service_unary(bd_grpc *g, bd_method m, bd_incoming *in) {
  size_t len;
  uint8_t *req = bd_read_payload(in->payload, &len);
  if (!req) {
    bd_reply(g, in, GRPC_STATUS_INVALID_ARGUMENT, "no request message", NULL, 0);
    return;
  }
  if (m != BD_M_HEALTH_CHECK && !atomic_load(&g->d->ready)) {
    free(req);
    bd_reply(g, in, GRPC_STATUS_UNAVAILABLE, "starting", NULL, 0);
    return;
  }
  switch (m) {
  case BD_M_TOKENIZE: tokenize(g, in, req, len); break;
  case BD_M_SERVER_INFO: server_info(g, in); break;
  case BD_M_GET_STATS: get_stats(g, in); break;
  case BD_M_RELOAD: reload(g, in); break;
  case BD_M_HEALTH_CHECK: health_check(g, in, req, len); break;
  default: bd_reply(g, in, GRPC_STATUS_UNIMPLEMENTED, "no such method", NULL, 0); break;
  }
  free(req);
}
