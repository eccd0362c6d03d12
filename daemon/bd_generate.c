/* Generate: one server-streaming call per request.
 *
 * The request is decoded and checked here (limits, sampling ranges, input
 * shape), then handed to the router; bad input ends with a status before
 * anything runs. The router's events arrive on pool threads and become
 * messages on the call's send queue: tokens are gathered into one Chunk
 * while a send is in flight, so a slow client gets fewer, larger chunks and
 * never blocks a pool; when the unsent output passes stream_buffer_bytes
 * the request is cancelled and the call ends RESOURCE_EXHAUSTED. A client
 * that cancels (or whose deadline passes) cancels the router request, which
 * frees its KV blocks at the pool's next step.
 *
 * A stream is freed when its last holder lets go: the router (until FINAL),
 * the RECV_CLOSE_ON_SERVER batch, and a send batch in flight. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ballast.pb-c.h"
#include "bd_grpc_internal.h"
#include "bl_log.h"

typedef struct pending {
  struct pending *next;
  uint8_t *data;
  size_t len;
  bool final; /* the last message: the status follows it */
} pending;

struct bd_stream {
  bd_grpc *g;
  grpc_call *call;
  bd_stream *prev, *next; /* g->streams, under g->lock */
  pthread_mutex_t mu;     /* everything below */
  int refs;
  uint64_t id; /* the router's */
  char request_id[129];
  int32_t buffer_limit;
  double t_arrive, t_last;
  double deadline; /* sched_now() clock; 0: none */
  double queue_s;  /* arrival to the router's acceptance (decode, checks, tokenizing) */
  /* RECV_CLOSE_ON_SERVER */
  bd_tag close_tag;
  int cancelled;
  /* sending */
  bd_tag send_tag;
  bool sending, md_sent, ended; /* ended: the status went out, or the call is gone */
  grpc_byte_buffer *inflight;
  grpc_slice status_msg;
  bool status_set;
  grpc_status_code status;
  pending *head, *tail;
  size_t queued;
  /* the chunk being gathered: text and ids from one pool */
  const char *acc_pool, *acc_prec;
  char *acc_text;
  size_t acc_len, acc_cap;
  int32_t *acc_ids;
  size_t acc_n, acc_idcap;
  bool final_seen, cut;
  bool expired; /* the final says DEADLINE: the status is DEADLINE_EXCEEDED */
};

/* ---- the send queue ---------------------------------------------------- */

static uint8_t *pack_response(const Ballast__V1__GenerateResponse *r, size_t *len) {
  *len = ballast__v1__generate_response__get_packed_size(r);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf) ballast__v1__generate_response__pack(r, buf);
  return buf;
}

static void stream_free(bd_stream *s) {
  bd_grpc *g = s->g;
  pthread_mutex_lock(&g->lock);
  if (s->prev)
    s->prev->next = s->next;
  else
    g->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  pthread_mutex_unlock(&g->lock);
  for (pending *p = s->head, *n; p; p = n)
    n = p->next, free(p->data), free(p);
  if (s->status_set) grpc_slice_unref(s->status_msg);
  if (s->call) grpc_call_unref(s->call);
  free(s->acc_text);
  free(s->acc_ids);
  pthread_mutex_destroy(&s->mu);
  atomic_fetch_sub(&g->d->active_streams, 1);
  free(s);
}

/* Drop a reference; the caller holds s->mu, which this releases. */
static void unref_unlock(bd_stream *s) {
  bool last = --s->refs == 0;
  pthread_mutex_unlock(&s->mu);
  if (last) stream_free(s);
}

static void enqueue(bd_stream *s, uint8_t *data, size_t len, bool final) {
  pending *p = data ? malloc(sizeof *p) : NULL;
  if (!p) { /* out of memory: end the call rather than send a gap */
    free(data);
    s->cut = true;
    return;
  }
  *p = (pending){.data = data, .len = len, .final = final};
  if (s->tail)
    s->tail->next = p;
  else
    s->head = p;
  s->tail = p;
  s->queued += len;
}

