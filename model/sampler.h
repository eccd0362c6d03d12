/* Token sampling on host logits: greedy, or seeded sampling with penalties,
 * temperature, top-k, top-p and min-p, plus logprobs of the raw model
 * distribution.
 *
 * Processing order (as HF / vLLM): repetition penalty (HF: over the prompt
 * and generated tokens, logit > 0 divided, else multiplied), frequency and
 * presence penalties (OpenAI / vLLM: over generated tokens only),
 * temperature, top_k, top_p, min_p, then one inverse-CDF draw. Tokens are
 * ranked by processed logit, ties by lower id ("canonical order"); each
 * truncation keeps a prefix of that order and the draw walks it. The random
 * draw for a token depends only on (seed, position), via a counter-based
 * generator, so a request's tokens do not depend on batch composition or
 * thread count. Sampling allocates nothing: scratch is caller-owned. */
#ifndef SAMPLER_H
#define SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

#define SAMPLER_MAX_LOGPROBS 20

/* All-zero is greedy with no penalties. Each field's "off" value is noted. */
typedef struct sampler_params {
  float temperature;        /* < 1e-5 (vLLM's epsilon): greedy, argmax after penalties */
  int32_t top_k;            /* <= 0 or >= vocab: off */
  float top_p;              /* in (0, 1): keep the smallest prefix with mass >= top_p; else off */
  float min_p;              /* in (0, 1]: keep p >= min_p * p_max; <= 0: off */
  float repetition_penalty; /* > 0 and != 1: on; 0 and 1: off */
  float presence_penalty;   /* subtracted once from tokens generated at least once; 0: off */
  float frequency_penalty;  /* subtracted per occurrence among generated tokens; 0: off */
  int32_t n_logprobs;       /* alternatives reported with logprobs (0..SAMPLER_MAX_LOGPROBS) */
  uint64_t seed;
} sampler_params;

/* Per-sequence token counts for the penalties: a sparse open-addressing
 * table of the distinct tokens seen (prompt flag, count among generated
 * tokens), so memory follows the sequence's distinct tokens (a few KB),
 * not the vocabulary (600 KB per sequence at 152K ids). Grows by doubling
 * (amortized; reserve with the hint at init). */
typedef struct sampler_count {
  int32_t id;             /* -1: empty slot */
  unsigned n_out : 31;    /* occurrences among generated tokens */
  unsigned in_prompt : 1; /* seen in the prompt */
} sampler_count;

typedef struct sampler_seq {
  sampler_count *slots; /* [cap], cap a power of two, load <= 1/2 */
  uint32_t cap, n;      /* slots, distinct tokens held */
} sampler_seq;

/* expect: distinct tokens expected (0: a small default). */
bl_status sampler_seq_init(sampler_seq *s, uint32_t expect);
void sampler_seq_free(sampler_seq *s);
void sampler_seq_clear(sampler_seq *s);
bl_status sampler_seq_add_prompt(sampler_seq *s, const int32_t *ids, size_t n);
bl_status sampler_seq_add_output(sampler_seq *s, int32_t id);
/* Occurrences of id among generated tokens; *in_prompt may be NULL. */
uint32_t sampler_seq_count(const sampler_seq *s, int32_t id, bool *in_prompt);

typedef struct sampler_logprob {
  int32_t id;
  float logprob; /* log_softmax of the raw logits (before penalties and temperature) */
} sampler_logprob;

typedef struct sampler_logprobs {
  sampler_logprob chosen;
  int32_t n_top; /* top[0..n_top): the most likely ids, canonical order */
  sampler_logprob top[SAMPLER_MAX_LOGPROBS];
} sampler_logprobs;

/* Index of the largest logit (lowest index on ties; NaN never wins). */
int32_t sampler_argmax(const float *logits, int32_t n);

/* Bytes of caller-owned scratch that sampling over n logits needs. */
size_t sampler_scratch_bytes(int32_t n);

/* Sample the token for generated position pos from logits[0..n) (n >= 1).
 * seq: the sequence's counts for penalties (NULL: none). lp: when not NULL,
 * receives the chosen token's logprob and the top p->n_logprobs. NaN logits
 * are never drawn. */
int32_t sampler_next(const sampler_params *p, const sampler_seq *seq, const float *logits,
                     int32_t n, uint64_t pos, void *scratch, sampler_logprobs *lp);

/* sampler_next without penalties or logprobs. */
int32_t sampler_sample(const sampler_params *p, const float *logits, int32_t n, uint64_t pos,
                       void *scratch);

/* The processed distribution: the kept ids in canonical order with their
 * probabilities; returns how many (ids, probs: [n]). Costs a sort of the
 * kept set; meant for tests and inspection, not for the token loop. */
int32_t sampler_dist(const sampler_params *p, const sampler_seq *seq, const float *logits,
                     int32_t n, void *scratch, int32_t *ids, float *probs);

/* Logprobs of chosen and the top n_top (<= SAMPLER_MAX_LOGPROBS) ids of the
 * raw distribution log_softmax(logits). */
void sampler_logprobs_of(const float *logits, int32_t n, int32_t chosen, int32_t n_top,
                         void *scratch, sampler_logprobs *out);

/* Counter-based uniform draw in [0, 1) from (seed, counter). */
double sampler_uniform(uint64_t seed, uint64_t counter);

#endif
