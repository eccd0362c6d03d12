/* The blocking gRPC client of grpc_client.h over gRPC C core.
 *
 * A call runs as three batches on the client's completion queue: (send
 * metadata, the request, half-close, receive the server's metadata), (receive
 * the status), and (receive one message), the last re-armed after each
 * message. The loop waits on the queue until all three have completed, so
 * no event of one call is left behind for the next. Waiting is in 100 ms
 * slices only when there is a cancel flag to poll. */
#include "grpc_client.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct gc_client {
  grpc_channel *channel;
  grpc_completion_queue *cq; /* for_next: one call at a time */
};

/* Batch tags: which of a call's three batches completed. */
enum { TAG_SEND = 1, TAG_STATUS, TAG_RECV };
#define TAG(t) ((void *)(uintptr_t)(t))

static char *read_file(const char *path, char *err, size_t err_n) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_n, "%s: cannot open", path);
    return NULL;
  }
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (cap - len - 1 == 0) {
      char *grown = realloc(buf, cap * 2);
      if (!grown) free(buf);
      buf = grown;
      cap *= 2;
    }
  }
  bool bad = ferror(f) || !buf;
  fclose(f);
  if (bad) {
    free(buf);
    snprintf(err, err_n, "%s: cannot read", path);
    return NULL;
  }
  buf[len] = '\0';
  return buf;
}

static grpc_channel_credentials *tls_credentials(const gc_conn_opts *o, char *err, size_t err_n) {
  if (!o->tls_cert != !o->tls_key) {
    snprintf(err, err_n, "a client certificate needs both --tls-cert and --tls-key");
    return NULL;
  }
  char *ca = NULL, *cert = NULL, *key = NULL;
  grpc_channel_credentials *creds = NULL;
  if (o->tls_ca && !(ca = read_file(o->tls_ca, err, err_n))) goto done;
  if (o->tls_cert && !(cert = read_file(o->tls_cert, err, err_n))) goto done;
  if (o->tls_key && !(key = read_file(o->tls_key, err, err_n))) goto done;
  grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
  /* NULL roots: gRPC's default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or its bundle). */
  creds = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
  if (!creds) snprintf(err, err_n, "cannot create TLS credentials");
done:
  free(ca);
  free(cert);
  free(key);
  return creds;
}

gc_client *gc_connect(const gc_conn_opts *o, char *err, size_t err_n) {
  bool tls = o->tls_ca || o->tls_cert || o->tls_key;
  grpc_init();
  grpc_channel_credentials *creds =
      tls ? tls_credentials(o, err, err_n) : grpc_insecure_credentials_create();
  gc_client *c = creds ? calloc(1, sizeof *c) : NULL;
  if (!c) {
    if (creds) {
      grpc_channel_credentials_release(creds);
      snprintf(err, err_n, "out of memory");
    }
    grpc_shutdown();
    return NULL;
  }
  grpc_arg arg = {.type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG};
  arg.value.string = (char *)o->tls_server_name;
  grpc_channel_args args = {.num_args = 1, .args = &arg};
  c->channel = grpc_channel_create(o->target, creds, tls && o->tls_server_name ? &args : NULL);
  grpc_channel_credentials_release(creds); /* the channel holds its own reference */
  c->cq = grpc_completion_queue_create_for_next(NULL);
  return c;
}

void gc_close(gc_client *c) {
  if (!c) return;
  grpc_channel_destroy(c->channel);
  grpc_completion_queue_shutdown(c->cq);
  while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(c->cq);
  free(c);
  grpc_shutdown();
}

/* One call's buffers, alive until all its batches have completed. */
typedef struct gc_call {
  grpc_call *call;
  grpc_metadata md;
  grpc_metadata_array md_in, trailers;
  grpc_byte_buffer *send, *recv;
  grpc_status_code code;
  grpc_slice details;
  const char *error_string; /* gpr_malloc'd by gRPC */
} gc_call;

