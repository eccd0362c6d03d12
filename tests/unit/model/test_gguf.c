/* Unit tests for model/gguf.c.
 *
 * - Committed vectors (tests/data/gguf/vectors.gguf, written by
 *   tools/ref/make_format_vectors.py with the python gguf package): every
 *   metadata value type, non-default alignment, and the dequantizers
 *   against gguf.quants.dequantize (<name>.ref tensors).
 * - A GGUF v2 file built byte by byte here (default alignment, hand-made
 *   Q4_0 block with a known layout).
 * - Every truncation of valid files and a table of corrupted files: each
 *   must fail with a message naming the file (and the key or tensor); run
 *   under ASan+UBSan this also shows no read leaves the mapping.
 * - The demo model when BALLAST_SMOLLM2_GGUF names it (skipped otherwise).
 * BALLAST_TEST_DATA names tests/data (meson sets it). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bl_half.h"
#include "gguf.h"
#include "t.h"
#include "t_file.h"

static char tmpdir[256];

/* ------------------------------------------------------------ byte builder */

typedef struct buf {
  uint8_t *p;
  size_t len, cap;
} buf;

static void put(buf *b, const void *src, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    if (!b->p) abort();
  }
  memcpy(b->p + b->len, src, n);
  b->len += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
  put_u64(b, strlen(s));
  put(b, s, strlen(s));
}
static void put_zeros(buf *b, size_t n) {
  static const uint8_t zero[1];
  while (n--)
    put(b, zero, 1);
}
static void pad_to(buf *b, size_t align) { put_zeros(b, (align - b->len % align) % align); }
static void header(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  put(b, "GGUF", 4);
  put_u32(b, version);
  put_u64(b, n_tensors);
  put_u64(b, n_kv);
}
static void kv_u32(buf *b, const char *key, uint32_t v) {
  put_str(b, key);
  put_u32(b, GGUF_V_UINT32);
  put_u32(b, v);
}
static void kv_str(buf *b, const char *key, const char *v) {
  put_str(b, key);
  put_u32(b, GGUF_V_STRING);
  put_str(b, v);
}
static void tinfo(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                  uint64_t offset) {
  put_str(b, name);
  put_u32(b, n_dims);
  for (uint32_t i = 0; i < n_dims; i++)
    put_u64(b, ne[i]);
  put_u32(b, type);
  put_u64(b, offset);
}

/* ------------------------------------------------------- committed vectors */

static const gguf_tensor *need_tensor(const gguf_file *f, const char *name) {
  const gguf_tensor *t = gguf_find_tensor(f, name);
  T_CHECKF(t != NULL, "tensor %s missing", name);
  return t;
}

/* Dequantize `name` and compare with the F32 tensor `name.ref`; bitwise
 * unless tol > 0 (Q4_1's d*q+m may be fused into an FMA by some builds). */
static void check_against_ref(const gguf_file *f, const char *name, float tol) {
  char ref_name[64];
  snprintf(ref_name, sizeof ref_name, "%s.ref", name);
  const gguf_tensor *t = need_tensor(f, name), *r = need_tensor(f, ref_name);
  if (!t || !r) return;
  size_t n = (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
  T_CHECK(r->type == GGUF_T_F32 && r->nbytes == n * 4 && r->ne[0] == t->ne[0]);
  float *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
  gguf_dequant(t->type, t->data, got, n);
  memcpy(want, r->data, n * 4);
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    bool same = tol > 0 ? fabsf(got[i] - want[i]) <= tol * fabsf(want[i])
                        : bl_bits_from_f32(got[i]) == bl_bits_from_f32(want[i]);
    if (!same && bad++ < 5)
      fprintf(stderr, "%s[%zu]: got %.9g want %.9g\n", name, i, got[i], want[i]);
  }
  T_CHECKF(bad == 0, "%s: %d of %zu values differ from gguf.quants.dequantize", name, bad, n);
  free(got);
  free(want);
}

