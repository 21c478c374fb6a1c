// The streaming passes over x, one contiguous run at a time: a row of H*W
// values of one channel (NCHW) or a pixel's C channels (channels_last).
// Single-threaded; every sum has an order fixed by the run length alone.
//
// NCHW rows of deep stages are short (49 or 196 values), so what counts there
// is the work per row: the fp32 AVX-512 versions keep every row in vector
// registers with one masked tail instead of a scalar remainder loop, and reduce
// each row with one horizontal sum.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "se_common.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define SE_CPU_SIMD_F32 1
#else
#define SE_CPU_SIMD_F32 0
#endif

namespace se_fused {
namespace cpu {

// sum of v(k) for k in [0, n): independent partial sums, which gcc keeps in one
// vector register (`omp simd reduction` made it emit gathers).
template <typename acc_t, typename V>
inline acc_t sum_run(const V& v, int64_t n) {
  constexpr int kLanes = 32 / sizeof(acc_t) * 2;
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) part[k] += v(i + k);
  }
  acc_t s = 0;
  for (; i < n; ++i) s += v(i);
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

// The gradient reaching x * s: grad_y, or zero where the output relu was off
// (mask = y, nullptr without the relu). A multiply, not `y > 0 ? v : 0`: gcc 12
// -O3 miscompiled that select inside sum_run's unrolled lanes.
template <typename acc_t, typename scalar_t>
inline acc_t masked_grad(const scalar_t* gy, const scalar_t* mask, int64_t k) {
  acc_t v = static_cast<acc_t>(gy[k]);
  if (mask) v *= acc_t(relu_passes(static_cast<acc_t>(mask[k])));
  return v;
}

// The fp32 kernels below replace the generic loops for float x.
template <typename acc_t, typename scalar_t>
constexpr bool kF32 = std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>;

#if SE_CPU_SIMD_F32

inline __mmask16 row_tail(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
}

// 1.0 where the relu passed (y > 0 or NaN, as torch.relu's backward), else 0.0.
inline __m512 relu_pass_factor(__mmask16 m, const float* y) {
  const __m512 yv = _mm512_maskz_loadu_ps(m, y);
  const __mmask16 on = _mm512_mask_cmp_ps_mask(m, yv, _mm512_setzero_ps(), _CMP_NLE_UQ);
  return _mm512_maskz_mov_ps(on, _mm512_set1_ps(1.f));
}

template <typename Load>
inline float row_reduce(const Load& load, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    a0 = _mm512_add_ps(a0, load(k, __mmask16(0xFFFF)));
    a1 = _mm512_add_ps(a1, load(k + 16, __mmask16(0xFFFF)));
    a2 = _mm512_add_ps(a2, load(k + 32, __mmask16(0xFFFF)));
    a3 = _mm512_add_ps(a3, load(k + 48, __mmask16(0xFFFF)));
  }
  for (; k + 16 <= n; k += 16) a0 = _mm512_add_ps(a0, load(k, __mmask16(0xFFFF)));
  if (k < n) a1 = _mm512_add_ps(a1, load(k, row_tail(n - k)));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

inline float row_sum_f32(const float* x, int64_t n) {
  return row_reduce([=](int64_t k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x + k); }, n);
}

inline float row_grad_dot_f32(const float* gy, const float* mask, const float* v, int64_t n) {
  if (mask) {
    return row_reduce(
        [=](int64_t k, __mmask16 m) {
          const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gy + k),
                                         relu_pass_factor(m, mask + k));
          return _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, v + k));
        },
        n);
  }
  return row_reduce(
      [=](int64_t k, __mmask16 m) {
        return _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gy + k), _mm512_maskz_loadu_ps(m, v + k));
      },
      n);
}

// Masked stores are slow on this class of core (AMD Zen), so only a row's last
// partial vector is written under a mask.
// x * s + r as one fused multiply-add: written out, not left to the compiler,
// whose contraction of a multiply and an add depends on the inlining context
// (it gave y one ulp apart between the two schedules).
template <bool kRes, bool kRelu>
inline __m512 scale_vec(const float* x, const float* r, __m512 sv, __mmask16 m) {
  const __m512 xv = _mm512_maskz_loadu_ps(m, x);
  __m512 v = kRes ? _mm512_fmadd_ps(xv, sv, _mm512_maskz_loadu_ps(m, r)) : _mm512_mul_ps(xv, sv);
  // max returns its second operand when either is NaN (and for -0 against 0),
  // which is what apply_relu gives.
  if constexpr (kRelu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  return v;
}

template <bool kRes, bool kRelu>
inline void row_scale_f32(const float* x, const float* r, float* y, int64_t n, float s) {
  const __m512 sv = _mm512_set1_ps(s);
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm512_storeu_ps(y + k, scale_vec<kRes, kRelu>(x + k, r + k, sv, __mmask16(0xFFFF)));
  if (k < n) {
    const __mmask16 m = row_tail(n - k);
    _mm512_mask_storeu_ps(y + k, m, scale_vec<kRes, kRelu>(x + k, r + k, sv, m));
  }
}


template <bool kRes>
inline void row_grad_map_f32(const float* gy, const float* mask, float* gx, float* gres,
                             int64_t n, float s, float dz) {
  const __m512 sv = _mm512_set1_ps(s), dzv = _mm512_set1_ps(dz);
  auto grad = [=](int64_t k, __mmask16 m) {
    __m512 g = _mm512_maskz_loadu_ps(m, gy + k);
    return mask ? _mm512_mul_ps(g, relu_pass_factor(m, mask + k)) : g;
  };
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 g = grad(k, __mmask16(0xFFFF));
    _mm512_storeu_ps(gx + k, _mm512_fmadd_ps(g, sv, dzv));
    if constexpr (kRes) _mm512_storeu_ps(gres + k, g);
  }
  if (k < n) {
    const __mmask16 m = row_tail(n - k);
    const __m512 g = grad(k, m);
    _mm512_mask_storeu_ps(gx + k, m, _mm512_fmadd_ps(g, sv, dzv));
    if constexpr (kRes) _mm512_mask_storeu_ps(gres + k, m, g);
  }
}



