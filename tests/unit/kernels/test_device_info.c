/* The device_info slot: the CPU backend names its processor and reports
 * host memory (mem_total > mem_free > 0, no peak, no SMs); bk_fault's
 * wrapper forwards it, also after an injected device error (a query, not an
 * op); the null backend has none, and bk_device_info_get says so. The CUDA
 * backend's slot is checked in the emulator (tests/gpu/emu/test_device_info.c). */
#include <string.h>

#include "backend.h"
#include "bk_fault.h"
#include "t.h"

static void check_cpu(const bk_device_info *d) {
  T_CHECKF(d->name[0] != '\0' && strlen(d->name) < sizeof d->name, "name '%s'", d->name);
  T_CHECKF(d->mem_total > d->mem_free && d->mem_free > 0, "total %llu free %llu",
           (unsigned long long)d->mem_total, (unsigned long long)d->mem_free);
  T_CHECK(d->peak_gb_s == 0);
  T_CHECK(d->sm_count == 0 && d->cc_major == 0 && d->cc_minor == 0);
}

int main(void) {
  bl_err err = {0};
  bk_backend *be = NULL;
  if (bk_cpu_create(1, &be, &err) != BL_OK) {
    fprintf(stderr, "bk_cpu_create: %s\n", err.msg);
    return 1;
  }
  bk_device_info d;
  memset(&d, 0x5a, sizeof d); /* every field must be written */
  T_CHECK(be->device_info != NULL);
  T_CHECK(bk_device_info_get(be, &d) == BL_OK);
  check_cpu(&d);
  fprintf(stderr, "cpu: '%s', %llu bytes, %llu available\n", d.name,
          (unsigned long long)d.mem_total, (unsigned long long)d.mem_free);

  /* through the fault wrapper, before and after its sticky device error */
  bk_backend *fw = NULL;
  T_CHECK(bk_fault_wrap(be, "sync:1", &fw, &err) == BL_OK);
  bk_device_info w;
  T_CHECK(fw->device_info != NULL && bk_device_info_get(fw, &w) == BL_OK);
  check_cpu(&w);
  T_CHECK(strcmp(w.name, d.name) == 0 && w.mem_total == d.mem_total);
  T_CHECK(fw->sync(fw) == BL_EDEVICE);
  T_CHECK(bk_device_info_get(fw, &w) == BL_OK && strcmp(w.name, d.name) == 0);
  bk_destroy(fw); /* and be with it */

  /* a backend without the slot: unknown, and the output zeroed */
  bk_backend *nb = NULL;
  T_CHECK(bk_null_create(&nb, &err) == BL_OK);
  T_CHECK(nb->device_info == NULL);
  memset(&d, 0x5a, sizeof d);
  T_CHECK(bk_device_info_get(nb, &d) == BL_EUNSUPPORTED);
  T_CHECK(d.name[0] == '\0' && d.mem_total == 0 && d.peak_gb_s == 0);
  bk_fault_wrap(nb, "sync:1", &fw, &err);
  T_CHECK(fw && fw->device_info == NULL); /* optional slots stay optional */
  bk_destroy(fw);
  return T_DONE();
}
