/* sample: one token per row of device logits, with the host sampler's
 * semantics less the penalties (backend.h's bk_sample_params; the algorithm
 * is described at the top of cu_sample.cu). */
#ifndef CU_SAMPLE_CUH
#define CU_SAMPLE_CUH

#include "cu_common.cuh"

/* Largest vocab the kernel takes: token ids fill the low 22 bits of its
 * 64-bit sort key. */
#define CU_SAMPLE_MAX_VOCAB (1 << 22)

/* ids: device int32 [n], written; logits: device f32 [n][vocab]; p: host
 * [n], copied to the context's parameter buffer (grown on demand) before
 * the call returns. BL_EINVAL: vocab outside 1 .. CU_SAMPLE_MAX_VOCAB. */
bl_status cu_sample_launch(cu_ctx *c, int32_t *ids, const float *logits, int32_t n, int32_t vocab,
                           const bk_sample_params *p);

#endif
