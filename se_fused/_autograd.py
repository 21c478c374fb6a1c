"""Autograd for se_forward: three ways in, one set of backward formulas.

- se_forward through torch.library.register_autograd (setup_context, backward,
  registered by _lib.py): training, torch.compile, opcheck, torch.jit.trace;
- ChosenSave, an autograd.Function around se_forward_ (register_autograd refuses
  mutating ops): inplace=True under eager autograd, and a compiled call that must keep x;
- Transformable, an autograd.Function with setup_context, jvp and vmap: torch.func
  transforms and forward-mode AD (torch.compile refuses a custom jvp, so it never sees
  this one).

The y-only backward: without an epilogue, y = x * s, and sum_hw g * y = s * sum_hw g * x,
so the gate's backward needs no x (se_common.h, gate_input_grad). Saving y instead of x
frees x, which usually nothing else keeps. z is then a differentiable output, so that
a double backward written in y and z reaches x through them.

pre, the forward's [a1 | a2] (N x (R + C) floats), is saved too and handed to the fused
backward, which then skips recomputing both small layers. It is not differentiable:
a double backward (backward_composite) recomputes a1 and a2 from z and the weights,
so that their dependence on them is in the graph.
"""
import contextlib
import math
import threading

import torch

from . import reference
from ._names import ACTIVATIONS, GATES, acc_dtype

_ops = torch.ops.se_fused  # resolved at call time; _lib.py loads the library

_state = threading.local()


@contextlib.contextmanager
def keeping_x():
    """se_forward's autograd keeps x within it, even where y would do: for a caller
    whose y may be modified in place later (FusedSEBlock, see modules.py). A flag
    rather than an op argument, so the recorded op (torch.jit.trace) is the same
    whatever is kept; setup_context runs inside the call, so the flag reaches it."""
    _state.keep_x = True
    try:
        yield
    finally:
        _state.keep_x = False


def _saves_y(x: torch.Tensor, residual, out_activation: str, gate: str) -> bool:
    """Whether the backward works from y: no epilogue, and y keeps enough precision.

    float16 with the hardsigmoid gate keeps x: near a2 = -3 the gate is tiny, y = x * s
    falls into float16's subnormals, and dividing by s (= (a2 + 3) / 6) would amplify
    their rounding error beyond float16's tolerance."""
    if residual is not None or out_activation != "none":
        return False
    return not (x.dtype == torch.float16 and gate == "hardsigmoid")


def keeps_x(x, gate, keep_x) -> bool:
    return keep_x or not _saves_y(x, None, "none", gate)


def _remember(ctx, inputs):
    """Keeps on ctx what a backward of se_forward's inputs needs besides tensors."""
    _, _, b1, _, b2, residual, activation, gate, out_activation = inputs
    ctx.set_materialize_grads(False)
    ctx.activation, ctx.gate = activation, gate
    ctx.out_relu = out_activation == "relu"
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.has_residual = residual is not None


def setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation, gate, out_activation = inputs
    y, z, pre = output
    ctx.mark_non_differentiable(pre)
    _remember(ctx, inputs)
    keep_x = getattr(_state, "keep_x", False)
    ctx.from_y = not keep_x and _saves_y(x, residual, out_activation, gate)
    if ctx.from_y:
        ctx.save_for_backward(y, z, None, pre, w1, b1, w2, b2)
    else:
        ctx.mark_non_differentiable(z)
        ctx.save_for_backward(x, z, y if ctx.out_relu else None, pre, w1, b1, w2, b2)


def backward(ctx, grad_y, grad_z, _grad_pre):
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
        grads = backward_composite(grad_y, v, z if from_y else None, y, w1, b1, w2, b2,
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


def backward_composite(grad_y, v, z, y, w1, b1, w2, b2, activation, gate):
    """The backward of se_forward written with differentiable PyTorch ops.

    Same outputs as torch.ops.se_fused.se_backward. With z None, v is x and z is
    recomputed from it; with z given, v is y = x * s (the y-only backward), and x
    is reached through y and z, both differentiable outputs of the forward.
    s is recomputed from z and the weights so its dependence on them is in the graph.
    y, when given, is the output-relu mask's source."""
    dt = acc_dtype(v.dtype)
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


class ChosenSave(torch.autograd.Function):
    """A call without epilogue that chooses what its backward keeps: inplace=True under
    eager autograd (register_autograd refuses mutating ops), and keep_x under
    torch.compile (where keeping_x's flag is gone by the time setup_context is traced).

    It keeps y (the y-only backward) unless keep_x is set or y cannot serve (_saves_y);
    then x, or in place a copy of x taken before it is overwritten: correct, but
    without the memory saving."""

    @staticmethod
    def forward(x, w1, b1, w2, b2, activation, gate, inplace, keep_x):
        if inplace:
            x_copy = x.clone() if keeps_x(x, gate, keep_x) else None
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
        ctx.from_y = not keeps_x(x, gate, keep_x)
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


class Transformable(torch.autograd.Function):
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
        x, w1, b1, w2, b2 = inputs[:5]
        y, z = output
        ctx.mark_non_differentiable(z)
        _remember(ctx, inputs)
        ctx.save_for_backward(x, y if ctx.out_relu else None, w1, b1, w2, b2)
        ctx.save_for_forward(x, y, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad_y, _grad_z):
        x, y, w1, b1, w2, b2 = ctx.saved_tensors
        if grad_y is None:
            return (None,) * 9
        grads = backward_composite(grad_y, x, None, y, w1, b1, w2, b2, ctx.activation,
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
            y, z = torch.vmap(reference_pair, in_dims=in_dims, out_dims=0)(
                x, w1, b1, w2, b2, residual, activation, gate, out_activation)
            return (y, z), (0, 0)
        B = info.batch_size
        xb = _batch_first(x, xd, B)
        rb = None if residual is None else _batch_first(residual, rd, B)
        fold = lambda t: t.reshape((B * t.shape[1],) + tuple(t.shape[2:]))  # noqa: E731
        y, z = Transformable.apply(fold(xb), w1, b1, w2, b2, None if rb is None else fold(rb),
                                   activation, gate, out_activation)
        return (y.unflatten(0, (B, -1)), z.unflatten(0, (B, -1))), (0, 0)


def _batch_first(t, dim, batch_size):
    return t.unsqueeze(0).expand(batch_size, *t.shape) if dim is None else t.movedim(dim, 0)


def reference_pair(x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    """(y, z) by the oracle: vmap's fallback for per-sample weights, and what the dynamo
    ONNX exporter sees."""
    y = reference.squeeze_excite(x, w1, b1, w2, b2, activation=activation, gate=gate,
                                 residual=residual,
                                 out_activation=None if out_activation == "none" else "relu")
    return y, x.to(acc_dtype(x.dtype)).mean(dim=(2, 3))


def _tangent(x, y, w1, b1, w2, b2, tx, tw1, tb1, tw2, tb2, tres, activation, gate, out_relu):
    """The forward-mode derivative of y: ty = tx * s + x * ts (+ tres), masked by relu."""
    dt = acc_dtype(x.dtype)
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
