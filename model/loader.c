/* Model loading: Hugging Face folders (safetensors, plain or GPTQ) and GGUF
 * files into a struct model on one backend, plus synthetic models of known
 * shapes for benchmarks. Tensor roles are named once in a table with their
 * HF and GGUF names and expected shapes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bl_half.h"
#include "bl_log.h"
#include "model_internal.h"

const char *model_prec_name(model_prec p) {
  switch (p) {
  case MODEL_PREC_AUTO: return "auto";
  case MODEL_PREC_FP16: return "fp16";
  case MODEL_PREC_W4: return "w4";
  case MODEL_PREC_W2: return "w2";
  }
  return "?";
}

bl_status model_prec_parse(const char *s, model_prec *out) {
  static const model_prec all[] = {MODEL_PREC_AUTO, MODEL_PREC_FP16, MODEL_PREC_W4, MODEL_PREC_W2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    if (strcmp(s, model_prec_name(all[i])) == 0) {
      *out = all[i];
      return BL_OK;
    }
  return BL_EINVAL;
}

static bk_wfmt prec_fmt(model_prec p) {
  return p == MODEL_PREC_W4 ? BK_WF_W4 : p == MODEL_PREC_W2 ? BK_WF_W2 : BK_WF_F16;
}

bool model_is_eos(const model *m, int32_t id) {
  for (int32_t i = 0; i < m->cfg.n_eos; i++)
    if (m->cfg.eos_ids[i] == id) return true;
  return false;
}

/* ---- tensor roles -------------------------------------------------------- */

typedef enum role_shape { SH_QD, SH_KVD, SH_OD, SH_FF, SH_DOWN } role_shape;

typedef struct linear_role {
  const char *hf, *gguf;
  size_t offset; /* of the bk_weight in model_layer */
  role_shape shape;
} linear_role;

static const linear_role k_linears[] = {
    {"self_attn.q_proj", "attn_q", offsetof(model_layer, wq), SH_QD},
    {"self_attn.k_proj", "attn_k", offsetof(model_layer, wk), SH_KVD},
    {"self_attn.v_proj", "attn_v", offsetof(model_layer, wv), SH_KVD},
    {"self_attn.o_proj", "attn_output", offsetof(model_layer, wo), SH_OD},
    {"mlp.gate_proj", "ffn_gate", offsetof(model_layer, gate), SH_FF},
    {"mlp.up_proj", "ffn_up", offsetof(model_layer, up), SH_FF},
    {"mlp.down_proj", "ffn_down", offsetof(model_layer, down), SH_DOWN},
};

static void role_dims(const model_config *c, role_shape sh, int32_t *rows, int32_t *cols) {
  int32_t q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
  switch (sh) {
  case SH_QD: *rows = q, *cols = c->hidden; break;
  case SH_KVD: *rows = kv, *cols = c->hidden; break;
  case SH_OD: *rows = c->hidden, *cols = q; break;
  case SH_FF: *rows = c->intermediate, *cols = c->hidden; break;
  case SH_DOWN: *rows = c->hidden, *cols = c->intermediate; break;
  default: *rows = *cols = 0; break;
  }
}

/* ---- sources: one interface over safetensors and GGUF -------------------- */

typedef struct loader {
  const char *path;
  model *m;
  bool gguf, is_gptq;
  gptq_info gi;
} loader;

