"""Recognising users' own SE modules by what their forward computes.

A module is an SE block if torch.fx traces its forward, on its one input x, to

    squeeze:  x.mean((2, 3)) / torch.mean / F.adaptive_avg_pool2d(x, 1) / nn.AdaptiveAvgPool2d(1)
    layer:    nn.Linear or 1x1 nn.Conv2d
    act:      a supported activation (module or function)      } absent in the one-layer
    layer:    nn.Linear or 1x1 nn.Conv2d                         } form (a C->C layer)
    gate:     a supported gate
    x * that  (x * s, s * x, torch.mul, x.mul)

with only shape operations (view, reshape, flatten, squeeze, unsqueeze, expand_as, expand,
[:, :, None, None]) between the steps, and nothing else in the graph but shape queries
(x.size(), x.shape, their items). The match is then checked numerically: the module and
the computation the match describes, on a small random input, must agree; a shape
operation that mixes the batch and channel axes fails there.
"""
import operator
import re
import warnings
from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ._names import ACTIVATIONS, GATES, as_matrix
from .modules import _function_kind, _layer_kind

__all__ = ["recognize", "is_candidate", "looks_like_se"]

_SE_NAME = re.compile(r"SE|Squeeze|Excit|Ese[A-Z]")


def looks_like_se(module: nn.Module) -> bool:
    """A class named like an SE block (SEBlock, SELayer, SqueezeExcite, EseModule, ...).
    GlobalContext, SelectiveKernelAttn, SplitAttn and EcaModule are other computations and
    do not match."""
    return bool(_SE_NAME.search(type(module).__name__))


def _layers(module: nn.Module):
    """The submodules holding parameters, by path; None if the module holds its own."""
    if next(module.parameters(recurse=False), None) is not None:
        return None
    return [(n, m) for n, m in module.named_modules()
            if n and next(m.parameters(recurse=False), None) is not None]


def is_candidate(module: nn.Module) -> bool:
    """Cheap test before tracing: a module with a forward of its own (not a torch.nn
    class) whose parameters all sit in one or two nn.Linear / nn.Conv2d layers."""
    if type(module).__module__.startswith("torch.nn."):
        return False
    layers = _layers(module)
    return bool(layers) and len(layers) <= 2 and \
        all(isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in layers)


class _Tracer(fx.Tracer):
    """Keeps the activation / gate modules it knows (timm's included) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or _layer_kind(m) is not None


_SHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "expand_as", "expand"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_MEAN_DIMS = {(2, 3), (3, 2), (-2, -1), (-1, -2)}


class _NoMatch(Exception):
    """Not an SE computation; near_miss: the SE skeleton (squeeze, one or two layers,
    x times the result) is there, but a step is not supported."""

    def __init__(self, reason: str, near_miss: bool = False):
        super().__init__(reason)
        self.near_miss = near_miss


def recognize(module: nn.Module) -> Tuple[Optional[dict], str, bool]:
    """(spec, "", False) for an SE module, spec as modules._describe takes it (layer paths,
    activation, gate); else (None, reason, near_miss)."""
    if not is_candidate(module):
        return None, "its parameters are not in one or two Linear / 1x1 Conv2d layers", False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(module)
    except Exception as err:  # noqa: BLE001  (any failure to trace means: not recognised)
        return None, f"its forward does not trace with torch.fx ({type(err).__name__})", False
    try:
        spec = _match(graph, module)
        _verify(module, spec)
    except _NoMatch as err:
        return None, str(err), err.near_miss
    return spec, "", False


def _args_nodes(node: fx.Node):
    out = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def _is_mul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.mul, torch.mul)) or \
        (node.op == "call_method" and node.target == "mul")


def _is_shape_query(node: fx.Node, queries=()) -> bool:
    """t.size(), t.dim(), t.shape and items of those: no computation on values."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return True
    return node.op == "call_function" and node.target is operator.getitem and \
        isinstance(node.args[0], fx.Node) and node.args[0] in queries


def _value_users(node: fx.Node) -> int:
    """How many nodes use node's values (its shape queries do not)."""
    return sum(not _is_shape_query(u) for u in node.users)


def _is_shape_op(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target in _SHAPE_FUNCTIONS:
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        return all(i is None or i is Ellipsis or i == slice(None) for i in index)
    return False


def _squeeze_of(node: fx.Node, x: fx.Node, module: nn.Module) -> bool:
    """Whether node is a global average over H, W of x (raises _NoMatch for another
    reduction of x)."""
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        if type(sub) is nn.AdaptiveAvgPool2d and node.args == (x,):
            if sub.output_size in (1, (1, 1), [1, 1]):
                return True
            raise _NoMatch(f"it pools x to {sub.output_size}, not to 1x1")
        return False
    args = node.args
    if not args or args[0] is not x:
        return False
    if (node.op == "call_method" and node.target == "mean") or \
            (node.op == "call_function" and node.target is torch.mean):
        dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, (list, tuple)) and tuple(dims) in _MEAN_DIMS:
            return True
        raise _NoMatch(f"it averages x over dims {dims}, not over H, W")
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = args[1] if len(args) > 1 else node.kwargs.get("output_size")
        if size in (1, (1, 1), [1, 1]):
            return True
        raise _NoMatch(f"it pools x to {size}, not to 1x1")
    return False


