/* `ballast load`: a closed-loop load test of a running ballastd, the way
 * serving engines are compared (vLLM's benchmark_serving, llama.cpp's
 * server bench).
 *
 * For each concurrency C and each policy (a run), C worker threads, each
 * with its own gRPC client (channel and completion queue), keep C Generate
 * streams in flight until --requests have finished: a worker takes the next
 * request index when its stream ends. Each request records, from the
 * client's clock: TTFT (the call's start to the first chunk with token
 * ids), inter-token latencies (a chunk of k tokens arriving g seconds after
 * the previous one gives k samples of g/k), E2E (start to the call's
 * status), the output tokens (token ids in the chunks), the Final's finish
 * reason and the gRPC status.
 *
 * Invariants: every request a run sends is counted once, ok or failed (ok:
 * status OK and a Final whose finish is not ERROR, CANCELLED or DEADLINE);
 * latencies, ITLs and output tokens are over the ok requests only; wall
 * time runs from the first request's start to the last one's end. Each
 * result slot is written by the one worker that took its index, and read
 * after the workers are joined, so nothing is locked. --warmup requests go
 * first through the same workers and are not counted in the run. */
#include <cjson/cJSON.h>
#include <grpc/status.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ballast.pb-c.h"
#include "cli.h"
#include "client_cli.h"
#include "cmds.h"

enum { LOAD_MAX_LIST = 16, LOAD_MAX_CONC = 1024, LOAD_N_STATUS = 17, LOAD_N_FINISH = 16 };
#define LOAD_DEFAULT_PROMPT "What is 7 times 8? Explain your reasoning step by step."
#define LOAD_GENERATE       "/ballast.v1.Ballast/Generate"

static const char *usage =
    "usage: ballast load [flags]\n"
    "  A closed-loop load test of a running ballastd. For each concurrency C and each policy\n"
    "  (a run), C workers, each with its own channel, keep C Generate streams in flight until\n"
    "  --requests have finished. Per run: requests ok/failed (by gRPC status and finish\n"
    "  reason), wall time, requests/s, output tokens/s, mean per-stream decode tokens/s, and\n"
    "  mean/p50/p90/p99/max of TTFT, ITL (inter-token latency), TPOT and E2E latency over the\n"
    "  requests that succeeded. Then each policy's output tokens/s over the fp16 policy's at\n"
    "  the same concurrency (when fp16 ran), and the daemon's own decode tokens/s per pool at\n"
    "  batch 1 and 8 (GetStats, live/calibrated).\n" CCLI_USAGE
    "  --timeout SECONDS       each request's deadline (default: 600)\n"
    "  --prompt TEXT           the user message of every request (default: a short question)\n"
    "  --prompts FILE.jsonl    one JSON object per line: {\"prompt\": TEXT} or {\"question\":\n"
    "                          TEXT} (a user message) or {\"messages\": [{\"role\": ...,\n"
    "                          \"content\": ...}, ...]}; requests take them in turn\n"
    "  --requests N            requests per run, warmup not counted (default: 16)\n"
    "  --concurrency LIST      streams in flight, e.g. 1,8 (default: 1,8)\n"
    "  --policy LIST           policies, e.g. direct,fp16 (default: direct,fp16)\n"
    "  --max-tokens N          per request (default: 128; 0: the server's default)\n"
    "  --ignore-eos            generate past the end token: every request makes --max-tokens\n"
    "  --temperature X         (default: 0, greedy)\n"
    "  --seed N                the sampling seed\n"
    "  --warmup N              requests per run sent before its clock starts (default: 0)\n"
    "  --json                  one JSON document: config, server, runs, speed-ups, the\n"
    "                          daemon's view\n"
    "  Exit status: 0 when the runs finished (failed requests are counted, not fatal), 1 when\n"
    "  the server cannot be reached, 2 on bad usage, 130 when interrupted (Ctrl-C).\n";

/* Set by the SIGINT handler; every stream polls it and cancels. */
static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
  (void)sig;
  g_interrupted = 1;
}

/* ---- configuration ---- */

/* One prompt: chat messages. */
typedef struct load_prompt {
  Ballast__V1__ChatMessage *msg; /* [n] */
  Ballast__V1__ChatMessage **msgs;
  size_t n;
} load_prompt;

typedef struct load_cfg {
  const cli_flag *flags; /* the parsed flags: the workers connect as they say */
  int n_flags;
  const char *server;
  int32_t conc[LOAD_MAX_LIST];
  int n_conc, n_pol;
  char *pol_buf; /* the --policy value, cut at the commas */
  const char *pol[LOAD_MAX_LIST];
  long requests, max_tokens, warmup;
  bool ignore_eos, json, seed_given;
  double temperature, timeout;
  long seed;
  const char *prompts_path; /* NULL: --prompt */
  load_prompt *prompts;     /* [n_prompts] */
  int n_prompts;
} load_cfg;

static int bad_flag(const char *name, const char *v, const char *want) {
  fprintf(stderr, "ballast load: %s %s: expected %s\n", name, v, want);
  return 2;
}

static int parse_policies(const char *s, load_cfg *c) {
  if (!(c->pol_buf = strdup(s))) return bad_flag("--policy", s, "(out of memory)");
  c->n_pol = 0;
  bool over = false;
  for (char *save = NULL, *t = strtok_r(c->pol_buf, ",", &save); t;
       t = strtok_r(NULL, ",", &save)) {
    over = c->n_pol == LOAD_MAX_LIST;
    if (over) break;
    c->pol[c->n_pol++] = t;
  }
  if (c->n_pol == 0 || over)
    return bad_flag("--policy", s, "a list of 1 to 16 policy names, e.g. direct,fp16");
  return 0;
}

