// Fused SE forward and backward on CUDA.
//
// Forward, two launches (plus a memset of N per-sample counters):
//   1. squeeze: every block sums one tile (sample n, a range of channels, a chunk
//      of H*W) of x into per-(n, chunk, c) partials. The last block to finish a
//      sample (a per-sample atomic counter) adds that sample's partials in a fixed
//      order into z, runs the two small layers and the gate once, and stores s.
//   2. scale: y = x * s (+ residual) (relu), tiles visited in reverse order so the
//      tiles pooled last (most likely still in L2) are read first.
// Backward, two launches (plus the counter memset):
//   1. ds = sum_hw g * x with g = grad_y (masked by y > 0): the same tiles and
//      partials; the last block of a sample recomputes a1, h, a2, s from z and
//      runs the small-layer backward once, storing s, dz / HW, da1, da2, h.
//   2. grad_x = g * s + dz / HW (and grad_residual = g), plus extra blocks (first in
//      the grid) that form the weight and bias gradients by looping over n in order.
// Every summation order depends on the shape only (never on timing), so results are
// deterministic and no float atomics are used. The small layers of a sample run in a
// single block, so their cost (reading W1 and W2 from L2 on one SM) is a serial tail
// of each launch; it matters only when C * R is large (e.g. C = 2048, R = 128).
//
// Layouts: NCHW rows of H*W are reduced by groups of G lanes (G = 32, or the power
// of two covering the vectors of a short row, so a warp packs several channels of
// a 7x7 map; with fewer channels than groups the spare groups take further H*W
// chunks); channels_last pixel rows are read coalesced across C by a
// (threads-over-C) x (threads-over-pixels) block. 16-byte vectors are used where the pointers and
// sizes allow (NCHW: every array shares its offset from a 16-byte boundary, the
// misaligned head of each row is peeled; channels_last: every array 16-byte
// aligned and C a multiple of the vector width); a scalar path handles the rest.
// All offsets are int64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>

#include "se_common.h"

namespace se_fused {
namespace {

constexpr int kThreads = 256;        // every kernel's block size
// At least 4 resident blocks (1024 threads, <= 64 registers each) per SM, so the
// memory-bound passes keep enough loads in flight.
constexpr int kMinBlocksPerSM = 4;
constexpr int64_t kBlockWork = 8192;  // elements a reduction block should cover at least
constexpr int kOuterTile = 4;         // weight-gradient outputs per thread

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename T>
struct VecWidth {
  static constexpr int value = 16 / int(sizeof(T));
};

template <typename T>
struct alignas(16) Vec {
  T v[VecWidth<T>::value];
};

template <typename T>
__device__ __forceinline__ Vec<T> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T>& v) {
  *reinterpret_cast<Vec<T>*>(p) = v;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Smallest power of two >= v, at most cap (1 for v <= 1).
__host__ __device__ __forceinline__ int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p <<= 1;
  return p;
}

// How a pass over x is cut into blocks. H*W is cut into S chunks of L (partial sums
// are kept per (n, chunk, c)); a block covers sample n, chunks [sb * spb, sb * spb + spb)
// and channels [cb * cpb, cb * cpb + cpb). Blocks are numbered sample-major:
// b = (n * SB + sb) * CB + cb.
struct Tiling {
  int64_t N = 0, C = 0, HW = 0;
  int64_t S = 1;    // H*W chunks per sample
  int64_t L = 0;    // chunk length (elements of a row for NCHW, pixels for channels_last)
  int64_t spb = 1;  // chunks per block (NCHW with fewer channels than groups; else 1)
  int64_t SB = 1;   // chunk blocks per sample = ceil(S / spb)
  int64_t CB = 1;   // channel blocks per sample
  int64_t cpb = 1;  // channels per channel block
  int G = 32;       // NCHW: lanes per row (power of two <= 32); NHWC: threads across C
  int vec = 1;      // elements per vector access; 1 = scalar path only
  __host__ __device__ int64_t per_sample() const { return SB * CB; }
  __host__ __device__ int64_t blocks() const { return N * SB * CB; }
};

struct Tile {
  int64_t n, sb, cb;
};

__device__ __forceinline__ Tile decode_tile(const Tiling& t, int64_t b) {
  Tile r;
  const int64_t ps = t.SB * t.CB;
  r.n = b / ps;
  const int64_t rem = b - r.n * ps;
  r.sb = rem / t.CB;
  r.cb = rem - r.sb * t.CB;
  return r;
}

// Sum over the aligned groups of G lanes of a warp (G a power of two <= 32); every
// lane of the warp must call it. The order is fixed, so the result is deterministic.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t a, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
  return a;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t relu_mask(scalar_t y) {
  return relu_passes(static_cast<acc_t>(y)) ? acc_t(1) : acc_t(0);
}

// ---- per-element terms of the reductions -------------------------------------

// Forward squeeze: x.
template <typename scalar_t, typename acc_t>
struct XTerm {
  const scalar_t* x;
  __device__ __forceinline__ acc_t one(int64_t i) const { return static_cast<acc_t>(x[i]); }
  __device__ __forceinline__ void vec(int64_t i, acc_t* e) const {
    const Vec<scalar_t> a = load_vec(x + i);
#pragma unroll
    for (int k = 0; k < VecWidth<scalar_t>::value; ++k) e[k] = static_cast<acc_t>(a.v[k]);
  }
};

// Backward: g * x with g = grad_y, zeroed where y <= 0 when y is given.
template <typename scalar_t, typename acc_t>
struct GradXTerm {
  const scalar_t* gy;
  const scalar_t* x;
  const scalar_t* y;  // nullptr: no output relu
  __device__ __forceinline__ acc_t one(int64_t i) const {
    acc_t g = static_cast<acc_t>(gy[i]);
    if (y != nullptr && !(static_cast<acc_t>(y[i]) > acc_t(0))) g = acc_t(0);
    return g * static_cast<acc_t>(x[i]);
  }
  __device__ __forceinline__ void vec(int64_t i, acc_t* e) const {
    constexpr int V = VecWidth<scalar_t>::value;
    const Vec<scalar_t> g = load_vec(gy + i);
    const Vec<scalar_t> a = load_vec(x + i);
#pragma unroll
    for (int k = 0; k < V; ++k) e[k] = static_cast<acc_t>(g.v[k]) * static_cast<acc_t>(a.v[k]);
    if (y != nullptr) {
      const Vec<scalar_t> m = load_vec(y + i);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (!(static_cast<acc_t>(m.v[k]) > acc_t(0))) e[k] = acc_t(0);
      }
    }
  }
};

