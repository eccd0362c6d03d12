/* The daemon's configuration, parsed from a libconfig file into one immutable
 * bd_config.
 *
 * Every scalar key is a row of `bd_config_rows` below (key path, type, offset
 * into bd_config, bounds, default, flags, help). Defaults, parsing, the
 * restart-required diff, and in bd_config_view.c the JSON view and the
 * Markdown reference all walk that one table, so a key added there is parsed,
 * documented and reported everywhere. The row type is in bd_config_internal.h.
 * The two pools share their rows through POOL_ROWS. Named policies are a list
 * of groups, described by `bd_config_policy_rows` in the same shape and built
 * on sched_policy_builtin(base).
 *
 * Parsing order (the first error wins): libconfig syntax, unknown keys and
 * non-group groups (a walk of the whole tree, so typos anywhere are caught),
 * each row's type and range, required keys, policies, then checks between
 * keys. Every error names file, line and key: "FILE:LINE: key: reason".
 * The bd_config owns every string in it (malloc'd); bd_config_free frees
 * them through the table. */
#include "bd_config.h"

#include <errno.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bd_config_internal.h"

/* ---- the table ------------------------------------------------------- */

#define OFF(f) offsetof(bd_config, f)
#define STR(k, f, d, fl, h)                                                                        \
  { .key = k, .type = K_STR, .off = OFF(f), .def_s = d, .flags = fl, .help = h }
#define ENUM(k, f, d, ch, fl, h)                                                                   \
  { .key = k, .type = K_ENUM, .off = OFF(f), .def_s = d, .choices = ch, .flags = fl, .help = h }
#define ADDR(k, f, d, fl, h)                                                                       \
  { .key = k, .type = K_ADDR, .off = OFF(f), .def_s = d, .flags = fl, .help = h }
#define INT(k, f, lo, hi, d, fl, h)                                                                \
  { .key = k, .type = K_INT, .off = OFF(f), .min = lo, .max = hi, .def = d, .flags = fl, .help = h }
#define DBL(k, f, lo, hi, d, fl, h)                                                                \
  { .key = k, .type = K_DBL, .off = OFF(f), .min = lo, .max = hi, .def = d, .flags = fl, .help = h }
#define BOOL(k, f, d, fl, h)                                                                       \
  { .key = k, .type = K_BOOL, .off = OFF(f), .def = d, .flags = fl, .help = h }
#define INTS(k, f, fn, lo, hi, d, fl, h)                                                           \
  {                                                                                                \
    .key = k, .type = K_INTS, .off = OFF(f), .off_n = OFF(fn), .min = lo, .max = hi, .def = d,     \
    .flags = fl, .help = h                                                                         \
  }

#define MIB (1 << 20)
#define GIB (1 << 30)

/* One pool's rows; G is its group name, P its bd_config member. */
#define POOL_ROWS(G, P, PREC)                                                                      \
  STR("pools." G ".model", P.model, NULL, F_RESTART | F_REQUIRED,                                  \
      "GGUF file, or a safetensors / GPTQ folder (from `ballast quantize`)."),                     \
      STR("pools." G ".tokenizer", P.tokenizer, NULL, F_RESTART,                                   \
          "tokenizer.json, a folder holding one, or a .gguf; unset: the model's own."),            \
      ENUM("pools." G ".precision", P.precision, PREC, "fp16|w4|w2", F_RESTART,                    \
           "Precision of the linear layers; a model stored with more bits is quantized at load."), \
      ENUM("pools." G ".device", P.device, "cpu", "cpu|cuda", F_RESTART, "Backend."),              \
      INTS("pools." G ".devices", P.devices, P.n_devices, 0, 63, 0, F_RESTART,                     \
           "GPU ids for device cuda, counted within CUDA_VISIBLE_DEVICES, each once: "             \
           "tensor_parallel per replica, replica 0's first."),                                     \
      INT("pools." G ".replicas", P.replicas, 1, BD_MAX_DEVICES, 1, F_RESTART,                     \
          "Data-parallel replicas: copies of the model, each with its own scheduler thread and "   \
          "KV cache (kv_blocks or kv_budget_mb each) on its own device; a request goes to the "    \
          "least loaded healthy one. Several on device cpu share its cores (threads each)."),      \
      INT("pools." G ".tensor_parallel", P.tensor_parallel, 1, BD_MAX_DEVICES, 1, F_RESTART,       \
          "Backends one replica's model is split across (tensor parallelism): heads, kv heads "    \
          "and intermediate width must divide by it; the shards sum their attention and MLP "      \
          "outputs with NCCL, or through the host on device cpu or without NCCL. "                 \
          "replicas x tensor_parallel is at most 8."),                                             \
      INT("pools." G ".threads", P.threads, 0, 1024, 0, F_RESTART,                                 \
          "CPU threads; 0: one per core."),                                                        \
      ENUM("pools." G ".kv_format", P.kv_format, "fp16", "fp16|fp8|nvfp4", F_RESTART,              \
           "Element format of the KV cache."),                                                     \
      INT("pools." G ".kv_blocks", P.kv_blocks, 0, 1 << 24, 0, F_RESTART,                          \
          "KV blocks; 0: as many as kv_budget_mb holds."),                                         \
      INT("pools." G ".kv_budget_mb", P.kv_budget_mb, 1, MIB, 256, F_RESTART,                      \
          "KV-cache memory in MiB, used when kv_blocks is 0."),                                    \
      INT("pools." G ".block_size", P.block_size, 1, 1024, 16, F_RESTART, "Tokens per KV block."), \
      INT("pools." G ".max_num_seqs", P.max_num_seqs, 1, 4096, 64, F_RESTART,                      \
          "Sequences running at once in this pool."),                                              \
      INT("pools." G ".max_batched_tokens", P.max_batched_tokens, 1, MIB, 512, F_RESTART,          \
          "Tokens per scheduler step (prefill chunks and decodes together)."),                     \
      BOOL("pools." G ".prefix_cache", P.prefix_cache, true, F_RESTART,                            \
           "Reuse the KV blocks of prompt prefixes shared between requests.")

