// Between the ATen entry points (se_cuda_ops.cpp) and the kernel files
// (forward_<dtype>.cu, backward_<dtype>.cu): a planned call as plain pointers, so
// the kernel files need neither ATen nor torch headers.
#pragma once

#include <cstdint>

#include "plan.h"
#include "se_dispatch.h"

#if !defined(SE_CUDA_EMULATION)
#include <cuda_runtime_api.h>
#endif

namespace se_fused {
namespace cuda {

struct ForwardLaunch {
  Plan plan;
  const void* x;
  const void* res;  // nullptr: no residual
  void* y;          // may equal x
  void* z;
  void* pre;        // (N, R + C): a1 | a2
  const void *w1, *b1, *w2, *b2;  // accumulation type; biases (and w2 for one layer) may be nullptr
  Act act;  // Identity in the one-layer form
  Gate gate;
  bool relu;
  void* workspace;     // plan.ws_size accumulation-type elements
  uint32_t* counters;  // plan.n_counters words, any contents (the launcher zeroes them)
  bool pdl;            // chain the pass's kernels by programmatic dependent launch
};

struct BackwardLaunch {
  Plan plan;
  const void* gy;
  const void* v;     // x, or y with from_y
  const void* mask;  // y for the output relu, else nullptr
  void* gx;
  void* gres;        // nullptr: not wanted
  const void* z;
  const void* pre;   // (N, R + C): the forward's a1 | a2
  const void *w1, *b1, *w2, *b2;
  void *gw1, *gb1, *gw2, *gb2;  // gw2, gb2 nullptr for one layer
  Act act;
  Gate gate;
  bool from_y;
  void* workspace;
  uint32_t* counters;
  bool pdl;
};

#if !defined(SE_CUDA_EMULATION)
// The two launches of one pass for element type T (float, c10::Half, c10::BFloat16,
// double) on `stream`: zero the counters, launch 1, launch 2. Defined in
// kernel_launch.cuh, instantiated once per type by forward_<dtype>.cu and
// backward_<dtype>.cu (so the kernels compile in parallel); the host picks T with
// SE_DTYPE_SWITCH.
template <typename T>
cudaError_t launch_forward_t(const ForwardLaunch& l, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward_t(const BackwardLaunch& l, cudaStream_t stream);
#endif

}  // namespace cuda
}  // namespace se_fused
