/* `ballast generate`: offline, in-process generation for one prompt,
 * streaming text to stdout, or one JSON object with --json. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "runner.h"
#include "sampler.h"

static const char *usage =
    "usage: ballast generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3)\n"
    "         [--precision auto|fp16|w4|w2] [--group-size N] [--max-tokens N]\n"
    "         [--temperature T] [--top-k K] [--top-p P] [--seed S] [--ignore-eos]\n"
    "         [--device cpu|cuda[:N]] [--threads N] [--tokenizer tokenizer.json] [--json]\n";

typedef struct gen_out {
  int32_t *ids;
  int32_t n;
  char *text;
  size_t len, cap;
  const char *finish;
  double prefill_s, decode_s;
} gen_out;

static void print_json(const model *m, const int32_t *prompt, int32_t np, const gen_out *g) {
  printf("{\"model\":");
  cli_json_str(stdout, m->path, strlen(m->path));
  printf(",\"precision\":\"%s\",\"text\":", model_prec_name(m->prec));
  cli_json_str(stdout, g->text ? g->text : "", g->len);
  printf(",\"prompt_ids\":[");
  for (int32_t i = 0; i < np; i++) printf(i ? ",%d" : "%d", prompt[i]);
  printf("],\"ids\":[");
  for (int32_t i = 0; i < g->n; i++) printf(i ? ",%d" : "%d", g->ids[i]);
  double dtps = g->n > 1 && g->decode_s > 0 ? (g->n - 1) / g->decode_s : 0;
  printf("],\"finish_reason\":\"%s\",\"prompt_tokens\":%d,\"generated_tokens\":%d,"
         "\"prefill_s\":%.6f,\"decode_s\":%.6f,\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f}\n",
         g->finish, np, g->n, g->prefill_s, g->decode_s, g->prefill_s > 0 ? np / g->prefill_s : 0, dtps);
}

static bl_status parse_prompt(model *m, const char *text, const char *ids, int32_t **out, int32_t *n,
                              bl_err *err) {
  if (ids) {
    int32_t cap = (int32_t)strlen(ids) / 2 + 1;
    *out = malloc((size_t)cap * sizeof **out);
    int cnt;
    if (!*out || !cli_int_list(ids, *out, cap, &cnt))
      return bl_fail(err, BL_EINVAL, "--prompt-ids: expected comma-separated token ids");
    *n = cnt;
    for (int i = 0; i < cnt; i++)
      if ((*out)[i] >= m->cfg.vocab)
        return bl_fail(err, BL_EINVAL, "--prompt-ids: id %d outside the vocabulary (%d)", (*out)[i], m->cfg.vocab);
    return BL_OK;
  }
  if (!m->tok) return bl_fail(err, BL_EINVAL, "%s has no tokenizer: pass --tokenizer or --prompt-ids", m->path);
  size_t cnt;
  bl_status st = tok_encode(m->tok, text, strlen(text), true, out, &cnt, err);
  if (st) return st;
  *n = (int32_t)cnt;
  if (cnt == 0) return bl_fail(err, BL_EINVAL, "the prompt is empty");
  return BL_OK;
}

static bl_status generate(model *m, const int32_t *prompt, int32_t np, int32_t max_tokens,
                          const sampler_params *sp, bool ignore_eos, bool stream, gen_out *g,
                          bl_err *err) {
  runner r;
  bl_status st = runner_init(&r, m, 1, np + max_tokens, err);
  if (st) return st;
  int32_t vocab = m->cfg.vocab;
  float *logits = malloc((size_t)vocab * sizeof *logits);
  void *scratch = malloc(sampler_scratch_bytes(vocab));
  g->ids = malloc(((size_t)max_tokens + 1) * sizeof *g->ids);
  tok_stream ts = {0};
  if (!logits || !scratch || !g->ids) {
    st = bl_fail(err, BL_ENOMEM, "generate: out of memory");
    goto done;
  }
  double t0 = cli_now();
  if ((st = runner_prefill(&r, 0, prompt, np, logits, err))) goto done;
  double t1 = cli_now();
  g->prefill_s = t1 - t0;
  g->finish = "length";
  for (int32_t i = 0; i < max_tokens; i++) {
    int32_t id = sampler_sample(sp, logits, vocab, (uint64_t)i, scratch);
    g->ids[g->n++] = id;
    if (!ignore_eos && model_is_eos(m, id)) {
      g->finish = "stop";
      break;
    }
    if (m->tok) {
      size_t before = g->len;
      if ((st = tok_stream_push(&ts, m->tok, id, &g->text, &g->len, &g->cap))) goto done;
      if (stream && g->len > before) {
        fwrite(g->text + before, 1, g->len - before, stdout);
        fflush(stdout);
      }
    }
    if (i + 1 == max_tokens) break;
    if ((st = runner_decode(&r, &id, logits, err))) goto done;
  }
  g->decode_s = cli_now() - t1;
  if (m->tok) {
    size_t before = g->len;
    st = tok_stream_flush(&ts, &g->text, &g->len, &g->cap);
    if (stream && g->len > before) fwrite(g->text + before, 1, g->len - before, stdout);
  }
done:
  free(logits);
  free(scratch);
  runner_free(&r);
  return st;
}

int cmd_generate(int argc, char **argv) {
  cli_flag f[] = {{"--model", 1, NULL}, {"--prompt", 1, NULL}, {"--prompt-ids", 1, NULL}, {"--precision", 1, NULL},
                  {"--group-size", 1, NULL}, {"--max-tokens", 1, NULL}, {"--temperature", 1, NULL}, {"--top-k", 1, NULL},
                  {"--top-p", 1, NULL}, {"--seed", 1, NULL}, {"--ignore-eos", 0, NULL}, {"--device", 1, NULL},
                  {"--threads", 1, NULL}, {"--tokenizer", 1, NULL}, {"--json", 0, NULL}, {"--help", 0, NULL}};
  int nf = (int)(sizeof f / sizeof *f);
  if (!cli_parse("generate", argc, argv, f, nf)) return 2;
  if (cli_get(f, nf, "--help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *path = cli_get(f, nf, "--model"), *prompt = cli_get(f, nf, "--prompt");
  const char *prompt_ids = cli_get(f, nf, "--prompt-ids");
  if (!path || (!prompt == !prompt_ids)) {
    fputs(usage, stderr);
    return 2;
  }
  model_load_opts opts = {.tokenizer_path = cli_get(f, nf, "--tokenizer")};
  long max_tokens = 128, gs = 0, top_k = 0, seed = 0;
  double temp = 0, top_p = 1;
  const char *v;
  if (((v = cli_get(f, nf, "--precision")) && model_prec_parse(v, &opts.precision)) ||
      ((v = cli_get(f, nf, "--group-size")) && !cli_int(v, 32, 1 << 20, &gs)) ||
      ((v = cli_get(f, nf, "--max-tokens")) && !cli_int(v, 1, 1 << 20, &max_tokens)) ||
      ((v = cli_get(f, nf, "--temperature")) && !cli_float(v, 0, 100, &temp)) ||
      ((v = cli_get(f, nf, "--top-k")) && !cli_int(v, 0, 1 << 24, &top_k)) ||
      ((v = cli_get(f, nf, "--top-p")) && !cli_float(v, 0, 1, &top_p)) ||
      ((v = cli_get(f, nf, "--seed")) && !cli_int(v, 0, __LONG_MAX__, &seed))) {
    fprintf(stderr, "ballast generate: bad value '%s'\n%s", v, usage);
    return 2;
  }
  opts.group_size = (int32_t)gs;
  bl_err err = {0};
  bk_backend *be = NULL;
  model *m = NULL;
  int32_t *ids = NULL, np = 0;
  gen_out g = {0};
  int rc = 1;
  if (cli_backend(cli_get(f, nf, "--device"), cli_get(f, nf, "--threads"), &be, &err) ||
      model_load(path, &opts, be, &m, &err) ||
      parse_prompt(m, prompt, prompt_ids, &ids, &np, &err))
    goto done;
  sampler_params sp = {.temperature = (float)temp, .top_k = (int32_t)top_k, .top_p = (float)top_p,
                       .seed = (uint64_t)seed};
  bool json = cli_get(f, nf, "--json") != NULL;
  if (generate(m, ids, np, (int32_t)max_tokens, &sp, cli_get(f, nf, "--ignore-eos") != NULL, !json, &g, &err))
    goto done;
  if (json) print_json(m, ids, np, &g);
  else {
    putchar('\n');
    fflush(stdout); /* the summary on stderr must follow the text */
    fprintf(stderr, "[%d prompt tokens in %.3f s, %d generated in %.3f s: %.2f tok/s, %s]\n", np,
            g.prefill_s, g.n, g.decode_s, g.n > 1 && g.decode_s > 0 ? (g.n - 1) / g.decode_s : 0.0, g.finish);
  }
  rc = 0;
done:
  if (rc) fprintf(stderr, "ballast generate: %s\n", err.msg[0] ? err.msg : bl_status_str(err.status));
  free(ids);
  free(g.ids);
  free(g.text);
  model_free(m);
  bk_destroy(be);
  return rc;
}
