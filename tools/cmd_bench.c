/* `ballast bench`: decode tokens/s for each precision and batch size, in
 * process, on a real model or random weights of a real model's shapes.
 * Each sequence is prefilled with --prompt-len tokens, two decode steps warm
 * up, then --steps decode steps are timed. weight_gb_s is the bytes of
 * weights one step reads (linears + lm_head) times steps over the time.
 *
 * The device comes first: its name, memory and the peak bandwidth the
 * static-batch rows are measured against. peak_fraction = weight_gb_s /
 * peak, where peak is --peak-gb-s when given, else the device's rated
 * memory bandwidth (the CUDA backend computes it from the memory clock and
 * bus width; a CPU reports none: null). speedup_vs_fp16 = decode tok/s over
 * fp16's at the same batch, when fp16 was among --precision. */
#include <stdlib.h>
#include <string.h>

#include "bench_sched.h"
#include "cli.h"
#include "cmds.h"
#include "runner.h"
#include "sampler.h"

static const char *usage =
    "usage: ballast bench (--model PATH | --synthetic NAME) [--precision fp16,w4,w2]\n"
    "         [--batch 1,8] [--steps N] [--prompt-len N] [--group-size N]\n"
    "         [--concurrency 1,8,32] [--device cpu|cuda[:N]|null] [--threads N]\n"
    "         [--peak-gb-s X] [--graphs on|off] [--json]\n"
    "  --concurrency: through the scheduler instead of a static batch: N requests of\n"
    "    --prompt-len + --steps tokens at once (--device null: scheduler cost only)\n"
    "  --peak-gb-s: the memory bandwidth (GB/s) that peak_fraction is of, instead of\n"
    "    the device's rated one (CUDA: memory clock x bus width; a CPU reports none)\n"
    "  --graphs: record decode steps and replay them where the device can (CUDA\n"
    "    graphs; the default, on), or run every op each step (off), to compare\n"
    "  NAME: qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b qwen3-14b qwen3-32b smollm2-135m\n";

#define MAX_ROWS 64

typedef struct bench_row {
  model_prec prec;
  int32_t batch;
  double tok_s, step_ms, gb_s;
  bool speedup_shown; /* text output: the row's line had its speed-up over fp16 */
} bench_row;

/* The device and the peak the rows are fractions of. */
typedef struct bench_dev {
  bool known; /* info holds the backend's answer */
  bk_device_info info;
  double peak_gb_s;   /* 0: unknown */
  const char *source; /* "device", "flag", or NULL when unknown */
} bench_dev;

static bl_status bench_one(model *m, int32_t batch, int32_t prompt_len, int32_t steps,
                           bench_row *row, bl_err *err) {
  runner r;
  bl_status st = runner_init(&r, m, batch, prompt_len + steps + 2, err);
  if (st) return st;
  int32_t vocab = m->cfg.vocab;
  float *logits = malloc((size_t)batch * (size_t)vocab * sizeof *logits);
  int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
  int32_t *next = malloc((size_t)batch * sizeof *next);
  if (!logits || !prompt || !next) {
    st = bl_fail(err, BL_ENOMEM, "bench: out of memory");
    goto done;
  }
  for (int32_t s = 0; s < batch && !st; s++) {
    for (int32_t i = 0; i < prompt_len; i++)
      prompt[i] = (int32_t)(sampler_uniform((uint64_t)s, (uint64_t)i) * (vocab - 1));
    st = runner_prefill(&r, s, prompt, prompt_len, logits + (size_t)s * (size_t)vocab, err);
  }
  double t0 = 0;
  for (int32_t i = 0; i < steps + 2 && !st; i++) {
    if (i == 2) t0 = cli_now();
    for (int32_t s = 0; s < batch; s++)
      next[s] = sampler_argmax(logits + (size_t)s * (size_t)vocab, vocab);
    st = runner_decode(&r, next, logits, err);
  }
  if (!st) {
    double dt = cli_now() - t0;
    row->tok_s = (double)batch * steps / dt;
    row->step_ms = dt * 1e3 / steps;
    row->gb_s = (double)model_weight_bytes(m) * steps / dt / 1e9;
  }
done:
  free(logits);
  free(prompt);
  free(next);
  runner_free(&r);
  return st;
}

/* ---- the device and the derived columns ------------------------------- */

/* What be runs on, and the peak: --peak-gb-s (flag_peak > 0) over the
 * device's. A backend that cannot say leaves the device unknown (a
 * warning when a query failed; the bench still runs). */
