"""A small workload for compute-sanitizer (scripts/cuda_sanitize.sh): the CUDA
forward and backward ops of se_fused over both layouts, four dtypes, with and
without residual / output relu / biases, odd sizes, a misaligned view, rows
longer than a tile, the in-place forward and the y-only backward. Each case runs
once with the default plan and once per setting in KNOBS (plan knobs that must not
change a bit), and the results must agree bit for bit. Inputs are made on the CPU
and copied over, and the expected values are computed on the CPU in float64, so
almost every kernel that runs on the GPU is one of ours. Exits non-zero if a
result is wrong.

    python scripts/sanitize_case.py            # every case (192)
    python scripts/sanitize_case.py --quick    # 10 cases, one per shape and more
"""
import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import se_fused  # noqa: E402,F401  (loads the ops)
from se_fused import reference  # noqa: E402
from se_fused._autograd import backward_composite as _backward_composite  # noqa: E402

# The CUDA plan's knobs (csrc/cuda/se_cuda_ops.cpp), each a setting that changes which
# block computes what but no summation order: one sample per launch-2 block, and an L2
# the re-read never fits in (launch 1 keeps nothing, launch 2 walks in reverse).
KNOBS = (("SE_FUSED_CUDA_SAMPLES", "1"), ("SE_FUSED_CUDA_L2_BYTES", "1"))
TOL = {torch.float64: 1e-7, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
ops = torch.ops.se_fused


def cpu_rand(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def check(name, got, want, dtype, failures):
    got = got.detach().cpu().double()
    want = want.detach().cpu().double()
    tol = TOL[dtype]
    if got.shape != want.shape or not torch.allclose(got, want, atol=tol, rtol=tol):
        err = (got - want).abs().max().item() if got.shape == want.shape else "shape"
        failures.append(f"{name}: max abs error {err}")


def run_case(shape, R, dtype, channels_last, residual, relu, bias, misaligned, gen, failures):
    N, C, H, W = shape
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = cpu_rand(N, C, H, W, dtype=dtype, gen=gen)
    w1 = cpu_rand(R, C, dtype=pdt, gen=gen, scale=2.0 / C ** 0.5)
    w2 = cpu_rand(C, R, dtype=pdt, gen=gen, scale=2.0 / R ** 0.5)
    b1 = cpu_rand(R, dtype=pdt, gen=gen) if bias else None
    b2 = cpu_rand(C, dtype=pdt, gen=gen) if bias else None
    res = cpu_rand(N, C, H, W, dtype=dtype, gen=gen) if residual else None
    gy = cpu_rand(N, C, H, W, dtype=dtype, gen=gen)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def to_dev(t, offset=0):
        if t is None:
            return None
        if offset:
            # the same values, starting `offset` elements into a CUDA buffer
            t = t.contiguous(memory_format=fmt)
            flat = torch.empty(t.numel() + offset, dtype=t.dtype, device="cuda")
            view = flat[offset:].as_strided(t.shape, t.stride())
            view.copy_(t)
            return view
        return t.contiguous(memory_format=fmt).to("cuda") if t.dim() == 4 else t.to("cuda")

    off = 1 if misaligned else 0
    xd, resd, gyd = to_dev(x, off), to_dev(res, off), to_dev(gy, off)
    w1d, w2d, b1d, b2d = (to_dev(t) for t in (w1, w2, b1, b2))
    act, gate = ("silu", "hardsigmoid") if relu else ("relu", "sigmoid")
    out_act = "relu" if relu else "none"

    def run():
        y, z, pre = ops.se_forward(xd, w1d, b1d, w2d, b2d, resd, act, gate, out_act)
        grads = ops.se_backward(gyd, xd, z, y if relu else None, w1d, b1d, w2d, b2d, act, gate,
                                True, False, pre)
        torch.cuda.synchronize()
        return y, z, grads

    y, z, grads = run()
    for knob, value in KNOBS:
        os.environ[knob] = value
        try:
            y2, z2, grads2 = run()
        finally:
            del os.environ[knob]
        if not all(torch.equal(a, b) for a, b in zip((y, z) + tuple(grads), (y2, z2) + tuple(grads2))):
            failures.append(f"{shape} {dtype} cl={channels_last}: bits changed with {knob}={value}")
    if not residual and not relu and not misaligned:
        # in place, and the y-only backward from that y
        xi = xd.clone()
        zi, _ = ops.se_forward_(xi, w1d, b1d, w2d, b2d, None, act, gate, "none")
        if not (torch.equal(xi, y) and torch.equal(zi, z)):
            failures.append(f"{shape} {dtype} cl={channels_last}: in-place forward differs")
        gy_only = ops.se_backward(gyd, xi, zi, None, w1d, b1d, w2d, b2d, act, gate, False, True)
        for name, a, b in zip(("grad_x", "grad_w1"), (gy_only[0], gy_only[2]), (grads[0], grads[2])):
            check(f"{shape} {dtype} y-only {name}", a, b, dtype, failures)

    tag = (f"{tuple(shape)} {dtype} {'cl' if channels_last else 'nchw'} res={residual} "
           f"relu={relu} bias={bias} misaligned={misaligned}")
    xr = x.double()
    y_ref = reference.squeeze_excite(xr, w1.double(), None if b1 is None else b1.double(),
                                     w2.double(), None if b2 is None else b2.double(),
                                     activation=act, gate=gate,
                                     residual=None if res is None else res.double(),
                                     out_activation="relu" if relu else None)
    check(f"{tag} y", y, y_ref.to(dtype), dtype, failures)
    check(f"{tag} z", z, xr.mean(dim=(2, 3)), dtype, failures)
    y_mask = y.cpu().double() if relu else None
    ref = _backward_composite(gy.double(), xr, None, y_mask, w1.double(),
                              None if b1 is None else b1.double(), w2.double(),
                              None if b2 is None else b2.double(), act, gate)
    names = ("grad_x", "grad_residual", "grad_w1", "grad_b1", "grad_w2", "grad_b2")
    for name, got, want in zip(names, grads, ref):
        if name == "grad_residual" and not relu:
            if got.numel() != 0:
                failures.append(f"{tag} grad_residual should be empty")
            continue
        check(f"{tag} {name}", got, want.to(dtype) if name in ("grad_x", "grad_residual") else want,
              dtype, failures)


SHAPES = [
    ((2, 3, 5, 7), 1),     # odd C and H*W: scalar paths, several channels per warp
    ((3, 17, 7, 7), 4),    # 7x7 rows that start off 16-byte boundaries (peeling)
    ((2, 64, 3, 3), 16),   # channels_last 16-byte vectors
    ((1, 8, 40, 40), 2),   # H*W split across blocks (partials, last arrivals)
    ((1, 1, 33, 31), 1),   # one channel
    ((1, 2, 70, 70), 1),   # rows longer than a tile (pieces across tiles)
    ((20, 24, 4, 4), 6),   # more samples than a finalizer's or a scale block's tile
    ((2, 300, 2, 2), 40),  # many channels: several channel groups and partials
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
EPILOGUES = [(False, False, True, False),  # (residual, relu, bias, misaligned)
             (True, True, False, False),
             (True, True, True, True)]


def cases(quick: bool):
    """(shape, R, dtype, channels_last, residual, relu, bias, misaligned) tuples: the whole
    product, or one case per shape rotating dtype, layout and epilogue, plus two more."""
    if not quick:
        for (shape, R), dtype, cl, ep in itertools.product(SHAPES, DTYPES, [False, True],
                                                           EPILOGUES):
            yield (shape, R, dtype, cl, *ep)
        return
    for i, (shape, R) in enumerate(SHAPES):
        yield (shape, R, DTYPES[i % len(DTYPES)], bool(i % 2), *EPILOGUES[i % len(EPILOGUES)])
    yield (*SHAPES[2], torch.bfloat16, True, *EPILOGUES[2])
    yield (*SHAPES[6], torch.float32, False, *EPILOGUES[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10 cases instead of the full product")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    failures = []
    count = 0
    for case in cases(args.quick):
        run_case(*case, gen, failures)
        count += 1
    for f in failures:
        print("MISMATCH", f, file=sys.stderr)
    print(f"sanitize_case: {count} cases, {len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
