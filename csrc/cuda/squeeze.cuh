// Squeeze tiles: per-channel sums over one streaming tile (plan.h) of the
// streamed tensor(s). The forward sums x; the backward's reduce
// (backward_reduce.cuh) sums g*v through the same code with another Source.
//
// NCHW: a tile is a piece of up to L elements of one channel tile's span, loaded
// with coalesced 16-byte granules (4 per thread in flight) into shared memory;
// every channel row (or row piece) in it is then a segment of shared memory that
// `seg_lanes` lanes sum. No per-row head/tail loops, and the sums come from shared
// memory, so their order is the same whether the granules were vector or scalar
// loads (misaligned pointers). A row inside one tile gives rowsum[n, c]; a row
// crossing tiles leaves a piece in each: the first tile's "tail" slot, later
// tiles' "head" slots. row_total adds them in tile order.
//
// channels_last: a tile is PT pixels x CTw channels; each thread keeps one
// granule of channels and walks pixels (4 loads in flight), then the thread rows
// are added in order through shared memory: part[n, pixel part, c].
#pragma once

#include "se_cuda_common.cuh"

namespace se_fused {
namespace cuda {

template <typename acc_t>
struct Pieces {
  acc_t* rowsum;  // NCHW (N, C)
  acc_t* edges;   // NCHW (N, CTn, Tp, 2): head, tail pieces of rows crossing tiles
  acc_t* part;    // channels_last (N, Tp, C)
};

template <typename acc_t>
inline Pieces<acc_t> pieces_of(const Plan& p, acc_t* ws) {
  return {ws + p.ws_rowsum, ws + p.ws_edges, ws + p.ws_part};
}

// Where an NCHW tile is: its first element within the sample (e0) and within the
// tensor (base), its length (0: an empty part of the last channel tile), and the
// channels it touches.
struct NchwTile {
  int64_t e0, base;
  int len, c_first, nch;
};

SE_DEV NchwTile nchw_tile(const Plan& p, int64_t n, int64_t ct, int64_t part) {
  NchwTile r;
  const int64_t c0 = ct * p.t.CTw;
  const int64_t end = imin(p.C, c0 + p.t.CTw) * p.HW;
  r.e0 = c0 * p.HW + (part << p.t.log2_L);
  const int64_t len = imin(p.t.L, end - r.e0);  // may be far below -2^31: clamp first
  r.len = len > 0 ? int(len) : 0;
  r.base = n * p.C * p.HW + r.e0;
  r.c_first = 0;
  r.nch = 0;
  if (r.len > 0) {
    r.c_first = int(p.t.hw_div.div(uint64_t(r.e0)));
    r.nch = int(p.t.hw_div.div(uint64_t(r.e0 + r.len - 1))) - r.c_first + 1;
  }
  return r;
}

// A Source is what a reduce tile sums: load/stage/terms for 16-byte granules,
// scalar() for one element of the paths without granules (misaligned pointers,
// spans or rows not a whole number of granules); the two paths are separate
// loops, so neither holds the other's registers, and each term is rounded the
// same way in both.
//
// The forward's source: x itself, staged as stored. When x fits in L2 it is
// loaded with the "keep" policy: launch 2 reads it again.
template <typename T, typename acc_t>
struct XSource {
  static constexpr int V = Width<T>::value;
  static constexpr int kGranulesPerThread = kStageBytes / (kThreads * kGranule);  // 4
  static constexpr int kStep = 4;  // granules loaded before the first is used
  using staged_t = T;
  struct Loaded {
    Raw16 x;
  };
  const T* x;
  uint64_t policy;  // Keep when launch 2's re-read hits L2, else Normal

