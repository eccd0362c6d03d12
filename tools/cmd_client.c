/* `ballast chat`, `stats`, `health` and `reload`: the gRPC clients of
 * ballastd (proto/ballast/v1/ballast.proto and grpc.health.v1).
 *
 * Each command connects, makes one call and maps the outcome to the exit
 * status: 0 when the call succeeded (health: and the service is SERVING), 1
 * with "ballast CMD: STATUS: message" on a gRPC error, 2 on bad usage, 130
 * when chat is interrupted. Requests are validated by the server, not here,
 * so each rule has one copy; the client rejects only what it cannot encode.
 * --json output is written from the protobuf-c descriptors, so it follows
 * the proto: field names as in the .proto, enums by name, unset oneofs and
 * unset sub-messages left out. */
#include <ctype.h>
#include <grpc/status.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ballast.pb-c.h"
#include "cli.h"
#include "client_cli.h"
#include "cmds.h"
#include "health.pb-c.h"

/* Set by chat's SIGINT handler; polled by the stream loop, which cancels. */
static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
  (void)sig;
  g_interrupted = 1;
}

/* ---- messages as JSON, from their descriptors ---- */

static void json_message(FILE *f, const ProtobufCMessage *m);

static void json_str(FILE *f, const char *s) { cli_json_str(f, s ? s : "", s ? strlen(s) : 0); }

static void json_double(FILE *f, double v) {
  if (v != v || v - v != 0)
    json_str(f, v != v ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
  else
    fprintf(f, "%.15g", v);
}

static void json_base64(FILE *f, const ProtobufCBinaryData *b) {
  static const char k[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  fputc('"', f);
  for (size_t i = 0; i < b->len; i += 3) {
    uint32_t v = (uint32_t)b->data[i] << 16;
    if (i + 1 < b->len) v |= (uint32_t)b->data[i + 1] << 8;
    if (i + 2 < b->len) v |= b->data[i + 2];
    fputc(k[v >> 18], f);
    fputc(k[(v >> 12) & 63], f);
    fputc(i + 1 < b->len ? k[(v >> 6) & 63] : '=', f);
    fputc(i + 2 < b->len ? k[v & 63] : '=', f);
  }
  fputc('"', f);
}

/* Bytes one element of a field of this type takes in a protobuf-c struct. */
static size_t field_size(ProtobufCType t) {
  switch (t) {
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: return 8;
  case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
  case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
  default: return 4; /* 32-bit integers, float, enum */
  }
}

static void json_value(FILE *f, const ProtobufCFieldDescriptor *fd, const void *p) {
  switch (fd->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32: fprintf(f, "%" PRId32, *(const int32_t *)p); break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32: fprintf(f, "%" PRIu32, *(const uint32_t *)p); break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64: fprintf(f, "%" PRId64, *(const int64_t *)p); break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: fprintf(f, "%" PRIu64, *(const uint64_t *)p); break;
  case PROTOBUF_C_TYPE_FLOAT: json_double(f, *(const float *)p); break;
  case PROTOBUF_C_TYPE_DOUBLE: json_double(f, *(const double *)p); break;
  case PROTOBUF_C_TYPE_BOOL: fputs(*(const protobuf_c_boolean *)p ? "true" : "false", f); break;
  case PROTOBUF_C_TYPE_ENUM: {
    int v = *(const int *)p;
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, v);
    if (ev)
      json_str(f, ev->name);
    else
      fprintf(f, "%d", v); /* a value newer than this client's proto */
    break;
  }
  case PROTOBUF_C_TYPE_STRING: json_str(f, *(char *const *)p); break;
  case PROTOBUF_C_TYPE_BYTES: json_base64(f, p); break;
  case PROTOBUF_C_TYPE_MESSAGE: json_message(f, *(ProtobufCMessage *const *)p); break;
  }
}

/* Whether a field is present: oneof members by their case, proto2-style
 * optionals by has_, sub-messages when non-NULL; plain proto3 scalars always. */
static bool json_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd) {
  const char *base = (const char *)m;
  if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return *(const uint32_t *)(base + fd->quantifier_offset) == fd->id;
  if (fd->label == PROTOBUF_C_LABEL_REPEATED) return true;
  if (fd->type == PROTOBUF_C_TYPE_MESSAGE) return *(void *const *)(base + fd->offset) != NULL;
  if (fd->label == PROTOBUF_C_LABEL_OPTIONAL && fd->type != PROTOBUF_C_TYPE_STRING)
    return *(const protobuf_c_boolean *)(base + fd->quantifier_offset);
  return true;
}

