/* Prefix caching over a kv_pool: full blocks are found again by the tokens
 * that led to them, so a repeated prompt prefix (a plan's prompt, a fallback
 * rerun of the same request) is not prefilled twice.
 *
 * A block's key is a hash chain: key(i) = H(key(i-1), tokens of block i), so
 * a block matches only when the whole prefix before it matches too; the
 * tokens are kept and compared on a hit, so a hash collision can never hand
 * out wrong K/V. The cache holds its own reference on every block it knows;
 * a cached block nobody else uses (reference count 1) is "evictable": it
 * counts as available, and allocation evicts the least recently used such
 * block when the free list is empty. Writing into a block that someone else
 * can see (reference count > 1: another sequence or the cache) first copies
 * it to a fresh block (copy-on-write).
 *
 * With pre == NULL every function falls back to plain kv_cache behaviour,
 * so callers need no second code path. Not thread-safe (one scheduler
 * thread owns a pool). */
#ifndef KV_PREFIX_H
#define KV_PREFIX_H

#include <stdbool.h>
#include <stdint.h>

#include "kv_cache.h"

typedef struct kv_prefix {
  int32_t n_blocks, block_size;
  bool *cached;       /* [n_blocks] the block is in the table (the cache holds a ref) */
  uint64_t *key;      /* [n_blocks] chain key of a cached block */
  uint64_t *parent;   /* [n_blocks] chain key of the block before it (0 for the first) */
  int32_t *toks;      /* [n_blocks][block_size] tokens of a cached block */
  uint64_t *last_use; /* [n_blocks] tick of the last match or commit */
  uint64_t tick;
  int32_t *table; /* open addressing: block ids by key, -1 empty */
  uint32_t table_cap;
  int32_t n_cached, n_evictable;
} kv_prefix;

/* Where a sequence's commits have got to (kept by its owner). */
typedef struct kv_chain {
  int32_t n_blocks; /* leading blocks already committed or matched */
  uint64_t key;     /* chain key of the last of them */
} kv_chain;

bl_status kv_prefix_init(kv_prefix *pre, int32_t n_blocks, int32_t block_size, bl_err *err);
void kv_prefix_free(kv_prefix *pre);

/* Blocks an allocation can get: free plus evictable. */
int32_t kv_available(const kv_pool *p, const kv_prefix *pre);

/* kv_seq_reserve, evicting cached blocks when the free list runs short. */
bl_status kv_reserve(kv_pool *p, kv_prefix *pre, kv_seq *s, int32_t n_tokens);
/* Drop s's blocks (cached ones stay cached) and empty its table. */
void kv_release(kv_pool *p, kv_prefix *pre, kv_seq *s);

/* For an empty s: attach the cached blocks that hold the longest prefix of
 * tokens[0..n) made of full blocks; returns the tokens covered (a multiple
 * of block_size) and sets *ch to continue committing from there. */
int32_t kv_prefix_match(kv_pool *p, kv_prefix *pre, kv_seq *s, const int32_t *tokens, int32_t n,
                        kv_chain *ch);
/* Offer s's full blocks among tokens[0..n_computed) to the cache. */
void kv_prefix_commit(kv_pool *p, kv_prefix *pre, kv_seq *s, const int32_t *tokens,
                      int32_t n_computed, kv_chain *ch);

/* Would writing position pos of s touch a block others can see? */
bool kv_needs_cow(const kv_pool *p, const kv_seq *s, int32_t pos);
/* Make the block holding pos private to s (copying it when shared);
 * BL_AGAIN when no block is available. No-op when pos is past s's blocks. */
bl_status kv_make_writable(kv_pool *p, kv_prefix *pre, kv_seq *s, int32_t pos, bl_err *err);

#endif
