/* GPTQ checkpoints: validation of the packed tensors, dequantization for the
 * reference and precision changes, native conversion to the canonical
 * layout, and packing for `ballast quantize`.
 *
 * GPTQ layout (in = input features, out = output features, per = 32/bits):
 *   qweight int32 [in/per][out]: word r of column n holds input rows
 *           r*per + j at bit offset bits*j (element 0 in the low bits)
 *   qzeros  int32 [groups][out/per], packed along out the same way
 *   scales  fp16  [groups][out];  g_idx int32 [in] (group of input row k)
 *   w = scale * (q - zero); v1 (`gptq`) stores zero - 1, v2 stores zero. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bl_half.h"
#include "model_internal.h"

static bl_status need(const st_set *st, const char *prefix, const char *suffix, st_dtype dt,
                      int n_dims, const st_tensor **out, bool optional, bl_err *err) {
  char name[256];
  snprintf(name, sizeof name, "%s.%s", prefix, suffix);
  const st_tensor *t = st_find(st, name);
  *out = t;
  if (!t) {
    if (optional) return BL_OK;
    return bl_fail(err, BL_EFORMAT, "GPTQ tensor %s is missing", name);
  }
  if (t->dtype != dt || t->n_dims != n_dims)
    return bl_fail(err, BL_EFORMAT, "%s: tensor %s is %s with %d dims, expected %s with %d",
                   t->file, name, st_dtype_name(t->dtype), t->n_dims, st_dtype_name(dt), n_dims);
  return BL_OK;
}

bl_status gptq_find(const st_set *st, const char *prefix, const gptq_info *gi, gptq_linear *g,
                    bl_err *err) {
  bl_status s;
  *g = (gptq_linear){0};
  if ((s = need(st, prefix, "qweight", ST_I32, 2, &g->qweight, false, err)) ||
      (s = need(st, prefix, "qzeros", ST_I32, 2, &g->qzeros, false, err)) ||
      (s = need(st, prefix, "scales", ST_F16, 2, &g->scales, false, err)) ||
      (s = need(st, prefix, "g_idx", ST_I32, 1, &g->g_idx, true, err)))
    return s;
  int32_t per = 32 / gi->bits;
  g->in = (int32_t)(g->qweight->shape[0] * per);
  g->out = (int32_t)g->qweight->shape[1];
  g->group_size = gi->group_size < 0 ? g->in : gi->group_size;
  g->n_groups = (g->in + g->group_size - 1) / g->group_size;
  const char *f = g->qweight->file;
  if (g->scales->shape[0] != g->n_groups || g->scales->shape[1] != g->out)
    return bl_fail(err, BL_EFORMAT, "%s: %s.scales is [%lld, %lld], expected [%d, %d]", f, prefix,
                   (long long)g->scales->shape[0], (long long)g->scales->shape[1], g->n_groups,
                   g->out);
  if (g->out % per || g->qzeros->shape[0] != g->n_groups || g->qzeros->shape[1] != g->out / per)
    return bl_fail(err, BL_EFORMAT, "%s: %s.qzeros is [%lld, %lld], expected [%d, %d]", f, prefix,
                   (long long)g->qzeros->shape[0], (long long)g->qzeros->shape[1], g->n_groups,
                   g->out / per);
  if (g->g_idx) {
    if (g->g_idx->shape[0] != g->in)
      return bl_fail(err, BL_EFORMAT, "%s: %s.g_idx has %lld entries, expected %d", f, prefix,
                     (long long)g->g_idx->shape[0], g->in);
    const int32_t *gi_ = g->g_idx->data;
    for (int32_t k = 0; k < g->in; k++)
      if (gi_[k] < 0 || gi_[k] >= g->n_groups)
        return bl_fail(err, BL_EFORMAT, "%s: %s.g_idx[%d] = %d outside [0, %d)", f, prefix, k,
                       gi_[k], g->n_groups);
  }
  return BL_OK;
}

static inline int32_t gptq_group(const gptq_linear *g, int32_t k) {
  return g->g_idx ? ((const int32_t *)g->g_idx->data)[k] : k / g->group_size;
}

static inline int32_t gptq_zero(const gptq_linear *g, const gptq_info *gi, int32_t grp, int32_t n) {
  int32_t per = 32 / gi->bits, mask = (1 << gi->bits) - 1;
  uint32_t w = ((const uint32_t *)g->qzeros->data)[(size_t)grp * (size_t)(g->out / per) + n / per];
  int32_t z = (int32_t)((w >> (gi->bits * (n % per))) & (uint32_t)mask);
  return gi->v2 ? z : z + 1;
}

void gptq_row_f32(const gptq_linear *g, const gptq_info *gi, int32_t n, float *out) {
  int32_t per = 32 / gi->bits, mask = (1 << gi->bits) - 1;
  const uint32_t *qw = g->qweight->data;
  const uint16_t *sc = g->scales->data;
  for (int32_t k = 0; k < g->in; k++) {
    uint32_t w = qw[(size_t)(k / per) * (size_t)g->out + n];
    int32_t q = (int32_t)((w >> (gi->bits * (k % per))) & (uint32_t)mask);
    int32_t grp = gptq_group(g, k);
    float s = bl_half_to_float(sc[(size_t)grp * (size_t)g->out + n]);
    out[k] = s * (float)(q - gptq_zero(g, gi, grp, n));
  }
}

/* Order of input rows so that groups are contiguous: a stable sort by group.
 * Returns NULL (no permutation needed) when g_idx is k / group_size. */
