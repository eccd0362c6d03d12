/* Unit tests for model/safetensors.c.
 *
 * - Committed vectors written by the python safetensors package
 *   (tools/ref/make_format_vectors.py): every dtype, a scalar, an empty
 *   tensor, and a sharded folder with model.safetensors.index.json.
 * - The writer: its output reads back here and is byte-identical to
 *   tests/data/safetensors/writer_golden.safetensors, which the script's
 *   --check-writer mode loads in the python package (so the writer stays
 *   readable by the reference). BALLAST_UPDATE_GOLDEN=1 rewrites the golden.
 * - Folders without an index, broken indexes, duplicates across shards.
 * - Every truncation of valid files and a table of corrupted headers: each
 *   must fail with a message naming the file; ASan+UBSan must stay clean.
 * BALLAST_TEST_DATA names tests/data (meson sets it). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bl_half.h"
#include "safetensors.h"
#include "t.h"
#include "t_file.h"

static char tmpdir[256];
static const char *data_dir;

/* ---------------------------------------------------------------- helpers */

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static const st_tensor *need(const st_set *s, const char *name, st_dtype dt, int n_dims,
                             const int64_t *shape) {
  const st_tensor *t = st_find(s, name);
  T_CHECKF(t != NULL, "tensor %s missing", name);
  if (!t) return NULL;
  T_CHECKF(t->dtype == dt && t->n_dims == n_dims, "%s: dtype %s dims %d", name,
           st_dtype_name(t->dtype), t->n_dims);
  size_t n = st_dtype_size(dt);
  for (int d = 0; d < n_dims && d < t->n_dims; d++) {
    T_CHECKF(t->shape[d] == shape[d], "%s: dim %d = %lld", name, d, (long long)t->shape[d]);
    n *= (size_t)shape[d];
  }
  T_CHECKF(t->nbytes == n, "%s: nbytes %zu want %zu", name, t->nbytes, n);
  return t;
}

/* Element i of t as a double, whatever its dtype (unaligned-safe). */
static double elem(const st_tensor *t, size_t i) {
  const uint8_t *p = (const uint8_t *)t->data + i * st_dtype_size(t->dtype);
  union {
    float f;
    double d;
    int64_t i64;
    int32_t i32;
    int16_t i16;
    int8_t i8;
    uint8_t u8;
    uint16_t h;
  } v;
  memcpy(&v, p, st_dtype_size(t->dtype));
  switch (t->dtype) {
  case ST_F32: return v.f;
  case ST_F16: return bl_half_to_float(v.h);
  case ST_BF16: return bl_bf16_to_float(v.h);
  case ST_F64: return v.d;
  case ST_I64: return (double)v.i64;
  case ST_I32: return v.i32;
  case ST_I16: return v.i16;
  case ST_I8: return v.i8;
  case ST_U8:
  case ST_BOOL: return v.u8;
  }
  return NAN;
}

static void check_values(const st_tensor *t, const double *want, size_t n) {
  if (!t) return;
  for (size_t i = 0; i < n; i++)
    T_CHECKF(elem(t, i) == want[i], "%s[%zu] = %.17g want %.17g", t->name, i, elem(t, i), want[i]);
}

/* ------------------------------------------------------ committed vectors */