  SE_DEV Loaded load(int64_t off) const { return {load16(x + off, policy)}; }
  SE_DEV acc_t scalar(int64_t off) const { return static_cast<acc_t>(load1(x + off)); }
  SE_DEV void stage(const Loaded& l, staged_t* dst) const {
    *reinterpret_cast<Raw16*>(dst) = l.x;
  }
  SE_DEV void terms(const Loaded& l, acc_t* e) const { unpack<T, acc_t>(l.x, e); }
  static SE_DEV acc_t value(staged_t v) { return static_cast<acc_t>(v); }
  static SE_DEV staged_t to_staged(acc_t v) { return static_cast<staged_t>(v); }
};

// Stages elements [base, base + len) of the source into buf (granule g at g*V).
template <typename Src>
SE_DEV void stage_span(const Src& src, int64_t base, int len, typename Src::staged_t* buf,
                       bool vec) {
  constexpr int V = Src::V;
  constexpr int U = Src::kGranulesPerThread;
  constexpr int S = Src::kStep;
  if (!vec) {
    for (int i = threadIdx.x; i < len; i += kThreads) buf[i] = Src::to_staged(src.scalar(base + i));
    return;
  }
  const int ng = len / V;  // vector mode: spans are whole granules
#pragma unroll
  for (int k0 = 0; k0 < U; k0 += S) {
    typename Src::Loaded l[S];
#pragma unroll
    for (int k = 0; k < S; ++k) {
      const int g = (k0 + k) * kThreads + int(threadIdx.x);
      if (g < ng) l[k] = src.load(base + int64_t(g) * V);
    }
#pragma unroll
    for (int k = 0; k < S; ++k) {
      const int g = (k0 + k) * kThreads + int(threadIdx.x);
      if (g < ng) src.stage(l[k], buf + g * V);
    }
  }
}

// Tile (n, ct, part) (NCHW), see the file comment. Empty tiles do nothing.
template <typename acc_t, typename Src>
SE_DEV void reduce_tile_nchw(const Plan& p, const Src& src, int64_t n, int64_t ct, int64_t part,
                             const Pieces<acc_t>& out, unsigned char* smem) {
  using S = typename Src::staged_t;
  const NchwTile tl = nchw_tile(p, n, ct, part);
  if (tl.len == 0) return;
  S* buf = reinterpret_cast<S*>(smem);
  acc_t* red = reinterpret_cast<acc_t*>(smem + kStageBytes);  // one word per lane group
  const int64_t HW = p.HW, e0 = tl.e0;
  const int len = tl.len;
  stage_span(src, tl.base, len, buf, p.vec);
  __syncthreads();

  const int nseg = tl.nch;
  const int64_t c_first = tl.c_first;
  const int G = p.t.seg_lanes, gps = p.t.seg_groups;
  const int grp = threadIdx.x / G, lane = threadIdx.x % G;
  const int slots = kThreads / G / gps;
  const int slot = grp / gps, sub = grp % gps;
  const int span = G * gps, first = sub * G + lane;
  acc_t* edges = out.edges + ((n * p.t.CTn + ct) * p.t.Tp + part) * 2;
  for (int s0 = 0; s0 < nseg; s0 += slots) {  // the same trip count in every thread
    const int seg = s0 + slot;
    const int64_t c = c_first + seg;
    const bool ok = seg < nseg;
    acc_t a = acc_t(0);
    if (ok) {
      const int lo = int(imax(c * HW, e0) - e0), hi = int(imin((c + 1) * HW, e0 + len) - e0);
      for (int i = lo + first; i < hi; i += span) a += Src::value(buf[i]);
    }
    a = group_sum(a, G);
    if (gps > 1) {
      if (lane == 0) red[grp] = a;
      __syncthreads();
      if (sub == 0 && lane == 0) {
        for (int k = 1; k < gps; ++k) a += red[grp + k];
      }
      __syncthreads();
    }
    if (ok && sub == 0 && lane == 0) {
      const bool before = c * HW < e0, after = (c + 1) * HW > e0 + len;
      if (!before && !after) {
        store1(out.rowsum + n * p.C + c, a);
      } else {
        store1(edges + (before ? 0 : 1), a);
      }
    }
  }
  __syncthreads();  // shared memory is free again
}

// Tile (n, ct, part) (channels_last), see the file comment.
template <typename acc_t, typename Src>
SE_DEV void reduce_tile_cl(const Plan& p, const Src& src, int64_t n, int64_t ct, int64_t part,
                           const Pieces<acc_t>& out, unsigned char* smem) {
  constexpr int V = Src::V;
  constexpr int S = Src::kStep;
  const Tiles& t = p.t;
  const int tx = threadIdx.x % t.TC, ty = threadIdx.x / t.TC;
  const int64_t c = ct * t.CTw + int64_t(tx) * V;
  const int nvalid = int(imin(V, p.C - c));
  const int64_t p1 = imin(p.HW, (part + 1) * t.PT);
  acc_t a[V];
#pragma unroll
  for (int k = 0; k < V; ++k) a[k] = acc_t(0);
  if (nvalid > 0 && !p.vec) {
    for (int64_t q = part * t.PT + ty; q < p1; q += t.TP) {
      const int64_t off = (n * p.HW + q) * p.C + c;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (j < nvalid) a[j] += src.scalar(off + j);
      }
    }
  } else if (nvalid > 0) {
    for (int64_t q = part * t.PT + ty; q < p1; q += int64_t(S) * t.TP) {
      typename Src::Loaded l[S];
#pragma unroll
      for (int k = 0; k < S; ++k) {
        const int64_t qk = q + int64_t(k) * t.TP;
        if (qk < p1) l[k] = src.load((n * p.HW + qk) * p.C + c);
      }
#pragma unroll
      for (int k = 0; k < S; ++k) {
        if (q + int64_t(k) * t.TP < p1) {
          acc_t e[V];
          src.terms(l[k], e);
#pragma unroll
          for (int j = 0; j < V; ++j) a[j] += e[j];
        }
      }
    }
  }
  acc_t* red = reinterpret_cast<acc_t*>(smem);  // [TP][CTw]
#pragma unroll
  for (int k = 0; k < V; ++k) red[ty * t.CTw + tx * V + k] = a[k];
  __syncthreads();
  for (int64_t j = threadIdx.x; j < t.CTw; j += kThreads) {
    const int64_t cc = ct * t.CTw + j;
    if (cc < p.C) {
      acc_t s = acc_t(0);
      for (int r = 0; r < t.TP; ++r) s += red[r * t.CTw + j];
      store1(out.part + (n * t.Tp + part) * p.C + cc, s);
    }
  }
  __syncthreads();  // shared memory is free again
}

// Launch 1's tile: the block's streaming tile of either layout.
template <bool CL, typename acc_t, typename Src>
SE_DEV void reduce_block_tile(const Plan& p, const Src& src, const Pieces<acc_t>& out,
                              unsigned char* smem, int64_t* n, int64_t* ct) {
  int64_t part;
  p.tile_of(blockIdx.x, n, ct, &part);
  if constexpr (CL) {
    reduce_tile_cl<acc_t>(p, src, *n, *ct, part, out, smem);
  } else {
    reduce_tile_nchw<acc_t>(p, src, *n, *ct, part, out, smem);
  }
}

// ---- loads ahead ---------------------------------------------------------------
// The finalizers' and prologues' loops (row_total here, the small layers) read L2
// with a run-time trip count: a thread issues a chunk of loads before it uses the
// first of them, so it waits for one round trip per chunk, not per few iterations.
// kLoadsAhead 4-byte values a chunk (half as many doubles): 16 spill under the
// register caps of se_cuda_common.cuh (ptxas). SE_FUSED_LOADS_AHEAD overrides it to
// compare chunk sizes on a GPU; results do not change.
#ifndef SE_FUSED_LOADS_AHEAD
#define SE_FUSED_LOADS_AHEAD 8
#endif
constexpr int kLoadsAhead = SE_FUSED_LOADS_AHEAD;
template <typename acc_t>
constexpr int kAhead = kLoadsAhead * 4 / int(sizeof(acc_t));

// Iterations per chunk of `chunk` loads of a loop that loads `loads` values an
// iteration.
constexpr int ahead_steps(int loads, int chunk) { return (chunk + loads - 1) / loads; }

// for (k = begin; k < end; k += step) use(load(k), k), in chunks of J iterations:
// the chunk's loads (past the end: a zero value, no access) all come before its
// uses, and the uses run in the loop's own order, so every sum keeps its bits.
template <int J, typename Load, typename Use>
SE_DEV void ahead_loop(int64_t begin, int64_t end, int64_t step, const Load& load,
                       const Use& use) {
  using V = decltype(load(begin));
  for (int64_t k0 = begin; k0 < end; k0 += int64_t(J) * step) {
    V v[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int64_t k = k0 + int64_t(j) * step;
      v[j] = k < end ? load(k) : V{};
    }
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int64_t k = k0 + int64_t(j) * step;
      if (k < end) use(v[j], k);
    }
  }
}

