/* `ballast trace`: loop rescue, offline, on recorded traces. Each stdin line
 * holds one generated trace, as token ids or as text; each output line says
 * whether the loop detector (sched_loop.h) fires on it and where, which
 * answers the tracker (sched_answer.h) parsed, and what loop rescue does
 * (paper, section 7): commit to the answer that stood before the loop's
 * onset, or fall back. The detector and tracker are those the scheduler
 * runs per request, fed the same way (token by token, the text of each from
 * the streaming detokenizer), so the decision is the one a live request
 * would have taken.
 *
 * Output lines correspond one to one with input lines: a line that cannot
 * be processed yields {"error":"line N: ..."} and reading goes on; the exit
 * status is then 1 (2 for bad flags). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "jsonl.h"
#include "model.h"
#include "sched_answer.h"
#include "sched_loop.h"

static const char *usage =
    "usage: ballast trace --tokenizer PATH [--task math] [--labels ABCD] [--think-open]\n"
    "         [--window 1024] [--ngram 20] [--min-count 4] < traces.jsonl\n"
    "  Each stdin line is one generated trace: {\"ids\":[...]} (token ids) or\n"
    "  {\"text\":\"...\"} (encoded, special tokens such as <think> parsed); other\n"
    "  keys are ignored. Each prints one line:\n"
    "    {\"loop\":B,\"fire_at\":N|null,\"onset\":N|null,\"answer\":S|null,\n"
    "     "
    "\"first_answer_at\":N|null,\"think_closed\":B,\"action\":\"commit\"|\"fallback\"|\"none\"}\n"
    "  Positions count generated tokens from 0. The detector fires at the first\n"
    "  token where some --ngram tokens in a row occur --min-count times within the\n"
    "  last --window tokens; onset is the first of those occurrences. action: none\n"
    "  without a loop (answer: the latest at the end of the trace); commit when an\n"
    "  answer was complete at a position before the onset (answer: the one standing\n"
    "  there); else fallback (answer: null). first_answer_at: where the first answer\n"
    "  was complete, anywhere in the trace. think_closed: the <think> block opened\n"
    "  last (by the trace, or by the prompt with --think-open) was closed.\n"
    "  --task: what counts as an answer: math (\\boxed{...}), integer (a boxed\n"
    "  0..999), choice (a letter of --labels, default ABCD), yesno, index (1 or 2)\n"
    "  or none; see docs/scheduler.md. A numeric fallback is never an answer here.\n"
    "  A bad line prints {\"error\":\"line N: ...\"}; the exit status is then 1.\n";

typedef struct trace_cfg {
  const tok_tokenizer *tok;
  sched_loop_params loop;
  sched_task task;
  const char *labels;
  bool think_open;
} trace_cfg;

/* An "ids" array at s[*i]: token ids of this tokenizer, appended to *ids. */
static bl_status parse_ids(const tok_tokenizer *t, const char *s, size_t n, size_t *i,
                           int32_t **ids, size_t *n_ids, bl_err *err) {
  if (*i == n || s[*i] != '[') return bl_fail(err, BL_EINVAL, "\"ids\" must be an array");
  size_t cap = 0;
  for (bool more = jsonl_enter(s, n, i); more;) {
    jsonl_ws(s, n, i);
    size_t at = *i;
    bool integer = false;
    const char *why = *i < n && (s[*i] == '-' || (s[*i] >= '0' && s[*i] <= '9'))
                          ? jsonl_number(s, n, i, &integer)
                          : jsonl_skip(s, n, i);
    if (why) return bl_fail(err, BL_EINVAL, "%s", why);
    char num[16] = "";
    if (integer && *i - at < sizeof num) memcpy(num, s + at, *i - at);
    long v = integer && num[0] != '-' && num[0] ? strtol(num, NULL, 10) : -1;
    size_t k;
    if (v < 0 || v >= tok_vocab_size(t) || !tok_token_bytes(t, (int32_t)v, &k))
      return bl_fail(err, BL_EINVAL, "not a token id: %.*s", (int)(*i - at > 40 ? 40 : *i - at),
                     s + at);
    if (*n_ids == cap) {
      int32_t *g = realloc(*ids, (cap = cap ? 2 * cap : 256) * sizeof *g);
      if (!g) return bl_fail(err, BL_ENOMEM, "out of memory");
      *ids = g;
    }
    (*ids)[(*n_ids)++] = (int32_t)v;
    if ((why = jsonl_next(s, n, i, ']', &more))) return bl_fail(err, BL_EINVAL, "%s", why);
  }
  return BL_OK;
}

