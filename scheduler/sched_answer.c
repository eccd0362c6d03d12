/* The answer tracker (see sched_answer.h for what it reports).
 *
 * Grammar, over bytes (ASCII case folding only):
 *   box      "\boxed{" or "\fbox{" at offset s, content up to the '}' that
 *            brings the brace depth back to where it was before the '{'.
 *            Decided at that '}'. Its value by task:
 *              math     the content less white space around it, not empty
 *              integer  the stripped content (below) as d+ or d{1,3}(,ddd)+,
 *                       commas and zeros in front dropped, at most 999
 *              choice   the stripped content, one pair of () around it
 *                       dropped, one letter among the labels (upper-cased)
 *              yesno    the stripped content, "yes" or "no" (lower-cased)
 *              index    the stripped content, () dropped, "1" or "2"
 *            Stripping drops white space, $, { and }, LaTeX spacing (\, \!
 *            \; \: and "\ ") and the commands \text, \textbf, \textit,
 *            \texttt, \textrm, \mathrm, \mathbf, \mathit and \mbox (their
 *            argument stays); any other command makes it no answer.
 *   pattern  (choice, yesno, index) "answer" at offset s, not preceded by a
 *            letter, then [ \t*]*, then ":" or, after at least one space or
 *            tab, "is" followed by ":" or one of [ \t*]; then [ \t*]*, then
 *            either "(" VALUE ")" (decided at the ')') or VALUE followed by
 *            a byte that is not an ASCII letter or digit (decided at that
 *            byte, or at finish when the text ends there). VALUE: choice an
 *            upper-case label; yesno "yes" or "no" in any case; index 1 or 2.
 * A decided answer with value v, beginning at s, becomes the standing one
 * unless the standing one begins after s (it is inside this box). The
 * change list records the standing value after each token, collapsed.
 *
 * Incremental scan: every byte is looked at once, in feed order. A box is
 * found at its '{' by looking back 6 bytes; open boxes form a stack with the
 * depth each closes at (boxes of unbalanced text are simply never closed,
 * and those whose content is already too long are dropped from the bottom).
 * A pattern is a small state machine started at the 'r' of "answer"; the
 * keyword cannot occur inside a pattern in flight, so one is enough. */
#include "sched_answer.h"

#include <stdlib.h>
#include <string.h>

enum { PAT_NONE, PAT_GAP1, PAT_I, PAT_IS, PAT_GAP2, PAT_VALUE, PAT_END };

static const char *const k_task_names[] = {"none", "math", "integer", "choice", "yesno", "index"};

const char *sched_task_name(sched_task t) {
  return (unsigned)t <= SCHED_TASK_INDEX ? k_task_names[t] : "?";
}

bool sched_task_parse(const char *name, sched_task *out) {
  for (int i = 0; i <= SCHED_TASK_INDEX; i++)
    if (strcmp(name, k_task_names[i]) == 0) {
      *out = (sched_task)i;
      return true;
    }
  return false;
}

/* ---- characters ---- */

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_alnum(char c) { return is_digit(c) || is_alpha(c); }
static bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static bool is_gap(char c) { return c == ' ' || c == '\t' || c == '*'; }
static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

static bool same_ci(const char *s, size_t n, const char *lit) {
  if (strlen(lit) != n) return false;
  for (size_t i = 0; i < n; i++)
    if (lower(s[i]) != lower(lit[i])) return false;
  return true;
}

/* ---- values ---- */

/* The commands whose argument is kept when stripping. */
static bool is_wrapper(const char *name, size_t n) {
  static const char *const k[] = {"text",   "textbf", "textit", "texttt", "textrm",
                                  "mathrm", "mathbf", "mathit", "mbox"};
  for (size_t i = 0; i < sizeof k / sizeof *k; i++)
    if (strlen(k[i]) == n && memcmp(k[i], name, n) == 0) return true;
  return false;
}

/* s[0..n) stripped (see the grammar) into out (n bytes); false on another
 * LaTeX command. */
