/* `ballast quantize`: read a model (HF folder or GGUF) and write a
 * GPTQ-format 2- or 4-bit copy that this project and GPTQ loaders read,
 * quantized by GPTQ on calibration text (default) or round-to-nearest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cmds.h"
#include "model_export.h"

/* tests/data/calib/calib.txt, compiled in by tools/meson.build. */
extern const char bl_calib_text[];
extern const size_t bl_calib_text_len;

static const char *usage =
    "usage: ballast quantize --in DIR|FILE.gguf --out DIR --bits 2|4 --group-size N [--sym]\n"
    "         [--method gptq|rtn] [--calib FILE | --calib-ids FILE] [--calib-tokens N]\n"
    "         [--calib-seq-len N] [--damp F] [--device cpu|cuda[:N]] [--threads N]\n"
    "  Writes checkpoint_format gptq (v1), desc_act false, lm_head and embeddings in fp16.\n"
    "  gptq (default): GPTQ layer by layer on calibration tokens (--calib-tokens, default\n"
    "    4096, in sequences of --calib-seq-len, default 256): --calib text tokenized with\n"
    "    the model's tokenizer (default: the built-in Python docstring text), or\n"
    "    --calib-ids, token ids separated by spaces, commas or newlines. A model without\n"
    "    a tokenizer and no --calib-ids gets pseudo-random ids (with a warning).\n"
    "  rtn: round-to-nearest per group on the same grid.\n"
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
  while (out && (n = fread(buf, 1, sizeof buf, in)) > 0)
    fwrite(buf, 1, n, out);
  fclose(in);
  if (out) fclose(out);
}

static bl_status read_file(const char *path, char **text, size_t *len, bl_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return bl_fail(err, BL_EIO, "%s: cannot open", path);
  size_t cap = 1 << 16, n = 0, got;
  char *buf = malloc(cap + 1);
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      char *nb = realloc(buf, 2 * cap + 1);
      if (!nb) free(buf);
      buf = nb;
      cap *= 2;
    }
  }
  bool bad = ferror(f);
  fclose(f);
  if (!buf || bad) {
    free(buf);
    return bl_fail(err, bad ? BL_EIO : BL_ENOMEM, "%s: cannot read", path);
  }
  buf[n] = 0;
  *text = buf;
  *len = n;
  return BL_OK;
}

/* Whitespace- or comma-separated ids from path, at most max of them. */
static bl_status read_ids(const model *m, const char *path, int32_t max, int32_t **ids, int32_t *n,
                          bl_err *err) {
  char *text;
  size_t len;
  bl_status st = read_file(path, &text, &len, err);
  if (st) return st;
  int32_t cap = 1024, cnt = 0;
  int32_t *out = malloc((size_t)cap * sizeof *out);
  for (char *p = text; out && *p && cnt < max;) {
    if (*p == ',' || *p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
      p++;
      continue;
    }
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v >= m->cfg.vocab) {
      ptrdiff_t at = p - text;
      free(out), free(text);
      return bl_fail(err, BL_EINVAL, "%s: expected token ids below %d near byte %td", path,
                     m->cfg.vocab, at);
    }
    if (cnt == cap) {
      int32_t *no = realloc(out, 2 * (size_t)cap * sizeof *out);
      if (!no) free(out);
      out = no;
      cap *= 2;
    }
    if (out) out[cnt++] = (int32_t)v;
    p = end;
  }
  free(text);
  if (!out) return bl_fail(err, BL_ENOMEM, "%s: out of memory", path);
  if (cnt == 0) {
    free(out);
    return bl_fail(err, BL_EINVAL, "%s: no token ids", path);
  }
  *ids = out;
  *n = cnt;
  return BL_OK;
}

/* The calibration ids the flags ask for; *what describes them for the log. */
static bl_status calib_ids(const model *m, const char *text_path, const char *ids_path,
                           int32_t n_tokens, int32_t seq_len, int32_t **ids, int32_t *n,
                           const char **what, bl_err *err) {
  if (ids_path) {
    *what = ids_path;
    return read_ids(m, ids_path, n_tokens, ids, n, err);
  }
  if (!m->tok && !text_path) {
    fprintf(stderr,
            "warning: %s has no tokenizer; calibrating on %d pseudo-random token ids "
            "(pass --calib-ids for a real sample)\n",
            m->path, n_tokens);
    *what = "pseudo-random ids";
    if (!(*ids = malloc((size_t)n_tokens * sizeof **ids)))
      return bl_fail(err, BL_ENOMEM, "out of memory");
    model_calib_random(m, n_tokens, 1, *ids);
    *n = n_tokens;
    return BL_OK;
  }
  if (!text_path) {
    *what = "built-in text (Python docstrings)";
    return model_calib_from_text(m, bl_calib_text, bl_calib_text_len, n_tokens, seq_len, ids, n,
                                 err);
  }
  char *text;
  size_t len;
  bl_status st = read_file(text_path, &text, &len, err);
  if (st) return st;
  *what = text_path;
  st = model_calib_from_text(m, text, len, n_tokens, seq_len, ids, n, err);
  free(text);
  return st;
}

