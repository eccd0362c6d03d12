/* Tokenizer against Hugging Face: every string of the corpus in
 * tests/data/tokenizer/vectors.bin.gz (made by
 * tools/ref/make_tokenizer_vectors.py) must encode id for id as HF does, for
 * Qwen3 (tokenizer.json, found through $BALLAST_QWEN3_TOKENIZER, and the same
 * vocabulary handed over as GGUF arrays) and SmolLM2 (GGUF arrays from
 * smollm2_vocab.bin.gz, through tok_build); decode and the streaming decoder
 * must give the text back. Also: error paths, streaming of split and invalid
 * characters, and single-thread encode speed (printed, wall clock). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <zlib.h>

#include "t.h"
#include "tokenizer.h"

typedef struct rec {
  uint8_t flags; /* 1 parse_special, 2 HF Qwen3 decodes its ids to the text, 4 SmolLM2 ids
                  * present, 8 HF SmolLM2 decodes its ids to the text */
  const char *text;
  uint32_t len, n_qwen, n_smol;
  const uint8_t *qwen, *smol; /* int32 ids, little-endian, unaligned (read with id_at) */
} rec;

typedef struct blob {
  uint8_t *p;
  size_t n, off;
  bool bad;
} blob;

static bool gz_read_all(const char *path, blob *b) {
  gzFile f = gzopen(path, "rb");
  if (!f) return false;
  size_t cap = 1 << 20;
  b->p = malloc(cap), b->n = 0, b->off = 0;
  int k;
  while (b->p && (k = gzread(f, b->p + b->n, (unsigned)(cap - b->n))) > 0) {
    b->n += (size_t)k;
    if (b->n == cap) b->p = realloc(b->p, cap *= 2);
  }
  gzclose(f);
  return b->p != NULL;
}

static const uint8_t *take(blob *b, size_t n) {
  if (b->bad || n > b->n - b->off) {
    b->bad = true;
    return NULL;
  }
  b->off += n;
  return b->p + b->off - n;
}

static uint32_t take_u32(blob *b) {
  uint32_t v = 0;
  const uint8_t *p = take(b, 4);
  if (p) memcpy(&v, p, 4);
  return v;
}

/* Id i of an unaligned little-endian int32 array (the hosts we build on are
 * little-endian). */
