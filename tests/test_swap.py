"""replace_se_blocks on small hand-made models holding every kind of SE module.

Outputs and gradients are compared in float64, with tests.helpers.TOL.
"""
import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn

import se_fused
from se_fused import FusedSEBlock, SEBlock, replace_se_blocks

tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
from timm.layers import SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402

from .helpers import TOL as HELPER_TOL  # noqa: E402

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
    (lambda: SEModule(C, rd_channels=4, norm_layer=nn.BatchNorm2d), "norm"),
    (lambda: tv.ops.SqueezeExcitation(C, 4, activation=nn.GELU), "GELU"),
    (lambda: SqueezeExcite(C, rd_channels=4, act_layer=nn.Hardswish), "Hardswish"),
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
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.ReLU(), nn.BatchNorm2d(C),
                          timm.layers.EffectiveSEModule(C))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace_se_blocks(model)
    assert _fused_names(model) == []


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
