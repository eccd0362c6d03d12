/* GGUF v2/v3 reader (see gguf.h) and the dequantizers for the block types
 * ballast reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
 *
 * Invariants:
 * - The file is mapped read-only and parsed once, at open, by a cursor that
 *   checks the bytes left before every read, so no input can make the
 *   parser touch memory outside the mapping. Once open succeeds, every kv
 *   value and every tensor's data lies inside the mapping, and the getters
 *   below read the (already validated) mapping without further checks.
 * - Counts come straight from the file, so sizes are computed with explicit
 *   overflow checks before anything is allocated or added.
 * - Keys and tensor names are indexed by open-addressing hash tables kept in
 *   a private wrapper (gguf_impl) around the public gguf_file, so lookups
 *   stay O(1) while the header's struct stays as it is.
 * - Every error message starts with the file path and names the key or the
 *   tensor at fault. Fields are read in host order: little-endian only. */
#include "gguf.h"

#include "bl_file.h"

#include <fcntl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bl_half.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader reads little-endian fields in host order"
#endif

#define GGUF_HEADER_BYTES     24u /* magic, version, n_tensors, n_kv */
#define GGUF_DEFAULT_ALIGN    32u
#define GGUF_MAX_DIMS         4u
#define GGUF_MAX_NESTING      8   /* arrays of arrays: deeper is surely garbage */
#define GGUF_MIN_KV_BYTES     13u /* key length, empty key, type, a 1-byte value */
#define GGUF_MIN_TENSOR_BYTES 32u /* name length, n_dims, one ne, type, offset */
#define SHOWN                 120 /* bytes of a key or tensor name put in messages */

/* ---------------------------------------------------------------- hashing */

/* One slot: the string (pointing into the mapping) and its index + 1
 * (0 marks an empty slot). Capacity is a power of two, load <= 1/2. */
typedef struct str_slot {
  const char *ptr;
  size_t len;
  size_t idx1;
} str_slot;

typedef struct str_tab {
  str_slot *slots;
  size_t cap;
} str_tab;

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
  return h;
}

static bool tab_init(str_tab *t, uint64_t n) {
  size_t cap = 16;
  while (cap < 2 * n)
    cap *= 2; /* n is bounded by the file size, no overflow */
  t->slots = calloc(cap, sizeof *t->slots);
  t->cap = cap;
  return t->slots != NULL;
}

/* Slot holding s, or the empty slot where s would go. */
static str_slot *tab_slot(const str_tab *t, const char *p, size_t n) {
  size_t mask = t->cap - 1, i = (size_t)hash_bytes(p, n) & mask;
  while (t->slots[i].idx1 && !(t->slots[i].len == n && memcmp(t->slots[i].ptr, p, n) == 0))
    i = (i + 1) & mask;
  return &t->slots[i];
}

/* false when s is already present (a duplicate). */
static bool tab_insert(str_tab *t, gguf_str s, size_t idx) {
  str_slot *slot = tab_slot(t, s.ptr, s.len);
  if (slot->idx1) return false;
  *slot = (str_slot){s.ptr, s.len, idx + 1};
  return true;
}

static size_t tab_find(const str_tab *t, const char *p, size_t n) {
  if (!t->slots) return 0;
  return tab_slot(t, p, n)->idx1;
}

typedef struct gguf_impl {
  gguf_file pub; /* first, so gguf_file * and gguf_impl * convert */
  str_tab kv_tab, t_tab;
  bool mapped;
} gguf_impl;

/* ----------------------------------------------------------------- cursor */

typedef struct cursor {
  const uint8_t *p;
  size_t size, pos;
  const char *path;
  bl_err *err;
} cursor;

static size_t cur_left(const cursor *c) { return c->size - c->pos; }

static bool cur_skip(cursor *c, size_t n) {
  if (n > cur_left(c)) return false;
  c->pos += n;
  return true;
}

static bool cur_u32(cursor *c, uint32_t *v) {
  if (cur_left(c) < 4) return false;
  memcpy(v, c->p + c->pos, 4);
  c->pos += 4;
  return true;
}

