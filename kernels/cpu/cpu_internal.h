/* Shared between the CPU backend's files: the backend context (thread pool,
 * chosen kernel table, scratch grown on demand) and the op entry points the
 * table in cpu_backend.c points at. A backend is driven by one thread at a
 * time, so the scratch buffers need no lock. */
#ifndef CPU_INTERNAL_H
#define CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "cpu_kern.h"
#include "cpu_pool.h"

/* Aim for chunks of at least this many float-sized units of work, so a
 * small op runs on the caller alone instead of paying for a dispatch. */
#define CPU_MIN_WORK 16384

typedef struct cpu_buf {
  void *p; /* 64-byte aligned */
  size_t cap;
} cpu_buf;

typedef struct cpu_ctx {
  cpu_pool *pool;
  const cpu_kern *k;
  int n_threads;
  char name[32]; /* "cpu(avx2)" */
  cpu_buf mm_x;  /* float [n][cols]: the matmul input, gathered/prepared */
  cpu_buf mm_xs; /* float [n][cols/group_size]: its per-group sums */
  cpu_buf thr;   /* per-thread scratch, [n_threads][stride] as each op lays it out */
} cpu_ctx;

/* At least bytes of scratch in b (contents not kept); NULL when out of memory. */
void *cpu_buf_get(cpu_buf *b, size_t bytes);
/* Log an allocation failure inside an op and return the op's failure status. */
bl_status cpu_op_oom(const char *op, size_t bytes);

/* Items per chunk so that one chunk holds about CPU_MIN_WORK units. */
static inline int64_t cpu_grain(int64_t work_per_item) {
  int64_t g = work_per_item > 0 ? CPU_MIN_WORK / work_per_item : 1;
  return g < 1 ? 1 : g;
}

/* Floats of per-thread scratch, rounded so each thread's slice starts on
 * its own cache line. */
static inline size_t cpu_thr_stride(size_t floats) { return (floats + 15) / 16 * 16; }

/* The device_info slot (cpu_info.c): /proc/cpuinfo's model name, host RAM. */
bl_status cpu_device_info(const bk_backend *be, bk_device_info *out);
bl_status cpu_matmul(bk_backend *be, float *y, const float *x, const bk_weight *w, int32_t n);
bl_status cpu_qk_norm_rope(bk_backend *be, float *q, float *k, const float *q_norm,
                           const float *k_norm, const int32_t *pos, int32_t n, const bk_heads *h);
bl_status cpu_kv_write(bk_backend *be, const bk_kv_cache *kv, int32_t layer, const float *k,
                       const float *v, const int32_t *slots, int32_t n);
bl_status cpu_attention(bk_backend *be, float *out, const float *q, const bk_kv_cache *kv,
                        int32_t layer, const bk_attn_batch *b, const bk_heads *h);
/* Decode rows 0..cnt-1 of one (block, kv head) unit of kv (cpu_kv.c) into
 * out [cnt][head_dim] float32; ts is the tensor scale where the format has
 * one. */
void cpu_kv_dequant_rows(const bk_kv_cache *kv, const uint8_t *unit, int32_t cnt, float ts,
                         float *out);

#endif
