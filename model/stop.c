/* Stop token ids and stop strings over the streamed text (see stop.h).
 * Per token the held text is at most the longest stop string plus one
 * token's bytes; matching is a plain search over it, which is cheap for the
 * few short stop strings requests carry. */
#include "stop.h"

#include <stdlib.h>
#include <string.h>

void stop_set_init(stop_set *s) { memset(s, 0, sizeof *s); }

void stop_set_free(stop_set *s) {
  for (int32_t i = 0; i < s->n_strs; i++)
    free(s->strs[i]);
  memset(s, 0, sizeof *s);
}

bl_status stop_set_copy(stop_set *dst, const stop_set *src, bl_err *err) {
  stop_set_init(dst);
  bl_status st = BL_OK;
  for (int32_t i = 0; !st && src && i < src->n_ids; i++)
    st = stop_set_add_id(dst, src->ids[i], err);
  for (int32_t i = 0; !st && src && i < src->n_strs; i++)
    st = stop_set_add_str(dst, src->strs[i], src->lens[i], err);
  return st;
}

static bool has_id(const int32_t *ids, int32_t n, int32_t id) {
  for (int32_t i = 0; i < n; i++)
    if (ids[i] == id) return true;
  return false;
}

static bl_status add_id(int32_t *ids, int32_t *n, int32_t id, const char *what, bl_err *err) {
  if (id < 0) return bl_fail(err, BL_EINVAL, "%s %d: token ids are >= 0", what, id);
  if (has_id(ids, *n, id)) return BL_OK;
  if (*n >= STOP_MAX_IDS) return bl_fail(err, BL_ERANGE, "more than %d %ss", STOP_MAX_IDS, what);
  ids[(*n)++] = id;
  return BL_OK;
}

bl_status stop_set_add_id(stop_set *s, int32_t id, bl_err *err) {
  return add_id(s->ids, &s->n_ids, id, "stop token id", err);
}

bl_status stop_set_add_eos(stop_set *s, int32_t id, bl_err *err) {
  return add_id(s->eos, &s->n_eos, id, "end-of-sequence id", err);
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static bool utf8_valid(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = p[i];
    size_t k;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
      k = 0;
    else if (c >= 0xC2 && c <= 0xDF)
      k = 1;
    else if (c >= 0xE0 && c <= 0xEF)
      k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
      k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
      return false;
    if (k && i + k >= n) return false; /* cut short */
    for (size_t j = 1; j <= k; j++) {
      unsigned d = p[i + j];
      if (j == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) return false;
    }
    i += k + 1;
  }
  return true;
}

bl_status stop_set_add_str(stop_set *s, const char *str, size_t len, bl_err *err) {
  if (len == 0) return bl_fail(err, BL_EINVAL, "stop strings must not be empty");
  if (len > STOP_MAX_STR_LEN)
    return bl_fail(err, BL_ERANGE, "stop string of %zu bytes: at most %d", len, STOP_MAX_STR_LEN);
  if (!utf8_valid((const unsigned char *)str, len))
    return bl_fail(err, BL_EINVAL, "stop string is not valid UTF-8");
  for (int32_t i = 0; i < s->n_strs; i++)
    if (s->lens[i] == len && memcmp(s->strs[i], str, len) == 0) return BL_OK;
  if (s->n_strs >= STOP_MAX_STRS)
    return bl_fail(err, BL_ERANGE, "more than %d stop strings", STOP_MAX_STRS);
  char *c = malloc(len + 1);
  if (!c) return bl_fail(err, BL_ENOMEM, "out of memory");
  memcpy(c, str, len);
  c[len] = 0;
  s->strs[s->n_strs] = c;
  s->lens[s->n_strs++] = len;
  if (len > s->max_len) s->max_len = len;
  return BL_OK;
}

void stop_stream_init(stop_stream *s) { memset(s, 0, sizeof *s); }

void stop_stream_free(stop_stream *s) {
  free(s->hold);
  memset(s, 0, sizeof *s);
}

/* Append p[0..n) to *out, keeping it NUL-terminated. */
static bl_status emit(char **out, size_t *len, size_t *cap, const char *p, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 64;
    while (c < *len + n + 1)
      c *= 2;
    char *b = realloc(*out, c);
    if (!b) return BL_ENOMEM;
    *out = b;
    *cap = c;
  }
  if (n) memcpy(*out + *len, p, n);
  *len += n;
  (*out)[*len] = 0;
  return BL_OK;
}

/* Earliest stop string in h[0..n) (ties: the first listed); -1 if none. */
static int32_t find_stop(const stop_set *set, const char *h, size_t n, size_t *at) {
  int32_t best = -1;
  for (int32_t i = 0; i < set->n_strs; i++) {
    const char *f = memmem(h, n, set->strs[i], set->lens[i]);
    if (f && (best < 0 || (size_t)(f - h) < *at)) {
      best = i;
      *at = (size_t)(f - h);
    }
  }
  return best;
}

/* Length of the longest tail of h[0..n) that is a proper prefix of a stop
 * string: text that may still become one. */
static size_t tail_to_hold(const stop_set *set, const char *h, size_t n) {
  size_t l = set->max_len ? set->max_len - 1 : 0;
  for (l = l < n ? l : n; l > 0; l--)
    for (int32_t i = 0; i < set->n_strs; i++)
      if (set->lens[i] > l && memcmp(h + n - l, set->strs[i], l) == 0) return l;
  return 0;
}

/* Check the held text: on a match release what precedes it and stop; else
 * release all but a possible stop-string start (all of it when final). */
static bl_status settle(stop_stream *s, const stop_set *set, bool final, char **out, size_t *len,
                        size_t *cap) {
  size_t at = 0;
  int32_t which = find_stop(set, s->hold, s->n_hold, &at);
  if (which >= 0) {
    s->n_hold = 0;
    s->hit = (stop_hit){.kind = STOP_STRING, .token = -1, .str = which};
    return emit(out, len, cap, s->hold, at);
  }
  size_t keep = final ? 0 : tail_to_hold(set, s->hold, s->n_hold);
  bl_status st = emit(out, len, cap, s->hold, s->n_hold - keep);
  memmove(s->hold, s->hold + s->n_hold - keep, keep);
  s->n_hold = keep;
  return st;
}

bl_status stop_stream_finish(stop_stream *s, const stop_set *set, char **out, size_t *len,
                             size_t *cap) {
  if (s->hit.kind) return BL_OK;
  bl_status st = tok_stream_flush(&s->ts, &s->hold, &s->n_hold, &s->cap_hold);
  if (st) return st;
  return settle(s, set, true, out, len, cap);
}

bl_status stop_stream_push(stop_stream *s, const stop_set *set, const tok_tokenizer *tok,
                           int32_t id, char **out, size_t *len, size_t *cap) {
  if (s->hit.kind) return BL_OK;
  stop_kind end = has_id(set->eos, set->n_eos, id)   ? STOP_EOS
                  : has_id(set->ids, set->n_ids, id) ? STOP_TOKEN
                                                     : STOP_NONE;
  if (end) { /* the end token's text is not part of the output */
    bl_status st = stop_stream_finish(s, set, out, len, cap);
    if (!s->hit.kind) s->hit = (stop_hit){.kind = end, .token = id, .str = -1};
    return st;
  }
  if (!tok) return BL_OK;
  bl_status st = tok_stream_push(&s->ts, tok, id, &s->hold, &s->n_hold, &s->cap_hold);
  if (st) return st;
  return settle(s, set, false, out, len, cap);
}
