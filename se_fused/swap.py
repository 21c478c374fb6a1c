"""Swap the SE blocks of a model for FusedSEBlocks, in place, keeping its state_dict."""
import warnings
from typing import Dict, List, Optional

import torch.nn as nn

from .modules import FusedSEBlock, SEBlock, _source_kind

__all__ = ["replace_se_blocks"]


def _is_se_source(module: nn.Module) -> bool:
    """An SE class that replace_se_blocks knows (SEBlock, torchvision SqueezeExcitation,
    timm SEModule, timm EfficientNet SqueezeExcite), subclasses included."""
    return isinstance(module, SEBlock) or _source_kind(module) is not None


def _fuse(module: nn.Module, qualname: str, memo: Dict[int, Optional[nn.Module]],
          problems: List[str], inplace: bool):
    """The FusedSEBlock for an SE module, or None (noting why in `problems`) if it can't be
    fused. A module reached twice (shared) is converted, or reported, once."""
    key = id(module)
    if key not in memo:
        try:
            memo[key] = FusedSEBlock.from_module(module, inplace=inplace)
        except (ValueError, TypeError) as err:
            memo[key] = None
            problems.append(
                f"se_fused.replace_se_blocks: left {qualname or '<root>'!r} "
                f"({type(module).__module__}.{type(module).__qualname__}) unchanged: {err}")
    return memo[key]


def replace_se_blocks(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace, in place, every SE block of `model` by a FusedSEBlock.

    Recognised blocks are se_fused.SEBlock, torchvision.ops.SqueezeExcitation,
    timm.layers.SEModule (timm.layers.SqueezeExcite) and timm's EfficientNet
    SqueezeExcite. Each replacement shares the original's Parameter objects and
    submodule names (FusedSEBlock.from_module), so the state_dict's keys and
    values are unchanged and checkpoints load before or after the swap; an
    optimizer built before the swap keeps working. A block the fused op cannot
    compute (another activation or gate, a norm layer, max pooling, ...) is left
    as it is, with a warning naming it and the reason. FusedSEBlocks already in
    the model are left alone, so calling this twice is harmless.
    inplace=True makes every new block write its output over its input
    (FusedSEBlock(inplace=True)); use it where nothing else reads the SE block's
    input afterwards, as in the SE networks above.

    Returns `model`; if `model` itself is an SE block (there is no parent to put
    the replacement in), returns its FusedSEBlock instead.
    torchvision and timm are never imported here: their classes are looked up
    only if the user already imported them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_se_blocks expects an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"replace_se_blocks: inplace must be a bool, got {type(inplace).__name__}")
    memo: Dict[int, Optional[nn.Module]] = {}
    problems: List[str] = []
    result = model
    if isinstance(model, FusedSEBlock):
        pass
    elif _is_se_source(model):
        fused = _fuse(model, "", memo, problems, inplace)
        result = model if fused is None else fused
    else:
        _replace_children(model, "", memo, set(), problems, inplace)
    for message in problems:
        warnings.warn(message, UserWarning, stacklevel=2)
    return result


def _replace_children(parent: nn.Module, prefix: str, memo, visited, problems, inplace) -> None:
    if id(parent) in visited:
        return
    visited.add(id(parent))
    for name, child in list(parent._modules.items()):
        if child is None or isinstance(child, FusedSEBlock):
            continue
        qualname = f"{prefix}.{name}" if prefix else name
        if _is_se_source(child):
            fused = _fuse(child, qualname, memo, problems, inplace)
            if fused is not None:
                setattr(parent, name, fused)
        else:
            _replace_children(child, qualname, memo, visited, problems, inplace)
