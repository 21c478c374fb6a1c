"""The fused op against the reference: values, gradients, dtypes, layouts, epilogues,
odd shapes, views, NaN, autograd, opcheck, torch.compile, autocast, errors. A case that
holds on both back ends takes the `device` fixture (tests/conftest.py) and runs on each;
the "cuda" variants skip without a GPU. tests/test_cuda.py holds the CUDA-only cases."""
import itertools

import pytest
import torch

import se_fused
from se_fused import reference
from se_fused._names import ACTIVATIONS as ACTIVATION_FNS

from .conftest import ACTIVATIONS, DTYPES, EPILOGUES, GATES, LAYOUTS, per_device
from .helpers import (TOL, assert_close_dtype, assert_close_scaled, assert_matches_reference,
                      forward_backward, graph_capturing_backend, make_inputs, num_threads,
                      run_both)


def _shape_id(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else None


# (shape, R) of the sweep over every option: odd C and H*W for the CPU kernels' vector
# tails; C = 24 and H*W = 64 for the 16-byte vector paths of both layouts on CUDA.
SWEEP_SHAPE = {"cpu": ((3, 10, 5, 3), 4), "cuda": ((3, 24, 8, 8), 6)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate", list(itertools.product(ACTIVATIONS, GATES)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_forward_and_grads_match_reference(dtype, layout, activation, gate, bias, epilogue,
                                           device):
    residual, out_act = EPILOGUES[epilogue]
    shape, R = SWEEP_SHAPE[device]
    inputs = make_inputs(shape, R, dtype, LAYOUTS[layout], bias=bias, residual=residual,
                         device=device)
    kw = dict(activation=activation, gate=gate, out_activation=out_act)
    y, _ = assert_matches_reference(inputs, kw, dtype)
    assert y.stride() == inputs["x"].stride()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_one_layer_form_matches_reference(dtype, layout, gate, bias, epilogue, device):
    """w2 = b2 = None, w1 (C, C): y = x * gate(W1 z + b1); no gradient for w2/b2."""
    residual, out_act = EPILOGUES[epilogue]
    inputs = make_inputs(SWEEP_SHAPE[device][0], None, dtype, LAYOUTS[layout], bias=bias,
                         residual=residual, one_layer=True, device=device)
    kw = dict(gate=gate, out_activation=out_act)
    y, grads = assert_matches_reference(inputs, kw, dtype)
    assert y.stride() == inputs["x"].stride()
    assert set(grads) == {"x", "w1"} | ({"b1"} if bias else set()) | (
        {"residual"} if residual else set())


def test_one_layer_form_is_the_gate_of_one_linear_layer():
    """The reference's one-layer form against the formula written out (no activation,
    whatever activation name is passed)."""
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    w1, b1 = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    expected = x * torch.nn.functional.hardsigmoid(x.mean((2, 3)) @ w1.t() + b1)[:, :, None, None]
    for activation in ACTIVATIONS:
        for fn in (se_fused.squeeze_excite, reference.squeeze_excite):
            y = fn(x, w1.reshape(6, 6, 1, 1), b1, None, None, activation=activation,
                   gate="hardsigmoid")
            torch.testing.assert_close(y, expected, **TOL[torch.float64])


ODD_SHAPES = {
    "cpu": [(N, C, H, W) for N, C, (H, W) in itertools.product([1, 5], [1, 3, 100],
                                                                [(1, 1), (7, 7), (3, 5)])],
    "cuda": [(N, C, H, W)
             for N, C, (H, W) in itertools.product([1, 3, 64], [3, 100],
                                                    [(1, 1), (3, 5), (7, 7), (56, 56), (112, 112)])
             if N * C * H * W <= 2 * 10**7],  # keeps the suite quick
}


@pytest.mark.parametrize("device,shape", per_device(ODD_SHAPES), ids=_shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_odd_shapes_match_reference(device, shape, layout):
    # Odd C (no channels_last vectors), H*W rows that start off vector boundaries, tiny
    # maps (packed several per warp on CUDA) and, on CUDA, large maps split over many
    # blocks.
    inputs = make_inputs(shape, max(1, shape[1] // 4), torch.float32, LAYOUTS[layout],
                         residual=True, device=device)
    assert_matches_reference(inputs, dict(activation="silu", out_activation="relu"),
                             torch.float32)


def test_large_sample_spans_several_groups_and_chunks():
    # Samples larger than the kernel's cache group, and channels_last pixel chunks.
    for fmt in LAYOUTS.values():
        # 13000-element sums in float32: compared with float64 truth, tolerance scaled
        # by the gradients' size (bias gradients cancel to ~0 from terms of ~100).
        inputs = make_inputs((3, 64, 130, 100), 8, torch.float32, fmt)
        (y, grads), _ = run_both(inputs, {})
        truth = {k: (v.detach().double().requires_grad_() if v is not None else None)
                 for k, v in inputs.items()}
        (y_ref, grads_ref), _ = run_both(truth, {}, fused=reference.squeeze_excite)
        assert_close_scaled(y, y_ref, torch.float32)
        for name in grads:
            assert_close_scaled(grads[name], grads_ref[name], torch.float32, what=name)


@pytest.mark.parametrize("dtype,param_dtype", [
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float32, torch.float16), (torch.float64, torch.float32), (torch.bfloat16, torch.bfloat16),
], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameters_in_another_dtype_than_x_match_reference(dtype, param_dtype, layout, device):
    inputs = make_inputs((2, 16, 6, 6), 4, dtype, LAYOUTS[layout], param_dtype=param_dtype,
                         device=device)
    _, grads = assert_matches_reference(inputs, dict(activation="silu"), dtype)
    assert grads["x"].dtype == dtype
    assert grads["w1"].dtype == param_dtype and grads["b2"].dtype == param_dtype


def test_conv_shaped_weights_are_accepted_and_get_conv_shaped_grads():
    inputs = make_inputs((2, 12, 4, 4), 3, torch.float64, torch.contiguous_format)
    inputs["w1"] = inputs["w1"].detach().reshape(3, 12, 1, 1).requires_grad_()
    inputs["w2"] = inputs["w2"].detach().reshape(12, 3, 1, 1).requires_grad_()
    (y, grads), (y_ref, grads_ref) = run_both(inputs, {})
    assert grads["w1"].shape == (3, 12, 1, 1) and grads["w2"].shape == (12, 3, 1, 1)
    assert_close_dtype(y, y_ref, torch.float64)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], torch.float64, what=name)


# (activation, gate, one_layer): every activation once, and the one-layer form.
GRAD_FORMS = [("relu", "sigmoid", False), ("silu", "hardsigmoid", False),
              ("hardswish", "sigmoid", False), ("gelu", "hardsigmoid", False),
              ("relu", "sigmoid", True), ("relu", "hardsigmoid", True)]


def _grad_form_id(v):
    return v if isinstance(v, str) else ("one_layer" if v is True else "two_layers")


def _gradcheck_args(shape, R, layout, one_layer, device):
    inp = make_inputs(shape, R, torch.float64, layout, residual=True, one_layer=one_layer,
                      device=device)
    return tuple(inp[k] for k in ("x", "w1", "b1", "w2", "b2", "residual"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_gradcheck_every_input_float64(layout, activation, gate, one_layer, device):
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation=activation, gate=gate, residual=r, out_activation="relu")
    assert torch.autograd.gradcheck(f, _gradcheck_args((2, 5, 3, 4), 3, LAYOUTS[layout],
                                                       one_layer, device))


@pytest.mark.parametrize("out_activation", [None, "relu"])
@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_gradgradcheck_double_backward(out_activation, activation, gate, one_layer, device):
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation=activation, gate=gate, residual=r,
        out_activation=out_activation)
    assert torch.autograd.gradgradcheck(f, _gradcheck_args((2, 4, 3, 3), 2,
                                                           torch.contiguous_format, one_layer,
                                                           device))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_differentiable_backward_agrees_with_fused_backward(activation, gate, one_layer, layout,
                                                            device):
    """The forward op's z and pre are the mean and the two layers' pre-activations, and the
    backward op on them gives what the differentiable composite backward gives."""
    from se_fused._autograd import backward_composite as _backward_composite
    inp = make_inputs((3, 8, 5, 5), 2, torch.float64, LAYOUTS[layout], one_layer=one_layer,
                      device=device)
    x, w1, b1 = (inp[k].detach() for k in ("x", "w1", "b1"))
    w2, b2 = (None, None) if one_layer else (inp["w2"].detach(), inp["b2"].detach())
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, b2, None, activation, gate, "relu")
    torch.testing.assert_close(z, x.mean(dim=(2, 3)), **TOL[torch.float64])
    a1 = z @ w1.t() + b1
    a2 = a1 if one_layer else ACTIVATION_FNS[activation](a1) @ w2.t() + b2
    torch.testing.assert_close(pre, torch.cat([a1, a2], dim=1), **TOL[torch.float64])
    gy = torch.randn_like(y)
    fused = torch.ops.se_fused.se_backward(gy, x, z, y, w1, b1, w2, b2, activation, gate, True,
                                           False, pre)
    composite = _backward_composite(gy, x, None, y, w1, b1, w2, b2, activation, gate)
    if one_layer:  # no second layer: (0,) from the kernel, None from the composite
        assert fused[4].shape == (0,) and fused[5].shape == (0,)
        assert composite[4] is None and composite[5] is None
        fused, composite = fused[:4], composite[:4]
    for a, b in zip(fused, composite):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def _opcheck_args(requires_grad, device, fmt=torch.contiguous_format, one_layer=False):
    """float64 x, w1, b1 and w2 (None in the one-layer form) on device."""
    inp = make_inputs((2, 8, 3, 3), 2, torch.float64, fmt, device=device, one_layer=one_layer)
    return tuple(None if inp[k] is None else inp[k].detach().requires_grad_(requires_grad)
                 for k in ("x", "w1", "b1", "w2"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_opcheck_forward_op(layout, residual, out_act, device):
    x, w1, b1, w2 = _opcheck_args(True, device, LAYOUTS[layout])
    r = torch.randn_like(x, requires_grad=True) if residual else None
    torch.library.opcheck(torch.ops.se_fused.se_forward.default,
                          (x, w1, b1, w2, None, r, "silu", "sigmoid", out_act))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_opcheck_forward_op_one_layer(layout, residual, out_act, device):
    x, w1, b1, _ = _opcheck_args(True, device, LAYOUTS[layout], one_layer=True)
    r = torch.randn_like(x, requires_grad=True) if residual else None
    torch.library.opcheck(torch.ops.se_fused.se_forward.default,
                          (x, w1, b1, None, None, r, "relu", "hardsigmoid", out_act))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_pre", [False, True])
@pytest.mark.parametrize("one_layer", [False, True], ids=["two_layers", "one_layer"])
def test_opcheck_backward_op(layout, masked, with_pre, one_layer, device):
    x, w1, b1, w2 = _opcheck_args(False, device, LAYOUTS[layout], one_layer=one_layer)
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, None, None, "relu", "sigmoid",
                                              "relu" if masked else "none")
    torch.library.opcheck(torch.ops.se_fused.se_backward.default,
                          (torch.randn_like(x), x, z, y if masked else None, w1, b1, w2, None,
                           "relu", "sigmoid", masked, False, pre if with_pre else None))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_compile_fullgraph_forward_backward_uses_fused_ops(layout, device):
    inp = make_inputs((4, 16, 7, 7), 4, torch.float32, LAYOUTS[layout], residual=True,
                      device=device)
    kw = dict(activation="silu", gate="hardsigmoid", out_activation="relu")
    y_ref, grads_ref = _compiled_matches_reference_with_fused_ops(inp, kw)

    torch._dynamo.reset()
    compiled = torch.compile(se_fused.squeeze_excite, fullgraph=True)  # inductor
    (y2, grads2), _ = run_both(inp, kw, fused=compiled)
    assert_close_dtype(y2, y_ref, torch.float32)
    for name in grads2:
        assert_close_dtype(grads2[name], grads_ref[name], torch.float32, what=name)
    torch._dynamo.reset()


@pytest.mark.parametrize("activation,one_layer", [("gelu", False), ("hardswish", False),
                                                  ("relu", True)])
def test_torch_compile_fullgraph_new_forms_use_fused_ops(activation, one_layer):
    inp = make_inputs((4, 16, 5, 5), 4, torch.float32, torch.channels_last, residual=True,
                      one_layer=one_layer)
    _compiled_matches_reference_with_fused_ops(
        inp, dict(activation=activation, gate="sigmoid", out_activation="relu"))


def _compiled_matches_reference_with_fused_ops(inp, kw):
    """squeeze_excite under torch.compile(fullgraph=True) against the reference, with
    se_forward and se_backward in the graphs; returns the reference's (y, grads)."""
    graphs = []
    torch._dynamo.reset()
    fn = torch.compile(se_fused.squeeze_excite, fullgraph=True,
                       backend=graph_capturing_backend(graphs))
    (y, grads), (y_ref, grads_ref) = run_both(inp, kw, fused=fn)
    assert_close_dtype(y, y_ref, torch.float32)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], torch.float32, what=name)
    assert any("se_fused.se_forward" in g for g in graphs)
    assert any("se_fused.se_backward" in g for g in graphs)
    return y_ref, grads_ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_conv_then_se_keeps_x_dtype_and_fp32_parameters(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    block = se_fused.FusedSEBlock(16, reduction=4)
    ref_block = se_fused.SEBlock(16, reduction=4)
    ref_block.load_state_dict(block.state_dict())
    inp = torch.randn(2, 8, 9, 9)
    with torch.autocast("cpu", dtype=dtype):
        x = conv(inp)
        y = block(x)
        y_ref = reference.squeeze_excite(x, block.fc1.weight, block.fc1.bias, block.fc2.weight,
                                         block.fc2.bias)
    assert x.dtype == dtype and y.dtype == dtype
    assert_close_dtype(y, y_ref, dtype)
    y.float().sum().backward()
    assert block.fc1.weight.grad.dtype == torch.float32


def test_autocast_with_float32_x_stays_float32():
    inp = make_inputs((2, 8, 4, 4), 2, torch.float32, torch.contiguous_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y, _), (y_ref, _) = run_both(inp, {})
    assert y.dtype == torch.float32
    assert_close_dtype(y, y_ref, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 40, 33, 31), (8, 16, 32, 32)], ids=["groups", "per-sample"])
