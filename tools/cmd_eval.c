/* `ballast eval`: a prompt set through the router under each policy, on an
 * executor (2-bit) and a planner (fp16) pool in this process, and a table
 * per policy: accuracy, loop rate, commits and fallbacks, generated tokens
 * (mean, median) and the estimated speed-up over fp16 at batch 1 and 8.
 *
 * The speed-up is the paper's Table 4 for the whole set: the time of the
 * fp16 policy's runs over the time of the policy's runs, each time being
 * tokens over the pool's decode tokens/s, measured once at start-up
 * (calibration at batch 1 and 8) so every policy is priced alike. Without
 * fp16 among the policies, the mean of the per-request estimates is shown
 * instead (marked ~). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "cmds.h"
#include "gen_config.h"
#include "sched_router.h"

static const char *usage =
    "usage: ballast eval --executor PATH --planner PATH --prompts FILE.jsonl\n"
    "         [--executor-precision w2] [--planner-precision fp16] [--limit N]\n"
    "         [--policies direct,rescue,plan,plan+rescue,fp16,auto] [--task math]\n"
    "         [--max-tokens 512] [--concurrency 8] [--fallback restart|resume]\n"
    "         [--window 1024] [--ngram 20] [--min-count 4] [--plan-tokens 256]\n"
    "         [--temperature T] [--top-p P] [--top-k K] [--seed S] [--no-think]\n"
    "         [--calibrate-tokens 64] [--kv-blocks N] [--device cpu] [--threads N]\n"
    "         [--tokenizer PATH] [--jsonl FILE]\n"
    "FILE.jsonl: one {\"question\": ..., \"ref\": ...} per line (ref: the reference\n"
    "answer; \"answer\" with a GSM8K \"#### X\" or a \\boxed{X} also works). Each\n"
    "question is asked as a user message followed by \"Please reason step by step,\n"
    "and put your final answer within \\boxed{}.\" Sampling defaults to the\n"
    "executor's (generation_config.json, else greedy). --jsonl writes one line\n"
    "per request with its trace. --tokenizer (tokenizer.json, a folder or a .gguf)\n"
    "serves both models, e.g. a GPTQ folder quantized from a GGUF.\n";

typedef struct item {
  char *question, *ref;
} item;

typedef struct result {
  sched_rfinish fin;
  bool correct, answered;
  sched_trace tr;
} result;

typedef struct evstate {
  pthread_mutex_t lock;
  pthread_cond_t done;
  int32_t in_flight;
  result *res;
  sched_task task;
  item *items;
  FILE *jsonl;
  const char *policy;
} evstate;

typedef struct evreq {
  evstate *st;
  int32_t idx;
} evreq;

/* The reference answer of a dataset line. */
static char *reference(const cJSON *o) {
  const cJSON *ref = cJSON_GetObjectItemCaseSensitive(o, "ref");
  if (cJSON_IsString(ref)) return strdup(ref->valuestring);
  const cJSON *ans = cJSON_GetObjectItemCaseSensitive(o, "answer");
  if (!cJSON_IsString(ans)) return NULL;
  const char *s = ans->valuestring, *h = strstr(s, "####");
  if (h) {
    h += 4;
    while (*h == ' ')
      h++;
    return strdup(h);
  }
  sched_answer a;
  bl_err err = {0};
  if (sched_answer_init(&a, SCHED_TASK_MATH, NULL, false, &err)) return NULL;
  sched_answer_feed(&a, 0, s, strlen(s));
  sched_answer_finish(&a);
  size_t len;
  const char *v = sched_answer_current(&a, &len, NULL);
  char *out = v ? strndup(v, len) : NULL;
  sched_answer_free(&a);
  return out;
}

