/* `ballast tokenize`: encode JSON strings (one per line on stdin) to
 * {"ids":[...]} lines, or with --decode, id arrays to JSON strings.
 *
 * Output lines correspond one to one with input lines: a line that cannot be
 * processed (invalid JSON, invalid UTF-8, an id out of range) yields an
 * {"error":"line N: ..."} line and processing goes on; the exit status is 1
 * when any line failed. --stats reports single-thread encode throughput
 * (time inside tok_encode / tok_decode only, not JSON or I/O) on stderr. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "cli.h"
#include "cmds.h"
#include "model.h"

static const char *usage =
    "usage: ballast tokenize --tokenizer PATH [--decode] [--no-special] [--stats] < lines\n"
    "  PATH: tokenizer.json, a folder holding one, or a .gguf model file.\n"
    "  encode: each stdin line is a JSON string; prints {\"ids\":[...]} per line.\n"
    "  --decode: each line is a JSON array of ids; prints the text as a JSON string.\n"
    "  --no-special: encode special-token text (e.g. <|im_end|>) as plain text.\n"
    "  --stats: print strings, bytes and MB/s of encoding/decoding on stderr.\n";

typedef struct tk_stats {
  size_t lines, failed, bytes, tokens;
  double secs;
} tk_stats;

static void print_error(size_t line, const char *fmt, const char *detail) {
  char msg[640];
  int n = snprintf(msg, sizeof msg, "line %zu: ", line);
  snprintf(msg + n, sizeof msg - (size_t)n, fmt, detail);
  fputs("{\"error\":", stdout);
  cli_json_str(stdout, msg, strlen(msg));
  fputs("}\n", stdout);
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

/* One JSON string literal (RFC 8259) making up the whole line, decoded into
 * out (at least n bytes). Written here rather than taken from cJSON because
 * cJSON keeps strings NUL-terminated and would cut "a\u0000b" short. Raw
 * bytes are copied as they are (tok_encode checks the UTF-8); escapes must
 * be valid, lone surrogates included. NULL on success, else the reason. */
static const char *json_string(const char *s, size_t n, char *out, size_t *len) {
  size_t i = 0, o = 0;
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  while (i < n && (s[i] == ' ' || s[i] == '\t'))
    i++;
  if (i == n || s[i] != '"') return "expected a JSON string";
  for (i++; i < n && s[i] != '"'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20) return "invalid JSON (control character in a string)";
    if (c != '\\') {
      out[o++] = (char)c;
      continue;
    }
    if (++i == n) break;
    const char *simple = strchr("\"\\/bfnrt", s[i]);
    if (simple && s[i]) {
      out[o++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
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
    o += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)out + o);
  }
  if (i >= n) return "invalid JSON (unterminated string)";
  if (i + 1 != n) return "invalid JSON (text after the string)";
  *len = o;
  return NULL;
}

static bool encode_line(const tok_tokenizer *t, const char *line, size_t n_line, size_t lineno,
                        bool special, tk_stats *s) {
  char *text = malloc(n_line + 1);
  size_t len = 0;
  const char *why = text ? json_string(line, n_line, text, &len) : "out of memory";
  if (why) {
    print_error(lineno, "%s", why);
    free(text);
    return false;
  }
  int32_t *ids = NULL;
  size_t n = 0;
  bl_err err = {0};
  double t0 = cli_now();
  bl_status st = tok_encode(t, text, len, special, &ids, &n, &err);
  s->secs += cli_now() - t0;
  free(text);
  if (st) {
    print_error(lineno, "%s", err.msg);
    return false;
  }
  s->bytes += len;
  s->tokens += n;
  fputs("{\"ids\":[", stdout);
  for (size_t i = 0; i < n; i++)
    printf(i ? ",%d" : "%d", ids[i]);
  fputs("]}\n", stdout);
  free(ids);
  return true;
}

/* Decoding goes through the streaming detokenizer, so invalid UTF-8 from
 * ids that split a character comes out as U+FFFD, as HF decode does. */
static bool decode_line(const tok_tokenizer *t, const char *line, size_t lineno, tk_stats *s) {
  cJSON *j = cJSON_Parse(line);
  if (!j || !cJSON_IsArray(j)) {
    print_error(lineno, "%s", j ? "expected a JSON array of token ids" : "invalid JSON");
    cJSON_Delete(j);
    return false;
  }
  int32_t vocab = tok_vocab_size(t);
  const cJSON *e;
  cJSON_ArrayForEach(e, j) {
    double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
    size_t k;
    if (v < 0 || v >= vocab || v != (double)(int32_t)v || !tok_token_bytes(t, (int32_t)v, &k)) {
      char *bad = cJSON_PrintUnformatted(e);
      print_error(lineno, "not a token id: %s", bad ? bad : "?");
      free(bad);
      cJSON_Delete(j);
      return false;
    }
  }
  tok_stream ts = {0};
  char *buf = NULL;
  size_t len = 0, cap = 0;
  bl_status st = BL_OK;
  double t0 = cli_now();
  cJSON_ArrayForEach(e, j) {
    if (!st) st = tok_stream_push(&ts, t, (int32_t)e->valuedouble, &buf, &len, &cap);
    s->tokens++;
  }
  if (!st) st = tok_stream_flush(&ts, &buf, &len, &cap);
  s->secs += cli_now() - t0;
  cJSON_Delete(j);
  if (st) {
    free(buf);
    print_error(lineno, "%s", bl_status_str(st));
    return false;
  }
  s->bytes += len;
  cli_json_str(stdout, buf ? buf : "", len);
  fputc('\n', stdout);
  free(buf);
  return true;
}

int cmd_tokenize(int argc, char **argv) {
  cli_flag f[] = {{"--tokenizer", 1, NULL},
                  {"--decode", 0, NULL},
                  {"--no-special", 0, NULL},
                  {"--stats", 0, NULL},
                  {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("tokenize", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *path = cli_get(f, nf, "--tokenizer");
  if (!path) {
    fputs(usage, stderr);
    return 2;
  }
  bl_err err = {0};
  tok_tokenizer *t = NULL;
  if (model_load_tokenizer(path, &t, &err)) {
    fprintf(stderr, "ballast tokenize: %s\n", err.msg);
    return 1;
  }
  bool decode = cli_get(f, nf, "--decode"), special = !cli_get(f, nf, "--no-special");
  tk_stats s = {0};
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, stdin)) >= 0) {
    s.lines++;
    bool ok;
    if (decode && memchr(line, '\0', (size_t)n)) { /* cJSON would stop at the NUL */
      print_error(s.lines, "%s", "invalid JSON (NUL byte)");
      ok = false;
    } else {
      ok = decode ? decode_line(t, line, s.lines, &s)
                  : encode_line(t, line, (size_t)n, s.lines, special, &s);
    }
    if (!ok) s.failed++;
  }
  free(line);
  fflush(stdout);
  if (cli_get(f, nf, "--stats"))
    fprintf(stderr,
            "[%s %zu lines (%zu failed): %zu bytes, %zu tokens in %.3f s, %.2f MB/s, 1 thread]\n",
            decode ? "decoded" : "encoded", s.lines, s.failed, s.bytes, s.tokens, s.secs,
            s.secs > 0 ? (double)s.bytes / s.secs / 1e6 : 0.0);
  tok_free(t);
  return s.failed ? 1 : 0;
}
