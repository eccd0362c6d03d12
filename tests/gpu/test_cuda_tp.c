/* Tensor parallelism on CUDA backends (suite gpu).
 *
 * 1. The communicators: all_reduce of random vectors on CUDA ranks against
 *    the host sum, through the host communicator always, and through NCCL
 *    where the build has it: one rank on one GPU, and every visible GPU (up
 *    to 4) when there are two or more. NCCL must refuse two ranks on one
 *    GPU (bk_comm_create then falls back to the host). Tolerance 1e-6
 *    relative: a sum of at most 4 floats in another order.
 * 2. Whole models: the tiny Qwen3s (fp16, w4 quantized at load with groups
 *    of 64, GPTQ w2 g32) split in two on CUDA, against the same model
 *    unsplit on the CPU, through tests/common/split_schedule.h. With one
 *    GPU both shards are on it and sum through the host; with two, each
 *    has its own and they sum with NCCL. Tolerance: test_cuda_model.c's
 *    for a GPU against the CPU, |gpu - cpu| <= (2e-2 sd + 1e-2 |cpu|) x 3
 *    for quantized weights (the GEMV's fp16 spans), sd the CPU row's
 *    standard deviation; the split itself only reorders fp32 sums.
 *
 * Without a GPU the test prints one skip line and exits 77. Argument: the
 * tests/data folder. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bk_comm.h"
#include "gpu_harness.h"
#include "logits_cmp.h"
#include "model.h"
#include "split_schedule.h"
#include "t.h"

#define MAX_GPUS 4

static bk_backend *g_gpu[MAX_GPUS];
static int g_n_gpus;

static rng g_rng = {0x7e5a11e1ull};

/* all_reduce over bes[0..n) of count floats against the host sum. */
static void check_all_reduce(bk_comm *c, size_t count) {
  int n = c->n;
  float *host[MAX_GPUS], *dev[MAX_GPUS], *want = calloc(count, sizeof *want);
  for (int r = 0; r < n; r++) {
    host[r] = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) {
      host[r][i] = rng_f(&g_rng, -1.0f, 1.0f);
      want[i] += host[r][i];
    }
    dev[r] = c->bes[r]->alloc(c->bes[r], count * sizeof(float));
    T_CHECK(dev[r] && c->bes[r]->upload(c->bes[r], dev[r], host[r], count * 4) == BL_OK);
  }
  T_CHECKF(c->all_reduce(c, dev, count) == BL_OK, "%s: %s", c->name, c->last_err);
  double worst = 0;
  for (int r = 0; r < n; r++) {
    T_CHECK(c->bes[r]->download(c->bes[r], host[r], dev[r], count * 4) == BL_OK);
    for (size_t i = 0; i < count; i++) {
      double e = fabs((double)host[r][i] - want[i]) / (1e-6 * (1.0 + fabs((double)want[i])));
      if (!(e <= worst)) worst = e;
    }
    c->bes[r]->free(c->bes[r], dev[r]);
    free(host[r]);
  }
  T_CHECKF(worst <= 1.0, "%s over %d ranks, %zu floats: %.3g of the tolerance", c->name, n, count,
           worst);
  fprintf(stderr, "all-reduce %-4s %d ranks %8zu floats: worst %.3g of the tolerance\n", c->name, n,
          count, worst);
  free(want);
}

