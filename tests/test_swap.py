"""replace_se_blocks on small hand-made models holding every kind of SE module.

Outputs and gradients are compared in float64, with tests.helpers.TOL.
"""
import copy
import functools
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import se_fused
from se_fused import FusedSEBlock, SEBlock, replace_se_blocks

tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
from timm.layers import SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402

from .helpers import TOL as HELPER_TOL  # noqa: E402
from .helpers import assert_close_scaled  # noqa: E402

TOL = HELPER_TOL[torch.float64]
C = 16


class Block(nn.Module):
    def __init__(self, se):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.se = se

    def forward(self, x):
        return torch.relu(self.se(self.conv(x)))


class Net(nn.Module):
    """One of each supported SE kind, in plain attributes, Sequential, ModuleList, ModuleDict."""

    def __init__(self, extra=None):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.se = SEBlock(C, 4, activation="silu")
        self.seq = nn.Sequential(
            Block(tv.ops.SqueezeExcitation(C, 4)),
            Block(tv.ops.SqueezeExcitation(C, 8, scale_activation=nn.Hardsigmoid)),
            tv.ops.SqueezeExcitation(C, 4, activation=nn.SiLU),
        )
        self.blocks = nn.ModuleList([
            Block(SEModule(C, rd_channels=4)),
            Block(SqueezeExcite(C, rd_ratio=0.25, act_layer=nn.SiLU)),
        ])
        self.heads = nn.ModuleDict({"mnv3": SqueezeExcite(C, rd_channels=8,
                                                          gate_layer="hard_sigmoid")})
        self.extra = nn.Sequential() if extra is None else extra
        self.fc = nn.Linear(C, 5)

    def forward(self, x):
        x = self.se(self.stem(x))
        x = self.seq(x)
        for b in self.blocks:
            x = b(x)
        x = self.extra(self.heads["mnv3"](x))
        return self.fc(x.mean((2, 3)))


N_SE = 7  # SE modules in Net


def _net(extra=None, seed=0):
    torch.manual_seed(seed)
    return Net(extra).double()


def _x():
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _fused_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, FusedSEBlock)]


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def test_swaps_every_supported_kind():
    model = _net()
    before = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unsupported here: no warning
        out = replace_se_blocks(model)
    assert out is model
    names = _fused_names(model)
    assert sorted(names) == sorted(["se", "seq.0.se", "seq.1.se", "seq.2", "blocks.0.se",
                                    "blocks.1.se", "heads.mnv3"])
    assert len(names) == N_SE
    expected = {"se": ("silu", "sigmoid"), "seq.0.se": ("relu", "sigmoid"),
                "seq.1.se": ("relu", "hardsigmoid"), "seq.2": ("silu", "sigmoid"),
                "blocks.0.se": ("relu", "sigmoid"), "blocks.1.se": ("silu", "sigmoid"),
                "heads.mnv3": ("relu", "hardsigmoid")}
    mods = dict(model.named_modules())
    for name, (act, gate) in expected.items():
        assert (mods[name].activation, mods[name].gate) == (act, gate), name
    # every other module, the SE blocks' convs included, is the same object as before;
    # only the SE blocks' parameterless activation/gate/pool children are gone
    for name, m in before.items():
        if name in names:
            continue
        if name in mods:
            assert mods[name] is m, name
        else:
            assert any(name.startswith(s + ".") for s in names), name
            assert not list(m.parameters()) and not list(m.buffers()), name


def test_state_dict_unchanged_and_parameters_shared():
    model = _net()
    params_before = dict(model.named_parameters())
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    replace_se_blocks(model)
    sd_after = model.state_dict()
    assert list(sd_after) == list(sd_before)
    for k in sd_before:
        assert torch.equal(sd_after[k], sd_before[k]), k
    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    for k in params_before:
        assert params_after[k] is params_before[k], k


