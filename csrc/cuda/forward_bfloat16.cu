// The forward kernel for bfloat16 x (see forward_kernel.cuh); one file per dtype so the
// kernels compile in parallel.
#include "kernel_launch.cuh"

SE_DEFINE_LAUNCHER(forward, c10::BFloat16)
