/* GPTQ over a whole model: calibration tokens, Hessians from the forward
 * pass's capture hook, the solver per linear, and the quantized weights
 * swapped back into the model as it goes.
 *
 * Sequential, as GPTQ's reference and GPTQModel's true_sequential do: the
 * calibration residual stream X [n_tokens][hidden] is kept on the host and
 * pushed through one decoder layer at a time. Within layer l the linears are
 * quantized in the order their inputs are computed, each Hessian taken with
 * everything before it already quantized:
 *   q,k,v (input rmsnorm(x)) -> o (attention output) -> gate,up -> down,
 * one pass of layer l per group, then a fifth pass through the fully
 * quantized layer gives layer l+1's input. So every Hessian sees the errors
 * of all earlier quantization, at 5 layer passes per layer (5 forward passes
 * over the calibration set in all).
 *
 * Memory: one Hessian at a time (in^2 doubles: 1.2 GB for an 8B model's
 * down_proj, 134 MB for its 4096-wide inputs), then its float inverse
 * factor (half that, shared by the group's linears, the Hessian freed), and
 * the residual stream (64 MB for 4096 tokens of hidden 4096): under 2 GB
 * beyond the model for an 8B model. The quantized weights are added to the
 * model's store (smaller than the fp16 ones they replace, which stay
 * mapped). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bl_half.h"
#include "bl_log.h"
#include "kv_cache.h"
#include "model_export.h"
#include "model_internal.h"

/* ---- calibration tokens -------------------------------------------------- */

bl_status model_calib_from_text(const model *m, const char *text, size_t len, int32_t n_tokens,
                                int32_t seq_len, int32_t **ids, int32_t *n_ids, bl_err *err) {
  *ids = NULL;
  *n_ids = 0;
  if (!m->tok)
    return bl_fail(err, BL_EINVAL, "%s has no tokenizer to read calibration text", m->path);
  if (n_tokens <= 0 || seq_len <= 0)
    return bl_fail(err, BL_EINVAL, "calibration: no tokens asked for");
  int32_t *all = NULL;
  size_t n_all = 0;
  bl_status st = tok_encode(m->tok, text, len, false, &all, &n_all, err);
  if (st) return st;
  if (n_all == 0) {
    free(all);
    return bl_fail(err, BL_EINVAL, "calibration: the text holds no tokens");
  }
  if (n_all <= (size_t)n_tokens) { /* everything there is */
    if (n_all < (size_t)n_tokens)
      bl_log(BL_LOG_WARN, "calibration text gives %zu tokens, fewer than the %d asked for", n_all,
             n_tokens);
    *ids = all;
    *n_ids = (int32_t)n_all;
    return BL_OK;
  }
  /* Windows of seq_len spread evenly over the text, so the sample covers it
   * all rather than its first pages. */
  int32_t *out = malloc((size_t)n_tokens * sizeof *out);
  if (!out) {
    free(all);
    return bl_fail(err, BL_ENOMEM, "calibration: out of memory");
  }
  int32_t n_seq = (n_tokens + seq_len - 1) / seq_len;
  for (int32_t k = 0; k < n_seq; k++) {
    int32_t len_k = n_tokens - k * seq_len < seq_len ? n_tokens - k * seq_len : seq_len;
    size_t start = n_seq > 1 ? (n_all - (size_t)len_k) * (size_t)k / (size_t)(n_seq - 1) : 0;
    memcpy(out + (size_t)k * (size_t)seq_len, all + start, (size_t)len_k * sizeof *out);
  }
  free(all);
  *ids = out;
  *n_ids = n_tokens;
  return BL_OK;
}

void model_calib_random(const model *m, int32_t n, uint64_t seed, int32_t *ids) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int32_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
    ids[i] = (int32_t)(x % (uint64_t)m->cfg.vocab);
  }
}

/* ---- the sequential driver ----------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct hess_acc {
  double *S; /* [dim][dim], upper triangle */
  int32_t dim;
  int64_t n;
  int n_threads;
} hess_acc;

static void on_capture(void *ctx, int32_t layer, int which, const float *x, int32_t n_tok,
                       int32_t dim) {
  hess_acc *h = ctx;
  if (dim != h->dim) return; /* cannot happen: one point per pass */
  gptq_hessian_add(h->S, dim, x, n_tok, h->n_threads);
  h->n += n_tok;
}

/* The calibration set as sequences of at most seq_len tokens through a
 * one-sequence KV pool (sequences run one after another, reusing it). */
typedef struct calib_run {
  model *m;
  kv_pool kv;
  kv_seq seq;
  const int32_t *ids;
  int32_t n_ids, seq_len;
  int32_t *pos, *seqs, *slots; /* [seq_len] */
  float *x;                    /* residual stream [n_ids][hidden] */
} calib_run;

static void run_free(calib_run *r) {
  if (r->kv.be) {
    kv_seq_free(&r->kv, &r->seq);
    kv_pool_destroy(&r->kv);
  }
  free(r->pos);
  free(r->x);
}