static void flush_chunk(bd_stream *s) {
  if (!s->acc_len && !s->acc_n) return;
  Ballast__V1__Chunk c = BALLAST__V1__CHUNK__INIT;
  char empty = 0;
  if (s->acc_text) s->acc_text[s->acc_len] = 0;
  c.text = s->acc_text ? s->acc_text : &empty;
  c.token_ids = s->acc_ids;
  c.n_token_ids = s->acc_n;
  c.pool = (char *)s->acc_pool;
  c.precision = (char *)s->acc_prec;
  Ballast__V1__GenerateResponse r = BALLAST__V1__GENERATE_RESPONSE__INIT;
  r.event_case = BALLAST__V1__GENERATE_RESPONSE__EVENT_CHUNK;
  r.chunk = &c;
  size_t len;
  uint8_t *buf = pack_response(&r, &len);
  enqueue(s, buf, len, false);
  s->acc_len = s->acc_n = 0;
}

static void send_done(bd_tag *t, bool ok);

/* Start the next send if none is in flight (s->mu held). */
static void pump(bd_stream *s) {
  if (s->sending || s->ended) return;
  if (s->cut && !s->status_set) { /* slow client or no memory: end with a status */
    for (pending *p = s->head, *n; p; p = n)
      n = p->next, free(p->data), free(p);
    s->head = s->tail = NULL;
    s->queued = 0;
    s->acc_len = s->acc_n = 0;
    if (!s->final_seen) return; /* wait for the router to let go */
    s->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
    s->status_msg = grpc_slice_from_copied_string(
        "the client left too much output unread (limits.stream_buffer_bytes)");
    s->status_set = true;
  }
  if (!s->head && !s->status_set) flush_chunk(s);
  if (!s->head && !s->status_set) return;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (!s->md_sent) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA, s->md_sent = true;
  bool final = s->status_set;
  if (s->head) {
    pending *p = s->head;
    s->head = p->next;
    if (!s->head) s->tail = NULL;
    s->queued -= p->len;
    s->inflight = bd_make_buffer(p->data, p->len);
    final = p->final;
    free(p->data);
    free(p);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = s->inflight;
  }
  if (final && !s->status_set && s->expired) {
    /* The pool may notice the deadline a moment before the transport does;
     * either way the client sees DEADLINE_EXCEEDED, after the final. */
    s->status = GRPC_STATUS_DEADLINE_EXCEEDED;
    s->status_msg = grpc_slice_from_copied_string(
        "the request's deadline passed; the final message holds what was generated");
    s->status_set = true;
  }
  if (final) {
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = s->status_set ? s->status : GRPC_STATUS_OK;
    ops[n++].data.send_status_from_server.status_details = s->status_set ? &s->status_msg : NULL;
  }
  s->sending = true;
  s->refs++;
  if (grpc_call_start_batch(s->call, ops, n, &s->send_tag, NULL) != GRPC_CALL_OK) {
    s->sending = false;
    s->ended = true;
    s->refs--;
    if (s->inflight) grpc_byte_buffer_destroy(s->inflight), s->inflight = NULL;
  } else if (final) {
    s->ended = true; /* nothing may follow the status */
  }
}

static void send_done(bd_tag *t, bool ok) {
  bd_stream *s = (bd_stream *)((char *)t - offsetof(bd_stream, send_tag));
  pthread_mutex_lock(&s->mu);
  if (s->inflight) grpc_byte_buffer_destroy(s->inflight), s->inflight = NULL;
  s->sending = false;
  if (!ok) s->ended = true; /* the call is gone; RECV_CLOSE tells the router */
  pump(s);
  unref_unlock(s);
}

static void close_done(bd_tag *t, bool ok) {
  bd_stream *s = (bd_stream *)((char *)t - offsetof(bd_stream, close_tag));
  pthread_mutex_lock(&s->mu);
  bool stop = (s->cancelled || !ok) && !s->final_seen;
  /* The transport ends a call at its deadline; the pool ends the request
   * at the same deadline by itself (finish DEADLINE) within a step. */
  if (stop && s->deadline > 0 && sched_now() >= s->deadline - 0.005) stop = false;
  if (s->cancelled || !ok) s->ended = true;
  uint64_t id = s->id;
  sched_router *r = s->g->d->engine.router;
  unref_unlock(s);
  if (stop) sched_router_cancel(r, id); /* its FINAL frees the blocks and the stream */
}

