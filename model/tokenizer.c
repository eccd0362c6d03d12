/* Byte-level BPE: tables, encode, decode, streaming decode.
 *
 * Tables (immutable after tok_build_spec, so encode/decode are thread-safe):
 *   per id: its vocab symbol string (byte-level, or an added token's content)
 *   and its raw bytes; a string -> id hash; a (left id, right id) -> (rank,
 *   merged id) hash; byte_id[256], the id of each single byte's symbol; a
 *   raw bytes -> id hash of the tokens BPE rebuilds whole from their bytes,
 *   which settles most pieces (common words) in one probe.
 * Encode: added tokens are cut out of the raw text first (leftmost, longest),
 * each gap is NFC-normalized when asked, split by the pre-tokenizer stages
 * (PCRE2, UTF + UCP) and each piece merged by rank on ids directly: a plain
 * scan for short pieces, a heap with lazy deletion for long ones; both apply
 * the lowest rank, leftmost pair first, as HF does. All scratch lives in one
 * per-call context, grown by doubling. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

enum { TF_PRESENT = 1, TF_ADDED = 2, TF_SPECIAL = 4 };
#define SMALL_PIECE 32 /* pieces up to this many symbols merge by plain scan */
#define NO_RANK     INT32_MAX

typedef struct merge_ent {
  uint64_t key; /* left << 32 | right; UINT64_MAX when empty */
  int32_t rank, id;
} merge_ent;

typedef struct tok_added {
  uint32_t off, len; /* content in t->sym */
  int32_t id;
  bool special, normalized, lstrip, rstrip, single_word;
} tok_added;

typedef struct tok_stage {
  pcre2_code *re; /* NULL: no split */
  bool jit, prefix_space;
} tok_stage;

struct tok_tokenizer {
  int32_t n_vocab;   /* max id + 1 */
  uint8_t *flags;    /* [n_vocab] TF_* */
  uint32_t *sym_off; /* [n_vocab + 1] symbol strings in sym */
  char *sym;
  uint32_t *raw_off; /* [n_vocab + 1] raw bytes in raw */
  char *raw;
  int32_t *vmap; /* string -> id, open addressing, -1 empty */
  uint32_t vmap_mask;
  merge_ent *mmap;
  uint32_t mmap_mask;
  uint64_t *wmap; /* raw bytes -> id of tokens BPE rebuilds whole: hash32 << 32 | id; 0 empty */
  uint32_t wmap_mask;
  int32_t byte_id[256];
  tok_added *added; /* sorted by first byte, then longest first */
  int32_t n_added;
  uint16_t first_lo[256], first_hi[256]; /* added[] range per first byte */
  bool has_normalized_added;
  tok_stage stages[TOK_MAX_STAGES];
  int32_t n_stages;
  bool nfc, ignore_merges;
  uint32_t *nfc_changes; /* sorted code points that NFC alters on their own */
  size_t n_nfc_changes;
  int32_t unk_id, bos_id, eos_id;
  char *chat_template; /* Jinja source, NUL-terminated; NULL: none */
};

/* Raw bytes of a symbol string: the inverse byte map when every character is
 * in the alphabet, else the string itself (HF's ByteLevel decoder rule).
 * out has room for n bytes; returns the length written. */
static size_t symbol_to_raw(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k =
        utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
    int b = k > 0 ? cp_to_byte((uint32_t)cp) : -1;
    if (b < 0) {
      memcpy(out, s, n);
      return n;
    }
    out[o++] = (char)b;
    i += (size_t)k;
  }
  return o;
}

/* ---- hashing ---- */

static uint64_t hash_str(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

static inline uint32_t hash_pair(uint64_t key) {
  return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32);
}

static uint32_t pow2_at_least(uint64_t n) {
  uint32_t c = 16;
  while (c < n)
    c <<= 1;
  return c;
}

static int32_t vmap_get(const tok_tokenizer *t, const char *s, size_t n) {
  for (uint32_t h = (uint32_t)hash_str(s, n) & t->vmap_mask;; h = (h + 1) & t->vmap_mask) {
    int32_t id = t->vmap[h];
    if (id < 0) return -1;
    uint32_t o = t->sym_off[id];
    if (t->sym_off[id + 1] - o == n && memcmp(t->sym + o, s, n) == 0) return id;
  }
}

