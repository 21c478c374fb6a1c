"""Fake (meta) kernels: shapes, dtypes and strides exactly as the C++ kernels give them.

torch.compile, torch.export and opcheck run these instead of the kernels; _lib.py
registers them. The C++ checks never run then (a meta tensor among the inputs, or
tracing), so the checks that decide the output's device are repeated here.
"""
import torch

from ._names import acc_dtype, empty_like_layout


def _check_devices(x, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"se_fused: {name} is on {t.device} but x is on {x.device}; "
                               "all tensors must be on one device")


def _z_and_pre(x, w1, b1, w2, b2, residual):
    """Checks x and the devices; z (N, C) and pre (N, R + C) in the accumulation dtype
    (R = w1's rows, C in the one-layer form too)."""
    torch._check(x.dim() == 4, lambda: "se_fused: x must be 4-D (N, C, H, W)")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual)
    N, C = x.shape[0], x.shape[1]
    acc = acc_dtype(x.dtype)
    return x.new_empty((N, C), dtype=acc), x.new_empty((N, w1.shape[0] + C), dtype=acc)


def se_forward(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    return (empty_like_layout(x),) + _z_and_pre(x, w1, b1, w2, b2, residual)


def se_forward_(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    return _z_and_pre(x, w1, b1, w2, b2, residual)


def se_backward(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, want_grad_residual,
                x_is_output=False, pre=None):
    _check_devices(x, pre=pre)
    acc = acc_dtype(x.dtype)
    grad_res = (empty_like_layout(x) if (y is not None and want_grad_residual)
                else x.new_empty((0,)))
    R, C = w1.shape
    # The one-layer form (w2 None) returns (0,) for the second layer's gradients.
    second = ((C, R), (C,)) if w2 is not None else ((0,), (0,))
    return (empty_like_layout(x), grad_res,
            x.new_empty((R, C), dtype=acc), x.new_empty((R,), dtype=acc),
            x.new_empty(second[0], dtype=acc), x.new_empty(second[1], dtype=acc))
