/* Run-time ISA check on x86: the AVX2 table is offered only where the CPU
 * (and the OS, for the wide registers) supports AVX2, FMA and F16C. Built
 * without any -m flags so it is safe to run on every x86-64. */
#include <cpuid.h>

#include "cpu_kern.h"

/* F16C is not a __builtin_cpu_supports name on every compiler: CPUID.1:ECX. */
static int cpu_has_f16c(void) {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

const cpu_kern *cpu_kern_avx2(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
    return cpu_avx2_kern();
  return 0;
}
