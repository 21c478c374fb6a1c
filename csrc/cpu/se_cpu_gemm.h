// The small layers' matrix products, single-threaded; callers split the output
// over threads. Each output element is one fixed-order sum over k whatever the
// blocking, the output range or M, so splitting the work differently (another
// thread count, group size or batch) never changes a bit of the result.
//
// fp32 with AVX-512 has register-blocked kernels: on the SE shapes they are as
// fast as MKL's sgemm on one core from 16 samples up, and faster below that
// (no dispatch, no packing), see docs/NOTES.md. Other dtypes and builds
// use plain loops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace se_fused {
namespace cpu {

// out[i * ldo + j] = bias[j] + sum_k A[i * lda + k] * B[j * ldb + k]
// for i in [0, M), j in [j0, j1); bias may be null. (x W^T + b with W row-major.)
template <typename T>
void gemm_nt(const T* A, int64_t lda, int64_t M, const T* B, int64_t ldb, int64_t j0, int64_t j1,
             int64_t K, const T* bias, T* out, int64_t ldo) {
  // Partial sums in independent lanes so gcc vectorises the loop without -ffast-math.
  constexpr int kLanes = 8;
  for (int64_t i = 0; i < M; ++i) {
    const T* a = A + i * lda;
    for (int64_t j = j0; j < j1; ++j) {
      const T* b = B + j * ldb;
      T part[kLanes] = {};
      int64_t k = 0;
      for (; k + kLanes <= K; k += kLanes) {
        for (int l = 0; l < kLanes; ++l) part[l] += a[k + l] * b[k + l];
      }
      T s = 0;
      for (; k < K; ++k) s += a[k] * b[k];
      for (int l = 0; l < kLanes; ++l) s += part[l];
      out[i * ldo + j] = s + (bias ? bias[j] : T(0));
    }
  }
}

// out[i * ldo + j] = sum_k A[i * ai + k * ak] * B[k * ldb + j]
// for i in [0, M), j in [j0, j1): A is read through strides, so A^T works too.
template <typename T>
void gemm_nn(const T* A, int64_t ai, int64_t ak, int64_t M, const T* B, int64_t ldb, int64_t j0,
             int64_t j1, int64_t K, T* out, int64_t ldo) {
  for (int64_t i = 0; i < M; ++i) {
    T* o = out + i * ldo;
    std::fill(o + j0, o + j1, T(0));
    for (int64_t k = 0; k < K; ++k) {
      const T coef = A[i * ai + k * ak];
      const T* b = B + k * ldb;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) o[j] += coef * b[j];
    }
  }
}

#if defined(__AVX512F__)

// Rows of A per register block: up to 6 (24 accumulators), the remaining rows
// spread evenly so that no block is left with one or two rows (a 1-row block
// does one multiply-add per load).
inline int64_t row_block(int64_t rows_left) {
  if (rows_left <= 6) return rows_left;
  const int64_t blocks = (rows_left + 5) / 6;
  return (rows_left + blocks - 1) / blocks;
}

// The register blocks' loops over rows and vectors are unrolled by request: without
// it gcc 12 keeps acc[][] in registers but also stores every accumulator to the
// stack after each multiply-add (24 stores per k step at 6 x 4), which halved the
// kernels' speed (nn_block 6 x 4: 82 -> 165 GFLOP/s on one core, see NOTES).
#define SE_UNROLL_BLOCK _Pragma("GCC unroll 8")

inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
}

