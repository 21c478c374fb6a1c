"""The public op over torch.ops.se_fused, with its fake kernels and autograd.

The C++ library (se_fused._C) defines the schemas and the CPU/CUDA kernels and
validates arguments; this module adds what torch.compile, autograd and
opcheck need, on the Python side, as torch.library registrations.
"""
import math
from typing import Optional

import torch

from . import _C  # noqa: F401  (loads the library: schemas and kernels)
from ._names import ACTIVATIONS, GATES, as_matrix

__all__ = ["squeeze_excite"]

_ops = torch.ops.se_fused


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

    One-layer form (effective SE, timm's EffectiveSEModule, hgnet's EseModule):
    w2 = b2 = None and w1 (C, C) or (C, C, 1, 1) give y = x * gate(W1 mean_hw(x) + b1),
    with no activation; `activation` must still be a valid name but is not applied.

    Parameters may stay float32 for half-precision x. The squeeze and the small
    layers run in float32 (float64 for float64 x). An optional residual is added
    and out_activation="relu" applied in the same pass. Returns a tensor with x's
    shape, dtype, device and memory format. Differentiable in every tensor input
    (reverse and forward mode, torch.func transforms included).

    Without an epilogue the backward keeps y, not x, alive (see the API spec,
    "Memory"). inplace=True writes y over x and returns x, like
    nn.ReLU(inplace=True): x must be dense NCHW or channels_last, and under
    autograd the call must have no epilogue (the backward would need x).
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
    return _squeeze_excite(x, as_matrix(w1), b1, as_matrix(w2), b2, residual, activation, gate,
                           out_activation or "none", inplace, keep_x=False)


def _squeeze_excite(x, w1, b1, w2, b2, residual, activation, gate, out_activation, inplace,
                    keep_x):
    """squeeze_excite after its argument checks.

    keep_x: the backward keeps x (in place, a copy of it) even without an epilogue, for
    a caller whose y may be modified in place later, which would leave a y-only
    backward without its values (FusedSEBlock finds that out, see modules.py)."""
    args = (x, w1, b1, w2, b2, residual, activation, gate, out_activation)
    if inplace:
        _check_inplace_layout(x)
    if torch.onnx.is_in_onnx_export():
        return _for_onnx_export(args, inplace)
    if inplace:
        if not torch.compiler.is_compiling() and _transform_active():
            return x.copy_(_SETransformable.apply(*args)[0])
        return _forward_inplace(*args, keep_x=keep_x)
    if torch.compiler.is_compiling():
        pass  # the registered op below: torch.compile refuses _SETransformable's jvp
    elif _transform_active():
        # torch.func transforms and forward-mode AD need an autograd.Function with
        # setup_context, jvp and vmap; torch.library's autograd registration has
        # none of these (forward AD would drop the tangent silently).
        return _SETransformable.apply(*args)[0]
    elif not _autograd_needed(x, w1, b1, w2, b2, residual):
        # Inference: skip the Python autograd wrapper torch.library puts in front of
        # the op (it would only redispatch below autograd too); ~15 us a call, which
        # matters at batch 1.
        with torch._C._AutoDispatchBelowAutograd():
            return _ops.se_forward(*args)[0]
    if keep_x and residual is None and out_activation == "none" \
            and _autograd_needed(x, w1, b1, w2, b2, residual):
        return _SEChosenSave.apply(x, w1, b1, w2, b2, activation, gate, False, True)[0]
    return _ops.se_forward(*args)[0]


def _for_onnx_export(args, inplace):
    """The call as torch.onnx.export should see it.

    The TorchScript exporter traces the op and applies the symbolic that _onnx.py
    registers on import. The dynamo exporter takes translations only through its
    custom_translation_table argument (se_fused.onnx_translation_table()), so that
    `torch.onnx.export(model, args, dynamo=True)` works without it, it gets the
    reference's PyTorch ops, which it translates to standard ONNX ops itself. In place,
    both need y to flow out of a node, so x is overwritten by a copy (a no-op rebinding
    in the exported graph)."""
    x = args[0]
    y = _ops.se_forward(*args)[0] if torch.jit.is_tracing() else _reference_pair(*args)[0]
    return x.copy_(y) if inplace else y


