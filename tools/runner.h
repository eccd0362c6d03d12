/* An offline, in-process runner for the tools: one model, a paged KV pool,
 * and a fixed set of sequences that prefill (in chunks) and then decode in
 * lock-step. The serving scheduler (scheduler/) does continuous batching;
 * this is the simple static batch that `generate` and `bench` need. */
#ifndef TOOLS_RUNNER_H
#define TOOLS_RUNNER_H

#include "kv_cache.h"
#include "model.h"

typedef struct runner {
  model *m;
  kv_pool kv;
  int32_t n_seq, max_blocks, chunk;
  kv_seq *seqs;
  int32_t *len;                           /* [n_seq] tokens in cache */
  int32_t *bt;                            /* [n_seq][max_blocks] */
  int32_t *ids, *pos, *seq, *slots, *out; /* step arrays [max(chunk, n_seq)] */
} runner;

/* Room for n_seq sequences of up to max_ctx tokens each, fp16 KV cache. */
bl_status runner_init(runner *r, model *m, int32_t n_seq, int32_t max_ctx, bl_err *err);
/* The same with the KV cache in fmt (fp8: scaled per head or per tensor). */
bl_status runner_init_kv(runner *r, model *m, int32_t n_seq, int32_t max_ctx, bk_kvfmt fmt,
                         bk_kvscale scaling, bl_err *err);
void runner_free(runner *r);
/* Append n prompt tokens to sequence s; logits of the last one to out [vocab]
 * (out may be NULL). */
bl_status runner_prefill(runner *r, int32_t s, const int32_t *ids, int32_t n, float *out,
                         bl_err *err);
/* One decode step: ids[i] is appended to sequence i for every i; logits to
 * out [n_seq][vocab]. */
bl_status runner_decode(runner *r, const int32_t *ids, float *out, bl_err *err);

#endif
