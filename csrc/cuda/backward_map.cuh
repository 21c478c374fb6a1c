// Backward map tiles: grad_x = g * s + dz / HW and grad_residual = g (g masked as
// in backward_reduce.cuh), over the reduce's tiles, with the tile's s and dz / HW
// in shared memory (small_layers.cuh computes them).
#pragma once

#include "backward_reduce.cuh"
#include "scale.cuh"

namespace se_fused {
namespace cuda {

// Tile f moved by `shift` elements (to another sample of the block); sc[ch], dc[ch]:
// s and dz / HW of the tile's channel cb + ch.
template <typename T, typename acc_t, bool CL, bool HasMask>
SE_DEV void map_tile(const Plan& p, const T* gy, const T* mask, T* gx, T* gres, const acc_t* sc,
                     const acc_t* dc, const TileFrame<CL, Width<T>::value>& f, int64_t shift) {
  constexpr int V = Width<T>::value;
  constexpr int U = CL ? kPixelsPerThread : GradSource<T, acc_t, HasMask>::kGranulesPerThread;
  constexpr int S = 2;  // granules in flight: 2 or 4 loads
  const T* gb = gy + f.base + shift;
  const T* mb = HasMask ? mask + f.base + shift : nullptr;
  T* xb = gx + f.base + shift;
  T* rb = gres != nullptr ? gres + f.base + shift : nullptr;
  auto masked = [](acc_t g, acc_t m) { return HasMask ? masked_grad<T, acc_t>(g, m) : g; };

  if (!p.vec) {
    for (int i = threadIdx.x; i < f.count(); i += kThreads) {
      int64_t off;
      int ch;
      f.element(p, i, &off, &ch);
      const acc_t m = HasMask ? static_cast<acc_t>(load1(mb + off)) : acc_t(0);
      const acc_t g = masked(static_cast<acc_t>(load1(gb + off)), m);
      store1(xb + off, static_cast<T>(se_fma(g, sc[ch], dc[ch])));
      if (rb != nullptr) store1(rb + off, static_cast<T>(g));
    }
    return;
  }

  const uint64_t last = l2_policy(L2Hint::Last);
  // One step of S granules at a time (not unrolled: the offsets and predicates of
  // all U granules would be precomputed and spilled).
#pragma unroll 1
  for (int k0 = 0; k0 < U; k0 += S) {
    // Zeroed: see scale_tile.
    Raw16 gr[S] = {}, mr[S] = {};
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (f.valid(p, k0 + k)) {
        gr[k] = load16(gb + f.offset(p, k0 + k), last);
        if (HasMask) mr[k] = load16(mb + f.offset(p, k0 + k), last);
      }
    }
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (!f.valid(p, k0 + k)) continue;
      const int64_t off = f.offset(p, k0 + k);
      acc_t g[V], m[V], o[V];
      unpack<T, acc_t>(gr[k], g);
      if (HasMask) unpack<T, acc_t>(mr[k], m);
#pragma unroll
      for (int e = 0; e < V; ++e) g[e] = masked(g[e], HasMask ? m[e] : acc_t(0));
      f.channels(p, k0 + k, [&](int e, int ch) { o[e] = se_fma(g[e], sc[ch], dc[ch]); });
      store16(xb + off, pack<T, acc_t>(o));
      if (rb != nullptr) store16(rb + off, pack<T, acc_t>(g));
    }
  }
}

}  // namespace cuda
}  // namespace se_fused