static bl_status run_init(calib_run *r, model *m, const int32_t *ids, int32_t n_ids,
                          int32_t seq_len, bl_err *err) {
  const model_config *c = &m->cfg;
  *r = (calib_run){.m = m, .ids = ids, .n_ids = n_ids, .seq_len = seq_len};
  int32_t bs = 16;
  bl_status st = kv_pool_init(&r->kv, m->be, BK_KV_F16, c->n_layers, c->n_kv_heads, c->head_dim, bs,
                              (seq_len + bs - 1) / bs, err);
  if (st) return st;
  if ((st = kv_seq_reserve(&r->kv, &r->seq, seq_len)))
    return bl_fail(err, st, "calibration: no KV blocks for %d tokens", seq_len);
  r->pos = malloc((size_t)seq_len * 3 * sizeof *r->pos);
  r->x = malloc((size_t)n_ids * (size_t)c->hidden * sizeof *r->x);
  if (!r->pos || !r->x)
    return bl_fail(err, BL_ENOMEM, "calibration: out of memory for %d tokens", n_ids);
  r->seqs = r->pos + seq_len;
  r->slots = r->pos + 2 * seq_len;
  for (int32_t t = 0; t < seq_len; t++) {
    r->pos[t] = t;
    r->seqs[t] = 0;
    r->slots[t] = kv_seq_slot(&r->kv, &r->seq, t);
  }
  return BL_OK;
}

/* Layer l (or the embedding alone when l < 0) over every calibration
 * sequence. write: store the layer's output as the next residual stream. */
static bl_status run_layer(calib_run *r, int32_t l, bool write, bl_err *err) {
  size_t hid = (size_t)r->m->cfg.hidden;
  for (int32_t t0 = 0; t0 < r->n_ids; t0 += r->seq_len) {
    int32_t n = r->n_ids - t0 < r->seq_len ? r->n_ids - t0 : r->seq_len;
    model_batch b = {.n_tok = n,
                     .ids = r->ids + t0,
                     .pos = r->pos,
                     .seq = r->seqs,
                     .slots = r->slots,
                     .n_seq = 1,
                     .max_blocks = r->seq.n_blocks,
                     .block_tables = r->seq.blocks};
    float *x = r->x + (size_t)t0 * hid;
    bl_status st =
        l < 0 ? model_forward_layers(r->m, r->kv.dev, &b, 0, 0, NULL, x, err)
              : model_forward_layers(r->m, r->kv.dev, &b, l, l + 1, x, write ? x : NULL, err);
    if (st) return st;
  }
  return BL_OK;
}

/* Replace *w with ql in the backend's canonical layout (what the exported
 * folder loads as), so later passes run through the quantized linear. */
static bl_status swap_weight(model *m, bk_weight *w, const qlinear *ql, bl_err *err) {
  bk_wfmt fmt = ql->bits == 4 ? BK_WF_W4 : BK_WF_W2;
  int32_t in = ql->in, out = ql->out, ng = ql->n_groups;
  if ((ql->bits != 2 && ql->bits != 4) || ql->group_size % BK_QBLOCK || in % ql->group_size)
    return bl_fail(err, BL_EUNSUPPORTED,
                   "gptq: %d bits, group %d over %d inputs has no in-memory layout", ql->bits,
                   ql->group_size, in);
  size_t rb = bk_weight_row_bytes(fmt, in);
  uint8_t *q = store_alloc(m->store, rb * (size_t)out);
  uint16_t *sc = store_alloc(m->store, (size_t)out * (size_t)ng * 2);
  uint16_t *mn = store_alloc(m->store, (size_t)out * (size_t)ng * 2);
  if (!q || !sc || !mn) return bl_fail(err, BL_ENOMEM, "gptq: out of memory");
  for (int32_t n = 0; n < out; n++) {
    bk_pack_row(fmt, ql->q + (size_t)n * (size_t)in, in, q + (size_t)n * rb);
    for (int32_t g = 0; g < ng; g++) {
      uint16_t s16 = ql->scales[(size_t)g * (size_t)out + (size_t)n];
      sc[(size_t)n * (size_t)ng + (size_t)g] = s16;
      mn[(size_t)n * (size_t)ng + (size_t)g] = bl_float_to_half(
          -bl_half_to_float(s16) * (float)ql->zeros[(size_t)g * (size_t)out + (size_t)n]);
    }
  }
  bk_weight nw = {.fmt = fmt,
                  .rows = out,
                  .cols = in,
                  .group_size = ql->group_size,
                  .q = q,
                  .scales = sc,
                  .mins = mn};
  bk_backend *be = m->be;
  if (be->weight_prepare && be->weight_prepare(be, &nw))
    return bl_fail(err, BL_EDEVICE, "gptq: cannot place a quantized weight on %s", be->name);
  if (w->dev && be->weight_release) be->weight_release(be, w);
  *w = nw;
  return BL_OK;
}

static bk_weight *layer_linear(model_layer *ly, int lin) {
  bk_weight *ws[MODEL_LIN_N] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->gate, &ly->up, &ly->down};
  return ws[lin];
}

/* Quantize linear lin of layer l with its input's inverse Hessian factor
 * and hand it to emit. */