static void test_dtypes(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/safetensors/dtypes.safetensors", data_dir);
  st_set *s = NULL;
  bl_err err = {0};
  T_CHECKF(st_open_file(path, &s, &err) == BL_OK, "%s", err.msg);
  if (!s) return;
  T_CHECK(st_count(s) == 13);
  static const int64_t sh23[] = {2, 3}, sh03[] = {0, 3}, sh234[] = {2, 3, 4};
  static const double fl[] = {-1.5, -0.5, 0.0, 0.25, 1.0, 2.5}, in[] = {-3, -1, 0, 1, 2, 100};
  static const double i64[] = {-1099511627776.0, -1, 0, 1, 2, 1099511627776.0};
  static const double u8[] = {0, 1, 2, 3, 254, 255}, bo[] = {1, 0, 1, 1, 0, 0};
  check_values(need(s, "t_f32", ST_F32, 2, sh23), fl, 6);
  check_values(need(s, "t_f16", ST_F16, 2, sh23), fl, 6);
  check_values(need(s, "t_bf16", ST_BF16, 2, sh23), fl, 6);
  check_values(need(s, "t_f64", ST_F64, 2, sh23), fl, 6);
  check_values(need(s, "t_i64", ST_I64, 2, sh23), i64, 6);
  check_values(need(s, "t_i32", ST_I32, 2, sh23), in, 6);
  check_values(need(s, "t_i16", ST_I16, 2, sh23), in, 6);
  check_values(need(s, "t_i8", ST_I8, 2, sh23), in, 6);
  check_values(need(s, "t_u8", ST_U8, 2, sh23), u8, 6);
  check_values(need(s, "t_bool", ST_BOOL, 2, sh23), bo, 6);
  const double sc = 3.5;
  check_values(need(s, "scalar", ST_F32, 0, NULL), &sc, 1);
  need(s, "empty", ST_F32, 2, sh03);
  const st_tensor *t = need(s, "t_3d", ST_I32, 3, sh234);
  for (int i = 0; t && i < 24; i++)
    T_CHECK(elem(t, (size_t)i) == i);
  T_CHECK(t && strcmp(t->file, path) == 0);
  T_CHECK(st_find(s, "__metadata__") == NULL && st_find(s, "t_f3") == NULL);
  size_t seen = 0;
  for (size_t i = 0; i < st_count(s); i++)
    seen += st_find(s, st_at(s, i)->name) == st_at(s, i);
  T_CHECK(seen == 13 && st_at(s, 13) == NULL);
  st_close(s);
  T_CHECK(strcmp(st_dtype_name(ST_BF16), "BF16") == 0 && st_dtype_size(ST_F64) == 8);
  T_CHECK(st_dtype_size((st_dtype)42) == 0 && strcmp(st_dtype_name((st_dtype)42), "unknown") == 0);
}

static void test_sharded(void) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/safetensors/sharded", data_dir);
  st_set *s = NULL;
  bl_err err = {0};
  T_CHECKF(st_open_dir(dir, &s, &err) == BL_OK, "%s", err.msg);
  if (!s) return;
  T_CHECK(st_count(s) == 4);
  static const int64_t sh42[] = {4, 2}, sh22[] = {2, 2}, sh24[] = {2, 4};
  static const double emb[] = {0, 1, 2, 3, 4, 5, 6, 7}, w1[] = {5, 6, 7, 8};
  static const double lm[] = {0, -1, -2, -3, -4, -5, -6, -7};
  const st_tensor *t = need(s, "model.embed.weight", ST_F16, 2, sh42);
  check_values(t, emb, 8);
  T_CHECK(t && ends_with(t->file, "/model-00001-of-00002.safetensors"));
  need(s, "model.layers.0.w", ST_F32, 2, sh22);
  t = need(s, "model.layers.1.w", ST_BF16, 2, sh22);
  check_values(t, w1, 4);
  T_CHECK(t && ends_with(t->file, "/model-00002-of-00002.safetensors"));
  check_values(need(s, "lm_head.weight", ST_F32, 2, sh24), lm, 8);
  st_close(s);
}

/* ----------------------------------------------------------------- writer */

/* The tensors tools/ref/make_format_vectors.py --check-writer expects. */
static st_writer *writer_expected(void) {
  st_writer *w = st_writer_new();
  bl_err err = {0};
  float f32[6] = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
  uint16_t f16[3] = {bl_float_to_half(1.0f), bl_float_to_half(-2.0f), bl_float_to_half(0.5f)};
  uint16_t bf[4] = {bl_float_to_bf16(1), bl_float_to_bf16(2), bl_float_to_bf16(3),
                    bl_float_to_bf16(4)};
  int32_t i32 = 7;
  int8_t i8[3] = {9, 8, 7};
  uint8_t mask[3] = {1, 0, 1};
  int64_t i64[2] = {-1, 1ll << 40};
  double f64[2] = {0.1, -1e300};
  int16_t i16[2] = {-32768, 32767};
  /* added out of order: the writer sorts */
  T_CHECK(st_writer_add(w, "g.i64", ST_I64, 1, (const int64_t[]){2}, i64, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "b.weight", ST_F32, 2, (const int64_t[]){2, 3}, f32, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "esc\"aped\\name", ST_I8, 1, (const int64_t[]){3}, i8, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "a.bias", ST_F16, 1, (const int64_t[]){3}, f16, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "c.scalar", ST_I32, 0, NULL, &i32, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "e.empty", ST_U8, 2, (const int64_t[]){0, 4}, NULL, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "d.bf", ST_BF16, 2, (const int64_t[]){2, 2}, bf, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "f.mask", ST_BOOL, 1, (const int64_t[]){3}, mask, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "i.i16", ST_I16, 1, (const int64_t[]){2}, i16, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "h.f64", ST_F64, 1, (const int64_t[]){2}, f64, &err) == BL_OK);
  T_CHECKF(err.status == BL_OK, "%s", err.msg);
  return w;
}

