"""The fused op (CPU) against the reference: values, gradients, dtypes, layouts,
epilogues, odd shapes, autograd, torch.compile, autocast, errors."""
import itertools

import pytest
import torch

import se_fused
from se_fused import reference

from .helpers import graph_capturing_backend, assert_close_scaled, TOL, make_inputs, run_both, assert_close_dtype

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
EPILOGUES = {"plain": (False, None), "residual": (True, None), "residual_relu": (True, "relu")}
ACTIVATIONS = ["relu", "silu", "hardswish", "gelu"]
GATES = ["sigmoid", "hardsigmoid"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate", list(itertools.product(ACTIVATIONS, GATES)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_forward_and_grads_match_reference(dtype, layout, activation, gate, bias, epilogue):
    residual, out_act = EPILOGUES[epilogue]
    inputs = make_inputs((3, 10, 5, 3), 4, dtype, LAYOUTS[layout], bias=bias, residual=residual)
    kw = dict(activation=activation, gate=gate, out_activation=out_act)
    (y, grads), (y_ref, grads_ref) = run_both(inputs, kw)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert y.stride() == inputs["x"].stride()
    assert_close_dtype(y, y_ref, dtype)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], dtype, what=f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_one_layer_form_matches_reference(dtype, layout, gate, bias, epilogue):
    """w2 = b2 = None, w1 (C, C): y = x * gate(W1 z + b1); no gradient for w2/b2."""
    residual, out_act = EPILOGUES[epilogue]
    inputs = make_inputs((3, 10, 5, 3), None, dtype, LAYOUTS[layout], bias=bias,
                         residual=residual, one_layer=True)
    kw = dict(gate=gate, out_activation=out_act)
    (y, grads), (y_ref, grads_ref) = run_both(inputs, kw)
    assert y.dtype == dtype and y.stride() == inputs["x"].stride()
    assert set(grads) == {"x", "w1"} | ({"b1"} if bias else set()) | (
        {"residual"} if residual else set())
    assert_close_dtype(y, y_ref, dtype)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], dtype, what=f"grad {name}")


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


