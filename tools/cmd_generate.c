/* `ballast generate`: offline, in-process generation for one prompt,
 * streaming text to stdout, or one JSON object with --json.
 *
 * Sampling flags left out take the model's defaults (model_sampling_defaults:
 * generation_config.json, else Qwen3's recommended values, else greedy);
 * flags given override them one by one, as request fields do in vLLM. Stop
 * strings and ids end the text as vLLM does (the stop string is not part of
 * the text; finish_reason "stop" with stop_reason naming it). */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "gen_config.h"
#include "runner.h"
#include "sampler.h"
#include "chat.h"
#include "stop.h"

static const char *usage =
    "usage: ballast generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3 | --messages JSON)\n"
    "         [--chat] [--system TEXT] [--no-think] [--chat-template qwen3|smollm2|chatml]\n"
    "         [--precision auto|fp16|w4|w2] [--group-size N] [--max-tokens N]\n"
    "         [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S]\n"
    "         [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]\n"
    "         [--stop TEXT]... [--stop-id N[,N...]]... [--ignore-eos] [--logprobs N]\n"
    "         [--device cpu|cuda[:N]] [--threads N] [--tokenizer tokenizer.json] [--json]\n"
    "Sampling flags left out take the model's defaults: the model folder's\n"
    "generation_config.json, else temperature 0.6, top-p 0.95, top-k 20 for\n"
    "Qwen3, else greedy. --temperature 0 forces greedy; --top-k 0 or -1, --top-p 1\n"
    "and --min-p 0 turn a filter off. Penalties: repetition (HF: prompt and output\n"
    "tokens), presence and frequency (OpenAI: output tokens). --stop ends the text\n"
    "before the string; --stop-id ends it at the token; the model's end tokens\n"
    "stop too unless --ignore-eos. --logprobs N (0..20) adds, per generated token,\n"
    "its logprob and the N most likely ids to the --json output. --seed defaults\n"
    "to 0, so runs repeat.\n"
    "--chat renders --prompt as a user turn (after --system, if given) with the\n"
    "model's chat template and the assistant generation prompt; --messages takes\n"
    "a whole conversation as an OpenAI-style JSON array and implies --chat.\n"
    "--no-think turns Qwen3's thinking off (an empty think block).\n";

enum { MAX_STOP_FLAGS = STOP_MAX_STRS, MAX_STOP_ID_FLAGS = 16 };

typedef struct gen_req {
  sampler_params sp;
  const char *defaults; /* where the defaults came from */
  int32_t max_tokens;
  bool logprobs, stream;
  stop_set stops;
} gen_req;

typedef struct gen_out {
  int32_t *ids;
  int32_t n;
  char *text;
  size_t len, cap;
  sampler_logprobs *lp; /* [max_tokens] with --logprobs */
  stop_hit hit;
  double prefill_s, decode_s;
} gen_out;

static const char *finish_reason(const gen_out *g) { return g->hit.kind ? "stop" : "length"; }

/* A float as JSON: 7 digits for settings (0.6, not 0.600000024), 9 (exact)
 * for logprobs; null for non-finite values, which JSON lacks. */
static void json_num(double x, bool exact) {
  if (isfinite(x))
    printf(exact ? "%.9g" : "%.7g", x);
  else
    printf("null");
}

static void print_logprobs(const gen_out *g) {
  printf(",\"logprobs\":[");
  for (int32_t i = 0; i < g->n; i++) {
    const sampler_logprobs *l = &g->lp[i];
    printf(i ? ",{\"id\":%d,\"logprob\":" : "{\"id\":%d,\"logprob\":", l->chosen.id);
    json_num(l->chosen.logprob, true);
    printf(",\"top\":[");
    for (int32_t j = 0; j < l->n_top; j++) {
      printf(j ? ",{\"id\":%d,\"logprob\":" : "{\"id\":%d,\"logprob\":", l->top[j].id);
      json_num(l->top[j].logprob, true);
      putchar('}');
    }
    printf("]}");
  }
  putchar(']');
}