static void vmap_put(tok_tokenizer *t, int32_t id) {
  const char *s = t->sym + t->sym_off[id];
  size_t n = t->sym_off[id + 1] - t->sym_off[id];
  if (vmap_get(t, s, n) >= 0) return; /* first id with a given string wins */
  uint32_t h = (uint32_t)hash_str(s, n) & t->vmap_mask;
  while (t->vmap[h] >= 0)
    h = (h + 1) & t->vmap_mask;
  t->vmap[h] = id;
}

static inline const merge_ent *merge_get(const tok_tokenizer *t, int32_t a, int32_t b) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  for (uint32_t h = hash_pair(key) & t->mmap_mask;; h = (h + 1) & t->mmap_mask) {
    const merge_ent *e = &t->mmap[h];
    if (e->key == key) return e;
    if (e->key == UINT64_MAX) return NULL;
  }
}

/* ---- build ---- */

/* Rewrite \s and \S to Unicode White_Space (what Oniguruma, HF's regex
 * engine, matches); PCRE2's \s also takes U+180E. Returns a malloc'd pattern. */
#define WS_ITEMS                                                                                   \
  "\\t\\n\\x{0B}\\f\\r "                                                                           \
  "\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static char *rewrite_space_classes(const char *p, size_t n, bool *ok) {
  char *out = malloc(n * (sizeof WS_ITEMS + 4) + 1);
  if (!out) return NULL;
  size_t o = 0;
  bool in_class = false;
  *ok = true;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (c == '\\' && i + 1 < n) {
      char d = p[i + 1];
      i++;
      if (d == 's' || d == 'S') {
        if (in_class && d == 'S') *ok = false;
        const char *pre = in_class ? "" : (d == 's' ? "[" : "[^");
        memcpy(out + o, pre, strlen(pre)), o += strlen(pre);
        memcpy(out + o, WS_ITEMS, sizeof WS_ITEMS - 1), o += sizeof WS_ITEMS - 1;
        if (!in_class) out[o++] = ']';
      } else {
        out[o++] = c;
        out[o++] = d;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out[o++] = c;
      if (i + 1 < n && p[i + 1] == '^') out[o++] = p[++i];
      if (i + 1 < n && p[i + 1] == ']') out[o++] = p[++i]; /* leading ] is literal */
      continue;
    }
    if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] */
      const char *end = memchr(p + i + 2, ']', n - i - 2);
      size_t k = end ? (size_t)(end - (p + i)) + 1 : 1;
      memcpy(out + o, p + i, k), o += k, i += k - 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out[o++] = c;
  }
  out[o] = 0;
  return out;
}

static bl_status compile_stage(tok_stage *st, const tok_stage_spec *sp, const char *origin, int idx,
                               bl_err *err) {
  st->prefix_space = sp->prefix_space;
  if (!sp->pattern.s) return BL_OK;
  int ec;
  PCRE2_SIZE eoff;
  if (sp->literal) {
    st->re = pcre2_compile((PCRE2_SPTR)sp->pattern.s, sp->pattern.n, PCRE2_UTF | PCRE2_LITERAL, &ec,
                           &eoff, NULL);
  } else {
    bool ok;
    char *pat = rewrite_space_classes(sp->pattern.s, sp->pattern.n, &ok);
    if (!pat) return bl_fail(err, BL_ENOMEM, "%s: out of memory", origin);
    if (!ok) {
      free(pat);
      return bl_fail(err, BL_EUNSUPPORTED,
                     "%s: pre-tokenizer %d: \\S inside [...] is not supported", origin, idx);
    }
    st->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec,
                           &eoff, NULL);
    free(pat);
  }
  if (!st->re) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return bl_fail(err, BL_EFORMAT, "%s: pre-tokenizer %d: regex /%.*s/ at %zu: %s", origin, idx,
                   (int)(sp->pattern.n > 200 ? 200 : sp->pattern.n), sp->pattern.s, (size_t)eoff,
                   (char *)msg);
  }
  st->jit = pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0;
  return BL_OK;
}

