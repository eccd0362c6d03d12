/* The views of a bd_config and of its key table (bd_config_internal.h): the
 * effective configuration as JSON (GET /v1/config) and docs/configuration.md
 * (ballastd --config-doc), generated from the rows so they never drift from
 * what bd_config.c parses. */
#include "bd_config.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "bd_config_internal.h"

/* ---- JSON -------------------------------------------------------------- */

/* The object for key's group, created along the way ("pools.executor.x"
 * gives root.pools.executor); *leaf is the last component. */
static cJSON *json_group(cJSON *root, const char *key, const char **leaf) {
  cJSON *o = root;
  const char *k = key;
  for (const char *dot; o && (dot = strchr(k, '.')); k = dot + 1) {
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(dot - k), k);
    cJSON *sub = cJSON_GetObjectItemCaseSensitive(o, name);
    o = sub ? sub : cJSON_AddObjectToObject(o, name);
  }
  *leaf = k;
  return o;
}

static cJSON *json_value(const bd_config *c, const bd_row *r) {
  const void *f = cfield(c, r);
  switch (r->type) {
  case K_STR:
  case K_ENUM:
  case K_ADDR: {
    const char *s = *(char *const *)f;
    if (!s) return cJSON_CreateNull();
    return cJSON_CreateString(r->flags & F_SENSITIVE ? "<redacted>" : s);
  }
  case K_INT: return cJSON_CreateNumber(*(const int32_t *)f);
  case K_DBL: return cJSON_CreateNumber(*(const double *)f);
  case K_BOOL: return cJSON_CreateBool(*(const bool *)f);
  case K_INTS: return cJSON_CreateIntArray(f, *(const int32_t *)((const char *)c + r->off_n));
  }
  return NULL;
}

/* The built-in a policy was made from (fields never change route, plan or
 * rescue, so they identify it). */
static const char *policy_base(const sched_policy *pol) {
  if (pol->route == SCHED_ROUTE_FP16) return "fp16";
  if (pol->route == SCHED_ROUTE_AUTO) return "auto";
  static const char *const exec[2][2] = {{"direct", "rescue"}, {"plan", "plan+rescue"}};
  return exec[pol->plan][pol->rescue];
}

static cJSON *json_policy(const sched_policy *pol) {
  cJSON *o = cJSON_CreateObject();
  bool ok = o && cJSON_AddStringToObject(o, "name", pol->name) &&
            cJSON_AddStringToObject(o, "base", policy_base(pol)) &&
            cJSON_AddStringToObject(o, "fallback", sched_fallback_name(pol->fallback));
  for (size_t j = PR_INTS; ok && j < N_PR; j++) {
    const bd_row *r = &bd_config_policy_rows[j];
    const void *f = (const char *)pol + r->off;
    ok = r->type == K_BOOL ? cJSON_AddBoolToObject(o, r->key, *(const bool *)f) != NULL
                           : cJSON_AddNumberToObject(o, r->key, *(const int32_t *)f) != NULL;
  }
  if (!ok) cJSON_Delete(o);
  return ok ? o : NULL;
}

char *bd_config_json(const bd_config *c) {
  cJSON *root = cJSON_CreateObject();
  bool ok = root != NULL;
  for (size_t i = 0; ok && i < bd_config_n_rows; i++) {
    const char *leaf;
    cJSON *g = json_group(root, bd_config_rows[i].key, &leaf),
          *v = json_value(c, &bd_config_rows[i]);
    ok = g && v && cJSON_AddItemToObject(g, leaf, v);
    if (!ok) cJSON_Delete(v);
  }
  cJSON *pools = ok ? cJSON_GetObjectItemCaseSensitive(root, "pools") : NULL;
  if (pools && !c->planner.present) { /* its rows hold defaults only */
    cJSON *null = cJSON_CreateNull();
    ok = null && cJSON_ReplaceItemInObjectCaseSensitive(pools, "planner", null);
    if (!ok) cJSON_Delete(null);
  }
  cJSON *controls = ok ? cJSON_GetObjectItemCaseSensitive(root, "controls") : NULL;
  cJSON *list = controls ? cJSON_AddArrayToObject(controls, "policies") : NULL;
  ok = ok && list;
  for (int32_t i = 0; ok && i < c->n_policies; i++) {
    cJSON *pol = json_policy(&c->policies[i]);
    ok = pol && cJSON_AddItemToArray(list, pol);
    if (!ok) cJSON_Delete(pol);
  }
  char *s = ok ? cJSON_Print(root) : NULL;
  cJSON_Delete(root);
  return s;
}