static int32_t id_at(const uint8_t *p, size_t i) {
  int32_t v;
  memcpy(&v, p + 4 * i, 4);
  return v;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *data_path(const char *name) {
  const char *dir = getenv("BALLAST_TOK_DATA");
  static char buf[4096];
  snprintf(buf, sizeof buf, "%s/%s", dir ? dir : "tests/data/tokenizer", name);
  return buf;
}

static rec *load_vectors(blob *b, size_t *n) {
  if (!gz_read_all(data_path("vectors.bin.gz"), b)) return NULL;
  const uint8_t *magic = take(b, 8);
  if (!magic || memcmp(magic, "BLTOKV1\n", 8)) return NULL;
  *n = take_u32(b);
  rec *r = calloc(*n + 1, sizeof *r);
  for (size_t i = 0; r && i < *n && !b->bad; i++) {
    const uint8_t *f = take(b, 1);
    r[i].flags = f ? *f : 0;
    r[i].len = take_u32(b);
    r[i].text = (const char *)take(b, r[i].len);
    r[i].n_qwen = take_u32(b);
    r[i].qwen = take(b, 4 * (size_t)r[i].n_qwen);
    if (r[i].flags & 4) {
      r[i].n_smol = take_u32(b);
      r[i].smol = take(b, 4 * (size_t)r[i].n_smol);
    }
  }
  if (b->bad) {
    free(r);
    return NULL;
  }
  return r;
}

/* The GGUF tokenizer arrays, as the GGUF loader will hand them over. */
typedef struct gguf_vocab {
  blob b;
  tok_vocab_src src;
  const char **tokens, **merges;
  size_t *token_lens, *merge_lens;
  int32_t *types;
  char pre[64];
} gguf_vocab;

static bool load_smol_vocab(gguf_vocab *v) {
  blob *b = &v->b;
  if (!gz_read_all(data_path("smollm2_vocab.bin.gz"), b)) return false;
  const uint8_t *magic = take(b, 8);
  if (!magic || memcmp(magic, "BLTOKS1\n", 8)) return false;
  uint32_t n = take_u32(b);
  const uint8_t *pre = take(b, n);
  if (!pre || n >= sizeof v->pre) return false;
  memcpy(v->pre, pre, n);
  v->src.pre = v->pre;
  v->src.bos_id = (int32_t)take_u32(b);
  v->src.eos_id = (int32_t)take_u32(b);
  uint32_t nt = take_u32(b);
  v->tokens = calloc(nt + 1, sizeof *v->tokens);
  v->token_lens = calloc(nt + 1, sizeof *v->token_lens);
  v->types = calloc(nt + 1, sizeof *v->types);
  for (uint32_t i = 0; i < nt && !b->bad; i++) {
    v->token_lens[i] = take_u32(b);
    v->tokens[i] = (const char *)take(b, v->token_lens[i]);
    v->types[i] = (int32_t)take_u32(b);
  }
  uint32_t nm = take_u32(b);
  v->merges = calloc(nm + 1, sizeof *v->merges);
  v->merge_lens = calloc(nm + 1, sizeof *v->merge_lens);
  for (uint32_t i = 0; i < nm && !b->bad; i++) {
    v->merge_lens[i] = take_u32(b);
    v->merges[i] = (const char *)take(b, v->merge_lens[i]);
  }
  v->src.n_tokens = (int32_t)nt, v->src.tokens = v->tokens, v->src.token_lens = v->token_lens;
  v->src.token_types = v->types;
  v->src.n_merges = (int32_t)nm, v->src.merges = v->merges, v->src.merge_lens = v->merge_lens;
  return !b->bad;
}

static void free_smol_vocab(gguf_vocab *v) {
  free(v->b.p), free(v->tokens), free(v->merges), free(v->token_lens), free(v->merge_lens),
      free(v->types);
}

/* Stream ids through tok_stream_push one at a time; returns malloc'd text. */
static char *stream_all(const tok_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
  tok_stream s = {0};
  char *buf = NULL;
  size_t cap = 0;
  *len = 0;
  for (size_t i = 0; i < n; i++)
    T_CHECK(tok_stream_push(&s, t, ids[i], &buf, len, &cap) == BL_OK);
  T_CHECK(tok_stream_flush(&s, &buf, len, &cap) == BL_OK);
  return buf;
}

/* Encode every record with this model's ids and compare; decode and stream
 * back. which: 0 Qwen3, 1 SmolLM2. */
static void check_corpus(const char *name, const tok_tokenizer *t, const rec *r, size_t n,
                         int which) {
  size_t checked = 0, mismatched = 0, bytes = 0, roundtrip_bad = 0, stream_bad = 0;
  double t_enc = 0;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *want = which ? r[i].smol : r[i].qwen;
    size_t nwant = which ? r[i].n_smol : r[i].n_qwen;
    if (which && !(r[i].flags & 4)) continue;
    int32_t *ids;
    size_t nids;
    bl_err err = {0};
    double t0 = now_s();
    bl_status st = tok_encode(t, r[i].text, r[i].len, r[i].flags & 1, &ids, &nids, &err);
    t_enc += now_s() - t0;
    bytes += r[i].len;
    checked++;
    T_CHECKF(st == BL_OK, "%s: record %zu: %s", name, i, err.msg);
    if (st != BL_OK) {
      mismatched++;
      continue;
    }
    size_t d = 0;
    while (d < nids && d < nwant && ids[d] == id_at(want, d))
      d++;
    if (d != nids || nids != nwant) {
      if (mismatched++ < 8)
        fprintf(stderr,
                "%s: record %zu (%u bytes, \"%.40s\"): first difference at token %zu: got %d want "
                "%d (%zu vs %zu tokens)\n",
                name, i, r[i].len, r[i].text, d, d < nids ? ids[d] : -1,
                d < nwant ? id_at(want, d) : -1, nids, nwant);
    }
    size_t dl, sl;
    char *dec = tok_decode(t, ids, nids, &dl);
    if ((r[i].flags & (which ? 8 : 2)) && (dl != r[i].len || memcmp(dec, r[i].text, dl)))
      roundtrip_bad++;
    char *str = stream_all(t, ids, nids, &sl);
    if (sl != dl || (sl && memcmp(str, dec, sl))) stream_bad++;
    free(str);
    free(dec);
    free(ids);
  }
  T_CHECKF(mismatched == 0, "%s: %zu of %zu strings differ from HF", name, mismatched, checked);
  T_CHECKF(roundtrip_bad == 0, "%s: decode(encode(s)) != s for %zu strings", name, roundtrip_bad);
  T_CHECKF(stream_bad == 0, "%s: streamed text != decode for %zu strings", name, stream_bad);
  fprintf(stderr,
          "%s: %zu strings, %zu match HF; encode %.2f MB/s (%zu bytes, one string at a time)\n",
          name, checked, checked - mismatched, bytes / t_enc / 1e6, bytes);
}

