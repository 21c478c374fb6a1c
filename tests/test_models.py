"""replace_se_blocks on real torchvision and timm models (random weights, no downloads).

Each model is built, copied (copy.deepcopy) and swapped; the swapped model must
hold one FusedSEBlock per SE module, keep the state_dict, and match the copy:
  - eval mode: the same outputs, NCHW and channels_last input;
  - a training step (train mode, dropout / stochastic depth with the same seed,
    BatchNorm frozen to its running statistics): the same loss and parameter gradients.
With BatchNorm on batch statistics the swapped model is only checked to train
(finite gradients): over a batch of two at 1x1 spatial size deep in the network,
batch normalisation turns float32 last-bit differences of the squeeze into
percent-level differences (as it would between any two correct implementations).
Inputs are small (batch 2, 32x32), everything is float32.

Tolerances: outputs rtol=1e-4, atol=1e-4; losses rtol=1e-5; gradients rtol=1e-4 and
atol=1e-4 times the tensor's largest gradient (observed: ~2e-6).
"""
import copy

import pytest
import torch

from se_fused import FusedSEBlock, replace_se_blocks

tv = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
from timm.layers import EffectiveSEModule, SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402
from timm.models.hgnet import EseModule  # noqa: E402
from timm.models.senet import SEModule as LegacySEModule  # noqa: E402

SE_TYPES = (tv.ops.SqueezeExcitation, SEModule, SqueezeExcite, LegacySEModule,
            EffectiveSEModule, EseModule)

MODELS = {
    "tv_mobilenet_v3_small": lambda: tv.models.mobilenet_v3_small(weights=None),
    "tv_efficientnet_b0": lambda: tv.models.efficientnet_b0(weights=None),
    "tv_regnet_y_400mf": lambda: tv.models.regnet_y_400mf(weights=None),
    "timm_seresnet18": lambda: timm.create_model("seresnet18", pretrained=False),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm_mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050",
                                                            pretrained=False),
    # a BatchNorm between the SE layers; hardswish; the one-layer form (effective SE)
    "timm_rexnet_100": lambda: timm.create_model("rexnet_100", pretrained=False),
    "timm_fbnetv3_b": lambda: timm.create_model("fbnetv3_b", pretrained=False),
    "timm_ese_vovnet19b_dw": lambda: timm.create_model("ese_vovnet19b_dw", pretrained=False),
    "timm_legacy_seresnet18": lambda: timm.create_model("legacy_seresnet18", pretrained=False),
}
# (activation, gate) pairs each model's SE blocks must come out with
EXPECTED_KINDS = {
    "tv_mobilenet_v3_small": {("relu", "hardsigmoid")},
    "tv_efficientnet_b0": {("silu", "sigmoid")},
    "tv_regnet_y_400mf": {("relu", "sigmoid")},
    "timm_seresnet18": {("relu", "sigmoid")},
    "timm_efficientnet_b0": {("silu", "sigmoid")},
    "timm_mobilenetv3_small_050": {("relu", "hardsigmoid")},
    "timm_rexnet_100": {("relu", "sigmoid")},
    "timm_fbnetv3_b": {("hardswish", "hardsigmoid")},
    "timm_ese_vovnet19b_dw": {(None, "hardsigmoid")},
    "timm_legacy_seresnet18": {("relu", "sigmoid")},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout / stochastic depth masks for both models
    out = model(x)
    if isinstance(out, (tuple, list)):  # distillation heads
        out = out[0]
    loss = out.square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _train_with_frozen_bn(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_swap(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    reference = copy.deepcopy(model)
    n_se = sum(isinstance(m, SE_TYPES) for m in model.modules())
    assert n_se > 0
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}

    assert replace_se_blocks(model) is model

    fused = [m for m in model.modules() if isinstance(m, FusedSEBlock)]
    assert len(fused) == n_se
    assert not any(isinstance(m, SE_TYPES) for m in model.modules())
    assert {(m.activation, m.gate) for m in fused} == EXPECTED_KINDS[name]
    sd_after = model.state_dict()
    assert list(sd_after) == list(sd_before)
    for k in sd_before:
        assert torch.equal(sd_after[k], sd_before[k]), k

    x = _x()
    with torch.no_grad():
        model.eval()
        reference.eval()
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
        cl = x.contiguous(memory_format=torch.channels_last)
        m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        torch.testing.assert_close(m_cl(cl), reference(x), rtol=1e-4, atol=1e-4)

    _train_with_frozen_bn(model)
    _train_with_frozen_bn(reference)
    loss, grads = _grads(model, x)
    loss_ref, grads_ref = _grads(reference, x)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=0)
    assert grads.keys() == grads_ref.keys()
    assert len(grads) == len(list(model.parameters()))
    global_scale = max(g.abs().max().item() for g in grads_ref.values())
    for k in grads:
        scale = max(grads_ref[k].abs().max().item(), 1e-6 * global_scale)
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, k=k: f"grad {k}: {m}")

    # BatchNorm on batch statistics: the swapped model trains (finite loss and gradients);
    # an SE block with a norm inside then runs unfused, and says so
    model.train()
    if name == "timm_rexnet_100":
        with pytest.warns(UserWarning, match="unfused"):
            loss, grads = _grads(model, x)
    else:
        loss, grads = _grads(model, x)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads.values())
