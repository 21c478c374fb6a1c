// The launches of one pass for one dtype: each forward_<dtype>.cu /
// backward_<dtype>.cu instantiates one, so the kernels compile in parallel.
#pragma once

#include "backward_kernel.cuh"
#include "forward_kernel.cuh"

namespace se_fused {
namespace cuda {

using forward_launch_t = ForwardLaunch;  // for SE_DEFINE_LAUNCHER
using backward_launch_t = BackwardLaunch;

// Grids are tile counts (the host checks they fit a grid's x dimension); a grid
// of 0 blocks (nothing to do) is not launched.
inline dim3 grid_of(int64_t blocks) { return dim3(unsigned(blocks)); }

template <typename T>
cudaError_t launch_forward_t(const ForwardLaunch& l, cudaStream_t stream) {
  const ForwardParams<T> p = forward_params<T>(l);
  SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    se_squeeze_kernel<T, CL><<<grid_of(l.plan.grid1), kThreads, 0, stream>>>(p);
    SE_BOOL_SWITCH(l.res != nullptr, HasRes, [&] {
      se_scale_kernel<T, CL, HasRes><<<grid_of(l.plan.grid2), kThreads, 0, stream>>>(p);
    });
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward_t(const BackwardLaunch& l, cudaStream_t stream) {
  const BackwardParams<T> p = backward_params<T>(l);
  SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    SE_BOOL_SWITCH(l.mask != nullptr, HasMask, [&] {
      se_reduce_kernel<T, CL, HasMask><<<grid_of(l.plan.grid1), kThreads, 0, stream>>>(p);
      se_map_kernel<T, CL, HasMask><<<grid_of(l.plan.grid2), kThreads, 0, stream>>>(p);
    });
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace se_fused

// One kernel file: the launches of one pass (forward, backward) for one element type.
#define SE_DEFINE_LAUNCHER(PASS, TYPE)                                    \
  template cudaError_t se_fused::cuda::launch_##PASS##_t<TYPE>(             \
      const se_fused::cuda::PASS##_launch_t&, cudaStream_t);