/* The members of the object s[*i] == '{': "ids" into *ids, "text" into
 * text (n bytes), others skipped. buf: n bytes for keys. */
static bl_status parse_members(const trace_cfg *c, const char *s, size_t n, size_t *i, char *buf,
                               char *text, size_t *text_len, int32_t **ids, size_t *n_ids,
                               int *seen, bl_err *err) {
  for (bool more = jsonl_enter(s, n, i); more;) {
    const char *why = NULL;
    size_t klen = 0;
    jsonl_ws(s, n, i);
    if (*i == n || s[*i] != '"') return bl_fail(err, BL_EINVAL, "invalid JSON (expected a key)");
    if ((why = jsonl_string(s, n, i, buf, &klen))) return bl_fail(err, BL_EINVAL, "%s", why);
    jsonl_ws(s, n, i);
    if (*i == n || s[(*i)++] != ':') return bl_fail(err, BL_EINVAL, "invalid JSON (expected ':')");
    jsonl_ws(s, n, i);
    int key = klen == 3 && memcmp(buf, "ids", 3) == 0    ? 1
              : klen == 4 && memcmp(buf, "text", 4) == 0 ? 2
                                                         : 0;
    if (key && (*seen & key))
      return bl_fail(err, BL_EINVAL, "\"%s\" given twice", key == 1 ? "ids" : "text");
    *seen |= key;
    if (key == 1) {
      bl_status st = parse_ids(c->tok, s, n, i, ids, n_ids, err);
      if (st) return st;
    } else if (key == 2) {
      why = *i < n && s[*i] == '"' ? jsonl_string(s, n, i, text, text_len)
                                   : "\"text\" must be a string";
    } else {
      why = jsonl_skip(s, n, i);
    }
    if (why || (why = jsonl_next(s, n, i, '}', &more))) return bl_fail(err, BL_EINVAL, "%s", why);
  }
  return BL_OK;
}

/* One input line to the trace's token ids (*ids malloc'd). */
static bl_status parse_line(const trace_cfg *c, const char *s, size_t n, int32_t **ids,
                            size_t *n_ids, bl_err *err) {
  size_t i = 0, text_len = 0;
  jsonl_ws(s, n, &i);
  if (i == n || s[i] != '{')
    return bl_fail(err, BL_EINVAL, "expected a JSON object {\"ids\":[...]} or {\"text\":\"...\"}");
  char *buf = malloc(2 * n + 2); /* [n + 1] keys, then [n + 1] the text */
  if (!buf) return bl_fail(err, BL_ENOMEM, "out of memory");
  char *text = buf + n + 1;
  int seen = 0;
  bl_status st = parse_members(c, s, n, &i, buf, text, &text_len, ids, n_ids, &seen, err);
  if (!st) jsonl_ws(s, n, &i);
  if (!st && i != n) st = bl_fail(err, BL_EINVAL, "invalid JSON (text after the object)");
  if (!st && seen != 1 && seen != 2)
    st = bl_fail(err, BL_EINVAL, "expected \"ids\" or \"text\" (one of them)");
  if (!st && seen == 2) st = tok_encode(c->tok, text, text_len, true, ids, n_ids, err);
  free(buf);
  return st;
}

static void put_pos(const char *key, int64_t p) {
  if (p < 0)
    printf(",\"%s\":null", key);
  else
    printf(",\"%s\":%lld", key, (long long)p);
}

