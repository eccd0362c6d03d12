/* Tensor parallelism (model/tp.c) on CPU shards summed through the host.
 *
 * The same checkpoint runs unsplit on one CPU backend and split across two
 * CPU backends, through one schedule: two sequences prefilled in one step
 * (different lengths, block tables that are not the identity), then four
 * decode steps of both together. Every output row's logits must agree.
 *
 * Tolerance |tp - one| <= 1e-3 + 1e-3*|one| (logits have std ~1): the split
 * changes only the order of fp32 sums (each o/down row is summed as two
 * halves and added), which moves logits by ~1e-6. A wrong head range, a
 * column slice off by a group, a KV shard reading the other's heads or a
 * vocabulary slice written to the wrong columns moves them by ~1.
 *
 * Also: the splits tensor parallelism refuses (heads that do not divide,
 * act-order columns, one group per row) fail the load with the reason,
 * and the KV cache of a split model holds each shard's heads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/split_schedule.h"
#include "../../common/t.h"
#include "kv_cache.h"
#include "model.h"

#define ATOL 1e-3
#define RTOL 1e-3

static const char *g_dir;

/* The worst |a - b| / (ATOL + RTOL |b|) over n values (<= 1 passes). */
static double worst(const float *a, const float *b, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]) / (ATOL + RTOL * fabs((double)b[i]));
    if (!(e <= w)) w = e; /* NaN fails */
  }
  return w;
}

static model *load_one(const char *name, const model_load_opts *o, bk_backend **be) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  bl_err err = {0};
  model *m = NULL;
  *be = NULL;
  if (bk_cpu_create(1, be, &err) || model_load(path, o, *be, &m, &err))
    fprintf(stderr, "%s: %s\n", name, err.msg);
  return m;
}

static bl_status load_split(const char *name, const model_load_opts *o, int32_t n, bk_backend **bes,
                            model **m, bl_err *err) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  for (int32_t i = 0; i < n; i++)
    T_CHECK(bk_cpu_create(1, &bes[i], err) == BL_OK);
  return model_load_tp(path, o, bes, n, m, err);
}

static void check_split(const char *name, model_prec prec, int32_t gs, bk_kvfmt fmt) {
  /* split 2 on both: the same group size when the loader picks it */
  model_load_opts o = {.precision = prec, .group_size = gs, .split = 2};
  bk_backend *be1, *bes[2] = {0};
  bl_err err = {0};
  model *one = load_one(name, &o, &be1), *tp = NULL;
  T_CHECK(one != NULL);
  bl_status st = load_split(name, &o, 2, bes, &tp, &err);
  T_CHECKF(st == BL_OK, "%s split 2: %s", name, err.msg);
  if (one && tp) {
    T_CHECK(model_n_shards(tp) == 2 && model_shard_backend(tp, 1) == bes[1]);
    T_CHECK(model_shard_kv_heads(tp) * 2 == one->cfg.n_kv_heads);
    T_CHECK(!strcmp(model_tp_comm_name(tp), "host"));
    T_CHECK(tp->prec == one->prec && tp->group_size == one->group_size);
    float *a = NULL, *b = NULL;
    int32_t ra = 0, rb = 0;
    bl_err e1 = {0}, e2 = {0};
    bl_status s1 = split_schedule(one, fmt, &a, &ra, &e1),
              s2 = split_schedule(tp, fmt, &b, &rb, &e2);
    T_CHECKF(s1 == BL_OK && s2 == BL_OK, "%s: %s / %s", name, e1.msg, e2.msg);
    double w = worst(b, a, (size_t)ra * (size_t)one->cfg.vocab);
    T_CHECKF(w <= 1.0, "%s %s kv %d: split logits off by %.3g of the tolerance", name,
             model_prec_name(tp->prec), (int)fmt, w);
    fprintf(stderr, "%-38s %-4s kv %d: worst %.3g of the tolerance\n", name,
            model_prec_name(tp->prec), (int)fmt, w);
    free(a);
    free(b);
  }
  model_free(one);
  model_free(tp);
  bk_destroy(be1);
  bk_destroy(bes[0]);
  bk_destroy(bes[1]);
}

