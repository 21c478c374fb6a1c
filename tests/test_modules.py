"""SEBlock and FusedSEBlock: construction, state_dict, numerics, and from_module.

Tolerances are tests.helpers.TOL, per dtype. bfloat16 results are compared with the
float64 eager block (the plain block run in bfloat16 rounds every step).
"""
import copy
import functools
import warnings

import pytest
import torch
import torch.nn as nn

import se_fused
from se_fused import FusedSEBlock, SEBlock
from se_fused import reference

from .conftest import ACTIVATIONS, GATES
from .helpers import TOL

N, C, H, W = 2, 16, 5, 4


def _x(dtype=torch.float64, channels_last=False, c=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, c, H, W, generator=g, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _randomize(module, seed=1):
    """Non-trivial parameters (default init leaves the gate near 0.5) in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)
    return module


def _run(module, x):
    """Output, grad of x, and grads of module's parameters (by name) for loss = sum(y * w)."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    g = torch.Generator().manual_seed(123)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    (y * w).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return y.detach(), x.grad.detach(), grads


def _assert_same_run(a, b, **tol):
    ya, gxa, gpa = a
    yb, gxb, gpb = b
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(gxa, gxb, **tol)
    assert gpa.keys() == gpb.keys()
    for k in gpa:
        torch.testing.assert_close(gpa[k], gpb[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


# --- construction


@pytest.mark.parametrize("cls", [SEBlock, FusedSEBlock])
@pytest.mark.parametrize("channels,reduction,rd,expected", [
    (64, 16, None, 4), (64, 4, None, 16), (15, 16, None, 1), (1, 16, None, 1),
    (64, 16, 7, 7), (8, 16, 32, 32), (100, 3, None, 33),
])
def test_rd_channels_rule(cls, channels, reduction, rd, expected):
    m = cls(channels, reduction, rd_channels=rd)
    assert m.rd_channels == expected
    assert m.fc1.weight.shape == (expected, channels, 1, 1)
    assert m.fc2.weight.shape == (channels, expected, 1, 1)
    assert m.fc1.bias.shape == (expected,) and m.fc2.bias.shape == (channels,)


@pytest.mark.parametrize("cls", [SEBlock, FusedSEBlock])
def test_constructor_defaults_and_repr(cls):
    m = cls(32)
    assert (m.channels, m.rd_channels, m.activation, m.gate) == (32, 2, "relu", "sigmoid")
    r = repr(cls(32, activation="silu", gate="hardsigmoid"))
    assert "activation='silu'" in r and "gate='hardsigmoid'" in r


@pytest.mark.parametrize("cls", [SEBlock, FusedSEBlock])
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(channels=16, activation="tanh"), ValueError, "activation"),
    (dict(channels=16, gate="tanh"), ValueError, "gate"),
    (dict(channels=16, activation=nn.ReLU), TypeError, "activation"),
    (dict(channels=0), ValueError, "channels"),
    (dict(channels=16.0), TypeError, "channels"),
    (dict(channels=16, rd_channels=0), ValueError, "rd_channels"),
    (dict(channels=16, reduction=0), ValueError, "reduction"),
])
def test_constructor_rejects_bad_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_match_torchvision(bias):
    expected = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] if bias else \
        ["fc1.weight", "fc2.weight"]
    assert list(SEBlock(32, bias=bias).state_dict()) == expected
    assert list(FusedSEBlock(32, bias=bias).state_dict()) == expected
    tv = pytest.importorskip("torchvision")
    if bias:
        assert list(tv.ops.SqueezeExcitation(32, 2).state_dict()) == expected


def test_load_state_dict_both_ways():
    eager = _randomize(SEBlock(24, 4, activation="silu").double())
    fused = FusedSEBlock(24, 4, activation="silu").double()
    fused.load_state_dict(eager.state_dict())
    x = _x(c=24)
    torch.testing.assert_close(fused(x), eager(x), **TOL[torch.float64])
    eager2 = SEBlock(24, 4, activation="silu").double()
    _randomize(fused, seed=7)
    eager2.load_state_dict(fused.state_dict())
    torch.testing.assert_close(eager2(x), fused(x), **TOL[torch.float64])


