"""The CPU kernels' bfloat16 and float16 vector paths round exactly as c10 does.

tests/cpu_conv/conv_check.cpp is compiled with the extension's CPU flags and checks
the vector loads and stores of se_cpu_rows.h bit for bit against c10's scalar
conversions (every 16-bit pattern widened; float bit patterns at every rounding
position narrowed). Then the op end to end: with a gate of exactly 1, y = relu(x + r)
in float32 rounded once, which torch computes too."""
import os
import shutil
import subprocess

import pytest
import torch

from se_fused import ops  # noqa: F401  (loads the library)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _cpu_flags():
    # setup.py's cpu_flags(), without importing setup.py (it runs setup() on import)
    flags = ["-O3", "-fno-wrapv", "-ffp-contract=off"]
    march = os.environ.get("SE_FUSED_MARCH", "native")
    if march and os.uname().machine in ("x86_64", "AMD64"):
        flags.append(f"-march={march}")
    return flags


@pytest.fixture(scope="module")
def conv_check(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    exe = str(tmp_path_factory.mktemp("conv") / "conv_check")
    r = subprocess.run([cxx, "-std=c++17", *_cpu_flags(), f"-I{ROOT}/csrc", f"-I{inc}",
                        os.path.join(HERE, "cpu_conv", "conv_check.cpp"), "-o", exe],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def test_vector_conversions_match_c10_bit_for_bit(conv_check):
    r = subprocess.run([conv_check], capture_output=True, text=True, timeout=300)
    if r.returncode == 2:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 4, r.stdout


def _values(dtype, n, seed, specials):
    """Random magnitudes over the dtype's whole range, subnormals included (finite, and
    far enough below the maximum that a mean over H*W stays finite), then `specials`."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    lo = int(torch.log2(torch.tensor(info.smallest_normal)).item()) - mantissa_bits
    hi = int(torch.log2(torch.tensor(info.max)).item()) - 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(lo, hi, (n,), generator=g).float())
    x[:len(specials)] = torch.tensor(specials)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_epilogue_rounds_once_like_torch(dtype, layout):
    # w2 = 0 and b2 = 100: s = sigmoid(100) = 1 exactly in float32, so
    # y = relu(x * 1 + r) = relu(x + r) rounded once from float32. The sums land on
    # ties, subnormals, overflow and infinities (those only in r: x's mean must stay
    # finite, or s would be NaN).
    N, C, H, W = 3, 37, 5, 7
    info = torch.finfo(dtype)
    shape, n = (N, C, H, W), N * C * H * W
    x = _values(dtype, n, 0, [0.0, -0.0, info.tiny, -info.tiny / 4, info.max / 512])
    r = _values(dtype, n, 1, [info.max, -info.max, float("inf"), -float("inf"), info.tiny / 8,
                              info.max])
    x, r = (t.reshape(shape).contiguous(memory_format=layout) for t in (x, r))
    w1, b1 = torch.zeros(4, C), torch.zeros(4)
    w2, b2 = torch.zeros(C, 4), torch.full((C,), 100.0)
    y = torch.ops.se_fused.se_forward(x, w1, b1, w2, b2, r, "relu", "sigmoid", "relu")[0]
    want = (x.float() + r.float()).relu().to(dtype)
    assert not torch.isnan(want).any()
    assert torch.equal(y.view(torch.int16), want.view(torch.int16))
