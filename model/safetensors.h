/* safetensors reader and writer.
 *
 * Reader: a model folder's tensors across one file or the shards listed in
 * model.safetensors.index.json, each file memory-mapped; the JSON header is
 * parsed with cJSON and every offset is checked against the file size.
 * Errors name the file and the tensor. Writer: builds one file from tensors
 * added in memory (used by `ballast quantize`). */
#ifndef ST_SAFETENSORS_H
#define ST_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

typedef enum st_dtype {
  ST_F32,
  ST_F16,
  ST_BF16,
  ST_F64,
  ST_I64,
  ST_I32,
  ST_I16,
  ST_I8,
  ST_U8,
  ST_BOOL,
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct st_tensor {
  char *name;
  st_dtype dtype;
  int n_dims;
  int64_t shape[ST_MAX_DIMS];
  const void *data; /* in the mapping */
  size_t nbytes;
  const char *file; /* path of the file holding it */
} st_tensor;

typedef struct st_set st_set;

/* Open a folder: model.safetensors.index.json if present (every shard it
 * names), else every *.safetensors file in it. */
bl_status st_open_dir(const char *dir, st_set **out, bl_err *err);
/* Open one file. */
bl_status st_open_file(const char *path, st_set **out, bl_err *err);
void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name);
size_t st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, size_t i);

const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

/* Writer. Tensors are copied in; finish writes header (sorted by name, with
 * __metadata__ {"format":"pt"}) and data, 8-byte aligned. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
bl_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int n_dims,
                        const int64_t *shape, const void *data, bl_err *err);
bl_status st_writer_finish(st_writer *w, const char *path, bl_err *err);
void st_writer_free(st_writer *w);

#endif
