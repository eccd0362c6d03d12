/* The KV cache encodings (kvcache/kv_format.h) and sizes.
 *
 * E4M3 against PyTorch's float8_e4m3fn (tests/data/kv_format/e4m3.txt, made
 * by tools/ref/make_kv_format_ref.py): every code decodes to torch's value,
 * every input in the file (all codes, all ties and their neighbours, random
 * magnitudes, specials) encodes to torch's code. E2M1 against a brute-force
 * nearest search (e2m1.txt). Then the properties the cache relies on: every
 * code round-trips, saturation at +-448 / +-6, ties to even, NaN and inf,
 * the E8M0 row scale is the smallest that fits, the row and group
 * quantizers stay within their error bounds (including a later token far
 * larger than earlier ones), calibrated tensor scales, and bytes per token
 * against FORMATS.md. Argument: the tests/data folder. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_cache.h"
#include "kv_format.h"
#include "t.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15u;

static double rnd(void) { /* splitmix64 -> [0, 1) */
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

/* ---- against the reference vectors --------------------------------------- */

static void test_e4m3_ref(const char *dir) {
  char path[1024], kind[8];
  snprintf(path, sizeof path, "%s/kv_format/e4m3.txt", dir);
  FILE *f = fopen(path, "r");
  T_CHECKF(f != NULL, "cannot open %s", path);
  if (!f) return;
  char line[128];
  int n_dec = 0, n_enc = 0, bad_dec = 0, bad_enc = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned a, b;
    if (line[0] == '#' || sscanf(line, "%7s %x %x", kind, &a, &b) != 3) continue;
    if (strcmp(kind, "dec") == 0) { /* code a decodes to float bits b */
      float got = kv_e4m3_to_f32((uint8_t)a), want = kv_bits_f32(b);
      bool ok = isnan(want) ? isnan(got) : kv_f32_bits(got) == b;
      if (!ok && bad_dec++ < 5) fprintf(stderr, "e4m3 decode %02x: got %g want %g\n", a, got, want);
      n_dec++;
    } else { /* input bits a encodes to code b */
      uint8_t got = kv_e4m3_from_f32(kv_bits_f32(a));
      if (got != b && bad_enc++ < 5)
        fprintf(stderr, "e4m3 encode %.9g: got %02x want %02x\n", kv_bits_f32(a), got, b);
      n_enc++;
    }
  }
  fclose(f);
  printf("e4m3 vs torch: %d codes decoded, %d inputs encoded\n", n_dec, n_enc);
  T_CHECKF(n_dec == 256 && n_enc > 3000, "%d decode, %d encode lines", n_dec, n_enc);
  T_CHECKF(bad_dec == 0 && bad_enc == 0, "%d decodes, %d encodes differ from torch", bad_dec,
           bad_enc);
}

static void test_e2m1_ref(const char *dir) {
  char path[1024], kind[8];
  snprintf(path, sizeof path, "%s/kv_format/e2m1.txt", dir);
  FILE *f = fopen(path, "r");
  T_CHECKF(f != NULL, "cannot open %s", path);
  if (!f) return;
  char line[128];
  int n = 0, bad = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned a, b;
    if (line[0] == '#' || sscanf(line, "%7s %x %x", kind, &a, &b) != 3) continue;
    uint8_t got = kv_e2m1_from_f32(kv_bits_f32(a));
    if (got != b && bad++ < 5)
      fprintf(stderr, "e2m1 encode %.9g: got %x want %x\n", kv_bits_f32(a), got, b);
    n++;
  }
  fclose(f);
  printf("e2m1 vs brute force: %d inputs encoded\n", n);
  T_CHECKF(n > 500 && bad == 0, "%d of %d encodes differ", bad, n);
}

/* ---- element properties --------------------------------------------------- */

