/* Emulator stand-in for <cuda_runtime.h>. */
#include "emu_cuda.h"
