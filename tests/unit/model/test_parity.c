/* Forward-pass parity with Hugging Face transformers.
 *
 * tools/ref/make_tiny_qwen3.py and make_tiny_gptq.py made small random Qwen3
 * checkpoints (bf16 sharded, fp16 tied, and four GPTQ packings) and the fp32
 * logits transformers computes for three token sequences on the same
 * (dequantized) weights. Here every position's logits must match, both from
 * one prefill of the whole sequence and from token-by-token decoding through
 * the paged KV cache.
 *
 * Tolerance |got - ref| <= 2e-2 + 1e-2*|ref| (logits have std ~1, max ~4):
 * the reference is fp32 throughout; we store K/V in fp16 (relative rounding
 * 2^-11 per element), hold asymmetric GPTQ offsets -scale*zero in fp16, and
 * sum in another order. Those give errors of order 1e-3; a wrong norm, RoPE
 * pairing, GQA mapping or packing bit gives errors of order 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/t.h"
#include "kv_cache.h"
#include "model.h"
#include "model_export.h"
#include "safetensors.h"

#define ATOL 2e-2
#define RTOL 1e-2

typedef struct ref_seq {
  const int32_t *ids;
  const float *logits;
  int32_t len;
} ref_seq;

static int32_t vocab_of(const model *m) { return m->cfg.vocab; }

/* Largest |got-ref| / (ATOL + RTOL|ref|) over n values: <= 1 passes. */
static double worst(const float *got, const float *ref, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - ref[i]) / (ATOL + RTOL * fabs((double)ref[i]));
    if (!(e <= w)) w = e; /* NaN propagates as a failure */
  }
  return w;
}

/* One prefill of the whole sequence with logits for every position. */
static double check_prefill(model *m, const ref_seq *s) {
  bl_err err = {0};
  kv_pool kv;
  int32_t bs = 16, nb = (s->len + bs - 1) / bs;
  T_CHECK(kv_pool_init(&kv, m->be, BK_KV_F16, m->cfg.n_layers, m->cfg.n_kv_heads, m->cfg.head_dim,
                       bs, nb + 2, &err) == BL_OK);
  kv_seq seq = {0};
  T_CHECK(kv_seq_reserve(&kv, &seq, s->len) == BL_OK);
  int32_t *pos = malloc((size_t)s->len * 4 * 4), *sq = pos + s->len, *slots = sq + s->len,
          *out = slots + s->len;
  for (int32_t t = 0; t < s->len; t++) {
    pos[t] = t;
    sq[t] = 0;
    slots[t] = kv_seq_slot(&kv, &seq, t);
    out[t] = t;
  }
  float *logits = malloc((size_t)s->len * (size_t)vocab_of(m) * sizeof *logits);
  model_batch b = {.n_tok = s->len,
                   .ids = s->ids,
                   .pos = pos,
                   .seq = sq,
                   .slots = slots,
                   .n_seq = 1,
                   .max_blocks = seq.n_blocks,
                   .block_tables = seq.blocks,
                   .n_out = s->len,
                   .out_tok = out};
  double w = 1e9;
  if (model_forward(m, kv.dev, &b, logits, &err) == BL_OK)
    w = worst(logits, s->logits, (size_t)s->len * (size_t)vocab_of(m));
  else
    fprintf(stderr, "forward: %s\n", err.msg);
  free(logits);
  free(pos);
  kv_seq_free(&kv, &seq);
  kv_pool_destroy(&kv);
  return w;
}

/* Token by token: each step appends one token and reads the cache. The
 * sequence is placed in blocks allocated after a dummy sequence's, so block
 * ids are not the identity. */
