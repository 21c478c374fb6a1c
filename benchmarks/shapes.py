"""The SE shapes of real networks at 224x224, taken from their definitions.

Each entry is one kind of SE block in a network: the channels C it gates, the
reduced width R, the spatial size H x W of its input at a 224x224 image, the
activations, whether the block adds a residual and applies a ReLU right after
the SE (ResNet-style bottlenecks, which se_fused can fuse), and how many
blocks of the network have exactly that shape.

    python benchmarks/shapes.py            # print the table
    python benchmarks/shapes.py --verify   # check it against torchvision/timm

--verify builds the networks with random weights (torchvision, timm and this
repo's SE-ResNet-50), runs one 224x224 image through each and compares the SE
inputs it sees with the table, so the table cannot drift from the definitions.
"""
import argparse
import collections
import dataclasses
import sys
from typing import Dict, List, Tuple


@dataclasses.dataclass(frozen=True)
class SEShape:
    network: str
    stage: str
    C: int
    R: int
    H: int
    W: int
    activation: str = "relu"
    gate: str = "sigmoid"
    residual: bool = False  # the block then adds a residual and applies ReLU
    count: int = 1

    @property
    def name(self) -> str:
        return f"{self.network} {self.stage}"

    @property
    def key(self) -> Tuple:
        """What the kernel sees: shapes of different networks with the same key are one case."""
        return (self.C, self.R, self.H, self.W, self.activation, self.gate, self.residual)


def _resnet50_family(network: str) -> List[SEShape]:
    # Hu et al., "Squeeze-and-Excitation Networks", Table 1: SE after the last
    # BN of every bottleneck, on planes*4 channels, reduction 16, before the
    # residual add. ResNeXt-50 (32x4d) has the same output widths and depths.
    stages = [(256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 3)]
    return [SEShape(network, f"s{i + 1}", C, C // 16, hw, hw, residual=True, count=n)
            for i, (C, hw, n) in enumerate(stages)]


# EfficientNet-B0 (Tan & Le 2019; torchvision efficientnet_b0): MBConv stages
# (expand, kernel, stride, in, out, layers) =
#   (1,3,1,32,16,1) (6,3,2,16,24,2) (6,5,2,24,40,2) (6,3,2,40,80,3)
#   (6,5,1,80,112,3) (6,5,2,112,192,4) (6,3,1,192,320,1).
# The SE gates the expanded channels after the depthwise conv (so at the
# strided resolution), squeezes to in/4 (the block's input width), SiLU/sigmoid.
# "sK.0" is a stage's first block, "sK.1" its remaining blocks.
_EFFNET = [
    ("s1.0", 32, 8, 112, 1),
    ("s2.0", 96, 4, 56, 1), ("s2.1", 144, 6, 56, 1),
    ("s3.0", 144, 6, 28, 1), ("s3.1", 240, 10, 28, 1),
    ("s4.0", 240, 10, 14, 1), ("s4.1", 480, 20, 14, 2),
    ("s5.0", 480, 20, 14, 1), ("s5.1", 672, 28, 14, 2),
    ("s6.0", 672, 28, 7, 1), ("s6.1", 1152, 48, 7, 3),
    ("s7.0", 1152, 48, 7, 1),
]

# MobileNetV3-Large (Howard et al. 2019, Table 1; torchvision mobilenet_v3_large):
# SE in bnecks 4-6 and 11-15, on the expanded channels after the depthwise conv,
# squeeze = make_divisible(expanded / 4, 8), ReLU/hard-sigmoid. "bK" is
# torchvision's features[K].
_MOBILENETV3 = [
    ("b4", 72, 24, 28, 1), ("b5-6", 120, 32, 28, 2),
    ("b11", 480, 120, 14, 1), ("b12", 672, 168, 14, 1),
    ("b13", 672, 168, 7, 1), ("b14-15", 960, 240, 7, 2),
]

# RegNetY-800MF (Radosavovic et al. 2020; torchvision regnet_y_800mf): widths
# 64/144/320/784 (768 rounded to the group width), depths 1/3/8/2, stem 32, bottleneck ratio 1, SE on the
# bottleneck width after the grouped 3x3 conv, squeeze = round(0.25 * block
# input width), ReLU/sigmoid.
_REGNETY = [
    ("s1.0", 64, 8, 56, 1),
    ("s2.0", 144, 16, 28, 1), ("s2.1", 144, 36, 28, 2),
    ("s3.0", 320, 36, 14, 1), ("s3.1", 320, 80, 14, 7),
    ("s4.0", 784, 80, 7, 1), ("s4.1", 784, 196, 7, 1),
]


def _table(network, rows, activation, gate):
    return [SEShape(network, stage, C, R, hw, hw, activation, gate, count=n)
            for stage, C, R, hw, n in rows]


NETWORKS: Dict[str, List[SEShape]] = {
    "SE-ResNet-50": _resnet50_family("SE-ResNet-50"),
    "SE-ResNeXt-50": _resnet50_family("SE-ResNeXt-50"),
    "EfficientNet-B0": _table("EfficientNet-B0", _EFFNET, "silu", "sigmoid"),
    "MobileNetV3-Large": _table("MobileNetV3-Large", _MOBILENETV3, "relu", "hardsigmoid"),
    "RegNetY-800MF": _table("RegNetY-800MF", _REGNETY, "relu", "sigmoid"),
}


def unique_shapes() -> List[Tuple[SEShape, List[str]]]:
    """One entry per distinct kernel shape, in table order, with every network stage that has it."""
    seen: Dict[Tuple, Tuple[SEShape, List[str]]] = {}
    for shapes in NETWORKS.values():
        for s in shapes:
            seen.setdefault(s.key, (s, []))[1].append(s.name)
    return list(seen.values())


# --- verification against the networks' own code


def _builders():
    """(label, network, constructor, is-an-SE-module test, reader of (R, activation, gate))."""
    import timm
    import torchvision.models as tvm
    from torchvision.ops.misc import SqueezeExcitation

    def tv_read(m):
        return (m.fc1.out_channels, _act_name(m.activation), _act_name(m.scale_activation))

    def timm_read(m):
        return (m.fc1.out_channels, _act_name(m.act), _act_name(m.gate))

    def timm_se(m):
        return type(m).__name__ == "SEModule"

    def tv_se(m):
        return isinstance(m, SqueezeExcitation)

    out = [
        ("SE-ResNet-50 (timm seresnet50)", "SE-ResNet-50",
         lambda: timm.create_model("seresnet50", pretrained=False), timm_se, timm_read),
        ("SE-ResNeXt-50 (timm)", "SE-ResNeXt-50",
         lambda: timm.create_model("seresnext50_32x4d", pretrained=False), timm_se, timm_read),
        ("EfficientNet-B0", "EfficientNet-B0", tvm.efficientnet_b0, tv_se, tv_read),
        ("MobileNetV3-Large", "MobileNetV3-Large", tvm.mobilenet_v3_large, tv_se, tv_read),
        ("RegNetY-800MF", "RegNetY-800MF", tvm.regnet_y_800mf, tv_se, tv_read),
    ]
    try:  # the SE-ResNet-50 that models.py assembles for the model-level benchmark
        import se_fused
        from models import se_resnet50
        out.append(("SE-ResNet-50 (models.py)", "SE-ResNet-50", se_resnet50,
                    lambda m: isinstance(m, se_fused.SEBlock),
                    lambda m: (m.fc1.out_channels, m.activation, m.gate)))
    except ImportError as err:
        print(f"(models.py's SE-ResNet-50 not checked: {err})")
    return out


def _act_name(module) -> str:
    import torch.nn as nn
    names = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}
    for cls, name in names.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__.lower()


