/* The shared pieces of the gRPC client commands (see client_cli.h). */
#include "client_cli.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>

const char *ccli_server(const cli_flag *f, int nf) {
  const char *server = cli_get(f, nf, "--server");
  if (!server) server = getenv("BALLAST_SERVER");
  if (!server || !*server) server = "127.0.0.1:50051";
  return server;
}

int ccli_timeout(const char *cmd, const cli_flag *f, int nf, double default_timeout,
                 double *timeout) {
  const char *t = cli_get(f, nf, "--timeout");
  *timeout = default_timeout;
  if (t && !cli_float(t, 0.001, 1e7, timeout)) {
    fprintf(stderr, "ballast %s: --timeout must be a number of seconds > 0\n", cmd);
    return 2;
  }
  return 0;
}

int ccli_connect(const char *cmd, const cli_flag *f, int nf, gc_client **out) {
  gc_conn_opts o = {.target = ccli_server(f, nf),
                    .tls_ca = cli_get(f, nf, "--tls-ca"),
                    .tls_cert = cli_get(f, nf, "--tls-cert"),
                    .tls_key = cli_get(f, nf, "--tls-key"),
                    .tls_server_name = cli_get(f, nf, "--tls-server-name")};
  char err[512];
  *out = gc_connect(&o, err, sizeof err);
  if (*out) return 0;
  fprintf(stderr, "ballast %s: %s\n", cmd, err);
  return 1;
}

int ccli_open(const char *cmd, const cli_flag *f, int nf, double default_timeout, double *timeout,
              gc_client **out) {
  int rc = ccli_timeout(cmd, f, nf, default_timeout, timeout);
  return rc ? rc : ccli_connect(cmd, f, nf, out);
}

int ccli_call_failed(const char *cmd, const gc_status *st) {
  fprintf(stderr, "ballast %s: %s: %s\n", cmd, gc_status_name(st->code), st->msg);
  return 1;
}

uint8_t *ccli_pack(const ProtobufCMessage *m, size_t *n) {
  *n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*n ? *n : 1);
  if (buf) protobuf_c_message_pack(m, buf);
  return buf;
}

ProtobufCMessage *ccli_unary(gc_client *c, const char *method, const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *desc, const gc_call_opts *o,
                             gc_status *st) {
  size_t n, resp_n;
  uint8_t *buf = ccli_pack(req, &n), *resp = NULL;
  if (!buf) {
    *st = (gc_status){.code = GRPC_STATUS_RESOURCE_EXHAUSTED, .msg = "out of memory"};
    return NULL;
  }
  bool ok = gc_unary(c, method, buf, n, o, &resp, &resp_n, st);
  free(buf);
  if (!ok) return NULL;
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, resp_n, resp);
  free(resp);
  if (!m) *st = (gc_status){.code = GRPC_STATUS_INTERNAL, .msg = "the reply does not parse"};
  return m;
}

const char *ccli_enum_name(const ProtobufCEnumDescriptor *d, int v) {
  const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
  return ev ? ev->name : "UNKNOWN_VALUE";
}
