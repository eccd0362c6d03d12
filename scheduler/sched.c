/* The pool and its step: plan (cancels, deadlines, priority preemption,
 * decode tokens, prefill chunks, admissions), one forward pass, then
 * sampling and the per-token hooks; and the pool's health after a device
 * error. See scheduler.h for the policy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bl_log.h"
#include "sched_internal.h"

#define PRE(p) ((p)->cfg.prefix_cache ? &(p)->pre : NULL)

/* Is a more urgent than b? Lower priority number, then earlier arrival. */
static bool more_urgent(const sched_seq *a, int32_t a_prio, const sched_seq *b, int32_t b_prio) {
  if (a_prio != b_prio) return a_prio < b_prio;
  return a->arrival < b->arrival;
}

/* Effective priority of a waiting sequence: one level better per aging_steps waited. */
static int32_t eff_priority(const sched_pool *p, const sched_seq *s) {
  uint64_t waited = p->step_no - s->wait_since;
  int64_t e = (int64_t)s->priority - (int64_t)(waited / (uint64_t)p->cfg.aging_steps);
  return e < INT32_MIN ? INT32_MIN : (int32_t)e;
}

/* ---- pool ------------------------------------------------------------- */

bl_status sched_pool_create(const sched_pool_cfg *cfg, sched_pool **out, bl_err *err) {
  *out = NULL;
  sched_pool_cfg c = *cfg;
  if (!c.m) return bl_fail(err, BL_EINVAL, "sched: a pool needs a model");
  if (!c.block_size) c.block_size = 16;
  if (!c.max_num_seqs) c.max_num_seqs = 64;
  if (!c.max_batched_tokens) c.max_batched_tokens = 512;
  if (!c.aging_steps) c.aging_steps = 256;
  if (c.block_size < 1 || c.n_blocks < 1 || c.max_num_seqs < 1 || c.aging_steps < 1)
    return bl_fail(err, BL_EINVAL,
                   "sched %s: block_size, n_blocks, max_num_seqs and aging_steps "
                   "must be positive",
                   c.name ? c.name : "?");
  if (c.max_batched_tokens < c.max_num_seqs)
    return bl_fail(err, BL_EINVAL,
                   "sched %s: max_batched_tokens (%d) must be at least max_num_seqs (%d), so every "
                   "running sequence can decode in every step",
                   c.name ? c.name : "?", c.max_batched_tokens, c.max_num_seqs);
  sched_pool *p = calloc(1, sizeof *p);
  if (!p) return bl_fail(err, BL_ENOMEM, "sched: out of memory");
  snprintf(p->name, sizeof p->name, "%s", c.name ? c.name : "pool");
  c.name = p->name;
  if (c.label)
    snprintf(p->label, sizeof p->label, "%s", c.label);
  else
    snprintf(p->label, sizeof p->label, "%s pool", p->name);
  c.label = p->label;
  p->cfg = c;
  p->m = c.m;
  p->vocab = c.m->cfg.vocab;
  int64_t cap = (int64_t)c.n_blocks * c.block_size;
  /* one block to spare for a copy-on-write of a shared block */
  if (c.n_blocks > 1) cap -= c.block_size;
  if (c.m->cfg.max_ctx > 0 && cap > c.m->cfg.max_ctx) cap = c.m->cfg.max_ctx;
  p->max_seq_tokens = (int32_t)cap;
  p->bt_stride = (p->max_seq_tokens + c.block_size - 1) / c.block_size + 1;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  bl_status st =
      model_kv_pool_init(c.m, &p->kv, c.kv_fmt, BK_KVS_HEAD, c.block_size, c.n_blocks, err);
  if (!st && c.prefix_cache) st = kv_prefix_init(&p->pre, c.n_blocks, c.block_size, err);
  if (st) {
    if (p->kv.be) kv_pool_destroy(&p->kv);
    free(p);
    return st;
  }
  size_t nt = (size_t)c.max_batched_tokens, ns = (size_t)c.max_num_seqs;
  p->running = calloc(ns, sizeof *p->running);
  p->ids = malloc(4 * nt * sizeof *p->ids);
  p->out_tok = malloc(ns * sizeof *p->out_tok);
  p->bt = malloc(ns * (size_t)p->bt_stride * sizeof *p->bt);
  p->logits = malloc(ns * (size_t)p->vocab * sizeof *p->logits);
  p->scratch = malloc(sampler_scratch_bytes(p->vocab));
  p->dev_sp = malloc(ns * sizeof *p->dev_sp);
  p->dev_ids = malloc(ns * sizeof *p->dev_ids);
  if (!p->running || !p->ids || !p->out_tok || !p->bt || !p->logits || !p->scratch || !p->dev_sp ||
      !p->dev_ids) {
    sched_pool_destroy(p);
    return bl_fail(err, BL_ENOMEM, "sched %s: out of memory for step buffers", p->name);
  }
  p->pos = p->ids + nt;
  p->seq = p->ids + 2 * nt;
  p->slots = p->ids + 3 * nt;
  p->stats.total_blocks = p->stats.free_blocks = c.n_blocks;
  p->stats.healthy = p->acc.healthy = true;
  *out = p;
  return BL_OK;
}

