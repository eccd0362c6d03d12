/* Whole-model check (suite gpu): the same model, prompt and KV format run
 * through the CPU backend and the CUDA backend, and every step's logits
 * compared.
 *
 * Models: the tiny random Qwen3 checkpoints in tests/data (3 layers, hidden
 * 128, 4/2 heads of 64, vocab 2048) in every weight format they come in:
 * fp16, fp16 with a tied lm_head, w4 and w2 quantized at load, and the four
 * GPTQ packings (w4 act-order with a perm, w4 one group per row, w2 g32 sym,
 * w2 g64 asym); and, when BALLAST_SMOLLM2_GGUF names the demo model,
 * SmolLM2-135M (30 layers, 9/3 heads of 64, vocab 49152, tied) as stored
 * (w4 from Q4_1) and dequantized to fp16 (not w2: see k_smollm2). Each in
 * every KV format: fp16, fp8 with per-head and per-tensor scales, nvfp4.
 *
 * The run: a prompt of N_PROMPT tokens prefilled in chunks of 5, 12 and 36
 * (5: every matmul on the GEMV path and the tensor scales calibrated on a
 * short first write, as in serving; 12: fp16 weights on cuBLAS, quantized on
 * several GEMV tiles; 36: every format on cuBLAS; see CU_GEMV_MAX_TOKENS_* in
 * kernels/cuda/cu_matmul.cuh), logits of every prompt position, then
 * N_DECODE single-token steps. Every run of a weight format decodes the
 * greedy tokens of the CPU run with an fp16 cache (teacher forcing), so one
 * near-tie cannot send two runs apart. The tiny models have no tokenizer:
 * their ids are the bytes of tests/data/calib/calib.txt; SmolLM2 reads the
 * same text through its own.
 *
 * One line per combination gives the largest |gpu - cpu| over all rows (and
 * the CPU logit there), how much of the tolerance it used, top-1 agreement,
 * KL(cpu || gpu) mean and max over rows and, for fp8 and nvfp4, the format's
 * own effect on the CPU (max |cpu - cpu with an fp16 cache| and the mean KL
 * between the two) and the ratio of the KLs. The bounds and their reasons
 * are under "tolerances" below.
 *
 * Where no GPU is present (CI) bk_cuda_create says BL_EUNSUPPORTED: the test
 * prints one line "gpu suite skipped: <reason>" and exits 77, meson's skip.
 * Argument: the tests/data folder. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gpu_harness.h"
#include "kv_cache.h"
#include "model.h"
#include "t.h"

#define N_PROMPT 53 /* 5 + 12 + 36 */
#define N_DECODE 8
#define N_ROWS   (N_PROMPT + N_DECODE)
#define KV_BS    16

static const int32_t k_chunks[] = {5, 12, 36};

