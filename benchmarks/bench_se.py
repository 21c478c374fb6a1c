#!/usr/bin/env python
"""How much faster is the fused SE block, and how close to the hardware's limit is it?

    python benchmarks/bench_se.py            # --quick: the key cases, minutes on a small CPU
    python benchmarks/bench_se.py --full     # every network shape, batch, layout and dtype
    python benchmarks/bench_se.py --dry-run --device cuda   # the plan, without running it

Times se_fused.squeeze_excite ("fused") against the pure PyTorch reference
("eager") and torch.compile of the reference, for the forward, the backward
and forward+backward, on the SE shapes of real networks (shapes.py), on
whatever device is present. Each case also gets the floor in bytes, the
achieved GB/s and the fraction of a roofline measured in the same run (a
large device-to-device copy), and the time of x.clone() of the same tensor.
Then whole networks (models.py): images/s before and after replace_se_blocks.

Writes benchmarks/results/<device-slug>.{json,md} and two PNGs beside them,
and prints the markdown on stdout (the progress bar goes to stderr).
"""
import time

_T0 = time.perf_counter()  # the result's wall_s counts from here, imports included

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, Iterator, List, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
# This checkout's se_fused first, before any installed one (make's .pth file may
# point at another checkout): the results must be those of the csrc/ they record.
sys.path.insert(0, str(HERE.parent))

import _env  # noqa: E402
import _report  # noqa: E402
import _timing  # noqa: E402
import shapes  # noqa: E402

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


# --- inputs and the timed callables


@dataclasses.dataclass
class InputSet:
    x: torch.Tensor
    residual: Optional[torch.Tensor]
    grad: torch.Tensor  # the gradient fed to the backward

    @property
    def leaves(self) -> Tuple[torch.Tensor, ...]:
        return (self.x,) if self.residual is None else (self.x, self.residual)


@dataclasses.dataclass
class Inputs:
    weights: Tuple[torch.Tensor, ...]  # w1, b1, w2, b2 (float32, as parameters stay under AMP)
    sets: List[InputSet]  # rotated through, so small cases are not timed from a warm cache


def make_inputs(case: Case, device: torch.device, rotate: bool) -> Inputs:
    """Random normal activations (never zeros) and weights scaled like a trained layer's."""
    C, R = case.shape.C, case.shape.R

    def param(*shape, scale):
        return (torch.randn(*shape, device=device) * scale).requires_grad_()

    weights = (param(R, C, scale=C ** -0.5), param(R, scale=0.1),
               param(C, R, scale=R ** -0.5), param(C, scale=0.1))

    def activation(requires_grad: bool) -> torch.Tensor:
        t = torch.empty(case.x_shape, dtype=case.dtype, device=device,
                        memory_format=LAYOUTS[case.layout]).normal_()
        return t.requires_grad_(requires_grad)

    read_bytes = case.x_bytes * (2 if case.residual else 1)  # what the forward reads
    k = _timing.rotation_count(read_bytes, _timing.cache_bytes(device)) if rotate else 1
    sets = [InputSet(activation(True), activation(True) if case.residual else None, activation(False))
            for _ in range(k)]
    return Inputs(weights, sets)


def bind(op, case: Case, weights):
    kwargs = {"activation": case.shape.activation, "gate": case.shape.gate,
              "out_activation": "relu" if case.residual else None}
    return lambda s: op(s.x, *weights, residual=s.residual, **kwargs)


def forward_pass(call, inputs: Inputs):
    def run(s):
        with torch.no_grad():
            return call(s)
    return _timing.cycle(run, inputs.sets)


def backward_pass(call, inputs: Inputs):
    """The backward alone: a graph per input set built once, differentiated again and again."""
    graphs = [(call(s), s.leaves + inputs.weights, s.grad) for s in inputs.sets]
    return _timing.cycle(lambda g: torch.autograd.grad(g[0], g[1], g[2], retain_graph=True), graphs)


def fwd_bwd_pass(call, inputs: Inputs):
    return _timing.cycle(
        lambda s: torch.autograd.grad(call(s), s.leaves + inputs.weights, s.grad), inputs.sets)


PASS_BUILDERS = {"forward": forward_pass, "backward": backward_pass, "fwd+bwd": fwd_bwd_pass}


