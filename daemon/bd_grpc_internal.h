/* Private to the gRPC side of the daemon (bd_grpc.c, bd_generate.c,
 * bd_service.c).
 *
 * Every batch started on a call carries a bd_tag; the completion-queue
 * threads call tag->fn(tag, ok). A call object is freed when the last of
 * its holders lets go (refs under its own mutex): the batches in flight, and
 * for Generate the router until its final event. */
#ifndef BD_GRPC_INTERNAL_H
#define BD_GRPC_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>

#include "bd_daemon.h"

typedef struct bd_tag bd_tag;
struct bd_tag {
  void (*fn)(bd_tag *t, bool ok);
};

typedef enum bd_method {
  BD_M_GENERATE = 0,
  BD_M_TOKENIZE,
  BD_M_SERVER_INFO,
  BD_M_GET_STATS,
  BD_M_RELOAD,
  BD_M_HEALTH_CHECK,
  BD_M_HEALTH_WATCH,
  BD_M_N
} bd_method;

/* A new call, as the completion queue handed it over. */
typedef struct bd_incoming {
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload; /* the request message (NULL: none arrived) */
} bd_incoming;

typedef struct bd_stream bd_stream;
typedef struct bd_watch bd_watch;

struct bd_grpc {
  bd_daemon *d;
  grpc_server *server;
  grpc_completion_queue *cq;
  void *methods[BD_M_N];
  pthread_t *threads;
  int n_threads;
  atomic_bool stopping;
  atomic_uint_fast64_t next_id; /* router ids */
  pthread_mutex_t lock;         /* the lists below */
  bd_stream *streams;           /* running Generate calls */
  bd_watch *watches;            /* Health.Watch calls */
};

/* Copy a message out of a byte buffer (malloc'd; *len bytes). */
uint8_t *bd_read_payload(grpc_byte_buffer *bb, size_t *len);
grpc_byte_buffer *bd_make_buffer(const uint8_t *data, size_t len);
/* Finish a unary call: the response bytes (NULL with a non-OK code) and
 * status; frees in, unrefs the call when done. */
void bd_reply(bd_grpc *g, bd_incoming *in, grpc_status_code code, const char *msg,
              const uint8_t *resp, size_t resp_len);
/* The status a bl_status maps to. */
grpc_status_code bd_status_of(bl_status st);
const char *bd_metadata(const grpc_metadata_array *md, const char *key, size_t *len);

/* bd_generate.c */
void bd_generate_start(bd_grpc *g, bd_incoming *in);
void bd_generate_cancel_all(bd_grpc *g);

/* bd_service.c */
void bd_service_unary(bd_grpc *g, bd_method m, bd_incoming *in);
void bd_health_watch_start(bd_grpc *g, bd_incoming *in);
void bd_health_changed(bd_daemon *d);
void bd_health_end_all(bd_grpc *g);

#endif
