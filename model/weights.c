/* Weight sources and their conversion to the canonical bk_weight layout.
 *
 * A src_mat reads one row at a time from safetensors (F32/F16/BF16), GGUF
 * (any type gguf_dequant knows) or GPTQ tensors, so no loader ever holds a
 * whole float32 matrix. load_matrix picks the cheapest exact path first:
 * zero-copy fp16, native GPTQ at the same bit width, native GGUF Q4_0/Q4_1
 * as w4 (same block layout, exact), and only then dequantize + quantize. */
#include <stdlib.h>
#include <string.h>

#include "bl_half.h"
#include "bl_log.h"
#include "model_internal.h"

void *store_alloc(model_store *s, size_t n) {
  if (s->n_owned == s->cap_owned) {
    size_t cap = s->cap_owned ? 2 * s->cap_owned : 64;
    void **o = realloc(s->owned, cap * sizeof *o);
    if (!o) return NULL;
    s->owned = o;
    s->cap_owned = cap;
  }
  void *p = malloc(n ? n : 1);
  if (p) s->owned[s->n_owned++] = p;
  return p;
}

/* GGUF llama q/k rows are interleaved per head for llama.cpp's rope; HF row
 * h*hd + j*hd/2 + i is GGUF row h*hd + 2*i + j. */
static int32_t src_row_index(const src_mat *m, int32_t r) {
  if (m->row_perm_heads <= 0) return r;
  int32_t hd = m->rows / m->row_perm_heads, h = r / hd, rem = r % hd;
  int32_t j = rem / (hd / 2), i = rem % (hd / 2);
  return h * hd + 2 * i + j;
}

void src_row_f32(const src_mat *m, int32_t r, float *out) {
  int32_t sr = src_row_index(m, r);
  size_t cols = (size_t)m->cols;
  switch (m->kind) {
  case SRC_ST:
    if (m->st_type == ST_F32) {
      memcpy(out, (const float *)m->data + (size_t)sr * cols, cols * 4);
    } else {
      const uint16_t *row = (const uint16_t *)m->data + (size_t)sr * cols;
      for (size_t k = 0; k < cols; k++)
        out[k] = m->st_type == ST_F16 ? bl_half_to_float(row[k]) : bl_bf16_to_float(row[k]);
    }
    break;
  case SRC_GGUF: {
    size_t be, bb;
    gguf_type_block(m->gg_type, &be, &bb);
    gguf_dequant(m->gg_type, (const uint8_t *)m->data + (size_t)sr * (cols / be) * bb, out, cols);
    break;
  }
  case SRC_GPTQ: gptq_row_f32(&m->gq, m->gi, sr, out); break;
  }
}

static bl_status load_f16(const src_mat *src, model_store *s, bk_weight *w, bl_err *err) {
  *w = (bk_weight){.fmt = BK_WF_F16, .rows = src->rows, .cols = src->cols};
  if (src->kind == SRC_ST && src->st_type == ST_F16 && src->row_perm_heads == 0) {
    w->q = src->data; /* zero-copy from the mapping */
    return BL_OK;
  }
  uint16_t *dst = store_alloc(s, (size_t)src->rows * (size_t)src->cols * 2);
  float *row = malloc((size_t)src->cols * sizeof *row);
  if (!dst || !row) {
    free(row);
    return bl_fail(err, BL_ENOMEM, "%s: tensor %s: out of memory converting to fp16", src->file,
                   src->name);
  }
  for (int32_t r = 0; r < src->rows; r++) {
    src_row_f32(src, r, row);
    for (int32_t k = 0; k < src->cols; k++)
      dst[(size_t)r * (size_t)src->cols + (size_t)k] = bl_float_to_half(row[k]);
  }
  free(row);
  w->q = dst;
  return BL_OK;
}

/* GGUF Q4_0/Q4_1 blocks of 32 already have the W4 nibble layout (byte j:
 * element j low, j+16 high): copy nibbles, take d (and m) as scale/min. */