static void bench_device(const bk_backend *be, double flag_peak, bench_dev *d) {
  bl_err err = {0};
  *d = (bench_dev){0};
  bl_status st = cli_device_info(be, &d->info, &err);
  d->known = st == BL_OK;
  if (st != BL_OK && st != BL_EUNSUPPORTED) fprintf(stderr, "ballast bench: %s\n", err.msg);
  if (flag_peak > 0) {
    d->peak_gb_s = flag_peak;
    d->source = "flag";
  } else if (d->known && d->info.peak_gb_s > 0) {
    d->peak_gb_s = d->info.peak_gb_s;
    d->source = "device";
  }
}

static void print_device(const bk_backend *be, const bench_dev *d) {
  const double gib = (double)(1ull << 30);
  printf("device: %s", be->name);
  if (d->known) {
    printf(", %s", d->info.name);
    if (d->info.sm_count)
      printf(" (sm_%d%d, %d SMs)", d->info.cc_major, d->info.cc_minor, d->info.sm_count);
    printf(", %.2f GiB (%.2f GiB free)", (double)d->info.mem_total / gib,
           (double)d->info.mem_free / gib);
  }
  if (!d->source)
    printf(", peak bandwidth unknown (--peak-gb-s X gives it)\n");
  else if (!strcmp(d->source, "flag"))
    printf(", peak %.1f GB/s (--peak-gb-s)\n", d->peak_gb_s);
  else
    printf(", peak %.1f GB/s (rated: memory clock x bus width)\n", d->peak_gb_s);
}

/* fp16's tok/s at this batch among rows[0..n), 0 when not measured. */
static double fp16_tok_s(const bench_row *rows, int n, int32_t batch) {
  for (int i = 0; i < n; i++)
    if (rows[i].prec == MODEL_PREC_FP16 && rows[i].batch == batch) return rows[i].tok_s;
  return 0;
}

/* One static-batch row, as it is measured: the speed-up where fp16 at this
 * batch is already in rows[0..n). */
static void print_row(bench_row *rows, int n, bench_row *row, const bench_dev *d) {
  printf("%-6s batch %3d: %9.2f tok/s  %8.3f ms/step  %7.2f GB/s weights",
         model_prec_name(row->prec), row->batch, row->tok_s, row->step_ms, row->gb_s);
  if (d->peak_gb_s > 0) printf("  %5.1f%% of peak", 100 * row->gb_s / d->peak_gb_s);
  double base = fp16_tok_s(rows, n, row->batch);
  if (row->prec != MODEL_PREC_FP16 && base > 0) printf("  %5.2fx fp16", row->tok_s / base);
  row->speedup_shown = base > 0;
  printf("\n");
}

/* Speed-ups of the rows measured before fp16 at their batch. */
static void print_late_speedups(const bench_row *rows, int n) {
  bool any = false;
  for (int i = 0; i < n; i++) {
    double base = fp16_tok_s(rows, n, rows[i].batch);
    if (rows[i].prec == MODEL_PREC_FP16 || rows[i].speedup_shown || base <= 0) continue;
    printf("%s%s batch %d %.2fx",
           any ? ", " : "speed-up over fp16: ", model_prec_name(rows[i].prec), rows[i].batch,
           rows[i].tok_s / base);
    any = true;
  }
  if (any) printf("\n");
}

/* ---- JSON ------------------------------------------------------------- */

static void json_num_or_null(double v, const char *fmt) {
  if (v > 0)
    printf(fmt, v);
  else
    printf("null");
}

static void json_device(const bk_backend *be, const bench_dev *d) {
  const bk_device_info *i = &d->info;
  printf(",\"device_info\":{\"backend\":");
  cli_json_str(stdout, be->name, strlen(be->name));
  printf(",\"name\":");
  if (d->known)
    cli_json_str(stdout, i->name, strlen(i->name));
  else
    printf("null");
  if (d->known)
    printf(",\"memory_total_bytes\":%llu,\"memory_free_bytes\":%llu",
           (unsigned long long)i->mem_total, (unsigned long long)i->mem_free);
  else
    printf(",\"memory_total_bytes\":null,\"memory_free_bytes\":null");
  if (d->known && i->sm_count)
    printf(",\"sm_count\":%d,\"compute_capability\":\"%d.%d\"", i->sm_count, i->cc_major,
           i->cc_minor);
  else
    printf(",\"sm_count\":null,\"compute_capability\":null");
  printf(",\"device_peak_gb_s\":");
  json_num_or_null(d->known ? i->peak_gb_s : 0, "%.3f");
  printf(",\"peak_gb_s\":");
  json_num_or_null(d->peak_gb_s, "%.3f");
  printf(",\"peak_source\":");
  if (d->source)
    printf("\"%s\"}", d->source);
  else
    printf("null}");
}

