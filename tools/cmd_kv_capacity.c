/* `ballast kv-capacity`: how many sequences of --context tokens fit in
 * --memory-gib of device memory with the KV cache in fp16, fp8 and nvfp4,
 * or in all the memory of --device (its total as the backend reports it:
 * cudaMemGetInfo's total for cuda:N, MemTotal for the CPU's RAM).
 *
 *   free  = memory - weights - reserve
 *   seq   = ceil(context / block_size) * block_size * kv_bytes_per_token
 *           + one fp32 logits row (vocab * 4)
 *   max   = floor(free / seq)
 * weights: every byte the model keeps resident at --precision (linears with
 * their per-group scale and min, fp16 lm_head and untied embedding, fp32
 * norms). --synthetic NAME computes them from the shapes without building
 * the model (a 32B fp16 model would not fit here); --model PATH loads the
 * model on the CPU and counts what it holds. kv_bytes_per_token from
 * kvcache/kv_format.c (values and per-token scales; fp8 scaled per head).
 * reserve: RESERVE_FIXED_GIB for the runtime (CUDA context, cuBLAS
 * workspace, allocator slack) plus the activations of one prefill step of
 * RESERVE_STEP_TOKENS tokens (model_scratch's buffers, fp32). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "kv_format.h"
#include "model.h"

#define RESERVE_FIXED_GIB   1.0
#define RESERVE_STEP_TOKENS 2048

static const char *usage =
    "usage: ballast kv-capacity (--model PATH | --synthetic NAME)\n"
    "         (--memory-gib G | --device cpu|cuda[:N]) --context N\n"
    "         [--precision fp16|w4|w2] [--group-size N] [--block-size 16] [--json]\n"
    "  Largest number of concurrent sequences of N tokens per KV format (fp16, fp8,\n"
    "  nvfp4) in G GiB (or the device's total memory) after the weights (default\n"
    "  precision w2, the executor's) and a reserve for the runtime and activations.\n"
    "  NAME: qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b qwen3-14b qwen3-32b smollm2-135m\n";

/* Resident bytes of one linear [rows][cols] in format f with group size gs:
 * the same arithmetic as model_weight_bytes. */
static uint64_t linear_bytes(bk_wfmt f, int64_t rows, int64_t cols, int32_t gs) {
  uint64_t b = bk_weight_row_bytes(f, (int32_t)cols) * (uint64_t)rows;
  return f == BK_WF_F16 ? b : b + 4ull * (uint64_t)rows * (uint64_t)(cols / gs);
}

static uint64_t weights_from_config(const model_config *c, model_prec p, int32_t gs) {
  bk_wfmt f = p == MODEL_PREC_W4 ? BK_WF_W4 : p == MODEL_PREC_W2 ? BK_WF_W2 : BK_WF_F16;
  int64_t h = c->hidden, qd = (int64_t)c->n_heads * c->head_dim;
  int64_t kvd = (int64_t)c->n_kv_heads * c->head_dim, in = c->intermediate;
  uint64_t layer = linear_bytes(f, qd, h, gs) + 2 * linear_bytes(f, kvd, h, gs) +
                   linear_bytes(f, h, qd, gs) + 2 * linear_bytes(f, in, h, gs) +
                   linear_bytes(f, h, in, gs) + 4ull * (2 * (uint64_t)h) +
                   (c->qk_norm ? 4ull * 2 * (uint64_t)c->head_dim : 0);
  uint64_t table = 2ull * (uint64_t)c->vocab * (uint64_t)h; /* fp16 */
  return layer * (uint64_t)c->n_layers + table * (c->tied ? 1 : 2) + 4ull * (uint64_t)h;
}

/* What a loaded model holds: model_weight_bytes (linears + lm_head) plus
 * the embedding table when it is not lm_head, plus the norms. */
static uint64_t weights_of_model(const model *m) {
  const model_config *c = &m->cfg;
  uint64_t b = model_weight_bytes(m);
  if (!c->tied)
    b += linear_bytes(m->embed.fmt, m->embed.rows, m->embed.cols,
                      m->embed.group_size ? m->embed.group_size : m->embed.cols);
  b +=
      (uint64_t)c->n_layers * 4ull * (2 * (uint64_t)c->hidden + (c->qk_norm ? 2 * c->head_dim : 0));
  return b + 4ull * (uint64_t)c->hidden;
}

