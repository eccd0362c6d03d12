/* Native chat templates against transformers: every vector of
 * tests/data/chat/{qwen3,smollm2,chatml}.json (made by
 * tools/ref/make_chat_vectors.py with apply_chat_template) must render byte
 * for byte, or be refused where transformers refused it. Messages go through
 * chat_parse_messages_json, and again as length-delimited strings that are
 * not NUL-terminated. Also: refusals (bad JSON, unknown roles, tool calls,
 * invalid UTF-8, ...), template names, and detection from the real template
 * sources (each vector file's "template", Qwen3's tokenizer_config.json
 * through the tokenizer, and the SmolLM2 GGUF when $BALLAST_SMOLLM2_GGUF is
 * set). Paths: $BALLAST_CHAT_DATA (the vector folder), $BALLAST_QWEN3_TOKENIZER. */
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "chat.h"
#include "gguf.h"
#include "t.h"
#include "t_file.h"
#include "tokenizer.h"

/* Print s[at - 40 .. at + 40) with escapes and a <<HERE>> mark before byte at. */
static void show(const char *label, const char *s, size_t n, size_t at) {
  size_t lo = at > 40 ? at - 40 : 0, hi = at + 40 < n ? at + 40 : n;
  fprintf(stderr, "    %s[%zu..%zu): \"", label, lo, hi);
  for (size_t i = lo; i < hi; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i == at) fputs("<<HERE>>", stderr);
    if (c == '\n')
      fputs("\\n", stderr);
    else if (c == '\t')
      fputs("\\t", stderr);
    else if (c == '\r')
      fputs("\\r", stderr);
    else if (c < 0x20)
      fprintf(stderr, "\\x%02x", c);
    else
      fputc(c, stderr);
  }
  fputs("\"\n", stderr);
}

/* Compare and, on a mismatch, report where the texts first differ. */
static bool same_text(const char *name, const char *got, size_t got_n, const char *want,
                      size_t want_n) {
  size_t i = 0;
  while (i < got_n && i < want_n && got[i] == want[i])
    i++;
  if (i == got_n && i == want_n) return true;
  fprintf(stderr, "  %s: differs at byte %zu (got %zu bytes, want %zu)\n", name, i, got_n, want_n);
  show("got ", got, got_n, i);
  show("want", want, want_n, i);
  return false;
}

static bool jbool(const cJSON *o, const char *k) {
  return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, k));
}

/* The same messages with every string moved into a buffer followed by junk,
 * so a renderer that reads past a length shows it. */
static chat_message *unterminated_copy(const chat_message *m, size_t n, char **arena) {
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += m[i].content_len + m[i].reasoning_len + 2;
  chat_message *c = malloc(n * sizeof *c);
  char *p = *arena = malloc(bytes + 1);
  if (!c || !p) abort();
  memset(p, '#', bytes + 1);
  for (size_t i = 0; i < n; i++) {
    c[i] = m[i];
    c[i].content = memcpy(p, m[i].content, m[i].content_len), p += m[i].content_len + 1;
    if (m[i].reasoning)
      c[i].reasoning = memcpy(p, m[i].reasoning, m[i].reasoning_len), p += m[i].reasoning_len + 1;
  }
  return c;
}

/* One vector: {"messages", "add_generation_prompt", "continue_final_message",
 * ["enable_thinking"], "expected" | "error"}. Returns true when it matched. */
