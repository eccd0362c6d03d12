/* The daemon's config table: every default, a full file, each class of
 * error with its file:line, the restart-required diff, the JSON view (with
 * the admin token redacted), docs/configuration.md against the generator
 * and the demo config in deploy/.
 * usage: test_config DOCS/configuration.md DEPLOY/ballastd.conf */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_config.h"
#include "t.h"

/* The smallest valid file. */
#define MIN_POOLS "pools: { executor: { model = \"/m.gguf\"; }; };\n"

static bd_config *parse_ok(const char *text) {
  bd_config *c = (bd_config *)1;
  bl_err err = {0};
  bl_status st = bd_config_parse(text, "t.conf", &c, &err);
  T_CHECKF(st == BL_OK && c, "%s\n--- in:\n%s", err.msg, text);
  return st == BL_OK ? c : NULL;
}

/* The parse fails, *out is NULL and the message starts with want. */
#define T_PARSE_ERR(text, want) parse_err(__LINE__, text, want)
static void parse_err(int line, const char *text, const char *want) {
  bd_config *c = (bd_config *)1;
  bl_err err = {0};
  bl_status st = bd_config_parse(text, "t.conf", &c, &err);
  T_CHECKF(st != BL_OK && !c, "test line %d: parsed\n%s", line, text);
  T_CHECKF(!strncmp(err.msg, want, strlen(want)), "test line %d: got \"%s\" want \"%s...\"", line,
           err.msg, want);
  if (st == BL_OK) bd_config_free(c);
}

static bool str_eq(const char *a, const char *b) { return a && b && !strcmp(a, b); }

static void check_pool_defaults(const bd_pool_cfg *p, const char *precision) {
  T_CHECK(!p->tokenizer);
  T_CHECK(str_eq(p->precision, precision));
  T_CHECK(str_eq(p->device, "cpu"));
  T_CHECK(p->n_devices == 1 && p->devices[0] == 0);
  T_CHECK(p->threads == 0);
  T_CHECK(str_eq(p->kv_format, "fp16"));
  T_CHECK(p->kv_blocks == 0);
  T_CHECK(p->kv_budget_mb == 256);
  T_CHECK(p->block_size == 16);
  T_CHECK(p->max_num_seqs == 64);
  T_CHECK(p->max_batched_tokens == 512);
  T_CHECK(p->prefix_cache);
}

static void test_defaults(void) {
  bd_config *c = parse_ok(MIN_POOLS);
  if (!c) return;
  T_CHECK(str_eq(c->path, "t.conf"));
  T_CHECK(str_eq(c->grpc_listen, "127.0.0.1:50051"));
  T_CHECK(str_eq(c->admin_listen, "127.0.0.1:50052"));
  T_CHECK(!c->admin_token && !c->tls_cert && !c->tls_key && !c->tls_client_ca);
  T_CHECK(c->drain_timeout_s == 30.0);
  T_CHECK(c->grpc_threads == 2);
  T_CHECK(c->executor.present && str_eq(c->executor.model, "/m.gguf"));
  check_pool_defaults(&c->executor, "w2");
  T_CHECK(!c->planner.present && !c->planner.model);
  check_pool_defaults(&c->planner, "fp16");
  T_CHECK(c->calibrate_tokens == 16);
  T_CHECK(str_eq(c->default_policy, "rescue"));
  T_CHECK(c->n_policies == 0 && !c->policies);
  T_CHECK(c->policy_limits.max_window == 8192 && c->policy_limits.max_plan_tokens == 1024);
  T_CHECK(!c->plan_prompt && !c->plan_insert);
  T_CHECK(c->max_message_bytes == 1048576);
  T_CHECK(c->max_prompt_tokens == 4096);
  T_CHECK(c->max_tokens == 4096);
  T_CHECK(c->default_max_tokens == 512);
  T_CHECK(c->max_streams == 1024);
  T_CHECK(c->stream_buffer_bytes == 1048576);
  T_CHECK(str_eq(c->log_level, "info"));
  bd_config_free(c);
}