static void test_e4m3_props(void) {
  int bad = 0;
  for (int c = 0; c < 256; c++) { /* every non-NaN code round-trips, -0 included */
    if ((c & 0x7F) == 0x7F) {
      T_CHECK(isnan(kv_e4m3_to_f32((uint8_t)c)));
      continue;
    }
    bad += kv_e4m3_from_f32(kv_e4m3_to_f32((uint8_t)c)) != c;
  }
  T_CHECKF(bad == 0, "%d codes do not round-trip", bad);
  T_CHECK(kv_e4m3_to_f32(0x7E) == 448.0f && kv_e4m3_to_f32(0x01) == 0x1p-9f);
  T_CHECK(kv_e4m3_to_f32(0x08) == 0x1p-6f && kv_e4m3_to_f32(0x38) == 1.0f);
  /* saturation, infinities, NaN */
  const float sat[] = {448.0f, 448.5f, 463.99f, 464.0f, 480.0f, 1e30f, INFINITY};
  for (size_t i = 0; i < sizeof sat / sizeof *sat; i++) {
    T_CHECKF(kv_e4m3_from_f32(sat[i]) == 0x7E, "%g", (double)sat[i]);
    T_CHECKF(kv_e4m3_from_f32(-sat[i]) == 0xFE, "%g", -(double)sat[i]);
  }
  T_CHECK(kv_e4m3_from_f32(NAN) == KV_E4M3_NAN && kv_e4m3_from_f32(-NAN) == KV_E4M3_NAN);
  /* ties to even: normal, across a binade, subnormal, at the normal boundary */
  T_CHECK(kv_e4m3_from_f32(1.0625f) == 0x38);   /* 1 | 1.125 -> 1 */
  T_CHECK(kv_e4m3_from_f32(1.1875f) == 0x3A);   /* 1.125 | 1.25 -> 1.25 */
  T_CHECK(kv_e4m3_from_f32(1.9375f) == 0x40);   /* 1.875 | 2 -> 2 */
  T_CHECK(kv_e4m3_from_f32(0x1p-10f) == 0x00);  /* 0 | 2^-9 -> 0 */
  T_CHECK(kv_e4m3_from_f32(0x3p-10f) == 0x02);  /* 1 | 2 (x 2^-9) -> 2 */
  T_CHECK(kv_e4m3_from_f32(0x5p-10f) == 0x02);  /* 2 | 3 -> 2 */
  T_CHECK(kv_e4m3_from_f32(0xFp-10f) == 0x08);  /* 7 | 8 -> 8, the smallest normal */
  T_CHECK(kv_e4m3_from_f32(-0x1p-10f) == 0x80); /* -0 */
  T_CHECK(kv_e4m3_from_f32(416.0f) == 0x7D);    /* exact: 1.625 * 2^8 */
  T_CHECK(kv_e4m3_from_f32(432.0f) == 0x7E);    /* 416 | 448 -> 448 (even) */
}

static void test_e2m1_props(void) {
  static const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 16; c++) {
    float v = kv_e2m1_to_f32((uint8_t)c), want = c & 8 ? -grid[c & 7] : grid[c & 7];
    T_CHECKF(v == want && (signbit(v) != 0) == (c >= 8), "code %x: %g", c, (double)v);
    T_CHECKF(kv_e2m1_from_f32(v) == c, "code %x does not round-trip", c);
  }
  static const float ties[7][2] = {{0.25f, 0}, {0.75f, 2}, {1.25f, 2}, {1.75f, 4},
                                   {2.5f, 4},  {3.5f, 6},  {5.0f, 6}};
  for (int i = 0; i < 7; i++)
    T_CHECKF(kv_e2m1_from_f32(ties[i][0]) == (uint8_t)ties[i][1], "tie %g", (double)ties[i][0]);
  T_CHECK(kv_e2m1_from_f32(6.5f) == 7 && kv_e2m1_from_f32(-1e30f) == 15);
  T_CHECK(kv_e2m1_from_f32(INFINITY) == 7 && kv_e2m1_from_f32(-INFINITY) == 15);
  T_CHECK((kv_e2m1_from_f32(NAN) & 7) == 0); /* no NaN in E2M1: the group scale carries it */
}

/* ---- scales and rows ------------------------------------------------------ */

static void test_fp8_scale(void) {
  int bad = 0;
  for (int i = 0; i < 20000; i++) {
    float amax = (float)exp2(rnd() * 80 - 40) * (float)(1 + rnd());
    if (i < 4) amax = (float[]){448.0f, 449.0f, 224.0f, 1.0f}[i];
    int k = kv_fp8_row_scale(amax) - 127;
    /* fits, and 2^(k-1) would not (exact in double) */
    bad += !((double)amax <= 448.0 * exp2(k) && (double)amax > 448.0 * exp2(k - 1));
  }
  T_CHECKF(bad == 0, "%d row scales are not the smallest power of two that fits", bad);
  T_CHECK(kv_fp8_row_scale(448.0f) == 127 && kv_fp8_row_scale(449.0f) == 128);
  T_CHECK(kv_fp8_row_scale(0.0f) == 1 && kv_fp8_row_scale(3.4e38f) <= 253);
}

/* Bound for one fp8 element with scale s: half a step of E4M3 (3 mantissa
 * bits: 2^-4 relative) for normals, half the subnormal step 2^-10 * s. */
static double fp8_bound(double x, double s) { return fabs(x) * 0x1p-4 + s * 0x1p-10; }

