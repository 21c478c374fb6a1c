// The one place where the arguments of the SE ops are validated. Every message
// names the offending argument; the exception type follows Python's
// conventions (ValueError for shapes and names, TypeError for dtypes).
#include "se_entry.h"

namespace se_fused {

namespace {

DType x_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float;
    case at::kHalf:
      return DType::Half;
    case at::kBFloat16:
      return DType::BFloat16;
    case at::kDouble:
      return DType::Double;
    default:
      TORCH_CHECK_TYPE(false, "se_fused: x must be float32, float16, bfloat16 or float64, got ",
                       t);
  }
}

// The enum value whose name (kActNames, kGateNames) is `name`; the message lists them.
template <typename Enum, size_t K>
Enum parse_name(c10::string_view name, const char* const (&names)[K], const char* what) {
  for (size_t i = 0; i < K; ++i) {
    if (name == names[i]) return Enum(i);
  }
  std::string choices;
  for (size_t i = 0; i < K; ++i) {
    choices += std::string(i == 0 ? "" : i + 1 == K ? " or " : ", ") + "'" + names[i] + "'";
  }
  TORCH_CHECK_VALUE(false, "se_fused: ", what, " must be ", choices, ", got '",
                    std::string(name), "'");
}

bool parse_out_activation(c10::string_view name) {
  if (name == "none") return false;
  if (name == "relu") return true;
  TORCH_CHECK_VALUE(false, "se_fused: out_activation must be None or 'relu', got '",
                    std::string(name), "'");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), "se_fused: ", name, " is on ", t.device(),
              " but x is on ", x.device(), "; all tensors must be on one device");
}

void check_parameter(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_same_device(t, name, x);
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "se_fused: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

void check_bias(const c10::optional<at::Tensor>& b, const char* name, int64_t len,
                const char* len_name, const at::Tensor& x) {
  if (!b.has_value()) return;
  check_parameter(*b, name, x);
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == len, "se_fused: ", name,
                    " must have shape (", len_name, ",) = (", len, ",), got ",
                    b->sizes());
}

SEArgs check_common(const at::Tensor& x, const at::Tensor& w1,
                    const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& w2,
                    const c10::optional<at::Tensor>& b2, c10::string_view activation,
                    c10::string_view gate) {
  SEArgs a;
  TORCH_CHECK_VALUE(x.dim() == 4, "se_fused: x must be 4-D (N, C, H, W), got ", x.dim(),
                    "-D with shape ", x.sizes());
  a.dtype = x_dtype(x.scalar_type());
  a.N = x.size(0);
  a.C = x.size(1);
  a.H = x.size(2);
  a.W = x.size(3);
  TORCH_CHECK_VALUE(a.H * a.W > 0, "se_fused: x has an empty spatial extent (H, W) = (",
                    a.H, ", ", a.W, "); the squeeze (mean over H, W) is undefined");

  check_parameter(w1, "w1", x);
  // The name is checked in both forms; the one-layer form has no activation to apply.
  a.act = parse_name<Act>(activation, kActNames, "activation");
  a.gate = parse_name<Gate>(gate, kGateNames, "gate");
  a.one_layer = !w2.has_value();
  if (a.one_layer) {
    TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(0) == a.C && w1.size(1) == a.C,
                      "se_fused: with w2 None (the one-layer form) w1 must have shape (C, C) "
                      "or (C, C, 1, 1) = (", a.C, ", ", a.C, "), got ", w1.sizes());
    TORCH_CHECK_VALUE(!b2.has_value(),
                      "se_fused: b2 was given but w2 is None; the one-layer form has no "
                      "second layer, so b2 must be None");
    a.R = a.C;
    a.act = Act::Identity;
    check_bias(b1, "b1", a.C, "C", x);
    return a;
  }
  check_parameter(*w2, "w2", x);
  TORCH_CHECK_VALUE(w1.dim() == 2, "se_fused: w1 must have shape (R, C) or (R, C, 1, 1), got ",
                    w1.sizes());
  TORCH_CHECK_VALUE(w2->dim() == 2, "se_fused: w2 must have shape (C, R) or (C, R, 1, 1), got ",
                    w2->sizes());
  a.R = w1.size(0);
  TORCH_CHECK_VALUE(w1.size(1) == a.C, "se_fused: w1 has ", w1.size(1),
                    " input channels but x has C = ", a.C, " (w1 shape ", w1.sizes(), ")");
  TORCH_CHECK_VALUE(w2->size(0) == a.C, "se_fused: w2 has ", w2->size(0),
                    " output channels but x has C = ", a.C, " (w2 shape ", w2->sizes(), ")");
  TORCH_CHECK_VALUE(w2->size(1) == a.R, "se_fused: w2 has ", w2->size(1),
                    " input channels but w1 has R = ", a.R, " output channels (w2 shape ",
                    w2->sizes(), ")");
  check_bias(b1, "b1", a.R, "R", x);
  check_bias(b2, "b2", a.C, "C", x);
  return a;
}

}  // namespace

