/* KV format names, parsing and per-token sizes; the encodings themselves are
 * inline in kv_format.h (shared with the backends). */
#include "kv_format.h"

#include <string.h>

const char *kv_fmt_name(bk_kvfmt f) {
  switch (f) {
  case BK_KV_F16: return "fp16";
  case BK_KV_FP8: return "fp8";
  case BK_KV_NVFP4: return "nvfp4";
  }
  return "?";
}

bl_status kv_fmt_parse(const char *s, bk_kvfmt *out) {
  static const bk_kvfmt all[] = {BK_KV_F16, BK_KV_FP8, BK_KV_NVFP4};
  for (size_t i = 0; s && i < sizeof all / sizeof *all; i++)
    if (strcmp(s, kv_fmt_name(all[i])) == 0) {
      *out = all[i];
      return BL_OK;
    }
  return BL_EINVAL;
}

const char *kv_scale_name(bk_kvscale s) { return s == BK_KVS_TENSOR ? "tensor" : "head"; }

bl_status kv_scale_parse(const char *s, bk_kvscale *out) {
  if (s && strcmp(s, "head") == 0)
    *out = BK_KVS_HEAD;
  else if (s && strcmp(s, "tensor") == 0)
    *out = BK_KVS_TENSOR;
  else
    return BL_EINVAL;
  return BL_OK;
}

uint64_t kv_token_bytes(bk_kvfmt f, bk_kvscale s, int32_t n_layers, int32_t n_kv_heads,
                        int32_t head_dim) {
  uint64_t per_head = bk_kv_row_bytes(f, head_dim) + bk_kv_scale_bytes(f, s, head_dim);
  return 2ull * (uint64_t)n_layers * (uint64_t)n_kv_heads * per_head;
}