static bl_status find_mat(loader *L, const char *name, int32_t rows, int32_t cols, src_mat *src,
                          bl_err *err) {
  *src = (src_mat){.rows = rows, .cols = cols, .gi = &L->gi};
  snprintf(src->name, sizeof src->name, "%s", name);
  model_store *s = L->m->store;
  if (L->gguf) {
    const gguf_tensor *t = gguf_find_tensor(s->gguf, name);
    src->file = s->gguf->path;
    if (!t) return bl_fail(err, BL_EFORMAT, "%s: missing tensor %s", src->file, name);
    size_t be, bb;
    if (t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows)
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s has shape [%llu, %llu], expected [%d, %d]",
                     src->file, name, (unsigned long long)t->ne[1], (unsigned long long)t->ne[0],
                     rows, cols);
    if (!gguf_type_block(t->type, &be, &bb) || cols % (int32_t)be)
      return bl_fail(err, BL_EUNSUPPORTED, "%s: tensor %s: type %s with %d columns not supported",
                     src->file, name, gguf_type_name(t->type), cols);
    src->kind = SRC_GGUF;
    src->data = t->data;
    src->gg_type = t->type;
    return BL_OK;
  }
  char full[240];
  if (L->is_gptq) {
    snprintf(full, sizeof full, "%s.qweight", name);
    if (st_find(s->st, full)) {
      src->kind = SRC_GPTQ;
      bl_status st = gptq_find(s->st, name, &L->gi, &src->gq, err);
      if (st) return st;
      src->file = src->gq.qweight->file;
      if (src->gq.in != cols || src->gq.out != rows)
        return bl_fail(err, BL_EFORMAT, "%s: GPTQ tensor %s is [%d, %d], expected [%d, %d]",
                       src->file, name, src->gq.out, src->gq.in, rows, cols);
      return BL_OK;
    }
  }
  const char *nm = name;
  if (strstr(name, "weight") == NULL) {
    snprintf(full, sizeof full, "%s.weight", name);
    nm = full;
  }
  snprintf(src->name, sizeof src->name, "%s", nm);
  const st_tensor *t = st_find(s->st, nm);
  if (!t) return bl_fail(err, BL_EFORMAT, "%s: missing tensor %s", L->path, nm);
  src->file = t->file;
  if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
    return bl_fail(err, BL_EFORMAT, "%s: tensor %s has shape [%lld, %lld], expected [%d, %d]",
                   t->file, nm, (long long)t->shape[0],
                   (long long)(t->n_dims > 1 ? t->shape[1] : 0), rows, cols);
  if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: tensor %s has dtype %s (F32, F16 or BF16 expected)",
                   t->file, nm, st_dtype_name(t->dtype));
  src->kind = SRC_ST;
  src->data = t->data;
  src->st_type = t->dtype;
  return BL_OK;
}

/* A 1-D float vector of n elements uploaded to the device as f32. */
static bl_status load_vec(loader *L, const char *name, int32_t n, float **dev, bl_err *err) {
  model *m = L->m;
  float *host = malloc((size_t)n * sizeof *host);
  if (!host) return bl_fail(err, BL_ENOMEM, "%s: out of memory", name);
  bl_status st = BL_OK;
  const char *file = L->path;
  if (L->gguf) {
    const gguf_tensor *t = gguf_find_tensor(m->store->gguf, name);
    file = m->store->gguf->path;
    if (!t)
      st = bl_fail(err, BL_EFORMAT, "%s: missing tensor %s", file, name);
    else if (t->n_dims != 1 || t->ne[0] != (uint64_t)n)
      st = bl_fail(err, BL_EFORMAT, "%s: tensor %s has %llu elements, expected %d", file, name,
                   (unsigned long long)t->ne[0], n);
    else if (t->type != GGUF_T_F32 && t->type != GGUF_T_F16 && t->type != GGUF_T_BF16)
      st = bl_fail(err, BL_EUNSUPPORTED, "%s: tensor %s: norm weights must be F32/F16/BF16", file,
                   name);
    else
      gguf_dequant(t->type, t->data, host, (size_t)n);
  } else {
    const st_tensor *t = st_find(m->store->st, name);
    if (!t)
      st = bl_fail(err, BL_EFORMAT, "%s: missing tensor %s", file, name);
    else if (t->n_dims != 1 || t->shape[0] != n)
      st = bl_fail(err, BL_EFORMAT, "%s: tensor %s has shape [%lld], expected [%d]", t->file, name,
                   (long long)t->shape[0], n);
    else if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
      st = bl_fail(err, BL_EUNSUPPORTED, "%s: tensor %s has dtype %s", t->file, name,
                   st_dtype_name(t->dtype));
    else {
      src_mat v = {.kind = SRC_ST, .rows = 1, .cols = n, .data = t->data, .st_type = t->dtype};
      src_row_f32(&v, 0, host);
    }
  }
  if (st == BL_OK) {
    *dev = m->be->alloc(m->be, (size_t)n * sizeof(float));
    if (!*dev)
      st = bl_fail(err, BL_ENOMEM, "%s: cannot allocate %s on %s", file, name, m->be->name);
    else
      st = m->be->upload(m->be, *dev, host, (size_t)n * sizeof(float));
  }
  free(host);
  return st;
}