static bool cur_u64(cursor *c, uint64_t *v) {
  if (cur_left(c) < 8) return false;
  memcpy(v, c->p + c->pos, 8);
  c->pos += 8;
  return true;
}

static bool cur_str(cursor *c, gguf_str *s) {
  uint64_t n;
  if (!cur_u64(c, &n) || n > cur_left(c)) return false;
  s->ptr = (const char *)c->p + c->pos;
  s->len = (size_t)n;
  c->pos += (size_t)n;
  return true;
}

/* Length of a name as shown in messages (long names are cut). */
static int shown(gguf_str s) { return s.len > SHOWN ? SHOWN : (int)s.len; }

/* Record "<path>: <message>" and return s. */
__attribute__((format(printf, 3, 4))) static bl_status cur_fail(cursor *c, bl_status s,
                                                                const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return bl_fail(c->err, s, "%s: %s", c->path, msg);
}

/* A read ran past the end of the file; `what` says what was being read. */
#define TRUNC(c, what, ...)                                                                        \
  cur_fail(c, BL_EFORMAT, "file ends at byte %zu while reading " what, (c)->size, __VA_ARGS__)

/* --------------------------------------------------------------- metadata */

/* Bytes of a fixed-size value type; 0 for strings, arrays and unknown types. */
static size_t vtype_size(uint32_t t) {
  switch (t) {
  case GGUF_V_UINT8:
  case GGUF_V_INT8:
  case GGUF_V_BOOL: return 1;
  case GGUF_V_UINT16:
  case GGUF_V_INT16: return 2;
  case GGUF_V_UINT32:
  case GGUF_V_INT32:
  case GGUF_V_FLOAT32: return 4;
  case GGUF_V_UINT64:
  case GGUF_V_INT64:
  case GGUF_V_FLOAT64: return 8;
  default: return 0;
  }
}

