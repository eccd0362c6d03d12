/* Scheduler throughput for `ballast bench --concurrency` (bench_sched.c). */
#ifndef TOOLS_BENCH_SCHED_H
#define TOOLS_BENCH_SCHED_H

#include "model.h"

typedef struct bench_sched_row {
  int32_t concurrency;
  double decode_tok_s; /* generated tokens / time, over decode-only steps */
  double e2e_tok_s;    /* generated tokens / wall time of the whole run */
  double step_ms;      /* mean decode-only step */
  double sched_us;     /* mean time per decode-only step outside the forward pass */
  double sched_share;  /* sched_us / step time */
  uint64_t steps;
} bench_sched_row;

bl_status bench_concurrency(model *m, int32_t n, int32_t prompt_len, int32_t steps,
                            bench_sched_row *row, bl_err *err);

#endif