at::ScalarType acc_dtype(at::ScalarType x_dtype) {
  return x_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

SEArgs check_forward_args(const ForwardInputs& in) {
  const at::Tensor& x = in.x;
  const c10::optional<at::Tensor>& residual = in.residual;
  SEArgs a = check_common(x, in.w1, in.b1, in.w2, in.b2, in.activation, in.gate);
  a.out_relu = parse_out_activation(in.out_activation);
  if (residual.has_value()) {
    check_same_device(*residual, "residual", x);
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes(), "se_fused: residual must have x's shape ",
                      x.sizes(), ", got ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(),
                     "se_fused: residual must have x's dtype ", x.scalar_type(), ", got ",
                     residual->scalar_type());
  }
  // y is written over x, in x's strides.
  TORCH_CHECK_VALUE(!in.inplace || x.is_contiguous() ||
                        x.is_contiguous(at::MemoryFormat::ChannelsLast),
                    "se_fused: inplace=True needs x dense in NCHW or channels_last, got strides ",
                    x.strides(), " for shape ", x.sizes());
  return a;
}

SEArgs check_backward_args(const BackwardInputs& in) {
  const at::Tensor &grad_y = in.grad_y, &x = in.x, &z = in.z;
  const c10::optional<at::Tensor>&y = in.y, &pre = in.pre;
  SEArgs a = check_common(x, in.w1, in.b1, in.w2, in.b2, in.activation, in.gate);
  a.out_relu = y.has_value();
  a.from_y = in.x_is_output;
  TORCH_CHECK_VALUE(!(in.x_is_output && y.has_value()),
                    "se_fused: x_is_output (the y-only backward) needs a call without epilogue, "
                    "but y (the output-relu mask) was given");
  check_same_device(grad_y, "grad_y", x);
  check_same_device(z, "z", x);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "se_fused: grad_y must have x's shape ",
                    x.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(),
                   "se_fused: grad_y must have x's dtype ", x.scalar_type(), ", got ",
                   grad_y.scalar_type());
  TORCH_CHECK_VALUE(z.dim() == 2 && z.size(0) == a.N && z.size(1) == a.C,
                    "se_fused: z must have shape (N, C) = (", a.N, ", ", a.C, "), got ",
                    z.sizes());
  if (y.has_value()) {
    check_same_device(*y, "y", x);
    TORCH_CHECK_VALUE(y->sizes() == x.sizes(), "se_fused: y must have x's shape ", x.sizes(),
                      ", got ", y->sizes());
  }
  if (has_values(pre)) {
    check_same_device(*pre, "pre", x);
    TORCH_CHECK_VALUE(pre->dim() == 2 && pre->size(0) == a.N && pre->size(1) == a.R + a.C,
                      "se_fused: pre must have shape (N, R + C) = (", a.N, ", ", a.R + a.C,
                      "), got ", pre->sizes());
    // The forward's own accumulation dtype: a rounded copy would no longer be the
    // values the forward used.
    TORCH_CHECK_TYPE(pre->scalar_type() == acc_dtype(x.scalar_type()),
                     "se_fused: pre must have dtype ", acc_dtype(x.scalar_type()),
                     " (se_forward's third output for this x), got ", pre->scalar_type());
  }
  return a;
}

}  // namespace se_fused
