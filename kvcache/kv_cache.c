/* Block allocator and per-sequence block tables over the backend's paged
 * KV storage (any bk_kvfmt; sizes from kv_format.h). Invariant: a block is
 * on the free stack iff its ref count is 0. */
#include "kv_cache.h"
#include "kv_format.h"

#include <stdlib.h>

uint64_t kv_block_bytes(bk_kvfmt fmt, bk_kvscale scaling, int32_t n_layers, int32_t n_kv_heads,
                        int32_t head_dim, int32_t block_size) {
  return kv_token_bytes(fmt, scaling, n_layers, n_kv_heads, head_dim) * (uint64_t)block_size;
}

/* Allocate one shard's storage in d on be; BL_ENOMEM or BL_EDEVICE. */
static bl_status shard_init(bk_kv_cache *d, bk_backend *be, const kv_pool_cfg *cfg) {
  *d = (bk_kv_cache){.fmt = cfg->fmt,
                     .scaling = cfg->fmt == BK_KV_FP8 ? cfg->scaling : BK_KVS_HEAD,
                     .n_layers = cfg->n_layers,
                     .n_blocks = cfg->n_blocks,
                     .block_size = cfg->block_size,
                     .n_kv_heads = cfg->n_kv_heads,
                     .head_dim = cfg->head_dim};
  size_t layer_bytes = (size_t)cfg->n_blocks * (size_t)cfg->n_kv_heads * bk_kv_unit_bytes(d);
  size_t ts_bytes = 2 * (size_t)cfg->n_layers * sizeof(float);
  d->k = calloc((size_t)cfg->n_layers, sizeof *d->k);
  d->v = calloc((size_t)cfg->n_layers, sizeof *d->v);
  if (!d->k || !d->v) return BL_ENOMEM;
  for (int32_t l = 0; l < cfg->n_layers; l++) {
    d->k[l] = be->alloc(be, layer_bytes);
    d->v[l] = be->alloc(be, layer_bytes);
    if (!d->k[l] || !d->v[l]) return BL_ENOMEM;
  }
  if (bk_kv_tensor_scaled(d->fmt, d->scaling)) {
    if (!(d->tensor_scales = be->alloc(be, ts_bytes))) return BL_ENOMEM;
    if (be->memset0(be, d->tensor_scales, ts_bytes) != BL_OK) return BL_EDEVICE;
  }
  return BL_OK;
}

static void shard_free(bk_kv_cache *d, bk_backend *be) {
  for (int32_t l = 0; d->k && l < d->n_layers; l++) {
    if (d->k[l]) be->free(be, d->k[l]);
    if (d->v && d->v[l]) be->free(be, d->v[l]);
  }
  if (d->tensor_scales) be->free(be, d->tensor_scales);
  free(d->k);
  free(d->v);
}