static void json_static_row(const bench_row *rows, int n, int i, const bench_dev *d) {
  const bench_row *r = &rows[i];
  printf("%s{\"precision\":\"%s\",\"batch\":%d,\"decode_tok_s\":%.3f,\"step_ms\":%.4f,"
         "\"weight_gb_s\":%.3f,\"peak_fraction\":",
         i ? "," : "", model_prec_name(r->prec), r->batch, r->tok_s, r->step_ms, r->gb_s);
  json_num_or_null(d->peak_gb_s > 0 ? r->gb_s / d->peak_gb_s : 0, "%.6f");
  double base = fp16_tok_s(rows, n, r->batch);
  printf(",\"speedup_vs_fp16\":");
  json_num_or_null(base > 0 ? r->tok_s / base : 0, "%.4f");
  printf("}");
}

static void json_sched_row(const bench_row *rows, const bench_sched_row *srows, int i) {
  const bench_sched_row *s = &srows[i];
  printf("%s{\"precision\":\"%s\",\"concurrency\":%d,\"decode_tok_s\":%.3f,"
         "\"e2e_tok_s\":%.3f,\"step_ms\":%.4f,\"scheduler_us_per_step\":%.2f,"
         "\"scheduler_share\":%.5f,\"steps\":%llu}",
         i ? "," : "", model_prec_name(rows[i].prec), s->concurrency, s->decode_tok_s, s->e2e_tok_s,
         s->step_ms, s->sched_us, s->sched_share, (unsigned long long)s->steps);
}

/* ---- the command ------------------------------------------------------ */

typedef struct bench_args {
  const char *path, *synth, *device, *threads;
  model_prec precs[4];
  int n_prec;
  int32_t batches[16], conc[16];
  int n_batch, n_conc;
  long steps, prompt_len, gs;
  double peak; /* --peak-gb-s, 0 when not given */
  bool graphs; /* --graphs on (the default) */
  bool json;
} bench_args;

