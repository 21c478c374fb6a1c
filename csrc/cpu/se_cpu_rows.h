// The streaming passes over x, one contiguous run at a time: a row of H*W
// values of one channel (NCHW) or a pixel's C channels (channels_last).
// Single-threaded; every sum has an order fixed by the run length alone.
//
// NCHW rows of deep stages are short (49 or 196 values), so what counts there
// is the work per row: the AVX-512 versions keep every row in vector registers
// with one masked tail instead of a scalar remainder loop, and reduce each row
// with one horizontal sum. They serve float, and bfloat16 and float16 x (whose
// values are widened to float on load and rounded once on store, bit for bit as
// c10's scalar conversions), so a run never mixes vector and scalar code.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

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
// 16-bit element types need AVX512-BW/VL for their masked 16-bit loads and stores.
#if SE_CPU_SIMD_F32 && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SE_CPU_SIMD_HALF 1
#else
#define SE_CPU_SIMD_HALF 0
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

// Whether the AVX-512 kernels below replace the generic loops for this x dtype.
template <typename acc_t, typename scalar_t>
constexpr bool kVec =
    std::is_same_v<acc_t, float> &&
    (std::is_same_v<scalar_t, float> ||
     (SE_CPU_SIMD_HALF && (std::is_same_v<scalar_t, c10::BFloat16> ||
                           std::is_same_v<scalar_t, c10::Half>)));

#if SE_CPU_SIMD_F32

inline __mmask16 row_tail(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
}
constexpr __mmask16 kAll = __mmask16(0xFFFF);

// ---- 16 values of x's dtype <-> one float vector ----------------------------

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline void store16(float* p, __m512 v, __mmask16 m) {
  // Masked stores are slow on this class of core (AMD Zen): only a run's last
  // partial vector takes one.
  if (m == kAll) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, m, v);
  }
}

#if SE_CPU_SIMD_HALF
inline void store16_bits(void* p, __m256i bits, __mmask16 m) {
  if (m == kAll) {
    _mm256_storeu_si256(static_cast<__m256i*>(p), bits);
  } else {
    _mm256_mask_storeu_epi16(p, m, bits);
  }
}

// bfloat16 is the upper half of a float: widening is exact.
inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
// c10::BFloat16(float) (round_to_nearest_even): add 0x7FFF plus the lowest kept
// bit, keep the upper half; every NaN becomes 0x7FC0. Not vcvtneps2bf16: that
// flushes subnormal inputs and outputs to zero and keeps NaN payloads.
inline __m256i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
inline void store16(c10::BFloat16* p, __m512 v, __mmask16 m) { store16_bits(p, bf16_bits(v), m); }

// float16: vcvtph2ps / vcvtps2ph with round-to-nearest-even, the instructions
// c10::Half's conversions use on x86 with F16C (which AVX-512 implies).
inline __m512 load16(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline void store16(c10::Half* p, __m512 v, __mmask16 m) {
  store16_bits(p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), m);
}
#endif  // SE_CPU_SIMD_HALF

// 1.0 where the relu passed (y > 0 or NaN, as torch.relu's backward), else 0.0.
template <typename T>
inline __m512 relu_pass_factor(__mmask16 m, const T* y) {
  const __m512 yv = load16(y, m);
  const __mmask16 on = _mm512_mask_cmp_ps_mask(m, yv, _mm512_setzero_ps(), _CMP_NLE_UQ);
  return _mm512_maskz_mov_ps(on, _mm512_set1_ps(1.f));
}

// The masked gradient g of 16 values (mask: y, or nullptr without the relu).
template <typename T>
inline __m512 grad16(const T* gy, const T* mask, __mmask16 m) {
  const __m512 g = load16(gy, m);
  return mask ? _mm512_mul_ps(g, relu_pass_factor(m, mask)) : g;
}

template <typename Load>
inline float row_reduce(const Load& load, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    a0 = _mm512_add_ps(a0, load(k, kAll));
    a1 = _mm512_add_ps(a1, load(k + 16, kAll));
    a2 = _mm512_add_ps(a2, load(k + 32, kAll));
    a3 = _mm512_add_ps(a3, load(k + 48, kAll));
  }
  for (; k + 16 <= n; k += 16) a0 = _mm512_add_ps(a0, load(k, kAll));
  if (k < n) a1 = _mm512_add_ps(a1, load(k, row_tail(n - k)));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

template <typename T>
inline float row_sum_vec(const T* x, int64_t n) {
  return row_reduce([=](int64_t k, __mmask16 m) { return load16(x + k, m); }, n);
}

template <typename T>
inline float row_grad_dot_vec(const T* gy, const T* mask, const T* v, int64_t n) {
  if (mask) {
    return row_reduce(
        [=](int64_t k, __mmask16 m) {
          return _mm512_mul_ps(grad16(gy + k, mask + k, m), load16(v + k, m));
        },
        n);
  }
  return row_reduce(
      [=](int64_t k, __mmask16 m) { return _mm512_mul_ps(load16(gy + k, m), load16(v + k, m)); },
      n);
}

// x * s + r as one fused multiply-add: written out, not left to the compiler,
// whose contraction of a multiply and an add depends on the inlining context
// (it gave y one ulp apart between the two schedules).
template <bool kRes, bool kRelu, typename T>
inline __m512 scale_vec(const T* x, const T* r, __m512 sv, __mmask16 m) {
  const __m512 xv = load16(x, m);
  __m512 v = kRes ? _mm512_fmadd_ps(xv, sv, load16(r, m)) : _mm512_mul_ps(xv, sv);
  // max returns its second operand when either is NaN (and for -0 against 0),
  // which is what apply_relu gives.
  if constexpr (kRelu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
  return v;
}

template <bool kRes, bool kRelu, typename T>
inline void row_scale_vec(const T* x, const T* r, T* y, int64_t n, float s) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = row_tail(n - k);
    store16(y + k, scale_vec<kRes, kRelu>(x + k, r + k, sv, m), m);
  }
}