static void test_fp8_rows(void) {
  enum { HD = 128 };
  float x[HD], d[HD];
  uint8_t q[HD];
  /* The hard case of appending: tokens written one after another into one
   * block, each 1000x larger than the one before. Scales are per token, so
   * each row keeps full E4M3 precision; none saturates. */
  double mag = 1e-6;
  for (int tok = 0; tok < 5; tok++, mag *= 1000) {
    for (int i = 0; i < HD; i++)
      x[i] = (float)(mag * (2 * rnd() - 1));
    uint8_t sc = kv_fp8_quant_row(x, HD, q);
    float s = kv_e8m0_to_f32(sc);
    kv_fp8_dequant_row(q, s, HD, d);
    int bad = 0;
    for (int i = 0; i < HD; i++)
      bad += !(fabs((double)d[i] - x[i]) <= fp8_bound(x[i], s));
    T_CHECKF(bad == 0, "fp8 row of magnitude %g: %d elements off", mag, bad);
  }
  /* NaN stays NaN, inf saturates, the rest of the row is unharmed */
  for (int i = 0; i < HD; i++)
    x[i] = (float)(2 * rnd() - 1);
  x[3] = NAN;
  x[7] = INFINITY;
  uint8_t sc = kv_fp8_quant_row(x, HD, q);
  float s = kv_e8m0_to_f32(sc);
  kv_fp8_dequant_row(q, s, HD, d);
  T_CHECK(isnan(d[3]) && d[7] == 448.0f * s && s <= 1.0f / 128);
  /* per tensor: ts from the first write; 4x its amax still fits, beyond clips */
  float ts = kv_fp8_tensor_scale(2.0f);
  T_CHECK(ts == 2.0f * KV_CALIB_HEADROOM / 448.0f);
  float y[3] = {1.3f, 7.9f, 100.0f};
  kv_fp8t_quant_row(y, 3, ts, q);
  kv_fp8_dequant_row(q, ts, 3, d);
  T_CHECK(fabs(d[0] - 1.3) <= fp8_bound(1.3, ts) && fabs(d[1] - 7.9) <= fp8_bound(7.9, ts));
  T_CHECK(d[2] == 448.0f * ts); /* saturated at 4 x 2.0 */
  kv_fp8t_quant_row(y, 3, 0.0f, q);
  T_CHECK(q[0] == 0 && q[1] == 0 && q[2] == 0); /* not calibrated: nothing to encode */
}

static void test_nvfp4(void) {
  enum { HD = 128 };
  float x[HD], d[HD];
  uint8_t q[HD / 2], sc[HD / 16];
  /* Calibrate on a first "write" of magnitude 1, then rows from 1e-3 to 3x
   * that: within each group the error is at most half a grid step of the
   * group's decoded scale sd: 0.25 sd below 2 sd, then |x|/4 (steps of 1
   * and 2 from 2 sd to 6 sd; the largest value may clip from 6.375 sd to 6). */
  float ts = kv_nvfp4_tensor_scale(1.0f);
  double worst = 0;
  for (int r = 0; r < 200; r++) {
    double mag = exp2(-10 + rnd() * 11.5);
    for (int i = 0; i < HD; i++)
      x[i] = (float)(mag * (2 * rnd() - 1));
    kv_nvfp4_quant_row(x, HD, ts, q, sc);
    kv_nvfp4_dequant_row(q, sc, ts, HD, d);
    for (int i = 0; i < HD; i++) {
      double sd = (double)kv_e4m3_to_f32(sc[i / 16]) * ts;
      double bound = fmax(0.25 * sd, fabs(x[i]) / 4) * (1 + 1e-6);
      double e = fabs((double)d[i] - x[i]);
      worst = fmax(worst, e / bound);
      T_CHECKF(e <= bound, "nvfp4 row %d elem %d: %g -> %g (scale %g)", r, i, (double)x[i],
               (double)d[i], sd);
    }
  }
  printf("nvfp4 groups: worst error %.3f of the bound\n", worst);
  /* element order: element 2i in the low nibble */
  for (int i = 0; i < 16; i++)
    x[i] = i == 0 ? 6.0f : i == 1 ? -1.0f : 0.0f;
  kv_nvfp4_quant_group(x, kv_nvfp4_tensor_scale(6.0f / KV_CALIB_HEADROOM), q, sc);
  T_CHECKF(q[0] == (0x7 | 0xA << 4) && kv_e4m3_to_f32(sc[0]) == 448.0f, "byte 0 %02x scale %02x",
           q[0], sc[0]);
  /* a later token far past the calibration saturates at 6 * 448 * ts */
  for (int i = 0; i < 16; i++)
    x[i] = i == 5 ? -1000.0f : 0.5f;
  kv_nvfp4_quant_group(x, ts, q, sc);
  kv_nvfp4_dequant_row(q, sc, ts, 16, d);
  T_CHECK(sc[0] == 0x7E && d[5] == -6.0f * (448.0f * ts) && d[0] >= 0);
  /* NaN poisons its group through the scale; inf saturates the element only */
  for (int i = 0; i < 32; i++)
    x[i] = 0.3f;
  x[2] = NAN;
  x[20] = -INFINITY;
  kv_nvfp4_quant_row(x, 32, ts, q, sc);
  kv_nvfp4_dequant_row(q, sc, ts, 32, d);
  T_CHECK(sc[0] == KV_E4M3_NAN && isnan(d[0]) && isnan(d[15]));
  T_CHECK(d[20] == -6.0f * (kv_e4m3_to_f32(sc[1]) * ts) && fabs(d[21] - 0.3) <= 0.3 / 4);
}

