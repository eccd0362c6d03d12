/* The answer tracker (sched_answer.h) against a whole-text reference written
 * from the grammar in sched_answer.c's opening comment: for random texts
 * under every task, cut into tokens at random (empty tokens, position gaps,
 * more text for the same position), the tracker's change list, current(),
 * before() at every position, first answer and <think> state equal the
 * reference's for the prefix fed, after every feed and after finish. Then
 * hand-written cases for each rule, scoring, matching, bad labels, a long
 * unclosed box, and allocation failure: the test is linked with
 * -Wl,--wrap=realloc so the n-th realloc can be made to fail. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sched_answer.h"
#include "t.h"

/* ---- allocation failure ---- */

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
static long g_fail_in = -1; /* reallocs until one fails; -1: none fails */

void *__wrap_realloc(void *p, size_t n) {
  if (g_fail_in >= 0 && g_fail_in-- == 0) return NULL;
  return __real_realloc(p, n);
}

/* ---- the reference: whole text, from the grammar ---- */

typedef struct ref_ans {
  size_t start, decide; /* decide: the deciding byte, or the text's length (decided at finish) */
  char v[SCHED_ANSWER_MAX + 1];
  size_t n;
} ref_ans;

static bool ref_patterns(sched_task t) {
  return t == SCHED_TASK_CHOICE || t == SCHED_TASK_YESNO || t == SCHED_TASK_INDEX;
}
static bool ref_gap(char c) { return c == ' ' || c == '\t' || c == '*'; }

static bool ref_strip(const char *s, size_t n, char *out, size_t *len) {
  static const char *const wrappers[] = {"text",   "textbf", "textit", "texttt", "textrm",
                                         "mathrm", "mathbf", "mathit", "mbox"};
  size_t o = 0, i = 0;
  while (i < n) {
    if (s[i] && strchr(" \t\n\v\f\r${}", s[i])) {
      i++;
    } else if (s[i] == '\\' && i + 1 < n && s[i + 1] && strchr(",!;: ", s[i + 1])) {
      i += 2;
    } else if (s[i] == '\\') {
      size_t k = 0;
      while (i + 1 + k < n && isalpha((unsigned char)s[i + 1 + k]))
        k++;
      bool known = false;
      for (size_t w = 0; w < sizeof wrappers / sizeof *wrappers; w++)
        known |= strlen(wrappers[w]) == k && strncmp(wrappers[w], s + i + 1, k) == 0;
      if (!known) return false;
      i += 1 + k;
    } else {
      out[o++] = s[i++];
    }
  }
  *len = o;
  return true;
}

static bool ref_value(sched_task task, const char *labels, const char *s, size_t n, char *out,
                      size_t *len) {
  char b[SCHED_ANSWER_MAX + 1];
  size_t m;
  if (task == SCHED_TASK_MATH) {
    while (n && isspace((unsigned char)s[0]))
      s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
      n--;
    memcpy(out, s, n);
    *len = n;
    return n > 0;
  }
  if (!ref_strip(s, n, b, &m)) return false;
  b[m] = '\0';
  if (task == SCHED_TASK_INTEGER) {
    char digits[SCHED_ANSWER_MAX + 1];
    size_t nd = 0, group = 0, groups = 0;
    for (size_t i = 0; i < m; i++) {
      if (b[i] == ',') {
        if ((groups == 0 ? group < 1 || group > 3 : group != 3)) return false;
        groups++, group = 0;
      } else if (isdigit((unsigned char)b[i])) {
        digits[nd++] = b[i], group++;
      } else {
        return false;
      }
    }
    if (nd == 0 || (groups && group != 3)) return false;
    digits[nd] = '\0';
    size_t z = 0;
    while (z + 1 < nd && digits[z] == '0')
      z++;
    if (nd - z > 3) return false;
    *len = (size_t)snprintf(out, 8, "%d", atoi(digits + z));
    return true;
  }
  if (task == SCHED_TASK_YESNO) {
    if (strcasecmp(b, "yes") != 0 && strcasecmp(b, "no") != 0) return false;
    *len = (size_t)snprintf(out, 4, "%s", tolower((unsigned char)b[0]) == 'y' ? "yes" : "no");
    return true;
  }
  const char *v = b;
  if (m >= 2 && b[0] == '(' && b[m - 1] == ')') v++, m -= 2;
  if (m != 1) return false;
  if (task == SCHED_TASK_INDEX && (v[0] == '1' || v[0] == '2'))
    out[0] = v[0];
  else if (task == SCHED_TASK_CHOICE && isalpha((unsigned char)v[0]) &&
           strchr(labels, toupper((unsigned char)v[0])))
    out[0] = (char)toupper((unsigned char)v[0]);
  else
    return false;
  *len = 1;
  return true;
}