bool model_group_size_fits(const model_config *c, int32_t gs) {
  return gs > 0 && c->hidden % gs == 0 && c->intermediate % gs == 0 &&
         (c->n_heads * c->head_dim) % gs == 0;
}

int32_t model_auto_group_size(const model_config *c) { return model_auto_group_size_split(c, 1); }

int32_t model_auto_group_size_split(const model_config *c, int32_t n) {
  static const int32_t sizes[] = {128, 64, 32};
  model_config shard = *c;
  if (n > 1 && c->n_heads % n == 0 && c->intermediate % n == 0) {
    shard.n_heads /= n; /* the shards' o and down inputs; the rest is whole */
    shard.intermediate /= n;
  }
  for (int i = 0; i < 3; i++)
    if (model_group_size_fits(c, sizes[i]) && model_group_size_fits(&shard, sizes[i]))
      return sizes[i];
  return 0;
}

static bl_status load_layers(loader *L, model_prec prec, int32_t gs, bool sym, bl_err *err) {
  model *m = L->m;
  const model_config *c = &m->cfg;
  bk_wfmt fmt = prec_fmt(prec);
  bl_status st;
  for (int32_t i = 0; i < c->n_layers; i++) {
    model_layer *ly = &m->layers[i];
    char name[160];
    for (size_t r = 0; r < sizeof k_linears / sizeof *k_linears; r++) {
      const linear_role *role = &k_linears[r];
      int32_t rows, cols;
      role_dims(c, role->shape, &rows, &cols);
      if (L->gguf)
        snprintf(name, sizeof name, "blk.%d.%s.weight", i, role->gguf);
      else
        snprintf(name, sizeof name, "model.layers.%d.%s", i, role->hf);
      src_mat src;
      if ((st = find_mat(L, name, rows, cols, &src, err))) return st;
      if (L->gguf && c->arch == MODEL_ARCH_LLAMA &&
          (role->shape == SH_QD || role->shape == SH_KVD) &&
          role->offset != offsetof(model_layer, wv))
        src.row_perm_heads = role->shape == SH_QD ? c->n_heads : c->n_kv_heads;
      bk_weight *w = (bk_weight *)((char *)ly + role->offset);
      if ((st = load_matrix(&src, fmt, gs, sym, m->store, w, err))) return st;
    }
    const char *an = L->gguf ? "blk.%d.attn_norm.weight" : "model.layers.%d.input_layernorm.weight";
    const char *fn =
        L->gguf ? "blk.%d.ffn_norm.weight" : "model.layers.%d.post_attention_layernorm.weight";
    snprintf(name, sizeof name, an, i);
    if ((st = load_vec(L, name, c->hidden, &ly->attn_norm, err))) return st;
    snprintf(name, sizeof name, fn, i);
    if ((st = load_vec(L, name, c->hidden, &ly->ffn_norm, err))) return st;
    if (c->qk_norm) {
      snprintf(name, sizeof name,
               L->gguf ? "blk.%d.attn_q_norm.weight" : "model.layers.%d.self_attn.q_norm.weight",
               i);
      if ((st = load_vec(L, name, c->head_dim, &ly->q_norm, err))) return st;
      snprintf(name, sizeof name,
               L->gguf ? "blk.%d.attn_k_norm.weight" : "model.layers.%d.self_attn.k_norm.weight",
               i);
      if ((st = load_vec(L, name, c->head_dim, &ly->k_norm, err))) return st;
    }
  }
  return BL_OK;
}

