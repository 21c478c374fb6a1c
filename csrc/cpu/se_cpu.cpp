// Fused SE forward and backward on the CPU.
//
// The batch is processed in groups of samples small enough to stay in the
// last-level cache: each group is squeezed (one read of x from memory), its
// small layers run once for the whole group (the weights are read once per
// group, not once per sample), and then it is scaled while it is still in cache.
// The backward is fused the same way. Both layouts are handled natively:
// NCHW reduces along contiguous H*W rows, channels_last along contiguous C
// vectors with per-chunk partial sums. Every summation order is fixed by the
// shape alone, so results do not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "se_common.h"

namespace se_fused {
namespace {

// Bytes of x (plus the tensors read beside it) a group may span: well inside the
// last-level cache, so the second pass over the group reads from cache.
constexpr int64_t kGroupBytes = int64_t(6) << 20;
// Elements a parallel task should at least cover to amortise scheduling.
constexpr int64_t kTaskElements = 16384;

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, elements_per_item));
}

// Number of pixel chunks per sample for channels_last reductions; depends on
// the shape only (never on the thread count) so the summation order is fixed.
int64_t pixel_chunks(int64_t hw, int64_t c) {
  return std::clamp<int64_t>(hw * c / kTaskElements, 1, std::min<int64_t>(hw, 64));
}

template <typename F>
void bool_switch(bool flag, const F& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---- traversal of one group of samples (the two layouts live only here) ------

// Calls f(off, nc) for every element of a group of g samples: off is the
// element's offset from the group's first element, nc = n * C + c its
// (sample, channel) index within the group. The contiguous dimension is innermost.
template <typename F>
void for_each_element(const SEArgs& a, int64_t g, const F& f) {
  const int64_t C = a.C, HW = a.hw();
  if (!a.channels_last) {
    at::parallel_for(0, g * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t base = row * HW;
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) f(base + i, row);
      }
    });
  } else {
    at::parallel_for(0, g * HW, grain_for(C), [&](int64_t p0, int64_t p1) {
      for (int64_t pix = p0; pix < p1; ++pix) {
        const int64_t base = pix * C, nc0 = (pix / HW) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) f(base + c, nc0 + c);
      }
    });
  }
}

// sum of v(off) for off in [base, base + n). Independent partial sums that gcc
// turns into one vector register; `omp simd reduction` made it emit gathers here.
template <typename acc_t, typename V>
inline acc_t sum_run(const V& v, int64_t base, int64_t n) {
  constexpr int kLanes = 32 / sizeof(acc_t) * 2;
  acc_t part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) part[k] += v(base + i + k);
  }
  acc_t s = 0;
  for (; i < n; ++i) s += v(base + i);
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

// out[nc] = sum over H*W of v(off), for every (sample, channel) of a group.
template <typename acc_t, typename V>
void sum_over_hw(const SEArgs& a, int64_t g, const V& v, acc_t* out,
                 std::vector<acc_t>& partial) {
  const int64_t C = a.C, HW = a.hw();
  if (!a.channels_last) {
    at::parallel_for(0, g * C, grain_for(HW), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        out[row] = sum_run<acc_t>(v, row * HW, HW);
      }
    });
    return;
  }
  const int64_t P = pixel_chunks(HW, C);
  partial.assign(static_cast<size_t>(g * P * C), acc_t(0));
  at::parallel_for(0, g * P, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / P, p = t % P;
      acc_t* acc = partial.data() + t * C;
      for (int64_t pix = HW * p / P; pix < HW * (p + 1) / P; ++pix) {
        const int64_t base = (n * HW + pix) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] += v(base + c);
      }
    }
  });
  at::parallel_for(0, g * C, grain_for(P), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / C, c = i % C;
      acc_t s = 0;
      for (int64_t p = 0; p < P; ++p) s += partial[(n * P + p) * C + c];
      out[i] = s;
    }
  });
}

// ---- the small layers ----------------------------------------------------

template <typename acc_t>
struct Params {
  const acc_t* w1;  // (R, C)
  const acc_t* b1;  // (R,) or nullptr
  const acc_t* w2;  // (C, R)
  const acc_t* b2;  // (C,) or nullptr
};