def test_outputs_and_gradients_unchanged():
    model = _net()
    reference = copy.deepcopy(model)
    replace_se_blocks(model)
    for train in (True, False):
        model.train(train)
        reference.train(train)
        out_ref, g_ref = _grads(reference, _x())
        out, g = _grads(model, _x())
        torch.testing.assert_close(out, out_ref, **TOL)
        assert g.keys() == g_ref.keys()
        for k in g:
            torch.testing.assert_close(g[k], g_ref[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")


def test_checkpoints_load_before_and_after_swap(tmp_path):
    # a checkpoint saved before the swap loads into a swapped model ...
    original = _net(seed=0)
    torch.save(original.state_dict(), tmp_path / "before.pt")
    swapped = replace_se_blocks(_net(seed=1))
    swapped.load_state_dict(torch.load(tmp_path / "before.pt"), strict=True)
    torch.testing.assert_close(swapped(_x()), original(_x()), **TOL)
    # ... and one saved after the swap loads into a model that was never swapped
    source = replace_se_blocks(_net(seed=2))
    torch.save(source.state_dict(), tmp_path / "after.pt")
    plain = _net(seed=3)
    plain.load_state_dict(torch.load(tmp_path / "after.pt"), strict=True)
    torch.testing.assert_close(plain(_x()), source(_x()), **TOL)


def test_optimizer_built_before_swap_still_trains_the_model():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    replace_se_blocks(model)
    w = model.seq[0].se.fc1.weight
    before = w.detach().clone()
    model(_x()).square().mean().backward()
    assert w.grad is not None
    opt.step()
    assert not torch.equal(w, before)


@pytest.mark.parametrize("make,reason", [
    (lambda: SEModule(C, rd_channels=4, add_maxpool=True), "add_maxpool"),
    (lambda: SEModule(C, rd_channels=4, norm_layer=functools.partial(nn.GroupNorm, 1)),
     "norm"),
    (lambda: tv.ops.SqueezeExcitation(C, 4, activation=nn.ReLU6), "ReLU6"),
    (lambda: SqueezeExcite(C, rd_channels=4, act_layer=nn.Mish), "Mish"),
])
def test_unsupported_left_alone_with_warning(make, reason):
    unsupported = make().double()
    model = _net(extra=nn.Sequential(nn.Identity(), unsupported))
    reference = copy.deepcopy(model)
    sd_before = model.state_dict()
    with pytest.warns(UserWarning, match=r"'extra\.1'.*" + reason):
        replace_se_blocks(model)
    assert model.extra[1] is unsupported
    assert len(_fused_names(model)) == N_SE
    assert list(model.state_dict()) == list(sd_before)
    torch.testing.assert_close(model(_x()), reference(_x()), **TOL)


def test_warning_names_module_type():
    model = nn.Sequential(SEModule(C, rd_channels=4, add_maxpool=True))
    with pytest.warns(UserWarning, match=r"'0' \(timm\.layers\.squeeze_excite\.SEModule\)"):
        replace_se_blocks(model)


def test_non_se_modules_give_no_warning():
    """Channel attentions that are not SE computations are left silently, and not
    reported as SE-like."""
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.ReLU(), nn.BatchNorm2d(C),
                          timm.layers.GlobalContext(C), timm.layers.EcaModule(C),
                          timm.layers.CecaModule(C), timm.layers.SelectiveKernel(C, C),
                          timm.layers.SplitAttn(C, C))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = replace_se_blocks(model, report=True)
    assert _fused_names(model) == []
    assert report.fused == [] and report.left == []


def test_idempotent():
    model = _net(extra=SEModule(C, rd_channels=4, add_maxpool=True).double())
    with pytest.warns(UserWarning, match="extra"):
        assert replace_se_blocks(model) is model
    modules_once = dict(model.named_modules())
    sd_once = model.state_dict()
    with pytest.warns(UserWarning, match="extra"):  # the unsupported one is reported again
        assert replace_se_blocks(model) is model
    modules_twice = dict(model.named_modules())
    assert modules_twice.keys() == modules_once.keys()
    for k in modules_once:
        assert modules_twice[k] is modules_once[k], k
    assert list(model.state_dict()) == list(sd_once)


def test_already_fused_blocks_left_alone():
    fused = FusedSEBlock(C)
    model = nn.Sequential(fused, SEBlock(C))
    replace_se_blocks(model)
    assert model[0] is fused
    assert isinstance(model[1], FusedSEBlock)


def test_shared_se_module_stays_shared():
    shared = SEBlock(C, 4).double()
    model = nn.Sequential(Block(shared), Block(shared)).double()
    reference = copy.deepcopy(model)
    replace_se_blocks(model)
    assert isinstance(model[0].se, FusedSEBlock) and model[0].se is model[1].se
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, C, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x), **TOL)


