/* Emulator stand-in for <cublas_v2.h>. */
#include "emu_cuda.h"