static void test_writer(void) {
  char path[512], golden[512];
  snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
  snprintf(golden, sizeof golden, "%s/safetensors/writer_golden.safetensors", data_dir);
  st_writer *w = writer_expected();
  bl_err err = {0};
  T_CHECKF(st_writer_finish(w, path, &err) == BL_OK, "%s", err.msg);
  st_writer_free(w);

  st_set *s = NULL;
  T_CHECKF(st_open_file(path, &s, &err) == BL_OK, "%s", err.msg);
  if (s) {
    T_CHECK(st_count(s) == 10);
    for (size_t i = 0; i < st_count(s); i++) { /* header in name order, data aligned */
      const st_tensor *t = st_at(s, i);
      T_CHECK(i == 0 || strcmp(st_at(s, i - 1)->name, t->name) < 0);
      T_CHECKF((uintptr_t)t->data % st_dtype_size(t->dtype) == 0, "%s misaligned", t->name);
    }
    static const double f32[] = {-1.0, -0.5, 0.0, 0.5, 1.0, 1.5}, f16[] = {1, -2, 0.5};
    static const double i8[] = {9, 8, 7}, i64[] = {-1, 1099511627776.0}, f64[] = {0.1, -1e300};
    static const double seven = 7, bf[] = {1, 2, 3, 4}, mask[] = {1, 0, 1}, i16[] = {-32768, 32767};
    check_values(need(s, "b.weight", ST_F32, 2, (const int64_t[]){2, 3}), f32, 6);
    check_values(need(s, "a.bias", ST_F16, 1, (const int64_t[]){3}), f16, 3);
    check_values(need(s, "esc\"aped\\name", ST_I8, 1, (const int64_t[]){3}), i8, 3);
    check_values(need(s, "c.scalar", ST_I32, 0, NULL), &seven, 1);
    need(s, "e.empty", ST_U8, 2, (const int64_t[]){0, 4});
    check_values(need(s, "d.bf", ST_BF16, 2, (const int64_t[]){2, 2}), bf, 4);
    check_values(need(s, "f.mask", ST_BOOL, 1, (const int64_t[]){3}), mask, 3);
    check_values(need(s, "g.i64", ST_I64, 1, (const int64_t[]){2}), i64, 2);
    check_values(need(s, "h.f64", ST_F64, 1, (const int64_t[]){2}), f64, 2);
    check_values(need(s, "i.i16", ST_I16, 1, (const int64_t[]){2}), i16, 2);
    st_close(s);
  }

  size_t n = 0, gn = 0;
  uint8_t *p = read_file(path, &n);
  uint64_t hlen = 0;
  if (p && n >= 8) memcpy(&hlen, p, 8);
  T_CHECK(p && (8 + hlen) % 8 == 0);
  T_CHECK(p && n > 40 && memcmp(p + 8, "{\"__metadata__\":{\"format\":\"pt\"},", 32) == 0);
  const char *update = getenv("BALLAST_UPDATE_GOLDEN");
  if (p && update && strcmp(update, "1") == 0) {
    write_file(golden, p, n);
    fprintf(stderr,
            "test_safetensors: wrote %s; check it with python3 tools/ref/make_format_vectors.py "
            "--check-writer %s\n",
            golden, golden);
  }
  uint8_t *g = read_file(golden, &gn);
  T_CHECKF(g && p && gn == n && memcmp(g, p, n) == 0,
           "writer output differs from %s (python-checked golden)", golden);
  free(g);
  free(p);
}

