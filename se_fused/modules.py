"""SE blocks as nn.Modules: the plain PyTorch block and its fused twin.

SEBlock is the block of the paper written the way everyone writes it (mean,
1x1 conv, activation, 1x1 conv, gate, multiply). FusedSEBlock has the same
parameters, under the same names, and runs them through one call of
se_fused.ops.squeeze_excite. FusedSEBlock.from_module turns an SE module of
this package, torchvision or timm into a FusedSEBlock that shares its
Parameter objects and keeps its submodule names, so state_dicts are equal.
"""
import operator
import sys
import warnings
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from ._names import ACTIVATIONS, GATES, lookup

__all__ = ["SEBlock", "FusedSEBlock"]


def _check_positive_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        value = operator.index(value)  # int, or an integer-like (numpy, 0-d int tensor)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _rd_channels(channels, reduction, rd_channels) -> Tuple[int, int]:
    channels = _check_positive_int(channels, "channels")
    if rd_channels is not None:
        return channels, _check_positive_int(rd_channels, "rd_channels")
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)):
        raise TypeError(f"reduction must be a number, got {type(reduction).__name__}")
    if not reduction > 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    return channels, max(1, int(channels // reduction))


def _check_names(activation, gate) -> None:
    for what, value, table in (("activation", activation, ACTIVATIONS), ("gate", gate, GATES)):
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a string (one of {sorted(table)}), "
                            f"got {type(value).__name__}")
        lookup(table, value, what)  # ValueError naming the choices


class _SEBase(nn.Module):
    """What SEBlock and FusedSEBlock share: fc1 = Conv2d(C, R, 1), fc2 = Conv2d(R, C, 1)."""

    def __init__(self, channels: int, reduction=16, *, rd_channels: Optional[int] = None,
                 activation: str = "relu", gate: str = "sigmoid", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        channels, rd = _rd_channels(channels, reduction, rd_channels)
        _check_names(activation, gate)
        dd = {"device": device, "dtype": dtype}
        self.channels = channels
        self.rd_channels = rd
        self.activation = activation
        self.gate = gate
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=bias, **dd)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=bias, **dd)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"activation={self.activation!r}, gate={self.gate!r}")