/* ---- tolerances ----------------------------------------------------------
 *
 * Every logit must satisfy |gpu - cpu| <= atol + rtol*|cpu|, with atol in
 * units of the CPU logits' standard deviation over the row (sd), so one rule
 * serves a random model (sd ~1) and a trained one (sd of several units).
 *
 * fp16 KV. Both backends accumulate in fp32, in different orders (a few
 * 1e-7 relative). The larger difference is the GPU's cuBLAS path (prefill
 * chunks of 12 and 36 tokens): it rounds the activations, and dequantized
 * W4/W2 weights, to fp16 before the product, 2^-11 relative each, so a
 * matmul output moves by up to ~1e-3 * sum|w x|, typically a few 1e-4 of its
 * size. Through the residual stream and the final norm that is a relative
 * change of order 1e-3 in the last hidden state, hence a few 1e-3 sd in a
 * logit. ATOL_SD 2e-2 sd + RTOL 1e-2 is ~5x that; a wrong index, packing
 * bit, norm or RoPE pair gives errors of order one sd. (The budget
 * tests/unit/model/test_parity.c allows against transformers' fp32.)
 * SmolLM2 passes its 30 layers' worth of these differences through trained
 * weights: DEEP_SCALE 4 (the emulator measures 0.5x the unscaled bound).
 * W4/W2 weights: the GPU's GEMV (up to 32 tokens, so every step here but
 * the 36-token chunk) rounds x to fp16 and sums each 16-value span of
 * products in fp16 before fp32 (kernels/cuda/cu_matmul.cu): per matmul
 * output tests/gpu/test_cuda_ops.c measures up to 0.49 of its 1e-3 *
 * sum|w x| bound where the cuBLAS path above reaches 0.16, and the fp16
 * rounding of x alone 0.25; so 3x the difference, on every step instead of
 * the cuBLAS chunks only: QUANT_SCALE 3 (the emulator measures 0.24-0.40x
 * the scaled bound; the same GEMV with fp32 sums measured 0.33-0.61x the
 * unscaled one). A packing, index or scale slip is still off by whole sd.
 *
 * fp8 / nvfp4 KV. Here the two runs cannot agree as closely, whatever the
 * kernels: a K or V element whose CPU and GPU values (d ~ 1e-5..1e-3 apart,
 * relative to its head's largest) straddle a rounding boundary of the format
 * is stored a whole step s apart (2^-3 for E4M3, up to 2^-1 for E2M1), which
 * moves every later layer's inputs by far more than d, so more elements
 * straddle boundaries there. The emulator shows the cascade in SmolLM2's fp8
 * cache, even with every prefill chunk on the GEMV path (d ~ 5e-6 in layer
 * 0): byte-identical in layer 0, 1 element of 11712 apart in layer 1, 13 in
 * layer 2, 800-1700 in layer 9, 27-45% from layer 14 on. The runs end up
 * nearly as far apart as two independent roundings of the cache, so the bound
 * is the triangle inequality |gpu - cpu| <= |gpu - cpu16| + |cpu16 - cpu|:
 * the fp16 bound above plus OWN_MULT times the largest |cpu - cpu16| in the
 * row (cpu16: the CPU with an fp16 cache, the same tokens), i.e. the GPU may
 * not be farther from the CPU than the format itself moves the CPU, twice,
 * plus some spread of the GPU's own maximum. A decoding bug (nibble order, a
 * scale in the wrong row, a block-table slip) is off by much more than the
 * format's error.
 * The sharper check is on KL(cpu || gpu) averaged over all rows, against the
 * format's own KL(cpu16 || cpu). Two independent roundings of the cache
 * would give a ratio of ~2 (KL(cpu || gpu) ~ KL(cpu16 || cpu) +
 * KL(cpu16 || gpu)); a GPU that quantizes differently (another calibration
 * rule, or recalibrating on every write: emulated kernels mutated so) lands
 * at 0.7-2.6 on the tiny models, or far beyond; flips alone stay far below
 * where the cascade has few layers to grow: the tiny models measure <= 0.03,
 * bound KL_RATIO 0.25; with W4/W2 weights the GEMV's fp16 sums above feed
 * the cascade (0.28-0.33 measured), bound KL_RATIO_Q 0.5, still below the
 * 0.7 of a different quantization. SmolLM2's 30 layers take the cascade
 * most of the way (0.27 with GEMV-only prefill, 0.28-0.57 with the cuBLAS
 * chunks; 0.54-1.21 for w4 with the GEMV's fp16 sums), so there
 * KL_RATIO_DEEP is that ceiling of 2 and catches only gross errors; the tiny
 * models carry the sharp check and tests/gpu/test_cuda_ops.c checks the
 * caches byte for byte. KL_FLOOR keeps the bound above the fp16 runs' level
 * where a format's own effect is tiny.
 *
 * Top-1: a disagreement is allowed only where the CPU's best two logits are
 * within the summed tolerances of each other (a near-tie the bound above
 * already admits). */
#define ATOL_SD       2e-2
#define RTOL          1e-2
#define DEEP_SCALE    4.0
#define QUANT_SCALE   3.0
#define OWN_MULT      2.5
#define KL_RATIO      0.25
#define KL_RATIO_Q    0.5
#define KL_RATIO_DEEP 2.0
#define KL_FLOOR      1e-6

typedef struct kv_kind {
  bk_kvfmt fmt;
  bk_kvscale scaling;
  const char *name;
} kv_kind;

static const kv_kind k_kinds[] = {{BK_KV_F16, BK_KVS_HEAD, "fp16"},
                                  {BK_KV_FP8, BK_KVS_HEAD, "fp8"},
                                  {BK_KV_FP8, BK_KVS_TENSOR, "fp8-tensor"},
                                  {BK_KV_NVFP4, BK_KVS_HEAD, "nvfp4"}};

