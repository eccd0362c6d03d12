/* Chat templates rendered natively (no Jinja engine): a conversation becomes
 * the prompt text, byte for byte what transformers' apply_chat_template(...,
 * tokenize=False) gives with the model's own Jinja template.
 *
 * Three templates are known: Qwen3's (tokenizer_config.json of the Qwen3
 * releases: think-block stripping before the last user query, reasoning
 * content, tool responses, enable_thinking), SmolLM2's (GGUF
 * tokenizer.chat_template: ChatML with a default system prompt) and plain
 * ChatML (the classic Hugging Face ChatML template; llama.cpp's fallback).
 * Tool definitions (transformers' tools=) and tool calls in assistant messages
 * are not rendered: whatever the native code cannot render exactly is
 * refused with BL_EINVAL and a message naming the message index, never
 * rendered differently. tests/data/chat/ holds the reference renderings
 * (tools/ref/make_chat_vectors.py). */
#ifndef CHAT_H
#define CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "bl_status.h"

typedef enum chat_template {
  CHAT_UNKNOWN = 0, /* detection found no template it renders exactly */
  CHAT_QWEN3,
  CHAT_SMOLLM2,
  CHAT_CHATML,
} chat_template;

typedef enum chat_role {
  CHAT_SYSTEM,
  CHAT_USER,
  CHAT_ASSISTANT,
  CHAT_TOOL,
  CHAT_N_ROLES
} chat_role;

/* One message. Strings are UTF-8 with a length (need not be NUL-terminated)
 * and are only borrowed by chat_render. */
typedef struct chat_message {
  chat_role role;
  const char *content; /* required (NULL is refused: every template reads it) */
  size_t content_len;
  const char *reasoning; /* reasoning_content; NULL = absent or null (Qwen3 then reads
                          * <think>...</think> from content); "" is a present, empty one */
  size_t reasoning_len;
} chat_message;

/* All false is transformers' default. */
typedef struct chat_opts {
  bool add_generation_prompt; /* end with the assistant header */
  bool disable_thinking;      /* Qwen3's enable_thinking=False: empty think block after the
                               * generation prompt; other templates ignore it */
  bool continue_final;        /* continue_final_message: end inside the last message, right
                               * after its content (excludes add_generation_prompt) */
} chat_opts;

/* "qwen3" | "smollm2" | "chatml" ("unknown" for CHAT_UNKNOWN). */
const char *chat_template_name(chat_template t);
/* The name of a --chat-template option -> template; anything else is BL_EINVAL. */
bl_status chat_template_parse(const char *name, chat_template *out, bl_err *err);

/* Template of a model from its Jinja source (tokenizer_config.json's
 * chat_template or GGUF tokenizer.chat_template; NULL when the model has
 * none) and architecture (GGUF general.architecture / config.json model_type,
 * e.g. "qwen3", "llama"; may be NULL). A source is recognised only when it is
 * byte for byte a template this file renders; another one gives
 * CHAT_UNKNOWN (the caller then asks for --chat-template). Without a source:
 * CHAT_QWEN3 for arch "qwen3", else CHAT_CHATML (llama.cpp's fallback). */
chat_template chat_template_detect(const char *src, const char *arch);

/* "system" | "user" | "assistant" | "tool"; NULL outside the enum. */
const char *chat_role_name(chat_role r);

/* Render n >= 1 messages (o NULL: all options false). *out is malloc'd and
 * NUL-terminated, *len bytes without the NUL; the caller frees it. Refused
 * (BL_EINVAL, *out NULL): no messages, a role outside the enum, missing
 * content, invalid UTF-8, continue_final with add_generation_prompt, and a
 * final message continue_final cannot find in the rendering (as
 * transformers refuses it). */
bl_status chat_render(chat_template t, const chat_message *msgs, size_t n, const chat_opts *o,
                      char **out, size_t *len, bl_err *err);

/* Parse an OpenAI-style array [{"role": ..., "content": ...}, ...] of len
 * bytes. role: system | user | assistant | tool; content: a string;
 * reasoning: the first non-null of "reasoning_content", "thinking",
 * "reasoning" (transformers' aliases); "tool_calls" must be absent, null or
 * []; other keys (name, tool_call_id, ...) are ignored, as the templates do.
 * *msgs is one malloc'd block holding the messages and copies of their
 * strings (free(*msgs) releases all); errors are BL_EINVAL naming the
 * message index and key. */
bl_status chat_parse_messages_json(const char *json, size_t len, chat_message **msgs, size_t *n,
                                   bl_err *err);

#endif
