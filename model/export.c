/* Export a loaded model as a GPTQ-format Hugging Face folder (config.json
 * with quantization_config, quantize_config.json, model.safetensors), the
 * layout GPTQ loaders read: checkpoint_format "gptq" (v1), desc_act false,
 * embeddings, norms and lm_head in fp16. The linears are quantized either
 * round-to-nearest per group (quant_row) from the model's weights as
 * loaded, or by GPTQ (calibrate.c, gptq_solve.c) on the same grid. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bl_half.h"
#include "model_export.h"
#include "model_internal.h"

static bl_status add_f16_weight(st_writer *w, const char *name, const bk_weight *src, bl_err *err) {
  size_t n = (size_t)src->rows * (size_t)src->cols;
  uint16_t *buf = malloc(n * 2);
  float *row = malloc((size_t)src->cols * sizeof *row);
  bl_status st = BL_ENOMEM;
  if (buf && row) {
    for (int32_t r = 0; r < src->rows; r++) {
      bk_weight_row_f32(src, r, row);
      for (int32_t k = 0; k < src->cols; k++)
        buf[(size_t)r * (size_t)src->cols + (size_t)k] = bl_float_to_half(row[k]);
    }
    int64_t shape[2] = {src->rows, src->cols};
    st = st_writer_add(w, name, ST_F16, 2, shape, buf, err);
  } else {
    bl_fail(err, st, "export: out of memory");
  }
  free(buf);
  free(row);
  return st;
}

static bl_status add_norm(st_writer *w, model *m, const char *name, const float *dev, int32_t n,
                          bl_err *err) {
  float *host = malloc((size_t)n * 4);
  uint16_t *h16 = malloc((size_t)n * 2);
  bl_status st = host && h16 ? m->be->download(m->be, host, dev, (size_t)n * 4) : BL_ENOMEM;
  if (!st) {
    for (int32_t i = 0; i < n; i++)
      h16[i] = bl_float_to_half(host[i]);
    int64_t shape[1] = {n};
    st = st_writer_add(w, name, ST_F16, 1, shape, h16, err);
  } else {
    bl_fail(err, st, "export: cannot read %s", name);
  }
  free(host);
  free(h16);
  return st;
}

const char *const model_linear_hf[MODEL_LIN_N] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
const char *const model_linear_short[MODEL_LIN_N] = {"q", "k", "v", "o", "gate", "up", "down"};

/* Pack ql and add its four GPTQ tensors under prefix. */
static bl_status add_qlinear(st_writer *w, const char *prefix, const qlinear *ql, bl_err *err) {
  int32_t in = ql->in, out = ql->out, ng = ql->n_groups, per = 32 / ql->bits;
  int32_t *qweight = malloc((size_t)(in / per) * (size_t)out * 4);
  int32_t *qzeros = malloc((size_t)ng * (size_t)(out / per) * 4);
  int32_t *g_idx = malloc((size_t)in * 4);
  bl_status st = BL_OK;
  if (!qweight || !qzeros || !g_idx) {
    st = bl_fail(err, BL_ENOMEM, "export: out of memory packing %s", prefix);
    goto done;
  }
  gptq_pack_v1(ql->bits, in, out, ql->group_size, ql->q, ql->zeros, qweight, qzeros, g_idx);
  char name[320];
  int64_t sq[2] = {in / per, out}, sz[2] = {ng, out / per}, ss[2] = {ng, out}, sg[1] = {in};
  snprintf(name, sizeof name, "%s.qweight", prefix);
  if ((st = st_writer_add(w, name, ST_I32, 2, sq, qweight, err))) goto done;
  snprintf(name, sizeof name, "%s.qzeros", prefix);
  if ((st = st_writer_add(w, name, ST_I32, 2, sz, qzeros, err))) goto done;
  snprintf(name, sizeof name, "%s.scales", prefix);
  if ((st = st_writer_add(w, name, ST_F16, 2, ss, ql->scales, err))) goto done;
  snprintf(name, sizeof name, "%s.g_idx", prefix);
  st = st_writer_add(w, name, ST_I32, 1, sg, g_idx, err);
done:
  free(qweight), free(qzeros), free(g_idx);
  return st;
}