static int cmp_added(const void *a, const void *b, void *sym) {
  const tok_added *x = a, *y = b;
  const char *s = sym;
  uint8_t fx = (uint8_t)s[x->off], fy = (uint8_t)s[y->off];
  if (fx != fy) return fx < fy ? -1 : 1;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Fill sym/raw strings for every id (vocab and added). */
static bl_status build_strings(tok_tokenizer *t, const tok_spec *sp, bl_err *err) {
  const char *o = sp->origin;
  size_t total = 0;
  const tok_str **byid = calloc((size_t)t->n_vocab, sizeof *byid);
  if (!byid) return bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
  for (int32_t i = 0; i < sp->n_vocab; i++) {
    if (byid[sp->vocab_ids[i]]) {
      free(byid);
      return bl_fail(err, BL_EFORMAT, "%s: vocab: id %d given twice", o, sp->vocab_ids[i]);
    }
    byid[sp->vocab_ids[i]] = &sp->vocab[i];
    total += sp->vocab[i].n;
  }
  for (int32_t i = 0; i < sp->n_added; i++) { /* an added token's content overrides the vocab */
    byid[sp->added[i].id] = &sp->added[i].content;
    total += sp->added[i].content.n;
  }
  if (total >= UINT32_MAX) {
    free(byid);
    return bl_fail(err, BL_ERANGE, "%s: vocab strings too large", o);
  }
  t->sym = malloc(total + 1);
  t->raw = malloc(total + 1);
  if (!t->sym || !t->raw) {
    free(byid);
    return bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
  }
  uint32_t so = 0, ro = 0;
  for (int32_t id = 0; id < t->n_vocab; id++) {
    t->sym_off[id] = so;
    t->raw_off[id] = ro;
    if (!byid[id]) continue;
    t->flags[id] |= TF_PRESENT;
    memcpy(t->sym + so, byid[id]->s, byid[id]->n);
    ro += (uint32_t)symbol_to_raw(byid[id]->s, byid[id]->n, t->raw + ro);
    so += (uint32_t)byid[id]->n;
  }
  t->sym_off[t->n_vocab] = so;
  t->raw_off[t->n_vocab] = ro;
  free(byid);
  return BL_OK;
}

static bl_status build_merges(tok_tokenizer *t, const tok_spec *sp, bl_err *err) {
  t->mmap_mask = pow2_at_least((uint64_t)sp->n_merges * 3 / 2 + 1) - 1; /* load <= 2/3 */
  t->mmap = malloc(((size_t)t->mmap_mask + 1) * sizeof *t->mmap);
  char *buf = NULL;
  size_t cap = 0;
  if (!t->mmap) return bl_fail(err, BL_ENOMEM, "%s: out of memory", sp->origin);
  for (size_t i = 0; i <= t->mmap_mask; i++)
    t->mmap[i].key = UINT64_MAX;
  for (int32_t r = 0; r < sp->n_merges; r++) {
    tok_str a = sp->merge_left[r], b = sp->merge_right[r];
    int32_t ia = vmap_get(t, a.s, a.n), ib = vmap_get(t, b.s, b.n);
    if (a.n + b.n > cap) {
      cap = 2 * (a.n + b.n);
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        return bl_fail(err, BL_ENOMEM, "%s: out of memory", sp->origin);
      }
      buf = nb;
    }
    memcpy(buf, a.s, a.n);
    memcpy(buf + a.n, b.s, b.n);
    int32_t im = vmap_get(t, buf, a.n + b.n);
    if (ia < 0 || ib < 0 || im < 0) {
      free(buf);
      return bl_fail(err, BL_EFORMAT, "%s: merges[%d] \"%.*s %.*s\": %s not in the vocab",
                     sp->origin, r, (int)a.n, a.s, (int)b.n, b.s,
                     ia < 0   ? "left"
                     : ib < 0 ? "right"
                              : "merged token");
    }
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    uint32_t h = hash_pair(key) & t->mmap_mask;
    while (t->mmap[h].key != UINT64_MAX && t->mmap[h].key != key)
      h = (h + 1) & t->mmap_mask;
    if (t->mmap[h].key == key) continue; /* a repeated merge keeps its best rank */
    t->mmap[h] = (merge_ent){key, r, im};
  }
  free(buf);
  return BL_OK;
}