// Sum over H*W of channel c of sample n, from the pieces of all its tiles, in tile
// order (read by launch 1's last-arriving block: load_cg).
template <bool CL, typename acc_t>
SE_DEV acc_t row_total(const Plan& p, const Pieces<acc_t>& in, int64_t n, int64_t c) {
  acc_t s = acc_t(0);
  auto add = [&](acc_t v, int64_t) { s += v; };
  if constexpr (CL) {
    const acc_t* col = in.part + n * p.t.Tp * p.C + c;
    ahead_loop<kAhead<acc_t>>(
        0, p.t.Tp, 1, [&](int64_t pt) { return load_cg(col + pt * p.C); }, add);
    return s;
  }
  const int64_t ct = c / p.t.CTw;
  const int64_t q0 = (c - ct * p.t.CTw) * p.HW;  // row start within the channel tile's span
  const int64_t tf = q0 >> p.t.log2_L, tl = (q0 + p.HW - 1) >> p.t.log2_L;
  if (tf == tl) return load_cg(in.rowsum + n * p.C + c);
  const acc_t* e = in.edges + (n * p.t.CTn + ct) * p.t.Tp * 2;
  s = load_cg(e + tf * 2 + 1);
  ahead_loop<kAhead<acc_t>>(tf + 1, tl + 1, 1, [&](int64_t t) { return load_cg(e + t * 2); },
                            add);
  return s;
}

}  // namespace cuda
}  // namespace se_fused