static bl_status group_order(const gptq_linear *g, int32_t **perm_out, bl_err *err) {
  *perm_out = NULL;
  if (!g->g_idx) return BL_OK;
  bool trivial = true;
  for (int32_t k = 0; k < g->in && trivial; k++)
    trivial = gptq_group(g, k) == k / g->group_size;
  if (trivial) return BL_OK;
  int32_t *count = calloc((size_t)g->n_groups + 1, sizeof *count);
  int32_t *perm = malloc((size_t)g->in * sizeof *perm);
  if (!count || !perm) {
    free(count);
    free(perm);
    return bl_fail(err, BL_ENOMEM, "GPTQ act-order: out of memory");
  }
  for (int32_t k = 0; k < g->in; k++)
    count[gptq_group(g, k) + 1]++;
  for (int32_t i = 0; i < g->n_groups; i++) {
    if (count[i + 1] != g->group_size) {
      int32_t rows = count[i + 1];
      free(count);
      free(perm);
      return bl_fail(err, BL_EUNSUPPORTED, "%s: GPTQ group %d has %d rows, not %d",
                     g->qweight->file, i, rows, g->group_size);
    }
    count[i + 1] += count[i];
  }
  for (int32_t k = 0; k < g->in; k++)
    perm[count[gptq_group(g, k)]++] = k;
  free(count);
  *perm_out = perm;
  return BL_OK;
}

