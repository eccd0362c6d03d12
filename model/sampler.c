/* Sampling over one row of host logits: the public API, per-sequence
 * counts, penalties, greedy, the small-top_k path and logprobs. The other
 * parameter sets go to the histogram path (sampler_hist.c).
 *
 * Small top_k (<= HEAP_MAX, the Qwen3 default of 20 included): a bounded
 * heap over the logits, compare only (no exp over the vocabulary), then a
 * sort of k entries; weights, top_p, min_p and the draw walk those k.
 * Both paths weigh a token as sampler_exp_neg((zmax - z) / T), 0 beyond
 * DMAX (see sampler_hist.c), so they agree where both apply. */
#include "sampler.h"
#include "bl_rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler_internal.h"

enum { NB = SAMPLER_NB, HEAP_MAX = 1024 };
#define GREEDY_T 1e-5f

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

size_t sampler_scratch_bytes(int32_t n) {
  size_t un = n > 0 ? (size_t)n : 1;
  return 64 + 2 * align64(un * sizeof(float)) + align64(un * sizeof(uint16_t)) +
         align64(un * sizeof(cand)) + align64(4 * (NB + 2) * sizeof(uint32_t)) +
         align64(4 * (NB + 2) * sizeof(double)) + align64((NB + 3) * sizeof(uint32_t)) +
         align64((NB + 3) * sizeof(double));
}

sampler_work sampler_work_at(void *scratch, int32_t n) {
  uintptr_t a = ((uintptr_t)scratch + 63) & ~(uintptr_t)63;
  size_t un = n > 0 ? (size_t)n : 1;
  sampler_work w;
#define CARVE(field, type, count)                                                                  \
  w.field = (type *)a;                                                                             \
  a += align64((count) * sizeof(type))
  CARVE(z, float, un);
  CARVE(w, float, un);
  CARVE(b, uint16_t, un);
  CARVE(c, cand, un);
  CARVE(cnt, uint32_t, 4 * (NB + 2));
  CARVE(mass, double, 4 * (NB + 2));
  CARVE(ccum, uint32_t, NB + 3);
  CARVE(mcum, double, NB + 3);
#undef CARVE
  return w;
}

/* ---- random draw ---- */

/* common/bl_rng.h: the same draw the CUDA sampler makes on the device. */
double sampler_uniform(uint64_t seed, uint64_t counter) { return bl_rng_uniform(seed, counter); }

/* ---- per-sequence counts ---- */

static uint32_t slot_of(int32_t id, uint32_t cap) {
  return ((uint32_t)id * 2654435761u) & (cap - 1); /* Knuth multiplicative hash */
}

static bl_status seq_alloc(sampler_seq *s, uint32_t cap) {
  sampler_count *t = malloc((size_t)cap * sizeof *t);
  if (!t) return BL_ENOMEM;
  for (uint32_t i = 0; i < cap; i++)
    t[i] = (sampler_count){.id = -1};
  sampler_count *old = s->slots;
  uint32_t old_cap = s->cap;
  s->slots = t;
  s->cap = cap;
  for (uint32_t i = 0; i < old_cap; i++) {
    if (old[i].id < 0) continue;
    uint32_t j = slot_of(old[i].id, cap);
    while (t[j].id >= 0)
      j = (j + 1) & (cap - 1);
    t[j] = old[i];
  }
  free(old);
  return BL_OK;
}

bl_status sampler_seq_init(sampler_seq *s, uint32_t expect) {
  *s = (sampler_seq){0};
  uint32_t cap = 64;
  while (cap < 2 * (uint64_t)expect && cap < (1u << 30))
    cap *= 2;
  return seq_alloc(s, cap);
}

void sampler_seq_free(sampler_seq *s) {
  free(s->slots);
  *s = (sampler_seq){0};
}

void sampler_seq_clear(sampler_seq *s) {
  for (uint32_t i = 0; i < s->cap; i++)
    s->slots[i] = (sampler_count){.id = -1};
  s->n = 0;
}

static sampler_count *seq_find(const sampler_seq *s, int32_t id) {
  if (!s->cap) return NULL;
  for (uint32_t j = slot_of(id, s->cap);; j = (j + 1) & (s->cap - 1)) {
    if (s->slots[j].id == id) return &s->slots[j];
    if (s->slots[j].id < 0) return NULL;
  }
}

