/* Shared between the model/ sources only: weight sources, GPTQ geometry,
 * quantization, the host store. Not part of the public API. */
#ifndef MODEL_INTERNAL_H
#define MODEL_INTERNAL_H

#include <math.h>

#include "bl_half.h"
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
/* The grid of one group x[n] as quant_row picks it: fp16 scale, integer zero. */
void quant_group_params(const float *x, int32_t n, int32_t bits, bool sym, uint16_t *scale,
                        int32_t *zero);
/* One value on that grid (s = the fp16 scale as float): clamp(rint(x/s) + zero). */
static inline uint8_t quant_value(float x, float s, int32_t zero, int32_t bits) {
  int32_t maxq = (1 << bits) - 1;
  int32_t v = s > 0.0f ? (int32_t)lrintf(x / s) + zero : zero;
  return (uint8_t)(v < 0 ? 0 : v > maxq ? maxq : v);
}

/* One quantized linear in GPTQ's layout (before bit packing). */
typedef struct qlinear {
  int32_t bits, in, out, group_size, n_groups;
  uint8_t *q;       /* [out][in] values 0..2^bits-1, natural input order */
  uint16_t *scales; /* fp16 [n_groups][out] */
  int32_t *zeros;   /* [n_groups][out], w = scale * (q - zero), zero in [1, 2^bits - 1] */
} qlinear;

/* malloc the three arrays (NULL members on failure); qlinear_free frees them. */
bl_status qlinear_alloc(qlinear *ql, int32_t bits, int32_t in, int32_t out, int32_t group_size);
void qlinear_free(qlinear *ql);

/* ---- GPTQ solver (gptq_solve.c) ----------------------------------------- */

/* S[i][j] += sum_t x[t][i] * x[t][j] for j >= i: the upper triangle (and
 * diagonal) of X^T X, S double [dim][dim], x float [n][dim]. */
void gptq_hessian_add(double *S, int32_t dim, const float *x, int32_t n, int n_threads);

/* U float [n][n] = the upper Cholesky factor of H^-1 (U^T U = H^-1; strict
 * lower triangle zero) for H given by its strict upper triangle (double
 * [n][n]) and diag[n]. H's strict lower triangle is used as scratch; its
 * upper triangle and diagonal are left as they were. BL_EINVAL when H is not
 * numerically positive definite. */
bl_status gptq_hinv_chol(double *H, const double *diag, int32_t n, float *U, int n_threads);

typedef struct gptq_params {
  int32_t bits, group_size;
  bool sym;
  double damp;   /* added to diag(H): damp * mean(diag(H)); GPTQ's 0.01 */
  int n_threads; /* 0: online cores */
} gptq_params;

/* What every linear reading one input shares: the damped inverse Hessian's
 * upper Cholesky factor. */
typedef struct gptq_hinv {
  int32_t n;
  float *U;      /* [n][n] */
  uint8_t *dead; /* [n] 1 where H_ii == 0 (those weights are zeroed) */
  double damp;   /* damping used (p->damp, or more if H did not factor) */
} gptq_hinv;

/* From H = 2/n X^T X double [n][n] (upper triangle and diagonal read and
 * kept; strict lower triangle overwritten). Uses p->damp and p->n_threads. */
bl_status gptq_hinv_build(double *H, int32_t n, const gptq_params *p, gptq_hinv *h, bl_err *err);
void gptq_hinv_free(gptq_hinv *h);

/* GPTQ on one linear: W float [out][in] (overwritten with the dequantized
 * result), h built from the Hessian of its input. Fills ql (allocated by
 * the caller with qlinear_alloc). *loss, when not NULL, gets GPTQ's proxy
 * sum (w - q)^2 / U_ii^2 over all weights. */
bl_status gptq_quantize(const gptq_params *p, const gptq_hinv *h, float *W, qlinear *ql,
                        double *loss, bl_err *err);
/* gptq_hinv_build + gptq_quantize for a linear with a Hessian of its own. */
bl_status gptq_solve(const gptq_params *p, float *W, double *H, qlinear *ql, double *loss,
                     bl_err *err);

/* ---- GPTQ over a model (calibrate.c) ------------------------------------ */

/* The seven linears of a decoder layer, in the order their inputs appear. */
enum {
  MODEL_LIN_Q,
  MODEL_LIN_K,
  MODEL_LIN_V,
  MODEL_LIN_O,
  MODEL_LIN_GATE,
  MODEL_LIN_UP,
  MODEL_LIN_DOWN,
  MODEL_LIN_N
};
extern const char *const model_linear_hf[MODEL_LIN_N];    /* "self_attn.q_proj", ... */
extern const char *const model_linear_short[MODEL_LIN_N]; /* "q", ..., "down" */