def backends(case: Case) -> Iterator[Tuple[str, object]]:
    """(name, op) in timing order; a compiled op is made fresh when its turn comes."""
    import se_fused
    yield "fused", se_fused.squeeze_excite
    yield "eager", se_fused.reference.squeeze_excite
    for name in case.compile_backends:
        torch._dynamo.reset()  # compile once per case: a fresh cache, no recompile limit
        mode = COMPILE_MODES[name]
        yield name, torch.compile(se_fused.reference.squeeze_excite, dynamic=False,
                                  fullgraph=True, mode=None if mode == "default" else mode)


def describe_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def build_passes(op, case: Case, inputs: Inputs, timer):
    """{pass: callable}, each built and called once (that call compiles, for torch.compile),
    the seconds those first calls took, and the error that stopped this backend, if one did."""
    call = bind(op, case, inputs.weights)
    fns: Dict[str, object] = {}
    first_s = 0.0
    for pass_ in case.passes:
        try:
            t0 = time.perf_counter()
            fn = PASS_BUILDERS[pass_](call, inputs)  # the backward's builds its graphs
            fn()
            timer.sync()
            first_s += time.perf_counter() - t0
            fns[pass_] = fn
        except Exception as err:  # recorded in the result; the other backends still run
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return fns, first_s, f"{pass_}: {describe_error(err)}"
    return fns, first_s, None


def time_rounds(fns: Dict[Tuple[str, str], object], timer, rounds: int):
    """ms per (backend, pass): the median of `rounds` measurements taken in turn, each
    given 1/rounds of the timer's run time, so that a burst of load from another
    process lands on one measurement of one callable, not on all of one backend.
    Also the error that stopped a backend, if one did."""
    samples: Dict[Tuple[str, str], List[float]] = {key: [] for key in fns}
    errors: Dict[str, str] = {}
    budget = getattr(timer, "min_run_time", None)
    for _ in range(rounds):
        for (backend, pass_), fn in fns.items():
            if backend in errors:
                continue
            try:
                if budget is not None and rounds > 1:
                    samples[(backend, pass_)].append(timer(fn, budget / rounds))
                else:
                    samples[(backend, pass_)].append(timer(fn))
            except Exception as err:
                errors[backend] = f"{pass_}: {describe_error(err)}"
    times = {key: statistics.median(v) for key, v in samples.items()
             if v and key[0] not in errors}
    return times, errors


def fused_rel_error(case: Case, inputs: Inputs) -> float:
    """max |fused - reference| / max |reference| of the forward: a fast wrong kernel is no win."""
    import se_fused
    s = inputs.sets[0]
    with torch.no_grad():
        y = bind(se_fused.squeeze_excite, case, inputs.weights)(s).float()
        ref = bind(se_fused.reference.squeeze_excite, case, inputs.weights)(s).float()
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


REL_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def run_case(case: Case, device: torch.device, timer, copy_gbps: float, rotate: bool,
             rounds: int) -> List[dict]:
    """On the CPU every backend's passes are built first and then timed in turn, `rounds`
    times; on a GPU one backend at a time (its graphs freed before the next is built)."""
    inputs = make_inputs(case, device, rotate)
    try:
        rel_err = fused_rel_error(case, inputs)
    except Exception:  # the timing below records the same failure
        rel_err = None
    clone = _timing.cycle(lambda s: s.x.clone(), inputs.sets)
    times: Dict[str, Dict[str, Optional[float]]] = {}
    errors, compile_s = {}, {}
    pending: Dict[Tuple[str, str], object] = {("copy", "copy"): clone}
    for name, op in backends(case):
        fns, first_s, err = build_passes(op, case, inputs, timer)
        if name in COMPILE_MODES:
            compile_s[name] = round(first_s, 2)
        if err:
            errors[name] = err
        pending.update(((name, p), fn) for p, fn in fns.items())
        if device.type == "cuda":
            measured, errs = time_rounds(pending, timer, 1)
            _collect(times, measured, errors, errs)
            pending.clear()
    measured, errs = time_rounds(pending, timer, rounds)
    _collect(times, measured, errors, errs)
    copy_ms = times.pop("copy", {}).get("copy")
    if rel_err is not None and not rel_err <= REL_TOLERANCE[case.dtype]:
        errors["fused"] = (errors.get("fused", "") + f" output differs from the reference: max "
                           f"relative error {rel_err:.1e} > {REL_TOLERANCE[case.dtype]:.0e}").strip()
    extra = {"copy_ms": copy_ms, "rotated_sets": len(inputs.sets), "compile_s": compile_s or None,
             "fused_rel_err": rel_err, "errors": errors or None}
    return [make_row(case, p, times, copy_gbps, extra) for p in case.passes]


