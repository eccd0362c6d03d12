/* libFuzzer target for model/gguf.c: the input is a whole GGUF file.
 *
 * The bytes go to a memfd opened through /proc/self/fd/N, so gguf_open runs
 * exactly as on a real file (open, fstat, mmap). When open succeeds every
 * key, array element and tensor byte is read, so ASan catches any
 * validation gap that would let a later reader leave the mapping. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"

static int memfd = -1;
static char path[64];

static void touch(const gguf_file *f) {
  volatile float sink = 0;
  for (uint64_t i = 0; i < f->n_kv; i++) {
    const gguf_kv *kv = &f->kvs[i];
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 255 ? kv->key.len : 255), kv->key.ptr);
    uint32_t u;
    float fl;
    gguf_str s;
    bl_err err = {0};
    gguf_get_u32(f, key, &u, &err);
    gguf_get_f32(f, key, &fl, &err);
    if (gguf_get_str(f, key, &s, &err) == BL_OK && s.len) sink += (float)s.ptr[s.len - 1];
    for (uint64_t j = 0; j < kv->arr_len && j < 4096; j++)
      sink += (float)gguf_arr_int(kv, j);
    if (kv->arr_len) sink += (float)gguf_arr_int(kv, kv->arr_len - 1);
    if (kv->strs)
      for (uint64_t j = 0; j < kv->arr_len; j++)
        if (kv->strs[j].len) sink += (float)kv->strs[j].ptr[kv->strs[j].len - 1];
  }
  static float buf[1 << 16];
  for (uint64_t i = 0; i < f->n_tensors; i++) {
    const gguf_tensor *t = &f->tensors[i];
    size_t be, bb;
    if (!gguf_type_block(t->type, &be, &bb)) abort(); /* open checked the type */
    size_t n = t->nbytes / bb * be;                   /* whole tensor, in chunks of the buffer */
    const uint8_t *p = t->data;
    size_t chunk = (sizeof buf / sizeof buf[0]) / 32 * 32;
    for (size_t done = 0; done < n; done += chunk) {
      size_t m = n - done < chunk ? n - done : chunk;
      gguf_dequant(t->type, p + done / be * bb, buf, m);
      sink += buf[m - 1];
    }
  }
  (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (memfd < 0) {
    memfd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
    if (memfd < 0) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
  }
  if (ftruncate(memfd, 0) != 0 || pwrite(memfd, data, size, 0) != (ssize_t)size) abort();
  gguf_file *f = NULL;
  bl_err err = {0};
  if (gguf_open(path, &f, &err) == BL_OK) {
    touch(f);
    gguf_close(f);
  } else if (f != NULL || err.status == BL_OK || !err.msg[0]) {
    abort(); /* failure must leave *out NULL and say why */
  }
  return 0;
}
