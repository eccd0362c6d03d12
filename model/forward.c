/* The forward pass, written once against the backend wrappers.
 *
 * Per layer (pre-norm decoder):
 *   h = rmsnorm(x);  q,k,v = h Wq, h Wk, h Wv;  q,k = rope(qk_norm(q,k))
 *   write k,v to the paged cache;  x += attention(q, cache) Wo
 *   h = rmsnorm(x);  x += (silu(h Wgate) * h Wup) Wdown
 * then logits = rmsnorm(x) lm_head for the requested tokens only.
 * Activations are f32 device buffers [tokens][width], grown on demand.
 * When m->capture is set, linear inputs are copied to a host buffer and
 * handed to it (calibration); the normal path only tests a NULL pointer. */
#include <stdlib.h>
#include <string.h>

#include "bl_log.h"
#include "model_internal.h"

/* A recorded decode step of n tokens (graphs[n] of the scratch). */
#define GRAPH_MAX_TOK 64
typedef struct step_graph {
  void *rec;          /* the backend's recording, or NULL */
  uint64_t kv;        /* the cache it ran with (kv_key) */
  int32_t max_blocks; /* the block-table width it ran with */
  bool warm;          /* a step of this shape ran eagerly since the buffers last moved */
} step_graph;

struct model_scratch {
  int32_t cap_tok, cap_out, cap_bt;
  float *x, *h, *att;                   /* [cap_tok][hidden], [cap_tok][hidden], [cap_tok][q_dim] */
  float *q, *k, *v;                     /* [cap_tok][q_dim], [cap_tok][kv_dim] x2 */
  float *gate, *up;                     /* [cap_tok][intermediate] */
  float *xo, *logits;                   /* [cap_out][hidden], [cap_out][vocab] */
  int32_t *meta;                        /* [4][cap_tok]: ids, pos, seq, slots */
  int32_t *bt;                          /* [cap_bt] block tables */
  int32_t *sampled;                     /* [cap_out] tokens drawn on the device */
  float *cap_host;                      /* host [cap_tok][max width], only while capturing */
  size_t cap_host_n;                    /* floats in cap_host */
  step_graph graphs[GRAPH_MAX_TOK + 1]; /* they read the buffers above: freed with them */
};

static void scratch_release(bk_backend *be, model_scratch *s) {
  void *bufs[] = {s->x,  s->h,  s->att,    s->q,    s->k,  s->v,      s->gate,
                  s->up, s->xo, s->logits, s->meta, s->bt, s->sampled};
  for (int32_t n = 0; n <= GRAPH_MAX_TOK; n++)
    if (s->graphs[n].rec) be->graph_free(be, s->graphs[n].rec);
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
    if (bufs[i]) be->free(be, bufs[i]);
  free(s->cap_host);
  memset(s, 0, sizeof *s);
}

void model_scratch_free(model *m) {
  if (!m->scratch) return;
  scratch_release(m->be, m->scratch);
  free(m->scratch);
  m->scratch = NULL;
}

static bl_status scratch_ensure(model *m, int32_t n_tok, int32_t n_out, int32_t n_bt, bl_err *err) {
  if (!m->scratch && !(m->scratch = calloc(1, sizeof *m->scratch)))
    return bl_fail(err, BL_ENOMEM, "forward: out of memory");
  model_scratch *s = m->scratch;
  if (n_tok <= s->cap_tok && n_out <= s->cap_out && n_bt <= s->cap_bt) return BL_OK;
  const model_config *c = &m->cfg;
  int32_t nt = n_tok > s->cap_tok ? n_tok : s->cap_tok;
  int32_t no = n_out > s->cap_out ? n_out : s->cap_out;
  int32_t nb = n_bt > s->cap_bt ? n_bt : s->cap_bt;
  scratch_release(m->be, s);
  size_t t = (size_t)nt, qd = (size_t)(c->n_heads * c->head_dim),
         kvd = (size_t)(c->n_kv_heads * c->head_dim);
  bk_backend *be = m->be;
  s->x = be->alloc(be, t * (size_t)c->hidden * 4);
  s->h = be->alloc(be, t * (size_t)c->hidden * 4);
  s->att = be->alloc(be, t * qd * 4);
  s->q = be->alloc(be, t * qd * 4);
  s->k = be->alloc(be, t * kvd * 4);
  s->v = be->alloc(be, t * kvd * 4);
  s->gate = be->alloc(be, t * (size_t)c->intermediate * 4);
  s->up = be->alloc(be, t * (size_t)c->intermediate * 4);
  s->xo = be->alloc(be, (size_t)no * (size_t)c->hidden * 4);
  s->logits = be->alloc(be, (size_t)no * (size_t)m->lm_head.rows * 4);
  s->meta = be->alloc(be, 4 * t * 4);
  s->bt = be->alloc(be, (size_t)nb * 4);
  s->sampled = be->alloc(be, (size_t)no * 4);
  if (!s->x || !s->h || !s->att || !s->q || !s->k || !s->v || !s->gate || !s->up || !s->xo ||
      !s->logits || !s->meta || !s->bt || !s->sampled) {
    scratch_release(be, s);
    return bl_fail(err, BL_ENOMEM, "forward: cannot allocate activations for %d tokens on %s", nt,
                   be->name);
  }
  s->cap_tok = nt;
  s->cap_out = no;
  s->cap_bt = nb;
  return BL_OK;
}

