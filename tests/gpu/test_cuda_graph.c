/* CUDA graphs for decode steps (suite gpu).
 *
 * Two copies of a tiny Qwen3 on CUDA run one schedule: one records its
 * decode steps and replays them (model.h), the other runs every op
 * (graphs_off). The schedule: four sequences prefilled one by one (not
 * recordable: one output of several tokens), then decode steps of 2, 3 and
 * 1 sequences (each shape runs eagerly once, is recorded on its second
 * step and replayed after), then a matmul of 2048 rows on the same
 * backend, which grows its scratch (other work does that in serving) so
 * the recordings go stale, then more steps of 2 (recorded again). Every step's logits must agree,
 * and the recording model must have recorded and replayed (so the test cannot pass with graphs
 * silently off): 3 shapes + 1 re-recording after the scratch moved = 4 captures.
 *
 * Tolerance |graph - eager| <= 1e-5 * (sd + |eager|), sd the row's
 * standard deviation: a replay runs the same kernels on the same data, so
 * it is exact but for cuBLAS picking another algorithm inside a capture
 * (a reordered fp32 sum, ~1e-6). A replay reading a stale buffer or
 * another step's ids is off by whole sd.
 *
 * Last, one step drawn on the device (model_forward_sample, after a
 * replay) against the host sampler on the eager run's logits.
 *
 * Without a GPU the test prints one skip line and exits 77. Argument: the
 * tests/data folder. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gpu_harness.h"
#include "kv_cache.h"
#include "logits_cmp.h"
#include "model.h"
#include "sampler.h"
#include "t.h"

#define N_SEQ      4
#define MAX_BLOCKS 8
#define BS         16

static const int32_t k_decode_a[] = {2, 2, 2, 2, 3, 3, 3, 1, 1, 1};
static const int32_t k_decode_b[] = {2, 2, 2, 2};
#define N_STEPS   (N_SEQ + 10 + 4 + 1)
#define GROW_ROWS 2048

typedef struct run {
  model *m;
  kv_pool kv;
  kv_seq seq[N_SEQ];
  int32_t len[N_SEQ];
  float *logits; /* [N_STEPS][N_SEQ][vocab] */
  int32_t step;
} run;

/* One step of n_tok tokens over the sequences ss[0..n_seq): token t is
 * sequence ss[tok_row[t]]'s next position. Outputs: the last token of each
 * row. */
static bl_status step_sample(run *r, const int32_t *ss, int32_t n_seq, const int32_t *per_seq,
                             const bk_sample_params *sp, int32_t *drawn, bl_err *err) {
  int32_t vocab = r->m->cfg.vocab, n = 0;
  int32_t ids[64], pos[64], sq[64], slots[64], outs[N_SEQ], bt[N_SEQ * MAX_BLOCKS] = {0};
  for (int32_t i = 0; i < n_seq; i++) {
    int32_t s = ss[i];
    bl_status st = kv_seq_reserve(&r->kv, &r->seq[s], r->len[s] + per_seq[i]);
    if (st) return bl_fail(err, st, "no room in the cache");
    for (int32_t k = 0; k < per_seq[i]; k++, n++) {
      pos[n] = r->len[s] + k;
      ids[n] = (int32_t)((37u * (uint32_t)pos[n] + 101u * (uint32_t)s + 7u) % (uint32_t)vocab);
      sq[n] = i;
      slots[n] = kv_seq_slot(&r->kv, &r->seq[s], pos[n]);
    }
    outs[i] = n - 1;
    memcpy(bt + i * MAX_BLOCKS, r->seq[s].blocks, (size_t)r->seq[s].n_blocks * sizeof *bt);
  }
  model_batch b = {.n_tok = n,
                   .ids = ids,
                   .pos = pos,
                   .seq = sq,
                   .slots = slots,
                   .n_seq = n_seq,
                   .max_blocks = MAX_BLOCKS,
                   .block_tables = bt,
                   .n_out = n_seq,
                   .out_tok = outs};
  float *out = r->logits + (size_t)r->step * N_SEQ * (size_t)vocab;
  bl_status st = sp ? model_forward_sample(r->m, r->kv.dev, &b, sp, drawn, err)
                    : model_forward(r->m, r->kv.dev, &b, out, err);
  if (st) return st;
  for (int32_t i = 0; i < n_seq; i++)
    r->len[ss[i]] += per_seq[i];
  r->step++;
  return BL_OK;
}

