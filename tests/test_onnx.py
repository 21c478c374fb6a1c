"""ONNX export of the fused op with both exporters, run by onnxruntime on the CPU.

dynamo=False uses the TorchScript symbolic registered by `import se_fused`. With
dynamo=True, squeeze_excite / FusedSEBlock export as the reference's PyTorch ops (the
exporter translates those itself, so the plain call works); raw torch.ops.se_fused calls
need se_fused.onnx_translation_table() as custom_translation_table.
Every exported graph must hold only standard ONNX operators (default domain, no
local functions, onnx.checker's full check passes) at opset >= 17, and onnxruntime
must give PyTorch's outputs within tests.helpers.TOL[float32] (float16 inputs:
TOL[float16]). Whole models (random weights) are compared with the unswapped model.
The option grid is exported under no_grad (squeeze_excite's inference path, which
calls the op below autograd), the rest with autograd on.
"""
import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn

import se_fused
from se_fused import FusedSEBlock, replace_se_blocks

from .conftest import ACTIVATIONS, GATES
from .helpers import TOL

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

EXPORTERS = {"torchscript": False, "dynamo": True}
MIN_OPSET = 17
C, R = 16, 6

pytestmark = [
    # The TorchScript exporter is deprecated, but it is one of the two the contract names.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.onnx"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
    # as_matrix reads the weights' shapes, which the trace records as constants (they are)
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.usefixtures("one_thread"),  # small graphs
]


def export(model, args, exporter, *, opset=None, dynamic_batch=False, input_names=None,
           grad=True, raw_ops=False):
    """The ONNX ModelProto of model(*args) from the named exporter. grad=False exports
    under no_grad, where squeeze_excite takes its inference path (below autograd).
    raw_ops: the model calls torch.ops.se_fused directly, so dynamo needs the table."""
    model.eval()
    with torch.set_grad_enabled(grad):
        return _export(model, args, exporter, opset, dynamic_batch, input_names, raw_ops)


def _export(model, args, exporter, opset, dynamic_batch, input_names, raw_ops):
    if EXPORTERS[exporter]:
        kw = {}
        if raw_ops:
            kw["custom_translation_table"] = se_fused.onnx_translation_table()
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=64)
            kw["dynamic_shapes"] = tuple({0: batch} for _ in args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opset conversion notes
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=opset, input_names=input_names, **kw)
        return program.model_proto
    f = io.BytesIO()
    kw = {}
    if dynamic_batch:
        kw["dynamic_axes"] = {name: {0: "batch"} for name in input_names}
    torch.onnx.export(model, args, f, dynamo=False, opset_version=opset,
                      input_names=input_names, **kw)
    return onnx.load_from_string(f.getvalue())


def run_ort(proto, *inputs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), names
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def assert_standard_onnx(proto):
    """Only default-domain operators that onnx knows, opset >= 17, and a model that
    onnx.checker accepts with shape inference."""
    assert not proto.functions, [f.name for f in proto.functions]
    versions = {o.domain: o.version for o in proto.opset_import}
    assert versions.get("", 0) >= MIN_OPSET, versions
    for node in _all_nodes(proto.graph):
        assert node.domain in ("", "ai.onnx"), (node.op_type, node.domain)
        assert onnx.defs.has(node.op_type), node.op_type
    onnx.checker.check_model(proto, full_check=True)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def op_types(proto):
    return [n.op_type for n in _all_nodes(proto.graph)]


def _x(shape, seed, dtype=torch.float32):
    # Per-channel offsets make the squeezed means O(1), so that the small layers see
    # both signs (relu's cut) and hardsigmoid's clamps at +-3 get exercised.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) + 2 * torch.randn(1, shape[1], 1, 1, generator=g)
    return x.to(dtype)


def _init_se(block, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (block.fc1, block.fc2):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                              * 2.0 / conv.in_channels ** 0.5)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return block


# --- every option of the op, through the public squeeze_excite