static void check_comms(void) {
  bl_err err = {0};
  bk_comm *c = NULL;
  bk_backend *two_on_one[2] = {g_gpu[0], NULL};
  T_CHECK(bk_cuda_create(0, &two_on_one[1], &err) == BL_OK);
  /* host: two ranks on one GPU */
  T_CHECK(bk_comm_host_create(two_on_one, 2, &c, &err) == BL_OK);
  if (c) check_all_reduce(c, 4099);
  bk_comm_destroy(c);
  /* NCCL refuses two ranks on one GPU; bk_comm_create then sums through the host */
  bl_status st = bk_comm_nccl_create(two_on_one, 2, &c, &err);
  T_CHECKF(st == BL_EUNSUPPORTED && !c, "nccl on one GPU twice: %s", bl_status_str(st));
  T_CHECK(bk_comm_create(two_on_one, 2, &c, &err) == BL_OK && c && !strcmp(c->name, "host"));
  bk_comm_destroy(c);
  bk_destroy(two_on_one[1]);
  st = bk_comm_nccl_create(g_gpu, 1, &c, &err);
  if (st == BL_EUNSUPPORTED) {
    fprintf(stderr, "nccl: %s; only the host communicator checked\n", err.msg);
    return;
  }
  T_CHECKF(st == BL_OK, "nccl on one GPU: %s", err.msg);
  if (c) check_all_reduce(c, 1 << 20);
  bk_comm_destroy(c);
  if (g_n_gpus < 2) return;
  T_CHECKF(bk_comm_nccl_create(g_gpu, g_n_gpus, &c, &err) == BL_OK, "nccl: %s", err.msg);
  if (!c) return;
  check_all_reduce(c, 7);
  check_all_reduce(c, 1 << 20);
  bk_comm_destroy(c);
}

static void check_model(const char *dir, const char *name, model_prec prec, int32_t gs) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  model_load_opts o = {.precision = prec, .group_size = gs, .split = 2};
  bl_err err = {0};
  bk_backend *cpu = NULL, *bes[2] = {g_gpu[0], g_n_gpus > 1 ? g_gpu[1] : NULL};
  bool own1 = !bes[1];
  model *one = NULL, *tp = NULL;
  if (own1) T_CHECK(bk_cuda_create(0, &bes[1], &err) == BL_OK);
  T_CHECKF(bk_cpu_create(0, &cpu, &err) == BL_OK && model_load(path, &o, cpu, &one, &err) == BL_OK,
           "%s on the CPU: %s", name, err.msg);
  T_CHECKF(bes[1] && model_load_tp(path, &o, bes, 2, &tp, &err) == BL_OK, "%s split: %s", name,
           err.msg);
  if (one && tp) {
    float *a = NULL, *b = NULL;
    int32_t rows = 0;
    bl_err e1 = {0}, e2 = {0};
    bl_status s1 = split_schedule(one, BK_KV_F16, &a, &rows, &e1);
    bl_status s2 = split_schedule(tp, BK_KV_F16, &b, &rows, &e2);
    T_CHECKF(!s1 && !s2, "%s: %s / %s", name, e1.msg, e2.msg);
    double scale = tp->prec == MODEL_PREC_FP16 ? 1.0 : 3.0;
    double worst =
        s1 || s2 ? INFINITY : logits_worst(b, a, rows, one->cfg.vocab, scale * 2e-2, scale * 1e-2);
    T_CHECKF(worst <= 1.0, "%s %s split on %s: %.3g of the tolerance", name,
             model_prec_name(tp->prec), model_tp_comm_name(tp), worst);
    fprintf(stderr, "%-30s %-4s split 2 (%s): worst %.3g of the tolerance\n", name,
            model_prec_name(tp->prec), model_tp_comm_name(tp), worst);
    free(a);
    free(b);
  }
  model_free(tp);
  model_free(one);
  bk_destroy(cpu);
  if (own1) bk_destroy(bes[1]);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_cuda_tp TESTS_DATA_DIR\n");
    return 2;
  }
  int rc = gpu_open(&g_gpu[0], NULL);
  if (rc >= 0) return rc;
  for (g_n_gpus = 1; g_n_gpus < MAX_GPUS; g_n_gpus++) {
    bl_err e = {0};
    if (bk_cuda_create(g_n_gpus, &g_gpu[g_n_gpus], &e) != BL_OK) break;
  }
  fprintf(stderr, "%d GPU%s\n", g_n_gpus, g_n_gpus == 1 ? "" : "s");
  check_comms();
  check_model(argv[1], "tiny-qwen3", MODEL_PREC_AUTO, 0);
  check_model(argv[1], "tiny-qwen3", MODEL_PREC_W4, 64);
  check_model(argv[1], "tiny-qwen3-gptq-w2-g32-sym-v1", MODEL_PREC_AUTO, 0);
  for (int i = 0; i < g_n_gpus; i++)
    bk_destroy(g_gpu[i]);
  return T_DONE();
}
