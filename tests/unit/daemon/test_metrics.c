/* The daemon's metrics (daemon/bd_metrics.c): the text buffer, counters and
 * histogram buckets, label escaping, the page with fake pools and no router,
 * with a real router (the tiny Qwen3 on the null backend, its lm_head
 * replaced so it always says one token, a 95-token tokenizer built here),
 * updates racing a render, and docs/metrics.md against bd_metrics_doc().
 * Page structure is checked here; tests/unit/daemon/check_prom.py reads the
 * --dump page with an independent parser.
 * usage: test_metrics TESTS_DATA_DIR DOCS_METRICS_MD
 *        test_metrics --dump TESTS_DATA_DIR   (a page with every family filled)
 *        test_metrics --doc                   (what docs/metrics.md must hold) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bd_metrics.h"
#include "t.h"

/* The pool name the dump page carries: a quote, a backslash and a newline
 * to escape. check_prom.py expects exactly this value back. */
#define ODD_POOL "odd \"pool\" \\ with\nnewline"

/* ---- reading a page ----------------------------------------------------- */

/* The value of the sample whose name and labels are exactly key; NAN when
 * absent. */
static double sample(const char *page, const char *key) {
  size_t n = strlen(key);
  for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (!strncmp(p, key, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
  return NAN;
}

static int count_lines(const char *page, const char *prefix) {
  int n = 0;
  size_t len = strlen(prefix);
  for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    n += !strncmp(p, prefix, len);
  return n;
}

/* Families in the generated docs table (rows naming a metric). */
static int doc_families(void) {
  char *doc = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&doc, &len);
  bd_metrics_doc(f);
  fclose(f);
  int n = count_lines(doc, "| `ballast_");
  free(doc);
  return n;
}

/* The format's rules this page must keep: every family is "# HELP name",
 * "# TYPE name type", then only its own samples (name, or name_bucket /
 * _sum / _count for a histogram), and no family twice. Returns the number
 * of families, -1 on the first broken line (printed). */
static int check_structure(const char *page) {
  char fams[128][96];
  int n = 0;
  char fam[96] = "", type[16] = "";
  const char *p = page;
  if (!*page || page[strlen(page) - 1] != '\n') return fprintf(stderr, "no final newline\n"), -1;
  for (int lineno = 1; *p; lineno++) {
    const char *e = strchr(p, '\n');
    int len = (int)(e - p);
    char name[96];
    if (!strncmp(p, "# HELP ", 7)) {
      if (sscanf(p + 7, "%95s", fam) != 1 || n == 128) goto bad;
      for (int i = 0; i < n; i++)
        if (!strcmp(fams[i], fam)) goto bad; /* a family split in two */
      snprintf(fams[n++], sizeof fams[0], "%s", fam);
      p = e + 1;
      e = strchr(p, '\n');
      len = (int)(e - p);
      if (sscanf(p, "# TYPE %95s %15s", name, type) != 2 || strcmp(name, fam)) goto bad;
      if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram")) goto bad;
    } else {
      size_t nl = strcspn(p, "{ ");
      if (!fam[0] || nl >= sizeof name) goto bad;
      snprintf(name, sizeof name, "%.*s", (int)nl, p);
      const char *suffix = name + strlen(fam);
      if (strncmp(name, fam, strlen(fam))) goto bad;
      bool hist = !strcmp(type, "histogram");
      if (hist ? strcmp(suffix, "_bucket") && strcmp(suffix, "_sum") && strcmp(suffix, "_count")
               : *suffix)
        goto bad;
      const char *v = memrchr(p, ' ', (size_t)len);
      char *end;
      if (!v || (strtod(v + 1, &end), end != e)) goto bad; /* one value ends the line */
    }
    p = e + 1;
    continue;
  bad:
    fprintf(stderr, "page line %d: %.*s\n", lineno, len, p);
    return -1;
  }
  return n;
}

/* ---- text, counters, buckets -------------------------------------------- */

static void test_text(void) {
  bd_text t;
  bd_text_init(&t);
  T_CHECK(t.buf && t.buf[0] == 0 && t.len == 0);
  for (int i = 0; i < 1000; i++)
    bd_text_printf(&t, "%04d,", i);
  bd_text_append(&t, "end", 3);
  T_CHECK(!t.failed && t.len == 5003 && strlen(t.buf) == t.len);
  T_CHECK(!strncmp(t.buf, "0000,0001,", 10) && !strcmp(t.buf + 4995, "0999,end"));
  char big[1000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = 0;
  bd_text_printf(&t, "%s|", big); /* longer than the printf's first try */
  T_CHECK(t.len == 5003 + 1000 && t.buf[t.len - 1] == '|' && t.buf[t.len - 2] == 'a');
  bd_text_free(&t);
  T_CHECK(t.buf && t.buf[0] == 0 && t.len == 0);
}

static void render(bd_metrics *m, const bd_pool_view *pools, int n, sched_router *r,
                   const bd_server_view *sv, bd_text *t) {
  bd_text_init(t);
  bd_metrics_render(m, pools, n, r, sv, t);
  T_CHECK(!t->failed);
}

static void test_buckets(void) {
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  const bd_hist *h[] = {&m.ttft, &m.itl, &m.e2e, &m.queue};
  for (int i = 0; i < 4; i++) {
    T_CHECK(h[i]->n_bounds > 0 && h[i]->n_bounds <= BD_HIST_MAX_BUCKETS);
    for (int b = 1; b < h[i]->n_bounds; b++)
      T_CHECK(h[i]->bounds[b] > h[i]->bounds[b - 1]);
  }
  T_CHECK(m.ttft.bounds[0] == 0.005 && m.ttft.bounds[m.ttft.n_bounds - 1] == 300);
  T_CHECK(m.itl.bounds[0] == 0.001 && m.itl.bounds[m.itl.n_bounds - 1] == 10);
  int last = m.ttft.n_bounds;
  /* ttft: on a bound, just above one, 0, the last bound, above it (+Inf);
   * NaN and infinity are dropped; a negative time means "none" and is not
   * observed (e2e here, queue after two). */
  double ttft[] = {0.005, 0.0050001, 0, 300, 301, NAN, INFINITY, -1};
  for (int i = 0; i < 8; i++)
    bd_metrics_finished(&m, SCHED_R_STOP, ttft[i], -1, i < 2 ? 0.1 : -1, 2);
  T_CHECK(m.ttft.counts[0] == 2 && m.ttft.counts[1] == 1 && m.ttft.counts[last - 1] == 1);
  T_CHECK(m.ttft.counts[last] == 1 && m.ttft.count == 5);
  T_NEAR(m.ttft.sum, 0.005 + 0.0050001 + 300 + 301, 1e-9, 0);
  T_CHECK(m.e2e.count == 0 && m.queue.count == 2 && m.queue.counts[4] == 2);
  T_CHECK(m.streamed_tokens == 16 && m.finished[SCHED_R_STOP] == 8);
  bd_metrics_itl(&m, 0.001);
  bd_metrics_itl(&m, -1e-9); /* clock skew: counts as 0 */
  bd_metrics_itl(&m, 10);
  bd_metrics_itl(&m, 11);
  T_NEAR(m.itl.sum, 21.001, 1e-9, 0);
  T_CHECK(m.itl.counts[0] == 2 && m.itl.counts[m.itl.n_bounds - 1] == 1);
  T_CHECK(m.itl.counts[m.itl.n_bounds] == 1);
  /* the page: cumulative, +Inf = count */
  bd_text t;
  render(&m, NULL, 0, NULL, NULL, &t);
  T_CHECK(sample(t.buf, "ballast_ttft_seconds_bucket{le=\"0.005\"}") == 2);
  T_CHECK(sample(t.buf, "ballast_ttft_seconds_bucket{le=\"0.01\"}") == 3);
  T_CHECK(isnan(sample(t.buf, "ballast_ttft_seconds_bucket{le=\"250\"}"))); /* no such bound */
  T_CHECK(sample(t.buf, "ballast_ttft_seconds_bucket{le=\"300\"}") == 4);
  T_CHECK(sample(t.buf, "ballast_ttft_seconds_bucket{le=\"+Inf\"}") == 5);
  T_CHECK(sample(t.buf, "ballast_ttft_seconds_count") == 5);
  T_NEAR(sample(t.buf, "ballast_ttft_seconds_sum"), 601.0100001, 1e-9, 0);
  T_CHECK(sample(t.buf, "ballast_itl_seconds_bucket{le=\"0.001\"}") == 2);
  T_CHECK(sample(t.buf, "ballast_itl_seconds_bucket{le=\"10\"}") == 3);
  T_CHECK(sample(t.buf, "ballast_e2e_seconds_bucket{le=\"+Inf\"}") == 0);
  T_CHECK(count_lines(t.buf, "ballast_queue_seconds_bucket{") == m.queue.n_bounds + 1);
  bd_text_free(&t);
  bd_metrics_destroy(&m);
}

static void test_counters(void) {
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  for (int i = 0; i < 3; i++)
    bd_metrics_accepted(&m);
  bd_metrics_rejected(&m, 3);
  bd_metrics_rejected(&m, 3);
  bd_metrics_rejected(&m, 16);
  bd_metrics_rejected(&m, 17); /* out of range: ignored */
  bd_metrics_rejected(&m, -1);
  for (int f = SCHED_R_RUNNING; f <= SCHED_R_ERROR + 1; f++)
    bd_metrics_finished(&m, (sched_rfinish)f, 0.1, 0.2, 0.01, 5);
  bd_metrics_slow_client(&m);
  bd_metrics_reload(&m, true);
  bd_metrics_reload(&m, false);
  bd_metrics_reload(&m, false);
  T_CHECK(m.requests == 3 && m.rejected[3] == 2 && m.rejected[16] == 1);
  T_CHECK(m.finished[SCHED_R_RUNNING] == 0 && m.finished[SCHED_R_LOOP_COMMIT] == 1);
  T_CHECK(m.slow_client_cuts == 1 && m.reloads_ok == 1 && m.reloads_failed == 2);
  bd_server_view sv = {
      .ready = true, .active_streams = 7, .config_generation = 3, .uptime_s = 12.5};
  bd_text t;
  render(&m, NULL, 0, NULL, &sv, &t);
  const char *p = t.buf;
  T_CHECK(sample(p, "ballast_requests_total") == 3);
  T_CHECK(sample(p, "ballast_requests_rejected_total{code=\"INVALID_ARGUMENT\"}") == 2);
  T_CHECK(sample(p, "ballast_requests_rejected_total{code=\"UNAUTHENTICATED\"}") == 1);
  T_CHECK(count_lines(p, "ballast_requests_rejected_total{") == 2); /* codes seen only */
  const char *reasons[] = {"stop", "length",    "loop_commit", "loop_fallback_done",
                           "loop", "cancelled", "deadline",    "error"};
  for (int i = 0; i < 8; i++) {
    char key[128];
    snprintf(key, sizeof key, "ballast_requests_finished_total{reason=\"%s\"}", reasons[i]);
    T_CHECKF(sample(p, key) == 1, "%s", key);
  }
  T_CHECK(count_lines(p, "ballast_requests_finished_total{") == 8);
  T_CHECK(sample(p, "ballast_streamed_tokens_total") == 5 * (SCHED_R_ERROR + 2));
  T_CHECK(sample(p, "ballast_slow_client_cuts_total") == 1);
  T_CHECK(sample(p, "ballast_reloads_total{result=\"ok\"}") == 1);
  T_CHECK(sample(p, "ballast_reloads_total{result=\"failed\"}") == 2);
  T_CHECK(sample(p, "ballast_ready") == 1 && sample(p, "ballast_draining") == 0);
  T_CHECK(sample(p, "ballast_active_streams") == 7 && sample(p, "ballast_uptime_seconds") == 12.5);
  T_CHECK(sample(p, "ballast_config_generation") == 3);
  T_CHECK(check_structure(p) == doc_families());
  bd_text_free(&t);
  bd_metrics_destroy(&m);
}

/* ---- pools ------------------------------------------------------------- */

static bd_pool_view fake_pool(const char *name, const char *prec, int32_t used) {
  bd_pool_view v = {.name = name, .precision = prec, .calibrated_tps = {40, 0}};
  v.stats.running = 3;
  v.stats.waiting = 1;
  v.stats.total_blocks = 200;
  v.stats.free_blocks = 200 - used;
  v.stats.steps = 1000;
  v.stats.prefill_tokens = 5000;
  v.stats.generated_tokens = 7000;
  v.stats.preemptions = 2;
  v.stats.prefix_hit_tokens = 64;
  v.stats.loops = 4;
  v.stats.decode_tps[1] = (sched_tps){.steps = 10, .sum_s = 0.5, .ewma = 25};
  v.stats.decode_tps[8] = (sched_tps){.steps = 4, .sum_s = 0.1, .ewma = 300};
  v.stats.healthy = true;
  return v;
}

static void test_pools(void) {
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  bd_pool_view pools[2] = {fake_pool("executor", "w2", 50), fake_pool(ODD_POOL, "fp16", 0)};
  pools[1].stats.total_blocks = pools[1].stats.free_blocks = 0; /* no ratio from 0/0 */
  pools[1].stats.healthy = false;                               /* after a device error */
  bd_server_view sv = {.uptime_s = NAN, .config_generation = (1ull << 53) + 1};
  bd_text t;
  render(&m, pools, 2, NULL, &sv, &t);
  const char *p = t.buf;
  /* values: the shortest decimal that reads back (counters pass through a
   * double, exact to 2^53), the format's NaN */
  T_CHECK(count_lines(p, "ballast_kv_usage_ratio{pool=\"executor\"} 0.25\n") == 1);
  T_CHECK(count_lines(p, "ballast_uptime_seconds NaN\n") == 1);
  T_CHECK(count_lines(p, "ballast_config_generation 9007199254740992\n") == 1);
  T_CHECK(sample(p, "ballast_pool_running{pool=\"executor\"}") == 3);
  T_CHECK(sample(p, "ballast_pool_healthy{pool=\"executor\"}") == 1);
  T_CHECK(sample(p, "ballast_kv_blocks_used{pool=\"executor\"}") == 50);
  T_CHECK(sample(p, "ballast_kv_blocks_total{pool=\"executor\"}") == 200);
  T_CHECK(sample(p, "ballast_kv_usage_ratio{pool=\"executor\"}") == 0.25);
  T_CHECK(sample(p, "ballast_pool_prefix_hit_tokens_total{pool=\"executor\"}") == 64);
  T_CHECK(sample(p, "ballast_pool_loops_total{pool=\"executor\"}") == 4);
  /* the odd name, escaped */
  const char *odd = "{pool=\"odd \\\"pool\\\" \\\\ with\\nnewline\"}";
  char key[160];
  snprintf(key, sizeof key, "ballast_kv_usage_ratio%s", odd);
  T_CHECKF(sample(p, key) == 0, "%s", key);
  snprintf(key, sizeof key, "ballast_pool_steps_total%s", odd);
  T_CHECKF(sample(p, key) == 1000, "%s", key);
  snprintf(key, sizeof key, "ballast_pool_healthy%s", odd);
  T_CHECKF(sample(p, key) == 0, "%s", key);
  T_CHECK(!strstr(p, "with\nnewline"));
  /* throughput: live at 1 (ewma) and 8, calibrated at 1 only (0: not measured) */
  const char *tps = "ballast_decode_tokens_per_second{pool=\"executor\",precision=\"w2\",batch=";
  snprintf(key, sizeof key, "%s\"1\",source=\"live\"}", tps);
  T_CHECK(sample(p, key) == 25);
  snprintf(key, sizeof key, "%s\"8\",source=\"live\"}", tps);
  T_CHECK(sample(p, key) == 300);
  snprintf(key, sizeof key, "%s\"1\",source=\"calibrated\"}", tps);
  T_CHECK(sample(p, key) == 40);
  T_CHECK(count_lines(p, "ballast_decode_tokens_per_second{") == 6);
  /* no router: the policy and auto families have their header only */
  T_CHECK(count_lines(p, "# TYPE ballast_policy_seconds_total counter") == 1);
  T_CHECK(count_lines(p, "ballast_policy_") == 0 && count_lines(p, "ballast_auto_") == 0);
  T_CHECK(check_structure(p) == doc_families());
  bd_text_free(&t);
  /* no pools at all: every family still has its header, and only those */
  render(&m, NULL, 0, NULL, NULL, &t);
  T_CHECK(count_lines(t.buf, "ballast_pool_") == 0 && count_lines(t.buf, "ballast_kv_") == 0);
  T_CHECK(check_structure(t.buf) == doc_families());
  bd_text_free(&t);
  bd_metrics_destroy(&m);
}

/* ---- a real router -------------------------------------------------------- */

enum { TOK_X = 'x' - '!', TOK_EOS = 94, N_VOCAB = 95 };

/* The model's lm_head: always TOK_X, so every request runs to max_tokens. */
static bl_status say_x(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n) {
  if (w->rows != *(const int32_t *)be->ctx) return BL_OK; /* a layer: nothing (null backend) */
  for (int32_t i = 0; i < n; i++)
    for (int32_t j = 0; j < w->rows; j++)
      y[(size_t)i * w->rows + j] = j == TOK_X ? 1.f : 0.f;
  return BL_OK;
}

/* Printable ASCII as byte-level symbols (they map to themselves) and EOS. */
static tok_tokenizer *ascii_tokenizer(void) {
  static char sym[N_VOCAB - 1][2];
  static const char *toks[N_VOCAB];
  static size_t lens[N_VOCAB];
  static int32_t types[N_VOCAB];
  for (int i = 0; i < N_VOCAB - 1; i++) {
    sym[i][0] = (char)('!' + i);
    toks[i] = sym[i], lens[i] = 1, types[i] = TOK_NORMAL;
  }
  toks[TOK_EOS] = "<|im_end|>", lens[TOK_EOS] = 10, types[TOK_EOS] = TOK_CONTROL;
  tok_vocab_src src = {.n_tokens = N_VOCAB,
                       .tokens = toks,
                       .token_lens = lens,
                       .token_types = types,
                       .pre = "qwen2",
                       .bos_id = -1,
                       .eos_id = TOK_EOS};
  tok_tokenizer *t = NULL;
  bl_err err = {0};
  T_CHECKF(tok_build(&src, &t, &err) == BL_OK, "%s", err.msg);
  return t;
}

typedef struct world {
  int32_t vocab; /* the backend's ctx */
  bk_backend *be;
  model *m;
  sched_pool *p;
  sched_router *r;
  int finals;
} world;

static bool world_init(world *w, const char *data_dir) {
  memset(w, 0, sizeof *w);
  bl_err err = {0};
  char path[1024];
  snprintf(path, sizeof path, "%s/tiny-qwen3", data_dir);
  model_load_opts o = {.precision = MODEL_PREC_FP16};
  if (bk_null_create(&w->be, &err) || model_load(path, &o, w->be, &w->m, &err)) {
    T_CHECKF(false, "%s", err.msg);
    return false;
  }
  w->be->ctx = &w->vocab;
  w->be->matmul = say_x;
  w->vocab = w->m->cfg.vocab;
  w->m->tok = ascii_tokenizer();
  w->m->cfg.n_eos = 1;
  w->m->cfg.eos_ids[0] = TOK_EOS;
  sched_pool_cfg pc = {.name = "executor", .m = w->m, .n_blocks = 64, .max_num_seqs = 4};
  sched_router_cfg rc = {.chat = CHAT_CHATML};
  bool ok = sched_pool_create(&pc, &w->p, &err) == BL_OK;
  rc.executor = w->p;
  ok = ok && sched_router_create(&rc, &w->r, &err) == BL_OK;
  T_CHECKF(ok, "%s", err.msg);
  return ok;
}

static void world_free(world *w) {
  sched_router_destroy(w->r);
  sched_pool_destroy(w->p);
  model_free(w->m);
  bk_destroy(w->be);
}

static void on_final(const sched_revent *ev, void *user) {
  if (ev->kind == SCHED_REV_FINAL) ((world *)user)->finals++;
}

/* One direct request of class cls, 4 tokens, stepped to its end; then 16
 * looping outcomes of class gsm8k fed to auto, which turns it degraded. */
static void world_run(world *w, const char *cls) {
  static const int32_t prompt[] = {1, 2, 3, 4};
  sched_rreq q = {.id = 1,
                  .prompt = prompt,
                  .n_prompt = 4,
                  .max_tokens = 4,
                  .policy = "direct",
                  .overrides = SCHED_POLICY_OVERRIDE_NONE,
                  .task_class = cls,
                  .on_event = on_final,
                  .user = w};
  bl_err err = {0};
  T_CHECKF(sched_router_submit(w->r, &q, &err) == BL_OK, "%s", err.msg);
  bool idle = false;
  for (int i = 0; i < 100 && !w->finals; i++)
    T_CHECKF(sched_pool_step(w->p, &idle, &err) == BL_OK, "%s", err.msg);
  T_CHECK(w->finals == 1);
  sched_outcome loop = {.loop = true, .think_opened = true};
  for (int i = 0; i < SCHED_AUTO_MIN; i++)
    sched_auto_observe(sched_router_auto(w->r), "gsm8k", &loop);
  sched_policy base, got;
  T_CHECK(sched_policy_builtin("auto", &base, &err) == BL_OK);
  T_CHECK(sched_auto_route(sched_router_auto(w->r), "gsm8k", &base, &got) == SCHED_REGIME_DEGRADED);
}

static void test_router(const char *data_dir) {
  world w;
  if (!world_init(&w, data_dir)) return;
  world_run(&w, "c\"1");
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  bd_pool_view pv = {.name = "executor", .precision = "fp16"};
  sched_pool_stats(w.p, &pv.stats);
  bd_text t;
  render(&m, &pv, 1, w.r, NULL, &t);
  const char *p = t.buf;
  const char *agg = "{policy=\"direct\",task_class=\"c\\\"1\"}";
  char key[256];
  snprintf(key, sizeof key, "ballast_policy_requests_total%s", agg);
  T_CHECKF(sample(p, key) == 1, "%s", key);
  snprintf(key, sizeof key, "ballast_policy_exec_tokens_total%s", agg);
  T_CHECKF(sample(p, key) == 4, "%s", key);
  snprintf(key, sizeof key, "ballast_policy_loops_total%s", agg);
  T_CHECKF(sample(p, key) == 0, "%s", key);
  const char *fin = "ballast_policy_finished_total{policy=\"direct\",task_class=\"c\\\"1\",reason=";
  snprintf(key, sizeof key, "%s\"length\"}", fin);
  T_CHECKF(sample(p, key) == 1, "%s", key);
  snprintf(key, sizeof key, "%s\"stop\"}", fin);
  T_CHECKF(sample(p, key) == 0, "%s", key);
  T_CHECK(count_lines(p, fin) == SCHED_R_ERROR);
  T_CHECK(count_lines(p, "ballast_policy_failures_total{") == 2);
  T_CHECK(sample(p, "ballast_auto_regime{task_class=\"gsm8k\",regime=\"degraded\"}") == 1);
  T_CHECK(sample(p, "ballast_auto_regime{task_class=\"gsm8k\",regime=\"stable\"}") == 0);
  T_CHECK(sample(p, "ballast_auto_regime{task_class=\"gsm8k\",regime=\"collapse\"}") == 0);
  T_CHECK(sample(p, "ballast_auto_outcomes{task_class=\"gsm8k\"}") == SCHED_AUTO_MIN);
  T_CHECK(sample(p, "ballast_auto_loop_rate{task_class=\"gsm8k\"}") == 1);
  T_CHECK(sample(p, "ballast_auto_fallback_rate{task_class=\"gsm8k\"}") == 0);
  T_CHECK(sample(p, "ballast_auto_think_closed_rate{task_class=\"gsm8k\"}") == 0);
  T_CHECK(sample(p, "ballast_pool_generated_tokens_total{pool=\"executor\"}") == 4);
  T_CHECK(sample(p, "ballast_decode_tokens_per_second{pool=\"executor\",precision=\"fp16\","
                    "batch=\"1\",source=\"live\"}") > 0);
  T_CHECK(check_structure(p) == doc_families());
  bd_text_free(&t);
  bd_metrics_destroy(&m);
  world_free(&w);
}

/* ---- updates racing renders ------------------------------------------------ */

enum { N_THREADS = 4, N_UPDATES = 20000 };

static void *updater(void *arg) {
  bd_metrics *m = arg;
  for (int i = 0; i < N_UPDATES; i++) {
    bd_metrics_accepted(m);
    bd_metrics_itl(m, 0.002);
    bd_metrics_finished(m, SCHED_R_STOP, 0.01, 0.5, 0.001, 3);
  }
  return NULL;
}

/* Every page is a consistent snapshot: each request's updates land between
 * two pages or wholly in one, never half a histogram. */
static void test_concurrency(void) {
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  pthread_t th[N_THREADS];
  for (int i = 0; i < N_THREADS; i++)
    T_CHECK(pthread_create(&th[i], NULL, updater, &m) == 0);
  double last = -1;
  int bad = 0;
  for (int i = 0; i < 200; i++) {
    bd_text t;
    render(&m, NULL, 0, NULL, NULL, &t);
    double n = sample(t.buf, "ballast_e2e_seconds_count");
    bad += !(n >= last) || sample(t.buf, "ballast_e2e_seconds_bucket{le=\"+Inf\"}") != n ||
           sample(t.buf, "ballast_e2e_seconds_bucket{le=\"0.5\"}") != n ||
           sample(t.buf, "ballast_requests_finished_total{reason=\"stop\"}") != n ||
           sample(t.buf, "ballast_streamed_tokens_total") != 3 * n;
    bad += i % 50 == 0 && check_structure(t.buf) != doc_families();
    last = n;
    bd_text_free(&t);
  }
  for (int i = 0; i < N_THREADS; i++)
    pthread_join(th[i], NULL);
  T_CHECKF(bad == 0, "%d inconsistent pages", bad);
  uint64_t total = (uint64_t)N_THREADS * N_UPDATES;
  T_CHECK(m.requests == total && m.e2e.count == total && m.itl.count == total);
  T_CHECK(m.streamed_tokens == 3 * total && m.finished[SCHED_R_STOP] == total);
  T_NEAR(m.e2e.sum, 0.5 * (double)total, 0, 1e-12);
  bd_metrics_destroy(&m);
}

/* ---- docs, dump, main ---------------------------------------------------- */

static void test_doc(const char *path) {
  char *want = NULL, *have = NULL;
  size_t nw = 0, nh = 0;
  FILE *f = open_memstream(&want, &nw);
  bd_metrics_doc(f);
  fclose(f);
  f = fopen(path, "rb");
  T_CHECKF(f != NULL, "%s", path);
  if (f) {
    FILE *g = open_memstream(&have, &nh);
    int c;
    while ((c = fgetc(f)) != EOF)
      fputc(c, g);
    fclose(g);
    fclose(f);
    T_CHECKF(nw == nh && !memcmp(want, have, nw),
             "%s differs from bd_metrics_doc(): regenerate with test_metrics --doc > %s", path,
             path);
  }
  T_CHECK(count_lines(want, "| `ballast_") >= 40);
  free(want);
  free(have);
}

/* A page where every family has samples, for check_prom.py. */
static int dump(const char *data_dir) {
  world w;
  if (!world_init(&w, data_dir)) return 1;
  world_run(&w, "c\"1");
  bd_metrics m;
  bl_err err = {0};
  T_CHECK(bd_metrics_init(&m, &err) == BL_OK);
  bd_metrics_accepted(&m);
  bd_metrics_rejected(&m, 8);
  bd_metrics_finished(&m, SCHED_R_LOOP_COMMIT, 0.2, 3.5, 0.01, 40);
  bd_metrics_itl(&m, 0.03);
  bd_metrics_slow_client(&m);
  bd_metrics_reload(&m, true);
  bd_pool_view pv[2] = {{.name = "executor", .precision = "fp16", .calibrated_tps = {30, 90}},
                        fake_pool(ODD_POOL, "w2", 10)};
  sched_pool_stats(w.p, &pv[0].stats);
  bd_server_view sv = {.ready = true, .active_streams = 1, .config_generation = 1};
  bd_text t;
  render(&m, pv, 2, w.r, &sv, &t);
  fputs(t.buf, stdout);
  bd_text_free(&t);
  bd_metrics_destroy(&m);
  world_free(&w);
  return T_DONE();
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--doc")) return bd_metrics_doc(stdout), 0;
  if (argc == 3 && !strcmp(argv[1], "--dump")) return dump(argv[2]);
  if (argc != 3) {
    fprintf(stderr, "usage: test_metrics TESTS_DATA_DIR DOCS_METRICS_MD | --dump TESTS_DATA_DIR "
                    "| --doc\n");
    return 2;
  }
  test_text();
  test_buckets();
  test_counters();
  test_pools();
  test_router(argv[1]);
  test_concurrency();
  test_doc(argv[2]);
  return T_DONE();
}