/* Every key away from its default. */
static const char full[] =
    "server: {\n"
    "  grpc_listen = \"0.0.0.0:0\";\n"
    "  admin_listen = \"[::1]:9000\";\n"
    "  admin_token = \"s3cret-token\";\n"
    "  tls_cert = \"/etc/b/cert.pem\"; tls_key = \"/etc/b/key.pem\";\n"
    "  tls_client_ca = \"/etc/b/ca.pem\";\n"
    "  drain_timeout_s = 5;\n" /* an integer literal for a number */
    "  grpc_threads = 4;\n"
    "};\n"
    "pools: {\n"
    "  executor: { model = \"/models/w2\"; tokenizer = \"\"; precision = \"w4\"; device = "
    "\"cuda\";\n"
    "    devices = [1, 3]; replicas = 2; threads = 8; kv_format = \"fp8\"; kv_blocks = 1000; "
    "kv_budget_mb = "
    "512;\n"
    "    block_size = 32; max_num_seqs = 128; max_batched_tokens = 2048; prefix_cache = false; };\n"
    "  planner: { model = \"/models/fp16\"; tokenizer = \"/models/tok.json\"; device = \"cuda\";\n"
    "    devices = (2); kv_format = \"nvfp4\"; };\n"
    "};\n"
    "controls: {\n"
    "  default_policy = \"fast\";\n"
    "  calibrate_tokens = 0;\n"
    "  max_loop_window = 4096;\n"
    "  max_plan_tokens = 512;\n"
    "  plan_prompt = \"Plan: {question}\";\n"
    "  plan_insert = \"{question} / {plan}\";\n"
    "  policies = (\n"
    "    { name = \"fast\"; base = \"rescue\"; loop_window = 256; loop_ngram = 10;\n"
    "      loop_min_count = 3; plan_max_tokens = 128; fallback = \"resume\";\n"
    "      allow_overrides = false; },\n"
    "    { name = \"think-1\"; base = \"plan+rescue\"; }\n"
    "  );\n"
    "};\n"
    "limits: { max_message_bytes = 65536; max_prompt_tokens = 1000; max_tokens = 2000;\n"
    "  default_max_tokens = 2000; max_streams = 10; stream_buffer_bytes = 8192; };\n"
    "logging: { level = \"debug\"; };\n";

static void test_full(void) {
  bd_config *c = parse_ok(full);
  if (!c) return;
  T_CHECK(str_eq(c->grpc_listen, "0.0.0.0:0") && str_eq(c->admin_listen, "[::1]:9000"));
  T_CHECK(str_eq(c->admin_token, "s3cret-token"));
  T_CHECK(str_eq(c->tls_cert, "/etc/b/cert.pem") && str_eq(c->tls_key, "/etc/b/key.pem"));
  T_CHECK(str_eq(c->tls_client_ca, "/etc/b/ca.pem"));
  T_CHECK(c->drain_timeout_s == 5.0 && c->grpc_threads == 4);
  const bd_pool_cfg *e = &c->executor, *p = &c->planner;
  T_CHECK(str_eq(e->model, "/models/w2") && !e->tokenizer); /* "" is unset */
  T_CHECK(str_eq(e->precision, "w4") && str_eq(e->device, "cuda"));
  T_CHECK(e->n_devices == 2 && e->devices[0] == 1 && e->devices[1] == 3 && e->replicas == 2);
  T_CHECK(e->threads == 8 && str_eq(e->kv_format, "fp8") && e->kv_blocks == 1000);
  T_CHECK(e->kv_budget_mb == 512 && e->block_size == 32 && e->max_num_seqs == 128);
  T_CHECK(e->max_batched_tokens == 2048 && !e->prefix_cache);
  T_CHECK(p->present && str_eq(p->model, "/models/fp16") &&
          str_eq(p->tokenizer, "/models/tok.json"));
  T_CHECK(str_eq(p->precision, "fp16") && p->n_devices == 1 && p->devices[0] == 2);
  T_CHECK(str_eq(p->kv_format, "nvfp4") && p->kv_budget_mb == 256);
  T_CHECK(str_eq(c->default_policy, "fast") && c->calibrate_tokens == 0);
  T_CHECK(c->policy_limits.max_window == 4096 && c->policy_limits.max_plan_tokens == 512);
  T_CHECK(str_eq(c->plan_prompt, "Plan: {question}"));
  T_CHECK(str_eq(c->plan_insert, "{question} / {plan}"));
  T_CHECK(c->n_policies == 2);
  if (c->n_policies == 2) {
    const sched_policy *f = &c->policies[0], *t = &c->policies[1];
    T_CHECK(!strcmp(f->name, "fast") && f->route == SCHED_ROUTE_EXECUTOR && f->rescue && !f->plan);
    T_CHECK(f->loop.window == 256 && f->loop.ngram == 10 && f->loop.min_count == 3);
    T_CHECK(f->plan_max_tokens == 128 && f->fallback == SCHED_FALLBACK_RESUME);
    T_CHECK(!f->allow_overrides);
    /* unset fields keep the base's (sched_policy_check's defaults) */
    T_CHECK(!strcmp(t->name, "think-1") && t->plan && t->rescue && t->allow_overrides);
    T_CHECK(t->loop.window == 1024 && t->loop.ngram == 20 && t->loop.min_count == 4);
    T_CHECK(t->plan_max_tokens == 256 && t->fallback == SCHED_FALLBACK_RESTART);
  }
  T_CHECK(c->max_message_bytes == 65536 && c->max_prompt_tokens == 1000);
  T_CHECK(c->max_tokens == 2000 && c->default_max_tokens == 2000);
  T_CHECK(c->max_streams == 10 && c->stream_buffer_bytes == 8192);
  T_CHECK(str_eq(c->log_level, "debug"));
  bd_config_free(c);
}