static void test_writer_errors(void) {
  st_writer *w = st_writer_new();
  bl_err err = {0};
  float v[2] = {1, 2};
  T_CHECK(st_writer_add(w, "x", ST_F32, 1, (const int64_t[]){2}, v, &err) == BL_OK);
  T_CHECK(st_writer_add(w, "y", ST_F32, 9, (const int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 2}, v, &err) ==
          BL_EINVAL);
  bl_err_clear(&err);
  T_CHECK(st_writer_add(w, "y", ST_F32, 1, (const int64_t[]){-2}, v, &err) == BL_EINVAL &&
          strstr(err.msg, "y"));
  bl_err_clear(&err);
  T_CHECK(st_writer_add(w, "__metadata__", ST_F32, 1, (const int64_t[]){2}, v, &err) == BL_EINVAL);
  bl_err_clear(&err);
  T_CHECK(st_writer_add(w, "", ST_F32, 1, (const int64_t[]){2}, v, &err) == BL_EINVAL);
  bl_err_clear(&err);
  T_CHECK(st_writer_add(w, "z", (st_dtype)77, 1, (const int64_t[]){2}, v, &err) == BL_EINVAL);
  bl_err_clear(&err);
  char path[512];
  snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", tmpdir);
  T_CHECK(st_writer_finish(w, path, &err) == BL_EIO && strstr(err.msg, path));
  bl_err_clear(&err);
  T_CHECK(st_writer_add(w, "x", ST_F32, 1, (const int64_t[]){2}, v, &err) == BL_OK);
  snprintf(path, sizeof path, "%s/dup.safetensors", tmpdir);
  T_CHECK(st_writer_finish(w, path, &err) == BL_EINVAL && strstr(err.msg, "duplicate tensor x"));
  T_CHECK(access(path, F_OK) != 0);
  st_writer_free(w);
  st_writer_free(NULL);
}

/* ---------------------------------------------------------------- folders */

static void write_one(const char *path, const char *name, float value) {
  st_writer *w = st_writer_new();
  bl_err err = {0};
  T_CHECK(st_writer_add(w, name, ST_F32, 1, (const int64_t[]){1}, &value, &err) == BL_OK);
  T_CHECKF(st_writer_finish(w, path, &err) == BL_OK, "%s", err.msg);
  st_writer_free(w);
}

static void expect_fail_dir(const char *dir, const char *want, const char *what) {
  st_set *s = (st_set *)1;
  bl_err err = {0};
  bl_status st = st_open_dir(dir, &s, &err);
  T_CHECKF(st != BL_OK && s == NULL, "%s: opened", what);
  if (st == BL_OK) st_close(s);
  T_CHECKF(strstr(err.msg, dir) && strstr(err.msg, want), "%s: message lacks '%s': %s", what, want,
           err.msg);
}