static bl_status load_gguf_q4(const src_mat *src, model_store *s, bk_weight *w, bl_err *err) {
  int32_t nb = src->cols / 32;
  size_t bb = src->gg_type == GGUF_T_Q4_1 ? 20 : 18;
  uint8_t *q = store_alloc(s, (size_t)src->rows * (size_t)nb * 16);
  uint16_t *sc = store_alloc(s, (size_t)src->rows * (size_t)nb * 2);
  uint16_t *mn = store_alloc(s, (size_t)src->rows * (size_t)nb * 2);
  if (!q || !sc || !mn)
    return bl_fail(err, BL_ENOMEM, "%s: tensor %s: out of memory", src->file, src->name);
  for (int32_t r = 0; r < src->rows; r++) {
    const uint8_t *row =
        (const uint8_t *)src->data + (size_t)src_row_index(src, r) * (size_t)nb * bb;
    for (int32_t b = 0; b < nb; b++) {
      const uint8_t *blk = row + (size_t)b * bb;
      uint16_t d, m;
      memcpy(&d, blk, 2);
      size_t i = (size_t)r * (size_t)nb + (size_t)b;
      if (src->gg_type == GGUF_T_Q4_1) {
        memcpy(&m, blk + 2, 2);
      } else {
        m = bl_float_to_half(-8.0f * bl_half_to_float(d)); /* exact: times a power of 2 */
      }
      sc[i] = d;
      mn[i] = m;
      memcpy(q + i * 16, blk + bb - 16, 16);
    }
  }
  *w = (bk_weight){.fmt = BK_WF_W4,
                   .rows = src->rows,
                   .cols = src->cols,
                   .group_size = 32,
                   .q = q,
                   .scales = sc,
                   .mins = mn};
  return BL_OK;
}

static bl_status load_quantized(const src_mat *src, bk_wfmt fmt, int32_t gs, bool sym,
                                model_store *s, bk_weight *w, bl_err *err) {
  if (gs <= 0 || gs % BK_QBLOCK || src->cols % gs)
    return bl_fail(err, BL_EINVAL,
                   "%s: tensor %s: group size %d must be a multiple of %d dividing %d columns",
                   src->file, src->name, gs, BK_QBLOCK, src->cols);
  int32_t bits = bk_wfmt_bits(fmt), ng = src->cols / gs;
  size_t rb = bk_weight_row_bytes(fmt, src->cols);
  uint8_t *q = store_alloc(s, rb * (size_t)src->rows);
  uint16_t *sc = store_alloc(s, (size_t)src->rows * (size_t)ng * 2);
  uint16_t *mn = store_alloc(s, (size_t)src->rows * (size_t)ng * 2);
  float *row = malloc((size_t)src->cols * sizeof *row);
  uint8_t *vals = malloc((size_t)src->cols);
  int32_t *zeros = malloc((size_t)ng * sizeof *zeros);
  bl_status st = BL_OK;
  if (!q || !sc || !mn || !row || !vals || !zeros) {
    st = bl_fail(err, BL_ENOMEM, "%s: tensor %s: out of memory quantizing", src->file, src->name);
    goto done;
  }
  for (int32_t r = 0; r < src->rows; r++) {
    src_row_f32(src, r, row);
    uint16_t *rs = sc + (size_t)r * (size_t)ng;
    quant_row(row, src->cols, bits, gs, sym, vals, rs, zeros);
    bk_pack_row(fmt, vals, src->cols, q + (size_t)r * rb);
    for (int32_t g = 0; g < ng; g++)
      mn[(size_t)r * (size_t)ng + (size_t)g] = quant_min(rs[g], zeros[g]);
  }
  *w = (bk_weight){.fmt = fmt,
                   .rows = src->rows,
                   .cols = src->cols,
                   .group_size = gs,
                   .q = q,
                   .scales = sc,
                   .mins = mn};
done:
  free(row);
  free(vals);
  free(zeros);
  return st;
}

bl_status load_matrix(const src_mat *src, bk_wfmt fmt, int32_t gs, bool sym, model_store *s,
                      bk_weight *w, bl_err *err) {
  if (fmt == BK_WF_F16) return load_f16(src, s, w, err);
  if (src->kind == SRC_GPTQ && src->gi->bits == bk_wfmt_bits(fmt) && src->row_perm_heads == 0) {
    bl_err why = {0};
    bl_status st = gptq_to_weight(&src->gq, src->gi, s, w, &why);
    if (st != BL_EUNSUPPORTED) {
      if (st) bl_fail(err, st, "%s", why.msg);
      return st;
    }
    bl_log(BL_LOG_WARN, "%s; requantizing with group size %d", why.msg, gs);
  }
  if (src->kind == SRC_GGUF && fmt == BK_WF_W4 && src->cols % 32 == 0 &&
      (src->gg_type == GGUF_T_Q4_1 || src->gg_type == GGUF_T_Q4_0))
    return load_gguf_q4(src, s, w, err);
  return load_quantized(src, fmt, gs, sym, s, w, err);
}
