/* generation_config.json's sampling keys as a model's default sampler
 * parameters (see gen_config.h). Like vLLM, do_sample is not consulted:
 * the presence of sampling values is what counts. */
#include "gen_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1L << 24) &&
      fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
      fread(buf, 1, (size_t)n, f) == (size_t)n)
    buf[n] = 0;
  else {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

/* A number in [lo, hi] (integral when asked); absent or null leaves *out and
 * returns BL_OK with *found false. */
static bl_status get_num(const cJSON *j, const char *path, const char *key, double lo, double hi,
                         bool lo_open, bool integral, double *out, bool *found, bl_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
  if (!v || cJSON_IsNull(v)) return BL_OK;
  double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(x >= lo && x <= hi) || (lo_open && x == lo) || (integral && x != floor(x)))
    return bl_fail(err, BL_EFORMAT, "%s: \"%s\" must be %s in %c%g, %g]", path, key,
                   integral ? "an integer" : "a number", lo_open ? '(' : '[', lo, hi);
  *out = x;
  *found = true;
  return BL_OK;
}

static bl_status from_file(const char *path, sampler_params *sp, bool *found, bl_err *err) {
  char *text = slurp(path);
  if (!text) return bl_fail(err, BL_EIO, "%s: cannot read", path);
  cJSON *j = cJSON_Parse(text);
  free(text);
  if (!cJSON_IsObject(j)) {
    cJSON_Delete(j);
    return bl_fail(err, BL_EFORMAT, "%s: not a JSON object", path);
  }
  double t = 1, top_p = 1, top_k = 0, min_p = 0, rep = 1;
  bl_status st;
  if ((st = get_num(j, path, "temperature", 0, 100, false, false, &t, found, err)) ||
      (st = get_num(j, path, "top_p", 0, 1, true, false, &top_p, found, err)) ||
      (st = get_num(j, path, "top_k", -1, 1 << 30, false, true, &top_k, found, err)) ||
      (st = get_num(j, path, "min_p", 0, 1, false, false, &min_p, found, err)) ||
      (st = get_num(j, path, "repetition_penalty", 0, 100, true, false, &rep, found, err))) {
    cJSON_Delete(j);
    return st;
  }
  cJSON_Delete(j);
  *sp = (sampler_params){.temperature = (float)t,
                         .top_k = top_k > 0 ? (int32_t)top_k : 0,
                         .top_p = (float)top_p,
                         .min_p = (float)min_p,
                         .repetition_penalty = (float)rep};
  return BL_OK;
}

bl_status model_sampling_defaults(const char *path, model_arch arch, sampler_params *out,
                                  const char **source, bl_err *err) {
  struct stat sb;
  if (path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    char f[4096];
    snprintf(f, sizeof f, "%s/generation_config.json", path);
    if (stat(f, &sb) == 0) {
      bool found = false;
      sampler_params sp;
      bl_status st = from_file(f, &sp, &found, err);
      if (st) return st;
      if (found) {
        *out = sp;
        if (source) *source = "generation_config.json";
        return BL_OK;
      }
    }
  }
  if (arch == MODEL_ARCH_QWEN3) {
    *out =
        (sampler_params){.temperature = 0.6f, .top_p = 0.95f, .top_k = 20, .repetition_penalty = 1};
    if (source) *source = "qwen3";
  } else {
    *out = (sampler_params){.repetition_penalty = 1, .top_p = 1};
    if (source) *source = "greedy";
  }
  return BL_OK;
}
