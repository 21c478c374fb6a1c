// The C++ entry of each op, shared by both back ends: the arguments are checked
// (se_checks.cpp) and the outputs and inputs prepared (se_buffers.cpp) once, here;
// a back end only runs its kernels on the prepared call. A back end is a type with
//   static void forward(const ForwardCall&);   // fills y, z, pre
//   static void backward(const BackwardCall&); // fills gx, gres, gw1, gb1, gw2, gb2
// (neither is called for an empty x), registered for its device with
//   TORCH_LIBRARY_IMPL(se_fused, DEVICE, m) { se_fused::register_ops<Backend>(m); }
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "se_common.h"

namespace se_fused {

// The ops' arguments as the schemas list them (se_ops.cpp), for the checks and the
// buffers; they live as long as the call.
struct ForwardInputs {
  const at::Tensor& x;
  const at::Tensor& w1;
  const c10::optional<at::Tensor>& b1;
  const c10::optional<at::Tensor>& w2;  // None: the one-layer form
  const c10::optional<at::Tensor>& b2;
  const c10::optional<at::Tensor>& residual;
  c10::string_view activation, gate, out_activation;
  bool inplace;  // se_forward_: y is written over x
};

struct BackwardInputs {
  const at::Tensor& grad_y;
  const at::Tensor& x;  // or the forward's y with x_is_output
  const at::Tensor& z;
  const c10::optional<at::Tensor>& y;  // the output-relu mask
  const at::Tensor& w1;
  const c10::optional<at::Tensor>& b1;
  const c10::optional<at::Tensor>& w2;
  const c10::optional<at::Tensor>& b2;
  c10::string_view activation, gate;
  bool want_grad_residual, x_is_output;
  const c10::optional<at::Tensor>& pre;  // None or empty: recompute a1, a2 from z
};

// The small layers' parameters in the accumulation dtype, contiguous; an
// undefined bias means none, an undefined w2 (and b2) the one-layer form.
struct ParamTensors {
  at::Tensor w1, b1, w2, b2;
};

// One call's tensors as both back ends' kernels take them: outputs allocated,
// inputs in the outputs' layout, a.channels_last set. In place, y is x itself (the
// kernels must allow y == x: each element is read before it is written, by the
// same thread).
struct ForwardCall {
  SEArgs a;
  at::Tensor y, z;    // outputs
  at::Tensor pre;     // output: (N, R + C), [a1 | a2] per sample
  at::Tensor x, res;  // res undefined without a residual
  ParamTensors p;
};

struct BackwardCall {
  SEArgs a;
  // outputs; gres is (0,) unless requested, gw2 and gb2 (0,) in the one-layer form
  at::Tensor gx, gres, gw1, gb1, gw2, gb2;
  at::Tensor gy, x, y, z;  // y undefined without the output relu
  at::Tensor pre;          // undefined: recompute a1, a2 from z
  ParamTensors p;
};

// Argument checks (se_checks.cpp): the single place that validates user input.
SEArgs check_forward_args(const ForwardInputs& in);
SEArgs check_backward_args(const BackwardInputs& in);

// Buffers (se_buffers.cpp). With an empty x nothing is prepared beyond the outputs,
// and the backward's parameter gradients come back zeroed.
ForwardCall prepare_forward(const SEArgs& checked, const ForwardInputs& in);
BackwardCall prepare_backward(const SEArgs& checked, const BackwardInputs& in);

// Whether se_backward's optional pre was given with values (an empty one means none).
inline bool has_values(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0;
}

// Float type the squeeze and small layers use: double for double x, else float.
at::ScalarType acc_dtype(at::ScalarType x_dtype);

// A tensor's data, or nullptr for an undefined or empty one (an absent bias, residual,
// mask, output); untyped for the CUDA launch structs.
template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
inline void* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr() : nullptr;
}

// se_forward (Inplace false: returns y, z, pre) and se_forward_ (y written over x,
// which the caller already holds: returns z, pre).
template <class Backend, bool Inplace>
auto se_forward_entry(const at::Tensor& x, const at::Tensor& w1,
                      const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                      const c10::optional<at::Tensor>& b2,
                      const c10::optional<at::Tensor>& residual, c10::string_view activation,
                      c10::string_view gate, c10::string_view out_activation) {
  const ForwardInputs in{x, w1, b1, w2, b2, residual, activation, gate, out_activation, Inplace};
  const ForwardCall c = prepare_forward(check_forward_args(in), in);
  if (c.y.numel() > 0) Backend::forward(c);
  if constexpr (Inplace) {
    return std::make_tuple(c.z, c.pre);
  } else {
    return std::make_tuple(c.y, c.z, c.pre);
  }
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_backward_entry(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& z,
                  const c10::optional<at::Tensor>& y, const at::Tensor& w1,
                  const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                  const c10::optional<at::Tensor>& b2, c10::string_view activation,
                  c10::string_view gate, bool want_grad_residual, bool x_is_output,
                  const c10::optional<at::Tensor>& pre) {
  const BackwardInputs in{grad_y, x, z, y, w1, b1, w2, b2, activation, gate, want_grad_residual,
                          x_is_output, pre};
  const BackwardCall c = prepare_backward(check_backward_args(in), in);
  if (c.gx.numel() > 0) Backend::backward(c);
  return {c.gx, c.gres, c.gw1, c.gb1, c.gw2, c.gb2};
}

// The three ops of se_ops.cpp's schemas, bound to Backend.
template <class Backend>
void register_ops(torch::Library& m) {
  m.impl("se_forward", &se_forward_entry<Backend, false>);
  m.impl("se_forward_", &se_forward_entry<Backend, true>);
  m.impl("se_backward", &se_backward_entry<Backend>);
}

}  // namespace se_fused