// out[n, m] = b[m] + sum_k in[n, k] * w[m, k]   (w is M x K, row-major)
template <typename acc_t>
void linear(const acc_t* in, int64_t g, int64_t K, const acc_t* w, const acc_t* b, int64_t M,
            acc_t* out) {
  at::parallel_for(0, M, grain_for(g * K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const acc_t* wm = w + m * K;
      for (int64_t n = 0; n < g; ++n) {
        const acc_t* xn = in + n * K;
        const acc_t s = sum_run<acc_t>([=](int64_t k) { return xn[k] * wm[k]; }, 0, K);
        out[n * M + m] = s + (b ? b[m] : acc_t(0));
      }
    }
  });
}

// out[n, :] = sum_k in[n, k] * w[k, :]   (w is K x M, row-major): the transposed product.
template <typename acc_t>
void linear_transposed(const acc_t* in, int64_t g, int64_t K, const acc_t* w, int64_t M,
                       acc_t* out) {
  at::parallel_for(0, g, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      acc_t* o = out + n * M;
      std::fill(o, o + M, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const acc_t coef = in[n * K + k];
        const acc_t* wk = w + k * M;
#pragma omp simd
        for (int64_t m = 0; m < M; ++m) o[m] += coef * wk[m];
      }
    }
  });
}

// out[m, :] = sum_n a[n, m] * b[n, :] (a: N x M, b: N x K), bias[m] = sum_n a[n, m];
// summed over the batch in order, so weight gradients are deterministic.
template <typename acc_t>
void batch_outer_sum(const acc_t* a, const acc_t* b, int64_t N, int64_t M, int64_t K,
                     acc_t* out, acc_t* bias) {
  at::parallel_for(0, M, grain_for(N * K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      acc_t* o = out + m * K;
      std::fill(o, o + K, acc_t(0));
      acc_t bs = 0;
      for (int64_t n = 0; n < N; ++n) {
        const acc_t coef = a[n * M + m];
        const acc_t* bn = b + n * K;
        bs += coef;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) o[k] += coef * bn[k];
      }
      bias[m] = bs;
    }
  });
}

// The forward of the small layers for g samples: a1, h (g x R), a2, s (g x C).
template <typename acc_t>
void excite(const SEArgs& a, const Params<acc_t>& p, const acc_t* z, int64_t g, acc_t* a1,
            acc_t* h, acc_t* a2, acc_t* s) {
  linear(z, g, a.C, p.w1, p.b1, a.R, a1);
  for (int64_t i = 0; i < g * a.R; ++i) h[i] = act_forward(a.act, a1[i]);
  linear(h, g, a.R, p.w2, p.b2, a.C, a2);
  for (int64_t i = 0; i < g * a.C; ++i) s[i] = gate_forward(a.gate, a2[i]);
}

// ---- scheduling over the batch ---------------------------------------------

// Runs body(n0, g) on consecutive groups of g samples covering the batch.
// With at least two samples per thread and samples much larger than the
// weights, each thread takes whole samples (body's inner at::parallel_for loops
// then run inline): one thread's squeeze overlaps another's scale, with no
// barrier between them, and each sample is re-read from that core's cache.
// Otherwise groups that fit in cache are spread over all threads, one after
// the other, and the weights are read once per group. Both orders compute
// exactly the same sums, so the results do not depend on the choice.
template <typename F>
void for_each_group(int64_t N, int64_t sample_bytes, int64_t weight_bytes, const F& body) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && N >= 2 * threads && sample_bytes >= 4 * weight_bytes) {
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) body(n, 1);
    });
    return;
  }
  const int64_t G = std::clamp<int64_t>(kGroupBytes / std::max<int64_t>(1, sample_bytes), 1, N);
  for (int64_t n0 = 0; n0 < N; n0 += G) body(n0, std::min(G, N - n0));
}

template <typename acc_t>
int64_t weight_bytes(const SEArgs& a) {
  return 2 * a.R * a.C * int64_t(sizeof(acc_t));
}

// ---- forward ---------------------------------------------------------------

