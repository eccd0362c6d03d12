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

#include "cli.h"
#include "cmds.h"
#include "jsonl.h"
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

static bool encode_line(const tok_tokenizer *t, const char *line, size_t n_line, size_t lineno,
                        bool special, tk_stats *s) {
  char *text = malloc(n_line + 1);
  size_t len = 0;
  const char *why = text ? jsonl_line_string(line, n_line, text, &len) : "out of memory";
  if (why) {
    jsonl_error(stdout, lineno, "%s", why);
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
    jsonl_error(stdout, lineno, "%s", err.msg);
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
    jsonl_error(stdout, lineno, "%s", j ? "expected a JSON array of token ids" : "invalid JSON");
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
      jsonl_error(stdout, lineno, "not a token id: %s", bad ? bad : "?");
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
    jsonl_error(stdout, lineno, "%s", bl_status_str(st));
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
      jsonl_error(stdout, s.lines, "%s", "invalid JSON (NUL byte)");
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
