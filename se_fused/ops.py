"""The front door: se_fused.squeeze_excite, and the one router that picks its path.

se_fused._C (loaded by _lib.py) checks the tensors and runs the kernels. Here: the
Python argument checks, then route(), which takes the first row that matches the call:

  row        when                                   path
  trace      torch.jit.trace (also the TorchScript  se_forward, autograd or not, so trace's
             ONNX exporter)                         check (a rerun under no_grad) records the
                                                    same graph; in place: x.copy_(y)
  onnx       torch.onnx.export(dynamo=True)         the reference's PyTorch ops, which the
                                                    exporter turns into standard ONNX ops
  transform  eager, under a torch.func transform    _autograd.Transformable (jvp, vmap);
             or a forward-AD level                  in place: x.copy_(y)
  inference  no tensor needs a gradient             in place: se_forward_; else se_forward,
                                                    eager below the autograd key
  inplace    inplace=True under autograd            eager: _autograd.ChosenSave (marks x
                                                    dirty); compiled: se_forward, x.copy_(y)
  keep_x     a FusedSEBlock that keeps x, under     eager: se_forward, x saved
             autograd (see modules.py)              (_autograd.keeping_x); compiled: ChosenSave
  autograd   anything else, torch.compile and       se_forward through register_autograd
             torch.export included

While compiling (torch.compile, torch.export) neither trace nor transform applies; "is
compiling" is asked once per call, in route().
"""
from typing import Optional

import torch

from ._autograd import ChosenSave, Transformable, keeping_x, keeps_x, reference_pair
from ._lib import ops as _ops
from ._names import as_matrix, dense_layout

__all__ = ["squeeze_excite"]


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
    inplace: bool = False,
) -> torch.Tensor:
    """Fused Squeeze-and-Excitation: y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2).

    x is (N, C, H, W), NCHW or channels_last, in float32/float16/bfloat16/float64;
    w1 (R, C) or (R, C, 1, 1), w2 (C, R) or (C, R, 1, 1), biases (R,), (C,) or None.
    activation is "relu", "silu", "hardswish" or "gelu" (the exact, erf form);
    gate "sigmoid" or "hardsigmoid".

    One-layer form (effective SE: timm's EffectiveSEModule, hgnet's EseModule): w2 = b2 =
    None, w1 (C, C) or (C, C, 1, 1): y = x * gate(W1 mean_hw(x) + b1), no activation
    (`activation` must still be a valid name).

    Parameters may stay float32 for half-precision x. The squeeze and the small layers
    run in float32 (float64 for float64 x). An optional residual is added and
    out_activation="relu" applied in the same pass. Returns x's shape, dtype, device and
    memory format. Differentiable in every tensor input (reverse and forward mode,
    torch.func transforms included). Without an epilogue the backward keeps y, not x.

    inplace=True writes y over x and returns x, like nn.ReLU(inplace=True): x must be
    dense NCHW or channels_last, and under autograd the call must have no epilogue.
    """
    for name, value in (("activation", activation), ("gate", gate)):
        if not isinstance(value, str):
            raise TypeError(f"se_fused: {name} must be a string, got {type(value).__name__}")
    if out_activation is not None and not isinstance(out_activation, str):
        raise TypeError("se_fused: out_activation must be None or 'relu', "
                        f"got {type(out_activation).__name__}")
    if out_activation == "none":  # only None spells "no activation" in the public API
        raise ValueError("se_fused: out_activation must be None or 'relu', got 'none'")
    if not isinstance(inplace, bool):
        raise TypeError(f"se_fused: inplace must be a bool, got {type(inplace).__name__}")
    for name, value in (("x", x), ("w1", w1)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"se_fused: {name} must be a torch.Tensor, got {type(value).__name__}")
    if w2 is not None and not isinstance(w2, torch.Tensor):
        raise TypeError("se_fused: w2 must be a torch.Tensor or None (the one-layer form), "
                        f"got {type(w2).__name__}")
    return route(x, as_matrix(w1), b1, as_matrix(w2), b2, residual, activation, gate,
                 out_activation or "none", inplace)