/* Whole corpus as one document, for throughput without per-call overhead. */
static void bench_document(const char *name, const tok_tokenizer *t, const rec *r, size_t n) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    if (r[i].flags & 4) total += r[i].len + 1;
  char *doc = malloc(total + 1), *p = doc;
  for (size_t i = 0; i < n; i++)
    if (r[i].flags & 4) memcpy(p, r[i].text, r[i].len), p += r[i].len, *p++ = '\n';
  double best = 1e9;
  for (int k = 0; k < 3; k++) {
    int32_t *ids;
    size_t nids;
    double t0 = now_s();
    T_CHECK(tok_encode(t, doc, total, true, &ids, &nids, NULL) == BL_OK);
    double dt = now_s() - t0;
    best = dt < best ? dt : best;
    free(ids);
  }
  fprintf(stderr, "%s: one %zu-byte document: %.2f MB/s\n", name, total, total / best / 1e6);
  free(doc);
}

/* Id of the token that is the single byte b (its byte-level symbol). */
static int32_t byte_token(const tok_tokenizer *t, uint8_t b) {
  uint32_t cp = b;
  if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
    int k = 0;
    for (int c = 0; c < b; c++)
      if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) k++;
    cp = 256u + (uint32_t)k;
  }
  char s[4] = {0};
  if (cp < 0x80)
    s[0] = (char)cp;
  else
    s[0] = (char)(0xC0 | cp >> 6), s[1] = (char)(0x80 | (cp & 0x3F));
  return tok_find(t, s);
}

static void check_stream(const tok_tokenizer *t) {
  const char *text = "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80!"; /* é 中 😀 ! */
  tok_stream s = {0};
  char *buf = NULL;
  size_t len = 0, cap = 0;
  /* byte by byte: output grows only at character ends */
  static const size_t ends_after[] = {0, 2, 2, 2, 5, 5, 5, 5, 9, 10};
  for (size_t i = 0; i < 10; i++) {
    int32_t id = byte_token(t, (uint8_t)text[i]);
    T_CHECKF(id >= 0, "byte %02x has no token", (uint8_t)text[i]);
    T_CHECK(tok_stream_push(&s, t, id, &buf, &len, &cap) == BL_OK);
    T_CHECKF(len == ends_after[i] && (len == 0 || !memcmp(buf, text, len)),
             "after byte %zu: %zu bytes out", i, len);
  }
  T_CHECK(tok_stream_flush(&s, &buf, &len, &cap) == BL_OK && len == 10);
  /* an emoji that encodes to several tokens: nothing until the last one */
  static const char *const emoji[] = {"\xf0\x9f\xa6\x80", "\xf0\x9f\xa7\xbf", "\xf0\x9f\xaa\xb7",
                                      "\xf0\x9f\xab\x8e"};
  int32_t *ids = NULL;
  size_t n = 0;
  for (size_t e = 0; e < 4 && n < 2; e++) {
    free(ids);
    T_CHECK(tok_encode(t, emoji[e], 4, true, &ids, &n, NULL) == BL_OK);
  }
  T_CHECKF(n >= 2, "every test emoji is a single token");
  len = 0;
  for (size_t i = 0; i < n; i++) {
    T_CHECK(tok_stream_push(&s, t, ids[i], &buf, &len, &cap) == BL_OK);
    T_CHECK(len == (i + 1 == n ? 4 : 0));
  }
  free(ids);
  free(buf);
}

