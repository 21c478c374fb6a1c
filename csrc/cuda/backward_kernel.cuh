// The backward in two launches (plus the kernel that zeroes the counters before them;
// programmatic dependent launch as in forward_kernel.cuh):
//   se_reduce_kernel: one block per streaming tile sums g*v (g masked by the
//     output relu) into per-channel pieces; the last tile of a (sample tile,
//     channel group) finalizes da2 and the group's share of dh; the last group of
//     a sample tile finalizes da1 and h (small_layers.cuh). No block waits.
//   se_map_kernel: one block per (M2 samples, channel tile, part) computes s and
//     dz / HW for its pairs and writes grad_x = g * s + dz / HW (and grad_residual
//     = g); further blocks of the same launch compute the weight gradients (a
//     tile's batch split over several blocks, the last arrival adds their partials).
// grad_y and the mask are kept in L2 by the first launch when they fit, else the
// map walks its tiles from the end.
#pragma once

#include "backward_map.cuh"
#include "launch.h"
#include "small_layers.cuh"

namespace se_fused {
namespace cuda {

template <typename T>
struct BackwardParams {
  using acc_t = typename AccOf<T>::type;
  Plan plan;
  const T* gy;
  const T* v;     // x, or y for the y-only backward
  const T* mask;  // y when the output relu was applied, else nullptr
  T* gx;
  T* gres;        // nullptr: not wanted
  Layers<acc_t> layers;
  Pieces<acc_t> pieces;
  Excite<acc_t> ex;
  WeightGrads<acc_t> wg;
  uint32_t* counters;
  bool from_y;
};

template <typename T>
inline BackwardParams<T> backward_params(const BackwardLaunch& l) {
  using acc_t = typename AccOf<T>::type;
  const Plan& p = l.plan;
  acc_t* ws = static_cast<acc_t*>(l.workspace);
  BackwardParams<T> b;
  b.plan = p;
  b.gy = static_cast<const T*>(l.gy);
  b.v = static_cast<const T*>(l.v);
  b.mask = static_cast<const T*>(l.mask);
  b.gx = static_cast<T*>(l.gx);
  b.gres = static_cast<T*>(l.gres);
  b.layers = layers_of<acc_t>(l);
  b.pieces = pieces_of(p, ws);
  // z and pre are inputs here: never written by the backward's kernels.
  b.ex = {const_cast<acc_t*>(static_cast<const acc_t*>(l.z)),
          const_cast<acc_t*>(static_cast<const acc_t*>(l.pre)),
          ws + p.ws_p, ws + p.ws_h, ws + p.ws_da2, ws + p.ws_da1};
  b.wg = {static_cast<acc_t*>(l.gw1), static_cast<acc_t*>(l.gb1), static_cast<acc_t*>(l.gw2),
          static_cast<acc_t*>(l.gb2), ws + p.ws_wg};
  b.counters = l.counters;
  b.from_y = l.from_y;
  return b;
}

template <typename T, bool CL, bool HasMask>
__global__ void __launch_bounds__(kThreads, SE_FUSED_MIN_BLOCKS)
    se_reduce_kernel(const BackwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  volatile uint32_t* flag = reinterpret_cast<volatile uint32_t*>(smem + kSmemBytes);
  const Plan& P = p.plan;
  const GradSource<T, acc_t, HasMask> src{p.gy, p.v, p.mask,
                                          l2_policy(P.keep ? L2Hint::Keep : L2Hint::Normal)};
  allow_next_grid();
  int64_t n, ct;
  reduce_block_tile<CL, acc_t>(P, src, p.pieces, smem, &n, &ct);
  wait_prior_grid();  // the counters
  last_arrivals(
      P, n, ct, p.counters, flag, !P.one_layer,
      [&](int64_t st, int64_t cg) {
        backward_group<CL, acc_t>(P, p.layers, p.ex, p.pieces, p.from_y, st, cg, smem);
      },
      [&](int64_t st) { backward_sample<acc_t>(P, p.layers, p.ex, st); });
}

template <typename T, bool CL, bool HasMask>
__global__ void __launch_bounds__(kThreads, SE_FUSED_MIN_BLOCKS_2)
    se_map_kernel(const BackwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  constexpr int V = Width<T>::value;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  const Plan& P = p.plan;
  if (int64_t(blockIdx.x) >= P.grid2_tiles) {
    wait_prior_grid();  // da1, da2, h; the counters
    weight_grad_block<acc_t>(P, p.ex, p.wg, p.counters,
                             reinterpret_cast<volatile uint32_t*>(smem + kSmemBytes),
                             int64_t(blockIdx.x) - P.grid2_tiles);
    return;
  }
  const ScaleBlock b(P);
  const TileFrame<CL, V> f(P, b.n0, b.ct, b.part, b.M);
  if (f.nch == 0) return;
  // the W1 columns of the block's channels: parameters, written before the pass
  prefetch_l2(p.layers.w1 + f.cb, P.R, f.nch * int64_t(sizeof(acc_t)),
              P.C * int64_t(sizeof(acc_t)));
  wait_prior_grid();  // da1
  acc_t* s_sm = reinterpret_cast<acc_t*>(smem);  // [M][nch]
  acc_t* d_sm = s_sm + b.M * f.nch;               // [M][nch]
  backward_consts<acc_t>(P, p.layers, p.ex, b.n0, b.M, f.cb, f.nch, s_sm, d_sm);
  __syncthreads();
  for (int m = 0; m < b.passes(P); ++m) {
    map_tile<T, acc_t, CL, HasMask>(P, p.gy, p.mask, p.gx, p.gres, s_sm + m * f.nch,
                                    d_sm + m * f.nch, f, m * P.C * P.HW);
  }
}

}  // namespace cuda
}  // namespace se_fused
