"""What bench_se.py times: the cases (shape, batch, dtype, layout, passes, baselines)
of a --quick or --full run on a device, from the real networks' shapes (shapes.py)."""
import argparse
import dataclasses
import math
from typing import List, Optional, Tuple

import torch

import _timing
import shapes

PASSES = ("forward", "backward", "fwd+bwd")
BACKENDS = ("fused", "eager", "compile", "compile_autotune")
COMPILE_MODES = {"compile": "default", "compile_autotune": "max-autotune-no-cudagraphs"}
TRAIN = "train"  # stands for the device's training batch in the plans below
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

# The cases the project's targets are read off, torch.compile'd in --quick: SE-ResNet-50's
# first stage at the training batch in every format, its last at batch 1 in the primary one.
TARGET_CASES = (("SE-ResNet-50 s1", TRAIN, "all"), ("SE-ResNet-50 s4", 1, "primary"))
# --quick also times these in the primary format, without torch.compile, at batch 1 on
# the CPU and at batch 1 and the training batch on a GPU.
QUICK_EXTRA = ("EfficientNet-B0 s2.1", "MobileNetV3-Large b5-6", "RegNetY-800MF s3.1")
# ... and, with torch.compile, the deep stages at the training batch, one or more per
# network family (7x7 and 14x14: short rows, weights as large as a sample), and a
# ResNet block with its residual epilogue: (name, residual).
QUICK_DEEP = (("SE-ResNet-50 s3", False), ("SE-ResNet-50 s4", False), ("SE-ResNet-50 s4", True),
              ("EfficientNet-B0 s6.1", False), ("MobileNetV3-Large b14-15", False),
              ("RegNetY-800MF s3.1", False))


def formats(device_type: str) -> List[Tuple[torch.dtype, str]]:
    """(dtype, layout) pairs: fp32 on the CPU; fp32, and bf16/fp16 channels_last (AMP) on a GPU."""
    if device_type == "cuda":
        return [(torch.float32, "nchw"), (torch.bfloat16, "channels_last"),
                (torch.float16, "channels_last")]
    return [(torch.float32, "nchw"), (torch.float32, "channels_last")]


def primary_format(device_type: str) -> Tuple[torch.dtype, str]:
    """fp32 NCHW on the CPU; bf16 channels_last (the AMP training setting) on a GPU."""
    return formats(device_type)[1 if device_type == "cuda" else 0]


# --- the plan


@dataclasses.dataclass(frozen=True)
class Case:
    shape: shapes.SEShape
    networks: Tuple[str, ...]
    N: int
    dtype: torch.dtype
    layout: str
    residual: bool = False
    compile_backends: Tuple[str, ...] = ()
    passes: Tuple[str, ...] = PASSES

    @property
    def x_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.shape.C, self.shape.H, self.shape.W)

    @property
    def x_bytes(self) -> int:
        return math.prod(self.x_shape) * self.dtype.itemsize

    @property
    def label(self) -> str:
        only = "" if self.passes == PASSES else f" ({', '.join(self.passes)} only)"
        return (f"{self.shape.name}{' +res' if self.residual else ''} "
                f"{'x'.join(map(str, self.x_shape))} {DTYPE_NAMES[self.dtype]} {self.layout}{only}")

    def floor_bytes(self, pass_: str) -> int:
        """Forward reads x, writes y; backward reads x and dy, writes dx; a residual adds
        one tensor to each (read r; write dr)."""
        res = self.x_bytes if self.residual else 0
        fwd, bwd = 2 * self.x_bytes + res, 3 * self.x_bytes + res
        return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[pass_]


def default_train_batch(device: torch.device) -> int:
    """32 on the CPU; 256 on a GPU with >= 40 GiB (128 below), so the largest case fits."""
    if device.type != "cuda":
        return 32
    if not torch.cuda.is_available():  # --dry-run on a machine without one
        return 256
    return 256 if torch.cuda.get_device_properties(device).total_memory >= 40 * _timing.GiB else 128


