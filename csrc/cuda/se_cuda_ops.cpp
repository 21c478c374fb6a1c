// The CUDA entry points of the se_fused ops: argument checks and buffers
// (se_checks.cpp, se_buffers.cpp), the plan of the call (schedule.h), one memset
// of the counters and one persistent kernel per pass (forward_kernel.cuh,
// backward_kernel.cuh). Launches per pass: 2.
//   1. memset of the plan's counters (tickets, per-wave completion counts,
//      last-arrival counts): zeroed in the stream on every call, so a CUDA graph
//      replays it too and no state survives between calls.
//   2. the persistent kernel: every stage of the pass, ordered by tickets.
// Parameters not already in the accumulation dtype are converted by
// prepare_forward/prepare_backward (one cast kernel each, as for the CPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <tuple>

#include "se_common.h"
#include "cuda/launch.h"

namespace se_fused {
namespace {

using cuda::DType;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float;
    case at::kHalf:
      return DType::Half;
    case at::kBFloat16:
      return DType::BFloat16;
    case at::kDouble:
      return DType::Double;
    default:
      TORCH_CHECK(false, "se_fused: unsupported dtype ", t);
  }
}

bool aligned16(const at::Tensor& t) {
  return !t.defined() || t.numel() == 0 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

const void* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr() : nullptr;
}

// Test knobs, read per call: SE_FUSED_CUDA_WAVE_BYTES sets the L2 budget of a wave
// (small values force many waves on small inputs); SE_FUSED_CUDA_GRID caps the
// persistent grid (1 shows that no block waits on another being resident).
// Neither changes a result bit: summation orders depend on the shape only.
int64_t env_int(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoll(v) : 0;
}

int64_t wave_bytes(int device) {
  const int64_t forced = env_int("SE_FUSED_CUDA_WAVE_BYTES");
  if (forced > 0) return forced;
  static std::atomic<int64_t> l2[64];
  const int d = device >= 0 && device < 64 ? device : 0;
  int64_t v = l2[d].load(std::memory_order_relaxed);
  if (v == 0) {
    int bytes = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device));
    v = bytes > 0 ? bytes : (4 << 20);
    l2[d].store(v, std::memory_order_relaxed);
  }
  // A wave's re-read tensors take a quarter of L2: the next wave streams in while
  // this one is scaled, and outputs pass through L2 too.
  return v / 4;
}

cuda::Plan plan_call(const SEArgs& a, bool backward, bool has_mask, int esize, bool aligned,
                     int device) {
  TORCH_CHECK(a.N < (int64_t(1) << 31), "se_fused: batch of ", a.N, " samples is too large");
  cuda::PlanInput in{a.N,      a.C,     a.hw(), a.R,    a.channels_last, backward,
                     has_mask, esize,   aligned, wave_bytes(device)};
  const cuda::Plan p = cuda::make_plan(in);
  TORCH_CHECK(p.total < (int64_t(1) << 32), "se_fused: x of shape (", a.N, ", ", a.C, ", ", a.H,
              ", ", a.W, ") needs ", p.total, " work items, more than 2^32");
  return p;
}

// What both passes' launches share: parameters, workspace, zeroed counters.
template <typename Launch>
void fill_common(Launch& l, const cuda::Plan& plan, const SEArgs& a, const ParamTensors& p,
                 at::ScalarType dtype, const at::Tensor& work, const at::Tensor& counters) {
  l.plan = plan;
  l.dtype = dtype_of(dtype);
  l.w1 = p.w1.data_ptr();
  l.b1 = ptr_or_null(p.b1);
  l.w2 = ptr_or_null(p.w2);
  l.b2 = ptr_or_null(p.b2);
  l.act = int(a.act);
  l.gate = int(a.gate);
  l.workspace = work.data_ptr();
  l.counters = reinterpret_cast<uint32_t*>(counters.data_ptr<int>());
}

at::Tensor zeroed_counters(const cuda::Plan& p, const at::Tensor& like) {
  return at::zeros({p.n_counters}, like.options().dtype(at::kInt));
}

// The launcher of the call's dtype (launchers in DType order), on the current stream.
template <typename Launch>
void launch(const Launch& l, cudaError_t (*const (&launchers)[4])(const Launch&, int,
                                                                  cudaStream_t)) {
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  C10_CUDA_CHECK(launchers[int(l.dtype)](l, int(env_int("SE_FUSED_CUDA_GRID")), stream));
}