def _collect(times, measured, errors, new_errors) -> None:
    for (backend, pass_), ms in measured.items():
        times.setdefault(backend, {})[pass_] = ms
    for backend, err in new_errors.items():
        errors.setdefault(backend, err)


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def make_row(case: Case, pass_: str, times: dict, copy_gbps: float, extra: dict) -> dict:
    s = case.shape
    row = {"name": s.name, "networks": list(case.networks), "N": case.N, "C": s.C, "R": s.R,
           "H": s.H, "W": s.W, "activation": s.activation, "gate": s.gate,
           "residual": case.residual, "dtype": DTYPE_NAMES[case.dtype], "layout": case.layout,
           "pass": pass_}
    for b in BACKENDS:
        row[f"{b}_ms"] = times.get(b, {}).get(pass_)
    fused = row["fused_ms"]
    row["bytes"] = case.floor_bytes(pass_)
    row["gbps"] = _div(row["bytes"] / 1e6, fused)  # bytes per ms / 1e6 = GB/s
    row["roofline_fraction"] = _div(row["gbps"], copy_gbps)
    for b in BACKENDS[1:]:
        row[f"speedup_{b}"] = _div(row[f"{b}_ms"], fused)
    row["fused_over_copy"] = _div(fused, extra["copy_ms"])
    row.update(extra)
    return row


# --- model level


def model_plan(device: torch.device, quick: bool, batch: Optional[int], train_batch: int,
               names: Optional[str] = None):
    """(model names, modes, batch): --quick on a CPU is inference of two models at batch 2."""
    import models
    if device.type == "cpu" and quick:
        plan_ = ["se_resnet50", "efficientnet_b0"], ("inference",), batch or 2
    else:
        plan_ = list(models.MODELS), ("inference", "train"), batch or train_batch
    if names:
        wanted = names.split(",")
        unknown = set(wanted) - set(models.MODELS)
        if unknown:
            sys.exit(f"bench_se: unknown model(s) {sorted(unknown)}; known: {list(models.MODELS)}")
        plan_ = (wanted, *plan_[1:])
    return plan_


def run_models(device, args, train_batch, timer, progress) -> Tuple[List[dict], List[str]]:
    import models
    names, modes, batch = model_plan(device, args.quick, args.model_batch, train_batch, args.models)
    amp = torch.bfloat16 if device.type == "cuda" else None
    rows, errors = [], []
    for name in progress(names, desc="models"):
        try:
            rows += models.bench_model(name, device, batch, timer, modes, amp_dtype=amp,
                                       channels_last=device.type == "cuda")
        except Exception as err:
            errors.append(f"model {name}: {describe_error(err)}")
    return rows, errors


# --- the project's performance targets (CPU, fp32, the default 2 threads)

TARGETS = (
    ("SE-ResNet-50 s1", 32, "forward", "fused_over_copy", "<=", 1.3, "fused forward / copy of x"),
    ("SE-ResNet-50 s1", 32, "forward", "speedup_eager", ">=", 4.0, "forward speedup vs eager"),
    ("SE-ResNet-50 s1", 32, "fwd+bwd", "speedup_eager", ">=", 3.0, "fwd+bwd speedup vs eager"),
    ("SE-ResNet-50 s4", 1, "forward", "speedup_eager", ">=", 2.0, "forward speedup vs eager"),
)


def check_targets(cases: List[dict]) -> List[dict]:
    out = []
    for name, n, pass_, key, op, goal, what in TARGETS:
        for c in cases:
            if (c["name"], c["N"], c["pass"], c["dtype"], c["residual"]) == \
                    (name, n, pass_, "float32", False):
                v = c.get(key)
                met = None if v is None else (v <= goal if op == "<=" else v >= goal)
                out.append({"what": f"{name} {n}×{c['C']}×{c['H']}×{c['W']}: {what}",
                            "layout": c["layout"], "key": key, "value": v, "op": op,
                            "goal": goal, "met": met})
    return out


def _geomean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _row_name(c: dict) -> str:
    return (f"{_report.case_label(c)} {c['N']}×{c['C']}×{c['H']}×{c['W']} {c['dtype']} "
            f"{c['layout']} {c['pass']}")


