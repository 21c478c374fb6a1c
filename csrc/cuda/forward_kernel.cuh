// se_forward_kernel: the whole forward in one persistent launch (plus the memset
// that zeroes its counters). Blocks claim work items by ticket (schedule.cuh):
// squeeze tiles of wave g, scale tiles of wave g-1, fc1 and fc2 tiles of wave g,
// then the next group. A wave is a few MB of samples (a quarter of L2), so the
// scale reads x again from L2 and x crosses HBM once.
#pragma once

#include "excitation.cuh"
#include "launch.h"
#include "scale.cuh"

namespace se_fused {
namespace cuda {

// The ticket loop of both persistent kernels. The next ticket is claimed while the
// current item runs (its latency is hidden); the deadlock argument in
// se_cuda_common.cuh holds since the next ticket is larger than the current one.
template <typename Run>
SE_DEV void run_tickets(const Plan& p, uint32_t* counters, unsigned char* smem, const Run& run) {
  volatile uint32_t* sh = reinterpret_cast<volatile uint32_t*>(smem + kSmemBytes);
  if (threadIdx.x == 0) sh[0] = claim_ticket(counters);
  __syncthreads();
  uint32_t t = sh[0];
  while (int64_t(t) < p.total) {
    uint32_t next = 0;
    if (threadIdx.x == 0) next = claim_ticket(counters);
    run(p.decode(t), sh + 1);
    __syncthreads();  // the item's shared memory and sh[0] are free again
    if (threadIdx.x == 0) sh[0] = next;
    __syncthreads();
    t = sh[0];
  }
}

SE_DEV void wait_dependencies(const Plan& p, const Item& it, const uint32_t* counters) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    int stage, w;
    if (p.dependency(it, i, &stage, &w)) {
      wait_at_least(counters + p.done_index(stage, w), uint32_t(p.count(stage, w)));
    }
  }
}

template <typename T>
struct ForwardParams {
  using acc_t = typename AccOf<T>::type;
  Plan plan;
  const T* x;
  const T* res;  // nullptr: no residual
  T* y;          // may be x (in place)
  acc_t* z;      // (N, C) output
  Layers<acc_t> layers;
  Pieces<acc_t> pieces;
  Excite<acc_t> ex;
  uint32_t* counters;
  bool relu;
};

// The small layers' parameters and the squeeze pieces of a launch (either pass).
template <typename acc_t, typename Launch>
inline Layers<acc_t> layers_of(const Launch& l) {
  return {static_cast<const acc_t*>(l.w1), static_cast<const acc_t*>(l.b1),
          static_cast<const acc_t*>(l.w2), static_cast<const acc_t*>(l.b2), Act(l.act),
          Gate(l.gate)};
}
template <typename acc_t>
inline Pieces<acc_t> pieces_of(const Plan& p, acc_t* ws) {
  return {ws + p.ws_rowsum, ws + p.ws_edges, ws + p.ws_part};
}

template <typename T>
inline ForwardParams<T> forward_params(const ForwardLaunch& l) {
  using acc_t = typename AccOf<T>::type;
  const Plan& p = l.plan;
  acc_t* ws = static_cast<acc_t*>(l.workspace);
  ForwardParams<T> f;
  f.plan = p;
  f.x = static_cast<const T*>(l.x);
  f.res = static_cast<const T*>(l.res);
  f.y = static_cast<T*>(l.y);
  f.z = static_cast<acc_t*>(l.z);
  f.layers = layers_of<acc_t>(l);
  f.pieces = pieces_of(p, ws);
  f.ex = {ws + p.ws_a1p, nullptr, ws + p.ws_h, ws + p.ws_s, static_cast<acc_t*>(l.pre)};
  f.counters = l.counters;
  f.relu = l.relu;
  return f;
}

// Layout and residual are template parameters (kernel_launch.cuh picks one of
// four per dtype): a run-time switch between them in one persistent kernel would
// keep every path's values live across the item loop and spill at 40 registers.
template <typename T, bool CL, bool HasRes>
__global__ void __launch_bounds__(kThreads, MinBlocks<T>::value)
    se_forward_kernel(const ForwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  const Plan& P = p.plan;
  run_tickets(P, p.counters, smem, [&](const Item& it, volatile uint32_t* flag) {
    const int w = it.wave;
    switch (it.stage) {
      case kSqueeze: {
        const int64_t n = P.wave_begin(w) + it.index / uint32_t(P.st.per_sample);
        const uint32_t tile = it.index % uint32_t(P.st.per_sample);
        const XSource<T, acc_t> src{p.x};
        if constexpr (CL) {
          reduce_tile_cl<acc_t>(P, src, n, tile, p.pieces, smem);
        } else {
          reduce_tile_nchw<acc_t>(P, src, n, tile, p.pieces, smem);
        }
        signal_done(p.counters + P.done_index(kSqueeze, w));
        break;
      }
      case kFc1: {
        wait_dependencies(P, it, p.counters);
        const acc_t inv_hw = static_cast<acc_t>(P.inv_hw);
        fc1_tile<acc_t>(
            P, p.layers, p.ex, p.counters, w, it.index,
            [&](int64_t n, int64_t c) { return row_total<CL>(P, p.pieces, n, c) * inv_hw; }, p.z,
            smem, flag);
        signal_done(p.counters + P.done_index(kFc1, w));
        break;
      }
      case kFc2: {
        wait_dependencies(P, it, p.counters);
        fc2_tile<acc_t>(P, p.layers, p.ex, w, it.index, smem);
        signal_done(p.counters + P.done_index(kFc2, w));
        break;
      }
      case kScale: {
        const int64_t n = P.wave_begin(w) + it.index / uint32_t(P.st.per_sample);
        const uint32_t tile = it.index % uint32_t(P.st.per_sample);
        auto wait = [&]() { wait_dependencies(P, it, p.counters); };
        scale_tile<T, acc_t, CL, HasRes>(P, p.x, p.res, p.y, p.ex.s, p.relu, n, tile, smem, wait);
        break;
      }
      default:
        break;
    }
  });
}

}  // namespace cuda
}  // namespace se_fused