/* ---- docs/configuration.md --------------------------------------------- */

static const char example[] =
    "# ballastd.conf: two pools on one GPU and two named policies.\n"
    "server: {\n"
    "  grpc_listen = \"0.0.0.0:50051\";\n"
    "  admin_listen = \"127.0.0.1:50052\";\n"
    "  admin_token = \"change-me\";   # needed for reloads over HTTP and gRPC\n"
    "  drain_timeout_s = 30.0;\n"
    "};\n"
    "pools: {\n"
    "  executor: {\n"
    "    model = \"/models/qwen3-1.7b-w2g32\";   # a folder from `ballast quantize`\n"
    "    precision = \"w2\";\n"
    "    device = \"cuda\"; devices = [0];\n"
    "    kv_format = \"fp8\"; kv_budget_mb = 4096;\n"
    "    max_num_seqs = 64; max_batched_tokens = 1024;\n"
    "  };\n"
    "  planner: { model = \"/models/qwen3-1.7b\"; precision = \"fp16\"; device = \"cuda\";\n"
    "    kv_budget_mb = 2048; };\n"
    "};\n"
    "controls: {\n"
    "  default_policy = \"fast\";\n"
    "  max_loop_window = 8192;\n"
    "  policies = (\n"
    "    { name = \"fast\"; base = \"rescue\"; loop_window = 256; loop_ngram = 10;\n"
    "      loop_min_count = 3; fallback = \"restart\"; },\n"
    "    { name = \"careful\"; base = \"plan+rescue\"; plan_max_tokens = 512;\n"
    "      fallback = \"resume\"; allow_overrides = false; }\n"
    "  );\n"
    "};\n"
    "limits: { max_tokens = 8192; default_max_tokens = 1024; max_streams = 256; };\n"
    "logging: { level = \"info\"; };\n";

static const struct {
  const char *group, *intro;
} groups[] = {
    {"server", "Addresses, TLS, the admin token and shutdown."},
    {"pools.executor",
     "The executor pool: the low-bit model that executor policies run on. The group and its "
     "model are required."},
    {"pools.planner",
     "The optional fp16 planner pool, with the executor's keys (its model is required when the "
     "group is present). Without it, requests whose policy needs the fp16 pool (plan, "
     "plan+rescue, fp16) fail with FAILED_PRECONDITION."},
    {"controls", "Reasoning controls ([controls.md](controls.md)): the default policy, named "
                 "policies, the limits on "
                 "a request's overrides and the planner's prompt templates."},
    {"limits", "Limits on requests and streams; over them a call fails (RESOURCE_EXHAUSTED)."},
    {"logging", "Logs go to stderr, one line per finished request at info."},
};

static const char intro[] =
    "# ballastd configuration\n\n"
    "<!-- Generated by `ballastd --config-doc` from the key table in daemon/bd_config.c; do not "
    "edit by hand. -->\n\n"
    "ballastd reads one file in [libconfig](https://hyperrealm.github.io/libconfig/) syntax: "
    "groups `name: { ... };`, settings `key = value;`, lists `( ... )`, arrays `[ ... ]` and "
    "comments (`#`, `//`, `/* */`). Every key is optional unless marked *required*. Unknown keys "
    "are errors, so a typo is never silently ignored. An empty string for a key that is unset by "
    "default (paths, the admin token, templates) leaves it unset.\n\n"
    "`ballastd --check-config FILE` parses and validates FILE without loading a model: it prints "
    "`FILE: ok` and exits 0, or prints the first error as `FILE:LINE: key: reason` and exits "
    "1.\n\n"
    "A reload (SIGHUP, `POST /v1/reload` or the `Reload` RPC) builds a new configuration beside "
    "the running one. When the file is invalid the running configuration stays and the error is "
    "reported. Otherwise the new one replaces the old whole for new requests, except for keys "
    "flagged *restart*: they are read at start-up only, so a reload that changes them lists them "
    "in `restart_required` and they take effect at the next restart. Keys flagged *sensitive* "
    "are shown as `\"<redacted>\"` by `GET /v1/config`.\n";

/* A table cell: '|' would end the cell. */
static void md_cell(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '|') fputc('\\', f);
    fputc(*s, f);
  }
}

