/* Read-only file mappings, shared by the model-file parsers. */
#ifndef BL_FILE_H
#define BL_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "bl_status.h"

typedef struct bl_map {
  const uint8_t *data;
  size_t size;
} bl_map;

/* Map path read-only. A file shorter than min_size fails with a message
 * naming `what` ("a GGUF header"); so does a directory or a device. */
bl_status bl_map_file(const char *path, size_t min_size, const char *what, bl_map *out,
                      bl_err *err);
void bl_unmap(bl_map *m);

#endif