@pytest.mark.parametrize("N", [1, 5])
@pytest.mark.parametrize("C", [1, 3, 100])
@pytest.mark.parametrize("HW", [(1, 1), (7, 7), (3, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_odd_shapes_match_reference(N, C, HW, layout):
    inputs = make_inputs((N, C, *HW), max(1, C // 4), torch.float32, LAYOUTS[layout],
                         residual=True)
    (y, grads), (y_ref, grads_ref) = run_both(inputs, dict(activation="silu", out_activation="relu"))
    assert_close_dtype(y, y_ref, torch.float32)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], torch.float32, what=f"grad {name}")


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_parameters_with_half_precision_x(dtype):
    inputs = make_inputs((2, 16, 6, 6), 4, dtype, torch.channels_last, param_dtype=torch.float32)
    (y, grads), (y_ref, grads_ref) = run_both(inputs, {})
    assert y.dtype == dtype
    assert grads["w1"].dtype == torch.float32 and grads["x"].dtype == dtype
    assert_close_dtype(y, y_ref, dtype)
    for name in grads:
        assert_close_dtype(grads[name], grads_ref[name], dtype, what=name)


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


def _gradcheck_args(shape, R, layout, one_layer, **kw):
    inp = make_inputs(shape, R, torch.float64, layout, residual=True, one_layer=one_layer, **kw)
    return tuple(inp[k] for k in ("x", "w1", "b1", "w2", "b2", "residual"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_gradcheck_every_input_float64(layout, activation, gate, one_layer):
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation=activation, gate=gate, residual=r, out_activation="relu")
    assert torch.autograd.gradcheck(f, _gradcheck_args((2, 5, 3, 4), 3, LAYOUTS[layout],
                                                       one_layer))


@pytest.mark.parametrize("out_activation", [None, "relu"])
@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_gradgradcheck_double_backward(out_activation, activation, gate, one_layer):
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation=activation, gate=gate, residual=r,
        out_activation=out_activation)
    assert torch.autograd.gradgradcheck(f, _gradcheck_args((2, 4, 3, 3), 2,
                                                           torch.contiguous_format, one_layer))


@pytest.mark.parametrize("activation,gate,one_layer", GRAD_FORMS, ids=_grad_form_id)
def test_differentiable_backward_agrees_with_fused_backward(activation, gate, one_layer):
    from se_fused._autograd import backward_composite as _backward_composite
    inp = make_inputs((3, 8, 5, 5), 2, torch.float64, torch.channels_last, one_layer=one_layer)
    x, w1, b1 = (inp[k].detach() for k in ("x", "w1", "b1"))
    w2, b2 = (None, None) if one_layer else (inp["w2"].detach(), inp["b2"].detach())
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, b2, None, activation, gate, "relu")
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


def opcheck_args(requires_grad):
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=requires_grad)
    w1 = torch.randn(2, 8, dtype=torch.float64, requires_grad=requires_grad)
    w2 = torch.randn(8, 2, dtype=torch.float64, requires_grad=requires_grad)
    b1 = torch.randn(2, dtype=torch.float64, requires_grad=requires_grad)
    return x, w1, b1, w2


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_opcheck_forward_op(layout, residual, out_act):
    x, w1, b1, w2 = opcheck_args(True)
    x = x.detach().to(memory_format=LAYOUTS[layout]).requires_grad_()
    r = torch.randn_like(x, requires_grad=True) if residual else None
    torch.library.opcheck(torch.ops.se_fused.se_forward.default,
                          (x, w1, b1, w2, None, r, "silu", "sigmoid", out_act))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_opcheck_forward_op_one_layer(layout, residual, out_act):
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64).to(memory_format=LAYOUTS[layout])
    w1, b1 = torch.randn(8, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    r = torch.randn_like(x).requires_grad_() if residual else None
    torch.library.opcheck(torch.ops.se_fused.se_forward.default,
                          (x.requires_grad_(), w1.requires_grad_(), b1.requires_grad_(), None,
                           None, r, "relu", "hardsigmoid", out_act))


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck_backward_op_one_layer(masked):
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    w1, b1 = torch.randn(8, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, None, None, None, "relu", "sigmoid",
                                              "relu" if masked else "none")
    torch.library.opcheck(torch.ops.se_fused.se_backward.default,
                          (torch.randn_like(x), x, z, y if masked else None, w1, b1, None, None,
                           "relu", "sigmoid", masked, False, pre))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("with_pre", [False, True])
def test_opcheck_backward_op(masked, with_pre):
    x, w1, b1, w2 = opcheck_args(False)
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, None, None, "relu", "sigmoid",
                                              "relu" if masked else "none")
    torch.library.opcheck(torch.ops.se_fused.se_backward.default,
                          (torch.randn_like(x), x, z, y if masked else None, w1, b1, w2, None,
                           "relu", "sigmoid", masked, False, pre if with_pre else None))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_compile_fullgraph_forward_backward_uses_fused_ops(layout):
    inp = make_inputs((4, 16, 7, 7), 4, torch.float32, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", gate="hardsigmoid", out_activation="relu")
    y_ref, grads_ref = _compiled_matches_reference_with_fused_ops(inp, kw)

    torch._dynamo.reset()
    compiled = torch.compile(se_fused.squeeze_excite, fullgraph=True)  # inductor
    (y2, grads2), _ = run_both(inp, kw, fused=compiled)
    assert_close_dtype(y2, y_ref, torch.float32)
    for name in grads2:
        assert_close_dtype(grads2[name], grads_ref[name], torch.float32, what=name)


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
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(run_both(inputs, dict(out_activation="relu"))[0])
    finally:
        torch.set_num_threads(old)
    for y, grads in outs[1:]:
        assert torch.equal(y, outs[0][0])
        for name in grads:
            assert torch.equal(grads[name], outs[0][1][name]), name


@pytest.mark.parametrize("one_layer", [False, True], ids=["two_layers", "one_layer"])
def test_empty_batch_returns_empty_and_zero_parameter_grads(one_layer):
    inp = make_inputs((0, 6, 4, 4), 2, torch.float32, torch.channels_last, one_layer=one_layer)
    (y, grads), _ = run_both(inp, {})
    assert y.shape == (0, 6, 4, 4)
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


def test_strided_and_offset_views_are_handled():
    base = torch.randn(2 * 10 * 6 * 5 + 1, dtype=torch.float64)
    x_offset = base[1:].view(2, 10, 6, 5)
    x_sliced = torch.randn(2, 20, 6, 5, dtype=torch.float64)[:, ::2]
    x_permuted = torch.randn(2, 6, 5, 10, dtype=torch.float64).permute(0, 3, 2, 1)
    w1, w2 = torch.randn(3, 10, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    for x in (x_offset, x_sliced, x_permuted):
        y = se_fused.squeeze_excite(x, w1, None, w2, None)
        torch.testing.assert_close(y, reference.squeeze_excite(x, w1, None, w2, None),
                                   **TOL[torch.float64])


def test_residual_in_another_memory_format():
    inp = make_inputs((2, 6, 4, 5), 2, torch.float64, torch.channels_last, residual=True)
    inp["residual"] = inp["residual"].detach().contiguous().requires_grad_()
    (y, grads), (y_ref, grads_ref) = run_both(inp, dict(out_activation="relu"))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_dtype(y, y_ref, torch.float64)
    assert_close_dtype(grads["residual"], grads_ref["residual"], torch.float64)


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


def test_output_relu_propagates_nan_like_torch_relu():
    x = torch.randn(1, 4, 3, 3)
    x[0, 1, 1, 1] = float("nan")
    w1, w2 = torch.randn(2, 4), torch.randn(4, 2)
    r = torch.randn_like(x)
    r[0, 2, 0, 0] = float("nan")
    y = se_fused.squeeze_excite(x, w1, None, w2, None, residual=r, out_activation="relu")
    y_ref = reference.squeeze_excite(x, w1, None, w2, None, residual=r, out_activation="relu")
    torch.testing.assert_close(y, y_ref, equal_nan=True)


def test_inference_path_matches_and_records_no_graph():
    inp = make_inputs((2, 8, 5, 5), 2, torch.float32, torch.channels_last, residual=True)
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