const bd_row bd_config_rows[] = {
    ADDR("server.grpc_listen", grpc_listen, "127.0.0.1:50051", F_RESTART,
         "gRPC address (ballast.v1.Ballast and grpc.health.v1.Health); port 0: any free port, "
         "printed on the ready line."),
    ADDR("server.admin_listen", admin_listen, "127.0.0.1:50052", F_RESTART,
         "Admin HTTP address (/healthz, /readyz, /metrics, /v1/config, /v1/reload); port 0: any "
         "free port."),
    STR("server.admin_token", admin_token, NULL, F_SENSITIVE,
        "Bearer token for POST /v1/reload and the Reload RPC; unset: both are refused (403 / "
        "PERMISSION_DENIED)."),
    STR("server.tls_cert", tls_cert, NULL, F_RESTART,
        "PEM certificate chain for gRPC over TLS; set together with tls_key, or neither "
        "(plaintext)."),
    STR("server.tls_key", tls_key, NULL, F_RESTART, "PEM private key of tls_cert."),
    STR("server.tls_client_ca", tls_client_ca, NULL, F_RESTART,
        "PEM CA bundle; set: clients must present a certificate it signed (needs tls_cert)."),
    DBL("server.drain_timeout_s", drain_timeout_s, 0, 3600, 30, 0,
        "On SIGTERM or SIGINT, seconds running streams may take to finish before they are "
        "cancelled."),
    INT("server.grpc_threads", grpc_threads, 1, 64, 2, F_RESTART, "gRPC completion-queue threads."),
    POOL_ROWS("executor", executor, "w2"),
    POOL_ROWS("planner", planner, "fp16"),
    STR("controls.default_policy", default_policy, "rescue", 0,
        "Policy of requests that name none: a built-in (direct, rescue, plan, plan+rescue, fp16, "
        "auto) or the name of a policy below."),
    INT("controls.calibrate_tokens", calibrate_tokens, 0, 4096, 16, F_RESTART,
        "Decode tokens per calibration run at start-up (tokens/s per pool, used by the metrics "
        "and the speedup accounting); 0: skip."),
    INT("controls.max_loop_window", policy_limits.max_window, 1, MIB, 8192, 0,
        "Largest loop window a policy or a request's override may use."),
    INT("controls.max_plan_tokens", policy_limits.max_plan_tokens, 1, 65536, 1024, 0,
        "Largest plan budget a policy or a request's override may use."),
    STR("controls.plan_prompt", plan_prompt, NULL, 0,
        "Planner prompt template, with {question}; unset: the router's default."),
    STR("controls.plan_insert", plan_insert, NULL, 0,
        "Executor prompt template after a plan, with {question} and {plan}; unset: the router's "
        "default."),
    INT("limits.max_message_bytes", max_message_bytes, 1024, GIB, MIB, 0,
        "Largest request message in bytes."),
    INT("limits.max_prompt_tokens", max_prompt_tokens, 1, MIB, 4096, 0,
        "Largest prompt in tokens, after chat rendering."),
    INT("limits.max_tokens", max_tokens, 1, MIB, 4096, 0,
        "Largest max_tokens a request may ask for."),
    INT("limits.default_max_tokens", default_max_tokens, 1, MIB, 512, 0,
        "max_tokens of a request that leaves it 0; at most max_tokens."),
    INT("limits.max_streams", max_streams, 1, MIB, 1024, 0,
        "Concurrent Generate calls, server-wide; more get RESOURCE_EXHAUSTED."),
    INT("limits.stream_buffer_bytes", stream_buffer_bytes, 4096, GIB, MIB, 0,
        "Output a slow client may leave unread before its stream is cut off."),
    ENUM("logging.level", log_level, "info", "debug|info|warn|error", 0,
         "Least severe log level written to stderr (--log-level overrides it)."),
};
const size_t bd_config_n_rows = sizeof bd_config_rows / sizeof bd_config_rows[0];

