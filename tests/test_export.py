"""torch.export and AOTInductor with the fused op (CPU, float32).

- A swapped torchvision mobilenet_v3_small exports with a dynamic batch, keeps one
  se_fused.se_forward node per SE block, and saves, loads and runs (in this process
  and in a fresh one that imports se_fused, which registers the op) with the eager
  model's outputs.
- A small net with both ops (FusedSEBlock and the in-place se_forward_ with the
  residual + relu epilogue) exports with and without autograd (the inference fast
  path in se_fused.ops) and round-trips.
- The same net compiles with torch._inductor.aoti_compile_and_package; the package
  runs in a fresh process that imports se_fused before loading it.
Tolerances: tests.helpers.TOL[float32], rtol=1e-4 for the whole model.
"""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from se_fused import FusedSEBlock, SEBlock, replace_se_blocks

from .helpers import TOL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = {"se_forward": torch.ops.se_fused.se_forward.default,
       "se_forward_": torch.ops.se_fused.se_forward_.default}


pytestmark = pytest.mark.usefixtures("one_thread")


class _TinyNet(nn.Module):
    """Both fused ops: a FusedSEBlock, then the in-place op with an epilogue on a
    tensor the net reads again afterwards."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.se1 = FusedSEBlock(16, 4, activation="silu", gate="hardsigmoid")
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.se2 = SEBlock(16, rd_channels=8)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        t = self.se1(self.conv1(x))
        u = self.conv2(t)
        se = self.se2
        torch.ops.se_fused.se_forward_(u, se.fc1.weight.flatten(1), se.fc1.bias,
                                       se.fc2.weight.flatten(1), se.fc2.bias, t,
                                       "relu", "sigmoid", "relu")
        return self.fc(u.mean((2, 3)))


def _tiny_net():
    torch.manual_seed(0)
    return _TinyNet().eval()


def _x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _count_ops(ep):
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    return {name: targets.count(op) for name, op in OPS.items()}


def _run_fresh_process(code, tmp_path):
    """Runs code in a new interpreter from the checkout root (its se_fused), so the
    op's registration there comes only from what the code imports."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_export_both_ops_round_trip(grad, tmp_path):
    """Under no_grad squeeze_excite calls the op below autograd; the exported graph
    must hold the same ops either way."""
    model = _tiny_net()
    x = _x(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    with torch.set_grad_enabled(grad):
        ep = torch.export.export(model, (x,))
    assert _count_ops(ep) == {"se_forward": 1, "se_forward_": 1}, ep.graph
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        got = loaded.module()(x)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


def test_export_swapped_model_save_load_fresh_process(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    original = tv.models.mobilenet_v3_small(weights=None).eval()
    swapped = replace_se_blocks(copy.deepcopy(original))
    n_fused = sum(isinstance(m, FusedSEBlock) for m in swapped.modules())
    assert n_fused > 0

    batch = torch.export.Dim("batch", min=1, max=32)
    ep = torch.export.export(swapped, (_x(2, 3, 64, 64),), dynamic_shapes=({0: batch},))
    assert _count_ops(ep)["se_forward"] == n_fused
    path = tmp_path / "mobilenet.pt2"
    torch.export.save(ep, path)

    x = _x(3, 3, 64, 64, seed=2)  # another batch size than the one traced
    with torch.no_grad():
        expected = original(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    with torch.no_grad():
        got = torch.export.load(path).module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    out = _run_fresh_process(f"""
        import torch
        import se_fused  # registers se_fused's ops; loading fails without it
        io = torch.load({str(tmp_path / 'io.pt')!r})
        ep = torch.export.load({str(path)!r})
        with torch.no_grad():
            got = ep.module()(io["x"])
        torch.testing.assert_close(got, io["expected"], rtol=1e-4, atol=1e-5)
        print("fresh process ok")
    """, tmp_path)
    assert "fresh process ok" in out


def test_aoti_package_runs_in_fresh_process(tmp_path):
    """One AOTInductor compile (C++ build on the CPU: ~20-30 s on two cores)."""
    model = _tiny_net()
    x = _x(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        ep = torch.export.export(model, (x,))
    package = torch._inductor.aoti_compile_and_package(
        ep, package_path=str(tmp_path / "tiny_aoti.pt2"))
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")

    out = _run_fresh_process(f"""
        import torch
        import se_fused  # the package calls se_fused's ops through the dispatcher
        io = torch.load({str(tmp_path / 'io.pt')!r})
        runner = torch._inductor.aoti_load_package({package!r})
        got = runner(io["x"])
        torch.testing.assert_close(got, io["expected"], atol=2e-5, rtol=2e-5)
        print("fresh process ok")
    """, tmp_path)
    assert "fresh process ok" in out