static void test_vectors(const char *data_dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/gguf/vectors.gguf", data_dir);
  gguf_file *f = NULL;
  bl_err err = {0};
  bl_status st = gguf_open(path, &f, &err);
  T_CHECKF(st == BL_OK, "%s", err.msg);
  if (st) return;
  T_CHECK(f->version == 3);
  T_CHECK(f->n_kv == 19);
  T_CHECK(f->n_tensors == 13);
  T_CHECK(f->alignment == 64);

  uint32_t u = 0;
  float fl = 0;
  gguf_str s = {0};
  T_CHECK(gguf_get_str(f, "general.architecture", &s, &err) == BL_OK && gguf_str_eq(s, "testarch"));
  T_CHECK(gguf_get_str(f, "t.str", &s, &err) == BL_OK && gguf_str_eq(s, "h\xc3\xa9llo gguf"));
  T_CHECK(gguf_get_u32(f, "t.u8", &u, &err) == BL_OK && u == 200);
  T_CHECK(gguf_get_u32(f, "t.u16", &u, &err) == BL_OK && u == 60000);
  T_CHECK(gguf_get_u32(f, "t.u32", &u, &err) == BL_OK && u == 4000000000u);
  T_CHECK(gguf_get_u32(f, "t.small_i32", &u, &err) == BL_OK && u == 7);
  T_CHECK(gguf_get_f32(f, "t.f32", &fl, &err) == BL_OK && fl == 0.15625f);
  T_CHECK(gguf_get_f32(f, "t.f64", &fl, &err) == BL_OK && fl == 2.5f);
  T_CHECKF(err.status == BL_OK, "%s", err.msg);

  /* getter errors name the file and the key */
  struct {
    const char *key;
    bl_status want;
  } bad[] = {{"t.i8", BL_ERANGE},        {"t.i32", BL_ERANGE},   {"t.u64", BL_ERANGE},
             {"t.f32", BL_EFORMAT},      {"t.bool", BL_EFORMAT}, {"t.arr_i32", BL_EFORMAT},
             {"no.such.key", BL_EFORMAT}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bl_err e = {0};
    T_CHECKF(gguf_get_u32(f, bad[i].key, &u, &e) == bad[i].want, "%s", bad[i].key);
    T_CHECKF(strstr(e.msg, path) && strstr(e.msg, bad[i].key), "message: %s", e.msg);
  }
  bl_err e2 = {0};
  T_CHECK(gguf_get_str(f, "t.u8", &s, &e2) == BL_EFORMAT && strstr(e2.msg, "t.u8"));
  T_CHECK(gguf_get_f32(f, "t.str", &fl, &e2) == BL_EFORMAT);

  /* raw scalar values of the types the getters do not convert */
  const gguf_kv *kv = gguf_find_kv(f, "t.i8");
  T_CHECK(kv && kv->type == GGUF_V_INT8 && (int8_t)kv->data[0] == -100);
  kv = gguf_find_kv(f, "t.i16");
  int16_t i16 = 0;
  if (kv) memcpy(&i16, kv->data, 2);
  T_CHECK(kv && kv->type == GGUF_V_INT16 && i16 == -30000);
  kv = gguf_find_kv(f, "t.i64");
  int64_t i64 = 0;
  if (kv) memcpy(&i64, kv->data, 8);
  T_CHECK(kv && kv->type == GGUF_V_INT64 && i64 == -(1ll << 40));
  kv = gguf_find_kv(f, "t.bool");
  T_CHECK(kv && kv->type == GGUF_V_BOOL && kv->data[0] == 1);

  kv = gguf_find_kv(f, "t.arr_i32");
  T_CHECK(kv && kv->type == GGUF_V_ARRAY && kv->arr_type == GGUF_V_INT32 && kv->arr_len == 4);
  if (kv) {
    T_CHECK(gguf_arr_int(kv, 0) == -5 && gguf_arr_int(kv, 1) == 0);
    T_CHECK(gguf_arr_int(kv, 2) == 5 && gguf_arr_int(kv, 3) == 1 << 30);
    T_CHECK(gguf_arr_int(kv, 4) == 0); /* past the end: 0, no read */
  }
  kv = gguf_find_kv(f, "t.arr_f32");
  T_CHECK(kv && kv->arr_type == GGUF_V_FLOAT32 && kv->arr_len == 3);
  if (kv)
    T_CHECK(gguf_arr_int(kv, 0) == 0 && gguf_arr_int(kv, 1) == -1 && gguf_arr_int(kv, 2) == 3);
  kv = gguf_find_kv(f, "t.arr_str");
  T_CHECK(kv && kv->arr_type == GGUF_V_STRING && kv->arr_len == 4 && kv->strs);
  if (kv && kv->strs) {
    T_CHECK(gguf_str_eq(kv->strs[0], "hello") && gguf_str_eq(kv->strs[1], ""));
    T_CHECK(gguf_str_eq(kv->strs[2], "w\xc3\xb6rld") && gguf_str_eq(kv->strs[3], "<|im_end|>"));
  }
  kv = gguf_find_kv(f, "t.arr_nested");
  T_CHECK(kv && kv->arr_type == GGUF_V_ARRAY && kv->arr_len == 2 && !kv->strs);

  /* tensors: shapes, types, alignment, values */
  const gguf_tensor *t = need_tensor(f, "f32");
  if (t) {
    T_CHECK(t->type == GGUF_T_F32 && t->n_dims == 2 && t->ne[0] == 5 && t->ne[1] == 3);
    T_CHECK(t->ne[2] == 1 && t->ne[3] == 1 && t->nbytes == 60);
    T_CHECK(((const uint8_t *)t->data - f->map) % 64 == 0);
    float v[15];
    gguf_dequant(t->type, t->data, v, 15);
    for (int i = 0; i < 15; i++)
      T_CHECK(v[i] == (float)i * 0.25f - 1.0f);
  }
  t = need_tensor(f, "q4_0");
  if (t) T_CHECK(t->type == GGUF_T_Q4_0 && t->ne[0] == 96 && t->ne[1] == 2 && t->nbytes == 6 * 18);
  t = need_tensor(f, "q4_1");
  if (t) T_CHECK(t->type == GGUF_T_Q4_1 && t->nbytes == 4 * 20);
  t = need_tensor(f, "q8_0");
  if (t) T_CHECK(t->type == GGUF_T_Q8_0 && t->ne[0] == 64 && t->ne[1] == 3 && t->nbytes == 6 * 34);
  t = need_tensor(f, "bf16");
  if (t) T_CHECK(t->type == GGUF_T_BF16 && t->nbytes == 40);
  check_against_ref(f, "f16", 0);
  check_against_ref(f, "bf16", 0);
  check_against_ref(f, "q8_0", 0);
  check_against_ref(f, "q8_0.quantized", 0);
  check_against_ref(f, "q4_0", 0);
  check_against_ref(f, "q4_1", 1e-6f);
  T_CHECK(gguf_find_tensor(f, "missing") == NULL && gguf_find_tensor(f, "f3") == NULL);
  for (uint64_t i = 0; i < f->n_tensors; i++)
    T_CHECK(((const uint8_t *)f->tensors[i].data - f->map) % 64 == 0);
  gguf_close(f);
}

