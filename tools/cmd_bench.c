/* `ballast bench`: decode tokens/s for each precision and batch size, in
 * process, on a real model or random weights of a real model's shapes.
 * Each sequence is prefilled with --prompt-len tokens, two decode steps warm
 * up, then --steps decode steps are timed. weight_gb_s is the bytes of
 * weights one step reads (linears + lm_head) times steps over the time. */
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
    "         [--concurrency 1,8,32] [--device cpu|cuda[:N]|null] [--threads N] [--json]\n"
    "  --concurrency: through the scheduler instead of a static batch: N requests of\n"
    "    --prompt-len + --steps tokens at once (--device null: scheduler cost only)\n"
    "  NAME: qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b qwen3-14b qwen3-32b smollm2-135m\n";

typedef struct bench_row {
  model_prec prec;
  int32_t batch;
  double tok_s, step_ms, gb_s;
} bench_row;

static bl_status bench_one(model *m, int32_t batch, int32_t prompt_len, int32_t steps, bench_row *row,
                           bl_err *err) {
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
    for (int32_t s = 0; s < batch; s++) next[s] = sampler_argmax(logits + (size_t)s * (size_t)vocab, vocab);
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

int cmd_bench(int argc, char **argv) {
  cli_flag f[] = {{"--model", 1, NULL}, {"--synthetic", 1, NULL}, {"--precision", 1, NULL}, {"--batch", 1, NULL},
                  {"--steps", 1, NULL}, {"--prompt-len", 1, NULL}, {"--group-size", 1, NULL}, {"--device", 1, NULL},
                  {"--threads", 1, NULL}, {"--json", 0, NULL}, {"--concurrency", 1, NULL},
                  {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("bench", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *path = cli_get(f, nf, "--model"), *synth = cli_get(f, nf, "--synthetic");
  if (!path == !synth) {
    fputs(usage, stderr);
    return 2;
  }
  model_prec precs[4];
  int n_prec = 0;
  char plist[64];
  snprintf(plist, sizeof plist, "%s", cli_get(f, nf, "--precision") ? cli_get(f, nf, "--precision") : "fp16,w4,w2");
  for (char *save = NULL, *t = strtok_r(plist, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (n_prec == 4 || model_prec_parse(t, &precs[n_prec]) || precs[n_prec] == MODEL_PREC_AUTO) {
      fprintf(stderr, "ballast bench: --precision takes fp16,w4,w2 (got '%s')\n", t);
      return 2;
    }
    n_prec++;
  }
  int32_t batches[16];
  int n_batch;
  long steps = 32, prompt_len = 32, gs = 0;
  const char *v;
  if (!cli_int_list(cli_get(f, nf, "--batch") ? cli_get(f, nf, "--batch") : "1,8", batches, 16, &n_batch) ||
      ((v = cli_get(f, nf, "--steps")) && !cli_int(v, 1, 100000, &steps)) ||
      ((v = cli_get(f, nf, "--prompt-len")) && !cli_int(v, 1, 1 << 20, &prompt_len)) ||
      ((v = cli_get(f, nf, "--group-size")) && !cli_int(v, 32, 1 << 20, &gs))) {
    fprintf(stderr, "ballast bench: bad --batch/--steps/--prompt-len/--group-size\n%s", usage);
    return 2;
  }
  int32_t conc[16];
  int n_conc = 0;
  if ((v = cli_get(f, nf, "--concurrency")) && !cli_int_list(v, conc, 16, &n_conc)) {
    fprintf(stderr, "ballast bench: bad --concurrency '%s'\n%s", v, usage);
    return 2;
  }
  for (int i = 0; i < n_conc; i++)
    if (conc[i] < 1 || conc[i] > 4096) {
      fprintf(stderr, "ballast bench: --concurrency %d: expected 1..4096\n", conc[i]);
      return 2;
    }
  bool json = cli_get(f, nf, "--json") != NULL;
  bl_err err = {0};
  bk_backend *be = NULL;
  bench_row rows[64];
  bench_sched_row srows[64];
  int n_rows = 0, rc = 1;
  if (cli_backend(cli_get(f, nf, "--device"), cli_get(f, nf, "--threads"), &be, &err)) goto done;
  for (int p = 0; p < n_prec; p++) {
    model *m = NULL;
    model_load_opts opts = {.precision = precs[p], .group_size = (int32_t)gs};
    bl_status st = synth ? model_synthetic(synth, precs[p], (int32_t)gs, be, &m, &err)
                         : model_load(path, &opts, be, &m, &err);
    for (int b = 0; !st && n_conc && b < n_conc && n_rows < 64; b++) {
      bench_sched_row *sr = &srows[n_rows];
      rows[n_rows] = (bench_row){.prec = precs[p], .batch = conc[b]};
      if ((st = bench_concurrency(m, conc[b], (int32_t)prompt_len, (int32_t)steps, sr, &err))) break;
      n_rows++;
      if (!json)
        printf("%-6s concurrency %4d: %9.2f tok/s decode  %9.2f tok/s end-to-end  %8.3f ms/step  "
               "scheduler %7.1f us/step (%.2f%%)\n",
               model_prec_name(precs[p]), sr->concurrency, sr->decode_tok_s, sr->e2e_tok_s,
               sr->step_ms, sr->sched_us, 100 * sr->sched_share);
      fflush(stdout);
    }
    for (int b = 0; !st && !n_conc && b < n_batch && n_rows < 64; b++) {
      bench_row *row = &rows[n_rows];
      *row = (bench_row){.prec = precs[p], .batch = batches[b]};
      if ((st = bench_one(m, batches[b], (int32_t)prompt_len, (int32_t)steps, row, &err))) break;
      n_rows++;
      if (!json)
        printf("%-6s batch %3d: %9.2f tok/s  %8.3f ms/step  %7.2f GB/s weights\n",
               model_prec_name(row->prec), row->batch, row->tok_s, row->step_ms, row->gb_s);
      fflush(stdout);
    }
    model_free(m);
    if (st) goto done;
  }
  if (json) {
    printf("{\"device\":\"%s\",\"model\":", be->name);
    const char *name = synth ? synth : path;
    cli_json_str(stdout, name, strlen(name));
    printf(",\"synthetic\":%s,\"steps\":%ld,\"prompt_len\":%ld,\"results\":[", synth ? "true" : "false",
           steps, prompt_len);
    for (int i = 0; i < n_rows; i++)
      if (n_conc)
        printf("%s{\"precision\":\"%s\",\"concurrency\":%d,\"decode_tok_s\":%.3f,"
               "\"e2e_tok_s\":%.3f,\"step_ms\":%.4f,\"scheduler_us_per_step\":%.2f,"
               "\"scheduler_share\":%.5f,\"steps\":%llu}",
               i ? "," : "", model_prec_name(rows[i].prec), srows[i].concurrency,
               srows[i].decode_tok_s, srows[i].e2e_tok_s, srows[i].step_ms, srows[i].sched_us,
               srows[i].sched_share, (unsigned long long)srows[i].steps);
      else
        printf("%s{\"precision\":\"%s\",\"batch\":%d,\"decode_tok_s\":%.3f,\"step_ms\":%.4f,"
               "\"weight_gb_s\":%.3f}",
               i ? "," : "", model_prec_name(rows[i].prec), rows[i].batch, rows[i].tok_s,
               rows[i].step_ms, rows[i].gb_s);
    printf("]}\n");
  }
  rc = 0;
done:
  if (rc) fprintf(stderr, "ballast bench: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  bk_destroy(be);
  return rc;
}
