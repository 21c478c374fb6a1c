"""The fused op's CUDA kernels against the reference: values and gradients for every
dtype, layout, activation, gate and epilogue; odd, large and real-network shapes;
misaligned and strided views; NaN; stride-0 gradients; in-place forward and y-only
backward; gradcheck; CUDA graphs; determinism across the L2 plan, launch 2's batching,
alignment, repeats and concurrent streams; > 2**31 elements; a second GPU; opcheck;
torch.compile; speed against eager at C = 2048. Everything here is skipped without a
CUDA device (tests/test_cuda_logic.py checks the kernels' logic on the CPU).

The value tests are selectable with -k "match_reference or bits or graph" (the GPU
triage of scripts/gpu_check.sh)."""
import itertools

import pytest
import torch

import se_fused
from se_fused import reference

from .helpers import TOL, assert_close_dtype

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
EPILOGUES = {"plain": (False, None), "residual": (True, None), "residual_relu": (True, "relu")}
ACT_GATES = list(itertools.product(["relu", "silu"], ["sigmoid", "hardsigmoid"]))
GRAD_NAMES = ("x", "w1", "b1", "w2", "b2", "residual")


def cuda_inputs(shape, R, dtype, memory_format=torch.contiguous_format, *, bias=True,
                residual=False, param_dtype=None, device="cuda", seed=0, one_layer=False):
    """Like helpers.make_inputs, but drawn on the GPU (fast for large shapes)."""
    g = torch.Generator(device=device).manual_seed(seed)
    N, C, H, W = shape
    if one_layer:
        R = C
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)

    def rnd(*s, dt=pdt, scale=1.0):
        return (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

    x = rnd(N, C, H, W, dt=dtype).contiguous(memory_format=memory_format)
    return dict(
        x=x.requires_grad_(),
        w1=rnd(R, C, scale=2.0 / max(C, 1) ** 0.5).requires_grad_(),
        b1=rnd(R, scale=0.5).requires_grad_() if bias else None,
        w2=None if one_layer else rnd(C, R, scale=2.0 / max(R, 1) ** 0.5).requires_grad_(),
        b2=rnd(C, scale=0.5).requires_grad_() if bias and not one_layer else None,
        residual=rnd(N, C, H, W, dt=dtype).contiguous(memory_format=memory_format).requires_grad_()
        if residual else None,
    )


def forward_backward(fn, inputs, kw, grad_y=None, seed=1):
    """y and the grads of every tensor input that requires grad, for one grad_y."""
    y = fn(inputs["x"], inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"],
           residual=inputs["residual"], **kw)
    names = [k for k in GRAD_NAMES if inputs.get(k) is not None and inputs[k].requires_grad]
    if grad_y is None:
        g = torch.Generator(device=y.device).manual_seed(seed)
        grad_y = torch.randn(y.shape, generator=g, device=y.device, dtype=torch.float32).to(y.dtype)
    grads = torch.autograd.grad(y, [inputs[k] for k in names], grad_y)
    return y.detach(), dict(zip(names, grads))


# From most to least precise: a gradient is compared with the tolerance of the less
# precise of x's dtype and its own (a float16 weight's gradient is rounded to float16).
_PRECISION = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _looser(a, b):
    return max(a, b, key=_PRECISION.index)


def assert_matches_reference(inputs, kw, dtype, grad_y=None, fused=None):
    y, grads = forward_backward(fused or se_fused.squeeze_excite, inputs, kw, grad_y)
    y_ref, grads_ref = forward_backward(reference.squeeze_excite, inputs, kw, grad_y)
    assert y.device == inputs["x"].device and y.dtype == dtype and y.shape == y_ref.shape
    assert_close_dtype(y, y_ref, dtype)
    for name in grads:
        assert grads[name].dtype == grads_ref[name].dtype, name
        assert_close_dtype(grads[name], grads_ref[name], _looser(dtype, grads[name].dtype),
                           what=f"grad {name}")
    return y, grads


# --- values and gradients -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate", ACT_GATES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_forward_and_grads_match_reference(dtype, layout, activation, gate, bias, epilogue):
    residual, out_act = EPILOGUES[epilogue]
    # C = 24 and H*W = 64: the 16-byte vector paths of both layouts for every dtype.
    inputs = cuda_inputs((3, 24, 8, 8), 6, dtype, LAYOUTS[layout], bias=bias, residual=residual)
    kw = dict(activation=activation, gate=gate, out_activation=out_act)
    y, _ = assert_matches_reference(inputs, kw, dtype)
    assert y.stride() == inputs["x"].stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", ["hardswish", "gelu", "one_layer"])
def test_new_activations_and_one_layer_match_reference(dtype, layout, form):
    one_layer = form == "one_layer"
    inputs = cuda_inputs((5, 40, 9, 9), 10, dtype, LAYOUTS[layout], residual=True,
                         one_layer=one_layer)
    kw = dict(activation="relu" if one_layer else form, gate="hardsigmoid",
              out_activation="relu")
    _, grads = assert_matches_reference(inputs, kw, dtype)
    assert ("w2" in grads) != one_layer


ODD_SHAPES = [
    (N, C, H, W)
    for N, C, (H, W) in itertools.product([1, 3, 64], [3, 100], [(1, 1), (3, 5), (7, 7), (56, 56), (112, 112)])
    if N * C * H * W <= 2 * 10**7  # keeps the suite quick
]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_odd_and_large_shapes_match_reference(shape, layout):
    # Odd C (no channels_last vectors), H*W rows that start off 16-byte boundaries,
    # tiny maps packed several per warp, and large maps split over many blocks.
    inputs = cuda_inputs(shape, max(1, shape[1] // 4), torch.float32, LAYOUTS[layout],
                         residual=True)
    assert_matches_reference(inputs, dict(activation="silu", out_activation="relu"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 64, 56, 56), (8, 32, 7, 7)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_half_precision_x_in_odd_and_large_shapes_match_reference(dtype, shape, layout):
    inputs = cuda_inputs(shape, max(1, shape[1] // 4), dtype, LAYOUTS[layout], residual=True)
    assert_matches_reference(inputs, dict(activation="relu", gate="hardsigmoid",
                                          out_activation="relu"), dtype)


@pytest.mark.parametrize("dtype,param_dtype", [
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float32, torch.float16), (torch.float64, torch.float32), (torch.bfloat16, torch.bfloat16),
], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameters_in_another_dtype_than_x_match_reference(dtype, param_dtype, layout):
    inputs = cuda_inputs((2, 16, 6, 6), 4, dtype, LAYOUTS[layout], param_dtype=param_dtype)
    _, grads = assert_matches_reference(inputs, dict(activation="silu"), dtype)
    assert grads["x"].dtype == dtype
    assert grads["w1"].dtype == param_dtype and grads["b2"].dtype == param_dtype


def test_non_contiguous_weights():
    inputs = cuda_inputs((2, 12, 5, 5), 3, torch.float32)
    w1 = torch.randn(12, 3, device="cuda").t().requires_grad_()  # (3, 12), transposed strides
    inputs["w1"] = w1
    assert_matches_reference(inputs, {}, torch.float32)


# --- views: storage offsets, slices, permutations -------------------------------------


def _offset_view(shape, dtype, channels_last=False, offset=1, seed=0):
    """A dense tensor whose data starts `offset` elements into its storage."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    numel = 1
    for s in shape:
        numel *= s
    big = torch.randn(numel + offset, generator=g, device="cuda").to(dtype)
    flat = big[offset:]
    if channels_last:
        N, C, H, W = shape
        return flat.view(N, H, W, C).permute(0, 3, 1, 2)
    return flat.view(shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (3, 5, 7, 7)], ids=lambda s: "x".join(map(str, s)))
def test_misaligned_storage_offsets_match_reference(dtype, channels_last, shape):
    # x, residual and grad_y start 1 element (2-8 bytes) past a 16-byte boundary: the
    # kernels must take the peeled or scalar paths, never a misaligned vector access.
    x = _offset_view(shape, dtype, channels_last, seed=1)
    res = _offset_view(shape, dtype, channels_last, offset=3, seed=2)
    gy = _offset_view(shape, dtype, channels_last, seed=3)
    assert x.storage_offset() == 1
    assert x.is_contiguous(memory_format=torch.channels_last if channels_last
                           else torch.contiguous_format)
    inputs = cuda_inputs(shape, 4, dtype)
    inputs["x"] = x.requires_grad_()
    inputs["residual"] = res.requires_grad_()
    assert_matches_reference(inputs, dict(activation="silu", out_activation="relu"), dtype,
                             grad_y=gy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_and_permuted_views_match_reference(dtype):
    sliced = torch.randn(2, 20, 6, 5, device="cuda").to(dtype)[:, ::2]
    permuted = torch.randn(2, 6, 5, 10, device="cuda").to(dtype).permute(0, 3, 2, 1)
    channel_slice = torch.randn(2, 10, 6, 5, device="cuda").to(dtype).contiguous(
        memory_format=torch.channels_last)[:, 1:9]
    for x in (sliced, permuted, channel_slice):
        inputs = cuda_inputs(tuple(x.shape), 3, dtype, residual=True)
        inputs["x"] = x.detach().requires_grad_()
        assert_matches_reference(inputs, dict(out_activation="relu"), dtype)


def test_residual_in_another_memory_format():
    inputs = cuda_inputs((2, 16, 4, 5), 4, torch.float32, torch.channels_last, residual=True)
    inputs["residual"] = inputs["residual"].detach().contiguous().requires_grad_()
    y, _ = assert_matches_reference(inputs, dict(out_activation="relu"), torch.float32)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_empty_batch_returns_empty_and_zero_parameter_grads():
    inputs = cuda_inputs((0, 6, 4, 4), 2, torch.float32, torch.channels_last)
    y = se_fused.squeeze_excite(inputs["x"], inputs["w1"], inputs["b1"], inputs["w2"], inputs["b2"])
    assert y.shape == (0, 6, 4, 4) and y.is_cuda
    gx, gw1, gb2 = torch.autograd.grad(y.sum(), [inputs["x"], inputs["w1"], inputs["b2"]])
    assert gx.shape == (0, 6, 4, 4)
    assert torch.count_nonzero(gw1) == 0 and torch.count_nonzero(gb2) == 0


def test_fused_backward_op_agrees_with_composite_backward():
    from se_fused._autograd import backward_composite as _backward_composite
    for fmt in LAYOUTS.values():
        inp = cuda_inputs((3, 8, 5, 5), 2, torch.float64, fmt)
        x, w1, b1, w2, b2 = (inp[k].detach() for k in ("x", "w1", "b1", "w2", "b2"))
        y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, b2, None, "silu", "hardsigmoid",
                                                  "relu")
        torch.testing.assert_close(z, x.mean(dim=(2, 3)), **TOL[torch.float64])
        a1 = z @ w1.t() + b1
        a2 = torch.nn.functional.silu(a1) @ w2.t() + b2
        torch.testing.assert_close(pre, torch.cat([a1, a2], dim=1), **TOL[torch.float64])
        gy = torch.randn_like(y)
        fused = torch.ops.se_fused.se_backward(gy, x, z, y, w1, b1, w2, b2, "silu", "hardsigmoid",
                                               True, False, pre)
        composite = _backward_composite(gy, x, None, y, w1, b1, w2, b2, "silu", "hardsigmoid")
        for a, b in zip(fused, composite):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


# --- autograd checks ------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation,gate", [("relu", "sigmoid"), ("silu", "hardsigmoid")])
def test_gradcheck_every_input_float64(layout, activation, gate):
    inp = cuda_inputs((2, 5, 3, 4), 3, torch.float64, LAYOUTS[layout], residual=True)
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation=activation, gate=gate, residual=r, out_activation="relu")
    args = tuple(inp[k] for k in ("x", "w1", "b1", "w2", "b2", "residual"))
    assert torch.autograd.gradcheck(f, args)


def test_gradgradcheck_double_backward():
    inp = cuda_inputs((2, 4, 3, 3), 2, torch.float64, residual=True)
    f = lambda x, w1, b1, w2, b2, r: se_fused.squeeze_excite(  # noqa: E731
        x, w1, b1, w2, b2, activation="silu", residual=r, out_activation="relu")
    args = tuple(inp[k] for k in ("x", "w1", "b1", "w2", "b2", "residual"))
    assert torch.autograd.gradgradcheck(f, args)


# --- CUDA graphs and determinism ------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_capture_and_replay_forward_and_backward(layout, dtype):
    fmt = LAYOUTS[layout]
    kw = dict(activation="silu", gate="hardsigmoid", out_activation="relu")
    static = cuda_inputs((4, 32, 7, 7), 8, dtype, fmt, residual=True, seed=0)
    static_gy = torch.randn(4, 32, 7, 7, device="cuda").to(dtype).contiguous(memory_format=fmt)

    def step():
        return forward_backward(se_fused.squeeze_excite, static, kw, grad_y=static_gy)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the capture (allocator, dispatcher caches)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static, grads_static = step()

    for seed in (1, 2):
        fresh = cuda_inputs((4, 32, 7, 7), 8, dtype, fmt, residual=True, seed=seed)
        gy = torch.randn(4, 32, 7, 7, device="cuda").to(dtype).contiguous(memory_format=fmt)
        with torch.no_grad():
            for k, v in fresh.items():
                if v is not None:
                    static[k].copy_(v)
            static_gy.copy_(gy)
        graph.replay()
        torch.cuda.synchronize()
        y_ref, grads_ref = forward_backward(reference.squeeze_excite, fresh, kw, grad_y=gy)
        assert_close_dtype(y_static, y_ref, dtype)
        for name in grads_static:
            assert_close_dtype(grads_static[name], grads_ref[name], dtype, what=f"grad {name}")
        # the replay equals an eager run on the same data, bit for bit
        y_eager, grads_eager = forward_backward(se_fused.squeeze_excite, fresh, kw, grad_y=gy)
        assert torch.equal(y_static, y_eager)
        for name in grads_static:
            assert torch.equal(grads_static[name], grads_eager[name]), name


def test_cuda_graph_capture_of_the_raw_ops():
    x = torch.randn(2, 16, 9, 9, device="cuda")
    w1, w2 = torch.randn(4, 16, device="cuda"), torch.randn(16, 4, device="cuda")
    b1 = torch.randn(4, device="cuda")
    gy = torch.randn_like(x)
    ops = torch.ops.se_fused

    def run():
        y, z, pre = ops.se_forward(x, w1, b1, w2, None, None, "relu", "sigmoid", "relu")
        return (y, z, pre) + tuple(ops.se_backward(gy, x, z, y, w1, b1, w2, None, "relu", "sigmoid",
                                                   True, False, pre))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run()
    x.copy_(torch.randn_like(x))
    gy.copy_(torch.randn_like(gy))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(outs, run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape,layout", [
    ((3, 40, 33, 31), "channels_last"), ((3, 40, 33, 31), "nchw"),
    ((1, 8, 112, 112), "nchw"), ((1, 64, 56, 56), "channels_last"), ((64, 100, 7, 7), "nchw"),
], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_two_runs_are_bitwise_identical(shape, layout, dtype):
    inputs = cuda_inputs(shape, 5, dtype, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", out_activation="relu")
    y1, g1 = forward_backward(se_fused.squeeze_excite, inputs, kw)
    torch.cuda.empty_cache()  # the second run gets other workspace addresses
    y2, g2 = forward_backward(se_fused.squeeze_excite, inputs, kw)
    assert torch.equal(y1, y2)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name
    _, z1, pre1 = torch.ops.se_fused.se_forward(
        *(inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")), None, "silu", "sigmoid",
        "none")
    _, z2, pre2 = torch.ops.se_fused.se_forward(
        *(inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")), None, "silu", "sigmoid",
        "none")
    assert torch.equal(z1, z2) and torch.equal(pre1, pre2)


def test_does_not_synchronize_the_host():
    inputs = cuda_inputs((4, 32, 14, 14), 8, torch.float32, residual=True)
    kw = dict(out_activation="relu")
    forward_backward(se_fused.squeeze_excite, inputs, kw)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        forward_backward(se_fused.squeeze_excite, inputs, kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- big tensors and other devices ----------------------------------------------------


def _total_memory_gb():
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


@pytest.mark.skipif(not torch.cuda.is_available() or _total_memory_gb() < 60,
                    reason="needs a GPU with >= 60 GB")
@pytest.mark.parametrize("shape,fmt", [
    ((1, 1, 46341, 46341), torch.contiguous_format),   # one row of > 2**31 elements
    ((1, 64, 5793, 5793), torch.channels_last),         # pixel offsets * C > 2**31
    ((2, 16, 8193, 8193), torch.contiguous_format),     # row starts > 2**31
], ids=["one_row", "channels_last", "nchw"])
def test_tensor_over_2_31_elements_every_element_forward_and_backward(shape, fmt):
    # Every element of y and grad_x is compared (in slices of rows), against x * s
    # and g * s + dz / HW with s and dz from float64 math on the op's own z.
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    assert numel > 2**31
    torch.cuda.empty_cache()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.empty(shape, device="cuda", dtype=torch.bfloat16, memory_format=fmt)
    x.normal_(generator=g)
    gy = torch.empty_like(x).normal_(generator=g)
    C, R = shape[1], 4
    w1 = torch.randn(R, C, device="cuda", generator=g, dtype=torch.float64)
    w2 = torch.randn(C, R, device="cuda", generator=g, dtype=torch.float64)
    b1 = torch.randn(R, device="cuda", generator=g, dtype=torch.float64)
    b2 = torch.randn(C, device="cuda", generator=g, dtype=torch.float64)
    p32 = [t.float() for t in (w1, b1, w2, b2)]
    ops = torch.ops.se_fused
    y, z, _ = ops.se_forward(x, *p32, None, "silu", "sigmoid", "none")
    assert y.stride() == x.stride()
    hw = shape[2] * shape[3]
    torch.testing.assert_close(z.double(), x.sum(dim=(2, 3), dtype=torch.float64) / hw,
                               atol=1e-5, rtol=1e-4)
    rows = max(1, (1 << 27) // (shape[0] * shape[1] * shape[3]))  # ~1 GB of float64 a slice
    slices = [(slice(None), slice(None), slice(h0, h0 + rows)) for h0 in range(0, shape[2], rows)]
    ds = sum((gy[sl].double() * x[sl].double()).sum(dim=(2, 3)) for sl in slices)
    zd = z.double().requires_grad_()
    s = reference.excitation(zd, w1, b1, w2, b2, "silu", "sigmoid")
    (dz,) = torch.autograd.grad((s * ds).sum(), zd)
    s, dzs = s.detach().float()[:, :, None, None], (dz / hw).float()[:, :, None, None]
    gx = ops.se_backward(gy, x, z, None, *p32, "silu", "sigmoid", False)[0]
    for sl in slices:
        want_y = (x[sl].float() * s).to(torch.bfloat16)
        torch.testing.assert_close(y[sl], want_y, **TOL[torch.bfloat16])
        want_gx = (gy[sl].float() * s + dzs).to(torch.bfloat16)
        torch.testing.assert_close(gx[sl], want_gx, **TOL[torch.bfloat16])
    del x, y, gy, gx
    torch.cuda.empty_cache()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_on_the_second_gpu(layout):
    torch.cuda.set_device(0)
    inputs = cuda_inputs((3, 24, 9, 9), 6, torch.float32, LAYOUTS[layout], residual=True,
                         device="cuda:1")
    y, grads = assert_matches_reference(inputs, dict(activation="silu", out_activation="relu"),
                                        torch.float32)
    assert y.device == torch.device("cuda:1")
    assert all(g.device == torch.device("cuda:1") for g in grads.values())
    assert torch.cuda.current_device() == 0
    with pytest.raises(RuntimeError, match="on one device"):
        se_fused.squeeze_excite(inputs["x"].detach(), inputs["w1"].detach().to("cuda:0"), None,
                                inputs["w2"].detach(), None)


# --- shapes of real networks, special inputs, the op interface ---------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,R,dtype", [
    ((2, 2048, 7, 7), 128, torch.float32),    # many channel tiles and groups
    ((2, 1152, 7, 7), 48, torch.float32),
    ((2, 520, 9, 9), 32, torch.bfloat16),     # channels_last: a partial channel tile
    ((64, 2048, 7, 7), 128, torch.bfloat16),  # several sample tiles and channel groups
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_network_shapes_match_reference(shape, R, dtype, layout):
    inputs = cuda_inputs(shape, R, dtype, LAYOUTS[layout], residual=True)
    assert_matches_reference(inputs, dict(activation="silu", out_activation="relu"), dtype)
    inputs = cuda_inputs(shape, R, dtype, LAYOUTS[layout])
    assert_matches_reference(inputs, dict(activation="relu", gate="hardsigmoid"), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_input_propagates_like_the_reference(layout):
    inputs = cuda_inputs((3, 64, 7, 7), 16, torch.float32, LAYOUTS[layout], residual=True)
    with torch.no_grad():
        inputs["x"][1, 5, 3, 3] = float("nan")
    kw = dict(activation="relu", out_activation="relu")
    y = se_fused.squeeze_excite(*(inputs[k] for k in ("x", "w1", "b1", "w2", "b2")),
                                residual=inputs["residual"], **kw)
    y_ref = reference.squeeze_excite(*(inputs[k] for k in ("x", "w1", "b1", "w2", "b2")),
                                     residual=inputs["residual"], **kw)
    torch.testing.assert_close(y, y_ref, equal_nan=True, **TOL[torch.float32])
    assert torch.isnan(y[1]).any() and not torch.isnan(y[[0, 2]]).any()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stride_zero_grad_y_from_sum_backward(layout):
    # y.sum().backward() hands the op an expanded (stride 0) grad_y
    inputs = cuda_inputs((4, 96, 7, 7), 24, torch.bfloat16, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", out_activation="relu")
    args = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2")]
    grads = torch.autograd.grad(se_fused.squeeze_excite(*args, residual=inputs["residual"],
                                                        **kw).sum(), args)
    ref = torch.autograd.grad(reference.squeeze_excite(*args, residual=inputs["residual"],
                                                       **kw).sum(), args)
    for name, a, b in zip(("x", "w1", "b1", "w2", "b2"), grads, ref):
        assert_close_dtype(a, b, torch.bfloat16, what=f"grad {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64_sigmoid_gate_match_reference_to_1e_12(layout):
    # a float32 accumulation anywhere would show at ~1e-7
    inputs = cuda_inputs((3, 200, 9, 9), 50, torch.float64, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", gate="sigmoid", out_activation="relu")
    y, grads = forward_backward(se_fused.squeeze_excite, inputs, kw)
    y_ref, grads_ref = forward_backward(reference.squeeze_excite, inputs, kw)
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y, y_ref, **tol)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], **tol, msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place_forward_writes_y_over_x(layout, dtype):
    inputs = cuda_inputs((8, 256, 14, 14), 16, dtype, LAYOUTS[layout], residual=True)
    args = [inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")]
    res = inputs["residual"].detach()
    y, z, pre = torch.ops.se_fused.se_forward(*args, res, "relu", "sigmoid", "relu")
    x = args[0].clone()
    z2, pre2 = torch.ops.se_fused.se_forward_(x, *args[1:], res, "relu", "sigmoid", "relu")
    assert torch.equal(x, y) and torch.equal(z2, z) and torch.equal(pre2, pre)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_y_only_backward_and_backward_without_pre_match_reference(layout, gate):
    # x_is_output: the op is given y = x * s instead of x (no epilogue); from_x is
    # called without pre, which the host then recomputes from z
    inputs = cuda_inputs((6, 192, 14, 14), 48, torch.float32, LAYOUTS[layout])
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


def _run_ops(inputs, gy):
    args = [inputs[k].detach() for k in ("x", "w1", "b1", "w2", "b2")]
    res = inputs["residual"].detach()
    y, z, pre = torch.ops.se_fused.se_forward(*args, res, "silu", "sigmoid", "relu")
    grads = torch.ops.se_fused.se_backward(gy, args[0], z, y, *args[1:], "silu", "sigmoid", True,
                                           False, pre)
    return (y.contiguous(), z, pre) + tuple(g.contiguous() for g in grads)


def _shifted(t):
    """The same values one element into a fresh buffer (no 16-byte granules)."""
    t = t.detach()
    buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    v = buf[1:].as_strided(t.shape, t.stride())
    v.copy_(t)
    return v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bits_do_not_depend_on_l2_plan_batching_or_alignment(layout, dtype, monkeypatch):
    # Summation orders depend on the shape only: an L2 too small for x (launch 1
    # keeps nothing, launch 2 walks its tiles from the end), launch 2 with fewer
    # samples a block, and misaligned copies (no 16-byte granules) give the same bits
    # as the default launch; forward and backward are compared separately.
    fmt = LAYOUTS[layout]
    inputs = cuda_inputs((24, 320, 14, 14), 80, dtype, fmt, residual=True)
    gy = torch.randn(24, 320, 14, 14, device="cuda").to(dtype).contiguous(memory_format=fmt)
    base = _run_ops(inputs, gy)
    for env in ({"SE_FUSED_CUDA_L2_BYTES": "1"}, {"SE_FUSED_CUDA_SAMPLES": "1"},
                {"SE_FUSED_CUDA_SAMPLES": "3", "SE_FUSED_CUDA_L2_BYTES": "300000"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            for i, (a, b) in enumerate(zip(_run_ops(inputs, gy), base)):
                assert torch.equal(a, b), ("forward" if i < 3 else "backward", i, env)
    shifted = dict(inputs)
    for k in ("x", "residual"):
        shifted[k] = _shifted(inputs[k])
    for i, (a, b) in enumerate(zip(_run_ops(shifted, _shifted(gy)), base)):
        assert torch.equal(a, b), ("forward" if i < 3 else "backward", i, "misaligned")


def test_bits_hold_over_repeats_and_concurrent_streams():
    # The last-arrival handoffs under load: repeated calls, and two calls on two
    # streams at once, give the bits of a lone call.
    inputs = cuda_inputs((32, 256, 28, 28), 16, torch.bfloat16, torch.channels_last,
                         residual=True)
    gy = torch.randn(32, 256, 28, 28, device="cuda").to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    base = _run_ops(inputs, gy)
    for _ in range(20):
        for a, b in zip(_run_ops(inputs, gy), base):
            assert torch.equal(a, b)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = []
    torch.cuda.synchronize()
    for st in streams:
        with torch.cuda.stream(st):
            outs.append(_run_ops(inputs, gy))
    torch.cuda.synchronize()
    for out in outs:
        for a, b in zip(out, base):
            assert torch.equal(a, b)


def test_faster_than_eager_at_c2048():
    # Two launches a pass with the small layers spread over the grid: at
    # 256 x 2048 x 7 x 7 the fused forward + backward must beat eager PyTorch's.
    inputs = cuda_inputs((256, 2048, 7, 7), 128, torch.bfloat16, residual=True)
    kw = dict(activation="relu", out_activation="relu")
    gy = torch.randn(256, 2048, 7, 7, device="cuda").to(torch.bfloat16)

    def timed(fn):
        for _ in range(3):
            forward_backward(fn, inputs, kw, grad_y=gy)
        times = []
        for _ in range(15):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward_backward(fn, inputs, kw, grad_y=gy)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    assert timed(se_fused.squeeze_excite) < timed(reference.squeeze_excite)


# --- torch.library checks and torch.compile ------------------------------------------


def _opcheck_args(requires_grad, fmt=torch.contiguous_format):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, device="cuda", generator=g)
    x = x.contiguous(memory_format=fmt).requires_grad_(requires_grad)
    w1 = torch.randn(2, 8, dtype=torch.float64, device="cuda", generator=g).requires_grad_(requires_grad)
    w2 = torch.randn(8, 2, dtype=torch.float64, device="cuda", generator=g).requires_grad_(requires_grad)
    b1 = torch.randn(2, dtype=torch.float64, device="cuda", generator=g).requires_grad_(requires_grad)
    return x, w1, b1, w2


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual,out_act", [(False, "none"), (True, "relu")])
def test_opcheck_forward_op(layout, residual, out_act):
    x, w1, b1, w2 = _opcheck_args(True, LAYOUTS[layout])
    r = torch.randn_like(x, requires_grad=True) if residual else None
    torch.library.opcheck(torch.ops.se_fused.se_forward.default,
                          (x, w1, b1, w2, None, r, "silu", "sigmoid", out_act))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("masked", [False, True])
def test_opcheck_backward_op(layout, masked):
    x, w1, b1, w2 = _opcheck_args(False, LAYOUTS[layout])
    y, z, pre = torch.ops.se_fused.se_forward(x, w1, b1, w2, None, None, "relu", "sigmoid",
                                              "relu" if masked else "none")
    torch.library.opcheck(torch.ops.se_fused.se_backward.default,
                          (torch.randn_like(x), x, z, y if masked else None, w1, b1, w2, None,
                           "relu", "sigmoid", masked, False, pre))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_compile_fullgraph_forward_backward(layout):
    torch._dynamo.reset()
    inputs = cuda_inputs((4, 16, 7, 7), 4, torch.float32, LAYOUTS[layout], residual=True)
    kw = dict(activation="silu", gate="hardsigmoid", out_activation="relu")
    compiled = torch.compile(se_fused.squeeze_excite, fullgraph=True)
    assert_matches_reference(inputs, kw, torch.float32, fused=compiled)
    torch._dynamo.reset()
