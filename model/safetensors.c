/* safetensors reader and writer (see safetensors.h).
 *
 * File layout: u64 LE header length N, N bytes of JSON, then the data
 * region. Each JSON member (other than __metadata__) is
 *   "name": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}
 * with offsets relative to the data region.
 *
 * Invariants:
 * - Every file is mapped read-only; the JSON is copied out and parsed with
 *   cJSON; every offset and size is checked (overflow-safe) against the data
 *   region before a tensor is published, so st_tensor.data..+nbytes always
 *   lies inside its mapping. Tensor data need not be aligned: the format
 *   packs tensors back to back, so readers copy or use unaligned loads
 *   (files from this writer, like the reference's, do align each tensor to
 *   its dtype size).
 * - Tensor names are unique across all files of a set; lookup goes through
 *   an open-addressing hash table (models carry thousands of tensors).
 * - Every error message names the file and the tensor or key. */
#include "safetensors.h"

#include "bl_file.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

#define ST_MAX_HEADER (100u << 20)       /* the reference implementation's limit */
#define ST_MAX_INDEX  (64u << 20)        /* model.safetensors.index.json */
#define ST_MAX_EXACT  9007199254740992.0 /* 2^53: JSON numbers are doubles */
#define ST_INDEX_NAME "model.safetensors.index.json"

typedef struct st_file {
  char *path;
  const uint8_t *map;
  size_t size;
} st_file;

struct st_set {
  st_file *files;
  size_t n_files, cap_files;
  st_tensor *tensors;
  size_t n, cap;
  size_t *slots; /* hash of names: tensor index + 1, 0 empty; power-of-two size */
  size_t n_slots;
};

/* ---------------------------------------------------------------- dtypes */

static const struct {
  const char *name;
  size_t size;
} dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},   [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *st_dtype_name(st_dtype d) { return (size_t)d < N_DTYPES ? dtypes[d].name : "unknown"; }
size_t st_dtype_size(st_dtype d) { return (size_t)d < N_DTYPES ? dtypes[d].size : 0; }

static bool dtype_parse(const char *s, st_dtype *out) {
  for (size_t i = 0; i < N_DTYPES; i++)
    if (strcmp(s, dtypes[i].name) == 0) {
      *out = (st_dtype)i;
      return true;
    }
  return false;
}

/* ----------------------------------------------------------- name lookup */

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

/* Slot holding name, or the empty slot where it would go. */
static size_t *slot_of(const st_set *s, const char *name) {
  size_t mask = s->n_slots - 1, i = (size_t)hash_str(name) & mask;
  while (s->slots[i] && strcmp(s->tensors[s->slots[i] - 1].name, name) != 0)
    i = (i + 1) & mask;
  return &s->slots[i];
}

/* Keep the load factor <= 1/2 for one more insertion. */
static bool grow_slots(st_set *s) {
  if (2 * (s->n + 1) <= s->n_slots) return true;
  size_t n = s->n_slots ? 2 * s->n_slots : 64;
  size_t *slots = calloc(n, sizeof *slots);
  if (!slots) return false;
  free(s->slots);
  s->slots = slots;
  s->n_slots = n;
  for (size_t i = 0; i < s->n; i++)
    *slot_of(s, s->tensors[i].name) = i + 1;
  return true;
}

const st_tensor *st_find(const st_set *s, const char *name) {
  if (!s->n_slots) return NULL;
  size_t i1 = *slot_of(s, name);
  return i1 ? &s->tensors[i1 - 1] : NULL;
}

size_t st_count(const st_set *s) { return s->n; }
const st_tensor *st_at(const st_set *s, size_t i) { return i < s->n ? &s->tensors[i] : NULL; }

/* ------------------------------------------------------------ file parse */

/* A JSON number that is an exact non-negative integer (<= 2^53). */
static bool json_count(const cJSON *x, uint64_t *out) {
  if (!cJSON_IsNumber(x)) return false;
  double d = x->valuedouble;
  if (!(d >= 0 && d <= ST_MAX_EXACT) || d != floor(d)) return false;
  *out = (uint64_t)d;
  return true;
}

static bl_status parse_shape(const cJSON *e, const char *path, const char *name, st_tensor *t,
                             bl_err *err) {
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
  if (!cJSON_IsArray(shape))
    return bl_fail(err, BL_EFORMAT, "%s: tensor %s has no shape array", path, name);
  int nd = cJSON_GetArraySize(shape);
  if (nd > ST_MAX_DIMS)
    return bl_fail(err, BL_EUNSUPPORTED, "%s: tensor %s has %d dims (at most %d)", path, name, nd,
                   ST_MAX_DIMS);
  t->n_dims = nd;
  int d = 0;
  for (const cJSON *x = shape->child; x; x = x->next, d++) {
    uint64_t v;
    if (cJSON_IsNumber(x) && x->valuedouble < 0)
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s: dim %d is negative (%.0f)", path, name, d,
                     x->valuedouble);
    if (!json_count(x, &v))
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s: dim %d is not a non-negative integer", path,
                     name, d);
    t->shape[d] = (int64_t)v;
  }
  return BL_OK;
}

