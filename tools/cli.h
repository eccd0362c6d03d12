/* Shared helpers for `ballast` subcommands: flag parsing, backend choice
 * and what it runs on, JSON string output, integer lists, wall clock. */
#ifndef TOOLS_CLI_H
#define TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"

/* A flag table row: "--name" and whether it takes a value. */
typedef struct cli_flag {
  const char *name;
  bool has_value;
  const char *value; /* filled by cli_parse; "1" for plain switches */
} cli_flag;

/* Parse argv (after the subcommand) into flags; unknown flags, missing
 * values and stray arguments are reported on stderr and return false. */
bool cli_parse(const char *cmd, int argc, char **argv, cli_flag *flags, int n_flags);
/* A repeatable flag (also listed in flags): every value given, in order. */
typedef struct cli_multi {
  const char *name;
  const char **values; /* [max] */
  int max, n;
} cli_multi;
/* cli_parse that also collects the values of the repeatable flags; more than
 * max of one is an error. */
bool cli_parse_multi(const char *cmd, int argc, char **argv, cli_flag *flags, int n_flags,
                     cli_multi *multi, int n_multi);
const char *cli_get(const cli_flag *flags, int n_flags, const char *name);

/* Parse "1,8,32" into up to max ints; false on malformed input. */
bool cli_int_list(const char *s, int32_t *out, int max, int *n);
/* Parse a non-negative integer (or float) flag value; false on garbage. */
bool cli_int(const char *s, long lo, long hi, long *out);
bool cli_float(const char *s, double lo, double hi, double *out);

/* --device cpu|cuda[:N] and --threads N. */
bl_status cli_backend(const char *device, const char *threads, bk_backend **out, bl_err *err);

/* What be runs on (bk_device_info_get), with an error that names the
 * backend where it cannot say (BL_EUNSUPPORTED) or the query failed. */
bl_status cli_device_info(const bk_backend *be, bk_device_info *out, bl_err *err);

void cli_json_str(FILE *f, const char *s, size_t n);
double cli_now(void);

#endif
