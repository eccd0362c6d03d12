/* attention: causal paged attention over the KV cache (fp16, fp8 or nvfp4,
 * decoded in registers) for a mixed batch of decode tokens and prefill
 * chunks (bk_attn_batch), GQA, fp32 online softmax. */
#ifndef CU_ATTENTION_CUH
#define CU_ATTENTION_CUH

#include "cu_common.cuh"

/* Largest head_dim the kernel takes (8 values per lane). */
#define CU_ATTN_MAX_HEAD_DIM 256

/* out, q: [n_tok][n_heads*head_dim] fp32; the batch's arrays are device
 * pointers. */
bl_status cu_attention_launch(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                              int32_t layer, const bk_attn_batch *b, const bk_heads *h);

/* Does this build and device decode E2M1 by instruction (sm_100a), equal
 * to the software decoder on every byte? Run once when the backend opens
 * (it syncs); false on any failure. */
bool cu_e2m1_probe(cu_ctx *c);

#endif
