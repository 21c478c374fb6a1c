"""Shared by the tests: per-dtype tolerances (stated once), input factories, and
the fused-vs-reference runner."""
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


def make_inputs(shape, R, dtype, memory_format, *, bias=True, residual=False,
                param_dtype=None, device="cpu", seed=0, one_layer=False):
    """Random x, weights and biases (never zeros) that require grad.

    one_layer: the one-layer form, w1 (C, C) and w2 = b2 = None (R is ignored)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)

    def rnd(*s, dt=pdt, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dt).to(device)

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


def _forward_backward(fn, inputs, kw, grad_seed=1):
    y = fn(inputs["x"], inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"],
           residual=inputs["residual"], **kw)
    names = [k for k, v in inputs.items() if v is not None and v.requires_grad]
    if y.numel() == 0:
        grads = torch.autograd.grad(y.sum(), [inputs[k] for k in names], allow_unused=True,
                                    materialize_grads=True)
    else:
        gen = torch.Generator().manual_seed(grad_seed)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype).to(y.device)
        grads = torch.autograd.grad(y, [inputs[k] for k in names], gy)
    return y.detach(), dict(zip(names, grads))


def run_both(inputs, kw, fused=None):
    """(y, grads) of the fused op and of the reference on the same inputs."""
    return (_forward_backward(fused or se_fused.squeeze_excite, inputs, kw),
            _forward_backward(reference.squeeze_excite, inputs, kw))


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