/* ---- sizes and the pool ---------------------------------------------------- */

static void test_sizes(void) {
  /* FORMATS.md: Qwen3-8B (36 layers, 8 kv heads, hd 128) 144 / 72 / 40.5 KiB
   * per token; Qwen3-32B (64 layers) 256 / 128 / 72 KiB. fp8's per-head
   * scales add one byte per 128 values: 576 B (0.78 %) for 8B. */
  T_CHECK(kv_token_bytes(BK_KV_F16, BK_KVS_HEAD, 36, 8, 128) == 144 * 1024);
  T_CHECK(kv_token_bytes(BK_KV_FP8, BK_KVS_TENSOR, 36, 8, 128) == 72 * 1024);
  T_CHECK(kv_token_bytes(BK_KV_FP8, BK_KVS_HEAD, 36, 8, 128) == 72 * 1024 + 576);
  T_CHECK(kv_token_bytes(BK_KV_NVFP4, BK_KVS_HEAD, 36, 8, 128) == 81 * 512);
  T_CHECK(kv_token_bytes(BK_KV_F16, BK_KVS_HEAD, 64, 8, 128) == 256 * 1024);
  T_CHECK(kv_token_bytes(BK_KV_FP8, BK_KVS_TENSOR, 64, 8, 128) == 128 * 1024);
  T_CHECK(kv_token_bytes(BK_KV_NVFP4, BK_KVS_HEAD, 64, 8, 128) == 72 * 1024);
  T_CHECK(kv_block_bytes(BK_KV_NVFP4, BK_KVS_HEAD, 36, 8, 128, 16) == 16 * 81 * 512);
  for (int f = 0; f < 3; f++) {
    bk_kvfmt back;
    T_CHECK(kv_fmt_parse(kv_fmt_name((bk_kvfmt)f), &back) == BL_OK && back == (bk_kvfmt)f);
  }
  bk_kvfmt fmt;
  bk_kvscale sc;
  T_CHECK(kv_fmt_parse("fp4", &fmt) == BL_EINVAL && kv_scale_parse("block", &sc) == BL_EINVAL);
  T_CHECK(kv_scale_parse("tensor", &sc) == BL_OK && sc == BK_KVS_TENSOR);
}

static void test_pool(void) {
  bk_backend *be = NULL;
  bl_err err = {0};
  T_CHECK(bk_cpu_create(1, &be, &err) == BL_OK);
  if (!be) return;
  kv_pool p;
  kv_pool_cfg cfg = {.fmt = BK_KV_NVFP4,
                     .n_layers = 3,
                     .n_kv_heads = 2,
                     .head_dim = 40,
                     .block_size = 16,
                     .n_blocks = 4};
  T_CHECK(kv_pool_init_cfg(&p, be, &cfg, &err) == BL_EINVAL); /* 40 % 16 != 0 */
  T_CHECKF(strstr(err.msg, "multiple of 16") != NULL, "%s", err.msg);
  cfg.head_dim = 64;
  T_CHECKF(kv_pool_init_cfg(&p, be, &cfg, &err) == BL_OK, "%s", err.msg);
  T_CHECK(p.dev[0].tensor_scales != NULL && bk_kv_unit_bytes(&p.dev[0]) == 16 * (32 + 4));
  for (int i = 0; p.dev[0].tensor_scales && i < 6; i++)
    T_CHECK(p.dev[0].tensor_scales[i] == 0.0f);
  kv_pool_destroy(&p);
  cfg.fmt = BK_KV_FP8; /* per head by default: no tensor scales */
  T_CHECK(kv_pool_init_cfg(&p, be, &cfg, &err) == BL_OK && p.dev[0].tensor_scales == NULL);
  T_CHECK(bk_kv_unit_bytes(&p.dev[0]) == 16 * (64 + 1));
  kv_pool_destroy(&p);
  bk_destroy(be);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/data";
  test_e4m3_ref(dir);
  test_e2m1_ref(dir);
  test_e4m3_props();
  test_e2m1_props();
  test_fp8_scale();
  test_fp8_rows();
  test_nvfp4();
  test_sizes();
  test_pool();
  return T_DONE();
}