static void test_syntax_and_keys(void) {
  T_PARSE_ERR("server: {\n  grpc_listen = ;\n};\n", "t.conf:2: syntax error");
  T_PARSE_ERR("a = 1;\na = 2;\n", "t.conf:2: duplicate setting name");
  T_PARSE_ERR(MIN_POOLS "serverr: { };\n", "t.conf:2: serverr: unknown key (did you mean server?)");
  T_PARSE_ERR(MIN_POOLS "server: {\n  grpc_port = 1;\n};\n",
              "t.conf:3: server.grpc_port: unknown key");
  T_PARSE_ERR("pools: {\n executor: {\n  modle = \"/m\";\n };\n};\n",
              "t.conf:3: pools.executor.modle: unknown key (did you mean model?)");
  T_PARSE_ERR(MIN_POOLS "pools2 = 1;\n", "t.conf:2: pools2: unknown key (did you mean pools?)");
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; };\n  plannr: { }; };\n",
              "t.conf:2: pools.plannr: unknown key (did you mean planner?)");
  T_PARSE_ERR(MIN_POOLS "controls: {\n policy = ( );\n};\n",
              "t.conf:3: controls.policy: unknown key (did you mean policies?)");
  T_PARSE_ERR(MIN_POOLS "controls: { policies = (\n { name = \"a\"; base = \"rescue\";\n"
                        "   loop_windw = 3; }\n); };\n",
              "t.conf:4: controls.policies[0].loop_windw: unknown key");
  T_PARSE_ERR(MIN_POOLS "\nserver = 5;\n", "t.conf:3: server: expected a group");
  T_PARSE_ERR("pools: { executor = \"/m\"; };\n", "t.conf:1: pools.executor: expected a group");
}