static bl_status build_added(tok_tokenizer *t, const tok_spec *sp, bl_err *err) {
  t->added = calloc((size_t)sp->n_added + 1, sizeof *t->added);
  if (!t->added) return bl_fail(err, BL_ENOMEM, "%s: out of memory", sp->origin);
  for (int32_t i = 0; i < sp->n_added; i++) {
    const tok_added_spec *a = &sp->added[i];
    if (a->content.n == 0)
      return bl_fail(err, BL_EFORMAT, "%s: added token %d is empty", sp->origin, a->id);
    t->flags[a->id] |= TF_ADDED | (a->special ? TF_SPECIAL : 0);
    t->added[t->n_added++] = (tok_added){t->sym_off[a->id], (uint32_t)a->content.n, a->id,
                                         a->special,        a->normalized,          a->lstrip,
                                         a->rstrip,         a->single_word};
    t->has_normalized_added |= a->normalized;
  }
  qsort_r(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added, t->sym);
  if (t->n_added > UINT16_MAX)
    return bl_fail(err, BL_ERANGE, "%s: too many added tokens", sp->origin);
  for (int32_t i = t->n_added - 1; i >= 0; i--) {
    uint8_t f = (uint8_t)t->sym[t->added[i].off];
    if (t->first_hi[f] == 0) t->first_hi[f] = (uint16_t)(i + 1);
    t->first_lo[f] = (uint16_t)i;
  }
  return BL_OK;
}

static size_t merge_small(const tok_tokenizer *t, int32_t *v, size_t m);

/* Tokens that BPE rebuilds whole from their own bytes: a piece with exactly
 * those bytes encodes to that one token, so encode probes this map first
 * (one lookup instead of one per byte plus one per merge). */
static bl_status build_word_map(tok_tokenizer *t, const char *o, bl_err *err) {
  t->wmap_mask = pow2_at_least((uint64_t)t->n_vocab * 2) - 1;
  t->wmap = calloc((size_t)t->wmap_mask + 1, sizeof *t->wmap);
  if (!t->wmap) return bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
  for (int32_t id = 0; id < t->n_vocab; id++) {
    const char *raw = t->raw + t->raw_off[id];
    size_t n = t->raw_off[id + 1] - t->raw_off[id], m = 0;
    if ((t->flags[id] & (TF_PRESENT | TF_ADDED)) != TF_PRESENT || n == 0 || n > SMALL_PIECE)
      continue;
    int32_t v[SMALL_PIECE];
    for (size_t i = 0; i < n && m == i; i++)
      if (t->byte_id[(uint8_t)raw[i]] >= 0) v[m++] = t->byte_id[(uint8_t)raw[i]];
    if (m != n || merge_small(t, v, m) != 1 || v[0] != id) continue;
    uint64_t h = hash_str(raw, n);
    uint32_t i = (uint32_t)h & t->wmap_mask;
    while (t->wmap[i])
      i = (i + 1) & t->wmap_mask;
    t->wmap[i] = (h >> 32 | 1) << 32 | (uint32_t)id; /* hash32 is never 0: 0 marks empty */
  }
  return BL_OK;
}

static inline int32_t wmap_get(const tok_tokenizer *t, const char *p, size_t n) {
  uint64_t h = hash_str(p, n);
  uint32_t tag = (uint32_t)(h >> 32 | 1);
  for (uint32_t i = (uint32_t)h & t->wmap_mask;; i = (i + 1) & t->wmap_mask) {
    uint64_t e = t->wmap[i];
    if (!e) return -1;
    if ((uint32_t)(e >> 32) != tag) continue;
    int32_t id = (int32_t)(uint32_t)e;
    if (t->raw_off[id + 1] - t->raw_off[id] == n && !memcmp(t->raw + t->raw_off[id], p, n))
      return id;
  }
}

