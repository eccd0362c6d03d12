/* A loaded model: configuration, weights on one backend, tokenizer, and the
 * forward pass written once against kernels/backend.h.
 *
 * Weights live in the canonical bk_weight layout (host arrays that the CPU
 * backend reads in place; other backends prepare device copies). Linear
 * layers are at the model's precision (fp16, w4 or w2); embeddings, norms
 * and lm_head stay as stored (held as fp16 / f32). */
#ifndef MODEL_H
#define MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "bk_comm.h"
#include "kv_cache.h"
#include "bl_status.h"
#include "tokenizer.h"

typedef enum model_arch { MODEL_ARCH_LLAMA, MODEL_ARCH_QWEN3 } model_arch;

typedef enum model_prec {
  MODEL_PREC_AUTO = 0, /* as stored: GPTQ bits, GGUF Q4 as w4, floats as fp16 */
  MODEL_PREC_FP16,
  MODEL_PREC_W4,
  MODEL_PREC_W2,
} model_prec;

const char *model_prec_name(model_prec p);
/* "fp16" | "w4" | "w2" | "auto" -> BL_OK, else BL_EINVAL. */
bl_status model_prec_parse(const char *s, model_prec *out);

#define MODEL_MAX_EOS 4

typedef struct model_config {
  model_arch arch;
  int32_t n_layers, hidden, intermediate;
  int32_t n_heads, n_kv_heads, head_dim;
  int32_t vocab;   /* rows of embed/lm_head */
  int32_t max_ctx; /* max_position_embeddings / context_length */
  float rope_theta, norm_eps;
  bool tied;      /* lm_head shares embed_tokens */
  bool qk_norm;   /* per-head q/k RMSNorm (qwen3) */
  int32_t bos_id; /* -1: none */
  int32_t eos_ids[MODEL_MAX_EOS];
  int32_t n_eos;
} model_config;

typedef struct model_layer {
  float *attn_norm, *ffn_norm; /* device f32 [hidden] */
  float *q_norm, *k_norm;      /* device f32 [head_dim], NULL without qk_norm */
  bk_weight wq, wk, wv, wo;    /* [heads*hd, hidden], [kv*hd, hidden] x2, [hidden, heads*hd] */
  bk_weight gate, up, down;    /* [inter, hidden] x2, [hidden, inter] */
} model_layer;

typedef struct model_load_opts {
  model_prec precision; /* target precision of the linear layers */
  int32_t group_size;   /* when quantizing at load: 0 = largest of 128/64/32 dividing every width */
  bool sym;             /* when quantizing at load: symmetric groups */
  const char *tokenizer_path; /* override: a tokenizer.json, a folder holding one or a .gguf;
                               * NULL = from the model */
  int32_t split; /* when quantizing at load with group_size 0: a group size that also fits
                  * this many tensor-parallel shards (0 or 1: no split) */
} model_load_opts;

typedef struct model_store model_store; /* host memory and mappings behind the weights */
typedef struct model_scratch model_scratch;
typedef struct model_tp model_tp; /* the shards of a tensor-parallel model (model/tp.c) */

/* Where the forward pass can show a linear's input (calibration, e.g. GPTQ
 * Hessians). Each point feeds the linears listed. */
typedef enum model_cap_point {
  MODEL_CAP_ATTN_IN = 0, /* q, k, v: rmsnorm(x) [n_tok][hidden] */
  MODEL_CAP_O_IN = 1,    /* o: attention output [n_tok][n_heads*head_dim] */
  MODEL_CAP_MLP_IN = 2,  /* gate, up: rmsnorm(x) [n_tok][hidden] */
  MODEL_CAP_DOWN_IN = 3, /* down: silu(gate) * up [n_tok][intermediate] */
  MODEL_CAP_N
} model_cap_point;

/* A capture hook: when model.capture is set, the forward pass downloads each
 * point whose bit (1u << which) is in points to host memory and calls fn
 * with it (x_host valid for the call only). Costs nothing when unset. */
typedef struct model_capture {
  void (*fn)(void *ctx, int32_t layer, int which, const float *x_host, int32_t n_tok, int32_t dim);
  void *ctx;
  uint32_t points;
} model_capture;

/* How decode steps used graphs (backends with capture slots, backend.h). */
typedef struct model_graph_stats {
  uint64_t captures; /* steps recorded */
  uint64_t replays;  /* steps run from a recording */
  uint64_t failures; /* captures that failed (then graphs_off is set) */
} model_graph_stats;

typedef struct model {
  model_config cfg;
  model_prec prec;    /* precision of the linear layers as loaded */
  int32_t group_size; /* of quantized linears (0 for fp16) */
  char *path;
  bk_backend *be;      /* not owned */
  bk_weight embed;     /* fp16 [vocab, hidden] */
  bk_weight lm_head;   /* fp16 [vocab, hidden]; shares embed's data when tied */
  float *final_norm;   /* device f32 [hidden] */
  model_layer *layers; /* [n_layers] */
  tok_tokenizer *tok;  /* NULL when the model carries none */
  model_store *store;
  model_scratch *scratch;
  const model_capture *capture; /* NULL normally; not owned */
  bool graphs_off;              /* never record decode steps (to compare; set by a failure) */
  model_graph_stats graph_stats;
  model_tp *tp; /* NULL: the model runs on be. Else tensor-parallel: be is the host
                 * backend holding the unsplit weights and the shards run the steps */
} model;

/* A tokenizer alone: tokenizer.json, a folder holding one, or a .gguf file's
 * metadata. */