// ---- per-element maps of the second passes -----------------------------------
// k1, k2: the per-(n, c) constants (NCHW: one value broadcast over the vector;
// channels_last: one value per channel of the vector).

// Forward: y = x * s (+ residual) (then relu).
template <typename scalar_t, typename acc_t>
struct ScaleMap {
  const scalar_t* x;
  const scalar_t* res;  // nullptr: no residual
  scalar_t* y;
  bool relu;
  __device__ __forceinline__ acc_t out(acc_t xv, acc_t s, acc_t r) const {
    acc_t v = xv * s + r;
    if (relu) v = apply_relu(v);
    return v;
  }
  __device__ __forceinline__ void one(int64_t i, acc_t s, acc_t) const {
    const acc_t r = res != nullptr ? static_cast<acc_t>(res[i]) : acc_t(0);
    y[i] = static_cast<scalar_t>(out(static_cast<acc_t>(x[i]), s, r));
  }
  __device__ __forceinline__ void vec(int64_t i, const acc_t* s, const acc_t*) const {
    constexpr int V = VecWidth<scalar_t>::value;
    const Vec<scalar_t> a = load_vec(x + i);
    acc_t r[V];
    if (res != nullptr) {
      const Vec<scalar_t> b = load_vec(res + i);
#pragma unroll
      for (int k = 0; k < V; ++k) r[k] = static_cast<acc_t>(b.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) r[k] = acc_t(0);
    }
    Vec<scalar_t> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      o.v[k] = static_cast<scalar_t>(out(static_cast<acc_t>(a.v[k]), s[k], r[k]));
    }
    store_vec(y + i, o);
  }
};

// Backward: grad_x = g * s + dz / HW, grad_residual = g.
template <typename scalar_t, typename acc_t>
struct GradMap {
  const scalar_t* gy;
  const scalar_t* y;  // nullptr: no output relu
  scalar_t* gx;
  scalar_t* gres;     // nullptr: not wanted
  __device__ __forceinline__ void one(int64_t i, acc_t s, acc_t dzs) const {
    acc_t g = static_cast<acc_t>(gy[i]);
    if (y != nullptr && !(static_cast<acc_t>(y[i]) > acc_t(0))) g = acc_t(0);
    gx[i] = static_cast<scalar_t>(g * s + dzs);
    if (gres != nullptr) gres[i] = static_cast<scalar_t>(g);
  }
  __device__ __forceinline__ void vec(int64_t i, const acc_t* s, const acc_t* dzs) const {
    constexpr int V = VecWidth<scalar_t>::value;
    const Vec<scalar_t> gv = load_vec(gy + i);
    acc_t g[V];
#pragma unroll
    for (int k = 0; k < V; ++k) g[k] = static_cast<acc_t>(gv.v[k]);
    if (y != nullptr) {
      const Vec<scalar_t> m = load_vec(y + i);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (!(static_cast<acc_t>(m.v[k]) > acc_t(0))) g[k] = acc_t(0);
      }
    }
    Vec<scalar_t> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = static_cast<scalar_t>(g[k] * s[k] + dzs[k]);
    store_vec(gx + i, o);
    if (gres != nullptr) {
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = static_cast<scalar_t>(g[k]);
      store_vec(gres + i, o);
    }
  }
};

// ---- one NCHW row segment over the G lanes of a group -----------------------
// Elements [base, base + len): a scalar head up to the first 16-byte boundary of
// `align` (all arrays share that offset), whole vectors, a scalar tail. Without
// vec, everything takes the scalar path.

template <typename scalar_t, typename acc_t, typename Term>
__device__ __forceinline__ acc_t row_sum(const Term& t, const scalar_t* align, int64_t base,
                                         int64_t len, int lane, int G, bool vec) {
  constexpr int V = VecWidth<scalar_t>::value;
  acc_t a = acc_t(0);
  int64_t i0 = 0;
  if (vec) {
    const auto addr = reinterpret_cast<uintptr_t>(align + base);
    int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(scalar_t));
    head = head < len ? head : len;
    for (int64_t i = lane; i < head; i += G) a += t.one(base + i);
    const int64_t nv = (len - head) / V;
    const int64_t body = base + head;
#pragma unroll 4
    for (int64_t i = lane; i < nv; i += G) {
      acc_t e[V];
      t.vec(body + i * V, e);
#pragma unroll
      for (int k = 0; k < V; ++k) a += e[k];
    }
    i0 = head + nv * V;
  }
  for (int64_t i = i0 + lane; i < len; i += G) a += t.one(base + i);
  return a;
}

