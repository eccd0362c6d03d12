/* Prefix cache over kv_pool (see kv_prefix.h). It keeps the pool's
 * invariant (a block is on the free stack iff its reference count is 0) and
 * adds: a cached block carries one reference for the cache; n_evictable
 * counts cached blocks whose only reference is the cache's. */
#include "kv_prefix.h"

#include <stdlib.h>
#include <string.h>

#include "bl_hash.h"
#include "kv_format.h"

enum { SLOT_EMPTY = -1 };

bl_status kv_prefix_init(kv_prefix *pre, int32_t n_blocks, int32_t block_size, bl_err *err) {
  *pre = (kv_prefix){.n_blocks = n_blocks, .block_size = block_size};
  uint32_t cap = 16;
  while (cap < 2u * (uint32_t)n_blocks)
    cap *= 2;
  pre->table_cap = cap;
  pre->cached = calloc((size_t)n_blocks, sizeof *pre->cached);
  pre->key = calloc((size_t)n_blocks, sizeof *pre->key);
  pre->parent = calloc((size_t)n_blocks, sizeof *pre->parent);
  pre->last_use = calloc((size_t)n_blocks, sizeof *pre->last_use);
  pre->toks = malloc((size_t)n_blocks * (size_t)block_size * sizeof *pre->toks);
  pre->table = malloc(cap * sizeof *pre->table);
  if (!pre->cached || !pre->key || !pre->parent || !pre->last_use || !pre->toks || !pre->table) {
    kv_prefix_free(pre);
    return bl_fail(err, BL_ENOMEM, "kv prefix cache: out of memory for %d blocks", n_blocks);
  }
  for (uint32_t i = 0; i < cap; i++)
    pre->table[i] = SLOT_EMPTY;
  return BL_OK;
}

void kv_prefix_free(kv_prefix *pre) {
  free(pre->cached);
  free(pre->key);
  free(pre->parent);
  free(pre->last_use);
  free(pre->toks);
  free(pre->table);
  *pre = (kv_prefix){0};
}

/* ---- keys and the table ------------------------------------------------ */

static uint64_t chain_key(uint64_t parent, const int32_t *t, int32_t n) {
  uint64_t h = bl_mix64(parent ^ 0x9e3779b97f4a7c15ull);
  for (int32_t i = 0; i < n; i++)
    h = bl_mix64(h ^ (uint32_t)t[i]);
  return h ? h : 1; /* 0 means "no parent" */
}

/* The cached block with this key, parent and tokens, or -1. */
static int32_t table_find(const kv_prefix *pre, uint64_t key, uint64_t parent, const int32_t *t) {
  uint32_t m = pre->table_cap - 1;
  for (uint32_t i = (uint32_t)key & m;; i = (i + 1) & m) {
    int32_t b = pre->table[i];
    if (b == SLOT_EMPTY) return -1;
    if (b >= 0 && pre->key[b] == key && pre->parent[b] == parent &&
        memcmp(pre->toks + (size_t)b * pre->block_size, t, (size_t)pre->block_size * sizeof *t) ==
            0)
      return b;
  }
}

static void table_put(kv_prefix *pre, int32_t b) {
  uint32_t m = pre->table_cap - 1;
  uint32_t i = (uint32_t)pre->key[b] & m;
  while (pre->table[i] != SLOT_EMPTY)
    i = (i + 1) & m;
  pre->table[i] = b;
}

/* Linear probing with backward-shift deletion: no tombstones, so lookups of
 * absent keys always reach an empty slot. */
static void table_del(kv_prefix *pre, int32_t b) {
  uint32_t m = pre->table_cap - 1, i = (uint32_t)pre->key[b] & m;
  while (pre->table[i] != b)
    i = (i + 1) & m;
  for (uint32_t j = i;;) {
    pre->table[i] = SLOT_EMPTY;
    for (;;) {
      j = (j + 1) & m;
      if (pre->table[j] == SLOT_EMPTY) return;
      uint32_t k = (uint32_t)pre->key[pre->table[j]] & m; /* home slot of the entry at j */
      bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!stays) break;
    }
    pre->table[i] = pre->table[j];
    i = j;
  }
}

/* ---- blocks ------------------------------------------------------------- */

static void unref(kv_pool *p, int32_t b) {
  if (--p->refs[b] == 0) p->free_ids[p->n_free++] = b;
}

/* Evict the least recently used evictable block (O(n_blocks): evictions
 * happen only when the free list is empty). */
static bool evict_one(kv_pool *p, kv_prefix *pre) {
  int32_t victim = -1;
  for (int32_t b = 0; b < pre->n_blocks; b++)
    if (pre->cached[b] && p->refs[b] == 1 &&
        (victim < 0 || pre->last_use[b] < pre->last_use[victim]))
      victim = b;
  if (victim < 0) return false;
  table_del(pre, victim);
  pre->cached[victim] = false;
  pre->n_cached--;
  pre->n_evictable--;
  unref(p, victim);
  return true;
}

int32_t kv_available(const kv_pool *p, const kv_prefix *pre) {
  return p->n_free + (pre ? pre->n_evictable : 0);
}

bl_status kv_reserve(kv_pool *p, kv_prefix *pre, kv_seq *s, int32_t n_tokens) {
  int32_t bs = p->dev[0].block_size;
  int32_t need = (n_tokens + bs - 1) / bs - s->n_blocks;
  if (need > kv_available(p, pre)) return BL_AGAIN;
  while (need > p->n_free)
    if (!evict_one(p, pre)) return BL_AGAIN;
  return kv_seq_reserve(p, s, n_tokens);
}

