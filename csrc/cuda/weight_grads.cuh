// Weight and bias gradients as GEMM tiles over the whole batch (k = n ascending,
// so every sum is in sample order whatever the waves or the grid):
//   grad_w1 (R, C) = da1^T z in tiles of 16 x 64; the tiles of the first channel
//       block also give grad_b1 = sum_n da1;
//   grad_w2 (C, R) = da2^T h in tiles of 16 x 64; the first output block's tiles
//       give grad_b2 = sum_n da2.
// They run after every wave's gate tiles, next to the last wave's map tiles.
#pragma once

#include "excitation_backward.cuh"

namespace se_fused {
namespace cuda {

template <typename acc_t>
struct WeightGrads {
  acc_t* gw1;  // (R, C)
  acc_t* gb1;  // (R,)
  acc_t* gw2;  // (C, R)
  acc_t* gb2;  // (C,)
  const acc_t* z;  // (N, C), the saved squeeze
};

// sum_n v[n * ld + col0 + m] for m < M (16 lanes per m, then a fixed xor tree).
template <typename acc_t>
SE_DEV void column_sums(const acc_t* v, int64_t N, int64_t ld, int64_t col0, int M, acc_t* out) {
  const int m = int(threadIdx.x) / 16, q = int(threadIdx.x) % 16;
  acc_t s = acc_t(0);
  if (m < M) {
    for (int64_t n = q; n < N; n += 16) s += load_cg(v + n * ld + col0 + m);
  }
  s = group_sum(s, 16);
  if (m < M && q == 0) store1(out + col0 + m, s);
}

template <typename acc_t>
SE_DEV void weight_grad_tile(const Plan& p, const BackwardExcite<acc_t>& B,
                             const WeightGrads<acc_t>& G, uint32_t idx, unsigned char* smem) {
  const int64_t N = p.N, C = p.C, R = p.R;
  const int jt = gemm_col();
  acc_t acc[4];
  if (idx < p.n_gw1) {
    const uint32_t nct = uint32_t(ceil_div(C, kTileJ));
    const int64_t r0 = int64_t(idx / nct) * kGradTileM, c0 = int64_t(idx % nct) * kTileJ;
    const int M = int(imin(kGradTileM, R - r0)), J = int(imin(kTileJ, C - c0));
    tile_gemm<acc_t>(
        M, J, N, [&](int m, int64_t n) { return load_cg(B.da1 + n * R + r0 + m); }, false,
        [&](int64_t n, int j) { return load_ro(G.z + n * C + c0 + j); }, false, acc, smem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = gemm_row(i);
      if (m < M && jt < J) store1(G.gw1 + (r0 + m) * C + c0 + jt, acc[i]);
    }
    if (c0 == 0) column_sums(B.da1, N, R, r0, M, G.gb1);
  } else {
    idx -= uint32_t(p.n_gw1);
    const uint32_t nrt = uint32_t(imax(1, ceil_div(R, kTileJ)));
    const int64_t c0 = int64_t(idx / nrt) * kGradTileM, r0 = int64_t(idx % nrt) * kTileJ;
    const int M = int(imin(kGradTileM, C - c0)), J = int(imax(0, imin(kTileJ, R - r0)));
    tile_gemm<acc_t>(
        M, J, N, [&](int m, int64_t n) { return load_cg(B.da2 + n * C + c0 + m); }, false,
        [&](int64_t n, int j) { return load_cg(B.fwd.h + n * R + r0 + j); }, false, acc, smem);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = gemm_row(i);
      if (m < M && jt < J) store1(G.gw2 + (c0 + m) * R + r0 + jt, acc[i]);
    }
    if (r0 == 0) column_sums(B.da2, N, C, c0, M, G.gb2);
  }
}

}  // namespace cuda
}  // namespace se_fused
