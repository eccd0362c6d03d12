/* Emulator stand-in for <cuda_fp16.h>. */
#include "emu_cuda.h"