void kv_release(kv_pool *p, kv_prefix *pre, kv_seq *s) {
  if (pre)
    for (int32_t i = 0; i < s->n_blocks; i++) {
      int32_t b = s->blocks[i];
      if (pre->cached[b] && p->refs[b] == 2) pre->n_evictable++;
    }
  kv_seq_release(p, s);
}

/* ---- matching and committing ------------------------------------------ */

static bool push_block(kv_seq *s, int32_t b) {
  if (s->n_blocks == s->cap) {
    int32_t cap = s->cap ? 2 * s->cap : 8;
    int32_t *nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return false;
    s->blocks = nb;
    s->cap = cap;
  }
  s->blocks[s->n_blocks++] = b;
  return true;
}

int32_t kv_prefix_match(kv_pool *p, kv_prefix *pre, kv_seq *s, const int32_t *tokens, int32_t n,
                        kv_chain *ch) {
  *ch = (kv_chain){0};
  if (!pre || s->n_blocks) return 0;
  int32_t bs = pre->block_size;
  pre->tick++;
  for (int32_t i = 0; (i + 1) * bs <= n; i++) {
    const int32_t *t = tokens + (size_t)i * bs;
    uint64_t key = chain_key(ch->key, t, bs);
    int32_t b = table_find(pre, key, ch->key, t);
    if (b < 0 || !push_block(s, b)) break;
    if (p->refs[b]++ == 1) pre->n_evictable--;
    pre->last_use[b] = pre->tick;
    ch->key = key;
    ch->n_blocks = i + 1;
  }
  return ch->n_blocks * bs;
}

void kv_prefix_commit(kv_pool *p, kv_prefix *pre, kv_seq *s, const int32_t *tokens,
                      int32_t n_computed, kv_chain *ch) {
  if (!pre) return;
  int32_t bs = pre->block_size;
  pre->tick++;
  for (int32_t i = ch->n_blocks; (i + 1) * bs <= n_computed && i < s->n_blocks; i++) {
    const int32_t *t = tokens + (size_t)i * bs;
    uint64_t parent = ch->key, key = chain_key(parent, t, bs);
    int32_t b = s->blocks[i];
    int32_t have = table_find(pre, key, parent, t);
    if (have < 0 && !pre->cached[b]) { /* first time these tokens are seen here */
      pre->cached[b] = true;
      pre->key[b] = key;
      pre->parent[b] = parent;
      memcpy(pre->toks + (size_t)b * bs, t, (size_t)bs * sizeof *t);
      table_put(pre, b);
      p->refs[b]++; /* the cache's reference */
      pre->n_cached++;
    }
    if (have >= 0) pre->last_use[have] = pre->tick;
    pre->last_use[b] = pre->tick;
    ch->key = key;
    ch->n_blocks = i + 1;
  }
}

/* ---- copy-on-write ---------------------------------------------------- */

bool kv_needs_cow(const kv_pool *p, const kv_seq *s, int32_t pos) {
  int32_t i = pos / p->dev[0].block_size;
  return i < s->n_blocks && p->refs[s->blocks[i]] > 1;
}

/* Copy block src to dst in every shard's every layer's K and V (values and
 * per-block scales live in the block's units; per-tensor scales are
 * shared). *at: the shard that failed. */
static bl_status copy_block(kv_pool *p, int32_t dst, int32_t src, int32_t *at) {
  for (int32_t i = 0; i < p->n_shards; i++) {
    const bk_kv_cache *d = &p->dev[i];
    bk_backend *be = p->bes[i];
    size_t blk = (size_t)d->n_kv_heads * bk_kv_unit_bytes(d);
    *at = i;
    for (int32_t l = 0; l < d->n_layers; l++) {
      bl_status st = be->copy(be, (char *)d->k[l] + (size_t)dst * blk,
                              (const char *)d->k[l] + (size_t)src * blk, blk);
      if (!st)
        st = be->copy(be, (char *)d->v[l] + (size_t)dst * blk,
                      (const char *)d->v[l] + (size_t)src * blk, blk);
      if (st) return st;
    }
  }
  return BL_OK;
}

bl_status kv_make_writable(kv_pool *p, kv_prefix *pre, kv_seq *s, int32_t pos, bl_err *err) {
  if (!kv_needs_cow(p, s, pos)) return BL_OK;
  if (p->n_free == 0 && !(pre && evict_one(p, pre))) return BL_AGAIN;
  int32_t i = pos / p->dev[0].block_size, old = s->blocks[i];
  int32_t fresh = p->free_ids[--p->n_free];
  p->refs[fresh] = 1;
  int32_t at = 0;
  bl_status st = copy_block(p, fresh, old, &at);
  if (st) {
    unref(p, fresh);
    const bk_backend *be = p->bes[at];
    const char *why = be->last_error ? be->last_error(be) : NULL; /* the device's */
    if (why && *why)
      return bl_fail(err, st, "%s; kv cache: copy-on-write of block %d failed", why, old);
    return bl_fail(err, st, "kv cache: copy-on-write of block %d failed on %s", old, be->name);
  }
  s->blocks[i] = fresh;
  if (pre && pre->cached[old] && p->refs[old] == 2) pre->n_evictable++;
  unref(p, old);
  return BL_OK;
}
