/* Attention-side ops on the CPU: per-head q/k RMSNorm + RoPE, and attention
 * over the paged KV cache (kv_write is in cpu_kv.c).
 *
 * Cache layout (backend.h): per layer [n_blocks][n_kv_heads] units of
 * block_size rows; slot = block * block_size + offset. Attention runs one
 * (token, kv head) per work item, covering the query heads of its GQA group
 * (so a quantized block is decoded once per group), with an online softmax
 * per head in float32, one
 * cache block at a time (cpu_kern.attn_block: scores for a run of
 * positions, one rescale of the running output if the maximum grew, then
 * the V accumulation). fp16 blocks are read in place; fp8 and nvfp4 blocks
 * are first decoded into per-thread float32 scratch (cpu_kv_dequant_rows,
 * at most block_size rows of K and of V) and go through attn_block_f32, so
 * the online softmax is the same code for every format. The output row
 * itself is the accumulator (q is copied first, so out may be q). */
#include <math.h>
#include <stdatomic.h>

#include "bl_log.h"
#include "cpu_internal.h"

/* ---- qk_norm_rope ----------------------------------------------------- */

typedef struct cpu_rope_job {
  const cpu_kern *k;
  float *q, *kk;                /* [n][n_heads*hd], [n][n_kv_heads*hd] */
  const float *q_norm, *k_norm; /* [hd] or NULL */
  const int32_t *pos;           /* [n] */
  const bk_heads *h;
  float *tmp; /* [n_threads][stride]: inv_freq[hd/2], cos[hd/2], sin[hd/2] */
  size_t stride;
} cpu_rope_job;

/* inv_freq[i] = theta^(-2i/hd) and, per position, cos/sin of pos * inv_freq,
 * all in float32 the way HF computes them. */
static void cpu_rope_inv_freq(float theta, int32_t hd, float *inv) {
  for (int32_t i = 0; i < hd / 2; i++)
    inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
}

static void cpu_rope_table(int32_t pos, const float *inv, int32_t hd, float *cs, float *sn) {
  for (int32_t i = 0; i < hd / 2; i++) {
    float ang = (float)pos * inv[i];
    cs[i] = cosf(ang);
    sn[i] = sinf(ang);
  }
}

static void cpu_rope_head(float *v, const float *cs, const float *sn, int32_t hd,
                          bk_rope_style style) {
  int32_t half = hd / 2;
  if (style == BK_ROPE_NEOX) {
    for (int32_t i = 0; i < half; i++) {
      float a = v[i], b = v[i + half];
      v[i] = a * cs[i] - b * sn[i];
      v[i + half] = b * cs[i] + a * sn[i];
    }
  } else {
    for (int32_t i = 0; i < half; i++) {
      float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs[i] - b * sn[i];
      v[2 * i + 1] = b * cs[i] + a * sn[i];
    }
  }
}

static void cpu_norm_rope_heads(const cpu_rope_job *j, float *v, int32_t nh, const float *nw,
                                const float *cs, const float *sn) {
  const bk_heads *h = j->h;
  for (int32_t hh = 0; hh < nh; hh++) {
    float *x = v + (size_t)hh * h->head_dim;
    if (nw) {
      float ms = j->k->sumsq(x, h->head_dim) / (float)h->head_dim;
      j->k->norm_mul(x, x, 1.0f / sqrtf(ms + h->norm_eps), nw, h->head_dim);
    }
    cpu_rope_head(x, cs, sn, h->head_dim, h->rope_style);
  }
}

static void cpu_rope_run(void *arg, int64_t t0, int64_t t1, int tid) {
  cpu_rope_job *j = arg;
  const bk_heads *h = j->h;
  float *inv = j->tmp + (size_t)tid * j->stride, *cs = inv + h->head_dim / 2;
  float *sn = cs + h->head_dim / 2;
  cpu_rope_inv_freq(h->rope_theta, h->head_dim, inv);
  for (int64_t t = t0; t < t1; t++) {
    cpu_rope_table(j->pos[t], inv, h->head_dim, cs, sn);
    cpu_norm_rope_heads(j, j->q + (size_t)t * h->n_heads * h->head_dim, h->n_heads, j->q_norm, cs,
                        sn);
    cpu_norm_rope_heads(j, j->kk + (size_t)t * h->n_kv_heads * h->head_dim, h->n_kv_heads,
                        j->k_norm, cs, sn);
  }
}