/* ---- router events -> messages ----------------------------------------- */

static bool acc_add(bd_stream *s, const sched_revent *ev) {
  if (s->acc_pool && (strcmp(s->acc_pool, ev->pool) || strcmp(s->acc_prec, ev->precision)))
    flush_chunk(s);
  s->acc_pool = ev->pool;
  s->acc_prec = ev->precision;
  if (s->acc_len + ev->text_len + 1 > s->acc_cap) {
    size_t cap = 2 * (s->acc_len + ev->text_len + 1) + 64;
    char *nt = realloc(s->acc_text, cap);
    if (!nt) return false;
    s->acc_text = nt, s->acc_cap = cap;
  }
  memcpy(s->acc_text + s->acc_len, ev->text, ev->text_len);
  s->acc_len += ev->text_len;
  if (s->acc_n == s->acc_idcap) {
    size_t cap = s->acc_idcap ? 2 * s->acc_idcap : 16;
    int32_t *ni = realloc(s->acc_ids, cap * sizeof *ni);
    if (!ni) return false;
    s->acc_ids = ni, s->acc_idcap = cap;
  }
  s->acc_ids[s->acc_n++] = ev->token;
  return true;
}

static void control(bd_stream *s, const sched_revent *ev) {
  Ballast__V1__Control c = BALLAST__V1__CONTROL__INIT;
  char *text = NULL;
  switch (ev->kind) {
  case SCHED_REV_PLAN: c.kind = BALLAST__V1__CONTROL__KIND__PLAN_READY; break;
  case SCHED_REV_LOOP: c.kind = BALLAST__V1__CONTROL__KIND__LOOP_DETECTED; break;
  case SCHED_REV_COMMIT: c.kind = BALLAST__V1__CONTROL__KIND__COMMIT; break;
  default: c.kind = BALLAST__V1__CONTROL__KIND__FALLBACK; break;
  }
  if (ev->text_len) {
    text = malloc(ev->text_len + 1);
    if (!text) {
      s->cut = true;
      return;
    }
    memcpy(text, ev->text, ev->text_len);
    text[ev->text_len] = 0;
    c.text = text;
  }
  c.loop_fire_at = ev->trace ? ev->trace->loop_fire_at : -1;
  c.loop_onset = ev->trace ? ev->trace->loop_onset : -1;
  c.keep_bytes = ev->keep_bytes;
  if (ev->kind == SCHED_REV_FALLBACK && ev->trace)
    c.fallback_mode = (char *)sched_fallback_name(ev->trace->fallback_mode);
  Ballast__V1__GenerateResponse r = BALLAST__V1__GENERATE_RESPONSE__INIT;
  r.event_case = BALLAST__V1__GENERATE_RESPONSE__EVENT_CONTROL;
  r.control = &c;
  flush_chunk(s);
  size_t len;
  uint8_t *buf = pack_response(&r, &len);
  free(text);
  enqueue(s, buf, len, false);
}

static char *str_or_empty(const char *s) { return (char *)(s ? s : ""); }

