/* The engine behind the daemon: the executor (2-bit) and planner (fp16)
 * pools, each one or more data-parallel replicas (a model on its own
 * backend with its scheduler thread and KV cache), and the router over
 * them. Built once at start-up from the config; what a reload
 * may change live (policies, templates, limits) goes to the router through
 * sched_router_reconfigure, and the rest waits for a restart. A pool that
 * turns unhealthy after a device error tells the daemon through
 * opts.on_unhealthy; BALLAST_INJECT_FAULT (a test hook) makes one do so. */
#include <assert.h>
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

/* Shard s of replica r's backend. */
static bl_status backend(const bd_pool_cfg *pc, int r, int s, bk_backend **out, bl_err *err) {
  if (!strcmp(pc->device, "cuda")) /* bd_config: tensor_parallel GPUs per replica */
    return bk_cuda_create(pc->devices[r * pc->tensor_parallel + s], out, err);
  return bk_cpu_create(pc->threads, out, err);
}

/* BALLAST_INJECT_FAULT=POOL[.R]:SPEC: the pool (0 executor, 1 planner), its
 * replica and the bk_fault spec, checked whole before anything loads;
 * *pool -1: none. */
static bl_status fault_target(const char *v, const bd_config *c, int *pool, int *rep,
                              const char **spec, bl_err *err) {
  *pool = -1;
  *rep = 0;
  *spec = NULL;
  if (!v || !*v) return BL_OK;
  static const char usage[] = "expected POOL[.R]:OP:N[:KIND], POOL executor or planner, R a "
                              "replica (default 0), e.g. executor:matmul:200";
  const char *colon = strchr(v, ':');
  size_t n = colon ? (size_t)(colon - v) : strlen(v);
  const char *dot = memchr(v, '.', n);
  size_t name_n = dot ? (size_t)(dot - v) : n;
  if (name_n == 8 && !strncmp(v, "executor", 8))
    *pool = 0;
  else if (name_n == 7 && !strncmp(v, "planner", 7))
    *pool = 1;
  else
    return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: %s", v, usage);
  if (*pool == 1 && !c->planner.present)
    return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: there is no planner pool", v);
  const bd_pool_cfg *pc = *pool ? &c->planner : &c->executor;
  if (dot) {
    char *end;
    long r = strtol(dot + 1, &end, 10);
    if (end != v + n || end == dot + 1 || r < 0 || r >= pc->replicas)
      return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: replica %.*s: the pool has %d", v,
                     (int)(n - name_n - 1), dot + 1, (int)pc->replicas);
    *rep = (int)r;
  }
  bk_fault_spec fs;
  bl_err e = {0};
  if (!colon || bk_fault_parse(colon + 1, &fs, &e))
    return bl_fail(err, BL_EINVAL, "BALLAST_INJECT_FAULT=%s: %s", v, colon ? e.msg : usage);
  *spec = colon + 1;
  return BL_OK;
}

static void pool_unhealthy(sched_pool *sp, void *user) {
  const bd_engine *e = user;
  if (e->opts.on_unhealthy) e->opts.on_unhealthy(e->opts.user);
}

/* Replica r of pool p: its backends (the first wrapped with fault when
 * given), model (split across them when tensor_parallel > 1) and
 * scheduler thread. */
