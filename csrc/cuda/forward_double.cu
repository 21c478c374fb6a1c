// The forward kernel for double x (see forward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(forward, double)