static void test_types_and_ranges(void) {
  T_PARSE_ERR(MIN_POOLS "server: {\n grpc_listen = 50051;\n};\n",
              "t.conf:3: server.grpc_listen: expected a string, got an integer");
  T_PARSE_ERR(MIN_POOLS "server: { grpc_threads = 2.5; };\n",
              "t.conf:2: server.grpc_threads: expected an integer, got a float");
  T_PARSE_ERR(MIN_POOLS "server: { drain_timeout_s = \"30\"; };\n",
              "t.conf:2: server.drain_timeout_s: expected a number, got a string");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n prefix_cache = \"yes\"; }; };\n",
              "t.conf:2: pools.executor.prefix_cache: expected true or false, got a string");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n devices = 0; }; };\n",
              "t.conf:2: pools.executor.devices: expected a list of integers");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n devices = [\"a\"]; }; };\n",
              "t.conf:2: pools.executor.devices: entry 0: expected an integer, got a string");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n devices = []; }; };\n",
              "t.conf:2: pools.executor.devices: 0 entries: expected 1 to 8");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n devices = [0,1,2,3,4,5,6,7,8]; }; };\n",
              "t.conf:2: pools.executor.devices: 9 entries");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n devices = [0, 64]; }; };\n",
              "t.conf:2: pools.executor.devices: entry 1: 64 is out of range [0, 63]");
  /* replicas: one GPU each on cuda, each GPU once; any number of cpu ones */
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; device = \"cuda\";\n devices = [0, 1]; }; };\n",
              "t.conf:2: pools.executor.devices: lists 2 GPUs for 1 replica of 1 GPU each: give "
              "1 GPU ids");
  /* tensor parallelism: tensor_parallel GPUs per replica; at most 8 backends a pool */
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; device = \"cuda\";\n replicas = 2;\n "
              "tensor_parallel = 2; devices = [0, 1, 2]; }; };\n",
              "t.conf:3: pools.executor.devices: lists 3 GPUs for 2 replicas of 2 GPUs each: give "
              "4 GPU ids");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n replicas = 3;\n tensor_parallel = 3; }; };\n",
              "t.conf:3: pools.executor.tensor_parallel: 3 replicas of 3 backends each: a pool "
              "has at most 8 backends");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n tensor_parallel = 9; }; };\n",
              "t.conf:2: pools.executor.tensor_parallel: 9 is out of range [1, 8]");
  {
    bd_config *c = NULL;
    bl_err err = {0};
    const char *txt = "pools: { executor: { model = \"/m\"; device = \"cuda\"; replicas = 2;\n"
                      "tensor_parallel = 2; devices = [3, 2, 1, 0]; }; };\n";
    T_CHECKF(bd_config_parse(txt, NULL, &c, &err) == BL_OK, "%s", err.msg);
    T_CHECK(c && c->executor.tensor_parallel == 2 && c->executor.n_devices == 4);
    bd_config_free(c);
  }
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; device = \"cuda\"; replicas = 2; }; };\n",
              "t.conf:1: pools.executor.devices: lists 1 GPU for 2 replicas");
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; device = \"cuda\";\n replicas = 2;\n "
              "devices = [1, 1]; }; };\n",
              "t.conf:3: pools.executor.devices: GPU 1 is listed twice");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n replicas = 0; }; };\n",
              "t.conf:2: pools.executor.replicas: 0 is out of range [1, 8]");
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; }; planner: { model = \"/p\"; device = "
              "\"cuda\";\n replicas = 3; devices = [0, 1]; }; };\n",
              "t.conf:2: pools.planner.devices: lists 2 GPUs for 3 replicas");
  {
    bd_config *c = NULL;
    bl_err err = {0};
    const char *txt = "pools: { executor: { model = \"/m\"; replicas = 3; }; };\n";
    T_CHECKF(bd_config_parse(txt, "t.conf", &c, &err) == BL_OK && c, "%s", err.msg);
    T_CHECK(c && c->executor.replicas == 3 && !strcmp(c->executor.device, "cpu"));
    bd_config_free(c);
  }
  T_PARSE_ERR(MIN_POOLS "server: { grpc_threads = 0; };\n",
              "t.conf:2: server.grpc_threads: 0 is out of range [1, 64]");
  T_PARSE_ERR(MIN_POOLS "server: { drain_timeout_s = -0.5; };\n",
              "t.conf:2: server.drain_timeout_s: -0.5 is out of range [0, 3600]");
  T_PARSE_ERR(MIN_POOLS "limits: {\n\n max_streams = 2000000L; };\n",
              "t.conf:4: limits.max_streams: 2000000 is out of range [1, 1048576]");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n kv_budget_mb = 0; }; };\n",
              "t.conf:2: pools.executor.kv_budget_mb: 0 is out of range");
  T_PARSE_ERR(MIN_POOLS "server: { grpc_listen = \"localhost\"; };\n",
              "t.conf:2: server.grpc_listen: \"localhost\": expected HOST:PORT");
  T_PARSE_ERR(MIN_POOLS "server: { admin_listen = \"h:70000\"; };\n",
              "t.conf:2: server.admin_listen: \"h:70000\": expected HOST:PORT");
  T_PARSE_ERR(MIN_POOLS "server: { admin_listen = \":80\"; };\n",
              "t.conf:2: server.admin_listen: \":80\": expected HOST:PORT");
}

static void test_enums(void) {
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n precision = \"w3\"; }; };\n",
              "t.conf:2: pools.executor.precision: \"w3\": expected one of fp16|w4|w2");
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; };\n planner: { model = \"/p\";\n"
              " device = \"tpu\"; }; };\n",
              "t.conf:3: pools.planner.device: \"tpu\": expected one of cpu|cuda");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n kv_format = \"int8\"; }; };\n",
              "t.conf:2: pools.executor.kv_format: \"int8\": expected one of fp16|fp8|nvfp4");
  T_PARSE_ERR(MIN_POOLS "logging: { level = \"trace\"; };\n",
              "t.conf:2: logging.level: \"trace\": expected one of debug|info|warn|error");
  T_PARSE_ERR(MIN_POOLS "controls: { policies = ( { name = \"a\"; base = \"rescue\";\n"
                        " fallback = \"retry\"; } ); };\n",
              "t.conf:3: controls.policies[0].fallback: \"retry\": expected one of restart|resume");
  T_PARSE_ERR("pools: { executor: { model = \"/m\";\n precision = \"\"; }; };\n",
              "t.conf:2: pools.executor.precision: \"\": expected one of");
}

