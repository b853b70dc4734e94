// Stands in for CUDA's <cuda_fp16.h> when the kernels are compiled for the emulator: the
// emulator's include directory comes first on the include path, so `#include <cuda_fp16.h>` in
// the .cu sources lands here and gets the emulated __half and the rest of the thread model.
#pragma once
#include "cuda_emu.h"