static void print_json(const model *m, const gen_req *rq, const int32_t *prompt, int32_t np,
                       const gen_out *g) {
  printf("{\"model\":");
  cli_json_str(stdout, m->path, strlen(m->path));
  printf(",\"precision\":\"%s\",\"text\":", model_prec_name(m->prec));
  cli_json_str(stdout, g->text ? g->text : "", g->len);
  printf(",\"prompt_ids\":[");
  for (int32_t i = 0; i < np; i++)
    printf(i ? ",%d" : "%d", prompt[i]);
  printf("],\"ids\":[");
  for (int32_t i = 0; i < g->n; i++)
    printf(i ? ",%d" : "%d", g->ids[i]);
  printf("],\"finish_reason\":\"%s\",\"stop_reason\":", finish_reason(g));
  if (g->hit.kind == STOP_STRING)
    cli_json_str(stdout, rq->stops.strs[g->hit.str], rq->stops.lens[g->hit.str]);
  else if (g->hit.kind == STOP_TOKEN)
    printf("%d", g->hit.token);
  else
    printf("null");
  const sampler_params *sp = &rq->sp;
  printf(",\"sampling\":{\"defaults\":\"%s\",\"temperature\":", rq->defaults);
  json_num(sp->temperature, false);
  printf(",\"top_k\":%d,\"top_p\":", sp->top_k);
  json_num(sp->top_p, false);
  printf(",\"min_p\":");
  json_num(sp->min_p, false);
  printf(",\"repetition_penalty\":");
  json_num(sp->repetition_penalty, false);
  printf(",\"presence_penalty\":");
  json_num(sp->presence_penalty, false);
  printf(",\"frequency_penalty\":");
  json_num(sp->frequency_penalty, false);
  printf(",\"seed\":%llu}", (unsigned long long)sp->seed);
  if (rq->logprobs) print_logprobs(g);
  double dtps = g->n > 1 && g->decode_s > 0 ? (g->n - 1) / g->decode_s : 0;
  printf(",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"prefill_s\":%.6f,\"decode_s\":%.6f,"
         "\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f}\n",
         np, g->n, g->prefill_s, g->decode_s, g->prefill_s > 0 ? np / g->prefill_s : 0, dtps);
}

/* "1,2,3": token ids, each below the vocabulary size. */
static bl_status parse_ids(const model *m, const char *s, int32_t **out, int32_t *n, bl_err *err) {
  size_t cap = strlen(s) / 2 + 1;
  *out = malloc(cap * sizeof **out);
  if (!*out) return bl_fail(err, BL_ENOMEM, "out of memory");
  *n = 0;
  for (const char *p = s;;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v >= m->cfg.vocab || (*end && *end != ','))
      return bl_fail(err, BL_EINVAL,
                     "--prompt-ids: expected comma-separated token ids below %d, at '%.20s'",
                     m->cfg.vocab, p);
    (*out)[(*n)++] = (int32_t)v;
    if (!*end) return BL_OK;
    p = end + 1;
  }
}

typedef struct chat_flags {
  bool on, no_think;
  const char *system, *messages, *template_name;
} chat_flags;

/* The prompt text through the chat template (see chat.h). */
static bl_status render_chat(const model *m, const char *text, const chat_flags *cf, char **out,
                             bl_err *err) {
  chat_template t;
  if (cf->template_name) {
    bl_status st = chat_template_parse(cf->template_name, &t, err);
    if (st) return st;
  } else {
    t = chat_template_detect(tok_chat_template(m->tok),
                             m->cfg.arch == MODEL_ARCH_QWEN3 ? "qwen3" : "llama");
    if (t == CHAT_UNKNOWN)
      return bl_fail(err, BL_EINVAL,
                     "%s: its chat template is not one ballast renders natively; pass "
                     "--chat-template qwen3|smollm2|chatml",
                     m->path);
  }
  chat_message own[2], *msgs = own, *parsed = NULL;
  size_t n = 0;
  if (cf->messages) {
    bl_status st = chat_parse_messages_json(cf->messages, strlen(cf->messages), &parsed, &n, err);
    if (st) return st;
    msgs = parsed;
  } else {
    if (cf->system)
      own[n++] = (chat_message){
          .role = CHAT_SYSTEM, .content = cf->system, .content_len = strlen(cf->system)};
    own[n++] = (chat_message){.role = CHAT_USER, .content = text, .content_len = strlen(text)};
  }
  chat_opts o = {.add_generation_prompt = true, .disable_thinking = cf->no_think};
  size_t len;
  bl_status st = chat_render(t, msgs, n, &o, out, &len, err);
  free(parsed);
  return st;
}

