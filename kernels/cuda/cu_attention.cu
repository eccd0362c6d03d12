/* attention: one block per (token, q head) of W warps, W = 4, 8 or 16 by the
 * longest context the block tables allow (max_blocks * block_size).
 *
 * Warp w takes cache positions w, w + W, ... up to the token's position; lane
 * l holds dims l, l+32, ... (E of them) of q (pre-scaled by 1/sqrt(head_dim))
 * and of its running output. Per position: score = warp sum of q.k, then the
 * online softmax update (running max m, running sum l, output rescaled by
 * exp(m_old - m_new)). At the end the warps' (m, l, acc) are merged through
 * shared memory. Lanes read consecutive elements of a cache row, so a warp's
 * loads of one position are coalesced.
 *
 * The KV format is a template parameter (cu_kv_kind): fp16 rows are read as
 * halves; fp8 and nvfp4 elements are decoded in registers with the software
 * E4M3/E2M1 decoders of kvcache/kv_format.h (integer bit operations and one
 * exact multiply; sm_90 has no fp4 conversion instruction, and this keeps
 * the decode identical to the CPU backend's), times the row's E8M0 scale,
 * the tensor scale, or the group's E4M3 scale times the tensor scale. The
 * online softmax is the same for every format.
 *
 * Built for sm_100a (-Dgpu_arch=100a), E2M1 values are decoded by the
 * conversion instruction instead (cvt.rn.f16x2.e2m1x2, both nibbles of a
 * byte to two halves; every E2M1 value is exact in fp16, so the result is
 * the software decoder's). It is used only where cu_e2m1_probe, run when
 * the backend opens, finds the instruction present and equal to the
 * software decoder on all 256 bytes (nibble order included); elsewhere, and
 * until a GPU has shown it, the kernels take the software path.
 *
 * Ids from the batch are checked before they index anything: a token whose
 * sequence is outside the batch or whose position is past its block-table
 * row gets a zero output, a block id outside the cache leaves that position
 * out; each is recorded in the device error word (cu_common.cuh) and comes
 * back as BL_EDEVICE at the next download or sync. */
#include "cu_attention.cuh"

#include <math.h>

#include "kv_format.h"

#define CU_ATTN_MAX_WARPS 16

/* Which decoder a kernel instance uses. */
enum cu_kv_kind { CU_KV_F16 = 0, CU_KV_FP8_HEAD, CU_KV_FP8_TENSOR, CU_KV_NVFP4 };

/* One cache row (token, kv head) being read: values, scales, and the scale
 * the decoder multiplies by. */
struct cu_kv_row {
  const uint8_t *v, *s;
  float scale;
};

/* Row `off` of the unit at `unit` ([block_size] value rows of rb bytes, then
 * [block_size] scale rows of sb bytes); ts is the tensor scale. */
template <int KIND>
static __device__ __forceinline__ cu_kv_row cu_kv_row_at(const uint8_t *unit, int off, int bs,
                                                         int rb, int sb, float ts) {
  cu_kv_row r;
  r.v = unit + (size_t)off * rb;
  r.s = unit + (size_t)bs * rb + (size_t)off * sb;
  r.scale = KIND == CU_KV_FP8_HEAD ? kv_e8m0_to_f32(r.s[0]) : ts;
  return r;
}

/* Nibble `hi` (0: bits 0-3, 1: bits 4-7) of byte b as E2M1, by the
 * conversion instruction where the build has it; *hw says whether it did. */
static __device__ __forceinline__ float cu_e2m1_hw(uint8_t b, int hi, bool *hw) {
#if defined(__CUDA_ARCH_FEAT_SM100_ALL) || defined(__CUDA_ARCH_FEAT_SM101_ALL)
  uint32_t h2;
  asm("{\n\t.reg .b8 b8;\n\tcvt.u8.u16 b8, %1;\n\tcvt.rn.f16x2.e2m1x2 %0, b8;\n\t}"
      : "=r"(h2)
      : "h"((unsigned short)b));
  *hw = true;
  return __half2float(__ushort_as_half((unsigned short)(hi ? h2 >> 16 : h2 & 0xFFFFu)));
#else
  *hw = false;
  return kv_e2m1_to_f32((uint8_t)((b >> (4 * hi)) & 15u));
#endif
}