static bl_status quantize_linear(model *m, const gptq_calib *c, int32_t l, int lin,
                                 const gptq_hinv *h, gptq_emit_fn emit, void *ctx, bl_err *err) {
  bk_weight *w = layer_linear(&m->layers[l], lin);
  int32_t in = w->cols, out = w->rows;
  qlinear ql = {0};
  float *W = malloc((size_t)in * (size_t)out * sizeof *W);
  bl_status st = qlinear_alloc(&ql, c->p.bits, in, out, c->p.group_size);
  if (!W || st) {
    st = bl_fail(err, BL_ENOMEM, "gptq: out of memory for a %d x %d linear", out, in);
    goto done;
  }
  /* Rows are read in packed order, which is the natural order unless the
   * weight came from an act-order GPTQ file. */
  if (w->perm) {
    st = bl_fail(err, BL_EUNSUPPORTED, "gptq: layer %d %s is act-order quantized; load it as fp16",
                 l, model_linear_short[lin]);
    goto done;
  }
  for (int32_t r = 0; r < out; r++)
    bk_weight_row_f32(w, r, W + (size_t)r * (size_t)in);
  double loss = 0;
  if ((st = gptq_quantize(&c->p, h, W, &ql, &loss, err))) goto done;
  if (c->verbose)
    bl_log(BL_LOG_INFO, "gptq: layer %d %-5s %5d x %-5d loss %.4g", l, model_linear_short[lin], out,
           in, loss);
  if ((st = emit(ctx, l, lin, &ql, err))) goto done;
  st = swap_weight(m, w, &ql, err);
done:
  free(W);
  qlinear_free(&ql);
  return st;
}

bl_status model_gptq_run(model *m, const gptq_calib *c, gptq_emit_fn emit, void *ctx, bl_err *err) {
  const model_config *mc = &m->cfg;
  if (c->n_ids <= 0 || c->seq_len <= 0)
    return bl_fail(err, BL_EINVAL, "gptq: no calibration tokens");
  for (int32_t i = 0; i < c->n_ids; i++)
    if (c->ids[i] < 0 || c->ids[i] >= mc->vocab)
      return bl_fail(err, BL_EINVAL, "gptq: calibration id %d outside the vocabulary (%d)",
                     c->ids[i], mc->vocab);
  double t0 = now_s();
  calib_run r;
  bl_status st = run_init(&r, m, c->ids, c->n_ids, c->seq_len, err);
  if (!st) st = run_layer(&r, -1, true, err);
  /* Capture point -> its linears and input width. */
  static const int group_lins[MODEL_CAP_N][4] = {{MODEL_LIN_Q, MODEL_LIN_K, MODEL_LIN_V, -1},
                                                 {MODEL_LIN_O, -1},
                                                 {MODEL_LIN_GATE, MODEL_LIN_UP, -1},
                                                 {MODEL_LIN_DOWN, -1}};
  int32_t dims[MODEL_CAP_N] = {mc->hidden, mc->n_heads * mc->head_dim, mc->hidden,
                               mc->intermediate};
  for (int32_t l = 0; l < mc->n_layers && !st; l++) {
    for (int g = 0; g < MODEL_CAP_N && !st; g++) {
      size_t dim = (size_t)dims[g];
      hess_acc acc = {
          .S = calloc(dim * dim, sizeof(double)), .dim = dims[g], .n_threads = c->p.n_threads};
      if (!acc.S) {
        st = bl_fail(err, BL_ENOMEM, "gptq: out of memory for a %zu x %zu Hessian", dim, dim);
        break;
      }
      model_capture cap = {.fn = on_capture, .ctx = &acc, .points = 1u << g};
      m->capture = &cap;
      st = run_layer(&r, l, false, err);
      m->capture = NULL;
      /* H = 2/n X^T X, upper triangle only (all the solver reads); its
       * factor serves every linear of the group, and H can go before them. */
      double f = 2.0 / (double)(acc.n > 0 ? acc.n : 1);
      for (size_t i = 0; i < dim; i++)
        for (size_t j = i; j < dim; j++)
          acc.S[i * dim + j] *= f;
      gptq_hinv h = {0};
      if (!st) st = gptq_hinv_build(acc.S, dims[g], &c->p, &h, err);
      free(acc.S);
      if (!st && c->verbose && h.damp > (c->p.damp > 0 ? c->p.damp : 0.01))
        bl_log(BL_LOG_WARN, "gptq: layer %d: Hessian needed damp %g to factor", l, h.damp);
      for (int k = 0; k < 4 && group_lins[g][k] >= 0 && !st; k++)
        st = quantize_linear(m, c, l, group_lins[g][k], &h, emit, ctx, err);
      gptq_hinv_free(&h);
    }
    if (!st) st = run_layer(&r, l, true, err);
    if (!st && c->verbose)
      bl_log(BL_LOG_INFO, "gptq: layer %d/%d quantized (%.1f s so far)", l + 1, mc->n_layers,
             now_s() - t0);
  }
  m->capture = NULL;
  run_free(&r);
  return st;
}
