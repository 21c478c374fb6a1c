// Scale tiles: y = x * s (+ residual) (relu), over the same tiles as the squeeze,
// with the tile's s values in shared memory (small_layers.cuh computes them).
// Each thread reads and writes its own granules only, so y may be x itself (in
// place).
//
// Elementwise tiles of both passes (this file and backward_map.cuh) share
// `for_each_granule`: it hands a functor every granule of the tile with the
// channel index (into the staged constants) of each of its elements.
#pragma once

#include "squeeze.cuh"

namespace se_fused {
namespace cuda {

// Channel (relative to c_first) of element `off` of an NCHW tile, and how many
// elements from there to the next row boundary (capped at V + 1: only the
// granule's boundaries matter). Long rows: a tile touches at most two rows.
template <int V>
SE_DEV void nchw_channel(const Plan& p, const NchwTile& tl, int off, int* ch, int* left) {
  const int64_t q = tl.e0 - int64_t(tl.c_first) * p.HW + off;  // < H*W + L
  int64_t rest;
  if (p.t.long_rows) {
    *ch = q >= p.HW ? 1 : 0;
    rest = (*ch + 1) * p.HW - q;
  } else {
    const uint32_t c = uint32_t(q) / uint32_t(p.HW);  // q < 2L: 32-bit division
    *ch = int(c);
    rest = int64_t(c + 1) * p.HW - q;
  }
  *left = int(imin(rest, V + 1));
}

// The elementwise NCHW loop over one granule: f(e, ch) for its V elements, with ch
// the element's channel relative to the tile's first.
template <int V, typename F>
SE_DEV void for_granule_channels(const Plan& p, const NchwTile& tl, int off, const F& f) {
  int ch, left;
  nchw_channel<V>(p, tl, off, &ch, &left);
  const int step = int(imin(p.HW, V + 1));
#pragma unroll
  for (int e = 0; e < V; ++e) {
    if (e == left) {
      ++ch;
      left += step;
    }
    f(e, ch);
  }
}

// Where a thread's granules of an elementwise tile of launch 2 (plan.h t2) are, in
// both layouts. NCHW: granule tx + 256 k of the tile's span; channels_last: granule tx
// of pixel rows ty + TP k of the tile's rows, which are the PT-pixel parts of `M`
// samples one after another (stacked; M = 1 otherwise). Constants (s, dz/HW) are
// indexed by the channel relative to the tile's first, plus nch times the sample of a
// stacked tile.
template <bool CL, int V>
struct TileFrame {
  NchwTile tl;
  int64_t base;   // first element of the tile in the tensor
  int64_t cb;     // the tile's first channel
  int rows, row, nch;
  int tx, ty, per_row;
  int M;          // channels_last: samples stacked in the tile