static bl_status seq_add(sampler_seq *s, int32_t id, bool prompt) {
  if (id < 0) return BL_EINVAL;
  sampler_count *e = seq_find(s, id);
  if (!e) {
    if (2 * (s->n + 1) > s->cap) {
      bl_status st = seq_alloc(s, s->cap ? 2 * s->cap : 64);
      if (st) return st;
    }
    uint32_t j = slot_of(id, s->cap);
    while (s->slots[j].id >= 0)
      j = (j + 1) & (s->cap - 1);
    e = &s->slots[j];
    *e = (sampler_count){.id = id};
    s->n++;
  }
  if (prompt)
    e->in_prompt = 1;
  else if (e->n_out < (1u << 31) - 1)
    e->n_out++;
  return BL_OK;
}

bl_status sampler_seq_add_prompt(sampler_seq *s, const int32_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++) {
    bl_status st = seq_add(s, ids[i], true);
    if (st) return st;
  }
  return BL_OK;
}

bl_status sampler_seq_add_output(sampler_seq *s, int32_t id) { return seq_add(s, id, false); }

uint32_t sampler_seq_count(const sampler_seq *s, int32_t id, bool *in_prompt) {
  const sampler_count *e = seq_find(s, id);
  if (in_prompt) *in_prompt = e && e->in_prompt;
  return e ? e->n_out : 0;
}

static bool has_penalties(const sampler_params *p, const sampler_seq *s) {
  bool rep = p->repetition_penalty > 0 && p->repetition_penalty != 1;
  return s && s->n && (rep || p->presence_penalty != 0 || p->frequency_penalty != 0);
}

/* The penalized logit of a token the sequence has seen (raw value v). */
static float penalized(const sampler_params *p, const sampler_count *e, float v) {
  float r = p->repetition_penalty;
  if (r > 0 && r != 1) v = v > 0 ? v / r : v * r;
  if (e->n_out) {
    v -= p->frequency_penalty * (float)e->n_out;
    v -= p->presence_penalty;
  }
  return v;
}

/* z: a copy of the logits; touches only the tokens the sequence has seen. */
static void apply_penalties(const sampler_params *p, const sampler_seq *s, float *z, int32_t n) {
  for (uint32_t i = 0; i < s->cap; i++) {
    const sampler_count *e = &s->slots[i];
    if (e->id >= 0 && e->id < n) z[e->id] = penalized(p, e, z[e->id]);
  }
}

/* ---- greedy and the small-top_k path ---- */

int32_t sampler_argmax(const float *x, int32_t n) {
  /* The largest chunk maximum (vectorized), then its first index in the
   * first chunk that holds it. */
  enum { CHUNK = 4096 };
  float best = -INFINITY;
  int32_t at = 0;
  for (int32_t c = 0; c < n; c += CHUNK) {
    float m = sampler_max(x + c, n - c < CHUNK ? n - c : CHUNK);
    if (m > best) best = m, at = c;
  }
  for (int32_t i = at; i < n; i++)
    if (x[i] == best) return i;
  return 0; /* all NaN */
}

int sampler_cand_cmp(const void *pa, const void *pb) {
  const cand *a = pa, *b = pb;
  if (a->z != b->z) return a->z < b->z ? 1 : -1;
  return (a->id > b->id) - (a->id < b->id);
}

/* a comes after b in canonical order */
static inline bool worse(cand a, cand b) { return a.z < b.z || (a.z == b.z && a.id > b.id); }

static void sift_down(cand *h, int32_t m, int32_t i) {
  for (;;) {
    int32_t l = 2 * i + 1, r = l + 1, w = i;
    if (l < m && worse(h[l], h[w])) w = l;
    if (r < m && worse(h[r], h[w])) w = r;
    if (w == i) return;
    cand t = h[i];
    h[i] = h[w];
    h[w] = t;
    i = w;
  }
}

static void heap_offer(cand *h, int32_t *m, int32_t k, cand c) {
  if (c.z != c.z) return;
  if (*m < k) {
    int32_t j = (*m)++;
    h[j] = c;
    while (j > 0 && worse(h[j], h[(j - 1) / 2])) {
      cand t = h[j];
      h[j] = h[(j - 1) / 2];
      h[(j - 1) / 2] = t;
      j = (j - 1) / 2;
    }
  } else if (worse(h[0], c)) {
    h[0] = c;
    sift_down(h, *m, 0);
  }
}