/* An integer flag in [lo, hi] into *out (unchanged when absent). */
static int int_flag(const cli_flag *f, int nf, const char *name, long lo, long hi, long *out) {
  const char *v = cli_get(f, nf, name);
  if (!v || cli_int(v, lo, hi, out)) return 0;
  char want[80];
  snprintf(want, sizeof want, "an integer in [%ld, %ld]", lo, hi);
  return bad_flag(name, v, want);
}

static int parse_cfg(const cli_flag *f, int nf, load_cfg *c) {
  const char *v;
  int rc;
  c->requests = 16, c->max_tokens = 128;
  if ((rc = int_flag(f, nf, "--requests", 1, 10000000, &c->requests)) ||
      (rc = int_flag(f, nf, "--warmup", 0, 1000000, &c->warmup)) ||
      (rc = int_flag(f, nf, "--max-tokens", 0, 2147483647L, &c->max_tokens)) ||
      (rc = int_flag(f, nf, "--seed", 0, 0x7fffffffffffffffL, &c->seed)))
    return rc;
  c->seed_given = cli_get(f, nf, "--seed") != NULL;
  v = cli_get(f, nf, "--concurrency");
  if (!cli_int_list(v ? v : "1,8", c->conc, LOAD_MAX_LIST, &c->n_conc))
    return bad_flag("--concurrency", v, "a list of up to 16 integers >= 1, e.g. 1,8");
  for (int i = 0; i < c->n_conc; i++)
    if (c->conc[i] > LOAD_MAX_CONC) return bad_flag("--concurrency", v, "values up to 1024");
  v = cli_get(f, nf, "--temperature");
  if (v && !cli_float(v, 0, 1e30, &c->temperature))
    return bad_flag("--temperature", v, "a number >= 0");
  v = cli_get(f, nf, "--policy");
  if ((rc = parse_policies(v ? v : "direct,fp16", c))) return rc;
  c->prompts_path = cli_get(f, nf, "--prompts");
  if (c->prompts_path && cli_get(f, nf, "--prompt")) {
    fprintf(stderr, "ballast load: give --prompt or --prompts, not both\n");
    return 2;
  }
  c->ignore_eos = cli_get(f, nf, "--ignore-eos") != NULL;
  c->json = cli_get(f, nf, "--json") != NULL;
  c->server = ccli_server(f, nf);
  c->flags = f, c->n_flags = nf;
  return ccli_timeout("load", f, nf, 600, &c->timeout);
}

/* ---- prompts ---- */

static void free_prompts(load_prompt *p, int n) {
  for (int i = 0; p && i < n; i++) {
    for (size_t k = 0; k < p[i].n; k++) {
      free(p[i].msg[k].role);
      free(p[i].msg[k].content);
    }
    free(p[i].msg);
    free(p[i].msgs);
  }
  free(p);
}

/* p's messages: n of them, strings copied; false when out of memory. */
static bool prompt_alloc(load_prompt *p, size_t n) {
  p->msg = calloc(n, sizeof *p->msg);
  p->msgs = calloc(n, sizeof *p->msgs);
  p->n = 0;
  return p->msg && p->msgs;
}

static bool prompt_add(load_prompt *p, const char *role, const char *content) {
  Ballast__V1__ChatMessage *m = &p->msg[p->n];
  *m = (Ballast__V1__ChatMessage)BALLAST__V1__CHAT_MESSAGE__INIT;
  m->role = strdup(role), m->content = strdup(content);
  p->msgs[p->n++] = m; /* counted even when a copy failed, so it is freed */
  return m->role && m->content;
}

/* One JSONL line's object into p; the reason when it is not a prompt. */
static const char *prompt_from_json(const cJSON *o, load_prompt *p) {
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "prompt");
  if (!text) text = cJSON_GetObjectItemCaseSensitive(o, "question");
  const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
  if (cJSON_IsString(text) && !msgs)
    return prompt_alloc(p, 1) && prompt_add(p, "user", text->valuestring) ? NULL : "out of memory";
  int n = cJSON_GetArraySize(msgs);
  if (text || !cJSON_IsArray(msgs) || n == 0)
    return "expected {\"prompt\": string}, {\"question\": string} or {\"messages\": "
           "[{\"role\": string, \"content\": string}, ...]}";
  if (!prompt_alloc(p, (size_t)n)) return "out of memory";
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsString(role) || !cJSON_IsString(content))
      return "a message is not {\"role\": string, \"content\": string}";
    if (!prompt_add(p, role->valuestring, content->valuestring)) return "out of memory";
  }
  return NULL;
}

/* The prompts of --prompts FILE (blank lines skipped). 0, or 1 after a message. */
static int read_prompts(const char *path, load_prompt **out, int *n) {
  FILE *fp = fopen(path, "r");
  if (!fp) {
    fprintf(stderr, "ballast load: --prompts %s: cannot open\n", path);
    return 1;
  }
  load_prompt *p = NULL;
  int cnt = 0, cap = 0, lineno = 0;
  char *line = NULL;
  size_t lcap = 0;
  const char *why = NULL;
  while (!why && getline(&line, &lcap, fp) > 0) {
    lineno++;
    if (line[strspn(line, " \t\r\n")] == 0) continue;
    if (cnt == cap) {
      load_prompt *grown = realloc(p, sizeof *p * (size_t)(cap = cap ? 2 * cap : 64));
      if (!grown) {
        why = "out of memory";
        break;
      }
      p = grown;
    }
    cJSON *o = cJSON_Parse(line);
    p[cnt] = (load_prompt){0};
    why = o ? prompt_from_json(o, &p[cnt]) : "not JSON";
    cnt++; /* freed with the rest, even when it failed */
    cJSON_Delete(o);
  }
  free(line);
  fclose(fp);
  if (!why && cnt == 0) why = "no prompts";
  if (why) {
    fprintf(stderr, "ballast load: %s:%d: %s\n", path, lineno, why);
    free_prompts(p, cnt);
    return 1;
  }
  *out = p, *n = cnt;
  return 0;
}