static const char *vtype_name(uint32_t t) {
  static const char *names[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                "int32",  "float32", "bool",   "string", "array",
                                "uint64", "int64",   "float64"};
  return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static bl_status skip_value(cursor *c, uint32_t t, int depth, gguf_str key);

/* Validate and step over n elements of type et. strs, when given, receives
 * the strings of a string array (n entries). */
static bl_status skip_array(cursor *c, uint32_t et, uint64_t n, int depth, gguf_str key,
                            gguf_str *strs) {
  size_t sz = vtype_size(et);
  if (sz) {
    if (n > cur_left(c) / sz)
      return TRUNC(c, "array %.*s (%llu %s)", shown(key), key.ptr, (unsigned long long)n,
                   vtype_name(et));
    c->pos += (size_t)n * sz;
    return BL_OK;
  }
  if (et == GGUF_V_STRING) {
    for (uint64_t i = 0; i < n; i++) {
      gguf_str s;
      if (!cur_str(c, &s))
        return TRUNC(c, "string %llu of array %.*s", (unsigned long long)i, shown(key), key.ptr);
      if (strs) strs[i] = s;
    }
    return BL_OK;
  }
  if (et == GGUF_V_ARRAY) {
    if (depth >= GGUF_MAX_NESTING)
      return cur_fail(c, BL_EFORMAT, "key %.*s: arrays nested deeper than %d", shown(key), key.ptr,
                      GGUF_MAX_NESTING);
    for (uint64_t i = 0; i < n; i++) {
      bl_status st = skip_value(c, GGUF_V_ARRAY, depth, key);
      if (st) return st;
    }
    return BL_OK;
  }
  return cur_fail(c, BL_EFORMAT, "key %.*s: array of unknown value type %u", shown(key), key.ptr,
                  et);
}

/* Validate and step over one value of type t (depth = enclosing arrays). */
static bl_status skip_value(cursor *c, uint32_t t, int depth, gguf_str key) {
  size_t sz = vtype_size(t);
  if (sz) {
    if (!cur_skip(c, sz)) return TRUNC(c, "the value of key %.*s", shown(key), key.ptr);
    return BL_OK;
  }
  if (t == GGUF_V_STRING) {
    gguf_str s;
    if (!cur_str(c, &s)) return TRUNC(c, "the string value of key %.*s", shown(key), key.ptr);
    return BL_OK;
  }
  if (t == GGUF_V_ARRAY) {
    uint32_t et;
    uint64_t n;
    if (!cur_u32(c, &et) || !cur_u64(c, &n))
      return TRUNC(c, "the array header of key %.*s", shown(key), key.ptr);
    return skip_array(c, et, n, depth + 1, key, NULL);
  }
  return cur_fail(c, BL_EFORMAT, "key %.*s has unknown value type %u", shown(key), key.ptr, t);
}

static bl_status parse_kv(cursor *c, gguf_impl *g, uint64_t i) {
  gguf_kv *kv = &g->pub.kvs[i];
  uint32_t type;
  if (!cur_str(c, &kv->key))
    return TRUNC(c, "the key of metadata entry %llu", (unsigned long long)i);
  if (!cur_u32(c, &type)) return TRUNC(c, "the type of key %.*s", shown(kv->key), kv->key.ptr);
  kv->type = (gguf_vtype)type;
  bl_status st;
  if (type == GGUF_V_ARRAY) {
    uint32_t et;
    uint64_t n;
    if (!cur_u32(c, &et) || !cur_u64(c, &n))
      return TRUNC(c, "the array header of key %.*s", shown(kv->key), kv->key.ptr);
    kv->arr_type = (gguf_vtype)et;
    kv->arr_len = n;
    kv->data = c->p + c->pos;
    if (et == GGUF_V_STRING && n > 0) {
      /* each string takes at least its 8-byte length: bounds the allocation */
      if (n > cur_left(c) / 8)
        return TRUNC(c, "array %.*s (%llu strings)", shown(kv->key), kv->key.ptr,
                     (unsigned long long)n);
      kv->strs = malloc((size_t)n * sizeof *kv->strs);
      if (!kv->strs)
        return cur_fail(c, BL_ENOMEM, "no memory for the %llu strings of key %.*s",
                        (unsigned long long)n, shown(kv->key), kv->key.ptr);
    }
    st = skip_array(c, et, n, 1, kv->key, kv->strs);
  } else {
    kv->data = c->p + c->pos;
    st = skip_value(c, type, 0, kv->key);
  }
  if (st) return st;
  if (!tab_insert(&g->kv_tab, kv->key, (size_t)i))
    return cur_fail(c, BL_EFORMAT, "duplicate key %.*s", shown(kv->key), kv->key.ptr);
  return BL_OK;
}

/* ---------------------------------------------------------------- tensors */

bool gguf_type_block(gguf_ttype t, size_t *elems, size_t *bytes) {
  size_t e, b;
  switch (t) {
  case GGUF_T_F32: e = 1, b = 4; break;
  case GGUF_T_F16: e = 1, b = 2; break;
  case GGUF_T_BF16: e = 1, b = 2; break;
  case GGUF_T_Q8_0: e = 32, b = 34; break; /* fp16 d, 32 x int8 */
  case GGUF_T_Q4_0: e = 32, b = 18; break; /* fp16 d, 16 bytes of nibbles */
  case GGUF_T_Q4_1: e = 32, b = 20; break; /* fp16 d, fp16 m, 16 bytes */
  default: return false;
  }
  if (elems) *elems = e;
  if (bytes) *bytes = b;
  return true;
}

const char *gguf_type_name(gguf_ttype t) {
  switch (t) {
  case GGUF_T_F32: return "F32";
  case GGUF_T_F16: return "F16";
  case GGUF_T_BF16: return "BF16";
  case GGUF_T_Q8_0: return "Q8_0";
  case GGUF_T_Q4_0: return "Q4_0";
  case GGUF_T_Q4_1: return "Q4_1";
  }
  return "unknown";
}

/* Read one tensor info; its data offset (relative to the data section) goes
 * to *offset and is checked later, once the data section start is known. */
static bl_status parse_tensor_info(cursor *c, gguf_impl *g, uint64_t i, uint64_t *offset) {
  gguf_tensor *t = &g->pub.tensors[i];
  uint32_t type;
  if (!cur_str(c, &t->name)) return TRUNC(c, "the name of tensor %llu", (unsigned long long)i);
  gguf_str nm = t->name;
  if (!cur_u32(c, &t->n_dims)) return TRUNC(c, "tensor %.*s", shown(nm), nm.ptr);
  if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
    return cur_fail(c, BL_EFORMAT, "tensor %.*s has %u dims (1 to %u allowed)", shown(nm), nm.ptr,
                    t->n_dims, GGUF_MAX_DIMS);
  for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
    t->ne[d] = 1;
    if (d < t->n_dims && !cur_u64(c, &t->ne[d]))
      return TRUNC(c, "the dims of tensor %.*s", shown(nm), nm.ptr);
    /* ggml stores dims as int64: a set top bit is a negative dim */
    if (t->ne[d] > (uint64_t)INT64_MAX)
      return cur_fail(c, BL_EFORMAT, "tensor %.*s: dim %u is negative (%lld)", shown(nm), nm.ptr, d,
                      (long long)t->ne[d]);
  }
  if (!cur_u32(c, &type) || !cur_u64(c, offset)) return TRUNC(c, "tensor %.*s", shown(nm), nm.ptr);
  t->type = (gguf_ttype)type;
  size_t be, bb;
  if (!gguf_type_block(t->type, &be, &bb))
    return cur_fail(c, BL_EUNSUPPORTED,
                    "tensor %.*s has tensor type %u, which ballast does not read (F32, F16, BF16, "
                    "Q8_0, Q4_0, Q4_1)",
                    shown(nm), nm.ptr, type);
  if (t->ne[0] % be)
    return cur_fail(c, BL_EFORMAT,
                    "tensor %.*s: ne[0] = %llu is not a multiple of the %s block (%zu)", shown(nm),
                    nm.ptr, (unsigned long long)t->ne[0], gguf_type_name(t->type), be);
  uint64_t nel = 1;
  for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
    if (t->ne[d] && nel > (uint64_t)INT64_MAX / t->ne[d])
      return cur_fail(c, BL_EFORMAT, "tensor %.*s: element count overflows", shown(nm), nm.ptr);
    nel *= t->ne[d];
  }
  uint64_t nblocks = nel / be;
  if (nblocks > SIZE_MAX / bb)
    return cur_fail(c, BL_EFORMAT, "tensor %.*s: byte size overflows", shown(nm), nm.ptr);
  t->nbytes = (size_t)nblocks * bb;
  if (!tab_insert(&g->t_tab, nm, (size_t)i))
    return cur_fail(c, BL_EFORMAT, "duplicate tensor %.*s", shown(nm), nm.ptr);
  return BL_OK;
}