template <typename scalar_t, typename acc_t, typename Map>
__device__ __forceinline__ void row_map(const Map& m, const scalar_t* align, int64_t base,
                                        int64_t len, int lane, int G, bool vec, acc_t k1,
                                        acc_t k2) {
  constexpr int V = VecWidth<scalar_t>::value;
  int64_t i0 = 0;
  if (vec) {
    const auto addr = reinterpret_cast<uintptr_t>(align + base);
    int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(scalar_t));
    head = head < len ? head : len;
    for (int64_t i = lane; i < head; i += G) m.one(base + i, k1, k2);
    acc_t K1[V], K2[V];
#pragma unroll
    for (int k = 0; k < V; ++k) K1[k] = k1, K2[k] = k2;
    const int64_t nv = (len - head) / V;
    const int64_t body = base + head;
#pragma unroll 4
    for (int64_t i = lane; i < nv; i += G) m.vec(body + i * V, K1, K2);
    i0 = head + nv * V;
  }
  for (int64_t i = i0 + lane; i < len; i += G) m.one(base + i, k1, k2);
}

// ---- block-level passes over one tile --------------------------------------

// partial[(n * S + s) * C + c] = sum over the tile's chunk of term, for the tile's channels.
template <typename scalar_t, typename acc_t, bool CL, typename Term>
__device__ __forceinline__ void tile_partial_sums(const Term& term, const scalar_t* align,
                                                  const Tiling& t, const Tile& tile,
                                                  acc_t* partial) {
  if constexpr (!CL) {
    // Groups of G lanes walk the block's (channel, chunk) pairs, channel fastest.
    const int G = t.G;
    const int lane = threadIdx.x & (G - 1);
    const int grp = threadIdx.x / G;
    const int ngroups = kThreads / G;
    const int64_t pairs = t.cpb * t.spb;
    const int64_t iters = ceil_div(pairs, ngroups);  // the same for every lane of a warp
    for (int64_t k = 0; k < iters; ++k) {
      const int64_t p = grp + k * ngroups;
      const int64_t c = tile.cb * t.cpb + p % t.cpb;
      const int64_t s = tile.sb * t.spb + p / t.cpb;
      const bool ok = p < pairs && c < t.C && s < t.S;
      acc_t a = acc_t(0);
      if (ok) {
        const int64_t h0 = s * t.L;
        const int64_t len = (h0 + t.L < t.HW) ? t.L : t.HW - h0;
        a = row_sum<scalar_t, acc_t>(term, align, (tile.n * t.C + c) * t.HW + h0, len, lane, G,
                                     t.vec > 1);
      }
      a = group_sum(a, G);
      if (ok && lane == 0) partial[(tile.n * t.S + s) * t.C + c] = a;
    }
  } else {
    acc_t* out = partial + (tile.n * t.S + tile.sb) * t.C;
    const int64_t h0 = tile.sb * t.L;
    const int64_t h1 = (h0 + t.L < t.HW) ? h0 + t.L : t.HW;
    constexpr int V = VecWidth<scalar_t>::value;
    __shared__ acc_t red[kThreads * V];
    const int Tc = t.G;
    const int Tr = kThreads / Tc;
    const int tx = threadIdx.x % Tc;
    const int ty = threadIdx.x / Tc;
    const int w = t.vec;
    const int width = Tc * w;
    const int64_t c = tile.cb * t.cpb + int64_t(tx) * w;
    if (w > 1) {
      acc_t a[V];
#pragma unroll
      for (int k = 0; k < V; ++k) a[k] = acc_t(0);
      if (c < t.C) {
#pragma unroll 4
        for (int64_t hw = h0 + ty; hw < h1; hw += Tr) {
          acc_t e[V];
          term.vec((tile.n * t.HW + hw) * t.C + c, e);
#pragma unroll
          for (int k = 0; k < V; ++k) a[k] += e[k];
        }
      }
#pragma unroll
      for (int k = 0; k < V; ++k) red[ty * width + tx * V + k] = a[k];
    } else {
      acc_t a = acc_t(0);
      if (c < t.C) {
#pragma unroll 4
        for (int64_t hw = h0 + ty; hw < h1; hw += Tr) a += term.one((tile.n * t.HW + hw) * t.C + c);
      }
      red[ty * width + tx] = a;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < width; j += kThreads) {
      const int64_t cc = tile.cb * t.cpb + j;
      if (cc < t.C) {
        acc_t s = acc_t(0);
        for (int r = 0; r < Tr; ++r) s += red[r * width + j];
        out[cc] = s;
      }
    }
  }
}

// Applies map over the tile; k1, k2 are (N, C) per-channel constants (k2 may be null).
template <typename scalar_t, typename acc_t, bool CL, typename Map>
__device__ __forceinline__ void tile_map(const Map& m, const scalar_t* align, const Tiling& t,
                                         const Tile& tile, const acc_t* k1, const acc_t* k2) {
  if constexpr (!CL) {
    const int G = t.G;
    const int lane = threadIdx.x & (G - 1);
    const int grp = threadIdx.x / G;
    const int ngroups = kThreads / G;
    const int64_t pairs = t.cpb * t.spb;
    for (int64_t p = grp; p < pairs; p += ngroups) {
      const int64_t c = tile.cb * t.cpb + p % t.cpb;
      const int64_t s = tile.sb * t.spb + p / t.cpb;
      if (c >= t.C || s >= t.S) continue;
      const int64_t h0 = s * t.L;
      const int64_t len = (h0 + t.L < t.HW) ? t.L : t.HW - h0;
      const int64_t nc = tile.n * t.C + c;
      const acc_t a = k1[nc];
      const acc_t b = k2 != nullptr ? k2[nc] : acc_t(0);
      row_map<scalar_t, acc_t>(m, align, nc * t.HW + h0, len, lane, G, t.vec > 1, a, b);
    }
  } else {
    const int64_t h0 = tile.sb * t.L;
    const int64_t h1 = (h0 + t.L < t.HW) ? h0 + t.L : t.HW;
    constexpr int V = VecWidth<scalar_t>::value;
    const int Tc = t.G;
    const int Tr = kThreads / Tc;
    const int tx = threadIdx.x % Tc;
    const int ty = threadIdx.x / Tc;
    const int w = t.vec;
    const int64_t c = tile.cb * t.cpb + int64_t(tx) * w;
    if (c >= t.C) return;
    const int64_t nc = tile.n * t.C + c;
    if (w > 1) {
      acc_t K1[V], K2[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        K1[k] = k1[nc + k];
        K2[k] = k2 != nullptr ? k2[nc + k] : acc_t(0);
      }
#pragma unroll 4
      for (int64_t hw = h0 + ty; hw < h1; hw += Tr) m.vec((tile.n * t.HW + hw) * t.C + c, K1, K2);
    } else {
      const acc_t a = k1[nc];
      const acc_t b = k2 != nullptr ? k2[nc] : acc_t(0);
#pragma unroll 4
      for (int64_t hw = h0 + ty; hw < h1; hw += Tr) m.one((tile.n * t.HW + hw) * t.C + c, a, b);
    }
  }
}