def check_run_targets(cases: List[dict], train_batch: int) -> Tuple[List[dict], List[str]]:
    """The targets over every case of the run (CPU): rows for the targets table, and one
    line per case that misses one."""
    fp32 = [c for c in cases if c["dtype"] == "float32"]
    rows: List[dict] = []
    misses: List[str] = []

    def add(what, value, op, goal, count=None, display=None):
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        rows.append({"what": what, "layout": "all", "key": None, "value": value, "op": op,
                     "goal": goal, "met": met, "display": display})

    compared = [c for c in fp32 if c.get("speedup_eager") is not None]
    slower = [c for c in compared
              if any(c.get(f"speedup_{b}") is not None and c[f"speedup_{b}"] < 1.0
                     for b in ("eager", "compile"))]
    n_compile = sum(c.get("speedup_compile") is not None for c in compared)
    add(f"float32, every case and pass ({len(compared)}, {n_compile} with compile): "
        "slower than eager or compile", len(slower) if compared else None, "<=", 0,
        display=("none" if not slower else f"{len(slower)} rows") if compared else None)
    for c in slower:
        misses.append(f"slower: {_row_name(c)}: fused {_report.ms(c['fused_ms'])} ms, eager "
                      f"{_report.ms(c['eager_ms'])}, compile {_report.ms(c.get('compile_ms'))}")
    for pass_, goal in (("forward", 1.5), ("fwd+bwd", 2.0)):
        v = [c["speedup_eager"] for c in compared if c["pass"] == pass_]
        add(f"float32 {pass_}: geomean speedup vs eager ({len(v)} cases)",
            _geomean(v) if v else None, ">=", goal)
    short = [c for c in fp32 if c["pass"] == "forward" and c["N"] == train_batch
             and (c["H"], c["W"]) in ((7, 7), (14, 14)) and c.get("fused_over_copy")]
    add(f"float32 forward, 7×7 and 14×14, N = {train_batch}: worst fused / x.clone() "
        f"({len(short)} cases)", max((c["fused_over_copy"] for c in short), default=None),
        "<=", 2.0)
    for c in short:
        if c["fused_over_copy"] > 2.0:
            misses.append(f"forward > 2× clone: {_row_name(c)}: {c['fused_over_copy']:.2f}× "
                          f"(fused {_report.ms(c['fused_ms'])} ms, clone {_report.ms(c['copy_ms'])})")
    bf16 = [c for c in cases if c["dtype"] == "bfloat16" and c["pass"] == "forward"
            and c.get("speedup_eager") is not None]
    if bf16:
        add(f"bfloat16 forward: slowest speedup vs eager ({len(bf16)} cases; geomean "
            f"{_geomean([c['speedup_eager'] for c in bf16]):.2f}×)",
            min(c["speedup_eager"] for c in bf16), ">=", 1.0)
        for c in bf16:
            if c["speedup_eager"] < 1.0:
                misses.append(f"bf16 slower than eager: {_row_name(c)}: fused "
                              f"{_report.ms(c['fused_ms'])} ms, eager {_report.ms(c['eager_ms'])}")
    return rows, misses


def check_gpu_targets(cases: List[dict], train_batch: int) -> List[dict]:
    """The GPU targets over the run: roofline fractions (geomean over the training-batch
    cases), never slower than torch.compile, and batch 1 forward against eager."""
    rows: List[dict] = []

    def add(what, value, op, goal, display=None):
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        rows.append({"what": what, "layout": "all", "key": None, "value": value, "op": op,
                     "goal": goal, "met": met, "display": display})

    for pass_, goal in (("forward", 0.85), ("backward", 0.80)):
        v = [c["roofline_fraction"] for c in cases if c["pass"] == pass_
             and c["N"] == train_batch and c.get("roofline_fraction")]
        add(f"{pass_} at batch {train_batch}: geomean fraction of the copy roofline "
            f"({len(v)} cases)", _geomean(v) if v else None, ">=", goal)
    slower = [c for c in cases if any(c.get(f"speedup_{b}") is not None and c[f"speedup_{b}"] < 1
                                      for b in ("compile", "compile_autotune"))]
    n = sum(c.get("speedup_compile") is not None for c in cases)
    add(f"every case and pass with torch.compile ({n}): slower than compile",
        len(slower) if n else None, "<=", 0,
        display=("none" if not slower else f"{len(slower)} rows") if n else None)
    one = [c["speedup_eager"] for c in cases if c["pass"] == "forward" and c["N"] == 1
           and c.get("speedup_eager")]
    add(f"batch 1 forward: slowest speedup vs eager ({len(one)} cases)",
        min(one) if one else None, ">=", 3.0)
    return rows


