/* attention: one block per (token, q head) of W warps, W = 4, 8 or 16 by the
 * longest context the block tables allow (max_blocks * block_size).
 *
 * Warp w takes cache positions w, w + W, ... up to the token's position; lane
 * l holds dims l, l+32, ... (E of them) of q (pre-scaled by 1/sqrt(head_dim))
 * and of its running output. Per position: score = warp sum of q.k, then the
 * online softmax update (running max m, running sum l, output rescaled by
 * exp(m_old - m_new)). At the end the warps' (m, l, acc) are merged through
 * shared memory. Lanes read consecutive fp16 of a cache row, so a warp's
 * loads of one position are coalesced. */
#include "cu_attention.cuh"

#include <math.h>

#define CU_ATTN_MAX_WARPS 16

template <int E>
static __global__ void __launch_bounds__(CU_ATTN_MAX_WARPS * 32)
    cu_attention_kernel(float *__restrict__ out, const float *__restrict__ q,
                        const __half *__restrict__ kc, const __half *__restrict__ vc,
                        const int32_t *__restrict__ tok_seq, const int32_t *__restrict__ tok_pos,
                        const int32_t *__restrict__ block_tables, int max_blocks, int n_heads,
                        int n_kv_heads, int head_dim, int block_size, float scale) {
  __shared__ float s_m[CU_ATTN_MAX_WARPS], s_l[CU_ATTN_MAX_WARPS];
  __shared__ float s_acc[CU_ATTN_MAX_WARPS][E * 32];
  int t = blockIdx.x, h = blockIdx.y;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  int kvh = h / (n_heads / n_kv_heads);
  int pos = tok_pos[t];
  const int32_t *table = block_tables + (size_t)tok_seq[t] * max_blocks;
  const float *qh = q + ((size_t)t * n_heads + h) * head_dim;

  float qr[E], acc[E];
#pragma unroll
  for (int i = 0; i < E; i++) {
    int d = lane + 32 * i;
    qr[i] = d < head_dim ? qh[d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int p = warp; p <= pos; p += n_warps) {
    size_t base = (((size_t)table[p / block_size] * n_kv_heads + kvh) * block_size +
                   (size_t)(p % block_size)) *
                  head_dim;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < E; i++) {
      int d = lane + 32 * i;
      if (d < head_dim) s += qr[i] * __half2float(kc[base + d]);
    }
    s = cu_warp_sum(s);
    float m_new = fmaxf(m, s);
    float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
#pragma unroll
    for (int i = 0; i < E; i++) {
      int d = lane + 32 * i;
      float vd = d < head_dim ? __half2float(vc[base + d]) : 0.0f;
      acc[i] = acc[i] * corr + e * vd;
    }
    m = m_new;
  }

  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < E; i++)
    s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();

  /* Merge: out = sum_w acc_w * exp(m_w - M) / sum_w l_w * exp(m_w - M). */
  float mx = -INFINITY;
  for (int w = 0; w < n_warps; w++)
    mx = fmaxf(mx, s_m[w]);
  float sum = 0.0f;
  for (int w = 0; w < n_warps; w++)
    if (s_m[w] != -INFINITY) sum += s_l[w] * expf(s_m[w] - mx); /* else: no positions */
  float inv = sum > 0.0f ? 1.0f / sum : 0.0f; /* no position at all (pos < 0): zeros */
  float *oh = out + ((size_t)t * n_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < n_warps; w++)
      if (s_m[w] != -INFINITY) o += s_acc[w][d] * expf(s_m[w] - mx);
    oh[d] = o * inv;
  }
}

template <int E>
static void cu_attention_launch_e(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                                  int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  /* More warps for longer contexts; short ones would leave them idle. */
  size_t ctx = (size_t)b->max_blocks * (size_t)kv->block_size;
  unsigned warps = ctx >= 1024 ? 16 : ctx >= 256 ? 8 : 4;
  dim3 grid((unsigned)b->n_tok, (unsigned)h->n_heads);
  cu_attention_kernel<E><<<grid, warps * 32, 0, c->stream>>>(
      out, q, (const __half *)kv->k[layer], (const __half *)kv->v[layer], b->tok_seq, b->tok_pos,
      b->block_tables, b->max_blocks, h->n_heads, h->n_kv_heads, h->head_dim, kv->block_size,
      1.0f / sqrtf((float)h->head_dim));
}

bl_status cu_attention_launch(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                              int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  if (b->n_tok <= 0) return BL_OK;
  if (kv->fmt != BK_KV_F16) return cu_invalid(c, "attention", "only the fp16 KV format");
  if (h->head_dim <= 0 || h->head_dim > CU_ATTN_MAX_HEAD_DIM)
    return cu_invalid(c, "attention", "head_dim must be 1..256");
  if (h->n_kv_heads <= 0 || h->n_heads % h->n_kv_heads)
    return cu_invalid(c, "attention", "n_heads must be a multiple of n_kv_heads");
  int e = (h->head_dim + 31) / 32;
  if (e <= 1)
    cu_attention_launch_e<1>(c, out, q, kv, layer, b, h);
  else if (e <= 2)
    cu_attention_launch_e<2>(c, out, q, kv, layer, b, h);
  else if (e <= 4)
    cu_attention_launch_e<4>(c, out, q, kv, layer, b, h);
  else
    cu_attention_launch_e<8>(c, out, q, kv, layer, b, h);
  CU_CHECK_LAUNCH(c, "cu_attention_kernel");
  return BL_OK;
}

extern "C" bl_status cu_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                                  int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  CU_ENTER(c, be);
  return cu_attention_launch(c, out, q, kv, layer, b, h);
}