/* m's fields as "name":value pairs; first: no comma before the first. */
static void json_fields(FILE *f, const ProtobufCMessage *m, bool first) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if (!json_present(m, fd)) continue;
    if (!first) fputc(',', f);
    first = false;
    json_str(f, fd->name);
    fputc(':', f);
    if (fd->label != PROTOBUF_C_LABEL_REPEATED) {
      json_value(f, fd, base + fd->offset);
      continue;
    }
    size_t n = *(const size_t *)(base + fd->quantifier_offset);
    const char *arr = *(char *const *)(base + fd->offset);
    fputc('[', f);
    for (size_t k = 0; k < n; k++) {
      if (k) fputc(',', f);
      json_value(f, fd, arr + k * field_size(fd->type));
    }
    fputc(']', f);
  }
}

static void json_message(FILE *f, const ProtobufCMessage *m) {
  if (!m) {
    fputs("null", f);
    return;
  }
  fputc('{', f);
  json_fields(f, m, true);
  fputc('}', f);
}

/* ---- chat ---- */

static const char *chat_usage =
    "usage: ballast chat [flags] MESSAGE...   (no MESSAGE: it is read from stdin)\n"
    "  Sends MESSAGE to ballastd (Generate) and prints the reply on stdout as it streams;\n"
    "  a summary (finish reason, answer, tokens per pool, ttft, total, speed-up) goes to "
    "stderr.\n" CCLI_USAGE "  --timeout SECONDS       the request's deadline (default: none)\n"
    "  --system TEXT           a system message before MESSAGE\n"
    "  --policy NAME           direct, rescue, plan, plan+rescue, fp16, auto or a configured\n"
    "                          policy (default: the server's)\n"
    "  --max-tokens N          (default: the server's)\n"
    "  --temperature X --top-p X --top-k N --seed N   sampling (default: the model's)\n"
    "  --stop TEXT             a stop string (repeatable)\n"
    "  --ignore-eos            generate past the model's end token, up to --max-tokens\n"
    "  --task math|integer|choice|yesno|index   track an answer of this kind\n"
    "  --choices LABELS        the labels of --task choice (default: ABCD)\n"
    "  --task-class NAME       the auto policy's class (default: \"default\")\n"
    "  --priority N            0..100, lower runs sooner\n"
    "  --no-think              turn the thinking section off\n"
    "  --show-controls         print control events on stderr: [plan ready], [loop detected at\n"
    "                          N, onset M], [commit], [fallback: MODE]\n"
    "  --json                  print the text and the Final message as one JSON object\n"
    "  On a terminal the text streams; a fallback that rewinds it prints a marker line on\n"
    "  stderr and the new text follows. Redirected, stdout gets the exact final text once, at\n"
    "  the end. Ctrl-C cancels the request (exit 130).\n";

/* The request and the storage its pointers refer to. */
typedef struct chat_req {
  Ballast__V1__GenerateRequest req;
  Ballast__V1__Sampling sampling;
  Ballast__V1__ChatMessage msg[2];
  Ballast__V1__ChatMessage *msgs[2];
} chat_req;

/* A numeric flag: false after a message when malformed; *given says
 * whether it was there. Range checks beyond the type's are the server's. */
static bool num_flag(const cli_flag *f, int nf, const char *name, bool integer, double *out,
                     bool *given) {
  const char *s = cli_get(f, nf, name);
  *given = s != NULL;
  if (!s) return true;
  long l;
  bool ok = integer ? cli_int(s, -2147483647L, 2147483647L, &l) : cli_float(s, -1e30, 1e30, out);
  if (ok && integer) *out = (double)l;
  if (!ok)
    fprintf(stderr, "ballast chat: %s %s: expected %s\n", name, s,
            integer ? "an integer" : "a number");
  return ok;
}

static bool chat_task(const char *s, Ballast__V1__TaskType *out) {
  static const struct {
    const char *name;
    Ballast__V1__TaskType task;
  } k[] = {{"math", BALLAST__V1__TASK_TYPE__TASK_TYPE_MATH},
           {"integer", BALLAST__V1__TASK_TYPE__TASK_TYPE_INTEGER},
           {"choice", BALLAST__V1__TASK_TYPE__TASK_TYPE_CHOICE},
           {"yesno", BALLAST__V1__TASK_TYPE__TASK_TYPE_YESNO},
           {"index", BALLAST__V1__TASK_TYPE__TASK_TYPE_INDEX}};
  for (size_t i = 0; i < sizeof k / sizeof *k; i++)
    if (strcmp(s, k[i].name) == 0) {
      *out = k[i].task;
      return true;
    }
  fprintf(stderr, "ballast chat: --task %s: expected math, integer, choice, yesno or index\n", s);
  return false;
}

