/* Synthetic models: random weights with the exact shapes of real configs,
 * built directly in the target format, for benchmarks that measure speed
 * (bytes moved, not answers). Shapes from FORMATS.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bl_half.h"
#include "model_internal.h"

typedef struct synth_shape {
  const char *name;
  int32_t layers, hidden, inter, heads, kv_heads, head_dim, vocab;
  bool tied;
  float theta;
} synth_shape;

static const synth_shape k_shapes[] = {
    {"qwen3-0.6b", 28, 1024, 3072, 16, 8, 128, 151936, true, 1e6f},
    {"qwen3-1.7b", 28, 2048, 6144, 16, 8, 128, 151936, true, 1e6f},
    {"qwen3-4b", 36, 2560, 9728, 32, 8, 128, 151936, true, 1e6f},
    {"qwen3-8b", 36, 4096, 12288, 32, 8, 128, 151936, false, 1e6f},
    {"qwen3-14b", 40, 5120, 17408, 40, 8, 128, 151936, false, 1e6f},
    {"qwen3-32b", 64, 5120, 25600, 64, 8, 128, 151936, false, 1e6f},
    {"smollm2-135m", 30, 576, 1536, 9, 3, 64, 49152, true, 1e5f},
};

/* xorshift64*: fast, and good enough for filler weights. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

/* Random fp16 of trained weights' scale, built from the bits (4 values per
 * draw; a float conversion per value made a 32B model take minutes): sign
 * and mantissa random, exponent 6..9, so magnitudes in [2^-9, 2^-5),
 * about 0.002 to 0.03. */
static void fill_f16(uint16_t *dst, size_t n, uint64_t *rng) {
  for (size_t i = 0; i < n; i += 4) {
    uint64_t r = rng_next(rng);
    for (size_t j = 0; j < 4 && i + j < n; j++, r >>= 16) {
      uint16_t b = (uint16_t)r;
      dst[i + j] = (uint16_t)((b & 0x83FF) | ((6 + ((b >> 10) & 3)) << 10));
    }
  }
}

static bl_status synth_weight(model_store *s, bk_wfmt fmt, int32_t rows, int32_t cols, int32_t gs,
                              uint64_t *rng, bk_weight *w, bl_err *err) {
  *w = (bk_weight){.fmt = fmt, .rows = rows, .cols = cols, .group_size = fmt == BK_WF_F16 ? 0 : gs};
  size_t bytes = bk_weight_row_bytes(fmt, cols) * (size_t)rows;
  void *q = store_alloc(s, bytes);
  if (!q) return bl_fail(err, BL_ENOMEM, "synthetic: out of memory (%zu bytes)", bytes);
  w->q = q;
  if (fmt == BK_WF_F16) {
    fill_f16(q, (size_t)rows * (size_t)cols, rng);
    return BL_OK;
  }
  uint64_t *q64 = q;
  for (size_t i = 0; i < bytes / 8; i++)
    q64[i] = rng_next(rng);
  size_t ng = (size_t)rows * (size_t)(cols / gs);
  uint16_t *sc = store_alloc(s, ng * 2), *mn = store_alloc(s, ng * 2);
  if (!sc || !mn) return bl_fail(err, BL_ENOMEM, "synthetic: out of memory");
  float step = 0.04f / (float)((1 << bk_wfmt_bits(fmt)) - 1);
  for (size_t i = 0; i < ng; i++) {
    sc[i] = bl_float_to_half(step);
    mn[i] = bl_float_to_half(-0.02f);
  }
  w->scales = sc;
  w->mins = mn;
  return BL_OK;
}

static bl_status synth_vec(model *m, int32_t n, float **dev, bl_err *err) {
  float *host = malloc((size_t)n * sizeof *host);
  if (!host) return bl_fail(err, BL_ENOMEM, "synthetic: out of memory");
  for (int32_t i = 0; i < n; i++)
    host[i] = 1.0f;
  *dev = m->be->alloc(m->be, (size_t)n * 4);
  bl_status st = *dev ? m->be->upload(m->be, *dev, host, (size_t)n * 4) : BL_ENOMEM;
  free(host);
  return st ? bl_fail(err, st, "synthetic: cannot place a norm on %s", m->be->name) : BL_OK;
}