# --- numerics


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bias", [True, False])
def test_seblock_matches_reference(activation, gate, bias):
    m = _randomize(SEBlock(C, rd_channels=5, activation=activation, gate=gate, bias=bias).double())
    x = _x()
    expected = reference.squeeze_excite(
        x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, activation=activation, gate=gate)
    torch.testing.assert_close(m(x), expected, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_matches_eager(dtype, channels_last, activation, gate, bias):
    eager = _randomize(SEBlock(C, rd_channels=5, activation=activation, gate=gate,
                               bias=bias).to(dtype))
    fused = FusedSEBlock(C, rd_channels=5, activation=activation, gate=gate, bias=bias).to(dtype)
    fused.load_state_dict(eager.state_dict())
    x = _x(dtype, channels_last)
    a, b = _run(eager, x), _run(fused, x)
    _assert_same_run(a, b, **TOL[dtype])
    y = b[0]
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation,gate", [("relu", "sigmoid"), ("silu", "hardsigmoid")])
def test_fused_bfloat16(param_dtype, channels_last, activation, gate):
    """bf16 x, with bf16 parameters or float32 ones (as under AMP), against float64 eager."""
    eager64 = _randomize(SEBlock(C, rd_channels=5, activation=activation, gate=gate).double())
    fused = FusedSEBlock(C, rd_channels=5, activation=activation, gate=gate).to(param_dtype)
    fused.load_state_dict(eager64.state_dict())
    eager64.load_state_dict(fused.state_dict())  # the rounded values, so only compute differs
    eager64.double()
    x = _x(torch.bfloat16, channels_last)
    y, gx, gp = _run(fused, x)
    assert y.dtype == torch.bfloat16 and gx.dtype == torch.bfloat16
    assert all(g.dtype == param_dtype for g in gp.values())
    y64, gx64, gp64 = _run(eager64, x.double())
    tol = TOL[torch.bfloat16]
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(gx.double(), gx64, **tol)
    for k in gp:
        torch.testing.assert_close(gp[k].double(), gp64[k], **tol)


def test_eager_bfloat16_close_to_fused():
    """The plain block run in bf16 and the fused one agree to bf16 accuracy."""
    eager = _randomize(SEBlock(C, rd_channels=5).to(torch.bfloat16))
    fused = FusedSEBlock(C, rd_channels=5).to(torch.bfloat16)
    fused.load_state_dict(eager.state_dict())
    x = _x(torch.bfloat16)
    torch.testing.assert_close(fused(x), eager(x), **TOL[torch.bfloat16])


def test_fused_forward_calls_the_fused_op(monkeypatch):
    calls = []
    real = se_fused.ops.route

    def spy(x, w1, b1, w2, b2, residual, activation, gate, out_activation, inplace, keep_x):
        calls.append((activation, gate, out_activation, inplace))
        return real(x, w1, b1, w2, b2, residual, activation, gate, out_activation, inplace, keep_x)

    monkeypatch.setattr(se_fused.ops, "route", spy)
    m = FusedSEBlock(C, rd_channels=4, activation="silu", gate="hardsigmoid")
    m(_x(torch.float32))
    assert calls == [("silu", "hardsigmoid", "none", False)]


def test_fused_empty_batch():
    m = FusedSEBlock(C, rd_channels=4)
    y = m(torch.randn(0, C, 3, 3))
    assert y.shape == (0, C, 3, 3)


# --- from_module: sources


def _tv():
    return pytest.importorskip("torchvision")


def _timm_layers():
    pytest.importorskip("timm")
    import timm.layers
    return timm.layers


def _timm_se_effnet(**kw):
    pytest.importorskip("timm")
    from timm.models._efficientnet_blocks import SqueezeExcite
    return SqueezeExcite(C, **kw)


def _timm_acts():
    pytest.importorskip("timm")
    from timm.layers import activations, activations_me
    return activations, activations_me


def _timm_senet_se(**kw):
    pytest.importorskip("timm")
    from timm.models.senet import SEModule
    return SEModule(C, **kw)


def _timm_ese():
    pytest.importorskip("timm")
    from timm.models.hgnet import EseModule
    return EseModule(C)


SOURCES = {
    # name: (builder, expected activation, expected gate, conv names)
    "seblock": (lambda: SEBlock(C, rd_channels=5), "relu", "sigmoid", ("fc1", "fc2")),
    "seblock_silu_hard_nobias": (
        lambda: SEBlock(C, rd_channels=5, activation="silu", gate="hardsigmoid", bias=False),
        "silu", "hardsigmoid", ("fc1", "fc2")),
    "fused": (lambda: FusedSEBlock(C, rd_channels=3, gate="hardsigmoid"), "relu", "hardsigmoid",
              ("fc1", "fc2")),
    "tv_default": (lambda: _tv().ops.SqueezeExcitation(C, 5), "relu", "sigmoid", ("fc1", "fc2")),
    "tv_mobilenetv3": (
        lambda: _tv().ops.SqueezeExcitation(C, 8, scale_activation=nn.Hardsigmoid),
        "relu", "hardsigmoid", ("fc1", "fc2")),
    "tv_efficientnet": (lambda: _tv().ops.SqueezeExcitation(C, 4, activation=nn.SiLU),
                        "silu", "sigmoid", ("fc1", "fc2")),
    "timm_semodule": (lambda: _timm_layers().SEModule(C, rd_channels=4), "relu", "sigmoid",
                      ("fc1", "fc2")),
    "timm_semodule_silu_hard_nobias": (
        lambda: _timm_layers().SEModule(C, rd_ratio=0.25, act_layer="swish",
                                        gate_layer="hard_sigmoid", bias=False),
        "silu", "hardsigmoid", ("fc1", "fc2")),
    "timm_squeezeexcite_alias": (lambda: _timm_layers().SqueezeExcite(C, rd_channels=6),
                                 "relu", "sigmoid", ("fc1", "fc2")),
    "timm_effnet_silu": (lambda: _timm_se_effnet(rd_ratio=0.25, act_layer=nn.SiLU),
                         "silu", "sigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_mobilenetv3": (
        lambda: _timm_se_effnet(rd_channels=8, act_layer=nn.ReLU, gate_layer="hard_sigmoid"),
        "relu", "hardsigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_swish_sigmoid": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=_timm_acts()[0].Swish,
                                gate_layer=_timm_acts()[0].Sigmoid),
        "silu", "sigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_swishme_hardsigmoid": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=_timm_acts()[1].SwishMe,
                                gate_layer=_timm_acts()[0].HardSigmoid),
        "silu", "hardsigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_hardsigmoidme": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=nn.ReLU,
                                gate_layer=_timm_acts()[1].HardSigmoidMe),
        "relu", "hardsigmoid", ("conv_reduce", "conv_expand")),
    "timm_senet_semodule": (lambda: _timm_senet_se(reduction=4), "relu", "sigmoid",
                            ("fc1", "fc2")),
    "timm_effective_se": (lambda: _timm_layers().EffectiveSEModule(C), None, "hardsigmoid",
                          ("fc", None)),
    "timm_effective_se_sigmoid": (
        lambda: _timm_layers().EffectiveSEModule(C, gate_layer="sigmoid"), None, "sigmoid",
        ("fc", None)),
    "timm_hgnet_ese": (_timm_ese, None, "sigmoid", ("conv", None)),
    "fused_one_layer": (lambda: FusedSEBlock.from_module(_timm_ese()), None, "sigmoid",
                        ("conv", None)),
    "tv_hardswish": (lambda: _tv().ops.SqueezeExcitation(C, 4, activation=nn.Hardswish),
                     "hardswish", "sigmoid", ("fc1", "fc2")),
    "tv_gelu_hardsigmoid": (
        lambda: _tv().ops.SqueezeExcitation(C, 4, activation=nn.GELU,
                                             scale_activation=nn.Hardsigmoid),
        "gelu", "hardsigmoid", ("fc1", "fc2")),
    "timm_semodule_gelu": (lambda: _timm_layers().SEModule(C, rd_channels=4, act_layer="gelu"),
                           "gelu", "sigmoid", ("fc1", "fc2")),
    "timm_effnet_hardswish": (lambda: _timm_se_effnet(rd_channels=4, act_layer=nn.Hardswish),
                              "hardswish", "sigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_hardswish": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=_timm_acts()[0].HardSwish,
                                gate_layer="hard_sigmoid"),
        "hardswish", "hardsigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_hardswishme": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=_timm_acts()[1].HardSwishMe),
        "hardswish", "sigmoid", ("conv_reduce", "conv_expand")),
    "timm_effnet_timm_gelu": (
        lambda: _timm_se_effnet(rd_channels=4, act_layer=_timm_acts()[0].GELU),
        "gelu", "sigmoid", ("conv_reduce", "conv_expand")),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_from_module_shares_parameters(source):
    build, activation, gate, (r, e) = SOURCES[source]
    src = _randomize(build())
    src.eval()
    fused = FusedSEBlock.from_module(src)
    assert type(fused) is FusedSEBlock
    assert (fused.activation, fused.gate) == (activation, gate)
    assert "activation=" in repr(fused) and "gate=" in repr(fused)
    assert not fused.training
    # the same conv modules, so the same Parameter objects, under the same names
    assert getattr(fused, r) is getattr(src, r)
    assert e is None or getattr(fused, e) is getattr(src, e)
    src_params, fused_params = dict(src.named_parameters()), dict(fused.named_parameters())
    assert list(src_params) == list(fused_params)
    for name in src_params:
        assert fused_params[name] is src_params[name]
    sd_src, sd_fused = src.state_dict(), fused.state_dict()
    assert list(sd_src) == list(sd_fused)
    for k in sd_src:
        assert sd_fused[k].data_ptr() == sd_src[k].data_ptr()
        assert torch.equal(sd_fused[k], sd_src[k])
    # updates through either are seen by both
    with torch.no_grad():
        getattr(src, r).weight.add_(1.0)
    assert torch.equal(getattr(fused, r).weight, getattr(src, r).weight)


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_from_module_matches_source(source, dtype, channels_last):
    """Forward, grad of x and grads of every parameter, against the unswapped module."""
    build, *_ = SOURCES[source]
    src = _randomize(build()).to(dtype)
    fused = FusedSEBlock.from_module(src)
    x = _x(dtype, channels_last=channels_last)
    expected = _run(src, x)
    got = _run(fused, x)
    _assert_same_run(expected, got, **TOL[dtype])


