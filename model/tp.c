/* Tensor parallelism: one model split across the backends of a replica.
 *
 * The unsplit model is loaded once on a host CPU backend, in the canonical
 * bk_weight layout (model.h says how it is cut). A shard's weights are
 * views of those host arrays where the cut is by rows (q/k/v, gate/up,
 * lm_head: a contiguous range of rows, so only pointers move) and copies
 * where it is by columns (o, down: each row's slice of packed bytes and
 * its groups' scales), then each shard's backend prepares its own device
 * copy as for any model. A column cut must fall on quantization group
 * boundaries and cannot follow an act-order permutation, so those are
 * refused with the layer named. The host model stays for the shards' life:
 * a CPU shard reads its views in place. */
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

_Static_assert(MODEL_MAX_TP <= BK_COMM_MAX && MODEL_MAX_TP <= KV_MAX_SHARDS,
               "a communicator rank and a KV shard per model shard");

bl_status model_tp_check(const model_config *c, int32_t group_size, int32_t n, bl_err *err) {
  if (n < 1 || n > MODEL_MAX_TP)
    return bl_fail(err, BL_EINVAL, "tensor parallelism: %d shards (1..%d)", n, MODEL_MAX_TP);
  if (c->n_heads % n || c->n_kv_heads % n || c->intermediate % n)
    return bl_fail(err, BL_EINVAL,
                   "tensor parallelism %d: the model's %d heads, %d kv heads and intermediate "
                   "width %d must each divide by %d",
                   n, c->n_heads, c->n_kv_heads, c->intermediate, n);
  if (c->vocab < n)
    return bl_fail(err, BL_EINVAL, "tensor parallelism %d: a vocabulary of %d", n, c->vocab);
  if (group_size == 0 || n == 1) return BL_OK;
  int32_t q_cols = c->n_heads / n * c->head_dim, ff_cols = c->intermediate / n;
  if (group_size < 0 || q_cols % group_size || ff_cols % group_size)
    return bl_fail(err, BL_EINVAL,
                   "tensor parallelism %d: each shard's o_proj input (%d) and down_proj input (%d) "
                   "must be whole quantization groups of %d",
                   n, q_cols, ff_cols, group_size < 0 ? c->hidden : group_size);
  return BL_OK;
}

/* Rows [r0, r1) of w: a view of its arrays (the permutation is shared). */
static bk_weight split_rows(const bk_weight *w, int32_t r0, int32_t r1) {
  bk_weight o = *w;
  size_t row = w->fmt == BK_WF_F16 ? 2 * (size_t)w->cols : bk_weight_row_bytes(w->fmt, w->cols);
  o.rows = r1 - r0;
  o.q = (const uint8_t *)w->q + (size_t)r0 * row;
  if (w->fmt != BK_WF_F16) {
    size_t ng = (size_t)(w->cols / w->group_size);
    o.scales = w->scales + (size_t)r0 * ng;
    o.mins = w->mins + (size_t)r0 * ng;
  }
  o.dev = NULL;
  return o;
}

/* Columns [c0, c1) of w, copied into store: each row's packed bytes and
 * the scales and mins of its groups. */
static bl_status split_cols(const bk_weight *w, int32_t c0, int32_t c1, model_store *store,
                            const char *what, int32_t layer, bk_weight *out, bl_err *err) {
  if (w->perm)
    return bl_fail(err, BL_EUNSUPPORTED,
                   "tensor parallelism: layer %d %s has an act-order column permutation; its "
                   "columns cannot be split (use a checkpoint without desc_act)",
                   layer, what);
  bool quant = w->fmt != BK_WF_F16;
  if (quant && (c0 % w->group_size || c1 % w->group_size))
    return bl_fail(err, BL_EINVAL,
                   "tensor parallelism: layer %d %s: columns [%d, %d) are not whole groups of %d",
                   layer, what, c0, c1, w->group_size);
  size_t rows = (size_t)w->rows;
  size_t full = quant ? bk_weight_row_bytes(w->fmt, w->cols) : 2 * (size_t)w->cols;
  size_t part = quant ? bk_weight_row_bytes(w->fmt, c1 - c0) : 2 * (size_t)(c1 - c0);
  size_t skip = quant ? bk_weight_row_bytes(w->fmt, c0) : 2 * (size_t)c0;
  uint8_t *q = store_alloc(store, rows * part);
  if (!q) return bl_fail(err, BL_ENOMEM, "tensor parallelism: out of memory splitting %s", what);
  for (size_t r = 0; r < rows; r++)
    memcpy(q + r * part, (const uint8_t *)w->q + r * full + skip, part);
  *out = *w;
  out->cols = c1 - c0;
  out->q = q;
  out->dev = NULL;
  if (!quant) return BL_OK;
  size_t ng = (size_t)(w->cols / w->group_size), g0 = (size_t)(c0 / w->group_size),
         gn = (size_t)((c1 - c0) / w->group_size);
  uint16_t *sc = store_alloc(store, 2 * rows * gn), *mn = store_alloc(store, 2 * rows * gn);
  if (!sc || !mn)
    return bl_fail(err, BL_ENOMEM, "tensor parallelism: out of memory splitting %s", what);
  for (size_t r = 0; r < rows; r++) {
    memcpy(sc + r * gn, w->scales + r * ng + g0, 2 * gn);
    memcpy(mn + r * gn, w->mins + r * ng + g0, 2 * gn);
  }
  out->scales = sc;
  out->mins = mn;
  return BL_OK;
}