/* ---------------------------------------------------------- built v2 file */

/* A small valid v2 file: default alignment, a string array, an F32 and a
 * hand-made Q4_0 tensor (d = 1, byte j = j | (15 - j) << 4, so element j
 * is j - 8 and element 16 + j is 7 - j). */
static void build_v2(buf *b) {
  header(b, 2, 2, 3);
  kv_str(b, "general.architecture", "llama");
  kv_u32(b, "llama.block_count", 30);
  put_str(b, "tokenizer.ggml.tokens");
  put_u32(b, GGUF_V_ARRAY);
  put_u32(b, GGUF_V_STRING);
  put_u64(b, 3);
  put_str(b, "<s>");
  put_str(b, "a");
  put_str(b, "bc");
  tinfo(b, "w.f32", 2, (const uint64_t[]){3, 2}, GGUF_T_F32, 0);
  tinfo(b, "w.q4_0", 1, (const uint64_t[]){32}, GGUF_T_Q4_0, 32);
  pad_to(b, 32);
  for (int i = 0; i < 6; i++) {
    float v = (float)i + 0.5f;
    put(b, &v, 4);
  }
  pad_to(b, 32);
  uint16_t d = 0x3c00;
  put(b, &d, 2);
  for (int j = 0; j < 16; j++) {
    uint8_t q = (uint8_t)(j | (15 - j) << 4);
    put(b, &q, 1);
  }
}

