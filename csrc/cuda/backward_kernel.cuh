// se_backward_kernel: the whole backward in one persistent launch (plus the
// memset of its counters). Per group g of the ticket order: fc1 recomputed from z
// for wave g, reduce tiles of wave g (sum g*v), map tiles of wave g-1, gate and dz
// tiles of wave g; after the last wave, the weight gradients next to the last map
// tiles. grad_y and y cross HBM once when a wave's share of them fits its L2 budget.
#pragma once

#include "backward_map.cuh"
#include "forward_kernel.cuh"
#include "weight_grads.cuh"

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
  const acc_t* z;
  Layers<acc_t> layers;
  Pieces<acc_t> pieces;
  BackwardExcite<acc_t> bx;
  WeightGrads<acc_t> wg;
  uint32_t* counters;
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
  b.z = static_cast<const acc_t*>(l.z);
  b.layers = layers_of<acc_t>(l);
  b.pieces = pieces_of(p, ws);
  b.bx.fwd = {ws + p.ws_a1p, ws + p.ws_a1, ws + p.ws_h, ws + p.ws_s, nullptr};
  b.bx.da2 = ws + p.ws_da2;
  b.bx.dhp = ws + p.ws_dhp;
  b.bx.da1 = ws + p.ws_da1;
  b.bx.dzs = ws + p.ws_dzs;
  b.bx.from_y = l.from_y;
  b.wg = {static_cast<acc_t*>(l.gw1), static_cast<acc_t*>(l.gb1), static_cast<acc_t*>(l.gw2),
          static_cast<acc_t*>(l.gb2), b.z};
  b.counters = l.counters;
  return b;
}

// Layout and the output-relu mask are template parameters, as in the forward.
template <typename T, bool CL, bool HasMask>
__global__ void __launch_bounds__(kThreads, MinBlocks<T>::value)
    se_backward_kernel(const BackwardParams<T> p) {
  using acc_t = typename AccOf<T>::type;
  SE_BLOCK_SHARED(smem, kSmemBytes + 16);
  const Plan& P = p.plan;
  run_tickets(P, p.counters, smem, [&](const Item& it, volatile uint32_t* flag) {
    const int w = it.wave;
    switch (it.stage) {
      case kBwdFc1: {
        fc1_tile<acc_t>(
            P, p.layers, p.bx.fwd, p.counters, w, it.index,
            [&](int64_t n, int64_t c) { return load_ro(p.z + n * P.C + c); },
            static_cast<acc_t*>(nullptr), smem, flag);
        signal_done(p.counters + P.done_index(kBwdFc1, w));
        break;
      }
      case kBwdReduce: {
        const int64_t n = P.wave_begin(w) + it.index / uint32_t(P.st.per_sample);
        const uint32_t tile = it.index % uint32_t(P.st.per_sample);
        const GradSource<T, acc_t, HasMask> src{p.gy, p.v, p.mask};
        if constexpr (CL) {
          reduce_tile_cl<acc_t>(P, src, n, tile, p.pieces, smem);
        } else {
          reduce_tile_nchw<acc_t>(P, src, n, tile, p.pieces, smem);
        }
        signal_done(p.counters + P.done_index(kBwdReduce, w));
        break;
      }
      case kBwdGate: {
        wait_dependencies(P, it, p.counters);
        gate_tile<CL, acc_t>(P, p.layers, p.bx, p.pieces, p.counters, w, it.index, smem, flag);
        signal_done(p.counters + P.done_index(kBwdGate, w));
        break;
      }
      case kBwdDz: {
        wait_dependencies(P, it, p.counters);
        dz_tile<acc_t>(P, p.layers, p.bx, w, it.index, smem);
        signal_done(p.counters + P.done_index(kBwdDz, w));
        break;
      }
      case kBwdMap: {
        const int64_t n = P.wave_begin(w) + it.index / uint32_t(P.st.per_sample);
        const uint32_t tile = it.index % uint32_t(P.st.per_sample);
        auto wait = [&]() { wait_dependencies(P, it, p.counters); };
        map_tile<T, acc_t, CL, HasMask>(P, p.gy, p.mask, p.gx, p.gres, p.bx.fwd.s, p.bx.dzs, n, tile, smem,
                           wait);
        break;
      }
      case kBwdWeights: {
        for (int v = 0; v < P.W; ++v) {
          wait_at_least(p.counters + P.done_index(kBwdGate, v), uint32_t(P.count(kBwdGate, v)));
        }
        weight_grad_tile<acc_t>(P, p.bx, p.wg, it.index, smem);
        break;
      }
      default:
        break;
    }
  });
}

}  // namespace cuda
}  // namespace se_fused
