// The excitation as GEMM tiles spread over the whole grid: the weights are read
// once per tile of up to 16 samples of a wave (never once per sample), and fc1
// is split over C (split-K) so that even N = 1 has ceil(R/64) * ceil(C/KS1) tiles.
//
//   fc1 tile (samples, 64 outputs of R, KS1 channels): partial a1 = z W1^T over
//       its channels; the last of the nks1 tiles of (samples, outputs) to finish
//       adds the partials in split order, + b1, and stores h = act(a1) (and a1
//       for the backward, or into the forward's pre output).
//   fc2 tile (samples, 64 channels): s = gate(a2), a2 = h W2^T + b2 over all of R
//       (a2 also into pre in the forward).
//
// tile_gemm is the one inner product of every excitation and weight-gradient
// tile: out[m, j] = sum_k A(m, k) B(k, j), k ascending, fp32 (fp64) accumulation,
// M <= 16 rows, J <= 64 columns, K in chunks of 64 (fp64: 32) through shared
// memory; each thread owns 4 outputs (m = tid/64 + 4i, j = tid%64). A and B are
// functors, so the operands may be computed (z from the squeeze's pieces) or
// read transposed; the *_k_fast flags say which index is contiguous in memory,
// so the chunk loads stay coalesced.
#pragma once

#include "squeeze.cuh"

namespace se_fused {
namespace cuda {

template <typename acc_t>
struct GemmTile {
  static constexpr int KC = 128 / int(sizeof(acc_t));
  static constexpr int kLdA = kTileM + 1;  // odd strides: no bank conflicts on the
  static constexpr int kLdB = kTileJ + 1;  // transposed chunk stores
  static constexpr int kBytes = KC * (kLdA + kLdB) * int(sizeof(acc_t));
  static_assert(kBytes <= kSmemBytes, "excitation tile exceeds shared memory");
};

SE_DEV int gemm_col() { return int(threadIdx.x) % kTileJ; }
SE_DEV int gemm_row(int i) { return int(threadIdx.x) / kTileJ + 4 * i; }

template <typename acc_t, typename AF, typename BF>
SE_DEV void tile_gemm(int M, int J, int64_t K, const AF& a_at, bool a_k_fast, const BF& b_at,
                      bool b_k_fast, acc_t (&acc)[4], unsigned char* smem) {
  using G = GemmTile<acc_t>;
  constexpr int KC = G::KC;
  acc_t* As = reinterpret_cast<acc_t*>(smem);
  acc_t* Bs = As + KC * G::kLdA;
  const int jt = gemm_col();
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = acc_t(0);
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int kc = int(imin(KC, K - k0));
#pragma unroll 1
    for (int r = 0; r < KC * kTileM / kThreads; ++r) {
      const int e = int(threadIdx.x) + r * kThreads;
      const int k = a_k_fast ? e % KC : e / kTileM;
      const int m = a_k_fast ? e / KC : e % kTileM;
      As[k * G::kLdA + m] = (m < M && k < kc) ? a_at(m, k0 + k) : acc_t(0);
    }
#pragma unroll 2
    for (int r = 0; r < KC * kTileJ / kThreads; ++r) {
      const int e = int(threadIdx.x) + r * kThreads;
      const int k = b_k_fast ? e % KC : e / kTileJ;
      const int j = b_k_fast ? e / KC : e % kTileJ;
      Bs[k * G::kLdB + j] = (j < J && k < kc) ? b_at(k0 + k, j) : acc_t(0);
    }
    __syncthreads();
    for (int k = 0; k < kc; ++k) {
      const acc_t b = Bs[k * G::kLdB + jt];
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += As[k * G::kLdA + gemm_row(i)] * b;
    }
    __syncthreads();
  }
}

// Parks a tile_gemm result in shared memory as out[m * kTileJ + j], so that a heavy
// epilogue can walk it in a rolled loop instead of four unrolled copies (which
// would hold all four accumulators and spill at 40 registers).
template <typename acc_t>
SE_DEV const acc_t* park_tile(const acc_t (&acc)[4], unsigned char* smem) {
  acc_t* out = reinterpret_cast<acc_t*>(smem);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[gemm_row(i) * kTileJ + gemm_col()] = acc[i];
  __syncthreads();
  return out;
}

// Parameters of the small layers, in the accumulation type, contiguous.
template <typename acc_t>
struct Layers {
  const acc_t* w1;  // (R, C)
  const acc_t* b1;  // (R,) or nullptr
  const acc_t* w2;  // (C, R)
  const acc_t* b2;  // (C,) or nullptr
  Act act;
  Gate gate;
};

// Per-sample intermediates in the workspace (see Plan for their sizes).
template <typename acc_t>
struct Excite {
  acc_t* a1p;  // (nks1, N, R) partial a1 of each split
  acc_t* a1;   // (N, R) backward only
  acc_t* h;    // (N, R)
  acc_t* s;    // (N, C)
  acc_t* pre;  // (N, R + C) forward only: the op's output [a1 | a2]
};

// The samples [n0, n0 + M) of tile st of wave w.
struct SampleTile {
  int64_t n0;
  int M;
};

SE_DEV SampleTile sample_tile(const Plan& p, int w, uint32_t st) {
  const int64_t n0 = p.wave_begin(w) + st * p.NT;
  return {n0, int(imin(p.NT, p.wave_begin(w) + p.wave_samples(w) - n0))};
}

// fc1 tile `idx` of wave w. z_at(n, c) gives z; z_out (forward: the op's z output)
// receives it from the tiles of the first output block.
template <typename acc_t, typename ZF>
SE_DEV void fc1_tile(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X,
                     uint32_t* counters, int w, uint32_t idx, const ZF& z_at, acc_t* z_out,
                     unsigned char* smem, volatile uint32_t* flag) {
  const uint32_t per = uint32_t(p.nrt1 * p.nks1), nks = uint32_t(p.nks1);
  const uint32_t st = idx / per, rt = (idx % per) / nks, ks = idx % nks;
  const SampleTile T = sample_tile(p, w, st);
  const int64_t N = p.N, C = p.C, R = p.R;
  const int64_t c0 = int64_t(ks) * p.KS1, K = imin(p.KS1, C - c0);
  const int64_t r0 = int64_t(rt) * kTileJ;
  const int J = int(imax(0, imin(kTileJ, R - r0)));
  const bool write_z = z_out != nullptr && rt == 0;
  acc_t acc[4];
  tile_gemm<acc_t>(
      T.M, J, K,
      [&](int m, int64_t k) {
        const acc_t v = z_at(T.n0 + m, c0 + k);
        if (write_z) store1(z_out + (T.n0 + m) * C + c0 + k, v);
        return v;
      },
      true, [&](int64_t k, int j) { return load_ro(L.w1 + (r0 + j) * C + c0 + k); }, true, acc,
      smem);
  const int jt = gemm_col();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = gemm_row(i);
    if (m < T.M && jt < J) store1(X.a1p + (ks * N + T.n0 + m) * R + r0 + jt, acc[i]);
  }
  if (!arrive_is_last(counters + p.cnt_fc1 + p.sample_tile(w, st) * p.nrt1 + rt,
                      uint32_t(p.nks1), flag)) {
    return;
  }
  for (int e = threadIdx.x; e < T.M * J; e += kThreads) {
    const int64_t n = T.n0 + e / J, r = r0 + e % J;
    acc_t a = acc_t(0);
    for (int64_t k = 0; k < p.nks1; ++k) a += load_cg(X.a1p + (k * N + n) * R + r);
    if (L.b1 != nullptr) a += load_ro(L.b1 + r);
    if (X.a1 != nullptr) store1(X.a1 + n * R + r, a);
    if (X.pre != nullptr) store1(X.pre + n * (R + C) + r, a);
    store1(X.h + n * R + r, act_forward(L.act, a));
  }
}

