/* The JSON reader (see jsonl.h). Nesting is limited to 64 levels so a
 * hostile line cannot exhaust the stack. */
#include "jsonl.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <utf8proc.h>

#include "cli.h"

enum { MAX_DEPTH = 64 };

void jsonl_ws(const char *s, size_t n, size_t *i) {
  while (*i < n && (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '\n' || s[*i] == '\r'))
    ++*i;
}

static int hex4(const char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

const char *jsonl_string(const char *s, size_t n, size_t *at, char *out, size_t *len) {
  char tmp[4];
  size_t i = *at, o = 0;
  for (i++; i < n && s[i] != '"'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20) return "invalid JSON (control character in a string)";
    if (c != '\\') {
      if (out) out[o] = (char)c;
      o++;
      continue;
    }
    if (++i == n) break;
    const char *simple = strchr("\"\\/bfnrt", s[i]);
    if (simple && s[i]) {
      if (out) out[o] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      o++;
      continue;
    }
    int hi = s[i] == 'u' && i + 4 < n ? hex4(s + i + 1) : -1;
    if (hi < 0) return "invalid JSON (bad escape)";
    i += 4;
    uint32_t cp = (uint32_t)hi;
    if (hi >= 0xDC00 && hi <= 0xDFFF) return "invalid JSON (lone low surrogate)";
    if (hi >= 0xD800 && hi <= 0xDBFF) {
      int lo = i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u' ? hex4(s + i + 3) : -1;
      if (lo < 0xDC00 || lo > 0xDFFF) return "invalid JSON (lone high surrogate)";
      cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
      i += 6;
    }
    o += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp,
                                      (utf8proc_uint8_t *)(out ? out + o : tmp));
  }
  if (i >= n) return "invalid JSON (unterminated string)";
  *at = i + 1;
  if (len) *len = o;
  return NULL;
}

static size_t digits(const char *s, size_t n, size_t i) {
  while (i < n && s[i] >= '0' && s[i] <= '9')
    i++;
  return i;
}

const char *jsonl_number(const char *s, size_t n, size_t *at, bool *integer) {
  size_t i = *at + (*at < n && s[*at] == '-'), e = digits(s, n, i);
  if (e == i || (s[i] == '0' && e > i + 1)) return "invalid JSON (bad number)";
  bool whole = true;
  if (e < n && s[e] == '.') {
    size_t f = digits(s, n, e + 1);
    if (f == e + 1) return "invalid JSON (bad number)";
    e = f, whole = false;
  }
  if (e < n && (s[e] == 'e' || s[e] == 'E')) {
    size_t x = e + 1 + (e + 1 < n && (s[e + 1] == '+' || s[e + 1] == '-')), f = digits(s, n, x);
    if (f == x) return "invalid JSON (bad number)";
    e = f, whole = false;
  }
  *at = e;
  if (integer) *integer = whole;
  return NULL;
}

bool jsonl_enter(const char *s, size_t n, size_t *i) {
  char close = s[(*i)++] == '[' ? ']' : '}';
  jsonl_ws(s, n, i);
  if (*i < n && s[*i] == close) {
    ++*i;
    return false;
  }
  return true;
}

const char *jsonl_next(const char *s, size_t n, size_t *i, char close, bool *more) {
  jsonl_ws(s, n, i);
  *more = *i < n && s[*i] == ',';
  if (*i < n && (*more || s[*i] == close)) {
    ++*i;
    return NULL;
  }
  return close == '}' ? "invalid JSON (expected ',' or '}')" : "invalid JSON (expected ',' or ']')";
}

static const char *skip(const char *s, size_t n, size_t *i, int depth) {
  jsonl_ws(s, n, i);
  if (*i == n) return "invalid JSON (a value is missing)";
  char c = s[*i];
  if (c == '"') return jsonl_string(s, n, i, NULL, NULL);
  if (c == '-' || (c >= '0' && c <= '9')) return jsonl_number(s, n, i, NULL);
  static const char *const lits[] = {"true", "false", "null"};
  for (int k = 0; k < 3; k++) {
    size_t m = strlen(lits[k]);
    if (n - *i >= m && memcmp(s + *i, lits[k], m) == 0) {
      *i += m;
      return NULL;
    }
  }
  if (c != '[' && c != '{') return "invalid JSON";
  if (depth == MAX_DEPTH) return "invalid JSON (nested too deep)";
  char close = c == '[' ? ']' : '}';
  for (bool more = jsonl_enter(s, n, i); more;) {
    const char *why;
    if (close == '}') { /* "key": */
      jsonl_ws(s, n, i);
      if (*i == n || s[*i] != '"') return "invalid JSON (expected a key)";
      if ((why = jsonl_string(s, n, i, NULL, NULL))) return why;
      jsonl_ws(s, n, i);
      if (*i == n || s[(*i)++] != ':') return "invalid JSON (expected ':')";
    }
    if ((why = skip(s, n, i, depth + 1)) || (why = jsonl_next(s, n, i, close, &more))) return why;
  }
  return NULL;
}

const char *jsonl_skip(const char *s, size_t n, size_t *i) { return skip(s, n, i, 0); }

const char *jsonl_line_string(const char *s, size_t n, char *out, size_t *len) {
  size_t i = 0;
  jsonl_ws(s, n, &i);
  if (i == n || s[i] != '"') return "expected a JSON string";
  const char *why = jsonl_string(s, n, &i, out, len);
  if (why) return why;
  jsonl_ws(s, n, &i);
  return i == n ? NULL : "invalid JSON (text after the string)";
}

void jsonl_error(FILE *f, size_t line, const char *fmt, ...) {
  char msg[640];
  int n = snprintf(msg, sizeof msg, "line %zu: ", line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
  va_end(ap);
  fputs("{\"error\":", f);
  cli_json_str(f, msg, strlen(msg));
  fputs("}\n", f);
}