static bl_status parse_prompt(model *m, const char *text, const char *ids, const chat_flags *cf,
                              int32_t **out, int32_t *n, bl_err *err) {
  if (ids) return parse_ids(m, ids, out, n, err);
  if (!m->tok)
    return bl_fail(err, BL_EINVAL, "%s has no tokenizer: pass --tokenizer or --prompt-ids",
                   m->path);
  char *chat = NULL;
  if (cf->on) {
    bl_status st = render_chat(m, text, cf, &chat, err);
    if (st) return st;
    text = chat;
  }
  size_t cnt;
  bl_status st = tok_encode(m->tok, text, strlen(text), true, out, &cnt, err);
  free(chat);
  if (st) return st;
  *n = (int32_t)cnt;
  if (cnt == 0) return bl_fail(err, BL_EINVAL, "the prompt is empty");
  return BL_OK;
}

static void emit(const gen_req *rq, const gen_out *g, size_t from) {
  if (rq->stream && g->len > from) {
    fwrite(g->text + from, 1, g->len - from, stdout);
    fflush(stdout);
  }
}

static bl_status generate(model *m, const int32_t *prompt, int32_t np, const gen_req *rq,
                          gen_out *g, bl_err *err) {
  runner r;
  bl_status st = runner_init(&r, m, 1, np + rq->max_tokens, err);
  if (st) return st;
  int32_t vocab = m->cfg.vocab;
  float *logits = malloc((size_t)vocab * sizeof *logits);
  void *scratch = malloc(sampler_scratch_bytes(vocab));
  g->ids = malloc(((size_t)rq->max_tokens + 1) * sizeof *g->ids);
  if (rq->logprobs) g->lp = malloc((size_t)rq->max_tokens * sizeof *g->lp);
  sampler_seq seq = {0};
  int32_t distinct = np + rq->max_tokens < vocab ? np + rq->max_tokens : vocab;
  stop_stream ss;
  stop_stream_init(&ss);
  if (!logits || !scratch || !g->ids || (rq->logprobs && !g->lp) ||
      sampler_seq_init(&seq, (uint32_t)distinct) ||
      sampler_seq_add_prompt(&seq, prompt, (size_t)np)) {
    st = bl_fail(err, BL_ENOMEM, "generate: out of memory");
    goto done;
  }
  double t0 = cli_now();
  if ((st = runner_prefill(&r, 0, prompt, np, logits, err))) goto done;
  double t1 = cli_now();
  g->prefill_s = t1 - t0;
  for (int32_t i = 0; i < rq->max_tokens; i++) {
    int32_t id = sampler_next(&rq->sp, &seq, logits, vocab, (uint64_t)i, scratch,
                              rq->logprobs ? &g->lp[i] : NULL);
    g->ids[g->n++] = id;
    size_t before = g->len;
    if ((st = sampler_seq_add_output(&seq, id)) ||
        (st = stop_stream_push(&ss, &rq->stops, m->tok, id, &g->text, &g->len, &g->cap))) {
      bl_fail(err, st, "generate: %s", bl_status_str(st));
      goto done;
    }
    emit(rq, g, before);
    if (ss.hit.kind || i + 1 == rq->max_tokens) break;
    if ((st = runner_decode(&r, &id, logits, err))) goto done;
  }
  g->decode_s = cli_now() - t1;
  size_t before = g->len;
  if ((st = stop_stream_finish(&ss, &rq->stops, &g->text, &g->len, &g->cap))) {
    bl_fail(err, st, "generate: %s", bl_status_str(st));
    goto done;
  }
  emit(rq, g, before);
  g->hit = ss.hit;
done:
  stop_stream_free(&ss);
  sampler_seq_free(&seq);
  free(logits);
  free(scratch);
  runner_free(&r);
  return st;
}

/* A numeric flag: 0 absent, 1 given (*out), -1 malformed or out of range
 * (message printed). */
static int num_flag(const cli_flag *f, int nf, const char *name, double lo, double hi, bool lo_open,
                    bool integer, double *out) {
  const char *v = cli_get(f, nf, name);
  if (!v) return 0;
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (!*v || *end || errno || !(x >= lo && x <= hi) || (lo_open && x == lo) ||
      (integer && x != floor(x))) {
    fprintf(stderr, "ballast generate: %s must be %s in %c%.10g, %.10g], got '%s'\n", name,
            integer ? "an integer" : "a number", lo_open ? '(' : '[', lo, hi, v);
    return -1;
  }
  *out = x;
  return 1;
}

