/* Default sampling parameters of a model, which a request's own values
 * override field by field (as vLLM's --generation-config auto). Read once
 * per model load; no state. */
#ifndef GEN_CONFIG_H
#define GEN_CONFIG_H

#include "bl_status.h"
#include "model.h"
#include "sampler.h"

/* Defaults for the model at path (a folder or a file) of architecture arch:
 *  1. path is a folder whose generation_config.json sets any of temperature,
 *     top_p, top_k, min_p, repetition_penalty: those values, the others at
 *     vLLM's neutral ones (temperature 1, no truncation, no penalty);
 *  2. arch qwen3: Qwen3's thinking-mode values, temperature 0.6, top_p 0.95,
 *     top_k 20;
 *  3. greedy.
 * A generation_config.json that is not JSON, or a sampling key of the wrong
 * type or out of range, is an error naming the file and key. *source (may be
 * NULL) names the rule used: "generation_config.json", "qwen3" or "greedy". */
bl_status model_sampling_defaults(const char *path, model_arch arch, sampler_params *out,
                                  const char **source, bl_err *err);

#endif
