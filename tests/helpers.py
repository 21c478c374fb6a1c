"""Shared by the tests: per-dtype tolerances (stated once), input factories, and
the fused-vs-reference runner."""
import contextlib

import torch

import se_fused
from se_fused import reference

# Tolerances against the reference, per dtype of x. Half-precision outputs are
# rounded once from float32 on both sides, so they differ by at most an ulp or two.
# float64 allows 1e-7: PyTorch's own hardsigmoid uses the float constant 1/6 even
# for float64, so the reference itself is only that exact.
TOL = {
    torch.float64: dict(atol=1e-7, rtol=1e-7),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def assert_close_dtype(actual, expected, dtype, what="output"):
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


def assert_close_scaled(actual, expected, dtype, what="output"):
    """Like assert_close_dtype, with atol scaled by the largest |expected|: for long sums,
    where an element that cancels to ~0 still carries the rounding of its large terms."""
    scale = max(1.0, expected.double().abs().max().item())
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["rtol"],
                               atol=tol["atol"] * scale, msg=lambda m: f"{what}: {m}")


def make_inputs(shape, R, dtype, memory_format=torch.contiguous_format, *, bias=True,
                residual=False, param_dtype=None, device="cpu", seed=0, one_layer=False):
    """Random x, weights and biases (never zeros) that require grad, drawn on `device`.

    one_layer: the one-layer form, w1 (C, C) and w2 = b2 = None (R is ignored)."""
    g = torch.Generator(device=device).manual_seed(seed)
    N, C, H, W = shape
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)

    def rnd(*s, dt=pdt, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64, device=device) * scale).to(dt)

    def leaf(t):
        return t.requires_grad_()

    x = rnd(N, C, H, W, dt=dtype).contiguous(memory_format=memory_format)
    if one_layer:
        R = C
    return dict(
        x=leaf(x),
        w1=leaf(rnd(R, C, scale=2.0 / max(C, 1) ** 0.5)),
        b1=leaf(rnd(R, scale=0.5)) if bias else None,
        w2=None if one_layer else leaf(rnd(C, R, scale=2.0 / max(R, 1) ** 0.5)),
        b2=leaf(rnd(C, scale=0.5)) if bias and not one_layer else None,
        residual=leaf(rnd(N, C, H, W, dt=dtype).contiguous(memory_format=memory_format))
        if residual else None,
    )


def forward_backward(fn, inputs, kw, grad_y=None, seed=1):
    """y and the grads of every tensor input that requires grad, for one grad_y (drawn
    on y's device, so that nothing here synchronizes the host)."""
    y = fn(inputs["x"], inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"],
           residual=inputs["residual"], **kw)
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    if y.numel() == 0:
        grads = torch.autograd.grad(y.sum(), [inputs[k] for k in names], allow_unused=True,
                                    materialize_grads=True)
    else:
        if grad_y is None:
            gen = torch.Generator(device=y.device).manual_seed(seed)
            grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64,
                                 device=y.device).to(y.dtype)
        grads = torch.autograd.grad(y, [inputs[k] for k in names], grad_y)
    return y.detach(), dict(zip(names, grads))


def run_both(inputs, kw, fused=None):
    """(y, grads) of the fused op and of the reference on the same inputs."""
    return (forward_backward(fused or se_fused.squeeze_excite, inputs, kw),
            forward_backward(reference.squeeze_excite, inputs, kw))


# From most to least precise: a gradient is compared with the tolerance of the less
# precise of x's dtype and its own (a float16 weight's gradient is rounded to float16).
_PRECISION = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _looser(a, b):
    return max(a, b, key=_PRECISION.index)


def assert_matches_reference(inputs, kw, dtype, grad_y=None, fused=None):
    """The fused op's y and grads against the reference's on the same inputs and grad_y:
    same device, dtypes and shape, values within TOL; returns the fused (y, grads)."""
    y, grads = forward_backward(fused or se_fused.squeeze_excite, inputs, kw, grad_y)
    y_ref, grads_ref = forward_backward(reference.squeeze_excite, inputs, kw, grad_y)
    assert y.device == inputs["x"].device and y.dtype == dtype and y.shape == y_ref.shape
    assert_close_dtype(y, y_ref, dtype)
    for name in grads:
        assert grads[name].dtype == grads_ref[name].dtype, name
        assert_close_dtype(grads[name], grads_ref[name], _looser(dtype, grads[name].dtype),
                           what=f"grad {name}")
    return y, grads


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op thread count set to n inside the block, restored after it."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def graph_capturing_backend(graphs):
    """A torch.compile backend that runs AOTAutograd and appends the text of every
    forward and backward graph to `graphs` (so tests can see which ops they call)."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def backend(gm, example_inputs):
        def keep(g, _):
            graphs.append(str(g.graph))
            return make_boxed_func(g.forward)
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep)
    return backend
