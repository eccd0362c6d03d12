/* The gRPC server on C core's completion-queue API: registered methods with
 * their request message read up front, a few outstanding "slots" per method
 * waiting for new calls, grpc_threads threads draining one completion
 * queue, and the unary reply path. Calls to unknown methods are answered
 * UNIMPLEMENTED through a generic slot. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>

#include "bd_grpc_internal.h"
#include "bl_log.h"

#define SLOTS_PER_METHOD 8
/* The transport's cap; the configured (reloadable) limit is checked per call. */
#define TRANSPORT_MAX_MESSAGE (64 << 20)

static const char *const k_paths[BD_M_N] = {
    [BD_M_GENERATE] = "/ballast.v1.Ballast/Generate",
    [BD_M_TOKENIZE] = "/ballast.v1.Ballast/Tokenize",
    [BD_M_SERVER_INFO] = "/ballast.v1.Ballast/ServerInfo",
    [BD_M_GET_STATS] = "/ballast.v1.Ballast/GetStats",
    [BD_M_RELOAD] = "/ballast.v1.Ballast/Reload",
    [BD_M_HEALTH_CHECK] = "/grpc.health.v1.Health/Check",
    [BD_M_HEALTH_WATCH] = "/grpc.health.v1.Health/Watch",
};

/* ---- buffers and statuses ---------------------------------------------- */

uint8_t *bd_read_payload(grpc_byte_buffer *bb, size_t *len) {
  *len = 0;
  if (!bb) return NULL;
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL;
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  size_t n = GRPC_SLICE_LENGTH(s);
  uint8_t *out = malloc(n ? n : 1);
  if (out) memcpy(out, GRPC_SLICE_START_PTR(s), n), *len = n;
  grpc_slice_unref(s);
  return out;
}