def test_root_se_module_returns_replacement():
    src = tv.ops.SqueezeExcitation(C, 4)
    out = replace_se_blocks(src)
    assert isinstance(out, FusedSEBlock)
    assert out.fc1 is src.fc1 and out.fc2 is src.fc2
    fused = FusedSEBlock(C)
    assert replace_se_blocks(fused) is fused
    bad = SEModule(C, rd_channels=4, add_maxpool=True)
    with pytest.warns(UserWarning, match="add_maxpool"):
        assert replace_se_blocks(bad) is bad


def test_training_mode_preserved():
    model = _net().eval()
    replace_se_blocks(model)
    assert not any(m.training for m in model.modules())
    model = _net().train()
    replace_se_blocks(model)
    assert all(m.training for m in model.modules())


def test_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        replace_se_blocks(lambda x: x)


def test_imports_without_torchvision_and_timm():
    """se_fused imports and swaps SEBlocks with torchvision and timm unimportable."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torchvision", "timm"):
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import torch, se_fused
        m = torch.nn.Sequential(se_fused.SEBlock(8), torch.nn.ReLU())
        se_fused.replace_se_blocks(m)
        assert isinstance(m[0], se_fused.FusedSEBlock)
        assert not any(k.split(".")[0] in ("torchvision", "timm") for k in sys.modules)
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(se_fused.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# --- users' own SE modules, recognised by what their forward computes


class SELayerLinear(nn.Module):
    """The most copied one: pooling module, nn.Linear in a Sequential, .view, expand_as."""

    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False),
                                nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False),
                                nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEFunctionalConv(nn.Module):
    """Functional pooling and activations, 1x1 convs."""

    def __init__(self, c, rd=4):
        super().__init__()
        self.reduce = nn.Conv2d(c, rd, 1)
        self.expand = nn.Conv2d(rd, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.relu(self.reduce(s), inplace=True)
        return x * torch.sigmoid(self.expand(s))


class SqueezeExciteKeepdim(nn.Module):
    """x.mean((2, 3), keepdim=True), activation and gate modules, gate times x."""

    def __init__(self, c, rd=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, rd, kernel_size=1)
        self.act = nn.SiLU()
        self.conv2 = nn.Conv2d(rd, c, kernel_size=1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return self.gate(self.conv2(self.act(self.conv1(s)))) * x


class ChannelGate(nn.Module):
    """No SE in the name: x.mean(dim=...) to a matrix, Linear layers, hardswish, indexing."""

    def __init__(self, c, rd=5):
        super().__init__()
        self.squeeze = nn.Linear(c, rd)
        self.excite = nn.Linear(rd, c)

    def forward(self, x):
        s = x.mean(dim=(-2, -1))
        s = self.excite(F.hardswish(self.squeeze(s)))
        return x * F.hardsigmoid(s)[:, :, None, None]


class SEBlockGelu(nn.Module):
    """torch.mean, nn.GELU, Tensor.sigmoid, torch.mul, a reshape sized from the gate's
    own shape."""

    def __init__(self, c, rd=4):
        super().__init__()
        self.fc1 = nn.Linear(c, rd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(rd, c)

    def forward(self, x):
        s = torch.mean(x, (2, 3))
        s = self.fc2(self.act(self.fc1(s))).sigmoid()
        return torch.mul(x, s.reshape(s.shape[0], s.size(1), 1, 1))


class EffectiveSE(nn.Module):
    """The one-layer form: a C->C 1x1 conv and a hard sigmoid."""

    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))


USER_SE = {
    # name: (builder, activation, gate, the layers' names in the state_dict)
    "linear_view_expand_as": (lambda: SELayerLinear(C), "relu", "sigmoid",
                              ["fc.0.weight", "fc.2.weight"]),
    "functional_adaptive_pool": (lambda: SEFunctionalConv(C), "relu", "sigmoid",
                                 ["reduce.weight", "reduce.bias", "expand.weight",
                                  "expand.bias"]),
    "mean_keepdim_modules": (lambda: SqueezeExciteKeepdim(C), "silu", "hardsigmoid",
                             ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]),
    "mean_matrix_index": (lambda: ChannelGate(C), "hardswish", "hardsigmoid",
                          ["squeeze.weight", "squeeze.bias", "excite.weight", "excite.bias"]),
    "torch_mean_gelu_reshape": (lambda: SEBlockGelu(C), "gelu", "sigmoid",
                                ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
    "one_layer": (lambda: EffectiveSE(C), None, "hardsigmoid", ["fc.weight", "fc.bias"]),
}


def _user_net(make, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), Block(make()), make(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, 5))
    with torch.no_grad():  # biases and weights away from the default init's gate ~ 0.5
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.double()


@pytest.mark.parametrize("name", list(USER_SE))
def test_user_se_module_swapped(name):
    make, activation, gate, keys = USER_SE[name]
    model = _user_net(make)
    reference = copy.deepcopy(model)
    params_before = dict(model.named_parameters())
    sd_before = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = replace_se_blocks(model, report=True)
    assert sorted(_fused_names(model)) == ["1.se", "2"]
    assert [n for n, _ in report.fused] == ["1.se", "2"] and report.left == []
    for m in (model[1].se, model[2]):
        assert (m.activation, m.gate) == (activation, gate)
        assert list(m.state_dict()) == keys
    assert list(model.state_dict()) == sd_before
    for k, p in model.named_parameters():
        assert p is params_before[k], k
    out_ref, g_ref = _grads(reference, _x())
    out, g = _grads(model, _x())
    torch.testing.assert_close(out, out_ref, **TOL)
    assert g.keys() == g_ref.keys()
    for k in g:  # the stem's gradients are sums over the whole input: scaled tolerance
        assert_close_scaled(g[k], g_ref[k], torch.float64, what=k)


@pytest.mark.parametrize("name", list(USER_SE))
def test_user_se_module_from_module_float32_channels_last(name):
    make, *_ = USER_SE[name]
    torch.manual_seed(0)
    src = make()
    fused = FusedSEBlock.from_module(src)
    x = torch.randn(2, C, 5, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    y_ref = src(x)
    y = fused(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    tol = HELPER_TOL[torch.float32]
    torch.testing.assert_close(y, y_ref, **tol)
    gy = torch.randn_like(y)
    params = list(src.parameters())
    torch.testing.assert_close(torch.autograd.grad(y, [x] + params, gy),
                               torch.autograd.grad(y_ref, [x] + params, gy), **tol)


class SEMaxPool(nn.Module):
    """Max, not mean: a CBAM-like gate."""

    def __init__(self, c, rd=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, rd, 1), nn.Conv2d(rd, c, 1)

    def forward(self, x):
        s = F.adaptive_max_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SEPlusIdentity(SqueezeExciteKeepdim):
    """An extra operation after the product."""

    def forward(self, x):
        return super().forward(x) + x


class SETwoInputs(SEFunctionalConv):
    """Gates one tensor with the statistics of another."""

    def forward(self, x, guide):
        s = F.relu(self.reduce(guide.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class SETanh(SEFunctionalConv):
    """The SE form with an activation the fused op does not have."""

    def forward(self, x):
        s = torch.tanh(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class ChannelGateOnRows(ChannelGate):
    """The gate broadcast over the rows (H) instead of the channels: runs only when H == C,
    and is then not an SE computation."""

    def forward(self, x):
        s = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3))))))
        return x * s.view(x.shape[0], 1, x.shape[1], 1)


class GateNoName(SETwoInputs):
    pass


@pytest.mark.parametrize("make,warns", [
    (lambda: SEMaxPool(C), "not an SE computation"),
    (lambda: SEPlusIdentity(C), "not an SE computation"),
    (lambda: SETanh(C), "activation tanh"),
])
def test_se_looking_modules_left_alone(make, warns):
    """Left unswapped; reported (and warned) when named like an SE block or when only
    the activation is unsupported; silently otherwise."""
    module = make().double()
    model = nn.Sequential(nn.Conv2d(3, C, 1), module).double()
    reference = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = replace_se_blocks(model, report=True)
    assert model[1] is module and _fused_names(model) == [] and report.fused == []
    messages = [str(w.message) for w in caught]
    if warns is None:
        assert messages == [] and report.left == []
    else:
        assert len(messages) == 1 and re.search(r"'1'.*" + warns, messages[0]), messages
        assert [(n, c.rsplit(".", 1)[1]) for n, c, _ in report.left] == \
            [("1", type(module).__name__)]
    torch.testing.assert_close(model(_x()), reference(_x()), **TOL)


def test_two_input_module_left_alone():
    for module in (SETwoInputs(C), GateNoName(C)):
        model = nn.ModuleList([module])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, report = replace_se_blocks(model, report=True)
        assert model[0] is module and report.fused == []
        named = isinstance(module, SETwoInputs) and type(module) is SETwoInputs
        assert len(caught) == (1 if named else 0)
        assert ("2 inputs" in report.left[0][2]) if named else report.left == []


def test_user_se_module_with_hooks_left_with_warning():
    module = SEFunctionalConv(C)
    module.reduce.register_forward_hook(lambda m, i, o: o * 2)
    model = nn.Sequential(module)
    with pytest.warns(UserWarning, match="'0'.*hooks"):
        _, report = replace_se_blocks(model, report=True)
    assert model[0] is module and report.fused == [] and len(report.left) == 1


def test_report_lists_fused_and_left():
    model = _net(extra=nn.Sequential(SEModule(C, rd_channels=4, add_maxpool=True).double()))
    with pytest.warns(UserWarning, match="add_maxpool"):
        out, report = replace_se_blocks(model, report=True)
    assert out is model
    assert sorted(n for n, _ in report.fused) == sorted(
        ["se", "seq.0.se", "seq.1.se", "seq.2", "blocks.0.se", "blocks.1.se", "heads.mnv3"])
    assert dict(report.fused)["seq.2"] == "torchvision.ops.misc.SqueezeExcitation"
    assert [(n, c) for n, c, _ in report.left] == [
        ("extra.0", "timm.layers.squeeze_excite.SEModule")]
    assert "add_maxpool" in report.left[0][2]
    text = str(report)
    assert text.startswith("fused 7 SE module(s), left 1 SE-like one(s)")
    assert "extra.0" in text and "seq.2" in text


def test_report_argument_checked():
    with pytest.raises(TypeError, match="report"):
        replace_se_blocks(nn.Sequential(), report=1)


def test_gate_on_the_wrong_axis_not_recognised():
    """The trace has the SE form; the numerical check against the module tells it apart."""
    module = ChannelGateOnRows(C).double()
    with pytest.raises(TypeError, match="differs|fails on a test input"):
        FusedSEBlock.from_module(module)
    model = nn.Sequential(module)
    x = torch.randn(2, C, C, 3, dtype=torch.float64)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace_se_blocks(model)
    assert model[0] is module
    torch.testing.assert_close(model(x), expected, **TOL)


def test_user_se_module_compiles_without_graph_break():
    """Linear layers under nested names (fc.0, fc.2) through torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    src = SELayerLinear(C)
    fused = FusedSEBlock.from_module(src)
    fused.compile(backend="aot_eager", fullgraph=True)
    x = torch.randn(2, C, 5, 4)
    torch.testing.assert_close(fused(x), src(x), **HELPER_TOL[torch.float32])
