/* The daemon's configuration: one immutable object, parsed from a libconfig
 * file, swapped whole on reload (a new object is built beside the old; the
 * old stays when the new one fails).
 *
 * Every scalar key is one row of a table in bd_config.c (key, type, bounds,
 * default, flags, help): parsing, defaults, the restart-required diff, the
 * effective-config JSON and docs/configuration.md all come from that table.
 * Flags: RESTART (a change is reported by a reload and takes effect only
 * after a restart: addresses, TLS, pools), SENSITIVE (redacted in JSON and
 * logs). Named policies are a list of groups, parsed beside the table.
 *
 * Errors name the file and line: "FILE:LINE: key: reason". */
#ifndef BD_CONFIG_H
#define BD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "bl_status.h"
#include "sched_policy.h"

#define BD_MAX_DEVICES 8

typedef struct bd_pool_cfg {
  bool present;                    /* the group exists (the planner is optional) */
  char *model;                     /* GGUF file, or a safetensors / GPTQ folder; required */
  char *tokenizer;                 /* NULL: the model's own */
  char *precision;                 /* "fp16", "w4", "w2" */
  char *device;                    /* "cpu", "cuda" */
  int32_t devices[BD_MAX_DEVICES]; /* GPU ids (cuda): tensor_parallel per replica, in order */
  int32_t n_devices;
  int32_t replicas;           /* data-parallel copies, each with its own scheduler and KV cache */
  int32_t tensor_parallel;    /* backends one replica's model is split across */
  int32_t threads;            /* CPU threads; 0: the machine's cores */
  char *kv_format;            /* "fp16", "fp8", "nvfp4" */
  int32_t kv_blocks;          /* KV blocks; 0: from kv_budget_mb */
  int32_t kv_budget_mb;       /* KV memory when kv_blocks is 0 */
  int32_t block_size;         /* tokens per block */
  int32_t max_num_seqs;       /* running sequences */
  int32_t max_batched_tokens; /* tokens per step */
  bool prefix_cache;
} bd_pool_cfg;

typedef struct bd_config {
  char *path; /* the file it came from (bd_config_parse: its name, "<string>" when NULL) */
  /* server */
  char *grpc_listen;        /* "127.0.0.1:50051"; port 0: any free port */
  char *admin_listen;       /* "127.0.0.1:50052"; port 0: any free port */
  char *admin_token;        /* bearer token for mutating admin calls; NULL: they are refused */
  char *tls_cert, *tls_key; /* PEM files; both or neither (NULL: plaintext gRPC) */
  char *tls_client_ca;      /* PEM; set: clients must present a certificate it signed */
  double drain_timeout_s;   /* SIGTERM: how long running requests may take to finish */
  int32_t grpc_threads;     /* completion-queue threads */
  /* pools */
  bd_pool_cfg executor, planner;
  int32_t calibrate_tokens; /* decode tokens per calibration run at start-up; 0: skip */
  /* controls */
  char *default_policy;
  sched_policy *policies; /* named policies from the file (built-ins are always known) */
  int32_t n_policies;
  sched_policy_limits policy_limits;
  char *plan_prompt, *plan_insert; /* NULL: the router's defaults */
  /* limits */
  int32_t max_message_bytes;   /* largest request message */
  int32_t max_prompt_tokens;   /* after chat rendering */
  int32_t max_tokens;          /* largest max_tokens a request may ask for */
  int32_t default_max_tokens;  /* when a request leaves max_tokens 0 */
  int32_t max_streams;         /* concurrent Generate calls, server-wide */
  int32_t stream_buffer_bytes; /* output a slow client may leave unread before it is cut off */
  /* logging */
  char *log_level; /* "debug", "info", "warn", "error" */
} bd_config;

/* Parse a file; on error *out is NULL and err says "FILE:LINE: ...". */
bl_status bd_config_load(const char *path, bd_config **out, bl_err *err);
/* Parse text (tests); name stands for the file in messages. */
bl_status bd_config_parse(const char *text, const char *name, bd_config **out, bl_err *err);
void bd_config_free(bd_config *c);

/* Keys with the RESTART flag whose values differ ("pools.executor.model"),
 * up to max of them into keys (static strings); returns how many differ. */
int bd_config_restart_diff(const bd_config *old, const bd_config *neu, const char **keys, int max);

/* Give neu the running values of every RESTART key (a reload applies the
 * rest; those wait for a restart, and the effective config says so). */
bl_status bd_config_keep_restart(bd_config *neu, const bd_config *running);

/* The effective configuration as JSON, SENSITIVE values as "<redacted>"
 * (malloc'd; NULL on allocation failure). */
char *bd_config_json(const bd_config *c);

/* docs/configuration.md, from the table. */
void bd_config_doc(FILE *f);

#endif