const char *sched_pool_name(const sched_pool *p) { return p->name; }
model *sched_pool_model(const sched_pool *p) { return p->m; }

static void drop(sched_pool *p, sched_seq *s) {
  kv_release(&p->kv, PRE(p), &s->kv);
  kv_seq_free(&p->kv, &s->kv);
  seq_destroy(s);
}

void sched_pool_destroy(sched_pool *p) {
  if (!p) return;
  sched_pool_stop(p);
  for (inbox_item *it = inbox_take(p), *nx; it; it = nx) {
    nx = it->next;
    if (it->seq) {
      seq_finish(p, it->seq, SCHED_FIN_CANCELLED, (stop_hit){0}, NULL);
      seq_destroy(it->seq);
    }
    free(it);
  }
  for (int32_t i = 0; i < p->n_running; i++) {
    seq_finish(p, p->running[i], SCHED_FIN_CANCELLED, (stop_hit){0}, NULL);
    drop(p, p->running[i]);
  }
  for (int32_t i = 0; i < p->n_waiting; i++) {
    seq_finish(p, p->waiting[i], SCHED_FIN_CANCELLED, (stop_hit){0}, NULL);
    drop(p, p->waiting[i]);
  }
  kv_prefix_free(&p->pre);
  if (p->kv.be) kv_pool_destroy(&p->kv);
  free(p->running);
  free(p->waiting);
  free(p->ids);
  free(p->out_tok);
  free(p->bt);
  free(p->logits);
  free(p->scratch);
  free(p->dev_sp);
  free(p->dev_ids);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->wake);
  free(p);
}

/* ---- queues ----------------------------------------------------------- */

static bool waiting_add(sched_pool *p, sched_seq *s) {
  if (p->n_waiting == p->cap_waiting) {
    int32_t nc = p->cap_waiting ? 2 * p->cap_waiting : 64;
    sched_seq **w = realloc(p->waiting, (size_t)nc * sizeof *w);
    if (!w) return false;
    p->waiting = w;
    p->cap_waiting = nc;
  }
  s->state = SEQ_WAITING;
  s->wait_since = p->step_no;
  p->waiting[p->n_waiting++] = s;
  return true;
}

static void waiting_remove_at(sched_pool *p, int32_t i) {
  p->waiting[i] = p->waiting[--p->n_waiting];
}

/* Index of the most urgent waiting sequence, or -1. */
static int32_t waiting_best(const sched_pool *p) {
  int32_t best = -1, best_e = 0;
  for (int32_t i = 0; i < p->n_waiting; i++) {
    int32_t e = eff_priority(p, p->waiting[i]);
    if (best < 0 || more_urgent(p->waiting[i], e, p->waiting[best], best_e)) best = i, best_e = e;
  }
  return best;
}

