/* qk_norm_rope: one block per (token, head), q heads first, then k heads;
 * each thread owns rotation pairs.
 *
 * Angles follow HF transformers in fp32: inv_freq[i] = 1 / theta^(2i/d),
 * angle = pos * inv_freq[i], so results match the reference implementations
 * to a few ulps of the angle. NEOX pairs (i, i + d/2), NORM pairs (2i, 2i+1);
 * both use frequency i for pair i. */
#include "cu_rope.cuh"

static __global__ void cu_qk_norm_rope_kernel(float *q, float *k, const float *__restrict__ q_norm,
                                              const float *__restrict__ k_norm,
                                              const int32_t *__restrict__ pos, int n_heads,
                                              int n_kv_heads, int head_dim, float theta, int neox,
                                              float eps) {
  int t = blockIdx.x, head = blockIdx.y;
  bool is_q = head < n_heads;
  float *v = is_q ? q + ((size_t)t * n_heads + head) * head_dim
                  : k + ((size_t)t * n_kv_heads + (head - n_heads)) * head_dim;
  const float *nw = is_q ? q_norm : k_norm;
  float r = 1.0f;
  if (nw) { /* uniform over the block: every thread reaches the barriers */
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
      ss += v[i] * v[i];
    ss = cu_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)head_dim + eps);
  }
  int half = head_dim / 2;
  float p = (float)pos[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
    float x0 = v[i0] * r, x1 = v[i1] * r;
    if (nw) {
      x0 *= nw[i0];
      x1 *= nw[i1];
    }
    float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    float s, co;
    sincosf(p * inv_freq, &s, &co);
    v[i0] = x0 * co - x1 * s;
    v[i1] = x0 * s + x1 * co;
  }
}

bl_status cu_qk_norm_rope_launch(cu_ctx *c, float *q, float *k, const float *q_norm,
                                 const float *k_norm, const int32_t *pos, int32_t n,
                                 const bk_heads *h) {
  if (n <= 0) return BL_OK;
  if (h->head_dim <= 0 || h->head_dim % 2)
    return cu_invalid(c, "qk_norm_rope", "head_dim must be even");
  dim3 grid((unsigned)n, (unsigned)(h->n_heads + h->n_kv_heads));
  unsigned threads = h->head_dim > 128 ? 128 : 64;
  cu_qk_norm_rope_kernel<<<grid, threads, 0, c->stream>>>(
      q, k, q_norm, k_norm, pos, h->n_heads, h->n_kv_heads, h->head_dim, h->rope_theta,
      h->rope_style == BK_ROPE_NEOX, h->norm_eps);
  CU_CHECK_LAUNCH(c, "cu_qk_norm_rope_kernel");
  return BL_OK;
}

extern "C" bl_status cu_qk_norm_rope(bk_backend *be, float *q, float *k, const float *q_norm,
                                     const float *k_norm, const int32_t *pos, int32_t n,
                                     const bk_heads *h) {
  CU_ENTER(c, be);
  return cu_qk_norm_rope_launch(c, q, k, q_norm, k_norm, pos, n, h);
}