/* The "answer ..." pattern whose keyword starts at t[i]. */
static bool ref_pattern(sched_task task, const char *labels, const char *t, size_t len, size_t i,
                        ref_ans *r) {
  size_t j = i + 6;
  bool ws = false;
  for (; j < len && ref_gap(t[j]); j++)
    ws |= t[j] != '*';
  if (j < len && t[j] == ':')
    j++;
  else if (ws && j + 2 < len && tolower((unsigned char)t[j]) == 'i' &&
           tolower((unsigned char)t[j + 1]) == 's' && (t[j + 2] == ':' || ref_gap(t[j + 2])))
    j += 3;
  else
    return false;
  while (j < len && ref_gap(t[j]))
    j++;
  bool paren = j < len && t[j] == '(';
  j += paren;
  if (task == SCHED_TASK_YESNO && len - j >= 3 && strncasecmp(t + j, "yes", 3) == 0)
    r->n = (size_t)snprintf(r->v, sizeof r->v, "yes");
  else if (task == SCHED_TASK_YESNO && len - j >= 2 && strncasecmp(t + j, "no", 2) == 0)
    r->n = (size_t)snprintf(r->v, sizeof r->v, "no");
  else if (task == SCHED_TASK_INDEX && j < len && (t[j] == '1' || t[j] == '2'))
    r->n = (size_t)snprintf(r->v, sizeof r->v, "%c", t[j]);
  else if (task == SCHED_TASK_CHOICE && j < len && isupper((unsigned char)t[j]) &&
           strchr(labels, t[j]))
    r->n = (size_t)snprintf(r->v, sizeof r->v, "%c", t[j]);
  else
    return false;
  j += r->n;
  r->start = i;
  if (paren) {
    r->decide = j;
    return j < len && t[j] == ')';
  }
  r->decide = j;
  return j == len || !isalnum((unsigned char)t[j]);
}

/* Every answer in the whole text, in order of beginning. */
static size_t ref_answers(sched_task task, const char *labels, const char *t, size_t len,
                          ref_ans *out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < len && n < max; i++) {
    size_t c = len - i >= 7 && memcmp(t + i, "\\boxed{", 7) == 0  ? i + 7
               : len - i >= 6 && memcmp(t + i, "\\fbox{", 6) == 0 ? i + 6
                                                                  : 0;
    if (c && task != SCHED_TASK_NONE) {
      size_t j = c;
      for (int depth = 1; j < len; j++)
        if ((depth += t[j] == '{' ? 1 : t[j] == '}' ? -1 : 0) == 0) break;
      if (j < len && j - c <= SCHED_ANSWER_MAX &&
          ref_value(task, labels, t + c, j - c, out[n].v, &out[n].n)) {
        out[n].start = i;
        out[n++].decide = j;
      }
    }
    if (ref_patterns(task) && len - i >= 6 && strncasecmp(t + i, "answer", 6) == 0 &&
        (i == 0 || !isalpha((unsigned char)t[i - 1])) &&
        ref_pattern(task, labels, t, len, i, &out[n]))
      n++;
  }
  return n;
}

typedef struct ref_change {
  int32_t at;
  const char *v;
  size_t n;
} ref_change;

/* The change list after fed bytes (of total) with byte positions pos[]
 * (finished: the whole text and finish, at position last). */
static size_t ref_changes(const ref_ans *c, size_t nc, size_t fed, size_t total, bool finished,
                          const int32_t *pos, int32_t last, ref_change *out) {
  int32_t at[256];
  size_t n = 0;
  for (size_t k = 0; k < nc; k++)
    at[k] = c[k].decide < fed ? pos[c[k].decide] : finished && c[k].decide == total ? last : -1;
  for (int32_t p = 0; p <= last; p++) {
    const ref_ans *best = NULL;
    bool any = false;
    for (size_t k = 0; k < nc; k++) {
      any |= at[k] == p;
      if (at[k] >= 0 && at[k] <= p && (!best || c[k].start > best->start)) best = &c[k];
    }
    if (!any) continue;
    if (n && out[n - 1].n == best->n && memcmp(out[n - 1].v, best->v, best->n) == 0) continue;
    out[n++] = (ref_change){p, best->v, best->n};
  }
  return n;
}

/* <think> state of t[0..fed). */
static void ref_think(const char *t, size_t fed, bool think_open, bool *opened, bool *closed) {
  *opened = think_open;
  *closed = false;
  for (size_t i = 0; i < fed; i++) {
    if (fed - i >= 7 && memcmp(t + i, "<think>", 7) == 0) *opened = true, *closed = false;
    if (fed - i >= 8 && memcmp(t + i, "</think>", 8) == 0 && *opened) *closed = true;
  }
}

/* ---- the property test ---- */

static uint64_t g_rng = 0x9E3779B97F4A7C15u;
static uint32_t rnd(uint32_t k) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint32_t)(g_rng % k);
}

static int g_shown;
static long g_answered, g_changes; /* runs with an answer; changes seen at the end */

