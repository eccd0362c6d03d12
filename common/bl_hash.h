/* Small integer hashing shared across modules. */
#ifndef BL_HASH_H
#define BL_HASH_H

#include <stdint.h>

/* The splitmix64 finalizer: every input bit affects every output bit, so
 * (seed, counter) pairs and hash chains mix without generator state. */
static inline uint64_t bl_mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

#endif