/* Show the device activations x [n][dim] at point `which` of layer l to the
 * capture hook, if it asked for that point. */
static bl_status capture(model *m, int32_t l, int which, const float *x, int32_t n, int32_t dim,
                         bl_err *err) {
  const model_capture *cap = m->capture;
  if (!cap || !(cap->points & (1u << which))) return BL_OK;
  model_scratch *s = m->scratch;
  size_t need = (size_t)n * (size_t)dim;
  if (need > s->cap_host_n) {
    float *p = realloc(s->cap_host, need * sizeof *p);
    if (!p) return bl_fail(err, BL_ENOMEM, "forward: out of memory capturing activations");
    s->cap_host = p;
    s->cap_host_n = need;
  }
  bl_status st = m->be->download(m->be, s->cap_host, x, need * sizeof(float));
  if (st)
    return bl_fail(err, st, "%s: cannot read activations of layer %d on %s", m->path, l,
                   m->be->name);
  cap->fn(cap->ctx, l, which, s->cap_host, n, dim);
  return BL_OK;
}

/* The error of a failed op: the backend's own account first when it keeps
 * one (a device error's cause), then which call of which model. */
static void op_failed(const model *m, bk_backend *be, const char *call, bl_status st, bl_err *err) {
  const char *why = be->last_error ? be->last_error(be) : NULL;
  if (why && *why)
    bl_fail(err, st, "%s; %s failed (%s)", why, call, m->path);
  else
    bl_fail(err, st, "%s: %s failed on %s", m->path, call, be->name);
}

