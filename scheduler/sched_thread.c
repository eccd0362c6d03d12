/* How other threads talk to a pool: an inbox of submits, cancels and moves
 * under the pool's lock, drained by the stepping thread at a step boundary,
 * and the optional thread that steps while there is work. */
#include <stdlib.h>
#include <time.h>

#include "bl_log.h"
#include "sched_internal.h"

double sched_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void inbox_push(sched_pool *p, inbox_item *it) {
  it->next = NULL;
  pthread_mutex_lock(&p->lock);
  if (it->kind == INBOX_SUBMIT) it->seq->arrival = p->arrivals++;
  if (p->inbox_tail)
    p->inbox_tail->next = it;
  else
    p->inbox_head = it;
  p->inbox_tail = it;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->lock);
}

inbox_item *inbox_take(sched_pool *p) {
  pthread_mutex_lock(&p->lock);
  inbox_item *it = p->inbox_head;
  p->inbox_head = p->inbox_tail = NULL;
  pthread_mutex_unlock(&p->lock);
  return it;
}

bl_status sched_submit(sched_pool *p, const sched_req *r, bl_err *err) {
  char why[SCHED_ERROR_MAX];
  if (!sched_pool_healthy(p, why, sizeof why)) return bl_fail(err, BL_EDEVICE, "%s", why);
  /* one that slips in as the pool turns unhealthy fails at its next step */
  sched_seq *s;
  bl_status st = seq_create(p, r, &s, err);
  if (st) return st;
  inbox_item *it = calloc(1, sizeof *it);
  if (!it) {
    seq_destroy(s);
    return bl_fail(err, BL_ENOMEM, "out of memory queueing a request");
  }
  it->kind = INBOX_SUBMIT;
  it->id = r->id;
  it->seq = s;
  inbox_push(p, it);
  return BL_OK;
}

static void push_simple(sched_pool *p, inbox_kind kind, uint64_t id, sched_pool *dst) {
  inbox_item *it = calloc(1, sizeof *it);
  if (!it) { /* cannot queue it: say so rather than drop it silently */
    bl_log(BL_LOG_ERROR, "sched %s: out of memory queueing a cancel/move of %llu", p->name,
           (unsigned long long)id);
    return;
  }
  it->kind = kind;
  it->id = id;
  it->dst = dst;
  inbox_push(p, it);
}

void sched_cancel(sched_pool *p, uint64_t id) { push_simple(p, INBOX_CANCEL, id, NULL); }
void sched_move(sched_pool *p, uint64_t id, sched_pool *dst) {
  push_simple(p, INBOX_MOVE, id, dst);
}

void sched_pool_stats(sched_pool *p, sched_stats *out) {
  pthread_mutex_lock(&p->lock);
  *out = p->stats;
  pthread_mutex_unlock(&p->lock);
}

static bool has_work_locked(sched_pool *p) {
  return p->inbox_head || p->stats.running || p->stats.waiting;
}

static void *pool_thread(void *arg) {
  sched_pool *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->lock);
    while (!p->stop_thread && !has_work_locked(p))
      pthread_cond_wait(&p->wake, &p->lock);
    bool stop = p->stop_thread;
    pthread_mutex_unlock(&p->lock);
    if (stop) break;
    bool idle;
    bl_err err = {0};
    if (sched_pool_step(p, &idle, &err))
      bl_log(BL_LOG_ERROR, "sched %s: step failed: %s", p->name, err.msg);
  }
  return NULL;
}

bl_status sched_pool_start(sched_pool *p, bl_err *err) {
  if (p->thread_on) return BL_OK;
  p->stop_thread = false;
  if (pthread_create(&p->thread, NULL, pool_thread, p) != 0)
    return bl_fail(err, BL_ENOMEM, "sched %s: cannot start its thread", p->name);
  p->thread_on = true;
  return BL_OK;
}

void sched_pool_stop(sched_pool *p) {
  if (!p->thread_on) return;
  pthread_mutex_lock(&p->lock);
  p->stop_thread = true;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->lock);
  pthread_join(p->thread, NULL);
  p->thread_on = false;
}

bool sched_pool_threaded(sched_pool *p) {
  pthread_mutex_lock(&p->lock);
  bool on = p->thread_on;
  pthread_mutex_unlock(&p->lock);
  return on;
}
