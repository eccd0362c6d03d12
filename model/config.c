/* Model configuration from a Hugging Face config.json (plus GPTQ settings
 * from quantization_config or quantize_config.json) or from GGUF metadata.
 * Every missing or out-of-range field is an error naming the file and key. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
      if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
      } else {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
      }
    }
  }
  fclose(f);
  return buf;
}

static cJSON *read_json(const char *path, bl_err *err) {
  char *text = slurp(path, NULL);
  if (!text) {
    bl_fail(err, BL_EIO, "%s: cannot read", path);
    return NULL;
  }
  cJSON *j = cJSON_Parse(text);
  if (!j) {
    const char *at = cJSON_GetErrorPtr();
    bl_fail(err, BL_EFORMAT, "%s: invalid JSON near byte %ld", path, at ? (long)(at - text) : -1L);
  }
  free(text);
  return j;
}

/* Integer field: required unless a default >= 0 is given (-1: required). */
static bl_status get_int(const cJSON *o, const char *path, const char *key, int64_t def, int64_t lo,
                         int64_t hi, int32_t *out, bl_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    if (def < 0) return bl_fail(err, BL_EFORMAT, "%s: missing integer \"%s\"", path, key);
    *out = (int32_t)def;
    return BL_OK;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
    return bl_fail(err, BL_EFORMAT, "%s: \"%s\" is not an integer", path, key);
  int64_t x = (int64_t)v->valuedouble;
  if (x < lo || x > hi)
    return bl_fail(err, BL_EFORMAT, "%s: \"%s\" = %lld outside [%lld, %lld]", path, key,
                   (long long)x, (long long)lo, (long long)hi);
  *out = (int32_t)x;
  return BL_OK;
}

static bl_status get_float(const cJSON *o, const char *path, const char *key, double def,
                           float *out, bl_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) {
    if (def < 0) return bl_fail(err, BL_EFORMAT, "%s: missing number \"%s\"", path, key);
    *out = (float)def;
    return BL_OK;
  }
  if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
    return bl_fail(err, BL_EFORMAT, "%s: \"%s\" must be a positive number", path, key);
  *out = (float)v->valuedouble;
  return BL_OK;
}

static bool get_bool(const cJSON *o, const char *key, bool def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

/* eos_token_id may be an int or a list; ids are appended without repeats. */
static void add_eos(model_config *c, const cJSON *v) {
  const cJSON *e;
  if (cJSON_IsNumber(v)) {
    for (int i = 0; i < c->n_eos; i++)
      if (c->eos_ids[i] == v->valueint) return;
    if (c->n_eos < MODEL_MAX_EOS) c->eos_ids[c->n_eos++] = v->valueint;
  } else if (cJSON_IsArray(v)) {
    cJSON_ArrayForEach(e, v) add_eos(c, e);
  }
}

/* rope_theta sits at the top level (transformers 4) or in rope_parameters
 * (transformers 5). Scaled RoPE variants and sliding windows change the
 * math, so they are refused rather than ignored. */
static bl_status rope_settings(const cJSON *j, const char *path, model_config *c, bl_err *err) {
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
  if (c->rope_theta == 0.0f && cJSON_IsObject(rp)) {
    bl_status st = get_float(rp, path, "rope_theta", 10000.0, &c->rope_theta, err);
    if (st) return st;
  }
  if (c->rope_theta == 0.0f) c->rope_theta = 10000.0f;
  const cJSON *objs[] = {rp, rs};
  for (int i = 0; i < 2; i++) {
    if (!cJSON_IsObject(objs[i])) continue;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(objs[i], "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(objs[i], "type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "default") != 0)
      return bl_fail(err, BL_EUNSUPPORTED, "%s: rope_type \"%s\" is not supported (default is)",
                     path, t->valuestring);
  }
  if (get_bool(j, "use_sliding_window", false))
    return bl_fail(err, BL_EUNSUPPORTED, "%s: use_sliding_window is not supported", path);
  return BL_OK;
}

