"""Logic checks of the CUDA kernels, on the CPU.

The kernel sources of csrc/cuda run as host C++ in an emulation (tests/cuda_emu):
256 fibers a block, several blocks interleaving at every barrier and wait in a
seeded random order, every global access checked against the buffers and their
alignment, outputs and workspace poisoned with NaN. This checks the kernels'
indexing, tiling, ticket schedule, waves, excitation tiles and epilogues against
the reference. It is not GPU evidence: no timing, no memory model, no registers.
tests/test_cuda.py checks the same on a GPU.
"""
import random

import pytest
import torch

from se_fused import reference
from se_fused.ops import _backward_composite

from .cuda_emu import driver
from .helpers import TOL

EMU = driver.load()
pytestmark = pytest.mark.skipif(EMU is None, reason="no C++ compiler for the emulation")

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
SMALL_WAVES = dict(wave_bytes=512, grid=3)  # a wave per sample, 3 blocks interleaving


def make(shape, R, dtype, fmt=torch.contiguous_format, *, bias=True, residual=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    pdt = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*s, dt=pdt, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dt)

    return dict(
        x=rnd(*shape, dt=dtype).contiguous(memory_format=fmt),
        w1=rnd(R, C, scale=2.0 / max(C, 1) ** 0.5),
        b1=rnd(R, scale=0.5) if bias else None,
        w2=rnd(C, R, scale=2.0 / max(R, 1) ** 0.5),
        b2=rnd(C, scale=0.5) if bias else None,
        residual=rnd(*shape, dt=dtype).contiguous(memory_format=fmt) if residual else None,
        grad_y=rnd(*shape, dt=dtype).contiguous(memory_format=fmt),
    )


def params(d):
    return d["w1"], d["b1"], d["w2"], d["b2"]


def emu_forward(d, kw, x=None, **run):
    return EMU.forward(d["x"] if x is None else x, *params(d), d["residual"], kw["activation"],
                       kw["gate"], kw["out_activation"], **run)


def close(actual, expected, dtype, what, tol=None):
    tol = tol or TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol,
                               msg=lambda m: f"{what}: {m}")


def f64(t):
    return None if t is None else t.double()


# --- helpers of the kernels ----------------------------------------------------------


def test_fastdiv_matches_integer_division():
    rng = random.Random(0)
    divisors = [1, 2, 3, 7, 49, 196, 3136, 12544, 2**31 - 1, 2**31 + 1, 2**32 + 3,
                46341 * 46341, 10**12 + 39]
    for d in divisors:
        values = [0, 1, d - 1, d, d + 1, 2 * d - 1, 2**32 - 1, 2**40 + 5, 2**62 + 11]
        values += [rng.randrange(0, 2**63) for _ in range(200)]
        for a in values:
            assert EMU.fastdiv(a, d) == a // d, (a, d)


# --- the ticket schedule ---------------------------------------------------------------

SCHEDULES = [
    ((1, 2048, 7, 7), 128, torch.float32, False, 1 << 40),
    ((3, 5, 7, 7), 2, torch.float16, False, 512),
    ((37, 64, 14, 14), 16, torch.bfloat16, True, 4096),
    ((256, 2048, 7, 7), 128, torch.bfloat16, False, 50 << 18),  # H100: a quarter of 50 MB
    ((33, 100, 9, 9), 0, torch.float32, True, 20000),
]


@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: "x".join(map(str, c[0])) + f"_w{c[4]}")
@pytest.mark.parametrize("backward,mask", [(False, False), (True, False), (True, True)])
def test_every_wait_points_to_earlier_tickets(case, backward, mask):
    # The deadlock-freedom argument of the persistent kernels: each item once, and
    # everything an item waits for has a smaller ticket.
    shape, R, dtype, cl, wave_bytes = case
    bad, stages, waves, _ = EMU.schedule(shape, R, dtype, cl, backward, mask,
                                         wave_bytes=wave_bytes)
    assert bad == 0
    plan = EMU.plan(shape, R, dtype, cl, backward, wave_bytes=wave_bytes)
    assert plan.total == stages.numel() and plan.waves >= 1
    if not backward and plan.waves > 1:
        # wave g+1 is squeezed before wave g is scaled: the excitation of wave g
        # overlaps streaming, and wave g is scaled right after that (still in L2)
        first = {}
        for t, (s, w) in enumerate(zip(stages.tolist(), waves.tolist())):
            first.setdefault((s, w), t)
        assert first[(0, 1)] < first[(3, 0)]


