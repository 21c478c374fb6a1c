// The forward in two launches (plus the kernel that zeroes the counters before them;
// kernel_launch.cuh chains the three with programmatic dependent launch):
//   se_squeeze_kernel: one block per streaming tile sums x into per-channel
//     pieces; the last tile of a (sample tile, channel group) finalizes z and the
//     group's share of fc1; the last group of a sample tile finalizes a1 and h
//     (small_layers.cuh). No block waits for another.
//   se_scale_kernel: one block per (M2 samples, channel tile, part) computes s for
//     its pairs and writes y = x * s (+ residual) (relu). When x fits in L2, the
//     first launch kept it there; otherwise this one walks its tiles from the end,
//     where the first launch finished, so it re-reads what is still in L2 first.
// Under programmatic dependent launch each kernel starts while the one before it
// runs, and waits for it (wait_prior_grid: complete, its writes visible) before the
// first access that depends on it: launch 1 before its first counter atomic (its tile
// is x, written before the zeroing kernel started), launch 2 before it reads h.
#pragma once

#include "launch.h"
#include "scale.cuh"
#include "small_layers.cuh"

namespace se_fused {
namespace cuda {

template <typename T>
struct ForwardParams {
  using acc_t = typename AccOf<T>::type;
  Plan plan;
  const T* x;
  const T* res;  // nullptr: no residual
  T* y;          // may be x (in place)
  Layers<acc_t> layers;
  Pieces<acc_t> pieces;
  Excite<acc_t> ex;
  uint32_t* counters;
  bool relu;
};

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
  f.layers = layers_of<acc_t>(l);
  f.pieces = pieces_of(p, ws);
  f.ex = {static_cast<acc_t*>(l.z), static_cast<acc_t*>(l.pre), ws + p.ws_p, ws + p.ws_h,
          nullptr, nullptr};
  f.counters = l.counters;
  f.relu = l.relu;
  return f;
}

template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads, SE_FUSED_MIN_BLOCKS)
    se_squeeze_kernel(const ForwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  volatile uint32_t* flag = reinterpret_cast<volatile uint32_t*>(smem + kSmemBytes);
  const Plan& P = p.plan;
  const XSource<T, acc_t> src{p.x, l2_policy(P.keep ? L2Hint::Keep : L2Hint::Normal)};
  allow_next_grid();
  int64_t n, ct;
  reduce_block_tile<CL, acc_t>(P, src, p.pieces, smem, &n, &ct);
  wait_prior_grid();  // the counters
  last_arrivals(
      P, n, ct, p.counters, flag, true,
      [&](int64_t st, int64_t cg) {
        forward_group<CL, acc_t>(P, p.layers, p.ex, p.pieces, st, cg, smem);
      },
      [&](int64_t st) { forward_sample<acc_t>(P, p.layers, p.ex, st); });
}

template <typename T, bool CL, bool HasRes>
__global__ void __launch_bounds__(kThreads, SE_FUSED_MIN_BLOCKS_2)
    se_scale_kernel(const ForwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  constexpr int V = Width<T>::value;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  const Plan& P = p.plan;
  const ScaleBlock b(P);
  const TileFrame<CL, V> f(P, b.n0, b.ct, b.part, b.M);
  if (f.nch == 0) return;  // an empty part of the last channel tile (whole block)
  if (!p.layers.one_layer) {  // the W2 rows of the block's channels: written before the pass
    prefetch_l2(p.layers.w2 + f.cb * P.R, 1, f.nch * P.R * int64_t(sizeof(acc_t)), 0);
  }
  wait_prior_grid();  // h
  acc_t* s_sm = reinterpret_cast<acc_t*>(smem);  // [M][nch]
  forward_gates<acc_t>(P, p.layers, p.ex, b.n0, b.M, f.cb, f.nch, f.own_from(P, b.part), s_sm);
  __syncthreads();
  for (int m = 0; m < b.passes(P); ++m) {
    scale_tile<T, acc_t, CL, HasRes>(P, p.x, p.res, p.y, s_sm + m * f.nch, p.relu, f,
                                     m * P.C * P.HW);
  }
}

}  // namespace cuda
}  // namespace se_fused