static bl_status gptq_from_json(const cJSON *q, const char *path, gptq_info *gi, bl_err *err) {
  const cJSON *method = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
  if (cJSON_IsString(method) && strcmp(method->valuestring, "gptq") != 0)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: quant_method \"%s\" is not supported (gptq is)", path,
                   method->valuestring);
  bl_status st = get_int(q, path, "bits", -1, 2, 8, &gi->bits, err);
  if (st) return st;
  if (gi->bits != 2 && gi->bits != 4)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: GPTQ bits %d not supported (2 and 4 are)", path,
                   gi->bits);
  if ((st = get_int(q, path, "group_size", -1, -1, 1 << 20, &gi->group_size, err))) return st;
  if (gi->group_size == 0)
    return bl_fail(err, BL_EFORMAT, "%s: GPTQ group_size 0 is invalid", path);
  gi->sym = get_bool(q, "sym", true);
  gi->desc_act = get_bool(q, "desc_act", false);
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "checkpoint_format");
  gi->v2 = false;
  if (cJSON_IsString(fmt)) {
    if (strcmp(fmt->valuestring, "gptq_v2") == 0)
      gi->v2 = true;
    else if (strcmp(fmt->valuestring, "gptq") != 0)
      return bl_fail(err, BL_EUNSUPPORTED, "%s: checkpoint_format \"%s\" not supported", path,
                     fmt->valuestring);
  }
  return BL_OK;
}

bl_status config_from_hf(const char *dir, model_config *c, gptq_info *gi, bool *is_gptq,
                         bl_err *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  cJSON *j = read_json(path, err);
  if (!j) return err ? err->status : BL_EIO;
  bl_status st = BL_OK;
  *c = (model_config){.bos_id = -1};
  *is_gptq = false;
  const cJSON *arch = cJSON_GetObjectItemCaseSensitive(j, "model_type");
  if (!cJSON_IsString(arch)) {
    st = bl_fail(err, BL_EFORMAT, "%s: missing \"model_type\"", path);
    goto done;
  }
  if (strcmp(arch->valuestring, "qwen3") == 0)
    c->arch = MODEL_ARCH_QWEN3;
  else if (strcmp(arch->valuestring, "llama") == 0)
    c->arch = MODEL_ARCH_LLAMA;
  else {
    st = bl_fail(err, BL_EUNSUPPORTED,
                 "%s: model_type \"%s\" is not supported (qwen3 and llama are)", path,
                 arch->valuestring);
    goto done;
  }
  c->qk_norm = c->arch == MODEL_ARCH_QWEN3;
  if ((st = get_int(j, path, "num_hidden_layers", -1, 1, 1024, &c->n_layers, err)) ||
      (st = get_int(j, path, "hidden_size", -1, 1, 1 << 20, &c->hidden, err)) ||
      (st = get_int(j, path, "intermediate_size", -1, 1, 1 << 22, &c->intermediate, err)) ||
      (st = get_int(j, path, "num_attention_heads", -1, 1, 1024, &c->n_heads, err)) ||
      (st = get_int(j, path, "num_key_value_heads", c->n_heads, 1, 1024, &c->n_kv_heads, err)) ||
      (st = get_int(j, path, "head_dim", c->hidden / c->n_heads, 2, 1024, &c->head_dim, err)) ||
      (st = get_int(j, path, "vocab_size", -1, 1, 1 << 24, &c->vocab, err)) ||
      (st = get_int(j, path, "max_position_embeddings", 4096, 1, 1 << 24, &c->max_ctx, err)) ||
      (st = get_float(j, path, "rope_theta", 0.0, &c->rope_theta, err)) ||
      (st = get_float(j, path, "rms_norm_eps", 1e-6, &c->norm_eps, err)))
    goto done;
  if ((st = rope_settings(j, path, c, err))) goto done;
  if (c->n_heads % c->n_kv_heads || c->head_dim % 2) {
    st = bl_fail(err, BL_EFORMAT, "%s: %d heads not a multiple of %d kv heads, or odd head_dim %d",
                 path, c->n_heads, c->n_kv_heads, c->head_dim);
    goto done;
  }
  c->tied = get_bool(j, "tie_word_embeddings", false);
  const cJSON *bos = cJSON_GetObjectItemCaseSensitive(j, "bos_token_id");
  if (cJSON_IsNumber(bos)) c->bos_id = bos->valueint;
  add_eos(c, cJSON_GetObjectItemCaseSensitive(j, "eos_token_id"));
  const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quantization_config");
  if (cJSON_IsObject(q)) {
    *is_gptq = true;
    st = gptq_from_json(q, path, gi, err);
  } else {
    snprintf(path, sizeof path, "%s/quantize_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
      fclose(f);
      cJSON *qj = read_json(path, err);
      if (!qj) {
        st = err ? err->status : BL_EFORMAT;
        goto done;
      }
      *is_gptq = true;
      st = gptq_from_json(qj, path, gi, err);
      cJSON_Delete(qj);
    }
  }
  if (st) goto done;
  /* generation_config.json may name more end tokens (Qwen3: im_end and endoftext). */
  snprintf(path, sizeof path, "%s/generation_config.json", dir);
  FILE *g = fopen(path, "rb");
  if (g) {
    fclose(g);
    bl_err ignore = {0};
    cJSON *gj = read_json(path, &ignore);
    if (gj) add_eos(c, cJSON_GetObjectItemCaseSensitive(gj, "eos_token_id"));
    cJSON_Delete(gj);
  }
done:
  cJSON_Delete(j);
  return st;
}