// fc2 tile `idx` of wave w (forward): s = gate(h W2^T + b2) for 64 channels.
template <typename acc_t>
SE_DEV void fc2_tile(const Plan& p, const Layers<acc_t>& L, const Excite<acc_t>& X, int w,
                     uint32_t idx, unsigned char* smem) {
  const uint32_t st = idx / uint32_t(p.nct2), ct = idx % uint32_t(p.nct2);
  const SampleTile T = sample_tile(p, w, st);
  const int64_t C = p.C, R = p.R, c0 = int64_t(ct) * kTileJ;
  const int J = int(imin(kTileJ, C - c0));
  acc_t acc[4];
  tile_gemm<acc_t>(
      T.M, J, R, [&](int m, int64_t k) { return load_cg(X.h + (T.n0 + m) * R + k); }, true,
      [&](int64_t k, int j) { return load_ro(L.w2 + (c0 + j) * R + k); }, true, acc, smem);
  const int jt = gemm_col();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = gemm_row(i);
    if (m < T.M && jt < J) {
      const int64_t c = c0 + jt;
      acc_t a = acc[i];
      if (L.b2 != nullptr) a += load_ro(L.b2 + c);
      if (X.pre != nullptr) store1(X.pre + (T.n0 + m) * (R + C) + R + c, a);
      store1(X.s + (T.n0 + m) * C + c, gate_forward(L.gate, a));
    }
  }
}

}  // namespace cuda
}  // namespace se_fused