template <typename scalar_t>
void forward_kernel(const SEArgs& a, const scalar_t* x, const scalar_t* res, scalar_t* y,
                    at::opmath_type<scalar_t>* z, const Params<at::opmath_type<scalar_t>>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, HW = a.hw(), R = a.R, sample = C * HW;
  const int64_t bytes = sample * int64_t(sizeof(scalar_t)) * (res ? 3 : 2);
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  for_each_group(a.N, bytes, weight_bytes<acc_t>(a), [&](int64_t n0, int64_t g) {
    std::vector<acc_t> a1(g * R), h(g * R), a2(g * C), s(g * C), partial;
    const scalar_t* xg = x + n0 * sample;
    const scalar_t* rg = res ? res + n0 * sample : nullptr;
    scalar_t* yg = y + n0 * sample;
    acc_t* zg = z + n0 * C;

    sum_over_hw<acc_t>(a, g, [=](int64_t off) { return static_cast<acc_t>(xg[off]); }, zg,
                       partial);
    for (int64_t i = 0; i < g * C; ++i) zg[i] *= inv_hw;
    excite(a, p, zg, g, a1.data(), h.data(), a2.data(), s.data());

    const acc_t* sg = s.data();
    bool_switch(rg != nullptr, [&](auto has_res) {
      bool_switch(a.out_relu, [&](auto relu) {
        for_each_element(a, g, [=](int64_t off, int64_t nc) {
          acc_t v = static_cast<acc_t>(xg[off]) * sg[nc];
          if constexpr (decltype(has_res)::value) v += static_cast<acc_t>(rg[off]);
          if constexpr (decltype(relu)::value) v = apply_relu(v);
          yg[off] = static_cast<scalar_t>(v);
        });
      });
    });
  });
}

// ---- backward --------------------------------------------------------------

template <typename scalar_t>
void backward_kernel(const SEArgs& a, const scalar_t* gy, const scalar_t* x, const scalar_t* y,
                     const at::opmath_type<scalar_t>* z, const Params<at::opmath_type<scalar_t>>& p,
                     scalar_t* gx, scalar_t* gres, at::opmath_type<scalar_t>* gw1,
                     at::opmath_type<scalar_t>* gb1, at::opmath_type<scalar_t>* gw2,
                     at::opmath_type<scalar_t>* gb2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = a.N, C = a.C, HW = a.hw(), R = a.R, sample = C * HW;
  const int64_t streams = 3 + (y ? 1 : 0) + (gres ? 1 : 0);
  const int64_t bytes = sample * int64_t(sizeof(scalar_t)) * streams;
  // Kept for the whole batch: the weight gradients are summed after the loop.
  std::vector<acc_t> h(N * R), da1(N * R), da2(N * C);
  const acc_t inv_hw = acc_t(1) / acc_t(HW);

  for_each_group(N, bytes, weight_bytes<acc_t>(a), [&](int64_t n0, int64_t g) {
    std::vector<acc_t> a1(g * R), dh(g * R), a2(g * C), s(g * C), dz(g * C), partial;
    const scalar_t* gyg = gy + n0 * sample;
    const scalar_t* xg = x + n0 * sample;
    const scalar_t* yg = y ? y + n0 * sample : nullptr;
    scalar_t* gxg = gx + n0 * sample;
    scalar_t* grg = gres ? gres + n0 * sample : nullptr;
    acc_t* hg = h.data() + n0 * R;
    acc_t* da1g = da1.data() + n0 * R;
    acc_t* da2g = da2.data() + n0 * C;

    bool_switch(yg != nullptr, [&](auto masked) {
      // The gradient reaching x * s: grad_y, zeroed where the output relu was off.
      auto g_at = [=](int64_t off) {
        acc_t v = static_cast<acc_t>(gyg[off]);
        if constexpr (decltype(masked)::value) {
          // A multiply, not `y > 0 ? v : 0`: gcc 12 -O3 miscompiled that select
          // inside sum_run's unrolled lanes (wrong ds, caught by the tests).
          v *= acc_t(relu_passes(static_cast<acc_t>(yg[off])));
        }
        return v;
      };
      // ds = sum_hw g * x (sum_hw g * y in the y-only backward), stored in dz's buffer
      // until the small layers need it.
      sum_over_hw<acc_t>(
          a, g, [=](int64_t off) { return g_at(off) * static_cast<acc_t>(xg[off]); }, dz.data(),
          partial);

      excite(a, p, z + n0 * C, g, a1.data(), hg, a2.data(), s.data());
      for (int64_t i = 0; i < g * C; ++i) da2g[i] = gate_input_grad(a.gate, a2[i], dz[i], a.from_y);
      linear_transposed(da2g, g, C, p.w2, R, dh.data());
      for (int64_t i = 0; i < g * R; ++i) da1g[i] = dh[i] * act_derivative(a.act, a1[i]);
      linear_transposed(da1g, g, R, p.w1, C, dz.data());
      for (int64_t i = 0; i < g * C; ++i) dz[i] *= inv_hw;

      const acc_t* sg = s.data();
      const acc_t* dzg = dz.data();
      bool_switch(grg != nullptr, [&](auto want_res) {
        for_each_element(a, g, [=](int64_t off, int64_t nc) {
          const acc_t gv = g_at(off);
          gxg[off] = static_cast<scalar_t>(gv * sg[nc] + dzg[nc]);
          if constexpr (decltype(want_res)::value) grg[off] = static_cast<scalar_t>(gv);
        });
      });
    });
  });
  batch_outer_sum(da1.data(), z, N, R, C, gw1, gb1);
  batch_outer_sum(da2.data(), h.data(), N, C, R, gw2, gb2);
}

