/* The loop detector against a brute-force reading of its definition
 * (sched_loop.h): for every prefix, count every n-gram inside the window
 * directly. Random token streams over small alphabets (so repeats happen),
 * planted loops of many periods, and the edge cases: a period longer than
 * t/m never fires, overlapping occurrences count, the window forgets old
 * occurrences, the paper's defaults on a long trace, and bad parameters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched_loop.h"
#include "t.h"

typedef struct ref_result {
  int64_t fire_at, onset;
} ref_result;

/* Directly from the definition; O(len * t * n) per call. */
static ref_result reference(const int32_t *x, int64_t len, int32_t t, int32_t n, int32_t m) {
  for (int64_t i = 0; i < len; i++) {
    int64_t lo = i + 1 > t ? i - t + 1 : 0;
    for (int64_t s = lo; s + n - 1 <= i; s++) { /* each n-gram's first occurrence in the window */
      bool seen_before = false;
      for (int64_t q = lo; q < s && !seen_before; q++)
        seen_before = memcmp(x + q, x + s, (size_t)n * sizeof *x) == 0;
      if (seen_before) continue;
      int32_t cnt = 0;
      for (int64_t q = s; q + n - 1 <= i; q++)
        cnt += memcmp(x + q, x + s, (size_t)n * sizeof *x) == 0;
      if (cnt >= m) return (ref_result){i, s};
    }
  }
  return (ref_result){-1, -1};
}

static uint64_t g_rng = 0x2545F4914F6CDD1Du;
static uint32_t rnd(uint32_t k) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint32_t)(g_rng % k);
}

static ref_result run(const int32_t *x, int64_t len, int32_t t, int32_t n, int32_t m) {
  sched_loop d;
  sched_loop_params p = {.window = t, .ngram = n, .min_count = m};
  bl_err err = {0};
  T_CHECKF(sched_loop_init(&d, &p, &err) == BL_OK, "%s", err.msg);
  int fires = 0;
  for (int64_t i = 0; i < len; i++)
    fires += sched_loop_push(&d, x[i]);
  T_CHECK(fires == (d.fired ? 1 : 0)); /* fires once at most */
  ref_result r = {d.fire_at, d.onset};
  sched_loop_free(&d);
  return r;
}

static void check(const char *what, const int32_t *x, int64_t len, int32_t t, int32_t n,
                  int32_t m) {
  ref_result want = reference(x, len, t, n, m), got = run(x, len, t, n, m);
  T_CHECKF(got.fire_at == want.fire_at && got.onset == want.onset,
           "%s (t %d n %d m %d, %lld tokens): fire %lld onset %lld, want %lld / %lld", what, t, n,
           m, (long long)len, (long long)got.fire_at, (long long)got.onset, (long long)want.fire_at,
           (long long)want.onset);
}

static void test_random(void) {
  static int32_t x[600];
  int fired = 0;
  for (int c = 0; c < 400; c++) {
    int32_t t = 8 + (int32_t)rnd(60), n = 1 + (int32_t)rnd(6), m = 2 + (int32_t)rnd(4);
    if (n > t) n = t;
    int32_t alpha = 2 + (int32_t)rnd(5);
    int64_t len = 50 + rnd(500);
    for (int64_t i = 0; i < len; i++)
      x[i] = (int32_t)rnd((uint32_t)alpha) * 7919;
    check("random", x, len, t, n, m);
    fired += reference(x, len, t, n, m).fire_at >= 0;
  }
  printf("random: %d of 400 streams fired\n", fired);
  T_CHECK(fired > 100 && fired < 400); /* both outcomes exercised */
}

/* A loop of period p planted after a random (non-repeating) prefix. */
static void test_planted(void) {
  static int32_t x[4000];
  for (int32_t p = 1; p <= 40; p++)
    for (int32_t pre = 0; pre <= 60; pre += 30) {
      int64_t len = 0;
      for (int32_t i = 0; i < pre; i++)
        x[len++] = 100000 + i; /* distinct */
      for (int32_t i = 0; i < 400; i++)
        x[len++] = 5 + i % p;
      check("planted", x, len, 64, 4, 3);
      check("planted", x, len, 128, 20, 4);
    }
}

static void test_edges(void) {
  static int32_t x[5000];
  /* periods longer than t/m = 256 (t 1024, n 20, m 4): m occurrences fit
   * while (m - 1) * p + n <= t, so period 334 fires at 3 * 334 + 19 and
   * period 335 (3 * 335 + 20 = 1025 > 1024) never does */
  for (int i = 0; i < 5000; i++)
    x[i] = 10 + i % 334;
  ref_result r = run(x, 5000, 1024, 20, 4);
  T_CHECKF(r.fire_at == 3 * 334 + 19 && r.onset == 0, "period 334: fire %lld onset %lld",
           (long long)r.fire_at, (long long)r.onset);
  for (int i = 0; i < 5000; i++)
    x[i] = 10 + i % 335;
  T_CHECK(run(x, 5000, 1024, 20, 4).fire_at < 0);
  /* overlapping occurrences count: "aaaa..." with n 3, m 4 fires at i 5, onset 0 */
  for (int i = 0; i < 20; i++)
    x[i] = 42;
  r = run(x, 20, 16, 3, 4);
  T_CHECK(r.fire_at == 5 && r.onset == 0);
  /* the window forgets: a motif every 65 tokens, so never three in t = 100 */
  int64_t len = 0;
  for (int rep = 0; rep < 6; rep++) {
    for (int k = 0; k < 5; k++)
      x[len++] = 7 + k;
    for (int k = 0; k < 60; k++)
      x[len++] = 1000 + rep * 100 + k;
  }
  check("forgetting", x, len, 100, 5, 3);
  T_CHECK(run(x, len, 100, 5, 3).fire_at < 0);
  /* the paper's defaults on a long trace: 3,000 distinct tokens, then a
   * 57-token cycle; fires at the 4th 20-gram of the cycle */
  len = 0;
  for (int i = 0; i < 3000; i++)
    x[len++] = 50000 + i;
  for (int i = 0; i < 1000; i++)
    x[len++] = 3 + i % 57;
  sched_loop d;
  sched_loop_params def = {0};
  T_CHECK(sched_loop_init(&d, &def, NULL) == BL_OK && d.t == 1024 && d.n == 20 && d.m == 4);
  for (int64_t i = 0; i < len; i++)
    sched_loop_push(&d, x[i]);
  T_CHECKF(d.fire_at == 3000 + 3 * 57 + 19 && d.onset == 3000, "defaults: fire %lld onset %lld",
           (long long)d.fire_at, (long long)d.onset);
  sched_loop_free(&d);
  /* bad parameters */
  bl_err err = {0};
  sched_loop_params bad = {.window = 10, .ngram = 11, .min_count = 4};
  T_CHECK(sched_loop_init(&d, &bad, &err) == BL_EINVAL && strstr(err.msg, "ngram"));
  bad = (sched_loop_params){.window = 10, .ngram = 2, .min_count = 1};
  T_CHECK(sched_loop_init(&d, &bad, NULL) == BL_EINVAL);
}

int main(void) {
  test_random();
  test_planted();
  test_edges();
  return T_DONE();
}