static bool same_state(const sched_answer *a, const ref_change *want, size_t nw, const char *text,
                       size_t fed, bool think_open, const char *what) {
  bool ok = a->n_changes == nw && a->scan == a->len && a->len == fed;
  for (size_t k = 0; ok && k < nw; k++)
    ok = a->changes[k].at == want[k].at && a->changes[k].len == want[k].n &&
         memcmp(a->values + a->changes[k].off, want[k].v, want[k].n) == 0 &&
         a->values[a->changes[k].off + want[k].n] == '\0';
  ok = ok && a->first_at == (nw ? want[0].at : -1);
  size_t n;
  int32_t at;
  const char *v = sched_answer_current(a, &n, &at);
  ok = ok && (nw ? v == a->values + a->changes[nw - 1].off && at == want[nw - 1].at : !v);
  for (int32_t q = -1; ok && q <= a->pos + 2; q++) {
    size_t k = 0;
    while (k < nw && want[k].at < q)
      k++;
    v = sched_answer_before(a, q, &n, &at);
    ok = k ? v && n == want[k - 1].n && memcmp(v, want[k - 1].v, n) == 0 && at == want[k - 1].at
           : !v && n == 0 && at == -1;
  }
  bool opened, closed;
  ref_think(text, fed, think_open, &opened, &closed);
  ok = ok && a->think_opened == opened && a->think_closed == closed;
  if (!ok && g_shown++ < 10) {
    fprintf(stderr, "%s: task %s, %zu of %zu bytes: %zu changes, reference %zu\n  text: ", what,
            sched_task_name(a->task), fed, strlen(text), a->n_changes, nw);
    fwrite(text, 1, fed, stderr);
    for (size_t k = 0; k < a->n_changes; k++)
      fprintf(stderr, "\n  got  %d %s", a->changes[k].at, a->values + a->changes[k].off);
    for (size_t k = 0; k < nw; k++)
      fprintf(stderr, "\n  want %d %.*s", want[k].at, (int)want[k].n, want[k].v);
    fputc('\n', stderr);
  }
  return ok;
}

/* One text under one task, cut into tokens at random. */
static void check_split(sched_task task, const char *labels, const char *text, bool think_open) {
  static ref_ans ans[256];
  static ref_change want[256];
  static int32_t pos[4096];
  size_t total = strlen(text),
         nc = ref_answers(task, labels ? labels : "ABCD", text, total, ans, 256);
  sched_answer a;
  bl_err err = {0};
  T_CHECKF(sched_answer_init(&a, task, labels, think_open, &err) == BL_OK, "%s", err.msg);
  int32_t p = (int32_t)rnd(3);
  bool ok = true;
  for (size_t fed = 0; fed < total || rnd(3) == 0;) {
    size_t n = rnd(4) == 0 ? 0 : 1 + rnd(rnd(5) ? 6 : 40);
    if (n > total - fed) n = total - fed;
    for (size_t k = 0; k < n; k++)
      pos[fed + k] = p;
    ok &= sched_answer_feed(&a, p, text + fed, n) == BL_OK;
    fed += n;
    size_t nw = ref_changes(ans, nc, fed, total, false, pos, p, want);
    ok &= same_state(&a, want, nw, text, fed, think_open, "feed");
    p += (int32_t)(rnd(5) == 0 ? 0 : 1 + rnd(2));
  }
  int32_t last = a.pos;
  sched_answer_finish(&a);
  size_t nw = ref_changes(ans, nc, total, total, true, pos, last, want);
  ok &= same_state(&a, want, nw, text, total, think_open, "finish");
  T_CHECK(ok);
  g_answered += a.n_changes > 0;
  g_changes += a.n_changes;
  sched_answer_free(&a);
}

static const char *const k_frags[] = {
    "\\boxed{", "\\fbox{", "}", "{", "}", "\\frac{1}{2}", "42", "042", "1,000", "7", " ", "  ",
    "\n", "Answer: ", "answer is ", "**Answer:** ", "The answer is (", ")", "(", "B", "C", "E", "b",
    "Because", "yes", "No", "Yesterday", "1", "2", "12", "<think>", "</think>", "<", "think>",
    "\\text{", "$", "A", "x", ".", "answer", "ANSWER", "is", "IS", ":", "*", "\xc3\xa9",
    "\xe7\xad\x94\xe6\xa1\x88", "\\,", "\\pi", "-", "3.5", "\\textbf{(", "manswer is B", "\t",
    "Final answer: ", "answer  **is**: ", "\\boxed{\\boxed{", "\\fbox{\\fbox{\\fbox{", "ye", "s",
    "n", "o", "(2)", "\\mathrm{", "\\left(", "\\", "bo", "xed{",
    /* whole answers, so that most texts have some */
    "\\boxed{7}", "\\boxed{B}", "\\fbox{(C)}", "\\boxed{\\text{yes}}", "\\boxed{1}", "\\boxed{042}",
    "Answer: A.", "answer is no.", "the answer is (2)", "ANSWER: D ", "Answer: Yes!"};

