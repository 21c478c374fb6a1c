// The backward kernel for half x (see backward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#define SE_FUSED_MATH_ONLY 1
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(backward, half, c10::Half)