/* fp32 activations of one step of n tokens (model/forward.c's scratch). */
static uint64_t step_bytes(const model_config *c, int64_t n) {
  int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
  return 4ull * (uint64_t)n * (uint64_t)(2 * c->hidden + 2 * qd + 2 * kvd + 2 * c->intermediate);
}

typedef struct cap_row {
  bk_kvfmt fmt;
  uint64_t token_bytes, seq_bytes;
  int64_t max_seqs;
} cap_row;

/* --device: the device's total memory (info->mem_total) and its backend's
 * name; an error where the backend cannot say. */
static bl_status device_memory(const char *device, bk_device_info *info, char *backend, size_t cap,
                               bl_err *err) {
  bk_backend *be = NULL;
  bl_status st = cli_backend(device, "1", &be, err); /* one thread: only to ask */
  if (st) return st;
  snprintf(backend, cap, "%s", be->name);
  st = cli_device_info(be, info, err);
  if (!st && !info->mem_total)
    st = bl_fail(err, BL_EUNSUPPORTED, "%s: the backend does not know its memory size", be->name);
  bk_destroy(be);
  return st;
}

static void json_device(const char *backend, const bk_device_info *d) {
  if (!backend) {
    printf(",\"memory_source\":\"flag\",\"device_info\":null");
    return;
  }
  printf(",\"memory_source\":\"device\",\"device_info\":{\"backend\":");
  cli_json_str(stdout, backend, strlen(backend));
  printf(",\"name\":");
  cli_json_str(stdout, d->name, strlen(d->name));
  printf(",\"memory_total_bytes\":%llu,\"memory_free_bytes\":%llu}",
         (unsigned long long)d->mem_total, (unsigned long long)d->mem_free);
}

