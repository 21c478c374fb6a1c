"""The CPU kernels' own paths: both schedules (whole samples per thread, and each
step split over the threads), several groups per thread, the vector kernels'
tails, the in-place forward and the y-only backward, compared with the
reference and with each other bit for bit where the kernels promise it."""
import pytest
import torch

from .conftest import GATES, LAYOUTS
from .helpers import TOL, assert_close_dtype, make_inputs, num_threads, run_both

ops = torch.ops.se_fused


def _params(inputs):
    return [inputs[k].detach() if inputs[k] is not None else None for k in ("w1", "b1", "w2", "b2")]


def _forward_and_backward(inputs, act, gate, out_act, want_res, use_pre=True):
    """Raw op outputs: (y, z, pre) and every se_backward output (given pre, or without)."""
    x = inputs["x"].detach()
    res = inputs["residual"].detach() if inputs["residual"] is not None else None
    w1, b1, w2, b2 = _params(inputs)
    y, z, pre = ops.se_forward(x, w1, b1, w2, b2, res, act, gate, out_act)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
    gy = gy.contiguous(memory_format=LAYOUTS["channels_last"] if not x.is_contiguous()
                       else torch.contiguous_format)
    grads = ops.se_backward(gy, x, z, y if out_act == "relu" else None, w1, b1, w2, b2, act, gate,
                            want_res, False, pre if use_pre else None)
    return (y, z, pre, *grads)


def _with_threads(n, fn):
    with num_threads(n):
        return fn()