// y must be 64-byte aligned; NCHW rows at least a vector long (a vector then
// spans at most two rows), channels_last pixels a whole number of vectors.
inline bool can_stream_f32(const float* y, int64_t C, int64_t HW, bool cl) {
  return (reinterpret_cast<uintptr_t>(y) & 63) == 0 && (cl ? C % 16 == 0 : HW >= 16);
}

// y = out_act(x * s + r) for samples [n0, n0 + g), written with streaming
// stores: for outputs larger than the caches these skip reading y's old lines.
// One value of the NCHW group outside the aligned vectors, rounded as scale_vec.
template <bool kRes, bool kRelu>
inline float scale_one(const float* x, const float* r, const float* s, int64_t f, int64_t HW) {
  float v = kRes ? std::fma(x[f], s[f / HW], r[f]) : x[f] * s[f / HW];
  if constexpr (kRelu) v = apply_relu(v);
  return v;
}

template <bool kRes, bool kRelu>
inline void scale_stream_f32(const float* x, const float* r, float* y, const float* s, int64_t n0,
                             int64_t g, int64_t C, int64_t HW, bool cl) {
  const int64_t f0 = n0 * C * HW, f1 = (n0 + g) * C * HW;
  if (cl) {
    for (int64_t f = f0; f < f1; f += C) {
      const float* sn = s + (f / (C * HW)) * C;
      for (int64_t c = 0; c < C; c += 16) {
        const __m512 v = scale_vec<kRes, kRelu>(x + f + c, r + f + c, _mm512_loadu_ps(sn + c),
                                                __mmask16(0xFFFF));
        _mm512_stream_ps(y + f + c, v);
      }
    }
    _mm_sfence();
    return;
  }
  // NCHW: flat over the group's rows; a vector that crosses into the next row
  // takes that row's scale in its upper lanes.
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t f = f0;
  const int64_t head = std::min(f1, (f0 + 15) / 16 * 16);
  for (; f < head; ++f) {
    y[f] = scale_one<kRes, kRelu>(x, r, s, f, HW);
  }
  int64_t row = f / HW, row_end = (row + 1) * HW;
  for (; f + 16 <= f1; f += 16) {
    __m512 sv = _mm512_set1_ps(s[row]);
    if (row_end < f + 16) {
      const __mmask16 next = _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32(int(row_end - f)));
      sv = _mm512_mask_blend_ps(next, sv, _mm512_set1_ps(s[row + 1]));
    }
    if (row_end <= f + 16) {
      ++row;
      row_end += HW;
    }
    _mm512_stream_ps(y + f, scale_vec<kRes, kRelu>(x + f, r + f, sv, __mmask16(0xFFFF)));
  }
  _mm_sfence();
  for (; f < f1; ++f) {
    y[f] = scale_one<kRes, kRelu>(x, r, s, f, HW);
  }
}

// The same arithmetic as scale_stream_f32, so a pixel's value does not depend on
// which of the two wrote it.
template <bool kRes, bool kRelu>
inline void pix_scale_f32(const float* x, const float* r, float* y, const float* s, int64_t C) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16)
    _mm512_storeu_ps(y + c, scale_vec<kRes, kRelu>(x + c, r + c, _mm512_loadu_ps(s + c),
                                                   __mmask16(0xFFFF)));
  if (c < C) {
    const __mmask16 m = row_tail(C - c);
    _mm512_mask_storeu_ps(
        y + c, m, scale_vec<kRes, kRelu>(x + c, r + c, _mm512_maskz_loadu_ps(m, s + c), m));
  }
}
#endif  // SE_CPU_SIMD_F32

// ---- NCHW: one row of n = H * W values ----------------------------------------

template <typename acc_t, typename scalar_t>
inline acc_t row_sum(const scalar_t* x, int64_t n) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return row_sum_f32(x, n);
#endif
  return sum_run<acc_t>([=](int64_t k) { return static_cast<acc_t>(x[k]); }, n);
}