/* A copy of the host vector v[n] on be (NULL stays NULL). */
static bl_status copy_vec(bk_backend *be, const float *v, int32_t n, float **out) {
  *out = NULL;
  if (!v) return BL_OK;
  size_t bytes = (size_t)n * sizeof(float);
  if (!(*out = be->alloc(be, bytes))) return BL_ENOMEM;
  return be->upload(be, *out, v, bytes);
}

/* The range [i*total/n, (i+1)*total/n) of a width split n ways. */
static void part_of(int32_t total, int32_t i, int32_t n, int32_t *lo, int32_t *hi) {
  *lo = (int32_t)((int64_t)total * i / n);
  *hi = (int32_t)((int64_t)total * (i + 1) / n);
}

static bl_status shard_layer(const model *full, model *s, int32_t l, int32_t i, int32_t n,
                             bl_err *err) {
  const model_config *c = &full->cfg;
  const model_layer *f = &full->layers[l];
  model_layer *y = &s->layers[l];
  int32_t hd = c->head_dim, h0, h1, k0, k1, f0, f1;
  part_of(c->n_heads, i, n, &h0, &h1);
  part_of(c->n_kv_heads, i, n, &k0, &k1);
  part_of(c->intermediate, i, n, &f0, &f1);
  y->wq = split_rows(&f->wq, h0 * hd, h1 * hd);
  y->wk = split_rows(&f->wk, k0 * hd, k1 * hd);
  y->wv = split_rows(&f->wv, k0 * hd, k1 * hd);
  y->gate = split_rows(&f->gate, f0, f1);
  y->up = split_rows(&f->up, f0, f1);
  bl_status st = split_cols(&f->wo, h0 * hd, h1 * hd, s->store, "o_proj", l, &y->wo, err);
  if (!st) st = split_cols(&f->down, f0, f1, s->store, "down_proj", l, &y->down, err);
  if (st) return st;
  if (copy_vec(s->be, f->attn_norm, c->hidden, &y->attn_norm) ||
      copy_vec(s->be, f->ffn_norm, c->hidden, &y->ffn_norm) ||
      copy_vec(s->be, f->q_norm, hd, &y->q_norm) || copy_vec(s->be, f->k_norm, hd, &y->k_norm))
    return bl_fail(err, BL_EDEVICE, "%s: cannot place layer %d's norms on %s", full->path, l,
                   s->be->name);
  return BL_OK;
}

/* Shard i of n of full, on be. */
static bl_status shard_build(const model *full, int32_t i, int32_t n, bk_backend *be,
                             int32_t vocab0, int32_t vocab1, model **out, bl_err *err) {
  model *s = NULL;
  bl_status st = model_new(full->path, be, &s, err);
  if (st) return st;
  const model_config *c = &full->cfg;
  s->cfg = *c;
  s->cfg.n_heads = c->n_heads / n;
  s->cfg.n_kv_heads = c->n_kv_heads / n;
  s->cfg.intermediate = c->intermediate / n;
  s->cfg.tied = false; /* its lm_head is a slice, its embedding whole */
  s->prec = full->prec;
  s->group_size = full->group_size;
  if (!(s->layers = calloc((size_t)c->n_layers, sizeof *s->layers))) {
    model_free(s);
    return bl_fail(err, BL_ENOMEM, "%s: out of memory", full->path);
  }
  for (int32_t l = 0; !st && l < c->n_layers; l++)
    st = shard_layer(full, s, l, i, n, err);
  if (!st) {
    s->embed = full->embed;
    s->embed.dev = NULL;
    s->lm_head = split_rows(&full->lm_head, vocab0, vocab1);
    if (copy_vec(be, full->final_norm, c->hidden, &s->final_norm))
      st = bl_fail(err, BL_EDEVICE, "%s: cannot place the final norm on %s", full->path, be->name);
  }
  if (!st) st = model_prepare_weights(s, err);
  if (st) {
    model_free(s);
    return st;
  }
  *out = s;
  return BL_OK;
}