static void test_property(void) {
  static const struct {
    sched_task task;
    const char *labels;
  } k_tasks[] = {{SCHED_TASK_NONE, NULL},           {SCHED_TASK_MATH, NULL},
                 {SCHED_TASK_INTEGER, NULL},        {SCHED_TASK_CHOICE, "ABCD"},
                 {SCHED_TASK_CHOICE, "ABCDEFGHIJ"}, {SCHED_TASK_YESNO, NULL},
                 {SCHED_TASK_INDEX, NULL}};
  static const char *const k_texts[] = {
      "<think>\nLet x = 2. So the answer is \\boxed{\\frac{1}{2}}.</think>\n\nAnswer: B",
      "Answer: Because the box \\boxed{\\text{(C)}} is right. The answer is (D). answer is E",
      "\\boxed{1}\\boxed{2}\\boxed{1} \\fbox{042} \\boxed{ 7 } \\boxed{1,000} \\boxed{$12$}",
      "**Answer:** Yes. answer is no, Answer: Yesterday; answer is: **NO**",
      "the answer is 1st, Answer: 2. answer is (1) \\boxed{(2)} \\boxed{3}",
      "\\boxed{\\frac{1}{2} never closed, then \\boxed{5} and \\boxed{\\boxed{6}}",
      "</think> before any <think> then <think> a </think> b <think> c",
  };
  char text[4096];
  int runs = 0;
  for (size_t k = 0; k < sizeof k_texts / sizeof *k_texts; k++)
    for (size_t t = 0; t < sizeof k_tasks / sizeof *k_tasks; t++)
      for (int s = 0; s < 20; s++, runs++)
        check_split(k_tasks[t].task, k_tasks[t].labels, k_texts[k], s & 1);
  for (int c = 0; c < 600; c++) {
    size_t n = 0, frags = 1 + rnd(40);
    for (size_t f = 0; f < frags; f++) {
      const char *s = k_frags[rnd(sizeof k_frags / sizeof *k_frags)];
      size_t m = strlen(s);
      if (n + m >= sizeof text) break;
      memcpy(text + n, s, m);
      n += m;
    }
    text[n] = '\0';
    for (size_t t = 0; t < sizeof k_tasks / sizeof *k_tasks; t++)
      for (int s = 0; s < 3; s++, runs++)
        check_split(k_tasks[t].task, k_tasks[t].labels, text, rnd(2));
  }
  /* boxes about SCHED_ANSWER_MAX long around a box that is no answer, so
   * the outer one is the answer when short enough */
  for (int extra = -3; extra <= 3; extra++)
    for (int s = 0; s < 10; s++, runs++) {
      int fill = SCHED_ANSWER_MAX - 8 + extra;
      snprintf(text, sizeof text, "\\boxed{%*s\\boxed{}} Answer: C \\fbox{%*s}", fill, "y",
               SCHED_ANSWER_MAX + extra, "(D)");
      check_split(s & 1 ? SCHED_TASK_MATH : SCHED_TASK_CHOICE, NULL, text, false);
    }
  /* nested boxes beyond what the tracker keeps open */
  size_t n = 0;
  for (int k = 0; k < 80; k++)
    n += (size_t)sprintf(text + n, k % 3 ? "\\fbox{" : "\\boxed{ ");
  n += (size_t)sprintf(text + n, "5");
  for (int k = 0; k < 80; k++)
    text[n++] = '}';
  text[n] = '\0';
  for (int s = 0; s < 10; s++, runs++)
    check_split(SCHED_TASK_MATH, NULL, text, false);
  printf("property: %d tokenizations checked at every token, %ld with answers, %ld changes\n", runs,
         g_answered, g_changes);
}

/* ---- hand-written cases ---- */

/* A tracker fed toks cut at '|' (token k at position k), finished if fin. */
static void run(sched_answer *a, sched_task task, const char *labels, const char *toks, bool fin) {
  bl_err err = {0};
  T_CHECKF(sched_answer_init(a, task, labels, false, &err) == BL_OK, "%s", err.msg);
  for (int32_t p = 0;; p++) {
    const char *e = strchr(toks, '|');
    size_t n = e ? (size_t)(e - toks) : strlen(toks);
    T_CHECK(sched_answer_feed(a, p, toks, n) == BL_OK);
    if (!e) break;
    toks = e + 1;
  }
  if (fin) sched_answer_finish(a);
}

static bool answer_is(const char *v, size_t n, int32_t at, const char *want, int32_t want_at) {
  return want ? v && n == strlen(want) && memcmp(v, want, n) == 0 && at == want_at
              : !v && n == 0 && at == -1;
}

/* The latest answer of toks (finished if fin) is want at position at (want
 * NULL: none). */
static void expect(sched_task task, const char *labels, const char *toks, bool fin,
                   const char *want, int32_t want_at) {
  sched_answer a;
  run(&a, task, labels, toks, fin);
  size_t n;
  int32_t at;
  const char *v = sched_answer_current(&a, &n, &at);
  T_CHECKF(answer_is(v, n, at, want, want_at), "%s %s: got %s at %d, want %s at %d",
           sched_task_name(task), toks, v ? v : "(none)", at, want ? want : "(none)", want_at);
  sched_answer_free(&a);
}

/* toks cut at '|' (token k at position k) under a task: the latest answer
 * after finish (NULL: none) and its position. */