static bool strip_latex(const char *s, size_t n, char *out, size_t *len) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (is_space(c) || c == '$' || c == '{' || c == '}') continue;
    if (c != '\\') {
      out[o++] = c;
      continue;
    }
    if (i + 1 < n && (s[i + 1] == ',' || s[i + 1] == '!' || s[i + 1] == ';' || s[i + 1] == ':' ||
                      s[i + 1] == ' ')) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < n && is_alpha(s[j]))
      j++;
    if (!is_wrapper(s + i + 1, j - i - 1)) return false;
    i = j - 1;
  }
  *len = o;
  return true;
}

/* s as d+ or d{1,3}(,ddd)+, into out (n bytes) without commas or zeros in
 * front ("0" for zero). */
static bool canonical_int(const char *s, size_t n, char *out, size_t *len) {
  size_t lead = 0;
  while (lead < n && is_digit(s[lead]))
    lead++;
  if (lead == 0) return false;
  if (lead < n) { /* thousands groups */
    if (lead > 3) return false;
    for (size_t i = lead; i < n; i += 4)
      if (i + 4 > n || s[i] != ',' || !is_digit(s[i + 1]) || !is_digit(s[i + 2]) ||
          !is_digit(s[i + 3]))
        return false;
  }
  size_t o = 0;
  for (size_t i = 0; i < n; i++)
    if (is_digit(s[i]) && (o > 0 || s[i] != '0')) out[o++] = s[i];
  if (o == 0) out[o++] = '0';
  *len = o;
  return true;
}

static void drop_parens(const char **s, size_t *n) {
  if (*n >= 2 && (*s)[0] == '(' && (*s)[*n - 1] == ')') {
    (*s)++;
    *n -= 2;
  }
}

/* The value of box content s[0..n) (n <= SCHED_ANSWER_MAX) for a's task,
 * into out (SCHED_ANSWER_MAX bytes); false: not an answer. */
static bool box_value(const sched_answer *a, const char *s, size_t n, char *out, size_t *len) {
  if (a->task == SCHED_TASK_MATH) {
    while (n && is_space(*s))
      s++, n--;
    while (n && is_space(s[n - 1]))
      n--;
    memcpy(out, s, n);
    *len = n;
    return n > 0;
  }
  char buf[SCHED_ANSWER_MAX];
  size_t m;
  if (!strip_latex(s, n, buf, &m)) return false;
  const char *v = buf;
  switch (a->task) {
  case SCHED_TASK_INTEGER: return canonical_int(buf, m, out, len) && *len <= 3;
  case SCHED_TASK_CHOICE:
    drop_parens(&v, &m);
    if (m != 1 || !is_alpha(v[0]) || !strchr(a->labels, v[0] & ~0x20)) return false;
    out[0] = (char)(v[0] & ~0x20);
    *len = 1;
    return true;
  case SCHED_TASK_YESNO:
    if (!same_ci(v, m, "yes") && !same_ci(v, m, "no")) return false;
    for (size_t i = 0; i < m; i++)
      out[i] = lower(v[i]);
    *len = m;
    return true;
  case SCHED_TASK_INDEX:
    drop_parens(&v, &m);
    if (m != 1 || (v[0] != '1' && v[0] != '2')) return false;
    out[0] = v[0];
    *len = 1;
    return true;
  default: return false;
  }
}

/* ---- the change list ---- */

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 64;
  while (c < need) {
    if (c > SIZE_MAX / 2 / elem) return false;
    c *= 2;
  }
  void *q = realloc(*p, c * elem);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

