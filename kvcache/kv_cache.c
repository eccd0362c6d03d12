/* Block allocator and per-sequence block tables over the backend's paged
 * KV storage. Invariant: a block is on the free stack iff its ref count is 0. */
#include "kv_cache.h"

#include <stdlib.h>

static int32_t kv_elem_bytes(bk_kvfmt fmt) {
  (void)fmt; /* fp16 only so far */
  return 2;
}

uint64_t kv_block_bytes(bk_kvfmt fmt, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                        int32_t block_size) {
  return 2ull * (uint64_t)n_layers * (uint64_t)n_kv_heads * (uint64_t)head_dim *
         (uint64_t)block_size * (uint64_t)kv_elem_bytes(fmt);
}

bl_status kv_pool_init(kv_pool *p, bk_backend *be, bk_kvfmt fmt, int32_t n_layers,
                       int32_t n_kv_heads, int32_t head_dim, int32_t block_size, int32_t n_blocks,
                       bl_err *err) {
  *p = (kv_pool){.be = be};
  if (n_blocks <= 0 || block_size <= 0)
    return bl_fail(err, BL_EINVAL, "kv cache: need at least one block (n_blocks %d, block_size %d)",
                   n_blocks, block_size);
  bk_kv_cache *d = &p->dev;
  *d = (bk_kv_cache){.fmt = fmt, .n_layers = n_layers, .n_blocks = n_blocks,
                     .block_size = block_size, .n_kv_heads = n_kv_heads, .head_dim = head_dim};
  size_t layer_bytes =
      (size_t)n_blocks * (size_t)n_kv_heads * (size_t)block_size * (size_t)head_dim * (size_t)kv_elem_bytes(fmt);
  d->k = calloc((size_t)n_layers, sizeof *d->k);
  d->v = calloc((size_t)n_layers, sizeof *d->v);
  p->free_ids = malloc((size_t)n_blocks * sizeof *p->free_ids);
  p->refs = calloc((size_t)n_blocks, sizeof *p->refs);
  if (!d->k || !d->v || !p->free_ids || !p->refs) goto oom;
  for (int32_t l = 0; l < n_layers; l++) {
    d->k[l] = be->alloc(be, layer_bytes);
    d->v[l] = be->alloc(be, layer_bytes);
    if (!d->k[l] || !d->v[l]) goto oom;
  }
  /* Lowest ids on top of the stack: allocation order is predictable. */
  for (int32_t i = 0; i < n_blocks; i++) p->free_ids[i] = n_blocks - 1 - i;
  p->n_free = n_blocks;
  return BL_OK;
oom:
  kv_pool_destroy(p);
  return bl_fail(err, BL_ENOMEM, "kv cache: cannot allocate %d blocks of %d tokens on %s",
                 n_blocks, block_size, be->name);
}

void kv_pool_destroy(kv_pool *p) {
  bk_kv_cache *d = &p->dev;
  for (int32_t l = 0; d->k && l < d->n_layers; l++) {
    if (d->k[l]) p->be->free(p->be, d->k[l]);
    if (d->v && d->v[l]) p->be->free(p->be, d->v[l]);
  }
  free(d->k);
  free(d->v);
  free(p->free_ids);
  free(p->refs);
  *p = (kv_pool){0};
}

bl_status kv_seq_reserve(kv_pool *p, kv_seq *s, int32_t n_tokens) {
  int32_t bs = p->dev.block_size;
  int32_t need = (n_tokens + bs - 1) / bs - s->n_blocks;
  if (need <= 0) return BL_OK;
  if (need > p->n_free) return BL_AGAIN;
  if (s->n_blocks + need > s->cap) {
    int32_t cap = s->cap ? s->cap : 8;
    while (cap < s->n_blocks + need) cap *= 2;
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