/* Fields of a named policy (controls.policies), offsets into sched_policy;
 * PR_* index them. name, base and fallback are stored by hand; defaults come
 * from base (def_s "" keeps an empty name a string, reported as invalid). */
#define POFF(f) offsetof(sched_policy, f)
#define PSTR(k, h)                                                                                 \
  { .key = k, .type = K_STR, .def_s = "", .flags = F_REQUIRED, .help = h }
#define PINT(k, f, lo, hi, h)                                                                      \
  { .key = k, .type = K_INT, .off = POFF(f), .min = lo, .max = hi, .help = h }
const bd_row bd_config_policy_rows[N_PR] = {
    [PR_NAME] =
        PSTR("name", "Unique, not a built-in's name; letters, digits and _-.+, at most 31."),
    [PR_BASE] = PSTR("base", "The built-in it starts from: direct, rescue, plan, plan+rescue, fp16 "
                             "or auto (route, plan and rescue come from it)."),
    [PR_FALLBACK] = {.key = "fallback",
                     .type = K_ENUM,
                     .choices = "restart|resume",
                     .help = "On a loop with no answer to commit to: restart reruns in fp16 from "
                             "the prompt; resume continues in fp16 from the trace cut at the loop "
                             "onset."},
    [PR_INTS] = PINT("loop_window", loop.window, 1, MIB,
                     "Loop detector window in generated tokens; at most controls.max_loop_window."),
    [PR_INTS + 1] = PINT("loop_ngram", loop.ngram, 1, MIB, "n-gram length; at most loop_window."),
    [PR_INTS + 2] = PINT("loop_min_count", loop.min_count, 2, MIB,
                         "Occurrences of one n-gram inside the window that make a loop."),
    [PR_INTS + 3] = PINT("plan_max_tokens", plan_max_tokens, 1, 65536,
                         "Planner budget in tokens; at most controls.max_plan_tokens."),
    [PR_INTS + 4] = {.key = "allow_overrides",
                     .type = K_BOOL,
                     .off = POFF(allow_overrides),
                     .help = "Requests may override the loop, plan and fallback fields (within "
                             "the controls.max_* limits)."},
};

static const bd_row *find_row(const char *key) {
  for (size_t i = 0; i < bd_config_n_rows; i++)
    if (!strcmp(bd_config_rows[i].key, key)) return &bd_config_rows[i];
  return NULL;
}

/* The pool a "pools.X.key" row belongs to, else NULL. */
static const bd_pool_cfg *row_pool(const bd_config *c, const bd_row *r) {
  if (!strncmp(r->key, "pools.executor.", 15)) return &c->executor;
  if (!strncmp(r->key, "pools.planner.", 14)) return &c->planner;
  return NULL;
}

/* ---- errors ------------------------------------------------------------ */

typedef struct pctx {
  const config_t *cfg;
  const char *file; /* for messages when a setting has no source file */
  bl_err *err;
} pctx;

/* "FILE:LINE: key: reason" at setting s (NULL: line 1, the whole file). */
static bl_status fail_at(const pctx *p, const config_setting_t *s, const char *key, bl_status st,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static bl_status fail_at(const pctx *p, const config_setting_t *s, const char *key, bl_status st,
                         const char *fmt, ...) {
  char why[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  const char *file = s && config_setting_source_file(s) ? config_setting_source_file(s) : p->file;
  int line = s ? (int)config_setting_source_line(s) : 0;
  return bl_fail(p->err, st, "%s:%d: %s: %s", file, line > 0 ? line : 1, key, why);
}

/* The setting of key, or of its nearest enclosing group that exists, so an
 * error about a missing key points at the group that lacks it. */
static const config_setting_t *near(const pctx *p, const char *key) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", key);
  for (;;) {
    const config_setting_t *s = config_lookup(p->cfg, buf);
    if (s) return s;
    char *dot = strrchr(buf, '.');
    if (!dot) return NULL;
    *dot = 0;
  }
}

static const char *type_name(const config_setting_t *s) {
  static const char *const names[] = {
      [CONFIG_TYPE_GROUP] = "a group",    [CONFIG_TYPE_INT] = "an integer",
      [CONFIG_TYPE_INT64] = "an integer", [CONFIG_TYPE_FLOAT] = "a float",
      [CONFIG_TYPE_STRING] = "a string",  [CONFIG_TYPE_BOOL] = "a bool",
      [CONFIG_TYPE_ARRAY] = "an array",   [CONFIG_TYPE_LIST] = "a list"};
  int t = config_setting_type(s);
  return t > 0 && t <= CONFIG_TYPE_LIST ? names[t] : "nothing";
}

/* ---- unknown keys ------------------------------------------------------ */

/* Edit distance between short names (typo suggestions); big when too long. */
static int distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > 63 || nb > 63) return 99;
  int d[64][64];
  for (size_t i = 0; i <= na; i++)
    d[i][0] = (int)i;
  for (size_t j = 0; j <= nb; j++)
    d[0][j] = (int)j;
  for (size_t i = 1; i <= na; i++)
    for (size_t j = 1; j <= nb; j++) {
      int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
      d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
    }
  return d[na][nb];
}