static bl_status replica_open(bd_engine *e, bd_pool *p, int r, const bd_pool_cfg *pc,
                              model_prec prec, bk_kvfmt fmt, bool executor, const char *fault,
                              bl_err *err) {
  bd_replica *x = &p->rep[r];
  int tp = pc->tensor_parallel;
  bool cuda = !strcmp(pc->device, "cuda");
  char *d = x->device, *end = d + sizeof x->device;
  for (int s = 0; s < tp && d < end; s++) /* "cuda:0+1", "cpu+cpu" */
    if (cuda)
      d += snprintf(d, (size_t)(end - d), s ? "+%d" : "cuda:%d", (int)pc->devices[r * tp + s]);
    else
      d += snprintf(d, (size_t)(end - d), s ? "+cpu" : "cpu");
  if (pc->replicas > 1)
    snprintf(x->label, sizeof x->label, "%s replica %d (%s)", p->name, r, x->device);
  else
    snprintf(x->label, sizeof x->label, "%s pool", p->name);
  bl_status st = BL_OK;
  for (int s = 0; !st && s < tp; s++) {
    x->n_be = s + 1;
    st = backend(pc, r, s, &x->bes[s], err);
  }
  if (st) return st;
  if (fault) {
    bk_backend *w;
    if ((st = bk_fault_wrap(x->bes[0], fault, &w, err))) return st;
    x->bes[0] = w;
    bl_log(BL_LOG_WARN,
           "%s: BALLAST_INJECT_FAULT: injecting faults into its backend (%s): a test hook, never "
           "for serving",
           x->label, fault);
  }
  model_load_opts o = {.precision = prec, .tokenizer_path = pc->tokenizer};
  bl_log(BL_LOG_INFO, "%s: loading %s as %s on %s", x->label, pc->model, pc->precision, x->device);
  st = tp > 1 ? model_load_tp(pc->model, &o, x->bes, tp, &x->m, err)
              : model_load(pc->model, &o, x->bes[0], &x->m, err);
  if (st) return st;
  if (tp > 1)
    bl_log(BL_LOG_INFO, "%s: split %d ways, summing through %s", x->label, tp,
           model_tp_comm_name(x->m));
  const model_config *mc = &x->m->cfg;
  int32_t blocks = pc->kv_blocks;
  if (!blocks) { /* the budget is each backend's: a shard holds its share of the kv heads */
    uint64_t per = kv_block_bytes(fmt, BK_KVS_HEAD, mc->n_layers, model_shard_kv_heads(x->m),
                                  mc->head_dim, pc->block_size);
    blocks = (int32_t)(((uint64_t)pc->kv_budget_mb << 20) / (per ? per : 1));
    if (blocks < 1)
      return bl_fail(err, BL_ERANGE, "pools.%s.kv_budget_mb %d: less than one %d-token block",
                     p->name, pc->kv_budget_mb, pc->block_size);
  }
  sched_pool_cfg c = {.name = p->name,
                      .label = x->label,
                      .m = x->m,
                      .kv_fmt = fmt,
                      .block_size = pc->block_size,
                      .n_blocks = blocks,
                      .max_num_seqs = pc->max_num_seqs,
                      .max_batched_tokens = pc->max_batched_tokens,
                      .prefix_cache = pc->prefix_cache,
                      .loop = executor ? SCHED_LOOP_OBSERVE : SCHED_LOOP_OFF,
                      .on_unhealthy = pool_unhealthy,
                      .health_user = e};
  if ((st = sched_pool_create(&c, &x->p, err))) return st;
  p->sps[r] = x->p;
  bl_log(BL_LOG_INFO, "%s: %d KV blocks of %d tokens (%s)", x->label, blocks, pc->block_size,
         pc->kv_format);
  return sched_pool_start(x->p, err);
}

static bl_status pool_open(bd_engine *e, bd_pool *p, const char *name, const bd_pool_cfg *pc,
                           bool executor, int fault_rep, const char *fault, bl_err *err) {
  p->name = name;
  snprintf(p->precision, sizeof p->precision, "%s", pc->precision);
  snprintf(p->kv_format, sizeof p->kv_format, "%s", pc->kv_format);
  p->block_size = pc->block_size;
  p->max_num_seqs = pc->max_num_seqs;
  p->tensor_parallel = pc->tensor_parallel;
  p->model_path = strdup(pc->model);
  if (!p->model_path) return bl_fail(err, BL_ENOMEM, "out of memory");
  model_prec prec;
  bk_kvfmt fmt;
  if (model_prec_parse(pc->precision, &prec))
    return bl_fail(err, BL_EINVAL, "pools.%s.precision %s: expected fp16, w4 or w2", name,
                   pc->precision);
  if (kv_fmt_parse(pc->kv_format, &fmt))
    return bl_fail(err, BL_EINVAL, "pools.%s.kv_format %s: unknown", name, pc->kv_format);
  bl_status st = BL_OK;
  for (int r = 0; !st && r < pc->replicas; r++) {
    p->n_rep = r + 1;
    st = replica_open(e, p, r, pc, prec, fmt, executor, r == fault_rep ? fault : NULL, err);
  }
  return st;
}

sched_router_cfg bd_engine_router_cfg(const bd_engine *e, const bd_config *c) {
  static_assert(BD_MAX_DEVICES <= SCHED_MAX_REPLICAS, "a replica per device");
  return (sched_router_cfg){.executors = e->pools[0].sps,
                            .n_executors = e->pools[0].n_rep,
                            .planners = e->n_pools > 1 ? e->pools[1].sps : NULL,
                            .n_planners = e->n_pools > 1 ? e->pools[1].n_rep : 0,
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
  int fault_pool, fault_rep;
  const char *fault;
  bl_status st = fault_target(e->opts.inject_fault, c, &fault_pool, &fault_rep, &fault, err);
  if (st) return st;
  st = pool_open(e, &e->pools[0], "executor", &c->executor, true, fault_pool == 0 ? fault_rep : -1,
                 fault, err);
  e->n_pools = 1;
  if (!st && c->planner.present) {
    e->n_pools = 2;
    st = pool_open(e, &e->pools[1], "planner", &c->planner, false, fault_pool == 1 ? fault_rep : -1,
                   fault, err);
  }
  if (st) return st;
  const model *m = e->pools[0].rep[0].m;
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
    for (int r = 0; r < e->pools[i].n_rep; r++)
      if (e->pools[i].rep[r].p) sched_pool_stop(e->pools[i].rep[r].p);
  sched_router_destroy(e->router);
  for (int i = 0; i < 2; i++) {
    bd_pool *p = &e->pools[i];
    for (int r = 0; r < p->n_rep; r++) {
      sched_pool_destroy(p->rep[r].p);
      model_free(p->rep[r].m);
      for (int s = 0; s < p->rep[r].n_be; s++)
        bk_destroy(p->rep[r].bes[s]);
    }
    free(p->model_path);
  }
  memset(e, 0, sizeof *e);
}