// ---- entry points ------------------------------------------------------------

template <typename acc_t>
Params<acc_t> params_view(const ParamTensors& p) {
  return {p.w1.data_ptr<acc_t>(), ptr_or_null<acc_t>(p.b1), p.w2.data_ptr<acc_t>(),
          ptr_or_null<acc_t>(p.b2)};
}

ForwardCall run_forward_cpu(const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const c10::optional<at::Tensor>& b2,
                            const c10::optional<at::Tensor>& residual,
                            c10::string_view activation, c10::string_view gate,
                            c10::string_view out_activation, bool inplace) {
  ForwardCall c = prepare_forward(
      check_forward_args(x, w1, b1, w2, b2, residual, activation, gate, out_activation), x, w1,
      b1, w2, b2, residual, inplace);
  if (c.y.numel() == 0) return c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(c.a, c.x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(c.res),
                             c.y.data_ptr<scalar_t>(), c.z.data_ptr<acc_t>(),
                             params_view<acc_t>(c.p));
  });
  return c;
}

std::tuple<at::Tensor, at::Tensor> se_forward_cpu(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, c10::string_view activation,
    c10::string_view gate, c10::string_view out_activation) {
  const ForwardCall c =
      run_forward_cpu(x, w1, b1, w2, b2, residual, activation, gate, out_activation, false);
  return {c.y, c.z};
}

at::Tensor se_forward_inplace_cpu(const at::Tensor& x, const at::Tensor& w1,
                                  const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                  const c10::optional<at::Tensor>& b2,
                                  const c10::optional<at::Tensor>& residual,
                                  c10::string_view activation, c10::string_view gate,
                                  c10::string_view out_activation) {
  return run_forward_cpu(x, w1, b1, w2, b2, residual, activation, gate, out_activation, true).z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& z,
                const c10::optional<at::Tensor>& y, const at::Tensor& w1,
                const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                const c10::optional<at::Tensor>& b2, c10::string_view activation,
                c10::string_view gate, bool want_grad_residual, bool x_is_output) {
  const BackwardCall c = prepare_backward(
      check_backward_args(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, x_is_output),
      grad_y, x, z, y,
      w1, b1, w2, b2, want_grad_residual);
  if (c.gx.numel() == 0) return c.outputs();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t>(c.a, c.gy.data_ptr<scalar_t>(), c.x.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(c.y), c.z.data_ptr<acc_t>(),
                              params_view<acc_t>(c.p), c.gx.data_ptr<scalar_t>(),
                              ptr_or_null<scalar_t>(c.gres), c.gw1.data_ptr<acc_t>(),
                              c.gb1.data_ptr<acc_t>(), c.gw2.data_ptr<acc_t>(),
                              c.gb2.data_ptr<acc_t>());
  });
  return c.outputs();
}

}  // namespace
}  // namespace se_fused

TORCH_LIBRARY_IMPL(se_fused, CPU, m) {
  m.impl("se_forward", &se_fused::se_forward_cpu);
  m.impl("se_forward_", &se_fused::se_forward_inplace_cpu);
  m.impl("se_backward", &se_fused::se_backward_cpu);
}