grpc_byte_buffer *bd_make_buffer(const uint8_t *data, size_t len) {
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

grpc_status_code bd_status_of(bl_status st) {
  switch (st) {
  case BL_OK: return GRPC_STATUS_OK;
  case BL_EINVAL:
  case BL_EFORMAT: return GRPC_STATUS_INVALID_ARGUMENT;
  case BL_ERANGE:
  case BL_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
  case BL_EUNSUPPORTED: return GRPC_STATUS_FAILED_PRECONDITION;
  case BL_ECANCELED: return GRPC_STATUS_CANCELLED;
  case BL_AGAIN:
  case BL_EDEVICE: return GRPC_STATUS_UNAVAILABLE; /* a pool unhealthy after a device error */
  default: return GRPC_STATUS_INTERNAL;
  }
}

const char *bd_metadata(const grpc_metadata_array *md, const char *key, size_t *len) {
  for (size_t i = 0; i < md->count; i++)
    if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) {
      *len = GRPC_SLICE_LENGTH(md->metadata[i].value);
      return (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
    }
  return NULL;
}

/* ---- unary replies ----------------------------------------------------- */

typedef struct reply {
  bd_tag tag;
  grpc_call *call;
  grpc_byte_buffer *bb;
  grpc_slice details;
  int cancelled;
} reply;

static void reply_done(bd_tag *t, bool ok) {
  reply *r = (reply *)t;
  if (r->bb) grpc_byte_buffer_destroy(r->bb);
  grpc_slice_unref(r->details);
  grpc_call_unref(r->call);
  free(r);
}

void bd_reply(bd_grpc *g, bd_incoming *in, grpc_status_code code, const char *msg,
              const uint8_t *resp, size_t resp_len) {
  if (code != GRPC_STATUS_OK) bd_metrics_rejected(&g->d->metrics, (int)code);
  reply *r = calloc(1, sizeof *r);
  if (in->payload) grpc_byte_buffer_destroy(in->payload);
  grpc_metadata_array_destroy(&in->md);
  if (!r) { /* nothing to answer with: cancel, which the client sees */
    grpc_call_cancel_with_status(in->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
    grpc_call_unref(in->call);
    return;
  }
  r->tag.fn = reply_done;
  r->call = in->call;
  r->details = grpc_slice_from_copied_string(msg ? msg : "");
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (code == GRPC_STATUS_OK && resp) {
    r->bb = bd_make_buffer(resp, resp_len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = r->bb;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = code;
  ops[n++].data.send_status_from_server.status_details = &r->details;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n++].data.recv_close_on_server.cancelled = &r->cancelled;
  if (grpc_call_start_batch(r->call, ops, n, &r->tag, NULL) != GRPC_CALL_OK) reply_done(&r->tag, 0);
}

/* ---- slots: waiting for new calls --------------------------------------- */

typedef struct slot {
  bd_tag tag;
  bd_grpc *g;
  int method; /* bd_method, or BD_M_N for the generic slot */
  bd_incoming in;
  grpc_call_details details; /* generic slot */
} slot;

static void slot_arm(slot *s);

static void dispatch(bd_grpc *g, int method, bd_incoming *in) {
  switch (method) {
  case BD_M_GENERATE: bd_generate_start(g, in); break;
  case BD_M_HEALTH_WATCH: bd_health_watch_start(g, in); break;
  case BD_M_N: bd_reply(g, in, GRPC_STATUS_UNIMPLEMENTED, "no such method", NULL, 0); break;
  default: bd_service_unary(g, (bd_method)method, in); break;
  }
}

static void slot_done(bd_tag *t, bool ok) {
  slot *s = (slot *)t;
  if (!ok) { /* the server is shutting down */
    grpc_metadata_array_destroy(&s->in.md);
    if (s->method == BD_M_N) grpc_call_details_destroy(&s->details);
    free(s);
    return;
  }
  bd_incoming in = s->in; /* the handler owns the call now */
  if (s->method == BD_M_N) grpc_call_details_destroy(&s->details);
  int method = s->method;
  slot_arm(s);
  dispatch(s->g, method, &in);
}

static void slot_arm(slot *s) {
  bd_grpc *g = s->g;
  memset(&s->in, 0, sizeof s->in);
  grpc_metadata_array_init(&s->in.md);
  grpc_call_error e;
  if (s->method == BD_M_N) {
    grpc_call_details_init(&s->details);
    e = grpc_server_request_call(g->server, &s->in.call, &s->details, &s->in.md, g->cq, g->cq,
                                 &s->tag);
  } else {
    e = grpc_server_request_registered_call(g->server, g->methods[s->method], &s->in.call,
                                            &s->in.deadline, &s->in.md, &s->in.payload, g->cq,
                                            g->cq, &s->tag);
  }
  if (e != GRPC_CALL_OK) { /* only after shutdown began */
    grpc_metadata_array_destroy(&s->in.md);
    if (s->method == BD_M_N) grpc_call_details_destroy(&s->details);
    free(s);
  }
}

static bl_status add_slots(bd_grpc *g, int method, int n, bl_err *err) {
  for (int i = 0; i < n; i++) {
    slot *s = calloc(1, sizeof *s);
    if (!s) return bl_fail(err, BL_ENOMEM, "grpc: out of memory");
    s->tag.fn = slot_done;
    s->g = g;
    s->method = method;
    slot_arm(s);
  }
  return BL_OK;
}

/* ---- threads ------------------------------------------------------------ */

static void *cq_thread(void *arg) {
  bd_grpc *g = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) ((bd_tag *)ev.tag)->fn(ev.tag, ev.success != 0);
  }
  return NULL;
}

/* A PEM file's text; it must hold a block whose label ends with want
 * ("CERTIFICATE", "PRIVATE KEY"): gRPC itself only says "invalid". */
static char *read_pem(const char *path, const char *want, bl_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    bl_fail(err, BL_EIO, "%s: cannot open", path);
    return NULL;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0, n;
  char chunk[4096];
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (len + n + 1 > cap) {
      cap = 2 * (len + n + 1);
      char *nb = realloc(buf, cap);
      if (!nb) break;
      buf = nb;
    }
    memcpy(buf + len, chunk, n);
    len += n;
  }
  fclose(f);
  if (!buf || len == 0) {
    free(buf);
    bl_fail(err, BL_EIO, "%s: empty or unreadable", path);
    return NULL;
  }
  buf[len] = 0;
  size_t wl = strlen(want);
  bool found = false;
  for (const char *b = strstr(buf, "-----BEGIN "); b && !found; b = strstr(b + 1, "-----BEGIN ")) {
    const char *label = b + 11, *close = strstr(label, "-----");
    found = close && (size_t)(close - label) >= wl && !memcmp(close - wl, want, wl);
  }
  if (!found) {
    free(buf);
    bl_fail(err, BL_EINVAL, "%s: no PEM %s in it (a '-----BEGIN ...%s-----' block)", path, want,
            want);
    return NULL;
  }
  return buf;
}

static grpc_server_credentials *credentials(const bd_config *c, bl_err *err) {
  if (!c->tls_cert) return grpc_insecure_server_credentials_create();
  char *cert = read_pem(c->tls_cert, "CERTIFICATE", err);
  char *key = cert ? read_pem(c->tls_key, "PRIVATE KEY", err) : NULL;
  char *ca = key && c->tls_client_ca ? read_pem(c->tls_client_ca, "CERTIFICATE", err) : NULL;
  grpc_server_credentials *cr = NULL;
  if (key && (ca || !c->tls_client_ca)) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    cr = grpc_ssl_server_credentials_create_ex(
        ca, &pair, 1,
        ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    if (!cr)
      bl_fail(err, BL_EINVAL, "%s / %s: not a usable TLS certificate and key", c->tls_cert,
              c->tls_key);
  }
  free(cert);
  free(key);
  free(ca);
  return cr;
}