/* Parse one header entry into t (name and file are set by the caller);
 * data is the data region of dsize bytes, which starts at file byte base. */
static bl_status parse_entry(const cJSON *e, const char *path, const uint8_t *data, size_t dsize,
                             size_t base, st_tensor *t, bl_err *err) {
  const char *name = e->string;
  if (!cJSON_IsObject(e))
    return bl_fail(err, BL_EFORMAT, "%s: tensor %s: header entry is not an object", path, name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  if (!cJSON_IsString(dt))
    return bl_fail(err, BL_EFORMAT, "%s: tensor %s has no dtype string", path, name);
  if (!dtype_parse(dt->valuestring, &t->dtype))
    return bl_fail(err, BL_EUNSUPPORTED,
                   "%s: tensor %s has dtype %.40s, which ballast does not read", path, name,
                   dt->valuestring);
  bl_status st = parse_shape(e, path, name, t, err);
  if (st) return st;

  const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  uint64_t begin, end;
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_count(off->child, &begin) ||
      !json_count(off->child->next, &end))
    return bl_fail(err, BL_EFORMAT,
                   "%s: tensor %s: data_offsets is not a pair of non-negative integers", path,
                   name);
  uint64_t need = st_dtype_size(t->dtype);
  for (int d = 0; d < t->n_dims; d++) {
    uint64_t v = (uint64_t)t->shape[d];
    if (v && need > UINT64_MAX / v)
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s: shape overflows", path, name);
    need *= v;
  }
  if (end < begin)
    return bl_fail(err, BL_EFORMAT,
                   "%s: tensor %s: data_offsets [%llu, %llu] end before they begin", path, name,
                   (unsigned long long)begin, (unsigned long long)end);
  if (end > dsize) /* both < 2^53: base + end cannot overflow */
    return bl_fail(err, BL_EFORMAT,
                   "%s: tensor %s data ends at byte %llu past end of file (%llu bytes)", path, name,
                   (unsigned long long)(base + end), (unsigned long long)(base + dsize));
  if (end - begin != need)
    return bl_fail(err, BL_EFORMAT,
                   "%s: tensor %s: data_offsets hold %llu bytes but shape and dtype %s need %llu",
                   path, name, (unsigned long long)(end - begin), st_dtype_name(t->dtype),
                   (unsigned long long)need);
  t->data = data + begin;
  t->nbytes = (size_t)need;
  return BL_OK;
}

/* Map path read-only and record it in s->files (so st_close unmaps it). */
static bl_status map_file(st_set *s, const char *path, st_file **out, bl_err *err) {
  if (s->n_files == s->cap_files) {
    size_t cap = s->cap_files ? 2 * s->cap_files : 4;
    st_file *f = realloc(s->files, cap * sizeof *f);
    if (!f) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
    s->files = f;
    s->cap_files = cap;
  }
  st_file *f = &s->files[s->n_files];
  *f = (st_file){strdup(path), NULL, 0};
  if (!f->path) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  s->n_files++;
  bl_map map;
  bl_status st = bl_map_file(path, 8, "a safetensors header", &map, err);
  f->map = map.data;
  f->size = map.size;
  *out = f;
  return st;
}

