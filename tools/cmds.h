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

#endif