// True in exactly one block per sample: the last of the sample's `expected` blocks
// to get here. Its partials (and every other block's) are then visible to it. The
// counter is reset to 0 so the buffer could be reused without a memset.
__device__ __forceinline__ bool last_block_of_sample(unsigned int* counter, unsigned int expected) {
  __shared__ int is_last;
  __threadfence();  // this thread's partials, device-wide, before the count
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int prev = atomicAdd(counter, 1u);
    const int last = prev == expected - 1u;
    if (last) *counter = 0u;
    is_last = last;
  }
  __syncthreads();
  if (is_last) __threadfence();
  return is_last != 0;
}

// ---- the small layers, run by one block for one sample ----------------------

template <typename acc_t>
struct SmallLayers {
  const acc_t* w1;  // (R, C)
  const acc_t* b1;  // (R,) or nullptr
  const acc_t* w2;  // (C, R)
  const acc_t* b2;  // (C,) or nullptr
  int64_t C, R;
  Act act;
  Gate gate;
  bool from_y;  // backward: the reduction was sum_hw g * y (y-only backward)
};

// The small layers of one sample run in one block; their weights come from L2, so
// the loops below keep several 16-byte loads in flight per thread (vector loads
// where the matrix is 16-byte aligned and its rows a whole number of vectors).
template <typename acc_t>
__device__ __forceinline__ bool rows_vectorizable(const acc_t* M, int64_t row_len) {
  return (reinterpret_cast<uintptr_t>(M) & 15) == 0 && row_len % VecWidth<acc_t>::value == 0;
}

// f(i, sum_j M[i, j] * v[j]) for i < rows, M row-major (rows, len); one group of lanes
// per row, fixed summation order. v may have been written by this block (plain loads).
template <typename acc_t, typename F>
__device__ __forceinline__ void row_dots(const acc_t* M, const acc_t* v, int64_t rows, int64_t len,
                                         const F& f) {
  constexpr int V = VecWidth<acc_t>::value;
  const bool vec = rows_vectorizable(M, len);
  const int G = pow2_at_least(vec ? len / V : len, 32);
  const int lane = threadIdx.x & (G - 1);
  const int grp = threadIdx.x / G;
  const int ngroups = kThreads / G;
  const int64_t iters = ceil_div(rows, ngroups);
  for (int64_t k = 0; k < iters; ++k) {
    const int64_t row = grp + k * ngroups;
    acc_t a = acc_t(0);
    if (row < rows) {
      const acc_t* m = M + row * len;
      if (vec) {
        const int64_t nv = len / V;
#pragma unroll 4
        for (int64_t q = lane; q < nv; q += G) {
          const Vec<acc_t> w = load_vec(m + q * V);
#pragma unroll
          for (int e = 0; e < V; ++e) a += w.v[e] * v[q * V + e];
        }
      } else {
#pragma unroll 4
        for (int64_t j = lane; j < len; j += G) a += __ldg(m + j) * v[j];
      }
    }
    a = group_sum(a, G);
    if (row < rows && lane == 0) f(row, a);
  }
}

// f(j, sum_i M[i, j] * v[i]) for j < J, M row-major (I, J): threads across j (coalesced,
// V consecutive j per thread where vectorizable), the i range split over thread rows
// and combined in a fixed order through `red` (kThreads * VecWidth<acc_t> entries).
template <typename acc_t, typename F>
__device__ __forceinline__ void col_dots(const acc_t* M, const acc_t* v, int64_t I, int64_t J,
                                         acc_t* red, const F& f) {
  constexpr int V = VecWidth<acc_t>::value;
  const bool vec = rows_vectorizable(M, J);
  const int w = vec ? V : 1;
  const int Tj = pow2_at_least(ceil_div(J, w), kThreads);
  const int Ti = kThreads / Tj;
  const int tj = threadIdx.x % Tj;
  const int ti = threadIdx.x / Tj;
  const int width = Tj * w;  // columns per round
  for (int64_t jb = 0; jb < J; jb += width) {
    const int64_t j = jb + int64_t(tj) * w;
    if (vec) {
      acc_t a[V];
#pragma unroll
      for (int e = 0; e < V; ++e) a[e] = acc_t(0);
      if (j < J) {
#pragma unroll 4
        for (int64_t i = ti; i < I; i += Ti) {
          const Vec<acc_t> m = load_vec(M + i * J + j);
          const acc_t vi = v[i];
#pragma unroll
          for (int e = 0; e < V; ++e) a[e] += m.v[e] * vi;
        }
      }
#pragma unroll
      for (int e = 0; e < V; ++e) red[ti * width + tj * V + e] = a[e];
    } else {
      acc_t a = acc_t(0);
      if (j < J) {
#pragma unroll 4
        for (int64_t i = ti; i < I; i += Ti) a += __ldg(M + i * J + j) * v[i];
      }
      red[ti * width + tj] = a;
    }
    __syncthreads();
    for (int q = threadIdx.x; q < width; q += kThreads) {
      if (jb + q < J) {
        acc_t s = acc_t(0);
        for (int r = 0; r < Ti; ++r) s += red[r * width + q];
        f(jb + q, s);
      }
    }
    __syncthreads();
  }
}