static bl_status add_tensor(st_set *s, const char *path, const char *name, st_tensor *t,
                            bl_err *err) {
  if (!grow_slots(s)) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  size_t *slot = slot_of(s, name);
  if (*slot)
    return bl_fail(err, BL_EFORMAT, "%s: duplicate tensor %s (also in %s)", path, name,
                   s->tensors[*slot - 1].file);
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 64;
    st_tensor *a = realloc(s->tensors, cap * sizeof *a);
    if (!a) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
    s->tensors = a;
    s->cap = cap;
  }
  t->name = strdup(name);
  if (!t->name) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  s->tensors[s->n++] = *t;
  *slot = s->n;
  return BL_OK;
}

/* JSON header of a mapped file: length check, copy, parse, trailing bytes. */
static bl_status parse_header(const st_file *f, cJSON **root, size_t *hlen_out, bl_err *err) {
  uint64_t hlen;
  memcpy(&hlen, f->map, 8);
  if (hlen > f->size - 8)
    return bl_fail(err, BL_EFORMAT, "%s: header length %llu runs past end of file (%zu bytes)",
                   f->path, (unsigned long long)hlen, f->size);
  if (hlen > ST_MAX_HEADER)
    return bl_fail(err, BL_EFORMAT, "%s: header length %llu is over the %u byte limit", f->path,
                   (unsigned long long)hlen, ST_MAX_HEADER);
  /* a NUL-terminated copy: cJSON then never depends on the length check alone */
  char *buf = malloc((size_t)hlen + 1);
  if (!buf) return bl_fail(err, BL_ENOMEM, "%s: no memory for the header", f->path);
  memcpy(buf, f->map + 8, (size_t)hlen);
  buf[hlen] = '\0';
  const char *end = NULL;
  *root = cJSON_ParseWithLengthOpts(buf, (size_t)hlen, &end, 0);
  bl_status st = BL_OK;
  if (!*root) {
    st = bl_fail(err, BL_EFORMAT, "%s: header is not valid JSON (error near byte %zu)", f->path,
                 8 + (size_t)(end ? end - buf : 0));
  } else {
    /* writers pad the header with spaces; anything else after it is junk */
    for (const char *p = end; p < buf + hlen; p++)
      if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
        st = bl_fail(err, BL_EFORMAT, "%s: junk after the JSON header at byte %zu", f->path,
                     8 + (size_t)(p - buf));
        break;
      }
    if (!st && !cJSON_IsObject(*root))
      st = bl_fail(err, BL_EFORMAT, "%s: header is not a JSON object", f->path);
  }
  free(buf);
  if (st) {
    cJSON_Delete(*root);
    *root = NULL;
  }
  *hlen_out = (size_t)hlen;
  return st;
}

static bl_status load_file(st_set *s, const char *path, bl_err *err) {
  st_file *f = NULL;
  bl_status st = map_file(s, path, &f, err);
  if (st) return st;
  cJSON *root = NULL;
  size_t hlen = 0;
  st = parse_header(f, &root, &hlen, err);
  if (st) return st;
  size_t base = 8 + hlen;
  for (const cJSON *e = root->child; e && !st; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0) continue; /* free-form strings */
    st_tensor t = {.file = f->path};
    st = parse_entry(e, f->path, f->map + base, f->size - base, base, &t, err);
    if (!st) st = add_tensor(s, f->path, e->string, &t, err);
  }
  cJSON_Delete(root);
  return st;
}

bl_status st_open_file(const char *path, st_set **out, bl_err *err) {
  *out = NULL;
  st_set *s = calloc(1, sizeof *s);
  if (!s) return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  bl_status st = load_file(s, path, err);
  if (st) {
    st_close(s);
    return st;
  }
  *out = s;
  return BL_OK;
}

void st_close(st_set *s) {
  if (!s) return;
  for (size_t i = 0; i < s->n_files; i++) {
    bl_unmap(&(bl_map){s->files[i].map, s->files[i].size});
    free(s->files[i].path);
  }
  for (size_t i = 0; i < s->n; i++)
    free(s->tensors[i].name);
  free(s->files);
  free(s->tensors);
  free(s->slots);
  free(s);
}

/* ---------------------------------------------------------------- folders */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (p) {
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
  }
  return p;
}

/* Load dir/name for each name, in order. */
static bl_status load_all(st_set *s, const char *dir, char **names, size_t n, bl_err *err) {
  for (size_t i = 0; i < n; i++) {
    char *p = join(dir, names[i]);
    if (!p) return bl_fail(err, BL_ENOMEM, "%s: no memory", dir);
    bl_status st = load_file(s, p, err);
    free(p);
    if (st) return st;
  }
  return BL_OK;
}