static bool chat_sampling(const cli_flag *f, int nf, Ballast__V1__Sampling *s, bool *any) {
  double v;
  bool g;
  *any = false;
  if (!num_flag(f, nf, "--temperature", false, &v, &g)) return false;
  if (g) {
    s->temperature_present_case = BALLAST__V1__SAMPLING__TEMPERATURE_PRESENT_TEMPERATURE;
    s->temperature = (float)v, *any = true;
  }
  if (!num_flag(f, nf, "--top-p", false, &v, &g)) return false;
  if (g) {
    s->top_p_present_case = BALLAST__V1__SAMPLING__TOP_P_PRESENT_TOP_P;
    s->top_p = (float)v, *any = true;
  }
  if (!num_flag(f, nf, "--top-k", true, &v, &g)) return false;
  if (g) {
    s->top_k_present_case = BALLAST__V1__SAMPLING__TOP_K_PRESENT_TOP_K;
    s->top_k = (int32_t)v, *any = true;
  }
  const char *seed = cli_get(f, nf, "--seed");
  long l;
  if (seed && !cli_int(seed, 0, 0x7fffffffffffffffL, &l)) {
    fprintf(stderr, "ballast chat: --seed %s: expected an integer >= 0\n", seed);
    return false;
  }
  if (seed) {
    s->seed_present_case = BALLAST__V1__SAMPLING__SEED_PRESENT_SEED;
    s->seed = (uint64_t)l, *any = true;
  }
  return true;
}

/* Fill r from the flags and the message text; false after a message. */
static bool chat_request(const cli_flag *f, int nf, const cli_multi *stop, char *text,
                         chat_req *r) {
  r->req = (Ballast__V1__GenerateRequest)BALLAST__V1__GENERATE_REQUEST__INIT;
  r->sampling = (Ballast__V1__Sampling)BALLAST__V1__SAMPLING__INIT;
  size_t n = 0;
  const char *sys = cli_get(f, nf, "--system");
  if (sys) {
    r->msg[n] = (Ballast__V1__ChatMessage)BALLAST__V1__CHAT_MESSAGE__INIT;
    r->msg[n].role = "system", r->msg[n].content = (char *)sys, n++;
  }
  r->msg[n] = (Ballast__V1__ChatMessage)BALLAST__V1__CHAT_MESSAGE__INIT;
  r->msg[n].role = "user", r->msg[n].content = text, n++;
  for (size_t i = 0; i < n; i++)
    r->msgs[i] = &r->msg[i];
  r->req.n_messages = n, r->req.messages = r->msgs;
  bool any;
  if (!chat_sampling(f, nf, &r->sampling, &any)) return false;
  if (any) r->req.sampling = &r->sampling;
  double v;
  bool g;
  if (!num_flag(f, nf, "--max-tokens", true, &v, &g)) return false;
  if (g) r->req.max_tokens = (int32_t)v;
  if (!num_flag(f, nf, "--priority", true, &v, &g)) return false;
  if (g) r->req.priority = (int32_t)v;
  r->req.n_stop = (size_t)stop->n, r->req.stop = (char **)stop->values;
  const char *s;
  if ((s = cli_get(f, nf, "--policy"))) r->req.policy = (char *)s;
  if ((s = cli_get(f, nf, "--task")) && !chat_task(s, &r->req.task)) return false;
  if ((s = cli_get(f, nf, "--choices"))) r->req.choice_labels = (char *)s;
  if ((s = cli_get(f, nf, "--task-class"))) r->req.task_class = (char *)s;
  r->req.ignore_eos = cli_get(f, nf, "--ignore-eos") != NULL;
  if (cli_get(f, nf, "--no-think")) {
    r->req.enable_thinking_present_case =
        BALLAST__V1__GENERATE_REQUEST__ENABLE_THINKING_PRESENT_ENABLE_THINKING;
    r->req.enable_thinking = false;
  }
  return true;
}

/* The output as the client keeps it, and what the stream has said. */
typedef struct chat_out {
  bool stream;        /* print text as it arrives: stdout is a terminal, no --json */
  bool show_controls; /* --show-controls */
  bool mid_line;      /* the streamed text does not end with a newline */
  char *text;         /* [len] the output so far: chunks, commits, cut by fallbacks */
  size_t len, cap;
  Ballast__V1__GenerateResponse *final; /* owned: the event holding Final */
  char err[256];                        /* why the client stopped the stream */
} chat_out;

static bool chat_append(chat_out *o, const char *s) {
  size_t n = strlen(s);
  if (o->len + n + 1 > o->cap) {
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + n + 1)
      cap *= 2;
    char *grown = realloc(o->text, cap);
    if (!grown) {
      snprintf(o->err, sizeof o->err, "out of memory for the output");
      return false;
    }
    o->text = grown, o->cap = cap;
  }
  memcpy(o->text + o->len, s, n + 1);
  o->len += n;
  if (o->stream && n) {
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    o->mid_line = s[n - 1] != '\n';
  }
  return true;
}

