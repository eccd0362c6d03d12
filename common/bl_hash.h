/* Small integer hashing shared across modules. */
#ifndef BL_HASH_H
#define BL_HASH_H

#include <stdint.h>

/* Callable from CUDA device code too: the GPU sampler draws with it
 * (bl_rng.h). */
#ifdef __CUDACC__
#define BL_HASH_FN static inline __host__ __device__
#else
#define BL_HASH_FN static inline
#endif

/* The splitmix64 finalizer: every input bit affects every output bit, so
 * (seed, counter) pairs and hash chains mix without generator state. */
BL_HASH_FN uint64_t bl_mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

#endif
