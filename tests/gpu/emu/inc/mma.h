/* Emulator stand-in for <mma.h>: the subset of nvcuda::wmma the kernels use
 * (16x16x16 tiles, __half matrix_a/matrix_b in row or column major, float
 * accumulators), with the API's semantics and its rules checked.
 *
 * Every op ending in _sync is warp-collective, as on the GPU: all 32 lanes
 * must call it together (the warp barrier, as for shuffles; a lane that has
 * exited aborts), with the same pointer, ldm and layout (checked: a
 * divergent call aborts with the op's name). fill_fragment is collective too
 * here and checks that every lane fills with the same value, which is how
 * the API documents it must be called (the element mapping is opaque).
 * Pointers must be 256-bit aligned and ldm a multiple of 16 bytes, as the
 * CUDA guide requires; a violation aborts.
 *
 * Each lane's fragment holds the whole 16x16 tile (row-major by the tile's
 * own row and column) instead of the GPU's share of it; the tile is private
 * to the emulator (emu_tile, not the API's x[]), so a kernel that reads
 * fragment elements directly does not compile here. The work is split as
 * on the GPU: each lane loads, computes or stores 8 of the 256 elements and
 * the lanes exchange them through a per-warp buffer between warp barriers.
 * mma_sync: d = c + sum_k a[i][k] * b[k][j] in float, each product exact
 * (half x half fits a float), the 16 products summed in order and then
 * added to c (tensor cores truncate rather than round some of these adds;
 * the kernels' tests allow for either). */
#pragma once
#include <type_traits>

#include "emu_cuda.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int m, int n, int k, typename T, typename Layout = void> class fragment {
  static_assert(m == 16 && n == 16 && k == 16, "emu: only 16x16x16 fragments");

public:
  T emu_tile[256]; /* [row][col] of the tile; emulator-private */
};

/* ---- the warp-collective machinery ---- */

struct emu_wmma_call {
  const char *op;
  const void *p;
  unsigned ldm;
  int layout;
  uint32_t value; /* fill_fragment's value, as bits */
};
/* Per thread: the arguments of its last two collective calls (by the
 * parity of its call count, emu_wmma_seq), so lane 0 may already have entered
 * the next call while a later lane still compares with this one (it cannot
 * get further: that call's barrier waits for every lane). */
inline emu_wmma_call emu_wmma_args[1024][2];
inline unsigned emu_wmma_seq[1024];
inline float emu_wmma_xchg[32][256]; /* per warp */

/* Arrive with this lane's arguments; every lane compares them with lane 0's. */
inline void emu_wmma_enter(const char *op, const void *p, unsigned ldm, int layout,
                           uint32_t value) {
  unsigned me = threadIdx.x, l0 = me & ~31u, par = emu_wmma_seq[me]++ & 1u;
  emu_wmma_args[me][par] = emu_wmma_call{op, p, ldm, layout, value};
  emu_sync_warp();
  const emu_wmma_call &a = emu_wmma_args[l0][par];
  if (strcmp(a.op, op) != 0 || a.p != p || a.ldm != ldm || a.layout != layout || a.value != value) {
    fprintf(stderr,
            "emu: wmma::%s: lane %u of warp %u called %s(%p, ldm %u, layout %d, value 0x%x)"
            " where lane 0 called %s(%p, ldm %u, layout %d, value 0x%x)\n",
            op, me & 31u, me >> 5, op, p, ldm, layout, value, a.op, a.p, a.ldm, a.layout, a.value);
    abort();
  }
}

inline void emu_wmma_check_mem(const char *op, const void *p, unsigned ldm, size_t elem) {
  if (((uintptr_t)p & 31u) != 0 || (ldm * elem) % 16 != 0 || ldm < 16) {
    fprintf(stderr,
            "emu: wmma::%s: pointer %p not 256-bit aligned or ldm %u not a multiple of 16"
            " bytes (or < 16)\n",
            op, p, ldm);
    abort();
  }
}

