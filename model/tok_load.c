/* Tokenizer front ends: a Hugging Face tokenizer.json, or GGUF arrays.
 *
 * tokenizer.json: a byte-level BPE (model.vocab, model.merges in "a b" or
 * [a, b] form, added_tokens, an NFC or null normalizer, Split / Digits /
 * ByteLevel pre-tokenizers, ByteLevel decoder) becomes a tok_spec, with
 * bos/eos from tokenizer_config.json beside it. Anything else is refused with
 * an error naming the file and the JSON path, so a tokenizer we would get
 * wrong never loads silently.
 *
 * GGUF (tokenizer.ggml.*): tokens are byte-level symbol strings; one written
 * in plain text (a character outside the byte alphabet) is respelled as the
 * symbols of its UTF-8 bytes, as transformers does. Control (3) and
 * user-defined (4) tokens are matched whole in the text, control ones only
 * when parsing specials. tokenizer.ggml.pre picks the split as llama.cpp
 * does; an unknown or missing name is an error, not a silent GPT-2 default. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

typedef struct jctx {
  const char *path;
  bl_err *err;
} jctx;

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  long n;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
    buf[n] = 0;
    *len = (size_t)n;
  } else {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

static const char *type_of(const cJSON *o) {
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
  return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static bool flag(const cJSON *o, const char *key, bool dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static tok_str jstr(const cJSON *v) { return (tok_str){v->valuestring, strlen(v->valuestring)}; }

static bl_status unsupported(jctx *j, const char *where, const char *what) {
  return bl_fail(j->err, BL_EUNSUPPORTED, "%s: %s: %s is not supported", j->path, where,
                 what ? what : "(missing)");
}

/* normalizer: null, NFC, or a Sequence of NFC. */
static bl_status parse_normalizer(jctx *j, const cJSON *n, tok_spec *sp) {
  if (!n || cJSON_IsNull(n)) return BL_OK;
  const char *ty = type_of(n);
  if (ty && !strcmp(ty, "NFC")) {
    sp->nfc = true;
    return BL_OK;
  }
  if (!ty || strcmp(ty, "Sequence")) return unsupported(j, "normalizer.type", ty);
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
  int i = 0;
  cJSON_ArrayForEach(e, arr) {
    const char *et = type_of(e);
    if (!et || strcmp(et, "NFC")) {
      char where[64];
      snprintf(where, sizeof where, "normalizer.normalizers[%d].type", i);
      return unsupported(j, where, et);
    }
    sp->nfc = true;
    i++;
  }
  return BL_OK;
}

static bl_status add_stage(jctx *j, tok_spec *sp, tok_stage_spec st) {
  if (sp->n_stages == TOK_MAX_STAGES)
    return bl_fail(j->err, BL_EUNSUPPORTED, "%s: pre_tokenizer: more than %d steps", j->path,
                   TOK_MAX_STAGES);
  sp->stages[sp->n_stages++] = st;
  return BL_OK;
}

/* One pre-tokenizer; where is its JSON path. ByteLevel must come last. */
static bl_status parse_pretok_one(jctx *j, const cJSON *p, const char *where, tok_spec *sp,
                                  bool *byte_level) {
  char w[96];
  const char *ty = type_of(p);
  if (*byte_level)
    return bl_fail(j->err, BL_EUNSUPPORTED, "%s: %s: a step after ByteLevel is not supported",
                   j->path, where);
  if (ty && !strcmp(ty, "ByteLevel")) {
    *byte_level = true;
    bool re = flag(p, "use_regex", true), pfx = flag(p, "add_prefix_space", false);
    if (!re && !pfx) return BL_OK;
    return add_stage(
        j, sp,
        (tok_stage_spec){.pattern = re ? (tok_str){tok_re_gpt2, strlen(tok_re_gpt2)} : (tok_str){0},
                         .prefix_space = pfx});
  }
  if (ty && !strcmp(ty, "Digits")) {
    const char *re = flag(p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+";
    return add_stage(j, sp, (tok_stage_spec){.pattern = {re, strlen(re)}});
  }
  if (ty && !strcmp(ty, "Split")) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
    if (!cJSON_IsString(rx) && !cJSON_IsString(lit)) {
      snprintf(w, sizeof w, "%s.pattern", where);
      return bl_fail(j->err, BL_EFORMAT, "%s: %s: expected {\"Regex\": ...} or {\"String\": ...}",
                     j->path, w);
    }
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated")) {
      snprintf(w, sizeof w, "%s.behavior", where);
      return unsupported(j, w, cJSON_IsString(beh) ? beh->valuestring : NULL);
    }
    if (flag(p, "invert", false)) {
      snprintf(w, sizeof w, "%s.invert", where);
      return unsupported(j, w, "true");
    }
    tok_stage_spec st = {.pattern = jstr(cJSON_IsString(rx) ? rx : lit),
                         .literal = !cJSON_IsString(rx)};
    return add_stage(j, sp, st);
  }
  snprintf(w, sizeof w, "%s.type", where);
  return unsupported(j, w, ty);
}