/* Keep running[] most urgent first (by base priority). */
static void running_insert(sched_pool *p, sched_seq *s) {
  int32_t i = p->n_running++;
  while (i > 0 && more_urgent(s, s->priority, p->running[i - 1], p->running[i - 1]->priority)) {
    p->running[i] = p->running[i - 1];
    i--;
  }
  p->running[i] = s;
  s->state = SEQ_RUNNING;
}

static void running_remove(sched_pool *p, sched_seq *s) {
  int32_t i = 0;
  while (i < p->n_running && p->running[i] != s)
    i++;
  for (; i + 1 < p->n_running; i++)
    p->running[i] = p->running[i + 1];
  p->n_running--;
}

/* Take s out of whichever queue holds it. */
static void unlink_seq(sched_pool *p, sched_seq *s) {
  if (s->state == SEQ_RUNNING) {
    running_remove(p, s);
    return;
  }
  for (int32_t i = 0; i < p->n_waiting; i++)
    if (p->waiting[i] == s) {
      waiting_remove_at(p, i);
      return;
    }
}

static sched_seq *find(sched_pool *p, uint64_t id) {
  for (int32_t i = 0; i < p->n_running; i++)
    if (p->running[i]->id == id) return p->running[i];
  for (int32_t i = 0; i < p->n_waiting; i++)
    if (p->waiting[i]->id == id) return p->waiting[i];
  return NULL;
}

/* Free s's blocks and send it back to wait with its history (recompute). */
static void preempt(sched_pool *p, sched_seq *s) {
  running_remove(p, s);
  kv_release(&p->kv, PRE(p), &s->kv);
  s->chain = (kv_chain){0};
  s->n_computed = 0;
  s->step_tokens = 0;
  s->n_preempted++;
  p->acc.preemptions++;
  if (!waiting_add(p, s)) {
    seq_finish(p, s, SCHED_FIN_ERROR, (stop_hit){0},
               "out of memory requeueing a preempted request");
    drop(p, s);
  }
}

static void finish_and_drop(sched_pool *p, sched_seq *s, sched_finish f, const char *error) {
  unlink_seq(p, s);
  seq_finish(p, s, f, (stop_hit){0}, error);
  drop(p, s);
}

/* ---- step: inbox, deadlines ------------------------------------------ */

static void handle_inbox(sched_pool *p) {
  for (inbox_item *it = inbox_take(p), *nx; it; it = nx) {
    nx = it->next;
    if (it->kind == INBOX_SUBMIT) {
      if (!waiting_add(p, it->seq)) {
        seq_finish(p, it->seq, SCHED_FIN_ERROR, (stop_hit){0}, "out of memory queueing a request");
        seq_destroy(it->seq);
      }
    } else {
      sched_seq *s = find(p, it->id);
      if (s && it->kind == INBOX_CANCEL) {
        finish_and_drop(p, s, SCHED_FIN_CANCELLED, NULL);
      } else if (s && it->kind == INBOX_MOVE) {
        if (it->dst->vocab != p->vocab) {
          finish_and_drop(p, s, SCHED_FIN_ERROR, "move between pools of different vocabularies");
        } else {
          unlink_seq(p, s);
          kv_release(&p->kv, PRE(p), &s->kv);
          kv_seq_free(&p->kv, &s->kv);
          s->chain = (kv_chain){0};
          s->n_computed = 0;
          s->step_tokens = 0;
          it->kind = INBOX_SUBMIT;
          it->seq = s;
          inbox_push(it->dst, it);
          continue; /* the item now lives in dst's inbox */
        }
      }
    }
    free(it);
  }
}

static void expire(sched_pool *p, double now) {
  for (int32_t i = p->n_running - 1; i >= 0; i--)
    if (p->running[i]->deadline > 0 && now > p->running[i]->deadline)
      finish_and_drop(p, p->running[i], SCHED_FIN_DEADLINE, NULL);
  for (int32_t i = p->n_waiting - 1; i >= 0; i--)
    if (p->waiting[i]->deadline > 0 && now > p->waiting[i]->deadline)
      finish_and_drop(p, p->waiting[i], SCHED_FIN_DEADLINE, NULL);
}

