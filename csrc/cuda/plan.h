// The plan of one pass: how x is cut into streaming tiles, how the tiles are
// grouped for the last-arrival handoffs, the grids of the two launches, the
// counters and the workspace.
//
// Every summation order is fixed by the shape alone (N, C, H*W, R, layout, dtype),
// never by the grid, the L2 size, the samples a scale block takes or pointer
// alignment: those change which block computes a value and when, not how.
//
// Plain C++ (no CUDA headers): the host code that plans a call includes it too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) && !defined(SE_CUDA_EMULATION)
#define SE_HOST_DEV __host__ __device__ __forceinline__
#else
#define SE_HOST_DEV inline
#endif

namespace se_fused {
namespace cuda {

// One block shape for every kernel: 8 warps.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGranule = 16;  // bytes per vector access
// Static shared memory of every kernel: a streaming tile stages 16 KB; the
// per-channel constants of a scale/map block and the z / da2 tile of a
// finalizer take at most 16 KB.
constexpr int kSmemBytes = 24 * 1024;
constexpr int kStageBytes = 16 * 1024;
// channels_last tiles: each thread walks this many pixel rows of its granule column
// (4 granules in flight at a time). Taller tiles mean fewer per-part sums for the
// finalizer to add (H*W / (16 * TP) of them per channel).
constexpr int kPixelsPerThread = 16;
// Channels of an NCHW channel tile, at most.
constexpr int kMaxGroupChannels = 256;
// Launch 1's finalizer groups: whole channel tiles of at least this many channels,
// and channels_last tiles of at most this many (at least one granule). The group's
// last arrival walks its channels one after another: in the backward a thread per
// output of dh over all of them (column_dot), in the forward a warp's lanes over 32
// at a time (warp_dots), hence the backward's narrower groups.
constexpr int kGroupChannelsForward = 64;
constexpr int kGroupChannelsBackward = 32;
// Weight-gradient tiles: 32 x 32 outputs, 4 per thread.
constexpr int kGradTile = 32;
// A tile's batch is split over blocks of at least kGradSamples samples, at most
// kGradSplits of them, while all the tiles' blocks stay within kGradBlocks (about a wave
// of launch 2): one block over the whole batch is latency-bound and the tail of launch 2;
// once the blocks queue for slots, more splits only add partial sums.
constexpr int kGradSamples = 32;
constexpr int kGradSplits = 8;
constexpr int kGradBlocks = 512;
// A split's partial tile in the workspace: its outputs, then its rows' bias sums.
constexpr int kGradPartial = kGradTile * kGradTile + kGradTile;
// Blocks of the kernel that zeroes the counters, at most (a grid-stride loop).
constexpr int kZeroBlocks = 64;

SE_HOST_DEV int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
SE_HOST_DEV int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
SE_HOST_DEV int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Samples per finalizer tile and per scale/map block, at most: the accumulators
// of the small layers' dot products (one per sample) stay in registers.
template <typename acc_t>
struct MaxSamples {
  static constexpr int value = sizeof(acc_t) == 8 ? 4 : 8;
};
SE_HOST_DEV int max_samples(int acc_size) { return acc_size == 8 ? 4 : 8; }

// a / d for 64-bit a and a divisor fixed per call, without a division instruction
// (Granlund & Montgomery, "Division by invariant integers using multiplication",
// fig. 4.1): q = (t + ((a - t) >> s1)) >> s2 with t = mulhi(m, a).
struct FastDiv {
  uint64_t d = 1, m = 1;
  int s1 = 0, s2 = 0;
  static FastDiv of(uint64_t d) {
    FastDiv f;
    f.d = d;
    int l = 0;
    while (l < 63 && (uint64_t(1) << l) < d) ++l;
    f.m = uint64_t(((unsigned __int128)((uint64_t(1) << l) - d) << 64) / d) + 1;
    f.s1 = l < 1 ? l : 1;
    f.s2 = l > 1 ? l - 1 : 0;
    return f;
  }
  SE_HOST_DEV uint64_t div(uint64_t a) const {
#if defined(__CUDA_ARCH__)
    const uint64_t t = __umul64hi(m, a);
#else
    const uint64_t t = uint64_t(((unsigned __int128)m * a) >> 64);
#endif
    return (t + ((a - t) >> s1)) >> s2;
  }
};

inline int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}
inline int64_t pow2_floor(int64_t v) {
  int64_t p = 1;
  while (p * 2 <= v) p <<= 1;
  return p;
}

// A streaming tile is (sample n, channel tile ct, part): CTn channel tiles of CTw
// channels, Tp parts each. Launch 1 streams these tiles; launch 2 the same, except in
// channels_last (Plan::t2).
//   NCHW: channel tile ct is the contiguous span of its channels' rows; parts are
//   pieces of L elements of it (rows may cross parts; the last channel tile may
//   have fewer parts, the rest are empty tiles).
//   channels_last: CTw = TC granules of channels; a part is PT pixels.
struct Tiles {
  int64_t CTw = 1, CTn = 1, Tp = 1;
  // NCHW
  int64_t L = 1;
  int log2_L = 0;
  FastDiv hw_div;           // element offset within a sample -> channel
  int seg_lanes = 32;       // lanes that sum one row segment, then a xor tree
  int seg_groups = 1;       // such groups per segment (long rows), added in order
  bool long_rows = false;   // H*W >= L: a part touches at most two rows
  // channels_last
  int TC = 1, TP = 1;
  int64_t PT = 1;
};

struct Plan {
  int64_t N = 0, C = 0, HW = 0, R = 0;
  bool cl = false, backward = false, one_layer = false;
  int esize = 4, acc_size = 4;
  bool vec = false;   // 16-byte granules; else element by element (same sums)
  bool keep = false;  // launch 1 keeps the re-read tensors in L2 (they fit)
  bool reverse = false;  // launch 2 walks its tiles from the end (what launch 1 left in L2)
  Tiles t;   // launch 1's tiles
  // Launch 2's tiles: t in NCHW. channels_last: as wide as the channels allow (up to
  // 32 granules) in the backward, where every block computes its channels' constants
  // first (a thread per channel over R); in the forward narrower (the gates: a warp per
  // channel) and stacked: a block streams the PT pixels of its part of all its M2
  // samples as one tile of M2 * PT pixel rows, at most kPixelsPerThread * TP of them.
  Tiles t2;
  bool stack2 = false;
  double inv_hw = 1.0;
  // Finalizer groups: sample tiles of NT samples x channel groups of CG channels
  // (whole channel tiles, cts_per_group of them).
  int64_t NT = 1, NST = 1, CG = 1, CGn = 1, cts_per_group = 1;
  // Launch 2: blocks of M2 samples of one (channel tile, part) of t2.
  int64_t M2 = 1, NS2 = 1;
  int64_t grid0 = 0, grid1 = 0, grid2_tiles = 0, n_gw1 = 0, n_gw2 = 0, grid2 = 0;
  // Weight-gradient blocks: wg_split per tile, each over wg_n samples (the last fewer).
  int64_t wg_split = 1, wg_n = 0;
  // counters (uint32): per (sample tile, channel group), then per sample tile, then per
  // weight-gradient tile when it is split
  int64_t cnt_group = 0, cnt_sample = 0, cnt_wg = 0, n_counters = 0;
  // workspace offsets (acc_t elements)
  int64_t ws_rowsum = 0, ws_edges = 0, ws_part = 0, ws_p = 0, ws_h = 0, ws_da2 = 0, ws_da1 = 0,
          ws_wg = 0, ws_size = 0;

