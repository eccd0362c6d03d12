/* The loop detector (see sched_loop.h for the exact semantics). */
#include "sched_loop.h"

#include <stdlib.h>
#include <string.h>

typedef struct sched_loop_ent {
  uint64_t hash;
  int64_t first, last; /* oldest and newest start in the window */
  int32_t count;       /* occurrences in the window; 0: empty slot */
} sched_loop_ent;

enum { HASH_BASE = 1000003 };

bl_status sched_loop_init(sched_loop *d, const sched_loop_params *p, bl_err *err) {
  *d = (sched_loop){.t = p->window ? p->window : 1024,
                    .n = p->ngram ? p->ngram : 20,
                    .m = p->min_count ? p->min_count : 4,
                    .fire_at = -1,
                    .onset = -1};
  if (d->n < 1 || d->t < d->n || d->m < 2)
    return bl_fail(err, BL_EINVAL,
                   "loop detector: need 1 <= ngram <= window and min_count >= 2 (got window %d, "
                   "ngram %d, min_count %d)",
                   d->t, d->n, d->m);
  d->cap = 16;
  while (d->cap < 2u * (uint32_t)d->t)
    d->cap *= 2;
  d->tok = malloc((size_t)d->t * sizeof *d->tok);
  d->hash = malloc((size_t)d->t * sizeof *d->hash);
  d->next = malloc((size_t)d->t * sizeof *d->next);
  d->table = calloc(d->cap, sizeof *d->table);
  if (!d->tok || !d->hash || !d->next || !d->table) {
    sched_loop_free(d);
    return bl_fail(err, BL_ENOMEM, "loop detector: out of memory (window %d)", p->window);
  }
  d->pow = 1;
  for (int32_t k = 1; k < d->n; k++)
    d->pow *= HASH_BASE;
  return BL_OK;
}

void sched_loop_free(sched_loop *d) {
  free(d->tok);
  free(d->hash);
  free(d->next);
  free(d->table);
  d->tok = NULL;
  d->hash = NULL;
  d->next = NULL;
  d->table = NULL;
}

static uint32_t home(const sched_loop *d, uint64_t h) {
  return (uint32_t)(h ^ (h >> 29)) & (d->cap - 1);
}

/* Do the n tokens starting at a and b (both in the window) match? */
static bool same_ngram(const sched_loop *d, int64_t a, int64_t b) {
  for (int32_t k = 0; k < d->n; k++)
    if (d->tok[(a + k) % d->t] != d->tok[(b + k) % d->t]) return false;
  return true;
}

/* Backward-shift deletion keeps probe chains whole without tombstones. */
static void table_remove(sched_loop *d, uint32_t i) {
  uint32_t mask = d->cap - 1;
  for (uint32_t j = i;;) {
    d->table[i].count = 0;
    for (;;) {
      j = (j + 1) & mask;
      if (d->table[j].count == 0) return;
      uint32_t k = home(d, d->table[j].hash);
      bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!stays) break;
    }
    d->table[i] = d->table[j];
    i = j;
  }
}

/* The occurrence starting at s leaves the window: it is the oldest one of
 * its n-gram, so its entry is the one with this hash whose first is s. */
static void drop_oldest(sched_loop *d, int64_t s) {
  uint64_t h = d->hash[s % d->t];
  for (uint32_t i = home(d, h);; i = (i + 1) & (d->cap - 1)) {
    sched_loop_ent *e = &d->table[i];
    if (e->count == 0) return; /* not reachable while the invariants hold */
    if (e->hash != h || e->first != s) continue;
    if (--e->count == 0)
      table_remove(d, i);
    else
      e->first = d->next[s % d->t];
    return;
  }
}

/* Add the occurrence starting at s; returns its n-gram's entry. */
static sched_loop_ent *add(sched_loop *d, int64_t s, uint64_t h) {
  d->hash[s % d->t] = h;
  d->next[s % d->t] = -1;
  uint32_t i = home(d, h);
  for (;; i = (i + 1) & (d->cap - 1)) {
    sched_loop_ent *e = &d->table[i];
    if (e->count == 0) break;
    if (e->hash == h && same_ngram(d, e->first, s)) { /* the collision check */
      d->next[e->last % d->t] = s;
      e->last = s;
      e->count++;
      return e;
    }
  }
  d->table[i] = (sched_loop_ent){.hash = h, .first = s, .last = s, .count = 1};
  return &d->table[i];
}

bool sched_loop_push(sched_loop *d, int32_t token) {
  int64_t i = d->i++;
  int32_t t = d->t, n = d->n;
  /* The window after this token starts at i - t + 1: the occurrence that
   * started at i - t leaves (before its first token's slot is reused). */
  if (i - t >= 0) drop_oldest(d, i - t);
  uint64_t v = (uint64_t)(uint32_t)token + 1;
  if (i >= n) d->roll -= ((uint64_t)(uint32_t)d->tok[(i - n) % t] + 1) * d->pow;
  d->roll = d->roll * HASH_BASE + v;
  d->tok[i % t] = token;
  if (i < n - 1) return false;
  sched_loop_ent *e = add(d, i - n + 1, d->roll);
  if (d->fired || e->count < d->m) return false;
  d->fired = true;
  d->fire_at = i;
  d->onset = e->first;
  return true;
}