static void test_required_and_cross(void) {
  T_PARSE_ERR("", "t.conf:1: pools.executor: required group missing");
  T_PARSE_ERR("server: { };\n\npools: {\n};\n", "t.conf:3: pools.executor: required group missing");
  T_PARSE_ERR("pools: {\n executor: {\n  device = \"cpu\";\n };\n};\n",
              "t.conf:2: pools.executor.model: required");
  T_PARSE_ERR("pools: {\n executor: {\n  model = \"\";\n };\n};\n",
              "t.conf:3: pools.executor.model: required");
  T_PARSE_ERR("pools: { executor: { model = \"/m\"; };\n planner: { precision = \"fp16\"; }; };\n",
              "t.conf:2: pools.planner.model: required");
  T_PARSE_ERR(MIN_POOLS "server: {\n tls_cert = \"/c.pem\"; };\n",
              "t.conf:3: server.tls_cert: tls_cert and tls_key go together");
  T_PARSE_ERR(MIN_POOLS "server: {\n tls_key = \"/k.pem\";\n tls_cert = \"\"; };\n",
              "t.conf:3: server.tls_key: tls_cert and tls_key go together");
  T_PARSE_ERR(MIN_POOLS "server: {\n tls_client_ca = \"/ca.pem\"; };\n",
              "t.conf:3: server.tls_client_ca: client certificates need TLS");
  T_PARSE_ERR(MIN_POOLS "limits: {\n default_max_tokens = 5000; };\n",
              "t.conf:3: limits.default_max_tokens: 5000 is over limits.max_tokens 4096");
  T_PARSE_ERR(MIN_POOLS "limits: {\n max_tokens = 100; };\n",
              "t.conf:2: limits.default_max_tokens: 512 is over limits.max_tokens 100");
  T_PARSE_ERR(MIN_POOLS "controls: {\n plan_prompt = \"plan it\"; };\n",
              "t.conf:3: controls.plan_prompt: the template has no {question}");
  T_PARSE_ERR(MIN_POOLS "controls: {\n plan_insert = \"{question}\"; };\n",
              "t.conf:3: controls.plan_insert: the template needs {question} and {plan}");
  T_PARSE_ERR(MIN_POOLS "controls: {\n default_policy = \"nope\"; };\n",
              "t.conf:3: controls.default_policy: \"nope\" is neither a built-in");
  T_PARSE_ERR(MIN_POOLS "controls: {\n default_policy = \"\"; };\n",
              "t.conf:3: controls.default_policy: \"\" is neither");
}

#define POL(body) MIN_POOLS "controls: {\n policies = (\n" body ");\n};\n"