/* ---- step: planning --------------------------------------------------- */

/* Tokens s can add to the cache without preempting anyone. */
static int64_t room(const sched_pool *p, const sched_seq *s) {
  int64_t bs = p->cfg.block_size;
  return (int64_t)s->kv.n_blocks * bs - s->n_computed + (int64_t)kv_available(&p->kv, PRE(p)) * bs;
}

/* Plan up to want tokens for s this step, preempting less urgent running
 * sequences while blocks are short; returns the tokens planned (blocks
 * reserved), 0 when none fit. */
static int32_t plan(sched_pool *p, sched_seq *s, int32_t want) {
  int64_t need = want + (kv_needs_cow(&p->kv, &s->kv, s->n_computed) ? p->cfg.block_size : 0);
  while (room(p, s) < need && p->n_running > 0) {
    sched_seq *v = p->running[p->n_running - 1];
    if (v == s || !more_urgent(s, s->priority, v, v->priority)) break;
    preempt(p, v);
  }
  int64_t r = room(p, s) - (need - want);
  int32_t got = r < want ? (int32_t)(r < 0 ? 0 : r) : want;
  if (got <= 0) return 0;
  bl_err e = {0};
  bl_status st = kv_make_writable(&p->kv, PRE(p), &s->kv, s->n_computed, &e);
  if (st == BL_EDEVICE) bl_fail(&p->dev_err, st, "%s", e.msg); /* the step sees it */
  if (st || kv_reserve(&p->kv, PRE(p), &s->kv, s->n_computed + got)) return 0;
  return got;
}

/* Higher-priority arrivals push out lower-priority running sequences when
 * the sequence cap or the blocks stop them from starting. */
static void priority_preempt(sched_pool *p) {
  int32_t b = waiting_best(p);
  if (b < 0 || p->n_running == 0) return;
  sched_seq *w = p->waiting[b];
  int64_t need = (int64_t)w->n_tokens + 1;
  while (p->n_running > 0) {
    sched_seq *v = p->running[p->n_running - 1];
    bool blocked = p->n_running >= p->cfg.max_num_seqs ||
                   (int64_t)kv_available(&p->kv, PRE(p)) * p->cfg.block_size < need;
    if (!blocked || w->priority >= v->priority) break;
    preempt(p, v);
  }
}

/* Admit the most urgent waiting sequences while the cap, budget and blocks allow. */
static int32_t admit(sched_pool *p, int32_t budget) {
  while (budget > 0 && p->n_running < p->cfg.max_num_seqs) {
    int32_t b = waiting_best(p);
    if (b < 0) break;
    sched_seq *s = p->waiting[b];
    int32_t hit = 0;
    if (p->cfg.prefix_cache && s->n_computed == 0) {
      hit = kv_prefix_match(&p->kv, PRE(p), &s->kv, s->tokens, s->n_tokens, &s->chain);
      s->n_computed = hit < s->n_tokens ? hit : s->n_tokens - 1; /* the last token is fed again */
    }
    int32_t want = s->n_tokens - s->n_computed;
    if (want > budget) want = budget;
    int32_t got = plan(p, s, want);
    if (got == 0) {
      kv_release(&p->kv, PRE(p), &s->kv);
      s->chain = (kv_chain){0};
      s->n_computed = 0;
      break;
    }
    waiting_remove_at(p, b);
    uint64_t waited = p->step_no - s->wait_since;
    if (waited > p->acc.max_wait_steps) p->acc.max_wait_steps = waited;
    if (!s->admitted_once) {
      s->n_cached = s->n_computed;
      s->admitted_once = true;
    }
    p->acc.prefix_hit_tokens += (uint64_t)s->n_computed;
    running_insert(p, s);
    s->step_tokens = got;
    budget -= got;
  }
  return budget;
}