def observed_shapes(build, is_se, read) -> collections.Counter:
    """(C, R, H, W, activation, gate) of every SE module's input for one 224x224 image."""
    import torch
    model = build().eval()
    seen = collections.Counter()

    def hook(module, inputs, _output):
        _, C, H, W = inputs[0].shape
        R, activation, gate = read(module)
        seen[(C, R, H, W, activation, gate)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_se(m)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return seen


def verify() -> bool:
    ok = True
    for label, network, build, is_se, read in _builders():
        want = collections.Counter()
        for s in NETWORKS[network]:
            want[(s.C, s.R, s.H, s.W, s.activation, s.gate)] += s.count
        got = observed_shapes(build, is_se, read)
        status = "ok" if got == want else "MISMATCH"
        ok &= got == want
        print(f"{label:32s} {sum(got.values()):3d} SE blocks  {status}")
        if got != want:
            print(f"  table only:   {sorted((want - got).elements())}")
            print(f"  network only: {sorted((got - want).elements())}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verify", action="store_true", help="check the table against the networks")
    args = p.parse_args(argv)
    print(f"{'network stage':28s} {'C':>5s} {'R':>4s} {'HxW':>7s} {'act':>5s} {'gate':>11s} res count")
    for shapes in NETWORKS.values():
        for s in shapes:
            print(f"{s.name:28s} {s.C:5d} {s.R:4d} {s.H:3d}x{s.W:<3d} {s.activation:>5s} "
                  f"{s.gate:>11s} {'y' if s.residual else '-':>3s} {s.count:5d}")
    print(f"{len(unique_shapes())} distinct kernel shapes")
    return 0 if not args.verify or verify() else 1


if __name__ == "__main__":
    sys.exit(main())
