// The forward kernel for float x (see forward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(forward, float)
