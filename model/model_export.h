/* Writing models out: GPTQ-format Hugging Face folders (`ballast quantize`). */
#ifndef MODEL_EXPORT_H
#define MODEL_EXPORT_H

#include "model.h"

typedef enum model_quant_method {
  MODEL_QUANT_RTN = 0, /* round-to-nearest per group */
  MODEL_QUANT_GPTQ,    /* GPTQ with calibration tokens (sequential, no act-order) */
} model_quant_method;

typedef struct model_export_opts {
  int32_t bits;       /* 2 or 4 */
  int32_t group_size; /* multiple of 32 dividing every layer width */
  bool sym;
  model_quant_method method;
  /* GPTQ only: */
  const int32_t *calib_ids; /* [n_calib] token ids */
  int32_t n_calib;
  int32_t calib_seq_len; /* tokens per calibration sequence; 0: 256 */
  double damp;           /* fraction of mean diag(H) added to it; 0: 0.01 */
  int n_threads;         /* solver threads; 0: online cores */
  bool verbose;          /* log per-linear GPTQ losses */
} model_export_opts;

/* Quantize m's linears and write dir/. GPTQ replaces m's linears by the
 * quantized ones as it goes (m then computes what the folder holds). */
bl_status model_export_gptq(model *m, const char *dir, const model_export_opts *o, bl_err *err);

/* Calibration ids from text: tokenized with m's tokenizer, n_tokens taken
 * as windows of seq_len spread evenly over it (all of it when shorter).
 * *ids is malloc'd. */
bl_status model_calib_from_text(const model *m, const char *text, size_t len, int32_t n_tokens,
                                int32_t seq_len, int32_t **ids, int32_t *n_ids, bl_err *err);
/* n deterministic pseudo-random ids below the vocabulary size (for models
 * without a tokenizer; a poor calibration set). */
void model_calib_random(const model *m, int32_t n, uint64_t seed, int32_t *ids);

#endif
