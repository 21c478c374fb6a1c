"""Logic checks of the CUDA kernels, on the CPU.

The kernel sources of csrc/cuda run as host C++ in an emulation (tests/cuda_emu):
256 fibers a block, a few blocks resident at a time, started in a seeded random
order and interleaving at every barrier and shuffle, every global access checked
against the buffers and their alignment, outputs and workspace poisoned with NaN,
every last-arrival counter checked after launch 1, FMA contraction on. This checks
the kernels' indexing, tiling, last-arrival finalizers, small layers and epilogues
against the reference. It is not GPU evidence: no timing, no memory model, no
registers. tests/test_cuda.py checks the same on a GPU.
"""
import random

import pytest
import torch

from se_fused import reference
from se_fused._names import ACTIVATIONS
from se_fused._autograd import backward_composite as _backward_composite

from .cuda_emu import driver
from .conftest import GATES, LAYOUTS
from .helpers import TOL, make_inputs

EMU = driver.load()
pytestmark = pytest.mark.skipif(EMU is None, reason="no C++ compiler for the emulation")

# 3 blocks resident, launch 2 one sample a block, and an L2 too small for x (launch 2
# walks its tiles from the end)
SMALL = dict(concurrency=3, samples2=1, l2_bytes=2)


def make(shape, R, dtype, fmt=torch.contiguous_format, *, bias=True, residual=False, seed=0,
         one_layer=False):
    """helpers.make_inputs without autograd, and a grad_y; one_layer: the effective-SE
    form (w1 is C x C, no w2, b2)."""
    d = {k: None if v is None else v.detach()
         for k, v in make_inputs(shape, R, dtype, fmt, bias=bias, residual=residual, seed=seed,
                                 one_layer=one_layer).items()}
    g = torch.Generator().manual_seed(seed + 1)
    d["grad_y"] = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).contiguous(
        memory_format=fmt)
    return d


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