static void plan_step(sched_pool *p) {
  int32_t budget = p->cfg.max_batched_tokens;
  for (int32_t i = 0; i < p->n_running; i++)
    p->running[i]->step_tokens = 0;
  priority_preempt(p);
  /* decode tokens first, most urgent first; a sequence that cannot get a
   * block (and has nobody less urgent to push out) preempts itself */
  for (int32_t i = 0; i < p->n_running && budget > 0; i++) {
    sched_seq *s = p->running[i];
    if (s->n_tokens - s->n_computed != 1) continue;
    if (plan(p, s, 1) == 1) {
      s->step_tokens = 1;
      budget--;
    } else {
      preempt(p, s);
      i--;
    }
  }
  for (int32_t i = 0; i < p->n_running && budget > 0; i++) {
    sched_seq *s = p->running[i];
    int32_t want = s->n_tokens - s->n_computed;
    if (want <= 1) continue;
    s->step_tokens = plan(p, s, want < budget ? want : budget);
    budget -= s->step_tokens;
  }
  admit(p, budget);
}

/* ---- step: forward and sampling -------------------------------------- */

/* Step arrays from the plan; returns tokens, *n_out logits rows, *n_rows
 * block-table rows (sequences in the step). */
static int32_t fill_batch(sched_pool *p, int32_t *n_out, int32_t *n_rows) {
  int32_t n = 0, rows = 0;
  *n_out = 0;
  for (int32_t i = 0; i < p->n_running; i++) {
    sched_seq *s = p->running[i];
    s->out_row = -1;
    if (!s->step_tokens) continue;
    memcpy(p->bt + (size_t)rows * p->bt_stride, s->kv.blocks,
           (size_t)s->kv.n_blocks * sizeof *p->bt);
    for (int32_t t = 0; t < s->step_tokens; t++) {
      int32_t pos = s->n_computed + t;
      p->ids[n] = s->tokens[pos];
      p->pos[n] = pos;
      p->seq[n] = rows;
      p->slots[n] = kv_seq_slot(&p->kv, &s->kv, pos);
      n++;
    }
    if (s->n_computed + s->step_tokens == s->n_tokens) {
      s->out_row = *n_out;
      p->out_tok[(*n_out)++] = n - 1;
    }
    rows++;
  }
  *n_rows = rows;
  return n;
}

static void after_forward(sched_pool *p) {
  for (int32_t i = 0; i < p->n_running; i++) {
    sched_seq *s = p->running[i];
    if (!s->step_tokens) continue;
    s->n_computed += s->step_tokens;
    p->acc.forward_tokens += (uint64_t)s->step_tokens;
    if (s->step_tokens == 1)
      p->acc.decode_tokens++;
    else
      p->acc.prefill_tokens += (uint64_t)s->step_tokens;
    s->step_tokens = 0;
    /* full blocks become findable by later requests with the same prefix */
    kv_prefix_commit(&p->kv, PRE(p), &s->kv, s->tokens, s->n_computed, &s->chain);
  }
  for (int32_t i = 0; i < p->n_running; i++) {
    sched_seq *s = p->running[i];
    if (s->out_row < 0) continue;
    const float *lg = p->logits + (size_t)s->out_row * p->vocab;
    sampler_logprobs *lp = s->sp.n_logprobs > 0 ? &p->lp : NULL;
    int32_t tok = p->dev_sampled ? p->dev_ids[s->out_row]
                                 : sampler_next(&s->sp, &s->counts, lg, p->vocab,
                                                (uint64_t)s->n_gen, p->scratch, lp);
    s->out_row = -1;
    p->acc.generated_tokens++;
    p->acc.device_sampled += p->dev_sampled;
    if (seq_on_token(p, s, tok, lp)) {
      running_remove(p, s);
      drop(p, s);
      i--;
    }
  }
}

/* Can this step's n_out output rows be drawn on the device? Where the
 * backend samples and no row asks for what only the host sampler does
 * (penalties, logprobs): then dev_sp holds each row's draw, and only the
 * ids come back instead of n_out rows of logits. */