/* Alignment of the data section: general.alignment (a power of two) or 32. */
static bl_status read_alignment(cursor *c, gguf_impl *g) {
  g->pub.alignment = GGUF_DEFAULT_ALIGN;
  if (!gguf_find_kv(&g->pub, "general.alignment")) return BL_OK;
  uint32_t a;
  bl_status st = gguf_get_u32(&g->pub, "general.alignment", &a, c->err);
  if (st) return st;
  if (a == 0 || (a & (a - 1)))
    return cur_fail(c, BL_EFORMAT, "general.alignment = %u is not a power of two", a);
  g->pub.alignment = a;
  return BL_OK;
}

/* Place every tensor: data section start + offset, aligned, inside the file. */
static bl_status place_tensors(cursor *c, gguf_impl *g, const uint64_t *offsets) {
  size_t align = g->pub.alignment;
  uint64_t start = ((uint64_t)c->pos + align - 1) / align * align; /* pos <= size: no overflow */
  for (uint64_t i = 0; i < g->pub.n_tensors; i++) {
    gguf_tensor *t = &g->pub.tensors[i];
    gguf_str nm = t->name;
    if (offsets[i] % align)
      return cur_fail(c, BL_EFORMAT,
                      "tensor %.*s: data offset %llu is not a multiple of the alignment %zu",
                      shown(nm), nm.ptr, (unsigned long long)offsets[i], align);
    if (offsets[i] > UINT64_MAX - start || start + offsets[i] > UINT64_MAX - t->nbytes)
      return cur_fail(c, BL_EFORMAT, "tensor %.*s: data offset %llu is out of range", shown(nm),
                      nm.ptr, (unsigned long long)offsets[i]);
    uint64_t end = start + offsets[i] + t->nbytes;
    if (end > c->size)
      return cur_fail(c, BL_EFORMAT,
                      "tensor %.*s data ends at byte %llu past end of file (%zu bytes)", shown(nm),
                      nm.ptr, (unsigned long long)end, c->size);
    t->data = c->p + start + offsets[i];
  }
  return BL_OK;
}

