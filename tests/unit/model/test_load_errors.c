/* Broken model files fail the load with a message naming the file and the
 * tensor or key, never a crash: unknown architecture, missing tensor, wrong
 * shape, wrong dtype, truncated shard, truncated GGUF, bad GPTQ settings.
 * Each case copies tests/data/tiny-qwen3 (or the demo GGUF when
 * BALLAST_SMOLLM2_GGUF is set) into a temp folder and breaks one thing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/t.h"
#include "model.h"
#include "safetensors.h"

static bk_backend *be;
static char tmp[64];

static void sh(const char *fmt, const char *a, const char *b) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, fmt, a, b);
  T_CHECKF(system(cmd) == 0, "%s", cmd);
}

/* Fresh copy of the tiny model in tmp/m. */
static void fresh(const char *data) {
  char src[1024];
  snprintf(src, sizeof src, "%s/tiny-qwen3", data);
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "rm -rf '%s/m' && cp -r '%s' '%s/m'", tmp, src, tmp);
  T_CHECK(system(cmd) == 0);
}

/* The load must fail and the message must contain every needle. */
static void expect_fail(const char *path, const char *what, const char *n1, const char *n2) {
  bl_err err = {0};
  model *m = NULL;
  bl_status st = model_load(path, NULL, be, &m, &err);
  T_CHECKF(st != BL_OK && m == NULL, "%s: load succeeded", what);
  T_CHECKF(strstr(err.msg, n1) != NULL, "%s: '%s' not in message: %s", what, n1, err.msg);
  if (n2) T_CHECKF(strstr(err.msg, n2) != NULL, "%s: '%s' not in message: %s", what, n2, err.msg);
  fprintf(stderr, "%-28s -> %s\n", what, err.msg);
}

/* Rewrite shard 1 of tmp/m with tensor `name` dropped, retyped or reshaped. */
static void rewrite_shard(const char *name, int mode) {
  char path[256];
  snprintf(path, sizeof path, "%s/m/model-00001-of-00002.safetensors", tmp);
  bl_err err = {0};
  st_set *s = NULL;
  T_CHECKF(st_open_file(path, &s, &err) == BL_OK, "%s", err.msg);
  if (!s) return;
  st_writer *w = st_writer_new();
  for (size_t i = 0; i < st_count(s); i++) {
    const st_tensor *t = st_at(s, i);
    if (strcmp(t->name, name) == 0) {
      if (mode == 0) continue; /* drop */
      if (mode == 1) {         /* same bytes, int16 dtype */
        st_writer_add(w, t->name, ST_I16, t->n_dims, t->shape, t->data, &err);
        continue;
      }
      int64_t shape[2] = {t->shape[0] / 2, t->shape[1]}; /* half the rows */
      st_writer_add(w, t->name, t->dtype, t->n_dims, shape, t->data, &err);
      continue;
    }
    st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, &err);
  }
  char out[300];
  snprintf(out, sizeof out, "%s.new", path);
  T_CHECKF(st_writer_finish(w, out, &err) == BL_OK, "%s", err.msg);
  st_writer_free(w);
  st_close(s);
  T_CHECK(rename(out, path) == 0);
}

static void sed_config(const char *expr) {
  char path[256];
  snprintf(path, sizeof path, "%s/m/config.json", tmp);
  sh("sed -i '%s' '%s'", expr, path);
}

int main(int argc, char **argv) {
  const char *data = argc > 1 ? argv[1] : "tests/data";
  bl_err err = {0};
  if (bk_cpu_create(1, &be, &err) != BL_OK) return 1;
  snprintf(tmp, sizeof tmp, "/tmp/ballast-load-XXXXXX");
  T_CHECK(mkdtemp(tmp) != NULL);
  char m[128], shard[256], gguf[256];
  snprintf(m, sizeof m, "%s/m", tmp);
  snprintf(shard, sizeof shard, "%s/m/model-00001-of-00002.safetensors", tmp);

  expect_fail("/nonexistent/model", "missing path", "/nonexistent/model", NULL);
  fresh(data);
  sed_config("s/\"model_type\": \"qwen3\"/\"model_type\": \"gpt_neox\"/");
  expect_fail(m, "unknown architecture", "config.json", "gpt_neox");
  fresh(data);
  sed_config("s/\"num_hidden_layers\": 3/\"num_hidden_layers\": 4/");
  expect_fail(m, "missing layer", "model.layers.3", NULL);
  fresh(data);
  rewrite_shard("model.layers.0.self_attn.q_proj.weight", 0);
  expect_fail(m, "missing tensor", "model.layers.0.self_attn.q_proj.weight", NULL);
  fresh(data);
  rewrite_shard("model.layers.0.mlp.up_proj.weight", 1);
  expect_fail(m, "wrong dtype", "model.layers.0.mlp.up_proj.weight", "I16");
  fresh(data);
  rewrite_shard("model.layers.0.mlp.gate_proj.weight", 2);
  expect_fail(m, "wrong shape", "model.layers.0.mlp.gate_proj.weight", "shape");
  fresh(data);
  T_CHECK(truncate(shard, 100000) == 0);
  expect_fail(m, "truncated shard", "model-00001-of-00002.safetensors", NULL);
  fresh(data);
  sed_config("s/\"rope_type\": \"default\"/\"rope_type\": \"yarn\"/");
  expect_fail(m, "scaled rope", "yarn", NULL);

  /* GPTQ: a bit width the loader does not handle, and a missing qzeros. */
  char gq[1024];
  snprintf(gq, sizeof gq, "%s/tiny-qwen3-gptq-w2-g32-sym-v1", data);
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "cp -r '%s' '%s/g' && sed -i 's/\"bits\": 2/\"bits\": 3/' '%s/g/config.json'", gq, tmp,
           tmp);
  T_CHECK(system(cmd) == 0);
  snprintf(m, sizeof m, "%s/g", tmp);
  expect_fail(m, "GPTQ 3-bit", "bits 3", NULL);

  const char *real = getenv("BALLAST_SMOLLM2_GGUF");
  if (real && *real) {
    snprintf(gguf, sizeof gguf, "%s/cut.gguf", tmp);
    snprintf(cmd, sizeof cmd, "head -c 50000000 '%s' > '%s'", real, gguf);
    T_CHECK(system(cmd) == 0);
    expect_fail(gguf, "truncated GGUF", "cut.gguf", "past");
    snprintf(cmd, sizeof cmd, "head -c 3000 '%s' > '%s'", real, gguf);
    T_CHECK(system(cmd) == 0);
    expect_fail(gguf, "GGUF cut in metadata", "cut.gguf", NULL);
  } else {
    fprintf(stderr, "GGUF cases skipped: BALLAST_SMOLLM2_GGUF is not set\n");
  }
  sh("rm -rf '%s'%s", tmp, "");
  bk_destroy(be);
  return T_DONE();
}