/* The known name under group path closest to name (a few edits away). */
static void suggest(const char *path, const char *name, char *out, size_t cap) {
  int best = strlen(name) >= 6 ? 4 : 3; /* "policy" for "policies" is 3 edits */
  out[0] = 0;
  size_t np = strlen(path);
  for (size_t i = 0; i <= bd_config_n_rows; i++) {
    const char *key = i < bd_config_n_rows ? bd_config_rows[i].key : "controls.policies";
    if (np && (strncmp(key, path, np) || key[np] != '.')) continue;
    const char *rest = key + (np ? np + 1 : 0);
    char comp[64];
    size_t n = strcspn(rest, ".");
    if (n >= sizeof comp) continue;
    memcpy(comp, rest, n);
    comp[n] = 0;
    int d = distance(name, comp);
    if (d < best) {
      best = d;
      snprintf(out, cap, " (did you mean %s?)", comp);
    }
  }
}

/* True when some row lives under path (path names a group). */
static bool is_group(const char *path) {
  size_t n = strlen(path);
  for (size_t i = 0; i < bd_config_n_rows; i++)
    if (!strncmp(bd_config_rows[i].key, path, n) && bd_config_rows[i].key[n] == '.') return true;
  return false;
}

/* Every member of g must be a row, a known group or controls.policies. */
static bl_status check_keys(const pctx *p, const config_setting_t *g, const char *path) {
  for (int i = 0; i < config_setting_length(g); i++) {
    const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
    char key[256];
    snprintf(key, sizeof key, "%s%s%s", path, *path ? "." : "", config_setting_name(m));
    if (find_row(key) || !strcmp(key, "controls.policies")) continue;
    if (is_group(key)) {
      if (!config_setting_is_group(m))
        return fail_at(p, m, key, BL_EINVAL, "expected a group { ... }, got %s", type_name(m));
      bl_status st = check_keys(p, m, key);
      if (st) return st;
      continue;
    }
    char hint[96];
    suggest(path, config_setting_name(m), hint, sizeof hint);
    return fail_at(p, m, key, BL_EINVAL, "unknown key%s", hint);
  }
  return BL_OK;
}

/* ---- values ------------------------------------------------------------ */

typedef struct val {
  int64_t i;
  double d;
  bool b;
  const char *s; /* NULL: unset (an empty string where the default is unset) */
  int32_t ids[BD_MAX_DEVICES];
  int32_t n;
} val;

static bool in_choices(const char *choices, const char *s) {
  size_t n = strlen(s);
  for (const char *c = choices; *c;) {
    size_t m = strcspn(c, "|");
    if (m == n && !strncmp(c, s, n)) return true;
    c += m + (c[m] == '|');
  }
  return false;
}

/* HOST:PORT with a port in 0..65535 (the last colon, so [::1]:80 passes). */
static bool valid_addr(const char *s) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || !colon[1] || strlen(colon + 1) > 5) return false;
  for (const char *d = colon + 1; *d; d++)
    if (*d < '0' || *d > '9') return false;
  return atoi(colon + 1) <= 65535;
}

static bool is_int(const config_setting_t *s) {
  return config_setting_type(s) == CONFIG_TYPE_INT || config_setting_type(s) == CONFIG_TYPE_INT64;
}

static bl_status read_list(const pctx *p, const bd_row *r, const config_setting_t *s,
                           const char *key, val *v) {
  int n = config_setting_length(s);
  if (n < 1 || n > BD_MAX_DEVICES)
    return fail_at(p, s, key, BL_ERANGE, "%d entries: expected 1 to %d", n, BD_MAX_DEVICES);
  for (int i = 0; i < n; i++) {
    const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
    if (!is_int(e))
      return fail_at(p, e, key, BL_EINVAL, "entry %d: expected an integer, got %s", i,
                     type_name(e));
    long long x = config_setting_get_int64(e);
    if (x < r->min || x > r->max)
      return fail_at(p, e, key, BL_ERANGE, "entry %d: %lld is out of range [%g, %g]", i, x, r->min,
                     r->max);
    v->ids[i] = (int32_t)x;
  }
  v->n = n;
  return BL_OK;
}

static bl_status read_string(const pctx *p, const bd_row *r, const config_setting_t *s,
                             const char *key, val *v) {
  if (config_setting_type(s) != CONFIG_TYPE_STRING)
    return fail_at(p, s, key, BL_EINVAL, "expected a string, got %s", type_name(s));
  v->s = config_setting_get_string(s);
  if (!*v->s && !r->def_s && r->type == K_STR) v->s = NULL;
  if (r->type == K_ENUM && !in_choices(r->choices, v->s))
    return fail_at(p, s, key, BL_EINVAL, "\"%s\": expected one of %s", v->s, r->choices);
  if (r->type == K_ADDR && !valid_addr(v->s))
    return fail_at(p, s, key, BL_EINVAL, "\"%s\": expected HOST:PORT with a port in 0..65535",
                   v->s);
  return BL_OK;
}

