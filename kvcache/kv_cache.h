/* Paged KV cache: the device storage (bk_kv_cache) plus block bookkeeping.
 *
 * Blocks hold block_size tokens of K and V for every layer. A sequence owns a
 * block table (kv_seq) that grows as it does; slot(pos) = table[pos / bs] *
 * bs + pos % bs. Blocks are reference counted so later prefix sharing can
 * hand one block to several sequences. Not thread-safe: a pool is owned by
 * one scheduler thread.
 *
 * The storage of a tensor-parallel model is split by kv head across its
 * shards (model/tp.c): dev[i] holds shard i's heads on bes[i], and one
 * block id names the same block in every shard, so the bookkeeping and the
 * block tables are the pool's alone. A pool on one backend has one shard. */
#ifndef KV_CACHE_H
#define KV_CACHE_H

#include <stdint.h>

#include "backend.h"
#include "bl_status.h"

#define KV_MAX_SHARDS 8

typedef struct kv_pool {
  bk_backend *be; /* bes[0]; NULL before init */
  int32_t n_shards;
  bk_backend *bes[KV_MAX_SHARDS]; /* not owned */
  bk_kv_cache dev[KV_MAX_SHARDS]; /* dev[i]: device storage on bes[i] */
  int32_t *free_ids;              /* stack of free block ids [n_blocks] */
  int32_t n_free;
  int32_t *refs; /* [n_blocks] */
} kv_pool;

typedef struct kv_seq {
  int32_t *blocks; /* block table */
  int32_t n_blocks, cap;
} kv_seq;

/* Bytes of device memory one block takes over all layers (K and V, values
 * and per-token scales; layout in backend.h). */
uint64_t kv_block_bytes(bk_kvfmt fmt, bk_kvscale scaling, int32_t n_layers, int32_t n_kv_heads,
                        int32_t head_dim, int32_t block_size);

/* A pool's geometry and format. */
typedef struct kv_pool_cfg {
  bk_kvfmt fmt;
  bk_kvscale scaling; /* fp8: BK_KVS_HEAD (the default, 0) or BK_KVS_TENSOR */
  int32_t n_layers, n_kv_heads, head_dim, block_size, n_blocks;
} kv_pool_cfg;

/* Allocate the storage (values, scales, zeroed tensor scales) and the free
 * list. BL_EINVAL for a format that cannot hold head_dim (nvfp4 needs a
 * multiple of 16). */
bl_status kv_pool_init_cfg(kv_pool *p, bk_backend *be, const kv_pool_cfg *cfg, bl_err *err);
/* The same over n shards: cfg->n_kv_heads heads on each of bes[0..n). */
bl_status kv_pool_init_shards(kv_pool *p, bk_backend *const *bes, int32_t n, const kv_pool_cfg *cfg,
                              bl_err *err);
/* kv_pool_init_cfg with fp8 scaling per head. */
bl_status kv_pool_init(kv_pool *p, bk_backend *be, bk_kvfmt fmt, int32_t n_layers,
                       int32_t n_kv_heads, int32_t head_dim, int32_t block_size, int32_t n_blocks,
                       bl_err *err);
void kv_pool_destroy(kv_pool *p);

/* Make room for positions [0, n_tokens) of s: BL_AGAIN (and no change) when
 * the free blocks do not suffice. */
bl_status kv_seq_reserve(kv_pool *p, kv_seq *s, int32_t n_tokens);
/* Drop every block of s (decrementing refs) and empty its table. */
void kv_seq_release(kv_pool *p, kv_seq *s);
void kv_seq_free(kv_pool *p, kv_seq *s);

static inline int32_t kv_seq_slot(const kv_pool *p, const kv_seq *s, int32_t pos) {
  int32_t bs = p->dev[0].block_size;
  return s->blocks[pos / bs] * bs + pos % bs;
}

#endif