def _autograd_needed(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _transform_active() -> bool:
    """A torch.func transform (vmap, grad, jvp, ...) or a forward-AD dual level is active."""
    return (torch._C._functorch.maybe_current_level() is not None
            or torch.autograd.forward_ad._current_level >= 0)


def _check_inplace_layout(x: torch.Tensor) -> None:
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("se_fused: inplace=True needs x dense in NCHW or channels_last, "
                         f"got strides {tuple(x.stride())} for shape {tuple(x.shape)}")


def _forward_inplace(x, w1, b1, w2, b2, residual, activation, gate, out_activation, keep_x):
    if _autograd_needed(x, w1, b1, w2, b2, residual):
        if residual is not None or out_activation != "none":
            raise ValueError(
                "se_fused: inplace=True cannot be differentiated with a residual or "
                "out_activation: their backward needs x, which inplace=True overwrites. "
                "Use inplace=False, or run without autograd (torch.no_grad()).")
        if torch.compiler.is_compiling():
            # Compiled, the write is the out-of-place op and a copy_ into x, which
            # functionalization and autograd both see as a mutation of x. Through
            # _SEChosenSave's mark_dirty instead, torch 2.8-2.11 differentiate a later
            # use of x as if it still held its old values (wrong gradients, no error).
            # y is the op's own output, so a backward from y stays valid whatever later
            # happens to x (keep_x is not needed); one that keeps x gets a copy of it.
            src = x.clone() if _keeps_x(x, gate, False) else x
            return x.copy_(_ops.se_forward(src, w1, b1, w2, b2, None, activation, gate,
                                           "none")[0])
        return _SEChosenSave.apply(x, w1, b1, w2, b2, activation, gate, True, keep_x)[0]
    _ops.se_forward_(x, w1, b1, w2, b2, residual, activation, gate, out_activation)
    if not torch.compiler.is_compiling():
        # The dispatcher bumps the version of a custom op's mutated input only under
        # autograd (and compile's functionalization tracks the write itself); a saved
        # x must still see that it was overwritten, as after any in-place op.
        torch.autograd.graph.increment_version(x)
    return x


# --- fake (meta) kernels: shapes, dtypes and strides exactly as the C++ kernels give them


def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """Mirror of csrc's empty_like_layout: x's strides when dense NCHW/NHWC, else NCHW."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_devices(x, **tensors):
    # The C++ checks never run when the dispatcher picks the fake kernel (a
    # meta tensor among the inputs, or tracing), so devices are checked here too.
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"se_fused: {name} is on {t.device} but x is on {x.device}; "
                               "all tensors must be on one device")


def _z_and_pre_fake(x, w1):
    """z (N, C) and pre (N, R + C), in the accumulation dtype (R = w1's rows, C in the
    one-layer form too)."""
    N, C = x.shape[0], x.shape[1]
    return (x.new_empty((N, C), dtype=_acc_dtype(x)),
            x.new_empty((N, w1.shape[0] + C), dtype=_acc_dtype(x)))


@torch.library.register_fake("se_fused::se_forward")
def _se_forward_fake(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    torch._check(x.dim() == 4, lambda: "se_fused: x must be 4-D (N, C, H, W)")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual)
    return (_empty_like_layout(x),) + _z_and_pre_fake(x, w1)


@torch.library.register_fake("se_fused::se_forward_")
def _se_forward_inplace_fake(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    torch._check(x.dim() == 4, lambda: "se_fused: x must be 4-D (N, C, H, W)")
    _check_devices(x, w1=w1, b1=b1, w2=w2, b2=b2, residual=residual)
    return _z_and_pre_fake(x, w1)


@torch.library.register_fake("se_fused::se_backward")
def _se_backward_fake(grad_y, x, z, y, w1, b1, w2, b2, activation, gate, want_grad_residual,
                      x_is_output=False, pre=None):
    _check_devices(x, pre=pre)
    acc = _acc_dtype(x)
    grad_res = (_empty_like_layout(x) if (y is not None and want_grad_residual)
                else x.new_empty((0,)))
    R, C = w1.shape
    # The one-layer form (w2 None) returns (0,) for the second layer's gradients.
    second = ((C, R), (C,)) if w2 is not None else ((0,), (0,))
    return (_empty_like_layout(x), grad_res,
            x.new_empty((R, C), dtype=acc), x.new_empty((R,), dtype=acc),
            x.new_empty(second[0], dtype=acc), x.new_empty(second[1], dtype=acc))


# --- autograd
#
# Three ways in, one set of backward formulas:
# - se_forward through torch.library.register_autograd: training, torch.compile, opcheck;
# - _SEChosenSave, an autograd.Function around se_forward_ (register_autograd refuses
#   mutating ops): inplace=True under autograd, eager (compiled: se_forward + copy_);
# - _SETransformable, an autograd.Function with setup_context, jvp and vmap: torch.func
#   transforms and forward-mode AD (torch.compile refuses a custom jvp, so it never sees
#   this one).
#
# The y-only backward: without an epilogue, y = x * s, and sum_hw g * y = s * sum_hw g * x,
# so the gate's backward needs no x (se_common.h, gate_input_grad). Saving y instead of x
# frees x, which usually nothing else keeps. z is then a differentiable output, so that
# a double backward written in y and z reaches x through them.
#
# pre, the forward's [a1 | a2] (N x (R + C) floats), is saved too and handed to the fused
# backward, which then skips recomputing both small layers. It is not differentiable:
# a double backward (_backward_composite) recomputes a1 and a2 from z and the weights,
# so that their dependence on them is in the graph.


def _saves_y(x: torch.Tensor, residual, out_activation: str, gate: str) -> bool:
    """Whether the backward works from y: no epilogue, and y keeps enough precision.

    float16 with the hardsigmoid gate keeps x: near a2 = -3 the gate is tiny, y = x * s
    falls into float16's subnormals, and dividing by s (= (a2 + 3) / 6) would amplify
    their rounding error beyond float16's tolerance."""
    if residual is not None or out_activation != "none":
        return False
    return not (x.dtype == torch.float16 and gate == "hardsigmoid")


def _keeps_x(x, gate, keep_x) -> bool:
    return keep_x or not _saves_y(x, None, "none", gate)


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation, gate, out_activation = inputs
    y, z, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.set_materialize_grads(False)
    ctx.activation, ctx.gate = activation, gate
    ctx.out_relu = out_activation == "relu"
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.has_residual = residual is not None
    ctx.from_y = _saves_y(x, residual, out_activation, gate)
    if ctx.from_y:
        ctx.save_for_backward(y, z, None, pre, w1, b1, w2, b2)
    else:
        ctx.mark_non_differentiable(z)
        ctx.save_for_backward(x, z, y if ctx.out_relu else None, pre, w1, b1, w2, b2)


def _backward(ctx, grad_y, grad_z, _grad_pre):
    v, z, y, pre, w1, b1, w2, b2 = ctx.saved_tensors
    grads = _input_grads(
        grad_y, grad_z, v, z, y, pre, w1, b1, w2, b2, ctx.activation, ctx.gate, ctx.from_y,
        ctx.has_residual and ctx.needs_input_grad[5])
    return _per_input(ctx, grads, w1, b1, w2, b2, 3)


def _per_input(ctx, grads, w1, b1, w2, b2, n_rest):
    """The gradients in forward-input order: x, w1, b1, w2, b2 (in the parameters' dtypes),
    the residual's when ctx has one, then None for the n_rest non-tensor inputs."""
    gx, gres, gw1, gb1, gw2, gb2 = grads
    need = ctx.needs_input_grad
    out = (
        gx if need[0] else None,
        gw1.to(w1.dtype) if need[1] else None,
        gb1.to(b1.dtype) if ctx.has_b1 and need[2] else None,
        gw2.to(w2.dtype) if w2 is not None and need[3] else None,
        gb2.to(b2.dtype) if ctx.has_b2 and need[4] else None,
    )
    if hasattr(ctx, "has_residual"):
        out += (gres if ctx.has_residual and need[5] else None,)
    return out + (None,) * n_rest


def _input_grads(grad_y, grad_z, v, z, y, pre, w1, b1, w2, b2, activation, gate, from_y,
                 want_grad_residual):
    """(grad_x, grad_residual, grad_w1, grad_b1, grad_w2, grad_b2) from the saved tensors.

    v is x, or y when from_y. grad_z is None unless a double backward reached z. pre (the
    forward's [a1 | a2]) only serves the fused kernel."""
    if grad_y is None:
        grad_y = torch.zeros_like(v)
    if torch.is_grad_enabled():
        # A graph of the backward was asked for (double backward): use
        # differentiable PyTorch ops so the second derivative exists.
        grads = _backward_composite(grad_y, v, z if from_y else None, y, w1, b1, w2, b2,
                                    activation, gate)
    else:
        grads = _ops.se_backward(grad_y.to(v.dtype), v, z, y, w1, b1, w2, b2, activation,
                                 gate, bool(want_grad_residual and y is not None), from_y, pre)
    gx, gres, gw1, gb1, gw2, gb2 = grads
    if grad_z is not None:
        hw = v.shape[2] * v.shape[3]
        gx = gx + (grad_z / hw)[:, :, None, None].to(gx.dtype)
    if want_grad_residual and y is None:
        gres = grad_y  # no output relu: the residual's gradient is grad_y itself
    return gx, gres, gw1, gb1, gw2, gb2


def _backward_composite(grad_y, v, z, y, w1, b1, w2, b2, activation, gate):
    """The backward of se_forward written with differentiable PyTorch ops.

    Same outputs as torch.ops.se_fused.se_backward. With z None, v is x and z is
    recomputed from it; with z given, v is y = x * s (the y-only backward), and x
    is reached through y and z, both differentiable outputs of the forward.
    s is recomputed from z and the weights so its dependence on them is in the graph.
    y, when given, is the output-relu mask's source."""
    dt = _acc_dtype(v)
    vf = v.to(dt)
    g = grad_y.to(dt)
    if y is not None:
        g = g * _relu_passes(y)
    hw = v.shape[2] * v.shape[3]
    from_y = z is not None
    z = z.to(dt) if from_y else vf.mean(dim=(2, 3))
    w1f, w2f = w1.to(dt), None if w2 is None else w2.to(dt)
    a1, h, a2 = _small_layers(z, w1f, b1, w2f, b2, activation)
    s = GATES[gate](a2)
    d = (g * vf).sum(dim=(2, 3))
    da2 = _gate_input_grad(gate, a2, d, from_y)
    if w2f is None:  # one layer: a2 is a1, and there is no second layer's gradient
        da1, gw2, gb2 = da2, None, None
    else:
        da1 = (da2 @ w2f) * _act_derivative(activation, a1)
        gw2, gb2 = da2.t() @ h, da2.sum(0)
    dz = da1 @ w1f
    gx = g * s[:, :, None, None] + (dz / hw)[:, :, None, None]
    return (gx.to(v.dtype), g.to(v.dtype), da1.t() @ z, da1.sum(0), gw2, gb2)


def _small_layers(z, w1f, b1, w2f, b2, activation):
    """(a1, h, a2) of the small layers in z's dtype; w2f None is the one-layer form,
    where h and a2 are a1 (no activation, no second layer)."""
    dt = z.dtype
    a1 = z @ w1f.t() + (0 if b1 is None else b1.to(dt))
    if w2f is None:
        return a1, a1, a1
    h = ACTIVATIONS[activation](a1)
    return a1, h, h @ w2f.t() + (0 if b2 is None else b2.to(dt))


def _gate_input_grad(name, a2, d, from_y):
    """dL/da2 from d = sum_hw g * v; the same formulas as se_common.h's gate_input_grad."""
    slope = (a2 > -3) & (a2 < 3)
    if not from_y:
        if name == "sigmoid":
            s = torch.sigmoid(a2)
            return d * s * (1 - s)
        return d * slope.to(a2.dtype) / 6
    if name == "sigmoid":
        return d * (1 - torch.sigmoid(a2))
    return torch.where(slope, d / torch.where(slope, a2 + 3, torch.ones_like(a2)),
                       torch.zeros_like(a2))


def _relu_passes(y):
    """Where the output relu lets the gradient through: as torch.relu's backward (and
    se_common.h's relu_passes), everywhere but y <= 0, so a NaN passes."""
    return ~(y <= 0)


def _act_derivative(name, v):
    """d act / d v as torch's backward of each activation computes it (and se_common.h's
    act_derivative), written with differentiable ops for double backward."""
    if name == "relu":
        return (v > 0).to(v.dtype)
    if name == "silu":
        s = torch.sigmoid(v)
        return s * (1 + v * (1 - s))
    if name == "hardswish":
        return torch.where(v < -3, torch.zeros_like(v),
                           torch.where(v <= 3, v / 3 + 0.5, torch.ones_like(v)))
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(v * math.sqrt(0.5)))
        return cdf + v * torch.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    raise ValueError(f"se_fused: unknown activation {name!r}")


