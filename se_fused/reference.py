"""The oracle: the SE block in plain PyTorch, written for clarity, not speed.

Every fused path is tested against this function. It follows the contract in
the API spec: the squeeze vector and both small layers are computed in float32
(float64 for float64 x), whatever autocast says; the scale and the epilogue are
computed in that precision too and rounded once to x's dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._names import (ACTIVATIONS, GATES, OUT_ACTIVATIONS, acc_dtype, as_matrix, dense_layout,
                     lookup)

__all__ = ["squeeze_excite"]


def excitation(z, w1, b1, w2, b2, activation="relu", gate="sigmoid"):
    """s = gate(W2 act(W1 z + b1) + b2) for z of shape (N, C), in z's dtype.

    w2 = b2 = None is the one-layer form: s = gate(W1 z + b1) with w1 (C, C); the
    activation name is checked but not applied."""
    dt = z.dtype
    act, gate_fn = lookup(ACTIVATIONS, activation, "activation"), lookup(GATES, gate, "gate")
    a1 = F.linear(z, as_matrix(w1).to(dt), None if b1 is None else b1.to(dt))
    if w2 is None:
        C = z.shape[-1]
        if b2 is not None:
            raise ValueError("b2 must be None when w2 is None (the one-layer form)")
        if tuple(as_matrix(w1).shape) != (C, C):
            raise ValueError(f"with w2 None (the one-layer form) w1 must have shape (C, C) = "
                             f"({C}, {C}), got {tuple(w1.shape)}")
        return gate_fn(a1)
    return gate_fn(F.linear(act(a1), as_matrix(w2).to(dt), None if b2 is None else b2.to(dt)))


def squeeze_excite(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: Optional[torch.Tensor],
    b2: Optional[torch.Tensor],
    *,
    activation: str = "relu",
    gate: str = "sigmoid",
    residual: Optional[torch.Tensor] = None,
    out_activation: Optional[str] = None,
) -> torch.Tensor:
    """Reference SE block; see se_fused.squeeze_excite for the contract."""
    if out_activation not in OUT_ACTIVATIONS:
        raise ValueError(f"out_activation must be None or 'relu', got {out_activation!r}")
    dt = acc_dtype(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = x.to(dt).mean(dim=(2, 3))
        s = excitation(z, w1, b1, w2, b2, activation, gate)
        y = x.to(dt) * s[:, :, None, None]
        if residual is not None:
            y = y + residual.to(dt)
        if out_activation == "relu":
            y = torch.relu(y)
    return y.to(x.dtype).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """x's layout when dense NCHW or channels_last, else NCHW (the fused op's output rule)."""
    try:
        return dense_layout(x) or torch.contiguous_format
    except RuntimeError:  # under vmap a layout can be neither queried nor observed
        return torch.contiguous_format