/* Type- and range-check setting s against row r into v. */
static bl_status read_value(const pctx *p, const bd_row *r, const config_setting_t *s,
                            const char *key, val *v) {
  *v = (val){0};
  switch (r->type) {
  case K_STR:
  case K_ENUM:
  case K_ADDR: return read_string(p, r, s, key, v);
  case K_INT:
    if (!is_int(s))
      return fail_at(p, s, key, BL_EINVAL, "expected an integer, got %s", type_name(s));
    v->i = config_setting_get_int64(s);
    if (v->i < r->min || v->i > r->max)
      return fail_at(p, s, key, BL_ERANGE, "%lld is out of range [%.0f, %.0f]", (long long)v->i,
                     r->min, r->max);
    return BL_OK;
  case K_DBL:
    if (!is_int(s) && config_setting_type(s) != CONFIG_TYPE_FLOAT)
      return fail_at(p, s, key, BL_EINVAL, "expected a number, got %s", type_name(s));
    v->d = is_int(s) ? (double)config_setting_get_int64(s) : config_setting_get_float(s);
    if (!(v->d >= r->min && v->d <= r->max))
      return fail_at(p, s, key, BL_ERANGE, "%g is out of range [%g, %g]", v->d, r->min, r->max);
    return BL_OK;
  case K_BOOL:
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
      return fail_at(p, s, key, BL_EINVAL, "expected true or false, got %s", type_name(s));
    v->b = config_setting_get_bool(s);
    return BL_OK;
  case K_INTS:
    if (!config_setting_is_array(s) && !config_setting_is_list(s))
      return fail_at(p, s, key, BL_EINVAL, "expected a list of integers [0, 1], got %s",
                     type_name(s));
    return read_list(p, r, s, key, v);
  }
  return BL_OK;
}

/* Replace a string field (the old value is freed); s NULL unsets it. */
static bool set_str(char **dst, const char *s) {
  char *copy = s ? strdup(s) : NULL;
  if (s && !copy) return false;
  free(*dst);
  *dst = copy;
  return true;
}

static bool store(bd_config *c, const bd_row *r, const val *v) {
  void *f = field(c, r);
  switch (r->type) {
  case K_STR:
  case K_ENUM:
  case K_ADDR: return set_str(f, v->s);
  case K_INT: *(int32_t *)f = (int32_t)v->i; return true;
  case K_DBL: *(double *)f = v->d; return true;
  case K_BOOL: *(bool *)f = v->b; return true;
  case K_INTS:
    memcpy(f, v->ids, sizeof v->ids);
    *(int32_t *)((char *)c + r->off_n) = v->n;
    return true;
  }
  return true;
}

static bool set_defaults(bd_config *c) {
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const bd_row *r = &bd_config_rows[i];
    val v = {.i = (int64_t)r->def, .d = r->def, .b = r->def != 0, .s = r->def_s, .n = 1};
    v.ids[0] = (int32_t)r->def;
    if (!store(c, r, &v)) return false;
  }
  return true;
}

/* ---- building ---------------------------------------------------------- */

static bl_status apply_rows(const pctx *p, bd_config *c) {
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const config_setting_t *s = config_lookup(p->cfg, bd_config_rows[i].key);
    if (!s) continue;
    val v;
    bl_status st = read_value(p, &bd_config_rows[i], s, bd_config_rows[i].key, &v);
    if (st) return st;
    if (!store(c, &bd_config_rows[i], &v))
      return fail_at(p, s, bd_config_rows[i].key, BL_ENOMEM, "out of memory");
  }
  c->executor.present = config_lookup(p->cfg, "pools.executor") != NULL;
  c->planner.present = config_lookup(p->cfg, "pools.planner") != NULL;
  if (!c->executor.present)
    return fail_at(p, near(p, "pools"), "pools.executor", BL_EINVAL,
                   "required group missing (pools: { executor: { model = \"...\"; }; };)");
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const bd_row *r = &bd_config_rows[i];
    const bd_pool_cfg *pool = row_pool(c, r);
    if (!(r->flags & F_REQUIRED) || (pool && !pool->present) || *(char *const *)cfield(c, r))
      continue;
    return fail_at(p, near(p, r->key), r->key, BL_EINVAL, "required");
  }
  return BL_OK;
}

static bool valid_name(const char *s) {
  if (!*s || strlen(s) >= SCHED_POLICY_NAME_MAX) return false;
  for (; *s; s++)
    if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
        !strchr("_-.+", *s))
      return false;
  return true;
}

/* The scheduler's list is the one list of built-ins. */
static bool is_builtin(const char *s) {
  sched_policy pol;
  return sched_policy_builtin(s, &pol, NULL) == BL_OK;
}

