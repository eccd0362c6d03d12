/* Drawing tokens on the device (model_forward_sample, backend.h's sample
 * slot) from the scheduler. The CPU backend has no sample slot, so one pool
 * gets a stand-in: the host sampler (sampler_sample) called through the
 * slot, which is what the CUDA kernel is checked against in
 * tests/gpu/test_cuda_sample.c. Against a pool that samples on the host:
 *  - requests without penalties or logprobs (greedy, and seeded with
 *    temperature, top_k, top_p, min_p) are drawn through the slot, every
 *    token of them, and give the same tokens;
 *  - a step holding a request with a penalty or logprobs is drawn on the
 *    host for all its rows (the slot cannot express them), with the same
 *    tokens as before.
 * usage: test_device_sample TESTS_DATA_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byte_tok.h"
#include "sampler.h"
#include "sched_router.h"

#define N_REQ 4
#define N_GEN 12

static uint64_t g_slot_rows; /* rows the stand-in slot drew */

/* The sample slot on the CPU backend (device pointers are host memory). */
static bl_status host_slot(bk_backend *be, int32_t *ids, const float *logits, int32_t n,
                           int32_t vocab, const bk_sample_params *p) {
  (void)be;
  void *scratch = malloc(sampler_scratch_bytes(vocab));
  if (!scratch) return BL_ENOMEM;
  for (int32_t i = 0; i < n; i++) {
    sampler_params sp = {.temperature = p[i].temperature,
                         .top_k = p[i].top_k,
                         .top_p = p[i].top_p,
                         .min_p = p[i].min_p,
                         .seed = p[i].seed};
    ids[i] =
        sampler_sample(&sp, logits + (size_t)i * (size_t)vocab, vocab, (uint64_t)p[i].pos, scratch);
  }
  free(scratch);
  g_slot_rows += (uint64_t)n;
  return BL_OK;
}

typedef struct out {
  int tokens, finals;
  int32_t ids[N_GEN];
  sched_rfinish fin;
} out;

static void on_ev(const sched_revent *ev, void *user) {
  out *o = user;
  if (ev->kind == SCHED_REV_TOKEN && o->tokens < N_GEN) o->ids[o->tokens++] = ev->token;
  if (ev->kind == SCHED_REV_FINAL) {
    o->finals++;
    o->fin = ev->finish;
  }
}

typedef struct world {
  bk_backend *be;
  model *m;
  sched_pool *p;
  sched_router *r;
} world;

static bool world_init(world *w, const char *dir, bool slot) {
  memset(w, 0, sizeof *w);
  bl_err err = {0};
  char path[4096];
  snprintf(path, sizeof path, "%s/tiny-qwen3", dir);
  T_CHECKF(bk_cpu_create(1, &w->be, &err) == BL_OK, "%s", err.msg);
  if (!w->be) return false;
  if (slot) w->be->sample = host_slot;
  model_load_opts o = {.precision = MODEL_PREC_W4};
  T_CHECKF(model_load(path, &o, w->be, &w->m, &err) == BL_OK, "%s", err.msg);
  if (!w->m) return false;
  T_CHECK(model_can_sample(w->m) == slot);
  w->m->tok = byte_tokenizer_n(w->m->cfg.vocab);
  sched_pool_cfg c = {.name = "executor",
                      .m = w->m,
                      .n_blocks = 64,
                      .max_num_seqs = N_REQ,
                      .max_batched_tokens = 256};
  T_CHECKF(sched_pool_create(&c, &w->p, &err) == BL_OK, "%s", err.msg);
  sched_router_cfg rc = {.executors = &w->p, .n_executors = 1, .chat = CHAT_CHATML};
  T_CHECKF(w->p && sched_router_create(&rc, &w->r, &err) == BL_OK, "%s", err.msg);
  return w->r != NULL;
}

static void world_free(world *w) {
  sched_router_destroy(w->r);
  sched_pool_destroy(w->p);
  model_free(w->m);
  bk_destroy(w->be);
}

