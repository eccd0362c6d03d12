/* The answer tracker: the answer a reasoning trace has given so far.
 *
 * Fed incrementally with the text released for each generated token, it
 * parses answers by task type, the way the paper's evaluation does
 * (appendix F.2):
 *   math     the last \boxed{...} or \fbox{...} (nested braces kept; the
 *            content with surrounding white space trimmed; empty is none).
 *   integer  a boxed answer normalized to an integer 0..999 (AIME): spaces,
 *            $, \text{}, thousands commas and leading zeros dropped; a boxed
 *            value that is not such an integer is not an answer.
 *   choice   a letter among the valid labels (default "ABCD"): \boxed{B},
 *            \boxed{(B)}, \boxed{\text{B}}, "answer is B", "answer is (B)",
 *            "Answer: B", "**Answer:** B" (case-insensitive "answer"; in
 *            text the letter is upper case and not followed by a letter or
 *            digit).
 *   yesno    yes/no, case-insensitive, in the same places as a choice.
 *   index    1 or 2 (PIQA, WinoGrande), in the same places as a choice.
 *   none     nothing is parsed.
 * The latest answer stands. For math and integer the numeric fallback (the
 * last number in the text) exists only for scoring (sched_answer_score); it
 * never counts as an answer for commits or time-to-first-answer.
 *
 * Precisely (sched_answer.c's opening comment has the full grammar):
 * - Every "\boxed{" or "\fbox{" opens a box, also inside another box; it
 *   closes at the brace that brings the brace depth (all of the text's
 *   braces counted) back to where it was. An unclosed box is no answer and
 *   hides nothing after it. Content over SCHED_ANSWER_MAX bytes is none.
 * - "The latest" is the answer that begins last among those complete, so
 *   \boxed{\boxed{5}} answers 5, as a "last \boxed" parser reads it.
 * - Values are normalized: choice letters upper case, yes/no lower case,
 *   integers without zeros in front; math keeps the trimmed content.
 *
 * Positions are generated-token indexes (0-based): an answer "at p" was
 * complete once the text of token p had been fed. A pattern that needs the
 * next character to be decided ("Answer: B" vs "Answer: Because") is
 * decided when that character arrives, or at sched_answer_finish (at the
 * last position fed).
 *
 * Also tracked: whether a <think> block was opened (by the trace's
 * "<think>" or by the prompt, think_open) and whether the block opened last
 * was then closed with "</think>". Cost is amortized O(1) per byte fed:
 * each byte is scanned once, with lookbacks of a few bytes. */
#ifndef SCHED_ANSWER_H
#define SCHED_ANSWER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

typedef enum sched_task {
  SCHED_TASK_NONE = 0,
  SCHED_TASK_MATH,
  SCHED_TASK_INTEGER,
  SCHED_TASK_CHOICE,
  SCHED_TASK_YESNO,
  SCHED_TASK_INDEX,
} sched_task;

/* "none", "math", "integer", "choice", "yesno", "index". */
const char *sched_task_name(sched_task t);
bool sched_task_parse(const char *name, sched_task *out);

#define SCHED_ANSWER_MAX 256 /* longest answer kept, bytes (longer boxed spans are not answers) */
/* Open boxes kept: one whose content has passed SCHED_ANSWER_MAX bytes can
 * no longer be an answer, and "\fbox{" takes 6 bytes, so no more than this
 * many open boxes can still matter. */
#define SCHED_ANSWER_BOXES (SCHED_ANSWER_MAX / 6 + 2)

/* The standing answer changed to a new value at token position at. One
 * entry a position at most, and no two neighbours with the same value: the
 * list is the standing answer after each token, collapsed. */
typedef struct sched_answer_change {
  int32_t at;   /* token position where this value became the standing answer */
  uint32_t off; /* into the tracker's value store (NUL-terminated there) */
  uint32_t len;
} sched_answer_change;