/* Name and base of one policy group g: the policy starts as the base. */
static bl_status policy_start(const pctx *p, const config_setting_t *g, const char *key,
                              const bd_config *c, int32_t idx, sched_policy *pol) {
  char k[300];
  val name, base;
  const config_setting_t *sn = config_setting_get_member(g, "name");
  const config_setting_t *sb = config_setting_get_member(g, "base");
  snprintf(k, sizeof k, "%s.name", key);
  if (!sn) return fail_at(p, g, k, BL_EINVAL, "required");
  bl_status st = read_value(p, &bd_config_policy_rows[PR_NAME], sn, k, &name);
  if (st) return st;
  if (!valid_name(name.s))
    return fail_at(p, sn, k, BL_EINVAL, "\"%s\": expected 1 to %d letters, digits or _-.+", name.s,
                   SCHED_POLICY_NAME_MAX - 1);
  if (is_builtin(name.s))
    return fail_at(p, sn, k, BL_EINVAL, "\"%s\" is a built-in policy; pick another name", name.s);
  for (int32_t j = 0; j < idx; j++)
    if (!strcmp(c->policies[j].name, name.s))
      return fail_at(p, sn, k, BL_EINVAL, "duplicate policy name \"%s\" (also policies[%d])",
                     name.s, (int)j);
  snprintf(k, sizeof k, "%s.base", key);
  if (!sb) return fail_at(p, g, k, BL_EINVAL, "required (a built-in policy)");
  st = read_value(p, &bd_config_policy_rows[PR_BASE], sb, k, &base);
  if (st) return st;
  if (sched_policy_builtin(base.s, pol, NULL))
    return fail_at(p, sb, k, BL_EINVAL,
                   "\"%s\": expected a built-in (direct, rescue, plan, plan+rescue, fp16, auto)",
                   base.s);
  snprintf(pol->name, sizeof pol->name, "%s", name.s);
  return BL_OK;
}

/* A policy's loop window and plan budget within the operator's limits (a
 * value the file leaves unset comes from the base). */
static bl_status check_limits(const pctx *p, const config_setting_t *g, const char *key,
                              const bd_config *c, const sched_policy *pol) {
  char k[300];
  const config_setting_t *s = config_setting_get_member(g, "loop_window");
  snprintf(k, sizeof k, "%s.loop_window", key);
  if (pol->loop.window > c->policy_limits.max_window)
    return fail_at(p, s ? s : g, k, BL_ERANGE, "%d%s is over controls.max_loop_window %d",
                   (int)pol->loop.window, s ? "" : " (the base's)",
                   (int)c->policy_limits.max_window);
  s = config_setting_get_member(g, "plan_max_tokens");
  snprintf(k, sizeof k, "%s.plan_max_tokens", key);
  if (pol->plan_max_tokens > c->policy_limits.max_plan_tokens)
    return fail_at(p, s ? s : g, k, BL_ERANGE, "%d%s is over controls.max_plan_tokens %d",
                   (int)pol->plan_max_tokens, s ? "" : " (the base's)",
                   (int)c->policy_limits.max_plan_tokens);
  return BL_OK;
}

/* One policy group: base, then its fields, then the scheduler's checks and
 * the operator's limits. */
static bl_status parse_policy(const pctx *p, const config_setting_t *g, bd_config *c, int32_t idx) {
  char key[64], k[300];
  snprintf(key, sizeof key, "controls.policies[%d]", (int)idx);
  if (!config_setting_is_group(g))
    return fail_at(p, g, key, BL_EINVAL, "expected a group { name = ...; base = ...; }, got %s",
                   type_name(g));
  for (int i = 0; i < config_setting_length(g); i++) {
    const char *name = config_setting_name(config_setting_get_elem(g, (unsigned)i));
    size_t j = 0;
    while (j < N_PR && strcmp(bd_config_policy_rows[j].key, name))
      j++;
    if (j < N_PR) continue;
    snprintf(k, sizeof k, "%s.%s", key, name);
    return fail_at(p, config_setting_get_elem(g, (unsigned)i), k, BL_EINVAL, "unknown key");
  }
  sched_policy *pol = &c->policies[idx];
  bl_status st = policy_start(p, g, key, c, idx, pol);
  for (size_t j = PR_FALLBACK; !st && j < N_PR; j++) {
    const bd_row *r = &bd_config_policy_rows[j];
    const config_setting_t *s = config_setting_get_member(g, r->key);
    val v;
    snprintf(k, sizeof k, "%s.%s", key, r->key);
    if (!s) continue; /* the base's value stays */
    if ((st = read_value(p, r, s, k, &v))) break;
    if (j == PR_FALLBACK)
      pol->fallback = !strcmp(v.s, "resume") ? SCHED_FALLBACK_RESUME : SCHED_FALLBACK_RESTART;
    else if (r->type == K_BOOL)
      *(bool *)((char *)pol + r->off) = v.b;
    else
      *(int32_t *)((char *)pol + r->off) = (int32_t)v.i;
  }
  if (st) return st;
  bl_err e = {0};
  if (sched_policy_check(pol, &e)) return fail_at(p, g, key, e.status, "%s", e.msg);
  return check_limits(p, g, key, c, pol);
}