/* A matmul of GROW_ROWS rows through down_proj on the model's backend: its
 * activations, staged in the backend's scratch, outgrow every step's. */
static bl_status grow_scratch(run *r, bl_err *err) {
  bk_backend *be = r->m->be;
  const bk_weight *w = &r->m->layers[0].down;
  float *x = be->alloc(be, (size_t)GROW_ROWS * (size_t)w->cols * 4);
  float *y = be->alloc(be, (size_t)GROW_ROWS * (size_t)w->rows * 4);
  bl_status st = x && y ? BL_OK : BL_ENOMEM;
  if (!st) st = be->memset0(be, x, (size_t)GROW_ROWS * (size_t)w->cols * 4);
  if (!st) st = be->matmul(be, y, x, w, GROW_ROWS);
  if (!st) st = be->sync(be);
  if (x) be->free(be, x);
  if (y) be->free(be, y);
  return st ? bl_fail(err, st, "a %d-row matmul on %s failed", GROW_ROWS, be->name) : BL_OK;
}

static bl_status step(run *r, const int32_t *ss, int32_t n_seq, const int32_t *per_seq,
                      bl_err *err) {
  return step_sample(r, ss, n_seq, per_seq, NULL, NULL, err);
}

static bl_status schedule(run *r, bl_err *err) {
  static const int32_t all[N_SEQ] = {0, 1, 2, 3}, ones[N_SEQ] = {1, 1, 1, 1};
  bl_status st = BL_OK;
  for (int32_t s = 0; !st && s < N_SEQ; s++) {
    int32_t five = 5;
    st = step(r, &all[s], 1, &five, err);
  }
  for (size_t i = 0; !st && i < sizeof k_decode_a / sizeof *k_decode_a; i++)
    st = step(r, all, k_decode_a[i], ones, err);
  if (!st) st = grow_scratch(r, err);
  for (size_t i = 0; !st && i < sizeof k_decode_b / sizeof *k_decode_b; i++)
    st = step(r, all, k_decode_b[i], ones, err);
  return st;
}

/* One more decode step of all sequences, drawn on the device by the first
 * run (model_forward_sample after a replay) and on the host from the
 * second's logits: greedy rows must pick the argmax, seeded rows the host
 * sampler's token (they differ only when the draw lands within float
 * rounding of a boundary, ~1e-7 per row: tests/gpu/test_cuda_sample.c). */
static void check_sample(run *r, const char *name) {
  static const int32_t all[N_SEQ] = {0, 1, 2, 3}, ones[N_SEQ] = {1, 1, 1, 1};
  const bk_sample_params sp[N_SEQ] = {{.temperature = 0.0f},
                                      {.temperature = 0.8f, .seed = 5, .pos = 9},
                                      {.temperature = 1.0f, .top_k = 40, .top_p = 0.9f, .seed = 6},
                                      {.temperature = 0.6f, .min_p = 0.1f, .seed = 8, .pos = 3}};
  int32_t drawn[N_SEQ] = {-1, -1, -1, -1};
  bl_err e1 = {0}, e2 = {0};
  bl_status s1 = step_sample(&r[0], all, N_SEQ, ones, sp, drawn, &e1);
  bl_status s2 = step(&r[1], all, N_SEQ, ones, &e2);
  T_CHECKF(!s1 && !s2, "%s: sampling step: %s / %s", name, e1.msg, e2.msg);
  if (s1 || s2) return;
  int32_t vocab = r[1].m->cfg.vocab;
  void *scratch = malloc(sampler_scratch_bytes(vocab));
  for (int32_t i = 0; scratch && i < N_SEQ; i++) {
    const float *lg = r[1].logits + ((size_t)(r[1].step - 1) * N_SEQ + (size_t)i) * (size_t)vocab;
    sampler_params hp = {.temperature = sp[i].temperature,
                         .top_k = sp[i].top_k,
                         .top_p = sp[i].top_p,
                         .min_p = sp[i].min_p,
                         .seed = sp[i].seed};
    int32_t want = sampler_sample(&hp, lg, vocab, (uint64_t)sp[i].pos, scratch);
    T_CHECKF(drawn[i] == want, "%s: row %d drew %d on the device, %d on the host", name, i,
             drawn[i], want);
  }
  free(scratch);
}