static void final_message(bd_stream *s, const sched_revent *ev) {
  const sched_trace *t = ev->trace;
  const bd_engine *e = &s->g->d->engine;
  const char *pp = e->n_pools > 1 ? e->pools[1].precision : "";
  Ballast__V1__PoolUsage u[4], *up[4];
  int nu = 0;
  struct {
    const char *pool, *prec, *phase;
    int32_t prompt, gen;
  } ph[4] = {{"executor", e->pools[0].precision, "exec", t->exec_prompt_tokens, t->exec_tokens},
             {"planner", pp, "plan", t->plan_prompt_tokens, t->plan_tokens},
             {"planner", pp, "fallback", t->fallback_prompt_tokens, t->fallback_tokens},
             {"planner", pp, "fp16", t->fp16_prompt_tokens, t->fp16_tokens}};
  for (int i = 0; i < 4; i++) {
    if (!ph[i].prompt && !ph[i].gen) continue;
    ballast__v1__pool_usage__init(&u[nu]);
    u[nu].pool = (char *)ph[i].pool;
    u[nu].precision = (char *)ph[i].prec;
    u[nu].phase = (char *)ph[i].phase;
    u[nu].prompt_tokens = ph[i].prompt;
    u[nu].completion_tokens = ph[i].gen;
    up[nu] = &u[nu];
    nu++;
  }
  Ballast__V1__Trace tr = BALLAST__V1__TRACE__INIT;
  tr.reasoning_tokens = t->reasoning_tokens;
  tr.hit_budget = t->hit_budget;
  tr.think_opened = t->think_opened;
  tr.think_closed = t->think_closed;
  tr.first_answer_at = t->first_answer_at;
  tr.commit_gap = t->commit_gap;
  tr.loop = t->loop;
  tr.loop_fire_at = t->loop_fire_at;
  tr.loop_onset = t->loop_onset;
  tr.failure = (char *)sched_failure_name(t->failure);
  tr.fell_back = t->fell_back;
  tr.fallback_mode = t->fell_back ? (char *)sched_fallback_name(t->fallback_mode) : "";
  Ballast__V1__Timings tm = BALLAST__V1__TIMINGS__INIT;
  tm.ttft_s = t->ttft_s;
  tm.total_s = t->total_s;
  tm.plan_s = t->plan_s;
  tm.exec_s = t->exec_s;
  tm.fallback_s = t->fallback_s;
  Ballast__V1__Accounting ac = BALLAST__V1__ACCOUNTING__INIT;
  ac.est_s_b1 = t->est_s[0], ac.est_s_b8 = t->est_s[1];
  ac.fp16_s_b1 = t->fp16_s[0], ac.fp16_s_b8 = t->fp16_s[1];
  ac.speedup_b1 = t->speedup[0], ac.speedup_b8 = t->speedup[1];
  Ballast__V1__Final f = BALLAST__V1__FINAL__INIT;
  f.finish_reason = (Ballast__V1__FinishReason)ev->finish; /* the enums share their order */
  f.answer = str_or_empty(ev->answer);
  f.graded_answer = str_or_empty(ev->graded);
  f.error = str_or_empty(ev->finish == SCHED_R_ERROR ? ev->error : NULL);
  f.usage = up;
  f.n_usage = (size_t)nu;
  f.trace = &tr;
  f.timings = &tm;
  f.accounting = &ac;
  f.policy = (char *)t->policy;
  f.ran = (char *)t->ran;
  f.regime = !strcmp(t->policy, "auto") ? (char *)sched_regime_name(t->regime) : "";
  f.request_id = s->request_id;
  s->expired = ev->finish == SCHED_R_DEADLINE;
  Ballast__V1__GenerateResponse r = BALLAST__V1__GENERATE_RESPONSE__INIT;
  r.event_case = BALLAST__V1__GENERATE_RESPONSE__EVENT_FINAL;
  r.final = &f;
  flush_chunk(s);
  size_t len;
  uint8_t *buf = pack_response(&r, &len);
  enqueue(s, buf, len, true);
}

static const char *path_of(const sched_trace *t) {
  if (t->fp16_tokens || t->fp16_prompt_tokens) return "planner";
  bool plan = t->plan_tokens || t->plan_prompt_tokens;
  if (t->fell_back) return plan ? "planner>executor>planner" : "executor>planner";
  return plan ? "planner>executor" : "executor";
}

static void log_final(bd_stream *s, const sched_revent *ev) {
  const sched_trace *t = ev->trace;
  int32_t prompt = t->exec_prompt_tokens ? t->exec_prompt_tokens : t->fp16_prompt_tokens;
  int32_t tokens = t->exec_tokens + t->fallback_tokens + t->fp16_tokens;
  bl_log(ev->finish == SCHED_R_ERROR ? BL_LOG_WARN : BL_LOG_INFO,
         "request id=%s policy=%s ran=%s path=%s finish=%s prompt=%d tokens=%d plan=%d "
         "ttft=%.3fs total=%.3fs%s%s",
         s->request_id, t->policy, t->ran, path_of(t), sched_rfinish_name(ev->finish), prompt,
         tokens, t->plan_tokens, t->ttft_s, t->total_s, ev->error ? " error=" : "",
         ev->error ? ev->error : "");
  bd_metrics_finished(&s->g->d->metrics, ev->finish, tokens > 0 ? t->ttft_s : -1, t->total_s,
                      s->queue_s, tokens);
}