/* The standing value is now v[0..n) as of token a->pos. */
static bool store(sched_answer *a, const char *v, size_t n) {
  if (a->oom) return true; /* already reported */
  sched_answer_change *last = a->n_changes ? &a->changes[a->n_changes - 1] : NULL;
  if (last && last->at == a->pos) { /* one entry per position: the last word stands */
    a->values_len = last->off;
    a->n_changes--;
    last = a->n_changes ? last - 1 : NULL;
  }
  if (last && last->len == n && memcmp(a->values + last->off, v, n) == 0) return true;
  if (a->values_len + n + 1 > UINT32_MAX ||
      !grow((void **)&a->values, &a->values_cap, a->values_len + n + 1, 1) ||
      !grow((void **)&a->changes, &a->cap_changes, a->n_changes + 1, sizeof *a->changes)) {
    a->oom = true;
    return false;
  }
  memcpy(a->values + a->values_len, v, n);
  a->values[a->values_len + n] = '\0';
  a->changes[a->n_changes++] =
      (sched_answer_change){.at = a->pos, .off = (uint32_t)a->values_len, .len = (uint32_t)n};
  a->values_len += n + 1;
  return true;
}

/* An answer beginning at offset start was decided with token a->pos. */
static bool decide(sched_answer *a, size_t start, const char *v, size_t n) {
  if (a->cur_start >= 0 && (int64_t)start < a->cur_start) return true; /* inside this box */
  a->cur_start = (int64_t)start;
  if (a->first_at < 0) a->first_at = a->pos;
  return store(a, v, n);
}

/* ---- the scan ---- */

static void open_brace(sched_answer *a, size_t i) {
  const char *t = a->text;
  size_t open = i >= 6 && memcmp(t + i - 6, "\\boxed", 6) == 0  ? i - 6
                : i >= 5 && memcmp(t + i - 5, "\\fbox", 5) == 0 ? i - 5
                                                                : SIZE_MAX;
  if (open != SIZE_MAX && a->task != SCHED_TASK_NONE) {
    int32_t k = 0; /* boxes already too long to be answers */
    while (k < a->n_boxes && i + 1 - a->boxes[k].content > SCHED_ANSWER_MAX)
      k++;
    if (k == 0 && a->n_boxes == SCHED_ANSWER_BOXES) k = 1; /* not reached (see the header) */
    memmove(a->boxes, a->boxes + k, (size_t)(a->n_boxes - k) * sizeof *a->boxes);
    a->n_boxes -= k;
    a->boxes[a->n_boxes++] = (sched_answer_box){.open = open, .content = i + 1, .depth = a->depth};
  }
  a->depth++;
}

static bool close_brace(sched_answer *a, size_t i) {
  a->depth--;
  if (!a->n_boxes || a->boxes[a->n_boxes - 1].depth != a->depth) return true;
  sched_answer_box b = a->boxes[--a->n_boxes];
  char v[SCHED_ANSWER_MAX];
  size_t n = i - b.content, vn;
  if (n > SCHED_ANSWER_MAX || !box_value(a, a->text + b.content, n, v, &vn)) return true;
  return decide(a, b.open, v, vn);
}

static void think_tag(sched_answer *a, size_t i) {
  if (i >= 6 && memcmp(a->text + i - 6, "<think>", 7) == 0) {
    a->think_opened = true;
    a->think_closed = false;
  } else if (i >= 7 && memcmp(a->text + i - 7, "</think>", 8) == 0 && a->think_opened) {
    a->think_closed = true;
  }
}

static bool has_patterns(sched_task t) {
  return t == SCHED_TASK_CHOICE || t == SCHED_TASK_YESNO || t == SCHED_TASK_INDEX;
}

/* Does "answer" (any case), not preceded by a letter, end at t[i]? */
static bool keyword_at(const char *t, size_t i) {
  if (i < 5 || !same_ci(t + i - 5, 6, "answer")) return false;
  return i == 5 || !is_alpha(t[i - 6]);
}

static void value_byte(sched_answer *a, char c) {
  a->pat = PAT_NONE;
  if (a->task == SCHED_TASK_CHOICE) {
    if (c < 'A' || c > 'Z' || !strchr(a->labels, c)) return;
  } else if (a->task == SCHED_TASK_INDEX) {
    if (c != '1' && c != '2') return;
  } else {
    if (!is_alpha(c)) return;
    c = lower(c);
  }
  a->pat_val[a->pat_n++] = c;
  if (a->task != SCHED_TASK_YESNO || same_ci(a->pat_val, a->pat_n, "yes") ||
      same_ci(a->pat_val, a->pat_n, "no")) {
    a->pat = PAT_END;
  } else if (a->pat_n < 3 && (strncmp(a->pat_val, "yes", a->pat_n) == 0 ||
                              strncmp(a->pat_val, "no", a->pat_n) == 0)) {
    a->pat = PAT_VALUE;
  }
}

