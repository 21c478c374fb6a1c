"""Names shared by the reference, the fused op and the modules."""
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


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (O, I, 1, 1) as the (O, I) matrix it is (a view); other shapes as given."""
    if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1:
        return w.flatten(1)
    return w