/* Bytes pushed one token each must come out as Rust's from_utf8_lossy (HF
 * decode) writes them: one U+FFFD per maximal invalid subpart, and one for an
 * incomplete tail at flush. */
static void check_stream_lossy(const tok_tokenizer *t) {
#define R "\xef\xbf\xbd"
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"\xe4\xb8", R},          /* incomplete tail */
      {"\xf0\x9f\x98!", R "!"}, /* truncated 4-byte sequence: one U+FFFD */
      {"\xff", R},              /* never valid */
      {"\xe4"
       "a",
       R "a"},                        /* lead byte, then ASCII */
      {"\xed\xa0\x80", R R R},        /* surrogate: each byte on its own */
      {"\xc0\xaf", R R},              /* overlong */
      {"\x80\xc3\xa9", R "\xc3\xa9"}, /* stray continuation, then e-acute */
      {"\xf4\x90\x80\x80", R R R R},  /* above U+10FFFF */
  };
#undef R
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    const char *in = cases[c].in;
    bool have = true;
    for (size_t i = 0; in[i]; i++)
      have &= byte_token(t, (uint8_t)in[i]) >= 0;
    if (!have) continue; /* SmolLM2 has no token for some bytes (0xFF, 0xC0, ...) */
    tok_stream s = {0};
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (size_t i = 0; in[i]; i++)
      T_CHECK(tok_stream_push(&s, t, byte_token(t, (uint8_t)in[i]), &buf, &len, &cap) == BL_OK);
    T_CHECK(tok_stream_flush(&s, &buf, &len, &cap) == BL_OK);
    T_CHECKF(len == strlen(cases[c].out) && !memcmp(buf, cases[c].out, len), "case %zu: %zu bytes",
             c, len);
    free(buf);
  }
  tok_stream s = {0};
  char *buf = NULL;
  size_t len = 0, cap = 0;
  T_CHECK(tok_stream_push(&s, t, -5, &buf, &len, &cap) == BL_EINVAL && len == 0);
  free(buf);
}

static void check_invalid_utf8(const tok_tokenizer *t) {
  static const char *const bad[] = {"\xff",     "ab\xc3",           "\xed\xa0\x80",
                                    "\xc0\xaf", "\xf4\x90\x80\x80", "x\x80y"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    bl_err err = {0};
    T_CHECK(tok_encode(t, bad[i], strlen(bad[i]), true, &ids, &n, &err) == BL_EINVAL);
    T_CHECK(ids == NULL && n == 0 && strstr(err.msg, "UTF-8"));
  }
}