/* Round-to-nearest: quant_row on each output row. */
static bl_status rtn_linear(const bk_weight *src, const model_export_opts *o, qlinear *ql,
                            bl_err *err) {
  int32_t in = src->cols, out = src->rows, ng = in / o->group_size;
  uint16_t *row_scales = malloc((size_t)ng * 2);
  int32_t *row_zeros = malloc((size_t)ng * 4);
  float *row = malloc((size_t)in * sizeof *row);
  bl_status st = qlinear_alloc(ql, o->bits, in, out, o->group_size);
  if (st || !row_scales || !row_zeros || !row) {
    st = bl_fail(err, BL_ENOMEM, "export: out of memory quantizing a %d x %d linear", out, in);
    goto done;
  }
  for (int32_t n = 0; n < out; n++) {
    bk_weight_row_f32(src, n, row);
    quant_row(row, in, o->bits, o->group_size, o->sym, ql->q + (size_t)n * (size_t)in, row_scales,
              row_zeros);
    for (int32_t g = 0; g < ng; g++) {
      ql->scales[(size_t)g * (size_t)out + (size_t)n] = row_scales[g];
      ql->zeros[(size_t)g * (size_t)out + (size_t)n] = row_zeros[g];
    }
  }
done:
  free(row_scales), free(row_zeros), free(row);
  return st;
}

static bl_status add_linear(st_writer *w, int32_t layer, int lin, const qlinear *ql, bl_err *err) {
  char prefix[256];
  snprintf(prefix, sizeof prefix, "model.layers.%d.%s", layer, model_linear_hf[lin]);
  return add_qlinear(w, prefix, ql, err);
}

static bl_status emit_linear(void *ctx, int32_t layer, int lin, const qlinear *ql, bl_err *err) {
  return add_linear(ctx, layer, lin, ql, err);
}

static bl_status add_linears(st_writer *w, model *m, const model_export_opts *o, bl_err *err) {
  const model_config *c = &m->cfg;
  if (o->method == MODEL_QUANT_GPTQ) {
    gptq_calib gc = {.ids = o->calib_ids,
                     .n_ids = o->n_calib,
                     .seq_len = o->calib_seq_len > 0 ? o->calib_seq_len : 256,
                     .p = {.bits = o->bits,
                           .group_size = o->group_size,
                           .sym = o->sym,
                           .damp = o->damp > 0 ? o->damp : 0.01,
                           .n_threads = o->n_threads},
                     .verbose = o->verbose};
    return model_gptq_run(m, &gc, emit_linear, w, err);
  }
  bl_status st = BL_OK;
  for (int32_t l = 0; l < c->n_layers && !st; l++) {
    model_layer *ly = &m->layers[l];
    const bk_weight *ws[MODEL_LIN_N] = {&ly->wq,   &ly->wk, &ly->wv,  &ly->wo,
                                        &ly->gate, &ly->up, &ly->down};
    for (int i = 0; i < MODEL_LIN_N && !st; i++) {
      qlinear ql = {0};
      if (!(st = rtn_linear(ws[i], o, &ql, err))) st = add_linear(w, l, i, &ql, err);
      qlinear_free(&ql);
    }
  }
  return st;
}

static cJSON *quant_json(const model_export_opts *o) {
  bool gptq = o->method == MODEL_QUANT_GPTQ;
  cJSON *q = cJSON_CreateObject();
  cJSON_AddStringToObject(q, "quant_method", "gptq");
  cJSON_AddNumberToObject(q, "bits", o->bits);
  cJSON_AddNumberToObject(q, "group_size", o->group_size);
  cJSON_AddBoolToObject(q, "sym", o->sym);
  cJSON_AddBoolToObject(q, "desc_act", false);
  cJSON_AddStringToObject(q, "checkpoint_format", "gptq");
  cJSON_AddNumberToObject(q, "damp_percent", o->damp > 0 ? o->damp : 0.01);
  if (gptq) cJSON_AddBoolToObject(q, "true_sequential", true);
  cJSON_AddStringToObject(q, "quantizer", gptq ? "ballast-gptq" : "ballast-rtn");
  return q;
}