static grpc_call_error start_send(gc_call *k, const uint8_t *req, size_t req_n,
                                  const gc_call_opts *o) {
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)req, req_n);
  k->send = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  grpc_op ops[4] = {{.op = GRPC_OP_SEND_INITIAL_METADATA},
                    {.op = GRPC_OP_SEND_MESSAGE},
                    {.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT},
                    {.op = GRPC_OP_RECV_INITIAL_METADATA}};
  if (o && o->md_key) {
    k->md.key = grpc_slice_from_copied_string(o->md_key);
    k->md.value = grpc_slice_from_copied_string(o->md_value ? o->md_value : "");
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &k->md;
  }
  ops[1].data.send_message.send_message = k->send;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &k->md_in;
  return grpc_call_start_batch(k->call, ops, 4, TAG(TAG_SEND), NULL);
}

static grpc_call_error start_status(gc_call *k) {
  grpc_op op = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
  op.data.recv_status_on_client.trailing_metadata = &k->trailers;
  op.data.recv_status_on_client.status = &k->code;
  op.data.recv_status_on_client.status_details = &k->details;
  op.data.recv_status_on_client.error_string = &k->error_string;
  return grpc_call_start_batch(k->call, &op, 1, TAG(TAG_STATUS), NULL);
}

static grpc_call_error start_recv(gc_call *k) {
  grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
  op.data.recv_message.recv_message = &k->recv;
  return grpc_call_start_batch(k->call, &op, 1, TAG(TAG_RECV), NULL);
}

/* Hand the received message to on_msg as one contiguous buffer. */
static bool deliver(gc_call *k, gc_on_message on_msg, void *ctx) {
  grpc_byte_buffer_reader r;
  bool ok = grpc_byte_buffer_reader_init(&r, k->recv);
  if (ok) {
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    ok = on_msg(ctx, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&r);
  }
  grpc_byte_buffer_destroy(k->recv);
  k->recv = NULL;
  return ok;
}

/* The status as gRPC reported it; a call that failed on this side (batch
 * refused) reads INTERNAL with the reason. */
static void fill_status(const gc_call *k, grpc_call_error refused, gc_status *st) {
  st->code = (int)k->code;
  char *d = grpc_slice_to_c_string(k->details);
  snprintf(st->msg, sizeof st->msg, "%s", d && *d ? d : k->error_string ? k->error_string : "");
  gpr_free(d);
  if (refused != GRPC_CALL_OK) {
    st->code = GRPC_STATUS_INTERNAL;
    snprintf(st->msg, sizeof st->msg, "call refused: %s", grpc_call_error_to_string(refused));
  }
}

static void free_call(gc_call *k) {
  if (k->send) grpc_byte_buffer_destroy(k->send);
  if (k->recv) grpc_byte_buffer_destroy(k->recv);
  grpc_slice_unref(k->md.key);
  grpc_slice_unref(k->md.value);
  grpc_slice_unref(k->details);
  grpc_metadata_array_destroy(&k->md_in);
  grpc_metadata_array_destroy(&k->trailers);
  gpr_free((void *)k->error_string);
  if (k->call) grpc_call_unref(k->call);
}

static gpr_timespec from_now(double secs) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis((int64_t)(secs * 1e3), GPR_TIMESPAN));
}

/* Wait for the call's batches; re-arm the receive after each message.
 * True when on_msg stopped the call. */
static bool drive(gc_client *c, gc_call *k, int pending, const gc_call_opts *o,
                  gc_on_message on_msg, void *ctx) {
  const volatile sig_atomic_t *cancel = o ? o->cancel : NULL;
  bool cancelled = false, stopped = false;
  while (pending > 0) {
    gpr_timespec until = cancel ? from_now(0.1) : gpr_inf_future(GPR_CLOCK_MONOTONIC);
    grpc_event ev = grpc_completion_queue_next(c->cq, until, NULL);
    if (!cancelled && cancel && *cancel) {
      grpc_call_cancel(k->call, NULL);
      cancelled = true;
    }
    if (ev.type != GRPC_OP_COMPLETE) continue; /* a poll timeout */
    pending--;
    if (ev.tag != TAG(TAG_RECV) || !ev.success || !k->recv) continue;
    if (!deliver(k, on_msg, ctx)) {
      grpc_call_cancel(k->call, NULL);
      cancelled = stopped = true;
    } else if (start_recv(k) == GRPC_CALL_OK) {
      pending++;
    }
  }
  return stopped;
}