// The v2 kernels always run both small layers.
void check_two_layers(const SEArgs& a) {
  TORCH_CHECK(!a.one_layer,
              "se_fused: the one-layer form (w2 None) is not supported by the CUDA kernels "
              "of this build; run it on the CPU or through se_fused.reference");
}

}  // namespace

ForwardCall run_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                             const c10::optional<at::Tensor>& b1,
                             const c10::optional<at::Tensor>& w2,
                             const c10::optional<at::Tensor>& b2,
                             const c10::optional<at::Tensor>& residual,
                             c10::string_view activation, c10::string_view gate,
                             c10::string_view out_activation, bool inplace) {
  const SEArgs checked =
      check_forward_args(x, w1, b1, w2, b2, residual, activation, gate, out_activation);
  check_two_layers(checked);
  const c10::cuda::CUDAGuard guard(x.device());
  const ForwardCall c = prepare_forward(checked, x, w1, b1, w2, b2, residual, inplace);
  if (c.y.numel() == 0) return c;
  const SEArgs& a = c.a;
  const bool aligned = aligned16(c.x) && aligned16(c.res) && aligned16(c.y);
  const cuda::Plan plan = plan_call(a, false, false, int(x.element_size()), aligned,
                                    x.get_device());
  const at::Tensor work = at::empty({plan.ws_size}, c.z.options());
  const at::Tensor counters = zeroed_counters(plan, x);

  cuda::ForwardLaunch l{};
  fill_common(l, plan, a, c.p, x.scalar_type(), work, counters);
  l.x = c.x.data_ptr();
  l.res = ptr_or_null(c.res);
  l.y = c.y.data_ptr();
  l.z = c.z.data_ptr();
  l.pre = c.pre.data_ptr();
  l.relu = a.out_relu;
  launch(l, {cuda::launch_forward_float, cuda::launch_forward_half,
             cuda::launch_forward_bfloat16, cuda::launch_forward_double});
  return c;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& z,
                 const c10::optional<at::Tensor>& y, const at::Tensor& w1,
                 const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                 const c10::optional<at::Tensor>& b2, c10::string_view activation,
                 c10::string_view gate, bool want_grad_residual, bool x_is_output,
                 const c10::optional<at::Tensor>& pre) {
  const SEArgs checked =
      check_backward_args(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, x_is_output, pre);
  check_two_layers(checked);
  const c10::cuda::CUDAGuard guard(x.device());
  // The persistent kernel recomputes a1 and a2 from z in tiles that overlap the
  // reduce tiles, so pre is only checked here, not read.
  const BackwardCall c = prepare_backward(checked, grad_y, x, z, y, w1, b1, w2, b2,
                                          want_grad_residual, c10::nullopt);
  if (c.gx.numel() == 0) return c.outputs();
  const SEArgs& a = c.a;
  const bool has_mask = c.y.defined();
  const bool aligned = aligned16(c.gy) && aligned16(c.x) && aligned16(c.y) && aligned16(c.gx) &&
                       aligned16(c.gres);
  const cuda::Plan plan = plan_call(a, true, has_mask, int(x.element_size()), aligned,
                                    x.get_device());
  const at::Tensor work = at::empty({plan.ws_size}, c.gw1.options());
  const at::Tensor counters = zeroed_counters(plan, x);

  cuda::BackwardLaunch l{};
  fill_common(l, plan, a, c.p, x.scalar_type(), work, counters);
  l.gy = c.gy.data_ptr();
  l.v = c.x.data_ptr();
  l.mask = has_mask ? c.y.data_ptr() : nullptr;
  l.gx = c.gx.data_ptr();
  l.gres = const_cast<void*>(ptr_or_null(c.gres));
  l.z = c.z.data_ptr();
  l.gw1 = c.gw1.data_ptr();
  l.gb1 = c.gb1.data_ptr();
  l.gw2 = c.gw2.data_ptr();
  l.gb2 = c.gb2.data_ptr();
  l.from_y = a.from_y;
  launch(l, {cuda::launch_backward_float, cuda::launch_backward_half,
             cuda::launch_backward_bfloat16, cuda::launch_backward_double});
  return c.outputs();
}

}  // namespace se_fused

TORCH_LIBRARY_IMPL(se_fused, CUDA, m) {
  m.impl("se_forward", &se_fused::forward_op<se_fused::run_forward_cuda>);
  m.impl("se_forward_", &se_fused::forward_inplace_op<se_fused::run_forward_cuda>);
  m.impl("se_backward", &se_fused::se_backward_cuda);
}
