// The backward kernel for bfloat16 x (see backward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(backward, c10::BFloat16)