static bl_status load_items(const char *path, int32_t limit, item **out, int32_t *n, bl_err *err) {
  FILE *f = fopen(path, "r");
  if (!f) return bl_fail(err, BL_EIO, "%s: cannot open", path);
  item *items = NULL;
  int32_t cnt = 0, cap = 0, lineno = 0;
  char *line = NULL;
  size_t lcap = 0;
  bl_status st = BL_OK;
  while (!st && (limit <= 0 || cnt < limit) && getline(&line, &lcap, f) > 0) {
    lineno++;
    if (line[strspn(line, " \t\r\n")] == 0) continue;
    cJSON *o = cJSON_Parse(line);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question");
    char *ref = o ? reference(o) : NULL;
    if (!o || !cJSON_IsString(q) || !ref) {
      st = bl_fail(err, BL_EFORMAT, "%s:%d: expected {\"question\": string, \"ref\" or \"answer\"}",
                   path, lineno);
    } else {
      if (cnt == cap) {
        cap = cap ? 2 * cap : 64;
        items = realloc(items, (size_t)cap * sizeof *items);
      }
      items[cnt].question = strdup(q->valuestring);
      items[cnt++].ref = ref;
      ref = NULL;
    }
    free(ref);
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
  if (!st && cnt == 0) st = bl_fail(err, BL_EFORMAT, "%s: no prompts", path);
  *out = items;
  *n = cnt;
  return st;
}

static void print_trace_json(FILE *f, const char *policy, int32_t idx, const result *r,
                             const char *graded) {
  const sched_trace *t = &r->tr;
  fprintf(f,
          "{\"policy\":\"%s\",\"ran\":\"%s\",\"prompt\":%d,\"finish\":\"%s\",\"correct\":%s,"
          "\"graded\":",
          policy, t->ran, idx, sched_rfinish_name(r->fin), r->correct ? "true" : "false");
  if (graded)
    cli_json_str(f, graded, strlen(graded));
  else
    fputs("null", f);
  fprintf(f,
          ",\"exec_tokens\":%d,\"plan_tokens\":%d,\"fallback_tokens\":%d,\"fp16_tokens\":%d,"
          "\"reasoning_tokens\":%d,\"hit_budget\":%s,\"think_closed\":%s,\"first_answer_at\":%d,"
          "\"loop\":%s,\"loop_onset\":%d,\"failure\":\"%s\",\"fell_back\":%s,\"total_s\":%.3f,"
          "\"speedup_b1\":%.4f,\"speedup_b8\":%.4f}\n",
          t->exec_tokens, t->plan_tokens, t->fallback_tokens, t->fp16_tokens, t->reasoning_tokens,
          t->hit_budget ? "true" : "false", t->think_closed ? "true" : "false", t->first_answer_at,
          t->loop ? "true" : "false", t->loop_onset, sched_failure_name(t->failure),
          t->fell_back ? "true" : "false", t->total_s, t->speedup[0], t->speedup[1]);
}

static void on_ev(const sched_revent *ev, void *user) {
  if (ev->kind != SCHED_REV_FINAL) return;
  evreq *q = user;
  evstate *s = q->st;
  result *r = &s->res[q->idx];
  r->fin = ev->finish;
  r->tr = *ev->trace;
  r->answered = ev->graded != NULL;
  r->correct = ev->graded && sched_answer_match(s->task, ev->graded, s->items[q->idx].ref);
  pthread_mutex_lock(&s->lock);
  if (s->jsonl) {
    print_trace_json(s->jsonl, s->policy, q->idx, r, ev->graded);
    fflush(s->jsonl); /* a long run can be followed (and cut short) line by line */
  }
  s->in_flight--;
  pthread_cond_signal(&s->done);
  pthread_mutex_unlock(&s->lock);
  free(q);
}

static int cmp_int(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static double median(int32_t *v, int32_t n) {
  qsort(v, (size_t)n, sizeof *v, cmp_int);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct row {
  char policy[SCHED_POLICY_NAME_MAX];
  result *res;
  double wall_s;
} row;

/* Time of a run on the calibrated figures: 2-bit tokens at the executor's
 * tokens/s, fp16 tokens at the planner's. */
static double priced(const sched_trace *t, double e, double p) {
  return t->exec_tokens / e + (t->plan_tokens + t->fallback_tokens + t->fp16_tokens) / p;
}

static void print_table(const row *rows, int n_rows, int32_t n, const double tps[2][2]) {
  const row *fp16 = NULL;
  for (int i = 0; i < n_rows; i++)
    if (!strcmp(rows[i].policy, "fp16")) fp16 = &rows[i];
  printf("\n| policy | n | accuracy | loop rate | commits | fallbacks | hit budget | generated "
         "tokens mean / median | reasoning tokens mean / median | speedup b1 | speedup b8 | wall s "
         "|\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  int32_t *gen = malloc((size_t)n * sizeof *gen), *rl = malloc((size_t)n * sizeof *rl);
  for (int i = 0; i < n_rows; i++) {
    const result *r = rows[i].res;
    int32_t correct = 0, loops = 0, commits = 0, fallbacks = 0, budget = 0;
    double gsum = 0, rsum = 0, t_m[2] = {0, 0}, t_f[2] = {0, 0}, est[2] = {0, 0};
    for (int32_t k = 0; k < n; k++) {
      const sched_trace *t = &r[k].tr;
      correct += r[k].correct;
      loops += t->loop;
      commits += r[k].fin == SCHED_R_LOOP_COMMIT;
      fallbacks += t->fell_back;
      budget += t->hit_budget;
      gen[k] = t->exec_tokens + t->plan_tokens + t->fallback_tokens + t->fp16_tokens;
      rl[k] = t->reasoning_tokens;
      gsum += gen[k];
      rsum += rl[k];
      for (int b = 0; b < 2; b++) {
        t_m[b] += priced(t, tps[0][b], tps[1][b]);
        if (fp16) t_f[b] += priced(&fp16->res[k].tr, tps[0][b], tps[1][b]);
        est[b] += t->speedup[b] / n;
      }
    }
    printf("| %s | %d | %.1f%% | %.1f%% | %d | %d | %.1f%% | %.0f / %.0f | %.0f / %.0f |",
           rows[i].policy, n, 100.0 * correct / n, 100.0 * loops / n, commits, fallbacks,
           100.0 * budget / n, gsum / n, median(gen, n), rsum / n, median(rl, n));
    for (int b = 0; b < 2; b++) {
      if (fp16 && t_m[b] > 0)
        printf(" %.2fx |", t_f[b] / t_m[b]);
      else
        printf(" ~%.2fx |", est[b]);
    }
    printf(" %.1f |\n", rows[i].wall_s);
  }
  free(gen);
  free(rl);
}

static bl_status load_pool(const char *path, const char *prec_s, const char *name, const char *dev,
                           const char *threads, const char *tok, int32_t blocks, bk_backend **be,
                           model **m, sched_pool **p, bl_err *err) {
  model_prec prec;
  if (model_prec_parse(prec_s, &prec))
    return bl_fail(err, BL_EINVAL, "--%s-precision %s: expected fp16, w4 or w2", name, prec_s);
  bl_status st = cli_backend(dev, threads, be, err);
  model_load_opts o = {.precision = prec, .tokenizer_path = tok};
  if (!st) st = model_load(path, &o, *be, m, err);
  sched_pool_cfg c = {.name = name,
                      .m = *m,
                      .n_blocks = blocks,
                      .max_num_seqs = 32,
                      .max_batched_tokens = 1024,
                      .prefix_cache = true};
  if (!st) st = sched_pool_create(&c, p, err);
  if (!st) st = sched_pool_start(*p, err);
  return st;
}

static const char *opt(const cli_flag *f, int nf, const char *name, const char *dflt) {
  const char *v = cli_get(f, nf, name);
  return v ? v : dflt;
}

int cmd_eval(int argc, char **argv) {
  cli_flag f[] = {{"--executor", 1, NULL},
                  {"--planner", 1, NULL},
                  {"--prompts", 1, NULL},
                  {"--executor-precision", 1, NULL},
                  {"--planner-precision", 1, NULL},
                  {"--limit", 1, NULL},
                  {"--policies", 1, NULL},
                  {"--task", 1, NULL},
                  {"--max-tokens", 1, NULL},
                  {"--concurrency", 1, NULL},
                  {"--fallback", 1, NULL},
                  {"--window", 1, NULL},
                  {"--ngram", 1, NULL},
                  {"--min-count", 1, NULL},
                  {"--plan-tokens", 1, NULL},
                  {"--temperature", 1, NULL},
                  {"--top-p", 1, NULL},
                  {"--top-k", 1, NULL},
                  {"--seed", 1, NULL},
                  {"--no-think", 0, NULL},
                  {"--calibrate-tokens", 1, NULL},
                  {"--kv-blocks", 1, NULL},
                  {"--device", 1, NULL},
                  {"--threads", 1, NULL},
                  {"--jsonl", 1, NULL},
                  {"--tokenizer", 1, NULL}};
  int nf = (int)(sizeof f / sizeof f[0]);
  if (!cli_parse("eval", argc, argv, f, nf)) return fputs(usage, stderr), 2;
  const char *ex = cli_get(f, nf, "--executor"), *pl = cli_get(f, nf, "--planner"),
             *prompts = cli_get(f, nf, "--prompts");
  if (!ex || !pl || !prompts) return fputs(usage, stderr), 2;
  long limit = 0, max_tokens = 512, conc = 8, window = 0, ngram = 0, min_count = 0, plan = 0,
       cal = 64, blocks = 4096, top_k = -1, seed = 0;
  double temp = -1, top_p = -1;
  sched_task task = SCHED_TASK_MATH;
  const char *v;
  bool ok = true;
#define INT_FLAG(name, var, lo, hi)                                                                \
  if ((v = cli_get(f, nf, name)) && !cli_int(v, lo, hi, &var)) ok = false
  INT_FLAG("--limit", limit, 0, 1000000);
  INT_FLAG("--max-tokens", max_tokens, 1, 1 << 20);
  INT_FLAG("--concurrency", conc, 1, 4096);
  INT_FLAG("--window", window, 1, 1 << 20);
  INT_FLAG("--ngram", ngram, 1, 1 << 20);
  INT_FLAG("--min-count", min_count, 2, 1 << 20);
  INT_FLAG("--plan-tokens", plan, 1, 1 << 20);
  INT_FLAG("--calibrate-tokens", cal, 1, 1 << 16);
  INT_FLAG("--kv-blocks", blocks, 16, 1 << 24);
  INT_FLAG("--top-k", top_k, 0, 1 << 20);
  INT_FLAG("--seed", seed, 0, 1L << 62);
#undef INT_FLAG
  if ((v = cli_get(f, nf, "--temperature")) && !cli_float(v, 0, 100, &temp)) ok = false;
  if ((v = cli_get(f, nf, "--top-p")) && !cli_float(v, 0, 1, &top_p)) ok = false;
  if ((v = cli_get(f, nf, "--task")) && !sched_task_parse(v, &task)) ok = false;
  sched_policy_override ov = SCHED_POLICY_OVERRIDE_NONE;
  ov.window = (int32_t)window, ov.ngram = (int32_t)ngram, ov.min_count = (int32_t)min_count;
  ov.plan_max_tokens = (int32_t)plan;
  if ((v = cli_get(f, nf, "--fallback"))) {
    if (!strcmp(v, "restart"))
      ov.fallback = SCHED_FALLBACK_RESTART;
    else if (!strcmp(v, "resume"))
      ov.fallback = SCHED_FALLBACK_RESUME;
    else
      ok = false;
  }
  if (!ok) {
    fprintf(stderr, "ballast eval: a flag value is malformed or out of range\n%s", usage);
    return 2;
  }
  char plist[256];
  snprintf(plist, sizeof plist, "%s",
           cli_get(f, nf, "--policies") ? cli_get(f, nf, "--policies")
                                        : "direct,rescue,plan,plan+rescue,fp16,auto");
  bl_err err = {0};
  item *items = NULL;
  int32_t n = 0;
  bk_backend *be[2] = {NULL, NULL};
  model *m[2] = {NULL, NULL};
  sched_pool *p[2] = {NULL, NULL};
  sched_router *r = NULL;
  row rows[16];
  int n_rows = 0;
  int rc = 1;
  const char *dev = cli_get(f, nf, "--device"), *thr = cli_get(f, nf, "--threads");
  bl_status st = load_items(prompts, (int32_t)limit, &items, &n, &err);
  if (!st)
    st = load_pool(ex, opt(f, nf, "--executor-precision", "w2"), "executor", dev, thr,
                   cli_get(f, nf, "--tokenizer"), (int32_t)blocks, &be[0], &m[0], &p[0], &err);
  if (!st)
    st = load_pool(pl, opt(f, nf, "--planner-precision", "fp16"), "planner", dev, thr,
                   cli_get(f, nf, "--tokenizer"), (int32_t)blocks, &be[1], &m[1], &p[1], &err);
  chat_template tmpl = CHAT_UNKNOWN;
  if (!st) {
    tmpl = chat_template_detect(tok_chat_template(m[0]->tok),
                                m[0]->cfg.arch == MODEL_ARCH_QWEN3 ? "qwen3" : "llama");
    if (tmpl == CHAT_UNKNOWN) st = bl_fail(&err, BL_EUNSUPPORTED, "%s: no known chat template", ex);
  }
  sched_router_cfg rc_cfg = {.executor = p[0], .planner = p[1], .chat = tmpl};
  if (!st) st = sched_router_create(&rc_cfg, &r, &err);
  double tps[2][2] = {{0}};
  if (!st) {
    fprintf(stderr, "ballast eval: calibrating decode tokens/s (%ld tokens at batch 1 and 8)\n",
            cal);
    st = sched_router_calibrate(r, (int32_t)cal, &err);
    for (int w = 0; !st && w < 2; w++)
      for (int b = 0; b < 2; b++)
        tps[w][b] = sched_router_calibrated(r, w, b ? 8 : 1);
    if (!st && (tps[0][0] <= 0 || tps[0][1] <= 0 || tps[1][0] <= 0 || tps[1][1] <= 0))
      st = bl_fail(&err, BL_EINVAL,
                   "calibration measured no decode throughput (too few KV "
                   "blocks for batch 8?)");
  }
  sampler_params sp = {0};
  if (!st) st = model_sampling_defaults(ex, m[0]->cfg.arch, &sp, NULL, &err);
  if (!st) {
    if (temp >= 0) sp.temperature = (float)temp;
    if (top_p >= 0) sp.top_p = (float)top_p;
    if (top_k >= 0) sp.top_k = (int32_t)top_k;
    sp.seed = (uint64_t)seed;
  }
  FILE *jsonl = NULL;
  if (!st && (v = cli_get(f, nf, "--jsonl")) && !(jsonl = fopen(v, "w")))
    st = bl_fail(&err, BL_EIO, "%s: cannot write", v);
  if (!st) {
    printf("executor %s (%s), planner %s (%s); %d prompts from %s; max_tokens %ld, concurrency "
           "%ld, temperature %g, top_p %g, top_k %d, seed %ld\n",
           ex, model_prec_name(m[0]->prec), pl, model_prec_name(m[1]->prec), n, prompts, max_tokens,
           conc, (double)sp.temperature, (double)sp.top_p, sp.top_k, seed);
    printf("calibrated decode tok/s: executor %.1f (b1) %.1f (b8), planner %.1f (b1) %.1f (b8)\n",
           tps[0][0], tps[0][1], tps[1][0], tps[1][1]);
    fflush(stdout);
  }
  static const char instr[] = "\nPlease reason step by step, and put your final answer within "
                              "\\boxed{}.";
  for (char *save = NULL, *pol = strtok_r(plist, ",", &save); !st && pol && n_rows < 16;
       pol = strtok_r(NULL, ",", &save)) {
    evstate s = {.res = calloc((size_t)n, sizeof(result)),
                 .task = task,
                 .items = items,
                 .jsonl = jsonl,
                 .policy = pol};
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.done, NULL);
    double t0 = cli_now();
    for (int32_t i = 0; !st && i < n; i++) {
      pthread_mutex_lock(&s.lock);
      while (s.in_flight >= conc)
        pthread_cond_wait(&s.done, &s.lock);
      s.in_flight++;
      pthread_mutex_unlock(&s.lock);
      size_t ql = strlen(items[i].question);
      char *content = malloc(ql + sizeof instr);
      memcpy(content, items[i].question, ql);
      memcpy(content + ql, instr, sizeof instr);
      chat_message msg = {.role = CHAT_USER, .content = content, .content_len = strlen(content)};
      evreq *q = malloc(sizeof *q);
      *q = (evreq){.st = &s, .idx = i};
      sched_rreq rq = {.id = (uint64_t)i,
                       .messages = &msg,
                       .n_messages = 1,
                       .enable_thinking = !cli_get(f, nf, "--no-think"),
                       .max_tokens = (int32_t)max_tokens,
                       .sampling = sp,
                       .policy = pol,
                       .overrides = ov,
                       .task = task,
                       .task_class = "eval",
                       .on_event = on_ev,
                       .user = q};
      st = sched_router_submit(r, &rq, &err);
      free(content);
      if (st) {
        free(q);
        pthread_mutex_lock(&s.lock);
        s.in_flight--;
        pthread_mutex_unlock(&s.lock);
      }
    }
    pthread_mutex_lock(&s.lock);
    while (s.in_flight > 0)
      pthread_cond_wait(&s.done, &s.lock);
    pthread_mutex_unlock(&s.lock);
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.done);
    snprintf(rows[n_rows].policy, sizeof rows[n_rows].policy, "%s", pol);
    rows[n_rows].res = s.res;
    rows[n_rows++].wall_s = cli_now() - t0;
    fprintf(stderr, "ballast eval: %s done in %.1f s\n", pol, cli_now() - t0);
  }
  if (!st) {
    print_table(rows, n_rows, n, tps);
    rc = 0;
  } else {
    fprintf(stderr, "ballast eval: %s\n", err.msg);
  }
  if (jsonl) fclose(jsonl);
  for (int i = 0; i < n_rows; i++)
    free(rows[i].res);
  for (int w = 0; w < 2; w++)
    if (p[w]) sched_pool_stop(p[w]);
  sched_router_destroy(r);
  for (int w = 0; w < 2; w++) {
    sched_pool_destroy(p[w]);
    model_free(m[w]);
    bk_destroy(be[w]);
  }
  for (int32_t i = 0; i < n; i++)
    free(items[i].question), free(items[i].ref);
  free(items);
  return rc;
}