/* ---- one run: workers, streams, samples ---- */

/* One request's record; times in seconds from cli_now(). */
typedef struct load_req {
  bool sent, ok;
  double start, end;
  double ttft; /* < 0: no token arrived */
  int32_t tokens;
  int code;   /* grpc_status_code */
  int finish; /* Ballast__V1__FinishReason; -1: no Final */
} load_req;

/* A packed GenerateRequest, per prompt. */
typedef struct load_packed {
  uint8_t *buf;
  size_t n;
} load_packed;

/* What a phase (a run's warmup or its measured part) shares with its workers. */
typedef struct load_phase {
  const load_packed *reqs; /* [n_reqs], request i sends reqs[i % n_reqs] */
  int n_reqs, n;
  atomic_int next; /* the next request index to take */
  load_req *out;   /* [n]; NULL: warmup, not recorded */
  atomic_int sent;
  double timeout;
} load_phase;

typedef struct load_worker {
  load_phase *ph;
  gc_client *c;
  pthread_t th;
  double *itl; /* [n_itl] seconds per token after the first chunk, ok requests only */
  size_t n_itl, cap_itl;
  bool has_err;
  gc_status err; /* the first failure this worker saw */
} load_worker;

/* One stream's state while it runs. */
typedef struct load_stream {
  load_worker *w;
  load_req *r;
  double prev; /* when the last chunk with tokens arrived */
  char why[256];
} load_stream;

static bool push_itl(load_worker *w, double v) {
  if (w->n_itl == w->cap_itl) {
    size_t cap = w->cap_itl ? 2 * w->cap_itl : 1024;
    double *grown = realloc(w->itl, cap * sizeof *grown);
    if (!grown) return false;
    w->itl = grown, w->cap_itl = cap;
  }
  w->itl[w->n_itl++] = v;
  return true;
}

static bool on_event(void *ctx, const uint8_t *msg, size_t n) {
  load_stream *s = ctx;
  load_req *r = s->r;
  double now = cli_now();
  Ballast__V1__GenerateResponse *ev = ballast__v1__generate_response__unpack(NULL, n, msg);
  if (!ev) {
    snprintf(s->why, sizeof s->why, "a GenerateResponse does not parse");
    return false;
  }
  bool ok = true;
  if (ev->event_case == BALLAST__V1__GENERATE_RESPONSE__EVENT_CHUNK && ev->chunk->n_token_ids) {
    size_t k = ev->chunk->n_token_ids;
    if (r->ttft < 0) {
      r->ttft = now - r->start;
    } else {
      for (size_t i = 0; ok && i < k; i++)
        ok = push_itl(s->w, (now - s->prev) / (double)k);
      if (!ok) snprintf(s->why, sizeof s->why, "out of memory for the latencies");
    }
    s->prev = now;
    r->tokens += (int32_t)k;
  } else if (ev->event_case == BALLAST__V1__GENERATE_RESPONSE__EVENT_FINAL) {
    r->finish = (int)ev->final->finish_reason;
    if (*ev->final->error) snprintf(s->why, sizeof s->why, "finish ERROR: %s", ev->final->error);
  }
  ballast__v1__generate_response__free_unpacked(ev, NULL);
  return ok;
}

static bool finish_ok(int finish) {
  return finish >= 0 && finish != BALLAST__V1__FINISH_REASON__ERROR &&
         finish != BALLAST__V1__FINISH_REASON__CANCELLED &&
         finish != BALLAST__V1__FINISH_REASON__DEADLINE;
}

static void run_one(load_worker *w, const load_packed *p, load_req *r) {
  load_stream s = {.w = w, .r = r};
  *r = (load_req){.sent = true, .ttft = -1, .finish = -1};
  size_t itl0 = w->n_itl;
  gc_call_opts o = {.timeout_s = w->ph->timeout, .cancel = &g_interrupted};
  gc_status st;
  r->start = cli_now();
  gc_stream(w->c, LOAD_GENERATE, p->buf, p->n, &o, on_event, &s, &st);
  r->end = cli_now();
  r->code = st.code;
  if (st.code == GRPC_STATUS_CANCELLED && s.why[0] && !g_interrupted) {
    r->code = GRPC_STATUS_INTERNAL; /* this side stopped it */
    snprintf(st.msg, sizeof st.msg, "%s", s.why);
  } else if (st.code == GRPC_STATUS_OK && !finish_ok(r->finish)) {
    snprintf(st.msg, sizeof st.msg, "%s",
             r->finish < 0 ? "the stream ended without a Final message"
             : s.why[0]    ? s.why
                           : "finish CANCELLED or DEADLINE");
  }
  /* A request may end before any token (a stop string at once): ok, no latencies. */
  r->ok = r->code == GRPC_STATUS_OK && finish_ok(r->finish);
  if (!r->ok) {
    w->n_itl = itl0;
    if (!w->has_err) w->err = st, w->has_err = true;
  }
}

static void *worker_main(void *arg) {
  load_worker *w = arg;
  load_phase *ph = w->ph;
  load_req scratch;
  while (!g_interrupted) {
    int i = atomic_fetch_add(&ph->next, 1);
    if (i >= ph->n) break;
    atomic_fetch_add(&ph->sent, 1);
    run_one(w, &ph->reqs[i % ph->n_reqs], ph->out ? &ph->out[i] : &scratch);
  }
  return NULL;
}

/* Run a phase on nw workers; false (after a message) when no thread starts. */
static bool run_phase(load_worker *ws, int nw, load_phase *ph) {
  int started = 0;
  for (int k = 0; k < nw; k++) {
    ws[k].ph = ph;
    if (pthread_create(&ws[k].th, NULL, worker_main, &ws[k]) != 0) break;
    started++;
  }
  for (int k = 0; k < started; k++)
    pthread_join(ws[k].th, NULL);
  if (started == 0) fprintf(stderr, "ballast load: cannot start a worker thread\n");
  return started > 0;
}