bl_status tok_build_spec(const tok_spec *sp, tok_tokenizer **out, bl_err *err) {
  const char *o = sp->origin ? sp->origin : "tokenizer";
  *out = NULL;
  tok_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
  bl_status st;
  int32_t maxid = -1;
  for (int32_t i = 0; i < sp->n_vocab; i++) {
    if (sp->vocab_ids[i] < 0) {
      st = bl_fail(err, BL_EFORMAT, "%s: vocab: negative id %d", o, sp->vocab_ids[i]);
      goto fail;
    }
    if (sp->vocab_ids[i] > maxid) maxid = sp->vocab_ids[i];
  }
  for (int32_t i = 0; i < sp->n_added; i++) {
    if (sp->added[i].id < 0) {
      st = bl_fail(err, BL_EFORMAT, "%s: added token with negative id %d", o, sp->added[i].id);
      goto fail;
    }
    if (sp->added[i].id > maxid) maxid = sp->added[i].id;
  }
  if (maxid < 0 || maxid >= (1 << 30)) {
    st = bl_fail(err, BL_EFORMAT, "%s: vocab is empty or too large", o);
    goto fail;
  }
  t->n_vocab = maxid + 1;
  t->unk_id = sp->unk_id, t->bos_id = sp->bos_id, t->eos_id = sp->eos_id;
  t->nfc = sp->nfc, t->ignore_merges = sp->ignore_merges;
  const tok_str *ct = &sp->chat_template;
  if (ct->s && !(t->chat_template = strndup(ct->s, ct->n))) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
    goto fail;
  }
  if (t->nfc && !(t->nfc_changes = tok_nfc_changing_cps(&t->n_nfc_changes))) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
    goto fail;
  }
  t->flags = calloc((size_t)t->n_vocab, 1);
  t->sym_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->sym_off);
  t->raw_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->raw_off);
  t->vmap_mask = pow2_at_least((uint64_t)t->n_vocab * 2) - 1;
  t->vmap = malloc(((size_t)t->vmap_mask + 1) * sizeof *t->vmap);
  if (!t->flags || !t->sym_off || !t->raw_off || !t->vmap) {
    st = bl_fail(err, BL_ENOMEM, "%s: out of memory", o);
    goto fail;
  }
  memset(t->vmap, 0xff, ((size_t)t->vmap_mask + 1) * sizeof *t->vmap);
  if ((st = build_strings(t, sp, err))) goto fail;
  for (int32_t id = 0; id < t->n_vocab; id++) /* model vocab first: it wins a tie */
    if ((t->flags[id] & TF_PRESENT)) vmap_put(t, id);
  for (int b = 0; b < 256; b++) {
    char s[4];
    t->byte_id[b] = vmap_get(t, s, put_utf8(s, byte_to_cp(b)));
  }
  if ((st = build_merges(t, sp, err)) || (st = build_added(t, sp, err)) ||
      (st = build_word_map(t, o, err)))
    goto fail;
  t->n_stages = sp->n_stages;
  for (int32_t i = 0; i < sp->n_stages; i++)
    if ((st = compile_stage(&t->stages[i], &sp->stages[i], o, i, err))) goto fail;
  *out = t;
  return BL_OK;
fail:
  tok_free(t);
  return st;
}

void tok_free(tok_tokenizer *t) {
  if (!t) return;
  for (int32_t i = 0; i < t->n_stages; i++)
    pcre2_code_free(t->stages[i].re);
  free(t->flags), free(t->sym_off), free(t->sym), free(t->raw_off), free(t->raw);
  free(t->vmap), free(t->mmap), free(t->wmap), free(t->added), free(t->nfc_changes);
  free(t->chat_template);
  free(t);
}

/* ---- encode ---- */

typedef struct heap_ent {
  int32_t rank, pos;
} heap_ent;

typedef struct sym {
  int32_t id, prev, next;
} sym;

typedef struct enc_ctx {
  const tok_tokenizer *t;
  bool parse_special;
  int32_t *ids;
  size_t n, cap;
  pcre2_match_data *md;
  sym *syms;
  heap_ent *heap;
  size_t syms_cap, heap_cap;
  char *pfx[TOK_MAX_STAGES];
  size_t pfx_cap[TOK_MAX_STAGES];
  char *bl; /* byte-level spelling of a piece (ignore_merges lookup) */
  size_t bl_cap;
  tok_buf norm; /* NFC of the current gap */
  bool oom;
} enc_ctx;

static inline void emit(enc_ctx *c, int32_t id) {
  if (c->n == c->cap && !tok_grow((void **)&c->ids, &c->cap, c->n + 1, sizeof *c->ids)) {
    c->oom = true;
    return;
  }
  c->ids[c->n++] = id;
}

