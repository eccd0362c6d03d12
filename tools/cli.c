/* Flag parsing and small output helpers for the `ballast` command. */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool cli_parse(const char *cmd, int argc, char **argv, cli_flag *flags, int n_flags) {
  return cli_parse_multi(cmd, argc, argv, flags, n_flags, NULL, 0);
}

bool cli_parse_multi(const char *cmd, int argc, char **argv, cli_flag *flags, int n_flags,
                     cli_multi *multi, int n_multi) {
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    cli_flag *f = NULL;
    for (int j = 0; j < n_flags; j++)
      if (strlen(flags[j].name) == len && strncmp(flags[j].name, a, len) == 0) f = &flags[j];
    if (!f) {
      fprintf(stderr, "ballast %s: unknown argument '%s' (see ballast %s --help)\n", cmd, a, cmd);
      return false;
    }
    if (!f->has_value) {
      f->value = "1";
    } else if (eq) {
      f->value = eq + 1;
    } else if (i + 1 < argc) {
      f->value = argv[++i];
    } else {
      fprintf(stderr, "ballast %s: %s needs a value\n", cmd, f->name);
      return false;
    }
    for (int j = 0; j < n_multi; j++) {
      cli_multi *mv = &multi[j];
      if (strcmp(mv->name, f->name) != 0) continue;
      if (mv->n == mv->max) {
        fprintf(stderr, "ballast %s: %s given more than %d times\n", cmd, f->name, mv->max);
        return false;
      }
      mv->values[mv->n++] = f->value;
    }
  }
  return true;
}

const char *cli_get(const cli_flag *flags, int n_flags, const char *name) {
  for (int i = 0; i < n_flags; i++)
    if (strcmp(flags[i].name, name) == 0) return flags[i].value;
  return NULL;
}

bool cli_int(const char *s, long lo, long hi, long *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool cli_float(const char *s, double lo, double hi, double *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !(v >= lo && v <= hi)) return false;
  *out = v;
  return true;
}

bool cli_int_list(const char *s, int32_t *out, int max, int *n) {
  *n = 0;
  char buf[256];
  if (!s || strlen(s) >= sizeof buf) return false;
  strcpy(buf, s);
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    long v;
    if (*n >= max || !cli_int(t, 1, 1 << 20, &v)) return false;
    out[(*n)++] = (int32_t)v;
  }
  return *n > 0;
}

bl_status cli_backend(const char *device, const char *threads, bk_backend **out, bl_err *err) {
  long nt = 0;
  if (threads && !cli_int(threads, 0, 1024, &nt))
    return bl_fail(err, BL_EINVAL, "--threads must be an integer in [0, 1024]");
  if (!device || strcmp(device, "cpu") == 0) return bk_cpu_create((int)nt, out, err);
  if (strncmp(device, "cuda", 4) == 0) {
    long dev = 0;
    if (device[4] == ':' && !cli_int(device + 5, 0, 64, &dev))
      return bl_fail(err, BL_EINVAL, "--device %s: expected cuda or cuda:N", device);
    if (device[4] && device[4] != ':')
      return bl_fail(err, BL_EINVAL, "--device %s: expected cuda or cuda:N", device);
    return bk_cuda_create((int)dev, out, err);
  }
  if (strcmp(device, "null") == 0) return bk_null_create(out, err); /* overhead benchmarks */
  return bl_fail(err, BL_EINVAL, "--device %s: expected cpu, cuda or cuda:N", device);
}

bl_status cli_device_info(const bk_backend *be, bk_device_info *out, bl_err *err) {
  bl_status st = bk_device_info_get(be, out);
  if (st == BL_EUNSUPPORTED)
    return bl_fail(err, st, "%s: the backend cannot say what device it runs on", be->name);
  if (st != BL_OK) {
    const char *why = be->last_error ? be->last_error(be) : NULL;
    return bl_fail(err, st, "%s: device query failed: %s", be->name,
                   why && *why ? why : bl_status_str(st));
  }
  return BL_OK;
}

void cli_json_str(FILE *f, const char *s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      if (c < 0x20)
        fprintf(f, "\\u%04x", c);
      else
        fputc(c, f);
    }
  }
  fputc('"', f);
}

double cli_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
