/* `ballast bench --concurrency N,...`: aggregate decode throughput through
 * the scheduler (continuous batching over the paged KV cache, in process).
 *
 * N requests, each a --prompt-len prompt of pseudo-random tokens and
 * --steps generated tokens (greedy, ignore_eos), are submitted at once to a
 * pool sized for them (max_num_seqs N) and the pool is stepped until all
 * finish. Reported per N:
 *  - decode tok/s: tokens generated in steps that ran decode tokens only,
 *    over those steps' time (the steady state of N running sequences);
 *  - end-to-end tok/s: all generated tokens over the whole run, prefill
 *    included;
 *  - scheduler us/step and its share of a decode step: time in the step
 *    outside model_forward (planning, block tables, sampling, events). With
 *    --device null the forward pass does nothing, so the step time is the
 *    scheduler's own cost. */
#include <stdlib.h>

#include "bench_sched.h"
#include "cli.h"
#include "scheduler.h"

static void count_event(const sched_event *ev, void *user) {
  if (ev->finish != SCHED_RUNNING) (*(int *)user)++;
}

bl_status bench_concurrency(model *m, int32_t n, int32_t prompt_len, int32_t steps,
                            bench_sched_row *row, bl_err *err) {
  int32_t bs = 16, per_seq = (prompt_len + steps + bs - 1) / bs + 1;
  sched_pool_cfg cfg = {.name = "bench",
                        .m = m,
                        .kv_fmt = BK_KV_F16,
                        .block_size = bs,
                        .n_blocks = n * per_seq + 1,
                        .max_num_seqs = n,
                        .max_batched_tokens = n > 512 ? n : 512};
  sched_pool *p = NULL;
  bl_status st = sched_pool_create(&cfg, &p, err);
  if (st) return st;
  int32_t *prompt = malloc((size_t)prompt_len * sizeof *prompt);
  int done = 0;
  if (!prompt) {
    sched_pool_destroy(p);
    return bl_fail(err, BL_ENOMEM, "bench: out of memory");
  }
  for (int32_t r = 0; r < n && !st; r++) {
    for (int32_t i = 0; i < prompt_len; i++)
      prompt[i] = (int32_t)(sampler_uniform((uint64_t)r, (uint64_t)i) * (m->cfg.vocab - 1));
    sched_req q = {.id = (uint64_t)r,
                   .prompt = prompt,
                   .n_prompt = prompt_len,
                   .max_tokens = steps,
                   .ignore_eos = true,
                   .on_event = count_event,
                   .user = &done};
    st = sched_submit(p, &q, err);
  }
  free(prompt);
  double t0 = cli_now(), dec_s = 0, dec_sched_s = 0;
  uint64_t dec_tok = 0, dec_steps = 0;
  sched_stats a, b;
  sched_pool_stats(p, &a);
  for (bool idle = false; !st && !idle;) {
    double s0 = cli_now();
    st = sched_pool_step(p, &idle, err);
    double s1 = cli_now();
    sched_pool_stats(p, &b);
    if (!idle && b.prefill_tokens == a.prefill_tokens && b.decode_tokens > a.decode_tokens) {
      dec_s += s1 - s0;
      dec_sched_s += b.schedule_s - a.schedule_s;
      dec_tok += b.generated_tokens - a.generated_tokens;
      dec_steps++;
    }
    a = b;
  }
  double total = cli_now() - t0;
  if (!st && done != n) st = bl_fail(err, BL_EIO, "bench: %d of %d requests finished", done, n);
  if (!st) {
    *row = (bench_sched_row){.concurrency = n,
                             .decode_tok_s = dec_s > 0 ? (double)dec_tok / dec_s : 0,
                             .e2e_tok_s = (double)b.generated_tokens / total,
                             .step_ms = dec_steps ? dec_s * 1e3 / (double)dec_steps : 0,
                             .sched_us = dec_steps ? dec_sched_s * 1e6 / (double)dec_steps : 0,
                             .sched_share = dec_s > 0 ? dec_sched_s / dec_s : 0,
                             .steps = b.steps};
  }
  sched_pool_destroy(p);
  return st;
}