EPILOGUES = [(residual, out_relu) for residual in (False, True) for out_relu in (False, True)]
BRANCHES = [(bias, residual, out_relu) for bias in (True, False)
            for residual, out_relu in EPILOGUES]


class _AllOptions(nn.Module):
    """One squeeze_excite call per (bias, residual, out_activation) for one
    activation and gate: one export covers the eight combinations."""

    def __init__(self, activation, gate):
        super().__init__()
        self.activation, self.gate = activation, gate
        self.blocks = nn.ModuleList(
            _init_se(FusedSEBlock(C, rd_channels=R, activation=activation, gate=gate,
                                  bias=bias), seed=i)
            for i, (bias, _, _) in enumerate(BRANCHES))

    def forward(self, x, residual):
        outs = []
        for blk, (_, use_residual, out_relu) in zip(self.blocks, BRANCHES):
            outs.append(se_fused.squeeze_excite(
                x, blk.fc1.weight, blk.fc1.bias, blk.fc2.weight, blk.fc2.bias,
                activation=self.activation, gate=self.gate,
                residual=residual if use_residual else None,
                out_activation="relu" if out_relu else None))
        return tuple(outs)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_option_matches_onnxruntime(exporter, activation, gate):
    model = _AllOptions(activation, gate).eval()
    x, residual = _x((2, C, 5, 7), seed=1), _x((2, C, 5, 7), seed=2)
    with torch.no_grad():
        expected = model(x, residual)
    proto = export(model, (x, residual), exporter, opset=MIN_OPSET, grad=False)
    assert_standard_onnx(proto)
    types = op_types(proto)
    if exporter == "torchscript":  # our symbolic (dynamo: the reference's ops)
        assert types.count("Gemm") == 2 * len(BRANCHES), types  # the squeeze may be shared
    if gate == "hardsigmoid":
        alphas = [a.f for n in _all_nodes(proto.graph) if n.op_type == "HardSigmoid"
                  for a in n.attribute if a.name == "alpha"]
        # PyTorch's hardsigmoid is x/6 + 1/2; ONNX's default alpha is 0.2
        # (hardswish may add one HardSigmoid per call too: x * HardSigmoid(x))
        assert len(alphas) >= len(BRANCHES), alphas
        assert alphas == [pytest.approx(1 / 6)] * len(alphas), alphas
    _assert_branches_match(run_ort(proto, x, residual), expected)


def _assert_branches_match(got, expected):
    """onnxruntime's outputs against PyTorch's, one per BRANCHES entry."""
    assert len(got) == len(expected) == len(BRANCHES)
    for (bias, use_residual, out_relu), g, e in zip(BRANCHES, got, expected):
        torch.testing.assert_close(
            g, e, **TOL[torch.float32],
            msg=lambda m, b=bias, r=use_residual, o=out_relu:
                f"bias={b} residual={r} out_relu={o}: {m}")


# --- the one-layer form (w2 = b2 = None, w1 (C, C))


class _OneLayer(nn.Module):
    """One one-layer squeeze_excite call per (bias, residual, out_activation)."""

    def __init__(self, gate):
        super().__init__()
        self.gate = gate
        g = torch.Generator().manual_seed(7)
        self.w1 = nn.ParameterList(nn.Parameter(torch.randn(C, C, generator=g) * 2 / C ** 0.5)
                                   for _ in BRANCHES)
        self.b1 = nn.ParameterList(nn.Parameter(torch.randn(C, generator=g))
                                   for bias, _, _ in BRANCHES if bias)

    def forward(self, x, residual):
        outs, biases = [], iter(self.b1)
        for w1, (bias, use_residual, out_relu) in zip(self.w1, BRANCHES):
            outs.append(se_fused.squeeze_excite(
                x, w1, next(biases) if bias else None, None, None, gate=self.gate,
                residual=residual if use_residual else None,
                out_activation="relu" if out_relu else None))
        return tuple(outs)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("gate", GATES)