/* ---- statistics ---- */

typedef struct load_dist {
  int n;
  double mean, min, p50, p90, p99, max;
} load_dist;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Percentiles by linear interpolation between order statistics (numpy's
 * default, as vLLM's benchmark reports them). Sorts v. */
static load_dist dist_of(double *v, size_t n) {
  load_dist d = {.n = (int)n};
  if (!n) return d;
  qsort(v, n, sizeof *v, cmp_double);
  double sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += v[i];
  double q[3] = {0.5, 0.9, 0.99}, *out[3] = {&d.p50, &d.p90, &d.p99};
  for (int k = 0; k < 3; k++) {
    double at = q[k] * (double)(n - 1);
    size_t lo = (size_t)at, hi = lo + 1 < n ? lo + 1 : lo;
    *out[k] = v[lo] + (v[hi] - v[lo]) * (at - (double)lo);
  }
  d.mean = sum / (double)n, d.min = v[0], d.max = v[n - 1];
  return d;
}

/* One run's result. */
typedef struct load_run {
  const char *policy;
  int conc, sent, ok, failed;
  bool interrupted;
  int by_status[LOAD_N_STATUS + 1]; /* failed requests by gRPC status; [LOAD_N_STATUS]: other */
  int by_finish[LOAD_N_FINISH];     /* every request with a Final, by finish reason */
  char first_error[300];
  long long tokens; /* ok requests' output tokens */
  double wall_s, req_per_s, tok_per_s, stream_tok_per_s;
  load_dist ttft, itl, tpot, e2e;
} load_run;

static void run_counts(load_run *run, const load_req *rq, int n, double *ttft, double *e2e,
                       double *tpot, int *n_lat, int *n_tpot) {
  double t0 = 0, t1 = 0, stream_sum = 0;
  *n_lat = *n_tpot = 0;
  for (int i = 0; i < n; i++) {
    const load_req *r = &rq[i];
    if (!r->sent) continue;
    if (run->sent++ == 0 || r->start < t0) t0 = r->start;
    if (r->end > t1) t1 = r->end;
    if (r->finish >= 0 && r->finish < LOAD_N_FINISH) run->by_finish[r->finish]++;
    if (!r->ok) {
      run->failed++;
      run->by_status[r->code >= 0 && r->code < LOAD_N_STATUS ? r->code : LOAD_N_STATUS]++;
      continue;
    }
    run->ok++;
    run->tokens += r->tokens;
    if (r->ttft < 0) continue;
    ttft[*n_lat] = r->ttft, e2e[(*n_lat)++] = r->end - r->start;
    if (r->tokens >= 2 && r->end - r->start > r->ttft) {
      double t = (r->end - r->start - r->ttft) / (double)(r->tokens - 1);
      tpot[(*n_tpot)++] = t;
      stream_sum += 1 / t;
    }
  }
  run->wall_s = run->sent ? t1 - t0 : 0;
  run->stream_tok_per_s = *n_tpot ? stream_sum / *n_tpot : 0;
}

/* Aggregate a run's records and its workers' latencies into run. */
static bool run_aggregate(load_run *run, const load_req *rq, int n, load_worker *ws, int nw) {
  double *ttft = malloc(sizeof *ttft * (size_t)n), *e2e = malloc(sizeof *e2e * (size_t)n);
  double *tpot = malloc(sizeof *tpot * (size_t)n);
  size_t n_itl = 0;
  for (int k = 0; k < nw; k++)
    n_itl += ws[k].n_itl;
  double *itl = malloc(sizeof *itl * (n_itl ? n_itl : 1));
  bool ok = ttft && e2e && tpot && itl;
  if (ok) {
    int n_lat, n_tpot;
    run_counts(run, rq, n, ttft, e2e, tpot, &n_lat, &n_tpot);
    size_t at = 0;
    for (int k = 0; k < nw; k++) {
      if (ws[k].n_itl) /* a worker whose requests all failed has no array */
        memcpy(itl + at, ws[k].itl, ws[k].n_itl * sizeof *itl);
      at += ws[k].n_itl;
    }
    run->ttft = dist_of(ttft, (size_t)n_lat), run->e2e = dist_of(e2e, (size_t)n_lat);
    run->tpot = dist_of(tpot, (size_t)n_tpot), run->itl = dist_of(itl, n_itl);
    run->req_per_s = run->wall_s > 0 ? run->sent / run->wall_s : 0;
    run->tok_per_s = run->wall_s > 0 ? (double)run->tokens / run->wall_s : 0;
    for (int k = 0; k < nw && run->failed && !run->first_error[0]; k++)
      if (ws[k].has_err)
        snprintf(run->first_error, sizeof run->first_error, "%s: %s",
                 gc_status_name(ws[k].err.code), ws[k].err.msg);
  }
  free(ttft);
  free(e2e);
  free(tpot);
  free(itl);
  if (!ok) fprintf(stderr, "ballast load: out of memory\n");
  return ok;
}

/* ---- requests ---- */

static void free_packed(load_packed *p, int n) {
  for (int i = 0; p && i < n; i++)
    free(p[i].buf);
  free(p);
}

/* The GenerateRequest of each prompt under policy, packed. */
static load_packed *pack_requests(const load_cfg *c, const char *policy) {
  load_packed *p = calloc((size_t)c->n_prompts, sizeof *p);
  Ballast__V1__Sampling s = BALLAST__V1__SAMPLING__INIT;
  s.temperature_present_case = BALLAST__V1__SAMPLING__TEMPERATURE_PRESENT_TEMPERATURE;
  s.temperature = (float)c->temperature; /* 0 (greedy) unless --temperature */
  if (c->seed_given) {
    s.seed_present_case = BALLAST__V1__SAMPLING__SEED_PRESENT_SEED;
    s.seed = (uint64_t)c->seed;
  }
  for (int i = 0; p && i < c->n_prompts; i++) {
    Ballast__V1__GenerateRequest r = BALLAST__V1__GENERATE_REQUEST__INIT;
    r.n_messages = c->prompts[i].n, r.messages = c->prompts[i].msgs;
    r.sampling = &s;
    r.max_tokens = (int32_t)c->max_tokens;
    r.policy = (char *)policy;
    r.ignore_eos = c->ignore_eos;
    if (!(p[i].buf = ccli_pack(&r.base, &p[i].n))) {
      free_packed(p, c->n_prompts);
      return NULL;
    }
  }
  if (!p) fprintf(stderr, "ballast load: out of memory\n");
  return p;
}

/* Warm up, then measure one (policy, concurrency) run on the first conc
 * workers. *sent counts every request sent, warmup included. */
static bool run_measure(const load_cfg *c, const char *policy, int conc, load_worker *ws,
                        load_run *run, long long *sent) {
  *run = (load_run){.policy = policy, .conc = conc};
  load_packed *p = pack_requests(c, policy);
  load_req *rq = calloc((size_t)c->requests, sizeof *rq);
  bool ok = p && rq;
  if (!ok && p) fprintf(stderr, "ballast load: out of memory\n");
  load_phase warm = {.reqs = p, .n_reqs = c->n_prompts, .n = (int)c->warmup, .timeout = c->timeout};
  if (ok && c->warmup > 0) {
    ok = run_phase(ws, conc < c->warmup ? conc : (int)c->warmup, &warm);
    *sent += atomic_load(&warm.sent);
  }
  for (int k = 0; k < conc; k++)
    ws[k].n_itl = 0, ws[k].has_err = false; /* the warmup's are not the run's */
  load_phase ph = {
      .reqs = p, .n_reqs = c->n_prompts, .n = (int)c->requests, .out = rq, .timeout = c->timeout};
  if (ok && !g_interrupted) {
    ok = run_phase(ws, conc, &ph);
    *sent += atomic_load(&ph.sent);
  }
  if (ok) ok = run_aggregate(run, rq, (int)c->requests, ws, conc);
  run->interrupted = g_interrupted != 0;
  free(rq);
  free_packed(p, c->n_prompts);
  return ok;
}

/* ---- output ---- */

static void jnum(FILE *f, double v) {
  if (v != v || v - v != 0)
    fputs("null", f);
  else
    fprintf(f, "%.9g", v);
}

static void jstr(FILE *f, const char *s) { cli_json_str(f, s ? s : "", s ? strlen(s) : 0); }

static void jdist(FILE *f, const char *name, const load_dist *d) {
  fprintf(f, ",\"%s\":", name);
  if (!d->n) {
    fputs("null", f);
    return;
  }
  fprintf(f, "{\"n\":%d,\"mean\":", d->n);
  jnum(f, d->mean);
  const char *k[] = {"min", "p50", "p90", "p99", "max"};
  double v[] = {d->min, d->p50, d->p90, d->p99, d->max};
  for (int i = 0; i < 5; i++) {
    fprintf(f, ",\"%s\":", k[i]);
    jnum(f, v[i]);
  }
  fputc('}', f);
}

static const char *status_key(int i) {
  return i < LOAD_N_STATUS ? gc_status_name(i) : "UNKNOWN_CODE";
}

/* "NAME":count pairs (json) or "NAME count" (text) of the nonzero counts. */
static void put_counts(FILE *f, const int *cnt, int n, const char *(*name)(int), bool json) {
  for (int i = 0, first = 1; i < n; i++) {
    if (!cnt[i]) continue;
    fputs(first ? "" : json ? "," : ", ", f);
    first = 0;
    if (json)
      fprintf(f, "\"%s\":%d", name(i), cnt[i]);
    else
      fprintf(f, "%s %d", name(i), cnt[i]);
  }
}

static const char *finish_key(int i) {
  return ccli_enum_name(&ballast__v1__finish_reason__descriptor, i);
}

static void json_run(FILE *f, const load_run *r) {
  fputs("{\"policy\":", f);
  jstr(f, r->policy);
  fprintf(f, ",\"concurrency\":%d,\"requests\":%d,\"ok\":%d,\"failed\":%d", r->conc, r->sent, r->ok,
          r->failed);
  fputs(",\"failed_by_status\":{", f);
  put_counts(f, r->by_status, LOAD_N_STATUS + 1, status_key, true);
  fputs("},\"finish_reasons\":{", f);
  put_counts(f, r->by_finish, LOAD_N_FINISH, finish_key, true);
  fputs("},\"first_error\":", f);
  if (r->first_error[0])
    jstr(f, r->first_error);
  else
    fputs("null", f);
  fprintf(f, ",\"interrupted\":%s,\"output_tokens\":%lld,\"wall_s\":",
          r->interrupted ? "true" : "false", r->tokens);
  jnum(f, r->wall_s);
  fputs(",\"requests_per_s\":", f);
  jnum(f, r->req_per_s);
  fputs(",\"output_tokens_per_s\":", f);
  jnum(f, r->tok_per_s);
  fputs(",\"stream_decode_tokens_per_s\":", f);
  jnum(f, r->stream_tok_per_s);
  jdist(f, "ttft_s", &r->ttft);
  jdist(f, "itl_s", &r->itl);
  jdist(f, "tpot_s", &r->tpot);
  jdist(f, "e2e_s", &r->e2e);
  fputc('}', f);
}

/* Output tokens/s of run over fp16's at its concurrency; NaN: none. */
static double speedup(const load_run *runs, int n, const load_run *run) {
  for (int i = 0; i < n; i++)
    if (runs[i].conc == run->conc && strcmp(runs[i].policy, "fp16") == 0)
      return runs[i].tok_per_s > 0 ? run->tok_per_s / runs[i].tok_per_s : NAN;
  return NAN;
}

static bool has_fp16(const load_run *runs, int n, int conc) {
  for (int i = 0; i < n; i++)
    if (runs[i].conc == conc && strcmp(runs[i].policy, "fp16") == 0) return true;
  return false;
}

/* The policy column's width: the longest name, at least "policy". */
static int policy_width(const load_cfg *c) {
  int w = 6;
  for (int i = 0; i < c->n_pol; i++)
    if ((int)strlen(c->pol[i]) > w) w = (int)strlen(c->pol[i]);
  return w;
}

static void text_header(const load_cfg *c, const Ballast__V1__ServerInfoResponse *info) {
  int pw = policy_width(c);
  printf("ballast load: %s (ballastd %s;", c->server, info->version);
  for (size_t i = 0; i < info->n_pools; i++)
    printf("%s %s %s", i ? "," : "", info->pools[i]->name, info->pools[i]->precision);
  printf("); %ld requests per run, warmup %ld, max_tokens %ld%s, ", c->requests, c->warmup,
         c->max_tokens, c->ignore_eos ? " (ignore_eos)" : "");
  if (c->temperature > 0)
    printf("temperature %g", c->temperature);
  else
    fputs("greedy", stdout);
  printf("; %d prompt%s (%s)\n\n", c->n_prompts, c->n_prompts == 1 ? "" : "s",
         c->prompts_path ? c->prompts_path : "--prompt");
  printf("%-*s %4s %5s %5s %8s %7s %9s %8s | %-28s | %-28s | %s\n", pw, "", "", "", "", "", "", "",
         "", "TTFT ms", "ITL ms", "E2E s");
  printf("%-*s %4s %5s %5s %8s %7s %9s %8s | %6s %6s %6s %7s | %6s %6s %6s %7s | %6s %6s %6s "
         "%7s\n",
         pw, "policy", "conc", "ok", "fail", "wall s", "req/s", "out tok/s", "tok/s/st", "mean",
         "p50", "p90", "p99", "mean", "p50", "p90", "p99", "mean", "p50", "p90", "p99");
  fflush(stdout);
}

static void text_run(const load_run *r, int pw) {
  const load_dist *d[3] = {&r->ttft, &r->itl, &r->e2e};
  double scale[3] = {1e3, 1e3, 1};
  printf("%-*s %4d %5d %5d %8.2f %7.2f %9.1f %8.1f", pw, r->policy, r->conc, r->ok, r->failed,
         r->wall_s, r->req_per_s, r->tok_per_s, r->stream_tok_per_s);
  for (int k = 0; k < 3; k++) {
    if (!d[k]->n) {
      printf(" | %6s %6s %6s %7s", "-", "-", "-", "-");
      continue;
    }
    const char *fmt = k < 2 ? " | %6.1f %6.1f %6.1f %7.1f" : " | %6.2f %6.2f %6.2f %7.2f";
    printf(fmt, d[k]->mean * scale[k], d[k]->p50 * scale[k], d[k]->p90 * scale[k],
           d[k]->p99 * scale[k]);
  }
  putchar('\n');
  fflush(stdout);
}

/* After the table: each run's failures and unusual finishes, a line each. */
static void text_notes(const load_run *runs, int n) {
  for (int i = 0; i < n; i++) {
    const load_run *r = &runs[i];
    bool unusual = r->failed || r->interrupted;
    for (int k = 0; k < LOAD_N_FINISH; k++)
      if (r->by_finish[k] && k != BALLAST__V1__FINISH_REASON__STOP &&
          k != BALLAST__V1__FINISH_REASON__LENGTH)
        unusual = true;
    if (!unusual) continue;
    printf("%s at concurrency %d:%s", r->policy, r->conc, r->interrupted ? " interrupted;" : "");
    if (r->failed) {
      printf(" %d failed (", r->failed);
      put_counts(stdout, r->by_status, LOAD_N_STATUS + 1, status_key, false);
      fputs(");", stdout);
    }
    int finals = 0;
    for (int k = 0; k < LOAD_N_FINISH; k++)
      finals += r->by_finish[k];
    fputs(finals ? " finish: " : " finish: none (no Final)", stdout);
    put_counts(stdout, r->by_finish, LOAD_N_FINISH, finish_key, false);
    if (r->first_error[0]) printf("; first error: %s", r->first_error);
    putchar('\n');
  }
}

static void text_speedups(const load_cfg *c, const load_run *runs, int n) {
  for (int ci = 0; ci < c->n_conc; ci++) {
    if (!has_fp16(runs, n, c->conc[ci])) continue;
    printf("speed-up over fp16 (output tok/s) at concurrency %d:", c->conc[ci]);
    for (int i = 0; i < n; i++) {
      if (runs[i].conc != c->conc[ci]) continue;
      double s = speedup(runs, n, &runs[i]);
      if (s == s)
        printf(" %s %.2fx", runs[i].policy, s);
      else
        printf(" %s -", runs[i].policy);
    }
    putchar('\n');
  }
}

static void json_speedups(FILE *f, const load_cfg *c, const load_run *runs, int n) {
  fputs(",\"speedups\":[", f);
  int emitted = 0;
  for (int ci = 0; ci < c->n_conc; ci++) {
    if (!has_fp16(runs, n, c->conc[ci])) continue;
    fprintf(f, "%s{\"concurrency\":%d,\"vs_fp16\":{", emitted++ ? "," : "", c->conc[ci]);
    for (int i = 0, first = 1; i < n; i++) {
      if (runs[i].conc != c->conc[ci]) continue;
      fputs(first ? "" : ",", f), first = 0;
      jstr(f, runs[i].policy);
      fputc(':', f);
      jnum(f, speedup(runs, n, &runs[i]));
    }
    fputs("}}", f);
  }
  fputc(']', f);
}

/* ---- the daemon's own view ---- */

static const char *pool_precision(const Ballast__V1__ServerInfoResponse *info, const char *pool) {
  for (size_t i = 0; info && i < info->n_pools; i++)
    if (strcmp(info->pools[i]->name, pool) == 0) return info->pools[i]->precision;
  return "?";
}

static const Ballast__V1__PoolStats *pool_stats(const Ballast__V1__GetStatsResponse *s,
                                                const char *name) {
  for (size_t i = 0; s && i < s->n_pools; i++)
    if (strcmp(s->pools[i]->name, name) == 0) return s->pools[i];
  return NULL;
}

static double ratio(double a, double b) { return a > 0 && b > 0 ? a / b : NAN; }

static void text_rate(double v) {
  if (v > 0)
    printf("%.1f", v);
  else
    putchar('-');
}

static void text_daemon(const Ballast__V1__GetStatsResponse *s,
                        const Ballast__V1__ServerInfoResponse *info) {
  if (!s) {
    puts("daemon: GetStats failed (see stderr)");
    return;
  }
  puts("daemon's view (GetStats: measured decode tok/s, live/calibrated):");
  for (size_t i = 0; i < s->n_pools; i++) {
    const Ballast__V1__PoolStats *p = s->pools[i];
    printf("  %s %s: batch 1 ", p->name, pool_precision(info, p->name));
    text_rate(p->decode_tps_b1);
    putchar('/');
    text_rate(p->calibrated_tps_b1);
    fputs(", batch 8 ", stdout);
    text_rate(p->decode_tps_b8);
    putchar('/');
    text_rate(p->calibrated_tps_b8);
    putchar('\n');
  }
  const Ballast__V1__PoolStats *e = pool_stats(s, "executor"), *pl = pool_stats(s, "planner");
  if (!e || !pl) return;
  double r[4] = {ratio(e->decode_tps_b1, pl->decode_tps_b1),
                 ratio(e->calibrated_tps_b1, pl->calibrated_tps_b1),
                 ratio(e->decode_tps_b8, pl->decode_tps_b8),
                 ratio(e->calibrated_tps_b8, pl->calibrated_tps_b8)};
  fputs("  executor / planner:", stdout);
  for (int k = 0; k < 4; k++) {
    fputs(k == 0 ? " batch 1 " : k == 2 ? ", batch 8 " : "/", stdout);
    if (r[k] == r[k])
      printf("%.2fx", r[k]);
    else
      putchar('-');
  }
  putchar('\n');
}

static void json_daemon(FILE *f, const Ballast__V1__GetStatsResponse *s,
                        const Ballast__V1__ServerInfoResponse *info) {
  fputs(",\"daemon\":", f);
  if (!s) {
    fputs("null", f);
    return;
  }
  fprintf(f, "{\"requests\":%llu,\"pools\":[", (unsigned long long)s->requests);
  for (size_t i = 0; i < s->n_pools; i++) {
    const Ballast__V1__PoolStats *p = s->pools[i];
    fputs(i ? ",{\"name\":" : "{\"name\":", f);
    jstr(f, p->name);
    fputs(",\"precision\":", f);
    jstr(f, pool_precision(info, p->name));
    const char *k[] = {"decode_tps_b1", "decode_tps_b8", "calibrated_tps_b1", "calibrated_tps_b8"};
    double v[] = {p->decode_tps_b1, p->decode_tps_b8, p->calibrated_tps_b1, p->calibrated_tps_b8};
    for (int j = 0; j < 4; j++) {
      fprintf(f, ",\"%s\":", k[j]);
      jnum(f, v[j]);
    }
    fputc('}', f);
  }
  fputs("]}", f);
}

static void json_doc(const load_cfg *c, const Ballast__V1__ServerInfoResponse *info,
                     const load_run *runs, int n, long long sent,
                     const Ballast__V1__GetStatsResponse *stats) {
  FILE *f = stdout;
  fputs("{\"config\":{\"server\":", f);
  jstr(f, c->server);
  fprintf(f, ",\"requests\":%ld,\"warmup\":%ld,\"concurrency\":[", c->requests, c->warmup);
  for (int i = 0; i < c->n_conc; i++)
    fprintf(f, "%s%d", i ? "," : "", c->conc[i]);
  fputs("],\"policies\":[", f);
  for (int i = 0; i < c->n_pol; i++)
    fputs(i ? "," : "", f), jstr(f, c->pol[i]);
  fprintf(f, "],\"max_tokens\":%ld,\"ignore_eos\":%s,\"temperature\":", c->max_tokens,
          c->ignore_eos ? "true" : "false");
  jnum(f, c->temperature);
  fputs(",\"seed\":", f);
  if (c->seed_given)
    fprintf(f, "%ld", c->seed);
  else
    fputs("null", f);
  fputs(",\"timeout_s\":", f);
  jnum(f, c->timeout);
  fprintf(f, ",\"prompts\":%d,\"prompts_file\":", c->n_prompts);
  if (c->prompts_path)
    jstr(f, c->prompts_path);
  else
    fputs("null", f);
  fputs("},\"server\":{\"version\":", f);
  jstr(f, info->version);
  fputs(",\"default_policy\":", f);
  jstr(f, info->default_policy);
  fputs(",\"pools\":[", f);
  for (size_t i = 0; i < info->n_pools; i++) {
    const Ballast__V1__PoolInfo *p = info->pools[i];
    fputs(i ? ",{\"name\":" : "{\"name\":", f), jstr(f, p->name);
    fputs(",\"model\":", f), jstr(f, p->model);
    fputs(",\"precision\":", f), jstr(f, p->precision);
    fputs(",\"kv_format\":", f), jstr(f, p->kv_format);
    fputs(",\"device\":", f), jstr(f, p->device);
    fputc('}', f);
  }
  fprintf(f, "]},\"requests_sent\":%lld,\"runs\":[", sent);
  for (int i = 0; i < n; i++) {
    if (i) fputc(',', f);
    json_run(f, &runs[i]);
  }
  fputc(']', f);
  json_speedups(f, c, runs, n);
  json_daemon(f, stats, info);
  fputs("}\n", f);
}

/* ---- the command ---- */

/* Every run, concurrency-major (the policies of one concurrency back to back,
 * so a drifting machine skews their ratio least). */
static int run_all(const load_cfg *c, gc_client *main_c,
                   const Ballast__V1__ServerInfoResponse *info) {
  int max_conc = 0, n_runs = 0, rc = 1;
  for (int i = 0; i < c->n_conc; i++)
    if (c->conc[i] > max_conc) max_conc = c->conc[i];
  load_worker *ws = calloc((size_t)max_conc, sizeof *ws);
  load_run *runs = calloc((size_t)(c->n_conc * c->n_pol), sizeof *runs);
  long long sent = 0;
  int nw = 0;
  if (!ws || !runs) goto done;
  for (; nw < max_conc; nw++)
    if (ccli_connect("load", c->flags, c->n_flags, &ws[nw].c)) goto done;
  if (!c->json) text_header(c, info);
  for (int ci = 0; ci < c->n_conc && !g_interrupted; ci++)
    for (int pi = 0; pi < c->n_pol && !g_interrupted; pi++) {
      if (!run_measure(c, c->pol[pi], c->conc[ci], ws, &runs[n_runs], &sent)) goto done;
      if (!c->json) text_run(&runs[n_runs], policy_width(c));
      n_runs++;
    }
  Ballast__V1__GetStatsRequest req = BALLAST__V1__GET_STATS_REQUEST__INIT;
  gc_call_opts o = {.timeout_s = CCLI_UNARY_TIMEOUT_S};
  gc_status st;
  ProtobufCMessage *m = ccli_unary(main_c, "/ballast.v1.Ballast/GetStats", &req.base,
                                   &ballast__v1__get_stats_response__descriptor, &o, &st);
  if (!m) ccli_call_failed("load: GetStats", &st);
  const Ballast__V1__GetStatsResponse *stats = (const Ballast__V1__GetStatsResponse *)m;
  if (c->json) {
    json_doc(c, info, runs, n_runs, sent, stats);
  } else {
    putchar('\n');
    text_notes(runs, n_runs);
    text_speedups(c, runs, n_runs);
    text_daemon(stats, info);
    printf("requests sent: %lld (warmup included)\n", sent);
  }
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  rc = g_interrupted ? 130 : 0;
done:
  for (int k = 0; k < nw; k++) {
    gc_close(ws[k].c);
    free(ws[k].itl);
  }
  free(ws);
  free(runs);
  return rc;
}

int cmd_load(int argc, char **argv) {
  cli_flag f[] = {CCLI_FLAGS,
                  {"--prompt", 1, NULL},
                  {"--prompts", 1, NULL},
                  {"--requests", 1, NULL},
                  {"--concurrency", 1, NULL},
                  {"--policy", 1, NULL},
                  {"--max-tokens", 1, NULL},
                  {"--ignore-eos", 0, NULL},
                  {"--temperature", 1, NULL},
                  {"--seed", 1, NULL},
                  {"--warmup", 1, NULL},
                  {"--json", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("load", argc, argv, f, nf)) return fputs(usage, stderr), 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  load_cfg c = {0};
  int rc = parse_cfg(f, nf, &c);
  if (rc) {
    fputs(usage, stderr);
    free(c.pol_buf);
    return rc;
  }
  if (c.prompts_path) {
    rc = read_prompts(c.prompts_path, &c.prompts, &c.n_prompts);
  } else {
    const char *text = cli_get(f, nf, "--prompt");
    c.prompts = calloc(1, sizeof *c.prompts), c.n_prompts = 1;
    if (!c.prompts || !prompt_alloc(c.prompts, 1) ||
        !prompt_add(c.prompts, "user", text ? text : LOAD_DEFAULT_PROMPT)) {
      fprintf(stderr, "ballast load: out of memory\n");
      rc = 1;
    }
  }
  gc_client *mc = NULL;
  if (!rc) rc = ccli_connect("load", f, nf, &mc);
  ProtobufCMessage *info = NULL;
  if (!rc) {
    /* One unary call first: an unreachable server fails here, at once. */
    Ballast__V1__ServerInfoRequest req = BALLAST__V1__SERVER_INFO_REQUEST__INIT;
    gc_call_opts o = {.timeout_s =
                          c.timeout < CCLI_UNARY_TIMEOUT_S ? c.timeout : CCLI_UNARY_TIMEOUT_S};
    gc_status st;
    info = ccli_unary(mc, "/ballast.v1.Ballast/ServerInfo", &req.base,
                      &ballast__v1__server_info_response__descriptor, &o, &st);
    if (!info) {
      fprintf(stderr, "ballast load: cannot reach ballastd at %s: %s: %s\n", c.server,
              gc_status_name(st.code), st.msg);
      rc = 1;
    }
  }
  if (!rc) {
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    rc = run_all(&c, mc, (const Ballast__V1__ServerInfoResponse *)info);
    sigaction(SIGINT, &old, NULL);
  }
  if (info) protobuf_c_message_free_unpacked(info, NULL);
  gc_close(mc);
  free_prompts(c.prompts, c.n_prompts);
  free(c.pol_buf);
  return rc;
}