static const struct parse_case {
  sched_task task;
  const char *labels, *toks, *want;
  int32_t at;
} k_parse[] = {
    /* math: nested braces, \fbox, trimmed, empty, nested boxes, across tokens,
     * unclosed, stray braces, no patterns */
    {SCHED_TASK_MATH, NULL, "so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 0},
    {SCHED_TASK_MATH, NULL, "x|\\fbox{7}", "7", 1},
    {SCHED_TASK_MATH, NULL, "\\boxed{ x + 1 \n}", "x + 1", 0},
    {SCHED_TASK_MATH, NULL, "\\boxed{}\\boxed{  }", NULL, -1},
    {SCHED_TASK_MATH, NULL, "\\boxed{\\boxed{5}}", "5", 0},               /* the inner one */
    {SCHED_TASK_MATH, NULL, "\\bo|xed{4|2|}|.", "42", 3},                 /* across tokens */
    {SCHED_TASK_MATH, NULL, "\\boxed{5} then \\boxed{6", "5", 0},         /* unclosed */
    {SCHED_TASK_MATH, NULL, "\\boxed{\\frac{1}{2} |\\boxed{3}|", "3", 1}, /* hides nothing */
    {SCHED_TASK_MATH, NULL, "\\boxed{a}}}|\\boxed{b}", "b", 1},           /* stray braces */
    {SCHED_TASK_MATH, NULL, "\\boxed 5 and boxed{6}", NULL, -1},
    {SCHED_TASK_MATH, NULL, "Answer: 5", NULL, -1}, /* no patterns in math */
    /* integer */
    {SCHED_TASK_INTEGER, NULL, "\\boxed{042}", "42", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{000}", "0", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{ 7 }", "7", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{$\\text{12}$}", "12", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{999}", "999", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{0,999}", "999", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{5}|\\boxed{1,000}", "5", 0},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{1000}", NULL, -1},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{1,23}", NULL, -1},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{12.5}", NULL, -1},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{-3}", NULL, -1},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{\\frac{4}{2}}", NULL, -1},
    {SCHED_TASK_INTEGER, NULL, "\\boxed{}", NULL, -1},
    /* choice: boxes, patterns, labels */
    {SCHED_TASK_CHOICE, NULL, "\\boxed{B}", "B", 0},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{(B)}", "B", 0},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{\\text{C}}", "C", 0},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{\\textbf{(d)}}", "D", 0},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{E}", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{BC}", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{\\frac{B}{2}}", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "The answer is B.", "B", 0},
    {SCHED_TASK_CHOICE, NULL, "The answer is (C)", "C", 0},
    {SCHED_TASK_CHOICE, NULL, "the ANSWER IS: **D**", "D", 0},
    {SCHED_TASK_CHOICE, NULL, "Answer: A\n", "A", 0},
    {SCHED_TASK_CHOICE, NULL, "**Answer:** B", "B", 0},
    {SCHED_TASK_CHOICE, NULL, "**Answer**: B", "B", 0},
    {SCHED_TASK_CHOICE, NULL, "Final Answer: C", "C", 0},
    {SCHED_TASK_CHOICE, NULL, "Answer: Because", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "Answer: B|ecause", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "Answer: b", NULL, -1}, /* lower case is an article */
    {SCHED_TASK_CHOICE, NULL, "Answer: E.", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "manswer: A.", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "answeris A.", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "answer isA.", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "answer is (B", NULL, -1},
    {SCHED_TASK_CHOICE, NULL, "answer is (BC)", NULL, -1},
    {SCHED_TASK_CHOICE, "ABCDE", "The answer is E.", "E", 0},
    {SCHED_TASK_CHOICE, "XYZ", "Answer: Y. Answer: A.", "Y", 0},
    {SCHED_TASK_CHOICE, "XYZ", "\\boxed{z}", "Z", 0},
    /* decided by the next character, in the token that brings it */
    {SCHED_TASK_CHOICE, NULL, "Answer: B| is", "B", 1},
    {SCHED_TASK_CHOICE, NULL, "Answer: |B||.", "B", 3},
    {SCHED_TASK_CHOICE, NULL, "answer is (|C|)", "C", 2},
    {SCHED_TASK_CHOICE, NULL, "Answer: B", "B", 0},    /* finish decides it */
    {SCHED_TASK_CHOICE, NULL, "Answer: B||", "B", 2},  /* at the last position fed */
    {SCHED_TASK_CHOICE, NULL, "Answer: (B", NULL, -1}, /* finish needs the ')' */
    {SCHED_TASK_CHOICE, NULL, "Answer: A|\\boxed{C}|Answer: (D)", "D", 2},
    {SCHED_TASK_CHOICE, NULL, "\\boxed{the answer is B}", "B", 0},
    /* yesno, index, none */
    {SCHED_TASK_YESNO, NULL, "Answer: Yes.", "yes", 0},
    {SCHED_TASK_YESNO, NULL, "so the answer is NO", "no", 0},
    {SCHED_TASK_YESNO, NULL, "\\boxed{\\text{No}}", "no", 0},
    {SCHED_TASK_YESNO, NULL, "Answer: (yes)", "yes", 0},
    {SCHED_TASK_YESNO, NULL, "Answer: Yesterday", NULL, -1},
    {SCHED_TASK_YESNO, NULL, "answer is not", NULL, -1},
    {SCHED_TASK_YESNO, NULL, "answer is ye", NULL, -1},
    {SCHED_TASK_YESNO, NULL, "\\boxed{maybe}", NULL, -1},
    {SCHED_TASK_INDEX, NULL, "Answer: 2.", "2", 0},
    {SCHED_TASK_INDEX, NULL, "answer is (1)", "1", 0},
    {SCHED_TASK_INDEX, NULL, "\\boxed{1}", "1", 0},
    {SCHED_TASK_INDEX, NULL, "\\boxed{(2)}", "2", 0},
    {SCHED_TASK_INDEX, NULL, "\\boxed{3}", NULL, -1},
    {SCHED_TASK_INDEX, NULL, "answer is 12", NULL, -1},
    {SCHED_TASK_INDEX, NULL, "answer is 1st", NULL, -1},
    {SCHED_TASK_NONE, NULL, "\\boxed{5} Answer: A.", NULL, -1},
};

