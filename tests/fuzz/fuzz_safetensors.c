/* libFuzzer target for model/safetensors.c: the input is a whole
 * .safetensors file.
 *
 * The bytes go to a memfd opened through /proc/self/fd/N, so st_open_file
 * runs exactly as on a real file (open, fstat, mmap). When open succeeds
 * every tensor's bytes are read and every name looked up, so ASan catches
 * any validation gap that would let a later reader leave the mapping. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

static int memfd = -1;
static char path[64];

static void touch(const st_set *s) {
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < st_count(s); i++) {
    const st_tensor *t = st_at(s, i);
    if (st_find(s, t->name) != t) abort(); /* names are unique and indexed */
    size_t want = st_dtype_size(t->dtype);
    for (int d = 0; d < t->n_dims; d++)
      want *= (size_t)t->shape[d];
    if (want != t->nbytes || t->n_dims < 0 || t->n_dims > ST_MAX_DIMS) abort();
    const uint8_t *p = t->data;
    for (size_t j = 0; j < t->nbytes; j++)
      sink ^= p[j];
  }
  (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (memfd < 0) {
    memfd = memfd_create("fuzz_st", MFD_CLOEXEC);
    if (memfd < 0) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
  }
  if (ftruncate(memfd, 0) != 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) abort();
  st_set *s = NULL;
  bl_err err = {0};
  if (st_open_file(path, &s, &err) == BL_OK) {
    touch(s);
    st_close(s);
  } else if (s != NULL || err.status == BL_OK || !strstr(err.msg, path)) {
    abort(); /* failure must leave *out NULL and name the file */
  }
  return 0;
}