static bool pattern_byte(sched_answer *a, char c) {
  switch (a->pat) {
  case PAT_GAP1:
    if (c == ' ' || c == '\t')
      a->pat_ws = true;
    else if (c == ':')
      a->pat = PAT_GAP2;
    else if (lower(c) == 'i' && a->pat_ws)
      a->pat = PAT_I;
    else if (c != '*')
      a->pat = PAT_NONE;
    return true;
  case PAT_I: a->pat = lower(c) == 's' ? PAT_IS : PAT_NONE; return true;
  case PAT_IS: a->pat = c == ':' || is_gap(c) ? PAT_GAP2 : PAT_NONE; return true;
  case PAT_GAP2:
    if (is_gap(c)) return true;
    if (c == '(') {
      a->pat_paren = true;
      a->pat = PAT_VALUE;
      return true;
    }
    value_byte(a, c);
    return true;
  case PAT_VALUE: value_byte(a, c); return true;
  case PAT_END:
    a->pat = PAT_NONE;
    if (a->pat_paren ? c != ')' : is_alnum(c)) return true;
    return decide(a, a->pat_start, a->pat_val, a->pat_n);
  default: return true;
  }
}

static bool scan_byte(sched_answer *a, size_t i) {
  char c = a->text[i];
  bool ok = a->pat == PAT_NONE || pattern_byte(a, c);
  if (c == '{') {
    open_brace(a, i);
  } else if (c == '}') {
    ok = close_brace(a, i) && ok;
  } else if (c == '>') {
    think_tag(a, i);
  } else if (lower(c) == 'r' && has_patterns(a->task) && keyword_at(a->text, i)) {
    a->pat = PAT_GAP1;
    a->pat_ws = a->pat_paren = false;
    a->pat_n = 0;
    a->pat_start = i - 5;
  }
  return ok;
}

/* ---- API ---- */

bl_status sched_answer_init(sched_answer *a, sched_task task, const char *labels, bool think_open,
                            bl_err *err) {
  *a = (sched_answer){
      .task = task, .pos = -1, .cur_start = -1, .first_at = -1, .think_opened = think_open};
  if ((unsigned)task > SCHED_TASK_INDEX)
    return bl_fail(err, BL_EINVAL, "answer tracker: unknown task %d", (int)task);
  if (task != SCHED_TASK_CHOICE) return BL_OK;
  if (!labels) labels = "ABCD";
  size_t n = strlen(labels);
  bool ok = n >= 2 && n <= 26;
  for (size_t i = 0; ok && i < n; i++)
    ok = labels[i] >= 'A' && labels[i] <= 'Z' && !memchr(labels, labels[i], i);
  if (!ok)
    return bl_fail(err, BL_EINVAL,
                   "answer tracker: choice labels must be 2 to 26 distinct upper-case letters "
                   "(got \"%.40s\")",
                   labels);
  memcpy(a->labels, labels, n + 1);
  return BL_OK;
}

void sched_answer_free(sched_answer *a) {
  free(a->text);
  free(a->changes);
  free(a->values);
  a->text = a->values = NULL;
  a->changes = NULL;
  a->len = a->cap = a->n_changes = a->cap_changes = a->values_len = a->values_cap = 0;
}