bl_status cpu_qk_norm_rope(bk_backend *be, float *q, float *k, const float *q_norm,
                           const float *k_norm, const int32_t *pos, int32_t n, const bk_heads *h) {
  cpu_ctx *c = be->ctx;
  cpu_rope_job j = {.k = c->k,
                    .q = q,
                    .kk = k,
                    .q_norm = q_norm,
                    .k_norm = k_norm,
                    .pos = pos,
                    .h = h,
                    .stride = cpu_thr_stride(3 * (size_t)h->head_dim / 2)};
  size_t bytes = (size_t)c->n_threads * j.stride * sizeof(float);
  if (!(j.tmp = cpu_buf_get(&c->thr, bytes))) return cpu_op_oom("qk_norm_rope", bytes);
  int64_t work = (int64_t)(h->n_heads + h->n_kv_heads) * h->head_dim * 4;
  cpu_pool_for(c->pool, n, cpu_grain(work), cpu_rope_run, &j);
  return BL_OK;
}

/* ---- attention -------------------------------------------------------- */

typedef struct cpu_attn_job {
  const cpu_kern *k;
  float *out;             /* [n_tok][n_heads*hd] */
  const float *q;         /* [n_tok][n_heads*hd] */
  const uint8_t *kc, *vc; /* this layer's cache */
  const bk_kv_cache *kv;
  const bk_attn_batch *b;
  const bk_heads *h;
  float ts_k, ts_v; /* the layer's tensor scales (formats that have them) */
  float *tmp;       /* [n_threads][stride]: q of the group's heads, pre-scaled [group][hd];
                       quantized formats: then K and V decoded [block_size][hd] each */
  size_t stride;
  _Atomic int bad; /* a sequence, position or block id was out of range */
} cpu_attn_job;

/* One (token, kv head): every query head of the GQA group at once, so a
 * quantized block is decoded once per group rather than once per head.
 * Each head's online softmax sees the same blocks in the same order as it
 * would alone. Returns false on an out-of-range id. */
static bool cpu_attn_group(cpu_attn_job *j, int32_t t, int32_t kvh, float *qs) {
  const bk_heads *h = j->h;
  const bk_kv_cache *kv = j->kv;
  const bk_attn_batch *b = j->b;
  int32_t hd = h->head_dim, bs = kv->block_size, grp = h->n_heads / h->n_kv_heads;
  float scale = 1.0f / sqrtf((float)hd), m[CPU_ATTN_MAX_GROUP], l[CPU_ATTN_MAX_GROUP];
  for (int32_t g = 0; g < grp; g++) {
    int32_t hh = kvh * grp + g;
    const float *qv = j->q + ((size_t)t * h->n_heads + hh) * hd;
    float *o = j->out + ((size_t)t * h->n_heads + hh) * hd;
    for (int32_t i = 0; i < hd; i++) {
      qs[(size_t)g * hd + i] = qv[i] * scale;
      o[i] = 0;
    }
    m[g] = -INFINITY;
    l[g] = 0;
  }
  int32_t seq = b->tok_seq[t], npos = b->tok_pos[t] + 1;
  if (seq < 0 || seq >= b->n_seq || npos < 1 || npos > b->max_blocks * bs) return false;
  const int32_t *bt = b->block_tables + (size_t)seq * b->max_blocks;
  size_t ub = bk_kv_unit_bytes(kv);
  float *kf = qs + (size_t)grp * hd, *vf = kf + (size_t)bs * hd; /* quantized formats only */
  float *out0 = j->out + ((size_t)t * h->n_heads + (size_t)kvh * grp) * hd;
  for (int32_t p0 = 0; p0 < npos; p0 += bs) {
    int32_t blk = bt[p0 / bs];
    if (blk < 0 || blk >= kv->n_blocks) return false;
    size_t base = ((size_t)blk * kv->n_kv_heads + kvh) * ub;
    int32_t cnt = npos - p0 < bs ? npos - p0 : bs;
    if (kv->fmt == BK_KV_F16) {
      for (int32_t g = 0; g < grp; g++)
        j->k->attn_block(qs + (size_t)g * hd, (const uint16_t *)(const void *)(j->kc + base),
                         (const uint16_t *)(const void *)(j->vc + base), cnt, hd,
                         out0 + (size_t)g * hd, &m[g], &l[g]);
      continue;
    }
    cpu_kv_dequant_rows(kv, j->kc + base, cnt, j->ts_k, kf);
    cpu_kv_dequant_rows(kv, j->vc + base, cnt, j->ts_v, vf);
    for (int32_t g = 0; g < grp; g++)
      j->k->attn_block_f32(qs + (size_t)g * hd, kf, vf, cnt, hd, out0 + (size_t)g * hd, &m[g],
                           &l[g]);
  }
  for (int32_t g = 0; g < grp; g++)
    j->k->scale(out0 + (size_t)g * hd, 1.0f / l[g], hd);
  return true;
}