class SEBlock(_SEBase):
    """Squeeze-and-Excitation (Hu et al., 2018) in plain PyTorch: the eager baseline.

        y = x * gate(fc2(act(fc1(mean_hw(x)))))

    fc1 = Conv2d(channels, R, 1) and fc2 = Conv2d(R, channels, 1), with
    R = rd_channels, or max(1, channels // reduction). activation is "relu",
    "silu", "hardswish" or "gelu", gate "sigmoid" or "hardsigmoid". The state_dict keys (fc1.weight,
    fc1.bias, fc2.weight, fc2.bias) are those of torchvision's SqueezeExcitation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.fc1(s)
        s = ACTIVATIONS[self.activation](s)
        s = self.fc2(s)
        s = GATES[self.gate](s)
        return x * s


class FusedSEBlock(_SEBase):
    """The SE block through the fused op se_fused.ops.squeeze_excite.

    Same constructor, parameters and state_dict as SEBlock, plus inplace (as
    nn.ReLU(inplace=True): y is written over x, which is returned). Use
    FusedSEBlock.from_module(m) to fuse an existing SE module (SEBlock,
    torchvision.ops.SqueezeExcitation, timm.layers.SEModule or timm's
    EfficientNet SqueezeExcite) without copying its parameters.

    What the backward keeps: the op keeps y, not x, unless y is modified in place
    later (SE-ResNet's `out += shortcut`), which would leave it without the values it
    needs. A block cannot know that ahead, so its first call under autograd keeps x as
    well and watches y; when that call's backward runs, the block knows whether its
    output is modified in place, and from then on keeps only y if it is not.
    """

    def __init__(self, channels: int, reduction=16, *, rd_channels: Optional[int] = None,
                 activation: str = "relu", gate: str = "sigmoid", bias: bool = True,
                 inplace: bool = False, device=None, dtype=None):
        super().__init__(channels, reduction, rd_channels=rd_channels, activation=activation,
                         gate=gate, bias=bias, device=device, dtype=dtype)
        self._reduce_name = "fc1"
        self._expand_name = "fc2"
        self.inplace = _check_bool(inplace, "inplace")
        self._output_mutated: Optional[bool] = None  # unknown until a backward tells
        self._inplace_blocker: Optional[str] = None  # unchecked; "" when checked and free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduce = getattr(self, self._reduce_name)
        expand = getattr(self, self._expand_name)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"se_fused: x must be a torch.Tensor, got {type(x).__name__}")
        keep_x = self._output_mutated is not False
        inplace = self.inplace
        if inplace and not torch.compiler.is_compiling():
            inplace = self._may_write_over(x)
        y = ops._squeeze_excite(x, ops.as_matrix(reduce.weight), reduce.bias,
                                ops.as_matrix(expand.weight), expand.bias, None,
                                self.activation, self.gate, "none", inplace, keep_x)
        if not torch.compiler.is_compiling() and self._output_mutated is None \
                and y.grad_fn is not None:
            _watch_for_mutation(self, y)
        return y

    def _may_write_over(self, x: torch.Tensor) -> bool:
        """False (with a warning, once) when the layer that produced x saved x for its own
        backward: torch.relu_ keeps its output, so an in-place SE right after
        ReLU(inplace=True) (RegNetY, MobileNetV3) would make that backward fail. Such a
        block then runs out of place. Checked at the first call under autograd."""
        if self._inplace_blocker is None and x.grad_fn is not None and torch.is_grad_enabled():
            self._inplace_blocker = _saved_by_producer(x)
            if self._inplace_blocker:
                warnings.warn(
                    f"se_fused: FusedSEBlock(inplace=True) runs out of place: its input is "
                    f"saved by {self._inplace_blocker} for the backward, so writing over it "
                    f"would break training", UserWarning, stacklevel=3)
        return not self._inplace_blocker

    def extra_repr(self) -> str:
        return super().extra_repr() + (", inplace=True" if self.inplace else "")

    @classmethod
    def from_module(cls, module: nn.Module, *, inplace: bool = False) -> "FusedSEBlock":
        """A FusedSEBlock computing what `module` computes, sharing its parameters.

        The two 1x1 convolutions of `module` become children of the new block
        under their original names, so the Parameter objects are the same (no
        copy) and state_dict() is equal to module.state_dict(). The block is in
        the module's training mode. Raises TypeError for a module that is not
        a supported SE block, ValueError for one configured in a way the fused
        op cannot compute (another activation or gate, a norm layer, max
        pooling, a convolution that is not a plain 1x1 one, hooks that the
        fused forward would bypass).
        """
        inplace = _check_bool(inplace, "inplace")
        spec = _describe(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        reduce_name, reduce = spec["reduce"]
        expand_name, expand = spec["expand"]
        self.channels = reduce.in_channels
        self.rd_channels = reduce.out_channels
        self.activation = spec["activation"]
        self.gate = spec["gate"]
        self._reduce_name = reduce_name
        self._expand_name = expand_name
        self.inplace = inplace
        self._output_mutated = None
        self._inplace_blocker = None
        # The same module objects, so the same Parameter objects, under the same names,
        # in the source's registration order (state_dict key order follows it).
        for name in module._modules:
            if name == reduce_name:
                self.add_module(name, reduce)
            elif name == expand_name:
                self.add_module(name, expand)
        self.train(module.training)
        return self


def _check_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def _saved_by_producer(x: torch.Tensor) -> str:
    """The name of x's autograd node if that node saved x itself (e.g. ReluBackward0,
    which keeps its result), else "". Nodes expose what they saved as _saved_* attributes."""
    node = x.grad_fn
    storage = x.untyped_storage().data_ptr()
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            value = getattr(node, name)
        except RuntimeError:  # already freed, or not a saved tensor
            continue
        if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == storage:
            return type(node).__name__
    return ""


def _watch_for_mutation(block: FusedSEBlock, y: torch.Tensor) -> None:
    """Tell `block`, when y's gradient reaches the op, whether y was modified in place.

    A detached alias shares y's version counter; it is dropped once the hook ran."""
    alias = y.detach()
    version = alias._version
    block_ref = weakref.ref(block)
    handle = None

    def hook(grad_outputs):
        nonlocal alias
        blk = block_ref()
        if blk is not None and alias is not None:
            mutated = alias._version != version
            blk._output_mutated = bool(blk._output_mutated) or mutated
        alias = None
        handle.remove()

    handle = y.grad_fn.register_prehook(hook)


# --- recognising SE modules and their activation / gate


def _lookup_class(module_name: str, attr: str):
    """A class from an already imported module, or None (never imports anything)."""
    mod = sys.modules.get(module_name)
    return getattr(mod, attr, None) if mod is not None else None


