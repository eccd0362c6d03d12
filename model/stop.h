/* Stop conditions of one request and the text stream that applies them.
 *
 * A stop_set holds the request's stop token ids and stop strings plus the
 * model's end-of-sequence ids (left out with ignore_eos). A stop_stream
 * decodes generated tokens with tok_stream and checks them:
 *  - an EOS id or a stop id ends generation; its text is not emitted;
 *  - a stop string ends generation where it first completes; the output
 *    ends right before it (vLLM's include_stop_str_in_output=false), even
 *    when it spans several tokens or sits inside multi-byte characters. When
 *    several complete on the same token, the one that starts first wins
 *    (vLLM takes the first listed); ties go to the first listed.
 * Invariants: released text never contains a stop string; the held text is
 * the longest tail that is a proper prefix of some stop string (so it is
 * released as soon as it cannot start one); only complete UTF-8 characters
 * are released (tok_stream holds split characters, stop strings are valid
 * UTF-8, so a held tail always starts on a character boundary). */
#ifndef STOP_H
#define STOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"
#include "tokenizer.h"

#define STOP_MAX_IDS     64
#define STOP_MAX_STRS    32
#define STOP_MAX_STR_LEN 512 /* bytes */

typedef struct stop_set {
  int32_t ids[STOP_MAX_IDS]; /* request stop token ids */
  int32_t n_ids;
  int32_t eos[STOP_MAX_IDS]; /* the model's end ids */
  int32_t n_eos;
  char *strs[STOP_MAX_STRS]; /* malloc'd copies, NUL-terminated */
  size_t lens[STOP_MAX_STRS];
  int32_t n_strs;
  size_t max_len; /* longest stop string */
} stop_set;

void stop_set_init(stop_set *s);
void stop_set_free(stop_set *s);
/* Errors (BL_EINVAL / BL_ERANGE) say what is wrong: empty or invalid UTF-8
 * string, too long, too many. Adding a duplicate is a no-op. */
bl_status stop_set_add_id(stop_set *s, int32_t id, bl_err *err);
bl_status stop_set_add_eos(stop_set *s, int32_t id, bl_err *err);
bl_status stop_set_add_str(stop_set *s, const char *str, size_t len, bl_err *err);
/* dst = src's request ids and strings (not its EOS ids); src may be NULL. */
bl_status stop_set_copy(stop_set *dst, const stop_set *src, bl_err *err);

typedef enum stop_kind {
  STOP_NONE = 0, /* still running */
  STOP_EOS,      /* the model's end token */
  STOP_TOKEN,    /* a request stop id: hit.token */
  STOP_STRING,   /* a stop string: hit.str indexes stop_set.strs */
} stop_kind;

typedef struct stop_hit {
  stop_kind kind;
  int32_t token; /* STOP_EOS, STOP_TOKEN */
  int32_t str;   /* STOP_STRING */
} stop_hit;

typedef struct stop_stream {
  tok_stream ts;
  char *hold; /* decoded, not yet released: a possible stop-string start */
  size_t n_hold, cap_hold;
  stop_hit hit; /* set once generation must end; later pushes do nothing */
} stop_stream;

void stop_stream_init(stop_stream *s);
void stop_stream_free(stop_stream *s);

/* Feed one generated token. Text that can no longer be part of a stop string
 * is appended to *out (malloc-grown: *len, *cap, NUL-terminated). After a
 * stop (s->hit.kind != STOP_NONE) everything left has been released. tok may
 * be NULL when set has no stop strings (ids only; no text). */
bl_status stop_stream_push(stop_stream *s, const stop_set *set, const tok_tokenizer *tok,
                           int32_t id, char **out, size_t *len, size_t *cap);

/* End without a stop (e.g. max tokens): flush a split character (as U+FFFD)
 * and release the held text, unless that completes a stop string. */
bl_status stop_stream_finish(stop_stream *s, const stop_set *set, char **out, size_t *len,
                             size_t *cap);

#endif