# --- forward ---------------------------------------------------------------------------

FORWARD_CASES = [
    # shape, R, dtype, layout, residual, out_activation, activation, gate
    ((3, 24, 8, 8), 6, torch.float32, "nchw", False, None, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "channels_last", True, "relu", "silu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.float16, "nchw", True, "relu", "silu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.bfloat16, "channels_last", False, None, "relu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.float64, "nchw", True, None, "silu", "sigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "nchw", False, None, "relu", "sigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "channels_last", True, "relu", "relu", "sigmoid"),
    ((2, 1152, 7, 7), 48, torch.float32, "nchw", False, None, "silu", "sigmoid"),
    ((2, 1152, 7, 7), 48, torch.bfloat16, "channels_last", False, None, "silu", "sigmoid"),
    ((2, 520, 9, 9), 32, torch.bfloat16, "channels_last", True, "relu", "relu", "sigmoid"),
    ((2, 520, 9, 9), 32, torch.bfloat16, "nchw", False, None, "relu", "sigmoid"),
    ((1, 3, 70, 70), 2, torch.float32, "nchw", False, None, "relu", "sigmoid"),  # rows > tile
    ((1, 2, 91, 91), 1, torch.bfloat16, "nchw", True, "relu", "relu", "sigmoid"),
    ((2, 40, 1, 1), 10, torch.float32, "nchw", False, None, "relu", "sigmoid"),  # H*W = 1
    ((2, 40, 1, 1), 10, torch.float32, "channels_last", False, None, "relu", "sigmoid"),
    ((2, 9, 2, 2), 3, torch.float16, "nchw", True, "relu", "silu", "sigmoid"),  # H*W < 8
    ((3, 5, 7, 7), 2, torch.float16, "nchw", False, None, "relu", "sigmoid"),  # no granules
    ((2, 3, 5, 7), 1, torch.float32, "channels_last", True, "relu", "relu", "sigmoid"),
    ((5, 300, 3, 3), 0, torch.float32, "channels_last", False, None, "relu", "sigmoid"),  # R = 0
]


def _fid(c):
    return f"{'x'.join(map(str, c[0]))}_R{c[1]}_{str(c[2])[6:]}_{c[3]}{'_res' if c[4] else ''}"


@pytest.mark.parametrize("case", FORWARD_CASES, ids=_fid)
def test_forward_matches_reference(case):
    shape, R, dtype, layout, residual, out_act, act, gate = case
    d = make(shape, R, dtype, LAYOUTS[layout], residual=residual)
    kw = dict(activation=act, gate=gate, out_activation=out_act)
    y, z, pre = emu_forward(d, kw, **SMALL_WAVES)
    y_ref = reference.squeeze_excite(d["x"], *params(d), residual=d["residual"], **kw)
    assert y.stride() == y_ref.stride()
    close(y, y_ref, dtype, "y")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    close(z, d["x"].double().mean(dim=(2, 3)), acc, "z")
    assert pre.dtype == acc and pre.shape == (shape[0], R + shape[1])
    close(pre, reference_pre(d, act), acc, "pre")


def reference_pre(d, act):
    """[a1 | a2] in float64, the layers' outputs before act and gate."""
    z = d["x"].double().mean(dim=(2, 3))
    w1, b1, w2, b2 = map(f64, params(d))
    a1 = z @ w1.t() + (0 if b1 is None else b1)
    h = torch.relu(a1) if act == "relu" else torch.nn.functional.silu(a1)
    return torch.cat([a1, h @ w2.t() + (0 if b2 is None else b2)], dim=1)


def test_forward_in_place_writes_y_over_x():
    for layout in LAYOUTS.values():
        d = make((3, 40, 9, 9), 10, torch.bfloat16, layout, residual=True)
        kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
        y, z, pre = emu_forward(d, kw, **SMALL_WAVES)
        x = d["x"].clone()
        y2, z2, pre2 = emu_forward(d, kw, x=x, inplace=True, **SMALL_WAVES)
        assert y2.data_ptr() == x.data_ptr()
        assert torch.equal(x, y) and torch.equal(z2, z) and torch.equal(pre2, pre)


# --- backward --------------------------------------------------------------------------

BACKWARD_CASES = [
    # shape, R, dtype, layout, mask (out relu), activation, gate
    ((3, 24, 8, 8), 6, torch.float32, "nchw", False, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "channels_last", True, "silu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.bfloat16, "nchw", True, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float16, "channels_last", False, "silu", "sigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "nchw", False, "relu", "sigmoid"),
    ((2, 1152, 7, 7), 48, torch.float32, "channels_last", True, "silu", "sigmoid"),
    ((2, 520, 9, 9), 32, torch.bfloat16, "channels_last", False, "relu", "sigmoid"),
    ((1, 3, 70, 70), 2, torch.float32, "nchw", True, "relu", "hardsigmoid"),
    ((2, 9, 2, 2), 3, torch.float32, "nchw", True, "relu", "sigmoid"),
    ((3, 5, 7, 7), 2, torch.float16, "nchw", False, "relu", "sigmoid"),
    ((20, 16, 4, 4), 4, torch.float32, "nchw", False, "silu", "sigmoid"),  # > 16 samples
    ((5, 300, 3, 3), 0, torch.float32, "channels_last", False, "relu", "sigmoid"),
]


def _bid(c):
    return f"{'x'.join(map(str, c[0]))}_R{c[1]}_{str(c[2])[6:]}_{c[3]}{'_mask' if c[4] else ''}"


def reference_backward(d, y, act, gate, x=None):
    """Float64 gradients; the mask follows torch.relu (blocked only where y <= 0)."""
    x = d["x"] if x is None else x
    g = d["grad_y"].double()
    if y is not None:
        g = torch.where(y.double() <= 0, torch.zeros_like(g), g)
    gx, gres, gw1, gb1, gw2, gb2 = _backward_composite(
        g, x.double(), None, None, *map(f64, params(d)), act, gate)
    return gx, (gres if y is not None else None), gw1, gb1, gw2, gb2


def check_grads(out, ref, dtype, tol=None):
    names = ("grad_x", "grad_residual", "grad_w1", "grad_b1", "grad_w2", "grad_b2")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for name, a, b in zip(names, out, ref):
        if b is None:
            assert a is None, name
            continue
        if name in ("grad_x", "grad_residual"):
            close(a, b.to(dtype), dtype, name, tol)
        elif a.numel():
            assert a.dtype == acc
            close(a, b, dtype if dtype != torch.float64 else acc, name, tol)


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=_bid)
def test_backward_matches_reference(case):
    shape, R, dtype, layout, mask, act, gate = case
    d = make(shape, R, dtype, LAYOUTS[layout])
    kw = dict(activation=act, gate=gate, out_activation="relu" if mask else None)
    y, z, _ = emu_forward(d, kw)
    out = EMU.backward(d["grad_y"], d["x"], z, y if mask else None, *params(d), act, gate, mask,
                       **SMALL_WAVES)
    check_grads(out, reference_backward(d, y if mask else None, act, gate), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_y_only_backward_matches_reference(layout, gate):
    # x_is_output: the kernels sum g*y and gate_input_grad recovers da2 from it
    d = make((4, 48, 6, 6), 12, torch.float32, LAYOUTS[layout])
    kw = dict(activation="silu", gate=gate, out_activation=None)
    y, z, _ = emu_forward(d, kw)
    out = EMU.backward(d["grad_y"], y, z, None, *params(d), "silu", gate, False,
                       x_is_output=True, **SMALL_WAVES)
    check_grads(out, reference_backward(d, None, "silu", gate), torch.float32)


def test_float64_gradients_to_1e_12_with_the_sigmoid_gate():
    # a float32 accumulation anywhere would show at ~1e-7
    d = make((3, 40, 5, 5), 10, torch.float64, torch.channels_last)
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    y, z, _ = emu_forward(d, kw, **SMALL_WAVES)
    close(y, reference.squeeze_excite(d["x"], *params(d), **kw), torch.float64, "y",
          dict(atol=1e-12, rtol=1e-12))
    out = EMU.backward(d["grad_y"], d["x"], z, y, *params(d), "silu", "sigmoid", True,
                       **SMALL_WAVES)
    check_grads(out, reference_backward(d, y, "silu", "sigmoid"), torch.float64,
                dict(atol=1e-12, rtol=1e-12))


def test_output_relu_mask_lets_nan_through_like_torch_relu():
    d = make((2, 16, 4, 4), 4, torch.float32)
    y, z, _ = emu_forward(d, dict(activation="relu", gate="sigmoid", out_activation="relu"))
    y = y.clone()
    y[0, 3, 1, 2] = float("nan")
    y[1, 5, 0, 0] = float("nan")
    y[1, 6, 2, 2] = 0.0
    out = EMU.backward(d["grad_y"], d["x"], z, y, *params(d), "relu", "sigmoid", True)
    ref = reference_backward(d, y, "relu", "sigmoid")
    check_grads(out, ref, torch.float32)
    gres = out[1]
    assert gres[0, 3, 1, 2] == d["grad_y"][0, 3, 1, 2] and gres[1, 6, 2, 2] == 0


def test_nan_in_one_sample_stays_in_that_sample():
    for layout in LAYOUTS.values():
        d = make((3, 32, 6, 6), 8, torch.float32, layout)
        d["x"][1, 4, 2, 3] = float("nan")
        kw = dict(activation="relu", gate="sigmoid", out_activation=None)
        y, z, _ = emu_forward(d, kw, **SMALL_WAVES)
        y_ref = reference.squeeze_excite(d["x"], *params(d), **kw)
        torch.testing.assert_close(y, y_ref, equal_nan=True, **TOL[torch.float32])
        assert torch.isnan(y[1]).any() and not torch.isnan(y[[0, 2]]).any()
        gx = EMU.backward(d["grad_y"], d["x"], z, None, *params(d), "relu", "sigmoid", False,
                          **SMALL_WAVES)[0]
        assert torch.isnan(gx[1]).any() and not torch.isnan(gx[[0, 2]]).any()


# --- determinism -------------------------------------------------------------------------


def _misaligned(t):
    """The same values one element into a fresh buffer: no 16-byte granules."""
    fmt = (torch.channels_last if t.is_contiguous(memory_format=torch.channels_last)
           and not t.is_contiguous() else torch.contiguous_format)
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    v = buf[1:].view(t.permute(0, 2, 3, 1).shape if fmt == torch.channels_last else t.shape)
    if fmt == torch.channels_last:
        v = v.permute(0, 3, 1, 2)
    v.copy_(t)
    assert v.data_ptr() % 16 != 0
    return v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bits_do_not_depend_on_grid_waves_interleaving_or_alignment(layout, dtype):
    # The summation orders depend on the shape only: 1 block and one wave, 3 blocks
    # and a wave per sample (random interleaving), and element-wise loads of
    # misaligned copies all give the same bits.
    d = make((5, 72, 9, 9), 18, dtype, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    runs = [dict(grid=1, wave_bytes=1 << 40, seed=0), dict(grid=3, wave_bytes=512, seed=1),
            dict(grid=2, wave_bytes=30000, seed=2)]
    first = None
    for i, run in enumerate(runs + [dict(grid=3, wave_bytes=512, seed=3)]):
        x, res, gy = d["x"], d["residual"], d["grad_y"]
        if i == len(runs):
            x, res, gy = _misaligned(x), _misaligned(res), _misaligned(gy)
        y, z, pre = EMU.forward(x, *params(d), res, "silu", "sigmoid", "relu", **run)
        grads = EMU.backward(gy, x, z, y, *params(d), "silu", "sigmoid", True, **run)
        outs = [y.contiguous(), z, pre] + [g.contiguous() for g in grads]
        if first is None:
            first = outs
            close(y, reference.squeeze_excite(d["x"], *params(d), residual=res, **kw), dtype, "y")
        else:
            for a, b in zip(outs, first):
                assert torch.equal(a, b), run
