/* Byte-level BPE tokenizer (GPT-2 family: Qwen2/Qwen3, SmolLM2).
 *
 * Built from a Hugging Face tokenizer.json or from vocabulary arrays (GGUF
 * metadata). Encoding: added/special tokens are matched whole first, the rest
 * is NFC-normalized (when the tokenizer asks for it), split by the
 * pre-tokenizer regex (PCRE2, UTF + UCP), mapped to byte-level symbols and
 * merged by rank. Decoding maps symbols back to bytes. Thread-safe after
 * build: encode and decode never mutate the tokenizer. */
#ifndef TOK_TOKENIZER_H
#define TOK_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

typedef struct tok_tokenizer tok_tokenizer;

/* GGUF token types (tokenizer.ggml.token_type). */
enum {
  TOK_NORMAL = 1,
  TOK_UNKNOWN = 2,
  TOK_CONTROL = 3,
  TOK_USER = 4,
  TOK_UNUSED = 5,
  TOK_BYTE = 6
};

/* Vocabulary as GGUF stores it. Strings are byte-level symbols as in the
 * vocab (not raw bytes), each with its length (not NUL-terminated). */
typedef struct tok_vocab_src {
  int32_t n_tokens;
  const char *const *tokens;
  const size_t *token_lens;
  const int32_t *token_types; /* may be NULL: all TOK_NORMAL */
  int32_t n_merges;
  const char *const *merges; /* "left right" */
  const size_t *merge_lens;
  const char *pre;        /* tokenizer.ggml.pre: "qwen2", "smollm", "gpt2", ... */
  int32_t bos_id, eos_id; /* -1 when absent */
  /* tokenizer.chat_template (Jinja source), chat_template_len bytes; NULL: none */
  const char *chat_template;
  size_t chat_template_len;
} tok_vocab_src;

bl_status tok_load_json(const char *path, tok_tokenizer **out, bl_err *err);
bl_status tok_build(const tok_vocab_src *src, tok_tokenizer **out, bl_err *err);
void tok_free(tok_tokenizer *t);

/* Encode len bytes of UTF-8 text. parse_special: match added/special tokens
 * in the text (as HF does by default); false encodes the text of special
 * tokens as plain text (HF's encode_special_tokens), while non-special added
 * tokens such as Qwen's <think> are still matched whole. Invalid UTF-8 is
 * BL_EINVAL. *ids is malloc'd; the caller frees it. */
bl_status tok_encode(const tok_tokenizer *t, const char *text, size_t len, bool parse_special,
                     int32_t **ids, size_t *n_ids, bl_err *err);

/* Raw bytes of one token (byte-level symbols mapped back); NULL for ids out
 * of range. */
const char *tok_token_bytes(const tok_tokenizer *t, int32_t id, size_t *len);
/* Decode ids to malloc'd, NUL-terminated bytes (may hold invalid UTF-8 if the
 * ids split a character; the streaming decoder below never emits such). */
char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, size_t *len);

int32_t tok_vocab_size(const tok_tokenizer *t);
/* Id of a token given as its vocab string (e.g. "<|im_end|>"), or -1. */
int32_t tok_find(const tok_tokenizer *t, const char *token);
int32_t tok_eos_id(const tok_tokenizer *t);
int32_t tok_bos_id(const tok_tokenizer *t);
bool tok_is_special(const tok_tokenizer *t, int32_t id);
/* The Jinja chat template the tokenizer came with (chat_template.jinja or
 * tokenizer_config.json's chat_template beside tokenizer.json, or GGUF
 * tokenizer.chat_template), NUL-terminated; NULL when none. See chat.h. */
const char *tok_chat_template(const tok_tokenizer *t);

/* Streaming detokenizer: push ids one at a time, receive only complete UTF-8
 * sequences; flush at the end returns whatever is left (replacing an
 * incomplete tail with U+FFFD, as HF decode does). */
typedef struct tok_stream {
  char pending[8];
  size_t n_pending;
} tok_stream;

/* Append the bytes ready after id to *buf (malloc-grown; *len, *cap). */
bl_status tok_stream_push(tok_stream *s, const tok_tokenizer *t, int32_t id, char **buf,
                          size_t *len, size_t *cap);
bl_status tok_stream_flush(tok_stream *s, char **buf, size_t *len, size_t *cap);

#endif
