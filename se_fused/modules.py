"""SE blocks as nn.Modules: the plain PyTorch block and its fused twin.

SEBlock is the block of the paper written the way everyone writes it (mean,
1x1 conv, activation, 1x1 conv, gate, multiply). FusedSEBlock has the same
parameters, under the same names, and runs them through one call of
se_fused.ops.squeeze_excite. FusedSEBlock.from_module turns an SE module of
this package, torchvision or timm, or any module whose forward traces to an SE
computation (_recognize.py), into a FusedSEBlock that shares its Parameter objects
and keeps its submodule names, so state_dicts are equal.
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
from ._names import ACTIVATIONS, GATES, as_matrix, check_name, lookup

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
    check_name(activation, ACTIVATIONS, "activation")
    check_name(gate, GATES, "gate")


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
    "silu", "hardswish" or "gelu" (exact), gate "sigmoid" or "hardsigmoid". The
    state_dict keys (fc1.weight, fc1.bias, fc2.weight, fc2.bias) are those of
    torchvision's SqueezeExcitation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.fc1(s)
        s = self.fc2(ACTIVATIONS[self.activation](s))
        return x * GATES[self.gate](s)


class FusedSEBlock(_SEBase):
    """The SE block through the fused op se_fused.ops.squeeze_excite.

    Same constructor, parameters and state_dict as SEBlock, plus inplace (as
    nn.ReLU(inplace=True): y is written over x, which is returned). Use
    FusedSEBlock.from_module(m) to fuse an existing SE module without copying its
    parameters: the classes listed in from_module, or any module recognised by
    structure (se_fused._recognize).

    A block made by from_module may hold nn.Linear layers instead of 1x1 convolutions,
    a single C->C layer (effective SE: s = gate(W1 z + b1), activation None), or a
    BatchNorm2d between the layers (norm): in eval mode it is folded into the first
    layer at each call, from its current running statistics and affine parameters;
    in train mode (or without running statistics) the block computes what the source
    module computes, unfused, and warns once.

    What the backward keeps: the op keeps y, not x, unless y is modified in place
    later (SE-ResNet's `out += shortcut`), which would leave it without the values it
    needs. A block cannot know that ahead, so its first call under autograd keeps x as
    well and watches y; when that call's backward runs, the block knows whether its
    output is modified in place, and from then on keeps only y if it is not. This is
    eager behaviour, and what is kept never changes the recorded op:
    - torch.jit.trace records the same se_forward node before and after that first
      backward (what is kept is chosen outside the op's arguments), so trace's check
      passes. The traced module runs that node with the op's own autograd, which keeps
      y: if its output is modified in place, backward raises autograd's "modified by an
      inplace operation" error, never a wrong gradient.
    - Compiled (torch.compile), a block learns nothing: it keeps x until an eager
      backward has shown that its output is left alone.
    """

    def __init__(self, channels: int, reduction=16, *, rd_channels: Optional[int] = None,
                 activation: str = "relu", gate: str = "sigmoid", bias: bool = True,
                 inplace: bool = False, device=None, dtype=None):
        super().__init__(channels, reduction, rd_channels=rd_channels, activation=activation,
                         gate=gate, bias=bias, device=device, dtype=dtype)
        self._reduce_name = "fc1"
        self._expand_name: Optional[str] = "fc2"
        self._norm_name: Optional[str] = None
        self._init_state(_check_bool(inplace, "inplace"))

    def _init_state(self, inplace: bool) -> None:
        self.inplace = inplace
        self._output_mutated: Optional[bool] = None  # unknown until a backward tells
        self._inplace_blocker: Optional[str] = None  # unchecked; "" when checked and free
        self._warned_unfused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"se_fused: x must be a torch.Tensor, got {type(x).__name__}")
        # What the block learns (its output's fate, its input's producer, a warning given)
        # comes from autograd nodes and hooks, which torch.compile cannot trace: eager only.
        eager = not torch.compiler.is_compiling()
        reduce = self.get_submodule(self._reduce_name)
        w1, b1 = as_matrix(reduce.weight), reduce.bias
        if self._norm_name is not None:
            norm = self.get_submodule(self._norm_name)
            if norm.training or norm.running_mean is None:
                return self._forward_unfused(x, reduce, norm, eager)
            w1, b1 = _fold_norm(w1, b1, norm)
        if self._expand_name is None:
            w2 = b2 = None
        else:
            expand = self.get_submodule(self._expand_name)
            w2, b2 = as_matrix(expand.weight), expand.bias
        inplace = self.inplace and (not eager or self._may_write_over(x))
        y = ops.route(x, w1, b1, w2, b2, None, self.activation or "relu", self.gate, "none",
                      inplace, self._output_mutated is not False)
        # Not while tracing: the traced call's output feeds the recorded graph, not a
        # training step, and watching it (an alias of y) would name values differently
        # from trace's check, which reruns the model under no_grad.
        if eager and self._output_mutated is None and y.grad_fn is not None \
                and not torch.jit.is_tracing():
            _watch_for_mutation(self, y)
        return y

    def _forward_unfused(self, x, reduce, norm, eager):
        """The source's computation, layer by layer: a norm layer on batch statistics
        depends on the whole batch of fc1 outputs, which the fused op does not see."""
        if not self._warned_unfused and eager:
            self._warned_unfused = True
            warnings.warn(
                f"se_fused: FusedSEBlock with a norm layer ({self._norm_name}: "
                f"{type(norm).__name__}) runs unfused while that layer normalises with batch "
                "statistics (train mode, or no running statistics); it is fused in eval mode",
                UserWarning, stacklevel=3)
        s = reduce(x.mean((2, 3), keepdim=True))
        s = ACTIVATIONS[self.activation](norm(s))
        if self._expand_name is not None:
            s = self.get_submodule(self._expand_name)(s)
        return x * GATES[self.gate](s)

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
        extra = ""
        if self._reduce_name != "fc1" or self._expand_name != "fc2":
            extra += f", layers=({self._reduce_name!r}, {self._expand_name!r})"
        if self._norm_name is not None:
            extra += f", norm={self._norm_name!r}"
        return super().extra_repr() + extra + (", inplace=True" if self.inplace else "")

    @classmethod
    def from_module(cls, module: nn.Module, *, inplace: bool = False) -> "FusedSEBlock":
        """A FusedSEBlock computing what `module` computes, sharing its parameters.

        Sources: se_fused.SEBlock / FusedSEBlock, torchvision.ops.SqueezeExcitation,
        timm.layers.SEModule (a BatchNorm2d between the layers included),
        timm's EfficientNet SqueezeExcite, timm.models.senet.SEModule,
        timm.layers.EffectiveSEModule, timm.models.hgnet.EseModule, and any other
        module whose forward traces to an SE computation (se_fused._recognize).
        The layers of `module` (1x1 convolutions or nn.Linear) become children of
        the new block under their original names (the top-level child holding them,
        for nested ones), so the Parameter objects are the same (no copy) and
        state_dict() is equal to module.state_dict(). The block is in the module's
        training mode. Raises TypeError for a module that is not an SE block,
        ValueError for one configured in a way the fused op cannot compute (another
        activation or gate, max pooling, a convolution that is not a plain 1x1 one,
        hooks that the fused forward would bypass).
        """
        inplace = _check_bool(inplace, "inplace")
        spec = _describe(module)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        w1 = as_matrix(spec["reduce"][1].weight)
        self.channels = w1.shape[1]
        self.rd_channels = w1.shape[0]
        self.activation = spec["activation"]
        self.gate = spec["gate"]
        self._reduce_name = spec["reduce"][0]
        self._expand_name = spec["expand"][0] if spec["expand"] else None
        self._norm_name = spec["norm"][0] if spec["norm"] else None
        self._init_state(inplace)
        # The same module objects, so the same Parameter objects, under the same names,
        # in the source's registration order (state_dict key order follows it).
        used = [p for p in (self._reduce_name, self._expand_name, self._norm_name) if p]
        for name, child in module._modules.items():
            if any(p == name or p.startswith(name + ".") for p in used):
                self.add_module(name, child)
        self.train(module.training)
        return self


def _fold_norm(w1, b1, norm):
    """fc1 followed by an eval-mode BatchNorm as one layer: W1' = W1 * g, b1' = (b1 - mean) * g
    + beta with g = gamma / sqrt(var + eps), recomputed at every call from the norm's current
    state, so training the norm later is unaffected."""
    g = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        g = g * norm.weight
    shift = -norm.running_mean if b1 is None else b1 - norm.running_mean
    b = shift * g
    if norm.bias is not None:
        b = b + norm.bias
    return w1 * g[:, None], b


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
        "hardswish": ("torch.nn.modules.activation:Hardswish",
                      "timm.layers.activations:HardSwish",
                      "timm.layers.activations_me:HardSwishMe"),
        "gelu": ("torch.nn.modules.activation:GELU",  # approximate="none" only, see _classify
                 "timm.layers.activations:GELU"),
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
        "hardswish": [F.hardswish],
        "gelu": [F.gelu],  # approximate="none" only: callers check the call's arguments
        "sigmoid": [torch.sigmoid, F.sigmoid],
        "hardsigmoid": [F.hardsigmoid],
    }
    for kind, qualname in (("silu", "timm.layers.activations:swish"),
                           ("silu", "timm.layers.activations_me:swish_me"),
                           ("hardswish", "timm.layers.activations:hard_swish"),
                           ("hardswish", "timm.layers.activations_me:hard_swish_me"),
                           ("gelu", "timm.layers.activations:gelu"),
                           ("sigmoid", "timm.layers.activations:sigmoid"),
                           ("hardsigmoid", "timm.layers.activations:hard_sigmoid"),
                           ("hardsigmoid", "timm.layers.activations_me:hard_sigmoid_me")):
        fn = _lookup_class(*qualname.split(":"))
        if fn is not None:
            fns[kind].append(fn)
    return {k: tuple(v) for k, v in fns.items()}


def _layer_kind(layer: nn.Module) -> Optional[str]:
    """The math of an activation/gate module ("relu", ..., "hardsigmoid"), or None.
    A subclass counts if it keeps the known class's forward; nn.GELU only in its exact
    (erf) form."""
    for kind, qualnames in _known_layers().items():
        for qualname in qualnames:
            klass = _lookup_class(*qualname.split(":"))
            if klass is not None and isinstance(layer, klass) and \
                    type(layer).forward is klass.forward:
                if getattr(layer, "approximate", "none") != "none":
                    return None
                return kind
    return None


def _function_kind(fn) -> Optional[str]:
    for kind, fns in _known_functions().items():
        if any(fn is f for f in fns):
            return kind
    return None


def _check_supported(kind: Optional[str], allowed, what: str, owner: str, shown: str) -> str:
    if kind is None:
        raise ValueError(f"{owner}: unsupported {what} {shown}; the fused op supports "
                         f"{sorted(allowed)}")
    if kind not in allowed:
        raise ValueError(f"{owner}: {shown} ({kind}) is not supported as the {what}; the fused "
                         f"op supports {sorted(allowed)}")
    return kind


def _classify(layer, allowed, what: str, owner: str) -> str:
    """The name ("relu", "silu", ..., "hardsigmoid") of an activation/gate layer."""
    if layer is None:
        raise ValueError(f"{owner}: {what} is None; the fused op needs one of {sorted(allowed)}")
    if isinstance(layer, nn.Module):
        if _has_hooks(layer):
            raise ValueError(f"{owner}: {what} ({type(layer).__name__}) has hooks, "
                             "which the fused forward would bypass")
        shown = type(layer).__name__
        if getattr(layer, "approximate", "none") != "none":
            shown += f"(approximate={layer.approximate!r})"
        return _check_supported(_layer_kind(layer), allowed, what, owner, shown)
    if callable(layer):
        kind = _function_kind(layer)
        shown = repr(getattr(layer, "__name__", layer)) if kind else \
            f"function {getattr(layer, '__qualname__', repr(layer))}"
        return _check_supported(kind, allowed, what, owner, shown)
    raise TypeError(f"{owner}: {what} must be a module or a function, got {type(layer).__name__}")


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _check_layer(layer, name: str, owner: str, linear_ok: bool) -> nn.Module:
    """A plain 1x1 nn.Conv2d (stride 1, no padding, one group), or a plain nn.Linear where
    the source applies it to the squeezed (N, C) matrix (linear_ok)."""
    if isinstance(layer, nn.Linear) and linear_ok:
        if type(layer).forward is not nn.Linear.forward:
            raise ValueError(f"{owner}: {name} ({type(layer).__name__}) overrides Linear's "
                             "forward; only plain layers can be fused")
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"{owner}: {name} is an uninitialised lazy layer")
    elif not isinstance(layer, nn.Conv2d):
        raise ValueError(f"{owner}: {name} must be an nn.Conv2d, got {type(layer).__name__}")
    else:
        _check_conv(layer, name, owner)
    if _has_hooks(layer):
        raise ValueError(f"{owner}: {name} has hooks, which the fused forward would bypass")
    return layer


def _check_conv(conv, name: str, owner: str) -> None:
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


def _check_norm(norm, name: str, owner: str) -> Optional[nn.Module]:
    """None for nn.Identity, the layer for a plain BatchNorm2d, else ValueError."""
    if type(norm) is nn.Identity and not _has_hooks(norm):
        return None
    if type(norm) is not nn.BatchNorm2d:
        raise ValueError(f"{owner}: a norm layer between the two layers ({name}="
                         f"{type(norm).__name__}) is not supported by the fused op; "
                         "nn.BatchNorm2d is")
    if _has_hooks(norm):
        raise ValueError(f"{owner}: {name} has hooks, which the fused forward would bypass")
    return norm


# Supported classes: kind -> (module, class name, methods a subclass must not override).
_SOURCES = (
    ("se_block", None, "SEBlock", ("forward",)),
    ("torchvision", "torchvision.ops.misc", "SqueezeExcitation", ("forward", "_scale")),
    ("timm_se", "timm.layers.squeeze_excite", "SEModule", ("forward",)),
    ("timm_effnet", "timm.models._efficientnet_blocks", "SqueezeExcite", ("forward",)),
    ("timm_senet", "timm.models.senet", "SEModule", ("forward",)),
    ("timm_effective", "timm.layers.squeeze_excite", "EffectiveSEModule", ("forward",)),
    ("timm_ese", "timm.models.hgnet", "EseModule", ("forward",)),
)
SOURCE_NAMES = ("se_fused.SEBlock, torchvision.ops.SqueezeExcitation, timm.layers.SEModule, "
                "timm.models._efficientnet_blocks.SqueezeExcite, timm.models.senet.SEModule, "
                "timm.layers.EffectiveSEModule, timm.models.hgnet.EseModule")


def source_kind(module: nn.Module) -> Optional[str]:
    """Which supported SE class `module` is (a kind of _SOURCES), or None. A subclass
    counts only if it keeps the forward; otherwise "overridden:<class>"."""
    for kind, mod, attr, methods in _SOURCES:
        klass = SEBlock if mod is None else _lookup_class(mod, attr)
        if klass is not None and isinstance(module, klass):
            if all(getattr(type(module), m) is getattr(klass, m) for m in methods):
                return kind
            return "overridden:" + klass.__module__ + "." + klass.__qualname__
    return None


# Per kind: (reduce, expand, norm attribute, activation attribute, gate attribute); None
# for a part the kind does not have.
_LAYOUT = {
    "torchvision": ("fc1", "fc2", None, "activation", "scale_activation"),
    "timm_se": ("fc1", "fc2", "bn", "act", "gate"),
    "timm_effnet": ("conv_reduce", "conv_expand", None, "act1", "gate"),
    "timm_senet": ("fc1", "fc2", None, "relu", "sigmoid"),
    "timm_effective": ("fc", None, None, None, "gate"),
    "timm_ese": ("conv", None, None, None, "sigmoid"),
}


def _describe(module: nn.Module) -> dict:
    """What from_module needs: the layers as (path, module) pairs (expand and norm may be
    None), the activation (None for one layer) and gate names."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(module).__name__}")
    owner = type(module).__name__
    if any(_has_hooks(m) for m in module.modules()):
        raise ValueError(f"{owner} has forward/backward hooks, which a replacement would drop")
    kind = "fused" if isinstance(module, FusedSEBlock) else source_kind(module)
    if kind is None or kind.startswith("overridden:"):
        from ._recognize import recognize  # noqa: PLC0415  (it imports this module)
        spec, reason, near_miss = recognize(module)
        if spec is not None:
            return _checked(module, owner, spec, linear_ok=True)
        if near_miss:
            raise ValueError(f"{owner}: its forward has the form of an SE block, but {reason}")
        if kind is None:
            raise TypeError(f"FusedSEBlock.from_module: unsupported module type "
                            f"{type(module).__module__}.{type(module).__qualname__}: not one of "
                            f"{SOURCE_NAMES}, and its forward is not an SE computation "
                            f"({reason})")
        raise ValueError(f"{owner}: subclass of {kind.split(':', 1)[1]} with its own forward, "
                         f"which is not an SE computation ({reason})")

    acts, gates = tuple(ACTIVATIONS), tuple(GATES)
    if kind == "fused":
        r, e, n = module._reduce_name, module._expand_name, module._norm_name
        if module.activation is not None:
            lookup(ACTIVATIONS, module.activation, "activation")
        lookup(GATES, module.gate, "gate")
        spec = {"reduce": r, "expand": e, "norm": n, "activation": module.activation,
                "gate": module.gate}
        return _checked(module, owner, spec, linear_ok=True)
    if kind == "se_block":
        _check_names(module.activation, module.gate)
        spec = {"reduce": "fc1", "expand": "fc2", "norm": None,
                "activation": module.activation, "gate": module.gate}
        return _checked(module, owner, spec)
    r, e, n, act, gate = _LAYOUT[kind]
    if kind == "torchvision":
        pool = module.avgpool
        if not (type(pool) is nn.AdaptiveAvgPool2d and pool.output_size in (1, (1, 1), [1, 1])):
            raise ValueError(f"{owner}: avgpool must be nn.AdaptiveAvgPool2d(1), got {pool!r}")
    if getattr(module, "add_maxpool", False):
        raise ValueError(f"{owner}: add_maxpool=True (mean + max squeeze) is not supported "
                         "by the fused op")
    if n is not None and _check_norm(getattr(module, n), n, owner) is None:
        n = None
    spec = {"reduce": r, "expand": e, "norm": n,
            "activation": _classify(getattr(module, act), acts, f"activation ({act})", owner)
            if act else None,
            "gate": _classify(getattr(module, gate), gates, f"gate ({gate})", owner)}
    return _checked(module, owner, spec)


def _checked(module: nn.Module, owner: str, spec: dict, linear_ok: bool = False) -> dict:
    """spec with its layer paths resolved to (path, module) and checked: plain layers of
    matching shapes, and no state of `module` outside them."""
    r, e, n = spec["reduce"], spec["expand"], spec["norm"]
    reduce = _check_layer(module.get_submodule(r), r, owner, linear_ok)
    w1 = as_matrix(reduce.weight)
    if e is not None:
        expand = _check_layer(module.get_submodule(e), e, owner, linear_ok)
        w2 = as_matrix(expand.weight)
        if w2.shape[1] != w1.shape[0] or w2.shape[0] != w1.shape[1]:
            raise ValueError(f"{owner}: {r} maps {w1.shape[1]}->{w1.shape[0]} channels "
                             f"but {e} maps {w2.shape[1]}->{w2.shape[0]}")
    elif w1.shape[0] != w1.shape[1]:
        raise ValueError(f"{owner}: the one-layer form needs a C->C layer, {r} maps "
                         f"{w1.shape[1]}->{w1.shape[0]} channels")
    if n is not None:
        norm = module.get_submodule(n)
        if norm.num_features != w1.shape[0]:
            raise ValueError(f"{owner}: {n} has {norm.num_features} features, {r} gives "
                             f"{w1.shape[0]}")
    paths = [p for p in (r, e, n) if p is not None]
    extra = [k for k, _ in (*module.named_parameters(), *module.named_buffers())
             if not any(k.startswith(p + ".") for p in paths)]
    if extra:
        raise ValueError(f"{owner}: has state outside {'/'.join(paths)} ({', '.join(extra)}) "
                         "that the fused block cannot hold")
    return {"reduce": (r, reduce), "expand": (e, module.get_submodule(e)) if e else None,
            "norm": (n, module.get_submodule(n)) if n else None,
            "activation": spec["activation"], "gate": spec["gate"]}