# (N, C, H, W), R: deep-stage-like rows (49 values), several groups per thread
# (1 MiB samples), odd sizes for every kernel tail.
SHAPES = [
    ((8, 256, 7, 7), 16),
    ((8, 64, 64, 64), 8),
    ((9, 37, 3, 5), 5),
    ((6, 130, 9, 9), 17),
    ((5, 17, 1, 17), 3),
    ((32, 64, 46, 46), 8),  # y of 17 MB: written with streaming stores
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,R", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
def test_every_thread_count_gives_the_same_bits(layout, shape, R, dtype):
    if shape[0] == 32 and dtype != torch.float32:
        pytest.skip("the streaming stores are the float32 kernel's")
    # 1 thread runs the split schedule inline, 2 and 4 threads give each thread
    # whole samples (N >= 2 * threads) or split each step (N < 2 * threads).
    inputs = make_inputs(shape, R, dtype, LAYOUTS[layout], residual=True)
    for act, gate, out_act in (("relu", "sigmoid", "relu"), ("silu", "hardsigmoid", "none")):
        outs = [_with_threads(t, lambda: _forward_and_backward(inputs, act, gate, out_act, True))
                for t in (1, 2, 4)]
        for other in outs[1:]:
            for i, (a, b) in enumerate(zip(outs[0], other)):
                assert torch.equal(a, b), f"output {i} ({act}, {gate}, {out_act})"


# The activations the loop above leaves out, and the one-layer form (w2 = b2 = None,
# w1 (C, C): no second product, da1 = da2), through both schedules.
NEW_FORMS = [("hardswish", "sigmoid", "none", False), ("gelu", "hardsigmoid", "relu", False),
             ("relu", "sigmoid", "relu", True), ("relu", "hardsigmoid", "none", True)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,R", SHAPES[:5], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_new_activations_and_one_layer_give_the_same_bits_on_every_thread_count(
        layout, shape, R, dtype):
    for act, gate, out_act, one_layer in NEW_FORMS:
        inputs = make_inputs(shape, R, dtype, LAYOUTS[layout], residual=True,
                             one_layer=one_layer)
        outs = [_with_threads(t, lambda: _forward_and_backward(inputs, act, gate, out_act, True))
                for t in (1, 2, 4)]
        without_pre = _with_threads(2, lambda: _forward_and_backward(
            inputs, act, gate, out_act, True, use_pre=False))
        for other in outs[1:] + [without_pre]:
            for i, (a, b) in enumerate(zip(outs[0], other)):
                assert torch.equal(a, b), f"output {i} ({act}, {gate}, {out_act}, {one_layer})"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("N", [2, 9])
def test_one_layer_pre_halves_are_both_a1_and_second_layer_grads_are_empty(layout, N):
    inputs = make_inputs((N, 24, 5, 6), None, torch.float32, LAYOUTS[layout], one_layer=True)
    x = inputs["x"].detach()
    w1, b1, w2, b2 = _params(inputs)
    assert w2 is None and b2 is None
    y, z, pre = ops.se_forward(x, w1, b1, None, None, None, "relu", "sigmoid", "none")
    assert pre.shape == (N, 48)
    assert torch.equal(pre[:, :24], pre[:, 24:])
    assert_close_dtype(pre[:, :24], z @ w1.t() + b1, torch.float32)
    grads = ops.se_backward(torch.randn_like(y), x, z, None, w1, b1, None, None, "relu",
                            "sigmoid", False, False, pre)
    assert grads[4].shape == (0,) and grads[5].shape == (0,)
    assert grads[2].shape == (24, 24) and grads[3].shape == (24,)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,R", [((8, 256, 7, 7), 16), ((3, 37, 3, 5), 5)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_gives_the_same_bits_with_and_without_pre(layout, shape, R, dtype, threads):
    # The forward's a1 and a2 are the products the backward recomputes without them,
    # so handing them over changes no bit (both schedules: 8 samples on 2 threads run
    # per-thread groups, 3 samples split each step).
    inputs = make_inputs(shape, R, dtype, LAYOUTS[layout], residual=True)
    for act, gate, out_act in (("relu", "sigmoid", "relu"), ("silu", "hardsigmoid", "none")):
        with_pre, without = (
            _with_threads(threads, lambda: _forward_and_backward(inputs, act, gate, out_act,
                                                                 True, use_pre))
            for use_pre in (True, False))
        for i, (a, b) in enumerate(zip(with_pre, without)):
            assert torch.equal(a, b), f"output {i} ({act}, {gate}, {out_act})"


def test_backward_recomputes_when_pre_is_empty_and_checks_a_given_pre():
    inputs = make_inputs((4, 24, 5, 5), 6, torch.float32, torch.contiguous_format)
    x = inputs["x"].detach()
    w1, b1, w2, b2 = _params(inputs)
    y, z, pre = ops.se_forward(x, w1, b1, w2, b2, None, "relu", "sigmoid", "none")
    gy = torch.randn_like(y)
    args = (gy, x, z, None, w1, b1, w2, b2, "relu", "sigmoid", False, False)
    ref = ops.se_backward(*args, None)
    # pre given but wrong: the kernel reads it (a zero pre changes the gradients)
    assert not torch.equal(ops.se_backward(*args, torch.zeros_like(pre))[2], ref[2])
    for a, b in zip(ops.se_backward(*args, pre.new_empty(0)), ref):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pre must have shape"):
        ops.se_backward(*args, pre[:, 1:])
    with pytest.raises(TypeError, match="pre must have dtype"):
        ops.se_backward(*args, pre.double())


def test_forward_pre_holds_the_layers_inputs_of_the_gate_and_activation():
    inputs = make_inputs((5, 40, 6, 6), 10, torch.bfloat16, torch.channels_last)
    x = inputs["x"].detach()
    w1, b1, w2, b2 = _params(inputs)
    _, z, pre = ops.se_forward(x, w1, b1, w2, b2, None, "silu", "sigmoid", "none")
    assert pre.dtype == torch.float32 and pre.shape == (5, 10 + 40)
    a1 = z @ w1.t() + b1
    a2 = torch.nn.functional.silu(a1) @ w2.t() + b2
    assert_close_dtype(pre, torch.cat([a1, a2], dim=1), torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_repeated_calls_give_the_same_bits(layout):
    inputs = make_inputs((8, 96, 14, 14), 24, torch.float32, LAYOUTS[layout], residual=True)
    first = _forward_and_backward(inputs, "silu", "sigmoid", "relu", True)
    for _ in range(3):
        again = _forward_and_backward(inputs, "silu", "sigmoid", "relu", True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


# H*W around the vector width (16) and its unrolled loop (64); C and R around the
# matrix kernels' blocks (4 outputs, 16-wide vectors, 4 vectors); N around 4 rows.
@pytest.mark.parametrize("HW", [(1, 1), (1, 15), (4, 4), (1, 17), (8, 8), (5, 13), (9, 9)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("C,R", [(1, 1), (15, 3), (33, 5), (65, 17), (130, 66)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("N", [1, 5, 9])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_tails_match_reference(HW, C, R, N, layout):
    inputs = make_inputs((N, C, *HW), R, torch.float32, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", out_activation="relu")
    (y, grads), (y_ref, grads_ref) = run_both(inputs, kw)
    assert_close_dtype(y, y_ref, torch.float32)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], torch.float32, what=f"grad {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 48, 7, 9), (8, 48, 7, 9), (32, 64, 46, 46)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_inplace_forward_gives_the_same_bits(layout, shape, dtype, residual, out_act):
    inputs = make_inputs(shape, 12, dtype, LAYOUTS[layout], residual=residual)
    x = inputs["x"].detach()
    res = inputs["residual"].detach() if residual else None
    w1, b1, w2, b2 = _params(inputs)
    y, z, pre = ops.se_forward(x, w1, b1, w2, b2, res, "silu", "sigmoid", out_act)
    buf = x.clone()
    z2, pre2 = ops.se_forward_(buf, w1, b1, w2, b2, res, "silu", "sigmoid", out_act)
    assert torch.equal(buf, y) and torch.equal(z2, z) and torch.equal(pre2, pre)
    assert buf.stride() == x.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("N", [1, 8])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("act,one_layer", [("relu", False), ("gelu", False), ("relu", True)],
                         ids=["relu", "gelu", "one_layer"])
def test_backward_from_y_matches_backward_from_x(layout, N, gate, act, one_layer):
    inputs = make_inputs((N, 40, 6, 7), 10, torch.float64, LAYOUTS[layout], one_layer=one_layer)
    x = inputs["x"].detach()
    w1, b1, w2, b2 = _params(inputs)
    y, z, pre = ops.se_forward(x, w1, b1, w2, b2, None, act, gate, "none")
    gy = torch.randn_like(y)
    from_x = ops.se_backward(gy, x, z, None, w1, b1, w2, b2, act, gate, False)
    from_y = ops.se_backward(gy, y, z, None, w1, b1, w2, b2, act, gate, False, True, pre)
    for i, (a, b) in enumerate(zip(from_x, from_y)):
        torch.testing.assert_close(b, a, **TOL[torch.float64], msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_output_matches_reference(layout):
    inputs = make_inputs((32, 64, 46, 46), 8, torch.float32, LAYOUTS[layout], residual=True)
    x, res = inputs["x"].detach(), inputs["residual"].detach()
    w1, b1, w2, b2 = _params(inputs)
    from se_fused import reference
    for out_act in (None, "relu"):
        y = torch.ops.se_fused.se_forward(x, w1, b1, w2, b2, res, "silu", "sigmoid",
                                          out_act or "none")[0]
        ref = reference.squeeze_excite(x, w1, b1, w2, b2, activation="silu", residual=res,
                                       out_activation=out_act)
        assert_close_dtype(y, ref, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_relu_keeps_nan_in_the_vector_kernels(layout):
    x = torch.randn(8, 32, 5, 5).contiguous(memory_format=LAYOUTS[layout])
    x[3, 7, 2, 2] = float("nan")
    r = torch.randn_like(x)
    w1, w2 = torch.randn(4, 32), torch.randn(32, 4)
    y = ops.se_forward(x, w1, None, w2, None, r, "relu", "sigmoid", "relu")[0]
    assert torch.isnan(y[3, 7, 2, 2])
    assert torch.isnan(y[3]).sum() >= 1 and not torch.isnan(y[:3]).any()
    assert (y[~torch.isnan(y)] >= 0).all()
