"""What the backward keeps, and inplace=True.

Without an epilogue the op keeps y (not x) for its backward; these tests check that x is
not saved, that the y-only gradients match the float64 reference on every dtype, gate,
layout and real-network shape, the float16/hardsigmoid fallback, and FusedSEBlock's
detection of outputs modified in place. Then inplace=True: same object returned,
version bumped, no output allocated, gradients, errors, torch.compile."""
import re
import sys
from pathlib import Path

import pytest
import torch

import se_fused
from se_fused import FusedSEBlock, reference

from .conftest import DTYPES, GATES, LAYOUTS
from .helpers import graph_capturing_backend, TOL, assert_close_dtype, assert_close_scaled, make_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import shapes  # noqa: E402

PARAMS = ("x", "w1", "b1", "w2", "b2")


def saved_storages(fn):
    """Run fn() and return (its result, the data pointers of every tensor autograd saved)."""
    ptrs = []

    def pack(t):
        ptrs.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, ptrs


def truth_grads(inputs, kw, gy):
    """y and gradients of the reference evaluated in float64 from the same inputs."""
    d = {k: v.detach().double().requires_grad_() for k, v in inputs.items() if v is not None}
    y = reference.squeeze_excite(d["x"], d["w1"], d.get("b1"), d["w2"], d.get("b2"), **kw)
    return y, dict(zip(d, torch.autograd.grad(y, list(d.values()), gy.double())))