static void test_dirs(void) {
  char dir[300], p[600];
  /* no index: every *.safetensors, in sorted order, other files ignored */
  snprintf(dir, sizeof dir, "%s/plain", tmpdir);
  mkdir(dir, 0755);
  snprintf(p, sizeof p, "%s/b.safetensors", dir);
  write_one(p, "x", 1);
  snprintf(p, sizeof p, "%s/a.safetensors", dir);
  write_one(p, "y", 2);
  snprintf(p, sizeof p, "%s/README.md", dir);
  write_file(p, "hi", 2);
  st_set *s = NULL;
  bl_err err = {0};
  T_CHECKF(st_open_dir(dir, &s, &err) == BL_OK, "%s", err.msg);
  if (s) {
    T_CHECK(st_count(s) == 2 && strcmp(st_at(s, 0)->name, "y") == 0);
    T_CHECK(st_find(s, "x") && ends_with(st_find(s, "x")->file, "/b.safetensors"));
    st_close(s);
  }
  /* a third file repeating a name */
  snprintf(p, sizeof p, "%s/c.safetensors", dir);
  write_one(p, "x", 3);
  expect_fail_dir(dir, "duplicate tensor x", "duplicate across files");

  /* index cases: shards s1 (tensor x) and s2 (tensor y) */
  snprintf(dir, sizeof dir, "%s/idx", tmpdir);
  mkdir(dir, 0755);
  snprintf(p, sizeof p, "%s/s1.safetensors", dir);
  write_one(p, "x", 1);
  snprintf(p, sizeof p, "%s/s2.safetensors", dir);
  write_one(p, "y", 2);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  static const struct {
    const char *json, *want;
  } cases[] = {
      {"{\"weight_map\":{\"x\":\"s2.safetensors\",\"y\":\"s1.safetensors\"}}",
       "tensor x is listed in shard s2.safetensors but found in"},
      {"{\"weight_map\":{\"x\":\"s2.safetensors\"}}",
       "tensor x is listed in shard s2.safetensors but not found"},
      {"{\"weight_map\":{\"x\":\"nope.safetensors\"}}", "nope.safetensors: cannot open"},
      {"{\"weight_map\":{\"x\":\"../s1.safetensors\"}}", "not a plain file name"},
      {"{\"weight_map\":{\"x\":\"\"}}", "not a plain file name"},
      {"{\"weight_map\":{\"x\":1}}", "not a plain file name"},
      {"{\"weight_map\":{}}", "weight_map is empty"},
      {"{\"metadata\":{}}", "no weight_map"},
      {"{\"weight_map\":", "not valid JSON"},
      {"", "not valid JSON"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_file(p, cases[i].json, strlen(cases[i].json));
    char what[32];
    snprintf(what, sizeof what, "index case %zu", i);
    expect_fail_dir(dir, cases[i].want, what);
  }
  /* a valid index naming a shard twice opens it once */
  const char *ok = "{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s2.safetensors\",\"x2\":\"s1."
                   "safetensors\"}}";
  write_file(p, ok, strlen(ok));
  expect_fail_dir(dir, "tensor x2 is listed in shard s1.safetensors but not found", "x2");
  ok = "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"y\":\"s2.safetensors\",\"x\":\"s1."
       "safetensors\"}}";
  write_file(p, ok, strlen(ok));
  s = NULL;
  T_CHECKF(st_open_dir(dir, &s, &err) == BL_OK, "%s", err.msg);
  if (s) {
    T_CHECK(st_count(s) == 2 && ends_with(st_find(s, "y")->file, "/s2.safetensors"));
    st_close(s);
  }

  snprintf(dir, sizeof dir, "%s/empty", tmpdir);
  mkdir(dir, 0755);
  expect_fail_dir(dir, "no model.safetensors.index.json and no *.safetensors", "empty folder");
  snprintf(dir, sizeof dir, "%s/missing", tmpdir);
  expect_fail_dir(dir, "cannot open folder", "missing folder");
}

/* --------------------------------------------------------- broken inputs */

static void expect_fail(const char *path, const char *want, const char *what) {
  st_set *s = (st_set *)1;
  bl_err err = {0};
  bl_status st = st_open_file(path, &s, &err);
  T_CHECKF(st != BL_OK && s == NULL, "%s: opened", what);
  if (st == BL_OK) st_close(s);
  T_CHECKF(err.status == st && strstr(err.msg, path), "%s: message lacks path: %s", what, err.msg);
  if (want)
    T_CHECKF(strstr(err.msg, want) != NULL, "%s: message lacks '%s': %s", what, want, err.msg);
}

/* Every prefix of a valid file must fail (tensor data reaches the end of
 * each file used here). Lengths go down by ftruncate. */
static void truncations(const char *src, const char *label) {
  size_t n = 0;
  uint8_t *p = read_file(src, &n);
  T_CHECKF(p != NULL, "cannot read %s", src);
  if (!p) return;
  char fallback[512], path[512];
  snprintf(fallback, sizeof fallback, "%s/trunc.safetensors", tmpdir);
  int fd = trunc_file(fallback, p, n, path, sizeof path);
  for (size_t len = n; len-- > 0;) {
    char what[64];
    snprintf(what, sizeof what, "%s truncated to %zu", label, len);
    if (ftruncate(fd, (off_t)len) != 0) abort();
    expect_fail(path, NULL, what);
  }
  close(fd);
  free(p);
}

static void test_truncations(void) {
  char src[512];
  snprintf(src, sizeof src, "%s/safetensors/dtypes.safetensors", data_dir);
  truncations(src, "dtypes");
  snprintf(src, sizeof src, "%s/w.safetensors", tmpdir);
  truncations(src, "writer output");
}

/* Header text, then data bytes; hlen overrides the length field if != 0. */
static void write_raw(const char *path, const char *json, size_t data_len, uint64_t hlen) {
  size_t jl = strlen(json);
  uint64_t h = hlen ? hlen : jl;
  uint8_t *p = calloc(1, 8 + jl + data_len);
  memcpy(p, &h, 8);
  memcpy(p + 8, json, jl);
  write_file(path, p, 8 + jl + data_len);
  free(p);
}

#define E(dtype, shape, offs)                                                                      \
  "{\"a\":{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offs "}}"