bl_status model_synthetic_config(const char *name, model_config *c, bl_err *err) {
  const synth_shape *sh = NULL;
  for (size_t i = 0; i < sizeof k_shapes / sizeof *k_shapes; i++)
    if (strcmp(k_shapes[i].name, name) == 0) sh = &k_shapes[i];
  if (!sh)
    return bl_fail(err, BL_EINVAL,
                   "unknown synthetic model \"%s\" (qwen3-0.6b ... qwen3-32b, smollm2-135m)", name);
  *c = (model_config){.arch = strncmp(name, "qwen3", 5) == 0 ? MODEL_ARCH_QWEN3 : MODEL_ARCH_LLAMA,
                      .n_layers = sh->layers,
                      .hidden = sh->hidden,
                      .intermediate = sh->inter,
                      .n_heads = sh->heads,
                      .n_kv_heads = sh->kv_heads,
                      .head_dim = sh->head_dim,
                      .vocab = sh->vocab,
                      .max_ctx = 32768,
                      .rope_theta = sh->theta,
                      .norm_eps = 1e-6f,
                      .tied = sh->tied,
                      .bos_id = -1};
  c->qk_norm = c->arch == MODEL_ARCH_QWEN3;
  return BL_OK;
}

bl_status model_synthetic(const char *name, model_prec prec, int32_t group_size, bk_backend *be,
                          model **out, bl_err *err) {
  model_config cfg;
  *out = NULL;
  bl_status st = model_synthetic_config(name, &cfg, err);
  if (st) return st;
  char path[64];
  snprintf(path, sizeof path, "synthetic:%s", name);
  model *m = NULL;
  if ((st = model_new(path, be, &m, err))) return st;
  model_config *c = &m->cfg;
  *c = cfg;
  m->prec = prec == MODEL_PREC_AUTO ? MODEL_PREC_FP16 : prec;
  bk_wfmt fmt = m->prec == MODEL_PREC_W4   ? BK_WF_W4
                : m->prec == MODEL_PREC_W2 ? BK_WF_W2
                                           : BK_WF_F16;
  m->group_size = fmt == BK_WF_F16 ? 0 : (group_size ? group_size : model_auto_group_size(c));
  if (fmt != BK_WF_F16 && !model_group_size_fits(c, m->group_size)) {
    st = bl_fail(err, BL_EINVAL,
                 "synthetic %s: group size %d does not divide the layer widths (hidden %d, "
                 "intermediate %d, q %d)",
                 name, m->group_size, c->hidden, c->intermediate, c->n_heads * c->head_dim);
    goto fail;
  }
  uint64_t rng = 0x5eed5eed12345678ull;
  int32_t qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
  if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) {
    st = bl_fail(err, BL_ENOMEM, "synthetic: out of memory");
    goto fail;
  }
  for (int32_t l = 0; l < c->n_layers && !st; l++) {
    model_layer *ly = &m->layers[l];
    int32_t gs = m->group_size;
    if ((st = synth_weight(m->store, fmt, qd, c->hidden, gs, &rng, &ly->wq, err)) ||
        (st = synth_weight(m->store, fmt, kvd, c->hidden, gs, &rng, &ly->wk, err)) ||
        (st = synth_weight(m->store, fmt, kvd, c->hidden, gs, &rng, &ly->wv, err)) ||
        (st = synth_weight(m->store, fmt, c->hidden, qd, gs, &rng, &ly->wo, err)) ||
        (st = synth_weight(m->store, fmt, c->intermediate, c->hidden, gs, &rng, &ly->gate, err)) ||
        (st = synth_weight(m->store, fmt, c->intermediate, c->hidden, gs, &rng, &ly->up, err)) ||
        (st = synth_weight(m->store, fmt, c->hidden, c->intermediate, gs, &rng, &ly->down, err)) ||
        (st = synth_vec(m, c->hidden, &ly->attn_norm, err)) ||
        (st = synth_vec(m, c->hidden, &ly->ffn_norm, err)))
      goto fail;
    if (c->qk_norm && ((st = synth_vec(m, c->head_dim, &ly->q_norm, err)) ||
                       (st = synth_vec(m, c->head_dim, &ly->k_norm, err))))
      goto fail;
  }
  if ((st = synth_weight(m->store, BK_WF_F16, c->vocab, c->hidden, 0, &rng, &m->embed, err)))
    goto fail;
  if (c->tied)
    m->lm_head = m->embed;
  else if ((st = synth_weight(m->store, BK_WF_F16, c->vocab, c->hidden, 0, &rng, &m->lm_head, err)))
    goto fail;
  if ((st = synth_vec(m, c->hidden, &m->final_norm, err))) goto fail;
  if ((st = model_prepare_weights(m, err))) goto fail;
  *out = m;
  return BL_OK;
fail:
  model_free(m);
  return st;
}