static void on_event(const sched_revent *ev, void *user) {
  bd_stream *s = user;
  bd_grpc *g = s->g;
  bool cancel = false;
  pthread_mutex_lock(&s->mu);
  switch (ev->kind) {
  case SCHED_REV_TOKEN: {
    double now = sched_now();
    if (s->t_last > 0) bd_metrics_itl(&g->d->metrics, now - s->t_last);
    s->t_last = now;
    if (s->ended || s->cut) break;
    if (!acc_add(s, ev)) s->cut = true;
    /* the chunk still gathering counts too: its text and (at most 4 bytes
     * each, packed) its token ids */
    if (s->queued + s->acc_len + 4 * s->acc_n > (size_t)s->buffer_limit) {
      s->cut = true;
      bd_metrics_slow_client(&g->d->metrics);
    }
    cancel = s->cut;
    break;
  }
  case SCHED_REV_FINAL:
    log_final(s, ev);
    s->final_seen = true;
    if (!s->ended && !s->cut) final_message(s, ev);
    pump(s);
    unref_unlock(s); /* the router lets go */
    return;
  default:
    if (!s->ended && !s->cut) control(s, ev);
    break;
  }
  if (!s->ended) pump(s);
  uint64_t id = s->id;
  pthread_mutex_unlock(&s->mu);
  if (cancel) sched_router_cancel(g->d->engine.router, id);
}

/* ---- the request --------------------------------------------------------- */

typedef struct conv {
  chat_message *msgs;
  size_t n_msgs;
  int32_t *ids;
  size_t n_ids;
  stop_set stop;
  sched_rreq q;
} conv;

static void conv_free(conv *c) {
  free(c->msgs);
  free(c->ids);
  stop_set_free(&c->stop);
}

#define BAD(...) bl_fail(err, BL_EINVAL, __VA_ARGS__)