bl_status sched_answer_feed(sched_answer *a, int32_t pos, const char *text, size_t len) {
  if (len > SIZE_MAX - a->len - 1 ||
      (len && !grow((void **)&a->text, &a->cap, a->len + len + 1, 1)))
    return BL_ENOMEM;
  if (len) memcpy(a->text + a->len, text, len);
  a->len += len;
  if (a->text) a->text[a->len] = '\0';
  a->pos = pos;
  bool ok = true;
  for (; a->scan < a->len; a->scan++)
    ok = scan_byte(a, a->scan) && ok;
  return ok ? BL_OK : BL_ENOMEM;
}

void sched_answer_finish(sched_answer *a) {
  if (a->pat == PAT_END && !a->pat_paren) decide(a, a->pat_start, a->pat_val, a->pat_n);
  a->pat = PAT_NONE;
  a->finished = true;
}

static const char *entry(const sched_answer *a, size_t k, size_t *len, int32_t *at) {
  if (len) *len = k ? a->changes[k - 1].len : 0;
  if (at) *at = k ? a->changes[k - 1].at : -1;
  return k ? a->values + a->changes[k - 1].off : NULL;
}

const char *sched_answer_current(const sched_answer *a, size_t *len, int32_t *at) {
  return entry(a, a->oom ? 0 : a->n_changes, len, at);
}

const char *sched_answer_before(const sched_answer *a, int32_t pos, size_t *len, int32_t *at) {
  size_t lo = 0, hi = a->oom ? 0 : a->n_changes; /* count of entries with at < pos */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a->changes[mid].at < pos)
      lo = mid + 1;
    else
      hi = mid;
  }
  return entry(a, lo, len, at);
}

/* ---- scoring ---- */

/* The number at t[i] (a digit, or '.' before one), to *end: d+(,ddd)*(.d+)?
 * with groups only after 1..3 digits. */
static size_t number_end(const char *t, size_t n, size_t i, bool *frac) {
  size_t j = i;
  while (j < n && is_digit(t[j]))
    j++;
  if (j > i && j - i <= 3)
    while (j + 3 < n && t[j] == ',' && is_digit(t[j + 1]) && is_digit(t[j + 2]) &&
           is_digit(t[j + 3]) && (j + 4 == n || !is_digit(t[j + 4])))
      j += 4;
  *frac = j + 1 < n && t[j] == '.' && is_digit(t[j + 1]);
  if (*frac)
    for (j++; j < n && is_digit(t[j]);)
      j++;
  return j;
}

/* The last number in the text: -12, 1,234, 3.5, .5 (a '-' counts when it
 * directly precedes it and follows no letter or digit), without commas,
 * into out (SCHED_ANSWER_MAX + 1 bytes); false when none or too long. */
static bool last_number(const sched_answer *a, char *out, size_t *len, bool *integral) {
  const char *t = a->text;
  size_t n = a->len, s = SIZE_MAX, e = 0;
  bool frac = false;
  for (size_t i = 0; i < n;) {
    bool dot = t[i] == '.' && i + 1 < n && is_digit(t[i + 1]) && (i == 0 || !is_digit(t[i - 1]));
    if (!is_digit(t[i]) && !dot) {
      i++;
      continue;
    }
    bool f;
    size_t j = number_end(t, n, i, &f);
    s = i, e = j, frac = f;
    i = j;
  }
  if (s == SIZE_MAX) return false;
  size_t o = 0;
  bool neg = s > 0 && t[s - 1] == '-' && (s == 1 || !is_alnum(t[s - 2]));
  if (neg) out[o++] = '-';
  for (size_t i = s; i < e; i++) {
    if (t[i] == ',') continue;
    if (o == SCHED_ANSWER_MAX) return false;
    out[o++] = t[i];
  }
  *len = o;
  *integral = !neg && !frac && t[s] != '.';
  return true;
}

bool sched_answer_score(const sched_answer *a, char *out, size_t cap) {
  size_t n;
  const char *v = sched_answer_current(a, &n, NULL);
  char num[SCHED_ANSWER_MAX + 1], canon[SCHED_ANSWER_MAX + 1];
  bool integral;
  if (!v && !a->oom && a->task == SCHED_TASK_MATH && last_number(a, num, &n, &integral)) v = num;
  if (!v && !a->oom && a->task == SCHED_TASK_INTEGER && last_number(a, num, &n, &integral) &&
      integral && canonical_int(num, n, canon, &n) && n <= 3)
    v = canon;
  if (!v || n + 1 > cap) return false;
  memcpy(out, v, n);
  out[n] = '\0';
  return true;
}

