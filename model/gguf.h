/* GGUF (v2/v3) reader: memory-maps the file, validates every offset and
 * length against the file size, and exposes metadata and tensors without
 * copying. Strings point into the mapping and are NOT NUL-terminated.
 * Every failure names the file and the key or tensor at fault. */
#ifndef GGUF_H
#define GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

/* ggml tensor types this project reads (values are the file's). */
typedef enum gguf_ttype {
  GGUF_T_F32 = 0,
  GGUF_T_F16 = 1,
  GGUF_T_Q4_0 = 2,
  GGUF_T_Q4_1 = 3,
  GGUF_T_Q8_0 = 8,
  GGUF_T_BF16 = 30,
} gguf_ttype;

/* Metadata value types (values are the file's). */
typedef enum gguf_vtype {
  GGUF_V_UINT8 = 0,
  GGUF_V_INT8 = 1,
  GGUF_V_UINT16 = 2,
  GGUF_V_INT16 = 3,
  GGUF_V_UINT32 = 4,
  GGUF_V_INT32 = 5,
  GGUF_V_FLOAT32 = 6,
  GGUF_V_BOOL = 7,
  GGUF_V_STRING = 8,
  GGUF_V_ARRAY = 9,
  GGUF_V_UINT64 = 10,
  GGUF_V_INT64 = 11,
  GGUF_V_FLOAT64 = 12,
} gguf_vtype;

typedef struct gguf_str {
  const char *ptr; /* into the mapping, not NUL-terminated */
  size_t len;
} gguf_str;

typedef struct gguf_kv {
  gguf_str key;
  gguf_vtype type;
  gguf_vtype arr_type; /* element type when type == GGUF_V_ARRAY */
  uint64_t arr_len;
  const uint8_t *data; /* value (or first array element) in the mapping */
  gguf_str *strs;      /* string arrays: arr_len entries, built at open */
} gguf_kv;

typedef struct gguf_tensor {
  gguf_str name;
  uint32_t n_dims;
  uint64_t ne[4]; /* ggml order: ne[0] is the contiguous (innermost) dim */
  gguf_ttype type;
  const void *data; /* in the mapping, aligned */
  size_t nbytes;
} gguf_tensor;

typedef struct gguf_file {
  char *path;
  const uint8_t *map;
  size_t size;
  uint32_t version;
  uint64_t n_kv, n_tensors;
  gguf_kv *kvs;
  gguf_tensor *tensors;
  size_t alignment;
} gguf_file;

/* Open and validate; on error *out is NULL and err names file and field. */
bl_status gguf_open(const char *path, gguf_file **out, bl_err *err);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: BL_OK, or an error naming the key when it is missing or of
 * another type. Integer getters accept any integer type that fits. */
bl_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, bl_err *err);
bl_status gguf_get_f32(const gguf_file *f, const char *key, float *out, bl_err *err);
bl_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, bl_err *err);
bool gguf_str_eq(gguf_str s, const char *c);

/* Element i of an integer/float array kv, converted (no bounds beyond arr_len). */
int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i);

/* Block geometry of a tensor type: elements per block and bytes per block;
 * false for types this reader does not know. */
bool gguf_type_block(gguf_ttype t, size_t *elems, size_t *bytes);
const char *gguf_type_name(gguf_ttype t);

/* Dequantize n elements (a multiple of the type's block) from src to float. */
void gguf_dequant(gguf_ttype t, const void *src, float *dst, size_t n);

#endif
