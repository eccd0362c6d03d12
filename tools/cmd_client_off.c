/* The client commands of a build configured with -Ddaemon=disabled: there
 * is no gRPC library to talk to ballastd with, so each says so and fails.
 * meson compiles this file instead of cmd_client.c, cmd_load.c, client_cli.c
 * and grpc_client.c. */
#include <stdio.h>

#include "cmds.h"

static int no_client(const char *cmd) {
  fprintf(stderr, "ballast %s: this build has no gRPC client (configured with -Ddaemon=disabled)\n",
          cmd);
  return 1;
}

int cmd_chat(int argc, char **argv) { return no_client("chat"); }
int cmd_stats(int argc, char **argv) { return no_client("stats"); }
int cmd_health(int argc, char **argv) { return no_client("health"); }
int cmd_reload(int argc, char **argv) { return no_client("reload"); }
int cmd_load(int argc, char **argv) { return no_client("load"); }
