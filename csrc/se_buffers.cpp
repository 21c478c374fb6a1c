// Output allocation and input layout for both back ends, so the CPU and CUDA
// entry points differ only in their kernels.
#include "se_common.h"

namespace se_fused {

namespace {

ParamTensors params_in(at::ScalarType acc, const at::Tensor& w1,
                       const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                       const c10::optional<at::Tensor>& b2) {
  auto conv = [acc](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->to(acc).contiguous() : at::Tensor();
  };
  return {conv(w1), conv(b1), conv(w2), conv(b2)};
}

}  // namespace

ForwardCall prepare_forward(SEArgs checked, const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                            const c10::optional<at::Tensor>& b2,
                            const c10::optional<at::Tensor>& residual, bool inplace) {
  ForwardCall c;
  c.a = checked;
  if (inplace) check_inplace_x(x);
  c.y = inplace ? x : empty_like_layout(x);
  c.a.channels_last = !c.y.is_contiguous();
  const auto acc = acc_dtype(x.scalar_type());
  c.z = at::empty({c.a.N, c.a.C}, x.options().dtype(acc));
  c.pre = at::empty({c.a.N, c.a.R + c.a.C}, x.options().dtype(acc));
  if (c.y.numel() == 0) return c;
  c.x = in_layout_of(x, c.y);
  if (residual.has_value()) c.res = in_layout_of(*residual, c.y);
  c.p = params_in(acc, w1, b1, w2, b2);
  return c;
}

BackwardCall prepare_backward(SEArgs checked, const at::Tensor& grad_y, const at::Tensor& x,
                              const at::Tensor& z, const c10::optional<at::Tensor>& y,
                              const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                              const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2,
                              bool want_grad_residual, const c10::optional<at::Tensor>& pre) {
  BackwardCall c;
  c.a = checked;
  const auto acc = acc_dtype(x.scalar_type());
  c.gx = empty_like_layout(x);
  c.a.channels_last = !c.gx.is_contiguous();
  c.gres = (c.a.out_relu && want_grad_residual) ? at::empty_like(c.gx)
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
  c.gy = in_layout_of(grad_y, c.gx);
  c.x = in_layout_of(x, c.gx);
  if (c.a.out_relu) c.y = in_layout_of(y->to(x.scalar_type()), c.gx);
  c.z = z.to(acc).contiguous();
  if (has_values(pre)) c.pre = pre->contiguous();
  c.p = params_in(acc, w1, b1, w2, b2);
  return c;
}

}  // namespace se_fused
