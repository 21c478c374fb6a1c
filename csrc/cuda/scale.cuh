// Scale tiles: y = x * s (+ residual) (relu), over the same tiles as the squeeze.
// The tile's first granules are loaded before it waits for s (x does not depend
// on it), the tile's s values are staged in shared memory, and each thread then
// reads and writes its own granules only, so y may be x itself (in place).
//
// Elementwise tiles of both passes (this file and backward_map.cuh) share
// `for_each_granule`: it hands a functor every granule of the tile with the
// channel index (into the staged constants) of each of its elements.
#pragma once

#include "squeeze.cuh"

namespace se_fused {
namespace cuda {

// Copies n per-channel values from global (written earlier in this launch) to
// shared memory and returns where the tile reads them: there, or straight from
// global when they do not fit (H*W of a few elements, many channels a tile). The
// global reads are plain loads: they come after the acquire of the wait, which
// invalidates L1, and its barrier.
template <typename acc_t>
SE_DEV const acc_t* stage_consts(acc_t* dst, const acc_t* src, int n, bool fits) {
  if (!fits) return src;
  for (int j = threadIdx.x; j < n; j += kThreads) dst[j] = load_cg(src + j);
  return dst;
}

// The channel range an NCHW tile touches and where its elements start.
struct NchwTile {
  int64_t e0;    // first element, within the sample
  int64_t base;  // first element, within the tensor
  int len, c_first, nch;
};

SE_DEV NchwTile nchw_tile(const Plan& p, int64_t n, uint32_t t) {
  NchwTile r;
  const int64_t P = p.C * p.HW;
  r.e0 = int64_t(t) << p.st.log2_L;
  r.len = int(imin(p.st.L, P - r.e0));
  r.base = n * P + r.e0;
  r.c_first = int(p.st.hw_div.div(uint64_t(r.e0)));
  r.nch = int(p.st.hw_div.div(uint64_t(r.e0 + r.len - 1))) - r.c_first + 1;
  return r;
}

// Channel (relative to c_first) of element `off` of an NCHW tile, and how many
// elements from there to the next row boundary (capped at V + 1: only the
// granule's boundaries matter). Long rows: a tile touches at most two rows.
template <int V>
SE_DEV void nchw_channel(const Plan& p, const NchwTile& tl, int off, int* ch, int* left) {
  const int64_t q = tl.e0 - int64_t(tl.c_first) * p.HW + off;  // < H*W + L
  int64_t rest;
  if (p.st.long_rows) {
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

// Where a thread's granules of an elementwise tile are, in both layouts. NCHW:
// granule tx + 256 k of the tile's span; channels_last: granule tx of pixel rows
// ty + TP k of the tile's PT x CT block. Constants (s, dz/HW) are indexed by the
// channel relative to the tile's first (`c_src` is that channel's n*C + c).
template <bool CL, int V>
struct TileFrame {
  NchwTile tl;
  int64_t base;   // first element of the tile in the tensor
  int64_t c_src;  // n * C + first channel of the tile
  int rows, row, nch;
  int tx, ty, per_row;

  SE_DEV TileFrame(const Plan& p, int64_t n, uint32_t tile) {
    const Stream& st = p.st;
    if constexpr (!CL) {
      tl = nchw_tile(p, n, tile);
      base = tl.base;
      rows = 1;
      row = tl.len;
      nch = tl.nch;
      c_src = n * p.C + tl.c_first;
      tx = int(threadIdx.x);
      ty = 0;
    } else {
      const uint32_t pt = tile / uint32_t(st.CTn), ct = tile % uint32_t(st.CTn);
      const int64_t c0 = int64_t(ct) * st.CT, p0 = int64_t(pt) * st.PT;
      rows = int(imin(st.PT, p.HW - p0));
      row = nch = int(imin(st.CT, p.C - c0));
      base = (n * p.HW + p0) * p.C + c0;
      c_src = n * p.C + c0;
      tx = int(threadIdx.x) % st.TC;
      ty = int(threadIdx.x) / st.TC;
    }
    per_row = (row + V - 1) / V;
  }
  // Element offset (from base) of this thread's k-th granule, and whether it exists.
  SE_DEV int64_t offset(const Plan& p, int k) const {
    if constexpr (CL) return int64_t(ty + k * p.st.TP) * p.C + tx * V;
    return int64_t(tx + k * kThreads) * V;
  }
  SE_DEV bool valid(const Plan& p, int k) const {
    if constexpr (CL) return tx < per_row && ty + k * p.st.TP < rows;
    return tx + k * kThreads < per_row;
  }
  // f(e, ch) for the V elements of the granule at `offset`.
  template <typename F>
  SE_DEV void channels(const Plan& p, int64_t offset, const F& f) const {
    if constexpr (CL) {
#pragma unroll
      for (int e = 0; e < V; ++e) f(e, tx * V + e);
    } else {
      for_granule_channels<V>(p, tl, int(offset), f);
    }
  }
  // Element i of the tile in element order (paths without granules): its offset
  // from base and its channel. These divide per element; only fallbacks use them.
  SE_DEV int count() const { return rows * row; }
  SE_DEV void element(const Plan& p, int i, int64_t* off, int* ch) const {
    if constexpr (CL) {
      const int px = i / nch;
      *ch = i - px * nch;
      *off = int64_t(px) * p.C + *ch;
    } else {
      const int64_t q = tl.e0 - int64_t(tl.c_first) * p.HW + i;
      *off = i;
      *ch = int(p.st.hw_div.div(uint64_t(q)));
    }
  }
  // channels_last tiles always stage their (<= 256) constants.
  SE_DEV bool stage(const Plan& p) const { return CL || p.st.stage_s; }
};

// The scale of one tile. Wait() blocks until s of the tile's wave is complete.
template <typename T, typename acc_t, bool CL, bool HasRes, typename Wait>
SE_DEV void scale_tile(const Plan& p, const T* x, const T* res, T* y, const acc_t* s, bool relu,
                       int64_t n, uint32_t tile, unsigned char* smem, const Wait& wait) {
  constexpr int V = Width<T>::value;
  constexpr int U = CL ? kPixelsPerThread : XSource<T, acc_t>::kGranulesPerThread;
  constexpr int S = HasRes ? 2 : 4;  // granules in flight: 4 loads either way
  const TileFrame<CL, V> f(p, n, tile);
  auto out = [relu](acc_t xv, acc_t sv, acc_t rv) {
    const acc_t v = HasRes ? xv * sv + rv : xv * sv;
    return relu ? apply_relu(v) : v;
  };
  acc_t* staged = reinterpret_cast<acc_t*>(smem);
  const T* xb = x + f.base;
  T* yb = y + f.base;
  const T* rb = HasRes ? res + f.base : nullptr;

  if (!p.st.vec) {
    wait();
    const acc_t* sc = stage_consts(staged, s + f.c_src, f.nch, f.stage(p));
    __syncthreads();
    for (int i = threadIdx.x; i < f.count(); i += kThreads) {
      int64_t off;
      int ch;
      f.element(p, i, &off, &ch);
      const acc_t rv = HasRes ? static_cast<acc_t>(load1(rb + off)) : acc_t(0);
      store1(yb + off, static_cast<T>(out(static_cast<acc_t>(load1(xb + off)), sc[ch], rv)));
    }
    return;
  }

  Raw16 xr[S], rr[S];
  auto load_step = [&](int k0) {
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (f.valid(p, k0 + k)) {
        xr[k] = load16<L2Hint::Last>(xb + f.offset(p, k0 + k));
        if (HasRes) rr[k] = load16<L2Hint::Last>(rb + f.offset(p, k0 + k));
      }
    }
  };
  load_step(0);  // x does not depend on s: load it while waiting
  wait();
  const acc_t* sc = stage_consts(staged, s + f.c_src, f.nch, f.stage(p));
  __syncthreads();
#pragma unroll
  for (int k0 = 0; k0 < U; k0 += S) {
    if (k0 > 0) load_step(k0);
#pragma unroll
    for (int k = 0; k < S; ++k) {
      if (!f.valid(p, k0 + k)) continue;
      const int64_t off = f.offset(p, k0 + k);
      acc_t xv[V], rv[V], o[V];
      unpack<T, acc_t>(xr[k], xv);
      if (HasRes) unpack<T, acc_t>(rr[k], rv);
      f.channels(p, off, [&](int e, int ch) {
        o[e] = out(xv[e], sc[ch], HasRes ? rv[e] : acc_t(0));
      });
      store16(yb + off, pack<T, acc_t>(o));
    }
  }
}

}  // namespace cuda
}  // namespace se_fused