static void test_parse(void) {
  for (size_t i = 0; i < sizeof k_parse / sizeof *k_parse; i++) {
    const struct parse_case *c = &k_parse[i];
    expect(c->task, c->labels, c->toks, true, c->want, c->at);
  }
  expect(SCHED_TASK_CHOICE, NULL, "Answer: B", false, NULL, -1); /* waits for what follows */
}

static void test_changes(void) {
  /* several answers: the latest stands; before() gives the one before */
  sched_answer a;
  run(&a, SCHED_TASK_MATH, NULL, "\\boxed{1}|foo|\\boxed{2}|bar|\\boxed{2}|\\boxed{1}", true);
  T_CHECK(a.n_changes == 3 && a.first_at == 0);
  size_t n;
  int32_t at;
  const struct {
    int32_t pos;
    const char *want;
    int32_t at;
  } k_before[] = {{-5, NULL, -1}, {0, NULL, -1}, {1, "1", 0}, {2, "1", 0},
                  {3, "2", 2},    {5, "2", 2},   {6, "1", 5}, {99, "1", 5}};
  for (size_t k = 0; k < sizeof k_before / sizeof *k_before; k++) {
    const char *v = sched_answer_before(&a, k_before[k].pos, &n, &at);
    T_CHECKF(answer_is(v, n, at, k_before[k].want, k_before[k].at), "before(%d): %s at %d",
             k_before[k].pos, v ? v : "(none)", at);
  }
  const char *v = sched_answer_current(&a, NULL, NULL);
  T_CHECK(v && strcmp(v, "1") == 0);
  sched_answer_free(&a);

  /* two answers in one token: one entry, the last word */
  run(&a, SCHED_TASK_MATH, NULL, "\\boxed{1}\\boxed{2}|\\boxed{3}\\boxed{2}", true);
  T_CHECK(a.n_changes == 1 && a.changes[0].at == 0 && strcmp(a.values, "2") == 0);
  sched_answer_free(&a);

  /* content of SCHED_ANSWER_MAX bytes is an answer, one more is not */
  char text[2 * SCHED_ANSWER_MAX], want[SCHED_ANSWER_MAX + 1];
  memset(want, 'x', SCHED_ANSWER_MAX);
  want[SCHED_ANSWER_MAX] = '\0';
  snprintf(text, sizeof text, "\\boxed{1}|\\boxed{%s}", want);
  expect(SCHED_TASK_MATH, NULL, text, true, want, 1);
  snprintf(text, sizeof text, "\\boxed{1}|\\boxed{%sx}", want);
  expect(SCHED_TASK_MATH, NULL, text, true, "1", 0);
}

static void test_think(void) {
  const struct {
    const char *toks;
    bool think_open, opened, closed;
  } k[] = {
      {"<think>\nhm\n</think>\n\nok", false, true, true},
      {"<thi|nk>|hm|</|think|>", false, true, true},
      {"<think>hm", false, true, false},
      {"hm</think>", false, false, false}, /* nothing was open */
      {"hm</think>", true, true, true},
      {"hm", true, true, false},
      {"<think>a</think>b<think>c", false, true, false},
      {"<think>a</think>b</think>", false, true, true},
      {"<THINK>a</THINK>", false, false, false},
  };
  for (size_t i = 0; i < sizeof k / sizeof *k; i++)
    for (int t = SCHED_TASK_NONE; t <= SCHED_TASK_INDEX; t++) {
      sched_answer a;
      bl_err err = {0};
      T_CHECK(sched_answer_init(&a, (sched_task)t, NULL, k[i].think_open, &err) == BL_OK);
      int32_t p = 0;
      for (const char *s = k[i].toks;; p++) {
        const char *e = strchr(s, '|');
        T_CHECK(sched_answer_feed(&a, p, s, e ? (size_t)(e - s) : strlen(s)) == BL_OK);
        if (!e) break;
        s = e + 1;
      }
      T_CHECKF(a.think_opened == k[i].opened && a.think_closed == k[i].closed, "%s: %d %d",
               k[i].toks, a.think_opened, a.think_closed);
      sched_answer_free(&a);
    }
}

static void check_score(int line, sched_task task, const char *text, const char *want) {
  sched_answer a;
  run(&a, task, NULL, text, true);
  char out[SCHED_ANSWER_MAX + 1];
  bool got = sched_answer_score(&a, out, sizeof out);
  T_CHECKF(want ? got && strcmp(out, want) == 0 : !got, "line %d: %s: got %s, want %s", line, text,
           got ? out : "(none)", want ? want : "(none)");
  sched_answer_free(&a);
}
#define SCORE(task, text, want) check_score(__LINE__, task, text, want)