static bool run_vector(chat_template t, const cJSON *v) {
  const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "name"));
  const cJSON *expected = cJSON_GetObjectItemCaseSensitive(v, "expected");
  const cJSON *think = cJSON_GetObjectItemCaseSensitive(v, "enable_thinking");
  chat_opts o = {.add_generation_prompt = jbool(v, "add_generation_prompt"),
                 .continue_final = jbool(v, "continue_final_message"),
                 .disable_thinking = cJSON_IsFalse(think)};
  char *json = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(v, "messages"));
  chat_message *msgs = NULL;
  size_t n = 0, len = 0;
  char *out = NULL;
  bl_err err = {0};
  bool ok;
  bl_status st = chat_parse_messages_json(json, strlen(json), &msgs, &n, &err);
  if (!st) st = chat_render(t, msgs, n, &o, &out, &len, &err);
  if (!cJSON_IsString(expected)) { /* transformers refused it: so must we */
    ok = st == BL_EINVAL && !out;
    if (!ok) fprintf(stderr, "  %s: rendered, but transformers refused it\n", name);
  } else if (st) {
    fprintf(stderr, "  %s: refused: %s\n", name, err.msg);
    ok = false;
  } else {
    const char *want = expected->valuestring;
    ok = same_text(name, out, len, want, strlen(want)) && out[len] == 0;
    char *arena, *out2 = NULL;
    size_t len2 = 0;
    chat_message *copy = unterminated_copy(msgs, n, &arena);
    if (chat_render(t, copy, n, &o, &out2, &len2, &err) || !same_text(name, out2, len2, out, len)) {
      fprintf(stderr, "  %s: differs when the strings are not NUL-terminated\n", name);
      ok = false;
    }
    free(copy), free(arena), free(out2);
  }
  free(out), free(msgs), free(json);
  return ok;
}

static void run_file(const char *dir, const char *file, chat_template t, const char *arch) {
  char path[4096];
  size_t n = 0;
  snprintf(path, sizeof path, "%s/%s", dir, file);
  char *text = (char *)read_file(path, &n);
  T_CHECKF(text != NULL, "%s: cannot read (set BALLAST_CHAT_DATA)", path);
  if (!text) return;
  cJSON *root = cJSON_ParseWithLength(text, n);
  const cJSON *vecs = cJSON_GetObjectItemCaseSensitive(root, "vectors"), *v;
  const char *tmpl = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "template"));
  T_CHECKF(cJSON_IsArray(vecs) && tmpl, "%s: no vectors or template", path);
  T_CHECKF(chat_template_detect(tmpl, arch) == t, "%s: template detected as %s", path,
           chat_template_name(chat_template_detect(tmpl, arch)));
  int total = 0, matched = 0, refused = 0;
  cJSON_ArrayForEach(v, vecs) {
    bool ok = run_vector(t, v);
    total++, matched += ok;
    refused += ok && !cJSON_GetObjectItemCaseSensitive(v, "expected");
    T_CHECK(ok);
  }
  T_CHECKF(total >= 24, "%s: only %d vectors", path, total);
  fprintf(stderr, "%s: %d/%d vectors match (%d refused as transformers refuses)\n", file, matched,
          total, refused);
  cJSON_Delete(root);
  free(text);
}

/* Parsing JSON must fail with BL_EINVAL and a message holding want. */
static void parse_fails(const char *json, const char *want) {
  chat_message *m = (chat_message *)1;
  size_t n = 1;
  bl_err err = {0};
  bl_status st = chat_parse_messages_json(json, strlen(json), &m, &n, &err);
  T_CHECKF(st == BL_EINVAL && !m && !n && strstr(err.msg, want), "%s -> %d \"%s\" (want \"%s\")",
           json, st, err.msg, want);
}

/* Rendering must fail with BL_EINVAL and a message holding want. */
static void render_fails(chat_template t, const chat_message *m, size_t n, const chat_opts *o,
                         const char *want) {
  char *out = (char *)1;
  size_t len = 1;
  bl_err err = {0};
  bl_status st = chat_render(t, m, n, o, &out, &len, &err);
  T_CHECKF(st == BL_EINVAL && !out && !len && strstr(err.msg, want), "-> %d \"%s\" (want \"%s\")",
           st, err.msg, want);
}