#define OP(call)                                                                                   \
  do {                                                                                             \
    if ((st = (call)) != BL_OK) {                                                                  \
      op_failed(m, be, #call, st, err);                                                            \
      return st;                                                                                   \
    }                                                                                              \
  } while (0)

static bk_heads heads_of(const model_config *c) {
  return (bk_heads){.n_heads = c->n_heads,
                    .n_kv_heads = c->n_kv_heads,
                    .head_dim = c->head_dim,
                    .rope_theta = c->rope_theta,
                    .rope_style = BK_ROPE_NEOX,
                    .norm_eps = c->norm_eps};
}

/* The attention half of layer l up to its output projection, which is left
 * in s->h (a partial sum on a tensor-parallel shard). */
static bl_status attn_part(model *m, const model_layer *ly, int32_t l, const bk_kv_cache *kv,
                           const bk_attn_batch *ab, bl_err *err) {
  bk_backend *be = m->be;
  model_scratch *s = m->scratch;
  const model_config *c = &m->cfg;
  bk_heads heads = heads_of(c);
  int32_t n = ab->n_tok, *pos = s->meta + n, *slots = s->meta + 3 * n;
  bl_status st;
  OP(be->rmsnorm(be, s->h, s->x, ly->attn_norm, n, c->hidden, c->norm_eps));
  OP(capture(m, l, MODEL_CAP_ATTN_IN, s->h, n, c->hidden, err));
  OP(be->matmul(be, s->q, s->h, &ly->wq, n));
  OP(be->matmul(be, s->k, s->h, &ly->wk, n));
  OP(be->matmul(be, s->v, s->h, &ly->wv, n));
  OP(be->qk_norm_rope(be, s->q, s->k, ly->q_norm, ly->k_norm, pos, n, &heads));
  OP(be->kv_write(be, kv, l, s->k, s->v, slots, n));
  OP(be->attention(be, s->att, s->q, kv, l, ab, &heads));
  OP(capture(m, l, MODEL_CAP_O_IN, s->att, n, c->n_heads * c->head_dim, err));
  OP(be->matmul(be, s->h, s->att, &ly->wo, n));
  return BL_OK;
}

/* The MLP half of layer l up to its down projection, left in s->h. */
static bl_status mlp_part(model *m, const model_layer *ly, int32_t l, int32_t n, bl_err *err) {
  bk_backend *be = m->be;
  model_scratch *s = m->scratch;
  const model_config *c = &m->cfg;
  bl_status st;
  OP(be->rmsnorm(be, s->h, s->x, ly->ffn_norm, n, c->hidden, c->norm_eps));
  OP(capture(m, l, MODEL_CAP_MLP_IN, s->h, n, c->hidden, err));
  OP(be->matmul(be, s->gate, s->h, &ly->gate, n));
  OP(be->matmul(be, s->up, s->h, &ly->up, n));
  OP(be->silu_mul(be, s->gate, s->gate, s->up, (size_t)n * (size_t)c->intermediate));
  OP(capture(m, l, MODEL_CAP_DOWN_IN, s->gate, n, c->intermediate, err));
  OP(be->matmul(be, s->h, s->gate, &ly->down, n));
  return BL_OK;
}

/* x += h: a part's output joins the residual stream. */
static bl_status residual_add(model *m, int32_t n, bl_err *err) {
  bk_backend *be = m->be;
  bl_status st;
  OP(be->add(be, m->scratch->x, m->scratch->h, (size_t)n * (size_t)m->cfg.hidden));
  return BL_OK;
}

static bl_status layer_forward(model *m, int32_t l, const bk_kv_cache *kv, const bk_attn_batch *ab,
                               bl_err *err) {
  const model_layer *ly = &m->layers[l];
  int32_t n = ab->n_tok;
  bl_status st = attn_part(m, ly, l, kv, ab, err);
  if (!st) st = residual_add(m, n, err);
  if (!st) st = mlp_part(m, ly, l, n, err);
  if (!st) st = residual_add(m, n, err);
  return st;
}

/* Validate b, size the scratch, upload the step's metadata and fill *ab. */
static bl_status step_begin(model *m, const bk_kv_cache *kv, const model_batch *b,
                            bk_attn_batch *ab, bl_err *err) {
  const model_config *c = &m->cfg;
  bk_backend *be = m->be;
  int32_t n = b->n_tok;
  if (n <= 0 || b->n_out < 0 || b->n_out > n || b->n_seq <= 0 || b->max_blocks <= 0)
    return bl_fail(err, BL_EINVAL, "forward: empty or inconsistent batch (%d tokens, %d outputs)",
                   n, b->n_out);
  for (int32_t t = 0; t < n; t++)
    if (b->ids[t] < 0 || b->ids[t] >= c->vocab || b->seq[t] < 0 || b->seq[t] >= b->n_seq ||
        b->pos[t] < 0 || b->pos[t] / kv->block_size >= b->max_blocks)
      return bl_fail(err, BL_EINVAL, "forward: token %d (id %d, seq %d, pos %d) out of range", t,
                     b->ids[t], b->seq[t], b->pos[t]);
  int32_t n_bt = b->n_seq * b->max_blocks;
  bl_status st = scratch_ensure(m, n, b->n_out > 0 ? b->n_out : 1, n_bt, err);
  if (st) return st;
  model_scratch *s = m->scratch;
  int32_t *ids = s->meta, *pos = s->meta + n, *seq = s->meta + 2 * n, *slots = s->meta + 3 * n;
  OP(be->upload(be, ids, b->ids, (size_t)n * 4));
  OP(be->upload(be, pos, b->pos, (size_t)n * 4));
  OP(be->upload(be, seq, b->seq, (size_t)n * 4));
  OP(be->upload(be, slots, b->slots, (size_t)n * 4));
  OP(be->upload(be, s->bt, b->block_tables, (size_t)n_bt * 4));
  *ab = (bk_attn_batch){.n_tok = n,
                        .tok_seq = seq,
                        .tok_pos = pos,
                        .block_tables = s->bt,
                        .n_seq = b->n_seq,
                        .max_blocks = b->max_blocks};
  return BL_OK;
}

static bl_status run_layers(model *m, const bk_kv_cache *kv, const bk_attn_batch *ab, int32_t l0,
                            int32_t l1, bl_err *err) {
  for (int32_t l = l0; l < l1; l++) {
    bl_status st = layer_forward(m, l, kv, ab, err);
    if (st) return st;
  }
  return BL_OK;
}

/* After the layers: the final norm and lm_head over the tokens b->out_tok
 * lists (model_forward checked them), left on the device in s->logits [n_out][lm_head.rows]. */
static bl_status head_forward(model *m, const model_batch *b, bl_err *err) {
  const model_config *c = &m->cfg;
  bk_backend *be = m->be;
  model_scratch *s = m->scratch;
  size_t row = (size_t)c->hidden * 4;
  bl_status st;
  for (int32_t i = 0; i < b->n_out; i++) {
    OP(be->copy(be, (char *)s->xo + (size_t)i * row, (char *)s->x + (size_t)b->out_tok[i] * row,
                row));
  }
  OP(be->rmsnorm(be, s->xo, s->xo, m->final_norm, b->n_out, c->hidden, c->norm_eps));
  OP(be->matmul(be, s->logits, s->xo, &m->lm_head, b->n_out));
  return BL_OK;
}

/* A tensor-parallel step: each layer's two parts on every shard, the
 * partial outputs summed across shards, then each shard's slice of the
 * vocabulary. The shards' ops are queued in turn from this thread, so
 * devices that queue work run them concurrently. */
static bl_status tp_forward(model *m, const bk_kv_cache *kv, const model_batch *b, float *logits,
                            bl_err *err) {
  model_tp *tp = m->tp;
  int32_t n_sh = tp->n, n = b->n_tok;
  bk_attn_batch ab[MODEL_MAX_TP];
  float *parts[MODEL_MAX_TP];
  bl_status st = BL_OK;
  for (int32_t i = 0; !st && i < n_sh; i++) {
    model *sh = tp->shard[i];
    bk_backend *be = sh->be;
    if ((st = step_begin(sh, &kv[i], b, &ab[i], err))) return st;
    OP(be->embed(be, sh->scratch->x, &sh->embed, sh->scratch->meta, n));
    parts[i] = sh->scratch->h;
  }
  size_t hid = (size_t)n * (size_t)m->cfg.hidden;
  for (int32_t l = 0; l < m->cfg.n_layers; l++) {
    for (int32_t i = 0; !st && i < n_sh; i++)
      st = attn_part(tp->shard[i], &tp->shard[i]->layers[l], l, &kv[i], &ab[i], err);
    if (!st) st = model_tp_all_reduce(m, parts, hid, err);
    for (int32_t i = 0; !st && i < n_sh; i++)
      st = residual_add(tp->shard[i], n, err);
    for (int32_t i = 0; !st && i < n_sh; i++)
      st = mlp_part(tp->shard[i], &tp->shard[i]->layers[l], l, n, err);
    if (!st) st = model_tp_all_reduce(m, parts, hid, err);
    for (int32_t i = 0; !st && i < n_sh; i++)
      st = residual_add(tp->shard[i], n, err);
    if (st) return st;
  }
  if (b->n_out == 0) {
    for (int32_t i = 0; !st && i < n_sh; i++)
      if ((st = tp->shard[i]->be->sync(tp->shard[i]->be)))
        op_failed(tp->shard[i], tp->shard[i]->be, "sync", st, err);
    return st;
  }
  for (int32_t i = 0; !st && i < n_sh; i++)
    st = head_forward(tp->shard[i], b, err);
  for (int32_t i = 0; !st && i < n_sh; i++)
    st = model_tp_gather_logits(m, i, b->n_out, logits, err);
  return st;
}

/* Embedding, layers and (when the step has outputs) the head: every op of
 * a step after step_begin's uploads, up to the logits on the device. */
static bl_status step_body(model *m, const bk_kv_cache *kv, const bk_attn_batch *ab,
                           const model_batch *b, bl_err *err) {
  bk_backend *be = m->be;
  bl_status st;
  OP(be->embed(be, m->scratch->x, &m->embed, m->scratch->meta, b->n_tok));
  if ((st = run_layers(m, kv, ab, 0, m->cfg.n_layers, err))) return st;
  return b->n_out > 0 ? head_forward(m, b, err) : BL_OK;
}

/* ---- graphs -------------------------------------------------------------
 *
 * A decode step of n tokens is the same ops on the same buffers every time
 * but for what step_begin uploads (ids, positions, slots, block tables),
 * so where the backend can record, it is recorded once and replayed. The
 * first step of a shape runs eagerly (its buffers, and the backend's
 * scratch, grow to fit), the second is recorded and replayed, and later
 * ones replay. A shape is (n, the cache's buffers, the block-table width); the
 * scheduler's width is fixed per pool. A recording the backend calls stale
 * (its scratch moved) is dropped and the shape starts over. A capture that
 * fails turns graphs off for the model, with a warning, and the step runs
 * eagerly. */

/* What a recording bakes in of a cache: its geometry, format and every
 * device pointer, hashed (FNV-1a). A cache freed and another made in its
 * place may reuse a host array or some device addresses; only the same
 * buffers in the same places give the same key. */
static uint64_t kv_key(const bk_kv_cache *kv) {
  uint64_t h = 0xcbf29ce484222325ull;
#define KV_MIX(x) (h = (h ^ (uint64_t)(x)) * 0x100000001b3ull)
  KV_MIX(kv->fmt);
  KV_MIX(kv->scaling);
  KV_MIX(kv->n_layers);
  KV_MIX(kv->n_blocks);
  KV_MIX(kv->block_size);
  KV_MIX(kv->n_kv_heads);
  KV_MIX(kv->head_dim);
  KV_MIX((uintptr_t)kv->tensor_scales);
  for (int32_t l = 0; l < kv->n_layers; l++) {
    KV_MIX((uintptr_t)kv->k[l]);
    KV_MIX((uintptr_t)kv->v[l]);
  }
#undef KV_MIX
  return h;
}

/* The graph slot of this step, or NULL when it cannot be recorded. */
static step_graph *graph_slot(model *m, const bk_kv_cache *kv, const model_batch *b) {
  bk_backend *be = m->be;
  int32_t n = b->n_tok;
  if (!be->capture_begin || m->graphs_off || m->capture || n > GRAPH_MAX_TOK || b->n_out != n ||
      b->n_seq != n)
    return NULL;
  for (int32_t t = 0; t < n; t++)
    if (b->seq[t] != t || b->out_tok[t] != t) return NULL;
  step_graph *g = &m->scratch->graphs[n];
  uint64_t key = kv_key(kv);
  if (g->kv != key || g->max_blocks != b->max_blocks) {
    if (g->rec) be->graph_free(be, g->rec);
    *g = (step_graph){.kv = key, .max_blocks = b->max_blocks};
  }
  return g;
}

static bl_status graph_step(model *m, step_graph *g, const bk_kv_cache *kv, const bk_attn_batch *ab,
                            const model_batch *b, bl_err *err) {
  bk_backend *be = m->be;
  bl_status st;
  if (g->rec) {
    st = be->graph_launch(be, g->rec);
    if (st == BL_OK) {
      m->graph_stats.replays++;
      return BL_OK;
    }
    if (st != BL_AGAIN) {
      op_failed(m, be, "graph_launch", st, err);
      return st;
    }
    be->graph_free(be, g->rec); /* stale: this step warms the shape up again */
    g->rec = NULL;
    g->warm = false;
  }
  if (!g->warm) {
    st = step_body(m, kv, ab, b, err);
    g->warm = st == BL_OK;
    return st;
  }
  bl_err why = {0};
  void *rec = NULL;
  if ((st = be->capture_begin(be)) == BL_OK) {
    bl_status body = step_body(m, kv, ab, b, &why);
    st = be->capture_end(be, &rec);
    if (body) st = body;
  }
  if (st == BL_OK) {
    g->rec = rec;
    m->graph_stats.captures++;
    if ((st = be->graph_launch(be, rec)) == BL_OK) m->graph_stats.replays++;
    if (st) op_failed(m, be, "graph_launch", st, err);
    return st;
  }
  if (rec) be->graph_free(be, rec);
  m->graphs_off = true;
  m->graph_stats.failures++;
  bl_log(BL_LOG_WARN,
         "%s on %s: recording a %d-token decode step failed (%s); steps run without graphs from "
         "now on",
         m->path, be->name, b->n_tok, why.msg[0] ? why.msg : bl_status_str(st));
  return step_body(m, kv, ab, b, err);
}

/* A step up to the logits on the device (model_forward less the download). */
static bl_status forward_to_logits(model *m, const bk_kv_cache *kv, const model_batch *b,
                                   bl_err *err) {
  bk_attn_batch ab;
  bl_status st = step_begin(m, kv, b, &ab, err);
  if (st) return st;
  step_graph *g = graph_slot(m, kv, b);
  return g ? graph_step(m, g, kv, &ab, b, err) : step_body(m, kv, &ab, b, err);
}

static bl_status outputs_ok(const model_batch *b, bl_err *err) {
  for (int32_t i = 0; i < b->n_out; i++)
    if (b->out_tok[i] < 0 || b->out_tok[i] >= b->n_tok)
      return bl_fail(err, BL_EINVAL, "forward: output token %d out of range", b->out_tok[i]);
  return BL_OK;
}

bl_status model_forward(model *m, const bk_kv_cache *kv, const model_batch *b, float *logits,
                        bl_err *err) {
  bl_status st = outputs_ok(b, err);
  if (st) return st;
  if (m->tp) return tp_forward(m, kv, b, logits, err);
  bk_backend *be = m->be;
  if ((st = forward_to_logits(m, kv, b, err))) return st;
  if (b->n_out == 0) return be->sync(be);
  OP(be->download(be, logits, m->scratch->logits,
                  (size_t)b->n_out * (size_t)m->lm_head.rows * sizeof(float)));
  return BL_OK;
}

bool model_can_sample(const model *m) { return !m->tp && m->be->sample; }

bl_status model_forward_sample(model *m, const bk_kv_cache *kv, const model_batch *b,
                               const bk_sample_params *sp, int32_t *ids, bl_err *err) {
  if (!model_can_sample(m))
    return bl_fail(err, BL_EUNSUPPORTED, "%s: %s cannot sample on the device", m->path,
                   m->be->name);
  bl_status st = outputs_ok(b, err);
  if (st || (st = forward_to_logits(m, kv, b, err))) return st;
  bk_backend *be = m->be;
  if (b->n_out == 0) return be->sync(be);
  /* after any replayed graph: the op copies sp from the host, which a capture cannot hold */
  model_scratch *s = m->scratch;
  OP(be->sample(be, s->sampled, s->logits, b->n_out, m->lm_head.rows, sp));
  OP(be->download(be, ids, s->sampled, (size_t)b->n_out * sizeof(int32_t)));
  return BL_OK;
}

bl_status model_forward_layers(model *m, const bk_kv_cache *kv, const model_batch *b, int32_t l0,
                               int32_t l1, const float *x_in, float *x_out, bl_err *err) {
  const model_config *c = &m->cfg;
  bk_backend *be = m->be;
  if (m->tp)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: layer-range steps run on one backend, not %d shards",
                   m->path, m->tp->n);
  if (l0 < 0 || l1 > c->n_layers || l0 > l1 || (!x_in && l0 != 0))
    return bl_fail(err, BL_EINVAL, "forward: layers [%d, %d) of %d (embedding only enters layer 0)",
                   l0, l1, c->n_layers);
  bk_attn_batch ab;
  bl_status st = step_begin(m, kv, b, &ab, err);
  if (st) return st;
  model_scratch *s = m->scratch;
  size_t bytes = (size_t)b->n_tok * (size_t)c->hidden * 4;
  if (x_in)
    OP(be->upload(be, s->x, x_in, bytes));
  else
    OP(be->embed(be, s->x, &m->embed, s->meta, b->n_tok));
  if ((st = run_layers(m, kv, &ab, l0, l1, err))) return st;
  if (x_out) OP(be->download(be, x_out, s->x, bytes));
  return be->sync(be);
}

bl_status model_read_logits(model *m, float *out, size_t count, bl_err *err) {
  bk_backend *be = m->be;
  bl_status st;
  OP(be->download(be, out, m->scratch->logits, count * sizeof(float)));
  return BL_OK;
}
