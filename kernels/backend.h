/* The backend interface: one table of function pointers per device.
 *
 * The forward pass (model/forward.c) is written once against the bk_*
 * wrappers below; kernels/cpu and kernels/cuda fill the table. All pointers
 * passed to ops are device pointers obtained from be->alloc (on the CPU
 * backend these are host pointers). Activations are float32, row-major,
 * one row per token. Weights are described by bk_weight in one canonical
 * host layout (below); a backend may repack them once in weight_prepare.
 *
 * Ops are asynchronous on devices that queue work; be->sync waits. Every op
 * returns BL_OK or BL_EDEVICE (a failed device call, or an id/slot/block
 * out of range, which backends check; the caller marks the replica
 * unhealthy). Callers (model_forward) validate shapes and token ids before
 * calling; the slots trust them. A negative KV slot means "write nothing"
 * (padding). Unless an op says otherwise outputs must not alias inputs. */
#ifndef BK_BACKEND_H
#define BK_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bl_status.h"

/* ---- weights ---------------------------------------------------------- */

typedef enum bk_wfmt {
  BK_WF_F16 = 0, /* fp16 [rows][cols] */
  BK_WF_W4 = 1,  /* 4-bit groups, w = scale*q + min, q in 0..15 */
  BK_WF_W2 = 2,  /* 2-bit groups, w = scale*q + min, q in 0..3 */
} bk_wfmt;

/* Quantized rows are split into blocks of BK_QBLOCK consecutive (packed-order)
 * columns. Within a block:
 *  W4: 16 bytes; byte j holds element j in bits 0-3 and element j+16 in 4-7.
 *  W2: 8 bytes; byte j holds elements j, j+8, j+16, j+24 in bits 0-1, 2-3,
 *      4-5, 6-7.
 * so a SIMD lane unpacks contiguous runs with one shift and mask. Groups are
 * whole blocks: group_size is a multiple of BK_QBLOCK, cols of group_size. */
#define BK_QBLOCK 32

typedef struct bk_weight {
  bk_wfmt fmt;
  int32_t rows;           /* output features */
  int32_t cols;           /* input features */
  int32_t group_size;     /* quantized: columns per (scale, min) pair; == cols for one group */
  const void *q;          /* F16: uint16 [rows][cols]; W4/W2: uint8 [rows][cols*bits/8] */
  const uint16_t *scales; /* fp16 [rows][cols/group_size] (quantized only) */
  const uint16_t *mins;   /* fp16 [rows][cols/group_size] (quantized only) */
  const int32_t *perm;    /* NULL, or [cols]: packed column k multiplies x[perm[k]]
                             (GPTQ act-order, rows sorted so groups are contiguous) */
  void *dev;              /* the backend's prepared copy; NULL where it reads the host arrays */
} bk_weight;

static inline int bk_wfmt_bits(bk_wfmt f) { return f == BK_WF_W4 ? 4 : f == BK_WF_W2 ? 2 : 16; }
const char *bk_wfmt_name(bk_wfmt f);
/* Bytes of one packed row (q only). */
size_t bk_weight_row_bytes(bk_wfmt f, int32_t cols);
/* Pack cols quantized values (0..2^bits-1, one per byte) into the block layout. */
void bk_pack_row(bk_wfmt f, const uint8_t *vals, int32_t cols, uint8_t *out);
/* Inverse of bk_pack_row. */
void bk_unpack_row(bk_wfmt f, const uint8_t *packed, int32_t cols, uint8_t *vals);
/* Dequantize row r of w into out[cols] in packed column order (the CPU
 * reference every kernel is checked against). */
void bk_weight_row_f32(const bk_weight *w, int32_t r, float *out);

/* ---- KV cache --------------------------------------------------------- */

/* Element formats of the paged KV cache. Encodings, rounding and the rules
 * that derive scales from the data live in kvcache/kv_format.h, which every
 * backend includes (one copy of each rule). */
typedef enum bk_kvfmt {
  BK_KV_F16 = 0,   /* fp16 values */
  BK_KV_FP8 = 1,   /* E4M3 values (max 448, saturating) with scales: bk_kvscale */
  BK_KV_NVFP4 = 2, /* E2M1 values, two per byte; an E4M3 scale per 16; an fp32 scale per tensor */
} bk_kvfmt;