static bl_status load_tokenizer_gguf(const gguf_file *f, tok_tokenizer **out, bl_err *err) {
  const gguf_kv *toks = gguf_find_kv(f, "tokenizer.ggml.tokens");
  const gguf_kv *merges = gguf_find_kv(f, "tokenizer.ggml.merges");
  const gguf_kv *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
  *out = NULL;
  if (!toks || !toks->strs) return BL_OK; /* a model without a tokenizer: ids only */
  gguf_str model_name = {0}, pre = {0}, chat = {0};
  bl_err ignore = {0};
  gguf_get_str(f, "tokenizer.ggml.model", &model_name, &ignore);
  if (!gguf_str_eq(model_name, "gpt2"))
    return bl_fail(err, BL_EUNSUPPORTED,
                   "%s: tokenizer.ggml.model \"%.*s\" is not supported (gpt2 BPE is)", f->path,
                   (int)model_name.len, model_name.ptr ? model_name.ptr : "");
  gguf_get_str(f, "tokenizer.ggml.pre", &pre, &ignore);
  gguf_get_str(f, "tokenizer.chat_template", &chat, &ignore); /* absent: chat.ptr NULL */
  int32_t n = (int32_t)toks->arr_len, nm = merges && merges->strs ? (int32_t)merges->arr_len : 0;
  const char **tp = malloc((size_t)n * sizeof *tp);
  size_t *tl = malloc((size_t)n * sizeof *tl);
  int32_t *tt = types ? malloc((size_t)n * sizeof *tt) : NULL;
  const char **mp = malloc(((size_t)nm + 1) * sizeof *mp);
  size_t *ml = malloc(((size_t)nm + 1) * sizeof *ml);
  char pre_name[64];
  snprintf(pre_name, sizeof pre_name, "%.*s", (int)pre.len, pre.ptr ? pre.ptr : "gpt2");
  bl_status st = BL_ENOMEM;
  if (tp && tl && mp && ml && (!types || tt)) {
    for (int32_t i = 0; i < n; i++) {
      tp[i] = toks->strs[i].ptr;
      tl[i] = toks->strs[i].len;
      if (tt)
        tt[i] = (types && (uint64_t)i < types->arr_len) ? (int32_t)gguf_arr_int(types, (uint64_t)i)
                                                        : TOK_NORMAL;
    }
    for (int32_t i = 0; i < nm; i++) {
      mp[i] = merges->strs[i].ptr;
      ml[i] = merges->strs[i].len;
    }
    uint32_t bos = UINT32_MAX, eos = UINT32_MAX;
    gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos, &ignore);
    gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos, &ignore);
    tok_vocab_src src = {.n_tokens = n,
                         .tokens = tp,
                         .token_lens = tl,
                         .token_types = tt,
                         .n_merges = nm,
                         .merges = mp,
                         .merge_lens = ml,
                         .pre = pre_name,
                         .bos_id = bos == UINT32_MAX ? -1 : (int32_t)bos,
                         .eos_id = eos == UINT32_MAX ? -1 : (int32_t)eos,
                         .chat_template = chat.ptr,
                         .chat_template_len = chat.len};
    st = tok_build(&src, out, err);
  } else {
    bl_fail(err, st, "%s: out of memory reading the tokenizer", f->path);
  }
  free(tp);
  free(tl);
  free(tt);
  free(mp);
  free(ml);
  return st;
}