/* A weight format under test: a model folder or file loaded at a precision. */
typedef struct wcase {
  const char *name; /* folder under tests/data, or NULL: the SmolLM2 GGUF */
  model_prec prec;
  int32_t group_size; /* when quantizing at load */
  bool sym;
} wcase;

/* fp16 (bf16 shards), fp16 with lm_head = embed, w4 and w2 rounded at load
 * (RTN; asym g32, sym g64), then the GPTQ packings: w4 with act-order (a
 * perm), w4 with one group per row, w2 sym g32, w2 asym g64. */
static const wcase k_tiny[] = {
    {"tiny-qwen3", MODEL_PREC_AUTO, 0, false},
    {"tiny-qwen3-tied", MODEL_PREC_AUTO, 0, false},
    {"tiny-qwen3", MODEL_PREC_W4, 32, false},
    {"tiny-qwen3", MODEL_PREC_W2, 64, true},
    {"tiny-qwen3-gptq-w4-g32-asym-actorder-v1", MODEL_PREC_AUTO, 0, false},
    {"tiny-qwen3-gptq-w4-gall-sym-v2", MODEL_PREC_AUTO, 0, false},
    {"tiny-qwen3-gptq-w2-g32-sym-v1", MODEL_PREC_AUTO, 0, false},
    {"tiny-qwen3-gptq-w2-g64-asym-v2", MODEL_PREC_AUTO, 0, false},
};

/* Not w2: rounded to 2 bits at load (RTN, no GPTQ) SmolLM2 breaks (logits
 * of +-30, a residual stream reaching 8500; fp8/nvfp4 caches move its
 * outputs by 6 nats of KL) and amplifies any difference: in the emulator
 * each of its layers agrees with the CPU's to <= 7e-6 relative given the
 * same input, yet the two chains drift 100x apart over the first layers and
 * end with logits 1-2 apart (2.5x the bound; 1.9x with GEMV-only prefill).
 * That measures the model, not the kernels. The tiny models cover w2. */
static const wcase k_smollm2[] = {
    {NULL, MODEL_PREC_AUTO, 0, false}, /* w4: Q4_1 blocks as stored */
    {NULL, MODEL_PREC_FP16, 0, false},
};

/* ---- one run ------------------------------------------------------------ */

static int32_t argmax(const float *x, int32_t n) {
  int32_t b = 0;
  for (int32_t i = 1; i < n; i++)
    if (x[i] > x[b]) b = i;
  return b;
}

/* Logits [N_ROWS][vocab] of prompt (N_PROMPT ids) and N_DECODE decode steps
 * with a fresh cache of kind. Decode step d feeds gen[d]; with pick set,
 * gen[d] is first set to the argmax of the previous row (the reference run). */