def compile_backends(device_type: str, dtype: torch.dtype, is_target: bool, quick: bool,
                     policy: str) -> Tuple[str, ...]:
    """Which torch.compile baselines a case gets (each costs tens of seconds of compiling)."""
    if policy == "auto":
        policy = "targets" if quick else "all"
    if policy == "none" or (policy == "targets" and not is_target):
        return ()
    if device_type != "cuda":
        return ("compile",)
    # max-autotune compiles slowly: in --quick only for the AMP training dtype.
    return ("compile",) if quick and dtype != torch.bfloat16 else ("compile", "compile_autotune")


def parse_formats(text: str) -> List[Tuple[torch.dtype, str]]:
    """"float32:nchw,bfloat16:channels_last" -> [(torch.float32, "nchw"), ...]."""
    by_name = {v: k for k, v in DTYPE_NAMES.items()}
    out = []
    for item in text.split(","):
        dtype, _, layout = item.strip().partition(":")
        if dtype not in by_name or layout not in LAYOUTS:
            raise argparse.ArgumentTypeError(
                f"--formats: {item!r} is not DTYPE:LAYOUT with DTYPE in {sorted(by_name)} "
                f"and LAYOUT in {sorted(LAYOUTS)}")
        out.append((by_name[dtype], layout))
    return out


def plan(device_type: str, quick: bool, train_batch: int, policy: str = "auto",
         fmts: Optional[List[Tuple[torch.dtype, str]]] = None) -> List[Case]:
    fmts = fmts or formats(device_type)
    batches = {1: 1, TRAIN: train_batch}
    cases = []

    def add(shape, networks, batch_key, fmt, residual=False, is_target=False, passes=PASSES):
        comp = compile_backends(device_type, fmt[0], is_target, quick, policy)
        cases.append(Case(shape, tuple(networks), batches[batch_key], *fmt, residual, comp, passes))

    def target(shape, batch_key, fmt) -> bool:
        return any(shape.name == name and batch_key == b and (which == "all" or fmt == primary)
                   for name, b, which in TARGET_CASES)

    unique = shapes.unique_shapes()
    known = {shape.name for shape, _ in unique}
    missing = ({name for name, _, _ in TARGET_CASES}.union(QUICK_EXTRA)
               .union(name for name, _ in QUICK_DEEP) - known)
    assert not missing, f"not in shapes.unique_shapes(): {sorted(missing)}"
    primary = primary_format(device_type) if primary_format(device_type) in fmts else fmts[0]
    if quick:
        for shape, networks in unique:
            for batch_key in batches:
                for fmt in fmts:
                    if target(shape, batch_key, fmt):
                        add(shape, networks, batch_key, fmt, is_target=True)
        for shape, networks in unique:
            if shape.name in QUICK_EXTRA:
                for batch_key in ((1, TRAIN) if device_type == "cuda" else (1,)):
                    add(shape, networks, batch_key, primary)
        by_name = {shape.name: (shape, networks) for shape, networks in unique}
        for name, residual in QUICK_DEEP:
            add(*by_name[name], TRAIN, primary, residual=residual, is_target=True)
        return cases
    for shape, networks in unique:
        for batch_key in batches:
            for fmt in fmts:
                add(shape, networks, batch_key, fmt, is_target=target(shape, batch_key, fmt))
    # ResNet-style blocks: the residual add and ReLU fused into the same pass.
    for shape, networks in unique:
        if shape.residual:
            for fmt in fmts:
                add(shape, networks, TRAIN, fmt, residual=True, is_target=False)
    if device_type == "cpu":
        # bf16 inference on the CPU: the same cases, forward only, against eager.
        for c in list(cases):
            cases.append(dataclasses.replace(c, dtype=torch.bfloat16, compile_backends=(),
                                             passes=("forward",)))
    return cases
