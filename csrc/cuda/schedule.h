// The plan of one pass: how x is cut into streaming tiles, the batch into
// L2-sized waves, the excitation into GEMM tiles; the order of the work items
// (tickets) of the persistent kernel, their dependencies, and the workspace.
//
// Everything that decides a summation order is computed here from the shape
// alone (N, C, H*W, R, layout, dtype): never from the SM count, the L2 size, the
// grid or pointer alignment. The L2 size only sets how many samples form a wave,
// which changes when an item runs, not what it sums.
//
// Plain C++ (no CUDA headers): the host code that plans a call includes it too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) && !defined(SE_CUDA_EMULATION)
#define SE_HOST_DEV __host__ __device__ __forceinline__
#define SE_UNROLL _Pragma("unroll")
#else
#define SE_HOST_DEV inline
#define SE_UNROLL
#endif

namespace se_fused {
namespace cuda {

// One block shape for every stage: 8 warps. The streaming stages are sized so a
// thread keeps >= 4 granules (16 B) in flight, and 6 blocks fit an SM at <= 40
// registers (fp64: 4 blocks, 64 registers; fp64 exists for gradcheck).
constexpr int kThreads = 256;
constexpr int kGranule = 16;  // bytes per vector access
// Static shared memory of every kernel, carved per stage. 24 KB: the largest user
// is an excitation tile (64x17 A and 64x65 B floats, 20.5 KB); streaming tiles
// stage 16 KB.
constexpr int kSmemBytes = 24 * 1024;
constexpr int kStageBytes = 16 * 1024;

SE_HOST_DEV int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
SE_HOST_DEV int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
SE_HOST_DEV int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// Work item kinds. Forward: squeeze tiles, fc1 split-K tiles (+ h), fc2 tiles (s),
// scale tiles. Backward: fc1 recomputed from z (a1, h), reduce tiles (sum g*v),
// gate tiles (a2, s, da2, dh partials, da1), dz tiles, map tiles, weight-gradient
// tiles.
enum Stage : int {
  kSqueeze = 0,
  kFc1,
  kFc2,
  kScale,
  kBwdFc1,
  kBwdReduce,
  kBwdGate,
  kBwdDz,
  kBwdMap,
  kBwdWeights,
  kNumStages
};

// Tickets, item indices and waves fit 32 bits (the host checks the ticket count);
// 32-bit division is inline code, 64-bit division a subroutine call.
struct Item {
  int stage;
  int wave;
  uint32_t index;  // within the stage and wave
};

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

// Excitation tile shape (samples x outputs) and split sizes; see excitation.cuh.
constexpr int kTileM = 16;  // samples per excitation tile (rows of its GEMM)
constexpr int kTileJ = 64;  // outputs per excitation tile
constexpr int kGradTileM = 16;
// channels_last tiles: each thread walks this many pixel rows of its granule column.
constexpr int kPixelsPerThread = 4;

// How one pass streams x (and grad_y, y): identical for the pass's reading and
// writing stages, so a wave's tiles line up.
struct Stream {
  bool vec = false;  // 16-byte granules; else element by element (same sums)
  int64_t per_sample = 0;
  // NCHW: each sample is one span of C*HW elements, cut into T tiles of L elements;
  // rows (channels) are segments of the tile staged in shared memory.
  int64_t L = 0, T = 0;
  int log2_L = 0;  // L is a power of two
  FastDiv hw_div;  // element offset within a sample -> channel
  int seg_lanes = 32;   // lanes that sum one segment, then a xor tree
  int seg_groups = 1;   // such groups per segment (long rows), added in order
  bool long_rows = false;  // H*W >= L: a tile touches at most two rows
  bool stage_s = true;     // the channels a tile touches fit in shared memory
  // channels_last: tiles of PT pixels x CT channels; TC threads across the
  // tile's granules of channels, TP across its pixels.
  int TC = 1, TP = 1;
  int64_t CT = 0, CTn = 0, PT = 0, PTn = 0;
};

SE_HOST_DEV int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}
SE_HOST_DEV int pow2_floor(int64_t v) {
  int p = 1;
  while (int64_t(p) * 2 <= v) p <<= 1;
  return p;
}

struct Plan {
  int64_t N = 0, C = 0, HW = 0, R = 0;
  bool cl = false, backward = false;
  int esize = 4, acc_size = 4;
  Stream st;
  // waves: WS samples each (the last may have fewer), W of them; excitation
  // tiles of NT samples never straddle a wave (NT divides WS).
  int64_t WS = 1, NT = 1, n_sample_tiles = 1;
  int W = 1;
  uint32_t tiles_per_wave = 1;  // WS / NT
  double inv_hw = 1.0;          // 1 / (H*W), computed once on the host
  // fc1 (and its backward recompute): nrt1 tiles of 64 outputs of R, split over C
  // in nks1 pieces of KS1 channels; fc2 / dz: nct2 tiles of 64 channels; the gate
  // backward: ncs pieces of 64 channels; weight grads: tiles of 16 x 64.
  int64_t nrt1 = 1, KS1 = 128, nks1 = 1, nct2 = 1, ncs = 1;
  int64_t n_gw1 = 0, n_gw2 = 0;
  int64_t total = 0;  // tickets
  // counters (uint32 words): [0] the ticket, then done[kNumStages][W], then the
  // last-arrival counters of fc1 tiles (nst * nrt1) and gate tiles (nst).
  int64_t cnt_done = 1, cnt_fc1 = 0, cnt_gate = 0, n_counters = 0;
  // workspace (acc_t elements): see the offsets below.
  int64_t ws_rowsum = 0, ws_edges = 0, ws_part = 0, ws_a1p = 0, ws_a1 = 0, ws_h = 0,
          ws_s = 0, ws_da2 = 0, ws_dhp = 0, ws_da1 = 0, ws_dzs = 0, ws_size = 0;