// sum_k partial[n, k, c] for k < S, in order, read past L1 (written by other blocks).
template <typename acc_t>
__device__ __forceinline__ acc_t sum_partials(const acc_t* partial, int64_t n, int64_t S,
                                              int64_t C, int64_t c) {
  const acc_t* p = partial + n * S * C + c;
  acc_t t = acc_t(0);
  for (int64_t k = 0; k < S; ++k) t += __ldcg(p + k * C);
  return t;
}

// Forward, sample n: z = mean, h = act(W1 z + b1), s = gate(W2 h + b2).
template <typename acc_t>
__device__ void finish_sample_forward(const SmallLayers<acc_t>& p, const acc_t* partial,
                                      int64_t S, int64_t HW, int64_t n, acc_t* z, acc_t* h,
                                      acc_t* s) {
  const int64_t C = p.C, R = p.R;
  acc_t* zn = z + n * C;
  acc_t* hn = h + n * R;
  acc_t* sn = s + n * C;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) zn[c] = sum_partials(partial, n, S, C, c) * inv_hw;
  __syncthreads();
  row_dots(p.w1, zn, R, C, [&](int64_t r, acc_t a) {
    if (p.b1 != nullptr) a += p.b1[r];
    hn[r] = act_forward(p.act, a);
  });
  __syncthreads();
  row_dots(p.w2, hn, C, R, [&](int64_t c, acc_t a) {
    if (p.b2 != nullptr) a += p.b2[c];
    sn[c] = gate_forward(p.gate, a);
  });
}

// Per-sample results of the backward's first pass, each (N, C) or (N, R).
template <typename acc_t>
struct BackwardWork {
  acc_t* s;    // (N, C) gate
  acc_t* dzs;  // (N, C) dz / HW
  acc_t* da2;  // (N, C)
  acc_t* a1;   // (N, R)
  acc_t* h;    // (N, R)
  acc_t* da1;  // (N, R)
};

// Backward, sample n: ds from the partials, then the small layers and their backward.
template <typename acc_t>
__device__ void finish_sample_backward(const SmallLayers<acc_t>& p, const acc_t* partial,
                                       int64_t S, int64_t HW, int64_t n, const acc_t* z,
                                       const BackwardWork<acc_t>& w) {
  __shared__ acc_t red[kThreads * VecWidth<acc_t>::value];
  const int64_t C = p.C, R = p.R;
  const acc_t* zn = z + n * C;
  acc_t* sn = w.s + n * C;
  acc_t* dzn = w.dzs + n * C;
  acc_t* da2n = w.da2 + n * C;
  acc_t* a1n = w.a1 + n * R;
  acc_t* hn = w.h + n * R;
  acc_t* da1n = w.da1 + n * R;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(HW);
  // ds, kept in da2's slot until the gate derivative is known
  for (int64_t c = threadIdx.x; c < C; c += kThreads) da2n[c] = sum_partials(partial, n, S, C, c);
  row_dots(p.w1, zn, R, C, [&](int64_t r, acc_t a) {
    if (p.b1 != nullptr) a += p.b1[r];
    a1n[r] = a;
    hn[r] = act_forward(p.act, a);
  });
  __syncthreads();
  row_dots(p.w2, hn, C, R, [&](int64_t c, acc_t a) {
    if (p.b2 != nullptr) a += p.b2[c];
    sn[c] = gate_forward(p.gate, a);
    da2n[c] = gate_input_grad(p.gate, a, da2n[c], p.from_y);
  });
  __syncthreads();
  // dh = W2^T da2, da1 = dh * act'(a1)
  col_dots(p.w2, da2n, C, R, red, [&](int64_t r, acc_t dh) {
    da1n[r] = dh * act_derivative(p.act, a1n[r]);
  });
  // dz = W1^T da1 (col_dots ends with a barrier, so da1 is complete)
  col_dots(p.w1, da1n, R, C, red, [&](int64_t c, acc_t dz) { dzn[c] = dz * inv_hw; });
}

// G[i, j] = sum_n A[n, i] * B[n, j] for the item (i block of kOuterTile, j); n in order.
template <typename acc_t>
__device__ __forceinline__ void outer_sum_item(const acc_t* A, const acc_t* B, acc_t* Gm,
                                               int64_t N, int64_t I, int64_t J, int64_t item) {
  const int64_t j = item % J;
  const int64_t i0 = (item / J) * kOuterTile;
  acc_t a[kOuterTile];
#pragma unroll
  for (int k = 0; k < kOuterTile; ++k) a[k] = acc_t(0);
  for (int64_t n = 0; n < N; ++n) {
    const acc_t b = __ldg(B + n * J + j);
#pragma unroll
    for (int k = 0; k < kOuterTile; ++k) {
      if (i0 + k < I) a[k] += __ldg(A + n * I + i0 + k) * b;
    }
  }
#pragma unroll
  for (int k = 0; k < kOuterTile; ++k) {
    if (i0 + k < I) Gm[(i0 + k) * J + j] = a[k];
  }
}