static void test_refusals(void) {
  parse_fails("[{\"role\": \"user\", \"content\": \"hi\"", "invalid JSON");
  parse_fails("[{\"role\": \"user\", \"content\": \"hi\"}] trailing", "invalid JSON near byte 36");
  parse_fails("{\"role\": \"user\", \"content\": \"hi\"}", "expected a JSON array");
  parse_fails("[\"hi\"]", "messages[0]: expected an object");
  parse_fails("[{\"role\": \"user\", \"content\": \"a\"}, {\"content\": \"b\"}]",
              "messages[1]: \"role\" must be a string");
  parse_fails("[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"developer\", \"content\": "
              "\"b\"}]",
              "messages[1]: role \"developer\" is not supported");
  parse_fails("[{\"role\": 3, \"content\": \"a\"}]", "messages[0]: \"role\" must be a string");
  parse_fails("[{\"role\": \"user\"}]", "messages[0] (user): \"content\" is missing or null");
  parse_fails("[{\"role\": \"assistant\", \"content\": null}]", "\"content\" is missing or null");
  parse_fails("[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"hi\"}]}]",
              "content parts are not supported");
  parse_fails("[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": "
              "\"\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {}}}]}]",
              "messages[1] (assistant): \"tool_calls\" are not supported");
  parse_fails("[{\"role\": \"assistant\", \"content\": \"a\", \"reasoning_content\": 5}]",
              "\"reasoning_content\" must be a string or null");
  parse_fails("[{\"role\": \"user\", \"content\": \"a\", \"content\": \"b\"}]",
              "key \"content\" appears twice");
  parse_fails("[{\"role\": \"user\", \"content\": \"a\\u0000b\"}]", "NUL character");
  parse_fails("", "invalid JSON");

  /* accepted: an escaped backslash before u0000, ignored keys, empty tool_calls */
  const char *okj = "[{\"role\": \"user\", \"content\": \"a\\\\u0000\", \"name\": \"x\"}, "
                    "{\"role\": \"assistant\", \"content\": \"b\", \"tool_calls\": []}]";
  chat_message *m = NULL;
  size_t n = 0;
  bl_err err = {0};
  T_CHECKF(!chat_parse_messages_json(okj, strlen(okj), &m, &n, &err) && n == 2, "%s", err.msg);
  if (m) T_CHECK(m[0].content_len == 7 && !memcmp(m[0].content, "a\\u0000", 7) && !m[1].reasoning);
  free(m);

  chat_message good[2] = {{CHAT_USER, "hi", 2, NULL, 0}, {CHAT_ASSISTANT, "ok", 2, NULL, 0}};
  chat_message bad_role[2] = {good[0], {(chat_role)7, "x", 1, NULL, 0}};
  chat_message no_content[2] = {good[0], {CHAT_ASSISTANT, NULL, 0, NULL, 0}};
  chat_message bad_utf8[2] = {good[0], {CHAT_USER, "ok \xc3\x28", 5, NULL, 0}};
  chat_message bad_reason[2] = {good[0], {CHAT_ASSISTANT, "ok", 2, "\xed\xa0\x80", 3}};
  chat_opts both = {.add_generation_prompt = true, .continue_final = true};
  for (chat_template t = CHAT_QWEN3; t <= CHAT_CHATML; t++) {
    render_fails(t, good, 0, NULL, "no messages");
    render_fails(t, bad_role, 2, NULL, "message 1: role 7 is not a chat role");
    render_fails(t, no_content, 2, NULL, "message 1 (assistant): content is missing");
    render_fails(t, bad_utf8, 2, NULL, "message 1 (user): content is not valid UTF-8 at byte 3");
    render_fails(t, bad_reason, 2, NULL, "message 1 (assistant): reasoning_content is not valid");
    render_fails(t, good, 2, &both, "not compatible");
  }
  chat_message inline_think[2] = {good[0], {CHAT_ASSISTANT, "<think>r</think>a", 17, NULL, 0}};
  render_fails(CHAT_QWEN3, inline_think, 2, &(chat_opts){.continue_final = true},
               "message 1 (assistant): continue_final");
  render_fails(CHAT_UNKNOWN, good, 2, NULL, "no template");

  /* NULL options are transformers' defaults */
  char *a = NULL, *b = NULL;
  size_t la = 0, lb = 0;
  T_CHECK(!chat_render(CHAT_QWEN3, good, 2, NULL, &a, &la, &err));
  T_CHECK(!chat_render(CHAT_QWEN3, good, 2, &(chat_opts){0}, &b, &lb, &err));
  T_CHECK(a && b && la == lb && !memcmp(a, b, la));
  free(a), free(b);
}