/* Element d of a row; e2m1_hw: decode nvfp4 values with the instruction
 * (cu_e2m1_probe said it is right on this device). */
template <int KIND>
static __device__ __forceinline__ float cu_kv_elem(const cu_kv_row &r, int d, bool e2m1_hw) {
  if (KIND == CU_KV_F16) return __half2float(((const __half *)(const void *)r.v)[d]);
  if (KIND == CU_KV_NVFP4) {
    if (!e2m1_hw) return kv_nvfp4_elem(r.v, r.s, r.scale, d);
    bool hw;
    return cu_e2m1_hw(r.v[d >> 1], d & 1, &hw) *
           (kv_e4m3_to_f32(r.s[d / KV_NVFP4_GROUP]) * r.scale);
  }
  return kv_e4m3_to_f32(r.v[d]) * r.scale;
}

/* bad[0]: bytes whose hardware decode differs from the software one;
 * bad[1]: 1 where the instruction exists in this build. */
static __global__ void cu_e2m1_probe_kernel(unsigned *bad) {
  int b = threadIdx.x, wrong = 0;
  bool hw = false;
  for (int hi = 0; hi < 2; hi++) {
    float got = cu_e2m1_hw((uint8_t)b, hi, &hw);
    float want = kv_e2m1_to_f32((uint8_t)((b >> (4 * hi)) & 15));
    wrong |= got != want || signbit(got) != signbit(want);
  }
  if (wrong) atomicAdd(&bad[0], 1u);
  if (b == 0) bad[1] = hw ? 1u : 0u;
}

bool cu_e2m1_probe(cu_ctx *c) {
  unsigned *d = NULL, h[2] = {1, 0};
  if (cudaMalloc(&d, sizeof h) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  bool ok = cudaMemsetAsync(d, 0, sizeof h, c->stream) == cudaSuccess;
  if (ok) {
    cu_e2m1_probe_kernel<<<1, 256, 0, c->stream>>>(d);
    ok = cudaGetLastError() == cudaSuccess &&
         cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, c->stream) == cudaSuccess &&
         cudaStreamSynchronize(c->stream) == cudaSuccess;
  }
  cudaFree(d);
  cudaGetLastError();
  if (ok && h[1] && h[0])
    bl_log(BL_LOG_WARN,
           "%s: the E2M1 conversion instruction disagrees with the software decoder "
           "on %u of 256 bytes; nvfp4 KV is decoded in software",
           c->name, h[0]);
  return ok && h[1] && !h[0];
}

