/* Private to scheduler/: the sequence and pool structs shared by sched.c
 * (the step), sched_seq.c (request lifecycle: create, events, finish) and
 * sched_thread.c (inbox and thread). */
#ifndef SCHED_INTERNAL_H
#define SCHED_INTERNAL_H

#include <pthread.h>

#include "kv_cache.h"
#include "kv_prefix.h"
#include "scheduler.h"

typedef enum seq_state { SEQ_WAITING, SEQ_RUNNING } seq_state;

typedef struct sched_seq {
  uint64_t id, arrival; /* arrival: the pool's submit counter (FIFO order) */
  int32_t priority;
  double deadline;
  sched_event_fn on_event;
  void *user;
  seq_state state;
  int32_t *tokens; /* [cap]: prompt, then generated tokens */
  int32_t n_tokens, cap;
  int32_t n_prompt;   /* tokens before the first generated one */
  int32_t n_gen;      /* generated (including those generated in another pool) */
  int32_t max_tokens; /* limit on n_gen */
  int32_t n_computed; /* tokens[0..n_computed) have K/V in this pool's cache */
  kv_seq kv;
  kv_chain chain; /* prefix-cache commits so far */
  sampler_params sp;
  sampler_seq counts;
  stop_set stop;
  stop_stream ss;
  char *text; /* text released by the current event [text_len] */
  size_t text_len, text_cap;
  int32_t n_cached, n_preempted;
  /* trace hooks (when tracking) */
  sched_loop_mode loop_mode;
  sched_loop loop;
  bool loop_pending; /* fired while replaying a moved request's generated tokens */
  sched_answer *answer;
  bool admitted_once;
  uint64_t wait_since; /* step when it last started waiting */
  /* this step's plan */
  int32_t step_tokens, out_row;
} sched_seq;

typedef enum inbox_kind { INBOX_SUBMIT, INBOX_CANCEL, INBOX_MOVE } inbox_kind;

typedef struct inbox_item {
  inbox_kind kind;
  uint64_t id;
  sched_seq *seq;  /* SUBMIT */
  sched_pool *dst; /* MOVE */
  struct inbox_item *next;
} inbox_item;

struct sched_pool {
  char name[64];
  char label[80]; /* cfg.label, or "NAME pool" */
  model *m;
  sched_pool_cfg cfg;
  kv_pool kv;
  kv_prefix pre;                 /* when cfg.prefix_cache */
  int32_t vocab, max_seq_tokens; /* a request's prompt + max_tokens must fit */
  /* owned by the stepping thread */
  sched_seq **running; /* [max_num_seqs], most urgent first */
  int32_t n_running;
  sched_seq **waiting; /* unordered; scanned for the most urgent */
  int32_t n_waiting, cap_waiting;
  uint64_t step_no;
  bl_err dev_err; /* a device error met while planning (a copy-on-write), for the step */
  /* step buffers */
  int32_t *ids, *pos, *seq, *slots; /* [max_batched_tokens] */
  int32_t *out_tok;                 /* [max_num_seqs] */
  int32_t *bt;                      /* [max_num_seqs][bt_stride] */
  int32_t bt_stride;
  float *logits;            /* [max_num_seqs][vocab] */
  bk_sample_params *dev_sp; /* [max_num_seqs]: output rows' draws, when on the device */
  int32_t *dev_ids;         /* [max_num_seqs]: the tokens drawn there */
  bool dev_sampled;         /* this step's rows were drawn on the device */
  void *scratch;            /* sampler scratch */
  sampler_logprobs lp;
  /* shared with other threads (lock) */
  pthread_mutex_t lock;
  pthread_cond_t wake;
  inbox_item *inbox_head, *inbox_tail;
  uint64_t arrivals;
  sched_stats acc;   /* the stepping thread's counters (and health: see mark_unhealthy) */
  sched_stats stats; /* acc as of the last step, for other threads; health as soon as known */
  bool thread_on, stop_thread;
  pthread_t thread;
};

/* sched_seq.c */
bl_status seq_create(sched_pool *p, const sched_req *r, sched_seq **out, bl_err *err);
void seq_destroy(sched_seq *s);
/* A token was sampled for s: append it, run the stop checks, send the token
 * event; returns true when s finished (the final event was sent). */
bool seq_on_token(sched_pool *p, sched_seq *s, int32_t token, const sampler_logprobs *lp);
/* Send the final event (flushing held text unless cancelled or failed). */
void seq_finish(sched_pool *p, sched_seq *s, sched_finish f, stop_hit hit, const char *error);

/* sched_thread.c: the inbox (taken by the stepping thread). */
inbox_item *inbox_take(sched_pool *p);
void inbox_push(sched_pool *p, inbox_item *it);

#endif