/* ------------------------------------------------------------------- open */

static bl_status parse(cursor *c, gguf_impl *g) {
  gguf_file *f = &g->pub;
  uint64_t n_tensors, n_kv;
  if (c->size < GGUF_HEADER_BYTES)
    return cur_fail(c, BL_EFORMAT, "file is %zu bytes, too short for a GGUF header (%u)", c->size,
                    GGUF_HEADER_BYTES);
  if (memcmp(c->p, "GGUF", 4) != 0)
    return cur_fail(c, BL_EFORMAT, "not a GGUF file (bad magic %02x %02x %02x %02x)", c->p[0],
                    c->p[1], c->p[2], c->p[3]);
  c->pos = 4;
  cur_u32(c, &f->version);
  if (f->version != 2 && f->version != 3)
    return cur_fail(c, BL_EUNSUPPORTED,
                    "GGUF version %u is not supported (2 or 3; big-endian files are not read)",
                    f->version);
  cur_u64(c, &n_tensors);
  cur_u64(c, &n_kv);
  /* each entry takes a minimum number of bytes: rejects huge counts early */
  if (n_kv > cur_left(c) / GGUF_MIN_KV_BYTES)
    return cur_fail(c, BL_EFORMAT,
                    "header claims %llu metadata entries, more than a %zu-byte file holds "
                    "(truncated or corrupt)",
                    (unsigned long long)n_kv, c->size);
  if (n_tensors > cur_left(c) / GGUF_MIN_TENSOR_BYTES)
    return cur_fail(
        c, BL_EFORMAT,
        "header claims %llu tensors, more than a %zu-byte file holds (truncated or corrupt)",
        (unsigned long long)n_tensors, c->size);
  f->kvs = calloc(n_kv ? n_kv : 1, sizeof *f->kvs);
  f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
  uint64_t *offsets = calloc(n_tensors ? n_tensors : 1, sizeof *offsets);
  if (!f->kvs || !f->tensors || !offsets || !tab_init(&g->kv_tab, n_kv) ||
      !tab_init(&g->t_tab, n_tensors)) {
    free(offsets);
    return cur_fail(c, BL_ENOMEM, "no memory for %llu keys and %llu tensors",
                    (unsigned long long)n_kv, (unsigned long long)n_tensors);
  }
  /* counts are published only as entries are parsed, so close() frees the
   * string arrays of exactly the entries that exist */
  bl_status st = BL_OK;
  for (uint64_t i = 0; i < n_kv && !st; i++) {
    f->n_kv = i + 1;
    st = parse_kv(c, g, i);
  }
  if (!st) st = read_alignment(c, g);
  for (uint64_t i = 0; i < n_tensors && !st; i++) {
    f->n_tensors = i + 1;
    st = parse_tensor_info(c, g, i, &offsets[i]);
  }
  if (!st) st = place_tensors(c, g, offsets);
  free(offsets);
  return st;
}

bl_status gguf_open(const char *path, gguf_file **out, bl_err *err) {
  *out = NULL;
  gguf_impl *g = calloc(1, sizeof *g);
  char *p = strdup(path);
  if (!g || !p) {
    free(g);
    free(p);
    return bl_fail(err, BL_ENOMEM, "%s: no memory", path);
  }
  g->pub.path = p;
  bl_map map;
  bl_status st = bl_map_file(path, GGUF_HEADER_BYTES, "a GGUF header", &map, err);
  if (st == BL_OK) {
    g->pub.map = map.data;
    g->pub.size = map.size;
    g->mapped = true;
    cursor c = {g->pub.map, g->pub.size, 0, path, err};
    st = parse(&c, g);
  }
  if (st) {
    gguf_close(&g->pub);
    return st;
  }
  *out = &g->pub;
  return BL_OK;
}

