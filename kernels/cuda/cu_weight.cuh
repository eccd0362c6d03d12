/* Device layout of a prepared weight (bk_weight.dev) and the dequantization
 * every kernel that reads weights shares.
 *
 * weight_prepare copies the canonical host layout (backend.h) with two
 * changes: every row starts on a 16-byte boundary, so a kernel streams a row
 * with 16-byte loads (the padding bytes are zero); and the scales and mins
 * of four consecutive rows sit side by side per group, so the GEMV's warp of
 * four rows gets a block's (scale, min) for all of them with one 16-byte
 * load, and a warp's lanes (consecutive groups) read consecutive bytes.
 *   F16:   q  = __half [rows][stride/2], stride = round_up(cols*2, 16);
 *   W4/W2: q  = uint8 [rows][stride], stride = round_up(cols*bits/8, 16),
 *          blocks of 32 packed columns exactly as on the host (16 bytes per
 *          W4 block: one 16-byte load is one block; 8 bytes per W2 block: one
 *          load is two blocks, the second one padding when cols/32 is odd);
 *          sm = __half2 [ceil(rows/4)][n_groups][4] with .x = scale and
 *          .y = min: (row r, group g) at cu_sm_index (the pad rows of the
 *          last quad are zero);
 *   perm   = int32 [cols] or NULL, as on the host.
 * The struct itself lives in host memory (w->dev points to it); the arrays in
 * it are device pointers. */
#ifndef CU_WEIGHT_CUH
#define CU_WEIGHT_CUH

#include "cu_common.cuh"

typedef struct cu_weight {
  bk_wfmt fmt;
  int32_t rows, cols, group_size, n_groups;
  size_t stride; /* bytes per row of q, a multiple of 16 */
  void *q;
  __half2 *sm;
  int32_t *perm;
} cu_weight;

/* Elements of one 16-byte load: 8 fp16, 32 W4 or 64 W2 values. */
static inline int cu_weight_elems_per_load(bk_wfmt f) {
  return f == BK_WF_F16 ? 8 : f == BK_WF_W4 ? 32 : 64;
}

/* The prepared copy of w, or NULL (logged) when w was not prepared. */
const cu_weight *cu_weight_of(cu_ctx *c, const bk_weight *w, const char *op);

/* Index in sm of (row r, group g). */
static __host__ __device__ __forceinline__ size_t cu_sm_index(int r, int g, int n_groups) {
  return ((size_t)(r >> 2) * (size_t)n_groups + (size_t)g) * 4 + (size_t)(r & 3);
}

/* Quantized value of packed column j (0..31) of a 32-column block whose
 * bytes start at blk (the canonical block layout of backend.h). */
template <int BITS> static __device__ __forceinline__ int cu_block_q(const uint8_t *blk, int j) {
  if constexpr (BITS == 4)
    return (blk[j & 15] >> ((j >> 4) * 4)) & 15;
  else
    return (blk[j & 7] >> ((j >> 3) * 2)) & 3;
}

/* Element (r, k) of w (packed column order) as float: fp16 exactly, or
 * scale*q + min in fp32, the same formula as bk_weight_row_f32. */
template <int BITS>
static __device__ __forceinline__ float cu_weight_elem(const uint8_t *q, const __half2 *sm,
                                                       size_t stride, int n_groups, int group_size,
                                                       int r, int k) {
  if constexpr (BITS == 16) {
    return __half2float(((const __half *)(q + (size_t)r * stride))[k]);
  } else {
    const uint8_t *blk = q + (size_t)r * stride + (size_t)(k >> 5) * (BITS * 4);
    float2 g = __half22float2(sm[cu_sm_index(r, k / group_size, n_groups)]);
    return g.x * (float)cu_block_q<BITS>(blk, k & 31) + g.y;
  }
}

#endif
