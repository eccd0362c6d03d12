/* Writing models out: GPTQ-format Hugging Face folders (`ballast quantize`). */
#ifndef MODEL_EXPORT_H
#define MODEL_EXPORT_H

#include "model.h"

typedef struct model_export_opts {
  int32_t bits;       /* 2 or 4 */
  int32_t group_size; /* multiple of 32 dividing every layer width */
  bool sym;
} model_export_opts;

/* Quantize m's linears (round-to-nearest per group) and write dir/. */
bl_status model_export_gptq(model *m, const char *dir, const model_export_opts *o, bl_err *err);

#endif