static const char *doc_type(const bd_row *r) {
  static const char *const names[] = {
      [K_STR] = "string", [K_ENUM] = "string", [K_ADDR] = "address",     [K_INT] = "integer",
      [K_DBL] = "number", [K_BOOL] = "bool",   [K_INTS] = "integer list"};
  return names[r->type];
}

static void doc_range(FILE *f, const bd_row *r) {
  if (r->type == K_ENUM)
    for (const char *c = r->choices; *c;) {
      size_t m = strcspn(c, "|");
      fprintf(f, "%s`%.*s`", c == r->choices ? "" : ", ", (int)m, c);
      c += m + (c[m] == '|');
    }
  else if (r->type == K_INT || r->type == K_DBL)
    fprintf(f, "%.0f .. %.0f", r->min, r->max);
  else if (r->type == K_INTS)
    fprintf(f, "1 to %d of %.0f .. %.0f", BD_MAX_DEVICES, r->min, r->max);
  else if (r->type == K_ADDR)
    fputs("HOST:PORT", f);
}

static void doc_default(FILE *f, const bd_row *r) {
  if (r->flags & F_REQUIRED)
    fputs("*required*", f);
  else if (is_str(r) && r->def_s)
    fprintf(f, "`\"%s\"`", r->def_s);
  else if (is_str(r))
    fputs("unset", f);
  else if (r->type == K_DBL)
    fprintf(f, "`%.1f`", r->def);
  else if (r->type == K_BOOL)
    fprintf(f, "`%s`", r->def ? "true" : "false");
  else
    fprintf(f, r->type == K_INTS ? "`[%.0f]`" : "`%.0f`", r->def);
}

/* One table line; policy fields have no flags column. */
static void doc_row(FILE *f, const bd_row *r, bool flags) {
  fprintf(f, "| `%s` | %s | ", r->key, doc_type(r));
  doc_default(f, r);
  fputs(" | ", f);
  doc_range(f, r);
  if (flags)
    fprintf(f, " | %s%s%s", r->flags & F_RESTART ? "restart" : "",
            (r->flags & F_RESTART) && (r->flags & F_SENSITIVE) ? ", " : "",
            r->flags & F_SENSITIVE ? "sensitive" : "");
  fputs(" | ", f);
  md_cell(f, r->help);
  fputs(" |\n", f);
}

static void doc_policies(FILE *f) {
  sched_policy def = {0};
  sched_policy_builtin("rescue", &def, NULL); /* a built-in name: cannot fail */
  fputs("\n### `controls.policies`\n\n"
        "A list of named policies, `( { name = \"...\"; base = \"...\"; ... }, ... )`. Each starts "
        "as its built-in base and changes the fields it sets; a request names one (or a "
        "built-in) in its `policy`. Unset fields keep the base's values, which are the same for "
        "every built-in (the defaults below).\n\n"
        "| Field | Type | Default | Range | Meaning |\n|---|---|---|---|---|\n",
        f);
  for (size_t j = 0; j < N_PR; j++) {
    bd_row r = bd_config_policy_rows[j]; /* with the base's value as its default */
    const void *v = (const char *)&def + r.off;
    if (j == PR_FALLBACK)
      r.def_s = sched_fallback_name(def.fallback);
    else if (r.type == K_BOOL)
      r.def = *(const bool *)v;
    else if (r.type == K_INT)
      r.def = *(const int32_t *)v;
    doc_row(f, &r, false);
  }
}

static void doc_group(FILE *f, const char *group, const char *text) {
  size_t n = strlen(group);
  fprintf(f, "\n## `%s`\n\n%s\n\n", group, text);
  fputs("| Key | Type | Default | Range | Flags | Meaning |\n|---|---|---|---|---|---|\n", f);
  for (size_t i = 0; i < bd_config_n_rows; i++) {
    const char *key = bd_config_rows[i].key;
    /* direct members only: "pools" would otherwise list both pools */
    if (!strncmp(key, group, n) && key[n] == '.' && !strchr(key + n + 1, '.'))
      doc_row(f, &bd_config_rows[i], true);
  }
}

void bd_config_doc(FILE *f) {
  fputs(intro, f);
  for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
    doc_group(f, groups[g].group, groups[g].intro);
    if (!strcmp(groups[g].group, "controls")) doc_policies(f);
  }
  fprintf(f, "\n## Example\n\n```conf\n%s```\n", example);
}
