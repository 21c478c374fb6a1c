// The launches of one pass for one dtype: each forward_<dtype>.cu /
// backward_<dtype>.cu instantiates one, so the kernels compile in parallel.
#pragma once

#include <atomic>
#include <utility>

#include "backward_kernel.cuh"
#include "forward_kernel.cuh"

namespace se_fused {
namespace cuda {

using forward_launch_t = ForwardLaunch;  // for SE_DEFINE_LAUNCHER
using backward_launch_t = BackwardLaunch;

// Grids are tile counts (the host checks they fit a grid's x dimension).
inline dim3 grid_of(int64_t blocks) { return dim3(unsigned(blocks)); }

// Whether the kernels of this dtype's file may be chained by programmatic dependent
// launch on the current device: an sm_90+ GPU running code built for sm_90+ (code
// JIT-compiled from older PTX has no griddepcontrol.wait, and its launch 1 would
// race the zeroing kernel). Asked once per device and kernel file.
template <typename Kernel>
bool pdl_supported(Kernel kernel) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];  // 0: not asked, 1: no, 2: yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  const bool cached = device >= 0 && device < kCached;
  int v = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    int major = 0;
    cudaFuncAttributes a{};
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) ==
                        cudaSuccess &&
                    cudaFuncGetAttributes(&a, kernel) == cudaSuccess && major >= 9 &&
                    a.ptxVersion >= 90 && a.binaryVersion >= 90;
    v = ok ? 2 : 1;
    if (cached) cache[device].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

// One kernel on `stream`; with `pdl`, programmatically serialized after the kernel
// before it (it may start early and waits in the kernel, se_cuda_common.cuh).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t blocks, cudaStream_t stream,
                          bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid_of(blocks);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// A pass: the zeroing kernel (a plain launch), then launch 1 and launch 2, each
// chained to the kernel before it when l.pdl allows it and the device supports it.
template <typename Launch, typename Params, typename K1, typename K2>
cudaError_t launch_pass(const Launch& l, const Params& p, K1 k1, K2 k2, cudaStream_t stream) {
  const bool pdl = l.pdl && pdl_supported(k1);
  cudaError_t e = launch_kernel(se_zero_kernel<uint32_t>, l.plan.grid0, stream, false,
                                l.counters, int64_t(l.plan.n_counters));
  if (e == cudaSuccess) e = launch_kernel(k1, l.plan.grid1, stream, pdl, p);
  if (e == cudaSuccess) e = launch_kernel(k2, l.plan.grid2, stream, pdl, p);
  return e;
}

template <typename T>
cudaError_t launch_forward_t(const ForwardLaunch& l, cudaStream_t stream) {
  const ForwardParams<T> p = forward_params<T>(l);
  return SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    return SE_BOOL_SWITCH(l.res != nullptr, HasRes, [&] {
      return launch_pass(l, p, se_squeeze_kernel<T, CL>, se_scale_kernel<T, CL, HasRes>, stream);
    });
  });
}

template <typename T>
cudaError_t launch_backward_t(const BackwardLaunch& l, cudaStream_t stream) {
  const BackwardParams<T> p = backward_params<T>(l);
  return SE_BOOL_SWITCH(l.plan.cl, CL, [&] {
    return SE_BOOL_SWITCH(l.mask != nullptr, HasMask, [&] {
      return launch_pass(l, p, se_reduce_kernel<T, CL, HasMask>, se_map_kernel<T, CL, HasMask>,
                         stream);
    });
  });
}

}  // namespace cuda
}  // namespace se_fused

// One kernel file: the launches of one pass (forward, backward) for one element type.
#define SE_DEFINE_LAUNCHER(PASS, TYPE)                                    \
  template cudaError_t se_fused::cuda::launch_##PASS##_t<TYPE>(             \
      const se_fused::cuda::PASS##_launch_t&, cudaStream_t);