static void check_qwen_basics(const tok_tokenizer *t) {
  T_CHECK(tok_vocab_size(t) == 151669);
  T_CHECK(tok_find(t, "<|im_end|>") == 151645 && tok_eos_id(t) == 151645 && tok_bos_id(t) == -1);
  T_CHECK(tok_find(t, "<think>") == 151667 && tok_find(t, "no such token") == -1);
  T_CHECK(tok_is_special(t, 151644) && !tok_is_special(t, 151667) && !tok_is_special(t, 100));
  size_t k;
  T_CHECK(tok_token_bytes(t, 151669, &k) == NULL && tok_token_bytes(t, -1, &k) == NULL);
  const char *b = tok_token_bytes(t, 151645, &k);
  T_CHECK(b && k == 10 && !memcmp(b, "<|im_end|>", 10));
  int32_t chat[] = {151644, 872, 198}; /* <|im_start|>user\n */
  char *dec = tok_decode(t, chat, 3, &k);
  T_CHECK(dec && k == 17 && !strcmp(dec, "<|im_start|>user\n"));
  free(dec);
  int32_t *ids;
  size_t n;
  T_CHECK(tok_encode(t, "<|im_start|><think>", 19, false, &ids, &n, NULL) == BL_OK);
  T_CHECKF(n > 2 && ids[n - 1] == 151667, "special split as text, <think> kept (%zu ids)", n);
  free(ids);
  T_CHECK(tok_encode(t, "", 0, true, &ids, &n, NULL) == BL_OK && n == 0);
  free(ids);
  /* long runs take the heap merge and the regex's long-subject paths */
  size_t big = 200000;
  char *sp = malloc(big + 1);
  memset(sp, ' ', big);
  sp[big - 1] = 'x';
  T_CHECK(tok_encode(t, sp, big, true, &ids, &n, NULL) == BL_OK);
  size_t dl;
  dec = tok_decode(t, ids, n, &dl);
  T_CHECK(dec && dl == big && !memcmp(dec, sp, big));
  free(dec), free(ids), free(sp);
}

static char *write_tmp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/bl_tok_XXXXXX");
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  size_t n = strlen(text);
  T_CHECK(write(fd, text, n) == (ssize_t)n);
  close(fd);
  return path;
}

/* A tiny byte-level tokenizer.json: the 256 byte symbols, merges in both
 * forms, one added token; pre_tokenizer and normalizer given by the caller. */
static char *tiny_json(const char *normalizer, const char *pretok) {
  size_t cap = 16384, o = 0;
  char *j = malloc(cap);
  o += (size_t)snprintf(
      j + o, cap - o,
      "{\"added_tokens\":[{\"id\":260,\"content\":\"<x>\",\"special\":true}],"
      "\"normalizer\":%s,\"pre_tokenizer\":%s,\"decoder\":{\"type\":\"ByteLevel\"},"
      "\"model\":{\"type\":\"BPE\",\"vocab\":{",
      normalizer, pretok);
  for (int b = 0; b < 256; b++) {
    uint32_t cp = b;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
      int k = 0;
      for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) k++;
      cp = 256u + (uint32_t)k;
    }
    if (cp == '"' || cp == '\\')
      o += (size_t)snprintf(j + o, cap - o, "\"\\%c\":%d,", (char)cp, b);
    else if (cp < 0x80)
      o += (size_t)snprintf(j + o, cap - o, "\"%c\":%d,", (char)cp, b);
    else
      o += (size_t)snprintf(j + o, cap - o, "\"%c%c\":%d,", (char)(0xC0 | cp >> 6),
                            (char)(0x80 | (cp & 0x3F)), b);
  }
  o += (size_t)snprintf(j + o, cap - o,
                        "\"ab\":256,\"abc\":257,\"\xc4\xa0"
                        "a\":258,\"11\":259},"
                        "\"merges\":[\"a b\",[\"ab\",\"c\"],\"\xc4\xa0 a\",\"1 1\"]}}");
  return j;
}