template <int E, int KIND>
static __global__ void __launch_bounds__(CU_ATTN_MAX_WARPS * 32)
    cu_attention_kernel(float *__restrict__ out, const float *__restrict__ q,
                        const uint8_t *__restrict__ kc, const uint8_t *__restrict__ vc,
                        const float *__restrict__ ts, const int32_t *__restrict__ tok_seq,
                        const int32_t *__restrict__ tok_pos,
                        const int32_t *__restrict__ block_tables, int n_seq, int max_blocks,
                        int n_blocks, int n_heads, int n_kv_heads, int head_dim, int block_size,
                        int rb, int sb, float scale, bool e2m1_hw, cu_derr *derr) {
  __shared__ float s_m[CU_ATTN_MAX_WARPS], s_l[CU_ATTN_MAX_WARPS];
  __shared__ float s_acc[CU_ATTN_MAX_WARPS][E * 32];
  int t = blockIdx.x, h = blockIdx.y;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  int kvh = h / (n_heads / n_kv_heads);
  int pos = tok_pos[t], seq = tok_seq[t];
  const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
  float *oh = out + ((size_t)t * n_heads + h) * head_dim;
  /* Block-uniform checks, before any barrier: the whole block leaves. */
  bool bad_seq = seq < 0 || seq >= n_seq, bad_pos = pos >= max_blocks * block_size;
  if (bad_seq || bad_pos) {
    if (threadIdx.x == 0 && h == 0) {
      if (bad_seq)
        cu_derr_set(derr, CU_DERR_ATTN_SEQ, seq, n_seq);
      else
        cu_derr_set(derr, CU_DERR_ATTN_POS, pos, max_blocks * block_size);
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
      oh[d] = 0.0f;
    return;
  }
  const int32_t *table = block_tables + (size_t)seq * max_blocks;
  size_t unit_bytes = (size_t)block_size * (size_t)(rb + sb);
  float ts_k = ts ? ts[0] : 0.0f, ts_v = ts ? ts[1] : 0.0f;

  float qr[E], acc[E];
#pragma unroll
  for (int i = 0; i < E; i++) {
    int d = lane + 32 * i;
    qr[i] = d < head_dim ? qh[d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int p = warp; p <= pos; p += n_warps) {
    int blk = table[p / block_size]; /* the same for every lane: warp-uniform */
    if (blk < 0 || blk >= n_blocks) {
      if (lane == 0) cu_derr_set(derr, CU_DERR_ATTN_BLOCK, blk, n_blocks);
      continue;
    }
    size_t unit = ((size_t)blk * n_kv_heads + kvh) * unit_bytes;
    int off = p % block_size;
    cu_kv_row kr = cu_kv_row_at<KIND>(kc + unit, off, block_size, rb, sb, ts_k);
    cu_kv_row vr = cu_kv_row_at<KIND>(vc + unit, off, block_size, rb, sb, ts_v);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < E; i++) {
      int d = lane + 32 * i;
      if (d < head_dim) s += qr[i] * cu_kv_elem<KIND>(kr, d, e2m1_hw);
    }
    s = cu_warp_sum(s);
    float m_new = fmaxf(m, s);
    float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
#pragma unroll
    for (int i = 0; i < E; i++) {
      int d = lane + 32 * i;
      float vd = d < head_dim ? cu_kv_elem<KIND>(vr, d, e2m1_hw) : 0.0f;
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
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < n_warps; w++)
      if (s_m[w] != -INFINITY) o += s_acc[w][d] * expf(s_m[w] - mx);
    oh[d] = o * inv;
  }
}

template <int E, int KIND>
static void cu_attention_launch_k(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                                  int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  /* More warps for longer contexts; short ones would leave them idle. */
  size_t ctx = (size_t)b->max_blocks * (size_t)kv->block_size;
  unsigned warps = ctx >= 1024 ? 16 : ctx >= 256 ? 8 : 4;
  dim3 grid((unsigned)b->n_tok, (unsigned)h->n_heads);
  const float *ts =
      bk_kv_tensor_scaled(kv->fmt, kv->scaling) ? kv->tensor_scales + 2 * (size_t)layer : NULL;
  cu_attention_kernel<E, KIND><<<grid, warps * 32, 0, c->stream>>>(
      out, q, (const uint8_t *)kv->k[layer], (const uint8_t *)kv->v[layer], ts, b->tok_seq,
      b->tok_pos, b->block_tables, b->n_seq, b->max_blocks, kv->n_blocks, h->n_heads, h->n_kv_heads,
      h->head_dim, kv->block_size, (int)bk_kv_row_bytes(kv->fmt, kv->head_dim),
      (int)bk_kv_scale_bytes(kv->fmt, kv->scaling, kv->head_dim), 1.0f / sqrtf((float)h->head_dim),
      c->e2m1_hw, c->derr);
}

template <int E>
static void cu_attention_launch_e(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                                  int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  switch (kv->fmt) {
  case BK_KV_F16: cu_attention_launch_k<E, CU_KV_F16>(c, out, q, kv, layer, b, h); break;
  case BK_KV_FP8:
    if (kv->scaling == BK_KVS_TENSOR)
      cu_attention_launch_k<E, CU_KV_FP8_TENSOR>(c, out, q, kv, layer, b, h);
    else
      cu_attention_launch_k<E, CU_KV_FP8_HEAD>(c, out, q, kv, layer, b, h);
    break;
  case BK_KV_NVFP4: cu_attention_launch_k<E, CU_KV_NVFP4>(c, out, q, kv, layer, b, h); break;
  }
}

bl_status cu_attention_launch(cu_ctx *c, float *out, const float *q, const bk_kv_cache *kv,
                              int32_t layer, const bk_attn_batch *b, const bk_heads *h) {
  if (b->n_tok <= 0) return BL_OK;
  if (!bk_kv_geometry_ok(kv->fmt, kv->head_dim) || kv->head_dim != h->head_dim)
    return cu_invalid(c, "attention", "a KV format or cache head_dim that does not fit the heads");
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