static void test_corrupt(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/corrupt.safetensors", tmpdir);
  static const struct {
    const char *json;
    size_t data;
    uint64_t hlen;
    const char *want;
  } cases[] = {
      {"", 0, UINT64_MAX, "header length 18446744073709551615 runs past end"},
      {"{}", 0, 100, "runs past end"},
      {"{\"a\":", 0, 0, "not valid JSON"},
      {"\xff\xfe{}", 0, 0, "not valid JSON"},
      {"[1,2]", 0, 0, "not a JSON object"},
      {"{}x", 0, 0, "junk after the JSON header"},
      {"{\"a\":1}", 0, 0, "tensor a: header entry is not an object"},
      {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, "tensor a has no dtype"},
      {E("5", "[1]", "[0,4]"), 4, 0, "tensor a has no dtype"},
      {E("\"F8_E4M3\"", "[1]", "[0,1]"), 1, 0, "tensor a has dtype F8_E4M3"},
      {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, 0, "tensor a has no shape"},
      {E("\"F32\"", "[-1,2]", "[0,4]"), 4, 0, "tensor a: dim 0 is negative"},
      {E("\"F32\"", "[2,-3]", "[0,4]"), 4, 0, "tensor a: dim 1 is negative"},
      {E("\"F32\"", "[1.5]", "[0,4]"), 4, 0, "tensor a: dim 0 is not"},
      {E("\"F32\"", "[\"2\"]", "[0,8]"), 8, 0, "tensor a: dim 0 is not"},
      {E("\"F32\"", "[1e300]", "[0,8]"), 8, 0, "tensor a: dim 0 is not"},
      {E("\"F32\"", "[9007199254740994]", "[0,8]"), 8, 0, "tensor a: dim 0 is not"},
      {E("\"U8\"", "[1,1,1,1,1,1,1,1,1]", "[0,1]"), 1, 0, "tensor a has 9 dims"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "[0]"), 4, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "[0,4,8]"), 8, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "[-4,0]"), 4, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "[0,1e300]"), 4, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "{}"), 4, 0, "tensor a: data_offsets"},
      {E("\"F32\"", "[1]", "[8,4]"), 8, 0, "end before they begin"},
      {E("\"F32\"", "[100]", "[0,400]"), 16, 0, "tensor a data ends at byte"},
      {E("\"F32\"", "[2,2]", "[0,8]"), 16, 0,
       "tensor a: data_offsets hold 8 bytes but shape and dtype F32 need 16"},
      {E("\"F32\"", "[4503599627370496,4503599627370496,4503599627370496]", "[0,8]"), 8, 0,
       "tensor a: shape overflows"},
      {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\","
       "\"shape\":[1],\"data_offsets\":[1,2]}}",
       2, 0, "duplicate tensor a"},
  };
  size_t nc = sizeof cases / sizeof cases[0];
  for (size_t i = 0; i < nc; i++) {
    write_raw(path, cases[i].json, cases[i].data, cases[i].hlen);
    char what[32];
    snprintf(what, sizeof what, "corrupt case %zu", i);
    expect_fail(path, cases[i].want, what);
  }
  write_file(path, "\x02\0\0\0", 4);
  expect_fail(path, "too short", "4-byte file");
  expect_fail(tmpdir, "not a regular file", "a folder");

  /* valid edge cases: empty header, metadata only, trailing padding */
  static const char *ok[] = {
      "{}",
      "{\"__metadata__\":{\"k\":\"v\"}}    ",
      ("{\"__metadata__\":{},\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}\n"),
  };
  for (size_t i = 0; i < 3; i++) {
    write_raw(path, ok[i], 8, 0);
    st_set *s = NULL;
    bl_err err = {0};
    T_CHECKF(st_open_file(path, &s, &err) == BL_OK, "ok case %zu: %s", i, err.msg);
    if (s) T_CHECK(st_count(s) == (i == 2 ? 1u : 0u));
    st_close(s);
  }
  st_close(NULL);
}

/* ----------------------------------------------------------------- driver */

static void rm_rf(const char *dir) {
  /* only the files this test creates */
  static const char *files[] = {"w.safetensors",
                                "trunc.safetensors",
                                "corrupt.safetensors",
                                "plain/a.safetensors",
                                "plain/b.safetensors",
                                "plain/c.safetensors",
                                "plain/README.md",
                                "idx/s1.safetensors",
                                "idx/s2.safetensors",
                                "idx/model.safetensors.index.json",
                                "plain",
                                "idx",
                                "empty"};
  char p[600];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    if (unlink(p) != 0) rmdir(p);
  }
  rmdir(dir);
}

int main(void) {
  data_dir = getenv("BALLAST_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  const char *tmp = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/bl_st_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 2;
  }
  test_dtypes();
  test_sharded();
  test_writer();
  test_writer_errors();
  test_dirs();
  test_truncations();
  test_corrupt();
  rm_rf(tmpdir);
  return T_DONE();
}
