// The forward kernel for double x (see forward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#define SE_FUSED_MATH_ONLY 1
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(forward, double, double)