static bl_status run(model *m, const kv_kind *kind, const int32_t *prompt, int32_t *gen, bool pick,
                     float *logits, bl_err *err) {
  const model_config *c = &m->cfg;
  size_t vocab = (size_t)c->vocab;
  kv_pool kv;
  kv_pool_cfg cfg = {.fmt = kind->fmt,
                     .scaling = kind->scaling,
                     .n_layers = c->n_layers,
                     .n_kv_heads = c->n_kv_heads,
                     .head_dim = c->head_dim,
                     .block_size = KV_BS,
                     .n_blocks = (N_ROWS + KV_BS - 1) / KV_BS + 3};
  bl_status st = kv_pool_init_cfg(&kv, m->be, &cfg, err);
  if (st) return st;
  /* Another sequence takes blocks first: the table is not 0, 1, 2, ... */
  kv_seq other = {0}, seq = {0};
  if (kv_seq_reserve(&kv, &other, 2 * KV_BS) || kv_seq_reserve(&kv, &seq, N_ROWS))
    st = bl_fail(err, BL_ENOMEM, "%s: cannot reserve %d KV positions", m->path, N_ROWS);
  int32_t ids[N_ROWS], pos[N_ROWS], sq[N_ROWS], slots[N_ROWS], out[N_ROWS];
  memcpy(ids, prompt, N_PROMPT * sizeof *ids);
  for (int32_t t = 0; t < N_ROWS && !st; t++) {
    pos[t] = t;
    sq[t] = 0;
    slots[t] = kv_seq_slot(&kv, &seq, t);
  }
  size_t n_chunks = sizeof k_chunks / sizeof *k_chunks;
  for (int32_t t0 = 0, step = 0; t0 < N_ROWS && !st; step++) {
    int32_t k = (size_t)step < n_chunks ? k_chunks[step] : 1;
    if (t0 >= N_PROMPT) { /* decode */
      int32_t d = t0 - N_PROMPT;
      if (pick) gen[d] = argmax(logits + (size_t)(t0 - 1) * vocab, c->vocab);
      ids[t0] = gen[d];
    }
    for (int32_t i = 0; i < k; i++)
      out[t0 + i] = i;
    model_batch b = {.n_tok = k,
                     .ids = ids + t0,
                     .pos = pos + t0,
                     .seq = sq + t0,
                     .slots = slots + t0,
                     .n_seq = 1,
                     .max_blocks = seq.n_blocks,
                     .block_tables = seq.blocks,
                     .n_out = k,
                     .out_tok = out + t0};
    st = model_forward(m, kv.dev, &b, logits + (size_t)t0 * vocab, err);
    t0 += k;
  }
  kv_seq_free(&kv, &other);
  kv_seq_free(&kv, &seq);
  kv_pool_destroy(&kv);
  return st;
}

/* ---- comparison ----------------------------------------------------------- */

/* log-softmax of x [n] into out, in double. */
static void log_softmax(const float *x, int32_t n, double *out) {
  double mx = -INFINITY, s = 0;
  for (int32_t i = 0; i < n; i++)
    mx = fmax(mx, x[i]);
  for (int32_t i = 0; i < n; i++)
    s += exp(x[i] - mx);
  double lse = mx + log(s);
  for (int32_t i = 0; i < n; i++)
    out[i] = x[i] - lse;
}

/* KL(p || q) in nats between the softmaxes of logits p and q [n]. */
static double kl_row(const float *p, const float *q, int32_t n, double *lp, double *lq) {
  log_softmax(p, n, lp);
  log_softmax(q, n, lq);
  double kl = 0;
  for (int32_t i = 0; i < n; i++)
    kl += exp(lp[i]) * (lp[i] - lq[i]);
  return kl;
}

typedef struct figures {
  double max_diff, at_ref; /* largest |gpu - cpu| and the cpu logit there */
  double worst;            /* largest |gpu - cpu| / tolerance (NaN counts as infinite) */
  int top1, bad_top1;      /* rows whose argmax agrees; disagreements not at a near-tie */
  double kl_mean, kl_max;  /* KL(cpu || gpu) over rows */
  double own_diff, own_kl; /* the format's own effect: max |cpu - cpu16|, mean KL(cpu16 || cpu) */
} figures;

/* ref, got: [N_ROWS][vocab] logits of the CPU and the GPU; ref16: the CPU's
 * with an fp16 cache for a quantized format (NULL for fp16 itself). deep:
 * the bounds of a deep model; quant: of W4/W2 weights. */
static figures compare(const float *ref, const float *got, const float *ref16, int32_t vocab,
                       bool deep, bool quant, double *lp, double *lq) {
  figures f = {0};
  double scale = (deep ? DEEP_SCALE : 1.0) * (quant ? QUANT_SCALE : 1.0);
  for (int32_t r = 0; r < N_ROWS; r++) {
    const float *c = ref + (size_t)r * vocab, *g = got + (size_t)r * vocab;
    const float *c16 = ref16 ? ref16 + (size_t)r * vocab : NULL;
    double mean = 0, var = 0, own = 0;
    for (int32_t i = 0; i < vocab; i++)
      mean += c[i];
    mean /= vocab;
    for (int32_t i = 0; i < vocab; i++) {
      var += (c[i] - mean) * (c[i] - mean);
      if (c16) own = fmax(own, fabs((double)c[i] - c16[i]));
    }
    f.own_diff = fmax(f.own_diff, own);
    double atol = scale * ATOL_SD * sqrt(var / vocab) + OWN_MULT * own, rtol = scale * RTOL;
    for (int32_t i = 0; i < vocab; i++) {
      double d = fabs((double)g[i] - c[i]), x = d / (atol + rtol * fabs((double)c[i]));
      if (isnan(x)) x = INFINITY;
      if (x > f.worst) f.worst = x;
      if (!(d <= f.max_diff) && !isnan(f.max_diff)) {
        f.max_diff = d;
        f.at_ref = c[i];
      }
    }
    int32_t ac = argmax(c, vocab), ag = argmax(g, vocab);
    if (ac == ag) {
      f.top1++;
    } else { /* near-tie: both logits within their tolerances of each other */
      double gap = (double)c[ac] - c[ag];
      if (!(gap <= 2 * atol + rtol * (fabs((double)c[ac]) + fabs((double)c[ag])))) f.bad_top1++;
    }
    double kl = kl_row(c, g, vocab, lp, lq);
    f.kl_mean += kl / N_ROWS;
    if (!(kl <= f.kl_max)) f.kl_max = kl;
    if (c16) f.own_kl += kl_row(c16, c, vocab, lp, lq) / N_ROWS;
  }
  return f;
}