static bl_status sampling(const bd_engine *e, const Ballast__V1__Sampling *s, sampler_params *o,
                          bl_err *err) {
  *o = e->sampling;
  if (!s) return BL_OK;
  if (s->temperature_present_case) {
    if (!isfinite(s->temperature) || s->temperature < 0 || s->temperature > 100)
      return BAD("sampling.temperature %g: expected 0..100", s->temperature);
    o->temperature = s->temperature;
  }
  if (s->top_p_present_case) {
    if (!(s->top_p > 0 && s->top_p <= 1))
      return BAD("sampling.top_p %g: expected (0, 1]", s->top_p);
    o->top_p = s->top_p;
  }
  if (s->top_k_present_case) {
    if (s->top_k < -1) return BAD("sampling.top_k %d: expected -1 (off) or >= 0", s->top_k);
    o->top_k = s->top_k;
  }
  if (s->min_p_present_case) {
    if (!(s->min_p >= 0 && s->min_p <= 1))
      return BAD("sampling.min_p %g: expected [0, 1]", s->min_p);
    o->min_p = s->min_p;
  }
  if (s->repetition_penalty_present_case) {
    if (!(s->repetition_penalty > 0 && s->repetition_penalty <= 10))
      return BAD("sampling.repetition_penalty %g: expected (0, 10]", s->repetition_penalty);
    o->repetition_penalty = s->repetition_penalty;
  }
  if (s->presence_penalty_present_case) {
    if (!(s->presence_penalty >= -2 && s->presence_penalty <= 2))
      return BAD("sampling.presence_penalty %g: expected [-2, 2]", s->presence_penalty);
    o->presence_penalty = s->presence_penalty;
  }
  if (s->frequency_penalty_present_case) {
    if (!(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
      return BAD("sampling.frequency_penalty %g: expected [-2, 2]", s->frequency_penalty);
    o->frequency_penalty = s->frequency_penalty;
  }
  if (s->seed_present_case) o->seed = s->seed;
  return BL_OK;
}

static bl_status overrides(const Ballast__V1__PolicyOverrides *o, sched_policy_override *out,
                           bl_err *err) {
  *out = SCHED_POLICY_OVERRIDE_NONE;
  if (!o) return BL_OK;
  struct {
    int present;
    int32_t v;
    int32_t *dst;
    const char *name;
  } f[] = {{o->loop_window_present_case, o->loop_window, &out->window, "loop_window"},
           {o->loop_ngram_present_case, o->loop_ngram, &out->ngram, "loop_ngram"},
           {o->loop_min_count_present_case, o->loop_min_count, &out->min_count, "loop_min_count"},
           {o->plan_max_tokens_present_case, o->plan_max_tokens, &out->plan_max_tokens,
            "plan_max_tokens"}};
  for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
    if (!f[i].present) continue;
    if (f[i].v < 1) return BAD("overrides.%s %d: expected >= 1", f[i].name, f[i].v);
    *f[i].dst = f[i].v;
  }
  if (o->fallback && *o->fallback) {
    if (!strcmp(o->fallback, "restart"))
      out->fallback = SCHED_FALLBACK_RESTART;
    else if (!strcmp(o->fallback, "resume"))
      out->fallback = SCHED_FALLBACK_RESUME;
    else
      return BAD("overrides.fallback '%.32s': expected restart or resume", o->fallback);
  }
  return BL_OK;
}

static bl_status input(const bd_engine *e, const Ballast__V1__GenerateRequest *m, conv *c,
                       bl_err *err) {
  int given = (m->n_messages > 0) + (m->prompt && *m->prompt) + (m->n_prompt_token_ids > 0);
  if (given != 1)
    return BAD("give exactly one input: messages, prompt or prompt_token_ids (got %d)", given);
  if (m->n_messages) {
    c->msgs = calloc(m->n_messages, sizeof *c->msgs);
    if (!c->msgs) return bl_fail(err, BL_ENOMEM, "out of memory");
    c->n_msgs = m->n_messages;
    for (size_t i = 0; i < m->n_messages; i++) {
      const Ballast__V1__ChatMessage *cm = m->messages[i];
      const char *role = cm->role ? cm->role : "";
      if (!strcmp(role, "system"))
        c->msgs[i].role = CHAT_SYSTEM;
      else if (!strcmp(role, "user"))
        c->msgs[i].role = CHAT_USER;
      else if (!strcmp(role, "assistant"))
        c->msgs[i].role = CHAT_ASSISTANT;
      else
        return BAD("messages[%zu].role '%.32s': expected system, user or assistant", i, role);
      c->msgs[i].content = cm->content ? cm->content : "";
      c->msgs[i].content_len = strlen(c->msgs[i].content);
    }
    c->q.messages = c->msgs;
    c->q.n_messages = c->n_msgs;
    return BL_OK;
  }
  if (m->n_prompt_token_ids) {
    c->ids = malloc(m->n_prompt_token_ids * sizeof *c->ids);
    if (!c->ids) return bl_fail(err, BL_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n_prompt_token_ids; i++) {
      int32_t id = m->prompt_token_ids[i];
      if (id < 0 || id >= e->vocab)
        return BAD("prompt_token_ids[%zu] = %d: expected [0, %d)", i, id, e->vocab);
      c->ids[i] = id;
    }
    c->n_ids = m->n_prompt_token_ids;
  } else {
    bl_status st = tok_encode(e->tok, m->prompt, strlen(m->prompt), true, &c->ids, &c->n_ids, err);
    if (st) return st;
    if (!c->n_ids) return BAD("prompt: no tokens");
  }
  c->q.prompt = c->ids;
  c->q.n_prompt = (int32_t)c->n_ids;
  return BL_OK;
}

static bl_status convert(const bd_engine *e, const Ballast__V1__GenerateRequest *m,
                         const bd_limits *lim, conv *c, bl_err *err) {
  sched_rreq *q = &c->q;
  bl_status st = input(e, m, c, err);
  if (!st) st = sampling(e, m->sampling, &q->sampling, err);
  if (!st) st = overrides(m->overrides, &q->overrides, err);
  if (st) return st;
  if (m->max_tokens < 0) return BAD("max_tokens %d: expected >= 0 (0: the default)", m->max_tokens);
  q->max_tokens = m->max_tokens ? m->max_tokens : lim->default_max_tokens;
  if (q->max_tokens > lim->max_tokens)
    return bl_fail(err, BL_ERANGE, "max_tokens %d: over the limit %d", q->max_tokens,
                   lim->max_tokens);
  q->max_prompt = lim->max_prompt_tokens;
  if (m->priority < 0 || m->priority > 100) return BAD("priority %d: expected 0..100", m->priority);
  q->priority = m->priority;
  switch (m->task) {
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_UNSPECIFIED: q->task = SCHED_TASK_NONE; break;
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_MATH: q->task = SCHED_TASK_MATH; break;
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_INTEGER: q->task = SCHED_TASK_INTEGER; break;
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_CHOICE: q->task = SCHED_TASK_CHOICE; break;
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_YESNO: q->task = SCHED_TASK_YESNO; break;
  case BALLAST__V1__TASK_TYPE__TASK_TYPE_INDEX: q->task = SCHED_TASK_INDEX; break;
  default: return BAD("task %d: unknown task type", (int)m->task);
  }
  if (m->choice_labels && *m->choice_labels) {
    size_t n = strlen(m->choice_labels);
    if (n < 2 || n > 26) return BAD("choice_labels: expected 2 to 26 letters");
    for (size_t i = 0; i < n; i++)
      if (m->choice_labels[i] < 'A' || m->choice_labels[i] > 'Z')
        return BAD("choice_labels '%.26s': expected capital letters", m->choice_labels);
    q->labels = m->choice_labels;
  }
  if (m->task_class && strlen(m->task_class) > 63) return BAD("task_class: longer than 63 bytes");
  q->task_class = m->task_class && *m->task_class ? m->task_class : NULL;
  if (m->policy && strlen(m->policy) >= SCHED_POLICY_NAME_MAX)
    return BAD("policy '%.40s...': no such policy", m->policy);
  q->policy = m->policy && *m->policy ? m->policy : NULL;
  q->enable_thinking = m->enable_thinking_present_case ? m->enable_thinking : true;
  stop_set_init(&c->stop);
  if (m->n_stop > STOP_MAX_STRS) return BAD("stop: at most %d strings", STOP_MAX_STRS);
  for (size_t i = 0; !st && i < m->n_stop; i++) {
    size_t n = strlen(m->stop[i]);
    if (n == 0 || n > 256) return BAD("stop[%zu]: expected 1 to 256 bytes", i);
    st = stop_set_add_str(&c->stop, m->stop[i], n, err);
  }
  q->ignore_eos = m->ignore_eos;
  const model *mm = e->pools[0].rep[0].m;
  for (int32_t i = 0; !st && !q->ignore_eos && i < mm->cfg.n_eos; i++)
    st = stop_set_add_eos(&c->stop, mm->cfg.eos_ids[i], err);
  q->stop = &c->stop;
  return st;
}

static double deadline_of(gpr_timespec d) {
  if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0) return 0;
  gpr_timespec now = gpr_now(d.clock_type);
  double left = (double)gpr_time_to_millis(gpr_time_sub(d, now)) / 1e3;
  return sched_now() + left;
}

