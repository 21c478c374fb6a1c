"""Forward-mode AD and torch.func transforms through the fused op, against the reference:
jvp / forward_ad tangents, grad, vjp, jacrev, hessian, vmap (one fused call for the
whole vmapped batch) and per-sample gradients vmap(grad(...))."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import se_fused
from se_fused import reference

from .conftest import LAYOUTS
from .helpers import TOL

DT = torch.float64
# PyTorch's hardsigmoid uses the float constant 1/6 even in float64 (helpers.TOL says why).
CONFIGS = {
    "relu-sigmoid": dict(),
    "silu-hardsigmoid": dict(activation="silu", gate="hardsigmoid"),
    "residual-relu": dict(residual=True, out_activation="relu"),
    "silu-sigmoid-residual": dict(activation="silu", residual=True),
    "hardswish-sigmoid": dict(activation="hardswish"),
    "gelu-hardsigmoid-residual-relu": dict(activation="gelu", gate="hardsigmoid", residual=True,
                                           out_activation="relu"),
    # w2 = b2 = None, w1 (C, C): the parameters are (w1, b1) only
    "one-layer": dict(one_layer=True),
    "one-layer-hardsigmoid-residual": dict(one_layer=True, gate="hardsigmoid", residual=True),
}


def _inputs(config, layout=torch.contiguous_format, N=2, C=6, H=3, W=4, R=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=DT) * scale  # noqa: E731
    x = rnd(N, C, H, W).contiguous(memory_format=layout)
    kw = dict(CONFIGS[config])
    if kw.pop("one_layer", False):
        params = (rnd(C, C, scale=0.5), rnd(C))
    else:
        params = (rnd(R, C, scale=0.5), rnd(R), rnd(C, R, scale=0.5), rnd(C))
    if kw.pop("residual", False):
        kw["residual"] = rnd(N, C, H, W).contiguous(memory_format=layout)
    return x, params, kw


def _fns(kw):
    """The fused op and the reference as functions of (x, w1, b1, w2, b2), or of
    (x, w1, b1) in the one-layer form (w2 = b2 = None)."""
    def bind(op):
        def f(x, *params, **more):
            params = params + (None,) * (4 - len(params))
            return op(x, *params, **kw, **more)
        return f
    return bind(se_fused.squeeze_excite), bind(reference.squeeze_excite)


def _argnums(params, wanted):
    """The argnums of (x, *params) among `wanted` that exist (the one-layer form has
    no w2, b2)."""
    return tuple(a for a in wanted if a <= len(params))


def _close(a, b, what):
    torch.testing.assert_close(a, b, **TOL[DT], msg=lambda m: f"{what}: {m}")


def _tree_close(a, b, what):
    for i, (p, q) in enumerate(zip(a, b)):
        _close(p, q, f"{what}[{i}]")


def _loss(f):
    return lambda *p: (f(*p) ** 2).sum()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_jvp_tangent_matches_reference_for_every_input(config, layout):
    x, params, kw = _inputs(config, LAYOUTS[layout])
    fused, ref = _fns(kw)
    primals = (x, *params)
    g = torch.Generator().manual_seed(5)
    tangents = tuple(torch.randn(p.shape, generator=g, dtype=DT) for p in primals)
    y, ty = jvp(fused, primals, tangents)
    y_ref, ty_ref = jvp(ref, primals, tangents)
    _close(y, y_ref, "y")
    assert ty.abs().max() > 0
    _close(ty, ty_ref, "tangent")


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_ad_dual_tangent_matches_reference(config):
    x, params, kw = _inputs(config)
    fused, ref = _fns(kw)
    # x and the last weight (w2, or w1 in the one-layer form) carry tangents
    k = len(params) - 2
    tx = torch.randn_like(x)
    tw = torch.randn_like(params[k])
    results = []
    for f in (fused, ref):
        with fwAD.dual_level():
            xd = fwAD.make_dual(x, tx)
            wd = fwAD.make_dual(params[k], tw)
            out = f(xd, *params[:k], wd, *params[k + 1:])
            tangent = fwAD.unpack_dual(out).tangent
        assert tangent is not None, "forward AD dropped the tangent"
        results.append(tangent)
    _close(results[0], results[1], "tangent")


def test_forward_ad_tangent_of_residual_alone():
    x, params, kw = _inputs("residual-relu")
    fused, ref = _fns({k: v for k, v in kw.items() if k != "residual"})
    tr = torch.randn_like(kw["residual"])
    tangents = []
    for f in (fused, ref):
        with fwAD.dual_level():
            r = fwAD.make_dual(kw["residual"], tr)
            tangents.append(fwAD.unpack_dual(f(x, *params, residual=r)).tangent)
    _close(tangents[0], tangents[1], "tangent")


@pytest.mark.parametrize("config", CONFIGS)
def test_func_grad_and_vjp_match_reference(config):
    x, params, kw = _inputs(config)
    fused, ref = _fns(kw)
    argnums = tuple(range(len(params) + 1))
    _tree_close(grad(_loss(fused), argnums=argnums)(x, *params),
                grad(_loss(ref), argnums=argnums)(x, *params), "grad")
    y, pullback = vjp(fused, x, *params)
    y_ref, pullback_ref = vjp(ref, x, *params)
    ct = torch.randn_like(y)
    _tree_close(pullback(ct), pullback_ref(ct), "vjp")


@pytest.mark.parametrize("config", CONFIGS)
def test_jacrev_and_jacfwd_match_reference(config):
    x, params, kw = _inputs(config, N=1, C=4, H=2, W=3, R=2)
    fused, ref = _fns(kw)
    for argnum in _argnums(params, (0, 1, 3)):
        _close(jacrev(fused, argnums=argnum)(x, *params),
               jacrev(ref, argnums=argnum)(x, *params), f"jacrev {argnum}")
        _close(jacfwd(fused, argnums=argnum)(x, *params),
               jacrev(ref, argnums=argnum)(x, *params), f"jacfwd {argnum}")


@pytest.mark.parametrize("config", CONFIGS)
def test_hessian_matches_reference(config, monkeypatch):
    # The fused op's hessian is torch.func.hessian (jacfwd over jacrev). PyTorch's
    # hardsigmoid has no second derivative at all, so the reference's is taken
    # reverse-over-reverse with hardsigmoid spelled as a clamp (same values and slopes).
    x, params, kw = _inputs(config, N=1, C=4, H=2, W=3, R=2)
    fused, ref = _fns(kw)
    for argnum in _argnums(params, (0, 1, 2, 4)):
        h = hessian(_loss(fused), argnums=argnum)(x, *params)
        with monkeypatch.context() as m:
            m.setitem(se_fused._names.GATES, "hardsigmoid",
                      lambda v: torch.clamp(v / 6 + 0.5, 0, 1))
            h_ref = jacrev(jacrev(_loss(ref), argnums=argnum), argnums=argnum)(x, *params)
        _close(h, h_ref, f"hessian {argnum}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_per_sample_gradients_vmap_grad(config, layout):
    x, params, kw = _inputs(config, LAYOUTS[layout], N=5)
    residual = kw.pop("residual", None)
    fused, ref = _fns(kw)

    def per_sample(f):
        def loss(p, xi, ri):
            out = f(xi[None], *p) if ri is None else f(xi[None], *p, residual=ri[None])
            return (out ** 2).sum()
        if residual is None:
            return vmap(grad(lambda p, xi: loss(p, xi, None)), in_dims=(None, 0))(params, x)
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, residual)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(fallback|performance).*")
        got = per_sample(fused)
    expected = per_sample(ref)
    for name, a, b in zip(("w1", "b1", "w2", "b2"), got, expected):
        assert a.shape[0] == 5
        _close(a, b, f"per-sample grad {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("config", ["relu-sigmoid", "gelu-hardsigmoid-residual-relu",
                                    "one-layer"])
def test_vmap_folds_into_one_fused_call(layout, config, monkeypatch):
    x, params, kw = _inputs(config, LAYOUTS[layout], N=3)
    kw.pop("residual", None)
    fused, ref = _fns(kw)
    xb = torch.stack([x, 2 * x, -x, x + 1]).contiguous()
    if layout == "channels_last":
        xb = xb.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    calls = []
    real = torch.ops.se_fused.se_forward

    class Spy:
        def __getattr__(self, name):
            op = getattr(torch.ops.se_fused, name)
            if name != "se_forward":
                return op

            def spy(*args):
                calls.append(tuple(args[0].shape))
                return real(*args)
            return spy

    monkeypatch.setattr(se_fused._autograd, "_ops", Spy())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(fallback|performance).*")
        y = vmap(fused, in_dims=(0,) + (None,) * len(params))(xb, *params)
    assert calls == [(12, 6, 3, 4)], calls
    expected = torch.stack([ref(xi, *params) for xi in xb])
    _close(y, expected, "vmap")


def test_vmap_over_residual_only_and_over_a_middle_dim():
    x, params, kw = _inputs("residual-relu", N=2)
    rb = torch.randn(3, *x.shape, dtype=DT)
    f = lambda r: se_fused.squeeze_excite(x, *params, residual=r, out_activation="relu")  # noqa: E731
    y = vmap(f)(rb)
    expected = torch.stack([reference.squeeze_excite(x, *params, residual=r, out_activation="relu")
                            for r in rb])
    _close(y, expected, "vmap over residual")
    xb = torch.randn(2, 4, *x.shape[1:], dtype=DT)  # vmapped dim 1 of a (N, B, C, H, W) tensor
    y = vmap(lambda xi: se_fused.squeeze_excite(xi, *params), in_dims=1)(xb)
    expected = torch.stack([reference.squeeze_excite(xb[:, i], *params) for i in range(4)])
    _close(y, expected, "vmap over dim 1")


def test_vmap_with_per_sample_weights_matches_reference():
    x, params, _ = _inputs("relu-sigmoid")
    w1b = torch.randn(4, *params[0].shape, dtype=DT)
    f = lambda w1: se_fused.squeeze_excite(x, w1, *params[1:])  # noqa: E731
    y = vmap(f)(w1b)
    expected = torch.stack([reference.squeeze_excite(x, w, *params[1:]) for w in w1b])
    _close(y, expected, "vmap over w1")


def test_plain_autograd_and_inference_still_take_the_registered_op():
    # Transforms must not leak into ordinary calls: autograd goes through the op's
    # registered autograd (its node), inference records no graph.
    x, params, _ = _inputs("relu-sigmoid")
    x.requires_grad_()
    y = se_fused.squeeze_excite(x, *params)
    assert "se_fused_se_forward" in type(y.grad_fn).__name__
    with torch.no_grad():
        assert se_fused.squeeze_excite(x, *params).grad_fn is None