typedef struct gptq_calib {
  const int32_t *ids; /* calibration tokens, cut into sequences of seq_len */
  int32_t n_ids, seq_len;
  gptq_params p;
  bool verbose; /* log each linear's loss */
} gptq_calib;

/* Receives each quantized linear (ql is freed after the call returns). */
typedef bl_status (*gptq_emit_fn)(void *ctx, int32_t layer, int lin, const qlinear *ql,
                                  bl_err *err);

/* Sequential GPTQ of every linear of m (an fp16 model), layer by layer on
 * the calibration tokens; m's linears are replaced by their quantized
 * versions as it goes. */
bl_status model_gptq_run(model *m, const gptq_calib *c, gptq_emit_fn emit, void *ctx, bl_err *err);

/* The canonical format's per-group offset for GPTQ's w = scale*(q - zero):
 * min = -scale*zero, rounded to fp16 (exact for symmetric zeros). */
static inline uint16_t quant_min(uint16_t scale, int32_t zero) {
  return bl_float_to_half(-bl_half_to_float(scale) * (float)zero);
}

/* ---- weight sources --------------------------------------------------- */

typedef enum src_kind { SRC_ST, SRC_GGUF, SRC_GPTQ } src_kind;

/* A 2-D matrix [rows][cols] from any file format, read row by row. */
typedef struct src_mat {
  src_kind kind;
  const char *file;
  char name[256];
  int32_t rows, cols;
  const void *data; /* ST / GGUF */
  st_dtype st_type;
  gguf_ttype gg_type;
  gptq_linear gq; /* GPTQ */
  const gptq_info *gi;
  int32_t row_perm_heads; /* >0: GGUF llama q/k rows to un-permute (n heads) */
} src_mat;

void src_row_f32(const src_mat *m, int32_t r, float *out);

/* Build a canonical weight of format fmt from src (zero-copy, native
 * conversion or quantization, whichever applies). */
bl_status load_matrix(const src_mat *src, bk_wfmt fmt, int32_t gs, bool sym, model_store *s,
                      bk_weight *w, bl_err *err);

/* ---- model assembly (loader.c), shared with synthetic.c ------------- */

/* A zeroed model with its store and path, on be. */
bl_status model_new(const char *path, bk_backend *be, model **out, bl_err *err);
/* Hand every linear, embed and lm_head to be->weight_prepare (if any). */
bl_status model_prepare_weights(model *m, bl_err *err);

/* ---- config ----------------------------------------------------------- */

bl_status config_from_hf(const char *dir, model_config *c, gptq_info *gi, bool *is_gptq,
                         bl_err *err);
bl_status config_from_gguf(const gguf_file *f, model_config *c, bl_err *err);

/* ---- tensor parallelism (tp.c, used by forward.c) ---------------------- */

struct model_tp {
  int32_t n;
  model *shard[MODEL_MAX_TP]; /* shard i runs on its own backend */
  bk_comm *comm;
  bk_backend *host;                 /* owned: the backend of the unsplit model */
  int32_t vocab0[MODEL_MAX_TP + 1]; /* shard i's logits are columns [vocab0[i], vocab0[i+1]) */
  float *host_logits;               /* host [n_out][largest slice], grown on demand */
  size_t host_logits_n;
};

/* parts[i] (shard i's device f32 [count]) = the sum over shards. */
bl_status model_tp_all_reduce(model *m, float *const *parts, size_t count, bl_err *err);
/* Shard i's logits (its scratch, [n_out][slice]) into columns vocab0[i].. of
 * the host logits [n_out][vocab]. */
bl_status model_tp_gather_logits(model *m, int32_t i, int32_t n_out, float *logits, bl_err *err);
/* Free the shards, communicator and buffers of m->tp; returns the host
 * backend, which the caller destroys after the rest of m. */
bk_backend *model_tp_release(model *m);

/* ---- forward scratch -------------------------------------------------- */

void model_scratch_free(model *m);
/* The first count floats of the logits the last step left on m's device. */
bl_status model_read_logits(model *m, float *out, size_t count, bl_err *err);

/* Run decoder layers [l0, l1) of batch b alone (calibration): the residual
 * stream enters from x_in (host f32 [n_tok][hidden]), or from the embedding
 * of b->ids when x_in is NULL (then l0 must be 0), and leaves to x_out
 * (same shape; may equal x_in; NULL: not read back). No final norm, no
 * logits. m->capture, when set, sees the linears' inputs as in
 * model_forward. */
bl_status model_forward_layers(model *m, const bk_kv_cache *kv, const model_batch *b, int32_t l0,
                               int32_t l1, const float *x_in, float *x_out, bl_err *err);

#endif