def test_results_do_not_depend_on_thread_count(layout, shape):
    # (8, 16, 32, 32) is scheduled one sample per thread when threads > 1 and in
    # cache-sized groups with one thread: both must give the same bits.
    inputs = make_inputs(shape, 4, torch.float32, LAYOUTS[layout], residual=True)
    outs = []
    for threads in (1, 2, 3):
        with num_threads(threads):
            outs.append(run_both(inputs, dict(out_activation="relu"))[0])
    for y, grads in outs[1:]:
        assert torch.equal(y, outs[0][0])
        for name in grads:
            assert torch.equal(grads[name], outs[0][1][name]), name


@pytest.mark.parametrize("one_layer", [False, True], ids=["two_layers", "one_layer"])
def test_empty_batch_returns_empty_and_zero_parameter_grads(one_layer, device):
    inp = make_inputs((0, 6, 4, 4), 2, torch.float32, torch.channels_last, one_layer=one_layer,
                      device=device)
    (y, grads), _ = run_both(inp, {})
    assert y.shape == (0, 6, 4, 4) and y.device.type == device
    assert grads["x"].shape == (0, 6, 4, 4)
    assert torch.count_nonzero(grads["w1"]) == 0 and torch.count_nonzero(grads["b1"]) == 0
    if not one_layer:
        assert torch.count_nonzero(grads["b2"]) == 0


