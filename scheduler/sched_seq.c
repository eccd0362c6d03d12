/* A request's life in the scheduler apart from the step itself: validation
 * and copying at submit, per-token hooks (stop conditions, max_tokens, the
 * token event) and the final event. */
#include <stdlib.h>
#include <string.h>

#include "sched_internal.h"

const char *sched_finish_name(sched_finish f) {
  switch (f) {
  case SCHED_RUNNING: return "running";
  case SCHED_FIN_STOP: return "stop";
  case SCHED_FIN_LENGTH: return "length";
  case SCHED_FIN_CANCELLED: return "cancelled";
  case SCHED_FIN_DEADLINE: return "deadline";
  case SCHED_FIN_ERROR: return "error";
  case SCHED_FIN_LOOP: return "loop";
  }
  return "?";
}

static bl_status check_sampling(const sampler_params *sp, bl_err *err) {
  if (!(sp->temperature >= 0) || sp->temperature > 100)
    return bl_fail(err, BL_EINVAL, "temperature %g: expected 0..100", (double)sp->temperature);
  if (!(sp->top_p >= 0 && sp->top_p <= 1))
    return bl_fail(err, BL_EINVAL, "top_p %g: expected 0..1", (double)sp->top_p);
  if (!(sp->min_p >= 0 && sp->min_p <= 1))
    return bl_fail(err, BL_EINVAL, "min_p %g: expected 0..1", (double)sp->min_p);
  if (sp->top_k < 0) return bl_fail(err, BL_EINVAL, "top_k %d: expected >= 0", sp->top_k);
  if (!(sp->repetition_penalty >= 0 && sp->repetition_penalty <= 100))
    return bl_fail(err, BL_EINVAL, "repetition_penalty %g: expected 0..100",
                   (double)sp->repetition_penalty);
  if (!(sp->presence_penalty >= -2 && sp->presence_penalty <= 2) ||
      !(sp->frequency_penalty >= -2 && sp->frequency_penalty <= 2))
    return bl_fail(err, BL_EINVAL, "presence/frequency penalty: expected -2..2");
  if (sp->n_logprobs < 0 || sp->n_logprobs > SAMPLER_MAX_LOGPROBS)
    return bl_fail(err, BL_EINVAL, "logprobs %d: expected 0..%d", sp->n_logprobs,
                   SAMPLER_MAX_LOGPROBS);
  return BL_OK;
}

static bl_status copy_stop(sched_pool *p, sched_seq *s, const sched_req *r, bl_err *err) {
  stop_set_init(&s->stop);
  bl_status st = BL_OK;
  const model_config *c = &p->m->cfg;
  for (int32_t i = 0; !st && !r->ignore_eos && i < c->n_eos; i++)
    st = stop_set_add_eos(&s->stop, c->eos_ids[i], err);
  if (!r->stop) return st;
  for (int32_t i = 0; !st && i < r->stop->n_ids; i++) {
    if (r->stop->ids[i] < 0 || r->stop->ids[i] >= p->vocab)
      return bl_fail(err, BL_EINVAL, "stop id %d: outside the vocabulary (%d)", r->stop->ids[i],
                     p->vocab);
    st = stop_set_add_id(&s->stop, r->stop->ids[i], err);
  }
  for (int32_t i = 0; !st && i < r->stop->n_strs; i++)
    st = stop_set_add_str(&s->stop, r->stop->strs[i], r->stop->lens[i], err);
  if (!st && s->stop.n_strs && !p->m->tok)
    return bl_fail(err, BL_EINVAL, "stop strings need a tokenizer; %s has none", p->m->path);
  return st;
}

/* Loop detector and answer tracker, when the request tracks its trace. */
static bl_status init_trace(sched_pool *p, sched_seq *s, const sched_req *r, bl_err *err) {
  s->loop_mode = r->loop ? r->loop : p->cfg.loop;
  if (!s->loop_mode) s->loop_mode = SCHED_LOOP_OFF;
  if (s->loop_mode == SCHED_LOOP_OFF && r->task == SCHED_TASK_NONE) return BL_OK;
  bl_status st = BL_OK;
  if (s->loop_mode != SCHED_LOOP_OFF && (st = sched_loop_init(&s->loop, &r->loop_params, err)))
    return st;
  s->answer = calloc(1, sizeof *s->answer);
  if (!s->answer) return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  if ((st = sched_answer_init(s->answer, r->task, r->labels, r->think_open, err))) {
    free(s->answer);
    s->answer = NULL;
  }
  return st;
}

