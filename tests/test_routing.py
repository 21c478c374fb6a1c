"""Each row of se_fused.ops' routing table: the call described by the row takes it, and
its result (output, gradients or tangents) matches the reference."""
import pytest
import torch

import se_fused
from se_fused import FusedSEBlock, ops, reference

from .helpers import assert_close_dtype, make_inputs

PARAMS = ("x", "w1", "b1", "w2", "b2")
SHAPE, R = (2, 8, 5, 4), 3


@pytest.fixture
def rows_taken(monkeypatch):
    """The names of the rows the router takes, in call order."""
    taken = []

    def spy(name, row):
        def run(*args):
            taken.append(name)
            return row(*args)
        return run

    for name, row in list(ops.ROWS.items()):
        monkeypatch.setitem(ops.ROWS, name, spy(name, row))
    return taken


def _inputs(dtype=torch.float64, **kw):
    return make_inputs(SHAPE, R, dtype, torch.channels_last, **kw)


def _params(inputs):
    return [inputs[k] for k in PARAMS]


def _grads(y, inputs, seed=3):
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed),
                     dtype=torch.float64).to(y.dtype)
    return torch.autograd.grad(y, _params(inputs), gy)


def _reference_and_grads(inputs, **kw):
    truth = [t.detach().clone().requires_grad_() for t in _params(inputs)]
    y = reference.squeeze_excite(*truth, **kw)
    return y, _grads(y, dict(zip(PARAMS, truth)))


def _assert_grads_close(grads, grads_ref, dtype=torch.float64):
    for name, a, b in zip(PARAMS, grads, grads_ref):
        assert_close_dtype(a, b, dtype, what=name)


def test_no_grad_call_takes_the_inference_row(rows_taken):
    inputs = _inputs()
    with torch.no_grad():
        y = se_fused.squeeze_excite(*_params(inputs), activation="gelu")
        x = inputs["x"].clone()
        out = se_fused.squeeze_excite(x, *_params(inputs)[1:], activation="gelu", inplace=True)
    assert rows_taken == ["inference", "inference"]
    expected = reference.squeeze_excite(*_params(inputs), activation="gelu").detach()
    assert_close_dtype(y, expected, torch.float64)
    assert out is x
    assert_close_dtype(x, expected, torch.float64)


def test_call_under_autograd_takes_the_autograd_row(rows_taken):
    inputs = _inputs(residual=True)
    kw = dict(gate="hardsigmoid", out_activation="relu")
    y = se_fused.squeeze_excite(*_params(inputs), residual=inputs["residual"], **kw)
    assert rows_taken == ["autograd"]
    y_ref, grads_ref = _reference_and_grads(inputs, residual=inputs["residual"].detach(), **kw)
    assert_close_dtype(y.detach(), y_ref.detach(), torch.float64)
    _assert_grads_close(_grads(y, inputs), grads_ref)


def test_inplace_call_under_autograd_takes_the_inplace_row(rows_taken):
    inputs = _inputs()
    x = inputs["x"] * 1
    out = se_fused.squeeze_excite(x, *_params(inputs)[1:], activation="silu", inplace=True)
    assert rows_taken == ["inplace"] and out is x
    y_ref, grads_ref = _reference_and_grads(inputs, activation="silu")
    assert_close_dtype(out.detach(), y_ref.detach(), torch.float64)
    _assert_grads_close(_grads(out, inputs), grads_ref)


def test_block_that_keeps_x_takes_the_keep_x_row_and_saves_x(rows_taken):
    block = FusedSEBlock(SHAPE[1], rd_channels=R).double()
    x = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.untyped_storage().data_ptr()) or t, lambda t: t):
        y = block(x)
    assert rows_taken == ["keep_x"]
    assert x.untyped_storage().data_ptr() in saved  # x kept, not only y
    inputs = dict(x=x, w1=block.fc1.weight, b1=block.fc1.bias, w2=block.fc2.weight,
                  b2=block.fc2.bias)
    y_ref, grads_ref = _reference_and_grads(inputs)
    assert_close_dtype(y.detach(), y_ref.detach(), torch.float64)
    _assert_grads_close(_grads(y, inputs), grads_ref)


def test_forward_ad_takes_the_transform_row(rows_taken):
    inputs = _inputs()
    primals = [t.detach() for t in _params(inputs)]
    tangents = [torch.randn_like(t) for t in primals]
    fn = lambda *a: se_fused.squeeze_excite(*a, gate="hardsigmoid")  # noqa: E731
    y, t = torch.func.jvp(fn, tuple(primals), tuple(tangents))
    assert rows_taken == ["transform"]
    ref = lambda *a: reference.squeeze_excite(*a, gate="hardsigmoid")  # noqa: E731
    y_ref, t_ref = torch.func.jvp(ref, tuple(primals), tuple(tangents))
    assert_close_dtype(y, y_ref, torch.float64)
    assert_close_dtype(t, t_ref, torch.float64, what="tangent")


class _SE(torch.nn.Module):
    def __init__(self, inputs, **kw):
        super().__init__()
        for k in PARAMS[1:]:
            setattr(self, k, torch.nn.Parameter(inputs[k].detach().clone()))
        self.kw = kw

    def forward(self, x):
        return se_fused.squeeze_excite(x, self.w1, self.b1, self.w2, self.b2, **self.kw)


def test_jit_trace_takes_the_trace_row_with_and_without_grad(rows_taken):
    inputs = _inputs(torch.float32)
    module = _SE(inputs, activation="hardswish")
    traced = torch.jit.trace(module, inputs["x"].detach())
    # the trace, its check's trace under no_grad, then the check's eager runs (no_grad)
    assert rows_taken[:2] == ["trace", "trace"]
    assert set(rows_taken[2:]) <= {"inference"}
    x = torch.randn(SHAPE).contiguous(memory_format=torch.channels_last)
    expected = reference.squeeze_excite(x, *_params(inputs)[1:], activation="hardswish")
    assert_close_dtype(traced(x).detach(), expected.detach(), torch.float32)


def test_dynamo_onnx_export_takes_the_onnx_row(rows_taken, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    inputs = _inputs(torch.float32)
    module = _SE(inputs, gate="hardsigmoid")
    x = inputs["x"].detach().contiguous()
    path = tmp_path / "se.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=True)
    assert "onnx" in rows_taken and set(rows_taken) <= {"onnx"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = reference.squeeze_excite(x, *_params(inputs)[1:], gate="hardsigmoid")
    assert_close_dtype(torch.from_numpy(got), expected.detach(), torch.float32)


def test_compiled_call_takes_the_autograd_row(rows_taken):
    torch._dynamo.reset()
    inputs = _inputs(torch.float32)
    f = torch.compile(lambda *a: se_fused.squeeze_excite(*a, activation="silu"),
                      fullgraph=True, backend="aot_eager")
    y = f(*_params(inputs))
    assert rows_taken == ["autograd"]
    y_ref, grads_ref = _reference_and_grads(inputs, activation="silu")
    assert_close_dtype(y.detach(), y_ref.detach(), torch.float32)
    _assert_grads_close(_grads(y, inputs), grads_ref, torch.float32)
