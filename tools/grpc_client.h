/* A small blocking gRPC client over gRPC C core, for the `ballast` commands
 * that talk to ballastd: one channel, one call at a time, messages as
 * serialized bytes (the caller packs and unpacks them with protobuf-c).
 *
 * gc_connect calls grpc_init and gc_close calls grpc_shutdown, so a process
 * that opens one client initialises gRPC once. Every call ends with a gRPC
 * status; failures that happen on this side (a batch refused, a cancel)
 * are reported as statuses too, so callers handle one kind of error. */
#ifndef TOOLS_GRPC_CLIENT_H
#define TOOLS_GRPC_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gc_client gc_client;

typedef struct gc_conn_opts {
  const char *target;   /* "host:port", or any gRPC target URI */
  const char *tls_ca;   /* PEM roots; TLS is used when this or tls_cert is set */
  const char *tls_cert; /* PEM client certificate chain (mutual TLS), with tls_key */
  const char *tls_key;
  const char *tls_server_name; /* the name the server certificate must carry; NULL: the host */
} gc_conn_opts;

typedef struct gc_call_opts {
  double timeout_s;                    /* the call's deadline from now; <= 0: none */
  const char *md_key, *md_value;       /* one request metadata pair (lower-case key), or NULL */
  const volatile sig_atomic_t *cancel; /* when set and it turns nonzero, the call is cancelled;
                                          polled every 100 ms, so a signal handler may set it */
} gc_call_opts;

/* A call's outcome: code is a grpc_status_code (0: OK). */
typedef struct gc_status {
  int code;
  char msg[1024];
} gc_status;

/* One received message (serialized). Return false to stop: the call is then
 * cancelled and ends with CANCELLED. */
typedef bool (*gc_on_message)(void *ctx, const uint8_t *msg, size_t n);

/* Open a channel (connection is lazy: errors such as a refused port show up
 * as the first call's UNAVAILABLE). NULL with a reason in err when the TLS
 * files cannot be read. */
gc_client *gc_connect(const gc_conn_opts *o, char *err, size_t err_n);
void gc_close(gc_client *c);

/* A server-streaming call: sends req, calls on_msg for each message in
 * order, returns true when the call ended with status OK. */
bool gc_stream(gc_client *c, const char *method, const uint8_t *req, size_t req_n,
               const gc_call_opts *o, gc_on_message on_msg, void *ctx, gc_status *st);

/* A unary call: on OK, *resp (malloc'd, caller frees) holds the one reply. A
 * reply count other than one is reported as INTERNAL. */
bool gc_unary(gc_client *c, const char *method, const uint8_t *req, size_t req_n,
              const gc_call_opts *o, uint8_t **resp, size_t *resp_n, gc_status *st);

/* "OK", "UNAVAILABLE", ...; "UNKNOWN_CODE" outside the standard codes. */
const char *gc_status_name(int code);

#endif