template <typename acc_t>
struct ParamGrads {
  const acc_t* z;    // (N, C)
  const acc_t* h;    // (N, R)
  const acc_t* da1;  // (N, R)
  const acc_t* da2;  // (N, C)
  acc_t* gw1;        // (R, C)
  acc_t* gb1;        // (R,)
  acc_t* gw2;        // (C, R)
  acc_t* gb2;        // (C,)
  int64_t N, C, R;
  __host__ __device__ int64_t items() const {
    return ceil_div(R, kOuterTile) * C + ceil_div(C, kOuterTile) * R + R + C;
  }
};

// One thread = one item: a kOuterTile-strip of grad_w1 or grad_w2, or one bias entry.
template <typename acc_t>
__device__ __forceinline__ void param_grad_item(const ParamGrads<acc_t>& p, int64_t item) {
  const int64_t n_w1 = ceil_div(p.R, kOuterTile) * p.C;
  if (item < n_w1) return outer_sum_item(p.da1, p.z, p.gw1, p.N, p.R, p.C, item);
  item -= n_w1;
  const int64_t n_w2 = ceil_div(p.C, kOuterTile) * p.R;
  if (item < n_w2) return outer_sum_item(p.da2, p.h, p.gw2, p.N, p.C, p.R, item);
  item -= n_w2;
  if (item < p.R) {
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < p.N; ++n) s += __ldg(p.da1 + n * p.R + item);
    p.gb1[item] = s;
    return;
  }
  item -= p.R;
  if (item < p.C) {
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < p.N; ++n) s += __ldg(p.da2 + n * p.C + item);
    p.gb2[item] = s;
  }
}

// ---- kernels -----------------------------------------------------------------

template <typename scalar_t, typename acc_t>
struct ForwardArgs {
  const scalar_t* x;
  const scalar_t* res;
  scalar_t* y;
  acc_t* z;        // (N, C) output
  acc_t* partial;  // (N, S, C)
  acc_t* h;        // (N, R)
  acc_t* s;        // (N, C)
  unsigned int* counter;  // (N,), zero on entry
  SmallLayers<acc_t> layers;
  Tiling squeeze, scale;
  bool relu;
};

template <typename scalar_t, typename acc_t, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) se_forward_squeeze_kernel(ForwardArgs<scalar_t, acc_t> a) {
  const Tiling& t = a.squeeze;
  const Tile tile = decode_tile(t, blockIdx.x);
  tile_partial_sums<scalar_t, acc_t, CL>(XTerm<scalar_t, acc_t>{a.x}, a.x, t, tile, a.partial);
  if (!last_block_of_sample(a.counter + tile.n, static_cast<unsigned int>(t.per_sample()))) return;
  finish_sample_forward(a.layers, a.partial, t.S, t.HW, tile.n, a.z, a.h, a.s);
}

template <typename scalar_t, typename acc_t, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) se_forward_scale_kernel(ForwardArgs<scalar_t, acc_t> a) {
  const Tiling& t = a.scale;
  const Tile tile = decode_tile(t, t.blocks() - 1 - int64_t(blockIdx.x));
  const ScaleMap<scalar_t, acc_t> m{a.x, a.res, a.y, a.relu};
  tile_map<scalar_t, acc_t, CL>(m, a.x, t, tile, a.s, static_cast<const acc_t*>(nullptr));
}

template <typename scalar_t, typename acc_t>
struct BackwardArgs {
  const scalar_t* gy;
  const scalar_t* x;
  const scalar_t* y;  // nullptr: no output relu
  scalar_t* gx;
  scalar_t* gres;     // nullptr: not wanted
  const acc_t* z;     // (N, C)
  acc_t* partial;     // (N, S, C)
  unsigned int* counter;
  SmallLayers<acc_t> layers;
  BackwardWork<acc_t> work;
  ParamGrads<acc_t> grads;
  Tiling reduce, map;
  int64_t param_blocks;
};

template <typename scalar_t, typename acc_t, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) se_backward_reduce_kernel(BackwardArgs<scalar_t, acc_t> a) {
  const Tiling& t = a.reduce;
  const Tile tile = decode_tile(t, blockIdx.x);
  tile_partial_sums<scalar_t, acc_t, CL>(GradXTerm<scalar_t, acc_t>{a.gy, a.x, a.y}, a.gy, t,
                                         tile, a.partial);
  if (!last_block_of_sample(a.counter + tile.n, static_cast<unsigned int>(t.per_sample()))) return;
  finish_sample_backward(a.layers, a.partial, t.S, t.HW, tile.n, a.z, a.work);
}

template <typename scalar_t, typename acc_t, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) se_backward_map_kernel(BackwardArgs<scalar_t, acc_t> a) {
  const int64_t b = blockIdx.x;
  if (b < a.param_blocks) {
    param_grad_item(a.grads, b * kThreads + threadIdx.x);
    return;
  }
  const Tiling& t = a.map;
  const Tile tile = decode_tile(t, t.blocks() - 1 - (b - a.param_blocks));
  const GradMap<scalar_t, acc_t> m{a.gy, a.y, a.gx, a.gres};
  tile_map<scalar_t, acc_t, CL>(m, a.gy, t, tile, static_cast<const acc_t*>(a.work.s),
                                static_cast<const acc_t*>(a.work.dzs));
}

// ---- host side ---------------------------------------------------------------