/* A request that continues generated tokens (fallback from another pool)
 * replays them through the text stream, loop detector and answer tracker,
 * so a split character or held stop-string prefix carries over, and
 * positions stay generated-token indexes. Their text was sent before. */
static bl_status replay_generated(sched_pool *p, sched_seq *s, bl_err *err) {
  for (int32_t i = 0; i < s->n_gen; i++) {
    int32_t tok = s->tokens[s->n_prompt + i];
    s->text_len = 0;
    bl_status st =
        stop_stream_push(&s->ss, &s->stop, p->m->tok, tok, &s->text, &s->text_len, &s->text_cap);
    if (!st && s->answer) st = sched_answer_feed(s->answer, i, s->text, s->text_len);
    if (st) return bl_fail(err, BL_ENOMEM, "out of memory replaying generated tokens");
    if (s->ss.hit.kind != STOP_NONE)
      return bl_fail(err, BL_EINVAL, "generated token %d at %d is a stop: nothing to continue", tok,
                     i);
    if (s->loop_mode != SCHED_LOOP_OFF && sched_loop_push(&s->loop, tok)) s->loop_pending = true;
  }
  s->text_len = 0;
  return BL_OK;
}

bl_status seq_create(sched_pool *p, const sched_req *r, sched_seq **out, bl_err *err) {
  *out = NULL;
  if (r->n_prompt < 1 || !r->prompt) return bl_fail(err, BL_EINVAL, "the prompt is empty");
  if (r->n_generated < 0 || r->n_generated >= r->n_prompt)
    return bl_fail(err, BL_EINVAL, "n_generated %d: expected 0..n_prompt-1", r->n_generated);
  if (r->max_tokens < 1)
    return bl_fail(err, BL_EINVAL, "max_tokens %d: expected >= 1", r->max_tokens);
  if (!r->on_event) return bl_fail(err, BL_EINVAL, "a request needs an event callback");
  for (int32_t i = 0; i < r->n_prompt; i++)
    if (r->prompt[i] < 0 || r->prompt[i] >= p->vocab)
      return bl_fail(err, BL_EINVAL, "prompt token %d at %d: outside the vocabulary (%d)",
                     r->prompt[i], i, p->vocab);
  int32_t n_orig = r->n_prompt - r->n_generated;
  int64_t need = (int64_t)n_orig + r->max_tokens;
  if (need > p->max_seq_tokens)
    return bl_fail(err, BL_ERANGE,
                   "prompt (%d tokens) + max_tokens (%d) = %lld exceeds what pool %s can hold for "
                   "one sequence (%d tokens)",
                   n_orig, r->max_tokens, (long long)need, p->name, p->max_seq_tokens);
  if (r->n_generated >= r->max_tokens)
    return bl_fail(err, BL_EINVAL, "already %d tokens generated of max_tokens %d", r->n_generated,
                   r->max_tokens);
  bl_status st = check_sampling(&r->sampling, err);
  if (st) return st;
  sched_seq *s = calloc(1, sizeof *s);
  if (!s) return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  s->cap = (int32_t)need;
  s->tokens = malloc((size_t)s->cap * sizeof *s->tokens);
  if (!s->tokens || sampler_seq_init(&s->counts, 64) ||
      sampler_seq_add_prompt(&s->counts, r->prompt, (size_t)n_orig)) {
    seq_destroy(s);
    return bl_fail(err, BL_ENOMEM, "out of memory for a request");
  }
  memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof *s->tokens);
  s->n_tokens = r->n_prompt;
  s->n_prompt = n_orig;
  s->n_gen = r->n_generated;
  for (int32_t i = n_orig; i < r->n_prompt; i++)
    if (sampler_seq_add_output(&s->counts, r->prompt[i])) {
      seq_destroy(s);
      return bl_fail(err, BL_ENOMEM, "out of memory for a request");
    }
  if ((st = copy_stop(p, s, r, err))) {
    seq_destroy(s);
    return st;
  }
  stop_stream_init(&s->ss);
  if ((st = init_trace(p, s, r, err)) || (st = replay_generated(p, s, err))) {
    seq_destroy(s);
    return st;
  }
  s->id = r->id;
  s->priority = r->priority;
  s->deadline = r->deadline;
  s->on_event = r->on_event;
  s->user = r->user;
  s->max_tokens = r->max_tokens;
  s->sp = r->sampling;
  *out = s;
  return BL_OK;
}