/* How fp8 values are scaled (the other formats ignore it). */
typedef enum bk_kvscale {
  BK_KVS_HEAD = 0,   /* one power-of-two (E8M0) scale per (token, kv head), in the block */
  BK_KVS_TENSOR = 1, /* one fp32 scale per (layer, K or V), calibrated by the first kv_write */
} bk_kvscale;

/* Paged KV storage for all layers of one model on one device. Per layer,
 * k[l] and v[l] are [n_blocks][n_kv_heads] units; a unit holds block_size
 * value rows ([block_size][bk_kv_row_bytes]) followed by block_size scale
 * rows ([block_size][bk_kv_scale_bytes]). A cache slot is block *
 * block_size + offset. Per token and kv head (x = the stored value):
 *   F16:          row = fp16 [head_dim]; no scales.
 *   FP8 HEAD:     row = E4M3 [head_dim]; scale = one E8M0 byte b;
 *                 x = e4m3 * 2^(b - 127).
 *   FP8 TENSOR:   row = E4M3 [head_dim]; no scale rows; x = e4m3 * ts.
 *   NVFP4:        row = [head_dim / 2] bytes, element 2i in the low nibble of
 *                 byte i, 2i+1 in the high; scales = E4M3 [head_dim / 16];
 *                 x = e2m1 * e4m3(scale[i / 16]) * ts. head_dim % 16 == 0.
 * ts = tensor_scales[2 * layer] for K, [2 * layer + 1] for V: device fp32
 * [n_layers][2] for FP8 TENSOR and NVFP4 (NULL otherwise), zeroed at
 * creation; 0 means "not calibrated" and the layer's first kv_write sets it
 * from the data it writes (kv_format.h), after which it stays fixed.
 * kvcache/ owns the block bookkeeping; the backend only reads and writes slots. */
typedef struct bk_kv_cache {
  bk_kvfmt fmt;
  bk_kvscale scaling; /* FP8 only */
  int32_t n_layers, n_blocks, block_size, n_kv_heads, head_dim;
  void **k, **v;        /* host arrays [n_layers] of device pointers */
  float *tensor_scales; /* device fp32 [n_layers][2], or NULL (see above) */
} bk_kv_cache;

/* Bytes of one token's values for one kv head. */
static inline size_t bk_kv_row_bytes(bk_kvfmt f, int32_t head_dim) {
  return f == BK_KV_F16   ? 2 * (size_t)head_dim
         : f == BK_KV_FP8 ? (size_t)head_dim
                          : (size_t)head_dim / 2;
}

/* Bytes of one token's scales for one kv head. */
static inline size_t bk_kv_scale_bytes(bk_kvfmt f, bk_kvscale s, int32_t head_dim) {
  return f == BK_KV_FP8 ? (s == BK_KVS_HEAD ? 1 : 0) : f == BK_KV_NVFP4 ? (size_t)head_dim / 16 : 0;
}

/* Does the format keep fp32 tensor scales (kv->tensor_scales)? */
static inline bool bk_kv_tensor_scaled(bk_kvfmt f, bk_kvscale s) {
  return f == BK_KV_NVFP4 || (f == BK_KV_FP8 && s == BK_KVS_TENSOR);
}

/* Bytes of one (block, kv head) unit. */
static inline size_t bk_kv_unit_bytes(const bk_kv_cache *kv) {
  return (size_t)kv->block_size * (bk_kv_row_bytes(kv->fmt, kv->head_dim) +
                                   bk_kv_scale_bytes(kv->fmt, kv->scaling, kv->head_dim));
}

/* Can a cache of this format hold heads of this size? */
static inline bool bk_kv_geometry_ok(bk_kvfmt f, int32_t head_dim) {
  return head_dim > 0 &&
         (f == BK_KV_F16 || f == BK_KV_FP8 || (f == BK_KV_NVFP4 && head_dim % 16 == 0));
}

/* Which cache positions each token of a step attends to. Token t belongs to
 * sequence tok_seq[t] at position tok_pos[t] and attends to positions
 * 0..tok_pos[t] of that sequence, found through its row of block_tables.
 * K/V of every token of the step are written (kv_write) before attention,
 * so chunked prefill and decode are one code path. All arrays are device
 * pointers. */
typedef struct bk_attn_batch {
  int32_t n_tok;
  const int32_t *tok_seq;      /* [n_tok] */
  const int32_t *tok_pos;      /* [n_tok] */
  const int32_t *block_tables; /* [n_seq][max_blocks] block ids */
  int32_t n_seq, max_blocks;
} bk_attn_batch;