torch.library.register_autograd("se_fused::se_forward", _backward, setup_context=_setup_context)


class _SEChosenSave(torch.autograd.Function):
    """A call without epilogue that chooses what its backward keeps: inplace=True under
    eager autograd (register_autograd refuses mutating ops), and keep_x.

    It keeps y (the y-only backward) unless keep_x is set or y cannot serve (_saves_y);
    then x, or in place a copy of x taken before it is overwritten: correct, but
    without the memory saving."""

    @staticmethod
    def forward(x, w1, b1, w2, b2, activation, gate, inplace, keep_x):
        if inplace:
            x_copy = x.clone() if _keeps_x(x, gate, keep_x) else None
            z, pre = _ops.se_forward_(x, w1, b1, w2, b2, None, activation, gate, "none")
            return x, z, pre, x_copy
        y, z, pre = _ops.se_forward(x, w1, b1, w2, b2, None, activation, gate, "none")
        return y, z, pre, None

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w1, b1, w2, b2, activation, gate, inplace, keep_x = inputs
        y, z, pre, x_copy = output
        if inplace:
            ctx.mark_dirty(x)
        ctx.mark_non_differentiable(pre)
        ctx.set_materialize_grads(False)
        ctx.activation, ctx.gate = activation, gate
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        ctx.from_y = not _keeps_x(x, gate, keep_x)
        if ctx.from_y:
            ctx.save_for_backward(y, z, pre, w1, b1, w2, b2)
        else:
            ctx.mark_non_differentiable(z, *([x_copy] if inplace else []))
            ctx.save_for_backward(x_copy if inplace else x, z, pre, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad_y, grad_z, _grad_pre, _grad_kept):
        v, z, pre, w1, b1, w2, b2 = ctx.saved_tensors
        grads = _input_grads(grad_y, grad_z, v, z, None, pre, w1, b1, w2, b2, ctx.activation,
                             ctx.gate, ctx.from_y, False)
        return _per_input(ctx, grads, w1, b1, w2, b2, 4)