static bl_status write_json(const char *dir, const char *file, cJSON *j, bl_err *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  char *text = cJSON_Print(j);
  FILE *f = fopen(path, "w");
  bl_status st = BL_OK;
  if (!text || !f || fputs(text, f) < 0 || fputc('\n', f) == EOF)
    st = bl_fail(err, BL_EIO, "%s: cannot write", path);
  if (f && fclose(f) != 0 && !st) st = bl_fail(err, BL_EIO, "%s: cannot write", path);
  free(text);
  return st;
}

static bl_status write_config(const model *m, const char *dir, const model_export_opts *o,
                              bl_err *err) {
  const model_config *c = &m->cfg;
  bool qwen = c->arch == MODEL_ARCH_QWEN3;
  cJSON *j = cJSON_CreateObject();
  cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString(qwen ? "Qwen3ForCausalLM" : "LlamaForCausalLM"));
  cJSON_AddStringToObject(j, "model_type", qwen ? "qwen3" : "llama");
  cJSON_AddNumberToObject(j, "hidden_size", c->hidden);
  cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate);
  cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
  cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
  cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
  cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
  cJSON_AddNumberToObject(j, "vocab_size", c->vocab);
  cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_ctx);
  cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
  cJSON_AddNumberToObject(j, "rms_norm_eps", c->norm_eps);
  cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied);
  cJSON_AddStringToObject(j, "hidden_act", "silu");
  cJSON_AddBoolToObject(j, "attention_bias", false);
  cJSON_AddStringToObject(j, "torch_dtype", "float16");
  if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
  if (c->n_eos == 1)
    cJSON_AddNumberToObject(j, "eos_token_id", c->eos_ids[0]);
  else if (c->n_eos > 1)
    cJSON_AddItemToObject(j, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
  cJSON_AddItemToObject(j, "quantization_config", quant_json(o));
  bl_status st = write_json(dir, "config.json", j, err);
  cJSON_Delete(j);
  if (st) return st;
  cJSON *q = quant_json(o);
  st = write_json(dir, "quantize_config.json", q, err);
  cJSON_Delete(q);
  return st;
}

bl_status model_export_gptq(model *m, const char *dir, const model_export_opts *o, bl_err *err) {
  const model_config *c = &m->cfg;
  if (o->bits != 2 && o->bits != 4)
    return bl_fail(err, BL_EINVAL, "quantize: --bits must be 2 or 4");
  int32_t widths[] = {c->hidden, c->intermediate, c->n_heads * c->head_dim};
  for (int i = 0; i < 3; i++)
    if (o->group_size <= 0 || o->group_size % BK_QBLOCK || widths[i] % o->group_size)
      return bl_fail(err, BL_EINVAL, "quantize: group size %d must be a multiple of %d dividing %d",
                     o->group_size, BK_QBLOCK, widths[i]);
  if (mkdir(dir, 0755) != 0) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
      return bl_fail(err, BL_EIO, "%s: cannot create the output folder", dir);
  }
  st_writer *w = st_writer_new();
  if (!w) return bl_fail(err, BL_ENOMEM, "quantize: out of memory");
  bl_status st = add_f16_weight(w, "model.embed_tokens.weight", &m->embed, err);
  if (!st && !c->tied) st = add_f16_weight(w, "lm_head.weight", &m->lm_head, err);
  if (!st) st = add_norm(w, m, "model.norm.weight", m->final_norm, c->hidden, err);
  if (!st) st = add_linears(w, m, o, err);
  char name[256];
  for (int32_t l = 0; l < c->n_layers && !st; l++) {
    model_layer *ly = &m->layers[l];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    if (!st) st = add_norm(w, m, name, ly->attn_norm, c->hidden, err);
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
    if (!st) st = add_norm(w, m, name, ly->ffn_norm, c->hidden, err);
    if (c->qk_norm) {
      snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
      if (!st) st = add_norm(w, m, name, ly->q_norm, c->head_dim, err);
      snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
      if (!st) st = add_norm(w, m, name, ly->k_norm, c->head_dim, err);
    }
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (!st) st = st_writer_finish(w, path, err);
  st_writer_free(w);
  if (!st) st = write_config(m, dir, o, err);
  return st;
}
