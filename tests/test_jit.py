"""torch.jit.trace of models holding FusedSEBlocks, with trace's default checks: the
recorded graph does not depend on what a block has learnt about its output."""
import copy
import re

import pytest
import torch
import torch.nn as nn

import se_fused
from se_fused import FusedSEBlock, SEBlock, reference

from .helpers import assert_close_dtype

C, R = 16, 4


class _Residual(nn.Module):
    """SE-ResNet's tail: the SE output is modified in place (out += shortcut, relu_)."""

    def __init__(self, se):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)
        self.se = se

    def forward(self, x):
        out = self.se(self.conv(x))
        out += x
        return torch.relu_(out)


def _swapped(inplace=False, seed=0):
    torch.manual_seed(seed)
    # GELU keeps its input, not its output, so an in-place SE block may write over it
    model = nn.Sequential(nn.Conv2d(3, C, 1), nn.GELU(), SEBlock(C, rd_channels=R),
                          nn.Conv2d(C, 4, 1))
    se_fused.replace_se_blocks(model, inplace=inplace)
    assert isinstance(model[2], FusedSEBlock)
    return model


def _x(seed=1):
    return torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(seed))


def _expected(model, x):
    """The model with its SE block computed by the reference."""
    se = model[2]
    h = model[1](model[0](x))
    h = reference.squeeze_excite(h, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    return model[3](h)


def _graph(traced):
    """The graph as trace's check compares it: no shapes, no mangled class names."""
    graph = torch._C._jit_pass_canonicalize(traced.inlined_graph)
    torch._C._jit_pass_erase_shape_information(graph)
    return re.sub(r"___torch_mangle_[0-9]+\.", "", str(graph))


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_trace_of_a_swapped_model_passes_its_checks_and_matches_the_reference(inplace):
    model = _swapped(inplace)
    traced = torch.jit.trace(model, _x())  # check_trace=True: raises if graphs differ
    x = _x(seed=2)
    assert_close_dtype(traced(x.clone()).detach(), _expected(model, x).detach(), torch.float32)


def test_trace_records_the_same_graph_before_and_after_the_first_backward():
    model = _swapped()
    before = _graph(torch.jit.trace(model, _x()))
    assert model[2]._output_mutated is None  # tracing teaches the block nothing
    model(_x()).sum().backward()
    assert model[2]._output_mutated is False  # now keeps only y in eager calls
    after = _graph(torch.jit.trace(model, _x()))
    assert before == after


def test_trace_of_a_block_whose_output_is_modified_in_place():
    torch.manual_seed(0)
    model = _Residual(FusedSEBlock(C, rd_channels=R))
    x = torch.randn(2, C, 5, 5)
    model(x).sum().backward()
    assert model.se._output_mutated is True
    traced = torch.jit.trace(model, x)
    se = model.se
    h = model.conv(x)
    expected = torch.relu(reference.squeeze_excite(h, se.fc1.weight, se.fc1.bias,
                                                   se.fc2.weight, se.fc2.bias) + x)
    assert_close_dtype(traced(x).detach(), expected.detach(), torch.float32)


def test_traced_model_gradients_match_the_reference():
    model = _swapped()
    traced = torch.jit.trace(model, _x())
    x = _x(seed=3).requires_grad_()
    params = [x, *model.parameters()]
    grads = torch.autograd.grad(traced(x).square().sum(), params)
    grads_ref = torch.autograd.grad(_expected(model, x).square().sum(), params)
    for a, b in zip(grads, grads_ref):
        assert_close_dtype(a, b, torch.float32, what="gradient")


def test_traced_block_whose_output_is_modified_in_place_refuses_backward():
    # The traced op keeps y (the block's eager first-call choice is not recorded), so an
    # in-place change of its output must stop the backward, not corrupt it.
    torch.manual_seed(0)
    model = _Residual(FusedSEBlock(C, rd_channels=R))
    x = torch.randn(2, C, 5, 5)
    traced = torch.jit.trace(model, x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        traced(x).sum().backward()


def test_trace_of_a_swapped_torchvision_model_matches_the_unswapped_one():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    # BatchNorm's initial statistics would shrink random activations to ~0 (any
    # comparison would pass): set them from one batch, then evaluate.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    model.eval()
    unswapped = copy.deepcopy(model)
    se_fused.replace_se_blocks(model)
    assert any(isinstance(m, FusedSEBlock) for m in model.modules())
    traced = torch.jit.trace(model, torch.randn(2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    expected = unswapped(x).detach()
    assert expected.abs().max() > 1e-2
    assert_close_dtype(traced(x).detach(), expected, torch.float32)