/* The sampling flags: a row per flag, its bounds and its field. */
static const struct sampling_flag {
  const char *name;
  double lo, hi;
  bool lo_open, integer; /* integer fields are int32_t; a negative value means 0 (off) */
  size_t field;          /* offsetof(sampler_params, ...) */
} sampling_table[] = {
    {"--temperature", 0, 100, false, false, offsetof(sampler_params, temperature)},
    {"--top-k", -1, 1 << 30, false, true, offsetof(sampler_params, top_k)},
    {"--top-p", 0, 1, true, false, offsetof(sampler_params, top_p)},
    {"--min-p", 0, 1, false, false, offsetof(sampler_params, min_p)},
    {"--repetition-penalty", 0, 100, true, false, offsetof(sampler_params, repetition_penalty)},
    {"--presence-penalty", -2, 2, false, false, offsetof(sampler_params, presence_penalty)},
    {"--frequency-penalty", -2, 2, false, false, offsetof(sampler_params, frequency_penalty)},
    {"--logprobs", 0, SAMPLER_MAX_LOGPROBS, false, true, offsetof(sampler_params, n_logprobs)},
};

/* Request values over the model's defaults; false on a bad value. */
static bool sampling_flags(const cli_flag *f, int nf, sampler_params *sp) {
  for (size_t i = 0; i < sizeof sampling_table / sizeof *sampling_table; i++) {
    const struct sampling_flag *t = &sampling_table[i];
    double v;
    int r = num_flag(f, nf, t->name, t->lo, t->hi, t->lo_open, t->integer, &v);
    if (r < 0) return false;
    if (r && t->integer)
      *(int32_t *)((char *)sp + t->field) = v > 0 ? (int32_t)v : 0;
    else if (r)
      *(float *)((char *)sp + t->field) = (float)v;
  }
  const char *s = cli_get(f, nf, "--seed");
  if (s) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (!*s || *end || errno || *s == '-') {
      fprintf(stderr, "ballast generate: --seed must be an integer in [0, 2^64), got '%s'\n", s);
      return false;
    }
    sp->seed = x;
  }
  return true;
}

/* --stop and --stop-id values, and the model's end ids unless ignore_eos. */
static bl_status stop_flags(const model *m, const cli_multi *stop, const cli_multi *stop_id,
                            bool ignore_eos, stop_set *set, bl_err *err) {
  bl_status st;
  if (stop->n && !m->tok)
    return bl_fail(err, BL_EINVAL, "--stop needs a tokenizer: %s has none (pass --tokenizer)",
                   m->path);
  for (int i = 0; i < stop->n; i++) {
    bl_err why = {0};
    if ((st = stop_set_add_str(set, stop->values[i], strlen(stop->values[i]), &why)))
      return bl_fail(err, st, "--stop '%s': %s", stop->values[i], why.msg);
  }
  for (int i = 0; i < stop_id->n; i++) {
    for (const char *p = stop_id->values[i];;) {
      char *end;
      errno = 0;
      long id = strtol(p, &end, 10);
      if (end == p || errno || id < 0 || id >= m->cfg.vocab || (*end && *end != ','))
        return bl_fail(err, BL_EINVAL,
                       "--stop-id '%s': expected token ids in [0, %d), comma-separated",
                       stop_id->values[i], m->cfg.vocab);
      if ((st = stop_set_add_id(set, (int32_t)id, err))) return st;
      if (!*end) break;
      p = end + 1;
    }
  }
  for (int32_t i = 0; !ignore_eos && i < m->cfg.n_eos; i++)
    if ((st = stop_set_add_eos(set, m->cfg.eos_ids[i], err))) return st;
  return BL_OK;
}