static void check_json_paths(void) {
  tok_tokenizer *t = NULL;
  bl_err err = {0};
  T_CHECK(tok_load_json("/nonexistent/tokenizer.json", &t, &err) == BL_EIO && t == NULL);
  /* a working tiny tokenizer: Digits(individual) + ByteLevel */
  char *j = tiny_json(
      "null",
      "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
      "{\"type\":\"ByteLevel\",\"add_prefix_space\":true}]}");
  char *path = write_tmp(j);
  bl_err_clear(&err);
  T_CHECKF(tok_load_json(path, &t, &err) == BL_OK, "%s", err.msg);
  if (t) {
    int32_t *ids;
    size_t n;
    /* <x> is cut out first; Digits: "abc ", "1", "1"; ByteLevel prefixes a
     * space to each: " abc" -> Ġ a b c -> Ġ ab c -> Ġ abc, then " ", " 1", " 1"
     * (HF tokenizers gives the same, given the merges all in one form: it
     * refuses a mix). Byte symbols have their byte's id. */
    T_CHECK(tok_encode(t, "abc 11<x>", 9, true, &ids, &n, NULL) == BL_OK);
    static const int32_t want[] = {32, 257, 32, 32, 49, 32, 49, 260};
    T_CHECKF(n == 8 && !memcmp(ids, want, sizeof want), "%zu ids", n);
    free(ids);
    tok_free(t);
  }
  unlink(path);
  free(j);
  struct {
    const char *norm, *pre, *want;
  } bad[] = {
      {"{\"type\":\"Lowercase\"}", "{\"type\":\"ByteLevel\"}", "normalizer.type"},
      {"null", "{\"type\":\"Whitespace\"}", "pre_tokenizer.type"},
      {"null",
       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"}"
       ",\"behavior\":\"Removed\"},{\"type\":\"ByteLevel\"}]}",
       "pre_tokenizer.pretokenizers[0].behavior"},
      {"null",
       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}"
       ",\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\"}]}",
       "regex"},
      {"null", "null", "ByteLevel"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    j = tiny_json(bad[i].norm, bad[i].pre);
    path = write_tmp(j);
    bl_err_clear(&err);
    t = NULL;
    T_CHECK(tok_load_json(path, &t, &err) != BL_OK && t == NULL);
    T_CHECKF(strstr(err.msg, bad[i].want) && strstr(err.msg, path), "message: %s", err.msg);
    unlink(path);
    free(j);
  }
}

/* Qwen3 through the GGUF path: the arrays a Qwen3 GGUF carries (tokens by
 * id, "left right" merges, added tokens typed control / user-defined, pre =
 * "qwen2"), rebuilt from tokenizer.json, must encode as tokenizer.json does. */
static void check_qwen_gguf(const char *path, const rec *r, size_t n) {
  blob b = {0};
  if (!gz_read_all(path, &b)) return; /* zlib reads a plain file as is */
  cJSON *root = cJSON_ParseWithLength((const char *)b.p, b.n);
  T_CHECK(root != NULL);
  const cJSON *model = cJSON_GetObjectItem(root, "model"), *e;
  const cJSON *vocab = cJSON_GetObjectItem(model, "vocab"),
              *merges = cJSON_GetObjectItem(model, "merges");
  const cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
  int32_t nt = cJSON_GetArraySize(vocab) + cJSON_GetArraySize(added),
          nm = cJSON_GetArraySize(merges);
  const char **tokens = calloc((size_t)nt, sizeof *tokens), **ms = calloc((size_t)nm, sizeof *ms);
  size_t *tl = calloc((size_t)nt, sizeof *tl), *ml = calloc((size_t)nm, sizeof *ml);
  int32_t *types = calloc((size_t)nt, sizeof *types);
  char *arena = malloc(b.n), *a = arena; /* "left right" strings */
  cJSON_ArrayForEach(e, vocab) {
    if (e->valueint < nt) tokens[e->valueint] = e->string, types[e->valueint] = TOK_NORMAL;
  }
  cJSON_ArrayForEach(e, added) {
    int id = cJSON_GetObjectItem(e, "id")->valueint;
    if (id < nt) tokens[id] = cJSON_GetObjectItem(e, "content")->valuestring;
    if (id < nt)
      types[id] = cJSON_IsTrue(cJSON_GetObjectItem(e, "special")) ? TOK_CONTROL : TOK_USER;
  }
  int32_t i = 0;
  cJSON_ArrayForEach(e, merges) {
    ms[i] = a;
    a += sprintf(a, "%s %s", e->child->valuestring, e->child->next->valuestring);
    ml[i] = (size_t)(a - ms[i]), i++;
  }
  bool complete = true;
  for (i = 0; i < nt; i++)
    complete &= tokens[i] != NULL, tl[i] = tokens[i] ? strlen(tokens[i]) : 0;
  T_CHECK(complete);
  tok_vocab_src src = {nt, tokens, tl, types, nm, ms, ml, "qwen2", -1, 151645, NULL, 0};
  tok_tokenizer *t = NULL;
  bl_err err = {0};
  T_CHECKF(complete && tok_build(&src, &t, &err) == BL_OK, "%s", err.msg);
  if (t) {
    T_CHECK(tok_vocab_size(t) == 151669 && tok_find(t, "<|im_end|>") == 151645);
    T_CHECK(tok_is_special(t, 151644) && !tok_is_special(t, 151667));
    check_corpus("qwen3 (gguf arrays)", t, r, n, 0);
    tok_free(t);
  }
  free(tokens), free(ms), free(tl), free(ml), free(types), free(arena);
  cJSON_Delete(root);
  free(b.p);
}