class _SETransformable(torch.autograd.Function):
    """se_forward for torch.func transforms and forward-mode AD.

    The backward and the tangent are differentiable PyTorch ops, so transforms
    compose (hessian = jacfwd(jacrev)); vmap folds the vmapped dimension into the
    batch, so a vmapped call is one call of the fused kernel."""

    @staticmethod
    def forward(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
        # pre is left out: this backward is the differentiable composite, which
        # recomputes a1 and a2 (transforms compose through it).
        y, z, _ = _ops.se_forward(x, w1, b1, w2, b2, residual, activation, gate, out_activation)
        return y, z

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w1, b1, w2, b2, residual, activation, gate, out_activation = inputs
        y, z = output
        ctx.mark_non_differentiable(z)
        ctx.set_materialize_grads(False)
        ctx.activation, ctx.gate = activation, gate
        ctx.out_relu = out_activation == "relu"
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, y if ctx.out_relu else None, w1, b1, w2, b2)
        ctx.save_for_forward(x, y, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad_y, _grad_z):
        x, y, w1, b1, w2, b2 = ctx.saved_tensors
        if grad_y is None:
            return (None,) * 9
        grads = _backward_composite(grad_y, x, None, y, w1, b1, w2, b2, ctx.activation,
                                    ctx.gate)
        return _per_input(ctx, grads, w1, b1, w2, b2, 3)

    @staticmethod
    def jvp(ctx, tx, tw1, tb1, tw2, tb2, tres, *_):
        x, y, w1, b1, w2, b2 = ctx.saved_tensors
        return _tangent(x, y, w1, b1, w2, b2, tx, tw1, tb1, tw2, tb2, tres,
                        ctx.activation, ctx.gate, ctx.out_relu), None

    @staticmethod
    def vmap(info, in_dims, x, w1, b1, w2, b2, residual, activation, gate, out_activation):
        xd, w1d, b1d, w2d, b2d, rd = in_dims[:6]
        if any(d is not None for d in (w1d, b1d, w2d, b2d)):
            # Per-sample weights: no single kernel call computes that; batch the
            # reference's PyTorch ops instead (their batching rules, no loop).
            y, z = torch.vmap(_reference_pair, in_dims=in_dims, out_dims=0)(
                x, w1, b1, w2, b2, residual, activation, gate, out_activation)
            return (y, z), (0, 0)
        B = info.batch_size
        xb = _batch_first(x, xd, B)
        rb = None if residual is None else _batch_first(residual, rd, B)
        fold = lambda t: t.reshape((B * t.shape[1],) + tuple(t.shape[2:]))  # noqa: E731
        y, z = _SETransformable.apply(fold(xb), w1, b1, w2, b2, None if rb is None else fold(rb),
                                      activation, gate, out_activation)
        return (y.unflatten(0, (B, -1)), z.unflatten(0, (B, -1))), (0, 0)