def _step_kind(node: fx.Node, module: nn.Module):
    """("layer", path) for a Linear/Conv2d call, ("fn", kind or None, shown) for a unary
    function or parameterless module; _NoMatch for anything else."""
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            return ("layer", node.target)
        if next(sub.parameters(), None) is None and len(_args_nodes(node)) == 1:
            return ("fn", _layer_kind(sub), type(sub).__name__)
        raise _NoMatch(f"it calls {type(sub).__name__} ({node.target}) on the squeezed values")
    if node.op in ("call_function", "call_method") and len(_args_nodes(node)) == 1:
        if node.op == "call_method":
            kind = {"relu": "relu", "sigmoid": "sigmoid"}.get(node.target)
            return ("fn", kind, f"Tensor.{node.target}")
        kind = _function_kind(node.target)
        if kind == "gelu" and node.kwargs.get("approximate", "none") != "none":
            kind = None
        name = getattr(node.target, "__name__", str(node.target))
        return ("fn", kind, name)
    raise _NoMatch(f"it computes {node.op} {getattr(node.target, '__name__', node.target)} "
                   "with more than the squeezed values")


def _match(graph: fx.Graph, module: nn.Module) -> dict:
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise _NoMatch(f"its forward takes {len(inputs)} inputs")
    x = inputs[0]
    result = next(n for n in nodes if n.op == "output").args[0]
    if not isinstance(result, fx.Node) or not _is_mul(result):
        raise _NoMatch("its output is not x times a gate")
    a, b = result.args[:2]
    s = b if a is x else a if b is x else None
    if not isinstance(s, fx.Node):
        raise _NoMatch("its output is not x times a gate")
    chain, steps, node = {result}, [], s
    while not _squeeze_of(node, x, module):
        if node is x or _value_users(node) != 1:
            raise _NoMatch("the gate is not computed from a global average of x alone")
        chain.add(node)
        if not _is_shape_op(node):
            steps.append(_step_kind(node, module))
        node = node.args[0]
        if not isinstance(node, fx.Node):
            raise _NoMatch("the gate is not computed from a global average of x alone")
    if _value_users(node) != 1:
        raise _NoMatch("the squeezed values are used twice")
    chain.add(node)
    queries = set()
    for n in nodes:
        if n.op in ("placeholder", "output") or n in chain:
            continue
        if not _is_shape_query(n, queries):
            what = getattr(n.target, "__name__", n.target)
            raise _NoMatch(f"its forward computes more ({n.op} {what})")
        queries.add(n)
    return _spec_of(steps[::-1])


def _spec_of(steps) -> dict:
    kinds = [s[0] for s in steps]
    layers = [s[1] for s in steps if s[0] == "layer"]
    if kinds == ["layer", "fn", "layer", "fn"]:
        act, gate = steps[1], steps[3]
    elif kinds == ["layer", "fn"]:
        act, gate = None, steps[1]
    else:
        if kinds.count("layer") in (1, 2):
            raise _NoMatch("the steps between the squeeze and the product are "
                           f"{' -> '.join(s[1] if s[0] == 'layer' else s[2] for s in steps)}, "
                           "not layer -> activation -> layer -> gate", near_miss=True)
        raise _NoMatch(f"it has {kinds.count('layer')} layers between the squeeze and x")
    if act is not None and act[1] not in ACTIVATIONS:
        raise _NoMatch(f"its activation {act[2]} ({act[1] or 'unknown'}) is not supported by "
                       f"the fused op (supported: {sorted(ACTIVATIONS)})", near_miss=True)
    if gate[1] not in GATES:
        raise _NoMatch(f"its gate {gate[2]} ({gate[1] or 'unknown'}) is not supported by the "
                       f"fused op (supported: {sorted(GATES)})", near_miss=True)
    return {"reduce": layers[0], "expand": layers[1] if len(layers) == 2 else None,
            "norm": None, "activation": act[1] if act else None, "gate": gate[1]}


def _verify(module: nn.Module, spec: dict) -> None:
    """The module and the computation spec describes agree on a small random input."""
    reduce = module.get_submodule(spec["reduce"])
    w1 = as_matrix(reduce.weight)
    if w1.dim() != 2:
        raise _NoMatch(f"{spec['reduce']} is not a 1x1 layer", near_miss=True)
    if w1.device.type == "meta" or not w1.dtype.is_floating_point:
        return  # nothing to compute with: the structural match stands alone
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, w1.shape[1], 3, 2, generator=gen).to(w1.device, w1.dtype)
    with torch.no_grad():
        try:
            expected = module(x)
            s = F.linear(x.mean((2, 3)), w1, reduce.bias)
            if spec["expand"] is not None:
                expand = module.get_submodule(spec["expand"])
                s = F.linear(ACTIVATIONS[spec["activation"]](s), as_matrix(expand.weight),
                             expand.bias)
            got = x * GATES[spec["gate"]](s)[:, :, None, None]
        except Exception as err:  # noqa: BLE001
            raise _NoMatch(f"it fails on a test input ({type(err).__name__}: {err})") from None
    tol = 1e-3 if w1.dtype in (torch.float32, torch.float64) else 5e-2
    if not (isinstance(expected, torch.Tensor) and expected.shape == got.shape and
            torch.allclose(expected, got, rtol=tol, atol=tol)):
        raise _NoMatch("its result differs from the SE computation it traces to (a reshape "
                       "that mixes batch and channels?)")
