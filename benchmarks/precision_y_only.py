"""How much precision does a backward that does not keep x cost? (issue 12)

For every distinct real-network SE shape, in bfloat16 and float16 (float32
parameters, as under AMP), the gradients of the fused op are compared with the
float64 reference evaluated from the same inputs:

- blocks without an epilogue: the op as it runs (keeps y, the y-only backward,
  except float16 + hardsigmoid, which keeps x) against the same op forced to keep x;
- blocks with the residual epilogue (SE-ResNet, y = relu(x*s + r)): the op as it runs
  (keeps x) against the candidate that would keep r instead, x*s = y - r where y > 0,
  emulated in float32 with the op's own backward formulas (se_fused._autograd.backward_composite).

The error of a gradient is max|g - g64| / max|g64|; a row shows the worst over all
gradients (x, weights, biases, and the residual's). The tests' tolerances (atol
scaled by max|g64|, tests/helpers.py) are 2e-2 for bfloat16 and 2e-3 for float16.

    python benchmarks/precision_y_only.py [--batch 4]
"""
import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import shapes  # noqa: E402
import se_fused  # noqa: E402
from se_fused import _autograd, ops, reference  # noqa: E402

PARAMS = ("x", "w1", "b1", "w2", "b2", "residual")


def make(shape, batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    C, R = shape.C, shape.R

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale)

    t = dict(x=rnd(batch, C, shape.H, shape.W).to(dtype).contiguous(
                 memory_format=torch.channels_last),
             w1=rnd(R, C, scale=C ** -0.5), b1=rnd(R, scale=0.1),
             w2=rnd(C, R, scale=R ** -0.5), b2=rnd(C, scale=0.1))
    if shape.residual:
        t["residual"] = rnd(batch, C, shape.H, shape.W).to(dtype).contiguous(
            memory_format=torch.channels_last)
    gy = rnd(batch, C, shape.H, shape.W).to(dtype)
    return t, gy


def kwargs(shape):
    return dict(activation=shape.activation, gate=shape.gate,
                out_activation="relu" if shape.residual else None)


def truth(t, gy, kw):
    d = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    y = reference.squeeze_excite(d["x"], d["w1"], d["b1"], d["w2"], d["b2"],
                                 residual=d.get("residual"), **kw)
    return dict(zip(d, torch.autograd.grad(y, list(d.values()), gy.double())))


def op_grads(t, gy, kw, keep_x):
    d = {k: v.detach().requires_grad_() for k, v in t.items()}
    x = d["x"] * 1  # a non-leaf, as inside a network
    y = ops.route(x, d["w1"], d["b1"], d["w2"], d["b2"], d.get("residual"),
                  kw["activation"], kw["gate"], kw["out_activation"] or "none",
                  False, keep_x)
    return dict(zip(d, torch.autograd.grad(y, list(d.values()), gy)))


def residual_candidate_grads(t, gy, kw):
    """The backward that would keep r instead of x: x*s = y - r wherever y > 0 (the
    ReLU mask zeroes the gradient elsewhere), then the y-only formulas."""
    with torch.no_grad():
        x, r = t["x"], t["residual"]
        y = se_fused.squeeze_excite(x, t["w1"], t["b1"], t["w2"], t["b2"], residual=r,
                                    **kw)
        z = x.float().mean(dim=(2, 3))
        xs = y.float() - r.float()
        gx, gr, gw1, gb1, gw2, gb2 = _autograd.backward_composite(
            gy, xs, z, y, t["w1"], t["b1"], t["w2"], t["b2"], kw["activation"], kw["gate"])
    return dict(x=gx.to(x.dtype), w1=gw1, b1=gb1, w2=gw2, b2=gb2, residual=gr.to(x.dtype))


def worst_error(grads, ref):
    return max(((grads[k].double() - ref[k]).abs().max() / ref[k].abs().max()).item()
               for k in ref)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    print(f"batch {a.batch}, channels_last, float32 parameters; worst max|g - g64| / "
          f"max|g64| over the gradients\n")
    print("| shape | act / gate | epilogue | dtype | keeps x | as it runs | candidate |")
    print("|---|---|---|---|---|---|---|")
    for shape, networks in shapes.unique_shapes():
        kw = kwargs(shape)
        for dtype in (torch.bfloat16, torch.float16):
            t, gy = make(shape, a.batch, dtype, seed=shape.C)
            ref = truth(t, gy, kw)
            keep = worst_error(op_grads(t, gy, kw, keep_x=True), ref)
            if shape.residual:
                runs, cand = keep, worst_error(residual_candidate_grads(t, gy, kw), ref)
                what, cand_s = "+res, relu", f"keep r: {cand:.1e}"
            else:
                runs = worst_error(op_grads(t, gy, kw, keep_x=False), ref)
                what, cand_s = "none", "–"
            label = f"{networks[0]} {shape.C}×{shape.H}×{shape.W} R {shape.R}"
            print(f"| {label} | {shape.activation} / {shape.gate} | {what} | "
                  f"{str(dtype)[6:]} | {keep:.1e} | {runs:.1e} | {cand_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