def _known_layers() -> Dict[str, Tuple[str, ...]]:
    """Fully qualified names of the activation / gate modules of each supported math."""
    return {
        "relu": ("torch.nn.modules.activation:ReLU",),
        "silu": ("torch.nn.modules.activation:SiLU",
                 "timm.layers.activations:Swish",
                 "timm.layers.activations_me:SwishMe"),
        "sigmoid": ("torch.nn.modules.activation:Sigmoid",
                    "timm.layers.activations:Sigmoid"),
        "hardsigmoid": ("torch.nn.modules.activation:Hardsigmoid",
                        "timm.layers.activations:HardSigmoid",
                        "timm.layers.activations_me:HardSigmoidMe"),
    }


def _known_functions() -> Dict[str, Tuple[Callable, ...]]:
    fns = {
        "relu": [torch.relu, F.relu],
        "silu": [F.silu],
        "sigmoid": [torch.sigmoid, F.sigmoid],
        "hardsigmoid": [F.hardsigmoid],
    }
    for kind, qualname in (("silu", "timm.layers.activations:swish"),
                           ("silu", "timm.layers.activations_me:swish_me"),
                           ("sigmoid", "timm.layers.activations:sigmoid"),
                           ("hardsigmoid", "timm.layers.activations:hard_sigmoid"),
                           ("hardsigmoid", "timm.layers.activations_me:hard_sigmoid_me")):
        fn = _lookup_class(*qualname.split(":"))
        if fn is not None:
            fns[kind].append(fn)
    return {k: tuple(v) for k, v in fns.items()}


def _classify(layer, allowed, what: str, owner: str) -> str:
    """The name ("relu", "silu", "sigmoid", "hardsigmoid") of an activation/gate layer."""
    if layer is None:
        raise ValueError(f"{owner}: {what} is None; the fused op needs one of {sorted(allowed)}")
    if isinstance(layer, nn.Module):
        if _has_hooks(layer):
            raise ValueError(f"{owner}: {what} ({type(layer).__name__}) has hooks, "
                             "which the fused forward would bypass")
        for kind, qualnames in _known_layers().items():
            for qualname in qualnames:
                klass = _lookup_class(*qualname.split(":"))
                # The known class itself, or a subclass that computes the same.
                if klass is not None and isinstance(layer, klass) and \
                        type(layer).forward is klass.forward:
                    if kind not in allowed:
                        raise ValueError(f"{owner}: {type(layer).__name__} ({kind}) is not "
                                         f"supported as the {what}; the fused op supports "
                                         f"{sorted(allowed)}")
                    return kind
        raise ValueError(f"{owner}: unsupported {what} {type(layer).__name__}; the fused op "
                         f"supports {sorted(allowed)}")
    if callable(layer):
        for kind, fns in _known_functions().items():
            if any(layer is fn for fn in fns):
                if kind not in allowed:
                    raise ValueError(f"{owner}: {getattr(layer, '__name__', layer)!r} ({kind}) "
                                     f"is not supported as the {what}; the fused op supports "
                                     f"{sorted(allowed)}")
                return kind
        raise ValueError(f"{owner}: unsupported {what} function "
                         f"{getattr(layer, '__qualname__', repr(layer))}; the fused op supports "
                         f"{sorted(allowed)}")
    raise TypeError(f"{owner}: {what} must be a module or a function, got {type(layer).__name__}")


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _check_conv(conv, name: str, owner: str) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{owner}: {name} must be an nn.Conv2d, got {type(conv).__name__}")
    if type(conv).forward is not nn.Conv2d.forward or \
            type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        raise ValueError(f"{owner}: {name} ({type(conv).__name__}) overrides Conv2d's forward; "
                         "only plain 1x1 convolutions can be fused")
    problems = []
    if tuple(conv.kernel_size) != (1, 1):
        problems.append(f"kernel_size={tuple(conv.kernel_size)}")
    if tuple(conv.stride) != (1, 1):
        problems.append(f"stride={tuple(conv.stride)}")
    if conv.padding not in ("valid", "same", (0, 0), [0, 0], 0):
        problems.append(f"padding={conv.padding}")
    if conv.groups != 1:
        problems.append(f"groups={conv.groups}")
    if problems:
        raise ValueError(f"{owner}: {name} must be a 1x1 convolution with stride 1, no padding "
                         f"and groups=1, got {', '.join(problems)}")
    if _has_hooks(conv):
        raise ValueError(f"{owner}: {name} has hooks, which the fused forward would bypass")
    return conv