/* ---- matching ---- */

static size_t command_end(const char *s, size_t n, size_t i) { /* s[i] == '\\' */
  size_t j = i + 1;
  while (j < n && is_alpha(s[j]))
    j++;
  return j == i + 1 && j < n ? j + 1 : j; /* a one-symbol command such as \{ */
}

/* Math answers less noise, into out (n + 1 bytes): white space, $, LaTeX
 * spacing, \left and \right, \text-like wrappers (argument kept), thousands
 * commas, a trailing period; \dfrac and \tfrac become \frac. */
static size_t math_clean(const char *s, size_t n, char *out) {
  int64_t depth = 0, unwrap[32]; /* depths whose closing brace is a wrapper's */
  int n_unwrap = 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (is_space(c) || c == '$') continue;
    if (c == ',' && o && is_digit(out[o - 1]) && i + 3 < n && is_digit(s[i + 1]) &&
        is_digit(s[i + 2]) && is_digit(s[i + 3]) && (i + 4 == n || !is_digit(s[i + 4])))
      continue;
    depth += c == '{' ? 1 : c == '}' ? -1 : 0;
    if (c == '}' && n_unwrap && unwrap[n_unwrap - 1] == depth) {
      n_unwrap--;
      continue;
    }
    if (c != '\\') {
      out[o++] = c;
      continue;
    }
    size_t j = command_end(s, n, i);
    const char *name = s + i + 1;
    size_t k = j - i - 1;
    if (k == 1 && strchr(",!;: ", name[0])) {
      i = j - 1;
    } else if ((k == 4 && memcmp(name, "left", 4) == 0) ||
               (k == 5 && memcmp(name, "right", 5) == 0)) {
      i = j - 1;
    } else if (k == 5 && (memcmp(name, "dfrac", 5) == 0 || memcmp(name, "tfrac", 5) == 0)) {
      memcpy(out + o, "\\frac", 5);
      o += 5;
      i = j - 1;
    } else if (is_wrapper(name, k) && j < n && s[j] == '{' && n_unwrap < 32) {
      unwrap[n_unwrap++] = depth++;
      i = j;
    } else {
      memcpy(out + o, s + i, j - i);
      o += j - i;
      i = j - 1;
    }
  }
  if (o && out[o - 1] == '.') o--;
  return o;
}

/* The brace closing s[i] == '{', or n. */
static size_t brace_end(const char *s, size_t n, size_t i) {
  for (int64_t d = 0; i < n; i++)
    if ((d += s[i] == '{' ? 1 : s[i] == '}' ? -1 : 0) == 0) return i;
  return n;
}

/* \frac with both arguments in braces (\frac12 -> \frac{1}{2}), into out
 * (2n bytes at most). */
static size_t frac_braces(const char *s, size_t n, char *out, int nest) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    if (nest > 16 || n - i < 5 || memcmp(s + i, "\\frac", 5) != 0 ||
        (i + 5 < n && is_alpha(s[i + 5]))) {
      out[o++] = s[i++];
      continue;
    }
    memcpy(out + o, "\\frac", 5);
    o += 5;
    i += 5;
    for (int arg = 0; arg < 2 && i < n; arg++) {
      size_t e = s[i] == '{' ? brace_end(s, n, i) : s[i] == '\\' ? command_end(s, n, i) : i + 1;
      out[o++] = '{';
      if (s[i] == '{' && e < n) {
        o += frac_braces(s + i + 1, e - i - 1, out + o, nest + 1);
        e++;
      } else {
        memcpy(out + o, s + i, e - i);
        o += e - i;
      }
      out[o++] = '}';
      i = e;
    }
  }
  return o;
}