/* Whole small file (at most limit bytes) into a NUL-terminated buffer. */
static bl_status slurp(const char *path, size_t limit, char **out, size_t *len, bl_err *err) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return bl_fail(err, BL_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  bl_status st = BL_OK;
  char *buf = NULL;
  if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = bl_fail(err, BL_EIO, "%s: not a readable regular file", path);
  } else if ((uint64_t)sb.st_size > limit) {
    st = bl_fail(err, BL_EFORMAT, "%s: larger than %zu bytes", path, limit);
  } else if (!(buf = malloc((size_t)sb.st_size + 1))) {
    st = bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  } else if (fread(buf, 1, (size_t)sb.st_size, fp) != (size_t)sb.st_size) {
    st = bl_fail(err, BL_EIO, "%s: read error", path);
  } else {
    buf[sb.st_size] = '\0';
    *out = buf;
    *len = (size_t)sb.st_size;
  }
  fclose(fp);
  if (st) free(buf);
  return st;
}

/* A shard name from the index must be a plain file name in the folder. */
static bool plain_name(const char *s) {
  return s[0] && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Every tensor the index lists must be in the shard it names. */
static bl_status check_index(const st_set *s, const char *ipath, const char *dir, const cJSON *wm,
                             bl_err *err) {
  size_t dl = strlen(dir);
  for (const cJSON *e = wm->child; e; e = e->next) {
    const st_tensor *t = st_find(s, e->string);
    if (!t)
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s is listed in shard %s but not found there",
                     ipath, e->string, e->valuestring);
    if (strcmp(t->file + dl + 1, e->valuestring) != 0) /* shard paths are dir + "/" + name */
      return bl_fail(err, BL_EFORMAT, "%s: tensor %s is listed in shard %s but found in %s", ipath,
                     e->string, e->valuestring, t->file);
  }
  return BL_OK;
}