/* A line on stderr; on a terminal shared with the streamed text it starts
 * on a line of its own. */
static void chat_note(chat_out *o, const char *fmt, ...) {
  if (o->stream && o->mid_line) fputc('\n', stderr);
  o->mid_line = false;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static bool chat_control(chat_out *o, const Ballast__V1__Control *c) {
  switch (c->kind) {
  case BALLAST__V1__CONTROL__KIND__PLAN_READY:
    if (o->show_controls) chat_note(o, "[plan ready]");
    return true;
  case BALLAST__V1__CONTROL__KIND__LOOP_DETECTED:
    if (o->show_controls)
      chat_note(o, "[loop detected at %d, onset %d]", c->loop_fire_at, c->loop_onset);
    return true;
  case BALLAST__V1__CONTROL__KIND__COMMIT:
    if (o->show_controls) chat_note(o, "[commit]");
    return chat_append(o, c->text);
  case BALLAST__V1__CONTROL__KIND__FALLBACK:
    /* The output restarts from its first keep_bytes bytes; text already on
     * a terminal cannot be taken back, so a marker shows where the new text begins. */
    if (c->keep_bytes < o->len) o->len = (size_t)c->keep_bytes;
    if (o->text) o->text[o->len] = '\0';
    if (o->show_controls || o->stream)
      chat_note(o, "[fallback: %s]", *c->fallback_mode ? c->fallback_mode : "restart");
    return true;
  default: return true; /* a control kind newer than this client */
  }
}

static bool chat_event(void *ctx, const uint8_t *msg, size_t n) {
  chat_out *o = ctx;
  Ballast__V1__GenerateResponse *ev = ballast__v1__generate_response__unpack(NULL, n, msg);
  if (!ev) {
    snprintf(o->err, sizeof o->err, "a GenerateResponse does not parse");
    return false;
  }
  bool ok = true;
  switch (ev->event_case) {
  case BALLAST__V1__GENERATE_RESPONSE__EVENT_CHUNK: ok = chat_append(o, ev->chunk->text); break;
  case BALLAST__V1__GENERATE_RESPONSE__EVENT_CONTROL: ok = chat_control(o, ev->control); break;
  case BALLAST__V1__GENERATE_RESPONSE__EVENT_FINAL:
    if (!o->final) {
      o->final = ev;
      return true;
    }
    snprintf(o->err, sizeof o->err, "the stream sent a second Final message");
    ok = false;
    break;
  default: break; /* an event newer than this client */
  }
  ballast__v1__generate_response__free_unpacked(ev, NULL);
  return ok;
}

static void chat_summary(const Ballast__V1__Final *fin) {
  char reason[32];
  snprintf(reason, sizeof reason, "%s",
           ccli_enum_name(&ballast__v1__finish_reason__descriptor, (int)fin->finish_reason));
  for (char *p = reason; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  fprintf(stderr, "[%s", reason);
  if (*fin->error) fprintf(stderr, ": %s", fin->error);
  fprintf(stderr, " | answer %s | tokens", *fin->answer ? fin->answer : "(none)");
  for (size_t i = 0; i < fin->n_usage; i++) {
    const Ballast__V1__PoolUsage *u = fin->usage[i];
    fprintf(stderr, "%s %s/%s %s %d", i ? "," : "", u->pool, u->precision, u->phase,
            u->completion_tokens);
  }
  if (!fin->n_usage) fputs(" (none)", stderr);
  if (fin->timings)
    fprintf(stderr, " | ttft %.3f s | total %.3f s", fin->timings->ttft_s, fin->timings->total_s);
  const Ballast__V1__Accounting *a = fin->accounting;
  if (a && a->speedup_b1 > 0)
    fprintf(stderr, " | speed-up %.2fx at batch 1, %.2fx at batch 8", a->speedup_b1, a->speedup_b8);
  else
    fputs(" | speed-up unknown", stderr);
  if (*fin->ran) fprintf(stderr, " | ran %s", fin->ran);
  if (*fin->regime) fprintf(stderr, " (%s)", fin->regime);
  fputs("]\n", stderr);
}

/* Split argv into flags (with their values) and message words; "--" ends
 * the flags. Unknown "--x" stay with the flags for cli_parse to report. */
static int chat_split(int argc, char **argv, const cli_flag *f, int nf, char **flags, int *n_flags,
                      char **words) {
  int nw = 0;
  *n_flags = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      while (++i < argc)
        words[nw++] = argv[i];
      break;
    }
    if (strncmp(a, "--", 2) != 0) {
      words[nw++] = argv[i];
      continue;
    }
    flags[(*n_flags)++] = argv[i];
    for (int j = 0; j < nf; j++)
      if (f[j].has_value && strcmp(f[j].name, a) == 0 && i + 1 < argc)
        flags[(*n_flags)++] = argv[++i];
  }
  return nw;
}

