/* A byte-level tokenizer for scheduler tests on the tiny Qwen3 (header
 * only, like t.h, whose checks it uses): the 256 bytes as GPT-2 byte
 * symbols, then ChatML's and the think markers, with <|im_end|> as EOS.
 * byte_tokenizer_n covers a whole vocabulary: ids from N_TOK up read
 * "<ID>". */
#ifndef BYTE_TOK_H
#define BYTE_TOK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "t.h"
#include "tokenizer.h"

enum { IM_START = 256, IM_END = 257, THINK = 258, END_THINK = 259, N_TOK = 260 };

/* GPT-2's byte-to-symbol map, as UTF-8. */
static inline void byte_symbol(int b, char *out, size_t *len) {
  int cp;
  if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
    cp = b;
  } else {
    int n = 0;
    for (int c = 0; c < b; c++)
      if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    cp = 256 + n;
  }
  if (cp < 0x80) {
    out[0] = (char)cp;
    *len = 1;
  } else {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    *len = 2;
  }
}

/* n_vocab >= N_TOK ids: ids from N_TOK up read "<ID>", so a real model's
 * output decodes too. */
static inline tok_tokenizer *byte_tokenizer_n(int32_t n_vocab) {
  static char sym[256][4];
  const char **toks = calloc((size_t)n_vocab, sizeof *toks);
  size_t *lens = calloc((size_t)n_vocab, sizeof *lens);
  int32_t *types = calloc((size_t)n_vocab, sizeof *types);
  char *filler = calloc((size_t)n_vocab, 16);
  tok_tokenizer *t = NULL;
  T_CHECK(toks && lens && types && filler);
  if (!toks || !lens || !types || !filler) goto done;
  for (int b = 0; b < 256; b++) {
    byte_symbol(b, sym[b], &lens[b]);
    toks[b] = sym[b];
    types[b] = TOK_NORMAL;
  }
  const char *special[] = {"<|im_start|>", "<|im_end|>", "<think>", "</think>"};
  for (int i = 0; i < 4; i++) {
    toks[256 + i] = special[i];
    lens[256 + i] = strlen(special[i]);
    types[256 + i] = i < 2 ? TOK_CONTROL : TOK_USER;
  }
  for (int32_t i = N_TOK; i < n_vocab; i++) {
    toks[i] = filler + (size_t)i * 16;
    lens[i] = (size_t)snprintf(filler + (size_t)i * 16, 16, "<%d>", i);
    types[i] = TOK_NORMAL;
  }
  tok_vocab_src src = {.n_tokens = n_vocab,
                       .tokens = toks,
                       .token_lens = lens,
                       .token_types = types,
                       .pre = "qwen2",
                       .bos_id = -1,
                       .eos_id = IM_END};
  bl_err err = {0};
  T_CHECKF(tok_build(&src, &t, &err) == BL_OK, "%s", err.msg);
done:
  free(toks);
  free(lens);
  free(types);
  free(filler);
  return t;
}

static inline tok_tokenizer *byte_tokenizer(void) { return byte_tokenizer_n(N_TOK); }

#endif
