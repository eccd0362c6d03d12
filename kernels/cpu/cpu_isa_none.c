/* Builds for CPUs other than x86: no AVX2 table, the scalar one serves. */
#include "cpu_kern.h"

const cpu_kern *cpu_kern_avx2(void) { return 0; }