def test_one_layer_form_matches_onnxruntime(exporter, gate):
    model = _OneLayer(gate).eval()
    x, residual = _x((2, C, 5, 7), seed=8), _x((2, C, 5, 7), seed=9)
    with torch.no_grad():
        expected = model(x, residual)
    proto = export(model, (x, residual), exporter, opset=MIN_OPSET, grad=False)
    assert_standard_onnx(proto)
    if exporter == "torchscript":  # our symbolic: one Gemm per call, no activation
        types = op_types(proto)
        assert types.count("Gemm") == len(BRANCHES), types
    _assert_branches_match(run_ort(proto, x, residual), expected)


class _RawNewForms(nn.Module):
    """The raw op's three outputs with the gelu and hardswish activations and in the
    one-layer form (dynamo needs the translation table for these)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(10)
        self.w1 = nn.Parameter(torch.randn(R, C, generator=g) * 2 / C ** 0.5)
        self.w1_hs = nn.Parameter(torch.randn(R, C, generator=g) * 2 / C ** 0.5)
        self.w2 = nn.Parameter(torch.randn(C, R, generator=g) * 2 / R ** 0.5)
        self.b2 = nn.Parameter(torch.randn(C, generator=g))
        self.w1_one = nn.Parameter(torch.randn(C, C, generator=g) * 2 / C ** 0.5)
        self.b1_one = nn.Parameter(torch.randn(C, generator=g))

    def forward(self, x):
        op = torch.ops.se_fused.se_forward
        return (*op(x, self.w1, None, self.w2, self.b2, None, "gelu", "sigmoid", "none"),
                *op(x, self.w1_hs, None, self.w2, self.b2, None, "hardswish", "hardsigmoid",
                    "none"),
                *op(x, self.w1_one, self.b1_one, None, None, None, "relu", "sigmoid", "none"))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_raw_op_new_activations_and_one_layer_match_onnxruntime(exporter):
    model = _RawNewForms().eval()
    x = _x((2, C, 6, 5), seed=11)
    proto = export(model, (x,), exporter, opset=MIN_OPSET, raw_ops=True)
    assert_standard_onnx(proto)
    types = op_types(proto)
    assert "Erf" in types and "HardSigmoid" in types
    assert types.count("Gemm") == 5, types  # 2 + 2 + 1 (one layer)
    with torch.no_grad():
        expected = model(x)
    got = run_ort(proto, x)
    assert len(got) == len(expected) == 9
    for i, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, **TOL[torch.float32], msg=lambda m, i=i: f"{i}: {m}")


# --- both outputs of the raw op, float16 input, dynamic batch, default opset


class _RawOp(nn.Module):
    """Returns the op's three outputs, so that z (the float32 squeeze) and pre are checked
    too."""

    def __init__(self):
        super().__init__()
        self.se = _init_se(FusedSEBlock(C, rd_channels=R, activation="silu",
                                        gate="hardsigmoid"), seed=3)

    def forward(self, x):
        se = self.se
        return torch.ops.se_fused.se_forward(
            x, se.fc1.weight.flatten(1), se.fc1.bias, se.fc2.weight.flatten(1), se.fc2.bias,
            None, "silu", "hardsigmoid", "none")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_both_outputs_half_input_and_dynamic_batch(exporter, dtype):
    """Parameters stay float32 (as under AMP); z comes out float32, y in x's dtype.
    Exported at batch 2 with a dynamic batch axis, run at batch 3."""
    model = _RawOp().eval()
    proto = export(model, (_x((2, C, 6, 6), seed=4, dtype=dtype),), exporter,
                   dynamic_batch=True, input_names=["x"], raw_ops=True)
    assert_standard_onnx(proto)
    x = _x((3, C, 6, 6), seed=5, dtype=dtype)
    with torch.no_grad():
        y, z, pre = model(x)
    assert z.dtype == torch.float32 and pre.dtype == torch.float32
    got_y, got_z, got_pre = run_ort(proto, x)
    assert got_y.dtype == dtype and got_z.dtype == torch.float32
    assert got_pre.dtype == torch.float32 and got_pre.shape == pre.shape
    torch.testing.assert_close(got_z, z, **TOL[torch.float32])
    torch.testing.assert_close(got_pre, pre, **TOL[torch.float32])
    torch.testing.assert_close(got_y, y, **TOL[dtype])


# --- the in-place op


class _InplaceRaw(nn.Module):
    """The in-place op on an intermediate tensor that is read again afterwards."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.se = _init_se(FusedSEBlock(C, rd_channels=R), seed=6)

    def forward(self, x):
        t = self.conv(x)
        se = self.se
        z, _ = torch.ops.se_fused.se_forward_(
            t, se.fc1.weight.flatten(1), se.fc1.bias, se.fc2.weight.flatten(1), se.fc2.bias,
            None, "relu", "sigmoid", "none")
        return t * 2, z


