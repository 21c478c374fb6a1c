// The CUDA back end of the se_fused ops (se_entry.h: the arguments are checked and
// the buffers prepared before): the plan of the call (plan.h), then per pass
// (kernel_launch.cuh)
//   1. a kernel that zeroes the plan's counters (last-arrival counts), a fresh buffer
//      of the call: zeroed in the stream on every call, so a CUDA graph replays it too,
//      and no state survives a call (an aborted call leaves nothing behind);
//   2. launch 1 (squeeze / reduce, with the small layers' finalizers);
//   3. launch 2 (scale / map, with the weight gradients in the backward);
// 2 and 3 by programmatic dependent launch where the GPU has it (sm_90+).
// No block waits for another, nothing synchronizes with the host. Parameters not
// already in the accumulation dtype were converted by prepare_forward /
// prepare_backward (one cast kernel each, as for the CPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "cuda/launch.h"
#include "se_entry.h"

namespace se_fused {
namespace {

bool aligned16(const at::Tensor& t) {
  return !t.defined() || t.numel() == 0 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// Knobs, read per call; none changes a result bit (summation orders depend on the
// shape only):
//   SE_FUSED_CUDA_L2_BYTES: the L2 size the plan assumes (default: the device's);
//     whether the re-read tensors fit decides the L2 policy of launch 1 and the
//     tile order of launch 2.
//   SE_FUSED_CUDA_SAMPLES: samples per block of launch 2 (at most 8, 4 for float64;
//     default: plan.h, from the tile's rows or the SM count); fewer means more
//     blocks, each recomputing s for its pairs.
//   SE_FUSED_CUDA_PDL: 0 launches the pass's kernels plainly, one after the other;
//     default 1: launches 1 and 2 by programmatic dependent launch on sm_90+ GPUs
//     (each starts while the kernel before it finishes and waits for it in the kernel).
int64_t env_int(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoll(v) : 0;
}

bool pdl_wanted() {
  const char* v = std::getenv("SE_FUSED_CUDA_PDL");
  return v == nullptr || std::atoll(v) != 0;
}

int64_t l2_bytes(int device) {
  const int64_t forced = env_int("SE_FUSED_CUDA_L2_BYTES");
  if (forced > 0) return forced;
  constexpr int kCached = 64;
  static std::atomic<int64_t> cache[kCached];
  const bool cached = device >= 0 && device < kCached;
  int64_t v = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (v == 0) {
    int bytes = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device));
    v = bytes > 0 ? bytes : 1;
    if (cached) cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

// Blocks of launch 2 the device holds at once: its SMs times the blocks per SM the
// kernels are compiled for (se_cuda_common.cuh, SE_FUSED_MIN_BLOCKS_2, 3).
int64_t launch2_slots(int device) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];
  const bool cached = device >= 0 && device < kCached;
  int sms = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (cached) cache[device].store(sms, std::memory_order_relaxed);
  }
  return int64_t(sms) * 3;
}

// reread_bytes: what launch 2 reads again (x; or grad_y and the mask). It stays in
// L2 between the launches when it takes at most half of it.
cuda::Plan plan_call(const SEArgs& a, bool backward, int esize, bool aligned,
                     int64_t reread_bytes, int device) {
  cuda::PlanInput in{a.N,    a.C,   a.hw(),  a.R,
                     a.channels_last, backward, a.one_layer,
                     esize,  aligned, reread_bytes <= l2_bytes(device) / 2,
                     env_int("SE_FUSED_CUDA_SAMPLES"), launch2_slots(device)};
  const cuda::Plan p = cuda::make_plan(in);
  constexpr int64_t kMaxGrid = (int64_t(1) << 31) - 1;
  TORCH_CHECK(p.grid1 <= kMaxGrid && p.grid2 <= kMaxGrid, "se_fused: x of shape (", a.N, ", ",
              a.C, ", ", a.H, ", ", a.W, ") needs ", std::max(p.grid1, p.grid2),
              " blocks, more than a CUDA grid holds (2^31 - 1)");
  // the small layers index a sample tile's NT x R outputs with 32-bit integers
  TORCH_CHECK(p.NT * a.R <= kMaxGrid, "se_fused: w1 has ", a.R,
              " rows; the CUDA kernels take at most ", kMaxGrid / p.NT);
  return p;
}

// What both passes' launches share: parameters, workspace, counters, the PDL knob.
template <typename Launch>
void fill_common(Launch& l, const cuda::Plan& plan, const SEArgs& a, const ParamTensors& p,
                 const at::Tensor& work, const at::Tensor& counters) {
  l.plan = plan;
  l.w1 = p.w1.data_ptr();
  l.b1 = ptr_or_null(p.b1);
  l.w2 = ptr_or_null(p.w2);
  l.b2 = ptr_or_null(p.b2);
  l.act = a.act;
  l.gate = a.gate;
  l.workspace = work.data_ptr();
  l.counters = reinterpret_cast<uint32_t*>(counters.data_ptr<int>());
  l.pdl = pdl_wanted();
}