static double check_decode(model *m, const ref_seq *s) {
  bl_err err = {0};
  kv_pool kv;
  int32_t bs = 4, nb = (s->len + bs - 1) / bs;
  T_CHECK(kv_pool_init(&kv, m->be, BK_KV_F16, m->cfg.n_layers, m->cfg.n_kv_heads, m->cfg.head_dim,
                       bs, 2 * nb + 3, &err) == BL_OK);
  kv_seq other = {0}, seq = {0};
  T_CHECK(kv_seq_reserve(&kv, &other, 3 * bs) == BL_OK);
  float *logits = malloc((size_t)vocab_of(m) * sizeof *logits);
  double w = 0;
  for (int32_t t = 0; t < s->len; t++) {
    T_CHECK(kv_seq_reserve(&kv, &seq, t + 1) == BL_OK);
    int32_t slot = kv_seq_slot(&kv, &seq, t), zero = 0, one_seq = 0;
    model_batch b = {.n_tok = 1,
                     .ids = &s->ids[t],
                     .pos = &t,
                     .seq = &one_seq,
                     .slots = &slot,
                     .n_seq = 1,
                     .max_blocks = seq.n_blocks,
                     .block_tables = seq.blocks,
                     .n_out = 1,
                     .out_tok = &zero};
    if (model_forward(m, kv.dev, &b, logits, &err) != BL_OK) {
      fprintf(stderr, "forward: %s\n", err.msg);
      w = 1e9;
      break;
    }
    double e = worst(logits, s->logits + (size_t)t * (size_t)vocab_of(m), (size_t)vocab_of(m));
    if (!(e <= w)) w = e;
  }
  free(logits);
  kv_seq_free(&kv, &other);
  kv_seq_free(&kv, &seq);
  kv_pool_destroy(&kv);
  return w;
}

static void check_model(bk_backend *be, const char *dir, const char *name, model_prec prec) {
  char path[1024], ref_path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(ref_path, sizeof ref_path, "%s/%s.ref.safetensors", dir, name);
  bl_err err = {0};
  model *m = NULL;
  st_set *ref = NULL;
  model_load_opts opts = {.precision = prec};
  T_CHECKF(model_load(path, &opts, be, &m, &err) == BL_OK, "%s: %s", name, err.msg);
  T_CHECKF(st_open_file(ref_path, &ref, &err) == BL_OK, "%s", err.msg);
  if (!m || !ref) goto done;
  for (int i = 0; i < 3; i++) {
    char ids_name[32], log_name[32];
    snprintf(ids_name, sizeof ids_name, "seq%d.ids", i);
    snprintf(log_name, sizeof log_name, "seq%d.logits", i);
    const st_tensor *ti = st_find(ref, ids_name), *tl = st_find(ref, log_name);
    T_CHECK(ti && tl && tl->shape[1] == m->cfg.vocab);
    if (!ti || !tl) continue;
    ref_seq s = {.ids = ti->data, .logits = tl->data, .len = (int32_t)ti->shape[0]};
    double wp = check_prefill(m, &s), wd = check_decode(m, &s);
    fprintf(stderr,
            "%-42s %-5s seq%d (%2d tokens): worst error/tolerance prefill %.3f decode %.3f\n", name,
            model_prec_name(m->prec), i, s.len, wp, wd);
    T_CHECKF(wp <= 1.0 && wd <= 1.0, "%s seq%d", name, i);
  }
done:
  model_free(m);
  st_close(ref);
}

/* A model quantized in memory and the same model written by `ballast
 * quantize` and read back must give identical logits: the export and the
 * loader agree on every bit of the GPTQ packing. */
