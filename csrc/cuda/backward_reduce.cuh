// Backward reduce tiles: d[n, c] = sum over H*W of g * v, with g = grad_y masked
// by the output relu (torch.relu's rule: blocked only where y <= 0, so NaN
// passes) and v = x, or y for the y-only backward (x_is_output). Same tiles and
// pieces as the squeeze (squeeze.cuh); the products (each rounded on its own, in
// both paths) are staged in the accumulation type, 16 KB a tile (4096 elements),
// 2 granules of each tensor a thread in flight (4 to 6 loads).
#pragma once

#include "squeeze.cuh"

namespace se_fused {
namespace cuda {

template <typename T, typename acc_t>
SE_DEV acc_t masked_grad(acc_t g, acc_t y) {
  return relu_passes(y) ? g : acc_t(0);
}

template <typename T, typename acc_t, bool HasMask>
struct GradSource {
  static constexpr int V = Width<T>::value;
  static constexpr int kGranulesPerThread =
      (kStageBytes / int(sizeof(acc_t))) / (kThreads * V);  // fp32 4, 16-bit 2, fp64 4
  static constexpr int kStep = 2;
  using staged_t = acc_t;
  struct Loaded {
    Raw16 g, v, m;
  };
  const T* gy;
  const T* v;
  const T* mask;  // y when the output relu was applied, else nullptr
  uint64_t keep;  // grad_y and the mask: Keep when launch 2's re-read hits L2, else Normal
  uint64_t last = l2_policy(L2Hint::Last);

  // grad_y and y are read again by launch 2; v is not.
  SE_DEV Loaded load(int64_t off) const {
    Loaded l;
    l.g = load16(gy + off, keep);
    l.v = load16(v + off, last);
    if (HasMask) l.m = load16(mask + off, keep);
    return l;
  }
  SE_DEV acc_t scalar(int64_t off) const {
    acc_t g = static_cast<acc_t>(load1(gy + off));
    if (HasMask) g = masked_grad<T, acc_t>(g, static_cast<acc_t>(load1(mask + off)));
    return se_mul(g, static_cast<acc_t>(load1(v + off)));
  }
  SE_DEV void terms(const Loaded& l, acc_t* e) const {
    acc_t g[V], x[V];
    unpack<T, acc_t>(l.g, g);
    unpack<T, acc_t>(l.v, x);
    if (HasMask) {
      acc_t m[V];
      unpack<T, acc_t>(l.m, m);
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] = masked_grad<T, acc_t>(g[k], m[k]);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) e[k] = se_mul(g[k], x[k]);
  }
  SE_DEV void stage(const Loaded& l, staged_t* dst) const {
    acc_t e[V];
    terms(l, e);
#pragma unroll
    for (int k = 0; k < V; ++k) dst[k] = e[k];
  }
  static SE_DEV acc_t value(staged_t s) { return s; }
  static SE_DEV staged_t to_staged(acc_t v) { return v; }
};

}  // namespace cuda
}  // namespace se_fused