static bl_status parse_pretok(jctx *j, const cJSON *p, tok_spec *sp) {
  bool byte_level = false;
  bl_status st;
  const char *ty = type_of(p);
  if (ty && !strcmp(ty, "Sequence")) {
    const cJSON *e;
    int i = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
      char where[64];
      snprintf(where, sizeof where, "pre_tokenizer.pretokenizers[%d]", i++);
      if ((st = parse_pretok_one(j, e, where, sp, &byte_level))) return st;
    }
  } else if (p && !cJSON_IsNull(p)) {
    if ((st = parse_pretok_one(j, p, "pre_tokenizer", sp, &byte_level))) return st;
  }
  if (!byte_level)
    return bl_fail(j->err, BL_EUNSUPPORTED,
                   "%s: pre_tokenizer: no ByteLevel step (only byte-level BPE is supported)",
                   j->path);
  return BL_OK;
}

static bl_status parse_decoder_post(jctx *j, const cJSON *root) {
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "decoder");
  const char *ty = type_of(d);
  if (!ty || strcmp(ty, "ByteLevel")) return unsupported(j, "decoder.type", ty);
  /* post_processor only adds special tokens / offsets; tok_encode adds none. */
  const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
  ty = type_of(pp);
  if (pp && !cJSON_IsNull(pp) &&
      (!ty ||
       (strcmp(ty, "ByteLevel") && strcmp(ty, "TemplateProcessing") && strcmp(ty, "Sequence"))))
    return unsupported(j, "post_processor.type", ty);
  return BL_OK;
}

static bl_status parse_model(jctx *j, const cJSON *m, tok_spec *sp, int32_t **ids, tok_str **voc,
                             tok_str **ml, tok_str **mr) {
  const char *ty = type_of(m);
  if (!cJSON_IsObject(m)) return bl_fail(j->err, BL_EFORMAT, "%s: model: missing", j->path);
  if (ty && strcmp(ty, "BPE")) return unsupported(j, "model.type", ty);
  const cJSON *v;
  if ((v = cJSON_GetObjectItemCaseSensitive(m, "dropout")) && !cJSON_IsNull(v))
    return unsupported(j, "model.dropout", "a value");
  if (flag(m, "byte_fallback", false)) return unsupported(j, "model.byte_fallback", "true");
  static const char *const empty_keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int i = 0; i < 2; i++)
    if ((v = cJSON_GetObjectItemCaseSensitive(m, empty_keys[i])) && cJSON_IsString(v) &&
        v->valuestring[0]) {
      char w[64];
      snprintf(w, sizeof w, "model.%s", empty_keys[i]);
      return unsupported(j, w, v->valuestring);
    }
  sp->ignore_merges = flag(m, "ignore_merges", false);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
  if (!cJSON_IsObject(vocab))
    return bl_fail(j->err, BL_EFORMAT, "%s: model.vocab: expected an object", j->path);
  if (!cJSON_IsArray(merges))
    return bl_fail(j->err, BL_EFORMAT, "%s: model.merges: expected an array", j->path);
  int nv = cJSON_GetArraySize(vocab), nm = cJSON_GetArraySize(merges);
  *ids = malloc(((size_t)nv + 1) * sizeof **ids);
  *voc = malloc(((size_t)nv + 1) * sizeof **voc);
  *ml = malloc(((size_t)nm + 1) * sizeof **ml);
  *mr = malloc(((size_t)nm + 1) * sizeof **mr);
  if (!*ids || !*voc || !*ml || !*mr)
    return bl_fail(j->err, BL_ENOMEM, "%s: out of memory", j->path);
  int i = 0;
  cJSON_ArrayForEach(v, vocab) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (1 << 30))
      return bl_fail(j->err, BL_EFORMAT, "%s: model.vocab[\"%.64s\"]: expected an id", j->path,
                     v->string);
    (*ids)[i] = v->valueint;
    (*voc)[i++] = (tok_str){v->string, strlen(v->string)};
  }
  sp->n_vocab = i, sp->vocab_ids = *ids, sp->vocab = *voc;
  i = 0;
  cJSON_ArrayForEach(v, merges) {
    const char *s = cJSON_IsString(v) ? v->valuestring : NULL,
               *sep = s && s[0] ? strchr(s + 1, ' ') : NULL;
    if (sep && sep[1] && !strchr(sep + 1, ' ')) {
      (*ml)[i] = (tok_str){s, (size_t)(sep - s)};
      (*mr)[i] = (tok_str){sep + 1, strlen(sep + 1)};
    } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 && cJSON_IsString(v->child) &&
               cJSON_IsString(v->child->next)) {
      (*ml)[i] = jstr(v->child);
      (*mr)[i] = jstr(v->child->next);
    } else {
      return bl_fail(j->err, BL_EFORMAT,
                     "%s: model.merges[%d]: expected \"left right\" or [left, right]", j->path, i);
    }
    i++;
  }
  sp->n_merges = i, sp->merge_left = *ml, sp->merge_right = *mr;
  return BL_OK;
}