static inline bool heap_less(heap_ent a, heap_ent b) {
  return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
  size_t i = (*n)++;
  while (i > 0 && heap_less(e, h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
  heap_ent top = h[0], last = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    if (l >= *n) break;
    m = (l + 1 < *n && heap_less(h[l + 1], h[l])) ? l + 1 : l;
    if (!heap_less(h[m], last)) break;
    h[i] = h[m];
    i = m;
  }
  if (*n) h[i] = last;
  return top;
}

/* Merge syms[0..m) (ids) by rank; plain scan, O(m^2) for small m. */
static size_t merge_small(const tok_tokenizer *t, int32_t *v, size_t m) {
  int32_t rank[SMALL_PIECE], nid[SMALL_PIECE];
  for (size_t i = 0; i + 1 < m; i++) /* the table is MBs: overlap the cache misses */
    __builtin_prefetch(
        &t->mmap[hash_pair((uint64_t)(uint32_t)v[i] << 32 | (uint32_t)v[i + 1]) & t->mmap_mask]);
  for (size_t i = 0; i + 1 < m; i++) {
    const merge_ent *e = merge_get(t, v[i], v[i + 1]);
    rank[i] = e ? e->rank : NO_RANK, nid[i] = e ? e->id : -1;
  }
  while (m > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < m; i++)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == NO_RANK) break;
    v[best] = nid[best];
    for (size_t i = best + 1; i + 1 < m; i++)
      v[i] = v[i + 1], rank[i] = rank[i + 1], nid[i] = nid[i + 1];
    m--;
    for (size_t i = best ? best - 1 : 0; i <= best && i + 1 < m; i++) {
      const merge_ent *e = merge_get(t, v[i], v[i + 1]);
      rank[i] = e ? e->rank : NO_RANK, nid[i] = e ? e->id : -1;
    }
  }
  return m;
}

/* Same result for any m: a heap of candidate pairs keyed (rank, position),
 * stale entries skipped when popped. */
static void merge_heap(enc_ctx *c, size_t m) {
  const tok_tokenizer *t = c->t;
  sym *s = c->syms;
  heap_ent *h = c->heap;
  size_t nh = 0;
  for (size_t i = 0; i < m; i++) {
    s[i].prev = (int32_t)i - 1, s[i].next = i + 1 < m ? (int32_t)i + 1 : -1;
    if (i + 1 < m) {
      const merge_ent *e = merge_get(t, s[i].id, s[i + 1].id);
      if (e) heap_push(h, &nh, (heap_ent){e->rank, (int32_t)i});
    }
  }
  while (nh) {
    heap_ent top = heap_pop(h, &nh);
    sym *a = &s[top.pos];
    if (a->id < 0 || a->next < 0) continue;
    sym *b = &s[a->next];
    const merge_ent *e = merge_get(t, a->id, b->id);
    if (!e || e->rank != top.rank) continue;
    a->id = e->id;
    a->next = b->next;
    if (b->next >= 0) s[b->next].prev = top.pos;
    b->id = -1;
    if (a->prev >= 0) {
      const merge_ent *p = merge_get(t, s[a->prev].id, a->id);
      if (p) heap_push(h, &nh, (heap_ent){p->rank, a->prev});
    }
    if (a->next >= 0) {
      const merge_ent *q = merge_get(t, a->id, s[a->next].id);
      if (q) heap_push(h, &nh, (heap_ent){q->rank, top.pos});
    }
  }
  for (int32_t i = 0; i >= 0; i = s[i].next)
    emit(c, s[i].id);
}

static void bpe_piece(enc_ctx *c, const char *p, size_t n) {
  const tok_tokenizer *t = c->t;
  if (t->ignore_merges) {
    if (!tok_grow((void **)&c->bl, &c->bl_cap, 2 * n, 1)) {
      c->oom = true;
      return;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      k += put_utf8(c->bl + k, byte_to_cp((uint8_t)p[i]));
    int32_t id = vmap_get(t, c->bl, k);
    if (id >= 0) {
      emit(c, id);
      return;
    }
  }
  if (n <= SMALL_PIECE) {
    int32_t id = wmap_get(t, p, n);
    if (id >= 0) {
      emit(c, id);
      return;
    }
  }
  if (!tok_grow((void **)&c->syms, &c->syms_cap, n, sizeof *c->syms)) {
    c->oom = true;
    return;
  }
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t id = t->byte_id[(uint8_t)p[i]];
    if (id < 0) id = t->unk_id; /* HF drops a symbol missing from the vocab when there is no unk */
    if (id >= 0) c->syms[m++].id = id;
  }
  if (m <= SMALL_PIECE) {
    int32_t v[SMALL_PIECE];
    for (size_t i = 0; i < m; i++)
      v[i] = c->syms[i].id;
    m = merge_small(t, v, m);
    for (size_t i = 0; i < m; i++)
      emit(c, v[i]);
    return;
  }
  /* the heap holds the initial pairs plus at most 2 entries per merge */
  if (!tok_grow((void **)&c->heap, &c->heap_cap, 3 * m, sizeof *c->heap)) {
    c->oom = true;
    return;
  }
  merge_heap(c, m);
}