static void test_v2(void) {
  buf b = {0};
  build_v2(&b);
  char path[512];
  snprintf(path, sizeof path, "%s/v2.gguf", tmpdir);
  write_file(path, b.p, b.len);
  gguf_file *f = NULL;
  bl_err err = {0};
  T_CHECKF(gguf_open(path, &f, &err) == BL_OK, "%s", err.msg);
  if (f) {
    T_CHECK(f->version == 2 && f->alignment == 32 && f->n_kv == 3 && f->n_tensors == 2);
    uint32_t u = 0;
    T_CHECK(gguf_get_u32(f, "llama.block_count", &u, &err) == BL_OK && u == 30);
    const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
    T_CHECK(kv && kv->arr_len == 3 && kv->strs && gguf_str_eq(kv->strs[2], "bc"));
    const gguf_tensor *t = gguf_find_tensor(f, "w.f32");
    T_CHECK(t && t->ne[0] == 3 && t->ne[1] == 2 && t->data == f->map + 288);
    t = gguf_find_tensor(f, "w.q4_0");
    T_CHECK(t && t->nbytes == 18 && t->data == f->map + 320);
    if (t) {
      float v[32];
      gguf_dequant(t->type, t->data, v, 32);
      for (int j = 0; j < 16; j++)
        T_CHECK(v[j] == (float)(j - 8) && v[16 + j] == (float)(7 - j));
    }
    gguf_close(f);
  }
  free(b.p);
}