int cmd_kv_capacity(int argc, char **argv) {
  cli_flag f[] = {{"--model", 1, NULL},      {"--synthetic", 1, NULL}, {"--memory-gib", 1, NULL},
                  {"--context", 1, NULL},    {"--precision", 1, NULL}, {"--group-size", 1, NULL},
                  {"--block-size", 1, NULL}, {"--json", 0, NULL},      {"--help", 0, NULL},
                  {"--device", 1, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("kv-capacity", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *path = cli_get(f, nf, "--model"), *synth = cli_get(f, nf, "--synthetic"), *v;
  const char *mem = cli_get(f, nf, "--memory-gib"), *device = cli_get(f, nf, "--device");
  double gib = 0;
  long ctx = 0, bs = 16, gs = 0;
  model_prec prec = MODEL_PREC_W2;
  if (!mem == !device) {
    fprintf(stderr, "ballast kv-capacity: %s\n%s",
            mem ? "give --memory-gib or --device, not both"
                : "give the memory: --memory-gib G, or --device cpu|cuda[:N] for all of its memory",
            usage);
    return 2;
  }
  if (!path == !synth || !cli_get(f, nf, "--context") ||
      (mem && !cli_float(mem, 0.001, 1e6, &gib)) ||
      !cli_int(cli_get(f, nf, "--context"), 1, 1L << 30, &ctx) ||
      ((v = cli_get(f, nf, "--block-size")) && !cli_int(v, 1, 1 << 16, &bs)) ||
      ((v = cli_get(f, nf, "--group-size")) && !cli_int(v, 32, 1 << 20, &gs)) ||
      ((v = cli_get(f, nf, "--precision")) &&
       (model_prec_parse(v, &prec) || prec == MODEL_PREC_AUTO))) {
    fputs(usage, stderr);
    return 2;
  }
  bl_err err = {0};
  bk_device_info dinfo = {0};
  char backend[64] = "";
  if (device) {
    if (device_memory(device, &dinfo, backend, sizeof backend, &err)) goto fail;
    gib = (double)dinfo.mem_total / (double)(1ull << 30);
  }
  model_config cfg;
  uint64_t weights = 0;
  int32_t group = (int32_t)gs;
  if (synth) {
    if (model_synthetic_config(synth, &cfg, &err)) goto fail;
    if (!group) group = model_auto_group_size(&cfg); /* model_synthetic's default */
    if (prec != MODEL_PREC_FP16 && !model_group_size_fits(&cfg, group)) {
      fprintf(stderr, "ballast kv-capacity: --group-size %d does not divide %s's layer widths\n",
              group, synth);
      return 2;
    }
    weights = weights_from_config(&cfg, prec, group);
  } else {
    bk_backend *be = NULL;
    model *m = NULL;
    model_load_opts o = {.precision = prec, .group_size = group};
    if (bk_cpu_create(1, &be, &err) || model_load(path, &o, be, &m, &err)) {
      bk_destroy(be);
      goto fail;
    }
    cfg = m->cfg;
    weights = weights_of_model(m);
    group = m->group_size;
    prec = m->prec;
    model_free(m);
    bk_destroy(be);
  }
  double budget = gib * (double)(1ull << 30);
  double reserve =
      RESERVE_FIXED_GIB * (double)(1ull << 30) + (double)step_bytes(&cfg, RESERVE_STEP_TOKENS);
  double free_b = budget - (double)weights - reserve;
  int64_t blocks_per_seq = (ctx + bs - 1) / bs;
  cap_row rows[3];
  static const bk_kvfmt fmts[3] = {BK_KV_F16, BK_KV_FP8, BK_KV_NVFP4};
  for (int i = 0; i < 3; i++) {
    rows[i].fmt = fmts[i];
    rows[i].token_bytes =
        kv_token_bytes(fmts[i], BK_KVS_HEAD, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim);
    rows[i].seq_bytes =
        (uint64_t)blocks_per_seq * (uint64_t)bs * rows[i].token_bytes + 4ull * (uint64_t)cfg.vocab;
    rows[i].max_seqs = free_b > 0 ? (int64_t)floor(free_b / (double)rows[i].seq_bytes) : 0;
  }
  const char *name = synth ? synth : path;
  if (cli_get(f, nf, "--json")) {
    printf("{\"model\":");
    cli_json_str(stdout, name, strlen(name));
    printf(",\"precision\":\"%s\",\"group_size\":%d,\"memory_gib\":%.3f,\"context\":%ld,"
           "\"block_size\":%ld,\"weight_bytes\":%llu,\"reserve_bytes\":%.0f,\"free_bytes\":%.0f",
           model_prec_name(prec), group, gib, ctx, bs, (unsigned long long)weights, reserve,
           free_b);
    json_device(device ? backend : NULL, &dinfo);
    printf(",\"formats\":[");
    for (int i = 0; i < 3; i++)
      printf("%s{\"kv\":\"%s\",\"kv_bytes_per_token\":%llu,\"bytes_per_seq\":%llu,"
             "\"max_seqs\":%lld}",
             i ? "," : "", kv_fmt_name(rows[i].fmt), (unsigned long long)rows[i].token_bytes,
             (unsigned long long)rows[i].seq_bytes, (long long)rows[i].max_seqs);
    printf("]}\n");
    return 0;
  }
  const double g = (double)(1ull << 30);
  if (device)
    printf("memory: %.2f GiB, all of %s (%s): the total it reports\n", gib, backend, dinfo.name);
  printf("%s at %s%s: weights %.2f GiB, reserve %.2f GiB (%.1f runtime + %d-token step), "
         "%.2f GiB of %.2f GiB left for KV\n",
         name, model_prec_name(prec), prec == MODEL_PREC_FP16 ? "" : " (group scales incl.)",
         (double)weights / g, reserve / g, RESERVE_FIXED_GIB, RESERVE_STEP_TOKENS,
         free_b > 0 ? free_b / g : 0.0, gib);
  printf("%-6s %14s %16s %10s   (context %ld, blocks of %ld)\n", "kv", "KiB/token", "GiB/sequence",
         "max seqs", ctx, bs);
  for (int i = 0; i < 3; i++)
    printf("%-6s %14.3f %16.3f %10lld\n", kv_fmt_name(rows[i].fmt),
           (double)rows[i].token_bytes / 1024, (double)rows[i].seq_bytes / g,
           (long long)rows[i].max_seqs);
  return 0;
fail:
  fprintf(stderr, "ballast kv-capacity: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  return 1;
}
