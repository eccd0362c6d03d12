/* A persistent thread pool with one operation: a parallel-for over [0, n).
 *
 * Workers are created once and wait for jobs, spinning briefly before they
 * sleep on a futex, so back-to-back ops in a decode step cost a few hundred
 * nanoseconds to dispatch. The calling thread runs chunks too. Chunks of
 * `grain` items are handed out through one atomic counter (dynamic
 * scheduling, so uneven items such as attention rows balance). One thread
 * posts jobs at a time; cpu_pool_for returns after every chunk has run and
 * every worker has let go of the job. */
#ifndef CPU_POOL_H
#define CPU_POOL_H

#include <stdint.h>

#include "bl_status.h"

/* Run items [i0, i1) on thread tid (0 = the caller, 1..n_threads-1 workers). */
typedef void (*cpu_pool_fn)(void *arg, int64_t i0, int64_t i1, int tid);

typedef struct cpu_pool cpu_pool;

/* n_threads counts the caller: 1 starts no workers. */
bl_status cpu_pool_create(int n_threads, cpu_pool **out, bl_err *err);
void cpu_pool_destroy(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);
/* fn over [0, n) in chunks of grain (>= 1); runs inline when n <= grain. */
void cpu_pool_for(cpu_pool *p, int64_t n, int64_t grain, cpu_pool_fn fn, void *arg);

#endif