/* Dequantizers on hand-made blocks, independent of the python vectors. */
static void test_dequant_blocks(void) {
  uint8_t q8[34], q41[20];
  uint16_t d = bl_float_to_half(0.5f), m = bl_float_to_half(-1.0f);
  memcpy(q8, &d, 2);
  for (int j = 0; j < 32; j++)
    q8[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
  memcpy(q41, &d, 2);
  memcpy(q41 + 2, &m, 2);
  for (int j = 0; j < 16; j++)
    q41[4 + j] = (uint8_t)(j | (15 - j) << 4);
  float v[32];
  gguf_dequant(GGUF_T_Q8_0, q8, v, 32);
  for (int j = 0; j < 32; j++)
    T_CHECK(v[j] == 0.5f * (float)(j * 8 - 128));
  gguf_dequant(GGUF_T_Q4_1, q41, v, 32);
  for (int j = 0; j < 16; j++)
    T_CHECK(v[j] == 0.5f * j - 1 && v[16 + j] == 0.5f * (15 - j) - 1);
  uint16_t bf[2] = {bl_float_to_bf16(-3.0f), 0x7f80};
  gguf_dequant(GGUF_T_BF16, bf, v, 2);
  T_CHECK(v[0] == -3.0f && isinf(v[1]));
  size_t e = 0, by = 0;
  T_CHECK(gguf_type_block(GGUF_T_Q4_1, &e, &by) && e == 32 && by == 20);
  T_CHECK(!gguf_type_block((gguf_ttype)6, &e, &by));
  T_CHECK(strcmp(gguf_type_name(GGUF_T_Q8_0), "Q8_0") == 0);
  T_CHECK(strcmp(gguf_type_name((gguf_ttype)99), "unknown") == 0);
}

/* --------------------------------------------------------- broken inputs */

/* Open path and expect failure with a message naming the file and `want`. */
static void expect_fail(const char *path, const char *want, const char *what) {
  gguf_file *f = (gguf_file *)1;
  bl_err err = {0};
  bl_status st = gguf_open(path, &f, &err);
  T_CHECKF(st != BL_OK && f == NULL, "%s: opened", what);
  if (st == BL_OK) gguf_close(f);
  T_CHECKF(err.status == st && strstr(err.msg, path), "%s: message lacks path: %s", what, err.msg);
  if (want)
    T_CHECKF(strstr(err.msg, want) != NULL, "%s: message lacks '%s': %s", what, want, err.msg);
}

/* Every prefix of a valid file must fail (the last tensor's data reaches
 * the end of each file used here). Lengths go down by ftruncate. */
static void truncations(const uint8_t *p, size_t n, const char *label) {
  char fallback[512], path[512];
  snprintf(fallback, sizeof fallback, "%s/trunc_%s.gguf", tmpdir, label);
  int fd = trunc_file(fallback, p, n, path, sizeof path);
  for (size_t len = n; len-- > 0;) {
    char what[64];
    snprintf(what, sizeof what, "%s truncated to %zu", label, len);
    if (ftruncate(fd, (off_t)len) != 0) abort();
    expect_fail(path, NULL, what);
  }
  close(fd);
}

static void test_truncations(const char *data_dir) {
  buf b = {0};
  build_v2(&b);
  truncations(b.p, b.len, "v2");
  free(b.p);
  char path[512];
  size_t n = 0;
  snprintf(path, sizeof path, "%s/gguf/vectors.gguf", data_dir);
  uint8_t *p = read_file(path, &n);
  T_CHECKF(p != NULL, "cannot read %s", path);
  if (p) truncations(p, n, "vectors");
  free(p);
  snprintf(path, sizeof path, "%s/v2.gguf", tmpdir);
  /* the message the loader shows for a short model file */
  b = (buf){0};
  build_v2(&b);
  write_file(path, b.p, b.len - 1);
  expect_fail(path, "tensor w.q4_0 data ends at byte 338 past end of file (337 bytes)", "short");
  free(b.p);
}

/* Corrupted file number k into b; *want is a substring the message must
 * hold. Returns false past the last case. */
static bool corrupt_case(int k, buf *b, const char **want) {
  static const uint64_t ne1[] = {32}, ne4[] = {1ull << 32, 1ull << 32, 1ull << 32, 1ull << 32};
  *want = NULL;
  switch (k) {
  case 0:
    put(b, "GGUX", 4);
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, 0);
    *want = "magic";
    return true;
  case 1:
    header(b, 1, 0, 0);
    *want = "version 1";
    return true;
  case 2:
    header(b, 4, 0, 0);
    *want = "version 4";
    return true;
  case 3:
    header(b, 3, UINT64_MAX, 0);
    *want = "tensors";
    return true;
  case 4:
    header(b, 3, 0, UINT64_MAX);
    *want = "metadata";
    return true;
  case 5:
    header(b, 3, 0, 1);
    put_u64(b, UINT64_MAX);
    put_u32(b, 4);
    put_u32(b, 0);
    return true;
  case 6:
    header(b, 3, 0, 1);
    put_str(b, "k.str");
    put_u32(b, GGUF_V_STRING);
    put_u64(b, 1ull << 62);
    put_u64(b, 0);
    *want = "k.str";
    return true;
  case 7:
    header(b, 3, 0, 1);
    put_str(b, "k.arr");
    put_u32(b, GGUF_V_ARRAY);
    put_u32(b, GGUF_V_UINT32);
    put_u64(b, 1ull << 62);
    put_u64(b, 0);
    *want = "k.arr";
    return true;
  case 8:
    header(b, 3, 0, 1);
    put_str(b, "k.sarr");
    put_u32(b, GGUF_V_ARRAY);
    put_u32(b, GGUF_V_STRING);
    put_u64(b, UINT64_MAX);
    put_u64(b, 0);
    *want = "k.sarr";
    return true;
  case 9:
    header(b, 3, 0, 1);
    put_str(b, "k.type");
    put_u32(b, 13);
    put_u64(b, 0);
    *want = "k.type has unknown value type 13";
    return true;
  case 10:
    header(b, 3, 0, 1);
    put_str(b, "k.et");
    put_u32(b, GGUF_V_ARRAY);
    put_u32(b, 77);
    put_u64(b, 0);
    *want = "k.et";
    return true;
  case 11: /* arrays nested 10 deep */
    header(b, 3, 0, 1);
    put_str(b, "k.deep");
    put_u32(b, GGUF_V_ARRAY);
    for (int i = 0; i < 10; i++) {
      put_u32(b, GGUF_V_ARRAY);
      put_u64(b, 1);
    }
    put_u32(b, GGUF_V_UINT8);
    put_u64(b, 0);
    *want = "k.deep";
    return true;
  case 12:
    header(b, 3, 0, 2);
    kv_u32(b, "k.dup", 1);
    kv_u32(b, "k.dup", 2);
    *want = "duplicate key k.dup";
    return true;
  case 13:
    header(b, 3, 1, 0);
    tinfo(b, "t.nd0", 0, ne1, 0, 0);
    put_zeros(b, 32);
    *want = "t.nd0";
    return true;
  case 14:
    header(b, 3, 1, 0);
    tinfo(b, "t.nd5", 5, (const uint64_t[]){32, 1, 1, 1, 1}, 0, 0);
    *want = "t.nd5";
    return true;
  case 15:
    header(b, 3, 1, 0);
    tinfo(b, "t.neg", 2, (const uint64_t[]){4, (uint64_t)-3}, 0, 0);
    *want = "t.neg: dim 1 is negative";
    return true;
  case 16:
    header(b, 3, 1, 0);
    tinfo(b, "t.big", 4, ne4, 0, 0);
    *want = "t.big";
    return true;
  case 17:
    header(b, 3, 1, 0);
    tinfo(b, "t.q5", 1, ne1, 6, 0);
    *want = "t.q5 has tensor type 6";
    return true;
  case 18:
    header(b, 3, 1, 0);
    tinfo(b, "t.blk", 1, (const uint64_t[]){48}, GGUF_T_Q4_0, 0);
    *want = "t.blk";
    return true;
  case 19:
    header(b, 3, 1, 0);
    tinfo(b, "t.unal", 1, ne1, 0, 4);
    pad_to(b, 32);
    put_zeros(b, 160);
    *want = "t.unal: data offset 4";
    return true;
  case 20:
    header(b, 3, 1, 0);
    tinfo(b, "t.past", 1, ne1, 0, 1ull << 40);
    *want = "tensor t.past data ends at byte";
    return true;
  case 21:
    header(b, 3, 1, 0);
    tinfo(b, "t.wrap", 1, ne1, 0, UINT64_MAX - 31);
    *want = "t.wrap";
    return true;
  case 22:
    header(b, 3, 2, 0);
    tinfo(b, "t.dup", 1, ne1, 0, 0);
    tinfo(b, "t.dup", 1, ne1, 0, 128);
    pad_to(b, 32);
    put_zeros(b, 256);
    *want = "duplicate tensor t.dup";
    return true;
  case 23:
    header(b, 3, 0, 1);
    kv_u32(b, "general.alignment", 0);
    *want = "general.alignment";
    return true;
  case 24:
    header(b, 3, 0, 1);
    kv_u32(b, "general.alignment", 48);
    *want = "general.alignment";
    return true;
  case 25:
    header(b, 3, 0, 1);
    kv_str(b, "general.alignment", "32");
    *want = "general.alignment";
    return true;
  case 26:
    header(b, 3, 1, 0);
    tinfo(b, "t.ne0", 2, (const uint64_t[]){0, 1ull << 63}, 0, 0);
    *want = "t.ne0";
    return true;
  }
  return false;
}