# --- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="the target cases and a few more (default; < 3 min on 2 CPU cores)")
    size.add_argument("--full", dest="quick", action="store_false",
                      help="every distinct network shape x batch x format, compile everywhere")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--compile", default="auto", choices=("auto", "targets", "all", "none"),
                   help="cases timed with torch.compile: auto = targets in --quick, all in --full")
    p.add_argument("--train-batch", type=int, help="training batch (default: 32 CPU, 128/256 GPU)")
    p.add_argument("--model-batch", type=int, help="batch of the model-level runs")
    p.add_argument("--filter", help="only cases whose label matches this regex")
    p.add_argument("--min-run-time", type=float,
                   help="CPU seconds per (backend, pass), split over --rounds")
    p.add_argument("--rounds", type=int, default=3,
                   help="CPU: time each (backend, pass) this many times in turn, report the "
                        "median (default 3)")
    p.add_argument("--models", help="comma-separated models to run (default: by --quick/--full)")
    p.add_argument("--no-models", action="store_true", help="skip the model-level benchmark")
    p.add_argument("--no-rotate", action="store_true",
                   help="time every call on the same inputs (warm cache for small cases)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results")
    p.add_argument("--formats", type=parse_formats,
                   help="DTYPE:LAYOUT list replacing the device's formats, e.g. "
                        "float32:nchw,bfloat16:channels_last")
    p.add_argument("--rep-ms", type=float,
                   help="GPU: milliseconds of calls per measurement (default 100 --quick, "
                        "500 --full)")
    p.add_argument("--time-budget", type=float,
                   help="seconds: start no new case (nor the models) after this much wall "
                        "time; the cases left out are listed under 'Not run'")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def resolve_device(name: str, dry_run: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        if not dry_run:
            sys.exit("bench_se: --device cuda, but torch.cuda.is_available() is False")
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    elif device.type not in ("cpu", "cuda"):
        sys.exit(f"bench_se: --device must be cpu or cuda[:N], got {name}")
    return device


def print_plan(cases: Sequence[Case], device, quick, args, train_batch) -> None:
    for c in cases:
        print(f"{c.label:70s} compile: {', '.join(c.compile_backends) or '-'}")
    if not args.no_models:
        names, modes, batch = model_plan(device, quick, args.model_batch, train_batch, args.models)
        print(f"models: {', '.join(names)}; {', '.join(modes)}; batch {batch}")
    print(f"{len(cases)} cases, {sum(len(c.passes) for c in cases)} (case, pass) pairs on {device}")


def not_run_notes(device, cases, result, args) -> List[str]:
    notes = []
    if device.type != "cuda":
        notes.append("GPU paths (CUDA-event timer, bf16/fp16 channels_last, training batch "
                     "128/256, torch.compile mode=\"max-autotune-no-cudagraphs\", AMP models): "
                     "no CUDA device in this run")
    no_compile = sum(not c.compile_backends for c in cases)
    if no_compile:
        notes.append(f"torch.compile: not timed on {no_compile} of {len(cases)} cases "
                     f"({'--quick' if args.quick else '--compile ' + args.compile}; "
                     f"{_report.DASH} in its columns)")
    if args.quick:
        notes.append("--quick: a subset of shapes, batches and formats (--full runs all)")
    over = getattr(args, "over_budget", [])
    if over:
        notes.append(f"--time-budget {args.time_budget:g} s: {len(over)} left out: "
                     + "; ".join(over))
    if args.no_models and "the model-level runs" not in over:
        notes.append("models: skipped (--no-models)")
    elif result["models"] and not any(m["mode"] == "train" for m in result["models"]):
        notes.append("models: training step not timed (--quick on a CPU)")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, args.dry_run)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    elif torch.cuda.is_available():
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    train_batch = args.train_batch or default_train_batch(device)
    cases = plan(device.type, args.quick, train_batch, args.compile, args.formats)
    if args.filter:
        cases = [c for c in cases if re.search(args.filter, c.label)]
    if args.dry_run:
        print_plan(cases, device, args.quick, args, train_batch)
        return 0

    from tqdm import tqdm

    torch.manual_seed(0)
    timer = _timing.make_timer(device, args.quick)
    if args.min_run_time and isinstance(timer, _timing.CPUTimer):
        timer.min_run_time = args.min_run_time
    if args.rep_ms and isinstance(timer, _timing.CUDATimer):
        timer.rep_ms = args.rep_ms
    if args.time_budget:
        # Under a budget, breadth first: every shape at batch 1 (fast), then every shape at
        # the training batch, one format after the other, so a cut loses whole formats.
        fmts = args.formats or formats(device.type)
        cases.sort(key=lambda c: (c.N != 1, fmts.index((c.dtype, c.layout))
                                  if (c.dtype, c.layout) in fmts else len(fmts), c.residual))
    env = _env.environment(device)
    copy_bytes = max(256 * _timing.MiB, 8 * _timing.cache_bytes(device))
    copy_gbps = _timing.copy_bandwidth(device, timer, copy_bytes)
    rows = []
    args.over_budget = []
    for case in (bar := tqdm(cases, desc="SE cases", unit="case", file=sys.stderr)):
        if args.time_budget and time.perf_counter() - _T0 > args.time_budget:
            args.over_budget.append(case.label)
            continue
        bar.set_postfix_str(case.label)
        rows += run_case(case, device, timer, copy_gbps, rotate=not args.no_rotate,
                         rounds=args.rounds)
    if args.time_budget and time.perf_counter() - _T0 > args.time_budget:
        args.no_models = True
        args.over_budget.append("the model-level runs")
    models_rows, model_errors = ([], []) if args.no_models else run_models(
        device, args, train_batch, timer,
        lambda it, desc: tqdm(it, desc=desc, file=sys.stderr))

    result = assemble(env, device, args, argv, timer, copy_bytes, copy_gbps, train_batch,
                      cases, rows, models_rows, model_errors)
    write_outputs(result, args.out)
    failed = any(r["errors"] and ("fused" in r["errors"] or "eager" in r["errors"]) for r in rows)
    return 1 if failed or model_errors else 0