/* Submit n requests with sampling sp[i] at once and step until done. */
static void run(world *w, const sampler_params *sp, int n, out *o) {
  static const int32_t prompt[5] = {72, 101, 108, 108, 111};
  for (int i = 0; i < n; i++) {
    memset(&o[i], 0, sizeof o[i]);
    sched_rreq q = {.id = (uint64_t)i + 1,
                    .prompt = prompt,
                    .n_prompt = 5,
                    .max_tokens = N_GEN,
                    .sampling = sp[i],
                    .ignore_eos = true,
                    .policy = "direct",
                    .overrides = SCHED_POLICY_OVERRIDE_NONE,
                    .on_event = on_ev,
                    .user = &o[i]};
    bl_err err = {0};
    T_CHECKF(sched_router_submit(w->r, &q, &err) == BL_OK, "%s", err.msg);
  }
  for (int round = 0; round < 1000; round++) {
    bool idle;
    bl_err ignore = {0};
    sched_pool_step(w->p, &idle, &ignore);
    if (idle) break;
  }
  for (int i = 0; i < n; i++)
    T_CHECKF(o[i].finals == 1 && o[i].fin == SCHED_R_LENGTH && o[i].tokens == N_GEN,
             "request %d: %d finals, finish %d, %d tokens", i, o[i].finals, (int)o[i].fin,
             o[i].tokens);
}

static uint64_t device_sampled(world *w) {
  sched_stats st;
  sched_pool_stats(w->p, &st);
  return st.device_sampled;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_device_sample TESTS_DATA_DIR\n");
    return 2;
  }
  world dev, host;
  if (!world_init(&dev, argv[1], true) || !world_init(&host, argv[1], false)) return T_DONE();
  out a[N_REQ], b[N_REQ];

  /* plain requests: every token through the slot, the host pool's tokens */
  const sampler_params plain[N_REQ] = {
      {0},
      {.temperature = 0.8f, .seed = 7},
      {.temperature = 1.0f, .top_k = 50, .top_p = 0.9f, .seed = 11},
      {.temperature = 0.7f, .min_p = 0.05f, .seed = 3}};
  run(&dev, plain, N_REQ, a);
  run(&host, plain, N_REQ, b);
  for (int i = 0; i < N_REQ; i++)
    T_CHECKF(!memcmp(a[i].ids, b[i].ids, sizeof a[i].ids), "plain request %d: other tokens", i);
  T_CHECKF(g_slot_rows == N_REQ * N_GEN && device_sampled(&dev) == N_REQ * N_GEN &&
               device_sampled(&host) == 0,
           "slot rows %llu, device-sampled %llu / %llu", (unsigned long long)g_slot_rows,
           (unsigned long long)device_sampled(&dev), (unsigned long long)device_sampled(&host));

  /* with a penalty, or logprobs, among them: those steps draw on the host */
  const sampler_params mixed[3][2] = {
      {{.temperature = 0.8f, .seed = 7}, {.repetition_penalty = 1.3f}},
      {{.temperature = 0.0f}, {.presence_penalty = 0.5f, .frequency_penalty = 0.2f}},
      {{.temperature = 0.8f, .seed = 7}, {.n_logprobs = 2}}};
  for (int k = 0; k < 3; k++) {
    uint64_t rows0 = g_slot_rows, dev0 = device_sampled(&dev);
    run(&dev, mixed[k], 2, a);
    run(&host, mixed[k], 2, b);
    for (int i = 0; i < 2; i++)
      T_CHECKF(!memcmp(a[i].ids, b[i].ids, sizeof a[i].ids),
               "mixed set %d request %d: other tokens", k, i);
    T_CHECKF(g_slot_rows == rows0 && device_sampled(&dev) == dev0,
             "mixed set %d: a step with penalties or logprobs went through the slot (%llu rows)", k,
             (unsigned long long)(g_slot_rows - rows0));
  }
  world_free(&dev);
  world_free(&host);
  return T_DONE();
}