static void test_policies(void) {
  T_PARSE_ERR(POL(" { name = \"a\"; base = \"rescue\"; },\n { name = \"a\"; base = \"plan\"; }\n"),
              "t.conf:5: controls.policies[1].name: duplicate policy name \"a\"");
  T_PARSE_ERR(POL(" { name = \"rescue\"; base = \"rescue\"; }\n"),
              "t.conf:4: controls.policies[0].name: \"rescue\" is a built-in policy");
  T_PARSE_ERR(POL(" { name = \"a\";\n   base = \"b\"; }\n"),
              "t.conf:5: controls.policies[0].base: \"b\": expected a built-in");
  T_PARSE_ERR(POL(" { name = \"a\"; base = \"rescue\"; },\n { name = \"b\"; base = \"a\"; }\n"),
              "t.conf:5: controls.policies[1].base: \"a\": expected a built-in");
  T_PARSE_ERR(POL(" { name = \"a\"; }\n"), "t.conf:4: controls.policies[0].base: required");
  T_PARSE_ERR(POL(" { base = \"rescue\"; }\n"), "t.conf:4: controls.policies[0].name: required");
  T_PARSE_ERR(POL(" { name = 3; base = \"rescue\"; }\n"),
              "t.conf:4: controls.policies[0].name: expected a string, got an integer");
  T_PARSE_ERR(POL(" { name = \"a b\"; base = \"rescue\"; }\n"),
              "t.conf:4: controls.policies[0].name: \"a b\": expected 1 to 31");
  T_PARSE_ERR(POL(" { name = \"\"; base = \"rescue\"; }\n"),
              "t.conf:4: controls.policies[0].name: \"\": expected 1 to 31");
  T_PARSE_ERR(
      POL(" { name = \"a\"; base = \"rescue\";\n   loop_window = 9000; }\n"),
      "t.conf:5: controls.policies[0].loop_window: 9000 is over controls.max_loop_window 8192");
  T_PARSE_ERR(MIN_POOLS "controls: { max_plan_tokens = 100;\n policies = (\n"
                        " { name = \"a\"; base = \"plan\"; } ); };\n",
              "t.conf:4: controls.policies[0].plan_max_tokens: 256 (the base's) is over "
              "controls.max_plan_tokens 100");
  T_PARSE_ERR(POL(" { name = \"a\"; base = \"rescue\"; loop_window = 8; loop_ngram = 9; }\n"),
              "t.conf:4: controls.policies[0]: policy a: loop window 8, ngram 9");
  T_PARSE_ERR(POL(" { name = \"a\"; base = \"rescue\"; loop_min_count = 1; }\n"),
              "t.conf:4: controls.policies[0].loop_min_count: 1 is out of range [2,");
  T_PARSE_ERR(MIN_POOLS "controls: {\n policies = 5; };\n",
              "t.conf:3: controls.policies: expected a list of groups");
  /* (libconfig dates a scalar in a list by the token after it: keep it on the line) */
  T_PARSE_ERR(POL(" \"fast\", 3\n"), "t.conf:4: controls.policies[0]: expected a group");
  /* an empty list and an empty array are both no policies */
  bd_config *c = parse_ok(POL(""));
  T_CHECK(c && c->n_policies == 0);
  bd_config_free(c);
  c = parse_ok(MIN_POOLS "controls: { policies = []; };\n");
  T_CHECK(c && c->n_policies == 0);
  bd_config_free(c);
  /* a default_policy may name a policy defined in the file */
  c = parse_ok(MIN_POOLS "controls: { default_policy = \"x\";\n"
                         " policies = ( { name = \"x\"; base = \"fp16\"; } ); };\n");
  T_CHECK(c && c->n_policies == 1 && c->policies[0].route == SCHED_ROUTE_FP16);
  bd_config_free(c);
}

