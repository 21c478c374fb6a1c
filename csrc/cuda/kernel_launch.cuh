// The launch of either persistent kernel for one dtype: each forward_<dtype>.cu /
// backward_<dtype>.cu instantiates one, so the eight kernels compile in parallel.
#pragma once

#include <atomic>

#include "backward_kernel.cuh"
#include "forward_kernel.cuh"

namespace se_fused {
namespace cuda {

// Blocks that fit the device at once (occupancy API) times its SMs, at most one
// per work item: enough to saturate HBM, and no more than can be resident, so no
// block waits for a slot while others spin. Correctness does not depend on it
// (see the ticket argument in se_cuda_common.cuh).
// Cached per kernel and device: the occupancy query costs microseconds, which
// matter at batch 1.
template <auto Kernel>
int persistent_grid(int64_t items, int max_grid) {
  static std::atomic<int> resident[64];
  int dev = 0;
  cudaGetDevice(&dev);
  const int d = dev >= 0 && dev < 64 ? dev : 0;
  int blocks = resident[d].load(std::memory_order_relaxed);
  if (blocks == 0) {
    int per_sm = 0, sms = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, 0);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    blocks = (per_sm > 0 ? per_sm : 1) * (sms > 0 ? sms : 1);
    resident[d].store(blocks, std::memory_order_relaxed);
  }
  int64_t g = blocks;
  if (max_grid > 0) g = imin(g, max_grid);
  return int(imax(1, imin(g, items)));
}

// The run-time flags that select a kernel variant, in one place.
#define SE_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                 \
    if (COND) {                         \
      constexpr bool NAME = true;       \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr bool NAME = false;      \
      return __VA_ARGS__();             \
    }                                   \
  }()

template <typename T>
cudaError_t launch_forward_t(const ForwardLaunch& l, int max_grid, cudaStream_t stream) {
  const ForwardParams<T> p = forward_params<T>(l);
  SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    SE_BOOL_SWITCH(l.res != nullptr, HasRes, [&] {
      constexpr auto kernel = se_forward_kernel<T, CL, HasRes>;
      kernel<<<persistent_grid<kernel>(l.plan.total, max_grid), kThreads, 0, stream>>>(p);
    });
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward_t(const BackwardLaunch& l, int max_grid, cudaStream_t stream) {
  const BackwardParams<T> p = backward_params<T>(l);
  SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    SE_BOOL_SWITCH(l.mask != nullptr, HasMask, [&] {
      constexpr auto kernel = se_backward_kernel<T, CL, HasMask>;
      kernel<<<persistent_grid<kernel>(l.plan.total, max_grid), kThreads, 0, stream>>>(p);
    });
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace se_fused

// One kernel file: the forward or backward launcher for one dtype.
#define SE_DEFINE_LAUNCHER(PASS, NAME, TYPE)                                              \
  namespace se_fused {                                                                     \
  namespace cuda {                                                                         \
  cudaError_t launch_##PASS##_##NAME(const PASS##_launch_t& l, int max_grid, cudaStream_t s) { \
    return launch_##PASS##_t<TYPE>(l, max_grid, s);                                        \
  }                                                                                        \
  }                                                                                        \
  }