/* ---- per weight format ----------------------------------------------------- */

typedef struct pair {
  bk_backend *cpu, *gpu;
} pair;

static void label_of(const model *m, const char *name, char *out, size_t n) {
  /* the group size of the weights themselves (GGUF Q4 blocks are 32 wide
   * whatever m->group_size says) */
  const bk_weight *w = &m->layers[0].wq;
  char g[24] = "";
  if (w->fmt != BK_WF_F16 && w->group_size < w->cols)
    snprintf(g, sizeof g, " g%d", (int)w->group_size);
  else if (w->fmt != BK_WF_F16)
    snprintf(g, sizeof g, " g-row"); /* one group per row */
  snprintf(out, n, "%s %s%s%s", name, model_prec_name(m->prec), g, m->cfg.tied ? " tied" : "");
}

/* Load path at w's precision on both backends and compare every KV kind.
 * ids: the prompt (N_PROMPT); deep: a deep model's bounds (SmolLM2). */
static void check_weights(pair *p, const char *path, const char *name, const wcase *w,
                          const int32_t *ids, bool deep) {
  bl_err err = {0};
  model_load_opts o = {.precision = w->prec, .group_size = w->group_size, .sym = w->sym};
  model *mc = NULL, *mg = NULL;
  T_CHECKF(model_load(path, &o, p->cpu, &mc, &err) == BL_OK, "%s on cpu: %s", path, err.msg);
  bl_err_clear(&err);
  T_CHECKF(!mc || model_load(path, &o, p->gpu, &mg, &err) == BL_OK, "%s on %s: %s", path,
           p->gpu->name, err.msg);
  if (!mc || !mg) {
    model_free(mc);
    model_free(mg);
    return;
  }
  char label[160];
  label_of(mc, name, label, sizeof label);
  bool quant = mc->layers[0].wq.fmt != BK_WF_F16;
  int32_t vocab = mc->cfg.vocab;
  size_t n = (size_t)N_ROWS * vocab;
  float *ref16 = malloc(n * sizeof *ref16), *ref = malloc(n * sizeof *ref);
  float *got = malloc(n * sizeof *got);
  double *lp = malloc((size_t)vocab * sizeof *lp), *lq = malloc((size_t)vocab * sizeof *lq);
  if (!ref16 || !ref || !got || !lp || !lq) {
    fprintf(stderr, "harness: out of memory\n");
    exit(1);
  }
  /* The CPU with an fp16 cache first: its greedy tokens are every run's
   * decode input, and its logits measure each format's own effect. */
  int32_t gen[N_DECODE];
  bl_status st = run(mc, &k_kinds[0], ids, gen, true, ref16, &err);
  T_CHECKF(st == BL_OK, "%s fp16 on cpu: %s", label, err.msg);
  for (size_t k = 0; k < sizeof k_kinds / sizeof *k_kinds && !st; k++) {
    const kv_kind *kind = &k_kinds[k];
    bool f16 = kind->fmt == BK_KV_F16;
    bl_err_clear(&err);
    bl_status sc = f16 ? BL_OK : run(mc, kind, ids, gen, false, ref, &err);
    T_CHECKF(sc == BL_OK, "%s %s on cpu: %s", label, kind->name, err.msg);
    if (sc) continue;
    const float *want = f16 ? ref16 : ref;
    memset(got, 0xff, n * sizeof *got); /* NaN: a row the GPU run leaves fails */
    sc = run(mg, kind, ids, gen, false, got, &err);
    T_CHECKF(sc == BL_OK, "%s %s on %s: %s", label, kind->name, p->gpu->name, err.msg);
    if (sc) continue;
    figures f = compare(want, got, f16 ? NULL : ref16, vocab, deep, quant, lp, lq);
    printf("%-46s %-10s max|diff| %.2e (ref %+6.2f, %.2f x tol)  top-1 %d/%d  KL %.1e max %.1e",
           label, kind->name, f.max_diff, f.at_ref, f.worst, f.top1, N_ROWS, f.kl_mean, f.kl_max);
    if (!f16)
      printf("  format's own: max|diff| %.2e KL %.1e (ratio %.3f)", f.own_diff, f.own_kl,
             f.kl_mean / f.own_kl);
    printf("\n");
    double ratio = deep ? KL_RATIO_DEEP : quant ? KL_RATIO_Q : KL_RATIO;
    T_CHECKF(f.worst <= 1.0, "%s %s: logits off by %.3g x the tolerance", label, kind->name,
             f.worst);
    T_CHECKF(f.bad_top1 == 0, "%s %s: %d rows disagree on top-1 away from a near-tie", label,
             kind->name, f.bad_top1);
    T_CHECKF(f16 || f.kl_mean <= ratio * f.own_kl + KL_FLOOR,
             "%s %s: KL(cpu || gpu) %.3g is %.3g of the format's own %.3g (bound %.2f)", label,
             kind->name, f.kl_mean, f.kl_mean / f.own_kl, f.own_kl, ratio);
  }
  free(ref16), free(ref), free(got), free(lp), free(lq);
  model_free(mc);
  model_free(mg);
}