  SE_HOST_DEV int64_t wave_begin(int w) const { return int64_t(w) * WS; }
  SE_HOST_DEV uint32_t wave_samples(int w) const {
    return (w < 0 || w >= W) ? 0u : uint32_t(imin(WS, N - int64_t(w) * WS));
  }
  SE_HOST_DEV uint32_t wave_tiles(int w) const {
    return (wave_samples(w) + uint32_t(NT) - 1) / uint32_t(NT);
  }
  // Global index of sample tile `i` of wave w (NT divides WS).
  SE_HOST_DEV uint32_t sample_tile(int w, uint32_t i) const {
    return uint32_t(w) * tiles_per_wave + i;
  }

  SE_HOST_DEV uint32_t count(int stage, int w) const {
    if (stage == kBwdWeights) return w == W ? uint32_t(n_gw1 + n_gw2) : 0u;
    const uint32_t ns = wave_samples(w), nt = wave_tiles(w);
    switch (stage) {
      case kSqueeze:
      case kScale:
      case kBwdReduce:
      case kBwdMap:
        return ns * uint32_t(st.per_sample);
      case kFc1:
      case kBwdFc1:
        return nt * uint32_t(nrt1 * nks1);
      case kFc2:
      case kBwdDz:
        return nt * uint32_t(nct2);
      case kBwdGate:
        return nt * uint32_t(ncs);
      default:
        return 0u;
    }
  }

  // The work of group g (0 <= g <= W), in ticket order. Forward:
  //   squeeze(g), scale(g-1), fc1(g), fc2(g)
  // so the excitation of wave g runs while other blocks squeeze wave g+1 and scale
  // wave g-1, and a wave is scaled soon after it was read (still in L2).
  // Backward:
  //   fc1(g), reduce(g), weights (g == W only), map(g-1), gate(g), dz(g)
  // Every dependency (below) points to an earlier group or an earlier entry.
  // (Entries are produced one at a time, not as arrays: a run-time indexed array
  // would live in local memory.)
  static constexpr int kGroupEntries = 6;
  SE_HOST_DEV bool group_entry(int g, int i, int* stage, int* wave) const {
    if (!backward && i >= 4) return false;
    switch (i) {
      case 0: *stage = backward ? kBwdFc1 : kSqueeze; break;
      case 1: *stage = backward ? kBwdReduce : kScale; break;
      case 2: *stage = backward ? kBwdWeights : kFc1; break;
      case 3: *stage = backward ? kBwdMap : kFc2; break;
      case 4: *stage = kBwdGate; break;
      default: *stage = kBwdDz; break;
    }
    *wave = (*stage == kScale || *stage == kBwdMap) ? g - 1 : g;
    return true;
  }

