/* Native chat templates (see chat.h): each template is a function that walks
 * the messages as its Jinja source does and appends the same strings.
 *
 * Invariants: every string that reaches a renderer is valid UTF-8 (checked
 * first), so byte-wise searches and '\n' strips equal Python's code-point
 * ones; the Python str.strip()/rstrip() that continue_final needs are
 * applied per code point with Python's whitespace set. Renderers never fail
 * except for memory; all refusals happen before rendering starts. */
#include "chat.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- names, detection ---- */

static const char *const k_template_names[] = {"unknown", "qwen3", "smollm2", "chatml"};
static const char *const k_role_names[CHAT_N_ROLES] = {"system", "user", "assistant", "tool"};

const char *chat_template_name(chat_template t) {
  return (unsigned)t < sizeof k_template_names / sizeof *k_template_names ? k_template_names[t]
                                                                          : "unknown";
}

bl_status chat_template_parse(const char *name, chat_template *out, bl_err *err) {
  for (int t = CHAT_QWEN3; t <= CHAT_CHATML; t++)
    if (name && !strcmp(name, k_template_names[t])) {
      *out = (chat_template)t;
      return BL_OK;
    }
  return bl_fail(err, BL_EINVAL, "chat template \"%s\" is not one of qwen3, smollm2, chatml",
                 name ? name : "(null)");
}

const char *chat_role_name(chat_role r) {
  return (unsigned)r < CHAT_N_ROLES ? k_role_names[r] : NULL;
}

/* FNV-1a, 64-bit: identifies a template source exactly. */
static uint64_t fnv1a64(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
  return h;
}

/* Template sources rendered here, by length and hash of their exact bytes. */
static const struct known_src {
  chat_template t;
  size_t len;
  uint64_t fnv;
} k_known[] = {
    /* Qwen/Qwen3-* tokenizer_config.json chat_template (the April 2025 releases) */
    {CHAT_QWEN3, 4116, 0x2bfdb7aa9754484eull},
    /* HuggingFaceTB/SmolLM2-*-Instruct (GGUF tokenizer.chat_template) */
    {CHAT_SMOLLM2, 368, 0x45ec583d4d25bc3aull},
    /* the classic ChatML template of Hugging Face model cards */
    {CHAT_CHATML, 199, 0xa41d6bae9b9141bcull},
};

chat_template chat_template_detect(const char *src, const char *arch) {
  if (!src) return arch && !strcmp(arch, "qwen3") ? CHAT_QWEN3 : CHAT_CHATML;
  size_t n = strlen(src);
  uint64_t h = fnv1a64(src, n);
  for (size_t i = 0; i < sizeof k_known / sizeof *k_known; i++)
    if (k_known[i].len == n && k_known[i].fnv == h) return k_known[i].t;
  return CHAT_UNKNOWN;
}

/* ---- strings ---- */

typedef struct span {
  const char *p;
  size_t n;
} span;

static span S(const char *s) { return (span){s, strlen(s)}; }

static const char *find(span h, const char *needle) {
  size_t k = strlen(needle);
  return k <= h.n ? memmem(h.p, h.n, needle, k) : NULL;
}

static const char *rfind(span h, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = h.n; i >= k && k; i--)
    if (!memcmp(h.p + i - k, needle, k)) return h.p + i - k;
  return NULL;
}

static bool starts_with(span s, const char *pfx) {
  size_t k = strlen(pfx);
  return s.n >= k && !memcmp(s.p, pfx, k);
}

static bool ends_with(span s, const char *sfx) {
  size_t k = strlen(sfx);
  return s.n >= k && !memcmp(s.p + s.n - k, sfx, k);
}

/* Python's str.lstrip('\n') / rstrip('\n'). */
static span lstrip_nl(span s) {
  while (s.n && s.p[0] == '\n')
    s.p++, s.n--;
  return s;
}

static span rstrip_nl(span s) {
  while (s.n && s.p[s.n - 1] == '\n')
    s.n--;
  return s;
}

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs
 * (the set has not changed across the Unicode versions Python ships). */