static bool device_draws(sched_pool *p, int32_t n_out) {
  if (n_out <= 0 || !model_can_sample(p->m)) return false;
  for (int32_t i = 0; i < p->n_running; i++) {
    const sched_seq *s = p->running[i];
    const sampler_params *sp = &s->sp;
    if (s->out_row < 0) continue;
    if (sp->n_logprobs > 0 || sp->presence_penalty != 0 || sp->frequency_penalty != 0 ||
        (sp->repetition_penalty != 0 && sp->repetition_penalty != 1))
      return false;
    p->dev_sp[s->out_row] = (bk_sample_params){.temperature = sp->temperature,
                                               .top_k = sp->top_k,
                                               .top_p = sp->top_p,
                                               .min_p = sp->min_p,
                                               .seed = sp->seed,
                                               .pos = (int32_t)s->n_gen};
  }
  return true;
}

/* A step that only decoded: batch tokens in dt seconds. */
static void record_decode(sched_pool *p, int32_t batch, double dt) {
  if (batch > SCHED_TPS_MAX_BATCH || dt <= 0) return;
  sched_tps *t = &p->acc.decode_tps[batch];
  double tps = batch / dt;
  t->ewma = t->steps ? t->ewma + (tps - t->ewma) / 8 : tps;
  t->steps++;
  t->sum_s += dt;
}

double sched_tps_at(const sched_stats *s, int32_t batch, bool live) {
  if (batch < 1 || batch > SCHED_TPS_MAX_BATCH) return 0;
  const sched_tps *t = &s->decode_tps[batch];
  if (!t->steps) return 0;
  return live ? t->ewma : (double)t->steps * batch / t->sum_s;
}

void sched_stats_add(sched_stats *sum, const sched_stats *s) {
  sum->steps += s->steps;
  sum->forward_tokens += s->forward_tokens;
  sum->decode_tokens += s->decode_tokens;
  sum->prefill_tokens += s->prefill_tokens;
  sum->generated_tokens += s->generated_tokens;
  sum->device_sampled += s->device_sampled;
  sum->prefix_hit_tokens += s->prefix_hit_tokens;
  sum->preemptions += s->preemptions;
  sum->finished += s->finished;
  sum->running += s->running;
  sum->waiting += s->waiting;
  sum->free_blocks += s->free_blocks;
  sum->total_blocks += s->total_blocks;
  sum->forward_s += s->forward_s;
  sum->schedule_s += s->schedule_s;
  if (s->max_wait_steps > sum->max_wait_steps) sum->max_wait_steps = s->max_wait_steps;
  sum->loops += s->loops;
  for (int b = 0; b <= SCHED_TPS_MAX_BATCH; b++) {
    sched_tps *t = &sum->decode_tps[b];
    const sched_tps *u = &s->decode_tps[b];
    if (!u->steps) continue;
    t->ewma =
        (t->ewma * (double)t->steps + u->ewma * (double)u->steps) / (double)(t->steps + u->steps);
    t->steps += u->steps;
    t->sum_s += u->sum_s;
  }
  if (s->healthy) {
    sum->healthy = true;
    sum->error[0] = 0;
  } else if (!sum->healthy && !sum->error[0]) { /* the first unhealthy one */
    memcpy(sum->error, s->error, sizeof sum->error);
    if (!sum->error[0]) snprintf(sum->error, sizeof sum->error, "unhealthy");
  }
}

/* Copy the stepping thread's counters where other threads read them. */
static void publish(sched_pool *p) {
  p->acc.running = p->n_running;
  p->acc.waiting = p->n_waiting;
  p->acc.free_blocks = kv_available(&p->kv, PRE(p));
  p->acc.total_blocks = p->cfg.n_blocks;
  pthread_mutex_lock(&p->lock);
  p->stats = p->acc;
  pthread_mutex_unlock(&p->lock);
}

/* ---- health ------------------------------------------------------------ */

