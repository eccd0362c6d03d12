/* Static-batch runner over model_forward and the paged KV cache. */
#include "runner.h"

#include <stdlib.h>
#include <string.h>

bl_status runner_init(runner *r, model *m, int32_t n_seq, int32_t max_ctx, bl_err *err) {
  return runner_init_kv(r, m, n_seq, max_ctx, BK_KV_F16, BK_KVS_HEAD, err);
}

bl_status runner_init_kv(runner *r, model *m, int32_t n_seq, int32_t max_ctx, bk_kvfmt fmt,
                         bk_kvscale scaling, bl_err *err) {
  *r = (runner){.m = m, .n_seq = n_seq, .chunk = 256};
  const int32_t bs = 16;
  r->max_blocks = (max_ctx + bs - 1) / bs;
  bl_status st = model_kv_pool_init(m, &r->kv, fmt, scaling, bs, n_seq * r->max_blocks, err);
  if (st) return st;
  int32_t w = r->chunk > n_seq ? r->chunk : n_seq;
  r->seqs = calloc((size_t)n_seq, sizeof *r->seqs);
  r->len = calloc((size_t)n_seq, sizeof *r->len);
  r->bt = calloc((size_t)n_seq * (size_t)r->max_blocks, sizeof *r->bt);
  r->ids = malloc((size_t)w * 5 * sizeof *r->ids);
  if (!r->seqs || !r->len || !r->bt || !r->ids) {
    runner_free(r);
    return bl_fail(err, BL_ENOMEM, "runner: out of memory");
  }
  r->pos = r->ids + w;
  r->seq = r->ids + 2 * w;
  r->slots = r->ids + 3 * w;
  r->out = r->ids + 4 * w;
  return BL_OK;
}

void runner_free(runner *r) {
  for (int32_t i = 0; r->seqs && i < r->n_seq; i++)
    kv_seq_free(&r->kv, &r->seqs[i]);
  if (r->kv.be) kv_pool_destroy(&r->kv);
  free(r->seqs);
  free(r->len);
  free(r->bt);
  free(r->ids);
  memset(r, 0, sizeof *r);
}

/* Grow sequence s to n tokens and refresh its block-table row. */
static bl_status reserve(runner *r, int32_t s, int32_t n, bl_err *err) {
  if (n > r->max_blocks * r->kv.dev[0].block_size)
    return bl_fail(err, BL_ERANGE, "runner: sequence %d would exceed its context (%d tokens)", s,
                   r->max_blocks * r->kv.dev[0].block_size);
  bl_status st = kv_seq_reserve(&r->kv, &r->seqs[s], n);
  if (st) return bl_fail(err, st, "runner: no KV blocks for sequence %d", s);
  memcpy(r->bt + (size_t)s * (size_t)r->max_blocks, r->seqs[s].blocks,
         (size_t)r->seqs[s].n_blocks * sizeof *r->bt);
  return BL_OK;
}

bl_status runner_prefill(runner *r, int32_t s, const int32_t *ids, int32_t n, float *out,
                         bl_err *err) {
  for (int32_t done = 0; done < n;) {
    int32_t k = n - done < r->chunk ? n - done : r->chunk;
    bl_status st = reserve(r, s, r->len[s] + k, err);
    if (st) return st;
    for (int32_t t = 0; t < k; t++) {
      r->ids[t] = ids[done + t];
      r->pos[t] = r->len[s] + t;
      r->seq[t] = s;
      r->slots[t] = kv_seq_slot(&r->kv, &r->seqs[s], r->pos[t]);
    }
    bool last = done + k == n;
    r->out[0] = k - 1;
    model_batch b = {.n_tok = k,
                     .ids = r->ids,
                     .pos = r->pos,
                     .seq = r->seq,
                     .slots = r->slots,
                     .n_seq = r->n_seq,
                     .max_blocks = r->max_blocks,
                     .block_tables = r->bt,
                     .n_out = last && out ? 1 : 0,
                     .out_tok = r->out};
    if ((st = model_forward(r->m, r->kv.dev, &b, out, err))) return st;
    r->len[s] += k;
    done += k;
  }
  return BL_OK;
}

bl_status runner_decode(runner *r, const int32_t *ids, float *out, bl_err *err) {
  for (int32_t s = 0; s < r->n_seq; s++) {
    bl_status st = reserve(r, s, r->len[s] + 1, err);
    if (st) return st;
    r->ids[s] = ids[s];
    r->pos[s] = r->len[s];
    r->seq[s] = s;
    r->slots[s] = kv_seq_slot(&r->kv, &r->seqs[s], r->len[s]);
    r->out[s] = s;
  }
  model_batch b = {.n_tok = r->n_seq,
                   .ids = r->ids,
                   .pos = r->pos,
                   .seq = r->seq,
                   .slots = r->slots,
                   .n_seq = r->n_seq,
                   .max_blocks = r->max_blocks,
                   .block_tables = r->bt,
                   .n_out = r->n_seq,
                   .out_tok = r->out};
  bl_status st = model_forward(r->m, r->kv.dev, &b, out, err);
  if (st) return st;
  for (int32_t s = 0; s < r->n_seq; s++)
    r->len[s]++;
  return BL_OK;
}