/* ---- per-op parameters ------------------------------------------------ */

typedef enum bk_rope_style {
  BK_ROPE_NEOX = 0, /* rotate_half: pairs (j, j + d/2), HF Llama/Qwen3 */
  BK_ROPE_NORM = 1, /* interleaved pairs (2j, 2j+1), GGUF llama layout */
} bk_rope_style;

typedef struct bk_heads {
  int32_t n_heads, n_kv_heads, head_dim;
  float rope_theta;
  bk_rope_style rope_style;
  float norm_eps; /* for the per-head q/k RMSNorm (Qwen3) */
} bk_heads;

/* ---- the device ------------------------------------------------------- */

/* What a backend runs on, for reports (`ballast bench`, `ballast
 * kv-capacity`). Fields a backend cannot know are 0 (or "" for the name). */
typedef struct bk_device_info {
  char name[96];                    /* "NVIDIA H200"; the CPU's model name */
  uint64_t mem_total, mem_free;     /* bytes: device memory, or host RAM (free = available) */
  double peak_gb_s;                 /* rated memory bandwidth, 1e9 bytes/s; 0: unknown */
  int sm_count, cc_major, cc_minor; /* CUDA multiprocessors, compute capability; 0 on a CPU */
} bk_device_info;

/* ---- sampling --------------------------------------------------------- */

/* One row's sampling parameters for the sample slot, with the meaning of
 * model/sampler.h's sampler_params less the penalties and logprobs:
 * temperature < 1e-5 (or NaN) is greedy (argmax, lowest id on ties, NaN
 * never wins); otherwise the logits are ranked by value, ties by lower id
 * (canonical order), cut by top_k, then top_p, then min_p, each keeping a
 * prefix of that order, and one inverse-CDF draw walks what is left with
 * u = sampler_uniform(seed, pos) (common/bl_rng.h). */
typedef struct bk_sample_params {
  float temperature; /* < 1e-5: greedy */
  int32_t top_k;     /* <= 0 or >= the non-NaN count: off */
  float top_p;       /* in (0, 1): smallest prefix with mass >= top_p; else off */
  float min_p;       /* in (0, 1]: keep p >= min_p * p_max; <= 0: off */
  uint64_t seed;
  int32_t pos; /* >= 0: the generated position, the draw's counter */
} bk_sample_params;

/* ---- the table -------------------------------------------------------- */

typedef struct bk_backend bk_backend;

struct bk_backend {
  const char *name; /* "cpu", "cuda:0" */
  void *ctx;

  void (*destroy)(bk_backend *be);
  void *(*alloc)(bk_backend *be, size_t bytes); /* NULL on failure */
  void (*free)(bk_backend *be, void *p);
  bl_status (*upload)(bk_backend *be, void *dst, const void *host_src, size_t bytes);
  bl_status (*download)(bk_backend *be, void *host_dst, const void *src, size_t bytes);
  bl_status (*copy)(bk_backend *be, void *dst, const void *src, size_t bytes);
  bl_status (*memset0)(bk_backend *be, void *dst, size_t bytes);
  bl_status (*sync)(bk_backend *be);

  /* Optional (NULL: the op reads the host arrays in place). */
  bl_status (*weight_prepare)(bk_backend *be, bk_weight *w);
  void (*weight_release)(bk_backend *be, bk_weight *w);

  /* out[n][cols] = row ids[i] of table, dequantized, in natural column
   * order (a permuted table is written back through perm). */
  bl_status (*embed)(bk_backend *be, float *out, const bk_weight *table, const int32_t *ids,
                     int32_t n);
  /* out[n][dim] = x * rsqrt(mean(x^2) + eps) * w, in float32. out may be x. */
  bl_status (*rmsnorm)(bk_backend *be, float *out, const float *x, const float *w, int32_t n,
                       int32_t dim, float eps);
  /* In place on q[n][n_heads*head_dim] and k[n][n_kv_heads*head_dim]: optional
   * per-head RMSNorm with q_norm/k_norm [head_dim] (NULL: none), then RoPE at
   * positions pos[n]. */
  bl_status (*qk_norm_rope)(bk_backend *be, float *q, float *k, const float *q_norm,
                            const float *k_norm, const int32_t *pos, int32_t n, const bk_heads *h);
  /* y[n][rows] = x[n][cols] . W^T for any bk_wfmt. y never aliases x. */
  bl_status (*matmul)(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n);
  /* out[i] = silu(gate[i]) * up[i]; out may alias gate. */
  bl_status (*silu_mul)(bk_backend *be, float *out, const float *gate, const float *up, size_t n);
  /* x[i] += y[i]. */
  bl_status (*add)(bk_backend *be, float *x, const float *y, size_t n);
  /* Store k[n][n_kv_heads*head_dim], v[n][...] of layer at cache slots[n],
   * encoded in kv->fmt (first calibrating the layer's tensor scales where
   * the format has them and they are still 0). BL_EINVAL: a format or
   * head_dim the backend cannot hold (bk_kv_geometry_ok). */
  bl_status (*kv_write)(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                        const float *v, const int32_t *slots, int32_t n);
  /* out[n][n_heads*head_dim] = softmax(q k^T / sqrt(head_dim)) v over the
   * positions bk_attn_batch names, GQA by head index / (n_heads/n_kv_heads),
   * decoding kv->fmt inside the op (no dequantized copy of the cache). out
   * must not alias q. */
  bl_status (*attention)(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                         int32_t layer, const bk_attn_batch *b, const bk_heads *h);