static int match_re(enc_ctx *c, const tok_stage *st, const char *s, size_t n, size_t off) {
  int rc = st->jit ? pcre2_jit_match(st->re, (PCRE2_SPTR)s, n, off, 0, c->md, NULL)
                   : pcre2_match(st->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, c->md, NULL);
  /* a JIT stack overflow on a very long run: the interpreter keeps its frames on the heap */
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
    rc = pcre2_match(st->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, c->md, NULL);
  return rc;
}

static void pretok(enc_ctx *c, int k, const char *s, size_t n) {
  if (n == 0 || c->oom) return;
  const tok_tokenizer *t = c->t;
  if (k == t->n_stages) {
    bpe_piece(c, s, n);
    return;
  }
  const tok_stage *st = &t->stages[k];
  if (st->prefix_space && s[0] != ' ') {
    if (!tok_grow((void **)&c->pfx[k], &c->pfx_cap[k], n + 1, 1)) {
      c->oom = true;
      return;
    }
    c->pfx[k][0] = ' ';
    memcpy(c->pfx[k] + 1, s, n);
    s = c->pfx[k], n++;
  }
  if (!st->re) {
    pretok(c, k + 1, s, n);
    return;
  }
  size_t pos = 0, off = 0;
  while (off < n) {
    int rc = match_re(c, st, s, n, off);
    if (rc < 0) break; /* no match (or a matcher error): the rest is one piece */
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    size_t a = ov[0], b = ov[1];
    if (a > pos) pretok(c, k + 1, s + pos, a - pos);
    if (b > a) {
      pretok(c, k + 1, s + a, b - a);
      pos = off = b;
    } else { /* empty match: step one character */
      off = a + 1;
      while (off < n && ((uint8_t)s[off] & 0xC0) == 0x80)
        off++;
    }
  }
  if (pos < n) pretok(c, k + 1, s + pos, n - pos);
}