/* Flags into a; false (after a message on stderr) when one is bad. */
static bool bench_parse(int argc, char **argv, bench_args *a, bool *help) {
  cli_flag f[] = {{"--model", 1, NULL},      {"--synthetic", 1, NULL},   {"--precision", 1, NULL},
                  {"--batch", 1, NULL},      {"--steps", 1, NULL},       {"--prompt-len", 1, NULL},
                  {"--group-size", 1, NULL}, {"--device", 1, NULL},      {"--threads", 1, NULL},
                  {"--json", 0, NULL},       {"--concurrency", 1, NULL}, {"--peak-gb-s", 1, NULL},
                  {"--graphs", 1, NULL},     {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  *a = (bench_args){.steps = 32, .prompt_len = 32};
  if (!cli_parse("bench", argc, argv, f, nf)) return false;
  if ((*help = cli_get(f, nf, "--help") != NULL)) return true;
  a->path = cli_get(f, nf, "--model");
  a->synth = cli_get(f, nf, "--synthetic");
  a->device = cli_get(f, nf, "--device");
  a->threads = cli_get(f, nf, "--threads");
  a->json = cli_get(f, nf, "--json") != NULL;
  if (!a->path == !a->synth) {
    fputs(usage, stderr);
    return false;
  }
  const char *v = cli_get(f, nf, "--precision");
  char plist[64];
  snprintf(plist, sizeof plist, "%s", v ? v : "fp16,w4,w2");
  for (char *save = NULL, *t = strtok_r(plist, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (a->n_prec == 4 || model_prec_parse(t, &a->precs[a->n_prec]) ||
        a->precs[a->n_prec] == MODEL_PREC_AUTO) {
      fprintf(stderr, "ballast bench: --precision takes fp16,w4,w2 (got '%s')\n", t);
      return false;
    }
    a->n_prec++;
  }
  v = cli_get(f, nf, "--batch");
  if (!cli_int_list(v ? v : "1,8", a->batches, 16, &a->n_batch) ||
      ((v = cli_get(f, nf, "--steps")) && !cli_int(v, 1, 100000, &a->steps)) ||
      ((v = cli_get(f, nf, "--prompt-len")) && !cli_int(v, 1, 1 << 20, &a->prompt_len)) ||
      ((v = cli_get(f, nf, "--group-size")) && !cli_int(v, 32, 1 << 20, &a->gs))) {
    fprintf(stderr, "ballast bench: bad --batch/--steps/--prompt-len/--group-size\n%s", usage);
    return false;
  }
  a->graphs = true;
  if ((v = cli_get(f, nf, "--graphs"))) {
    if (strcmp(v, "on") && strcmp(v, "off")) {
      fprintf(stderr, "ballast bench: --graphs '%s': expected on or off\n", v);
      return false;
    }
    a->graphs = !strcmp(v, "on");
  }
  if ((v = cli_get(f, nf, "--peak-gb-s")) && !cli_float(v, 0.001, 1e6, &a->peak)) {
    fprintf(stderr, "ballast bench: --peak-gb-s '%s': expected GB/s in [0.001, 1e6]\n", v);
    return false;
  }
  if ((v = cli_get(f, nf, "--concurrency")) && !cli_int_list(v, a->conc, 16, &a->n_conc)) {
    fprintf(stderr, "ballast bench: bad --concurrency '%s'\n%s", v, usage);
    return false;
  }
  for (int i = 0; i < a->n_conc; i++)
    if (a->conc[i] < 1 || a->conc[i] > 4096) {
      fprintf(stderr, "ballast bench: --concurrency %d: expected 1..4096\n", a->conc[i]);
      return false;
    }
  return true;
}

int cmd_bench(int argc, char **argv) {
  bench_args a;
  bool help = false;
  if (!bench_parse(argc, argv, &a, &help)) return 2;
  if (help) {
    fputs(usage, stdout);
    return 0;
  }
  bl_err err = {0};
  bk_backend *be = NULL;
  bench_dev dev;
  bench_row rows[MAX_ROWS];
  bench_sched_row srows[MAX_ROWS];
  int n_rows = 0, rc = 1;
  if (cli_backend(a.device, a.threads, &be, &err)) goto done;
  bench_device(be, a.peak, &dev);
  if (!a.json) print_device(be, &dev);
  fflush(stdout);
  for (int p = 0; p < a.n_prec; p++) {
    model *m = NULL;
    model_load_opts opts = {.precision = a.precs[p], .group_size = (int32_t)a.gs};
    bl_status st = a.synth ? model_synthetic(a.synth, a.precs[p], (int32_t)a.gs, be, &m, &err)
                           : model_load(a.path, &opts, be, &m, &err);
    if (!st) m->graphs_off = !a.graphs;
    for (int b = 0; !st && a.n_conc && b < a.n_conc && n_rows < MAX_ROWS; b++) {
      bench_sched_row *sr = &srows[n_rows];
      rows[n_rows] = (bench_row){.prec = a.precs[p], .batch = a.conc[b]};
      st = bench_concurrency(m, a.conc[b], (int32_t)a.prompt_len, (int32_t)a.steps, sr, &err);
      if (st) break;
      n_rows++;
      if (!a.json)
        printf("%-6s concurrency %4d: %9.2f tok/s decode  %9.2f tok/s end-to-end  %8.3f ms/step  "
               "scheduler %7.1f us/step (%.2f%%)\n",
               model_prec_name(a.precs[p]), sr->concurrency, sr->decode_tok_s, sr->e2e_tok_s,
               sr->step_ms, sr->sched_us, 100 * sr->sched_share);
      fflush(stdout);
    }
    for (int b = 0; !st && !a.n_conc && b < a.n_batch && n_rows < MAX_ROWS; b++) {
      bench_row *row = &rows[n_rows];
      *row = (bench_row){.prec = a.precs[p], .batch = a.batches[b]};
      st = bench_one(m, a.batches[b], (int32_t)a.prompt_len, (int32_t)a.steps, row, &err);
      if (st) break;
      if (!a.json) print_row(rows, n_rows, row, &dev);
      n_rows++;
      fflush(stdout);
    }
    model_free(m);
    if (st) goto done;
  }
  if (!a.json && !a.n_conc) print_late_speedups(rows, n_rows);
  if (a.json) {
    printf("{\"device\":\"%s\"", be->name);
    json_device(be, &dev);
    printf(",\"model\":");
    const char *name = a.synth ? a.synth : a.path;
    cli_json_str(stdout, name, strlen(name));
    printf(",\"synthetic\":%s,\"graphs\":%s,\"steps\":%ld,\"prompt_len\":%ld,\"results\":[",
           a.synth ? "true" : "false", a.graphs ? "true" : "false", a.steps, a.prompt_len);
    for (int i = 0; i < n_rows; i++)
      if (a.n_conc)
        json_sched_row(rows, srows, i);
      else
        json_static_row(rows, n_rows, i, &dev);
    printf("]}\n");
  }
  rc = 0;
done:
  if (rc) fprintf(stderr, "ballast bench: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  bk_destroy(be);
  return rc;
}
