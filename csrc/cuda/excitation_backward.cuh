// The excitation's backward as GEMM tiles (tile_gemm, excitation.cuh). fc1 is
// first recomputed from the saved z by the forward's fc1 tiles (a1, h); then
//
//   gate tile (samples, 64 channels): a2 = h W2^T + b2 over all of R, s = gate(a2),
//       da2 = gate_input_grad(a2, d) with d the reduce's sum of g*v, and the
//       partial dh = da2 W2 over its 64 channels, for all of R. The last of the
//       ncs tiles of a sample tile adds the partials in order: da1 = dh * act'(a1).
//   dz tile (samples, 64 channels): dz / HW = (da1 W1) / HW over all of R.
//
// Weight gradients (weight_grads.cuh) run once every wave's gate tiles are done.
#pragma once

#include "excitation.cuh"

namespace se_fused {
namespace cuda {

template <typename acc_t>
struct BackwardExcite {
  Excite<acc_t> fwd;  // a1p, a1, h, s
  acc_t* da2;         // (N, C)
  acc_t* dhp;         // (ncs, N, R) partial dh of each channel block
  acc_t* da1;         // (N, R)
  acc_t* dzs;         // (N, C) dz / HW
  bool from_y;        // d = sum g*y (y-only backward): see gate_input_grad
};

template <bool CL, typename acc_t>
SE_DEV void gate_tile(const Plan& p, const Layers<acc_t>& L, const BackwardExcite<acc_t>& B,
                      const Pieces<acc_t>& d, uint32_t* counters, int w, uint32_t idx,
                      unsigned char* smem, volatile uint32_t* flag) {
  const uint32_t st = idx / uint32_t(p.ncs), cs = idx % uint32_t(p.ncs);
  const SampleTile T = sample_tile(p, w, st);
  const int64_t N = p.N, C = p.C, R = p.R, c0 = int64_t(cs) * kTileJ;
  const int Jc = int(imin(kTileJ, C - c0));
  const int jt = gemm_col();
  acc_t acc[4];
  tile_gemm<acc_t>(
      T.M, Jc, R, [&](int m, int64_t k) { return load_cg(B.fwd.h + (T.n0 + m) * R + k); }, true,
      [&](int64_t k, int j) { return load_ro(L.w2 + (c0 + j) * R + k); }, true, acc, smem);
  const acc_t* a2t = park_tile(acc, smem);
#pragma unroll 1
  for (int e = threadIdx.x; e < kTileM * kTileJ; e += kThreads) {
    const int m = e / kTileJ, j = e % kTileJ;
    if (m < T.M && j < Jc) {
      const int64_t n = T.n0 + m, c = c0 + j;
      acc_t a2 = a2t[e];
      if (L.b2 != nullptr) a2 += load_ro(L.b2 + c);
      store1(B.fwd.s + n * C + c, gate_forward(L.gate, a2));
      const acc_t dsum = row_total<CL>(p, d, n, c);
      store1(B.da2 + n * C + c, gate_input_grad(L.gate, a2, dsum, B.from_y));
    }
  }
  // da2 is read back below through L2 by other threads of this block.
  fence_gpu();
  __syncthreads();
  for (int64_t r0 = 0; r0 < R; r0 += kTileJ) {
    const int J = int(imin(kTileJ, R - r0));
    tile_gemm<acc_t>(
        T.M, J, Jc, [&](int m, int64_t k) { return load_cg(B.da2 + (T.n0 + m) * C + c0 + k); },
        true, [&](int64_t k, int j) { return load_ro(L.w2 + (c0 + k) * R + r0 + j); }, false,
        acc, smem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = gemm_row(i);
      if (m < T.M && jt < J) store1(B.dhp + (cs * N + T.n0 + m) * R + r0 + jt, acc[i]);
    }
  }
  if (!arrive_is_last(counters + p.cnt_gate + p.sample_tile(w, st), uint32_t(p.ncs), flag)) {
    return;
  }
  const uint32_t r_n = uint32_t(R);
  for (uint32_t e = threadIdx.x; e < uint32_t(T.M) * r_n; e += kThreads) {
    const int64_t n = T.n0 + e / r_n, r = e % r_n;
    acc_t dh = acc_t(0);
    for (int64_t k = 0; k < p.ncs; ++k) dh += load_cg(B.dhp + (k * N + n) * R + r);
    store1(B.da1 + n * R + r, dh * act_derivative(L.act, load_cg(B.fwd.a1 + n * R + r)));
  }
}

template <typename acc_t>
SE_DEV void dz_tile(const Plan& p, const Layers<acc_t>& L, const BackwardExcite<acc_t>& B,
                    int w, uint32_t idx, unsigned char* smem) {
  const uint32_t st = idx / uint32_t(p.nct2), ct = idx % uint32_t(p.nct2);
  const SampleTile T = sample_tile(p, w, st);
  const int64_t C = p.C, R = p.R, c0 = int64_t(ct) * kTileJ;
  const int J = int(imin(kTileJ, C - c0));
  acc_t acc[4];
  tile_gemm<acc_t>(
      T.M, J, R, [&](int m, int64_t k) { return load_cg(B.da1 + (T.n0 + m) * R + k); }, true,
      [&](int64_t k, int j) { return load_ro(L.w1 + k * C + c0 + j); }, false, acc, smem);
  const acc_t inv_hw = static_cast<acc_t>(p.inv_hw);
  const int jt = gemm_col();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = gemm_row(i);
    if (m < T.M && jt < J) store1(B.dzs + (T.n0 + m) * C + c0 + jt, acc[i] * inv_hw);
  }
}

}  // namespace cuda
}  // namespace se_fused