static bool is_space_at(const char *s, size_t n, size_t i, size_t *len) {
  utf8proc_int32_t cp;
  utf8proc_ssize_t k =
      utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
  if (k <= 0) return false;
  *len = (size_t)k;
  return (cp >= 9 && cp <= 13) || cp == ' ' || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

static bool is_word_byte(uint8_t b) {
  return b >= 0x80 || b == '_' || (b >= '0' && b <= '9') || ((b | 32) >= 'a' && (b | 32) <= 'z');
}

/* Leftmost, then longest added token in s[from..n) with the given
 * normalized flag. On a match, [*ms, *me) covers it with any lstrip/rstrip
 * whitespace. */
static bool find_added(const enc_ctx *c, const char *s, size_t n, size_t from, bool normalized,
                       size_t *ms, size_t *me, int32_t *id) {
  const tok_tokenizer *t = c->t;
  for (size_t p = from; p < n; p++) {
    uint8_t f = (uint8_t)s[p];
    for (uint32_t i = t->first_lo[f]; i < t->first_hi[f]; i++) {
      const tok_added *a = &t->added[i];
      if (a->normalized != normalized || (a->special && !c->parse_special)) continue;
      if (a->len > n - p || memcmp(s + p, t->sym + a->off, a->len) != 0) continue;
      size_t st = p, en = p + a->len, k;
      if (a->single_word && ((st > 0 && is_word_byte((uint8_t)s[st - 1])) ||
                             (en < n && is_word_byte((uint8_t)s[en]))))
        continue;
      if (a->lstrip)
        while (st > from) {
          size_t q = st - 1;
          while (q > from && ((uint8_t)s[q] & 0xC0) == 0x80)
            q--;
          if (!is_space_at(s, n, q, &k)) break;
          st = q;
        }
      if (a->rstrip)
        while (en < n && is_space_at(s, n, en, &k))
          en += k;
      *ms = st, *me = en, *id = a->id;
      return true;
    }
  }
  return false;
}

/* Cut added tokens out of s; the gaps go on to pre-tokenization
 * (normalized pass) or to normalization (raw pass). */
static void split_added(enc_ctx *c, const char *s, size_t n, bool normalized);

static void normalize_gap(enc_ctx *c, const char *s, size_t n) {
  if (n == 0 || c->oom) return;
  if (c->t->nfc) {
    int r = tok_nfc(c->t->nfc_changes, c->t->n_nfc_changes, s, n, &c->norm);
    if (r < 0) {
      c->oom = true;
      return;
    }
    if (r) s = c->norm.p, n = c->norm.n;
  }
  if (c->t->has_normalized_added)
    split_added(c, s, n, true);
  else
    pretok(c, 0, s, n);
}

static void split_added(enc_ctx *c, const char *s, size_t n, bool normalized) {
  size_t pos = 0, ms, me;
  int32_t id;
  while (pos < n && c->t->n_added && find_added(c, s, n, pos, normalized, &ms, &me, &id)) {
    if (normalized)
      pretok(c, 0, s + pos, ms - pos);
    else
      normalize_gap(c, s + pos, ms - pos);
    emit(c, id);
    pos = me;
  }
  if (normalized)
    pretok(c, 0, s + pos, n - pos);
  else
    normalize_gap(c, s + pos, n - pos);
}

bl_status tok_encode(const tok_tokenizer *t, const char *text, size_t len, bool parse_special,
                     int32_t **ids, size_t *n_ids, bl_err *err) {
  *ids = NULL, *n_ids = 0;
  size_t bad = tok_utf8_valid_prefix((const uint8_t *)text, len);
  if (bad != len)
    return bl_fail(err, BL_EINVAL, "tok_encode: invalid UTF-8 at byte %zu of %zu", bad, len);
  enc_ctx c = {.t = t, .parse_special = parse_special};
  c.md = pcre2_match_data_create(1, NULL);
  if (!c.md || !tok_grow((void **)&c.ids, &c.cap, len / 3 + 16, sizeof *c.ids)) c.oom = true;
  if (!c.oom) split_added(&c, text, len, false);
  pcre2_match_data_free(c.md);
  free(c.syms), free(c.heap), free(c.bl), free(c.norm.p);
  for (int k = 0; k < TOK_MAX_STAGES; k++)
    free(c.pfx[k]);
  if (c.oom) {
    free(c.ids);
    return bl_fail(err, BL_ENOMEM, "tok_encode: out of memory (%zu bytes of text)", len);
  }
  *ids = c.ids, *n_ids = c.n;
  return BL_OK;
}

/* ---- decode ---- */

const char *tok_token_bytes(const tok_tokenizer *t, int32_t id, size_t *len) {
  if (id < 0 || id >= t->n_vocab || !(t->flags[id] & TF_PRESENT)) return NULL;
  *len = t->raw_off[id + 1] - t->raw_off[id];
  return t->raw + t->raw_off[id];
}

char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
  size_t total = 0, k;
  for (size_t i = 0; i < n; i++)
    if (tok_token_bytes(t, ids[i], &k)) total += k;
  char *out = malloc(total + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    const char *b = tok_token_bytes(t, ids[i], &k);
    if (b) memcpy(out + o, b, k), o += k;
  }
  out[o] = 0;
  if (len) *len = o;
  return out;
}

int32_t tok_vocab_size(const tok_tokenizer *t) { return t->n_vocab; }
int32_t tok_eos_id(const tok_tokenizer *t) { return t->eos_id; }
int32_t tok_bos_id(const tok_tokenizer *t) { return t->bos_id; }

int32_t tok_find(const tok_tokenizer *t, const char *token) {
  return vmap_get(t, token, strlen(token));
}

bool tok_is_special(const tok_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab && (t->flags[id] & TF_SPECIAL);
}

const char *tok_chat_template(const tok_tokenizer *t) { return t->chat_template; }
