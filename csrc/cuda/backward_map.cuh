// Backward map tiles: grad_x = g * s + dz / HW and grad_residual = g (g masked as
// in backward_reduce.cuh), over the reduce's tiles. grad_y and y are loaded
// before the tile waits for s and dz of its wave; both constants are staged in
// shared memory.
#pragma once

#include "backward_reduce.cuh"
#include "scale.cuh"

namespace se_fused {
namespace cuda {

template <typename T, typename acc_t, bool CL, bool HasMask, typename Wait>
SE_DEV void map_tile(const Plan& p, const T* gy, const T* mask, T* gx, T* gres, const acc_t* s,
                     const acc_t* dzs, int64_t n, uint32_t tile, unsigned char* smem,
                     const Wait& wait) {
  constexpr int V = Width<T>::value;
  constexpr int U = CL ? kPixelsPerThread : GradSource<T, acc_t, HasMask>::kGranulesPerThread;
  constexpr int S = 2;  // granules in flight: 2 or 4 loads
  const TileFrame<CL, V> f(p, n, tile);
  const int64_t half = kStageBytes / 2 / int64_t(sizeof(acc_t));
  acc_t* s_sm = reinterpret_cast<acc_t*>(smem);
  acc_t* d_sm = s_sm + half;
  const bool fits = f.stage(p) && f.nch <= half;
  const T* gb = gy + f.base;
  const T* mb = HasMask ? mask + f.base : nullptr;
  T* xb = gx + f.base;
  T* rb = gres != nullptr ? gres + f.base : nullptr;
  auto masked = [](acc_t g, acc_t m) { return HasMask ? masked_grad<T, acc_t>(g, m) : g; };

  if (!p.st.vec) {
    wait();
    const acc_t* sc = stage_consts(s_sm, s + f.c_src, f.nch, fits);
    const acc_t* dc = stage_consts(d_sm, dzs + f.c_src, f.nch, fits);
    __syncthreads();
    for (int i = threadIdx.x; i < f.count(); i += kThreads) {
      int64_t off;
      int ch;
      f.element(p, i, &off, &ch);
      const acc_t m = HasMask ? static_cast<acc_t>(load1(mb + off)) : acc_t(0);
      const acc_t g = masked(static_cast<acc_t>(load1(gb + off)), m);
      store1(xb + off, static_cast<T>(g * sc[ch] + dc[ch]));
      if (rb != nullptr) store1(rb + off, static_cast<T>(g));
    }
    return;
  }

  Raw16 gr[S], mr[S];
  auto load_step = [&](int k0) {
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (f.valid(p, k0 + k)) {
        gr[k] = load16<L2Hint::Last>(gb + f.offset(p, k0 + k));
        if (HasMask) mr[k] = load16<L2Hint::Last>(mb + f.offset(p, k0 + k));
      }
    }
  };
  load_step(0);  // grad_y and y do not depend on s or dz: load them while waiting
  wait();
  const acc_t* sc = stage_consts(s_sm, s + f.c_src, f.nch, fits);
  const acc_t* dc = stage_consts(d_sm, dzs + f.c_src, f.nch, fits);
  __syncthreads();
#pragma unroll
  for (int k0 = 0; k0 < U; k0 += S) {
    if (k0 > 0) load_step(k0);
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (!f.valid(p, k0 + k)) continue;
      const int64_t off = f.offset(p, k0 + k);
      acc_t g[V], m[V], o[V];
      unpack<T, acc_t>(gr[k], g);
      if (HasMask) unpack<T, acc_t>(mr[k], m);
#pragma unroll
      for (int e = 0; e < V; ++e) g[e] = masked(g[e], HasMask ? m[e] : acc_t(0));
      f.channels(p, off, [&](int e, int ch) { o[e] = g[e] * sc[ch] + dc[ch]; });
      store16(xb + off, pack<T, acc_t>(o));
      if (rb != nullptr) store16(rb + off, pack<T, acc_t>(g));
    }
  }
}

}  // namespace cuda
}  // namespace se_fused
