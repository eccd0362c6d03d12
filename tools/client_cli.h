/* What the gRPC client commands of `ballast` (cmd_client.c: chat, stats,
 * health, reload; cmd_load.c: load) share: the common flags (address,
 * TLS, deadline) and connecting as they say, packing a protobuf-c message,
 * a unary call that unpacks its reply, the error line, enum names.
 *
 * Errors follow the commands' convention: 0, or the exit status (1 failed,
 * 2 usage) after a message "ballast CMD: ..." on stderr. */
#ifndef TOOLS_CLIENT_CLI_H
#define TOOLS_CLIENT_CLI_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "grpc_client.h"

/* The rows every client command's flag table starts with. */
// clang-format off
#define CCLI_FLAGS                                                              \
  {"--server", 1, NULL}, {"--tls-ca", 1, NULL}, {"--tls-cert", 1, NULL},               \
  {"--tls-key", 1, NULL}, {"--tls-server-name", 1, NULL}, {"--timeout", 1, NULL},      \
  {"--help", 0, NULL}
// clang-format on

#define CCLI_USAGE                                                                                 \
  "  --server HOST:PORT      ballastd's gRPC address (default: $BALLAST_SERVER, else "             \
  "127.0.0.1:50051)\n"                                                                             \
  "  --tls-ca FILE           verify the server against these PEM roots (turns TLS on)\n"           \
  "  --tls-cert FILE --tls-key FILE   a client certificate for mutual TLS (turns TLS on)\n"        \
  "  --tls-server-name NAME  the name the server's certificate carries (default: the host)\n"

/* Unary calls that get no --timeout wait this long: a hung server must not
 * hang a script. */
#define CCLI_UNARY_TIMEOUT_S 10.0

/* The server address the common flags name: --server, else $BALLAST_SERVER,
 * else 127.0.0.1:50051. */
const char *ccli_server(const cli_flag *f, int nf);

/* --timeout into *timeout (default_timeout when absent; <= 0: none). 0, or
 * 2 after a message when malformed. */
int ccli_timeout(const char *cmd, const cli_flag *f, int nf, double default_timeout,
                 double *timeout);

/* Connect as the common flags say (the address, TLS; --timeout is not
 * read). 0, or 1 after a message. */
int ccli_connect(const char *cmd, const cli_flag *f, int nf, gc_client **out);

/* ccli_timeout, then ccli_connect. */
int ccli_open(const char *cmd, const cli_flag *f, int nf, double default_timeout, double *timeout,
              gc_client **out);

/* "ballast CMD: STATUS: message" on stderr; returns 1. */
int ccli_call_failed(const char *cmd, const gc_status *st);

/* m serialized into a malloc'd buffer of *n bytes; NULL when out of memory. */
uint8_t *ccli_pack(const ProtobufCMessage *m, size_t *n);

/* Pack req, call method, unpack the reply as desc (free with
 * protobuf_c_message_free_unpacked); NULL with st set. */
ProtobufCMessage *ccli_unary(gc_client *c, const char *method, const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *desc, const gc_call_opts *o,
                             gc_status *st);

/* The name of value v of an enum ("UNKNOWN_VALUE" for one newer than the
 * proto this client was built with). */
const char *ccli_enum_name(const ProtobufCEnumDescriptor *d, int v);

#endif