static bl_status parse_added(jctx *j, const cJSON *arr, tok_spec *sp, tok_added_spec **add) {
  int n = cJSON_GetArraySize(arr), i = 0;
  *add = malloc(((size_t)n + 1) * sizeof **add);
  if (!*add) return bl_fail(j->err, BL_ENOMEM, "%s: out of memory", j->path);
  const cJSON *a;
  cJSON_ArrayForEach(a, arr) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
    if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 30) ||
        !cJSON_IsString(content) || !content->valuestring[0])
      return bl_fail(j->err, BL_EFORMAT,
                     "%s: added_tokens[%d]: expected an id and a non-empty content", j->path, i);
    bool special = flag(a, "special", false);
    (*add)[i++] = (tok_added_spec){.id = id->valueint,
                                   .content = jstr(content),
                                   .special = special,
                                   .normalized = flag(a, "normalized", !special),
                                   .lstrip = flag(a, "lstrip", false),
                                   .rstrip = flag(a, "rstrip", false),
                                   .single_word = flag(a, "single_word", false)};
  }
  sp->n_added = i, sp->added = *add;
  return BL_OK;
}

/* Id of a token string among the added tokens, then the vocab; -1 if absent. */
static int32_t spec_find(const tok_spec *sp, const char *s) {
  size_t n = strlen(s);
  for (int32_t i = 0; i < sp->n_added; i++)
    if (sp->added[i].content.n == n && !memcmp(sp->added[i].content.s, s, n))
      return sp->added[i].id;
  for (int32_t i = 0; i < sp->n_vocab; i++)
    if (sp->vocab[i].n == n && !memcmp(sp->vocab[i].s, s, n)) return sp->vocab_ids[i];
  return -1;
}

/* bos_token / eos_token from tokenizer_config.json next to path, if any, and
 * the chat template where transformers finds it: chat_template.jinja beside
 * it, else tokenizer_config.json's chat_template (a string, or the "default"
 * of a list of named ones). *tmpl: a malloc'd copy sp borrows, or NULL. */
static void read_config_ids(const char *path, tok_spec *sp, char **tmpl) {
  const char *slash = strrchr(path, '/');
  size_t dir = slash ? (size_t)(slash - path) + 1 : 0, len;
  char *cfg_path = malloc(dir + sizeof "tokenizer_config.json");
  if (!cfg_path) return;
  memcpy(cfg_path, path, dir);
  memcpy(cfg_path + dir, "chat_template.jinja", sizeof "chat_template.jinja");
  *tmpl = read_file(cfg_path, &len);
  memcpy(cfg_path + dir, "tokenizer_config.json", sizeof "tokenizer_config.json");
  char *text = read_file(cfg_path, &len);
  free(cfg_path);
  cJSON *cfg = text ? cJSON_ParseWithLength(text, len) : NULL;
  free(text);
  static const char *const keys[2] = {"bos_token", "eos_token"};
  int32_t *dst[2] = {&sp->bos_id, &sp->eos_id};
  for (int k = 0; cfg && k < 2; k++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, keys[k]);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (cJSON_IsString(v)) *dst[k] = spec_find(sp, v->valuestring);
  }
  const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *named = ct, *e;
  if (cJSON_IsArray(named)) {
    ct = NULL;
    cJSON_ArrayForEach(e, named) {
      const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
      if (cJSON_IsString(name) && !strcmp(name->valuestring, "default"))
        ct = cJSON_GetObjectItemCaseSensitive(e, "template");
    }
  }
  if (!*tmpl && cJSON_IsString(ct)) *tmpl = strdup(ct->valuestring);
  if (*tmpl) sp->chat_template = (tok_str){*tmpl, strlen(*tmpl)};
  cJSON_Delete(cfg);
}