def test_from_module_keeps_training_mode():
    src = SEBlock(C).train()
    assert FusedSEBlock.from_module(src).training
    assert not FusedSEBlock.from_module(src.eval()).training


@pytest.mark.parametrize("name,kind", [
    ("relu", "relu"), ("silu", "silu"), ("swish", "silu"),
    ("sigmoid", "sigmoid"), ("hard_sigmoid", "hardsigmoid"), ("hardsigmoid", "hardsigmoid"),
])
@pytest.mark.parametrize("exportable", [False, True], ids=["default", "exportable"])
def test_from_module_recognises_timm_act_layers(name, kind, exportable):
    """Whatever class timm's get_act_layer gives for a name (its memory-efficient
    variants by default, the plain ones when exporting) is recognised by its math."""
    _timm_layers()
    from timm.layers import get_act_layer, set_layer_config
    from timm.models._efficientnet_blocks import SqueezeExcite
    with set_layer_config(exportable=exportable):
        layer = get_act_layer(name)
        if kind in ("relu", "silu"):
            src = SqueezeExcite(C, rd_channels=4, act_layer=layer)
        else:
            src = SqueezeExcite(C, rd_channels=4, gate_layer=layer)
    fused = FusedSEBlock.from_module(_randomize(src.double()))
    assert (fused.activation if kind in ("relu", "silu") else fused.gate) == kind
    _assert_same_run(_run(src, _x()), _run(fused, _x()), **TOL[torch.float64])


