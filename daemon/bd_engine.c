/* The engine behind the daemon: the executor (2-bit) and planner (fp16)
 * pools, each a model on its own backend with its scheduler thread, and the
 * router over them. Built once at start-up from the config; what a reload
 * may change live (policies, templates, limits) goes to the router through
 * sched_router_reconfigure, and the rest waits for a restart. A pool that
 * turns unhealthy after a device error tells the daemon through
 * opts.on_unhealthy; BALLAST_INJECT_FAULT (a test hook) makes one do so. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bd_daemon.h"
#include "bk_fault.h"
#include "bl_log.h"
#include "gen_config.h"
#include "kv_cache.h"
#include "kv_format.h"
#include "tokenizer.h"

static bl_status backend(const char *name, const bd_pool_cfg *pc, bk_backend **out, bl_err *err) {
  if (!strcmp(pc->device, "cuda") && pc->n_devices > 1) /* not dropped without a word */
    return bl_fail(err, BL_EUNSUPPORTED,
                   "pools.%s.devices lists %d GPUs: a replica spanning GPUs (tensor "
                   "parallelism) is not built yet; give one GPU id",
                   name, pc->n_devices);
  if (!strcmp(pc->device, "cuda"))
    return bk_cuda_create(pc->n_devices ? pc->devices[0] : 0, out, err);
  return bk_cpu_create(pc->threads, out, err);
}

/* BALLAST_INJECT_FAULT=POOL:SPEC: the pool (0 executor, 1 planner) and the
 * bk_fault spec, checked whole before anything loads; *pool -1: none. */
static bl_status fault_target(const char *v, bool has_planner, int *pool, const char **spec,
                              bl_err *err) {
  *pool = -1;
  *spec = NULL;
  if (!v || !*v) return BL_OK;
  const char *colon = strchr(v, ':');
  size_t n = colon ? (size_t)(colon - v) : strlen(v);
  if (n == 8 && !strncmp(v, "executor", 8))
    *pool = 0;
  else if (n == 7 && !strncmp(v, "planner", 7))
    *pool = 1;
  else
    return bl_fail(err, BL_EINVAL,
                   "BALLAST_INJECT_FAULT=%s: expected POOL:OP:N[:KIND], POOL executor or planner "
                   "(e.g. executor:matmul:200)",
                   v);
  if (*pool == 1 && !has_planner)
    return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: there is no planner pool", v);
  bk_fault_spec fs;
  bl_err e = {0};
  if (!colon || bk_fault_parse(colon + 1, &fs, &e))
    return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: %s", v,
                   colon ? e.msg : "expected POOL:OP:N[:KIND] (e.g. executor:matmul:200)");
  *spec = colon + 1;
  return BL_OK;
}

static void pool_unhealthy(sched_pool *sp, void *user) {
  const bd_engine *e = user;
  if (e->opts.on_unhealthy) e->opts.on_unhealthy(e->opts.user);
}

static bl_status pool_open(bd_engine *e, bd_pool *p, const char *name, const bd_pool_cfg *pc,
                           bool executor, const char *fault, bl_err *err) {
  p->name = name;
  snprintf(p->precision, sizeof p->precision, "%s", pc->precision);
  snprintf(p->kv_format, sizeof p->kv_format, "%s", pc->kv_format);
  if (!strcmp(pc->device, "cuda"))
    snprintf(p->device, sizeof p->device, "cuda:%d", pc->n_devices ? pc->devices[0] : 0);
  else
    snprintf(p->device, sizeof p->device, "cpu");
  p->block_size = pc->block_size;
  p->max_num_seqs = pc->max_num_seqs;
  p->model_path = strdup(pc->model);
  if (!p->model_path) return bl_fail(err, BL_ENOMEM, "out of memory");
  model_prec prec;
  bk_kvfmt fmt;
  if (model_prec_parse(pc->precision, &prec))
    return bl_fail(err, BL_EINVAL, "pools.%s.precision %s: expected fp16, w4 or w2", name,
                   pc->precision);
  if (kv_fmt_parse(pc->kv_format, &fmt))
    return bl_fail(err, BL_EINVAL, "pools.%s.kv_format %s: unknown", name, pc->kv_format);
  bl_status st = backend(name, pc, &p->be, err);
  if (st) return st;
  if (fault) {
    bk_backend *w;
    if ((st = bk_fault_wrap(p->be, fault, &w, err))) return st;
    p->be = w;
    bl_log(BL_LOG_WARN,
           "%s: BALLAST_INJECT_FAULT: injecting faults into this pool's backend (%s): a test "
           "hook, never for serving",
           name, fault);
  }
  model_load_opts o = {.precision = prec, .tokenizer_path = pc->tokenizer};
  bl_log(BL_LOG_INFO, "%s: loading %s as %s on %s", name, pc->model, pc->precision, p->device);
  if ((st = model_load(pc->model, &o, p->be, &p->m, err))) return st;
  const model_config *mc = &p->m->cfg;
  int32_t blocks = pc->kv_blocks;
  if (!blocks) {
    uint64_t per = kv_block_bytes(fmt, BK_KVS_HEAD, mc->n_layers, mc->n_kv_heads, mc->head_dim,
                                  pc->block_size);
    blocks = (int32_t)(((uint64_t)pc->kv_budget_mb << 20) / (per ? per : 1));
    if (blocks < 1)
      return bl_fail(err, BL_ERANGE, "pools.%s.kv_budget_mb %d: less than one %d-token block", name,
                     pc->kv_budget_mb, pc->block_size);
  }
  sched_pool_cfg c = {.name = name,
                      .m = p->m,
                      .kv_fmt = fmt,
                      .block_size = pc->block_size,
                      .n_blocks = blocks,
                      .max_num_seqs = pc->max_num_seqs,
                      .max_batched_tokens = pc->max_batched_tokens,
                      .prefix_cache = pc->prefix_cache,
                      .loop = executor ? SCHED_LOOP_OBSERVE : SCHED_LOOP_OFF,
                      .on_unhealthy = pool_unhealthy,
                      .health_user = e};
  if ((st = sched_pool_create(&c, &p->p, err))) return st;
  bl_log(BL_LOG_INFO, "%s: %d KV blocks of %d tokens (%s)", name, blocks, pc->block_size,
         pc->kv_format);
  return sched_pool_start(p->p, err);
}

