// Registers the CUDA kernels of the medtrim:: ops (compiled only when the CUDA kernels are built).
#include <torch/library.h>

#include "kernel_impls.h"

TORCH_LIBRARY_IMPL(medtrim, CUDA, m) { MEDTRIM_IMPL_KERNELS(m, cuda); }