  /* Optional (NULL: none kept): what the last failed op met, as text ("" or
   * NULL before any), e.g. "cuda:0: cudaMemcpyAsync: cudaErrorIllegalAddress
   * (...)". model_forward puts it in its error, and so in the message a
   * replica that turns unhealthy fails its requests with. The CUDA
   * backend's text is cu_last_error (kernels/cuda/cu_ops.h). */
  const char *(*last_error)(const bk_backend *be);

  /* Optional (NULL: the backend cannot say): fill *out with what the
   * backend runs on (bk_device_info; mem_free as of this call). BL_OK, or
   * BL_EDEVICE when a device query failed. Not an op: it queues nothing
   * and may be called at any time from the thread that drives be. */
  bl_status (*device_info)(const bk_backend *be, bk_device_info *out);

  /* Optional (NULL: the caller downloads the logits and samples on the
   * host with model/sampler.h): ids[i] = the token drawn from row i of
   * logits[n][vocab] under p[i] (bk_sample_params), the same token as
   * sampler_sample(p[i], row i, vocab, pos) but for draws that land within
   * float rounding of a boundary of the kept distribution. ids: device
   * int32 [n], written; logits: device f32 [n][vocab], read only; p: host
   * array [n], which the op copies before it returns. BL_EINVAL: a vocab
   * the op cannot take (< 1 or too large for the backend). */
  bl_status (*sample)(bk_backend *be, int32_t *ids, const float *logits, int32_t n, int32_t vocab,
                      const bk_sample_params *p);

  /* Optional, all four or none (NULL: no graphs): record a run of ops once
   * and replay it (CUDA graphs). Between capture_begin and capture_end the
   * ops run nothing: they are recorded with the pointers and sizes they
   * are given, and device memory is read and written when the recording
   * is replayed. Inside a capture ops must not allocate, copy to or from
   * the host or sync; one that would fails, and so does capture_end,
   * which then leaves no recording (the backend is as before the
   * capture). graph_launch queues a recording as its ops would be queued;
   * BL_AGAIN: the backend's own buffers that it used have moved since
   * (its scratch grew), so it must be recorded again (graph_free it). */
  bl_status (*capture_begin)(bk_backend *be);
  bl_status (*capture_end)(bk_backend *be, void **graph);
  bl_status (*graph_launch)(bk_backend *be, void *graph);
  void (*graph_free)(bk_backend *be, void *graph);
};

/* be->device_info, or BL_EUNSUPPORTED (and *out zeroed) where the slot is
 * NULL. */
static inline bl_status bk_device_info_get(const bk_backend *be, bk_device_info *out) {
  memset(out, 0, sizeof *out);
  return be->device_info ? be->device_info(be, out) : BL_EUNSUPPORTED;
}

/* Create the CPU backend with n_threads workers (0: all online cores). */
bl_status bk_cpu_create(int n_threads, bk_backend **out, bl_err *err);
/* Create the CUDA backend on device ordinal dev; BL_EUNSUPPORTED where the
 * build has no CUDA or no device is present. */
bl_status bk_cuda_create(int dev, bk_backend **out, bl_err *err);

/* The null backend: ops that do nothing, for measuring host-side overhead. */
bl_status bk_null_create(bk_backend **out, bl_err *err);

static inline void bk_destroy(bk_backend *be) {
  if (be) be->destroy(be);
}

#endif
