/* UTF-8 text handling for the tokenizer: validation, NFC (only the spans
 * that need it go through utf8proc), and the streaming decoder, which emits
 * only whole UTF-8 sequences and turns invalid bytes into U+FFFD exactly as
 * Rust's String::from_utf8_lossy (HF's decode) does. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* Length of the valid UTF-8 prefix of s (== n when all valid). */
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
      k = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
      k = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else
      return i;
    if (i + k >= n) return i; /* truncated */
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t j = 2; j <= k; j++)
      if ((s[i + j] & 0xC0) != 0x80) return i;
    i += k + 1;
  }
  return n;
}

/* Code points with a canonical decomposition that NFC does not restore
 * (singletons such as U+037E -> ';', CJK compatibility ideographs, composition
 * exclusions). Sorted; *n set. */
uint32_t *tok_nfc_changing_cps(size_t *n) {
  size_t cap = 4096;
  uint32_t *v = malloc(cap * sizeof *v);
  *n = 0;
  for (utf8proc_int32_t cp = 0xA0; v && cp < 0x110000; cp++) {
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    if (p->decomp_seqindex == UINT16_MAX || p->decomp_type != 0) continue;
    utf8proc_int32_t out[8];
    int opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t k = utf8proc_decompose_char(cp, out, 8, (utf8proc_option_t)opt, NULL);
    if (k > 0 && k <= 8) k = utf8proc_normalize_utf32(out, k, (utf8proc_option_t)opt);
    if (k == 1 && out[0] == cp) continue; /* a precomposed letter NFC keeps, like U+00E9 */
    if (*n == cap) {
      uint32_t *w = realloc(v, (cap *= 2) * sizeof *v);
      if (!w) break;
      v = w;
    }
    v[(*n)++] = (uint32_t)cp;
  }
  return v;
}

static bool in_sorted(const uint32_t *v, size_t n, uint32_t x) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (v[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && v[lo] == x;
}

/* The character at s[i] (k bytes, set) does not start an NFC boundary: NFC
 * alters it alone, it is a non-starter, or it may combine with its
 * predecessor. Everything below U+0300 (lead byte < 0xCC) is a boundary. */
static bool nfc_unsafe_at(const uint32_t *changes, size_t n_changes, const char *s, size_t n,
                          size_t i, size_t *k) {
  if ((uint8_t)s[i] < 0xCC) { /* ASCII, or a 2-byte lead below U+0300 */
    *k = (uint8_t)s[i] < 0x80 ? 1 : 2;
    return false;
  }
  utf8proc_int32_t cp;
  utf8proc_ssize_t len =
      utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
  *k = len > 0 ? (size_t)len : 1;
  if (len <= 0) return true;
  const utf8proc_property_t *p = utf8proc_get_property(cp);
  if (p->combining_class != 0 || (p->comb_index != UINT16_MAX && (p->comb_index & 0x8000)))
    return true;
  if (cp >= 0x1100 && cp <= 0x11FF) return true; /* conjoining jamo */
  return p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0 &&
         in_sorted(changes, n_changes, (uint32_t)cp);
}

static bool append(tok_buf *b, const char *s, size_t n) {
  if (n == 0) return true;
  if (!tok_grow((void **)&b->p, &b->cap, b->n + n, 1)) return false;
  memcpy(b->p + b->n, s, n);
  b->n += n;
  return true;
}

/* Only the spans around characters that are not boundaries go through
 * utf8proc: from the last boundary before such a character to the next
 * boundary after it; the rest is copied. */
int tok_nfc(const uint32_t *changes, size_t n_changes, const char *s, size_t n, tok_buf *out) {
  size_t i = 0, k, last_safe = 0, copied = 0;
  out->n = 0;
  while (i < n) {
    if (!nfc_unsafe_at(changes, n_changes, s, n, i, &k)) {
      last_safe = i;
      i += k;
      continue;
    }
    size_t b = last_safe > copied ? last_safe : copied, e = i + k;
    while (e < n && nfc_unsafe_at(changes, n_changes, s, n, e, &k))
      e += k;
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s + b, (utf8proc_ssize_t)(e - b),
                                      &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    bool ok =
        m >= 0 && append(out, s + copied, b - copied) && append(out, (const char *)norm, (size_t)m);
    free(norm);
    if (!ok) return -1; /* utf8proc fails on valid UTF-8 only for memory */
    copied = last_safe = i = e;
  }
  if (copied == 0) return 0;
  return append(out, s + copied, n - copied) ? 1 : -1;
}

/* ---- streaming decode ---- */

static const char REPL[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* Append pending + bytes to out, lossy like Rust's from_utf8_lossy (one
 * U+FFFD per maximal invalid subpart), keeping an incomplete valid tail in
 * s->pending. */
static void stream_feed(tok_stream *s, const char *b, size_t n, char *out, size_t *o) {
  char tmp[16];
  size_t np = s->n_pending, total = np + n;
  memcpy(tmp, s->pending, np);
  s->n_pending = 0;
#define AT(i) ((uint8_t)((i) < np ? tmp[(i)] : b[(i)-np]))
  size_t i = 0;
  while (i < total) {
    uint8_t c = AT(i);
    if (c < 0x80) {
      out[(*o)++] = (char)c, i++;
      continue;
    }
    size_t k;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
      k = 1;
    else if (c >= 0xE0 && c <= 0xEF)
      k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
      k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else {
      memcpy(out + *o, REPL, 3), *o += 3, i++;
      continue;
    }
    size_t j = 1;
    for (; j <= k && i + j < total; j++) {
      uint8_t d = AT(i + j);
      if (j == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) break;
    }
    if (j > k) {
      for (size_t q = 0; q <= k; q++)
        out[(*o)++] = (char)AT(i + q);
      i += k + 1;
    } else if (i + j == total) { /* valid so far, cut by the end: wait for more */
      for (size_t q = 0; q < j; q++)
        s->pending[q] = (char)AT(i + q);
      s->n_pending = j;
      i = total;
    } else {
      memcpy(out + *o, REPL, 3), *o += 3, i += j;
    }
  }
#undef AT
}

bl_status tok_stream_push(tok_stream *s, const tok_tokenizer *t, int32_t id, char **buf,
                          size_t *len, size_t *cap) {
  size_t n;
  const char *b = tok_token_bytes(t, id, &n);
  if (!b) return bl_fail(NULL, BL_EINVAL, "tok_stream_push: token id %d out of range", id);
  if (!tok_grow((void **)buf, cap, *len + 3 * (n + s->n_pending) + 1, 1)) return BL_ENOMEM;
  stream_feed(s, b, n, *buf, len);
  return BL_OK;
}

bl_status tok_stream_flush(tok_stream *s, char **buf, size_t *len, size_t *cap) {
  if (!tok_grow((void **)buf, cap, *len + 4, 1)) return BL_ENOMEM;
  if (s->n_pending) { /* an incomplete sequence at the end is one U+FFFD */
    memcpy(*buf + *len, REPL, 3);
    *len += 3;
  }
  s->n_pending = 0;
  return BL_OK;
}
