"""Model-level benchmark: images/s before and after se_fused.replace_se_blocks.

SE-ResNet-50 is assembled here from torchvision's ResNet and Bottleneck with
se_fused.SEBlock (torchvision has none); the others are torchvision's own
definitions. Weights are random.
"""
import copy
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import StochasticDepth

import se_fused


class SEBottleneck(Bottleneck):
    """ResNet bottleneck with an SE block after the third BN, before the residual add
    (Hu et al., "Squeeze-and-Excitation Networks", Fig. 3), reduction 16."""

    def __init__(self, inplanes: int, planes: int, *args, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        self.se = se_fused.SEBlock(planes * self.expansion, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


def se_resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(SEBottleneck, [3, 4, 6, 3], num_classes=num_classes)


MODELS: Dict[str, Callable[[], torch.nn.Module]] = {
    "se_resnet50": se_resnet50,
    "efficientnet_b0": tvm.efficientnet_b0,
    "regnet_y_800mf": tvm.regnet_y_800mf,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
}


def count_fused(model: torch.nn.Module) -> int:
    return sum(isinstance(m, se_fused.FusedSEBlock) for m in model.modules())


def _inference_step(model, images, labels, autocast):
    def step():
        with torch.no_grad(), autocast():
            return model(images)
    return step


def _train_step(model, images, labels, autocast):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        opt.step()
    return step


STEPS = {"inference": _inference_step, "train": _train_step}


def bench_model(name: str, device: torch.device, batch: int, timer, modes=("inference", "train"),
                amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> List[dict]:
    """Rows {model, mode, batch, eager/fused ms and images/s, speedup, ...} for one model."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    base = MODELS[name]().to(device, memory_format=memory_format)
    fused = copy.deepcopy(base)
    se_fused.replace_se_blocks(fused)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    diff = _logits_rel_diff(base, fused, images, autocast)
    rows = []
    for mode in modes:
        row = {"model": name, "mode": mode, "batch": batch,
               "dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
               "layout": "channels_last" if channels_last else "nchw",
               "se_blocks_fused": count_fused(fused), "logits_rel_diff": diff}
        for variant, model in (("eager", base), ("fused", fused)):
            model.train(mode == "train")
            ms = timer(STEPS[mode](model, images, labels, autocast))
            row[f"{variant}_ms"] = ms
            row[f"{variant}_images_per_s"] = batch / (ms * 1e-3)
        row["speedup"] = row["eager_ms"] / row["fused_ms"]
        rows.append(row)
    return rows


def _logits_rel_diff(a, b, images, autocast) -> float:
    """max |logits before - after the swap| / max |logits before|.

    BatchNorm in training mode (batch statistics keep the activations of a
    randomly initialised network O(1); in eval mode they fade to ~1e-14) and
    dropout / stochastic depth off, so both see the same function.
    """
    for model in (a, b):
        model.train()
        for m in model.modules():
            if isinstance(m, (torch.nn.Dropout, StochasticDepth)):
                m.eval()
    with torch.no_grad(), autocast():
        ya, yb = a(images).float(), b(images).float()
    return ((ya - yb).abs().max() / ya.abs().max().clamp_min(1e-30)).item()
