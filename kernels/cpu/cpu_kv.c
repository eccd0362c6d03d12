/* The CPU backend's KV-format code: kv_write for every bk_kvfmt (with the
 * first-write calibration of tensor scales) and the row decoder attention
 * uses. Encodings are the shared ones in kvcache/kv_format.h, so this is
 * also the reference the CUDA kernels are checked against byte for byte.
 *
 * Layout (backend.h): per layer [n_blocks][n_kv_heads] units of block_size
 * value rows then block_size scale rows. Tokens are independent: each
 * token's rows and per-token scales depend only on that token (and on the
 * layer's tensor scale, fixed before any row is encoded), so the tokens of
 * a step are encoded in parallel in any order. */
#include <stdatomic.h>

#include "bl_half.h"
#include "bl_log.h"
#include "cpu_internal.h"
#include "kv_format.h"

/* ---- calibration of tensor scales -------------------------------------- */

/* Set tensor scale `which` (0 K, 1 V) of layer from x [n][n_kv_heads*hd]
 * when it is still 0: the largest finite |x| over the tokens whose slot is
 * inside the cache, through kv_format.h's rule. Stays 0 if that is 0. */
static void cpu_kv_calibrate(const bk_kv_cache *kv, int32_t layer, int which, const float *x,
                             const int32_t *slots, int32_t n) {
  float *ts = kv->tensor_scales + 2 * (size_t)layer + which;
  if (*ts != 0.0f) return;
  size_t row = (size_t)kv->n_kv_heads * (size_t)kv->head_dim;
  int64_t n_slots = (int64_t)kv->n_blocks * kv->block_size;
  float amax = 0.0f;
  for (int32_t t = 0; t < n; t++) {
    if (slots[t] < 0 || slots[t] >= n_slots) continue;
    for (size_t i = 0; i < row; i++)
      amax = kv_amax_add(amax, x[(size_t)t * row + i]);
  }
  *ts = kv->fmt == BK_KV_FP8 ? kv_fp8_tensor_scale(amax) : kv_nvfp4_tensor_scale(amax);
}

/* ---- kv_write ------------------------------------------------------------ */

typedef struct cpu_kvw_job {
  const cpu_kern *k;
  const bk_kv_cache *kv;
  uint8_t *kc, *vc;     /* this layer's cache */
  const float *kx, *vx; /* [n][n_kv_heads*hd] */
  const int32_t *slots; /* [n]; negative: skip the token */
  float ts_k, ts_v;     /* tensor scales (formats that have them) */
  _Atomic int bad;      /* a slot past the cache */
} cpu_kvw_job;

/* Encode x [hd] as row `off` of the unit at `unit`. */
static void cpu_kvw_row(const cpu_kvw_job *j, uint8_t *unit, size_t off, const float *x, float ts) {
  const bk_kv_cache *kv = j->kv;
  int32_t hd = kv->head_dim;
  size_t rb = bk_kv_row_bytes(kv->fmt, hd), sb = bk_kv_scale_bytes(kv->fmt, kv->scaling, hd);
  uint8_t *row = unit + off * rb, *srow = unit + (size_t)kv->block_size * rb + off * sb;
  switch (kv->fmt) {
  case BK_KV_F16: j->k->to_f16((uint16_t *)(void *)row, x, hd); break;
  case BK_KV_FP8:
    if (kv->scaling == BK_KVS_HEAD)
      *srow = kv_fp8_quant_row(x, hd, row);
    else
      kv_fp8t_quant_row(x, hd, ts, row);
    break;
  case BK_KV_NVFP4: kv_nvfp4_quant_row(x, hd, ts, row, srow); break;
  }
}

static void cpu_kvw_run(void *arg, int64_t t0, int64_t t1, int tid) {
  cpu_kvw_job *j = arg;
  const bk_kv_cache *kv = j->kv;
  size_t hd = (size_t)kv->head_dim, row = (size_t)kv->n_kv_heads * hd;
  size_t ub = bk_kv_unit_bytes(kv);
  for (int64_t t = t0; t < t1; t++) {
    int32_t slot = j->slots[t];
    if (slot < 0) continue;
    if (slot / kv->block_size >= kv->n_blocks) {
      atomic_store(&j->bad, 1);
      continue;
    }
    size_t blk = (size_t)(slot / kv->block_size), off = (size_t)(slot % kv->block_size);
    for (int32_t kh = 0; kh < kv->n_kv_heads; kh++) {
      size_t unit = (blk * (size_t)kv->n_kv_heads + (size_t)kh) * ub;
      size_t src = (size_t)t * row + (size_t)kh * hd;
      cpu_kvw_row(j, j->kc + unit, off, j->kx + src, j->ts_k);
      cpu_kvw_row(j, j->vc + unit, off, j->vx + src, j->ts_v);
    }
  }
}

bl_status cpu_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                       const float *v, const int32_t *slots, int32_t n) {
  cpu_ctx *c = be->ctx;
  if (!bk_kv_geometry_ok(kv->fmt, kv->head_dim)) {
    bl_log(BL_LOG_ERROR, "cpu: kv_write: KV format %d cannot hold head_dim %d", (int)kv->fmt,
           (int)kv->head_dim);
    return BL_EINVAL;
  }
  cpu_kvw_job j = {.k = c->k,
                   .kv = kv,
                   .kc = kv->k[layer],
                   .vc = kv->v[layer],
                   .kx = k,
                   .vx = v,
                   .slots = slots};
  if (bk_kv_tensor_scaled(kv->fmt, kv->scaling)) {
    cpu_kv_calibrate(kv, layer, 0, k, slots, n);
    cpu_kv_calibrate(kv, layer, 1, v, slots, n);
    j.ts_k = kv->tensor_scales[2 * (size_t)layer];
    j.ts_v = kv->tensor_scales[2 * (size_t)layer + 1];
  }
  int64_t work = 2 * (int64_t)kv->n_kv_heads * kv->head_dim * (kv->fmt == BK_KV_F16 ? 1 : 4);
  cpu_pool_for(c->pool, n, cpu_grain(work), cpu_kvw_run, &j);
  if (atomic_load(&j.bad)) {
    bl_log(BL_LOG_ERROR, "cpu: kv_write: a slot is past the cache's %d blocks of %d",
           (int)kv->n_blocks, (int)kv->block_size);
    return BL_EDEVICE;
  }
  return BL_OK;
}

/* ---- decoding for attention ---------------------------------------------- */

void cpu_kv_dequant_rows(const bk_kv_cache *kv, const uint8_t *unit, int32_t cnt, float ts,
                         float *out) {
  int32_t hd = kv->head_dim;
  size_t rb = bk_kv_row_bytes(kv->fmt, hd), sb = bk_kv_scale_bytes(kv->fmt, kv->scaling, hd);
  const uint8_t *srows = unit + (size_t)kv->block_size * rb;
  for (int32_t r = 0; r < cnt; r++) {
    const uint8_t *row = unit + (size_t)r * rb, *srow = srows + (size_t)r * sb;
    float *o = out + (size_t)r * hd;
    switch (kv->fmt) {
    case BK_KV_F16:
      for (int32_t i = 0; i < hd; i++)
        o[i] = bl_half_to_float(((const uint16_t *)(const void *)row)[i]);
      break;
    case BK_KV_FP8:
      kv_fp8_dequant_row(row, kv->scaling == BK_KVS_HEAD ? kv_e8m0_to_f32(*srow) : ts, hd, o);
      break;
    case BK_KV_NVFP4: kv_nvfp4_dequant_row(row, srow, ts, hd, o); break;
    }
  }
}