/* The message: the words joined by spaces, or stdin without its trailing
 * newlines. NULL (after a message) when empty or unreadable. */
static char *chat_message(int nw, char **words) {
  size_t len = 0, cap = 256;
  char *s = malloc(cap);
  for (int i = 0; s && i < nw; i++) {
    size_t n = strlen(words[i]);
    if (len + n + 2 > cap) {
      while (len + n + 2 > cap)
        cap *= 2;
      char *grown = realloc(s, cap);
      if (!grown) free(s);
      s = grown;
    }
    if (s) len += (size_t)sprintf(s + len, i ? " %s" : "%s", words[i]);
  }
  while (s && !nw) {
    if (len + 4096 > cap) {
      char *grown = realloc(s, cap *= 2);
      if (!grown) free(s);
      s = grown;
      continue;
    }
    size_t got = fread(s + len, 1, cap - len - 1, stdin);
    len += got;
    if (got == 0) break;
  }
  while (s && len && (s[len - 1] == '\n' || s[len - 1] == '\r'))
    len--;
  if (s) s[len] = '\0';
  if (!s || !len) {
    fprintf(stderr, "ballast chat: %s\n",
            s ? "no message (give MESSAGE or pipe it on stdin)" : "out of memory");
    free(s);
    return NULL;
  }
  return s;
}

/* The text on stdout, ending with a newline: a terminal already shows it,
 * redirected it goes out now. */
static void chat_text_out(const chat_out *o) {
  if (!o->stream && o->len) fwrite(o->text, 1, o->len, stdout);
  if (o->stream ? o->mid_line : o->len && o->text[o->len - 1] != '\n') fputc('\n', stdout);
}

/* Print the result; the exit status for a stream that ended with OK. */
static int chat_finish(chat_out *o, bool json) {
  const Ballast__V1__Final *fin = o->final ? o->final->final : NULL;
  if (json && fin) {
    fputs("{\"text\":", stdout);
    cli_json_str(stdout, o->text ? o->text : "", o->len);
    json_fields(stdout, &fin->base, false);
    fputs("}\n", stdout);
  } else if (!json) {
    chat_text_out(o);
  }
  fflush(stdout);
  if (!fin) {
    fprintf(stderr, "ballast chat: the stream ended without a Final message\n");
    return 1;
  }
  chat_summary(fin);
  return fin->finish_reason == BALLAST__V1__FINISH_REASON__ERROR ? 1 : 0;
}

static int chat_run(gc_client *c, const chat_req *r, double timeout, bool json, bool controls) {
  size_t n;
  uint8_t *buf = ccli_pack(&r->req.base, &n);
  if (!buf) {
    fprintf(stderr, "ballast chat: out of memory\n");
    return 1;
  }
  chat_out o = {.stream = !json && isatty(STDOUT_FILENO), .show_controls = controls};
  struct sigaction sa = {.sa_handler = on_sigint}, old;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old);
  gc_call_opts opts = {.timeout_s = timeout, .cancel = &g_interrupted};
  gc_status st;
  bool ok = gc_stream(c, "/ballast.v1.Ballast/Generate", buf, n, &opts, chat_event, &o, &st);
  sigaction(SIGINT, &old, NULL);
  free(buf);
  int rc;
  if (ok) {
    rc = chat_finish(&o, json);
  } else {
    if (!json) chat_text_out(&o); /* what did arrive */
    fflush(stdout);
    /* A Final before an error status (the pool saw the deadline first)
     * still says how the request ended. */
    if (o.final) chat_summary(o.final->final);
    if (g_interrupted)
      fprintf(stderr, "ballast chat: interrupted, request cancelled\n");
    else if (o.err[0])
      fprintf(stderr, "ballast chat: %s\n", o.err);
    else
      ccli_call_failed("chat", &st);
    rc = g_interrupted ? 130 : 1;
  }
  if (o.final) ballast__v1__generate_response__free_unpacked(o.final, NULL);
  free(o.text);
  return rc;
}

