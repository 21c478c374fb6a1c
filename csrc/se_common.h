// Shared by the CPU and CUDA kernels: the parsed arguments of one SE call and
// the scalar math of the two small layers (forward and derivative), so both
// back ends compute exactly the same functions. Plain C++ without ATen (the CUDA
// kernel files and their CPU emulation include it; ATen/ATen.h adds ~15 s of nvcc
// time to each file); the ATen side of a call is se_entry.h.
#pragma once

#include <cmath>
#include <cstdint>

#include "se_dispatch.h"

#if defined(__CUDACC__)
#define SE_HD __host__ __device__ __forceinline__
#else
#define SE_HD inline
#endif

namespace se_fused {

// Everything a kernel needs to know about one call, validated once.
struct SEArgs {
  int64_t N = 0, C = 0, H = 0, W = 0, R = 0;
  DType dtype = DType::Float;  // x's
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

}  // namespace se_fused
