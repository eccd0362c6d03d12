/* Shared between the model/ sources only: weight sources, GPTQ geometry,
 * quantization, the host store. Not part of the public API. */
#ifndef MODEL_INTERNAL_H
#define MODEL_INTERNAL_H

#include "gguf.h"
#include "model.h"
#include "safetensors.h"

/* ---- host store: everything the weights point into -------------------- */

struct model_store {
  void **owned; /* malloc'd buffers */
  size_t n_owned, cap_owned;
  st_set *st;
  gguf_file *gguf;
};

/* malloc n bytes owned by the store (freed with the model); NULL on OOM. */
void *store_alloc(model_store *s, size_t n);

/* ---- GPTQ ------------------------------------------------------------- */

typedef struct gptq_info {
  int32_t bits, group_size; /* group_size -1 in files becomes `in` per linear */
  bool sym, desc_act, v2;   /* v2: checkpoint_format gptq_v2 (zero stored as is) */
} gptq_info;

typedef struct gptq_linear {
  const st_tensor *qweight, *qzeros, *scales, *g_idx;
  int32_t in, out, group_size, n_groups;
} gptq_linear;

/* Find and validate <prefix>.qweight/.qzeros/.scales/.g_idx. */
bl_status gptq_find(const st_set *st, const char *prefix, const gptq_info *gi, gptq_linear *out,
                    bl_err *err);
/* Dequantized output row n in natural input order: out[in]. */
void gptq_row_f32(const gptq_linear *g, const gptq_info *gi, int32_t n, float *out);
/* Convert to the canonical layout at the same bit width (act-order becomes
 * a column permutation). BL_EUNSUPPORTED when groups are not equal-sized or
 * the group size is not a multiple of BK_QBLOCK. */
bl_status gptq_to_weight(const gptq_linear *g, const gptq_info *gi, model_store *s, bk_weight *w,
                         bl_err *err);

/* Pack integer q [out][in] (natural order), scales [ng][out], integer zeros
 * [ng][out] into GPTQ v1 tensors (stored zero = zero - 1). Buffers are
 * caller-allocated with the GPTQ shapes. */
void gptq_pack_v1(int32_t bits, int32_t in, int32_t out, int32_t group_size, const uint8_t *q,
                  const int32_t *zeros, int32_t *qweight, int32_t *qzeros, int32_t *g_idx);

/* ---- round-to-nearest quantization ------------------------------------ */

/* Quantize one row x[cols] in groups of gs with the GPTQ quantizer's grid
 * (range widened to include 0; sym: zero = 2^(bits-1)). Writes q[cols]
 * values, fp16 scales[ng] and integer zeros[ng]; w = scale * (q - zero). */
void quant_row(const float *x, int32_t cols, int32_t bits, int32_t gs, bool sym, uint8_t *q,
               uint16_t *scales, int32_t *zeros);

/* ---- weight sources --------------------------------------------------- */

typedef enum src_kind { SRC_ST, SRC_GGUF, SRC_GPTQ } src_kind;

/* A 2-D matrix [rows][cols] from any file format, read row by row. */
typedef struct src_mat {
  src_kind kind;
  const char *file;
  char name[256];
  int32_t rows, cols;
  const void *data;        /* ST / GGUF */
  st_dtype st_type;
  gguf_ttype gg_type;
  gptq_linear gq;          /* GPTQ */
  const gptq_info *gi;
  int32_t row_perm_heads;  /* >0: GGUF llama q/k rows to un-permute (n heads) */
} src_mat;

void src_row_f32(const src_mat *m, int32_t r, float *out);

/* Build a canonical weight of format fmt from src (zero-copy, native
 * conversion or quantization, whichever applies). */
bl_status load_matrix(const src_mat *src, bk_wfmt fmt, int32_t gs, bool sym, model_store *s,
                      bk_weight *w, bl_err *err);

/* ---- config ----------------------------------------------------------- */

bl_status config_from_hf(const char *dir, model_config *c, gptq_info *gi, bool *is_gptq,
                         bl_err *err);
bl_status config_from_gguf(const gguf_file *f, model_config *c, bl_err *err);

/* ---- forward scratch -------------------------------------------------- */

void model_scratch_free(model *m);

#endif
