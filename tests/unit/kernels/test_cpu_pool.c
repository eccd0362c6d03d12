/* cpu_pool: every item of every job runs exactly once, jobs posted back to
 * back (workers spinning) and after idle gaps (workers asleep on the futex),
 * with chunk sizes that do and do not divide the range. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "cpu_pool.h"
#include "t.h"

typedef struct job {
  _Atomic int *hits; /* [n] */
  _Atomic int max_tid;
} job;

static void count(void *arg, int64_t i0, int64_t i1, int tid) {
  job *j = arg;
  for (int64_t i = i0; i < i1; i++)
    atomic_fetch_add(&j->hits[i], 1);
  int m = atomic_load(&j->max_tid);
  while (tid > m && !atomic_compare_exchange_weak(&j->max_tid, &m, tid)) {
  }
}

static bool run_once(cpu_pool *p, int64_t n, int64_t grain, int *max_tid) {
  _Atomic int *hits = calloc((size_t)n + 1, sizeof *hits);
  job j = {.hits = hits};
  cpu_pool_for(p, n, grain, count, &j);
  bool ok = true;
  for (int64_t i = 0; i < n; i++)
    ok = ok && atomic_load(&hits[i]) == 1;
  *max_tid = atomic_load(&j.max_tid);
  free(hits);
  return ok;
}

static void sleep_ms(int ms) {
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_threads(int n_threads) {
  cpu_pool *p = NULL;
  bl_err err = {0};
  T_CHECK(cpu_pool_create(n_threads, &p, &err) == BL_OK);
  if (!p) return;
  T_CHECK(cpu_pool_threads(p) == n_threads);
  const int64_t sizes[][2] = {{1, 1}, {7, 1}, {100, 7}, {1000, 64}, {5, 10}, {4096, 1}};
  bool all = true;
  for (int rep = 0; rep < 300; rep++) {
    const int64_t *s = sizes[rep % 6];
    int mt = 0;
    all = all && run_once(p, s[0], s[1], &mt);
    all = all && mt < n_threads;
    if (rep % 50 == 49) sleep_ms(2 + rep / 50); /* past the spin budget: futex path */
  }
  T_CHECKF(all, "%d threads: an item ran zero or several times", n_threads);
  cpu_pool_destroy(p);
}

int main(void) {
  test_threads(1);
  test_threads(2);
  test_threads(3);
  test_threads(8);
  /* created and destroyed at once, with no job ever posted */
  cpu_pool *p = NULL;
  T_CHECK(cpu_pool_create(4, &p, NULL) == BL_OK);
  cpu_pool_destroy(p);
  T_CHECK(cpu_pool_create(0, &p, NULL) == BL_EINVAL);
  return T_DONE();
}