static bool py_isspace(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/* Python's str.strip() / rstrip() (no argument) on valid UTF-8. */
static span py_rstrip(span s) {
  while (s.n) {
    size_t b = s.n - 1;
    while (b && ((uint8_t)s.p[b] & 0xC0) == 0x80)
      b--;
    utf8proc_int32_t c;
    utf8proc_iterate((const utf8proc_uint8_t *)s.p + b, (utf8proc_ssize_t)(s.n - b), &c);
    if (!py_isspace(c)) break;
    s.n = b;
  }
  return s;
}

static span py_strip(span s) {
  while (s.n) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s.p, (utf8proc_ssize_t)s.n, &c);
    if (k <= 0 || !py_isspace(c)) break;
    s.p += k, s.n -= (size_t)k;
  }
  return py_rstrip(s);
}

/* Offset of the first invalid byte, or n when s is valid UTF-8. */
static size_t utf8_invalid_at(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k =
        utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (k <= 0) return i;
    i += (size_t)k;
  }
  return n;
}

/* ---- output buffer ---- */

typedef struct obuf {
  char *p;
  size_t n, cap;
  bool oom;
} obuf;

static void put(obuf *b, span s) {
  if (b->oom) return;
  if (b->n + s.n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 1024;
    while (c < b->n + s.n + 1)
      c *= 2;
    char *q = realloc(b->p, c);
    if (!q) {
      b->oom = true;
      return;
    }
    b->p = q, b->cap = c;
  }
  memcpy(b->p + b->n, s.p, s.n);
  b->n += s.n;
  b->p[b->n] = 0;
}

static void puts_(obuf *b, const char *s) { put(b, S(s)); }

static span content_of(const chat_message *m) { return (span){m->content, m->content_len}; }

/* "<|im_start|>ROLE\nCONTENT<|im_end|>\n", the turn every template shares. */
static void put_turn(obuf *b, const chat_message *m) {
  puts_(b, "<|im_start|>");
  puts_(b, k_role_names[m->role]);
  puts_(b, "\n");
  put(b, content_of(m));
  puts_(b, "<|im_end|>\n");
}

/* ---- templates ---- */

/* {% for message in messages %}<|im_start|>role\ncontent<|im_end|>\n{% endfor %}
 * + '<|im_start|>assistant\n' if add_generation_prompt. SmolLM2 first adds its
 * default system turn when messages[0] is not a system message. */
static void render_chatml(obuf *b, const chat_message *msgs, size_t n, const chat_opts *o,
                          bool smollm2) {
  if (smollm2 && msgs[0].role != CHAT_SYSTEM)
    puts_(b, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
             "Hugging Face<|im_end|>\n");
  for (size_t i = 0; i < n; i++)
    put_turn(b, &msgs[i]);
  if (o->add_generation_prompt) puts_(b, "<|im_start|>assistant\n");
}

/* Index of the last user message that is a real query (not a whole
 * "<tool_response>...</tool_response>"); n - 1 when there is none. */