int cmd_generate(int argc, char **argv) {
  cli_flag f[] = {{"--model", 1, NULL},
                  {"--prompt", 1, NULL},
                  {"--prompt-ids", 1, NULL},
                  {"--precision", 1, NULL},
                  {"--group-size", 1, NULL},
                  {"--max-tokens", 1, NULL},
                  {"--temperature", 1, NULL},
                  {"--top-k", 1, NULL},
                  {"--top-p", 1, NULL},
                  {"--min-p", 1, NULL},
                  {"--repetition-penalty", 1, NULL},
                  {"--presence-penalty", 1, NULL},
                  {"--frequency-penalty", 1, NULL},
                  {"--seed", 1, NULL},
                  {"--stop", 1, NULL},
                  {"--stop-id", 1, NULL},
                  {"--logprobs", 1, NULL},
                  {"--ignore-eos", 0, NULL},
                  {"--device", 1, NULL},
                  {"--threads", 1, NULL},
                  {"--tokenizer", 1, NULL},
                  {"--json", 0, NULL},
                  {"--chat", 0, NULL},
                  {"--system", 1, NULL},
                  {"--messages", 1, NULL},
                  {"--no-think", 0, NULL},
                  {"--chat-template", 1, NULL},
                  {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  const char *stop_v[MAX_STOP_FLAGS], *stop_id_v[MAX_STOP_ID_FLAGS];
  cli_multi multi[] = {{"--stop", stop_v, MAX_STOP_FLAGS, 0},
                       {"--stop-id", stop_id_v, MAX_STOP_ID_FLAGS, 0}};
  if (!cli_parse_multi("generate", argc, argv, f, nf, multi, 2)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *path = cli_get(f, nf, "--model"), *prompt = cli_get(f, nf, "--prompt");
  const char *prompt_ids = cli_get(f, nf, "--prompt-ids");
  chat_flags cf = {.system = cli_get(f, nf, "--system"),
                   .messages = cli_get(f, nf, "--messages"),
                   .template_name = cli_get(f, nf, "--chat-template"),
                   .no_think = cli_get(f, nf, "--no-think") != NULL};
  cf.on = cli_get(f, nf, "--chat") || cf.messages || cf.system || cf.no_think || cf.template_name;
  if (!path || (!!prompt + !!prompt_ids + !!cf.messages) != 1 || (prompt_ids && cf.on)) {
    fputs(usage, stderr);
    return 2;
  }
  model_load_opts opts = {.tokenizer_path = cli_get(f, nf, "--tokenizer")};
  double gs = 0, max_tokens = 128;
  const char *v = cli_get(f, nf, "--precision");
  if (v && model_prec_parse(v, &opts.precision)) {
    fprintf(stderr, "ballast generate: --precision must be auto, fp16, w4 or w2, got '%s'\n", v);
    return 2;
  }
  sampler_params given = {0}; /* validated here, applied over the defaults after the load */
  if (num_flag(f, nf, "--group-size", 32, 1 << 20, false, true, &gs) < 0 ||
      num_flag(f, nf, "--max-tokens", 1, 1 << 20, false, true, &max_tokens) < 0 ||
      !sampling_flags(f, nf, &given))
    return 2;
  opts.group_size = (int32_t)gs;
  gen_req rq = {.max_tokens = (int32_t)max_tokens,
                .logprobs = cli_get(f, nf, "--logprobs") != NULL};
  bool json = cli_get(f, nf, "--json") != NULL;
  rq.stream = !json;
  stop_set_init(&rq.stops);
  bl_err err = {0};
  bk_backend *be = NULL;
  model *m = NULL;
  int32_t *ids = NULL, np = 0;
  gen_out g = {0};
  int rc = 1;
  if (cli_backend(cli_get(f, nf, "--device"), cli_get(f, nf, "--threads"), &be, &err) ||
      model_load(path, &opts, be, &m, &err) ||
      model_sampling_defaults(m->path, m->cfg.arch, &rq.sp, &rq.defaults, &err) ||
      stop_flags(m, &multi[0], &multi[1], cli_get(f, nf, "--ignore-eos") != NULL, &rq.stops,
                 &err) ||
      parse_prompt(m, prompt, prompt_ids, &cf, &ids, &np, &err))
    goto done;
  sampling_flags(f, nf, &rq.sp); /* the request's values win */
  if (generate(m, ids, np, &rq, &g, &err)) goto done;
  if (json)
    print_json(m, &rq, ids, np, &g);
  else {
    putchar('\n');
    fflush(stdout); /* the summary on stderr must follow the text */
    fprintf(stderr, "[%d prompt tokens in %.3f s, %d generated in %.3f s: %.2f tok/s, %s", np,
            g.prefill_s, g.n, g.decode_s, g.n > 1 && g.decode_s > 0 ? (g.n - 1) / g.decode_s : 0.0,
            finish_reason(&g));
    if (g.hit.kind == STOP_STRING) fprintf(stderr, " at \"%s\"", rq.stops.strs[g.hit.str]);
    if (g.hit.kind == STOP_TOKEN) fprintf(stderr, " at token %d", g.hit.token);
    fprintf(stderr, "; sampling defaults: %s]\n", rq.defaults);
  }
  rc = 0;
done:
  if (rc)
    fprintf(stderr, "ballast generate: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  stop_set_free(&rq.stops);
  free(ids);
  free(g.ids);
  free(g.lp);
  free(g.text);
  model_free(m);
  bk_destroy(be);
  return rc;
}
