/* Token sampling on host logits: greedy, or seeded temperature / top-k /
 * top-p. The random draw for a token depends only on (seed, position), via a
 * counter-based generator, so a request's tokens do not depend on batch
 * composition or thread count. */
#ifndef SAMPLER_H
#define SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sampler_params {
  float temperature; /* 0: greedy */
  int32_t top_k;     /* 0: off */
  float top_p;       /* 1: off */
  uint64_t seed;
} sampler_params;

/* Index of the largest logit (lowest index on ties). */
int32_t sampler_argmax(const float *logits, int32_t n);

/* Sample one token for generated position pos. scratch: caller-owned, at
 * least sampler_scratch_bytes(n), so sampling allocates nothing. */
size_t sampler_scratch_bytes(int32_t n);
int32_t sampler_sample(const sampler_params *p, const float *logits, int32_t n, uint64_t pos,
                       void *scratch);

/* Counter-based uniform draw in [0, 1) from (seed, counter). */
double sampler_uniform(uint64_t seed, uint64_t counter);

#endif
