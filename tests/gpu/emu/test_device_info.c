/* The CUDA backend's device_info slot in the emulator (run.sh, TESTS=ops):
 * the emulated device's name, memory that cudaMalloc takes from and
 * cudaFree gives back, SMs, compute capability, and the peak bandwidth by
 * cu_device_info's formula: 2 * 1,000,000 kHz * 1e3 * 256 bits / 8 / 1e9 =
 * 64 GB/s (emu_rt.cpp's fake attributes). Also through bk_fault's wrapper. */
#include <string.h>

#include "backend.h"
#include "bk_fault.h"
#include "cu_ops.h"
#include "t.h"

int main(void) {
  bl_err err = {0};
  bk_backend *be = NULL;
  if (bk_cuda_create(0, &be, &err) != BL_OK) {
    fprintf(stderr, "bk_cuda_create: %s\n", err.msg);
    return 1;
  }
  T_CHECK(be->device_info == cu_device_info);
  bk_device_info d;
  T_CHECK(bk_device_info_get(be, &d) == BL_OK);
  T_CHECKF(strstr(d.name, "emulator") != NULL, "name '%s'", d.name);
  T_CHECK(d.mem_total == (uint64_t)1 << 34);
  T_CHECK(d.mem_free > 0 && d.mem_free < d.mem_total); /* the backend's own buffers */
  T_NEAR(d.peak_gb_s, 64.0, 1e-9, 0);
  T_CHECK(d.sm_count == 2 && d.cc_major == 9 && d.cc_minor == 0);

  /* a buffer of 64 MiB shows in mem_free, and comes back when freed */
  void *p = be->alloc(be, (size_t)64 << 20);
  bk_device_info d2;
  T_CHECK(p && bk_device_info_get(be, &d2) == BL_OK);
  T_CHECKF(d.mem_free - d2.mem_free >= (uint64_t)64 << 20, "free %llu then %llu",
           (unsigned long long)d.mem_free, (unsigned long long)d2.mem_free);
  be->free(be, p);
  T_CHECK(bk_device_info_get(be, &d2) == BL_OK && d2.mem_free == d.mem_free);

  /* the fault wrapper forwards it, and a fired device fault does not hide it */
  bk_backend *fw = NULL;
  T_CHECK(bk_fault_wrap(be, "sync:1", &fw, &err) == BL_OK);
  T_CHECK(fw->sync(fw) == BL_EDEVICE);
  T_CHECK(bk_device_info_get(fw, &d2) == BL_OK && strcmp(d2.name, d.name) == 0 &&
          d2.peak_gb_s == d.peak_gb_s);
  bk_destroy(fw); /* destroys be */
  return T_DONE();
}
