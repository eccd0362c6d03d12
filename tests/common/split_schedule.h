/* The schedule tests of tensor parallelism run a model through (header
 * only, for tests/unit/model/test_tp.c and tests/gpu/test_cuda_tp.c): two
 * sequences prefilled in one step, with different lengths and block ids
 * that are not the identity, then SPLIT_N_DECODE decode steps of both
 * together. Token ids follow from the step alone, never from the logits,
 * so two runs of one model feed the same tokens however close they are. */
#ifndef SPLIT_SCHEDULE_H
#define SPLIT_SCHEDULE_H

#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"
#include "model.h"

#define SPLIT_N_DECODE 4
#define SPLIT_N_ROWS   (2 + 2 * SPLIT_N_DECODE)

/* Run the schedule on m with a KV cache of format fmt; *out gets every
 * output row's logits (2 prefill rows, then 2 per decode step). */
static inline bl_status split_schedule(model *m, bk_kvfmt fmt, float **out, int32_t *n_rows,
                                       bl_err *err) {
  enum { BS = 4, LEN0 = 7, LEN1 = 5 };
  kv_pool kv;
  bl_status st = model_kv_pool_init(m, &kv, fmt, BK_KVS_HEAD, BS, 16, err);
  if (st) return st;
  kv_seq pad = {0}, seq[2] = {{0}};
  int32_t vocab = m->cfg.vocab, rows = SPLIT_N_ROWS;
  float *logits = calloc((size_t)rows * (size_t)vocab, sizeof *logits);
  int32_t ids[LEN0 + LEN1], pos[LEN0 + LEN1], sq[LEN0 + LEN1], slots[LEN0 + LEN1], outs[2];
  int32_t bt[2 * 8], len[2] = {LEN0, LEN1};
  /* a padding sequence first, so the block ids are not 0, 1, 2, ... */
  st = kv_seq_reserve(&kv, &pad, 2 * BS);
  for (int32_t s = 0; !st && s < 2; s++)
    st = kv_seq_reserve(&kv, &seq[s], len[s] + SPLIT_N_DECODE);
  if (st || !logits) {
    st = bl_fail(err, st ? st : BL_ENOMEM, "split schedule: no room for the sequences");
    goto out;
  }
  int32_t n = 0;
  for (int32_t s = 0; s < 2; s++) {
    for (int32_t t = 0; t < len[s]; t++, n++) {
      ids[n] = (int32_t)((97 * (uint32_t)n + 13 * (uint32_t)s + 5) % (uint32_t)vocab);
      pos[n] = t;
      sq[n] = s;
      slots[n] = kv_seq_slot(&kv, &seq[s], t);
    }
    outs[s] = n - 1;
    memcpy(bt + s * 8, seq[s].blocks, (size_t)seq[s].n_blocks * sizeof *bt);
  }
  model_batch b = {.n_tok = n,
                   .ids = ids,
                   .pos = pos,
                   .seq = sq,
                   .slots = slots,
                   .n_seq = 2,
                   .max_blocks = 8,
                   .block_tables = bt,
                   .n_out = 2,
                   .out_tok = outs};
  st = model_forward(m, kv.dev, &b, logits, err);
  for (int32_t d = 0; !st && d < SPLIT_N_DECODE; d++) {
    for (int32_t s = 0; s < 2; s++) {
      ids[s] = (int32_t)((31 * (uint32_t)d + 7 * (uint32_t)s + 11) % (uint32_t)vocab);
      pos[s] = len[s] + d;
      sq[s] = s;
      slots[s] = kv_seq_slot(&kv, &seq[s], pos[s]);
      outs[s] = s;
    }
    b.n_tok = 2;
    st = model_forward(m, kv.dev, &b, logits + (size_t)(2 + 2 * d) * (size_t)vocab, err);
  }
out:
  kv_seq_free(&kv, &pad);
  kv_seq_free(&kv, &seq[0]);
  kv_seq_free(&kv, &seq[1]);
  kv_pool_destroy(&kv);
  *out = logits;
  *n_rows = rows;
  return st;
}

#endif
