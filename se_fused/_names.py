"""The rules every path shares, each written once: names, accumulation dtype, layout.

Used by the reference, the front door's checks, the fake kernels and the autograd
formulas alike; csrc/ holds the C++ side of the same rules.
"""
from typing import Optional

import torch
import torch.nn.functional as F

# gelu is the exact (erf) form, F.gelu's default.
ACTIVATIONS = {"relu": torch.relu, "silu": F.silu, "hardswish": F.hardswish, "gelu": F.gelu}
GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}
OUT_ACTIVATIONS = (None, "relu")


def lookup(table, name, what):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{what} must be one of {sorted(table)}, got {name!r}") from None


def check_name(value, table, what: str) -> str:
    """value if it is a string naming an entry of table: TypeError, else ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string (one of {sorted(table)}), "
                        f"got {type(value).__name__}")
    lookup(table, value, what)
    return value


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (O, I, 1, 1) as the (O, I) matrix it is (a view); other shapes as given."""
    if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1:
        return w.flatten(1)
    return w


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the squeeze, the small layers and the epilogue for x of this dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_layout(x: torch.Tensor) -> Optional[torch.memory_format]:
    """x's memory format if x is dense in one the kernels read and write in place (NCHW
    first, so a tensor that is both counts as NCHW), else None."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """The output layout rule (csrc's empty_like_layout): x's strides when x is dense
    NCHW or channels_last, else NCHW."""
    if dense_layout(x) is not None:
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