  SE_HOST_DEV uint32_t group_size(int g) const {
    uint32_t s = 0;
SE_UNROLL
    for (int i = 0; i < kGroupEntries; ++i) {
      int stage, w;
      if (group_entry(g, i, &stage, &w)) s += count(stage, w);
    }
    return s;
  }

  SE_HOST_DEV Item decode_in_group(int g, uint32_t t) const {
    Item it{-1, 0, 0};
SE_UNROLL
    for (int i = 0; i < kGroupEntries; ++i) {
      int stage, w;
      if (it.stage < 0 && group_entry(g, i, &stage, &w)) {
        const uint32_t c = count(stage, w);
        if (t < c) {
          it = Item{stage, w, t};
        } else {
          t -= c;
        }
      }
    }
    return it;
  }

  // Ticket -> item in O(1): groups 1 .. W-2 involve only full waves and have one size.
  SE_HOST_DEV Item decode(uint32_t t) const {
    const uint32_t s0 = group_size(0);
    if (t < s0) return decode_in_group(0, t);
    t -= s0;
    int g = 1;
    if (W >= 3) {
      const uint32_t sm = group_size(1);
      const uint32_t mid = uint32_t(W - 2) * sm;
      if (t < mid) return decode_in_group(1 + int(t / sm), t % sm);
      t -= mid;
      g = int(W) - 1;
    }
    for (; g <= W; ++g) {
      const uint32_t sg = group_size(g);
      if (t < sg) return decode_in_group(g, t);
      t -= sg;
    }
    return Item{-1, 0, 0};
  }

  // The i-th thing an item waits for (i < 2): done[stage][w] reaching count(stage, w).
  // The weight gradients wait for every wave's gate tiles (not listed here).
  SE_HOST_DEV bool dependency(const Item& it, int i, int* stage, int* wave) const {
    *wave = it.wave;
    switch (it.stage) {
      case kFc1:
        *stage = kSqueeze;
        return i == 0;
      case kFc2:
        *stage = kFc1;
        return i == 0;
      case kScale:
        *stage = kFc2;
        return i == 0;
      case kBwdGate:
        *stage = i == 0 ? kBwdFc1 : kBwdReduce;
        return i < 2;
      case kBwdDz:
        *stage = kBwdGate;
        return i == 0;
      case kBwdMap:
        *stage = kBwdDz;
        return i == 0;
      default:
        return false;
    }
  }