/* Maxima of 64 interleaved blocks: bm[i] = max(z[i], z[i + s], z[i + 2s],
 * ...), s = ceil(n / 64), NaN ignored. Contiguous elementwise maxima, so the
 * loop vectorizes; returns s. */
static int32_t block_max(const float *z, int32_t n, float *bm) {
  int32_t s = (n + 63) / 64;
  for (int32_t i = 0; i < s; i++)
    bm[i] = -INFINITY;
  for (int32_t r = 0; r * s < n; r++) {
    const float *x = z + (size_t)r * (size_t)s;
    int32_t len = n - r * s < s ? n - r * s : s;
    for (int32_t i = 0; i < len; i++)
      bm[i] = x[i] > bm[i] ? x[i] : bm[i];
  }
  return s;
}

/* The first k logits in canonical order into h[0..m), sorted; m < k only
 * when fewer than k are not NaN. A min-heap with the worst kept entry at the
 * root; a block whose maximum is below the root is skipped whole (bm:
 * scratch of n / 64 + 1 floats). With pen (penalties on), the logits are z
 * with the sequence's seen tokens penalized: the scan skips those and they
 * are offered afterwards with their penalized values, so no penalized copy
 * of the vocabulary is made. */
static int32_t top_k_heap(const float *z, int32_t n, int32_t k, cand *h, float *bm,
                          const sampler_params *p, const sampler_seq *pen) {
  int32_t m = 0, s = block_max(z, n, bm);
  float thr = -INFINITY;
  for (int32_t i = 0; i < s; i++) {
    if (m == k && !(bm[i] >= thr)) continue;
    for (int32_t t = i; t < n; t += s)
      if ((m < k || z[t] >= thr) && !(pen && seq_find(pen, t))) {
        heap_offer(h, &m, k, (cand){z[t], t});
        thr = m == k ? h[0].z : -INFINITY;
      }
  }
  /* Loads first, offers after: the random reads of z overlap. */
  cand buf[256];
  for (uint32_t i = 0; pen && i < pen->cap;) {
    int nb = 0;
    for (; i < pen->cap && nb < 256; i++) {
      const sampler_count *e = &pen->slots[i];
      if (e->id >= 0 && e->id < n) buf[nb++] = (cand){penalized(p, e, z[e->id]), e->id};
    }
    for (int j = 0; j < nb; j++)
      heap_offer(h, &m, k, buf[j]);
  }
  qsort(h, (size_t)m, sizeof *h, sampler_cand_cmp);
  return m;
}

/* Small-top_k kept set: c[0..k) with weights in c[].z; returns k (0 when no
 * logit is finite) and the kept weight in *s. */
static int32_t heap_kept(const sampler_params *p, const sampler_seq *pen, const float *z, int32_t n,
                         const sampler_work *w, double *s) {
  cand *c = w->c;
  int32_t m = top_k_heap(z, n, p->top_k, c, w->w, p, pen);
  if (m == 0 || !(c[0].z > -INFINITY && c[0].z < INFINITY)) return 0;
  float zmax = c[0].z, inv_t = 1.0f / p->temperature;
  float dmax = (float)(54 * M_LN2 + log((double)n));
  double sk = 0;
  for (int32_t i = 0; i < m; i++) {
    float d = (zmax - c[i].z) * inv_t;
    c[i].z = d <= dmax ? sampler_exp_neg(d) : 0;
    sk += c[i].z;
  }
  int32_t k = m;
  if (p->top_p > 0 && p->top_p < 1) {
    double acc = 0, x = p->top_p * sk;
    for (k = 0; k < m;)
      if ((acc += c[k++].z) >= x) break;
  }
  if (p->min_p > 0) {
    int32_t j = 0;
    while (j < k && c[j].z >= p->min_p)
      j++;
    k = j ? j : 1;
  }
  if (k < m) {
    sk = 0;
    for (int32_t i = 0; i < k; i++)
      sk += c[i].z;
  }
  *s = sk;
  return k;
}

static bool small_k(const sampler_params *p, int32_t n) {
  return p->top_k > 0 && p->top_k < n && p->top_k <= HEAP_MAX;
}

/* ---- public entry points ---- */

/* The logits with penalties applied: a copy, for the histogram path. */
static const float *processed(const sampler_params *p, const sampler_seq *pen, const float *logits,
                              int32_t n, const sampler_work *w) {
  if (!pen) return logits;
  memcpy(w->z, logits, (size_t)n * sizeof *w->z);
  apply_penalties(p, pen, w->z, n);
  return w->z;
}