bl_status model_load_tokenizer(const char *path, tok_tokenizer **out, bl_err *err) {
  struct stat sb;
  *out = NULL;
  if (stat(path, &sb) != 0) return bl_fail(err, BL_EIO, "%s: cannot open the tokenizer", path);
  if (S_ISDIR(sb.st_mode)) {
    char tj[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", path);
    return tok_load_json(tj, out, err);
  }
  size_t n = strlen(path);
  if (n < 5 || strcmp(path + n - 5, ".gguf") != 0) return tok_load_json(path, out, err);
  gguf_file *f = NULL;
  bl_status st = gguf_open(path, &f, err);
  if (!st) st = load_tokenizer_gguf(f, out, err);
  if (!st && !*out) st = bl_fail(err, BL_EFORMAT, "%s: has no tokenizer.ggml.tokens", path);
  gguf_close(f);
  return st;
}

/* GGUF precision as stored: w4 when most linears are 4-bit blocks. */
static model_prec gguf_stored_prec(const gguf_file *f) {
  const gguf_tensor *t = gguf_find_tensor(f, "blk.0.ffn_down.weight");
  if (t && (t->type == GGUF_T_Q4_0 || t->type == GGUF_T_Q4_1)) return MODEL_PREC_W4;
  return MODEL_PREC_FP16;
}

bl_status model_prepare_weights(model *m, bl_err *err) {
  if (!m->be->weight_prepare) return BL_OK;
  bl_status st = m->be->weight_prepare(m->be, &m->embed);
  if (!st && !m->cfg.tied) st = m->be->weight_prepare(m->be, &m->lm_head);
  for (int32_t i = 0; !st && i < m->cfg.n_layers; i++)
    for (size_t r = 0; !st && r < sizeof k_linears / sizeof *k_linears; r++)
      st = m->be->weight_prepare(m->be, (bk_weight *)((char *)&m->layers[i] + k_linears[r].offset));
  if (st) return bl_fail(err, st, "%s: cannot place weights on %s", m->path, m->be->name);
  if (m->cfg.tied) m->lm_head.dev = m->embed.dev;
  return BL_OK;
}

bl_status model_new(const char *path, bk_backend *be, model **out, bl_err *err) {
  model *m = calloc(1, sizeof *m);
  if (m) m->store = calloc(1, sizeof *m->store);
  if (m) m->path = strdup(path);
  if (!m || !m->store || !m->path) {
    model_free(m);
    return bl_fail(err, BL_ENOMEM, "%s: out of memory", path);
  }
  m->be = be;
  *out = m;
  return BL_OK;
}

bl_status model_load(const char *path, const model_load_opts *opts, bk_backend *be, model **out,
                     bl_err *err) {
  static const model_load_opts defaults = {0};
  if (!opts) opts = &defaults;
  *out = NULL;
  struct stat sb;
  if (stat(path, &sb) != 0) return bl_fail(err, BL_EIO, "%s: no such file or folder", path);
  model *m = NULL;
  bl_status st = model_new(path, be, &m, err);
  if (st) return st;
  loader L = {.path = path, .m = m, .gguf = !S_ISDIR(sb.st_mode)};
  model_prec stored;
  if (L.gguf) {
    if ((st = gguf_open(path, &m->store->gguf, err))) goto fail;
    if ((st = config_from_gguf(m->store->gguf, &m->cfg, err))) goto fail;
    stored = gguf_stored_prec(m->store->gguf);
    if (!opts->tokenizer_path && (st = load_tokenizer_gguf(m->store->gguf, &m->tok, err)))
      goto fail;
  } else {
    if ((st = config_from_hf(path, &m->cfg, &L.gi, &L.is_gptq, err))) goto fail;
    if ((st = st_open_dir(path, &m->store->st, err))) goto fail;
    stored = L.is_gptq ? (L.gi.bits == 4 ? MODEL_PREC_W4 : MODEL_PREC_W2) : MODEL_PREC_FP16;
    char tj[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", path);
    if (!opts->tokenizer_path && stat(tj, &sb) == 0 && (st = tok_load_json(tj, &m->tok, err)))
      goto fail;
  }
  if (opts->tokenizer_path && (st = model_load_tokenizer(opts->tokenizer_path, &m->tok, err)))
    goto fail;
  model_config *c = &m->cfg;
  m->prec = opts->precision == MODEL_PREC_AUTO ? stored : opts->precision;
  m->group_size = 0;
  bool native_gptq = L.is_gptq && m->prec == stored;
  if (native_gptq) {
    m->group_size = L.gi.group_size; /* -1: one group per row, as stored */
  } else if (m->prec != MODEL_PREC_FP16) {
    m->group_size =
        opts->group_size ? opts->group_size : model_auto_group_size_split(c, opts->split);
    if (m->group_size <= 0) {
      st = bl_fail(err, BL_EUNSUPPORTED, "%s: no group size of 32/64/128 divides the layer widths",
                   path);
      goto fail;
    }
  }
  m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
  if (!m->layers) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  if ((st = load_layers(&L, m->prec, m->group_size, opts->sym, err))) goto fail;
  src_mat src;
  const char *emb = L.gguf ? "token_embd.weight" : "model.embed_tokens.weight";
  if ((st = find_mat(&L, emb, c->vocab, c->hidden, &src, err)) ||
      (st = load_matrix(&src, BK_WF_F16, 0, false, m->store, &m->embed, err)))
    goto fail;
  if (c->tied) {
    m->lm_head = m->embed;
  } else {
    const char *head = L.gguf ? "output.weight" : "lm_head.weight";
    if ((st = find_mat(&L, head, c->vocab, c->hidden, &src, err)) ||
        (st = load_matrix(&src, BK_WF_F16, 0, false, m->store, &m->lm_head, err)))
      goto fail;
  }
  if ((st = load_vec(&L, L.gguf ? "output_norm.weight" : "model.norm.weight", c->hidden,
                     &m->final_norm, err)))
    goto fail;
  if ((st = model_prepare_weights(m, err))) goto fail;
  if (m->tok && c->n_eos == 0 && tok_eos_id(m->tok) >= 0)
    c->eos_ids[c->n_eos++] = tok_eos_id(m->tok);
  *out = m;
  return BL_OK;
fail:
  model_free(m);
  return st;
}

void model_free(model *m) {
  if (!m) return;
  bk_backend *host = m->tp ? model_tp_release(m) : NULL;
  bk_backend *be = m->be;
  if (m->layers) {
    for (int32_t i = 0; i < m->cfg.n_layers; i++) {
      model_layer *ly = &m->layers[i];
      float *vecs[] = {ly->attn_norm, ly->ffn_norm, ly->q_norm, ly->k_norm};
      for (int v = 0; v < 4; v++)
        if (vecs[v]) be->free(be, vecs[v]);
      for (size_t r = 0; r < sizeof k_linears / sizeof *k_linears; r++) {
        bk_weight *w = (bk_weight *)((char *)ly + k_linears[r].offset);
        if (w->dev && be->weight_release) be->weight_release(be, w);
      }
    }
    free(m->layers);
  }
  if (be && be->weight_release) {
    if (m->embed.dev) be->weight_release(be, &m->embed);
    if (!m->cfg.tied && m->lm_head.dev) be->weight_release(be, &m->lm_head);
  }
  if (m->final_norm) be->free(be, m->final_norm);
  model_scratch_free(m);
  if (m->store) {
    for (size_t i = 0; i < m->store->n_owned; i++)
      free(m->store->owned[i]);
    free(m->store->owned);
    st_close(m->store->st);
    gguf_close(m->store->gguf);
    free(m->store);
  }
  tok_free(m->tok);
  free(m->path);
  free(m);
  bk_destroy(host);
}

uint64_t model_weight_bytes(const model *m) {
  uint64_t total = 0;
  for (int32_t i = 0; i < m->cfg.n_layers; i++)
    for (size_t r = 0; r < sizeof k_linears / sizeof *k_linears; r++) {
      const bk_weight *w = (const bk_weight *)((const char *)&m->layers[i] + k_linears[r].offset);
      total += bk_weight_row_bytes(w->fmt, w->cols) * (uint64_t)w->rows;
      if (w->fmt != BK_WF_F16)
        total += 4ull * (uint64_t)w->rows * (uint64_t)(w->cols / w->group_size);
    }
  return total + 2ull * (uint64_t)m->lm_head.rows * (uint64_t)m->lm_head.cols;
}
