/* Greedy and seeded sampling over one row of host logits. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

int32_t sampler_argmax(const float *logits, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (logits[i] > logits[best]) best = i;
  return best;
}

/* splitmix64 finalizer: a good 64-bit mix, so hashing (seed, counter) gives
 * independent streams without per-request generator state. */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double sampler_uniform(uint64_t seed, uint64_t counter) {
  uint64_t r = mix64(mix64(seed) ^ counter);
  return (double)(r >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

typedef struct cand {
  float logit;
  int32_t id;
} cand;

static int cand_desc(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
  return x->id - y->id; /* stable order on ties: deterministic */
}

size_t sampler_scratch_bytes(int32_t n) { return (size_t)n * sizeof(cand); }

int32_t sampler_sample(const sampler_params *p, const float *logits, int32_t n, uint64_t pos,
                       void *scratch) {
  if (p->temperature <= 0.0f) return sampler_argmax(logits, n);
  /* Candidates sorted by logit; top_k keeps a prefix, top_p a shorter one. */
  cand *c = scratch;
  for (int32_t i = 0; i < n; i++) c[i] = (cand){logits[i], i};
  qsort(c, (size_t)n, sizeof *c, cand_desc);
  int32_t k = n;
  if (p->top_k > 0 && p->top_k < k) k = p->top_k;
  double maxl = c[0].logit, sum = 0;
  for (int32_t i = 0; i < k; i++) sum += exp((c[i].logit - maxl) / p->temperature);
  if (p->top_p > 0.0f && p->top_p < 1.0f) {
    double acc = 0;
    int32_t keep = 0;
    while (keep < k) {
      acc += exp((c[keep].logit - maxl) / p->temperature) / sum;
      keep++;
      if (acc >= p->top_p) break;
    }
    k = keep;
    sum = 0;
    for (int32_t i = 0; i < k; i++) sum += exp((c[i].logit - maxl) / p->temperature);
  }
  double u = sampler_uniform(p->seed, pos) * sum, acc = 0;
  for (int32_t i = 0; i < k; i++) {
    acc += exp((c[i].logit - maxl) / p->temperature);
    if (u < acc) return c[i].id;
  }
  return c[k - 1].id;
}
