/* `ballast quantize`: read a model (HF folder or GGUF) and write a
 * GPTQ-format 2- or 4-bit copy that this project and GPTQ loaders read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cmds.h"
#include "model_export.h"

static const char *usage =
    "usage: ballast quantize --in DIR|FILE.gguf --out DIR --bits 2|4 --group-size N [--sym]\n"
    "  Round-to-nearest per group on the GPTQ grid (checkpoint_format gptq, desc_act false).\n"
    "  Tokenizer files beside a folder input are copied.\n";

static void copy_file(const char *from_dir, const char *to_dir, const char *name) {
  char a[4096], b[4096];
  snprintf(a, sizeof a, "%s/%s", from_dir, name);
  snprintf(b, sizeof b, "%s/%s", to_dir, name);
  FILE *in = fopen(a, "rb");
  if (!in) return;
  FILE *out = fopen(b, "wb");
  char buf[65536];
  size_t n;
  while (out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
  fclose(in);
  if (out) fclose(out);
}

int cmd_quantize(int argc, char **argv) {
  cli_flag f[] = {{"--in", 1, NULL}, {"--out", 1, NULL}, {"--bits", 1, NULL}, {"--group-size", 1, NULL}, {"--sym", 0, NULL},
                  {"--threads", 1, NULL}, {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("quantize", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *in = cli_get(f, nf, "--in"), *out = cli_get(f, nf, "--out");
  long bits, gs;
  if (!in || !out || !cli_int(cli_get(f, nf, "--bits"), 2, 4, &bits) || bits == 3 ||
      !cli_int(cli_get(f, nf, "--group-size"), 32, 1 << 20, &gs)) {
    fputs(usage, stderr);
    return 2;
  }
  bl_err err = {0};
  bk_backend *be = NULL;
  model *m = NULL;
  int rc = 1;
  model_load_opts lo = {.precision = MODEL_PREC_FP16};
  model_export_opts eo = {.bits = (int32_t)bits, .group_size = (int32_t)gs, .sym = cli_get(f, nf, "--sym") != NULL};
  if (cli_backend("cpu", cli_get(f, nf, "--threads"), &be, &err) || model_load(in, &lo, be, &m, &err) ||
      model_export_gptq(m, out, &eo, &err))
    goto done;
  struct stat sb;
  if (stat(in, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    copy_file(in, out, "tokenizer.json");
    copy_file(in, out, "tokenizer_config.json");
    copy_file(in, out, "generation_config.json");
  }
  fprintf(stderr, "wrote %s: %d-bit, group size %ld, %s, round-to-nearest\n", out, (int)bits, gs,
          eo.sym ? "sym" : "asym");
  rc = 0;
done:
  if (rc) fprintf(stderr, "ballast quantize: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  model_free(m);
  bk_destroy(be);
  return rc;
}