/* The first n bytes of calib.txt, or NULL. */
static char *read_text(const char *dir, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/calib/calib.txt", dir);
  FILE *f = fopen(path, "rb");
  char *s = calloc(n + 1, 1);
  size_t got = f && s ? fread(s, 1, n, f) : 0;
  if (f) fclose(f);
  if (got < n) {
    free(s);
    return NULL;
  }
  return s;
}

static void check_smollm2(pair *p, const char *gguf, const char *text) {
  bl_err err = {0};
  tok_tokenizer *tok = NULL;
  int32_t *ids = NULL;
  size_t n = 0;
  T_CHECKF(model_load_tokenizer(gguf, &tok, &err) == BL_OK, "%s", err.msg);
  if (tok)
    T_CHECKF(tok_encode(tok, text, strlen(text), false, &ids, &n, &err) == BL_OK, "%s", err.msg);
  T_CHECKF(n >= N_PROMPT, "smollm2: only %zu tokens of calib.txt", n);
  if (n >= N_PROMPT)
    for (size_t i = 0; i < sizeof k_smollm2 / sizeof *k_smollm2; i++)
      check_weights(p, gguf, "smollm2-135m", &k_smollm2[i], ids, true);
  free(ids);
  tok_free(tok);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/data";
  bk_backend *gpu, *cpu;
  int rc = gpu_open(&gpu, &cpu);
  if (rc >= 0) return rc;
  pair p = {cpu, gpu};
  char *text = read_text(dir, 4096);
  T_CHECKF(text != NULL, "cannot read %s/calib/calib.txt", dir);
  if (text) {
    int32_t ids[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++)
      ids[i] = (uint8_t)text[i]; /* < 256 <= every tiny vocab */
    for (size_t i = 0; i < sizeof k_tiny / sizeof *k_tiny; i++) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", dir, k_tiny[i].name);
      check_weights(&p, path, k_tiny[i].name, &k_tiny[i], ids, false);
    }
    const char *gguf = getenv("BALLAST_SMOLLM2_GGUF");
    if (gguf && *gguf)
      check_smollm2(&p, gguf, text);
    else
      printf("smollm2-135m: skipped (set BALLAST_SMOLLM2_GGUF)\n");
  }
  free(text);
  bk_destroy(cpu);
  bk_destroy(gpu);
  return T_DONE();
}