def _batch_first(t, dim, batch_size):
    return t.unsqueeze(0).expand(batch_size, *t.shape) if dim is None else t.movedim(dim, 0)


def _reference_pair(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    from . import reference  # the oracle also serves as the batched fallback
    y = reference.squeeze_excite(x, w1, b1, w2, b2, activation=activation, gate=gate,
                                 residual=residual,
                                 out_activation=None if out_activation == "none" else "relu")
    return y, x.to(_acc_dtype(x)).mean(dim=(2, 3))


def _tangent(x, y, w1, b1, w2, b2, tx, tw1, tb1, tw2, tb2, tres, activation, gate, out_relu):
    """The forward-mode derivative of y: ty = tx * s + x * ts (+ tres), masked by relu."""
    dt = _acc_dtype(x)
    xf = x.to(dt)
    zero = lambda t, like: torch.zeros_like(like) if t is None else t.to(dt)  # noqa: E731
    w1f, w2f = w1.to(dt), None if w2 is None else w2.to(dt)
    z = xf.mean(dim=(2, 3))
    tz = zero(tx, xf).mean(dim=(2, 3))
    a1, h, a2 = _small_layers(z, w1f, b1, w2f, b2, activation)
    ta1 = tz @ w1f.t() + z @ zero(tw1, w1f).t() + (0 if tb1 is None else tb1.to(dt))
    if w2f is None:  # one layer: a2 is a1
        ta2 = ta1
    else:
        th = ta1 * _act_derivative(activation, a1)
        ta2 = th @ w2f.t() + h @ zero(tw2, w2f).t() + (0 if tb2 is None else tb2.to(dt))
    s = GATES[gate](a2)
    ts = _gate_input_grad(gate, a2, ta2, False)
    ty = zero(tx, xf) * s[:, :, None, None] + xf * ts[:, :, None, None]
    if tres is not None:
        ty = ty + tres.to(dt)
    if out_relu:
        ty = ty * _relu_passes(y)
    return ty.to(x.dtype)