static void refuse(bd_grpc *g, bd_incoming *in, grpc_status_code code, const char *msg) {
  bl_log(BL_LOG_INFO, "request refused: %s", msg);
  bd_reply(g, in, code, msg, NULL, 0);
}

void bd_generate_start(bd_grpc *g, bd_incoming *in) {
  bd_daemon *d = g->d;
  double t0 = sched_now();
  if (atomic_load(&d->draining) || !atomic_load(&d->ready)) {
    refuse(g, in, GRPC_STATUS_UNAVAILABLE, "the server is draining; retry on another replica");
    return;
  }
  bd_limits lim = bd_daemon_limits(d);
  if (in->payload && grpc_byte_buffer_length(in->payload) > (size_t)lim.max_message_bytes) {
    char msg[128];
    snprintf(msg, sizeof msg, "request of %zu bytes: over limits.max_message_bytes %d",
             grpc_byte_buffer_length(in->payload), lim.max_message_bytes);
    refuse(g, in, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    return;
  }
  atomic_fetch_add(&d->streams_started, 1);
  if (atomic_fetch_add(&d->active_streams, 1) >= lim.max_streams) {
    atomic_fetch_sub(&d->active_streams, 1);
    refuse(g, in, GRPC_STATUS_RESOURCE_EXHAUSTED,
           "too many concurrent streams (limits.max_streams)");
    return;
  }
  size_t len;
  uint8_t *buf = bd_read_payload(in->payload, &len);
  Ballast__V1__GenerateRequest *m =
      buf ? ballast__v1__generate_request__unpack(NULL, len, buf) : NULL;
  free(buf);
  if (!m) {
    atomic_fetch_sub(&d->active_streams, 1);
    refuse(g, in, GRPC_STATUS_INVALID_ARGUMENT, "malformed GenerateRequest");
    return;
  }
  bd_stream *s = calloc(1, sizeof *s);
  conv c = {0};
  bl_err err = {0};
  bl_status st =
      s ? convert(&d->engine, m, &lim, &c, &err) : bl_fail(&err, BL_ENOMEM, "out of memory");
  if (!st && m->request_id && strlen(m->request_id) > 128)
    st = bl_fail(&err, BL_EINVAL, "request_id: longer than 128 bytes");
  if (!st) {
    pthread_mutex_init(&s->mu, NULL);
    s->g = g;
    s->call = in->call;
    s->refs = 2; /* the router and the close batch */
    s->id = atomic_fetch_add(&g->next_id, 1);
    if (m->request_id && *m->request_id)
      snprintf(s->request_id, sizeof s->request_id, "%s", m->request_id);
    else
      snprintf(s->request_id, sizeof s->request_id, "req-%llu", (unsigned long long)s->id);
    s->buffer_limit = lim.stream_buffer_bytes;
    s->t_arrive = t0;
    s->send_tag.fn = send_done;
    s->close_tag.fn = close_done;
    c.q.id = s->id;
    c.q.deadline = s->deadline = deadline_of(in->deadline);
    c.q.on_event = on_event;
    c.q.user = s;
    pthread_mutex_lock(&g->lock);
    s->next = g->streams;
    if (g->streams) g->streams->prev = s;
    g->streams = s;
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_lock(&s->mu); /* events wait until the close batch is in */
    st = sched_router_submit(d->engine.router, &c.q, &err);
    if (st) {
      s->call = NULL; /* bd_reply answers and unrefs it */
      s->refs = 1;
      unref_unlock(s); /* also gives the stream count back */
      s = NULL;
    } else {
      grpc_op op;
      memset(&op, 0, sizeof op);
      op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
      op.data.recv_close_on_server.cancelled = &s->cancelled;
      bd_metrics_accepted(&d->metrics);
      s->queue_s = sched_now() - s->t_arrive;
      if (grpc_call_start_batch(s->call, &op, 1, &s->close_tag, NULL) != GRPC_CALL_OK) {
        s->ended = true;
        s->refs--;
        pthread_mutex_unlock(&s->mu);
        sched_router_cancel(d->engine.router, s->id);
      } else {
        pthread_mutex_unlock(&s->mu);
      }
      if (in->payload) grpc_byte_buffer_destroy(in->payload);
      grpc_metadata_array_destroy(&in->md);
    }
  } else {
    free(s);
    s = NULL;
    atomic_fetch_sub(&d->active_streams, 1);
  }
  conv_free(&c);
  ballast__v1__generate_request__free_unpacked(m, NULL);
  if (st) refuse(g, in, bd_status_of(st), err.msg);
}

void bd_generate_cancel_all(bd_grpc *g) {
  size_t n = 0, cap = 0;
  uint64_t *ids = NULL;
  pthread_mutex_lock(&g->lock);
  for (bd_stream *s = g->streams; s; s = s->next) {
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      uint64_t *ni = realloc(ids, cap * sizeof *ni);
      if (!ni) break;
      ids = ni;
    }
    ids[n++] = s->id;
  }
  pthread_mutex_unlock(&g->lock);
  for (size_t i = 0; i < n; i++)
    sched_router_cancel(g->d->engine.router, ids[i]);
  free(ids);
}