def route(x, w1, b1, w2, b2, residual, activation, gate, out_activation, inplace,
          keep_x=False):
    """squeeze_excite after its argument checks (matrices, out_activation "none" for
    none), by the table's first row that matches. keep_x: the backward keeps x even
    where y would do (FusedSEBlock, see modules.py)."""
    args = (x, w1, b1, w2, b2, residual, activation, gate, out_activation)
    if inplace and dense_layout(x) is None:
        raise ValueError("se_fused: inplace=True needs x dense in NCHW or channels_last, "
                         f"got strides {tuple(x.stride())} for shape {tuple(x.shape)}")
    compiling = torch.compiler.is_compiling()
    return ROWS[pick_row(args, inplace, keep_x, compiling)](args, inplace, keep_x, compiling)


def pick_row(args, inplace, keep_x, compiling) -> str:
    """The name of the table's first row that matches."""
    if not compiling and torch.jit.is_tracing():
        return "trace"
    if torch.onnx.is_in_onnx_export():
        return "onnx"
    if not compiling and (torch._C._functorch.maybe_current_level() is not None
                          or torch.autograd.forward_ad._current_level >= 0):
        return "transform"
    if not _needs_grad(args):
        return "inference"
    if inplace:
        return "inplace"
    no_epilogue = args[5] is None and args[8] == "none"  # residual, out_activation
    return "keep_x" if keep_x and no_epilogue else "autograd"


def _needs_grad(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in args[:6])


def _check_no_epilogue(args):
    if args[5] is not None or args[8] != "none":
        raise ValueError(
            "se_fused: inplace=True cannot be differentiated with a residual or "
            "out_activation: their backward needs x, which inplace=True overwrites. "
            "Use inplace=False, or run without autograd (torch.no_grad()).")


def _copy_into_x(args):
    """In place as the out-of-place op and x.copy_(y): the backward keeps the op's own y,
    which later writes to x leave intact; one that keeps x (keeps_x) gets a copy of it."""
    x, gate = args[0], args[7]
    src = x.clone() if keeps_x(x, gate, False) else x
    return x.copy_(_ops.se_forward(src, *args[1:])[0])


def _trace(args, inplace, keep_x, compiling):
    if not inplace:  # keep_x and autograd record the same op
        return (_keep_x if keep_x else _autograd)(args, inplace, keep_x, compiling)
    if _needs_grad(args):
        _check_no_epilogue(args)
    return _copy_into_x(args)


def _onnx(args, inplace, keep_x, compiling):
    y = reference_pair(*args)[0]
    return args[0].copy_(y) if inplace else y


def _transform(args, inplace, keep_x, compiling):
    y = Transformable.apply(*args)[0]
    return args[0].copy_(y) if inplace else y


def _inference(args, inplace, keep_x, compiling):
    if inplace:
        _ops.se_forward_(*args)
        if not compiling:
            # The dispatcher bumps the version of a custom op's mutated input only under
            # autograd (and compile's functionalization tracks the write itself); a saved
            # x must still see that it was overwritten, as after any in-place op.
            torch.autograd.graph.increment_version(args[0])
        return args[0]
    if compiling:
        return _ops.se_forward(*args)[0]
    # Below autograd: the Python autograd wrapper torch.library puts in front of the op
    # would only redispatch, at a cost that matters at batch 1.
    with torch._C._AutoDispatchBelowAutograd():
        return _ops.se_forward(*args)[0]


def _inplace(args, inplace, keep_x, compiling):
    _check_no_epilogue(args)
    if not compiling:
        x, w1, b1, w2, b2, _, activation, gate, _ = args
        return ChosenSave.apply(x, w1, b1, w2, b2, activation, gate, True, keep_x)[0]
    # Compiled, through ChosenSave's mark_dirty, torch 2.8-2.11 differentiate a later
    # use of x as if it still held its old values (wrong gradients, no error); the
    # copy_ is a mutation of x that functionalization and autograd both see.
    return _copy_into_x(args)


def _keep_x(args, inplace, keep_x, compiling):
    if compiling:
        x, w1, b1, w2, b2, _, activation, gate, _ = args
        return ChosenSave.apply(x, w1, b1, w2, b2, activation, gate, False, True)[0]
    with keeping_x():
        return _ops.se_forward(*args)[0]


def _autograd(args, inplace, keep_x, compiling):
    return _ops.se_forward(*args)[0]


ROWS = {"trace": _trace, "onnx": _onnx, "transform": _transform, "inference": _inference,
        "inplace": _inplace, "keep_x": _keep_x, "autograd": _autograd}
