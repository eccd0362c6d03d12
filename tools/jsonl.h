/* JSON lines for the line-oriented commands: a small strict JSON (RFC 8259)
 * reader, used where cJSON will not do (cJSON keeps strings NUL-terminated
 * and would cut "a\u0000b" short), and the error line they print. Each
 * reader function reads s[*i..n), advances *i past what it read and returns
 * NULL, or the reason it failed (for an error line). */
#ifndef TOOLS_JSONL_H
#define TOOLS_JSONL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Skip white space (space, tab, CR, LF). */
void jsonl_ws(const char *s, size_t n, size_t *i);
/* A string literal at s[*i] == '"', decoded into out (room for n - *i bytes
 * is enough; NULL: only check it) with its length in *len. Raw bytes are
 * copied as they are (the caller checks UTF-8 where it matters); escapes
 * must be valid, lone surrogates included. */
const char *jsonl_string(const char *s, size_t n, size_t *i, char *out, size_t *len);
/* A number; *integer tells whether it has neither fraction nor exponent. */
const char *jsonl_number(const char *s, size_t n, size_t *i, bool *integer);
/* Past the '[' or '{' at s[*i] and white space: whether members follow
 * (else past the closing bracket too). */
bool jsonl_enter(const char *s, size_t n, size_t *i);
/* After a member of an array (close ']') or object ('}'), white space and
 * then ',' (*more = true) or close (*more = false). */
const char *jsonl_next(const char *s, size_t n, size_t *i, char close, bool *more);
/* Any value (white space before it included). */
const char *jsonl_skip(const char *s, size_t n, size_t *i);
/* The whole of s is one string literal, with white space around it. */
const char *jsonl_line_string(const char *s, size_t n, char *out, size_t *len);

/* {"error":"line N: <message>"} and a newline. */
void jsonl_error(FILE *f, size_t line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