static void test_score(void) {
  SCORE(SCHED_TASK_MATH, "x = 1,234 and -12 then 3.5 apples", "3.5");
  SCORE(SCHED_TASK_MATH, "x = 1,234", "1234");
  SCORE(SCHED_TASK_MATH, "so -12.", "-12");
  SCORE(SCHED_TASK_MATH, "range 3-5", "5");
  SCORE(SCHED_TASK_MATH, "about .5", ".5");
  SCORE(SCHED_TASK_MATH, "1,2,3", "3");
  SCORE(SCHED_TASK_MATH, "\\boxed{\\frac{1}{2}} then 7", "\\frac{1}{2}");
  SCORE(SCHED_TASK_MATH, "no numbers", NULL);
  SCORE(SCHED_TASK_INTEGER, "it is 0042.", "42");
  SCORE(SCHED_TASK_INTEGER, "it is 1,000", NULL);
  SCORE(SCHED_TASK_INTEGER, "it is 2.5", NULL);
  SCORE(SCHED_TASK_INTEGER, "it is -2", NULL);
  SCORE(SCHED_TASK_INTEGER, "\\boxed{007}", "7");
  SCORE(SCHED_TASK_CHOICE, "maybe 3", NULL);
  SCORE(SCHED_TASK_CHOICE, "Answer: C", "C");
  SCORE(SCHED_TASK_NONE, "\\boxed{3} 4", NULL);
  sched_answer a;
  run(&a, SCHED_TASK_MATH, NULL, "\\boxed{123}", true);
  char small[4];
  T_CHECK(!sched_answer_score(&a, small, 3) && sched_answer_score(&a, small, 4));
  sched_answer_free(&a);
  char big[SCHED_ANSWER_MAX + 20];
  memset(big, '7', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  SCORE(SCHED_TASK_MATH, big, NULL); /* the last number is too long to report */
}

static void test_match(void) {
  const struct {
    sched_task task;
    const char *got, *ref;
    bool eq;
  } k[] = {
      {SCHED_TASK_MATH, "\\frac{1}{2}", "\\dfrac{1}{2}", true},
      {SCHED_TASK_MATH, "\\frac12", "\\frac{1}{2}", true},
      {SCHED_TASK_MATH, "\\tfrac{\\pi}2", "\\frac\\pi2", true},
      {SCHED_TASK_MATH, "\\frac{1}{2}", "0.5", true},
      {SCHED_TASK_MATH, "-\\frac{3}{4}", "-0.75", true},
      {SCHED_TASK_MATH, "1,000", "1000", true},
      {SCHED_TASK_MATH, "$5$", "5", true},
      {SCHED_TASK_MATH, "0.5", ".5", true},
      {SCHED_TASK_MATH, "5.", "5", true},
      {SCHED_TASK_MATH, "5.0", "5", true},
      {SCHED_TASK_MATH, "\\left( 1, 2 \\right)", "(1,2)", true},
      {SCHED_TASK_MATH, "\\text{(A)}", "(A)", true},
      {SCHED_TASK_MATH, "x^2+1", "x^2 + 1", true},
      {SCHED_TASK_MATH, "3", "4", false},
      {SCHED_TASK_MATH, "x", "X", false},
      {SCHED_TASK_MATH, "1/2", "\\frac{1}{2}", false},
      {SCHED_TASK_MATH, "", "", false},
      {SCHED_TASK_MATH, "\\frac{1}{0}", "\\frac{1}{0}", true}, /* as strings */
      {SCHED_TASK_MATH, "\\frac{", "\\frac{", true},
      {SCHED_TASK_INTEGER, "042", "42", true},
      {SCHED_TASK_INTEGER, "1,000", "1000", true},
      {SCHED_TASK_INTEGER, "\\text{7}", "7", true},
      {SCHED_TASK_INTEGER, "7", "8", false},
      {SCHED_TASK_INTEGER, "x", "x", false},
      {SCHED_TASK_CHOICE, "(B)", "b", true},
      {SCHED_TASK_CHOICE, "\\text{B}", "B", true},
      {SCHED_TASK_CHOICE, "B.", "B", true},
      {SCHED_TASK_CHOICE, "A", "B", false},
      {SCHED_TASK_YESNO, "Yes", "yes", true},
      {SCHED_TASK_YESNO, "no", "yes", false},
      {SCHED_TASK_INDEX, "(1)", "1", true},
      {SCHED_TASK_INDEX, "1", "2", false},
      {SCHED_TASK_NONE, " Paris ", "paris", true},
  };
  for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
    T_CHECKF(sched_answer_match(k[i].task, k[i].got, k[i].ref) == k[i].eq, "%s: %s vs %s",
             sched_task_name(k[i].task), k[i].got, k[i].ref);
    T_CHECKF(sched_answer_match(k[i].task, k[i].ref, k[i].got) == k[i].eq, "%s: %s vs %s",
             sched_task_name(k[i].task), k[i].ref, k[i].got);
  }
  T_CHECK(!sched_answer_match(SCHED_TASK_MATH, NULL, "1") &&
          !sched_answer_match(SCHED_TASK_MATH, "1", NULL));
}

