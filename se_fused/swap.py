"""Swap the SE blocks of a model for FusedSEBlocks, in place, keeping its state_dict."""
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

from ._recognize import is_candidate, looks_like_se
from .modules import FusedSEBlock, source_kind

__all__ = ["replace_se_blocks", "SwapReport"]


@dataclass
class SwapReport:
    """What replace_se_blocks(model, report=True) did.

    fused: (qualified name, source class) of every module replaced by a FusedSEBlock.
    left: (qualified name, class, reason) of every SE-like module left as it was: a
      supported class configured in a way the fused op cannot compute, a module whose
      forward has the SE skeleton with an unsupported step, or a class named like an SE
      block (SE, Squeeze, Excit, Ese) with nothing fused inside whose forward is not
      an SE computation. Each of these is also warned about.
    """
    fused: List[Tuple[str, str]] = field(default_factory=list)
    left: List[Tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fused {len(self.fused)} SE module(s), left {len(self.left)} SE-like one(s)"]
        lines += [f"  fused {name or '<root>'} ({cls})" for name, cls in self.fused]
        lines += [f"  left  {name or '<root>'} ({cls}): {why}" for name, cls, why in self.left]
        return "\n".join(lines)


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


class _Swapper:
    def __init__(self, inplace: bool):
        self.inplace = inplace
        self.memo: Dict[int, Optional[nn.Module]] = {}  # id -> its FusedSEBlock or None
        self.reported = set()  # ids of the modules in report.left
        self.visited = set()
        self.report = SwapReport()

    def fuse(self, module: nn.Module, qualname: str) -> Optional[nn.Module]:
        """The FusedSEBlock for an SE module, or None: not an SE module (TypeError), or
        one the op cannot compute (ValueError, reported). A module reached twice (shared)
        is converted, or reported, once."""
        key = id(module)
        if key not in self.memo:
            try:
                self.memo[key] = FusedSEBlock.from_module(module, inplace=self.inplace)
                self.report.fused.append((qualname, _class_name(module)))
            except TypeError as err:
                self.memo[key] = None
                if looks_like_se(module):
                    self.leave(module, qualname, str(err))
            except ValueError as err:
                self.memo[key] = None
                self.leave(module, qualname, str(err))
        return self.memo[key]

    def leave(self, module: nn.Module, qualname: str, reason: str) -> None:
        self.reported.add(id(module))
        self.report.left.append((qualname, _class_name(module), reason))

    def visit(self, module: nn.Module, qualname: str) -> Optional[nn.Module]:
        """Fuse `module`, or else what it holds; returns its replacement, if it has one."""
        if isinstance(module, FusedSEBlock):
            return None
        if source_kind(module) is not None or is_candidate(module):
            fused = self.fuse(module, qualname)
            if fused is not None or id(module) in self.reported:
                return fused
        if id(module) in self.visited:
            return None
        self.visited.add(id(module))
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            fused = self.visit(child, f"{qualname}.{name}" if qualname else name)
            if fused is not None:
                setattr(module, name, fused)
        if looks_like_se(module) and id(module) not in self.reported \
                and not _holds_fused(module):
            self.leave(module, qualname, "its forward is not an SE computation this package "
                                         "recognises, and no SE block inside it was fused")
        return None


def _holds_fused(module: nn.Module) -> bool:
    return any(isinstance(m, FusedSEBlock) for m in module.modules())


def replace_se_blocks(model: nn.Module, *, inplace: bool = False, report: bool = False):
    """Replace, in place, every SE block of `model` by a FusedSEBlock.

    Recognised blocks are se_fused.SEBlock, torchvision.ops.SqueezeExcitation,
    timm.layers.SEModule (timm.layers.SqueezeExcite), timm's EfficientNet
    SqueezeExcite, timm.models.senet.SEModule, timm.layers.EffectiveSEModule and
    timm.models.hgnet.EseModule, and, by structure, any module whose forward traces to
    an SE computation (se_fused._recognize: global average of x -> Linear / 1x1 conv
    -> activation -> Linear / 1x1 conv -> gate -> x times it, or the one-layer form).
    Each replacement shares the original's Parameter objects and submodule names
    (FusedSEBlock.from_module), so the state_dict's keys and values are unchanged and
    checkpoints load before or after the swap; an optimizer built before the swap
    keeps working. An SE-like module the fused op cannot compute (another activation
    or gate, max pooling, ...) is left as it is, with a warning naming it and the
    reason. FusedSEBlocks already in the model are left alone, so calling this twice
    is harmless.
    inplace=True makes every new block write its output over its input
    (FusedSEBlock(inplace=True)); use it where nothing else reads the SE block's
    input afterwards, as in the SE networks above.
    report=True returns (model, SwapReport): what was fused and what SE-like module
    was left, and why.

    Returns `model`; if `model` itself is an SE block (there is no parent to put
    the replacement in), returns its FusedSEBlock instead.
    torchvision and timm are never imported here: their classes are looked up
    only if the user already imported them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_se_blocks expects an nn.Module, got {type(model).__name__}")
    for name, value in (("inplace", inplace), ("report", report)):
        if not isinstance(value, bool):
            raise TypeError(f"replace_se_blocks: {name} must be a bool, "
                            f"got {type(value).__name__}")
    swapper = _Swapper(inplace)
    fused = swapper.visit(model, "")
    result = model if fused is None else fused
    for qualname, cls, reason in swapper.report.left:
        warnings.warn(f"se_fused.replace_se_blocks: left {qualname or '<root>'!r} ({cls}) "
                      f"unchanged: {reason}", UserWarning, stacklevel=2)
    return (result, swapper.report) if report else result