# --- the plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,dtype,cl", [
    ((2, 2048, 7, 7), torch.float32, False), ((3, 5, 7, 7), torch.float16, False),
    ((1, 3, 70, 70), torch.float32, False), ((4, 40, 1, 1), torch.bfloat16, False),
    ((37, 64, 14, 14), torch.bfloat16, True), ((33, 100, 9, 9), torch.float64, True),
], ids=str)
def test_plan_tiles_cover_x_and_launch_2_follows_the_l2_size(shape, dtype, cl):
    N, C, H, W = shape
    R = 8
    p = EMU.plan(shape, R, dtype, cl)
    esize = torch.empty(0, dtype=dtype).element_size()
    assert p.grid1 == N * p.CTn * p.Tp  # one block per tile
    assert p.CTn == -(-C // p.CTw) and p.CG % p.CTw == 0 and p.CGn == -(-p.CTn // (p.CG // p.CTw))
    V = 16 // esize
    wide = min(32, 1 << (-(-C // V) - 1).bit_length()) * V  # channels_last, up to 32 granules
    if not cl:  # channel tiles start on 16-byte granules, whatever the alignment
        assert p.CTw * H * W * esize % 16 == 0
        assert p.CG == -(-64 // p.CTw) * p.CTw  # finalizer groups: whole tiles, >= 64 channels
    else:
        assert p.Tp == -(-(H * W) // (16 * 256 // (p.CTw * esize // 16)))  # 16 pixels a thread
        assert p.CG == p.CTw == min(wide, max(V, 64))  # one tile a group, <= 64 channels
    most = 4 if dtype == torch.float64 else 8
    if cl:  # launch 2 of the forward: a channel per warp, whole 32-byte sectors, stacked samples
        rows = 16 * 256 // (p.CTw2 // V)  # pixel rows of a stacked tile, 16 a thread
        assert p.stack2 and p.CTw2 == min(wide, max(2, 8 // V) * V)
        assert p.M2 == min(N, most, max(1, rows // (H * W)))
        assert p.Tp2 == -(-(H * W) // (rows // p.M2)) and p.CTn2 == -(-C // p.CTw2)
    else:
        assert not p.stack2 and (p.CTw2, p.CTn2, p.Tp2) == (p.CTw, p.CTn, p.Tp)
        assert p.M2 == min(N, most)
    assert p.grid2 == -(-N // p.M2) * p.CTn2 * p.Tp2
    assert p.grid0 == min(64, -(-p.n_counters // 256))
    assert p.keep and not p.reverse
    small = EMU.plan(shape, R, dtype, cl, l2_bytes=2)
    assert not small.keep and small.reverse and small.grid1 == p.grid1
    # with the device's block slots known, launch 2 may take fewer samples a block
    for slots in (1, 7, 396):
        assert 1 <= EMU.plan(shape, R, dtype, cl, slots=slots).M2 <= p.M2
    # the backward's finalizer groups are narrower (>= 32 channels; channels_last tiles
    # <= 32), its launch 2 keeps the widest channels_last tiles
    bwd = EMU.plan(shape, R, dtype, cl, backward=True)
    assert not bwd.stack2 and bwd.CTn == -(-C // bwd.CTw) and bwd.CG % bwd.CTw == 0
    if cl:
        assert bwd.CG == bwd.CTw == min(wide, max(V, 32)) and bwd.CTw2 == wide
        assert bwd.Tp == -(-(H * W) // (16 * 256 // (bwd.CTw // V)))
        assert bwd.Tp2 == -(-(H * W) // (16 * 256 // (wide // V)))
    else:
        assert (bwd.CTw2, bwd.Tp2) == (bwd.CTw, bwd.Tp) and bwd.CG == -(-32 // bwd.CTw) * bwd.CTw
    assert bwd.grid1 == N * bwd.CTn * bwd.Tp
    # weight-gradient tiles: the batch split in blocks of >= 32 samples, <= 8 of them,
    # <= 512 blocks in all
    tiles = -(-R // 32) * -(-C // 32) + -(-C // 32)
    assert bwd.wg_split == max(1, min(8, -(-N // 32), 512 // tiles))
    assert bwd.wg_n == -(-N // bwd.wg_split)
    assert bwd.grid2 == -(-N // bwd.M2) * bwd.CTn2 * bwd.Tp2 + tiles * bwd.wg_split


# --- the oracle ------------------------------------------------------------------------


def oracle_forward(d, act, gate, out_act):
    return reference.squeeze_excite(d["x"], *params(d), residual=d["residual"], activation=act,
                                    gate=gate, out_activation=out_act)


def oracle_pre(d, act):
    """[a1 | a2] in float64, the layers' outputs before act and gate."""
    z = d["x"].double().mean(dim=(2, 3))
    w1, b1, w2, b2 = map(f64, params(d))
    a1 = z @ w1.t() + (0 if b1 is None else b1)
    if w2 is None:
        return torch.cat([a1, a1], dim=1)
    return torch.cat([a1, ACTIVATIONS[act](a1) @ w2.t() + (0 if b2 is None else b2)], dim=1)


def oracle_backward(d, y, act, gate, x=None):
    """Float64 gradients (grad_x, grad_residual or None, gw1, gb1, gw2, gb2); the mask
    follows torch.relu (blocked only where y <= 0)."""
    x = d["x"] if x is None else x
    g = d["grad_y"].double()
    if y is not None:
        g = torch.where(y.double() <= 0, torch.zeros_like(g), g)
    gx, gres, gw1, gb1, gw2, gb2 = _backward_composite(
        g, x.double(), None, None, *map(f64, params(d)), act, gate)
    return gx, (gres if y is not None else None), gw1, gb1, gw2, gb2


# --- forward ---------------------------------------------------------------------------

FORWARD_CASES = [
    # shape, R, dtype, layout, residual, out_activation, activation, gate
    ((3, 24, 8, 8), 6, torch.float32, "nchw", False, None, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "channels_last", True, "relu", "silu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.float16, "nchw", True, "relu", "silu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.bfloat16, "channels_last", False, None, "relu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.float64, "nchw", True, None, "silu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "nchw", True, "relu", "hardswish", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.bfloat16, "channels_last", False, None, "gelu", "hardsigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "nchw", False, None, "relu", "sigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "channels_last", True, "relu", "relu", "sigmoid"),
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
    ((11, 20, 5, 5), 5, torch.float32, "nchw", False, None, "silu", "sigmoid"),  # 2 sample tiles
    ((2, 64, 40, 40), 16, torch.bfloat16, "channels_last", True, "relu", "silu", "sigmoid"),  # 4 parts
]


def _fid(c):
    return (f"{'x'.join(map(str, c[0]))}_R{c[1]}_{str(c[2])[6:]}_{c[3]}{'_res' if c[4] else ''}"
            f"_{c[6]}")


def check_forward(d, kw, dtype, run):
    y, z, pre = emu_forward(d, kw, **run)
    y_ref = oracle_forward(d, kw["activation"], kw["gate"], kw["out_activation"])
    assert y.stride() == d["x"].stride()
    close(y, y_ref, dtype, "y")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    close(z, d["x"].double().mean(dim=(2, 3)), acc, "z")
    R = d["w1"].shape[0]
    assert pre.dtype == acc and pre.shape == (d["x"].shape[0], R + d["x"].shape[1])
    close(pre, oracle_pre(d, kw["activation"]), acc, "pre")
    return y, z, pre


@pytest.mark.parametrize("case", FORWARD_CASES, ids=_fid)
def test_forward_matches_reference(case):
    shape, R, dtype, layout, residual, out_act, act, gate = case
    d = make(shape, R, dtype, LAYOUTS[layout], residual=residual)
    check_forward(d, dict(activation=act, gate=gate, out_activation=out_act), dtype, SMALL)


@pytest.mark.parametrize("shape,dtype,samples2,parts", [
    ((6, 40, 7, 7), torch.bfloat16, 0, 1),    # 6 samples of 49 pixels in one tile
    ((3, 20, 8, 8), torch.float32, 0, 1),     # channel tiles of 2 granules, the last one short
    ((5, 21, 6, 6), torch.float64, 0, 1),     # 4 samples a block at most
    ((9, 40, 30, 30), torch.float16, 4, 2),   # 4 x 512 pixel rows: the last part is short
    ((2, 64, 40, 40), torch.bfloat16, 0, 1),  # one sample a block
], ids=str)
def test_channels_last_forward_stacks_samples_in_narrow_launch_2_tiles(shape, dtype, samples2,
                                                                      parts):
    # launch 2 of the channels_last forward: a block streams the same part of all its
    # samples as one tile; its granules cross from sample to sample
    p = EMU.plan(shape, 4, dtype, True, samples2=samples2)
    assert p.stack2 and p.Tp2 == parts and (p.M2 > 1) == (shape[0] > 2)
    d = make(shape, 4, dtype, torch.channels_last, residual=True)
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    y, _, _ = check_forward(d, kw, dtype, dict(concurrency=3, samples2=samples2, l2_bytes=2))
    y1, _, _ = emu_forward(d, kw, concurrency=2, samples2=1, seed=5)
    assert torch.equal(y, y1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_layer_forward_matches_reference(layout, dtype):
    # effective SE: s = gate(W1 z + b1), w1 (C, C); pre = [a1 | a1]
    d = make((3, 40, 6, 6), 0, dtype, LAYOUTS[layout], residual=True, one_layer=True)
    kw = dict(activation="relu", gate="hardsigmoid", out_activation="relu")
    _, _, pre = check_forward(d, kw, dtype, SMALL)
    assert torch.equal(pre[:, :40], pre[:, 40:])


def test_forward_in_place_writes_y_over_x():
    for layout in LAYOUTS.values():
        d = make((3, 40, 9, 9), 10, torch.bfloat16, layout, residual=True)
        kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
        y, z, pre = emu_forward(d, kw, **SMALL)
        x = d["x"].clone()
        y2, z2, pre2 = emu_forward(d, kw, x=x, inplace=True, **SMALL)
        assert y2.data_ptr() == x.data_ptr()
        assert torch.equal(x, y) and torch.equal(z2, z) and torch.equal(pre2, pre)


# --- backward --------------------------------------------------------------------------

BACKWARD_CASES = [
    # shape, R, dtype, layout, mask (out relu), activation, gate
    ((3, 24, 8, 8), 6, torch.float32, "nchw", False, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "channels_last", True, "silu", "hardsigmoid"),
    ((3, 24, 8, 8), 6, torch.bfloat16, "nchw", True, "relu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float16, "channels_last", False, "silu", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "channels_last", True, "hardswish", "sigmoid"),
    ((3, 24, 8, 8), 6, torch.float32, "nchw", False, "gelu", "hardsigmoid"),
    ((2, 2048, 7, 7), 128, torch.float32, "nchw", False, "relu", "sigmoid"),
    ((2, 1152, 7, 7), 48, torch.float32, "channels_last", True, "silu", "sigmoid"),
    ((2, 520, 9, 9), 32, torch.bfloat16, "channels_last", False, "relu", "sigmoid"),
    ((1, 3, 70, 70), 2, torch.float32, "nchw", True, "relu", "hardsigmoid"),
    ((2, 9, 2, 2), 3, torch.float32, "nchw", True, "relu", "sigmoid"),
    ((3, 5, 7, 7), 2, torch.float16, "nchw", False, "relu", "sigmoid"),
    ((20, 16, 4, 4), 4, torch.float32, "nchw", False, "silu", "sigmoid"),  # 3 sample tiles
    ((5, 300, 3, 3), 0, torch.float32, "channels_last", False, "relu", "sigmoid"),
    ((2, 40, 1, 1), 10, torch.float32, "nchw", True, "silu", "sigmoid"),  # H*W = 1
    ((2, 64, 40, 40), 16, torch.float16, "channels_last", True, "gelu", "sigmoid"),  # 4 parts
]


def _bid(c):
    return (f"{'x'.join(map(str, c[0]))}_R{c[1]}_{str(c[2])[6:]}_{c[3]}{'_mask' if c[4] else ''}"
            f"_{c[5]}")


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


def emu_backward(d, y, z, kw, mask, pre, x=None, **run):
    return EMU.backward(d["grad_y"], d["x"] if x is None else x, z, y if mask else None,
                        *params(d), kw["activation"], kw["gate"], mask, pre=pre, **run)


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=_bid)
def test_backward_matches_reference(case):
    shape, R, dtype, layout, mask, act, gate = case
    d = make(shape, R, dtype, LAYOUTS[layout])
    kw = dict(activation=act, gate=gate, out_activation="relu" if mask else None)
    y, z, pre = emu_forward(d, kw)
    out = emu_backward(d, y, z, kw, mask, pre, **SMALL)
    check_grads(out, oracle_backward(d, y if mask else None, act, gate), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("N,splits", [(70, 3), (256, 8), (33, 2)])
def test_weight_gradients_split_over_the_batch_match_reference_in_any_block_order(layout, N,
                                                                                  splits):
    # each weight-gradient tile's batch is split over blocks of >= 32 samples; the last
    # block to arrive adds their partial tiles in split order, whatever the order the
    # blocks ran in
    d = make((N, 40, 3, 3), 36, torch.float32, LAYOUTS[layout])  # 2 x 2 + 2 tiles
    assert EMU.plan((N, 40, 3, 3), 36, torch.float32, layout == "channels_last",
                    backward=True).wg_split == splits
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    y, z, pre = emu_forward(d, kw)
    outs = [emu_backward(d, y, z, kw, True, pre, concurrency=c, seed=c) for c in (1, 4)]
    check_grads(outs[0], oracle_backward(d, y, "silu", "sigmoid"), torch.float32)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_layer_backward_matches_reference(layout):
    d = make((3, 40, 6, 6), 0, torch.float32, LAYOUTS[layout], one_layer=True)
    kw = dict(activation="relu", gate="sigmoid", out_activation="relu")
    y, z, pre = emu_forward(d, kw)
    out = emu_backward(d, y, z, kw, True, pre, **SMALL)
    assert out[4] is None and out[5] is None
    check_grads(out, oracle_backward(d, y, "relu", "sigmoid"), torch.float32)


def test_backward_without_pre_recomputes_it():
    # se_backward called without pre: the host computes [a1 | a2] from z (pre_from_z)
    d = make((4, 48, 5, 5), 12, torch.float32, torch.channels_last)
    kw = dict(activation="gelu", gate="sigmoid", out_activation=None)
    y, z, pre = emu_forward(d, kw)
    out = emu_backward(d, y, z, kw, False, None, **SMALL)
    check_grads(out, oracle_backward(d, None, "gelu", "sigmoid"), torch.float32)
    with_pre = emu_backward(d, y, z, kw, False, pre, **SMALL)
    check_grads(out, with_pre, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
def test_y_only_backward_matches_reference(layout, gate):
    # x_is_output: the kernels sum g*y and gate_input_grad recovers da2 from it
    d = make((4, 48, 6, 6), 12, torch.float32, LAYOUTS[layout])
    kw = dict(activation="silu", gate=gate, out_activation=None)
    y, z, pre = emu_forward(d, kw)
    out = EMU.backward(d["grad_y"], y, z, None, *params(d), "silu", gate, False,
                       x_is_output=True, pre=pre, **SMALL)
    check_grads(out, oracle_backward(d, None, "silu", gate), torch.float32)


def test_float64_gradients_to_1e_12_with_the_sigmoid_gate():
    # a float32 accumulation anywhere would show at ~1e-7
    tol = dict(atol=1e-12, rtol=1e-12)
    for layout in LAYOUTS.values():
        d = make((5, 40, 5, 5), 10, torch.float64, layout)
        kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
        y, z, pre = emu_forward(d, kw, **SMALL)
        close(y, reference.squeeze_excite(d["x"], *params(d), **kw), torch.float64, "y", tol)
        out = emu_backward(d, y, z, kw, True, pre, **SMALL)
        check_grads(out, oracle_backward(d, y, "silu", "sigmoid"), torch.float64, tol)


def test_output_relu_mask_lets_nan_through_like_torch_relu():
    d = make((2, 16, 4, 4), 4, torch.float32)
    kw = dict(activation="relu", gate="sigmoid", out_activation="relu")
    y, z, pre = emu_forward(d, kw)
    y = y.clone()
    y[0, 3, 1, 2] = float("nan")
    y[1, 5, 0, 0] = float("nan")
    y[1, 6, 2, 2] = 0.0
    out = emu_backward(d, y, z, kw, True, pre)
    check_grads(out, oracle_backward(d, y, "relu", "sigmoid"), torch.float32)
    gres = out[1]
    assert gres[0, 3, 1, 2] == d["grad_y"][0, 3, 1, 2] and gres[1, 6, 2, 2] == 0


def test_nan_in_one_sample_stays_in_that_sample():
    for layout in LAYOUTS.values():
        d = make((3, 32, 6, 6), 8, torch.float32, layout)
        d["x"][1, 4, 2, 3] = float("nan")
        kw = dict(activation="relu", gate="sigmoid", out_activation=None)
        y, z, pre = emu_forward(d, kw, **SMALL)
        y_ref = reference.squeeze_excite(d["x"], *params(d), **kw)
        torch.testing.assert_close(y, y_ref, equal_nan=True, **TOL[torch.float32])
        assert torch.isnan(y[1]).any() and not torch.isnan(y[[0, 2]]).any()
        gx = emu_backward(d, y, z, kw, False, pre, **SMALL)[0]
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_bits_do_not_depend_on_block_order_batching_l2_or_alignment(layout, dtype):
    # The summation orders depend on the shape only: one block resident at a time,
    # several interleaving in other orders, launch 2 with 1 to 8 samples a block, tiles
    # walked forward or backward (L2 size), and element-wise loads of misaligned copies
    # (no granules) all give the same bits, for the forward and the backward alike.
    d = make((5, 72, 17, 17), 18, dtype, LAYOUTS[layout], residual=True)  # 2-3 pixel parts
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    runs = [dict(concurrency=1, seed=0), dict(concurrency=3, samples2=1, l2_bytes=2, seed=1),
            dict(concurrency=2, samples2=3, seed=2)]
    first = None
    for i, run in enumerate(runs + [dict(concurrency=3, samples2=2, l2_bytes=2, seed=3)]):
        x, res, gy = d["x"], d["residual"], d["grad_y"]
        if i == len(runs):
            x, res, gy = _misaligned(x), _misaligned(res), _misaligned(gy)
        y, z, pre = EMU.forward(x, *params(d), res, "silu", "sigmoid", "relu", **run)
        fwd = [y.contiguous(), z, pre]
        grads = EMU.backward(gy, x, z, y, *params(d), "silu", "sigmoid", True, pre=pre, **run)
        bwd = [g.contiguous() for g in grads]
        if first is None:
            first = (fwd, bwd)
            close(y, reference.squeeze_excite(d["x"], *params(d), residual=res, **kw), dtype, "y")
            continue
        for which, outs, base in (("forward", fwd, first[0]), ("backward", bwd, first[1])):
            for k, (a, b) in enumerate(zip(outs, base)):
                assert torch.equal(a, b), (which, k, run)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_launch_2_bits_are_the_same_with_h_and_da1_staged_in_shared_memory_or_not(layout):
    # Launch 2 copies its samples' rows of h (forward) and da1 (backward) into shared
    # memory when they fit behind its constants: 1 sample x 800 floats do, 8 do not
    # (read from global memory). The dot products keep their order either way.
    d = make((8, 24, 3, 3), 800, torch.float32, LAYOUTS[layout])
    outs = []
    for m in (1, 8):
        y, z, pre = EMU.forward(d["x"], *params(d), None, "silu", "sigmoid", None, samples2=m)
        grads = EMU.backward(d["grad_y"], d["x"], z, None, *params(d), "silu", "sigmoid", False,
                             pre=pre, samples2=m)
        outs.append([y.contiguous(), pre] + [g.contiguous() for g in grads if g is not None])
    close(outs[0][0], oracle_forward(d, "silu", "sigmoid", None), torch.float32, "y")
    for k, (a, b) in enumerate(zip(*outs)):
        assert torch.equal(a, b), k
