// Between the ATen entry points (se_cuda_ops.cpp) and the kernel files
// (forward_<dtype>.cu, backward_<dtype>.cu): a planned call as plain pointers, so
// the kernel files need neither ATen nor torch headers.
#pragma once

#include <cstdint>

#include "plan.h"

#if !defined(SE_CUDA_EMULATION)
#include <cuda_runtime_api.h>
#endif

namespace se_fused {
namespace cuda {

enum class DType : int { Float = 0, Half = 1, BFloat16 = 2, Double = 3 };

struct ForwardLaunch {
  Plan plan;
  DType dtype;
  const void* x;
  const void* res;  // nullptr: no residual
  void* y;          // may equal x
  void* z;
  void* pre;        // (N, R + C): a1 | a2
  const void *w1, *b1, *w2, *b2;  // accumulation type; biases (and w2 for one layer) may be nullptr
  int act, gate;
  bool relu;
  void* workspace;     // plan.ws_size accumulation-type elements
  uint32_t* counters;  // plan.n_counters words, any contents (the launcher zeroes them)
  bool pdl;            // chain the pass's kernels by programmatic dependent launch
};

struct BackwardLaunch {
  Plan plan;
  DType dtype;
  const void* gy;
  const void* v;     // x, or y with from_y
  const void* mask;  // y for the output relu, else nullptr
  void* gx;
  void* gres;        // nullptr: not wanted
  const void* z;
  const void* pre;   // (N, R + C): the forward's a1 | a2
  const void *w1, *b1, *w2, *b2;
  void *gw1, *gb1, *gw2, *gb2;  // gw2, gb2 nullptr for one layer
  int act, gate;
  bool from_y;
  void* workspace;
  uint32_t* counters;
  bool pdl;
};

#if !defined(SE_CUDA_EMULATION)
// One launcher per pass and dtype (forward_<dtype>.cu, backward_<dtype>.cu): the
// pass's kernels on `stream` (kernel_launch.cuh: zero the counters, launch 1, launch 2).
using forward_launch_t = ForwardLaunch;
using backward_launch_t = BackwardLaunch;
#define SE_DECLARE_LAUNCHERS(PASS)                                                   \
  cudaError_t launch_##PASS##_float(const PASS##_launch_t&, cudaStream_t);          \
  cudaError_t launch_##PASS##_half(const PASS##_launch_t&, cudaStream_t);           \
  cudaError_t launch_##PASS##_bfloat16(const PASS##_launch_t&, cudaStream_t);       \
  cudaError_t launch_##PASS##_double(const PASS##_launch_t&, cudaStream_t);
SE_DECLARE_LAUNCHERS(forward)
SE_DECLARE_LAUNCHERS(backward)
#undef SE_DECLARE_LAUNCHERS
#endif

}  // namespace cuda
}  // namespace se_fused