static void test_names(void) {
  chat_template t = CHAT_UNKNOWN;
  bl_err err = {0};
  for (chat_template k = CHAT_QWEN3; k <= CHAT_CHATML; k++)
    T_CHECK(!chat_template_parse(chat_template_name(k), &t, &err) && t == k);
  T_CHECK(chat_template_parse("jinja", &t, &err) == BL_EINVAL && strstr(err.msg, "\"jinja\""));
  T_CHECK(chat_template_parse(NULL, &t, &err) == BL_EINVAL);
  T_CHECK(!strcmp(chat_template_name(CHAT_UNKNOWN), "unknown"));
  T_CHECK(!strcmp(chat_role_name(CHAT_TOOL), "tool") && !chat_role_name(CHAT_N_ROLES));
  /* without a source: by architecture */
  T_CHECK(chat_template_detect(NULL, "qwen3") == CHAT_QWEN3);
  T_CHECK(chat_template_detect(NULL, "llama") == CHAT_CHATML);
  T_CHECK(chat_template_detect(NULL, NULL) == CHAT_CHATML);
  T_CHECK(chat_template_detect("", "qwen3") == CHAT_UNKNOWN);
  T_CHECK(chat_template_detect("{{ messages }}", "llama") == CHAT_UNKNOWN);
}

/* Detection from the template a loaded tokenizer / the GGUF carries. */
static void test_real_sources(void) {
  const char *qwen = getenv("BALLAST_QWEN3_TOKENIZER");
  if (qwen) {
    tok_tokenizer *tk = NULL;
    bl_err err = {0};
    T_CHECKF(!tok_load_json(qwen, &tk, &err), "%s", err.msg);
    const char *src = tk ? tok_chat_template(tk) : NULL;
    T_CHECK(src && chat_template_detect(src, "qwen3") == CHAT_QWEN3);
    /* a one-byte change is not the template rendered here */
    char *edited = src ? strdup(src) : NULL;
    if (edited) {
      edited[strlen(edited) / 2] ^= 1;
      T_CHECK(chat_template_detect(edited, "qwen3") == CHAT_UNKNOWN);
    }
    free(edited);
    tok_free(tk);
  } else {
    fprintf(stderr, "BALLAST_QWEN3_TOKENIZER unset: skipping the tokenizer_config.json check\n");
  }
  const char *gg = getenv("BALLAST_SMOLLM2_GGUF");
  if (gg) {
    gguf_file *f = NULL;
    gguf_str s = {0};
    bl_err err = {0};
    T_CHECKF(!gguf_open(gg, &f, &err), "%s", err.msg);
    T_CHECKF(f && !gguf_get_str(f, "tokenizer.chat_template", &s, &err), "%s", err.msg);
    char *src = s.ptr ? strndup(s.ptr, s.len) : NULL;
    T_CHECK(src && chat_template_detect(src, "llama") == CHAT_SMOLLM2);
    free(src);
    gguf_close(f);
  } else {
    fprintf(stderr, "BALLAST_SMOLLM2_GGUF unset: skipping the GGUF template check\n");
  }
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : getenv("BALLAST_CHAT_DATA");
  if (!dir) dir = "tests/data/chat";
  run_file(dir, "qwen3.json", CHAT_QWEN3, "qwen3");
  run_file(dir, "smollm2.json", CHAT_SMOLLM2, "llama");
  run_file(dir, "chatml.json", CHAT_CHATML, "llama");
  test_refusals();
  test_names();
  test_real_sources();
  return T_DONE();
}