  SE_HOST_DEV int64_t per_sample() const { return t.CTn * t.Tp; }
  SE_HOST_DEV int64_t per_sample2() const { return t2.CTn * t2.Tp; }
  // Launch 1 block -> (n, ct, part).
  SE_HOST_DEV void tile_of(int64_t b, int64_t* n, int64_t* ct, int64_t* part) const {
    *part = b % t.Tp;
    const int64_t q = b / t.Tp;
    *ct = q % t.CTn;
    *n = q / t.CTn;
  }
  SE_HOST_DEV int64_t samples_in(int64_t n0, int64_t m) const { return imin(m, N - n0); }
  // Arrivals a group counter waits for: every tile of its samples and channel tiles.
  SE_HOST_DEV uint32_t group_arrivals(int64_t st, int64_t cg) const {
    const int64_t cts = imin(cts_per_group, t.CTn - cg * cts_per_group);
    return uint32_t(samples_in(st * NT, NT) * cts * t.Tp);
  }
};

struct PlanInput {
  int64_t N, C, HW, R;
  bool channels_last, backward, one_layer;
  int esize;            // bytes per element of x
  bool vec;             // all streamed pointers 16-byte aligned (checked by the caller)
  bool fits;            // the re-read tensors fit in half the L2
  int64_t samples2;     // launch 2 samples per block (0: chosen from `slots`; a knob)
  int64_t slots;        // launch 2 blocks the device holds at once (0: unknown)
};

// Launch 2's samples per block. Each block first reads the small-layer weights of
// its channels (R values each, from L2) for all its samples, then streams one tile
// per sample: more samples spread that prologue over more of x, but a grid of few
// blocks leaves its last wave part-empty. Of 1 .. the most, the one with the least
// (block waves) x (samples + prologue), the prologue counted in tiles (make_plan
// weighs its bytes against the tile's); the larger on a tie. A guess until a GPU
// calibrates it; it never changes a result bit.
inline int64_t samples_per_block(int64_t N, int64_t per_sample, int64_t most, int64_t slots,
                                 double prologue_tiles) {
  if (slots <= 0) return imin(most, N);
  int64_t best = 1;
  double best_cost = -1;
  for (int64_t m = 1; m <= imin(most, N); ++m) {
    const double waves = double(ceil_div(ceil_div(N, m) * per_sample, slots));
    const double cost = waves * (double(m) + prologue_tiles);
    if (best_cost < 0 || cost <= best_cost) best = m, best_cost = cost;
  }
  return best;
}

// channels_last tiles of TC granule columns, kPixelsPerThread pixel rows a thread.
inline void cl_tiles(Tiles& t, int TC, int64_t C, int64_t HW, int64_t V) {
  t.TC = TC;
  t.TP = kThreads / TC;
  t.CTw = int64_t(TC) * V;
  t.CTn = ceil_div(C, t.CTw);
  t.PT = kPixelsPerThread * int64_t(t.TP);
  t.Tp = ceil_div(HW, t.PT);
}

inline Plan make_plan(const PlanInput& in) {
  Plan p;
  p.N = in.N, p.C = in.C, p.HW = in.HW, p.R = in.R;
  p.cl = in.channels_last;
  p.backward = in.backward;
  p.one_layer = in.one_layer;
  p.esize = in.esize;
  p.acc_size = in.esize == 8 ? 8 : 4;
  const int64_t V = kGranule / in.esize;
  const int64_t group = p.backward ? kGroupChannelsBackward : kGroupChannelsForward;
  const int wide = int(imin(32, pow2_ceil(ceil_div(in.C, V))));  // channels_last granules
  Tiles& t = p.t;
  if (!p.cl) {
    // Forward tiles stage x as it is (16 KB); backward tiles stage g*v in the
    // accumulation type (16 KB).
    t.L = (p.backward ? kStageBytes / p.acc_size : kStageBytes / in.esize);
    while ((int64_t(1) << t.log2_L) < t.L) ++t.log2_L;
    t.hw_div = FastDiv::of(uint64_t(in.HW));
    // Channel tiles start on granule boundaries: a multiple of gran channels.
    int64_t gran = 1;
    while ((gran * in.HW) % V != 0) gran *= 2;
    const int64_t cap = kMaxGroupChannels / gran * gran;
    t.CTw = in.HW < t.L ? imin(cap, imax(gran, t.L / in.HW / gran * gran)) : gran;
    t.CTw = imin(t.CTw, ceil_div(in.C, gran) * gran);
    t.CTn = ceil_div(in.C, t.CTw);
    t.Tp = ceil_div(t.CTw * in.HW, t.L);
    p.vec = in.vec && (in.C * in.HW) % V == 0;
    t.seg_lanes = int(imin(32, pow2_ceil(ceil_div(in.HW, 4))));
    const int64_t max_segs = ceil_div(t.L, in.HW) + 1;
    t.seg_groups = int(pow2_floor(imax(1, (kThreads / t.seg_lanes) / max_segs)));
    t.long_rows = in.HW >= t.L;
  } else {
    cl_tiles(t, int(imin(wide, imax(1, group / V))), in.C, in.HW, V);
    p.vec = in.vec && in.C % V == 0;
  }
  p.inv_hw = 1.0 / double(in.HW);
  p.keep = in.fits;
  p.reverse = !in.fits;

  const int64_t ms = max_samples(p.acc_size);
  p.NT = imin(ms, p.N);
  p.NST = ceil_div(p.N, p.NT);
  p.cts_per_group = ceil_div(group, t.CTw);
  p.CG = p.cts_per_group * t.CTw;
  p.CGn = ceil_div(t.CTn, p.cts_per_group);
  p.t2 = t;
  p.stack2 = p.cl && !p.backward;
  if (p.cl && p.backward) cl_tiles(p.t2, wide, in.C, in.HW, V);
  if (p.stack2) {
    // forward_gates takes a warp per channel, so a block's prologue lasts as long as its
    // channels per warp: one (kWarps channels), but whole 32-byte sectors (2 granules),
    // and no wider than the channels. The samples fill the tile's rows (up to the most
    // the gates' registers hold); a sample larger than the tile is cut in parts.
    Tiles& u = p.t2;
    cl_tiles(u, int(imin(wide, imax(2, kWarps / V))), in.C, in.HW, V);
    const int64_t rows = int64_t(kPixelsPerThread) * u.TP;
    p.M2 = imin(imin(ms, p.N), in.samples2 > 0 ? in.samples2 : imax(1, rows / in.HW));
    u.PT = rows / p.M2;
    u.Tp = ceil_div(in.HW, u.PT);
  } else {
    // launch 2's prologue (weights of a tile's channels) against a tile's streamed bytes
    // (read and write; a third stream with a residual or mask is left out). An NCHW tile
    // holds few channels (16 KB of rows), so most of the block idles through a prologue
    // of a thread (or warp) per channel: counted at the cost of streamed bytes there, at
    // half of it in channels_last, whose wide tiles keep every thread busy in it.
    const Tiles& u = p.t2;
    const int64_t tile_elems = p.cl ? u.CTw * imin(u.PT, in.HW) : imin(u.L, u.CTw * in.HW);
    const int64_t tile_ch = p.cl ? imin(u.CTw, in.C) : imin(u.CTw, ceil_div(u.L, in.HW) + 1);
    const double prologue = (p.cl ? 0.5 : 1.0) * double(tile_ch * in.R * p.acc_size) /
                            double(imax(1, 2 * tile_elems * in.esize));
    p.M2 = in.samples2 > 0 ? imin(imin(in.samples2, ms), p.N)
                           : samples_per_block(p.N, p.per_sample2(), ms, in.slots, prologue);
  }
  p.NS2 = ceil_div(p.N, p.M2);

  p.grid1 = p.N * p.per_sample();
  p.grid2_tiles = p.NS2 * p.per_sample2();
  if (p.backward) {
    p.n_gw1 = ceil_div(p.R, kGradTile) * ceil_div(p.C, kGradTile);
    // gb2 comes from these tiles, so there is at least one column of them even for R = 0.
    p.n_gw2 = p.one_layer ? 0 : ceil_div(p.C, kGradTile) * imax(1, ceil_div(p.R, kGradTile));
    const int64_t tiles = imax(1, p.n_gw1 + p.n_gw2);
    p.wg_split = imax(1, imin(imin(kGradSplits, ceil_div(p.N, kGradSamples)), kGradBlocks / tiles));
    p.wg_n = ceil_div(p.N, p.wg_split);
  }
  const int64_t wg_partials = p.wg_split > 1 ? p.n_gw1 + p.n_gw2 : 0;
  p.grid2 = p.grid2_tiles + (p.n_gw1 + p.n_gw2) * p.wg_split;

  p.cnt_group = 0;
  p.cnt_sample = p.NST * p.CGn;
  p.cnt_wg = p.cnt_sample + p.NST;
  p.n_counters = p.cnt_wg + wg_partials;
  p.grid0 = imin(ceil_div(p.n_counters, kThreads), kZeroBlocks);

  const int64_t N = p.N, C = p.C, R = p.R;
  int64_t o = 0;
  auto take = [&o](int64_t n) {
    const int64_t at = o;
    o += ceil_div(n, 4) * 4;  // keep every array 16-byte aligned
    return at;
  };
  if (!p.cl) {
    p.ws_rowsum = take(N * C);
    p.ws_edges = take(N * p.per_sample() * 2);
  } else {
    p.ws_part = take(N * t.Tp * C);
  }
  p.ws_p = take(N * p.CGn * R);  // forward: fc1 partials; backward: dh partials
  p.ws_h = take(N * R);
  if (p.backward) {
    p.ws_da2 = take(N * C);
    p.ws_da1 = take(N * R);
    p.ws_wg = take(wg_partials * p.wg_split * kGradPartial);
  }
  p.ws_size = o;
  return p;
}

}  // namespace cuda
}  // namespace se_fused