static double digits_value(const char *s, size_t n) { /* n <= 40 */
  char buf[48];
  memcpy(buf, s, n);
  buf[n] = '\0';
  return strtod(buf, NULL);
}

/* A decimal (-?d*.?d+) or -?\frac{d+}{d+}, whole. */
static bool as_number(const char *s, size_t n, double *v) {
  size_t i = s[0] == '-', a = i + 6, ae = a;
  if (n - i > 6 && memcmp(s + i, "\\frac{", 6) == 0) {
    while (ae < n && is_digit(s[ae]))
      ae++;
    size_t b = ae + 2, be = b;
    if (ae == a || ae - a > 40 || ae + 2 >= n || s[ae] != '}' || s[ae + 1] != '{') return false;
    while (be < n && is_digit(s[be]))
      be++;
    if (be == b || be - b > 40 || be + 1 != n || s[be] != '}') return false;
    double p = digits_value(s + a, ae - a), q = digits_value(s + b, be - b);
    if (q == 0) return false;
    *v = (i ? -p : p) / q;
    return true;
  }
  size_t digits = 0, dots = 0;
  for (size_t j = i; j < n; j++) {
    if (is_digit(s[j]))
      digits++;
    else if (s[j] == '.' && !dots)
      dots++;
    else
      return false;
  }
  if (!digits || n > 40 || s[n - 1] == '.') return false;
  *v = digits_value(s, n);
  return true;
}

static bool math_equal(const char *g, size_t ng, const char *r, size_t nr, char *bg, char *br) {
  char *cg = bg + 2 * ng + 2, *cr = br + 2 * nr + 2; /* scratch after the outputs */
  ng = frac_braces(cg, math_clean(g, ng, cg), bg, 0);
  nr = frac_braces(cr, math_clean(r, nr, cr), br, 0);
  double x, y;
  if (ng && nr && as_number(bg, ng, &x) && as_number(br, nr, &y)) {
    double d = x > y ? x - y : y - x, m = x < 0 ? -x : x, my = y < 0 ? -y : y;
    if (my > m) m = my;
    return d <= 1e-9 * (m > 1 ? m : 1);
  }
  return ng && ng == nr && memcmp(bg, br, ng) == 0;
}

/* Stripped, () and a trailing period dropped; the raw text less white space
 * around it when stripping fails. */
static void plain_clean(const char **s, size_t *n, char *buf) {
  size_t m;
  if (strip_latex(*s, *n, buf, &m)) {
    *s = buf;
    *n = m;
  } else {
    while (*n && is_space(**s))
      (*s)++, (*n)--;
    while (*n && is_space((*s)[*n - 1]))
      (*n)--;
  }
  if (*n && (*s)[*n - 1] == '.') (*n)--;
  drop_parens(s, n);
}

bool sched_answer_match(sched_task task, const char *got, const char *ref) {
  if (!got || !ref) return false;
  size_t ng = strlen(got), nr = strlen(ref);
  /* room for the output (2n + 2) and, in math, a cleaned copy (n + 1) */
  char *bg = malloc(3 * ng + 4), *br = malloc(3 * nr + 4);
  bool eq = false;
  if (bg && br) {
    const char *g = got, *r = ref;
    size_t mg, mr;
    switch (task) {
    case SCHED_TASK_MATH: eq = math_equal(got, ng, ref, nr, bg, br); break;
    case SCHED_TASK_INTEGER:
      eq = strip_latex(got, ng, bg, &mg) && canonical_int(bg, mg, bg, &mg) &&
           strip_latex(ref, nr, br, &mr) && canonical_int(br, mr, br, &mr) && mg == mr &&
           memcmp(bg, br, mg) == 0;
      break;
    default:
      plain_clean(&g, &ng, bg);
      plain_clean(&r, &nr, br);
      eq = ng && ng == nr;
      for (size_t i = 0; eq && i < ng; i++)
        eq = lower(g[i]) == lower(r[i]);
    }
  }
  free(bg);
  free(br);
  return eq;
}