static bl_status load_index(st_set *s, const char *dir, const char *ipath, bl_err *err) {
  char *text = NULL;
  size_t len = 0;
  bl_status st = slurp(ipath, ST_MAX_INDEX, &text, &len, err);
  if (st) return st;
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  char **shards = NULL;
  size_t n = 0;
  if (!root) {
    st = bl_fail(err, BL_EFORMAT, "%s: not valid JSON", ipath);
  } else if (!cJSON_IsObject(wm)) {
    st = bl_fail(err, BL_EFORMAT, "%s: no weight_map object", ipath);
  } else if (!(shards = malloc(((size_t)cJSON_GetArraySize(wm) + 1) * sizeof *shards))) {
    st = bl_fail(err, BL_ENOMEM, "%s: no memory", ipath);
  } else {
    for (const cJSON *e = wm->child; e && !st; e = e->next) {
      if (!cJSON_IsString(e) || !plain_name(e->valuestring))
        st = bl_fail(err, BL_EFORMAT, "%s: tensor %s: shard is not a plain file name", ipath,
                     e->string);
      else
        shards[n++] = e->valuestring;
    }
  }
  if (!st) { /* each shard once, in sorted order */
    qsort(shards, n, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
      if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
    if (u == 0) st = bl_fail(err, BL_EFORMAT, "%s: weight_map is empty", ipath);
    if (!st) st = load_all(s, dir, shards, u, err);
    if (!st) st = check_index(s, ipath, dir, wm, err);
  }
  free(shards);
  cJSON_Delete(root);
  return st;
}

static bl_status load_listing(st_set *s, const char *dir, bl_err *err) {
  DIR *d = opendir(dir);
  if (!d) return bl_fail(err, BL_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
  static const char ext[] = ".safetensors";
  const size_t el = sizeof ext - 1;
  char **names = NULL;
  size_t n = 0, cap = 0;
  bl_status st = BL_OK;
  for (struct dirent *e; !st && (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    if (l <= el || strcmp(e->d_name + l - el, ext) != 0) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 8;
      char **a = realloc(names, cap * sizeof *a);
      if (!a) {
        st = bl_fail(err, BL_ENOMEM, "%s: no memory", dir);
        break;
      }
      names = a;
    }
    if (!(names[n] = strdup(e->d_name)))
      st = bl_fail(err, BL_ENOMEM, "%s: no memory", dir);
    else
      n++;
  }
  closedir(d);
  if (!st && n == 0)
    st = bl_fail(err, BL_EIO, "%s: no %s and no *.safetensors files", dir, ST_INDEX_NAME);
  if (!st) {
    qsort(names, n, sizeof *names, cmp_str); /* readdir order is arbitrary */
    st = load_all(s, dir, names, n, err);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return st;
}

bl_status st_open_dir(const char *dir, st_set **out, bl_err *err) {
  *out = NULL;
  st_set *s = calloc(1, sizeof *s);
  char *ipath = join(dir, ST_INDEX_NAME);
  bl_status st;
  struct stat sb;
  if (!s || !ipath)
    st = bl_fail(err, BL_ENOMEM, "%s: no memory", dir);
  else if (stat(ipath, &sb) == 0)
    st = load_index(s, dir, ipath, err);
  else
    st = load_listing(s, dir, err);
  free(ipath);
  if (st) {
    st_close(s);
    return st;
  }
  *out = s;
  return BL_OK;
}

/* ----------------------------------------------------------------- writer */

typedef struct st_wtensor {
  char *name;
  st_dtype dtype;
  int n_dims;
  int64_t shape[ST_MAX_DIMS];
  void *data;
  size_t nbytes;
  uint64_t offset; /* in the data region, set by finish */
} st_wtensor;

struct st_writer {
  st_wtensor *t;
  size_t n, cap;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) {
    free(w->t[i].name);
    free(w->t[i].data);
  }
  free(w->t);
  free(w);
}

bl_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int n_dims,
                        const int64_t *shape, const void *data, bl_err *err) {
  if (!name || !name[0] || strcmp(name, "__metadata__") == 0)
    return bl_fail(err, BL_EINVAL, "safetensors writer: bad tensor name \"%s\"", name ? name : "");
  if ((size_t)dtype >= N_DTYPES)
    return bl_fail(err, BL_EINVAL, "safetensors writer: tensor %s: bad dtype %d", name, (int)dtype);
  if (n_dims < 0 || n_dims > ST_MAX_DIMS)
    return bl_fail(err, BL_EINVAL, "safetensors writer: tensor %s: %d dims (0 to %d)", name, n_dims,
                   ST_MAX_DIMS);
  uint64_t nb = st_dtype_size(dtype);
  for (int d = 0; d < n_dims; d++) {
    if (shape[d] < 0 || (double)shape[d] > ST_MAX_EXACT)
      return bl_fail(err, BL_EINVAL, "safetensors writer: tensor %s: dim %d = %lld", name, d,
                     (long long)shape[d]);
    if (shape[d] && nb > (uint64_t)ST_MAX_EXACT / (uint64_t)shape[d])
      return bl_fail(err, BL_EINVAL, "safetensors writer: tensor %s: too large", name);
    nb *= (uint64_t)shape[d];
  }
  if (w->n == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 64;
    st_wtensor *a = realloc(w->t, cap * sizeof *a);
    if (!a) return bl_fail(err, BL_ENOMEM, "safetensors writer: tensor %s: no memory", name);
    w->t = a;
    w->cap = cap;
  }
  st_wtensor t = {.name = strdup(name), .dtype = dtype, .n_dims = n_dims, .nbytes = (size_t)nb};
  t.data = malloc(nb ? (size_t)nb : 1);
  if (!t.name || !t.data) {
    free(t.name);
    free(t.data);
    return bl_fail(err, BL_ENOMEM, "safetensors writer: tensor %s: no memory for %llu bytes", name,
                   (unsigned long long)nb);
  }
  if (nb) memcpy(t.data, data, (size_t)nb);
  if (n_dims) memcpy(t.shape, shape, (size_t)n_dims * sizeof *shape);
  w->t[w->n++] = t;
  return BL_OK;
}

/* A growable text buffer; ok turns false on the first failed allocation. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
  bool ok;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (!b->ok) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->ok = false;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(sbuf *b, uint64_t v) {
  char tmp[24];
  sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v));
}

/* A JSON string literal: quotes, backslashes and control bytes escaped;
 * other bytes (UTF-8) pass through. */
static void sb_json_str(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      sb_put(b, esc, 2);
    } else if (ch < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", ch);
      sb_put(b, esc, 6);
    } else {
      sb_put(b, s, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static int cmp_wtensor(const void *a, const void *b) {
  return strcmp(((const st_wtensor *)a)->name, ((const st_wtensor *)b)->name);
}

/* Data order: widest dtype first, then by name (what the reference writer
 * does). The data region starts 8-byte aligned and every tensor's size is a
 * multiple of its dtype size, so each tensor lands aligned to its dtype. */
static int cmp_data_order(const void *a, const void *b) {
  const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
  size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
  if (sx != sy) return sx > sy ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* The header: __metadata__ first, then tensors by name with the offsets of
 * the data order; spaces pad it so the data region starts 8-byte aligned.
 * Integers are printed by hand so no offset is ever written in exponent
 * form (a reader that wants integers, like the reference, may reject it). */
static bool build_header(const st_writer *w, sbuf *b) {
  sb_str(b, "{\"__metadata__\":{\"format\":\"pt\"}");
  for (size_t i = 0; i < w->n; i++) {
    const st_wtensor *t = &w->t[i];
    sb_put(b, ",", 1);
    sb_json_str(b, t->name);
    sb_str(b, ":{\"dtype\":\"");
    sb_str(b, st_dtype_name(t->dtype));
    sb_str(b, "\",\"shape\":[");
    for (int d = 0; d < t->n_dims; d++) {
      if (d) sb_put(b, ",", 1);
      sb_u64(b, (uint64_t)t->shape[d]);
    }
    sb_str(b, "],\"data_offsets\":[");
    sb_u64(b, t->offset);
    sb_put(b, ",", 1);
    sb_u64(b, t->offset + t->nbytes);
    sb_str(b, "]}");
  }
  sb_put(b, "}", 1);
  while (b->ok && b->len % 8)
    sb_put(b, " ", 1);
  return b->ok;
}

static bl_status write_all(st_wtensor *const *order, size_t n, const sbuf *h, FILE *fp,
                           const char *tmp, bl_err *err) {
  uint64_t hl = h->len;
  bool ok = fwrite(&hl, 8, 1, fp) == 1 && fwrite(h->p, 1, h->len, fp) == h->len;
  for (size_t i = 0; ok && i < n; i++)
    ok = order[i]->nbytes == 0 ||
         fwrite(order[i]->data, 1, order[i]->nbytes, fp) == order[i]->nbytes;
  if (!ok) return bl_fail(err, BL_EIO, "%s: write failed: %s", tmp, strerror(errno));
  return BL_OK;
}

bl_status st_writer_finish(st_writer *w, const char *path, bl_err *err) {
  qsort(w->t, w->n, sizeof *w->t, cmp_wtensor);
  for (size_t i = 1; i < w->n; i++)
    if (strcmp(w->t[i - 1].name, w->t[i].name) == 0)
      return bl_fail(err, BL_EINVAL, "%s: duplicate tensor %s", path, w->t[i].name);
  st_wtensor **order = malloc((w->n ? w->n : 1) * sizeof *order);
  sbuf h = {.ok = true};
  if (order) {
    for (size_t i = 0; i < w->n; i++)
      order[i] = &w->t[i];
    qsort(order, w->n, sizeof *order, cmp_data_order);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
      order[i]->offset = off;
      off += order[i]->nbytes;
    }
  }
  if (!order || !build_header(w, &h)) {
    free(order);
    free(h.p);
    return bl_fail(err, BL_ENOMEM, "%s: no memory for the header", path);
  }
  /* write beside the target and rename, so a failed write never leaves a
   * half-written file under the real name */
  size_t pl = strlen(path);
  char *tmp = malloc(pl + 5);
  if (!tmp) {
    free(order);
    free(h.p);
    return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  }
  memcpy(tmp, path, pl);
  memcpy(tmp + pl, ".tmp", 5);
  bl_status st = BL_OK;
  FILE *fp = fopen(tmp, "wb");
  if (!fp) {
    st = bl_fail(err, BL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
  } else {
    st = write_all(order, w->n, &h, fp, tmp, err);
    if (fclose(fp) != 0 && !st)
      st = bl_fail(err, BL_EIO, "%s: write failed: %s", tmp, strerror(errno));
    if (!st && rename(tmp, path) != 0)
      st = bl_fail(err, BL_EIO, "%s: cannot rename %s: %s", path, tmp, strerror(errno));
    if (st) unlink(tmp);
  }
  free(tmp);
  free(order);
  free(h.p);
  return st;
}