def test_torchscript_inplace_op_rebinds_its_input():
    """The TorchScript exporter hands se_forward_ to the se_forward symbolic; later
    readers of the overwritten tensor must get y, not the tensor before the call."""
    torch.manual_seed(0)
    model = _InplaceRaw().eval()
    x = _x((2, 3, 6, 6), seed=7)
    with torch.no_grad():
        expected = model(x)
    proto = export(model, (x,), "torchscript", opset=MIN_OPSET)
    assert_standard_onnx(proto)
    for got, exp in zip(run_ort(proto, x), expected):
        torch.testing.assert_close(got, exp, **TOL[torch.float32])


class _InplaceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.se = _init_se(FusedSEBlock(C, rd_channels=R, inplace=True), seed=8)

    def forward(self, x):
        t = self.conv(x)
        out = self.se(t)
        return out + 1, t * 2  # t is out: both read y


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_inplace_block_exports(exporter):
    try:
        model = _InplaceBlock().eval()
    except TypeError as e:
        pytest.skip(f"FusedSEBlock has no inplace option on this branch ({e})")
    x = _x((2, 3, 6, 6), seed=9)
    with torch.no_grad():
        expected = model(x.clone())
    proto = export(model, (x,), exporter, opset=MIN_OPSET)
    assert_standard_onnx(proto)
    for got, exp in zip(run_ort(proto, x), expected):
        torch.testing.assert_close(got, exp, **TOL[torch.float32])


# --- whole models, swapped


def _calibrate_batchnorm(model, seed):
    """Random weights with BatchNorm's initial statistics shrink the activations
    through the blocks (efficientnet_b0's logits come out near 1e-20), which would
    make any comparison pass. Set each BatchNorm's statistics from one batch."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _models():
    tv = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    return {
        "tv_efficientnet_b0": lambda: tv.models.efficientnet_b0(weights=None),
        "tv_mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(weights=None),
        "timm_seresnet18": lambda: timm.create_model("seresnet18", pretrained=False),
    }


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["tv_efficientnet_b0", "tv_mobilenet_v3_small",
                                  "timm_seresnet18"])
def test_swapped_model_matches_onnxruntime(name, exporter):
    torch.manual_seed(0)
    original = _calibrate_batchnorm(_models()[name](), seed=10)
    swapped = replace_se_blocks(copy.deepcopy(original))
    n_fused = sum(isinstance(m, FusedSEBlock) for m in swapped.modules())
    assert n_fused > 0
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = original(x)
    assert expected.abs().max() > 1e-2  # large enough for the tolerance to mean something
    # Default opset: at 17 the dynamo exporter cannot convert torch's own ReduceMean
    # (axes from a graph input) down from 18 and leaves these models at 18 anyway.
    proto = export(swapped, (x,), exporter)
    assert_standard_onnx(proto)
    if exporter == "torchscript":  # our symbolic (dynamo: the reference's ops)
        assert op_types(proto).count("GlobalAveragePool") >= n_fused
    (got,) = run_ort(proto, x)
    # float32 differences between onnxruntime's and PyTorch's convolutions grow with
    # the output's scale (efficientnet_b0's logits reach ~40; the unswapped model's own
    # export differs from it by ~1e-5 of that), so atol follows the scale.
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)