static bl_status parse_policies(const pctx *p, bd_config *c) {
  const config_setting_t *l = config_lookup(p->cfg, "controls.policies");
  if (!l) return BL_OK;
  int n = config_setting_length(l);
  /* libconfig reads "[]" as an empty array; anything else must be a list */
  if (!config_setting_is_list(l) && !(config_setting_is_array(l) && n == 0))
    return fail_at(p, l, "controls.policies", BL_EINVAL,
                   "expected a list of groups ( { name = ...; base = ...; }, ... ), got %s",
                   type_name(l));
  if (n == 0) return BL_OK;
  c->policies = calloc((size_t)n, sizeof *c->policies);
  if (!c->policies) return fail_at(p, l, "controls.policies", BL_ENOMEM, "out of memory");
  for (int i = 0; i < n; i++) {
    bl_status st = parse_policy(p, config_setting_get_elem(l, (unsigned)i), c, i);
    if (st) return st;
    c->n_policies = i + 1;
  }
  return BL_OK;
}

/* A pool has at most BD_MAX_DEVICES backends; a cuda pool names one GPU
 * per backend (tensor_parallel per replica), each once. */
static bl_status check_devices(const pctx *p, const bd_pool_cfg *pc, const char *group) {
  if (!pc->present) return BL_OK;
  char key[48];
  int32_t need = pc->replicas * pc->tensor_parallel;
  if (need > BD_MAX_DEVICES) {
    snprintf(key, sizeof key, "pools.%s.tensor_parallel", group);
    return fail_at(p, near(p, key), key, BL_ERANGE,
                   "%d replicas of %d backends each: a pool has at most %d backends",
                   (int)pc->replicas, (int)pc->tensor_parallel, BD_MAX_DEVICES);
  }
  if (strcmp(pc->device, "cuda")) return BL_OK;
  snprintf(key, sizeof key, "pools.%s.devices", group);
  if (pc->n_devices != need)
    return fail_at(p, near(p, key), key, BL_EINVAL,
                   "lists %d GPU%s for %d replica%s of %d GPU%s each: give %d GPU ids",
                   (int)pc->n_devices, pc->n_devices == 1 ? "" : "s", (int)pc->replicas,
                   pc->replicas == 1 ? "" : "s", (int)pc->tensor_parallel,
                   pc->tensor_parallel == 1 ? "" : "s", (int)need);
  for (int32_t i = 0; i < pc->n_devices; i++)
    for (int32_t j = 0; j < i; j++)
      if (pc->devices[i] == pc->devices[j])
        return fail_at(p, near(p, key), key, BL_EINVAL,
                       "GPU %d is listed twice: two backends on one GPU would share its memory "
                       "and compute",
                       (int)pc->devices[i]);
  return BL_OK;
}

/* Checks between keys, after every key has its value. */
static bl_status cross_checks(const pctx *p, const bd_config *c) {
  bl_status st = check_devices(p, &c->executor, "executor");
  if (!st) st = check_devices(p, &c->planner, "planner");
  if (st) return st;
  if (!c->tls_cert != !c->tls_key) {
    const char *key = c->tls_cert ? "server.tls_cert" : "server.tls_key";
    return fail_at(p, near(p, key), key, BL_EINVAL,
                   "tls_cert and tls_key go together: set both or neither");
  }
  if (c->tls_client_ca && !c->tls_cert)
    return fail_at(p, near(p, "server.tls_client_ca"), "server.tls_client_ca", BL_EINVAL,
                   "client certificates need TLS: set tls_cert and tls_key");
  if (c->default_max_tokens > c->max_tokens)
    return fail_at(p, near(p, "limits.default_max_tokens"), "limits.default_max_tokens", BL_ERANGE,
                   "%d is over limits.max_tokens %d", (int)c->default_max_tokens,
                   (int)c->max_tokens);
  if (c->plan_prompt && !strstr(c->plan_prompt, "{question}"))
    return fail_at(p, near(p, "controls.plan_prompt"), "controls.plan_prompt", BL_EINVAL,
                   "the template has no {question}");
  if (c->plan_insert &&
      (!strstr(c->plan_insert, "{question}") || !strstr(c->plan_insert, "{plan}")))
    return fail_at(p, near(p, "controls.plan_insert"), "controls.plan_insert", BL_EINVAL,
                   "the template needs {question} and {plan}");
  bool known = is_builtin(c->default_policy);
  for (int32_t i = 0; !known && i < c->n_policies; i++)
    known = !strcmp(c->policies[i].name, c->default_policy);
  if (!known)
    return fail_at(p, near(p, "controls.default_policy"), "controls.default_policy", BL_EINVAL,
                   "\"%s\" is neither a built-in (direct, rescue, plan, plan+rescue, fp16, auto) "
                   "nor a policy in controls.policies",
                   c->default_policy);
  return BL_OK;
}

/* Build a bd_config from a parsed libconfig tree; file names it in errors. */
static bl_status build(const config_t *cfg, const char *file, bd_config **out, bl_err *err) {
  bd_config *c = calloc(1, sizeof *c);
  if (!c || !(c->path = strdup(file)) || !set_defaults(c)) {
    bd_config_free(c);
    return bl_fail(err, BL_ENOMEM, "%s: out of memory", file);
  }
  const pctx p = {.cfg = cfg, .file = file, .err = err};
  bl_status st = check_keys(&p, config_root_setting(cfg), "");
  if (!st) st = apply_rows(&p, c);
  if (!st) st = parse_policies(&p, c);
  if (!st) st = cross_checks(&p, c);
  if (st) {
    bd_config_free(c);
    return st;
  }
  *out = c;
  return BL_OK;
}