bl_status tok_load_json(const char *path, tok_tokenizer **out, bl_err *err) {
  jctx j = {path, err};
  tok_spec sp = {.origin = path, .unk_id = -1, .bos_id = -1, .eos_id = -1};
  int32_t *ids = NULL;
  tok_str *voc = NULL, *ml = NULL, *mr = NULL;
  tok_added_spec *add = NULL;
  char *tmpl = NULL; /* chat template, from read_config_ids */
  cJSON *root = NULL;
  bl_status st;
  size_t len;
  *out = NULL;
  char *text = read_file(path, &len);
  if (!text) return bl_fail(err, BL_EIO, "%s: cannot read the file", path);
  root = cJSON_ParseWithLength(text, len);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    st = bl_fail(err, BL_EFORMAT, "%s: invalid JSON near byte %td", path,
                 at ? at - text : (ptrdiff_t)-1);
    goto done;
  }
  free(text);
  text = NULL;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if ((st = parse_model(&j, model, &sp, &ids, &voc, &ml, &mr))) goto done;
  if ((st = parse_added(&j, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &sp, &add)))
    goto done;
  if ((st = parse_normalizer(&j, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &sp)))
    goto done;
  if ((st = parse_pretok(&j, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &sp)))
    goto done;
  if ((st = parse_decoder_post(&j, root))) goto done;
  const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
  if (cJSON_IsString(unk) && (sp.unk_id = spec_find(&sp, unk->valuestring)) < 0) {
    st = bl_fail(err, BL_EFORMAT, "%s: model.unk_token \"%s\" is not in the vocab", path,
                 unk->valuestring);
    goto done;
  }
  read_config_ids(path, &sp, &tmpl);
  st = tok_build_spec(&sp, out, err);
done:
  free(text), free(ids), free(voc), free(ml), free(mr), free(add), free(tmpl);
  cJSON_Delete(root);
  return st;
}

/* ---- GGUF ---- */

/* clang-format off */
const char tok_re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char tok_re_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char tok_re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* clang-format on */

static tok_str S(const char *s) { return (tok_str){s, strlen(s)}; }

/* tokenizer.ggml.pre -> stages (llama.cpp's table; HF's tokenizer.json for
 * the same models agrees). Returns false for an unknown name. */
static bool gguf_pre_stages(const char *pre, tok_spec *sp) {
  static const char *const digits_gpt2[] = {"smollm",    "starcoder", "refact",
                                            "command-r", "codeshell", NULL};
  if (!strcmp(pre, "qwen2") || !strcmp(pre, "deepseek-r1-qwen")) {
    sp->stages[0].pattern = S(tok_re_qwen2);
    sp->n_stages = 1;
    sp->nfc = true; /* Qwen's tokenizer.json normalizer */
    return true;
  }
  if (!strcmp(pre, "llama3") || !strcmp(pre, "llama-bpe") || !strcmp(pre, "llama-v3")) {
    sp->stages[0].pattern = S(tok_re_llama3);
    sp->n_stages = 1;
    return true;
  }
  if (!strcmp(pre, "gpt2") || !strcmp(pre, "default")) {
    sp->stages[0].pattern = S(tok_re_gpt2);
    sp->n_stages = 1;
    return true;
  }
  for (int i = 0; digits_gpt2[i]; i++)
    if (!strcmp(pre, digits_gpt2[i])) { /* Digits(individual_digits) then the GPT-2 split */
      sp->stages[0].pattern = S("\\p{N}");
      sp->stages[1].pattern = S(tok_re_gpt2);
      sp->n_stages = 2;
      return true;
    }
  return false;
}