static char *write_tmp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/test_config_XXXXXX");
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  FILE *f = fdopen(fd, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

static void test_load(void) {
  bd_config *c = (bd_config *)1;
  bl_err err = {0};
  T_CHECK(bd_config_load("/nonexistent/b.conf", &c, &err) == BL_EIO && !c);
  T_CHECKF(strstr(err.msg, "/nonexistent/b.conf: No such file"), "%s", err.msg);
  char *path = write_tmp("pools: {\n executor: {\n  model = \"/m\"\n  device = \"gpu\";\n};};\n");
  T_CHECK(path);
  if (!path) return;
  char want[128];
  bl_err_clear(&err);
  T_CHECK(bd_config_load(path, &c, &err) != BL_OK && !c);
  snprintf(want, sizeof want, "%s:4: pools.executor.device: \"gpu\"", path);
  T_CHECKF(!strncmp(err.msg, want, strlen(want)), "got %s want %s", err.msg, want);
  unlink(path);
  path = write_tmp(MIN_POOLS "logging: { level = \"warn\"; };\n");
  bl_err_clear(&err);
  T_CHECKF(bd_config_load(path, &c, &err) == BL_OK && c, "%s", err.msg);
  if (c) T_CHECK(str_eq(c->path, path) && str_eq(c->log_level, "warn"));
  bd_config_free(c);
  unlink(path);
}

static void test_restart_diff(void) {
  bd_config *a = parse_ok(MIN_POOLS);
  bd_config *b = parse_ok("server: { grpc_listen = \"127.0.0.1:6000\"; admin_token = \"t\";\n"
                          "  drain_timeout_s = 1.0; };\n"
                          "pools: { executor: { model = \"/m2\"; devices = [0, 1]; };\n"
                          "  planner: { model = \"/p\"; }; };\n"
                          "limits: { max_tokens = 100; default_max_tokens = 10; };\n");
  bd_config *b2 = parse_ok("pools: { executor: { model = \"/m\"; };\n"
                           "  planner: { model = \"/p\"; precision = \"w4\"; }; };\n");
  if (!a || !b || !b2) goto done;
  const char *keys[8];
  T_CHECK(bd_config_restart_diff(a, a, keys, 8) == 0);
  /* the planner appearing is one change; the non-restart keys are none */
  int n = bd_config_restart_diff(a, b, keys, 8);
  T_CHECKF(n == 4, "%d", n);
  if (n == 4) {
    T_CHECK(!strcmp(keys[0], "pools.planner"));
    T_CHECK(!strcmp(keys[1], "server.grpc_listen"));
    T_CHECK(!strcmp(keys[2], "pools.executor.model"));
    T_CHECK(!strcmp(keys[3], "pools.executor.devices"));
  }
  keys[1] = NULL;
  T_CHECK(bd_config_restart_diff(b, a, keys, 1) == 4 && !strcmp(keys[0], "pools.planner"));
  T_CHECK(!keys[1]); /* max is respected */
  T_CHECK(bd_config_restart_diff(a, b, NULL, 0) == 4);
  n = bd_config_restart_diff(b, b2, keys, 8);
  T_CHECKF(n == 4, "%d", n);
  if (n == 4) T_CHECK(!strcmp(keys[3], "pools.planner.precision"));
  /* a reload keeps the running RESTART values and takes the rest */
  T_CHECK(bd_config_keep_restart(b, a) == BL_OK);
  T_CHECK(bd_config_restart_diff(a, b, keys, 8) == 0);
  T_CHECK(!b->planner.present && str_eq(b->executor.model, "/m.gguf"));
  T_CHECK(b->executor.n_devices == 1 && b->executor.devices[0] == 0);
  T_CHECK(str_eq(b->grpc_listen, "127.0.0.1:50051"));
  T_CHECK(str_eq(b->admin_token, "t") && b->drain_timeout_s == 1.0 && b->max_tokens == 100);
done:
  bd_config_free(a);
  bd_config_free(b);
  bd_config_free(b2);
}

static const cJSON *jpath(const cJSON *o, const char *a, const char *b, const char *c) {
  o = cJSON_GetObjectItemCaseSensitive(o, a);
  if (b) o = cJSON_GetObjectItemCaseSensitive(o, b);
  if (c) o = cJSON_GetObjectItemCaseSensitive(o, c);
  return o;
}

static bool jstr(const cJSON *o, const char *want) {
  return cJSON_IsString(o) && !strcmp(o->valuestring, want);
}

static void test_json(void) {
  bd_config *c = parse_ok(full);
  if (!c) return;
  char *s = bd_config_json(c);
  T_CHECK(s && !strstr(s, "s3cret-token"));
  cJSON *j = s ? cJSON_Parse(s) : NULL;
  T_CHECK(j);
  T_CHECK(jstr(jpath(j, "server", "admin_token", NULL), "<redacted>"));
  T_CHECK(jstr(jpath(j, "server", "grpc_listen", NULL), "0.0.0.0:0"));
  T_CHECK(cJSON_GetNumberValue(jpath(j, "server", "drain_timeout_s", NULL)) == 5.0);
  T_CHECK(jstr(jpath(j, "pools", "executor", "model"), "/models/w2"));
  T_CHECK(cJSON_IsNull(jpath(j, "pools", "executor", "tokenizer")));
  T_CHECK(cJSON_IsFalse(jpath(j, "pools", "executor", "prefix_cache")));
  const cJSON *dev = jpath(j, "pools", "executor", "devices");
  T_CHECK(cJSON_GetArraySize(dev) == 2 && cJSON_GetArrayItem(dev, 1)->valueint == 3);
  T_CHECK(jstr(jpath(j, "pools", "planner", "kv_format"), "nvfp4"));
  T_CHECK(cJSON_GetNumberValue(jpath(j, "controls", "max_loop_window", NULL)) == 4096);
  const cJSON *pol = jpath(j, "controls", "policies", NULL);
  T_CHECK(cJSON_GetArraySize(pol) == 2);
  const cJSON *p0 = cJSON_GetArrayItem(pol, 0), *p1 = cJSON_GetArrayItem(pol, 1);
  T_CHECK(jstr(jpath(p0, "name", NULL, NULL), "fast") &&
          jstr(jpath(p0, "base", NULL, NULL), "rescue"));
  T_CHECK(jstr(jpath(p0, "fallback", NULL, NULL), "resume"));
  T_CHECK(cJSON_GetNumberValue(jpath(p0, "loop_ngram", NULL, NULL)) == 10);
  T_CHECK(cJSON_IsFalse(jpath(p0, "allow_overrides", NULL, NULL)));
  T_CHECK(jstr(jpath(p1, "base", NULL, NULL), "plan+rescue"));
  T_CHECK(cJSON_GetNumberValue(jpath(j, "limits", "max_streams", NULL)) == 10);
  T_CHECK(jstr(jpath(j, "logging", "level", NULL), "debug"));
  cJSON_Delete(j);
  free(s);
  bd_config_free(c);
  /* unset token and TLS are null, an absent planner is null */
  c = parse_ok(MIN_POOLS);
  if (!c) return;
  s = bd_config_json(c);
  j = s ? cJSON_Parse(s) : NULL;
  T_CHECK(j && cJSON_IsNull(jpath(j, "server", "admin_token", NULL)));
  T_CHECK(cJSON_IsNull(jpath(j, "server", "tls_cert", NULL)));
  T_CHECK(cJSON_IsNull(jpath(j, "pools", "planner", NULL)));
  T_CHECK(jstr(jpath(j, "pools", "executor", "precision"), "w2"));
  T_CHECK(cJSON_GetArraySize(jpath(j, "controls", "policies", NULL)) == 0);
  cJSON_Delete(j);
  free(s);
  bd_config_free(c);
}

static char *read_all(FILE *f, size_t *n) {
  char *buf = NULL;
  size_t cap = 0;
  *n = 0;
  for (;;) {
    if (*n + 4096 > cap && !(buf = realloc(buf, cap = cap * 2 + 4096))) return NULL;
    size_t got = fread(buf + *n, 1, cap - *n - 1, f);
    *n += got;
    if (!got) break;
  }
  buf[*n] = 0;
  return buf;
}

/* docs/configuration.md is bd_config_doc's output, byte for byte; the
 * example in it parses. */
static void test_doc(const char *doc_path) {
  char *want = NULL, *got = NULL;
  size_t n_want = 0, n_got = 0;
  FILE *m = open_memstream(&want, &n_want);
  bd_config_doc(m);
  fclose(m);
  FILE *f = fopen(doc_path, "r");
  T_CHECKF(f, "cannot open %s", doc_path);
  if (f) {
    got = read_all(f, &n_got);
    fclose(f);
  }
  bool same = got && n_got == n_want && !memcmp(got, want, n_want);
  if (!same) {
    FILE *o = fopen("configuration.md.expected", "w");
    if (o) fwrite(want, 1, n_want, o), fclose(o);
    char cwd[512];
    fprintf(stderr,
            "%s is not what the config table generates; regenerate it with\n"
            "  ballastd --config-doc > docs/configuration.md\n"
            "or copy %s/configuration.md.expected over it\n",
            doc_path, getcwd(cwd, sizeof cwd) ? cwd : ".");
  }
  T_CHECK(same);
  for (const char *key = "server.admin_token\0pools.planner.prefix_cache\0logging.level\0"
                         "`loop_min_count`\0## Example\0--check-config\0";
       *key; key += strlen(key) + 1)
    T_CHECKF(strstr(want, key), "doc lacks %s", key);
  char *ex = strstr(want, "```conf\n"), *end = ex ? strstr(ex + 8, "```\n") : NULL;
  T_CHECK(ex && end);
  if (ex && end) {
    *end = 0;
    bd_config *c = parse_ok(ex + 8);
    T_CHECK(c && c->planner.present && c->n_policies == 2);
    bd_config_free(c);
  }
  free(want);
  free(got);
}

static void test_deploy(const char *path) {
  bd_config *c = NULL;
  bl_err err = {0};
  T_CHECKF(bd_config_load(path, &c, &err) == BL_OK, "%s", err.msg);
  if (!c) return;
  T_CHECK(str_eq(c->executor.model, "/path/to/model.gguf"));
  T_CHECK(str_eq(c->executor.device, "cpu") && c->planner.present);
  T_CHECK(str_eq(c->default_policy, "demo"));
  bd_config_free(c);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_config DOCS/configuration.md DEPLOY/ballastd.conf\n");
    return 2;
  }
  test_defaults();
  test_full();
  test_syntax_and_keys();
  test_types_and_ranges();
  test_enums();
  test_required_and_cross();
  test_policies();
  test_load();
  test_restart_diff();
  test_json();
  test_doc(argv[1]);
  test_deploy(argv[2]);
  return T_DONE();
}