int sm_count(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

// The vector width a pass may use over arrays `ptrs` (null entries ignored).
int vector_width(bool channels_last, int64_t C, int elem_size, std::initializer_list<const void*> ptrs) {
  const int V = 16 / elem_size;
  int64_t off = -1;
  for (const void* p : ptrs) {
    if (p == nullptr) continue;
    const auto a = reinterpret_cast<uintptr_t>(p);
    if (a % static_cast<uintptr_t>(elem_size) != 0) return 1;
    const int64_t m = static_cast<int64_t>(a & 15);
    if (channels_last && m != 0) return 1;
    if (off >= 0 && m != off) return 1;
    off = m;
  }
  if (channels_last && C % V != 0) return 1;
  return V;
}

// Cuts a pass over (N, C, HW) into tiles: blocks move at least ~kBlockWork elements
// where the tensor allows, and there are about `target` blocks (one full wave) or
// more, splitting H*W across blocks when N * C alone cannot provide them.
Tiling make_tiling(int64_t N, int64_t C, int64_t HW, bool channels_last, int vec, int elem_size,
                   int sms) {
  Tiling t;
  t.N = N, t.C = C, t.HW = HW, t.vec = vec, t.S = 1, t.L = HW;
  const int64_t target = int64_t(sms) * (2048 / kThreads);
  if (!channels_last) {
    // Lanes per row: enough for one pass of vectors over a short row, at most a warp.
    t.G = pow2_at_least(ceil_div(HW, vec), 32);
    const int64_t ng = kThreads / t.G;
    if (C < ng) {
      // Fewer channels than groups: the spare groups take further chunks of the rows.
      t.cpb = C;
      t.spb = ng / C;
    } else {
      const int64_t k_work = std::max<int64_t>(1, kBlockWork / (ng * HW));
      const int64_t k_fill = std::max<int64_t>(1, (N * C) / (target * ng));
      const int64_t k = std::max<int64_t>(1, std::min({k_work, k_fill, ceil_div(C, ng)}));
      t.cpb = k * ng;
    }
    t.CB = ceil_div(C, t.cpb);
    const int64_t have = N * t.CB;
    constexpr int64_t kMinChunk = 256;  // elements of a row per chunk when H*W is split
    if ((have < target || t.spb > 1) && HW >= 2 * kMinChunk) {
      const int64_t S = std::min(ceil_div(target, have) * t.spb, HW / kMinChunk);
      t.L = ceil_div(ceil_div(HW, S), 16) * 16;
      t.S = ceil_div(HW, t.L);
    }
    t.spb = std::min(t.spb, t.S);
  } else {
    const int64_t TC = ceil_div(C, vec);
    // A warp reads up to 32 consecutive vectors of a pixel row; the 8 or more thread
    // rows of a block take different pixels.
    t.G = pow2_at_least(TC, 32);
    const int64_t Tr = kThreads / t.G;
    t.cpb = int64_t(t.G) * vec;
    t.CB = ceil_div(TC, t.G);
    const int64_t have = N * t.CB;
    // Pixels per chunk when split: two rounds of the block's pixel rows and at least
    // 32 bytes per channel, so the partials stay small next to the data.
    const int64_t min_rows = std::max<int64_t>(2 * Tr, 32 / elem_size);
    if (have < target && HW >= 2 * min_rows) {
      const int64_t S = std::min(ceil_div(target, have), HW / min_rows);
      t.L = ceil_div(HW, S);
      t.S = ceil_div(HW, t.L);
    }
  }
  t.SB = ceil_div(t.S, t.spb);
  return t;
}

unsigned int grid_of(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= int64_t(0x7fffffff), "se_fused: grid of ", blocks,
              " blocks is out of range");
  return static_cast<unsigned int>(blocks);
}

template <typename acc_t>
SmallLayers<acc_t> layers_of(const SEArgs& a, const ParamTensors& p) {
  return {p.w1.data_ptr<acc_t>(), ptr_or_null<acc_t>(p.b1), p.w2.data_ptr<acc_t>(),
          ptr_or_null<acc_t>(p.b2), a.C, a.R, a.act, a.gate, a.from_y};
}

}  // namespace

