/* The counter-based random draw shared by the host sampler (model/sampler.c)
 * and the CUDA sampler (kernels/cuda/cu_sample.cu): a uniform in [0, 1) from
 * (seed, counter) alone, so a request's draws depend on neither batch
 * composition, thread count nor device. Plain C11 and, under nvcc, callable
 * from device code too; header-only (static inline), no state. */
#ifndef BL_RNG_H
#define BL_RNG_H

#include <stdint.h>

#include "bl_hash.h"

#ifdef __CUDACC__
#define BL_RNG_FN static inline __host__ __device__
#else
#define BL_RNG_FN static inline
#endif

/* One splitmix64 output: the golden-ratio step, then the finalizer. */
BL_RNG_FN uint64_t bl_rng_mix(uint64_t x) { return bl_mix64(x + 0x9e3779b97f4a7c15ull); }

/* Uniform in [0, 1) with 53 random bits: hashing (seed, counter) gives
 * independent streams without per-request generator state. */
BL_RNG_FN double bl_rng_uniform(uint64_t seed, uint64_t counter) {
  uint64_t r = bl_rng_mix(bl_rng_mix(seed) ^ counter);
  return (double)(r >> 11) * (1.0 / 9007199254740992.0); /* 2^-53 */
}

#undef BL_RNG_FN

#endif