void gguf_close(gguf_file *f) {
  if (!f) return;
  gguf_impl *g = (gguf_impl *)f;
  if (g->mapped) bl_unmap(&(bl_map){f->map, f->size});
  if (f->kvs)
    for (uint64_t i = 0; i < f->n_kv; i++)
      free(f->kvs[i].strs);
  free(f->kvs);
  free(f->tensors);
  free(g->kv_tab.slots);
  free(g->t_tab.slots);
  free(f->path);
  free(g);
}

/* ---------------------------------------------------------------- lookups */

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
  const gguf_impl *g = (const gguf_impl *)f;
  size_t i1 = tab_find(&g->kv_tab, key, strlen(key));
  return i1 ? &f->kvs[i1 - 1] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
  const gguf_impl *g = (const gguf_impl *)f;
  size_t i1 = tab_find(&g->t_tab, name, strlen(name));
  return i1 ? &f->tensors[i1 - 1] : NULL;
}

bool gguf_str_eq(gguf_str s, const char *c) {
  size_t n = strlen(c);
  return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* Integer value of a fixed-size integer (or bool) at p; false for others.
 * *neg is set when the value is a negative signed integer. */
static bool read_int(uint32_t type, const uint8_t *p, uint64_t *u, bool *neg) {
  *neg = false;
  switch (type) {
  case GGUF_V_UINT8:
  case GGUF_V_BOOL: *u = p[0]; return true;
  case GGUF_V_INT8: {
    int8_t v;
    memcpy(&v, p, 1);
    *neg = v < 0;
    *u = (uint64_t)(int64_t)v;
    return true;
  }
  case GGUF_V_UINT16: {
    uint16_t v;
    memcpy(&v, p, 2);
    *u = v;
    return true;
  }
  case GGUF_V_INT16: {
    int16_t v;
    memcpy(&v, p, 2);
    *neg = v < 0;
    *u = (uint64_t)(int64_t)v;
    return true;
  }
  case GGUF_V_UINT32: {
    uint32_t v;
    memcpy(&v, p, 4);
    *u = v;
    return true;
  }
  case GGUF_V_INT32: {
    int32_t v;
    memcpy(&v, p, 4);
    *neg = v < 0;
    *u = (uint64_t)(int64_t)v;
    return true;
  }
  case GGUF_V_UINT64: memcpy(u, p, 8); return true;
  case GGUF_V_INT64: {
    int64_t v;
    memcpy(&v, p, 8);
    *neg = v < 0;
    *u = (uint64_t)v;
    return true;
  }
  default: return false;
  }
}

static const gguf_kv *need_kv(const gguf_file *f, const char *key, bl_err *err) {
  const gguf_kv *kv = gguf_find_kv(f, key);
  if (!kv) bl_fail(err, BL_EFORMAT, "%s: key %s is missing", f->path, key);
  return kv;
}

bl_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, bl_err *err) {
  const gguf_kv *kv = need_kv(f, key, err);
  if (!kv) return BL_EFORMAT;
  uint64_t u;
  bool neg;
  if (kv->type == GGUF_V_BOOL || !read_int(kv->type, kv->data, &u, &neg))
    return bl_fail(err, BL_EFORMAT, "%s: key %s has type %s, expected an integer", f->path, key,
                   vtype_name(kv->type));
  if (neg || u > UINT32_MAX)
    return bl_fail(err, BL_ERANGE, "%s: key %s = %s%llu does not fit in uint32", f->path, key,
                   neg ? "-" : "", neg ? 0ull - (unsigned long long)u : (unsigned long long)u);
  *out = (uint32_t)u;
  return BL_OK;
}