# --- from_module: unsupported


def _tv_se(**kw):
    return _tv().ops.SqueezeExcitation(C, 4, **kw)


def _with(module, **attrs):
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


class _MySE(SEBlock):
    def forward(self, x):
        return 2 * super().forward(x)


UNSUPPORTED = {
    # name: (builder, exception type, regex the message must match)
    "tv_gelu_tanh": (lambda: _tv_se(activation=functools.partial(nn.GELU, approximate="tanh")),
                     ValueError, "approximate='tanh'"),
    "tv_relu6": (lambda: _tv_se(activation=nn.ReLU6), ValueError, "ReLU6"),
    "tv_tanh_gate": (lambda: _tv_se(scale_activation=nn.Tanh), ValueError, "Tanh"),
    "tv_sigmoid_as_activation": (lambda: _tv_se(activation=nn.Sigmoid), ValueError, "Sigmoid"),
    "tv_relu_as_gate": (lambda: _tv_se(scale_activation=nn.ReLU), ValueError, "ReLU"),
    "tv_maxpool": (lambda: _with(_tv_se(), avgpool=nn.AdaptiveMaxPool2d(1)), ValueError,
                   "avgpool"),
    "tv_3x3_conv": (lambda: _with(_tv_se(), fc1=nn.Conv2d(C, 4, 3, padding=1)), ValueError,
                    "kernel_size"),
    "tv_grouped_conv": (lambda: _with(_tv_se(), fc1=nn.Conv2d(C, 4, 1, groups=4)), ValueError,
                        "groups"),
    "tv_conv_channel_mismatch": (lambda: _with(_tv_se(), fc2=nn.Conv2d(4, C + 1, 1)),
                                 ValueError, "channels"),
    "tv_linear_not_conv": (lambda: _with(_tv_se(), fc1=nn.Linear(C, 4)), ValueError,
                           "Conv2d"),
    "timm_semodule_groupnorm": (lambda: _timm_layers().SEModule(
        C, rd_channels=4, norm_layer=functools.partial(nn.GroupNorm, 1)), ValueError, "norm"),
    "timm_semodule_add_maxpool": (lambda: _timm_layers().SEModule(C, rd_channels=4,
                                                                  add_maxpool=True),
                                  ValueError, "add_maxpool"),
    "timm_semodule_gelu_tanh": (lambda: _timm_layers().SEModule(C, rd_channels=4,
                                                                act_layer="gelu_tanh"),
                                ValueError, "GELUTanh"),
    "timm_effective_add_maxpool": (lambda: _timm_layers().EffectiveSEModule(C, add_maxpool=True),
                                   ValueError, "add_maxpool"),
    "timm_semodule_tanh_gate": (lambda: _timm_layers().SEModule(C, rd_channels=4,
                                                                gate_layer="tanh"),
                                ValueError, "Tanh"),
    "timm_effnet_mish": (lambda: _timm_se_effnet(rd_channels=4, act_layer="mish"),
                         ValueError, "Mish"),
    "timm_effnet_prelu": (lambda: _timm_se_effnet(rd_channels=4, act_layer="prelu"),
                          ValueError, "PReLU"),
    "subclass_overriding_forward": (lambda: _MySE(C), ValueError, "forward"),
    "not_an_se_module": (lambda: nn.Conv2d(C, C, 1), TypeError, "unsupported module type"),
    "not_a_module": (lambda: (lambda x: x), TypeError, "nn.Module"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_from_module_rejects_unsupported(case):
    build, exc, match = UNSUPPORTED[case]
    src = build()
    with pytest.raises(exc, match=match):
        FusedSEBlock.from_module(src)


def test_from_module_rejects_hooks():
    src = SEBlock(C)
    handle = src.register_forward_hook(lambda m, i, o: o)
    with pytest.raises(ValueError, match="hooks"):
        FusedSEBlock.from_module(src)
    handle.remove()
    handle = src.fc1.register_forward_pre_hook(lambda m, i: None)
    with pytest.raises(ValueError, match="hooks"):
        FusedSEBlock.from_module(src)
    handle.remove()
    FusedSEBlock.from_module(src)


def test_from_module_of_copy_is_independent():
    src = _randomize(SEBlock(C, rd_channels=4).double())
    fused = copy.deepcopy(FusedSEBlock.from_module(src))
    assert fused.fc1.weight is not src.fc1.weight
    torch.testing.assert_close(fused(_x()), src(_x()), **TOL[torch.float64])


@pytest.mark.parametrize("source", ["seblock", "timm_effnet_mobilenetv3", "timm_effective_se",
                                    "tv_gelu_hardsigmoid"])
def test_fused_block_compiles_without_graph_break(source):
    build, *_ = SOURCES[source]
    src = _randomize(build())
    fused = FusedSEBlock.from_module(src)
    fused.compile(backend="aot_eager", fullgraph=True)  # in place: parameter names unchanged
    x = _x(torch.float32)
    _assert_same_run(_run(fused, x), _run(src, x), **TOL[torch.float32])


def test_from_module_with_parametrized_conv():
    """A weight parametrization (here weight_norm) lives in the conv module, which the
    fused block holds and reads .weight from, so it keeps working and keeps its keys."""
    from torch.nn.utils.parametrizations import weight_norm
    src = _randomize(SEBlock(C, rd_channels=4).double())
    weight_norm(src.fc1)
    fused = FusedSEBlock.from_module(src)
    assert list(fused.state_dict()) == list(src.state_dict())
    assert "fc1.parametrizations.weight.original0" in fused.state_dict()
    _assert_same_run(_run(src, _x()), _run(fused, _x()), **TOL[torch.float64])


# --- from_module: a norm layer between the layers (timm SEModule with bn, as in ReXNet)


def _se_with_bn(seed=1):
    """timm SEModule with a BatchNorm2d, random parameters and running statistics."""
    src = _randomize(_timm_layers().SEModule(C, rd_channels=5, norm_layer=nn.BatchNorm2d),
                     seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        src.bn.running_mean.copy_(torch.randn(5, generator=g, dtype=torch.float64))
        src.bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
    return src


def _count_op_calls(monkeypatch):
    calls = []
    real = se_fused.ops.route

    def spy(*args):
        calls.append(args[6])
        return real(*args)

    monkeypatch.setattr(se_fused.ops, "route", spy)
    return calls


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_norm_folded_into_fc1_in_eval_mode(dtype, channels_last, monkeypatch):
    src = _se_with_bn().to(dtype).eval()
    fused = FusedSEBlock.from_module(src)
    assert fused.bn is src.bn and fused.fc1 is src.fc1
    assert list(fused.state_dict()) == list(src.state_dict())
    x = _x(dtype, channels_last)
    expected = _run(src, x)
    calls = _count_op_calls(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _run(fused, x)
    assert calls == ["relu"]  # one fused call
    _assert_same_run(expected, got, **TOL[dtype])  # bn.weight and bn.bias grads included


def test_norm_fold_reads_the_norm_at_each_call():
    src = _se_with_bn().eval()
    fused = FusedSEBlock.from_module(src)
    fused(_x())
    with torch.no_grad():
        src.bn.running_mean.add_(0.5)
        src.bn.running_var.mul_(2.0)
        src.bn.weight.mul_(-1.5)
        src.bn.bias.add_(1.0)
    torch.testing.assert_close(fused(_x()), src(_x()), **TOL[torch.float64])


def test_norm_in_train_mode_runs_unfused_and_trains_the_norm(monkeypatch):
    src = _se_with_bn().train()
    reference = copy.deepcopy(src)
    fused = FusedSEBlock.from_module(src)
    assert fused.training
    calls = _count_op_calls(monkeypatch)
    with pytest.warns(UserWarning, match="unfused.*batch statistics"):
        got = _run(fused, _x())
    assert calls == []
    _assert_same_run(_run(reference, _x()), got, **TOL[torch.float64])
    # the norm's running statistics are updated as the source's would be
    torch.testing.assert_close(src.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(src.bn.running_var, reference.bn.running_var)
    assert src.bn.num_batches_tracked.item() == reference.bn.num_batches_tracked.item() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        fused(_x(seed=3))
        reference(_x(seed=3))
    # back in eval mode, fused again, with the statistics training left
    fused.eval()
    reference.eval()
    torch.testing.assert_close(fused(_x()), reference(_x()), **TOL[torch.float64])
    assert calls == ["relu"]


def test_norm_without_running_stats_runs_unfused():
    src = _timm_layers().SEModule(C, rd_channels=4, norm_layer=functools.partial(
        nn.BatchNorm2d, track_running_stats=False)).double().eval()
    fused = FusedSEBlock.from_module(_randomize(src))
    with pytest.warns(UserWarning, match="unfused"):
        torch.testing.assert_close(fused(_x()), src(_x()), **TOL[torch.float64])


def test_norm_folded_block_compiles_without_graph_break():
    src = _se_with_bn().float().eval()
    fused = FusedSEBlock.from_module(src)
    fused.compile(backend="aot_eager", fullgraph=True)
    x = _x(torch.float32)
    _assert_same_run(_run(fused, x), _run(src, x), **TOL[torch.float32])
