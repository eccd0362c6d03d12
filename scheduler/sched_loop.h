/* The loop detector: repeated n-grams in a request's generated tokens.
 *
 * Semantics (the paper's defaults t = 1024, n = 20, m = 4): after appending
 * generated token i (0-based), look at the last w = min(t, i + 1) tokens; the
 * detector fires at the first i where some n-gram (n consecutive tokens;
 * occurrences may overlap) occurs at least m times inside that window. The
 * loop onset is the start of the first of those m occurrences.
 *
 * Only the n-gram ending at i can newly reach m (sliding the window only
 * removes occurrences), so the firing n-gram is that one and its m
 * occurrences are exactly those left in the window. Cost per token is O(n)
 * for the collision check and O(1) amortized otherwise: a rolling hash of
 * the last n tokens, a hash table of the n-grams in the window (count,
 * oldest and newest start), and per position the next start of the same
 * n-gram, so the oldest occurrence is known when the window slides past one.
 * State is per request: rings of t positions plus a table of 2t slots. */
#ifndef SCHED_LOOP_H
#define SCHED_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "bl_status.h"

typedef struct sched_loop_params {
  int32_t window;    /* t; 0: 1024 */
  int32_t ngram;     /* n; 0: 20 */
  int32_t min_count; /* m; 0: 4 */
} sched_loop_params;

typedef struct sched_loop {
  int32_t t, n, m;
  int64_t i;      /* tokens seen */
  int32_t *tok;   /* [t] ring: generated tokens by position mod t */
  uint64_t *hash; /* [t] ring: hash of the n-gram starting at a position */
  int64_t *next;  /* [t] ring: next start of the same n-gram, or -1 */
  struct sched_loop_ent *table;
  uint32_t cap;
  uint64_t pow; /* B^(n-1) for the rolling hash */
  uint64_t roll;
  bool fired;
  int64_t fire_at, onset;
} sched_loop;

/* Parameters must satisfy 1 <= n <= t and m >= 2; BL_EINVAL otherwise. */
bl_status sched_loop_init(sched_loop *d, const sched_loop_params *p, bl_err *err);
void sched_loop_free(sched_loop *d);

/* Append the next generated token; true when the detector fires now (the
 * first time only: later calls keep returning false). d->fire_at and
 * d->onset then hold positions in generated tokens. */
bool sched_loop_push(sched_loop *d, int32_t token);

#endif