typedef struct sched_answer_box {
  size_t open;    /* offset of its '\' in the text (the answer's beginning) */
  size_t content; /* offset of its first content byte */
  int64_t depth;  /* brace depth before its '{' */
} sched_answer_box;

typedef struct sched_answer {
  sched_task task;
  char labels[27]; /* choice: the valid letters, NUL-terminated */
  /* the text fed so far [len], NUL-terminated */
  char *text;
  size_t len, cap;
  int32_t pos; /* position of the token whose text was fed last; -1 before any */
  /* parser state (incremental scan) */
  size_t scan;                                /* bytes before this have been scanned */
  int64_t depth;                              /* '{' minus '}' in text[0..scan) */
  sched_answer_box boxes[SCHED_ANSWER_BOXES]; /* open boxes, innermost last */
  int32_t n_boxes;
  uint8_t pat; /* "answer ..." pattern state (sched_answer.c); 0: none */
  bool pat_ws, pat_paren;
  uint8_t pat_n;     /* value bytes read */
  char pat_val[4];   /* the value so far */
  size_t pat_start;  /* offset of its "answer" */
  int64_t cur_start; /* offset where the standing answer begins; -1: none */
  /* answers: one entry per change of value, in order */
  sched_answer_change *changes;
  size_t n_changes, cap_changes;
  char *values; /* [values_len] */
  size_t values_len, values_cap;
  int32_t first_at; /* position of the first answer, or -1 */
  bool think_opened, think_closed;
  bool finished;
  /* a value could not be stored: answers from then on are lost, so
   * current, before and score report none (a caller may set it too) */
  bool oom;
} sched_answer;

/* labels: for choice, the valid letters (upper case, 2..26 distinct ones);
 * NULL means "ABCD". Ignored for other tasks. think_open: the prompt already
 * opened a <think> block (the trace then only needs to close it). BL_EINVAL
 * for a bad task or labels. Allocates nothing (the first feed does). */
bl_status sched_answer_init(sched_answer *a, sched_task task, const char *labels, bool think_open,
                            bl_err *err);
void sched_answer_free(sched_answer *a);

/* The text released with generated token pos. pos never decreases: a new
 * token has a larger one, and more text for the token fed last (a flush at
 * the end) comes with the same one. A token may release no text. Not after
 * sched_answer_finish. BL_ENOMEM only: when the text cannot be stored the
 * call had no effect; when an answer cannot be, a->oom is set. */
bl_status sched_answer_feed(sched_answer *a, int32_t pos, const char *text, size_t len);
/* The trace ended: decide patterns waiting on a next character. */
void sched_answer_finish(sched_answer *a);

/* The latest answer (NUL-terminated), or NULL (with *len 0); *at gets the
 * position where its value became the standing answer when at is not NULL.
 * The pointer stays valid until the next feed. */
const char *sched_answer_current(const sched_answer *a, size_t *len, int32_t *at);
/* The answer standing before token position pos: the latest one completed
 * at a position < pos, or NULL. O(log changes). */
const char *sched_answer_before(const sched_answer *a, int32_t pos, size_t *len, int32_t *at);

/* Scoring: the answer to grade, into out (NUL-terminated): the latest
 * answer, else for math and integer the last number in the text (math: as
 * written less thousands commas; integer: normalized to 0..999, else none).
 * False when there is none or it does not fit in cap. Call after finish. */
bool sched_answer_score(const sched_answer *a, char *out, size_t cap);
/* Whether got equals the reference answer ref for this task: math compares
 * numbers numerically (decimals and \frac{p}{q} of integers) and other
 * strings after normalizing LaTeX noise (spaces, $, \left/\right, \dfrac and
 * \tfrac, \frac12 as \frac{1}{2}, \text{}, trailing period, thousands
 * commas); integer compares values; the others compare case-insensitively
 * after dropping spaces, $, \text{} and surrounding parentheses. */
bool sched_answer_match(sched_task task, const char *got, const char *ref);

#endif