static size_t qwen3_last_query(const chat_message *msgs, size_t n) {
  for (size_t i = n; i-- > 0;) {
    span c = content_of(&msgs[i]);
    if (msgs[i].role == CHAT_USER &&
        !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>")))
      return i;
  }
  return n - 1;
}

static void render_qwen3_assistant(obuf *b, const chat_message *m, bool after_query, bool last) {
  span content = content_of(m), reasoning = {"", 0};
  if (m->reasoning) {
    reasoning = (span){m->reasoning, m->reasoning_len};
  } else if (find(content, "</think>")) {
    /* content.split('</think>')[-1].lstrip('\n') and
     * content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
    const char *last_close = rfind(content, "</think>");
    span before = {content.p, (size_t)(find(content, "</think>") - content.p)};
    before = rstrip_nl(before);
    const char *open = rfind(before, "<think>");
    if (open) before = (span){open + 7, (size_t)(before.p + before.n - open - 7)};
    reasoning = lstrip_nl(before);
    content = lstrip_nl((span){last_close + 8, (size_t)(content.p + content.n - last_close - 8)});
  }
  puts_(b, "<|im_start|>assistant\n");
  if (after_query && (last || reasoning.n)) {
    puts_(b, "<think>\n");
    put(b, rstrip_nl(lstrip_nl(reasoning)));
    puts_(b, "\n</think>\n\n");
    content = lstrip_nl(content);
  }
  put(b, content);
  puts_(b, "<|im_end|>\n");
}

/* Qwen3's template without tools: see tokenizer_config.json's chat_template. */
static void render_qwen3(obuf *b, const chat_message *msgs, size_t n, const chat_opts *o) {
  if (msgs[0].role == CHAT_SYSTEM) put_turn(b, &msgs[0]);
  size_t last_query = qwen3_last_query(msgs, n);
  for (size_t i = 0; i < n; i++) {
    const chat_message *m = &msgs[i];
    switch (m->role) {
    case CHAT_SYSTEM:
      if (i > 0) put_turn(b, m);
      break;
    case CHAT_USER: put_turn(b, m); break;
    case CHAT_ASSISTANT: render_qwen3_assistant(b, m, i > last_query, i == n - 1); break;
    case CHAT_TOOL: /* consecutive tool messages share one user turn */
      if (i == 0 || msgs[i - 1].role != CHAT_TOOL) puts_(b, "<|im_start|>user");
      puts_(b, "\n<tool_response>\n");
      put(b, content_of(m));
      puts_(b, "\n</tool_response>");
      if (i == n - 1 || msgs[i + 1].role != CHAT_TOOL) puts_(b, "<|im_end|>\n");
      break;
    default: break; /* refused in check_messages */
    }
  }
  if (o->add_generation_prompt) {
    puts_(b, "<|im_start|>assistant\n");
    if (o->disable_thinking) puts_(b, "<think>\n\n</think>\n\n");
  }
}

/* ---- chat_render ---- */

static bl_status check_messages(const chat_message *msgs, size_t n, bl_err *err) {
  if (!n || !msgs) return bl_fail(err, BL_EINVAL, "chat: no messages");
  for (size_t i = 0; i < n; i++) {
    const chat_message *m = &msgs[i];
    size_t bad;
    if ((unsigned)m->role >= CHAT_N_ROLES)
      return bl_fail(err, BL_EINVAL, "chat: message %zu: role %d is not a chat role", i,
                     (int)m->role);
    if (!m->content)
      return bl_fail(err, BL_EINVAL, "chat: message %zu (%s): content is missing", i,
                     k_role_names[m->role]);
    if ((bad = utf8_invalid_at(m->content, m->content_len)) < m->content_len)
      return bl_fail(err, BL_EINVAL,
                     "chat: message %zu (%s): content is not valid UTF-8 at byte %zu", i,
                     k_role_names[m->role], bad);
    if (m->reasoning && (bad = utf8_invalid_at(m->reasoning, m->reasoning_len)) < m->reasoning_len)
      return bl_fail(err, BL_EINVAL,
                     "chat: message %zu (%s): reasoning_content is not valid UTF-8 at byte %zu", i,
                     k_role_names[m->role], bad);
  }
  return BL_OK;
}

static void render_any(chat_template t, obuf *b, const chat_message *msgs, size_t n,
                       const chat_opts *o) {
  if (t == CHAT_QWEN3)
    render_qwen3(b, msgs, n, o);
  else
    render_chatml(b, msgs, n, o, t == CHAT_SMOLLM2);
}

/* transformers' continue_final_message: the final content gets this tag
 * appended, the conversation is rendered, and the text is cut where the tag
 * starts (rstrip'd when the template ate the tag's trailing space). It
 * refuses when the stripped final content is not in the rendering. */
static const char k_continue_tag[] = "CONTINUE_FINAL_MESSAGE_TAG ";

static bl_status render_continue(chat_template t, obuf *b, const chat_message *msgs, size_t n,
                                 const chat_opts *o, bl_err *err) {
  const chat_message *fin = &msgs[n - 1];
  size_t tag_len = sizeof k_continue_tag - 1;
  chat_message *copy = malloc(n * sizeof *copy);
  char *tagged = malloc(fin->content_len + tag_len);
  if (!copy || !tagged) {
    free(copy), free(tagged);
    return bl_fail(err, BL_ENOMEM, "chat: out of memory");
  }
  memcpy(copy, msgs, n * sizeof *copy);
  memcpy(tagged, fin->content, fin->content_len);
  memcpy(tagged + fin->content_len, k_continue_tag, tag_len);
  copy[n - 1].content = tagged;
  copy[n - 1].content_len = fin->content_len + tag_len;
  render_any(t, b, copy, n, o);
  free(copy), free(tagged);
  if (b->oom) return bl_fail(err, BL_ENOMEM, "chat: out of memory");
  span text = {b->p, b->n}, want = py_strip(content_of(fin));
  const char *tag = rfind(text, "CONTINUE_FINAL_MESSAGE_TAG");
  if (!tag || (want.n && !memmem(text.p, text.n, want.p, want.n)))
    return bl_fail(err, BL_EINVAL,
                   "chat: message %zu (%s): continue_final: the %s template changes the final "
                   "message, so it cannot be continued (transformers refuses it too)",
                   n - 1, k_role_names[fin->role], chat_template_name(t));
  span head = {text.p, (size_t)(tag - text.p)};
  if ((size_t)(text.p + text.n - tag) < tag_len || memcmp(tag, k_continue_tag, tag_len))
    head = py_rstrip(head);
  b->n = head.n;
  b->p[b->n] = 0;
  return BL_OK;
}

bl_status chat_render(chat_template t, const chat_message *msgs, size_t n, const chat_opts *o,
                      char **out, size_t *len, bl_err *err) {
  static const chat_opts defaults = {0};
  if (!o) o = &defaults;
  *out = NULL;
  *len = 0;
  if (t != CHAT_QWEN3 && t != CHAT_SMOLLM2 && t != CHAT_CHATML)
    return bl_fail(err, BL_EINVAL, "chat: no template to render with (%s)", chat_template_name(t));
  if (o->continue_final && o->add_generation_prompt)
    return bl_fail(err, BL_EINVAL,
                   "chat: continue_final and add_generation_prompt are not compatible");
  bl_status st = check_messages(msgs, n, err);
  if (st) return st;
  obuf b = {0};
  if (o->continue_final) {
    st = render_continue(t, &b, msgs, n, o, err);
  } else {
    render_any(t, &b, msgs, n, o);
    if (b.oom) st = bl_fail(err, BL_ENOMEM, "chat: out of memory");
  }
  if (!st && !b.p) { /* nothing rendered: still hand back an empty string */
    b.p = calloc(1, 1);
    if (!b.p) st = bl_fail(err, BL_ENOMEM, "chat: out of memory");
  }
  if (st) {
    free(b.p);
    return st;
  }
  *out = b.p;
  *len = b.n;
  return BL_OK;
}

/* ---- JSON messages ---- */

/* Does a JSON string literal in text hold \u0000? cJSON would cut the string
 * there, and the rendering would silently differ from the caller's text. */
static bool json_has_nul_escape(const char *s, size_t n) {
  bool in_str = false;
  for (size_t i = 0; i < n; i++) {
    if (!in_str) {
      in_str = s[i] == '"';
    } else if (s[i] == '"') {
      in_str = false;
    } else if (s[i] == '\\' && i + 1 < n) {
      if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4)) return true;
      i++;
    }
  }
  return false;
}

/* The strings one message contributes, from its JSON object. */
typedef struct jmsg {
  chat_role role;
  const char *content, *reasoning; /* NUL-terminated, inside the cJSON tree */
} jmsg;

static bl_status json_message(const cJSON *o, size_t i, jmsg *m, bl_err *err) {
  if (!cJSON_IsObject(o)) return bl_fail(err, BL_EINVAL, "messages[%zu]: expected an object", i);
  /* cJSON reads the first of duplicate keys, Python's json the last: refuse
   * duplicates of the keys read here */
  static const char *const keys[] = {"role",     "content",  "tool_calls", "reasoning_content",
                                     "thinking", "reasoning"};
  int seen[6] = {0};
  for (const cJSON *a = o->child; a; a = a->next)
    for (int k = 0; k < 6; k++)
      if (a->string && !strcmp(a->string, keys[k]) && seen[k]++)
        return bl_fail(err, BL_EINVAL, "messages[%zu]: key \"%s\" appears twice", i, keys[k]);
  const cJSON *role = cJSON_GetObjectItemCaseSensitive(o, "role");
  if (!cJSON_IsString(role))
    return bl_fail(err, BL_EINVAL, "messages[%zu]: \"role\" must be a string", i);
  int r = 0;
  while (r < CHAT_N_ROLES && strcmp(role->valuestring, k_role_names[r]))
    r++;
  if (r == CHAT_N_ROLES)
    return bl_fail(err, BL_EINVAL,
                   "messages[%zu]: role \"%.64s\" is not supported (system, user, assistant, tool)",
                   i, role->valuestring);
  m->role = (chat_role)r;
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(o, "content");
  if (!content || cJSON_IsNull(content))
    return bl_fail(err, BL_EINVAL, "messages[%zu] (%s): \"content\" is missing or null", i,
                   k_role_names[r]);
  if (!cJSON_IsString(content))
    return bl_fail(err, BL_EINVAL,
                   "messages[%zu] (%s): \"content\" must be a string (content parts are not "
                   "supported)",
                   i, k_role_names[r]);
  m->content = content->valuestring;
  const cJSON *calls = cJSON_GetObjectItemCaseSensitive(o, "tool_calls");
  if (calls && !cJSON_IsNull(calls) && !(cJSON_IsArray(calls) && !cJSON_GetArraySize(calls)))
    return bl_fail(err, BL_EINVAL, "messages[%zu] (%s): \"tool_calls\" are not supported", i,
                   k_role_names[r]);
  /* transformers' reasoning aliases (keys[3..5]): the first non-null one wins */
  m->reasoning = NULL;
  for (int k = 3; k < 6 && !m->reasoning; k++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
    if (!v || cJSON_IsNull(v)) continue;
    if (!cJSON_IsString(v))
      return bl_fail(err, BL_EINVAL, "messages[%zu] (%s): \"%s\" must be a string or null", i,
                     k_role_names[r], keys[k]);
    m->reasoning = v->valuestring;
  }
  return BL_OK;
}

/* Copy s (with its NUL) to *dst and advance it; returns the copy. */
static const char *stash(char **dst, const char *s, size_t n) {
  char *p = *dst;
  memcpy(p, s, n + 1);
  *dst += n + 1;
  return p;
}

bl_status chat_parse_messages_json(const char *json, size_t len, chat_message **msgs, size_t *n,
                                   bl_err *err) {
  *msgs = NULL;
  *n = 0;
  if (!json) return bl_fail(err, BL_EINVAL, "messages: no JSON");
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  while (root && end < json + len && strchr(" \t\r\n", *end) && *end)
    end++;
  if (!root || (end < json + len && *end)) {
    cJSON_Delete(root);
    return bl_fail(err, BL_EINVAL, "messages: invalid JSON near byte %td",
                   end && end >= json && end <= json + len ? end - json : (ptrdiff_t)-1);
  }
  bl_status st = BL_OK;
  if (!cJSON_IsArray(root)) {
    st = bl_fail(err, BL_EINVAL, "messages: expected a JSON array of messages");
    goto done;
  }
  if (json_has_nul_escape(json, len)) {
    st = bl_fail(err, BL_EINVAL, "messages: \\u0000 (a NUL character) is not supported");
    goto done;
  }
  size_t count = (size_t)cJSON_GetArraySize(root), bytes = 0, i = 0;
  const cJSON *e;
  jmsg m;
  cJSON_ArrayForEach(e, root) { /* pass 1: validate and size */
    if ((st = json_message(e, i++, &m, err))) goto done;
    bytes += strlen(m.content) + 1 + (m.reasoning ? strlen(m.reasoning) + 1 : 0);
  }
  chat_message *out = malloc((count ? count : 1) * sizeof *out + bytes);
  if (!out) {
    st = bl_fail(err, BL_ENOMEM, "messages: out of memory");
    goto done;
  }
  char *strs = (char *)(out + (count ? count : 1));
  i = 0;
  cJSON_ArrayForEach(e, root) { /* pass 2: copy (cannot fail) */
    json_message(e, i, &m, NULL);
    chat_message *c = &out[i++];
    c->role = m.role;
    c->content_len = strlen(m.content);
    c->content = stash(&strs, m.content, c->content_len);
    c->reasoning_len = m.reasoning ? strlen(m.reasoning) : 0;
    c->reasoning = m.reasoning ? stash(&strs, m.reasoning, c->reasoning_len) : NULL;
  }
  *msgs = out;
  *n = count;
done:
  cJSON_Delete(root);
  return st;
}
