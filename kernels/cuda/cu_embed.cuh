/* embed: out[n][cols] = row ids[i] of a prepared table, dequantized to fp32
 * (as bk_weight_row_f32) and written in natural column order: through perm
 * for a permuted table. */
#ifndef CU_EMBED_CUH
#define CU_EMBED_CUH

#include "cu_weight.cuh"

/* ids: device int32 [n]; an id outside 0..rows-1 gives a row of zeros and
 * a fault (BL_EDEVICE at the next download or sync). */
bl_status cu_embed_launch(cu_ctx *c, float *out, const cu_weight *w, const int32_t *ids, int32_t n);

#endif
