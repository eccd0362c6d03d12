/* `ballast`: one command, many subcommands. main only dispatches. */
#include <stdio.h>
#include <string.h>

#include "cmds.h"

typedef struct subcmd {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *help;
} subcmd;

static const subcmd k_cmds[] = {
    {"generate", cmd_generate, "generate text offline from a model"},
    {"bench", cmd_bench, "decode tokens/s per precision and batch, or through the scheduler"},
    {"quantize", cmd_quantize, "write a GPTQ-format 2/4-bit copy of a model"},
    {"kv-capacity", cmd_kv_capacity, "concurrent sequences per KV format in a memory budget"},
    {"tokenize", cmd_tokenize, "encode JSON strings to ids, or decode ids (one per line)"},
    {"trace", cmd_trace, "loop detection and rescue decisions on recorded traces (JSONL)"},
    {"eval", cmd_eval,
     "a prompt set under each reasoning-control policy: accuracy, loops, speed-up"},
    {"chat", cmd_chat, "send a message to ballastd and stream the reply (gRPC Generate)"},
    {"stats", cmd_stats, "ballastd's counters and measured throughput per pool and policy"},
    {"health", cmd_health, "ballastd's gRPC health: SERVING or NOT_SERVING (exit 0 only serving)"},
    {"reload", cmd_reload, "make ballastd re-read its config file (needs the admin token)"},
    {"load", cmd_load, "closed-loop load on ballastd: TTFT, ITL, E2E, tok/s, speed-up over fp16"},
};

int main(int argc, char **argv) {
  size_t n = sizeof k_cmds / sizeof *k_cmds;
  if (argc >= 2)
    for (size_t i = 0; i < n; i++)
      if (strcmp(argv[1], k_cmds[i].name) == 0) return k_cmds[i].run(argc - 2, argv + 2);
  FILE *out = argc >= 2 && strcmp(argv[1], "--help") != 0 ? stderr : stdout;
  if (argc >= 2 && out == stderr) fprintf(stderr, "ballast: unknown command '%s'\n", argv[1]);
  fprintf(out, "usage: ballast COMMAND [flags]   (ballast COMMAND --help for its flags)\n\n");
  for (size_t i = 0; i < n; i++)
    fprintf(out, "  %-12s %s\n", k_cmds[i].name, k_cmds[i].help);
  return out == stderr ? 2 : 0;
}