// MI x NJ outputs of gemm_nt: 16 lanes per output over k (fused multiply-add in
// k order, masked tail), then the lanes' fixed reduction tree.
template <int MI, int NJ>
inline void nt_block(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K,
                     const float* bias, float* out, int64_t ldo) {
  __m512 acc[MI][NJ];
  SE_UNROLL_BLOCK
  for (int i = 0; i < MI; ++i)
    SE_UNROLL_BLOCK
    for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 b[NJ];
    SE_UNROLL_BLOCK
    for (int j = 0; j < NJ; ++j) b[j] = _mm512_loadu_ps(B + j * ldb + k);
    SE_UNROLL_BLOCK
    for (int i = 0; i < MI; ++i) {
      const __m512 a = _mm512_loadu_ps(A + i * lda + k);
      SE_UNROLL_BLOCK
      for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 m = lanes_below(K - k);
    __m512 b[NJ];
    SE_UNROLL_BLOCK
    for (int j = 0; j < NJ; ++j) b[j] = _mm512_maskz_loadu_ps(m, B + j * ldb + k);
    SE_UNROLL_BLOCK
    for (int i = 0; i < MI; ++i) {
      const __m512 a = _mm512_maskz_loadu_ps(m, A + i * lda + k);
      SE_UNROLL_BLOCK
      for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  SE_UNROLL_BLOCK
  for (int i = 0; i < MI; ++i)
    SE_UNROLL_BLOCK
    for (int j = 0; j < NJ; ++j)
      out[i * ldo + j] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[j] : 0.f);
}

// f(i, rows) for the row blocks [i, i + rows) of [0, M); rows is a
// std::integral_constant<int, 1..6>, the block's height as a template argument.
template <typename F>
inline void for_row_blocks(int64_t M, const F& f) {
  for (int64_t i = 0; i < M;) {
    const int64_t mi = row_block(M - i);
    switch (mi) {
      case 6: f(i, std::integral_constant<int, 6>{}); break;
      case 5: f(i, std::integral_constant<int, 5>{}); break;
      case 4: f(i, std::integral_constant<int, 4>{}); break;
      case 3: f(i, std::integral_constant<int, 3>{}); break;
      case 2: f(i, std::integral_constant<int, 2>{}); break;
      default: f(i, std::integral_constant<int, 1>{}); break;
    }
    i += mi;
  }
}

template <int MI>
inline void nt_row_block(int nj, const float* A, int64_t lda, const float* B, int64_t ldb,
                         int64_t K, const float* bias, float* out, int64_t ldo) {
  switch (nj) {
    case 4: return nt_block<MI, 4>(A, lda, B, ldb, K, bias, out, ldo);
    case 3: return nt_block<MI, 3>(A, lda, B, ldb, K, bias, out, ldo);
    case 2: return nt_block<MI, 2>(A, lda, B, ldb, K, bias, out, ldo);
    default: return nt_block<MI, 1>(A, lda, B, ldb, K, bias, out, ldo);
  }
}

template <>
inline void gemm_nt<float>(const float* A, int64_t lda, int64_t M, const float* B, int64_t ldb,
                           int64_t j0, int64_t j1, int64_t K, const float* bias, float* out,
                           int64_t ldo) {
  // Four rows of B (the weights) at a time against every row of A (the samples):
  // the weights stream through once, the samples stay in L1/L2.
  for (int64_t j = j0; j < j1; j += 4) {
    const int nj = static_cast<int>(std::min<int64_t>(4, j1 - j));
    const float* Bj = B + j * ldb;
    const float* bj = bias ? bias + j : nullptr;
    for_row_blocks(M, [&](int64_t i, auto rows) {
      nt_row_block<decltype(rows)::value>(nj, A + i * lda, lda, Bj, ldb, K, bj,
                                          out + i * ldo + j, ldo);
    });
  }
}

// MI rows x NV vectors of 16 columns of gemm_nn; `m` masks the last vector.
template <int MI, int NV>
inline void nn_block(const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
                     int64_t K, __mmask16 m, float* out, int64_t ldo) {
  __m512 acc[MI][NV];
  SE_UNROLL_BLOCK
  for (int i = 0; i < MI; ++i)
    SE_UNROLL_BLOCK
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
    const float* bk = B + k * ldb;
    SE_UNROLL_BLOCK
    for (int v = 0; v < NV - 1; ++v) b[v] = _mm512_loadu_ps(bk + 16 * v);
    b[NV - 1] = _mm512_maskz_loadu_ps(m, bk + 16 * (NV - 1));
    SE_UNROLL_BLOCK
    for (int i = 0; i < MI; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * ai + k * ak]);
      SE_UNROLL_BLOCK
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
  }
  SE_UNROLL_BLOCK
  for (int i = 0; i < MI; ++i) {
    SE_UNROLL_BLOCK
    for (int v = 0; v < NV - 1; ++v) _mm512_storeu_ps(out + i * ldo + 16 * v, acc[i][v]);
    _mm512_mask_storeu_ps(out + i * ldo + 16 * (NV - 1), m, acc[i][NV - 1]);
  }
}

template <int MI>
inline void nn_row_block(int nv, __mmask16 m, const float* A, int64_t ai, int64_t ak,
                         const float* B, int64_t ldb, int64_t K, float* out, int64_t ldo) {
  switch (nv) {
    case 4: return nn_block<MI, 4>(A, ai, ak, B, ldb, K, m, out, ldo);
    case 3: return nn_block<MI, 3>(A, ai, ak, B, ldb, K, m, out, ldo);
    case 2: return nn_block<MI, 2>(A, ai, ak, B, ldb, K, m, out, ldo);
    default: return nn_block<MI, 1>(A, ai, ak, B, ldb, K, m, out, ldo);
  }
}

template <>
inline void gemm_nn<float>(const float* A, int64_t ai, int64_t ak, int64_t M, const float* B,
                           int64_t ldb, int64_t j0, int64_t j1, int64_t K, float* out,
                           int64_t ldo) {
  for (int64_t j = j0; j < j1; j += 64) {
    const int64_t cols = std::min<int64_t>(64, j1 - j);
    const int nv = static_cast<int>((cols + 15) / 16);
    const __mmask16 m = lanes_below(cols - 16 * (nv - 1));
    for_row_blocks(M, [&](int64_t i, auto rows) {
      nn_row_block<decltype(rows)::value>(nv, m, A + i * ai, ai, ak, B + j, ldb, K,
                                          out + i * ldo + j, ldo);
    });
  }
}

#endif  // __AVX512F__

}  // namespace cpu
}  // namespace se_fused