static void check(const char *dir, const char *name, model_prec prec, bk_kvfmt fmt,
                  bk_kvscale scaling) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  model_load_opts o = {.precision = prec, .group_size = 64};
  bk_backend *be[2] = {0};
  run r[2];
  memset(r, 0, sizeof r);
  bl_err err = {0};
  bool ok = true;
  for (int i = 0; ok && i < 2; i++) {
    ok = bk_cuda_create(0, &be[i], &err) == BL_OK &&
         model_load(path, &o, be[i], &r[i].m, &err) == BL_OK &&
         model_kv_pool_init(r[i].m, &r[i].kv, fmt, scaling, BS, N_SEQ * MAX_BLOCKS, &err) == BL_OK;
    if (ok) {
      r[i].m->graphs_off = i == 1;
      r[i].logits = calloc((size_t)N_STEPS * N_SEQ * (size_t)r[i].m->cfg.vocab, sizeof(float));
    }
  }
  T_CHECKF(ok, "%s: %s", name, err.msg);
  for (int i = 0; ok && i < 2; i++) {
    bl_err e = {0};
    T_CHECKF(schedule(&r[i], &e) == BL_OK, "%s (%s): %s", name, i ? "eager" : "graphs", e.msg);
  }
  if (ok) {
    double worst =
        logits_worst(r[0].logits, r[1].logits, N_STEPS * N_SEQ, r[0].m->cfg.vocab, 1e-5, 1e-5);
    const model_graph_stats *gs = &r[0].m->graph_stats, *es = &r[1].m->graph_stats;
    T_CHECKF(worst <= 1.0, "%s: replayed logits off by %.3g of the tolerance", name, worst);
    T_CHECKF(gs->captures == 4 && gs->failures == 0 && gs->replays >= 9,
             "%s: %llu captures, %llu replays, %llu failures", name,
             (unsigned long long)gs->captures, (unsigned long long)gs->replays,
             (unsigned long long)gs->failures);
    T_CHECK(es->captures == 0 && es->replays == 0);
    fprintf(stderr,
            "%-30s %-4s kv %d/%d: %llu captures, %llu replays; worst %.3g of the tolerance\n", name,
            model_prec_name(r[0].m->prec), (int)fmt, (int)scaling, (unsigned long long)gs->captures,
            (unsigned long long)gs->replays, worst);
  }
  if (ok) check_sample(r, name);
  for (int i = 0; i < 2; i++) {
    for (int s = 0; r[i].m && s < N_SEQ; s++)
      kv_seq_free(&r[i].kv, &r[i].seq[s]);
    if (r[i].kv.be) kv_pool_destroy(&r[i].kv);
    model_free(r[i].m);
    free(r[i].logits);
    bk_destroy(be[i]);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_cuda_graph TESTS_DATA_DIR\n");
    return 2;
  }
  bk_backend *probe;
  int rc = gpu_open(&probe, NULL);
  if (rc >= 0) return rc;
  bk_destroy(probe);
  check(argv[1], "tiny-qwen3", MODEL_PREC_AUTO, BK_KV_F16, BK_KVS_HEAD);
  check(argv[1], "tiny-qwen3", MODEL_PREC_W2, BK_KV_FP8, BK_KVS_TENSOR);
  check(argv[1], "tiny-qwen3-gptq-w2-g32-sym-v1", MODEL_PREC_AUTO, BK_KV_NVFP4, BK_KVS_HEAD);
  return T_DONE();
}