// sum_k g(k) * v(k), g the masked gradient.
template <typename acc_t, typename scalar_t>
inline acc_t row_grad_dot(const scalar_t* gy, const scalar_t* mask, const scalar_t* v, int64_t n) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return row_grad_dot_f32(gy, mask, v, n);
#endif
  if (mask) {
    return sum_run<acc_t>(
        [=](int64_t k) { return masked_grad<acc_t>(gy, mask, k) * static_cast<acc_t>(v[k]); }, n);
  }
  return sum_run<acc_t>(
      [=](int64_t k) { return static_cast<acc_t>(gy[k]) * static_cast<acc_t>(v[k]); }, n);
}

// y = out_act(x * s + r); y may be x (each value is read before it is written).
template <bool kRes, bool kRelu, typename acc_t, typename scalar_t>
inline void row_scale(const scalar_t* x, const scalar_t* r, scalar_t* y, int64_t n, acc_t s) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return row_scale_f32<kRes, kRelu>(x, r, y, n, s);
#endif
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    acc_t v = static_cast<acc_t>(x[k]) * s;
    if constexpr (kRes) v += static_cast<acc_t>(r[k]);
    if constexpr (kRelu) v = apply_relu(v);
    y[k] = static_cast<scalar_t>(v);
  }
}

// gx = g * s + dz, and gres = g when wanted.
template <bool kRes, typename acc_t, typename scalar_t>
inline void row_grad_map(const scalar_t* gy, const scalar_t* mask, scalar_t* gx, scalar_t* gres,
                         int64_t n, acc_t s, acc_t dz) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return row_grad_map_f32<kRes>(gy, mask, gx, gres, n, s, dz);
#endif
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const acc_t g = masked_grad<acc_t>(gy, mask, k);
    gx[k] = static_cast<scalar_t>(g * s + dz);
    if constexpr (kRes) gres[k] = static_cast<scalar_t>(g);
  }
}

// ---- a group's scale pass with streaming (non-temporal) stores of y ----------

// Whether scale_stream can write y (the fp32 AVX-512 kernel only).
template <typename scalar_t>
inline bool can_stream(const scalar_t* y, int64_t C, int64_t HW, bool cl) {
#if SE_CPU_SIMD_F32
  if constexpr (std::is_same_v<scalar_t, float>) return can_stream_f32(y, C, HW, cl);
#endif
  return false;
}

template <bool kRes, bool kRelu, typename scalar_t, typename acc_t>
inline void scale_stream(const scalar_t* x, const scalar_t* r, scalar_t* y, const acc_t* s,
                         int64_t n0, int64_t g, int64_t C, int64_t HW, bool cl) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return scale_stream_f32<kRes, kRelu>(x, r, y, s, n0, g, C, HW, cl);
#endif
  TORCH_INTERNAL_ASSERT(false, "scale_stream without can_stream");
}

// ---- channels_last: one pixel's C values ---------------------------------------

// part[c] += x[c]
template <typename acc_t, typename scalar_t>
inline void pix_accumulate(const scalar_t* x, acc_t* part, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) part[c] += static_cast<acc_t>(x[c]);
}

// part[c] += g[c] * v[c]
template <typename acc_t, typename scalar_t>
inline void pix_grad_accumulate(const scalar_t* gy, const scalar_t* mask, const scalar_t* v,
                                acc_t* part, int64_t C) {
  if (mask) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      part[c] += masked_grad<acc_t>(gy, mask, c) * static_cast<acc_t>(v[c]);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      part[c] += static_cast<acc_t>(gy[c]) * static_cast<acc_t>(v[c]);
  }
}

// y = out_act(x * s + r) over one pixel, s per channel; y may be x.
template <bool kRes, bool kRelu, typename acc_t, typename scalar_t>
inline void pix_scale(const scalar_t* x, const scalar_t* r, scalar_t* y, const acc_t* s,
                      int64_t C) {
#if SE_CPU_SIMD_F32
  if constexpr (kF32<acc_t, scalar_t>) return pix_scale_f32<kRes, kRelu>(x, r, y, s, C);
#endif
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    acc_t v = static_cast<acc_t>(x[c]) * s[c];
    if constexpr (kRes) v += static_cast<acc_t>(r[c]);
    if constexpr (kRelu) v = apply_relu(v);
    y[c] = static_cast<scalar_t>(v);
  }
}


template <bool kRes, typename acc_t, typename scalar_t>
inline void pix_grad_map(const scalar_t* gy, const scalar_t* mask, scalar_t* gx, scalar_t* gres,
                         const acc_t* s, const acc_t* dz, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = masked_grad<acc_t>(gy, mask, c);
    gx[c] = static_cast<scalar_t>(g * s[c] + dz[c]);
    if constexpr (kRes) gres[c] = static_cast<scalar_t>(g);
  }
}

}  // namespace cpu
}  // namespace se_fused
