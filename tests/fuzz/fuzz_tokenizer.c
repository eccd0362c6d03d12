/* libFuzzer target for the tokenizer (model/tokenizer.c, tok_utf8.c) with
 * Qwen3's real tokenizer.json (path in $BALLAST_QWEN3_TOKENIZER).
 *
 * Byte 0 picks the mode, the rest is the payload:
 * - encode (bit 1 clear): the payload is text. Invalid UTF-8 must be refused
 *   with BL_EINVAL and valid UTF-8 accepted. For accepted text every id is
 *   in the vocabulary, decoding gives valid UTF-8 (byte-level BPE is
 *   lossless up to NFC), re-encoding that decode gives the same ids (NFC is
 *   idempotent), and the streaming detokenizer fed one id at a time emits
 *   exactly the same bytes. Bit 0 is parse_special.
 * - decode (bit 1 set): the payload is little-endian int32 ids, folded into
 *   [-2, vocab + 2) so out-of-range ids are exercised. The streaming
 *   detokenizer must refuse bad ids and otherwise only ever emit valid UTF-8,
 *   equal to the bulk decode whenever that is valid UTF-8. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"
#include "tokenizer.h"

static tok_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *path = getenv("BALLAST_QWEN3_TOKENIZER");
  bl_err err = {0};
  if (!path || tok_load_json(path, &tok, &err)) {
    fprintf(stderr, "fuzz_tokenizer: set BALLAST_QWEN3_TOKENIZER to Qwen3's tokenizer.json (%s)\n",
            err.msg);
    exit(1);
  }
  return 0;
}

static void stream_all(const int32_t *ids, size_t n, char **buf, size_t *len, bool *refused) {
  tok_stream s = {0};
  size_t cap = 0;
  *buf = NULL;
  *len = 0;
  *refused = false;
  for (size_t i = 0; i < n; i++) {
    bl_status st = tok_stream_push(&s, tok, ids[i], buf, len, &cap);
    if (st == BL_EINVAL)
      *refused = true;
    else if (st)
      abort();
  }
  if (tok_stream_flush(&s, buf, len, &cap)) abort();
  if (tok_utf8_valid_prefix((const uint8_t *)*buf, *len) != *len) abort();
}

static void check_encode(const char *text, size_t n, bool special) {
  int32_t *ids = NULL, *again = NULL;
  size_t n_ids = 0, n_again = 0;
  bl_err err = {0};
  bl_status st = tok_encode(tok, text, n, special, &ids, &n_ids, &err);
  bool valid = tok_utf8_valid_prefix((const uint8_t *)text, n) == n;
  if (st == BL_EINVAL && !valid) return;
  if (st != BL_OK || !valid) abort();
  for (size_t i = 0; i < n_ids; i++)
    if (ids[i] < 0 || ids[i] >= tok_vocab_size(tok)) abort();
  size_t dlen, slen;
  char *dec = tok_decode(tok, ids, n_ids, &dlen), *streamed;
  bool refused;
  if (!dec || tok_utf8_valid_prefix((const uint8_t *)dec, dlen) != dlen) abort();
  stream_all(ids, n_ids, &streamed, &slen, &refused);
  if (refused || slen != dlen || memcmp(streamed, dec, dlen) != 0) abort();
  if (tok_encode(tok, dec, dlen, special, &again, &n_again, &err) != BL_OK) abort();
  if (n_again != n_ids || memcmp(again, ids, n_ids * sizeof *ids) != 0) abort();
  free(ids);
  free(again);
  free(dec);
  free(streamed);
}

static void check_decode(const uint8_t *p, size_t n) {
  size_t n_ids = n / 4;
  int32_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
  uint32_t range = (uint32_t)tok_vocab_size(tok) + 4;
  for (size_t i = 0; i < n_ids; i++) {
    uint32_t v = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                 (uint32_t)p[4 * i + 3] << 24;
    ids[i] = (int32_t)(v % range) - 2;
  }
  size_t dlen, slen;
  char *dec = tok_decode(tok, ids, n_ids, &dlen), *streamed;
  bool refused;
  if (!dec) abort();
  stream_all(ids, n_ids, &streamed, &slen, &refused);
  bool dec_valid = tok_utf8_valid_prefix((const uint8_t *)dec, dlen) == dlen;
  if (!refused && dec_valid && (slen != dlen || memcmp(streamed, dec, dlen) != 0)) abort();
  free(ids);
  free(dec);
  free(streamed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 2)
    check_decode(data + 1, size - 1);
  else
    check_encode((const char *)data + 1, size - 1, data[0] & 1);
  return 0;
}
