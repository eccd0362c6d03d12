/* Sampler, stop conditions and generation defaults.
 *
 * Every transform (penalties, temperature, top_k, top_p, min_p) is checked
 * against a straightforward reference written here (sort the whole
 * vocabulary, walk it): on random logits (fixed seed) of 10 .. 151,936 ids,
 * with ties, -inf and NaN, the kept ids must be the same and in the same
 * order, the probabilities equal to float rounding, and seeded draws must
 * pick the same token as the reference's walk. Also: empirical frequencies,
 * determinism, logprobs, the per-sequence counts, stop strings on Qwen3's
 * tokenizer ($BALLAST_QWEN3_TOKENIZER; skipped with a line when absent) and
 * generation_config.json defaults. `test_sampler --bench` prints the cost
 * per token at vocab 151,936 instead. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../common/t.h"
#include "gen_config.h"
#include "sampler.h"
#include "stop.h"

/* ---- random logits ---- */

static uint64_t rng_state = 0x1234567;

static double rnd(void) { return sampler_uniform(0xabcdef, rng_state++); }

static double gauss(void) {
  double u = rnd(), v = rnd();
  return sqrt(-2 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

enum { L_GAUSS, L_PEAKED, L_TIES, L_INF, L_FLAT, L_N };
static const char *kind_name[L_N] = {"gauss", "peaked", "ties", "inf+nan", "flat"};

static void make_logits(float *x, int32_t n, int kind) {
  for (int32_t i = 0; i < n; i++) {
    double g = gauss();
    switch (kind) {
    case L_GAUSS: x[i] = (float)(3 * g); break;
    case L_PEAKED: x[i] = (float)(2.5 * g + (rnd() < 20.0 / n ? 12 * rnd() : 0)); break;
    case L_TIES: x[i] = (float)(round(2 * g) / 2); break; /* few distinct values */
    case L_INF: x[i] = rnd() < 0.3 ? -INFINITY : (float)(4 * g); break;
    default: x[i] = (float)(2 * rnd() - 1); break; /* flat: the worst case for truncation */
    }
  }
  if (kind == L_INF && n > 3) x[n / 3] = NAN, x[1] = NAN;
}

/* ---- reference: full sort ---- */

typedef struct rcand {
  float z;
  int32_t id;
} rcand;

static int rcand_cmp(const void *pa, const void *pb) {
  const rcand *a = pa, *b = pb;
  if (a->z != b->z) return a->z < b->z ? 1 : -1;
  return (a->id > b->id) - (a->id < b->id);
}

/* Counts kept as plain vocab-sized arrays, independent of sampler_seq. */
typedef struct ref_counts {
  uint8_t *in_prompt;
  uint32_t *n_out;
} ref_counts;

typedef struct ref_dist {
  int32_t k; /* kept */
  int32_t *ids;
  double *w; /* weights, kept[0..k) */
  double s;  /* sum of kept weights */
} ref_dist;

static void ref_build(const sampler_params *p, const ref_counts *rc, const float *logits, int32_t n,
                      ref_dist *d) {
  float *z = malloc((size_t)n * sizeof *z);
  rcand *c = malloc((size_t)n * sizeof *c);
  memcpy(z, logits, (size_t)n * sizeof *z);
  float r = p->repetition_penalty;
  for (int32_t i = 0; rc && i < n; i++) {
    if (r > 0 && r != 1 && (rc->in_prompt[i] || rc->n_out[i]))
      z[i] = z[i] > 0 ? z[i] / r : z[i] * r;
    if (rc->n_out[i]) {
      z[i] -= p->frequency_penalty * (float)rc->n_out[i];
      z[i] -= p->presence_penalty;
    }
  }
  int32_t m = 0;
  for (int32_t i = 0; i < n; i++)
    if (z[i] == z[i]) c[m++] = (rcand){z[i], i};
  qsort(c, (size_t)m, sizeof *c, rcand_cmp);
  d->k = 0;
  if (p->temperature < 1e-5f || !(c[0].z > -INFINITY)) { /* greedy */
    d->ids[0] = c[0].z > -INFINITY ? c[0].id : 0;
    d->w[0] = 1;
    d->k = 1;
    d->s = 1;
    free(z);
    free(c);
    return;
  }
  float inv_t = 1.0f / p->temperature;
  int32_t k = m;
  if (p->top_k > 0 && p->top_k < k) k = p->top_k;
  double s = 0;
  for (int32_t i = 0; i < k; i++) {
    d->ids[i] = c[i].id;
    d->w[i] = expf((c[i].z - c[0].z) * inv_t);
    s += d->w[i];
  }
  if (p->top_p > 0 && p->top_p < 1) {
    double acc = 0;
    int32_t j = 0;
    while (j < k)
      if ((acc += d->w[j++]) >= p->top_p * s) break;
    k = j;
  }
  if (p->min_p > 0) {
    int32_t j = 0;
    while (j < k && d->w[j] >= p->min_p)
      j++;
    k = j ? j : 1;
  }
  d->s = 0;
  for (int32_t i = 0; i < k; i++)
    d->s += d->w[i];
  d->k = k;
  free(z);
  free(c);
}

static int32_t ref_draw(const ref_dist *d, double u) {
  double x = u * d->s, acc = 0;
  for (int32_t i = 0; i < d->k; i++)
    if (x < (acc += d->w[i])) return d->ids[i];
  return d->ids[d->k - 1];
}

/* ---- transforms against the reference ---- */

static const sampler_params configs[] = {
    {.temperature = 1},
    {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f}, /* Qwen3 thinking mode */
    {.temperature = 1, .top_k = 1},
    {.temperature = 0.7f, .top_k = 2000}, /* past the heap: histogram path */
    {.temperature = 1, .top_p = 0.9f},
    {.temperature = 0.5f, .top_p = 0.5f},
    {.temperature = 1.3f, .min_p = 0.05f},
    {.temperature = 1, .top_k = 50, .min_p = 0.1f},
    {.temperature = 0.8f, .top_p = 0.9f, .min_p = 0.02f},
    {.temperature = 2, .top_k = 5000, .top_p = 0.99f},
    {.temperature = 1, .top_p = 0.99999f},
    {.temperature = 100, .top_p = 0.8f},
    {.temperature = 0.05f, .top_p = 0.9f},
    {.temperature = 0},
    {.temperature = 0.9f, .min_p = 1},
};
#define N_CONFIGS ((int)(sizeof configs / sizeof *configs))

typedef struct penalty_case {
  float rep, presence, frequency;
} penalty_case;

static const penalty_case penalties[] = {
    {1, 0, 0}, {1.3f, 0, 0}, {1, 0.5f, 0.3f}, {0.8f, -0.5f, 0}, {1.2f, 1.5f, 0.7f}};
#define N_PEN ((int)(sizeof penalties / sizeof *penalties))

/* A history: prompt tokens and generated tokens (with repeats), fed to both
 * the sampler's sequence and the reference counts. */
static void make_history(int32_t n, sampler_seq *seq, ref_counts *rc) {
  sampler_seq_clear(seq);
  memset(rc->in_prompt, 0, (size_t)n);
  memset(rc->n_out, 0, (size_t)n * sizeof *rc->n_out);
  int32_t np = n < 200 ? n / 3 : 300, no = n < 200 ? n / 4 : 200;
  for (int32_t i = 0; i < np; i++) {
    int32_t id = (int32_t)(rnd() * n);
    T_CHECK(sampler_seq_add_prompt(seq, &id, 1) == BL_OK);
    rc->in_prompt[id] = 1;
  }
  for (int32_t i = 0; i < no; i++) {
    int32_t id = (int32_t)(rnd() * (rnd() < 0.5 ? 8 : n)); /* low ids repeat often */
    T_CHECK(sampler_seq_add_output(seq, id) == BL_OK);
    rc->n_out[id]++;
  }
}

static void check_transforms(void) {
  const int32_t sizes[] = {10, 100, 1000, 5000, 151936};
  int32_t nmax = 151936;
  float *x = malloc((size_t)nmax * sizeof *x), *probs = malloc((size_t)nmax * sizeof *probs);
  int32_t *ids = malloc((size_t)nmax * sizeof *ids);
  void *scratch = malloc(sampler_scratch_bytes(nmax));
  ref_dist rd = {.ids = malloc((size_t)nmax * sizeof(int32_t)),
                 .w = malloc((size_t)nmax * sizeof(double))};
  ref_counts rc = {malloc((size_t)nmax), malloc((size_t)nmax * sizeof(uint32_t))};
  sampler_seq seq;
  T_CHECK(sampler_seq_init(&seq, 0) == BL_OK);
  int cases = 0, draws = 0;
  for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
    int32_t n = sizes[si];
    for (int kind = 0; kind < L_N; kind++) {
      make_logits(x, n, kind);
      for (int pi = 0; pi < N_PEN; pi++) {
        /* every config without penalties; a spread of them with */
        for (int ci = 0; ci < N_CONFIGS; ci++) {
          if (pi && (ci + pi) % 3) continue;
          if (n == 151936 && ci % 2) continue; /* the reference sort is slow */
          sampler_params p = configs[ci];
          p.repetition_penalty = penalties[pi].rep;
          p.presence_penalty = penalties[pi].presence;
          p.frequency_penalty = penalties[pi].frequency;
          p.seed = (uint64_t)(ci * 131 + pi);
          if (pi)
            make_history(n, &seq, &rc);
          else
            sampler_seq_clear(&seq);
          ref_build(&p, pi ? &rc : NULL, x, n, &rd);
          int32_t k = sampler_dist(&p, pi ? &seq : NULL, x, n, scratch, ids, probs);
          cases++;
          bool same = k == rd.k;
          for (int32_t i = 0; same && i < k; i++)
            same = ids[i] == rd.ids[i];
          T_CHECKF(same, "n=%d %s config %d penalty %d: kept %d ids, reference %d", n,
                   kind_name[kind], ci, pi, k, rd.k);
          double worst = 0;
          for (int32_t i = 0; same && i < k; i++) {
            /* relative, except for the negligible tail (weight 0 past DMAX) */
            double want = rd.w[i] / rd.s, e = fabs(probs[i] - want) / (want > 1e-15 ? want : 1);
            if (e > worst) worst = e;
          }
          T_CHECKF(worst < 1e-5, "n=%d %s config %d penalty %d: prob rel err %g", n,
                   kind_name[kind], ci, pi, worst);
          int n_draw = n > 100000 ? 6 : n > 1000 ? 40 : 200; /* sanitizer builds run it too */
          int bad = 0;
          for (int d = 0; d < n_draw; d++, draws++) {
            uint64_t pos = (uint64_t)d * 7919;
            int32_t got = sampler_next(&p, pi ? &seq : NULL, x, n, pos, scratch, NULL);
            bad += got != ref_draw(&rd, sampler_uniform(p.seed, pos));
          }
          T_CHECKF(bad == 0, "n=%d %s config %d penalty %d: %d of %d draws differ", n,
                   kind_name[kind], ci, pi, bad, n_draw);
        }
      }
    }
  }
  fprintf(stderr, "transforms: %d cases, %d draws against the reference\n", cases, draws);
  sampler_seq_free(&seq);
  free(x), free(probs), free(ids), free(scratch), free(rd.ids), free(rd.w), free(rc.in_prompt),
      free(rc.n_out);
}

/* ---- the draw ---- */

/* Frequencies over N seeded positions match the processed distribution. The
 * test is deterministic (fixed seed), so it cannot flake; the bound is
 * 5 binomial standard deviations (+1e-5), which a correct sampler with an
 * independent draw per position meets for all but ~1e-6 of seeds, while a
 * wrong walk, normalizer or truncation shifts some token by far more. */
static void check_frequencies(void) {
  enum { N = 64, DRAWS = 400000 };
  float x[N], probs[N];
  int32_t ids[N];
  uint32_t hits[N] = {0};
  for (int i = 0; i < N; i++)
    x[i] = (float)(1.5 * gauss());
  x[3] = x[5] = x[7]; /* ties */
  x[9] = -INFINITY;
  sampler_seq seq;
  T_CHECK(sampler_seq_init(&seq, 4) == BL_OK);
  int32_t prompt[] = {0, 1, 2, 3};
  sampler_seq_add_prompt(&seq, prompt, 4);
  sampler_seq_add_output(&seq, 1);
  sampler_seq_add_output(&seq, 1);
  sampler_params p = {.temperature = 0.8f,
                      .top_k = 40,
                      .top_p = 0.95f,
                      .min_p = 0.01f,
                      .repetition_penalty = 1.2f,
                      .presence_penalty = 0.3f,
                      .frequency_penalty = 0.2f,
                      .seed = 42};
  void *scratch = malloc(sampler_scratch_bytes(N));
  int32_t k = sampler_dist(&p, &seq, x, N, scratch, ids, probs);
  for (int d = 0; d < DRAWS; d++)
    hits[sampler_next(&p, &seq, x, N, (uint64_t)d, scratch, NULL)]++;
  float want[N] = {0};
  for (int32_t i = 0; i < k; i++)
    want[ids[i]] = probs[i];
  int bad = 0;
  double worst = 0;
  for (int i = 0; i < N; i++) {
    double f = (double)hits[i] / DRAWS, pw = want[i];
    double tol = 5 * sqrt(pw * (1 - pw) / DRAWS) + 1e-5;
    if (fabs(f - pw) > tol) bad++;
    if (fabs(f - pw) / tol > worst) worst = fabs(f - pw) / tol;
    if (pw == 0) T_CHECKF(hits[i] == 0, "token %d outside the kept set drawn %u times", i, hits[i]);
  }
  T_CHECKF(bad == 0, "%d tokens off by more than 5 sigma", bad);
  fprintf(stderr, "frequencies: %d kept, %d draws, worst |f - p| = %.2f of the bound\n", k, DRAWS,
          worst);
  sampler_seq_free(&seq);
  free(scratch);
}

static void check_determinism(void) {
  enum { N = 1000, P = 256 };
  float x[N], y[N];
  for (int i = 0; i < N; i++)
    x[i] = (float)gauss(), y[i] = (float)(3 * gauss());
  void *scratch = malloc(sampler_scratch_bytes(N));
  sampler_params p = {.temperature = 1, .top_p = 0.98f, .seed = 7};
  sampler_params q = {.temperature = 0.7f, .top_k = 30, .seed = 99};
  int32_t fwd[P], rev[P], other[P];
  for (int i = 0; i < P; i++)
    fwd[i] = sampler_sample(&p, x, N, (uint64_t)i, scratch);
  for (int i = P - 1; i >= 0; i--) { /* reverse order, interleaved with another request */
    (void)sampler_sample(&q, y, N, (uint64_t)i, scratch);
    rev[i] = sampler_sample(&p, x, N, (uint64_t)i, scratch);
  }
  int same = 0, diff = 0;
  p.seed = 8;
  for (int i = 0; i < P; i++) {
    other[i] = sampler_sample(&p, x, N, (uint64_t)i, scratch);
    same += fwd[i] == rev[i];
    diff += fwd[i] != other[i];
  }
  T_CHECKF(same == P, "only %d of %d positions reproduce in another call order", same, P);
  T_CHECKF(diff > P / 2, "seeds 7 and 8 differ at only %d of %d positions", diff, P);
  /* greedy ignores the seed and the position */
  sampler_params g = {.temperature = 0, .seed = 1};
  T_CHECK(sampler_sample(&g, x, N, 5, scratch) == sampler_argmax(x, N));
  free(scratch);
}

/* ---- logprobs ---- */

static void check_logprobs(void) {
  const int32_t sizes[] = {5, 1000, 151936};
  float *x = malloc(151936 * sizeof *x);
  int32_t *order = malloc(151936 * sizeof *order);
  void *scratch = malloc(sampler_scratch_bytes(151936));
  for (int s = 0; s < 3; s++) {
    int32_t n = sizes[s];
    make_logits(x, n, s == 1 ? L_TIES : L_PEAKED);
    double mx = -INFINITY, sum = 0;
    for (int32_t i = 0; i < n; i++)
      mx = x[i] > mx ? x[i] : mx;
    for (int32_t i = 0; i < n; i++)
      sum += exp((double)x[i] - mx);
    double lse = mx + log(sum);
    rcand *c = malloc((size_t)n * sizeof *c);
    for (int32_t i = 0; i < n; i++)
      c[i] = (rcand){x[i], i};
    qsort(c, (size_t)n, sizeof *c, rcand_cmp);
    /* penalties and temperature must not change what is reported */
    sampler_seq seq;
    sampler_seq_init(&seq, 0);
    sampler_seq_add_output(&seq, c[0].id);
    sampler_params p = {.temperature = 0.7f,
                        .top_k = 10,
                        .repetition_penalty = 1.5f,
                        .presence_penalty = 1,
                        .n_logprobs = 20,
                        .seed = 3};
    for (int pos = 0; pos < 20; pos++) {
      sampler_logprobs lp;
      int32_t id = sampler_next(&p, &seq, x, n, (uint64_t)pos, scratch, &lp);
      T_CHECK(lp.chosen.id == id);
      T_NEAR(lp.chosen.logprob, x[id] - lse, 1e-5, 1e-6);
      int32_t want_n = n < 20 ? n : 20;
      T_CHECK(lp.n_top == want_n);
      for (int32_t i = 0; i < lp.n_top && i < want_n; i++) {
        T_CHECKF(lp.top[i].id == c[i].id, "n=%d top[%d] = %d, want %d", n, i, lp.top[i].id,
                 c[i].id);
        T_NEAR(lp.top[i].logprob, c[i].z - lse, 1e-5, 1e-6);
        if (i) T_CHECK(lp.top[i].logprob <= lp.top[i - 1].logprob);
      }
    }
    sampler_logprobs lp;
    sampler_logprobs_of(x, n, 0, 0, scratch, &lp);
    T_CHECK(lp.n_top == 0 && lp.chosen.id == 0);
    sampler_seq_free(&seq);
    free(c);
  }
  free(x), free(order), free(scratch);
}

static void check_seq(void) {
  sampler_seq s;
  T_CHECK(sampler_seq_init(&s, 0) == BL_OK);
  int32_t prompt[] = {5, 7, 5};
  sampler_seq_add_prompt(&s, prompt, 3);
  for (int i = 0; i < 3; i++)
    sampler_seq_add_output(&s, 7);
  for (int32_t id = 100; id < 20100; id++)
    sampler_seq_add_output(&s, id); /* forces growth */
  bool inp;
  T_CHECK(sampler_seq_count(&s, 5, &inp) == 0 && inp);
  T_CHECK(sampler_seq_count(&s, 7, &inp) == 3 && inp);
  T_CHECK(sampler_seq_count(&s, 150, &inp) == 1 && !inp);
  T_CHECK(sampler_seq_count(&s, 99, &inp) == 0 && !inp);
  T_CHECK(s.n == 20002 && s.cap >= 2 * s.n);
  T_CHECK(sampler_seq_add_output(&s, -1) == BL_EINVAL);
  sampler_seq_clear(&s);
  T_CHECK(s.n == 0 && sampler_seq_count(&s, 7, NULL) == 0);
  sampler_seq_free(&s);
  /* argmax: first of ties, NaN never wins */
  float v[] = {NAN, 1, 3, 3, NAN, -INFINITY};
  T_CHECK(sampler_argmax(v, 6) == 2);
  float w[] = {-INFINITY, -INFINITY};
  T_CHECK(sampler_argmax(w, 2) == 0);
}

/* ---- stop conditions ---- */

typedef struct stop_case {
  const char *name, *text;
  const char *stops[4];
  const char *want; /* the output */
  int want_str;     /* index of the stop string that matched; -1: none (ran to the end) */
} stop_case;

static const stop_case stop_cases[] = {
    {"inside one run", "The answer is 42. Done.", {"42"}, "The answer is ", 0},
    {"across tokens", "The answer is 42. Done.", {"answer is"}, "The ", 0},
    {"inside a token", "The answer is 42. Done.", {"nsw"}, "The a", 0},
    {"first token", "The answer is 42.", {"The"}, "", 0},
    {"no match, prefix released", "Hello there", {"Hello world"}, "Hello there", -1},
    {"several: earliest wins", "hello world", {"world", "lo w"}, "hel", 1},
    {"several: first to complete", "The answer is 42. Done.", {"Done", "42"}, "The answer is ", 1},
    {"CJK inside a token", "价格是100元，谢谢", {"格是"}, "价", 0},
    {"CJK prefix held then released", "价格是100元，谢谢", {"价格高"}, "价格是100元，谢谢", -1},
    {"CJK char", "价格是100元，谢谢", {"元"}, "价格是100", 0},
    {"emoji split into byte tokens", "ok 🦜🦩 bye", {"🦩"}, "ok 🦜", 0},
    {"stop across split emoji", "ok 🦜🦩 bye", {"🦜🦩 b"}, "ok ", 0},
    {"math letters in byte tokens", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 text", {"𝔬𝔡"}, "𝔘𝔫𝔦𝔠", 0},
    {"stop at the end", "hello world", {"world"}, "hello ", 0},
    {"no stop strings", "café au lait", {NULL}, "café au lait", -1},
};

/* Complete, well-formed UTF-8 (written here, independent of stop.c). */
static bool valid_utf8(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t k = p[i] < 0x80                   ? 0
               : p[i] >= 0xC2 && p[i] < 0xE0 ? 1
               : p[i] >= 0xE0 && p[i] < 0xF0 ? 2
               : p[i] >= 0xF0 && p[i] < 0xF5 ? 3
                                             : 9;
    if (k == 9 || (k && i + k >= n)) return false; /* bad lead byte, or cut short */
    for (size_t j = 1; j <= k; j++)
      if ((p[i + j] & 0xC0) != 0x80) return false;
    i += k + 1;
  }
  return true;
}

static void run_stop_case(const tok_tokenizer *t, const stop_case *c) {
  stop_set set;
  stop_set_init(&set);
  bl_err err = {0};
  for (int i = 0; i < 4 && c->stops[i]; i++)
    T_CHECKF(stop_set_add_str(&set, c->stops[i], strlen(c->stops[i]), &err) == BL_OK, "%s",
             err.msg);
  int32_t *ids = NULL;
  size_t n = 0;
  T_CHECK(tok_encode(t, c->text, strlen(c->text), false, &ids, &n, &err) == BL_OK);
  stop_stream ss;
  stop_stream_init(&ss);
  char *out = NULL;
  size_t len = 0, cap = 0, wl = strlen(c->want);
  bool prefix_ok = true, clean = true;
  for (size_t i = 0; i < n && !ss.hit.kind; i++) {
    T_CHECK(stop_stream_push(&ss, &set, t, ids[i], &out, &len, &cap) == BL_OK);
    prefix_ok &= len <= wl && memcmp(out ? out : "", c->want, len) == 0;
    clean &= valid_utf8(out, len);
    for (int32_t j = 0; j < set.n_strs; j++)
      clean &= !out || !strstr(out, set.strs[j]);
  }
  if (!ss.hit.kind) T_CHECK(stop_stream_finish(&ss, &set, &out, &len, &cap) == BL_OK);
  T_CHECKF(prefix_ok, "%s: streamed text is not a prefix of the output", c->name);
  T_CHECKF(clean, "%s: released text holds a stop string or a split character", c->name);
  T_CHECKF(len == wl && memcmp(out, c->want, wl) == 0, "%s: got '%s' want '%s'", c->name,
           out ? out : "", c->want);
  if (c->want_str >= 0)
    T_CHECKF(ss.hit.kind == STOP_STRING && ss.hit.str == c->want_str, "%s: hit %d/%d", c->name,
             ss.hit.kind, ss.hit.str);
  else
    T_CHECKF(ss.hit.kind == STOP_NONE, "%s: stopped (%d)", c->name, ss.hit.kind);
  stop_stream_free(&ss);
  stop_set_free(&set);
  free(out);
  free(ids);
}

/* Push the tokens of text one by one; returns the output length after each. */
static void push_text(const tok_tokenizer *t, stop_stream *ss, const stop_set *set,
                      const char *text, char **out, size_t *len, size_t *cap, size_t *after,
                      size_t max) {
  int32_t *ids = NULL;
  size_t n = 0;
  T_CHECK(tok_encode(t, text, strlen(text), false, &ids, &n, NULL) == BL_OK);
  for (size_t i = 0; i < n; i++) {
    T_CHECK(stop_stream_push(ss, set, t, ids[i], out, len, cap) == BL_OK);
    if (i < max) after[i] = *len;
  }
  free(ids);
}

static void check_stop_stream(const tok_tokenizer *t) {
  for (size_t i = 0; i < sizeof stop_cases / sizeof *stop_cases; i++)
    run_stop_case(t, &stop_cases[i]);
  /* The hold-back step by step: "Hello" is held (it may start "Hello world")
   * and released with " there"; a split emoji is never released in part. */
  stop_set set;
  stop_set_init(&set);
  T_CHECK(stop_set_add_str(&set, "Hello world", 11, NULL) == BL_OK);
  stop_stream ss;
  stop_stream_init(&ss);
  char *out = NULL;
  size_t len = 0, cap = 0, after[8] = {0};
  push_text(t, &ss, &set, "Hello there", &out, &len, &cap, after, 8);
  T_CHECKF(after[0] == 0 && after[1] == 11, "held %zu then %zu", after[0], after[1]);
  stop_stream_free(&ss);
  stop_stream_init(&ss);
  len = 0;
  push_text(t, &ss, &set, "a🦜b", &out, &len, &cap, after, 8); /* a, F0 9F A6, 9C, b */
  T_CHECKF(after[0] == 1 && after[1] == 1 && after[2] == 5 && after[3] == 6,
           "emoji released at %zu %zu %zu %zu", after[0], after[1], after[2], after[3]);
  stop_stream_free(&ss);
  /* Stop ids and EOS: the end token's text is not emitted; the held tail is. */
  int32_t im_end = tok_find(t, "<|im_end|>"), dot = tok_find(t, ".");
  T_CHECK(stop_set_add_eos(&set, im_end, NULL) == BL_OK &&
          stop_set_add_id(&set, dot, NULL) == BL_OK);
  stop_stream_init(&ss);
  len = 0;
  push_text(t, &ss, &set, "Hello", &out, &len, &cap, after, 8);
  T_CHECK(len == 0);
  T_CHECK(stop_stream_push(&ss, &set, t, im_end, &out, &len, &cap) == BL_OK);
  T_CHECK(ss.hit.kind == STOP_EOS && ss.hit.token == im_end && len == 5 &&
          !memcmp(out, "Hello", 5));
  T_CHECK(stop_stream_push(&ss, &set, t, dot, &out, &len, &cap) == BL_OK && len == 5); /* ended */
  stop_stream_free(&ss);
  stop_stream_init(&ss);
  len = 0;
  push_text(t, &ss, &set, "Yes. No", &out, &len, &cap, after, 8);
  T_CHECK(ss.hit.kind == STOP_TOKEN && ss.hit.token == dot && len == 3 && !memcmp(out, "Yes", 3));
  stop_stream_free(&ss);
  /* a split character cut by the end comes out as U+FFFD */
  stop_stream_init(&ss);
  len = 0;
  int32_t *ids = NULL;
  size_t n = 0;
  T_CHECK(tok_encode(t, "a🦜", strlen("a🦜"), false, &ids, &n, NULL) == BL_OK && n == 3);
  for (size_t i = 0; i + 1 < n; i++)
    stop_stream_push(&ss, &set, t, ids[i], &out, &len, &cap);
  T_CHECK(stop_stream_finish(&ss, &set, &out, &len, &cap) == BL_OK);
  T_CHECK(len == 4 && !memcmp(out, "a\xEF\xBF\xBD", 4));
  free(ids);
  stop_stream_free(&ss);
  stop_set_free(&set);
  free(out);
}

static void check_stop_set(void) {
  stop_set s;
  stop_set_init(&s);
  bl_err err = {0};
  T_CHECK(stop_set_add_str(&s, "", 0, &err) == BL_EINVAL);
  T_CHECK(stop_set_add_str(&s, "\xC3", 1, NULL) == BL_EINVAL);         /* cut character */
  T_CHECK(stop_set_add_str(&s, "\xED\xA0\x80", 3, NULL) == BL_EINVAL); /* surrogate */
  T_CHECK(stop_set_add_str(&s, "ab", 2, NULL) == BL_OK &&
          stop_set_add_str(&s, "ab", 2, NULL) == BL_OK);
  T_CHECK(s.n_strs == 1);
  T_CHECK(stop_set_add_id(&s, -3, NULL) == BL_EINVAL);
  char big[STOP_MAX_STR_LEN + 2];
  memset(big, 'x', sizeof big);
  T_CHECK(stop_set_add_str(&s, big, sizeof big, NULL) == BL_ERANGE);
  for (int i = 0; i < STOP_MAX_IDS; i++)
    T_CHECK(stop_set_add_id(&s, i, NULL) == BL_OK);
  T_CHECK(stop_set_add_id(&s, 5, NULL) == BL_OK); /* duplicate */
  T_CHECK(stop_set_add_id(&s, 1000, NULL) == BL_ERANGE);
  /* ids only, no tokenizer */
  stop_stream ss;
  stop_stream_init(&ss);
  char *out = NULL;
  size_t len = 0, cap = 0;
  T_CHECK(stop_stream_push(&ss, &s, NULL, 5000, &out, &len, &cap) == BL_OK && !ss.hit.kind);
  T_CHECK(stop_stream_push(&ss, &s, NULL, 7, &out, &len, &cap) == BL_OK &&
          ss.hit.kind == STOP_TOKEN);
  stop_stream_free(&ss);
  stop_set_free(&s);
  free(out);
}

/* ---- generation defaults ---- */

static void write_text(const char *dir, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/generation_config.json", dir);
  FILE *f = fopen(path, "w");
  T_CHECK(f && fputs(text, f) >= 0);
  if (f) fclose(f);
}

static void check_defaults(void) {
  char dir[] = "/tmp/bl_gencfg_XXXXXX";
  T_CHECK(mkdtemp(dir) != NULL);
  sampler_params p;
  const char *src = NULL;
  bl_err err = {0};
  /* Qwen3's own file */
  write_text(dir,
             "{\"bos_token_id\": 151643, \"do_sample\": true, \"eos_token_id\": [151645, 151643],"
             " \"pad_token_id\": 151643, \"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_LLAMA, &p, &src, &err) == BL_OK);
  T_CHECK(!strcmp(src, "generation_config.json"));
  T_CHECK(p.temperature == 0.6f && p.top_p == 0.95f && p.top_k == 20 && p.min_p == 0 &&
          p.repetition_penalty == 1);
  /* only some keys: the rest neutral (temperature 1) */
  write_text(dir, "{\"top_p\": 0.8, \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"top_k\": -1}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_OK);
  T_CHECK(p.temperature == 1 && p.top_p == 0.8f && p.top_k == 0 && p.min_p == 0.05f &&
          p.repetition_penalty == 1.1f);
  /* no sampling keys: the architecture decides */
  write_text(dir, "{\"_from_model_config\": true, \"eos_token_id\": 2, \"temperature\": null}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_OK);
  T_CHECK(!strcmp(src, "qwen3") && p.temperature == 0.6f && p.top_p == 0.95f && p.top_k == 20);
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_LLAMA, &p, &src, &err) == BL_OK);
  T_CHECK(!strcmp(src, "greedy") && p.temperature == 0);
  /* a file path (GGUF) is never a folder with a config */
  char file[600];
  snprintf(file, sizeof file, "%s/generation_config.json", dir);
  T_CHECK(model_sampling_defaults(file, MODEL_ARCH_LLAMA, &p, &src, &err) == BL_OK &&
          !strcmp(src, "greedy"));
  /* errors name file and key */
  write_text(dir, "{\"top_p\": 1.5}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_EFORMAT);
  T_CHECKF(strstr(err.msg, "top_p") && strstr(err.msg, "generation_config.json"), "%s", err.msg);
  bl_err_clear(&err);
  write_text(dir, "{\"top_k\": 2.5}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_EFORMAT);
  T_CHECKF(strstr(err.msg, "top_k"), "%s", err.msg);
  bl_err_clear(&err);
  write_text(dir, "{\"temperature\": \"hot\"}");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_EFORMAT);
  bl_err_clear(&err);
  write_text(dir, "{\"temperature\": 0.6,");
  T_CHECK(model_sampling_defaults(dir, MODEL_ARCH_QWEN3, &p, &src, &err) == BL_EFORMAT);
  unlink(file);
  rmdir(dir);
}

/* ---- timing (--bench) ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The sampler this replaced: qsort of the whole vocabulary per token. */
static int32_t old_sample(const sampler_params *p, const float *logits, int32_t n, uint64_t pos,
                          rcand *c) {
  for (int32_t i = 0; i < n; i++)
    c[i] = (rcand){logits[i], i};
  qsort(c, (size_t)n, sizeof *c, rcand_cmp);
  int32_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
  double maxl = c[0].z, sum = 0;
  for (int32_t i = 0; i < k; i++)
    sum += exp((c[i].z - maxl) / p->temperature);
  if (p->top_p > 0 && p->top_p < 1) {
    double acc = 0;
    int32_t keep = 0;
    while (keep < k) {
      acc += exp((c[keep].z - maxl) / p->temperature) / sum;
      keep++;
      if (acc >= p->top_p) break;
    }
    k = keep;
    sum = 0;
    for (int32_t i = 0; i < k; i++)
      sum += exp((c[i].z - maxl) / p->temperature);
  }
  double u = sampler_uniform(p->seed, pos) * sum, acc = 0;
  for (int32_t i = 0; i < k; i++)
    if (u < (acc += exp((c[i].z - maxl) / p->temperature))) return c[i].id;
  return c[k - 1].id;
}

/* Token ids of text: Zipf-like over the vocabulary (frequent ids repeat). */
static int32_t zipf_id(int32_t n) { return (int32_t)(pow(n, rnd()) - 1); }

static int bench(void) {
  enum { N = 151936, ROWS = 8, REPS = 5 };
  float *x = malloc((size_t)ROWS * N * sizeof *x);
  void *scratch = malloc(sampler_scratch_bytes(N));
  rcand *c = malloc((size_t)N * sizeof *c);
  sampler_seq seq;
  sampler_seq_init(&seq, 4096);
  for (int i = 0; i < 2000; i++)
    sampler_seq_add_prompt(&seq, &(int32_t){zipf_id(N)}, 1);
  for (int i = 0; i < 2000; i++)
    sampler_seq_add_output(&seq, zipf_id(N));
  struct {
    const char *name;
    sampler_params p;
    bool pen, lp, old;
  } cases[] = {
      {"greedy", {.temperature = 0}, 0, 0, 0},
      {"greedy + penalties",
       {.temperature = 0, .repetition_penalty = 1.1f, .presence_penalty = 0.5f},
       1,
       0,
       0},
      {"qwen3 defaults (T .6, k 20, p .95)",
       {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f},
       0,
       0,
       0},
      {"qwen3 defaults + penalties",
       {.temperature = 0.6f,
        .top_k = 20,
        .top_p = 0.95f,
        .repetition_penalty = 1.1f,
        .presence_penalty = 0.5f,
        .frequency_penalty = 0.2f},
       1,
       0,
       0},
      {"qwen3 defaults + 20 logprobs",
       {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f, .n_logprobs = 20},
       0,
       1,
       0},
      {"top_p .95 only (T .6)", {.temperature = 0.6f, .top_p = 0.95f}, 0, 0, 0},
      {"top_p .95 only + penalties",
       {.temperature = 0.6f, .top_p = 0.95f, .presence_penalty = 1.5f},
       1,
       0,
       0},
      {"temperature 1 only", {.temperature = 1}, 0, 0, 0},
      {"min_p .05 only (T 1)", {.temperature = 1, .min_p = 0.05f}, 0, 0, 0},
      {"top_k 2000 (histogram path)", {.temperature = 1, .top_k = 2000}, 0, 0, 0},
      {"old qsort sampler, qwen3 defaults",
       {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f},
       0,
       0,
       1},
      {"old qsort sampler, top_p .95", {.temperature = 0.6f, .top_p = 0.95f}, 0, 0, 1},
  };
  printf("sampler cost per token, vocab %d: us, best of %d runs over %d logit rows (%.1f MB,\n"
         "so rows come from L3, not L1/L2); penalties over %u distinct ids (2000 prompt +\n"
         "2000 generated, Zipf-like)\n",
         N, REPS, ROWS, ROWS * N * 4.0 / 1e6, seq.n);
  printf("%-38s %10s %10s\n", "case", "peaked", "flat");
  for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
    printf("%-38s", cases[ci].name);
    for (int kind = 0; kind < 2; kind++) {
      for (int r = 0; r < ROWS; r++)
        make_logits(x + (size_t)r * N, N, kind ? L_FLAT : L_PEAKED);
      int iters = cases[ci].old ? 1 : 8;
      double best = 1e30;
      volatile int32_t sink = 0;
      for (int rep = 0; rep < REPS; rep++) {
        double t0 = now_s();
        for (int it = 0; it < iters; it++)
          for (int r = 0; r < ROWS; r++) {
            const float *row = x + (size_t)r * N;
            sampler_logprobs lp;
            uint64_t pos = (uint64_t)((rep * iters + it) * ROWS + r);
            sink += cases[ci].old ? old_sample(&cases[ci].p, row, N, pos, c)
                                  : sampler_next(&cases[ci].p, cases[ci].pen ? &seq : NULL, row, N,
                                                 pos, scratch, cases[ci].lp ? &lp : NULL);
          }
        double t = (now_s() - t0) / (iters * ROWS);
        best = t < best ? t : best;
      }
      printf(" %10.1f", 1e6 * best);
      (void)sink;
    }
    printf("\n");
  }
  sampler_seq_free(&seq);
  free(x), free(scratch), free(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--bench")) return bench();
  void (*checks[])(void) = {check_seq,      check_transforms, check_frequencies, check_determinism,
                            check_logprobs, check_stop_set,   check_defaults};
  const char *names[] = {"seq",      "transforms", "frequencies", "determinism",
                         "logprobs", "stop set",   "defaults"};
  for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
    double t0 = now_s();
    checks[i]();
    fprintf(stderr, "%s: %.1f s\n", names[i], now_s() - t0);
  }
  const char *qpath = getenv("BALLAST_QWEN3_TOKENIZER");
  tok_tokenizer *qwen = NULL;
  bl_err err = {0};
  if (!qpath || access(qpath, R_OK) != 0)
    fprintf(stderr,
            "skip stop strings: Qwen3 tokenizer.json not found ($BALLAST_QWEN3_TOKENIZER=%s)\n",
            qpath ? qpath : "");
  else
    T_CHECKF(tok_load_json(qpath, &qwen, &err) == BL_OK, "%s", err.msg);
  if (qwen) check_stop_stream(qwen);
  tok_free(qwen);
  return T_DONE();
}