bool gc_stream(gc_client *c, const char *method, const uint8_t *req, size_t req_n,
               const gc_call_opts *o, gc_on_message on_msg, void *ctx, gc_status *st) {
  gc_call k = {.code = GRPC_STATUS_UNKNOWN,
               .md = {.key = grpc_empty_slice(), .value = grpc_empty_slice()},
               .details = grpc_empty_slice()};
  grpc_metadata_array_init(&k.md_in);
  grpc_metadata_array_init(&k.trailers);
  gpr_timespec deadline =
      o && o->timeout_s > 0 ? from_now(o->timeout_s) : gpr_inf_future(GPR_CLOCK_MONOTONIC);
  grpc_slice path = grpc_slice_from_copied_string(method); /* the call takes its own ref */
  k.call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, path, NULL,
                                    deadline, NULL);
  grpc_slice_unref(path);
  grpc_call_error refused = GRPC_CALL_OK, e;
  int pending = 0;
  /* The status batch goes first: if it is refused nothing else is started,
   * and every started batch is waited for. */
  if ((refused = start_status(&k)) == GRPC_CALL_OK) {
    pending++;
    if ((e = start_send(&k, req, req_n, o)) == GRPC_CALL_OK)
      pending++;
    else
      refused = e;
    if ((e = start_recv(&k)) == GRPC_CALL_OK)
      pending++;
    else
      refused = e;
    if (refused != GRPC_CALL_OK) grpc_call_cancel(k.call, NULL);
  }
  bool stopped = drive(c, &k, pending, o, on_msg, ctx);
  fill_status(&k, refused, st);
  /* The server may have finished before the cancel reached it; the call
   * still failed, since messages after the stop were dropped. */
  if (stopped && st->code == GRPC_STATUS_OK) {
    st->code = GRPC_STATUS_CANCELLED;
    snprintf(st->msg, sizeof st->msg, "stopped by the client");
  }
  free_call(&k);
  return st->code == GRPC_STATUS_OK;
}

typedef struct unary_reply {
  uint8_t *data;
  size_t n;
  int count;
} unary_reply;

static bool keep_reply(void *ctx, const uint8_t *msg, size_t n) {
  unary_reply *r = ctx;
  if (++r->count > 1) return false;
  r->data = malloc(n ? n : 1);
  if (!r->data) return false;
  memcpy(r->data, msg, n);
  r->n = n;
  return true;
}

bool gc_unary(gc_client *c, const char *method, const uint8_t *req, size_t req_n,
              const gc_call_opts *o, uint8_t **resp, size_t *resp_n, gc_status *st) {
  unary_reply r = {0};
  bool ok = gc_stream(c, method, req, req_n, o, keep_reply, &r, st);
  if (ok && r.count != 1) {
    st->code = GRPC_STATUS_INTERNAL;
    snprintf(st->msg, sizeof st->msg, "a unary call ended with %d replies", r.count);
    ok = false;
  } else if (!ok && r.count > 1) {
    st->code = GRPC_STATUS_INTERNAL;
    snprintf(st->msg, sizeof st->msg, "a unary call sent more than one reply");
  } else if (!ok && r.count == 1 && !r.data) {
    st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    snprintf(st->msg, sizeof st->msg, "out of memory for the reply");
  }
  if (!ok) {
    free(r.data);
    r.data = NULL;
    r.n = 0;
  }
  *resp = r.data;
  *resp_n = r.n;
  return ok;
}

const char *gc_status_name(int code) {
  static const char *const names[] = {"OK",
                                      "CANCELLED",
                                      "UNKNOWN",
                                      "INVALID_ARGUMENT",
                                      "DEADLINE_EXCEEDED",
                                      "NOT_FOUND",
                                      "ALREADY_EXISTS",
                                      "PERMISSION_DENIED",
                                      "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION",
                                      "ABORTED",
                                      "OUT_OF_RANGE",
                                      "UNIMPLEMENTED",
                                      "INTERNAL",
                                      "UNAVAILABLE",
                                      "DATA_LOSS",
                                      "UNAUTHENTICATED"};
  return code >= 0 && code < (int)(sizeof names / sizeof *names) ? names[code] : "UNKNOWN_CODE";
}