bl_status gguf_get_f32(const gguf_file *f, const char *key, float *out, bl_err *err) {
  const gguf_kv *kv = need_kv(f, key, err);
  if (!kv) return BL_EFORMAT;
  if (kv->type == GGUF_V_FLOAT32) {
    memcpy(out, kv->data, 4);
  } else if (kv->type == GGUF_V_FLOAT64) {
    double d;
    memcpy(&d, kv->data, 8);
    *out = (float)d;
  } else {
    return bl_fail(err, BL_EFORMAT, "%s: key %s has type %s, expected a float", f->path, key,
                   vtype_name(kv->type));
  }
  return BL_OK;
}

bl_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, bl_err *err) {
  const gguf_kv *kv = need_kv(f, key, err);
  if (!kv) return BL_EFORMAT;
  if (kv->type != GGUF_V_STRING)
    return bl_fail(err, BL_EFORMAT, "%s: key %s has type %s, expected a string", f->path, key,
                   vtype_name(kv->type));
  uint64_t n;
  memcpy(&n, kv->data, 8); /* validated at open: the string lies in the file */
  out->ptr = (const char *)kv->data + 8;
  out->len = (size_t)n;
  return BL_OK;
}

int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i) {
  if (kv->type != GGUF_V_ARRAY || i >= kv->arr_len) return 0;
  size_t sz = vtype_size(kv->arr_type);
  if (!sz) return 0;
  const uint8_t *p = kv->data + i * sz;
  uint64_t u;
  bool neg;
  if (read_int(kv->arr_type, p, &u, &neg)) return (int64_t)u; /* two's complement round trip */
  double d;
  if (kv->arr_type == GGUF_V_FLOAT32) {
    float v;
    memcpy(&v, p, 4);
    d = v;
  } else {
    memcpy(&d, p, 8);
  }
  /* clamp so the conversion is defined for any stored float */
  if (isnan(d)) return 0;
  if (d >= 9223372036854775807.0) return INT64_MAX;
  if (d <= -9223372036854775808.0) return INT64_MIN;
  return (int64_t)d;
}

/* ---------------------------------------------------------------- dequant */

static float rd_half(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return bl_half_to_float(h);
}

void gguf_dequant(gguf_ttype t, const void *src, float *dst, size_t n) {
  const uint8_t *s = src; /* no alignment assumed: general.alignment may be 1 */
  size_t nb = n / 32;     /* blocks, for the block types */
  switch (t) {
  case GGUF_T_F32: memcpy(dst, s, n * 4); return;
  case GGUF_T_F16:
    for (size_t i = 0; i < n; i++)
      dst[i] = rd_half(s + 2 * i);
    return;
  case GGUF_T_BF16:
    for (size_t i = 0; i < n; i++) {
      uint16_t b;
      memcpy(&b, s + 2 * i, 2);
      dst[i] = bl_bf16_to_float(b);
    }
    return;
  case GGUF_T_Q8_0: /* w = d * q, q int8 */
    for (size_t b = 0; b < nb; b++, s += 34, dst += 32) {
      float d = rd_half(s);
      for (int j = 0; j < 32; j++)
        dst[j] = d * (float)(int8_t)s[2 + j];
    }
    return;
  case GGUF_T_Q4_0: /* w = d * (q - 8); low nibbles are elements 0-15 */
    for (size_t b = 0; b < nb; b++, s += 18, dst += 32) {
      float d = rd_half(s);
      for (int j = 0; j < 16; j++) {
        dst[j] = d * (float)((s[2 + j] & 15) - 8);
        dst[j + 16] = d * (float)((s[2 + j] >> 4) - 8);
      }
    }
    return;
  case GGUF_T_Q4_1: /* w = d * q + m */
    for (size_t b = 0; b < nb; b++, s += 20, dst += 32) {
      float d = rd_half(s), m = rd_half(s + 2);
      for (int j = 0; j < 16; j++) {
        dst[j] = d * (float)(s[4 + j] & 15) + m;
        dst[j + 16] = d * (float)(s[4 + j] >> 4) + m;
      }
    }
    return;
  }
  memset(dst, 0, n * sizeof *dst); /* unknown type: defined output, never garbage */
}