  // stacked: the block's samples (used where the plan stacks them)
  SE_DEV TileFrame(const Plan& p, int64_t n, int64_t ct, int64_t part, int stacked) {
    const Tiles& t = p.t2;
    M = 1;
    if constexpr (!CL) {
      tl = nchw_tile(p, n, ct, part);
      base = tl.base;
      rows = 1;
      row = tl.len;
      nch = tl.nch;
      cb = tl.c_first;
      tx = int(threadIdx.x);
      ty = 0;
    } else {
      const int64_t c0 = ct * t.CTw, p0 = part * t.PT;
      M = p.stack2 ? stacked : 1;
      rows = int(imin(t.PT, p.HW - p0));
      row = nch = int(imin(t.CTw, p.C - c0));
      base = (n * p.HW + p0) * p.C + c0;
      cb = c0;
      tx = int(threadIdx.x) % t.TC;
      ty = int(threadIdx.x) / t.TC;
    }
    per_row = (row + V - 1) / V;
  }
  // The first of the tile's channels whose a2 this tile writes: each (n, c) has one
  // owner, the tile holding its row's first element.
  SE_DEV int own_from(const Plan& p, int64_t part) const {
    if constexpr (CL) return part == 0 ? 0 : nch;
    return int64_t(tl.c_first) * p.HW < tl.e0 ? 1 : 0;
  }
  // channels_last: the sample (within the stack) of tile row j.
  SE_DEV int sample_of(int j) const { return M > 1 ? j / rows : 0; }
  // Element offset (from base) of this thread's k-th granule, and whether it exists.
  SE_DEV int64_t offset(const Plan& p, int k) const {
    if constexpr (CL) {
      const int j = ty + k * p.t2.TP, m = sample_of(j);
      return int64_t(m) * p.C * p.HW + int64_t(j - m * rows) * p.C + tx * V;
    }
    return int64_t(tx + k * kThreads) * V;
  }
  SE_DEV bool valid(const Plan& p, int k) const {
    if constexpr (CL) return tx < per_row && ty + k * p.t2.TP < M * rows;
    return tx + k * kThreads < per_row;
  }
  // f(e, ch) for the V elements of the thread's k-th granule.
  template <typename F>
  SE_DEV void channels(const Plan& p, int k, const F& f) const {
    if constexpr (CL) {
      const int c0 = sample_of(ty + k * p.t2.TP) * nch + tx * V;
#pragma unroll
      for (int e = 0; e < V; ++e) f(e, c0 + e);
    } else {
      for_granule_channels<V>(p, tl, int(offset(p, k)), f);
    }
  }
  // Element i of the tile in element order (paths without granules): its offset
  // from base and its constant's index. These divide per element; only fallbacks use
  // them.
  SE_DEV int count() const { return M * rows * row; }
  SE_DEV void element(const Plan& p, int i, int64_t* off, int* ch) const {
    if constexpr (CL) {
      const int j = i / nch, c = i - j * nch, m = sample_of(j);
      *off = int64_t(m) * p.C * p.HW + int64_t(j - m * rows) * p.C + c;
      *ch = m * nch + c;
    } else {
      const int64_t q = tl.e0 - int64_t(tl.c_first) * p.HW + i;
      *off = i;
      *ch = int(p.t.hw_div.div(uint64_t(q)));
    }
  }
};

// The scale of tile f moved by `shift` elements (to another sample of the block);
// sc[ch] is s at the index f.channels gives (the tile's channel cb + ch of a
// per-sample tile).
template <typename T, typename acc_t, bool CL, bool HasRes>
SE_DEV void scale_tile(const Plan& p, const T* x, const T* res, T* y, const acc_t* sc, bool relu,
                       const TileFrame<CL, Width<T>::value>& f, int64_t shift) {
  constexpr int V = Width<T>::value;
  constexpr int U = CL ? kPixelsPerThread : XSource<T, acc_t>::kGranulesPerThread;
  constexpr int S = HasRes ? 2 : 4;  // granules in flight: 4 loads either way
  auto out = [relu](acc_t xv, acc_t sv, acc_t rv) {
    const acc_t v = HasRes ? se_fma(xv, sv, rv) : se_mul(xv, sv);
    return relu ? apply_relu(v) : v;
  };
  const T* xb = x + f.base + shift;
  T* yb = y + f.base + shift;
  const T* rb = HasRes ? res + f.base + shift : nullptr;

  if (!p.vec) {
    for (int i = threadIdx.x; i < f.count(); i += kThreads) {
      int64_t off;
      int ch;
      f.element(p, i, &off, &ch);
      const acc_t rv = HasRes ? static_cast<acc_t>(load1(rb + off)) : acc_t(0);
      store1(yb + off, static_cast<T>(out(static_cast<acc_t>(load1(xb + off)), sc[ch], rv)));
    }
    return;
  }

  const uint64_t last = l2_policy(L2Hint::Last);
  // One step of S granules at a time (not unrolled: the offsets and predicates of
  // all U granules would be precomputed and spilled).
#pragma unroll 1
  for (int k0 = 0; k0 < U; k0 += S) {
    // Zeroed: granules assigned under a condition into an uninitialized array are
    // kept in local memory (ptxas marks the spills).
    Raw16 xr[S] = {}, rr[S] = {};
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (f.valid(p, k0 + k)) {
        xr[k] = load16(xb + f.offset(p, k0 + k), last);
        if (HasRes) rr[k] = load16(rb + f.offset(p, k0 + k), last);
      }
    }
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (!f.valid(p, k0 + k)) continue;
      const int64_t off = f.offset(p, k0 + k);
      acc_t xv[V], rv[V], o[V];
      unpack<T, acc_t>(xr[k], xv);
      if (HasRes) unpack<T, acc_t>(rr[k], rv);
      f.channels(p, k0 + k, [&](int e, int ch) {
        o[e] = out(xv[e], sc[ch], HasRes ? rv[e] : acc_t(0));
      });
      store16(yb + off, pack<T, acc_t>(o));
    }
  }
}

// Launch 2's block: samples [n0, n0 + M) of one (channel tile, part) of t2, in
// reverse order when the first launch could not keep the re-read tensors in L2.
struct ScaleBlock {
  int64_t n0, ct, part;
  int M;
  SE_DEV explicit ScaleBlock(const Plan& P) {
    int64_t b = blockIdx.x;
    if (P.reverse) b = P.grid2_tiles - 1 - b;
    part = b % P.t2.Tp;
    const int64_t q = b / P.t2.Tp;
    ct = q % P.t2.CTn;
    n0 = (q / P.t2.CTn) * P.M2;
    M = int(P.samples_in(n0, P.M2));
  }
  // Tiles streamed one after another: the block's samples, unless they are stacked
  // into one tile.
  SE_DEV int passes(const Plan& P) const { return P.stack2 ? 1 : M; }
};

}  // namespace cuda
}  // namespace se_fused