bool sched_pool_healthy(sched_pool *p, char *why, size_t n) {
  pthread_mutex_lock(&p->lock);
  bool ok = p->stats.healthy;
  if (!ok && why && n) snprintf(why, n, "%s", p->stats.error);
  pthread_mutex_unlock(&p->lock);
  return ok;
}

/* A device error: the backend is not used again. Other threads see it at
 * once (sched_submit refuses from now on). */
static void mark_unhealthy(sched_pool *p, const char *cause) {
  pthread_mutex_lock(&p->lock);
  p->acc.healthy = p->stats.healthy = false;
  snprintf(p->acc.error, sizeof p->acc.error, "%s is unhealthy after a device error: %s", p->label,
           cause);
  memcpy(p->stats.error, p->acc.error, sizeof p->stats.error);
  pthread_mutex_unlock(&p->lock);
  bl_log(BL_LOG_ERROR, "sched %s: %s; failing the requests it holds (%d), refusing new ones",
         p->name, p->acc.error, p->n_running + p->n_waiting);
}

/* Every request of an unhealthy pool ends ERROR with its error; the blocks
 * go back to the host-side allocator as usual (nothing touches the device). */
static void fail_all(sched_pool *p) {
  while (p->n_running > 0)
    finish_and_drop(p, p->running[p->n_running - 1], SCHED_FIN_ERROR, p->acc.error);
  while (p->n_waiting > 0)
    finish_and_drop(p, p->waiting[p->n_waiting - 1], SCHED_FIN_ERROR, p->acc.error);
}

/* ---- the step ----------------------------------------------------------- */

bl_status sched_pool_step(sched_pool *p, bool *idle, bl_err *err) {
  double t0 = sched_now();
  handle_inbox(p);
  expire(p, t0);
  if (!p->acc.healthy) { /* whatever arrived since fails the same way */
    fail_all(p);
    *idle = true;
    publish(p);
    return BL_OK;
  }
  *idle = p->n_running == 0 && p->n_waiting == 0;
  if (*idle) {
    publish(p);
    return BL_OK;
  }
  p->step_no++;
  plan_step(p);
  int32_t n_out, n_rows;
  int32_t n = fill_batch(p, &n_out, &n_rows);
  bl_err e = p->dev_err; /* a device error while planning: no forward pass */
  bl_status st = e.status;
  double f0 = sched_now(), f1 = f0;
  if (n > 0 && !st) {
    model_batch b = {.n_tok = n,
                     .ids = p->ids,
                     .pos = p->pos,
                     .seq = p->seq,
                     .slots = p->slots,
                     .n_seq = n_rows,
                     .max_blocks = p->bt_stride,
                     .block_tables = p->bt,
                     .n_out = n_out,
                     .out_tok = p->out_tok};
    p->dev_sampled = device_draws(p, n_out);
    st = p->dev_sampled ? model_forward_sample(p->m, p->kv.dev, &b, p->dev_sp, p->dev_ids, &e)
                        : model_forward(p->m, p->kv.dev, &b, p->logits, &e);
    f1 = sched_now();
  }
  if (st == BL_EDEVICE) { /* sticky: every request fails, the pool stops stepping */
    mark_unhealthy(p, e.msg);
    fail_all(p);
  } else if (st) { /* the step's sequences fail; the pool goes on */
    for (int32_t i = p->n_running - 1; i >= 0; i--)
      if (p->running[i]->step_tokens) finish_and_drop(p, p->running[i], SCHED_FIN_ERROR, e.msg);
  } else {
    after_forward(p);
  }
  double t1 = sched_now();
  if (!st && n > 0 && n == n_rows) record_decode(p, n_rows, t1 - t0);
  p->acc.steps++;
  p->acc.forward_s += f1 - f0;
  p->acc.schedule_s += (t1 - t0) - (f1 - f0);
  publish(p);
  if (st == BL_EDEVICE && p->cfg.on_unhealthy) p->cfg.on_unhealthy(p, p->cfg.health_user);
  return st ? bl_fail(err, st, "%s", e.msg) : BL_OK;
}
