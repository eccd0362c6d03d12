/* Private to the tokenizer (tokenizer.c, tok_load.c, tok_utf8.c): the
 * description both front ends (tokenizer.json, GGUF arrays) reduce to before
 * tok_build_spec builds the tables, the byte-level alphabet, and the UTF-8 /
 * NFC helpers. Spec strings are (pointer, length), not NUL-terminated, and
 * only borrowed for the duration of the call. */
#ifndef TOK_INTERNAL_H
#define TOK_INTERNAL_H

#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

#define TOK_MAX_STAGES 8

typedef struct tok_str {
  const char *s;
  size_t n;
} tok_str;

/* A token matched whole in the text before pre-tokenization. */
typedef struct tok_added_spec {
  int32_t id;
  tok_str content;
  bool special;    /* skipped when the caller encodes with parse_special = false */
  bool normalized; /* matched in normalized text (else in the raw text) */
  bool lstrip, rstrip, single_word;
} tok_added_spec;

/* One pre-tokenizer split (HF behaviour "Isolated": matches and the gaps
 * between them both become pieces). pattern.s == NULL: no split. */
typedef struct tok_stage_spec {
  tok_str pattern;
  bool literal;      /* pattern is a plain string, not a regex */
  bool prefix_space; /* ByteLevel add_prefix_space: prepend ' ' to each piece first */
} tok_stage_spec;

typedef struct tok_spec {
  const char *origin; /* file name, for error messages */
  /* Vocabulary: n_vocab entries (id, byte-level symbol string). */
  int32_t n_vocab;
  const int32_t *vocab_ids;
  const tok_str *vocab;
  /* Merges, best (rank 0) first: left and right symbol strings. */
  int32_t n_merges;
  const tok_str *merge_left, *merge_right;
  int32_t n_added;
  const tok_added_spec *added;
  int32_t n_stages;
  tok_stage_spec stages[TOK_MAX_STAGES];
  bool nfc;
  bool ignore_merges;             /* look a whole piece up in the vocab before merging */
  int32_t unk_id, bos_id, eos_id; /* -1 when absent */
  tok_str chat_template;          /* Jinja source; s == NULL: none */
} tok_spec;

/* Byte-level alphabet (GPT-2 bytes_to_unicode): printable bytes stand for
 * themselves; the 68 others (0x00-0x20, 0x7F-0xA0, 0xAD) map in order to
 * U+0100..U+0143. */
static inline uint32_t byte_to_cp(int b) {
  if (b <= 0x20) return 256u + (uint32_t)b;
  if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (uint32_t)(b - 0x7F);
  if (b == 0xAD) return 256u + 67u;
  return (uint32_t)b;
}

/* Code point -> byte, or -1 when cp is outside the alphabet. */
static inline int cp_to_byte(uint32_t cp) {
  if (cp < 256) return byte_to_cp((int)cp) == cp ? (int)cp : -1;
  uint32_t r = cp - 256;
  return r < 33 ? (int)r : r < 67 ? (int)(0x7F + r - 33) : r == 67 ? 0xAD : -1;
}

/* UTF-8 of a code point below U+0800 (the alphabet's range); returns its length. */
static inline size_t put_utf8(char *o, uint32_t cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  o[0] = (char)(0xC0 | cp >> 6);
  o[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

/* Grow *p (cap elements of elem bytes) by doubling to hold need. */
static inline bool tok_grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 64;
  while (c < need)
    c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

typedef struct tok_buf {
  char *p;
  size_t n, cap;
} tok_buf;

/* tok_utf8.c */
/* Length of the valid UTF-8 prefix of s (n when all of it is valid). */
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n);
/* Sorted code points that NFC alters on their own; NULL when out of memory. */
uint32_t *tok_nfc_changing_cps(size_t *n);
/* NFC of valid UTF-8 s[0..n): 0 when s is already NFC, 1 when out holds
 * it (out->n reset first), -1 when out of memory. */
int tok_nfc(const uint32_t *changes, size_t n_changes, const char *s, size_t n, tok_buf *out);

bl_status tok_build_spec(const tok_spec *spec, tok_tokenizer **out, bl_err *err);

/* Pre-tokenizer regexes (tok_load.c): GPT-2's (HF ByteLevel use_regex),
 * Qwen2/3's and Llama 3's, as their tokenizer.json files spell them. */
extern const char tok_re_gpt2[], tok_re_qwen2[], tok_re_llama3[];

#endif