int main(void) {
  blob vb = {0};
  size_t n = 0;
  rec *r = load_vectors(&vb, &n);
  T_CHECKF(r != NULL, "cannot read %s", data_path("vectors.bin.gz"));
  check_json_paths();

  const char *qpath = getenv("BALLAST_QWEN3_TOKENIZER");
  tok_tokenizer *qwen = NULL;
  bl_err err = {0};
  if (!qpath || access(qpath, R_OK) != 0) {
    fprintf(stderr, "skip Qwen3: tokenizer.json not found ($BALLAST_QWEN3_TOKENIZER=%s)\n",
            qpath ? qpath : "");
  } else {
    double t0 = now_s();
    T_CHECKF(tok_load_json(qpath, &qwen, &err) == BL_OK, "%s", err.msg);
    fprintf(stderr, "qwen3: loaded in %.0f ms\n", 1e3 * (now_s() - t0));
  }
  if (qwen) {
    check_qwen_basics(qwen);
    check_invalid_utf8(qwen);
    check_stream(qwen);
    check_stream_lossy(qwen);
    if (r) check_corpus("qwen3", qwen, r, n, 0);
    if (r) bench_document("qwen3", qwen, r, n);
    tok_free(qwen);
    if (r) check_qwen_gguf(qpath, r, n);
  }

  gguf_vocab v = {0};
  tok_tokenizer *smol = NULL;
  T_CHECKF(load_smol_vocab(&v), "cannot read %s", data_path("smollm2_vocab.bin.gz"));
  bl_err_clear(&err);
  T_CHECKF(tok_build(&v.src, &smol, &err) == BL_OK, "%s", err.msg);
  if (smol) {
    T_CHECK(tok_vocab_size(smol) == 49152 && tok_eos_id(smol) == 2 && tok_bos_id(smol) == 1);
    T_CHECK(tok_find(smol, "<|im_end|>") == 2 && tok_is_special(smol, 2));
    check_stream(smol);
    check_stream_lossy(smol);
    if (r) check_corpus("smollm2", smol, r, n, 1);
    if (r) bench_document("smollm2", smol, r, n);
    tok_free(smol);
  }
  v.src.pre = "nonesuch";
  bl_err_clear(&err);
  T_CHECK(tok_build(&v.src, &smol, &err) == BL_EUNSUPPORTED && smol == NULL &&
          strstr(err.msg, "nonesuch"));
  free_smol_vocab(&v);
  free(r);
  free(vb.p);
  return T_DONE();
}