bl_status gptq_to_weight(const gptq_linear *g, const gptq_info *gi, model_store *s, bk_weight *w,
                         bl_err *err) {
  if (g->group_size % BK_QBLOCK || g->in % g->group_size)
    return bl_fail(err, BL_EUNSUPPORTED,
                   "%s: GPTQ group size %d with %d inputs cannot be kept natively (needs a "
                   "multiple of %d dividing the inputs)",
                   g->qweight->file, g->group_size, g->in, BK_QBLOCK);
  int32_t *perm = NULL;
  bl_status st = group_order(g, &perm, err);
  if (st) return st;
  bk_wfmt fmt = gi->bits == 4 ? BK_WF_W4 : BK_WF_W2;
  size_t row_bytes = bk_weight_row_bytes(fmt, g->in);
  int32_t ng = g->n_groups, per = 32 / gi->bits, mask = (1 << gi->bits) - 1;
  uint8_t *q = store_alloc(s, row_bytes * (size_t)g->out);
  uint16_t *scales = store_alloc(s, (size_t)g->out * (size_t)ng * 2);
  uint16_t *mins = store_alloc(s, (size_t)g->out * (size_t)ng * 2);
  int32_t *kept_perm = perm ? store_alloc(s, (size_t)g->in * sizeof *perm) : NULL;
  /* Unpack a tile of output columns at a time so qweight is read in
   * contiguous runs rather than one strided word per element. */
  enum { TILE = 64 };
  uint8_t *tile = malloc((size_t)TILE * (size_t)g->in);
  uint8_t *vals = malloc((size_t)g->in);
  if (!q || !scales || !mins || (perm && !kept_perm) || !tile || !vals) {
    st = bl_fail(err, BL_ENOMEM, "GPTQ conversion: out of memory");
    goto done;
  }
  const uint32_t *qw = g->qweight->data;
  const uint16_t *sc = g->scales->data;
  for (int32_t n0 = 0; n0 < g->out; n0 += TILE) {
    int32_t nt = g->out - n0 < TILE ? g->out - n0 : TILE;
    for (int32_t r = 0; r < g->in / per; r++)
      for (int32_t dn = 0; dn < nt; dn++) {
        uint32_t word = qw[(size_t)r * (size_t)g->out + (size_t)(n0 + dn)];
        for (int32_t j = 0; j < per; j++)
          tile[(size_t)dn * (size_t)g->in + (size_t)(r * per + j)] =
              (uint8_t)((word >> (gi->bits * j)) & (uint32_t)mask);
      }
    for (int32_t dn = 0; dn < nt; dn++) {
      int32_t n = n0 + dn;
      const uint8_t *src = tile + (size_t)dn * (size_t)g->in;
      for (int32_t j = 0; j < g->in; j++)
        vals[j] = src[perm ? perm[j] : j];
      bk_pack_row(fmt, vals, g->in, q + (size_t)n * row_bytes);
      for (int32_t grp = 0; grp < ng; grp++) {
        /* A packed group holds the rows of one GPTQ group (perm sorts them so). */
        int32_t src_grp = gptq_group(g, perm ? perm[grp * g->group_size] : grp * g->group_size);
        uint16_t s16 = sc[(size_t)src_grp * (size_t)g->out + (size_t)n];
        scales[(size_t)n * (size_t)ng + (size_t)grp] = s16;
        mins[(size_t)n * (size_t)ng + (size_t)grp] = quant_min(s16, gptq_zero(g, gi, src_grp, n));
      }
    }
  }
  if (perm) memcpy(kept_perm, perm, (size_t)g->in * sizeof *perm);
  *w = (bk_weight){.fmt = fmt,
                   .rows = g->out,
                   .cols = g->in,
                   .group_size = g->group_size,
                   .q = q,
                   .scales = scales,
                   .mins = mins,
                   .perm = kept_perm};
done:
  free(perm);
  free(tile);
  free(vals);
  return st;
}

void gptq_pack_v1(int32_t bits, int32_t in, int32_t out, int32_t group_size, const uint8_t *q,
                  const int32_t *zeros, int32_t *qweight, int32_t *qzeros, int32_t *g_idx) {
  int32_t per = 32 / bits, mask = (1 << bits) - 1;
  int32_t ng = (in + group_size - 1) / group_size;
  memset(qweight, 0, (size_t)(in / per) * (size_t)out * 4);
  memset(qzeros, 0, (size_t)ng * (size_t)(out / per) * 4);
  for (int32_t n = 0; n < out; n++)
    for (int32_t k = 0; k < in; k++) {
      uint32_t v = (uint32_t)(q[(size_t)n * (size_t)in + (size_t)k] & mask);
      ((uint32_t *)qweight)[(size_t)(k / per) * (size_t)out + (size_t)n] |= v << (bits * (k % per));
    }
  for (int32_t grp = 0; grp < ng; grp++)
    for (int32_t n = 0; n < out; n++) {
      /* v1 stores zero - 1; zeros are kept in [1, 2^bits] by quant_row's
       * callers so the stored value fits the field. */
      uint32_t v = (uint32_t)(zeros[(size_t)grp * (size_t)out + (size_t)n] - 1) & (uint32_t)mask;
      ((uint32_t *)qzeros)[(size_t)grp * (size_t)(out / per) + (size_t)(n / per)] |=
          v << (bits * (n % per));
    }
  for (int32_t k = 0; k < in; k++)
    g_idx[k] = k / group_size;
}