static bl_status syntax_error(const config_t *cfg, const char *file, bl_err *err) {
  if (config_error_type(cfg) == CONFIG_ERR_FILE_IO)
    return bl_fail(err, BL_EIO, "%s: cannot read the file", file);
  const char *f = config_error_file(cfg) ? config_error_file(cfg) : file;
  return bl_fail(err, BL_EFORMAT, "%s:%d: %s", f, config_error_line(cfg), config_error_text(cfg));
}

bl_status bd_config_load(const char *path, bd_config **out, bl_err *err) {
  *out = NULL;
  if (!path) return bl_fail(err, BL_EINVAL, "no config file given");
  /* libconfig says only "file I/O error"; fopen gives the reason */
  FILE *f = fopen(path, "r");
  if (!f) return bl_fail(err, BL_EIO, "%s: %s", path, strerror(errno));
  fclose(f);
  /* @include paths are relative to the including file's folder */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  config_t cfg;
  config_init(&cfg);
  if (slash) {
    slash[slash == dir] = 0; /* "/" stays for a file in the root */
    config_set_include_dir(&cfg, dir);
  }
  bl_status st =
      config_read_file(&cfg, path) ? build(&cfg, path, out, err) : syntax_error(&cfg, path, err);
  config_destroy(&cfg);
  return st;
}

bl_status bd_config_parse(const char *text, const char *name, bd_config **out, bl_err *err) {
  *out = NULL;
  if (!name) name = "<string>";
  config_t cfg;
  config_init(&cfg);
  bl_status st =
      config_read_string(&cfg, text) ? build(&cfg, name, out, err) : syntax_error(&cfg, name, err);
  config_destroy(&cfg);
  return st;
}

void bd_config_free(bd_config *c) {
  if (!c) return;
  for (size_t i = 0; i < bd_config_n_rows; i++)
    if (is_str(&bd_config_rows[i])) free(*(char **)field(c, &bd_config_rows[i]));
  free(c->policies);
  free(c->path);
  free(c);
}

/* ---- reload diff ------------------------------------------------------- */

static bool row_equal(const bd_config *a, const bd_config *b, const bd_row *r) {
  const void *x = cfield(a, r), *y = cfield(b, r);
  switch (r->type) {
  case K_STR:
  case K_ENUM:
  case K_ADDR: {
    const char *s = *(char *const *)x, *t = *(char *const *)y;
    return s == t || (s && t && !strcmp(s, t));
  }
  case K_INT: return *(const int32_t *)x == *(const int32_t *)y;
  case K_DBL: return *(const double *)x == *(const double *)y;
  case K_BOOL: return *(const bool *)x == *(const bool *)y;
  case K_INTS: {
    int32_t n = *(const int32_t *)((const char *)a + r->off_n);
    return n == *(const int32_t *)((const char *)b + r->off_n) &&
           !memcmp(x, y, (size_t)n * sizeof(int32_t));
  }
  }
  return true;
}

int bd_config_restart_diff(const bd_config *old, const bd_config *neu, const char **keys, int max) {
  int n = 0;
  /* a planner added or removed is one change, not one per key */
  bool planner_changed = old->planner.present != neu->planner.present;
  if (planner_changed && n++ < max) keys[n - 1] = "pools.planner";
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const bd_row *r = &bd_config_rows[i];
    if (!(r->flags & F_RESTART) || row_equal(old, neu, r)) continue;
    if (planner_changed && row_pool(old, r) == &old->planner) continue;
    if (n++ < max) keys[n - 1] = r->key;
  }
  return n;
}

bl_status bd_config_keep_restart(bd_config *neu, const bd_config *running) {
  neu->planner.present = running->planner.present;
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const bd_row *r = &bd_config_rows[i];
    if (!(r->flags & F_RESTART) || row_equal(neu, running, r)) continue;
    void *dst = field(neu, r);
    const void *src = cfield(running, r);
    if (is_str(r)) {
      const char *s = *(char *const *)src;
      char *copy = s ? strdup(s) : NULL;
      if (s && !copy) return BL_ENOMEM;
      free(*(char **)dst);
      *(char **)dst = copy;
    } else if (r->type == K_INTS) {
      int32_t n = *(const int32_t *)((const char *)running + r->off_n);
      memcpy(dst, src, (size_t)n * sizeof(int32_t));
      *(int32_t *)((char *)neu + r->off_n) = n;
    } else if (r->type == K_DBL) {
      *(double *)dst = *(const double *)src;
    } else if (r->type == K_BOOL) {
      *(bool *)dst = *(const bool *)src;
    } else {
      *(int32_t *)dst = *(const int32_t *)src;
    }
  }
  return BL_OK;
}