int cmd_quantize(int argc, char **argv) {
  cli_flag f[] = {{"--in", 1, NULL},           {"--out", 1, NULL},
                  {"--bits", 1, NULL},         {"--group-size", 1, NULL},
                  {"--sym", 0, NULL},          {"--method", 1, NULL},
                  {"--calib", 1, NULL},        {"--calib-ids", 1, NULL},
                  {"--calib-tokens", 1, NULL}, {"--calib-seq-len", 1, NULL},
                  {"--damp", 1, NULL},         {"--device", 1, NULL},
                  {"--threads", 1, NULL},      {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("quantize", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *in = cli_get(f, nf, "--in"), *out = cli_get(f, nf, "--out");
  const char *method = cli_get(f, nf, "--method"), *threads = cli_get(f, nf, "--threads");
  long bits, gs, n_calib = 4096, seq_len = 256, nt = 0;
  double damp = 0.01;
  bool gptq = !method || strcmp(method, "gptq") == 0;
  if (!in || !out || !cli_int(cli_get(f, nf, "--bits"), 2, 4, &bits) || bits == 3 ||
      !cli_int(cli_get(f, nf, "--group-size"), 32, 1 << 20, &gs) ||
      (method && !gptq && strcmp(method, "rtn") != 0) ||
      (cli_get(f, nf, "--calib-tokens") &&
       !cli_int(cli_get(f, nf, "--calib-tokens"), 1, 1 << 24, &n_calib)) ||
      (cli_get(f, nf, "--calib-seq-len") &&
       !cli_int(cli_get(f, nf, "--calib-seq-len"), 1, 1 << 16, &seq_len)) ||
      (cli_get(f, nf, "--damp") && !cli_float(cli_get(f, nf, "--damp"), 1e-6, 10, &damp)) ||
      (threads && !cli_int(threads, 0, 1024, &nt))) {
    fputs(usage, stderr);
    return 2;
  }
  bl_err err = {0};
  bk_backend *be = NULL;
  model *m = NULL;
  int32_t *ids = NULL, n_ids = 0;
  const char *what = NULL;
  int rc = 1;
  double t0 = cli_now();
  model_load_opts lo = {.precision = MODEL_PREC_FP16};
  model_export_opts eo = {.bits = (int32_t)bits,
                          .group_size = (int32_t)gs,
                          .sym = cli_get(f, nf, "--sym") != NULL,
                          .method = gptq ? MODEL_QUANT_GPTQ : MODEL_QUANT_RTN,
                          .calib_seq_len = (int32_t)seq_len,
                          .damp = damp,
                          .n_threads = (int)nt,
                          .verbose = true};
  if (cli_backend(cli_get(f, nf, "--device"), threads, &be, &err) ||
      model_load(in, &lo, be, &m, &err))
    goto done;
  if (gptq) {
    if (calib_ids(m, cli_get(f, nf, "--calib"), cli_get(f, nf, "--calib-ids"), (int32_t)n_calib,
                  (int32_t)seq_len, &ids, &n_ids, &what, &err))
      goto done;
    eo.calib_ids = ids;
    eo.n_calib = n_ids;
    fprintf(stderr, "gptq: %d calibration tokens from %s, sequences of %ld, damp %g\n", n_ids, what,
            seq_len, damp);
  }
  if (model_export_gptq(m, out, &eo, &err)) goto done;
  struct stat sb;
  if (stat(in, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    copy_file(in, out, "tokenizer.json");
    copy_file(in, out, "tokenizer_config.json");
    copy_file(in, out, "generation_config.json");
  }
  fprintf(stderr, "wrote %s: %d-bit, group size %ld, %s, %s, %.1f s\n", out, (int)bits, gs,
          eo.sym ? "sym" : "asym", gptq ? "GPTQ" : "round-to-nearest", cli_now() - t0);
  rc = 0;
done:
  if (rc)
    fprintf(stderr, "ballast quantize: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  free(ids);
  model_free(m);
  bk_destroy(be);
  return rc;
}