bl_status kv_pool_init_shards(kv_pool *p, bk_backend *const *bes, int32_t n, const kv_pool_cfg *cfg,
                              bl_err *err) {
  *p = (kv_pool){0};
  if (n < 1 || n > KV_MAX_SHARDS)
    return bl_fail(err, BL_EINVAL, "kv cache: %d shards (1..%d)", n, KV_MAX_SHARDS);
  if (cfg->n_blocks <= 0 || cfg->block_size <= 0 || cfg->n_layers <= 0 || cfg->n_kv_heads <= 0)
    return bl_fail(err, BL_EINVAL,
                   "kv cache: need at least one block, layer and head (n_blocks %d, block_size "
                   "%d, layers %d, kv heads %d)",
                   cfg->n_blocks, cfg->block_size, cfg->n_layers, cfg->n_kv_heads);
  if (!bk_kv_geometry_ok(cfg->fmt, cfg->head_dim))
    return bl_fail(err, BL_EINVAL, "kv cache: format %s cannot hold head_dim %d%s",
                   kv_fmt_name(cfg->fmt), cfg->head_dim,
                   cfg->fmt == BK_KV_NVFP4 ? " (nvfp4 needs a multiple of 16)" : "");
  p->be = bes[0];
  p->n_shards = n;
  for (int32_t i = 0; i < n; i++)
    p->bes[i] = bes[i];
  p->free_ids = malloc((size_t)cfg->n_blocks * sizeof *p->free_ids);
  p->refs = calloc((size_t)cfg->n_blocks, sizeof *p->refs);
  bl_status st = p->free_ids && p->refs ? BL_OK : BL_ENOMEM;
  int32_t i = 0;
  for (; !st && i < n; i++)
    st = shard_init(&p->dev[i], bes[i], cfg);
  if (st) {
    const char *on = bes[i ? i - 1 : 0]->name;
    kv_pool_destroy(p);
    if (st == BL_EDEVICE)
      return bl_fail(err, st, "kv cache: cannot clear the tensor scales on %s", on);
    return bl_fail(err, st, "kv cache: cannot allocate %d %s blocks of %d tokens on %s",
                   cfg->n_blocks, kv_fmt_name(cfg->fmt), cfg->block_size, on);
  }
  /* Lowest ids on top of the stack: allocation order is predictable. */
  for (int32_t b = 0; b < cfg->n_blocks; b++)
    p->free_ids[b] = cfg->n_blocks - 1 - b;
  p->n_free = cfg->n_blocks;
  return BL_OK;
}

bl_status kv_pool_init_cfg(kv_pool *p, bk_backend *be, const kv_pool_cfg *cfg, bl_err *err) {
  return kv_pool_init_shards(p, &be, 1, cfg, err);
}

bl_status kv_pool_init(kv_pool *p, bk_backend *be, bk_kvfmt fmt, int32_t n_layers,
                       int32_t n_kv_heads, int32_t head_dim, int32_t block_size, int32_t n_blocks,
                       bl_err *err) {
  kv_pool_cfg cfg = {.fmt = fmt,
                     .scaling = BK_KVS_HEAD,
                     .n_layers = n_layers,
                     .n_kv_heads = n_kv_heads,
                     .head_dim = head_dim,
                     .block_size = block_size,
                     .n_blocks = n_blocks};
  return kv_pool_init_cfg(p, be, &cfg, err);
}

void kv_pool_destroy(kv_pool *p) {
  for (int32_t i = 0; i < p->n_shards; i++)
    shard_free(&p->dev[i], p->bes[i]);
  free(p->free_ids);
  free(p->refs);
  *p = (kv_pool){0};
}

bl_status kv_seq_reserve(kv_pool *p, kv_seq *s, int32_t n_tokens) {
  int32_t bs = p->dev[0].block_size;
  int32_t need = (n_tokens + bs - 1) / bs - s->n_blocks;
  if (need <= 0) return BL_OK;
  if (need > p->n_free) return BL_AGAIN;
  if (s->n_blocks + need > s->cap) {
    int32_t cap = s->cap ? s->cap : 8;
    while (cap < s->n_blocks + need)
      cap *= 2;
    int32_t *nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return BL_ENOMEM;
    s->blocks = nb;
    s->cap = cap;
  }
  for (int32_t i = 0; i < need; i++) {
    int32_t id = p->free_ids[--p->n_free];
    p->refs[id] = 1;
    s->blocks[s->n_blocks++] = id;
  }
  return BL_OK;
}

void kv_seq_release(kv_pool *p, kv_seq *s) {
  for (int32_t i = 0; i < s->n_blocks; i++) {
    int32_t id = s->blocks[i];
    if (--p->refs[id] == 0) p->free_ids[p->n_free++] = id;
  }
  s->n_blocks = 0;
}

void kv_seq_free(kv_pool *p, kv_seq *s) {
  kv_seq_release(p, s);
  free(s->blocks);
  *s = (kv_seq){0};
}