/* Run the detector and tracker over the trace and print its line. */
static bl_status run_trace(const trace_cfg *c, const int32_t *ids, size_t n, bl_err *err) {
  if (n > INT32_MAX) return bl_fail(err, BL_ERANGE, "trace too long (%zu tokens)", n);
  sched_loop d;
  sched_answer a;
  bl_status st = sched_loop_init(&d, &c->loop, err);
  if (st) return st;
  if ((st = sched_answer_init(&a, c->task, c->labels, c->think_open, err))) {
    sched_loop_free(&d);
    return st;
  }
  tok_stream ts = {0};
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (size_t k = 0; !st && k < n; k++) {
    if (!d.fired) sched_loop_push(&d, ids[k]);
    len = 0;
    st = tok_stream_push(&ts, c->tok, ids[k], &buf, &len, &cap);
    if (!st) st = sched_answer_feed(&a, (int32_t)k, buf, len);
  }
  len = 0;
  if (!st && n) st = tok_stream_flush(&ts, &buf, &len, &cap);
  if (!st && n) st = sched_answer_feed(&a, (int32_t)n - 1, buf, len); /* the last token's */
  sched_answer_finish(&a);
  if (st) {
    bl_fail(err, st, "%s", bl_status_str(st));
  } else {
    size_t alen = 0;
    const char *ans = d.fired ? sched_answer_before(&a, (int32_t)d.onset, &alen, NULL)
                              : sched_answer_current(&a, &alen, NULL);
    printf("{\"loop\":%s", d.fired ? "true" : "false");
    put_pos("fire_at", d.fire_at);
    put_pos("onset", d.onset);
    fputs(",\"answer\":", stdout);
    if (ans)
      cli_json_str(stdout, ans, alen);
    else
      fputs("null", stdout);
    put_pos("first_answer_at", a.first_at);
    const char *action = !d.fired ? "none" : ans ? "commit" : "fallback";
    printf(",\"think_closed\":%s,\"action\":\"%s\"}\n", a.think_closed ? "true" : "false", action);
  }
  free(buf);
  sched_answer_free(&a);
  sched_loop_free(&d);
  return st;
}

static bool flag_int(const cli_flag *f, int nf, const char *name, long lo, long hi, int32_t *out) {
  const char *v = cli_get(f, nf, name);
  long x = 0;
  if (v && !cli_int(v, lo, hi, &x)) {
    fprintf(stderr, "ballast trace: %s %s: expected an integer from %ld to %ld\n", name, v, lo, hi);
    return false;
  }
  *out = (int32_t)x; /* 0: the detector's default */
  return true;
}

/* Flags to a configuration; false (after saying why) on bad ones. */
static bool configure(const cli_flag *f, int nf, trace_cfg *c) {
  const char *task = cli_get(f, nf, "--task");
  c->task = SCHED_TASK_MATH;
  if (task && !sched_task_parse(task, &c->task)) {
    fprintf(stderr,
            "ballast trace: unknown --task '%s' (math, integer, choice, yesno, index, none)\n",
            task);
    return false;
  }
  c->labels = cli_get(f, nf, "--labels");
  if (c->labels && c->task != SCHED_TASK_CHOICE) {
    fputs("ballast trace: --labels applies to --task choice\n", stderr);
    return false;
  }
  c->think_open = cli_get(f, nf, "--think-open") != NULL;
  enum { MAX_WINDOW = 1 << 20 };
  if (!flag_int(f, nf, "--window", 1, MAX_WINDOW, &c->loop.window) ||
      !flag_int(f, nf, "--ngram", 1, MAX_WINDOW, &c->loop.ngram) ||
      !flag_int(f, nf, "--min-count", 2, MAX_WINDOW, &c->loop.min_count))
    return false;
  bl_err err = {0};
  sched_loop d;
  sched_answer a;
  bl_status st = sched_loop_init(&d, &c->loop, &err);
  if (!st) {
    sched_loop_free(&d);
    st = sched_answer_init(&a, c->task, c->labels, c->think_open, &err); /* allocates nothing */
  }
  if (st) fprintf(stderr, "ballast trace: %s\n", err.msg);
  return !st;
}

int cmd_trace(int argc, char **argv) {
  cli_flag f[] = {{"--tokenizer", 1, NULL},  {"--task", 1, NULL},   {"--labels", 1, NULL},
                  {"--think-open", 0, NULL}, {"--window", 1, NULL}, {"--ngram", 1, NULL},
                  {"--min-count", 1, NULL},  {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("trace", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  trace_cfg c = {0};
  const char *path = cli_get(f, nf, "--tokenizer");
  if (!path) {
    fputs(usage, stderr);
    return 2;
  }
  if (!configure(f, nf, &c)) return 2;
  bl_err err = {0};
  tok_tokenizer *t = NULL;
  if (model_load_tokenizer(path, &t, &err)) {
    fprintf(stderr, "ballast trace: %s\n", err.msg);
    return 1;
  }
  c.tok = t;
  size_t lines = 0, failed = 0, cap = 0;
  char *line = NULL;
  ssize_t n;
  while ((n = getline(&line, &cap, stdin)) >= 0) {
    lines++;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    bl_err e = {0};
    if (parse_line(&c, line, (size_t)n, &ids, &n_ids, &e) || run_trace(&c, ids, n_ids, &e)) {
      jsonl_error(stdout, lines, "%s", e.msg);
      failed++;
    }
    free(ids);
  }
  free(line);
  fflush(stdout);
  tok_free(t);
  return failed ? 1 : 0;
}