bl_status tok_build(const tok_vocab_src *src, tok_tokenizer **out, bl_err *err) {
  static const char o[] = "gguf tokenizer";
  tok_spec sp = {.origin = o, .unk_id = -1, .bos_id = src->bos_id, .eos_id = src->eos_id};
  *out = NULL;
  if (!src->pre) return bl_fail(err, BL_EFORMAT, "%s: tokenizer.ggml.pre is missing", o);
  if (!gguf_pre_stages(src->pre, &sp))
    return bl_fail(err, BL_EUNSUPPORTED, "%s: tokenizer.ggml.pre \"%s\" is not supported", o,
                   src->pre);
  if (src->n_tokens <= 0 || src->n_merges < 0)
    return bl_fail(err, BL_EFORMAT, "%s: empty vocab", o);
  size_t nt = (size_t)src->n_tokens, nm = (size_t)src->n_merges;
  int32_t *ids = malloc(nt * sizeof *ids);
  tok_str *voc = malloc(nt * sizeof *voc), *ml = malloc((nm + 1) * sizeof *ml),
          *mr = malloc((nm + 1) * sizeof *mr);
  tok_added_spec *add = malloc(nt * sizeof *add);
  char *respelled = NULL; /* byte-level spelling of tokens written in plain text */
  size_t rlen = 0;
  bl_status st = BL_OK;
  if (!ids || !voc || !ml || !mr || !add) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
    goto done;
  }
  for (size_t i = 0; i < nt; i++)
    rlen += src->token_lens[i];
  respelled = malloc(rlen * 2 + 1); /* each byte of a respelled token becomes <= 2 bytes */
  if (!respelled) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
    goto done;
  }
  rlen = 0;
  for (size_t i = 0; i < nt; i++) {
    const char *s = src->tokens[i];
    size_t n = src->token_lens[i];
    int32_t type = src->token_types ? src->token_types[i] : TOK_NORMAL;
    ids[i] = (int32_t)i;
    voc[i] = (tok_str){s, n};
    if (type == TOK_CONTROL || type == TOK_USER) {
      add[sp.n_added++] =
          (tok_added_spec){.id = (int32_t)i, .content = {s, n}, .special = type == TOK_CONTROL};
      continue;
    }
    /* a character outside the alphabet: spell the token's bytes (as transformers does) */
    char tmp[8];
    bool plain = false;
    for (size_t j = 0; j < n && !plain;) {
      utf8proc_int32_t cp;
      utf8proc_ssize_t k =
          utf8proc_iterate((const utf8proc_uint8_t *)s + j, (utf8proc_ssize_t)(n - j), &cp);
      if (k <= 0) {
        st = bl_fail(err, BL_EFORMAT, "%s: token %zu is not valid UTF-8", o, i);
        goto done;
      }
      plain = cp_to_byte((uint32_t)cp) < 0;
      j += (size_t)k;
    }
    if (plain) {
      char *r = respelled + rlen;
      for (size_t j = 0; j < n; j++) {
        size_t k = put_utf8(tmp, byte_to_cp((uint8_t)s[j]));
        memcpy(respelled + rlen, tmp, k), rlen += k;
      }
      voc[i] = (tok_str){r, (size_t)(respelled + rlen - r)};
    }
  }
  sp.n_vocab = src->n_tokens, sp.vocab_ids = ids, sp.vocab = voc;
  for (size_t r = 0; r < nm; r++) {
    const char *m = src->merges[r];
    size_t n = src->merge_lens[r];
    const char *sp1 = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
    if (!sp1 || sp1 + 1 == m + n) {
      st = bl_fail(err, BL_EFORMAT, "%s: tokenizer.ggml.merges[%zu] \"%.*s\" is not \"left right\"",
                   o, r, (int)n, m);
      goto done;
    }
    ml[r] = (tok_str){m, (size_t)(sp1 - m)};
    mr[r] = (tok_str){sp1 + 1, (size_t)(m + n - sp1 - 1)};
  }
  sp.n_merges = src->n_merges, sp.merge_left = ml, sp.merge_right = mr, sp.added = add;
  sp.chat_template = (tok_str){src->chat_template, src->chat_template_len};
  st = tok_build_spec(&sp, out, err);
done:
  free(ids), free(voc), free(ml), free(mr), free(add), free(respelled);
  return st;
}
