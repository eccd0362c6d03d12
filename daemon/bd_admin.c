/* The admin HTTP endpoint (libevent's evhttp, on the main thread):
 *   GET  /healthz     the process is up
 *   GET  /readyz      models loaded, not draining, the executor pool healthy
 *                     (503 otherwise, with the reason)
 *   GET  /metrics     Prometheus text (bd_metrics.c)
 *   GET  /v1/config   the effective config as JSON, secrets redacted
 *   POST /v1/reload   re-read the config file; needs the admin bearer token
 * It binds 127.0.0.1 unless the config says otherwise. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bd_daemon.h"
#include "bl_log.h"

static void send_text(struct evhttp_request *req, int code, const char *reason, const char *type,
                      const char *body, size_t len) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, "out of memory");
    return;
  }
  evbuffer_add(b, body, len);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
  evhttp_send_reply(req, code, reason, b);
  evbuffer_free(b);
}

static void send_json_error(struct evhttp_request *req, int code, const char *reason,
                            const char *msg) {
  bd_text t;
  bd_text_init(&t);
  bd_text_printf(&t, "{\"ok\":false,\"error\":\"");
  for (const char *p = msg; *p; p++) {
    if (*p == '"' || *p == '\\')
      bd_text_printf(&t, "\\%c", *p);
    else if ((unsigned char)*p < 0x20)
      bd_text_printf(&t, "\\u%04x", (unsigned char)*p);
    else
      bd_text_append(&t, p, 1);
  }
  bd_text_printf(&t, "\"}\n");
  if (t.failed)
    evhttp_send_error(req, 500, "out of memory");
  else
    send_text(req, code, reason, "application/json", t.buf, t.len);
  bd_text_free(&t);
}

static void reload(bd_daemon *d, struct evhttp_request *req) {
  const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  int tok = auth && !strncmp(auth, "Bearer ", 7)
                ? bd_daemon_check_token(d, auth + 7, strlen(auth + 7))
                : bd_daemon_check_token(d, NULL, 0);
  if (tok == 2) {
    send_json_error(req, 403, "Forbidden", "reload is off: no server.admin_token is configured");
    return;
  }
  if (tok) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    send_json_error(req, 401, "Unauthorized", "needs Authorization: Bearer <server.admin_token>");
    return;
  }
  bd_reload_result res;
  bl_err err = {0};
  if (bd_daemon_reload(d, &res, &err)) {
    send_json_error(req, 400, "Bad Request", err.msg);
    return;
  }
  bd_text t;
  bd_text_init(&t);
  bd_text_printf(&t, "{\"ok\":true,\"generation\":%llu,\"restart_required\":[",
                 (unsigned long long)res.generation);
  for (int i = 0; i < res.n_restart_keys; i++)
    bd_text_printf(&t, "%s\"%s\"", i ? "," : "", res.restart_keys[i]);
  bd_text_printf(&t, "]}\n");
  send_text(req, 200, "OK", "application/json", t.buf, t.len);
  bd_text_free(&t);
}

static void route(struct evhttp_request *req, void *arg) {
  bd_daemon *d = arg;
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
  if (!path) path = "";
  bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
  if (!strcmp(path, "/healthz") && get) {
    send_text(req, 200, "OK", "text/plain", "ok\n", 3);
  } else if (!strcmp(path, "/readyz") && get) {
    char body[SCHED_ERROR_MAX + 2];
    bool ready = bd_daemon_serving(d, body, sizeof body - 1);
    if (ready) snprintf(body, sizeof body, "ready");
    strcat(body, "\n");
    send_text(req, ready ? 200 : 503, ready ? "OK" : "Service Unavailable", "text/plain", body,
              strlen(body));
  } else if (!strcmp(path, "/metrics") && get) {
    bd_text t;
    bd_text_init(&t);
    bd_daemon_render_metrics(d, &t);
    if (t.failed)
      evhttp_send_error(req, 500, "out of memory");
    else
      send_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
    bd_text_free(&t);
  } else if (!strcmp(path, "/v1/config") && get) {
    pthread_rwlock_rdlock(&d->cfg_lock);
    char *json = bd_config_json(d->cfg);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (!json)
      evhttp_send_error(req, 500, "out of memory");
    else
      send_text(req, 200, "OK", "application/json", json, strlen(json));
    free(json);
  } else if (!strcmp(path, "/v1/reload")) {
    if (cmd != EVHTTP_REQ_POST) {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
      send_json_error(req, 405, "Method Not Allowed", "use POST");
    } else {
      reload(d, req);
    }
  } else if (!strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics") ||
             !strcmp(path, "/v1/config")) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
    send_json_error(req, 405, "Method Not Allowed", "use GET");
  } else {
    send_json_error(req, 404, "Not Found", "no such path");
  }
}

bl_status bd_admin_start(bd_daemon *d, struct event_base *base, const char *listen,
                         struct evhttp **out, bl_err *err) {
  *out = NULL;
  const char *colon = strrchr(listen, ':');
  if (!colon) return bl_fail(err, BL_EINVAL, "server.admin_listen %s: expected HOST:PORT", listen);
  char host[96];
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  int port = atoi(colon + 1);
  struct evhttp *http = evhttp_new(base);
  if (!http) return bl_fail(err, BL_ENOMEM, "admin: out of memory");
  evhttp_set_max_body_size(http, 1 << 16);
  evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                       EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
  struct evhttp_bound_socket *h = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
  if (!h) {
    evhttp_free(http);
    return bl_fail(err, BL_EIO, "admin: cannot listen on %s", listen);
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET)
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  snprintf(d->admin_addr, sizeof d->admin_addr, "%s:%d", host, port);
  evhttp_set_gencb(http, route, d);
  *out = http;
  return BL_OK;
}