static void test_corrupt(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/corrupt.gguf", tmpdir);
  int k = 0;
  for (;; k++) {
    buf b = {0};
    const char *want;
    if (!corrupt_case(k, &b, &want)) {
      free(b.p);
      break;
    }
    write_file(path, b.p, b.len);
    char what[32];
    snprintf(what, sizeof what, "corrupt case %d", k);
    expect_fail(path, want, what);
    free(b.p);
  }
  T_CHECK(k == 27);
  /* a valid empty file (no kvs, no tensors) opens */
  buf b = {0};
  header(&b, 3, 0, 0);
  write_file(path, b.p, b.len);
  gguf_file *f = NULL;
  bl_err err = {0};
  T_CHECKF(gguf_open(path, &f, &err) == BL_OK && f && f->n_tensors == 0, "%s", err.msg);
  gguf_close(f);
  free(b.p);
  expect_fail(tmpdir, "not a regular file", "a folder");
  snprintf(path, sizeof path, "%s/does-not-exist.gguf", tmpdir);
  expect_fail(path, "cannot open", "missing file");
  gguf_close(NULL);
}

/* ------------------------------------------------------------ demo model */

static void test_smollm2(void) {
  const char *path = getenv("BALLAST_SMOLLM2_GGUF");
  if (!path || !*path) {
    fprintf(stderr, "test_gguf: BALLAST_SMOLLM2_GGUF unset, SmolLM2 checks skipped\n");
    return;
  }
  gguf_file *f = NULL;
  bl_err err = {0};
  T_CHECKF(gguf_open(path, &f, &err) == BL_OK, "%s", err.msg);
  if (!f) return;
  gguf_str arch = {0};
  uint32_t blocks = 0;
  T_CHECK(gguf_get_str(f, "general.architecture", &arch, &err) == BL_OK &&
          gguf_str_eq(arch, "llama"));
  T_CHECK(gguf_get_u32(f, "llama.block_count", &blocks, &err) == BL_OK && blocks == 30);
  T_CHECK(f->n_tensors == 272);
  const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
  T_CHECK(t && t->type == GGUF_T_Q8_0 && t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152);
  const gguf_kv *kv = gguf_find_kv(f, "tokenizer.ggml.tokens");
  T_CHECK(kv && kv->arr_type == GGUF_V_STRING && kv->arr_len == 49152 && kv->strs);
  t = gguf_find_tensor(f, "blk.0.attn_q.weight");
  T_CHECK(t && t->type == GGUF_T_Q4_1);
  if (t) { /* dequantized weights of a trained model are finite and small */
    float v[576];
    gguf_dequant(t->type, t->data, v, 576);
    bool ok = true;
    for (int i = 0; i < 576; i++)
      ok = ok && isfinite(v[i]) && fabsf(v[i]) < 100;
    T_CHECK(ok);
  }
  T_CHECKF(err.status == BL_OK, "%s", err.msg);
  gguf_close(f);
}

int main(void) {
  const char *data_dir = getenv("BALLAST_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  const char *tmp = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/bl_gguf_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 2;
  }
  test_vectors(data_dir);
  test_v2();
  test_dequant_blocks();
  test_truncations(data_dir);
  test_corrupt();
  test_smollm2();
  const char *files[] = {"v2.gguf", "trunc_v2.gguf", "trunc_vectors.gguf", "corrupt.gguf"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, files[i]);
    unlink(p);
  }
  rmdir(tmpdir);
  return T_DONE();
}