def assemble(env, device, args, argv, timer, copy_bytes, copy_gbps, train_batch, cases, rows,
             models_rows, model_errors) -> dict:
    import se_fused
    result = {
        **env,
        "device_type": device.type,
        "argv": ["bench_se.py", *(argv if argv is not None else sys.argv[1:])],
        "quick": args.quick,
        "se_fused": str(Path(se_fused.__file__).parent),
        "timing": timer.describe(),
        "rotate": not args.no_rotate,
        "cache_MiB": round(_timing.cache_bytes(device) / _timing.MiB, 1),
        "copy_MiB": copy_bytes // _timing.MiB,
        "copy_GBps": copy_gbps,
        "train_batch": train_batch,
        "cases": rows,
        "targets": check_targets(rows) if device.type == "cpu" else check_gpu_targets(
            rows, train_batch),
        "target_misses": [],
        "models": models_rows,
        "errors": [f"{r['name']} N={r['N']} {r['dtype']} {r['layout']}: {b}: {e}"
                   for r in rows if r["pass"] == PASSES[0] for b, e in (r["errors"] or {}).items()]
                  + model_errors,
        "load_after": _env.load_average(),
    }
    if device.type == "cpu":
        run_rows, result["target_misses"] = check_run_targets(rows, train_batch)
        result["targets"] += run_rows
    result["not_run"] = not_run_notes(device, cases, result, args)
    busy = _env.busy_warning(result["load_before"], result["load_after"])
    result["warnings"] = [busy] if busy and device.type == "cpu" else []
    if Path(se_fused.__file__).resolve().parent.parent != HERE.parent:
        result["warnings"].append(f"se_fused came from {result['se_fused']}, not from this "
                                  "checkout, whose csrc/ the commit and hash above describe")
    if hasattr(timer, "load_summary"):
        result["timer_load"] = load = timer.load_summary()
        if load["contended"]:
            result["warnings"].append(
                f"{load['contended']} of {load['measurements']} measurements had other "
                f"processes using the CPU even after {timer.retries} retries")
    result["wall_s"] = round(time.perf_counter() - _T0, 1)  # plots and files not included
    return result


def write_outputs(result: dict, out: Path) -> None:
    """<slug>.json, the PNGs, <slug>.md (each written atomically); the markdown to stdout."""
    import plot
    json_path = out / f"{result['device_slug']}.json"
    _report.write_json(json_path, result)
    pngs = plot.plot_result(result, json_path)
    text = _report.markdown(result, [p.name for p in pngs])
    _report.write_text(json_path.with_suffix(".md"), text)
    print(text)
    print(f"wrote {json_path}, {json_path.with_suffix('.md').name}, "
          f"{', '.join(p.name for p in pngs)} ({result['wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