def fused_grads(inputs, kw, gy):
    names = [k for k in PARAMS if inputs.get(k) is not None]
    x = inputs["x"] * 1  # a non-leaf, so the test sees what the op itself saves
    (y, saved) = saved_storages(lambda: se_fused.squeeze_excite(
        x, inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"], **kw))
    grads = torch.autograd.grad(y, [inputs[k] for k in names], gy)
    return y, dict(zip(names, grads)), saved, x


def expect_close(y, grads, y_ref, grads_ref, dtype):
    assert_close_dtype(y, y_ref, dtype)
    for name, g in grads.items():
        # x's precision bounds every gradient (float32 parameter gradients included). The
        # y-only backward sums g * y with y rounded to x's dtype: its error is that dtype's
        # epsilon relative to the gradient's scale, so atol scales with it (helpers).
        assert_close_scaled(g, grads_ref[name], dtype, what=f"grad {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_keeps_y_not_x_and_matches_float64_reference(dtype, gate, layout):
    inputs = make_inputs((3, 24, 7, 5), 6, dtype, LAYOUTS[layout])
    kw = dict(activation="silu", gate=gate)
    gy = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    y, grads, saved, x = fused_grads(inputs, kw, gy)
    keeps_x = dtype == torch.float16 and gate == "hardsigmoid"
    assert (x.untyped_storage().data_ptr() in saved) == keeps_x
    assert (y.untyped_storage().data_ptr() in saved) == (not keeps_x)
    y_ref, grads_ref = truth_grads(inputs, kw, gy)
    expect_close(y, grads, y_ref, grads_ref, dtype)


@pytest.mark.parametrize("residual,out_activation", [(True, None), (False, "relu")])
def test_an_epilogue_keeps_x(residual, out_activation):
    inputs = make_inputs((2, 8, 4, 4), 2, torch.float32, torch.contiguous_format,
                         residual=residual)
    x = inputs["x"] * 1
    y, saved = saved_storages(lambda: se_fused.squeeze_excite(
        x, inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"],
        residual=inputs["residual"], out_activation=out_activation))
    assert x.untyped_storage().data_ptr() in saved


def _network_cases():
    for shape, networks in shapes.unique_shapes():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            yield pytest.param(shape, dtype, id=f"{networks[0]}-{str(dtype)[6:]}")


@pytest.mark.parametrize("shape,dtype", list(_network_cases()))
def test_y_only_backward_precision_on_real_network_shapes(shape, dtype):
    # The network's own activation and gate, no epilogue (the y-only case), batch 2,
    # float32 parameters as under AMP, against the float64 reference.
    inputs = make_inputs((2, shape.C, shape.H, shape.W), shape.R, dtype,
                         torch.channels_last, param_dtype=torch.float32, seed=shape.C)
    kw = dict(activation=shape.activation, gate=shape.gate)
    gy = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y, grads, _, _ = fused_grads(inputs, kw, gy)
    y_ref, grads_ref = truth_grads(inputs, kw, gy)
    expect_close(y, grads, y_ref, grads_ref, dtype)


def test_float16_hardsigmoid_near_minus_three_keeps_x_and_stays_accurate():
    # a2 just above -3: s ~ 3e-7, so y = x * s is a float16 subnormal. A y-only
    # backward would divide its rounding error by s; the op keeps x instead.
    C = 8
    x = (torch.rand(2, C, 6, 6) + 0.5).half()
    w1 = torch.zeros(1, C)
    w2 = torch.zeros(C, 1)
    b2 = torch.full((C,), -3 + 2e-6)
    inputs = dict(x=x.requires_grad_(), w1=w1.requires_grad_(), b1=None,
                  w2=w2.requires_grad_(), b2=b2.requires_grad_())
    kw = dict(gate="hardsigmoid")
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).half()
    y, grads, saved, xx = fused_grads(inputs, kw, gy)
    assert xx.untyped_storage().data_ptr() in saved
    _, grads_ref = truth_grads(inputs, kw, gy)
    assert_close_scaled(grads["b2"], grads_ref["b2"], torch.float16)
    # and the y-only formula would indeed miss: rebuild its b2 gradient from y
    from se_fused._autograd import backward_composite as _backward_composite
    with torch.no_grad():
        y_only = _backward_composite(gy, y, x.float().mean((2, 3)), None, w1, None, w2, b2,
                                     "relu", "hardsigmoid")
    with pytest.raises(AssertionError):
        assert_close_scaled(y_only[5], grads_ref["b2"], torch.float16)


@pytest.mark.parametrize("gate", GATES)
def test_y_only_gradcheck_and_gradgradcheck(gate):
    inputs = make_inputs((2, 5, 3, 3), 3, torch.float64, torch.channels_last)
    # keep a2 away from hardsigmoid's kinks, where finite differences are meaningless
    f = lambda x, w1, b1, w2, b2: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation="silu", gate=gate)
    args = tuple(inputs[k] for k in PARAMS)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_y_only_backward_under_torch_compile_keeps_the_fused_ops():
    graphs = []
    backend = graph_capturing_backend(graphs)

    torch._dynamo.reset()
    inputs = make_inputs((4, 16, 7, 7), 4, torch.float32, torch.channels_last)
    gy = torch.randn(inputs["x"].shape)

    def f(x, w1, b1, w2, b2):
        return se_fused.squeeze_excite(x * 2, w1, b1, w2, b2, gate="hardsigmoid")

    args = [inputs[k] for k in PARAMS]
    y = torch.compile(f, fullgraph=True, backend=backend)(*args)
    grads = torch.autograd.grad(y, args, gy)
    y_ref = reference.squeeze_excite(args[0] * 2, *args[1:], gate="hardsigmoid")
    grads_ref = torch.autograd.grad(y_ref, args, gy)
    assert_close_dtype(y, y_ref, torch.float32)
    for name, a, b in zip(PARAMS, grads, grads_ref):
        assert_close_dtype(a, b, torch.float32, what=name)
    # the compiled backward runs the y-only kernel (x_is_output True), given the forward's pre
    call = re.compile(r"se_fused\.se_backward\.default\]\(args = \(.*hardsigmoid, False, True, %\w+\)")
    assert any(call.search(g) for g in graphs)


# --- FusedSEBlock: outputs modified in place downstream


def _block_and_input(seed=0):
    torch.manual_seed(seed)
    block = FusedSEBlock(16, rd_channels=4)
    return block, torch.randn(2, 16, 5, 5, requires_grad=True)


def test_block_whose_output_is_modified_in_place_trains_and_keeps_x():
    block, x0 = _block_and_input()
    ref = se_fused.SEBlock(16, rd_channels=4)
    ref.load_state_dict(block.state_dict())
    shortcut = torch.randn(2, 16, 5, 5)
    for step in range(3):
        for m in (block, ref):
            m.zero_grad()
        xs = [x0.detach().clone().requires_grad_() for _ in range(2)]
        outs = []
        for m, x in zip((block, ref), xs):
            y = m(x * 1)
            y += shortcut  # SE-ResNet's `out += shortcut`, then an in-place relu
            outs.append(torch.relu_(y))
        for out in outs:
            out.square().sum().backward()
        assert block._output_mutated is True
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        for (name, p), q in zip(block.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_block_learns_its_output_is_not_modified_then_keeps_only_y():
    block, x0 = _block_and_input()
    x = x0 * 1
    _, saved = saved_storages(lambda: block(x))
    assert x.untyped_storage().data_ptr() in saved  # unknown yet: x kept, to be safe
    block(x0 * 1).sum().backward()
    x = x0 * 1
    y, saved = saved_storages(lambda: block(x))
    assert block._output_mutated is False
    assert x.untyped_storage().data_ptr() not in saved
    assert y.untyped_storage().data_ptr() in saved


def test_transforms_through_the_block():
    block, x0 = _block_and_input()
    params = dict(block.named_parameters())
    out = torch.func.functional_call(block, params, (x0.detach(),))
    tangent = torch.randn_like(x0)
    _, t = torch.func.jvp(lambda x: block(x), (x0.detach(),), (tangent,))
    ref = se_fused.SEBlock(16, rd_channels=4)
    ref.load_state_dict(block.state_dict())
    _, t_ref = torch.func.jvp(lambda x: ref(x), (x0.detach(),), (tangent,))
    torch.testing.assert_close(out, ref(x0.detach()))
    torch.testing.assert_close(t, t_ref)


# --- inplace=True


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inplace_without_grad_returns_x_overwritten_and_bumps_version(dtype, layout):
    inputs = make_inputs((3, 16, 6, 5), 4, dtype, LAYOUTS[layout], residual=True)
    args = [inputs[k].detach() for k in PARAMS]
    r = inputs["residual"].detach()
    for kw in (dict(), dict(residual=r, out_activation="relu")):
        expected = reference.squeeze_excite(*args, **kw)
        x = args[0].clone()
        ptr, version = x.data_ptr(), x._version
        out = se_fused.squeeze_excite(x, *args[1:], inplace=True, **kw)
        assert out is x and x.data_ptr() == ptr and x._version > version
        assert x.is_contiguous(memory_format=LAYOUTS[layout])
        assert_close_dtype(x, expected, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inplace_under_autograd_matches_reference(dtype, gate, layout):
    inputs = make_inputs((3, 16, 6, 5), 4, dtype, LAYOUTS[layout])
    gy = torch.randn(inputs["x"].shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    names = list(PARAMS)
    x = inputs["x"] * 1
    out, saved = saved_storages(lambda: se_fused.squeeze_excite(
        x, inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"], gate=gate, inplace=True))
    assert out is x
    grads = dict(zip(names, torch.autograd.grad(out, [inputs[k] for k in names], gy)))
    y_ref, grads_ref = truth_grads(inputs, dict(gate=gate), gy)
    expect_close(out.detach(), grads, y_ref, grads_ref, dtype)


def test_inplace_errors_name_inplace():
    inputs = make_inputs((2, 8, 4, 4), 2, torch.float32, torch.contiguous_format, residual=True)
    w = [inputs[k] for k in ("w1", "b1", "w2", "b2")]
    with pytest.raises(ValueError, match="inplace"):
        se_fused.squeeze_excite(torch.randn(2, 8, 4, 8)[..., ::2], *w, inplace=True)
    with pytest.raises(ValueError, match="inplace"):
        se_fused.squeeze_excite(inputs["x"] * 1, *w, residual=inputs["residual"], inplace=True)
    with pytest.raises(ValueError, match="inplace"):
        se_fused.squeeze_excite(inputs["x"] * 1, *w, out_activation="relu", inplace=True)
    with pytest.raises(RuntimeError, match="leaf"):
        se_fused.squeeze_excite(inputs["x"], *w, inplace=True)
    with pytest.raises(TypeError, match="inplace"):
        se_fused.squeeze_excite(inputs["x"], *w, inplace="yes")
    # with an epilogue and no autograd it is allowed
    with torch.no_grad():
        x = inputs["x"].clone()
        assert se_fused.squeeze_excite(x, *w, residual=inputs["residual"], inplace=True) is x


def test_inplace_overwrite_is_seen_by_autograd_of_earlier_users():
    # x saved by another op before the in-place SE: autograd must refuse, not compute
    # with y in place of x.
    inputs = make_inputs((2, 8, 4, 4), 2, torch.float32, torch.contiguous_format)
    x = inputs["x"] * 1
    other = x * x  # saves x
    se_fused.squeeze_excite(x, inputs["w1"], None, inputs["w2"], None, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        other.sum().backward()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,gate", [(torch.float32, "sigmoid"),
                                        (torch.float16, "hardsigmoid")],
                         ids=["keeps_y", "keeps_x"])
def test_inplace_under_torch_compile_fullgraph(layout, dtype, gate):
    # A later use of h must be differentiated with h's new value. torch 2.8-2.11 got
    # that wrong, silently, when the in-place call was an autograd.Function marking x
    # dirty; the sum (not a mean) makes that error O(1) even in float16.
    torch._dynamo.reset()
    inputs = make_inputs((4, 16, 7, 7), 4, dtype, LAYOUTS[layout])
    args = [inputs[k] for k in PARAMS]

    def f(x, w1, b1, w2, b2):
        h = x * 2
        y = se_fused.squeeze_excite(h, w1, b1, w2, b2, activation="silu", gate=gate,
                                    inplace=True)
        return y.float().square().sum() + h.float().sum()  # h is y now

    got = torch.compile(f, fullgraph=True)(*args)
    grads = torch.autograd.grad(got, args)
    truth = [a.detach().double().requires_grad_() for a in args]
    y_ref = reference.squeeze_excite(truth[0] * 2, *truth[1:], activation="silu", gate=gate)
    expected = y_ref.square().sum() + y_ref.sum()
    grads_ref = torch.autograd.grad(expected, truth)
    assert_close_scaled(got, expected, dtype)
    for name, a, b in zip(PARAMS, grads, grads_ref):
        assert_close_scaled(a, b, dtype, what=name)


def test_inplace_block_and_swap():
    block, x0 = _block_and_input()
    fused = FusedSEBlock.from_module(block, inplace=True)
    assert fused.inplace and "inplace=True" in repr(fused)
    assert FusedSEBlock(16, inplace=True).inplace
    x = x0 * 1
    expected = reference.squeeze_excite(x0.detach(), block.fc1.weight, block.fc1.bias,
                                        block.fc2.weight, block.fc2.bias)
    out = fused(x)
    assert out is x
    assert_close_dtype(out.detach(), expected.detach(), torch.float32)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), se_fused.SEBlock(16, rd_channels=4),
                                torch.nn.Conv2d(16, 4, 1))
    se_fused.replace_se_blocks(model, inplace=True)
    assert isinstance(model[1], FusedSEBlock) and model[1].inplace
    with pytest.raises(TypeError, match="inplace"):
        se_fused.replace_se_blocks(model, inplace=1)


def test_block_under_torch_compile_with_output_modified_in_place():
    # SE-ResNet's pattern compiled: a block that does not know yet keeps x, so the
    # in-place add after it is fine; one that learnt (eagerly) it is not modified keeps y.
    torch._dynamo.reset()
    block, x0 = _block_and_input()
    shortcut = torch.randn(2, 16, 5, 5)

    def step(m, x):
        y = m(x * 1)
        y += shortcut
        return torch.relu_(y).square().sum()

    ref = se_fused.SEBlock(16, rd_channels=4)
    ref.load_state_dict(block.state_dict())
    x = x0.detach().clone().requires_grad_()
    torch.compile(step, fullgraph=True)(block, x).backward()
    xr = x0.detach().clone().requires_grad_()
    step(ref, xr).backward()
    torch.testing.assert_close(x.grad, xr.grad)
    for (name, p), q in zip(block.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)

    block2, _ = _block_and_input()
    block2(x0 * 1).sum().backward()  # eager: learns its output is left alone
    assert block2._output_mutated is False
    x = x0.detach().clone().requires_grad_()
    out = torch.compile(lambda m, x: m(x * 1).square().sum(), fullgraph=True)(block2, x)
    out.backward()
    expected = reference.squeeze_excite(x0.detach() * 1, block2.fc1.weight, block2.fc1.bias,
                                        block2.fc2.weight, block2.fc2.bias)
    torch.testing.assert_close(out, expected.square().sum())


def test_inplace_block_after_a_relu_that_keeps_its_output_runs_out_of_place():
    # RegNetY / MobileNetV3: ReLU(inplace=True) saves its output, the SE block's input.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(inplace=True),
                                FusedSEBlock(16, rd_channels=4, inplace=True),
                                torch.nn.Conv2d(16, 4, 1))
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(),
                              se_fused.SEBlock(16, rd_channels=4), torch.nn.Conv2d(16, 4, 1))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match="ReluBackward0"):
        model(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert model[2]._inplace_blocker == "ReluBackward0"
    # behind a conv (which saves its input, not its output) it stays in place
    block = FusedSEBlock(16, rd_channels=4, inplace=True)
    h = torch.nn.Conv2d(3, 16, 1)(x)
    assert block(h) is h and block._inplace_blocker == ""