/* Offset of element (r, c) of a matrix in memory. */
inline size_t emu_wmma_off(int r, int c, unsigned ldm, bool row_major_mem) {
  return row_major_mem ? (size_t)r * ldm + (size_t)c : (size_t)c * ldm + (size_t)r;
}

/* This lane's 8 values into the warp's buffer, a barrier, then the whole
 * tile from it. The next collective's entry barrier keeps the buffer until
 * every lane has read it. */
template <typename F> inline void emu_wmma_gather(float *tile, F lane_value) {
  unsigned me = threadIdx.x, w = me >> 5, lane = me & 31u;
  for (unsigned e = lane; e < 256; e += 32)
    emu_wmma_xchg[w][e] = lane_value((int)e);
  emu_sync_warp();
  for (int e = 0; e < 256; e++)
    tile[e] = emu_wmma_xchg[w][e];
}

inline float emu_wmma_f(__half h) { return __half2float(h); }
inline float emu_wmma_f(float f) { return f; }

template <typename Layout> constexpr bool emu_wmma_row_major() {
  static_assert(std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                "emu: matrix_a/matrix_b fragments need row_major or col_major");
  return std::is_same<Layout, row_major>::value;
}

/* ---- the API ---- */

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __half, Layout> &f, const __half *p,
                             unsigned ldm) {
  static_assert(std::is_same<Use, matrix_a>::value || std::is_same<Use, matrix_b>::value,
                "emu: a __half fragment with a layout is matrix_a or matrix_b");
  constexpr bool rm = emu_wmma_row_major<Layout>();
  emu_wmma_enter("load_matrix_sync", p, ldm, rm, 0);
  emu_wmma_check_mem("load_matrix_sync", p, ldm, sizeof(__half));
  float tmp[256]; /* halves as floats, exactly */
  emu_wmma_gather(tmp,
                  [&](int e) { return __half2float(p[emu_wmma_off(e / 16, e % 16, ldm, rm)]); });
  for (int e = 0; e < 256; e++)
    f.emu_tile[e] = __float2half_rn(tmp[e]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                             unsigned ldm, layout_t layout) {
  bool rm = layout == mem_row_major;
  emu_wmma_enter("load_matrix_sync", p, ldm, rm, 0);
  emu_wmma_check_mem("load_matrix_sync", p, ldm, sizeof(float));
  emu_wmma_gather(f.emu_tile, [&](int e) { return p[emu_wmma_off(e / 16, e % 16, ldm, rm)]; });
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t layout) {
  bool rm = layout == mem_row_major;
  emu_wmma_enter("store_matrix_sync", p, ldm, rm, 0);
  emu_wmma_check_mem("store_matrix_sync", p, ldm, sizeof(float));
  for (unsigned e = threadIdx.x & 31u; e < 256; e += 32)
    p[emu_wmma_off((int)e / 16, (int)e % 16, ldm, rm)] = f.emu_tile[e];
}

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, const T &v) {
  float fv = emu_wmma_f(v);
  uint32_t bits;
  memcpy(&bits, &fv, 4);
  emu_wmma_enter("fill_fragment", nullptr, 0, 0, bits);
  for (int e = 0; e < 256; e++)
    f.emu_tile[e] = v;
}

template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __half, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, __half, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
  emu_wmma_row_major<LA>();
  emu_wmma_row_major<LB>();
  emu_wmma_enter("mma_sync", nullptr, 0, 0, 0);
  float out[256];
  emu_wmma_gather(out, [&](int e) {
    int i = e / 16, j = e % 16;
    float s = 0.0f;
    for (int k = 0; k < 16; k++)
      s += __half2float(a.emu_tile[i * 16 + k]) * __half2float(b.emu_tile[k * 16 + j]);
    return c.emu_tile[e] + s;
  });
  for (int e = 0; e < 256; e++)
    d.emu_tile[e] = out[e];
}

} // namespace wmma
} // namespace nvcuda