bl_status model_load_tokenizer(const char *path, tok_tokenizer **out, bl_err *err);
/* Load a Hugging Face folder (config.json + safetensors, plain or GPTQ) or a
 * .gguf file onto be. Errors name the file and tensor at fault. */
bl_status model_load(const char *path, const model_load_opts *opts, bk_backend *be, model **out,
                     bl_err *err);

/* The quantization group size used when none is asked for: the largest of
 * 128, 64, 32 that divides every linear's input width (hidden,
 * intermediate, n_heads * head_dim); 0 when none does. */
int32_t model_auto_group_size(const model_config *c);
/* model_auto_group_size for the shards of an n-way tensor-parallel split
 * (n <= 1: the whole model); 0 when none fits. */
int32_t model_auto_group_size_split(const model_config *c, int32_t n);
/* Does group size gs divide every linear's input width? */
bool model_group_size_fits(const model_config *c, int32_t gs);

/* Random weights with the shapes of a known config (for benchmarks):
 * "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b",
 * "qwen3-32b", "smollm2-135m". group_size 0: model_auto_group_size; one
 * that does not fit the shapes is BL_EINVAL. */
bl_status model_synthetic(const char *name, model_prec prec, int32_t group_size, bk_backend *be,
                          model **out, bl_err *err);
/* The config of a synthetic name alone (no weights), for sizing. */
bl_status model_synthetic_config(const char *name, model_config *out, bl_err *err);

void model_free(model *m);

/* Bytes of weights one decode step reads (all linears + lm_head). */
uint64_t model_weight_bytes(const model *m);

/* ---- tensor parallelism (model/tp.c) ---------------------------------
 *
 * A tensor-parallel model splits every layer across n shards, one backend
 * each (Megatron style): q/k/v and gate/up by output rows (whole heads,
 * whole quantization groups of the intermediate width), o and down by
 * input columns, with one all-reduce (bk_comm) after each of those two;
 * lm_head by vocabulary rows, each shard writing its columns of the
 * logits; embeddings and norms on every shard. Shard i holds kv heads
 * [i*kv/n, (i+1)*kv/n), so its KV cache is that part (kv_pool_init_shards).
 * model_forward takes the shards' caches as an array kv[0..n). */
#define MODEL_MAX_TP 8

/* Why c (at precision prec with quantization groups of group_size, 0 for
 * fp16, -1 for one group per row) cannot split n ways: BL_EINVAL with the
 * reason, or BL_OK. */
bl_status model_tp_check(const model_config *c, int32_t group_size, int32_t n, bl_err *err);
/* Split full (loaded on a CPU backend, which it must own: it becomes the
 * host backend and is destroyed with the model) across bes[0..n) and sum
 * through comm (owned from then on, even on failure). n == 1 is allowed.
 * On failure full, host and comm are freed. */
bl_status model_tp_create(model *full, bk_backend *host, bk_backend *const *bes, int32_t n,
                          bk_comm *comm, model **out, bl_err *err);
/* model_load on a host CPU backend, then model_tp_create with the
 * communicator bk_comm_create picks for bes. */
bl_status model_load_tp(const char *path, const model_load_opts *opts, bk_backend *const *bes,
                        int32_t n, model **out, bl_err *err);
/* Shards (1 for a model on one backend), shard i's backend, its kv heads. */
int32_t model_n_shards(const model *m);
bk_backend *model_shard_backend(const model *m, int32_t i);
int32_t model_shard_kv_heads(const model *m);
/* A paged KV cache for m with n_blocks blocks of block_size tokens: m's
 * layers and head size, its kv heads split across its shards. */
bl_status model_kv_pool_init(const model *m, kv_pool *p, bk_kvfmt fmt, bk_kvscale scaling,
                             int32_t block_size, int32_t n_blocks, bl_err *err);
/* "nccl", "host" or "" (not tensor-parallel): how the shards sum. */
const char *model_tp_comm_name(const model *m);

/* One step. On a backend with graph capture, a decode step (every
 * sequence one token with its logits: n_seq == n_out == n_tok <= 64,
 * seq[t] == out_tok[t] == t) of a shape seen before is recorded once and
 * replayed after (forward.c says how). Token t of the step has id ids[t], position pos[t], sequence
 * seq[t] (a row of block_tables) and writes its K/V at cache slot slots[t].
 * Logits of the tokens listed in out_tok are written to logits
 * (host float32 [n_out][vocab]). All arrays are host memory. */
typedef struct model_batch {
  int32_t n_tok;
  const int32_t *ids, *pos, *seq, *slots; /* [n_tok] */
  int32_t n_seq, max_blocks;
  const int32_t *block_tables; /* [n_seq][max_blocks] */
  int32_t n_out;
  const int32_t *out_tok; /* [n_out] token indices into this step */
} model_batch;

bl_status model_forward(model *m, const bk_kv_cache *kv, const model_batch *b, float *logits,
                        bl_err *err);

/* Can model_forward_sample run on m (its backend has the sample slot, and
 * it is not split)? */
bool model_can_sample(const model *m);
/* model_forward, but the next token of each output row is drawn on the
 * device (backend.h's sample slot, sp[i] for row i) and only the ids come
 * back: ids host int32 [n_out]. For rows without penalties or logprobs,
 * which bk_sample_params cannot express; BL_EUNSUPPORTED where
 * model_can_sample is false. */
bl_status model_forward_sample(model *m, const bk_kv_cache *kv, const model_batch *b,
                               const bk_sample_params *sp, int32_t *ids, bl_err *err);

/* Is id an end-of-sequence token of this model? */
bool model_is_eos(const model *m, int32_t id);

#endif