/* A split that must be refused, with msg in the error. */
static void check_refused(const char *name, const model_load_opts *o, int32_t n, const char *msg) {
  bk_backend *bes[MODEL_MAX_TP + 1] = {0};
  bl_err err = {0};
  model *m = NULL;
  bl_status st = load_split(name, o, n, bes, &m, &err);
  T_CHECKF(st != BL_OK && m == NULL && strstr(err.msg, msg), "%s split %d: %s (%s)", name, n,
           bl_status_str(st), err.msg);
  for (int32_t i = 0; i < n; i++)
    bk_destroy(bes[i]);
}

/* A split KV cache: each shard's storage holds its heads on its backend,
 * and one block id reserves the block in both. */
static void check_kv_shards(void) {
  bk_backend *bes[2] = {0};
  bl_err err = {0};
  model *m = NULL;
  T_CHECK(load_split("tiny-qwen3", NULL, 2, bes, &m, &err) == BL_OK);
  if (!m) return;
  kv_pool kv;
  T_CHECK(model_kv_pool_init(m, &kv, BK_KV_FP8, BK_KVS_HEAD, 8, 5, &err) == BL_OK);
  T_CHECK(kv.n_shards == 2 && kv.bes[0] == bes[0] && kv.bes[1] == bes[1]);
  T_CHECK(kv.dev[0].n_kv_heads == 1 && kv.dev[1].n_kv_heads == 1 && kv.dev[1].n_blocks == 5);
  T_CHECK(kv.dev[0].k[0] != kv.dev[1].k[0]);
  kv_seq s = {0};
  T_CHECK(kv_seq_reserve(&kv, &s, 40) == BL_OK && kv.n_free == 0);
  T_CHECK(kv_seq_reserve(&kv, &s, 41) == BL_AGAIN);
  kv_seq_free(&kv, &s);
  kv_pool_destroy(&kv);
  model_free(m);
  bk_destroy(bes[0]);
  bk_destroy(bes[1]);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_tp TESTS_DATA_DIR\n");
    return 2;
  }
  g_dir = argv[1];
  check_split("tiny-qwen3", MODEL_PREC_AUTO, 0, BK_KV_F16);
  check_split("tiny-qwen3", MODEL_PREC_AUTO, 0, BK_KV_FP8);
  check_split("tiny-qwen3-tied", MODEL_PREC_AUTO, 0, BK_KV_F16);
  check_split("tiny-qwen3-gptq-w2-g32-sym-v1", MODEL_PREC_AUTO, 0, BK_KV_F16);
  check_split("tiny-qwen3-gptq-w2-g64-asym-v2", MODEL_PREC_AUTO, 0, BK_KV_F16);
  check_split("tiny-qwen3", MODEL_PREC_W4, 64, BK_KV_F16);
  /* group size 0: the loader picks one that fits the shards (64, not 128) */
  check_split("tiny-qwen3", MODEL_PREC_W2, 0, BK_KV_F16);
  check_kv_shards();

  check_refused("tiny-qwen3", NULL, 4, "must each divide by 4");
  check_refused("tiny-qwen3-gptq-w4-g32-asym-actorder-v1", NULL, 2, "act-order");
  check_refused("tiny-qwen3-gptq-w4-gall-sym-v2", NULL, 2, "whole quantization groups");
  model_load_opts g128 = {.precision = MODEL_PREC_W4, .group_size = 128};
  check_refused("tiny-qwen3", &g128, 2, "whole quantization groups of 128");
  check_refused("tiny-qwen3", NULL, MODEL_MAX_TP + 1, "communicator");
  return T_DONE();
}
