// Shared by the CPU and CUDA kernels: the parsed arguments of one SE call and
// the scalar math of the two small layers (forward and derivative), so both
// back ends compute exactly the same functions.
#pragma once

// SE_FUSED_MATH_ONLY: only the scalar math, without ATen (the CUDA kernel files and
// their CPU emulation; ATen/ATen.h adds ~15 s of nvcc time to each file).
#if !defined(SE_FUSED_MATH_ONLY)
#include <ATen/ATen.h>
#endif
#include <cmath>
#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define SE_HD __host__ __device__ __forceinline__
#else
#define SE_HD inline
#endif

namespace se_fused {

// The activation between the two small layers. Identity is the one-layer form
// (effective SE: s = gate(W1 z + b1)), set by the checks when w2 is None.
enum class Act : int { ReLU = 0, SiLU = 1, HardSwish = 2, GELU = 3, Identity = 4 };
enum class Gate : int { Sigmoid = 0, HardSigmoid = 1 };

// Everything a kernel needs to know about one call, validated once.
struct SEArgs {
  int64_t N = 0, C = 0, H = 0, W = 0, R = 0;
  Act act = Act::ReLU;
  Gate gate = Gate::Sigmoid;
  bool out_relu = false;
  bool channels_last = false;  // layout the kernel reads and writes
  bool from_y = false;         // backward: the saved tensor is y = x * s, not x
  // One layer (w2, b2 None, w1 (C, C)): a2 = a1 = W1 z + b1, s = gate(a2); R == C and
  // act == Act::Identity. pre is still [a1 | a2] (both halves equal).
  bool one_layer = false;
  int64_t hw() const { return H * W; }
};

template <typename T>
SE_HD T se_exp(T v) {
#if defined(__CUDA_ARCH__)
  return exp(v);
#else
  return std::exp(v);
#endif
}

template <typename T>
SE_HD T sigmoid(T v) {
  return T(1) / (T(1) + se_exp(-v));
}

// ReLU and its gradient mask as torch.relu and its backward treat them: NaN
// passes through, and the gradient is blocked only where the value is <= 0.
template <typename T>
SE_HD T apply_relu(T v) {
  return v < T(0) ? T(0) : v;
}
template <typename T>
SE_HD bool relu_passes(T v) {
  return !(v <= T(0));
}

template <typename T>
SE_HD T se_erf(T v) {
#if defined(__CUDA_ARCH__)
  return erf(v);
#else
  return std::erf(v);
#endif
}

// The activations as torch computes them: relu, silu (x * sigmoid(x)), hardswish
// (x * relu6(x + 3) / 6) and the exact, erf form of gelu (x * Phi(x)).
template <typename T>
SE_HD T act_forward(Act a, T v) {
  switch (a) {
    case Act::ReLU:
      return apply_relu(v);
    case Act::SiLU:
      return v * sigmoid(v);
    case Act::HardSwish: {
      T t = v + T(3);
      t = t < T(0) ? T(0) : (t > T(6) ? T(6) : t);
      return v * t / T(6);
    }
    case Act::GELU:
      return T(0.5) * v * (T(1) + se_erf(v * T(0.70710678118654752440)));
    default:
      return v;
  }
}

// d act / d v, with PyTorch's conventions: relu'(0) = 0; hardswish' is 0 below -3,
// x / 3 + 1/2 on [-3, 3] and 1 above (torch's hardswish_backward).
template <typename T>
SE_HD T act_derivative(Act a, T v) {
  switch (a) {
    case Act::ReLU:
      return relu_passes(v) ? T(1) : T(0);
    case Act::SiLU: {
      T s = sigmoid(v);
      return s * (T(1) + v * (T(1) - s));
    }
    case Act::HardSwish:
      return v < T(-3) ? T(0) : (v <= T(3) ? v / T(3) + T(0.5) : T(1));
    case Act::GELU: {
      const T cdf = T(0.5) * (T(1) + se_erf(v * T(0.70710678118654752440)));
      const T pdf = se_exp(T(-0.5) * v * v) * T(0.39894228040143267794);
      return cdf + v * pdf;
    }
    default:
      return T(1);
  }
}

template <typename T>
SE_HD T gate_forward(Gate g, T v) {
  if (g == Gate::Sigmoid) return sigmoid(v);
  // PyTorch's hardsigmoid: relu6(v + 3) / 6
  T t = v + T(3);
  t = t < T(0) ? T(0) : (t > T(6) ? T(6) : t);
  return t / T(6);
}

// d gate / d v, with PyTorch's conventions (hardsigmoid' = 1/6 on (-3, 3) only).
template <typename T>
SE_HD T gate_derivative(Gate g, T v) {
  if (g == Gate::Sigmoid) {
    T s = sigmoid(v);
    return s * (T(1) - s);
  }
  return (v > T(-3) && v < T(3)) ? T(1) / T(6) : T(0);
}

// d loss / d a2 from one channel's reduction d = sum_hw g * v (g: the gradient
// reaching x * s).
// v = x: d is ds, and da2 = ds * gate'(a2).
// v = y = x * s (the y-only backward, no epilogue): ds = d / s, and gate'(a2) / s
// needs no division for the sigmoid, da2 = d * (1 - s); for the hardsigmoid,
// s = (a2 + 3) / 6 > 0 on its slope, so da2 = d / (a2 + 3) there and 0 elsewhere.
template <typename T>
SE_HD T gate_input_grad(Gate g, T a2, T d, bool from_y) {
  if (!from_y) return d * gate_derivative(g, a2);
  if (g == Gate::Sigmoid) return d * (T(1) - sigmoid(a2));
  return (a2 > T(-3) && a2 < T(3)) ? d / (a2 + T(3)) : T(0);
}

#if !defined(SE_FUSED_MATH_ONLY)

// Argument checks (se_checks.cpp): the single place that validates user input.
SEArgs check_forward_args(const at::Tensor& x, const at::Tensor& w1,
                          const c10::optional<at::Tensor>& b1,
                          const c10::optional<at::Tensor>& w2,
                          const c10::optional<at::Tensor>& b2,
                          const c10::optional<at::Tensor>& residual,
                          c10::string_view activation, c10::string_view gate,
                          c10::string_view out_activation);

SEArgs check_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                           const at::Tensor& z, const c10::optional<at::Tensor>& y,
                           const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                           const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                           c10::string_view activation, c10::string_view gate,
                           bool x_is_output, const c10::optional<at::Tensor>& pre);