void seq_destroy(sched_seq *s) {
  if (!s) return;
  free(s->tokens);
  sampler_seq_free(&s->counts);
  stop_set_free(&s->stop);
  stop_stream_free(&s->ss);
  free(s->text);
  sched_loop_free(&s->loop); /* zeroed when never initialized */
  if (s->answer) sched_answer_free(s->answer);
  free(s->answer);
  free(s);
}

static sched_event base_event(const sched_seq *s) {
  return (sched_event){.id = s->id,
                       .token = -1,
                       .text = s->text ? s->text : "",
                       .text_len = s->text_len,
                       .n_prompt = s->n_prompt,
                       .n_generated = s->n_gen,
                       .n_cached = s->n_cached,
                       .n_preempted = s->n_preempted,
                       .loop_fire_at = s->loop.fired ? (int32_t)s->loop.fire_at : -1,
                       .loop_onset = s->loop.fired ? (int32_t)s->loop.onset : -1,
                       .answer = s->answer,
                       .tokens = s->tokens,
                       .n_tokens = s->n_tokens};
}

bool seq_on_token(sched_pool *p, sched_seq *s, int32_t token, const sampler_logprobs *lp) {
  s->tokens[s->n_tokens++] = token;
  s->n_gen++;
  s->text_len = 0;
  sampler_seq_add_output(&s->counts, token); /* out of memory only weakens penalties */
  bl_status st =
      stop_stream_push(&s->ss, &s->stop, p->m->tok, token, &s->text, &s->text_len, &s->text_cap);
  bool looped = false;
  if (!st && s->loop_mode != SCHED_LOOP_OFF) {
    looped = sched_loop_push(&s->loop, token) || s->loop_pending;
    s->loop_pending = false;
    if (looped) p->acc.loops++;
  }
  if (!st && s->answer) st = sched_answer_feed(s->answer, s->n_gen - 1, s->text, s->text_len);
  if (st) {
    seq_finish(p, s, SCHED_FIN_ERROR, (stop_hit){0}, "out of memory decoding text");
    return true;
  }
  sched_event ev = base_event(s);
  ev.token = token;
  ev.logprobs = lp;
  s->on_event(&ev, s->user);
  s->text_len = 0;
  if (s->ss.hit.kind != STOP_NONE) {
    seq_finish(p, s, SCHED_FIN_STOP, s->ss.hit, NULL);
    return true;
  }
  if (looped && s->loop_mode == SCHED_LOOP_STOP) {
    seq_finish(p, s, SCHED_FIN_LOOP, (stop_hit){0}, NULL);
    return true;
  }
  if (s->n_gen >= s->max_tokens) {
    seq_finish(p, s, SCHED_FIN_LENGTH, (stop_hit){0}, NULL);
    return true;
  }
  return false;
}

void seq_finish(sched_pool *p, sched_seq *s, sched_finish f, stop_hit hit, const char *error) {
  s->text_len = 0;
  if (f == SCHED_FIN_LENGTH || f == SCHED_FIN_DEADLINE || f == SCHED_FIN_LOOP)
    stop_stream_finish(&s->ss, &s->stop, &s->text, &s->text_len, &s->text_cap);
  if (s->answer) {
    /* the flushed text still belongs to the last token */
    if (s->text_len && sched_answer_feed(s->answer, s->n_gen - 1, s->text, s->text_len))
      s->answer->oom = true;
    sched_answer_finish(s->answer);
  }
  sched_event ev = base_event(s);
  ev.finish = f;
  ev.stop = hit;
  ev.error = error;
  s->on_event(&ev, s->user);
  p->acc.finished++;
}