ForwardCall run_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                             const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                             const c10::optional<at::Tensor>& b2,
                             const c10::optional<at::Tensor>& residual,
                             c10::string_view activation, c10::string_view gate,
                             c10::string_view out_activation, bool inplace) {
  const SEArgs checked =
      check_forward_args(x, w1, b1, w2, b2, residual, activation, gate, out_activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const ForwardCall c = prepare_forward(checked, x, w1, b1, w2, b2, residual, inplace);
  const SEArgs& a = c.a;
  const at::Tensor &y = c.y, &z = c.z, &xc = c.x, &rc = c.res;
  const ParamTensors& pt = c.p;
  if (y.numel() == 0) return c;
  const auto acc = acc_dtype(x.scalar_type());
  const int sms = sm_count(x.get_device());
  const int esize = static_cast<int>(x.element_size());
  const bool cl = a.channels_last;
  const int64_t HW = a.hw();

  const Tiling squeeze = make_tiling(a.N, a.C, HW, cl,
                                     vector_width(cl, a.C, esize, {xc.data_ptr()}), esize, sms);
  const Tiling scale = make_tiling(
      a.N, a.C, HW, cl,
      vector_width(cl, a.C, esize, {xc.data_ptr(), rc.defined() ? rc.data_ptr() : nullptr, y.data_ptr()}),
      esize, sms);

  const int64_t N = a.N, C = a.C, R = a.R;
  at::Tensor work = at::empty({N * (squeeze.S * C + C + R)}, x.options().dtype(acc));
  at::Tensor counter = at::zeros({N}, x.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    ForwardArgs<scalar_t, acc_t> args;
    args.x = xc.data_ptr<scalar_t>();
    args.res = ptr_or_null<scalar_t>(rc);
    args.y = y.data_ptr<scalar_t>();
    args.z = z.data_ptr<acc_t>();
    acc_t* ws = work.data_ptr<acc_t>();
    args.partial = ws;
    args.s = ws + N * squeeze.S * C;
    args.h = args.s + N * C;
    args.counter = reinterpret_cast<unsigned int*>(counter.data_ptr<int>());
    args.layers = layers_of<acc_t>(a, pt);
    args.squeeze = squeeze;
    args.scale = scale;
    args.relu = a.out_relu;
    if (cl) {
      se_forward_squeeze_kernel<scalar_t, acc_t, true>
          <<<grid_of(squeeze.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      se_forward_scale_kernel<scalar_t, acc_t, true>
          <<<grid_of(scale.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      se_forward_squeeze_kernel<scalar_t, acc_t, false>
          <<<grid_of(squeeze.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      se_forward_scale_kernel<scalar_t, acc_t, false>
          <<<grid_of(scale.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return c;
}

std::tuple<at::Tensor, at::Tensor> se_forward_cuda(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, c10::string_view activation,
    c10::string_view gate, c10::string_view out_activation) {
  const ForwardCall c =
      run_forward_cuda(x, w1, b1, w2, b2, residual, activation, gate, out_activation, false);
  return {c.y, c.z};
}

at::Tensor se_forward_inplace_cuda(const at::Tensor& x, const at::Tensor& w1,
                                   const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                   const c10::optional<at::Tensor>& b2,
                                   const c10::optional<at::Tensor>& residual,
                                   c10::string_view activation, c10::string_view gate,
                                   c10::string_view out_activation) {
  return run_forward_cuda(x, w1, b1, w2, b2, residual, activation, gate, out_activation, true).z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& z,
                 const c10::optional<at::Tensor>& y, const at::Tensor& w1,
                 const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                 const c10::optional<at::Tensor>& b2, c10::string_view activation,
                 c10::string_view gate, bool want_grad_residual, bool x_is_output) {
  const SEArgs checked =
      check_backward_args(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, x_is_output);
  const c10::cuda::CUDAGuard guard(x.device());
  const BackwardCall c = prepare_backward(checked, grad_y, x, z, y, w1, b1, w2, b2,
                                          want_grad_residual);
  if (c.gx.numel() == 0) return c.outputs();
  const SEArgs& a = c.a;
  const at::Tensor &gx = c.gx, &gres = c.gres, &gw1 = c.gw1, &gb1 = c.gb1, &gw2 = c.gw2,
                   &gb2 = c.gb2;
  const at::Tensor &gyc = c.gy, &xc = c.x, &yc = c.y, &zc = c.z;
  const ParamTensors& pt = c.p;
  const auto popts = x.options().dtype(acc_dtype(x.scalar_type()));
  const int sms = sm_count(x.get_device());
  const int esize = static_cast<int>(x.element_size());
  const bool cl = a.channels_last;
  const int64_t HW = a.hw();
  const void* yp = yc.defined() ? yc.data_ptr() : nullptr;

  const Tiling reduce = make_tiling(
      a.N, a.C, HW, cl, vector_width(cl, a.C, esize, {gyc.data_ptr(), xc.data_ptr(), yp}), esize,
      sms);
  const Tiling map = make_tiling(
      a.N, a.C, HW, cl,
      vector_width(cl, a.C, esize,
                   {gyc.data_ptr(), yp, gx.data_ptr(), gres.numel() > 0 ? gres.data_ptr() : nullptr}),
      esize, sms);

  const int64_t N = a.N, C = a.C, R = a.R;
  at::Tensor work = at::empty({N * (reduce.S * C + 3 * C + 3 * R)}, popts);
  at::Tensor counter = at::zeros({N}, x.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    BackwardArgs<scalar_t, acc_t> args;
    args.gy = gyc.data_ptr<scalar_t>();
    args.x = xc.data_ptr<scalar_t>();
    args.y = ptr_or_null<scalar_t>(yc);
    args.gx = gx.data_ptr<scalar_t>();
    args.gres = ptr_or_null<scalar_t>(gres);
    args.z = zc.data_ptr<acc_t>();
    acc_t* ws = work.data_ptr<acc_t>();
    args.partial = ws;
    ws += N * reduce.S * C;
    args.work.s = ws, ws += N * C;
    args.work.dzs = ws, ws += N * C;
    args.work.da2 = ws, ws += N * C;
    args.work.a1 = ws, ws += N * R;
    args.work.h = ws, ws += N * R;
    args.work.da1 = ws;
    args.counter = reinterpret_cast<unsigned int*>(counter.data_ptr<int>());
    args.layers = layers_of<acc_t>(a, pt);
    args.grads = ParamGrads<acc_t>{args.z, args.work.h, args.work.da1, args.work.da2,
                                   gw1.data_ptr<acc_t>(), gb1.data_ptr<acc_t>(),
                                   gw2.data_ptr<acc_t>(), gb2.data_ptr<acc_t>(), N, C, R};
    args.reduce = reduce;
    args.map = map;
    args.param_blocks = ceil_div(args.grads.items(), kThreads);
    const unsigned int grid2 = grid_of(args.param_blocks + map.blocks());
    if (cl) {
      se_backward_reduce_kernel<scalar_t, acc_t, true>
          <<<grid_of(reduce.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      se_backward_map_kernel<scalar_t, acc_t, true><<<grid2, kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      se_backward_reduce_kernel<scalar_t, acc_t, false>
          <<<grid_of(reduce.blocks()), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      se_backward_map_kernel<scalar_t, acc_t, false><<<grid2, kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return c.outputs();
}

}  // namespace se_fused

TORCH_LIBRARY_IMPL(se_fused, CUDA, m) {
  m.impl("se_forward", &se_fused::se_forward_cuda);
  m.impl("se_forward_", &se_fused::se_forward_inplace_cuda);
  m.impl("se_backward", &se_fused::se_backward_cuda);
}