// Whether se_backward's optional pre was given with values (an empty one means none).
inline bool has_values(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0;
}

// se_forward_ writes y over x: x must be dense NCHW or channels_last.
void check_inplace_x(const at::Tensor& x);

// The output allocation rule shared with the Python fake kernels: x's exact
// strides when x is dense NCHW or NHWC, otherwise a fresh NCHW tensor.
at::Tensor empty_like_layout(const at::Tensor& x);

// x (or residual / grad) in the layout `like` has, copied only when needed.
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like);

// Float type the squeeze and small layers use: double for double x, else float.
at::ScalarType acc_dtype(at::ScalarType x_dtype);

// The small layers' parameters in the accumulation dtype, contiguous; an
// undefined bias means none, an undefined w2 (and b2) the one-layer form.
struct ParamTensors {
  at::Tensor w1, b1, w2, b2;
};

// One call's tensors as both back ends' kernels take them (se_buffers.cpp):
// outputs allocated, inputs in the outputs' layout, a.channels_last set.
// In place, y is x itself (the kernels must allow y == x: each element is read
// before it is written, by the same thread).
struct ForwardCall {
  SEArgs a;
  at::Tensor y, z;    // outputs
  at::Tensor pre;     // output: (N, R + C), [a1 | a2] per sample
  at::Tensor x, res;  // res undefined without a residual
  ParamTensors p;
};
ForwardCall prepare_forward(SEArgs checked, const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                            const c10::optional<at::Tensor>& b2,
                            const c10::optional<at::Tensor>& residual, bool inplace = false);

// se_forward and se_forward_ of one back end, from its run(x, ..., inplace).
using RunForward = ForwardCall (*)(const at::Tensor&, const at::Tensor&,
                                   const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&,
                                   const c10::optional<at::Tensor>&, c10::string_view,
                                   c10::string_view, c10::string_view, bool);
template <RunForward Run>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_op(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, c10::string_view activation,
    c10::string_view gate, c10::string_view out_activation) {
  const ForwardCall c = Run(x, w1, b1, w2, b2, residual, activation, gate, out_activation, false);
  return {c.y, c.z, c.pre};
}
template <RunForward Run>
std::tuple<at::Tensor, at::Tensor> forward_inplace_op(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& residual, c10::string_view activation,
    c10::string_view gate, c10::string_view out_activation) {
  const ForwardCall c = Run(x, w1, b1, w2, b2, residual, activation, gate, out_activation, true);
  return {c.z, c.pre};
}

struct BackwardCall {
  SEArgs a;
  // outputs; gres is (0,) unless requested, gw2 and gb2 (0,) in the one-layer form
  at::Tensor gx, gres, gw1, gb1, gw2, gb2;
  at::Tensor gy, x, y, z;                    // y undefined without the output relu
  at::Tensor pre;                            // undefined: recompute a1, a2 from z
  ParamTensors p;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs()
      const {
    return {gx, gres, gw1, gb1, gw2, gb2};
  }
};
// With an empty x the parameter gradients come back zeroed and nothing else is prepared.
BackwardCall prepare_backward(SEArgs checked, const at::Tensor& grad_y, const at::Tensor& x,
                              const at::Tensor& z, const c10::optional<at::Tensor>& y,
                              const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                              const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                              bool want_grad_residual, const c10::optional<at::Tensor>& pre);

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

#endif  // !SE_FUSED_MATH_ONLY

}  // namespace se_fused
