// Output allocation and input layout for both back ends, so the CPU and CUDA
// back ends differ only in their kernels.
#include "se_entry.h"

namespace se_fused {

namespace {

// The output allocation rule shared with the Python fake kernels: x's exact
// strides when x is dense NCHW or NHWC, otherwise a fresh NCHW tensor.
at::Tensor empty_like_layout(const at::Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::empty_like(x);
  }
  return at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}

// t (x, residual, a gradient) in the layout `like` has, copied only when needed.
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (like.is_contiguous()) return t.contiguous();
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

ParamTensors params_in(at::ScalarType acc, const at::Tensor& w1,
                       const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                       const c10::optional<at::Tensor>& b2) {
  auto conv = [acc](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->to(acc).contiguous() : at::Tensor();
  };
  return {conv(w1), conv(b1), conv(w2), conv(b2)};
}

}  // namespace

ForwardCall prepare_forward(const SEArgs& checked, const ForwardInputs& in) {
  const at::Tensor& x = in.x;
  ForwardCall c;
  c.a = checked;
  c.y = in.inplace ? x : empty_like_layout(x);
  c.a.channels_last = !c.y.is_contiguous();
  const auto acc = acc_dtype(x.scalar_type());
  c.z = at::empty({c.a.N, c.a.C}, x.options().dtype(acc));
  c.pre = at::empty({c.a.N, c.a.R + c.a.C}, x.options().dtype(acc));
  if (c.y.numel() == 0) return c;
  c.x = in_layout_of(x, c.y);
  if (in.residual.has_value()) c.res = in_layout_of(*in.residual, c.y);
  c.p = params_in(acc, in.w1, in.b1, in.w2, in.b2);
  return c;
}

BackwardCall prepare_backward(const SEArgs& checked, const BackwardInputs& in) {
  const at::Tensor& x = in.x;
  BackwardCall c;
  c.a = checked;
  const auto acc = acc_dtype(x.scalar_type());
  c.gx = empty_like_layout(x);
  c.a.channels_last = !c.gx.is_contiguous();
  c.gres = (c.a.out_relu && in.want_grad_residual) ? at::empty_like(c.gx)
                                                   : at::empty({0}, x.options());
  const auto popts = x.options().dtype(acc);
  c.gw1 = at::empty({c.a.R, c.a.C}, popts);
  c.gb1 = at::empty({c.a.R}, popts);
  // The one-layer form has no second layer: its gradients are (0,), never read.
  c.gw2 = c.a.one_layer ? at::empty({0}, popts) : at::empty({c.a.C, c.a.R}, popts);
  c.gb2 = c.a.one_layer ? at::empty({0}, popts) : at::empty({c.a.C}, popts);
  if (c.gx.numel() == 0) {
    for (at::Tensor* t : {&c.gw1, &c.gb1, &c.gw2, &c.gb2}) t->zero_();
    return c;
  }
  c.gy = in_layout_of(in.grad_y, c.gx);
  c.x = in_layout_of(x, c.gx);
  if (c.a.out_relu) c.y = in_layout_of(in.y->to(x.scalar_type()), c.gx);
  c.z = in.z.to(acc).contiguous();
  if (has_values(in.pre)) c.pre = in.pre->contiguous();
  c.p = params_in(acc, in.w1, in.b1, in.w2, in.b2);
  return c;
}

}  // namespace se_fused