bl_status bd_grpc_start(bd_daemon *d, const bd_config *c, bd_grpc **out, bl_err *err) {
  *out = NULL;
  bd_grpc *g = calloc(1, sizeof *g);
  if (!g) return bl_fail(err, BL_ENOMEM, "grpc: out of memory");
  g->d = d;
  pthread_mutex_init(&g->lock, NULL);
  atomic_init(&g->next_id, 1);
  grpc_init();
  grpc_arg args[2] = {
      {.type = GRPC_ARG_INTEGER,
       .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
       .value.integer = TRANSPORT_MAX_MESSAGE},
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONCURRENT_STREAMS, .value.integer = 4096},
  };
  grpc_channel_args ca = {.num_args = 2, .args = args};
  g->server = grpc_server_create(&ca, NULL);
  g->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(g->server, g->cq, NULL);
  for (int m = 0; m < BD_M_N; m++)
    g->methods[m] = grpc_server_register_method(g->server, k_paths[m], NULL,
                                                GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  bl_status st = BL_OK;
  grpc_server_credentials *cr = credentials(c, err);
  if (!cr) st = err->status ? err->status : BL_EINVAL;
  int port = 0;
  if (!st) {
    port = grpc_server_add_http2_port(g->server, c->grpc_listen, cr);
    grpc_server_credentials_release(cr);
    if (port <= 0 && c->tls_cert)
      st = bl_fail(err, BL_EIO,
                   "grpc: cannot listen on %s with TLS: the address is taken, or %s / %s are "
                   "not a certificate and its key",
                   c->grpc_listen, c->tls_cert, c->tls_key);
    else if (port <= 0)
      st = bl_fail(err, BL_EIO, "grpc: cannot listen on %s", c->grpc_listen);
  }
  if (st) {
    grpc_server_destroy(g->server);
    grpc_completion_queue_shutdown(g->cq);
    while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(g->cq);
    grpc_shutdown();
    pthread_mutex_destroy(&g->lock);
    free(g);
    return st;
  }
  const char *colon = strrchr(c->grpc_listen, ':');
  int host_len = colon ? (int)(colon - c->grpc_listen) : (int)strlen(c->grpc_listen);
  snprintf(d->grpc_addr, sizeof d->grpc_addr, "%.*s:%d", host_len, c->grpc_listen, port);
  grpc_server_start(g->server);
  for (int m = 0; !st && m < BD_M_N; m++)
    st = add_slots(g, m, SLOTS_PER_METHOD, err);
  if (!st) st = add_slots(g, BD_M_N, 2, err);
  g->n_threads = c->grpc_threads > 0 ? c->grpc_threads : 1;
  g->threads = calloc((size_t)g->n_threads, sizeof *g->threads);
  if (!st && !g->threads) st = bl_fail(err, BL_ENOMEM, "grpc: out of memory");
  int started = 0;
  for (; !st && started < g->n_threads; started++)
    if (pthread_create(&g->threads[started], NULL, cq_thread, g))
      st = bl_fail(err, BL_EIO, "grpc: cannot start a thread");
  g->n_threads = started;
  d->on_health_change = bd_health_changed;
  *out = g;
  if (st) {
    bd_grpc_stop(g);
    *out = NULL;
  }
  return st;
}

void bd_grpc_cancel_all(bd_grpc *g) { bd_generate_cancel_all(g); }

typedef struct shutdown_tag {
  bd_tag tag;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} shutdown_tag;

static void shutdown_done(bd_tag *t, bool ok) {
  shutdown_tag *s = (shutdown_tag *)t;
  pthread_mutex_lock(&s->mu);
  s->done = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

void bd_grpc_stop(bd_grpc *g) {
  if (!g) return;
  atomic_store(&g->stopping, true);
  g->d->on_health_change = NULL;
  bd_health_end_all(g);
  shutdown_tag s = {.tag.fn = shutdown_done, .done = false};
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  grpc_server_shutdown_and_notify(g->server, g->cq, &s.tag);
  grpc_server_cancel_all_calls(g->server);
  if (g->n_threads) {
    pthread_mutex_lock(&s.mu);
    while (!s.done)
      pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
  } else { /* no thread: drain here */
    while (!s.done) {
      grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
      if (ev.type == GRPC_OP_COMPLETE) ((bd_tag *)ev.tag)->fn(ev.tag, ev.success != 0);
    }
  }
  grpc_server_destroy(g->server);
  grpc_completion_queue_shutdown(g->cq);
  for (int i = 0; i < g->n_threads; i++)
    pthread_join(g->threads[i], NULL);
  if (!g->n_threads)
    while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
  grpc_completion_queue_destroy(g->cq);
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  free(g->threads);
  pthread_mutex_destroy(&g->lock);
  free(g);
  grpc_shutdown();
}