int cmd_chat(int argc, char **argv) {
  cli_flag f[] = {CCLI_FLAGS,
                  {"--system", 1, NULL},
                  {"--policy", 1, NULL},
                  {"--max-tokens", 1, NULL},
                  {"--temperature", 1, NULL},
                  {"--top-p", 1, NULL},
                  {"--top-k", 1, NULL},
                  {"--seed", 1, NULL},
                  {"--stop", 1, NULL},
                  {"--ignore-eos", 0, NULL},
                  {"--task", 1, NULL},
                  {"--choices", 1, NULL},
                  {"--priority", 1, NULL},
                  {"--task-class", 1, NULL},
                  {"--no-think", 0, NULL},
                  {"--show-controls", 0, NULL},
                  {"--json", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f), n_flags;
  char **flags = malloc(sizeof *flags * (size_t)(argc + 1));
  char **words = malloc(sizeof *words * (size_t)(argc + 1));
  const char **stops = malloc(sizeof *stops * (size_t)(argc + 1));
  cli_multi stop = {"--stop", stops, argc, 0};
  int rc = 2;
  if (!flags || !words || !stops) goto done;
  int nw = chat_split(argc, argv, f, nf, flags, &n_flags, words);
  if (!cli_parse_multi("chat", n_flags, flags, f, nf, &stop, 1)) goto done;
  if (cli_get(f, nf, "--help")) {
    fputs(chat_usage, stdout);
    rc = 0;
    goto done;
  }
  char *text = chat_message(nw, words);
  chat_req r;
  if (!text || !chat_request(f, nf, &stop, text, &r)) {
    free(text);
    goto done;
  }
  gc_client *c;
  double timeout;
  if (!(rc = ccli_open("chat", f, nf, 0, &timeout, &c))) {
    rc = chat_run(c, &r, timeout, cli_get(f, nf, "--json") != NULL,
                  cli_get(f, nf, "--show-controls") != NULL);
    gc_close(c);
  }
  free(text);
done:
  free(flags);
  free(words);
  free(stops);
  return rc;
}

/* ---- stats ---- */

static const char *stats_usage =
    "usage: ballast stats [flags]\n"
    "  ballastd's counters and measured decode throughput (GetStats), as tables.\n" CCLI_USAGE
    "  --timeout SECONDS       the call's deadline (default: 10)\n"
    "  --json                  print the GetStatsResponse as JSON\n";

/* "live/calibrated" tokens/s, "-" for a rate not measured yet (0). */
static void stats_rate(char *buf, size_t n, double live, double cal) {
  char a[24] = "-", b[24] = "-";
  if (live > 0) snprintf(a, sizeof a, "%.1f", live);
  if (cal > 0) snprintf(b, sizeof b, "%.1f", cal);
  snprintf(buf, n, "%s/%s", a, b);
}

static void stats_pools(const Ballast__V1__GetStatsResponse *s) {
  printf("%-10s %10s %10s %10s %7s %6s %4s %4s %13s %19s %19s\n", "pool", "steps", "prefill",
         "generated", "preempt", "loops", "run", "wait", "kv free/total", "b1 tok/s live/cal",
         "b8 tok/s live/cal");
  for (size_t i = 0; i < s->n_pools; i++) {
    const Ballast__V1__PoolStats *p = s->pools[i];
    char kv[32], b1[48], b8[48];
    snprintf(kv, sizeof kv, "%d/%d", p->kv_blocks_free, p->kv_blocks_total);
    stats_rate(b1, sizeof b1, p->decode_tps_b1, p->calibrated_tps_b1);
    stats_rate(b8, sizeof b8, p->decode_tps_b8, p->calibrated_tps_b8);
    printf("%-10s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %7" PRIu64 " %6" PRIu64
           " %4d %4d %13s %19s %19s\n",
           p->name, p->steps, p->prefill_tokens, p->generated_tokens, p->preemptions, p->loops,
           p->running, p->waiting, kv, b1, b8);
  }
  for (size_t i = 0; i < s->n_pools; i++)
    if (!s->pools[i]->healthy)
      printf("%s: UNHEALTHY after a device error (ballast health says why)\n", s->pools[i]->name);
}

static void stats_policies(const Ballast__V1__GetStatsResponse *s) {
  printf("%-14s %-12s %9s %6s %8s %10s %9s %17s\n", "policy", "task class", "requests", "loops",
         "commits", "fallbacks", "answered", "reasoning tokens");
  for (size_t i = 0; i < s->n_policies; i++) {
    const Ballast__V1__PolicyStats *p = s->policies[i];
    printf("%-14s %-12s %9" PRIu64 " %6" PRIu64 " %8" PRIu64 " %10" PRIu64 " %9" PRIu64
           " %17" PRIu64 "\n",
           p->policy, p->task_class, p->requests, p->loops, p->commits, p->fallbacks, p->answered,
           p->reasoning_tokens);
  }
}

static void stats_print(const Ballast__V1__GetStatsResponse *s) {
  printf("uptime %.1f s | requests %" PRIu64 " | rejected %" PRIu64 " | active streams %d\n\n",
         s->uptime_s, s->requests, s->rejected, s->active_streams);
  stats_pools(s);
  fputs("\nfinished:", stdout);
  for (size_t i = 0; i < s->n_finished; i++) {
    char reason[32];
    snprintf(reason, sizeof reason, "%s",
             ccli_enum_name(&ballast__v1__finish_reason__descriptor, (int)s->finished[i]->reason));
    for (char *p = reason; *p; p++)
      *p = (char)tolower((unsigned char)*p);
    printf("%s %s %" PRIu64, i ? "," : "", reason, s->finished[i]->count);
  }
  puts(s->n_finished ? "\n" : " none\n");
  if (s->n_policies)
    stats_policies(s);
  else
    puts("policies: none yet");
}

int cmd_stats(int argc, char **argv) {
  cli_flag f[] = {CCLI_FLAGS, {"--json", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("stats", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(stats_usage, stdout);
    return 0;
  }
  gc_client *c;
  double timeout;
  int rc = ccli_open("stats", f, nf, CCLI_UNARY_TIMEOUT_S, &timeout, &c);
  if (rc) return rc;
  Ballast__V1__GetStatsRequest req = BALLAST__V1__GET_STATS_REQUEST__INIT;
  gc_call_opts opts = {.timeout_s = timeout};
  gc_status st;
  ProtobufCMessage *m = ccli_unary(c, "/ballast.v1.Ballast/GetStats", &req.base,
                                   &ballast__v1__get_stats_response__descriptor, &opts, &st);
  gc_close(c);
  if (!m) return ccli_call_failed("stats", &st);
  if (cli_get(f, nf, "--json")) {
    json_message(stdout, m);
    fputc('\n', stdout);
  } else {
    stats_print((const Ballast__V1__GetStatsResponse *)m);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

/* ---- health ---- */

static const char *health_usage =
    "usage: ballast health [flags]\n"
    "  Asks grpc.health.v1.Health/Check and prints SERVING, NOT_SERVING, ...; after\n"
    "  NOT_SERVING, a line on why each (draining, a pool's device error).\n"
    "  Exits 0 only when SERVING.\n" CCLI_USAGE
    "  --timeout SECONDS       the call's deadline (default: 10)\n"
    "  --service NAME          the service to check (default: \"\", the whole server)\n";

/* After NOT_SERVING: why, from ServerInfo (draining, a pool's device
 * error), a line each; nothing when that call fails too. */
static void health_why(gc_client *c, const gc_call_opts *opts) {
  Ballast__V1__ServerInfoRequest req = BALLAST__V1__SERVER_INFO_REQUEST__INIT;
  gc_status st;
  ProtobufCMessage *m = ccli_unary(c, "/ballast.v1.Ballast/ServerInfo", &req.base,
                                   &ballast__v1__server_info_response__descriptor, opts, &st);
  if (!m) return;
  const Ballast__V1__ServerInfoResponse *r = (const Ballast__V1__ServerInfoResponse *)m;
  if (r->draining) puts("draining");
  for (size_t i = 0; i < r->n_pools; i++)
    if (!r->pools[i]->healthy) printf("%s: %s\n", r->pools[i]->name, r->pools[i]->error);
  protobuf_c_message_free_unpacked(m, NULL);
}

int cmd_health(int argc, char **argv) {
  cli_flag f[] = {CCLI_FLAGS, {"--service", 1, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("health", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(health_usage, stdout);
    return 0;
  }
  gc_client *c;
  double timeout;
  int rc = ccli_open("health", f, nf, CCLI_UNARY_TIMEOUT_S, &timeout, &c);
  if (rc) return rc;
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  const char *service = cli_get(f, nf, "--service");
  if (service) req.service = (char *)service;
  gc_call_opts opts = {.timeout_s = timeout};
  gc_status st;
  ProtobufCMessage *m =
      ccli_unary(c, "/grpc.health.v1.Health/Check", &req.base,
                 &grpc__health__v1__health_check_response__descriptor, &opts, &st);
  if (!m) {
    gc_close(c);
    return ccli_call_failed("health", &st);
  }
  int status = ((const Grpc__Health__V1__HealthCheckResponse *)m)->status;
  puts(
      ccli_enum_name(&grpc__health__v1__health_check_response__serving_status__descriptor, status));
  protobuf_c_message_free_unpacked(m, NULL);
  bool serving = status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  if (!serving) health_why(c, &opts);
  gc_close(c);
  return serving ? 0 : 1;
}

/* ---- reload ---- */

static const char *reload_usage =
    "usage: ballast reload [flags]\n"
    "  Makes ballastd re-read its config file (Reload); prints the new config generation and\n"
    "  the changed keys that take effect only on restart.\n" CCLI_USAGE
    "  --timeout SECONDS       the call's deadline (default: 10)\n"
    "  --token TOKEN           the admin token (server.admin_token)\n"
    "  --token-file FILE       read the admin token from FILE\n"
    "                          (neither: $BALLAST_ADMIN_TOKEN)\n"
    "  --json                  print the ReloadResponse as JSON\n";

/* The admin token from FILE, without trailing whitespace; NULL after a
 * message. A token file is a line, so anything over 4 KiB is a mistake. */
static char *reload_token_file(const char *path) {
  FILE *fp = fopen(path, "r");
  char *buf = fp ? calloc(1, 4097) : NULL;
  size_t n = buf ? fread(buf, 1, 4097, fp) : 0;
  bool bad = !fp || !buf || ferror(fp) || n > 4096;
  if (fp) fclose(fp);
  if (bad) {
    fprintf(stderr, "ballast reload: --token-file %s: %s\n", path,
            !fp        ? "cannot open"
            : n > 4096 ? "longer than 4 KiB"
                       : "cannot read");
    free(buf);
    return NULL;
  }
  while (n && isspace((unsigned char)buf[n - 1]))
    buf[--n] = '\0';
  return buf;
}

/* "Bearer TOKEN" into *header (NULL: no token given) and where the token
 * came from into *source. Exit status or 0. */
static int reload_auth(const cli_flag *f, int nf, char **header, const char **source) {
  const char *token = cli_get(f, nf, "--token"), *file = cli_get(f, nf, "--token-file");
  char *from_file = NULL;
  *header = NULL;
  *source = token ? "--token" : "--token-file";
  if (token && file) {
    fprintf(stderr, "ballast reload: give --token or --token-file, not both\n");
    return 2;
  }
  if (file && !(token = from_file = reload_token_file(file))) return 1;
  if (!token) {
    token = getenv("BALLAST_ADMIN_TOKEN");
    *source = "$BALLAST_ADMIN_TOKEN";
  }
  const char *bad = NULL;
  if (token && *token) {
    size_t n = strlen(token) + sizeof "Bearer ";
    if ((*header = malloc(n))) snprintf(*header, n, "Bearer %s", token);
    if (!*header) bad = "out of memory";
  } else if (from_file) {
    bad = "the --token-file is empty";
  }
  free(from_file); /* token may point into it: not read after this */
  if (bad) fprintf(stderr, "ballast reload: %s\n", bad);
  return bad ? 1 : 0;
}

static void reload_print(const Ballast__V1__ReloadResponse *r) {
  printf("reloaded: config generation %" PRIu64 "\n", r->config_generation);
  fputs("restart required:", stdout);
  for (size_t i = 0; i < r->n_restart_required; i++)
    printf(" %s", r->restart_required[i]);
  puts(r->n_restart_required ? "" : " none");
  if (*r->message) printf("%s\n", r->message);
}

int cmd_reload(int argc, char **argv) {
  cli_flag f[] = {CCLI_FLAGS, {"--token", 1, NULL}, {"--token-file", 1, NULL}, {"--json", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("reload", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(reload_usage, stdout);
    return 0;
  }
  char *auth;
  const char *source;
  int rc = reload_auth(f, nf, &auth, &source);
  gc_client *c = NULL;
  double timeout;
  if (rc || (rc = ccli_open("reload", f, nf, CCLI_UNARY_TIMEOUT_S, &timeout, &c))) {
    free(auth);
    return rc;
  }
  Ballast__V1__ReloadRequest req = BALLAST__V1__RELOAD_REQUEST__INIT;
  gc_call_opts opts = {
      .timeout_s = timeout, .md_key = auth ? "authorization" : NULL, .md_value = auth};
  gc_status st;
  ProtobufCMessage *m = ccli_unary(c, "/ballast.v1.Ballast/Reload", &req.base,
                                   &ballast__v1__reload_response__descriptor, &opts, &st);
  gc_close(c);
  bool had_token = auth != NULL;
  free(auth);
  if (!m) {
    ccli_call_failed("reload", &st);
    /* The server says the same for no token and a wrong one; say which. */
    if (st.code == GRPC_STATUS_UNAUTHENTICATED && !had_token)
      fprintf(stderr, "ballast reload: no token given (--token, --token-file or "
                      "$BALLAST_ADMIN_TOKEN)\n");
    else if (st.code == GRPC_STATUS_UNAUTHENTICATED)
      fprintf(stderr, "ballast reload: the token from %s is not the server's admin token\n",
              source);
    return 1;
  }
  if (cli_get(f, nf, "--json")) {
    json_message(stdout, m);
    fputc('\n', stdout);
  } else {
    reload_print((const Ballast__V1__ReloadResponse *)m);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}