bl_status model_tp_create(model *full, bk_backend *host, bk_backend *const *bes, int32_t n,
                          bk_comm *comm, model **out, bl_err *err) {
  *out = NULL;
  bl_status st = BL_OK;
  model_tp *tp = NULL;
  if (full->be != host || host->weight_prepare)
    st = bl_fail(err, BL_EINVAL, "%s: a tensor-parallel model is split from one on the CPU",
                 full->path);
  else if (!comm || comm->n != n)
    st = bl_fail(err, BL_EINVAL, "%s: tensor parallelism %d needs a communicator of %d ranks",
                 full->path, n, n);
  if (!st) st = model_tp_check(&full->cfg, full->group_size, n, err);
  if (!st && !(tp = calloc(1, sizeof *tp)))
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", full->path);
  if (st) {
    model_free(full);
    bk_destroy(host);
    bk_comm_destroy(comm);
    return st;
  }
  tp->n = n;
  tp->comm = comm;
  tp->host = host;
  full->tp = tp;
  for (int32_t i = 0; i <= n; i++)
    tp->vocab0[i] = (int32_t)((int64_t)full->cfg.vocab * i / n);
  for (int32_t i = 0; !st && i < n; i++)
    st = shard_build(full, i, n, bes[i], tp->vocab0[i], tp->vocab0[i + 1], &tp->shard[i], err);
  if (st) {
    model_free(full); /* and, through model_tp_release, the shards, comm and host */
    return st;
  }
  *out = full;
  return BL_OK;
}

bl_status model_load_tp(const char *path, const model_load_opts *opts, bk_backend *const *bes,
                        int32_t n, model **out, bl_err *err) {
  *out = NULL;
  bk_backend *host = NULL;
  bk_comm *comm = NULL;
  model *full = NULL;
  model_load_opts o = opts ? *opts : (model_load_opts){0};
  o.split = n;
  bl_status st = bk_cpu_create(1, &host, err);
  if (!st) st = model_load(path, &o, host, &full, err);
  if (!st) st = bk_comm_create(bes, n, &comm, err);
  if (st) {
    model_free(full);
    bk_destroy(host);
    return st;
  }
  return model_tp_create(full, host, bes, n, comm, out, err);
}

bk_backend *model_tp_release(model *m) {
  model_tp *tp = m->tp;
  for (int32_t i = 0; i < tp->n; i++)
    model_free(tp->shard[i]);
  bk_comm_destroy(tp->comm);
  free(tp->host_logits);
  bk_backend *host = tp->host;
  free(tp);
  m->tp = NULL;
  return host;
}

bl_status model_tp_all_reduce(model *m, float *const *parts, size_t count, bl_err *err) {
  bk_comm *c = m->tp->comm;
  bl_status st = c->all_reduce(c, parts, count);
  if (st) return bl_fail(err, st, "%s (%s)", c->last_err, m->path);
  return BL_OK;
}

bl_status model_tp_gather_logits(model *m, int32_t i, int32_t n_out, float *logits, bl_err *err) {
  model_tp *tp = m->tp;
  model *s = tp->shard[i];
  int32_t v0 = tp->vocab0[i], w = tp->vocab0[i + 1] - v0, vocab = m->cfg.vocab;
  size_t need = (size_t)n_out * (size_t)w;
  if (need > tp->host_logits_n) {
    float *p = realloc(tp->host_logits, need * sizeof *p);
    if (!p) return bl_fail(err, BL_ENOMEM, "%s: out of memory gathering logits", m->path);
    tp->host_logits = p;
    tp->host_logits_n = need;
  }
  bl_status st = model_read_logits(s, tp->host_logits, need, err);
  if (st) return st;
  for (int32_t r = 0; r < n_out; r++)
    memcpy(logits + (size_t)r * (size_t)vocab + v0, tp->host_logits + (size_t)r * (size_t)w,
           (size_t)w * sizeof(float));
  return BL_OK;
}

int32_t model_n_shards(const model *m) { return m->tp ? m->tp->n : 1; }

bk_backend *model_shard_backend(const model *m, int32_t i) {
  return m->tp ? m->tp->shard[i]->be : m->be;
}

int32_t model_shard_kv_heads(const model *m) {
  return m->tp ? m->tp->shard[0]->cfg.n_kv_heads : m->cfg.n_kv_heads;
}

const char *model_tp_comm_name(const model *m) { return m->tp ? m->tp->comm->name : ""; }

bl_status model_kv_pool_init(const model *m, kv_pool *p, bk_kvfmt fmt, bk_kvscale scaling,
                             int32_t block_size, int32_t n_blocks, bl_err *err) {
  kv_pool_cfg kc = {.fmt = fmt,
                    .scaling = scaling,
                    .n_layers = m->cfg.n_layers,
                    .n_kv_heads = model_shard_kv_heads(m),
                    .head_dim = m->cfg.head_dim,
                    .block_size = block_size,
                    .n_blocks = n_blocks};
  bk_backend *bes[MODEL_MAX_TP];
  int32_t n = model_n_shards(m);
  for (int32_t i = 0; i < n; i++)
    bes[i] = model_shard_backend(m, i);
  return kv_pool_init_shards(p, bes, n, &kc, err);
}