// The call's counters; the launcher's first kernel zeroes them.
at::Tensor counter_buffer(const cuda::Plan& p, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(p.n_counters, 1)}, like.options().dtype(at::kInt));
}

// The pass's launches for the call's dtype, on the current stream.
template <typename Launch>
void launch(const Launch& l, DType dtype) {
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = SE_DTYPE_SWITCH(dtype, T, [&] {
    if constexpr (std::is_same_v<Launch, cuda::ForwardLaunch>) {
      return cuda::launch_forward_t<T>(l, stream);
    } else {
      return cuda::launch_backward_t<T>(l, stream);
    }
  });
  C10_CUDA_CHECK(err);
}

int64_t bytes_of(const at::Tensor& t) {
  return t.defined() ? t.numel() * int64_t(t.element_size()) : 0;
}

// [a1 | a2] from z when se_backward is called without pre (not the autograd path,
// which saves the forward's): the layers in ATen, in the accumulation dtype.
at::Tensor pre_from_z(const SEArgs& a, const at::Tensor& z, const ParamTensors& p) {
  at::Tensor a1 = at::matmul(z, p.w1.t());
  if (p.b1.defined()) a1 = a1 + p.b1;
  if (a.one_layer) return at::cat({a1, a1}, 1);
  at::Tensor h;
  switch (a.act) {
    case Act::ReLU: h = at::relu(a1); break;
    case Act::SiLU: h = at::silu(a1); break;
    case Act::HardSwish: h = at::hardswish(a1); break;
    case Act::GELU: h = at::gelu(a1); break;
    default: h = a1; break;
  }
  at::Tensor a2 = at::matmul(h, p.w2.t());
  if (p.b2.defined()) a2 = a2 + p.b2;
  return at::cat({a1, a2}, 1).contiguous();
}

// The kernels on a prepared call (se_entry.h), on x's device.
struct CudaBackend {
  static void forward(const ForwardCall& c) {
    const c10::cuda::CUDAGuard guard(c.x.device());
    const SEArgs& a = c.a;
    const bool aligned = aligned16(c.x) && aligned16(c.res) && aligned16(c.y);
    const cuda::Plan plan =
        plan_call(a, false, int(c.x.element_size()), aligned, bytes_of(c.x), c.x.get_device());
    const at::Tensor work = at::empty({plan.ws_size}, c.z.options());
    const at::Tensor counters = counter_buffer(plan, c.x);

    cuda::ForwardLaunch l{};
    fill_common(l, plan, a, c.p, work, counters);
    l.x = c.x.data_ptr();
    l.res = ptr_or_null(c.res);
    l.y = c.y.data_ptr();
    l.z = c.z.data_ptr();
    l.pre = c.pre.data_ptr();
    l.relu = a.out_relu;
    launch(l, a.dtype);
  }

  static void backward(const BackwardCall& c) {
    const c10::cuda::CUDAGuard guard(c.x.device());
    const SEArgs& a = c.a;
    const bool aligned = aligned16(c.gy) && aligned16(c.x) && aligned16(c.y) &&
                         aligned16(c.gx) && aligned16(c.gres);
    const cuda::Plan plan = plan_call(a, true, int(c.x.element_size()), aligned,
                                      bytes_of(c.gy) + bytes_of(c.y), c.x.get_device());
    const at::Tensor pre_values = c.pre.defined() ? c.pre : pre_from_z(a, c.z, c.p);
    const at::Tensor work = at::empty({plan.ws_size}, c.gw1.options());
    const at::Tensor counters = counter_buffer(plan, c.x);

    cuda::BackwardLaunch l{};
    fill_common(l, plan, a, c.p, work, counters);
    l.gy = c.gy.data_ptr();
    l.v = c.x.data_ptr();
    l.mask = ptr_or_null(c.y);
    l.gx = c.gx.data_ptr();
    l.gres = ptr_or_null(c.gres);
    l.z = c.z.data_ptr();
    l.pre = pre_values.data_ptr();
    l.gw1 = c.gw1.data_ptr();
    l.gb1 = c.gb1.data_ptr();
    l.gw2 = a.one_layer ? nullptr : c.gw2.data_ptr();
    l.gb2 = a.one_layer ? nullptr : c.gb2.data_ptr();
    l.from_y = a.from_y;
    launch(l, a.dtype);
  }
};

}  // namespace
}  // namespace se_fused

TORCH_LIBRARY_IMPL(se_fused, CUDA, m) { se_fused::register_ops<se_fused::CudaBackend>(m); }