static bl_status gguf_u32(const gguf_file *f, const char *arch, const char *key, uint32_t def,
                          int32_t *out, bl_err *err) {
  char k[128];
  snprintf(k, sizeof k, "%s.%s", arch, key);
  uint32_t v;
  if (!gguf_find_kv(f, k)) {
    if (def == UINT32_MAX) return bl_fail(err, BL_EFORMAT, "%s: missing metadata %s", f->path, k);
    *out = (int32_t)def;
    return BL_OK;
  }
  bl_status st = gguf_get_u32(f, k, &v, err);
  if (st) return st;
  if (v == 0 || v > (1u << 24))
    return bl_fail(err, BL_EFORMAT, "%s: %s = %u out of range", f->path, k, v);
  *out = (int32_t)v;
  return BL_OK;
}

bl_status config_from_gguf(const gguf_file *f, model_config *c, bl_err *err) {
  *c = (model_config){.bos_id = -1};
  gguf_str a;
  bl_status st = gguf_get_str(f, "general.architecture", &a, err);
  if (st) return st;
  const char *arch;
  if (gguf_str_eq(a, "llama")) {
    arch = "llama";
    c->arch = MODEL_ARCH_LLAMA;
  } else if (gguf_str_eq(a, "qwen3")) {
    arch = "qwen3";
    c->arch = MODEL_ARCH_QWEN3;
    c->qk_norm = true;
  } else {
    return bl_fail(err, BL_EUNSUPPORTED,
                   "%s: architecture \"%.*s\" is not supported (qwen3 and llama are)", f->path,
                   (int)a.len, a.ptr);
  }
  int32_t rope_dims = 0;
  if ((st = gguf_u32(f, arch, "block_count", UINT32_MAX, &c->n_layers, err)) ||
      (st = gguf_u32(f, arch, "embedding_length", UINT32_MAX, &c->hidden, err)) ||
      (st = gguf_u32(f, arch, "feed_forward_length", UINT32_MAX, &c->intermediate, err)) ||
      (st = gguf_u32(f, arch, "attention.head_count", UINT32_MAX, &c->n_heads, err)) ||
      (st = gguf_u32(f, arch, "attention.head_count_kv", (uint32_t)c->n_heads, &c->n_kv_heads,
                     err)) ||
      (st = gguf_u32(f, arch, "attention.key_length", (uint32_t)(c->hidden / c->n_heads),
                     &c->head_dim, err)) ||
      (st = gguf_u32(f, arch, "rope.dimension_count", (uint32_t)c->head_dim, &rope_dims, err)) ||
      (st = gguf_u32(f, arch, "context_length", 4096, &c->max_ctx, err)))
    return st;
  if (rope_dims != c->head_dim)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: partial rotary (%d of %d dims) is not supported",
                   f->path, rope_dims, c->head_dim);
  if (c->n_heads % c->n_kv_heads)
    return bl_fail(err, BL_EFORMAT, "%s: %d heads not a multiple of %d kv heads", f->path,
                   c->n_heads, c->n_kv_heads);
  char k[128];
  snprintf(k, sizeof k, "%s.rope.freq_base", arch);
  c->rope_theta = 10000.0f;
  if (gguf_find_kv(f, k) && (st = gguf_get_f32(f, k, &c->rope_theta, err))) return st;
  snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
  if ((st = gguf_get_f32(f, k, &c->norm_eps, err))) return st;
  const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
  if (!emb) return bl_fail(err, BL_EFORMAT, "%s: missing tensor token_embd.weight", f->path);
  c->vocab = (int32_t)emb->ne[1];
  c->tied = gguf_find_tensor(f, "output.weight") == NULL;
  uint32_t id;
  bl_err ignore = {0};
  if (gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &id, &ignore) == BL_OK)
    c->bos_id = (int32_t)id;
  if (gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &id, &ignore) == BL_OK)
    c->eos_ids[c->n_eos++] = (int32_t)id;
  return BL_OK;
}