static void test_init(void) {
  const char *const bad[] = {"ABcD", "A", "AAB", "", "AB1", "ABCDEFGHIJKLMNOPQRSTUVWXYZA"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    sched_answer a;
    bl_err err = {0};
    T_CHECKF(sched_answer_init(&a, SCHED_TASK_CHOICE, bad[i], false, &err) == BL_EINVAL &&
                 strstr(err.msg, "labels"),
             "labels \"%s\": %s", bad[i], err.msg);
  }
  sched_answer a;
  bl_err err = {0};
  T_CHECK(sched_answer_init(&a, (sched_task)42, NULL, false, &err) == BL_EINVAL &&
          strstr(err.msg, "task"));
  T_CHECK(sched_answer_init(&a, SCHED_TASK_MATH, "a", false, NULL) == BL_OK); /* ignored */
  T_CHECK(sched_answer_init(&a, SCHED_TASK_CHOICE, "ABCDEFGHIJKLMNOPQRSTUVWXYZ", false, NULL) ==
          BL_OK);
  T_CHECK(sched_answer_current(&a, NULL, NULL) == NULL && a.first_at == -1 && a.pos == -1);
  char out[8];
  T_CHECK(!sched_answer_score(&a, out, sizeof out));
  sched_answer_finish(&a);
  sched_answer_free(&a);
  for (int t = SCHED_TASK_NONE; t <= SCHED_TASK_INDEX; t++) {
    sched_task back;
    T_CHECK(sched_task_parse(sched_task_name((sched_task)t), &back) && back == (sched_task)t);
  }
  sched_task back;
  T_CHECK(!sched_task_parse("Math", &back) && !sched_task_parse("", &back));
}

/* Each byte is scanned once: a long unclosed box and deep nesting, fed a
 * byte at a time, stay linear (a rescan would take hours here). */
static void test_long(void) {
  size_t n = 4u << 20;
  char *text = malloc(n);
  T_CHECK(text != NULL);
  if (!text) return;
  memcpy(text, "\\boxed{1}\\boxed{", 16);
  for (size_t i = 16; i < n; i++)
    text[i] = "x{\\boxed{7"[i % 10];
  sched_answer a;
  T_CHECK(sched_answer_init(&a, SCHED_TASK_MATH, NULL, false, NULL) == BL_OK);
  bool ok = true;
  int32_t most = 0;
  for (size_t i = 0; i < n; i++) {
    ok &= sched_answer_feed(&a, (int32_t)i, text + i, 1) == BL_OK;
    if (a.n_boxes > most) most = a.n_boxes;
  }
  sched_answer_finish(&a);
  size_t len;
  const char *v = sched_answer_current(&a, &len, NULL);
  /* nothing after the first box closes: boxes pile up and are dropped */
  T_CHECKF(ok && v && strcmp(v, "1") == 0 && a.n_changes == 1 && most <= SCHED_ANSWER_BOXES,
           "%s, %zu changes, %d boxes open at most", v ? v : "(none)", a.n_changes, most);
  sched_answer_free(&a);
  free(text);
}

/* The n-th realloc fails, for every n until none does. */
static void test_oom(void) {
  const char *const toks[] = {"<think>",        "\\boxed{1}", " x",           "",
                              "\\boxed{22}",    "Answer: B",  "\\boxed{333}", "</think>",
                              " end \\boxed{4}"};
  size_t nt = sizeof toks / sizeof *toks;
  int failed_text = 0, failed_answer = 0;
  for (long fail = 0;; fail++) {
    sched_answer a;
    T_CHECK(sched_answer_init(&a, SCHED_TASK_MATH, NULL, false, NULL) == BL_OK);
    bool hit = false;
    g_fail_in = fail;
    for (size_t k = 0; k < nt; k++) {
      size_t before = a.len;
      bool was_oom = a.oom;
      if (sched_answer_feed(&a, (int32_t)k, toks[k], strlen(toks[k])) == BL_OK) continue;
      hit = true;
      if (a.oom && !was_oom) {
        failed_answer++;
      } else { /* the text was not stored: the call had no effect, so retry it */
        failed_text++;
        T_CHECK(a.len == before && !a.oom);
        T_CHECK(sched_answer_feed(&a, (int32_t)k, toks[k], strlen(toks[k])) == BL_OK);
      }
    }
    g_fail_in = -1;
    sched_answer_finish(&a);
    char out[16];
    size_t n;
    const char *v = sched_answer_current(&a, &n, NULL);
    if (a.oom) {
      T_CHECK(!v && !sched_answer_before(&a, 99, NULL, NULL) && !sched_answer_score(&a, out, 16));
    } else {
      T_CHECKF(v && strcmp(v, "4") == 0 && a.n_changes == 4 && a.think_closed, "fail %ld", fail);
    }
    sched_answer_free(&a);
    if (!hit) break;
  }
  printf("oom: %d text and %d answer allocation failures handled\n", failed_text, failed_answer);
  T_CHECK(failed_text > 0 && failed_answer > 0);
}

int main(void) {
  test_property();
  test_parse();
  test_changes();
  test_think();
  test_score();
  test_match();
  test_init();
  test_long();
  test_oom();
  return T_DONE();
}