static void cpu_attn_run(void *arg, int64_t i0, int64_t i1, int tid) {
  cpu_attn_job *j = arg;
  float *qs = j->tmp + (size_t)tid * j->stride;
  int32_t nkv = j->h->n_kv_heads;
  for (int64_t i = i0; i < i1; i++) {
    if (!cpu_attn_group(j, (int32_t)(i / nkv), (int32_t)(i % nkv), qs)) atomic_store(&j->bad, 1);
  }
}

bl_status cpu_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                        int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  cpu_ctx *c = be->ctx;
  if (!bk_kv_geometry_ok(kv->fmt, h->head_dim) || h->head_dim != kv->head_dim) {
    bl_log(BL_LOG_ERROR, "cpu: attention: KV format %d cannot hold head_dim %d (cache: %d)",
           (int)kv->fmt, (int)h->head_dim, (int)kv->head_dim);
    return BL_EINVAL;
  }
  if (h->n_kv_heads < 1 || h->n_heads % h->n_kv_heads ||
      h->n_heads / h->n_kv_heads > CPU_ATTN_MAX_GROUP) {
    bl_log(BL_LOG_ERROR, "cpu: attention: %d query heads over %d kv heads is not supported",
           (int)h->n_heads, (int)h->n_kv_heads);
    return BL_EINVAL;
  }
  size_t grp = (size_t)(h->n_heads / h->n_kv_heads);
  size_t decoded = kv->fmt == BK_KV_F16 ? 0 : 2 * (size_t)kv->block_size * (size_t)h->head_dim;
  cpu_attn_job j = {.k = c->k,
                    .out = out,
                    .q = q,
                    .kc = kv->k[layer],
                    .vc = kv->v[layer],
                    .kv = kv,
                    .b = b,
                    .h = h,
                    .stride = cpu_thr_stride(grp * (size_t)h->head_dim + decoded)};
  if (bk_kv_tensor_scaled(kv->fmt, kv->scaling)) {
    j.ts_k = kv->tensor_scales[2 * (size_t)layer];
    j.ts_v = kv->tensor_scales[2 * (size_t)layer + 1];
  }
  size_t bytes = (size_t)c->n_threads * j.stride * sizeof(float);
  if (!(j.tmp = cpu_buf_get(&c->thr, bytes))) return cpu_op_oom("attention", bytes);
  int64_t npos = 0; /* sizes the chunks: work per item is about 4 * hd * positions */
  for (int32_t t = 0; t < b->n_tok; t++)
    npos += b->tok_pos[t] + 1;
  int64_t per_item = b->n_tok ? 4 * (int64_t)grp * h->head_dim * (npos / b->n_tok) : 1;
  cpu_pool_for(c->pool, (int64_t)b->n_tok * h->n_kv_heads, cpu_grain(per_item), cpu_attn_run, &j);
  if (atomic_load(&j.bad)) {
    bl_log(BL_LOG_ERROR, "cpu: attention: a token's sequence, position or block id is out of "
                         "range of the batch or cache");
    return BL_EDEVICE;
  }
  return BL_OK;
}