static void check_export_roundtrip(bk_backend *be, const char *dir) {
  char src[1024], out[] = "/tmp/ballast-export-XXXXXX";
  snprintf(src, sizeof src, "%s/tiny-qwen3", dir);
  T_CHECK(mkdtemp(out) != NULL);
  bl_err err = {0};
  for (int bits = 2; bits <= 4; bits += 2) {
    model *fp = NULL, *mem = NULL, *back = NULL;
    model_load_opts o16 = {.precision = MODEL_PREC_FP16};
    model_load_opts oq = {
        .precision = bits == 4 ? MODEL_PREC_W4 : MODEL_PREC_W2, .group_size = 64, .sym = bits == 2};
    model_export_opts eo = {.bits = bits, .group_size = 64, .sym = bits == 2};
    T_CHECKF(model_load(src, &o16, be, &fp, &err) == BL_OK, "%s", err.msg);
    T_CHECKF(fp && model_export_gptq(fp, out, &eo, &err) == BL_OK, "%s", err.msg);
    T_CHECKF(model_load(src, &oq, be, &mem, &err) == BL_OK, "%s", err.msg);
    T_CHECKF(model_load(out, NULL, be, &back, &err) == BL_OK, "%s", err.msg);
    if (mem && back) {
      T_CHECK(back->prec == mem->prec && back->group_size == 64);
      int32_t ids[5] = {1, 17, 300, 2000, 5};
      ref_seq s = {.ids = ids, .len = 5};
      float *a = malloc((size_t)5 * 2048 * 4);
      /* Use the decode check against the in-memory model's own prefill. */
      int32_t pos[5] = {0, 1, 2, 3, 4}, sq[5] = {0}, out_tok[5] = {0, 1, 2, 3, 4};
      kv_pool kv;
      kv_seq seq = {0};
      kv_pool_init(&kv, be, BK_KV_F16, mem->cfg.n_layers, mem->cfg.n_kv_heads, mem->cfg.head_dim,
                   16, 1, &err);
      kv_seq_reserve(&kv, &seq, 5);
      int32_t slots[5] = {0, 1, 2, 3, 4};
      model_batch b = {.n_tok = 5,
                       .ids = ids,
                       .pos = pos,
                       .seq = sq,
                       .slots = slots,
                       .n_seq = 1,
                       .max_blocks = 1,
                       .block_tables = seq.blocks,
                       .n_out = 5,
                       .out_tok = out_tok};
      T_CHECK(model_forward(mem, kv.dev, &b, a, &err) == BL_OK);
      s.logits = a;
      double w = check_prefill(back, &s);
      fprintf(stderr, "export round trip w%d: worst error/tolerance %.2e\n", bits, w);
      T_CHECK(w < 1e-4);
      kv_seq_free(&kv, &seq);
      kv_pool_destroy(&kv);
      free(a);
    }
    model_free(fp);
    model_free(mem);
    model_free(back);
  }
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
  T_CHECK(system(cmd) == 0);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/data";
  bl_err err = {0};
  bk_backend *be = NULL;
  if (bk_cpu_create(0, &be, &err) != BL_OK) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  if (argc > 2) { /* named folders only (tools/ref/check_gptq_export.py) */
    for (int i = 2; i < argc; i++)
      check_model(be, dir, argv[i], MODEL_PREC_AUTO);
    bk_destroy(be);
    return T_DONE();
  }
  check_model(be, dir, "tiny-qwen3", MODEL_PREC_AUTO);
  check_model(be, dir, "tiny-qwen3-tied", MODEL_PREC_AUTO);
  check_model(be, dir, "tiny-qwen3-gptq-w4-g32-asym-actorder-v1", MODEL_PREC_AUTO);
  check_model(be, dir, "tiny-qwen3-gptq-w2-g32-sym-v1", MODEL_PREC_AUTO);
  check_model(be, dir, "tiny-qwen3-gptq-w4-gall-sym-v2", MODEL_PREC_AUTO);
  check_model(be, dir, "tiny-qwen3-gptq-w2-g64-asym-v2", MODEL_PREC_AUTO);
  /* GPTQ dequantized to fp16 at load: the same reference holds. */
  check_model(be, dir, "tiny-qwen3-gptq-w4-g32-asym-actorder-v1", MODEL_PREC_FP16);
  check_model(be, dir, "tiny-qwen3-gptq-w2-g64-asym-v2", MODEL_PREC_FP16);
  check_export_roundtrip(be, dir);
  bk_destroy(be);
  return T_DONE();
}