/* log(sum(exp(x))) with the sampler's exp; tmp: [n]. */
static double lse_of(const float *x, int32_t n, float *tmp) {
  float m = sampler_max(x, n);
  if (!(m > -INFINITY && m < INFINITY)) return m;
  for (int32_t i = 0; i < n; i++)
    tmp[i] = sampler_exp_neg(m - x[i]); /* -inf, NaN: exp(-87) ~ 0 */
  double s[8] = {0};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++)
      s[j] += tmp[i + j];
  for (; i < n; i++)
    s[0] += tmp[i];
  return m + log(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
}

void sampler_logprobs_of(const float *logits, int32_t n, int32_t chosen, int32_t n_top,
                         void *scratch, sampler_logprobs *out) {
  sampler_work w = sampler_work_at(scratch, n);
  double lse = lse_of(logits, n, w.w);
  out->chosen = (sampler_logprob){chosen, (float)(logits[chosen] - lse)};
  n_top = n_top < 0 ? 0 : n_top > SAMPLER_MAX_LOGPROBS ? SAMPLER_MAX_LOGPROBS : n_top;
  n_top = n_top < n ? n_top : n;
  out->n_top = n_top ? top_k_heap(logits, n, n_top, w.c, w.w, NULL, NULL) : 0;
  for (int32_t i = 0; i < out->n_top; i++)
    out->top[i] = (sampler_logprob){w.c[i].id, (float)(w.c[i].z - lse)};
}

/* Argmax of the penalized logits (pen: NULL without penalties). */
static int32_t greedy(const sampler_params *p, const sampler_seq *pen, const float *logits,
                      int32_t n, const sampler_work *w) {
  if (!pen) return sampler_argmax(logits, n);
  return top_k_heap(logits, n, 1, w->c, w->w, p, pen) ? w->c[0].id : 0;
}

int32_t sampler_next(const sampler_params *p, const sampler_seq *seq, const float *logits,
                     int32_t n, uint64_t pos, void *scratch, sampler_logprobs *lp) {
  sampler_work w = sampler_work_at(scratch, n);
  const sampler_seq *pen = has_penalties(p, seq) ? seq : NULL;
  int32_t id = -1;
  if (p->temperature >= GREEDY_T) {
    double u = sampler_uniform(p->seed, pos), s;
    if (small_k(p, n)) {
      int32_t k = heap_kept(p, pen, logits, n, &w, &s);
      double x = u * s, acc = 0;
      for (int32_t i = 0; i < k && id < 0; i++)
        if (x < (acc += w.c[i].z)) id = w.c[i].id;
      if (id < 0 && k > 0) id = w.c[k - 1].id;
    } else {
      id = sampler_hist_draw(p, processed(p, pen, logits, n, &w), n, u, &w);
    }
  }
  if (id < 0) id = greedy(p, pen, logits, n, &w); /* greedy, or no finite logit */
  if (lp) sampler_logprobs_of(logits, n, id, p->n_logprobs, scratch, lp);
  return id;
}

int32_t sampler_sample(const sampler_params *p, const float *logits, int32_t n, uint64_t pos,
                       void *scratch) {
  return sampler_next(p, NULL, logits, n, pos, scratch, NULL);
}

int32_t sampler_dist(const sampler_params *p, const sampler_seq *seq, const float *logits,
                     int32_t n, void *scratch, int32_t *ids, float *probs) {
  sampler_work w = sampler_work_at(scratch, n);
  const sampler_seq *pen = has_penalties(p, seq) ? seq : NULL;
  int32_t k = 0;
  if (p->temperature >= GREEDY_T && small_k(p, n)) {
    double s;
    k = heap_kept(p, pen, logits, n, &w, &s);
    for (int32_t i = 0; i < k; i++) {
      ids[i] = w.c[i].id;
      probs[i] = (float)(w.c[i].z / s);
    }
  } else if (p->temperature >= GREEDY_T) {
    k = sampler_hist_dist(p, processed(p, pen, logits, n, &w), n, &w, ids, probs);
  }
  if (k == 0) {
    ids[0] = greedy(p, pen, logits, n, &w);
    probs[0] = 1;
    k = 1;
  }
  return k;
}