sched_router_cfg bd_engine_router_cfg(const bd_engine *e, const bd_config *c) {
  return (sched_router_cfg){.executor = e->pools[0].p,
                            .planner = e->n_pools > 1 ? e->pools[1].p : NULL,
                            .chat = e->chat,
                            .plan_prompt = c->plan_prompt,
                            .plan_insert = c->plan_insert,
                            .policies = c->policies,
                            .n_policies = c->n_policies,
                            .default_policy = c->default_policy,
                            .limits = c->policy_limits};
}

bl_status bd_engine_open(bd_engine *e, const bd_config *c, const bd_engine_opts *opts,
                         bl_err *err) {
  memset(e, 0, sizeof *e);
  if (opts) e->opts = *opts;
  int fault_pool;
  const char *fault;
  bl_status st = fault_target(e->opts.inject_fault, c->planner.present, &fault_pool, &fault, err);
  if (st) return st;
  st = pool_open(e, &e->pools[0], "executor", &c->executor, true, fault_pool == 0 ? fault : NULL,
                 err);
  e->n_pools = 1;
  if (!st && c->planner.present) {
    e->n_pools = 2;
    st = pool_open(e, &e->pools[1], "planner", &c->planner, false, fault_pool == 1 ? fault : NULL,
                   err);
  }
  if (st) return st;
  const model *m = e->pools[0].m;
  if (!m->tok)
    return bl_fail(err, BL_EINVAL,
                   "%s: the model carries no tokenizer; set pools.executor.tokenizer",
                   c->executor.model);
  e->tok = m->tok;
  e->vocab = m->cfg.vocab;
  const char *arch = m->cfg.arch == MODEL_ARCH_QWEN3 ? "qwen3" : "llama";
  e->chat = chat_template_detect(tok_chat_template(m->tok), arch);
  if (e->chat == CHAT_UNKNOWN) {
    bl_log(BL_LOG_WARN, "%s: its chat template is not one ballast renders; using chatml",
           c->executor.model);
    e->chat = CHAT_CHATML;
  }
  const char *source = NULL;
  if ((st = model_sampling_defaults(c->executor.model, m->cfg.arch, &e->sampling, &source, err)))
    return st;
  bl_log(BL_LOG_INFO, "chat template %s, sampling defaults from %s", chat_template_name(e->chat),
         source);
  sched_router_cfg rc = bd_engine_router_cfg(e, c);
  if ((st = sched_router_create(&rc, &e->router, err))) return st;
  if (c->calibrate_tokens > 0) {
    if ((st = sched_router_calibrate(e->router, c->calibrate_tokens, err))) return st;
    for (int i = 0; i < e->n_pools; i++)
      bl_log(BL_LOG_INFO, "%s: calibrated decode %.1f tok/s at batch 1, %.1f at batch 8",
             e->pools[i].name, sched_router_calibrated(e->router, i, 1),
             sched_router_calibrated(e->router, i, 8));
  }
  return BL_OK;
}

void bd_engine_close(bd_engine *e) {
  for (int i = 0; i < 2; i++)
    if (e->pools[i].p) sched_pool_stop(e->pools[i].p);
  sched_router_destroy(e->router);
  for (int i = 0; i < 2; i++) {
    bd_pool *p = &e->pools[i];
    sched_pool_destroy(p->p);
    model_free(p->m);
    if (p->be) bk_destroy(p->be);
    free(p->model_path);
  }
  memset(e, 0, sizeof *e);
}
