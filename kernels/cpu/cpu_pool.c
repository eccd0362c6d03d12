/* Persistent worker pool: see cpu_pool.h.
 *
 * Protocol. The caller writes the job (fn, arg, n, grain), resets `next` and
 * sets `pending` to the number of workers, then bumps `gen` (the futex word
 * workers wait on). Every worker runs chunks until `next` passes n, then
 * decrements `pending`; the last one wakes the caller if it sleeps. Because
 * every worker checks in for every job, no worker can still be reading a job
 * when the next one is posted. Sleeping is announced through counters read
 * after the shared word is changed (all seq_cst), so a wake-up is never
 * lost and never paid for when nobody sleeps. */
#include "cpu_pool.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a waiting thread spins before it sleeps: long enough to cover
 * the gap between two ops of a forward pass, short enough not to burn a
 * core between requests. */
#define CPU_SPIN_NS 200000

typedef struct cpu_worker {
  struct cpu_pool *pool;
  int tid;
} cpu_worker;

struct cpu_pool {
  int n_threads;
  pthread_t *threads; /* [n_threads - 1] */
  cpu_worker *workers;
  int n_started;

  /* the posted job, written by the caller before gen is bumped */
  cpu_pool_fn fn;
  void *arg;
  int64_t n, grain;

  _Alignas(64) _Atomic int64_t next;
  _Alignas(64) _Atomic uint32_t gen; /* futex word: bumped once per job */
  _Atomic int gen_sleepers;
  _Atomic bool stop;
  _Alignas(64) _Atomic uint32_t pending; /* futex word: workers yet to check in */
  _Atomic int caller_sleeps;
};

static void cpu_futex_wait(_Atomic uint32_t *w, uint32_t val) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void cpu_futex_wake(_Atomic uint32_t *w) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static int64_t cpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until *w != val or the spin budget is spent; true if it changed. */
static bool cpu_spin_while_eq(_Atomic uint32_t *w, uint32_t val) {
  int64_t deadline = 0;
  for (uint32_t i = 1;; i++) {
    if (atomic_load_explicit(w, memory_order_acquire) != val) return true;
    cpu_relax();
    if ((i & 255) == 0) {
      int64_t now = cpu_now_ns();
      if (deadline == 0)
        deadline = now + CPU_SPIN_NS;
      else if (now > deadline)
        return false;
    }
  }
}

static void cpu_run_chunks(cpu_pool *p, int tid) {
  for (;;) {
    int64_t i = atomic_fetch_add_explicit(&p->next, p->grain, memory_order_relaxed);
    if (i >= p->n) return;
    int64_t e = i + p->grain < p->n ? i + p->grain : p->n;
    p->fn(p->arg, i, e, tid);
  }
}

static void *cpu_worker_main(void *argp) {
  cpu_worker *me = argp;
  cpu_pool *p = me->pool;
  uint32_t seen = 0;
  for (;;) {
    if (!cpu_spin_while_eq(&p->gen, seen)) {
      atomic_fetch_add(&p->gen_sleepers, 1);
      while (atomic_load(&p->gen) == seen)
        cpu_futex_wait(&p->gen, seen);
      atomic_fetch_sub(&p->gen_sleepers, 1);
    }
    seen = atomic_load_explicit(&p->gen, memory_order_acquire);
    if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
    cpu_run_chunks(p, me->tid);
    if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeps))
      cpu_futex_wake(&p->pending);
  }
}

static void cpu_post(cpu_pool *p) {
  atomic_fetch_add(&p->gen, 1);
  if (atomic_load(&p->gen_sleepers) > 0) cpu_futex_wake(&p->gen);
}

static void cpu_wait_workers(cpu_pool *p) {
  for (;;) {
    uint32_t v = atomic_load_explicit(&p->pending, memory_order_acquire);
    if (v == 0) break;
    if (cpu_spin_while_eq(&p->pending, v)) continue;
    atomic_store(&p->caller_sleeps, 1);
    while ((v = atomic_load(&p->pending)) != 0)
      cpu_futex_wait(&p->pending, v);
    atomic_store(&p->caller_sleeps, 0);
  }
}

void cpu_pool_for(cpu_pool *p, int64_t n, int64_t grain, cpu_pool_fn fn, void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (p->n_threads == 1 || n <= grain) {
    fn(arg, 0, n, 0);
    return;
  }
  p->fn = fn;
  p->arg = arg;
  p->n = n;
  p->grain = grain;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  atomic_store_explicit(&p->pending, (uint32_t)(p->n_threads - 1), memory_order_relaxed);
  cpu_post(p);
  cpu_run_chunks(p, 0);
  cpu_wait_workers(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p->n_threads; }

void cpu_pool_destroy(cpu_pool *p) {
  if (!p) return;
  atomic_store(&p->stop, true);
  cpu_post(p);
  for (int i = 0; i < p->n_started; i++)
    pthread_join(p->threads[i], NULL);
  free(p->threads);
  free(p->workers);
  free(p);
}

bl_status cpu_pool_create(int n_threads, cpu_pool **out, bl_err *err) {
  *out = NULL;
  if (n_threads < 1) return bl_fail(err, BL_EINVAL, "cpu: thread count %d < 1", n_threads);
  cpu_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
  if (!p) return bl_fail(err, BL_ENOMEM, "cpu: out of memory for the thread pool");
  memset(p, 0, sizeof *p);
  p->n_threads = n_threads;
  p->threads = calloc((size_t)n_threads, sizeof *p->threads);
  p->workers = calloc((size_t)n_threads, sizeof *p->workers);
  if (!p->threads || !p->workers) {
    cpu_pool_destroy(p);
    return bl_fail(err, BL_ENOMEM, "cpu: out of memory for the thread pool");
  }
  for (int i = 0; i < n_threads - 1; i++) {
    p->workers[i] = (cpu_worker){.pool = p, .tid = i + 1};
    int rc = pthread_create(&p->threads[i], NULL, cpu_worker_main, &p->workers[i]);
    if (rc != 0) {
      cpu_pool_destroy(p);
      return bl_fail(err, BL_ENOMEM, "cpu: starting worker thread %d of %d: %s", i + 1, n_threads,
                     strerror(rc));
    }
    p->n_started++;
  }
  *out = p;
  return BL_OK;
}