  SE_HOST_DEV int64_t done_index(int stage, int w) const {
    return cnt_done + int64_t(stage) * W + w;
  }
};

// ---- host-side planning -------------------------------------------------------

struct PlanInput {
  int64_t N, C, HW, R;
  bool channels_last, backward;
  bool has_mask;     // backward: the output-relu mask y is read (twice, like grad_y)
  int esize;         // bytes per element of x
  bool vec;          // all streamed pointers 16-byte aligned (checked by the caller)
  int64_t wave_bytes;  // L2 bytes a wave's re-read tensors may occupy
};

inline Plan make_plan(const PlanInput& in) {
  Plan p;
  p.N = in.N, p.C = in.C, p.HW = in.HW, p.R = in.R;
  p.cl = in.channels_last;
  p.backward = in.backward;
  p.esize = in.esize;
  p.acc_size = in.esize == 8 ? 8 : 4;
  const int V = kGranule / in.esize;
  const int64_t P = in.C * in.HW;
  Stream& s = p.st;
  if (!p.cl) {
    // Forward tiles stage x as it is (16 KB, 4 granules a thread); backward tiles
    // stage g*v in the accumulation type (16 KB).
    s.L = (p.backward ? kStageBytes / p.acc_size : kStageBytes / in.esize);
    s.T = ceil_div(P, s.L);
    while ((int64_t(1) << s.log2_L) < s.L) ++s.log2_L;
    s.hw_div = FastDiv::of(uint64_t(in.HW));
    s.per_sample = s.T;
    s.vec = in.vec && P % V == 0;
    // About 4 elements per lane and segment; long rows get several groups.
    s.seg_lanes = int(imin(32, pow2_ceil(ceil_div(in.HW, 4))));
    const int64_t max_segs = ceil_div(s.L, in.HW) + 1;
    s.seg_groups = pow2_floor(imax(1, (kThreads / s.seg_lanes) / max_segs));
    s.long_rows = in.HW >= s.L;
    s.stage_s = max_segs <= int64_t(8192 / p.acc_size);
  } else {
    const int64_t granules = ceil_div(in.C, V);
    s.TC = int(imin(32, pow2_ceil(granules)));
    s.TP = kThreads / s.TC;
    s.CT = int64_t(s.TC) * V;
    s.CTn = ceil_div(in.C, s.CT);
    s.PT = kPixelsPerThread * int64_t(s.TP);
    s.PTn = ceil_div(in.HW, s.PT);
    s.per_sample = s.PTn * s.CTn;
    s.vec = in.vec && in.C % V == 0;
  }

  // Waves: as many samples as keep the tensors read twice within the L2 budget,
  // at least two waves when N >= 2 (so one wave's excitation overlaps streaming).
  const int64_t reuse = P * in.esize * (p.backward ? (in.has_mask ? 2 : 1) : 1);
  int64_t ws = imax(1, in.wave_bytes / imax(1, reuse));
  ws = imin(ws, p.N);
  if (p.N >= 2) ws = imin(ws, ceil_div(p.N, 2));
  p.NT = imin(kTileM, ws);
  p.WS = ws / p.NT * p.NT;
  p.W = int(ceil_div(p.N, p.WS));
  p.tiles_per_wave = uint32_t(p.WS / p.NT);
  p.inv_hw = 1.0 / double(in.HW);
  p.n_sample_tiles = ceil_div(p.N, p.NT);

  p.nrt1 = imax(1, ceil_div(p.R, kTileJ));
  p.KS1 = p.N <= 4 ? 128 : 256;
  p.nks1 = imax(1, ceil_div(p.C, p.KS1));
  p.nct2 = ceil_div(p.C, kTileJ);
  p.ncs = ceil_div(p.C, kTileJ);
  if (p.backward) {
    p.n_gw1 = ceil_div(p.R, kGradTileM) * ceil_div(p.C, kTileJ);
    p.n_gw2 = ceil_div(p.C, kGradTileM) * imax(1, ceil_div(p.R, kTileJ));
  }

  p.total = 0;
  for (int g = 0; g <= p.W; ++g) p.total += p.group_size(g);

  p.cnt_done = 1;
  p.cnt_fc1 = p.cnt_done + int64_t(kNumStages) * p.W;
  p.cnt_gate = p.cnt_fc1 + p.n_sample_tiles * p.nrt1;
  p.n_counters = p.cnt_gate + (p.backward ? p.n_sample_tiles : 0);

  const int64_t N = p.N, C = p.C, R = p.R;
  int64_t o = 0;
  auto take = [&o](int64_t n) {
    const int64_t at = o;
    o += ceil_div(n, 4) * 4;  // keep every array 16-byte aligned
    return at;
  };
  if (!p.cl) {
    p.ws_rowsum = take(N * C);
    p.ws_edges = take(N * s.T * 2);
  } else {
    p.ws_part = take(N * s.PTn * C);
  }
  p.ws_a1p = take(p.nks1 * N * R);
  p.ws_h = take(N * R);
  p.ws_s = take(N * C);
  if (p.backward) {
    p.ws_a1 = take(N * R);
    p.ws_da2 = take(N * C);
    p.ws_dhp = take(p.ncs * N * R);
    p.ws_da1 = take(N * R);
    p.ws_dzs = take(N * C);
  }
  p.ws_size = o;
  return p;
}

}  // namespace cuda
}  // namespace se_fused