def test_inputs_are_not_modified():
    inp = make_inputs((2, 6, 4, 4), 2, torch.float32, torch.contiguous_format, residual=True)
    before = {k: v.detach().clone() for k, v in inp.items() if v is not None}
    run_both(inp, dict(out_activation="relu"))
    for k, v in before.items():
        assert torch.equal(inp[k].detach(), v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_strided_and_offset_views_match_reference(dtype, device):
    # Neither layout dense: a storage offset, a channel stride of 2, a permutation, and a
    # channel slice of a channels_last tensor.
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g, device=device).to(dtype)

    offset = rnd(2 * 10 * 6 * 5 + 1)[1:].view(2, 10, 6, 5)
    sliced = rnd(2, 20, 6, 5)[:, ::2]
    permuted = rnd(2, 6, 5, 10).permute(0, 3, 2, 1)
    channel_slice = rnd(2, 10, 6, 5).contiguous(memory_format=torch.channels_last)[:, 1:9]
    for x in (offset, sliced, permuted, channel_slice):
        inputs = make_inputs(tuple(x.shape), 3, dtype, residual=True, device=device)
        inputs["x"] = x.detach().requires_grad_()
        assert_matches_reference(inputs, dict(out_activation="relu"), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_residual_in_another_memory_format(dtype, device):
    inp = make_inputs((2, 16, 4, 5), 4, dtype, torch.channels_last, residual=True,
                      device=device)
    inp["residual"] = inp["residual"].detach().contiguous().requires_grad_()
    y, grads = assert_matches_reference(inp, dict(out_activation="relu"), dtype)
    assert y.is_contiguous(memory_format=torch.channels_last) and "residual" in grads


def test_non_contiguous_weights(device):
    inputs = make_inputs((2, 12, 5, 5), 3, torch.float32, device=device)
    w1 = torch.randn(12, 3, device=device).t().requires_grad_()  # (3, 12), transposed strides
    inputs["w1"] = w1
    assert_matches_reference(inputs, {}, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stride_zero_grad_y_from_sum_backward(layout, device):
    # y.sum().backward() hands the op an expanded (stride 0) grad_y
    inputs = make_inputs((4, 96, 7, 7), 24, torch.bfloat16, LAYOUTS[layout], residual=True,
                         device=device)
    kw = dict(activation="silu", out_activation="relu")
    args = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2")]
    grads = torch.autograd.grad(se_fused.squeeze_excite(*args, residual=inputs["residual"],
                                                        **kw).sum(), args)
    ref = torch.autograd.grad(reference.squeeze_excite(*args, residual=inputs["residual"],
                                                       **kw).sum(), args)
    for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), grads, ref):
        assert_close_dtype(a, b, torch.bfloat16, what=f"grad {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64_sigmoid_gate_match_reference_to_1e_12(layout, device):
    # a float32 accumulation anywhere would show at ~1e-7
    inputs = make_inputs((3, 200, 9, 9), 50, torch.float64, LAYOUTS[layout], residual=True,
                         device=device)
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    y, grads = forward_backward(se_fused.squeeze_excite, inputs, kw)
    y_ref, grads_ref = forward_backward(reference.squeeze_excite, inputs, kw)
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y, y_ref, **tol)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], **tol, msg=name)


