"""The public op over torch.ops.se_fused, with its fake kernels and autograd.

The C++ library (se_fused._C) defines the schemas and the CPU/CUDA kernels and
validates arguments; this module adds what torch.compile, autograd and
opcheck need, on the Python side, as torch.library registrations.
"""
from typing import Optional

import torch

from . import _C  # noqa: F401  (loads the library: schemas and kernels)
from ._names import ACTIVATIONS, GATES, as_matrix

__all__ = ["squeeze_excite"]

_ops = torch.ops.se_fused


def squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    *,
    activation: str = "relu",
    gate: str = "sigmoid",
    residual: Optional[torch.Tensor] = None,
    out_activation: Optional[str] = None,
) -> torch.Tensor:
    """Fused Squeeze-and-Excitation: y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2).

    x is (N, C, H, W), NCHW or channels_last, in float32/float16/bfloat16/float64;
    w1 (R, C) or (R, C, 1, 1), w2 (C, R) or (C, R, 1, 1), biases (R,), (C,) or None.
    Parameters may stay float32 for half-precision x. The squeeze and the small
    layers run in float32 (float64 for float64 x). An optional residual is added
    and out_activation="relu" applied in the same pass. Returns a tensor with x's
    shape, dtype, device and memory format. Differentiable in every tensor input.
    """
    for name, value in (("activation", activation), ("gate", gate)):
        if not isinstance(value, str):
            raise TypeError(f"se_fused: {name} must be a string, got {type(value).__name__}")
    if out_activation is not None and not isinstance(out_activation, str):
        raise TypeError("se_fused: out_activation must be None or 'relu', "
                        f"got {type(out_activation).__name__}")
    if out_activation == "none":  # only None spells "no activation" in the public API
        raise ValueError("se_fused: out_activation must be None or 'relu', got 'none'")
    for name, value in (("x", x), ("w1", w1), ("w2", w2)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"se_fused: {name} must be a torch.Tensor, got {type(value).__name__}")
    args = (x, as_matrix(w1), b1, as_matrix(w2), b2, residual, activation, gate,
            out_activation or "none")
    if not torch.compiler.is_compiling() and not _autograd_needed(x, w1, b1, w2, b2, residual):
        # Inference: skip the Python autograd wrapper torch.library puts in front of
        # the op (it would only redispatch below autograd too); ~15 us a call, which
        # matters at batch 1.
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.se_forward(*args)[0]
    return _ops.se_forward(*args)[0]


def _autograd_needed(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --- fake (meta) kernels: shapes, dtypes and strides exactly as the C++ kernels give them


def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """Mirror of csrc's empty_like_layout: x's strides when dense NCHW/NHWC, else NCHW."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_devices(x, **tensors):
    # The C++ checks never run when the dispatcher picks the fake kernel (a
    # meta tensor among the inputs, or tracing), so devices are checked here too.
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"se_fused: {name} is on {t.device} but x is on {x.device}; "
                               "all tensors must be on one device")


@torch.library.register_fake("se_fused::se_forward")
def _se_forward_fake(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    torch._check(x.dim() == 4, lambda: "se_fused: x must be 4-D (N, C, H, W)")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual)
    return _empty_like_layout(x), x.new_empty((x.shape[0], x.shape[1]), dtype=_acc_dtype(x))


@torch.library.register_fake("se_fused::se_forward_")
def _se_forward_inplace_fake(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    torch._check(x.dim() == 4, lambda: "se_fused: x must be 4-D (N, C, H, W)")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual)
    return x.new_empty((x.shape[0], x.shape[1]), dtype=_acc_dtype(x))


@torch.library.register_fake("se_fused::se_backward")
def _se_backward_fake(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, want_grad_residual,
                      x_is_output=False):
    acc = _acc_dtype(x)
    grad_res = (_empty_like_layout(x) if (y is not None and want_grad_residual)
                else x.new_empty((0,)))
    R, C = w1.shape
    return (_empty_like_layout(x), grad_res,
            x.new_empty((R, C), dtype=acc), x.new_empty((R,), dtype=acc),
            x.new_empty((C, R), dtype=acc), x.new_empty((C,), dtype=acc))


# --- autograd


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation, gate, out_activation = inputs
    y, z = output
    ctx.mark_non_differentiable(z)
    ctx.activation, ctx.gate = activation, gate
    ctx.out_relu = out_activation == "relu"
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, z, y if ctx.out_relu else None, w1, b1, w2, b2)


def _backward(ctx, grad_y, _grad_z):
    x, z, y, w1, b1, w2, b2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_y is None:
        return (None,) * 9
    if torch.is_grad_enabled():
        # A graph of the backward was asked for (double backward): use
        # differentiable PyTorch ops so the second derivative exists.
        grads = _backward_composite(grad_y, x, y, w1, b1, w2, b2, ctx.activation, ctx.gate)
    else:
        grad_y = grad_y.to(x.dtype)
        grads = _ops.se_backward(grad_y, x, z, y, w1, b1, w2, b2, ctx.activation, ctx.gate,
                                 bool(need[5]))
    gx, gres, gw1, gb1, gw2, gb2 = grads
    if ctx.has_residual and need[5]:
        gres = gres if ctx.out_relu else grad_y
    else:
        gres = None
    return (
        gx if need[0] else None,
        gw1.to(w1.dtype) if need[1] else None,
        gb1.to(b1.dtype) if ctx.has_b1 and need[2] else None,
        gw2.to(w2.dtype) if need[3] else None,
        gb2.to(b2.dtype) if ctx.has_b2 and need[4] else None,
        gres,
        None, None, None,
    )


def _backward_composite(grad_y, x, y, w1, b1, w2, b2, activation, gate):
    """The backward of se_forward written with differentiable PyTorch ops.

    Same outputs as torch.ops.se_fused.se_backward; z and s are recomputed from
    x and the weights so their dependence on them is part of the graph.
    """
    dt = _acc_dtype(x)
    xf = x.to(dt)
    g = grad_y.to(dt)
    if y is not None:
        g = g * (y > 0)
    hw = x.shape[2] * x.shape[3]
    w1f, w2f = w1.to(dt), w2.to(dt)
    z = xf.mean(dim=(2, 3))
    a1 = z @ w1f.t() + (0 if b1 is None else b1.to(dt))
    h = ACTIVATIONS[activation](a1)
    a2 = h @ w2f.t() + (0 if b2 is None else b2.to(dt))
    s = GATES[gate](a2)
    ds = (g * xf).sum(dim=(2, 3))
    da2 = ds * _gate_derivative(gate, a2)
    dh = da2 @ w2f
    da1 = dh * _act_derivative(activation, a1)
    dz = da1 @ w1f
    gx = g * s[:, :, None, None] + (dz / hw)[:, :, None, None]
    return (gx.to(x.dtype), g.to(x.dtype), da1.t() @ z, da1.sum(0), da2.t() @ h, da2.sum(0))


def _gate_derivative(name, v):
    if name == "sigmoid":
        s = torch.sigmoid(v)
        return s * (1 - s)
    return ((v > -3) & (v < 3)).to(v.dtype) / 6


def _act_derivative(name, v):
    if name == "relu":
        return (v > 0).to(v.dtype)
    s = torch.sigmoid(v)
    return s * (1 + v * (1 - s))


torch.library.register_autograd("se_fused::se_forward", _backward, setup_context=_setup_context)