def _source_kind(module: nn.Module) -> Optional[str]:
    """Which supported SE class `module` is ("se_block", "torchvision", "timm_se",
    "timm_effnet"), or None. A subclass counts only if it keeps the forward."""
    candidates = (
        ("se_block", SEBlock, ("forward",)),
        ("torchvision", _lookup_class("torchvision.ops.misc", "SqueezeExcitation"),
         ("forward", "_scale")),
        ("timm_se", _lookup_class("timm.layers.squeeze_excite", "SEModule"), ("forward",)),
        ("timm_effnet", _lookup_class("timm.models._efficientnet_blocks", "SqueezeExcite"),
         ("forward",)),
    )
    for kind, klass, methods in candidates:
        if klass is not None and isinstance(module, klass):
            if all(getattr(type(module), m) is getattr(klass, m) for m in methods):
                return kind
            return "overridden:" + klass.__module__ + "." + klass.__qualname__
    return None


def _describe(module: nn.Module) -> dict:
    """What from_module needs: the two convs (name, module), activation and gate names."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(module).__name__}")
    owner = type(module).__name__
    if isinstance(module, FusedSEBlock):
        kind = "fused"
    else:
        kind = _source_kind(module)
    if kind is None:
        raise TypeError(
            f"FusedSEBlock.from_module: unsupported module type {type(module).__module__}."
            f"{type(module).__qualname__}; supported: se_fused.SEBlock, "
            "torchvision.ops.SqueezeExcitation, timm.layers.SEModule, "
            "timm.models._efficientnet_blocks.SqueezeExcite")
    if kind.startswith("overridden:"):
        raise ValueError(f"{owner}: subclass of {kind.split(':', 1)[1]} with its own forward; "
                         "cannot tell what it computes")
    if _has_hooks(module):
        raise ValueError(f"{owner} has forward/backward hooks, which a replacement would drop")

    acts = tuple(ACTIVATIONS)
    gates = tuple(GATES)
    if kind in ("fused", "se_block"):
        if kind == "fused":
            r, e = module._reduce_name, module._expand_name
        else:
            r, e = "fc1", "fc2"
        _check_names(module.activation, module.gate)
        activation, gate = module.activation, module.gate
    elif kind == "torchvision":
        r, e = "fc1", "fc2"
        pool = module.avgpool
        if not (type(pool) is nn.AdaptiveAvgPool2d and
                pool.output_size in (1, (1, 1), [1, 1])) or _has_hooks(pool):
            raise ValueError(f"{owner}: avgpool must be nn.AdaptiveAvgPool2d(1), got {pool!r}")
        activation = _classify(module.activation, acts, "activation", owner)
        gate = _classify(module.scale_activation, gates, "gate (scale_activation)", owner)
    elif kind == "timm_se":
        r, e = "fc1", "fc2"
        if getattr(module, "add_maxpool", False):
            raise ValueError(f"{owner}: add_maxpool=True (mean + max squeeze) is not supported "
                             "by the fused op")
        bn = getattr(module, "bn", None)
        if bn is not None and not (type(bn) is nn.Identity and not _has_hooks(bn)):
            raise ValueError(f"{owner}: a norm layer between fc1 and fc2 "
                             f"(bn={type(bn).__name__}) is not supported by the fused op")
        activation = _classify(module.act, acts, "activation (act)", owner)
        gate = _classify(module.gate, gates, "gate", owner)
    else:  # timm_effnet
        r, e = "conv_reduce", "conv_expand"
        activation = _classify(module.act1, acts, "activation (act1)", owner)
        gate = _classify(module.gate, gates, "gate", owner)

    reduce = _check_conv(getattr(module, r), r, owner)
    expand = _check_conv(getattr(module, e), e, owner)
    if expand.in_channels != reduce.out_channels or expand.out_channels != reduce.in_channels:
        raise ValueError(f"{owner}: {r} maps {reduce.in_channels}->{reduce.out_channels} channels "
                         f"but {e} maps {expand.in_channels}->{expand.out_channels}")
    extra = [n for n, p in module.named_parameters(recurse=True)
             if not (n.startswith(r + ".") or n.startswith(e + "."))]
    extra += [n for n, b in module.named_buffers(recurse=True)
              if not (n.startswith(r + ".") or n.startswith(e + "."))]
    if extra:
        raise ValueError(f"{owner}: has state outside {r}/{e} ({', '.join(extra)}) that the "
                         "fused block cannot hold")
    return {"reduce": (r, reduce), "expand": (e, expand), "activation": activation, "gate": gate}