# --- the raw ops: in-place forward, y-only backward, backward without pre


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place_forward_writes_y_over_x(layout, dtype, device):
    inputs = make_inputs((8, 256, 14, 14), 16, dtype, LAYOUTS[layout], residual=True,
                         device=device)
    args = [inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")]
    res = inputs["residual"].detach()
    y, z, pre = torch.ops.se_fused.se_forward(*args, res, "relu", "sigmoid", "relu")
    x = args[0].clone()
    z2, pre2 = torch.ops.se_fused.se_forward_(x, *args[1:], res, "relu", "sigmoid", "relu")
    assert torch.equal(x, y) and torch.equal(z2, z) and torch.equal(pre2, pre)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
def test_y_only_backward_and_backward_without_pre_match_reference(layout, gate, device):
    # x_is_output: the op is given y = x * s instead of x (no epilogue); from_x is
    # called without pre, which the host then recomputes from z
    inputs = make_inputs((6, 192, 14, 14), 48, torch.float32, LAYOUTS[layout], device=device)
    x, w1, b1, w2, b2 = (inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2"))
    ops = torch.ops.se_fused
    y, z, pre = ops.se_forward(x, w1, b1, w2, b2, None, "silu", gate, "none")
    gy = torch.randn_like(y)
    from_y = ops.se_backward(gy, y, z, None, w1, b1, w2, b2, "silu", gate, False, True, pre)
    from_x = ops.se_backward(gy, x, z, None, w1, b1, w2, b2, "silu", gate, False, False)
    kw = dict(activation="silu", gate=gate)
    _, ref = forward_backward(reference.squeeze_excite, inputs, kw, grad_y=gy)
    for i, name in ((0, "x"), (2, "w1"), (3, "b1"), (4, "w2"), (5, "b2")):
        assert_close_dtype(from_y[i], ref[name].to(from_y[i].dtype), torch.float32, f"grad {name}")
        assert_close_dtype(from_x[i], ref[name].to(from_x[i].dtype), torch.float32, f"grad {name}")


# --- errors: each names the offending argument

def _good():
    return dict(x=torch.randn(2, 8, 4, 4), w1=torch.randn(2, 8), b1=torch.randn(2),
                w2=torch.randn(8, 2), b2=torch.randn(8))


def _call(over=None, **kw):
    a = _good()
    a.update(over or {})
    return se_fused.squeeze_excite(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], **kw)


@pytest.mark.parametrize("over,kw,exc,match", [
    (dict(x=torch.randn(2, 8, 4)), {}, ValueError, "x must be 4-D"),
    (dict(x=torch.randn(2, 8, 4, 4, 1)), {}, ValueError, "x must be 4-D"),
    (dict(x=torch.randint(0, 5, (2, 8, 4, 4))), {}, TypeError, "x must be float32"),
    (dict(x=torch.randn(2, 8, 0, 4)), {}, ValueError, "x has an empty spatial extent"),
    (dict(w1=torch.randn(2, 7)), {}, ValueError, "w1 has 7 input channels"),
    (dict(w1=torch.randn(2, 8, 3, 3)), {}, ValueError, "w1 must have shape"),
    (dict(w2=torch.randn(7, 2)), {}, ValueError, "w2 has 7 output channels"),
    (dict(w2=torch.randn(8, 3)), {}, ValueError, "w2 has 3 input channels but w1 has R = 2"),
    (dict(b1=torch.randn(3)), {}, ValueError, "b1 must have shape"),
    (dict(b2=torch.randn(8, 1)), {}, ValueError, "b2 must have shape"),
    (dict(w1=torch.randint(0, 2, (2, 8))), {}, TypeError, "w1 must be a floating-point"),
    (dict(x=[1.0]), {}, TypeError, "x must be a torch.Tensor"),
    ({}, dict(activation="tanh"), ValueError,
     "activation must be 'relu', 'silu', 'hardswish' or 'gelu', got 'tanh'"),
    (dict(w2=None, b2=None), {}, ValueError,
     r"with w2 None \(the one-layer form\) w1 must have shape \(C, C\)"),
    (dict(w2=None, w1=torch.randn(8, 8)), {}, ValueError, "b2 was given but w2 is None"),
    (dict(w2=None, w1=torch.randn(8, 8), b1=torch.randn(2), b2=None), {}, ValueError,
     r"b1 must have shape \(C,\)"),
    (dict(w2=None, w1=torch.randn(8, 8), b2=None), dict(activation="tanh"), ValueError,
     "activation must be"),
    (dict(w2=[1.0]), {}, TypeError, "w2 must be a torch.Tensor or None"),
    ({}, dict(gate="tanh"), ValueError, "gate must be 'sigmoid' or 'hardsigmoid'"),
    ({}, dict(activation=None), TypeError, "activation must be a string"),
    ({}, dict(out_activation="gelu"), ValueError, "out_activation must be None or 'relu'"),
    ({}, dict(out_activation="none"), ValueError, "out_activation must be None or 'relu'"),
    ({}, dict(residual=torch.randn(2, 8, 4, 5)), ValueError, "residual must have x's shape"),
    ({}, dict(residual=torch.randn(2, 8, 4, 4, dtype=torch.float64)), TypeError,
     "residual must have x's dtype"),
    (dict(w1=torch.randn(2, 8, device="meta")), {}, RuntimeError, "w1 is on meta"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_raises_error_naming_argument(over, kw, exc, match):
    with pytest.raises(exc, match=match):
        _call(over, **kw)


def test_reference_rejects_unknown_names_too():
    a = _good()
    with pytest.raises(ValueError, match="activation"):
        reference.squeeze_excite(a["x"], a["w1"], a["b1"], a["w2"], a["b2"], activation="tanh")


def test_reference_checks_the_one_layer_form_too():
    a = _good()
    with pytest.raises(ValueError, match=r"w1 must have shape \(C, C\)"):
        reference.squeeze_excite(a["x"], a["w1"], a["b1"], None, None)
    with pytest.raises(ValueError, match="b2 must be None"):
        reference.squeeze_excite(a["x"], torch.randn(8, 8), None, None, a["b2"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_propagates_like_the_reference_and_torch_relu(layout, device):
    # A NaN in x spreads over its sample only (through z and the small layers); a NaN
    # in the residual passes the output relu as torch.relu lets it, at its own element.
    inputs = make_inputs((3, 64, 7, 7), 16, torch.float32, LAYOUTS[layout], residual=True,
                         device=device)
    args = [inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")]
    r = inputs["residual"].detach()
    args[0][1, 5, 3, 3] = float("nan")
    r[0, 9, 2, 4] = float("nan")
    kw = dict(activation="relu", residual=r, out_activation="relu")
    y = se_fused.squeeze_excite(*args, **kw)
    torch.testing.assert_close(y, reference.squeeze_excite(*args, **kw), equal_nan=True,
                               **TOL[torch.float32])
    assert torch.isnan(y[1]).all() and not torch.isnan(y[2]).any()
    assert torch.isnan(y[0]).nonzero().tolist() == [[9, 2, 4]]


def test_inference_path_matches_and_records_no_graph(device):
    inp = make_inputs((2, 8, 5, 5), 2, torch.float32, torch.channels_last, residual=True,
                      device=device)
    args = [inp[k] for k in ("x", "w1", "b1", "w2", "b2")]
    kw = dict(residual=inp["residual"], out_activation="relu")
    expected = reference.squeeze_excite(*args, **kw).detach()
    with torch.no_grad():
        y_no_grad = se_fused.squeeze_excite(*args, **kw)
    with torch.inference_mode():
        y_inference = se_fused.squeeze_excite(*args, **kw)
    y_detached = se_fused.squeeze_excite(*(a.detach() for a in args), residual=kw["residual"].detach(),
                                         out_activation="relu")
    for y in (y_no_grad, y_inference, y_detached):
        assert y.grad_fn is None and not y.requires_grad
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close_dtype(y, expected, torch.float32)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_layer_form_inplace_under_autograd_matches_reference(gate, layout):
    """inplace=True on a non-leaf (the output of a conv) in the one-layer form: y is
    written over it, and the gradients reach w1, b1 and the conv as the reference's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 1)
    x0 = torch.randn(4, 8, 5, 5).contiguous(memory_format=LAYOUTS[layout])
    w1 = torch.randn(8, 8, requires_grad=True)
    b1 = torch.randn(8, requires_grad=True)
    results = []
    for fn, kw in ((se_fused.squeeze_excite, dict(inplace=True)), (reference.squeeze_excite, {})):
        t = conv(x0)
        y = fn(t, w1, b1, None, None, gate=gate, **kw)
        if kw:
            assert y is t
        results.append((y.detach(), torch.autograd.grad((y * y).sum(), [w1, b1, conv.weight])))
    (y, grads), (y_ref, grads_ref) = results
    assert_close_dtype(y, y_ref, torch.float32)
    for name, a, b in zip(("w1", "b1", "conv.weight"), grads, grads_ref):
        assert_close_dtype(a, b, torch.float32, what=name)