// gx = g * s + dz (one rounding), gres = g.
template <bool kRes, typename T>
inline void row_grad_map_vec(const T* gy, const T* mask, T* gx, T* gres, int64_t n, float s,
                             float dz) {
  const __m512 sv = _mm512_set1_ps(s), dzv = _mm512_set1_ps(dz);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = row_tail(n - k);
    const __m512 g = grad16(gy + k, mask ? mask + k : nullptr, m);
    store16(gx + k, _mm512_fmadd_ps(g, sv, dzv), m);
    if constexpr (kRes) store16(gres + k, g, m);
  }
}

template <bool kRes, bool kRelu, typename T>
inline void pix_scale_vec(const T* x, const T* r, T* y, const float* s, int64_t C) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = row_tail(C - c);
    store16(y + c, scale_vec<kRes, kRelu>(x + c, r + c, _mm512_maskz_loadu_ps(m, s + c), m), m);
  }
}

// part[c] += x[c], and part[c] += g[c] * v[c] (a multiply and an add, as the generic loops)
template <typename T>
inline void pix_accumulate_vec(const T* x, float* part, int64_t C) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = row_tail(C - c);
    store16(part + c, _mm512_add_ps(_mm512_maskz_loadu_ps(m, part + c), load16(x + c, m)), m);
  }
}

template <typename T>
inline void pix_grad_accumulate_vec(const T* gy, const T* mask, const T* v, float* part,
                                    int64_t C) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = row_tail(C - c);
    const __m512 gv = _mm512_mul_ps(grad16(gy + c, mask ? mask + c : nullptr, m), load16(v + c, m));
    store16(part + c, _mm512_add_ps(_mm512_maskz_loadu_ps(m, part + c), gv), m);
  }
}

template <bool kRes, typename T>
inline void pix_grad_map_vec(const T* gy, const T* mask, T* gx, T* gres, const float* s,
                             const float* dz, int64_t C) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = row_tail(C - c);
    const __m512 g = grad16(gy + c, mask ? mask + c : nullptr, m);
    store16(gx + c,
            _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, s + c), _mm512_maskz_loadu_ps(m, dz + c)),
            m);
    if constexpr (kRes) store16(gres + c, g, m);
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
        const __m512 v = scale_vec<kRes, kRelu>(x + f + c, r + f + c, _mm512_loadu_ps(sn + c), kAll);
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
    _mm512_stream_ps(y + f, scale_vec<kRes, kRelu>(x + f, r + f, sv, kAll));
  }
  _mm_sfence();
  for (; f < f1; ++f) {
    y[f] = scale_one<kRes, kRelu>(x, r, s, f, HW);
  }
}
#endif  // SE_CPU_SIMD_F32

// ---- NCHW: one row of n = H * W values ----------------------------------------

template <typename acc_t, typename scalar_t>
inline acc_t row_sum(const scalar_t* x, int64_t n) {
#if SE_CPU_SIMD_F32
  if constexpr (kVec<acc_t, scalar_t>) return row_sum_vec(x, n);
#endif
  return sum_run<acc_t>([=](int64_t k) { return static_cast<acc_t>(x[k]); }, n);
}

// sum_k g(k) * v(k), g the masked gradient.
template <typename acc_t, typename scalar_t>
inline acc_t row_grad_dot(const scalar_t* gy, const scalar_t* mask, const scalar_t* v, int64_t n) {
#if SE_CPU_SIMD_F32
  if constexpr (kVec<acc_t, scalar_t>) return row_grad_dot_vec(gy, mask, v, n);
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
  if constexpr (kVec<acc_t, scalar_t>) return row_scale_vec<kRes, kRelu>(x, r, y, n, s);
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
  if constexpr (kVec<acc_t, scalar_t>) return row_grad_map_vec<kRes>(gy, mask, gx, gres, n, s, dz);
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
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>)
    return scale_stream_f32<kRes, kRelu>(x, r, y, s, n0, g, C, HW, cl);
#endif
  TORCH_INTERNAL_ASSERT(false, "scale_stream without can_stream");
}

// ---- channels_last: one pixel's C values ---------------------------------------

// part[c] += x[c]
template <typename acc_t, typename scalar_t>
inline void pix_accumulate(const scalar_t* x, acc_t* part, int64_t C) {
#if SE_CPU_SIMD_F32
  if constexpr (kVec<acc_t, scalar_t>) return pix_accumulate_vec(x, part, C);
#endif
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) part[c] += static_cast<acc_t>(x[c]);
}

// part[c] += g[c] * v[c]
template <typename acc_t, typename scalar_t>
inline void pix_grad_accumulate(const scalar_t* gy, const scalar_t* mask, const scalar_t* v,
                                acc_t* part, int64_t C) {
#if SE_CPU_SIMD_F32
  if constexpr (kVec<acc_t, scalar_t>) return pix_grad_accumulate_vec(gy, mask, v, part, C);
#endif
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
  if constexpr (kVec<acc_t, scalar_t>) return pix_scale_vec<kRes, kRelu>(x, r, y, s, C);
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
#if SE_CPU_SIMD_F32
  if constexpr (kVec<acc_t, scalar_t>) return pix_grad_map_vec<kRes>(gy, mask, gx, gres, s, dz, C);
#endif
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = masked_grad<acc_t>(gy, mask, c);
    gx[c] = static_cast<scalar_t>(g * s[c] + dz[c]);
    if constexpr (kRes) gres[c] = static_cast<scalar_t>(g);
  }
}

}  // namespace cpu
}  // namespace se_fused
