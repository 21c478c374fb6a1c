"""One case measured: its inputs, the timed callables of each backend and pass, the
check of the fused output against the reference, and the result rows."""
import dataclasses
import statistics
import time
from typing import Dict, Iterator, List, Optional, Tuple

import torch

import _timing
from _cases import BACKENDS, COMPILE_MODES, DTYPE_NAMES, LAYOUTS, Case


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
