/* The `ballast` subcommands; each takes the arguments after its name and
 * returns the process exit status (0 ok, 1 failed, 2 usage). */
#ifndef TOOLS_CMDS_H
#define TOOLS_CMDS_H

int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_kv_capacity(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_eval(int argc, char **argv);
/* The gRPC clients of ballastd (cmd_client.c, cmd_load.c; cmd_client_off.c without the daemon). */
int cmd_chat(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_health(int argc, char **argv);
int cmd_reload(int argc, char **argv);
int cmd_load(int argc, char **argv); /* cmd_load.c; cmd_client_off.c without the daemon */

#endif
